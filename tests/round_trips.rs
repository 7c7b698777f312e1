//! Fewer network round trips per new connection: PostgreSQL 17's direct TLS once the server has
//! shown version 17 (with the fallback when it does not take it), and `--ssm-prewarm`. The
//! simulated RDS front emulates PostgreSQL 17 where asked ([`PgEmulation`]); its counters say
//! how each connection opened (SSLRequest or a ClientHello first). Through SSM on a simulated
//! real network (25 ms each way), the agent counts each target connection's round trips
//! ("client flights": times the client had to wait for the far side, `SsmSim::stream_flights`).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rds_auth_proxy::app::Credentials;
use rds_auth_proxy_sim::postgres::DB_USER;
use rds_auth_proxy_sim::rds::PgEmulation;
use rds_auth_proxy_sim::ssm::{SsmSimOptions, SsmSimStats, StreamFlights};
use rds_auth_proxy_sim::{SimOptions, Simulator};
use rds_auth_proxy::target::TargetContext;

/// How the front saw connections open: (SSLRequest, ClientHello first, direct TLS taken).
fn openings(sim: &Simulator) -> (u64, u64, u64) {
    let s = &sim.front_state;
    (
        s.ssl_requests.load(Ordering::SeqCst),
        s.direct_tls_attempts.load(Ordering::SeqCst),
        s.direct_tls_accepted.load(Ordering::SeqCst),
    )
}

/// Polls until `cond` holds (counters move on other tasks).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sim_as(emulation: PgEmulation) -> Simulator {
    start_sim_with(SimOptions {
        rds_pg: emulation,
        ..SimOptions::default()
    })
    .await
}

/// A running proxy with `extra` flags after `base`, and its target context to look into.
async fn run_proxy(sim: &Simulator, mut base: Vec<String>, extra: &[&str]) -> (RunningProxy, Arc<TargetContext>) {
    base.extend(extra.iter().map(|s| s.to_string()));
    let bound = bind_proxy_with(&base, Credentials::FixedWith(sim.aws_setup())).await;
    let ctx = bound.ctx.clone();
    (RunningProxy::spawn(bound), ctx)
}

/// One login and one query through the proxy.
async fn login(proxy: &RunningProxy) {
    let client = connect(proxy, DB_USER).await.expect("login through the proxy");
    let rows = client.simple_query("SELECT 1").await.expect("query");
    assert!(!rows.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_once_the_server_has_shown_17() {
    let sim = sim_as(PgEmulation::Pg17 { direct_tls: true }).await;
    let (proxy, ctx) = run_proxy(&sim, direct_args(&sim), &[]).await;
    assert_eq!(ctx.server.major_version(), None);
    login(&proxy).await;
    assert_eq!(openings(&sim), (1, 0, 0), "nothing known yet: SSLRequest");
    assert_eq!(ctx.server.major_version(), Some(17), "learnt from server_version");
    login(&proxy).await;
    login(&proxy).await;
    assert_eq!(openings(&sim), (1, 2, 2), "then TLS at once, no SSLRequest");
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_through_ssm() {
    let sim = sim_as(PgEmulation::Pg17 { direct_tls: true }).await;
    let (proxy, _ctx) = run_proxy(&sim, ssm_args(&sim), &[]).await;
    login(&proxy).await;
    login(&proxy).await;
    assert_eq!(openings(&sim), (1, 1, 1));
    proxy.stop().await;
    sim.stop().await;
}

/// Something in front of a PostgreSQL 17 that does not take direct TLS (RDS Proxy, a pooler):
/// the one direct attempt fails, that connection starts over with SSLRequest and logs in, and
/// no later connection tries direct TLS again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_claims_17_but_refuses_direct_tls_is_tried_once() {
    let sim = sim_as(PgEmulation::Pg17 { direct_tls: false }).await;
    let (proxy, ctx) = run_proxy(&sim, direct_args(&sim), &[]).await;
    login(&proxy).await;
    assert_eq!(ctx.server.major_version(), Some(17));
    login(&proxy).await;
    assert_eq!(openings(&sim), (2, 1, 0), "tried direct, fell back to SSLRequest");
    assert!(ctx.server.refused_direct_tls());
    login(&proxy).await;
    login(&proxy).await;
    assert_eq!(openings(&sim), (4, 1, 0), "never tried again");
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_never_keeps_sslrequest() {
    let sim = sim_as(PgEmulation::Pg17 { direct_tls: true }).await;
    let (proxy, _ctx) = run_proxy(&sim, direct_args(&sim), &["--direct-tls", "never"]).await;
    login(&proxy).await;
    login(&proxy).await;
    assert_eq!(openings(&sim), (2, 0, 0));
    proxy.stop().await;
    sim.stop().await;
}

/// `--direct-tls always` against PostgreSQL 15, which closes a connection that starts with a
/// ClientHello: an error that says why and what to do, and no SSLRequest behind its back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_always_against_15_is_explained() {
    let sim = sim_as(PgEmulation::Pg15).await;
    let (proxy, _ctx) = run_proxy(&sim, direct_args(&sim), &["--direct-tls", "always"]).await;
    let err = connect(&proxy, DB_USER).await.expect_err("PostgreSQL 15 takes no direct TLS");
    let (code, message, hint) = db_error(&err);
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("direct TLS"), "{message}");
    assert!(hint.unwrap_or_default().contains("--direct-tls auto"));
    assert_eq!(openings(&sim), (0, 1, 0));
    proxy.stop().await;
    sim.stop().await;
}

/// Direct TLS verifies the certificate exactly as after SSLRequest, and a certificate the
/// proxy does not trust is a TLS error, not a reason to fall back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_verifies_the_certificate_and_does_not_fall_back_on_it() {
    let sim = sim_as(PgEmulation::Pg17 { direct_tls: true }).await;
    // Without --ca-bundle: the simulator's CA is not trusted.
    let mut args = direct_args(&sim);
    let at = args.iter().position(|a| a == "--ca-bundle").expect("--ca-bundle");
    args.drain(at..at + 2);
    let (proxy, ctx) = run_proxy(&sim, args, &[]).await;
    ctx.server.saw_server_version("17.4");
    let err = connect(&proxy, DB_USER).await.expect_err("untrusted certificate");
    let (code, message, hint) = db_error(&err);
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("TLS handshake"), "{message}");
    assert!(hint.unwrap_or_default().contains("--ca-bundle"));
    assert_eq!(openings(&sim).0, 0, "no SSLRequest fallback");
    assert_eq!(openings(&sim).1, 1);
    assert!(!ctx.server.refused_direct_tls());
    proxy.stop().await;
    sim.stop().await;
}

/// `--ssm-prewarm`: the session opens at start with no client asking, and the first psql logs
/// in without opening another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_opens_the_session_before_the_first_client() {
    let sim = start_sim().await;
    let (proxy, _ctx) = run_proxy(&sim, ssm_args(&sim), &["--ssm-prewarm"]).await;
    let stats = sim.ssm.stats();
    eventually("the prewarmed session", || stats.handshakes_completed.load(Ordering::SeqCst) == 1).await;
    login(&proxy).await;
    assert_eq!(stats.sessions_started.load(Ordering::SeqCst), 1, "the first client used the prewarmed session");
    proxy.stop().await;
    sim.stop().await;
}

/// The simulator on a real network (25 ms each way, AWS's early-input window), its front acting
/// as `emulation`.
async fn real_network_sim(emulation: PgEmulation) -> Simulator {
    start_sim_with(SimOptions {
        rds_pg: emulation,
        ssm: SsmSimOptions::real_network(),
        ..SimOptions::default()
    })
    .await
}

/// Logs in through the proxy (no query); the client, and every target connection (smux stream)
/// the login opened, with its round trips.
async fn login_flights(sim: &Simulator, proxy: &RunningProxy, case: &str) -> (tokio_postgres::Client, Vec<StreamFlights>) {
    let before = sim.ssm.stream_flights().len();
    let started = Instant::now();
    let client = connect(proxy, DB_USER).await.expect("login through the tunnel");
    let took = started.elapsed();
    // The streams are recorded as their data arrives, before the login can end.
    let streams = sim.ssm.stream_flights()[before..].to_vec();
    assert!(!streams.is_empty(), "{case}: no target connection recorded");
    let flights: Vec<u64> = streams.iter().map(|s| s.client_flights).collect();
    eprintln!("{case}: round trips per target connection {flights:?}, login took {took:?} at 25 ms each way");
    (client, streams)
}

/// Goal of issue 17: a new connection on an open session in at most 3 round trips, against a
/// server that has shown PostgreSQL 17 (SSLRequest costs the 4th).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_on_an_open_session_takes_three_round_trips_on_17() {
    let sim = real_network_sim(PgEmulation::Pg17 { direct_tls: true }).await;
    let (proxy, _ctx) = run_proxy(&sim, ssm_args(&sim), &[]).await;
    let (_first, first) = login_flights(&sim, &proxy, "17, first login (version unknown)").await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].client_flights, 4, "SSLRequest, TLS, startup, password");
    let (_second, second) = login_flights(&sim, &proxy, "17, login on the open session").await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].session_id, first[0].session_id);
    assert_eq!(second[0].client_flights, 2, "direct TLS, then the startup with the token sent ahead: {second:?}");
    assert_eq!(openings(&sim), (1, 1, 1));
    proxy.stop().await;
    sim.stop().await;
}

/// PostgreSQL 15 keeps SSLRequest: the first login takes 4 round trips, the next ones 3 (the IAM
/// token goes with the startup message once the server has asked this login a cleartext
/// password); a server that reports 17 but refuses direct TLS costs one
/// connection a second target connection, and the next ones are back to 4 without trying again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_on_15_and_on_a_17_that_refuses_direct_tls() {
    let sim = real_network_sim(PgEmulation::Pg15).await;
    let (proxy, _ctx) = run_proxy(&sim, ssm_args(&sim), &[]).await;
    let _first = login_flights(&sim, &proxy, "15, first login").await;
    let (_second, second) = login_flights(&sim, &proxy, "15, login on the open session").await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].client_flights, 3, "SSLRequest, TLS, the startup with the token sent ahead");
    assert_eq!(openings(&sim), (2, 0, 0));
    proxy.stop().await;
    sim.stop().await;

    let sim = real_network_sim(PgEmulation::Pg17 { direct_tls: false }).await;
    let (proxy, ctx) = run_proxy(&sim, ssm_args(&sim), &[]).await;
    let _first = login_flights(&sim, &proxy, "17 refusing direct TLS, first login").await;
    let (_second, second) = login_flights(&sim, &proxy, "17 refusing direct TLS, the direct attempt").await;
    assert_eq!(second.len(), 2, "the refused attempt, then SSLRequest: {second:?}");
    assert_eq!(second[1].client_flights, 3);
    assert!(ctx.server.refused_direct_tls());
    let (_third, third) = login_flights(&sim, &proxy, "17 refusing direct TLS, after it").await;
    assert_eq!(third.len(), 1, "no second direct attempt");
    assert_eq!(third[0].client_flights, 3);
    assert_eq!(openings(&sim), (3, 1, 0));
    proxy.stop().await;
    sim.stop().await;
}

/// Goal of issue 17: with `--ssm-prewarm` the first psql after start opens no SSM session of its
/// own and logs in in at most 4 round trips (without it, StartSession, the WebSocket upgrade and
/// the handshake come first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prewarm_the_first_login_opens_no_session_and_takes_four_round_trips() {
    let sim = real_network_sim(PgEmulation::Pg15).await;
    let (proxy, _ctx) = run_proxy(&sim, ssm_args(&sim), &["--ssm-prewarm"]).await;
    let stats = sim.ssm.stats();
    eventually("the prewarmed session", || SsmSimStats::get(&stats.handshakes_completed) == 1).await;
    let (_client, first) = login_flights(&sim, &proxy, "first login after start, prewarmed").await;
    assert_eq!(SsmSimStats::get(&stats.sessions_started), 1, "no session opened for the login");
    assert_eq!(first.len(), 1);
    assert!(first[0].client_flights <= 4, "{first:?}");
    proxy.stop().await;
    sim.stop().await;
}

/// The IAM token goes with the startup message only for a login the server asked a cleartext
/// password last time, and as soon as the server asks otherwise (here: the `rds_iam` grant was
/// revoked, so it runs SCRAM) that connection is dropped before anything else, the login starts
/// over without sending ahead, and the client gets the same error as without the shortcut; with
/// the grant back, the next login learns again. A token sent ahead that the server refuses is
/// retried once with a fresh one, as any refused token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_goes_ahead_only_while_the_server_asks_cleartext() {
    let sim = start_sim().await;
    let su = sim.postgres.superuser().to_owned();
    let (proxy, ctx) = run_proxy(&sim, direct_args(&sim), &[]).await;
    assert!(!ctx.server.asks_cleartext(DB_USER, "postgres"));
    login(&proxy).await;
    assert!(ctx.server.asks_cleartext(DB_USER, "postgres"), "learnt from the password request");
    assert!(!ctx.server.asks_cleartext(DB_USER, "otherdb"), "per database");
    login(&proxy).await;
    assert_eq!(openings(&sim).0, 2);
    assert_eq!(sim.front_state.accepted.load(Ordering::SeqCst), 2);

    // A token sent ahead and refused: the retry sends a fresh one ahead and logs in.
    sim.front_state.reject_next.store(1, Ordering::SeqCst);
    login(&proxy).await;
    assert_eq!(sim.front_state.rejected.load(Ordering::SeqCst), 1);
    assert_eq!(sim.front_state.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(openings(&sim).0, 4);

    sim.postgres.psql(&su, &format!("REVOKE rds_iam FROM {DB_USER}")).await.unwrap();
    let (code, message, _hint) = db_error(&connect(&proxy, DB_USER).await.unwrap_err());
    assert_eq!(code, "28P01", "{message}");
    assert!(message.contains("it is a password user, not an IAM database user"), "{message}");
    assert_eq!(openings(&sim).0, 6, "the connection the token went ahead on, then one without");
    assert!(!ctx.server.asks_cleartext(DB_USER, "postgres"), "forgotten");
    let (code, _, _) = db_error(&connect(&proxy, DB_USER).await.unwrap_err());
    assert_eq!(code, "28P01");
    assert_eq!(openings(&sim).0, 7, "nothing sent ahead any more: one connection");

    sim.postgres.psql(&su, &format!("GRANT rds_iam TO {DB_USER}")).await.unwrap();
    login(&proxy).await;
    assert!(ctx.server.asks_cleartext(DB_USER, "postgres"), "learnt again");
    login(&proxy).await;
    assert_eq!(openings(&sim).0, 9);
    assert_eq!(sim.front_state.accepted.load(Ordering::SeqCst), 5);
    proxy.stop().await;
    sim.stop().await;
}
