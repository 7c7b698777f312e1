//! How bytes reach the upstream's port: straight over TCP ([`direct`]) or through an SSM
//! Session Manager port-forwarding session ([`ssm`], spoken natively). A tunnel only moves bytes; TLS and authentication run
//! on top of whatever stream it returns, so every tunnel gets the same verify-full upstream.

pub mod direct;
pub mod ssm;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to the upstream's PostgreSQL port.
pub trait TunnelIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> TunnelIo for T {}

/// One opened tunnel connection.
pub type TunnelStream = Box<dyn TunnelIo>;

/// One opened tunnel connection and what is known about it.
pub struct OpenedTunnel {
    pub stream: TunnelStream,
    /// The SSM session it runs in (`--via ssm`), for audit lines.
    pub ssm_session: Option<String>,
    /// Resolves when the tunnel reset the connection because its client stopped reading.
    pub stall: Option<ssm::pool::StallWatch>,
}

/// The configured way to reach one target.
#[derive(Debug, Clone)]
pub enum Tunnel {
    Direct(direct::Direct),
    /// Through a managed node in the VPC; sessions are shared and outlive connections.
    Ssm(ssm::SsmTunnel),
}

impl crate::metrics::OpenSessions for ssm::SsmTunnel {
    fn open_sessions(&self) -> usize {
        self.session_ids().len()
    }
}

/// Why the upstream's port could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resolve {addr}")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ssm(#[from] ssm::SsmError),
}

impl TunnelError {
    /// A hint specific to this failure, better than [`Tunnel::unreachable_hint`] when present.
    pub fn hint(&self) -> Option<String> {
        match self {
            TunnelError::Ssm(e) => Some(e.hint()),
            TunnelError::Connect { .. } | TunnelError::Resolve { .. } => None,
        }
    }

    /// Recovers a tunnel failure that surfaced as a stream read/write error (an SSM node that
    /// could not dial the database reports it on the first read, not at open).
    pub fn from_stream_error(err: &std::io::Error) -> Option<TunnelError> {
        ssm::SsmError::from_io(err).cloned().map(TunnelError::Ssm)
    }
}

impl Tunnel {
    /// Opens one connection to the upstream's port.
    pub async fn open(&self) -> Result<TunnelStream, TunnelError> {
        self.open_tagged().await.map(|(stream, _)| stream)
    }

    /// [`Tunnel::open`], also naming the SSM session the connection runs in (for audit lines).
    pub async fn open_tagged(&self) -> Result<(TunnelStream, Option<String>), TunnelError> {
        self.open_watched().await.map(|o| (o.stream, o.ssm_session))
    }

    /// [`Tunnel::open_tagged`], plus what tells when the tunnel gave the connection up because
    /// its client stopped reading (SSM mux: see `--ssm-stall-timeout`).
    pub async fn open_watched(&self) -> Result<OpenedTunnel, TunnelError> {
        match self {
            Tunnel::Direct(d) => Ok(OpenedTunnel {
                stream: Box::new(d.open().await?),
                ssm_session: None,
                stall: None,
            }),
            Tunnel::Ssm(t) => {
                let stream = t.open().await?;
                let ssm_session = Some(stream.session_id().to_owned());
                let stall = stream.stall_watch();
                Ok(OpenedTunnel {
                    stream: Box::new(stream),
                    ssm_session,
                    stall,
                })
            }
        }
    }

    /// A short description for logs and error messages ("direct to host:port").
    pub fn describe(&self) -> String {
        match self {
            Tunnel::Direct(d) => format!("direct to {}", d.addr()),
            Tunnel::Ssm(t) => t.describe(),
        }
    }

    /// What to tell the user when the upstream cannot be reached this way.
    pub fn unreachable_hint(&self) -> String {
        match self {
            Tunnel::Direct(d) => format!(
                "Check that {} is reachable from this machine (VPN, security groups), or use \
                 --via ssm to go through an SSM managed node in the VPC.",
                d.addr()
            ),
            Tunnel::Ssm(t) => {
                let s = t.settings();
                format!(
                    "Check that the SSM managed node {} is online (`aws ssm \
                     describe-instance-information`), that your identity may ssm:StartSession \
                     on it and on the document {}, and that the node can reach {}:{} \
                     (security groups).",
                    s.target,
                    ssm::api::DOCUMENT_NAME,
                    s.host,
                    s.port
                )
            }
        }
    }

    /// Opens what `--ssm-prewarm` keeps open, in the background; nothing otherwise.
    pub fn start_prewarm(&self) {
        match self {
            Tunnel::Direct(_) => {}
            Tunnel::Ssm(t) => t.start_prewarm(),
        }
    }

    /// Ends what the tunnel keeps open between connections (SSM sessions: TerminateSession).
    /// Call after the listeners have drained.
    pub async fn shutdown(&self) {
        match self {
            Tunnel::Direct(_) => {}
            Tunnel::Ssm(t) => t.shutdown().await,
        }
    }

    /// Has `metrics` count this tunnel's open SSM sessions under `name` at every scrape
    /// (direct tunnels: none).
    pub fn report_sessions(&self, metrics: &crate::metrics::Metrics, name: &str) {
        if let Tunnel::Ssm(t) = self {
            metrics.watch_tunnel(name, std::sync::Arc::new(t.clone()));
        }
    }
}
