//! What the connect side needs from a target: the destination, its limits, and the shared
//! pieces a login uses — asked through [`UpstreamContext`], so this layer never names the
//! target's context (which owns the spares built on top of it).

use std::sync::Arc;
use std::time::Duration;

use crate::auth::token::TokenKind;
use crate::auth::{IamAuth, Passwords, TokenRequest};
use crate::net::TcpKeepalive;
use crate::tunnel::Tunnel;

use super::ServerKnowledge;

/// The RDS endpoint as the outside world names it: TLS verifies this name and tokens are signed
/// for `endpoint:port`, wherever the bytes actually go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The target's name in logs, audit lines and metric labels ([`crate::config::Config::name`]).
    pub name: String,
    pub endpoint: String,
    pub port: u16,
    pub region: String,
    /// Which database service it is, and what its login needs.
    pub engine: crate::engine::EngineSettings,
}

/// Per-phase limits, so no connection can hang in a phase before relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Client: from accept to a complete StartupMessage.
    pub client_startup: Duration,
    /// Opening the tunnel (TCP connect, or an SSM stream).
    pub connect: Duration,
    /// SSLRequest and the TLS handshake upstream.
    pub tls: Duration,
    /// From sending the startup to AuthenticationOk.
    pub auth: Duration,
    /// Liveness of the client's TCP connection and of a direct upstream connection.
    pub keepalive: TcpKeepalive,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_startup: Duration::from_secs(30),
            connect: Duration::from_secs(30),
            tls: Duration::from_secs(15),
            auth: Duration::from_secs(30),
            keepalive: TcpKeepalive::default(),
        }
    }
}

/// A target's shared state as the connect side sees it ([`crate::target::TargetContext`]
/// implements it).
pub trait UpstreamContext: Send + Sync {
    fn target(&self) -> &Target;
    fn timeouts(&self) -> Timeouts;
    fn tunnel(&self) -> &Tunnel;
    fn tls(&self) -> &Arc<rustls::ClientConfig>;
    fn auth(&self) -> &IamAuth;
    /// Password users, each with its own source; every other user is an IAM user.
    fn passwords(&self) -> &Passwords;
    /// IAM credential reloads after refused logins: at most one per interval for the target.
    fn iam_reloads(&self) -> &crate::auth::reload::ReloadGate;
    fn dbi_resource_id(&self) -> Option<&str>;
    /// `--profile`: named in the HINT for an expired SSO session.
    fn profile(&self) -> Option<&str>;
    /// What logins have shown about the server, and `--direct-tls`.
    fn server(&self) -> &ServerKnowledge;

    /// The IAM token request for `db_user` on this target.
    fn token_request(&self, db_user: &str) -> TokenRequest {
        let target = self.target();
        TokenRequest {
            endpoint: target.endpoint.clone(),
            port: target.port,
            region: target.region.clone(),
            db_user: db_user.to_owned(),
            kind: match target.engine.engine {
                crate::engine::Engine::Dsql => TokenKind::Dsql,
                _ => TokenKind::Rds,
            },
        }
    }
}
