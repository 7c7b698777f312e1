//! Who may use a listener. Whoever gets through logs in as the proxy's AWS identity, so:
//! the proxy's own OS user needs no credential, on the Unix socket or on loopback TCP (on Linux
//! the owner of a loopback client's socket is looked up, [`local_user`]; other local users are
//! refused unless `--allow-local-users`); remote TCP clients (a shared listener, `--allow-remote`)
//! must come over TLS and first present a client certificate issued by `--client-ca-file` whose
//! CN is the user they log in as, or prove they know the client password
//! (`--client-password-file`) with SCRAM-SHA-256(-PLUS, bound to the listener's certificate).
//! The decision ([`Access`]) is made at accept time, from the peer address or the peer's
//! credentials; it is carried out after the StartupMessage, so the client reads the refusal as
//! an ordinary ErrorResponse.

pub mod certificate;
pub mod local_user;
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
use scram::{Binding, ScramError};

/// Largest SASL message accepted from a client; real SCRAM messages are under 200 bytes.
const MAX_SASL_MESSAGE: usize = 1024;

/// What a connection must do before the proxy logs it in upstream.
#[derive(Debug)]
pub enum Access {
    /// The proxy's own user on loopback TCP or the Unix socket (any loopback peer with
    /// `--allow-local-users`, or where the owner cannot be looked up).
    Open,
    /// A remote TCP peer: SCRAM-SHA-256 with the client password first.
    Password(Arc<Verifier>),
    /// A remote TCP peer of a listener with `--client-ca-file`: a verified client certificate
    /// whose CN is the user, else (no certificate) the client password when there is one.
    Certificate { password: Option<Arc<Verifier>> },
    /// Refused whatever it sends.
    Refused(AccessError),
}

/// A TCP listener's rules, as [`Access::for_tcp`] applies them to each peer.
#[derive(Debug, Clone)]
pub struct TcpRules {
    /// `--client-password-file`'s verifier: what remote clients may prove they know.
    pub password: Option<Arc<Verifier>>,
    /// The listener's TLS verifies client certificates against `--client-ca-file`.
    pub certificates: bool,
    /// `--allow-local-users`: every OS user of this host may use loopback, as before issue 18.
    pub any_local_user: bool,
    /// The proxy's effective uid: the one local user let in otherwise.
    pub own_uid: u32,
}

impl TcpRules {
    /// Logs, once per listener at start, what loopback clients are held to.
    pub fn log_local_rule(&self, addr: SocketAddr) {
        if self.any_local_user {
            tracing::info!(%addr, "--allow-local-users: every OS user of this host may connect on loopback");
        } else if !local_user::SUPPORTED {
            tracing::warn!(%addr, "the OS user of a loopback TCP client cannot be checked on this OS: every local user can connect on loopback (use the Unix socket, --unix-socket, to admit only yours)");
        } else {
            tracing::debug!(%addr, uid = self.own_uid, "loopback TCP clients must run as the proxy's own OS user");
        }
    }
}

impl Access {
    /// The rule for a TCP peer `peer` that reached the listener's address `local`. A
    /// non-loopback peer with neither credential configured is refused (it can only reach a
    /// loopback listener by binding a non-loopback source address, but fail closed all the same).
    pub fn for_tcp(peer: SocketAddr, local: SocketAddr, rules: &TcpRules) -> Access {
        // `::ffff:127.0.0.1` is loopback too when the listener is bound to `::`.
        if peer.ip().to_canonical().is_loopback() {
            if rules.any_local_user || !local_user::SUPPORTED {
                return Access::Open;
            }
            return Access::for_local_owner(local_user::owner(peer, local), rules.own_uid);
        }
        match &rules.password {
            _ if rules.certificates => Access::Certificate {
                password: rules.password.clone(),
            },
            Some(verifier) => Access::Password(verifier.clone()),
            None => Access::Refused(AccessError::RemoteWithoutPassword),
        }
    }

    /// A loopback TCP peer whose socket is owned by `owner` (as [`local_user::owner`] found it).
    fn for_local_owner(owner: Result<u32, local_user::LookupError>, own: u32) -> Access {
        match owner {
            Ok(uid) if uid == own => Access::Open,
            Ok(uid) => Access::Refused(AccessError::OtherLocalUser { peer: uid, own }),
            Err(e) => Access::Refused(AccessError::UnknownLocalUser(e)),
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
    /// go on to the upstream login. `tls`: what the client's TLS handshake established, `None`
    /// for a plaintext client (a remote one is then refused). Refusals are logged and sent to
    /// the client (ErrorResponse with SQLSTATE and HINT) before `Err` is returned; the
    /// connection is then done.
    pub async fn admit<S>(
        self,
        client: &mut S,
        peer: &str,
        startup: &StartupMessage,
        limit: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<(), AccessError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let result = match (self, tls) {
            (Access::Open, _) => return Ok(()),
            (Access::Refused(e), _) => Err(e),
            // A remote login over plaintext would run the session, as the proxy's identity, in
            // the clear across the network.
            (Access::Password(_) | Access::Certificate { .. }, None) => Err(AccessError::RemoteWithoutTls),
            (Access::Password(verifier), Some(tls)) => password_login(client, &verifier, limit, tls).await,
            (Access::Certificate { password: pw }, Some(tls)) => match (&tls.certificate, pw) {
                (Some(cert), _) => certificate_login(cert, startup),
                (None, Some(verifier)) => password_login(client, &verifier, limit, tls).await,
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

/// What a client's TLS handshake with the listener established.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// The client's certificate, when it presented one (only ever one that chains to
    /// `--client-ca-file`: rustls has verified it by then).
    pub certificate: Option<ClientCertificate>,
    /// tls-server-end-point data of the listener's certificate: SCRAM-SHA-256-PLUS is offered
    /// with it. `None` for a certificate whose signature algorithm cannot be bound (Ed25519,
    /// RSASSA-PSS), as PostgreSQL.
    pub server_end_point: Option<Arc<[u8]>>,
}

/// SCRAM with the client password, within `limit`.
async fn password_login<S>(client: &mut S, verifier: &Verifier, limit: Duration, tls: &ClientTls) -> Result<&'static str, AccessError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(limit, authenticate(client, verifier, tls.server_end_point.as_deref()))
        .await
        .unwrap_or(Err(AccessError::Timeout(limit.as_secs())))
        .map(|bound| if bound { "the client password (SCRAM-SHA-256-PLUS)" } else { "the client password" })
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
    #[error("this rds-auth-proxy serves only the OS user running it (uid {own}) on loopback; the connection comes from uid {peer}")]
    OtherLocalUser { peer: u32, own: u32 },
    #[error("cannot tell which OS user opened this loopback connection")]
    UnknownLocalUser(#[source] local_user::LookupError),
    #[error("connections from other hosts must use TLS: the client did not ask for it (SSLRequest)")]
    RemoteWithoutTls,
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
            | AccessError::OtherLocalUser { .. }
            | AccessError::UnknownLocalUser(_)
            | AccessError::RemoteWithoutTls
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
            AccessError::OtherLocalUser { .. } | AccessError::UnknownLocalUser(_) => {
                "Connect as the OS user who started rds-auth-proxy, or start a proxy of your own \
                 (whoever connects logs in with its owner's AWS identity); to let every user of \
                 this host in, its owner can start it with --allow-local-users."
                    .into()
            }
            AccessError::RemoteWithoutTls => {
                "Connect with sslmode=require, or better sslmode=verify-full and sslrootcert set to \
                 the proxy's local CA (rds-auth-proxy connect-info prints it): clients on other \
                 hosts must use TLS."
                    .into()
            }
            AccessError::RemoteWithoutPassword => {
                "Connect from the proxy's own host (127.0.0.1 or its Unix socket), or start the proxy \
                 with --allow-remote, --local-tls and --client-password-file FILE (or \
                 --client-ca-file FILE)."
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
/// ours to send: the upstream's follows once it has logged in. `end_point`: the listener's
/// tls-server-end-point data, when the client is on TLS and the certificate can be bound; then
/// SCRAM-SHA-256-PLUS is offered first. `Ok(true)`: the client bound the exchange to the TLS
/// channel.
async fn authenticate<S>(client: &mut S, verifier: &Verifier, end_point: Option<&[u8]>) -> Result<bool, AccessError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send(client, &auth_sasl(end_point.is_some())).await?;
    let body = read_password_message(client).await?;
    let (mechanism, client_first) = parse_initial_response(&body)?;
    let binding = match (mechanism, end_point) {
        (m, Some(data)) if m == scram::MECHANISM_PLUS.as_bytes() => Binding::Selected(data),
        (m, Some(_)) if m == scram::MECHANISM.as_bytes() => Binding::Offered,
        (m, None) if m == scram::MECHANISM.as_bytes() => Binding::NotOffered,
        (m, _) => return Err(AccessError::Mechanism(String::from_utf8_lossy(m).into_owned())),
    };
    let bound = matches!(binding, Binding::Selected(_));
    let exchange = scram::start(verifier, client_first, &scram::server_nonce(), binding).map_err(AccessError::Scram)?;
    send(client, &auth_message(11, exchange.server_first().as_bytes())).await?;
    let client_final = read_password_message(client).await?;
    let server_final = exchange.finish(verifier, &client_final).map_err(|e| match e {
        ScramError::WrongPassword => AccessError::WrongPassword,
        other => AccessError::Scram(other),
    })?;
    send(client, &auth_message(12, server_final.as_bytes())).await?;
    Ok(bound)
}

async fn send<S: AsyncWrite + Unpin>(client: &mut S, message: &[u8]) -> Result<(), AccessError> {
    client.write_all(message).await.map_err(AccessError::Gone)?;
    client.flush().await.map_err(AccessError::Gone)
}

/// AuthenticationSASL offering SCRAM-SHA-256, after SCRAM-SHA-256-PLUS when `plus` (a TLS
/// client and a certificate that can be bound), as PostgreSQL lists them.
fn auth_sasl(plus: bool) -> BytesMut {
    let mut list = Vec::with_capacity(scram::MECHANISM_PLUS.len() + scram::MECHANISM.len() + 3);
    if plus {
        list.extend_from_slice(scram::MECHANISM_PLUS.as_bytes());
        list.push(0);
    }
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
        assert_eq!(&auth_sasl(false)[..], b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00");
        assert_eq!(
            &auth_sasl(true)[..],
            b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"
        );
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
        let rules = |password: Option<&Arc<Verifier>>, certificates| TcpRules {
            password: password.cloned(),
            certificates,
            any_local_user: true,
            own_uid: 0,
        };
        let local = "10.0.0.1:6543".parse().unwrap();
        let tcp = |a: &str, pw| Access::for_tcp(a.parse().unwrap(), local, &rules(pw, false));
        assert!(matches!(tcp("127.0.0.1:5000", Some(&v)), Access::Open));
        assert!(matches!(tcp("127.8.9.1:5000", None), Access::Open));
        assert!(matches!(tcp("[::1]:5000", None), Access::Open));
        assert!(matches!(tcp("[::ffff:127.0.0.1]:5000", None), Access::Open));
        assert!(matches!(tcp("192.0.2.7:5000", Some(&v)), Access::Password(_)));
        assert!(matches!(tcp("[::ffff:192.0.2.7]:5000", Some(&v)), Access::Password(_)));
        assert!(matches!(tcp("192.0.2.7:5000", None), Access::Refused(AccessError::RemoteWithoutPassword)));
        // With --client-ca-file: loopback stays open; remote peers get the certificate rule,
        // with the password as the other way in when there is one.
        let certs = |a: &str, pw| Access::for_tcp(a.parse().unwrap(), local, &rules(pw, true));
        assert!(matches!(certs("127.0.0.1:5000", None), Access::Open));
        assert!(matches!(certs("192.0.2.7:5000", None), Access::Certificate { password: None }));
        assert!(matches!(certs("192.0.2.7:5000", Some(&v)), Access::Certificate { password: Some(_) }));
        // Without --allow-local-users, the owner of a loopback client's socket decides.
        assert!(matches!(Access::for_local_owner(Ok(1000), 1000), Access::Open));
        assert!(matches!(
            Access::for_local_owner(Ok(65534), 1000),
            Access::Refused(AccessError::OtherLocalUser { peer: 65534, own: 1000 })
        ));
        let gone = local_user::LookupError::NotFound { peer: "127.0.0.1:1".parse().unwrap(), local };
        assert!(matches!(Access::for_local_owner(Err(gone), 0), Access::Refused(AccessError::UnknownLocalUser(_))));
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
        let result = access.admit(&mut server, "test", &startup(), Duration::from_secs(5), Some(&ClientTls::default())).await;
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
        let tls = ClientTls { certificate: certificate.cloned(), server_end_point: None };
        let result = access.admit(&mut server, "test", &startup(), Duration::from_secs(5), Some(&tls)).await;
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

        // A remote client without TLS: 28000 before any password is asked for.
        let access = Access::Password(Arc::new(Verifier::new("pw")));
        let (mut server, mut client) = tokio::io::duplex(4096);
        let result = access.admit(&mut server, "test", &startup(), Duration::from_secs(5), None).await;
        assert!(matches!(result, Err(AccessError::RemoteWithoutTls)), "{result:?}");
        drop(server);
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        let text = String::from_utf8_lossy(&seen);
        assert!(text.starts_with('E') && text.contains("C28000\0") && text.contains("sslmode=require"), "{text}");

        // A client that never answers the SASL request is cut off by the limit.
        tokio::time::pause();
        let access = Access::Password(Arc::new(Verifier::new("pw")));
        let (mut server, _silent) = tokio::io::duplex(4096);
        let result = access.admit(&mut server, "test", &startup(), Duration::from_secs(30), Some(&ClientTls::default())).await;
        assert!(matches!(result, Err(AccessError::Timeout(30))), "{result:?}");
    }
}
