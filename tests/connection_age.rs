//! `--max-connection-age` through the real binary and the simulator's RDS front: an idle
//! tokio-postgres connection and a psql busy in a query both get the NOTICE, then FATAL 57P01;
//! the audit lines, the log lines and the metric count them. (The moments themselves — 55/60,
//! the first idle moment after 59/60, the limit — are pinned on a paused clock in src/relay.rs.)

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::binary::*;
use common::*;
use rds_auth_proxy_sim::runner::SIM_ENDPOINT;
use tokio_postgres::AsyncMessage;

/// What one tokio-postgres connection received outside its queries, with when.
#[derive(Debug)]
enum Seen {
    Notice(Box<tokio_postgres::error::DbError>, Duration),
    Error(tokio_postgres::Error, Duration),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_then_57p01_for_an_idle_and_a_busy_connection_logged_and_counted() {
    let sim = start_sim().await;
    // A free port for the metrics (bound, then released).
    let http_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = sim_command(&sim);
    cmd.args(direct_args(&sim)).args(["--max-connection-age", "6s", "--http-port", &http_port.to_string()]);
    let mut proxy = Running::start(cmd);
    let port = proxy.port;

    // Busy: psql in a query that outlasts the limit.
    let busy_started = Instant::now();
    let busy = psql_command(&["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "db_user", "-d", "postgres", "-c", "SELECT pg_sleep(10)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Idle: one query, then nothing.
    let started = Instant::now();
    let (client, mut connection) = tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=db_user dbname=postgres"), tokio_postgres::NoTls)
        .await
        .expect("login");
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notice(n))) => seen.push(Seen::Notice(Box::new(n), started.elapsed())),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    seen.push(Seen::Error(e, started.elapsed()));
                    break;
                }
                None => break,
            }
        }
        seen
    });
    let row = client.query_one("SELECT 1", &[]).await.expect("a query before the limit");
    assert_eq!(row.get::<_, i32>(0), 1);
    let seen = tokio::time::timeout(Duration::from_secs(60), seen).await.expect("the connection ended").unwrap();
    match &seen[..] {
        [Seen::Notice(notice, noticed), Seen::Error(error, ended)] => {
            assert_eq!(notice.code().code(), "01000");
            assert!(notice.message().starts_with("this connection will be closed within 1 second: it reaches the maximum connection age of 6 seconds"), "{notice:?}");
            assert!(*noticed >= Duration::from_millis(5500), "noticed after {noticed:?}");
            let (code, message, hint) = db_error(error);
            assert_eq!(code, "57P01");
            assert!(message.starts_with("terminating connection: it reached the maximum connection age of 6 seconds"), "{message}");
            assert!(hint.is_some_and(|h| h.starts_with("Reconnect: a new connection gets a new 6 seconds.")));
            assert!(*ended >= Duration::from_millis(5900), "ended after {ended:?}");
        }
        other => panic!("expected a notice and then 57P01, got {other:#?}"),
    }
    assert!(client.is_closed());

    let out = tokio::task::spawn_blocking(move || busy.wait_with_output()).await.unwrap().unwrap();
    let busy_took = busy_started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let notice = stderr.find("NOTICE:  this connection will be closed within 1 second").unwrap_or_else(|| panic!("psql got: {stderr}"));
    let fatal = stderr.find("FATAL:  terminating connection: it reached the maximum connection age of 6 seconds").unwrap_or_else(|| panic!("psql got: {stderr}"));
    assert!(notice < fatal, "the notice first: {stderr}");
    assert!(busy_took >= Duration::from_secs(6) && busy_took < Duration::from_secs(10), "the query was cut at the limit, not after it: {busy_took:?}");

    for _ in 0..2 {
        let close = proxy.wait_log("an audit close at the age limit", |v| v["fields"]["audit"] == "close" && v["fields"]["closed_by"] == "max_age");
        assert_eq!(close["fields"]["sqlstate"], "57P01", "{close}");
        assert!(close["fields"]["reason"].as_str().is_some_and(|r| r.contains("maximum age of 6 seconds")), "{close}");
    }
    let (status, body) = rds_auth_proxy::http::get(([127, 0, 0, 1], http_port).into(), "/metrics").await.expect("scrape");
    assert_eq!(status, 200);
    let series = format!("rds_auth_proxy_connections_aged_out_total{{target=\"{SIM_ENDPOINT}\"}} 2");
    assert!(body.lines().any(|l| l == series), "{series} not in\n{body}");

    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(proxy.exit_code(), Some(143));
    let logs = proxy.all_json();
    let count = |prefix: &str| logs.iter().filter(|v| message_starts_with(v, prefix)).count();
    assert_eq!(count("the client was told its connection ends soon"), 2, "{logs:#?}");
    assert_eq!(count("connection ended at --max-connection-age"), 2, "{logs:#?}");
    sim.stop().await;
}

/// A spare connection's age began at its own login, before its client came: the client is told
/// and cut that much earlier (the server counts from the login too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_connection_counts_its_age_from_its_own_login() {
    let sim = start_sim().await;
    let http_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    let mut cmd = sim_command(&sim);
    cmd.args(direct_args(&sim))
        .args(["--max-connection-age", "6s", "--spare-connections", "1", "--http-port", &http_port.to_string()]);
    let proxy = Running::start(cmd);
    let conn = format!("host=127.0.0.1 port={} user=db_user dbname=postgres application_name=aged", proxy.port);
    // A first client makes the proxy keep a spare for its kind of connection (logged in after it).
    let first_started = Instant::now();
    let (first, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("login");
    let first_task = tokio::spawn(connection);
    drop(first);
    let _ = first_task.await;
    let scrape = |name: &'static str| async move {
        let (_, body) = rds_auth_proxy::http::get(http, "/metrics").await.expect("scrape");
        let prefix = format!("rds_auth_proxy_{name}{{target=\"{SIM_ENDPOINT}\"}} ");
        body.lines().find_map(|l| l.strip_prefix(prefix.as_str())?.parse::<f64>().ok()).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape("spares_ready").await < 1.0 {
        assert!(Instant::now() < deadline, "no spare connection was opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The scenario, not a synchronisation: the spare ages 3 s before its client comes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let (client, mut connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("login on the spare");
    assert_eq!(scrape("spare_hits_total").await, 1.0, "the second client got the spare");
    let ended = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    });
    client.query_one("SELECT 1", &[]).await.expect("a query on the spare");
    let error = tokio::time::timeout(Duration::from_secs(30), ended).await.expect("the connection ended").unwrap().expect("an error");
    let took = started.elapsed();
    assert_eq!(db_error(&error).0, "57P01");
    assert!(first_started.elapsed() >= Duration::from_millis(5900), "not before the spare's own 59/60");
    assert!(took < Duration::from_millis(5000), "counted from the client's login it would have taken 5.9 s or more: {took:?}");
    drop(proxy);
    sim.stop().await;
}
