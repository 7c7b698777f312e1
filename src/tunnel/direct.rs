//! The direct tunnel: a plain TCP connection to the endpoint (or to `--connect-addr`, e.g. a
//! port forward someone already runs). TLS still verifies the endpoint name on top of it.

use tokio::net::TcpStream;

use super::TunnelError;
use crate::net::TcpKeepalive;

#[derive(Debug, Clone)]
pub struct Direct {
    /// `host:port` to dial.
    addr: String,
    /// Applied to every upstream socket, so a vanished endpoint does not hold a client forever.
    keepalive: TcpKeepalive,
}

impl Direct {
    pub fn new(addr: String, keepalive: TcpKeepalive) -> Self {
        Direct { addr, keepalive }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub async fn open(&self) -> Result<TcpStream, TunnelError> {
        let addrs: Vec<_> = tokio::net::lookup_host(&self.addr)
            .await
            .map_err(|source| TunnelError::Resolve {
                addr: self.addr.clone(),
                source,
            })?
            .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Without NODELAY every small startup message waits for Nagle.
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = self.keepalive.apply(&stream) {
                        tracing::debug!(%addr, error = %e, "cannot enable TCP keepalive upstream");
                    }
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(TunnelError::Connect {
            addr: self.addr.clone(),
            source: last.unwrap_or_else(|| std::io::Error::other("no address to connect to")),
        })
    }
}
