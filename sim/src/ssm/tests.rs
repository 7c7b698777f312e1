//! End-to-end tests of the simulated SSM service through a small client built from the tunnel's
//! codec (`message`, `handshake`, `reliable`, `smux`): real SigV4 over HTTP, a real WebSocket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use super::agent::IDLE_TIMEOUT_TEXT;
use super::{SsmSim, SsmSimOptions, SsmSimStats, SIM_TARGET_ID};
use crate::sigv4::SimCredentials;
use rds_auth_proxy_protocol::ssm::handshake::{self, HandshakeRequestPayload};
use rds_auth_proxy_protocol::ssm::message::{
    header_flags, message_type, AcknowledgeContent, ChannelClosed, ClientMessage, FlagPayload,
    OpenDataChannelInput, PayloadType,
};
use rds_auth_proxy_protocol::ssm::reliable::{self, Delivery, Incoming, Outgoing};
use rds_auth_proxy_protocol::ssm::smux;

/// Turns a hang into a failure; never used to wait for something.
const GUARD: Duration = Duration::from_secs(20);
const REGION: &str = "eu-central-1";
const DB_HOST: &str = "simdb.c0sim0000000.eu-central-1.rds.amazonaws.com";
/// A version above 1.2.331.0: mux, agent keepalive off.
const MODERN_CLIENT: &str = "1.2.650.0";

fn creds() -> SimCredentials {
    SimCredentials::new(
        "AKIASIMTEST000000000",
        "simsecretsimsecretsimsecretsimsecret0000",
    )
}

fn stat(counter: &AtomicU64) -> u64 {
    SsmSimStats::get(counter)
}

/// A TCP echo server standing in for the database.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rx, mut tx) = tcp.split();
                let _ = tokio::io::copy(&mut rx, &mut tx).await;
            });
        }
    });
    addr
}

async fn start_sim(options: SsmSimOptions) -> SsmSim {
    let echo = echo_server().await;
    let targets = HashMap::from([(DB_HOST.to_owned(), echo)]);
    SsmSim::start(options, creds(), REGION, targets)
        .await
        .expect("sim starts")
}

/// POSTs one SSM JSON 1.1 call signed with `signer` (or unsigned) and returns status and body.
async fn call(
    sim: &SsmSim,
    signer: Option<&SimCredentials>,
    operation: &str,
    body: &Value,
) -> (u16, Value) {
    let addr = sim.local_addr().to_string();
    let body = body.to_string();
    let target = format!("AmazonSSM.{operation}");
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), addr.clone()),
        ("content-type".into(), "application/x-amz-json-1.1".into()),
        ("x-amz-target".into(), target),
    ];
    if let Some(signer) = signer {
        let identity = aws_credential_types::Credentials::from_keys(
            signer.access_key_id.clone(),
            signer.secret_access_key.clone(),
            None,
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(REGION)
            .name("ssm")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .expect("params")
            .into();
        let url = format!("http://{addr}/");
        let signable = SignableRequest::new(
            "POST",
            &url,
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(body.as_bytes()),
        )
        .expect("signable");
        let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
        for (name, value) in instructions.headers() {
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
    let mut request = String::from("POST / HTTP/1.1\r\n");
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    let mut tcp = TcpStream::connect(&addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    timeout(GUARD, tcp.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let response = String::from_utf8(response).expect("utf8");
    let status: u16 = response[9..12].parse().expect("status");
    let (_, body) = response.split_once("\r\n\r\n").expect("head/body");
    (status, serde_json::from_str(body).expect("json body"))
}

fn start_body(host: &str) -> Value {
    json!({
        "Target": SIM_TARGET_ID,
        "DocumentName": "AWS-StartPortForwardingSessionToRemoteHost",
        "Parameters": {"host": [host], "portNumber": ["5432"], "localPortNumber": ["0"]},
    })
}

/// StartSession; returns (SessionId, TokenValue, StreamUrl).
async fn start_session(sim: &SsmSim, host: &str) -> (String, String, String) {
    let (status, body) = call(sim, Some(&creds()), "StartSession", &start_body(host)).await;
    assert_eq!(status, 200, "{body}");
    let field = |name: &str| body[name].as_str().expect(name).to_owned();
    (field("SessionId"), field("TokenValue"), field("StreamUrl"))
}

/// What the client side observed.
#[derive(Debug)]
enum Got {
    Stream(ClientMessage),
    Closed(ChannelClosed),
    WsClosed,
}

/// The test's SSM client: acks, ordering and resends, as a plugin would do them.
struct Client {
    ws: WebSocketStream<TcpStream>,
    out: Outgoing,
    inc: Incoming<ClientMessage>,
    /// In-order messages not yet handed to the test.
    ready: std::collections::VecDeque<ClientMessage>,
    /// Sequence numbers of every ack received.
    acks: Vec<i64>,
}

impl Client {
    async fn open_ws(url: &str, token: &str, client_id: Uuid) -> WebSocketStream<TcpStream> {
        let addr = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .expect("ws url");
        let tcp = TcpStream::connect(addr).await.expect("tcp");
        let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .expect("websocket");
        let open = OpenDataChannelInput::new(token.to_owned(), client_id, MODERN_CLIENT);
        ws.send(Message::Text(open.to_json().expect("json").into()))
            .await
            .expect("open");
        ws
    }

    async fn connect(url: &str, token: &str, client_id: Uuid) -> Client {
        let ws = Self::open_ws(url, token, client_id).await;
        let config = reliable::Config::default();
        Client {
            ws,
            out: Outgoing::new(config.clone()),
            inc: Incoming::new(&config),
            ready: Default::default(),
            acks: Vec::new(),
        }
    }

    /// A new WebSocket for the same session (after ResumeSession): sequence state is kept and
    /// unacked messages are replayed, as the plugin does.
    async fn reconnect(&mut self, url: &str, token: &str, client_id: Uuid) {
        self.ws = Self::open_ws(url, token, client_id).await;
        for frame in self.out.replay(Instant::now()) {
            self.ws.send(Message::Binary(frame)).await.expect("replay");
        }
    }

    /// Next in-order agent message (acked), or the end of the channel.
    async fn next(&mut self) -> Got {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Got::Stream(message);
            }
            let resend_at = self.out.next_resend_at();
            let frame = tokio::select! {
                frame = self.ws.next() => frame,
                _ = sleep_until(resend_at.unwrap_or_else(Instant::now)), if resend_at.is_some() => {
                    for frame in self.out.due_for_resend(Instant::now()) {
                        let _ = self.ws.send(Message::Binary(frame)).await;
                    }
                    continue;
                }
            };
            let frame = match frame {
                Some(Ok(Message::Binary(frame))) => frame,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Got::WsClosed,
                Some(Ok(_)) => continue,
            };
            let message = ClientMessage::decode_bytes(&frame).expect("agent frame decodes");
            match message.message_type.as_str() {
                message_type::ACKNOWLEDGE => {
                    assert_eq!(message.flags, header_flags::ACK);
                    assert_eq!(message.sequence_number, 0);
                    let ack: AcknowledgeContent = message.json_payload("ack").expect("ack json");
                    self.out
                        .on_ack(ack.acknowledged_message_sequence_number, Instant::now());
                    self.acks.push(ack.acknowledged_message_sequence_number);
                }
                message_type::OUTPUT_STREAM_DATA => {
                    let delivery = self
                        .inc
                        .on_message(message.sequence_number, message.clone());
                    let ack = delivery.should_ack();
                    // Delivered before the ack is sent, so a cancelled `next` loses at most an
                    // ack, which the agent's resend recovers.
                    if let Delivery::Deliver(messages) = delivery {
                        self.ready.extend(messages);
                    }
                    if ack {
                        let ack = ClientMessage::ack_for(&message).expect("ack");
                        // The socket may already be gone (kill tests); the loop notices.
                        let _ = self.ws.send(Message::Binary(ack.encode())).await;
                    }
                }
                message_type::CHANNEL_CLOSED => {
                    return Got::Closed(
                        ChannelClosed::from_payload(&message.payload).expect("closed json"),
                    )
                }
                other => panic!("unexpected message type {other}"),
            }
        }
    }

    async fn expect_stream(&mut self) -> ClientMessage {
        match timeout(GUARD, self.next()).await.expect("in time") {
            Got::Stream(message) => message,
            other => panic!("expected stream data, got {other:?}"),
        }
    }

    async fn expect_closed(&mut self) -> ChannelClosed {
        loop {
            match timeout(GUARD, self.next()).await.expect("in time") {
                Got::Closed(closed) => return closed,
                Got::Stream(_) => continue,
                Got::WsClosed => panic!("WebSocket closed without channel_closed"),
            }
        }
    }

    /// Sends client stream data; returns its sequence number and frame.
    async fn send(&mut self, payload_type: PayloadType, payload: Bytes) -> (i64, Bytes) {
        let queued = self
            .out
            .push(Instant::now(), payload_type, payload)
            .expect("window");
        self.ws
            .send(Message::Binary(queued.frame.clone()))
            .await
            .expect("send");
        (queued.sequence_number, queued.frame)
    }

    /// Answers the HandshakeRequest as the plugin does and waits for HandshakeComplete.
    async fn handshake(&mut self, client_version: &str) -> HandshakeRequestPayload {
        let request = self.expect_stream().await;
        assert_eq!(request.payload_type, PayloadType::HandshakeRequest);
        let payload = HandshakeRequestPayload::from_payload(&request.payload).expect("request");
        let (response, _) = handshake::respond(&payload, client_version);
        self.send(
            PayloadType::HandshakeResponse,
            response.to_payload().expect("json"),
        )
        .await;
        let complete = self.expect_stream().await;
        assert_eq!(complete.payload_type, PayloadType::HandshakeComplete);
        assert_eq!(complete.sequence_number, 1);
        assert_eq!(complete.flags, 0);
        payload
    }

    /// Hands the channel to a driver task that carries an smux client over Output messages;
    /// flags and the end of the channel arrive on the returned receiver.
    fn into_mux(mut self) -> (smux::Session, mpsc::UnboundedReceiver<Got>) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let session = smux::Session::client(
            theirs,
            smux::Config {
                keepalive_interval: None,
                keepalive_timeout: None,
                ..smux::Config::default()
            },
        )
        .expect("smux client");
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut from_smux, mut to_smux) = tokio::io::split(ours);
            let mut buf = vec![0u8; 1024];
            loop {
                tokio::select! {
                    got = self.next() => match got {
                        Got::Stream(m) if m.payload_type == PayloadType::Output => {
                            if to_smux.write_all(&m.payload).await.is_err() {
                                return;
                            }
                        }
                        Got::Stream(m) => {
                            let _ = events_tx.send(Got::Stream(m));
                        }
                        end => {
                            let _ = events_tx.send(end);
                            return;
                        }
                    },
                    n = from_smux.read(&mut buf), if self.out.has_room() => match n {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let data = Bytes::copy_from_slice(&buf[..n]);
                            self.send(PayloadType::Output, data).await;
                        }
                    },
                }
            }
        });
        (session, events_rx)
    }
}

async fn echo_through(session: &smux::Session, data: &[u8]) -> Vec<u8> {
    let mut stream = session.open_stream().await.expect("open stream");
    let (mut rx, mut tx) = tokio::io::split(&mut stream);
    let write = async {
        tx.write_all(data).await.expect("write");
    };
    let mut back = vec![0u8; data.len()];
    let read = async {
        rx.read_exact(&mut back).await.expect("read back");
    };
    timeout(GUARD, async { tokio::join!(write, read) })
        .await
        .expect("echo in time");
    back
}

#[tokio::test]
async fn handshake_is_exact_and_mux_echoes_through_the_target() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let (id, token, url) = start_session(&sim, DB_HOST).await;
    assert!(id.starts_with("sim-"));
    assert_eq!(
        url,
        format!(
            "ws://{}/v1/data-channel/{id}?role=publish_subscribe",
            sim.local_addr()
        )
    );
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;

    let request = client.expect_stream().await;
    assert_eq!(request.message_type, message_type::OUTPUT_STREAM_DATA);
    assert_eq!(request.sequence_number, 0);
    assert_eq!(request.flags, header_flags::SYN);
    assert_eq!(request.payload_type, PayloadType::HandshakeRequest);
    let expected = format!(
        r#"{{"AgentVersion":"3.3.987.0","RequestedClientActions":[{{"ActionType":"SessionType","ActionParameters":{{"SessionType":"Port","Properties":{{"host":"{DB_HOST}","localPortNumber":"0","portNumber":"5432","type":"LocalPortForwarding"}}}}}}]}}"#
    );
    assert_eq!(
        std::str::from_utf8(&request.payload).expect("utf8"),
        expected
    );

    let payload = HandshakeRequestPayload::from_payload(&request.payload).expect("request");
    let (response, _) = handshake::respond(&payload, MODERN_CLIENT);
    client
        .send(
            PayloadType::HandshakeResponse,
            response.to_payload().expect("json"),
        )
        .await;
    let complete = client.expect_stream().await;
    assert_eq!(complete.payload_type, PayloadType::HandshakeComplete);
    let complete: handshake::HandshakeCompletePayload =
        serde_json::from_slice(&complete.payload).expect("complete json");
    assert_eq!(complete.customer_message, "");
    assert_eq!(client.acks, vec![0], "the HandshakeResponse is acked");

    let info = sim.session_info(&id).expect("session");
    assert_eq!(info.mux, Some(true));
    assert_eq!(info.agent_keepalive, Some(false));
    assert_eq!(info.client_version.as_deref(), Some(MODERN_CLIENT));

    let (session, _events) = client.into_mux();
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo_through(&session, &data).await, data);
    assert_eq!(
        echo_through(&session, b"second stream").await,
        b"second stream"
    );
    let stats = sim.stats();
    assert_eq!(stat(&stats.streams_opened), 2);
    assert_eq!(stat(&stats.sessions_started), 1);
    assert_eq!(stat(&stats.handshakes_completed), 1);
    assert_eq!(stat(&stats.active_sessions), 1);
}

#[tokio::test]
async fn output_is_capped_per_message() {
    let sim = start_sim(SsmSimOptions {
        payload_cap: 100,
        ..SsmSimOptions::default()
    })
    .await;
    let (_, token, url) = start_session(&sim, DB_HOST).await;
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    client.handshake("0.0.1").await; // basic mode: raw bytes in Output
    let data = vec![7u8; 1000];
    client
        .send(PayloadType::Output, Bytes::from(data.clone()))
        .await;
    let mut back = Vec::new();
    while back.len() < data.len() {
        let message = client.expect_stream().await;
        assert_eq!(message.payload_type, PayloadType::Output);
        assert!(
            message.payload.len() <= 100,
            "{} bytes",
            message.payload.len()
        );
        back.extend_from_slice(&message.payload);
    }
    assert_eq!(back, data);
}

#[tokio::test]
async fn basic_mode_for_old_clients_and_redial_after_disconnect() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let (id, token, url) = start_session(&sim, DB_HOST).await;
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    client.handshake("1.1.69").await;
    let info = sim.session_info(&id).expect("session");
    assert_eq!(info.mux, Some(false));
    for round in 0..2 {
        client
            .send(PayloadType::Output, Bytes::from_static(b"ping"))
            .await;
        let back = client.expect_stream().await;
        assert_eq!(&back.payload[..], b"ping", "round {round}");
        client
            .send(PayloadType::Flag, FlagPayload::DisconnectToPort.encode())
            .await;
    }
    // One dial at handshake, one re-dial after the first DisconnectToPort.
    assert_eq!(stat(&sim.stats().streams_opened), 2);
}

#[tokio::test]
async fn badly_signed_requests_fail_like_aws() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let body = start_body(DB_HOST);
    let wrong_secret = SimCredentials::new(creds().access_key_id, "not-the-secret");
    let (status, reply) = call(&sim, Some(&wrong_secret), "StartSession", &body).await;
    assert_eq!(status, 400);
    assert_eq!(reply["__type"], "InvalidSignatureException");
    assert!(reply["message"].is_string());

    let unknown_key = SimCredentials::new("AKIAUNKNOWN000000000", creds().secret_access_key);
    let (status, reply) = call(&sim, Some(&unknown_key), "StartSession", &body).await;
    assert_eq!(status, 400);
    assert_eq!(reply["__type"], "UnrecognizedClientException");

    let (status, reply) = call(&sim, None, "StartSession", &body).await;
    assert_eq!(status, 400);
    assert_eq!(reply["__type"], "MissingAuthenticationTokenException");
    assert_eq!(stat(&sim.stats().sessions_started), 0);
}

#[tokio::test]
async fn unknown_target_is_not_connected() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let mut body = start_body(DB_HOST);
    body["Target"] = json!("i-0fffffffffffffff0");
    let (status, reply) = call(&sim, Some(&creds()), "StartSession", &body).await;
    assert_eq!(status, 400);
    assert_eq!(reply["__type"], "TargetNotConnected");
    assert_eq!(reply["message"], "i-0fffffffffffffff0 is not connected.");
}

#[tokio::test]
async fn wrong_document_is_invalid() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let mut body = start_body(DB_HOST);
    body["DocumentName"] = json!("AWS-StartSSHSession");
    let (status, reply) = call(&sim, Some(&creds()), "StartSession", &body).await;
    assert_eq!(status, 400);
    assert_eq!(reply["__type"], "InvalidDocument");
    body.as_object_mut().expect("object").remove("DocumentName");
    let (_, reply) = call(&sim, Some(&creds()), "StartSession", &body).await;
    assert_eq!(
        reply["__type"], "InvalidDocument",
        "the default shell document"
    );
}

#[tokio::test]
async fn unmapped_host_gives_connect_to_port_error_and_fin() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let (_, token, url) = start_session(&sim, "nowhere.example").await;
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    client.handshake(MODERN_CLIENT).await;
    let (session, mut events) = client.into_mux();
    let mut stream = session.open_stream().await.expect("open");
    let got = timeout(GUARD, events.recv())
        .await
        .expect("in time")
        .expect("event");
    let Got::Stream(flag) = got else {
        panic!("expected a flag, got {got:?}")
    };
    assert_eq!(flag.payload_type, PayloadType::Flag);
    assert_eq!(
        FlagPayload::decode(&flag.payload).expect("flag"),
        FlagPayload::ConnectToPortError
    );
    let mut buf = [0u8; 1];
    let n = timeout(GUARD, stream.read(&mut buf))
        .await
        .expect("in time");
    assert_eq!(n.expect("clean EOF"), 0, "the stream is closed with FIN");
    assert!(!stream.received_any_data());
    assert_eq!(stat(&sim.stats().connect_errors), 1);
}

#[tokio::test]
async fn terminate_flag_ends_the_session() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let (id, token, url) = start_session(&sim, DB_HOST).await;
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    client.handshake(MODERN_CLIENT).await;
    let (seq, _) = client
        .send(PayloadType::Flag, FlagPayload::TerminateSession.encode())
        .await;
    let closed = client.expect_closed().await;
    assert!(client.acks.contains(&seq), "the flag is acked first");
    assert_eq!(closed.session_id.as_deref(), Some(id.as_str()));
    let stats = sim.stats();
    assert_eq!(stat(&stats.terminate_flags), 1);
    assert_eq!(stat(&stats.active_sessions), 0);
    assert_eq!(stat(&stats.sessions_ended), 1);
    // A session that is over cannot be resumed.
    let (_, reply) = call(
        &sim,
        Some(&creds()),
        "ResumeSession",
        &json!({"SessionId": id}),
    )
    .await;
    assert!(reply.get("TokenValue").is_none());
}

#[tokio::test]
async fn terminate_api_ends_the_session_and_is_idempotent() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let (id, token, url) = start_session(&sim, DB_HOST).await;
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    client.handshake(MODERN_CLIENT).await;
    for _ in 0..2 {
        let (status, reply) = call(
            &sim,
            Some(&creds()),
            "TerminateSession",
            &json!({"SessionId": id}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(reply, json!({"SessionId": id}));
    }
    let closed = client.expect_closed().await;
    assert_eq!(closed.message_type.as_deref(), Some("channel_closed"));
    let stats = sim.stats();
    assert_eq!(stat(&stats.terminate_api_calls), 2);
    assert_eq!(stat(&stats.active_sessions), 0);
    let (status, reply) = call(
        &sim,
        Some(&creds()),
        "TerminateSession",
        &json!({"SessionId": "sim-doesnotexist"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(reply["__type"], "DoesNotExistException");
}

#[tokio::test]
async fn idle_timeout_sends_the_aws_reason() {
    let sim = start_sim(SsmSimOptions {
        idle_timeout: Some(Duration::from_millis(300)),
        ..SsmSimOptions::default()
    })
    .await;
    let (id, token, url) = start_session(&sim, DB_HOST).await;
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    client.handshake(MODERN_CLIENT).await;
    let closed = client.expect_closed().await;
    assert_eq!(closed.reason(), Some(IDLE_TIMEOUT_TEXT));
    assert_eq!(stat(&sim.stats().idle_timeouts), 1);
    assert_eq!(
        sim.session_info(&id).expect("session").ended.as_deref(),
        Some(IDLE_TIMEOUT_TEXT)
    );
}

#[tokio::test]
async fn resume_continues_the_sequence_and_refusal_gives_no_token() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let (id, token, url) = start_session(&sim, DB_HOST).await;
    let client_id = Uuid::new_v4();

    // First connection: read the HandshakeRequest but never ack it, then drop the socket.
    let first = {
        let mut client = Client::connect(&url, &token, client_id).await;
        let frame = match timeout(GUARD, client.ws.next()).await.expect("in time") {
            Some(Ok(Message::Binary(frame))) => frame,
            other => panic!("expected the HandshakeRequest, got {other:?}"),
        };
        ClientMessage::decode_bytes(&frame).expect("decodes")
    };
    // The used token does not open a second connection.
    let (_, resumed) = call(
        &sim,
        Some(&creds()),
        "ResumeSession",
        &json!({"SessionId": id}),
    )
    .await;
    let new_token = resumed["TokenValue"].as_str().expect("token").to_owned();
    assert_ne!(new_token, token);
    assert_eq!(resumed["StreamUrl"].as_str(), Some(url.as_str()));
    let mut client = Client::connect(&url, &new_token, client_id).await;
    let replayed = client.expect_stream().await;
    assert_eq!(replayed.sequence_number, 0);
    assert_eq!(
        replayed.message_id, first.message_id,
        "the same message, replayed"
    );
    assert_eq!(stat(&sim.stats().sessions_resumed), 1);
    assert_eq!(
        sim.session_info(&id).expect("session").client_id,
        Some(client_id.hyphenated().to_string())
    );

    sim.options().update(|o| o.refuse_resume = true);
    let (status, refused) = call(
        &sim,
        Some(&creds()),
        "ResumeSession",
        &json!({"SessionId": id}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(refused["TokenValue"]
        .as_str()
        .unwrap_or_default()
        .is_empty());
    assert_eq!(stat(&sim.stats().resume_refused), 1);

    let (status, unknown) = call(
        &sim,
        Some(&creds()),
        "ResumeSession",
        &json!({"SessionId": "sim-nosuchsession"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(unknown["__type"], "DoesNotExistException");
}

#[tokio::test]
async fn a_used_or_wrong_token_is_refused() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let (_, token, url) = start_session(&sim, DB_HOST).await;
    let _first = Client::connect(&url, &token, Uuid::new_v4()).await;
    for bad in [token.as_str(), "not-a-token"] {
        let mut client = Client::connect(&url, bad, Uuid::new_v4()).await;
        let got = timeout(GUARD, client.next()).await.expect("in time");
        assert!(matches!(got, Got::WsClosed), "got {got:?}");
    }
}

#[tokio::test]
async fn duplicates_are_acked_again() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let (_, token, url) = start_session(&sim, DB_HOST).await;
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    client.handshake("0.0.1").await;
    let (seq, frame) = client
        .send(PayloadType::Output, Bytes::from_static(b"once"))
        .await;
    let echo = client.expect_stream().await;
    assert_eq!(&echo.payload[..], b"once");
    // The same frame again: acked a second time, not delivered again.
    client
        .ws
        .send(Message::Binary(frame))
        .await
        .expect("resend");
    client
        .send(PayloadType::Output, Bytes::from_static(b"twice"))
        .await;
    let echo = client.expect_stream().await;
    assert_eq!(
        &echo.payload[..],
        b"twice",
        "the duplicate was not forwarded"
    );
    assert!(client.acks.iter().filter(|&&a| a == seq).count() >= 2);
    assert!(stat(&sim.stats().duplicates_reacked) >= 1);
}

#[tokio::test]
async fn data_survives_drops_duplicates_and_reordering() {
    let sim = start_sim(SsmSimOptions {
        drop_rate: 0.05,
        duplicate_rate: 0.05,
        reorder_rate: 0.05,
        seed: 7,
        ..SsmSimOptions::default()
    })
    .await;
    let (_, token, url) = start_session(&sim, DB_HOST).await;
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    client.handshake(MODERN_CLIENT).await;
    let (session, _events) = client.into_mux();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
    assert_eq!(echo_through(&session, &data).await, data);
    let stats = sim.stats();
    assert!(stat(&stats.messages_dropped) > 0);
    assert!(stat(&stats.messages_duplicated) > 0);
    assert!(stat(&stats.messages_reordered) > 0);
}

#[tokio::test]
async fn kill_knob_resets_the_websocket_and_bye_closes_it() {
    let sim = start_sim(SsmSimOptions {
        kill_ws_after_messages: Some(1),
        ..SsmSimOptions::default()
    })
    .await;
    let (id, token, url) = start_session(&sim, DB_HOST).await;
    let client_id = Uuid::new_v4();
    let mut client = Client::connect(&url, &token, client_id).await;
    // The HandshakeRequest was queued before the connection and is only replayed on it, so
    // the first new message is our HandshakeResponse; then the socket dies without a close.
    let request = client.expect_stream().await;
    let payload = HandshakeRequestPayload::from_payload(&request.payload).expect("request");
    let (response, _) = handshake::respond(&payload, MODERN_CLIENT);
    client
        .send(
            PayloadType::HandshakeResponse,
            response.to_payload().expect("json"),
        )
        .await;
    let got = timeout(GUARD, client.next()).await.expect("in time");
    assert!(matches!(got, Got::WsClosed), "got {got:?}");
    assert_eq!(stat(&sim.stats().ws_killed), 1);

    // Resumed, the session carries on where it was: HandshakeComplete (seq 1) arrives.
    sim.options().update(|o| o.kill_ws_after_messages = None);
    let (_, resumed) = call(
        &sim,
        Some(&creds()),
        "ResumeSession",
        &json!({"SessionId": id}),
    )
    .await;
    let token = resumed["TokenValue"].as_str().expect("token");
    client.reconnect(&url, token, client_id).await;
    let complete = client.expect_stream().await;
    assert_eq!(complete.sequence_number, 1);
    assert_eq!(complete.payload_type, PayloadType::HandshakeComplete);

    sim.options()
        .update(|o| o.bye_after = Some(Duration::from_millis(50)));
    let (_, token, url) = start_session(&sim, DB_HOST).await;
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    let close = loop {
        match timeout(GUARD, client.ws.next()).await.expect("in time") {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("close frame");
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(close.reason.as_str(), "Bye");
    assert!(
        stat(&sim.stats().ws_byes) >= 1,
        "every open WebSocket gets its Bye"
    );
}

/// Polls a simulator counter until `cond` holds, failing after [`GUARD`]. The counters move on
/// the simulator's own tasks; this waits on them rather than on time.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads raw frames until the connection ends; returns how it ended.
async fn raw_end(ws: &mut WebSocketStream<TcpStream>) -> Option<Result<Message, String>> {
    loop {
        match timeout(GUARD, ws.next()).await.expect("in time") {
            Some(Ok(Message::Binary(_))) => continue,
            Some(Ok(other)) => return Some(Ok(other)),
            Some(Err(e)) => return Some(Err(e.to_string())),
            None => return None,
        }
    }
}

/// A basic-mode client (raw bytes in Output, echoed by the target) after its handshake.
async fn basic_client(sim: &SsmSim) -> (String, String, Client, Uuid) {
    let (id, token, url) = start_session(sim, DB_HOST).await;
    let client_id = Uuid::new_v4();
    let mut client = Client::connect(&url, &token, client_id).await;
    client.handshake("0.0.1").await;
    (id, url, client, client_id)
}

/// Collects echoed Output until `len` bytes came back.
async fn echoed(client: &mut Client, len: usize) -> Vec<u8> {
    let mut back = Vec::new();
    while back.len() < len {
        let message = client.expect_stream().await;
        assert_eq!(message.payload_type, PayloadType::Output);
        back.extend_from_slice(&message.payload);
    }
    back
}

#[test]
fn aws_limits_preset_sets_its_five_knobs_only() {
    let limits = SsmSimOptions::aws_limits();
    assert_eq!(limits.payload_cap, 1024);
    assert_eq!(limits.pacing, Some(Duration::from_millis(1)));
    assert_eq!(limits.client_rate_limit, Some(1000));
    assert!(limits.resend_front_only);
    assert_eq!(limits.early_input_window, Some(Duration::from_millis(5)));
    let rest = SsmSimOptions {
        payload_cap: limits.payload_cap,
        pacing: limits.pacing,
        client_rate_limit: limits.client_rate_limit,
        resend_front_only: true,
        early_input_window: limits.early_input_window,
        ..SsmSimOptions::default()
    };
    assert_eq!(limits, rest, "nothing else changes");
}

#[test]
fn real_network_preset_is_25ms_each_way_and_the_early_input_window() {
    let network = SsmSimOptions::real_network();
    assert_eq!(network.latency, Some(Duration::from_millis(25)));
    assert_eq!(network.early_input_window, Some(Duration::from_millis(5)));
    let rest = SsmSimOptions {
        latency: network.latency,
        early_input_window: network.early_input_window,
        ..SsmSimOptions::default()
    };
    assert_eq!(network, rest, "nothing else changes");
    let both = SsmSimOptions::aws_limits().with_real_network();
    assert_eq!(both.latency, network.latency);
    assert_eq!(both.pacing, SsmSimOptions::aws_limits().pacing);
}

#[tokio::test]
async fn a_client_above_the_rate_limit_is_reset_and_can_resume() {
    let sim = start_sim(SsmSimOptions {
        client_rate_limit: Some(50),
        ..SsmSimOptions::default()
    })
    .await;
    let (id, url, mut client, client_id) = basic_client(&sim).await;
    // HandshakeResponse + 60 Outputs back to back: the 51st data message within a second
    // is one too many.
    let sent: Vec<u8> = (0..60u32)
        .flat_map(|i| format!("{i:04}").into_bytes())
        .collect();
    for chunk in sent.chunks(4) {
        client
            .send(PayloadType::Output, Bytes::copy_from_slice(chunk))
            .await;
    }
    // Abrupt: a TCP reset, never a close frame.
    match raw_end(&mut client.ws).await {
        Some(Err(e)) => assert!(e.to_lowercase().contains("reset"), "{e}"),
        other => panic!("expected a connection reset, got {other:?}"),
    }
    let stats = sim.stats();
    assert_eq!(stat(&stats.rate_limit_cuts), 1);
    assert_eq!(stat(&stats.peak_client_msgs_per_sec), 51);
    assert_eq!(
        stat(&stats.ws_killed),
        0,
        "counted as a rate-limit cut only"
    );
    assert!(sim.session_info(&id).expect("session").ended.is_none());

    // The session is intact: resume, replay what was not acked, get every byte back once.
    sim.options().update(|o| o.client_rate_limit = None);
    let (_, resumed) = call(
        &sim,
        Some(&creds()),
        "ResumeSession",
        &json!({"SessionId": id}),
    )
    .await;
    let token = resumed["TokenValue"].as_str().expect("token");
    client.reconnect(&url, token, client_id).await;
    assert_eq!(echoed(&mut client, sent.len()).await, sent);
    assert_eq!(stat(&stats.rate_limit_cuts), 1);
}

#[tokio::test]
async fn a_client_at_the_rate_limit_is_not_cut() {
    let sim = start_sim(SsmSimOptions {
        client_rate_limit: Some(50),
        ..SsmSimOptions::default()
    })
    .await;
    let (_, _, mut client, _) = basic_client(&sim).await;
    // HandshakeResponse + 49 Outputs: exactly 50 in the window, which is allowed.
    let sent: Vec<u8> = (0..49u32)
        .flat_map(|i| format!("{i:04}").into_bytes())
        .collect();
    for chunk in sent.chunks(4) {
        client
            .send(PayloadType::Output, Bytes::copy_from_slice(chunk))
            .await;
    }
    assert_eq!(echoed(&mut client, sent.len()).await, sent);
    let stats = sim.stats();
    assert_eq!(stat(&stats.rate_limit_cuts), 0);
    assert_eq!(stat(&stats.peak_client_msgs_per_sec), 50);
    assert_eq!(stat(&stats.client_data_messages), 50);
    // Acks are not data: the client's acks for 49 echoes did not count.
    assert!(client.acks.len() >= 50);
}

#[tokio::test]
async fn a_client_paced_under_the_limit_keeps_its_websocket() {
    let sim = start_sim(SsmSimOptions {
        client_rate_limit: Some(40),
        ..SsmSimOptions::default()
    })
    .await;
    let (_, _, mut client, _) = basic_client(&sim).await;
    // 60 messages at 25/s: more than the limit in total, never more than it per second.
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    // A late tick must not turn into a catch-up burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sent: Vec<u8> = (0..60u32)
        .flat_map(|i| format!("{i:04}").into_bytes())
        .collect();
    // Each echo is read (and the acks with it) before the next send, so the test client's
    // resends — unpaced, all overdue messages at once — never come into play.
    let mut back = Vec::new();
    for chunk in sent.chunks(4) {
        tick.tick().await;
        client
            .send(PayloadType::Output, Bytes::copy_from_slice(chunk))
            .await;
        back.extend(echoed(&mut client, chunk.len()).await);
    }
    assert_eq!(back, sent);
    let stats = sim.stats();
    assert_eq!(stat(&stats.rate_limit_cuts), 0);
    assert_eq!(stat(&stats.ws_connections), 1);
    let peak = stat(&stats.peak_client_msgs_per_sec);
    // The upper bound is the point. The lower one only shows the pacing was measured at all: a
    // loaded machine sends fewer than 25 in some second (19/s was seen), so it sits well below.
    assert!((10..=40).contains(&peak), "peak {peak}/s");
}

#[tokio::test]
async fn hold_acks_withholds_acks_but_still_delivers() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let (_, _, mut client, _) = basic_client(&sim).await;
    sim.options().update(|o| o.hold_acks = true);
    let (seq, frame) = client
        .send(PayloadType::Output, Bytes::from_static(b"held"))
        .await;
    let echo = client.expect_stream().await;
    assert_eq!(&echo.payload[..], b"held", "processed while acks are held");
    assert!(!client.acks.contains(&seq), "acks {:?}", client.acks);
    assert!(stat(&sim.stats().acks_held) >= 1);

    // Off again: a resend of the unacked message is acked (as a duplicate), not redelivered.
    sim.options().update(|o| o.hold_acks = false);
    client
        .ws
        .send(Message::Binary(frame))
        .await
        .expect("resend");
    client
        .send(PayloadType::Output, Bytes::from_static(b"next"))
        .await;
    let echo = client.expect_stream().await;
    assert_eq!(
        &echo.payload[..],
        b"next",
        "the resend was not delivered twice"
    );
    assert!(client.acks.contains(&seq), "acks {:?}", client.acks);
    assert!(stat(&sim.stats().duplicates_reacked) >= 1);
}

#[tokio::test]
async fn stop_reading_stalls_client_writes_until_turned_off() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let stats = sim.stats();
    let (_, _, mut client, _) = basic_client(&sim).await;
    sim.options().update(|o| o.stop_reading = true);
    wait_until("the gateway to stop reading", || {
        stat(&stats.reads_stopped) == 1
    })
    .await;
    let before = stat(&stats.client_data_messages);
    // Write 32 KiB messages until one cannot be written: the socket buffers are full.
    let payload = Bytes::from(vec![b'x'; 32 * 1024]);
    let mut written = 0u64;
    let stalled = loop {
        assert!(written < 4096, "128 MiB written without a stall");
        match timeout(
            Duration::from_millis(500),
            client.send(PayloadType::Output, payload.clone()),
        )
        .await
        {
            Ok(_) => written += 1,
            Err(_) => break true,
        }
    };
    assert!(stalled);
    assert_eq!(
        stat(&stats.client_data_messages),
        before,
        "nothing was read while stopped"
    );

    // Reading again: the stalled write completes and every message reaches the agent.
    sim.options().update(|o| o.stop_reading = false);
    timeout(GUARD, client.ws.flush())
        .await
        .expect("the write completes once reading resumes")
        .expect("flush");
    wait_until("every message to be read", || {
        stat(&stats.client_data_messages) == before + written + 1
    })
    .await;
}

#[tokio::test]
async fn stop_reading_spares_connections_opened_while_it_is_on() {
    let sim = start_sim(SsmSimOptions {
        stop_reading: true,
        ..SsmSimOptions::default()
    })
    .await;
    let (_, _, mut client, _) = basic_client(&sim).await;
    client
        .send(PayloadType::Output, Bytes::from_static(b"read"))
        .await;
    assert_eq!(&client.expect_stream().await.payload[..], b"read");
    assert_eq!(stat(&sim.stats().reads_stopped), 0);
}

#[tokio::test]
async fn hang_upgrade_leaves_the_websocket_unanswered() {
    let sim = start_sim(SsmSimOptions {
        hang_upgrade: true,
        ..SsmSimOptions::default()
    })
    .await;
    let (_, token, url) = start_session(&sim, DB_HOST).await;
    let tcp = TcpStream::connect(sim.local_addr()).await.expect("tcp");
    let upgrade = tokio_tungstenite::client_async(url.as_str(), tcp);
    assert!(
        timeout(Duration::from_millis(500), upgrade).await.is_err(),
        "no upgrade answer"
    );
    let stats = sim.stats();
    assert_eq!(stat(&stats.upgrades_hung), 1);
    assert_eq!(stat(&stats.ws_connections), 0);
    assert_eq!(stats.open_sessions(), 1, "the session itself is open");

    sim.options().update(|o| o.hang_upgrade = false);
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    client.handshake(MODERN_CLIENT).await;
}

#[tokio::test]
async fn hang_handshake_holds_the_request_until_turned_off() {
    let sim = start_sim(SsmSimOptions {
        hang_handshake: true,
        ..SsmSimOptions::default()
    })
    .await;
    let (_, token, url) = start_session(&sim, DB_HOST).await;
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    assert!(
        timeout(Duration::from_millis(500), client.ws.next())
            .await
            .is_err(),
        "no HandshakeRequest while the knob is on"
    );
    sim.options().update(|o| o.hang_handshake = false);
    let request = client.handshake(MODERN_CLIENT).await;
    assert_eq!(request.agent_version, "3.3.987.0");
}

#[tokio::test]
async fn refuse_start_fails_like_aws() {
    let sim = start_sim(SsmSimOptions {
        refuse_start: Some("AccessDeniedException".to_owned()),
        ..SsmSimOptions::default()
    })
    .await;
    let (status, reply) = call(&sim, Some(&creds()), "StartSession", &start_body(DB_HOST)).await;
    assert_eq!(status, 400);
    assert_eq!(reply["__type"], "AccessDeniedException");
    assert_eq!(
        reply["message"],
        format!(
            "User: arn:aws:iam::123456789012:user/sim-user is not authorized to perform: \
             ssm:StartSession on resource: arn:aws:ec2:{REGION}:123456789012:instance/\
             {SIM_TARGET_ID} because no identity-based policy allows the ssm:StartSession action"
        )
    );
    sim.options()
        .update(|o| o.refuse_start = Some("ThrottlingException".to_owned()));
    let (_, reply) = call(&sim, Some(&creds()), "StartSession", &start_body(DB_HOST)).await;
    assert_eq!(reply["__type"], "ThrottlingException");
    assert_eq!(reply["message"], "Rate exceeded");
    let stats = sim.stats();
    assert_eq!(stat(&stats.starts_refused), 2);
    assert_eq!(stat(&stats.sessions_started), 0);
    assert_eq!(stats.open_sessions(), 0);
}

#[tokio::test]
async fn open_sessions_count_from_start_to_terminate() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let stats = sim.stats();
    // Never connected: open all the same.
    let (id, _, _) = start_session(&sim, DB_HOST).await;
    stats
        .wait_for_open_sessions(1, GUARD)
        .await
        .expect("one open");
    let (status, _) = call(
        &sim,
        Some(&creds()),
        "TerminateSession",
        &json!({"SessionId": id}),
    )
    .await;
    assert_eq!(status, 200);
    // TerminateSession returns once the session has ended.
    assert_eq!(stats.open_sessions(), 0);
    assert_eq!(
        stats
            .wait_for_open_sessions(1, Duration::from_millis(100))
            .await,
        Err(0),
        "the wait reports the count it ended with"
    );
}

#[tokio::test]
async fn a_session_never_connected_ends_after_the_agents_handshake_timeout() {
    let sim = start_sim(SsmSimOptions::default()).await;
    let started = Instant::now();
    let (id, _, _) = start_session(&sim, DB_HOST).await;
    let stats = sim.stats();
    assert_eq!(stats.open_sessions(), 1);
    stats
        .wait_for_open_sessions(0, Duration::from_secs(25))
        .await
        .expect("the agent gives up");
    assert!(
        started.elapsed() >= Duration::from_secs(15),
        "not before 15 s"
    );
    assert_eq!(stat(&stats.handshake_timeouts), 1);
    let ended = sim.session_info(&id).expect("session").ended;
    assert!(
        ended
            .as_deref()
            .is_some_and(|t| t.starts_with("Handshake timed out")),
        "{ended:?}"
    );
}

/// Output sequence numbers the agent sends within `window` while nobody acks them.
async fn unacked_outputs(client: &mut Client, window: Duration) -> Vec<i64> {
    let deadline = Instant::now() + window;
    let mut seqs = Vec::new();
    loop {
        tokio::select! {
            frame = client.ws.next() => {
                let Some(Ok(Message::Binary(frame))) = frame else { continue };
                let message = ClientMessage::decode_bytes(&frame).expect("agent frame decodes");
                if message.message_type == message_type::OUTPUT_STREAM_DATA {
                    seqs.push(message.sequence_number);
                }
            }
            () = sleep_until(deadline) => return seqs,
        }
    }
}

#[tokio::test]
async fn front_only_resends_one_oldest_message_per_tick_like_the_agent() {
    for front_only in [true, false] {
        let sim = start_sim(SsmSimOptions {
            resend_front_only: front_only,
            ..SsmSimOptions::default()
        })
        .await;
        let (_, _, mut client, _) = basic_client(&sim).await;
        // 5000 bytes echo back as at least five 1024-byte Output messages, none of them acked.
        client.send(PayloadType::Output, Bytes::from(vec![b'r'; 5000])).await;
        let seqs = unacked_outputs(&mut client, Duration::from_millis(1200)).await;
        let mut fresh = seqs.clone();
        fresh.sort_unstable();
        fresh.dedup();
        assert!(fresh.len() >= 5, "{seqs:?}");
        let resends: Vec<i64> = seqs[fresh.len()..].to_vec();
        assert!(!resends.is_empty(), "unacked output is resent");
        if front_only {
            assert!(resends.iter().all(|s| *s == fresh[0]), "only the oldest: {resends:?}");
            assert!(resends.len() <= 12, "at most one per 100 ms tick: {resends:?}");
        } else {
            let distinct: std::collections::BTreeSet<_> = resends.iter().collect();
            assert!(distinct.len() >= 5, "every overdue message: {resends:?}");
        }
    }
}

/// Sequence numbers in the order they first appear in `seqs`, which must be consecutive from
/// `from`: a frame that overtook the one ahead of it shows up as a gap filled later.
fn assert_first_seen_in_order(seqs: &[i64], from: i64, what: &str) {
    let mut next = from;
    for &seq in seqs {
        if seq >= next {
            assert_eq!(seq, next, "{what} out of order: {seqs:?}");
            next += 1;
        }
    }
}

#[tokio::test]
async fn latency_delays_every_exchange_each_way_and_keeps_frames_in_order() {
    const LATENCY: Duration = Duration::from_millis(30);
    const RTT: Duration = Duration::from_millis(60);
    let sim = start_sim(SsmSimOptions {
        latency: Some(LATENCY),
        // Up to 2/3 of the latency at random per frame: without the FIFO rule, frames sent
        // back to back would overtake each other all the time.
        jitter: Some(Duration::from_millis(20)),
        ..SsmSimOptions::default()
    })
    .await;
    // An API call on a new connection: TCP, TLS 1.3 and the request itself, 3 round trips.
    let started = Instant::now();
    let (_, token, url) = start_session(&sim, DB_HOST).await;
    assert!(started.elapsed() >= 3 * RTT, "StartSession after {:?}", started.elapsed());
    // The WebSocket upgrade, a new connection too: 3 round trips.
    let started = Instant::now();
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    assert!(started.elapsed() >= 3 * RTT, "upgrade after {:?}", started.elapsed());
    // OpenDataChannel reaches the agent one way later, its HandshakeRequest comes back one
    // way later.
    let started = Instant::now();
    let request = client.expect_stream().await;
    assert_eq!(request.payload_type, PayloadType::HandshakeRequest);
    assert!(started.elapsed() >= RTT, "HandshakeRequest after {:?}", started.elapsed());
    let payload = HandshakeRequestPayload::from_payload(&request.payload).expect("request");
    let (response, _) = handshake::respond(&payload, "0.0.1"); // basic mode: raw echo
    let started = Instant::now();
    client
        .send(PayloadType::HandshakeResponse, response.to_payload().expect("json"))
        .await;
    let complete = client.expect_stream().await;
    assert_eq!(complete.payload_type, PayloadType::HandshakeComplete);
    assert!(started.elapsed() >= RTT, "HandshakeComplete after {:?}", started.elapsed());

    // 40 messages back to back, each way through the jittery path.
    let started = Instant::now();
    let mut sent = Vec::new();
    for i in 0..40u8 {
        let data = vec![b'a' + i % 26; 100];
        sent.extend_from_slice(&data);
        client.send(PayloadType::Output, Bytes::from(data)).await;
    }
    let first = client.expect_stream().await;
    assert!(started.elapsed() >= RTT, "first echo after {:?}", started.elapsed());
    let mut back = first.payload.to_vec();
    back.extend(echoed(&mut client, sent.len() - back.len()).await);
    assert_eq!(back, sent);
    // The agent acks in the order client frames reach it; the acks come back in the order
    // it sent them: both directions kept their order.
    assert_first_seen_in_order(&client.acks, 0, "client → agent frames");
    assert!(client.acks.len() >= 41, "acks {:?}", client.acks);
}

#[tokio::test]
async fn agent_frames_keep_their_order_under_jitter() {
    let sim = start_sim(SsmSimOptions {
        latency: Some(Duration::from_millis(10)),
        jitter: Some(Duration::from_millis(30)),
        ..SsmSimOptions::default()
    })
    .await;
    let (_, _, mut client, _) = basic_client(&sim).await;
    // 20 000 bytes echo back as at least twenty 1024-byte Output messages, sent back to back.
    client.send(PayloadType::Output, Bytes::from(vec![b'j'; 20_000])).await;
    let seqs = unacked_outputs(&mut client, Duration::from_millis(600)).await;
    assert!(seqs.len() >= 20, "{seqs:?}");
    // Output numbering starts at 2 (HandshakeRequest 0, HandshakeComplete 1).
    assert_first_seen_in_order(&seqs, 2, "agent → client frames");
}

#[tokio::test]
async fn early_input_is_dropped_unacked_until_the_window_closes() {
    let sim = start_sim(SsmSimOptions {
        // Far longer than AWS's 5 ms, so the test controls when the window closes.
        early_input_window: Some(Duration::from_secs(600)),
        ..SsmSimOptions::default()
    })
    .await;
    let stats = sim.stats();
    let (id, _, mut client, _) = basic_client(&sim).await;
    let (seq, frame) = client
        .send(PayloadType::Output, Bytes::from_static(b"early"))
        .await;
    // Every resend below is by hand: the client's own timer must not add copies.
    client.out.on_ack(seq, Instant::now());
    wait_until("the early input is dropped", || stat(&stats.early_input_dropped) == 1).await;
    // The same message again: dropped again, so the first was neither consumed nor did it
    // advance the sequence (a consumed one would now be a re-acked duplicate).
    client.ws.send(Message::Binary(frame.clone())).await.expect("resend");
    wait_until("the resend is dropped too", || stat(&stats.early_input_dropped) == 2).await;
    assert_eq!(stat(&stats.duplicates_reacked), 0);

    sim.options().update(|o| o.early_input_window = None);
    client.ws.send(Message::Binary(frame)).await.expect("resend");
    let echo = client.expect_stream().await;
    assert_eq!(&echo.payload[..], b"early");
    assert_eq!(
        client.acks,
        vec![0, seq],
        "no ack for the dropped copies; one for the delivered one"
    );
    let flights = sim.stream_flights();
    assert_eq!(flights.len(), 1, "{flights:?}");
    assert_eq!(flights[0].session_id, id);
    assert_eq!(flights[0].bytes_in, 5, "delivered once: {flights:?}");
    assert_eq!(stat(&stats.early_input_dropped), 2);
}

#[tokio::test]
async fn flights_count_what_waited_for_an_answer_and_not_resends() {
    let sim = start_sim(SsmSimOptions {
        drop_rate: 0.2,
        duplicate_rate: 0.1,
        seed: 17,
        ..SsmSimOptions::default()
    })
    .await;
    let (id, token, url) = start_session(&sim, DB_HOST).await;
    let mut client = Client::connect(&url, &token, Uuid::new_v4()).await;
    client.handshake(MODERN_CLIENT).await;
    let (session, _events) = client.into_mux();
    let mut stream = session.open_stream().await.expect("open stream");
    let mut sent = 0;
    for round in 0..6u8 {
        // Two writes before any answer: one flight; then wait for the whole echo.
        let data = [vec![round; 300], vec![round + 100; 300]];
        for part in &data {
            stream.write_all(part).await.expect("write");
            sent += part.len();
        }
        let mut back = vec![0u8; 600];
        timeout(GUARD, stream.read_exact(&mut back)).await.expect("in time").expect("read");
        assert_eq!(back, data.concat());
    }
    let faults = stat(&sim.stats().messages_dropped) + stat(&sim.stats().messages_duplicated);
    assert!(faults > 0, "the seed gives some drops and duplicates");
    let flights = sim.stream_flights();
    assert_eq!(flights.len(), 1, "{flights:?}");
    let stream_flights = &flights[0];
    assert_eq!(stream_flights.session_id, id);
    assert_eq!(stream_flights.stream_id, stream.id());
    assert_eq!(stream_flights.client_flights, 6, "{stream_flights:?}");
    assert_eq!(stream_flights.bytes_in, u64::try_from(sent).unwrap());
    assert_eq!(stream_flights.bytes_out, u64::try_from(sent).unwrap());
    assert!(!stream_flights.ended);
    drop(stream);
    wait_until("the stream's end is seen", || sim.stream_flights()[0].ended).await;
}
