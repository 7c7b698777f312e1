//! End to end through `--via ssm`: client → proxy → simulated SSM (API + MGS/agent data channel,
//! smux) → simulated RDS (TLS + IAM) → real PostgreSQL, with the simulator's faults switched on.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt};
use sha2::{Digest, Sha256};

use common::*;
use rds_auth_proxy_sim::ssm::{SsmSimOptions, SsmSimStats};
use rds_auth_proxy_sim::{SimOptions, Simulator};
use rds_auth_proxy::tunnel::Tunnel;

fn stat(sim: &Simulator, f: impl Fn(&SsmSimStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(&sim.ssm.stats()).load(Ordering::SeqCst)
}

/// Polls until `cond` holds (the simulator's counters move on their own tasks).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The simulator with AWS's data-channel limits (1024-byte agent payloads, 1 ms agent pacing,
/// a gateway that cuts a client sending more than 1000 data messages a second).
fn aws_like() -> SimOptions {
    SimOptions {
        ssm: SsmSimOptions::aws_limits(),
        ..SimOptions::default()
    }
}

/// Under the AWS-like preset: the gateway never had to cut us, and we stayed under its limit.
fn assert_never_cut(sim: &Simulator) {
    assert_eq!(stat(sim, |s| &s.rate_limit_cuts), 0, "cut by the gateway's rate limit");
    let peak = stat(sim, |s| &s.peak_client_msgs_per_sec);
    assert!(peak <= 1000, "peak {peak} data messages/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_share_one_session() {
    let sim = two_hundred_connections(SimOptions::default(), 1).await;
    assert_eq!(stat(&sim, |s| &s.sessions_started), 1, "one SSM session for all");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_under_aws_limits() {
    // 200 logins at once are a burst of traffic: the elastic pool may add sessions, up to 4.
    let sim = two_hundred_connections(aws_like(), 4).await;
    let sessions = stat(&sim, |s| &s.sessions_started);
    assert!((1..=4).contains(&sessions), "{sessions} sessions");
    assert_never_cut(&sim);
    sim.stop().await;
}

async fn two_hundred_connections(options: SimOptions, max_sessions: usize) -> Simulator {
    let sim = start_sim_with(options).await;
    let mut args = ssm_args(&sim);
    args.extend(["--ssm-sessions".to_owned(), max_sessions.to_string()]);
    let proxy = start_ssm_proxy(&args, &sim).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let conn = proxy.conn_string("db_user");
        tasks.push(tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let row = client.query_one("SELECT $1::int4 * 3", &[&i]).await?;
            Ok::<_, tokio_postgres::Error>((row.get::<_, i32>(0), client))
        }));
    }
    let mut clients = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (v, client) = t.await.unwrap().expect("connection through the tunnel");
        assert_eq!(v, i as i32 * 3);
        clients.push(client);
    }
    assert!(stat(&sim, |s| &s.streams_opened) >= 200);
    drop(clients);
    proxy.stop().await;
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_16_mib_each_way_under_aws_limits_is_byte_exact_and_never_cut() {
    let sim = start_sim_with(aws_like()).await;
    let proxy = start_ssm_proxy(&ssm_args(&sim), &sim).await;
    let client = connect(&proxy, "db_user").await.unwrap();
    client.batch_execute("CREATE TEMP TABLE t (line text)").await.unwrap();
    let data = copy_lines(11, 16 * 1024 * 1024);
    let sink = client.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(256 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap() as usize, data.len() / 100);
    let stream = client.copy_out("COPY t TO STDOUT").await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let back: Vec<u8> = chunks.concat();
    assert!(back == data, "byte-exact both ways");
    assert_never_cut(&sim);
    assert_eq!(stat(&sim, |s| &s.ws_connections), 1, "one WebSocket throughout");
    assert_eq!(stat(&sim, |s| &s.sessions_resumed), 0);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_64_mib_each_way_under_loss_and_a_killed_websocket() {
    let mut options = SimOptions::default();
    options.ssm.drop_rate = 0.01;
    options.ssm.duplicate_rate = 0.01;
    options.ssm.reorder_rate = 0.01;
    let sim = start_sim_with(options).await;
    let proxy = start_ssm_proxy(&ssm_args(&sim), &sim).await;
    let client = connect(&proxy, "db_user").await.unwrap();
    client.batch_execute("CREATE TEMP TABLE t (line text)").await.unwrap();
    let data = copy_lines(7, 64 * 1024 * 1024);
    let sent_sum = hex::encode(Sha256::digest(&data));

    // Kill the WebSocket once, mid-transfer: after the session has carried some traffic.
    let knobs = sim.ssm.options();
    let stats = sim.ssm.stats();
    let killer = tokio::spawn(async move {
        let base = stats.ws_connections.load(Ordering::SeqCst);
        knobs.update(|o| o.kill_ws_after_messages = Some(20_000));
        let started = Instant::now();
        while stats.ws_killed.load(Ordering::SeqCst) == 0 {
            // A deadline, so a kill that never comes fails the test instead of hanging it.
            assert!(started.elapsed() < Duration::from_secs(120), "the WebSocket was never killed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        knobs.update(|o| o.kill_ws_after_messages = None);
        base
    });

    let sink = client.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(256 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap() as usize, data.len() / 100);
    // What PostgreSQL stored, hashed by PostgreSQL: the lines in insertion (ctid) order, each
    // with its newline again, must be exactly the bytes sent.
    let (count, db_sum): (i64, String) = {
        let row = client
            .query_one(
                "SELECT count(*), encode(sha256(convert_to(string_agg(line || E'\\n', '' ORDER BY ctid), 'UTF8')), 'hex') FROM t",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(count as usize, data.len() / 100);
    assert_eq!(db_sum, sent_sum, "PostgreSQL holds exactly the bytes sent");

    let stream = client.copy_out("COPY t TO STDOUT").await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let mut hasher = Sha256::new();
    let mut total = 0;
    for c in &chunks {
        hasher.update(c);
        total += c.len();
    }
    assert_eq!(total, data.len());
    assert_eq!(hex::encode(hasher.finalize()), sent_sum, "byte-exact both ways");

    killer.await.unwrap();
    assert!(stat(&sim, |s| &s.ws_killed) >= 1, "the WebSocket was killed mid-transfer");
    assert!(stat(&sim, |s| &s.sessions_resumed) >= 1, "and the session resumed");
    assert_eq!(stat(&sim, |s| &s.sessions_started), 1, "no new session was needed");
    assert!(stat(&sim, |s| &s.messages_dropped) > 0 && stat(&sim, |s| &s.messages_duplicated) > 0);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_mid_query_and_the_query_completes() {
    let sim = start_sim().await;
    let proxy = start_ssm_proxy(&ssm_args(&sim), &sim).await;
    let client = connect(&proxy, "db_user").await.unwrap();
    sim.ssm.options().update(|o| o.bye_after = Some(Duration::from_millis(500)));
    let row = client
        .query_one("SELECT pg_sleep(1.5), 'still here'::text", &[])
        .await
        .expect("the query survives the service's 1000 Bye");
    assert_eq!(row.get::<_, String>(1), "still here");
    assert!(stat(&sim, |s| &s.ws_byes) >= 1);
    assert!(stat(&sim, |s| &s.sessions_resumed) >= 1);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_with_and_without_open_connections() {
    let mut options = SimOptions::default();
    options.ssm.idle_timeout = Some(Duration::from_secs(2));
    let sim = start_sim_with(options).await;
    let mut args = ssm_args(&sim);
    args.extend(["--ssm-keepalive".into(), "1".into()]);
    let proxy = start_ssm_proxy(&args, &sim).await;

    // An open but quiet connection: the proxy's keepalive keeps the session from timing out.
    // Wait for the simulated agent to receive four keepalives (smux NOPs, nothing else on a
    // quiet connection): sent a second apart, the first and the fourth are 3 s apart, more than
    // the 2 s idle timeout, so only the keepalives can have kept the session open.
    let client = connect(&proxy, "db_user").await.unwrap();
    let quiet_since = Instant::now();
    let seen = stat(&sim, |s| &s.client_keepalives);
    eventually("four keepalives on the quiet session", || stat(&sim, |s| &s.client_keepalives) >= seen + 4).await;
    assert!(quiet_since.elapsed() > Duration::from_secs(2), "the keepalives spanned the idle timeout");
    client.simple_query("SELECT 1").await.expect("session still alive");
    assert_eq!(stat(&sim, |s| &s.idle_timeouts), 0);
    drop(client);

    // No connection: the service's idle timeout ends the session; the next connection gets a
    // fresh one transparently.
    eventually("the idle session to time out", || stat(&sim, |s| &s.idle_timeouts) >= 1).await;
    let client = connect(&proxy, "db_user").await.expect("a fresh session");
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(stat(&sim, |s| &s.sessions_started), 2);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_resume_gives_the_next_connection_a_new_session() {
    let sim = start_sim().await;
    let proxy = bind_ssm_proxy(&ssm_args(&sim), &sim).await;
    let Tunnel::Ssm(tunnel) = proxy.ctx.tunnel.clone() else {
        panic!("--via ssm gives an SSM tunnel");
    };
    let proxy = RunningProxy::spawn(proxy);
    connect(&proxy, "db_user").await.unwrap().simple_query("SELECT 1").await.unwrap();
    assert_eq!(tunnel.session_ids().len(), 1);
    sim.ssm.options().update(|o| {
        o.refuse_resume = true;
        o.kill_ws_after = Some(Duration::from_millis(1));
    });
    eventually("the resume to be refused", || stat(&sim, |s| &s.resume_refused) >= 1).await;
    // The simulator counts the refusal before the proxy reads the answer: wait until the proxy
    // has dropped the session from its pool too. Connecting earlier puts the stream on the
    // session whose resume is being refused, and it dies with it; that is not "the next
    // connection" this test is about.
    eventually("the proxy to give the session up", || tunnel.session_ids().is_empty()).await;
    sim.ssm.options().update(|o| {
        o.refuse_resume = false;
        o.kill_ws_after = None;
    });
    let client = connect(&proxy, "db_user").await.expect("a new session");
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(stat(&sim, |s| &s.sessions_started), 2);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cannot_reach_the_database() {
    let sim = start_sim().await;
    let mut args = ssm_args(&sim);
    // The certificate name does not matter: the node cannot even dial this host.
    args[1] = "unknown.c0sim0000000.eu-central-1.rds.amazonaws.com:5432".into();
    let proxy = start_ssm_proxy(&args, &sim).await;
    let (code, message, hint) = db_error(&connect(&proxy, "db_user").await.unwrap_err());
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("could not connect to"), "{message}");
    assert!(hint.unwrap_or_default().contains("unknown.c0sim0000000.eu-central-1.rds.amazonaws.com"));
    assert!(stat(&sim, |s| &s.connect_errors) >= 1);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_through_the_tunnel_and_terminate_on_shutdown() {
    cancel_and_terminate(SimOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_terminate_under_aws_limits() {
    cancel_and_terminate(aws_like()).await;
}

async fn cancel_and_terminate(options: SimOptions) {
    let sim = start_sim_with(options).await;
    let proxy = start_ssm_proxy(&ssm_args(&sim), &sim).await;
    let client = connect(&proxy, "db_user").await.unwrap();
    let token = client.cancel_token();
    let observer = connect(&proxy, "db_user").await.unwrap();
    let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    wait_until_active(&observer, "SELECT pg_sleep(30)").await;
    let at = Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("cancelled in time")
        .unwrap()
        .expect_err("cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"));
    assert!(at.elapsed() < Duration::from_secs(2));
    assert_eq!(sim.front_state.cancels.load(Ordering::SeqCst), 1);
    drop(observer);
    proxy.stop().await;
    assert!(stat(&sim, |s| &s.terminate_flags) >= 1, "TerminateSession flag sent on shutdown");
    assert!(stat(&sim, |s| &s.terminate_api_calls) >= 1, "and the TerminateSession API called");
    sim.stop().await;
}
