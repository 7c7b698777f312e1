//! The connect side: open the tunnel, SSLRequest → `S` → TLS verify-full against the endpoint
//! name, send the client's startup, answer the password request (an IAM token, or a configured
//! password: cleartext, SCRAM-SHA-256(-PLUS) with the server's signature verified before
//! AuthenticationOk is believed, MD5), and stop at the first ReadyForQuery. The client only ever
//! sees AuthenticationOk and the session start — or an error that says why not.

use bytes::{BufMut, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::auth::scram;
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
            UpstreamError::Closed | UpstreamError::Io(_) => SqlState::ConnectionFailure,
            UpstreamError::Protocol(_) | UpstreamError::Scram(_) => SqlState::ProtocolViolation,
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
                 ARN_OR_NAME (AWS Secrets Manager) or --password-file FILE. Or enable IAM login \
                 for it: as an administrator run GRANT rds_iam TO \"{user}\"; and make sure IAM \
                 database authentication is enabled on the instance."
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
            UpstreamError::Closed | UpstreamError::Io(_) | UpstreamError::Protocol(_) => {
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
                "The server refused the password from {flag} (read anew for the retry); check \
                 that it is this database user's current password."
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

async fn attempt(
    ctx: &TargetContext,
    startup: &StartupMessage,
    fresh: bool,
) -> Result<Upstream, UpstreamError> {
    let t = ctx.timeouts;
    let opened = timed("opening the tunnel", t.connect, async {
        ctx.tunnel.open_watched().await.map_err(|e| tunnel_error(ctx, e))
    })
    .await?;
    let (ssm_session, stall) = (opened.ssm_session, opened.stall);
    let mut stream = timed("negotiating TLS", t.tls, start_tls(ctx, opened.stream)).await?;
    timed("authenticating", t.auth, async {
        stream
            .write_all(startup.as_bytes())
            .await
            .map_err(UpstreamError::Io)?;
        stream.flush().await.map_err(UpstreamError::Io)?;
        let to_client = authenticate(ctx, &mut stream, &startup.user(), fresh).await?;
        Ok(Upstream {
            stream,
            to_client,
            ssm_session,
            stall,
        })
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

/// The configured password (re-read when `fresh`), or an IAM token for the user.
async fn secret(ctx: &TargetContext, user: &str, fresh: bool) -> Result<Secret, UpstreamError> {
    if let Some(provider) = &ctx.password {
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

async fn authenticate(
    ctx: &TargetContext,
    stream: &mut TlsStream<TunnelStream>,
    user: &str,
    fresh: bool,
) -> Result<BytesMut, UpstreamError> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut to_client = BytesMut::new();
    let mut exchange: Option<ScramExchange> = None;
    let password_from = ctx.password.as_ref().map(|p| p.describe());
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
                    AuthRequest::CleartextPassword => {
                        let secret = secret(ctx, user, fresh).await?;
                        send(stream, &password_message(secret.expose().as_bytes())).await?;
                        match &secret {
                            Secret::Token(_) => tracing::debug!(db_user = user, "answered the password request with an IAM token"),
                            Secret::Password(_) => tracing::debug!(db_user = user, from = password_from, "answered the cleartext password request with the configured password"),
                        }
                    }
                    AuthRequest::Md5Password(salt) => {
                        let Some(provider) = &ctx.password else {
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
