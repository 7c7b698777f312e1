//! smux v1 framing: the 8-byte header and the commands.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use super::SmuxError;

/// The only protocol version we speak; the AWS agent and plugin negotiate nothing else.
pub const VERSION: u8 = 1;

/// Size of every frame header.
pub const HEADER_LEN: usize = 8;

/// Largest payload the 16-bit length field can describe; also smux's cap on `MaxFrameSize`.
pub const MAX_FRAME_SIZE_LIMIT: usize = u16::MAX as usize;

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
    pub fn from_byte(byte: u8) -> Option<Cmd> {
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
pub(crate) struct Header {
    /// What the frame does.
    pub(crate) cmd: Cmd,
    /// Payload length; only PSH may have one.
    pub(crate) len: u16,
    /// The stream it belongs to; 0 for NOP.
    pub(crate) stream_id: u32,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
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
    pub(crate) fn decode(bytes: [u8; HEADER_LEN]) -> Result<Header, SmuxError> {
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
pub(crate) fn put_frame(out: &mut BytesMut, cmd: Cmd, stream_id: u32, data: &[u8]) {
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

/// Frames waiting for the session writer. Each stream's frames (SYN, PSH, FIN) stay in order;
/// streams are served round-robin, one frame each in turn, and session frames (NOP) go first.
/// So a bulk transfer cannot make a quiet stream's frames wait behind its whole backlog, as
/// xtaci/smux's shaper also ensures.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    /// Session frames, sent before any stream's.
    control: VecDeque<Bytes>,
    /// Queued frames and their byte count, per stream with anything queued.
    streams: HashMap<u32, (VecDeque<Bytes>, usize)>,
    /// Streams with queued frames, in service order.
    order: VecDeque<u32>,
    /// Bytes queued in all.
    len: usize,
}

impl OutQueue {
    /// Encodes and queues one frame.
    pub(crate) fn push(&mut self, cmd: Cmd, stream_id: u32, data: &[u8]) {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + data.len());
        put_frame(&mut buf, cmd, stream_id, data);
        let frame = buf.freeze();
        self.len += frame.len();
        if cmd == Cmd::Nop {
            self.control.push_back(frame);
            return;
        }
        let (frames, bytes) = self.streams.entry(stream_id).or_default();
        if frames.is_empty() {
            self.order.push_back(stream_id);
        }
        *bytes += frame.len();
        frames.push_back(frame);
    }

    /// Bytes queued in all.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes queued for one stream.
    pub(crate) fn stream_len(&self, stream_id: u32) -> usize {
        self.streams.get(&stream_id).map_or(0, |(_, bytes)| *bytes)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn clear(&mut self) {
        *self = OutQueue::default();
    }

    /// Moves frames into `out` in service order until it holds at least `max` bytes (session
    /// frames always, and at least one stream frame if any is queued).
    pub(crate) fn take(&mut self, out: &mut BytesMut, max: usize) {
        while let Some(frame) = self.control.pop_front() {
            self.len -= frame.len();
            out.extend_from_slice(&frame);
        }
        let mut took_one = false;
        while !took_one || out.len() < max {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            took_one = true;
            let Some((frames, bytes)) = self.streams.get_mut(&id) else {
                continue;
            };
            if let Some(frame) = frames.pop_front() {
                *bytes -= frame.len();
                self.len -= frame.len();
                out.extend_from_slice(&frame);
            }
            if frames.is_empty() {
                self.streams.remove(&id);
            } else {
                self.order.push_back(id);
            }
        }
    }
}
