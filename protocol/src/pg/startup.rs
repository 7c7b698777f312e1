//! The untyped first packets a client sends: SSLRequest, GSSENCRequest, CancelRequest and the
//! StartupMessage (protocol 3.x). The StartupMessage is kept as the exact bytes the client sent so
//! it can be forwarded verbatim, `_pq_.*` options included.
//!
//! The StartupMessage is read by PostgreSQL's own rules (`ProcessStartupPacket`, checked against
//! a real PostgreSQL 15 by `tests/startup_rules.rs`), because the upstream reads the same bytes:
//! a proxy that picked a different `user` than the server would sign a token for one role while
//! the server logs in another. So: a repeated parameter is accepted and the last one wins; names
//! and values are bytes, not text; `replication` is a PostgreSQL boolean or `database`, and an
//! invalid value fails at once, before anything after it is looked at.

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

/// What a StartupMessage's `replication` parameters ask for, as PostgreSQL reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// No `replication` parameter, or the last one is false: a normal session.
    Off,
    /// A physical replication (walsender) connection: `replication=true` and the like.
    Physical,
    /// A logical replication connection to a database: `replication=database`.
    Logical,
}

/// A parsed StartupMessage that still holds the client's exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    raw: Bytes,
    major: u16,
    minor: u16,
    /// Every name/value pair in the client's order, duplicates included (slices of `raw`).
    params: Vec<(Bytes, Bytes)>,
    replication: Replication,
}

impl StartupMessage {
    /// The packet exactly as the client sent it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    pub fn version(&self) -> (u16, u16) {
        (self.major, self.minor)
    }

    /// Every parameter in the client's order, repeated ones included.
    pub fn params(&self) -> &[(Bytes, Bytes)] {
        &self.params
    }

    /// The value PostgreSQL uses for `name`: the last one given.
    pub fn param(&self, name: &str) -> Option<&[u8]> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| &v[..])
    }

    /// The `user` the server logs in: the last one; parsing guarantees it is non-empty.
    pub fn user_bytes(&self) -> &[u8] {
        self.param("user").unwrap_or_default()
    }

    /// The user as text for messages, logs and the IAM token; exact when it is UTF-8, which the
    /// session checks before it signs anything for it.
    pub fn user(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.user_bytes())
    }

    /// The database, which PostgreSQL defaults to the user name when absent or empty.
    pub fn database_bytes(&self) -> &[u8] {
        match self.param("database") {
            Some(db) if !db.is_empty() => db,
            _ => self.user_bytes(),
        }
    }

    /// The database as text, for messages and logs.
    pub fn database(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.database_bytes())
    }

    pub fn replication(&self) -> Replication {
        self.replication
    }

    /// The same startup with every `user` value replaced (for `--db-user`), so the server sees
    /// that user whichever occurrence it reads; every other name and value, order included,
    /// stays byte for byte as the client sent it.
    pub fn with_user(&self, user: &str) -> StartupMessage {
        let user = Bytes::copy_from_slice(user.as_bytes());
        let params: Vec<(Bytes, Bytes)> = self
            .params
            .iter()
            .map(|(k, v)| {
                let v = if k == "user" { user.clone() } else { v.clone() };
                (k.clone(), v)
            })
            .collect();
        self.with_params(params)
    }

    /// This startup's protocol version and replication mode with `params` instead of its own.
    fn with_params(&self, params: Vec<(Bytes, Bytes)>) -> StartupMessage {
        StartupMessage {
            raw: encode_startup(self.major, self.minor, &params),
            major: self.major,
            minor: self.minor,
            params,
            replication: self.replication,
        }
    }
}

impl StartupMessage {
    /// The same startup without the parameters named in `drop`; everything else byte for byte.
    pub fn without(&self, drop: &[&str]) -> StartupMessage {
        let params: Vec<(Bytes, Bytes)> = self
            .params
            .iter()
            .filter(|(k, _)| !drop.iter().any(|d| k.as_ref() == d.as_bytes()))
            .cloned()
            .collect();
        self.with_params(params)
    }
}

/// Encodes a StartupMessage; used by `with_user` and by tests and the simulator.
pub fn encode_startup<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    major: u16,
    minor: u16,
    params: &[(K, V)],
) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u16(major);
    body.put_u16(minor);
    for (k, v) in params {
        body.put_slice(k.as_ref());
        body.put_u8(0);
        body.put_slice(v.as_ref());
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
    /// PostgreSQL's wording and SQLSTATE (28000) for a missing or empty `user`.
    #[error("no PostgreSQL user name specified in startup packet")]
    MissingUser,
    /// PostgreSQL's wording and SQLSTATE (22023) for a `replication` value it cannot parse.
    #[error("invalid value for parameter \"replication\": \"{0}\"")]
    InvalidReplication(String),
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

/// PostgreSQL's `ProcessStartupPacket` loop. The last byte is the terminator by position, not
/// by value: PostgreSQL checks only that the pairs end exactly one byte before the end (and so
/// accepts a packet whose last byte is a one-byte name with no value); doing the same keeps the
/// proxy's reading of a packet identical to the server's.
fn parse_startup(packet: Bytes, code: u32) -> Result<StartupMessage, StartupError> {
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Err(StartupError::UnsupportedVersion(major, minor));
    }
    let body = packet.slice(8..);
    let n = body.len();
    // PostgreSQL reads C strings from a buffer with one NUL appended after the packet.
    let c_str_end = |from: usize| body[from..].iter().position(|&b| b == 0).map_or(n, |i| from + i);
    let mut params = Vec::new();
    let (mut walsender, mut db_walsender) = (false, false);
    let mut offset = 0;
    while offset < n {
        let name_end = c_str_end(offset);
        if name_end == offset {
            break; // the terminator
        }
        let value_start = name_end + 1;
        if value_start >= n {
            break; // a name without a value: the layout check below decides
        }
        let value_end = c_str_end(value_start);
        let (name, value) = (body.slice(offset..name_end), body.slice(value_start..value_end));
        if name == "replication" {
            // A boolean, or the exact (case-sensitive) word `database` for logical replication.
            if value == "database" {
                (walsender, db_walsender) = (true, true);
            } else {
                walsender = parse_bool(&value).ok_or_else(|| {
                    StartupError::InvalidReplication(String::from_utf8_lossy(&value).into_owned())
                })?;
            }
        }
        params.push((name, value));
        offset = value_end + 1;
    }
    if n == 0 || offset != n - 1 {
        return Err(StartupError::Malformed(
            "invalid startup packet layout: expected terminator as last byte",
        ));
    }
    let replication = match (walsender, db_walsender) {
        (false, _) => Replication::Off,
        (true, false) => Replication::Physical,
        (true, true) => Replication::Logical,
    };
    let message = StartupMessage {
        raw: packet,
        major,
        minor,
        params,
        replication,
    };
    if message.user_bytes().is_empty() {
        return Err(StartupError::MissingUser);
    }
    Ok(message)
}

/// PostgreSQL's `parse_bool`: `true`/`false`/`yes`/`no` and any prefix of them, `on`/`off` and
/// prefixes of at least two letters, `1`/`0`; ASCII case-insensitive, no surrounding blanks.
pub fn parse_bool(value: &[u8]) -> Option<bool> {
    let prefix_of = |word: &str, min: usize| {
        (min..=word.len()).contains(&value.len())
            && value.eq_ignore_ascii_case(&word.as_bytes()[..value.len()])
    };
    match value.first()?.to_ascii_lowercase() {
        b't' if prefix_of("true", 1) => Some(true),
        b'f' if prefix_of("false", 1) => Some(false),
        b'y' if prefix_of("yes", 1) => Some(true),
        b'n' if prefix_of("no", 1) => Some(false),
        b'o' if prefix_of("on", 2) => Some(true),
        b'o' if prefix_of("off", 2) => Some(false),
        b'1' if value.len() == 1 => Some(true),
        b'0' if value.len() == 1 => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes(params: &[(&str, &str)]) -> Bytes {
        encode_startup(3, 0, params)
    }

    fn startup(raw: &[u8]) -> Result<StartupMessage, StartupError> {
        match parse_first_packet(Bytes::copy_from_slice(raw))? {
            FirstPacket::Startup(m) => Ok(m),
            other => panic!("not a startup: {other:?}"),
        }
    }

    /// A protocol 3.0 StartupMessage around `pairs` (the name/value bytes and the terminator).
    fn packet(pairs: &[u8]) -> Vec<u8> {
        let mut p = ((pairs.len() + 8) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 3, 0, 0]);
        p.extend_from_slice(pairs);
        p
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
        assert_eq!(m.replication(), Replication::Off);
        assert_eq!(m.as_bytes(), &raw[..]);
    }

    #[test]
    fn without_drops_only_the_named_parameters() {
        let raw = startup_bytes(&[
            ("user", "u"),
            ("plugin_name", "com.amazon.redshift.plugin.BrowserIdcAuthPlugin"),
            ("database", "dev"),
            ("_pq_.compression", "lz4"),
            ("application_name", "DBeaver"),
        ]);
        let FirstPacket::Startup(m) = parse_first_packet(raw).unwrap() else {
            panic!()
        };
        let kept = m.with_user("IAM:u").without(&["plugin_name", "_pq_.compression", "idp_type"]);
        assert_eq!(
            kept.as_bytes(),
            &startup_bytes(&[("user", "IAM:u"), ("database", "dev"), ("application_name", "DBeaver")])[..]
        );
        assert_eq!(kept.user(), "IAM:u");
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
        assert_eq!(m.param("_pq_.test_protocol_negotiation"), Some(&b"x"[..]));
        let rewritten = m.with_user("iam_user");
        assert_eq!(rewritten.user(), "iam_user");
        assert_eq!(rewritten.params()[0], (Bytes::from("database"), Bytes::from("db")));
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
        let raw = encode_startup(3, 2, &[("user", "u")]);
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
            (b"\x00\x00\x00\x08\x00\x03\x00\x00", "empty body"),
            (b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00u\x00\x00\x00", "two terminators"),
        ];
        for (raw, what) in cases {
            assert!(
                parse_first_packet(Bytes::copy_from_slice(raw)).is_err(),
                "{what} accepted"
            );
        }
    }

    #[test]
    fn repeated_parameters_last_one_wins_as_in_postgresql() {
        let raw = packet(b"user\0a\0database\0d1\0user\0b\0database\0d2\0\0");
        let m = startup(&raw).unwrap();
        assert_eq!(m.params().len(), 4, "every pair is kept, in order");
        assert_eq!(m.user(), "b");
        assert_eq!(m.database(), "d2");
        assert_eq!(m.as_bytes(), &raw[..]);
        // A last empty `user` is what PostgreSQL reads: no user (28000), whatever came before.
        let err = startup(&packet(b"user\0a\0user\0\0\0")).unwrap_err();
        assert!(matches!(err, StartupError::MissingUser), "{err:?}");
        // An empty database means the user's name, as in PostgreSQL.
        assert_eq!(startup(&packet(b"user\0u\0database\0\0\0")).unwrap().database(), "u");
    }

    #[test]
    fn replication_is_a_postgresql_boolean_or_database() {
        let off = ["off", "OFF", "of", "Of", "f", "F", "fa", "false", "FALSE", "n", "N", "no", "NO", "0"];
        let on = ["on", "ON", "t", "T", "tr", "true", "TRUE", "tRuE", "y", "Y", "ye", "yes", "YES", "1"];
        let bad = ["", "o", "O", "truex", "falsey", "yess", "non", "01", "10", "2", " on", "on ", "DATABASE",
                   "Database", "data", "database ", "maybe"];
        let with = |v: &str| startup(&startup_bytes(&[("user", "u"), ("replication", v)]));
        for v in off {
            assert_eq!(with(v).unwrap().replication(), Replication::Off, "{v:?}");
        }
        for v in on {
            assert_eq!(with(v).unwrap().replication(), Replication::Physical, "{v:?}");
        }
        assert_eq!(with("database").unwrap().replication(), Replication::Logical);
        for v in bad {
            let err = with(v).unwrap_err();
            assert!(matches!(&err, StartupError::InvalidReplication(x) if x == v), "{v:?}: {err:?}");
        }
        // Later values override earlier ones; `database` once seen keeps a later `on` logical.
        let seq = |pairs: &[u8]| startup(&packet(pairs)).map(|m| m.replication());
        assert_eq!(seq(b"user\0u\0replication\0on\0replication\0off\0\0").unwrap(), Replication::Off);
        assert_eq!(seq(b"user\0u\0replication\0off\0replication\0yes\0\0").unwrap(), Replication::Physical);
        assert_eq!(seq(b"user\0u\0replication\0database\0replication\0off\0\0").unwrap(), Replication::Off);
        assert_eq!(seq(b"user\0u\0replication\0database\0replication\0\x31\0\0").unwrap(), Replication::Logical);
        // An invalid value fails at once, as PostgreSQL's FATAL inside its loop does: before a
        // later valid value, a layout error or a missing user is looked at.
        for pairs in [
            &b"user\0u\0replication\0bogus\0replication\0off\0\0"[..],
            b"replication\0bogus\0user\0u\0x\0",
            b"replication\0bogus\0\0",
        ] {
            assert!(matches!(seq(pairs), Err(StartupError::InvalidReplication(_))), "{pairs:?}");
        }
    }

    #[test]
    fn layout_is_checked_as_postgresql_checks_it() {
        // The byte after the last pair is the terminator by position: PostgreSQL accepts any
        // one-byte "name" there, so this packet logs in as `u` on a real server.
        let quirk = packet(b"user\0u\0x");
        let m = startup(&quirk).unwrap();
        assert_eq!(m.user(), "u");
        assert_eq!(m.params().len(), 1);
        assert_eq!(m.as_bytes(), &quirk[..]);
        for pairs in [
            &b"user\0u\0x\0"[..], // a name with no value before the end
            b"user\0u\0xy",       // two bytes after the pairs
            b"user\0u",           // the value runs into the end
            b"user\0u\0\0v\0\0",  // an empty name in the middle
            b"",
        ] {
            let err = startup(&packet(pairs)).unwrap_err();
            assert!(
                matches!(err, StartupError::Malformed(m) if m.contains("expected terminator as last byte")),
                "{pairs:?}: {err:?}"
            );
        }
        assert!(matches!(startup(&packet(b"\0")), Err(StartupError::MissingUser)));
    }

    #[test]
    fn names_and_values_are_bytes_and_db_user_rewrites_only_user() {
        let raw = packet(b"user\0u\xff\0application_name\0a\xffb\0x\xfe\0\xc3\0user\0v\0\0");
        let m = startup(&raw).unwrap();
        assert_eq!(m.user_bytes(), b"v");
        assert_eq!(m.param("application_name"), Some(&b"a\xffb"[..]));
        assert_eq!(m.params()[2], (Bytes::from_static(b"x\xfe"), Bytes::from_static(b"\xc3")));
        let rewritten = m.with_user("iam");
        assert_eq!(
            rewritten.as_bytes(),
            &packet(b"user\0iam\0application_name\0a\xffb\0x\xfe\0\xc3\0user\0iam\0\0")[..]
        );
        assert_eq!(rewritten.user(), "iam");
        // A non-UTF-8 user is parsed (PostgreSQL looks it up as bytes); only text views are lossy.
        let m = startup(&packet(b"user\0u\xff\0\0")).unwrap();
        assert_eq!(m.user_bytes(), b"u\xff");
        assert_eq!(m.user(), "u\u{fffd}");
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
