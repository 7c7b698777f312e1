//! One configured destination — an RDS endpoint and how to reach it — and everything a session
//! needs to serve it, shared by all its connections through one `Arc`.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{IamAuth, Passwords, TokenRequest};
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

/// TCP keepalive (and a matching `TCP_USER_TIMEOUT`) on accepted client sockets and direct
/// upstream sockets, so a peer that vanished without closing (laptop asleep, NAT state
/// dropped) is noticed and its connection closed — for `--via ssm` that also lets the SSM
/// session go idle and end. An idle peer is given up after `idle + interval × probes`; the
/// same total bounds how long sent data may stay unacknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Silence before the first probe.
    pub idle: Duration,
    /// Between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub probes: u32,
}

impl Default for TcpKeepalive {
    /// 60 s + 4 × 15 s: a vanished peer is dropped after two minutes.
    fn default() -> Self {
        TcpKeepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(15),
            probes: 4,
        }
    }
}

impl TcpKeepalive {
    /// How long a silent peer lasts: `idle + interval × probes`.
    pub fn give_up_after(&self) -> Duration {
        self.idle + self.interval * self.probes
    }

    /// Turns keepalive on for `socket` with these values.
    pub fn apply(&self, socket: &tokio::net::TcpStream) -> std::io::Result<()> {
        let socket = socket2::SockRef::from(socket);
        let params = socket2::TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval)
            .with_retries(self.probes);
        socket.set_tcp_keepalive(&params)?;
        // Keepalive only probes an idle connection; with data in flight to a vanished peer,
        // the user timeout is what ends it (instead of ~15 min of retransmissions). Linux
        // only: macOS and Windows have no such option, so there unacknowledged data is given
        // up after the system's retransmission limit.
        #[cfg(target_os = "linux")]
        socket.set_tcp_user_timeout(Some(self.give_up_after()))?;
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    // Reading the values back is not possible on Windows (no getsockopt for TCP_KEEPIDLE).
    #[cfg(unix)]
    #[tokio::test]
    async fn keepalive_values_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let keepalive = TcpKeepalive {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            probes: 5,
        };
        let socket = socket2::SockRef::from(&client);
        assert!(!socket.keepalive().expect("SO_KEEPALIVE"), "off by default");
        keepalive.apply(&client).expect("apply");
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            socket.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
            Duration::from_secs(7)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            Duration::from_secs(3)
        );
        assert_eq!(socket.tcp_keepalive_retries().expect("TCP_KEEPCNT"), 5);
        #[cfg(target_os = "linux")]
        assert_eq!(
            socket.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(Duration::from_secs(22))
        );
    }

    #[test]
    fn default_keepalive_gives_up_within_two_minutes() {
        assert_eq!(
            TcpKeepalive::default().give_up_after(),
            Duration::from_secs(120)
        );
    }
}
