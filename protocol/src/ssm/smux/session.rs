//! One smux session: the shared state behind one lock, the reader (with the per-stream and
//! session receive budgets), the writer and the keepalive tasks.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use super::codec::*;
use super::stream::Stream;
use super::{Config, SmuxError};

/// Streams opened by the peer but not yet accepted; smux uses the same backlog.
pub(crate) const ACCEPT_BACKLOG: usize = 1024;

/// Encoded bytes waiting for the writer task, over all streams, before writes get
/// back-pressure.
pub(crate) const WRITE_QUEUE_LIMIT: usize = 1024 * 1024;

/// The same per stream: small, so that what the writer hands on next is decided late, among
/// every stream that has something to send (see [`OutQueue`]).
pub(crate) const STREAM_QUEUE_LIMIT: usize = 64 * 1024;

/// Most bytes the writer takes from the queue per write.
const WRITE_BATCH: usize = 16 * 1024;

/// How much the reader asks the transport for at a time.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// A drained per-stream buffer larger than this is freed rather than kept for reuse, so that
/// a burst on one stream does not pin memory for the rest of its life.
pub(crate) const SHRINK_THRESHOLD: usize = 64 * 1024;

/// Which end of the session we are; decides the stream id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

/// Receive side of one stream, kept in the session so the reader task can fill it.
pub(crate) struct StreamState {
    /// Received, not yet read; counted against the session budget.
    pub(crate) buf: BytesMut,
    /// The peer sent FIN: reads return EOF once `buf` is drained, writes fail.
    pub(crate) peer_fin: bool,
    /// Any PSH payload arrived; "FIN before data" means the agent could not connect.
    pub(crate) received_data: bool,
    /// The task blocked reading this stream.
    pub(crate) read_waker: Option<Waker>,
    /// Where in the session's inbound byte stream the peer's FIN frame began, if it came.
    pub(crate) fin_at: Option<u64>,
    /// Since when `buf` has held at least `max_stream_buffer` bytes without the reader taking
    /// any of it (every read restarts it): the reader has stalled.
    pub(crate) full_since: Option<Instant>,
    /// Reset by [`Session::reset_stalled`]: buffer discarded, FIN sent, further data dropped.
    pub(crate) reset: bool,
}

impl StreamState {
    pub(crate) fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            peer_fin: false,
            received_data: false,
            read_waker: None,
            fin_at: None,
            full_since: None,
            reset: false,
        }
    }
}

/// Bytes a reset stream keeps readable (see [`Session::reset_stalled`]).
pub(crate) const RESET_KEEP: usize = 64 * 1024;

/// How many recent "FIN before any data" positions a session remembers (see
/// [`Session::empty_fin_offsets`]), and how many ids of streams dropped before any data.
pub(crate) const EMPTY_FIN_LOG: usize = 256;

/// Session state shared by the handle, the streams and the tasks, behind one lock: every
/// operation is short and none awaits while holding it.
pub(crate) struct State {
    /// Open streams by id, until the local `Stream` is dropped.
    pub(crate) streams: HashMap<u32, StreamState>,
    /// Last id this side allocated; the next one is two higher.
    pub(crate) last_id: u32,
    /// Why the session died; `None` while it is alive.
    pub(crate) closed: Option<SmuxError>,
    /// Bytes received but not read, over all streams (the v1 token bucket, inverted).
    pub(crate) buffered: usize,
    /// The reader is waiting for budget; silence from the peer is then expected.
    pub(crate) reader_starved: bool,
    /// When bytes last arrived from the transport, for the keepalive timeout.
    pub(crate) last_rx: Instant,
    /// Encoded frames for the writer task, in send order.
    pub(crate) out: OutQueue,
    /// Tasks waiting for room in `out`.
    pub(crate) write_waiters: Vec<Waker>,
    /// Inbound bytes consumed before the frame being handled: the position of every frame
    /// in the session's inbound byte stream.
    pub(crate) rx_offset: u64,
    /// Positions of recent peer FINs that came before any data on their stream, oldest first,
    /// including FINs for streams already dropped here without data (at most
    /// [`EMPTY_FIN_LOG`]).
    pub(crate) empty_fins: VecDeque<u64>,
    /// Streams dropped here before any data arrived and before the peer's FIN, so that FIN
    /// still counts as "before any data" (at most [`EMPTY_FIN_LOG`]).
    pub(crate) dropped_empty: VecDeque<u32>,
}

impl State {
    /// Remembers an empty FIN at `offset`, forgetting the oldest beyond the log's size.
    fn log_empty_fin(&mut self, offset: u64) {
        if self.empty_fins.len() >= EMPTY_FIN_LOG {
            self.empty_fins.pop_front();
        }
        self.empty_fins.push_back(offset);
    }

    /// A stream dropped here: if nothing arrived on it yet, its FIN may still come.
    pub(crate) fn note_dropped(&mut self, id: u32, stream: &StreamState) {
        if stream.received_data || stream.peer_fin {
            return;
        }
        if self.dropped_empty.len() >= EMPTY_FIN_LOG {
            self.dropped_empty.pop_front();
        }
        self.dropped_empty.push_back(id);
    }
}

/// What the session handle, streams and tasks share.
pub(crate) struct Shared {
    /// Validated settings, fixed for the session's life.
    pub(crate) config: Config,
    /// Everything mutable; see [`State`].
    pub(crate) state: Mutex<State>,
    /// Tells the reader that reads freed some receive budget.
    pub(crate) budget_freed: Notify,
    /// Tells the writer that `out` has frames (or the session closed).
    pub(crate) write_ready: Notify,
    /// Publishes the first fatal error to tasks and to `Session::closed`.
    pub(crate) closed_tx: watch::Sender<Option<SmuxError>>,
    /// Whether the keepalive task sends NOPs now (see [`Session::set_keepalive`]).
    pub(crate) keepalive_on: std::sync::atomic::AtomicBool,
    /// Bumped on every [`Session::reset_stalled`] that reset a stream; wakes [`ResetWatch`]es.
    pub(crate) resets: watch::Sender<u64>,
}

impl Shared {
    /// Nothing panics while holding the lock, but a poisoned lock must not take the proxy down.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Kills the session with its first error and wakes everything that could be waiting on it.
    pub(crate) fn fail(&self, err: SmuxError) {
        let wakers: Vec<Waker> = {
            let mut st = self.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(err.clone());
            st.out.clear();
            let mut wakers = std::mem::take(&mut st.write_waiters);
            wakers.extend(st.streams.values_mut().filter_map(|s| s.read_waker.take()));
            wakers
        };
        match &err {
            SmuxError::ClosedLocally => tracing::debug!("smux session closed locally"),
            other => tracing::debug!(reason = ?other, "smux session closed"),
        }
        for waker in wakers {
            waker.wake();
        }
        self.write_ready.notify_one();
        self.budget_freed.notify_one();
        self.closed_tx.send_replace(Some(err));
    }

    /// Waits for room in the outgoing queue (for `stream_id`'s frames, if given) and returns
    /// the locked state to push into, so the check and the push are one step.
    pub(crate) fn poll_queue_space(
        &self,
        cx: &mut Context<'_>,
        stream_id: Option<u32>,
    ) -> Poll<Result<MutexGuard<'_, State>, SmuxError>> {
        let mut st = self.lock();
        if let Some(cause) = &st.closed {
            return Poll::Ready(Err(SmuxError::session_closed(cause)));
        }
        let stream_room = stream_id.is_none_or(|id| st.out.stream_len(id) < STREAM_QUEUE_LIMIT);
        if stream_room && st.out.len() < WRITE_QUEUE_LIMIT {
            return Poll::Ready(Ok(st));
        }
        if !st.write_waiters.iter().any(|w| w.will_wake(cx.waker())) {
            st.write_waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Queues a control frame once there is room.
    pub(crate) async fn send_control(&self, cmd: Cmd, stream_id: u32) -> Result<(), SmuxError> {
        poll_fn(|cx| {
            let mut st = ready!(self.poll_queue_space(cx, Some(stream_id)))?;
            st.out.push(cmd, stream_id, &[]);
            Poll::Ready(Ok::<(), SmuxError>(()))
        })
        .await?;
        self.write_ready.notify_one();
        Ok(())
    }

    /// Lets the reader re-check its budget if it was waiting; called after bytes left a buffer.
    pub(crate) fn wake_reader_if_budget(&self, st: &State) {
        if st.reader_starved {
            self.budget_freed.notify_one();
        }
    }
}

/// One smux session over one transport, with its reader, writer and keepalive tasks.
///
/// Dropping the `Session` closes it, which ends every stream; keep it (e.g. in an `Arc`) for as
/// long as its streams are in use.
pub struct Session {
    /// State shared with the streams and the session's tasks.
    pub(crate) shared: Arc<Shared>,
    /// Only for `Debug`: which side of the protocol this is.
    pub(crate) role: Role,
    /// Streams the peer opened; behind an async lock because `accept_stream` takes `&self`.
    pub(crate) accept_rx: tokio::sync::Mutex<mpsc::Receiver<Stream>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("closed", &self.close_reason())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Starts the client side (the SSM plugin's role): opens streams with odd ids 3, 5, 7, …
    ///
    /// Must be called inside a Tokio runtime, which runs the session's tasks.
    ///
    /// # Errors
    ///
    /// Only an invalid `config` (see [`Config::validate`]).
    pub fn client<T>(transport: T, config: Config) -> Result<Session, SmuxError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Session::start(transport, config, Role::Client)
    }

    /// Starts the server side (the SSM agent's role): accepts the peer's streams.
    ///
    /// Must be called inside a Tokio runtime, which runs the session's tasks.
    ///
    /// # Errors
    ///
    /// Only an invalid `config` (see [`Config::validate`]).
    pub fn server<T>(transport: T, config: Config) -> Result<Session, SmuxError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Session::start(transport, config, Role::Server)
    }

    pub(crate) fn start<T>(transport: T, config: Config, role: Role) -> Result<Session, SmuxError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        config.validate()?;
        let (closed_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                streams: HashMap::new(),
                // smux starts its counter at 1 (client) or 0 (server) and adds 2 before use.
                last_id: match role {
                    Role::Client => 1,
                    Role::Server => 0,
                },
                closed: None,
                buffered: 0,
                reader_starved: false,
                last_rx: Instant::now(),
                out: OutQueue::default(),
                write_waiters: Vec::new(),
                rx_offset: 0,
                empty_fins: VecDeque::new(),
                dropped_empty: VecDeque::new(),
            }),
            config,
            budget_freed: Notify::new(),
            write_ready: Notify::new(),
            closed_tx,
            keepalive_on: std::sync::atomic::AtomicBool::new(true),
            resets: watch::Sender::new(0),
        });
        let (accept_tx, accept_rx) = mpsc::channel(ACCEPT_BACKLOG);
        let (read_half, write_half) = tokio::io::split(transport);

        tokio::spawn(run_until_closed(shared.closed_tx.subscribe(), {
            let shared = shared.clone();
            async move {
                let Err(err) = read_loop(&shared, read_half, accept_tx).await;
                shared.fail(err);
            }
        }));
        tokio::spawn(run_until_closed(shared.closed_tx.subscribe(), {
            let shared = shared.clone();
            async move {
                if let Err(err) = write_loop(&shared, write_half).await {
                    shared.fail(err);
                }
            }
        }));
        let (interval, timeout) = (
            shared.config.keepalive_interval,
            shared.config.keepalive_timeout,
        );
        if interval.is_some() || timeout.is_some() {
            tokio::spawn(run_until_closed(shared.closed_tx.subscribe(), {
                let shared = shared.clone();
                async move { keepalive_loop(&shared, interval, timeout).await }
            }));
        }

        Ok(Session {
            shared,
            role,
            accept_rx: tokio::sync::Mutex::new(accept_rx),
        })
    }

    /// Opens a new stream by sending SYN. The peer learns of it only when the SYN arrives, so a
    /// dial failure on the agent side shows up later as FIN before any data.
    ///
    /// # Errors
    ///
    /// [`SmuxError::SessionClosed`] (with the cause) once the session is dead, and
    /// [`SmuxError::StreamIdsExhausted`] after about two billion streams.
    pub async fn open_stream(&self) -> Result<Stream, SmuxError> {
        let id = {
            let mut st = self.shared.lock();
            if let Some(cause) = &st.closed {
                return Err(SmuxError::session_closed(cause));
            }
            let mut id = st.last_id;
            loop {
                id = id.checked_add(2).ok_or(SmuxError::StreamIdsExhausted)?;
                // Only a misbehaving peer can have taken an id of our parity; skip it.
                if !st.streams.contains_key(&id) {
                    break;
                }
            }
            st.last_id = id;
            // Registered before the SYN goes out, so an immediate reply is not discarded.
            st.streams.insert(id, StreamState::new());
            id
        };
        // Created before the await: if this future is dropped, the stream's drop cleans up.
        let stream = Stream::new(self.shared.clone(), id);
        self.shared.send_control(Cmd::Syn, id).await?;
        Ok(stream)
    }

    /// Waits for the next stream the peer opens. `None` once the session is closed.
    pub async fn accept_stream(&self) -> Option<Stream> {
        if self.is_closed() {
            return None;
        }
        let mut closed = self.shared.closed_tx.subscribe();
        let mut accept_rx = self.accept_rx.lock().await;
        tokio::select! {
            stream = accept_rx.recv() => stream,
            _ = closed.wait_for(Option::is_some) => None,
        }
    }

    /// Closes the session at once: streams fail, queued frames are dropped and the transport is
    /// released. Like smux, no FINs are sent; the peer sees the transport end.
    pub fn close(&self) {
        self.shared.fail(SmuxError::ClosedLocally);
    }

    /// Whether the session has died, for any reason.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Why the session died, or `None` while it is alive.
    pub fn close_reason(&self) -> Option<SmuxError> {
        self.shared.lock().closed.clone()
    }

    /// Waits until the session dies and returns why.
    pub async fn closed(&self) -> SmuxError {
        let mut closed = self.shared.closed_tx.subscribe();
        let reason = match closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The sender lives in `self.shared`, so this cannot happen while `self` exists.
            Err(_) => None,
        };
        reason.unwrap_or(SmuxError::ClosedLocally)
    }

    /// Streams whose local handle still exists (including ones the peer has closed).
    pub fn num_streams(&self) -> usize {
        self.shared.lock().streams.len()
    }

    /// Whether a stream's consumer has fallen `max_stream_buffer` behind, or the reader is
    /// stopped at the session budget. New streams belong on another session.
    pub fn is_congested(&self) -> bool {
        let st = self.shared.lock();
        st.reader_starved
            || st
                .streams
                .values()
                .any(|s| s.buf.len() >= self.shared.config.max_stream_buffer)
    }

    /// Turns the NOP keepalive on or off (it starts on when `keepalive_interval` is set). In SSM
    /// a NOP is stream data, which keeps the session from its idle timeout: send them only
    /// while streams are open.
    pub fn set_keepalive(&self, on: bool) {
        self.shared
            .keepalive_on
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes received but not yet read, over all streams; for metrics and tests of the budget.
    pub fn buffered_bytes(&self) -> usize {
        self.shared.lock().buffered
    }

    /// Resets every stream that has held at least `max_stream_buffer` unread bytes for
    /// `stalled_for` or longer: its buffered data is discarded but for the first 64 KiB
    /// (freeing the session budget, so the other streams go on), FIN is sent (the peer closes
    /// its end), data still arriving for it is dropped, and once the kept bytes are read its
    /// reads fail with [`SmuxError::StreamReset`]. smux v1 has no flow
    /// control, so this is the only way to stop one reader that stopped from holding up all.
    /// Returns the id and discarded bytes of each stream reset now.
    pub fn reset_stalled(&self, stalled_for: Duration) -> Vec<(u32, usize)> {
        let now = Instant::now();
        let mut wakers = Vec::new();
        let reset = {
            let mut st = self.shared.lock();
            if st.closed.is_some() {
                return Vec::new();
            }
            let due: Vec<u32> = st
                .streams
                .iter()
                .filter(|(_, s)| {
                    !s.reset
                        && s.full_since
                            .is_some_and(|t| now.saturating_duration_since(t) >= stalled_for)
                })
                .map(|(id, _)| *id)
                .collect();
            let mut reset = Vec::with_capacity(due.len());
            for id in due {
                let Some(s) = st.streams.get_mut(&id) else {
                    continue;
                };
                // The first bytes stay readable: what the reader needs to finish the message it
                // is in the middle of, in any protocol with small messages.
                let keep = s.buf.len().min(RESET_KEEP);
                let dropped = s.buf.len() - keep;
                s.buf = BytesMut::from(&s.buf[..keep]);
                s.reset = true;
                s.full_since = None;
                wakers.extend(s.read_waker.take());
                st.buffered = st.buffered.saturating_sub(dropped);
                // Past the queue limit on purpose, as on drop: a FIN is 8 bytes.
                st.out.push(Cmd::Fin, id, &[]);
                reset.push((id, dropped));
            }
            reset
        };
        if !reset.is_empty() {
            self.shared.budget_freed.notify_one();
            self.shared.write_ready.notify_one();
            self.shared.resets.send_modify(|n| *n += 1);
        }
        for waker in wakers {
            waker.wake();
        }
        reset
    }

    /// Where recent peer FINs that came before any data on their stream began in the inbound
    /// byte stream, oldest first (the last [`EMPTY_FIN_LOG`]), whether or not the stream was
    /// still open here. The SSM agent's ConnectToPortError flag precedes such a FIN.
    pub fn empty_fin_offsets(&self) -> Vec<u64> {
        self.shared.lock().empty_fins.iter().copied().collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// Waits for one stream to be reset by [`Session::reset_stalled`], apart from the stream itself
/// (which may be wrapped, e.g. in TLS, where its read error is not seen until someone reads).
#[derive(Clone)]
pub struct ResetWatch {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u32,
}

impl fmt::Debug for ResetWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResetWatch").field("id", &self.id).finish()
    }
}

impl ResetWatch {
    /// Whether the stream has been reset.
    pub fn is_reset(&self) -> bool {
        self.shared
            .lock()
            .streams
            .get(&self.id)
            .is_some_and(|s| s.reset)
    }

    /// Resolves once the stream is reset; never if it ends another way.
    pub async fn reset(&self) {
        let mut resets = self.shared.resets.subscribe();
        loop {
            if self.is_reset() {
                return;
            }
            if resets.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Runs a session task until it finishes or the session closes, whichever comes first, so no
/// task outlives its session.
pub(crate) async fn run_until_closed(
    mut closed: watch::Receiver<Option<SmuxError>>,
    task: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        () = task => {}
        _ = closed.wait_for(Option::is_some) => {}
    }
}

/// Reads frames until the transport ends or breaks the protocol; only returns with the error.
pub(crate) async fn read_loop<R>(
    shared: &Arc<Shared>,
    mut transport: R,
    accept_tx: mpsc::Sender<Stream>,
) -> Result<Infallible, SmuxError>
where
    R: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        while buf.len() < HEADER_LEN {
            read_more(shared, &mut transport, &mut buf).await?;
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&buf[..HEADER_LEN]);
        let header = Header::decode(raw)?;

        let frame_len = HEADER_LEN + usize::from(header.len);
        while buf.len() < frame_len {
            read_more(shared, &mut transport, &mut buf).await?;
        }
        if header.cmd == Cmd::Psh && header.len > 0 {
            wait_for_budget(shared).await;
        }
        handle_frame(shared, &accept_tx, header, &buf[HEADER_LEN..frame_len]).await?;
        buf.advance(frame_len);
        shared.lock().rx_offset += frame_len as u64;
    }
}

/// Reads whatever the transport has; a clean EOF is only clean between frames.
pub(crate) async fn read_more<R>(
    shared: &Shared,
    transport: &mut R,
    buf: &mut BytesMut,
) -> Result<(), SmuxError>
where
    R: AsyncRead + Unpin,
{
    buf.reserve(READ_CHUNK);
    let n = transport.read_buf(buf).await?;
    if n == 0 {
        return Err(if buf.is_empty() {
            SmuxError::TransportClosed
        } else {
            SmuxError::TruncatedFrame
        });
    }
    shared.lock().last_rx = Instant::now();
    Ok(())
}

/// Blocks the reader while the session budget is used up (the v1 head-of-line blocking).
pub(crate) async fn wait_for_budget(shared: &Shared) {
    loop {
        {
            let mut st = shared.lock();
            if st.buffered < shared.config.max_receive_buffer {
                if st.reader_starved {
                    // The peer may have been held back by us; give it a full timeout from now.
                    st.reader_starved = false;
                    st.last_rx = Instant::now();
                }
                return;
            }
            st.reader_starved = true;
        }
        // A notify_one between the check and here leaves a permit, so no wakeup is lost.
        shared.budget_freed.notified().await;
    }
}

pub(crate) async fn handle_frame(
    shared: &Arc<Shared>,
    accept_tx: &mpsc::Sender<Stream>,
    header: Header,
    payload: &[u8],
) -> Result<(), SmuxError> {
    let id = header.stream_id;
    match header.cmd {
        Cmd::Nop => {}
        Cmd::Syn => {
            {
                let mut st = shared.lock();
                if st.streams.contains_key(&id) {
                    tracing::trace!(stream = id, "smux SYN for an id in use ignored");
                    return Ok(());
                }
                st.streams.insert(id, StreamState::new());
            }
            // Built outside the lock: dropping a Stream takes the lock.
            let stream = Stream::new(shared.clone(), id);
            if let Err(err) = accept_tx.try_send(stream) {
                let refused_backlog = matches!(err, mpsc::error::TrySendError::Full(_));
                // Dropping the stream removes it and queues its FIN.
                drop(err);
                if refused_backlog {
                    // smux would stall the reader here; refusing keeps other streams moving.
                    tracing::warn!(stream = id, "smux accept backlog full, stream refused");
                    // A peer flooding SYNs must not grow our outgoing queue without bound.
                    poll_fn(|cx| shared.poll_queue_space(cx, None).map_ok(drop)).await?;
                }
            }
        }
        Cmd::Fin => {
            let waker = {
                let mut st = shared.lock();
                let offset = st.rx_offset;
                let (empty, waker) = match st.streams.get_mut(&id) {
                    Some(s) if !s.peer_fin => {
                        s.peer_fin = true;
                        s.fin_at = Some(offset);
                        (!s.received_data, s.read_waker.take())
                    }
                    Some(_) => (false, None),
                    None => match st.dropped_empty.iter().position(|d| *d == id) {
                        Some(i) => {
                            st.dropped_empty.remove(i);
                            (true, None)
                        }
                        None => (false, None),
                    },
                };
                if empty {
                    st.log_empty_fin(offset);
                }
                waker
            };
            match waker {
                Some(waker) => waker.wake(),
                None => tracing::trace!(stream = id, "smux FIN for unknown stream ignored"),
            }
        }
        Cmd::Psh => {
            if payload.is_empty() {
                return Ok(());
            }
            let waker = {
                let mut st = shared.lock();
                let cap = shared.config.max_stream_buffer;
                match st.streams.get_mut(&id) {
                    // Reset: the peer does not know yet (no flow control in v1); drop it.
                    Some(s) if s.reset => None,
                    Some(s) => {
                        s.buf.extend_from_slice(payload);
                        s.received_data = true;
                        if s.buf.len() >= cap && s.full_since.is_none() {
                            s.full_since = Some(Instant::now());
                        }
                        let waker = s.read_waker.take();
                        st.buffered += payload.len();
                        waker
                    }
                    None => {
                        tracing::trace!(
                            stream = id,
                            len = payload.len(),
                            "smux data for unknown stream discarded"
                        );
                        None
                    }
                }
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
    Ok(())
}

/// Writes queued frames in order; flushes the transport whenever the queue runs dry.
pub(crate) async fn write_loop<W>(shared: &Shared, mut transport: W) -> Result<(), SmuxError>
where
    W: AsyncWrite + Unpin,
{
    let mut sending = BytesMut::new();
    loop {
        let waiters = {
            let mut st = shared.lock();
            if st.closed.is_some() {
                return Ok(());
            }
            sending.clear();
            st.out.take(&mut sending, WRITE_BATCH);
            std::mem::take(&mut st.write_waiters)
        };
        for waker in waiters {
            waker.wake();
        }
        if sending.is_empty() {
            transport.flush().await?;
            shared.write_ready.notified().await;
        } else {
            transport.write_all(&sending).await?;
        }
    }
}

/// Sends NOPs and enforces the keepalive timeout; returns after failing the session.
pub(crate) async fn keepalive_loop(
    shared: &Shared,
    interval: Option<Duration>,
    timeout: Option<Duration>,
) {
    let mut ticker = interval.map(|period| {
        // smux's first NOP goes out one interval after start, not immediately.
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    loop {
        let deadline = timeout.map(|t| shared.lock().last_rx + t);
        tokio::select! {
            () = tick(&mut ticker) => {
                let queued = {
                    let on = shared.keepalive_on.load(std::sync::atomic::Ordering::Relaxed);
                    let mut st = shared.lock();
                    // Frames already queued tell the peer we are alive; a stalled writer is not
                    // helped by piling NOPs behind it.
                    if on && st.closed.is_none() && st.out.is_empty() {
                        st.out.push(Cmd::Nop, 0, &[]);
                        true
                    } else {
                        false
                    }
                };
                if queued {
                    shared.write_ready.notify_one();
                }
            }
            () = crate::ssm::sleep_opt(deadline) => {
                let (Some(timeout), now) = (timeout, Instant::now()) else { continue };
                let expired = {
                    let mut st = shared.lock();
                    if st.reader_starved {
                        // We stopped reading; the peer's silence is our own back-pressure.
                        st.last_rx = now;
                        false
                    } else {
                        now >= st.last_rx + timeout
                    }
                };
                if expired {
                    shared.fail(SmuxError::KeepaliveTimeout(timeout));
                    return;
                }
            }
        }
    }
}

pub(crate) async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}
