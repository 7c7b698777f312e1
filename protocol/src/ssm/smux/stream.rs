//! One multiplexed byte stream of a session.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::codec::*;
use super::session::*;
use super::SmuxError;

/// One multiplexed byte stream. Reads see EOF after the peer's FIN; `poll_shutdown` and drop send
/// our FIN (there is no half-close in v1, see the module docs).
pub struct Stream {
    /// The smux stream id, unique among the session's open streams.
    pub(crate) id: u32,
    /// The session; the stream's receive buffer lives in its state.
    pub(crate) shared: Arc<Shared>,
    /// Our FIN is queued; writes fail and drop sends no second FIN.
    pub(crate) fin_sent: bool,
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
    pub(crate) fn new(shared: Arc<Shared>, id: u32) -> Self {
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

    /// Where the peer's FIN began in the session's inbound byte stream, if it came before any
    /// data (see [`super::Session::empty_fin_offsets`]).
    pub fn empty_fin_offset(&self) -> Option<u64> {
        self.shared
            .lock()
            .streams
            .get(&self.id)
            .filter(|s| !s.received_data)
            .and_then(|s| s.fin_at)
    }

    /// A handle that tells when this stream is reset (see [`super::Session::reset_stalled`]).
    pub fn reset_watch(&self) -> ResetWatch {
        ResetWatch {
            shared: self.shared.clone(),
            id: self.id,
        }
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
            // Reading at all is not stalling: the clock restarts (or stops below the cap).
            stream.full_since = (stream.buf.len() >= shared.config.max_stream_buffer)
                .then(tokio::time::Instant::now);
            if stream.buf.is_empty() && stream.buf.capacity() > SHRINK_THRESHOLD {
                stream.buf = BytesMut::new();
            }
            st.buffered = st.buffered.saturating_sub(n);
            shared.wake_reader_if_budget(st);
            return Poll::Ready(Ok(()));
        }
        if stream.reset {
            return Poll::Ready(Err(SmuxError::StreamReset.into_io()));
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
        let mut st = ready!(shared.poll_queue_space(cx, Some(self.id))).map_err(SmuxError::into_io)?;
        if st.streams.get(&self.id).is_none_or(|s| s.peer_fin || s.reset) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "smux stream closed by peer",
            )));
        }
        let n = data.len().min(shared.config.max_frame_size);
        st.out.push(Cmd::Psh, self.id, &data[..n]);
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
        let reset = self.shared.lock().streams.get(&self.id).is_some_and(|s| s.reset);
        if self.fin_sent || reset {
            return Poll::Ready(Ok(()));
        }
        let shared = self.shared.clone();
        let queued = match ready!(shared.poll_queue_space(cx, Some(self.id))) {
            Ok(mut st) => {
                st.out.push(Cmd::Fin, self.id, &[]);
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
            let mut was_reset = false;
            if let Some(stream) = st.streams.remove(&self.id) {
                st.buffered = st.buffered.saturating_sub(stream.buf.len());
                st.note_dropped(self.id, &stream);
                was_reset = stream.reset;
                shared.wake_reader_if_budget(&st);
            }
            // Past the queue limit on purpose: drop cannot wait, and a FIN is 8 bytes per stream.
            // A reset stream sent its FIN already.
            let queue_fin = !self.fin_sent && !was_reset && st.closed.is_none();
            if queue_fin {
                st.out.push(Cmd::Fin, self.id, &[]);
            }
            queue_fin
        };
        if queued_fin {
            shared.write_ready.notify_one();
        }
    }
}
