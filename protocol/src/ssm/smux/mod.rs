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

//!
//! Layout: [`codec`] (frame header, commands), [`session`] (the reader, writer and keepalive
//! tasks, flow control), [`stream`] (one multiplexed byte stream); tests in `tests.rs`.

mod codec;
mod session;
mod stream;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::Arc;
use std::time::Duration;

pub use codec::{Cmd, HEADER_LEN, MAX_FRAME_SIZE_LIMIT, VERSION};
pub use session::{ResetWatch, Session};
pub use stream::Stream;

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
    /// A stream holding this many bytes its consumer has not read counts as stalled, and the
    /// session as congested ([`Session::is_congested`]): new streams belong on another session.
    /// smux v1 has no per-stream window, so the reader itself keeps going (the other streams
    /// flow) until the session-wide `max_receive_buffer` is used up; only then does every
    /// stream wait.
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
            return Err(SmuxError::InvalidConfig(
                "max_stream_buffer must be positive",
            ));
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
    /// This one stream was reset by [`Session::reset_stalled`]: its reader left `max_stream_buffer`
    /// bytes unread too long. The session and its other streams go on.
    #[error("smux stream reset: its reader stopped reading")]
    StreamReset,
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
            SmuxError::StreamReset => io::ErrorKind::ConnectionReset,
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
