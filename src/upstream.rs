//! The connect side: open the tunnel, SSLRequest → `S` → TLS verify-full against the endpoint
//! name, send the client's startup, answer the password request with an IAM token, and stop at
//! the first ReadyForQuery. The client only ever sees AuthenticationOk and the session start — or
//! an error that says why not.

use bytes::{BufMut, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::auth::AuthError;
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
    #[error("TLS handshake with {endpoint} failed")]
    Tls {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server asked {method} authentication for user \"{user}\": it is not an IAM database user")]
    NotIamUser { user: String, method: String },
    #[error("the server asked for an unsupported authentication method (code {0})")]
    UnsupportedAuth(i32),
    #[error("could not create an IAM token")]
    Auth(#[source] AuthError),
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
        /// The token was accepted and the session itself was refused (no such role or
        /// database, too many connections): a fresh token would not help.
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

    /// Whether a fresh token might fix it: RDS answers IAM failures with 28000 (PAM), password
    /// failures are 28P01.
    fn is_login_failure(&self) -> bool {
        matches!(self, UpstreamError::Rejected { sqlstate, after_authentication: false, .. } if sqlstate == "28000" || sqlstate == "28P01")
    }
}

impl UserFacing for UpstreamError {
    fn sqlstate(&self) -> SqlState {
        match self {
            UpstreamError::NotIamUser { .. }
            | UpstreamError::UnsupportedAuth(_)
            | UpstreamError::Auth(_)
            | UpstreamError::Rejected { .. } => SqlState::InvalidAuthorization,
            UpstreamError::Closed | UpstreamError::Io(_) => SqlState::ConnectionFailure,
            UpstreamError::Protocol(_) => SqlState::ProtocolViolation,
            UpstreamError::Tunnel { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::TlsRefused { .. }
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
            UpstreamError::Tls { endpoint, .. } => format!(
                "The server's certificate must be valid for {endpoint} and signed by the RDS CA \
                 bundle built into rds-auth-proxy. Check that --target is the endpoint name RDS \
                 shows (not a CNAME or an IP); for another CA (RDS Proxy, a test CA) add it with \
                 --ca-bundle FILE."
            ),
            UpstreamError::NotIamUser { user, .. } => format!(
                "Enable IAM login for this user: as an administrator run GRANT rds_iam TO \"{user}\"; \
                 and make sure IAM database authentication is enabled on the instance."
            ),
            UpstreamError::UnsupportedAuth(_) => {
                "rds-auth-proxy only answers password requests with IAM tokens; check that the \
                 user is an IAM database user (GRANT rds_iam)."
                    .into()
            }
            UpstreamError::Auth(AuthError::Credentials(_)) => {
                "Provide AWS credentials: run `aws sso login` (with --profile if you use one), \
                 or set AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; then reconnect."
                    .into()
            }
            UpstreamError::Auth(_) => "Check --region and the AWS credentials.".into(),
            UpstreamError::Closed | UpstreamError::Io(_) | UpstreamError::Protocol(_) => {
                "The upstream dropped the connection during login; retry, and check the server log \
                 if it persists."
                    .into()
            }
            UpstreamError::Rejected { .. } => {
                "Check that the IAM identity may rds-db:connect as this database user.".into()
            }
        })
    }
}

/// Connects and authenticates `startup` upstream; retries once with freshly loaded credentials
/// when the login itself is refused.
pub async fn connect(
    ctx: &TargetContext,
    startup: &StartupMessage,
) -> Result<Upstream, UpstreamError> {
    match attempt(ctx, startup, false).await {
        Err(e) if e.is_login_failure() => {
            tracing::info!(error = %e, "IAM login refused; retrying once with fresh credentials and a new token");
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

async fn attempt(
    ctx: &TargetContext,
    startup: &StartupMessage,
    fresh: bool,
) -> Result<Upstream, UpstreamError> {
    let t = ctx.timeouts;
    let raw = timed("opening the tunnel", t.connect, async {
        ctx.tunnel.open().await.map_err(|e| tunnel_error(ctx, e))
    })
    .await?;
    let mut stream = timed("negotiating TLS", t.tls, start_tls(ctx, raw)).await?;
    timed("authenticating", t.auth, async {
        stream
            .write_all(startup.as_bytes())
            .await
            .map_err(UpstreamError::Io)?;
        stream.flush().await.map_err(UpstreamError::Io)?;
        let to_client = authenticate(ctx, &mut stream, startup.user(), fresh).await?;
        Ok(Upstream { stream, to_client })
    })
    .await
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
    let name = ServerName::try_from(endpoint.clone()).map_err(|_| UpstreamError::Tls {
        endpoint: endpoint.clone(),
        source: std::io::Error::other("the endpoint is not a valid DNS name"),
    })?;
    TlsConnector::from(ctx.tls.clone())
        .connect(name, raw)
        .await
        .map_err(|source| UpstreamError::Tls {
            endpoint: endpoint.clone(),
            source,
        })
}

async fn authenticate(
    ctx: &TargetContext,
    stream: &mut TlsStream<TunnelStream>,
    user: &str,
    fresh: bool,
) -> Result<BytesMut, UpstreamError> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut to_client = BytesMut::new();
    let mut authenticated = false;
    loop {
        let msg = backend::read_message(stream, &mut buf, MAX_PREAUTH_MESSAGE_LEN)
            .await
            .map_err(UpstreamError::from_frame)?;
        match msg.tag() {
            b'R' => {
                let request = backend::parse_auth_request(msg.body())
                    .map_err(|e| UpstreamError::Protocol(Box::new(e)))?;
                match request {
                    AuthRequest::Ok if !authenticated => {
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
                    AuthRequest::CleartextPassword => {
                        let request = ctx.token_request(user);
                        let token = if fresh {
                            ctx.auth.fresh_token(&request).await
                        } else {
                            ctx.auth.token(&request).await
                        }
                        .map_err(UpstreamError::Auth)?;
                        let secret = token.expose().as_bytes();
                        let mut p = BytesMut::with_capacity(secret.len() + 6);
                        p.put_u8(b'p');
                        p.put_u32((secret.len() + 5) as u32);
                        p.put_slice(secret);
                        p.put_u8(0);
                        stream.write_all(&p).await.map_err(UpstreamError::Io)?;
                        stream.flush().await.map_err(UpstreamError::Io)?;
                        tracing::debug!(db_user = user, "answered the password request with an IAM token");
                    }
                    AuthRequest::Md5Password => {
                        return Err(UpstreamError::NotIamUser {
                            user: user.to_owned(),
                            method: "MD5 password".into(),
                        })
                    }
                    AuthRequest::Sasl(mechanisms) => {
                        return Err(UpstreamError::NotIamUser {
                            user: user.to_owned(),
                            method: mechanisms
                                .first()
                                .cloned()
                                .unwrap_or_else(|| "SASL".into()),
                        })
                    }
                    AuthRequest::Other(code) => return Err(UpstreamError::UnsupportedAuth(code)),
                }
            }
            b'E' => {
                let fields = backend::parse_error_fields(msg.body())
                    .map_err(|e| UpstreamError::Protocol(Box::new(e)))?;
                let sqlstate = backend::error_field(&fields, b'C').unwrap_or("").to_owned();
                let message = backend::error_field(&fields, b'M').unwrap_or("").to_owned();
                to_client.extend_from_slice(msg.as_bytes());
                return Err(UpstreamError::Rejected {
                    sqlstate,
                    message,
                    after_authentication: authenticated,
                    to_client,
                });
            }
            b'Z' if authenticated => {
                to_client.extend_from_slice(msg.as_bytes());
                // Anything already read past ReadyForQuery belongs to the client.
                to_client.extend_from_slice(&buf);
                return Ok(to_client);
            }
            // NegotiateProtocolVersion and notices pass through untouched, in order; after
            // AuthenticationOk so do ParameterStatus and BackendKeyData.
            b'v' | b'N' => to_client.extend_from_slice(msg.as_bytes()),
            b'S' | b'K' if authenticated => to_client.extend_from_slice(msg.as_bytes()),
            other => {
                return Err(UpstreamError::Protocol(
                    format!("unexpected message '{}' before ReadyForQuery", other as char).into(),
                ))
            }
        }
    }
}
