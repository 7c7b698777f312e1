//! The real SSM client (API over HTTP with SigV4, WebSocket, data channel, smux, pool) against
//! the built-in simulator, with a local TCP echo server standing in for the database.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

use super::*;
use rds_auth_proxy_sim::sigv4::SimCredentials;
use rds_auth_proxy_sim::ssm::{SsmSim, SsmSimOptions, SsmSimStats};
use crate::tunnel::ssm::api::{ApiError, SsmApi};
use crate::tunnel::ssm::websocket::WsConnector;

/// Turns a hang into a failure; never used to wait for something.
const GUARD: Duration = Duration::from_secs(30);
const REGION: &str = "eu-central-1";
const DB_HOST: &str = "simdb.c0sim0000000.eu-central-1.rds.amazonaws.com";
const AKID: &str = "AKIASIMTEST000000000";
const SECRET: &str = "simsecretsimsecretsimsecretsimsecret0000";

fn stat(counter: &AtomicU64) -> u64 {
    SsmSimStats::get(counter)
}

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

struct Rig {
    sim: SsmSim,
    tunnel: SsmTunnel,
}

async fn rig_with(options: SsmSimOptions, tune: impl FnOnce(&mut SsmSettings)) -> Rig {
    rig_to(echo_server().await, options, tune).await
}

/// The simulator, its node reaching `DB_HOST` at `server`, and a tunnel to it.
async fn rig_to(
    server: SocketAddr,
    options: SsmSimOptions,
    tune: impl FnOnce(&mut SsmSettings),
) -> Rig {
    let sim = SsmSim::start(
        options,
        SimCredentials::new(AKID, SECRET),
        REGION,
        HashMap::from([(DB_HOST.to_owned(), server)]),
    )
    .await
    .expect("sim starts");
    let api = SsmApi::with_credentials(
        aws_credential_types::Credentials::from_keys(AKID, SECRET, None),
        REGION,
        Some(&sim.endpoint_url()),
    );
    let mut settings = SsmSettings::new(sim.target_id().to_owned(), DB_HOST.to_owned(), 5432);
    tune(&mut settings);
    let tunnel = SsmTunnel::new(
        settings,
        Arc::new(api),
        Arc::new(WsConnector::new(None).expect("connector")),
    );
    Rig { sim, tunnel }
}

async fn rig(options: SsmSimOptions) -> Rig {
    rig_with(options, |_| {}).await
}

/// Writes `data` and reads the echo back concurrently (larger than any buffer, so both
/// directions must flow at once).
async fn echo(stream: &mut SsmStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let (mut rx, mut tx) = tokio::io::split(stream);
    let write = async {
        tx.write_all(data).await?;
        tx.flush().await
    };
    let read = async {
        let mut got = vec![0u8; data.len()];
        rx.read_exact(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    let (w, r) = tokio::join!(write, read);
    w?;
    r
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn echo_through_one_session() {
    let rig = rig(SsmSimOptions::default()).await;
    assert!(rig.tunnel.describe().contains("no session open yet"));
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    let data = pattern(100_000, 1);
    assert_eq!(
        timeout(GUARD, echo(&mut stream, &data))
            .await
            .unwrap()
            .unwrap(),
        data
    );
    let described = rig.tunnel.describe();
    assert!(
        described.starts_with(&format!("SSM via {} (session ", rig.sim.target_id())),
        "{described}"
    );
    let info = rig
        .sim
        .session_info(stream.session_id())
        .expect("session known");
    assert_eq!(info.mux, Some(true));
    assert_eq!(info.agent_keepalive, Some(false));
}

#[tokio::test]
async fn two_hundred_concurrent_streams_share_one_session() {
    let rig = rig(SsmSimOptions::default()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let tunnel = rig.tunnel.clone();
        tasks.spawn(async move {
            let mut stream = tunnel.open().await.expect("open");
            let data = pattern(2000 + i as usize, i as u8);
            assert_eq!(echo(&mut stream, &data).await.expect("echo"), data);
        });
    }
    timeout(GUARD * 2, async {
        while let Some(r) = tasks.join_next().await {
            r.expect("stream task");
        }
    })
    .await
    .expect("all streams done");
    let stats = rig.sim.stats();
    assert_eq!(stat(&stats.sessions_started), 1);
    assert_eq!(stat(&stats.streams_opened), 200);
}

#[tokio::test]
async fn idle_connections_share_one_session() {
    let rig = rig_with(SsmSimOptions::default(), |s| s.max_sessions = 3).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(
            timeout(GUARD, rig.tunnel.open())
                .await
                .unwrap()
                .expect("open"),
        );
    }
    let mut ids: Vec<&str> = streams.iter().map(|s| s.session_id()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 1, "quiet connections need no second session");
    assert_eq!(stat(&rig.sim.stats().sessions_started), 1);
}

#[tokio::test]
async fn websocket_killed_mid_transfer_is_resumed() {
    let rig = rig(SsmSimOptions {
        kill_ws_after_messages: Some(150),
        ..SsmSimOptions::default()
    })
    .await;
    // Killed once: a connection that dies every 150 messages never gets a 512-message
    // window replayed, which is not what the service does (it drops hourly).
    let stats = rig.sim.stats();
    let knobs = rig.sim.options();
    let watcher = tokio::spawn({
        let stats = stats.clone();
        async move {
            while stat(&stats.ws_killed) == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            knobs.update(|o| o.kill_ws_after_messages = None);
        }
    });
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    let data = pattern(600_000, 7);
    assert_eq!(
        timeout(GUARD * 2, echo(&mut stream, &data))
            .await
            .unwrap()
            .unwrap(),
        data
    );
    watcher.abort();
    assert!(stat(&stats.ws_killed) >= 1);
    assert!(stat(&stats.sessions_resumed) >= 1);
    assert_eq!(stat(&stats.sessions_started), 1);
}

#[tokio::test]
async fn lossy_channel_is_byte_exact() {
    let rig = rig(SsmSimOptions {
        drop_rate: 0.02,
        duplicate_rate: 0.02,
        reorder_rate: 0.02,
        seed: 42,
        ..SsmSimOptions::default()
    })
    .await;
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    let data = pattern(300_000, 3);
    assert_eq!(
        timeout(GUARD * 2, echo(&mut stream, &data))
            .await
            .unwrap()
            .unwrap(),
        data
    );
}

#[tokio::test]
async fn refused_resume_fails_streams_and_next_connection_gets_a_fresh_session() {
    let rig = rig(SsmSimOptions {
        kill_ws_after_messages: Some(40),
        refuse_resume: true,
        ..SsmSimOptions::default()
    })
    .await;
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    let first = stream.session_id().to_owned();
    let err = timeout(GUARD, echo(&mut stream, &pattern(200_000, 9)))
        .await
        .unwrap()
        .expect_err("the session dies");
    let ssm = SsmError::from_io(&err).expect("an SSM reason");
    assert!(ssm.to_string().contains(&first), "{ssm}");
    assert!(format!("{:?}", ssm).contains("ResumeRefused"), "{ssm:?}");
    drop(stream);

    rig.sim
        .options()
        .update(|o| o.kill_ws_after_messages = None);
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("reopen");
    assert_ne!(stream.session_id(), first);
    let data = pattern(10_000, 4);
    assert_eq!(
        timeout(GUARD, echo(&mut stream, &data))
            .await
            .unwrap()
            .unwrap(),
        data
    );
    assert_eq!(stat(&rig.sim.stats().sessions_started), 2);
}

#[tokio::test]
async fn shutdown_terminates_with_flag_and_api() {
    let rig = rig(SsmSimOptions::default()).await;
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    assert_eq!(echo(&mut stream, b"x").await.unwrap(), b"x");
    drop(stream);
    timeout(GUARD, rig.tunnel.shutdown()).await.unwrap();
    let stats = rig.sim.stats();
    assert_eq!(stat(&stats.terminate_flags), 1);
    assert_eq!(stat(&stats.terminate_api_calls), 1);
    assert!(matches!(
        rig.tunnel.open().await,
        Err(SsmError::ShuttingDown)
    ));
}

#[tokio::test]
async fn node_that_cannot_reach_the_database_is_reported() {
    let rig = rig_with(SsmSimOptions::default(), |s| {
        s.host = "unreachable.example".into()
    })
    .await;
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    let err = timeout(
        GUARD,
        echo(&mut stream, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
    )
    .await
    .unwrap()
    .expect_err("dial fails on the node");
    let ssm = SsmError::from_io(&err).expect("an SSM reason");
    assert!(matches!(ssm, SsmError::ConnectToPort { .. }), "{ssm:?}");
    assert!(
        ssm.to_string()
            .contains("could not connect to unreachable.example:5432"),
        "{ssm}"
    );
    // The session itself is fine: the next stream works once the host is right.
    assert_eq!(rig.tunnel.session_ids().len(), 1);
}

#[tokio::test]
async fn unknown_node_and_bad_credentials_are_explained() {
    let rig = rig_with(SsmSimOptions::default(), |s| {
        s.target = "i-00000000000000bad".into()
    })
    .await;
    let err = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, SsmError::Api(ApiError::TargetNotConnected { .. })),
        "{err:?}"
    );
    assert!(err.hint().contains("i-00000000000000bad"));

    let api = SsmApi::with_credentials(
        aws_credential_types::Credentials::from_keys(AKID, "wrong-secret", None),
        REGION,
        Some(&rig.sim.endpoint_url()),
    );
    let tunnel = SsmTunnel::new(
        SsmSettings::new(rig.sim.target_id().into(), DB_HOST.into(), 5432),
        Arc::new(api),
        Arc::new(WsConnector::new(None).unwrap()),
    );
    let err = timeout(GUARD, tunnel.open()).await.unwrap().unwrap_err();
    assert!(
        matches!(err, SsmError::Api(ApiError::CredentialsRefused { .. })),
        "{err:?}"
    );
    assert!(!err.to_string().contains("wrong-secret"));
}

#[tokio::test]
async fn idle_session_is_terminated_and_replaced() {
    let rig = rig_with(SsmSimOptions::default(), |s| {
        s.idle_timeout = Duration::from_millis(200)
    })
    .await;
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    let first = stream.session_id().to_owned();
    assert_eq!(echo(&mut stream, b"a").await.unwrap(), b"a");
    drop(stream);
    let stats = rig.sim.stats();
    timeout(GUARD, async {
        while stat(&stats.terminate_api_calls) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("idle session terminated");
    assert!(rig.tunnel.session_ids().is_empty());
    let stream = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("reopen");
    assert_ne!(stream.session_id(), first);
}

#[tokio::test]
async fn old_agent_gets_one_session_per_connection() {
    let rig = rig(SsmSimOptions {
        agent_version: "3.0.100.0".into(),
        ..SsmSimOptions::default()
    })
    .await;
    let mut a = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open a");
    let mut b = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open b");
    assert_ne!(a.session_id(), b.session_id());
    assert_eq!(echo(&mut a, b"first").await.unwrap(), b"first");
    assert_eq!(echo(&mut b, b"second").await.unwrap(), b"second");
    let info = rig.sim.session_info(a.session_id()).expect("known");
    assert_eq!(info.mux, Some(false));
    drop(a);
    let stats = rig.sim.stats();
    timeout(GUARD, async {
        while stat(&stats.terminate_api_calls) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("basic session terminated on close");
}

/// A database stand-in that answers each connection's first 4 bytes (a big-endian length) with
/// that many pattern bytes, then echoes whatever else arrives.
async fn blaster() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                if tcp.read_exact(&mut len).await.is_err() {
                    return;
                }
                let data = pattern(u32::from_be_bytes(len) as usize, 7);
                let (mut rx, mut tx) = tcp.split();
                if tx.write_all(&data).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy(&mut rx, &mut tx).await;
            });
        }
    });
    addr
}

async fn blaster_rig(options: SsmSimOptions, tune: impl FnOnce(&mut SsmSettings)) -> Rig {
    rig_to(blaster().await, options, tune).await
}

/// Opens a stream and asks the blaster for `len` bytes.
async fn ask(tunnel: &SsmTunnel, len: u32) -> SsmStream {
    let mut stream = timeout(GUARD, tunnel.open())
        .await
        .expect("in time")
        .expect("open");
    stream.write_all(&len.to_be_bytes()).await.expect("ask");
    stream
}

/// Polls the pool until `cond` holds (bounded by [`GUARD`]).
async fn until_load(tunnel: &SsmTunnel, what: &str, cond: impl Fn(&[SessionLoad]) -> bool) {
    let started = tokio::time::Instant::now();
    while !cond(&tunnel.load()) {
        assert!(
            started.elapsed() < GUARD,
            "timed out waiting for {what}: {:?}",
            tunnel.load()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_never_blocks_new_connections() {
    let rig = blaster_rig(SsmSimOptions::default(), |s| {
        s.stream_buffer = 256 * 1024;
        s.session_buffer = 1 << 20;
    })
    .await;
    let total = 16 << 20;
    // This client asks for 16 MiB and then does not read.
    let mut stalled = ask(&rig.tunnel, total as u32).await;
    let stalled_session = stalled.session_id().to_owned();
    until_load(&rig.tunnel, "the session to congest", |l| {
        l.iter().any(|s| s.congested)
    })
    .await;

    // Every new connection meanwhile is served at once, by another session.
    for i in 0..3u8 {
        let started = tokio::time::Instant::now();
        let mut other = ask(&rig.tunnel, 0).await;
        let msg = pattern(1000, i);
        let back = timeout(Duration::from_secs(2), echo(&mut other, &msg))
            .await
            .expect("served within 2 s while another client stalls")
            .expect("echo");
        assert_eq!(back, msg);
        assert_ne!(other.session_id(), stalled_session);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let sessions = stat(&rig.sim.stats().sessions_started);
    assert!((2..=4).contains(&sessions), "{sessions} sessions");

    // The stalled client comes back and gets every byte.
    let mut got = vec![0u8; total];
    timeout(GUARD, stalled.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert!(got == pattern(total, 7), "every byte, in order");
    assert_eq!(stat(&rig.sim.stats().ws_killed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_makes_the_next_connection_open_another_session() {
    let rig = blaster_rig(
        SsmSimOptions {
            pacing: Some(Duration::from_millis(1)),
            ..SsmSimOptions::default()
        },
        |_| {},
    )
    .await;
    let total = 8 << 20;
    let mut bulk = ask(&rig.tunnel, total as u32).await;
    let bulk_session = bulk.session_id().to_owned();
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; total];
        bulk.read_exact(&mut got).await.map(|_| got)
    });
    until_load(&rig.tunnel, "the bulk session to count as busy", |l| {
        l.iter().any(|s| s.busy)
    })
    .await;
    let mut quick = ask(&rig.tunnel, 0).await;
    assert_ne!(
        quick.session_id(),
        bulk_session,
        "not behind the bulk transfer"
    );
    assert_eq!(echo(&mut quick, b"hello").await.expect("echo"), b"hello");
    // With both sessions quiet again, connections share the least-loaded one.
    drop(quick);
    reader.abort();
    assert_eq!(stat(&rig.sim.stats().sessions_started), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_when_the_gateway_stops_reading() {
    let rig = rig(SsmSimOptions::default()).await;
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(echo(&mut stream, b"x").await.expect("echo"), b"x");
    rig.sim.options().update(|o| o.stop_reading = true);
    let (_rx, mut tx) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        let _ = tx.write_all(&vec![1u8; 16 << 20]).await;
        tx
    });
    // Let the writes pile up behind the gateway that no longer reads.
    until_load(&rig.tunnel, "the upload to stall", |l| {
        l.iter().any(|s| s.stats.messages_out >= 500)
    })
    .await;
    let started = tokio::time::Instant::now();
    timeout(Duration::from_secs(8), rig.tunnel.shutdown())
        .await
        .expect("shutdown is bounded even with a stuck WebSocket");
    assert!(started.elapsed() < Duration::from_secs(8));
    writer.abort();
    assert!(
        stat(&rig.sim.stats().terminate_api_calls) >= 1,
        "TerminateSession called"
    );
    assert!(rig
        .sim
        .stats()
        .wait_for_open_sessions(0, Duration::from_secs(5))
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_websocket_write_is_resumed_not_hung() {
    let rig = rig_with(SsmSimOptions::default(), |s| {
        // Short enough to keep the test quick, long enough that a loaded 2-core machine (the
        // simulator shares this process) still writes one buffer's worth within it: at 2 s a
        // starved simulator made every resumed WebSocket look stuck too, again and again.
        s.data_channel.write_timeout = Duration::from_secs(6);
        s.data_channel.max_rate = 0;
        // A window far larger than loopback's socket buffers, so the writes really stall
        // (with the default 512 messages the kernel would absorb them all).
        s.data_channel.reliable.outgoing_window = 30_000;
        s.data_channel.dead_after = Duration::from_secs(600);
    })
    .await;
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(echo(&mut stream, b"x").await.expect("echo"), b"x");
    // The gateway stops reading this WebSocket: our writes fill the socket buffers and stall.
    rig.sim.options().update(|o| o.stop_reading = true);
    let data = pattern(12 << 20, 9);
    // A guard against a hang, not a speed bound: 12 MiB through a debug build takes minutes on
    // a loaded 2-core machine, and a stuck write never finishes at all.
    let back = timeout(Duration::from_secs(300), echo(&mut stream, &data))
        .await
        .expect("the transfer finishes on a resumed WebSocket instead of hanging")
        .expect("echo");
    assert!(back == data, "byte-exact across the resume");
    let stats = rig.sim.stats();
    assert!(stat(&stats.reads_stopped) >= 1);
    assert!(stat(&stats.sessions_resumed) >= 1, "resumed after the stuck write");
    assert_eq!(stat(&stats.sessions_started), 1, "same session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_acks_from_the_agent_is_survived() {
    let rig = rig(SsmSimOptions::default()).await;
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .expect("in time")
        .expect("open");
    rig.sim.options().update(|o| o.hold_acks = true);
    let data = pattern(64 * 1024, 4);
    assert!(echo(&mut stream, &data).await.expect("echo") == data);
    let resends_before = rig.tunnel.load()[0].stats.resends;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let load = rig.tunnel.load();
    assert_eq!(load.len(), 1, "the session is still there");
    let resends = load[0].stats.resends - resends_before;
    // 64 unacked messages backing off to 8 s: a few hundred resends, not 64 × 300.
    assert!(resends < 64 * 15, "{resends} resends during the gap");
    rig.sim.options().update(|o| o.hold_acks = false);
    let more = pattern(8 * 1024, 5);
    assert!(echo(&mut stream, &more).await.expect("echo after the gap") == more);
    assert_eq!(stat(&rig.sim.stats().sessions_started), 1);
    assert!(stat(&rig.sim.stats().acks_held) > 0);
}

/// Polls `cond` (bounded by [`GUARD`]); the simulator's counters move on their own tasks.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let started = tokio::time::Instant::now();
    while !cond() {
        assert!(started.elapsed() < GUARD, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `--ssm-prewarm`: a session opens with no connection asking, the first connection runs in
/// it, and once idle it outlives the idle timeout, kept open with keepalives.
#[tokio::test]
async fn prewarm_opens_a_session_at_start_and_keeps_it_open() {
    let rig = rig_with(SsmSimOptions::default(), |s| {
        s.prewarm = true;
        s.idle_timeout = Duration::from_millis(200);
        s.keepalive_interval = Duration::from_millis(100);
    })
    .await;
    let stats = rig.sim.stats();
    rig.tunnel.start_prewarm();
    until("the prewarmed session", || rig.tunnel.session_ids().len() == 1).await;
    let warm = rig.tunnel.session_ids();
    let mut stream = timeout(GUARD, rig.tunnel.open()).await.unwrap().expect("open");
    assert_eq!(stream.session_id(), warm[0], "the first connection runs in the prewarmed session");
    assert_eq!(echo(&mut stream, b"warm").await.unwrap(), b"warm");
    assert_eq!(stat(&stats.sessions_started), 1);
    drop(stream);
    // Idle again: more keepalives than fit in two idle timeouts, and the session is kept.
    let before = stat(&stats.client_keepalives);
    until("keepalives on the idle session", || stat(&stats.client_keepalives) >= before + 5).await;
    assert_eq!(rig.tunnel.session_ids(), warm, "the idle timeout did not retire it");
    assert_eq!(stat(&stats.terminate_api_calls), 0);
    assert_eq!(stat(&stats.sessions_started), 1, "no more sessions than the one kept");
}

/// The kept session ended (here the service's idle timeout, which keepalives slower than it
/// cannot prevent): another opens at once, with no connection asking.
#[tokio::test]
async fn prewarm_reopens_when_the_kept_session_ends() {
    let rig = rig_with(
        SsmSimOptions {
            idle_timeout: Some(Duration::from_millis(300)),
            ..SsmSimOptions::default()
        },
        |s| s.prewarm = true,
    )
    .await;
    let stats = rig.sim.stats();
    rig.tunnel.start_prewarm();
    until("the prewarmed session", || rig.tunnel.session_ids().len() == 1).await;
    let first = rig.tunnel.session_ids();
    until("the service's idle timeout", || stat(&stats.idle_timeouts) == 1).await;
    until("a new kept session", || {
        let ids = rig.tunnel.session_ids();
        ids.len() == 1 && ids != first
    })
    .await;
    assert_eq!(stat(&stats.sessions_started), 2);
}

/// A prewarm that cannot open a session is not fatal: it is tried, connections get the usual
/// error meanwhile, and once StartSession works they get a session as usual.
#[tokio::test]
async fn a_failed_prewarm_leaves_connections_working() {
    let rig = rig_with(
        SsmSimOptions {
            refuse_start: Some("AccessDeniedException".into()),
            ..SsmSimOptions::default()
        },
        |s| s.prewarm = true,
    )
    .await;
    let stats = rig.sim.stats();
    rig.tunnel.start_prewarm();
    until("the prewarm's StartSession", || stat(&stats.starts_refused) >= 1).await;
    let err = timeout(GUARD, rig.tunnel.open()).await.unwrap().expect_err("refused");
    assert!(matches!(err, SsmError::Api(_)), "{err:?}");
    rig.sim.options().update(|o| o.refuse_start = None);
    let mut stream = timeout(GUARD, rig.tunnel.open()).await.unwrap().expect("open");
    assert_eq!(echo(&mut stream, b"ok").await.unwrap(), b"ok");
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_during_a_hung_resume_goes_to_a_new_session() {
    let rig = rig_with(SsmSimOptions::default(), |s| {
        s.data_channel.resume_timeout = Duration::from_millis(300);
        s.data_channel.reconnect_budget = Duration::from_secs(3);
    })
    .await;
    let stats = rig.sim.stats();
    let mut first = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    assert_eq!(echo(&mut first, b"hello").await.expect("echo"), b"hello");
    let first_id = first.session_id().to_owned();

    // The WebSocket dies with the next message, and ResumeSession never answers.
    rig.sim.options().update(|o| {
        o.hang_resume = true;
        o.kill_ws_after_messages = Some(1);
    });
    first.write_all(b"ping").await.expect("write");
    until("the WebSocket to be killed", || stat(&stats.ws_killed) >= 1).await;
    rig.sim
        .options()
        .update(|o| o.kill_ws_after_messages = None);
    until("a hung ResumeSession", || stat(&stats.resumes_hung) >= 1).await;
    assert!(rig.tunnel.load().iter().any(|l| l.reconnecting));

    // Meanwhile a new client is served at once, by a new session.
    let mut second = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open during the resume");
    assert_ne!(second.session_id(), first_id, "not the session being resumed");
    let data = pattern(5000, 3);
    assert_eq!(
        timeout(GUARD, echo(&mut second, &data))
            .await
            .expect("served, not stuck behind the resume")
            .expect("echo"),
        data
    );

    // The hung request is abandoned after its limit and retried; when the budget is spent the
    // first stream gets the reason instead of hanging, and the session is terminated.
    let mut buf = [0u8; 16];
    let err = timeout(GUARD, async {
        loop {
            match first.read(&mut buf).await {
                Ok(0) => panic!("EOF instead of the reason"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        }
    })
    .await
    .expect("the first stream does not hang");
    let ssm = SsmError::from_io(&err).expect("an SSM reason");
    assert!(format!("{ssm:?}").contains("ReconnectGaveUp"), "{ssm:?}");
    assert!(stat(&stats.resumes_hung) >= 2, "retried after the timeout");
    assert_eq!(
        stats.wait_for_open_sessions(1, GUARD).await,
        Ok(()),
        "the abandoned session is terminated; the new one stays"
    );
    assert!(stat(&stats.terminate_api_calls) >= 1);
    assert_eq!(echo(&mut second, b"still").await.expect("echo"), b"still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_agent_goes_silent_is_terminated() {
    let rig = rig_with(SsmSimOptions::default(), |s| {
        s.data_channel.agent_timeout = Duration::from_secs(1);
    })
    .await;
    let stats = rig.sim.stats();
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    assert_eq!(echo(&mut stream, b"x").await.expect("echo"), b"x");
    assert_eq!(stats.open_sessions(), 1);
    // The agent stops acknowledging: our data waits, and after `agent_timeout` the session is
    // declared dead (AgentUnresponsive).
    rig.sim.options().update(|o| o.hold_acks = true);
    stream.write_all(b"anyone there?").await.expect("write");
    let mut buf = [0u8; 64];
    let err = timeout(GUARD, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => panic!("EOF instead of the reason"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        }
    })
    .await
    .expect("the stream learns the session died");
    let ssm = SsmError::from_io(&err).expect("an SSM reason");
    assert!(format!("{ssm:?}").contains("AgentUnresponsive"), "{ssm:?}");
    // …and the session does not linger on the service until its idle timeout.
    assert_eq!(stats.wait_for_open_sessions(0, GUARD).await, Ok(()));
    // The API call is always made (the flag goes first while the WebSocket is up; which of the
    // two the service acts on first is a race).
    until("the TerminateSession API call", || {
        stat(&stats.terminate_api_calls) >= 1
    })
    .await;
    assert!(stat(&stats.terminate_flags) <= 1);
}

#[tokio::test]
async fn an_unknown_handshake_action_is_declined_and_the_session_goes_on() {
    let rig = rig(SsmSimOptions {
        extra_handshake_action: Some("Teleport".to_owned()),
        ..SsmSimOptions::default()
    })
    .await;
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("a newer agent's unknown action does not fail the handshake");
    let data = pattern(3000, 8);
    assert_eq!(echo(&mut stream, &data).await.expect("echo"), data);
    let info = rig
        .sim
        .session_info(stream.session_id())
        .expect("session known");
    assert_eq!(info.declined_actions, ["Teleport"], "answered, as unsupported");
    assert_eq!(info.mux, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_not_blamed_on_a_later_stream_that_closes_early() {
    // A port nothing listens on yet: the node's dial is refused.
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr")
    };
    let rig = rig_to(addr, SsmSimOptions::default(), |_| {}).await;
    let stats = rig.sim.stats();
    // A connection whose dial fails on the node; its client leaves without reading the reason.
    let failed = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    until("the node's failed dial", || stat(&stats.connect_errors) >= 1).await;
    drop(failed);

    // The database comes up, and closes the next connection at once without a byte.
    let listener = TcpListener::bind(addr).await.expect("rebind the port");
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            drop(tcp);
        }
    });
    let mut later = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    let mut buf = [0u8; 8];
    let read = timeout(GUARD, later.read(&mut buf)).await.unwrap();
    assert!(
        matches!(read, Ok(0)),
        "a plain EOF, not the earlier stream's connect failure: {read:?}"
    );
    drop(later);

    // A real failure afterwards is still reported as one.
    server.abort();
    let _ = server.await;
    let mut again = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    let err = timeout(GUARD, again.read(&mut buf))
        .await
        .unwrap()
        .expect_err("the dial fails again");
    let ssm = SsmError::from_io(&err).expect("an SSM reason");
    assert!(matches!(ssm, SsmError::ConnectToPort { .. }), "{ssm:?}");
    assert_eq!(stat(&stats.sessions_started), 1);
}

#[tokio::test]
async fn basic_mode_connections_leave_the_shutdown_list_when_they_end() {
    let rig = rig(SsmSimOptions {
        agent_version: "3.0.100.0".into(),
        ..SsmSimOptions::default()
    })
    .await;
    let mut kept = timeout(GUARD, rig.tunnel.open())
        .await
        .unwrap()
        .expect("open");
    for i in 0..5u8 {
        let mut stream = timeout(GUARD, rig.tunnel.open())
            .await
            .unwrap()
            .expect("open");
        assert_eq!(echo(&mut stream, &[i; 10]).await.expect("echo"), [i; 10]);
        assert_eq!(rig.tunnel.pool.lock().basic.len(), 2);
    }
    // Only the connection still open is listed (was: every one ever opened, until shutdown).
    assert_eq!(rig.tunnel.pool.lock().basic.len(), 1);
    assert_eq!(echo(&mut kept, b"still").await.expect("echo"), b"still");
    drop(kept);
    assert!(rig.tunnel.pool.lock().basic.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_reset_and_the_other_streams_on_its_session_go_on() {
    let rig = blaster_rig(SsmSimOptions::default(), |s| {
        s.max_sessions = 1;
        s.stream_buffer = 256 * 1024;
        s.session_buffer = 1 << 20;
        s.stall_timeout = Duration::from_secs(1);
    })
    .await;
    // An interactive connection, already open on the session.
    let mut other = ask(&rig.tunnel, 0).await;
    assert_eq!(echo(&mut other, b"before").await.expect("echo"), b"before");
    // This client asks for 16 MiB and stops reading: far past the session's 1 MiB budget.
    let mut stalled = ask(&rig.tunnel, 16 << 20).await;
    assert_eq!(stalled.session_id(), other.session_id(), "one session only");
    let watch = stalled.stall_watch().expect("a mux stream");
    // Without the reset the session would freeze for every stream once the budget is used.
    timeout(GUARD, watch.stalled())
        .await
        .expect("the stalled stream is reset");
    for i in 0..5u8 {
        let msg = pattern(2000, i);
        let back = timeout(GUARD, echo(&mut other, &msg))
            .await
            .expect("the other connection keeps answering")
            .expect("echo");
        assert_eq!(back, msg);
    }
    // The stalled client, when it reads again, learns its stream was reset.
    let mut buf = vec![0u8; 64 * 1024];
    let err = timeout(GUARD, async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) => panic!("EOF instead of the reset"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        }
    })
    .await
    .expect("in time");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(rig.tunnel.load()[0].stats.reconnects == 0);
    assert_eq!(stat(&rig.sim.stats().sessions_started), 1);
}
