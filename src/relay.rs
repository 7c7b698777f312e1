//! The byte relay after authentication: client ⇄ upstream, unchanged, until either side closes.

use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes moved each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
}

/// Relays until both directions are done; an I/O error on either side ends it.
pub async fn relay<C, U>(client: &mut C, upstream: &mut U) -> std::io::Result<RelayStats>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    // 64 KiB buffers: COPY moves large chunks and the default 8 KiB costs syscalls.
    let (c2u, u2c) =
        tokio::io::copy_bidirectional_with_sizes(client, upstream, 64 * 1024, 64 * 1024).await?;
    Ok(RelayStats {
        client_to_upstream: c2u,
        upstream_to_client: u2c,
    })
}
