//! TLS to the upstream, always verify-full against the endpoint name: after SSLRequest, or
//! PostgreSQL 17's direct TLS with ALPN `postgresql`.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{tunnel_error, UpstreamError};
use super::UpstreamContext;
use crate::pg::startup::SSL_REQUEST;
use crate::tunnel::{TunnelError, TunnelStream};

/// SSLRequest, exactly one byte of answer, then the TLS handshake with SNI and verify-full
/// against the endpoint name (never the address we dialled).
pub async fn start_tls(
    ctx: &dyn UpstreamContext,
    mut raw: TunnelStream,
) -> Result<TlsStream<TunnelStream>, UpstreamError> {
    let endpoint = &ctx.target().endpoint;
    // The first bytes through a tunnel are where a tunnel-level failure shows up (SSM: the node
    // could not reach the database), so I/O errors here are explained as tunnel errors.
    let stream_error = |e: std::io::Error| match TunnelError::from_stream_error(&e) {
        Some(source) => tunnel_error(ctx, source),
        None => UpstreamError::Io(e),
    };
    raw.write_all(&SSL_REQUEST).await.map_err(stream_error)?;
    raw.flush().await.map_err(stream_error)?;
    let mut answer = [0u8; 1];
    match raw.read(&mut answer).await.map_err(stream_error)? {
        0 => return Err(UpstreamError::Closed),
        _ if answer[0] == b'S' => {}
        // `N`, or an ErrorResponse from an old server: never shown (it is unauthenticated).
        _ => {
            return Err(UpstreamError::TlsRefused {
                endpoint: endpoint.clone(),
            })
        }
    }
    let tls_error = |source| UpstreamError::Tls {
        endpoint: endpoint.clone(),
        source,
    };
    let name = server_name(endpoint).map_err(tls_error)?;
    TlsConnector::from(Arc::clone(ctx.tls()))
        .connect(name, raw)
        .await
        .map_err(tls_error)
}

/// PostgreSQL 17's direct TLS (`sslnegotiation=direct`): the ClientHello at once, with ALPN
/// `postgresql`, which the server must select. Verify-full exactly as after SSLRequest. A
/// failure before TLS completes that is not about the certificate (closed, not TLS, no ALPN)
/// is [`UpstreamError::DirectTlsRefused`]: the caller may start over with SSLRequest.
pub async fn start_direct_tls(
    ctx: &dyn UpstreamContext,
    raw: TunnelStream,
) -> Result<TlsStream<TunnelStream>, UpstreamError> {
    let endpoint = &ctx.target().endpoint;
    let name = server_name(endpoint).map_err(|source| UpstreamError::Tls {
        endpoint: endpoint.clone(),
        source,
    })?;
    let stream = match TlsConnector::from(Arc::clone(ctx.tls())).connect(name, raw).await {
        Ok(stream) => stream,
        Err(source) => {
            // The tunnel's own failure (SSM: the node could not reach the database).
            if let Some(tunnel) = TunnelError::from_stream_error(&source) {
                return Err(tunnel_error(ctx, tunnel));
            }
            return Err(if is_certificate_error(&source) {
                UpstreamError::Tls {
                    endpoint: endpoint.clone(),
                    source,
                }
            } else {
                UpstreamError::DirectTlsRefused {
                    endpoint: endpoint.clone(),
                    source,
                }
            });
        }
    };
    // As libpq does: a server that did not select ALPN `postgresql` may not be PostgreSQL.
    if stream.get_ref().1.alpn_protocol() != Some(crate::tls::POSTGRESQL_ALPN) {
        return Err(UpstreamError::DirectTlsRefused {
            endpoint: endpoint.clone(),
            source: std::io::Error::other("the server did not select the ALPN protocol \"postgresql\""),
        });
    }
    Ok(stream)
}

/// The name TLS sends as SNI and verifies: the endpoint, never the address we dialled.
fn server_name(endpoint: &str) -> Result<ServerName<'static>, std::io::Error> {
    ServerName::try_from(endpoint.to_owned())
        .map_err(|_| std::io::Error::other("the endpoint is not a valid DNS name"))
}

/// A TLS failure about the server's certificate (or our trust in it), not about the protocol.
fn is_certificate_error(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::InvalidCertRevocationList(_)
                | rustls::Error::NoCertificatesPresented
        )
    )
}
