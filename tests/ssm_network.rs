//! `--via ssm` over a simulated real network (`SsmSimOptions::real_network()`: 25 ms each way
//! and AWS's early-input window): logins and queries work, and the round trips a connection
//! costs are counted at the agent (`SsmSim::stream_flights`, one "client flight" per time the
//! client had to wait for the far side).

mod common;

use std::time::{Duration, Instant};

use common::*;
use rds_auth_proxy_sim::ssm::{SsmSimOptions, StreamFlights};
use rds_auth_proxy_sim::{SimOptions, Simulator};

fn with_ssm(ssm: SsmSimOptions) -> SimOptions {
    SimOptions {
        ssm,
        ..SimOptions::default()
    }
}

/// Polls until `f` gives a value (the simulator counts on its own tasks).
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The target connections opened after the first `before` ones, once there is at least one.
async fn streams_since(sim: &Simulator, before: usize) -> Vec<StreamFlights> {
    eventually("a new target connection", || {
        let all = sim.ssm.stream_flights();
        (all.len() > before).then(|| all[before..].to_vec())
    })
    .await
}

/// Logs in through the proxy; returns the client and the flights of the one target connection
/// the login opened.
async fn login(sim: &Simulator, proxy: &RunningProxy, case: &str) -> (tokio_postgres::Client, StreamFlights) {
    let before = sim.ssm.stream_flights().len();
    let client = connect(proxy, "db_user").await.expect("login through the tunnel");
    let streams = streams_since(sim, before).await;
    assert_eq!(streams.len(), 1, "{case}: one target connection per login: {streams:?}");
    eprintln!("{case}: {:?}", streams[0]);
    (client, streams[0].clone())
}

/// The flights of one connection, read again.
fn flights_of(sim: &Simulator, of: &StreamFlights) -> u64 {
    sim.ssm
        .stream_flights()
        .into_iter()
        .find(|f| f.session_id == of.session_id && f.stream_id == of.stream_id)
        .expect("still recorded")
        .client_flights
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_costs_at_most_four_client_flights_and_a_query_one_more() {
    let sim = start_sim_with(with_ssm(SsmSimOptions::real_network())).await;
    let proxy = start_ssm_proxy(&ssm_args(&sim), &sim).await;
    // Today: SYN + SSLRequest → 'S'; ClientHello → server flight; Finished + startup →
    // password request; password → ReadyForQuery. Work on the client brings it down.
    let (first, first_flights) = login(&sim, &proxy, "first login after start").await;
    eprintln!("client flights for the first login: {}", first_flights.client_flights);
    assert!(
        (2..=4).contains(&first_flights.client_flights),
        "{first_flights:?}"
    );
    let (second, second_flights) = login(&sim, &proxy, "login on the open session").await;
    eprintln!("client flights for a login on an open session: {}", second_flights.client_flights);
    assert!(
        (2..=4).contains(&second_flights.client_flights),
        "{second_flights:?}"
    );
    assert_eq!(first_flights.session_id, second_flights.session_id, "one session for both");

    // One simple query (Query → rows + ReadyForQuery): one more flight on that connection,
    // none on the other. (`query_one` with SQL text would be two: Parse/Describe, then Bind.)
    let rows = second.simple_query("SELECT 1").await.expect("select 1");
    let one = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(one.as_deref(), Some("1"));
    let after = eventually("the query's flight", || {
        let now = flights_of(&sim, &second_flights);
        (now > second_flights.client_flights).then_some(now)
    })
    .await;
    assert_eq!(after, second_flights.client_flights + 1);
    assert_eq!(flights_of(&sim, &first_flights), first_flights.client_flights);
    drop((first, second));
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_duplicated_messages_add_no_flights() {
    let sim = start_sim_with(with_ssm(SsmSimOptions::real_network())).await;
    let proxy = start_ssm_proxy(&ssm_args(&sim), &sim).await;
    // The first login teaches that the server asks this login a cleartext password (later
    // ones send the token ahead): the second is the reference.
    let (_first, _) = login(&sim, &proxy, "first").await;
    let (_warm, clean) = login(&sim, &proxy, "clean").await;
    sim.ssm.options().update(|o| {
        o.drop_rate = 0.1;
        o.duplicate_rate = 0.1;
        o.seed = 5;
    });
    let mut clients = Vec::new();
    for i in 0..3 {
        let (client, faulty) = login(&sim, &proxy, &format!("with faults #{i}")).await;
        assert_eq!(faulty.client_flights, clean.client_flights, "{faulty:?} vs {clean:?}");
        clients.push(client);
    }
    let stats = sim.ssm.stats();
    let faults = rds_auth_proxy_sim::ssm::SsmSimStats::get(&stats.messages_dropped)
        + rds_auth_proxy_sim::ssm::SsmSimStats::get(&stats.messages_duplicated);
    assert!(faults > 0, "the logins met lost and duplicated messages");
    drop(clients);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_1_works_under_aws_limits_at_loopback_and_on_a_real_network() {
    for (case, options) in [
        ("aws limits", SsmSimOptions::aws_limits()),
        ("aws limits + real network", SsmSimOptions::aws_limits().with_real_network()),
    ] {
        let sim = start_sim_with(with_ssm(options)).await;
        let proxy = start_ssm_proxy(&ssm_args(&sim), &sim).await;
        let client = connect(&proxy, "db_user").await.expect("login through the tunnel");
        let n: i32 = client.query_one("SELECT 1", &[]).await.expect("select 1").get(0);
        assert_eq!(n, 1, "{case}");
        let stats = sim.ssm.stats();
        let get = rds_auth_proxy_sim::ssm::SsmSimStats::get;
        assert_eq!(get(&stats.rate_limit_cuts), 0, "{case}");
        eprintln!(
            "{case}: early input dropped {} time(s); flights {:?}",
            get(&stats.early_input_dropped),
            sim.ssm.stream_flights()
        );
        drop(client);
        proxy.stop().await;
        sim.stop().await;
    }
}

/// The whole hero path at once, as a laptop on Wi-Fi sees it: 25 ms each way, AWS's limits,
/// 1% of the messages lost, duplicated or reordered, and the WebSocket killed mid-transfer. A
/// COPY each way arrives byte-exact through one session that resumed, without the gateway ever
/// cutting us for sending too fast (resends included), and a new connection logs in afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_on_a_real_network_with_loss_and_a_killed_websocket_is_byte_exact() {
    use bytes::Bytes;
    use futures_util::{SinkExt, TryStreamExt};
    use rds_auth_proxy_sim::ssm::SsmSimStats;
    use sha2::{Digest, Sha256};

    let mut ssm = SsmSimOptions::aws_limits().with_real_network();
    ssm.drop_rate = 0.01;
    ssm.duplicate_rate = 0.01;
    ssm.reorder_rate = 0.01;
    let sim = start_sim_with(with_ssm(ssm)).await;
    let proxy = start_ssm_proxy(&ssm_args(&sim), &sim).await;
    let client = connect(&proxy, "db_user").await.expect("login through the tunnel");
    client.batch_execute("CREATE TEMP TABLE t (line text)").await.expect("create");
    let data = copy_lines(23, 2 * 1024 * 1024);
    let sent_sum = hex::encode(Sha256::digest(&data));
    let stats = sim.ssm.stats();
    let get = SsmSimStats::get;

    // Kill the WebSocket every 800 new data messages while the upload runs (each resumed one
    // makes progress first).
    sim.ssm.options().update(|o| o.kill_ws_after_messages = Some(800));
    let sink = client.copy_in("COPY t FROM STDIN").await.expect("copy in");
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.expect("send");
    }
    assert_eq!(sink.finish().await.expect("finish") as usize, data.len() / 100);
    assert!(get(&stats.ws_killed) >= 1, "the WebSocket was killed mid-transfer");
    sim.ssm.options().update(|o| o.kill_ws_after_messages = None);
    let db_sum: String = client
        .query_one(
            "SELECT encode(sha256(convert_to(string_agg(line || E'\\n', '' ORDER BY ctid), 'UTF8')), 'hex') FROM t",
            &[],
        )
        .await
        .expect("hash")
        .get(0);
    assert_eq!(db_sum, sent_sum, "PostgreSQL holds exactly the bytes sent");

    let chunks: Vec<Bytes> = client
        .copy_out("COPY t TO STDOUT")
        .await
        .expect("copy out")
        .try_collect()
        .await
        .expect("rows");
    let back = chunks.concat();
    assert_eq!(back.len(), data.len());
    assert_eq!(hex::encode(Sha256::digest(&back)), sent_sum, "byte-exact both ways");

    assert!(get(&stats.sessions_resumed) >= 1, "the session resumed");
    assert_eq!(get(&stats.sessions_started), 1, "the transfer needed no new session");
    // (A new connection may get a session of its own: the elastic pool steers it away from one
    // that was just busy with a bulk transfer.)
    let fresh = connect(&proxy, "db_user").await.expect("a new login afterwards");
    let n: i32 = fresh.query_one("SELECT 1", &[]).await.expect("select 1").get(0);
    assert_eq!(n, 1);
    assert_eq!(get(&stats.rate_limit_cuts), 0, "never cut by the gateway's rate limit");
    assert!(get(&stats.peak_client_msgs_per_sec) <= 1000);
    assert!(get(&stats.messages_dropped) > 0 && get(&stats.messages_duplicated) > 0);
    drop((client, fresh));
    proxy.stop().await;
    sim.stop().await;
}
