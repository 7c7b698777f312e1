//! The connect side: open the tunnel, SSLRequest → `S` → TLS verify-full against the endpoint
//! name (or, on PostgreSQL 17 and later, TLS at once: [`ServerKnowledge`]), send the client's startup, answer the password request (an IAM token, or a configured
//! password: cleartext, SCRAM-SHA-256(-PLUS) with the server's signature verified before
//! AuthenticationOk is believed, MD5), and stop at the first ReadyForQuery. The client only ever
//! sees AuthenticationOk and the session start — or an error that says why not.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use bytes::{BufMut, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::auth::scram;
use crate::tls::DirectTls;
use crate::auth::{AuthError, PasswordError};
use crate::pg::backend::{self, AuthRequest, FrameError, MAX_PREAUTH_MESSAGE_LEN};
use crate::pg::startup::{StartupMessage, SSL_REQUEST};
use crate::pg::{SqlState, UserFacing};
use crate::target::TargetContext;
use crate::tunnel::{TunnelError, TunnelStream};

/// An authenticated upstream connection, ready for relay.
pub struct Upstream {
    pub stream: TlsStream<TunnelStream>,
    /// What the client must receive before relay starts: NegotiateProtocolVersion and notices
    /// seen during auth, AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery, and
    /// whatever the upstream already sent after it.
    pub to_client: BytesMut,
    /// The SSM session the connection runs in (`--via ssm`).
    pub ssm_session: Option<String>,
    /// Resolves when the tunnel reset this connection because its client stopped reading.
    pub stall: Option<crate::tunnel::ssm::pool::StallWatch>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach the upstream ({how})")]
    Tunnel {
        how: String,
        hint: String,
        #[source]
        source: TunnelError,
    },
    #[error("timed out after {secs} s while {phase}")]
    Timeout { phase: &'static str, secs: u64 },
    #[error("the upstream at {endpoint} does not accept TLS")]
    TlsRefused { endpoint: String },
    /// TLS without SSLRequest (PostgreSQL 17's direct TLS) failed before it completed, for
    /// another reason than the certificate: closed, not TLS, or no ALPN `postgresql`.
    #[error("the upstream at {endpoint} does not take direct TLS (PostgreSQL 17's sslnegotiation=direct)")]
    DirectTlsRefused {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {endpoint} failed")]
    Tls {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server asked {method} authentication for user \"{user}\": it is not an IAM database user, and no password is configured")]
    NoPassword { user: String, method: String },
    #[error("the server ran {mechanism} for user \"{user}\" and refused the IAM token ({sqlstate} {message}): it is a password user, not an IAM database user")]
    IamTokenNotPassword {
        user: String,
        mechanism: &'static str,
        sqlstate: String,
        message: String,
    },
    #[error("the server asked for an unsupported authentication method (code {0})")]
    UnsupportedAuth(i32),
    #[error("the server offers only SASL mechanisms rds-auth-proxy does not speak: {0}")]
    UnsupportedSasl(String),
    #[error("the server broke the SCRAM exchange")]
    Scram(#[source] std::io::Error),
    #[error("the server's SCRAM signature does not verify: it did not prove it knows the password{}", if *bound { " for this TLS session (channel binding)" } else { "" })]
    ServerSignature {
        bound: bool,
        #[source]
        source: std::io::Error,
    },
    #[error("the server sent AuthenticationOk before proving it knows the password (SCRAM exchange not completed)")]
    ServerUnverified,
    /// `profile`: the `--profile` in use, so an SSO HINT can name the exact `aws sso login`.
    #[error("could not create an IAM token")]
    Auth {
        #[source]
        source: AuthError,
        profile: Option<String>,
    },
    #[error("no password for the database user")]
    Password(#[source] PasswordError),
    /// The IAM token went out with the startup message, as the server had asked a cleartext
    /// password for this login before, and this time it asked otherwise: the connection is
    /// dropped and the login starts over without sending ahead (never seen by a client).
    #[error("the server asked {asked} where it had asked a cleartext password before")]
    SentAhead { asked: &'static str },
    #[error("the upstream closed the connection during startup")]
    Closed,
    #[error("connection to the upstream failed during startup")]
    Io(#[source] std::io::Error),
    #[error("protocol error from the upstream")]
    Protocol(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The upstream refused the login; its ErrorResponse goes to the client as it is.
    #[error("the upstream refused the login: {sqlstate} {message}")]
    Rejected {
        sqlstate: String,
        message: String,
        /// The flag the refused password came from; `None` for an IAM token.
        password_from: Option<&'static str>,
        /// The credentials were accepted and the session itself was refused (no such role or
        /// database, too many connections): a fresh token or re-read password would not help.
        after_authentication: bool,
        /// Messages for the client: anything queued before, then the ErrorResponse itself.
        to_client: BytesMut,
    },
}

impl UpstreamError {
    fn from_frame(e: FrameError) -> Self {
        match e {
            FrameError::Closed => UpstreamError::Closed,
            FrameError::Io(e) => UpstreamError::Io(e),
            other => UpstreamError::Protocol(Box::new(other)),
        }
    }

    /// Whether a fresh token or a re-read password might fix it: RDS answers IAM failures with
    /// 28000 (PAM), password failures are 28P01 (e.g. a rotated secret).
    fn is_login_failure(&self) -> bool {
        matches!(self, UpstreamError::Rejected { sqlstate, after_authentication: false, .. } if sqlstate == "28000" || sqlstate == "28P01")
    }
}

impl UserFacing for UpstreamError {
    fn sqlstate(&self) -> SqlState {
        match self {
            UpstreamError::NoPassword { .. }
            | UpstreamError::UnsupportedAuth(_)
            | UpstreamError::UnsupportedSasl(_)
            | UpstreamError::ServerSignature { .. }
            | UpstreamError::ServerUnverified
            | UpstreamError::Auth { .. }
            | UpstreamError::Password(_)
            | UpstreamError::Rejected { .. } => SqlState::InvalidAuthorization,
            UpstreamError::IamTokenNotPassword { .. } => SqlState::InvalidPassword,
            UpstreamError::Closed | UpstreamError::Io(_) | UpstreamError::SentAhead { .. } => {
                SqlState::ConnectionFailure
            }
            UpstreamError::Protocol(_) | UpstreamError::Scram(_) => SqlState::ProtocolViolation,
            UpstreamError::Tunnel { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::TlsRefused { .. }
            | UpstreamError::DirectTlsRefused { .. }
            | UpstreamError::Tls { .. } => SqlState::UnableToConnect,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            UpstreamError::Tunnel { hint, .. } => hint.clone(),
            UpstreamError::Timeout { .. } => {
                "The upstream did not answer in time; check that the endpoint is reachable and \
                 healthy, then retry."
                    .into()
            }
            UpstreamError::TlsRefused { .. } => {
                "RDS always offers TLS: check that --target names an RDS endpoint and that the \
                 tunnel reaches its PostgreSQL port."
                    .into()
            }
            UpstreamError::DirectTlsRefused { .. } => {
                "Direct TLS needs PostgreSQL 17 or later at the other end, and takes nothing in \
                 between that does not know it (RDS Proxy, a pooler). Start rds-auth-proxy with \
                 --direct-tls auto (the default: direct only after a login showed version 17 or \
                 later, with a fallback to SSLRequest) or --direct-tls never."
                    .into()
            }
            UpstreamError::Tls { endpoint, source } if is_name_mismatch(endpoint, source) => format!(
                "The server's certificate is not valid for the name {endpoint}: give --target the \
                 endpoint name RDS shows (`aws rds describe-db-instances`, or --db-instance NAME), \
                 not a CNAME or an IP address. rds-auth-proxy verifies that name whatever address \
                 the bytes go to, so route with --connect-addr or --via ssm instead."
            ),
            UpstreamError::Tls { endpoint, .. } => tls_hint(endpoint),
            UpstreamError::NoPassword { user, .. }
            | UpstreamError::IamTokenNotPassword { user, .. } => format!(
                "For a password user, give rds-auth-proxy its password: --password-secret \
                 ARN_OR_NAME (AWS Secrets Manager) or --password-file FILE, for this user \
                 (--password-user {user}, or a secret whose username is {user}). Or enable IAM \
                 login for it: as an administrator run GRANT rds_iam TO \"{user}\"; and make sure \
                 IAM database authentication is enabled on the instance."
            ),
            UpstreamError::UnsupportedAuth(_) | UpstreamError::UnsupportedSasl(_) => {
                "rds-auth-proxy answers IAM tokens (cleartext), SCRAM-SHA-256(-PLUS) and MD5; \
                 check the server's pg_hba.conf method for this user."
                    .into()
            }
            UpstreamError::Scram(_) => {
                "The server's SCRAM messages are malformed; check that --target and \
                 --connect-addr reach the PostgreSQL server you mean."
                    .into()
            }
            UpstreamError::ServerSignature { .. } | UpstreamError::ServerUnverified => {
                "The login was stopped before AuthenticationOk: the server at the other end may \
                 not be the database you mean (check --target and --connect-addr), or the \
                 password changed during the exchange; retry, and treat a repeat as an attack."
                    .into()
            }
            UpstreamError::Password(e) => e.hint(),
            UpstreamError::Auth { source: AuthError::Credentials(e), profile } => {
                crate::auth::credentials::fix_for(e, profile.as_deref())
            }
            UpstreamError::Auth { .. } => "Check --region and the AWS credentials.".into(),
            UpstreamError::Closed
            | UpstreamError::Io(_)
            | UpstreamError::Protocol(_)
            | UpstreamError::SentAhead { .. } => {
                "The upstream dropped the connection during login; retry, and check the server log \
                 if it persists."
                    .into()
            }
            UpstreamError::Rejected {
                after_authentication: true,
                ..
            } => {
                "The login itself succeeded and the server refused the session: check the \
                 database name and the server's message."
                    .into()
            }
            UpstreamError::Rejected {
                password_from: Some(flag),
                ..
            } => format!(
                "The server refused the password from {flag} (read anew after a refusal, at most \
                 every {} s); check that it is this database user's current password.",
                crate::auth::reload::RELOAD_INTERVAL.as_secs()
            ),
            UpstreamError::Rejected { .. } => {
                "Check that the IAM identity may rds-db:connect as this database user.".into()
            }
        })
    }
}

/// A TLS failure caused by the name, not the CA: the certificate does not cover `endpoint`
/// (a CNAME, a load balancer's name), or `endpoint` is an IP address, which an RDS certificate
/// never names.
fn is_name_mismatch(endpoint: &str, source: &std::io::Error) -> bool {
    use rustls::CertificateError;
    let by_name = matches!(
        source.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ))
    );
    by_name || endpoint.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok()
}

/// What to check when verify-full fails: the name, and the roots that apply to this kind of name.
fn tls_hint(endpoint: &str) -> String {
    if crate::tls::classify_endpoint(endpoint) == crate::tls::EndpointKind::RdsProxy {
        format!(
            "The server's certificate must be valid for {endpoint} and, as {endpoint} is an RDS \
             Proxy endpoint name, chain to the Amazon Trust Services roots built into \
             rds-auth-proxy (or to --proxy-ca-bundle FILE if given); the RDS CA bundle and \
             --ca-bundle do not apply to it. Check that --target is the proxy endpoint name RDS \
             shows."
        )
    } else {
        format!(
            "The server's certificate must be valid for {endpoint} and signed by the RDS CA \
             bundle built into rds-auth-proxy. Check that --target is the endpoint name RDS \
             shows (not a CNAME or an IP); for another CA (a private or test CA) add it with \
             --ca-bundle FILE."
        )
    }
}

/// The fix for RDS's `PAM authentication failed` on an IAM token: the identity lacks
/// `rds-db:connect` on this user's ARN (or the token is for another user, region or endpoint).
pub fn rds_db_connect_hint(region: &str, user: &str, resource_id: Option<&str>) -> String {
    let resource = resource_id.unwrap_or("<DbiResourceId>");
    let mut hint = format!(
        "RDS refused the IAM token. Allow rds-db:connect for your IAM identity on \
         arn:aws:rds-db:{region}:<account>:dbuser:{resource}/{user}"
    );
    if resource_id.is_none() {
        hint.push_str(
            " (the DbiResourceId: `aws rds describe-db-instances --query \
             'DBInstances[].DbiResourceId'`; or start with --db-instance NAME, which looks it up)",
        );
    }
    hint.push_str(&format!(
        ", and check that \"{user}\" has GRANT rds_iam and that IAM database authentication is enabled."
    ));
    hint
}

/// Connects and authenticates `startup` upstream; retries once with freshly loaded credentials
/// when the login itself is refused.
pub async fn connect(
    ctx: &TargetContext,
    startup: &StartupMessage,
) -> Result<Upstream, UpstreamError> {
    match attempt(ctx, startup, false).await {
        Err(e) if e.is_login_failure() => {
            // At most one reload per interval, for the target's IAM credentials and for each
            // password source: a client looping on a refused login must not make one AWS call
            // per attempt. Within the interval the refusal goes to the client at once.
            let may_reload = match ctx.passwords.known(&startup.user()) {
                Some(provider) => provider.may_reload(),
                None => ctx.iam_reloads.may_reload(),
            };
            if !may_reload {
                tracing::debug!(error = e.to_string(), "login refused; credentials were reloaded less than {} s ago, so not again", crate::auth::reload::RELOAD_INTERVAL.as_secs());
                return Err(e);
            }
            tracing::info!(error = e.to_string(), "login refused; retrying once with fresh credentials (a new IAM token, or the password read again)");
            attempt(ctx, startup, true).await
        }
        other => other,
    }
}

async fn timed<T>(
    phase: &'static str,
    limit: std::time::Duration,
    fut: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(UpstreamError::Timeout {
            phase,
            secs: limit.as_secs(),
        }))
}

/// One login, sending the IAM token ahead when this login was asked a cleartext password
/// before; when the server now asks otherwise, once more without.
async fn attempt(
    ctx: &TargetContext,
    startup: &StartupMessage,
    fresh: bool,
) -> Result<Upstream, UpstreamError> {
    let ahead = ctx.server.asks_cleartext(&startup.user(), &startup.database());
    match attempt_once(ctx, startup, fresh, ahead).await {
        Err(e @ UpstreamError::SentAhead { .. }) => {
            tracing::info!(
                target = %ctx.target.name,
                db_user = %startup.user(),
                database = %startup.database(),
                error = %e,
                "logging in again without sending the IAM token ahead (the server's authentication for this user changed)"
            );
            attempt_once(ctx, startup, fresh, false).await
        }
        other => other,
    }
}

async fn attempt_once(
    ctx: &TargetContext,
    startup: &StartupMessage,
    fresh: bool,
    ahead: bool,
) -> Result<Upstream, UpstreamError> {
    let t = ctx.timeouts;
    let open = || {
        timed("opening the tunnel", t.connect, async {
            ctx.tunnel.open_watched().await.map_err(|e| tunnel_error(ctx, e))
        })
    };
    let opened = open().await?;
    let (raw, mut ssm_session, mut stall) = (opened.stream, opened.ssm_session, opened.stall);
    let direct = ctx.server.use_direct_tls();
    let mut stream = match timed("negotiating TLS", t.tls, negotiate_tls(ctx, raw, direct)).await {
        Err(e @ UpstreamError::DirectTlsRefused { .. }) if ctx.server.mode() == DirectTls::Auto => {
            // Something answers for this name that is not PostgreSQL 17 (or lets no direct TLS
            // through); it keeps SSLRequest from now on, and this connection starts over.
            ctx.server.direct_tls_refused();
            tracing::info!(
                target = %ctx.target.name,
                server_version = ctx.server.major_version().unwrap_or(0),
                error = crate::errors::display_chain(&e),
                "the server reported PostgreSQL 17 or later but did not take direct TLS; connecting with SSLRequest, now and from now on"
            );
            let opened = open().await?;
            (ssm_session, stall) = (opened.ssm_session, opened.stall);
            let raw = opened.stream;
            timed("negotiating TLS", t.tls, negotiate_tls(ctx, raw, false)).await?
        }
        other => other?,
    };
    timed("authenticating", t.auth, async {
        // The server asked this login a cleartext password last time: the token goes in the
        // same flight as the startup message, and the password request finds it waiting.
        let sent_ahead = match ahead {
            true => match secret(ctx, &startup.user(), fresh).await? {
                token @ Secret::Token(_) => Some(token),
                Secret::Password(_) => None,
            },
            false => None,
        };
        // Right behind the TLS client Finished (which the handshake has flushed): no round
        // trip between the two.
        stream
            .write_all(startup.as_bytes())
            .await
            .map_err(UpstreamError::Io)?;
        if let Some(token) = &sent_ahead {
            stream
                .write_all(&password_message(token.expose().as_bytes()))
                .await
                .map_err(UpstreamError::Io)?;
        }
        stream.flush().await.map_err(UpstreamError::Io)?;
        let to_client = authenticate(ctx, &mut stream, startup, fresh, sent_ahead.is_some()).await?;
        Ok(Upstream {
            stream,
            to_client,
            ssm_session,
            stall,
        })
    })
    .await
}

/// TLS either way: direct (PostgreSQL 17+) or after SSLRequest.
async fn negotiate_tls(
    ctx: &TargetContext,
    raw: TunnelStream,
    direct: bool,
) -> Result<TlsStream<TunnelStream>, UpstreamError> {
    if direct {
        start_direct_tls(ctx, raw).await
    } else {
        start_tls(ctx, raw).await
    }
}

/// What this process has learnt about one target's server, in memory: its PostgreSQL major
/// version (from the `server_version` of the last successful login) and whether it refused
/// direct TLS. Decides, per `--direct-tls`, whether a new connection opens TLS at once.
#[derive(Debug, Default)]
pub struct ServerKnowledge {
    mode: DirectTls,
    /// 0 until a login has shown it.
    major: AtomicU32,
    /// A direct TLS attempt failed before TLS completed (`--direct-tls auto`): SSLRequest only.
    refuses_direct: AtomicBool,
    /// (user, database) logins that the server last asked for a cleartext password and that were
    /// answered with an IAM token: the next one sends its token right behind the startup message
    /// (one round trip less). Forgotten as soon as the server asks otherwise.
    cleartext: Mutex<HashSet<(String, String)>>,
}

/// A clone starts from what this one knows now; from then on each learns on its own.
impl Clone for ServerKnowledge {
    fn clone(&self) -> Self {
        ServerKnowledge {
            mode: self.mode,
            major: AtomicU32::new(self.major.load(Ordering::Relaxed)),
            refuses_direct: AtomicBool::new(self.refuses_direct.load(Ordering::Relaxed)),
            cleartext: Mutex::new(self.cleartext_logins().clone()),
        }
    }
}

/// The first PostgreSQL major version with direct TLS.
pub const DIRECT_TLS_MIN_VERSION: u32 = 17;

/// Most (user, database) logins remembered as asked for a cleartext password; past it a new
/// one is simply not remembered (its logins take the usual round trip).
const MAX_CLEARTEXT_LOGINS: usize = 4096;

impl ServerKnowledge {
    pub fn new(mode: DirectTls) -> Self {
        ServerKnowledge {
            mode,
            ..ServerKnowledge::default()
        }
    }

    pub fn mode(&self) -> DirectTls {
        self.mode
    }

    /// Whether the next connection opens TLS without an SSLRequest.
    pub fn use_direct_tls(&self) -> bool {
        match self.mode {
            DirectTls::Always => true,
            DirectTls::Never => false,
            DirectTls::Auto => {
                self.major.load(Ordering::Relaxed) >= DIRECT_TLS_MIN_VERSION
                    && !self.refuses_direct.load(Ordering::Relaxed)
            }
        }
    }

    /// The major version the last successful login reported, if any did.
    pub fn major_version(&self) -> Option<u32> {
        Some(self.major.load(Ordering::Relaxed)).filter(|&v| v > 0)
    }

    /// Whether a direct TLS attempt to this server has failed (it then gets SSLRequest only).
    pub fn refused_direct_tls(&self) -> bool {
        self.refuses_direct.load(Ordering::Relaxed)
    }

    /// A successful login's `server_version` ("17.4", "16.6 (Debian …)", "18beta1").
    pub fn saw_server_version(&self, version: &str) {
        let digits = version.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(major) = version[..digits].parse::<u32>() else {
            return;
        };
        let before = self.major.swap(major, Ordering::Relaxed);
        if before != major
            && self.mode == DirectTls::Auto
            && major >= DIRECT_TLS_MIN_VERSION
            && !self.refused_direct_tls()
        {
            tracing::info!(server_version = version, "the server is PostgreSQL {major}: new connections open TLS directly (one round trip less)");
        }
    }

    fn direct_tls_refused(&self) {
        self.refuses_direct.store(true, Ordering::Relaxed);
    }

    fn cleartext_logins(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.cleartext.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the last login of `user` to `database` was asked for a cleartext password and
    /// answered with an IAM token: the next one sends the token with the startup message.
    pub fn asks_cleartext(&self, user: &str, database: &str) -> bool {
        let key = (user.to_owned(), database.to_owned());
        self.cleartext_logins().contains(&key)
    }

    fn saw_cleartext_request(&self, user: &str, database: &str) {
        let mut logins = self.cleartext_logins();
        if logins.len() < MAX_CLEARTEXT_LOGINS {
            logins.insert((user.to_owned(), database.to_owned()));
        }
    }

    fn forget_cleartext_request(&self, user: &str, database: &str) {
        self.cleartext_logins()
            .remove(&(user.to_owned(), database.to_owned()));
    }
}

/// A tunnel failure with the tunnel's own hint when it has one.
pub fn tunnel_error(ctx: &TargetContext, source: TunnelError) -> UpstreamError {
    UpstreamError::Tunnel {
        how: ctx.tunnel.describe(),
        hint: source
            .hint()
            .unwrap_or_else(|| ctx.tunnel.unreachable_hint()),
        source,
    }
}

/// SSLRequest, exactly one byte of answer, then the TLS handshake with SNI and verify-full
/// against the endpoint name (never the address we dialled).
pub async fn start_tls(
    ctx: &TargetContext,
    mut raw: TunnelStream,
) -> Result<TlsStream<TunnelStream>, UpstreamError> {
    let endpoint = &ctx.target.endpoint;
    // The first bytes through a tunnel are where a tunnel-level failure shows up (SSM: the node
    // could not reach the database), so I/O errors here are explained as tunnel errors.
    let stream_error = |e: std::io::Error| match TunnelError::from_stream_error(&e) {
        Some(source) => tunnel_error(ctx, source),
        None => UpstreamError::Io(e),
    };
    raw.write_all(&SSL_REQUEST).await.map_err(stream_error)?;
    raw.flush().await.map_err(stream_error)?;
    let mut answer = [0u8; 1];
    match raw.read(&mut answer).await.map_err(stream_error)? {
        0 => return Err(UpstreamError::Closed),
        _ if answer[0] == b'S' => {}
        // `N`, or an ErrorResponse from an old server: never shown (it is unauthenticated).
        _ => {
            return Err(UpstreamError::TlsRefused {
                endpoint: endpoint.clone(),
            })
        }
    }
    let tls_error = |source| UpstreamError::Tls {
        endpoint: endpoint.clone(),
        source,
    };
    let name = server_name(endpoint).map_err(tls_error)?;
    TlsConnector::from(ctx.tls.clone())
        .connect(name, raw)
        .await
        .map_err(tls_error)
}

/// PostgreSQL 17's direct TLS (`sslnegotiation=direct`): the ClientHello at once, with ALPN
/// `postgresql`, which the server must select. Verify-full exactly as after SSLRequest. A
/// failure before TLS completes that is not about the certificate (closed, not TLS, no ALPN)
/// is [`UpstreamError::DirectTlsRefused`]: the caller may start over with SSLRequest.
pub async fn start_direct_tls(
    ctx: &TargetContext,
    raw: TunnelStream,
) -> Result<TlsStream<TunnelStream>, UpstreamError> {
    let endpoint = &ctx.target.endpoint;
    let name = server_name(endpoint).map_err(|source| UpstreamError::Tls {
        endpoint: endpoint.clone(),
        source,
    })?;
    let stream = match TlsConnector::from(ctx.tls.clone()).connect(name, raw).await {
        Ok(stream) => stream,
        Err(source) => {
            // The tunnel's own failure (SSM: the node could not reach the database).
            if let Some(tunnel) = TunnelError::from_stream_error(&source) {
                return Err(tunnel_error(ctx, tunnel));
            }
            return Err(if is_certificate_error(&source) {
                UpstreamError::Tls {
                    endpoint: endpoint.clone(),
                    source,
                }
            } else {
                UpstreamError::DirectTlsRefused {
                    endpoint: endpoint.clone(),
                    source,
                }
            });
        }
    };
    // As libpq does: a server that did not select ALPN `postgresql` may not be PostgreSQL.
    if stream.get_ref().1.alpn_protocol() != Some(crate::tls::POSTGRESQL_ALPN) {
        return Err(UpstreamError::DirectTlsRefused {
            endpoint: endpoint.clone(),
            source: std::io::Error::other("the server did not select the ALPN protocol \"postgresql\""),
        });
    }
    Ok(stream)
}

/// The name TLS sends as SNI and verifies: the endpoint, never the address we dialled.
fn server_name(endpoint: &str) -> Result<ServerName<'static>, std::io::Error> {
    ServerName::try_from(endpoint.to_owned())
        .map_err(|_| std::io::Error::other("the endpoint is not a valid DNS name"))
}

/// A TLS failure about the server's certificate (or our trust in it), not about the protocol.
fn is_certificate_error(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::InvalidCertRevocationList(_)
                | rustls::Error::NoCertificatesPresented
        )
    )
}

/// A ParameterStatus body: name `\0` value `\0`.
fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}

/// The credential a password request is answered with.
enum Secret {
    Token(crate::auth::Token),
    Password(crate::auth::Password),
}

impl Secret {
    fn expose(&self) -> &str {
        match self {
            Secret::Token(t) => t.expose(),
            Secret::Password(p) => p.expose(),
        }
    }
}

/// The user's configured password (re-read when `fresh`), or an IAM token for the user.
async fn secret(ctx: &TargetContext, user: &str, fresh: bool) -> Result<Secret, UpstreamError> {
    if let Some(provider) = ctx.passwords.for_user(user).await.map_err(UpstreamError::Password)? {
        let password = if fresh {
            provider.fresh().await
        } else {
            provider.get().await
        };
        return password.map(Secret::Password).map_err(UpstreamError::Password);
    }
    let request = ctx.token_request(user);
    let token = if fresh {
        ctx.auth.fresh_token(&request).await
    } else {
        ctx.auth.token(&request).await
    }
    .map_err(|source| UpstreamError::Auth { source, profile: ctx.profile.clone() })?;
    Ok(Secret::Token(token))
}

/// A SCRAM exchange in progress on the upstream leg.
struct ScramExchange {
    scram: postgres_protocol::authentication::sasl::ScramSha256,
    mechanism: &'static str,
    bound: bool,
    /// With an IAM token rather than a password: a refusal means "not an IAM user".
    with_token: bool,
    stage: ScramStage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScramStage {
    /// client-first-message sent.
    Started,
    /// client-final-message sent.
    Continued,
    /// The server signature verified.
    Verified,
}

/// The tls-server-end-point binding data of the certificate this TLS session verified.
fn channel_binding(stream: &TlsStream<TunnelStream>) -> Option<Vec<u8>> {
    let (_, session) = stream.get_ref();
    let leaf = session.peer_certificates()?.first()?;
    scram::tls_server_end_point(leaf.as_ref())
}

async fn send(stream: &mut TlsStream<TunnelStream>, bytes: &[u8]) -> Result<(), UpstreamError> {
    stream.write_all(bytes).await.map_err(UpstreamError::Io)?;
    stream.flush().await.map_err(UpstreamError::Io)
}

/// PasswordMessage: `p`, length, the password, `\0`.
fn password_message(secret: &[u8]) -> BytesMut {
    let mut p = BytesMut::with_capacity(secret.len() + 6);
    p.put_u8(b'p');
    p.put_u32((secret.len() + 5) as u32);
    p.put_slice(secret);
    p.put_u8(0);
    p
}

/// `sent_ahead`: an IAM token already followed the startup message, for the cleartext password
/// request this login got last time; any other first request is [`UpstreamError::SentAhead`].
async fn authenticate(
    ctx: &TargetContext,
    stream: &mut TlsStream<TunnelStream>,
    startup: &StartupMessage,
    fresh: bool,
    mut sent_ahead: bool,
) -> Result<BytesMut, UpstreamError> {
    let (user, database) = (startup.user(), startup.database());
    let (user, database) = (&*user, &*database);
    let mut buf = BytesMut::with_capacity(1024);
    let mut to_client = BytesMut::new();
    let mut exchange: Option<ScramExchange> = None;
    let provider = ctx.passwords.for_user(user).await.map_err(UpstreamError::Password)?;
    let password_from = provider.map(|p| p.describe());
    let mut authenticated = false;
    // Believed once the login has succeeded (ReadyForQuery).
    let mut server_version: Option<String> = None;
    loop {
        let msg = backend::read_message(stream, &mut buf, MAX_PREAUTH_MESSAGE_LEN)
            .await
            .map_err(UpstreamError::from_frame)?;
        match msg.tag() {
            b'R' => {
                let request = backend::parse_auth_request(msg.body())
                    .map_err(|e| UpstreamError::Protocol(Box::new(e)))?;
                if sent_ahead && !matches!(request, AuthRequest::CleartextPassword) {
                    // The token ahead would be read as the answer to this request (a SCRAM
                    // message, an MD5 hash) or as a query after AuthenticationOk.
                    ctx.server.forget_cleartext_request(user, database);
                    return Err(UpstreamError::SentAhead {
                        asked: request.describe(),
                    });
                }
                match request {
                    AuthRequest::Ok if !authenticated => {
                        // Never vouch for a server that has not proved it knows the password.
                        if exchange.as_ref().is_some_and(|x| x.stage != ScramStage::Verified) {
                            return Err(UpstreamError::ServerUnverified);
                        }
                        // The server may still refuse the session (no such role or database,
                        // too many connections): only ReadyForQuery means the login worked.
                        authenticated = true;
                        to_client.extend_from_slice(msg.as_bytes());
                    }
                    AuthRequest::Ok => {
                        return Err(UpstreamError::Protocol("a second AuthenticationOk".into()))
                    }
                    _ if authenticated => {
                        return Err(UpstreamError::Protocol(
                            "an authentication request after AuthenticationOk".into(),
                        ))
                    }
                    AuthRequest::CleartextPassword if sent_ahead => {
                        sent_ahead = false;
                        tracing::debug!(db_user = user, "the IAM token for the password request went with the startup message");
                    }
                    AuthRequest::CleartextPassword => {
                        let secret = secret(ctx, user, fresh).await?;
                        if matches!(secret, Secret::Token(_)) {
                            ctx.server.saw_cleartext_request(user, database);
                        }
                        send(stream, &password_message(secret.expose().as_bytes())).await?;
                        match &secret {
                            Secret::Token(_) => tracing::debug!(db_user = user, "answered the password request with an IAM token"),
                            Secret::Password(_) => tracing::debug!(db_user = user, from = password_from, "answered the cleartext password request with the configured password"),
                        }
                    }
                    AuthRequest::Md5Password(salt) => {
                        let Some(provider) = provider else {
                            return Err(UpstreamError::NoPassword {
                                user: user.to_owned(),
                                method: "MD5 password".into(),
                            });
                        };
                        let password = if fresh { provider.fresh().await } else { provider.get().await }
                            .map_err(UpstreamError::Password)?;
                        tracing::warn!(db_user = user, "the server asked MD5 password authentication, which is weak: move this user to SCRAM-SHA-256 (password_encryption = scram-sha-256, then set the password again)");
                        let hash = postgres_protocol::authentication::md5_hash(
                            user.as_bytes(),
                            password.expose().as_bytes(),
                            salt,
                        );
                        send(stream, &password_message(hash.as_bytes())).await?;
                        tracing::debug!(db_user = user, from = password_from, "answered the MD5 password request");
                    }
                    AuthRequest::Sasl(mechanisms) => {
                        if exchange.is_some() {
                            return Err(UpstreamError::Scram(std::io::Error::other("a second AuthenticationSASL")));
                        }
                        let secret = secret(ctx, user, fresh).await?;
                        let choice = scram::choose(&mechanisms, secret.expose(), channel_binding(stream))
                            .ok_or_else(|| UpstreamError::UnsupportedSasl(mechanisms.join(", ")))?;
                        send(stream, &scram::initial_response(choice.mechanism, choice.scram.message())).await?;
                        tracing::debug!(
                            db_user = user,
                            mechanism = choice.mechanism,
                            channel_binding = choice.bound,
                            with = if matches!(secret, Secret::Token(_)) { "an IAM token" } else { password_from.unwrap_or("the password") },
                            "started SCRAM with the server"
                        );
                        exchange = Some(ScramExchange {
                            scram: choice.scram,
                            mechanism: choice.mechanism,
                            bound: choice.bound,
                            with_token: matches!(secret, Secret::Token(_)),
                            stage: ScramStage::Started,
                        });
                    }
                    AuthRequest::SaslContinue(data) => {
                        let x = match exchange.as_mut() {
                            Some(x) if x.stage == ScramStage::Started => x,
                            _ => return Err(UpstreamError::Scram(std::io::Error::other("AuthenticationSASLContinue out of order"))),
                        };
                        x.scram.update(&data).map_err(UpstreamError::Scram)?;
                        x.stage = ScramStage::Continued;
                        send(stream, &scram::response(x.scram.message())).await?;
                    }
                    AuthRequest::SaslFinal(data) => {
                        let x = match exchange.as_mut() {
                            Some(x) if x.stage == ScramStage::Continued => x,
                            _ => return Err(UpstreamError::Scram(std::io::Error::other("AuthenticationSASLFinal out of order"))),
                        };
                        x.scram.finish(&data).map_err(|source| UpstreamError::ServerSignature {
                            bound: x.bound,
                            source,
                        })?;
                        x.stage = ScramStage::Verified;
                        tracing::debug!(db_user = user, mechanism = x.mechanism, channel_binding = x.bound, "the server's SCRAM signature verified");
                    }
                    AuthRequest::Other(code) => return Err(UpstreamError::UnsupportedAuth(code)),
                }
            }
            b'E' => {
                let fields = backend::parse_error_fields(msg.body())
                    .map_err(|e| UpstreamError::Protocol(Box::new(e)))?;
                let sqlstate = backend::error_field(&fields, b'C').unwrap_or("").to_owned();
                let message = backend::error_field(&fields, b'M').unwrap_or("").to_owned();
                if let Some(x) = exchange.as_ref().filter(|x| x.with_token && !authenticated) {
                    return Err(UpstreamError::IamTokenNotPassword {
                        user: user.to_owned(),
                        mechanism: x.mechanism,
                        sqlstate,
                        message,
                    });
                }
                // RDS's answer to a refused IAM token names no cause; the client gets the same
                // error with the fix: the rds-db:connect ARN to allow.
                if password_from.is_none() && !authenticated && sqlstate == "28000" && message.contains("PAM authentication failed") {
                    let hint = rds_db_connect_hint(&ctx.target.region, user, ctx.dbi_resource_id.as_deref());
                    let with_hint = crate::pg::error::ClientError {
                        sqlstate: SqlState::InvalidAuthorization,
                        message: message.clone(),
                        hint: Some(hint),
                    };
                    to_client.extend_from_slice(&with_hint.encode());
                } else {
                    to_client.extend_from_slice(msg.as_bytes());
                }
                return Err(UpstreamError::Rejected {
                    sqlstate,
                    message,
                    password_from,
                    after_authentication: authenticated,
                    to_client,
                });
            }
            b'Z' if authenticated => {
                if let Some(version) = &server_version {
                    ctx.server.saw_server_version(version);
                }
                to_client.extend_from_slice(msg.as_bytes());
                // Anything already read past ReadyForQuery belongs to the client.
                to_client.extend_from_slice(&buf);
                return Ok(to_client);
            }
            // NegotiateProtocolVersion and notices pass through untouched, in order; after
            // AuthenticationOk so do ParameterStatus and BackendKeyData.
            b'v' | b'N' => to_client.extend_from_slice(msg.as_bytes()),
            b'S' | b'K' if authenticated => {
                if msg.tag() == b'S' {
                    if let Some(("server_version", value)) = parameter_status(msg.body()) {
                        server_version = Some(value.to_owned());
                    }
                }
                to_client.extend_from_slice(msg.as_bytes());
            }
            other => {
                return Err(UpstreamError::Protocol(
                    format!("unexpected message '{}' before ReadyForQuery", other as char).into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_tls_follows_the_mode_and_what_the_server_showed() {
        let auto = ServerKnowledge::new(DirectTls::Auto);
        assert!(!auto.use_direct_tls(), "nothing known: SSLRequest");
        auto.saw_server_version("16.6 (Debian 16.6-1)");
        assert_eq!(auto.major_version(), Some(16));
        assert!(!auto.use_direct_tls());
        auto.saw_server_version("17.4");
        assert!(auto.use_direct_tls());
        auto.direct_tls_refused();
        assert!(!auto.use_direct_tls(), "refused once: never again");
        auto.saw_server_version("18beta1");
        assert_eq!(auto.major_version(), Some(18));
        assert!(!auto.use_direct_tls());

        let always = ServerKnowledge::new(DirectTls::Always);
        assert!(always.use_direct_tls());
        let never = ServerKnowledge::new(DirectTls::Never);
        never.saw_server_version("17.0");
        assert!(!never.use_direct_tls());
    }

    #[test]
    fn odd_server_versions_teach_nothing() {
        let k = ServerKnowledge::new(DirectTls::Auto);
        for v in ["", "beta", "x17", "99999999999999999999"] {
            k.saw_server_version(v);
            assert_eq!(k.major_version(), None, "{v:?}");
        }
    }

    #[test]
    fn parameter_status_bodies() {
        assert_eq!(parameter_status(b"server_version\x0017.4\x00"), Some(("server_version", "17.4")));
        assert_eq!(parameter_status(b"TimeZone\x00UTC\x00"), Some(("TimeZone", "UTC")));
        assert_eq!(parameter_status(b"no_terminator"), None);
        assert_eq!(parameter_status(b"\xff\x00v\x00"), None);
    }
}
