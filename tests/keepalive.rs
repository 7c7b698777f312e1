//! TCP keepalive on the proxy's sockets: read back from the kernel (`ss`) on the accepted client
//! socket and the direct upstream socket, and a client that really vanishes — it sits in its
//! own network namespace whose link then goes down, so it never answers again — has its
//! connection (and the database session behind it) closed by the proxy.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use common::netns::{require_root, Netns};
use common::*;
use rds_auth_proxy::app::{Credentials, Proxy};
use rds_auth_proxy::cli::Cli;
use rds_auth_proxy::config::Config;
use rds_auth_proxy::net::TcpKeepalive;
use rds_auth_proxy_sim::Simulator;

/// Short enough for a test: a silent client is given up after 2 + 2 × 1 = 4 s.
const SHORT: TcpKeepalive = TcpKeepalive {
    idle: Duration::from_secs(2),
    interval: Duration::from_secs(1),
    probes: 2,
};

/// An in-process proxy from `args` with `keepalive` in place of the default.
async fn start_proxy_with_keepalive(args: &[String], sim: &Simulator, keepalive: TcpKeepalive) -> RunningProxy {
    let mut argv = vec!["rds-auth-proxy".to_owned()];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).expect("valid flags");
    let mut config = Config::from_args(&cli.proxy).expect("valid config");
    config.timeouts.keepalive = keepalive;
    let proxy = Proxy::bind(&config, Credentials::Fixed(sim.aws_credentials()))
        .await
        .expect("proxy binds");
    RunningProxy::spawn(proxy)
}

/// The `timer:(keepalive,…)` remaining times, in seconds, of the established TCP sockets that
/// `filter` selects (an `ss` filter expression); `None` for a socket showing another timer
/// (e.g. a retransmission pending) or none.
fn keepalive_timers(filter: &str) -> Vec<Option<f64>> {
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established", filter])
        .output()
        .expect("ss is installed (iproute2)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let timer = line.split("timer:(keepalive,").nth(1)?;
            let left = timer.split(',').next()?;
            if let Some(ms) = left.strip_suffix("ms") {
                ms.parse::<f64>().ok().map(|ms| ms / 1000.0)
            } else if let Some(s) = left.strip_suffix("sec") {
                s.parse::<f64>().ok()
            } else if let Some(m) = left.strip_suffix("min") {
                m.parse::<f64>().ok().map(|m| m * 60.0)
            } else {
                None
            }
        })
        .collect()
}

/// Waits (a socket with data in flight shows its retransmission timer instead) until every
/// socket `filter` selects shows its keepalive timer; returns the times left.
async fn idle_keepalive_timers(filter: &str, sockets: usize) -> Vec<f64> {
    let started = Instant::now();
    loop {
        let timers = keepalive_timers(filter);
        if timers.len() == sockets && timers.iter().all(Option::is_some) {
            return timers.into_iter().flatten().collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{filter}: expected {sockets} socket(s) with a keepalive timer, got {timers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_is_on_for_client_and_direct_upstream_sockets() {
    let sim = start_sim().await;
    let keepalive = TcpKeepalive {
        idle: Duration::from_secs(7),
        interval: Duration::from_secs(3),
        probes: 5,
    };
    let proxy = start_proxy_with_keepalive(&direct_args(&sim), &sim, keepalive).await;
    let client = connect(&proxy, "db_user").await.expect("connects");
    let one: i32 = client.query_one("SELECT 1", &[]).await.expect("query").get(0);
    assert_eq!(one, 1);

    // The proxy's accepted socket: local port = the proxy's port.
    let accepted = idle_keepalive_timers(&format!("( sport = :{} )", proxy.addr.port()), 1).await;
    // The proxy's upstream socket: remote port = the simulated RDS front's port.
    let upstream = idle_keepalive_timers(&format!("( dport = :{} )", sim.front_addr.port()), 1).await;
    for left in accepted.iter().chain(&upstream) {
        assert!(*left > 0.0 && *left <= 7.0, "keepalive idle {left} s, set to 7 s");
    }
    drop(client);
    proxy.stop().await;
    sim.stop().await;
}

/// Counts the database sessions of `application_name`.
async fn sessions_of(observer: &tokio_postgres::Client, app: &str) -> i64 {
    observer
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&app])
        .await
        .expect("pg_stat_activity")
        .get(0)
}

async fn wait_for_sessions(observer: &tokio_postgres::Client, app: &str, n: i64, deadline: Duration) -> Duration {
    let started = Instant::now();
    while sessions_of(observer, app).await != n {
        assert!(started.elapsed() < deadline, "{app}: never {n} session(s) within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_is_dropped_by_keepalive() {
    if !require_root("a_vanished_client_is_dropped_by_keepalive") {
        return;
    }
    let netns = Netns::create();
    let sim = start_sim().await;
    // The proxy listens on the host's end of the veth pair; a second one, on loopback with the
    // default keepalive, lets the test watch the database.
    // A shared listener: the client in the namespace is remote, so it comes over TLS (psql's
    // default sslmode=prefer) and gives the client password.
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("client-password");
    std::fs::write(&password_file, "ka-client-pw\n").expect("write");
    std::fs::set_permissions(&password_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let mut args = direct_args(&sim);
    args.extend(["--address".into(), netns.host_ip.clone(), "--allow-remote".into()]);
    args.extend(["--client-password-file".into(), password_file.display().to_string()]);
    args.extend(["--local-tls".into(), format!("--local-tls-ca-out={}", dir.path().join("ca.pem").display())]);
    let proxy = start_proxy_with_keepalive(&args, &sim, SHORT).await;
    let observer_proxy = start_proxy_with_keepalive(&direct_args(&sim), &sim, TcpKeepalive::default()).await;
    let observer = connect(&observer_proxy, "db_user").await.expect("observer connects");

    // psql inside the namespace, connected and idle (waiting on its stdin).
    let app = "vanishing-client";
    let mut psql = netns
        .command("psql")
        .arg(format!(
            "host={} port={} user=db_user dbname=postgres application_name={app} connect_timeout=20",
            netns.host_ip,
            proxy.addr.port()
        ))
        .env("PGPASSWORD", "ka-client-pw")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql is installed");
    wait_for_sessions(&observer, app, 1, Duration::from_secs(30)).await;

    netns.vanish();
    let gone_after = wait_for_sessions(&observer, app, 0, Duration::from_secs(30)).await;
    // 4 s of keepalive, plus the relay's teardown; far below the default's 2 minutes and
    // the hours a connection would otherwise stay.
    assert!(gone_after < Duration::from_secs(15), "dropped after {gone_after:?}");
    assert!(gone_after >= Duration::from_secs(1), "dropped too early ({gone_after:?}): not by keepalive");

    let _ = psql.kill();
    let _ = psql.wait();
    drop(observer);
    proxy.stop().await;
    observer_proxy.stop().await;
    sim.stop().await;
}
