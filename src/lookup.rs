//! Finding the database and the node by name: `--db-instance NAME` / `--db-cluster NAME
//! [--reader]` become the endpoint and port (RDS DescribeDBInstances / DescribeDBClusters), and
//! `--ssm-target auto [--ssm-tag KEY=VALUE]` becomes one online managed node (SSM
//! DescribeInstanceInformation). Both run before the configuration is validated, so everything
//! downstream sees an ordinary `--target` and `--ssm-target`. A database that cannot take IAM
//! logins (IAM authentication off, not PostgreSQL, not available) is refused here, with a HINT,
//! before any client waits on it.

use crate::auth::identity::StsApi;
use crate::aws::{AwsSetup, Credentials};
use crate::cli::{ProxyArgs, Via};
use crate::tunnel::ssm::api::{ApiError, NodeInfo, SsmApi};

pub use crate::rds_api::{DbDescription, RdsApi, RdsApiError};

/// `--ssm-target auto`.
pub const AUTO_NODE: &str = "auto";

/// What to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbRef {
    Instance(String),
    Cluster { id: String, reader: bool },
}

impl DbRef {
    pub fn from_args(args: &ProxyArgs) -> Option<DbRef> {
        match (&args.db_instance, &args.db_cluster) {
            (Some(id), _) => Some(DbRef::Instance(id.clone())),
            (None, Some(id)) => Some(DbRef::Cluster {
                id: id.clone(),
                reader: args.reader,
            }),
            (None, None) => None,
        }
    }

    fn flag(&self) -> String {
        match self {
            DbRef::Instance(id) => format!("--db-instance {id}"),
            DbRef::Cluster { id, reader: false } => format!("--db-cluster {id}"),
            DbRef::Cluster { id, reader: true } => format!("--db-cluster {id} --reader"),
        }
    }

    fn id(&self) -> &str {
        match self {
            DbRef::Instance(id) | DbRef::Cluster { id, .. } => id,
        }
    }

    /// The `aws rds modify-…` command that enables IAM database authentication.
    fn enable_iam_command(&self) -> String {
        match self {
            DbRef::Instance(id) => format!(
                "aws rds modify-db-instance --db-instance-identifier {id} \
                 --enable-iam-database-authentication --apply-immediately"
            ),
            DbRef::Cluster { id, .. } => format!(
                "aws rds modify-db-cluster --db-cluster-identifier {id} \
                 --enable-iam-database-authentication --apply-immediately"
            ),
        }
    }
}

/// A database found by name and fit for IAM logins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDb {
    pub endpoint: String,
    pub port: u16,
    pub description: DbDescription,
}

/// Why a name lookup failed; every variant has a [`LookupError::hint`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("{what} lookup failed: {source}")]
    Rds {
        what: String,
        #[source]
        source: RdsApiError,
    },
    #[error("{flag}: IAM database authentication is not enabled on it")]
    IamAuthDisabled { flag: String, command: String },
    #[error("{flag}: its engine is {engine}, not PostgreSQL")]
    NotPostgres { flag: String, engine: String },
    #[error("{flag}: its status is {status}, not available")]
    NotAvailable { flag: String, status: String },
    #[error("{flag}: RDS reports no {which} endpoint for it yet")]
    NoEndpoint { flag: String, which: &'static str },
    #[error("{what} lookup failed: {source}")]
    Engine {
        what: String,
        #[source]
        source: Box<crate::aws_api::EngineApiError>,
    },
    #[error("{flag}: its status is {status}, not {wanted}")]
    EngineNotAvailable {
        flag: String,
        status: String,
        wanted: &'static str,
        /// The AWS CLI command that shows the status.
        check: String,
    },
    #[error("--ssm-target auto: DescribeInstanceInformation failed: {0}")]
    Ssm(#[source] ApiError),
    #[error("--ssm-target auto: no online managed node matches {filter}")]
    NoNode { filter: String, offline: Vec<String> },
    #[error("--ssm-tag {0:?} must be KEY=VALUE")]
    BadTag(String),
    #[error("no AWS region: pass --region, or set AWS_REGION or a region in your AWS profile")]
    NoRegion,
}

impl LookupError {
    /// Whether the named thing is wrong or unfit (exit code 2), not the way to AWS (1).
    pub fn is_input_error(&self) -> bool {
        match self {
            LookupError::Rds { source, .. } => matches!(source, RdsApiError::NotFound { .. }),
            LookupError::Engine { source, .. } => matches!(**source, crate::aws_api::EngineApiError::NotFound { .. }),
            LookupError::Ssm(_) => false,
            _ => true,
        }
    }

    /// What the user should do about it.
    pub fn hint(&self) -> String {
        match self {
            LookupError::Rds { source, .. } => source.hint(),
            LookupError::Engine { source, .. } => source.hint(),
            LookupError::EngineNotAvailable { flag, check, .. } => format!(
                "Wait until it is available (`{check}` shows the status), or resume it if it is \
                 paused; then run the same command ({flag}) again."
            ),
            LookupError::IamAuthDisabled { command, .. } => format!(
                "rds-auth-proxy logs in with IAM tokens, which RDS accepts only with IAM database \
                 authentication enabled: {command}"
            ),
            LookupError::NotPostgres { .. } => {
                "rds-auth-proxy serves PostgreSQL only (engines postgres and aurora-postgresql): \
                 check the name, or --db-instance vs --db-cluster."
                    .into()
            }
            LookupError::NotAvailable { flag, .. } => format!(
                "Wait until it is available (`aws rds describe-db-instances` / \
                 `describe-db-clusters` shows the status), or start it if it is stopped; then \
                 run the same command ({flag}) again."
            ),
            LookupError::NoEndpoint { .. } => {
                "The database is still being created; wait until it is available and retry.".into()
            }
            LookupError::Ssm(e) => e.hint(),
            LookupError::NoNode { filter, offline } => {
                let mut hint = format!(
                    "No managed node with PingStatus Online matches {filter} in this region. Check \
                     the tags (`aws ssm describe-instance-information --filters \
                     Key=PingStatus,Values=Online`), --region, and that the node's SSM Agent runs; \
                     or name a node with --ssm-target i-…."
                );
                if !offline.is_empty() {
                    hint.push_str(&format!(" Matching but offline: {}.", offline.join(", ")));
                }
                hint
            }
            LookupError::BadTag(_) => "Give tags as --ssm-tag KEY=VALUE, e.g. --ssm-tag role=db-tunnel.".into(),
            LookupError::NoRegion => "Give the region with --region (e.g. --region eu-central-1), or set AWS_REGION or a region in your AWS profile.".into(),
        }
    }
}

/// Checks that a described database can take IAM logins and picks its endpoint.
pub fn check_db(db: &DbRef, description: DbDescription) -> Result<FoundDb, LookupError> {
    let flag = db.flag();
    let engine = description.engine.to_ascii_lowercase();
    if engine != "postgres" && engine != "aurora-postgresql" {
        return Err(LookupError::NotPostgres {
            flag,
            engine: description.engine.clone(),
        });
    }
    if !description.iam_auth {
        return Err(LookupError::IamAuthDisabled {
            flag,
            command: db.enable_iam_command(),
        });
    }
    if description.status != "available" {
        return Err(LookupError::NotAvailable {
            flag,
            status: description.status.clone(),
        });
    }
    let (endpoint, which) = match db {
        DbRef::Cluster { reader: true, .. } => (description.reader_endpoint.clone(), "reader"),
        _ => (description.endpoint.clone(), "writer"),
    };
    match (endpoint, description.port) {
        (Some(endpoint), Some(port)) if !endpoint.is_empty() => Ok(FoundDb {
            endpoint: endpoint.to_ascii_lowercase(),
            port,
            description,
        }),
        _ => Err(LookupError::NoEndpoint { flag, which }),
    }
}

/// Parses `--ssm-tag KEY=VALUE` flags into DescribeInstanceInformation filters (always with
/// `PingStatus=Online`).
pub fn node_filters(tags: &[String]) -> Result<Vec<(String, Vec<String>)>, LookupError> {
    let mut filters = vec![("PingStatus".to_owned(), vec!["Online".to_owned()])];
    for tag in tags {
        match tag.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => filters.push((format!("tag:{k}"), vec![v.to_owned()])),
            _ => return Err(LookupError::BadTag(tag.clone())),
        }
    }
    Ok(filters)
}

/// How the filter reads in messages: `PingStatus=Online, tag:role=db-tunnel`.
fn describe_filter(tags: &[String]) -> String {
    let mut parts = vec!["PingStatus=Online".to_owned()];
    parts.extend(tags.iter().map(|t| format!("tag:{t}")));
    parts.join(", ")
}

/// The node `--ssm-target auto` takes: the online one with the smallest id, so the same
/// account state always gives the same node.
pub fn pick_node(nodes: &[NodeInfo]) -> Option<&NodeInfo> {
    nodes
        .iter()
        .filter(|n| n.ping_status == "Online")
        .min_by(|a, b| a.id.cmp(&b.id))
}

/// Where AWS API clients come from: the chain (the binary), or fixed credentials with explicit
/// endpoints (tests, demo).
pub enum ApiSource<'a> {
    Sdk(&'a aws_config::SdkConfig),
    Fixed(&'a AwsSetup),
}

impl ApiSource<'_> {
    pub fn rds(&self, region: &str) -> RdsApi {
        match self {
            ApiSource::Sdk(sdk) => RdsApi::from_sdk_config(sdk, region),
            ApiSource::Fixed(setup) => RdsApi::with_credentials(setup.credentials.clone(), region, setup.rds_endpoint.as_deref()),
        }
    }

    pub fn ssm(&self, region: &str) -> SsmApi {
        match self {
            ApiSource::Sdk(sdk) => SsmApi::from_sdk_config(sdk, region, None),
            ApiSource::Fixed(setup) => SsmApi::with_credentials(setup.credentials.clone(), region, setup.ssm_endpoint.as_deref()),
        }
    }

    pub fn dsql(&self, region: &str) -> crate::dsql_api::DsqlApi {
        use crate::dsql_api::DsqlApi;
        match self {
            ApiSource::Sdk(sdk) => DsqlApi::from_sdk_config(sdk, region),
            ApiSource::Fixed(setup) => DsqlApi::with_credentials(setup.credentials.clone(), region, setup.dsql_endpoint.as_deref()),
        }
    }

    pub fn redshift(&self, region: &str) -> crate::redshift_api::RedshiftApi {
        use crate::redshift_api::RedshiftApi;
        match self {
            ApiSource::Sdk(sdk) => RedshiftApi::from_sdk_config(sdk, region),
            ApiSource::Fixed(setup) => RedshiftApi::with_credentials(setup.credentials.clone(), region, setup.redshift_endpoint.as_deref()),
        }
    }

    pub fn redshift_serverless(&self, region: &str) -> crate::redshift_serverless_api::RedshiftServerlessApi {
        use crate::redshift_serverless_api::RedshiftServerlessApi;
        match self {
            ApiSource::Sdk(sdk) => RedshiftServerlessApi::from_sdk_config(sdk, region),
            ApiSource::Fixed(setup) => RedshiftServerlessApi::with_credentials(
                setup.credentials.clone(),
                region,
                setup.redshift_serverless_endpoint.as_deref(),
            ),
        }
    }

    pub fn sts(&self, region: &str) -> StsApi {
        match self {
            ApiSource::Sdk(sdk) => StsApi::from_sdk_config(sdk, region),
            ApiSource::Fixed(setup) => StsApi::with_credentials(setup.credentials.clone(), region, setup.sts_endpoint.as_deref()),
        }
    }
}

/// What [`resolve_names`] found (for the log line and `doctor`).
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub db: Option<FoundDb>,
    /// The node `auto` picked.
    pub node: Option<String>,
}

/// A DSQL cluster, Redshift cluster or Serverless workgroup to find by name: only without
/// `--target` (with it, the flag just names the resource the credentials are for).
#[derive(Debug, Clone, PartialEq, Eq)]
enum EngineRef {
    Dsql(String),
    Redshift(String),
    Workgroup(String),
}

impl EngineRef {
    fn from_args(args: &ProxyArgs) -> Option<EngineRef> {
        if args.target.is_some() {
            return None;
        }
        if let Some(id) = &args.dsql_cluster {
            return Some(EngineRef::Dsql(id.clone()));
        }
        if let Some(name) = &args.redshift_workgroup {
            return Some(EngineRef::Workgroup(name.clone()));
        }
        args.redshift_cluster.clone().map(EngineRef::Redshift)
    }

    fn flag(&self) -> String {
        match self {
            EngineRef::Dsql(id) => format!("--dsql-cluster {id}"),
            EngineRef::Redshift(name) => format!("--redshift-cluster {name}"),
            EngineRef::Workgroup(name) => format!("--redshift-workgroup {name}"),
        }
    }
}

/// Finds a DSQL cluster (dsql:GetCluster), Redshift cluster (redshift:DescribeClusters) or
/// Serverless workgroup (redshift-serverless:GetWorkgroup) and checks it takes connections.
async fn find_engine(found: &EngineRef, source: &ApiSource<'_>, region: &str) -> Result<FoundDb, LookupError> {
    let flag = found.flag();
    let failed = |source| LookupError::Engine {
        what: flag.clone(),
        source: Box::new(source),
    };
    let not_available = |status: String, wanted: &'static str, check: String| LookupError::EngineNotAvailable {
        flag: flag.clone(),
        status,
        wanted,
        check,
    };
    let (description, engine) = match found {
        EngineRef::Dsql(id) => {
            let cluster = source.dsql(region).get_cluster(id).await.map_err(failed)?;
            // An idle cluster wakes on the first connection.
            if !matches!(cluster.status.as_str(), "ACTIVE" | "IDLE") {
                return Err(not_available(cluster.status, "ACTIVE", format!("aws dsql get-cluster --identifier {id}")));
            }
            let endpoint = cluster.endpoint_name(region);
            (
                DbDescription {
                    id: cluster.id,
                    engine: "aurora-dsql".into(),
                    status: cluster.status,
                    iam_auth: true,
                    endpoint: Some(endpoint),
                    reader_endpoint: None,
                    port: Some(crate::engine::Engine::Dsql.default_port()),
                    resource_id: None,
                    arn: Some(cluster.arn),
                },
                "aurora-dsql",
            )
        }
        EngineRef::Redshift(name) => {
            let cluster = source.redshift(region).describe_cluster(name).await.map_err(failed)?;
            if cluster.status != "available" {
                return Err(not_available(
                    cluster.status,
                    "available",
                    format!("aws redshift describe-clusters --cluster-identifier {name}"),
                ));
            }
            (
                DbDescription {
                    id: cluster.id,
                    engine: "redshift".into(),
                    status: cluster.status,
                    iam_auth: true,
                    endpoint: cluster.endpoint,
                    reader_endpoint: None,
                    port: cluster.port,
                    resource_id: None,
                    arn: cluster.namespace_arn,
                },
                "redshift",
            )
        }
        EngineRef::Workgroup(name) => {
            let workgroup = source.redshift_serverless(region).get_workgroup(name).await.map_err(failed)?;
            if workgroup.status != "AVAILABLE" {
                return Err(not_available(
                    workgroup.status,
                    "AVAILABLE",
                    format!("aws redshift-serverless get-workgroup --workgroup-name {name}"),
                ));
            }
            (
                DbDescription {
                    id: workgroup.name,
                    engine: "redshift-serverless".into(),
                    status: workgroup.status,
                    iam_auth: true,
                    endpoint: workgroup.endpoint,
                    reader_endpoint: None,
                    port: workgroup.port,
                    resource_id: None,
                    arn: Some(workgroup.arn),
                },
                "redshift-serverless",
            )
        }
    };
    match (description.endpoint.clone(), description.port) {
        (Some(endpoint), Some(port)) if !endpoint.is_empty() => {
            tracing::info!(lookup = %flag, endpoint = %endpoint, port, engine, "found the database by name");
            Ok(FoundDb {
                endpoint: endpoint.to_ascii_lowercase(),
                port,
                description,
            })
        }
        _ => Err(LookupError::NoEndpoint { flag, which: "connection" }),
    }
}

/// Whether `args` need an AWS lookup before they can be validated.
pub fn needs_lookup(args: &ProxyArgs) -> bool {
    DbRef::from_args(args).is_some() || EngineRef::from_args(args).is_some() || (args.via == Via::Ssm && args.ssm_target.as_deref() == Some(AUTO_NODE))
}

/// Replaces `--db-instance`/`--db-cluster` by `--target ENDPOINT:PORT` and `--ssm-target auto`
/// by the node it picks, in place.
pub async fn resolve_names(args: &mut ProxyArgs, source: &ApiSource<'_>, region: &str) -> Result<Resolved, LookupError> {
    let mut resolved = Resolved::default();
    if let Some(db) = DbRef::from_args(args) {
        let api = source.rds(region);
        let description = match &db {
            DbRef::Instance(id) => api.describe_instance(id).await,
            DbRef::Cluster { id, .. } => api.describe_cluster(id).await,
        }
        .map_err(|source| LookupError::Rds {
            what: db.flag(),
            source,
        })?;
        let found = check_db(&db, description)?;
        tracing::info!(
            lookup = %db.flag(),
            endpoint = %found.endpoint,
            port = found.port,
            engine = %found.description.engine,
            "found the database by name"
        );
        let _ = db.id();
        args.target = Some(format!("{}:{}", found.endpoint, found.port));
        args.db_instance = None;
        args.db_cluster = None;
        args.reader = false;
        resolved.db = Some(found);
    }
    if let Some(engine) = EngineRef::from_args(args) {
        let found = find_engine(&engine, source, region).await?;
        // The flag stays: it names the resource the credentials are asked for.
        args.target = Some(format!("{}:{}", found.endpoint, found.port));
        resolved.db = Some(found);
    }
    if args.via == Via::Ssm && args.ssm_target.as_deref() == Some(AUTO_NODE) {
        let filters = node_filters(&args.ssm_tag)?;
        let api = source.ssm(region);
        let nodes = api.describe_nodes(&filters).await.map_err(LookupError::Ssm)?;
        let Some(node) = pick_node(&nodes) else {
            // Name the offline nodes that match the tags: the likely cause.
            let mut tag_filters = filters.clone();
            tag_filters.retain(|(k, _)| k != "PingStatus");
            let offline = match api.describe_nodes(&tag_filters).await {
                Ok(all) => all.into_iter().filter(|n| n.ping_status != "Online").map(|n| format!("{} ({})", n.id, n.ping_status)).collect(),
                Err(_) => Vec::new(),
            };
            return Err(LookupError::NoNode {
                filter: describe_filter(&args.ssm_tag),
                offline,
            });
        };
        tracing::info!(
            node = %node.id,
            name = node.computer_name.as_deref().unwrap_or(""),
            filter = %describe_filter(&args.ssm_tag),
            candidates = nodes.len(),
            "--ssm-target auto picked the online managed node with the smallest id"
        );
        args.ssm_target = Some(node.id.clone());
        resolved.node = Some(node.id.clone());
    }
    Ok(resolved)
}

/// The region for lookups: `--region`, else the AWS configuration's (fixed setups need --region).
pub async fn lookup_region(args: &ProxyArgs, credentials: &Credentials) -> Result<String, LookupError> {
    if let Some(region) = &args.region {
        return Ok(region.clone());
    }
    match credentials {
        Credentials::Chain => crate::aws::configured_region(args.profile.as_deref())
            .await
            .ok_or(LookupError::NoRegion),
        _ => Err(LookupError::NoRegion),
    }
}

/// [`resolve_names`] for the binary and tests: builds the API clients from `credentials`.
pub async fn resolve_args(args: &mut ProxyArgs, credentials: &Credentials) -> Result<Resolved, LookupError> {
    if !needs_lookup(args) {
        return Ok(Resolved::default());
    }
    let region = lookup_region(args, credentials).await?;
    match credentials {
        Credentials::Chain => {
            let sdk = crate::auth::credentials::load_shared_sdk_config(args.profile.as_deref(), Some(&region)).await;
            resolve_names(args, &ApiSource::Sdk(&sdk), &region).await
        }
        Credentials::Fixed(c) => {
            let setup = AwsSetup {
                credentials: c.clone(),
                ssm_endpoint: None,
                secrets_endpoint: None,
                sts_endpoint: None,
                rds_endpoint: None,
                redshift_endpoint: None,
                redshift_serverless_endpoint: None,
                dsql_endpoint: None,
            };
            resolve_names(args, &ApiSource::Fixed(&setup), &region).await
        }
        Credentials::FixedWith(setup) => resolve_names(args, &ApiSource::Fixed(setup), &region).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description(engine: &str, iam: bool, status: &str) -> DbDescription {
        DbDescription {
            id: "db1".into(),
            engine: engine.into(),
            status: status.into(),
            iam_auth: iam,
            endpoint: Some("DB1.abc.eu-west-1.rds.amazonaws.com".into()),
            reader_endpoint: Some("db1.cluster-ro-abc.eu-west-1.rds.amazonaws.com".into()),
            port: Some(5432),
            resource_id: Some("db-ABC".into()),
            arn: None,
        }
    }

    #[test]
    fn check_db_table() {
        let inst = DbRef::Instance("db1".into());
        let found = check_db(&inst, description("postgres", true, "available")).unwrap();
        assert_eq!((found.endpoint.as_str(), found.port), ("db1.abc.eu-west-1.rds.amazonaws.com", 5432));
        let reader = DbRef::Cluster { id: "c".into(), reader: true };
        let found = check_db(&reader, description("aurora-postgresql", true, "available")).unwrap();
        assert_eq!(found.endpoint, "db1.cluster-ro-abc.eu-west-1.rds.amazonaws.com");

        let e = check_db(&inst, description("mysql", true, "available")).unwrap_err();
        assert_eq!(e.to_string(), "--db-instance db1: its engine is mysql, not PostgreSQL");
        let e = check_db(&inst, description("postgres", false, "available")).unwrap_err();
        assert!(e.hint().contains("aws rds modify-db-instance --db-instance-identifier db1 --enable-iam-database-authentication"), "{}", e.hint());
        let e = check_db(&DbRef::Cluster { id: "c".into(), reader: false }, description("aurora-postgresql", false, "available")).unwrap_err();
        assert!(e.hint().contains("aws rds modify-db-cluster --db-cluster-identifier c"), "{}", e.hint());
        let e = check_db(&inst, description("postgres", true, "stopped")).unwrap_err();
        assert_eq!(e.to_string(), "--db-instance db1: its status is stopped, not available");
        let mut creating = description("postgres", true, "available");
        creating.endpoint = None;
        assert!(matches!(check_db(&inst, creating), Err(LookupError::NoEndpoint { .. })));
    }

    #[test]
    fn node_choice_is_deterministic() {
        let n = |id: &str, ping: &str| NodeInfo { id: id.into(), ping_status: ping.into(), computer_name: None };
        let nodes = [n("i-0b", "Online"), n("i-0a", "ConnectionLost"), n("i-0c", "Online")];
        assert_eq!(pick_node(&nodes).unwrap().id, "i-0b");
        assert!(pick_node(&nodes[1..2]).is_none());
        assert_eq!(
            node_filters(&["role=db-tunnel".into()]).unwrap(),
            vec![("PingStatus".to_owned(), vec!["Online".to_owned()]), ("tag:role".to_owned(), vec!["db-tunnel".to_owned()])]
        );
        assert!(matches!(node_filters(&["role".into()]), Err(LookupError::BadTag(_))));
        assert_eq!(describe_filter(&["role=x".into()]), "PingStatus=Online, tag:role=x");
    }
}
