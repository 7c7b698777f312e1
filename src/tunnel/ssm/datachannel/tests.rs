//! Data channel behaviour against a scripted fake agent over an in-memory WebSocket.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::*;
use crate::tunnel::ssm::message::FlagPayload;
use crate::tunnel::ssm::testing::{FakeAgent, FakeConnector, FakeControl, HANDSHAKE_REQUEST};

struct Setup {
    connector: Arc<FakeConnector>,
    accepted: mpsc::UnboundedReceiver<DuplexStream>,
    control: Arc<FakeControl>,
    config: Arc<Config>,
}

fn setup() -> Setup {
    let (connector, accepted) = FakeConnector::new();
    Setup {
        connector,
        accepted,
        control: Arc::new(FakeControl::default()),
        config: Arc::new(Config::default()),
    }
}

impl Setup {
    fn open(&self, token: &str) -> JoinHandle<Result<Opened, DataChannelError>> {
        tokio::spawn(open(
            FakeControl::grant("s-1", token),
            self.config.clone(),
            self.connector.clone(),
            self.control.clone(),
        ))
    }

    async fn agent(&mut self) -> FakeAgent {
        FakeAgent::accept(self.accepted.recv().await.expect("a connection")).await
    }

    /// Opens and completes the handshake; returns the channel, its pipe, the agent and the
    /// agent's next seq.
    async fn ready(&mut self) -> (Opened, FakeAgent, i64) {
        let opening = self.open("token-1");
        let mut agent = self.agent().await;
        let next = agent.handshake(HANDSHAKE_REQUEST).await;
        let opened = opening.await.unwrap().expect("open");
        (opened, agent, next)
    }
}

#[tokio::test]
async fn open_frame_and_handshake_bytes() {
    let mut s = setup();
    let opening = s.open("token-1");
    let mut agent = s.agent().await;
    // Field order is the plugin's (§1.2).
    let json = serde_json::to_string(&agent.open).unwrap();
    assert!(
        json.starts_with(r#"{"MessageSchemaVersion":"1.0","RequestId":""#),
        "{json}"
    );
    assert_eq!(agent.open.token_value, "token-1");
    assert_eq!(agent.open.client_version, CLIENT_VERSION);

    agent
        .send_stream(
            0,
            PayloadType::HandshakeRequest,
            HANDSHAKE_REQUEST.as_bytes().to_vec(),
        )
        .await;
    // The ack comes first, then the response as our seq 0 with flags 0.
    assert_eq!(agent.recv_ack().await, 0);
    let response = agent.recv_stream().await;
    assert_eq!(
        (
            response.message_type.as_str(),
            response.sequence_number,
            response.flags
        ),
        ("input_stream_data", 0, 0)
    );
    let v: serde_json::Value = serde_json::from_slice(&response.payload).unwrap();
    assert_eq!(v["ClientVersion"], CLIENT_VERSION);
    assert_eq!(v["ProcessedClientActions"][0]["ActionStatus"], 1);
    assert_eq!(v["Errors"], serde_json::Value::Null);
    agent.ack(&response).await;
    agent
        .send_stream(
            1,
            PayloadType::HandshakeComplete,
            &br#"{"HandshakeTimeToComplete":5,"CustomerMessage":"hi"}"#[..],
        )
        .await;
    assert_eq!(agent.recv_ack().await, 1);
    let opened = opening.await.unwrap().unwrap();
    assert_eq!(opened.channel.agent_version(), "3.3.987.0");
    assert!(opened.channel.properties().is_local_port_forwarding());
}

#[tokio::test]
async fn data_flows_both_ways_in_small_messages() {
    let mut s = setup();
    let (mut opened, mut agent, mut next) = s.ready().await;
    let big = vec![7u8; 2500];
    opened.stream.write_all(&big).await.unwrap();
    let mut got = Vec::new();
    let mut seq = 1;
    while got.len() < big.len() {
        let m = agent.recv_stream().await;
        assert_eq!(
            (m.sequence_number, m.payload_type),
            (seq, PayloadType::Output)
        );
        assert!(m.payload.len() <= 1024);
        got.extend_from_slice(&m.payload);
        agent.ack(&m).await;
        seq += 1;
    }
    assert_eq!(got, big);

    agent
        .send_stream(next, PayloadType::Output, &b"world"[..])
        .await;
    assert_eq!(agent.recv_ack().await, next);
    next += 1;
    let mut buf = [0u8; 5];
    opened.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"world");
    let _ = next;
}

#[tokio::test(start_paused = true)]
async fn unacked_message_is_resent_with_the_same_bytes() {
    let mut s = setup();
    let (mut opened, mut agent, _) = s.ready().await;
    opened.stream.write_all(b"select 1").await.unwrap();
    let first = agent.recv_stream().await;
    // Not acked: after the RTO the very same message comes again.
    let again = agent.recv_stream().await;
    assert_eq!(again, first);
    agent.ack(&again).await;
    opened.stream.write_all(b"x").await.unwrap();
    let next = agent.recv_stream().await;
    assert_eq!(
        (next.sequence_number, &next.payload[..]),
        (first.sequence_number + 1, &b"x"[..])
    );
}

#[tokio::test]
async fn reordered_messages_are_delivered_in_order_and_duplicates_reacked() {
    let mut s = setup();
    let (mut opened, mut agent, next) = s.ready().await;
    agent
        .send_stream(next + 1, PayloadType::Output, &b"B"[..])
        .await;
    assert_eq!(agent.recv_ack().await, next + 1);
    let a = agent
        .send_stream(next, PayloadType::Output, &b"A"[..])
        .await;
    assert_eq!(agent.recv_ack().await, next);
    let mut buf = [0u8; 2];
    opened.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"AB");
    // Our ack "got lost": the agent resends; we ack again and deliver nothing twice.
    agent.send(&a).await;
    assert_eq!(agent.recv_ack().await, next);
    agent
        .send_stream(next + 2, PayloadType::Output, &b"C"[..])
        .await;
    assert_eq!(agent.recv_ack().await, next + 2);
    let mut one = [0u8; 1];
    opened.stream.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"C");
}

#[tokio::test]
async fn garbage_frames_are_ignored() {
    let mut s = setup();
    let (mut opened, mut agent, next) = s.ready().await;
    agent
        .ws
        .send(Message::Binary(Bytes::from_static(b"\x00\x00\x00\x01junk")))
        .await
        .unwrap();
    agent.ws.send(Message::Binary(Bytes::new())).await.unwrap();
    agent
        .ws
        .send(Message::text("{\"MessageType\":\"start_publication\"}"))
        .await
        .unwrap();
    let mut corrupt = agent_output(next, b"X").encode().to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff; // digest no longer matches: not acked, not delivered
    agent
        .ws
        .send(Message::Binary(corrupt.into()))
        .await
        .unwrap();
    agent
        .send_stream(next, PayloadType::Output, &b"ok"[..])
        .await;
    assert_eq!(agent.recv_ack().await, next);
    let mut buf = [0u8; 2];
    opened.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
    assert!(opened.channel.ended().is_none());
}

fn agent_output(seq: i64, data: &'static [u8]) -> ClientMessage {
    crate::tunnel::ssm::testing::agent_message(seq, PayloadType::Output, data)
}

#[tokio::test]
async fn connect_to_port_error_is_counted_in_order() {
    let mut s = setup();
    let (mut opened, mut agent, next) = s.ready().await;
    assert!(!opened.channel.take_connect_error());
    agent
        .send_stream(
            next,
            PayloadType::Flag,
            FlagPayload::ConnectToPortError.encode(),
        )
        .await;
    agent
        .send_stream(next + 1, PayloadType::Output, &b"!"[..])
        .await;
    let mut one = [0u8; 1];
    opened.stream.read_exact(&mut one).await.unwrap();
    // Output after the flag has been delivered, so the flag has been processed.
    assert!(opened.channel.take_connect_error());
    assert!(!opened.channel.take_connect_error());
}

#[tokio::test]
async fn kms_is_refused_clearly() {
    let mut s = setup();
    let opening = s.open("token-1");
    let mut agent = s.agent().await;
    let request = r#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"portNumber":"5432","type":"LocalPortForwarding"}}},{"ActionType":"KMSEncryption","ActionParameters":{"KMSKeyId":"k","Challenge":"AAAA"}}]}"#;
    agent
        .send_stream(
            0,
            PayloadType::HandshakeRequest,
            request.as_bytes().to_vec(),
        )
        .await;
    let response = agent.recv_stream().await;
    let v: serde_json::Value = serde_json::from_slice(&response.payload).unwrap();
    assert_eq!(v["ProcessedClientActions"][1]["ActionStatus"], 2);
    let err = opening.await.unwrap().unwrap_err();
    assert!(
        matches!(err, DataChannelError::HandshakeRefused(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("KMS"), "{err}");
}

#[tokio::test]
async fn reconnect_resumes_with_same_client_id_and_replays() {
    let mut s = setup();
    s.control
        .push_resume(Ok(Some(FakeControl::grant("s-1", "token-2"))));
    let (mut opened, mut agent, next) = s.ready().await;
    let first_open = agent.open.clone();
    opened.stream.write_all(b"unacked").await.unwrap();
    let lost = agent.recv_stream().await;
    drop(agent); // the WebSocket dies before the agent acks

    let mut agent = s.agent().await;
    assert_eq!(agent.open.client_id, first_open.client_id);
    assert_ne!(agent.open.request_id, first_open.request_id);
    assert_eq!(agent.open.token_value, "token-2");
    let replayed = agent.recv_stream().await;
    assert_eq!(replayed, lost);
    agent.ack(&replayed).await;
    // Both sequence spaces continue.
    opened.stream.write_all(b"more").await.unwrap();
    let m = agent.recv_stream().await;
    assert_eq!(m.sequence_number, lost.sequence_number + 1);
    agent
        .send_stream(next, PayloadType::Output, &b"back"[..])
        .await;
    let mut buf = [0u8; 4];
    opened.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"back");
    assert_eq!(opened.channel.reconnects(), 1);
}

#[tokio::test(start_paused = true)]
async fn bye_close_and_failed_dials_are_retried() {
    let mut s = setup();
    s.control
        .push_resume(Ok(Some(FakeControl::grant("s-1", "token-2"))));
    s.control
        .push_resume(Ok(Some(FakeControl::grant("s-1", "token-3"))));
    let (opened, mut agent, _) = s.ready().await;
    s.connector
        .fail_next
        .store(1, std::sync::atomic::Ordering::SeqCst);
    agent
        .ws
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "Bye".into(),
        }))
        .await
        .unwrap();
    let agent = s.agent().await;
    assert_eq!(agent.open.token_value, "token-3");
    assert_eq!(
        s.control.resumed.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert!(opened.channel.ended().is_none());
}

#[tokio::test]
async fn refused_resume_ends_the_session() {
    let mut s = setup();
    let (mut opened, agent, _) = s.ready().await;
    drop(agent);
    let reason = opened.channel.wait_ended().await;
    assert!(
        matches!(reason, DataChannelError::ResumeRefused { .. }),
        "{reason:?}"
    );
    let mut buf = [0u8; 1];
    assert_eq!(opened.stream.read(&mut buf).await.unwrap(), 0);
}

#[tokio::test]
async fn channel_closed_reason_is_surfaced() {
    let mut s = setup();
    let (opened, mut agent, _) = s.ready().await;
    let closed = ClientMessage::new(
        message_type::CHANNEL_CLOSED,
        0,
        0,
        PayloadType::Unset,
        Bytes::from_static(br#"{"MessageType":"channel_closed","SessionId":"s-1","Output":"Your session timed out due to inactivity and has been terminated."}"#),
    );
    agent.send(&closed).await;
    let reason = opened.channel.wait_ended().await;
    assert!(
        reason.to_string().contains("timed out due to inactivity"),
        "{reason}"
    );
    assert_eq!(
        s.control.resumed.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn terminate_sends_the_flag_then_calls_the_api() {
    let mut s = setup();
    let (opened, mut agent, _) = s.ready().await;
    let channel = Arc::new(opened.channel);
    let terminating = tokio::spawn({
        let channel = channel.clone();
        async move { channel.terminate().await }
    });
    let flag = agent.recv_stream().await;
    assert_eq!(flag.payload_type, PayloadType::Flag);
    assert_eq!(&flag.payload[..], &[0, 0, 0, 2]);
    agent.ack(&flag).await;
    terminating.await.unwrap();
    assert_eq!(
        *s.control.terminated.lock().unwrap(),
        vec!["s-1".to_owned()]
    );
    assert!(matches!(
        channel.ended(),
        Some(DataChannelError::Terminated)
    ));
}

