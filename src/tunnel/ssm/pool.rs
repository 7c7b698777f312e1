//! The SSM tunnel as the proxy uses it: SSM sessions opened lazily on the first connection and
//! shared through smux (mux mode), spread over up to `max_sessions`, kept alive with smux NOPs
//! only while they carry streams, retired after `idle_timeout` without any, and terminated on
//! shutdown. Agents too old for mux get basic mode: one SSM session per connection (§5.2).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::Notify;

use super::api::{ControlPlane, StartRequest};
use super::datachannel::{self, DataChannel, DataChannelError, Opened};
use super::handshake;
use super::smux;
use super::websocket::Connector;
use super::SsmError;

/// Everything the pool needs to know, from the configuration.
#[derive(Debug, Clone)]
pub struct SsmSettings {
    /// The managed node (`--ssm-target`).
    pub target: String,
    /// What the node dials: the RDS endpoint and port.
    pub host: String,
    pub port: u16,
    /// Most SSM sessions open at once (`--ssm-sessions`); connections go to the least loaded.
    pub max_sessions: usize,
    /// A session with no stream for this long is terminated (`--ssm-idle-timeout`).
    pub idle_timeout: Duration,
    /// Per data channel tuning (payload size, pacing, keepalive period, reconnect budget).
    pub data_channel: datachannel::Config,
}

impl SsmSettings {
    pub fn new(target: String, host: String, port: u16) -> Self {
        SsmSettings {
            target,
            host,
            port,
            max_sessions: 1,
            idle_timeout: Duration::from_secs(300),
            data_channel: datachannel::Config::default(),
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

struct Pool {
    settings: Arc<SsmSettings>,
    /// `settings.data_channel`, shared with every data channel.
    config: Arc<datachannel::Config>,
    control: Arc<dyn ControlPlane>,
    connector: Arc<dyn Connector>,
    state: Mutex<PoolState>,
    /// Serialises session opening, so a burst of first connections opens one session, not 200.
    open_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct PoolState {
    /// Live mux sessions.
    sessions: Vec<Arc<MuxSession>>,
    /// Basic-mode data channels (one per connection), for shutdown.
    basic: Vec<Weak<DataChannel>>,
    /// The agent is too old for mux: every connection gets its own session.
    basic_mode: bool,
    shutting_down: bool,
    /// Bumped on every failed session open, so callers that waited for that attempt share
    /// its error instead of each calling StartSession again.
    failures: u64,
    last_failure: Option<SsmError>,
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
                open_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn settings(&self) -> &SsmSettings {
        &self.pool.settings
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
                            settings: self.pool.config_ref(),
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

    fn basic_stream(&self, opened: Opened) -> SsmStream {
        let channel = Arc::new(opened.channel);
        self.pool.lock().basic.push(Arc::downgrade(&channel));
        SsmStream {
            inner: Inner::Basic {
                stream: opened.stream,
                channel,
            },
            settings: self.pool.config_ref(),
        }
    }

    /// Ends every session: TerminateSession flag, a short wait, the TerminateSession API,
    /// close. Call it after the listeners have drained; later `open()`s fail.
    pub async fn shutdown(&self) {
        let (sessions, basic) = {
            let mut st = self.pool.lock();
            st.shutting_down = true;
            (
                std::mem::take(&mut st.sessions),
                std::mem::take(&mut st.basic),
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
        futures_util::future::join(
            futures_util::future::join_all(mux),
            futures_util::future::join_all(basic),
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

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config_ref(&self) -> Arc<SsmSettings> {
        self.settings.clone()
    }

    /// A shared session to open a stream on (its slot reserved), or `None`: open a new one.
    fn pick(&self, st: &mut PoolState) -> Result<Option<Arc<MuxSession>>, SsmError> {
        if st.shutting_down {
            return Err(SsmError::ShuttingDown);
        }
        st.sessions
            .retain(|s| s.channel.ended().is_none() && !s.smux.is_closed());
        let below_limit = st.sessions.len() < self.settings.max_sessions.max(1);
        let least = st
            .sessions
            .iter()
            .min_by_key(|s| s.active.load(Ordering::Acquire))
            .cloned();
        Ok(match least {
            Some(s) if !below_limit || s.active.load(Ordering::Acquire) == 0 => {
                s.active.fetch_add(1, Ordering::AcqRel);
                s.changed.notify_one();
                Some(s)
            }
            _ => None,
        })
    }

    async fn acquire(self: &Arc<Self>) -> Result<Acquired, SsmError> {
        let (basic_mode, failures_before) = {
            let mut st = self.lock();
            if !st.basic_mode {
                if let Some(s) = self.pick(&mut st)? {
                    return Ok(Acquired::Mux(s));
                }
            } else if st.shutting_down {
                return Err(SsmError::ShuttingDown);
            }
            (st.basic_mode, st.failures)
        };
        if basic_mode {
            return self.open_session().await.map(Acquired::Basic);
        }
        let _opening = self.open_lock.lock().await;
        {
            let mut st = self.lock();
            if st.failures != failures_before {
                if let Some(e) = st.last_failure.clone() {
                    return Err(e);
                }
            }
            if let Some(s) = self.pick(&mut st)? {
                return Ok(Acquired::Mux(s));
            }
        }
        let opened = match self.open_session().await {
            Ok(o) => o,
            Err(e) => {
                let mut st = self.lock();
                st.failures += 1;
                st.last_failure = Some(e.clone());
                return Err(e);
            }
        };
        let mux = handshake::agent_supports_mux(opened.channel.agent_version())
            && opened.channel.properties().is_local_port_forwarding();
        if !mux {
            tracing::info!(
                agent_version = opened.channel.agent_version(),
                "SSM agent too old for multiplexing: one SSM session per connection"
            );
            self.lock().basic_mode = true;
            return Ok(Acquired::Basic(opened));
        }
        let session = self.start_mux(opened)?;
        let added = {
            let mut st = self.lock();
            if !st.shutting_down {
                session.active.fetch_add(1, Ordering::AcqRel);
                st.sessions.push(session.clone());
            }
            !st.shutting_down
        };
        if !added {
            session.channel.terminate().await;
            return Err(SsmError::ShuttingDown);
        }
        Ok(Acquired::Mux(session))
    }

    /// StartSession, then the data channel and its handshake. A session whose channel failed
    /// is terminated so it does not linger until the idle timeout.
    async fn open_session(&self) -> Result<Opened, SsmError> {
        let request = StartRequest {
            target: self.settings.target.clone(),
            host: self.settings.host.clone(),
            port: self.settings.port,
        };
        let grant = self.control.start_session(&request).await?;
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
                tracing::info!(
                    session = %session_id,
                    target = %self.settings.target,
                    agent_version = opened.channel.agent_version(),
                    "SSM session open"
                );
                Ok(opened)
            }
            Err(source) => {
                let control = self.control.clone();
                let id = session_id.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        control.terminate_session(&id),
                    )
                    .await;
                });
                Err(SsmError::DataChannel { session_id, source })
            }
        }
    }

    fn start_mux(self: &Arc<Self>, opened: Opened) -> Result<Arc<MuxSession>, SsmError> {
        let config = smux::Config {
            // Our NOPs go in at the data channel, only while streams are open; the agent's
            // keepalive is off for our ClientVersion, so silence is normal.
            keepalive_interval: None,
            keepalive_timeout: None,
            ..smux::Config::default()
        };
        let smux = smux::Session::client(opened.stream, config).map_err(SsmError::Smux)?;
        let session = Arc::new(MuxSession {
            channel: opened.channel,
            smux,
            active: AtomicUsize::new(0),
            changed: Notify::new(),
            opened: AtomicU64::new(0),
        });
        tokio::spawn(monitor(Arc::downgrade(self), session.clone()));
        Ok(session)
    }

    /// Drops a session from the pool (it died).
    fn forget(&self, session: &Arc<MuxSession>) {
        self.lock().sessions.retain(|s| !Arc::ptr_eq(s, session));
    }

    /// Removes the session if it is still unused; true when it was removed.
    fn retire_if_idle(&self, session: &Arc<MuxSession>) -> bool {
        let mut st = self.lock();
        if session.active.load(Ordering::Acquire) != 0 {
            return false;
        }
        st.sessions.retain(|s| !Arc::ptr_eq(s, session));
        true
    }
}

/// Follows one shared session: keepalive on while streams are open, retire after the idle
/// timeout, and leave the pool when the session dies.
async fn monitor(pool: Weak<Pool>, session: Arc<MuxSession>) {
    let Some(idle_timeout) = pool.upgrade().map(|p| p.settings.idle_timeout) else {
        return;
    };
    let id = session.channel.session_id().to_owned();
    loop {
        let active = session.active.load(Ordering::Acquire);
        session.channel.set_keepalive(active > 0);
        let idle = async {
            if active == 0 {
                tokio::time::sleep(idle_timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = session.changed.notified() => continue,
            reason = session.channel.wait_ended() => {
                if let Some(pool) = pool.upgrade() {
                    pool.forget(&session);
                }
                session.smux.close();
                if !matches!(reason, DataChannelError::Terminated) {
                    tracing::warn!(session = %id, %reason, "SSM session lost; the next connection opens a new one");
                }
                return;
            }
            reason = session.smux.closed() => {
                if let Some(pool) = pool.upgrade() {
                    pool.forget(&session);
                }
                tracing::warn!(session = %id, %reason, "SSM multiplexer failed; terminating the session");
                session.channel.terminate().await;
                return;
            }
            () = idle => {
                let retired = pool.upgrade().is_none_or(|p| p.retire_if_idle(&session));
                if retired {
                    tracing::info!(
                        session = %id,
                        idle_s = idle_timeout.as_secs(),
                        streams = session.opened.load(Ordering::Relaxed),
                        "closing the idle SSM session"
                    );
                    session.channel.terminate().await;
                    session.smux.close();
                    return;
                }
            }
        }
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
            // FIN before any data right after a ConnectToPortError: the agent's dial failed.
            Inner::Mux { stream, session } => {
                if !stream.received_any_data() && session.channel.take_connect_error() {
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
            Inner::Basic { channel, .. } => {
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
