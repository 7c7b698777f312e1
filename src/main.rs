#![forbid(unsafe_code)]
//! The binary: parse the command line, set up logging, run, and map the outcome to an exit code
//! (0 ok, 1 runtime error, 2 configuration error, 130 SIGINT, 143 SIGTERM).

use std::process::ExitCode;

use clap::FromArgMatches;
use rds_auth_proxy::app::Credentials;
use rds_auth_proxy::cli::{Cli, Command, LogArgs, LogFormat};
use rds_auth_proxy::config_file::Plan;
use rds_auth_proxy::fleet::Fleet;
use rds_auth_proxy_sim::cli::SimCommand;

mod demo;

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sim = SimCommand::from_matches(&matches).unwrap_or_else(|e| e.exit());
    // The configuration (flags, variables, the config file) before anything else: its log
    // settings decide how to log, and a mistake in it is one line and exit code 2.
    let plan = match &cli.command {
        None if sim.is_some() => None,
        None => match rds_auth_proxy::config_file::plan(&matches, |k| std::env::var_os(k)) {
            Ok(plan) => Some(plan),
            Err(e) => {
                eprintln!("rds-auth-proxy: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        Some(Command::Completions(args)) => {
            let mut cmd = command();
            clap_complete::generate(args.shell, &mut cmd, "rds-auth-proxy", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man) => {
            return match clap_mangen::Man::new(command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rds-auth-proxy: cannot write the man page: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            };
        }
        Some(_) => None,
    };
    // doctor and connect-info work on one target, read from flags, variables and the config
    // file as the proxy reads them.
    let one = match (&cli.command, matches.subcommand()) {
        (Some(Command::Doctor(a)), Some((_, sub))) => Some(one_target(sub, a.config.as_deref())),
        (Some(Command::ConnectInfo(a)), Some((_, sub))) => Some(one_target(sub, a.config.as_deref())),
        _ => None,
    };
    let one = match one.transpose() {
        Ok(one) => one,
        Err(e) => {
            eprintln!("rds-auth-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(plan) = &plan {
        if cli.file.list_targets {
            print!("{}", rds_auth_proxy::config_file::describe(plan));
            return ExitCode::SUCCESS;
        }
    }
    init_logging(plan.as_ref().map_or(&cli.log, |p| &p.log));
    rds_auth_proxy::tls::install_default_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rds-auth-proxy: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // The flags and variables a reload layers over the file again, as at start.
    let layer = rds_auth_proxy::config_file::CliLayer::from_matches(&matches);
    runtime.block_on(run(cli, sim, plan, one, layer))
}

/// The whole command line: the proxy library's, plus the simulator's `sim` and `demo`.
fn command() -> clap::Command {
    rds_auth_proxy_sim::cli::with_commands(rds_auth_proxy::version::command())
}

fn one_target(
    matches: &clap::ArgMatches,
    config: Option<&std::path::Path>,
) -> Result<OneTarget, rds_auth_proxy::config_file::ConfigFileError> {
    rds_auth_proxy::config_file::one_target(matches, config, |k| std::env::var_os(k))
}

/// A subcommand's target: the proxy's arguments and the config file table's name.
type OneTarget = (rds_auth_proxy::cli::ProxyArgs, Option<String>);

async fn run(
    cli: Cli,
    sim: Option<SimCommand>,
    plan: Option<Plan>,
    one: Option<OneTarget>,
    layer: rds_auth_proxy::config_file::CliLayer,
) -> ExitCode {
    match sim {
        Some(SimCommand::Sim(args)) => return report(rds_auth_proxy_sim::runner::run_sim(*args, shutdown_signal()).await),
        Some(SimCommand::Demo(args)) => return report(demo::run_demo(args, shutdown_signal()).await),
        None => {}
    }
    match (cli.command, plan) {
        (None, Some(plan)) => run_proxy(plan, cli.file.run_connection_test, layer).await,
        (Some(Command::Token(args)), _) => token(args).await,
        (Some(Command::ConnectInfo(args)), _) => connect_info(&args, one).await,
        (Some(Command::Wait(args)), _) => wait(args).await,
        (Some(Command::Doctor(args)), _) => doctor(args, one).await,
        // Handled before the runtime starts.
        (None, None) | (Some(Command::Completions(_) | Command::Man), _) => ExitCode::SUCCESS,
    }
}

/// `rds-auth-proxy connect-info`: the settings on stdout, nothing else, so `$(…)` works.
async fn connect_info(args: &rds_auth_proxy::cli::ConnectInfoArgs, one: Option<OneTarget>) -> ExitCode {
    use rds_auth_proxy::connect_info::ClientSettings;
    let (mut proxy_args, name) = one.unwrap_or_else(|| (args.proxy.clone(), None));
    // The same name lookups as the proxy (only when --db-instance, --db-cluster or
    // --ssm-target auto ask for them), so both agree on the target.
    if let Err(e) = rds_auth_proxy::lookup::resolve_args(&mut proxy_args, &Credentials::Chain).await {
        eprintln!("rds-auth-proxy: {e}\n  hint: {}", e.hint());
        return ExitCode::from(if e.is_input_error() { EXIT_CONFIG } else { EXIT_RUNTIME });
    }
    let settings = rds_auth_proxy::config::Config::from_args(&proxy_args)
        .map_err(|e| e.to_string())
        .map(|mut c| {
            if let Some(name) = name {
                c.name = name;
            }
            c
        })
        .and_then(|c| {
            let dbname = args.dbname.as_deref().unwrap_or(c.engine.engine.default_database());
            ClientSettings::from_config(&c, dbname).map_err(|e| e.to_string())
        });
    match settings {
        Ok(s) => {
            print!("{}", s.render(args.format));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rds-auth-proxy: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn wait(args: rds_auth_proxy::cli::WaitArgs) -> ExitCode {
    let addr = std::net::SocketAddr::new(args.http_address, args.http_port);
    match rds_auth_proxy::http::wait(addr, std::time::Duration::from_secs(args.timeout)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rds-auth-proxy: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

async fn run_proxy(mut plan: Plan, run_test: bool, layer: rds_auth_proxy::config_file::CliLayer) -> ExitCode {
    if let Some(file) = &plan.file {
        tracing::info!(file = %file.display(), targets = plan.targets.len() + plan.pending.len(), "configuration file read");
    }
    // --db-instance/--db-cluster and --ssm-target auto become --target and a node id first.
    for pending in std::mem::take(&mut plan.pending) {
        let mut args = pending.args;
        let resolved = match rds_auth_proxy::lookup::resolve_args(&mut args, &Credentials::Chain).await {
            Ok(r) => r,
            Err(e) => {
                let name = pending.name.map(|n| format!("target {n:?}: ")).unwrap_or_default();
                eprintln!("rds-auth-proxy: {name}{e}\n  hint: {}", e.hint());
                return ExitCode::from(if e.is_input_error() { EXIT_CONFIG } else { EXIT_RUNTIME });
            }
        };
        match rds_auth_proxy::config::Config::from_args(&args) {
            Ok(mut config) => {
                // For the HINT on a PAM failure: the rds-db:connect ARN names the DbiResourceId.
                config.dbi_resource_id = resolved.db.and_then(|d| d.description.resource_id);
                if let Some(name) = pending.name {
                    config.name = name;
                }
                plan.targets.push(config);
            }
            Err(e) => {
                eprintln!("rds-auth-proxy: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    // Process-wide, so every target carries the same value; the first one's is the one.
    let exit_zero_on_sigterm = plan.targets.first().is_some_and(|c| c.exit_zero_on_sigterm);
    let fleet = match Fleet::bind(&plan.targets, Credentials::Chain).await {
        Ok(f) => f,
        Err(e) if plan.targets.len() == 1 => {
            eprintln!("rds-auth-proxy: {}", rds_auth_proxy::errors::display_chain(&e.source));
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("rds-auth-proxy: {}", rds_auth_proxy::errors::display_chain(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Concurrently with serving: the chain may try the instance metadata service for a while.
    // One report per AWS profile, not per target.
    let mut profiles = std::collections::BTreeSet::new();
    for (proxy, config) in fleet.proxies.iter().zip(&plan.targets) {
        if profiles.insert(config.profile.clone()) {
            let ctx = proxy.ctx.clone();
            let profile = config.profile.clone();
            tokio::spawn(async move { rds_auth_proxy::app::report_credentials(&ctx, profile.as_deref()).await });
        }
    }
    let probes: Vec<_> = fleet
        .proxies
        .iter()
        .zip(&plan.targets)
        .map(|(proxy, config)| {
            rds_auth_proxy::conntest::Probe::new(&config.name, proxy.local_addr(), config.db_user.as_deref(), |k| {
                std::env::var(k).ok()
            })
        })
        .collect();
    let stop = shutdown_signal();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let signal = async move {
        let code = tokio::select! {
            code = stop => code,
            code = connection_test(probes, run_test) => code,
        };
        exit_on_second_interrupt();
        let _ = tx.send(code);
    };
    // With a config file, SIGHUP and edits of the file reload it (src/reload.rs).
    let reload = plan.file.clone().map(|file| rds_auth_proxy::reload::Reload {
        file,
        cli: layer,
        credentials: Credentials::Chain,
        log: plan.log.clone(),
    });
    rds_auth_proxy::reload::serve(fleet, plan.targets, reload, signal).await;
    tracing::info!("stopped");
    let code = rx.await.unwrap_or(0);
    ExitCode::from(if code == EXIT_SIGTERM && exit_zero_on_sigterm { 0 } else { code })
}

const EXIT_SIGINT: u8 = 130;
const EXIT_SIGTERM: u8 = 143;

/// During the drain, a second Ctrl-C means "now": exit at once, open connections or not.
#[cfg(not(unix))]
fn exit_on_second_interrupt() {
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("second Ctrl-C: exiting now without waiting for open connections");
            std::process::exit(i32::from(EXIT_SIGINT));
        }
    });
}

/// During the drain, a second Ctrl-C means "now": exit at once, open connections or not.
#[cfg(unix)]
fn exit_on_second_interrupt() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::interrupt()) {
        Ok(mut int) => {
            tokio::spawn(async move {
                if int.recv().await.is_some() {
                    tracing::warn!("second SIGINT: exiting now without waiting for open connections");
                    std::process::exit(i32::from(EXIT_SIGINT));
                }
            });
        }
        Err(e) => tracing::debug!(error = %e, "cannot watch for a second SIGINT"),
    }
}

/// `--run-connection-test`: resolves (with exit code 1) only if a target fails; when all pass,
/// or without the flag, it never resolves and the proxy keeps serving.
async fn connection_test(probes: Vec<rds_auth_proxy::conntest::Probe>, enabled: bool) -> u8 {
    if !enabled {
        return std::future::pending().await;
    }
    let failures = rds_auth_proxy::conntest::run_all(&probes, rds_auth_proxy::conntest::PROBE_TIMEOUT).await;
    if failures.is_empty() {
        tracing::info!(targets = probes.len(), "connection test passed: `select 1` through every target");
        return std::future::pending().await;
    }
    for (name, failure) in &failures {
        tracing::error!(target_name = %name, error = %failure, "connection test failed");
        eprintln!("rds-auth-proxy: connection test failed for target {name:?}: {failure}");
    }
    EXIT_RUNTIME
}

async fn doctor(args: Box<rds_auth_proxy::cli::DoctorArgs>, one: Option<OneTarget>) -> ExitCode {
    let proxy = one.map_or_else(|| args.proxy.clone(), |(proxy, _)| proxy);
    if proxy.db_user.is_none() {
        eprintln!("rds-auth-proxy doctor: --db-user is required: the database user to log in as, e.g. --db-user db_user");
        return ExitCode::from(EXIT_CONFIG);
    }
    let report = rds_auth_proxy::doctor::run(&proxy, args.dbname.as_deref(), Credentials::Chain, |step| {
        println!("{step}");
    })
    .await;
    if report.passed() {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_RUNTIME)
    }
}

async fn token(args: rds_auth_proxy::cli::TokenArgs) -> ExitCode {
    let args_profile = args.profile.clone();
    match rds_auth_proxy::app::print_token(&args).await {
        Ok(token) => {
            // The one place a token is meant to be shown: the user asked for it.
            println!("{}", token.expose());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rds-auth-proxy: {}", rds_auth_proxy::errors::display_chain(&*e));
            let credentials = e.is::<rds_auth_proxy::auth::CredentialsError>()
                || matches!(e.downcast_ref::<rds_auth_proxy::auth::AuthError>(), Some(rds_auth_proxy::auth::AuthError::Credentials(_)));
            if credentials {
                eprintln!("  hint: {}", rds_auth_proxy::auth::credentials::fix_for(&*e, args_profile.as_deref()));
            }
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn report(result: Result<u8, Box<dyn std::error::Error + Send + Sync>>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rds-auth-proxy: {}", rds_auth_proxy::errors::display_chain(&*e));
            ExitCode::from(exit_code(&*e))
        }
    }
}

/// The same mistake gets the same code whichever command made it: a flag the user can fix
/// (a port in use, an invalid value) is a configuration error.
fn exit_code(e: &(dyn std::error::Error + 'static)) -> u8 {
    use rds_auth_proxy::app::AppError;
    use rds_auth_proxy::auth::PasswordError;
    use rds_auth_proxy::listener::ListenError;
    let config_error = e.is::<ListenError>()
        || e.is::<rds_auth_proxy::config::ConfigError>()
        || e.is::<clap::Error>()
        || e.is::<rds_auth_proxy::http::HttpError>()
        || matches!(e.downcast_ref::<AppError>(), Some(AppError::Listen(_) | AppError::NoRegion | AppError::Http(_) | AppError::LocalTls(_)))
        || matches!(
            e.downcast_ref::<AppError>(),
            Some(AppError::TwoPasswordsForUser(_) | AppError::PasswordUser(PasswordError::NoUser { .. } | PasswordError::WrongUser { .. }))
        );
    if config_error {
        EXIT_CONFIG
    } else {
        EXIT_RUNTIME
    }
}

/// Ctrl-C (Ctrl-Break, a console close) where there are no Unix signals: the exit code of SIGINT.
#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = u8> {
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received, shutting down (again to exit at once)");
        EXIT_SIGINT
    }
}

/// Resolves on SIGINT or SIGTERM with the conventional exit code (128 + signal number). The
/// handlers are installed right away, not at the first poll: a signal that arrives between the
/// ready line and the first poll must still mean a clean shutdown, not the default death.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = u8> {
    use tokio::signal::unix::{signal, SignalKind};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = int.recv() => { tracing::info!("SIGINT received, shutting down (again to exit at once)"); EXIT_SIGINT }
                _ = term.recv() => { tracing::info!("SIGTERM received, shutting down"); EXIT_SIGTERM }
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                130
            }
        }
    }
}

fn init_logging(args: &LogArgs) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    // Audit lines (one per connection at open and close) stay on with --quiet.
    let default = if args.quiet { "warn,audit=info" } else { "info" };
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // The SigV4 signer traces what it signs (access key id, canonical requests with the
    // presigned query): that never reaches our logs, whatever RUST_LOG asks for. The credential
    // chain's own warning repeats what our one start-up line (and each failed login) says.
    for directive in ["aws_sigv4=warn", "aws_credential_types=warn", "aws_config::meta::credentials::chain=error"] {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .with_target(false);
    // A global cap on top of RUST_LOG, which no directive (however specific) can lift.
    let cap = tracing_subscriber::filter::filter_fn(|meta| !leaks_secrets_at(meta));
    match args.log_format {
        // Escaped fields: a client's user name or a server's error text cannot forge a line.
        LogFormat::Text => builder
            .fmt_fields(rds_auth_proxy::logfmt::EscapedFields)
            .finish()
            .with(cap)
            .init(),
        LogFormat::Json => builder.json().finish().with(cap).init(),
    }
}

/// Crates whose detailed output carries secrets, and the most detail allowed from each. The
/// AWS SDK prints resolved identities (access key id) and endpoint parameters at debug, signed
/// HTTP requests and response bodies (StartSession/ResumeSession `TokenValue`, `StreamUrl`)
/// at trace; hyper and h2 can print raw messages at trace; tungstenite prints every WebSocket
/// frame (the OpenDataChannel frame carries the stream token) and the upgrade request.
const SECRET_PRONE_TARGETS: &[(&str, tracing::Level)] = &[
    ("aws_smithy_", tracing::Level::INFO),
    ("aws_sdk_", tracing::Level::INFO),
    ("aws_runtime", tracing::Level::INFO),
    ("aws_config", tracing::Level::INFO),
    ("aws_sigv4", tracing::Level::WARN),
    ("aws_credential_types", tracing::Level::WARN),
    ("hyper", tracing::Level::DEBUG),
    ("h2", tracing::Level::DEBUG),
    ("tungstenite", tracing::Level::DEBUG),
    ("tokio_tungstenite", tracing::Level::DEBUG),
];

/// Whether an event or span is more detailed than [`SECRET_PRONE_TARGETS`] allows for its
/// crate: those caps hold whatever RUST_LOG says.
fn leaks_secrets_at(meta: &tracing::Metadata<'_>) -> bool {
    SECRET_PRONE_TARGETS
        .iter()
        .any(|(prefix, max)| meta.target().starts_with(prefix) && meta.level() > max)
}

/// Colour only for a person at a terminal, and never when NO_COLOR is set to anything but ""
/// (<https://no-color.org>): log files and pipes get plain text.
fn use_colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::use_colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some("".into())));
    }
}
