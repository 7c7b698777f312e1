//! Config reload without a restart: on SIGHUP, and when the config file's content changes
//! (polled every [`POLL_INTERVAL`], applied once it has held still for one interval), the file
//! is read again and the running targets are brought to it. New targets start listening;
//! removed ones stop accepting and drain their connections as on SIGTERM; changed ones get a new
//! listener and context for new connections while their open connections go on with the old;
//! unchanged ones are not touched. A file that does not load, or a new listener that cannot
//! bind, changes nothing: one log line says why and the running configuration stays.
//!
//! The file is polled (a read and a SHA-256 of a few hundred bytes twice a second) rather than
//! watched with inotify/FSEvents: no new crate, the same code on every OS, and it follows the
//! file through an editor's write-to-temp-and-rename and a symlinked config directory.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::app::{build_context_with, AbortOnDrop, AppError, Credentials, Proxy};
use crate::cli::LogArgs;
use crate::config::{Config, ConfigError};
use crate::config_file::{CliLayer, ConfigFileError};
use crate::fleet::Fleet;
use crate::http::Ops;
use crate::listener::{ListenError, Listeners};
use crate::target::TargetContext;

/// How often the config file is read to see whether it changed. A change is applied at the
/// second read that sees it unchanged, so within two intervals (a half-written file is not).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long a changed target waits for its old listener's port to be free again.
const REBIND_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("target {name:?}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: crate::lookup::LookupError,
    },
    #[error("target {name:?}: {source}")]
    Config {
        name: String,
        #[source]
        source: ConfigError,
    },
    #[error("target {name:?}")]
    Target {
        name: String,
        #[source]
        source: AppError,
    },
}

/// What a reload needs besides the file: the same layers and credentials the process started
/// with, so a reloaded target means what it would mean after a restart.
pub struct Reload {
    /// The config file.
    pub file: PathBuf,
    /// The flags and `RDS_AUTH_PROXY_*` variables the process started with, layered over the
    /// file as at start.
    pub cli: CliLayer,
    /// Where new targets' AWS credentials come from.
    pub credentials: Credentials,
    /// The log settings in force: process-wide, so a change in the file needs a restart.
    pub log: LogArgs,
}

/// Targets by what a reload does to them, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// What a reload does to each target: compares the running configurations with the new ones
/// by name (names are unique in a file).
pub fn diff(running: &[Config], new: &[Config]) -> Changes {
    let mut changes = Changes::default();
    for config in new {
        match running.iter().find(|r| r.name == config.name) {
            None => changes.added.push(config.name.clone()),
            Some(r) if r == config => changes.unchanged.push(config.name.clone()),
            Some(_) => changes.changed.push(config.name.clone()),
        }
    }
    for r in running {
        if !new.iter().any(|c| c.name == r.name) {
            changes.removed.push(r.name.clone());
        }
    }
    changes
}

/// The keys that hold for the whole process and are fixed at start: the HTTP endpoint (bound
/// once, shared by every target), the exit code on SIGTERM, the drain timeout (the process's
/// shutdown window) and the log settings (the logger is set up once).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcessWide {
    http: Option<SocketAddr>,
    exit_zero_on_sigterm: bool,
    drain_timeout: Duration,
    log: (String, bool),
}

impl ProcessWide {
    fn of(config: Option<&Config>, log: &LogArgs) -> ProcessWide {
        ProcessWide {
            http: config.and_then(|c| c.http),
            exit_zero_on_sigterm: config.is_some_and(|c| c.exit_zero_on_sigterm),
            drain_timeout: config.map_or(Duration::ZERO, |c| c.listen.drain_timeout),
            log: (format!("{:?}", log.log_format), log.quiet),
        }
    }

    /// The file keys of `self` that `new` changes (none when `new` has no target to say).
    fn changed_keys(&self, new: &ProcessWide) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.http != new.http {
            keys.push("http_address/http_port");
        }
        if self.exit_zero_on_sigterm != new.exit_zero_on_sigterm {
            keys.push("exit_zero_on_sigterm");
        }
        if self.drain_timeout != new.drain_timeout {
            keys.push("drain_timeout");
        }
        if self.log.0 != new.log.0 {
            keys.push("log_format");
        }
        if self.log.1 != new.log.1 {
            keys.push("quiet");
        }
        keys
    }

    /// Gives `config` the running values, so they never make a target look changed.
    fn apply(&self, config: &mut Config) {
        config.http = self.http;
        config.exit_zero_on_sigterm = self.exit_zero_on_sigterm;
        config.listen.drain_timeout = self.drain_timeout;
    }
}

/// A target being served.
struct Served {
    config: Config,
    /// Dropping it stops the target: its listener closes, its connections drain.
    _stop: oneshot::Sender<()>,
}

/// The running targets and the tasks serving (or draining) them.
struct Supervisor {
    ops: Arc<Ops>,
    /// By name; the configurations in the order of the file (for the diff).
    served: BTreeMap<String, Served>,
    /// Every target's task: serving, or draining after a reload removed or replaced it.
    tasks: JoinSet<()>,
    process: ProcessWide,
}

impl Supervisor {
    fn start(&mut self, proxy: Proxy, config: Config) {
        let (stop, stopped) = oneshot::channel::<()>();
        // Resolves when the sender is dropped (a reload) or used (never).
        let shutdown = async move {
            let _ = stopped.await;
        };
        self.tasks.spawn(proxy.run_with(shutdown, false));
        self.served.insert(config.name.clone(), Served { config, _stop: stop });
    }

    fn running(&self) -> Vec<Config> {
        self.served.values().map(|s| s.config.clone()).collect()
    }

    /// Re-reads the file and applies it; logs and counts the outcome either way.
    async fn reload(&mut self, watch: &mut Watcher, trigger: &str) {
        let file = watch.reload.file.clone();
        let outcome = match self.load(watch).await {
            Ok((configs, log)) => self.apply(configs, &log, &watch.reload.credentials).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(changes) => {
                self.ops.metrics.count_reload(true);
                tracing::info!(
                    trigger,
                    file = %file.display(),
                    added = changes.added.join(",").as_str(),
                    removed = changes.removed.join(",").as_str(),
                    changed = changes.changed.join(",").as_str(),
                    unchanged = changes.unchanged.join(",").as_str(),
                    "configuration reloaded"
                );
                crate::audit::reload(trigger, &file, true, &changes.added, &changes.removed, &changes.changed, "");
            }
            Err(e) => {
                self.ops.metrics.count_reload(false);
                let error = crate::errors::display_chain(&e);
                tracing::error!(
                    trigger,
                    file = %file.display(),
                    error = error.as_str(),
                    "configuration not reloaded: the running configuration stays"
                );
                crate::audit::reload(trigger, &file, false, &[], &[], &[], &error);
            }
        }
    }

    /// The file's targets, looked up and validated as at start, and its log settings.
    async fn load(&self, watch: &mut Watcher) -> Result<(Vec<Config>, LogArgs), ReloadError> {
        let read = tokio::fs::read(&watch.reload.file).await;
        watch.seen = read.as_ref().ok().map(|bytes| Sha256::digest(bytes).into());
        let reload = &watch.reload;
        let bytes = read.map_err(|source| ReloadError::Read {
            path: reload.file.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| ReloadError::Read {
            path: reload.file.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        })?;
        let plan = crate::config_file::plan_from_text(&reload.file, &text, &reload.cli)?;
        let mut configs = plan.targets;
        // --db-instance/--db-cluster and --ssm-target auto, as at start (see main.rs).
        for pending in plan.pending {
            let name = pending.name.clone().unwrap_or_default();
            let mut args = pending.args;
            let resolved = crate::lookup::resolve_args(&mut args, &reload.credentials)
                .await
                .map_err(|source| ReloadError::Lookup {
                    name: name.clone(),
                    source,
                })?;
            let mut config = Config::from_args(&args).map_err(|source| ReloadError::Config {
                name: name.clone(),
                source,
            })?;
            config.dbi_resource_id = resolved.db.and_then(|d| d.description.resource_id);
            if let Some(name) = pending.name {
                config.name = name;
            }
            configs.push(config);
        }
        Ok((configs, plan.log))
    }

    /// Brings the running targets to `configs`: everything that can fail (binding a free port,
    /// building a context) is done before any running target is touched.
    async fn apply(
        &mut self,
        mut configs: Vec<Config>,
        log: &LogArgs,
        credentials: &Credentials,
    ) -> Result<Changes, ReloadError> {
        let kept = self.process.changed_keys(&ProcessWide::of(configs.first(), log));
        if !kept.is_empty() {
            tracing::warn!(
                keys = kept.join(", ").as_str(),
                "these keys apply to the whole process and keep their running values until a restart"
            );
        }
        for config in &mut configs {
            self.process.apply(config);
        }
        let changes = diff(&self.running(), &configs);
        // Ports the targets being stopped hold: whoever wants one binds it after they let go.
        let released: Vec<u16> = changes
            .removed
            .iter()
            .chain(&changes.changed)
            .filter_map(|name| self.served.get(name))
            .map(|s| s.config.listen.address.port())
            .filter(|port| *port != 0)
            .collect();
        let mut prepared = Vec::new();
        for config in configs.iter().filter(|c| changes.added.contains(&c.name) || changes.changed.contains(&c.name)) {
            let failed = |source: AppError| ReloadError::Target {
                name: config.name.clone(),
                source,
            };
            let listeners = if released.contains(&config.listen.address.port()) {
                None
            } else {
                Some(Listeners::bind(&config.listen).await.map_err(|e| failed(e.into()))?)
            };
            let ctx = build_context_with(config, credentials.clone(), &self.ops.metrics)
                .await
                .map_err(failed)?;
            prepared.push((config.clone(), listeners, ctx));
        }
        // From here on the reload is applied.
        for name in changes.removed.iter().chain(&changes.changed) {
            self.served.remove(name);
            self.ops.remove_target(name);
            if changes.removed.contains(name) {
                self.ops.metrics.forget_target(name);
                tracing::info!(name = name.as_str(), "target removed: its listener is closed and its open connections drain");
            }
        }
        for (config, listeners, ctx) in prepared {
            let listeners = match listeners {
                Some(l) => l,
                None => match rebind(&config).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(
                            name = config.name.as_str(),
                            error = crate::errors::display_chain(&e).as_str(),
                            "cannot listen again after the reload: the target is not served until the next reload"
                        );
                        continue;
                    }
                },
            };
            self.serve(config, listeners, ctx);
        }
        Ok(changes)
    }

    fn serve(&mut self, config: Config, listeners: Listeners, ctx: Arc<TargetContext>) {
        self.ops.add_target(ctx.clone(), config.listen.max_connections);
        let proxy = Proxy {
            listeners,
            ctx,
            ops: self.ops.clone(),
            http: None,
        };
        self.start(proxy, config);
    }
}

/// Binds `config`'s listener once the target stopped by this reload has let go of the port (it
/// closes its listener as soon as its task sees the stop).
async fn rebind(config: &Config) -> Result<Listeners, ListenError> {
    let deadline = tokio::time::Instant::now() + REBIND_LIMIT;
    loop {
        match Listeners::bind(&config.listen).await {
            Err(ListenError::Tcp { source, .. } | ListenError::Unix { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// The config file as last read: a change is one the content (not just the time) shows.
struct Watcher {
    reload: Reload,
    /// The digest of the content last read (None: it could not be read).
    seen: Option<[u8; 32]>,
    /// A different content seen at the last poll, applied if the next poll sees it again.
    pending: Option<Option<[u8; 32]>>,
}

impl Watcher {
    async fn new(reload: Reload) -> Watcher {
        let seen = digest(&reload.file).await;
        Watcher {
            reload,
            seen,
            pending: None,
        }
    }

    /// Whether the file changed and has held still since the last poll.
    async fn changed(&mut self) -> bool {
        let now = digest(&self.reload.file).await;
        if now == self.seen {
            self.pending = None;
            return false;
        }
        if self.pending == Some(now) {
            self.pending = None;
            return true;
        }
        self.pending = Some(now);
        false
    }
}

async fn digest(path: &Path) -> Option<[u8; 32]> {
    tokio::fs::read(path).await.ok().map(|bytes| Sha256::digest(bytes).into())
}

/// SIGHUP, where there is one (Unix); elsewhere only the file watcher reloads.
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn install() -> Hangups {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|e| tracing::warn!(error = %e, "cannot watch for SIGHUP: reload by editing the file"))
                .ok();
            Hangups { signal }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}

/// Serves `fleet` (bound from `configs`, in the same order) until `shutdown` resolves, then
/// drains every target, those a reload stopped included. With `reload`, SIGHUP and changes of
/// the file reload it; without (no config file), SIGHUP is logged and ignored.
pub async fn serve(fleet: Fleet, configs: Vec<Config>, reload: Option<Reload>, shutdown: impl Future<Output = ()>) {
    let Fleet { proxies, ops, http } = fleet;
    let http = http.map(|listener| {
        tracing::info!(http = %listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()), "serving /startup /readiness /liveness /metrics");
        AbortOnDrop(tokio::spawn(crate::http::serve(listener, ops.clone())))
    });
    let log = reload.as_ref().map_or_else(
        || LogArgs {
            log_format: crate::cli::LogFormat::Text,
            quiet: false,
        },
        |r| r.log.clone(),
    );
    let mut supervisor = Supervisor {
        ops,
        served: BTreeMap::new(),
        tasks: JoinSet::new(),
        process: ProcessWide::of(configs.first(), &log),
    };
    // Before the targets are served: an edit right after the ready lines is a change.
    let mut hangups = Hangups::install();
    let mut watch = match reload {
        Some(r) => Some(Watcher::new(r).await),
        None => None,
    };
    for (proxy, config) in proxies.into_iter().zip(configs) {
        supervisor.start(proxy, config);
    }
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = hangups.recv() => match &mut watch {
                Some(w) => supervisor.reload(w, "sighup").await,
                None => tracing::warn!("SIGHUP: nothing to reload, the configuration comes from flags and variables, not a config file"),
            },
            _ = poll.tick(), if watch.is_some() => {
                if let Some(w) = &mut watch {
                    if w.changed().await {
                        supervisor.reload(w, "file").await;
                    }
                }
            }
            Some(_) = supervisor.tasks.join_next(), if !supervisor.tasks.is_empty() => {}
        }
    }
    supervisor.ops.set_draining();
    // Dropping the stop senders stops every target; then wait for all of them to drain.
    supervisor.served.clear();
    while supervisor.tasks.join_next().await.is_some() {}
    drop(http);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, port: u16) -> Config {
        use clap::Parser;
        let port = port.to_string();
        let argv = ["rds-auth-proxy", "--target", "db.abc.eu-west-1.rds.amazonaws.com", "--port", &port];
        let mut c = Config::from_args(&crate::cli::Cli::try_parse_from(argv).expect("valid flags").proxy).expect("valid");
        c.name = name.to_owned();
        c
    }

    #[test]
    fn the_diff_sorts_targets_by_name_into_added_removed_changed_unchanged() {
        let running = [config("a", 6001), config("b", 6002), config("c", 6003)];
        let new = [config("a", 6001), config("b", 6012), config("d", 6004)];
        let changes = diff(&running, &new);
        assert_eq!(changes.added, ["d"]);
        assert_eq!(changes.removed, ["c"]);
        assert_eq!(changes.changed, ["b"]);
        assert_eq!(changes.unchanged, ["a"]);
        assert_eq!(diff(&running, &running).unchanged.len(), 3);
    }

    #[test]
    fn process_wide_keys_are_named_and_keep_their_running_values() {
        let log = LogArgs {
            log_format: crate::cli::LogFormat::Text,
            quiet: false,
        };
        let running = config("a", 6001);
        let process = ProcessWide::of(Some(&running), &log);
        let mut new = running.clone();
        new.http = Some("127.0.0.1:9000".parse().unwrap());
        new.listen.drain_timeout = Duration::from_secs(99);
        let quiet = LogArgs { quiet: true, ..log };
        assert_eq!(
            process.changed_keys(&ProcessWide::of(Some(&new), &quiet)),
            ["http_address/http_port", "drain_timeout", "quiet"]
        );
        process.apply(&mut new);
        assert_eq!(new, running, "a target that changed only process-wide keys is unchanged");
    }
}
