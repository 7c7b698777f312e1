//! The simulated RDS endpoint ("RDS front"): TLS with a certificate for the endpoint name, an
//! AuthenticationCleartextPassword request, the IAM token checked exactly as IAM would (signature
//! with the simulator's credentials, `rds-db`, region, host:port, DBUser, expiry), and — on a valid
//! login — the client's startup relayed verbatim to a real local PostgreSQL.
//!
//! One front serves several endpoint names (the instance, Aurora cluster / reader / custom
//! endpoints, an RDS Proxy endpoint): the TLS certificate is chosen by SNI, and a token must be
//! signed for the name the client asked for — a token for another of the front's names is refused,
//! as IAM refuses a signature over the wrong host.
//!
//! Which login a user gets is decided as RDS decides it: by the `rds_iam` grant in that
//! PostgreSQL. Members of `rds_iam` are asked for a password and must send a valid IAM token;
//! anyone else — the superuser included, and roles that do not exist — is asked for SCRAM.
//!
//! Configured password users ([`RdsFrontConfig::password_users`], not in `rds_iam`) get a real
//! password login: their startup goes to PostgreSQL at once and PostgreSQL itself runs the login
//! (`scram-sha-256` in its pg_hba.conf), so the proxy's SCRAM client meets PostgreSQL's own SCRAM
//! server. That leg is plain loopback TCP, so PostgreSQL offers SCRAM-SHA-256 without `-PLUS`
//! here; channel binding is exercised against the simulator's PostgreSQL directly, which serves
//! TLS itself. Everyone else outside `rds_iam` (the superuser, unknown roles) is asked for SCRAM
//! by the front itself, which can never succeed: nobody gets in as them through the front.
//!
//! Versions ([`PgEmulation`]): the PostgreSQL behind the front is Debian 12's 15, and by default
//! the front acts as 15 does where versions differ: a connection that opens with a TLS
//! ClientHello instead of SSLRequest is closed at once ("invalid length of startup packet"), and
//! TLS negotiates no ALPN. As PostgreSQL 17 it also takes direct TLS (`sslnegotiation=direct`:
//! first byte 0x16; ALPN `postgresql` required, a connection without it is closed after the
//! handshake, one offering only other protocols gets the `no_application_protocol` alert) and
//! reports `server_version` 17.4 in the login's ParameterStatus (that one message rewritten;
//! its value says it is an emulation). Everything else is still PostgreSQL 15's: a client that
//! believes the version and sends 17-only SQL (psql's `\d`) gets 15's errors.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::postgres::{RDS_IAM_ROLE, SUPERUSER};
use super::sigv4::{self, RdsTokenExpectation, SimCredentials};
use rds_auth_proxy_protocol::pg::backend::{self, MAX_PREAUTH_MESSAGE_LEN};
use rds_auth_proxy_protocol::pg::startup::{self, FirstPacket, StartupMessage};

/// How the front behaves.
pub struct RdsFrontConfig {
    /// The endpoint name and port tokens must be signed for.
    pub endpoint: String,
    pub port: u16,
    pub region: String,
    pub credentials: SimCredentials,
    pub tls: Arc<rustls::ServerConfig>,
    /// The real PostgreSQL behind the front. Its bootstrap superuser ([`SUPERUSER`]) must be
    /// trusted from 127.0.0.1: the front asks it who is a member of `rds_iam`.
    pub postgres: SocketAddr,
    /// Users that are password users, not IAM users: PostgreSQL runs their login (SCRAM-SHA-256).
    /// Only consulted for users outside `rds_iam`; membership in `rds_iam` wins.
    pub password_users: HashSet<String>,
    /// More names of this front besides `endpoint` (lowercase): a client that asks for one of them
    /// by SNI must bring a token signed for it. Without SNI, or with another name, tokens must be
    /// signed for `endpoint`.
    pub other_names: Vec<String>,
    /// Which PostgreSQL the front acts as where versions differ.
    pub emulation: PgEmulation,
}

/// The PostgreSQL version the front acts as (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PgEmulation {
    /// Like the PostgreSQL 15 behind it: no direct TLS, no ALPN.
    #[default]
    Pg15,
    /// PostgreSQL 17: direct TLS with ALPN `postgresql` (unless `direct_tls` is false: then a
    /// ClientHello is closed as 15 closes it, as something in front of a 17 that does not know
    /// direct TLS would), and `server_version` [`PG17_SERVER_VERSION`].
    Pg17 { direct_tls: bool },
}

/// The `server_version` the front reports as PostgreSQL 17.
pub const PG17_SERVER_VERSION: &str = "17.4 (emulated by the rds-auth-proxy simulator; PostgreSQL 15 behind)";

impl PgEmulation {
    /// From `sim --rds-pg-version MAJOR` and `--rds-refuse-direct-tls`.
    pub fn from_flags(major: u32, refuse_direct_tls: bool) -> PgEmulation {
        match major {
            17 => PgEmulation::Pg17 {
                direct_tls: !refuse_direct_tls,
            },
            _ => PgEmulation::Pg15,
        }
    }

    fn takes_direct_tls(self) -> bool {
        matches!(self, PgEmulation::Pg17 { direct_tls: true })
    }

    /// The `server_version` to report instead of the real one, if any.
    fn server_version(self) -> Option<&'static str> {
        match self {
            PgEmulation::Pg15 => None,
            PgEmulation::Pg17 { .. } => Some(PG17_SERVER_VERSION),
        }
    }

    /// The front's TLS for this version: ALPN `postgresql` from 17 on, none before.
    pub fn tls_config(self, mut tls: rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
        tls.alpn_protocols = match self {
            PgEmulation::Pg15 => Vec::new(),
            PgEmulation::Pg17 { .. } => vec![rds_auth_proxy_protocol::pg::POSTGRESQL_ALPN.to_vec()],
        };
        Arc::new(tls)
    }
}

impl RdsFrontConfig {
    /// The host a token must be signed for on a connection that asked for `sni`.
    pub fn token_host(&self, sni: Option<&str>) -> String {
        match sni.map(str::to_ascii_lowercase) {
            Some(name) if self.other_names.contains(&name) => name,
            _ => self.endpoint.clone(),
        }
    }
}

/// Counters and fault switches tests can reach while the front runs.
#[derive(Debug, Default)]
pub struct RdsFrontState {
    /// Logins accepted / rejected.
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// Cancel requests relayed to PostgreSQL.
    pub cancels: AtomicU64,
    /// Reject this many further logins even with a valid token (to exercise the proxy's retry).
    pub reject_next: AtomicUsize,
    /// SHA-256 of every distinct token presented: tells whether the proxy reuses tokens.
    pub distinct_tokens: std::sync::Mutex<HashSet<[u8; 32]>>,
    /// Accepted IAM logins per endpoint name (the host their token was signed for).
    pub accepted_by_name: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Connections that opened with an SSLRequest.
    pub ssl_requests: AtomicU64,
    /// Connections that opened with a TLS ClientHello (direct TLS), taken or not.
    pub direct_tls_attempts: AtomicU64,
    /// Direct TLS handshakes completed with ALPN `postgresql`.
    pub direct_tls_accepted: AtomicU64,
}

pub struct RdsFront {
    listener: TcpListener,
    config: Arc<RdsFrontConfig>,
    state: Arc<RdsFrontState>,
}

impl RdsFront {
    pub async fn bind(addr: SocketAddr, config: RdsFrontConfig) -> std::io::Result<RdsFront> {
        Ok(RdsFront {
            listener: TcpListener::bind(addr).await?,
            config: Arc::new(config),
            state: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<RdsFrontState> {
        self.state.clone()
    }

    /// Serves connections until the task is dropped.
    pub async fn run(self) {
        let (config, state) = (self.config, self.state);
        accept_loop(self.listener, "RDS", move |tcp, peer| {
            let (config, state) = (config.clone(), state.clone());
            async move { serve(&config, &state, tcp, peer).await }
        })
        .await
    }
}

/// A front's accept loop: each connection (TCP_NODELAY on) is served by `serve` in a task of its
/// own, forever; `name` says which front in log lines.
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, name: &'static str, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let served = serve(tcp, peer);
                tokio::spawn(async move {
                    if let Err(e) = served.await {
                        tracing::debug!(%peer, error = %e, "simulated {name}: connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "simulated {name}: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve(
    config: &RdsFrontConfig,
    state: &RdsFrontState,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(), BoxError> {
    // Only the very first byte can start direct TLS, as in PostgreSQL 17.
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 1 && first[0] == 0x16 {
        state.direct_tls_attempts.fetch_add(1, Ordering::Relaxed);
        if !config.emulation.takes_direct_tls() {
            // PostgreSQL before 17 reads the ClientHello's first bytes as a length, logs this
            // and closes without a word to the client.
            tracing::debug!(%peer, "simulated RDS: invalid length of startup packet (a TLS ClientHello: no direct TLS here)");
            return Ok(());
        }
        let tls = TlsAcceptor::from(config.tls.clone()).accept(tcp).await?;
        if tls.get_ref().1.alpn_protocol() != Some(rds_auth_proxy_protocol::pg::POSTGRESQL_ALPN) {
            // PostgreSQL 17 logs it (COMMERROR: not sent) and closes.
            tracing::debug!(%peer, "simulated RDS: received direct SSL connection request without ALPN protocol negotiation extension");
            return Ok(());
        }
        state.direct_tls_accepted.fetch_add(1, Ordering::Relaxed);
        return serve_tls(config, state, tls).await;
    }
    loop {
        match startup::read_first_packet(&mut tcp).await? {
            FirstPacket::SslRequest => {
                state.ssl_requests.fetch_add(1, Ordering::Relaxed);
                tcp.write_all(b"S").await?;
                let tls = TlsAcceptor::from(config.tls.clone()).accept(tcp).await?;
                return serve_tls(config, state, tls).await;
            }
            FirstPacket::GssEncRequest => tcp.write_all(b"N").await?,
            FirstPacket::Cancel(c) => return relay_cancel(config, state, c.as_bytes()).await,
            FirstPacket::Startup(s) => {
                // Like RDS for IAM users: the hba line is hostssl.
                let msg = format!(
                    "pg_hba.conf rejects connection for host \"{}\", user \"{}\", database \"{}\", no encryption",
                    peer.ip(),
                    s.user(),
                    s.database()
                );
                send_fatal(&mut tcp, "28000", &msg).await;
                return Ok(());
            }
        }
    }
}

/// After TLS, however it was negotiated: a startup or a cancel request.
async fn serve_tls(
    config: &RdsFrontConfig,
    state: &RdsFrontState,
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
) -> Result<(), BoxError> {
    let host = config.token_host(tls.get_ref().1.server_name());
    match startup::read_first_packet(&mut tls).await? {
        FirstPacket::Startup(s) => login(config, state, tls, s, host).await,
        FirstPacket::Cancel(c) => relay_cancel(config, state, c.as_bytes()).await,
        _ => {
            send_fatal(&mut tls, "08P01", "unsupported request inside TLS").await;
            Ok(())
        }
    }
}

async fn login<S>(
    config: &RdsFrontConfig,
    state: &RdsFrontState,
    mut client: S,
    startup: StartupMessage,
    host: String,
) -> Result<(), BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = startup.user().into_owned();
    if !is_iam_user(config.postgres, &user).await? {
        if config.password_users.contains(&user) {
            // What a password user meets on RDS: a password login, here PostgreSQL's own SCRAM.
            let mut pg = TcpStream::connect(config.postgres).await?;
            pg.set_nodelay(true)?;
            pg.write_all(startup.as_bytes()).await?;
            return relay(config.emulation, client, pg).await;
        }
        // What any other non-IAM user meets on RDS: SCRAM. There is no password to check it
        // against, so whatever the client sends is refused as PostgreSQL refuses a wrong
        // password (earlier than PostgreSQL, which first plays out a mock exchange): nobody gets
        // in this way, and the proxy, which tries its IAM token, says clearly what to do.
        let mut m = BytesMut::new();
        pgwire::messages::startup::Authentication::SASL(vec!["SCRAM-SHA-256".into()])
            .encode(&mut m)?;
        client.write_all(&m).await?;
        let mut buf = BytesMut::new();
        if backend::read_message(&mut client, &mut buf, MAX_PREAUTH_MESSAGE_LEN).await.is_ok() {
            send_fatal(
                &mut client,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
            )
            .await;
        }
        return Ok(());
    }
    client.write_all(b"R\x00\x00\x00\x08\x00\x00\x00\x03").await?;
    let mut buf = BytesMut::new();
    let msg = backend::read_message(&mut client, &mut buf, MAX_PREAUTH_MESSAGE_LEN).await?;
    let password = match (msg.tag(), msg.body().split_last()) {
        (b'p', Some((0, token))) => String::from_utf8_lossy(token).into_owned(),
        _ => {
            send_fatal(&mut client, "08P01", "expected a password message").await;
            return Ok(());
        }
    };
    let expect = RdsTokenExpectation {
        host: host.clone(),
        port: config.port,
        region: config.region.clone(),
        user: user.clone(),
    };
    {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(password.as_bytes()).into();
        state
            .distinct_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest);
    }
    let verdict = sigv4::verify_rds_token(&password, &expect, &config.credentials, SystemTime::now());
    let forced = state
        .reject_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if let Err(reason) = &verdict {
        tracing::info!(%user, %reason, "simulated RDS: IAM token rejected");
    }
    if verdict.is_err() || forced {
        state.rejected.fetch_add(1, Ordering::Relaxed);
        send_fatal(
            &mut client,
            "28000",
            &format!("PAM authentication failed for user \"{user}\""),
        )
        .await;
        return Ok(());
    }
    state.accepted.fetch_add(1, Ordering::Relaxed);
    *state
        .accepted_by_name
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(host)
        .or_default() += 1;
    let mut pg = TcpStream::connect(config.postgres).await?;
    pg.set_nodelay(true)?;
    pg.write_all(startup.as_bytes()).await?;
    if !buf.is_empty() {
        pg.write_all(&buf).await?;
    }
    relay(config.emulation, client, pg).await
}

/// Relays a logged-in (or logging-in) client and PostgreSQL until either ends. Emulating another
/// version, PostgreSQL's messages up to the first ReadyForQuery go one by one, with
/// `server_version` rewritten; then bytes as they come.
async fn relay<S>(emulation: PgEmulation, client: S, pg: TcpStream) -> Result<(), BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    relay_as_version(emulation.server_version(), client, pg).await
}

/// [`relay`] reporting `server_version` as `version`, if given (the Redshift front's 8.0.2 too).
pub(crate) async fn relay_as_version<S>(
    version: Option<&str>,
    mut client: S,
    mut pg: TcpStream,
) -> Result<(), BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(version) = version else {
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut pg, 64 * 1024, 64 * 1024).await?;
        return Ok(());
    };
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut pg_r, mut pg_w) = pg.split();
    let up = async {
        tokio::io::copy(&mut client_r, &mut pg_w).await?;
        pg_w.shutdown().await
    };
    let down = async {
        let mut buf = BytesMut::new();
        loop {
            let msg = match backend::read_message(&mut pg_r, &mut buf, MAX_PREAUTH_MESSAGE_LEN).await {
                Ok(msg) => msg,
                // PostgreSQL closed (a FATAL already relayed): so does the client's side.
                Err(_) => break,
            };
            if msg.tag() == b'S' && msg.body().starts_with(b"server_version\0") {
                client_w.write_all(&parameter_status("server_version", version)).await?;
            } else {
                client_w.write_all(msg.as_bytes()).await?;
            }
            if msg.tag() == b'Z' {
                client_w.write_all(&buf).await?;
                tokio::io::copy(&mut pg_r, &mut client_w).await?;
                break;
            }
        }
        client_w.shutdown().await
    };
    tokio::try_join!(up, down)?;
    Ok(())
}

/// A ParameterStatus message.
pub(crate) fn parameter_status(name: &str, value: &str) -> BytesMut {
    use bytes::BufMut;
    let mut m = BytesMut::new();
    m.put_u8(b'S');
    m.put_u32((4 + name.len() + 1 + value.len() + 1) as u32);
    m.put_slice(name.as_bytes());
    m.put_u8(0);
    m.put_slice(value.as_bytes());
    m.put_u8(0);
    m
}

/// Whether `user` is a member of `rds_iam`, directly or through other roles, asked of the real
/// PostgreSQL. Superuser status does not count: RDS's `+rds_iam` hba line uses plain membership,
/// so an administrator without the grant is a password user like any other.
pub async fn is_iam_user(postgres: SocketAddr, user: &str) -> Result<bool, BoxError> {
    let sql = format!(
        "WITH RECURSIVE m(oid) AS (SELECT oid FROM pg_roles WHERE rolname = {user} \
         UNION SELECT a.roleid FROM pg_auth_members a JOIN m ON a.member = m.oid) \
         SELECT EXISTS (SELECT 1 FROM m JOIN pg_roles r USING (oid) WHERE r.rolname = {role})",
        user = quote_literal(user),
        role = quote_literal(RDS_IAM_ROLE),
    );
    let answer = simple_query_one(postgres, &sql).await?;
    Ok(answer == "t")
}

/// A single-quoted SQL literal (standard_conforming_strings is on in every supported PostgreSQL).
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The first column of the first row of `sql`, run as the superuser over the simple query
/// protocol: a dozen lines instead of a client library in the simulator.
pub(crate) async fn simple_query_one(postgres: SocketAddr, sql: &str) -> Result<String, BoxError> {
    use bytes::{Buf, BufMut};
    let mut pg = TcpStream::connect(postgres).await?;
    let params = [("user", SUPERUSER), ("database", "postgres")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
    pg.write_all(&startup::encode_startup(3, 0, &params)).await?;
    let mut query = BytesMut::new();
    query.put_u8(b'Q');
    query.put_u32((sql.len() + 5) as u32);
    query.put_slice(sql.as_bytes());
    query.put_u8(0);
    let mut buf = BytesMut::new();
    let mut sent = false;
    let mut value = None;
    loop {
        let msg = backend::read_message(&mut pg, &mut buf, MAX_PREAUTH_MESSAGE_LEN).await?;
        match msg.tag() {
            b'E' => {
                let fields = backend::parse_error_fields(msg.body())?;
                let message = backend::error_field(&fields, b'M').unwrap_or("").to_owned();
                return Err(format!("simulated RDS: role lookup failed: {message}").into());
            }
            b'D' if value.is_none() => {
                let mut body = msg.body();
                if body.remaining() >= 6 && body.get_u16() >= 1 {
                    let len = body.get_i32();
                    if len >= 0 && body.remaining() >= len as usize {
                        value = Some(String::from_utf8_lossy(&body[..len as usize]).into_owned());
                    }
                }
            }
            b'Z' if !sent => {
                pg.write_all(&query).await?;
                sent = true;
            }
            b'Z' => {
                let _ = pg.write_all(b"X\x00\x00\x00\x04").await;
                return value.ok_or_else(|| "simulated RDS: role lookup returned no row".into());
            }
            _ => {}
        }
    }
}

/// Hands a CancelRequest to PostgreSQL and waits until it has acted on it.
pub(crate) async fn relay_cancel_to(
    postgres: SocketAddr,
    packet: &[u8],
) -> Result<(), BoxError> {
    let mut pg = TcpStream::connect(postgres).await?;
    pg.write_all(packet).await?;
    // PostgreSQL closes after acting on it; wait so the cancel is done when we return.
    let mut sink = [0u8; 16];
    let _ = pg.read(&mut sink).await;
    Ok(())
}

async fn relay_cancel(
    config: &RdsFrontConfig,
    state: &RdsFrontState,
    packet: &[u8],
) -> Result<(), BoxError> {
    state.cancels.fetch_add(1, Ordering::Relaxed);
    relay_cancel_to(config.postgres, packet).await
}

/// Writes a FATAL ErrorResponse the way PostgreSQL does during startup.
pub(crate) async fn send_fatal<S: AsyncWrite + Unpin>(client: &mut S, code: &str, message: &str) {
    let mut buf = BytesMut::new();
    let fields = vec![
        (b'S', "FATAL".to_owned()),
        (b'V', "FATAL".to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    if ErrorResponse::new(fields).encode(&mut buf).is_ok() {
        let _ = client.write_all(&buf).await;
    }
    let _ = client.shutdown().await;
}

