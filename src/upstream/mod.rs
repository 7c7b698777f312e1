//! The connect side: open the tunnel, SSLRequest → `S` → TLS verify-full against the endpoint
//! name (or, on PostgreSQL 17 and later, TLS at once: [`ServerKnowledge`]), send the client's startup, answer the password request (an IAM token, or a configured
//! password: cleartext, SCRAM-SHA-256(-PLUS) with the server's signature verified before
//! AuthenticationOk is believed, MD5), and stop at the first ReadyForQuery. The client only ever
//! sees AuthenticationOk and the session start — or an error that says why not.
//!
//! Here: [`connect`] and its attempts, one linear flow. By concern: [`error`] (what can go
//! wrong and what the client is told), [`knowledge`] (what we learnt about the server),
//! [`tls`] (SSLRequest or direct TLS, verify-full) and [`login`] (the password request and
//! SCRAM, up to ReadyForQuery).
mod context;
mod error;
mod knowledge;
mod login;
mod tls;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio_rustls::client::TlsStream;

pub use self::context::{Target, Timeouts, UpstreamContext};
pub use self::error::{rds_db_connect_hint, tunnel_error, UpstreamError};
pub use self::knowledge::{ServerKnowledge, DIRECT_TLS_MIN_VERSION};
pub use self::tls::{start_direct_tls, start_tls};

use self::login::{authenticate, password_message, secret, temporary, Secret};
use crate::tls::DirectTls;
use crate::pg::startup::StartupMessage;
use crate::tunnel::TunnelStream;

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
    /// The user the server logged in when it is not the client's: Redshift's temporary
    /// credentials name their own (`IAM:alice`).
    pub login_user: Option<String>,
}
/// Startup parameters of the Redshift drivers that choose their own login (an identity
/// provider's token) or compress the stream; left out of a Redshift login by the proxy.
const REDSHIFT_CLIENT_ONLY: &[&str] = &[
    "plugin_name",
    "idp_type",
    "token_type",
    "provider_name",
    "identity_namespace",
    "idc_client_display_name",
    "_pq_.compression",
];

/// Connects and authenticates `startup` upstream; retries once with freshly loaded credentials
/// when the login itself is refused.
pub async fn connect(
    ctx: &dyn UpstreamContext,
    startup: &StartupMessage,
) -> Result<Upstream, UpstreamError> {
    match attempt(ctx, startup, false).await {
        Err(e) if e.is_login_failure() => {
            // At most one reload per interval, for the target's IAM credentials and for each
            // password source: a client looping on a refused login must not make one AWS call
            // per attempt. Within the interval the refusal goes to the client at once.
            let may_reload = match ctx.passwords().known(&startup.user()) {
                Some(provider) => provider.may_reload(),
                None => ctx.iam_reloads().may_reload(),
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
    ctx: &dyn UpstreamContext,
    startup: &StartupMessage,
    fresh: bool,
) -> Result<Upstream, UpstreamError> {
    let ahead = ctx.server().asks_cleartext(&startup.user(), &startup.database());
    match attempt_once(ctx, startup, fresh, ahead).await {
        Err(e @ UpstreamError::SentAhead { .. }) => {
            tracing::info!(
                target = %ctx.target().name,
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
    ctx: &dyn UpstreamContext,
    startup: &StartupMessage,
    fresh: bool,
    ahead: bool,
) -> Result<Upstream, UpstreamError> {
    let t = ctx.timeouts();
    let client_user = startup.user().into_owned();
    // Redshift: the temporary credentials name the user to log in as, so they are fetched
    // before anything is opened and the startup goes out with that user.
    let mut prefetched = None;
    let rewritten;
    let startup = if ctx.target().engine.engine.rewrites_user()
        && ctx.passwords().for_user(&startup.user()).await.map_err(UpstreamError::Password)?.is_none()
    {
        let credentials = temporary(ctx, &startup.user(), &startup.database(), fresh).await?;
        if credentials.db_user != *startup.user() {
            tracing::debug!(target = %ctx.target().name, client_user = %startup.user(), db_user = %credentials.db_user, "logging in as the user the temporary credentials name");
        }
        // The Redshift drivers' own login plugin settings would make Redshift ask for an
        // identity-provider token (code 14) the proxy does not have, and `_pq_.compression`
        // would compress what the proxy must read after login (its drain): both stay out.
        let dropped: Vec<&str> = REDSHIFT_CLIENT_ONLY.iter().copied().filter(|p| startup.param(p).is_some()).collect();
        if !dropped.is_empty() {
            tracing::debug!(target = %ctx.target().name, params = dropped.join(","), "left out the Redshift driver's own login settings: the proxy logs in with temporary credentials");
        }
        rewritten = startup.with_user(&credentials.db_user).without(REDSHIFT_CLIENT_ONLY);
        prefetched = Some(Secret::Temporary(credentials));
        &rewritten
    } else {
        startup
    };
    let open = || {
        timed("opening the tunnel", t.connect, async {
            ctx.tunnel().open_watched().await.map_err(|e| tunnel_error(ctx, e))
        })
    };
    let opened = open().await?;
    let (raw, mut ssm_session, mut stall) = (opened.stream, opened.ssm_session, opened.stall);
    let direct = ctx.server().use_direct_tls();
    let mut stream = match timed("negotiating TLS", t.tls, negotiate_tls(ctx, raw, direct)).await {
        Err(e @ UpstreamError::DirectTlsRefused { .. }) if ctx.server().mode() == DirectTls::Auto => {
            // Something answers for this name that is not PostgreSQL 17 (or lets no direct TLS
            // through); it keeps SSLRequest from now on, and this connection starts over.
            ctx.server().direct_tls_refused();
            tracing::info!(
                target = %ctx.target().name,
                server_version = ctx.server().major_version().unwrap_or(0),
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
            true => match secret(ctx, &startup.user(), &startup.database(), fresh).await? {
                token @ Secret::Token(_) => Some(token),
                Secret::Password(_) | Secret::Temporary(_) => None,
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
        let to_client = authenticate(ctx, &mut stream, startup, fresh, sent_ahead.is_some(), prefetched).await?;
        let user = startup.user();
        Ok(Upstream {
            stream,
            to_client,
            ssm_session,
            stall,
            login_user: (*user != *client_user).then(|| user.into_owned()),
        })
    })
    .await
}

/// TLS either way: direct (PostgreSQL 17+) or after SSLRequest.
async fn negotiate_tls(
    ctx: &dyn UpstreamContext,
    raw: TunnelStream,
    direct: bool,
) -> Result<TlsStream<TunnelStream>, UpstreamError> {
    if direct {
        start_direct_tls(ctx, raw).await
    } else {
        start_tls(ctx, raw).await
    }
}
