//! One configured destination — an RDS endpoint and how to reach it — and everything a session
//! needs to serve it, shared by all its connections through one `Arc`.

use std::sync::Arc;

use crate::auth::{IamAuth, Passwords, TokenRequest};
use crate::spare::{SpareHost, Spares};
use crate::tunnel::Tunnel;
use crate::upstream::{ServerKnowledge, UpstreamContext};

pub use crate::upstream::{Target, Timeouts};

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
    pub server: ServerKnowledge,
    /// `--spare-connections`: logged-in upstream connections kept ready for known clients.
    pub spares: Spares,
    /// `--max-connection-age` (`None`: no limit), see [`crate::connection_age`].
    pub max_connection_age: Option<std::time::Duration>,
}

impl TargetContext {
    pub fn token_request(&self, db_user: &str) -> TokenRequest {
        UpstreamContext::token_request(self, db_user)
    }
}

impl UpstreamContext for TargetContext {
    fn target(&self) -> &Target {
        &self.target
    }
    fn timeouts(&self) -> Timeouts {
        self.timeouts
    }
    fn tunnel(&self) -> &Tunnel {
        &self.tunnel
    }
    fn tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }
    fn auth(&self) -> &IamAuth {
        &self.auth
    }
    fn passwords(&self) -> &Passwords {
        &self.passwords
    }
    fn iam_reloads(&self) -> &crate::auth::reload::ReloadGate {
        &self.iam_reloads
    }
    fn dbi_resource_id(&self) -> Option<&str> {
        self.dbi_resource_id.as_deref()
    }
    fn profile(&self) -> Option<&str> {
        self.profile.as_deref()
    }
    fn server(&self) -> &ServerKnowledge {
        &self.server
    }
}

impl SpareHost for TargetContext {
    fn spares(&self) -> &Spares {
        &self.spares
    }
}
