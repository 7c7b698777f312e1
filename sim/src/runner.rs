//! Starting the simulator as one unit ([`Simulator`]), the `sim` command's stdout contract
//! (`export NAME=value` lines, then `ready`), and the `demo` command.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rand::distr::{Alphanumeric, SampleString};

use super::certs::{SimCa, SniCerts};
use super::dsql::{DsqlFront, DsqlFrontConfig, DsqlFrontState, DSQL_READER};
use super::dsql_api::DsqlApiSim;
use super::redshift::{RedshiftAuthMethod, RedshiftFront, RedshiftFrontConfig, RedshiftFrontState, RedshiftLogins, RedshiftTarget};
use super::redshift_api::{RedshiftApiSim, RedshiftServerlessApiSim};
use super::postgres::{PgCluster, PgClusterOptions, PgTls, DB_USER};
use super::rds::{PgEmulation, RdsFront, RdsFrontConfig, RdsFrontState};
use super::query::QueryServer;
use super::rds_api::{
    RdsApiOptions, RdsApiSim, SIM_CLUSTER_CUSTOM_ENDPOINT, SIM_CLUSTER_ENDPOINT, SIM_CLUSTER_READER_ENDPOINT,
};
use super::secrets::SecretsSim;
use super::sigv4::SimCredentials;
use super::sso::SsoPortal;
use super::ssm::{SsmSim, SsmSimOptions};
use crate::cli::SimArgs;

/// The region every simulated resource lives in.
pub const SIM_REGION: &str = "eu-central-1";
/// The simulated endpoint: an RDS-shaped name (so region inference works) that resolves nowhere.
pub const SIM_ENDPOINT: &str = "simdb.c0sim0000000.eu-central-1.rds.amazonaws.com";
/// A simulated RDS Proxy endpoint: the front presents an "ATS-like" chain for it (root →
/// intermediate → leaf, the root in [`Simulator::proxy_ca_file`]), as RDS Proxy presents an ACM
/// certificate chaining to Amazon Trust Services.
pub const SIM_PROXY_ENDPOINT: &str = "simproxy.proxy-c0sim0000000.eu-central-1.rds.amazonaws.com";
/// The endpoint port tokens are signed for.
pub const SIM_DB_PORT: u16 = 5432;
pub const SIM_DB_NAME: &str = "postgres";
/// The password (SCRAM) user every simulator has, besides [`SimOptions::password_users`].
pub const SIM_PASSWORD_USER: &str = "scram_user";

/// The simulated Aurora DSQL cluster: its identifier, endpoint name and port.
pub const SIM_DSQL_CLUSTER: &str = "sim0dsql0000000000000000aa";
pub const SIM_DSQL_ENDPOINT: &str = "sim0dsql0000000000000000aa.dsql.eu-central-1.on.aws";
pub const SIM_DSQL_PORT: u16 = 5432;
/// The simulated provisioned Redshift cluster: its identifier, endpoint name and port.
pub const SIM_REDSHIFT_CLUSTER: &str = "simrs";
pub const SIM_REDSHIFT_ENDPOINT: &str = "simrs.c0sim0000000.eu-central-1.redshift.amazonaws.com";
pub const SIM_REDSHIFT_PORT: u16 = 5439;
/// The simulated Redshift Serverless workgroup (port [`SIM_REDSHIFT_PORT`] too); IAM policies
/// name it by its id.
pub const SIM_REDSHIFT_WORKGROUP: &str = "simwg";
pub const SIM_REDSHIFT_WORKGROUP_ID: &str = "5e1d0f5a-51a0-4d1e-9c6b-3a7e0c0ffee0";
pub const SIM_REDSHIFT_SERVERLESS_ENDPOINT: &str = "simwg.123456789012.eu-central-1.redshift-serverless.amazonaws.com";
/// Redshift's default database, created in the throwaway PostgreSQL.
pub const SIM_REDSHIFT_DB: &str = "dev";
/// A database user that exists on the simulated Redshift (a PostgreSQL login role): what
/// GetClusterCredentials with `DbUser=alice` and no AutoCreate logs in as (`IAM:alice`).
pub const SIM_REDSHIFT_USER: &str = "alice";

/// The Secrets Manager secret holding `user`'s password, shaped like RDS's managed secret.
pub fn secret_name(user: &str) -> String {
    format!("rds-auth-proxy-sim/{user}")
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Where the RDS front listens (port 0 = any).
    pub listen: SocketAddr,
    /// Password users besides [`SIM_PASSWORD_USER`]: login roles without the `rds_iam` grant,
    /// so RDS (and so the simulator) asks them for SCRAM instead of an IAM token; PostgreSQL runs
    /// that SCRAM-SHA-256 itself, and each has a random password and a secret in the simulated
    /// Secrets Manager.
    pub password_users: Vec<String>,
    /// Extra postgresql.conf lines.
    pub pg_extra_conf: Vec<String>,
    /// The simulated SSM service's knobs (faults, pacing, timeouts).
    pub ssm: SsmSimOptions,
    /// Extra pg_hba.conf lines, placed before the simulator's own (e.g. a `replication` line
    /// for tests that compare replication connections with the proxy's).
    pub pg_extra_hba: Vec<String>,
    /// What the simulated RDS API reports (IAM authentication, engine, status).
    pub rds_api: RdsApiOptions,
    /// Swap the two kinds of chain: the RDS Proxy name gets an RDS-CA certificate and every
    /// other name an "ATS-like" one — what a proxy that mixed up its trust stores would accept.
    pub swap_tls_chains: bool,
    /// The PostgreSQL version the RDS front acts as where versions differ (direct TLS,
    /// `server_version`); default 15, the version behind it.
    pub rds_pg: PgEmulation,
    /// How the Redshift front asks for passwords (default MD5); changeable while it runs
    /// ([`RedshiftFrontState::set_auth_method`]).
    pub redshift_auth: RedshiftAuthMethod,
    /// When the DSQL front cuts a connection (default 60 minutes); changeable while it runs.
    pub dsql_connection_age_limit: std::time::Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            password_users: Vec::new(),
            pg_extra_conf: Vec::new(),
            ssm: SsmSimOptions::default(),
            pg_extra_hba: Vec::new(),
            rds_api: RdsApiOptions::default(),
            swap_tls_chains: false,
            rds_pg: PgEmulation::default(),
            redshift_auth: RedshiftAuthMethod::default(),
            dsql_connection_age_limit: super::dsql::DSQL_CONNECTION_AGE_LIMIT,
        }
    }
}

/// A running simulator. Dropping it stops everything and removes its files.
pub struct Simulator {
    pub postgres: PgCluster,
    pub credentials: SimCredentials,
    pub front_addr: SocketAddr,
    pub front_state: Arc<RdsFrontState>,
    pub ca: SimCa,
    pub ca_file: PathBuf,
    /// The "ATS-like" root that [`SIM_PROXY_ENDPOINT`]'s chain leads to: give it as
    /// `--proxy-ca-bundle` (the real Amazon roots cannot sign for the simulator).
    pub proxy_ca: SimCa,
    pub proxy_ca_file: PathBuf,
    /// The SSM API and data channel, whose managed node reaches [`SIM_ENDPOINT`] at the front.
    pub ssm: SsmSim,
    /// The Secrets Manager API with one secret per password user.
    pub secrets: SecretsSim,
    /// STS GetCallerIdentity, naming the simulated IAM user.
    pub sts: QueryServer,
    /// RDS DescribeDBInstances/DescribeDBClusters for the served instance and a cluster.
    pub rds_api: RdsApiSim,
    /// The IAM Identity Center portal (GetRoleCredentials), for `AWS_ENDPOINT_URL_SSO` and an
    /// SSO profile; its role credentials are good at every simulated service.
    pub sso: SsoPortal,
    /// The Aurora DSQL front ([`SIM_DSQL_ENDPOINT`]) and its counters and age-limit switch.
    pub dsql_addr: SocketAddr,
    pub dsql_state: Arc<DsqlFrontState>,
    /// The Redshift front, serving [`SIM_REDSHIFT_ENDPOINT`] and [`SIM_REDSHIFT_SERVERLESS_ENDPOINT`],
    /// and its counters and password-method switch.
    pub redshift_addr: SocketAddr,
    pub redshift_state: Arc<RedshiftFrontState>,
    /// The temporary Redshift passwords issued so far ([`Simulator::expire_issued`], a life cap).
    pub redshift_logins: Arc<RedshiftLogins>,
    /// The Redshift API (GetClusterCredentials[WithIAM], DescribeClusters): `.control()` counts
    /// calls by action and denies actions.
    pub redshift_api: RedshiftApiSim,
    /// The Redshift Serverless API (GetCredentials, GetWorkgroup).
    pub redshift_serverless_api: RedshiftServerlessApiSim,
    /// The Aurora DSQL control plane (GetCluster).
    pub dsql_api: DsqlApiSim,
    /// Current password of each password user (changed by [`Simulator::rotate_password`]).
    passwords: std::sync::Mutex<HashMap<String, String>>,
    front_task: tokio::task::JoinHandle<()>,
    engine_tasks: [tokio::task::JoinHandle<()>; 2],
    _dir: tempfile::TempDir,
}

impl Simulator {
    pub async fn start(options: SimOptions) -> Result<Simulator, BoxError> {
        let mut password_users = vec![SIM_PASSWORD_USER.to_owned()];
        for user in &options.password_users {
            if !password_users.contains(user) {
                password_users.push(user.clone());
            }
        }
        let ca = SimCa::new("rds-auth-proxy simulator CA")?;
        // PostgreSQL serves TLS itself with a certificate for the endpoint name, so it can be
        // the upstream directly (SCRAM-SHA-256-PLUS checked by PostgreSQL's own code).
        let (cert_chain_pem, key_pem) = ca.issue_pem(&[SIM_ENDPOINT.to_owned()])?;
        let postgres = PgCluster::start(PgClusterOptions {
            extra_conf: options.pg_extra_conf.clone(),
            login_roles: [DB_USER, "admin", DSQL_READER, SIM_REDSHIFT_USER]
                .into_iter()
                .map(str::to_owned)
                .chain(password_users.iter().cloned())
                .collect(),
            hba: options
                .pg_extra_hba
                .iter()
                .cloned()
                .chain(password_users.iter().map(|u| {
                    format!("host all \"{}\" 127.0.0.1/32 scram-sha-256", u.replace('"', ""))
                }))
                .collect(),
            tls: Some(PgTls {
                cert_chain_pem,
                key_pem,
            }),
            ..PgClusterOptions::default()
        })
        .await?;
        postgres
            .psql(postgres.superuser(), &format!("CREATE DATABASE {SIM_REDSHIFT_DB}"))
            .await?;
        // Fresh keys per run, shaped like AWS's, so nobody mistakes them for real ones.
        let mut rng = rand::rng();
        let credentials = SimCredentials::new(
            format!("AKIASIM{}", Alphanumeric.sample_string(&mut rng, 13).to_uppercase()),
            Alphanumeric.sample_string(&mut rng, 40),
        );
        let dir = tempfile::Builder::new().prefix("rds-auth-proxy-sim-").tempdir()?;
        let ca_file = dir.path().join("sim-ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        let proxy_ca = SimCa::new("rds-auth-proxy simulator ATS-like root")?;
        let proxy_ca_file = dir.path().join("sim-proxy-ca.pem");
        std::fs::write(&proxy_ca_file, proxy_ca.pem())?;
        let front_tls = front_certificates(&ca, &proxy_ca, options.swap_tls_chains)?.server_config()?;
        let front_tls = options.rds_pg.tls_config(rustls::ServerConfig::clone(&front_tls));
        let secrets = SecretsSim::start(credentials.clone(), SIM_REGION).await?;
        let sts = super::sts::start(credentials.clone()).await?;
        let rds_api = RdsApiSim::start(options.rds_api.clone(), credentials.clone()).await?;
        let sso = SsoPortal::start(credentials.clone()).await?;
        let mut passwords = HashMap::new();
        for user in &password_users {
            let password = new_password();
            set_password(&postgres, &secrets, user, &password).await?;
            passwords.insert(user.clone(), password);
        }
        let front = RdsFront::bind(
            options.listen,
            RdsFrontConfig {
                endpoint: SIM_ENDPOINT.to_owned(),
                port: SIM_DB_PORT,
                region: SIM_REGION.to_owned(),
                credentials: credentials.clone(),
                tls: front_tls,
                postgres: postgres.addr(),
                password_users: password_users.iter().cloned().collect::<HashSet<_>>(),
                other_names: FRONT_NAMES[1..].iter().map(|n| n.to_string()).collect(),
                emulation: options.rds_pg,
            },
        )
        .await?;
        let front_addr = front.local_addr()?;
        let front_state = front.state();
        let front_task = tokio::spawn(front.run());
        let engines = EngineFronts::start(&options, &engine_tls(&proxy_ca)?, &credentials, &postgres).await?;
        let mut ssm_names: HashMap<String, SocketAddr> = FRONT_NAMES.iter().map(|n| (n.to_string(), front_addr)).collect();
        ssm_names.insert(SIM_DSQL_ENDPOINT.to_owned(), engines.dsql_addr);
        ssm_names.insert(SIM_REDSHIFT_ENDPOINT.to_owned(), engines.redshift_addr);
        ssm_names.insert(SIM_REDSHIFT_SERVERLESS_ENDPOINT.to_owned(), engines.redshift_addr);
        let ssm = SsmSim::start(options.ssm.clone(), credentials.clone(), SIM_REGION, ssm_names).await?;
        Ok(Simulator {
            postgres,
            credentials,
            front_addr,
            front_state,
            ca,
            ca_file,
            proxy_ca,
            proxy_ca_file,
            ssm,
            secrets,
            sts,
            rds_api,
            sso,
            dsql_addr: engines.dsql_addr,
            dsql_state: engines.dsql_state,
            redshift_addr: engines.redshift_addr,
            redshift_state: engines.redshift_state,
            redshift_logins: engines.redshift_logins,
            redshift_api: engines.redshift_api,
            redshift_serverless_api: engines.redshift_serverless_api,
            dsql_api: engines.dsql_api,
            passwords: std::sync::Mutex::new(passwords),
            front_task,
            engine_tasks: engines.tasks,
            _dir: dir,
        })
    }

    /// Every Redshift and Redshift Serverless password issued so far stops working now: the
    /// next login with one is refused as an expired one is (the proxy must mint a new one).
    pub fn expire_issued(&self) {
        self.redshift_logins.expire_all();
    }

    /// The current password of a password user.
    pub fn password(&self, user: &str) -> Option<String> {
        self.passwords
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned()
    }

    /// Rotation: a new password for `user`, set in PostgreSQL and in its secret at once.
    pub async fn rotate_password(&self, user: &str) -> Result<String, BoxError> {
        let password = new_password();
        set_password(&self.postgres, &self.secrets, user, &password).await?;
        self.passwords
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_owned(), password.clone());
        Ok(password)
    }

    /// Fixed credentials and the simulated AWS endpoints, for an in-process proxy (which maps
    /// them to its own `app::AwsSetup`).
    pub fn aws_endpoints(&self) -> SimAws {
        SimAws {
            credentials: self.aws_credentials(),
            ssm_endpoint: self.ssm.endpoint_url(),
            secrets_endpoint: self.secrets.endpoint_url(),
            sts_endpoint: self.sts.endpoint_url(),
            rds_endpoint: self.rds_api.endpoint_url(),
            redshift_endpoint: self.redshift_api.endpoint_url(),
            redshift_serverless_endpoint: self.redshift_serverless_api.endpoint_url(),
            dsql_endpoint: self.dsql_api.endpoint_url(),
        }
    }

    /// The AWS credentials the simulator accepts, for the proxy.
    pub fn aws_credentials(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::from_keys(
            self.credentials.access_key_id.clone(),
            self.credentials.secret_access_key.clone(),
            None,
        )
    }

    /// The proxy command line that works against this simulator: through the simulated SSM
    /// tunnel (with `AWS_ENDPOINT_URL_SSM` from [`Simulator::exports`] set).
    pub fn proxy_command(&self) -> String {
        format!(
            "{exe} --target {SIM_ENDPOINT}:{SIM_DB_PORT} --via ssm --ssm-target {node} --ca-bundle {ca}",
            exe = current_exe(),
            node = self.ssm.target_id(),
            ca = self.ca_file.display()
        )
    }

    /// The proxy command line that skips SSM and dials the simulated RDS front directly.
    pub fn direct_proxy_command(&self) -> String {
        let exe = current_exe();
        format!(
            "{exe} --target {SIM_ENDPOINT}:{SIM_DB_PORT} --via direct --connect-addr {} --ca-bundle {}",
            self.front_addr,
            self.ca_file.display()
        )
    }

    /// The `sim` contract: exactly these names, in this order.
    pub fn exports(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.credentials.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.credentials.secret_access_key.clone()),
            ("AWS_REGION", SIM_REGION.to_owned()),
            ("SIM_DB_ENDPOINT", SIM_ENDPOINT.to_owned()),
            ("SIM_DB_PORT", SIM_DB_PORT.to_string()),
            ("SIM_DB_ADDR", self.front_addr.to_string()),
            ("SIM_DB_USER", DB_USER.to_owned()),
            ("SIM_DB_NAME", SIM_DB_NAME.to_owned()),
            ("SIM_CA_FILE", self.ca_file.display().to_string()),
            ("SIM_PROXY_CMD", self.proxy_command()),
            ("AWS_ENDPOINT_URL_SSM", self.ssm.endpoint_url()),
            ("SIM_SSM_TARGET", self.ssm.target_id().to_owned()),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", self.secrets.endpoint_url()),
            ("SIM_PASSWORD_USER", SIM_PASSWORD_USER.to_owned()),
            ("SIM_PASSWORD_SECRET", secret_name(SIM_PASSWORD_USER)),
            ("AWS_ENDPOINT_URL_STS", self.sts.endpoint_url()),
            ("AWS_ENDPOINT_URL_RDS", self.rds_api.endpoint_url()),
            ("SIM_PROXY_ENDPOINT", SIM_PROXY_ENDPOINT.to_owned()),
            ("SIM_PROXY_CA_FILE", self.proxy_ca_file.display().to_string()),
            ("SIM_DSQL_ENDPOINT", SIM_DSQL_ENDPOINT.to_owned()),
            ("SIM_DSQL_PORT", SIM_DSQL_PORT.to_string()),
            ("SIM_DSQL_ADDR", self.dsql_addr.to_string()),
            ("SIM_DSQL_CLUSTER", SIM_DSQL_CLUSTER.to_owned()),
            ("SIM_REDSHIFT_ENDPOINT", SIM_REDSHIFT_ENDPOINT.to_owned()),
            ("SIM_REDSHIFT_PORT", SIM_REDSHIFT_PORT.to_string()),
            ("SIM_REDSHIFT_ADDR", self.redshift_addr.to_string()),
            ("SIM_REDSHIFT_CLUSTER", SIM_REDSHIFT_CLUSTER.to_owned()),
            ("SIM_REDSHIFT_DB", SIM_REDSHIFT_DB.to_owned()),
            ("SIM_REDSHIFT_SERVERLESS_ENDPOINT", SIM_REDSHIFT_SERVERLESS_ENDPOINT.to_owned()),
            ("SIM_REDSHIFT_SERVERLESS_ADDR", self.redshift_addr.to_string()),
            ("SIM_REDSHIFT_WORKGROUP", SIM_REDSHIFT_WORKGROUP.to_owned()),
            ("AWS_ENDPOINT_URL_REDSHIFT", self.redshift_api.endpoint_url()),
            ("AWS_ENDPOINT_URL_REDSHIFT_SERVERLESS", self.redshift_serverless_api.endpoint_url()),
            ("AWS_ENDPOINT_URL_DSQL", self.dsql_api.endpoint_url()),
        ]
    }

    pub async fn stop(self) {
        self.ssm.stop();
        self.secrets.stop();
        self.sts.stop();
        self.sso.stop();
        self.rds_api.stop();
        self.redshift_api.stop();
        self.redshift_serverless_api.stop();
        self.dsql_api.stop();
        self.front_task.abort();
        for task in &self.engine_tasks {
            task.abort();
        }
        if let Err(e) = self.postgres.stop().await {
            tracing::warn!(error = %e, "stopping the simulator's PostgreSQL failed");
        }
    }
}

/// What an in-process proxy needs to use this simulator instead of AWS: the credentials it
/// accepts and where each service listens (`http://127.0.0.1:PORT`).
#[derive(Debug, Clone)]
pub struct SimAws {
    pub credentials: aws_credential_types::Credentials,
    /// The SSM API.
    pub ssm_endpoint: String,
    /// Secrets Manager.
    pub secrets_endpoint: String,
    /// STS (GetCallerIdentity).
    pub sts_endpoint: String,
    /// The RDS API (DescribeDBInstances/Clusters).
    pub rds_endpoint: String,
    /// The Redshift API, the Redshift Serverless API and the DSQL control plane.
    pub redshift_endpoint: String,
    pub redshift_serverless_endpoint: String,
    pub dsql_endpoint: String,
}

/// Every name the RDS front answers to (the first is the instance, [`SIM_ENDPOINT`]); the
/// simulated SSM node reaches each of them at the front.
pub const FRONT_NAMES: [&str; 5] = [
    SIM_ENDPOINT,
    SIM_CLUSTER_ENDPOINT,
    SIM_CLUSTER_READER_ENDPOINT,
    SIM_CLUSTER_CUSTOM_ENDPOINT,
    SIM_PROXY_ENDPOINT,
];

/// The front's certificates: an RDS-CA one for each name, but for the RDS Proxy name a leaf
/// under an intermediate of the ATS-like root; `swap` turns both around.
fn front_certificates(ca: &SimCa, proxy_ca: &SimCa, swap: bool) -> Result<SniCerts, BoxError> {
    let ats_intermediate = proxy_ca.intermediate("rds-auth-proxy simulator ATS-like intermediate")?;
    let issuer_for = |name: &str| {
        let proxy_name = name == SIM_PROXY_ENDPOINT;
        if proxy_name != swap {
            &ats_intermediate
        } else {
            ca
        }
    };
    let mut certs = SniCerts::new(issuer_for(SIM_ENDPOINT).certified_key(&[SIM_ENDPOINT.to_owned()])?);
    for name in FRONT_NAMES {
        certs.add(name, issuer_for(name).certified_key(&[name.to_owned()])?);
    }
    Ok(certs)
}

/// The DSQL and Redshift fronts and the APIs that issue their credentials, started together.
struct EngineFronts {
    dsql_addr: SocketAddr,
    dsql_state: Arc<DsqlFrontState>,
    redshift_addr: SocketAddr,
    redshift_state: Arc<RedshiftFrontState>,
    redshift_logins: Arc<RedshiftLogins>,
    redshift_api: RedshiftApiSim,
    redshift_serverless_api: RedshiftServerlessApiSim,
    dsql_api: DsqlApiSim,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl EngineFronts {
    async fn start(
        options: &SimOptions,
        certs: &EngineCerts,
        credentials: &SimCredentials,
        postgres: &PgCluster,
    ) -> Result<EngineFronts, BoxError> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let dsql = DsqlFront::bind(
            loopback,
            DsqlFrontConfig {
                endpoint: SIM_DSQL_ENDPOINT.to_owned(),
                region: SIM_REGION.to_owned(),
                credentials: credentials.clone(),
                tls: certs.dsql.clone(),
                postgres: postgres.addr(),
            },
        )
        .await?;
        let dsql_state = dsql.state();
        dsql_state.set_connection_age_limit(options.dsql_connection_age_limit);
        let redshift_logins = Arc::new(RedshiftLogins::default());
        let redshift = RedshiftFront::bind(
            loopback,
            RedshiftFrontConfig {
                names: vec![
                    (SIM_REDSHIFT_ENDPOINT.to_owned(), RedshiftTarget::Cluster(SIM_REDSHIFT_CLUSTER.to_owned())),
                    (
                        SIM_REDSHIFT_SERVERLESS_ENDPOINT.to_owned(),
                        RedshiftTarget::Workgroup(SIM_REDSHIFT_WORKGROUP.to_owned()),
                    ),
                ],
                tls: certs.redshift.clone(),
                postgres: postgres.addr(),
                logins: redshift_logins.clone(),
            },
        )
        .await?;
        let redshift_state = redshift.state();
        redshift_state.set_auth_method(options.redshift_auth);
        Ok(EngineFronts {
            dsql_addr: dsql.local_addr()?,
            dsql_state,
            redshift_addr: redshift.local_addr()?,
            redshift_state,
            redshift_api: RedshiftApiSim::start(credentials.clone(), redshift_logins.clone()).await?,
            redshift_serverless_api: RedshiftServerlessApiSim::start(credentials.clone(), redshift_logins.clone()).await?,
            dsql_api: DsqlApiSim::start(credentials.clone()).await?,
            redshift_logins,
            tasks: [tokio::spawn(dsql.run()), tokio::spawn(redshift.run())],
        })
    }
}

/// The DSQL and Redshift fronts' TLS: leaves under an intermediate of the "ATS-like" root, as
/// both serve ACM certificates chaining to Amazon Trust Services. DSQL offers ALPN `postgresql`
/// (direct TLS); Redshift, a PostgreSQL 8.0.2 on the wire, none.
struct EngineCerts {
    dsql: Arc<rustls::ServerConfig>,
    redshift: Arc<rustls::ServerConfig>,
}

fn engine_tls(proxy_ca: &SimCa) -> Result<EngineCerts, BoxError> {
    let intermediate = proxy_ca.intermediate("rds-auth-proxy simulator ATS-like intermediate (engines)")?;
    let dsql = SniCerts::new(intermediate.certified_key(&[SIM_DSQL_ENDPOINT.to_owned()])?).server_config()?;
    let mut redshift = SniCerts::new(intermediate.certified_key(&[SIM_REDSHIFT_ENDPOINT.to_owned()])?);
    redshift.add(
        SIM_REDSHIFT_SERVERLESS_ENDPOINT,
        intermediate.certified_key(&[SIM_REDSHIFT_SERVERLESS_ENDPOINT.to_owned()])?,
    );
    let mut redshift = rustls::ServerConfig::clone(&*redshift.server_config()?);
    redshift.alpn_protocols = Vec::new();
    Ok(EngineCerts {
        dsql,
        redshift: Arc::new(redshift),
    })
}

/// 24 random letters and digits: no quoting needed in SQL or JSON.
fn new_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

/// Sets `user`'s password in PostgreSQL (stored as SCRAM) and in its secret.
async fn set_password(
    postgres: &PgCluster,
    secrets: &SecretsSim,
    user: &str,
    password: &str,
) -> Result<(), BoxError> {
    postgres
        .psql(
            postgres.superuser(),
            &format!(
                "SET password_encryption = 'scram-sha-256'; ALTER ROLE \"{}\" PASSWORD '{password}'",
                user.replace('"', "\"\"")
            ),
        )
        .await?;
    let secret = serde_json::json!({ "username": user, "password": password });
    secrets.put(&secret_name(user), &secret.to_string());
    Ok(())
}

fn current_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "rds-auth-proxy".into())
}

/// The `sim` flags' SSM knobs.
fn ssm_options(args: &SimArgs) -> SsmSimOptions {
    // --ssm-aws-limits and --ssm-real-network fill in what the individual flags leave unset
    // (the payload cap's default already is AWS's 1024); 0 switches the rate limit and the
    // early-input window off either way.
    let limits = args.ssm_aws_limits.then(SsmSimOptions::aws_limits);
    let network = args.ssm_real_network.then(SsmSimOptions::real_network);
    let presets = || limits.iter().chain(network.iter());
    let early_input_window = match args.ssm_early_input_window {
        Some(window) => (!window.is_zero()).then_some(window),
        None => presets().find_map(|p| p.early_input_window),
    };
    let client_rate_limit = match args.ssm_client_rate_limit {
        Some(0) => None,
        Some(n) => Some(n),
        None => limits.as_ref().and_then(|l| l.client_rate_limit),
    };
    SsmSimOptions {
        agent_version: args.ssm_agent_version.clone(),
        payload_cap: args.ssm_payload_cap,
        pacing: args.ssm_pacing.or(limits.as_ref().and_then(|l| l.pacing)),
        drop_rate: args.ssm_drop_rate,
        duplicate_rate: args.ssm_duplicate_rate,
        reorder_rate: args.ssm_reorder_rate,
        seed: args.ssm_seed,
        kill_ws_after_messages: args.ssm_kill_ws_after_messages,
        kill_ws_after: args.ssm_kill_ws_after,
        bye_after: args.ssm_bye_after,
        idle_timeout: args.ssm_idle_timeout,
        refuse_resume: args.ssm_refuse_resume,
        client_rate_limit,
        hold_acks: false,
        stop_reading: false,
        hang_upgrade: args.ssm_hang_upgrade,
        hang_handshake: args.ssm_hang_handshake,
        refuse_start: args.ssm_refuse_start.clone(),
        resend_front_only: args.ssm_aws_limits || args.ssm_resend_front_only,
        node_offline: args.ssm_node_offline,
        latency: args.ssm_latency.or_else(|| presets().find_map(|p| p.latency)),
        jitter: args.ssm_jitter.or_else(|| presets().find_map(|p| p.jitter)),
        early_input_window,
        // Failure-branch knobs, for in-process tests only.
        hang_resume: false,
        extra_handshake_action: None,
    }
}

/// The `sim` flags' RDS API knobs.
fn rds_api_options(args: &SimArgs) -> RdsApiOptions {
    RdsApiOptions {
        iam_auth: !args.rds_iam_auth_disabled,
        engine: args.rds_engine.clone(),
        status: args.rds_status.clone(),
    }
}

/// `rds-auth-proxy sim`.
pub async fn run_sim(args: SimArgs, shutdown: impl Future<Output = u8>) -> Result<u8, BoxError> {
    let ssm = ssm_options(&args);
    let sim = Simulator::start(SimOptions {
        listen: args.listen,
        password_users: args.password_user.clone(),
        ssm,
        rds_api: rds_api_options(&args),
        swap_tls_chains: args.swap_tls_chains,
        rds_pg: PgEmulation::from_flags(args.rds_pg_version, args.rds_refuse_direct_tls),
        redshift_auth: args.redshift_auth,
        dsql_connection_age_limit: args.dsql_connection_age_limit,
        ..SimOptions::default()
    })
    .await?;
    let mut out = String::new();
    for (name, value) in sim.exports() {
        out.push_str(&format!("export {name}={}\n", rds_auth_proxy_protocol::shell::quote(&value)));
    }
    out.push_str("ready\n");
    print_flush(&out);
    tracing::info!(rds_front = %sim.front_addr, dsql_front = %sim.dsql_addr, redshift_front = %sim.redshift_addr, ssm = %sim.ssm.endpoint_url(), postgres = %sim.postgres.addr(), "simulator running; Ctrl-C to stop");
    // The caller installed the signal handlers before this (see shutdown_signal in main.rs), so
    // a SIGTERM right after `ready` is a clean shutdown.
    let code = shutdown.await;
    sim.stop().await;
    Ok(if code == 143 || code == 130 { 0 } else { code })
}

/// Writes `s` to stdout at once, so a reader of the pipe sees every line as soon as it is printed.
pub fn print_flush(s: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(s.as_bytes());
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    /// The `sim` command's flags alone.
    #[derive(Parser)]
    struct SimCli {
        #[command(flatten)]
        args: SimArgs,
    }

    fn sim_options(flags: &[&str]) -> SsmSimOptions {
        let argv = ["sim"].iter().chain(flags);
        ssm_options(&SimCli::try_parse_from(argv).expect("valid flags").args)
    }

    #[test]
    fn aws_limits_flag_and_its_parts() {
        assert_eq!(sim_options(&[]), SsmSimOptions::default());
        assert_eq!(sim_options(&["--ssm-aws-limits"]), SsmSimOptions::aws_limits());
        let tuned = sim_options(&["--ssm-aws-limits", "--ssm-pacing", "2ms", "--ssm-client-rate-limit", "0"]);
        assert_eq!(tuned.pacing, Some(Duration::from_millis(2)), "an explicit flag wins");
        assert_eq!(tuned.client_rate_limit, None, "0 switches the limit off");
        let alone = sim_options(&["--ssm-client-rate-limit", "900"]);
        assert_eq!(alone.client_rate_limit, Some(900));
        assert_eq!(alone.pacing, None);
        let faults = sim_options(&["--ssm-refuse-start", "AccessDeniedException", "--ssm-hang-upgrade", "--ssm-hang-handshake"]);
        assert_eq!(faults.refuse_start.as_deref(), Some("AccessDeniedException"));
        assert!(faults.hang_upgrade && faults.hang_handshake);
        let no_window = sim_options(&["--ssm-aws-limits", "--ssm-early-input-window", "0"]);
        assert_eq!(no_window.early_input_window, None, "0 switches the window off");
    }

    #[test]
    fn real_network_flag_and_its_parts() {
        assert_eq!(sim_options(&["--ssm-real-network"]), SsmSimOptions::real_network());
        assert_eq!(
            sim_options(&["--ssm-real-network", "--ssm-aws-limits"]),
            SsmSimOptions::aws_limits().with_real_network()
        );
        let tuned = sim_options(&["--ssm-real-network", "--ssm-latency", "100ms", "--ssm-jitter", "5ms"]);
        assert_eq!(tuned.latency, Some(Duration::from_millis(100)), "an explicit flag wins");
        assert_eq!(tuned.jitter, Some(Duration::from_millis(5)));
        assert_eq!(tuned.early_input_window, Some(Duration::from_millis(5)));
        let alone = sim_options(&["--ssm-latency", "10ms"]);
        assert_eq!(alone.latency, Some(Duration::from_millis(10)));
        assert_eq!(alone.early_input_window, None, "latency alone adds no window");
    }
}
