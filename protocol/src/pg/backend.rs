//! Backend messages before relay: each one cut from the stream by its own length (capped), and the
//! few we must understand (authentication requests, ErrorResponse) parsed with bounds checks.
//! After the first ReadyForQuery nothing is parsed any more: bytes are relayed as they come.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Before authentication no legitimate backend message comes anywhere near this; it bounds what a
/// broken or hostile upstream can make us allocate.
pub const MAX_PREAUTH_MESSAGE_LEN: usize = 64 * 1024;

/// One backend message, exactly as received.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendMessage {
    raw: Bytes,
}

impl std::fmt::Debug for BackendMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendMessage")
            .field("tag", &(self.tag() as char))
            .field("len", &self.raw.len())
            .finish()
    }
}

impl BackendMessage {
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body after the tag and length word.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// The whole message, tag and length included.
    pub fn as_bytes(&self) -> &Bytes {
        &self.raw
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("connection failed")]
    Io(#[source] std::io::Error),
    #[error("message '{tag}' has invalid length {len}")]
    BadLength { tag: char, len: u32 },
    #[error("message '{tag}' of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { tag: char, len: u32, max: usize },
}

/// Reads one message, using `buf` as the read buffer: bytes past the message stay in `buf`, so the
/// caller can hand them on when it switches to relaying.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<BackendMessage, FrameError> {
    loop {
        if buf.len() >= 5 {
            let tag = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if len < 4 {
                return Err(FrameError::BadLength {
                    tag: tag as char,
                    len,
                });
            }
            if len as usize > max_len {
                return Err(FrameError::TooLong {
                    tag: tag as char,
                    len,
                    max: max_len,
                });
            }
            let total = len as usize + 1;
            if buf.len() >= total {
                return Ok(BackendMessage {
                    raw: buf.split_to(total).freeze(),
                });
            }
            buf.reserve(total - buf.len());
        } else {
            buf.reserve(512);
        }
        let n = reader.read_buf(buf).await.map_err(FrameError::Io)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                FrameError::Closed
            } else {
                FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
    }
}

/// What an `R` message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    CleartextPassword,
    /// With the 4-byte salt.
    Md5Password([u8; 4]),
    Sasl(Vec<String>),
    /// AuthenticationSASLContinue: the server-first-message.
    SaslContinue(Vec<u8>),
    /// AuthenticationSASLFinal: the server-final-message (`v=…`).
    SaslFinal(Vec<u8>),
    /// Redshift's code 13 (`AUTH_REQ_DIGEST`): answer with [`redshift_digest_message`]. Only
    /// `algorithm` 0 (SHA-256) is defined; any other is kept for the caller to refuse.
    RedshiftDigest {
        algorithm: i32,
        salt: Vec<u8>,
        server_nonce: Vec<u8>,
    },
    /// Redshift's code 14 (`AUTH_REQ_IDP`): a token from Redshift's native identity-provider
    /// integration, which only a client holding one can give.
    RedshiftIdp,
    /// Any other code (Kerberos, GSS, SSPI, SASLContinue out of order, …).
    Other(i32),
}

impl AuthRequest {
    /// What the server asked, for logs and errors.
    pub fn describe(&self) -> &'static str {
        match self {
            AuthRequest::Ok => "nothing (AuthenticationOk)",
            AuthRequest::CleartextPassword => "a cleartext password",
            AuthRequest::Md5Password(_) => "an MD5 password",
            AuthRequest::Sasl(_) => "SASL (SCRAM)",
            AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_) => "a SASL step",
            AuthRequest::RedshiftDigest { .. } => "Redshift's SHA-256 password digest (code 13)",
            AuthRequest::RedshiftIdp => "a Redshift identity-provider token (code 14)",
            AuthRequest::Other(_) => "an unsupported authentication method",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {0} message from upstream")]
pub struct ParseError(pub &'static str);

/// Parses the body of an `R` message into pgwire's vocabulary of authentication requests.
pub fn parse_auth_request(body: &[u8]) -> Result<AuthRequest, ParseError> {
    let mut b = body;
    if b.len() < 4 {
        return Err(ParseError("authentication"));
    }
    let code = b.get_i32();
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => {
            let salt: [u8; 4] = b.get(..4).and_then(|s| s.try_into().ok()).ok_or(ParseError("MD5 authentication"))?;
            AuthRequest::Md5Password(salt)
        }
        11 => AuthRequest::SaslContinue(b.to_vec()),
        12 => AuthRequest::SaslFinal(b.to_vec()),
        10 => {
            let mechanisms = b
                .split(|&c| c == 0)
                .filter(|m| !m.is_empty())
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .collect();
            AuthRequest::Sasl(mechanisms)
        }
        13 => parse_redshift_digest(b).ok_or(ParseError("Redshift digest authentication"))?,
        14 => AuthRequest::RedshiftIdp,
        other => AuthRequest::Other(other),
    })
}

/// Code 13's body after the code: `Int32 algorithm, Int32 n, salt[n], Int32 m, nonce[m]`,
/// nothing after.
fn parse_redshift_digest(mut b: &[u8]) -> Option<AuthRequest> {
    fn counted(b: &mut &[u8]) -> Option<Vec<u8>> {
        let len = usize::try_from(i32::from_be_bytes(b.get(..4)?.try_into().ok()?)).ok()?;
        let bytes = b.get(4..4 + len)?.to_vec();
        *b = &b[4 + len..];
        Some(bytes)
    }
    let algorithm = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    b = &b[4..];
    let salt = counted(&mut b)?;
    let server_nonce = counted(&mut b)?;
    b.is_empty().then_some(AuthRequest::RedshiftDigest {
        algorithm,
        salt,
        server_nonce,
    })
}

/// The answer to Redshift's code 13 (SHA-256, algorithm 0), as AWS's Redshift JDBC and Python
/// drivers build it: `'d'`, Int32 length, Int32 32, SHA256(SHA256(password ‖ salt) ‖
/// server_nonce ‖ client_nonce), Int32 length, client_nonce. The drivers' client nonce is the
/// time in milliseconds since the Unix epoch, in ASCII decimal.
pub fn redshift_digest_message(password: &[u8], salt: &[u8], server_nonce: &[u8], client_nonce: &[u8]) -> BytesMut {
    use bytes::BufMut;
    use sha2::{Digest, Sha256};
    let inner = Sha256::new().chain_update(password).chain_update(salt).finalize();
    let digest = Sha256::new()
        .chain_update(inner)
        .chain_update(server_nonce)
        .chain_update(client_nonce)
        .finalize();
    let mut m = BytesMut::with_capacity(1 + 4 + 4 + digest.len() + 4 + client_nonce.len());
    m.put_u8(b'd');
    m.put_u32((4 + 4 + digest.len() + 4 + client_nonce.len()) as u32);
    m.put_u32(digest.len() as u32);
    m.put_slice(&digest);
    m.put_u32(client_nonce.len() as u32);
    m.put_slice(client_nonce);
    m
}

/// The fields of an ErrorResponse or NoticeResponse, parsed without trusting the body.
pub fn parse_error_fields(body: &[u8]) -> Result<pgwire::messages::response::ErrorResponse, ParseError> {
    let mut fields = Vec::new();
    let mut rest = body;
    loop {
        let Some((&code, after)) = rest.split_first() else {
            return Err(ParseError("error response"));
        };
        if code == 0 {
            break;
        }
        let Some(end) = after.iter().position(|&c| c == 0) else {
            return Err(ParseError("error response"));
        };
        fields.push((code, String::from_utf8_lossy(&after[..end]).into_owned()));
        rest = &after[end + 1..];
    }
    Ok(pgwire::messages::response::ErrorResponse::new(fields))
}

/// The value of one field (`b'C'` for SQLSTATE, `b'M'` for the message, …).
pub fn error_field(error: &pgwire::messages::response::ErrorResponse, code: u8) -> Option<&str> {
    error
        .fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_messages_and_keeps_the_rest() {
        let stream: &[u8] = b"R\x00\x00\x00\x08\x00\x00\x00\x03S\x00\x00\x00\x05";
        let mut reader = stream;
        let mut buf = BytesMut::new();
        let m = read_message(&mut reader, &mut buf, 100).await.unwrap();
        assert_eq!(m.tag(), b'R');
        assert_eq!(
            parse_auth_request(m.body()).unwrap(),
            AuthRequest::CleartextPassword
        );
        // The second message is incomplete: it must end as a cut-off stream, not a clean close.
        let err = read_message(&mut reader, &mut buf, 100).await.unwrap_err();
        assert!(matches!(err, FrameError::Io(_)), "{err:?}");
    }

    #[tokio::test]
    async fn rejects_bad_and_oversized_lengths() {
        let mut r: &[u8] = b"R\x00\x00\x00\x02";
        assert!(matches!(
            read_message(&mut r, &mut BytesMut::new(), 100).await,
            Err(FrameError::BadLength { len: 2, .. })
        ));
        let mut r: &[u8] = b"E\x7f\xff\xff\xff";
        assert!(matches!(
            read_message(&mut r, &mut BytesMut::new(), 100).await,
            Err(FrameError::TooLong { .. })
        ));
        let mut r: &[u8] = b"";
        assert!(matches!(
            read_message(&mut r, &mut BytesMut::new(), 100).await,
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn auth_requests() {
        assert_eq!(parse_auth_request(&[0, 0, 0, 0]).unwrap(), AuthRequest::Ok);
        assert_eq!(
            parse_auth_request(&[0, 0, 0, 5, 1, 2, 3, 4]).unwrap(),
            AuthRequest::Md5Password([1, 2, 3, 4])
        );
        assert!(parse_auth_request(&[0, 0, 0, 5, 1]).is_err());
        assert_eq!(
            parse_auth_request(b"\x00\x00\x00\x0br=abc,s=c2FsdA==,i=4096").unwrap(),
            AuthRequest::SaslContinue(b"r=abc,s=c2FsdA==,i=4096".to_vec())
        );
        assert_eq!(
            parse_auth_request(b"\x00\x00\x00\x0cv=c2ln").unwrap(),
            AuthRequest::SaslFinal(b"v=c2ln".to_vec())
        );
        assert_eq!(
            parse_auth_request(b"\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00")
                .unwrap(),
            AuthRequest::Sasl(vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()])
        );
        assert_eq!(
            parse_auth_request(&[0, 0, 0, 7]).unwrap(),
            AuthRequest::Other(7)
        );
        assert!(parse_auth_request(&[0, 0]).is_err());
    }

    /// The code-13 vector of dev-notes/engines-research.md §1.2 (derived from the Redshift
    /// drivers' formula): the request parsed, the answer byte for byte.
    #[test]
    fn redshift_digest_vector() {
        let r = hex("52 0000002c 0000000d 00000000 00000008 0102030405060708 00000010 30313233343536373839616263646566");
        assert_eq!(r.len(), 45);
        let request = parse_auth_request(&r[5..]).unwrap();
        assert_eq!(
            request,
            AuthRequest::RedshiftDigest {
                algorithm: 0,
                salt: vec![1, 2, 3, 4, 5, 6, 7, 8],
                server_nonce: b"0123456789abcdef".to_vec(),
            }
        );
        assert_eq!(request.describe(), "Redshift's SHA-256 password digest (code 13)");
        let d = redshift_digest_message(b"Passw0rd!", &[1, 2, 3, 4, 5, 6, 7, 8], b"0123456789abcdef", b"1733600000000");
        assert_eq!(d.len(), 58);
        assert_eq!(
            d.as_ref(),
            hex("64 00000039 00000020 520beca26c54e551dc45a050e5a898e01cf4a1a75585119addc236633d3c47b0 \
                 0000000d 31373333363030303030303030")
            .as_slice()
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn redshift_requests_malformed_and_other_algorithms() {
        // Another algorithm is parsed, for the caller to refuse.
        let mut body = vec![0, 0, 0, 13, 0, 0, 0, 1, 0, 0, 0, 1, 9, 0, 0, 0, 0];
        assert_eq!(
            parse_auth_request(&body).unwrap(),
            AuthRequest::RedshiftDigest { algorithm: 1, salt: vec![9], server_nonce: vec![] }
        );
        // Trailing bytes, a length past the end, a negative length, a cut: malformed.
        body.push(0);
        assert!(parse_auth_request(&body).is_err());
        assert!(parse_auth_request(&[0, 0, 0, 13, 0, 0, 0, 0, 0, 0, 0, 9, 1]).is_err());
        assert!(parse_auth_request(&[0, 0, 0, 13, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse_auth_request(&[0, 0, 0, 13, 0, 0]).is_err());
        assert_eq!(parse_auth_request(&[0, 0, 0, 14]).unwrap(), AuthRequest::RedshiftIdp);
        assert_eq!(AuthRequest::RedshiftIdp.describe(), "a Redshift identity-provider token (code 14)");
    }

    #[test]
    fn error_fields() {
        let e = parse_error_fields(b"SFATAL\x00C28000\x00Mno\x00\x00").unwrap();
        assert_eq!(error_field(&e, b'C'), Some("28000"));
        assert_eq!(error_field(&e, b'M'), Some("no"));
        assert!(parse_error_fields(b"SFATAL\x00C28").is_err());
        assert!(parse_error_fields(b"").is_err());
        assert!(parse_error_fields(b"SFATAL\x00").is_err());
    }
}
