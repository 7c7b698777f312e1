//! The agent's Port plugin (`ssm-protocol.md` §5): in mux mode an smux v1 server whose every
//! stream is a fresh TCP connection to the target, in basic mode one TCP connection that is
//! dropped on DisconnectToPort and re-dialled on the next Output. Target bytes leave here in
//! chunks of at most `payload_cap`, one per Output message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{bump, Inner};
use rds_auth_proxy_protocol::ssm::smux::{self, Session, SmuxError};

/// Port plugin output, in the order the agent must send it.
#[derive(Debug)]
pub(super) enum PortEvent {
    /// Target (or smux) bytes for one Output message.
    Output(Bytes),
    /// Mux: dialling the target for a new stream failed (Flag 3, no stream id).
    ConnectError,
    /// The plugin gave up; the session ends with this text in `channel_closed`.
    Failed(String),
}

/// Client Output towards the plugin.
enum PortInput {
    Data(Bytes),
    /// Basic mode's DisconnectToPort flag.
    Disconnect,
}

/// Errors of the port plugin.
#[derive(Debug, thiserror::Error)]
pub(super) enum PortError {
    /// The target host is not in the simulator's map: like a name that does not resolve.
    #[error("dial tcp: lookup {0}: no such host")]
    UnknownHost(String),
    /// The TCP connect failed.
    #[error("dial tcp {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TCP connect did not finish in time.
    #[error("dial tcp {0}: i/o timeout")]
    Timeout(SocketAddr),
}

/// How long a dial may take before it counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Buffered Output events: small, so that target reads follow the agent's sending pace.
const EVENT_QUEUE: usize = 8;

/// The in-memory pipe between the agent and its smux server.
const DUPLEX_BUFFER: usize = 64 * 1024;

/// The agent's handle on a running plugin. Dropping it stops the plugin.
pub(super) struct PortHandle {
    input: mpsc::UnboundedSender<PortInput>,
    /// Bytes handed to [`PortHandle::write`] and not yet written; the agent stops acking new
    /// Output above a limit so this stays bounded.
    backlog: Arc<AtomicUsize>,
    /// Mux mode's smux server, closed on drop.
    smux: Option<Arc<Session>>,
}

impl PortHandle {
    pub(super) fn write(&self, data: Bytes) {
        self.backlog.fetch_add(data.len(), Ordering::Relaxed);
        let _ = self.input.send(PortInput::Data(data));
    }

    pub(super) fn disconnect(&self) {
        let _ = self.input.send(PortInput::Disconnect);
    }

    pub(super) fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }
}

impl Drop for PortHandle {
    fn drop(&mut self) {
        if let Some(session) = &self.smux {
            session.close();
        }
    }
}

async fn dial(inner: &Inner, host: &str) -> Result<TcpStream, PortError> {
    let addr = *inner
        .targets
        .get(host)
        .ok_or_else(|| PortError::UnknownHost(host.to_owned()))?;
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| PortError::Timeout(addr))?
        .map_err(|source| PortError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Reads `source` in chunks of at most the current `payload_cap` into Output events until EOF
/// or until the agent stops listening.
async fn pump<R: AsyncRead + Unpin>(
    inner: &Inner,
    mut source: R,
    events: &mpsc::Sender<PortEvent>,
) {
    loop {
        let cap = inner.knobs.read(|o| o.payload_cap).max(1);
        let mut buf = BytesMut::zeroed(cap);
        match source.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf.truncate(n);
                if events.send(PortEvent::Output(buf.freeze())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Mux mode: an smux server over an in-memory pipe whose other end is the data channel.
pub(super) fn start_mux(
    inner: Arc<Inner>,
    host: String,
    keepalive: bool,
) -> (PortHandle, mpsc::Receiver<PortEvent>) {
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (input_tx, mut input_rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(AtomicUsize::new(0));
    let (agent_side, smux_side) = tokio::io::duplex(DUPLEX_BUFFER);
    let defaults = smux::Config::default();
    let config = smux::Config {
        keepalive_interval: keepalive.then_some(defaults.keepalive_interval).flatten(),
        keepalive_timeout: keepalive.then_some(defaults.keepalive_timeout).flatten(),
        ..defaults
    };
    let session = match Session::server(smux_side, config) {
        Ok(session) => Arc::new(session),
        Err(e) => {
            // Only an invalid config fails here, which the defaults are not; fail the session.
            let _ = events_tx.try_send(PortEvent::Failed(format!("smux server: {e}")));
            return (
                PortHandle {
                    input: input_tx,
                    backlog,
                    smux: None,
                },
                events_rx,
            );
        }
    };
    let (from_smux, mut to_smux) = tokio::io::split(agent_side);

    let written = backlog.clone();
    tokio::spawn(async move {
        while let Some(input) = input_rx.recv().await {
            if let PortInput::Data(data) = input {
                let len = data.len();
                let ok = to_smux.write_all(&data).await.is_ok();
                written.fetch_sub(len, Ordering::Relaxed);
                if !ok {
                    return;
                }
            }
            // DisconnectToPort means nothing in mux mode; the agent ignores it.
        }
    });

    tokio::spawn({
        let inner = inner.clone();
        let events = events_tx.clone();
        async move { pump(&inner, from_smux, &events).await }
    });

    tokio::spawn({
        let session = session.clone();
        async move {
            while let Some(stream) = session.accept_stream().await {
                bump(&inner.stats.streams_opened);
                let inner = inner.clone();
                let host = host.clone();
                let events = events_tx.clone();
                tokio::spawn(async move {
                    match dial(&inner, &host).await {
                        Ok(tcp) => pipe(stream, tcp).await,
                        Err(e) => {
                            tracing::debug!(error = %e, "simulated agent: stream dial failed");
                            bump(&inner.stats.connect_errors);
                            // The flag first, then the FIN that dropping the stream queues.
                            let _ = events.send(PortEvent::ConnectError).await;
                            drop(stream);
                        }
                    }
                });
            }
            match session.close_reason() {
                Some(reason) if !matches!(reason.root_cause(), SmuxError::ClosedLocally) => {
                    let _ = events_tx
                        .send(PortEvent::Failed(format!("smux session closed: {reason}")))
                        .await;
                }
                _ => {}
            }
        }
    });

    (
        PortHandle {
            input: input_tx,
            backlog,
            smux: Some(session),
        },
        events_rx,
    )
}

/// Stream ↔ target with two copies; when either ends the other is dropped, as the agent does
/// (smux v1 has no half-close).
async fn pipe(stream: smux::Stream, tcp: TcpStream) {
    let (mut stream_rx, mut stream_tx) = tokio::io::split(stream);
    let (mut tcp_rx, mut tcp_tx) = tcp.into_split();
    tokio::select! {
        _ = tokio::io::copy(&mut stream_rx, &mut tcp_tx) => {}
        _ = tokio::io::copy(&mut tcp_rx, &mut stream_tx) => {}
    }
    let _ = stream_tx.shutdown().await;
}

/// Basic mode: dial now; one connection at a time.
pub(super) fn start_basic(
    inner: Arc<Inner>,
    host: String,
) -> (PortHandle, mpsc::Receiver<PortEvent>) {
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (input_tx, input_rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(AtomicUsize::new(0));
    tokio::spawn(run_basic(inner, host, input_rx, events_tx, backlog.clone()));
    (
        PortHandle {
            input: input_tx,
            backlog,
            smux: None,
        },
        events_rx,
    )
}

/// One basic-mode target connection: its write half and the task pumping its read half.
struct BasicConn {
    tx: tokio::net::tcp::OwnedWriteHalf,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for BasicConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn connect_basic(
    inner: &Arc<Inner>,
    host: &str,
    events: &mpsc::Sender<PortEvent>,
) -> Result<BasicConn, PortError> {
    bump(&inner.stats.streams_opened);
    let tcp = dial(inner, host)
        .await
        .inspect_err(|_| bump(&inner.stats.connect_errors))?;
    let (rx, tx) = tcp.into_split();
    let reader = tokio::spawn({
        let inner = inner.clone();
        let events = events.clone();
        // On EOF the agent closes and silently waits for the next client Output (§5.2).
        async move { pump(&inner, rx, &events).await }
    });
    Ok(BasicConn { tx, reader })
}

async fn run_basic(
    inner: Arc<Inner>,
    host: String,
    mut input: mpsc::UnboundedReceiver<PortInput>,
    events: mpsc::Sender<PortEvent>,
    backlog: Arc<AtomicUsize>,
) {
    let fail =
        |e: PortError| PortEvent::Failed(format!("Unable to connect to specified port: {e}"));
    let mut conn = match connect_basic(&inner, &host, &events).await {
        Ok(conn) => Some(conn),
        Err(e) => {
            let _ = events.send(fail(e)).await;
            return;
        }
    };
    while let Some(item) = input.recv().await {
        match item {
            PortInput::Disconnect => conn = None,
            PortInput::Data(data) => {
                let len = data.len();
                // A connection the target closed is re-dialled on the next Output, and that
                // Output goes to the new connection (the basic-mode hazard of §5.2).
                if conn.as_ref().is_none_or(|c| c.reader.is_finished()) {
                    match connect_basic(&inner, &host, &events).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            let _ = events.send(fail(e)).await;
                            return;
                        }
                    }
                }
                if let Some(c) = conn.as_mut() {
                    if c.tx.write_all(&data).await.is_err() {
                        conn = None;
                    }
                }
                backlog.fetch_sub(len, Ordering::Relaxed);
            }
        }
    }
}
