//! Sans-IO reliability state for the data channel (`ssm-protocol.md` §4): sequence numbers,
//! the bounded window of unacked outgoing frames with RTT-based retransmission, and in-order
//! delivery of incoming stream messages. No sockets and no clock: the caller passes `now`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::message::{ClientMessage, PayloadType};

/// Tuning for both directions. Defaults are the plugin's and agent's constants (§4.3) except
/// the outgoing window, which the plugin does not have.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Most unacked outgoing messages kept; the caller stops reading local data when full
    /// instead of evicting (the plugin's eviction silently gives up reliability).
    pub outgoing_window: usize,
    /// Most out-of-order incoming messages buffered; beyond this they are dropped unacked so
    /// the sender retransmits them later.
    pub incoming_capacity: usize,
    /// Starting SRTT before any sample.
    pub initial_rtt: Duration,
    /// Starting RTO before any sample.
    pub initial_rto: Duration,
    /// The estimated RTO never exceeds this.
    pub max_rto: Duration,
    /// Exponential backoff: each resend of one message doubles its own timeout, up to this cap
    /// (never below the RTO). `Duration::ZERO` resends every RTO without backing off, as the
    /// agent does. With a cap, a quiet peer (a paused gateway, an agent blocked on a slow
    /// database, our own back-pressure) costs a few resends a minute instead of one per RTO.
    pub max_backoff: Duration,
    /// Lower bound of the variance term, so a very steady RTT still leaves some slack.
    pub clock_granularity: Duration,
    /// SRTT gain (α).
    pub rtt_alpha: f64,
    /// RTTVAR gain (β).
    pub rttvar_beta: f64,
    /// Resend a message as soon as this many later messages were acked (0 = only on RTO).
    /// Without it every lost message stalls a full window for an RTO.
    pub fast_retransmit_after: u32,
    /// Karn's rule: no RTT sample from a message that was sent more than once (its ack may
    /// answer any of the sends), and a backed-off timeout is kept until a clean sample comes.
    /// Off by default, as the agent and plugin sample against the latest send (§4.3): after an
    /// RTT jump their RTO stays below the real RTT and every message is resent spuriously.
    pub karn: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            outgoing_window: 512,
            incoming_capacity: 10_000,
            initial_rtt: Duration::from_millis(100),
            initial_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(1),
            max_backoff: Duration::ZERO,
            clock_granularity: Duration::from_millis(10),
            rtt_alpha: 1.0 / 8.0,
            rttvar_beta: 1.0 / 4.0,
            fast_retransmit_after: 3,
            karn: false,
        }
    }
}

/// Errors from the reliability state machines.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReliableError {
    /// The outgoing window is full; wait for acks (check [`Outgoing::has_room`] first).
    #[error("SSM outgoing window full ({capacity} unacked messages)")]
    WindowFull {
        /// The configured window.
        capacity: usize,
    },
    /// The i64 sequence space is used up; the session cannot continue.
    #[error("SSM outgoing sequence numbers exhausted")]
    SequenceExhausted,
}

/// One unacked outgoing message.
#[derive(Debug, Clone)]
struct Pending {
    /// The encoded frame; resends reuse these exact bytes (same MessageId and seq).
    frame: Bytes,
    /// Start of the RTT sample and of the resend timer.
    last_sent: Instant,
    /// Sends so far, including the first.
    attempts: u32,
    /// This message's own resend timeout after `attempts - 1` resends (see
    /// [`Config::max_backoff`]); `None` until the first resend: then the current RTO applies.
    backoff: Option<Duration>,
    /// Acks for later messages seen since the last send of this one.
    later_acks: u32,
    /// Enough later messages were acked that this one is presumed lost: resend now, without
    /// waiting for the RTO (fast retransmit; the WebSocket below is ordered, so a gap in the
    /// acks means a loss, not a delay).
    presumed_lost: bool,
    /// A shorter timeout for the first resend only (see [`Outgoing::expedite`]).
    first_timeout: Option<Duration>,
    /// Resent at least once because its timer ran out (not as a fast or expedited resend):
    /// the RTO was too short, so under Karn's rule the backed-off timeout is kept.
    timed_out: bool,
}

impl Pending {
    /// How long after `last_sent` this message is due again, given the current RTO.
    fn timeout(&self, rto: Duration) -> Duration {
        match self.first_timeout {
            Some(first) if self.attempts == 1 => first.min(rto),
            _ => self.backoff.unwrap_or(rto).max(rto),
        }
    }

    /// Marks one resend at `now` that is due by `timeout`; `cap` is [`Config::max_backoff`].
    fn resent(&mut self, now: Instant, timeout: Duration, rto: Duration, cap: Duration) {
        let expedited = self.attempts == 1 && self.first_timeout.is_some();
        let by_timer = !self.presumed_lost
            && !expedited
            && now.saturating_duration_since(self.last_sent) >= timeout;
        self.timed_out |= by_timer;
        self.last_sent = now;
        self.later_acks = 0;
        self.presumed_lost = false;
        self.attempts = self.attempts.saturating_add(1);
        if !cap.is_zero() {
            self.backoff = Some(timeout.saturating_mul(2).min(cap.max(rto)));
        }
    }
}

/// A frame accepted into the outgoing window, ready to be written to the WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The sequence number it was given.
    pub sequence_number: i64,
    /// The encoded frame to send now.
    pub frame: Bytes,
}

/// Client → agent direction: numbering, the unacked window, RTT estimation and resends.
///
/// State lives across WebSocket reconnects: sequence numbers continue and unacked frames are
/// replayed (§4.1, §4.6).
#[derive(Debug)]
pub struct Outgoing {
    /// Limits and RTT constants.
    config: Config,
    /// Sequence number the next message gets.
    next_seq: i64,
    /// Unacked frames by seq; ordered so replays and resends go out oldest first.
    unacked: BTreeMap<i64, Pending>,
    /// Smoothed RTT, in seconds (float like the reference implementations, so α/β apply exactly).
    srtt: f64,
    /// RTT variation, in seconds.
    rttvar: f64,
    /// Current retransmission timeout.
    rto: Duration,
}

impl Outgoing {
    /// Empty state: next seq 0, initial RTT/RTO from `config`.
    pub fn new(config: Config) -> Self {
        Self {
            srtt: config.initial_rtt.as_secs_f64(),
            rttvar: 0.0,
            rto: config.initial_rto.min(config.max_rto),
            next_seq: 0,
            unacked: BTreeMap::new(),
            config,
        }
    }

    /// Whether another message fits in the window; when false, stop reading local data.
    pub fn has_room(&self) -> bool {
        self.unacked.len() < self.config.outgoing_window
    }

    /// Sequence number the next pushed message will get.
    pub fn next_sequence_number(&self) -> i64 {
        self.next_seq
    }

    /// Gives the next sequence number to `encode`, keeps the frame it returns until acked, and
    /// returns it for sending. `encode` is not called when the window is full.
    pub fn push_with(
        &mut self,
        now: Instant,
        encode: impl FnOnce(i64) -> Bytes,
    ) -> Result<Queued, ReliableError> {
        if !self.has_room() {
            return Err(ReliableError::WindowFull {
                capacity: self.config.outgoing_window,
            });
        }
        let seq = self.next_seq;
        let next = seq.checked_add(1).ok_or(ReliableError::SequenceExhausted)?;
        let frame = encode(seq);
        self.unacked.insert(
            seq,
            Pending {
                frame: frame.clone(),
                last_sent: now,
                attempts: 1,
                backoff: None,
                later_acks: 0,
                presumed_lost: false,
                first_timeout: None,
                timed_out: false,
            },
        );
        self.next_seq = next;
        Ok(Queued {
            sequence_number: seq,
            frame,
        })
    }

    /// Queues client → agent stream data (`input_stream_data`, flags 0).
    pub fn push(
        &mut self,
        now: Instant,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Result<Queued, ReliableError> {
        self.push_with(now, |seq| {
            ClientMessage::input_stream_data(seq, payload_type, payload).encode()
        })
    }

    /// Handles an ack: forgets that message and feeds the RTT estimator. Returns false for an
    /// unknown seq (already acked, or never sent), which is otherwise ignored.
    pub fn on_ack(&mut self, seq: i64, now: Instant) -> bool {
        let Some(pending) = self.unacked.remove(&seq) else {
            return false;
        };
        let threshold = self.config.fast_retransmit_after;
        if threshold > 0 {
            for earlier in self.unacked.range_mut(..seq).map(|(_, p)| p) {
                earlier.later_acks = earlier.later_acks.saturating_add(1);
                if earlier.later_acks >= threshold {
                    earlier.presumed_lost = true;
                }
            }
        }
        if self.config.karn && pending.attempts > 1 {
            // The ack may answer any of the sends: no sample. If the timer ran out, the RTO
            // was too short; keep the backed-off timeout until a clean sample arrives.
            if pending.timed_out {
                let kept = pending.backoff.unwrap_or(self.rto).max(self.rto);
                self.rto = kept.min(self.config.max_rto);
            }
            return true;
        }
        // Without Karn's rule: sampled against the latest send, as plugin and agent do (§4.3);
        // after a resend this under-estimates.
        let sample = now
            .saturating_duration_since(pending.last_sent)
            .as_secs_f64();
        let (alpha, beta) = (self.config.rtt_alpha, self.config.rttvar_beta);
        self.rttvar = (1.0 - beta) * self.rttvar + beta * (self.srtt - sample).abs();
        self.srtt = (1.0 - alpha) * self.srtt + alpha * sample;
        let slack = self
            .config
            .clock_granularity
            .as_secs_f64()
            .max(4.0 * self.rttvar);
        // try_from guards against NaN/inf from odd configured gains; fall back to the cap.
        self.rto = Duration::try_from_secs_f64(self.srtt + slack)
            .unwrap_or(self.config.max_rto)
            .min(self.config.max_rto);
        true
    }

    /// Gives message `seq` a shorter timeout for its first resend only (later resends follow
    /// the RTO): for input the peer may drop without an ack just after the handshake (§6a),
    /// where waiting a whole RTO would cost the first query ~200 ms. No effect once resent.
    pub fn expedite(&mut self, seq: i64, first_timeout: Duration) {
        if let Some(pending) = self.unacked.get_mut(&seq) {
            if pending.attempts == 1 {
                pending.first_timeout = Some(first_timeout);
            }
        }
    }

    /// Frames whose last send is at least one RTO old, oldest seq first, marking each as sent
    /// at `now`. Every overdue frame is returned, not only the oldest.
    pub fn due_for_resend(&mut self, now: Instant) -> Vec<Bytes> {
        self.due_for_resend_up_to(now, usize::MAX)
    }

    /// Like [`Outgoing::due_for_resend`] but returns at most `limit` frames, so a pacer with
    /// a small budget does not mark frames as sent that it cannot send yet.
    pub fn due_for_resend_up_to(&mut self, now: Instant, limit: usize) -> Vec<Bytes> {
        let (rto, cap) = (self.rto, self.config.max_backoff);
        let mut due = Vec::new();
        for pending in self.unacked.values_mut() {
            if due.len() >= limit {
                break;
            }
            let timeout = pending.timeout(rto);
            if pending.presumed_lost || now.saturating_duration_since(pending.last_sent) >= timeout
            {
                pending.resent(now, timeout, rto, cap);
                due.push(pending.frame.clone());
            }
        }
        due
    }

    /// The agent's and plugin's scheduler (§4.3): only the oldest unacked frame, and only if it
    /// is overdue; later overdue frames wait until it is acked.
    pub fn resend_front_if_due(&mut self, now: Instant) -> Option<Bytes> {
        let (rto, cap) = (self.rto, self.config.max_backoff);
        let pending = self.unacked.values_mut().next()?;
        let timeout = pending.timeout(rto);
        if !pending.presumed_lost && now.saturating_duration_since(pending.last_sent) < timeout {
            return None;
        }
        pending.resent(now, timeout, rto, cap);
        Some(pending.frame.clone())
    }

    /// When the next frame becomes due for resend, if any is unacked; a scheduler can sleep
    /// until then instead of ticking.
    pub fn next_resend_at(&self) -> Option<Instant> {
        self.unacked
            .values()
            .map(|p| {
                if p.presumed_lost {
                    p.last_sent
                } else {
                    p.last_sent + p.timeout(self.rto)
                }
            })
            .min()
    }

    /// Every unacked frame in seq order, without touching timers.
    #[cfg(test)]
    pub fn all_unacked(&self) -> Vec<Bytes> {
        self.unacked.values().map(|p| p.frame.clone()).collect()
    }

    /// Every unacked frame in seq order, marked as sent at `now`: for replay right after a
    /// reconnect, so the resend timer does not send them a second time straight away.
    pub fn replay(&mut self, now: Instant) -> Vec<Bytes> {
        self.unacked
            .values_mut()
            .map(|pending| {
                pending.last_sent = now;
                pending.attempts = pending.attempts.saturating_add(1);
                pending.frame.clone()
            })
            .collect()
    }

    /// Marks every unacked frame as lost (resend at once, as pacing allows): after a
    /// reconnect, so the new connection gets the backlog as fast as it can take it.
    pub fn mark_all_lost(&mut self) {
        for pending in self.unacked.values_mut() {
            pending.presumed_lost = true;
        }
    }

    /// Number of messages awaiting an ack.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// True when everything sent has been acked (e.g. before a graceful close).
    pub fn is_idle(&self) -> bool {
        self.unacked.is_empty()
    }

    /// Highest send count of any unacked message.
    #[cfg(test)]
    pub fn max_attempts(&self) -> u32 {
        self.unacked.values().map(|p| p.attempts).max().unwrap_or(0)
    }

    /// Current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// Current smoothed RTT.
    pub fn srtt(&self) -> Duration {
        Duration::try_from_secs_f64(self.srtt).unwrap_or(Duration::MAX)
    }

    /// Current RTT variation.
    pub fn rttvar(&self) -> Duration {
        Duration::try_from_secs_f64(self.rttvar).unwrap_or(Duration::MAX)
    }
}

/// What to do with one received stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<T> {
    /// It was the expected one: ack it and process these in order (it, then any buffered
    /// successors it unblocked).
    Deliver(Vec<T>),
    /// Ahead of the expected seq: ack it; it is held until the gap fills.
    Buffered,
    /// Already delivered or already buffered: ack again (our earlier ack was probably lost,
    /// and the agent would otherwise resend forever) and discard.
    Duplicate,
    /// Ahead of the expected seq but the buffer is full: do not ack, so it is resent later.
    Dropped,
}

impl<T> Delivery<T> {
    /// Whether the caller should send an `acknowledge` for the message.
    pub fn should_ack(&self) -> bool {
        !matches!(self, Self::Dropped)
    }
}

/// Agent → client direction: puts sequenced messages back in order.
///
/// Generic over what is stored so the caller can keep the whole decoded message (its payload
/// type matters) rather than just the payload bytes. If the caller cannot take a message yet,
/// it should not call `on_message` at all: no ack means the agent resends it.
#[derive(Debug)]
pub struct Incoming<T> {
    /// Sequence number of the next message to deliver.
    expected: i64,
    /// Out-of-order messages by seq.
    buffer: BTreeMap<i64, T>,
    /// Most messages `buffer` may hold.
    capacity: usize,
}

impl<T> Incoming<T> {
    /// Empty state expecting seq 0; buffers at most `config.incoming_capacity` messages.
    pub fn new(config: &Config) -> Self {
        Self {
            expected: 0,
            buffer: BTreeMap::new(),
            capacity: config.incoming_capacity,
        }
    }

    /// Classifies message `seq`; see [`Delivery`].
    pub fn on_message(&mut self, seq: i64, message: T) -> Delivery<T> {
        if seq < self.expected || self.buffer.contains_key(&seq) {
            return Delivery::Duplicate;
        }
        if seq > self.expected {
            if self.buffer.len() >= self.capacity {
                return Delivery::Dropped;
            }
            self.buffer.insert(seq, message);
            return Delivery::Buffered;
        }
        let mut ready = vec![message];
        self.advance();
        while let Some(next) = self.buffer.remove(&self.expected) {
            ready.push(next);
            self.advance();
        }
        Delivery::Deliver(ready)
    }

    /// Saturates at i64::MAX, which 1000 messages/s would reach in about 300 million years.
    fn advance(&mut self) {
        self.expected = self.expected.saturating_add(1);
    }

    /// Sequence number of the next message to deliver.
    pub fn expected(&self) -> i64 {
        self.expected
    }

    /// Number of out-of-order messages held.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn frame(seq: i64) -> Bytes {
        Bytes::from(format!("frame-{seq}"))
    }

    fn outgoing(window: usize) -> Outgoing {
        Outgoing::new(Config {
            outgoing_window: window,
            ..Config::default()
        })
    }

    fn assert_close(actual: Duration, expected_us: u64) {
        let diff = actual.as_micros().abs_diff(u128::from(expected_us));
        assert!(diff <= 1, "expected {expected_us} µs, got {actual:?}");
    }

    #[test]
    fn sequence_numbers_start_at_zero_and_frames_are_kept() {
        let t0 = Instant::now();
        let mut out = outgoing(8);
        for expected in 0..3 {
            let queued = out.push_with(t0, frame).expect("room");
            assert_eq!(queued.sequence_number, expected);
            assert_eq!(queued.frame, frame(expected));
        }
        assert_eq!(out.next_sequence_number(), 3);
        assert_eq!(out.unacked_len(), 3);
        assert_eq!(out.all_unacked(), vec![frame(0), frame(1), frame(2)]);
    }

    #[test]
    fn push_encodes_input_stream_data_with_assigned_seq() {
        let mut out = outgoing(8);
        out.push_with(Instant::now(), frame).expect("room");
        let queued = out
            .push(
                Instant::now(),
                PayloadType::Output,
                Bytes::from_static(b"SELECT 1"),
            )
            .expect("room");
        let decoded = ClientMessage::decode(&queued.frame).expect("valid frame");
        assert_eq!(decoded.sequence_number, 1);
        assert_eq!(decoded.message_type, "input_stream_data");
        assert_eq!(&decoded.payload[..], b"SELECT 1");
    }

    #[test]
    fn window_is_bounded_and_reopens_on_ack() {
        let t0 = Instant::now();
        let mut out = outgoing(2);
        out.push_with(t0, frame).expect("room");
        out.push_with(t0, frame).expect("room");
        assert!(!out.has_room());
        let mut called = false;
        let err = out.push_with(t0, |s| {
            called = true;
            frame(s)
        });
        assert_eq!(err, Err(ReliableError::WindowFull { capacity: 2 }));
        assert!(!called, "no sequence number is consumed when full");
        assert!(out.on_ack(0, t0 + ms(50)));
        assert!(out.has_room());
        assert_eq!(out.push_with(t0, frame).expect("room").sequence_number, 2);
    }

    #[test]
    fn ack_of_unknown_or_repeated_seq_is_ignored() {
        let t0 = Instant::now();
        let mut out = outgoing(8);
        out.push_with(t0, frame).expect("room");
        let rto = out.rto();
        assert!(!out.on_ack(42, t0 + ms(5)));
        assert!(!out.on_ack(-1, t0 + ms(5)));
        assert_eq!((out.unacked_len(), out.rto()), (1, rto));
        assert!(out.on_ack(0, t0 + ms(5)));
        assert!(!out.on_ack(0, t0 + ms(6)), "second ack for the same seq");
        assert!(out.is_idle());
    }

    #[test]
    fn acks_remove_only_their_own_entry() {
        let t0 = Instant::now();
        let mut out = outgoing(8);
        for _ in 0..4 {
            out.push_with(t0, frame).expect("room");
        }
        out.on_ack(2, t0 + ms(10));
        out.on_ack(0, t0 + ms(10));
        assert_eq!(out.all_unacked(), vec![frame(1), frame(3)]);
    }

    #[test]
    fn rtt_math_follows_jacobson_karels() {
        let t0 = Instant::now();
        let mut out = outgoing(8);
        assert_eq!(
            (out.srtt(), out.rttvar(), out.rto()),
            (ms(100), Duration::ZERO, ms(200))
        );

        // r = 300 ms: RTTVAR = ¼·|100−300| = 50; SRTT = ⅞·100 + ⅛·300 = 125; RTO = 125 + 4·50.
        out.push_with(t0, frame).expect("room");
        out.on_ack(0, t0 + ms(300));
        assert_close(out.rttvar(), 50_000);
        assert_close(out.srtt(), 125_000);
        assert_close(out.rto(), 325_000);

        // r = 125 ms: RTTVAR = ¾·50 = 37.5; SRTT stays 125; RTO = 125 + 150.
        out.push_with(t0, frame).expect("room");
        out.on_ack(1, t0 + ms(125));
        assert_close(out.rttvar(), 37_500);
        assert_close(out.srtt(), 125_000);
        assert_close(out.rto(), 275_000);
    }

    #[test]
    fn rto_floor_is_clock_granularity_and_cap_is_max() {
        let t0 = Instant::now();
        let mut steady = outgoing(8);
        steady.push_with(t0, frame).expect("room");
        steady.on_ack(0, t0 + ms(100)); // sample equals SRTT, so RTTVAR stays 0
        assert_close(steady.rto(), 110_000);

        let mut slow = outgoing(8);
        slow.push_with(t0, frame).expect("room");
        slow.on_ack(0, t0 + Duration::from_secs(5));
        assert_eq!(slow.rto(), Duration::from_secs(1));
    }

    #[test]
    fn resend_after_rto_with_identical_bytes_and_all_overdue_frames() {
        let t0 = Instant::now();
        let mut out = outgoing(8);
        out.push_with(t0, frame).expect("room"); // seq 0 at t0
        out.push_with(t0 + ms(50), frame).expect("room"); // seq 1 at t0+50
        out.push_with(t0 + ms(150), frame).expect("room"); // seq 2 at t0+150
        assert_eq!(out.next_resend_at(), Some(t0 + ms(200)));

        assert!(out.due_for_resend(t0 + ms(199)).is_empty());
        assert_eq!(out.due_for_resend(t0 + ms(200)), vec![frame(0)]);
        // Both older frames are now overdue, not only the front one.
        assert_eq!(out.due_for_resend(t0 + ms(360)), vec![frame(1), frame(2)]);
        assert_eq!(out.max_attempts(), 2);
        // Timers were written back: nothing again until another RTO passes.
        assert!(out.due_for_resend(t0 + ms(380)).is_empty());
        assert_eq!(out.next_resend_at(), Some(t0 + ms(400)));
        assert_eq!(out.due_for_resend(t0 + ms(400)), vec![frame(0)]);
        assert_eq!(out.max_attempts(), 3);
    }

    #[test]
    fn resends_back_off_exponentially_up_to_the_cap() {
        let t0 = Instant::now();
        let mut out = Outgoing::new(Config {
            max_backoff: Duration::from_secs(2),
            ..Config::default()
        });
        out.push_with(t0, frame).expect("room");
        // RTO 200 ms, then 400, 800, 1600, then capped at 2 s.
        let mut at = t0;
        for gap in [200, 400, 800, 1600, 2000, 2000] {
            assert!(
                out.due_for_resend(at + ms(gap - 1)).is_empty(),
                "not before {gap} ms"
            );
            assert_eq!(out.next_resend_at(), Some(at + ms(gap)));
            at += ms(gap);
            assert_eq!(out.due_for_resend(at), vec![frame(0)], "due after {gap} ms");
        }
        // A zero cap (the agent's behaviour) keeps resending every RTO.
        let mut flat = outgoing(8);
        flat.push_with(t0, frame).expect("room");
        assert_eq!(flat.due_for_resend(t0 + ms(200)), vec![frame(0)]);
        assert_eq!(flat.due_for_resend(t0 + ms(400)), vec![frame(0)]);
    }

    #[test]
    fn resend_limit_leaves_the_rest_due() {
        let t0 = Instant::now();
        let mut out = outgoing(8);
        for _ in 0..3 {
            out.push_with(t0, frame).expect("room");
        }
        assert_eq!(
            out.due_for_resend_up_to(t0 + ms(300), 2),
            vec![frame(0), frame(1)]
        );
        assert_eq!(out.due_for_resend(t0 + ms(301)), vec![frame(2)]);
    }

    #[test]
    fn replay_resets_timers_and_keeps_numbering() {
        let t0 = Instant::now();
        let mut out = outgoing(8);
        for _ in 0..3 {
            out.push_with(t0, frame).expect("room");
        }
        out.on_ack(1, t0 + ms(10));
        let reconnect = t0 + ms(5_000);
        assert_eq!(out.replay(reconnect), vec![frame(0), frame(2)]);
        assert!(out.due_for_resend(reconnect + ms(1)).is_empty());
        assert_eq!(
            out.push_with(reconnect, frame)
                .expect("room")
                .sequence_number,
            3
        );
        assert!(out.next_resend_at().is_some());
        assert!(outgoing(8).next_resend_at().is_none());
    }

    #[test]
    fn sequence_exhaustion_is_an_error_not_a_panic() {
        let mut out = outgoing(8);
        out.next_seq = i64::MAX;
        assert_eq!(
            out.push_with(Instant::now(), frame),
            Err(ReliableError::SequenceExhausted)
        );
        assert!(out.is_idle());
    }

    fn incoming(capacity: usize) -> Incoming<&'static str> {
        Incoming::new(&Config {
            incoming_capacity: capacity,
            ..Config::default()
        })
    }

    #[test]
    fn in_order_messages_are_delivered_immediately() {
        let mut inc = incoming(4);
        assert_eq!(inc.on_message(0, "a"), Delivery::Deliver(vec!["a"]));
        assert_eq!(inc.on_message(1, "b"), Delivery::Deliver(vec!["b"]));
        assert_eq!(inc.expected(), 2);
    }

    #[test]
    fn reordered_messages_are_buffered_then_drained_in_order() {
        let mut inc = incoming(4);
        assert_eq!(inc.on_message(2, "c"), Delivery::Buffered);
        assert_eq!(inc.on_message(1, "b"), Delivery::Buffered);
        assert_eq!(inc.on_message(4, "e"), Delivery::Buffered);
        assert_eq!(inc.buffered_len(), 3);
        assert_eq!(
            inc.on_message(0, "a"),
            Delivery::Deliver(vec!["a", "b", "c"])
        );
        assert_eq!((inc.expected(), inc.buffered_len()), (3, 1));
        assert_eq!(inc.on_message(3, "d"), Delivery::Deliver(vec!["d", "e"]));
        assert_eq!((inc.expected(), inc.buffered_len()), (5, 0));
    }

    #[test]
    fn duplicates_are_reacked_and_discarded() {
        let mut inc = incoming(4);
        inc.on_message(0, "a");
        let dup = inc.on_message(0, "a again");
        assert_eq!(dup, Delivery::Duplicate);
        assert!(dup.should_ack());
        assert_eq!(inc.on_message(-5, "negative"), Delivery::Duplicate);
        assert_eq!(inc.on_message(3, "d"), Delivery::Buffered);
        assert_eq!(
            inc.on_message(3, "d again"),
            Delivery::Duplicate,
            "already buffered"
        );
        assert_eq!(inc.buffered_len(), 1);
        inc.on_message(2, "c");
        assert_eq!(
            inc.on_message(1, "b"),
            Delivery::Deliver(vec!["b", "c", "d"])
        );
    }

    #[test]
    fn full_buffer_drops_without_ack_but_expected_still_delivers() {
        let mut inc = incoming(2);
        assert_eq!(inc.on_message(1, "b"), Delivery::Buffered);
        assert_eq!(inc.on_message(2, "c"), Delivery::Buffered);
        let dropped = inc.on_message(3, "d");
        assert_eq!(dropped, Delivery::Dropped);
        assert!(!dropped.should_ack());
        assert_eq!(
            inc.on_message(0, "a"),
            Delivery::Deliver(vec!["a", "b", "c"])
        );
        // Room again: the retransmitted seq 3 now arrives in order.
        assert_eq!(inc.on_message(3, "d"), Delivery::Deliver(vec!["d"]));
    }

    #[test]
    fn zero_capacity_still_delivers_in_order() {
        let mut inc = incoming(0);
        assert_eq!(inc.on_message(1, "b"), Delivery::Dropped);
        assert_eq!(inc.on_message(0, "a"), Delivery::Deliver(vec!["a"]));
        assert_eq!(inc.on_message(1, "b"), Delivery::Deliver(vec!["b"]));
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::default();
        assert_eq!((c.outgoing_window, c.incoming_capacity), (512, 10_000));
        assert_eq!(
            (c.initial_rtt, c.initial_rto, c.max_rto, c.clock_granularity),
            (ms(100), ms(200), ms(1000), ms(10))
        );
        assert_eq!((c.rtt_alpha, c.rttvar_beta), (0.125, 0.25));
    }

    #[test]
    fn a_gap_in_the_acks_resends_before_the_rto() {
        let t0 = Instant::now();
        let mut out = Outgoing::new(Config::default());
        for _ in 0..5 {
            out.push(t0, PayloadType::Output, Bytes::from_static(b"x"))
                .unwrap();
        }
        let t1 = t0 + Duration::from_millis(5);
        // Seq 0 was lost; 1 and 2 acked: not yet presumed lost.
        assert!(out.on_ack(1, t1) && out.on_ack(2, t1));
        assert!(out.due_for_resend(t1).is_empty());
        assert!(out.next_resend_at().unwrap() > t1);
        // A third later ack: seq 0 is due at once, long before the 200 ms RTO.
        assert!(out.on_ack(3, t1));
        assert!(out.next_resend_at().unwrap() <= t1);
        let resent = out.due_for_resend(t1);
        assert_eq!(resent.len(), 1);
        assert_eq!(
            ClientMessage::decode(&resent[0]).unwrap().sequence_number,
            0
        );
        // After the resend it waits for the RTO again.
        assert!(out.due_for_resend(t1).is_empty());
        let mut slow = Outgoing::new(Config {
            fast_retransmit_after: 0,
            ..Config::default()
        });
        for _ in 0..5 {
            slow.push(t0, PayloadType::Output, Bytes::from_static(b"x"))
                .unwrap();
        }
        for seq in 1..5 {
            slow.on_ack(seq, t1);
        }
        assert!(slow.due_for_resend(t1).is_empty(), "disabled: RTO only");
    }

    /// One message through a link with round-trip time `rtt`, resent whenever the state says
    /// so, acked `rtt` after its first send; returns how often it was resent.
    fn round_trip(out: &mut Outgoing, now: &mut Instant, rtt: Duration) -> usize {
        let seq = out.push_with(*now, frame).expect("room").sequence_number;
        let ack_at = *now + rtt;
        let mut resends = 0;
        while let Some(at) = out.next_resend_at().filter(|at| *at < ack_at) {
            resends += out.due_for_resend(at).len();
        }
        assert!(out.on_ack(seq, ack_at));
        *now = ack_at;
        resends
    }

    /// The data channel's settings: backoff capped at 8 s, Karn's rule on or off.
    fn channel_like(karn: bool) -> Outgoing {
        Outgoing::new(Config {
            max_backoff: Duration::from_secs(8),
            karn,
            ..Config::default()
        })
    }

    #[test]
    fn karn_no_sample_from_a_resent_message_so_the_rto_catches_up_with_an_rtt_jump() {
        let t0 = Instant::now();
        for karn in [false, true] {
            let mut out = channel_like(karn);
            let mut now = t0;
            // A steady 10 ms link: the RTO settles near its 10 ms floor above the RTT.
            for _ in 0..40 {
                assert_eq!(round_trip(&mut out, &mut now, ms(10)), 0);
            }
            assert!(out.rto() < ms(30), "{:?}", out.rto());
            // The RTT jumps to 500 ms (a Wi-Fi hand-over, a loaded gateway).
            let resends: Vec<usize> = (0..10)
                .map(|_| round_trip(&mut out, &mut now, ms(500)))
                .collect();
            if karn {
                // Resent 4 times (20, 60, 140, 300 ms: the backoff), then the kept 320 ms
                // timeout once, then the 640 ms one holds and clean samples follow.
                assert_eq!(resends, [4, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
                assert!(out.rto() >= ms(500), "{:?}", out.rto());
                assert!(out.srtt() > ms(200), "{:?}", out.srtt());
            } else {
                // Sampled against the last resend: the RTO never reaches the RTT, and every
                // message is resent spuriously (what the plugin and the agent do).
                assert!(resends.iter().all(|&r| r > 0), "{resends:?}");
                assert!(out.rto() < ms(500), "{:?}", out.rto());
            }
        }
    }

    #[test]
    fn karn_a_fast_retransmit_does_not_back_off_the_rto() {
        let t0 = Instant::now();
        let mut out = channel_like(true);
        for _ in 0..5 {
            out.push(t0, PayloadType::Output, Bytes::from_static(b"x"))
                .unwrap();
        }
        for seq in 1..4 {
            out.on_ack(seq, t0 + ms(5));
        }
        let rto = out.rto();
        assert_eq!(out.due_for_resend(t0 + ms(5)).len(), 1, "seq 0 fast");
        assert!(out.on_ack(0, t0 + ms(10)));
        // A loss, not a slow link: no sample from it, and the RTO is not backed off.
        assert_eq!(out.rto(), rto);
    }

    #[test]
    fn an_expedited_message_is_resent_early_once_then_by_the_rto() {
        let t0 = Instant::now();
        let mut out = channel_like(true);
        let seq = out.push_with(t0, frame).expect("room").sequence_number;
        let later = out.push_with(t0, frame).expect("room").sequence_number;
        out.expedite(seq, ms(20));
        assert_eq!(out.next_resend_at(), Some(t0 + ms(20)));
        assert_eq!(out.due_for_resend(t0 + ms(20)), vec![frame(seq)]);
        // The early resend was not the RTO running out: no sample, no backoff of the RTO.
        assert!(out.on_ack(seq, t0 + ms(30)));
        assert_eq!(out.rto(), ms(200));
        // Everything not expedited waits a whole RTO (200 ms).
        assert_eq!(out.next_resend_at(), Some(t0 + ms(200)));
        assert!(out.due_for_resend(t0 + ms(199)).is_empty());
        assert_eq!(out.due_for_resend(t0 + ms(200)), vec![frame(later)]);
        // Expediting a message already resent changes nothing.
        out.expedite(later, ms(1));
        assert!(out.due_for_resend(t0 + ms(201)).is_empty());
    }
}
