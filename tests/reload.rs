//! Config reload as a user runs it: the real binary with a config file, psql through it, and the
//! file edited while a psql session sits inside `pg_sleep`. A new target serves within 2 s (the
//! file watcher), a changed port moves (SIGHUP), a removed target stops listening while its
//! session drains, and a broken file changes nothing and says why on one line; `/metrics` counts
//! reloads and refusals, and the audit log records each.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::binary::*;
use common::*;
use nix::sys::signal::Signal;
use rds_auth_proxy_sim::runner::{SIM_DB_PORT, SIM_ENDPOINT};
use rds_auth_proxy_sim::Simulator;
use serde_json::Value;

/// The session the tests keep open across a reload; the text finds it in pg_stat_activity.
const LONG_QUERY: &str = "SELECT 'finished' || pg_sleep(3)";

/// A `[[target]]` table for the simulator, direct, on local `port` (0: any).
fn sim_target(sim: &Simulator, name: &str, port: u16) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nendpoint = \"{SIM_ENDPOINT}:{SIM_DB_PORT}\"\nport = {port}\nvia = \"direct\"\nconnect_addr = \"{}\"\n\n",
        sim.front_addr
    )
}

/// The file's top level for the simulator, then `targets`.
fn file_text(sim: &Simulator, top: &str, targets: &[String]) -> String {
    format!("ca_bundle = \"{}\"\n{top}\n{}", sim.ca_file.display(), targets.concat())
}

/// Replaces the file's content the way editors do: a new file renamed over the old one.
fn write_file(path: &Path, text: &str) {
    let staged = path.with_extension("tmp");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// A port free right now (bound and released), for a target that must move to a known port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// psql running [`LONG_QUERY`] through `port`, and once the server is inside the sleep.
fn long_session(port: u16) -> Child {
    let child = psql_command(&["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "db_user", "-d", "postgres", "-tA", "-c", LONG_QUERY])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql starts");
    let seen = format!("SELECT count(*) FROM pg_stat_activity WHERE query = '{}' AND state = 'active'", LONG_QUERY.replace('\'', "''"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while psql_select(port, &seen) != "1" {
        assert!(Instant::now() < deadline, "the long session never reached pg_sleep");
    }
    child
}

/// The long session's result: it ran to the end through the proxy.
fn assert_finished(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the open session failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "finished");
}

fn refused(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

fn field<'v>(v: &'v Value, key: &str) -> &'v str {
    v["fields"][key].as_str().unwrap_or_default()
}

fn ready_port(v: &Value) -> u16 {
    field(v, "listen").rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
}

/// Reads on to the next "configuration reloaded" line and, with `ready`, that target's next
/// ready line, in either order (the target's own task logs the latter): the first, and the port.
fn wait_reloaded(run: &mut Running, ready: Option<&str>) -> (Value, Option<u16>) {
    let (mut reloaded, mut port) = (None, None);
    while reloaded.is_none() || (ready.is_some() && port.is_none()) {
        let v = run.wait_log("of the reload", |v| {
            message_starts_with(v, "configuration reloaded")
                || (v["fields"]["message"] == "ready for connections" && Some(field(v, "name")) == ready)
        });
        if message_starts_with(&v, "configuration reloaded") {
            reloaded = Some(v);
        } else {
            port = Some(ready_port(&v));
        }
    }
    (reloaded.expect("read above"), port)
}

fn start(sim: &Simulator, file: &Path, targets: usize) -> Running {
    let mut cmd = sim_command(sim);
    cmd.args(["--config", &file.display().to_string()]);
    Running::start_targets(cmd, targets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_adds_a_target_within_2s_while_a_session_on_the_first_completes() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let one = sim_target(&sim, "one", 0);
    write_file(&file, &file_text(&sim, "", std::slice::from_ref(&one)));
    let mut run = start(&sim, &file, 1);
    let first = run.ports["one"];
    let session = long_session(first);

    let edited = Instant::now();
    write_file(&file, &file_text(&sim, "", &[one, sim_target(&sim, "two", 0)]));
    let (reloaded, second) = wait_reloaded(&mut run, Some("two"));
    assert_eq!(psql_select(second.expect("a port"), "SELECT 'two'"), "two");
    let took = edited.elapsed();
    assert!(took < Duration::from_secs(2), "the new target served psql {took:?} after the edit");
    eprintln!("the new target served psql {took:?} after the edit");

    assert_eq!(field(&reloaded, "trigger"), "file");
    assert_eq!(field(&reloaded, "added"), "two");
    assert_eq!(field(&reloaded, "unchanged"), "one");
    assert_finished(session);
    assert_eq!(psql_select(first, "SELECT 'one'"), "one", "the unchanged target still serves on its port");
    assert_eq!(run.stop(), Some(143));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_moves_a_changed_port_while_the_open_session_completes() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    write_file(&file, &file_text(&sim, "", &[sim_target(&sim, "one", free_port())]));
    let mut run = start(&sim, &file, 1);
    let old = run.ports["one"];
    let session = long_session(old);

    let new = free_port();
    write_file(&file, &file_text(&sim, "", &[sim_target(&sim, "one", new)]));
    run.signal(Signal::SIGHUP);
    let (reloaded, port) = wait_reloaded(&mut run, Some("one"));
    assert_eq!(field(&reloaded, "trigger"), "sighup", "SIGHUP reloads at once, before the watcher's poll");
    assert_eq!(field(&reloaded, "changed"), "one");
    assert_eq!(port, Some(new));
    assert_eq!(psql_select(new, "SELECT 'moved'"), "moved");
    assert!(refused(old), "the old port is closed to new connections");
    assert_finished(session);
    // Nothing more to do: a SIGHUP with the file as it is changes nothing.
    run.signal(Signal::SIGHUP);
    let (again, _) = wait_reloaded(&mut run, None);
    assert_eq!(field(&again, "unchanged"), "one");
    assert_eq!(field(&again, "changed"), "");
    // A change that keeps the port: the old listener lets go of it and the new one takes it.
    let same_port = sim_target(&sim, "one", new) + "max_connections = 5\n";
    write_file(&file, &file_text(&sim, "", &[same_port]));
    run.signal(Signal::SIGHUP);
    let (changed, port) = wait_reloaded(&mut run, Some("one"));
    assert_eq!(field(&changed, "changed"), "one");
    assert_eq!(port, Some(new));
    assert_eq!(psql_select(new, "SELECT 'same port'"), "same port");
    assert_eq!(run.stop(), Some(143));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_target_stops_listening_and_its_session_drains() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let one = sim_target(&sim, "one", 0);
    write_file(&file, &file_text(&sim, "", &[one.clone(), sim_target(&sim, "two", 0)]));
    let mut run = start(&sim, &file, 2);
    let (first, second) = (run.ports["one"], run.ports["two"]);
    let session = long_session(second);

    write_file(&file, &file_text(&sim, "", &[one]));
    run.signal(Signal::SIGHUP);
    let (reloaded, _) = wait_reloaded(&mut run, None);
    assert_eq!(field(&reloaded, "removed"), "two");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !refused(second) {
        assert!(Instant::now() < deadline, "the removed target still accepts connections");
    }
    assert_finished(session);
    assert_eq!(psql_select(first, "SELECT 'one'"), "one");
    let audit = run.wait_log("an audit line for the reload", |v| v["fields"]["audit"] == "reload");
    assert_eq!(field(&audit, "outcome"), "applied");
    assert_eq!(field(&audit, "removed"), "two");
    assert_eq!(run.stop(), Some(143));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_changes_nothing_and_says_where_then_a_fixed_one_applies() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let http = free_port();
    let top = format!("http_port = {http}\ndrain_timeout = 10\n");
    let one = sim_target(&sim, "one", 0);
    write_file(&file, &file_text(&sim, &top, std::slice::from_ref(&one)));
    let mut run = start(&sim, &file, 1);
    let first = run.ports["one"];
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], http));

    // A second target with a misspelt key: neither it nor anything else may change.
    let broken = file_text(&sim, &top, &[one.clone(), sim_target(&sim, "two", 0).replace("via =", "vai =")]);
    let bad_line = broken.lines().position(|l| l.starts_with("vai =")).unwrap() + 1;
    write_file(&file, &broken);
    run.signal(Signal::SIGHUP);
    let refused_line = run.wait_for_log("configuration not reloaded");
    let error = field(&refused_line, "error");
    assert!(
        error.starts_with(&format!("{}:{bad_line}: key \"vai\": unknown key", file.display())),
        "one line naming the file, the line and the key: {error}"
    );
    let audit = run.wait_log("an audit line for the refusal", |v| v["fields"]["audit"] == "reload");
    assert_eq!(field(&audit, "outcome"), "refused");
    assert_eq!(psql_select(first, "SELECT 'still'"), "still");
    let (_, metrics) = rds_auth_proxy::http::get(http, "/metrics").await.unwrap();
    assert!(metrics.contains("rds_auth_proxy_config_reloads_total 0\n"), "{metrics}");
    assert!(metrics.contains("rds_auth_proxy_config_reload_failures_total 1\n"), "{metrics}");

    // Fixed, with a process-wide key changed too: the target is added, the key named and kept.
    let fixed = file_text(&sim, "http_port = 1\ndrain_timeout = 3\n", &[one, sim_target(&sim, "two", 0)]);
    write_file(&file, &fixed);
    run.signal(Signal::SIGHUP);
    let kept = run.wait_for_log("these keys apply to the whole process");
    assert_eq!(field(&kept, "keys"), "http_address/http_port, drain_timeout");
    let (_, second) = wait_reloaded(&mut run, Some("two"));
    assert_eq!(psql_select(second.expect("a port"), "SELECT 'two'"), "two");
    let (_, metrics) = rds_auth_proxy::http::get(http, "/metrics").await.unwrap();
    assert!(metrics.contains("rds_auth_proxy_config_reloads_total 1\n"), "{metrics}");
    assert!(metrics.contains("rds_auth_proxy_config_reload_failures_total 1\n"), "{metrics}");
    assert_eq!(run.stop(), Some(143));
    assert!(
        !run.all_logs().iter().any(|l| l.contains(&sim.credentials.secret_access_key)),
        "no secret in the log"
    );
    sim.stop().await;
}
