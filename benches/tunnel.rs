//! Tunnel benchmark (not a test): bulk COPY and `select 1` round trips through `--via ssm`
//! against the local simulator, in one process, with every figure measured side by side in
//! alternating rounds. The machines here are noisy and shared, so only same-run medians and
//! ratios mean anything; nothing is asserted about timings. Every transfer's byte count is
//! checked, and one transfer per configuration is checked byte for byte (SHA-256), so a broken
//! tunnel aborts the run instead of producing a fast number. Under AWS-like limits the run also
//! aborts if the simulated gateway ever cuts one of our WebSockets for sending too fast.
//!
//! 1. Caps off (simulated agent: 65536-byte Output payloads, no pacing, no gateway limit):
//!    COPY FROM STDIN and COPY TO STDOUT of SIZE_MIB through
//!    `--via ssm --ssm-max-rate 0 --ssm-max-payload 32768` vs `--via direct` to the same
//!    simulated RDS front, plus `--via ssm --ssm-max-rate 0` with 1024-byte payloads both ways
//!    (AWS's message size, unpaced). `--ssm-max-rate 0` turns the proxy's pacer off: this
//!    section measures what the tunnel itself costs. Goal: ssm ≥ 0.5× direct.
//! 2. AWS-like limits, one session (the simulator's `SsmSimOptions::aws_limits()` preset:
//!    1024-byte agent payloads, 1 ms agent pacing, and a gateway that cuts a WebSocket whose
//!    client sends more than 1000 data messages/s): COPY FROM and COPY TO of CAPPED_MIB through
//!    `--via ssm --ssm-sessions 1` with the default pacing (900 messages/s), in MB/s and data
//!    messages/s (upload: the client data messages the simulated gateway received; download:
//!    the agent data messages our data channel received), with the highest client rate the
//!    gateway saw over any sliding second and its cut count (must be 0), vs `--via direct`.
//!    Reference row "plugin-like pace": the same proxy with `--ssm-max-rate 670`. This is an
//!    EMULATION of the session-manager-plugin's upload pace (it sleeps 1 ms after every message,
//!    which the issue measured at ≈ 670 messages/s on this simulator), not the plugin itself.
//!    Goal: our upload ≥ 1.3× the plugin-like pace, every client rate under 1000/s. Downloads
//!    are paced by the agent, not by the client, so the plugin-like row has no COPY TO.
//! 3. Interactive latency: a prepared `select 1` on one tokio-postgres connection, LATENCY_ITERS
//!    round trips per round, median and p99 per round trip, through `--via ssm` (default flags)
//!    vs `--via direct`; the figure is the latency ssm adds (ssm − direct). Measured twice for
//!    ssm: under the full AWS-like preset, and with the agent's 1 ms pacing off (payload cap and
//!    gateway limit kept), because the simulated agent waits 1 ms after each Output message
//!    before it sends the next, so back-to-back round trips under the preset include up to 1 ms
//!    of agent pacing that no client can avoid; the second figure is what our client adds.
//!    Reference from the issue: ours ≈ +0.22 ms over direct, AWS's plugin ≈ +1.75 ms (it sleeps
//!    1 ms after each message it sends). The proxy's token bucket allows bursts, so a round trip
//!    never waits on our pacing.
//!    3b. The same `select 1` on a second connection of a `--ssm-sessions 1` proxy while the
//!    first runs a CAPPED_MIB COPY FROM, then COPY TO, in the same session (a probe every
//!    100 ms from 1 s into the transfer): what a query waits for behind a bulk transfer it
//!    shares a session with (median and worst probe).
//! 4. Elastic pool scaling under the AWS-like preset: N = 1, 2, 4 parallel COPY TO of
//!    CAPPED_MIB each, through a fresh proxy per measurement with `--ssm-sessions 4` (the
//!    elastic pool's default upper bound) and with `--ssm-sessions 1`. The pool opens a new
//!    session only when every open one is busy (> 300 data messages/s, sampled every 500 ms) or
//!    congested, so quiet connections opened at once would all share one session by design;
//!    the COPYs are therefore started staggered: COPY 1 starts, then the bench polls the pool
//!    until at least min(running COPYs, --ssm-sessions) sessions report busy (at most 3 s),
//!    then connects and starts the next. The headline figure is the aggregate MB/s over the
//!    window in which all N run (from the last COPY's first byte to the first COPY's end,
//!    bytes received by all of them in between); total bytes / (first COPY start → last COPY
//!    end) is shown beside it. Also shown: the SSM sessions the simulator saw each proxy start,
//!    the streams per session once all N run, how long the bench waited for the pool to report
//!    busy, and how long each later COPY's connection took to log in through the tunnel (on a
//!    session busy with a download it queues behind the agent's backlog). Goal: near-linear
//!    with the elastic pool, about flat with one.
//!
//! 5. A real network (the simulator's `SsmSimOptions::real_network()` on top of the AWS-like
//!    preset: 25 ms each way, a 50 ms round trip, and the agent's 5 ms early-input window), per
//!    round: the first connection through a freshly started proxy (StartSession, the WebSocket
//!    upgrade and the handshake included), NET_CONNECTS new connections on the session that
//!    first one keeps open, and NET_SELECTS prepared `select 1` round trips on it, vs the same
//!    `select 1` through `--via direct`, which has no simulated network. Each time is also
//!    given in round trips (time / 50 ms), beside the client flights the simulated agent counted
//!    for the connection (`SsmSim::stream_flights`: how often the client waited for an answer).
//!    "Pacing must never cost latency it does not have to": a `select 1` should cost one round
//!    trip plus what it costs direct, nothing more; the row shows the excess.
//!    `SECTIONS=network` runs this section alone (a few seconds; no table is loaded). The
//!    simulator's delays sleep on tokio's millisecond timer, which fires up to 1 ms late: each
//!    crossing costs 25–26 ms, so up to 2 ms of a round trip's excess is the simulator's.
//!
//! Simulator caveat: the simulated agent's "1 ms" pacing sleeps on tokio's millisecond timer,
//! which rounds up, so one agent message takes about 2 ms: a one-session download here runs at
//! about half of what 1024 B per ms would give, and under the preset a back-to-back round trip
//! waits up to about 2 ms for the agent. Both are properties of the simulator, the same for any
//! client.
//!
//! Every proxy runs in-process on 127.0.0.1:0 (as the integration tests start it), clients use
//! tokio-postgres without TLS to the proxy, and TLS plus the IAM check happen between the proxy
//! (or the simulated agent) and the RDS front, as in production. The simulator's agent runs in
//! this process too, so on `--via ssm` its CPU is counted against the tunnel: on a 2-core machine
//! that is part of what the ratio measures.
//!
//! ```text
//! cargo bench --bench tunnel          # ROUNDS=3 SIZE_MIB=64 CAPPED_MIB=4 LATENCY_ITERS=2000
//! ROUNDS=5 SIZE_MIB=128 CAPPED_MIB=8 cargo bench --bench tunnel
//! SECTIONS=network cargo bench --bench tunnel     # section 5 only
//! ```
//!
//! MB/s is 10^6 bytes per second. Progress goes to stderr, the summary to stdout; RUST_LOG turns
//! on the proxy's and the simulator's logs.
//!
//! The headline figures are then compared with the last recorded result (benches/results.json,
//! through benches/record.py) as same-run ratios (ssm / direct, ssm / plugin-like pace, N COPYs /
//! one); `RECORD=1 cargo bench --bench tunnel` records this run's figures there.
//!
//! The peer client product.md §6 names, the `aws-ssm-bridge` crate (0.6), is not measured. It
//! can be pointed at the simulator (an `SdkConfig` endpoint override, and
//! `EndpointPolicy::AllowAny` for the `ws://` data channel), but its port forward evicts a
//! stream whose reader falls 256 smux frames behind: against the unpaced agent that cut every
//! 64 MiB COPY TO at 32 KiB payloads, and at 1 KiB it ran into far more agent resends than ours.
//! A peer figure that fails most runs is no comparison.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, TryStreamExt};
use sha2::{Digest, Sha256};

use rds_auth_proxy::app::{Credentials, Proxy};
use rds_auth_proxy::cli::Cli;
use rds_auth_proxy::config::Config;
use rds_auth_proxy_sim::postgres::DB_USER;
use rds_auth_proxy_sim::rds::PgEmulation;
use rds_auth_proxy_sim::runner::{SIM_DB_PORT, SIM_ENDPOINT};
use rds_auth_proxy_sim::ssm::{SsmSimOptions, SsmSimStats};
use rds_auth_proxy_sim::{SimOptions, Simulator};
use rds_auth_proxy::target::TargetContext;
use rds_auth_proxy::tunnel::ssm::pool::SessionLoad;
use rds_auth_proxy::tunnel::Tunnel;

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
/// `--ssm-max-rate` for the plugin-like reference: the pace the issue measured for
/// session-manager-plugin (one message, then a 1 ms sleep) on this simulator.
const PLUGIN_LIKE_RATE: u32 = 670;
/// The client data-message rate above which the simulated gateway cuts a WebSocket.
const GATEWAY_LIMIT: u64 = 1000;
/// `--ssm-sessions` of the elastic proxy in section 4 (the flag's default).
const ELASTIC_SESSIONS: usize = 4;
/// Parallel COPY TO in section 4.
const PARALLEL: [usize; 3] = [1, 2, 4];
/// Longest the bench waits for the pool to report the running COPYs' sessions busy before it
/// starts the next COPY anyway.
const BUSY_WAIT_CAP: Duration = Duration::from_secs(3);
/// How often the bench polls the pool's load while it waits.
const BUSY_POLL: Duration = Duration::from_millis(20);
/// Untimed `select 1` round trips before each timed latency run.
const LATENCY_WARMUP: usize = 100;
/// Section 5: new connections timed per round on an open session.
const NET_CONNECTS: usize = 8;
/// Section 5: prepared `select 1` round trips timed per round (after NET_WARMUP untimed ones).
const NET_SELECTS: usize = 20;
const NET_WARMUP: usize = 3;

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
    /// Bytes per COPY (per connection) under AWS-like limits (about 1 MB/s per session).
    capped_size: usize,
    /// `select 1` round trips per route and round.
    latency_iters: usize,
    /// `SECTIONS=network`: only section 5.
    only_network: bool,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        Ok(Settings {
            rounds: env_number("ROUNDS", 3)?,
            size: env_number("SIZE_MIB", 64)? * MIB,
            capped_size: env_number("CAPPED_MIB", 4)? * MIB,
            latency_iters: env_number("LATENCY_ITERS", 2000)?,
            only_network: match std::env::var("SECTIONS") {
                Err(_) => false,
                Ok(s) if s.trim() == "network" => true,
                Ok(s) if s.trim() == "all" => false,
                Ok(s) => bail!("SECTIONS={s:?}: use `network` (section 5 only) or `all`"),
            },
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

    if settings.only_network {
        let network = real_network(&sim, &settings).await?;
        print_network_summary(&settings, &network, started.elapsed());
        sim.stop().await;
        return Ok(());
    }
    eprintln!(
        "tunnel bench: rounds={} size={} MiB capped={} MiB per COPY latency={} round trips",
        settings.rounds,
        settings.size / MIB,
        settings.capped_size / MIB,
        settings.latency_iters
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
    // Tables are loaded over a direct proxy (untimed): `src` and `capped` for COPY TO, `sink`
    // for COPY FROM.
    let direct = BenchProxy::start_direct("direct", &sim).await?;
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
    let aws = aws_one_session(&sim, &settings, &capped).await?;
    let latency = latency(&sim, &settings).await?;
    let beside = beside_bulk(&sim, &settings, &capped).await?;
    let scaling = elastic_scaling(&sim, &settings, &capped).await?;
    let network = real_network(&sim, &settings).await?;

    print_summary(
        &settings,
        &caps_off,
        &aws,
        &latency,
        &beside,
        &scaling,
        started.elapsed(),
    );
    print_network_summary(&settings, &network, started.elapsed());
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
    /// `--via ssm --ssm-max-rate 0 --ssm-max-payload 32768`, agent cap 65536: the route the
    /// 0.5x goal is about.
    const SSM_BIG: usize = 1;
    /// `--via ssm --ssm-max-rate 0` with 1024-byte payloads both ways.
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
    set_caps_off(sim, UNCAPPED_PAYLOAD);
    let unpaced = ["--ssm-max-rate".to_owned(), "0".to_owned()];
    let big = [
        unpaced[0].clone(),
        unpaced[1].clone(),
        "--ssm-max-payload".to_owned(),
        BIG_CLIENT_PAYLOAD.to_string(),
    ];
    let routes = [
        Route {
            description: "--via direct".to_owned(),
            proxy: direct,
            sim_payload_cap: UNCAPPED_PAYLOAD,
        },
        Route {
            description: format!("--via ssm --ssm-max-rate 0 --ssm-max-payload {BIG_CLIENT_PAYLOAD}"),
            proxy: BenchProxy::start_ssm("ssm 32 KiB", sim, &big).await?,
            sim_payload_cap: UNCAPPED_PAYLOAD,
        },
        Route {
            description: format!("--via ssm --ssm-max-rate 0, {AWS_PAYLOAD} B both ways"),
            proxy: BenchProxy::start_ssm("ssm 1 KiB", sim, &unpaced).await?,
            sim_payload_cap: AWS_PAYLOAD,
        },
    ];

    // Warm-up, untimed: opens the SSM sessions, warms caches, and checks every route byte for
    // byte both ways (hashing in a timed run would slow the faster path more).
    for route in &routes {
        set_caps_off(sim, route.sim_payload_cap);
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
            set_caps_off(sim, route.sim_payload_cap);
            let client = route.proxy.connect().await?;
            truncate_sink(&client).await?;
            let resends = agent_resends(sim);
            let took = copy_in(&client, data)
                .await
                .with_context(|| format!("{}: round {round} COPY FROM", route.proxy.label))?;
            let resends = agent_resends(sim) - resends;
            check_sink(&client, data).await?;
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
            set_caps_off(sim, route.sim_payload_cap);
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
    truncate_sink(&client).await?;
    copy_in(&client, data).await?;
    check_sink(&client, data).await?;
    check_sink_sha256(&client, data).await?;
    let (_, received) = copy_out(&client, "src", data.bytes.len(), true).await?;
    ensure!(
        received.as_deref() == Some(data.sha256.as_str()),
        "COPY TO returned different bytes (sha256 {received:?}, expected {})",
        data.sha256
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Section 2: AWS-like limits, one session

/// One direction of one route under AWS-like limits, over the rounds.
#[derive(Default)]
struct Paced {
    rates: Vec<f64>,
    /// Data messages per second: client → gateway for COPY FROM, agent → client for COPY TO.
    msg_rates: Vec<f64>,
    /// Highest client data-message rate the simulated gateway saw over any sliding second,
    /// over all rounds (the figure the 1000/s limit applies to, in either direction).
    peak: u64,
    /// Bytes of COPY data per data message (median).
    bytes_per_msg: Vec<f64>,
}

impl Paced {
    fn median(&self) -> f64 {
        median(&self.rates)
    }
    fn msgs(&self) -> f64 {
        median(&self.msg_rates)
    }
}

/// Section 2's results.
struct AwsOneSession {
    direct_from: Paced,
    direct_to: Paced,
    ssm_from: Paced,
    ssm_to: Paced,
    plugin_like_from: Paced,
    /// Sessions the simulator saw the two `--ssm-sessions 1` proxies start (must be 2).
    sessions_started: u64,
    /// Agent resends while the section ran.
    resends: u64,
}

async fn aws_one_session(
    sim: &Simulator,
    settings: &Settings,
    data: &Payload,
) -> Result<AwsOneSession> {
    set_aws_limits(sim, true);
    let stats = sim.ssm.stats();
    let one = ["--ssm-sessions".to_owned(), "1".to_owned()];
    let plugin_args = [
        one[0].clone(),
        one[1].clone(),
        "--ssm-max-rate".to_owned(),
        PLUGIN_LIKE_RATE.to_string(),
    ];
    let sessions_before = stats.sessions_started.load(Ordering::SeqCst);
    let resends_before = agent_resends(sim);
    let direct = BenchProxy::start_direct("direct", sim).await?;
    let ssm = BenchProxy::start_ssm("ssm paced", sim, &one).await?;
    let plugin = BenchProxy::start_ssm("plugin-like", sim, &plugin_args).await?;
    // Open each proxy's session untimed.
    for proxy in [&ssm, &plugin] {
        proxy
            .connect()
            .await?
            .simple_query("SELECT 1")
            .await
            .with_context(|| format!("{}: warm-up query", proxy.label))?;
    }

    let mut out = AwsOneSession {
        direct_from: Paced::default(),
        direct_to: Paced::default(),
        ssm_from: Paced::default(),
        ssm_to: Paced::default(),
        plugin_like_from: Paced::default(),
        sessions_started: 0,
        resends: 0,
    };
    for round in 1..=settings.rounds {
        // Check one transfer per route and direction byte for byte, in the first round: at
        // about 1 MB/s hashing costs nothing.
        let verify = round == 1;
        for (proxy, figure) in [
            (&direct, &mut out.direct_from),
            (&ssm, &mut out.ssm_from),
            (&plugin, &mut out.plugin_like_from),
        ] {
            let client = proxy.connect().await?;
            truncate_sink(&client).await?;
            let sent = stats.client_data_messages.load(Ordering::SeqCst);
            let cuts = stats.rate_limit_cuts.load(Ordering::SeqCst);
            stats.reset_peak();
            let took = copy_in(&client, data)
                .await
                .with_context(|| format!("{}: round {round} capped COPY FROM", proxy.label))?;
            let msgs = stats.client_data_messages.load(Ordering::SeqCst) - sent;
            let peak = stats.peak_client_msgs_per_sec.load(Ordering::SeqCst);
            no_cuts(&stats, cuts, proxy.label, "COPY FROM")?;
            check_sink(&client, data).await?;
            if verify {
                check_sink_sha256(&client, data)
                    .await
                    .with_context(|| format!("{}: capped COPY FROM", proxy.label))?;
            }
            let rate = mb_per_s(data.bytes.len(), took);
            figure.rates.push(rate);
            if proxy.is_ssm() {
                let msg_rate = msgs as f64 / took.as_secs_f64();
                figure.msg_rates.push(msg_rate);
                figure.bytes_per_msg.push(data.bytes.len() as f64 / msgs as f64);
                figure.peak = figure.peak.max(peak);
                eprintln!(
                    "round {round} aws-like  COPY FROM {:<11} {rate:6.2} MB/s ({:.2} s) {msg_rate:5.0} msgs/s, peak {peak}/s",
                    proxy.label,
                    took.as_secs_f64()
                );
            } else {
                eprintln!(
                    "round {round} aws-like  COPY FROM {:<11} {rate:6.1} MB/s ({:.2} s)",
                    proxy.label,
                    took.as_secs_f64()
                );
            }
        }
        for (proxy, figure) in [(&direct, &mut out.direct_to), (&ssm, &mut out.ssm_to)] {
            let client = proxy.connect().await?;
            let received = proxy.messages_in();
            let cuts = stats.rate_limit_cuts.load(Ordering::SeqCst);
            stats.reset_peak();
            let (took, sha) = copy_out(&client, "capped", data.bytes.len(), verify)
                .await
                .with_context(|| format!("{}: round {round} capped COPY TO", proxy.label))?;
            let msgs = proxy.messages_in() - received;
            let peak = stats.peak_client_msgs_per_sec.load(Ordering::SeqCst);
            no_cuts(&stats, cuts, proxy.label, "COPY TO")?;
            if let Some(sha) = sha {
                ensure!(
                    sha == data.sha256,
                    "{}: capped COPY TO returned different bytes (sha256 {sha}, expected {})",
                    proxy.label,
                    data.sha256
                );
            }
            let rate = mb_per_s(data.bytes.len(), took);
            figure.rates.push(rate);
            if proxy.is_ssm() {
                let msg_rate = msgs as f64 / took.as_secs_f64();
                figure.msg_rates.push(msg_rate);
                figure.bytes_per_msg.push(data.bytes.len() as f64 / msgs as f64);
                figure.peak = figure.peak.max(peak);
                eprintln!(
                    "round {round} aws-like  COPY TO   {:<11} {rate:6.2} MB/s ({:.2} s) {msg_rate:5.0} msgs/s in, client peak {peak}/s",
                    proxy.label,
                    took.as_secs_f64()
                );
            } else {
                eprintln!(
                    "round {round} aws-like  COPY TO   {:<11} {rate:6.1} MB/s ({:.2} s)",
                    proxy.label,
                    took.as_secs_f64()
                );
            }
        }
    }
    out.sessions_started = stats.sessions_started.load(Ordering::SeqCst) - sessions_before;
    out.resends = agent_resends(sim) - resends_before;
    for proxy in [direct, ssm, plugin] {
        proxy.stop().await;
    }
    Ok(out)
}

/// Fails the run if the simulated gateway cut a WebSocket since `before`: a paced proxy must
/// never trip AWS's limit, and a figure measured across cuts and resumes would mean nothing.
fn no_cuts(stats: &SsmSimStats, before: u64, label: &str, what: &str) -> Result<()> {
    let cuts = stats.rate_limit_cuts.load(Ordering::SeqCst) - before;
    if cuts > 0 {
        bail!(
            "{label}: the simulated gateway cut our WebSocket {cuts} time(s) during {what} for \
             sending more than {GATEWAY_LIMIT} data messages/s (peak {}/s): the pacer let too \
             much through",
            stats.peak_client_msgs_per_sec.load(Ordering::SeqCst)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Section 3: interactive latency

/// Per-round median and p99 round trips of one route, in microseconds.
#[derive(Default)]
struct Latency {
    medians: Vec<f64>,
    p99s: Vec<f64>,
}

impl Latency {
    fn median(&self) -> f64 {
        median(&self.medians)
    }
    fn p99(&self) -> f64 {
        median(&self.p99s)
    }
}

/// Section 3's results.
struct Latencies {
    direct: Latency,
    /// Under the full AWS-like preset.
    ssm_aws: Latency,
    /// AWS-like preset without the agent's 1 ms pacing.
    ssm_unpaced_agent: Latency,
}

async fn latency(sim: &Simulator, settings: &Settings) -> Result<Latencies> {
    let stats = sim.ssm.stats();
    let direct = BenchProxy::start_direct("direct", sim).await?;
    let ssm = BenchProxy::start_ssm("ssm", sim, &[]).await?;
    let mut out = Latencies {
        direct: Latency::default(),
        ssm_aws: Latency::default(),
        ssm_unpaced_agent: Latency::default(),
    };
    // One connection per route for the whole section, each with its statement prepared.
    let direct_client = direct.connect().await?;
    let ssm_client = ssm.connect().await?;
    for round in 1..=settings.rounds {
        for (name, client, agent_pacing, figure) in [
            ("direct", &direct_client, true, &mut out.direct),
            ("ssm", &ssm_client, true, &mut out.ssm_aws),
            ("ssm, agent unpaced", &ssm_client, false, &mut out.ssm_unpaced_agent),
        ] {
            set_aws_limits(sim, agent_pacing);
            let cuts = stats.rate_limit_cuts.load(Ordering::SeqCst);
            stats.reset_peak();
            let times = select_one_round_trips(client, settings.latency_iters)
                .await
                .with_context(|| format!("{name}: round {round} select 1"))?;
            no_cuts(&stats, cuts, name, "select 1 round trips")?;
            let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
            eprintln!(
                "round {round} latency   select 1  {name:<19} median {p50:7.0} µs  p99 {p99:7.0} µs"
            );
            figure.medians.push(p50);
            figure.p99s.push(p99);
        }
    }
    set_aws_limits(sim, true);
    drop((direct_client, ssm_client));
    direct.stop().await;
    ssm.stop().await;
    Ok(out)
}

/// `select 1` round trips on one connection while another connection of the same SSM
/// session runs a bulk COPY: what a query waits for behind a transfer it shares a session with.
#[derive(Default)]
struct BesideBulk {
    /// Every probe's round trip in µs, over all rounds, beside a COPY FROM and a COPY TO.
    upload: Vec<f64>,
    download: Vec<f64>,
}

/// Section 3b: a `--ssm-sessions 1` proxy, two connections on its one session under the
/// AWS-like preset; one runs COPY FROM (then COPY TO) of CAPPED_MIB, the other, from 1 s into
/// the transfer until it ends, a prepared `select 1` every 100 ms (at most 50).
async fn beside_bulk(sim: &Simulator, settings: &Settings, data: &Payload) -> Result<BesideBulk> {
    set_aws_limits(sim, true);
    let stats = sim.ssm.stats();
    let proxy =
        BenchProxy::start_ssm("ssm shared", sim, &["--ssm-sessions".into(), "1".into()]).await?;
    let bulk = proxy.connect().await?;
    let probe = proxy.connect().await?;
    let statement = probe.prepare("SELECT 1").await.context("prepare")?;
    let mut out = BesideBulk::default();
    for round in 1..=settings.rounds {
        for upload in [true, false] {
            if upload {
                truncate_sink(&bulk).await?;
            }
            let cuts = stats.rate_limit_cuts.load(Ordering::SeqCst);
            let done = std::sync::atomic::AtomicBool::new(false);
            let transfer = async {
                let result = if upload {
                    copy_in(&bulk, data).await
                } else {
                    copy_out(&bulk, "capped", data.bytes.len(), false)
                        .await
                        .map(|(took, _)| took)
                };
                done.store(true, Ordering::SeqCst);
                result
            };
            let probes = async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut times = Vec::new();
                while !done.load(Ordering::SeqCst) && times.len() < 50 {
                    let start = Instant::now();
                    probe.query_one(&statement, &[]).await?;
                    times.push(start.elapsed().as_secs_f64() * 1e6);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok::<_, anyhow::Error>(times)
            };
            let (took, times) = tokio::join!(transfer, probes);
            let what = if upload { "COPY FROM" } else { "COPY TO" };
            let took = took.with_context(|| format!("shared session: round {round} {what}"))?;
            let times = times.with_context(|| format!("shared session: round {round} select 1"))?;
            no_cuts(&stats, cuts, "ssm shared", what)?;
            if upload {
                check_sink(&bulk, data).await?;
            }
            eprintln!(
                "round {round} shared    select 1 beside {what:<9} ({:.1} s): {} probes, median {:.0} µs, max {:.0} µs",
                took.as_secs_f64(),
                times.len(),
                median(&times),
                times.iter().copied().fold(f64::NAN, f64::max)
            );
            if upload {
                out.upload.extend(times);
            } else {
                out.download.extend(times);
            }
        }
    }
    drop((bulk, probe));
    proxy.stop().await;
    Ok(out)
}

/// `iters` timed executions of a prepared `select 1` (after an untimed warm-up), in µs each.
async fn select_one_round_trips(
    client: &tokio_postgres::Client,
    iters: usize,
) -> Result<Vec<f64>> {
    let statement = client.prepare("SELECT 1").await.context("prepare")?;
    for _ in 0..LATENCY_WARMUP {
        client.query_one(&statement, &[]).await.context("warm-up")?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        let row = client.query_one(&statement, &[]).await?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
        let one: i32 = row.get(0);
        ensure!(one == 1, "select 1 returned {one}");
    }
    Ok(times)
}

// ---------------------------------------------------------------------------------------------
// Section 4: elastic pool scaling

/// One staggered run of N parallel COPY TO.
struct ScaleRun {
    /// Aggregate MB/s while all N ran, or `None` when the first COPY ended before the last one
    /// received its first byte (no such window).
    window: Option<f64>,
    /// N × size / (first COPY start → last COPY end).
    span: f64,
    /// SSM sessions the simulator saw this run's fresh proxy start.
    sessions: u64,
    /// Streams per shared session when the last COPY had connected.
    streams: Vec<usize>,
    /// How long the bench waited before each COPY after the first for the pool to report
    /// busy sessions, and how many of those waits hit [`BUSY_WAIT_CAP`].
    waits: Vec<Duration>,
    timeouts: usize,
    /// How long each COPY after the first took to connect through the proxy (TLS and IAM
    /// login to the RDS front through the tunnel), in start order.
    connects: Vec<Duration>,
}

/// Section 4's results: per entry of [`PARALLEL`], every round's run.
struct Scaling {
    elastic: Vec<Vec<ScaleRun>>,
    single: Vec<Vec<ScaleRun>>,
}

async fn elastic_scaling(sim: &Simulator, settings: &Settings, data: &Payload) -> Result<Scaling> {
    set_aws_limits(sim, true);
    let mut elastic: Vec<Vec<ScaleRun>> = PARALLEL.iter().map(|_| Vec::new()).collect();
    let mut single: Vec<Vec<ScaleRun>> = PARALLEL.iter().map(|_| Vec::new()).collect();
    for round in 1..=settings.rounds {
        let verify = round == 1;
        for (i, &n) in PARALLEL.iter().enumerate() {
            // N = 1 behaves the same whatever the bound; measured once, shown in both columns.
            let bounds: &[usize] = if n == 1 { &[ELASTIC_SESSIONS] } else { &[ELASTIC_SESSIONS, 1] };
            for &bound in bounds {
                let run = scale_run(sim, bound, n, data, verify).await?;
                let waits: Vec<String> = run
                    .waits
                    .iter()
                    .map(|w| format!("{:.2}", w.as_secs_f64()))
                    .collect();
                let connects: Vec<String> = run
                    .connects
                    .iter()
                    .map(|w| format!("{:.2}", w.as_secs_f64()))
                    .collect();
                eprintln!(
                    "round {round} elastic   COPY TO x{n} --ssm-sessions {bound}: all-{n} window {} MB/s, span {:.2} MB/s, \
                     {} session(s) started, streams per session {:?}, busy waits [{}] s, connects [{}] s{}",
                    run.window.map_or("-".to_owned(), |w| format!("{w:.2}")),
                    run.span,
                    run.sessions,
                    run.streams,
                    waits.join(", "),
                    connects.join(", "),
                    if run.timeouts > 0 {
                        format!(" ({} hit the {} s cap)", run.timeouts, BUSY_WAIT_CAP.as_secs())
                    } else {
                        String::new()
                    }
                );
                if bound == 1 {
                    single[i].push(run);
                } else {
                    elastic[i].push(run);
                }
            }
        }
    }
    Ok(Scaling { elastic, single })
}

/// What the COPY tasks of one [`scale_run`] share.
#[derive(Default)]
struct Progress {
    /// Bytes received so far by all COPYs.
    bytes: AtomicUsize,
    /// When the last COPY received its first byte, and `bytes` just before.
    all_running: Mutex<Option<(Instant, usize)>>,
    /// When the first COPY ended, and `bytes` then.
    first_done: Mutex<Option<(Instant, usize)>>,
}

/// N staggered COPY TO through a fresh proxy bounded to `bound` sessions.
async fn scale_run(
    sim: &Simulator,
    bound: usize,
    n: usize,
    data: &Payload,
    verify: bool,
) -> Result<ScaleRun> {
    let stats = sim.ssm.stats();
    let sessions_before = stats.sessions_started.load(Ordering::SeqCst);
    let cuts = stats.rate_limit_cuts.load(Ordering::SeqCst);
    let label = if bound == 1 { "1 session" } else { "elastic" };
    let proxy =
        BenchProxy::start_ssm(label, sim, &["--ssm-sessions".into(), bound.to_string()]).await?;
    let progress = Arc::new(Progress::default());
    let expected = data.bytes.len();
    let mut tasks = Vec::with_capacity(n);
    let mut waits = Vec::new();
    let mut timeouts = 0;
    // The first connection opens the first session before the clock starts; each later one
    // connects inside its task, so a slow connect (through a busy session) does not hold up
    // the bench's polling for the next.
    let mut first_client = Some(proxy.connect().await?);
    let start = Instant::now();
    for k in 0..n {
        if k > 0 {
            let want = k.min(bound);
            let waited = Instant::now();
            if !wait_busy(&proxy, want).await {
                timeouts += 1;
            }
            waits.push(waited.elapsed());
        }
        let first = first_client.take();
        let connect = (first.is_none()).then(|| proxy.connector());
        let progress = progress.clone();
        let hash = verify && k == 0;
        let last = k == n - 1;
        tasks.push(tokio::spawn(async move {
            let connecting = Instant::now();
            let client = match (first, connect) {
                (Some(client), _) => client,
                (None, Some(connect)) => connect.connect().await?,
                (None, None) => unreachable!("every COPY after the first has a connector"),
            };
            let connect_time = connecting.elapsed();
            let sha = copy_out_tracked(&client, expected, hash, &progress, last).await?;
            Ok::<_, anyhow::Error>((connect_time, sha))
        }));
    }
    // Streams per session once all N run (or the first has ended).
    while progress.all_running.lock().unwrap().is_none()
        && progress.first_done.lock().unwrap().is_none()
    {
        tokio::time::sleep(BUSY_POLL).await;
    }
    let streams = proxy.ssm_load().iter().map(|s| s.streams).collect();
    let mut connects = Vec::with_capacity(n);
    for (k, task) in tasks.into_iter().enumerate() {
        let (connect_time, sha) = task.await.context("a COPY task panicked")??;
        if k > 0 {
            connects.push(connect_time);
        }
        if let Some(sha) = sha {
            ensure!(
                sha == data.sha256,
                "{label}: capped COPY TO returned different bytes (sha256 {sha}, expected {})",
                data.sha256
            );
        }
    }
    let span = mb_per_s(expected * n, start.elapsed());
    no_cuts(&stats, cuts, label, "parallel COPY TO")?;
    let window = {
        let from = *progress.all_running.lock().unwrap();
        let to = *progress.first_done.lock().unwrap();
        match (from, to) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => Some(mb_per_s(b1 - b0, t1 - t0)),
            _ => None,
        }
    };
    proxy.stop().await;
    Ok(ScaleRun {
        window,
        span,
        sessions: stats.sessions_started.load(Ordering::SeqCst) - sessions_before,
        streams,
        waits,
        timeouts,
        connects,
    })
}

/// Polls the pool until at least `want` sessions report busy; false after [`BUSY_WAIT_CAP`].
async fn wait_busy(proxy: &BenchProxy, want: usize) -> bool {
    let deadline = Instant::now() + BUSY_WAIT_CAP;
    loop {
        if proxy.ssm_load().iter().filter(|s| s.busy).count() >= want {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(BUSY_POLL).await;
    }
}

/// COPY TO of the `capped` table that reports its progress to `progress`.
async fn copy_out_tracked(
    client: &tokio_postgres::Client,
    expected: usize,
    hash: bool,
    progress: &Progress,
    last: bool,
) -> Result<Option<String>> {
    let stream = client
        .copy_out("COPY capped TO STDOUT")
        .await
        .context("COPY capped TO STDOUT")?;
    futures_util::pin_mut!(stream);
    let mut hasher = hash.then(Sha256::new);
    let mut received = 0usize;
    while let Some(chunk) = stream.try_next().await.context("COPY TO: receiving data")? {
        if last && received == 0 {
            let before = progress.bytes.load(Ordering::SeqCst);
            *progress.all_running.lock().unwrap() = Some((Instant::now(), before));
        }
        received += chunk.len();
        progress.bytes.fetch_add(chunk.len(), Ordering::SeqCst);
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
    }
    {
        let mut first = progress.first_done.lock().unwrap();
        if first.is_none() {
            *first = Some((Instant::now(), progress.bytes.load(Ordering::SeqCst)));
        }
    }
    ensure!(
        received == expected,
        "COPY capped TO returned {received} bytes, expected {expected}"
    );
    Ok(hasher.map(|h| hex::encode(h.finalize())))
}

// ---------------------------------------------------------------------------------------------
// Section 5: a real network

/// Section 5's results, in milliseconds, one entry per round unless said otherwise.
#[derive(Default)]
struct RealNetwork {
    /// The first connection through a freshly started proxy.
    first_connect: Vec<f64>,
    first_flights: Vec<u64>,
    /// Median new connection on the open session.
    new_connect: Vec<f64>,
    /// Client flights of every new connection (all rounds).
    new_flights: Vec<u64>,
    /// Median prepared `select 1`, through the tunnel and direct.
    select_ssm: Vec<f64>,
    select_direct: Vec<f64>,
    /// Client data the simulated agent dropped in its early-input window, whole section.
    early_drops: u64,
    /// The first connection through a fresh `--ssm-prewarm` proxy, once its session is open.
    prewarm_connect: Vec<f64>,
    prewarm_flights: Vec<u64>,
    /// Median new connection on an open session to a PostgreSQL 17 front (direct TLS).
    pg17_connect: Vec<f64>,
    pg17_flights: Vec<u64>,
    /// A client served by a spare (`--spare-connections 1`), and the client flights its login
    /// added on streams that were open before it (the spare's own included).
    spare_connect: Vec<f64>,
    spare_flights: Vec<u64>,
}

/// The simulated round trip of [`SsmSimOptions::real_network`].
fn network_rtt() -> Duration {
    2 * SsmSimOptions::real_network().latency.unwrap_or_default()
}

async fn real_network(sim: &Simulator, settings: &Settings) -> Result<RealNetwork> {
    set_aws_limits(sim, true);
    let network = SsmSimOptions::real_network();
    sim.ssm.options().update(|o| {
        o.latency = network.latency;
        o.early_input_window = network.early_input_window;
    });
    let stats = sim.ssm.stats();
    let drops_before = SsmSimStats::get(&stats.early_input_dropped);
    let mut out = RealNetwork::default();
    let direct = BenchProxy::start_direct("direct", sim).await?;
    let direct_client = direct.connect().await?;
    for round in 1..=settings.rounds {
        let cuts = stats.rate_limit_cuts.load(Ordering::SeqCst);
        // A fresh proxy: its first connection opens the session too.
        let proxy = BenchProxy::start_ssm("ssm real network", sim, &[]).await?;
        let (keep, took, flights) = timed_connect(sim, &proxy).await?;
        out.first_connect.push(took);
        out.first_flights.push(flights);
        let mut times = Vec::new();
        for _ in 0..NET_CONNECTS {
            let (client, took, flights) = timed_connect(sim, &proxy).await?;
            times.push(took);
            out.new_flights.push(flights);
            drop(client);
        }
        out.new_connect.push(median(&times));
        let ssm = prepared_select_ms(&keep).await.context("ssm real network: select 1")?;
        let direct = prepared_select_ms(&direct_client).await.context("direct: select 1")?;
        out.select_ssm.push(median(&ssm));
        out.select_direct.push(median(&direct));
        no_cuts(&stats, cuts, "ssm real network", "connections and select 1")?;
        eprintln!(
            "round {round} network   first connection {:.0} ms ({} flights), new connection median {:.0} ms, \
             select 1 median {:.1} ms (direct {:.2} ms)",
            out.first_connect[round - 1],
            out.first_flights[round - 1],
            out.new_connect[round - 1],
            out.select_ssm[round - 1],
            out.select_direct[round - 1],
        );
        drop(keep);
        proxy.stop().await;
    }
    for round in 1..=settings.rounds {
        let cuts = stats.rate_limit_cuts.load(Ordering::SeqCst);
        // --ssm-prewarm: the session is open before the first client comes.
        let proxy = BenchProxy::start_ssm("ssm real network prewarm", sim, &["--ssm-prewarm".to_owned()]).await?;
        wait_for("the prewarmed session", || proxy.ssm_load().len() == 1).await?;
        let (client, took, flights) = timed_connect(sim, &proxy).await?;
        out.prewarm_connect.push(took);
        out.prewarm_flights.push(flights);
        drop(client);
        proxy.stop().await;
        // --spare-connections 1: the second client of the same kind gets the spare the first
        // one left ready.
        let spare_args = ["--spare-connections".to_owned(), "1".to_owned()];
        let proxy = BenchProxy::start_ssm("ssm real network spares", sim, &spare_args).await?;
        let (first, _, _) = timed_connect(sim, &proxy).await?;
        wait_for("a spare", || proxy.ctx.spares.ready() == 1).await?;
        let before = sim.ssm.stream_flights();
        let start = Instant::now();
        let client = proxy.connect().await?;
        out.spare_connect.push(start.elapsed().as_secs_f64() * 1e3);
        let after = sim.ssm.stream_flights();
        out.spare_flights.push(
            after
                .iter()
                .zip(&before)
                .map(|(a, b)| a.client_flights.saturating_sub(b.client_flights))
                .sum(),
        );
        drop((first, client));
        proxy.stop().await;
        no_cuts(&stats, cuts, "ssm real network", "prewarm and spares")?;
        eprintln!(
            "round {round} network   first connection with prewarm {:.0} ms ({} flights), spare hit {:.0} ms ({} flights)",
            out.prewarm_connect[round - 1],
            out.prewarm_flights[round - 1],
            out.spare_connect[round - 1],
            out.spare_flights[round - 1],
        );
    }
    // A PostgreSQL 17 front: once the first login has shown 17, connections open TLS directly.
    let sim17 = Simulator::start(SimOptions {
        ssm: sim.ssm.options().get(),
        rds_pg: PgEmulation::Pg17 { direct_tls: true },
        ..SimOptions::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("the PostgreSQL 17 simulator did not start: {e}"))?;
    for round in 1..=settings.rounds {
        let proxy = BenchProxy::start_ssm("ssm real network pg17", &sim17, &[]).await?;
        let (keep, _, _) = timed_connect(&sim17, &proxy).await?;
        let mut times = Vec::new();
        for _ in 0..NET_CONNECTS {
            let (client, took, flights) = timed_connect(&sim17, &proxy).await?;
            times.push(took);
            out.pg17_flights.push(flights);
            drop(client);
        }
        out.pg17_connect.push(median(&times));
        eprintln!(
            "round {round} network   new connection on PostgreSQL 17 (direct TLS) median {:.0} ms",
            out.pg17_connect[round - 1]
        );
        drop(keep);
        proxy.stop().await;
    }
    sim17.stop().await;
    out.early_drops = SsmSimStats::get(&stats.early_input_dropped) - drops_before;
    sim.ssm.options().update(|o| {
        o.latency = None;
        o.early_input_window = None;
    });
    drop(direct_client);
    direct.stop().await;
    Ok(out)
}

/// Connects through `proxy`; returns the client, how long the login took (ms) and the client
/// flights the simulated agent counted for the one target connection it opened.
async fn timed_connect(sim: &Simulator, proxy: &BenchProxy) -> Result<(tokio_postgres::Client, f64, u64)> {
    let before = sim.ssm.stream_flights().len();
    let start = Instant::now();
    let client = proxy.connect().await?;
    let took = start.elapsed().as_secs_f64() * 1e3;
    let opened = sim.ssm.stream_flights();
    ensure!(
        opened.len() == before + 1,
        "{}: one login opened {} target connections",
        proxy.label,
        opened.len().saturating_sub(before)
    );
    Ok((client, took, opened[before].client_flights))
}

/// NET_SELECTS timed prepared `select 1` round trips (after NET_WARMUP), in ms each.
async fn prepared_select_ms(client: &tokio_postgres::Client) -> Result<Vec<f64>> {
    let statement = client.prepare("SELECT 1").await.context("prepare")?;
    for _ in 0..NET_WARMUP {
        client.query_one(&statement, &[]).await.context("warm-up")?;
    }
    let mut times = Vec::with_capacity(NET_SELECTS);
    for _ in 0..NET_SELECTS {
        let start = Instant::now();
        let one: i32 = client.query_one(&statement, &[]).await?.get(0);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        ensure!(one == 1, "select 1 returned {one}");
    }
    Ok(times)
}

fn print_network_summary(settings: &Settings, net: &RealNetwork, took: Duration) {
    let rtt = network_rtt().as_secs_f64() * 1e3;
    let flights = |values: &[u64]| {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        match (sorted.first(), sorted.last()) {
            (Some(lo), Some(hi)) if lo == hi => format!("{lo}"),
            (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
            _ => "-".to_owned(),
        }
    };
    println!();
    println!(
        "5. real network: {rtt:.0} ms round trip (25 ms each way), AWS-like limits, the agent's 5 ms \
         early-input window; median of {} rounds (run took {:.0} s)",
        settings.rounds,
        took.as_secs_f64()
    );
    println!("{:<46} {:>10} {:>8} {:>15}", "", "ms", "RTTs", "client flights");
    let row = |label: &str, ms: f64, flights: String| {
        println!("{label:<46} {ms:>10.1} {:>8.2} {flights:>15}", ms / rtt);
    };
    row(
        "first connection after proxy start",
        median(&net.first_connect),
        flights(&net.first_flights),
    );
    row(
        "new connection on an open session",
        median(&net.new_connect),
        flights(&net.new_flights),
    );
    row(
        "new connection, PostgreSQL 17 (direct TLS)",
        median(&net.pg17_connect),
        flights(&net.pg17_flights),
    );
    row(
        "first connection after start, --ssm-prewarm",
        median(&net.prewarm_connect),
        flights(&net.prewarm_flights),
    );
    row(
        "new connection served by a spare",
        median(&net.spare_connect),
        flights(&net.spare_flights),
    );
    let ssm = median(&net.select_ssm);
    let direct = median(&net.select_direct);
    row("prepared select 1 through the tunnel", ssm, "1 expected".to_owned());
    row("prepared select 1 direct (no network)", direct, "-".to_owned());
    println!(
        "  pacing must never cost latency it does not have to: select 1 through the tunnel - 1 RTT - direct = \
         {:+.2} ms (up to 2 ms of it the simulator's timers); early input dropped by the agent: {}",
        ssm - rtt - direct,
        net.early_drops
    );
    println!("  AWS's plugin under the same psql: 4 round trips per new connection (a byte pipe: psql's own SSLRequest, TLS, startup, password)");
    // Against the last recorded result: round trips as values (they are counts, not timings),
    // and the connection times in RTTs of the simulated network.
    let most = |values: &[u64]| values.iter().copied().max().unwrap_or(0) as f64;
    let figure = |id: &str, label: &str, value: f64, unit: &str, compare: &str| {
        let ratio = if unit == "ms" { format!("{:.3}", value / rtt) } else { "-".to_owned() };
        let baseline = if unit == "ms" { "RTT" } else { "-" };
        format!("{id}\t{label}\t{value:.3}\t{unit}\t{ratio}\t{baseline}\t{compare}\tlower\n")
    };
    let figures = [
        figure("new_conn_flights", "round trips, new connection on an open session (PostgreSQL 15)", most(&net.new_flights), "round trips", "value"),
        figure("pg17_conn_flights", "round trips, new connection, PostgreSQL 17 direct TLS", most(&net.pg17_flights), "round trips", "value"),
        figure("first_conn_flights", "round trips, first connection (data channel only)", most(&net.first_flights), "round trips", "value"),
        figure("prewarm_conn_flights", "round trips, first connection with --ssm-prewarm", most(&net.prewarm_flights), "round trips", "value"),
        figure("spare_conn_flights", "round trips, a connection served by a spare", most(&net.spare_flights), "round trips", "value"),
        figure("new_conn_ms", "new connection on an open session", median(&net.new_connect), "ms", "ratio"),
        figure("pg17_conn_ms", "new connection, PostgreSQL 17 direct TLS", median(&net.pg17_connect), "ms", "ratio"),
        figure("first_conn_ms", "first connection after start", median(&net.first_connect), "ms", "ratio"),
        figure("prewarm_conn_ms", "first connection after start, --ssm-prewarm", median(&net.prewarm_connect), "ms", "ratio"),
        figure("spare_conn_ms", "new connection served by a spare", median(&net.spare_connect), "ms", "ratio"),
        figure("select1_ms", "prepared select 1 through the tunnel", ssm, "ms", "ratio"),
    ];
    record("tunnel_network", &figures.concat(), &format!("ROUNDS={}, medians, 25 ms each way", settings.rounds));
}

/// Polls `cond` every 20 ms for up to 30 s (what it waits for happens on other tasks).
async fn wait_for(what: &str, cond: impl Fn() -> bool) -> Result<()> {
    let started = Instant::now();
    while !cond() {
        ensure!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
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

/// Empties the `sink` table before a COPY FROM (untimed).
async fn truncate_sink(client: &tokio_postgres::Client) -> Result<()> {
    client
        .batch_execute("TRUNCATE sink")
        .await
        .context("TRUNCATE sink")
}

/// Times one COPY FROM STDIN of `data` into the `sink` table (emptied beforehand with
/// [`truncate_sink`]); checks the row count PostgreSQL reports.
async fn copy_in(client: &tokio_postgres::Client, data: &Payload) -> Result<Duration> {
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
    Ok(took)
}

/// Checks that the `sink` table holds as many bytes as `data` (untimed).
async fn check_sink(client: &tokio_postgres::Client, data: &Payload) -> Result<()> {
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
    Ok(())
}

/// Checks the SHA-256 of what the `sink` table holds, as the COPY text it came from (rows in
/// the order a single COPY into a truncated table wrote them), against `data`.
async fn check_sink_sha256(client: &tokio_postgres::Client, data: &Payload) -> Result<()> {
    let row = client
        .query_one(
            "SELECT encode(sha256(convert_to(string_agg(line || E'\\n', '' ORDER BY ctid), 'UTF8')), 'hex') FROM sink",
            &[],
        )
        .await
        .context("hashing the sink table")?;
    let stored: String = row.get(0);
    ensure!(
        stored == data.sha256,
        "COPY FROM stored different bytes (sha256 {stored}, sent {})",
        data.sha256
    );
    Ok(())
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
    /// The proxy's target context, for its SSM pool's load.
    ctx: Arc<TargetContext>,
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
        let ctx = proxy.ctx.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async move {
            let _ = stopped.await;
        }));
        Ok(BenchProxy {
            label,
            addr,
            ctx,
            stop,
            task,
        })
    }

    /// A `--via direct` proxy to the simulated RDS front.
    async fn start_direct(label: &'static str, sim: &Simulator) -> Result<BenchProxy> {
        BenchProxy::start(
            label,
            &direct_args(sim),
            Credentials::Fixed(sim.aws_credentials()),
        )
        .await
    }

    /// A `--via ssm` proxy whose SSM client talks to the simulator, with `extra` flags.
    async fn start_ssm(
        label: &'static str,
        sim: &Simulator,
        extra: &[String],
    ) -> Result<BenchProxy> {
        let mut args = ssm_args(sim);
        args.extend_from_slice(extra);
        let aws = sim.aws_endpoints();
        let setup = rds_auth_proxy::app::AwsSetup {
            credentials: aws.credentials,
            ssm_endpoint: Some(aws.ssm_endpoint),
            secrets_endpoint: Some(aws.secrets_endpoint),
            sts_endpoint: Some(aws.sts_endpoint),
            rds_endpoint: Some(aws.rds_endpoint),
            redshift_endpoint: None,
            redshift_serverless_endpoint: None,
            dsql_endpoint: None,
        };
        BenchProxy::start(label, &args, Credentials::FixedWith(setup)).await
    }

    fn is_ssm(&self) -> bool {
        matches!(self.ctx.tunnel, Tunnel::Ssm(_))
    }

    /// Load of the proxy's shared SSM sessions (empty for `--via direct`).
    fn ssm_load(&self) -> Vec<SessionLoad> {
        match &self.ctx.tunnel {
            Tunnel::Ssm(tunnel) => tunnel.load(),
            _ => Vec::new(),
        }
    }

    /// Agent data messages received so far by the proxy's live SSM sessions.
    fn messages_in(&self) -> u64 {
        self.ssm_load().iter().map(|s| s.stats.messages_in).sum()
    }

    async fn connect(&self) -> Result<tokio_postgres::Client> {
        self.connector().connect().await
    }

    /// What a spawned task needs to connect through this proxy.
    fn connector(&self) -> Connector {
        Connector {
            label: self.label,
            addr: self.addr,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Connects tokio-postgres clients through one proxy (no TLS to the proxy).
struct Connector {
    label: &'static str,
    addr: SocketAddr,
}

impl Connector {
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

/// Caps off: the given agent Output payload cap, no agent pacing, no gateway limit. Running
/// sessions pick it up at their next message.
fn set_caps_off(sim: &Simulator, payload_cap: usize) {
    sim.ssm.options().update(|o| {
        o.payload_cap = payload_cap;
        o.pacing = None;
        o.client_rate_limit = None;
    });
}

/// The simulator's AWS-like preset ([`SsmSimOptions::aws_limits`]), optionally without the
/// agent's pacing (section 3 only).
fn set_aws_limits(sim: &Simulator, agent_pacing: bool) {
    let aws = SsmSimOptions::aws_limits();
    sim.ssm.options().update(|o| {
        o.payload_cap = aws.payload_cap;
        o.pacing = if agent_pacing { aws.pacing } else { None };
        o.client_rate_limit = aws.client_rate_limit;
    });
}

fn agent_resends(sim: &Simulator) -> u64 {
    sim.ssm.stats().resends.load(Ordering::SeqCst)
}

fn resend_note(resends: u64) -> String {
    if resends == 0 {
        String::new()
    } else {
        format!("  [agent resends meanwhile: {resends}]")
    }
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

/// The `q` quantile (0..=1) of `values`, nearest rank.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn print_summary(
    settings: &Settings,
    caps_off: &CapsOff,
    aws: &AwsOneSession,
    latency: &Latencies,
    beside: &BesideBulk,
    scaling: &Scaling,
    took: Duration,
) {
    println!();
    println!(
        "tunnel benchmark, median of {} rounds (MB/s = 10^6 B/s; run took {:.0} s)",
        settings.rounds,
        took.as_secs_f64()
    );

    // 1. Caps off.
    println!();
    println!(
        "1. caps off: {} MiB per COPY; sim Output cap {UNCAPPED_PAYLOAD} B, no agent pacing, \
         no gateway limit; proxy unpaced (--ssm-max-rate 0)",
        settings.size / MIB
    );
    println!("{:<58} {:>10} {:>10}", "MB/s", "COPY FROM", "COPY TO");
    let (from, to) = (&caps_off.copy_from, &caps_off.copy_to);
    for (i, description) in caps_off.descriptions.iter().enumerate() {
        println!(
            "{description:<58} {:>10.1} {:>10.1}",
            from[i].median(),
            to[i].median()
        );
    }
    let ratio = |label: &str, a: usize| {
        println!(
            "{label:<58} {:>9.2}x {:>9.2}x",
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

    // 2. AWS-like limits, one session.
    println!();
    println!(
        "2. AWS-like limits, one session: {} MiB per COPY; sim preset aws_limits ({AWS_PAYLOAD} B \
         agent payloads, 1 ms agent pacing, gateway cuts a client above {GATEWAY_LIMIT} data msgs/s)",
        settings.capped_size / MIB
    );
    println!(
        "{:<52} {:>7} {:>7} {:>6}   {:>7} {:>7} {:>6}",
        "", "FROM", "msgs/s", "peak", "TO", "msgs/s", "peak"
    );
    let row = |label: &str, from: &Paced, to: Option<&Paced>, paced: bool| {
        let dir = |p: &Paced| {
            if paced {
                format!("{:>7.2} {:>7.0} {:>6}", p.median(), p.msgs(), p.peak)
            } else {
                format!("{:>7.1} {:>7} {:>6}", p.median(), "-", "-")
            }
        };
        let to = to.map_or(format!("{:>7} {:>7} {:>6}", "-", "-", "-"), dir);
        println!("{label:<52} {}   {to}", dir(from));
    };
    row("--via direct", &aws.direct_from, Some(&aws.direct_to), false);
    row(
        "--via ssm --ssm-sessions 1 (default pace, 900/s)",
        &aws.ssm_from,
        Some(&aws.ssm_to),
        true,
    );
    row(
        &format!("plugin-like pace: --ssm-max-rate {PLUGIN_LIKE_RATE} (emulation)"),
        &aws.plugin_like_from,
        None,
        true,
    );
    println!(
        "  FROM/TO in MB/s; msgs/s = data messages per second (FROM: client messages the gateway \
         got; TO: agent messages our client got); peak = most client data messages the gateway \
         saw in any sliding second (limit {GATEWAY_LIMIT})"
    );
    println!(
        "  bytes per data message: COPY FROM {:.0}, COPY TO {:.0}; agent resends in the section: {}; \
         sessions started: {} (2 proxies)",
        median(&aws.ssm_from.bytes_per_msg),
        median(&aws.ssm_to.bytes_per_msg),
        aws.resends,
        aws.sessions_started
    );
    let vs_plugin = aws.ssm_from.median() / aws.plugin_like_from.median();
    println!(
        "  ratio ssm / plugin-like pace, COPY FROM: {vs_plugin:.2}x; ratio ssm / direct: COPY FROM {:.3}x, COPY TO {:.3}x",
        aws.ssm_from.median() / aws.direct_from.median(),
        aws.ssm_to.median() / aws.direct_to.median()
    );
    println!(
        "  one session COPY TO: {:.2} MB/s = one {AWS_PAYLOAD} B agent message every {:.2} ms (agent pacing 1 ms)",
        aws.ssm_to.median(),
        1e3 / aws.ssm_to.msgs()
    );
    println!("  gateway cuts: 0 (checked after every transfer; the bench stops at the first cut)");

    // 3. Latency.
    println!();
    println!(
        "3. interactive latency: prepared select 1, one connection, {} round trips per round; \
         median / p99 in µs (median over rounds)",
        settings.latency_iters
    );
    let lat_row = |label: &str, l: &Latency| {
        let added = if std::ptr::eq(l, &latency.direct) {
            String::new()
        } else {
            format!(
                "   added: median {:+.0} µs, p99 {:+.0} µs",
                l.median() - latency.direct.median(),
                l.p99() - latency.direct.p99()
            )
        };
        println!("{label:<52} {:>7.0} / {:>7.0}{added}", l.median(), l.p99());
    };
    lat_row("--via direct", &latency.direct);
    lat_row("--via ssm (defaults), sim aws_limits", &latency.ssm_aws);
    lat_row(
        "--via ssm (defaults), aws_limits minus agent pacing",
        &latency.ssm_unpaced_agent,
    );
    println!(
        "  Under the full preset the agent waits 1 ms after each Output before the next, so back-to-back \
         round trips carry agent pacing; the second ssm row is what our client adds. Issue's reference: \
         ours +220 µs, AWS's plugin +1750 µs. With the agent unpaced the loop runs well above 900 round \
         trips/s, so our token bucket empties and its waits (a few tokens' worth, ~5-9 ms) make that row's p99."
    );
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    println!(
        "3b. select 1 on a second connection of the same session (--ssm-sessions 1) while a {} MiB COPY runs: \
         beside COPY FROM median {:.0} µs, max {:.0} µs ({} probes); beside COPY TO median {:.0} µs, max {:.0} µs ({} probes)",
        settings.capped_size / MIB,
        median(&beside.upload),
        max(&beside.upload),
        beside.upload.len(),
        median(&beside.download),
        max(&beside.download),
        beside.download.len()
    );

    // 4. Elastic pool scaling.
    println!();
    println!(
        "4. elastic pool: N parallel COPY TO of {} MiB each, started staggered (next COPY once \
         min(running, bound) sessions report busy, at most {} s); sim aws_limits; fresh proxy per run",
        settings.capped_size / MIB,
        BUSY_WAIT_CAP.as_secs()
    );
    println!(
        "{:<3} {:>12} {:>6} {:>6} {:>8} {:>9} {:>8}   {:>11} {:>6} {:>6} {:>8} {:>8}",
        "N",
        "elastic MB/s",
        "scale",
        "span",
        "sessions",
        "busy wait",
        "connect",
        "1-sess MB/s",
        "scale",
        "span",
        "sessions",
        "connect"
    );
    let window = |runs: &[ScaleRun]| {
        let w: Vec<f64> = runs.iter().filter_map(|r| r.window).collect();
        median(&w)
    };
    let span = |runs: &[ScaleRun]| median(&runs.iter().map(|r| r.span).collect::<Vec<_>>());
    let sessions = |runs: &[ScaleRun]| {
        runs.iter()
            .map(|r| r.sessions.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mean_wait = |runs: &[ScaleRun]| {
        let waits: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.waits.iter().map(|w| w.as_secs_f64()))
            .collect();
        if waits.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2} s", waits.iter().sum::<f64>() / waits.len() as f64)
        }
    };
    let connect = |runs: &[ScaleRun]| {
        let times: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.connects.iter().map(|w| w.as_secs_f64()))
            .collect();
        if times.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2} s", median(&times))
        }
    };
    let base_elastic = window(&scaling.elastic[0]);
    for (i, n) in PARALLEL.iter().enumerate() {
        let single: &[ScaleRun] = if i == 0 {
            &scaling.elastic[0]
        } else {
            &scaling.single[i]
        };
        let (e, s) = (window(&scaling.elastic[i]), window(single));
        println!(
            "{n:<3} {e:>12.2} {:>5.2}x {:>6.2} {:>8} {:>9} {:>8}   {s:>11.2} {:>5.2}x {:>6.2} {:>8} {:>8}",
            e / base_elastic,
            span(&scaling.elastic[i]),
            sessions(&scaling.elastic[i]),
            mean_wait(&scaling.elastic[i]),
            connect(&scaling.elastic[i]),
            s / base_elastic,
            span(single),
            sessions(single),
            connect(single),
        );
    }
    let missing: usize = scaling
        .elastic
        .iter()
        .chain(scaling.single.iter())
        .flatten()
        .filter(|r| r.window.is_none())
        .count();
    let capped_waits: usize = scaling.elastic.iter().flatten().map(|r| r.timeouts).sum();
    println!(
        "  MB/s = aggregate over the window in which all N COPYs ran (last COPY's first byte to first \
         COPY's end); span = N x size / (first start -> last end); sessions = SSM sessions the simulator \
         saw each round's fresh proxy start; busy wait = mean wait for the pool to report busy sessions \
         before starting the next COPY ({capped_waits} elastic wait(s) hit the cap); connect = median time \
         a later COPY's connection (TLS + IAM login through the tunnel) took; N = 1 is one run, \
         shown in both columns{}",
        if missing > 0 {
            format!("; {missing} run(s) had no all-N window and are left out")
        } else {
            String::new()
        }
    );
    let last = PARALLEL.len() - 1;
    let spread: Vec<String> = scaling.elastic[last]
        .iter()
        .map(|r| format!("{:?}", r.streams))
        .collect();
    println!(
        "  streams per elastic session when the last of {} COPYs connected, per round: {}",
        PARALLEL[last],
        spread.join(" ")
    );

    // Goals.
    println!();
    let ssm_from = from[CapsOff::SSM_BIG].median() / from[CapsOff::DIRECT].median();
    let ssm_to = to[CapsOff::SSM_BIG].median() / to[CapsOff::DIRECT].median();
    println!(
        "goal caps off, ssm >= 0.5x direct:            COPY FROM {ssm_from:.2}x  COPY TO {ssm_to:.2}x   ({})",
        verdict(ssm_from >= 0.5 && ssm_to >= 0.5)
    );
    let peak = aws.ssm_from.peak.max(aws.ssm_to.peak);
    println!(
        "goal AWS-like, upload >= 1.3x plugin-like pace: {vs_plugin:.2}x ({:.2} vs {:.2} MB/s)   ({})",
        aws.ssm_from.median(),
        aws.plugin_like_from.median(),
        verdict(vs_plugin >= 1.3)
    );
    println!(
        "goal AWS-like, under the gateway limit:        peak {peak} client msgs/s, 0 cuts   ({})",
        verdict(peak < GATEWAY_LIMIT)
    );
    let added = latency.ssm_unpaced_agent.median() - latency.direct.median();
    let added_aws = latency.ssm_aws.median() - latency.direct.median();
    // The issue's +220 µs (ours) and +1750 µs (plugin) were measured without agent pacing, so
    // the client-only row is the one to hold against them.
    println!(
        "goal latency, keep the lead over the plugin's +1750 µs: ours +{added:.0} µs with the agent unpaced \
         (+{added_aws:.0} µs with the sim agent's 1 ms pacing on)   ({})",
        verdict(added < 1750.0)
    );
    let n_max = PARALLEL[last];
    let e_scale = window(&scaling.elastic[last]) / base_elastic;
    let s_scale = window(&scaling.single[last]) / base_elastic;
    println!(
        "goal elastic pool, {n_max} COPYs: {e_scale:.2}x with --ssm-sessions {ELASTIC_SESSIONS} (ideal {n_max}x), \
         {s_scale:.2}x with --ssm-sessions 1 (ideal ~1x)   ({})",
        verdict(e_scale >= 0.75 * n_max as f64 && s_scale < 1.5)
    );

    // Against the last recorded result (benches/results.json): timings as same-run ratios.
    let figure = |id: &str, label: &str, value: f64, unit: &str, ratio: f64, baseline: &str, better: &str| {
        format!("{id}\t{label}\t{value:.3}\t{unit}\t{ratio:.3}\t{baseline}\tratio\t{better}\n")
    };
    let figures = [
        figure("caps_off_copy_from", "caps off, ssm 32 KiB COPY FROM", from[CapsOff::SSM_BIG].median(), "MB/s", ssm_from, "direct", "higher"),
        figure("caps_off_copy_to", "caps off, ssm 32 KiB COPY TO", to[CapsOff::SSM_BIG].median(), "MB/s", ssm_to, "direct", "higher"),
        figure("aws_upload", "AWS-like, one session COPY FROM", aws.ssm_from.median(), "MB/s", vs_plugin, "plugin-like", "higher"),
        figure(
            "added_rtt",
            "select 1 round trip added by ssm (agent unpaced)",
            added / 1000.0,
            "ms",
            latency.ssm_unpaced_agent.median() / latency.direct.median(),
            "direct",
            "lower",
        ),
        figure("elastic_scale", &format!("elastic pool, {n_max} COPY TO"), window(&scaling.elastic[last]), "MB/s", e_scale, "1 COPY", "higher"),
    ];
    record("tunnel", &figures.concat(), &format!("ROUNDS={}, medians", settings.rounds));
}

/// Hands the figures to benches/record.py (value, same-run ratio, change against the recorded
/// result; `RECORD=1` records them). Without python3 the summary above is all there is.
fn record(bench: &str, figures: &str, note: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    println!();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/record.py");
    let child = Command::new("python3").arg(script).arg(bench).arg("--note").arg(note).stdin(Stdio::piped()).spawn();
    match child {
        Ok(mut child) => {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(figures.as_bytes());
            }
            let _ = child.wait();
        }
        Err(e) => eprintln!("cannot run {script}: {e}"),
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}
