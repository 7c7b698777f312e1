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

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::{oneshot, watch, Notify};

use super::api::{ControlPlane, StartRequest};
use super::sleep_opt;
use super::datachannel::{self, DataChannel, DataChannelError, Opened};
use super::handshake;
use super::smux;
use super::websocket::Connector;
use super::SsmError;

/// Data messages per second (either direction) above which a session counts as busy with a
/// bulk transfer: about a third of what one session may carry.
pub const BUSY_RATE: u64 = 300;

/// How often each session's message rate is sampled.
const RATE_SAMPLE: Duration = Duration::from_millis(500);

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

/// What `acquire` found: a shared session (with a stream slot reserved) or a fresh channel.
enum Acquired {
    Mux(Arc<MuxSession>),
    Basic(Opened),
}

/// Gives back a stream slot and tells the monitor.
fn release(session: &MuxSession) {
    session.active.fetch_sub(1, Ordering::AcqRel);
    session.changed.notify_one();
}

/// Reserves a stream slot on `session`.
fn reserve(session: &Arc<MuxSession>) -> Arc<MuxSession> {
    session.active.fetch_add(1, Ordering::AcqRel);
    session.changed.notify_one();
    session.clone()
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A shared session to open a stream on (its slot reserved), or `None`: open a new one.
    /// A session being resumed is never picked and does not count against `max_sessions`:
    /// it may not come back, and a new session works now.
    fn pick(&self, st: &mut PoolState) -> Option<Arc<MuxSession>> {
        st.sessions.retain(|s| s.is_alive());
        let usable: Vec<&Arc<MuxSession>> = st
            .sessions
            .iter()
            .filter(|s| !s.is_reconnecting())
            .collect();
        let least = |pred: &dyn Fn(&MuxSession) -> bool| {
            usable
                .iter()
                .filter(|s| pred(s))
                .min_by_key(|s| s.active.load(Ordering::Acquire))
                .map(|s| (*s).clone())
        };
        if let Some(s) = least(&|s| !s.is_congested() && !s.is_busy()) {
            return Some(reserve(&s));
        }
        if usable.len() < self.settings.max_sessions.max(1) {
            return None;
        }
        // At the limit: share a busy session rather than a congested one, if there is a choice.
        least(&|s| !s.is_congested())
            .or_else(|| least(&|_| true))
            .map(|s| reserve(&s))
    }

    async fn acquire(self: &Arc<Self>) -> Result<Acquired, SsmError> {
        loop {
            let waiting = {
                let mut st = self.lock();
                if st.shutting_down {
                    return Err(SsmError::ShuttingDown);
                }
                if st.basic_mode {
                    if let Some(opened) = st.spare_basic.take() {
                        return Ok(Acquired::Basic(opened));
                    }
                    None
                } else if let Some(s) = self.pick(&mut st) {
                    return Ok(Acquired::Mux(s));
                } else {
                    Some(self.join_opening(&mut st))
                }
            };
            let Some(mut rx) = waiting else {
                return self.open_basic().await.map(Acquired::Basic);
            };
            let outcome = match rx.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone(),
                Err(_) => Some(Err(SsmError::ShuttingDown)),
            };
            if let Some(Err(e)) = outcome {
                return Err(e);
            }
        }
    }

    /// The session open in flight, or a new one started: its outcome is published there.
    fn join_opening(self: &Arc<Self>, st: &mut PoolState) -> watch::Receiver<OpenResult> {
        match &st.opening {
            Some(rx) => rx.clone(),
            None => {
                let (tx, rx) = watch::channel(None);
                st.opening = Some(rx.clone());
                tokio::spawn(self.clone().open_shared(tx));
                rx
            }
        }
    }

    /// A live shared session, opened if there is none (or joining the open in flight); `None`
    /// in basic mode, where sessions are not shared.
    async fn warm_session(self: &Arc<Self>) -> Result<Option<Arc<MuxSession>>, SsmError> {
        loop {
            let mut rx = {
                let mut st = self.lock();
                if st.shutting_down {
                    return Err(SsmError::ShuttingDown);
                }
                if st.basic_mode {
                    return Ok(None);
                }
                st.sessions.retain(|s| s.is_alive());
                if let Some(session) = st.sessions.first() {
                    return Ok(Some(session.clone()));
                }
                self.join_opening(&mut st)
            };
            let outcome = match rx.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone(),
                Err(_) => return Err(SsmError::ShuttingDown),
            };
            if let Some(Err(e)) = outcome {
                return Err(e);
            }
        }
    }

    /// Opens a session for the pool, detached from any one connection; publishes the outcome.
    async fn open_shared(self: Arc<Self>, done: watch::Sender<OpenResult>) {
        let outcome = match self.open_session().await {
            Err(e) => Err(e),
            Ok(opened) => {
                let mux = handshake::agent_supports_mux(opened.channel.agent_version())
                    && opened.channel.properties().is_local_port_forwarding();
                if mux {
                    self.add_mux(opened).await
                } else {
                    tracing::info!(
                        agent_version = opened.channel.agent_version(),
                        "SSM agent too old for multiplexing: one SSM session per connection"
                    );
                    let unused = {
                        let mut st = self.lock();
                        st.basic_mode = true;
                        if st.shutting_down {
                            Some(opened)
                        } else {
                            st.spare_basic.replace(opened)
                        }
                    };
                    if let Some(unused) = unused {
                        unused.channel.terminate().await;
                    }
                    Ok(())
                }
            }
        };
        self.lock().opening = None;
        done.send_replace(Some(outcome));
    }

    async fn add_mux(self: &Arc<Self>, opened: Opened) -> Result<(), SsmError> {
        let session = match self.start_mux(opened) {
            Ok(session) => session,
            Err((e, channel)) => {
                channel.terminate().await;
                return Err(e);
            }
        };
        let added = {
            let mut st = self.lock();
            if !st.shutting_down {
                st.sessions.push(session.clone());
            }
            !st.shutting_down
        };
        if !added {
            session.channel.terminate().await;
            return Err(SsmError::ShuttingDown);
        }
        tokio::spawn(monitor(Arc::downgrade(self), session));
        Ok(())
    }

    /// Basic mode: a session of its own, opened detached; if the caller is gone by the time it
    /// is ready, it is terminated.
    async fn open_basic(self: &Arc<Self>) -> Result<Opened, SsmError> {
        let (tx, rx) = oneshot::channel();
        let pool = self.clone();
        tokio::spawn(async move {
            let result = pool.open_session().await;
            if let Err(Ok(opened)) = tx.send(result) {
                opened.channel.terminate().await;
            }
        });
        rx.await.unwrap_or(Err(SsmError::ShuttingDown))
    }

    /// StartSession, then the data channel and its handshake, each step under its own limit.
    /// A session whose channel failed is terminated so it does not linger until the idle
    /// timeout.
    async fn open_session(&self) -> Result<Opened, SsmError> {
        let request = StartRequest {
            target: self.settings.target.clone(),
            host: self.settings.host.clone(),
            port: self.settings.port,
        };
        let limit = self.settings.start_timeout;
        let grant = match tokio::time::timeout(limit, self.control.start_session(&request)).await {
            Ok(Ok(grant)) => grant,
            Ok(Err(e)) => {
                self.config.counters.failed.inc();
                return Err(e.into());
            }
            Err(_) => {
                self.config.counters.failed.inc();
                return Err(SsmError::StartTimeout(limit.as_secs()));
            }
        };
        let session_id = grant.session_id.clone();
        match datachannel::open(
            grant,
            self.config.clone(),
            self.connector.clone(),
            self.control.clone(),
        )
        .await
        {
            Ok(opened) => {
                self.config.counters.started.inc();
                tracing::info!(
                    session = %session_id,
                    target = %self.settings.target,
                    agent_version = opened.channel.agent_version(),
                    "SSM session open"
                );
                Ok(opened)
            }
            Err(source) => {
                self.config.counters.failed.inc();
                tracing::debug!(session = %session_id, error = source.to_string(), "SSM session failed to open; terminating it");
                datachannel::terminate_api(&*self.control, &session_id).await;
                Err(SsmError::DataChannel { session_id, source })
            }
        }
    }

    #[allow(clippy::result_large_err)]
    fn start_mux(&self, opened: Opened) -> Result<Arc<MuxSession>, (SsmError, DataChannel)> {
        let config = smux::Config {
            // NOPs only while streams are open (the monitor switches them); the agent's
            // keepalive is off for our ClientVersion, so silence is normal.
            keepalive_interval: Some(self.settings.keepalive_interval),
            keepalive_timeout: None,
            max_receive_buffer: self.settings.session_buffer,
            max_stream_buffer: self.settings.stream_buffer,
            // Small frames, so streams interleave finely at ~1 KiB per data-channel message.
            max_frame_size: 8 * 1024,
        };
        let smux = match smux::Session::client(opened.stream, config) {
            Ok(smux) => smux,
            Err(e) => return Err((SsmError::Smux(e), opened.channel)),
        };
        smux.set_keepalive(false);
        Ok(Arc::new(MuxSession {
            channel: opened.channel,
            smux,
            active: AtomicUsize::new(0),
            changed: Notify::new(),
            opened: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            stalls_reset: AtomicU64::new(0),
        }))
    }

    /// Drops a session from the pool (it died).
    fn forget(&self, session: &Arc<MuxSession>) {
        self.lock().sessions.retain(|s| !Arc::ptr_eq(s, session));
    }

    /// Removes the session if it is still unused (and, with `prewarm`, not the last one); true
    /// when it was removed.
    fn retire_if_idle(&self, session: &Arc<MuxSession>) -> bool {
        let mut st = self.lock();
        if session.active.load(Ordering::Acquire) != 0 {
            return false;
        }
        let others = st.sessions.iter().filter(|s| !Arc::ptr_eq(s, session) && s.is_alive());
        if self.settings.prewarm && others.count() == 0 {
            return false;
        }
        st.sessions.retain(|s| !Arc::ptr_eq(s, session));
        true
    }
}

/// Follows one shared session: keepalive on while streams are open, its message rate and
/// congestion sampled, retired after the idle timeout, out of the pool when it dies.
async fn monitor(pool: Weak<Pool>, session: Arc<MuxSession>) {
    let Some(idle_timeout) = pool.upgrade().map(|p| p.settings.idle_timeout) else {
        return;
    };
    // The session --ssm-prewarm keeps must outlive the account's idle session timeout too.
    let prewarm = pool.upgrade().is_some_and(|p| p.settings.prewarm);
    let id = session.channel.session_id().to_owned();
    let mut sample =
        tokio::time::interval_at(tokio::time::Instant::now() + RATE_SAMPLE, RATE_SAMPLE);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (session.channel.stats(), tokio::time::Instant::now());
    let mut was_congested = false;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        let active = session.active.load(Ordering::Acquire);
        session.smux.set_keepalive(active > 0 || prewarm);
        if active > 0 {
            idle_since = tokio::time::Instant::now();
        }
        let idle_at = (active == 0).then_some(idle_since + idle_timeout);
        tokio::select! {
            () = session.changed.notified() => continue,
            _ = sample.tick() => {
                let now = (session.channel.stats(), tokio::time::Instant::now());
                let secs = now.1.duration_since(last.1).as_secs_f64().max(0.1);
                let out = now.0.messages_out.saturating_sub(last.0.messages_out);
                let inn = now.0.messages_in.saturating_sub(last.0.messages_in);
                session.rate.store((out.max(inn) as f64 / secs) as u64, Ordering::Relaxed);
                last = now;
                if let Some(pool) = pool.upgrade() {
                    let stall = pool.settings.stall_timeout;
                    for (stream, dropped) in session.smux.reset_stalled(stall) {
                        session.stalls_reset.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            session = %id,
                            stream,
                            discarded_bytes = dropped,
                            stalled_s = stall.as_secs(),
                            "a client stopped reading its results; its stream is reset so the other connections on the session can go on"
                        );
                    }
                }
                let congested = session.is_congested();
                if congested != was_congested {
                    if congested {
                        tracing::info!(session = %id, streams = active, "SSM session congested: a client is not reading its results; new connections go to another session");
                    } else {
                        tracing::info!(session = %id, "SSM session no longer congested");
                    }
                    was_congested = congested;
                }
            }
            reason = session.channel.wait_ended() => {
                if let Some(pool) = pool.upgrade() {
                    pool.forget(&session);
                }
                session.smux.close();
                if !matches!(reason, DataChannelError::Terminated) {
                    if let Some(pool) = pool.upgrade() {
                        pool.config.counters.failed.inc();
                    }
                    tracing::warn!(session = %id, reason = reason.to_string(), "SSM session lost; the next connection opens a new one");
                }
                return;
            }
            reason = session.smux.closed() => {
                if let Some(pool) = pool.upgrade() {
                    pool.forget(&session);
                }
                if matches!(reason.root_cause(), smux::SmuxError::ClosedLocally) {
                    tracing::debug!(session = %id, "SSM multiplexer closed; terminating the session");
                } else {
                    tracing::warn!(session = %id, reason = reason.to_string(), "SSM multiplexer failed; terminating the session");
                }
                session.channel.terminate().await;
                return;
            }
            () = sleep_opt(idle_at) => {
                let retired = pool.upgrade().is_none_or(|p| p.retire_if_idle(&session));
                if retired {
                    tracing::info!(
                        session = %id,
                        idle_s = idle_timeout.as_secs(),
                        streams = session.opened.load(Ordering::Relaxed),
                        "closing the idle SSM session"
                    );
                    session.smux.close();
                    session.channel.terminate().await;
                    return;
                }
                // Kept (in use again, or the one --ssm-prewarm keeps): a new idle period.
                idle_since = tokio::time::Instant::now();
            }
        }
    }
}

/// After a failed prewarm open, the first wait before trying again; it doubles up to
/// [`PREWARM_RETRY_MAX`].
const PREWARM_RETRY_FIRST: Duration = Duration::from_secs(15);
const PREWARM_RETRY_MAX: Duration = Duration::from_secs(300);
/// A kept session that ends is reopened at once, but when two in a row lasted less than this,
/// only after the retry wait: a session that dies as it opens makes no loop of StartSessions.
const PREWARM_MIN_LIFE: Duration = Duration::from_secs(60);

/// `--ssm-prewarm`: makes sure one shared session is open, now and whenever the last one ends
/// (the monitor never retires the last one). Opens at most one at a time, through the same
/// path as a connection, and only while none is open. A failure is logged once as a warning
/// (not fatal: connections still open sessions as usual) and retried with a growing wait.
/// Ends with the pool, at shutdown, or when the agent turns out too old for mux.
async fn keep_warm(pool: Weak<Pool>) {
    let mut retry = PREWARM_RETRY_FIRST;
    let mut failures = 0u32;
    let mut short_lives = 0u32;
    loop {
        let Some(p) = pool.upgrade() else { return };
        let warm = p.warm_session().await;
        let target = p.settings.target.clone();
        drop(p);
        let wait = match warm {
            Ok(Some(session)) => {
                if failures > 0 {
                    tracing::info!(%target, "--ssm-prewarm: an SSM session is open again");
                }
                failures = 0;
                let found = tokio::time::Instant::now();
                tokio::select! {
                    _ = session.channel.wait_ended() => {}
                    _ = session.smux.closed() => {}
                }
                if found.elapsed() >= PREWARM_MIN_LIFE {
                    short_lives = 0;
                    retry = PREWARM_RETRY_FIRST;
                    continue;
                }
                short_lives += 1;
                if short_lives == 1 {
                    continue;
                }
                retry
            }
            Ok(None) => {
                tracing::info!(%target, "--ssm-prewarm keeps no session open: the SSM agent is too old for multiplexing, so every connection needs a session of its own");
                return;
            }
            Err(SsmError::ShuttingDown) => return,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%target, error = %crate::errors::display_chain(&e), hint = %e.hint(), retry_s = retry.as_secs(), "--ssm-prewarm could not open an SSM session; trying again in the background (connections open one as usual meanwhile)");
                } else {
                    tracing::debug!(%target, error = %crate::errors::display_chain(&e), retry_s = retry.as_secs(), "--ssm-prewarm: still no SSM session");
                }
                retry
            }
        };
        tokio::time::sleep(wait).await;
        retry = (retry * 2).min(PREWARM_RETRY_MAX);
    }
}

/// One tunnel connection: an smux stream of a shared session, or (basic mode) the byte pipe of
/// a session of its own, which is terminated when the stream is dropped.
pub struct SsmStream {
    inner: Inner,
    /// For error messages (target, host, port).
    settings: Arc<SsmSettings>,
}

enum Inner {
    Mux {
        stream: smux::Stream,
        session: Arc<MuxSession>,
    },
    Basic {
        stream: DuplexStream,
        channel: Arc<DataChannel>,
        /// To take the channel off the pool's shutdown list when the connection ends.
        pool: Weak<Pool>,
    },
}

impl std::fmt::Debug for SsmStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (mode, session) = match &self.inner {
            Inner::Mux { session, .. } => ("mux", session.channel.session_id()),
            Inner::Basic { channel, .. } => ("basic", channel.session_id()),
        };
        f.debug_struct("SsmStream")
            .field("mode", &mode)
            .field("session", &session)
            .finish_non_exhaustive()
    }
}

impl SsmStream {
    /// The SSM session this stream runs in.
    pub fn session_id(&self) -> &str {
        match &self.inner {
            Inner::Mux { session, .. } => session.channel.session_id(),
            Inner::Basic { channel, .. } => channel.session_id(),
        }
    }

    /// For a mux stream: tells when it is reset because its client stopped reading for
    /// `stall_timeout` (see [`SsmSettings::stall_timeout`]). Basic mode has no such reset: the
    /// session is the connection's own, and holding it back holds up nobody else.
    pub fn stall_watch(&self) -> Option<StallWatch> {
        match &self.inner {
            Inner::Mux { stream, .. } => Some(StallWatch {
                watch: stream.reset_watch(),
                stall_timeout: self.settings.stall_timeout,
            }),
            Inner::Basic { .. } => None,
        }
    }

    fn channel(&self) -> &DataChannel {
        match &self.inner {
            Inner::Mux { session, .. } => &session.channel,
            Inner::Basic { channel, .. } => channel,
        }
    }

    /// An `io::Error` carrying the session's end reason, if it has ended.
    fn ended_error(&self, kind: io::ErrorKind) -> Option<io::Error> {
        let channel = self.channel();
        match channel.ended()? {
            DataChannelError::Terminated => None,
            source => Some(io::Error::new(
                kind,
                SsmError::DataChannel {
                    session_id: channel.session_id().to_owned(),
                    source,
                },
            )),
        }
    }

    /// Turns a bare EOF into the real reason where there is one.
    fn explain_eof(&self) -> Option<io::Error> {
        match &self.inner {
            // FIN before any data, the first such after a ConnectToPortError: the agent's
            // dial for this stream failed.
            Inner::Mux { stream, session } => {
                let failed = stream.empty_fin_offset().is_some_and(|fin| {
                    is_connect_failure(
                        &session.channel.connect_error_offsets(),
                        &session.smux.empty_fin_offsets(),
                        fin,
                    )
                });
                if failed {
                    return Some(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        SsmError::ConnectToPort {
                            target: self.settings.target.clone(),
                            host: self.settings.host.clone(),
                            port: self.settings.port,
                        },
                    ));
                }
                self.ended_error(io::ErrorKind::ConnectionAborted)
            }
            // The pipe only ends with the session, and basic mode never ends it cleanly.
            Inner::Basic { .. } => self.ended_error(io::ErrorKind::ConnectionAborted),
        }
    }
}

/// Tells when one connection's stream was reset because its client stopped reading.
#[derive(Debug, Clone)]
pub struct StallWatch {
    watch: smux::ResetWatch,
    stall_timeout: Duration,
}

impl StallWatch {
    /// Resolves once the stream is reset; never if it ends another way.
    pub async fn stalled(&self) {
        self.watch.reset().await;
    }

    /// Whether the stream has been reset.
    pub fn is_stalled(&self) -> bool {
        self.watch.is_reset()
    }

    /// How long the client had stopped reading (`--ssm-stall-timeout`).
    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// How long after the reset the client may take to read what it is owed and the error
    /// (the connection holds no tunnel resources any more, only its socket); then it is closed.
    pub fn grace(&self) -> Duration {
        self.stall_timeout.max(Duration::from_secs(60))
    }

    /// What the client is told after the reset.
    pub fn client_error(&self) -> crate::pg::ClientError {
        let secs = self.stall_timeout.as_secs_f64();
        crate::pg::ClientError {
            sqlstate: crate::pg::SqlState::ConnectionFailure,
            message: format!(
                "the rest of this result was discarded: the client stopped reading it for {secs} s"
            ),
            hint: Some(format!(
                "Read results as they arrive, or fetch large ones in batches (a cursor with \
                 FETCH). Through SSM, connections share a session and a client that stops \
                 reading holds up the others, so rds-auth-proxy gives its connection up after \
                 --ssm-stall-timeout ({secs} s); reconnect to go on."
            )),
        }
    }
}

/// Whether the empty FIN at `fin` answers a ConnectToPortError. The agent dials once per
/// accepted stream and, when that fails, sends the flag and then closes the stream, so each
/// flag belongs to the first empty FIN (FIN before any data) at or after its position that no
/// earlier flag claimed. `flags` and `fins` are positions in the agent's output byte stream,
/// each in ascending order. A flag whose stream was closed here first still claims that
/// stream's FIN, so it can never be blamed on a later stream.
fn is_connect_failure(flags: &[u64], fins: &[u64], fin: u64) -> bool {
    let mut next = 0;
    for &flag in flags {
        while fins.get(next).is_some_and(|f| *f < flag) {
            next += 1;
        }
        match fins.get(next) {
            None => return false,
            Some(f) if *f == fin => return true,
            Some(_) => next += 1,
        }
    }
    false
}

impl AsyncRead for SsmStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let wants = buf.remaining() > 0;
        let result = match &mut this.inner {
            Inner::Mux { stream, .. } => Pin::new(stream).poll_read(cx, buf),
            Inner::Basic { stream, .. } => Pin::new(stream).poll_read(cx, buf),
        };
        match result {
            Poll::Ready(Ok(())) if wants && buf.filled().len() == before => {
                match this.explain_eof() {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Ready(Ok(())),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.ended_error(e.kind()).unwrap_or(e))),
            other => other,
        }
    }
}

impl AsyncWrite for SsmStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = match &mut this.inner {
            Inner::Mux { stream, .. } => Pin::new(stream).poll_write(cx, data),
            Inner::Basic { stream, .. } => Pin::new(stream).poll_write(cx, data),
        };
        match result {
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.ended_error(e.kind()).unwrap_or(e))),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Mux { stream, .. } => Pin::new(stream).poll_flush(cx),
            Inner::Basic { stream, .. } => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Mux { stream, .. } => Pin::new(stream).poll_shutdown(cx),
            Inner::Basic { stream, .. } => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

impl Drop for SsmStream {
    fn drop(&mut self) {
        match &self.inner {
            Inner::Mux { session, .. } => release(session),
            Inner::Basic { channel, pool, .. } => {
                // Off the shutdown list: this connection terminates its own session now.
                if let Some(pool) = pool.upgrade() {
                    let ended = Arc::downgrade(channel);
                    pool.lock()
                        .basic
                        .retain(|w| w.strong_count() > 0 && !w.ptr_eq(&ended));
                }
                // Basic mode never reuses a session (a server-side close is not signalled).
                let channel = channel.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { channel.terminate().await });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod connect_failure_tests {
    use super::is_connect_failure;

    #[test]
    fn each_flag_claims_the_first_empty_fin_after_it() {
        // A flag at 100 and its stream's FIN at 120.
        assert!(is_connect_failure(&[100], &[120], 120));
        // An empty FIN before any flag is an ordinary early close.
        assert!(!is_connect_failure(&[100], &[40, 120], 40));
        // A FIN after the one the flag claimed is not blamed, however late it comes.
        assert!(!is_connect_failure(&[100], &[120, 5000], 5000));
        // Two failed dials whose flags came before either FIN: one FIN each, in order.
        assert!(is_connect_failure(&[100, 110], &[130, 140, 900], 130));
        assert!(is_connect_failure(&[100, 110], &[130, 140, 900], 140));
        assert!(!is_connect_failure(&[100, 110], &[130, 140, 900], 900));
        // A FIN at the flag's own position (nothing in between) counts.
        assert!(is_connect_failure(&[100], &[100], 100));
        assert!(!is_connect_failure(&[], &[100], 100));
    }
}
