//! What can go wrong on the connect side, and what the client is told: SQLSTATE and a HINT
//! that names the fix (the certificate's name, the rds-db:connect ARN, the password flag).

use bytes::BytesMut;

use super::UpstreamContext;
use crate::auth::{AuthError, PasswordError};
use crate::pg::backend::FrameError;
use crate::pg::{SqlState, UserFacing};
use crate::tunnel::TunnelError;

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
    /// Redshift: the API did not give temporary credentials (`action`: the permission asked).
    #[error("could not get temporary database credentials ({action})")]
    TemporaryCredentials {
        action: &'static str,
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
    pub(super) fn from_frame(e: FrameError) -> Self {
        match e {
            FrameError::Closed => UpstreamError::Closed,
            FrameError::Io(e) => UpstreamError::Io(e),
            other => UpstreamError::Protocol(Box::new(other)),
        }
    }

    /// Whether a fresh token or a re-read password might fix it: RDS answers IAM failures with
    /// 28000 (PAM), password failures are 28P01 (e.g. a rotated secret).
    pub(super) fn is_login_failure(&self) -> bool {
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
            | UpstreamError::TemporaryCredentials { .. }
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
            UpstreamError::UnsupportedAuth(14) => {
                "rds-auth-proxy answers IAM tokens (cleartext), SCRAM-SHA-256(-PLUS), MD5 and \
                 Redshift's SHA-256 digest, but not Redshift's identity-provider token (code 14), \
                 which only a client holding that token can give: log in with IAM (drop the \
                 client's plugin_name/idp_type settings) or connect to Redshift directly."
                    .into()
            }
            UpstreamError::UnsupportedAuth(_) | UpstreamError::UnsupportedSasl(_) => {
                "rds-auth-proxy answers IAM tokens (cleartext), SCRAM-SHA-256(-PLUS), MD5 and \
                 Redshift's SHA-256 digest; check the server's pg_hba.conf method for this user."
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
            UpstreamError::TemporaryCredentials { source: AuthError::Api(e), .. } => e.hint(),
            UpstreamError::TemporaryCredentials { source: AuthError::Credentials(e), profile, .. } => {
                crate::auth::credentials::fix_for(e, profile.as_deref())
            }
            UpstreamError::TemporaryCredentials { action, .. } => {
                format!("Check --region, the AWS credentials and that your IAM identity may call {action}.")
            }
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

/// A tunnel failure with the tunnel's own hint when it has one.
pub fn tunnel_error(ctx: &dyn UpstreamContext, source: TunnelError) -> UpstreamError {
    UpstreamError::Tunnel {
        how: ctx.tunnel().describe(),
        hint: source
            .hint()
            .unwrap_or_else(|| ctx.tunnel().unreachable_hint()),
        source,
    }
}
