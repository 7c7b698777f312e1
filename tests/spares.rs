//! `--spare-connections`: upstream connections logged in ahead of time, one kind per exact
//! startup packet, handed to the next matching client. A real PostgreSQL behind the simulated RDS
//! front; what the server sees is read by its superuser straight from PostgreSQL
//! (pg_stat_activity), never through the proxy, so looking makes no spares of its own.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rds_auth_proxy::app::Credentials;
use rds_auth_proxy_sim::Simulator;
use rds_auth_proxy::target::TargetContext;

use common::binary::psql_select;
use common::*;

/// A running proxy in front of `sim` with `extra` flags, and its context (for its metrics).
async fn start_with(sim: &Simulator, via_ssm: bool, extra: &[&str]) -> (RunningProxy, Arc<TargetContext>) {
    let mut args = if via_ssm { ssm_args(sim) } else { direct_args(sim) };
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let credentials = if via_ssm {
        Credentials::FixedWith(sim.aws_setup())
    } else {
        Credentials::Fixed(sim.aws_credentials())
    };
    let proxy = bind_proxy_with(&args, credentials).await;
    let ctx = proxy.ctx.clone();
    (RunningProxy::spawn(proxy), ctx)
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A tokio-postgres client as db_user on `dbname` with application_name `app`.
async fn connect_as(proxy: &RunningProxy, dbname: &str, app: &str) -> tokio_postgres::Client {
    let conn = format!(
        "host={} port={} user=db_user dbname={dbname} application_name={app} connect_timeout=20",
        proxy.addr.ip(),
        proxy.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("login as {app}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client.query_one("SELECT pg_backend_pid()", &[]).await.expect("pg_backend_pid").get(0)
}

/// What the server's superuser sees, straight from PostgreSQL.
async fn superuser(sim: &Simulator, sql: &str) -> String {
    sim.postgres.psql(sim.postgres.superuser(), sql).await.expect("superuser query")
}

/// The server's db_user backends in database postgres with application_name `app`, by pid.
async fn backends(sim: &Simulator, app: &str) -> Vec<i32> {
    let sql = format!(
        "SELECT pid FROM pg_stat_activity WHERE usename = 'db_user' AND datname = 'postgres' \
         AND application_name = '{app}' ORDER BY pid"
    );
    superuser(sim, &sql).await.lines().map(|l| l.trim().parse().expect("a pid")).collect()
}

/// Polls (with a deadline) until `cond` holds of what the server says.
async fn until_server<T>(what: &str, mut ask: impl AsyncFnMut() -> T, cond: impl Fn(&T) -> bool) -> T {
    let started = Instant::now();
    loop {
        let seen = ask().await;
        if cond(&seen) {
            return seen;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one backend for `app` that is none of `clients`': the spare. Waits for the clients'
/// backends that already ended to leave pg_stat_activity.
async fn the_spare(sim: &Simulator, app: &str, clients: &[i32]) -> i32 {
    let others = until_server(
        &format!("one spare backend for {app}"),
        async || backends(sim, app).await.into_iter().filter(|p| !clients.contains(p)).collect::<Vec<i32>>(),
        |others| others.len() == 1,
    )
    .await;
    others[0]
}

/// Two psql runs with the same parameters: the first logs in (a miss) and leaves a spare behind;
/// the second is served by that spare — its backend is the one the spare opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_psql_is_served_by_the_spare_the_first_left_ready() {
    let sim = start_sim().await;
    let (proxy, ctx) = start_with(&sim, false, &["--spare-connections", "1"]).await;
    let spares = &ctx.metrics.spares;
    let port = proxy.addr.port();
    let select_pid = move || tokio::task::spawn_blocking(move || psql_select(port, "select pg_backend_pid()"));
    let first: i32 = select_pid().await.unwrap().parse().unwrap();
    assert_eq!((spares.hits.get(), spares.misses.get()), (0, 1), "the first psql found no spare");
    eventually("a spare for psql's startup parameters", || spares.ready.get() == 1).await;
    let spare = the_spare(&sim, "psql", &[first]).await;
    let logins = sim.front_state.accepted.load(Ordering::SeqCst);
    assert_eq!(logins, 2, "the first psql's login and the spare's");

    let second: i32 = select_pid().await.unwrap().parse().unwrap();
    assert_eq!(second, spare, "the second psql ran on the spare's backend");
    assert_eq!((spares.hits.get(), spares.misses.get()), (1, 1));
    // The spare used is replaced in the background while psql's kind is in use.
    eventually("the used spare replaced", || spares.opened.get() == 2).await;
    proxy.stop().await;
    sim.stop().await;
}

/// A spare is only for its exact startup parameters: another application_name, or another
/// database, misses and logs in as usual, and the spare stays for its own kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_startup_parameters_miss_and_log_in_as_usual() {
    let sim = start_sim().await;
    let (proxy, ctx) = start_with(&sim, false, &["--spare-connections", "1"]).await;
    let spares = &ctx.metrics.spares;
    let a = connect_as(&proxy, "postgres", "spares_a").await;
    let a_pid = backend_pid(&a).await;
    eventually("a spare for spares_a", || spares.ready.get() == 1).await;
    let a_spare = the_spare(&sim, "spares_a", &[a_pid]).await;

    let b = connect_as(&proxy, "postgres", "spares_b").await;
    let row = b.query_one("SELECT current_setting('application_name'), pg_backend_pid()", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "spares_b", "its own session, not spares_a's spare");
    assert_ne!(row.get::<_, i32>(1), a_spare);

    let other_db = connect_as(&proxy, "template1", "spares_a").await;
    let row = other_db.query_one("SELECT current_database(), pg_backend_pid()", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "template1");
    assert_ne!(row.get::<_, i32>(1), a_spare);
    assert_eq!((spares.hits.get(), spares.misses.get()), (0, 3), "three kinds, three misses");
    assert_eq!(the_spare(&sim, "spares_a", &[a_pid]).await, a_spare, "spares_a's spare is still kept");
    drop((a, b, other_db));
    proxy.stop().await;
    sim.stop().await;
}

/// Past `--spare-max-age` a spare is closed on the server too and never handed out; with no
/// client of its kind left it is not replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_past_its_max_age_is_closed_and_never_handed_out() {
    let sim = start_sim().await;
    let (proxy, ctx) = start_with(&sim, false, &["--spare-connections", "1", "--spare-max-age", "2"]).await;
    let spares = &ctx.metrics.spares;
    let client = connect_as(&proxy, "postgres", "spares_aged").await;
    let client_pid = backend_pid(&client).await;
    drop(client);
    eventually("the client's session ended", || ctx.metrics.connections_open.get() == 0).await;
    eventually("a spare opened", || spares.opened.get() == 1).await;
    eventually("the spare aged out", || spares.aged.get() == 1).await;
    assert_eq!(spares.ready.get(), 0);
    assert_eq!(spares.opened.get(), 1, "not replaced: no client of its kind in use");
    // Closed on the server (Terminate), not just forgotten.
    until_server(
        "the aged spare's backend to end",
        async || backends(&sim, "spares_aged").await,
        |pids| pids.iter().all(|p| *p == client_pid),
    )
    .await;

    let again = connect_as(&proxy, "postgres", "spares_aged").await;
    assert_ne!(backend_pid(&again).await, client_pid);
    assert_eq!((spares.hits.get(), spares.misses.get()), (0, 2), "the aged spare was not handed out");
    drop(again);
    proxy.stop().await;
    sim.stop().await;
}

/// A client served by a spare has the spare's BackendKeyData, so its cancel reaches the spare's
/// backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_spare_backend() {
    let sim = start_sim().await;
    let (proxy, ctx) = start_with(&sim, false, &["--spare-connections", "1"]).await;
    let spares = &ctx.metrics.spares;
    let first = connect_as(&proxy, "postgres", "spares_cancel").await;
    let first_pid = backend_pid(&first).await;
    eventually("a spare", || spares.ready.get() == 1).await;
    let spare = the_spare(&sim, "spares_cancel", &[first_pid]).await;

    let client = connect_as(&proxy, "postgres", "spares_cancel").await;
    assert_eq!(spares.hits.get(), 1);
    assert_eq!(backend_pid(&client).await, spare);
    let token = client.cancel_token();
    let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    let sql = format!("SELECT state FROM pg_stat_activity WHERE pid = {spare}");
    until_server("pg_sleep running on the spare", async || superuser(&sim, &sql).await, |s| s == "active").await;
    token.cancel_query(tokio_postgres::NoTls).await.expect("cancel sent");
    let result = tokio::time::timeout(Duration::from_secs(20), query).await.expect("query ended").unwrap();
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    assert_eq!(sim.front_state.cancels.load(Ordering::SeqCst), 1);
    drop(first);
    proxy.stop().await;
    sim.stop().await;
}

/// A spare whose backend is terminated while it waits is discarded at once and never handed
/// out; the next client gets a live backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_whose_backend_was_killed_is_never_handed_out() {
    let sim = start_sim().await;
    let (proxy, ctx) = start_with(&sim, false, &["--spare-connections", "1"]).await;
    let spares = &ctx.metrics.spares;
    let first = connect_as(&proxy, "postgres", "spares_killed").await;
    let first_pid = backend_pid(&first).await;
    eventually("a spare", || spares.ready.get() == 1).await;
    let spare = the_spare(&sim, "spares_killed", &[first_pid]).await;
    assert_eq!(superuser(&sim, &format!("SELECT pg_terminate_backend({spare})")).await, "t");
    eventually("the dead spare discarded", || spares.dead.get() == 1).await;

    let client = connect_as(&proxy, "postgres", "spares_killed").await;
    let pid = backend_pid(&client).await;
    assert_ne!(pid, spare, "the killed spare was handed out");
    assert_eq!(spares.dead.get(), 1);
    drop((first, client));
    proxy.stop().await;
    sim.stop().await;
}

/// Through the SSM tunnel too: the second client of a kind gets the spare's backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_hit_through_ssm() {
    let sim = start_sim().await;
    let (proxy, ctx) = start_with(&sim, true, &["--spare-connections", "1"]).await;
    let spares = &ctx.metrics.spares;
    let first = connect_as(&proxy, "postgres", "spares_ssm").await;
    let first_pid = backend_pid(&first).await;
    eventually("a spare", || spares.ready.get() == 1).await;
    let spare = the_spare(&sim, "spares_ssm", &[first_pid]).await;
    let second = connect_as(&proxy, "postgres", "spares_ssm").await;
    assert_eq!(backend_pid(&second).await, spare);
    assert_eq!((spares.hits.get(), spares.misses.get()), (1, 1));
    drop((first, second));
    proxy.stop().await;
    sim.stop().await;
}

/// On a simulated real network (25 ms each way): a login served by a spare costs no client
/// flight through the tunnel — the spare's stream has the same flights after the hit as when it
/// was ready, and the client's first query is that stream's next flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_hit_costs_no_tunnel_round_trip() {
    use rds_auth_proxy_sim::ssm::SsmSimOptions;
    use rds_auth_proxy_sim::SimOptions;

    let sim = start_sim_with(SimOptions {
        ssm: SsmSimOptions::real_network(),
        ..SimOptions::default()
    })
    .await;
    let (proxy, ctx) = start_with(&sim, true, &["--spare-connections", "1"]).await;
    let spares = &ctx.metrics.spares;
    let first = connect_as(&proxy, "postgres", "spares_flights").await;
    eventually("a spare", || spares.ready.get() == 1).await;
    // The first client's stream, then the spare's, opened after the first login completed.
    let mut streams = sim.ssm.stream_flights();
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert_eq!(streams[0].session_id, streams[1].session_id, "one session: {streams:?}");
    streams.sort_by_key(|s| s.stream_id);
    let (login, spare) = (streams[0].client_flights, streams[1].clone());
    let flights_of_spare = || {
        sim.ssm
            .stream_flights()
            .into_iter()
            .find(|f| f.session_id == spare.session_id && f.stream_id == spare.stream_id)
            .expect("the spare's stream is still recorded")
            .client_flights
    };
    // The first login taught that this login is asked a cleartext password: the spare's sends
    // its token with the startup message, one round trip less.
    assert_eq!(spare.client_flights + 1, login, "a spare's own login costs what a second client's does");

    let client = connect_as(&proxy, "postgres", "spares_flights").await;
    assert_eq!(spares.hits.get(), 1);
    assert_eq!(flights_of_spare(), spare.client_flights, "the hit's login crossed the tunnel");
    client.simple_query("SELECT 1").await.expect("select 1");
    eventually("the query's flight on the spare's stream", || flights_of_spare() > spare.client_flights).await;
    assert_eq!(flights_of_spare(), spare.client_flights + 1, "the client runs on the spare's stream");
    eprintln!("client flights: a login {login}, a login served by a spare 0");
    drop((first, client));
    proxy.stop().await;
    sim.stop().await;
}

/// A spare never outlives the AWS credentials its IAM token was signed with, whatever
/// `--spare-max-age` allows: with credentials expiring in seconds and the longest max age, it
/// still ages out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_never_outlives_the_credentials_of_its_login() {
    let sim = start_sim().await;
    let keys = sim.aws_credentials();
    let expiry = std::time::SystemTime::now() + Duration::from_secs(8);
    let expiring = aws_credential_types::Credentials::new(
        keys.access_key_id(),
        keys.secret_access_key(),
        None,
        Some(expiry),
        "expiring",
    );
    let mut args = direct_args(&sim);
    args.extend(["--spare-connections", "1", "--spare-max-age", "900"].map(str::to_owned));
    let proxy = bind_proxy_with(&args, Credentials::Fixed(expiring)).await;
    let ctx = proxy.ctx.clone();
    let proxy = RunningProxy::spawn(proxy);
    let spares = &ctx.metrics.spares;
    let client = connect_as(&proxy, "postgres", "spares_expiring").await;
    eventually("a spare", || spares.opened.get() == 1).await;
    eventually("the spare aged out with its credentials", || spares.aged.get() == 1).await;
    assert_eq!(spares.hits.get(), 0);
    drop(client);
    proxy.stop().await;
    sim.stop().await;
}
