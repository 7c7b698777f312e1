//! Which AWS database a target is — Amazon RDS / Aurora PostgreSQL, Aurora DSQL, Amazon Redshift
//! (provisioned) or Redshift Serverless — told from the endpoint name's shape ([`parse_endpoint`])
//! or forced with `--engine`. Each engine has its own password (an RDS IAM token, a DSQL token,
//! Redshift temporary credentials), its own trust roots and its own IAM permissions; this module
//! only names them and reads what the name says (region, cluster or workgroup).

use std::fmt;

/// `--engine`: the database service behind the endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Engine {
    /// Amazon RDS for PostgreSQL, Aurora PostgreSQL and RDS Proxy: an RDS IAM token
    /// (`rds-db:connect`).
    #[default]
    Rds,
    /// Aurora DSQL: a DSQL auth token (`dsql:DbConnect`, `dsql:DbConnectAdmin` for `admin`).
    Dsql,
    /// Amazon Redshift, provisioned cluster: temporary credentials from
    /// `redshift:GetClusterCredentials` (or `…WithIAM`), logged in as the user they name.
    Redshift,
    /// Amazon Redshift Serverless: temporary credentials from `redshift-serverless:GetCredentials`.
    #[value(name = "redshift-serverless")]
    RedshiftServerless,
}

impl Engine {
    /// The value of `--engine` and of the `engine` label on metrics and audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Rds => "rds",
            Engine::Dsql => "dsql",
            Engine::Redshift => "redshift",
            Engine::RedshiftServerless => "redshift-serverless",
        }
    }

    /// The product name, for messages.
    pub fn product(self) -> &'static str {
        match self {
            Engine::Rds => "Amazon RDS",
            Engine::Dsql => "Aurora DSQL",
            Engine::Redshift => "Amazon Redshift",
            Engine::RedshiftServerless => "Amazon Redshift Serverless",
        }
    }

    /// The port the service listens on unless configured otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            Engine::Rds | Engine::Dsql => 5432,
            Engine::Redshift | Engine::RedshiftServerless => 5439,
        }
    }

    /// The database every cluster has: `dev` on Redshift, `postgres` elsewhere (DSQL has only
    /// that one).
    pub fn default_database(self) -> &'static str {
        match self {
            Engine::Redshift | Engine::RedshiftServerless => "dev",
            Engine::Rds | Engine::Dsql => "postgres",
        }
    }

    /// Whether the server certificate chains to the Amazon Trust Services roots (an ACM
    /// certificate) rather than to the RDS CA: DSQL and Redshift always; RDS only for RDS Proxy
    /// names, which [`crate::tls`] tells apart.
    pub fn uses_amazon_trust_services(self) -> bool {
        !matches!(self, Engine::Rds)
    }

    /// Whether a login rewrites the startup's user to the one the credentials name (Redshift's
    /// `IAM:alice`).
    pub fn rewrites_user(self) -> bool {
        matches!(self, Engine::Redshift | Engine::RedshiftServerless)
    }

    /// How long a connection may last before the service ends it: Aurora DSQL's 60 minutes.
    pub fn connection_limit(self) -> Option<std::time::Duration> {
        match self {
            Engine::Dsql => Some(std::time::Duration::from_secs(60 * 60)),
            _ => None,
        }
    }
}

/// `--redshift-auth`: which Redshift API names the database user of a provisioned cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum RedshiftAuth {
    /// `redshift:GetClusterCredentials` for the client's user (logged in as `IAM:USER`, or
    /// `IAMA:USER` with AutoCreate).
    #[default]
    DbUser,
    /// `redshift:GetClusterCredentialsWithIAM`: the user follows the IAM identity (`IAM:NAME`,
    /// `IAMR:ROLE`), whatever user the client names.
    Iam,
}

impl RedshiftAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            RedshiftAuth::DbUser => "db-user",
            RedshiftAuth::Iam => "iam",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which database service the target is, and what its login needs (`--engine`,
/// `--dsql-cluster`, `--redshift-cluster`, `--redshift-workgroup`, `--redshift-*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineSettings {
    pub engine: Engine,
    /// The DSQL cluster id, the Redshift cluster identifier or the Serverless workgroup name;
    /// always set for Redshift and Serverless (their credentials are asked for by it).
    pub resource: Option<String>,
    pub redshift_auth: RedshiftAuth,
    pub redshift_auto_create: bool,
    pub redshift_db_groups: Vec<String>,
}

/// What a DSQL or Redshift endpoint name says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointParts {
    pub engine: Engine,
    pub region: String,
    /// The DSQL cluster id, the Redshift cluster identifier or the Serverless workgroup name;
    /// `None` when the name does not carry it (a Serverless managed VPC endpoint).
    pub resource: Option<String>,
    /// The 12-digit account in a Serverless name.
    pub account: Option<String>,
}

fn label_ok(l: &str) -> bool {
    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn is_region(l: &str) -> bool {
    label_ok(l) && l.split('-').count() >= 3 && !l.starts_with('-') && !l.ends_with('-')
}

/// A Serverless managed VPC endpoint's first label: `NAME-endpoint-` and 20 characters of id.
fn is_vpc_endpoint_label(l: &str) -> bool {
    l.rsplit_once("-endpoint-")
        .is_some_and(|(name, id)| !name.is_empty() && id.len() >= 17 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Reads a DSQL or Redshift endpoint name (case-insensitive, a trailing dot ignored); `None` for
/// anything else, RDS names included ([`crate::tls::classify_endpoint`] knows those).
///
/// * Aurora DSQL: `ID.dsql.REGION.on.aws`, and `ID.dsql-SVC.REGION.on.aws` (PrivateLink, FIPS).
/// * Redshift: `CLUSTER.HASH.REGION.redshift.amazonaws.com`; in China `….amazonaws.com.cn`, also
///   with the region after `redshift`.
/// * Redshift Serverless: `WORKGROUP.ACCOUNT.REGION.redshift-serverless.amazonaws.com[.cn]`, and
///   a managed VPC endpoint `NAME-endpoint-ID.ACCOUNT.REGION.redshift-serverless.…` (no workgroup).
pub fn parse_endpoint(name: &str) -> Option<EndpointParts> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    let parts = |engine, region: &str, resource: Option<&str>, account: Option<&str>| {
        Some(EndpointParts {
            engine,
            region: region.to_owned(),
            resource: resource.map(str::to_owned),
            account: account.map(str::to_owned),
        })
    };
    match labels.as_slice() {
        [id, service, region, "on", "aws"] => {
            let dsql = *service == "dsql" || service.strip_prefix("dsql-").is_some_and(label_ok);
            let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
            (dsql && id_ok && is_region(region)).then_some(())?;
            parts(Engine::Dsql, region, Some(id), None)
        }
        [cluster, hash, region, "redshift", "amazonaws", "com"]
        | [cluster, hash, region, "redshift", "amazonaws", "com", "cn"]
        | [cluster, hash, "redshift", region, "amazonaws", "com", "cn"] => {
            (label_ok(cluster) && label_ok(hash) && is_region(region)).then_some(())?;
            parts(Engine::Redshift, region, Some(cluster), None)
        }
        [workgroup, account, region, "redshift-serverless", "amazonaws", "com"]
        | [workgroup, account, region, "redshift-serverless", "amazonaws", "com", "cn"] => {
            let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
            (label_ok(workgroup) && account_ok && is_region(region)).then_some(())?;
            let resource = (!is_vpc_endpoint_label(workgroup)).then_some(*workgroup);
            parts(Engine::RedshiftServerless, region, resource, Some(account))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape AWS documents or real configurations show, and look-alikes that are not.
    #[test]
    fn endpoint_names() {
        use Engine::*;
        let some = |engine, region: &str, resource: Option<&str>| Some((engine, region.to_owned(), resource.map(str::to_owned)));
        type Parsed = Option<(Engine, String, Option<String>)>;
        let cases: &[(&str, Parsed)] = &[
            ("abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws", some(Dsql, "us-east-1", Some("abcdefghijklmnopqrstuvwxyz"))),
            ("ABCDEFGHIJKLMNOPQRSTUVWXYZ.DSQL.US-EAST-1.ON.AWS.", some(Dsql, "us-east-1", Some("abcdefghijklmnopqrstuvwxyz"))),
            ("sim0dsql0000000000000000aa.dsql-fnh4.eu-central-1.on.aws", some(Dsql, "eu-central-1", Some("sim0dsql0000000000000000aa"))),
            ("peccy.dsql-fips.us-east-1.on.aws", some(Dsql, "us-east-1", Some("peccy"))),
            ("examplecluster.abc123xyz789.us-west-2.redshift.amazonaws.com", some(Redshift, "us-west-2", Some("examplecluster"))),
            ("my-cluster.cqhnzqunicma.us-gov-west-1.redshift.amazonaws.com", some(Redshift, "us-gov-west-1", Some("my-cluster"))),
            ("dw.cxyz.cn-northwest-1.redshift.amazonaws.com.cn", some(Redshift, "cn-northwest-1", Some("dw"))),
            ("dw.cxyz.redshift.cn-north-1.amazonaws.com.cn", some(Redshift, "cn-north-1", Some("dw"))),
            ("default-wg.123456789012.eu-west-1.redshift-serverless.amazonaws.com", some(RedshiftServerless, "eu-west-1", Some("default-wg"))),
            ("wg.123456789012.cn-north-1.redshift-serverless.amazonaws.com.cn", some(RedshiftServerless, "cn-north-1", Some("wg"))),
            // A managed VPC endpoint: the workgroup must be given.
            ("reports-endpoint-abcdefghijklmnopqrst.123456789012.eu-west-1.redshift-serverless.amazonaws.com", some(RedshiftServerless, "eu-west-1", None)),
            // Look-alikes and other services.
            ("abc.dsql.us-east-1.on.aws.evil.example", None),
            ("abc.dsqlx.us-east-1.on.aws", None),
            ("a-b.dsql.us-east-1.on.aws", None),
            ("abc.dsql.useast1.on.aws", None),
            ("x.lambda-url.us-east-1.on.aws", None),
            ("cluster.us-west-2.redshift.amazonaws.com", None),
            ("a.b.c.us-west-2.redshift.amazonaws.com", None),
            ("wg.1234.eu-west-1.redshift-serverless.amazonaws.com", None),
            ("wg.123456789012.eu-west-1.redshift-serverless.amazonaws.org", None),
            ("mydb.c9akciq32.eu-central-1.rds.amazonaws.com", None),
            ("redshift.example.com", None),
            ("127.0.0.1", None),
            ("", None),
        ];
        for (name, want) in cases {
            let got = parse_endpoint(name).map(|p| (p.engine, p.region, p.resource));
            assert_eq!(&got, want, "{name}");
        }
        let account = parse_endpoint("wg.123456789012.eu-west-1.redshift-serverless.amazonaws.com").unwrap().account;
        assert_eq!(account.as_deref(), Some("123456789012"));
    }

    #[test]
    fn engine_facts() {
        assert_eq!(Engine::default(), Engine::Rds);
        for (engine, name, port) in [
            (Engine::Rds, "rds", 5432),
            (Engine::Dsql, "dsql", 5432),
            (Engine::Redshift, "redshift", 5439),
            (Engine::RedshiftServerless, "redshift-serverless", 5439),
        ] {
            assert_eq!(engine.as_str(), name);
            assert_eq!(engine.default_port(), port);
            assert_eq!(<Engine as clap::ValueEnum>::from_str(name, false), Ok(engine));
        }
        assert_eq!(Engine::Dsql.connection_limit(), Some(std::time::Duration::from_secs(3600)));
        assert_eq!(Engine::Redshift.connection_limit(), None);
        assert!(Engine::Redshift.rewrites_user() && Engine::RedshiftServerless.rewrites_user());
        assert!(!Engine::Rds.rewrites_user() && !Engine::Dsql.rewrites_user());
    }
}
