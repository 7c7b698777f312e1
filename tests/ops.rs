//! Operating the proxy: health checks and a parsed `/metrics` scrape that moves with real psql
//! connections, `wait`, the audit lines, the graceful drain (57P01, exit codes) and sleep/wake.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use common::binary::*;
use common::*;
use rds_auth_proxy::app::{Credentials, Proxy};
use rds_auth_proxy_sim::runner::SIM_ENDPOINT;

/// The documented fields of every audit line (docs/operations.md, "Audit lines").
const AUDIT_FIELDS: &[&str] = &[
    "audit", "client", "target", "engine", "db_user", "upstream_user", "database", "principal_arn", "ssm_session",
];
/// And of close lines in addition.
const AUDIT_CLOSE_FIELDS: &[&str] = &[
    "bytes_to_upstream", "bytes_to_client", "duration_ms", "closed_by", "reason", "sqlstate",
];

/// An in-process proxy with its HTTP endpoint on a free port: (proxy, http address).
async fn start_with_http(args: Vec<String>, credentials: Credentials) -> (RunningProxy, SocketAddr) {
    let mut argv = vec!["rds-auth-proxy".to_owned()];
    argv.extend(args);
    argv.extend(["--http-port", "0", "--drain-timeout", "1"].map(String::from));
    let cli = rds_auth_proxy::cli::Cli::try_parse_from(argv).expect("valid flags");
    let config = rds_auth_proxy::config::Config::from_args(&cli.proxy).expect("valid config");
    let proxy = Proxy::bind(&config, credentials).await.expect("proxy binds");
    let http = proxy.http_addr().expect("HTTP endpoint bound");
    (RunningProxy::spawn(proxy), http)
}

async fn get(http: SocketAddr, path: &str) -> (u16, String) {
    rds_auth_proxy::http::get(http, path).await.expect("HTTP GET")
}

/// A scrape parsed back: `name{labels}` → value (comments and `# EOF` skipped).
async fn scrape(http: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.ends_with("# EOF\n"), "a complete OpenMetrics exposition");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (series.to_owned(), value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

fn value(scrape: &HashMap<String, f64>, series: &str) -> f64 {
    *scrape
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {:#?}", scrape.keys().collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_and_a_scrape_that_moves_with_psql_via_ssm() {
    let sim = start_sim().await;
    let setup = sim.aws_setup();
    let (proxy, http) = start_with_http(ssm_args(&sim), Credentials::FixedWith(setup)).await;
    let t = format!("target=\"{SIM_ENDPOINT}\"");
    for (path, status) in [("/startup", 200), ("/liveness", 200), ("/readiness", 200), ("/nope", 404)] {
        let (got, body) = get(http, path).await;
        assert_eq!(got, status, "{path}: {body}");
    }
    let before = scrape(http).await;
    assert_eq!(value(&before, &format!("rds_auth_proxy_connections_total{{{t}}}")), 0.0);
    assert_eq!(value(&before, &format!("rds_auth_proxy_ssm_sessions_open{{{t}}}")), 0.0);

    let port = proxy.addr.port();
    for _ in 0..2 {
        let out = tokio::task::spawn_blocking(move || psql_at(port, "db_user", "postgres", "SELECT repeat('x', 10000)"))
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The server refuses this one after the token was accepted: 3D000.
    let out = tokio::task::spawn_blocking(move || psql_at(port, "db_user", "nosuchdb", "SELECT 1")).await.unwrap();
    assert!(!out.status.success());

    // psql has exited; the proxy's side of its connection ends a moment later (through SSM:
    // once the server's close has come back through the tunnel), so wait for that.
    let open_series = format!("rds_auth_proxy_connections_open{{{t}}}");
    let started = Instant::now();
    let after = loop {
        let after = scrape(http).await;
        if value(&after, &open_series) == 0.0 {
            break after;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the connections never closed on the proxy's side");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let v = |name: &str, labels: &str| value(&after, &format!("rds_auth_proxy_{name}{{{t}{labels}}}"));
    assert_eq!(v("connections_total", ""), 3.0);
    assert_eq!(v("connections_open", ""), 0.0, "all closed again");
    assert_eq!(v("login_failures_total", ",sqlstate=\"3D000\""), 1.0);
    assert_eq!(v("connect_duration_seconds_count", ""), 2.0, "two logins completed");
    assert!(v("relayed_bytes_total", ",direction=\"to_client\"") > 20_000.0, "two 10 kB results");
    assert!(v("relayed_bytes_total", ",direction=\"to_upstream\"") > 0.0);
    assert_eq!(v("iam_tokens_total", ",outcome=\"minted\""), 1.0, "one token for db_user…");
    assert_eq!(v("iam_tokens_total", ",outcome=\"reused\""), 2.0, "…reused by the next logins");
    assert_eq!(v("credential_refreshes_total", ""), 1.0);
    assert_eq!(v("ssm_sessions_started_total", ""), 1.0, "one shared SSM session");
    assert_eq!(v("ssm_sessions_open", ""), 1.0);
    assert_eq!(v("ssm_sessions_failed_total", ""), 0.0);
    assert_eq!(
        v("ssm_sessions_started_total", ""),
        sim.ssm.stats().sessions_started.load(std::sync::atomic::Ordering::SeqCst) as f64,
        "the simulator agrees"
    );

    // A connection that stays open: its traffic shows in the scrape before it closes.
    let open = connect(&proxy, "db_user").await.expect("login");
    let row = open.query_one("SELECT repeat('y', 50000)", &[]).await.expect("query");
    assert_eq!(row.get::<_, String>(0).len(), 50_000);
    let during = scrape(http).await;
    let d = |name: &str, labels: &str| value(&during, &format!("rds_auth_proxy_{name}{{{t}{labels}}}"));
    assert_eq!(d("connections_open", ""), 1.0, "still open");
    let to_client = d("relayed_bytes_total", ",direction=\"to_client\"") - v("relayed_bytes_total", ",direction=\"to_client\"");
    assert!(to_client >= 50_000.0, "the open connection's result is counted already: {to_client}");
    drop(open);
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_max_connections_and_failures_count_by_sqlstate_direct() {
    let sim = start_sim().await;
    let mut args = direct_args(&sim);
    args.extend(["--max-connections", "1"].map(String::from));
    let (proxy, http) = start_with_http(args, Credentials::Fixed(sim.aws_credentials())).await;
    let t = format!("target=\"{SIM_ENDPOINT}\"");
    let held = connect(&proxy, "db_user").await.expect("login");
    let (status, body) = get(http, "/readiness").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("at --max-connections (1)"), "{body}");
    assert_eq!(get(http, "/liveness").await.0, 200, "alive all the same");
    // Beyond the limit: 53300 from the proxy itself (not a login failure: never reached one).
    let err = connect(&proxy, "db_user").await.expect_err("over the limit");
    assert_eq!(db_error(&err).0, "53300");
    drop(held);
    // The superuser is not an IAM user: the simulated RDS refuses the token (28000 via PAM).
    let started = Instant::now();
    loop {
        match connect(&proxy, "postgres").await {
            Err(e) if db_error(&e).0 == "53300" => {
                // The held connection's session has not ended yet; its end is what we wait on.
                assert!(started.elapsed() < Duration::from_secs(10), "the held connection never closed");
                tokio::task::yield_now().await;
            }
            Err(_) => break,
            Ok(_) => panic!("the superuser logged in with a token"),
        }
    }
    let after = scrape(http).await;
    let failures: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("rds_auth_proxy_login_failures_total{{{t}")))
        .map(|(_, v)| v)
        .sum();
    assert!(failures >= 1.0, "{after:?}");
    assert_eq!(get(http, "/readiness").await.0, 200, "below the limit again");
    proxy.stop().await;
    sim.stop().await;
}

// ---- the binary ----

/// The fields these tests check are the ones docs/operations.md's "Audit lines" table lists.
#[test]
fn the_audit_fields_checked_here_are_the_documented_ones() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).expect("docs/operations.md");
    let section = page.split("\n## Audit lines\n").nth(1).and_then(|s| s.split("\n## ").next()).expect("an Audit lines section");
    let mut documented: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| cell.split(','))
        .filter_map(|name| name.trim().strip_prefix('`')?.strip_suffix('`'))
        .collect();
    documented.sort_unstable();
    let mut checked: Vec<&str> = AUDIT_FIELDS.iter().chain(AUDIT_CLOSE_FIELDS).copied().collect();
    checked.sort_unstable();
    assert_eq!(documented, checked);
}

fn is_audit(v: &serde_json::Value, kind: &str) -> bool {
    v["fields"]["audit"] == kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exits_0_once_the_proxy_is_up_and_1_with_a_clear_line_on_timeout() {
    // Nothing listens on this port (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let out = Command::new(BIN).env_clear().args(["wait", "--http-port", &port, "--timeout", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&format!("http://127.0.0.1:{port}/startup was not up within 1 s")), "{stderr}");

    // `wait` started first, then the proxy on that HTTP port: wait returns once it is up.
    let sim = start_sim().await;
    let waiter = Command::new(BIN)
        .env_clear()
        .env("RDS_AUTH_PROXY_HTTP_PORT", &port)
        .args(["wait", "--timeout", "60"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cmd = sim_command(&sim);
    cmd.args(direct_args(&sim)).args(["--http-port", &port]);
    let mut proxy = Running::start(cmd);
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(proxy.exit_code(), Some(143));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_audit_lines_carry_the_documented_fields_and_no_secret() {
    let sim = start_sim().await;
    let mut cmd = sim_command(&sim);
    cmd.env("RUST_LOG", "debug").args(ssm_args(&sim));
    let mut proxy = Running::start(cmd);
    let port = proxy.port;
    let out = tokio::task::spawn_blocking(move || psql_at(port, "db_user", "postgres", "SELECT 1")).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let open = proxy.wait_log("audit open", |v| is_audit(v, "open"));
    let close = proxy.wait_log("audit close", |v| is_audit(v, "close"));
    for line in [&open, &close] {
        for field in AUDIT_FIELDS {
            assert!(!line["fields"][field].is_null(), "{field} missing in {line}");
        }
        assert_eq!(line["fields"]["target"], SIM_ENDPOINT);
        assert_eq!(line["fields"]["engine"], "rds");
        assert_eq!(line["fields"]["upstream_user"], "", "RDS logs in the client's user");
        assert_eq!(line["fields"]["db_user"], "db_user");
        assert_eq!(line["fields"]["database"], "postgres");
        assert!(line["fields"]["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{line}");
        assert!(line["fields"]["ssm_session"].as_str().is_some_and(|s| !s.is_empty()), "{line}");
        let arn = line["fields"]["principal_arn"].as_str().unwrap();
        assert!(arn.starts_with("arn:aws:"), "the simulator's identity (STS): {line}");
    }
    for field in AUDIT_CLOSE_FIELDS {
        assert!(!close["fields"][field].is_null(), "{field} missing in {close}");
    }
    assert_eq!(close["fields"]["closed_by"], "client");
    assert!(close["fields"]["bytes_to_client"].as_u64().unwrap() > 0);

    // A crafted user name cannot forge a line: it stays inside its field.
    let forged = "evil\n{\"fields\":{\"audit\":\"open\"}}";
    let conn = format!("host=127.0.0.1 port={port} dbname=postgres connect_timeout=20");
    let mut config: tokio_postgres::Config = conn.parse().unwrap();
    config.user(forged);
    assert!(config.connect(tokio_postgres::NoTls).await.is_err(), "not an IAM user");
    let refused = proxy.wait_log("audit close of the refused login", |v| {
        is_audit(v, "close") && v["fields"]["closed_by"] == "error"
    });
    // JSON escapes it once, so the field holds the name exactly as the client sent it.
    assert_eq!(refused["fields"]["db_user"], forged);
    assert!(!refused["fields"]["sqlstate"].as_str().unwrap().is_empty(), "{refused}");

    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(proxy.exit_code(), Some(143));
    let logs = proxy.all_json();
    let audit: Vec<String> = logs
        .iter()
        .filter(|v| !v["fields"]["audit"].is_null())
        .map(|v| v.to_string())
        .collect();
    assert_eq!(audit.len(), 3, "open + close, and the refused login's close: {audit:#?}");
    let tokens = sim.ssm.issued_tokens();
    for line in &audit {
        for secret in [
            sim.credentials.secret_access_key.as_str(),
            sim.credentials.access_key_id.as_str(),
            "X-Amz-Signature",
            "Action=connect",
        ]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
        {
            assert!(!line.contains(secret), "a secret in an audit line: {line}");
        }
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drain_gives_a_running_query_57p01_refuses_new_connections_and_exits_143() {
    let sim = start_sim().await;
    let mut cmd = sim_command(&sim);
    cmd.args(ssm_args(&sim)).args(["--drain-timeout", "3"]);
    let mut proxy = Running::start(cmd);
    let port = proxy.port;
    let long = psql_command(&["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "db_user", "-d", "postgres", "-c", "SELECT pg_sleep(60)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let observer = tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=db_user dbname=postgres"), tokio_postgres::NoTls)
        .await
        .expect("observer logs in");
    let (observer, connection) = observer;
    let connection = tokio::spawn(connection);
    wait_until_active(&observer, "SELECT pg_sleep(60)").await;
    drop(observer);
    let _ = connection.await;
    // The observer's close is logged before the drain starts: only the long query is open.
    proxy.wait_log("the observer's close", |v| is_audit(v, "close"));

    let sigterm_at = Instant::now();
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    proxy.wait_log("drain start", |v| {
        v["fields"]["message"].as_str().is_some_and(|m| m.starts_with("stopped accepting"))
    });
    // The listener is closed at once: a new connection is refused, not queued.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "new connection accepted during the drain");

    let out = tokio::task::spawn_blocking(move || long.wait_with_output()).await.unwrap().unwrap();
    let waited = sigterm_at.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FATAL") && stderr.contains("terminating connection due to administrator command"),
        "psql got: {stderr}"
    );
    assert!(waited >= Duration::from_secs(3), "ended after {waited:?}, before the drain timeout");
    assert!(waited < Duration::from_secs(3 + 5), "ended after {waited:?}");
    assert_eq!(proxy.exit_code(), Some(143));
    let logs = proxy.all_json();
    let drained: Vec<_> = logs.iter().filter(|v| is_audit(v, "close") && v["fields"]["closed_by"] == "drain").collect();
    assert_eq!(drained.len(), 1, "{logs:#?}");
    assert_eq!(drained[0]["fields"]["sqlstate"], "57P01");
    let stats = sim.ssm.stats();
    assert!(stats.terminate_api_calls.load(std::sync::atomic::Ordering::SeqCst) >= 1, "SSM session terminated");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_zero_on_sigterm_and_a_second_sigint_exits_at_once() {
    let sim = start_sim().await;
    let mut cmd = sim_command(&sim);
    cmd.args(direct_args(&sim)).arg("--exit-zero-on-sigterm");
    let mut proxy = Running::start(cmd);
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(proxy.exit_code(), Some(0), "--exit-zero-on-sigterm");
    drop(proxy);

    // A long drain window and a query that would outlast it: the second Ctrl-C ends it now.
    let mut cmd = sim_command(&sim);
    cmd.args(direct_args(&sim)).args(["--drain-timeout", "600"]);
    let mut proxy = Running::start(cmd);
    let port = proxy.port;
    let (client, connection) = tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=db_user dbname=postgres"), tokio_postgres::NoTls)
        .await
        .expect("login");
    tokio::spawn(connection);
    let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(600)").await.map(|_| ()) });
    proxy.wait_log("the login", |v| is_audit(v, "open"));
    proxy.signal(nix::sys::signal::Signal::SIGINT);
    proxy.wait_log("first SIGINT", |v| {
        v["fields"]["message"].as_str().is_some_and(|m| m.starts_with("stopped accepting"))
    });
    let at = Instant::now();
    proxy.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(proxy.exit_code(), Some(130));
    assert!(at.elapsed() < Duration::from_secs(5), "took {:?}", at.elapsed());
    assert!(query.await.unwrap().is_err(), "the connection ended with the process");
    sim.stop().await;
}

/// SLOW (~100 s): the laptop sleeps. The proxy is stopped (SIGSTOP) for 90 s while the simulated
/// gateway resets its WebSocket and its credentials (from `credential_process`, valid 75 s)
/// expire; after SIGCONT the next psql just works: the SSM session is resumed or replaced and
/// the credentials are read again, with no restart and no error for the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_and_wake_the_next_connection_works_without_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::Ordering::SeqCst;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("calls");
    let script = dir.path().join("creds.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho call >> '{count}'\nexp=$(date -u -d '+75 seconds' +%Y-%m-%dT%H:%M:%SZ)\n\
             printf '{{\"Version\":1,\"AccessKeyId\":\"%s\",\"SecretAccessKey\":\"%s\",\"Expiration\":\"%s\"}}' '{key}' '{secret}' \"$exp\"\n",
            count = count.display(),
            key = sim.credentials.access_key_id,
            secret = sim.credentials.secret_access_key,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.path().join("aws-config");
    std::fs::write(&config, format!("[default]\ncredential_process = {}\n", script.display())).unwrap();
    let calls = || std::fs::read_to_string(&count).unwrap_or_default().lines().count();

    let mut cmd = sim_command(&sim);
    // No keys in the environment: the credentials must come from credential_process, which
    // expire while the laptop sleeps.
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_CONFIG_FILE", &config)
        .args(ssm_args(&sim));
    let mut proxy = Running::start(cmd);
    let port = proxy.port;
    let out = tokio::task::spawn_blocking(move || psql_at(port, "db_user", "postgres", "SELECT 1")).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats = sim.ssm.stats();
    assert_eq!(stats.sessions_started.load(SeqCst), 1);
    let calls_before = calls();
    assert!(calls_before >= 1, "credentials came from credential_process");

    proxy.signal(nix::sys::signal::Signal::SIGSTOP);
    let asleep = Instant::now();
    // While it sleeps, the gateway resets the WebSocket (no close frame), as after a real sleep.
    let killed = stats.ws_killed.load(SeqCst);
    sim.ssm.options().update(|o| o.kill_ws_after = Some(Duration::ZERO));
    while stats.ws_killed.load(SeqCst) == killed {
        assert!(asleep.elapsed() < Duration::from_secs(10), "the simulator never reset the WebSocket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.ssm.options().update(|o| o.kill_ws_after = None);
    // The sleep itself is the scenario (not a synchronisation): long enough for the 75 s
    // credentials to expire.
    tokio::time::sleep(Duration::from_secs(90).saturating_sub(asleep.elapsed())).await;
    proxy.signal(nix::sys::signal::Signal::SIGCONT);

    let out = tokio::task::spawn_blocking(move || psql_at(port, "db_user", "postgres", "SELECT 'awake'")).await.unwrap();
    assert!(out.status.success(), "after wake: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "awake");
    assert!(calls() > calls_before, "expired credentials were read again");
    let replaced = stats.sessions_resumed.load(SeqCst) + stats.sessions_started.load(SeqCst) - 1;
    assert!(replaced >= 1, "the dead WebSocket was resumed or its session replaced");
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(proxy.exit_code(), Some(143));
    sim.stop().await;
}
