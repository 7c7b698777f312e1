//! One WebSocket to the message gateway: dialling it (with OpenDataChannel) and its reader
//! and writer tasks, which report to the core as [`LinkEvent`]s.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::{Config, DataChannelError};
use crate::tunnel::ssm::api::StreamToken;
use crate::tunnel::ssm::message::OpenDataChannelInput;
use crate::tunnel::ssm::websocket::{Connector, WebSocketError, WsStream};

/// Frames the writer queue holds; the core stops reading local data while fewer than
/// [`WRITER_RESERVE`] slots are free, so acks and pings always find room.
const WRITER_QUEUE: usize = 256;
pub(super) const WRITER_RESERVE: usize = 32;

/// Frames the reader may queue for the core before it waits (TCP then pushes back).
const READER_QUEUE: usize = 256;

/// What the reader and writer tasks report to the core.
pub(super) enum LinkEvent {
    Frame(Message),
    /// The connection is unusable (read error, EOF, failed or stuck write).
    Broken(String),
}

/// One WebSocket connection split into its reader and writer tasks. Dropping it stops both.
pub(super) struct Link {
    pub(super) events: mpsc::Receiver<LinkEvent>,
    /// `None` once the link is finishing: the writer drains what is queued and stops.
    pub(super) tx: Option<mpsc::Sender<Message>>,
    /// Signalled each time the writer emptied its queue.
    pub(super) drained: Arc<Notify>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Link {
    pub(super) fn start(ws: WsStream, write_timeout: Duration) -> Link {
        let (sink, stream) = ws.split();
        let (events_tx, events) = mpsc::channel(READER_QUEUE);
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let drained = Arc::new(Notify::new());
        let reader = tokio::spawn(read_frames(stream, events_tx.clone()));
        let writer = tokio::spawn(write_frames(
            sink,
            rx,
            events_tx,
            write_timeout,
            drained.clone(),
        ));
        Link {
            events,
            tx: Some(tx),
            drained,
            reader,
            writer,
        }
    }

    /// Free slots in the writer queue.
    pub(super) fn room(&self) -> usize {
        self.tx.as_ref().map_or(0, mpsc::Sender::capacity)
    }

    /// Lets the writer deliver what is queued (plus a close frame if asked), for up to `limit`.
    pub(super) async fn finish(&mut self, close: bool, limit: Duration) {
        if let Some(tx) = self.tx.take() {
            if close {
                let _ = tx.try_send(Message::Close(None));
            }
            drop(tx);
            let _ = tokio::time::timeout(limit, &mut self.writer).await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

async fn read_frames(mut stream: SplitStream<WsStream>, events: mpsc::Sender<LinkEvent>) {
    let broken = loop {
        match stream.next().await {
            Some(Ok(message)) => {
                if events.send(LinkEvent::Frame(message)).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => break format!("WebSocket error: {e}"),
            None => break "WebSocket closed".to_owned(),
        }
    };
    let _ = events.send(LinkEvent::Broken(broken)).await;
}

async fn write_frames(
    mut sink: SplitSink<WsStream, Message>,
    mut rx: mpsc::Receiver<Message>,
    events: mpsc::Sender<LinkEvent>,
    limit: Duration,
    drained: Arc<Notify>,
) {
    let failure = 'outer: loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let closing = matches!(first, Message::Close(_));
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match tokio::time::timeout(limit, sink.feed(message)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break 'outer format!("WebSocket write failed: {e}"),
                Err(_) => break 'outer format!("WebSocket write stuck for {} s", limit.as_secs()),
            }
            next = rx.try_recv().ok();
        }
        match tokio::time::timeout(limit, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break format!("WebSocket write failed: {e}"),
            Err(_) => break format!("WebSocket write stuck for {} s", limit.as_secs()),
        }
        drained.notify_one();
        if closing {
            let _ = tokio::time::timeout(limit, sink.close()).await;
            return;
        }
    };
    drained.notify_one();
    let _ = events.send(LinkEvent::Broken(failure)).await;
}

/// Dials the WebSocket within `limit` and authenticates with OpenDataChannel.
pub(super) async fn dial(
    connector: &dyn Connector,
    url: &str,
    token: &StreamToken,
    client_id: Uuid,
    config: &Config,
) -> Result<WsStream, DataChannelError> {
    let mut ws = tokio::time::timeout(config.connect_timeout, connector.connect(url))
        .await
        .map_err(|_| DataChannelError::ConnectTimeout(config.connect_timeout.as_secs()))?
        .map_err(DataChannelError::Connect)?;
    let open =
        OpenDataChannelInput::new(token.expose().to_owned(), client_id, &config.client_version);
    // Serialising five strings cannot fail; an empty frame would be refused by the gateway.
    let json = open.to_json().unwrap_or_default();
    tokio::time::timeout(config.write_timeout, ws.send(Message::text(json)))
        .await
        .map_err(|_| DataChannelError::ConnectTimeout(config.write_timeout.as_secs()))?
        .map_err(|source| {
            DataChannelError::Connect(WebSocketError::Handshake {
                host: "the SSM gateway".into(),
                source: Arc::new(source),
            })
        })?;
    Ok(ws)
}
