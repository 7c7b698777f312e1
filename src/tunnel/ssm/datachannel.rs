//! One SSM session's data channel: the WebSocket to the message gateway, carrying sequenced and
//! acknowledged ClientMessages (`ssm-protocol.md` §1.2–§4), exposed to the rest of the proxy as
//! a plain local byte pipe (one half of a `tokio::io::duplex`).
//!
//! A single task (the pump) owns the WebSocket and all protocol state. It runs the handshake,
//! acks every stream message (re-acking duplicates, never acking acks), delivers agent output in
//! order, sends local bytes as ≤`max_payload` Output messages inside a bounded unacked window
//! (which back-pressures the local side), resends on RTO, and survives WebSocket loss by
//! ResumeSession + reconnect with the same ClientId, replaying what was not acked.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};
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
use super::reliable::{self, Incoming, Outgoing};
use super::websocket::{redact_url, Connector, WebSocketError, WsStream};

/// What we report as ClientVersion (§3.3): above 1.2.331.0, so the agent runs mux with its smux
/// keepalive off and the session's liveness is ours to decide; purely numeric, 4 parts.
pub const CLIENT_VERSION: &str = "1.2.650.0";

/// Reported instead to agents without mux support (≤ 3.0.196.0): below 1.1.70, so an agent
/// that could do mux after all still runs basic mode, as we do (§5.1: both sides must agree).
pub const BASIC_CLIENT_VERSION: &str = "1.0.0.0";

/// An smux v1 NOP frame (version 1, cmd 3, length 0, stream 0).
const SMUX_NOP: [u8; 8] = [1, 3, 0, 0, 0, 0, 0, 0];

/// Tuning of one data channel. `Default` matches AWS's limits and the plugin's behaviour where
/// it is sound, and is more patient where the plugin is known to give up too early (§4.6).
#[derive(Debug, Clone)]
pub struct Config {
    /// Reported in OpenDataChannel and the HandshakeResponse.
    pub client_version: String,
    /// Largest Output payload we send; AWS's own clients never exceed 1024 (§5.4).
    pub max_payload: usize,
    /// Stream messages per second, resends included; `None` sends as fast as the window allows.
    pub pace: Option<u32>,
    /// Window, buffers and RTO constants.
    pub reliable: reliable::Config,
    /// From connect to HandshakeComplete (the agent itself waits 15 s for our response).
    pub handshake_timeout: Duration,
    /// WebSocket ping period, so middleboxes keep the connection and we notice a dead one.
    pub ping_interval: Duration,
    /// No frame at all for this long means the WebSocket is dead: reconnect.
    pub dead_after: Duration,
    /// Keep trying ResumeSession + reconnect this long after a drop.
    pub reconnect_budget: Duration,
    /// First reconnect delay; doubles (with jitter) up to `reconnect_max_delay`.
    pub reconnect_initial_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// A message sent this often without an ack means the agent is gone.
    pub max_send_attempts: u32,
    /// smux NOP period while keepalive is on (mux sessions with open streams).
    pub keepalive_interval: Duration,
    /// How long to wait for the TerminateSession flag's ack before calling the API.
    pub terminate_wait: Duration,
    /// Agent output queued for the local side beyond this is not accepted (no ack, so the
    /// agent resends it later): bounded memory when the local reader is slow.
    pub inbound_queue_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            client_version: CLIENT_VERSION.to_owned(),
            max_payload: 1024,
            pace: None,
            reliable: reliable::Config::default(),
            handshake_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            dead_after: Duration::from_secs(120),
            reconnect_budget: Duration::from_secs(300),
            reconnect_initial_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(30),
            max_send_attempts: 300,
            keepalive_interval: Duration::from_secs(20),
            terminate_wait: Duration::from_secs(1),
            inbound_queue_bytes: 1 << 20,
        }
    }
}

/// Why a data channel could not be opened or why it ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DataChannelError {
    #[error("cannot open the SSM data channel")]
    Connect(#[source] WebSocketError),
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
    #[error("the SSM agent stopped acknowledging data ({0} sends of one message)")]
    AgentUnresponsive(u32),
    #[error("the SSM session was terminated by rds-auth-proxy")]
    Terminated,
}

impl DataChannelError {
    pub fn hint(&self) -> String {
        match self {
            DataChannelError::Connect(_) => {
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
    /// ConnectToPortError flags not yet matched to a failed stream (§5.3: they carry no id).
    connect_errors: AtomicU64,
    /// Send smux NOPs (mux mode, while streams are open).
    keepalive: AtomicBool,
    /// Successful reconnects, for logs and tests.
    reconnects: AtomicU64,
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

/// Connects to the session in `grant`, runs the handshake and starts the pump.
pub async fn open(
    grant: StreamGrant,
    config: Arc<Config>,
    connector: Arc<dyn Connector>,
    control: Arc<dyn ControlPlane>,
) -> Result<Opened, DataChannelError> {
    let client_id = Uuid::new_v4();
    let mut ws = connector
        .connect(&grant.stream_url)
        .await
        .map_err(DataChannelError::Connect)?;
    send_open(&mut ws, &grant.token, client_id, &config.client_version)
        .await
        .map_err(DataChannelError::Connect)?;
    tracing::debug!(session = %grant.session_id, url = redact_url(&grant.stream_url), "data channel connected");

    let (local, remote) = tokio::io::duplex(64 * 1024);
    let (local_rx, mut local_tx) = tokio::io::split(remote);
    let (inbound_tx, mut inbound_rx) = mpsc::unbounded_channel::<Bytes>();
    let inbound_bytes = Arc::new(AtomicUsize::new(0));
    let inbound_drained = Arc::new(tokio::sync::Notify::new());
    {
        let inbound_bytes = inbound_bytes.clone();
        let inbound_drained = inbound_drained.clone();
        tokio::spawn(async move {
            while let Some(chunk) = inbound_rx.recv().await {
                let len = chunk.len();
                let ok = local_tx.write_all(&chunk).await.is_ok();
                inbound_bytes.fetch_sub(len, Ordering::Relaxed);
                inbound_drained.notify_one();
                if !ok {
                    break;
                }
            }
            let _ = local_tx.shutdown().await;
        });
    }

    let (ended, _) = watch::channel(None);
    let shared = Arc::new(Shared {
        ended,
        connect_errors: AtomicU64::new(0),
        keepalive: AtomicBool::new(false),
        reconnects: AtomicU64::new(0),
    });
    let (commands, command_rx) = mpsc::channel(4);
    let (ready_tx, ready_rx) = oneshot::channel();
    let now = Instant::now();
    let pump = Pump {
        session_id: grant.session_id.clone(),
        client_id,
        url: grant.stream_url.clone(),
        ws,
        connector,
        control: control.clone(),
        out: Outgoing::new(config.reliable.clone()),
        inc: Incoming::new(&config.reliable),
        local_rx,
        local_eof: false,
        inbound_tx,
        inbound_bytes,
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
        last_data_tx: now,
        smux: FrameTracker::default(),
        pacer: Pacer::new(config.pace, now),
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

/// Sends the OpenDataChannel text frame that authenticates us to the gateway.
async fn send_open(
    ws: &mut WsStream,
    token: &StreamToken,
    client_id: Uuid,
    client_version: &str,
) -> Result<(), WebSocketError> {
    let open = OpenDataChannelInput::new(token.expose().to_owned(), client_id, client_version);
    // Serialising five strings cannot fail; an empty frame would be refused by the gateway.
    let json = open.to_json().unwrap_or_default();
    ws.send(Message::text(json))
        .await
        .map_err(|source| WebSocketError::Handshake {
            host: "the SSM gateway".into(),
            source: Arc::new(source),
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

    /// Turns smux NOP keepalives on or off (mux mode only: NOPs are smux frames).
    pub fn set_keepalive(&self, on: bool) {
        self.shared.keepalive.store(on, Ordering::Relaxed);
    }

    /// Consumes one unmatched ConnectToPortError, if any arrived.
    pub fn take_connect_error(&self) -> bool {
        self.shared
            .connect_errors
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Reconnects so far.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Orderly end (§5.6): TerminateSession flag, a short wait for its ack, then the
    /// TerminateSession API (always: it is idempotent and avoids orphaned sessions), then close.
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

async fn terminate_api(control: &dyn ControlPlane, session_id: &str) {
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

/// Tracks smux frame boundaries in the bytes we send, so a NOP is only ever inserted between
/// two frames, never inside one.
#[derive(Debug, Default)]
struct FrameTracker {
    /// Header bytes of the current frame seen so far (0..8).
    header_len: usize,
    header: [u8; 8],
    /// Data bytes of the current frame still to come.
    remaining: usize,
}

impl FrameTracker {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (8 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 8 {
                self.remaining = usize::from(u16::from_le_bytes([self.header[2], self.header[3]]));
                self.header_len = 0;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }
}

/// Token bucket for stream messages: bursts of a tenth of a second, then `rate` per second.
#[derive(Debug)]
struct Pacer {
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    fn new(rate: Option<u32>, now: Instant) -> Self {
        let rate = rate.filter(|r| *r > 0).map(f64::from);
        Pacer {
            tokens: rate.map(|r| (r / 10.0).max(1.0)).unwrap_or(0.0),
            rate,
            last: now,
        }
    }

    /// Waits until one message may be sent.
    async fn take(&mut self) {
        let Some(rate) = self.rate else { return };
        let burst = (rate / 10.0).max(1.0);
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

enum HandshakeState {
    Waiting {
        ready: Option<oneshot::Sender<Result<HandshakeInfo, DataChannelError>>>,
        /// Set when the request arrived and we accepted it.
        agent_version: Option<(String, PortProperties)>,
    },
    Complete,
}

/// Everything one data channel owns; see the module docs.
struct Pump {
    session_id: String,
    /// Same on every reconnect, so the gateway knows it is us again.
    client_id: Uuid,
    /// Current StreamUrl (ResumeSession may hand out a new one).
    url: String,
    ws: WsStream,
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
    inbound_bytes: Arc<AtomicUsize>,
    /// Signalled whenever the local side consumed queued agent output.
    inbound_drained: Arc<tokio::sync::Notify>,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    /// A Terminate that arrived while reconnecting; answered when the pump stops.
    pending_terminate: Option<oneshot::Sender<()>>,
    /// A Terminate already carried out; answered once `ended` is set.
    terminated: Option<oneshot::Sender<()>>,
    handshake: HandshakeState,
    /// Set when a WebSocket write failed; the loop then reconnects.
    ws_broken: Option<String>,
    /// Last frame of any kind from the gateway.
    last_rx: Instant,
    /// Last Output we sent (keepalive only fills silence).
    last_data_tx: Instant,
    smux: FrameTracker,
    pacer: Pacer,
}

impl Pump {
    async fn run(mut self) {
        let reason = match self.serve().await {
            Ok(()) => DataChannelError::Terminated,
            Err(e) => e,
        };
        match &reason {
            DataChannelError::Terminated => {
                tracing::debug!(session = %self.session_id, "data channel closed")
            }
            other => {
                tracing::warn!(session = %self.session_id, reason = %other, "SSM session ended")
            }
        }
        if let HandshakeState::Waiting {
            ready: Some(ready), ..
        } = std::mem::replace(&mut self.handshake, HandshakeState::Complete)
        {
            let _ = ready.send(Err(reason.clone()));
        }
        self.shared.ended.send_replace(Some(reason));
        if let Some(done) = self.pending_terminate.take() {
            terminate_api(&*self.control, &self.session_id).await;
            let _ = done.send(());
        }
        if let Some(done) = self.terminated.take() {
            let _ = done.send(());
        }
    }

    fn handshake_complete(&self) -> bool {
        matches!(self.handshake, HandshakeState::Complete)
    }

    /// The main loop; returns when the session is over.
    async fn serve(&mut self) -> Result<(), DataChannelError> {
        let mut buf = vec![0u8; self.config.max_payload.max(1)];
        let start = Instant::now();
        let mut ping =
            tokio::time::interval_at(start + self.config.ping_interval, self.config.ping_interval);
        let keepalive_period = self.config.keepalive_interval;
        let mut keepalive = tokio::time::interval_at(start + keepalive_period, keepalive_period);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(cause) = self.ws_broken.take() {
                self.reconnect(cause).await?;
            }
            let can_read_local =
                self.handshake_complete() && !self.local_eof && self.out.has_room();
            let resend_at = self.out.next_resend_at();
            // Back-pressure: while the local side has a full queue of agent output, stop
            // reading the WebSocket (TCP pushes back to the agent) instead of dropping data.
            let inbound_full =
                self.inbound_bytes.load(Ordering::Relaxed) > self.config.inbound_queue_bytes;
            if inbound_full {
                // Not hearing from the gateway is our choice here, not a sign it died.
                self.last_rx = Instant::now();
            }
            let dead_at = self.last_rx + self.config.dead_after;
            tokio::select! {
                () = self.inbound_drained.notified(), if inbound_full => {}
                frame = self.ws.next(), if !inbound_full => match frame {
                    Some(Ok(message)) => {
                        self.last_rx = Instant::now();
                        self.on_ws_message(message).await?;
                    }
                    Some(Err(e)) => self.ws_broken = Some(format!("WebSocket error: {e}")),
                    None => self.ws_broken = Some("WebSocket closed".into()),
                },
                read = self.local_rx.read(&mut buf), if can_read_local => match read {
                    Ok(0) | Err(_) => self.local_eof = true,
                    Ok(n) => {
                        self.smux.feed(&buf[..n]);
                        self.send_stream(PayloadType::Output, Bytes::copy_from_slice(&buf[..n])).await?;
                        self.last_data_tx = Instant::now();
                    }
                },
                () = sleep_opt(resend_at) => self.resend().await?,
                _ = ping.tick() => {
                    self.send_ws(Message::Ping(Bytes::from_static(b"keepalive"))).await;
                }
                () = sleep_until(dead_at) => {
                    self.ws_broken = Some(format!(
                        "no frame from the gateway for {} s", self.config.dead_after.as_secs()
                    ));
                }
                _ = keepalive.tick() => self.keepalive().await?,
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

    /// Writes one WebSocket message; a failure marks the connection for reconnect (stream
    /// data stays in the window and is replayed).
    async fn send_ws(&mut self, message: Message) {
        if self.ws_broken.is_some() {
            return;
        }
        if let Err(e) = self.ws.send(message).await {
            self.ws_broken = Some(format!("WebSocket write failed: {e}"));
        }
    }

    /// Numbers, keeps and sends one stream message (after the pacer allows it).
    async fn send_stream(
        &mut self,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Result<i64, DataChannelError> {
        let queued = self
            .out
            .push(Instant::now(), payload_type, payload)
            .map_err(|e| DataChannelError::HandshakeInvalid(e.to_string()))?;
        self.pacer.take().await;
        self.send_ws(Message::Binary(queued.frame)).await;
        Ok(queued.sequence_number)
    }

    async fn resend(&mut self) -> Result<(), DataChannelError> {
        if self.ws_broken.is_some() {
            return Ok(());
        }
        let attempts = self.out.max_attempts();
        if attempts > self.config.max_send_attempts {
            return Err(DataChannelError::AgentUnresponsive(attempts));
        }
        for frame in self.out.due_for_resend(Instant::now()) {
            self.pacer.take().await;
            self.send_ws(Message::Binary(frame)).await;
        }
        Ok(())
    }

    async fn keepalive(&mut self) -> Result<(), DataChannelError> {
        let idle = self.last_data_tx.elapsed() >= self.config.keepalive_interval / 2;
        if self.shared.keepalive.load(Ordering::Relaxed)
            && self.handshake_complete()
            && self.smux.at_boundary()
            && self.out.has_room()
            && idle
        {
            self.send_stream(PayloadType::Output, Bytes::from_static(&SMUX_NOP))
                .await?;
            self.last_data_tx = Instant::now();
        }
        Ok(())
    }

    async fn on_ws_message(&mut self, message: Message) -> Result<(), DataChannelError> {
        match message {
            Message::Binary(frame) => match ClientMessage::decode_bytes(&frame) {
                Ok(msg) => self.on_client_message(msg).await,
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
            // tungstenite queues the pong itself and sends it with our next write or read.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    async fn on_client_message(&mut self, msg: ClientMessage) -> Result<(), DataChannelError> {
        match msg.message_type.as_str() {
            message_type::ACKNOWLEDGE => {
                match msg.json_payload::<AcknowledgeContent>("acknowledge") {
                    Ok(ack) => {
                        self.out
                            .on_ack(ack.acknowledged_message_sequence_number, Instant::now());
                    }
                    Err(e) => tracing::debug!(error = %e, "ignoring a malformed acknowledge"),
                }
                Ok(())
            }
            message_type::OUTPUT_STREAM_DATA => self.on_stream_data(msg).await,
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

    async fn on_stream_data(&mut self, msg: ClientMessage) -> Result<(), DataChannelError> {
        let seq = msg.sequence_number;
        let ack = ClientMessage::ack_for(&msg);
        let delivery = self.inc.on_message(seq, msg);
        if delivery.should_ack() {
            if let Ok(ack) = ack {
                self.send_ws(Message::Binary(ack.encode())).await;
            }
        }
        if let reliable::Delivery::Deliver(messages) = delivery {
            for m in messages {
                self.process(m).await?;
            }
        }
        Ok(())
    }

    /// Acts on one in-order stream message from the agent.
    async fn process(&mut self, msg: ClientMessage) -> Result<(), DataChannelError> {
        match msg.payload_type {
            PayloadType::Output => {
                if !self.handshake_complete() {
                    tracing::debug!(session = %self.session_id, "dropping output before the handshake completed");
                    return Ok(());
                }
                if msg.payload.is_empty() {
                    return Ok(());
                }
                self.inbound_bytes
                    .fetch_add(msg.payload.len(), Ordering::Relaxed);
                // The receiver only goes away with the local pipe; then nobody needs the bytes.
                let _ = self.inbound_tx.send(msg.payload);
                Ok(())
            }
            PayloadType::HandshakeRequest => self.on_handshake_request(&msg).await,
            PayloadType::HandshakeComplete => self.on_handshake_complete(&msg),
            PayloadType::EncChallengeRequest => Err(DataChannelError::HandshakeRefused(vec![
                handshake::KMS_REFUSAL.to_owned(),
            ])),
            PayloadType::Flag => {
                match FlagPayload::decode(&msg.payload) {
                    Ok(FlagPayload::ConnectToPortError) => {
                        tracing::warn!(session = %self.session_id, "the managed node could not connect to the target port");
                        self.shared.connect_errors.fetch_add(1, Ordering::AcqRel);
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

    async fn on_handshake_request(&mut self, msg: &ClientMessage) -> Result<(), DataChannelError> {
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
        self.send_stream(PayloadType::HandshakeResponse, payload)
            .await?;
        match outcome {
            Outcome::Accepted(properties) => {
                tracing::debug!(
                    session = %self.session_id,
                    agent_version = %request.agent_version,
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
                tracing::info!(session = %self.session_id, message = %complete.customer_message, "SSM agent says");
            }
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(HandshakeInfo {
                agent_version: version,
                properties,
            }));
        }
        self.handshake = HandshakeState::Complete;
        Ok(())
    }

    /// ResumeSession + reconnect with backoff, for as long as the budget allows and the
    /// service keeps handing out tokens.
    async fn reconnect(&mut self, cause: String) -> Result<(), DataChannelError> {
        tracing::warn!(session = %self.session_id, %cause, "SSM data channel lost; resuming the session");
        let started = Instant::now();
        let mut delay = self.config.reconnect_initial_delay;
        loop {
            let last = match self.try_resume().await {
                Ok(()) => {
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
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
                command = self.commands.recv() => match command {
                    Some(Command::Terminate(done)) => {
                        self.pending_terminate = Some(done);
                        return Err(DataChannelError::Terminated);
                    }
                    None => return Err(DataChannelError::Terminated),
                },
            }
            delay = (delay * 2).min(self.config.reconnect_max_delay);
        }
    }

    /// One resume attempt. `Err(Ok(text))`: worth retrying; `Err(Err(e))`: the session is over.
    async fn try_resume(&mut self) -> Result<(), Result<String, DataChannelError>> {
        let grant = match self.control.resume_session(&self.session_id).await {
            Ok(Some(grant)) => grant,
            Ok(None) => {
                return Err(Err(DataChannelError::ResumeRefused {
                    session_id: self.session_id.clone(),
                }))
            }
            Err(e) if e.is_transient() => return Err(Ok(e.to_string())),
            Err(e) => return Err(Err(DataChannelError::Resume(e))),
        };
        if !grant.stream_url.is_empty() {
            self.url = grant.stream_url.clone();
        }
        let mut ws = self
            .connector
            .connect(&self.url)
            .await
            .map_err(|e| Ok(e.to_string()))?;
        send_open(
            &mut ws,
            &grant.token,
            self.client_id,
            &self.config.client_version,
        )
        .await
        .map_err(|e| Ok(e.to_string()))?;
        let old = std::mem::replace(&mut self.ws, ws);
        drop(old);
        self.last_rx = Instant::now();
        for frame in self.out.replay(Instant::now()) {
            self.pacer.take().await;
            self.send_ws(Message::Binary(frame)).await;
        }
        match self.ws_broken.take() {
            Some(e) => Err(Ok(e)),
            None => Ok(()),
        }
    }

    /// Flag, brief wait for its ack or channel_closed, TerminateSession API, close.
    async fn terminate(&mut self) {
        let flag_seq =
            if self.handshake_complete() && self.out.has_room() && self.ws_broken.is_none() {
                self.send_stream(PayloadType::Flag, FlagPayload::TerminateSession.encode())
                    .await
                    .ok()
            } else {
                None
            };
        if let Some(seq) = flag_seq {
            let deadline = Instant::now() + self.config.terminate_wait;
            loop {
                if self.ws_broken.is_some() {
                    break;
                }
                tokio::select! {
                    () = sleep_until(deadline) => break,
                    frame = self.ws.next() => match frame {
                        Some(Ok(Message::Binary(frame))) => match ClientMessage::decode_bytes(&frame) {
                            Ok(msg) if msg.message_type == message_type::CHANNEL_CLOSED => break,
                            Ok(msg) if msg.message_type == message_type::ACKNOWLEDGE => {
                                let acked = msg
                                    .json_payload::<AcknowledgeContent>("acknowledge")
                                    .is_ok_and(|a| a.acknowledged_message_sequence_number == seq);
                                if acked { break; }
                            }
                            _ => {}
                        },
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
        terminate_api(&*self.control, &self.session_id).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
