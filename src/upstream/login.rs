//! The login on the upstream leg: the password request answered (an IAM token, or a
//! configured password: cleartext, SCRAM-SHA-256(-PLUS) with the server's signature verified,
//! MD5), then everything the client must see up to the first ReadyForQuery.

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio_rustls::client::TlsStream;

use super::{rds_db_connect_hint, UpstreamError};
use super::UpstreamContext;
use crate::auth::scram;
use crate::auth::temporary::TemporaryRequest;
use crate::engine::{Engine, RedshiftAuth};
use crate::pg::backend::{self, AuthRequest, MAX_PREAUTH_MESSAGE_LEN};
use crate::pg::startup::StartupMessage;
use crate::pg::SqlState;
use crate::tunnel::TunnelStream;

/// A ParameterStatus body: name `\0` value `\0`.
fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}

/// The credential a password request is answered with.
pub(super) enum Secret {
    /// An RDS IAM token or an Aurora DSQL token.
    Token(crate::auth::Token),
    Password(crate::auth::Password),
    /// Redshift temporary credentials: the startup's user was rewritten to theirs.
    Temporary(crate::aws_api::DbCredentials),
}

impl Secret {
    pub(super) fn expose(&self) -> &str {
        match self {
            Secret::Token(t) => t.expose(),
            Secret::Password(p) => p.expose(),
            Secret::Temporary(c) => c.password.expose(),
        }
    }

    /// How log lines name it.
    fn describe(&self) -> &'static str {
        match self {
            Secret::Token(_) => "an IAM token",
            Secret::Password(_) => "the configured password",
            Secret::Temporary(_) => "the temporary password",
        }
    }
}

/// What a Redshift login asks its API for: the client's user and database as it sent them.
pub(super) fn temporary_request(ctx: &dyn UpstreamContext, user: &str, database: &str) -> TemporaryRequest {
    let engine = &ctx.target().engine;
    let follows_identity = engine.engine == Engine::RedshiftServerless || engine.redshift_auth == RedshiftAuth::Iam;
    TemporaryRequest {
        engine: engine.engine,
        resource: engine.resource.clone().unwrap_or_default(),
        db_user: if follows_identity { String::new() } else { user.to_owned() },
        db_name: database.to_owned(),
        auth: if engine.engine == Engine::RedshiftServerless { RedshiftAuth::Iam } else { engine.redshift_auth },
        auto_create: engine.redshift_auto_create,
        db_groups: engine.redshift_db_groups.clone(),
    }
}

/// Redshift's temporary credentials for the client's `user` and `database` (asked anew when
/// `fresh`).
pub(super) async fn temporary(
    ctx: &dyn UpstreamContext,
    user: &str,
    database: &str,
    fresh: bool,
) -> Result<crate::aws_api::DbCredentials, UpstreamError> {
    let request = temporary_request(ctx, user, database);
    ctx.auth()
        .temporary_credentials(&request, fresh)
        .await
        .map_err(|source| UpstreamError::TemporaryCredentials {
            action: request.action(),
            source,
            profile: ctx.profile().map(str::to_owned),
        })
}

/// The user's configured password (re-read when `fresh`); for Redshift, temporary credentials
/// for the client's `user` and `database`; else an IAM (or DSQL) token for the user.
pub(super) async fn secret(ctx: &dyn UpstreamContext, user: &str, database: &str, fresh: bool) -> Result<Secret, UpstreamError> {
    if let Some(provider) = ctx.passwords().for_user(user).await.map_err(UpstreamError::Password)? {
        let password = if fresh {
            provider.fresh().await
        } else {
            provider.get().await
        };
        return password.map(Secret::Password).map_err(UpstreamError::Password);
    }
    if ctx.target().engine.engine.rewrites_user() {
        return temporary(ctx, user, database, fresh).await.map(Secret::Temporary);
    }
    let request = ctx.token_request(user);
    let token = if fresh {
        ctx.auth().fresh_token(&request).await
    } else {
        ctx.auth().token(&request).await
    }
    .map_err(|source| UpstreamError::Auth { source, profile: ctx.profile().map(str::to_owned) })?;
    Ok(Secret::Token(token))
}

/// The password a hashed answer (MD5, Redshift's digest) is computed from: the user's configured
/// one, or Redshift's temporary password; none for an IAM user (a token cannot be hashed).
async fn hashed_password(
    provider: Option<&std::sync::Arc<crate::auth::PasswordProvider>>,
    prefetched: Option<Secret>,
    fresh: bool,
    user: &str,
    method: &str,
) -> Result<crate::auth::Password, UpstreamError> {
    match (provider, prefetched) {
        (Some(provider), _) => if fresh { provider.fresh().await } else { provider.get().await }.map_err(UpstreamError::Password),
        (None, Some(Secret::Temporary(c))) => Ok(crate::auth::Password::new(c.password.expose())),
        (None, _) => Err(UpstreamError::NoPassword {
            user: user.to_owned(),
            method: method.into(),
        }),
    }
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
pub(super) fn password_message(secret: &[u8]) -> BytesMut {
    let mut p = BytesMut::with_capacity(secret.len() + 6);
    p.put_u8(b'p');
    p.put_u32((secret.len() + 5) as u32);
    p.put_slice(secret);
    p.put_u8(0);
    p
}

/// `sent_ahead`: an IAM token already followed the startup message, for the cleartext password
/// request this login got last time; any other first request is [`UpstreamError::SentAhead`].
/// `prefetched`: the credential fetched before the startup was sent (Redshift's temporary
/// credentials, whose user `startup` already names); `client_database`: the database the
/// client asked for (the same as the startup's).
pub(super) async fn authenticate(
    ctx: &dyn UpstreamContext,
    stream: &mut TlsStream<TunnelStream>,
    startup: &StartupMessage,
    fresh: bool,
    mut sent_ahead: bool,
    mut prefetched: Option<Secret>,
) -> Result<BytesMut, UpstreamError> {
    let (user, database) = (startup.user(), startup.database());
    let (user, database) = (&*user, &*database);
    let with_temporary = matches!(prefetched, Some(Secret::Temporary(_)));
    let mut buf = BytesMut::with_capacity(1024);
    let mut to_client = BytesMut::new();
    let mut exchange: Option<ScramExchange> = None;
    let provider = ctx.passwords().for_user(user).await.map_err(UpstreamError::Password)?;
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
                    ctx.server().forget_cleartext_request(user, database);
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
                        let secret = match prefetched.take() {
                            Some(secret) => secret,
                            None => secret(ctx, user, database, fresh).await?,
                        };
                        if matches!(secret, Secret::Token(_)) {
                            ctx.server().saw_cleartext_request(user, database);
                        }
                        send(stream, &password_message(secret.expose().as_bytes())).await?;
                        match &secret {
                            Secret::Token(_) if ctx.target().engine.engine == Engine::Dsql => tracing::debug!(db_user = user, "answered the password request with an Aurora DSQL token"),
                            Secret::Token(_) => tracing::debug!(db_user = user, "answered the password request with an IAM token"),
                            Secret::Password(_) => tracing::debug!(db_user = user, from = password_from, "answered the cleartext password request with the configured password"),
                            Secret::Temporary(_) => tracing::debug!(db_user = user, "answered the cleartext password request with the temporary password"),
                        }
                    }
                    AuthRequest::Md5Password(salt) => {
                        let password = hashed_password(provider, prefetched.take(), fresh, user, "MD5 password").await?;
                        if with_temporary {
                            tracing::warn!(db_user = user, "the server asked MD5 password authentication, which is weak; answered with the temporary password (valid for minutes only)");
                        } else {
                            tracing::warn!(db_user = user, "the server asked MD5 password authentication, which is weak: move this user to SCRAM-SHA-256 (password_encryption = scram-sha-256, then set the password again)");
                        }
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
                        let secret = match prefetched.take() {
                            Some(secret) => secret,
                            None => secret(ctx, user, database, fresh).await?,
                        };
                        let choice = scram::choose(&mechanisms, secret.expose(), channel_binding(stream))
                            .ok_or_else(|| UpstreamError::UnsupportedSasl(mechanisms.join(", ")))?;
                        send(stream, &scram::initial_response(choice.mechanism, choice.scram.message())).await?;
                        tracing::debug!(
                            db_user = user,
                            mechanism = choice.mechanism,
                            channel_binding = choice.bound,
                            with = match &secret { Secret::Password(_) => password_from.unwrap_or("the password"), other => other.describe() },
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
                    AuthRequest::RedshiftDigest { algorithm, salt, server_nonce } => {
                        // Only SHA-256 (0) is defined (AWS's Redshift drivers).
                        if algorithm != 0 {
                            return Err(UpstreamError::UnsupportedAuth(13));
                        }
                        let password = hashed_password(provider, prefetched.take(), fresh, user, "Redshift SHA-256 digest").await?;
                        // The client nonce AWS's drivers send: the time in milliseconds, as text.
                        let client_nonce = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis()
                            .to_string();
                        let answer = backend::redshift_digest_message(
                            password.expose().as_bytes(),
                            &salt,
                            &server_nonce,
                            client_nonce.as_bytes(),
                        );
                        send(stream, &answer).await?;
                        tracing::debug!(db_user = user, "answered Redshift's SHA-256 digest request");
                    }
                    AuthRequest::RedshiftIdp => return Err(UpstreamError::UnsupportedAuth(14)),
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
                // A refused token or temporary password comes back without a cause; the client
                // gets the same error with the fix: the permission and ARN to allow.
                let refused = password_from.is_none() && !authenticated && (sqlstate == "28000" || sqlstate == "28P01");
                if let Some(hint) = refused.then(|| refused_credential_hint(ctx, user, &message, with_temporary)).flatten() {
                    let with_hint = crate::pg::error::ClientError {
                        sqlstate: if sqlstate == "28P01" { SqlState::InvalidPassword } else { SqlState::InvalidAuthorization },
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
                    ctx.server().saw_server_version(version);
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

/// The HINT for a login refused with the proxy's own credential, by engine: RDS's PAM failure
/// (rds-db:connect), DSQL's (dsql:DbConnect / DbConnectAdmin), Redshift's refused temporary
/// password. `None`: the server's error goes to the client as it is.
fn refused_credential_hint(ctx: &dyn UpstreamContext, user: &str, message: &str, with_temporary: bool) -> Option<String> {
    let target = ctx.target();
    let account = ctx.auth().account();
    match target.engine.engine {
        Engine::Rds => message
            .contains("PAM authentication failed")
            .then(|| rds_db_connect_hint(&target.region, user, ctx.dbi_resource_id())),
        Engine::Dsql => Some(crate::aws_api::dsql_connect_hint(
            &target.region,
            account.as_deref(),
            target.engine.resource.as_deref().unwrap_or("CLUSTER-ID"),
            user == "admin",
        )),
        Engine::Redshift | Engine::RedshiftServerless => with_temporary.then(|| {
            crate::aws_api::redshift_login_hint(
                target.engine.resource.as_deref().unwrap_or_default(),
                user,
                target.engine.engine == Engine::RedshiftServerless,
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_status_bodies() {
        assert_eq!(parameter_status(b"server_version\x0017.4\x00"), Some(("server_version", "17.4")));
        assert_eq!(parameter_status(b"TimeZone\x00UTC\x00"), Some(("TimeZone", "UTC")));
        assert_eq!(parameter_status(b"no_terminator"), None);
        assert_eq!(parameter_status(b"\xff\x00v\x00"), None);
    }
}
