//! One tunnel connection as the proxy sees it: an smux stream of a shared session or basic
//! mode's own byte pipe, whose errors and bare EOFs carry the real reason (the session's end,
//! a failed dial on the node) and whose stall watch tells when it was reset.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use super::pick::release;
use super::{MuxSession, Pool, SsmSettings};
use crate::tunnel::ssm::datachannel::{DataChannel, DataChannelError};
use crate::tunnel::ssm::{smux, SsmError};

/// One tunnel connection: an smux stream of a shared session, or (basic mode) the byte pipe of
/// a session of its own, which is terminated when the stream is dropped.
pub struct SsmStream {
    pub(super) inner: Inner,
    /// For error messages (target, host, port).
    pub(super) settings: Arc<SsmSettings>,
}

pub(super) enum Inner {
    Mux {
        stream: smux::Stream,
        session: Arc<MuxSession>,
    },
    Basic {
        stream: DuplexStream,
        channel: Arc<DataChannel>,
        /// To take the channel off the pool's shutdown list when the connection ends.
        pool: Weak<Pool>,
    },
}

impl std::fmt::Debug for SsmStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (mode, session) = match &self.inner {
            Inner::Mux { session, .. } => ("mux", session.channel.session_id()),
            Inner::Basic { channel, .. } => ("basic", channel.session_id()),
        };
        f.debug_struct("SsmStream")
            .field("mode", &mode)
            .field("session", &session)
            .finish_non_exhaustive()
    }
}

impl SsmStream {
    /// The SSM session this stream runs in.
    pub fn session_id(&self) -> &str {
        match &self.inner {
            Inner::Mux { session, .. } => session.channel.session_id(),
            Inner::Basic { channel, .. } => channel.session_id(),
        }
    }

    /// For a mux stream: tells when it is reset because its client stopped reading for
    /// `stall_timeout` (see [`SsmSettings::stall_timeout`]). Basic mode has no such reset: the
    /// session is the connection's own, and holding it back holds up nobody else.
    pub fn stall_watch(&self) -> Option<StallWatch> {
        match &self.inner {
            Inner::Mux { stream, .. } => Some(StallWatch {
                watch: stream.reset_watch(),
                stall_timeout: self.settings.stall_timeout,
            }),
            Inner::Basic { .. } => None,
        }
    }

    fn channel(&self) -> &DataChannel {
        match &self.inner {
            Inner::Mux { session, .. } => &session.channel,
            Inner::Basic { channel, .. } => channel,
        }
    }

    /// An `io::Error` carrying the session's end reason, if it has ended.
    fn ended_error(&self, kind: io::ErrorKind) -> Option<io::Error> {
        let channel = self.channel();
        match channel.ended()? {
            DataChannelError::Terminated => None,
            source => Some(io::Error::new(
                kind,
                SsmError::DataChannel {
                    session_id: channel.session_id().to_owned(),
                    source,
                },
            )),
        }
    }

    /// Turns a bare EOF into the real reason where there is one.
    fn explain_eof(&self) -> Option<io::Error> {
        match &self.inner {
            // FIN before any data, the first such after a ConnectToPortError: the agent's
            // dial for this stream failed.
            Inner::Mux { stream, session } => {
                let failed = stream.empty_fin_offset().is_some_and(|fin| {
                    is_connect_failure(
                        &session.channel.connect_error_offsets(),
                        &session.smux.empty_fin_offsets(),
                        fin,
                    )
                });
                if failed {
                    return Some(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        SsmError::ConnectToPort {
                            target: self.settings.target.clone(),
                            host: self.settings.host.clone(),
                            port: self.settings.port,
                        },
                    ));
                }
                self.ended_error(io::ErrorKind::ConnectionAborted)
            }
            // The pipe only ends with the session, and basic mode never ends it cleanly.
            Inner::Basic { .. } => self.ended_error(io::ErrorKind::ConnectionAborted),
        }
    }
}

/// Tells when one connection's stream was reset because its client stopped reading.
#[derive(Debug, Clone)]
pub struct StallWatch {
    watch: smux::ResetWatch,
    stall_timeout: Duration,
}

impl StallWatch {
    /// Resolves once the stream is reset; never if it ends another way.
    pub async fn stalled(&self) {
        self.watch.reset().await;
    }

    /// Whether the stream has been reset.
    pub fn is_stalled(&self) -> bool {
        self.watch.is_reset()
    }

    /// How long the client had stopped reading (`--ssm-stall-timeout`).
    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// How long after the reset the client may take to read what it is owed and the error
    /// (the connection holds no tunnel resources any more, only its socket); then it is closed.
    pub fn grace(&self) -> Duration {
        self.stall_timeout.max(Duration::from_secs(60))
    }

    /// What the client is told after the reset.
    pub fn client_error(&self) -> crate::pg::ClientError {
        let secs = self.stall_timeout.as_secs_f64();
        crate::pg::ClientError {
            sqlstate: crate::pg::SqlState::ConnectionFailure,
            message: format!(
                "the rest of this result was discarded: the client stopped reading it for {secs} s"
            ),
            hint: Some(format!(
                "Read results as they arrive, or fetch large ones in batches (a cursor with \
                 FETCH). Through SSM, connections share a session and a client that stops \
                 reading holds up the others, so rds-auth-proxy gives its connection up after \
                 --ssm-stall-timeout ({secs} s); reconnect to go on."
            )),
        }
    }
}

/// Whether the empty FIN at `fin` answers a ConnectToPortError. The agent dials once per
/// accepted stream and, when that fails, sends the flag and then closes the stream, so each
/// flag belongs to the first empty FIN (FIN before any data) at or after its position that no
/// earlier flag claimed. `flags` and `fins` are positions in the agent's output byte stream,
/// each in ascending order. A flag whose stream was closed here first still claims that
/// stream's FIN, so it can never be blamed on a later stream.
fn is_connect_failure(flags: &[u64], fins: &[u64], fin: u64) -> bool {
    let mut next = 0;
    for &flag in flags {
        while fins.get(next).is_some_and(|f| *f < flag) {
            next += 1;
        }
        match fins.get(next) {
            None => return false,
            Some(f) if *f == fin => return true,
            Some(_) => next += 1,
        }
    }
    false
}

impl AsyncRead for SsmStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let wants = buf.remaining() > 0;
        let result = match &mut this.inner {
            Inner::Mux { stream, .. } => Pin::new(stream).poll_read(cx, buf),
            Inner::Basic { stream, .. } => Pin::new(stream).poll_read(cx, buf),
        };
        match result {
            Poll::Ready(Ok(())) if wants && buf.filled().len() == before => {
                match this.explain_eof() {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Ready(Ok(())),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.ended_error(e.kind()).unwrap_or(e))),
            other => other,
        }
    }
}

impl AsyncWrite for SsmStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = match &mut this.inner {
            Inner::Mux { stream, .. } => Pin::new(stream).poll_write(cx, data),
            Inner::Basic { stream, .. } => Pin::new(stream).poll_write(cx, data),
        };
        match result {
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.ended_error(e.kind()).unwrap_or(e))),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Mux { stream, .. } => Pin::new(stream).poll_flush(cx),
            Inner::Basic { stream, .. } => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Mux { stream, .. } => Pin::new(stream).poll_shutdown(cx),
            Inner::Basic { stream, .. } => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

impl Drop for SsmStream {
    fn drop(&mut self) {
        match &self.inner {
            Inner::Mux { session, .. } => release(session),
            Inner::Basic { channel, pool, .. } => {
                // Off the shutdown list: this connection terminates its own session now.
                if let Some(pool) = pool.upgrade() {
                    let ended = Arc::downgrade(channel);
                    pool.lock()
                        .basic
                        .retain(|w| w.strong_count() > 0 && !w.ptr_eq(&ended));
                }
                // Basic mode never reuses a session (a server-side close is not signalled).
                let channel = channel.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { channel.terminate().await });
                }
            }
        }
    }
}

#[cfg(test)]
mod connect_failure_tests {
    use super::is_connect_failure;

    #[test]
    fn each_flag_claims_the_first_empty_fin_after_it() {
        // A flag at 100 and its stream's FIN at 120.
        assert!(is_connect_failure(&[100], &[120], 120));
        // An empty FIN before any flag is an ordinary early close.
        assert!(!is_connect_failure(&[100], &[40, 120], 40));
        // A FIN after the one the flag claimed is not blamed, however late it comes.
        assert!(!is_connect_failure(&[100], &[120, 5000], 5000));
        // Two failed dials whose flags came before either FIN: one FIN each, in order.
        assert!(is_connect_failure(&[100, 110], &[130, 140, 900], 130));
        assert!(is_connect_failure(&[100, 110], &[130, 140, 900], 140));
        assert!(!is_connect_failure(&[100, 110], &[130, 140, 900], 900));
        // A FIN at the flag's own position (nothing in between) counts.
        assert!(is_connect_failure(&[100], &[100], 100));
        assert!(!is_connect_failure(&[], &[100], 100));
    }
}
