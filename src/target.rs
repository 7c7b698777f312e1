//! One configured destination — an RDS endpoint and how to reach it — and everything a session
//! needs to serve it, shared by all its connections through one `Arc`.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{IamAuth, Passwords, TokenRequest};
use crate::net::TcpKeepalive;
use crate::tunnel::Tunnel;

/// The RDS endpoint as the outside world names it: TLS verifies this name and tokens are signed
/// for `endpoint:port`, wherever the bytes actually go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The target's name in logs, audit lines and metric labels ([`crate::config::Config::name`]).
    pub name: String,
    pub endpoint: String,
    pub port: u16,
    pub region: String,
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

/// What every session of one target shares.
#[derive(Debug, Clone)]
pub struct TargetContext {
    pub target: Target,
    pub tunnel: Tunnel,
    pub tls: Arc<rustls::ClientConfig>,
    pub auth: Arc<IamAuth>,
    /// `--password-file` / `--password-secret` / `[[target.password]]`: password users, each
    /// with its own source; their password requests (cleartext, MD5, SCRAM) are answered with
    /// it. Every other user is an IAM user.
    pub passwords: Passwords,
    /// IAM credential reloads after refused logins: at most one per interval for the target.
    pub iam_reloads: Arc<crate::auth::reload::ReloadGate>,
    /// `--db-user`: log in as this user whatever the client asked for.
    pub db_user: Option<String>,
    /// `--local-tls`: answer a client's SSLRequest with `S` and this TLS; `None`: with `N`.
    pub local_tls: Option<crate::local_tls::LocalTls>,
    pub timeouts: Timeouts,
    /// See [`crate::config::Config::dbi_resource_id`].
    pub dbi_resource_id: Option<String>,
    /// This target's series in the process's [`crate::metrics::Metrics`].
    pub metrics: crate::metrics::TargetMetrics,
    /// `--profile`: named in the HINT for an expired SSO session (`aws sso login --profile X`).
    pub profile: Option<String>,
    /// What logins have shown about the server (its version, whether it takes direct TLS),
    /// and `--direct-tls`.
    pub server: crate::upstream::ServerKnowledge,
    /// `--spare-connections`: logged-in upstream connections kept ready for known clients.
    pub spares: crate::spare::Spares,
}

impl TargetContext {
    pub fn token_request(&self, db_user: &str) -> TokenRequest {
        TokenRequest {
            endpoint: self.target.endpoint.clone(),
            port: self.target.port,
            region: self.target.region.clone(),
            db_user: db_user.to_owned(),
        }
    }
}
