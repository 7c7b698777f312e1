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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use super::sleep_opt;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::api::{ApiError, ControlPlane, StreamGrant, StreamToken};
use super::handshake::{
    self, HandshakeCompletePayload, HandshakeRequestPayload, Outcome, PortProperties,
};
use super::message::{
    message_type, AcknowledgeContent, ChannelClosed, ClientMessage, FlagPayload,
    OpenDataChannelInput, PayloadType,
};
use super::reliable::{self, Incoming, Outgoing, ReliableError};
use super::websocket::{redact_url, Connector, WebSocketError, WsStream};

/// What we report as ClientVersion (§3.3): above 1.2.331.0, so the agent runs mux with its smux
/// keepalive off and the session's liveness is ours to decide; purely numeric, 4 parts.
pub const CLIENT_VERSION: &str = "1.2.650.0";

/// Reported instead to agents without mux support (≤ 3.0.196.0): below 1.1.70, so an agent
/// that could do mux after all still runs basic mode, as we do (§5.1: both sides must agree).
pub const BASIC_CLIENT_VERSION: &str = "1.0.0.0";

/// Default pace: stream-data messages per second per session, resends included. AWS's gateway
/// is reported to cut a data channel above ~1000/s (§5.4); 900 leaves room for bursts.
pub const DEFAULT_MAX_RATE: u32 = 900;

/// Frames the writer queue holds; the core stops reading local data while fewer than
/// [`WRITER_RESERVE`] slots are free, so acks and pings always find room.
const WRITER_QUEUE: usize = 256;
const WRITER_RESERVE: usize = 32;

/// Frames the reader may queue for the core before it waits (TCP then pushes back).
const READER_QUEUE: usize = 256;

/// Most resends per pass, so a long gap does not become one huge burst even unpaced.
const RESEND_BATCH: usize = 64;

/// AWS's agent drops input that reaches it within the first ~0.4–5 ms after it sent
/// HandshakeComplete, without an ack (its port plugin is not ready yet; `ssm-protocol.md` §6a).
/// Messages we send this soon after HandshakeComplete arrived are resent after
/// [`EARLY_RESEND`] if still unacked, instead of after a whole RTO (≈200 ms at first) — but
/// only on a link fast enough for our input to land in that window at all: the round trip from
/// our HandshakeResponse to the agent's HandshakeComplete under [`EARLY_INPUT_MAX_RTT`]. On a
/// slower link the early resend would only be spurious.
const EARLY_INPUT_GUARD: Duration = Duration::from_millis(100);
/// See [`EARLY_INPUT_GUARD`].
const EARLY_INPUT_MAX_RTT: Duration = Duration::from_millis(10);
/// See [`EARLY_INPUT_GUARD`]; later resends follow the normal RTO.
const EARLY_RESEND: Duration = Duration::from_millis(20);
/// At most this many messages get the early resend: the first flight (smux SYN, SSLRequest).
const EARLY_MESSAGES: u32 = 8;

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

/// Dials the WebSocket within `limit` and authenticates with OpenDataChannel.
async fn dial(
    connector: &dyn Connector,
    url: &str,
    token: &StreamToken,
    client_id: Uuid,
    config: &Config,
) -> Result<WsStream, DataChannelError> {
    let mut ws = tokio::time::timeout(config.connect_timeout, connector.connect(url))
        .await
        .map_err(|_| DataChannelError::ConnectTimeout(config.connect_timeout.as_secs()))?
        .map_err(DataChannelError::Connect)?;
    let open =
        OpenDataChannelInput::new(token.expose().to_owned(), client_id, &config.client_version);
    // Serialising five strings cannot fail; an empty frame would be refused by the gateway.
    let json = open.to_json().unwrap_or_default();
    tokio::time::timeout(config.write_timeout, ws.send(Message::text(json)))
        .await
        .map_err(|_| DataChannelError::ConnectTimeout(config.write_timeout.as_secs()))?
        .map_err(|source| {
            DataChannelError::Connect(WebSocketError::Handshake {
                host: "the SSM gateway".into(),
                source: Arc::new(source),
            })
        })?;
    Ok(ws)
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

/// Token bucket for stream-data messages: `rate` per second with bursts of a twentieth of a
/// second (so an interactive round trip never waits). Sans-IO: the caller passes `now`.
/// Forced sends (handshake, flags) may overdraw it; later sends then wait the debt off.
#[derive(Debug)]
struct Pacer {
    /// Messages per second; 0 = unpaced.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate);
        // A twentieth of a second: plenty for a query's round trip, and a full bucket plus a
        // second at `rate` stays 5% under the limit `rate` is chosen against.
        let burst = (rate / 20.0).max(1.0);
        Pacer {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Messages that may go out now.
    fn available(&mut self, now: Instant) -> usize {
        if self.rate == 0.0 {
            return usize::MAX;
        }
        self.refill(now);
        if self.tokens < 1.0 {
            0
        } else {
            self.tokens as usize
        }
    }

    /// Spends one token (possibly into debt).
    fn take(&mut self, now: Instant) {
        if self.rate > 0.0 {
            self.refill(now);
            self.tokens -= 1.0;
        }
    }

    /// When to look again if no token is there now: once a few have accrued (timers have
    /// millisecond granularity, so waiting for exactly one could wake a hair too early, again
    /// and again), plus a millisecond of margin.
    fn next_at(&mut self, now: Instant) -> Instant {
        if self.rate == 0.0 {
            return now;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            return now;
        }
        let want = self.burst.min(4.0);
        now + Duration::from_secs_f64((want - self.tokens) / self.rate) + Duration::from_millis(1)
    }
}

/// What the reader and writer tasks report to the core.
enum LinkEvent {
    Frame(Message),
    /// The connection is unusable (read error, EOF, failed or stuck write).
    Broken(String),
}

/// One WebSocket connection split into its reader and writer tasks. Dropping it stops both.
struct Link {
    events: mpsc::Receiver<LinkEvent>,
    /// `None` once the link is finishing: the writer drains what is queued and stops.
    tx: Option<mpsc::Sender<Message>>,
    /// Signalled each time the writer emptied its queue.
    drained: Arc<Notify>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Link {
    fn start(ws: WsStream, write_timeout: Duration) -> Link {
        let (sink, stream) = ws.split();
        let (events_tx, events) = mpsc::channel(READER_QUEUE);
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let drained = Arc::new(Notify::new());
        let reader = tokio::spawn(read_frames(stream, events_tx.clone()));
        let writer = tokio::spawn(write_frames(
            sink,
            rx,
            events_tx,
            write_timeout,
            drained.clone(),
        ));
        Link {
            events,
            tx: Some(tx),
            drained,
            reader,
            writer,
        }
    }

    /// Free slots in the writer queue.
    fn room(&self) -> usize {
        self.tx.as_ref().map_or(0, mpsc::Sender::capacity)
    }

    /// Lets the writer deliver what is queued (plus a close frame if asked), for up to `limit`.
    async fn finish(&mut self, close: bool, limit: Duration) {
        if let Some(tx) = self.tx.take() {
            if close {
                let _ = tx.try_send(Message::Close(None));
            }
            drop(tx);
            let _ = tokio::time::timeout(limit, &mut self.writer).await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

async fn read_frames(mut stream: SplitStream<WsStream>, events: mpsc::Sender<LinkEvent>) {
    let broken = loop {
        match stream.next().await {
            Some(Ok(message)) => {
                if events.send(LinkEvent::Frame(message)).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => break format!("WebSocket error: {e}"),
            None => break "WebSocket closed".to_owned(),
        }
    };
    let _ = events.send(LinkEvent::Broken(broken)).await;
}

async fn write_frames(
    mut sink: SplitSink<WsStream, Message>,
    mut rx: mpsc::Receiver<Message>,
    events: mpsc::Sender<LinkEvent>,
    limit: Duration,
    drained: Arc<Notify>,
) {
    let failure = 'outer: loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let closing = matches!(first, Message::Close(_));
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match tokio::time::timeout(limit, sink.feed(message)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break 'outer format!("WebSocket write failed: {e}"),
                Err(_) => break 'outer format!("WebSocket write stuck for {} s", limit.as_secs()),
            }
            next = rx.try_recv().ok();
        }
        match tokio::time::timeout(limit, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break format!("WebSocket write failed: {e}"),
            Err(_) => break format!("WebSocket write stuck for {} s", limit.as_secs()),
        }
        drained.notify_one();
        if closing {
            let _ = tokio::time::timeout(limit, sink.close()).await;
            return;
        }
    };
    drained.notify_one();
    let _ = events.send(LinkEvent::Broken(failure)).await;
}

enum HandshakeState {
    Waiting {
        ready: Option<oneshot::Sender<Result<HandshakeInfo, DataChannelError>>>,
        /// Set when the request arrived and we accepted it.
        agent_version: Option<(String, PortProperties)>,
    },
    Complete,
}

/// The protocol core; see the module docs. Its handlers never await a socket: frames go to
/// the writer queue, which has room for acks whenever the core reads new local data.
struct Pump {
    session_id: String,
    /// Same on every reconnect, so the gateway knows it is us again.
    client_id: Uuid,
    /// Current StreamUrl (ResumeSession may hand out a new one).
    url: String,
    link: Link,
    connector: Arc<dyn Connector>,
    control: Arc<dyn ControlPlane>,
    config: Arc<Config>,
    out: Outgoing,
    inc: Incoming<ClientMessage>,
    /// Local bytes to send as Output.
    local_rx: ReadHalf<DuplexStream>,
    local_eof: bool,
    /// Agent output on its way to the local side (written by a helper task).
    inbound_tx: mpsc::UnboundedSender<Bytes>,
    /// Signalled whenever the local side consumed queued agent output.
    inbound_drained: Arc<Notify>,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    /// A Terminate that arrived while reconnecting; answered when the pump stops.
    pending_terminate: Option<oneshot::Sender<()>>,
    /// A Terminate already carried out; answered once `ended` is set.
    terminated: Option<oneshot::Sender<()>>,
    handshake: HandshakeState,
    /// Set when the connection broke; the loop then reconnects.
    ws_broken: Option<String>,
    /// Last frame of any kind from the gateway.
    last_rx: Instant,
    /// Last ack or stream message from the agent.
    last_agent: Instant,
    /// Since when the window has held unacked data (None while it is empty).
    waiting_since: Option<Instant>,
    pacer: Pacer,
    /// Until when messages get the early resend, and how many more may (see
    /// [`EARLY_INPUT_GUARD`]).
    early_until: Option<Instant>,
    early_left: u32,
    /// Output bytes delivered to the local side so far: positions in the agent's byte stream.
    inbound_offset: u64,
    /// When our HandshakeResponse went out; HandshakeComplete follows one round trip later.
    response_sent_at: Option<Instant>,
}

impl Pump {
    async fn run(mut self) {
        let reason = match self.serve().await {
            Ok(()) => DataChannelError::Terminated,
            Err(e) => e,
        };
        // A session that failed on our side (agent silent, sequence state, resume given up)
        // would stay open on AWS until its idle timeout, and with it the node's connections
        // to the database and the locks they hold: end it. A failed open is the opener's to
        // end (it always calls TerminateSession).
        let end_it = reason.leaves_session_open() && self.handshake_complete();
        // The flag only where the WebSocket is known to work (after a failed resume it is not).
        if end_it
            && matches!(
                reason,
                DataChannelError::AgentUnresponsive(_) | DataChannelError::Sequence(_)
            )
        {
            self.queue_terminate_flag();
        }
        // What is queued (e.g. a refusing HandshakeResponse) still goes out, briefly.
        self.link.finish(false, Duration::from_secs(1)).await;
        match &reason {
            DataChannelError::Terminated => {
                tracing::debug!(session = %self.session_id, "data channel closed")
            }
            other => {
                tracing::warn!(session = %self.session_id, reason = other.to_string(), "SSM session ended")
            }
        }
        if let HandshakeState::Waiting {
            ready: Some(ready), ..
        } = std::mem::replace(&mut self.handshake, HandshakeState::Complete)
        {
            let _ = ready.send(Err(reason.clone()));
        }
        // Streams learn the reason before the API call.
        self.shared.ended.send_replace(Some(reason));
        let pending_terminate = self.pending_terminate.take();
        if end_it || pending_terminate.is_some() {
            terminate_api(&*self.control, &self.session_id).await;
        }
        if let Some(done) = pending_terminate {
            let _ = done.send(());
        }
        if let Some(done) = self.terminated.take() {
            let _ = done.send(());
        }
    }

    /// The TerminateSession flag, if the WebSocket still works, without waiting for its ack
    /// (the TerminateSession API follows and works without a WebSocket).
    fn queue_terminate_flag(&mut self) {
        if self.ws_broken.is_some() || !self.out.has_room() {
            return;
        }
        if let Ok(queued) = self.out.push(
            Instant::now(),
            PayloadType::Flag,
            FlagPayload::TerminateSession.encode(),
        ) {
            self.queue(Message::Binary(queued.frame));
        }
    }

    fn handshake_complete(&self) -> bool {
        matches!(self.handshake, HandshakeState::Complete)
    }

    fn inbound_full(&self) -> bool {
        self.shared.inbound_bytes.load(Ordering::Relaxed) > self.config.inbound_queue_bytes
    }

    /// The main loop; returns when the session is over.
    async fn serve(&mut self) -> Result<(), DataChannelError> {
        let mut buf = vec![0u8; self.config.max_payload.max(1)];
        let start = Instant::now();
        let mut ping =
            tokio::time::interval_at(start + self.config.ping_interval, self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(cause) = self.ws_broken.take() {
                self.shared.reconnecting.store(true, Ordering::Release);
                // Left set when resuming fails: the session is over, never to be picked again.
                self.reconnect(cause).await?;
                self.shared.reconnecting.store(false, Ordering::Release);
            }
            let now = Instant::now();
            let inbound_full = self.inbound_full();
            if !inbound_full {
                self.shared.congested.store(false, Ordering::Relaxed);
            }
            let writer_room = self.link.room() > WRITER_RESERVE;
            let tokens = self.pacer.available(now);
            let wants_local = self.handshake_complete() && !self.local_eof && self.out.has_room();
            let can_read_local = wants_local && writer_room && tokens > 0;
            let resend_at = self.out.next_resend_at().map(|at| {
                if tokens > 0 {
                    at
                } else {
                    at.max(self.pacer.next_at(now))
                }
            });
            // Waiting for a token (the loop re-evaluates when it is there).
            let pace_at =
                (wants_local && writer_room && tokens == 0).then(|| self.pacer.next_at(now));
            let dead_at = self.last_rx + self.config.dead_after;
            let agent_dead_at = self
                .waiting_since
                .map(|since| since.max(self.last_agent) + self.config.agent_timeout);
            tokio::select! {
                event = self.link.events.recv() => match event {
                    Some(LinkEvent::Frame(message)) => {
                        self.last_rx = Instant::now();
                        self.on_ws_message(message)?;
                    }
                    Some(LinkEvent::Broken(why)) => self.ws_broken = Some(why),
                    None => self.ws_broken = Some("WebSocket tasks stopped".into()),
                },
                read = self.local_rx.read(&mut buf), if can_read_local => match read {
                    Ok(0) | Err(_) => self.local_eof = true,
                    Ok(n) => {
                        self.send_stream(PayloadType::Output, Bytes::copy_from_slice(&buf[..n]))?;
                    }
                },
                () = self.inbound_drained.notified(), if inbound_full => {}
                () = self.link.drained.notified(), if !writer_room => {}
                () = sleep_opt(pace_at) => {}
                () = sleep_opt(resend_at), if writer_room => self.resend(),
                _ = ping.tick() => {
                    self.queue(Message::Ping(Bytes::from_static(b"keepalive")));
                }
                () = sleep_until(dead_at) => {
                    self.ws_broken = Some(format!(
                        "no frame from the gateway for {} s", self.config.dead_after.as_secs()
                    ));
                }
                () = sleep_opt(agent_dead_at) => {
                    return Err(DataChannelError::AgentUnresponsive(self.config.agent_timeout.as_secs()));
                }
                command = self.commands.recv() => match command {
                    Some(Command::Terminate(done)) => {
                        self.terminate().await;
                        self.terminated = Some(done);
                        return Err(DataChannelError::Terminated);
                    }
                    // The handle was dropped: nobody can use this channel any more.
                    None => return Ok(()),
                },
            }
        }
    }

    /// Hands one frame to the writer. A full queue drops it: stream data stays in the window
    /// and is resent, a lost ack is answered by the agent's resend (which we re-ack).
    fn queue(&mut self, message: Message) {
        if self.ws_broken.is_some() {
            return;
        }
        let Some(tx) = &self.link.tx else { return };
        match tx.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::trace!(session = %self.session_id, "WebSocket writer queue full; frame left for resend");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.ws_broken = Some("WebSocket writer stopped".into());
            }
        }
    }

    /// Numbers, keeps and sends one stream message, spending a pacing token.
    fn send_stream(
        &mut self,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Result<i64, DataChannelError> {
        let now = Instant::now();
        let queued = self
            .out
            .push(now, payload_type, payload)
            .map_err(DataChannelError::Sequence)?;
        self.waiting_since.get_or_insert(now);
        if self.early_left > 0 && self.early_until.is_some_and(|until| now < until) {
            self.early_left -= 1;
            self.out.expedite(queued.sequence_number, EARLY_RESEND);
        }
        self.pacer.take(now);
        self.shared.messages_out.fetch_add(1, Ordering::Relaxed);
        self.queue(Message::Binary(queued.frame));
        Ok(queued.sequence_number)
    }

    /// Resends what is due, as far as the pacer and the writer queue allow.
    fn resend(&mut self) {
        if self.ws_broken.is_some() {
            return;
        }
        let now = Instant::now();
        let limit = self
            .pacer
            .available(now)
            .min(RESEND_BATCH)
            .min(self.link.room().saturating_sub(WRITER_RESERVE));
        for frame in self.out.due_for_resend_up_to(now, limit) {
            self.pacer.take(now);
            self.shared.messages_out.fetch_add(1, Ordering::Relaxed);
            self.shared.resends.fetch_add(1, Ordering::Relaxed);
            self.config.counters.resent.inc();
            self.queue(Message::Binary(frame));
        }
    }

    fn on_ws_message(&mut self, message: Message) -> Result<(), DataChannelError> {
        match message {
            Message::Binary(frame) => match ClientMessage::decode_bytes(&frame) {
                Ok(msg) => self.on_client_message(msg),
                Err(e) => {
                    // Never fatal: a corrupt frame is not acked, so the agent resends it.
                    tracing::debug!(session = %self.session_id, error = %e, "ignoring an undecodable frame");
                    Ok(())
                }
            },
            Message::Text(text) => {
                tracing::debug!(session = %self.session_id, len = text.len(), "ignoring a text frame from the gateway");
                Ok(())
            }
            Message::Close(frame) => {
                let why = frame
                    .map(|f| format!("closed by the gateway ({} {})", u16::from(f.code), f.reason))
                    .unwrap_or_else(|| "closed by the gateway".into());
                self.ws_broken = Some(why);
                Ok(())
            }
            // tungstenite answers pings itself, from the reader.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    fn on_client_message(&mut self, msg: ClientMessage) -> Result<(), DataChannelError> {
        match msg.message_type.as_str() {
            message_type::ACKNOWLEDGE => {
                match msg.json_payload::<AcknowledgeContent>("acknowledge") {
                    Ok(ack) => {
                        let now = Instant::now();
                        self.last_agent = now;
                        self.out
                            .on_ack(ack.acknowledged_message_sequence_number, now);
                        if self.out.is_idle() {
                            self.waiting_since = None;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "ignoring a malformed acknowledge"),
                }
                Ok(())
            }
            message_type::OUTPUT_STREAM_DATA => self.on_stream_data(msg),
            message_type::CHANNEL_CLOSED => {
                let reason = ChannelClosed::from_payload(&msg.payload)
                    .ok()
                    .and_then(|c| c.reason().map(str::to_owned));
                Err(DataChannelError::ChannelClosed { reason })
            }
            message_type::START_PUBLICATION | message_type::PAUSE_PUBLICATION => {
                // Ignored like the plugin does; acks and resends recover whatever is lost.
                tracing::debug!(session = %self.session_id, kind = %msg.message_type, "publication signal");
                Ok(())
            }
            other => {
                tracing::debug!(session = %self.session_id, kind = other, "ignoring a message type");
                Ok(())
            }
        }
    }

    fn on_stream_data(&mut self, msg: ClientMessage) -> Result<(), DataChannelError> {
        self.last_agent = Instant::now();
        self.shared.messages_in.fetch_add(1, Ordering::Relaxed);
        let seq = msg.sequence_number;
        if seq >= self.inc.expected() && self.handshake_complete() && self.inbound_full() {
            // Congested: neither acked nor kept; the agent resends it once we read again.
            self.shared.congested.store(true, Ordering::Relaxed);
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let ack = ClientMessage::ack_for(&msg);
        let delivery = self.inc.on_message(seq, msg);
        if delivery.should_ack() {
            if let Ok(ack) = ack {
                self.queue(Message::Binary(ack.encode()));
            }
        }
        if let reliable::Delivery::Deliver(messages) = delivery {
            for m in messages {
                self.process(m)?;
            }
        }
        Ok(())
    }

    /// Acts on one in-order stream message from the agent.
    fn process(&mut self, msg: ClientMessage) -> Result<(), DataChannelError> {
        match msg.payload_type {
            PayloadType::Output => {
                if !self.handshake_complete() {
                    tracing::debug!(session = %self.session_id, "dropping output before the handshake completed");
                    return Ok(());
                }
                if msg.payload.is_empty() {
                    return Ok(());
                }
                self.shared
                    .inbound_bytes
                    .fetch_add(msg.payload.len(), Ordering::Relaxed);
                self.inbound_offset += msg.payload.len() as u64;
                // The receiver only goes away with the local pipe; then nobody needs the bytes.
                let _ = self.inbound_tx.send(msg.payload);
                Ok(())
            }
            PayloadType::HandshakeRequest => self.on_handshake_request(&msg),
            PayloadType::HandshakeComplete => self.on_handshake_complete(&msg),
            PayloadType::EncChallengeRequest => Err(DataChannelError::HandshakeRefused(vec![
                handshake::KMS_REFUSAL.to_owned(),
            ])),
            PayloadType::Flag => {
                match FlagPayload::decode(&msg.payload) {
                    Ok(FlagPayload::ConnectToPortError) => {
                        tracing::warn!(session = %self.session_id, "the managed node could not connect to the target port");
                        let mut log = self
                            .shared
                            .connect_errors
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if log.len() >= CONNECT_ERROR_LOG {
                            log.pop_front();
                        }
                        log.push_back(self.inbound_offset);
                    }
                    Ok(other) => {
                        tracing::debug!(session = %self.session_id, flag = ?other, "flag from the agent")
                    }
                    Err(e) => tracing::debug!(error = %e, "ignoring a malformed flag"),
                }
                Ok(())
            }
            other => {
                tracing::debug!(session = %self.session_id, payload_type = ?other, "ignoring a payload type");
                Ok(())
            }
        }
    }

    fn on_handshake_request(&mut self, msg: &ClientMessage) -> Result<(), DataChannelError> {
        let HandshakeState::Waiting { agent_version, .. } = &self.handshake else {
            return Ok(());
        };
        if agent_version.is_some() {
            return Ok(());
        }
        let request = HandshakeRequestPayload::from_payload(&msg.payload)
            .map_err(|e| DataChannelError::HandshakeInvalid(e.to_string()))?;
        let client_version = if handshake::agent_supports_mux(&request.agent_version) {
            self.config.client_version.as_str()
        } else {
            BASIC_CLIENT_VERSION
        };
        let (response, outcome) = handshake::respond(&request, client_version);
        let payload = response
            .to_payload()
            .map_err(|e| DataChannelError::HandshakeInvalid(e.to_string()))?;
        self.send_stream(PayloadType::HandshakeResponse, payload)?;
        self.response_sent_at = Some(Instant::now());
        match outcome {
            Outcome::Accepted(properties) => {
                if let Some(declined) = &response.errors {
                    // Unknown actions, answered Unsupported; the agent decides whether to go on.
                    tracing::info!(session = %self.session_id, declined = declined.join("; "), "SSM agent asked for handshake actions this version does not know");
                }
                tracing::debug!(
                    session = %self.session_id,
                    agent_version = request.agent_version.as_str(),
                    "handshake request accepted"
                );
                if let HandshakeState::Waiting { agent_version, .. } = &mut self.handshake {
                    *agent_version = Some((request.agent_version, properties));
                }
                Ok(())
            }
            // The agent cancels the session once it reads our refusal; we are done too.
            Outcome::Refused(errors) => Err(DataChannelError::HandshakeRefused(
                errors.iter().map(ToString::to_string).collect(),
            )),
        }
    }

    fn on_handshake_complete(&mut self, msg: &ClientMessage) -> Result<(), DataChannelError> {
        let HandshakeState::Waiting {
            agent_version,
            ready,
        } = &mut self.handshake
        else {
            return Ok(());
        };
        let Some((version, properties)) = agent_version.take() else {
            return Err(DataChannelError::HandshakeInvalid(
                "HandshakeComplete before HandshakeRequest".into(),
            ));
        };
        if let Ok(complete) = HandshakeCompletePayload::from_payload(&msg.payload) {
            if !complete.customer_message.is_empty() {
                tracing::info!(session = %self.session_id, text = complete.customer_message.as_str(), "SSM agent says");
            }
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(HandshakeInfo {
                agent_version: version,
                properties,
            }));
        }
        self.handshake = HandshakeState::Complete;
        let now = Instant::now();
        let round_trip = self
            .response_sent_at
            .map(|at| now.saturating_duration_since(at));
        if round_trip.is_some_and(|rtt| rtt < EARLY_INPUT_MAX_RTT) {
            self.early_until = Some(now + EARLY_INPUT_GUARD);
        }
        Ok(())
    }

    /// ResumeSession + reconnect with backoff, for as long as the budget allows and the
    /// service keeps handing out tokens. A Terminate ends it at any point.
    async fn reconnect(&mut self, cause: String) -> Result<(), DataChannelError> {
        tracing::warn!(session = %self.session_id, cause = cause.as_str(), "SSM data channel lost; resuming the session");
        let started = Instant::now();
        let mut delay = self.config.reconnect_initial_delay;
        loop {
            let attempt = resume(
                &*self.control,
                &*self.connector,
                &self.session_id,
                &self.url,
                self.client_id,
                &self.config,
            );
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                command = self.commands.recv() => {
                    if let Some(Command::Terminate(done)) = command {
                        self.pending_terminate = Some(done);
                    }
                    return Err(DataChannelError::Terminated);
                }
            };
            let last = match outcome {
                Ok((ws, url)) => {
                    self.url = url;
                    self.link = Link::start(ws, self.config.write_timeout);
                    let now = Instant::now();
                    self.last_rx = now;
                    self.last_agent = now;
                    self.replay();
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.config.counters.resumed.inc();
                    tracing::info!(session = %self.session_id, "SSM data channel resumed");
                    return Ok(());
                }
                Err(Err(fatal)) => return Err(fatal),
                Err(Ok(transient)) => transient,
            };
            if started.elapsed() + delay > self.config.reconnect_budget {
                return Err(DataChannelError::ReconnectGaveUp {
                    secs: self.config.reconnect_budget.as_secs(),
                    last,
                });
            }
            tracing::debug!(session = %self.session_id, error = %last, delay_ms = delay.as_millis() as u64, "resume attempt failed; retrying");
            let jitter = Duration::from_millis(rand::random_range(
                0..=delay.as_millis().min(1000) as u64 / 2,
            ));
            tokio::select! {
                () = tokio::time::sleep(delay + jitter) => {}
                command = self.commands.recv() => {
                    if let Some(Command::Terminate(done)) = command {
                        self.pending_terminate = Some(done);
                    }
                    return Err(DataChannelError::Terminated);
                }
            }
            delay = (delay * 2).min(self.config.reconnect_max_delay);
        }
    }

    /// Sends every unacked message again on a new connection: all are due at once, and go out
    /// as fast as the pacer and the writer take them.
    fn replay(&mut self) {
        self.out.mark_all_lost();
        self.resend();
    }

    /// Flag, brief wait for its ack or channel_closed, TerminateSession API, close.
    async fn terminate(&mut self) {
        let flag_seq =
            if self.handshake_complete() && self.out.has_room() && self.ws_broken.is_none() {
                self.send_stream(PayloadType::Flag, FlagPayload::TerminateSession.encode())
                    .ok()
            } else {
                None
            };
        if let Some(seq) = flag_seq {
            let deadline = Instant::now() + self.config.terminate_wait;
            loop {
                tokio::select! {
                    () = sleep_until(deadline) => break,
                    event = self.link.events.recv() => match event {
                        Some(LinkEvent::Frame(Message::Binary(frame))) => match ClientMessage::decode_bytes(&frame) {
                            Ok(msg) if msg.message_type == message_type::CHANNEL_CLOSED => break,
                            Ok(msg) if msg.message_type == message_type::ACKNOWLEDGE => {
                                let acked = msg
                                    .json_payload::<AcknowledgeContent>("acknowledge")
                                    .is_ok_and(|a| a.acknowledged_message_sequence_number == seq);
                                if acked { break; }
                            }
                            _ => {}
                        },
                        Some(LinkEvent::Frame(_)) => {}
                        Some(LinkEvent::Broken(_)) | None => break,
                    },
                }
            }
        }
        terminate_api(&*self.control, &self.session_id).await;
        self.link.finish(true, Duration::from_secs(1)).await;
    }
}

/// One resume attempt: ResumeSession, dial, OpenDataChannel. `Err(Ok(text))`: worth retrying;
/// `Err(Err(e))`: the session is over.
async fn resume(
    control: &dyn ControlPlane,
    connector: &dyn Connector,
    session_id: &str,
    url: &str,
    client_id: Uuid,
    config: &Config,
) -> Result<(WsStream, String), Result<String, DataChannelError>> {
    let limit = config.resume_timeout;
    let Ok(answer) = tokio::time::timeout(limit, control.resume_session(session_id)).await else {
        return Err(Ok(format!(
            "ResumeSession did not answer within {} ms",
            limit.as_millis()
        )));
    };
    let grant = match answer {
        Ok(Some(grant)) => grant,
        Ok(None) => {
            return Err(Err(DataChannelError::ResumeRefused {
                session_id: session_id.to_owned(),
            }))
        }
        Err(e) if e.is_transient() => return Err(Ok(e.to_string())),
        Err(e) => return Err(Err(DataChannelError::Resume(e))),
    };
    let url = if grant.stream_url.is_empty() {
        url.to_owned()
    } else {
        grant.stream_url.clone()
    };
    let ws = dial(connector, &url, &grant.token, client_id, config)
        .await
        .map_err(|e| Ok(e.to_string()))?;
    Ok((ws, url))
}

#[cfg(test)]
mod tests;
