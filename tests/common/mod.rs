//! Shared test harness: a simulator (RDS front + real PostgreSQL) and an in-process proxy bound
//! to 127.0.0.1:0, wired the same way the binary wires them; [`binary`] runs the real binary.
#![allow(dead_code)]

pub mod binary;
pub mod netns;

use std::net::SocketAddr;

use rds_auth_proxy::app::{AwsSetup, Credentials, Proxy};
use rds_auth_proxy::cli::Cli;
use rds_auth_proxy::config::Config;
use rds_auth_proxy_sim::runner::{SIM_DB_PORT, SIM_ENDPOINT};
use rds_auth_proxy_sim::{SimOptions, Simulator};

use clap::Parser;

/// `sim.aws_setup()`: the simulator's credentials and endpoints as the proxy takes them (the
/// simulator crate does not know the proxy's types).
pub trait SimAwsSetup {
    fn aws_setup(&self) -> AwsSetup;
}

impl SimAwsSetup for Simulator {
    fn aws_setup(&self) -> AwsSetup {
        let aws = self.aws_endpoints();
        AwsSetup {
            credentials: aws.credentials,
            ssm_endpoint: Some(aws.ssm_endpoint),
            secrets_endpoint: Some(aws.secrets_endpoint),
            sts_endpoint: Some(aws.sts_endpoint),
            rds_endpoint: Some(aws.rds_endpoint),
            redshift_endpoint: Some(aws.redshift_endpoint),
            redshift_serverless_endpoint: Some(aws.redshift_serverless_endpoint),
            dsql_endpoint: Some(aws.dsql_endpoint),
        }
    }
}

pub struct RunningProxy {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningProxy {
    pub fn conn_string(&self, user: &str) -> String {
        format!(
            "host={} port={} user={user} dbname=postgres connect_timeout=20",
            self.addr.ip(),
            self.addr.port()
        )
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

pub async fn start_sim() -> Simulator {
    start_sim_with(SimOptions::default()).await
}

pub async fn start_sim_with(options: SimOptions) -> Simulator {
    rds_auth_proxy::tls::install_default_provider();
    Simulator::start(options).await.expect("simulator starts")
}

/// The flags that point a proxy at `sim` directly (TCP to the RDS front).
pub fn direct_args(sim: &Simulator) -> Vec<String> {
    vec![
        "--target".into(),
        format!("{SIM_ENDPOINT}:{SIM_DB_PORT}"),
        "--via".into(),
        "direct".into(),
        "--connect-addr".into(),
        sim.front_addr.to_string(),
        "--ca-bundle".into(),
        sim.ca_file.display().to_string(),
        "--port".into(),
        "0".into(),
    ]
}

/// The flags that point a proxy at `sim` through its simulated SSM service.
pub fn ssm_args(sim: &Simulator) -> Vec<String> {
    vec![
        "--target".into(),
        format!("{SIM_ENDPOINT}:{SIM_DB_PORT}"),
        "--via".into(),
        "ssm".into(),
        "--ssm-target".into(),
        sim.ssm.target_id().to_owned(),
        "--ca-bundle".into(),
        sim.ca_file.display().to_string(),
        "--port".into(),
        "0".into(),
    ]
}

/// An in-process proxy whose SSM client talks to the simulator (no environment involved).
pub async fn start_ssm_proxy(args: &[String], sim: &Simulator) -> RunningProxy {
    let setup = sim.aws_setup();
    start_proxy_with(args, Credentials::FixedWith(setup)).await
}

/// Starts an in-process proxy from command-line style arguments.
pub async fn start_proxy(args: &[String], credentials: aws_credential_types::Credentials) -> RunningProxy {
    start_proxy_with(args, Credentials::Fixed(credentials)).await
}

/// The drain tests get unless they ask for another: `stop` then waits for the open sessions to
/// end (an event), and a client a test forgot to drop costs one second, not the default ten.
pub const TEST_DRAIN_TIMEOUT: &str = "1";

pub async fn start_proxy_with(args: &[String], credentials: Credentials) -> RunningProxy {
    RunningProxy::spawn(bind_proxy_with(args, credentials).await)
}

/// A bound in-process SSM proxy, not yet running: for tests that look inside it (its
/// context, its tunnel) before [`RunningProxy::spawn`].
pub async fn bind_ssm_proxy(args: &[String], sim: &Simulator) -> Proxy {
    bind_proxy_with(args, Credentials::FixedWith(sim.aws_setup())).await
}

pub async fn bind_proxy_with(args: &[String], credentials: Credentials) -> Proxy {
    let mut argv = vec!["rds-auth-proxy".to_owned()];
    argv.extend_from_slice(args);
    if !args.iter().any(|a| a.starts_with("--drain-timeout")) {
        argv.extend(["--drain-timeout".to_owned(), TEST_DRAIN_TIMEOUT.to_owned()]);
    }
    let cli = Cli::try_parse_from(argv).expect("valid flags");
    let config = Config::from_args(&cli.proxy).expect("valid config");
    Proxy::bind(&config, credentials).await.expect("proxy binds")
}

impl RunningProxy {
    /// Runs a bound proxy until [`RunningProxy::stop`].
    pub fn spawn(proxy: Proxy) -> RunningProxy {
        let addr = proxy.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async move {
            let _ = rx.await;
        }));
        RunningProxy {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }
}

pub async fn connect(
    proxy: &RunningProxy,
    user: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&proxy.conn_string(user), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Pulls SQLSTATE and HINT out of a failed connect.
pub fn db_error(err: &tokio_postgres::Error) -> (String, String, Option<String>) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got: {err:?}"));
    (
        db.code().code().to_owned(),
        db.message().to_owned(),
        db.hint().map(str::to_owned),
    )
}

/// `len` bytes (rounded down to whole lines) of pseudo-random lowercase lines of 99 letters: a
/// varied COPY text payload that needs no escaping.
pub fn copy_lines(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed;
    while out.len() < len {
        for _ in 0..99 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push(b'a' + (x % 26) as u8);
        }
        out.push(b'\n');
    }
    out.truncate(len - len % 100);
    out
}

/// Waits until `sql` is running on the server (seen through `observer`).
pub async fn wait_until_active(observer: &tokio_postgres::Client, sql: &str) {
    let started = std::time::Instant::now();
    loop {
        let n: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[&sql],
            )
            .await
            .expect("pg_stat_activity query")
            .get(0);
        if n == 1 {
            return;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "{sql} never started");
    }
}
