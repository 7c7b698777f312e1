//! The binary as a user runs it: real psql through `rds-auth-proxy`, credentials from the AWS
//! environment chain, configuration from flags and RDS_AUTH_PROXY_* variables, the `token` and
//! `sim` subcommands, and logs that never carry a secret.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::binary::*;
use common::*;
use rds_auth_proxy_sim::runner::{SIM_DB_PORT, SIM_ENDPOINT, SIM_REGION};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_the_binary_with_env_credentials_and_unix_socket() {
    let sim = start_sim().await;
    let socket_dir = tempfile::tempdir().unwrap();
    let mut cmd = sim_command(&sim);
    cmd.env("RUST_LOG", "trace")
        // Configuration through RDS_AUTH_PROXY_* instead of flags.
        .env("RDS_AUTH_PROXY_TARGET", format!("{SIM_ENDPOINT}:{SIM_DB_PORT}"))
        .env("RDS_AUTH_PROXY_CONNECT_ADDR", sim.front_addr.to_string())
        .env("RDS_AUTH_PROXY_CA_BUNDLE", &sim.ca_file)
        .env("RDS_AUTH_PROXY_PORT", "0")
        .args(["--unix-socket", socket_dir.path().to_str().unwrap()]);
    let mut proxy = Running::start(cmd);
    let port = proxy.port;
    let port_s = port.to_string();

    let out = psql(&["-h", "127.0.0.1", "-p", &port_s, "-U", "db_user", "-d", "postgres", "-tA", "-c", "SELECT current_user"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "db_user");

    // A login the server refuses after the token was accepted is logged as refused, with the
    // server's SQLSTATE and message, and not as a session.
    let out = psql(&["-h", "127.0.0.1", "-p", &port_s, "-U", "db_user", "-d", "nosuchdb", "-c", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database \"nosuchdb\" does not exist"));

    let out = psql(&["-h", "127.0.0.1", "-p", &port_s, "-U", "db_user", "-d", "postgres", "-c", "\\l"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("template1") && listing.contains("postgres"), "{listing}");

    // The Unix socket: .s.PGSQL.<port>, mode 0600, and psql -h DIR works.
    let sock = socket_dir.path().join(format!(".s.PGSQL.{port}"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    let out = psql(&["-h", socket_dir.path().to_str().unwrap(), "-p", &port_s, "-U", "db_user", "-d", "postgres", "-tA", "-c", "SELECT 6*7"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    assert_eq!(proxy.stop(), Some(143), "SIGTERM exit code");
    assert!(!sock.exists(), "socket removed on shutdown");

    // Trace-level logs never carry the secret key, a token or its signature.
    let log = proxy.all_logs().to_vec();
    let events: Vec<serde_json::Value> = log.iter().map(|l| json(l)).collect();
    let refused: Vec<&serde_json::Value> = events
        .iter()
        .filter(|v| v["fields"]["message"].as_str().is_some_and(|m| m.starts_with("login refused")))
        .collect();
    assert_eq!(refused.len(), 1, "one refused login: {refused:?}");
    assert_eq!(refused[0]["level"], "WARN");
    assert_eq!(refused[0]["fields"]["sqlstate"], "3D000");
    assert_eq!(refused[0]["fields"]["error"], "database \"nosuchdb\" does not exist");
    let sessions = events.iter().filter(|v| v["fields"]["message"] == "client connected").count();
    assert_eq!(sessions, 3, "the refused login is not counted as a session");
    let all = log.join("\n");
    assert!(all.contains("answered the password request with an IAM token"), "trace log is complete");
    for secret in [
        sim.credentials.secret_access_key.as_str(),
        sim.credentials.access_key_id.as_str(),
        "X-Amz-Signature",
        "X-Amz-Credential",
        "Action=connect",
    ] {
        let leak = log.iter().find(|l| l.contains(secret));
        assert!(leak.is_none(), "log leaks {secret:?}: {leak:?}");
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_the_hint_when_the_ca_is_wrong() {
    let sim = start_sim().await;
    let mut cmd = sim_command(&sim);
    cmd.args([
        "--target", &format!("{SIM_ENDPOINT}:{SIM_DB_PORT}"),
        "--connect-addr", &sim.front_addr.to_string(),
        "--port", "0",
    ]);
    let mut proxy = Running::start(cmd);
    let out = psql(&["-h", "127.0.0.1", "-p", &proxy.port.to_string(), "-U", "db_user", "-d", "postgres", "-c", "SELECT 1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FATAL:  rds-auth-proxy: TLS handshake with simdb"), "{err}");
    assert!(err.contains("HINT:  The server's certificate must be valid for"), "{err}");
    proxy.stop();
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_subcommand_prints_a_token_the_simulator_accepts() {
    let sim = start_sim().await;
    let out = sim_command(&sim)
        .args(["token", "--hostname", SIM_ENDPOINT, "--port", "5432", "--username", "db_user"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim_end();
    assert!(token.starts_with(&format!("{SIM_ENDPOINT}:5432/?Action=connect&DBUser=db_user&")));
    let expect = rds_auth_proxy_sim::sigv4::RdsTokenExpectation {
        host: SIM_ENDPOINT.into(),
        port: 5432,
        region: SIM_REGION.into(),
        user: "db_user".into(),
    };
    rds_auth_proxy_sim::sigv4::verify_rds_token(token, &expect, &sim.credentials, SystemTime::now())
        .expect("the simulator accepts the printed token");
    sim.stop().await;
}

#[test]
fn configuration_errors_are_one_line_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--target", "db.x.eu-west-1.rds.amazonaws.com", "-a", "0.0.0.0"], "not a loopback address"),
        (&[], "--target is required"),
        (&["--target", "db:notaport"], "not a valid ENDPOINT[:PORT]"),
    ];
    for (args, expected) in cases {
        let out = Command::new(BIN).args(*args).env_clear().output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one readable line: {err}");
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn a_password_file_others_can_read_is_a_one_line_config_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret-pw\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args(["--target", "db.x.eu-west-1.rds.amazonaws.com", "--password-file", file.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one readable line: {err}");
    assert!(err.contains("mode 0644") && err.contains("chmod 600"), "{err}");
    assert!(!err.contains("s3cret-pw"));
    // The same through the environment variable.
    let out = Command::new(BIN)
        .args(["--target", "db.x.eu-west-1.rds.amazonaws.com"])
        .env_clear()
        .env("RDS_AUTH_PROXY_PASSWORD_FILE", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A good file that names no user: one line saying what to add.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(BIN)
        .args(["--target", "db.x.eu-west-1.rds.amazonaws.com", "--password-file", file.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one readable line: {err}");
    assert!(err.contains("--password-file: which database user is the password for? Add --password-user NAME"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_as_a_scram_user_with_the_secret_and_channel_binding_logs_no_password() {
    let sim = start_sim().await;
    let password = sim.password("scram_user").unwrap();
    let mut cmd = sim_command(&sim);
    // Straight to PostgreSQL serving TLS (it offers SCRAM-SHA-256-PLUS); the password from the
    // simulated Secrets Manager, found the standard way: AWS_ENDPOINT_URL_SECRETS_MANAGER (set
    // by sim_command).
    cmd.env("RUST_LOG", "trace")
        .env("RDS_AUTH_PROXY_PASSWORD_SECRET", rds_auth_proxy_sim::runner::secret_name("scram_user"))
        .args([
            "--target", &format!("{SIM_ENDPOINT}:{SIM_DB_PORT}"),
            "--connect-addr", &sim.postgres.addr().to_string(),
            "--ca-bundle", sim.ca_file.to_str().unwrap(),
            "--port", "0",
        ]);
    let mut proxy = Running::start(cmd);
    let port_s = proxy.port.to_string();
    for _ in 0..2 {
        let out = psql(&["-h", "127.0.0.1", "-p", &port_s, "-U", "scram_user", "-d", "postgres", "-tA", "-c", "SELECT current_user"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "scram_user");
    }
    // Rotation seen by the binary: the first login fails, the secret is read again.
    let rotated = sim.rotate_password("scram_user").await.unwrap();
    let out = psql(&["-h", "127.0.0.1", "-p", &port_s, "-U", "scram_user", "-d", "postgres", "-tA", "-c", "SELECT 1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sim.secrets.reads(), 2);
    assert_eq!(proxy.stop(), Some(143));
    let log = proxy.all_logs().to_vec();
    let all = log.join("\n");
    assert!(all.contains(r#""level":"TRACE""#), "trace is on");
    assert!(all.contains(r#""mechanism":"SCRAM-SHA-256-PLUS""#), "channel binding was used: {all}");
    assert!(all.contains("the server's SCRAM signature verified"), "trace log is complete");
    assert!(all.contains("read the password secret from Secrets Manager"));
    for secret in [
        password.as_str(),
        rotated.as_str(),
        sim.credentials.secret_access_key.as_str(),
        "SecretString",
        "X-Amz-Signature",
        "Signature=",
    ] {
        let leak = log.iter().find(|l| l.contains(secret));
        assert!(leak.is_none(), "log leaks {secret:?}: {leak:?}");
    }
    sim.stop().await;
}

#[test]
fn help_teaches() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--target", "--via", "--connect-addr", "--unix-socket", "RDS_AUTH_PROXY_TARGET", "Examples:", "demo",
        "--max-connections <N>", "--password-secret", "--password-secret-key", "--password-file", "--password-user",
        "RDS_AUTH_PROXY_PASSWORD_SECRET",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

/// The examples in `--help`, as a user pastes them: whatever the terminal width, each command is
/// whole (one line, or lines joined by trailing backslashes) and parses with today's flags.
#[test]
fn help_examples_paste_whole_at_any_width() {
    let mut seen = None;
    for columns in ["60", "80", "100", "200"] {
        // stdout is a pipe here, so clap takes the width from COLUMNS.
        let out = Command::new(BIN).arg("--help").env("COLUMNS", columns).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        let examples = help.split_once("Examples:\n").expect("an Examples section").1;
        let mut commands = Vec::new();
        let mut current = String::new();
        for line in examples.lines().take_while(|l| !l.starts_with("Every flag")) {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                assert!(current.is_empty(), "a continued command ends early at {columns} columns: {current}");
                continue;
            }
            assert!(
                !current.is_empty() || line.starts_with("rds-auth-proxy") || line.starts_with("psql"),
                "at {columns} columns a command was split where a paste breaks it: {line:?}"
            );
            match line.strip_suffix('\\') {
                Some(head) => current.push_str(head),
                None => {
                    current.push_str(line);
                    commands.push(std::mem::take(&mut current));
                }
            }
        }
        assert!(current.is_empty(), "{current}");
        let proxy_commands: Vec<&String> = commands.iter().filter(|c| c.starts_with("rds-auth-proxy")).collect();
        assert_eq!(proxy_commands.len(), 8, "{commands:?}");
        for command in &proxy_commands {
            let argv: Vec<&str> = command.split_whitespace().collect();
            if let Err(e) = full_command().try_get_matches_from(&argv) {
                panic!("example `{command}` does not parse: {e}");
            }
        }
        // The same commands at every width.
        match &seen {
            None => seen = Some(commands),
            Some(first) => assert_eq!(first, &commands, "at {columns} columns"),
        }
    }
}

/// The binary's command line: the proxy's, plus the simulator's `sim` and `demo`.
fn full_command() -> clap::Command {
    rds_auth_proxy_sim::cli::with_commands(rds_auth_proxy::version::command())
}

/// `RDS_AUTH_PROXY_<FLAG>` for the proxy's flags; `RDS_AUTH_PROXY_<SUBCOMMAND>_<FLAG>` for a
/// subcommand's own flags, unless it is the proxy's flag of the same name and meaning (a demo's
/// `--port`, a token's `--region`).
#[test]
fn environment_variable_names_follow_one_rule() {
    let cli = full_command();
    let env_name = |prefix: &str, arg: &clap::Arg| {
        format!("{prefix}{}", arg.get_long().unwrap().replace('-', "_").to_uppercase())
    };
    let top: std::collections::HashMap<String, String> = cli
        .get_arguments()
        .filter_map(|a| Some((a.get_long()?.to_owned(), a.get_env()?.to_str()?.to_owned())))
        .collect();
    let mut checked = 0;
    for arg in cli.get_arguments().filter(|a| a.get_env().is_some()) {
        assert_eq!(arg.get_env().unwrap().to_str(), Some(env_name("RDS_AUTH_PROXY_", arg).as_str()));
        checked += 1;
    }
    for sub in cli.get_subcommands() {
        let prefix = format!("RDS_AUTH_PROXY_{}_", sub.get_name().replace('-', "_").to_uppercase());
        for arg in sub.get_arguments().filter(|a| a.get_env().is_some() && !a.is_global_set()) {
            let env = arg.get_env().unwrap().to_str().unwrap().to_owned();
            let shared = top.get(arg.get_long().unwrap()) == Some(&env);
            assert!(
                shared || env == env_name(&prefix, arg),
                "{} --{}: {env}",
                sub.get_name(),
                arg.get_long().unwrap()
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "{checked}");
}

#[test]
fn sim_subcommand_prints_its_contract_then_ready_and_cleans_up() {
    let mut child = Command::new(BIN)
        .arg("sim")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut names = Vec::new();
    let mut values = std::collections::HashMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line == "ready" {
            break;
        }
        let rest = line.strip_prefix("export ").expect("only export lines before ready");
        let (name, value) = rest.split_once('=').unwrap();
        names.push(name.to_owned());
        values.insert(name.to_owned(), value.trim_matches('\'').to_owned());
    }
    assert_eq!(
        names,
        [
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "SIM_DB_ENDPOINT", "SIM_DB_PORT",
            "SIM_DB_ADDR", "SIM_DB_USER", "SIM_DB_NAME", "SIM_CA_FILE", "SIM_PROXY_CMD",
            "AWS_ENDPOINT_URL_SSM", "SIM_SSM_TARGET", "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            "SIM_PASSWORD_USER", "SIM_PASSWORD_SECRET", "AWS_ENDPOINT_URL_STS",
            "AWS_ENDPOINT_URL_RDS", "SIM_PROXY_ENDPOINT", "SIM_PROXY_CA_FILE",
            "SIM_DSQL_ENDPOINT", "SIM_DSQL_PORT", "SIM_DSQL_ADDR", "SIM_DSQL_CLUSTER",
            "SIM_REDSHIFT_ENDPOINT", "SIM_REDSHIFT_PORT", "SIM_REDSHIFT_ADDR", "SIM_REDSHIFT_CLUSTER",
            "SIM_REDSHIFT_DB", "SIM_REDSHIFT_SERVERLESS_ENDPOINT", "SIM_REDSHIFT_SERVERLESS_ADDR",
            "SIM_REDSHIFT_WORKGROUP", "AWS_ENDPOINT_URL_REDSHIFT", "AWS_ENDPOINT_URL_REDSHIFT_SERVERLESS",
            "AWS_ENDPOINT_URL_DSQL",
        ],
        "exactly the contract's names, in order"
    );
    assert!(values["SIM_PROXY_CMD"].contains("--via ssm --ssm-target i-"), "{}", values["SIM_PROXY_CMD"]);
    assert!(values["AWS_ENDPOINT_URL_SSM"].starts_with("http://127.0.0.1:"));
    assert!(values["AWS_ENDPOINT_URL_SECRETS_MANAGER"].starts_with("http://127.0.0.1:"));
    assert!(values["AWS_ENDPOINT_URL_STS"].starts_with("http://127.0.0.1:"));
    assert!(values["AWS_ENDPOINT_URL_RDS"].starts_with("http://127.0.0.1:"));
    assert_eq!(values["SIM_PASSWORD_USER"], "scram_user");
    assert_eq!(values["SIM_PASSWORD_SECRET"], "rds-auth-proxy-sim/scram_user");
    let ca = values["SIM_CA_FILE"].clone();
    assert!(std::fs::read_to_string(&ca).unwrap().contains("BEGIN CERTIFICATE"));
    let addr = values["SIM_DB_ADDR"].clone();
    assert!(std::net::TcpStream::connect(&addr).is_ok(), "RDS front is up once ready is printed");
    assert_eq!(stop_child(&mut child), Some(0));
    assert!(!std::path::Path::new(&ca).exists(), "temp files removed");
    assert!(std::net::TcpStream::connect(&addr).is_err(), "RDS front stopped");
}

/// The simulator with AWS's data-channel limits: 1024-byte agent payloads, 1 ms agent pacing,
/// and a gateway that cuts a client sending more than 1000 data messages a second.
fn aws_like() -> rds_auth_proxy_sim::SimOptions {
    rds_auth_proxy_sim::SimOptions {
        ssm: rds_auth_proxy_sim::ssm::SsmSimOptions::aws_limits(),
        ..rds_auth_proxy_sim::SimOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_the_binary_via_ssm() {
    let sim = start_sim_with(aws_like()).await;
    let mut cmd = sim_command(&sim);
    // The SSM client finds the simulator the standard way: AWS_ENDPOINT_URL_SSM (sim_command).
    cmd.args(ssm_args(&sim));
    let mut proxy = Running::start(cmd);
    let port_s = proxy.port.to_string();
    for _ in 0..3 {
        let out = psql(&["-h", "127.0.0.1", "-p", &port_s, "-U", "db_user", "-d", "postgres", "-tA", "-c", "SELECT current_user"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "db_user");
    }
    // \copy both ways through the paced tunnel, byte-exact.
    let dir = tempfile::tempdir().unwrap();
    let (up, down) = (dir.path().join("up.txt"), dir.path().join("down.txt"));
    std::fs::write(&up, copy_lines(3, 1 << 20)).unwrap();
    let copy_from = format!("\\copy t from '{}'", up.display());
    let copy_to = format!("\\copy t to '{}'", down.display());
    let out = psql(&["-h", "127.0.0.1", "-p", &port_s, "-U", "db_user", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", "CREATE TEMP TABLE t (line text)", "-c", &copy_from, "-c", &copy_to]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&up).unwrap() == std::fs::read(&down).unwrap(), "byte-exact both ways");
    let stats = sim.ssm.stats();
    assert_eq!(stats.sessions_started.load(std::sync::atomic::Ordering::SeqCst), 1, "one shared session");
    assert_eq!(stats.rate_limit_cuts.load(std::sync::atomic::Ordering::SeqCst), 0, "never over the gateway's limit");
    assert!(stats.peak_client_msgs_per_sec.load(std::sync::atomic::Ordering::SeqCst) <= 1000);
    assert_eq!(proxy.stop(), Some(143));
    assert!(stats.terminate_api_calls.load(std::sync::atomic::Ordering::SeqCst) >= 1, "TerminateSession on exit");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stuck_websocket_exits_within_the_drain_timeout_plus_five_seconds() {
    let sim = start_sim().await;
    let mut cmd = sim_command(&sim);
    cmd.args(ssm_args(&sim)).args(["--drain-timeout", "2"]);
    let mut proxy = Running::start(cmd);
    let port_s = proxy.port.to_string();
    let out = psql(&["-h", "127.0.0.1", "-p", &port_s, "-U", "db_user", "-d", "postgres", "-tA", "-c", "SELECT 1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.txt");
    std::fs::write(&up, copy_lines(5, 8 << 20)).unwrap();
    let stats = sim.ssm.stats();
    let before = stats.client_data_messages.load(std::sync::atomic::Ordering::SeqCst);
    let upload = psql_command(&["-h", "127.0.0.1", "-p", &port_s, "-U", "db_user", "-d", "postgres", "-c", "CREATE TEMP TABLE t (line text)", "-c"])
        .arg(format!("\\copy t from '{}'", up.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Mid-upload, the gateway stops reading: from here the WebSocket takes nothing more.
    let started = Instant::now();
    while stats.client_data_messages.load(std::sync::atomic::Ordering::SeqCst) < before + 500 {
        assert!(started.elapsed() < Duration::from_secs(30), "the upload never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.ssm.options().update(|o| o.stop_reading = true);
    while stats.reads_stopped.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "reading never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = Instant::now();
    assert_eq!(proxy.stop(), Some(143));
    let took = at.elapsed();
    assert!(took < Duration::from_secs(2 + 5), "exit took {took:?}");
    let mut upload = upload;
    let _ = upload.kill();
    let _ = upload.wait();
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_via_ssm_carry_no_secret() {
    let sim = start_sim().await;
    let mut cmd = sim_command(&sim);
    cmd.env("RUST_LOG", "trace").args(ssm_args(&sim));
    let mut proxy = Running::start(cmd);
    let out = psql_at(proxy.port, "db_user", "postgres", "SELECT current_user");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "db_user");
    assert_eq!(proxy.stop(), Some(143));
    // Every line, up to the exit (the reader thread ends at EOF).
    let log = proxy.all_logs().to_vec();
    let all = log.join("\n");
    assert!(all.contains(r#""level":"TRACE""#), "trace is on");
    assert!(all.contains("data channel connected"), "the SSM path was logged");
    assert!(all.contains("answered the password request with an IAM token"), "trace log is complete");

    let tokens = sim.ssm.issued_tokens();
    assert!(!tokens.is_empty(), "a session was opened");
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.extend([
        sim.credentials.secret_access_key.as_str(),
        sim.credentials.access_key_id.as_str(),
        "TokenValue",
        "token_value",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "Signature=",
        "Action=connect",
    ]);
    for secret in secrets {
        let leak = log.iter().find(|l| l.contains(secret));
        assert!(leak.is_none(), "log leaks {secret:?}: {leak:?}");
    }
    sim.stop().await;
}

/// A port in use is the same mistake for the proxy and the demo: same message, exit code 2, and
/// the demo finds out before it starts PostgreSQL.
#[test]
fn port_in_use_is_exit_2_for_proxy_and_demo_alike() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let expected = format!("rds-auth-proxy: cannot listen on 127.0.0.1:{port}");
    for args in [vec!["--target", "db.x.eu-west-1.rds.amazonaws.com", "--port", &port], vec!["demo", "--port", &port]] {
        let out = bare()
            .args(&args)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: only the one message, nothing started: {err}");
        assert!(err.starts_with(&expected), "{args:?}: {err}");
    }
}

/// No region anywhere: one line saying what to do, no instance-metadata noise before it.
#[test]
fn a_missing_region_is_one_quiet_line() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let out = bare()
        .args(["--target", "not-a-host"])
        .env("HOME", std::env::temp_dir())
        .env("AWS_CONFIG_FILE", empty.path())
        .env("AWS_SHARED_CREDENTIALS_FILE", empty.path())
        // An IMDS that refuses at once: the look-up is tried, and must stay quiet.
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end(), "rds-auth-proxy: no AWS region: pass --region, or set AWS_REGION or a region in your AWS profile");
}

/// The start-up line about credentials: where they come from (never what they are), or what to do
/// — and the proxy starts either way. Logs written to a pipe carry no colour codes.
#[test]
fn credentials_are_checked_once_at_start_and_logs_to_a_pipe_are_plain() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let run = |with_keys: bool| {
        let mut cmd = bare();
        cmd.args(["--target", "db.x.eu-west-1.rds.amazonaws.com", "--port", "0"])
            .env("HOME", std::env::temp_dir())
            .env("AWS_CONFIG_FILE", empty.path())
            .env("AWS_SHARED_CREDENTIALS_FILE", empty.path())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if with_keys {
            cmd.env("AWS_ACCESS_KEY_ID", "AKIASTARTUPCHECK0001").env("AWS_SECRET_ACCESS_KEY", "startup-check-secret");
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
        let mut seen: Vec<String> = Vec::new();
        // Both lines, in either order: the check runs alongside serving.
        while !(seen.iter().any(|l| l.contains("AWS credentials")) && seen.iter().any(|l| l.contains("ready for connections"))) {
            seen.push(lines.next().expect("the proxy keeps running and logs about credentials"));
        }
        let found = seen.iter().find(|l| l.contains("AWS credentials")).unwrap().clone();
        assert_eq!(stop_child(&mut child), Some(143), "not fatal: the proxy ran until stopped");
        for line in &seen {
            assert!(!line.contains('\x1b'), "colour codes in a pipe: {line:?}");
        }
        found
    };
    let found = run(true);
    assert!(found.contains("INFO") && found.contains("AWS credentials found"), "{found}");
    assert!(found.contains("source=EnvironmentVariable") && found.contains("profile=default"), "{found}");
    assert!(!found.contains("AKIASTARTUPCHECK0001") && !found.contains("startup-check-secret"), "{found}");
    let missing = run(false);
    assert!(missing.contains("WARN") && missing.contains("no AWS credentials found"), "{missing}");
    assert!(missing.contains("aws sso login") && missing.contains("AWS_PROFILE"), "{missing}");
}
