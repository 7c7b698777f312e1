//! The accept side: a TCP listener (loopback by default) and an optional Unix socket, the
//! connection limit, and the drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client_auth::{self, Access, TcpRules};
use crate::config::ListenConfig;
use crate::pg::UserFacing;
use crate::session;
use crate::target::TargetContext;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} (is another proxy or PostgreSQL already using it? pick another with --port)")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the Unix socket {path}")]
    Unix {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--client-password-file")]
    ClientPassword(#[source] crate::auth::password::PasswordError),
}

/// A bound Unix socket and its path.
#[cfg(unix)]
type UnixSocket = (tokio::net::UnixListener, PathBuf);
/// No Unix sockets on this OS: `--unix-socket` fails at start ([`bind_unix`]).
#[cfg(not(unix))]
type UnixSocket = (std::convert::Infallible, PathBuf);

/// Bound listeners for one target, ready to [`Listeners::run`].
pub struct Listeners {
    tcp: TcpListener,
    unix: Option<UnixSocket>,
    config: ListenConfig,
    /// Who may use the TCP listener from where (the client password, client certificates,
    /// which local users).
    rules: TcpRules,
}

impl Listeners {
    pub async fn bind(config: &ListenConfig) -> Result<Listeners, ListenError> {
        let tcp = TcpListener::bind(config.address)
            .await
            .map_err(|source| ListenError::Tcp {
                addr: config.address,
                source,
            })?;
        let port = tcp.local_addr().map(|a| a.port()).unwrap_or(config.address.port());
        let unix = match &config.unix_socket_dir {
            Some(dir) => Some(bind_unix(dir, port)?),
            None => None,
        };
        let client_password = match &config.client_password_file {
            Some(path) => Some(Arc::new(
                client_auth::load_client_password(path).map_err(ListenError::ClientPassword)?,
            )),
            None => None,
        };
        let rules = TcpRules {
            password: client_password,
            certificates: config.client_ca_file.is_some(),
            any_local_user: config.allow_local_users,
            own_uid: nix::unistd::geteuid().as_raw(),
        };
        rules.log_local_rule(config.address);
        Ok(Listeners {
            tcp,
            unix,
            config: config.clone(),
            rules,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.config.address)
    }

    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, p)| p.as_path())
    }

    /// Accepts until `shutdown` resolves; then closes the listeners at once, waits up to the
    /// drain timeout for open connections, tells the rest to end (57P01 at a message boundary)
    /// and gives them [`DRAIN_GRACE`] to do so before dropping them.
    pub async fn run(self, ctx: Arc<TargetContext>, shutdown: impl Future<Output = ()>) {
        let limit = Limits::new(self.config.max_connections);
        let (drain_trigger, drain) = crate::drain::channel();
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        if let Err(e) = ctx.timeouts.keepalive.apply(&stream) {
                            tracing::debug!(%peer, error = %e, "cannot enable TCP keepalive on a client connection");
                        }
                        let local = stream.local_addr().unwrap_or(self.config.address);
                        let access = Access::for_tcp(peer, local, &self.rules);
                        spawn_session(&mut sessions, &ctx, &limit, &drain, stream, peer.to_string(), access);
                    }
                    Err(e) => accept_error(e).await,
                },
                accepted = accept_unix(self.unix.as_ref()) => match accepted {
                    Ok((stream, access)) => {
                        spawn_session(&mut sessions, &ctx, &limit, &drain, stream, "unix socket".into(), access);
                    }
                    Err(e) => accept_error(e).await,
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        if let Some((_, path)) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
        drop(self.tcp);
        if !sessions.is_empty() {
            tracing::info!(
                open = sessions.len(),
                timeout_s = self.config.drain_timeout.as_secs(),
                "stopped accepting; waiting for open connections to finish"
            );
            let drained = tokio::time::timeout(self.config.drain_timeout, async {
                while sessions.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(open = sessions.len(), "drain timeout reached; closing the remaining connections (57P01)");
                drain_trigger.fire();
                let ended = tokio::time::timeout(DRAIN_GRACE, async {
                    while sessions.join_next().await.is_some() {}
                })
                .await;
                if ended.is_err() {
                    tracing::warn!(open = sessions.len(), "connections still open after the drain; dropping them");
                    sessions.shutdown().await;
                }
            }
        }
    }
}

/// The two bounds behind `--max-connections N` (none when N is 0, as before).
///
/// Sessions — connections that sent a StartupMessage — take one of N slots. Connections that
/// have not sent their first packet yet, and cancels being forwarded, take one of N other slots:
/// a cancel is never refused because N sessions are busy, yet a flood of silent connections
/// cannot grow without bound either — each holds its slot at most for the startup timeout (30 s)
/// or a cancel's connect and TLS timeouts. At most 2·N client sockets are open, the same rule
/// PostgreSQL uses (it admits up to twice max_connections children, those still sending their
/// startup packet or a cancel included).
struct Limits {
    first_packet: Option<Arc<Semaphore>>,
    sessions: Option<Arc<Semaphore>>,
}

impl Limits {
    fn new(max_connections: usize) -> Limits {
        let bound = || (max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections)));
        Limits {
            first_packet: bound(),
            sessions: bound(),
        }
    }
}

/// After the drain timeout, how long connections get to reach a message boundary and take
/// their 57P01 (a server in the middle of a large row, a client not reading) before they are
/// dropped. With the tunnel's 4 s shutdown limit, exit stays within --drain-timeout + 5 s.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn spawn_session<S>(
    sessions: &mut JoinSet<()>,
    ctx: &Arc<TargetContext>,
    limit: &Limits,
    drain: &crate::drain::DrainSignal,
    stream: S,
    peer: String,
    access: Access,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let first_packet = match &limit.first_packet {
        Some(sem) => match sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                sessions.spawn(refuse_busy(stream, peer));
                return;
            }
        },
        None => None,
    };
    let admission = session::Admission {
        first_packet,
        sessions: limit.sessions.clone(),
    };
    let ctx = ctx.clone();
    let drain = drain.clone();
    sessions.spawn(async move {
        session::serve_with(&ctx, stream, &peer, &drain, admission, access).await;
    });
}

async fn refuse_busy<S>(mut stream: S, peer: String)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    tracing::warn!(%peer, "refusing a connection: --max-connections connections are still sending their first packet");
    let err = session::SessionError::TooManyConnections.to_client_error();
    let _ = stream.write_all(&err.encode()).await;
    let _ = stream.shutdown().await;
}

/// The next Unix socket client, with what it may do (the peer's uid decides).
#[cfg(unix)]
async fn accept_unix(unix: Option<&UnixSocket>) -> std::io::Result<(tokio::net::UnixStream, Access)> {
    match unix {
        Some((l, _)) => l.accept().await.map(|(s, _)| {
            let access = Access::for_unix(&s);
            (s, access)
        }),
        None => std::future::pending().await,
    }
}

/// No Unix sockets on this OS: nothing ever arrives.
#[cfg(not(unix))]
async fn accept_unix(_: Option<&UnixSocket>) -> std::io::Result<(tokio::net::TcpStream, Access)> {
    std::future::pending().await
}

/// Accept errors are mostly out of file descriptors: back off instead of spinning.
async fn accept_error(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// Binds `DIR/.s.PGSQL.<port>` so that it is never reachable with a mode wider than 0600: it
/// is bound inside a fresh 0700 directory next to its destination, made 0600 there, then
/// renamed into place (atomic, same file system). A socket bound in place would accept
/// connections with the umask's mode (0755 under the usual 022) until the chmod; changing the
/// process-wide umask instead would race other threads (and needs unsafe code).
#[cfg(unix)]
fn bind_unix(dir: &Path, port: u16) -> Result<UnixSocket, ListenError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use tokio::net::UnixListener;
    let path = dir.join(format!(".s.PGSQL.{port}"));
    let err = |source| ListenError::Unix {
        path: path.clone(),
        source,
    };
    // A stale socket from a crashed run is replaced; a live one we must not steal, nor
    // anything that is not a socket.
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "it exists and is not a socket",
            )));
        }
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process is listening on it",
            )));
        }
    }
    // Short names: a socket path is limited to 107 bytes.
    let staging = dir.join(format!(".rap-{:08x}", rand::random::<u32>()));
    // `create`, not `create_all`: it fails on anything already there, link or not.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(err)?;
    let staged = staging.join("s");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, &path)?;
        Ok(listener)
    });
    if bound.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    let _ = std::fs::remove_dir(&staging);
    Ok((bound.map_err(err)?, path))
}

/// `--unix-socket` on an OS without Unix sockets (Windows): refused at start, in one line.
#[cfg(not(unix))]
fn bind_unix(dir: &Path, port: u16) -> Result<UnixSocket, ListenError> {
    Err(ListenError::Unix {
        path: dir.join(format!(".s.PGSQL.{port}")),
        source: std::io::Error::new(std::io::ErrorKind::Unsupported, "Unix sockets are not available on this OS; use the TCP port"),
    })
}
