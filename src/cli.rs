//! The command line: flags (each also readable from `RDS_AUTH_PROXY_<FLAG>`), subcommands and
//! the help text that teaches how to use them. Parsing only; [`crate::config`] validates.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::tls::DirectTls;

const ABOUT: &str = "A password-less local PostgreSQL endpoint for Amazon RDS, Aurora DSQL and \
Redshift: IAM tokens, verify-full TLS and a built-in SSM Session Manager tunnel, in one process.";

const LONG_ABOUT: &str = "\
rds-auth-proxy listens on 127.0.0.1:6543 and accepts PostgreSQL connections without a password. \
For each one it connects to your RDS endpoint, verifies the server certificate against the RDS CA \
bundle for the endpoint's own name (verify-full), answers the password request with a freshly \
signed RDS IAM token from your normal AWS credentials (profiles, SSO, env, roles), and then relays \
the connection unchanged. Aurora DSQL (a DSQL auth token) and Amazon Redshift, provisioned or \
Serverless (temporary credentials, logged in as the user they name), work the same way.";

// Every line stays under 60 columns, commands continued with backslashes, so that neither clap's
// wrapping nor a narrow terminal ever splits one where a paste would break it (tests/cli.rs).
const EXAMPLES: &str = "\
Examples:
  # An RDS instance you can route to (VPN, in the VPC):
  rds-auth-proxy --via direct \\
      --target mydb.abc123.eu-central-1.rds.amazonaws.com
  psql -h localhost -p 6543 -U db_user postgres

  # Through an SSM managed node in the VPC (no plugin):
  rds-auth-proxy --via ssm \\
      --ssm-target i-0123456789abcdef0 \\
      --target mydb.abc123.eu-central-1.rds.amazonaws.com

  # Through a port forward you already run (TLS still
  # verifies the endpoint name):
  rds-auth-proxy --connect-addr 127.0.0.1:15432 \\
      --target mydb.abc123.eu-central-1.rds.amazonaws.com

  # The master user, whose password RDS keeps in Secrets
  # Manager (its username field says whose); IAM users too:
  rds-auth-proxy --password-secret 'rds!db-0123abcd-…' \\
      --target mydb.abc123.eu-central-1.rds.amazonaws.com

  # Aurora DSQL, and a Redshift cluster (port 5439):
  rds-auth-proxy \\
      --target abc123xyz.dsql.us-east-1.on.aws
  rds-auth-proxy --redshift-cluster examplecluster \\
      --region us-west-2

  # No AWS at hand? Simulated SSM and RDS, and a
  # throwaway local PostgreSQL:
  rds-auth-proxy demo

  # Print a token, like `aws rds generate-db-auth-token`:
  rds-auth-proxy token --port 5432 --username db_user \\
      --hostname mydb.abc123.eu-central-1.rds.amazonaws.com

Every flag can also be set as an environment variable RDS_AUTH_PROXY_<FLAG>, e.g.
RDS_AUTH_PROXY_TARGET, RDS_AUTH_PROXY_PORT; a subcommand's own flags as
RDS_AUTH_PROXY_<SUBCOMMAND>_<FLAG>. Logs go to stderr; RUST_LOG=debug shows more.";

#[derive(Debug, Parser)]
#[command(
    name = "rds-auth-proxy",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub proxy: ProxyArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub file: FileArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print an RDS IAM auth token (same arguments and output as `aws rds generate-db-auth-token`).
    Token(TokenArgs),
    // `sim` and `demo` come next: the simulator crate's (rds_auth_proxy_sim::cli), added by the
    // binary, so that this library has no simulator code.
    /// Check the whole chain once, with the proxy's flags: credentials (who am I), region, name
    /// lookups, SSM node and StartSession, the node reaching host:port, TLS verify-full, IAM
    /// login, select 1. One line per step; exit code 0 only if every step passes.
    Doctor(Box<DoctorArgs>),
    /// Print ready-made client settings for the local listener (a psql line, a libpq URI, a
    /// JDBC URL, DBeaver's fields, a pg_service.conf entry or PG* variables). Takes the same
    /// flags as the proxy; no password anywhere.
    ConnectInfo(Box<ConnectInfoArgs>),
    /// Print a shell completion script, e.g. `source <(rds-auth-proxy completions bash)`, or
    /// `rds-auth-proxy completions fish > ~/.config/fish/completions/rds-auth-proxy.fish`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff), e.g. `rds-auth-proxy man > rds-auth-proxy.1; man ./rds-auth-proxy.1`.
    Man,
    /// Wait until a proxy started with --http-port (or --http-address) reports /startup ok: for
    /// scripts, dev containers and compose files. Exit 0 when up, 1 on timeout.
    Wait(WaitArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnectInfoFormat {
    /// A psql command line.
    Psql,
    /// A libpq connection URI (postgresql://…), for psql, psycopg, node-postgres, tokio-postgres.
    Dsn,
    /// A pgJDBC URL (jdbc:postgresql://…).
    Jdbc,
    /// DBeaver's connection dialog, field by field.
    Dbeaver,
    /// A section for ~/.pg_service.conf (psql service=NAME).
    #[value(alias = "pg_service")]
    PgService,
    /// export PGHOST=… lines: eval "$(rds-auth-proxy connect-info --format env)".
    Env,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectInfoArgs {
    /// What to print.
    #[arg(long, value_enum, default_value = "psql", env = "RDS_AUTH_PROXY_CONNECT_INFO_FORMAT")]
    pub format: ConnectInfoFormat,

    /// The database the settings name. Default: postgres (every RDS PostgreSQL instance and
    /// Aurora DSQL cluster has it), dev on Redshift.
    #[arg(long, value_name = "NAME", env = "RDS_AUTH_PROXY_CONNECT_INFO_DBNAME")]
    pub dbname: Option<String>,

    /// The proxy's own flags: the settings point where a proxy started with them listens.
    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// The proxy's config file, read as the proxy reads it (flags and variables win; `--target
    /// NAME` picks a [[target]]). Default: $XDG_CONFIG_HOME/rds-auth-proxy/config.toml when it exists.
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// The database to log in to for the check. Default: postgres, dev on Redshift.
    #[arg(long, value_name = "NAME", env = "RDS_AUTH_PROXY_DOCTOR_DBNAME")]
    pub dbname: Option<String>,
    /// The proxy's flags (--target or --db-instance, --via, --db-user …); --db-user is required.
    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// The proxy's config file, read as the proxy reads it (flags and variables win; `--target
    /// NAME` picks a [[target]]). Default: $XDG_CONFIG_HOME/rds-auth-proxy/config.toml when it exists.
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// The proxy's --http-address.
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1", env = "RDS_AUTH_PROXY_HTTP_ADDRESS")]
    pub http_address: IpAddr,
    /// The proxy's --http-port.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_HTTP_PORT, env = "RDS_AUTH_PROXY_HTTP_PORT")]
    pub http_port: u16,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, env = "RDS_AUTH_PROXY_WAIT_TIMEOUT")]
    pub timeout: u64,
}

/// The config file and what to do with the configuration besides serving it. None of these is a
/// key of the file itself.
#[derive(Debug, Clone, Args)]
pub struct FileArgs {
    /// A TOML config file: defaults plus any number of [[target]] tables, each served on its own
    /// listener by this one process (keys: the long flag names with `_`, see
    /// config/rds-auth-proxy.toml). Default: $XDG_CONFIG_HOME/rds-auth-proxy/config.toml
    /// (~/.config/…) when it exists. Flags and RDS_AUTH_PROXY_* variables win over the file's
    /// top-level keys and over the keys of a file's only target; `--target NAME` serves just the
    /// file's target NAME.
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the targets the configuration defines (name, listener, endpoint, route) and exit.
    #[arg(long)]
    pub list_targets: bool,

    /// After binding, connect once through every target and run `select 1` (as --db-user, else
    /// $PGUSER or your login name, in database $PGDATABASE or postgres); exit 1 with each failing
    /// target's error and HINT if any fails, else keep serving.
    #[arg(long, env = "RDS_AUTH_PROXY_RUN_CONNECTION_TEST")]
    pub run_connection_test: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Connect straight to the endpoint (or --connect-addr) over TCP.
    Direct,
    /// Through an SSM Session Manager port-forwarding session on a managed node in the VPC
    /// (--ssm-target); no session-manager-plugin needed.
    Ssm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", env = "RDS_AUTH_PROXY_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
    /// Only log warnings and errors (RUST_LOG overrides).
    #[arg(short, long, env = "RDS_AUTH_PROXY_QUIET", global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// The database endpoint name, as AWS shows it, with an optional port (default 5432; 5439
    /// for Redshift): an RDS or Aurora endpoint, an Aurora DSQL cluster endpoint or a Redshift
    /// (Serverless) endpoint (see --engine). TLS verifies this name and tokens are signed for it.
    #[arg(long, value_name = "ENDPOINT[:PORT]", env = "RDS_AUTH_PROXY_TARGET")]
    pub target: Option<String>,

    /// Local address to listen on. A non-loopback address also needs --allow-remote.
    #[arg(short = 'a', long, default_value = "127.0.0.1", env = "RDS_AUTH_PROXY_ADDRESS")]
    pub address: IpAddr,

    /// Accept a non-loopback --address, for clients on other hosts. Needs --local-tls (remote
    /// clients must use TLS) and --client-password-file or --client-ca-file: remote clients log
    /// in with that password or a certificate, as they would log in as your IAM identity.
    /// Makes --max-connections default to 100.
    #[arg(long, env = "RDS_AUTH_PROXY_ALLOW_REMOTE")]
    pub allow_remote: bool,

    /// Let every OS user of this host connect on loopback TCP, as they log in with your AWS
    /// identity. Without it (Linux) a loopback client must run as the user running the proxy.
    #[arg(long, env = "RDS_AUTH_PROXY_ALLOW_LOCAL_USERS")]
    pub allow_local_users: bool,

    /// Local TCP port to listen on.
    #[arg(short = 'p', long, default_value_t = 6543, env = "RDS_AUTH_PROXY_PORT")]
    pub port: u16,

    /// Also listen on a Unix socket DIR/.s.PGSQL.<port> (mode 0600); `psql -h DIR` uses it.
    #[arg(long, value_name = "DIR", env = "RDS_AUTH_PROXY_UNIX_SOCKET")]
    pub unix_socket: Option<PathBuf>,

    /// How to reach the endpoint.
    #[arg(long, value_enum, default_value = "direct", env = "RDS_AUTH_PROXY_VIA")]
    pub via: Via,

    /// Direct mode: dial HOST:PORT instead of the endpoint (e.g. an existing port forward). TLS
    /// still verifies the endpoint name.
    #[arg(long, value_name = "HOST:PORT", env = "RDS_AUTH_PROXY_CONNECT_ADDR")]
    pub connect_addr: Option<String>,

    /// SSM mode: the managed node that forwards to the database (instance id `i-…` or hybrid
    /// node `mi-…`), or `auto` (see --ssm-tag). It needs a running SSM Agent and network access to the endpoint's port;
    /// you need ssm:StartSession on it and on the AWS-StartPortForwardingSessionToRemoteHost
    /// document.
    #[arg(long, value_name = "NODE_ID", env = "RDS_AUTH_PROXY_SSM_TARGET")]
    pub ssm_target: Option<String>,

    /// SSM mode: the most SSM sessions open at once. Connections share one session; another
    /// opens only when every open one is busy with a bulk transfer (one session carries about
    /// 1 MB/s) or congested by a client that stopped reading its results. Extra sessions close
    /// after --ssm-idle-timeout.
    #[arg(long, value_name = "N", default_value_t = crate::tunnel::ssm::pool::DEFAULT_MAX_SESSIONS, env = "RDS_AUTH_PROXY_SSM_SESSIONS")]
    pub ssm_sessions: usize,

    /// SSM mode: most data-channel messages per second per session, resends included (a token
    /// bucket with 0.05 s bursts, so queries never wait on it). AWS's gateway is reported to cut
    /// a data channel that sustains more than about 1000/s; 0 disables pacing, for endpoints
    /// known to accept more.
    #[arg(long, value_name = "N", default_value_t = crate::tunnel::ssm::datachannel::DEFAULT_MAX_RATE, env = "RDS_AUTH_PROXY_SSM_MAX_RATE")]
    pub ssm_max_rate: u32,

    /// SSM mode: close an SSM session after this many seconds without any connection; the
    /// next connection opens a new one (about a second). While connections are open the
    /// session is kept alive, whatever the account's idle session timeout.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, env = "RDS_AUTH_PROXY_SSM_IDLE_TIMEOUT")]
    pub ssm_idle_timeout: u64,

    /// SSM mode: while connections are open, send a keepalive through the session every
    /// SECONDS so the account's idle session timeout never cuts an in-use tunnel.
    #[arg(long, value_name = "SECONDS", default_value_t = 20, env = "RDS_AUTH_PROXY_SSM_KEEPALIVE")]
    pub ssm_keepalive: u64,

    /// SSM mode: give up a connection whose client has stopped reading its results for this
    /// many seconds while the tunnel holds a full buffer for it. Connections share an SSM
    /// session, and one that is not read would otherwise stall all the others on it (the
    /// session's multiplexer has no per-connection flow control). The client gets the message
    /// it was in the middle of and an error saying why.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, env = "RDS_AUTH_PROXY_SSM_STALL_TIMEOUT")]
    pub ssm_stall_timeout: u64,

    /// SSM mode: largest data payload per data-channel message. AWS's own clients send at most
    /// 1024 bytes; raise it only against endpoints known to accept more.
    #[arg(long, value_name = "BYTES", default_value_t = 1024, env = "RDS_AUTH_PROXY_SSM_MAX_PAYLOAD")]
    pub ssm_max_payload: usize,

    /// SSM mode: open an SSM session at start and always keep one open (with keepalives, so
    /// the account's idle session timeout does not end it), so the first connection does not
    /// wait for StartSession, the WebSocket and the handshake (about a second, more on a slow
    /// network). Without it the first connection opens the session and an unused session
    /// closes after --ssm-idle-timeout. A failure at start is logged and retried later; it is
    /// not fatal.
    #[arg(long, env = "RDS_AUTH_PROXY_SSM_PREWARM")]
    pub ssm_prewarm: bool,

    /// TLS to the server without an SSLRequest first (PostgreSQL 17's sslnegotiation=direct,
    /// ALPN "postgresql"): saves one network round trip per new connection. auto: once a
    /// login has shown the server is PostgreSQL 17 or later, falling back to SSLRequest (and
    /// remembering it) if the server does not take it; always: direct only; never:
    /// SSLRequest only. Certificate checks are the same either way.
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto", env = "RDS_AUTH_PROXY_DIRECT_TLS")]
    pub direct_tls: DirectTls,

    /// SSM mode: SigV4-sign the data channel WebSocket upgrade, as the newest
    /// session-manager-plugin does. Off by default: the session token authenticates it.
    #[arg(long, env = "RDS_AUTH_PROXY_SSM_SIGN_WEBSOCKET")]
    pub ssm_sign_websocket: bool,

    /// AWS region for tokens. Default: taken from the endpoint name (RDS, DSQL and Redshift names
    /// carry it), else from the AWS configuration (AWS_REGION, profile).
    #[arg(long, env = "RDS_AUTH_PROXY_REGION")]
    pub region: Option<String>,

    /// AWS profile from ~/.aws/config to take credentials and region from.
    #[arg(long, env = "RDS_AUTH_PROXY_PROFILE")]
    pub profile: Option<String>,

    /// Log in as this database user, whatever user the client names. Default: the client's user.
    #[arg(long, env = "RDS_AUTH_PROXY_DB_USER")]
    pub db_user: Option<String>,

    /// For a password (SCRAM/MD5) database user: read its password from this AWS Secrets Manager
    /// secret (name or ARN), with your AWS credentials. Kept in memory only, read again when a
    /// login fails (rotation; at most every 30 s). Only its user gets it (--password-user);
    /// other users are IAM users.
    #[arg(long, value_name = "ARN_OR_NAME", env = "RDS_AUTH_PROXY_PASSWORD_SECRET")]
    pub password_secret: Option<String>,

    /// The JSON key holding the password when the secret is JSON (RDS's managed secret:
    /// {"username": …, "password": …}). A secret that is not JSON is the password itself.
    /// Default: password.
    #[arg(long, value_name = "KEY", env = "RDS_AUTH_PROXY_PASSWORD_SECRET_KEY")]
    pub password_secret_key: Option<String>,

    /// For a password (SCRAM/MD5) database user: read its password from FILE (the password
    /// alone on one line; the file must be readable by its owner only, chmod 600).
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    /// The database user whose logins get the password of --password-file or --password-secret;
    /// every other user keeps IAM tokens. Default: the secret's "username" (RDS's managed
    /// secret has one), else --db-user.
    #[arg(long, value_name = "NAME", env = "RDS_AUTH_PROXY_PASSWORD_USER")]
    pub password_user: Option<String>,

    /// The config file's `[[target.password]]` tables: more password users of this target.
    #[arg(skip)]
    pub password_tables: Vec<crate::auth::password::PasswordUser>,

    /// A PEM file of extra CA certificates to trust besides the built-in RDS bundle, for every
    /// endpoint except RDS Proxy, Aurora DSQL and Redshift endpoints (see --proxy-ca-bundle).
    /// Repeatable.
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_CA_BUNDLE")]
    pub ca_bundle: Vec<PathBuf>,

    /// Refuse new client connections beyond this many at once (0 = no limit). Default: no limit,
    /// 100 with --allow-remote.
    #[arg(long, value_name = "N", env = "RDS_AUTH_PROXY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Keep up to N upstream connections per kind of client opened and logged in ahead of time,
    /// so a new connection of that kind starts at once: no tunnel round trip, no login (worth
    /// most through --via ssm on a distant network). A kind is the exact startup parameters a
    /// client sends (user, database, application_name, client_encoding, options …); spares are
    /// opened in the background once a client of that kind has logged in, for the 4 kinds seen
    /// last, and refilled while the kind is in use. Each is a real server connection (it counts
    /// against the database's max_connections) and a login every --spare-max-age. 0 = off.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=crate::spare::MAX_PER_KEY as u64), env = "RDS_AUTH_PROXY_SPARE_CONNECTIONS")]
    pub spare_connections: usize,

    /// With --spare-connections: close a spare connection unused for this many seconds (with
    /// Terminate) and open a fresh one if its kind of client is still in use. A spare never
    /// outlives the IAM token or AWS credentials it logged in with (15 minutes at most).
    #[arg(long, value_name = "SECONDS", default_value_t = crate::spare::DEFAULT_MAX_AGE.as_secs(), value_parser = clap::value_parser!(u64).range(1..=crate::spare::MAX_MAX_AGE.as_secs()), env = "RDS_AUTH_PROXY_SPARE_MAX_AGE")]
    pub spare_max_age: u64,

    /// On SIGTERM/Ctrl-C, stop accepting at once and wait this long for open connections to
    /// finish; then each remaining client gets "terminating connection due to administrator
    /// command" (57P01). A second Ctrl-C exits at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, env = "RDS_AUTH_PROXY_DRAIN_TIMEOUT")]
    pub drain_timeout: u64,

    /// End each client connection DURATION after its upstream login (seconds, or e.g. 55m, 1h;
    /// 0 = no limit, the default), telling the client in PostgreSQL's own terms instead of
    /// leaving it a broken connection: a NOTICE 55/60 of the way, then FATAL 57P01
    /// "terminating connection" (which pools and drivers take as "reconnect") at the first
    /// idle moment after 59/60 of it, or at the limit itself between two server messages.
    /// Aurora DSQL ends every connection after 60 minutes without a word; any target can use
    /// it, e.g. to move long-lived connections to new servers behind a load balancer.
    #[arg(long, value_name = "DURATION", value_parser = crate::connection_age::parse, env = "RDS_AUTH_PROXY_MAX_CONNECTION_AGE")]
    pub max_connection_age: Option<std::time::Duration>,

    /// Offer TLS to clients (answer SSLRequest with S), for clients and copied connection
    /// strings that insist on sslmode=require or verify-full. The certificate (localhost,
    /// 127.0.0.1, ::1) is issued at start by a local CA kept in --local-tls-ca-out, which clients
    /// give as sslrootcert for verify-full. Without it, SSLRequest is answered N.
    #[arg(long, env = "RDS_AUTH_PROXY_LOCAL_TLS")]
    pub local_tls: bool,

    /// With --local-tls: where the local CA certificate is kept (created on first use, reused
    /// after; its key beside it as .key, mode 0600). Default:
    /// ~/.config/rds-auth-proxy/local-ca.pem ($XDG_CONFIG_HOME respected).
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_LOCAL_TLS_CA_OUT")]
    pub local_tls_ca_out: Option<PathBuf>,

    /// Serve this PEM certificate chain to clients instead of a generated one (implies
    /// --local-tls; needs --local-tls-key).
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_LOCAL_TLS_CERT")]
    pub local_tls_cert: Option<PathBuf>,

    /// The PEM private key of --local-tls-cert.
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_LOCAL_TLS_KEY")]
    pub local_tls_key: Option<PathBuf>,

    /// Instead of --target: find the endpoint and port of this RDS DB instance by its
    /// identifier (rds:DescribeDBInstances). Refused early when IAM database authentication is
    /// off, the engine is not PostgreSQL, or it is not available.
    #[arg(long, value_name = "NAME", env = "RDS_AUTH_PROXY_DB_INSTANCE", conflicts_with_all = ["target", "db_cluster"])]
    pub db_instance: Option<String>,

    /// Instead of --target: the writer endpoint of this Aurora PostgreSQL cluster
    /// (rds:DescribeDBClusters); with --reader its reader endpoint.
    #[arg(long, value_name = "NAME", env = "RDS_AUTH_PROXY_DB_CLUSTER", conflicts_with = "target")]
    pub db_cluster: Option<String>,

    /// With --db-cluster: connect to the cluster's reader endpoint.
    #[arg(long, requires = "db_cluster", env = "RDS_AUTH_PROXY_READER")]
    pub reader: bool,

    /// The database service behind the endpoint: rds (RDS and Aurora PostgreSQL, RDS Proxy),
    /// dsql (Aurora DSQL), redshift (a provisioned cluster) or redshift-serverless. Each logs in
    /// its own way (an RDS IAM token; a DSQL token; Redshift temporary credentials, with the
    /// user they name). Default: told from the endpoint name (ID.dsql.REGION.on.aws,
    /// CLUSTER.HASH.REGION.redshift.amazonaws.com, WORKGROUP.ACCOUNT.REGION.redshift-serverless
    /// .amazonaws.com), else rds; give it for a custom domain name or a load balancer's.
    #[arg(long, value_enum, value_name = "ENGINE", env = "RDS_AUTH_PROXY_ENGINE")]
    pub engine: Option<crate::engine::Engine>,

    /// Aurora DSQL: the cluster id (dsql:GetCluster finds its endpoint when --target is not
    /// given). Implies --engine dsql.
    #[arg(long, value_name = "ID", env = "RDS_AUTH_PROXY_DSQL_CLUSTER", conflicts_with_all = ["db_instance", "db_cluster", "redshift_cluster", "redshift_workgroup"])]
    pub dsql_cluster: Option<String>,

    /// Amazon Redshift: the cluster identifier credentials are asked for (redshift
    /// :DescribeClusters finds its endpoint when --target is not given). Default: the first
    /// label of a Redshift endpoint name. Implies --engine redshift.
    #[arg(long, value_name = "NAME", env = "RDS_AUTH_PROXY_REDSHIFT_CLUSTER", conflicts_with_all = ["db_instance", "db_cluster", "redshift_workgroup"])]
    pub redshift_cluster: Option<String>,

    /// Amazon Redshift Serverless: the workgroup credentials are asked for (redshift-serverless
    /// :GetWorkgroup finds its endpoint when --target is not given). Default: the first label
    /// of a Serverless endpoint name. Implies --engine redshift-serverless.
    #[arg(long, value_name = "NAME", env = "RDS_AUTH_PROXY_REDSHIFT_WORKGROUP", conflicts_with_all = ["db_instance", "db_cluster"])]
    pub redshift_workgroup: Option<String>,

    /// Amazon Redshift (provisioned): how the database user is chosen. db-user: the client's
    /// user (redshift:GetClusterCredentials, logged in as IAM:USER); iam: the user follows your
    /// IAM identity whatever the client names (redshift:GetClusterCredentialsWithIAM, IAM:NAME
    /// or IAMR:ROLE). Serverless always follows the IAM identity.
    #[arg(long, value_enum, value_name = "HOW", default_value = "db-user", env = "RDS_AUTH_PROXY_REDSHIFT_AUTH")]
    pub redshift_auth: crate::engine::RedshiftAuth,

    /// Amazon Redshift with --redshift-auth db-user: create the database user at its first
    /// login if it does not exist (AutoCreate; needs redshift:CreateClusterUser).
    #[arg(long, env = "RDS_AUTH_PROXY_REDSHIFT_AUTO_CREATE")]
    pub redshift_auto_create: bool,

    /// Amazon Redshift with --redshift-auth db-user: database groups the user joins for the
    /// session (DbGroups; needs redshift:JoinGroup on each). Comma-separated or repeated.
    #[arg(long, value_name = "GROUP", value_delimiter = ',', env = "RDS_AUTH_PROXY_REDSHIFT_DB_GROUPS")]
    pub redshift_db_groups: Vec<String>,

    /// SSM mode with --ssm-target auto: only nodes with this tag (repeatable; all must match).
    /// auto picks the online node (SSM DescribeInstanceInformation) with the smallest id.
    #[arg(long, value_name = "KEY=VALUE", env = "RDS_AUTH_PROXY_SSM_TAG", value_delimiter = ',')]
    pub ssm_tag: Vec<String>,

    /// Serve /startup, /readiness, /liveness and /metrics (Prometheus) over HTTP on this address
    /// (default 127.0.0.1 when --http-port is given). Off unless one of the two is given.
    #[arg(long, value_name = "ADDRESS", env = "RDS_AUTH_PROXY_HTTP_ADDRESS")]
    pub http_address: Option<IpAddr>,

    /// The HTTP port for health checks and metrics (default 9090 when --http-address is given).
    #[arg(long, value_name = "PORT", env = "RDS_AUTH_PROXY_HTTP_PORT")]
    pub http_port: Option<u16>,

    /// Exit with 0 instead of 143 after a SIGTERM (for service managers that call 143 a failure).
    #[arg(long, env = "RDS_AUTH_PROXY_EXIT_ZERO_ON_SIGTERM")]
    pub exit_zero_on_sigterm: bool,

    /// With --allow-remote: clients from other hosts must log in to the proxy with the password
    /// in FILE (SCRAM-SHA-256; alone on one line, file readable by its owner only, chmod 600).
    /// Clients on this host (loopback, the Unix socket) need none.
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_CLIENT_PASSWORD_FILE")]
    pub client_password_file: Option<PathBuf>,

    /// With --allow-remote and --local-tls: clients from other hosts may log in with a client
    /// certificate issued by a CA in this PEM file (sslcert/sslkey) instead of the client
    /// password; its CN must be the database user name they connect as.
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// For endpoints with Amazon Trust Services (ACM) certificates — RDS Proxy
    /// (NAME.proxy-ID.REGION.rds.amazonaws.com), Aurora DSQL and Redshift — only: trust exactly
    /// the CA certificates in this PEM file instead of the built-in Amazon Trust Services roots.
    /// Repeatable. Other endpoints ignore it.
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_PROXY_CA_BUNDLE")]
    pub proxy_ca_bundle: Vec<PathBuf>,
}

/// The HTTP port when only --http-address is given.
pub const DEFAULT_HTTP_PORT: u16 = 9090;

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The RDS endpoint name.
    #[arg(long, value_name = "ENDPOINT", env = "RDS_AUTH_PROXY_TOKEN_HOSTNAME")]
    pub hostname: String,
    /// The database port the token is for.
    #[arg(long, default_value_t = 5432, env = "RDS_AUTH_PROXY_TOKEN_PORT")]
    pub port: u16,
    /// AWS region (default: from the endpoint name, else the AWS configuration).
    #[arg(long, env = "RDS_AUTH_PROXY_REGION")]
    pub region: Option<String>,
    /// The database user.
    #[arg(long, value_name = "DB_USER", env = "RDS_AUTH_PROXY_TOKEN_USERNAME")]
    pub username: String,
    /// AWS profile to sign with.
    #[arg(long, env = "RDS_AUTH_PROXY_PROFILE")]
    pub profile: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["rds-auth-proxy", "--target", "db.x.eu-west-1.rds.amazonaws.com"]).unwrap();
        assert_eq!(cli.proxy.port, 6543);
        assert_eq!(cli.proxy.address.to_string(), "127.0.0.1");
        assert_eq!(cli.proxy.via, Via::Direct);
        assert!(cli.command.is_none());
    }
}
