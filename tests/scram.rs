//! Password (SCRAM) users through the in-process proxy: the password from a file and from the
//! simulated Secrets Manager, PostgreSQL's own SCRAM server behind the simulated RDS front,
//! channel binding against PostgreSQL serving TLS itself, rotation, and scripted servers whose
//! SCRAM signature does not verify.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;

use base64::Engine;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::*;
use rds_auth_proxy::app::Credentials;
use rds_auth_proxy_sim::runner::{secret_name, SIM_ENDPOINT, SIM_PASSWORD_USER};
use rds_auth_proxy_sim::Simulator;

fn replace_arg(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).expect("flag present");
    args[i + 1] = value.to_owned();
}

/// A 0600 file holding `password` on one line.
fn password_file(password: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), format!("{password}\n")).expect("write");
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    f
}

async fn start_with(sim: &Simulator, args: &[String]) -> RunningProxy {
    start_proxy_with(args, Credentials::FixedWith(sim.aws_setup())).await
}

async fn current_user(proxy: &RunningProxy, user: &str) -> Result<String, tokio_postgres::Error> {
    let client = connect(proxy, user).await?;
    let row = client.query_one("SELECT current_user", &[]).await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_user_with_password_file_and_from_secrets_manager() {
    let sim = start_sim().await;
    let password = sim.password(SIM_PASSWORD_USER).expect("the sim has a password user");

    // --password-file, through the RDS front: PostgreSQL's own SCRAM-SHA-256 server.
    let file = password_file(&password);
    let mut args = direct_args(&sim);
    args.extend(["--password-file".into(), file.path().display().to_string(), "--password-user".into(), SIM_PASSWORD_USER.into()]);
    let proxy = start_with(&sim, &args).await;
    assert_eq!(current_user(&proxy, SIM_PASSWORD_USER).await.expect("SCRAM login"), SIM_PASSWORD_USER);
    proxy.stop().await;

    // A wrong password in the file: PostgreSQL's 28P01 reaches the client as sent.
    let wrong = password_file("not-the-password");
    let mut args = direct_args(&sim);
    args.extend(["--password-file".into(), wrong.path().display().to_string(), "--password-user".into(), SIM_PASSWORD_USER.into()]);
    let proxy = start_with(&sim, &args).await;
    let (code, message, _) = db_error(&current_user(&proxy, SIM_PASSWORD_USER).await.unwrap_err());
    assert_eq!(code, "28P01");
    assert!(message.contains("password authentication failed"), "{message}");
    proxy.stop().await;

    // --password-secret by name, then by ARN with the key spelled out: read once, then cached.
    for id in [secret_name(SIM_PASSWORD_USER), sim.secrets.arn(&secret_name(SIM_PASSWORD_USER)).unwrap()] {
        let before = sim.secrets.reads();
        let mut args = direct_args(&sim);
        args.extend(["--password-secret".into(), id, "--password-secret-key".into(), "password".into()]);
        let proxy = start_with(&sim, &args).await;
        for _ in 0..3 {
            assert_eq!(current_user(&proxy, SIM_PASSWORD_USER).await.expect("SCRAM login"), SIM_PASSWORD_USER);
        }
        assert_eq!(sim.secrets.reads() - before, 1, "the secret is read once and cached");
        proxy.stop().await;
    }

    // A secret that does not exist, for a named user (so not read at start): a clear 28000
    // naming it, with a hint.
    let mut args = direct_args(&sim);
    args.extend(["--password-secret".into(), "no-such-secret".into(), "--password-user".into(), SIM_PASSWORD_USER.into()]);
    let proxy = start_with(&sim, &args).await;
    let (code, message, hint) = db_error(&current_user(&proxy, SIM_PASSWORD_USER).await.unwrap_err());
    assert_eq!(code, "28000");
    assert!(message.contains("no-such-secret") && message.contains("does not exist"), "{message}");
    assert!(hint.unwrap().contains("--password-secret"));
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_is_read_again_after_28p01() {
    let sim = start_sim().await;
    let mut args = direct_args(&sim);
    args.extend(["--password-secret".into(), secret_name(SIM_PASSWORD_USER)]);
    let proxy = start_with(&sim, &args).await;
    assert_eq!(current_user(&proxy, SIM_PASSWORD_USER).await.unwrap(), SIM_PASSWORD_USER);
    assert_eq!(sim.secrets.reads(), 1);

    let old = sim.password(SIM_PASSWORD_USER).unwrap();
    let new = sim.rotate_password(SIM_PASSWORD_USER).await.expect("rotation");
    assert_ne!(old, new);
    // The cached password fails (28P01), the retry reads the secret again and logs in.
    assert_eq!(current_user(&proxy, SIM_PASSWORD_USER).await.expect("retry with the new password"), SIM_PASSWORD_USER);
    assert_eq!(sim.secrets.reads(), 2, "re-read exactly once");
    assert_eq!(current_user(&proxy, SIM_PASSWORD_USER).await.unwrap(), SIM_PASSWORD_USER);
    assert_eq!(sim.secrets.reads(), 2, "the new password is cached");
    // IAM users through the same front are untouched by any of it.
    assert_eq!(sim.front_state.accepted.load(Ordering::SeqCst), 0);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_against_postgresql_serving_tls() {
    let sim = start_sim().await;
    let password = sim.password(SIM_PASSWORD_USER).unwrap();
    let file = password_file(&password);
    // Straight to PostgreSQL, which serves TLS with a certificate for the endpoint name and
    // offers SCRAM-SHA-256-PLUS: PostgreSQL checks our tls-server-end-point binding itself.
    let mut args = direct_args(&sim);
    replace_arg(&mut args, "--connect-addr", &sim.postgres.addr().to_string());
    args.extend(["--password-file".into(), file.path().display().to_string(), "--password-user".into(), SIM_PASSWORD_USER.into()]);
    let proxy = start_with(&sim, &args).await;
    let client = connect(&proxy, SIM_PASSWORD_USER).await.expect("SCRAM-SHA-256-PLUS login");
    let row = client
        .query_one("SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), SIM_PASSWORD_USER);
    assert!(row.get::<_, bool>(1), "the upstream leg is PostgreSQL's own TLS");
    drop(client);
    // The proxy's log names the mechanism (SCRAM-SHA-256-PLUS): tests/cli.rs checks it; the
    // binding data itself is checked byte-exact by the scripted server below.
    // A wrong password over the bound exchange is still PostgreSQL's 28P01.
    let wrong = password_file("not-the-password");
    replace_arg(&mut args, "--password-file", &wrong.path().display().to_string());
    let proxy2 = start_with(&sim, &args).await;
    let (code, _, _) = db_error(&connect(&proxy2, SIM_PASSWORD_USER).await.unwrap_err());
    assert_eq!(code, "28P01");
    proxy2.stop().await;
    proxy.stop().await;
    sim.stop().await;
}

/// What the scripted server does after the client's SCRAM final message.
#[derive(Clone, Copy)]
enum Script {
    /// SASLFinal with a signature made with the wrong key, then AuthenticationOk.
    BadSignature,
    /// AuthenticationOk at once, skipping SASLFinal.
    SkipFinal,
}

async fn read_frontend(s: &mut (impl AsyncReadExt + Unpin)) -> (u8, Vec<u8>) {
    let tag = s.read_u8().await.expect("a message");
    let len = s.read_u32().await.expect("length") as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.expect("body");
    (tag, body)
}

fn auth(code: i32, data: &[u8]) -> Vec<u8> {
    let mut m = vec![b'R'];
    m.extend_from_slice(&((8 + data.len()) as u32).to_be_bytes());
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// What the scripted server saw of the client's SCRAM messages.
struct Observed {
    /// client-first-message.
    first: String,
    /// The `c=` attribute of client-final-message.
    cbind: String,
    /// The proxy sent nothing after the unverified exchange.
    nothing_after: bool,
}

/// A TLS server for the endpoint name that offers SCRAM-SHA-256-PLUS without knowing the
/// password; returns its address, its leaf certificate (DER) and what it observed.
async fn scripted_server(
    sim: &Simulator,
    script: Script,
) -> (std::net::SocketAddr, Vec<u8>, tokio::task::JoinHandle<Observed>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (chain_pem, key_pem) = sim.ca.issue_pem(&[SIM_ENDPOINT.to_owned()]).unwrap();
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes()).unwrap().unwrap();
    let leaf = chain[0].to_vec();
    let tls = rustls::ServerConfig::builder_with_provider(rds_auth_proxy::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut ssl_request = [0u8; 8];
        tcp.read_exact(&mut ssl_request).await.unwrap();
        tcp.write_all(b"S").await.unwrap();
        let mut s = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls)).accept(tcp).await.unwrap();
        let len = s.read_u32().await.unwrap() as usize;
        let mut startup = vec![0; len - 4];
        s.read_exact(&mut startup).await.unwrap();
        s.write_all(&auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")).await.unwrap();
        let (tag, body) = read_frontend(&mut s).await;
        assert_eq!(tag, b'p');
        // SASLInitialResponse: mechanism\0, Int32 length, client-first-message.
        let nul = body.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&body[..nul], b"SCRAM-SHA-256-PLUS");
        let first = String::from_utf8(body[nul + 5..].to_vec()).unwrap();
        let nonce = first.rsplit("r=").next().unwrap().to_owned();
        let b64 = base64::engine::general_purpose::STANDARD;
        let server_first = format!("r={nonce}FAKE,s={},i=4096", b64.encode(b"saltsaltsaltsalt"));
        s.write_all(&auth(11, server_first.as_bytes())).await.unwrap();
        let (tag, body) = read_frontend(&mut s).await;
        assert_eq!(tag, b'p');
        let final_msg = String::from_utf8(body).unwrap();
        let cbind = final_msg
            .split(',')
            .find_map(|a| a.strip_prefix("c="))
            .unwrap()
            .to_owned();
        if let Script::BadSignature = script {
            let v = format!("v={}", b64.encode([7u8; 32]));
            s.write_all(&auth(12, v.as_bytes())).await.unwrap();
        }
        s.write_all(&auth(0, b"")).await.unwrap();
        s.write_all(b"Z\x00\x00\x00\x05I").await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        Observed {
            first,
            cbind,
            nothing_after: rest.is_empty(),
        }
    });
    (addr, leaf, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_prove_the_password_is_refused() {
    let sim = start_sim().await;
    let file = password_file("the-real-password");
    for (script, expected) in [
        (Script::BadSignature, "SCRAM signature does not verify"),
        (Script::SkipFinal, "before proving it knows the password"),
    ] {
        let (addr, leaf, server) = scripted_server(&sim, script).await;
        let mut args = direct_args(&sim);
        replace_arg(&mut args, "--connect-addr", &addr.to_string());
        args.extend(["--password-file".into(), file.path().display().to_string(), "--password-user".into(), "app".into()]);
        let proxy = start_with(&sim, &args).await;
        let err = connect(&proxy, "app").await.expect_err("refused before AuthenticationOk");
        let (code, message, hint) = db_error(&err);
        assert_eq!(code, "28000", "{message}");
        assert!(message.contains(expected), "{message}");
        assert!(hint.unwrap().contains("may not be the database you mean"));
        let seen = server.await.unwrap();
        assert!(seen.nothing_after, "nothing was sent after the unverified exchange");
        // Channel binding: tls-server-end-point over the certificate this TLS session verified
        // (rcgen signs with ecdsa-with-SHA256, so SHA-256 of the DER), byte-exact.
        assert!(seen.first.starts_with("p=tls-server-end-point,,n=,r="), "{}", seen.first);
        let mut expected = b"p=tls-server-end-point,,".to_vec();
        expected.extend_from_slice(&sha2::Sha256::digest(&leaf));
        assert_eq!(seen.cbind, base64::engine::general_purpose::STANDARD.encode(expected));
        proxy.stop().await;
    }
    sim.stop().await;
}

/// A TLS server for the endpoint name that asks MD5 with `salt` and returns the client's
/// PasswordMessage body, after answering AuthenticationOk + ReadyForQuery.
async fn md5_server(sim: &Simulator, salt: [u8; 4]) -> (std::net::SocketAddr, tokio::task::JoinHandle<Option<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = sim.ca.server_config(&[SIM_ENDPOINT.to_owned()]).unwrap();
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut ssl_request = [0u8; 8];
        tcp.read_exact(&mut ssl_request).await.unwrap();
        tcp.write_all(b"S").await.unwrap();
        let mut s = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await.unwrap();
        let len = s.read_u32().await.unwrap() as usize;
        let mut startup = vec![0; len - 4];
        s.read_exact(&mut startup).await.unwrap();
        s.write_all(&auth(5, &salt)).await.unwrap();
        let tag = s.read_u8().await.ok()?;
        let len = s.read_u32().await.ok()? as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.ok()?;
        assert_eq!(tag, b'p');
        s.write_all(&auth(0, b"")).await.unwrap();
        s.write_all(b"Z\x00\x00\x00\x05I").await.unwrap();
        Some(body)
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_is_answered_when_a_password_is_known_and_refused_clearly_otherwise() {
    let sim = start_sim().await;
    let salt = [0x9a, 0x01, 0xff, 0x3c];
    let file = password_file("md5-password");
    let (addr, server) = md5_server(&sim, salt).await;
    let mut args = direct_args(&sim);
    replace_arg(&mut args, "--connect-addr", &addr.to_string());
    args.extend(["--password-file".into(), file.path().display().to_string(), "--password-user".into(), "app".into()]);
    let proxy = start_with(&sim, &args).await;
    let client = connect(&proxy, "app").await.expect("MD5 login");
    drop(client);
    let body = server.await.unwrap().expect("a PasswordMessage");
    // "md5" + md5(md5(password + user) + salt), NUL-terminated.
    let mut expected = postgres_protocol::authentication::md5_hash(b"app", b"md5-password", salt).into_bytes();
    expected.push(0);
    assert_eq!(body, expected);
    assert!(body.starts_with(b"md5") && body.len() == 3 + 32 + 1);
    proxy.stop().await;

    // No password configured: nothing is sent, and the error names the flags.
    let (addr, server) = md5_server(&sim, salt).await;
    let mut args = direct_args(&sim);
    replace_arg(&mut args, "--connect-addr", &addr.to_string());
    let proxy = start_with(&sim, &args).await;
    let (code, message, hint) = db_error(&connect(&proxy, "app").await.unwrap_err());
    assert_eq!(code, "28000");
    assert!(message.contains("asked MD5 password authentication for user \"app\""), "{message}");
    let hint = hint.unwrap();
    assert!(hint.contains("--password-secret") && hint.contains("--password-file"), "{hint}");
    assert_eq!(server.await.unwrap(), None, "no password message was sent");
    proxy.stop().await;
    sim.stop().await;
}
