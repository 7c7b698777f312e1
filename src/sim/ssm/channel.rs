//! One data channel WebSocket as MGS serves it (`ssm-protocol.md` §1.2): the OpenDataChannel
//! text frame with a single-use token, then binary frames relayed to and from the session task,
//! plus the connection faults (abrupt kill after N messages or T seconds, `1000 Bye`), the
//! gateway's inbound rate limit and a reader that stops reading.

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
    if events.send(attach).await.is_err() {
        return;
    }
    let opened = Instant::now();
    let mut knobs = inner.knobs.subscribe();
    let mut shutdown = inner.shutdown.subscribe();
    // Reading and writing run independently, as MGS does: a peer that is busy writing to us
    // must never find us blocked writing to it (both TCP buffers full = deadlock).
    let (mut sink, mut stream) = futures_util::StreamExt::split(ws);
    let reader_events = events.clone();
    let reader_inner = inner.clone();
    let mut reader = tokio::spawn(async move {
        let inner = reader_inner;
        let mut knobs = inner.knobs.subscribe();
        // A resume that arrives while reading is stopped is served normally (see the knob).
        let exempt_from_stop = knobs.borrow_and_update().stop_reading;
        let mut meter = InboundMeter::default();
        loop {
            if !exempt_from_stop && knobs.borrow_and_update().stop_reading {
                bump(&inner.stats.reads_stopped);
                if knobs.wait_for(|o| !o.stop_reading).await.is_err() {
                    return ReaderEnd::Closed;
                }
            }
            let incoming = tokio::select! {
                incoming = stream.next() => incoming,
                // Re-check the stop knob; `next` is cancel-safe (partial frames stay buffered).
                changed = knobs.changed() => {
                    if changed.is_err() {
                        return ReaderEnd::Closed;
                    }
                    continue;
                }
            };
            let Some(incoming) = incoming else {
                return ReaderEnd::Closed;
            };
            match incoming {
                Ok(Message::Binary(frame)) => {
                    if is_client_data(&frame) {
                        bump(&inner.stats.client_data_messages);
                        let in_window = meter.record(Instant::now());
                        inner
                            .stats
                            .peak_client_msgs_per_sec
                            .fetch_max(in_window, Ordering::Relaxed);
                        let limit = inner.knobs.read(|o| o.client_rate_limit);
                        if limit.is_some_and(|n| in_window > u64::from(n)) {
                            return ReaderEnd::RateLimited;
                        }
                    }
                    if reader_events.send(Event::Frame { frame }).await.is_err() {
                        return ReaderEnd::Closed;
                    }
                }
                // Nothing but the first message is text; pings are answered by tungstenite.
                Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) | Err(_) => return ReaderEnd::Closed,
            }
        }
    });
    // Whether the connection ends abruptly (TCP reset) rather than with a close or EOF.
    let mut reset = false;
    loop {
        if *shutdown.borrow_and_update() {
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "".into(),
                })))
                .await;
            break;
        }
        let (kill_after, bye_after) = inner.knobs.read(|o| (o.kill_ws_after, o.bye_after));
        let kill_at = kill_after.map(|d| opened + d);
        let bye_at = bye_after.map(|d| opened + d);
        let wake_at = kill_at.into_iter().chain(bye_at).min();
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
            out = out_rx.recv() => match out {
                Some(WsOut::Binary(frame) | WsOut::Replay(frame)) => {
                    if sink.send(Message::Binary(frame)).await.is_err() {
                        break;
                    }
                }
                // The session counts what the kill knob counts (it knows which messages are new).
                // An abrupt end: the connection is dropped without a close frame.
                Some(WsOut::Kill) => {
                    reset = true;
                    break;
                }
                Some(WsOut::Close { code, reason }) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() }))).await;
                    break;
                }
                // Replaced by a newer connection for the same session.
                None => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            },
            _ = knobs.changed() => {}
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
