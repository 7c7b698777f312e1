//! Who can use the listener (issues 7 and 18): remote clients of a shared listener — psql in a
//! network namespace, a real remote peer — come over TLS and log in with the client password
//! (SCRAM-SHA-256-PLUS, bound to the listener's certificate) or a client certificate; loopback
//! stays password-less for the proxy's own OS user and refuses other users (unless
//! --allow-local-users); the Unix socket is never reachable with a mode wider than 0600 and
//! refuses other users; the HTTP endpoints keep their details to this host; and no
//! client-supplied string can forge a line of the text log.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::*;
use common::netns::{require_root, Netns};
use common::*;
use rds_auth_proxy::config::ListenConfig;
use rds_auth_proxy::listener::Listeners;
use rds_auth_proxy_sim::Simulator;

const CLIENT_PASSWORD: &str = "correct horse battery staple";

/// A `chmod 600` file holding `password`.
fn password_file(dir: &std::path::Path, password: &str) -> std::path::PathBuf {
    let file = dir.join("client-password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

fn psql(conninfo: &str, password: Option<&str>, sql: &str) -> std::process::Output {
    psql_with(psql_command(&[]), conninfo, password, sql)
}

/// psql run inside `netns`: a client on another host, as the proxy sees it.
fn psql_in(netns: &Netns, conninfo: &str, password: Option<&str>, sql: &str) -> std::process::Output {
    let mut cmd = netns.command("psql");
    cmd.env_remove("PGPASSWORD").env("PGCONNECT_TIMEOUT", "20").stdin(Stdio::null());
    psql_with(cmd, conninfo, password, sql)
}

fn psql_with(mut cmd: Command, conninfo: &str, password: Option<&str>, sql: &str) -> std::process::Output {
    cmd.args(["-X", "-w", "-tA", "-c", sql, conninfo]).env("PGPASSFILE", "/nonexistent");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.output().expect("psql is installed (see README)")
}

/// The binary in front of `sim`, direct, with the simulator's AWS setup.
fn proxy_command(sim: &Simulator) -> Command {
    let mut cmd = sim_command(sim);
    cmd.args(direct_args(sim));
    cmd
}

/// A shared listener (`--allow-remote --local-tls --client-password-file`) seen from psql in
/// a network namespace: plaintext is refused (28000) before any password is asked for; over
/// TLS the client password is needed, and libpq binds the SCRAM exchange to the listener's
/// certificate (`channel_binding=require` passes only with SCRAM-SHA-256-PLUS); loopback
/// needs neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_psql_needs_tls_and_the_client_password_and_loopback_does_not() {
    if !require_root("remote_psql_needs_tls_and_the_client_password_and_loopback_does_not") {
        return;
    }
    let netns = Netns::create();
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), CLIENT_PASSWORD);
    let local_ca = dir.path().join("local-ca.pem");
    let mut cmd = proxy_command(&sim);
    cmd.args(["--address", "0.0.0.0", "--allow-remote", "--local-tls"])
        .arg("--local-tls-ca-out")
        .arg(&local_ca)
        .env("RDS_AUTH_PROXY_CLIENT_PASSWORD_FILE", &file);
    let mut proxy = Running::start(cmd);
    let port = proxy.port;
    let host_ip = &netns.host_ip;
    let tls = format!("sslmode=verify-ca sslrootcert={}", local_ca.display());
    let remote = |extra: &str| format!("host={host_ip} port={port} user=db_user dbname=postgres {extra}");
    let local = format!("host=127.0.0.1 port={port} user=db_user dbname=postgres");

    // Plaintext from another host: 28000 and a HINT, even with the right password.
    let out = psql_in(&netns, &remote("sslmode=disable"), Some(CLIENT_PASSWORD), "SELECT 1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connections from other hosts must use TLS"), "{err}");
    assert!(err.contains("HINT:") && err.contains("sslmode=require"), "{err}");

    // No password: psql is asked for one (AuthenticationSASL) and has none.
    let out = psql_in(&netns, &remote(&tls), None, "SELECT current_user");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no password supplied"), "{err}");

    // A wrong one: 28P01 with the proxy's message and a HINT saying which password.
    let out = psql_in(&netns, &remote(&tls), Some("the database password, perhaps"), "SELECT current_user");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("password authentication failed: wrong client password"), "{err}");
    assert!(err.contains("HINT:") && err.contains("--client-password-file"), "{err}");

    // The right one, bound to the channel: libpq refuses itself unless the server offered and
    // completed SCRAM-SHA-256-PLUS. Then the IAM login upstream as usual.
    for extra in [format!("{tls} channel_binding=require"), "sslmode=require".to_owned()] {
        let out = psql_in(&netns, &remote(&extra), Some(CLIENT_PASSWORD), "SELECT current_user");
        assert!(out.status.success(), "{extra}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "db_user");
    }

    // Loopback: no TLS, no password, none asked (a PGPASSWORD would go unused).
    let out = psql(&local, None, "SELECT 6*7");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    proxy.stop();
    let events = proxy.all_json();
    let refused: Vec<&serde_json::Value> = events.iter().filter(|v| v["fields"]["message"] == "refused a client").collect();
    let states: Vec<&str> = refused.iter().map(|v| v["fields"]["sqlstate"].as_str().unwrap_or("")).collect();
    assert_eq!(states, ["28000", "28P01"], "plaintext, then the wrong password: {events:?}");
    assert!(refused.iter().all(|v| v["fields"]["peer"].as_str().unwrap().starts_with(&netns.ns_ip)), "{refused:?}");
    let all = events.iter().map(|v| v.to_string()).collect::<String>();
    assert!(!all.contains(CLIENT_PASSWORD) && !all.contains("the database password"), "no password in the log");
    sim.stop().await;
}

/// Loopback TCP is the proxy owner's only (issue 18): psql run as `nobody` over 127.0.0.1 is
/// refused with 28000 naming both uids and a HINT; the owner gets in; with
/// --allow-local-users both do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_serves_only_the_proxy_owner_unless_allow_local_users() {
    if !require_root("loopback_serves_only_the_proxy_owner_unless_allow_local_users") {
        return;
    }
    let sim = start_sim().await;
    let as_nobody = |port: u16| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "psql", "-X", "-w", "-tA", "-c", "SELECT current_user"])
            .arg(format!("host=127.0.0.1 port={port} user=db_user dbname=postgres"))
            .env("HOME", "/nonexistent")
            .env("PGCONNECT_TIMEOUT", "20")
            .stdin(Stdio::null())
            .output()
            .expect("setpriv (util-linux) is installed")
    };

    let mut proxy = Running::start(proxy_command(&sim));
    let port = proxy.port;
    let out = as_nobody(port);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serves only the OS user running it (uid 0) on loopback"), "{err}");
    assert!(err.contains("comes from uid 65534") && err.contains("HINT:") && err.contains("--allow-local-users"), "{err}");
    assert_eq!(psql_select(port, "SELECT current_user"), "db_user", "the owner gets in");
    proxy.stop();
    let events = proxy.all_json();
    let refused: Vec<&serde_json::Value> = events.iter().filter(|v| v["fields"]["message"] == "refused a client").collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    assert_eq!(refused[0]["fields"]["sqlstate"], "28000");

    let mut cmd = proxy_command(&sim);
    cmd.arg("--allow-local-users");
    let mut proxy = Running::start(cmd);
    let out = as_nobody(proxy.port);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "db_user");
    assert_eq!(psql_select(proxy.port, "SELECT 6*7"), "42");
    proxy.stop();
    sim.stop().await;
}

/// The HTTP endpoints (issue 18): beyond loopback only with --allow-remote (one line at start
/// otherwise), and /readiness tells its reasons — credential error chains — only to loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_beyond_loopback_needs_allow_remote_and_readiness_details_stay_local() {
    let out = bare()
        .args(["--target", "db.x.eu-west-1.rds.amazonaws.com", "--http-address", "0.0.0.0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--http-address 0.0.0.0 is not a loopback address") && err.contains("--allow-remote"), "{err}");

    if !require_root("http_beyond_loopback_needs_allow_remote_and_readiness_details_stay_local") {
        return;
    }
    let netns = Netns::create();
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), CLIENT_PASSWORD);
    let http_port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    // No AWS credentials at all: readiness fails with a credentials chain.
    let mut cmd = proxy_command(&sim);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["--address", "0.0.0.0", "--allow-remote", "--local-tls", "--http-address", "0.0.0.0"])
        .arg(format!("--http-port={http_port}"))
        .arg(format!("--local-tls-ca-out={}", dir.path().join("ca.pem").display()))
        .arg("--client-password-file")
        .arg(&file);
    let mut proxy = Running::start(cmd);

    // The ready line comes just before the proxy marks itself started.
    let started = Instant::now();
    let (status, body) = loop {
        let (status, body) = rds_auth_proxy::http::get(SocketAddr::from(([127, 0, 0, 1], http_port)), "/readiness").await.unwrap();
        if body != "not started\n" || started.elapsed() > Duration::from_secs(30) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("AWS credentials"), "loopback sees the reasons: {body}");
    let out = netns
        .command("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "20"])
        .arg(format!("http://{}:{http_port}/readiness", netns.host_ip))
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n503"), "{text}");
    assert!(text.starts_with("not ready") && !text.contains("credentials"), "a remote client sees no reasons: {text}");
    // /liveness is still there for a remote health check.
    let out = netns.command("curl").args(["-s", "--max-time", "20"]).arg(format!("http://{}:{http_port}/liveness", netns.host_ip)).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    proxy.stop();
    sim.stop().await;
}

#[test]
fn allow_remote_without_a_client_password_is_a_one_line_config_error() {
    let out = Command::new(BIN)
        .args(["--target", "db.x.eu-west-1.rds.amazonaws.com", "-a", "0.0.0.0", "--allow-remote"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one readable line: {err}");
    for part in ["--allow-remote needs --client-password-file FILE", "AWS identity", "chmod 600", "PGPASSWORD"] {
        assert!(err.contains(part), "{part:?} missing: {err}");
    }

    // A readable-by-others client password file is refused like --password-file.
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), "pw");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args(["--target", "db.x.eu-west-1.rds.amazonaws.com", "-a", "0.0.0.0", "--allow-remote"])
        .arg("--client-password-file")
        .arg(&file)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--client-password-file") && err.contains("chmod 600"), "{err}");

    // A good client password, but no TLS for the remote clients: one line saying so.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(BIN)
        .args(["--target", "db.x.eu-west-1.rds.amazonaws.com", "-a", "0.0.0.0", "--allow-remote"])
        .arg("--client-password-file")
        .arg(&file)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one readable line: {err}");
    assert!(err.contains("--allow-remote needs --local-tls") && err.contains("plaintext"), "{err}");
}

/// The socket appears at its path with mode 0600 or not at all: a thread stats the path in a
/// tight loop while the listener binds, many times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_is_never_visible_with_a_wider_mode() {
    let dir = tempfile::tempdir().unwrap();
    // The control: a socket bound in place gets the umask's mode, which is wider.
    let plain = std::os::unix::net::UnixListener::bind(dir.path().join("plain")).unwrap();
    let plain_mode = std::fs::metadata(dir.path().join("plain")).unwrap().permissions().mode() & 0o777;
    assert_ne!(plain_mode, 0o600, "this test needs a umask under which sockets are not 0600");
    drop(plain);
    std::fs::remove_file(dir.path().join("plain")).unwrap();

    let mut seen_modes = std::collections::BTreeMap::<u32, usize>::new();
    for _ in 0..40 {
        // A port that was free a moment ago, so the path is known before the bind.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let path = dir.path().join(format!(".s.PGSQL.{port}"));
        let done = Arc::new(AtomicBool::new(false));
        let poller = std::thread::spawn({
            let (path, done) = (path.clone(), done.clone());
            move || {
                let mut modes = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    if let Ok(meta) = std::fs::symlink_metadata(&path) {
                        modes.push(meta.permissions().mode() & 0o777);
                    }
                }
                modes
            }
        });
        let config = ListenConfig {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            unix_socket_dir: Some(dir.path().to_owned()),
            max_connections: 0,
            drain_timeout: Duration::from_secs(1),
            client_password_file: None,
            client_ca_file: None,
            allow_local_users: false,
        };
        let Ok(listeners) = Listeners::bind(&config).await else {
            done.store(true, Ordering::Relaxed);
            let _ = poller.join();
            continue; // the port was taken in between; try another
        };
        // Keep polling a little after the bind returned, as a client would.
        let until = Instant::now() + Duration::from_millis(2);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        done.store(true, Ordering::Relaxed);
        for mode in poller.join().unwrap() {
            *seen_modes.entry(mode).or_default() += 1;
        }
        drop(listeners);
        let _ = std::fs::remove_file(&path);
    }
    let shown: Vec<String> = seen_modes.iter().map(|(mode, n)| format!("{mode:o} ×{n}")).collect();
    assert!(seen_modes.get(&0o600).is_some_and(|n| *n > 0), "the socket was never seen: {shown:?}");
    assert_eq!(seen_modes.keys().copied().collect::<Vec<_>>(), vec![0o600], "modes seen: {shown:?}");
    // Nothing is left behind: no staging directory, no socket.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_peer_of_another_user_is_refused() {
    if !require_root("a_unix_socket_peer_of_another_user_is_refused") {
        return;
    }
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    // Let `nobody` reach the socket at all: the directory and, below, the socket itself.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = proxy_command(&sim);
    cmd.arg("--unix-socket").arg(dir.path());
    let mut proxy = Running::start(cmd);
    let port = proxy.port;
    let socket = dir.path().join(format!(".s.PGSQL.{port}"));
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let port = port.to_string();
    let args = ["-X", "-w", "-tA", "-h", dir.path().to_str().unwrap(), "-p", &port, "-U", "db_user", "-d", "postgres", "-c", "SELECT 1"];

    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "psql"])
        .args(args)
        .env("HOME", "/nonexistent")
        .env("PGCONNECT_TIMEOUT", "20")
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux) is installed");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serves only the user running rds-auth-proxy (uid 0)"), "{err}");
    assert!(err.contains("uid 65534") && err.contains("HINT:"), "{err}");

    // The owner still gets in.
    let out = Command::new("psql").args(args).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    proxy.stop();
    let events = proxy.all_json();
    let refused: Vec<&serde_json::Value> = events.iter().filter(|v| v["fields"]["message"] == "refused a client").collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    assert_eq!(refused[0]["fields"]["sqlstate"], "28000");
    assert!(refused[0]["fields"]["error"].as_str().unwrap().contains("uid 65534"));
    sim.stop().await;
}

/// A user name with a newline and an ANSI escape, sent by tokio-postgres: the text log (the
/// binary's stderr, a pipe) holds it escaped on the line it belongs to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_forge_log_lines() {
    let sim = start_sim().await;
    let mut cmd = proxy_command(&sim);
    cmd.env("RUST_LOG", "debug");
    let mut proxy = Running::start_with(cmd, "text", 1);
    let port = proxy.port;
    let forged = "2026-01-01T00:00:00.000000Z  INFO client connected peer=10.0.0.1:1 user=\"admin\"";
    let evil_user = format!("mallory\n{forged}\x1b[31m");
    let evil_db = format!("db\r\n{forged}\x1b]0;title\x07");
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(&evil_user)
        .dbname(&evil_db)
        .application_name("app\nFORGED")
        .connect_timeout(Duration::from_secs(20));
    let err = config.connect(tokio_postgres::NoTls).await.err().expect("the simulated RDS refuses this user");
    assert!(err.as_db_error().is_some(), "{err:?}");
    proxy.stop();

    let lines = proxy.all_logs().to_vec();
    let text = lines.join("\n");
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "raw control bytes in the log: {text:?}");
    assert!(!text.contains('\r'), "a raw carriage return in the log: {text:?}");
    for line in &lines {
        assert!(!line.starts_with("2026-01-01") && !line.starts_with("FORGED"), "forged line: {line:?}");
    }
    // The user is there, escaped, in its own field of a real log line.
    let refused = lines
        .iter()
        .find(|l| l.contains("login refused") || l.contains("login failed"))
        .unwrap_or_else(|| panic!("the failed login is logged: {text}"));
    assert!(refused.contains(r#"user="mallory\n2026-01-01T00:00:00.000000Z  INFO client connected peer=10.0.0.1:1 user=\"admin\"\u{1b}[31m""#), "{refused}");
    assert!(refused.contains(r#"database="db\r\n2026"#), "{refused}");
    sim.stop().await;
}

/// A CA made for one test, and the PEM file holding its certificate.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    file: std::path::PathBuf,
}

fn test_ca(dir: &std::path::Path, name: &str) -> TestCa {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let file = dir.join(format!("{name}.pem"));
    std::fs::write(&file, cert.pem()).unwrap();
    TestCa { issuer: rcgen::Issuer::new(params, key), file }
}

/// A client certificate for `cn` issued by `ca`, as the `sslcert=… sslkey=…` of a conninfo
/// (the key file 0600, as libpq insists).
fn client_cert(dir: &std::path::Path, ca: &TestCa, cn: &str, name: &str) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (cert_file, key_file) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!("sslcert={} sslkey={}", cert_file.display(), key_file.display())
}

/// `--client-ca-file` without a client password: remote psql with a certificate from that CA,
/// whose CN is the user, is admitted with no password; a certificate of another CA fails the
/// TLS handshake; the right CA but another CN, no certificate at all, or no TLS, gets 28000 with
/// a HINT; loopback needs nothing, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_psql_with_a_client_certificate_needs_no_password() {
    if !require_root("remote_psql_with_a_client_certificate_needs_no_password") {
        return;
    }
    let netns = Netns::create();
    let host_ip = &netns.host_ip;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca(dir.path(), "client-ca");
    let other_ca = test_ca(dir.path(), "other-ca");
    let good = client_cert(dir.path(), &ca, "db_user", "good");
    let foreign = client_cert(dir.path(), &other_ca, "db_user", "foreign");
    let someone_else = client_cert(dir.path(), &ca, "someone_else", "someone-else");
    let local_ca = dir.path().join("local-ca.pem");
    let mut cmd = proxy_command(&sim);
    cmd.args(["--address", "0.0.0.0", "--allow-remote", "--local-tls"])
        .arg("--local-tls-ca-out")
        .arg(&local_ca)
        .arg("--client-ca-file")
        .arg(&ca.file);
    let mut proxy = Running::start(cmd);
    let port = proxy.port;
    let tls = format!("sslmode=verify-ca sslrootcert={}", local_ca.display());
    let remote = |extra: &str| format!("host={host_ip} port={port} user=db_user dbname=postgres {extra}");

    // The certificate is the credential: no password asked for or given.
    let out = psql_in(&netns, &remote(&format!("{tls} {good}")), None, "SELECT current_user");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "db_user");

    // Another CA's certificate: the proxy's TLS refuses it in the handshake.
    let out = psql_in(&netns, &remote(&format!("{tls} {foreign}")), None, "SELECT 1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("ssl") && !err.contains("28000"), "{err}");

    // The right CA, another CN: refused as PostgreSQL's clientcert=verify-full would.
    let out = psql_in(&netns, &remote(&format!("{tls} {someone_else}")), None, "SELECT 1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"the client certificate's CN "someone_else" is not the user name "db_user""#), "{err}");
    assert!(err.contains("HINT:") && err.contains("clientcert=verify-full"), "{err}");

    // No certificate and no password configured: 28000 saying what to do.
    let out = psql_in(&netns, &remote(&tls), Some("a password does not help"), "SELECT 1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need a client certificate issued by this shared rds-auth-proxy's --client-ca-file"), "{err}");
    assert!(err.contains("HINT:") && err.contains("sslcert/sslkey"), "{err}");
    // Without TLS there is no certificate to give: 28000, use TLS.
    let out = psql_in(&netns, &remote("sslmode=disable"), Some("a password does not help"), "SELECT 1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connections from other hosts must use TLS") && err.contains("HINT:"), "{err}");

    // Loopback: nothing needed, with or without TLS.
    for extra in [format!("sslmode=verify-full sslrootcert={}", local_ca.display()), "sslmode=disable".to_owned()] {
        let out = psql(&format!("host=127.0.0.1 port={port} user=db_user dbname=postgres {extra}"), None, "SELECT 6*7");
        assert!(out.status.success(), "{extra}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    }

    proxy.stop();
    let events = proxy.all_json();
    let refused: Vec<&serde_json::Value> = events.iter().filter(|v| v["fields"]["message"] == "refused a client").collect();
    assert_eq!(refused.len(), 3, "wrong CN, no certificate, no TLS: {events:?}");
    assert!(refused.iter().all(|v| v["fields"]["sqlstate"] == "28000"), "{refused:?}");
    assert!(
        events.iter().any(|v| v["fields"]["message"].as_str().is_some_and(|m| m.contains("TLS handshake with a client failed"))),
        "the foreign certificate is logged: {events:?}"
    );
    sim.stop().await;
}

#[test]
fn client_ca_file_config_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca(dir.path(), "ca");
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["--target", "db.x.eu-west-1.rds.amazonaws.com", "-a", "0.0.0.0", "--allow-remote", "--client-ca-file"])
            .arg(&ca.file)
            .args(extra)
            .env_clear()
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--client-ca-file needs --local-tls"), "{err}");
}
