//! The protocol core (the pump): handshake, acks, in-order delivery, the unacked window and
//! its resends, pacing, liveness and the orderly end. It owns the state and never awaits a
//! socket; the [`Link`]'s tasks do the reading and writing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, DuplexStream, ReadHalf};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::link::{Link, LinkEvent, WRITER_RESERVE};
use super::pacer::Pacer;
use super::{
    terminate_api, Command, Config, DataChannelError, HandshakeInfo, Shared, BASIC_CLIENT_VERSION,
    CONNECT_ERROR_LOG,
};
use crate::tunnel::ssm::api::ControlPlane;
use crate::tunnel::ssm::handshake::{
    self, HandshakeCompletePayload, HandshakeRequestPayload, Outcome, PortProperties,
};
use crate::tunnel::ssm::message::{
    message_type, AcknowledgeContent, ChannelClosed, ClientMessage, FlagPayload, PayloadType,
};
use crate::tunnel::ssm::reliable::{self, Incoming, Outgoing};
use crate::tunnel::ssm::sleep_opt;
use crate::tunnel::ssm::websocket::Connector;

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
pub(super) const EARLY_MESSAGES: u32 = 8;

pub(super) enum HandshakeState {
    Waiting {
        ready: Option<oneshot::Sender<Result<HandshakeInfo, DataChannelError>>>,
        /// Set when the request arrived and we accepted it.
        agent_version: Option<(String, PortProperties)>,
    },
    Complete,
}

/// The protocol core; see the module docs. Its handlers never await a socket: frames go to
/// the writer queue, which has room for acks whenever the core reads new local data.
pub(super) struct Pump {
    pub(super) session_id: String,
    /// Same on every reconnect, so the gateway knows it is us again.
    pub(super) client_id: Uuid,
    /// Current StreamUrl (ResumeSession may hand out a new one).
    pub(super) url: String,
    pub(super) link: Link,
    pub(super) connector: Arc<dyn Connector>,
    pub(super) control: Arc<dyn ControlPlane>,
    pub(super) config: Arc<Config>,
    pub(super) out: Outgoing,
    pub(super) inc: Incoming<ClientMessage>,
    /// Local bytes to send as Output.
    pub(super) local_rx: ReadHalf<DuplexStream>,
    pub(super) local_eof: bool,
    /// Agent output on its way to the local side (written by a helper task).
    pub(super) inbound_tx: mpsc::UnboundedSender<Bytes>,
    /// Signalled whenever the local side consumed queued agent output.
    pub(super) inbound_drained: Arc<Notify>,
    pub(super) shared: Arc<Shared>,
    pub(super) commands: mpsc::Receiver<Command>,
    /// A Terminate that arrived while reconnecting; answered when the pump stops.
    pub(super) pending_terminate: Option<oneshot::Sender<()>>,
    /// A Terminate already carried out; answered once `ended` is set.
    pub(super) terminated: Option<oneshot::Sender<()>>,
    pub(super) handshake: HandshakeState,
    /// Set when the connection broke; the loop then reconnects.
    pub(super) ws_broken: Option<String>,
    /// Last frame of any kind from the gateway.
    pub(super) last_rx: Instant,
    /// Last ack or stream message from the agent.
    pub(super) last_agent: Instant,
    /// Since when the window has held unacked data (None while it is empty).
    pub(super) waiting_since: Option<Instant>,
    pub(super) pacer: Pacer,
    /// Until when messages get the early resend, and how many more may (see
    /// [`EARLY_INPUT_GUARD`]).
    pub(super) early_until: Option<Instant>,
    pub(super) early_left: u32,
    /// Output bytes delivered to the local side so far: positions in the agent's byte stream.
    pub(super) inbound_offset: u64,
    /// When our HandshakeResponse went out; HandshakeComplete follows one round trip later.
    pub(super) response_sent_at: Option<Instant>,
}

impl Pump {
    pub(super) async fn run(mut self) {
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
    pub(super) fn resend(&mut self) {
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
