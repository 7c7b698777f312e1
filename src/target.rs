//! One configured destination — an RDS endpoint and how to reach it — and everything a session
//! needs to serve it, shared by all its connections through one `Arc`.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{IamAuth, TokenRequest};
use crate::tunnel::Tunnel;

/// The RDS endpoint as the outside world names it: TLS verifies this name and tokens are signed
/// for `endpoint:port`, wherever the bytes actually go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
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
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_startup: Duration::from_secs(30),
            connect: Duration::from_secs(30),
            tls: Duration::from_secs(15),
            auth: Duration::from_secs(30),
        }
    }
}

/// What every session of one target shares.
#[derive(Debug)]
pub struct TargetContext {
    pub target: Target,
    pub tunnel: Tunnel,
    pub tls: Arc<rustls::ClientConfig>,
    pub auth: Arc<IamAuth>,
    /// `--db-user`: log in as this user whatever the client asked for.
    pub db_user: Option<String>,
    pub timeouts: Timeouts,
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
