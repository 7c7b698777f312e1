//! Test doubles for the SSM tunnel's unit tests: a scripted fake agent on the far end of an
//! in-memory WebSocket, and a fake control plane that records calls. Compiled only for tests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::api::{ApiError, ControlPlane, StartRequest, StreamGrant, StreamToken};
use super::message::{
    header_flags, message_type, AcknowledgeContent, ClientMessage, OpenDataChannelInput,
    PayloadType,
};
use super::websocket::{self, Connector, WebSocketError, WsStream};

/// Hands each WebSocket the client dials to the test as the server end of a duplex pipe.
#[derive(Debug)]
pub struct FakeConnector {
    accepted: mpsc::UnboundedSender<DuplexStream>,
    /// Fail this many connects before succeeding.
    pub fail_next: AtomicUsize,
    /// Buffer of each in-memory connection, per direction.
    pub pipe_size: AtomicUsize,
}

impl FakeConnector {
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<DuplexStream>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(FakeConnector {
                accepted: tx,
                fail_next: AtomicUsize::new(0),
                pipe_size: AtomicUsize::new(1 << 20),
            }),
            rx,
        )
    }
}

impl Connector for FakeConnector {
    fn connect<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<WsStream, WebSocketError>> {
        Box::pin(async move {
            if self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(WebSocketError::Timeout("fake".into()));
            }
            let (client, server) = tokio::io::duplex(self.pipe_size.load(Ordering::SeqCst));
            let _ = self.accepted.send(server);
            let request = url
                .into_client_request()
                .map_err(|_| WebSocketError::BadUrl(url.into()))?;
            websocket::upgrade(request, Box::new(client), "fake").await
        })
    }
}

/// The agent + gateway side of one WebSocket connection.
pub struct FakeAgent {
    pub ws: WebSocketStream<DuplexStream>,
    pub open: OpenDataChannelInput,
}

pub fn agent_message(
    seq: i64,
    payload_type: PayloadType,
    payload: impl Into<Bytes>,
) -> ClientMessage {
    ClientMessage::new(
        message_type::OUTPUT_STREAM_DATA,
        seq,
        if seq == 0 { header_flags::SYN } else { 0 },
        payload_type,
        payload.into(),
    )
}

pub const HANDSHAKE_REQUEST: &str = r#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"host":"db.example","localPortNumber":"0","portNumber":"5432","type":"LocalPortForwarding"}}}]}"#;

impl FakeAgent {
    /// Accepts the upgrade and reads the OpenDataChannel text frame.
    pub async fn accept(stream: DuplexStream) -> FakeAgent {
        let mut ws = tokio_tungstenite::accept_async(stream)
            .await
            .expect("upgrade");
        let open = loop {
            match ws.next().await.expect("open frame").expect("ws") {
                Message::Text(t) => {
                    break serde_json::from_str(t.as_str()).expect("OpenDataChannel json")
                }
                _ => continue,
            }
        };
        FakeAgent { ws, open }
    }

    pub async fn send(&mut self, msg: &ClientMessage) {
        self.ws
            .send(Message::Binary(msg.encode()))
            .await
            .expect("send");
    }

    pub async fn send_stream(
        &mut self,
        seq: i64,
        payload_type: PayloadType,
        payload: impl Into<Bytes>,
    ) -> ClientMessage {
        let msg = agent_message(seq, payload_type, payload);
        self.send(&msg).await;
        msg
    }

    /// Next binary message from the client (pings and text skipped); `None` when closed.
    pub async fn recv(&mut self) -> Option<ClientMessage> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Binary(b)) => {
                    return Some(ClientMessage::decode(&b).expect("client frame decodes"))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Next stream message from the client, skipping acks.
    pub async fn recv_stream(&mut self) -> ClientMessage {
        loop {
            let m = self.recv().await.expect("client message");
            if m.message_type != message_type::ACKNOWLEDGE {
                return m;
            }
        }
    }

    /// Next ack from the client, skipping (and returning nothing of) stream data.
    pub async fn recv_ack(&mut self) -> i64 {
        loop {
            let m = self.recv().await.expect("client message");
            if m.message_type == message_type::ACKNOWLEDGE {
                assert_eq!((m.sequence_number, m.flags), (0, header_flags::ACK));
                let a: AcknowledgeContent = m.json_payload("ack").expect("ack json");
                return a.acknowledged_message_sequence_number;
            }
        }
    }

    pub async fn ack(&mut self, received: &ClientMessage) {
        let ack = ClientMessage::ack_for(received).expect("ack");
        self.send(&ack).await;
    }

    /// Runs the agent side of a successful handshake (§1.3); returns the next agent seq (2).
    pub async fn handshake(&mut self, request: &str) -> i64 {
        self.send_stream(
            0,
            PayloadType::HandshakeRequest,
            request.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(self.recv_ack().await, 0);
        let response = self.recv_stream().await;
        assert_eq!(response.payload_type, PayloadType::HandshakeResponse);
        assert_eq!(response.sequence_number, 0);
        self.ack(&response).await;
        self.send_stream(
            1,
            PayloadType::HandshakeComplete,
            &br#"{"HandshakeTimeToComplete":1000,"CustomerMessage":""}"#[..],
        )
        .await;
        assert_eq!(self.recv_ack().await, 1);
        2
    }
}

/// A control plane with scripted answers.
#[derive(Debug, Default)]
pub struct FakeControl {
    /// Answers to ResumeSession, in order; when empty: `Ok(None)` (session over).
    pub resumes: Mutex<VecDeque<Result<Option<StreamGrant>, ApiError>>>,
    pub starts: AtomicUsize,
    pub resumed: AtomicUsize,
    pub terminated: Mutex<Vec<String>>,
}

impl FakeControl {
    pub fn grant(session_id: &str, token: &str) -> StreamGrant {
        StreamGrant {
            session_id: session_id.into(),
            token: StreamToken::new(token),
            stream_url: format!(
                "ws://127.0.0.1:1/v1/data-channel/{session_id}?role=publish_subscribe"
            ),
        }
    }

    pub fn push_resume(&self, answer: Result<Option<StreamGrant>, ApiError>) {
        self.resumes.lock().unwrap().push_back(answer);
    }
}

impl ControlPlane for FakeControl {
    fn start_session<'a>(
        &'a self,
        _request: &'a StartRequest,
    ) -> BoxFuture<'a, Result<StreamGrant, ApiError>> {
        Box::pin(async move {
            let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Self::grant(&format!("s-{n}"), &format!("token-{n}")))
        })
    }

    fn resume_session<'a>(
        &'a self,
        _session_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StreamGrant>, ApiError>> {
        Box::pin(async move {
            self.resumed.fetch_add(1, Ordering::SeqCst);
            self.resumes.lock().unwrap().pop_front().unwrap_or(Ok(None))
        })
    }

    fn terminate_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            self.terminated.lock().unwrap().push(session_id.to_owned());
            Ok(())
        })
    }
}
