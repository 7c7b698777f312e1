//! `--run-connection-test`: after binding, one real login and `select 1` through each target's
//! own listener — the whole path a client takes (listener, tunnel, TLS, IAM token or password,
//! the database) — so a broken target is found at start, with the HINT a client would get.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::pg::backend::{error_field, parse_error_fields, read_message, MAX_PREAUTH_MESSAGE_LEN};

/// Longer than the proxy's own per-phase limits (30 s to connect), so a failing phase reports
/// its own error rather than this limit.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(90);

/// One connection test: which target, where its listener is, who logs in where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub name: String,
    pub addr: SocketAddr,
    pub user: String,
    pub database: String,
}

/// Why a target failed its test: the server's (or the proxy's) error, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub sqlstate: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(code) = &self.sqlstate {
            write!(f, "{code} ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " HINT: {hint}")?;
        }
        Ok(())
    }
}

impl Probe {
    /// The probe of a target listening on `listen`, logging in as `db_user` if the target pins
    /// one, else as `$PGUSER` or the login name (what psql would use), into `$PGDATABASE` or
    /// `postgres` (which every RDS PostgreSQL instance has).
    pub fn new(name: &str, listen: SocketAddr, db_user: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Probe {
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let user = db_user
            .map(str::to_owned)
            .or_else(|| env("PGUSER").filter(|u| !u.is_empty()))
            .or_else(login_name)
            .unwrap_or_else(|| "postgres".to_owned());
        Probe {
            name: name.to_owned(),
            addr: SocketAddr::new(ip, listen.port()),
            user,
            database: env("PGDATABASE").filter(|d| !d.is_empty()).unwrap_or_else(|| "postgres".to_owned()),
        }
    }

    /// Logs in and runs `select 1`.
    pub async fn run(&self, limit: Duration) -> Result<(), ProbeFailure> {
        match tokio::time::timeout(limit, self.login_and_select()).await {
            Ok(result) => result,
            Err(_) => Err(failure(format!("no answer within {} s", limit.as_secs()))),
        }
    }

    async fn login_and_select(&self) -> Result<(), ProbeFailure> {
        let mut stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| failure(format!("cannot connect to the listener {}: {e}", self.addr)))?;
        let params = [
            ("user", self.user.as_str()),
            ("database", self.database.as_str()),
            ("application_name", "rds-auth-proxy connection test"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let startup = crate::pg::startup::encode_startup(3, 0, &params);
        let io = |e: std::io::Error| failure(format!("connection lost: {e}"));
        stream.write_all(&startup).await.map_err(io)?;
        let mut buf = BytesMut::new();
        let mut queried = false;
        let mut one = false;
        loop {
            let msg = read_message(&mut stream, &mut buf, MAX_PREAUTH_MESSAGE_LEN)
                .await
                .map_err(|e| failure(format!("connection lost: {e}")))?;
            match msg.tag() {
                b'E' => return Err(server_error(msg.body())),
                // The proxy answers every password request itself; a client that is asked for
                // one is talking to something else.
                b'R' if msg.body().get(..4) != Some(&[0, 0, 0, 0]) => {
                    return Err(failure("the listener asked this client for a password".to_owned()))
                }
                b'D' => one = msg.body().ends_with(b"\x00\x00\x00\x011"),
                b'Z' if !queried => {
                    queried = true;
                    let mut q = BytesMut::new();
                    q.put_u8(b'Q');
                    q.put_u32(4 + 9);
                    q.put_slice(b"select 1\0");
                    stream.write_all(&q).await.map_err(io)?;
                }
                b'Z' => {
                    let _ = stream.write_all(&[b'X', 0, 0, 0, 4]).await;
                    return if one {
                        Ok(())
                    } else {
                        Err(failure("`select 1` did not return 1".to_owned()))
                    };
                }
                _ => {}
            }
        }
    }
}

fn failure(message: String) -> ProbeFailure {
    ProbeFailure {
        sqlstate: None,
        message,
        hint: None,
    }
}

fn server_error(body: &[u8]) -> ProbeFailure {
    match parse_error_fields(body) {
        Ok(fields) => ProbeFailure {
            sqlstate: error_field(&fields, b'C').map(str::to_owned),
            message: error_field(&fields, b'M').unwrap_or("error without a message").to_owned(),
            hint: error_field(&fields, b'H').map(str::to_owned),
        },
        Err(_) => failure("malformed ErrorResponse".to_owned()),
    }
}

#[cfg(unix)]
fn login_name() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Windows: the account name, as libpq takes it for a missing user name.
#[cfg(not(unix))]
fn login_name() -> Option<String> {
    std::env::var("USERNAME").ok().filter(|n| !n.is_empty())
}

/// Runs every probe at once; the failures, by target name, in the order given.
pub async fn run_all(probes: &[Probe], limit: Duration) -> Vec<(String, ProbeFailure)> {
    let results = futures_util::future::join_all(probes.iter().map(|p| p.run(limit))).await;
    probes
        .iter()
        .zip(results)
        .filter_map(|(p, r)| r.err().map(|e| (p.name.clone(), e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_defaults() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let p = Probe::new("a", "0.0.0.0:7000".parse().unwrap(), Some("iam"), env(&[("PGUSER", "other")]));
        assert_eq!((p.addr.to_string().as_str(), p.user.as_str(), p.database.as_str()), ("127.0.0.1:7000", "iam", "postgres"));
        let p = Probe::new("a", "[::]:7000".parse().unwrap(), None, env(&[("PGUSER", "pguser"), ("PGDATABASE", "app")]));
        assert_eq!((p.addr.to_string().as_str(), p.user.as_str(), p.database.as_str()), ("[::1]:7000", "pguser", "app"));
    }

    #[test]
    fn failure_shows_code_message_and_hint() {
        let mut body = Vec::new();
        for (code, v) in [(b'S', "FATAL"), (b'C', "08001"), (b'M', "cannot reach"), (b'H', "check the VPN")] {
            body.push(code);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        assert_eq!(server_error(&body).to_string(), "08001 cannot reach HINT: check the VPN");
        assert_eq!(server_error(b"\x43bad").to_string(), "malformed ErrorResponse");
    }
}
