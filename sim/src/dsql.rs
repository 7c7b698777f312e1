//! The simulated Aurora DSQL endpoint ("DSQL front"): TLS required, by SSLRequest or direct TLS
//! (ALPN `postgresql`, what AWS's connectors use), and SNI required, as DSQL routes by it; only
//! database `postgres`; a cleartext password request whose answer must be a DSQL auth token
//! checked exactly ([`sigv4::verify_dsql_token`]: the SNI name, `DbConnect` or `DbConnectAdmin`
//! for `admin`, `dsql`, the region, expiry, the signature); then the client's startup relayed
//! verbatim to the real PostgreSQL, where the roles (`admin`, [`DSQL_READER`]) exist as they must
//! on DSQL.
//!
//! DSQL ends every connection after 60 minutes; no error is documented for it and a node-pg user
//! saw only "Connection terminated unexpectedly", so the front closes both directions without a
//! word when a connection reaches [`DsqlFrontState::set_connection_age_limit`] (tokio time: a
//! paused-clock test reaches it at once).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::rds::{relay_cancel_to, send_fatal};
use super::sigv4::{self, DsqlTokenExpectation, SimCredentials};
use rds_auth_proxy_protocol::pg::backend::{self, MAX_PREAUTH_MESSAGE_LEN};
use rds_auth_proxy_protocol::pg::startup::{self, FirstPacket, StartupMessage};

/// The non-admin login role the simulated cluster has (created in the throwaway PostgreSQL).
pub const DSQL_READER: &str = "dsql_reader";
/// The only database a DSQL cluster has.
pub const DSQL_DATABASE: &str = "postgres";
/// How long DSQL lets a connection live.
pub const DSQL_CONNECTION_AGE_LIMIT: Duration = Duration::from_secs(60 * 60);

/// How the front behaves.
pub struct DsqlFrontConfig {
    /// The cluster endpoint name: SNI must name it, and tokens must be signed for it.
    pub endpoint: String,
    pub region: String,
    pub credentials: SimCredentials,
    /// TLS for the endpoint name (ALPN `postgresql` offered, for direct TLS).
    pub tls: Arc<rustls::ServerConfig>,
    /// The real PostgreSQL behind the front.
    pub postgres: SocketAddr,
}

/// Counters and switches tests can reach while the front runs.
#[derive(Debug)]
pub struct DsqlFrontState {
    /// Logins accepted / refused (a bad token, the wrong action, an unknown database).
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// TLS connections refused because the client sent no SNI (or a name this cluster is not).
    pub no_sni: AtomicU64,
    /// Connections that opened with a TLS ClientHello (direct TLS) / with an SSLRequest.
    pub direct_tls: AtomicU64,
    pub ssl_requests: AtomicU64,
    /// Connections the age limit closed.
    pub age_cuts: AtomicU64,
    /// The age limit for connections that start from now on (default 60 minutes).
    age_limit: Mutex<Duration>,
}

impl Default for DsqlFrontState {
    fn default() -> Self {
        DsqlFrontState {
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            no_sni: AtomicU64::new(0),
            direct_tls: AtomicU64::new(0),
            ssl_requests: AtomicU64::new(0),
            age_cuts: AtomicU64::new(0),
            age_limit: Mutex::new(DSQL_CONNECTION_AGE_LIMIT),
        }
    }
}

impl DsqlFrontState {
    /// Connections accepted from now on are closed when they are `limit` old.
    pub fn set_connection_age_limit(&self, limit: Duration) {
        *self.age_limit.lock().unwrap_or_else(|p| p.into_inner()) = limit;
    }

    pub fn connection_age_limit(&self) -> Duration {
        *self.age_limit.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct DsqlFront {
    listener: TcpListener,
    config: Arc<DsqlFrontConfig>,
    state: Arc<DsqlFrontState>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl DsqlFront {
    pub async fn bind(addr: SocketAddr, config: DsqlFrontConfig) -> std::io::Result<DsqlFront> {
        Ok(DsqlFront {
            listener: TcpListener::bind(addr).await?,
            config: Arc::new(config),
            state: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<DsqlFrontState> {
        self.state.clone()
    }

    /// Serves connections until the task is dropped. A connection's age counts from its accept.
    pub async fn run(self) {
        let (config, state) = (self.config, self.state);
        super::rds::accept_loop(self.listener, "DSQL", move |tcp, _peer| {
            let (config, state) = (config.clone(), state.clone());
            let cut_at = Instant::now() + state.connection_age_limit();
            async move { serve(&config, &state, tcp, cut_at).await }
        })
        .await
    }
}

async fn serve(
    config: &DsqlFrontConfig,
    state: &DsqlFrontState,
    mut tcp: TcpStream,
    cut_at: Instant,
) -> Result<(), BoxError> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 1 && first[0] == 0x16 {
        state.direct_tls.fetch_add(1, Ordering::Relaxed);
        let tls = TlsAcceptor::from(config.tls.clone()).accept(tcp).await?;
        if tls.get_ref().1.alpn_protocol() != Some(rds_auth_proxy_protocol::pg::POSTGRESQL_ALPN) {
            // As PostgreSQL 17 does with direct TLS without ALPN: closed without a word.
            tracing::debug!("simulated DSQL: direct TLS without ALPN postgresql");
            return Ok(());
        }
        return serve_tls(config, state, tls, cut_at).await;
    }
    loop {
        match startup::read_first_packet(&mut tcp).await? {
            FirstPacket::SslRequest => {
                state.ssl_requests.fetch_add(1, Ordering::Relaxed);
                tcp.write_all(b"S").await?;
                let tls = TlsAcceptor::from(config.tls.clone()).accept(tcp).await?;
                return serve_tls(config, state, tls, cut_at).await;
            }
            FirstPacket::GssEncRequest => tcp.write_all(b"N").await?,
            FirstPacket::Cancel(c) => return relay_cancel_to(config.postgres, c.as_bytes()).await,
            FirstPacket::Startup(_) => {
                state.rejected.fetch_add(1, Ordering::Relaxed);
                send_fatal(&mut tcp, "28000", "unable to accept connection, SSL required").await;
                return Ok(());
            }
        }
    }
}

async fn serve_tls(
    config: &DsqlFrontConfig,
    state: &DsqlFrontState,
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    cut_at: Instant,
) -> Result<(), BoxError> {
    let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
    let Some(host) = sni.filter(|name| name.eq_ignore_ascii_case(&config.endpoint)) else {
        // DSQL finds the cluster by SNI; psql before 14 sends none (DSQL troubleshooting page).
        state.no_sni.fetch_add(1, Ordering::Relaxed);
        send_fatal(&mut tls, "08P01", "unable to accept connection, sni was not received").await;
        return Ok(());
    };
    match startup::read_first_packet(&mut tls).await? {
        FirstPacket::Startup(s) => login(config, state, tls, s, host, cut_at).await,
        FirstPacket::Cancel(c) => relay_cancel_to(config.postgres, c.as_bytes()).await,
        _ => {
            send_fatal(&mut tls, "08P01", "unsupported request inside TLS").await;
            Ok(())
        }
    }
}

async fn login<S>(
    config: &DsqlFrontConfig,
    state: &DsqlFrontState,
    mut client: S,
    startup: StartupMessage,
    host: String,
    cut_at: Instant,
) -> Result<(), BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = startup.user().into_owned();
    let database = startup.database().into_owned();
    if database != DSQL_DATABASE {
        state.rejected.fetch_add(1, Ordering::Relaxed);
        send_fatal(&mut client, "3D000", &format!("database \"{database}\" does not exist")).await;
        return Ok(());
    }
    client.write_all(b"R\x00\x00\x00\x08\x00\x00\x00\x03").await?;
    let mut buf = BytesMut::new();
    let msg = backend::read_message(&mut client, &mut buf, MAX_PREAUTH_MESSAGE_LEN).await?;
    let token = match (msg.tag(), msg.body().split_last()) {
        (b'p', Some((0, token))) => String::from_utf8_lossy(token).into_owned(),
        _ => {
            send_fatal(&mut client, "08P01", "expected a password message").await;
            return Ok(());
        }
    };
    let expect = DsqlTokenExpectation {
        host,
        region: config.region.clone(),
        user: user.clone(),
    };
    if let Err(reason) = sigv4::verify_dsql_token(&token, &expect, &config.credentials, SystemTime::now()) {
        tracing::info!(%user, %reason, "simulated DSQL: auth token refused");
        state.rejected.fetch_add(1, Ordering::Relaxed);
        let message = format!("IAM authentication failed for user \"{user}\"");
        send_fatal(&mut client, "28000", &message).await;
        return Ok(());
    }
    state.accepted.fetch_add(1, Ordering::Relaxed);
    let mut pg = TcpStream::connect(config.postgres).await?;
    pg.set_nodelay(true)?;
    pg.write_all(startup.as_bytes()).await?;
    if !buf.is_empty() {
        pg.write_all(&buf).await?;
    }
    let relay = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut pg, 64 * 1024, 64 * 1024);
    match tokio::time::timeout_at(cut_at, relay).await {
        Ok(ended) => {
            ended?;
        }
        Err(_) => {
            // Both sides dropped without a close_notify or an ErrorResponse, as DSQL's cut looks.
            state.age_cuts.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%user, "simulated DSQL: connection reached its age limit; closed");
        }
    }
    Ok(())
}
