//! CancelRequest routing. The proxy passes the server's BackendKeyData through unchanged, so a
//! client's CancelRequest is already valid upstream: it is sent over a new tunnel connection,
//! inside TLS like everything else, and the client's socket is closed right after.

use tokio::io::AsyncWriteExt;

use crate::pg::startup::CancelRequest;
use crate::target::TargetContext;
use crate::upstream::{self, UpstreamError};

/// Forwards one cancel request to the target's upstream.
pub async fn forward(ctx: &TargetContext, cancel: &CancelRequest) -> Result<(), UpstreamError> {
    let t = ctx.timeouts;
    let raw = tokio::time::timeout(t.connect, ctx.tunnel.open())
        .await
        .map_err(|_| UpstreamError::Timeout {
            phase: "opening the tunnel for a cancel request",
            secs: t.connect.as_secs(),
        })?
        .map_err(|e| upstream::tunnel_error(ctx, e))?;
    let mut stream = tokio::time::timeout(t.tls, upstream::start_tls(ctx, raw))
        .await
        .map_err(|_| UpstreamError::Timeout {
            phase: "negotiating TLS for a cancel request",
            secs: t.tls.as_secs(),
        })??;
    stream
        .write_all(cancel.as_bytes())
        .await
        .map_err(UpstreamError::Io)?;
    // close_notify + FIN after the packet: the server reads it, acts and closes its side.
    stream.shutdown().await.map_err(UpstreamError::Io)?;
    Ok(())
}
