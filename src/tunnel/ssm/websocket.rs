//! Dialling the data channel WebSocket: `wss://` over rustls with the system's roots, `ws://`
//! only to loopback (the simulator), and an optional SigV4-signed upgrade request.
//!
//! The StreamUrl is logged and reported without its query string, which may hold presigned
//! parameters.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use futures_util::future::BoxFuture;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::tunnel::TunnelStream;

/// The upgraded data channel.
pub type WsStream = WebSocketStream<TunnelStream>;

/// The plugin's handshake timeout (gorilla's default dialer).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(45);

/// Data channel frames are ~1.2 KB; anything far larger is a broken or hostile peer.
const MAX_MESSAGE_SIZE: usize = 1 << 20;

/// Query parameters that mean "already presigned": such a URL is never signed again (§1.2).
const PRESIGNED_PARAMS: [&str; 3] = ["X-Amz-Signature", "X-Amz-Credential", "X-Amz-Algorithm"];

#[derive(Debug, Clone, thiserror::Error)]
pub enum WebSocketError {
    #[error("the SSM stream URL {0:?} is not a ws:// or wss:// URL")]
    BadUrl(String),
    #[error("refusing unencrypted ws:// to {0}: only loopback hosts (the simulator) may use it")]
    PlaintextRemote(String),
    #[error("cannot connect to {host}")]
    Io {
        host: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("TLS with {host} failed")]
    Tls {
        host: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("the WebSocket upgrade at {host} failed")]
    Handshake {
        host: String,
        #[source]
        source: Arc<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("the WebSocket upgrade at {0} did not finish within 45 s")]
    Timeout(String),
    #[error("cannot SigV4-sign the WebSocket upgrade: {0}")]
    Sign(String),
}

/// Opens a data channel WebSocket to a StreamUrl. A trait so tests can hand over in-memory
/// streams with a fake agent on the other end.
pub trait Connector: Send + Sync + fmt::Debug {
    fn connect<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<WsStream, WebSocketError>>;
}

/// The URL without its query, for logs and errors.
pub fn redact_url(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// What the WebSocket layer needs from a parsed StreamUrl.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
}

fn parse_url(url: &str) -> Result<Endpoint, WebSocketError> {
    let bad = || WebSocketError::BadUrl(redact_url(url).to_owned());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(bad()),
    };
    let host = uri
        .host()
        .ok_or_else(bad)?
        .trim_matches(['[', ']'])
        .to_owned();
    if host.is_empty() {
        return Err(bad());
    }
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    if !tls && !is_loopback(&host) {
        return Err(WebSocketError::PlaintextRemote(host));
    }
    Ok(Endpoint { tls, host, port })
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Signs the upgrade `GET` like the 2025+ plugin: service `ssmmessages`, the session's region.
#[derive(Clone)]
pub struct UpgradeSigner {
    pub credentials: SharedCredentialsProvider,
    pub region: String,
}

impl fmt::Debug for UpgradeSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeSigner")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl UpgradeSigner {
    async fn sign(&self, request: &mut http::Request<()>) -> Result<(), WebSocketError> {
        let url = request.uri().to_string();
        if PRESIGNED_PARAMS.iter().any(|p| url.contains(p)) {
            return Ok(());
        }
        let creds = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| WebSocketError::Sign(format!("no credentials: {e}")))?;
        let identity = creds.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ssmmessages")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| WebSocketError::Sign(e.to_string()))?
            .into();
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let signable = SignableRequest::new(
            "GET",
            &url,
            std::iter::once(("host", host.as_str())),
            SignableBody::Bytes(&[]),
        )
        .map_err(|e| WebSocketError::Sign(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| WebSocketError::Sign(e.to_string()))?
            .into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }
}

/// The production connector: TCP, rustls for `wss://`, then the WebSocket upgrade.
#[derive(Debug, Clone)]
pub struct WsConnector {
    /// Built once: the system roots (ssmmessages has a public certificate) and our provider.
    tls: Arc<rustls::ClientConfig>,
    signer: Option<UpgradeSigner>,
}

impl WsConnector {
    /// `signer`: sign the upgrade request (`--ssm-sign-websocket`).
    pub fn new(signer: Option<UpgradeSigner>) -> Result<Self, WebSocketError> {
        let mut roots = rustls::RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        for err in &loaded.errors {
            tracing::debug!(error = %err, "skipping an unreadable system CA certificate");
        }
        roots.add_parsable_certificates(loaded.certs);
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| WebSocketError::Sign(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(WsConnector {
            tls: Arc::new(tls),
            signer,
        })
    }

    async fn dial(&self, url: &str) -> Result<WsStream, WebSocketError> {
        let ep = parse_url(url)?;
        let io_err = |source| WebSocketError::Io {
            host: ep.host.clone(),
            source: Arc::new(source),
        };
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(io_err)?;
        // Acks are tiny and latency-bound.
        let _ = tcp.set_nodelay(true);
        let stream: TunnelStream = if ep.tls {
            let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
                .map_err(|_| WebSocketError::BadUrl(redact_url(url).to_owned()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| WebSocketError::Tls {
                    host: ep.host.clone(),
                    source: Arc::new(source),
                })?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let mut request = url
            .into_client_request()
            .map_err(|_| WebSocketError::BadUrl(redact_url(url).to_owned()))?;
        if let Some(signer) = &self.signer {
            signer.sign(&mut request).await?;
        }
        upgrade(request, stream, &ep.host).await
    }
}

/// Runs the client side of the WebSocket upgrade over an established stream.
pub async fn upgrade(
    request: http::Request<()>,
    stream: TunnelStream,
    host: &str,
) -> Result<WsStream, WebSocketError> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let (ws, _response) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await
    .map_err(|_| WebSocketError::Timeout(host.to_owned()))?
    .map_err(|source| WebSocketError::Handshake {
        host: host.to_owned(),
        source: Arc::new(source),
    })?;
    Ok(ws)
}

impl Connector for WsConnector {
    fn connect<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<WsStream, WebSocketError>> {
        Box::pin(self.dial(url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ep = parse_url(
            "wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe",
        )
        .unwrap();
        assert_eq!(
            ep,
            Endpoint {
                tls: true,
                host: "ssmmessages.eu-west-1.amazonaws.com".into(),
                port: 443
            }
        );
        let ep = parse_url("ws://127.0.0.1:4567/v1/data-channel/s-1").unwrap();
        assert_eq!((ep.tls, ep.port), (false, 4567));
        assert!(parse_url("ws://[::1]:80/x").is_ok());
        assert!(parse_url("ws://localhost/x").is_ok());
        assert!(matches!(
            parse_url("ws://ssmmessages.eu-west-1.amazonaws.com/x"),
            Err(WebSocketError::PlaintextRemote(_))
        ));
        assert!(matches!(
            parse_url("https://x/y"),
            Err(WebSocketError::BadUrl(_))
        ));
        let err = parse_url("http://h/p?X-Amz-Signature=secret").unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }

    #[tokio::test]
    async fn signs_the_upgrade_unless_presigned() {
        let signer = UpgradeSigner {
            credentials: SharedCredentialsProvider::new(
                aws_credential_types::Credentials::from_keys(
                    "AKIDEXAMPLE",
                    "secret",
                    Some("session-token".into()),
                ),
            ),
            region: "eu-west-1".into(),
        };
        let mut req =
            "wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe"
                .into_client_request()
                .unwrap();
        signer.sign(&mut req).await.unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/eu-west-1/ssmmessages/aws4_request"));
        assert!(req.headers().contains_key("x-amz-date"));
        assert_eq!(req.headers()["x-amz-security-token"], "session-token");

        let mut presigned = "wss://h/p?X-Amz-Algorithm=a&X-Amz-Signature=b"
            .into_client_request()
            .unwrap();
        signer.sign(&mut presigned).await.unwrap();
        assert!(!presigned.headers().contains_key("authorization"));
    }
}
