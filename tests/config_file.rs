//! The config file as a user runs it: several targets served by one binary (psql to each, one
//! direct and one through the simulated SSM), `--list-targets`, flag > env > file precedence
//! through the real environment, one-line errors, `--run-connection-test` exit codes, and the
//! completions, man page and `--version` the binary prints.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::binary::*;
use common::*;
use rds_auth_proxy_sim::runner::{SIM_DB_PORT, SIM_ENDPOINT};
use rds_auth_proxy_sim::Simulator;

fn write_file(dir: &Path, text: &str) -> String {
    write_named(dir, "config.toml", text)
}

fn write_named(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A `[[target]]` table for the simulator, direct or through its SSM service.
fn sim_target(sim: &Simulator, name: &str, via_ssm: bool) -> String {
    let route = if via_ssm {
        format!("via = \"ssm\"\nssm_target = \"{}\"\n", sim.ssm.target_id())
    } else {
        format!("via = \"direct\"\nconnect_addr = \"{}\"\n", sim.front_addr)
    };
    format!("[[target]]\nname = \"{name}\"\nendpoint = \"{SIM_ENDPOINT}:{SIM_DB_PORT}\"\nport = 0\n{route}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_targets_from_one_file_direct_and_ssm_psql_to_each() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "ca_bundle = \"{}\"\ndrain_timeout = 1\n\n{}{}",
        sim.ca_file.display(),
        sim_target(&sim, "direct-db", false),
        sim_target(&sim, "ssm-db", true)
    );
    let file = write_file(dir.path(), &text);
    let mut cmd = sim_command(&sim);
    cmd.args(["--config", &file]);
    let mut run = Running::start_targets(cmd, 2);
    let (direct, ssm) = (run.ports["direct-db"], run.ports["ssm-db"]);
    assert_ne!(direct, ssm);
    assert_eq!(psql_select(direct, "SELECT current_user"), "db_user");
    assert_eq!(psql_select(ssm, "SELECT 6*7"), "42");
    // Both at once, so one process really serves both.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| psql_select(direct, "SELECT 'a' || pg_sleep(0.2)"));
        let b = s.spawn(|| psql_select(ssm, "SELECT 'b' || pg_sleep(0.2)"));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((a.as_str(), b.as_str()), ("a", "b"));
    let started = run
        .early()
        .iter()
        .map(|l| json(l))
        .find(|v| v["fields"]["message"] == "configuration file read")
        .expect("the file is named in the log");
    assert_eq!(started["fields"]["file"], file.as_str());
    assert_eq!(started["fields"]["targets"], 2);
    assert_eq!(run.stop(), Some(143));
    sim.stop().await;
}

#[test]
fn list_targets_and_precedence_through_the_real_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "port = 7100\nvia = \"direct\"\n\n[[target]]\nname = \"only\"\nendpoint = \"db.x.eu-west-1.rds.amazonaws.com\"\n",
    );
    let list = |cmd: &mut Command| {
        let out = cmd.arg("--list-targets").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // (flag, env, file has it) → listener port
    #[rustfmt::skip]
    let cases: &[(Option<&str>, Option<&str>, &str)] = &[
        (None,         None,         "127.0.0.1:7100"), // file
        (None,         Some("7200"), "127.0.0.1:7200"), // env > file
        (Some("7300"), Some("7200"), "127.0.0.1:7300"), // flag > env
        (Some("7300"), None,         "127.0.0.1:7300"), // flag > file
    ];
    for (flag, env, expected) in cases {
        let mut cmd = bare();
        cmd.args(["--config", &file]);
        if let Some(port) = flag {
            cmd.args(["--port", port]);
        }
        if let Some(port) = env {
            cmd.env("RDS_AUTH_PROXY_PORT", port);
        }
        let out = list(&mut cmd);
        assert!(out.contains(&format!("only  {expected}  db.x.eu-west-1.rds.amazonaws.com:5432  direct")), "{flag:?} {env:?}: {out}");
    }
    // Default, when neither the file nor anything else sets it.
    let plain = write_named(dir.path(), "plain.toml", "[[target]]\nname = \"only\"\nendpoint = \"db.example\"\n");
    assert!(list(bare().args(["--config", &plain])).contains("127.0.0.1:6543"));
    // The file from RDS_AUTH_PROXY_CONFIG, and the default file under XDG_CONFIG_HOME.
    assert!(list(bare().env("RDS_AUTH_PROXY_CONFIG", &file)).contains("127.0.0.1:7100"));
    let xdg = tempfile::tempdir().unwrap();
    std::fs::create_dir(xdg.path().join("rds-auth-proxy")).unwrap();
    std::fs::copy(&file, xdg.path().join("rds-auth-proxy/config.toml")).unwrap();
    assert!(list(bare().env("XDG_CONFIG_HOME", xdg.path())).contains("127.0.0.1:7100"));
    // Without any file, the flags alone, as before.
    let out = list(bare().args(["--target", "db.example", "-p", "7400"]));
    assert_eq!(out, "NAME        LISTEN          ENDPOINT         VIA\ndb.example  127.0.0.1:7400  db.example:5432  direct\n");
}

#[test]
fn file_mistakes_are_one_line_naming_file_line_and_key_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("endpoint = \"db\"\n\nprot = 6000\n", ":3: key \"prot\": unknown key at the top level (did you mean \"port\"?)"),
        ("endpoint = \"db\"\nport = \"six\"\n", ":2: key \"port\": invalid digit found in string"),
        (
            "[[target]]\nname = \"a\"\nendpoint = \"db\"\nport = 7000\n[[target]]\nname = \"b\"\nendpoint = \"db2\"\nport = 7000\n",
            ":8: key \"port\": targets \"a\" and \"b\" both listen on port 7000",
        ),
        ("endpoint = \n", ":1: key \"endpoint\": invalid TOML"),
    ];
    for (text, expected) in cases {
        let file = write_file(dir.path(), text);
        let out = bare().args(["--config", &file]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with(&format!("rds-auth-proxy: {file}{expected}")), "{err}");
    }
    let out = bare().args(["--config", "/nonexistent/config.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("rds-auth-proxy: cannot read the config file /nonexistent/config.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_exits_1_naming_the_failing_target_with_its_hint() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    // "broken" dials a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = format!(
        "ca_bundle = \"{}\"\ndb_user = \"db_user\"\n\n{}[[target]]\nname = \"broken\"\nendpoint = \"{SIM_ENDPOINT}\"\nport = 0\nconnect_addr = \"{closed}\"\n",
        sim.ca_file.display(),
        sim_target(&sim, "good", false),
    );
    let file = write_file(dir.path(), &text);
    let out = sim_command(&sim)
        .args(["--config", &file, "--run-connection-test", "--quiet"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let failures: Vec<&str> = err.lines().filter(|l| l.starts_with("rds-auth-proxy: connection test failed")).collect();
    assert_eq!(failures.len(), 1, "only the broken target fails: {err}");
    assert!(failures[0].contains("target \"broken\": 08001 "), "{err}");
    assert!(failures[0].contains("HINT: "), "the client's HINT is shown: {err}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_passes_and_keeps_serving() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "ca_bundle = \"{}\"\ndb_user = \"db_user\"\ndrain_timeout = 1\n\n{}{}",
        sim.ca_file.display(),
        sim_target(&sim, "direct-db", false),
        sim_target(&sim, "ssm-db", true)
    );
    let file = write_file(dir.path(), &text);
    let mut cmd = sim_command(&sim);
    cmd.args(["--config", &file, "--run-connection-test"]);
    let mut run = Running::start_targets(cmd, 2);
    let passed = run.wait_for_log("connection test passed");
    assert_eq!(passed["fields"]["targets"], 2);
    // Still serving after the test.
    assert_eq!(psql_select(run.ports["ssm-db"], "SELECT 1"), "1");
    assert_eq!(run.stop(), Some(143));
    sim.stop().await;
}

#[test]
fn completions_for_every_shell_and_a_man_page() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = bare().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8_lossy(&out.stdout);
        // fish writes `-l ssm-target`, the others `--ssm-target`.
        for flag in ["ssm-target", "config", "run-connection-test", "list-targets", "completions"] {
            assert!(script.contains(flag), "{shell} completion lacks {flag}");
        }
    }
    // bash accepts the script it is given.
    let out = bare().args(["completions", "bash"]).output().unwrap();
    let check = Command::new("bash")
        .args(["-n", "-c", &String::from_utf8_lossy(&out.stdout)])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let out = bare().arg("completions").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a shell is required");

    let out = bare().arg("man").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.starts_with(".ie \\n(.g .ds Aq") || man.contains(".TH rds-auth-proxy"), "{}", &man[..200.min(man.len())]);
    for needle in [".TH rds-auth-proxy 1", "\\-\\-ssm\\-target", "\\-\\-config", "RDS_AUTH_PROXY_TARGET"] {
        assert!(man.contains(needle), "man page lacks {needle}");
    }
}

#[test]
fn version_names_the_commit_and_the_embedded_bundle() {
    let out = bare().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("rds-auth-proxy {}", env!("CARGO_PKG_VERSION")));
    let commit = lines[1].strip_prefix("commit: ").expect("commit line");
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{commit}"
    );
    // The same commit as the checkout this test runs in, when there is one.
    if let Ok(head) = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output() {
        if head.status.success() {
            assert_eq!(commit, String::from_utf8_lossy(&head.stdout).trim());
        }
    }
    let info = rds_auth_proxy::version::embedded_bundle();
    assert_eq!(
        lines[2],
        format!(
            "embedded RDS CA bundle: {} certificates, newest expires {}",
            info.certificates,
            info.newest_expiry.unwrap()
        )
    );
    assert_eq!(
        lines[3],
        "embedded Amazon Trust Services roots (RDS Proxy endpoints only): 5 certificates, newest expires 2040-05-26 00:00:00 UTC"
    );
    // -V stays the short version.
    let out = bare().arg("-V").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("rds-auth-proxy {}", env!("CARGO_PKG_VERSION")));
}
