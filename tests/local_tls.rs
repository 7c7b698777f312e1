//! `--local-tls`: real psql with sslmode=require and verify-full (the generated local CA as
//! sslrootcert, reused across restarts), tokio-postgres over rustls, and a cancel request sent
//! inside TLS — all through an in-process proxy in front of the simulator.

mod common;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use common::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// psql with `conninfo`, no password anywhere; returns (success, stdout, stderr).
async fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("psql")
        .args([conninfo, "-XtA", "-c", sql])
        .env_remove("PGPASSWORD")
        .env_remove("PGSSLMODE")
        .env("PGCONNECT_TIMEOUT", "20")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("psql is installed (see README)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tls_args(sim: &rds_auth_proxy_sim::Simulator, ca_out: &Path) -> Vec<String> {
    let mut args = direct_args(sim);
    args.extend(["--local-tls".into(), "--local-tls-ca-out".into(), ca_out.display().to_string()]);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_require_and_verify_full_with_the_local_ca_across_restarts() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("conf/local-ca.pem");

    // Without --local-tls, sslmode=require is refused by psql itself (the proxy answers N).
    let plain = start_proxy(&direct_args(&sim), sim.aws_credentials()).await;
    let (ok, _, err) = psql(&format!("host=127.0.0.1 port={} user=db_user dbname=postgres sslmode=require", plain.addr.port()), "SELECT 1").await;
    assert!(!ok && err.contains("server does not support SSL"), "{err}");
    plain.stop().await;

    let proxy = start_proxy(&tls_args(&sim, &ca), sim.aws_credentials()).await;
    let port = proxy.addr.port();
    let ca_pem = std::fs::read(&ca).expect("the CA file was written at start");
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(dir.path().join("conf/local-ca.key")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let require = format!("host=127.0.0.1 port={port} user=db_user dbname=postgres sslmode=require");
    let (ok, out, err) = psql(&require, "SELECT current_user").await;
    assert!(ok, "{err}");
    assert_eq!(out, "db_user");

    for host in ["localhost", "127.0.0.1"] {
        let full = format!("host={host} port={port} user=db_user dbname=postgres sslmode=verify-full sslrootcert={}", ca.display());
        let (ok, out, err) = psql(&full, "SELECT 6*7").await;
        assert!(ok, "{host}: {err}");
        assert_eq!(out, "42");
    }
    // Another CA is not trusted: verify-full really verifies.
    let wrong = format!("host=localhost port={port} user=db_user dbname=postgres sslmode=verify-full sslrootcert={}", sim.ca_file.display());
    let (ok, _, err) = psql(&wrong, "SELECT 1").await;
    assert!(!ok && err.contains("certificate verify failed"), "{err}");
    // sslmode=disable still works: TLS is offered, not forced.
    let (ok, _, err) = psql(&format!("host=127.0.0.1 port={port} user=db_user dbname=postgres sslmode=disable"), "SELECT 1").await;
    assert!(ok, "{err}");
    proxy.stop().await;

    // A restart reuses the CA, so the sslrootcert configured once stays valid.
    let proxy = start_proxy(&tls_args(&sim, &ca), sim.aws_credentials()).await;
    assert_eq!(std::fs::read(&ca).unwrap(), ca_pem, "the CA was replaced on restart");
    let full = format!("host=localhost port={} user=db_user dbname=postgres sslmode=verify-full sslrootcert={}", proxy.addr.port(), ca.display());
    let (ok, out, err) = psql(&full, "SELECT current_user").await;
    assert!(ok, "{err}");
    assert_eq!(out, "db_user");
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_over_tls_and_a_cancel_inside_tls() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("local-ca.pem");
    let proxy = start_proxy(&tls_args(&sim, &ca), sim.aws_credentials()).await;
    let tls = RustlsConnect::trusting(&ca);

    let mut config: tokio_postgres::Config = proxy.conn_string("db_user").parse().unwrap();
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config.connect(tls.clone()).await.expect("TLS login");
    let done = tokio::spawn(connection);
    let row = client.query_one("SELECT current_user::text", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "db_user");

    // Cancel over TLS: tokio-postgres sends SSLRequest, does TLS, then the CancelRequest inside
    // it (with sslmode=require it would fail rather than fall back to plaintext).
    let observer = connect(&proxy, "db_user").await.unwrap();
    let cancels_before = sim.front_state.cancels.load(std::sync::atomic::Ordering::SeqCst);
    let cancel = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await.map(|_| ()) });
    wait_until_active(&observer, "SELECT pg_sleep(60)").await;
    cancel.cancel_query(tls.clone()).await.expect("cancel request over TLS");
    let err = sleeper.await.unwrap().expect_err("cancelled");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{err:?}");
    assert_eq!(sim.front_state.cancels.load(std::sync::atomic::Ordering::SeqCst), cancels_before + 1);
    drop(done);
    proxy.stop().await;
    sim.stop().await;
}

/// A small rustls adapter for tokio-postgres (what the tokio-postgres-rustls crate does, minus
/// channel binding): verify-full against one CA file.
#[derive(Clone)]
struct RustlsConnect(Arc<rustls::ClientConfig>);

impl RustlsConnect {
    fn trusting(ca: &Path) -> RustlsConnect {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rds_auth_proxy::tls::parse_pem_certs(&std::fs::read(ca).unwrap()).unwrap() {
            roots.add(cert).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(rds_auth_proxy::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        RustlsConnect(Arc::new(config))
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnectOne;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnectOne, Self::Error> {
        Ok(RustlsConnectOne {
            config: self.0.clone(),
            name: rustls::pki_types::ServerName::try_from(domain.to_owned())?,
        })
    }
}

struct RustlsConnectOne {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnectOne
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
