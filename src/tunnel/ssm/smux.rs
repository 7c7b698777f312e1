//! smux protocol version 1 (wire compatible with xtaci/smux v1): many byte streams over one transport.
//!
//! In SSM port-forwarding *mux* mode the plugin (smux client) and the agent (smux server) speak
//! xtaci/smux v1 over the data channel, and every Postgres connection becomes one smux stream.
//! This module owns that layer: framing, stream ids, per-stream buffering, flow control and keepalive.
//! The transport is treated purely as a byte stream; data channel message boundaries have nothing to
//! do with frame boundaries, so a frame may arrive split at any byte.
//!
//! # Wire format
//!
//! Every frame is an 8-byte header followed by `length` bytes of data (PSH only):
//!
//! | bytes | field     | encoding                                            |
//! |------:|-----------|-----------------------------------------------------|
//! | 0     | version   | always 1                                            |
//! | 1     | cmd       | SYN 0, FIN 1, PSH 2, NOP 3 (UPD 4 is v2: rejected)   |
//! | 2–3   | length    | u16 little-endian                                   |
//! | 4–7   | stream id | u32 little-endian (NOP uses 0)                      |
//!
//! # Semantics (matching xtaci/smux v1)
//!
//! - The client allocates odd stream ids 3, 5, 7, … (a server that opens streams uses 2, 4, …).
//!   A SYN for an id already in use is ignored; data and FIN for unknown ids are discarded, because
//!   they are normal right after a local close.
//! - There is no half-close: FIN closes the stream both ways. After the peer's FIN, reads drain
//!   what was buffered and then return EOF, and writes fail with `BrokenPipe` (smux returns
//!   `io.EOF`). After our own FIN (`poll_shutdown`), reads keep working until the peer's FIN
//!   arrives, so a relay that shuts down one direction still sees the other one finish.
//! - Flow control is one session-wide budget of `max_receive_buffer` bytes received but not yet read.
//!   When it is used up the reader stops reading the transport until some stream consumer reads.
//!   So **one slow stream stalls every stream** (head-of-line blocking). That is how v1 works; v2's
//!   per-stream windows would fix it, but the AWS agent and plugin only speak v1. Memory stays
//!   bounded: at most `max_receive_buffer` plus one frame is buffered.
//! - Keepalive: a NOP every `keepalive_interval`; the session dies if nothing arrived for
//!   `keepalive_timeout`, except while the receive budget is exhausted (then silence is our fault).
//! - Malformed input (bad version, unknown command, a payload on a control frame, a frame cut off
//!   by EOF) closes the whole session with an error; nothing here panics on peer bytes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// The only protocol version we speak; the AWS agent and plugin negotiate nothing else.
pub const VERSION: u8 = 1;

/// Size of every frame header.
pub const HEADER_LEN: usize = 8;

/// Largest payload the 16-bit length field can describe; also smux's cap on `MaxFrameSize`.
pub const MAX_FRAME_SIZE_LIMIT: usize = u16::MAX as usize;

/// Streams opened by the peer but not yet accepted; smux uses the same backlog.
const ACCEPT_BACKLOG: usize = 1024;

/// Encoded bytes waiting for the writer task before stream writes get back-pressure.
/// Large enough for a few maximum frames, small next to the 4 MiB receive budget.
const WRITE_QUEUE_LIMIT: usize = 256 * 1024;

/// How much the reader asks the transport for at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A drained per-stream buffer larger than this is freed rather than kept for reuse, so that
/// a burst on one stream does not pin memory for the rest of its life.
const SHRINK_THRESHOLD: usize = 64 * 1024;

/// Tuning knobs; `Default` gives smux's `DefaultConfig()` values, which both AWS sides use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Send a NOP this often. `None` sends none, which lets the SSM idle timeout end an unused
    /// session (NOPs are data to SSM and keep the session alive forever).
    pub keepalive_interval: Option<Duration>,
    /// Close the session when no bytes at all arrived for this long. `None` never times out;
    /// use it when the peer has its keepalive disabled.
    pub keepalive_timeout: Option<Duration>,
    /// Largest PSH payload we send (1..=65535). Received frames may be up to 65535 regardless,
    /// as a peer with another setting is still speaking valid smux.
    pub max_frame_size: usize,
    /// Session-wide cap on bytes received but not yet read by stream consumers.
    pub max_receive_buffer: usize,
    /// Per-stream cap on bytes received but not yet read. smux v1 has no per-stream window, so
    /// when a frame arrives for a stream at its cap the reader stops (every stream waits, and
    /// [`Session::is_congested`] says so); but a stalled stream can never hold more than this,
    /// and frames for other streams pass until one for the stalled stream comes next.
    pub max_stream_buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Some(Duration::from_secs(30)),
            max_frame_size: 32 * 1024,
            max_receive_buffer: 4 * 1024 * 1024,
            max_stream_buffer: 4 * 1024 * 1024,
        }
    }
}

impl Config {
    /// Checks the same constraints as smux's `VerifyConfig`.
    ///
    /// # Errors
    ///
    /// [`SmuxError::InvalidConfig`] naming the broken rule, or [`SmuxError::FrameTooLarge`] for a
    /// `max_frame_size` above 65535.
    pub fn validate(&self) -> Result<(), SmuxError> {
        if self.keepalive_interval == Some(Duration::ZERO) {
            return Err(SmuxError::InvalidConfig(
                "keepalive_interval must be positive",
            ));
        }
        if self.keepalive_timeout == Some(Duration::ZERO) {
            return Err(SmuxError::InvalidConfig(
                "keepalive_timeout must be positive",
            ));
        }
        if let (Some(interval), Some(timeout)) = (self.keepalive_interval, self.keepalive_timeout) {
            if interval > timeout {
                return Err(SmuxError::InvalidConfig(
                    "keepalive_interval must not exceed keepalive_timeout",
                ));
            }
        }
        if self.max_frame_size == 0 {
            return Err(SmuxError::InvalidConfig("max_frame_size must be positive"));
        }
        if self.max_frame_size > MAX_FRAME_SIZE_LIMIT {
            return Err(SmuxError::FrameTooLarge {
                len: self.max_frame_size,
                max: MAX_FRAME_SIZE_LIMIT,
            });
        }
        if self.max_stream_buffer == 0 {
            return Err(SmuxError::InvalidConfig("max_stream_buffer must be positive"));
        }
        if self.max_receive_buffer == 0 {
            return Err(SmuxError::InvalidConfig(
                "max_receive_buffer must be positive",
            ));
        }
        Ok(())
    }
}

/// Everything that can go wrong in the smux layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SmuxError {
    /// The configuration breaks one of smux's rules.
    #[error("invalid smux config: {0}")]
    InvalidConfig(&'static str),
    /// The peer speaks another protocol version (or the byte stream is out of sync).
    #[error("peer sent smux version {0}, expected 1")]
    BadVersion(u8),
    /// The peer sent a command v1 does not have (UPD, 4, is v2 only).
    #[error("peer sent unknown smux command {0}")]
    InvalidCommand(u8),
    /// A SYN, FIN or NOP carried a length; smux never sends that, so the stream is out of sync.
    #[error("peer sent a {cmd:?} frame with length {len}, expected 0")]
    UnexpectedPayload {
        /// The control command that carried the length.
        cmd: Cmd,
        /// The length it carried.
        len: u16,
    },
    /// A frame size above what the 16-bit length field can carry.
    #[error("frame size {len} exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The requested size.
        len: usize,
        /// The largest allowed size.
        max: usize,
    },
    /// Nothing arrived from the peer within the keepalive timeout.
    #[error("no smux data received for {0:?}")]
    KeepaliveTimeout(Duration),
    /// Reading or writing the transport failed.
    #[error("smux transport I/O failed")]
    Io(#[source] Arc<io::Error>),
    /// The transport ended cleanly between frames.
    #[error("smux transport closed by peer")]
    TransportClosed,
    /// The transport ended in the middle of a frame.
    #[error("smux transport closed by peer in the middle of a frame")]
    TruncatedFrame,
    /// [`Session::close`] was called or the [`Session`] was dropped.
    #[error("smux session closed locally")]
    ClosedLocally,
    /// An operation on a session that already died; the source says why it died.
    #[error("smux session is closed")]
    SessionClosed(#[source] Box<SmuxError>),
    /// All stream ids of this session have been used; smux calls this `ErrGoAway`.
    #[error("smux stream ids exhausted, a new session is needed")]
    StreamIdsExhausted,
}

impl SmuxError {
    /// Wraps the reason a session died for an operation attempted afterwards.
    fn session_closed(cause: &SmuxError) -> SmuxError {
        SmuxError::SessionClosed(Box::new(cause.clone()))
    }

    /// The error that killed the session, looking through [`SmuxError::SessionClosed`].
    pub fn root_cause(&self) -> &SmuxError {
        match self {
            SmuxError::SessionClosed(cause) => cause.root_cause(),
            other => other,
        }
    }

    /// The `io::ErrorKind` a stream read or write reports when its session died of this.
    fn io_kind(&self) -> io::ErrorKind {
        match self.root_cause() {
            SmuxError::Io(err) => err.kind(),
            SmuxError::TransportClosed | SmuxError::TruncatedFrame => {
                io::ErrorKind::ConnectionReset
            }
            SmuxError::KeepaliveTimeout(_) => io::ErrorKind::TimedOut,
            SmuxError::BadVersion(_)
            | SmuxError::InvalidCommand(_)
            | SmuxError::UnexpectedPayload { .. } => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::ConnectionAborted,
        }
    }

    /// Stream I/O reports session death as an `io::Error` that keeps this error as its source.
    fn into_io(self) -> io::Error {
        io::Error::new(self.io_kind(), self)
    }
}

impl From<io::Error> for SmuxError {
    fn from(err: io::Error) -> Self {
        SmuxError::Io(Arc::new(err))
    }
}

/// Frame commands of protocol version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// Open a stream.
    Syn = 0,
    /// Close a stream (both directions).
    Fin = 1,
    /// Stream data.
    Psh = 2,
    /// Keepalive; carries nothing.
    Nop = 3,
}

impl Cmd {
    fn from_byte(byte: u8) -> Option<Cmd> {
        match byte {
            0 => Some(Cmd::Syn),
            1 => Some(Cmd::Fin),
            2 => Some(Cmd::Psh),
            3 => Some(Cmd::Nop),
            _ => None,
        }
    }
}

/// A decoded frame header; the version byte is implied, as only version 1 decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// What the frame does.
    cmd: Cmd,
    /// Payload length; only PSH may have one.
    len: u16,
    /// The stream it belongs to; 0 for NOP.
    stream_id: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let len = self.len.to_le_bytes();
        let id = self.stream_id.to_le_bytes();
        [
            VERSION,
            self.cmd as u8,
            len[0],
            len[1],
            id[0],
            id[1],
            id[2],
            id[3],
        ]
    }

    /// Rejects anything smux v1 would not send, so a desynchronised byte stream fails fast
    /// instead of being read as garbage frames.
    fn decode(bytes: [u8; HEADER_LEN]) -> Result<Header, SmuxError> {
        if bytes[0] != VERSION {
            return Err(SmuxError::BadVersion(bytes[0]));
        }
        let cmd = Cmd::from_byte(bytes[1]).ok_or(SmuxError::InvalidCommand(bytes[1]))?;
        let len = u16::from_le_bytes([bytes[2], bytes[3]]);
        let stream_id = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if cmd != Cmd::Psh && len != 0 {
            return Err(SmuxError::UnexpectedPayload { cmd, len });
        }
        Ok(Header {
            cmd,
            len,
            stream_id,
        })
    }
}

/// Appends one encoded frame to the outgoing queue. Callers keep `data` within the frame limit.
fn put_frame(out: &mut BytesMut, cmd: Cmd, stream_id: u32, data: &[u8]) {
    debug_assert!(data.len() <= MAX_FRAME_SIZE_LIMIT);
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    out.put_slice(
        &Header {
            cmd,
            len,
            stream_id,
        }
        .encode(),
    );
    out.put_slice(&data[..usize::from(len)]);
}

/// Which end of the session we are; decides the stream id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

/// Receive side of one stream, kept in the session so the reader task can fill it.
struct StreamState {
    /// Received, not yet read; counted against the session budget.
    buf: BytesMut,
    /// The peer sent FIN: reads return EOF once `buf` is drained, writes fail.
    peer_fin: bool,
    /// Any PSH payload arrived; "FIN before data" means the agent could not connect.
    received_data: bool,
    /// The task blocked reading this stream.
    read_waker: Option<Waker>,
}

impl StreamState {
    fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            peer_fin: false,
            received_data: false,
            read_waker: None,
        }
    }
}

/// Session state shared by the handle, the streams and the tasks, behind one lock: every
/// operation is short and none awaits while holding it.
struct State {
    /// Open streams by id, until the local `Stream` is dropped.
    streams: HashMap<u32, StreamState>,
    /// Last id this side allocated; the next one is two higher.
    last_id: u32,
    /// Why the session died; `None` while it is alive.
    closed: Option<SmuxError>,
    /// Bytes received but not read, over all streams (the v1 token bucket, inverted).
    buffered: usize,
    /// The reader is waiting for budget; silence from the peer is then expected.
    reader_starved: bool,
    /// When bytes last arrived from the transport, for the keepalive timeout.
    last_rx: Instant,
    /// Encoded frames for the writer task, in send order.
    out: BytesMut,
    /// Tasks waiting for room in `out`.
    write_waiters: Vec<Waker>,
}

/// What the session handle, streams and tasks share.
struct Shared {
    /// Validated settings, fixed for the session's life.
    config: Config,
    /// Everything mutable; see [`State`].
    state: Mutex<State>,
    /// Tells the reader that reads freed some receive budget.
    budget_freed: Notify,
    /// Tells the writer that `out` has frames (or the session closed).
    write_ready: Notify,
    /// Publishes the first fatal error to tasks and to `Session::closed`.
    closed_tx: watch::Sender<Option<SmuxError>>,
    /// Whether the keepalive task sends NOPs now (see [`Session::set_keepalive`]).
    keepalive_on: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Nothing panics while holding the lock, but a poisoned lock must not take the proxy down.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Kills the session with its first error and wakes everything that could be waiting on it.
    fn fail(&self, err: SmuxError) {
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

    /// Waits for room in the outgoing queue and returns the locked state to push into, so the
    /// check and the push are one step.
    fn poll_queue_space(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<MutexGuard<'_, State>, SmuxError>> {
        let mut st = self.lock();
        if let Some(cause) = &st.closed {
            return Poll::Ready(Err(SmuxError::session_closed(cause)));
        }
        if st.out.len() < WRITE_QUEUE_LIMIT {
            return Poll::Ready(Ok(st));
        }
        if !st.write_waiters.iter().any(|w| w.will_wake(cx.waker())) {
            st.write_waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Queues a control frame once there is room.
    async fn send_control(&self, cmd: Cmd, stream_id: u32) -> Result<(), SmuxError> {
        poll_fn(|cx| {
            let mut st = ready!(self.poll_queue_space(cx))?;
            put_frame(&mut st.out, cmd, stream_id, &[]);
            Poll::Ready(Ok::<(), SmuxError>(()))
        })
        .await?;
        self.write_ready.notify_one();
        Ok(())
    }

    /// Lets the reader re-check its budget if it was waiting; called after bytes left a buffer.
    fn wake_reader_if_budget(&self, st: &State) {
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
    shared: Arc<Shared>,
    /// Only for `Debug`: which side of the protocol this is.
    role: Role,
    /// Streams the peer opened; behind an async lock because `accept_stream` takes `&self`.
    accept_rx: tokio::sync::Mutex<mpsc::Receiver<Stream>>,
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

    fn start<T>(transport: T, config: Config, role: Role) -> Result<Session, SmuxError>
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
                out: BytesMut::new(),
                write_waiters: Vec::new(),
            }),
            config,
            budget_freed: Notify::new(),
            write_ready: Notify::new(),
            closed_tx,
            keepalive_on: std::sync::atomic::AtomicBool::new(true),
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

    /// Whether the reader is stopped because a stream (or the session) is at its receive cap:
    /// the peer's data waits until that stream's consumer reads. New streams belong elsewhere.
    pub fn is_congested(&self) -> bool {
        self.shared.lock().reader_starved
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
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs a session task until it finishes or the session closes, whichever comes first, so no
/// task outlives its session.
async fn run_until_closed(
    mut closed: watch::Receiver<Option<SmuxError>>,
    task: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        () = task => {}
        _ = closed.wait_for(Option::is_some) => {}
    }
}

/// Reads frames until the transport ends or breaks the protocol; only returns with the error.
async fn read_loop<R>(
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
            wait_for_budget(shared, header.stream_id).await;
        }
        handle_frame(shared, &accept_tx, header, &buf[HEADER_LEN..frame_len]).await?;
        buf.advance(frame_len);
    }
}

/// Reads whatever the transport has; a clean EOF is only clean between frames.
async fn read_more<R>(
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

/// Blocks the reader while the session budget, or the budget of the stream the next frame is
/// for, is used up (the v1 head-of-line blocking, bounded per stream).
async fn wait_for_budget(shared: &Shared, stream_id: u32) {
    loop {
        {
            let mut st = shared.lock();
            let stream_full = st
                .streams
                .get(&stream_id)
                .is_some_and(|s| s.buf.len() >= shared.config.max_stream_buffer);
            if !stream_full && st.buffered < shared.config.max_receive_buffer {
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

async fn handle_frame(
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
                    poll_fn(|cx| shared.poll_queue_space(cx).map_ok(drop)).await?;
                }
            }
        }
        Cmd::Fin => {
            let waker = {
                let mut st = shared.lock();
                st.streams.get_mut(&id).and_then(|s| {
                    s.peer_fin = true;
                    s.read_waker.take()
                })
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
                match st.streams.get_mut(&id) {
                    Some(s) => {
                        s.buf.extend_from_slice(payload);
                        s.received_data = true;
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
async fn write_loop<W>(shared: &Shared, mut transport: W) -> Result<(), SmuxError>
where
    W: AsyncWrite + Unpin,
{
    // Double buffering: streams fill one buffer while this task writes the other.
    let mut sending = BytesMut::new();
    loop {
        let waiters = {
            let mut st = shared.lock();
            if st.closed.is_some() {
                return Ok(());
            }
            sending.clear();
            std::mem::swap(&mut st.out, &mut sending);
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
async fn keepalive_loop(shared: &Shared, interval: Option<Duration>, timeout: Option<Duration>) {
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
                        put_frame(&mut st.out, Cmd::Nop, 0, &[]);
                        true
                    } else {
                        false
                    }
                };
                if queued {
                    shared.write_ready.notify_one();
                }
            }
            () = sleep_until(deadline) => {
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

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// One multiplexed byte stream. Reads see EOF after the peer's FIN; `poll_shutdown` and drop send
/// our FIN (there is no half-close in v1, see the module docs).
pub struct Stream {
    /// The smux stream id, unique among the session's open streams.
    id: u32,
    /// The session; the stream's receive buffer lives in its state.
    shared: Arc<Shared>,
    /// Our FIN is queued; writes fail and drop sends no second FIN.
    fin_sent: bool,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("fin_sent", &self.fin_sent)
            .finish_non_exhaustive()
    }
}

impl Stream {
    fn new(shared: Arc<Shared>, id: u32) -> Self {
        Self {
            id,
            shared,
            fin_sent: false,
        }
    }

    /// The smux stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether any data arrived. A peer FIN with no data before it is how the SSM agent reports
    /// that it could not connect to the target.
    pub fn received_any_data(&self) -> bool {
        self.shared
            .lock()
            .streams
            .get(&self.id)
            .is_some_and(|s| s.received_data)
    }

    /// Whether the peer has sent FIN (buffered data may still be readable).
    pub fn peer_closed(&self) -> bool {
        self.shared
            .lock()
            .streams
            .get(&self.id)
            .is_some_and(|s| s.peer_fin)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let shared = &self.shared;
        let mut st = shared.lock();
        let st = &mut *st;
        let Some(stream) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if !stream.buf.is_empty() {
            let n = stream.buf.len().min(out.remaining());
            out.put_slice(&stream.buf[..n]);
            stream.buf.advance(n);
            if stream.buf.is_empty() && stream.buf.capacity() > SHRINK_THRESHOLD {
                stream.buf = BytesMut::new();
            }
            st.buffered = st.buffered.saturating_sub(n);
            shared.wake_reader_if_budget(st);
            return Poll::Ready(Ok(()));
        }
        if stream.peer_fin {
            return Poll::Ready(Ok(()));
        }
        if let Some(cause) = &st.closed {
            return Poll::Ready(Err(SmuxError::session_closed(cause).into_io()));
        }
        if !stream
            .read_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            stream.read_waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl AsyncWrite for Stream {
    /// Queues at most one PSH frame (`max_frame_size` bytes) per call, in order with every other
    /// frame of the session.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.fin_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "smux stream already shut down",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let shared = &self.shared;
        let mut st = ready!(shared.poll_queue_space(cx)).map_err(SmuxError::into_io)?;
        if st.streams.get(&self.id).is_none_or(|s| s.peer_fin) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "smux stream closed by peer",
            )));
        }
        let n = data.len().min(shared.config.max_frame_size);
        put_frame(&mut st.out, Cmd::Psh, self.id, &data[..n]);
        drop(st);
        shared.write_ready.notify_one();
        Poll::Ready(Ok(n))
    }

    /// Written data is already queued in order for the session writer, which flushes the
    /// transport whenever its queue runs dry; there is nothing to wait for per stream.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.shared.lock().closed {
            Some(cause) => Poll::Ready(Err(SmuxError::session_closed(cause).into_io())),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Sends FIN, which in v1 closes both directions at the peer; reads here still see the rest
    /// of the peer's data until its FIN.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.fin_sent {
            return Poll::Ready(Ok(()));
        }
        let shared = self.shared.clone();
        let queued = match ready!(shared.poll_queue_space(cx)) {
            Ok(mut st) => {
                put_frame(&mut st.out, Cmd::Fin, self.id, &[]);
                true
            }
            // A dead session already ended the stream for the peer.
            Err(_) => false,
        };
        if queued {
            shared.write_ready.notify_one();
            self.fin_sent = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let shared = &self.shared;
        let queued_fin = {
            let mut st = shared.lock();
            if let Some(stream) = st.streams.remove(&self.id) {
                st.buffered = st.buffered.saturating_sub(stream.buf.len());
                shared.wake_reader_if_budget(&st);
            }
            // Past the queue limit on purpose: drop cannot wait, and a FIN is 8 bytes per stream.
            let queue_fin = !self.fin_sent && st.closed.is_none();
            if queue_fin {
                put_frame(&mut st.out, Cmd::Fin, self.id, &[]);
            }
            queue_fin
        };
        if queued_fin {
            shared.write_ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};
    use sha2::{Digest, Sha256};
    use tokio::io::{duplex, DuplexStream};

    /// Far beyond anything these tests need; only turns a hang into a failure.
    const GUARD: Duration = Duration::from_secs(60);

    fn no_keepalive() -> Config {
        Config {
            keepalive_interval: None,
            keepalive_timeout: None,
            ..Config::default()
        }
    }

    fn pair(client_cfg: Config, server_cfg: Config) -> (Session, Session) {
        let (a, b) = duplex(64 * 1024);
        let client = Session::client(a, client_cfg).expect("valid config");
        let server = Session::server(b, server_cfg).expect("valid config");
        (client, server)
    }

    fn frame(cmd: u8, len: u16, id: u32) -> Vec<u8> {
        let mut v = vec![VERSION, cmd];
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
        v
    }

    fn psh(id: u32, data: &[u8]) -> Vec<u8> {
        let mut v = frame(2, u16::try_from(data.len()).expect("small"), id);
        v.extend_from_slice(data);
        v
    }

    async fn read_header(raw: &mut (impl AsyncRead + Unpin)) -> Header {
        let mut h = [0u8; HEADER_LEN];
        raw.read_exact(&mut h).await.expect("header");
        Header::decode(h).expect("valid header")
    }

    /// Accepts every stream and echoes it back until the client's FIN.
    fn spawn_echo(server: Session) -> tokio::task::JoinHandle<Session> {
        tokio::spawn(async move {
            while let Some(stream) = server.accept_stream().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(stream);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
            server
        })
    }

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    // ---- frame codec ----

    #[test]
    fn header_vectors() {
        let cases = [
            (
                Header {
                    cmd: Cmd::Psh,
                    len: 5,
                    stream_id: 3,
                },
                [0x01, 0x02, 0x05, 0x00, 0x03, 0x00, 0x00, 0x00],
            ),
            (
                Header {
                    cmd: Cmd::Syn,
                    len: 0,
                    stream_id: 3,
                },
                [0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00],
            ),
            (
                Header {
                    cmd: Cmd::Fin,
                    len: 0,
                    stream_id: 0x0102_0304,
                },
                [0x01, 0x01, 0x00, 0x00, 0x04, 0x03, 0x02, 0x01],
            ),
            (
                Header {
                    cmd: Cmd::Nop,
                    len: 0,
                    stream_id: 0,
                },
                [0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            ),
            (
                Header {
                    cmd: Cmd::Psh,
                    len: 0x8000,
                    stream_id: 5,
                },
                [0x01, 0x02, 0x00, 0x80, 0x05, 0x00, 0x00, 0x00],
            ),
            (
                Header {
                    cmd: Cmd::Psh,
                    len: u16::MAX,
                    stream_id: u32::MAX,
                },
                [0x01, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for (header, bytes) in cases {
            assert_eq!(header.encode(), bytes, "{header:?}");
            assert_eq!(Header::decode(bytes).expect("decodes"), header);
        }
        let mut out = BytesMut::new();
        put_frame(&mut out, Cmd::Psh, 3, b"hello");
        assert_eq!(&out[..], b"\x01\x02\x05\x00\x03\x00\x00\x00hello");
    }

    #[test]
    fn header_rejects_what_v1_never_sends() {
        let err = |b: [u8; 8]| Header::decode(b).expect_err("must be rejected");
        assert!(matches!(
            err([2, 2, 0, 0, 3, 0, 0, 0]),
            SmuxError::BadVersion(2)
        ));
        assert!(matches!(
            err([0, 3, 0, 0, 0, 0, 0, 0]),
            SmuxError::BadVersion(0)
        ));
        assert!(matches!(
            err([1, 4, 8, 0, 3, 0, 0, 0]),
            SmuxError::InvalidCommand(4)
        ));
        assert!(matches!(
            err([1, 0xff, 0, 0, 3, 0, 0, 0]),
            SmuxError::InvalidCommand(0xff)
        ));
        assert!(matches!(
            err([1, 0, 1, 0, 3, 0, 0, 0]),
            SmuxError::UnexpectedPayload {
                cmd: Cmd::Syn,
                len: 1
            }
        ));
        assert!(matches!(
            err([1, 3, 0, 1, 0, 0, 0, 0]),
            SmuxError::UnexpectedPayload {
                cmd: Cmd::Nop,
                len: 256
            }
        ));
    }

    #[test]
    fn config_validation() {
        assert!(Config::default().validate().is_ok());
        assert!(no_keepalive().validate().is_ok());
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().expect_err("invalid")
        };
        assert!(matches!(
            bad(|c| c.max_frame_size = 65536),
            SmuxError::FrameTooLarge {
                len: 65536,
                max: 65535
            }
        ));
        assert!(matches!(
            bad(|c| c.max_frame_size = 0),
            SmuxError::InvalidConfig(_)
        ));
        assert!(matches!(
            bad(|c| c.max_receive_buffer = 0),
            SmuxError::InvalidConfig(_)
        ));
        assert!(matches!(
            bad(|c| c.keepalive_interval = Some(Duration::ZERO)),
            SmuxError::InvalidConfig(_)
        ));
        assert!(matches!(
            bad(|c| c.keepalive_interval = Some(Duration::from_secs(31))),
            SmuxError::InvalidConfig(_)
        ));
    }

    // ---- data path ----

    #[tokio::test]
    async fn echo_one_stream_and_ids() {
        let (client, server) = pair(Config::default(), Config::default());
        let _echo = spawn_echo(server);

        let mut s = client.open_stream().await.expect("open");
        assert_eq!(s.id(), 3);
        s.write_all(b"hello smux").await.expect("write");
        let mut buf = [0u8; 10];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello smux");
        assert!(s.received_any_data());

        // Our FIN ends the echo, whose FIN then gives us EOF.
        s.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
        assert!(s.peer_closed());

        let s2 = client.open_stream().await.expect("open");
        let s3 = client.open_stream().await.expect("open");
        assert_eq!((s2.id(), s3.id()), (5, 7));
        assert!(!client.is_closed());
    }

    #[tokio::test]
    async fn server_opened_streams_use_even_ids() {
        let (client, server) = pair(no_keepalive(), no_keepalive());
        let mut s = server.open_stream().await.expect("open");
        assert_eq!(s.id(), 2);
        s.write_all(b"ping").await.expect("write");
        let mut c = client.accept_stream().await.expect("accepted");
        assert_eq!(c.id(), 2);
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hundred_concurrent_streams() {
        let (client, server) = pair(Config::default(), Config::default());
        let _echo = spawn_echo(server);
        let client = Arc::new(client);

        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let data = pattern(i, 1000 + (i as usize * 37) % 9000);
                let mut s = client.open_stream().await.expect("open");
                let (mut r, mut w) = tokio::io::split(&mut s);
                let expected = data.clone();
                let writer = async move { w.write_all(&data).await.expect("write") };
                let reader = async move {
                    let mut got = vec![0u8; expected.len()];
                    r.read_exact(&mut got).await.expect("read");
                    assert!(got == expected, "stream {i} corrupted");
                };
                tokio::join!(writer, reader);
            }));
        }
        for t in tasks {
            tokio::time::timeout(GUARD, t)
                .await
                .expect("no hang")
                .expect("task ok");
        }
        assert_eq!(client.num_streams(), 0);
        assert!(!client.is_closed());
    }

    async fn transfer(
        client_transport: impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
        server_transport: DuplexStream,
        total: usize,
    ) {
        let client = Session::client(client_transport, Config::default()).expect("config");
        let server = Session::server(server_transport, Config::default()).expect("config");

        let receiver = tokio::spawn(async move {
            let mut s = server.accept_stream().await.expect("accepted");
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut received = 0usize;
            loop {
                let n = s.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                received += n;
                assert!(server.buffered_bytes() <= 4 * 1024 * 1024 + 32 * 1024);
            }
            (received, hasher.finalize())
        });

        let block = pattern(42, 1024 * 1024);
        let mut hasher = Sha256::new();
        let mut s = client.open_stream().await.expect("open");
        let mut sent = 0usize;
        let mut i = 0u64;
        while sent < total {
            let mut chunk = block.clone();
            chunk[..8].copy_from_slice(&i.to_le_bytes());
            let chunk = &chunk[..(total - sent).min(chunk.len())];
            s.write_all(chunk).await.expect("write");
            hasher.update(chunk);
            sent += chunk.len();
            i += 1;
        }
        // Closing right after the data must not lose any of it: FIN is queued behind it.
        drop(s);
        let (received, digest) = tokio::time::timeout(GUARD, receiver)
            .await
            .expect("no hang")
            .expect("ok");
        assert_eq!(received, total);
        assert_eq!(digest, hasher.finalize());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transfer_64_mib_sha256() {
        let (a, b) = duplex(64 * 1024);
        transfer(a, b, 64 * 1024 * 1024).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transfer_64_mib_through_chopped_transport() {
        let (a, b) = duplex(64 * 1024);
        transfer(Chopper::new(a, 1024, 7), b, 64 * 1024 * 1024).await;
    }

    #[tokio::test]
    async fn transfer_through_tiny_chunks() {
        // Chunks of 1..=7 bytes split nearly every header, in both directions.
        let (a, b) = duplex(64 * 1024);
        transfer(Chopper::new(a, 7, 8), b, 1024 * 1024 + 123).await;
    }

    #[tokio::test]
    async fn large_writes_are_split_into_max_frames() {
        let (a, mut raw) = duplex(256 * 1024);
        let client = Session::client(a, no_keepalive()).expect("config");
        let mut s = client.open_stream().await.expect("open");
        s.write_all(&vec![7u8; 70_000]).await.expect("write");
        s.shutdown().await.expect("fin");

        assert_eq!(
            read_header(&mut raw).await,
            Header {
                cmd: Cmd::Syn,
                len: 0,
                stream_id: 3
            }
        );
        let mut total = 0;
        for expected_len in [32_768u16, 32_768, 4_464] {
            let h = read_header(&mut raw).await;
            assert_eq!(
                h,
                Header {
                    cmd: Cmd::Psh,
                    len: expected_len,
                    stream_id: 3
                }
            );
            let mut data = vec![0u8; usize::from(h.len)];
            raw.read_exact(&mut data).await.expect("payload");
            assert!(data.iter().all(|&b| b == 7));
            total += data.len();
        }
        assert_eq!(total, 70_000);
        assert_eq!(
            read_header(&mut raw).await,
            Header {
                cmd: Cmd::Fin,
                len: 0,
                stream_id: 3
            }
        );
    }

    // ---- close semantics ----

    #[tokio::test]
    async fn server_close_gives_client_eof_after_data() {
        let (client, server) = pair(no_keepalive(), no_keepalive());
        let server_task = tokio::spawn(async move {
            let mut s = server.accept_stream().await.expect("accepted");
            s.write_all(b"bye").await.expect("write");
            drop(s); // FIN follows the data
            server
        });
        let mut s = client.open_stream().await.expect("open");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("clean EOF");
        assert_eq!(got, b"bye");
        assert!(s.received_any_data());
        assert!(s.peer_closed());
        // No half-close: writing after the peer's FIN fails.
        let err = s.write_all(b"late").await.expect_err("peer closed");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let _server = server_task.await.expect("server");
    }

    #[tokio::test]
    async fn fin_before_data_is_detectable() {
        let (client, server) = pair(no_keepalive(), no_keepalive());
        let server_task = tokio::spawn(async move {
            // What the agent does when it cannot dial the target.
            drop(server.accept_stream().await.expect("accepted"));
            server
        });
        let mut s = client.open_stream().await.expect("open");
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).await.expect("EOF"), 0);
        assert!(s.peer_closed());
        assert!(!s.received_any_data());
        let _server = server_task.await.expect("server");
    }

    #[tokio::test]
    async fn dropped_stream_is_forgotten_and_late_data_discarded() {
        let (a, mut raw) = duplex(64 * 1024);
        let server = Session::server(a, no_keepalive()).expect("config");
        raw.write_all(&frame(0, 0, 3)).await.expect("syn");
        let s = server.accept_stream().await.expect("accepted");
        assert_eq!(server.num_streams(), 1);
        drop(s);
        assert_eq!(
            read_header(&mut raw).await,
            Header {
                cmd: Cmd::Fin,
                len: 0,
                stream_id: 3
            }
        );
        assert_eq!(server.num_streams(), 0);
        // Data and FIN racing our FIN land on an unknown id and are dropped, not buffered.
        raw.write_all(&psh(3, &[1u8; 1000])).await.expect("psh");
        raw.write_all(&frame(1, 0, 3)).await.expect("fin");
        raw.write_all(&frame(0, 0, 5)).await.expect("syn");
        let _s5 = server.accept_stream().await.expect("accepted");
        assert_eq!(server.buffered_bytes(), 0);
        assert!(!server.is_closed());
    }

    #[tokio::test]
    async fn data_for_unknown_stream_is_ignored() {
        let (a, mut raw) = duplex(64 * 1024);
        let server = Session::server(a, no_keepalive()).expect("config");
        let mut input = psh(99, b"nobody home");
        input.extend(frame(1, 0, 77)); // FIN for an unknown id
        input.extend(frame(3, 0, 0)); // NOP
        input.extend(frame(0, 0, 5)); // SYN 5
        input.extend(frame(0, 0, 5)); // duplicate SYN: ignored
        input.extend(psh(5, b"ok"));
        input.extend(psh(5, b"")); // empty PSH: nothing to deliver
        input.extend(frame(1, 0, 5));
        raw.write_all(&input).await.expect("write");

        let mut s = server.accept_stream().await.expect("accepted");
        assert_eq!(s.id(), 5);
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"ok");
        assert_eq!(server.num_streams(), 1);
        assert_eq!(server.buffered_bytes(), 0);
        assert!(!server.is_closed());
    }

    #[tokio::test]
    async fn protocol_errors_close_the_session() {
        type Expect = fn(&SmuxError) -> bool;
        let cases: [(Vec<u8>, Expect); 5] = [
            (vec![2, 2, 5, 0, 3, 0, 0, 0], |e| {
                matches!(e, SmuxError::BadVersion(2))
            }),
            (frame(4, 8, 3), |e| {
                matches!(e, SmuxError::InvalidCommand(4))
            }),
            (frame(9, 0, 0), |e| {
                matches!(e, SmuxError::InvalidCommand(9))
            }),
            (frame(1, 3, 3), |e| {
                matches!(
                    e,
                    SmuxError::UnexpectedPayload {
                        cmd: Cmd::Fin,
                        len: 3
                    }
                )
            }),
            (vec![1, 2, 5, 0, 3], |e| {
                matches!(e, SmuxError::TruncatedFrame)
            }),
        ];
        for (input, expected) in cases {
            let (a, mut raw) = duplex(1024);
            let server = Session::server(a, no_keepalive()).expect("config");
            raw.write_all(&input).await.expect("write");
            let _ = raw.shutdown().await;
            let err = tokio::time::timeout(GUARD, server.closed())
                .await
                .expect("closes");
            assert!(expected(&err), "input {input:02x?} gave {err:?}");
            assert!(server.is_closed());
            assert!(server.accept_stream().await.is_none());
            let open = server.open_stream().await.expect_err("closed");
            assert!(expected(open.root_cause()), "{open:?}");
        }
    }

    #[tokio::test]
    async fn stream_in_use_sees_session_death() {
        let (a, mut raw) = duplex(1024);
        let server = Session::server(a, no_keepalive()).expect("config");
        raw.write_all(&frame(0, 0, 3)).await.expect("syn");
        let mut s = server.accept_stream().await.expect("accepted");
        raw.write_all(&[7u8; 8]).await.expect("garbage");
        let mut buf = [0u8; 4];
        let err = s.read(&mut buf).await.expect_err("session died");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<SmuxError>())
            .expect("SmuxError source");
        assert!(matches!(inner.root_cause(), SmuxError::BadVersion(7)));
        assert!(s.write(b"x").await.is_err());
    }

    #[tokio::test]
    async fn clean_eof_and_local_close() {
        let (client, server) = pair(no_keepalive(), no_keepalive());
        let s = client.open_stream().await.expect("open");
        let mut accepted = server.accept_stream().await.expect("accepted");
        client.close();
        assert!(matches!(client.closed().await, SmuxError::ClosedLocally));
        assert!(matches!(
            client.open_stream().await,
            Err(SmuxError::SessionClosed(cause)) if matches!(*cause, SmuxError::ClosedLocally)
        ));
        assert!(matches!(server.closed().await, SmuxError::TransportClosed));
        let err = accepted
            .read(&mut [0u8; 1])
            .await
            .expect_err("transport gone");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        drop(s);
        drop(client); // closing twice is harmless
    }

    #[tokio::test]
    async fn stream_ids_run_out_cleanly() {
        let (client, _server) = pair(no_keepalive(), no_keepalive());
        client.shared.lock().last_id = u32::MAX - 2;
        let last = client.open_stream().await.expect("last id");
        assert_eq!(last.id(), u32::MAX);
        assert!(matches!(
            client.open_stream().await,
            Err(SmuxError::StreamIdsExhausted)
        ));
        assert!(!client.is_closed());
    }

    #[tokio::test]
    async fn full_accept_backlog_refuses_with_fin() {
        let (a, mut raw) = duplex(64 * 1024);
        let server = Session::server(a, no_keepalive()).expect("config");
        let ids: Vec<u32> = (0..=ACCEPT_BACKLOG as u32).map(|i| 3 + 2 * i).collect();
        let mut input = Vec::new();
        for &id in &ids {
            input.extend(frame(0, 0, id));
        }
        raw.write_all(&input).await.expect("syns");
        let refused = *ids.last().expect("non-empty");
        assert_eq!(
            read_header(&mut raw).await,
            Header {
                cmd: Cmd::Fin,
                len: 0,
                stream_id: refused
            }
        );
        assert_eq!(server.num_streams(), ACCEPT_BACKLOG);
        let first = server.accept_stream().await.expect("queued");
        assert_eq!(first.id(), 3);
        assert!(!server.is_closed());
    }

    #[tokio::test]
    async fn pending_accept_ends_when_session_closes() {
        let (a, raw) = duplex(1024);
        let server = Arc::new(Session::server(a, no_keepalive()).expect("config"));
        let waiting = tokio::spawn({
            let server = server.clone();
            async move { server.accept_stream().await.is_none() }
        });
        drop(raw);
        assert!(waiting.await.expect("task"), "accept must end with None");
        assert!(matches!(server.closed().await, SmuxError::TransportClosed));
    }

    #[tokio::test]
    async fn write_after_shutdown_fails_but_reads_continue() {
        let (a, mut raw) = duplex(64 * 1024);
        let client = Session::client(a, no_keepalive()).expect("config");
        let mut s = client.open_stream().await.expect("open");
        s.shutdown().await.expect("fin");
        let err = s.write(b"x").await.expect_err("shut down");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        // The peer may still answer before its own FIN; no half-close on the wire, but we listen.
        raw.write_all(&psh(3, b"last words")).await.expect("psh");
        raw.write_all(&frame(1, 0, 3)).await.expect("fin");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"last words");
        drop(s); // no second FIN
        assert_eq!(read_header(&mut raw).await.cmd, Cmd::Syn);
        assert_eq!(read_header(&mut raw).await.cmd, Cmd::Fin);
        client.close();
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty(), "unexpected frames {rest:02x?}");
    }

    #[tokio::test]
    async fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for round in 0..300 {
            let input = if round % 2 == 0 {
                let mut v = vec![0u8; rng.random_range(0..4096)];
                rng.fill_bytes(&mut v);
                v
            } else {
                // Mostly well-formed frames with random fields, so parsing goes deeper.
                let mut v = Vec::new();
                for _ in 0..rng.random_range(1..64) {
                    let cmd = rng.random_range(0..6u8);
                    let id = rng.random_range(0..8u32);
                    let len = if cmd == 2 {
                        rng.random_range(0..300u16)
                    } else {
                        u16::from(rng.random_ratio(1, 20))
                    };
                    let version = if rng.random_ratio(1, 30) {
                        rng.random()
                    } else {
                        VERSION
                    };
                    v.extend_from_slice(&[version, cmd]);
                    v.extend_from_slice(&len.to_le_bytes());
                    v.extend_from_slice(&id.to_le_bytes());
                    let body = rng.random_range(0..=usize::from(len) + 2);
                    v.extend((0..body).map(|_| rng.random::<u8>()));
                }
                v
            };
            let (a, raw) = duplex(8 * 1024);
            let server = Session::server(a, Config::default()).expect("config");
            let (mut raw_r, mut raw_w) = tokio::io::split(raw);
            let drain = tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = raw_r.read_to_end(&mut sink).await;
            });
            // The session may die before reading everything; a write error is fine then.
            let _ = raw_w.write_all(&input).await;
            let _ = raw_w.shutdown().await;
            let err = tokio::time::timeout(GUARD, server.closed())
                .await
                .expect("session must end");
            assert!(
                !matches!(err, SmuxError::ClosedLocally),
                "round {round}: {err:?}"
            );
            drop(server);
            drain.await.expect("drain task");
        }
    }

    // ---- keepalive (virtual time) ----

    #[tokio::test(start_paused = true)]
    async fn nops_are_sent_every_interval() {
        let (a, mut raw) = duplex(1024);
        let cfg = Config {
            keepalive_timeout: None,
            ..Config::default()
        };
        let _client = Session::client(a, cfg).expect("config");
        let start = Instant::now();
        for n in 1..=3u32 {
            assert_eq!(
                read_header(&mut raw).await,
                Header {
                    cmd: Cmd::Nop,
                    len: 0,
                    stream_id: 0
                }
            );
            assert_eq!(start.elapsed(), Duration::from_secs(10) * n);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_fires_when_peer_is_silent() {
        let (a, _raw) = duplex(1024);
        let server = Session::server(a, Config::default()).expect("config");
        let start = Instant::now();
        assert!(
            matches!(server.closed().await, SmuxError::KeepaliveTimeout(t) if t == Duration::from_secs(30))
        );
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn no_timeout_while_peer_sends_nops() {
        let (a, mut raw) = duplex(64 * 1024);
        let server = Session::server(a, Config::default()).expect("config");
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            raw.write_all(&frame(3, 0, 0)).await.expect("nop");
            assert!(!server.is_closed());
        }
        let last_nop = Instant::now();
        assert!(matches!(
            server.closed().await,
            SmuxError::KeepaliveTimeout(_)
        ));
        assert_eq!(last_nop.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn default_sessions_keep_each_other_alive() {
        let (client, server) = pair(Config::default(), Config::default());
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!client.is_closed() && !server.is_closed());
    }

    // ---- receive budget ----

    #[tokio::test(start_paused = true)]
    async fn slow_stream_blocks_others_until_read() {
        const BUDGET: usize = 64 * 1024;
        const FRAME: usize = 16 * 1024;
        const A_LEN: usize = 1024 * 1024;
        let client_cfg = Config {
            max_frame_size: FRAME,
            ..no_keepalive()
        };
        let server_cfg = Config {
            max_frame_size: FRAME,
            max_receive_buffer: BUDGET,
            max_stream_buffer: BUDGET,
            keepalive_interval: None,
            keepalive_timeout: Some(Duration::from_secs(30)),
        };
        let (client, server) = pair(client_cfg, server_cfg);

        let mut a = client.open_stream().await.expect("open a");
        let mut b = client.open_stream().await.expect("open b");
        let mut server_a = server.accept_stream().await.expect("accept a");
        let mut server_b = server.accept_stream().await.expect("accept b");
        assert_eq!((server_a.id(), server_b.id()), (3, 5));

        // A's reader is slow (not reading at all); far more than the budget is on its way.
        let a_data = pattern(1, A_LEN);
        let a_expected = a_data.clone();
        let a_writer = tokio::spawn(async move {
            a.write_all(&a_data).await.expect("write a");
            a
        });
        let b_writer = tokio::spawn(async move {
            b.write_all(b"hello").await.expect("write b");
            b
        });

        // Expected v1 behaviour: B's data is stuck behind A's in the transport.
        let mut got_b = [0u8; 5];
        assert!(
            tokio::time::timeout(Duration::from_secs(5), server_b.read_exact(&mut got_b))
                .await
                .is_err()
        );
        let buffered = server.buffered_bytes();
        assert!(
            (BUDGET..BUDGET + FRAME).contains(&buffered),
            "buffered {buffered}"
        );

        // Stalled by our own budget, the peer's silence must not count as a dead session.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(!server.is_closed());
        assert!(server.buffered_bytes() < BUDGET + FRAME);

        // Once A is read, everything flows again, with memory bounded throughout.
        let mut got_a = vec![0u8; A_LEN];
        let mut read = 0;
        while read < A_LEN {
            let n = server_a.read(&mut got_a[read..]).await.expect("read a");
            assert!(n > 0);
            read += n;
            assert!(server.buffered_bytes() < BUDGET + FRAME);
        }
        assert!(got_a == a_expected);
        server_b.read_exact(&mut got_b).await.expect("read b");
        assert_eq!(&got_b, b"hello");
        let _ = (a_writer.await, b_writer.await);
    }

    /// Splits every read and write on the wrapped transport into random small pieces.
    struct Chopper<T> {
        /// The real transport.
        inner: T,
        /// Seeded, so a failure replays the same split points.
        rng: StdRng,
        /// Largest piece passed through at once.
        max: usize,
        /// Reads land here first so they can be cut short without unsafe code.
        scratch: Vec<u8>,
    }

    impl<T> Chopper<T> {
        fn new(inner: T, max: usize, seed: u64) -> Self {
            Self {
                inner,
                rng: StdRng::seed_from_u64(seed),
                max,
                scratch: vec![0; max],
            }
        }
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Chopper<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            let n = this.rng.random_range(1..=this.max).min(buf.remaining());
            let mut piece = ReadBuf::new(&mut this.scratch[..n]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut piece))?;
            buf.put_slice(piece.filled());
            Poll::Ready(Ok(()))
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Chopper<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let max = self.max;
            let n = self.rng.random_range(1..=max).min(data.len());
            Pin::new(&mut self.inner).poll_write(cx, &data[..n])
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }
}
