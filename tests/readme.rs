//! The README's commands, run as written: a recipe that does not work is worse than none.
//!
//! The only substitution: `cargo run -q --` is a shell function that runs the binary this test
//! build made (the same code; a nested `cargo` would fight the running one for the build lock).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_rds-auth-proxy");

/// The indented code block right after the line holding `marker`, without its indentation.
fn code_block_after(markdown: &str, marker: &str) -> Vec<String> {
    let mut lines = markdown.lines().skip_while(|l| !l.contains(marker)).skip(1);
    let mut block: Vec<String> = Vec::new();
    for line in lines.by_ref() {
        if let Some(code) = line.strip_prefix("    ") {
            block.push(code.to_owned());
        } else if !block.is_empty() || !line.trim().is_empty() {
            break;
        }
    }
    assert!(!block.is_empty(), "README has no code block after {marker:?}");
    block
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

/// `cargo run -q -- ARGS` → this build's binary, exec'd so `$!` is the program itself.
fn cargo_shim() -> String {
    format!(
        "cargo() {{ if [ \"$1 $2 $3\" = 'run -q --' ]; then shift 3; exec '{BIN}' \"$@\"; fi; \
         echo \"unexpected: cargo $*\" >&2; return 99; }}\n"
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Direct children of `pid` (Linux /proc).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_recipe_works_as_written() {
    let recipe = code_block_after(&readme(), "<!-- tests/readme.rs: sim recipe -->");
    assert!(recipe.iter().any(|l| l.contains("cargo run -q -- sim")), "{recipe:?}");
    let script = cargo_shim() + &recipe.join("\n") + "\n";
    let port = free_port();
    let mut child = Command::new("bash")
        .args(["-c", &script])
        // Only what a fresh shell has, minus the developer's AWS setup; the port is the one
        // thing we move, through the variable the README documents.
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RDS_AUTH_PROXY_PORT", port.to_string())
        .env("RDS_AUTH_PROXY_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let bash_pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
        // EOF: every process of the recipe (bash, simulator, proxy) has exited.
    });
    let mut seen = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the recipe never started the proxy; stderr so far:\n{}", seen.join("\n"))
        });
        let ready = line.contains("ready for connections");
        seen.push(line);
        if ready {
            break;
        }
    }

    // The proxy from $SIM_PROXY_CMD answers on the port, through the simulated SSM tunnel.
    let conn = format!("host=127.0.0.1 port={port} user=db_user dbname=postgres connect_timeout=20");
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("login through the proxy");
    tokio::spawn(connection);
    let row = client.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "db_user");
    drop(client);

    // Ctrl-C the proxy, as a user would; the recipe's last line then stops the simulator.
    let kids = children(bash_pid);
    let proxy = *kids
        .iter()
        .find(|&&p| cmdline(p).iter().any(|a| a == "--target"))
        .unwrap_or_else(|| panic!("no proxy among {kids:?}"));
    let ca_bundle = cmdline(proxy)
        .windows(2)
        .find(|w| w[0] == "--ca-bundle")
        .map(|w| std::path::PathBuf::from(&w[1]))
        .expect("the proxy command names the simulator's CA file");
    assert!(ca_bundle.exists());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(proxy as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "recipe failed ({status}):\n{}\n{}", seen.join("\n"), rest.join("\n"));
    assert!(!ca_bundle.exists(), "the simulator was stopped and removed its files");
}

/// The README's config file is valid, and `--list-targets` prints for it what the README shows.
#[test]
fn the_config_file_example_lists_as_shown() {
    let readme = readme();
    // The file has blank lines, which end code_block_after's blocks: take every indented or
    // blank line up to the next paragraph.
    let file: Vec<String> = readme
        .lines()
        .skip_while(|l| !l.contains("<!-- tests/readme.rs: config file -->"))
        .skip(2)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l).to_owned())
        .collect();
    assert!(file.iter().filter(|l| l.as_str() == "[[target]]").count() >= 2, "{file:?}");
    let expected = code_block_after(&readme, "`--list-targets` prints one line per target");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, file.join("\n") + "\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "--list-targets"])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected.join("\n") + "\n");
}
