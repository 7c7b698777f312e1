//! One simulated session as MGS plus the SSM agent run it (`ssm-protocol.md` §3–§5): the
//! HandshakeRequest/Complete exchange, per-message acks, reordering and resends over the
//! `reliable` state machines, mode selection from the client's version, the Flag messages,
//! the idle timeout and the closing `channel_closed`. The state outlives WebSocket
//! connections, so a client that resumes continues with the same sequence numbers.
//!
//! Here: the session task's state and loop, acks, resends and the port plugin's data; the
//! handshake and mode choice in [`opening`], how a session ends in [`closing`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use super::flights::SessionFlights;
use super::port::{PortEvent, PortHandle};
use super::{bump, Fault, Inner, SessionInfo};
use rds_auth_proxy_protocol::ssm::message::{
    header_flags, message_type, AcknowledgeContent, ClientMessage, FlagPayload, PayloadType,
};
use rds_auth_proxy_protocol::ssm::reliable::{self, Delivery, Incoming, Outgoing};

mod closing;
mod opening;

use closing::End;

/// The agent's `handshakeTimeout`: how long it waits for the HandshakeResponse.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The service's idle-timeout close reason (agent issue #261).
pub(super) const IDLE_TIMEOUT_TEXT: &str =
    "Your session timed out due to inactivity and has been terminated.";

/// Events queued from connections and the API to the session task. Bounded, so a client that
/// sends faster than the agent processes is slowed down by TCP instead of growing memory.
const EVENT_QUEUE: usize = 256;

/// The agent's resend scheduler period (`ResendSleepInterval`).
const RESEND_TICK: Duration = Duration::from_millis(100);

/// Messages a held-back (reordered) frame may wait before it is released anyway.
const HOLD_MAX: Duration = Duration::from_millis(20);

/// Unacked agent messages kept for resending. The agent keeps 100 000; 10 000 (≈10 MiB at 1 KiB)
/// is far beyond any loopback RTT and keeps a stuck client from pinning 100 MiB.
const OUTGOING_WINDOW: usize = 10_000;

/// Out-of-order client messages buffered (the agent allows 100 000; see [`OUTGOING_WINDOW`]).
const INCOMING_CAPACITY: usize = 10_000;

/// Client Output bytes queued towards the target before the agent stops acking new Output
/// (the agent's `ErrHandlerNotReady`: no ack, the client resends later).
const PORT_BACKLOG_LIMIT: usize = 4 * 1024 * 1024;

/// Free slots the connection's send queue needs before more target data is read; below it the
/// agent pauses reading, as it does while MGS has paused publication.
const WS_QUEUE_RESERVE: usize = 64;

/// An smux NOP frame (version 1, cmd 3, length 0, stream 0), alone in one Output message: what
/// a client's smux keepalive looks like on a quiet session.
const SMUX_NOP: [u8; 8] = [1, 3, 0, 0, 0, 0, 0, 0];

/// Input to a session task.
pub(super) enum Event {
    /// A WebSocket presented a valid token and now carries the session.
    Attach {
        /// Identifies the connection in later events.
        conn: u64,
        /// Where frames for this connection go.
        out: mpsc::Sender<WsOut>,
        /// ClientId from OpenDataChannel, if any.
        client_id: Option<String>,
    },
    /// One binary frame from a connection that presented a valid token.
    Frame { frame: Bytes },
    /// A connection is gone.
    Detach { conn: u64 },
    /// The TerminateSession API was called.
    Terminate,
}

/// What a session asks its connection to do.
#[derive(Debug)]
pub(super) enum WsOut {
    /// Send one binary frame.
    Binary(Bytes),
    /// Send one binary frame replayed after a reconnect.
    Replay(Bytes),
    /// Send a close frame and stop.
    Close { code: u16, reason: &'static str },
    /// Reset the TCP connection without a close frame (the kill knob).
    Kill,
}

/// The part of a session that the API and connections share with its task.
pub(super) struct SessionShared {
    /// SessionId.
    pub(super) id: String,
    /// Tokens issued and not yet presented. Single use: a token opens one connection.
    tokens: Mutex<Vec<String>>,
    /// Into the session task.
    events: mpsc::Sender<Event>,
    /// What tests may inspect.
    info: Mutex<SessionInfo>,
    /// True once the session is over (set after its `channel_closed` was queued).
    ended: watch::Sender<bool>,
}

impl SessionShared {
    fn tokens(&self) -> MutexGuard<'_, Vec<String>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info_mut(&self) -> MutexGuard<'_, SessionInfo> {
        self.info.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn info(&self) -> SessionInfo {
        self.info_mut().clone()
    }

    pub(super) fn is_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// A fresh stream token, or `None` once the session is over.
    pub(super) fn issue_token(&self) -> Option<String> {
        if self.is_ended() {
            return None;
        }
        let token = new_token();
        self.tokens().push(token.clone());
        Some(token)
    }

    /// Consumes `token` if it was issued for this session and not used yet.
    pub(super) fn take_token(&self, token: &str) -> bool {
        let mut tokens = self.tokens();
        match tokens.iter().position(|t| t == token) {
            Some(i) => {
                tokens.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub(super) fn events(&self) -> mpsc::Sender<Event> {
        self.events.clone()
    }

    /// Ends the session (TerminateSession API) and waits briefly until it has, so callers see
    /// the effect as soon as the API call returns.
    pub(super) async fn terminate(&self) {
        let mut ended = self.ended.subscribe();
        if *ended.borrow() {
            return;
        }
        if self.events.send(Event::Terminate).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), ended.wait_for(|e| *e)).await;
    }
}

/// A random stream token: long and opaque like the service's.
fn new_token() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 160)
}

/// Creates a session and starts its agent. The HandshakeRequest is queued at once, so the
/// 15 s handshake timer runs from StartSession, as it does on AWS.
pub(super) fn start(
    inner: &Arc<Inner>,
    id: String,
    properties: serde_json::Value,
) -> Arc<SessionShared> {
    let (events, rx) = mpsc::channel(EVENT_QUEUE);
    let shared = Arc::new(SessionShared {
        id,
        tokens: Mutex::default(),
        events,
        info: Mutex::default(),
        ended: watch::Sender::new(false),
    });
    inner.stats.session_opened();
    tokio::spawn(run(inner.clone(), shared.clone(), properties, rx));
    shared
}

async fn run(
    inner: Arc<Inner>,
    shared: Arc<SessionShared>,
    properties: serde_json::Value,
    mut events: mpsc::Receiver<Event>,
) {
    let mut agent = Agent::new(inner, shared, properties);
    let end = match agent.send_handshake_request_unless_held() {
        Ok(()) => agent.run(&mut events).await,
        Err(end) => end,
    };
    agent.finish(end).await;
}

/// Where the handshake is.
enum Phase {
    /// HandshakeRequest sent at this time; waiting for the response.
    AwaitingResponse { sent_at: Instant },
    /// HandshakeComplete sent; the port plugin runs.
    Complete,
}

/// The session task's state.
struct Agent {
    inner: Arc<Inner>,
    shared: Arc<SessionShared>,
    /// Document properties, sent in the handshake and used to dial.
    properties: serde_json::Value,
    /// The AgentVersion this session's HandshakeRequest announced; the mode follows from it.
    agent_version: String,
    /// Agent → client numbering, unacked frames and RTO.
    out: Outgoing,
    /// Client → agent ordering.
    inc: Incoming<ClientMessage>,
    /// The connection currently carrying the session.
    ws: Option<(u64, mpsc::Sender<WsOut>)>,
    /// New stream messages exchanged on that connection, for the kill knob.
    fresh_on_conn: u64,
    phase: Phase,
    /// The port plugin once the handshake is complete.
    port: Option<PortHandle>,
    /// Its output towards the client; `None` before it starts or after it finished.
    port_events: Option<mpsc::Receiver<PortEvent>>,
    /// Last stream data in either direction, for the idle timeout.
    last_activity: Instant,
    /// Pacing: no new Output before this.
    next_output_at: Instant,
    /// An outgoing frame held back by the reorder fault, and since when.
    held_out: Option<(Bytes, Instant)>,
    /// An incoming message held back by the reorder fault, and since when.
    held_in: Option<(ClientMessage, Instant)>,
    /// Whether the HandshakeRequest went out (the `hang_handshake` knob holds it back).
    handshake_sent: bool,
    /// When StartSession created the session: the handshake timeout runs from here.
    started: Instant,
    /// Last pass of the front-only resend scheduler (`resend_front_only`).
    last_resend_pass: Instant,
    /// When HandshakeComplete went out: the port plugin is not ready for the
    /// `early_input_window` after it.
    complete_sent_at: Option<Instant>,
    /// Round trips per target connection, once the port plugin runs.
    flights: Option<SessionFlights>,
    // --- Failure-branch state (the `faults` work). ---
    /// The extra action this session's HandshakeRequest asked for (`extra_handshake_action`).
    extra_action: Option<String>,
}

impl Agent {
    fn new(inner: Arc<Inner>, shared: Arc<SessionShared>, properties: serde_json::Value) -> Self {
        let config = reliable::Config {
            outgoing_window: OUTGOING_WINDOW,
            incoming_capacity: INCOMING_CAPACITY,
            ..reliable::Config::default()
        };
        let now = Instant::now();
        Self {
            inner,
            shared,
            properties,
            agent_version: String::new(),
            out: Outgoing::new(config.clone()),
            inc: Incoming::new(&config),
            ws: None,
            fresh_on_conn: 0,
            phase: Phase::AwaitingResponse { sent_at: now },
            port: None,
            port_events: None,
            last_activity: now,
            next_output_at: now,
            held_out: None,
            held_in: None,
            handshake_sent: false,
            started: now,
            last_resend_pass: now,
            complete_sent_at: None,
            flights: None,
            extra_action: None,
        }
    }

    async fn run(&mut self, events: &mut mpsc::Receiver<Event>) -> End {
        let mut shutdown = self.inner.shutdown.subscribe();
        let mut knobs = self.inner.knobs.subscribe();
        loop {
            if *shutdown.borrow_and_update() {
                return End::Stopped("The simulator is shutting down.".to_owned());
            }
            let now = Instant::now();
            let (idle_timeout, pacing) = self.inner.knobs.read(|o| (o.idle_timeout, o.pacing));
            let idle_at = idle_timeout.map(|t| self.last_activity + t);
            let handshake_at = match self.phase {
                Phase::AwaitingResponse { sent_at } => Some(sent_at + HANDSHAKE_TIMEOUT),
                Phase::Complete => None,
            };
            let resend_at = if self.ws.is_some() {
                let front_only = self.inner.knobs.read(|o| o.resend_front_only);
                self.out.next_resend_at().map(|at| {
                    if front_only {
                        at.max(self.last_resend_pass + RESEND_TICK)
                    } else {
                        at
                    }
                })
            } else {
                None
            };
            let held_at = [
                self.held_out.as_ref().map(|h| h.1),
                self.held_in.as_ref().map(|h| h.1),
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t + HOLD_MAX);
            let port_open = self.port_events.is_some() && self.out.has_room() && self.ws_has_room();
            let paced = port_open && pacing.is_some() && self.next_output_at > now;
            let wake_at = [
                idle_at,
                handshake_at,
                resend_at,
                held_at,
                paced.then_some(self.next_output_at),
            ]
            .into_iter()
            .flatten()
            .min();

            let result = tokio::select! {
                biased;
                _ = shutdown.changed() => continue,
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => Err(End::Stopped("The session's event queue closed.".to_owned())),
                },
                event = recv_port(&mut self.port_events), if port_open && !paced => match event {
                    Some(event) => self.on_port_event(event, pacing),
                    None => {
                        self.port_events = None;
                        Ok(())
                    }
                },
                _ = knobs.changed() => self.send_handshake_request_unless_held(),
                _ = sleep_until(wake_at.unwrap_or(now)), if wake_at.is_some() => {
                    self.on_timer(idle_at, handshake_at)
                }
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    fn ws_has_room(&self) -> bool {
        self.ws
            .as_ref()
            .is_some_and(|(_, tx)| tx.capacity() >= WS_QUEUE_RESERVE)
    }

    fn on_event(&mut self, event: Event) -> Result<(), End> {
        match event {
            Event::Attach {
                conn,
                out,
                client_id,
            } => {
                {
                    let mut info = self.shared.info_mut();
                    if info.client_id.is_none() {
                        info.client_id = client_id;
                    }
                }
                // A newer connection replaces the old one; dropping its sender closes it.
                self.ws = Some((conn, out));
                self.fresh_on_conn = 0;
                self.held_out = None;
                // Sequence numbers survive reconnects; whatever the client has not acked is
                // replayed right away (§4.6).
                for frame in self.out.replay(Instant::now()) {
                    self.transmit(frame, true);
                }
                Ok(())
            }
            Event::Detach { conn } => {
                if self.ws.as_ref().is_some_and(|(c, _)| *c == conn) {
                    self.ws = None;
                    self.held_out = None;
                }
                Ok(())
            }
            // Processed even when that connection has died or been replaced since: MGS
            // received the frame and relays it to the agent over its own leg; only the acks
            // for it may be lost, and the client's resends recover those.
            Event::Frame { frame } => self.on_frame(&frame),
            Event::Terminate => Err(End::TerminateApi),
        }
    }

    fn on_frame(&mut self, frame: &Bytes) -> Result<(), End> {
        let message = match ClientMessage::decode_bytes(frame) {
            Ok(message) => message,
            Err(e) => {
                // The agent logs and drops frames it cannot parse; so do we.
                tracing::debug!(session = %self.shared.id, error = %e, "simulated agent: bad frame dropped");
                return Ok(());
            }
        };
        match message.message_type.as_str() {
            message_type::ACKNOWLEDGE => {
                match message.json_payload::<AcknowledgeContent>("acknowledge") {
                    Ok(ack) => {
                        let seq = ack.acknowledged_message_sequence_number;
                        self.out.on_ack(seq, Instant::now());
                        if let Some(flights) = &mut self.flights {
                            flights.on_ack(seq);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(session = %self.shared.id, error = %e, "simulated agent: bad ack dropped");
                    }
                }
                Ok(())
            }
            message_type::INPUT_STREAM_DATA => match self.inner.roll_fault() {
                Fault::Drop => Ok(()),
                Fault::Duplicate => {
                    self.on_stream(message.clone())?;
                    self.on_stream(message)?;
                    self.release_held_in()
                }
                Fault::Reorder if self.held_in.is_none() => {
                    self.held_in = Some((message, Instant::now()));
                    Ok(())
                }
                Fault::Reorder | Fault::None => {
                    self.on_stream(message)?;
                    self.release_held_in()
                }
            },
            other => {
                tracing::debug!(session = %self.shared.id, message_type = other, "simulated agent: message ignored");
                Ok(())
            }
        }
    }

    fn release_held_in(&mut self) -> Result<(), End> {
        match self.held_in.take() {
            Some((message, _)) => self.on_stream(message),
            None => Ok(()),
        }
    }

    /// One `input_stream_data`, after the fault injection: ack, order, deliver (§4.2).
    fn on_stream(&mut self, message: ClientMessage) -> Result<(), End> {
        let seq = message.sequence_number;
        if seq == self.inc.expected() && self.in_early_input_window(&message) {
            // The port plugin is not ready yet (§6a): ErrHandlerNotReady, as below.
            bump(&self.inner.stats.early_input_dropped);
            tracing::debug!(session = %self.shared.id, seq, "simulated agent: early input dropped unacked");
            return Ok(());
        }
        if seq == self.inc.expected() && !self.ready_for(&message) {
            // ErrHandlerNotReady: neither acked nor consumed, so the client resends it later.
            return Ok(());
        }
        let delivery = self.inc.on_message(seq, message.clone());
        if delivery.should_ack() {
            if self.inner.knobs.read(|o| o.hold_acks) {
                bump(&self.inner.stats.acks_held);
            } else {
                self.send_ack(&message);
            }
        }
        match delivery {
            Delivery::Deliver(ready) => {
                for message in ready {
                    self.count_fresh();
                    self.deliver(message)?;
                }
            }
            Delivery::Duplicate => bump(&self.inner.stats.duplicates_reacked),
            Delivery::Buffered | Delivery::Dropped => {}
        }
        Ok(())
    }

    /// Whether `message` is client Output arriving while the port plugin is still getting
    /// ready after HandshakeComplete (the `early_input_window` knob).
    fn in_early_input_window(&self, message: &ClientMessage) -> bool {
        let Some(sent_at) = self.complete_sent_at else {
            return false;
        };
        message.payload_type == PayloadType::Output
            && self
                .inner
                .knobs
                .read(|o| o.early_input_window)
                .is_some_and(|window| Instant::now() < sent_at + window)
    }

    fn ready_for(&self, message: &ClientMessage) -> bool {
        message.payload_type != PayloadType::Output
            || self
                .port
                .as_ref()
                .is_none_or(|port| port.backlog() < PORT_BACKLOG_LIMIT)
    }

    fn send_ack(&mut self, message: &ClientMessage) {
        match ClientMessage::ack_for(message) {
            Ok(ack) => self.send_ws(WsOut::Binary(ack.encode())),
            Err(e) => {
                tracing::warn!(session = %self.shared.id, error = %e, "simulated agent: cannot build ack");
            }
        }
    }

    /// A client message in sequence.
    fn deliver(&mut self, message: ClientMessage) -> Result<(), End> {
        self.last_activity = Instant::now();
        match (&self.phase, message.payload_type) {
            (Phase::AwaitingResponse { sent_at }, PayloadType::HandshakeResponse) => {
                let elapsed = sent_at.elapsed();
                self.complete_handshake(&message, elapsed)
            }
            (Phase::AwaitingResponse { .. }, other) => {
                // The agent acks and silently drops data that arrives before the handshake is
                // complete (§3.1); the ack was sent already.
                tracing::debug!(session = %self.shared.id, payload_type = ?other, "simulated agent: data before handshake dropped");
                Ok(())
            }
            (Phase::Complete, PayloadType::Output) => {
                if message.payload[..] == SMUX_NOP {
                    bump(&self.inner.stats.client_keepalives);
                }
                if let Some(flights) = &mut self.flights {
                    flights.on_client_output(&message.payload);
                }
                if let Some(port) = &self.port {
                    port.write(message.payload);
                }
                Ok(())
            }
            (Phase::Complete, PayloadType::Flag) => match FlagPayload::decode(&message.payload) {
                Ok(FlagPayload::TerminateSession) => {
                    bump(&self.inner.stats.terminate_flags);
                    Err(End::TerminateFlag)
                }
                Ok(FlagPayload::DisconnectToPort) => {
                    if let Some(flights) = &mut self.flights {
                        flights.on_disconnect();
                    }
                    if let Some(port) = &self.port {
                        port.disconnect();
                    }
                    Ok(())
                }
                Ok(other) => {
                    tracing::debug!(session = %self.shared.id, flag = ?other, "simulated agent: flag ignored");
                    Ok(())
                }
                Err(e) => {
                    tracing::debug!(session = %self.shared.id, error = %e, "simulated agent: bad flag ignored");
                    Ok(())
                }
            },
            (Phase::Complete, other) => {
                tracing::debug!(session = %self.shared.id, payload_type = ?other, "simulated agent: payload ignored");
                Ok(())
            }
        }
    }

    fn on_port_event(&mut self, event: PortEvent, pacing: Option<Duration>) -> Result<(), End> {
        match event {
            PortEvent::Output(data) => {
                let payload = self.flights.is_some().then(|| data.clone());
                let seq = self.push(PayloadType::Output, data)?;
                if let (Some(flights), Some(payload)) = (&mut self.flights, payload) {
                    flights.on_agent_output(seq, &payload);
                }
                if let Some(pacing) = pacing {
                    // From the planned time, not from now: timers fire up to a millisecond
                    // late, and "now + 1 ms" would pace at ~2 ms per message, half AWS's rate.
                    self.next_output_at = (self.next_output_at + pacing).max(Instant::now());
                }
                Ok(())
            }
            PortEvent::ConnectError => {
                self.push(PayloadType::Flag, FlagPayload::ConnectToPortError.encode())
                    .map(drop)
            }
            PortEvent::Failed(text) => Err(End::PortFailed(text)),
        }
    }

    fn on_timer(
        &mut self,
        idle_at: Option<Instant>,
        handshake_at: Option<Instant>,
    ) -> Result<(), End> {
        let now = Instant::now();
        if idle_at.is_some_and(|t| t <= now) {
            bump(&self.inner.stats.idle_timeouts);
            return Err(End::IdleTimeout);
        }
        if handshake_at.is_some_and(|t| t <= now) {
            bump(&self.inner.stats.handshake_timeouts);
            return Err(End::HandshakeTimeout);
        }
        if self
            .held_out
            .as_ref()
            .is_some_and(|h| h.1 + HOLD_MAX <= now)
        {
            if let Some((frame, _)) = self.held_out.take() {
                self.send_ws(WsOut::Binary(frame));
            }
        }
        if self.held_in.as_ref().is_some_and(|h| h.1 + HOLD_MAX <= now) {
            self.release_held_in()?;
        }
        if let Some((_, tx)) = &self.ws {
            // Never resend more than the WebSocket queue can take: overflowing it would lose
            // the resends too, and the next tick would resend even more (congestion collapse).
            let room = tx.capacity().saturating_sub(WS_QUEUE_RESERVE);
            let due = if !self.inner.knobs.read(|o| o.resend_front_only) {
                self.out.due_for_resend_up_to(now, room)
            } else if now >= self.last_resend_pass + RESEND_TICK && room > 0 {
                // The agent's scheduler: every 100 ms, the oldest unacked message if overdue.
                self.last_resend_pass = now;
                self.out.resend_front_if_due(now).into_iter().collect()
            } else {
                Vec::new()
            };
            for frame in due {
                bump(&self.inner.stats.resends);
                self.transmit(frame, false);
            }
        }
        Ok(())
    }

    /// Numbers, keeps and sends one `output_stream_data` (SYN on seq 0, as the agent sets it);
    /// returns its sequence number.
    fn push(&mut self, payload_type: PayloadType, payload: Bytes) -> Result<i64, End> {
        let now = Instant::now();
        let queued = self
            .out
            .push_with(now, |seq| {
                let flags = if seq == 0 { header_flags::SYN } else { 0 };
                ClientMessage::new(
                    message_type::OUTPUT_STREAM_DATA,
                    seq,
                    flags,
                    payload_type,
                    payload,
                )
                .encode()
            })
            .map_err(|e| End::Stopped(format!("simulated agent: {e}")))?;
        self.last_activity = now;
        self.transmit(queued.frame, false);
        self.count_fresh();
        Ok(queued.sequence_number)
    }

    /// Counts one new stream message (either direction) on the current connection and kills
    /// the connection once the `kill_ws_after_messages` knob's limit is reached. Acks, resends,
    /// replays and duplicates do not count, so every connection moves the transfer forward
    /// by that many messages before it dies, however much is replayed after a resume.
    fn count_fresh(&mut self) {
        if self.ws.is_none() {
            return;
        }
        self.fresh_on_conn += 1;
        let limit = self.inner.knobs.read(|o| o.kill_ws_after_messages);
        if limit.is_some_and(|n| self.fresh_on_conn >= n) {
            bump(&self.inner.stats.ws_killed);
            self.send_ws(WsOut::Kill);
            self.ws = None;
            self.held_out = None;
        }
    }

    /// Sends a stream-data frame through the fault injector. Without a connection nothing is
    /// sent: the frame stays unacked and is replayed on the next attach.
    /// `replay` marks the burst sent right after a reconnect.
    fn transmit(&mut self, frame: Bytes, replay: bool) {
        if self.ws.is_none() {
            return;
        }
        let wrap = |frame| {
            if replay {
                WsOut::Replay(frame)
            } else {
                WsOut::Binary(frame)
            }
        };
        match self.inner.roll_fault() {
            Fault::Drop => {}
            Fault::Duplicate => {
                self.send_ws(wrap(frame.clone()));
                self.send_ws(wrap(frame));
            }
            Fault::Reorder if self.held_out.is_none() => {
                self.held_out = Some((frame, Instant::now()));
                return;
            }
            Fault::Reorder | Fault::None => self.send_ws(wrap(frame)),
        }
        if let Some((held, _)) = self.held_out.take() {
            self.send_ws(WsOut::Binary(held));
        }
    }

    fn send_ws(&mut self, out: WsOut) {
        let Some((_, tx)) = &self.ws else { return };
        match tx.try_send(out) {
            Ok(()) => {}
            // A full queue loses the frame like a congested network would; acks and resends
            // recover it. Fresh data is not read while the queue is this full.
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::trace!(session = %self.shared.id, "simulated agent: send queue full, frame lost");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.ws = None,
        }
    }

}

async fn recv_port(rx: &mut Option<mpsc::Receiver<PortEvent>>) -> Option<PortEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
