//! The SSM tunnel (library API: `SsmTunnel` over the real control plane and WebSocket) against
//! the simulator's AWS limits and failure knobs: every way opening a session can fail leaves no
//! session open in the simulator, and a transfer under `SsmSimOptions::aws_limits()` is never
//! cut by the gateway's rate limit.
//!
//! Cleanup is judged against the agent's own 15 s handshake timeout, which would end a
//! forgotten session by itself: each failure happens within a few seconds of StartSession and
//! the sessions must be gone well before 15 s, ended by the client (TerminateSession), not by
//! that timer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::{timeout, Instant};

use rds_auth_proxy_sim::sigv4::SimCredentials;
use rds_auth_proxy_sim::ssm::{SsmSim, SsmSimOptions, SsmSimStats};
use rds_auth_proxy::tunnel::ssm::api::{ApiError, SsmApi};
use rds_auth_proxy::tunnel::ssm::websocket::WsConnector;
use rds_auth_proxy::tunnel::ssm::{SsmError, SsmSettings, SsmStream, SsmTunnel};

const REGION: &str = "eu-central-1";
const DB_HOST: &str = "simdb.c0sim0000000.eu-central-1.rds.amazonaws.com";
const AKID: &str = "AKIASIMLIMITS0000000";
const SECRET: &str = "simlimitssimlimitssimlimitssimlimits0000";

/// Turns a hang into a failure; never used to wait for something.
const GUARD: Duration = Duration::from_secs(30);

/// How long the client, as the proxy's connect limit would, waits for `open()` in the cases
/// where the open itself hangs.
const CALLER_GIVES_UP: Duration = Duration::from_secs(3);

/// How long after a failed open the simulator may still count the session as open. Together
/// with the failure's own few seconds this stays under the agent's 15 s handshake timeout.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(8);

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

struct Rig {
    sim: SsmSim,
    tunnel: SsmTunnel,
}

/// The simulator (its node reaches `DB_HOST` at an echo server, nothing else) and a tunnel
/// to `host`, with `tune` applied to the settings.
async fn rig(options: SsmSimOptions, host: &str, tune: impl FnOnce(&mut SsmSettings)) -> Rig {
    rds_auth_proxy::tls::install_default_provider();
    let echo = echo_server().await;
    let sim = SsmSim::start(
        options,
        SimCredentials::new(AKID, SECRET),
        REGION,
        HashMap::from([(DB_HOST.to_owned(), echo)]),
    )
    .await
    .expect("sim starts");
    let api = SsmApi::with_credentials(
        aws_credential_types::Credentials::from_keys(AKID, SECRET, None),
        REGION,
        Some(&sim.endpoint_url()),
    );
    let mut settings = SsmSettings::new(sim.target_id().to_owned(), host.to_owned(), 5432);
    tune(&mut settings);
    let tunnel = SsmTunnel::new(
        settings,
        Arc::new(api),
        Arc::new(WsConnector::new(None).expect("connector")),
    );
    Rig { sim, tunnel }
}

/// The simulator has no session left open, within [`CLEANUP_DEADLINE`], and the client is
/// what ended them (not the agent's handshake timeout).
async fn assert_no_session_left(sim: &SsmSim, case: &str) {
    let stats = sim.stats();
    if let Err(open) = stats.wait_for_open_sessions(0, CLEANUP_DEADLINE).await {
        panic!(
            "{case}: {open} SSM session(s) still open {CLEANUP_DEADLINE:?} after the failure \
             (started {}, TerminateSession calls {}, terminate flags {})",
            stat(&stats.sessions_started),
            stat(&stats.terminate_api_calls),
            stat(&stats.terminate_flags),
        );
    }
    assert_eq!(
        stat(&stats.handshake_timeouts),
        0,
        "{case}: the agent's timer ended a session the client forgot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_session_refused_leaves_nothing_open() {
    let options = SsmSimOptions {
        refuse_start: Some("AccessDeniedException".to_owned()),
        ..SsmSimOptions::default()
    };
    let rig = rig(options, DB_HOST, |_| {}).await;
    let err = timeout(GUARD, rig.tunnel.open())
        .await
        .expect("fails in time")
        .expect_err("StartSession is refused");
    match &err {
        SsmError::Api(ApiError::AccessDenied { message, .. }) => {
            assert!(
                message.contains("is not authorized to perform: ssm:StartSession"),
                "{message}"
            );
        }
        other => panic!("expected AccessDenied, got {other:?}"),
    }
    let stats = rig.sim.stats();
    assert_eq!(stat(&stats.starts_refused), 1);
    assert_eq!(stat(&stats.sessions_started), 0);
    assert_no_session_left(&rig.sim, "StartSession refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_websocket_upgrade_leaves_nothing_open() {
    let options = SsmSimOptions {
        hang_upgrade: true,
        ..SsmSimOptions::default()
    };
    let rig = rig(options, DB_HOST, |s| {
        s.data_channel.handshake_timeout = Duration::from_secs(2);
    })
    .await;
    // The upgrade never answers; whichever gives up first (the client's own upgrade limit or
    // the caller), the open fails.
    let opened = timeout(CALLER_GIVES_UP, rig.tunnel.open()).await;
    assert!(
        !matches!(opened, Ok(Ok(_))),
        "no stream without a data channel"
    );
    let stats = rig.sim.stats();
    assert_eq!(stat(&stats.sessions_started), 1);
    assert_eq!(stat(&stats.upgrades_hung), 1);
    assert_no_session_left(&rig.sim, "WebSocket upgrade hung").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_leaves_nothing_open() {
    let options = SsmSimOptions {
        hang_handshake: true,
        ..SsmSimOptions::default()
    };
    let rig = rig(options, DB_HOST, |s| {
        s.data_channel.handshake_timeout = Duration::from_secs(2);
    })
    .await;
    let err = timeout(GUARD, rig.tunnel.open())
        .await
        .expect("fails in time")
        .expect_err("no handshake");
    assert!(
        matches!(
            &err,
            SsmError::DataChannel {
                source:
                    rds_auth_proxy::tunnel::ssm::datachannel::DataChannelError::HandshakeTimeout(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(stat(&rig.sim.stats().ws_connections), 1);
    assert_no_session_left(&rig.sim, "handshake timed out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_abandoned_mid_handshake_leaves_nothing_open() {
    // The caller (the proxy's client-facing connect limit) gives up first; the open goes on
    // detached and, when its own handshake limit passes, terminates the session.
    let options = SsmSimOptions {
        hang_handshake: true,
        ..SsmSimOptions::default()
    };
    let rig = rig(options, DB_HOST, |s| {
        s.data_channel.handshake_timeout = Duration::from_secs(5);
    })
    .await;
    let opened = timeout(CALLER_GIVES_UP, rig.tunnel.open()).await;
    assert!(opened.is_err(), "the caller gave up first: {opened:?}");
    assert_eq!(stat(&rig.sim.stats().sessions_started), 1);
    assert_no_session_left(&rig.sim, "open abandoned by the caller").await;
    assert!(stat(&rig.sim.stats().terminate_api_calls) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_abandoned_by_the_caller_still_joins_the_pool() {
    // A slow handshake outlasts the first caller, then completes: the session is not wasted
    // (nor leaked) but serves the next connection.
    let options = SsmSimOptions {
        hang_handshake: true,
        ..SsmSimOptions::default()
    };
    let rig = rig(options, DB_HOST, |_| {}).await;
    let opened = timeout(CALLER_GIVES_UP, rig.tunnel.open()).await;
    assert!(opened.is_err(), "the caller gave up first: {opened:?}");
    rig.sim.options().update(|o| o.hang_handshake = false);
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .expect("in time")
        .expect("the next connection gets the session");
    stream.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    stream.read_exact(&mut back).await.expect("echo");
    assert_eq!(&back, b"ping");
    let stats = rig.sim.stats();
    assert_eq!(stat(&stats.sessions_started), 1, "one session, reused");
    assert_eq!(stat(&stats.handshake_timeouts), 0);
    drop(stream);
    rig.tunnel.shutdown().await;
    assert_no_session_left(&rig.sim, "after shutdown").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_port_leaves_nothing_open() {
    // The node's dial fails (ConnectToPortError + FIN on the stream); the session itself is
    // healthy, so it goes when the pool retires unused sessions (short here).
    let rig = rig(SsmSimOptions::default(), "unreachable.example", |s| {
        s.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let failed_at = Instant::now();
    let result = timeout(GUARD, async {
        let mut stream: SsmStream = rig.tunnel.open().await?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.map_err(|e| {
            SsmError::from_io(&e)
                .cloned()
                .unwrap_or(SsmError::ShuttingDown)
        })?;
        Ok::<usize, SsmError>(n)
    })
    .await
    .expect("in time");
    match result {
        Err(SsmError::ConnectToPort { host, port, .. }) => {
            assert_eq!((host.as_str(), port), ("unreachable.example", 5432));
        }
        other => panic!("expected ConnectToPort, got {other:?}"),
    }
    assert_eq!(stat(&rig.sim.stats().connect_errors), 1);
    assert_no_session_left(&rig.sim, "the node cannot reach the port").await;
    assert!(failed_at.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_under_aws_limits_is_never_cut() {
    let rig = rig(SsmSimOptions::aws_limits(), DB_HOST, |_| {}).await;
    let mut stream = timeout(GUARD, rig.tunnel.open())
        .await
        .expect("in time")
        .expect("open");
    // 2 MiB each way at once: ~2000 client messages, so an unpaced client exceeds 1000/s.
    let data: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (mut rx, mut tx) = tokio::io::split(&mut stream);
    let write = async {
        tx.write_all(&data).await?;
        tx.flush().await
    };
    let read = async {
        let mut back = vec![0u8; data.len()];
        rx.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    let (w, r) = timeout(Duration::from_secs(60), async { tokio::join!(write, read) })
        .await
        .expect("echo in time");
    w.expect("write");
    assert!(r.expect("read") == data, "byte-exact");
    let stats = rig.sim.stats();
    let peak = stat(&stats.peak_client_msgs_per_sec);
    assert_eq!(
        stat(&stats.rate_limit_cuts),
        0,
        "the gateway cut the client (peak {peak} msgs/s)"
    );
    assert!(peak <= 1000, "peak {peak} msgs/s");
    assert_eq!(stat(&stats.ws_connections), 1, "one WebSocket throughout");
    rig.tunnel.shutdown().await;
}
