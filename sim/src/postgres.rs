//! A throwaway real PostgreSQL cluster in a temp dir: the database the simulated RDS instance relays to.
//!
//! The cluster trusts every connection that reaches it (Unix socket and 127.0.0.1 only). That is on
//! purpose: it stands where the inside of an RDS instance stands, behind the simulator's RDS front,
//! which is what checks the TLS and the IAM token. Giving PostgreSQL its own password check as well
//! would test nothing the product does and force every test to manage a second secret.
//!
//! Binaries come from, in order: [`PgClusterOptions::bin_dir`], the `RDS_AUTH_PROXY_PG_BIN` env var,
//! the highest `/usr/lib/postgresql/<version>/bin` (Debian keeps them off PATH), then PATH.
//! initdb refuses to run as root, so as root the cluster is owned by the `postgres` OS user and every
//! server-side command runs through `runuser -u postgres --`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

#[cfg(unix)]
use nix::sys::signal::{kill, Signal};
#[cfg(unix)]
use nix::unistd::{geteuid, Pid, User};
/// Only root on Unix hands the cluster to the `postgres` user; elsewhere nobody does.
#[cfg(not(unix))]
enum User {}

/// Env var naming a directory holding `initdb`, `pg_ctl` (and ideally `psql`); overrides discovery.
pub const PG_BIN_ENV: &str = "RDS_AUTH_PROXY_PG_BIN";
/// The login role every cluster gets, named as in the AWS IAM auth guide.
pub const DB_USER: &str = "db_user";
/// The role whose members RDS logs in with an IAM token (`GRANT rds_iam TO user`); every cluster
/// has it, so the simulated RDS front can decide IAM vs password the way RDS does.
pub const RDS_IAM_ROLE: &str = "rds_iam";
/// The bootstrap superuser; forced with `initdb -U` so it does not depend on who runs the tests.
pub const SUPERUSER: &str = "postgres";
/// Where Debian's `postgresql-<version>` packages put the server binaries.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";
/// Settings file of ours that `postgresql.conf` includes; rewritten on every start attempt.
const SIM_CONF: &str = "rds_auth_proxy_sim.conf";
/// How many log lines an error carries.
const LOG_TAIL_LINES: usize = 25;

/// How to build a cluster. `Default` is what the simulator and the tests use.
#[derive(Debug, Clone)]
pub struct PgClusterOptions {
    /// Directory of the server binaries; `None` discovers them (see the module docs).
    pub bin_dir: Option<PathBuf>,
    /// Login roles created after start (`CREATE ROLE … LOGIN`), by default just [`DB_USER`].
    pub login_roles: Vec<String>,
    /// Roles granted [`RDS_IAM_ROLE`] after start (login roles named here are created first), by
    /// default just [`DB_USER`]. The superuser is deliberately not among them, as on RDS.
    pub iam_roles: Vec<String>,
    /// Extra `postgresql.conf` lines written verbatim after ours, so they win (e.g. `log_connections = on`).
    pub extra_conf: Vec<String>,
    /// `pg_hba.conf` lines placed before the trust lines, so they win for what they match (e.g.
    /// `host all scram_user 127.0.0.1/32 scram-sha-256`).
    pub hba: Vec<String>,
    /// Serve TLS with this certificate (`ssl = on`): the second upstream of the SCRAM tests,
    /// where PostgreSQL itself checks channel binding.
    pub tls: Option<PgTls>,
    /// Start attempts, each on a fresh port: another process may take the port between our probe
    /// and the postmaster's bind.
    pub start_attempts: u32,
    /// Upper bound for any one command (initdb, pg_ctl, psql), so a wedged cluster fails a test
    /// instead of hanging it.
    pub command_timeout: Duration,
}

impl Default for PgClusterOptions {
    fn default() -> Self {
        Self {
            bin_dir: None,
            login_roles: vec![DB_USER.to_owned()],
            iam_roles: vec![DB_USER.to_owned()],
            extra_conf: Vec::new(),
            hba: Vec::new(),
            tls: None,
            start_attempts: 5,
            command_timeout: Duration::from_secs(90),
        }
    }
}

/// A server certificate chain and its key, both PEM.
#[derive(Clone)]
pub struct PgTls {
    pub cert_chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls").finish_non_exhaustive()
    }
}

/// Why a throwaway cluster could not be set up, queried or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PgClusterError {
    /// No directory with `initdb` and `pg_ctl` was found.
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl) found in {searched}; install the postgresql \
         package or set {PG_BIN_ENV} to their directory"
    )]
    NoServerBinaries {
        /// The places looked at, for the message.
        searched: String,
    },
    /// A client binary (psql) is neither beside the server binaries nor on PATH.
    #[error("{name} not found in {} nor on PATH; install the postgresql-client package", dir.display())]
    ClientBinaryMissing {
        /// The program looked for.
        name: &'static str,
        /// The server binary directory it was looked for in first.
        dir: PathBuf,
    },
    /// Running as root without a `postgres` user to own the cluster.
    #[error(
        "running as root, but there is no `postgres` OS user to own the cluster (initdb refuses root); \
         install the postgresql package, which creates it"
    )]
    NoPostgresUser,
    /// Looking up the `postgres` user failed.
    #[cfg(unix)]
    #[error("could not look up the `postgres` OS user")]
    UserLookup(#[source] nix::Error),
    /// A file-system step failed.
    #[error("could not {action}")]
    Io {
        /// What was being done, e.g. "create the temp dir".
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        /// Program and the arguments that identify the step.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The tail of its stderr/stdout.
        output: String,
    },
    /// A command did not finish within [`PgClusterOptions::command_timeout`].
    #[error("`{command}` did not finish within {after:?}")]
    Timeout {
        /// Program and the arguments that identify the step.
        command: String,
        /// The limit that was hit.
        after: Duration,
    },
    /// The server did not come up on any of the ports tried.
    #[error("PostgreSQL did not start after {attempts} attempt(s); server log tail:\n{log_tail}")]
    StartFailed {
        /// How many ports were tried.
        attempts: u32,
        /// The end of the server log, where PostgreSQL says why.
        log_tail: String,
    },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> PgClusterError {
    let action = action.into();
    move |source| PgClusterError::Io { action, source }
}

/// A running throwaway cluster. Stop it with [`PgCluster::stop`]; dropping it stops it too
/// (synchronously, `-m immediate`), so a failing test leaks neither a postmaster nor a directory.
#[derive(Debug)]
pub struct PgCluster {
    /// Owns the temp dir; removed when the cluster is stopped or dropped.
    temp: Option<tempfile::TempDir>,
    /// The temp dir's path: Unix socket directory, log file, and parent of the data dir.
    root: PathBuf,
    /// `PGDATA`.
    data_dir: PathBuf,
    /// Server binaries in use (`pg_ctl`, `initdb`, `postgres`).
    bin_dir: PathBuf,
    /// `psql`, found beside the server binaries or on PATH.
    psql: PathBuf,
    /// TCP port on 127.0.0.1.
    port: u16,
    /// Postmaster pid, for the last-resort signal in `Drop`.
    postmaster_pid: Option<i32>,
    /// How commands are run (as the `postgres` user when we are root).
    runner: Runner,
    /// Set once `stop` succeeded, so `Drop` has nothing left to do.
    stopped: bool,
}

impl PgCluster {
    /// Creates, configures and starts a fresh cluster and creates the login roles.
    pub async fn start(opts: PgClusterOptions) -> Result<PgCluster, PgClusterError> {
        let bin_dir = discover_bin_dir(opts.bin_dir.as_deref())?;
        let psql = find_client(&bin_dir, "psql")?;

        #[cfg(unix)]
        let owner = if geteuid().is_root() {
            let user = User::from_name(SUPERUSER)
                .map_err(PgClusterError::UserLookup)?
                .ok_or(PgClusterError::NoPostgresUser)?;
            Some(user)
        } else {
            None
        };
        #[cfg(not(unix))]
        let owner: Option<User> = None;

        let temp = tempfile::Builder::new()
            .prefix("rds-auth-proxy-pg-")
            .tempdir()
            .map_err(io_err("create the temp dir"))?;
        let root = temp.path().to_path_buf();
        #[cfg(unix)]
        if let Some(user) = &owner {
            // The postgres user must reach into the dir (0755) and create the data dir, socket and
            // log there (owner); root can still remove it all afterwards.
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err("make the temp dir traversable"))?;
            std::os::unix::fs::chown(&root, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(io_err("hand the temp dir to the postgres user"))?;
        }
        let runner = Runner {
            as_postgres: owner.is_some(),
            cwd: root.clone(),
            timeout: opts.command_timeout,
        };
        let data_dir = root.join("data");
        let log_file = root.join("postgres.log");

        runner
            .run(
                &bin_dir.join("initdb"),
                [
                    OsStr::new("-D"),
                    data_dir.as_os_str(),
                    OsStr::new("-U"),
                    OsStr::new(SUPERUSER),
                    // Matches the pg_hba.conf we write below; stops initdb warning about trust.
                    OsStr::new("--auth=trust"),
                    OsStr::new("--encoding=UTF8"),
                    // C locale: no dependency on which locales the machine has generated.
                    OsStr::new("--locale=C"),
                    OsStr::new("--no-sync"),
                ],
                true,
            )
            .await?;
        let mut hba = String::new();
        for line in &opts.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        // Only what the simulator uses: the socket and IPv4 loopback (see the module docs).
        hba.push_str("local all all trust\nhost all all 127.0.0.1/32 trust\n");
        write_file(&data_dir.join("pg_hba.conf"), &hba)?;
        let mut extra_conf = Vec::new();
        if let Some(tls) = &opts.tls {
            // PostgreSQL refuses a key others can read; as root the files go to the postgres user.
            for (name, contents) in [("server.crt", &tls.cert_chain_pem), ("server.key", &tls.key_pem)] {
                let path = data_dir.join(name);
                write_file(&path, contents)?;
                #[cfg(unix)]
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io_err(format!("chmod {}", path.display())))?;
                #[cfg(unix)]
                if let Some(user) = &owner {
                    std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                        .map_err(io_err(format!("hand {} to the postgres user", path.display())))?;
                }
            }
            extra_conf.extend(["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"].map(String::from));
        }
        extra_conf.extend(opts.extra_conf.iter().cloned());
        append_file(
            &data_dir.join("postgresql.conf"),
            &format!("\ninclude = '{SIM_CONF}'\n"),
        )?;

        let attempts = opts.start_attempts.max(1);
        let mut started = None;
        for attempt in 1..=attempts {
            let port = free_port()?;
            write_file(
                &data_dir.join(SIM_CONF),
                &sim_conf(port, &root, &extra_conf),
            )?;
            let result = runner
                .run(
                    &bin_dir.join("pg_ctl"),
                    [
                        OsStr::new("-D"),
                        data_dir.as_os_str(),
                        OsStr::new("-l"),
                        log_file.as_os_str(),
                        OsStr::new("-w"),
                        OsStr::new("-t"),
                        OsStr::new("60"),
                        OsStr::new("start"),
                    ],
                    true,
                )
                .await;
            match result {
                Ok(_) => {
                    started = Some(port);
                    break;
                }
                Err(err) => {
                    // A timed-out start may have left a postmaster behind; never leak one.
                    runner.stop_blocking(&bin_dir, &data_dir);
                    let log_tail = tail_of(&log_file);
                    let port_taken =
                        log_tail.contains("could not bind") || log_tail.contains("already in use");
                    tracing::debug!(attempt, port, error = %err, "PostgreSQL start attempt failed");
                    if !port_taken || attempt == attempts {
                        return Err(PgClusterError::StartFailed {
                            attempts: attempt,
                            log_tail,
                        });
                    }
                }
            }
        }
        let Some(port) = started else {
            return Err(PgClusterError::StartFailed {
                attempts,
                log_tail: tail_of(&log_file),
            });
        };

        let cluster = PgCluster {
            temp: Some(temp),
            postmaster_pid: read_postmaster_pid(&data_dir),
            root,
            data_dir,
            bin_dir,
            psql,
            port,
            runner,
            stopped: false,
        };
        // From here on, an error drops `cluster`, which stops the server.
        cluster
            .psql(SUPERUSER, &roles_sql(&opts.login_roles, &opts.iam_roles))
            .await?;
        tracing::debug!(port, dir = %cluster.root.display(), "throwaway PostgreSQL cluster started");
        Ok(cluster)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory of the Unix socket (`.s.PGSQL.<port>`), for clients that use `host=/dir`.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// `PGDATA` of the cluster.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory of the server binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The bootstrap superuser's name (`postgres`).
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// Runs `sql` through psql over TCP as `user` on database `postgres` and returns the unaligned,
    /// tuples-only output with the trailing newline removed.
    pub async fn psql(&self, user: &str, sql: &str) -> Result<String, PgClusterError> {
        let port = self.port.to_string();
        let output = self
            .runner
            .run(
                &self.psql,
                [
                    "-X", // ignore ~/.psqlrc
                    "-q",
                    "-A",
                    "-t",
                    "-w", // never prompt for a password
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    user,
                    "-d",
                    "postgres",
                    "-c",
                    sql,
                ],
                false,
            )
            .await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(stdout.trim_end_matches('\n').to_owned())
    }

    /// Stops the server (`pg_ctl -m fast`) and removes the temp dir.
    pub async fn stop(mut self) -> Result<(), PgClusterError> {
        self.runner
            .run(
                &self.bin_dir.join("pg_ctl"),
                [
                    OsStr::new("-D"),
                    self.data_dir.as_os_str(),
                    OsStr::new("-m"),
                    OsStr::new("fast"),
                    OsStr::new("-w"),
                    OsStr::new("-t"),
                    OsStr::new("60"),
                    OsStr::new("stop"),
                ],
                true,
            )
            .await?;
        self.stopped = true;
        if let Some(temp) = self.temp.take() {
            temp.close()
                .map_err(io_err("remove the cluster's temp dir"))?;
        }
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Synchronous on purpose: Drop cannot await, and a test that panicked must still not leave
        // a postmaster running. `immediate` takes milliseconds.
        if !self.runner.stop_blocking(&self.bin_dir, &self.data_dir) {
            // pg_ctl itself failed. SIGQUIT is PostgreSQL's immediate shutdown; only send it while
            // the pid file still names our postmaster, so a recycled pid is never signalled.
            #[cfg(unix)]
            if let Some(pid) = self.postmaster_pid {
                if read_postmaster_pid(&self.data_dir) == Some(pid) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
                }
            }
        }
        // `temp` is dropped after this, which removes the directory.
    }
}

/// Runs the PostgreSQL programs, as the `postgres` OS user when we are root.
#[derive(Debug, Clone)]
struct Runner {
    /// Wrap server-side commands in `runuser -u postgres --`.
    as_postgres: bool,
    /// Working directory for every command: the postgres user may not be able to enter ours,
    /// and initdb fails if it cannot.
    cwd: PathBuf,
    /// See [`PgClusterOptions::command_timeout`].
    timeout: Duration,
}

impl Runner {
    fn command<I, S>(&self, program: &Path, args: I, server_side: bool) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = if server_side && self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", SUPERUSER, "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        };
        cmd.args(args).current_dir(&self.cwd).stdin(Stdio::null());
        // The developer's PGHOST/PGPORT/PGSSLMODE/PGDATA… must not redirect or break our commands.
        for (key, _) in std::env::vars_os() {
            if key.as_encoded_bytes().starts_with(b"PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("LC_ALL", "C");
        cmd
    }

    async fn run<I, S>(
        &self,
        program: &Path,
        args: I,
        server_side: bool,
    ) -> Result<Output, PgClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let label = command_label(program, &args);
        let mut cmd = tokio::process::Command::from(self.command(program, &args, server_side));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(self.timeout, cmd.output())
            .await
            .map_err(|_| PgClusterError::Timeout {
                command: label.clone(),
                after: self.timeout,
            })?
            .map_err(io_err(format!("run `{label}`")))?;
        if output.status.success() {
            Ok(output)
        } else {
            let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stdout));
            Err(PgClusterError::CommandFailed {
                command: label,
                status: output.status,
                output: last_lines(&text, LOG_TAIL_LINES),
            })
        }
    }

    /// `pg_ctl -m immediate stop`, blocking; true if pg_ctl reported success.
    fn stop_blocking(&self, bin_dir: &Path, data_dir: &Path) -> bool {
        let mut cmd = self.command(
            &bin_dir.join("pg_ctl"),
            [
                OsStr::new("-D"),
                data_dir.as_os_str(),
                OsStr::new("-m"),
                OsStr::new("immediate"),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("30"),
                OsStr::new("stop"),
            ],
            true,
        );
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        matches!(cmd.status(), Ok(status) if status.success())
    }
}

/// Program name plus the arguments that say which step it was (initdb, pg_ctl start, …);
/// SQL is left out because it can be long.
fn command_label(program: &Path, args: &[OsString]) -> String {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match args.last() {
        Some(last) if name == "pg_ctl" => format!("pg_ctl {}", last.to_string_lossy()),
        _ => name,
    }
}

/// Our settings for one start attempt. Performance settings trade durability for speed: the
/// cluster is deleted after the test anyway.
fn sim_conf(port: u16, socket_dir: &Path, extra: &[String]) -> String {
    let mut conf = format!(
        "listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = '{}'\n\
         # tests open 200+ concurrent connections, benches/soak.sh 500\n\
         max_connections = 600\n\
         shared_buffers = 16MB\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n",
        socket_dir.to_string_lossy().replace('\'', "''"),
    );
    for line in extra {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

/// Finds the directory holding `initdb` and `pg_ctl` (see the module docs for the order).
fn discover_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, PgClusterError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    // An explicit choice is never silently replaced by a discovered one.
    let explicit = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(PG_BIN_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if let Some(dir) = explicit {
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(PgClusterError::NoServerBinaries {
                searched: dir.display().to_string(),
            })
        };
    }
    if let Some(dir) = highest_versioned_bin_dir(Path::new(DEBIAN_PG_ROOT)) {
        return Ok(dir);
    }
    if let Some(dir) = find_on_path("pg_ctl").and_then(|p| p.parent().map(Path::to_path_buf)) {
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    Err(PgClusterError::NoServerBinaries {
        searched: format!("{DEBIAN_PG_ROOT}/*/bin and PATH"),
    })
}

/// `<root>/<version>/bin` with the highest numeric version (`9.6` < `15` < `17`) that has the
/// server binaries.
fn highest_versioned_bin_dir(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name();
            let mut parts = name.to_str()?.split('.');
            let major: u32 = parts.next()?.parse().ok()?;
            let minor: u32 = match parts.next() {
                Some(m) => m.parse().ok()?,
                None => 0,
            };
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
                .then_some(((major, minor), bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn find_client(bin_dir: &Path, name: &'static str) -> Result<PathBuf, PgClusterError> {
    let beside = bin_dir.join(name);
    if beside.is_file() {
        return Ok(beside);
    }
    find_on_path(name).ok_or_else(|| PgClusterError::ClientBinaryMissing {
        name,
        dir: bin_dir.to_path_buf(),
    })
}

/// Binds 127.0.0.1:0 and releases it: a port free right now (start retries if it is taken by then).
fn free_port() -> Result<u16, PgClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(io_err("find a free port on 127.0.0.1"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("find a free port on 127.0.0.1"))?
        .port();
    Ok(port)
}

/// First line of `postmaster.pid`, if the file exists and parses.
fn read_postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

fn tail_of(file: &Path) -> String {
    match std::fs::read(file) {
        Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES),
        Err(err) => format!("(no server log at {}: {err})", file.display()),
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn write_file(path: &Path, contents: &str) -> Result<(), PgClusterError> {
    std::fs::write(path, contents).map_err(io_err(format!("write {}", path.display())))
}

fn append_file(path: &Path, contents: &str) -> Result<(), PgClusterError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(io_err(format!("append to {}", path.display())))
}

/// One script that creates [`RDS_IAM_ROLE`], the login roles, and the grants (one psql run).
fn roles_sql(login_roles: &[String], iam_roles: &[String]) -> String {
    let mut sql = format!("CREATE ROLE {} NOLOGIN;", quote_ident(RDS_IAM_ROLE));
    let mut created = std::collections::HashSet::new();
    for role in login_roles.iter().chain(iam_roles) {
        if created.insert(role) {
            sql.push_str(&format!(" CREATE ROLE {} LOGIN;", quote_ident(role)));
        }
    }
    for role in iam_roles {
        sql.push_str(&format!(
            " GRANT {} TO {};",
            quote_ident(RDS_IAM_ROLE),
            quote_ident(role)
        ));
    }
    sql
}

/// SQL identifier quoting, so a role name is never interpreted as SQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

// A real PostgreSQL run the Unix way (runuser, signals); not on Windows.
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// Alive and not a zombie: an orphaned postmaster may wait to be reaped by a PID 1 that never does.
    #[cfg(target_os = "linux")]
    fn process_running(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
            Err(_) => false,
        }
    }

    /// Alive (no /proc outside Linux to tell a zombie apart): signal 0 reaches it.
    #[cfg(all(unix, not(target_os = "linux")))]
    fn process_running(pid: i32) -> bool {
        kill(Pid::from_raw(pid), None).is_ok()
    }

    #[tokio::test]
    async fn runs_queries_as_db_user_then_stops() {
        let cluster = PgCluster::start(PgClusterOptions::default()).await.unwrap();
        assert_eq!(cluster.addr().port(), cluster.port());
        assert_eq!(cluster.superuser(), "postgres");
        assert!(cluster.bin_dir().join("pg_ctl").is_file());
        assert!(cluster.data_dir().join("PG_VERSION").is_file());
        assert!(cluster
            .socket_dir()
            .join(format!(".s.PGSQL.{}", cluster.port()))
            .exists());
        assert_eq!(
            cluster.psql(DB_USER, "SELECT current_user").await.unwrap(),
            "db_user"
        );
        assert_eq!(
            cluster
                .psql("postgres", "SHOW max_connections")
                .await
                .unwrap(),
            "600"
        );
        // db_user is a plain login role granted rds_iam, like an RDS IAM user.
        assert_eq!(
            cluster
                .psql("postgres", "SELECT pg_has_role('db_user', 'rds_iam', 'member')")
                .await
                .unwrap(),
            "t"
        );
        assert_eq!(
            cluster
                .psql(
                    "postgres",
                    "SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = 'db_user'"
                )
                .await
                .unwrap(),
            "t|f"
        );
        let err = cluster.psql("nobody", "SELECT 1").await.unwrap_err();
        assert!(err.to_string().contains("nobody"), "{err}");

        let pid = read_postmaster_pid(cluster.data_dir()).unwrap();
        let root = cluster.socket_dir().to_path_buf();
        cluster.stop().await.unwrap();
        assert!(!root.exists());
        assert!(wait_gone(pid), "postmaster {pid} still running after stop");
    }

    /// The pid file goes just before the postmaster exits; allow that instant to pass.
    fn wait_gone(pid: i32) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if !process_running(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[tokio::test]
    async fn two_clusters_at_once_get_different_ports() {
        let (a, b) = tokio::join!(
            PgCluster::start(PgClusterOptions::default()),
            PgCluster::start(PgClusterOptions::default())
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a.port(), b.port());
        assert_ne!(a.data_dir(), b.data_dir());
        let (ra, rb) = tokio::join!(
            a.psql(DB_USER, "SELECT current_setting('port')"),
            b.psql(DB_USER, "SELECT current_setting('port')")
        );
        assert_eq!(ra.unwrap(), a.port().to_string());
        assert_eq!(rb.unwrap(), b.port().to_string());
    }

    #[tokio::test]
    async fn drop_stops_the_postmaster_and_removes_the_dir() {
        let cluster = PgCluster::start(PgClusterOptions::default()).await.unwrap();
        let pid = read_postmaster_pid(cluster.data_dir()).unwrap();
        let root = cluster.socket_dir().to_path_buf();
        assert!(process_running(pid));
        drop(cluster);
        assert!(!root.exists());
        assert!(wait_gone(pid), "postmaster {pid} still running after drop");
    }

    #[tokio::test]
    async fn explicit_bin_dir_without_binaries_is_a_clear_error() {
        let empty = tempfile::tempdir().unwrap();
        let opts = PgClusterOptions {
            bin_dir: Some(empty.path().to_path_buf()),
            ..PgClusterOptions::default()
        };
        let err = PgCluster::start(opts).await.unwrap_err();
        assert!(
            matches!(err, PgClusterError::NoServerBinaries { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(PG_BIN_ENV));
    }

    #[tokio::test]
    async fn start_failure_carries_the_server_log() {
        let opts = PgClusterOptions {
            extra_conf: vec!["shared_buffers = 'plenty'".to_owned()],
            ..PgClusterOptions::default()
        };
        let err = PgCluster::start(opts).await.unwrap_err();
        let PgClusterError::StartFailed { attempts, log_tail } = &err else {
            panic!("unexpected error: {err}");
        };
        // Not a port clash, so no retry on another port.
        assert_eq!(*attempts, 1);
        assert!(log_tail.contains("shared_buffers"), "{log_tail}");
    }

    #[test]
    fn highest_version_wins() {
        let root = tempfile::tempdir().unwrap();
        for (version, complete) in [
            ("9.6", true),
            ("15", true),
            ("16", true),
            ("17", false),
            ("misc", true),
        ] {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
            if complete {
                std::fs::write(bin.join("pg_ctl"), "").unwrap();
            }
        }
        assert_eq!(
            highest_versioned_bin_dir(root.path()),
            Some(root.path().join("16").join("bin"))
        );
        assert_eq!(highest_versioned_bin_dir(&root.path().join("absent")), None);
    }

    #[test]
    fn roles_script_creates_each_role_once_and_grants_rds_iam() {
        let sql = roles_sql(&["db_user".into(), "pw".into()], &["db_user".into(), "iam2".into()]);
        assert_eq!(
            sql,
            "CREATE ROLE \"rds_iam\" NOLOGIN; CREATE ROLE \"db_user\" LOGIN; CREATE ROLE \"pw\" LOGIN; \
             CREATE ROLE \"iam2\" LOGIN; GRANT \"rds_iam\" TO \"db_user\"; GRANT \"rds_iam\" TO \"iam2\";"
        );
    }

    #[test]
    fn role_names_are_quoted() {
        assert_eq!(quote_ident("db_user"), "\"db_user\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
