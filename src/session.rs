//! One client connection end to end, as one linear pipeline: read the first packets → open the
//! tunnel → TLS to the endpoint → startup → IAM auth → relay. Each phase has a timeout and its
//! own error type; whatever fails before relay reaches the client as an ErrorResponse.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::audit::{Audit, Closer, Ending};
use crate::cancel;
use crate::client_auth::{Access, ClientCertificate, ClientTls};
use crate::connection_age::AgeLimit;
use crate::drain::{self, DrainSignal};
use crate::errors::display_chain;
use crate::local_tls::{ClientStream, LocalTls};
use crate::pg::startup::{self, FirstPacket, StartupError, StartupMessage};
use crate::pg::{ClientError, SqlState, UserFacing};
use crate::relay;
use crate::target::TargetContext;
use crate::upstream::{self, UpstreamError};

/// Errors of the client side of a session that are ours, not the upstream's.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("timed out after {0} s waiting for the client's startup packet")]
    StartupTimeout(u64),
    #[error("the client sent a second {0}")]
    RepeatedRequest(&'static str),
    #[error("replication connections cannot log in with RDS IAM authentication")]
    Replication,
    /// An IAM token names its database user in UTF-8 text; PostgreSQL would look these bytes up
    /// as they are and find no such role.
    #[error("the user name is not valid UTF-8, so no IAM token can name it")]
    UserNotUtf8,
    #[error("too many connections")]
    TooManyConnections,
}

impl UserFacing for SessionError {
    fn sqlstate(&self) -> SqlState {
        match self {
            SessionError::StartupTimeout(_) | SessionError::RepeatedRequest(_) => {
                SqlState::ProtocolViolation
            }
            SessionError::Replication => SqlState::FeatureNotSupported,
            SessionError::UserNotUtf8 => SqlState::InvalidAuthorization,
            SessionError::TooManyConnections => SqlState::TooManyConnections,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            SessionError::StartupTimeout(_) => {
                "Clients must send their startup packet right after connecting.".into()
            }
            SessionError::RepeatedRequest(_) => "Send each of SSLRequest and GSSENCRequest at most once.".into(),
            SessionError::Replication => {
                "AWS does not allow IAM authentication for replication; use a password user directly."
                    .into()
            }
            SessionError::UserNotUtf8 => {
                "Check the client's user name and encoding, or name the database user with --db-user."
                    .into()
            }
            SessionError::TooManyConnections => {
                "Close idle connections, or raise --max-connections.".into()
            }
        })
    }
}

/// How `--max-connections` reaches a session. A session slot is taken only once the first
/// packet turns out to be a StartupMessage: a CancelRequest never takes one, so a cancel still
/// gets through when the proxy is full — which is exactly when a user wants to stop a query.
#[derive(Debug, Default)]
pub struct Admission {
    /// The listener's slot for a connection that has not sent its StartupMessage yet; held while
    /// the first packets are read (under the startup timeout) and while a cancel is forwarded,
    /// and released once the session has its own slot.
    pub first_packet: Option<OwnedSemaphorePermit>,
    /// The `--max-connections` slots (`None`: no limit).
    pub sessions: Option<Arc<Semaphore>>,
}

/// Serves one accepted client connection with no connection limit until it ends or `drain`
/// fires (then the client gets 57P01 at a message boundary). `peer` is for logs only.
pub async fn serve<S>(ctx: &TargetContext, client: S, peer: &str, drain: &DrainSignal)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    serve_with(ctx, client, peer, drain, Admission::default(), Access::Open).await
}

/// [`serve`] under `admission` (the connection limit), for any client; `access` says what the
/// client must do before it is logged in upstream (see [`crate::client_auth`]).
pub async fn serve_with<S>(
    ctx: &TargetContext,
    client: S,
    peer: &str,
    drain: &DrainSignal,
    admission: Admission,
    access: Access,
)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // The phases before the relay (startup, client login, upstream connect) run boxed: their
    // states, many KiB, would otherwise stay in this task for the whole life of the connection.
    let _open = ctx.metrics.open_connection();
    let started = Instant::now();
    let mut client = ClientStream::Plain(client);
    let first = tokio::select! {
        biased;
        () = drain.expired() => None,
        first = tokio::time::timeout(ctx.timeouts.client_startup, Box::pin(read_startup(&mut client, ctx.local_tls.as_ref()))) => Some(first),
    };
    let first = match first {
        None => {
            fail(&mut client, peer, &drain::shutdown_error()).await;
            return;
        }
        Some(Err(_)) => {
            let err = SessionError::StartupTimeout(ctx.timeouts.client_startup.as_secs());
            fail(&mut client, peer, &err.to_client_error()).await;
            return;
        }
        Some(Ok(Err(Failure::Quiet(reason)))) => {
            tracing::debug!(%peer, reason = reason.as_str(), "client went away before startup");
            return;
        }
        Some(Ok(Err(Failure::Handshake(e)))) => {
            tracing::warn!(%peer, error = %e, ca = ?ctx.local_tls.as_ref().and_then(|t| t.ca_cert.as_deref()), "TLS handshake with a client failed (with verify-full the client must trust the local CA: sslrootcert)");
            return;
        }
        Some(Ok(Err(Failure::Client(err)))) => {
            fail(&mut client, peer, &err).await;
            return;
        }
        Some(Ok(Ok(first))) => first,
    };

    let startup = match first {
        Accepted::Cancel(request) => {
            // Close the client's socket first: clients wait for EOF, the upstream does not answer.
            // Over TLS that is a close_notify, which TLS clients expect before the EOF.
            let _ = client.shutdown().await;
            drop(client);
            if !access.may_cancel(peer) {
                return;
            }
            match Box::pin(cancel::forward(ctx, &request)).await {
                Ok(()) => tracing::info!(%peer, pid = request.pid(), "cancel request forwarded"),
                Err(e) => tracing::warn!(%peer, error = display_chain(&e), "cancel request could not be forwarded"),
            }
            drop(admission.first_packet);
            return;
        }
        Accepted::Startup(s) => s,
    };
    // The client's own login to the proxy (remote peers on a shared listener) comes first, while
    // the first-packet slot is held: a client that cannot log in never takes a session slot.
    let tls = client.is_tls().then(|| ClientTls {
        certificate: client.peer_certificate().map(|c| ClientCertificate::from_der(c)),
        server_end_point: ctx.local_tls.as_ref().and_then(|t| t.server_end_point.clone()),
    });
    if Box::pin(access.admit(&mut client, peer, &startup, ctx.timeouts.client_startup, tls.as_ref()))
        .await
        .is_err()
    {
        return;
    }
    let _session_slot = match admission.sessions.map(Semaphore::try_acquire_owned) {
        Some(Err(_)) => {
            tracing::warn!(%peer, "refusing a connection: --max-connections reached");
            fail(&mut client, peer, &SessionError::TooManyConnections.to_client_error()).await;
            return;
        }
        Some(Ok(permit)) => Some(permit),
        None => None,
    };
    drop(admission.first_packet);

    let mut audit = Audit::new(peer, &ctx.target.name, &startup.user(), &startup.database());
    audit.engine = ctx.target.engine.engine.as_str();
    let refused = |audit: &Audit, err: &ClientError| {
        ctx.metrics.login_failed(err.sqlstate.code());
        audit.closed(&Ending {
            closed_by: Some(Closer::Error),
            reason: err.message.clone(),
            sqlstate: err.sqlstate.code().to_owned(),
            duration: started.elapsed(),
            ..Ending::default()
        });
    };
    // Read as PostgreSQL reads it (the last value, any boolean spelling), so `replication=off`
    // passes and no spelling of "on" slips through to a server that would honour it.
    if startup.replication() != startup::Replication::Off {
        let err = SessionError::Replication.to_client_error();
        refused(&audit, &err);
        fail(&mut client, peer, &err).await;
        return;
    }
    let startup = match &ctx.db_user {
        Some(user) if user.as_bytes() != startup.user_bytes() => startup.with_user(user),
        _ => startup,
    };
    if std::str::from_utf8(startup.user_bytes()).is_err() {
        let err = SessionError::UserNotUtf8.to_client_error();
        refused(&audit, &err);
        fail(&mut client, peer, &err).await;
        return;
    }
    let user = startup.user().into_owned();
    let database = startup.database().into_owned();
    audit.db_user = crate::audit::bounded(&user);

    // A spare logged in with these exact startup parameters costs no upstream round trip.
    // The connection's age (`--max-connection-age`) counts from the start of its login.
    let login_began = tokio::time::Instant::now();
    let connected = match Box::pin(ctx.spares.take(&startup)).await {
        Some(spare) => Some(Ok(spare)),
        None => tokio::select! {
            biased;
            () = drain.expired() => None,
            connected = Box::pin(upstream::connect(ctx, &startup)) => Some(connected.map(|u| (u, login_began))),
        },
    };
    audit.principal_arn = ctx.auth.principal_arn();
    let (mut upstream, login_began) = match connected {
        None => {
            let err = drain::shutdown_error();
            audit.closed(&Ending {
                closed_by: Some(Closer::Drain),
                reason: "the drain timeout ran out during login".into(),
                sqlstate: err.sqlstate.code().to_owned(),
                duration: started.elapsed(),
                ..Ending::default()
            });
            fail(&mut client, peer, &err).await;
            return;
        }
        Some(Ok(u)) => u,
        Some(Err(UpstreamError::Rejected {
            sqlstate,
            message,
            password_from,
            to_client,
            ..
        })) => {
            let with = password_from.unwrap_or("an IAM token");
            tracing::warn!(%peer, user = user.as_str(), database = database.as_str(), sqlstate = sqlstate.as_str(), error = message.as_str(), with, "login refused by the server; its error was passed to the client");
            ctx.metrics.login_failed(&sqlstate);
            audit.closed(&Ending {
                closed_by: Some(Closer::Error),
                reason: format!("login refused by the server: {message}"),
                sqlstate: sqlstate.clone(),
                duration: started.elapsed(),
                ..Ending::default()
            });
            let _ = client.write_all(&to_client).await;
            let _ = client.shutdown().await;
            return;
        }
        Some(Err(e)) => {
            let client_error = e.to_client_error();
            tracing::warn!(%peer, user = user.as_str(), database = database.as_str(), via = %ctx.tunnel.describe(), sqlstate = client_error.sqlstate.code(), error = display_chain(&e), "login failed; the client was told why");
            refused(&audit, &client_error);
            fail(&mut client, peer, &client_error).await;
            return;
        }
    };
    // Logged in: keep spares ready for this kind of client while it is in use.
    let _spares = ctx.spares.lease(&startup);
    audit.ssm_session = upstream.ssm_session.clone().unwrap_or_default();
    if let Some(login_user) = &upstream.login_user {
        audit.upstream_user = crate::audit::bounded(login_user);
    }
    if let Err(e) = client.write_all(&upstream.to_client).await {
        tracing::debug!(%peer, error = e.to_string(), "client went away right after login");
        return;
    }
    ctx.metrics.connect_seconds.observe(started.elapsed().as_secs_f64());
    tracing::info!(%peer, user = user.as_str(), database = database.as_str(), tls = client.is_tls(), setup_ms = started.elapsed().as_millis() as u64, "client connected");
    audit.opened();
    // `--via ssm`: the tunnel resets a connection whose client stopped reading (so the others
    // on its SSM session can go on); the client then gets what it was in the middle of and an
    // ErrorResponse, if it reads again within another stall timeout.
    let stall = upstream.stall.clone();
    let stalled = async {
        match &stall {
            Some(watch) => watch.stalled().await,
            None => std::future::pending().await,
        }
    };
    let age = ctx.max_connection_age.map(|age| AgeLimit { since: login_began, age });
    let noticed = || {
        tracing::info!(%peer, target = ctx.target.name.as_str(), user = user.as_str(), database = database.as_str(), age_s = login_began.elapsed().as_secs(), max_age_s = ctx.max_connection_age.unwrap_or_default().as_secs(), "the client was told its connection ends soon at --max-connection-age (NOTICE)");
    };
    let stops = relay::Stops {
        drain: drain.expired(),
        cut: stalled,
        age,
        noticed,
    };
    let relay = relay::relay_with(
        &mut client,
        &mut upstream.stream,
        &upstream.to_client,
        stops,
        relay::Meters {
            to_upstream: Some(ctx.metrics.bytes_to_upstream.clone()),
            to_client: Some(ctx.metrics.bytes_to_client.clone()),
        },
    );
    let given_up = async {
        match &stall {
            Some(watch) => {
                watch.stalled().await;
                tokio::time::sleep(watch.grace()).await;
            }
            None => std::future::pending().await,
        }
    };
    let mut stats = tokio::select! {
        stats = relay => stats,
        () = given_up => relay::RelayStats {
            closed_by: Some(relay::ClosedBy::Client),
            client_error: Some(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading and did not come back")),
            ..relay::RelayStats::default()
        },
    };
    let stall_error = stall.as_ref().filter(|w| w.is_stalled()).map(|w| w.client_error());
    // After the client said goodbye, an upstream that drops the connection without a TLS
    // close_notify (tunnels do: the SSM agent closes both sides at once) is a normal end.
    if stats.closed_by == Some(relay::ClosedBy::Client)
        && stats
            .upstream_error
            .as_ref()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof)
    {
        stats.upstream_error = None;
    }
    let drained = stats.closed_by == Some(relay::ClosedBy::Drain);
    let aged_out = age.filter(|_| stats.closed_by == Some(relay::ClosedBy::MaxAge));
    if let Some(err) = &stall_error {
        tracing::warn!(%peer, user = user.as_str(), database = database.as_str(), sqlstate = err.sqlstate.code(), "the client stopped reading its results; the tunnel gave its connection up");
        if drained {
            let limit = stall.as_ref().map_or(std::time::Duration::ZERO, |w| w.grace());
            let _ = tokio::time::timeout(limit, fail(&mut client, peer, err)).await;
        }
    } else if drained {
        fail(&mut client, peer, &drain::shutdown_error()).await;
    } else if let Some(limit) = &aged_out {
        ctx.metrics.aged_out.inc();
        tracing::info!(%peer, target = ctx.target.name.as_str(), user = user.as_str(), database = database.as_str(), age_s = login_began.elapsed().as_secs(), max_age_s = limit.age.as_secs(), "connection ended at --max-connection-age; the client got 57P01");
        // Boxed, like the login phases: its timers would otherwise stay in the task all along.
        Box::pin(last_words_at_age(&mut client, &mut upstream.stream, peer, limit, stats.upstream_at_boundary)).await;
    }
    let error = stats
        .client_error
        .as_ref()
        .map(|e| format!("client: {e}"))
        .or_else(|| stats.upstream_error.as_ref().map(|e| format!("upstream: {e}")));
    tracing::info!(
        %peer,
        closed_by = %stats.closed_by.map_or("nobody".into(), |c| c.to_string()),
        error = error.as_deref().unwrap_or("none"),
        bytes_in = stats.client_to_upstream,
        bytes_out = stats.upstream_to_client,
        duration_s = started.elapsed().as_secs(),
        "connection closed"
    );
    // An I/O error on either side is the end's cause, whoever noticed first.
    let closed_by = match (&error, stats.closed_by) {
        _ if stall_error.is_some() => Some(Closer::Error),
        (_, Some(relay::ClosedBy::Drain)) => Some(Closer::Drain),
        (_, Some(relay::ClosedBy::MaxAge)) => Some(Closer::MaxAge),
        (Some(_), _) => Some(Closer::Error),
        (None, by) => by.map(Closer::from),
    };
    audit.closed(&Ending {
        closed_by,
        reason: match (&stall_error, &aged_out) {
            (Some(err), _) => err.message.clone(),
            (None, Some(limit)) => limit.reason(),
            (None, None) => error.unwrap_or_default(),
        },
        sqlstate: match (&stall_error, &aged_out) {
            (Some(err), _) => err.sqlstate.code().to_owned(),
            (None, Some(limit)) => limit.error().sqlstate.code().to_owned(),
            (None, None) if drained => drain::shutdown_error().sqlstate.code().to_owned(),
            (None, None) => String::new(),
        },
        bytes_to_upstream: stats.client_to_upstream,
        bytes_to_client: stats.upstream_to_client,
        duration: started.elapsed(),
    });
}

/// How long the proxy's last words to either side may take at `--max-connection-age`.
const LAST_WORDS: std::time::Duration = std::time::Duration::from_secs(5);

/// The end at `--max-connection-age`: 57P01 to the client first, then to the server a Terminate
/// when the client's side stopped between two messages (`at_boundary`), else just the close.
/// Each bounded: neither side may hold the session.
async fn last_words_at_age<C, U>(client: &mut C, upstream: &mut U, peer: &str, limit: &AgeLimit, at_boundary: bool)
where
    C: AsyncWrite + Unpin,
    U: AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(LAST_WORDS, fail(client, peer, &limit.error())).await;
    let _ = tokio::time::timeout(LAST_WORDS, async {
        if at_boundary {
            upstream.write_all(&crate::spare::TERMINATE).await?;
        }
        upstream.shutdown().await
    })
    .await;
}

enum Accepted {
    Cancel(startup::CancelRequest),
    Startup(StartupMessage),
}

enum Failure {
    /// The client left; nobody is there to tell.
    Quiet(String),
    /// The client's TLS handshake failed (`--local-tls`): no channel left to send an error on.
    Handshake(std::io::Error),
    Client(ClientError),
}

/// The first-packet loop: SSLRequest and GSSENCRequest are each answered at most once —
/// GSSENCRequest always `N`, SSLRequest `S` and a TLS handshake with `--local-tls`, else `N`.
/// After TLS the next packet (a startup or a cancel request) is read inside it.
async fn read_startup<S>(client: &mut ClientStream<S>, tls: Option<&LocalTls>) -> Result<Accepted, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ssl_done, mut gss_done) = (false, false);
    loop {
        match startup::read_first_packet(client).await {
            Ok(FirstPacket::SslRequest) if !ssl_done => {
                ssl_done = true;
                match tls {
                    Some(tls) => {
                        // read_first_packet consumed exactly the 8 request bytes, so anything the
                        // client pipelined before seeing `S` goes to rustls and fails the
                        // handshake (no plaintext injected ahead of TLS, CVE-2021-23222).
                        client
                            .write_all(b"S")
                            .await
                            .map_err(|e| Failure::Quiet(e.to_string()))?;
                        client.upgrade(tls).await.map_err(Failure::Handshake)?;
                    }
                    None => answer_no(client).await?,
                }
            }
            Ok(FirstPacket::GssEncRequest) if !gss_done => {
                gss_done = true;
                answer_no(client).await?;
            }
            Ok(FirstPacket::SslRequest) => {
                return Err(Failure::Client(
                    SessionError::RepeatedRequest("SSLRequest").to_client_error(),
                ))
            }
            Ok(FirstPacket::GssEncRequest) => {
                return Err(Failure::Client(
                    SessionError::RepeatedRequest("GSSENCRequest").to_client_error(),
                ))
            }
            Ok(FirstPacket::Cancel(c)) => return Ok(Accepted::Cancel(c)),
            Ok(FirstPacket::Startup(s)) => return Ok(Accepted::Startup(s)),
            Err(e @ (StartupError::Closed | StartupError::Io(_) | StartupError::DirectTls)) => {
                return Err(Failure::Quiet(e.to_string()))
            }
            Err(e) => return Err(Failure::Client(e.to_client_error())),
        }
    }
}

async fn answer_no<S: AsyncWrite + Unpin>(client: &mut S) -> Result<(), Failure> {
    client
        .write_all(b"N")
        .await
        .map_err(|e| Failure::Quiet(e.to_string()))
}

async fn fail<S: AsyncWrite + Unpin>(client: &mut S, peer: &str, err: &ClientError) {
    tracing::debug!(%peer, sqlstate = err.sqlstate.code(), error = err.message.as_str(), "sending error to client");
    let _ = client.write_all(&err.encode()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<A, B, C, D, E, F, R>(_: fn(A, B, C, D, E, F) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A connection's task is as large as the largest state of [`serve_with`], and it is held for
    /// the connection's whole life: idle connections by the thousand must not each carry the
    /// upstream login's states (TLS handshake, SCRAM, AWS calls) while they relay.
    #[test]
    fn a_connection_task_does_not_carry_the_login_phases() {
        let size = future_size(
            serve_with::<tokio::net::TcpStream>
                as fn(&'static TargetContext, _, &'static str, &'static DrainSignal, _, _) -> _,
        );
        assert!(size <= 8192, "serve_with's future is {size} bytes (about 18 KiB when the login phases were not boxed)");
    }
}
