//! Who may use a listener. Whoever gets through logs in as the proxy's AWS identity, so:
//! loopback TCP clients and the proxy's own user on the Unix socket need no credential;
//! remote TCP clients (a shared listener, `--allow-remote`) must first present a client
//! certificate issued by `--client-ca-file` (over `--local-tls`) whose CN is the user they log
//! in as, or prove they know the client password (`--client-password-file`) with SCRAM-SHA-256;
//! a Unix socket peer of another user is refused. The decision ([`Access`]) is made at accept time, from the peer address or
//! the peer's credentials; it is carried out after the StartupMessage, so the client reads the
//! refusal as an ordinary ErrorResponse.

pub mod certificate;
pub mod scram;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::password::{read_password_file, PasswordError};
use crate::pg::startup::StartupMessage;
use crate::pg::{SqlState, UserFacing};
pub use certificate::ClientCertificate;
pub use scram::Verifier;
use scram::ScramError;

/// Largest SASL message accepted from a client; real SCRAM messages are under 200 bytes.
const MAX_SASL_MESSAGE: usize = 1024;

/// What a connection must do before the proxy logs it in upstream.
#[derive(Debug)]
pub enum Access {
    /// A loopback TCP peer, or the proxy's own user on the Unix socket.
    Open,
    /// A remote TCP peer: SCRAM-SHA-256 with the client password first.
    Password(Arc<Verifier>),
    /// A remote TCP peer of a listener with `--client-ca-file`: a verified client certificate
    /// whose CN is the user, else (no certificate) the client password when there is one.
    Certificate { password: Option<Arc<Verifier>> },
    /// Refused whatever it sends.
    Refused(AccessError),
}

impl Access {
    /// The rule for a TCP peer. `certificates`: the listener's TLS verifies client
    /// certificates against `--client-ca-file`. A non-loopback peer with neither credential
    /// configured is refused (it can only reach a loopback listener by binding a non-loopback
    /// source address, but fail closed all the same).
    pub fn for_tcp(peer: SocketAddr, password: Option<&Arc<Verifier>>, certificates: bool) -> Access {
        // `::ffff:127.0.0.1` is loopback too when the listener is bound to `::`.
        if peer.ip().to_canonical().is_loopback() {
            return Access::Open;
        }
        match password {
            _ if certificates => Access::Certificate {
                password: password.cloned(),
            },
            Some(verifier) => Access::Password(verifier.clone()),
            None => Access::Refused(AccessError::RemoteWithoutPassword),
        }
    }

    /// The rule for a Unix socket peer: only the proxy's own (effective) user. The socket's
    /// 0600 mode already says so; the check holds even if someone widens the mode.
    #[cfg(unix)]
    pub fn for_unix(stream: &tokio::net::UnixStream) -> Access {
        Access::for_uid(stream.peer_cred().map(|c| c.uid()), nix::unistd::geteuid().as_raw())
    }

    #[cfg_attr(not(unix), allow(dead_code))]
    fn for_uid(peer: std::io::Result<u32>, own: u32) -> Access {
        match peer {
            Ok(uid) if uid == own => Access::Open,
            Ok(uid) => Access::Refused(AccessError::OtherUser { peer: uid, own }),
            Err(e) => Access::Refused(AccessError::UnknownUser(e)),
        }
    }

    /// Whether a CancelRequest from this peer may be forwarded. Like PostgreSQL, a cancel needs
    /// no login (its key is the credential), but a refused peer gets nothing.
    pub fn may_cancel(&self, peer: &str) -> bool {
        match self {
            Access::Refused(e) => {
                tracing::warn!(%peer, error = %e, "refused a cancel request");
                false
            }
            _ => true,
        }
    }

    /// Carries the decision out after the client's StartupMessage: `Ok` when the client may
    /// go on to the upstream login. `certificate`: what the client's TLS handshake proved, if it
    /// presented a certificate (only ever one that chains to `--client-ca-file`). Refusals are
    /// logged and sent to the client (ErrorResponse with SQLSTATE and HINT) before `Err` is
    /// returned; the connection is then done.
    pub async fn admit<S>(
        self,
        client: &mut S,
        peer: &str,
        startup: &StartupMessage,
        limit: Duration,
        certificate: Option<&ClientCertificate>,
    ) -> Result<(), AccessError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let result = match self {
            Access::Open => return Ok(()),
            Access::Refused(e) => Err(e),
            Access::Password(verifier) => password_login(client, &verifier, limit).await,
            Access::Certificate { password: pw } => match (certificate, pw) {
                (Some(cert), _) => certificate_login(cert, startup),
                (None, Some(verifier)) => password_login(client, &verifier, limit).await,
                (None, None) => Err(AccessError::NoCertificate),
            },
        };
        let user = startup.user();
        let user: &str = &user;
        match &result {
            Ok(with) => {
                tracing::debug!(%peer, user, with, "remote client logged in");
                return Ok(());
            }
            Err(AccessError::Gone(e)) => {
                // libpq closes at once when it has no password to give ("fe_sendauth: no
                // password supplied"), so this is what a client without PGPASSWORD looks like.
                tracing::info!(%peer, user, error = e.to_string(), "a remote client left during authentication (no client password given?)");
            }
            Err(e) => {
                tracing::warn!(%peer, user, sqlstate = e.sqlstate().code(), error = e.to_string(), "refused a client");
            }
        }
        if let Err(e) = &result {
            if !matches!(e, AccessError::Gone(_)) {
                let _ = client.write_all(&e.to_client_error().encode()).await;
            }
            let _ = client.shutdown().await;
        }
        result.map(|_| ())
    }
}

/// SCRAM with the client password, within `limit`.
async fn password_login<S>(client: &mut S, verifier: &Verifier, limit: Duration) -> Result<&'static str, AccessError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(limit, authenticate(client, verifier))
        .await
        .unwrap_or(Err(AccessError::Timeout(limit.as_secs())))
        .map(|()| "the client password")
}

/// PostgreSQL's `clientcert=verify-full`: the certificate's CN must be the user name the client
/// sent (before any `--db-user`), byte for byte, so one person's certificate cannot log in as
/// another database user through the shared identity.
fn certificate_login(cert: &ClientCertificate, startup: &StartupMessage) -> Result<&'static str, AccessError> {
    match &cert.common_name {
        Some(cn) if cn.as_bytes() == startup.user_bytes() => Ok("a client certificate"),
        other => Err(AccessError::CertificateUser {
            common_name: other.clone(),
            user: startup.user().into_owned(),
        }),
    }
}

/// Why a client was not let through.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("this Unix socket serves only the user running rds-auth-proxy (uid {own}); the connection comes from uid {peer}")]
    OtherUser { peer: u32, own: u32 },
    #[error("cannot tell which user connected to the Unix socket")]
    UnknownUser(#[source] std::io::Error),
    #[error("connections from other hosts need the client password, and this proxy has none")]
    RemoteWithoutPassword,
    #[error("connections from other hosts need a client certificate issued by this shared rds-auth-proxy's --client-ca-file")]
    NoCertificate,
    #[error("the client certificate's CN {} is not the user name {user:?}", common_name.as_deref().map_or("(none)".to_owned(), |cn| format!("{cn:?}")))]
    CertificateUser { common_name: Option<String>, user: String },
    #[error("password authentication failed: wrong client password for this shared rds-auth-proxy")]
    WrongPassword,
    #[error("client authentication failed")]
    Scram(#[source] ScramError),
    #[error("the client chose the SASL mechanism {0:?}; this listener offers only SCRAM-SHA-256")]
    Mechanism(String),
    #[error("malformed authentication message from the client: {0}")]
    Malformed(&'static str),
    #[error("client authentication did not finish within {0} s")]
    Timeout(u64),
    #[error("the client closed the connection during authentication")]
    Gone(#[source] std::io::Error),
}

impl UserFacing for AccessError {
    fn sqlstate(&self) -> SqlState {
        match self {
            AccessError::OtherUser { .. }
            | AccessError::UnknownUser(_)
            | AccessError::RemoteWithoutPassword
            | AccessError::NoCertificate
            | AccessError::CertificateUser { .. } => SqlState::InvalidAuthorization,
            AccessError::WrongPassword => SqlState::InvalidPassword,
            AccessError::Scram(_)
            | AccessError::Mechanism(_)
            | AccessError::Malformed(_)
            | AccessError::Timeout(_)
            | AccessError::Gone(_) => SqlState::ProtocolViolation,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            AccessError::OtherUser { .. } | AccessError::UnknownUser(_) => {
                "Connect as the user who started rds-auth-proxy, or start a proxy of your own: whoever \
                 connects logs in with its owner's AWS identity."
                    .into()
            }
            AccessError::RemoteWithoutPassword => {
                "Connect from the proxy's own host (127.0.0.1 or its Unix socket), or start the proxy \
                 with --allow-remote and --client-password-file FILE (or --client-ca-file FILE and \
                 --local-tls)."
                    .into()
            }
            AccessError::NoCertificate => {
                "Connect with sslmode=verify-ca (or require) and sslcert/sslkey naming a certificate \
                 issued by the CA in the proxy's --client-ca-file, with your database user name as \
                 its CN; or connect from the proxy's own host."
                    .into()
            }
            AccessError::CertificateUser { .. } => {
                "A client certificate logs in only as the user its CN names (like PostgreSQL's \
                 clientcert=verify-full): connect with that user name, or use a certificate issued \
                 for this user."
                    .into()
            }
            AccessError::WrongPassword => {
                "Remote clients of a shared rds-auth-proxy log in with its client password (the \
                 --client-password-file on the proxy's host, e.g. in PGPASSWORD), not with the \
                 database user's password. Clients on the proxy's own host need none."
                    .into()
            }
            AccessError::Timeout(_) => "Send the password right away (PGPASSWORD, or .pgpass).".into(),
            _ => "Use a client that supports SCRAM-SHA-256 (libpq 10 or later, pgJDBC 42.2 or \
                  later, psycopg, node-postgres, tokio-postgres)."
                .into(),
        })
    }
}

/// Reads `--client-password-file` (owner-only, the password alone on one line, like
/// `--password-file`) and keeps only its SCRAM verifier.
pub fn load_client_password(path: &Path) -> Result<Verifier, PasswordError> {
    let password = read_password_file(path)?;
    Ok(Verifier::new(password.expose()))
}

/// The SCRAM-SHA-256 exchange, server side: AuthenticationSASL, SASLInitialResponse,
/// AuthenticationSASLContinue, SASLResponse, AuthenticationSASLFinal. AuthenticationOk is not
/// ours to send: the upstream's follows once it has logged in.
async fn authenticate<S>(client: &mut S, verifier: &Verifier) -> Result<(), AccessError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send(client, &auth_sasl()).await?;
    let body = read_password_message(client).await?;
    let (mechanism, client_first) = parse_initial_response(&body)?;
    if mechanism != scram::MECHANISM.as_bytes() {
        return Err(AccessError::Mechanism(String::from_utf8_lossy(mechanism).into_owned()));
    }
    let exchange = scram::start(verifier, client_first, &scram::server_nonce()).map_err(AccessError::Scram)?;
    send(client, &auth_message(11, exchange.server_first().as_bytes())).await?;
    let client_final = read_password_message(client).await?;
    let server_final = exchange.finish(verifier, &client_final).map_err(|e| match e {
        ScramError::WrongPassword => AccessError::WrongPassword,
        other => AccessError::Scram(other),
    })?;
    send(client, &auth_message(12, server_final.as_bytes())).await
}

async fn send<S: AsyncWrite + Unpin>(client: &mut S, message: &[u8]) -> Result<(), AccessError> {
    client.write_all(message).await.map_err(AccessError::Gone)?;
    client.flush().await.map_err(AccessError::Gone)
}

/// AuthenticationSASL offering SCRAM-SHA-256 alone (no -PLUS: channel binding is not implemented, so
/// a client with `channel_binding=require` is refused by its own library).
fn auth_sasl() -> BytesMut {
    let mut list = Vec::with_capacity(scram::MECHANISM.len() + 2);
    list.extend_from_slice(scram::MECHANISM.as_bytes());
    list.extend_from_slice(b"\0\0");
    auth_message(10, &list)
}

/// An Authentication message: `R`, length, the code, the data.
fn auth_message(code: u32, data: &[u8]) -> BytesMut {
    let mut m = BytesMut::with_capacity(data.len() + 9);
    m.put_u8(b'R');
    m.put_u32((8 + data.len()) as u32);
    m.put_u32(code);
    m.put_slice(data);
    m
}

/// One `p` message from the client, exactly (nothing after it is read), at most
/// [`MAX_SASL_MESSAGE`] bytes.
async fn read_password_message<S: AsyncRead + Unpin>(client: &mut S) -> Result<Vec<u8>, AccessError> {
    let mut header = [0u8; 5];
    client.read_exact(&mut header).await.map_err(AccessError::Gone)?;
    if header[0] != b'p' {
        return Err(AccessError::Malformed("expected a SASL response ('p')"));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=MAX_SASL_MESSAGE).contains(&len) {
        return Err(AccessError::Malformed("SASL response length out of range"));
    }
    let mut body = vec![0u8; len - 4];
    client.read_exact(&mut body).await.map_err(AccessError::Gone)?;
    Ok(body)
}

/// SASLInitialResponse: mechanism name\0, Int32 length of the data (-1: none), the data.
fn parse_initial_response(body: &[u8]) -> Result<(&[u8], &[u8]), AccessError> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(AccessError::Malformed("no mechanism name"))?;
    let (mechanism, rest) = (&body[..nul], &body[nul + 1..]);
    let Some((len, data)) = rest.split_first_chunk::<4>() else {
        return Err(AccessError::Malformed("no data length"));
    };
    if i32::from_be_bytes(*len) < 0 || i32::from_be_bytes(*len) as usize != data.len() {
        return Err(AccessError::Malformed("data length does not match"));
    }
    Ok((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    #[test]
    fn backend_messages_byte_exact() {
        assert_eq!(&auth_sasl()[..], b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00");
        assert_eq!(&auth_message(12, b"v=xyz")[..], b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=xyz");
        assert_eq!(
            parse_initial_response(b"SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc").unwrap(),
            (&b"SCRAM-SHA-256"[..], &b"n,,n=,r=abc"[..])
        );
        assert!(parse_initial_response(b"SCRAM-SHA-256\x00\xff\xff\xff\xff").is_err(), "-1: no data");
        assert!(parse_initial_response(b"SCRAM-SHA-256\x00\x00\x00\x00\x05abc").is_err());
        assert!(parse_initial_response(b"SCRAM-SHA-256").is_err());
    }

    #[test]
    fn peer_rules() {
        let v = Arc::new(Verifier::new("pw"));
        let tcp = |a: &str, pw| Access::for_tcp(a.parse().unwrap(), pw, false);
        assert!(matches!(tcp("127.0.0.1:5000", Some(&v)), Access::Open));
        assert!(matches!(tcp("127.8.9.1:5000", None), Access::Open));
        assert!(matches!(tcp("[::1]:5000", None), Access::Open));
        assert!(matches!(tcp("[::ffff:127.0.0.1]:5000", None), Access::Open));
        assert!(matches!(tcp("192.0.2.7:5000", Some(&v)), Access::Password(_)));
        assert!(matches!(tcp("[::ffff:192.0.2.7]:5000", Some(&v)), Access::Password(_)));
        assert!(matches!(tcp("192.0.2.7:5000", None), Access::Refused(AccessError::RemoteWithoutPassword)));
        // With --client-ca-file: loopback stays open; remote peers get the certificate rule,
        // with the password as the other way in when there is one.
        let certs = |a: &str, pw| Access::for_tcp(a.parse().unwrap(), pw, true);
        assert!(matches!(certs("127.0.0.1:5000", None), Access::Open));
        assert!(matches!(certs("192.0.2.7:5000", None), Access::Certificate { password: None }));
        assert!(matches!(certs("192.0.2.7:5000", Some(&v)), Access::Certificate { password: Some(_) }));
        assert!(matches!(Access::for_uid(Ok(1000), 1000), Access::Open));
        assert!(matches!(Access::for_uid(Ok(65534), 1000), Access::Refused(AccessError::OtherUser { peer: 65534, own: 1000 })));
        assert!(matches!(Access::for_uid(Err(std::io::Error::other("x")), 0), Access::Refused(AccessError::UnknownUser(_))));
        assert!(!Access::for_uid(Ok(1), 0).may_cancel("test"));
        assert!(Access::for_uid(Ok(0), 0).may_cancel("test"));
    }

    fn startup() -> StartupMessage {
        let raw = crate::pg::startup::encode_startup(3, 0, &[("user", "alice")]);
        match crate::pg::startup::parse_first_packet(raw).unwrap() {
            crate::pg::startup::FirstPacket::Startup(s) => s,
            other => panic!("{other:?}"),
        }
    }

    /// A whole exchange over a duplex pipe, the client side played by postgres-protocol.
    async fn exchange(password: &str) -> (Result<(), AccessError>, Vec<u8>) {
        exchange_with(Access::Password(Arc::new(Verifier::new("right one"))), password).await
    }

    async fn exchange_with(access: Access, password: &str) -> (Result<(), AccessError>, Vec<u8>) {
        let (mut server, mut client) = tokio::io::duplex(4096);
        let password = password.to_owned();
        let client_task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut header = [0u8; 9];
            client.read_exact(&mut header).await.unwrap();
            let mut rest = vec![0u8; u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize - 8];
            client.read_exact(&mut rest).await.unwrap();
            assert_eq!(rest, b"SCRAM-SHA-256\0\0");
            let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unrequested());
            let mut m = BytesMut::new();
            m.put_u8(b'p');
            m.put_u32((4 + 14 + 4 + scram.message().len()) as u32);
            m.put_slice(b"SCRAM-SHA-256\0");
            m.put_i32(scram.message().len() as i32);
            m.put_slice(scram.message());
            client.write_all(&m).await.unwrap();
            client.read_exact(&mut header).await.unwrap();
            assert_eq!(&header[5..9], &[0, 0, 0, 11]);
            let mut data = vec![0u8; u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize - 8];
            client.read_exact(&mut data).await.unwrap();
            scram.update(&data).unwrap();
            let mut m = BytesMut::new();
            m.put_u8(b'p');
            m.put_u32((4 + scram.message().len()) as u32);
            m.put_slice(scram.message());
            client.write_all(&m).await.unwrap();
            client.read_to_end(&mut seen).await.unwrap();
            seen
        });
        let result = access.admit(&mut server, "test", &startup(), Duration::from_secs(5), None).await;
        drop(server);
        (result, client_task.await.unwrap())
    }

    #[tokio::test]
    async fn right_password_gets_the_server_signature() {
        let (result, rest) = exchange("right one").await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(&rest[..1], b"R");
        assert_eq!(&rest[5..9], &[0, 0, 0, 12], "AuthenticationSASLFinal");
        assert!(rest[9..].starts_with(b"v="));
    }

    /// What the client reads after [`Access::admit`] with `certificate` and no password exchange.
    async fn admit_with(access: Access, certificate: Option<&ClientCertificate>) -> (Result<(), AccessError>, String) {
        let (mut server, mut client) = tokio::io::duplex(4096);
        let result = access.admit(&mut server, "test", &startup(), Duration::from_secs(5), certificate).await;
        drop(server);
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        (result, String::from_utf8_lossy(&seen).into_owned())
    }

    #[tokio::test]
    async fn certificate_rules() {
        let cert = |cn: Option<&str>| ClientCertificate { common_name: cn.map(str::to_owned) };
        let rule = |pw: Option<&str>| Access::Certificate { password: pw.map(|p| Arc::new(Verifier::new(p))) };

        // The CN is the user: in, with nothing sent (AuthenticationOk is the upstream's).
        let (result, seen) = admit_with(rule(None), Some(&cert(Some("alice")))).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(seen, "");
        // Another CN, or none: 28000 naming both, even when a password is configured.
        for (cn, pw) in [(Some("bob"), None), (Some("Alice"), Some("pw")), (None, Some("pw"))] {
            let (result, seen) = admit_with(rule(pw), Some(&cert(cn))).await;
            assert!(matches!(result, Err(AccessError::CertificateUser { .. })), "{cn:?}: {result:?}");
            assert!(seen.contains("C28000\0") && seen.contains("is not the user name \"alice\""), "{seen}");
            assert!(seen.contains("Hclientcert") || seen.contains("clientcert=verify-full"), "{seen}");
        }
        // No certificate and no password: 28000 with a HINT saying how to present one.
        let (result, seen) = admit_with(rule(None), None).await;
        assert!(matches!(result, Err(AccessError::NoCertificate)), "{result:?}");
        assert!(seen.contains("C28000\0") && seen.contains("sslcert/sslkey"), "{seen}");
        // No certificate, but a password configured: SCRAM as without --client-ca-file.
        let (result, rest) = exchange_with(rule(Some("right one")), "right one").await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(&rest[5..9], &[0, 0, 0, 12], "AuthenticationSASLFinal");
        let (result, _) = exchange_with(rule(Some("right one")), "wrong one").await;
        assert!(matches!(result, Err(AccessError::WrongPassword)), "{result:?}");
    }

    #[tokio::test]
    async fn wrong_password_gets_28p01_with_a_hint() {
        let (result, rest) = exchange("wrong one").await;
        assert!(matches!(result, Err(AccessError::WrongPassword)), "{result:?}");
        let text = String::from_utf8_lossy(&rest);
        assert!(rest.starts_with(b"E"), "{text}");
        assert!(text.contains("C28P01\0"), "{text}");
        assert!(text.contains("Hremote clients") || text.contains("HRemote clients"), "{text}");
    }

    #[tokio::test]
    async fn refused_peer_gets_28000_and_the_exchange_is_bounded() {
        let access = Access::for_uid(Ok(4242), 1000);
        let (mut server, mut client) = tokio::io::duplex(4096);
        assert!(access.admit(&mut server, "test", &startup(), Duration::from_secs(5), None).await.is_err());
        drop(server);
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        let text = String::from_utf8_lossy(&seen);
        assert!(text.contains("C28000\0") && text.contains("uid 4242"), "{text}");

        // A client that never answers the SASL request is cut off by the limit.
        tokio::time::pause();
        let access = Access::Password(Arc::new(Verifier::new("pw")));
        let (mut server, _silent) = tokio::io::duplex(4096);
        let result = access.admit(&mut server, "test", &startup(), Duration::from_secs(30), None).await;
        assert!(matches!(result, Err(AccessError::Timeout(30))), "{result:?}");
    }
}
