//! The SSM data channel's binary `ClientMessage` codec and the small JSON payloads it carries
//! (acknowledge, channel_closed, OpenDataChannel). Byte layout: `ssm-protocol.md` §2.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// HeaderLength written by us, the plugin and the agent: the offset of the PayloadLength field.
pub const HEADER_LENGTH: u32 = 116;

/// Smallest HeaderLength we accept. MGS sends `channel_closed` with HL 112 (no PayloadType field);
/// anything shorter would overlap the fixed fields that every sender writes.
pub const MIN_HEADER_LENGTH: u32 = 112;

/// Width of the MessageType field; shorter names are right-padded with spaces.
pub const MESSAGE_TYPE_LEN: usize = 32;

/// Every message we send uses schema version 1, as plugin and agent do.
pub const SCHEMA_VERSION: u32 = 1;

// Fixed offsets of §2.1. Fields before PayloadType never move; PayloadType and PayloadLength
// depend on HL, see `ClientMessage::decode`.
const OFF_MESSAGE_TYPE: usize = 4;
const OFF_SCHEMA_VERSION: usize = 36;
const OFF_CREATED_DATE: usize = 40;
const OFF_SEQUENCE_NUMBER: usize = 48;
const OFF_FLAGS: usize = 56;
const OFF_MESSAGE_ID: usize = 64;
const OFF_PAYLOAD_DIGEST: usize = 80;
const OFF_PAYLOAD_TYPE: usize = 112;
const DIGEST_LEN: usize = 32;

/// MessageType strings seen on a client data channel (§2.4).
pub mod message_type {
    /// Client → agent sequenced stream data.
    pub const INPUT_STREAM_DATA: &str = "input_stream_data";
    /// Agent → client sequenced stream data.
    pub const OUTPUT_STREAM_DATA: &str = "output_stream_data";
    /// Acknowledgement of one stream-data message, both directions.
    pub const ACKNOWLEDGE: &str = "acknowledge";
    /// MGS tells us the session or channel is gone; JSON payload with a reason.
    pub const CHANNEL_CLOSED: &str = "channel_closed";
    /// MGS: the remote side is active again.
    pub const START_PUBLICATION: &str = "start_publication";
    /// MGS: the remote side is inactive; its header and digest are unreliable.
    pub const PAUSE_PUBLICATION: &str = "pause_publication";
    /// Agent → MGS session state; MGS may relay it to us, and we ignore it.
    pub const AGENT_SESSION_STATE: &str = "agent_session_state";
}

/// Header `Flags` bits (§2.1, §2.6).
pub mod header_flags {
    /// Set by the agent on its stream message seq 0.
    pub const SYN: u64 = 1;
    /// Defined by the format; no official sender sets it alone.
    pub const FIN: u64 = 2;
    /// What plugin and agent put on every `acknowledge`.
    pub const ACK: u64 = SYN | FIN;
}

/// Values carried by a `PayloadType::Flag` payload as a 4-byte big-endian u32 (§2.7).
pub mod flag_value {
    /// Basic mode: the agent closes its target connection and re-dials on the next Output.
    pub const DISCONNECT_TO_PORT: u32 = 1;
    /// The agent cancels the session.
    pub const TERMINATE_SESSION: u32 = 2;
    /// Mux mode, agent → client: dialing the target for a new smux stream failed.
    pub const CONNECT_TO_PORT_ERROR: u32 = 3;
}

/// Errors from decoding a frame or one of its JSON payloads.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The frame ends before a field the header says is there.
    #[error("SSM frame truncated: {needed} bytes needed, {len} present")]
    Truncated {
        /// Bytes the header implies at minimum.
        needed: usize,
        /// Bytes actually received.
        len: usize,
    },
    /// HeaderLength would overlap the fixed header fields.
    #[error("SSM frame header length {0} is below the minimum of {MIN_HEADER_LENGTH}")]
    HeaderLengthTooSmall(u32),
    /// MessageType bytes are not UTF-8, so the frame cannot be classified.
    #[error("SSM frame message type is not valid UTF-8")]
    MessageTypeNotUtf8,
    /// The payload does not hash to the PayloadDigest; the frame was corrupted or mis-built.
    #[error("SSM {message_type} message seq {sequence_number}: payload digest mismatch")]
    DigestMismatch {
        /// MessageType of the bad frame, for the log.
        message_type: String,
        /// SequenceNumber of the bad frame, for the log.
        sequence_number: i64,
    },
    /// A flag payload must be exactly 4 bytes.
    #[error("SSM flag payload has {0} bytes, expected 4")]
    BadFlagPayload(usize),
    /// A JSON payload did not match its schema.
    #[error("SSM {what} payload is not valid JSON")]
    Json {
        /// Which payload was being read or written.
        what: &'static str,
        /// The underlying parser error.
        #[source]
        source: serde_json::Error,
    },
}

/// PayloadType of a message (§2.5). Unrecognised values survive a decode/encode round trip.
///
/// Build values with `From<u32>` so that a known number always maps to its named variant;
/// `Unknown(1)` and `Output` encode identically but do not compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadType {
    /// 0: acknowledge, channel_closed, start/pause publication.
    Unset,
    /// 1: forwarded bytes, both directions.
    Output,
    /// 2: defined, unused by port sessions.
    Error,
    /// 3: terminal size (shell only).
    Size,
    /// 4: defined, unused.
    Parameter,
    /// 5: agent → client handshake JSON.
    HandshakeRequest,
    /// 6: client → agent handshake JSON.
    HandshakeResponse,
    /// 7: agent → client, handshake finished.
    HandshakeComplete,
    /// 8: KMS only.
    EncChallengeRequest,
    /// 9: KMS only.
    EncChallengeResponse,
    /// 10: 4-byte flag value, see [`flag_value`].
    Flag,
    /// 11: non-interactive command sessions.
    StdErr,
    /// 12: non-interactive command sessions.
    ExitCode,
    /// Anything else, kept verbatim.
    Unknown(u32),
}

impl From<u32> for PayloadType {
    fn from(value: u32) -> Self {
        match value {
            0 => Self::Unset,
            1 => Self::Output,
            2 => Self::Error,
            3 => Self::Size,
            4 => Self::Parameter,
            5 => Self::HandshakeRequest,
            6 => Self::HandshakeResponse,
            7 => Self::HandshakeComplete,
            8 => Self::EncChallengeRequest,
            9 => Self::EncChallengeResponse,
            10 => Self::Flag,
            11 => Self::StdErr,
            12 => Self::ExitCode,
            other => Self::Unknown(other),
        }
    }
}

impl From<PayloadType> for u32 {
    fn from(value: PayloadType) -> Self {
        match value {
            PayloadType::Unset => 0,
            PayloadType::Output => 1,
            PayloadType::Error => 2,
            PayloadType::Size => 3,
            PayloadType::Parameter => 4,
            PayloadType::HandshakeRequest => 5,
            PayloadType::HandshakeResponse => 6,
            PayloadType::HandshakeComplete => 7,
            PayloadType::EncChallengeRequest => 8,
            PayloadType::EncChallengeResponse => 9,
            PayloadType::Flag => 10,
            PayloadType::StdErr => 11,
            PayloadType::ExitCode => 12,
            PayloadType::Unknown(other) => other,
        }
    }
}

/// A decoded flag payload (§2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlagPayload {
    /// See [`flag_value::DISCONNECT_TO_PORT`].
    DisconnectToPort,
    /// See [`flag_value::TERMINATE_SESSION`].
    TerminateSession,
    /// See [`flag_value::CONNECT_TO_PORT_ERROR`].
    ConnectToPortError,
    /// A value this code does not know; the caller should log and ignore it.
    Unknown(u32),
}

impl From<u32> for FlagPayload {
    fn from(value: u32) -> Self {
        match value {
            flag_value::DISCONNECT_TO_PORT => Self::DisconnectToPort,
            flag_value::TERMINATE_SESSION => Self::TerminateSession,
            flag_value::CONNECT_TO_PORT_ERROR => Self::ConnectToPortError,
            other => Self::Unknown(other),
        }
    }
}

impl From<FlagPayload> for u32 {
    fn from(value: FlagPayload) -> Self {
        match value {
            FlagPayload::DisconnectToPort => flag_value::DISCONNECT_TO_PORT,
            FlagPayload::TerminateSession => flag_value::TERMINATE_SESSION,
            FlagPayload::ConnectToPortError => flag_value::CONNECT_TO_PORT_ERROR,
            FlagPayload::Unknown(other) => other,
        }
    }
}

impl FlagPayload {
    /// Reads a `PayloadType::Flag` payload.
    pub fn decode(payload: &[u8]) -> Result<Self, MessageError> {
        let raw: [u8; 4] = payload
            .try_into()
            .map_err(|_| MessageError::BadFlagPayload(payload.len()))?;
        Ok(Self::from(u32::from_be_bytes(raw)))
    }

    /// The 4-byte big-endian payload.
    pub fn encode(self) -> Bytes {
        Bytes::copy_from_slice(&u32::from(self).to_be_bytes())
    }
}

/// One data channel message: exactly one binary WebSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    /// One of [`message_type`]; decoding strips the NUL/space padding. Names longer than 32
    /// bytes are cut to 32 on encode, since the field has no room for more.
    pub message_type: String,
    /// Always 1 on the wire today; kept so a decoded frame re-encodes unchanged.
    pub schema_version: u32,
    /// Unix epoch milliseconds. The agent rejects 0.
    pub created_date: u64,
    /// Only meaningful on stream data; 0 on everything else.
    pub sequence_number: i64,
    /// Header bits, see [`header_flags`].
    pub flags: u64,
    /// Canonical UUID; the wire swaps its two halves, the codec undoes that.
    pub message_id: Uuid,
    /// What the payload contains.
    pub payload_type: PayloadType,
    /// Raw payload bytes.
    pub payload: Bytes,
}

impl ClientMessage {
    /// A message stamped with the current time and a fresh random MessageId.
    pub fn new(
        message_type: &str,
        sequence_number: i64,
        flags: u64,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Self {
        Self {
            message_type: message_type.to_owned(),
            schema_version: SCHEMA_VERSION,
            created_date: now_millis(),
            sequence_number,
            flags,
            message_id: Uuid::new_v4(),
            payload_type,
            payload,
        }
    }

    /// Client → agent stream data with the header values the plugin uses (flags 0).
    pub fn input_stream_data(
        sequence_number: i64,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Self {
        Self::new(
            message_type::INPUT_STREAM_DATA,
            sequence_number,
            0,
            payload_type,
            payload,
        )
    }

    /// A flag message (e.g. TerminateSession). It is ordinary stream data and takes a sequence
    /// number like any other.
    pub fn flag(sequence_number: i64, flag: FlagPayload) -> Self {
        Self::input_stream_data(sequence_number, PayloadType::Flag, flag.encode())
    }

    /// The `acknowledge` for a received stream message, with the official header values
    /// (seq 0, flags SYN|FIN, PayloadType 0); receivers match on the JSON's sequence number.
    pub fn ack_for(received: &ClientMessage) -> Result<Self, MessageError> {
        let content = AcknowledgeContent::for_message(received);
        let payload = serde_json::to_vec(&content).map_err(|source| MessageError::Json {
            what: "acknowledge",
            source,
        })?;
        Ok(Self::new(
            message_type::ACKNOWLEDGE,
            0,
            header_flags::ACK,
            PayloadType::Unset,
            Bytes::from(payload),
        ))
    }

    /// True for the two sequenced types that take part in acking and reordering.
    pub fn is_stream_data(&self) -> bool {
        self.message_type == message_type::INPUT_STREAM_DATA
            || self.message_type == message_type::OUTPUT_STREAM_DATA
    }

    /// Parses the payload as JSON of type `T`; `what` names the payload in the error.
    pub fn json_payload<T: DeserializeOwned>(&self, what: &'static str) -> Result<T, MessageError> {
        serde_json::from_slice(&self.payload).map_err(|source| MessageError::Json { what, source })
    }

    /// Serialises with HL 116, space padding, swapped UUID halves and the payload's SHA-256.
    pub fn encode(&self) -> Bytes {
        let header_len = HEADER_LENGTH as usize;
        let mut buf = BytesMut::with_capacity(header_len + 4 + self.payload.len());
        buf.put_u32(HEADER_LENGTH);
        let name = self.message_type.as_bytes();
        let name = name.get(..MESSAGE_TYPE_LEN).unwrap_or(name);
        buf.put_slice(name);
        buf.put_bytes(b' ', MESSAGE_TYPE_LEN - name.len());
        buf.put_u32(self.schema_version);
        buf.put_u64(self.created_date);
        buf.put_i64(self.sequence_number);
        buf.put_u64(self.flags);
        let (high, low) = self.message_id.as_bytes().split_at(8);
        buf.put_slice(low);
        buf.put_slice(high);
        buf.put_slice(&Sha256::digest(&self.payload));
        buf.put_u32(self.payload_type.into());
        // A payload over 4 GiB cannot be framed; receivers slice by frame length anyway.
        buf.put_u32(u32::try_from(self.payload.len()).unwrap_or(u32::MAX));
        buf.put_slice(&self.payload);
        buf.freeze()
    }

    /// Parses one frame following §2.2; the payload is copied out of `frame`.
    pub fn decode(frame: &[u8]) -> Result<Self, MessageError> {
        let (mut message, payload_start) = Self::decode_header(frame)?;
        message.payload = Bytes::copy_from_slice(frame.get(payload_start..).unwrap_or_default());
        Ok(message)
    }

    /// Same as [`ClientMessage::decode`], but the payload shares `frame`'s buffer instead of
    /// being copied (WebSocket libraries hand frames over as `Bytes`).
    pub fn decode_bytes(frame: &Bytes) -> Result<Self, MessageError> {
        let (mut message, payload_start) = Self::decode_header(frame)?;
        message.payload = frame.slice(payload_start..);
        Ok(message)
    }

    /// Everything except copying the payload: returns the message with an empty payload and
    /// the offset at which the payload starts. The digest is checked here.
    fn decode_header(frame: &[u8]) -> Result<(Self, usize), MessageError> {
        let header_length = read_u32(frame, 0)?;
        if header_length < MIN_HEADER_LENGTH {
            return Err(MessageError::HeaderLengthTooSmall(header_length));
        }
        let hl = usize::try_from(header_length).unwrap_or(usize::MAX);
        // The payload starts after PayloadLength, wherever HL puts it. The PayloadLength value
        // itself is never trusted for slicing: start/pause frames carry garbage there.
        let payload_start = hl.saturating_add(4);
        if frame.len() < payload_start {
            return Err(MessageError::Truncated {
                needed: payload_start,
                len: frame.len(),
            });
        }
        let declared_len = read_u32(frame, hl)?;

        let message_type = parse_message_type(slice(frame, OFF_MESSAGE_TYPE, MESSAGE_TYPE_LEN)?)?;
        let id_wire = slice(frame, OFF_MESSAGE_ID, 16)?;
        let mut id = [0u8; 16];
        let (high, low) = id.split_at_mut(8);
        high.copy_from_slice(id_wire.get(8..).unwrap_or_default());
        low.copy_from_slice(id_wire.get(..8).unwrap_or_default());
        // An HL of 112 means the frame has no PayloadType field; bytes 112..116 are the length.
        let payload_type = if header_length >= HEADER_LENGTH {
            PayloadType::from(read_u32(frame, OFF_PAYLOAD_TYPE)?)
        } else {
            PayloadType::Unset
        };
        let message = Self {
            schema_version: read_u32(frame, OFF_SCHEMA_VERSION)?,
            created_date: read_u64(frame, OFF_CREATED_DATE)?,
            sequence_number: i64::from_be_bytes(array(frame, OFF_SEQUENCE_NUMBER)?),
            flags: read_u64(frame, OFF_FLAGS)?,
            message_id: Uuid::from_bytes(id),
            payload_type,
            payload: Bytes::new(),
            message_type,
        };

        let payload = frame.get(payload_start..).unwrap_or_default();
        let digest_unreliable = message.message_type == message_type::START_PUBLICATION
            || message.message_type == message_type::PAUSE_PUBLICATION;
        // Same rule as the plugin: a declared length of 0 means "nothing to verify". A frame
        // that declares a payload but was cut short fails here, as it should.
        if !digest_unreliable && declared_len != 0 {
            let expected = slice(frame, OFF_PAYLOAD_DIGEST, DIGEST_LEN)?;
            if Sha256::digest(payload).as_slice() != expected {
                return Err(MessageError::DigestMismatch {
                    message_type: message.message_type,
                    sequence_number: message.sequence_number,
                });
            }
        }
        Ok((message, payload_start))
    }
}

/// Current Unix time in milliseconds, never 0 (the agent rejects a zero CreatedDate).
pub fn now_millis() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    u64::try_from(since_epoch).unwrap_or(u64::MAX).max(1)
}

fn slice(frame: &[u8], offset: usize, len: usize) -> Result<&[u8], MessageError> {
    let end = offset.saturating_add(len);
    frame.get(offset..end).ok_or(MessageError::Truncated {
        needed: end,
        len: frame.len(),
    })
}

fn array<const N: usize>(frame: &[u8], offset: usize) -> Result<[u8; N], MessageError> {
    let bytes = slice(frame, offset, N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

fn read_u32(frame: &[u8], offset: usize) -> Result<u32, MessageError> {
    array(frame, offset).map(u32::from_be_bytes)
}

fn read_u64(frame: &[u8], offset: usize) -> Result<u64, MessageError> {
    array(frame, offset).map(u64::from_be_bytes)
}

/// Strips NULs and whitespace, mixed in any order, from both ends (MGS pads `channel_closed`
/// with NULs, the rest with spaces). One pass over both, so decoding what we encode gives the
/// same name back (fuzzing found `\x0c\0…` names that two passes changed on a round trip).
fn parse_message_type(raw: &[u8]) -> Result<String, MessageError> {
    let text = std::str::from_utf8(raw).map_err(|_| MessageError::MessageTypeNotUtf8)?;
    Ok(text.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_owned())
}

/// Payload of an `acknowledge` (§2.8). Receivers only need the sequence number, so the other
/// fields default when absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AcknowledgeContent {
    /// MessageType of the acked message.
    #[serde(default)]
    pub acknowledged_message_type: String,
    /// Canonical lower-case hyphenated MessageId of the acked message.
    #[serde(default)]
    pub acknowledged_message_id: String,
    /// The acked message's sequence number: the only field senders act on.
    pub acknowledged_message_sequence_number: i64,
    /// Always true from plugin and agent.
    #[serde(default)]
    pub is_sequential_message: bool,
}

impl AcknowledgeContent {
    /// The content that acknowledges `received`.
    pub fn for_message(received: &ClientMessage) -> Self {
        Self {
            acknowledged_message_type: received.message_type.clone(),
            acknowledged_message_id: received.message_id.hyphenated().to_string(),
            acknowledged_message_sequence_number: received.sequence_number,
            is_sequential_message: true,
        }
    }
}

/// Payload of `channel_closed` (§2.8). Parsed leniently: every field is optional and scalar
/// fields of an unexpected JSON type become `None`, because losing the close *reason* to a
/// schema quibble would leave the user with no explanation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChannelClosed {
    /// MGS's id of this message.
    #[serde(default, deserialize_with = "lenient_string")]
    pub message_id: Option<String>,
    /// A date string; its format is not documented, so it is not parsed.
    #[serde(default, deserialize_with = "lenient_string")]
    pub created_date: Option<String>,
    /// Id of the peer the close is addressed to.
    #[serde(default, deserialize_with = "lenient_string")]
    pub destination_id: Option<String>,
    /// The session that closed.
    #[serde(default, deserialize_with = "lenient_string")]
    pub session_id: Option<String>,
    /// Repeats the message type.
    #[serde(default, deserialize_with = "lenient_string")]
    pub message_type: Option<String>,
    /// An integer schema version.
    #[serde(default, deserialize_with = "lenient_int")]
    pub schema_version: Option<i64>,
    /// Human-readable reason, e.g. the idle-timeout text.
    #[serde(default, deserialize_with = "lenient_string")]
    pub output: Option<String>,
}

impl ChannelClosed {
    /// Parses a `channel_closed` payload.
    pub fn from_payload(payload: &[u8]) -> Result<Self, MessageError> {
        serde_json::from_slice(payload).map_err(|source| MessageError::Json {
            what: "channel_closed",
            source,
        })
    }

    /// The reason text, if MGS gave a non-blank one.
    pub fn reason(&self) -> Option<&str> {
        self.output
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(de)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

fn lenient_int<'de, D: Deserializer<'de>>(de: D) -> Result<Option<i64>, D::Error> {
    Ok(match serde_json::Value::deserialize(de)? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

/// The one text frame sent right after the WebSocket opens (§1.2). Field order is the plugin's.
///
/// `Debug` redacts `token_value`: the stream token grants access to the session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OpenDataChannelInput {
    /// Always "1.0".
    pub message_schema_version: String,
    /// Fresh random UUID per open (a reconnect gets a new one).
    pub request_id: String,
    /// TokenValue from StartSession or ResumeSession. Secret.
    pub token_value: String,
    /// Random UUID chosen once per session and reused on every reconnect.
    pub client_id: String,
    /// Must equal the HandshakeResponse ClientVersion; the agent keys mux and keepalive on it.
    pub client_version: String,
}

impl OpenDataChannelInput {
    /// Builds the open message with a fresh RequestId.
    pub fn new(token_value: String, client_id: Uuid, client_version: &str) -> Self {
        Self {
            message_schema_version: "1.0".to_owned(),
            request_id: Uuid::new_v4().hyphenated().to_string(),
            token_value,
            client_id: client_id.hyphenated().to_string(),
            client_version: client_version.to_owned(),
        }
    }

    /// The JSON text to send as a WebSocket text frame.
    pub fn to_json(&self) -> Result<String, MessageError> {
        serde_json::to_string(self).map_err(|source| MessageError::Json {
            what: "OpenDataChannelInput",
            source,
        })
    }
}

impl fmt::Debug for OpenDataChannelInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenDataChannelInput")
            .field("message_schema_version", &self.message_schema_version)
            .field("request_id", &self.request_id)
            .field("token_value", &"<redacted>")
            .field("client_id", &self.client_id)
            .field("client_version", &self.client_version)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// §2.3 test vector.
    const VECTOR: [u8; 124] = [
        0x00, 0x00, 0x00, 0x74, 0x69, 0x6e, 0x70, 0x75, 0x74, 0x5f, 0x73, 0x74, 0x72, 0x65, 0x61,
        0x6d, //
        0x5f, 0x64, 0x61, 0x74, 0x61, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
        0x20, //
        0x20, 0x20, 0x20, 0x20, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68,
        0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, //
        0x86, 0x95, 0xa4, 0xb3, 0xc2, 0xd1, 0xe0, 0xf0, 0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x49,
        0x78, //
        0x43, 0x3e, 0xbf, 0x5b, 0xc0, 0x3d, 0xff, 0xa3, 0x85, 0x36, 0x67, 0x32, 0x07, 0xa2, 0x12,
        0x81, //
        0x61, 0x2c, 0xef, 0x5f, 0xaa, 0x9b, 0xc7, 0xa4, 0xd5, 0xb9, 0xbe, 0x2f, 0xdb, 0x12, 0xcf,
        0x1a, //
        0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02,
    ];

    fn vector_message() -> ClientMessage {
        ClientMessage {
            message_type: message_type::INPUT_STREAM_DATA.to_owned(),
            schema_version: 1,
            created_date: 1_700_000_000_000,
            sequence_number: 5,
            flags: 0,
            message_id: Uuid::parse_str("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0").expect("literal"),
            payload_type: PayloadType::Flag,
            payload: Bytes::from_static(&[0, 0, 0, 2]),
        }
    }

    /// Rewrites the digest after a test mutates the payload or header.
    fn fix_digest(frame: &mut [u8]) {
        let hl = u32::from_be_bytes(frame[0..4].try_into().expect("4 bytes")) as usize;
        let digest = Sha256::digest(&frame[hl + 4..]);
        frame[80..112].copy_from_slice(&digest);
    }

    #[test]
    fn encodes_spec_vector_byte_for_byte() {
        assert_eq!(&vector_message().encode()[..], &VECTOR[..]);
    }

    #[test]
    fn decodes_spec_vector() {
        let decoded = ClientMessage::decode(&VECTOR).expect("valid vector");
        assert_eq!(decoded, vector_message());
        assert_eq!(
            FlagPayload::decode(&decoded.payload).expect("flag"),
            FlagPayload::TerminateSession
        );
        let shared =
            ClientMessage::decode_bytes(&Bytes::from_static(&VECTOR)).expect("valid vector");
        assert_eq!(shared, decoded);
    }

    #[test]
    fn uuid_halves_swap_like_gimlet_example() {
        let logical = Uuid::parse_str("812ef34f-87bd-449e-a3de-282f478ba6e6").expect("literal");
        let wire = Uuid::parse_str("a3de282f-478b-a6e6-812e-f34f87bd449e").expect("literal");
        let mut message = vector_message();
        message.message_id = logical;
        let frame = message.encode();
        assert_eq!(&frame[64..80], wire.as_bytes());
        assert_eq!(
            ClientMessage::decode(&frame)
                .expect("round trip")
                .message_id,
            logical
        );
    }

    #[test]
    fn round_trips_random_messages() {
        let mut rng = StdRng::seed_from_u64(7);
        for len in [0usize, 1, 4, 1024, 5000] {
            let mut payload = vec![0u8; len];
            rng.fill(&mut payload[..]);
            let message = ClientMessage {
                message_type: message_type::OUTPUT_STREAM_DATA.to_owned(),
                schema_version: 1,
                created_date: rng.random(),
                sequence_number: rng.random(),
                flags: rng.random(),
                message_id: Uuid::from_bytes(rng.random()),
                payload_type: PayloadType::from(rng.random_range(0..20)),
                payload: Bytes::from(payload),
            };
            let frame = message.encode();
            assert_eq!(frame.len(), 120 + len);
            assert_eq!(ClientMessage::decode(&frame).expect("round trip"), message);
        }
    }

    #[test]
    fn empty_payload_digest_is_sha256_of_nothing() {
        let message = ClientMessage::input_stream_data(0, PayloadType::Output, Bytes::new());
        let frame = message.encode();
        assert_eq!(frame[80..84], [0xe3, 0xb0, 0xc4, 0x42]);
        assert_eq!(frame[108..112], [0x78, 0x52, 0xb8, 0x55]);
    }

    #[test]
    fn strips_nul_and_space_padding_from_type() {
        let mut frame = VECTOR.to_vec();
        // NUL-padded on the right, as MGS does for channel_closed.
        frame[4..36].fill(0);
        frame[4..18].copy_from_slice(b"channel_closed");
        assert_eq!(
            ClientMessage::decode(&frame).expect("valid").message_type,
            "channel_closed"
        );
        // NUL-padded on the left, as bertrandmartel's client does.
        frame[4..36].fill(0);
        frame[36 - 14..36].copy_from_slice(b"channel_closed");
        assert_eq!(
            ClientMessage::decode(&frame).expect("valid").message_type,
            "channel_closed"
        );
    }

    #[test]
    fn long_message_type_is_cut_to_field_width() {
        let mut message = vector_message();
        message.message_type = "x".repeat(40);
        let decoded = ClientMessage::decode(&message.encode()).expect("valid");
        assert_eq!(decoded.message_type, "x".repeat(32));
    }

    #[test]
    fn header_length_112_channel_closed() {
        let json = br#"{"MessageId":"m","CreatedDate":"2022-01-01T00:00:00Z","SessionId":"s","SchemaVersion":1,"Output":"Your session timed out due to inactivity and has been terminated."}"#;
        let mut frame = Vec::new();
        frame.extend_from_slice(&112u32.to_be_bytes());
        let mut name = [0u8; 32];
        name[..14].copy_from_slice(b"channel_closed");
        frame.extend_from_slice(&name);
        frame.extend_from_slice(&1u32.to_be_bytes());
        frame.extend_from_slice(&1_650_000_000_000u64.to_be_bytes());
        frame.extend_from_slice(&0i64.to_be_bytes());
        frame.extend_from_slice(&3u64.to_be_bytes());
        frame.extend_from_slice(&[0x11; 16]);
        frame.extend_from_slice(&Sha256::digest(json));
        frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
        frame.extend_from_slice(json);

        let message = ClientMessage::decode(&frame).expect("HL 112 accepted");
        assert_eq!(message.message_type, message_type::CHANNEL_CLOSED);
        assert_eq!(message.payload_type, PayloadType::Unset);
        assert_eq!(&message.payload[..], &json[..]);
        let closed = ChannelClosed::from_payload(&message.payload).expect("json");
        assert_eq!(
            closed.reason(),
            Some("Your session timed out due to inactivity and has been terminated.")
        );
        assert_eq!(closed.schema_version, Some(1));
    }

    #[test]
    fn payload_slices_from_header_length_not_declared_length() {
        let mut frame = VECTOR.to_vec();
        frame[116..120].copy_from_slice(&999u32.to_be_bytes());
        let message = ClientMessage::decode(&frame).expect("declared length ignored for slicing");
        assert_eq!(&message.payload[..], &[0, 0, 0, 2]);
    }

    #[test]
    fn larger_header_length_skips_unknown_header_bytes() {
        let mut frame = VECTOR[..116].to_vec();
        frame[0..4].copy_from_slice(&120u32.to_be_bytes());
        frame.extend_from_slice(&[0xAA; 4]); // unknown extension field
        frame.extend_from_slice(&4u32.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 2]);
        let message = ClientMessage::decode(&frame).expect("valid");
        assert_eq!(message.payload_type, PayloadType::Flag);
        assert_eq!(&message.payload[..], &[0, 0, 0, 2]);
    }

    #[test]
    fn digest_mismatch_is_an_error() {
        let mut frame = VECTOR.to_vec();
        frame[123] = 3;
        assert!(matches!(
            ClientMessage::decode(&frame),
            Err(MessageError::DigestMismatch {
                sequence_number: 5,
                ..
            })
        ));
    }

    #[test]
    fn digest_not_checked_for_publication_messages_or_zero_length() {
        for name in [
            message_type::START_PUBLICATION,
            message_type::PAUSE_PUBLICATION,
        ] {
            let mut frame = VECTOR.to_vec();
            frame[4..36].fill(b' ');
            frame[4..4 + name.len()].copy_from_slice(name.as_bytes());
            frame[80..112].fill(0xEE); // bogus digest
            frame[116..120].copy_from_slice(&[0x04, 0, 0, 0]); // little-endian garbage length
            let message = ClientMessage::decode(&frame).expect("lenient");
            assert_eq!(message.message_type, name);
        }
        let mut frame = VECTOR.to_vec();
        frame[80..112].fill(0xEE);
        frame[116..120].fill(0);
        assert!(
            ClientMessage::decode(&frame).is_ok(),
            "declared length 0 skips the check"
        );
        let mut frame = VECTOR[..120].to_vec();
        frame[80..112].copy_from_slice(&Sha256::digest(b""));
        assert!(
            ClientMessage::decode(&frame).is_ok(),
            "empty payload digested as empty"
        );
    }

    #[test]
    fn rejects_small_header_length_and_bad_utf8() {
        let mut frame = VECTOR.to_vec();
        frame[0..4].copy_from_slice(&100u32.to_be_bytes());
        assert!(matches!(
            ClientMessage::decode(&frame),
            Err(MessageError::HeaderLengthTooSmall(100))
        ));
        let mut frame = VECTOR.to_vec();
        frame[4] = 0xFF;
        fix_digest(&mut frame);
        assert!(matches!(
            ClientMessage::decode(&frame),
            Err(MessageError::MessageTypeNotUtf8)
        ));
    }

    #[test]
    fn every_truncation_errors_without_panicking() {
        for len in 0..VECTOR.len() {
            let cut = &VECTOR[..len];
            let result = ClientMessage::decode(cut);
            if len < 120 {
                assert!(
                    matches!(result, Err(MessageError::Truncated { .. })),
                    "len {len}: {result:?}"
                );
            } else {
                // Payload shortened: structurally fine, but the digest no longer matches.
                assert!(
                    matches!(result, Err(MessageError::DigestMismatch { .. })),
                    "len {len}"
                );
            }
            let _ = ClientMessage::decode_bytes(&Bytes::copy_from_slice(cut));
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x55_4d);
        for round in 0..20_000 {
            let len = rng.random_range(0..300);
            let mut frame = vec![0u8; len];
            rng.fill(&mut frame[..]);
            // Make a good share of inputs get past the HL check.
            if len >= 4 && round % 2 == 0 {
                let hl: u32 = *[112u32, 113, 115, 116, 117, 200, u32::MAX, u32::MAX - 3]
                    .get(round % 8)
                    .unwrap_or(&116);
                frame[0..4].copy_from_slice(&hl.to_be_bytes());
            }
            let _ = ClientMessage::decode(&frame);
            let _ = ClientMessage::decode_bytes(&Bytes::from(frame));
        }
        // Bit flips of a valid frame.
        for bit in 0..VECTOR.len() * 8 {
            let mut frame = VECTOR.to_vec();
            frame[bit / 8] ^= 1 << (bit % 8);
            let _ = ClientMessage::decode(&frame);
        }
    }

    #[test]
    fn ack_matches_official_header_and_json() {
        let received = ClientMessage {
            message_type: message_type::OUTPUT_STREAM_DATA.to_owned(),
            sequence_number: 7,
            message_id: Uuid::parse_str("812ef34f-87bd-449e-a3de-282f478ba6e6").expect("literal"),
            ..vector_message()
        };
        let ack = ClientMessage::ack_for(&received).expect("ack");
        assert_eq!(ack.message_type, message_type::ACKNOWLEDGE);
        assert_eq!(
            (ack.sequence_number, ack.flags, ack.payload_type),
            (0, 3, PayloadType::Unset)
        );
        assert_eq!(
            std::str::from_utf8(&ack.payload).expect("utf8"),
            r#"{"AcknowledgedMessageType":"output_stream_data","AcknowledgedMessageId":"812ef34f-87bd-449e-a3de-282f478ba6e6","AcknowledgedMessageSequenceNumber":7,"IsSequentialMessage":true}"#
        );
        let decoded = ClientMessage::decode(&ack.encode()).expect("round trip");
        let content: AcknowledgeContent = decoded.json_payload("acknowledge").expect("json");
        assert_eq!(content.acknowledged_message_sequence_number, 7);
        // Receivers only need the sequence number.
        let minimal: AcknowledgeContent =
            serde_json::from_str(r#"{"AcknowledgedMessageSequenceNumber":3}"#).expect("lenient");
        assert_eq!(minimal.acknowledged_message_sequence_number, 3);
    }

    #[test]
    fn stream_data_and_flag_constructors() {
        let data =
            ClientMessage::input_stream_data(9, PayloadType::Output, Bytes::from_static(b"hi"));
        assert_eq!(data.message_type, message_type::INPUT_STREAM_DATA);
        assert_eq!(
            (data.sequence_number, data.flags, data.schema_version),
            (9, 0, 1)
        );
        assert!(data.created_date > 1_600_000_000_000);
        assert!(data.is_stream_data());
        let flag = ClientMessage::flag(10, FlagPayload::DisconnectToPort);
        assert_eq!(flag.payload_type, PayloadType::Flag);
        assert_eq!(&flag.payload[..], &[0, 0, 0, 1]);
        assert_eq!(
            FlagPayload::decode(&[0, 0, 0, 3]).expect("4 bytes"),
            FlagPayload::ConnectToPortError
        );
        assert_eq!(
            FlagPayload::decode(&[0, 0, 0, 9]).expect("4 bytes"),
            FlagPayload::Unknown(9)
        );
        assert!(matches!(
            FlagPayload::decode(&[0, 2]),
            Err(MessageError::BadFlagPayload(2))
        ));
    }

    #[test]
    fn payload_type_numbers_round_trip() {
        for n in 0..=20u32 {
            assert_eq!(u32::from(PayloadType::from(n)), n);
        }
        assert_eq!(PayloadType::from(10), PayloadType::Flag);
        assert_eq!(PayloadType::from(77), PayloadType::Unknown(77));
    }

    #[test]
    fn channel_closed_is_lenient() {
        let closed = ChannelClosed::from_payload(
            br#"{"CreatedDate":1650000000,"SchemaVersion":"1","Output":"  ","Extra":{"a":1},"MessageSchemaVersion":"1.0"}"#,
        )
        .expect("lenient");
        assert_eq!(closed.created_date.as_deref(), Some("1650000000"));
        assert_eq!(closed.schema_version, Some(1));
        assert_eq!(closed.reason(), None);
        assert_eq!(
            ChannelClosed::from_payload(b"{}").expect("empty object"),
            ChannelClosed::default()
        );
        assert!(ChannelClosed::from_payload(b"not json").is_err());
    }

    #[test]
    fn open_data_channel_field_order_and_redaction() {
        let client_id = Uuid::parse_str("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0").expect("literal");
        let mut open = OpenDataChannelInput::new("s3cr3t-token".to_owned(), client_id, "1.2.650.0");
        assert!(Uuid::parse_str(&open.request_id).is_ok());
        open.request_id = "r".to_owned();
        assert_eq!(
            open.to_json().expect("json"),
            r#"{"MessageSchemaVersion":"1.0","RequestId":"r","TokenValue":"s3cr3t-token","ClientId":"0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0","ClientVersion":"1.2.650.0"}"#
        );
        let debug = format!("{open:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("<redacted>"));
    }
}
