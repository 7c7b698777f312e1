//! Data channel behaviour against a scripted fake agent over an in-memory WebSocket.

use std::sync::Arc;

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::tunnel::ssm::message::{
    message_type, AcknowledgeContent, ClientMessage, FlagPayload, PayloadType,
};
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
async fn connect_to_port_errors_are_placed_in_the_byte_stream() {
    let mut s = setup();
    let (mut opened, mut agent, next) = s.ready().await;
    assert!(opened.channel.connect_error_offsets().is_empty());
    let flag = FlagPayload::ConnectToPortError.encode();
    agent
        .send_stream(next, PayloadType::Output, &b"abc"[..])
        .await;
    agent
        .send_stream(next + 1, PayloadType::Flag, flag.clone())
        .await;
    agent
        .send_stream(next + 2, PayloadType::Output, &b"de"[..])
        .await;
    agent.send_stream(next + 3, PayloadType::Flag, flag).await;
    agent
        .send_stream(next + 4, PayloadType::Output, &b"!"[..])
        .await;
    let mut got = [0u8; 6];
    opened.stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abcde!");
    // Output after each flag has been delivered, so the flags have been processed: each is
    // placed after the bytes that came before it.
    assert_eq!(opened.channel.connect_error_offsets(), [3, 5]);
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

/// Reads stream messages from the client and acks them, recording when each arrived.
async fn collect_acked(agent: &mut FakeAgent, want: usize) -> (Vec<ClientMessage>, Vec<Instant>) {
    let mut got = Vec::new();
    let mut at = Vec::new();
    while got.len() < want {
        let m = agent.recv_stream().await;
        at.push(Instant::now());
        agent.ack(&m).await;
        got.push(m);
    }
    (got, at)
}

#[tokio::test(start_paused = true)]
async fn stream_data_is_paced_under_the_gateway_limit_but_acks_are_not() {
    let mut s = setup();
    let (mut opened, mut agent, next) = s.ready().await;
    let n = 2000;
    let data = vec![5u8; n * 1024];
    let writer = tokio::spawn(async move {
        opened.stream.write_all(&data).await.unwrap();
        opened
    });
    let started = Instant::now();
    let (got, at) = collect_acked(&mut agent, n).await;
    let opened = writer.await.unwrap();
    assert!(got.iter().all(|m| m.payload.len() == 1024));
    // 900/s with a 45-message burst: no one-second window holds more than 945 messages.
    for i in 0..at.len() {
        let in_window = at[i..]
            .iter()
            .take_while(|t| t.duration_since(at[i]) < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 990,
            "{in_window} messages within 1 s from #{i}"
        );
    }
    let took = at[n - 1].duration_since(started);
    assert!(took >= Duration::from_millis(2000), "{took:?}");

    // The bucket is empty now, yet an ack goes out at once.
    let sent = Instant::now();
    agent
        .send_stream(next, PayloadType::Output, &b"x"[..])
        .await;
    assert_eq!(agent.recv_ack().await, next);
    assert_eq!(sent.elapsed(), Duration::ZERO);
    assert!(opened.channel.stats().messages_out >= n as u64);
}

#[tokio::test(start_paused = true)]
async fn unpaced_sends_as_fast_as_the_window_allows() {
    let mut s = setup();
    s.config = Arc::new(Config {
        max_rate: 0,
        ..Config::default()
    });
    let (mut opened, mut agent, _) = s.ready().await;
    let data = vec![5u8; 2000 * 1024];
    tokio::spawn(async move { opened.stream.write_all(&data).await.unwrap() });
    let started = Instant::now();
    collect_acked(&mut agent, 2000).await;
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_minute_without_acks_is_survived_with_backed_off_resends() {
    let mut s = setup();
    let (mut opened, mut agent, next) = s.ready().await;
    opened.stream.write_all(b"select 1").await.unwrap();
    let first = agent.recv_stream().await;
    let gap_end = Instant::now() + Duration::from_secs(60);
    let mut resends = 0;
    loop {
        tokio::select! {
            m = agent.recv_stream() => {
                assert_eq!(m, first, "only the unacked message comes again");
                resends += 1;
            }
            () = tokio::time::sleep_until(gap_end) => break,
        }
    }
    // 200 ms doubling to the 8 s cap: about a dozen resends in a minute, not 300.
    assert!((5..=15).contains(&resends), "{resends} resends");
    assert!(opened.channel.ended().is_none(), "still alive after 60 s");
    agent.ack(&first).await;
    agent
        .send_stream(next, PayloadType::Output, &b"ok"[..])
        .await;
    let mut buf = [0u8; 2];
    opened.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
    opened.stream.write_all(b"more").await.unwrap();
    let m = agent.recv_stream().await;
    assert_eq!(m.sequence_number, first.sequence_number + 1);
}

#[tokio::test(start_paused = true)]
async fn agent_silence_with_data_waiting_ends_the_session() {
    let mut s = setup();
    s.config = Arc::new(Config {
        agent_timeout: Duration::from_secs(30),
        ..Config::default()
    });
    let (mut opened, mut agent, _) = s.ready().await;
    // Quiet with nothing unacked is fine, however long.
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert!(opened.channel.ended().is_none());
    opened.stream.write_all(b"select 1").await.unwrap();
    let started = Instant::now();
    let reason = tokio::select! {
        r = opened.channel.wait_ended() => r,
        // Keep reading (and so answering pings) without ever acking.
        () = async {
            while agent.recv().await.is_some() {}
            std::future::pending::<()>().await
        } => unreachable!(),
    };
    assert!(
        matches!(reason, DataChannelError::AgentUnresponsive(30)),
        "{reason:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(32),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_local_reader_that_stops_congests_without_stopping_acks() {
    let mut s = setup();
    s.config = Arc::new(Config {
        inbound_queue_bytes: 64 * 1024,
        max_rate: 0,
        ..Config::default()
    });
    let (opened, mut agent, next) = s.ready().await;
    // The agent sends 1 MiB of output; nobody reads it locally.
    let total = 1024;
    let mut sent = Vec::new();
    for i in 0..total {
        let payload = vec![(i % 251) as u8; 1024];
        sent.push(
            agent
                .send_stream(next + i, PayloadType::Output, payload)
                .await,
        );
    }
    // Meanwhile we upload more than a window's worth: only possible if acks still get through.
    let upload = vec![9u8; 600 * 1024];
    let (mut reader, mut writer) = tokio::io::split(opened.stream);
    let up = tokio::spawn(async move {
        writer.write_all(&upload).await.unwrap();
        writer
    });
    let mut acked = std::collections::BTreeSet::new();
    let mut uploaded = 0;
    while uploaded < 600 {
        let m = agent.recv().await.expect("client message");
        if m.message_type == crate::tunnel::ssm::message::message_type::ACKNOWLEDGE {
            let a: AcknowledgeContent = m.json_payload("ack").unwrap();
            acked.insert(a.acknowledged_message_sequence_number);
        } else {
            agent.ack(&m).await;
            uploaded += 1;
        }
    }
    let _writer = up.await.unwrap();
    let refused_from = (next..next + total)
        .find(|seq| !acked.contains(seq))
        .expect("some output was not acked");
    assert!(refused_from > next + 32, "some output was taken first");
    assert!(opened.channel.stats().refused > 0);

    // The reader comes back; the agent resends what was not acked, in order.
    let reading = tokio::spawn(async move {
        let mut got = vec![0u8; total as usize * 1024];
        reader.read_exact(&mut got).await.unwrap();
        got
    });
    let mut pending: Vec<_> = sent
        .iter()
        .filter(|m| !acked.contains(&m.sequence_number))
        .cloned()
        .collect();
    while !pending.is_empty() {
        for m in &pending {
            agent.send(m).await;
        }
        let mut now_acked = std::collections::BTreeSet::new();
        let deadline = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                m = agent.recv() => {
                    let m = m.expect("client message");
                    if m.message_type == crate::tunnel::ssm::message::message_type::ACKNOWLEDGE {
                        let a: AcknowledgeContent = m.json_payload("ack").unwrap();
                        now_acked.insert(a.acknowledged_message_sequence_number);
                    }
                }
                () = &mut deadline => break,
            }
        }
        pending.retain(|m| !now_acked.contains(&m.sequence_number));
    }
    let got = reading.await.unwrap();
    let expected: Vec<u8> = (0..total)
        .flat_map(|i| vec![(i % 251) as u8; 1024])
        .collect();
    assert!(got == expected, "every byte, in order");
}

#[tokio::test(start_paused = true)]
async fn a_stuck_websocket_write_leads_to_a_resume() {
    let mut s = setup();
    s.control
        .push_resume(Ok(Some(FakeControl::grant("s-1", "token-2"))));
    s.connector
        .pipe_size
        .store(64 * 1024, std::sync::atomic::Ordering::SeqCst);
    let (mut opened, agent, _) = s.ready().await;
    s.connector
        .pipe_size
        .store(1 << 20, std::sync::atomic::Ordering::SeqCst);
    // The gateway stops reading: the 1 MiB pipe fills and our writes stall.
    let stuck = agent;
    let data = vec![3u8; 3 << 20];
    let writer = tokio::spawn(async move {
        let _ = opened.stream.write_all(&data).await;
        opened
    });
    let mut agent = s.agent().await;
    assert_eq!(agent.open.token_value, "token-2");
    // The replay and the rest of the data arrive on the new connection.
    let m = agent.recv_stream().await;
    assert_eq!(m.payload_type, PayloadType::Output);
    drop(stuck);
    let mut seen = 0usize;
    let mut last_seq = -1;
    while seen < (3 << 20) {
        let m = agent.recv_stream().await;
        if m.sequence_number > last_seq {
            last_seq = m.sequence_number;
        }
        agent.ack(&m).await;
        seen = (last_seq as usize) * 1024;
    }
    let opened = writer.await.unwrap();
    assert_eq!(opened.channel.reconnects(), 1);
    assert!(opened.channel.ended().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_session_that_fails_is_terminated_with_the_flag_and_the_api() {
    let mut s = setup();
    s.config = Arc::new(Config {
        agent_timeout: Duration::from_secs(30),
        // No pings: the fake agent's answering pong would fail on the closed pipe and end
        // its reading before the last frames.
        ping_interval: Duration::from_secs(3600),
        ..Config::default()
    });
    let (mut opened, mut agent, _) = s.ready().await;
    opened.stream.write_all(b"select 1").await.unwrap();
    // The agent reads but never acks: AgentUnresponsive after 30 s. Collect what it gets.
    let (reason, flags) = tokio::join!(opened.channel.wait_ended(), async {
        let mut flags = Vec::new();
        while let Some(m) = agent.recv().await {
            if m.payload_type == PayloadType::Flag {
                flags.push(FlagPayload::decode(&m.payload).expect("flag"));
            }
        }
        flags
    });
    assert!(
        matches!(reason, DataChannelError::AgentUnresponsive(30)),
        "{reason:?}"
    );
    assert_eq!(flags, [FlagPayload::TerminateSession], "the flag, once");
    // The API call follows right after `ended` is set.
    let control = s.control.clone();
    tokio::time::timeout(Duration::from_secs(10), async move {
        while control.terminated.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("TerminateSession called");
    assert_eq!(*s.control.terminated.lock().unwrap(), ["s-1"]);
}

#[tokio::test(start_paused = true)]
async fn input_right_after_the_handshake_is_resent_within_20_ms_when_not_acked() {
    let mut s = setup();
    let (mut opened, mut agent, _) = s.ready().await;
    // The agent's port plugin is not ready yet: it drops this without an ack (§6a).
    opened.stream.write_all(b"select 1").await.unwrap();
    let first = agent.recv_stream().await;
    let sent = Instant::now();
    let again = agent.recv_stream().await;
    assert_eq!(again, first);
    let waited = sent.elapsed();
    assert!(
        waited <= Duration::from_millis(21),
        "resent after {waited:?}"
    );
    agent.ack(&again).await;
    // Later input follows the normal RTO (≈190 ms here), not the early 20 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    opened.stream.write_all(b"x").await.unwrap();
    let later = agent.recv_stream().await;
    let sent = Instant::now();
    let again = agent.recv_stream().await;
    assert_eq!(again, later);
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "resent after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn on_a_slow_link_input_after_the_handshake_follows_the_normal_rto() {
    let mut s = setup();
    let opening = s.open("token-1");
    let mut agent = s.agent().await;
    // The handshake with a 50 ms round trip: our input cannot reach the agent in its first
    // milliseconds after HandshakeComplete, so an early resend would only be spurious.
    agent
        .send_stream(
            0,
            PayloadType::HandshakeRequest,
            HANDSHAKE_REQUEST.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(agent.recv_ack().await, 0);
    let response = agent.recv_stream().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    agent.ack(&response).await;
    agent
        .send_stream(
            1,
            PayloadType::HandshakeComplete,
            &br#"{"HandshakeTimeToComplete":1000,"CustomerMessage":""}"#[..],
        )
        .await;
    assert_eq!(agent.recv_ack().await, 1);
    let mut opened = opening.await.unwrap().expect("open");
    opened.stream.write_all(b"select 1").await.unwrap();
    let first = agent.recv_stream().await;
    let sent = Instant::now();
    let again = agent.recv_stream().await;
    assert_eq!(again, first);
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "resent after {waited:?}"
    );
}
