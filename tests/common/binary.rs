//! The real binary as the tests run it: one environment pointing every AWS service at the
//! simulator, one way to start a proxy process and read its log, one psql. Kept in one place so
//! that a fix (an AWS endpoint a copy forgot, so the proxy asked the real AWS; a child process a
//! failed assertion left running) reaches every test file at once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rds_auth_proxy_sim::runner::SIM_REGION;
use rds_auth_proxy_sim::Simulator;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_rds-auth-proxy");

/// How long a proxy may take to log its ready lines, or a line a test waits for. Generous: the
/// tests share the machine with builds and fuzzers; a healthy run never waits this long.
const LOG_TIMEOUT: Duration = Duration::from_secs(120);

/// The binary with nothing from the environment but PATH (no AWS setup, no HOME, no
/// RDS_AUTH_PROXY_* from the developer's shell).
pub fn bare() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

/// The binary with only the simulator's AWS identity visible — no host AWS config, no IMDS — and
/// every `AWS_ENDPOINT_URL_*` the simulator exports, so each AWS call (SSM, Secrets Manager, RDS,
/// and the audit lines' STS "who am I") reaches the simulator and never the real AWS.
pub fn sim_command(sim: &Simulator) -> Command {
    let mut cmd = bare();
    cmd.env("AWS_ACCESS_KEY_ID", &sim.credentials.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &sim.credentials.secret_access_key)
        .env("AWS_REGION", SIM_REGION)
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (name, value) in sim.exports() {
        if name.starts_with("AWS_ENDPOINT_URL_") {
            cmd.env(name, value);
        }
    }
    cmd
}

/// SIGTERM (what a service manager sends), then the exit code.
pub fn stop_child(child: &mut Child) -> Option<i32> {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    child.wait().ok().and_then(|s| s.code())
}

/// A log line as JSON; a line that is not (text format, a panic message) as a JSON string, so
/// `v["fields"]…` is simply null for it.
pub fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_owned()))
}

/// Whether a JSON log line's message starts with `prefix`.
pub fn message_starts_with(v: &Value, prefix: &str) -> bool {
    v["fields"]["message"].as_str().is_some_and(|m| m.starts_with(prefix))
}

/// A proxy process started by [`Running::start`], up to its ready line(s), with its log (stderr)
/// read by a thread so the proxy never blocks on a full pipe. Killed on drop, so a failed
/// assertion never leaves a proxy running.
pub struct Running {
    child: Child,
    /// The port of the first ready line (the only one with a single target).
    pub port: u16,
    /// Listening port by target name, from the ready lines.
    pub ports: HashMap<String, u16>,
    /// Every log line read so far, as written (the ready lines and those before them first).
    lines: Vec<String>,
    /// How many of `lines` came up to the last ready line.
    ready_at: usize,
    rx: Receiver<String>,
}

impl Running {
    /// Runs `cmd` with JSON logs and waits for its ready line.
    pub fn start(cmd: Command) -> Running {
        Running::start_with(cmd, "json", 1)
    }

    /// Runs `cmd` with JSON logs and waits for `targets` ready lines (one per target).
    pub fn start_targets(cmd: Command, targets: usize) -> Running {
        Running::start_with(cmd, "json", targets)
    }

    /// Runs `cmd` logging in `format` (json or text) and waits for `targets` ready lines.
    pub fn start_with(mut cmd: Command, format: &str, targets: usize) -> Running {
        cmd.args(["--log-format", format]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Split on '\n' only, and keep going past bytes that are not UTF-8: a test looks for
            // stray control characters ('\r' included) in the text log.
            for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                    break;
                }
            }
        });
        let mut running = Running { child, port: 0, ports: HashMap::new(), lines: Vec::new(), ready_at: 0, rx };
        let deadline = Instant::now() + LOG_TIMEOUT;
        for ready in 0..targets {
            let (name, port) = loop {
                let Some(line) = running.read_line(deadline) else {
                    panic!("the proxy did not log {targets} ready lines; log:\n{}", running.lines.join("\n"));
                };
                if let Some(found) = ready_line(line) {
                    break found;
                }
            };
            if ready == 0 {
                running.port = port;
            }
            running.ports.insert(name, port);
        }
        running.ready_at = running.lines.len();
        running
    }

    /// The next log line, or None once `deadline` passed or the log ended.
    fn read_line(&mut self, deadline: Instant) -> Option<&str> {
        let line = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()?;
        self.lines.push(line);
        self.lines.last().map(String::as_str)
    }

    /// The log lines up to the last ready line.
    pub fn early(&self) -> &[String] {
        &self.lines[..self.ready_at]
    }

    /// The last ready line.
    pub fn ready_line(&self) -> Value {
        json(&self.lines[self.ready_at - 1])
    }

    /// [`Running::early`] as one text.
    pub fn startup_log(&self) -> String {
        self.early().join("\n")
    }

    /// Reads log lines until a JSON one satisfies `pred`; `what` names it if none comes.
    pub fn wait_log(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LOG_TIMEOUT;
        loop {
            let Some(line) = self.read_line(deadline) else {
                panic!("no log line {what}; log:\n{}", self.lines.join("\n"));
            };
            let v = json(line);
            if pred(&v) {
                return v;
            }
        }
    }

    /// The first line since start whose message starts with `prefix`: among the lines read so
    /// far (a spawned task may log before the ready line), else waiting for it.
    pub fn find_log(&mut self, prefix: &str) -> Value {
        if let Some(v) = self.lines.iter().map(|l| json(l)).find(|v| message_starts_with(v, prefix)) {
            return v;
        }
        self.wait_for_log(prefix)
    }

    /// Reads log lines until one whose message starts with `prefix`.
    pub fn wait_for_log(&mut self, prefix: &str) -> Value {
        self.wait_log(&format!("starting with {prefix:?}"), |v| message_starts_with(v, prefix))
    }

    /// Every log line, to the end of the log: call it once the process has exited (the reader
    /// thread then sees EOF).
    pub fn all_logs(&mut self) -> &[String] {
        loop {
            match self.rx.recv_timeout(LOG_TIMEOUT) {
                Ok(line) => self.lines.push(line),
                Err(RecvTimeoutError::Disconnected) => return &self.lines,
                Err(RecvTimeoutError::Timeout) => panic!("the log never ended: is the proxy still running?"),
            }
        }
    }

    /// [`Running::all_logs`], each line as JSON.
    pub fn all_json(&mut self) -> Vec<Value> {
        self.all_logs().iter().map(|l| json(l)).collect()
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).expect("signal");
    }

    /// Waits for the process to exit; its exit code.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// SIGTERM, then the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        stop_child(&mut self.child)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (target name, port) from a "ready for connections" line, JSON or text.
fn ready_line(line: &str) -> Option<(String, u16)> {
    if !line.contains("ready for connections") {
        return None;
    }
    let (name, listen) = match serde_json::from_str::<Value>(line) {
        Ok(v) if v["fields"]["message"] == "ready for connections" => {
            let field = |key: &str| v["fields"][key].as_str().map(str::to_owned);
            (field("name"), field("listen"))
        }
        Ok(_) => return None,
        // The text format: `… ready for connections name=NAME listen=ADDR …`.
        Err(_) => {
            let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_owned);
            (field("name="), field("listen="))
        }
    };
    let name = name.unwrap_or_else(|| panic!("the ready line names its target: {line}"));
    let port = listen
        .and_then(|l| l.rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the ready line names its listen address: {line}"));
    Some((name, port))
}

/// psql with `args`, no password from the environment, a connect timeout, no stdin.
pub fn psql_command(args: &[&str]) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args(args).env_remove("PGPASSWORD").env("PGCONNECT_TIMEOUT", "20").stdin(Stdio::null());
    cmd
}

pub fn psql(args: &[&str]) -> Output {
    psql_command(args).output().expect("psql is installed (see README)")
}

/// psql to 127.0.0.1:`port` as `user` on `db`, unaligned tuples only.
pub fn psql_at(port: u16, user: &str, db: &str, sql: &str) -> Output {
    psql(&["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-d", db, "-tA", "-c", sql])
}

/// `sql`'s result through the proxy on `port` as db_user; panics with psql's stderr on failure.
pub fn psql_select(port: u16, sql: &str) -> String {
    let out = psql_at(port, "db_user", "postgres", sql);
    assert!(out.status.success(), "psql on port {port}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
