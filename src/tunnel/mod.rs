//! How bytes reach the upstream's port: straight over TCP ([`direct`]) or through an SSM
//! Session Manager port-forwarding session. A tunnel only moves bytes; TLS and authentication run
//! on top of whatever stream it returns, so every tunnel gets the same verify-full upstream.

pub mod direct;
pub mod ssm;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to the upstream's PostgreSQL port.
pub trait TunnelIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> TunnelIo for T {}

/// One opened tunnel connection.
pub type TunnelStream = Box<dyn TunnelIo>;

/// The configured way to reach one target.
#[derive(Debug, Clone)]
pub enum Tunnel {
    Direct(direct::Direct),
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
}

impl Tunnel {
    /// Opens one connection to the upstream's port.
    pub async fn open(&self) -> Result<TunnelStream, TunnelError> {
        match self {
            Tunnel::Direct(d) => Ok(Box::new(d.open().await?)),
        }
    }

    /// A short description for logs and error messages ("direct to host:port").
    pub fn describe(&self) -> String {
        match self {
            Tunnel::Direct(d) => format!("direct to {}", d.addr()),
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
        }
    }
}
