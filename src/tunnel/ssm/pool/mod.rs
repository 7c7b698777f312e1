//! The SSM tunnel as the proxy uses it: an elastic pool of SSM sessions shared through smux
//! (mux mode). Agents too old for mux get basic mode: one SSM session per connection (§5.2).
//!
//! - A new connection joins the least-loaded *healthy* session: alive, not congested (a stalled
//!   client has made it stop taking agent output) and not busy with a bulk transfer (more than
//!   [`BUSY_RATE`] data messages a second, where the pacer would make it wait).
//! - A new session opens only when every open one is congested or busy, up to `max_sessions`
//!   (`--ssm-sessions`); beyond that the least-loaded uncongested session is shared anyway.
//! - Sessions without streams close after `idle_timeout`; smux NOP keepalives flow only while
//!   a session carries streams, so the account's idle timeout still applies to unused ones.
//!   With `prewarm` (`--ssm-prewarm`) one session opens at start and one is always kept: the
//!   last session is never retired and has keepalives, and [`keep_warm`] opens another when it
//!   ends (never more than that one).
//! - Opening runs detached from the connection that asked for it, each step under its own
//!   limit (StartSession, WebSocket upgrade, handshake; they add up to less than the client's
//!   connect limit). A client that gives up does not cancel it; a session that fails after
//!   StartSession succeeded is always TerminateSession'd.
//! - Memory: a stream holding `stream_buffer` bytes its client has not read makes its session
//!   congested (no new streams); the session keeps buffering up to `session_buffer` in all
//!   (plus the data channel's `inbound_queue_bytes`), and only then stops taking agent output.
//!   A stream whose client has read nothing for `stall_timeout` while holding that much is
//!   reset (smux v1 has no flow control: it is the only way the session's other streams go
//!   on); its connection learns it through [`SsmStream::stall_watch`].
//! - A session whose WebSocket is being resumed is never picked for a new stream, and does not
//!   count against `max_sessions` meanwhile: a new session works now, the resume may not.
//! - A ConnectToPortError flag is matched to the stream it belongs to by its place in the
//!   agent's output (the first FIN-before-data after it), never to a later stream.
//!
//! Here: the settings, the [`SsmTunnel`] handle and the pool's state. The rest by concern:
//! [`pick`] (which session a new connection joins), [`open`] (opening a session),
//! [`lifecycle`] (each session's monitor, idle retirement and `--ssm-prewarm`) and [`stream`]
//! (one connection's byte stream and why it ended).

mod lifecycle;
mod open;
mod pick;
mod stream;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};

pub use self::stream::{SsmStream, StallWatch};

use self::lifecycle::keep_warm;
use self::pick::{release, Acquired};
use self::stream::Inner;
use super::api::ControlPlane;
use super::datachannel::{self, DataChannel, Opened};
use super::smux;
use super::websocket::Connector;
use super::SsmError;

/// Data messages per second (either direction) above which a session counts as busy with a
/// bulk transfer: about a third of what one session may carry.
pub const BUSY_RATE: u64 = 300;
/// Everything the pool needs to know, from the configuration.
#[derive(Debug, Clone)]
pub struct SsmSettings {
    /// The managed node (`--ssm-target`).
    pub target: String,
    /// What the node dials: the RDS endpoint and port.
    pub host: String,
    pub port: u16,
    /// Upper bound of the elastic pool (`--ssm-sessions`).
    pub max_sessions: usize,
    /// A session with no stream for this long is terminated (`--ssm-idle-timeout`).
    pub idle_timeout: Duration,
    /// smux NOP period while a session carries streams (`--ssm-keepalive`).
    pub keepalive_interval: Duration,
    /// Unread bytes at which a stream counts as stalled and its session as congested.
    pub stream_buffer: usize,
    /// Most unread bytes over all streams of one session; beyond it agent output waits.
    pub session_buffer: usize,
    /// A stream that has held `stream_buffer` unread bytes this long is reset, so its session's
    /// other streams go on (`--ssm-stall-timeout`); its client is told why.
    pub stall_timeout: Duration,
    /// Limit for the StartSession call.
    pub start_timeout: Duration,
    /// Per data channel tuning (payload size, pacing, timeouts, reconnect budget).
    pub data_channel: datachannel::Config,
    /// Open a session at start and always keep one open (`--ssm-prewarm`).
    pub prewarm: bool,
}

/// Default per-stream receive buffer.
pub const DEFAULT_STREAM_BUFFER: usize = 8 << 20;
/// Default per-session receive budget.
pub const DEFAULT_SESSION_BUFFER: usize = 64 << 20;
/// Default upper bound of the pool.
pub const DEFAULT_MAX_SESSIONS: usize = 4;
/// Default `--ssm-stall-timeout`.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

impl SsmSettings {
    pub fn new(target: String, host: String, port: u16) -> Self {
        SsmSettings {
            target,
            host,
            port,
            max_sessions: DEFAULT_MAX_SESSIONS,
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(20),
            stream_buffer: DEFAULT_STREAM_BUFFER,
            session_buffer: DEFAULT_SESSION_BUFFER,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            start_timeout: Duration::from_secs(8),
            data_channel: datachannel::Config::default(),
            prewarm: false,
        }
    }
}

/// The `--via ssm` tunnel. Cheap to clone; clones share the sessions.
#[derive(Clone)]
pub struct SsmTunnel {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for SsmTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsmTunnel")
            .field("target", &self.pool.settings.target)
            .field("sessions", &self.session_ids())
            .finish_non_exhaustive()
    }
}

/// The outcome of one detached session open, shared by every connection that waited for it.
type OpenResult = Option<Result<(), SsmError>>;

struct Pool {
    settings: Arc<SsmSettings>,
    /// `settings.data_channel`, shared with every data channel.
    config: Arc<datachannel::Config>,
    control: Arc<dyn ControlPlane>,
    connector: Arc<dyn Connector>,
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    /// Live mux sessions.
    sessions: Vec<Arc<MuxSession>>,
    /// Basic-mode data channels of the open connections (one each), for shutdown; each
    /// connection takes its own off when it ends.
    basic: Vec<Weak<DataChannel>>,
    /// A basic-mode channel opened by the mux opener that found an old agent.
    spare_basic: Option<Opened>,
    /// The agent is too old for mux: every connection gets its own session.
    basic_mode: bool,
    shutting_down: bool,
    /// The session open in flight, if any: later callers wait for it instead of opening more.
    opening: Option<watch::Receiver<OpenResult>>,
}

/// One shared SSM session in mux mode.
struct MuxSession {
    channel: DataChannel,
    smux: smux::Session,
    /// Open streams. Incremented only under the pool lock (so retiring cannot race a pick).
    active: AtomicUsize,
    /// Wakes the session's monitor when `active` changes.
    changed: Notify,
    /// Streams ever opened, for logs.
    opened: AtomicU64,
    /// Data messages per second (the larger direction), sampled by the monitor.
    rate: AtomicU64,
    /// Streams reset because their client stopped reading (see `stall_timeout`).
    stalls_reset: AtomicU64,
}

impl MuxSession {
    fn is_alive(&self) -> bool {
        self.channel.ended().is_none() && !self.smux.is_closed()
    }

    /// A stalled client has made the session stop taking agent output.
    fn is_congested(&self) -> bool {
        self.smux.is_congested() || self.channel.is_congested()
    }

    fn is_busy(&self) -> bool {
        self.rate.load(Ordering::Relaxed) > BUSY_RATE
    }

    /// Its WebSocket is down and being resumed: a stream opened now would wait for the resume
    /// (or die with it), so new connections go elsewhere.
    fn is_reconnecting(&self) -> bool {
        self.channel.is_reconnecting()
    }
}

/// What one session is doing, for logs, tests and benches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLoad {
    pub session_id: String,
    pub streams: usize,
    pub congested: bool,
    pub busy: bool,
    /// Being resumed after its WebSocket dropped; not given new connections meanwhile.
    pub reconnecting: bool,
    /// Streams reset so far because their client stopped reading.
    pub stalls_reset: u64,
    pub stats: datachannel::ChannelStats,
}

impl SsmTunnel {
    pub fn new(
        settings: SsmSettings,
        control: Arc<dyn ControlPlane>,
        connector: Arc<dyn Connector>,
    ) -> Self {
        let config = Arc::new(settings.data_channel.clone());
        SsmTunnel {
            pool: Arc::new(Pool {
                settings: Arc::new(settings),
                config,
                control,
                connector,
                state: Mutex::new(PoolState::default()),
            }),
        }
    }

    pub fn settings(&self) -> &SsmSettings {
        &self.pool.settings
    }

    /// A new tunnel to the same node with `change` applied to these settings. It shares the
    /// API client and the WebSocket connector with this one, but no session; for tests and
    /// benches that need limits the flags do not offer (e.g. small buffers).
    pub fn with_settings(&self, change: impl FnOnce(&mut SsmSettings)) -> SsmTunnel {
        let mut settings = (*self.pool.settings).clone();
        change(&mut settings);
        SsmTunnel::new(
            settings,
            self.pool.control.clone(),
            self.pool.connector.clone(),
        )
    }

    /// Ids of the live shared sessions.
    pub fn session_ids(&self) -> Vec<String> {
        self.pool
            .lock()
            .sessions
            .iter()
            .map(|s| s.channel.session_id().to_owned())
            .collect()
    }

    /// Load of every live shared session.
    pub fn load(&self) -> Vec<SessionLoad> {
        self.pool
            .lock()
            .sessions
            .iter()
            .map(|s| SessionLoad {
                session_id: s.channel.session_id().to_owned(),
                streams: s.active.load(Ordering::Acquire),
                congested: s.is_congested(),
                busy: s.is_busy(),
                reconnecting: s.is_reconnecting(),
                stalls_reset: s.stalls_reset.load(Ordering::Relaxed),
                stats: s.channel.stats(),
            })
            .collect()
    }

    /// "SSM via i-… (session …)", for logs and errors.
    pub fn describe(&self) -> String {
        let ids = self.session_ids();
        let sessions = match ids.as_slice() {
            [] => "no session open yet".to_owned(),
            [one] => format!("session {one}"),
            many => format!("sessions {}", many.join(", ")),
        };
        format!("SSM via {} ({sessions})", self.pool.settings.target)
    }

    /// Opens one byte stream to the target's port: an smux stream of a shared session, or a
    /// session of its own in basic mode.
    pub async fn open(&self) -> Result<SsmStream, SsmError> {
        // One retry: a session can die between being picked and opening the stream.
        let mut retried = false;
        loop {
            match self.pool.acquire().await? {
                Acquired::Basic(opened) => return Ok(self.basic_stream(opened)),
                Acquired::Mux(session) => match session.smux.open_stream().await {
                    Ok(stream) => {
                        session.opened.fetch_add(1, Ordering::Relaxed);
                        return Ok(SsmStream {
                            inner: Inner::Mux { stream, session },
                            settings: self.pool.settings.clone(),
                        });
                    }
                    Err(e) => {
                        release(&session);
                        self.pool.forget(&session);
                        if retried {
                            return Err(session
                                .channel
                                .ended()
                                .map(|source| SsmError::DataChannel {
                                    session_id: session.channel.session_id().to_owned(),
                                    source,
                                })
                                .unwrap_or(SsmError::Smux(e)));
                        }
                        retried = true;
                    }
                },
            }
        }
    }

    /// `--ssm-prewarm`: opens a session now, in the background, and keeps one open from then
    /// on ([`keep_warm`]). Nothing without `prewarm` in the settings. Call once, at start.
    pub fn start_prewarm(&self) {
        if self.pool.settings.prewarm {
            tokio::spawn(keep_warm(Arc::downgrade(&self.pool)));
        }
    }

    fn basic_stream(&self, opened: Opened) -> SsmStream {
        let channel = Arc::new(opened.channel);
        self.pool.lock().basic.push(Arc::downgrade(&channel));
        SsmStream {
            inner: Inner::Basic {
                stream: opened.stream,
                channel,
                pool: Arc::downgrade(&self.pool),
            },
            settings: self.pool.settings.clone(),
        }
    }

    /// Ends every session: TerminateSession flag, a short wait, the TerminateSession API,
    /// close; each bounded (about 7 s), all at once. Call it after the listeners have drained;
    /// later `open()`s fail.
    pub async fn shutdown(&self) {
        let (sessions, basic, spare) = {
            let mut st = self.pool.lock();
            st.shutting_down = true;
            (
                std::mem::take(&mut st.sessions),
                std::mem::take(&mut st.basic),
                st.spare_basic.take(),
            )
        };
        let mux = sessions.into_iter().map(|s| async move {
            s.channel.terminate().await;
            s.smux.close();
        });
        let basic = basic
            .into_iter()
            .filter_map(|w| w.upgrade())
            .map(|c| async move {
                c.terminate().await;
            });
        let spare = async move {
            if let Some(opened) = spare {
                opened.channel.terminate().await;
            }
        };
        futures_util::future::join3(
            futures_util::future::join_all(mux),
            futures_util::future::join_all(basic),
            spare,
        )
        .await;
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
