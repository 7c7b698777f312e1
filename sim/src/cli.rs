//! The `sim` and `demo` subcommands of `rds-auth-proxy`: their flags, and [`with_commands`],
//! which adds them to the proxy's command line (the binary's, its man page and completions). They
//! live here, not in the proxy library, which has no simulator code.

use clap::{ArgMatches, Args, FromArgMatches, Subcommand};

// The simulator's subcommands, in the order `--help` lists them (right after `token`). No doc
// comment: clap would make it the `about` of the command these are added to.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run the local AWS simulator (RDS front + throwaway PostgreSQL) and print its settings as
    /// `export NAME=value` lines, then `ready`.
    Sim(Box<SimArgs>),
    /// Start the simulator and the proxy wired together on 127.0.0.1:6543, and print the psql
    /// line to try.
    Demo(DemoArgs),
}

impl SimCommand {
    /// The `sim` or `demo` command the user gave, if it is one of them.
    pub fn from_matches(matches: &ArgMatches) -> Result<Option<SimCommand>, clap::Error> {
        match matches.subcommand_name() {
            Some(name) if SimCommand::has_subcommand(name) => SimCommand::from_arg_matches(matches).map(Some),
            _ => Ok(None),
        }
    }
}

/// The proxy's command line `cmd` with `sim` and `demo` added, listed right after `token` as
/// they were when the proxy and the simulator were one crate.
pub fn with_commands(cmd: clap::Command) -> clap::Command {
    let mut names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_owned()).collect();
    let at = names.iter().position(|n| n == "token").map_or(names.len(), |i| i + 1);
    names.splice(at..at, ["sim".to_owned(), "demo".to_owned()]);
    let cmd = SimCommand::augment_subcommands(cmd);
    names.iter().enumerate().fold(cmd, |cmd, (order, name)| {
        cmd.mut_subcommand(name, |sub| sub.display_order(order))
    })
}

#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Address for the simulated RDS endpoint (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:0", env = "RDS_AUTH_PROXY_SIM_LISTEN")]
    pub listen: std::net::SocketAddr,
    /// Database users the simulated RDS treats as password (SCRAM) users instead of IAM users.
    #[arg(long, value_name = "USER", env = "RDS_AUTH_PROXY_SIM_PASSWORD_USER")]
    pub password_user: Vec<String>,

    /// Simulated SSM: the AgentVersion the managed node reports in the handshake (clients use
    /// mux only above 3.0.196.0).
    #[arg(long, value_name = "VERSION", default_value = crate::ssm::DEFAULT_AGENT_VERSION, env = "RDS_AUTH_PROXY_SIM_SSM_AGENT_VERSION")]
    pub ssm_agent_version: String,
    /// Simulated SSM: most bytes per agent → client Output message (AWS: 1024).
    #[arg(long, value_name = "BYTES", default_value_t = crate::ssm::DEFAULT_PAYLOAD_CAP, value_parser = crate::ssm::parse_payload_cap, env = "RDS_AUTH_PROXY_SIM_SSM_PAYLOAD_CAP")]
    pub ssm_payload_cap: usize,
    /// Simulated SSM: pause after each agent → client Output message, like the agent's 1 ms
    /// (e.g. 1ms for AWS-like throughput). Default: no pacing.
    #[arg(long, value_name = "DURATION", value_parser = crate::ssm::parse_duration, env = "RDS_AUTH_PROXY_SIM_SSM_PACING")]
    pub ssm_pacing: Option<std::time::Duration>,
    /// Simulated SSM: probability (0–1) that a data message, either direction, is lost.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = crate::ssm::parse_rate, env = "RDS_AUTH_PROXY_SIM_SSM_DROP_RATE")]
    pub ssm_drop_rate: f64,
    /// Simulated SSM: probability (0–1) that a data message, either direction, arrives twice.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = crate::ssm::parse_rate, env = "RDS_AUTH_PROXY_SIM_SSM_DUPLICATE_RATE")]
    pub ssm_duplicate_rate: f64,
    /// Simulated SSM: probability (0–1) that a data message, either direction, is held back
    /// behind the next one.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = crate::ssm::parse_rate, env = "RDS_AUTH_PROXY_SIM_SSM_REORDER_RATE")]
    pub ssm_reorder_rate: f64,
    /// Simulated SSM: seed of the fault generator, to replay a fault pattern.
    #[arg(long, value_name = "N", default_value_t = 0, env = "RDS_AUTH_PROXY_SIM_SSM_SEED")]
    pub ssm_seed: u64,
    /// Simulated SSM: reset each data channel WebSocket (no close frame) after this many new
    /// data messages on it, counted in both directions (acks and resends do not count).
    #[arg(long, value_name = "N", env = "RDS_AUTH_PROXY_SIM_SSM_KILL_WS_AFTER_MESSAGES")]
    pub ssm_kill_ws_after_messages: Option<u64>,
    /// Simulated SSM: reset each data channel WebSocket this long after it opened (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = crate::ssm::parse_duration, env = "RDS_AUTH_PROXY_SIM_SSM_KILL_WS_AFTER")]
    pub ssm_kill_ws_after: Option<std::time::Duration>,
    /// Simulated SSM: close each WebSocket with `1000 Bye` this long after it opened, as AWS
    /// does about hourly (e.g. 60m, or 10s to exercise reconnects).
    #[arg(long, value_name = "DURATION", value_parser = crate::ssm::parse_duration, env = "RDS_AUTH_PROXY_SIM_SSM_BYE_AFTER")]
    pub ssm_bye_after: Option<std::time::Duration>,
    /// Simulated SSM: end a session after this long without data either way (AWS default:
    /// 20m), with AWS's "timed out due to inactivity" message. Default: never.
    #[arg(long, value_name = "DURATION", value_parser = crate::ssm::parse_duration, env = "RDS_AUTH_PROXY_SIM_SSM_IDLE_TIMEOUT")]
    pub ssm_idle_timeout: Option<std::time::Duration>,
    /// Simulated SSM: answer ResumeSession without a token, as for a session that timed out.
    #[arg(long, env = "RDS_AUTH_PROXY_SIM_SSM_REFUSE_RESUME")]
    pub ssm_refuse_resume: bool,
    /// Simulated SSM: enforce AWS's known limits together — 1024-byte agent payloads, 1 ms
    /// agent pacing, cutting a client WebSocket above 1000 data messages/s, the agent's
    /// one-message-per-tick resends, and its 5 ms early-input window after the handshake. Each
    /// part stays its own flag (--ssm-payload-cap, --ssm-pacing, --ssm-client-rate-limit,
    /// --ssm-early-input-window), which wins when given. No latency: add --ssm-real-network.
    #[arg(long, env = "RDS_AUTH_PROXY_SIM_SSM_AWS_LIMITS")]
    pub ssm_aws_limits: bool,
    /// Simulated SSM: reset a data channel WebSocket (no close frame; the session stays
    /// resumable) whose client sends more than N data messages (fresh or resent; acks do not
    /// count) within any one second, as AWS's gateway is reported to. 0 = no limit (default,
    /// or 1000 with --ssm-aws-limits).
    #[arg(long, value_name = "N", env = "RDS_AUTH_PROXY_SIM_SSM_CLIENT_RATE_LIMIT")]
    pub ssm_client_rate_limit: Option<u32>,

    /// Simulated SSM: resend like the real agent — every 100 ms only the oldest unacked
    /// message, one per tick (part of --ssm-aws-limits). Default: every overdue message.
    #[arg(long, env = "RDS_AUTH_PROXY_SIM_SSM_RESEND_FRONT_ONLY")]
    pub ssm_resend_front_only: bool,
    /// Simulated SSM: fail every StartSession with this AWS error code, e.g.
    /// AccessDeniedException or ThrottlingException (with AWS's message for it).
    #[arg(long, value_name = "CODE", env = "RDS_AUTH_PROXY_SIM_SSM_REFUSE_START")]
    pub ssm_refuse_start: Option<String>,
    /// Simulated SSM: never answer the data channel WebSocket upgrade.
    #[arg(long, env = "RDS_AUTH_PROXY_SIM_SSM_HANG_UPGRADE")]
    pub ssm_hang_upgrade: bool,
    /// Simulated SSM: the agent never sends its HandshakeRequest (it still ends the session
    /// after its 15 s handshake timeout).
    #[arg(long, env = "RDS_AUTH_PROXY_SIM_SSM_HANG_HANDSHAKE")]
    pub ssm_hang_handshake: bool,

    /// Simulated SSM: one-way network delay between the client and AWS, e.g. 25ms. Each way:
    /// every data channel frame arrives this much later in both directions, so a message and
    /// its answer cost twice this (one round trip); every API call and WebSocket upgrade pays
    /// a round trip, plus two more (TCP and TLS handshakes) on a new connection. Frames in
    /// flight overlap, so throughput is not capped by it. Default: none (loopback).
    #[arg(long, value_name = "DURATION", value_parser = crate::ssm::parse_duration, env = "RDS_AUTH_PROXY_SIM_SSM_LATENCY")]
    pub ssm_latency: Option<std::time::Duration>,
    /// Simulated SSM: random extra delay, 0 to DURATION, added to each frame and request on
    /// top of --ssm-latency, each way. Frames of one WebSocket still arrive in order.
    #[arg(long, value_name = "DURATION", value_parser = crate::ssm::parse_duration, env = "RDS_AUTH_PROXY_SIM_SSM_JITTER")]
    pub ssm_jitter: Option<std::time::Duration>,
    /// Simulated SSM: for this long after the agent sends HandshakeComplete, client data is
    /// dropped without an ack (the port plugin is not ready yet), so the client must resend
    /// it — AWS's agent does this for 0.4–5 ms. 0 = off (the default; 5ms with
    /// --ssm-aws-limits or --ssm-real-network).
    #[arg(long, value_name = "DURATION", value_parser = crate::ssm::parse_duration, env = "RDS_AUTH_PROXY_SIM_SSM_EARLY_INPUT_WINDOW")]
    pub ssm_early_input_window: Option<std::time::Duration>,
    /// Simulated SSM: a real network between the client and AWS — 25 ms each way (a 50 ms
    /// round trip, see --ssm-latency) and the agent's 5 ms early-input window. Combine with
    /// --ssm-aws-limits for AWS's limits too; --ssm-latency, --ssm-jitter and
    /// --ssm-early-input-window win when given.
    #[arg(long, env = "RDS_AUTH_PROXY_SIM_SSM_REAL_NETWORK")]
    pub ssm_real_network: bool,

    /// Simulated SSM: the managed node has lost its connection (ConnectionLost in
    /// DescribeInstanceInformation, TargetNotConnected from StartSession).
    #[arg(long, env = "RDS_AUTH_PROXY_SIM_SSM_NODE_OFFLINE")]
    pub ssm_node_offline: bool,
    /// Simulated RDS API: report IAM database authentication as disabled.
    #[arg(long, env = "RDS_AUTH_PROXY_SIM_RDS_IAM_AUTH_DISABLED")]
    pub rds_iam_auth_disabled: bool,
    /// Simulated RDS API: the instance's engine (the cluster is aurora-postgresql for postgres).
    #[arg(long, value_name = "ENGINE", default_value = "postgres", env = "RDS_AUTH_PROXY_SIM_RDS_ENGINE")]
    pub rds_engine: String,
    /// Simulated RDS API: the instance's and cluster's status.
    #[arg(long, value_name = "STATUS", default_value = "available", env = "RDS_AUTH_PROXY_SIM_RDS_STATUS")]
    pub rds_status: String,
    /// Simulated RDS: the PostgreSQL major version the front emulates. 15 (default): the
    /// version behind it, which closes a connection that starts with a TLS ClientHello
    /// ("invalid length of startup packet"). 17: the front also takes PostgreSQL 17's direct
    /// TLS (first byte 0x16, ALPN "postgresql" required) and reports server_version 17.4 in
    /// the login's ParameterStatus. An emulation: the PostgreSQL behind it is still 15, so
    /// psql's 17-only catalog queries (\d) may fail.
    #[arg(long, value_name = "MAJOR", default_value_t = 15, value_parser = parse_pg_version, env = "RDS_AUTH_PROXY_SIM_RDS_PG_VERSION")]
    pub rds_pg_version: u32,
    /// Simulated RDS: with --rds-pg-version 17, refuse direct TLS anyway (close the connection),
    /// as something in front of a PostgreSQL 17 that does not know it would.
    #[arg(long, env = "RDS_AUTH_PROXY_SIM_RDS_REFUSE_DIRECT_TLS")]
    pub rds_refuse_direct_tls: bool,
    /// Simulated RDS: swap the certificate chains — the RDS Proxy endpoint (SIM_PROXY_ENDPOINT)
    /// presents an RDS-CA certificate, every other name an ATS-like one. The proxy must refuse both.
    #[arg(long, env = "RDS_AUTH_PROXY_SIM_SWAP_TLS_CHAINS")]
    pub swap_tls_chains: bool,

    /// Simulated Redshift: how the front asks an IAM login for its password: md5, cleartext, or
    /// sha256 (Redshift's own AuthenticationRequest 13).
    #[arg(long, value_name = "METHOD", default_value = "md5", value_parser = parse_redshift_auth, env = "RDS_AUTH_PROXY_SIM_REDSHIFT_AUTH")]
    pub redshift_auth: crate::redshift::RedshiftAuthMethod,
    /// Simulated Aurora DSQL: close a connection without a message when it is this old (DSQL: 60m).
    #[arg(long, value_name = "DURATION", default_value = "60m", value_parser = crate::ssm::parse_duration, env = "RDS_AUTH_PROXY_SIM_DSQL_CONNECTION_AGE_LIMIT")]
    pub dsql_connection_age_limit: std::time::Duration,
}

/// `sim --redshift-auth`.
fn parse_redshift_auth(s: &str) -> Result<crate::redshift::RedshiftAuthMethod, String> {
    use crate::redshift::RedshiftAuthMethod as M;
    match s {
        "md5" => Ok(M::Md5),
        "cleartext" => Ok(M::Cleartext),
        "sha256" => Ok(M::Sha256Digest),
        _ => Err("the simulated Redshift asks for md5, cleartext or sha256".into()),
    }
}

/// `sim --rds-pg-version`: the versions the front can act as.
fn parse_pg_version(s: &str) -> Result<u32, String> {
    match s {
        "15" => Ok(15),
        "17" => Ok(17),
        _ => Err("the simulated RDS acts as PostgreSQL 15 or 17".into()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Local TCP port for the proxy.
    #[arg(short = 'p', long, default_value_t = 6543, env = "RDS_AUTH_PROXY_PORT")]
    pub port: u16,
}
