//! Typed, validated configuration built from the parsed flags: the target, the listener and how
//! to reach the upstream. Everything a user can get wrong is caught here with a one-line reason.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{ProxyArgs, Via};
use crate::engine::{Engine, EngineSettings, RedshiftAuth};
use crate::local_tls::LocalTlsConfig;
use crate::target::Timeouts;
use crate::tls::DirectTls;

/// The default PostgreSQL port of an RDS endpoint.
pub const DEFAULT_DB_PORT: u16 = 5432;

/// `--max-connections` when not given with `--allow-remote`: a shared listener is bounded.
pub const DEFAULT_REMOTE_MAX_CONNECTIONS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    pub address: SocketAddr,
    pub unix_socket_dir: Option<PathBuf>,
    pub max_connections: usize,
    pub drain_timeout: Duration,
    /// `--client-password-file`: remote (non-loopback) clients log in with this password.
    pub client_password_file: Option<PathBuf>,
    /// `--client-ca-file` (with local TLS): remote clients may log in with a certificate from
    /// this CA whose CN is their user name.
    pub client_ca_file: Option<PathBuf>,
    /// `--allow-local-users`: loopback TCP clients of any OS user get in, not only the
    /// proxy's own.
    pub allow_local_users: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViaConfig {
    /// Dial this `host:port`.
    Direct { connect_addr: String },
    /// Through SSM port-forwarding sessions on a managed node.
    Ssm(SsmConfig),
}

/// `--via ssm` settings; the node dials the target's endpoint and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsmConfig {
    /// The managed node id (`i-…`, `mi-…`).
    pub node: String,
    /// Most SSM sessions open at once.
    pub sessions: usize,
    /// Terminate a session unused for this long.
    pub idle_timeout: Duration,
    /// SigV4-sign the WebSocket upgrade.
    pub sign_websocket: bool,
    /// smux keepalive period while connections are open.
    pub keepalive: Duration,
    /// Largest Output payload per data-channel message.
    pub max_payload: usize,
    /// Data-channel messages per second per session; 0 = unpaced.
    pub max_rate: u32,
    /// `--ssm-prewarm`: open a session at start and always keep one open.
    pub prewarm: bool,
    /// Give up a connection whose client has not read a full buffer for this long.
    pub stall_timeout: Duration,
}

pub use crate::auth::password::{PasswordConfig, PasswordUser};

/// `--password-secret-key` when not given: the key of RDS's managed master user secret.
pub const DEFAULT_SECRET_KEY: &str = "password";

/// Most `--ssm-sessions`: each is a WebSocket, a task and AWS-side state; beyond this it is
/// almost certainly a typo.
pub const MAX_SSM_SESSIONS: usize = 64;

/// Largest `--ssm-max-payload`: one smux frame of 32 KiB plus its header fits.
pub const MAX_SSM_PAYLOAD: usize = 64 * 1024;

/// The validated configuration of one proxied target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// What logs and metrics call this target. Default: the endpoint host name.
    pub name: String,
    pub endpoint: String,
    pub port: u16,
    /// From `--region` or the endpoint name; `None` means "ask the AWS configuration".
    pub region: Option<String>,
    pub profile: Option<String>,
    pub listen: ListenConfig,
    pub via: ViaConfig,
    pub db_user: Option<String>,
    pub ca_bundles: Vec<PathBuf>,
    pub timeouts: Timeouts,
    /// `--http-address`/`--http-port`: where health checks and metrics are served, if at all.
    pub http: Option<SocketAddr>,
    /// `--exit-zero-on-sigterm`: exit 0, not 143, after a SIGTERM drain (process-wide).
    pub exit_zero_on_sigterm: bool,
    /// Password users, each with where its password comes from; every other user is an IAM
    /// user (tokens).
    pub passwords: Vec<PasswordUser>,
    /// The instance's DbiResourceId when `--db-instance` looked it up: named in the
    /// `rds-db:connect` ARN of the hint when RDS refuses a token.
    pub dbi_resource_id: Option<String>,
    /// `--local-tls`: TLS towards clients; `None`: SSLRequest is answered `N`.
    pub local_tls: Option<LocalTlsConfig>,
    /// `--proxy-ca-bundle`: the roots for an RDS Proxy endpoint instead of the built-in Amazon
    /// Trust Services roots ([`crate::tls::TrustStore`]).
    pub proxy_ca_bundles: Vec<PathBuf>,
    /// `--direct-tls`: when to open TLS without an SSLRequest (PostgreSQL 17 and later).
    pub direct_tls: DirectTls,
    /// `--spare-connections`, `--spare-max-age`.
    pub spares: crate::spare::SpareSettings,
    /// `--engine` and what each engine's login needs.
    pub engine: EngineSettings,
    /// `--max-connection-age`: how long one client connection may last upstream (`None`: no
    /// limit). See [`max_connection_age`].
    pub max_connection_age: Option<Duration>,
}


#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--target is required: the RDS endpoint name, e.g. --target mydb.abc123.eu-central-1.rds.amazonaws.com (or find it by name: --db-instance NAME, --db-cluster NAME)")]
    MissingTarget,
    #[error("--target {0:?} is not a valid ENDPOINT[:PORT]")]
    BadTarget(String),
    #[error("--address {0} is not a loopback address; anyone who can reach it would log in as your AWS identity. Add --allow-remote, --local-tls and --client-password-file FILE if that is what you want")]
    RemoteAddress(IpAddr),
    #[error("--connect-addr {0:?} must be HOST:PORT")]
    BadConnectAddr(String),
    #[error("--unix-socket {0} is not an existing directory")]
    BadUnixSocketDir(PathBuf),
    #[error("--ca-bundle {0} does not exist")]
    MissingCaBundle(PathBuf),
    #[error("--proxy-ca-bundle {0} does not exist")]
    MissingProxyCaBundle(PathBuf),
    #[error("--db-user must not be empty")]
    EmptyDbUser,
    #[error("--via ssm needs --ssm-target: the id of an SSM managed node that can reach the database, e.g. --ssm-target i-0123456789abcdef0")]
    MissingSsmTarget,
    #[error("--ssm-target {0:?} is not a managed node id (i-…, mi-…)")]
    BadSsmTarget(String),
    #[error("--ssm-sessions must be between 1 and {MAX_SSM_SESSIONS}, not {0}")]
    BadSsmSessions(usize),
    #[error("--ssm-idle-timeout must be at least 1 second")]
    BadSsmIdleTimeout,
    #[error("--{0} only applies with --via ssm")]
    SsmFlagWithoutSsm(&'static str),
    #[error("--connect-addr only applies with --via direct")]
    ConnectAddrWithSsm,
    #[error("--ssm-keepalive must be at least 1 second")]
    BadSsmKeepalive,
    #[error("--ssm-stall-timeout must be at least 1 second")]
    BadSsmStallTimeout,
    #[error("--ssm-max-payload {0} must be between 1 and 65536 bytes")]
    BadSsmMaxPayload(usize),
    #[error("--password-file and --password-secret exclude each other: choose where the password comes from")]
    TwoPasswordSources,
    #[error("--password-secret-key only applies with --password-secret")]
    SecretKeyWithoutSecret,
    #[error("--password-secret must not be empty")]
    EmptyPasswordSecret,
    #[error("--password-file: {0}")]
    BadPasswordFile(String),
    #[error("--password-file: which database user is the password for? Add --password-user NAME (only that user's logins get it; others keep IAM tokens)")]
    NoPasswordUser,
    #[error("--password-user only applies with --password-file or --password-secret")]
    PasswordUserWithoutPassword,
    #[error("--password-user must not be empty")]
    EmptyPasswordUser,
    #[error("two passwords for database user \"{0}\": give each user one password source")]
    TwoPasswordsForUser(String),
    #[error("--allow-remote needs --client-password-file FILE, or --client-ca-file FILE with --local-tls: without one anyone who can reach the port would log in as your AWS identity. Either put a password alone on one line in a file only you can read (chmod 600), which clients on other hosts give (PGPASSWORD); or give the CA that issues your users' client certificates (CN = their database user name), which they present with sslcert/sslkey. Clients on this host still need neither")]
    RemoteWithoutClientPassword,
    #[error("--allow-remote needs --local-tls: clients on other hosts must use TLS, or their session (as your AWS identity) would cross the network in plaintext. Add --local-tls (clients then use sslmode=verify-full with sslrootcert=the local CA, or sslmode=require)")]
    RemoteWithoutLocalTls,
    #[error("--http-address {0} is not a loopback address: health checks and metrics would be served to other hosts. Add --allow-remote if that is what you want")]
    RemoteHttpAddress(IpAddr),
    #[error("--client-ca-file needs --local-tls: client certificates are presented in the TLS handshake")]
    ClientCaWithoutLocalTls,
    #[error("--client-ca-file only applies with --allow-remote (clients on this host never need a certificate)")]
    ClientCaWithoutRemote,
    #[error("--client-ca-file {0} does not exist")]
    MissingClientCaFile(PathBuf),
    #[error("--client-password-file only applies with --allow-remote (clients on this host never need a password)")]
    ClientPasswordWithoutRemote,
    #[error("--client-password-file: {0}")]
    BadClientPasswordFile(String),
    #[error("--local-tls-cert and --local-tls-key go together: give both")]
    LocalTlsCertWithoutKey,
    #[error("--local-tls-ca-out only applies to the generated certificate, not with --local-tls-cert")]
    LocalTlsCaOutWithCert,
    #[error("--{0} only applies with --local-tls")]
    LocalTlsFlagWithoutLocalTls(&'static str),
    #[error("--local-tls: no home directory to keep the local CA in (HOME is not set); give --local-tls-ca-out FILE")]
    NoLocalCaDir,
    #[error("--local-tls-cert/--local-tls-key {0} does not exist")]
    MissingLocalTlsFile(PathBuf),
    #[error("--engine {given} does not fit the endpoint name {endpoint}, which is an {says} name: leave --engine out, or give the endpoint of a {given} database")]
    EngineMismatch {
        given: Engine,
        endpoint: String,
        says: &'static str,
    },
    #[error("--{flag} is for {engine} targets, and this target is {actual} (--engine, or the endpoint name)")]
    EngineFlagMismatch {
        flag: &'static str,
        engine: &'static str,
        actual: Engine,
    },
    #[error("{engine} needs the {what} its credentials are asked for, and the endpoint name {endpoint} does not carry it: add --{flag} NAME")]
    MissingEngineResource {
        engine: &'static str,
        what: &'static str,
        endpoint: String,
        flag: &'static str,
    },
}

impl Config {
    pub fn from_args(args: &ProxyArgs) -> Result<Config, ConfigError> {
        let target = args.target.as_deref().ok_or(ConfigError::MissingTarget)?;
        let (endpoint, mut port) = parse_target(target)?;
        let engine = engine_config(args, &endpoint)?;
        if !target.contains(':') {
            port = engine.engine.default_port();
        }
        if !args.address.is_loopback() && !args.allow_remote {
            return Err(ConfigError::RemoteAddress(args.address));
        }
        let via = match args.via {
            Via::Direct => {
                let connect_addr = match &args.connect_addr {
                    Some(a) => {
                        validate_host_port(a)?;
                        a.clone()
                    }
                    None => format!("{endpoint}:{port}"),
                };
                if args.ssm_target.is_some() {
                    return Err(ConfigError::SsmFlagWithoutSsm("ssm-target"));
                }
                if !args.ssm_tag.is_empty() {
                    return Err(ConfigError::SsmFlagWithoutSsm("ssm-tag"));
                }
                if args.ssm_prewarm {
                    return Err(ConfigError::SsmFlagWithoutSsm("ssm-prewarm"));
                }
                ViaConfig::Direct { connect_addr }
            }
            Via::Ssm => ViaConfig::Ssm(ssm_config(args)?),
        };
        if let Some(dir) = &args.unix_socket {
            if !dir.is_dir() {
                return Err(ConfigError::BadUnixSocketDir(dir.clone()));
            }
        }
        for file in &args.ca_bundle {
            if !file.exists() {
                return Err(ConfigError::MissingCaBundle(file.clone()));
            }
        }
        if let Some(file) = args.proxy_ca_bundle.iter().find(|f| !f.exists()) {
            return Err(ConfigError::MissingProxyCaBundle(file.clone()));
        }
        if args.db_user.as_deref() == Some("") {
            return Err(ConfigError::EmptyDbUser);
        }
        let passwords = password_users(args)?;
        let local_tls = local_tls_config(args)?;
        let (client_password_file, client_ca_file) = client_auth_config(args, local_tls.is_some())?;
        let region = args.region.clone().or_else(|| infer_region(&endpoint));
        let http = http_address(args);
        if let Some(addr) = http.filter(|a| !a.ip().to_canonical().is_loopback() && !args.allow_remote) {
            return Err(ConfigError::RemoteHttpAddress(addr.ip()));
        }
        Ok(Config {
            region,
            profile: args.profile.clone(),
            listen: ListenConfig {
                address: SocketAddr::new(args.address, args.port),
                unix_socket_dir: args.unix_socket.clone(),
                max_connections: args
                    .max_connections
                    .unwrap_or(if args.allow_remote { DEFAULT_REMOTE_MAX_CONNECTIONS } else { 0 }),
                drain_timeout: Duration::from_secs(args.drain_timeout),
                client_password_file,
                client_ca_file,
                allow_local_users: args.allow_local_users,
            },
            via,
            db_user: args.db_user.clone(),
            ca_bundles: args.ca_bundle.clone(),
            proxy_ca_bundles: args.proxy_ca_bundle.clone(),
            timeouts: Timeouts::default(),
            dbi_resource_id: None,
            passwords,
            local_tls,
            http,
            exit_zero_on_sigterm: args.exit_zero_on_sigterm,
            direct_tls: args.direct_tls,
            spares: crate::spare::SpareSettings {
                per_key: args.spare_connections,
                max_age: Duration::from_secs(args.spare_max_age),
            },
            max_connection_age: max_connection_age(args, engine.engine),
            engine,
            name: endpoint.clone(),
            endpoint,
            port,
        })
    }
}

/// The engine (`--engine`, implied by `--dsql-cluster`/`--redshift-cluster`/
/// `--redshift-workgroup`, else told by the endpoint name, else RDS) and what its login needs.
fn engine_config(args: &ProxyArgs, endpoint: &str) -> Result<EngineSettings, ConfigError> {
    let parts = crate::engine::parse_endpoint(endpoint);
    let implied = if args.dsql_cluster.is_some() {
        Some(Engine::Dsql)
    } else if args.redshift_workgroup.is_some() {
        Some(Engine::RedshiftServerless)
    } else if args.redshift_cluster.is_some() {
        Some(Engine::Redshift)
    } else {
        None
    };
    let engine = match (args.engine, implied) {
        (Some(given), Some(implied)) if given != implied => {
            let flag = match implied {
                Engine::Dsql => "dsql-cluster",
                Engine::RedshiftServerless => "redshift-workgroup",
                _ => "redshift-cluster",
            };
            return Err(ConfigError::EngineFlagMismatch {
                flag,
                engine: implied.as_str(),
                actual: given,
            });
        }
        (Some(engine), _) | (None, Some(engine)) => engine,
        (None, None) => parts.as_ref().map_or(Engine::Rds, |p| p.engine),
    };
    // A name of one engine forced to another is a mistake (an RDS name stays RDS); a name that
    // tells nothing (a custom domain, a load balancer, an IP) takes any engine.
    let kind = crate::tls::classify_endpoint(endpoint);
    let named = match &parts {
        Some(p) => Some(p.engine),
        None if kind == crate::tls::EndpointKind::Other => None,
        None => Some(Engine::Rds),
    };
    if named.is_some_and(|named| named != engine) {
        let says = kind.as_str();
        return Err(ConfigError::EngineMismatch {
            given: engine,
            endpoint: endpoint.to_owned(),
            says,
        });
    }
    let from_name = parts.and_then(|p| p.resource);
    let resource = match engine {
        Engine::Rds => None,
        Engine::Dsql => args.dsql_cluster.clone().or(from_name),
        Engine::Redshift => Some(args.redshift_cluster.clone().or(from_name).ok_or_else(|| {
            ConfigError::MissingEngineResource {
                engine: "Amazon Redshift",
                what: "cluster identifier",
                endpoint: endpoint.to_owned(),
                flag: "redshift-cluster",
            }
        })?),
        Engine::RedshiftServerless => Some(args.redshift_workgroup.clone().or(from_name).ok_or_else(|| {
            ConfigError::MissingEngineResource {
                engine: "Amazon Redshift Serverless",
                what: "workgroup name",
                endpoint: endpoint.to_owned(),
                flag: "redshift-workgroup",
            }
        })?),
    };
    let redshift_only = [
        ("redshift-auth", args.redshift_auth != RedshiftAuth::DbUser),
        ("redshift-auto-create", args.redshift_auto_create),
        ("redshift-db-groups", !args.redshift_db_groups.is_empty()),
    ];
    if let Some((flag, _)) = redshift_only.iter().find(|(_, set)| *set).filter(|_| engine != Engine::Redshift) {
        return Err(ConfigError::EngineFlagMismatch {
            flag,
            engine: Engine::Redshift.as_str(),
            actual: engine,
        });
    }
    if args.redshift_auth == RedshiftAuth::Iam {
        for (flag, set) in &redshift_only[1..] {
            if *set {
                return Err(ConfigError::EngineFlagMismatch {
                    flag,
                    engine: "redshift --redshift-auth db-user",
                    actual: engine,
                });
            }
        }
    }
    Ok(EngineSettings {
        engine,
        resource,
        redshift_auth: args.redshift_auth,
        redshift_auto_create: args.redshift_auto_create,
        redshift_db_groups: args.redshift_db_groups.clone(),
    })
}

/// `--max-connection-age`: an explicit 0 is no limit; absent, the limit of an engine that ends
/// connections itself (Aurora DSQL's 60 minutes, [`Engine::connection_limit`]), else none.
fn max_connection_age(args: &ProxyArgs, engine: Engine) -> Option<Duration> {
    match args.max_connection_age {
        Some(age) if age.is_zero() => None,
        Some(age) => Some(age),
        None => engine.connection_limit(),
    }
}

fn local_tls_config(args: &ProxyArgs) -> Result<Option<LocalTlsConfig>, ConfigError> {
    match (&args.local_tls_cert, &args.local_tls_key) {
        (Some(cert), Some(key)) => {
            if args.local_tls_ca_out.is_some() {
                return Err(ConfigError::LocalTlsCaOutWithCert);
            }
            for file in [cert, key] {
                if !file.is_file() {
                    return Err(ConfigError::MissingLocalTlsFile(file.clone()));
                }
            }
            Ok(Some(LocalTlsConfig::Files {
                cert: cert.clone(),
                key: key.clone(),
            }))
        }
        (Some(_), None) | (None, Some(_)) => Err(ConfigError::LocalTlsCertWithoutKey),
        (None, None) if !args.local_tls => match args.local_tls_ca_out {
            Some(_) => Err(ConfigError::LocalTlsFlagWithoutLocalTls("local-tls-ca-out")),
            None => Ok(None),
        },
        (None, None) => {
            let ca_cert = match &args.local_tls_ca_out {
                Some(path) => path.clone(),
                None => crate::local_tls::default_ca_path(
                    std::env::var("XDG_CONFIG_HOME").ok().as_deref(),
                    std::env::var("HOME").ok().as_deref(),
                )
                .ok_or(ConfigError::NoLocalCaDir)?,
            };
            Ok(Some(LocalTlsConfig::Generated { ca_cert }))
        }
    }
}

/// Either HTTP flag turns the server on; the other takes its default.
fn http_address(args: &ProxyArgs) -> Option<SocketAddr> {
    if args.http_address.is_none() && args.http_port.is_none() {
        return None;
    }
    Some(SocketAddr::new(
        args.http_address.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        args.http_port.unwrap_or(crate::cli::DEFAULT_HTTP_PORT),
    ))
}

fn password_config(args: &ProxyArgs) -> Result<Option<PasswordConfig>, ConfigError> {
    match (&args.password_file, &args.password_secret) {
        (Some(_), Some(_)) => Err(ConfigError::TwoPasswordSources),
        (Some(file), None) => {
            if args.password_secret_key.is_some() {
                return Err(ConfigError::SecretKeyWithoutSecret);
            }
            // Checked now (owner-only, one non-empty line) so a bad file stops the start, not
            // the first connection; the password read here is dropped at once.
            crate::auth::password::read_password_file(file)
                .map_err(|e| ConfigError::BadPasswordFile(e.to_string()))?;
            Ok(Some(PasswordConfig::File(file.clone())))
        }
        (None, Some(secret_id)) => {
            if secret_id.is_empty() {
                return Err(ConfigError::EmptyPasswordSecret);
            }
            Ok(Some(PasswordConfig::Secret {
                secret_id: secret_id.clone(),
                key: args
                    .password_secret_key
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SECRET_KEY.to_owned()),
            }))
        }
        (None, None) if args.password_secret_key.is_some() => Err(ConfigError::SecretKeyWithoutSecret),
        (None, None) => Ok(None),
    }
}

/// The flags' password source, for `--password-user`, else `--db-user`, else (a secret) the
/// secret's `username`; then the config file's `[[target.password]]` tables. One source per user.
fn password_users(args: &ProxyArgs) -> Result<Vec<PasswordUser>, ConfigError> {
    if args.password_user.as_deref() == Some("") {
        return Err(ConfigError::EmptyPasswordUser);
    }
    let mut users = Vec::new();
    match password_config(args)? {
        Some(source) => {
            let user = args.password_user.clone().or_else(|| args.db_user.clone());
            if user.is_none() && matches!(source, PasswordConfig::File(_)) {
                return Err(ConfigError::NoPasswordUser);
            }
            users.push(PasswordUser { user, source });
        }
        None if args.password_user.is_some() => return Err(ConfigError::PasswordUserWithoutPassword),
        None => {}
    }
    users.extend(args.password_tables.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = users.iter().filter_map(|u| u.user.as_ref()).find(|u| !seen.insert(*u)) {
        return Err(ConfigError::TwoPasswordsForUser(twice.clone()));
    }
    Ok(users)
}

/// A shared listener (`--allow-remote`) always has a client credential: a client password, or
/// a client CA over local TLS (certificates need TLS); and either only comes with a shared
/// listener.
fn client_auth_config(args: &ProxyArgs, local_tls: bool) -> Result<(Option<PathBuf>, Option<PathBuf>), ConfigError> {
    if let Some(ca) = &args.client_ca_file {
        if !local_tls {
            return Err(ConfigError::ClientCaWithoutLocalTls);
        }
        if !args.allow_remote {
            return Err(ConfigError::ClientCaWithoutRemote);
        }
        if !ca.is_file() {
            return Err(ConfigError::MissingClientCaFile(ca.clone()));
        }
    }
    let password = match (&args.client_password_file, args.allow_remote) {
        (None, true) if args.client_ca_file.is_none() => return Err(ConfigError::RemoteWithoutClientPassword),
        (Some(_), false) => return Err(ConfigError::ClientPasswordWithoutRemote),
        (Some(file), true) => {
            // Checked now, like --password-file, so a bad file stops the start.
            crate::auth::password::read_password_file(file)
                .map_err(|e| ConfigError::BadClientPasswordFile(e.to_string()))?;
            Some(file.clone())
        }
        (None, _) => None,
    };
    if args.allow_remote && !local_tls {
        return Err(ConfigError::RemoteWithoutLocalTls);
    }
    Ok((password, args.client_ca_file.clone()))
}

fn ssm_config(args: &ProxyArgs) -> Result<SsmConfig, ConfigError> {
    if args.connect_addr.is_some() {
        return Err(ConfigError::ConnectAddrWithSsm);
    }
    let node = args.ssm_target.as_deref().ok_or(ConfigError::MissingSsmTarget)?;
    if !is_managed_node_id(node) {
        return Err(ConfigError::BadSsmTarget(node.to_owned()));
    }
    if args.ssm_sessions == 0 || args.ssm_sessions > MAX_SSM_SESSIONS {
        return Err(ConfigError::BadSsmSessions(args.ssm_sessions));
    }
    if args.ssm_idle_timeout == 0 {
        return Err(ConfigError::BadSsmIdleTimeout);
    }
    if args.ssm_keepalive == 0 {
        return Err(ConfigError::BadSsmKeepalive);
    }
    if args.ssm_stall_timeout == 0 {
        return Err(ConfigError::BadSsmStallTimeout);
    }
    if !(1..=MAX_SSM_PAYLOAD).contains(&args.ssm_max_payload) {
        return Err(ConfigError::BadSsmMaxPayload(args.ssm_max_payload));
    }
    Ok(SsmConfig {
        node: node.to_owned(),
        sessions: args.ssm_sessions,
        idle_timeout: Duration::from_secs(args.ssm_idle_timeout),
        sign_websocket: args.ssm_sign_websocket,
        keepalive: Duration::from_secs(args.ssm_keepalive),
        stall_timeout: Duration::from_secs(args.ssm_stall_timeout),
        max_payload: args.ssm_max_payload,
        max_rate: args.ssm_max_rate,
        prewarm: args.ssm_prewarm,
    })
}

/// `i-` or `mi-` followed by hex, as EC2 and hybrid activations name nodes. Other targets
/// (ECS tasks) are not port-forwarding nodes for us.
fn is_managed_node_id(id: &str) -> bool {
    let hex = id.strip_prefix("i-").or_else(|| id.strip_prefix("mi-"));
    hex.is_some_and(|h| (8..=32).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `ENDPOINT[:PORT]` → (endpoint, port).
pub fn parse_target(s: &str) -> Result<(String, u16), ConfigError> {
    let bad = || ConfigError::BadTarget(s.to_owned());
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None => (s, DEFAULT_DB_PORT),
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !host.starts_with(['.', '-']);
    if !valid_host || port == 0 {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

fn validate_host_port(s: &str) -> Result<(), ConfigError> {
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0) => Ok(()),
        _ => Err(ConfigError::BadConnectAddr(s.to_owned())),
    }
}

/// The region of an `*.rds.amazonaws.com` (or `.com.cn`) endpoint: the label before `rds` (in
/// China also after it); of a DSQL or Redshift endpoint: its region label.
pub fn infer_region(endpoint: &str) -> Option<String> {
    if let Some(parts) = crate::engine::parse_endpoint(endpoint) {
        return Some(parts.region);
    }
    let labels: Vec<&str> = endpoint.split('.').collect();
    let rds = labels.iter().rposition(|l| *l == "rds")?;
    let rest = &labels[rds + 1..];
    let region = match rest {
        ["amazonaws", "com"] | ["amazonaws", "com", "cn"] if rds >= 1 => labels[rds - 1],
        [region, "amazonaws", "com", "cn"] => region,
        _ => return None,
    };
    (region.split('-').count() >= 3).then(|| region.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn args(extra: &[&str]) -> ProxyArgs {
        let mut v = vec!["rds-auth-proxy"];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).unwrap().proxy
    }

    #[test]
    fn max_connection_age_table() {
        let with = |extra: &[&str]| Config::from_args(&args(&[&["--target", "db"][..], extra].concat())).map(|c| c.max_connection_age);
        assert_eq!(with(&[]), Ok(None), "no limit unless asked");
        assert_eq!(with(&["--max-connection-age", "0"]), Ok(None), "0 is no limit");
        assert_eq!(with(&["--max-connection-age", "3600"]), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(with(&["--max-connection-age", "55m"]), Ok(Some(Duration::from_secs(3300))));
        assert_eq!(with(&["--max-connection-age=1h"]), Ok(Some(Duration::from_secs(3600))));
        let err = Cli::try_parse_from(["rds-auth-proxy", "--target", "db", "--max-connection-age", "1 hour"]).unwrap_err().to_string();
        assert!(err.contains("\"1 hour\" is not a duration: give seconds, or a number with s, m or h"), "{err}");
    }

    #[test]
    fn spares_are_off_by_default_and_bounded() {
        let t = ["--target", "db.example"];
        let off = Config::from_args(&args(&t)).unwrap();
        assert_eq!(off.spares, crate::spare::SpareSettings { per_key: 0, max_age: Duration::from_secs(60) });
        let on = Config::from_args(&args(&[&t[..], &["--spare-connections", "2", "--spare-max-age", "900"]].concat())).unwrap();
        assert_eq!(on.spares, crate::spare::SpareSettings { per_key: 2, max_age: Duration::from_secs(900) });
        for bad in [["--spare-connections", "17"], ["--spare-max-age", "0"], ["--spare-max-age", "901"]] {
            let argv = [&["rds-auth-proxy"][..], &t, &bad].concat();
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn target_and_region_table() {
        let cases = [
            ("mydb.abc123.eu-central-1.rds.amazonaws.com", Ok(("mydb.abc123.eu-central-1.rds.amazonaws.com", 5432)), Some("eu-central-1")),
            ("MyDB.abc123.us-east-1.rds.amazonaws.com:6000", Ok(("mydb.abc123.us-east-1.rds.amazonaws.com", 6000)), Some("us-east-1")),
            ("c.cluster-ro-x.cn-north-1.rds.amazonaws.com.cn", Ok(("c.cluster-ro-x.cn-north-1.rds.amazonaws.com.cn", 5432)), Some("cn-north-1")),
            ("db.internal.example", Ok(("db.internal.example", 5432)), None),
            ("db:0", Err(()), None),
            ("db:x", Err(()), None),
            (":5432", Err(()), None),
            ("bad host", Err(()), None),
        ];
        for (input, expected, region) in cases {
            let got = parse_target(input);
            match expected {
                Ok((h, p)) => {
                    let (gh, gp) = got.unwrap();
                    assert_eq!((gh.as_str(), gp), (h, p), "{input}");
                    assert_eq!(infer_region(&gh).as_deref(), region, "{input}");
                }
                Err(()) => assert!(got.is_err(), "{input} accepted"),
            }
        }
    }

    #[test]
    fn engine_from_the_name_or_the_flags() {
        let dsql = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws";
        let c = Config::from_args(&args(&["--target", dsql])).unwrap();
        assert_eq!((c.engine.engine, c.port, c.region.as_deref()), (Engine::Dsql, 5432, Some("us-east-1")));
        assert_eq!(c.engine.resource.as_deref(), Some("abcdefghijklmnopqrstuvwxyz"));
        assert_eq!(c.max_connection_age, Some(Duration::from_secs(3600)), "DSQL's own limit by default");
        let c = Config::from_args(&args(&["--target", dsql, "--max-connection-age", "0"])).unwrap();
        assert_eq!(c.max_connection_age, None, "0 turns it off");
        let rs = "dw.abc123.eu-west-1.redshift.amazonaws.com";
        let c = Config::from_args(&args(&["--target", rs])).unwrap();
        assert_eq!((c.engine.engine, c.port, c.engine.resource.as_deref()), (Engine::Redshift, 5439, Some("dw")));
        assert_eq!(c.max_connection_age, None);
        let c = Config::from_args(&args(&["--target", &format!("{rs}:5440")])).unwrap();
        assert_eq!(c.port, 5440, "an explicit port wins");
        let wg = "wg.123456789012.eu-west-1.redshift-serverless.amazonaws.com";
        let c = Config::from_args(&args(&["--target", wg])).unwrap();
        assert_eq!((c.engine.engine, c.engine.resource.as_deref()), (Engine::RedshiftServerless, Some("wg")));
        // A name that says nothing takes --engine, with what the engine needs.
        let c = Config::from_args(&args(&["--target", "warehouse.example.com", "--redshift-cluster", "dw", "--redshift-auth", "iam"])).unwrap();
        assert_eq!((c.engine.engine, c.engine.resource.as_deref(), c.engine.redshift_auth), (Engine::Redshift, Some("dw"), RedshiftAuth::Iam));
        let c = Config::from_args(&args(&["--target", "db.example.com"])).unwrap();
        assert_eq!(c.engine.engine, Engine::Rds);
        // Mistakes, each one line.
        let e = Config::from_args(&args(&["--target", "warehouse.example.com", "--engine", "redshift"])).unwrap_err();
        assert!(e.to_string().contains("add --redshift-cluster NAME"), "{e}");
        let e = Config::from_args(&args(&["--target", "db.x.eu-west-1.rds.amazonaws.com", "--engine", "dsql"])).unwrap_err();
        assert_eq!(e.to_string(), "--engine dsql does not fit the endpoint name db.x.eu-west-1.rds.amazonaws.com, which is an RDS DB instance name: leave --engine out, or give the endpoint of a dsql database");
        let e = Config::from_args(&args(&["--target", dsql, "--engine", "redshift"])).unwrap_err();
        assert!(matches!(e, ConfigError::EngineMismatch { .. }), "{e}");
        let e = Config::from_args(&args(&["--target", "db.example.com", "--redshift-auto-create"])).unwrap_err();
        assert_eq!(e.to_string(), "--redshift-auto-create is for redshift targets, and this target is rds (--engine, or the endpoint name)");
        let e = Config::from_args(&args(&["--target", rs, "--redshift-auth", "iam", "--redshift-db-groups", "g"])).unwrap_err();
        assert!(matches!(e, ConfigError::EngineFlagMismatch { flag: "redshift-db-groups", .. }), "{e}");
        let e = Config::from_args(&args(&["--target", rs, "--engine", "redshift", "--dsql-cluster", "x"])).unwrap_err();
        assert!(matches!(e, ConfigError::EngineFlagMismatch { flag: "dsql-cluster", .. }), "{e}");
    }

    #[test]
    fn flags_map_into_config() {
        let c = Config::from_args(&args(&["--target", "db.x.eu-west-1.rds.amazonaws.com"])).unwrap();
        assert_eq!(c.listen.address.to_string(), "127.0.0.1:6543");
        assert_eq!(c.name, "db.x.eu-west-1.rds.amazonaws.com", "the name defaults to the endpoint");
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            c.via,
            ViaConfig::Direct {
                connect_addr: "db.x.eu-west-1.rds.amazonaws.com:5432".into()
            }
        );
        let c = Config::from_args(&args(&[
            "--target", "db.example:5433", "--region", "us-west-2", "--connect-addr",
            "127.0.0.1:9999", "-p", "7000", "--db-user", "iam",
        ]))
        .unwrap();
        assert_eq!(c.region.as_deref(), Some("us-west-2"));
        assert_eq!(c.port, 5433);
        assert_eq!(c.listen.address.port(), 7000);
        assert_eq!(c.db_user.as_deref(), Some("iam"));
        assert_eq!(c.via, ViaConfig::Direct { connect_addr: "127.0.0.1:9999".into() });
        assert_eq!(c.http, None, "no HTTP server unless asked");
        let http = |extra: &[&str]| {
            let mut v = vec!["--target", "db"];
            v.extend_from_slice(extra);
            Config::from_args(&args(&v)).unwrap().http.map(|a| a.to_string())
        };
        assert_eq!(http(&["--http-port", "9100"]).as_deref(), Some("127.0.0.1:9100"));
        assert_eq!(http(&["--http-address", "::1"]).as_deref(), Some("[::1]:9090"));
        assert_eq!(http(&["--http-address", "127.0.0.2", "--http-port", "0"]).as_deref(), Some("127.0.0.2:0"));
    }

    #[test]
    fn ssm_flags_table() {
        let t = "db.x.eu-west-1.rds.amazonaws.com";
        let ok = |extra: &[&str]| {
            let mut v = vec!["--target", t, "--via", "ssm"];
            v.extend_from_slice(extra);
            Config::from_args(&args(&v))
        };
        assert_eq!(
            ok(&["--ssm-target", "i-0123456789abcdef0"]).unwrap().via,
            ViaConfig::Ssm(SsmConfig {
                node: "i-0123456789abcdef0".into(),
                sessions: 4,
                idle_timeout: Duration::from_secs(300),
                sign_websocket: false,
                keepalive: Duration::from_secs(20),
                max_payload: 1024,
                max_rate: 900,
                prewarm: false,
                stall_timeout: Duration::from_secs(30),
            })
        );
        assert_eq!(
            ok(&["--ssm-target", "mi-0123456789abcdef0", "--ssm-sessions", "2", "--ssm-idle-timeout", "60", "--ssm-sign-websocket", "--ssm-keepalive", "5", "--ssm-max-payload", "32768", "--ssm-max-rate", "0", "--ssm-prewarm", "--ssm-stall-timeout", "7"])
                .unwrap()
                .via,
            ViaConfig::Ssm(SsmConfig {
                node: "mi-0123456789abcdef0".into(),
                sessions: 2,
                idle_timeout: Duration::from_secs(60),
                sign_websocket: true,
                keepalive: Duration::from_secs(5),
                max_payload: 32768,
                max_rate: 0,
                prewarm: true,
                stall_timeout: Duration::from_secs(7),
            })
        );
        let cases: [(&[&str], ConfigError); 10] = [
            (&[], ConfigError::MissingSsmTarget),
            (&["--ssm-target", "web-server"], ConfigError::BadSsmTarget("web-server".into())),
            (&["--ssm-target", "i-xyz"], ConfigError::BadSsmTarget("i-xyz".into())),
            (&["--ssm-target", "i-0123456789abcdef0", "--ssm-sessions", "0"], ConfigError::BadSsmSessions(0)),
            (&["--ssm-target", "i-0123456789abcdef0", "--ssm-sessions", "65"], ConfigError::BadSsmSessions(65)),
            (&["--ssm-target", "i-0123456789abcdef0", "--ssm-idle-timeout", "0"], ConfigError::BadSsmIdleTimeout),
            (&["--ssm-target", "i-0123456789abcdef0", "--connect-addr", "127.0.0.1:1"], ConfigError::ConnectAddrWithSsm),
            (&["--ssm-target", "i-0123456789abcdef0", "--ssm-keepalive", "0"], ConfigError::BadSsmKeepalive),
            (&["--ssm-target", "i-0123456789abcdef0", "--ssm-stall-timeout", "0"], ConfigError::BadSsmStallTimeout),
            (&["--ssm-target", "i-0123456789abcdef0", "--ssm-max-payload", "70000"], ConfigError::BadSsmMaxPayload(70000)),
        ];
        for (extra, expected) in cases {
            assert_eq!(ok(extra), Err(expected), "{extra:?}");
        }
        assert_eq!(
            Config::from_args(&args(&["--target", t, "--ssm-target", "i-0123456789abcdef0"])),
            Err(ConfigError::SsmFlagWithoutSsm("ssm-target"))
        );
        assert_eq!(
            Config::from_args(&args(&["--target", t, "--ssm-prewarm"])),
            Err(ConfigError::SsmFlagWithoutSsm("ssm-prewarm"))
        );
    }

    #[cfg(unix)]
    #[test]
    fn password_flags_table() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "pw\n").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        let open = dir.path().join("open");
        std::fs::write(&open, "pw\n").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (good, open) = (good.to_str().unwrap(), open.to_str().unwrap());
        let t = ["--target", "db.x.eu-west-1.rds.amazonaws.com"];
        let with = |extra: &[&str]| {
            let mut v = t.to_vec();
            v.extend_from_slice(extra);
            Config::from_args(&args(&v)).map(|c| c.passwords)
        };
        let one = |user: Option<&str>, source: PasswordConfig| Ok(vec![PasswordUser { user: user.map(str::to_owned), source }]);
        let file = || PasswordConfig::File(good.into());
        assert_eq!(with(&[]), Ok(vec![]));
        // A file names no user: --password-user, else --db-user; neither is a start error.
        assert_eq!(with(&["--password-file", good]), Err(ConfigError::NoPasswordUser));
        assert_eq!(with(&["--password-file", good, "--password-user", "app"]), one(Some("app"), file()));
        assert_eq!(with(&["--password-file", good, "--db-user", "pinned"]), one(Some("pinned"), file()));
        assert_eq!(with(&["--password-file", good, "--db-user", "pinned", "--password-user", "app"]), one(Some("app"), file()));
        // A secret may name its user itself (RDS's managed secret does): learned at start.
        assert_eq!(
            with(&["--password-secret", "rds!db-123"]),
            one(None, PasswordConfig::Secret { secret_id: "rds!db-123".into(), key: "password".into() })
        );
        assert_eq!(
            with(&["--password-secret", "arn:aws:secretsmanager:eu-west-1:1:secret:x", "--password-secret-key", "pw", "--password-user", "app"]),
            one(Some("app"), PasswordConfig::Secret { secret_id: "arn:aws:secretsmanager:eu-west-1:1:secret:x".into(), key: "pw".into() })
        );
        assert_eq!(with(&["--password-user", "app"]), Err(ConfigError::PasswordUserWithoutPassword));
        assert_eq!(with(&["--password-file", good, "--password-user", ""]), Err(ConfigError::EmptyPasswordUser));
        assert_eq!(with(&["--password-file", good, "--password-secret", "s"]), Err(ConfigError::TwoPasswordSources));
        assert_eq!(with(&["--password-secret-key", "k"]), Err(ConfigError::SecretKeyWithoutSecret));
        assert_eq!(with(&["--password-file", good, "--password-secret-key", "k"]), Err(ConfigError::SecretKeyWithoutSecret));
        assert_eq!(with(&["--password-secret", ""]), Err(ConfigError::EmptyPasswordSecret));
        match with(&["--password-file", open]) {
            Err(ConfigError::BadPasswordFile(msg)) => assert!(msg.contains("mode 0644") && msg.contains("chmod 600"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(with(&["--password-file", "/nonexistent/pw"]), Err(ConfigError::BadPasswordFile(_))));
    }

    #[cfg(unix)]
    #[test]
    fn client_password_flags_table() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "pw\n").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        let open = dir.path().join("open");
        std::fs::write(&open, "pw\n").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).unwrap();
        let (good, open) = (good.to_str().unwrap(), open.to_str().unwrap());
        let with = |extra: &[&str]| {
            let mut v = vec!["--target", "db", "-a", "0.0.0.0"];
            v.extend_from_slice(extra);
            Config::from_args(&args(&v)).map(|c| c.listen.client_password_file)
        };
        let tls = "--local-tls-ca-out=/x/local-ca.pem";
        assert_eq!(with(&["--allow-remote", "--local-tls", tls, "--client-password-file", good]), Ok(Some(good.into())));
        assert_eq!(with(&["--allow-remote", "--client-password-file", good]), Err(ConfigError::RemoteWithoutLocalTls));
        assert_eq!(with(&["--allow-remote"]), Err(ConfigError::RemoteWithoutClientPassword));
        assert_eq!(with(&["--client-password-file", good]), Err(ConfigError::RemoteAddress("0.0.0.0".parse().unwrap())));
        assert_eq!(
            Config::from_args(&args(&["--target", "db", "--client-password-file", good])).map(|c| c.listen.client_password_file),
            Err(ConfigError::ClientPasswordWithoutRemote)
        );
        match with(&["--allow-remote", "--local-tls", tls, "--client-password-file", open]) {
            Err(ConfigError::BadClientPasswordFile(msg)) => assert!(msg.contains("mode 0640") && msg.contains("chmod 600"), "{msg}"),
            other => panic!("{other:?}"),
        }
        let msg = ConfigError::RemoteWithoutClientPassword.to_string();
        assert!(msg.contains("--client-password-file FILE") && msg.contains("AWS identity") && msg.contains("chmod 600"), "{msg}");
        assert!(msg.contains("--client-ca-file FILE with --local-tls") && msg.contains("sslcert/sslkey"), "{msg}");
    }

    #[test]
    fn client_ca_flags_table() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let ca = ca.to_str().unwrap();
        let tls = ["--local-tls", "--local-tls-ca-out", "/x/local-ca.pem"];
        let with = |extra: &[&str]| {
            let mut v = vec!["--target", "db", "-a", "0.0.0.0"];
            v.extend_from_slice(extra);
            Config::from_args(&args(&v)).map(|c| (c.listen.client_password_file, c.listen.client_ca_file))
        };
        // A client CA over local TLS is enough for a shared listener.
        let mut ok = vec!["--allow-remote", "--client-ca-file", ca];
        ok.extend_from_slice(&tls);
        assert_eq!(with(&ok), Ok((None, Some(ca.into()))));
        assert_eq!(with(&["--allow-remote", "--client-ca-file", ca]), Err(ConfigError::ClientCaWithoutLocalTls));
        let mut local = vec!["--client-ca-file", ca];
        local.extend_from_slice(&tls);
        assert_eq!(
            Config::from_args(&args(&[&["--target", "db"][..], &local].concat())).map(|c| c.listen.client_ca_file),
            Err(ConfigError::ClientCaWithoutRemote)
        );
        let mut missing = vec!["--allow-remote", "--client-ca-file", "/nonexistent/ca.pem"];
        missing.extend_from_slice(&tls);
        assert_eq!(with(&missing), Err(ConfigError::MissingClientCaFile("/nonexistent/ca.pem".into())));
        // Local TLS alone does not let remote clients in.
        let mut no_ca = vec!["--allow-remote"];
        no_ca.extend_from_slice(&tls);
        assert_eq!(with(&no_ca), Err(ConfigError::RemoteWithoutClientPassword));
        let msg = ConfigError::ClientCaWithoutLocalTls.to_string();
        assert!(msg.contains("--local-tls") && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn local_tls_flags_table() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "x").unwrap();
        std::fs::write(&key, "x").unwrap();
        let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let with = |extra: &[&str]| {
            let mut v = vec!["--target", "db.x.eu-west-1.rds.amazonaws.com"];
            v.extend_from_slice(extra);
            Config::from_args(&args(&v)).map(|c| c.local_tls)
        };
        assert_eq!(with(&[]), Ok(None));
        assert_eq!(
            with(&["--local-tls", "--local-tls-ca-out", "/x/ca.pem"]),
            Ok(Some(LocalTlsConfig::Generated { ca_cert: "/x/ca.pem".into() }))
        );
        assert!(matches!(with(&["--local-tls"]), Ok(Some(LocalTlsConfig::Generated { .. })) | Err(ConfigError::NoLocalCaDir)));
        let files = Ok(Some(LocalTlsConfig::Files { cert: cert.clone(), key: key.clone() }));
        assert_eq!(with(&["--local-tls-cert", c, "--local-tls-key", k]), files);
        assert_eq!(with(&["--local-tls", "--local-tls-cert", c, "--local-tls-key", k]), files);
        assert_eq!(with(&["--local-tls-cert", c]), Err(ConfigError::LocalTlsCertWithoutKey));
        assert_eq!(with(&["--local-tls-key", k]), Err(ConfigError::LocalTlsCertWithoutKey));
        assert_eq!(
            with(&["--local-tls-cert", c, "--local-tls-key", k, "--local-tls-ca-out", "/x"]),
            Err(ConfigError::LocalTlsCaOutWithCert)
        );
        assert_eq!(with(&["--local-tls-ca-out", "/x"]), Err(ConfigError::LocalTlsFlagWithoutLocalTls("local-tls-ca-out")));
        assert_eq!(
            with(&["--local-tls-cert", "/nonexistent.pem", "--local-tls-key", k]),
            Err(ConfigError::MissingLocalTlsFile("/nonexistent.pem".into()))
        );
    }

    /// Issue 18: a shared listener needs TLS and is bounded by default; the HTTP endpoints go
    /// beyond loopback only with --allow-remote.
    #[test]
    fn remote_rules_table() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "pw\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pw = pw.to_str().unwrap();
        let remote = ["-a", "0.0.0.0", "--allow-remote", "--local-tls", "--local-tls-ca-out=/x/ca.pem", "--client-password-file", pw];
        let with = |extra: &[&str]| Config::from_args(&args(&[&["--target", "db"][..], extra].concat()));
        assert_eq!(with(&remote).unwrap().listen.max_connections, DEFAULT_REMOTE_MAX_CONNECTIONS);
        assert_eq!(with(&[&remote[..], &["--max-connections", "7"]].concat()).unwrap().listen.max_connections, 7);
        assert_eq!(with(&[&remote[..], &["--max-connections", "0"]].concat()).unwrap().listen.max_connections, 0, "an explicit 0 is no limit");
        assert_eq!(with(&[]).unwrap().listen.max_connections, 0, "no limit on loopback");
        assert!(!with(&[]).unwrap().listen.allow_local_users);
        assert!(with(&["--allow-local-users"]).unwrap().listen.allow_local_users);

        assert_eq!(
            with(&["--http-address", "0.0.0.0"]),
            Err(ConfigError::RemoteHttpAddress("0.0.0.0".parse().unwrap()))
        );
        assert!(with(&["--http-address", "::1"]).is_ok());
        assert_eq!(with(&[&remote[..], &["--http-address", "0.0.0.0"]].concat()).unwrap().http, Some("0.0.0.0:9090".parse().unwrap()));
        for e in [ConfigError::RemoteWithoutLocalTls, ConfigError::RemoteHttpAddress("0.0.0.0".parse().unwrap())] {
            assert!(!e.to_string().contains('\n') && e.to_string().contains("--"), "{e}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(Config::from_args(&args(&[])), Err(ConfigError::MissingTarget));
        assert!(matches!(
            Config::from_args(&args(&["--target", "db", "-a", "0.0.0.0"])),
            Err(ConfigError::RemoteAddress(_))
        ));
        assert_eq!(
            Config::from_args(&args(&["--target", "db", "-a", "0.0.0.0", "--allow-remote"])),
            Err(ConfigError::RemoteWithoutClientPassword)
        );
        assert!(Config::from_args(&args(&["--target", "db", "-a", "::1"])).is_ok());
        assert!(matches!(
            Config::from_args(&args(&["--target", "db", "--connect-addr", "nope"])),
            Err(ConfigError::BadConnectAddr(_))
        ));
        assert!(matches!(
            Config::from_args(&args(&["--target", "db", "--unix-socket", "/nonexistent/dir"])),
            Err(ConfigError::BadUnixSocketDir(_))
        ));
        assert!(matches!(
            Config::from_args(&args(&["--target", "db", "--ca-bundle", "/nonexistent.pem"])),
            Err(ConfigError::MissingCaBundle(_))
        ));
    }
}
