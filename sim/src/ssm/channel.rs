//! One data channel WebSocket as MGS serves it (`ssm-protocol.md` §1.2): the OpenDataChannel
//! text frame with a single-use token, then binary frames relayed to and from the session task,
//! plus the connection faults (abrupt kill after N messages or T seconds, `1000 Bye`), the
//! gateway's inbound rate limit and a reader that stops reading. With the `latency`/`jitter`
//! knobs every frame crosses a [`DelayLine`] in each direction (the network between the client
//! and AWS; see [`super::SsmSimOptions`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::agent::{Event, SessionShared, WsOut};
use super::{bump, Inner};

/// How long a client has, after the upgrade, to send OpenDataChannel.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Frames queued from the session to this connection.
const OUT_QUEUE: usize = 4096;

/// Frames in flight on the simulated network per direction before the sender is held back
/// (TCP's window: beyond it the sender's writes stall).
const IN_FLIGHT: usize = 4096;

/// Connection ids, so a session can ignore a connection it has replaced.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Errors of one data channel connection; logged at debug, never sent to the client.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChannelError {
    #[error("no OpenDataChannel message within {OPEN_TIMEOUT:?}")]
    OpenTimeout,
    #[error("the first message was not an OpenDataChannel text frame")]
    NotOpenMessage,
    #[error("OpenDataChannel is not valid JSON")]
    BadOpenMessage(#[source] serde_json::Error),
    /// The token was never issued for this session, or was used already. The token itself is
    /// deliberately not part of the message.
    #[error("OpenDataChannel carries an unknown or used token")]
    BadToken,
    #[error("the session is over")]
    SessionOver,
}

/// The fields of OpenDataChannel the service reads. Lenient: older clients send only the
/// first three of the five fields (§1.2).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OpenRequest {
    token_value: String,
    #[serde(default)]
    client_id: Option<String>,
}

/// How the reading half of a connection ended.
enum ReaderEnd {
    /// Close frame, EOF or a read error: the client went away.
    Closed,
    /// The client exceeded the `client_rate_limit` knob: the gateway cuts it.
    RateLimited,
}

/// The window the gateway judges a client's message rate over.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Counts a client's `input_stream_data` messages over a sliding one-second window, for the
/// rate limit and the peak statistic.
#[derive(Default)]
struct InboundMeter {
    /// Arrival times of the data messages of the last second, oldest first.
    recent: VecDeque<Instant>,
}

impl InboundMeter {
    /// Records one data message at `now`; returns how many arrived in the second up to it.
    fn record(&mut self, now: Instant) -> u64 {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= RATE_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        u64::try_from(self.recent.len()).unwrap_or(u64::MAX)
    }
}

/// A one-way network path: what goes in comes out after its delay, in the order it went in (a
/// frame never overtakes the one ahead of it, as on one TCP connection). Frames in flight
/// overlap, so the delay costs latency, not throughput.
pub(super) struct DelayLine<T> {
    queue: VecDeque<(Instant, T)>,
    /// When the last frame in will come out; no later frame comes out earlier.
    last_due: Option<Instant>,
}

impl<T> Default for DelayLine<T> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            last_due: None,
        }
    }
}

impl<T> DelayLine<T> {
    /// Sends `item` at `now` across a path that takes `delay`. Returns it back when it would
    /// arrive at once (no delay, nothing ahead of it), so the caller can skip the queue.
    pub(super) fn send(&mut self, now: Instant, delay: Duration, item: T) -> Option<T> {
        if delay.is_zero() && self.queue.is_empty() {
            self.last_due = None;
            return Some(item);
        }
        let due = self.last_due.map_or(now + delay, |last| (now + delay).max(last));
        self.last_due = Some(due);
        self.queue.push_back((due, item));
        None
    }

    /// When the next frame arrives, if any is in flight.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(due, _)| *due)
    }

    /// The next frame if it has arrived by `now`.
    pub(super) fn arrived(&mut self, now: Instant) -> Option<T> {
        if self.next_due().is_some_and(|due| due <= now) {
            self.queue.pop_front().map(|(_, item)| item)
        } else {
            None
        }
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// What the gateway does with one frame that reached it from the client.
enum Arrival {
    Deliver,
    /// The client exceeded the `client_rate_limit` knob.
    RateLimited,
}

/// Meters one client frame as it reaches the gateway (after the network's delay: bursts that
/// the path bunched up count as bursts).
fn meter_arrival(inner: &Inner, meter: &mut InboundMeter, frame: &[u8]) -> Arrival {
    if !is_client_data(frame) {
        return Arrival::Deliver;
    }
    bump(&inner.stats.client_data_messages);
    let in_window = meter.record(Instant::now());
    inner
        .stats
        .peak_client_msgs_per_sec
        .fetch_max(in_window, Ordering::Relaxed);
    let limit = inner.knobs.read(|o| o.client_rate_limit);
    if limit.is_some_and(|n| in_window > u64::from(n)) {
        Arrival::RateLimited
    } else {
        Arrival::Deliver
    }
}

/// What the writer does after handing one frame to the socket.
enum Sent {
    Continue,
    /// The connection is over (close sent or the socket failed).
    Stop,
}

async fn send_out<S>(sink: &mut S, out: WsOut) -> Sent
where
    S: futures_util::Sink<Message> + Unpin,
{
    match out {
        WsOut::Binary(frame) | WsOut::Replay(frame) => {
            if sink.send(Message::Binary(frame)).await.is_err() {
                Sent::Stop
            } else {
                Sent::Continue
            }
        }
        WsOut::Close { code, reason } => {
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                })))
                .await;
            Sent::Stop
        }
        // Handled before it enters the delay line (a reset does not wait for the data ahead).
        WsOut::Kill => Sent::Stop,
    }
}

/// Whether a raw frame is an `input_stream_data` message, judged from its MessageType field
/// alone (bytes 4..36, space or NUL padded), as a gateway would meter it without decoding.
fn is_client_data(frame: &[u8]) -> bool {
    const NAME: &[u8] = b"input_stream_data";
    frame.get(4..36).is_some_and(|field| {
        field.starts_with(NAME) && field[NAME.len()..].iter().all(|&b| b == b' ' || b == 0)
    })
}

/// Serves one upgraded connection for `session`. `hard_close` is a second handle on the TCP
/// socket, used to turn the kill knobs' and the rate limit's close into a TCP reset.
pub(super) async fn serve<S>(
    mut ws: WebSocketStream<S>,
    inner: Arc<Inner>,
    session: Arc<SessionShared>,
    mut hard_close: Option<socket2::Socket>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (open, conn) = match open(&mut ws, &session).await {
        Ok(open) => (open, NEXT_CONN.fetch_add(1, Ordering::Relaxed)),
        Err(e) => {
            tracing::debug!(session = %session.id, error = %e, "simulated MGS: data channel refused");
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::Policy,
                    reason: "Authentication failed".into(),
                }))
                .await;
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel(OUT_QUEUE);
    let events = session.events();
    let attach = Event::Attach {
        conn,
        out: out_tx,
        client_id: open.client_id,
    };
    let opened = Instant::now();
    let mut knobs = inner.knobs.subscribe();
    let mut shutdown = inner.shutdown.subscribe();
    // Reading and writing run independently, as MGS does: a peer that is busy writing to us
    // must never find us blocked writing to it (both TCP buffers full = deadlock).
    let (mut sink, stream) = futures_util::StreamExt::split(ws);
    // The OpenDataChannel frame crossed the network too: the session learns of the connection
    // one way after the client sent it, ahead of every frame that followed it.
    let mut inbound = DelayLine::default();
    let attach = inbound.send(opened, inner.one_way_delay(), attach);
    let mut reader = tokio::spawn(read_client(inner.clone(), stream, events.clone(), inbound, attach));
    // Agent → client: frames cross the network before they reach the client's socket.
    let mut outbound: DelayLine<WsOut> = DelayLine::default();
    // Whether the connection ends abruptly (TCP reset) rather than with a close or EOF.
    let mut reset = false;
    'serve: loop {
        if *shutdown.borrow_and_update() {
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "".into(),
                })))
                .await;
            break;
        }
        while let Some(out) = outbound.arrived(Instant::now()) {
            if let Sent::Stop = send_out(&mut sink, out).await {
                break 'serve;
            }
        }
        let (kill_after, bye_after) = inner.knobs.read(|o| (o.kill_ws_after, o.bye_after));
        let kill_at = kill_after.map(|d| opened + d);
        let bye_at = bye_after.map(|d| opened + d);
        let wake_at = kill_at.into_iter().chain(bye_at).min();
        let arrival = outbound.next_due();
        tokio::select! {
            biased;
            _ = shutdown.changed() => {}
            end = &mut reader => {
                if matches!(end, Ok(ReaderEnd::RateLimited)) {
                    tracing::debug!(session = %session.id, "simulated MGS: client above the rate limit, WebSocket cut");
                    bump(&inner.stats.rate_limit_cuts);
                    reset = true;
                }
                break;
            }
            out = out_rx.recv(), if outbound.len() < IN_FLIGHT => match out {
                // The session counts what the kill knob counts (it knows which messages are new).
                // An abrupt end: the connection is dropped without a close frame, and whatever
                // is still in flight is lost with it.
                Some(WsOut::Kill) => {
                    reset = true;
                    break;
                }
                Some(out) => {
                    if let Some(out) = outbound.send(Instant::now(), inner.one_way_delay(), out) {
                        if let Sent::Stop = send_out(&mut sink, out).await {
                            break;
                        }
                    }
                }
                // Replaced by a newer connection for the same session.
                None => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            },
            _ = knobs.changed() => {}
            _ = sleep_until(arrival.unwrap_or(opened)), if arrival.is_some() => {}
            _ = sleep_until(wake_at.unwrap_or(opened)), if wake_at.is_some() => {
                let now = Instant::now();
                if kill_at.is_some_and(|t| t <= now) {
                    bump(&inner.stats.ws_killed);
                    reset = true;
                    break;
                }
                if bye_at.is_some_and(|t| t <= now) {
                    bump(&inner.stats.ws_byes);
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "Bye".into() }))).await;
                    break;
                }
            }
        }
    }
    if reset {
        // SO_LINGER 0 on the shared socket: closing it below sends RST, not FIN.
        if let Some(socket) = hard_close.take() {
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
    }
    drop(hard_close);
    reader.abort();
    drop(sink);
    let _ = events.send(Event::Detach { conn }).await;
}

/// The reading half: client frames cross the network (`inbound`), are metered at the gateway
/// and go to the session in order. `attach` is the Attach event when it arrived at once.
async fn read_client<S>(
    inner: Arc<Inner>,
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    events: mpsc::Sender<Event>,
    mut inbound: DelayLine<Event>,
    attach: Option<Event>,
) -> ReaderEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut knobs = inner.knobs.subscribe();
    // A resume that arrives while reading is stopped is served normally (see the knob).
    let exempt_from_stop = knobs.borrow_and_update().stop_reading;
    let mut meter = InboundMeter::default();
    let mut stopped = false;
    // The client closed (close frame, EOF): what it sent before still arrives, then the end.
    let mut closed = false;
    if let Some(attach) = attach {
        if events.send(attach).await.is_err() {
            return ReaderEnd::Closed;
        }
    }
    loop {
        while let Some(event) = inbound.arrived(Instant::now()) {
            if let Event::Frame { frame } = &event {
                if let Arrival::RateLimited = meter_arrival(&inner, &mut meter, frame) {
                    return ReaderEnd::RateLimited;
                }
            }
            if events.send(event).await.is_err() {
                return ReaderEnd::Closed;
            }
        }
        if closed && inbound.is_empty() {
            return ReaderEnd::Closed;
        }
        let stop = !exempt_from_stop && knobs.borrow_and_update().stop_reading;
        if stop && !stopped {
            bump(&inner.stats.reads_stopped);
        }
        stopped = stop;
        let read = !closed && !stopped && inbound.len() < IN_FLIGHT;
        let arrival = inbound.next_due();
        let incoming = tokio::select! {
            // `next` is cancel-safe (partial frames stay buffered).
            incoming = stream.next(), if read => incoming,
            // Re-check the stop knob.
            changed = knobs.changed() => {
                if changed.is_err() {
                    return ReaderEnd::Closed;
                }
                continue;
            }
            _ = sleep_until(arrival.unwrap_or_else(Instant::now)), if arrival.is_some() => continue,
        };
        match incoming {
            Some(Ok(Message::Binary(frame))) => {
                let event = Event::Frame { frame };
                if let Some(Event::Frame { frame }) =
                    inbound.send(Instant::now(), inner.one_way_delay(), event)
                {
                    if let Arrival::RateLimited = meter_arrival(&inner, &mut meter, &frame) {
                        return ReaderEnd::RateLimited;
                    }
                    if events.send(Event::Frame { frame }).await.is_err() {
                        return ReaderEnd::Closed;
                    }
                }
            }
            // Nothing but the first message is text; pings are answered by tungstenite.
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(_))) | None => closed = true,
            // A broken connection loses what was in flight.
            Some(Err(_)) => return ReaderEnd::Closed,
        }
    }
}

async fn open<S>(
    ws: &mut WebSocketStream<S>,
    session: &SessionShared,
) -> Result<OpenRequest, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let first = tokio::time::timeout(OPEN_TIMEOUT, ws.next())
        .await
        .map_err(|_| ChannelError::OpenTimeout)?;
    let text = match first {
        Some(Ok(Message::Text(text))) => text,
        _ => return Err(ChannelError::NotOpenMessage),
    };
    let open: OpenRequest = serde_json::from_str(&text).map_err(ChannelError::BadOpenMessage)?;
    if session.is_ended() {
        return Err(ChannelError::SessionOver);
    }
    if !session.take_token(&open.token_value) {
        return Err(ChannelError::BadToken);
    }
    Ok(open)
}
