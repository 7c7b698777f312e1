//! The simulated Amazon Redshift endpoint ("Redshift front"): one listener for the provisioned
//! cluster and the Serverless workgroup names, the certificate and the cluster chosen by SNI (no
//! SNI: the provisioned cluster). Redshift speaks PostgreSQL 8.0.2's protocol: SSLRequest only (a
//! connection that opens with a TLS ClientHello is closed, as PostgreSQL 15 closes it), no ALPN,
//! and the cluster has `require_ssl` on, so a plain startup is refused.
//!
//! The login user must be one the simulated Redshift API issued a temporary password for on this
//! cluster or workgroup ([`RedshiftLogins`], filled by [`super::redshift_api`]), asked for by MD5
//! (PostgreSQL's rule over the login name, `IAM:` prefix included), cleartext, or Redshift's own
//! SHA-256 "extensible digest" (AuthenticationRequest 13, [`digest_response`]), per
//! [`RedshiftFrontState::set_auth_method`]. A wrong, unknown or expired password gets
//! `password authentication failed for user "…"`. Then the startup goes to the real PostgreSQL
//! with its `user` set to the mapped role (`IAM:alice` → `alice`; `IAM:sim-user` and `IAMR:role`
//! stay as they are), and `server_version` reads 8.0.2, as Redshift reports it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, BytesMut};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::rds::{relay_as_version, relay_cancel_to, send_fatal, simple_query_one};
use rds_auth_proxy_protocol::pg::backend::{self, MAX_PREAUTH_MESSAGE_LEN};
use rds_auth_proxy_protocol::pg::startup::{self, FirstPacket, StartupMessage};

/// The `server_version` Redshift reports.
pub const REDSHIFT_SERVER_VERSION: &str = "8.0.2";
/// AuthenticationRequest code of Redshift's SHA-256 digest (`AUTH_REQ_DIGEST` in its drivers).
pub const AUTH_REQ_DIGEST: u32 = 13;
/// Salt and server nonce lengths the front sends with code 13.
const DIGEST_SALT_LEN: usize = 8;
const DIGEST_NONCE_LEN: usize = 16;

/// A provisioned cluster or a Serverless workgroup, by name: where an issued password is good.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RedshiftTarget {
    Cluster(String),
    Workgroup(String),
}

/// How the front asks for the password.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RedshiftAuthMethod {
    /// AuthenticationMD5Password (5) with a random salt.
    #[default]
    Md5,
    /// AuthenticationCleartextPassword (3).
    Cleartext,
    /// Redshift's AuthenticationRequest 13: SHA-256 over the password, a salt and two nonces.
    Sha256Digest,
}

/// One temporary password the simulated API issued.
struct IssuedLogin {
    target: RedshiftTarget,
    /// The login name the API answered (`IAM:alice`, `IAMA:alice`, `IAM:sim-user`, `IAMR:role`).
    db_user: String,
    password: String,
    expires: SystemTime,
    /// The PostgreSQL role the login maps to, and whether the front creates it (AutoCreate, and
    /// the IAM identities' own roles) before the first login.
    role: String,
    create_role: bool,
}

/// The temporary passwords the simulated Redshift APIs issued, shared with the front that checks
/// them. Every password stays good until its own expiration (or [`RedshiftLogins::expire_all`]).
#[derive(Default)]
pub struct RedshiftLogins {
    issued: Mutex<Vec<IssuedLogin>>,
    /// Passwords are issued for at most this long, and their reported expiration says so.
    life_cap: Mutex<Option<Duration>>,
}

impl std::fmt::Debug for RedshiftLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedshiftLogins")
            .field("issued", &self.issued_count())
            .finish_non_exhaustive()
    }
}

/// What the API hands out: the password and when it stops working.
pub struct IssuedPassword {
    pub password: String,
    pub expiration: SystemTime,
}

impl RedshiftLogins {
    /// Issues a fresh password for `db_user` at `target`, good for `life` (or the cap, if
    /// shorter); the returned expiration is the one enforced.
    pub fn issue(
        &self,
        target: RedshiftTarget,
        db_user: &str,
        role: &str,
        create_role: bool,
        life: Duration,
    ) -> IssuedPassword {
        use rand::distr::{Alphanumeric, SampleString};
        let life = match *self.life_cap.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(cap) => life.min(cap),
            None => life,
        };
        // Whole seconds: the APIs report the expiration to the second.
        let expiration = std::time::UNIX_EPOCH
            + Duration::from_secs(
                (SystemTime::now() + life)
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs(),
            );
        let password = Alphanumeric.sample_string(&mut rand::rng(), 40);
        self.issued.lock().unwrap_or_else(|p| p.into_inner()).push(IssuedLogin {
            target,
            db_user: db_user.to_owned(),
            password: password.clone(),
            expires: expiration,
            role: role.to_owned(),
            create_role,
        });
        IssuedPassword { password, expiration }
    }

    /// Every password issued so far stops working now (the proxy must mint new ones).
    pub fn expire_all(&self) {
        for login in self.issued.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            login.expires = std::time::UNIX_EPOCH;
        }
    }

    /// Caps the life of passwords issued from now on (`None`: as asked).
    pub fn set_life_cap(&self, cap: Option<Duration>) {
        *self.life_cap.lock().unwrap_or_else(|p| p.into_inner()) = cap;
    }

    /// How many passwords were issued, expired ones included.
    pub fn issued_count(&self) -> usize {
        self.issued.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The passwords still good for `db_user` at `target`, with the role each maps to.
    fn valid(&self, target: &RedshiftTarget, db_user: &str) -> Vec<(String, String, bool)> {
        let now = SystemTime::now();
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| &l.target == target && l.db_user == db_user && now < l.expires)
            .map(|l| (l.password.clone(), l.role.clone(), l.create_role))
            .collect()
    }
}

/// How the front behaves.
pub struct RedshiftFrontConfig {
    /// Each endpoint name (lowercase) and the cluster or workgroup it is; the first is also what a
    /// client without SNI reaches.
    pub names: Vec<(String, RedshiftTarget)>,
    /// TLS with a certificate per name, no ALPN.
    pub tls: Arc<rustls::ServerConfig>,
    /// The real PostgreSQL behind the front.
    pub postgres: SocketAddr,
    pub logins: Arc<RedshiftLogins>,
}

/// Counters and switches tests can reach while the front runs.
#[derive(Debug, Default)]
pub struct RedshiftFrontState {
    /// Logins accepted / refused, in all and by endpoint name.
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub accepted_by_name: Mutex<HashMap<String, u64>>,
    /// Connections that opened with a TLS ClientHello (closed: no direct TLS on Redshift).
    pub direct_tls_attempts: AtomicU64,
    auth_method: Mutex<RedshiftAuthMethod>,
}

impl RedshiftFrontState {
    /// How logins from now on are asked for their password.
    pub fn set_auth_method(&self, method: RedshiftAuthMethod) {
        *self.auth_method.lock().unwrap_or_else(|p| p.into_inner()) = method;
    }

    pub fn auth_method(&self) -> RedshiftAuthMethod {
        *self.auth_method.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct RedshiftFront {
    listener: TcpListener,
    config: Arc<RedshiftFrontConfig>,
    state: Arc<RedshiftFrontState>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl RedshiftFront {
    pub async fn bind(addr: SocketAddr, config: RedshiftFrontConfig) -> std::io::Result<RedshiftFront> {
        Ok(RedshiftFront {
            listener: TcpListener::bind(addr).await?,
            config: Arc::new(config),
            state: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<RedshiftFrontState> {
        self.state.clone()
    }

    /// Serves connections until the task is dropped.
    pub async fn run(self) {
        let (config, state) = (self.config, self.state);
        super::rds::accept_loop(self.listener, "Redshift", move |tcp, peer| {
            let (config, state) = (config.clone(), state.clone());
            async move { serve(&config, &state, tcp, peer).await }
        })
        .await
    }
}

async fn serve(
    config: &RedshiftFrontConfig,
    state: &RedshiftFrontState,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(), BoxError> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 1 && first[0] == 0x16 {
        state.direct_tls_attempts.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "simulated Redshift: a TLS ClientHello first (no direct TLS here); closed");
        return Ok(());
    }
    loop {
        match startup::read_first_packet(&mut tcp).await? {
            FirstPacket::SslRequest => {
                tcp.write_all(b"S").await?;
                let tls = TlsAcceptor::from(config.tls.clone()).accept(tcp).await?;
                let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
                let (name, target) = config
                    .names
                    .iter()
                    .find(|(name, _)| Some(name) == sni.as_ref())
                    .or(config.names.first())
                    .cloned()
                    .ok_or("simulated Redshift: no endpoint names")?;
                let mut tls = tls;
                return match startup::read_first_packet(&mut tls).await? {
                    FirstPacket::Startup(s) => login(config, state, tls, s, &name, &target).await,
                    FirstPacket::Cancel(c) => relay_cancel_to(config.postgres, c.as_bytes()).await,
                    _ => {
                        send_fatal(&mut tls, "08P01", "unsupported request inside SSL").await;
                        Ok(())
                    }
                };
            }
            FirstPacket::GssEncRequest => tcp.write_all(b"N").await?,
            FirstPacket::Cancel(c) => return relay_cancel_to(config.postgres, c.as_bytes()).await,
            FirstPacket::Startup(s) => {
                // The cluster's require_ssl: no hba line matches a plain connection.
                state.rejected.fetch_add(1, Ordering::Relaxed);
                let message = format!(
                    "no pg_hba.conf entry for host \"{}\", user \"{}\", database \"{}\", SSL off",
                    peer.ip(),
                    s.user(),
                    s.database()
                );
                send_fatal(&mut tcp, "28000", &message).await;
                return Ok(());
            }
        }
    }
}

async fn login<S>(
    config: &RedshiftFrontConfig,
    state: &RedshiftFrontState,
    mut client: S,
    startup: StartupMessage,
    name: &str,
    target: &RedshiftTarget,
) -> Result<(), BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = startup.user().into_owned();
    let method = state.auth_method();
    let mut salt = [0u8; DIGEST_SALT_LEN];
    let mut nonce = [0u8; DIGEST_NONCE_LEN];
    rand::rng().fill_bytes(&mut salt);
    rand::rng().fill_bytes(&mut nonce);
    let request = match method {
        RedshiftAuthMethod::Md5 => {
            let mut m = BytesMut::from(&b"R\x00\x00\x00\x0c\x00\x00\x00\x05"[..]);
            m.put_slice(&salt[..4]);
            m
        }
        RedshiftAuthMethod::Cleartext => BytesMut::from(&b"R\x00\x00\x00\x08\x00\x00\x00\x03"[..]),
        RedshiftAuthMethod::Sha256Digest => digest_request(&salt, &nonce),
    };
    client.write_all(&request).await?;
    let mut buf = BytesMut::new();
    let msg = backend::read_message(&mut client, &mut buf, MAX_PREAUTH_MESSAGE_LEN).await?;
    let candidates = config.logins.valid(target, &user);
    let matched = candidates.into_iter().find(|(password, _, _)| match (method, msg.tag()) {
        (RedshiftAuthMethod::Md5, b'p') => {
            let salt4 = [salt[0], salt[1], salt[2], salt[3]];
            let want = postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt4);
            password_message_is(msg.body(), want.as_bytes())
        }
        (RedshiftAuthMethod::Cleartext, b'p') => password_message_is(msg.body(), password.as_bytes()),
        (RedshiftAuthMethod::Sha256Digest, b'd') => match parse_digest_answer(msg.body()) {
            Some((digest, client_nonce)) => {
                let want = digest_response(password.as_bytes(), &salt, &nonce, client_nonce);
                bool::from(want.ct_eq(&digest))
            }
            None => false,
        },
        _ => false,
    });
    // Redshift issues credentials for a user that does not exist (without AutoCreate) and
    // then refuses the login with them, as a wrong password.
    let matched = match matched {
        Some((_, role, false)) if !role_exists(config.postgres, &role).await? => {
            tracing::info!(%user, %role, "simulated Redshift: no such database user");
            None
        }
        other => other,
    };
    let Some((_, role, create_role)) = matched else {
        tracing::info!(%user, ?method, "simulated Redshift: password refused");
        state.rejected.fetch_add(1, Ordering::Relaxed);
        let message = format!("password authentication failed for user \"{user}\"");
        send_fatal(&mut client, "28000", &message).await;
        return Ok(());
    };
    if create_role {
        ensure_role(config.postgres, &role).await?;
    }
    state.accepted.fetch_add(1, Ordering::Relaxed);
    *state
        .accepted_by_name
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(name.to_owned())
        .or_default() += 1;
    let mut pg = TcpStream::connect(config.postgres).await?;
    pg.set_nodelay(true)?;
    pg.write_all(startup.with_user(&role).as_bytes()).await?;
    relay_as_version(Some(REDSHIFT_SERVER_VERSION), client, pg).await
}

/// Whether a PasswordMessage body is exactly `want` and its terminating NUL (constant time).
fn password_message_is(body: &[u8], want: &[u8]) -> bool {
    match body.split_last() {
        Some((0, got)) => bool::from(got.ct_eq(want)),
        _ => false,
    }
}

/// Whether PostgreSQL has a role named `role`.
async fn role_exists(postgres: SocketAddr, role: &str) -> Result<bool, BoxError> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {})",
        super::rds::quote_literal(role)
    );
    Ok(super::rds::simple_query_one(postgres, &sql).await? == "t")
}

/// Creates login role `role` if it does not exist (AutoCreate; the IAM identities' roles).
async fn ensure_role(postgres: SocketAddr, role: &str) -> Result<(), BoxError> {
    let ident = format!("\"{}\"", role.replace('"', "\"\""));
    let sql = format!(
        "DO $sim$ BEGIN CREATE ROLE {ident} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $sim$; SELECT 1"
    );
    simple_query_one(postgres, &sql).await.map(drop)
}

/// Redshift's AuthenticationRequest 13 (engines-research.md §1.2): algorithm 0 (SHA-256), the
/// salt and the server nonce, each with its Int32 length.
pub fn digest_request(salt: &[u8], server_nonce: &[u8]) -> BytesMut {
    let mut m = BytesMut::new();
    m.put_u8(b'R');
    m.put_u32((4 + 4 + 4 + 4 + salt.len() + 4 + server_nonce.len()) as u32);
    m.put_u32(AUTH_REQ_DIGEST);
    m.put_u32(0);
    m.put_u32(salt.len() as u32);
    m.put_slice(salt);
    m.put_u32(server_nonce.len() as u32);
    m.put_slice(server_nonce);
    m
}

/// What a client answers to code 13: `SHA256(SHA256(password ‖ salt) ‖ serverNonce ‖ clientNonce)`
/// (raw digests; the user name is not part of it).
pub fn digest_response(password: &[u8], salt: &[u8], server_nonce: &[u8], client_nonce: &[u8]) -> [u8; 32] {
    let d1 = Sha256::new().chain_update(password).chain_update(salt).finalize();
    Sha256::new()
        .chain_update(d1)
        .chain_update(server_nonce)
        .chain_update(client_nonce)
        .finalize()
        .into()
}

/// The client's `d` message body: Int32 32, the digest, Int32 length, the client nonce; nothing
/// after it.
pub fn parse_digest_answer(mut body: &[u8]) -> Option<([u8; 32], &[u8])> {
    if body.remaining() < 4 || body.get_u32() != 32 || body.remaining() < 36 {
        return None;
    }
    let digest: [u8; 32] = body[..32].try_into().ok()?;
    body.advance(32);
    let len = body.get_u32() as usize;
    (body.len() == len).then_some((digest, body))
}

/// The `d` message a client sends for code 13 (for tests and hand-written clients).
pub fn digest_answer_message(digest: &[u8; 32], client_nonce: &[u8]) -> BytesMut {
    let mut m = BytesMut::new();
    m.put_u8(b'd');
    m.put_u32((4 + 4 + 32 + 4 + client_nonce.len()) as u32);
    m.put_u32(32);
    m.put_slice(digest);
    m.put_u32(client_nonce.len() as u32);
    m.put_slice(client_nonce);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// engines-research.md §1.2's vector, derived from the drivers' formula.
    #[test]
    fn code_13_vector() {
        let salt = hex::decode("0102030405060708").unwrap();
        let (server_nonce, client_nonce) = (b"0123456789abcdef", b"1733600000000");
        let d1 = Sha256::new().chain_update(b"Passw0rd!").chain_update(&salt).finalize();
        assert_eq!(hex::encode(d1), "9cc31a9a549f54fb7b4df6296eda75d8fb29a6b5548d49ab5e82a81076273e39");
        let d2 = digest_response(b"Passw0rd!", &salt, server_nonce, client_nonce);
        assert_eq!(hex::encode(d2), "520beca26c54e551dc45a050e5a898e01cf4a1a75585119addc236633d3c47b0");
        assert_eq!(
            hex::encode(digest_request(&salt, server_nonce)),
            concat!("52", "0000002c", "0000000d", "00000000", "00000008", "0102030405060708", "00000010", "30313233343536373839616263646566")
        );
        let answer = digest_answer_message(&d2, client_nonce);
        assert_eq!(answer.len(), 58);
        assert_eq!(
            hex::encode(&answer),
            format!("640000003900000020{}0000000d{}", hex::encode(d2), hex::encode(client_nonce))
        );
        assert_eq!(parse_digest_answer(&answer[5..]), Some((d2, &client_nonce[..])));
        assert_eq!(parse_digest_answer(&answer[5..answer.len() - 1]), None);
    }

    #[test]
    fn md5_vector_over_the_prefixed_user() {
        let hash = postgres_protocol::authentication::md5_hash(b"IAM:alice", b"s3cret", [1, 2, 3, 4]);
        assert_eq!(hash, "md5fd265eebda96499ecbbcf1a092de9221");
    }

    #[test]
    fn issued_passwords_expire_with_their_target_and_user() {
        let logins = RedshiftLogins::default();
        let cluster = RedshiftTarget::Cluster("simrs".into());
        let issued = logins.issue(cluster.clone(), "IAM:alice", "alice", false, Duration::from_secs(900));
        assert_eq!(logins.valid(&cluster, "IAM:alice").len(), 1);
        assert!(logins.valid(&RedshiftTarget::Workgroup("simrs".into()), "IAM:alice").is_empty());
        assert!(logins.valid(&cluster, "IAM:bob").is_empty());
        assert_eq!(logins.valid(&cluster, "IAM:alice")[0].0, issued.password);
        logins.expire_all();
        assert!(logins.valid(&cluster, "IAM:alice").is_empty());
        logins.set_life_cap(Some(Duration::from_secs(0)));
        let capped = logins.issue(cluster.clone(), "IAM:alice", "alice", false, Duration::from_secs(900));
        assert!(capped.expiration <= SystemTime::now());
        assert!(logins.valid(&cluster, "IAM:alice").is_empty());
    }
}
