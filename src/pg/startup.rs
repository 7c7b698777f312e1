//! The untyped first packets a client sends: SSLRequest, GSSENCRequest, CancelRequest and the
//! StartupMessage (protocol 3.x). The StartupMessage is kept as the exact bytes the client sent so
//! it can be forwarded verbatim, `_pq_.*` options included.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// PostgreSQL's own cap on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;
/// `PG_PROTOCOL(1234,5678)`.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// `PG_PROTOCOL(1234,5679)`.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// `PG_PROTOCOL(1234,5680)`.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// A cancel key is 4 bytes in protocol 3.0 and 4..=256 bytes in 3.2.
pub const MIN_CANCEL_KEY_LEN: usize = 4;
pub const MAX_CANCEL_KEY_LEN: usize = 256;

/// The SSLRequest packet, as sent upstream.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// One first packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelRequest),
    Startup(StartupMessage),
}

/// A CancelRequest, kept verbatim: the proxy passes the server's keys through unchanged, so the
/// client's request is valid for the upstream as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct CancelRequest {
    raw: Bytes,
}

impl CancelRequest {
    /// The whole packet, length word included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The backend process id the cancel is aimed at.
    pub fn pid(&self) -> u32 {
        u32::from_be_bytes([self.raw[8], self.raw[9], self.raw[10], self.raw[11]])
    }

    pub fn key_len(&self) -> usize {
        self.raw.len() - 12
    }
}

impl std::fmt::Debug for CancelRequest {
    // The secret key is a credential for cancelling someone's query: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelRequest")
            .field("pid", &self.pid())
            .field("key_len", &self.key_len())
            .finish()
    }
}

/// A parsed StartupMessage that still holds the client's exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    raw: Bytes,
    major: u16,
    minor: u16,
    params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The packet exactly as the client sent it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    pub fn version(&self) -> (u16, u16) {
        (self.major, self.minor)
    }

    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `user` parameter; parsing guarantees it is present and non-empty.
    pub fn user(&self) -> &str {
        self.param("user").unwrap_or_default()
    }

    /// The database, which PostgreSQL defaults to the user name.
    pub fn database(&self) -> &str {
        self.param("database").unwrap_or_else(|| self.user())
    }

    /// The same startup with `user` replaced (for `--db-user`); everything else, order included,
    /// stays as the client sent it.
    pub fn with_user(&self, user: &str) -> StartupMessage {
        let params: Vec<(String, String)> = self
            .params
            .iter()
            .map(|(k, v)| {
                if k == "user" {
                    (k.clone(), user.to_owned())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        let raw = encode_startup(self.major, self.minor, &params);
        StartupMessage {
            raw,
            major: self.major,
            minor: self.minor,
            params,
        }
    }
}

/// Encodes a StartupMessage; used by `with_user` and by tests and the simulator.
pub fn encode_startup(major: u16, minor: u16, params: &[(String, String)]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u16(major);
    body.put_u16(minor);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_u32((body.len() + 4) as u32);
    out.put_slice(&body);
    out.freeze()
}

/// Why a first packet was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("client closed the connection before sending a startup packet")]
    Closed,
    #[error("client connection failed while reading the startup packet")]
    Io(#[source] std::io::Error),
    #[error("the client started a TLS handshake directly (sslnegotiation=direct), which this proxy does not offer")]
    DirectTls,
    #[error("startup packet length {0} is invalid (minimum 8)")]
    TooShort(u32),
    #[error("startup packet of {0} bytes exceeds the limit of {MAX_STARTUP_PACKET_LEN} bytes")]
    TooLong(u32),
    #[error("unsupported frontend protocol {0}.{1}: the proxy speaks protocol 3")]
    UnsupportedVersion(u16, u16),
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
    #[error("startup packet has no \"user\" parameter")]
    MissingUser,
    #[error("cancel request with a {0}-byte key (must be {MIN_CANCEL_KEY_LEN} to {MAX_CANCEL_KEY_LEN} bytes)")]
    CancelKeyLength(usize),
}

/// Reads one first packet. Nothing is allocated before the length has been checked.
pub async fn read_first_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<FirstPacket, StartupError> {
    let mut len_buf = [0u8; 4];
    // Tell a clean close before the first byte apart from a packet cut in half.
    let n = reader.read(&mut len_buf).await.map_err(StartupError::Io)?;
    if n == 0 {
        return Err(StartupError::Closed);
    }
    if len_buf[0] == 0x16 {
        return Err(StartupError::DirectTls);
    }
    reader
        .read_exact(&mut len_buf[n..])
        .await
        .map_err(StartupError::Io)?;
    let len = u32::from_be_bytes(len_buf);
    if len < 8 {
        return Err(StartupError::TooShort(len));
    }
    if len as usize > MAX_STARTUP_PACKET_LEN {
        return Err(StartupError::TooLong(len));
    }
    let mut packet = BytesMut::zeroed(len as usize);
    packet[..4].copy_from_slice(&len_buf);
    reader
        .read_exact(&mut packet[4..])
        .await
        .map_err(StartupError::Io)?;
    parse_first_packet(packet.freeze())
}

/// Parses a complete first packet (length word included).
pub fn parse_first_packet(packet: Bytes) -> Result<FirstPacket, StartupError> {
    if packet.len() < 8 {
        return Err(StartupError::TooShort(packet.len() as u32));
    }
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match code {
        SSL_REQUEST_CODE if packet.len() == 8 => Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST_CODE if packet.len() == 8 => Ok(FirstPacket::GssEncRequest),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            Err(StartupError::Malformed("SSL/GSS request with a body"))
        }
        CANCEL_REQUEST_CODE => {
            if packet.len() < 12 {
                return Err(StartupError::Malformed("cancel request without a process id"));
            }
            let key_len = packet.len() - 12;
            if !(MIN_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&key_len) {
                return Err(StartupError::CancelKeyLength(key_len));
            }
            Ok(FirstPacket::Cancel(CancelRequest { raw: packet }))
        }
        _ => parse_startup(packet, code).map(FirstPacket::Startup),
    }
}

fn parse_startup(packet: Bytes, code: u32) -> Result<StartupMessage, StartupError> {
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Err(StartupError::UnsupportedVersion(major, minor));
    }
    let body = &packet[8..];
    let Some((&0, pairs)) = body.split_last() else {
        return Err(StartupError::Malformed("parameter list is not terminated"));
    };
    let mut params = Vec::new();
    let mut fields = pairs.split(|&b| b == 0);
    if !pairs.is_empty() {
        // `pairs` ends with the NUL of the last value, so split yields one trailing empty item.
        while let Some(name) = fields.next() {
            if name.is_empty() {
                if fields.next().is_none() {
                    break;
                }
                return Err(StartupError::Malformed("empty parameter name"));
            }
            let Some(value) = fields.next() else {
                return Err(StartupError::Malformed("parameter without a value"));
            };
            let name = std::str::from_utf8(name)
                .map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
            params.push((name.to_owned(), String::from_utf8_lossy(value).into_owned()));
        }
    }
    let message = StartupMessage {
        raw: packet,
        major,
        minor,
        params,
    };
    if message.param("user").is_none_or(str::is_empty) {
        return Err(StartupError::MissingUser);
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes(params: &[(&str, &str)]) -> Bytes {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        encode_startup(3, 0, &params)
    }

    #[test]
    fn startup_vector_is_byte_exact() {
        let raw = startup_bytes(&[("user", "bob")]);
        assert_eq!(
            &raw[..],
            b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00bob\x00\x00"
        );
        let FirstPacket::Startup(m) = parse_first_packet(raw.clone()).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(m.user(), "bob");
        assert_eq!(m.database(), "bob");
        assert_eq!(m.as_bytes(), &raw[..]);
    }

    #[test]
    fn startup_keeps_pq_options_and_order() {
        let raw = startup_bytes(&[
            ("database", "db"),
            ("_pq_.test_protocol_negotiation", "x"),
            ("user", "u"),
            ("application_name", "psql"),
        ]);
        let FirstPacket::Startup(m) = parse_first_packet(raw.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(m.params().len(), 4);
        assert_eq!(m.param("_pq_.test_protocol_negotiation"), Some("x"));
        let rewritten = m.with_user("iam_user");
        assert_eq!(rewritten.user(), "iam_user");
        assert_eq!(rewritten.params()[0], ("database".into(), "db".into()));
        assert_eq!(
            rewritten.as_bytes(),
            &startup_bytes(&[
                ("database", "db"),
                ("_pq_.test_protocol_negotiation", "x"),
                ("user", "iam_user"),
                ("application_name", "psql"),
            ])[..]
        );
    }

    #[test]
    fn protocol_3_2_is_accepted() {
        let raw = encode_startup(3, 2, &[("user".into(), "u".into())]);
        assert_eq!(&raw[4..8], &[0, 3, 0, 2]);
        let FirstPacket::Startup(m) = parse_first_packet(raw).unwrap() else {
            panic!()
        };
        assert_eq!(m.version(), (3, 2));
    }

    #[test]
    fn special_requests() {
        assert_eq!(
            parse_first_packet(Bytes::from_static(&SSL_REQUEST)).unwrap(),
            FirstPacket::SslRequest
        );
        assert_eq!(
            parse_first_packet(Bytes::from_static(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])).unwrap(),
            FirstPacket::GssEncRequest
        );
        let cancel = Bytes::from_static(&[
            0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x30, 0x39, 1, 2, 3, 4,
        ]);
        let FirstPacket::Cancel(c) = parse_first_packet(cancel.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(c.pid(), 12345);
        assert_eq!(c.key_len(), 4);
        assert_eq!(c.as_bytes(), &cancel[..]);
        assert!(!format!("{c:?}").contains("1, 2, 3, 4"));
    }

    #[test]
    fn cancel_key_bounds() {
        let mk = |key_len: usize| {
            let mut b = BytesMut::new();
            b.put_u32((12 + key_len) as u32);
            b.put_u32(CANCEL_REQUEST_CODE);
            b.put_u32(7);
            b.put_bytes(9, key_len);
            parse_first_packet(b.freeze())
        };
        assert!(matches!(mk(3), Err(StartupError::CancelKeyLength(3))));
        assert!(mk(4).is_ok());
        assert!(mk(32).is_ok());
        assert!(mk(256).is_ok());
        assert!(matches!(mk(257), Err(StartupError::CancelKeyLength(257))));
    }

    #[test]
    fn malformed_startups_are_errors() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"\x00\x00\x00\x0c\x00\x03\x00\x00user", "unterminated"),
            (b"\x00\x00\x00\x0d\x00\x03\x00\x00user\x00", "no value"),
            (b"\x00\x00\x00\x09\x00\x03\x00\x00\x00", "no user"),
            (b"\x00\x00\x00\x0e\x00\x02\x00\x00u\x00v\x00\x00", "v2"),
            (b"\x00\x00\x00\x11\x00\x03\x00\x00\x00v\x00\x00\x00", "empty name"),
            (b"\x00\x00\x00\x11\x00\x03\x00\x00user\x00\x00\x00", "empty user"),
        ];
        for (raw, what) in cases {
            assert!(
                parse_first_packet(Bytes::copy_from_slice(raw)).is_err(),
                "{what} accepted"
            );
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let raw = startup_bytes(&[("user", "bob"), ("database", "x")]);
        for cut in 0..raw.len() {
            let _ = parse_first_packet(raw.slice(..cut));
        }
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let len = (seed % 64) as usize + 8;
            let mut b = Vec::with_capacity(len);
            for _ in 0..len {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b.push((seed >> 16) as u8);
            }
            b[4..8].copy_from_slice(&[0, 3, 0, 0]);
            let _ = parse_first_packet(Bytes::from(b));
        }
    }

    #[tokio::test]
    async fn reader_enforces_limits() {
        let mut big: &[u8] = &[0, 0, 0x27, 0x11, 0, 3, 0, 0];
        assert!(matches!(
            read_first_packet(&mut big).await,
            Err(StartupError::TooLong(10001))
        ));
        let mut short: &[u8] = &[0, 0, 0, 4];
        assert!(matches!(
            read_first_packet(&mut short).await,
            Err(StartupError::TooShort(4))
        ));
        let mut empty: &[u8] = &[];
        assert!(matches!(
            read_first_packet(&mut empty).await,
            Err(StartupError::Closed)
        ));
        let mut tls: &[u8] = &[0x16, 3, 1, 0, 0xa0];
        assert!(matches!(
            read_first_packet(&mut tls).await,
            Err(StartupError::DirectTls)
        ));
        let mut cut: &[u8] = &[0, 0, 0, 20, 0, 3, 0, 0, b'u'];
        assert!(matches!(
            read_first_packet(&mut cut).await,
            Err(StartupError::Io(_))
        ));
    }
}
