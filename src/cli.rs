//! The command line: flags (each also readable from `RDS_AUTH_PROXY_<FLAG>`), subcommands and
//! the help text that teaches how to use them. Parsing only; [`crate::config`] validates.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "A password-less local PostgreSQL endpoint for Amazon RDS: IAM tokens, \
verify-full TLS and (soon) a built-in SSM tunnel, in one process.";

const LONG_ABOUT: &str = "\
rds-auth-proxy listens on 127.0.0.1:6543 and accepts PostgreSQL connections without a password. \
For each one it connects to your RDS endpoint, verifies the server certificate against the RDS CA \
bundle for the endpoint's own name (verify-full), answers the password request with a freshly \
signed RDS IAM token from your normal AWS credentials (profiles, SSO, env, roles), and then relays \
the connection unchanged.";

const EXAMPLES: &str = "\
Examples:
  # Reach an RDS instance you can route to (VPN, inside the VPC):
  rds-auth-proxy --target mydb.abc123.eu-central-1.rds.amazonaws.com --via direct
  psql -h localhost -p 6543 -U db_user postgres

  # Through a port forward you already run (TLS still verifies the endpoint name):
  rds-auth-proxy --target mydb.abc123.eu-central-1.rds.amazonaws.com --connect-addr 127.0.0.1:15432

  # Try it with no AWS at hand (simulated RDS + a throwaway local PostgreSQL):
  rds-auth-proxy demo

  # Print a token, like `aws rds generate-db-auth-token`:
  rds-auth-proxy token --hostname mydb.abc123.eu-central-1.rds.amazonaws.com --port 5432 \\
      --region eu-central-1 --username db_user

Every flag can also be set as an environment variable RDS_AUTH_PROXY_<FLAG>, e.g.
RDS_AUTH_PROXY_TARGET, RDS_AUTH_PROXY_PORT. Logs go to stderr; RUST_LOG=debug shows more.";

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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print an RDS IAM auth token (same arguments and output as `aws rds generate-db-auth-token`).
    Token(TokenArgs),
    /// Run the local AWS simulator (RDS front + throwaway PostgreSQL) and print its settings as
    /// `export NAME=value` lines, then `ready`.
    Sim(SimArgs),
    /// Start the simulator and the proxy wired together on 127.0.0.1:6543, and print the psql
    /// line to try.
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Connect straight to the endpoint (or --connect-addr) over TCP.
    Direct,
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
    /// The RDS endpoint name, as RDS shows it, with an optional port (default 5432). TLS verifies
    /// this name and IAM tokens are signed for it.
    #[arg(long, value_name = "ENDPOINT[:PORT]", env = "RDS_AUTH_PROXY_TARGET")]
    pub target: Option<String>,

    /// Local address to listen on. A non-loopback address also needs --allow-remote.
    #[arg(short = 'a', long, default_value = "127.0.0.1", env = "RDS_AUTH_PROXY_ADDRESS")]
    pub address: IpAddr,

    /// Accept a non-loopback --address: anyone who can reach it logs in as your IAM identity.
    #[arg(long, env = "RDS_AUTH_PROXY_ALLOW_REMOTE")]
    pub allow_remote: bool,

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

    /// AWS region for tokens. Default: taken from an *.rds.amazonaws.com endpoint name, else
    /// from the AWS configuration (AWS_REGION, profile).
    #[arg(long, env = "RDS_AUTH_PROXY_REGION")]
    pub region: Option<String>,

    /// AWS profile from ~/.aws/config to take credentials and region from.
    #[arg(long, env = "RDS_AUTH_PROXY_PROFILE")]
    pub profile: Option<String>,

    /// Log in as this database user, whatever user the client names. Default: the client's user.
    #[arg(long, env = "RDS_AUTH_PROXY_DB_USER")]
    pub db_user: Option<String>,

    /// A PEM file of extra CA certificates to trust besides the built-in RDS bundle (e.g. Amazon
    /// Root CAs for RDS Proxy). Repeatable.
    #[arg(long, value_name = "FILE", env = "RDS_AUTH_PROXY_CA_BUNDLE")]
    pub ca_bundle: Vec<PathBuf>,

    /// Refuse new client connections beyond this many at once (0 = no limit).
    #[arg(long, default_value_t = 0, env = "RDS_AUTH_PROXY_MAX_CONNECTIONS")]
    pub max_connections: usize,

    /// On SIGTERM/Ctrl-C, wait this long for open connections to finish.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, env = "RDS_AUTH_PROXY_DRAIN_TIMEOUT")]
    pub drain_timeout: u64,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The RDS endpoint name.
    #[arg(long, env = "RDS_AUTH_PROXY_HOSTNAME")]
    pub hostname: String,
    /// The database port the token is for.
    #[arg(long, default_value_t = 5432, env = "RDS_AUTH_PROXY_TOKEN_PORT")]
    pub port: u16,
    /// AWS region (default: from the endpoint name, else the AWS configuration).
    #[arg(long, env = "RDS_AUTH_PROXY_REGION")]
    pub region: Option<String>,
    /// The database user.
    #[arg(long, env = "RDS_AUTH_PROXY_USERNAME")]
    pub username: String,
    /// AWS profile to sign with.
    #[arg(long, env = "RDS_AUTH_PROXY_PROFILE")]
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Address for the simulated RDS endpoint (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:0", env = "RDS_AUTH_PROXY_SIM_LISTEN")]
    pub listen: std::net::SocketAddr,
    /// Database users the simulated RDS treats as password (SCRAM) users instead of IAM users.
    #[arg(long, value_name = "USER", env = "RDS_AUTH_PROXY_SIM_PASSWORD_USER")]
    pub password_user: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Local TCP port for the proxy.
    #[arg(short = 'p', long, default_value_t = 6543, env = "RDS_AUTH_PROXY_PORT")]
    pub port: u16,
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
