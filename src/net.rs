//! Socket options shared by the accept side and the connect side: TCP keepalive for client
//! sockets ([`crate::listener`]) and direct upstream sockets ([`crate::tunnel::direct`]).

use std::time::Duration;

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
