//! Tunnel throughput benchmark (not a test): bulk COPY through `--via ssm` against the local
//! simulator, in one process, with every figure measured side by side in alternating rounds. The
//! machines here are noisy and shared, so only same-run medians and ratios mean anything; nothing
//! is asserted about timings. Every transfer's byte count is checked, and one transfer per
//! configuration is checked byte for byte (SHA-256), so a broken tunnel aborts the run instead of
//! producing a fast number.
//!
//! 1. Caps off (simulated agent: 65536-byte Output payloads, no pacing): COPY FROM STDIN and
//!    COPY TO STDOUT of SIZE_MIB through `--via ssm --ssm-max-payload 32768` vs `--via direct`
//!    to the same simulated RDS front, plus `--via ssm` with 1024-byte payloads both ways (the
//!    proxy's default and AWS's agent size, still unpaced). Goal: ssm ≥ 0.5× direct.
//! 2. AWS-like caps (1024-byte Output payloads, 1 ms pacing after each, default proxy flags):
//!    aggregate COPY TO of CAPPED_MIB per connection over 1, 2, 4 and 8 parallel connections,
//!    sharing one SSM session (`--ssm-sessions 1`) and spread over one session per connection
//!    (`--ssm-sessions N`). Goal: near-linear growth with sessions, about flat with one.
//!
//! Every proxy runs in-process on 127.0.0.1:0 (as the integration tests start it), clients use
//! tokio-postgres without TLS to the proxy, and TLS plus the IAM check happen between the proxy
//! (or the simulated agent) and the RDS front, as in production. The simulator's agent runs in
//! this process too, so on `--via ssm` its CPU is counted against the tunnel: on a 2-core machine
//! that is part of what the ratio measures.
//!
//! ```text
//! cargo bench --bench tunnel                              # ROUNDS=3 SIZE_MIB=64 CAPPED_MIB=1
//! ROUNDS=5 SIZE_MIB=128 CAPPED_MIB=4 cargo bench --bench tunnel
//! ```
//!
//! MB/s is 10^6 bytes per second. Progress goes to stderr, the summary to stdout; RUST_LOG turns
//! on the proxy's and the simulator's logs.
//!
//! The peer client product.md §6 names, the `aws-ssm-bridge` crate (0.6), is not measured. It
//! can be pointed at the simulator (an `SdkConfig` endpoint override, and
//! `EndpointPolicy::AllowAny` for the `ws://` data channel), but its port forward evicts a
//! stream whose reader falls 256 smux frames behind: against the unpaced agent that cut every
//! 64 MiB COPY TO at 32 KiB payloads, and at 1 KiB it ran into far more agent resends than ours.
//! A peer figure that fails most runs is no comparison.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, TryStreamExt};
use sha2::{Digest, Sha256};

use rds_auth_proxy::app::{AwsSetup, Credentials, Proxy};
use rds_auth_proxy::cli::Cli;
use rds_auth_proxy::config::Config;
use rds_auth_proxy::sim::postgres::DB_USER;
use rds_auth_proxy::sim::runner::{SIM_DB_PORT, SIM_ENDPOINT};
use rds_auth_proxy::sim::{SimOptions, Simulator};

const MIB: usize = 1024 * 1024;
/// Every generated line is this long, newline included, so rows × LINE = bytes.
const LINE: usize = 100;
/// COPY FROM sends the data in pieces this big, as a client streaming a file would.
const SEND_CHUNK: usize = 256 * 1024;
/// Sim Output payload cap for "caps off": well above anything the proxy's reads produce.
const UNCAPPED_PAYLOAD: usize = 65_536;
/// Client payload for "caps off" (`--ssm-max-payload`).
const BIG_CLIENT_PAYLOAD: usize = 32_768;
/// AWS's payload size on both sides, and the proxy's default.
const AWS_PAYLOAD: usize = 1024;
/// The agent's pause after each Output message in AWS-like mode.
const AWS_PACING: Duration = Duration::from_millis(1);
/// Parallel connections for the capped section.
const PARALLEL: [usize; 4] = [1, 2, 4, 8];

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    // Quiet by default (the proxy's per-connection logs would drown the figures); RUST_LOG
    // turns the proxy's and the simulator's logs on for a failing run.
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    // Two workers for two cores: the proxy, the simulator and the clients share them, as the
    // product shares a laptop's cores with psql.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    runtime.block_on(run(settings))
}

/// What to run, from the environment.
struct Settings {
    /// Alternating rounds per figure; the summary shows the median.
    rounds: usize,
    /// Bytes per COPY in the caps-off section.
    size: usize,
    /// Bytes per connection in the capped section (paced to ~1 MB/s per session, so small).
    capped_size: usize,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        Ok(Settings {
            rounds: env_number("ROUNDS", 3)?,
            size: env_number("SIZE_MIB", 64)? * MIB,
            capped_size: env_number("CAPPED_MIB", 1)? * MIB,
        })
    }
}

fn env_number(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(text) => {
            let n: usize = text
                .trim()
                .parse()
                .with_context(|| format!("{name}={text:?} is not a whole number"))?;
            ensure!(n > 0, "{name} must be at least 1");
            Ok(n)
        }
        Err(_) => Ok(default),
    }
}

async fn run(settings: Settings) -> Result<()> {
    rds_auth_proxy::tls::install_default_provider();
    let started = Instant::now();
    let sim = Simulator::start(SimOptions {
        pg_extra_conf: vec![
            // Keep the source tables in PostgreSQL's buffers, so the server side costs the same
            // small amount on every path and the tunnel is what differs.
            "shared_buffers = 256MB".to_owned(),
            // A COPY TO must return the table in one order to be checked by hash: with
            // synchronised scans, one that starts while another scan of the table still runs
            // (say, a backend whose client just went away) joins it midway and wraps around.
            "synchronize_seqscans = off".to_owned(),
        ],
        ..SimOptions::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("the simulator did not start: {e}"))?;

    eprintln!(
        "tunnel bench: rounds={} size={} MiB capped={} MiB per connection",
        settings.rounds,
        settings.size / MIB,
        settings.capped_size / MIB
    );
    let data = Payload::new(1, settings.size);
    let capped = Payload::new(2, settings.capped_size);

    // PostgreSQL 15 no longer lets every role create tables in `public`; the bench's own
    // throwaway cluster can simply grant it.
    sim.postgres
        .psql(
            sim.postgres.superuser(),
            &format!("GRANT CREATE ON SCHEMA public TO {DB_USER}"),
        )
        .await
        .context("cannot grant the bench role CREATE on schema public")?;
    // Tables are loaded over a direct proxy (untimed): `src` for COPY TO, `sink` for COPY FROM.
    let direct = BenchProxy::start(
        "direct",
        &direct_args(&sim),
        Credentials::Fixed(sim.aws_credentials()),
    )
    .await?;
    {
        let client = direct.connect().await?;
        client
            .batch_execute(
                "CREATE UNLOGGED TABLE src (line text);
                 CREATE UNLOGGED TABLE capped (line text);
                 CREATE UNLOGGED TABLE sink (line text);",
            )
            .await
            .context("cannot create the bench tables")?;
        load(&client, "src", &data).await?;
        load(&client, "capped", &capped).await?;
        // Set hint bits now, so no timed COPY TO pays for the first read of fresh rows.
        for table in ["src", "capped"] {
            client
                .batch_execute(&format!("VACUUM {table}"))
                .await
                .with_context(|| format!("cannot vacuum {table}"))?;
        }
    }

    let caps_off = caps_off(&sim, &settings, direct, &data).await?;
    let capped = capped_scaling(&sim, &settings, &capped).await?;

    print_summary(&settings, &caps_off, &capped, started.elapsed());
    sim.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Section 1: caps off

/// One way to reach the simulated RDS front, and the agent payload cap it is measured with.
struct Route {
    /// What the summary calls it.
    description: String,
    proxy: BenchProxy,
    /// The simulator's Output payload cap while this route is measured (a live knob, set before
    /// each transfer, so all routes share one simulator and one PostgreSQL).
    sim_payload_cap: usize,
}

/// Results per route, in route order (see [`CapsOff::DIRECT`] and friends).
struct CapsOff {
    descriptions: Vec<String>,
    copy_from: Vec<Figure>,
    copy_to: Vec<Figure>,
}

impl CapsOff {
    const DIRECT: usize = 0;
    /// `--via ssm --ssm-max-payload 32768`, agent cap 65536: the route the 0.5x goal is about.
    const SSM_BIG: usize = 1;
    /// `--via ssm` with 1024-byte payloads both ways, unpaced.
    const SSM_AWS: usize = 2;
}

/// The timed transfers of one route in one direction.
#[derive(Default)]
struct Figure {
    rates: Vec<f64>,
    /// Messages the simulated agent sent again while these transfers ran (counted over all
    /// sessions): a slow figure next to a resend storm has its explanation beside it.
    resends: u64,
}

impl Figure {
    fn median(&self) -> f64 {
        median(&self.rates)
    }
}

async fn caps_off(
    sim: &Simulator,
    settings: &Settings,
    direct: BenchProxy,
    data: &Payload,
) -> Result<CapsOff> {
    set_caps(sim, UNCAPPED_PAYLOAD, None);
    let big = BIG_CLIENT_PAYLOAD.to_string();
    let routes = [
        Route {
            description: "--via direct".to_owned(),
            proxy: direct,
            sim_payload_cap: UNCAPPED_PAYLOAD,
        },
        Route {
            description: format!("--via ssm --ssm-max-payload {BIG_CLIENT_PAYLOAD}"),
            proxy: BenchProxy::start_ssm("ssm 32 KiB", sim, &["--ssm-max-payload".into(), big])
                .await?,
            sim_payload_cap: UNCAPPED_PAYLOAD,
        },
        Route {
            description: format!("--via ssm, {AWS_PAYLOAD} B both ways (defaults)"),
            proxy: BenchProxy::start_ssm("ssm 1 KiB", sim, &[]).await?,
            sim_payload_cap: AWS_PAYLOAD,
        },
    ];

    // Warm-up, untimed: opens the SSM sessions, warms caches, and checks every route byte for
    // byte both ways (hashing in a timed run would slow the faster path more).
    for route in &routes {
        set_caps(sim, route.sim_payload_cap, None);
        verify_route(route, data)
            .await
            .with_context(|| format!("{}: warm-up", route.proxy.label))?;
        eprintln!(
            "warm-up {:<11} COPY FROM and COPY TO verified (sha256)",
            route.proxy.label
        );
    }

    let mut from: Vec<Figure> = routes.iter().map(|_| Figure::default()).collect();
    let mut to: Vec<Figure> = routes.iter().map(|_| Figure::default()).collect();
    for round in 1..=settings.rounds {
        for (i, route) in routes.iter().enumerate() {
            set_caps(sim, route.sim_payload_cap, None);
            let resends = agent_resends(sim);
            let client = route.proxy.connect().await?;
            let took = copy_in(&client, data)
                .await
                .with_context(|| format!("{}: round {round} COPY FROM", route.proxy.label))?;
            let resends = agent_resends(sim) - resends;
            let rate = mb_per_s(data.bytes.len(), took);
            eprintln!(
                "round {round} caps off  COPY FROM {:<11} {rate:8.1} MB/s ({:.2} s){}",
                route.proxy.label,
                took.as_secs_f64(),
                resend_note(resends)
            );
            from[i].rates.push(rate);
            from[i].resends += resends;
        }
        for (i, route) in routes.iter().enumerate() {
            set_caps(sim, route.sim_payload_cap, None);
            let resends = agent_resends(sim);
            let client = route.proxy.connect().await?;
            let (took, _) = copy_out(&client, "src", data.bytes.len(), false)
                .await
                .with_context(|| format!("{}: round {round} COPY TO", route.proxy.label))?;
            let resends = agent_resends(sim) - resends;
            let rate = mb_per_s(data.bytes.len(), took);
            eprintln!(
                "round {round} caps off  COPY TO   {:<11} {rate:8.1} MB/s ({:.2} s){}",
                route.proxy.label,
                took.as_secs_f64(),
                resend_note(resends)
            );
            to[i].rates.push(rate);
            to[i].resends += resends;
        }
    }

    let descriptions = routes.iter().map(|r| r.description.clone()).collect();
    for route in routes {
        route.proxy.stop().await;
    }
    Ok(CapsOff {
        descriptions,
        copy_from: from,
        copy_to: to,
    })
}

/// One COPY FROM and one COPY TO of `data` over `route`, each checked by SHA-256.
async fn verify_route(route: &Route, data: &Payload) -> Result<()> {
    let client = route.proxy.connect().await?;
    copy_in(&client, data).await?;
    let (sent, stored) = (data.sha256.as_str(), sink_sha256(&client).await?);
    ensure!(
        sent == stored,
        "COPY FROM stored different bytes (sha256 {stored}, sent {sent})"
    );
    let (_, received) = copy_out(&client, "src", data.bytes.len(), true).await?;
    ensure!(
        received.as_deref() == Some(sent),
        "COPY TO returned different bytes (sha256 {received:?}, expected {sent})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Section 2: AWS-like caps, parallel connections

/// Median aggregate MB/s per entry of [`PARALLEL`], and the SSM sessions each proxy opened
/// (read from the simulator, so a proxy that ignored `--ssm-sessions` shows here).
struct Capped {
    one_session: Vec<f64>,
    per_connection: Vec<f64>,
    /// Sessions the `--ssm-sessions 1` proxy opened for the largest parallelism.
    single_sessions: u64,
    /// Sessions the `--ssm-sessions N` proxy opened for N connections (N = 1: the single proxy).
    sessions_used: Vec<u64>,
}

async fn capped_scaling(sim: &Simulator, settings: &Settings, data: &Payload) -> Result<Capped> {
    set_caps(sim, AWS_PAYLOAD, Some(AWS_PACING));
    let max_parallel = PARALLEL[PARALLEL.len() - 1];
    // One proxy limited to one session serves every parallelism; one proxy per N > 1 with
    // `--ssm-sessions N`. (N = 1 with one session is the same configuration, measured once.)
    let single =
        BenchProxy::start_ssm("1 session", sim, &["--ssm-sessions".into(), "1".into()]).await?;
    let single_sessions = sessions_for(sim, &single, max_parallel).await?;
    let mut sessions_used = vec![single_sessions];
    let mut spread = Vec::new();
    for &n in &PARALLEL[1..] {
        let proxy =
            BenchProxy::start_ssm("N sessions", sim, &["--ssm-sessions".into(), n.to_string()])
                .await?;
        sessions_used.push(sessions_for(sim, &proxy, n).await?);
        spread.push(proxy);
    }

    let mut one: Vec<Vec<f64>> = vec![Vec::new(); PARALLEL.len()];
    let mut many: Vec<Vec<f64>> = vec![Vec::new(); PARALLEL.len()];
    for round in 1..=settings.rounds {
        // Hash one stream per configuration, in the first round: at ~1 MB/s it costs nothing.
        let verify = round == 1;
        for (i, &n) in PARALLEL.iter().enumerate() {
            let rate = parallel_copy_out(&single, n, data, verify).await?;
            eprintln!("round {round} capped    COPY TO x{n} over 1 session  {rate:6.2} MB/s");
            one[i].push(rate);
            if i == 0 {
                many[i].push(rate);
                continue;
            }
            let rate = parallel_copy_out(&spread[i - 1], n, data, verify).await?;
            eprintln!("round {round} capped    COPY TO x{n} over {n} sessions {rate:6.2} MB/s");
            many[i].push(rate);
        }
    }

    single.stop().await;
    for proxy in spread {
        proxy.stop().await;
    }
    set_caps(sim, UNCAPPED_PAYLOAD, None);
    Ok(Capped {
        one_session: one.iter().map(|v| median(v)).collect(),
        per_connection: many.iter().map(|v| median(v)).collect(),
        single_sessions,
        sessions_used,
    })
}

/// Opens `n` connections at once through a fresh proxy, so it opens the sessions it will use
/// before anything is timed, and returns how many SSM sessions that started.
async fn sessions_for(sim: &Simulator, proxy: &BenchProxy, n: usize) -> Result<u64> {
    let before = sessions_started(sim);
    let clients = futures_util::future::try_join_all((0..n).map(|_| async {
        let client = proxy.connect().await?;
        client
            .simple_query("SELECT 1")
            .await
            .context("warm-up query")?;
        Ok::<_, anyhow::Error>(client)
    }))
    .await?;
    drop(clients);
    Ok(sessions_started(sim) - before)
}

fn agent_resends(sim: &Simulator) -> u64 {
    sim.ssm
        .stats()
        .resends
        .load(std::sync::atomic::Ordering::SeqCst)
}

fn resend_note(resends: u64) -> String {
    if resends == 0 {
        String::new()
    } else {
        format!("  [agent resends meanwhile: {resends}]")
    }
}

fn sessions_started(sim: &Simulator) -> u64 {
    sim.ssm
        .stats()
        .sessions_started
        .load(std::sync::atomic::Ordering::SeqCst)
}

/// `n` concurrent COPY TO of the `capped` table; returns aggregate MB/s. Connections are opened
/// before the clock starts: the figure is transfer throughput, not session setup.
async fn parallel_copy_out(
    proxy: &BenchProxy,
    n: usize,
    data: &Payload,
    verify: bool,
) -> Result<f64> {
    let clients = futures_util::future::try_join_all((0..n).map(|_| proxy.connect())).await?;
    let expected = data.bytes.len();
    let start = Instant::now();
    let transfers = clients.iter().enumerate().map(|(i, client)| async move {
        let hash = verify && i == 0;
        let (_, sha) = copy_out(client, "capped", expected, hash).await?;
        if let Some(sha) = sha {
            ensure!(
                sha == data.sha256,
                "{}: capped COPY TO returned different bytes (sha256 {sha}, expected {})",
                proxy.label,
                data.sha256
            );
        }
        Ok(())
    });
    futures_util::future::try_join_all(transfers).await?;
    Ok(mb_per_s(expected * n, start.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// Transfers

/// Generated table contents: 100-byte lines of letters, and their SHA-256.
struct Payload {
    bytes: Bytes,
    sha256: String,
}

impl Payload {
    fn new(seed: u64, len: usize) -> Payload {
        let mut out = Vec::with_capacity(len);
        let mut x = seed.max(1);
        while out.len() + LINE <= len {
            for _ in 0..LINE - 1 {
                // xorshift: cheap, and letters compress nowhere, so no layer can cheat.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push(b'a' + (x % 26) as u8);
            }
            out.push(b'\n');
        }
        let sha256 = hex::encode(Sha256::digest(&out));
        Payload {
            bytes: Bytes::from(out),
            sha256,
        }
    }

    fn rows(&self) -> u64 {
        (self.bytes.len() / LINE) as u64
    }
}

/// Fills `table` (untimed setup).
async fn load(client: &tokio_postgres::Client, table: &str, data: &Payload) -> Result<()> {
    let sink = client
        .copy_in(&format!("COPY {table} FROM STDIN"))
        .await
        .with_context(|| format!("COPY {table} FROM STDIN"))?;
    futures_util::pin_mut!(sink);
    for start in (0..data.bytes.len()).step_by(SEND_CHUNK) {
        let end = (start + SEND_CHUNK).min(data.bytes.len());
        sink.send(data.bytes.slice(start..end))
            .await
            .context("loading a bench table")?;
    }
    let rows = sink.finish().await.context("loading a bench table")?;
    ensure!(
        rows == data.rows(),
        "{table}: loaded {rows} rows, expected {}",
        data.rows()
    );
    Ok(())
}

/// Times one COPY FROM STDIN of `data` into the emptied `sink` table and checks what arrived.
async fn copy_in(client: &tokio_postgres::Client, data: &Payload) -> Result<Duration> {
    client
        .batch_execute("TRUNCATE sink")
        .await
        .context("TRUNCATE sink")?;
    let start = Instant::now();
    let sink = client
        .copy_in("COPY sink FROM STDIN")
        .await
        .context("COPY sink FROM STDIN")?;
    futures_util::pin_mut!(sink);
    for from in (0..data.bytes.len()).step_by(SEND_CHUNK) {
        let to = (from + SEND_CHUNK).min(data.bytes.len());
        sink.send(data.bytes.slice(from..to))
            .await
            .context("COPY FROM: sending data")?;
    }
    let rows = sink.finish().await.context("COPY FROM: finishing")?;
    let took = start.elapsed();
    ensure!(
        rows == data.rows(),
        "COPY FROM stored {rows} rows, expected {}",
        data.rows()
    );
    let stored: i64 = client
        .query_one(
            "SELECT coalesce(sum(octet_length(line) + 1), 0)::int8 FROM sink",
            &[],
        )
        .await
        .context("counting stored bytes")?
        .get(0);
    ensure!(
        stored as usize == data.bytes.len(),
        "COPY FROM stored {stored} bytes, sent {}",
        data.bytes.len()
    );
    Ok(took)
}

/// SHA-256 of what the `sink` table holds, as the COPY text it came from (rows in the order a
/// single COPY into a truncated table wrote them).
async fn sink_sha256(client: &tokio_postgres::Client) -> Result<String> {
    let row = client
        .query_one(
            "SELECT encode(sha256(convert_to(string_agg(line || E'\\n', '' ORDER BY ctid), 'UTF8')), 'hex') FROM sink",
            &[],
        )
        .await
        .context("hashing the sink table")?;
    Ok(row.get(0))
}

/// Times one COPY TO STDOUT of `table`, checks the byte count, and hashes the stream if asked.
async fn copy_out(
    client: &tokio_postgres::Client,
    table: &str,
    expected: usize,
    hash: bool,
) -> Result<(Duration, Option<String>)> {
    let start = Instant::now();
    let stream = client
        .copy_out(&format!("COPY {table} TO STDOUT"))
        .await
        .with_context(|| format!("COPY {table} TO STDOUT"))?;
    futures_util::pin_mut!(stream);
    let mut hasher = hash.then(Sha256::new);
    let mut received = 0usize;
    while let Some(chunk) = stream.try_next().await.context("COPY TO: receiving data")? {
        received += chunk.len();
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
    }
    let took = start.elapsed();
    ensure!(
        received == expected,
        "COPY {table} TO returned {received} bytes, expected {expected}"
    );
    Ok((took, hasher.map(|h| hex::encode(h.finalize()))))
}

// ---------------------------------------------------------------------------------------------
// Proxies and the simulator

/// An in-process proxy on 127.0.0.1:0 with its own shutdown.
struct BenchProxy {
    label: &'static str,
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl BenchProxy {
    async fn start(
        label: &'static str,
        args: &[String],
        credentials: Credentials,
    ) -> Result<BenchProxy> {
        let mut argv = vec!["rds-auth-proxy".to_owned()];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).with_context(|| format!("{label}: proxy flags"))?;
        let config =
            Config::from_args(&cli.proxy).with_context(|| format!("{label}: proxy config"))?;
        let proxy = Proxy::bind(&config, credentials)
            .await
            .with_context(|| format!("{label}: the proxy did not start"))?;
        let addr = proxy.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async move {
            let _ = stopped.await;
        }));
        Ok(BenchProxy {
            label,
            addr,
            stop,
            task,
        })
    }

    /// A `--via ssm` proxy whose SSM client talks to the simulator, with `extra` flags.
    async fn start_ssm(
        label: &'static str,
        sim: &Simulator,
        extra: &[String],
    ) -> Result<BenchProxy> {
        let mut args = ssm_args(sim);
        args.extend_from_slice(extra);
        let setup = AwsSetup {
            credentials: sim.aws_credentials(),
            ssm_endpoint: Some(sim.ssm.endpoint_url()),
        secrets_endpoint: Some(sim.secrets.endpoint_url()),
        };
        BenchProxy::start(label, &args, Credentials::FixedWith(setup)).await
    }

    async fn connect(&self) -> Result<tokio_postgres::Client> {
        let conn = format!(
            "host={} port={} user={DB_USER} dbname=postgres connect_timeout=30",
            self.addr.ip(),
            self.addr.port()
        );
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("{}: cannot connect through the proxy", self.label))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn direct_args(sim: &Simulator) -> Vec<String> {
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

fn ssm_args(sim: &Simulator) -> Vec<String> {
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

/// Sets the simulated agent's Output payload cap and pacing; running sessions pick it up at
/// their next message.
fn set_caps(sim: &Simulator, payload_cap: usize, pacing: Option<Duration>) {
    sim.ssm.options().update(|o| {
        o.payload_cap = payload_cap;
        o.pacing = pacing;
    });
}

// ---------------------------------------------------------------------------------------------
// Reporting

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64().max(1e-9) / 1e6
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn print_summary(settings: &Settings, caps_off: &CapsOff, capped: &Capped, took: Duration) {
    println!();
    println!(
        "tunnel throughput, median of {} rounds (MB/s = 10^6 B/s; run took {:.0} s)",
        settings.rounds,
        took.as_secs_f64()
    );
    println!();
    println!(
        "1. caps off: {} MiB per COPY; sim Output cap {UNCAPPED_PAYLOAD} B, no pacing",
        settings.size / MIB
    );
    println!("{:<50} {:>10} {:>10}", "", "COPY FROM", "COPY TO");
    let (from, to) = (&caps_off.copy_from, &caps_off.copy_to);
    for (i, description) in caps_off.descriptions.iter().enumerate() {
        println!(
            "{description:<50} {:>10.1} {:>10.1}",
            from[i].median(),
            to[i].median()
        );
    }
    let ratio = |label: &str, a: usize| {
        println!(
            "{label:<50} {:>9.2}x {:>9.2}x",
            from[a].median() / from[CapsOff::DIRECT].median(),
            to[a].median() / to[CapsOff::DIRECT].median()
        );
    };
    ratio("  ratio ssm 32 KiB / direct", CapsOff::SSM_BIG);
    ratio("  ratio ssm 1 KiB / direct", CapsOff::SSM_AWS);
    println!("  The simulated agent runs in this process: on --via ssm its CPU counts against the tunnel.");
    for (i, description) in caps_off.descriptions.iter().enumerate() {
        let (f, t) = (from[i].resends, to[i].resends);
        if f + t > 0 {
            println!("  {description}: {f} / {t} agent resends (any session) during its COPY FROM / COPY TO");
        }
    }
    println!();
    println!(
        "2. AWS-like caps: COPY TO {} MiB per connection; sim Output cap {AWS_PAYLOAD} B, {} ms pacing",
        settings.capped_size / MIB,
        AWS_PACING.as_millis()
    );
    println!(
        "{:<13} {:>16} {:>7}   {:>16} {:>7} {:>9}",
        "connections", "1 session MB/s", "scale", "N sessions MB/s", "scale", "sessions"
    );
    for (i, n) in PARALLEL.iter().enumerate() {
        println!(
            "{:<13} {:>16.2} {:>6.2}x   {:>16.2} {:>6.2}x {:>9}",
            n,
            capped.one_session[i],
            capped.one_session[i] / capped.one_session[0],
            capped.per_connection[i],
            capped.per_connection[i] / capped.per_connection[0],
            capped.sessions_used[i]
        );
    }
    let max_parallel = PARALLEL[PARALLEL.len() - 1];
    println!(
        "  sessions = SSM sessions the simulator saw the N-sessions proxy open; the 1-session proxy \
         opened {} for {max_parallel} connections. N = 1 is one run, shown in both columns.",
        capped.single_sessions
    );
    // What one session delivers, as the interval between its 1024-byte messages: the cap/pacing
    // ceiling is one per 1 ms (1.02 MB/s); a longer interval is time the agent side loses per
    // message on top of the pacing.
    let per_session = capped.one_session[0];
    println!(
        "  one session: {per_session:.2} MB/s = one {AWS_PAYLOAD} B message every {:.2} ms (pacing {} ms)",
        AWS_PAYLOAD as f64 / (per_session * 1e6) * 1e3,
        AWS_PACING.as_millis()
    );
    println!();

    // The 0.5x goal is about the uncapped (32 KiB) route.
    let ssm_from = from[CapsOff::SSM_BIG].median() / from[CapsOff::DIRECT].median();
    let ssm_to = to[CapsOff::SSM_BIG].median() / to[CapsOff::DIRECT].median();
    println!(
        "goal caps off, ssm >= 0.5x direct:  COPY FROM {ssm_from:.2}x  COPY TO {ssm_to:.2}x   ({})",
        verdict(ssm_from >= 0.5 && ssm_to >= 0.5)
    );
    // "Near-linear": every N sessions reach at least 3/4 of N times one; "about flat": one
    // session never gains more than half again, whatever the number of connections.
    let spread_ok = PARALLEL
        .iter()
        .enumerate()
        .all(|(i, &n)| capped.per_connection[i] >= 0.75 * n as f64 * capped.per_connection[0]);
    let flat_ok = capped
        .one_session
        .iter()
        .all(|&rate| rate < 1.5 * capped.one_session[0]);
    let last = PARALLEL.len() - 1;
    println!(
        "goal AWS-like caps, {max_parallel} connections: {:.2}x over {max_parallel} sessions (ideal {max_parallel}x), \
         {:.2}x over 1 session (ideal ~1x)   ({})",
        capped.per_connection[last] / capped.per_connection[0],
        capped.one_session[last] / capped.one_session[0],
        verdict(spread_ok && flat_ok)
    );
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}
