//! smux unit tests: byte-exact frames, flow control, keepalive, malformed input.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::codec::*;
use super::session::ACCEPT_BACKLOG;
use super::*;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{duplex, DuplexStream};

/// Far beyond anything these tests need; only turns a hang into a failure.
const GUARD: Duration = Duration::from_secs(60);

fn no_keepalive() -> Config {
    Config {
        keepalive_interval: None,
        keepalive_timeout: None,
        ..Config::default()
    }
}

fn pair(client_cfg: Config, server_cfg: Config) -> (Session, Session) {
    let (a, b) = duplex(64 * 1024);
    let client = Session::client(a, client_cfg).expect("valid config");
    let server = Session::server(b, server_cfg).expect("valid config");
    (client, server)
}

fn frame(cmd: u8, len: u16, id: u32) -> Vec<u8> {
    let mut v = vec![VERSION, cmd];
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&id.to_le_bytes());
    v
}

fn psh(id: u32, data: &[u8]) -> Vec<u8> {
    let mut v = frame(2, u16::try_from(data.len()).expect("small"), id);
    v.extend_from_slice(data);
    v
}

async fn read_header(raw: &mut (impl AsyncRead + Unpin)) -> Header {
    let mut h = [0u8; HEADER_LEN];
    raw.read_exact(&mut h).await.expect("header");
    Header::decode(h).expect("valid header")
}

/// Accepts every stream and echoes it back until the client's FIN.
fn spawn_echo(server: Session) -> tokio::task::JoinHandle<Session> {
    tokio::spawn(async move {
        while let Some(stream) = server.accept_stream().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
        server
    })
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

// ---- frame codec ----

#[test]
fn header_vectors() {
    let cases = [
        (
            Header {
                cmd: Cmd::Psh,
                len: 5,
                stream_id: 3,
            },
            [0x01, 0x02, 0x05, 0x00, 0x03, 0x00, 0x00, 0x00],
        ),
        (
            Header {
                cmd: Cmd::Syn,
                len: 0,
                stream_id: 3,
            },
            [0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00],
        ),
        (
            Header {
                cmd: Cmd::Fin,
                len: 0,
                stream_id: 0x0102_0304,
            },
            [0x01, 0x01, 0x00, 0x00, 0x04, 0x03, 0x02, 0x01],
        ),
        (
            Header {
                cmd: Cmd::Nop,
                len: 0,
                stream_id: 0,
            },
            [0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        ),
        (
            Header {
                cmd: Cmd::Psh,
                len: 0x8000,
                stream_id: 5,
            },
            [0x01, 0x02, 0x00, 0x80, 0x05, 0x00, 0x00, 0x00],
        ),
        (
            Header {
                cmd: Cmd::Psh,
                len: u16::MAX,
                stream_id: u32::MAX,
            },
            [0x01, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
    ];
    for (header, bytes) in cases {
        assert_eq!(header.encode(), bytes, "{header:?}");
        assert_eq!(Header::decode(bytes).expect("decodes"), header);
    }
    let mut out = BytesMut::new();
    put_frame(&mut out, Cmd::Psh, 3, b"hello");
    assert_eq!(&out[..], b"\x01\x02\x05\x00\x03\x00\x00\x00hello");
}

#[test]
fn header_rejects_what_v1_never_sends() {
    let err = |b: [u8; 8]| Header::decode(b).expect_err("must be rejected");
    assert!(matches!(
        err([2, 2, 0, 0, 3, 0, 0, 0]),
        SmuxError::BadVersion(2)
    ));
    assert!(matches!(
        err([0, 3, 0, 0, 0, 0, 0, 0]),
        SmuxError::BadVersion(0)
    ));
    assert!(matches!(
        err([1, 4, 8, 0, 3, 0, 0, 0]),
        SmuxError::InvalidCommand(4)
    ));
    assert!(matches!(
        err([1, 0xff, 0, 0, 3, 0, 0, 0]),
        SmuxError::InvalidCommand(0xff)
    ));
    assert!(matches!(
        err([1, 0, 1, 0, 3, 0, 0, 0]),
        SmuxError::UnexpectedPayload {
            cmd: Cmd::Syn,
            len: 1
        }
    ));
    assert!(matches!(
        err([1, 3, 0, 1, 0, 0, 0, 0]),
        SmuxError::UnexpectedPayload {
            cmd: Cmd::Nop,
            len: 256
        }
    ));
}

#[test]
fn config_validation() {
    assert!(Config::default().validate().is_ok());
    assert!(no_keepalive().validate().is_ok());
    let bad = |f: fn(&mut Config)| {
        let mut c = Config::default();
        f(&mut c);
        c.validate().expect_err("invalid")
    };
    assert!(matches!(
        bad(|c| c.max_frame_size = 65536),
        SmuxError::FrameTooLarge {
            len: 65536,
            max: 65535
        }
    ));
    assert!(matches!(
        bad(|c| c.max_frame_size = 0),
        SmuxError::InvalidConfig(_)
    ));
    assert!(matches!(
        bad(|c| c.max_receive_buffer = 0),
        SmuxError::InvalidConfig(_)
    ));
    assert!(matches!(
        bad(|c| c.keepalive_interval = Some(Duration::ZERO)),
        SmuxError::InvalidConfig(_)
    ));
    assert!(matches!(
        bad(|c| c.keepalive_interval = Some(Duration::from_secs(31))),
        SmuxError::InvalidConfig(_)
    ));
}

// ---- data path ----

#[tokio::test]
async fn echo_one_stream_and_ids() {
    let (client, server) = pair(Config::default(), Config::default());
    let _echo = spawn_echo(server);

    let mut s = client.open_stream().await.expect("open");
    assert_eq!(s.id(), 3);
    s.write_all(b"hello smux").await.expect("write");
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"hello smux");
    assert!(s.received_any_data());

    // Our FIN ends the echo, whose FIN then gives us EOF.
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty());
    assert!(s.peer_closed());

    let s2 = client.open_stream().await.expect("open");
    let s3 = client.open_stream().await.expect("open");
    assert_eq!((s2.id(), s3.id()), (5, 7));
    assert!(!client.is_closed());
}

#[tokio::test]
async fn server_opened_streams_use_even_ids() {
    let (client, server) = pair(no_keepalive(), no_keepalive());
    let mut s = server.open_stream().await.expect("open");
    assert_eq!(s.id(), 2);
    s.write_all(b"ping").await.expect("write");
    let mut c = client.accept_stream().await.expect("accepted");
    assert_eq!(c.id(), 2);
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams() {
    let (client, server) = pair(Config::default(), Config::default());
    let _echo = spawn_echo(server);
    let client = Arc::new(client);

    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(i, 1000 + (i as usize * 37) % 9000);
            let mut s = client.open_stream().await.expect("open");
            let (mut r, mut w) = tokio::io::split(&mut s);
            let expected = data.clone();
            let writer = async move { w.write_all(&data).await.expect("write") };
            let reader = async move {
                let mut got = vec![0u8; expected.len()];
                r.read_exact(&mut got).await.expect("read");
                assert!(got == expected, "stream {i} corrupted");
            };
            tokio::join!(writer, reader);
        }));
    }
    for t in tasks {
        tokio::time::timeout(GUARD, t)
            .await
            .expect("no hang")
            .expect("task ok");
    }
    assert_eq!(client.num_streams(), 0);
    assert!(!client.is_closed());
}

async fn transfer(
    client_transport: impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
    server_transport: DuplexStream,
    total: usize,
) {
    let client = Session::client(client_transport, Config::default()).expect("config");
    let server = Session::server(server_transport, Config::default()).expect("config");

    let receiver = tokio::spawn(async move {
        let mut s = server.accept_stream().await.expect("accepted");
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut received = 0usize;
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            received += n;
            assert!(server.buffered_bytes() <= 4 * 1024 * 1024 + 32 * 1024);
        }
        (received, hasher.finalize())
    });

    let block = pattern(42, 1024 * 1024);
    let mut hasher = Sha256::new();
    let mut s = client.open_stream().await.expect("open");
    let mut sent = 0usize;
    let mut i = 0u64;
    while sent < total {
        let mut chunk = block.clone();
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        let chunk = &chunk[..(total - sent).min(chunk.len())];
        s.write_all(chunk).await.expect("write");
        hasher.update(chunk);
        sent += chunk.len();
        i += 1;
    }
    // Closing right after the data must not lose any of it: FIN is queued behind it.
    drop(s);
    let (received, digest) = tokio::time::timeout(GUARD, receiver)
        .await
        .expect("no hang")
        .expect("ok");
    assert_eq!(received, total);
    assert_eq!(digest, hasher.finalize());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_64_mib_sha256() {
    let (a, b) = duplex(64 * 1024);
    transfer(a, b, 64 * 1024 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_64_mib_through_chopped_transport() {
    let (a, b) = duplex(64 * 1024);
    transfer(Chopper::new(a, 1024, 7), b, 64 * 1024 * 1024).await;
}

#[tokio::test]
async fn transfer_through_tiny_chunks() {
    // Chunks of 1..=7 bytes split nearly every header, in both directions.
    let (a, b) = duplex(64 * 1024);
    transfer(Chopper::new(a, 7, 8), b, 1024 * 1024 + 123).await;
}

#[tokio::test]
async fn large_writes_are_split_into_max_frames() {
    let (a, mut raw) = duplex(256 * 1024);
    let client = Session::client(a, no_keepalive()).expect("config");
    let mut s = client.open_stream().await.expect("open");
    s.write_all(&vec![7u8; 70_000]).await.expect("write");
    s.shutdown().await.expect("fin");

    assert_eq!(
        read_header(&mut raw).await,
        Header {
            cmd: Cmd::Syn,
            len: 0,
            stream_id: 3
        }
    );
    let mut total = 0;
    for expected_len in [32_768u16, 32_768, 4_464] {
        let h = read_header(&mut raw).await;
        assert_eq!(
            h,
            Header {
                cmd: Cmd::Psh,
                len: expected_len,
                stream_id: 3
            }
        );
        let mut data = vec![0u8; usize::from(h.len)];
        raw.read_exact(&mut data).await.expect("payload");
        assert!(data.iter().all(|&b| b == 7));
        total += data.len();
    }
    assert_eq!(total, 70_000);
    assert_eq!(
        read_header(&mut raw).await,
        Header {
            cmd: Cmd::Fin,
            len: 0,
            stream_id: 3
        }
    );
}

// ---- close semantics ----

#[tokio::test]
async fn server_close_gives_client_eof_after_data() {
    let (client, server) = pair(no_keepalive(), no_keepalive());
    let server_task = tokio::spawn(async move {
        let mut s = server.accept_stream().await.expect("accepted");
        s.write_all(b"bye").await.expect("write");
        drop(s); // FIN follows the data
        server
    });
    let mut s = client.open_stream().await.expect("open");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("clean EOF");
    assert_eq!(got, b"bye");
    assert!(s.received_any_data());
    assert!(s.peer_closed());
    // No half-close: writing after the peer's FIN fails.
    let err = s.write_all(b"late").await.expect_err("peer closed");
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    let _server = server_task.await.expect("server");
}

#[tokio::test]
async fn fin_before_data_is_detectable() {
    let (client, server) = pair(no_keepalive(), no_keepalive());
    let server_task = tokio::spawn(async move {
        // What the agent does when it cannot dial the target.
        drop(server.accept_stream().await.expect("accepted"));
        server
    });
    let mut s = client.open_stream().await.expect("open");
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).await.expect("EOF"), 0);
    assert!(s.peer_closed());
    assert!(!s.received_any_data());
    let _server = server_task.await.expect("server");
}

#[tokio::test]
async fn dropped_stream_is_forgotten_and_late_data_discarded() {
    let (a, mut raw) = duplex(64 * 1024);
    let server = Session::server(a, no_keepalive()).expect("config");
    raw.write_all(&frame(0, 0, 3)).await.expect("syn");
    let s = server.accept_stream().await.expect("accepted");
    assert_eq!(server.num_streams(), 1);
    drop(s);
    assert_eq!(
        read_header(&mut raw).await,
        Header {
            cmd: Cmd::Fin,
            len: 0,
            stream_id: 3
        }
    );
    assert_eq!(server.num_streams(), 0);
    // Data and FIN racing our FIN land on an unknown id and are dropped, not buffered.
    raw.write_all(&psh(3, &[1u8; 1000])).await.expect("psh");
    raw.write_all(&frame(1, 0, 3)).await.expect("fin");
    raw.write_all(&frame(0, 0, 5)).await.expect("syn");
    let _s5 = server.accept_stream().await.expect("accepted");
    assert_eq!(server.buffered_bytes(), 0);
    assert!(!server.is_closed());
}

#[tokio::test]
async fn data_for_unknown_stream_is_ignored() {
    let (a, mut raw) = duplex(64 * 1024);
    let server = Session::server(a, no_keepalive()).expect("config");
    let mut input = psh(99, b"nobody home");
    input.extend(frame(1, 0, 77)); // FIN for an unknown id
    input.extend(frame(3, 0, 0)); // NOP
    input.extend(frame(0, 0, 5)); // SYN 5
    input.extend(frame(0, 0, 5)); // duplicate SYN: ignored
    input.extend(psh(5, b"ok"));
    input.extend(psh(5, b"")); // empty PSH: nothing to deliver
    input.extend(frame(1, 0, 5));
    raw.write_all(&input).await.expect("write");

    let mut s = server.accept_stream().await.expect("accepted");
    assert_eq!(s.id(), 5);
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"ok");
    assert_eq!(server.num_streams(), 1);
    assert_eq!(server.buffered_bytes(), 0);
    assert!(!server.is_closed());
}

#[tokio::test]
async fn protocol_errors_close_the_session() {
    type Expect = fn(&SmuxError) -> bool;
    let cases: [(Vec<u8>, Expect); 5] = [
        (vec![2, 2, 5, 0, 3, 0, 0, 0], |e| {
            matches!(e, SmuxError::BadVersion(2))
        }),
        (frame(4, 8, 3), |e| {
            matches!(e, SmuxError::InvalidCommand(4))
        }),
        (frame(9, 0, 0), |e| {
            matches!(e, SmuxError::InvalidCommand(9))
        }),
        (frame(1, 3, 3), |e| {
            matches!(
                e,
                SmuxError::UnexpectedPayload {
                    cmd: Cmd::Fin,
                    len: 3
                }
            )
        }),
        (vec![1, 2, 5, 0, 3], |e| {
            matches!(e, SmuxError::TruncatedFrame)
        }),
    ];
    for (input, expected) in cases {
        let (a, mut raw) = duplex(1024);
        let server = Session::server(a, no_keepalive()).expect("config");
        raw.write_all(&input).await.expect("write");
        let _ = raw.shutdown().await;
        let err = tokio::time::timeout(GUARD, server.closed())
            .await
            .expect("closes");
        assert!(expected(&err), "input {input:02x?} gave {err:?}");
        assert!(server.is_closed());
        assert!(server.accept_stream().await.is_none());
        let open = server.open_stream().await.expect_err("closed");
        assert!(expected(open.root_cause()), "{open:?}");
    }
}

#[tokio::test]
async fn stream_in_use_sees_session_death() {
    let (a, mut raw) = duplex(1024);
    let server = Session::server(a, no_keepalive()).expect("config");
    raw.write_all(&frame(0, 0, 3)).await.expect("syn");
    let mut s = server.accept_stream().await.expect("accepted");
    raw.write_all(&[7u8; 8]).await.expect("garbage");
    let mut buf = [0u8; 4];
    let err = s.read(&mut buf).await.expect_err("session died");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<SmuxError>())
        .expect("SmuxError source");
    assert!(matches!(inner.root_cause(), SmuxError::BadVersion(7)));
    assert!(s.write(b"x").await.is_err());
}

#[tokio::test]
async fn clean_eof_and_local_close() {
    let (client, server) = pair(no_keepalive(), no_keepalive());
    let s = client.open_stream().await.expect("open");
    let mut accepted = server.accept_stream().await.expect("accepted");
    client.close();
    assert!(matches!(client.closed().await, SmuxError::ClosedLocally));
    assert!(matches!(
        client.open_stream().await,
        Err(SmuxError::SessionClosed(cause)) if matches!(*cause, SmuxError::ClosedLocally)
    ));
    assert!(matches!(server.closed().await, SmuxError::TransportClosed));
    let err = accepted
        .read(&mut [0u8; 1])
        .await
        .expect_err("transport gone");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    drop(s);
    drop(client); // closing twice is harmless
}

#[tokio::test]
async fn stream_ids_run_out_cleanly() {
    let (client, _server) = pair(no_keepalive(), no_keepalive());
    client.shared.lock().last_id = u32::MAX - 2;
    let last = client.open_stream().await.expect("last id");
    assert_eq!(last.id(), u32::MAX);
    assert!(matches!(
        client.open_stream().await,
        Err(SmuxError::StreamIdsExhausted)
    ));
    assert!(!client.is_closed());
}

#[tokio::test]
async fn full_accept_backlog_refuses_with_fin() {
    let (a, mut raw) = duplex(64 * 1024);
    let server = Session::server(a, no_keepalive()).expect("config");
    let ids: Vec<u32> = (0..=ACCEPT_BACKLOG as u32).map(|i| 3 + 2 * i).collect();
    let mut input = Vec::new();
    for &id in &ids {
        input.extend(frame(0, 0, id));
    }
    raw.write_all(&input).await.expect("syns");
    let refused = *ids.last().expect("non-empty");
    assert_eq!(
        read_header(&mut raw).await,
        Header {
            cmd: Cmd::Fin,
            len: 0,
            stream_id: refused
        }
    );
    assert_eq!(server.num_streams(), ACCEPT_BACKLOG);
    let first = server.accept_stream().await.expect("queued");
    assert_eq!(first.id(), 3);
    assert!(!server.is_closed());
}

#[tokio::test]
async fn pending_accept_ends_when_session_closes() {
    let (a, raw) = duplex(1024);
    let server = Arc::new(Session::server(a, no_keepalive()).expect("config"));
    let waiting = tokio::spawn({
        let server = server.clone();
        async move { server.accept_stream().await.is_none() }
    });
    drop(raw);
    assert!(waiting.await.expect("task"), "accept must end with None");
    assert!(matches!(server.closed().await, SmuxError::TransportClosed));
}

#[tokio::test]
async fn write_after_shutdown_fails_but_reads_continue() {
    let (a, mut raw) = duplex(64 * 1024);
    let client = Session::client(a, no_keepalive()).expect("config");
    let mut s = client.open_stream().await.expect("open");
    s.shutdown().await.expect("fin");
    let err = s.write(b"x").await.expect_err("shut down");
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    // The peer may still answer before its own FIN; no half-close on the wire, but we listen.
    raw.write_all(&psh(3, b"last words")).await.expect("psh");
    raw.write_all(&frame(1, 0, 3)).await.expect("fin");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"last words");
    drop(s); // no second FIN
    assert_eq!(read_header(&mut raw).await.cmd, Cmd::Syn);
    assert_eq!(read_header(&mut raw).await.cmd, Cmd::Fin);
    client.close();
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty(), "unexpected frames {rest:02x?}");
}

#[tokio::test]
async fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for round in 0..300 {
        let input = if round % 2 == 0 {
            let mut v = vec![0u8; rng.random_range(0..4096)];
            rng.fill_bytes(&mut v);
            v
        } else {
            // Mostly well-formed frames with random fields, so parsing goes deeper.
            let mut v = Vec::new();
            for _ in 0..rng.random_range(1..64) {
                let cmd = rng.random_range(0..6u8);
                let id = rng.random_range(0..8u32);
                let len = if cmd == 2 {
                    rng.random_range(0..300u16)
                } else {
                    u16::from(rng.random_ratio(1, 20))
                };
                let version = if rng.random_ratio(1, 30) {
                    rng.random()
                } else {
                    VERSION
                };
                v.extend_from_slice(&[version, cmd]);
                v.extend_from_slice(&len.to_le_bytes());
                v.extend_from_slice(&id.to_le_bytes());
                let body = rng.random_range(0..=usize::from(len) + 2);
                v.extend((0..body).map(|_| rng.random::<u8>()));
            }
            v
        };
        let (a, raw) = duplex(8 * 1024);
        let server = Session::server(a, Config::default()).expect("config");
        let (mut raw_r, mut raw_w) = tokio::io::split(raw);
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = raw_r.read_to_end(&mut sink).await;
        });
        // The session may die before reading everything; a write error is fine then.
        let _ = raw_w.write_all(&input).await;
        let _ = raw_w.shutdown().await;
        let err = tokio::time::timeout(GUARD, server.closed())
            .await
            .expect("session must end");
        assert!(
            !matches!(err, SmuxError::ClosedLocally),
            "round {round}: {err:?}"
        );
        drop(server);
        drain.await.expect("drain task");
    }
}

// ---- keepalive (virtual time) ----

#[tokio::test(start_paused = true)]
async fn nops_are_sent_every_interval() {
    let (a, mut raw) = duplex(1024);
    let cfg = Config {
        keepalive_timeout: None,
        ..Config::default()
    };
    let _client = Session::client(a, cfg).expect("config");
    let start = Instant::now();
    for n in 1..=3u32 {
        assert_eq!(
            read_header(&mut raw).await,
            Header {
                cmd: Cmd::Nop,
                len: 0,
                stream_id: 0
            }
        );
        assert_eq!(start.elapsed(), Duration::from_secs(10) * n);
    }
}

#[tokio::test(start_paused = true)]
async fn timeout_fires_when_peer_is_silent() {
    let (a, _raw) = duplex(1024);
    let server = Session::server(a, Config::default()).expect("config");
    let start = Instant::now();
    assert!(
        matches!(server.closed().await, SmuxError::KeepaliveTimeout(t) if t == Duration::from_secs(30))
    );
    assert_eq!(start.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn no_timeout_while_peer_sends_nops() {
    let (a, mut raw) = duplex(64 * 1024);
    let server = Session::server(a, Config::default()).expect("config");
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        raw.write_all(&frame(3, 0, 0)).await.expect("nop");
        assert!(!server.is_closed());
    }
    let last_nop = Instant::now();
    assert!(matches!(
        server.closed().await,
        SmuxError::KeepaliveTimeout(_)
    ));
    assert_eq!(last_nop.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn default_sessions_keep_each_other_alive() {
    let (client, server) = pair(Config::default(), Config::default());
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!client.is_closed() && !server.is_closed());
}

// ---- receive budget ----

#[tokio::test(start_paused = true)]
async fn slow_stream_blocks_others_until_read() {
    const BUDGET: usize = 64 * 1024;
    const FRAME: usize = 16 * 1024;
    const A_LEN: usize = 1024 * 1024;
    let client_cfg = Config {
        max_frame_size: FRAME,
        ..no_keepalive()
    };
    let server_cfg = Config {
        max_frame_size: FRAME,
        max_receive_buffer: BUDGET,
        max_stream_buffer: BUDGET,
        keepalive_interval: None,
        keepalive_timeout: Some(Duration::from_secs(30)),
    };
    let (client, server) = pair(client_cfg, server_cfg);

    let mut a = client.open_stream().await.expect("open a");
    let mut b = client.open_stream().await.expect("open b");
    let mut server_a = server.accept_stream().await.expect("accept a");
    let mut server_b = server.accept_stream().await.expect("accept b");
    assert_eq!((server_a.id(), server_b.id()), (3, 5));

    // A's reader is slow (not reading at all); far more than the budget is on its way.
    let a_data = pattern(1, A_LEN);
    let a_expected = a_data.clone();
    let a_writer = tokio::spawn(async move {
        a.write_all(&a_data).await.expect("write a");
        a
    });
    // Once A's backlog has used up the receiver's budget, B's data can only queue behind it.
    let started = tokio::time::Instant::now();
    while server.buffered_bytes() < BUDGET {
        assert!(started.elapsed() < GUARD, "the budget never filled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b_writer = tokio::spawn(async move {
        b.write_all(b"hello").await.expect("write b");
        b
    });

    // Expected v1 behaviour: B's data is stuck behind A's in the transport.
    let mut got_b = [0u8; 5];
    assert!(
        tokio::time::timeout(Duration::from_secs(5), server_b.read_exact(&mut got_b))
            .await
            .is_err()
    );
    let buffered = server.buffered_bytes();
    assert!(
        (BUDGET..BUDGET + FRAME).contains(&buffered),
        "buffered {buffered}"
    );

    // Stalled by our own budget, the peer's silence must not count as a dead session.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(!server.is_closed());
    assert!(server.buffered_bytes() < BUDGET + FRAME);

    // Once A is read, everything flows again, with memory bounded throughout.
    let mut got_a = vec![0u8; A_LEN];
    let mut read = 0;
    while read < A_LEN {
        let n = server_a.read(&mut got_a[read..]).await.expect("read a");
        assert!(n > 0);
        read += n;
        assert!(server.buffered_bytes() < BUDGET + FRAME);
    }
    assert!(got_a == a_expected);
    server_b.read_exact(&mut got_b).await.expect("read b");
    assert_eq!(&got_b, b"hello");
    let _ = (a_writer.await, b_writer.await);
}

/// Splits every read and write on the wrapped transport into random small pieces.
struct Chopper<T> {
    /// The real transport.
    inner: T,
    /// Seeded, so a failure replays the same split points.
    rng: StdRng,
    /// Largest piece passed through at once.
    max: usize,
    /// Reads land here first so they can be cut short without unsafe code.
    scratch: Vec<u8>,
}

impl<T> Chopper<T> {
    fn new(inner: T, max: usize, seed: u64) -> Self {
        Self {
            inner,
            rng: StdRng::seed_from_u64(seed),
            max,
            scratch: vec![0; max],
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Chopper<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let n = this.rng.random_range(1..=this.max).min(buf.remaining());
        let mut piece = ReadBuf::new(&mut this.scratch[..n]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut piece))?;
        buf.put_slice(piece.filled());
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Chopper<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let max = self.max;
        let n = self.rng.random_range(1..=max).min(data.len());
        Pin::new(&mut self.inner).poll_write(cx, &data[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_stream_past_its_cap_congests_the_session_but_others_flow_until_the_budget() {
    const CAP: usize = 8 * 1024;
    const BUDGET: usize = 32 * 1024;
    let cfg = Config {
        max_stream_buffer: CAP,
        max_receive_buffer: BUDGET,
        ..no_keepalive()
    };
    let (raw, transport) = duplex(1 << 20);
    let client = Session::client(transport, cfg).expect("config");
    let mut a = client.open_stream().await.expect("open a");
    let mut b = client.open_stream().await.expect("open b");
    let (mut peer_rx, mut peer_tx) = tokio::io::split(raw);
    for _ in 0..2 {
        assert_eq!(read_header(&mut peer_rx).await.cmd, Cmd::Syn);
    }
    // A reaches its cap: the session counts as congested, yet B's frames still pass.
    peer_tx.write_all(&psh(3, &[1u8; CAP])).await.unwrap();
    peer_tx.write_all(&psh(5, b"first")).await.unwrap();
    let mut got = [0u8; 5];
    timeout_read(&mut b, &mut got).await;
    assert_eq!(&got, b"first");
    assert!(client.is_congested(), "a stream past its cap congests the session");

    // A keeps not reading until the session budget is used up: then B waits behind A (v1).
    peer_tx.write_all(&psh(3, &[2u8; BUDGET - CAP])).await.unwrap();
    peer_tx.write_all(&psh(3, &[3u8; 100])).await.unwrap();
    peer_tx.write_all(&psh(5, b"second")).await.unwrap();
    let mut got = [0u8; 6];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.read_exact(&mut got))
            .await
            .is_err(),
        "v1 has no per-stream window: at the budget B waits behind A's frame"
    );
    assert_eq!(client.buffered_bytes(), BUDGET, "never more than the budget");

    // A's consumer reads; everything flows again, in order, nothing lost.
    let mut a_got = vec![0u8; BUDGET + 100];
    timeout_read(&mut a, &mut a_got).await;
    assert!(a_got[..CAP].iter().all(|&x| x == 1));
    assert!(a_got[CAP..BUDGET].iter().all(|&x| x == 2) && a_got[BUDGET..].iter().all(|&x| x == 3));
    timeout_read(&mut b, &mut got).await;
    assert_eq!(&got, b"second");
    assert!(!client.is_congested());
}

async fn timeout_read(s: &mut Stream, buf: &mut [u8]) {
    tokio::time::timeout(GUARD, s.read_exact(buf))
        .await
        .expect("in time")
        .expect("read");
}

#[test]
fn the_out_queue_serves_streams_round_robin_and_session_frames_first() {
    let mut q = OutQueue::default();
    for _ in 0..4 {
        q.push(Cmd::Psh, 3, &[3u8; 1000]);
    }
    q.push(Cmd::Syn, 5, &[]);
    q.push(Cmd::Psh, 5, b"quiet");
    q.push(Cmd::Nop, 0, &[]);
    assert_eq!(q.len(), 4 * 1008 + 8 + 13 + 8);
    assert_eq!(q.stream_len(3), 4 * 1008);
    let mut out = BytesMut::new();
    // One frame per stream in turn: NOP, 3's first, 5's SYN, 3's second, 5's data, ...
    q.take(&mut out, 1);
    assert_eq!(&out[..8], &frame(3, 0, 0)[..], "session frames first");
    assert_eq!(&out[8..16], &frame(2, 1000, 3)[..]);
    assert_eq!(out.len(), 8 + 1008, "at least one stream frame per take");
    let mut out = BytesMut::new();
    q.take(&mut out, 2000);
    let mut expected = frame(0, 0, 5);
    expected.extend(psh(3, &[3u8; 1000]));
    expected.extend(psh(5, b"quiet"));
    expected.extend(psh(3, &[3u8; 1000]));
    assert_eq!(&out[..], &expected[..], "the quiet stream does not wait behind the bulk one");
    let mut out = BytesMut::new();
    q.take(&mut out, usize::MAX);
    assert_eq!(&out[..], &psh(3, &[3u8; 1000])[..]);
    assert!(q.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_stream_at_its_cap_unread_too_long_is_reset_and_the_others_go_on() {
    const CAP: usize = 8 * 1024;
    const BUDGET: usize = 128 * 1024;
    const KEPT: usize = 64 * 1024;
    let cfg = Config {
        max_stream_buffer: CAP,
        max_receive_buffer: BUDGET,
        ..no_keepalive()
    };
    let (raw, transport) = duplex(1 << 20);
    let client = Session::client(transport, cfg).expect("config");
    let mut a = client.open_stream().await.expect("open a");
    let mut b = client.open_stream().await.expect("open b");
    let watch = a.reset_watch();
    let (mut peer_rx, mut peer_tx) = tokio::io::split(raw);
    for _ in 0..2 {
        assert_eq!(read_header(&mut peer_rx).await.cmd, Cmd::Syn);
    }
    // A fills the whole budget and is not read: B's frame waits behind it (v1).
    for i in 0..4u8 {
        peer_tx.write_all(&psh(3, &[i; 32 * 1024])).await.unwrap();
    }
    peer_tx.write_all(&psh(5, b"hello")).await.unwrap();
    // A reader that reads, however little, is not stalled.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut one = [0u8; 1];
    timeout_read(&mut a, &mut one).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(client.reset_stalled(Duration::from_secs(30)).is_empty());
    assert!(!watch.is_reset());
    // 30 s without a read: reset. All but the first 64 KiB is dropped, FIN is sent.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let reset = client.reset_stalled(Duration::from_secs(30));
    assert_eq!(reset, [(3, BUDGET - 1 - KEPT)]);
    assert!(watch.is_reset());
    tokio::time::timeout(GUARD, watch.reset()).await.expect("resolves");
    assert_eq!(
        read_header(&mut peer_rx).await,
        Header {
            cmd: Cmd::Fin,
            len: 0,
            stream_id: 3
        }
    );
    // The budget is free again: B goes on while A is still not read, and data still arriving
    // for A is dropped on arrival.
    peer_tx.write_all(&psh(3, &[9u8; 4000])).await.unwrap();
    peer_tx.write_all(&psh(5, b" world")).await.unwrap();
    let mut got = [0u8; 11];
    timeout_read(&mut b, &mut got).await;
    assert_eq!(&got, b"hello world");
    assert_eq!(client.buffered_bytes(), KEPT);
    // The kept bytes are still readable (what A was in the middle of), then the reset shows.
    let mut kept = vec![0u8; KEPT];
    timeout_read(&mut a, &mut kept).await;
    // One byte of the first frame was read before: its rest, the second frame, one byte more.
    let first = 32 * 1024 - 1;
    assert!(kept[..first].iter().all(|&x| x == 0));
    assert!(kept[first..KEPT - 1].iter().all(|&x| x == 1) && kept[KEPT - 1] == 2);
    let err = a.read(&mut one).await.expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(client.buffered_bytes(), 0);
    assert!(a.write_all(b"x").await.is_err(), "no writes after a reset");
    drop(a);
    assert!(!client.is_closed());
}

#[tokio::test]
async fn fins_before_data_are_logged_by_position_even_for_dropped_streams() {
    let (raw, transport) = duplex(1 << 20);
    let client = Session::client(transport, no_keepalive()).expect("config");
    let mut a = client.open_stream().await.expect("open a"); // 3: gets data, then FIN
    let b = client.open_stream().await.expect("open b"); // 5: FIN first, still open here
    let c = client.open_stream().await.expect("open c"); // 7: dropped here, then FIN
    let (mut peer_rx, mut peer_tx) = tokio::io::split(raw);
    for _ in 0..3 {
        assert_eq!(read_header(&mut peer_rx).await.cmd, Cmd::Syn);
    }
    drop(c);
    assert_eq!(read_header(&mut peer_rx).await.cmd, Cmd::Fin);
    peer_tx.write_all(&psh(3, b"data")).await.unwrap(); // bytes 0..12
    peer_tx.write_all(&frame(1, 0, 3)).await.unwrap(); // 12..20: not empty
    peer_tx.write_all(&frame(1, 0, 5)).await.unwrap(); // 20..28: empty
    peer_tx.write_all(&frame(1, 0, 7)).await.unwrap(); // 28..36: empty (dropped here)
    peer_tx.write_all(&frame(1, 0, 7)).await.unwrap(); // a repeat counts once
    let mut buf = [0u8; 8];
    timeout_read(&mut a, &mut buf[..4]).await;
    let started = Instant::now();
    while client.empty_fin_offsets().len() < 2 {
        assert!(started.elapsed() < GUARD, "FINs not seen");
        tokio::task::yield_now().await;
    }
    assert_eq!(client.empty_fin_offsets(), [20, 28]);
    assert_eq!(b.empty_fin_offset(), Some(20));
    assert_eq!(a.empty_fin_offset(), None, "it had data");
}
