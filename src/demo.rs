//! `rds-auth-proxy demo`: the simulator (the `rds_auth_proxy_sim` crate) and the proxy wired
//! together. Binary-side, because it builds a proxy: the proxy library has no simulator code and
//! the simulator does not know the proxy.

use std::future::Future;
use std::net::SocketAddr;

use clap::Parser;
use rds_auth_proxy::app::{build_context, AwsSetup, Proxy};
use rds_auth_proxy::cli::Cli;
use rds_auth_proxy::config::Config;
use rds_auth_proxy_sim::cli::DemoArgs;
use rds_auth_proxy_sim::postgres::DB_USER;
use rds_auth_proxy_sim::runner::{print_flush, SIM_DB_NAME, SIM_DB_PORT, SIM_ENDPOINT};
use rds_auth_proxy_sim::{SimOptions, Simulator};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The simulator's credentials and endpoints, as the proxy takes them.
fn aws_setup(sim: &Simulator) -> AwsSetup {
    let aws = sim.aws_endpoints();
    AwsSetup {
        credentials: aws.credentials,
        ssm_endpoint: Some(aws.ssm_endpoint),
        secrets_endpoint: Some(aws.secrets_endpoint),
        sts_endpoint: Some(aws.sts_endpoint),
        rds_endpoint: Some(aws.rds_endpoint),
        redshift_endpoint: None,
        redshift_serverless_endpoint: None,
        dsql_endpoint: None,
    }
}

/// `rds-auth-proxy demo`: simulator + proxy on 127.0.0.1:<port>.
pub async fn run_demo(args: DemoArgs, shutdown: impl Future<Output = u8>) -> Result<u8, BoxError> {
    let port = args.port.to_string();
    let target = format!("{SIM_ENDPOINT}:{SIM_DB_PORT}");
    // The port first, exactly as the proxy binds it: a port in use fails in a moment, with the
    // proxy's message and exit code, before any PostgreSQL is started.
    let listen = Config::from_args(&Cli::try_parse_from(["rds-auth-proxy", "--target", &target, "--port", &port])?.proxy)?.listen;
    let listeners = rds_auth_proxy::listener::Listeners::bind(&listen).await?;

    eprintln!("Starting the simulated SSM service, RDS (TLS + IAM check) and a throwaway PostgreSQL…");
    let sim = Simulator::start(SimOptions::default()).await?;
    let front = sim.front_addr.to_string();
    let ca = sim.ca_file.display().to_string();
    let node = sim.ssm.target_id().to_owned();
    let cli = Cli::try_parse_from([
        "rds-auth-proxy", "--target", &target, "--via", "ssm", "--ssm-target", &node,
        "--ca-bundle", &ca, "--port", &port,
    ])?;
    let config = Config::from_args(&cli.proxy)?;
    let proxy = Proxy::from_parts(listeners, build_context(&config, aws_setup(&sim).into()).await?);
    let addr = proxy.local_addr();
    print_flush(&format!(
        "\nrds-auth-proxy demo is running.\n\n\
         \x20 client ──▶ proxy {addr} ══SSM tunnel via {node} ({ssm})══▶ TLS verify-full ──▶ simulated RDS {SIM_ENDPOINT} ({front}) ──▶ PostgreSQL {pg}\n\n\
         In another terminal, connect without a password:\n\n\
         \x20   psql -h {host} -p {p} -U {DB_USER} {SIM_DB_NAME}\n\n\
         Try: SELECT current_user;   Stop the demo with Ctrl-C.\n\n",
        pg = sim.postgres.addr(),
        ssm = sim.ssm.endpoint_url(),
        host = addr.ip(),
        p = addr.port(),
    ));
    let check = tokio::spawn(demo_self_check(addr));
    let (tx, rx) = tokio::sync::oneshot::channel();
    proxy
        .run(async move {
            let _ = tx.send(shutdown.await);
        })
        .await;
    check.abort();
    sim.stop().await;
    let code = rx.await.unwrap_or(0);
    Ok(if code == 143 || code == 130 { 0 } else { code })
}

/// Shows the chain working right away: one password-less psql query through the proxy.
async fn demo_self_check(addr: SocketAddr) {
    let output = tokio::process::Command::new("psql")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-U", DB_USER, SIM_DB_NAME])
        .args(["-c", "SELECT current_user AS logged_in_as, now() - pg_postmaster_start_time() AS server_uptime"])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match output {
        Ok(out) if out.status.success() => print_flush(&format!(
            "Self-check — psql through the proxy, no password given:\n\n{}\n",
            String::from_utf8_lossy(&out.stdout)
        )),
        Ok(out) => eprintln!("demo self-check failed:\n{}", String::from_utf8_lossy(&out.stderr)),
        Err(_) => eprintln!("(psql not found: install postgresql-client to run the self-check)"),
    }
}
