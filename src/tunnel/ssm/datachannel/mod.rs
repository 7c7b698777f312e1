//! One SSM session's data channel: the WebSocket to the message gateway, carrying sequenced and
//! acknowledged ClientMessages (`ssm-protocol.md` §1.2–§4), exposed to the rest of the proxy as
//! a plain local byte pipe (one half of a `tokio::io::duplex`).
//!
//! Three tasks per connection: a **reader** that only reads WebSocket frames, a **writer** that
//! only writes them (each write under a time limit: a stuck write is a broken WebSocket), and
//! the **core** (the pump) that owns the protocol state and never awaits either socket. The core
//! runs the handshake, acks every stream message at once (re-acking duplicates, never acking
//! acks), delivers agent output in order, sends local bytes as ≤`max_payload` Output messages
//! inside a bounded unacked window, and resends with exponential backoff. Everything that
//! carries stream data (fresh Output, resends, flags) passes a token bucket of `max_rate`
//! messages per second, because the gateway cuts a data channel that sustains more than about
//! 1000 (§5.4); acks never wait on it.
//!
//! Flow control towards us: agent output waits in a bounded queue for the local side. While
//! that queue is full the core keeps reading the WebSocket (acks and control messages still
//! count) but takes no new agent output: it is neither acked nor kept, and the agent resends it
//! once there is room again. The channel then reports itself *congested*.
//!
//! Liveness: a WebSocket with no frame at all for `dead_after` is reconnected (ResumeSession,
//! same ClientId, unacked messages replayed); the session is declared dead only when data we
//! sent has waited `agent_timeout` with nothing at all from the agent, like the plugin's
//! ~5 minutes of resends. Our own back-pressure never counts as silence: the agent's resends
//! keep arriving while we hold its output back. Each ResumeSession call has `resume_timeout`
//! to answer. A session that ends in a failure of ours (agent silent, sequence state, resume
//! given up) is ended on the service too: the TerminateSession flag while the WebSocket
//! works, then the API, so the node's connections to the database do not outlive it.
//!
//! Here: the configuration, the errors, [`open`] and the [`DataChannel`] handle. The rest by
//! concern: [`pacer`] (the token bucket), [`link`] (dialling the WebSocket and its reader and
//! writer tasks), [`pump`] (the protocol core) and [`reconnect`] (ResumeSession and replay).

mod link;
mod pacer;
mod pump;
mod reconnect;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use self::link::{dial, Link};
use self::pacer::Pacer;
use self::pump::{HandshakeState, Pump, EARLY_MESSAGES};
use super::api::{ApiError, ControlPlane, StreamGrant};
use super::handshake::PortProperties;
use super::reliable::{self, Incoming, Outgoing, ReliableError};
use super::websocket::{redact_url, Connector, WebSocketError};

/// What we report as ClientVersion (§3.3): above 1.2.331.0, so the agent runs mux with its smux
/// keepalive off and the session's liveness is ours to decide; purely numeric, 4 parts.
pub const CLIENT_VERSION: &str = "1.2.650.0";

/// Reported instead to agents without mux support (≤ 3.0.196.0): below 1.1.70, so an agent
/// that could do mux after all still runs basic mode, as we do (§5.1: both sides must agree).
pub const BASIC_CLIENT_VERSION: &str = "1.0.0.0";

/// Default pace: stream-data messages per second per session, resends included. AWS's gateway
/// is reported to cut a data channel above ~1000/s (§5.4); 900 leaves room for bursts.
pub const DEFAULT_MAX_RATE: u32 = 900;

/// Recent ConnectToPortError positions kept (see `Shared::connect_errors`).
const CONNECT_ERROR_LOG: usize = 256;

/// Tuning of one data channel. `Default` matches AWS's limits and the plugin's behaviour where
/// it is sound, and is more patient where the plugin is known to give up too early (§4.6).
#[derive(Debug, Clone)]
pub struct Config {
    /// Reported in OpenDataChannel and the HandshakeResponse.
    pub client_version: String,
    /// Largest Output payload we send; AWS's own clients never exceed 1024 (§5.4).
    pub max_payload: usize,
    /// Stream-data messages per second (fresh, resends, flags) through a token bucket with a
    /// burst of a twentieth of a second; 0 sends as fast as the window allows (`--ssm-max-rate`).
    pub max_rate: u32,
    /// Window, buffers, RTO constants and resend backoff.
    pub reliable: reliable::Config,
    /// The WebSocket upgrade (TCP, TLS, HTTP) must finish within this.
    pub connect_timeout: Duration,
    /// From connect to HandshakeComplete (the agent itself waits 15 s for our response).
    pub handshake_timeout: Duration,
    /// A WebSocket write that does not finish in this long means the connection is stuck
    /// (half-open TCP, a gateway that stopped reading): reconnect.
    pub write_timeout: Duration,
    /// WebSocket ping period, so middleboxes keep the connection and we notice a dead one.
    pub ping_interval: Duration,
    /// No frame at all for this long means the WebSocket is dead: reconnect.
    pub dead_after: Duration,
    /// Data of ours unacked this long with nothing at all from the agent: the session is dead.
    pub agent_timeout: Duration,
    /// Keep trying ResumeSession + reconnect this long after a drop.
    pub reconnect_budget: Duration,
    /// One ResumeSession call must answer within this; a call that hangs (Wi-Fi gone mid
    /// request) counts as a failed attempt and is retried within `reconnect_budget`.
    pub resume_timeout: Duration,
    /// First reconnect delay; doubles (with jitter) up to `reconnect_max_delay`.
    pub reconnect_initial_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// How long to wait for the TerminateSession flag's ack before calling the API.
    pub terminate_wait: Duration,
    /// Agent output queued for the local side beyond this is not accepted (no ack, so the
    /// agent resends it later): bounded memory when the local reader is slow.
    pub inbound_queue_bytes: usize,
    /// Sessions started, resumed, failed and messages resent, for `/metrics`.
    pub counters: super::SsmCounters,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            client_version: CLIENT_VERSION.to_owned(),
            max_payload: 1024,
            max_rate: DEFAULT_MAX_RATE,
            reliable: reliable::Config {
                max_backoff: Duration::from_secs(8),
                // Out-of-order agent output is held here before the local queue: bounded too.
                incoming_capacity: 1024,
                karn: true,
                ..reliable::Config::default()
            },
            connect_timeout: Duration::from_secs(8),
            handshake_timeout: Duration::from_secs(12),
            write_timeout: Duration::from_secs(20),
            ping_interval: Duration::from_secs(30),
            dead_after: Duration::from_secs(120),
            agent_timeout: Duration::from_secs(300),
            reconnect_budget: Duration::from_secs(300),
            resume_timeout: Duration::from_secs(8),
            reconnect_initial_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(30),
            terminate_wait: Duration::from_secs(1),
            inbound_queue_bytes: 1 << 20,
            counters: super::SsmCounters::default(),
        }
    }
}

/// Why a data channel could not be opened or why it ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DataChannelError {
    #[error("cannot open the SSM data channel")]
    Connect(#[source] WebSocketError),
    #[error("the SSM data channel WebSocket did not open within {0} s")]
    ConnectTimeout(u64),
    #[error("the SSM agent did not complete the handshake within {0} s")]
    HandshakeTimeout(u64),
    #[error("refused the SSM handshake: {}", .0.join("; "))]
    HandshakeRefused(Vec<String>),
    #[error("invalid SSM handshake message: {0}")]
    HandshakeInvalid(String),
    #[error("the SSM session was closed{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    ChannelClosed { reason: Option<String> },
    #[error(
        "SSM session {session_id} could not be resumed after the WebSocket dropped (it has ended)"
    )]
    ResumeRefused { session_id: String },
    #[error("ResumeSession failed")]
    Resume(#[source] ApiError),
    #[error("could not reconnect the SSM data channel within {secs} s (last error: {last})")]
    ReconnectGaveUp { secs: u64, last: String },
    #[error("the SSM agent acknowledged nothing for {0} s")]
    AgentUnresponsive(u64),
    #[error("SSM data channel sequence state")]
    Sequence(#[source] ReliableError),
    #[error("the SSM session was terminated by rds-auth-proxy")]
    Terminated,
}

impl DataChannelError {
    /// True when the session may still be open on AWS after ending this way: it failed on
    /// our side, so nobody else will end it before the idle timeout. Not for the handshake
    /// errors (the opener terminates those), a session AWS closed or refused to resume, or
    /// our own orderly end.
    pub fn leaves_session_open(&self) -> bool {
        matches!(
            self,
            DataChannelError::AgentUnresponsive(_)
                | DataChannelError::Sequence(_)
                | DataChannelError::ReconnectGaveUp { .. }
                | DataChannelError::Resume(_)
        )
    }

    pub fn hint(&self) -> String {
        match self {
            DataChannelError::Connect(_) | DataChannelError::ConnectTimeout(_) => {
                "Check the network path to ssmmessages.<region>.amazonaws.com (HTTPS proxy, VPN, \
                 VPC endpoint)."
                    .into()
            }
            DataChannelError::HandshakeTimeout(_) | DataChannelError::HandshakeInvalid(_) => {
                "The managed node's SSM Agent did not answer; check that it is online and up to \
                 date."
                    .into()
            }
            DataChannelError::HandshakeRefused(_) => {
                "The session's preferences ask for something rds-auth-proxy does not support \
                 (e.g. KMS encryption); port-forwarding sessions need none."
                    .into()
            }
            DataChannelError::ChannelClosed { .. }
            | DataChannelError::ResumeRefused { .. }
            | DataChannelError::ReconnectGaveUp { .. }
            | DataChannelError::AgentUnresponsive(_)
            | DataChannelError::Resume(_)
            | DataChannelError::Sequence(_)
            | DataChannelError::Terminated => {
                "The SSM session ended; reconnect to open a new one. If it keeps happening, check \
                 the idle/max session timeouts in your Session Manager preferences."
                    .into()
            }
        }
    }
}

/// What the handshake told us.
#[derive(Debug, Clone)]
pub struct HandshakeInfo {
    pub agent_version: String,
    pub properties: PortProperties,
}

/// Commands to the pump.
enum Command {
    /// Graceful end: flag, short wait, TerminateSession API, close. Answered when done.
    Terminate(oneshot::Sender<()>),
}

/// State the pump shares with the handle.
#[derive(Debug)]
struct Shared {
    /// `Some(reason)` once the pump has stopped.
    ended: watch::Sender<Option<DataChannelError>>,
    /// Where recent ConnectToPortError flags arrived in the agent's output byte stream (bytes
    /// of Output delivered before each), oldest first, at most [`CONNECT_ERROR_LOG`]. They
    /// carry no stream id (§5.3); the stream whose FIN follows a flag is the failed one.
    connect_errors: std::sync::Mutex<std::collections::VecDeque<u64>>,
    /// Successful reconnects, for logs and tests.
    reconnects: AtomicU64,
    /// Set while the WebSocket is down and ResumeSession + reconnect are being tried: the
    /// session carries nothing now, so the pool gives new connections another one.
    reconnecting: AtomicBool,
    /// Agent output queued for the local side, in bytes.
    inbound_bytes: AtomicUsize,
    /// Set while agent output is being refused because the local side is not reading.
    congested: AtomicBool,
    /// Stream-data messages we sent (fresh and resent) and received (including duplicates).
    messages_out: AtomicU64,
    messages_in: AtomicU64,
    /// Resends (RTO, fast retransmit and replays after a reconnect).
    resends: AtomicU64,
    /// Agent messages refused while congested.
    refused: AtomicU64,
}

/// Counters of one data channel, for logs, the pool's load decisions, tests and benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub messages_out: u64,
    pub messages_in: u64,
    pub resends: u64,
    pub refused: u64,
    pub reconnects: u64,
}

/// Handle to a running data channel. Dropping it stops the pump without terminating the
/// session; call [`DataChannel::terminate`] for an orderly end.
#[derive(Debug)]
pub struct DataChannel {
    session_id: String,
    info: HandshakeInfo,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    control: Arc<dyn ControlPlane>,
}

/// A data channel after a completed handshake, and the local end of its byte pipe.
pub struct Opened {
    pub channel: DataChannel,
    /// Bytes written here go to the agent as Output; the agent's Output arrives here.
    pub stream: DuplexStream,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// Connects to the session in `grant`, runs the handshake and starts the pump. The upgrade
/// and the handshake each have their own limit (`connect_timeout`, `handshake_timeout`).
pub async fn open(
    grant: StreamGrant,
    config: Arc<Config>,
    connector: Arc<dyn Connector>,
    control: Arc<dyn ControlPlane>,
) -> Result<Opened, DataChannelError> {
    let client_id = Uuid::new_v4();
    let ws = dial(
        &*connector,
        &grant.stream_url,
        &grant.token,
        client_id,
        &config,
    )
    .await?;
    tracing::debug!(session = %grant.session_id, url = redact_url(&grant.stream_url), "data channel connected");

    // Small: what waits here is first-in first-out, behind the smux writer's fair queue.
    let (local, remote) = tokio::io::duplex(32 * 1024);
    let (local_rx, mut local_tx) = tokio::io::split(remote);
    let (inbound_tx, mut inbound_rx) = mpsc::unbounded_channel::<Bytes>();
    let (ended, _) = watch::channel(None);
    let shared = Arc::new(Shared {
        ended,
        connect_errors: std::sync::Mutex::default(),
        reconnects: AtomicU64::new(0),
        reconnecting: AtomicBool::new(false),
        inbound_bytes: AtomicUsize::new(0),
        congested: AtomicBool::new(false),
        messages_out: AtomicU64::new(0),
        messages_in: AtomicU64::new(0),
        resends: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let inbound_drained = Arc::new(Notify::new());
    {
        let shared = shared.clone();
        let inbound_drained = inbound_drained.clone();
        tokio::spawn(async move {
            while let Some(chunk) = inbound_rx.recv().await {
                let len = chunk.len();
                let ok = local_tx.write_all(&chunk).await.is_ok();
                shared.inbound_bytes.fetch_sub(len, Ordering::Relaxed);
                inbound_drained.notify_one();
                if !ok {
                    break;
                }
            }
            let _ = local_tx.shutdown().await;
        });
    }

    let (commands, command_rx) = mpsc::channel(4);
    let (ready_tx, ready_rx) = oneshot::channel();
    let now = Instant::now();
    let pump = Pump {
        session_id: grant.session_id.clone(),
        client_id,
        url: grant.stream_url.clone(),
        link: Link::start(ws, config.write_timeout),
        connector,
        control: control.clone(),
        out: Outgoing::new(config.reliable.clone()),
        inc: Incoming::new(&config.reliable),
        local_rx,
        local_eof: false,
        inbound_tx,
        inbound_drained,
        shared: shared.clone(),
        commands: command_rx,
        pending_terminate: None,
        terminated: None,
        handshake: HandshakeState::Waiting {
            ready: Some(ready_tx),
            agent_version: None,
        },
        ws_broken: None,
        last_rx: now,
        last_agent: now,
        waiting_since: None,
        pacer: Pacer::new(config.max_rate, now),
        early_until: None,
        early_left: EARLY_MESSAGES,
        inbound_offset: 0,
        response_sent_at: None,
        config: config.clone(),
    };
    tokio::spawn(pump.run());

    let info = match tokio::time::timeout(config.handshake_timeout, ready_rx).await {
        Ok(Ok(Ok(info))) => info,
        Ok(Ok(Err(e))) => return Err(e),
        // The pump ended without answering: its reason is in `ended`.
        Ok(Err(_)) => {
            return Err(shared.ended.borrow().clone().unwrap_or(
                DataChannelError::HandshakeTimeout(config.handshake_timeout.as_secs()),
            ))
        }
        // Dropping `commands` on return stops the pump; the caller terminates the session.
        Err(_) => {
            return Err(DataChannelError::HandshakeTimeout(
                config.handshake_timeout.as_secs(),
            ))
        }
    };
    Ok(Opened {
        channel: DataChannel {
            session_id: grant.session_id,
            info,
            shared,
            commands,
            control,
        },
        stream: local,
    })
}

impl DataChannel {
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    pub fn agent_version(&self) -> &str {
        &self.info.agent_version
    }

    pub fn properties(&self) -> &PortProperties {
        &self.info.properties
    }

    /// Why it ended, or `None` while it runs.
    pub fn ended(&self) -> Option<DataChannelError> {
        self.shared.ended.borrow().clone()
    }

    /// Waits until the pump stops and returns why.
    pub async fn wait_ended(&self) -> DataChannelError {
        let mut rx = self.shared.ended.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        reason.unwrap_or(DataChannelError::Terminated)
    }

    /// Where recent ConnectToPortError flags came in the agent's output byte stream (the
    /// number of Output bytes delivered before each), oldest first.
    pub fn connect_error_offsets(&self) -> Vec<u64> {
        self.shared
            .connect_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// Whether the WebSocket is down and being resumed right now.
    pub fn is_reconnecting(&self) -> bool {
        self.shared.reconnecting.load(Ordering::Acquire)
    }

    /// Reconnects so far.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Whether agent output is being held back because the local side is not reading.
    pub fn is_congested(&self) -> bool {
        self.shared.congested.load(Ordering::Relaxed)
    }

    /// Message counters so far.
    pub fn stats(&self) -> ChannelStats {
        let s = &self.shared;
        ChannelStats {
            messages_out: s.messages_out.load(Ordering::Relaxed),
            messages_in: s.messages_in.load(Ordering::Relaxed),
            resends: s.resends.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Orderly end (§5.6): TerminateSession flag, a short wait for its ack, then the
    /// TerminateSession API (always: it is idempotent and avoids orphaned sessions), then close.
    /// Bounded: `terminate_wait` + 5 s for the API + 1 s for the close.
    pub async fn terminate(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Terminate(done_tx))
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        } else {
            // The pump is gone already; the API call is still worth making.
            terminate_api(&*self.control, &self.session_id).await;
        }
    }
}

/// TerminateSession, at most 5 s; failures only logged (the service ends it on idle anyway).
pub(super) async fn terminate_api(control: &dyn ControlPlane, session_id: &str) {
    match tokio::time::timeout(
        Duration::from_secs(5),
        control.terminate_session(session_id),
    )
    .await
    {
        Ok(Ok(())) => tracing::debug!(session = session_id, "TerminateSession done"),
        Ok(Err(e)) => tracing::debug!(session = session_id, error = %e, "TerminateSession failed"),
        Err(_) => tracing::debug!(session = session_id, "TerminateSession timed out"),
    }
}

#[cfg(test)]
mod tests;
