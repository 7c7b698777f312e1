//! RDS Proxy and Aurora endpoints, end to end with real psql through the binary and the
//! simulator's RDS front, which serves several names from one address: a certificate per name
//! (SNI), and a token must be signed for the name the client asked for.
//!
//! * An RDS Proxy name is verified against the proxy roots (built-in Amazon Trust Services, or
//!   `--proxy-ca-bundle`: here the simulator's ATS-like root), never against the RDS bundle or
//!   `--ca-bundle`; every other name the other way round (`sim --swap-tls-chains` proves both).
//! * Aurora cluster, reader and custom endpoints: the proxy verifies and signs for the very name
//!   it connects to, also when `--db-cluster [--reader]` found it.

mod common;

use std::process::Stdio;

use common::binary::*;
use rds_auth_proxy_sim::rds_api::{SIM_CLUSTER_CUSTOM_ENDPOINT, SIM_CLUSTER_ENDPOINT, SIM_CLUSTER_READER_ENDPOINT};
use rds_auth_proxy_sim::runner::{SIM_ENDPOINT, SIM_PROXY_ENDPOINT};
use rds_auth_proxy_sim::{SimOptions, Simulator};

/// A proxy process for `sim` with `args`, on a free port, up to its ready line.
fn start(sim: &Simulator, args: &[&str]) -> Running {
    let mut cmd = sim_command(sim);
    cmd.args(args).args(["--port", "0"]);
    Running::start(cmd)
}

/// psql through `proxy` as db_user, no password anywhere: (success, stdout, stderr).
fn psql_through(proxy: &Running, sql: &str) -> (bool, String, String) {
    let out = psql_at(proxy.port, "db_user", "postgres", sql);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn accepted_for(sim: &Simulator, name: &str) -> u64 {
    sim.front_state
        .accepted_by_name
        .lock()
        .unwrap()
        .get(name)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_proxy_endpoint_verifies_against_the_proxy_roots_only() {
    let sim = common::start_sim().await;
    let target = format!("{SIM_PROXY_ENDPOINT}:5432");
    let front = sim.front_addr.to_string();
    let proxy_ca = sim.proxy_ca_file.display().to_string();
    let rds_ca = sim.ca_file.display().to_string();

    // Through the simulated SSM node, which reaches the proxy name; no --ca-bundle at all.
    let node = sim.ssm.target_id().to_owned();
    let mut proxy = start(&sim, &["--target", &target, "--via", "ssm", "--ssm-target", &node, "--proxy-ca-bundle", &proxy_ca]);
    assert!(proxy.startup_log().contains(r#""endpoint_kind":"RDS Proxy endpoint""#), "{}", proxy.startup_log());
    assert!(proxy.startup_log().contains(&format!("--proxy-ca-bundle {proxy_ca}")), "{}", proxy.startup_log());
    let (ok, out, err) = psql_through(&proxy, "SELECT current_user");
    assert!(ok, "{err}");
    assert_eq!(out, "db_user");
    assert_eq!(accepted_for(&sim, SIM_PROXY_ENDPOINT), 1, "the token was signed for the proxy name");
    proxy.stop();

    // Without --proxy-ca-bundle the built-in Amazon Trust Services roots verify it — and the
    // simulator cannot sign with Amazon's keys, so it is refused; the RDS CA given as
    // --ca-bundle does not apply to a proxy name either.
    let mut proxy = start(&sim, &["--target", &target, "--via", "direct", "--connect-addr", &front, "--ca-bundle", &rds_ca]);
    assert!(proxy.startup_log().contains("the built-in Amazon Trust Services roots"), "{}", proxy.startup_log());
    let (ok, _, err) = psql_through(&proxy, "SELECT 1");
    assert!(!ok);
    assert!(err.contains(&format!("FATAL:  rds-auth-proxy: TLS handshake with {SIM_PROXY_ENDPOINT} failed")), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("is an RDS Proxy endpoint name, chain to the Amazon Trust Services roots"), "{err}");
    proxy.stop();
    assert_eq!(accepted_for(&sim, SIM_PROXY_ENDPOINT), 1, "no login without verify-full");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_chains_are_refused_for_both_kinds_of_name() {
    let sim = common::start_sim_with(SimOptions {
        swap_tls_chains: true,
        ..SimOptions::default()
    })
    .await;
    let front = sim.front_addr.to_string();
    let proxy_ca = sim.proxy_ca_file.display().to_string();
    let rds_ca = sim.ca_file.display().to_string();
    // Both roots given: each name must still verify only against its own kind.
    for (name, expected_hint) in [
        (SIM_ENDPOINT, "signed by the RDS CA bundle"),
        (SIM_CLUSTER_READER_ENDPOINT, "signed by the RDS CA bundle"),
        (SIM_PROXY_ENDPOINT, "chain to the Amazon Trust Services roots"),
    ] {
        let target = format!("{name}:5432");
        let mut proxy = start(&sim, &[
            "--target", &target, "--via", "direct", "--connect-addr", &front,
            "--ca-bundle", &rds_ca, "--proxy-ca-bundle", &proxy_ca,
        ]);
        let (ok, _, err) = psql_through(&proxy, "SELECT 1");
        assert!(!ok, "{name} with the other kind's chain must be refused");
        assert!(err.contains(&format!("TLS handshake with {name} failed")), "{err}");
        assert!(err.contains("UnknownIssuer"), "{err}");
        assert!(err.contains(expected_hint), "{err}");
        proxy.stop();
    }
    assert_eq!(sim.front_state.accepted.load(std::sync::atomic::Ordering::Relaxed), 0);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aurora_endpoints_sign_and_verify_for_their_own_names() {
    let sim = common::start_sim().await;
    let front = sim.front_addr.to_string();
    let rds_ca = sim.ca_file.display().to_string();
    let direct = ["--via", "direct", "--connect-addr", &front, "--ca-bundle", &rds_ca];
    let custom = format!("{SIM_CLUSTER_CUSTOM_ENDPOINT}:5432");
    let cases: [(&[&str], &str, &str); 3] = [
        (&["--db-cluster", "simcluster", "--reader"], SIM_CLUSTER_READER_ENDPOINT, "Aurora reader endpoint"),
        (&["--db-cluster", "simcluster"], SIM_CLUSTER_ENDPOINT, "Aurora cluster (writer) endpoint"),
        (&["--target", &custom], SIM_CLUSTER_CUSTOM_ENDPOINT, "Aurora custom endpoint"),
    ];
    for (how, name, kind) in cases {
        let args: Vec<&str> = how.iter().chain(direct.iter()).copied().collect();
        let mut proxy = start(&sim, &args);
        assert!(proxy.startup_log().contains(&format!(r#""endpoint_kind":"{kind}""#)), "{}", proxy.startup_log());
        assert!(proxy.startup_log().contains("the built-in RDS CA bundle and --ca-bundle"), "{}", proxy.startup_log());
        let (ok, out, err) = psql_through(&proxy, "SELECT current_user");
        assert!(ok, "{how:?}: {err}");
        assert_eq!(out, "db_user");
        assert_eq!(accepted_for(&sim, name), 1, "{how:?}: the token was signed for {name}");
        proxy.stop();
    }
    assert_eq!(accepted_for(&sim, SIM_ENDPOINT), 0);
    sim.stop().await;
}

/// The simulator is strict about the token's host: psql straight to the front asking for the
/// reader name (SNI, verify-full) gets in with a token for the reader name and is refused with
/// a token for the writer name — as IAM refuses a signature over another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_checks_the_token_host_against_the_name_asked_for() {
    let sim = common::start_sim().await;
    let token_for = |host: &str| {
        let out = sim_command(&sim)
            .args(["token", "--hostname", host, "--port", "5432", "--username", "db_user"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
    };
    let psql = |token: &str| {
        let conninfo = format!(
            "host={SIM_CLUSTER_READER_ENDPOINT} hostaddr={ip} port={port} user=db_user dbname=postgres \
             sslmode=verify-full sslrootcert={ca}",
            ip = sim.front_addr.ip(),
            port = sim.front_addr.port(),
            ca = sim.ca_file.display()
        );
        // The token as the password, as a client without the proxy would give it.
        psql_command(&[&conninfo, "-tA", "-c", "SELECT current_user"])
            .env("PGPASSWORD", token)
            .output()
            .unwrap()
    };
    let refused = psql(&token_for(SIM_CLUSTER_ENDPOINT));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("PAM authentication failed for user \"db_user\""), "{err}");
    let ok = psql(&token_for(SIM_CLUSTER_READER_ENDPOINT));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "db_user");
    assert_eq!(accepted_for(&sim, SIM_CLUSTER_READER_ENDPOINT), 1);
    assert_eq!(accepted_for(&sim, SIM_CLUSTER_ENDPOINT), 0);
    sim.stop().await;
}

/// `doctor` verifies with the same roots as the proxy: its tls step passes for the RDS Proxy
/// name with the proxy roots, and fails with the Amazon Trust Services hint without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_uses_the_proxy_roots_for_a_proxy_name() {
    let sim = common::start_sim().await;
    let target = format!("{SIM_PROXY_ENDPOINT}:5432");
    let front = sim.front_addr.to_string();
    let proxy_ca = sim.proxy_ca_file.display().to_string();
    let doctor = |extra: &[&str]| {
        sim_command(&sim)
            .args(["doctor", "--target", &target, "--via", "direct", "--connect-addr", &front, "--db-user", "db_user"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = doctor(&["--proxy-ca-bundle", &proxy_ca]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("[ ok ] tls"), "{text}");
    assert_eq!(accepted_for(&sim, SIM_PROXY_ENDPOINT), 1);
    let out = doctor(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("[FAIL] tls"), "{text}");
    assert!(text.contains("chain to the Amazon Trust Services roots"), "{text}");
    sim.stop().await;
}
