//! The operations endpoint (`--http-address`/`--http-port`): health checks for service managers,
//! orchestrators and scripts, and `/metrics` for Prometheus; plus `rds-auth-proxy wait`, which
//! polls `/startup`.
//!
//! | path | 200 when | else |
//! |---|---|---|
//! | `/startup` | every listener is bound and serving | 503 |
//! | `/readiness` | started, not draining, every target below `--max-connections`, credentials loadable | 503, with the reasons (to loopback clients only) |
//! | `/liveness` | the process answers | — |
//! | `/metrics` | always: OpenMetrics text | — |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::target::TargetContext;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} for health checks and metrics (is another proxy using it? pick another with --http-port)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How long the readiness check waits for credentials (a chain that is refreshing them).
const CREDENTIALS_CHECK_LIMIT: Duration = Duration::from_secs(2);

/// What the health checks and `/metrics` read: the process's state and its targets.
#[derive(Debug, Default)]
pub struct Ops {
    pub metrics: Metrics,
    started: AtomicBool,
    draining: AtomicBool,
    targets: Mutex<Vec<(Arc<TargetContext>, usize)>>,
}

impl Ops {
    pub fn new() -> Self {
        Self::default()
    }

    /// A target the readiness check covers, with its `--max-connections` (0: no limit).
    pub fn add_target(&self, ctx: Arc<TargetContext>, max_connections: usize) {
        ctx.tunnel.report_sessions(&self.metrics, &ctx.target.name);
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((ctx, max_connections));
    }

    /// Takes target `name` out of the readiness check (removed or replaced by a reload).
    pub fn remove_target(&self, name: &str) {
        self.metrics.unwatch_tunnel(name);
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(ctx, _)| ctx.target.name != name);
    }

    /// Every listener is bound and accepting.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// Shutdown began: no longer ready.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Why the proxy is not ready, one reason a line; empty when it is.
    pub async fn readiness_problems(&self) -> Vec<String> {
        if !self.is_started() {
            return vec!["not started".into()];
        }
        if self.draining.load(Ordering::SeqCst) {
            return vec!["shutting down".into()];
        }
        let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut problems = Vec::new();
        for (ctx, max) in targets {
            let name = &ctx.target.name;
            let open = ctx.metrics.connections_open.get();
            if max > 0 && open >= i64::try_from(max).unwrap_or(i64::MAX) {
                problems.push(format!("{name}: at --max-connections ({max})"));
            }
            match tokio::time::timeout(CREDENTIALS_CHECK_LIMIT, ctx.auth.credentials()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => problems.push(format!(
                    "{name}: AWS credentials: {}",
                    crate::errors::display_chain(&e)
                )),
                Err(_) => problems.push(format!(
                    "{name}: AWS credentials did not load within {} s",
                    CREDENTIALS_CHECK_LIMIT.as_secs()
                )),
            }
        }
        problems
    }
}

/// Binds the HTTP listener (before the database listeners: /startup must answer 503 until they
/// are bound, not refuse connections).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves health checks and metrics until the task is dropped.
pub async fn serve(listener: TcpListener, ops: Arc<Ops>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                // Out of file descriptors, mostly: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ops = ops.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let ops = ops.clone();
                // Only the method and path matter; the request itself is not kept across awaits.
                let (method, path) = (request.method().clone(), request.uri().path().to_owned());
                async move { Ok::<_, Infallible>(handle(&method, &path, &ops, peer).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn handle(method: &Method, path: &str, ops: &Ops, peer: SocketAddr) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "use GET\n".into());
    }
    match path {
        "/startup" if ops.is_started() => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/startup" => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "starting\n".into()),
        "/liveness" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readiness" => {
            let problems = ops.readiness_problems().await;
            if problems.is_empty() {
                text(StatusCode::OK, PLAIN, "ok\n".into())
            } else if !peer.ip().to_canonical().is_loopback() {
                // The reasons hold credential error chains (profile names, account ids, file
                // paths): only for this host. Others learn the status and where to look.
                tracing::debug!(%peer, problems = problems.join("; "), "readiness: not ready (details only on loopback)");
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready (details on the proxy's own host: curl http://127.0.0.1:PORT/readiness)\n".into())
            } else {
                let mut body = problems.join("\n");
                body.push('\n');
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, body)
            }
        }
        "/metrics" => text(StatusCode::OK, crate::metrics::CONTENT_TYPE, ops.metrics.encode()),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /startup, /readiness, /liveness or /metrics\n".into(),
        ),
    }
}

/// One plain HTTP/1.1 GET: (status, body). Small on purpose: `wait` and the tests need nothing
/// more, and it keeps an HTTP client stack out of the binary.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_owned()))
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("the proxy at http://{addr}/startup was not up within {secs} s (last: {last}); is it running with --http-port {port}?")]
    Timeout {
        addr: SocketAddr,
        port: u16,
        secs: u64,
        last: String,
    },
}

/// `rds-auth-proxy wait`: polls `/startup` until it answers 200, or `timeout` passes.
pub async fn wait(addr: SocketAddr, timeout: Duration) -> Result<(), WaitError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = "no answer yet".to_owned();
    loop {
        let attempt = tokio::time::timeout_at(deadline, get(addr, "/startup")).await;
        match attempt {
            Ok(Ok((200, _))) => return Ok(()),
            Ok(Ok((status, body))) => last = format!("HTTP {status} {}", body.trim()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => {}
        }
        // Polling is the point of `wait`: there is no event to wait on from outside.
        let next = tokio::time::Instant::now() + Duration::from_millis(200);
        if next >= deadline {
            return Err(WaitError::Timeout {
                addr,
                port: addr.port(),
                secs: timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep_until(next).await;
    }
}
