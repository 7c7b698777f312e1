#![forbid(unsafe_code)]
//! The binary: parse the command line, set up logging, run, and map the outcome to an exit code
//! (0 ok, 1 runtime error, 2 configuration error, 130 SIGINT, 143 SIGTERM).

use std::process::ExitCode;

use clap::Parser;
use rds_auth_proxy::app::{Credentials, Proxy};
use rds_auth_proxy::cli::{Cli, Command, LogArgs, LogFormat};
use rds_auth_proxy::config::Config;

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    rds_auth_proxy::tls::install_default_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rds-auth-proxy: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        None => run_proxy(&cli.proxy).await,
        Some(Command::Token(args)) => token(args).await,
        Some(Command::Sim(args)) => report(rds_auth_proxy::sim::runner::run_sim(args, shutdown_signal()).await),
        Some(Command::Demo(args)) => report(rds_auth_proxy::sim::runner::run_demo(args, shutdown_signal()).await),
        Some(Command::Doctor(args)) => doctor(args).await,
    }
}

async fn run_proxy(args: &rds_auth_proxy::cli::ProxyArgs) -> ExitCode {
    // --db-instance/--db-cluster and --ssm-target auto become --target and a node id first.
    let mut args = args.clone();
    let resolved = match rds_auth_proxy::lookup::resolve_args(&mut args, &Credentials::Chain).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rds-auth-proxy: {e}\n  hint: {}", e.hint());
            return ExitCode::from(if e.is_input_error() { EXIT_CONFIG } else { EXIT_RUNTIME });
        }
    };
    let args = &args;
    let config = match Config::from_args(args) {
        Ok(mut c) => {
            c.dbi_resource_id = resolved.db.and_then(|d| d.description.resource_id);
            c
        }
        Err(e) => {
            eprintln!("rds-auth-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let proxy = match Proxy::bind(&config, Credentials::Chain).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rds-auth-proxy: {}", rds_auth_proxy::session::display_chain(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Concurrently with serving: the chain may try the instance metadata service for a while.
    tokio::spawn({
        let ctx = proxy.ctx.clone();
        let profile = config.profile.clone();
        async move { rds_auth_proxy::app::report_credentials(&ctx, profile.as_deref()).await }
    });
    let stop = shutdown_signal();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let signal = async move {
        let code = stop.await;
        let _ = tx.send(code);
    };
    proxy.run(signal).await;
    tracing::info!("stopped");
    ExitCode::from(rx.await.unwrap_or(0))
}

async fn doctor(args: rds_auth_proxy::cli::DoctorArgs) -> ExitCode {
    if args.proxy.db_user.is_none() {
        eprintln!("rds-auth-proxy doctor: --db-user is required: the database user to log in as, e.g. --db-user db_user");
        return ExitCode::from(EXIT_CONFIG);
    }
    let report = rds_auth_proxy::doctor::run(&args.proxy, &args.dbname, Credentials::Chain, |step| {
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
            eprintln!("rds-auth-proxy: {}", rds_auth_proxy::session::display_chain(&*e));
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
            eprintln!("rds-auth-proxy: {}", rds_auth_proxy::session::display_chain(&*e));
            ExitCode::from(exit_code(&*e))
        }
    }
}

/// The same mistake gets the same code whichever command made it: a flag the user can fix
/// (a port in use, an invalid value) is a configuration error.
fn exit_code(e: &(dyn std::error::Error + 'static)) -> u8 {
    use rds_auth_proxy::app::AppError;
    use rds_auth_proxy::listener::ListenError;
    let config_error = e.is::<ListenError>()
        || e.is::<rds_auth_proxy::config::ConfigError>()
        || e.is::<clap::Error>()
        || matches!(e.downcast_ref::<AppError>(), Some(AppError::Listen(_) | AppError::NoRegion));
    if config_error {
        EXIT_CONFIG
    } else {
        EXIT_RUNTIME
    }
}

/// Resolves on SIGINT or SIGTERM with the conventional exit code (128 + signal number). The
/// handlers are installed right away, not at the first poll: a signal that arrives between the
/// ready line and the first poll must still mean a clean shutdown, not the default death.
fn shutdown_signal() -> impl std::future::Future<Output = u8> {
    use tokio::signal::unix::{signal, SignalKind};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = int.recv() => { tracing::info!("SIGINT received, shutting down"); 130 }
                _ = term.recv() => { tracing::info!("SIGTERM received, shutting down"); 143 }
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
    let default = if args.quiet { "warn" } else { "info" };
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
        LogFormat::Text => builder.finish().with(cap).init(),
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
