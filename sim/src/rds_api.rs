//! The simulated RDS API: DescribeDBInstances and DescribeDBClusters over the Query protocol
//! ([`super::query`], `Version=2014-10-31`), SigV4-checked for `rds` in the simulator's region,
//! describing the instance the simulator serves ([`SIM_INSTANCE_ID`] at [`SIM_ENDPOINT`]) and an
//! Aurora PostgreSQL cluster. Knobs ([`RdsApiOptions`]) turn IAM authentication off, change the
//! engine or the status — what `--db-instance` must refuse — and can be flipped while it runs.

use std::sync::{Arc, Mutex};

use http::StatusCode;

use super::query::{xml_escape, Handler, Params, QueryError, QueryServer, QueryService};
use super::runner::{SIM_DB_PORT, SIM_ENDPOINT, SIM_REGION};
use super::sigv4::SimCredentials;
use super::sts::SIM_ACCOUNT;

/// The DB instance identifier of [`SIM_ENDPOINT`] (its first label, as RDS names endpoints).
pub const SIM_INSTANCE_ID: &str = "simdb";
/// The instance's DbiResourceId: what `rds-db:connect` ARNs name.
pub const SIM_DBI_RESOURCE_ID: &str = "db-SIMABCDEFGHIJKLMNOPQRSTU2";
/// The simulated Aurora PostgreSQL cluster.
pub const SIM_CLUSTER_ID: &str = "simcluster";
pub const SIM_CLUSTER_ENDPOINT: &str = "simcluster.cluster-c0sim0000000.eu-central-1.rds.amazonaws.com";
pub const SIM_CLUSTER_READER_ENDPOINT: &str =
    "simcluster.cluster-ro-c0sim0000000.eu-central-1.rds.amazonaws.com";
/// A custom endpoint of the cluster (not listed by DescribeDBClusters; served by the front).
pub const SIM_CLUSTER_CUSTOM_ENDPOINT: &str =
    "simcustom.cluster-custom-c0sim0000000.eu-central-1.rds.amazonaws.com";
pub const SIM_CLUSTER_RESOURCE_ID: &str = "cluster-SIMABCDEFGHIJKLMNOPQRST";

/// What the simulated RDS API says about its instance and cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdsApiOptions {
    /// `IAMDatabaseAuthenticationEnabled`.
    pub iam_auth: bool,
    /// The instance's `Engine` (the cluster is `aurora-postgresql` unless this is not PostgreSQL).
    pub engine: String,
    /// `DBInstanceStatus` / the cluster's `Status`.
    pub status: String,
}

impl Default for RdsApiOptions {
    fn default() -> Self {
        RdsApiOptions {
            iam_auth: true,
            engine: "postgres".into(),
            status: "available".into(),
        }
    }
}

/// A running simulated RDS API.
pub struct RdsApiSim {
    server: QueryServer,
    options: Arc<Mutex<RdsApiOptions>>,
}

impl RdsApiSim {
    pub async fn start(options: RdsApiOptions, credentials: SimCredentials) -> std::io::Result<Self> {
        let options = Arc::new(Mutex::new(options));
        let state = options.clone();
        let handler: Handler = Arc::new(move |action, params, _signer| {
            let options = state.lock().unwrap_or_else(|p| p.into_inner()).clone();
            match action {
                "DescribeDBInstances" => describe_instances(&options, params),
                "DescribeDBClusters" => describe_clusters(&options, params),
                other => Err(QueryError::bad_request(
                    "InvalidAction",
                    format!("Could not find operation {other} for version 2014-10-31"),
                )),
            }
        });
        let server = QueryServer::start(
            QueryService {
                signing_name: "rds",
                version: "2014-10-31",
                xmlns: "http://rds.amazonaws.com/doc/2014-10-31/",
                region: Some(SIM_REGION.to_owned()),
            },
            credentials,
            handler,
        )
        .await?;
        Ok(RdsApiSim { server, options })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_RDS`.
    pub fn endpoint_url(&self) -> String {
        self.server.endpoint_url()
    }

    /// Changes what the API reports from the next call on.
    pub fn update(&self, change: impl FnOnce(&mut RdsApiOptions)) {
        change(&mut self.options.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn stop(&self) {
        self.server.stop();
    }
}

fn not_found(code: &str, message: String) -> QueryError {
    QueryError {
        status: StatusCode::NOT_FOUND,
        code: code.to_owned(),
        message,
    }
}

fn describe_instances(options: &RdsApiOptions, params: &Params) -> Result<String, QueryError> {
    if let Some(id) = params.get("DBInstanceIdentifier") {
        if !id.eq_ignore_ascii_case(SIM_INSTANCE_ID) {
            return Err(not_found("DBInstanceNotFound", format!("DBInstance {id} not found.")));
        }
    }
    Ok(format!(
        "    <DBInstances>\n      <DBInstance>\n        <DBInstanceIdentifier>{SIM_INSTANCE_ID}</DBInstanceIdentifier>\n        \
         <DBInstanceClass>db.t4g.micro</DBInstanceClass>\n        <Engine>{engine}</Engine>\n        \
         <DBInstanceStatus>{status}</DBInstanceStatus>\n        <MasterUsername>postgres</MasterUsername>\n        \
         <Endpoint>\n          <Address>{SIM_ENDPOINT}</Address>\n          <Port>{SIM_DB_PORT}</Port>\n          \
         <HostedZoneId>Z1RLNUO7B9Q6NB</HostedZoneId>\n        </Endpoint>\n        \
         <IAMDatabaseAuthenticationEnabled>{iam}</IAMDatabaseAuthenticationEnabled>\n        \
         <DbiResourceId>{SIM_DBI_RESOURCE_ID}</DbiResourceId>\n        \
         <DBInstanceArn>arn:aws:rds:{SIM_REGION}:{SIM_ACCOUNT}:db:{SIM_INSTANCE_ID}</DBInstanceArn>\n      \
         </DBInstance>\n    </DBInstances>\n",
        engine = xml_escape(&options.engine),
        status = xml_escape(&options.status),
        iam = options.iam_auth,
    ))
}

fn describe_clusters(options: &RdsApiOptions, params: &Params) -> Result<String, QueryError> {
    if let Some(id) = params.get("DBClusterIdentifier") {
        if !id.eq_ignore_ascii_case(SIM_CLUSTER_ID) {
            return Err(not_found("DBClusterNotFoundFault", format!("DBCluster {id} not found.")));
        }
    }
    let engine = if options.engine == "postgres" {
        "aurora-postgresql"
    } else {
        options.engine.as_str()
    };
    Ok(format!(
        "    <DBClusters>\n      <DBCluster>\n        <DBClusterIdentifier>{SIM_CLUSTER_ID}</DBClusterIdentifier>\n        \
         <Engine>{engine}</Engine>\n        <Status>{status}</Status>\n        \
         <Endpoint>{SIM_CLUSTER_ENDPOINT}</Endpoint>\n        <ReaderEndpoint>{SIM_CLUSTER_READER_ENDPOINT}</ReaderEndpoint>\n        \
         <Port>{SIM_DB_PORT}</Port>\n        <IAMDatabaseAuthenticationEnabled>{iam}</IAMDatabaseAuthenticationEnabled>\n        \
         <DbClusterResourceId>{SIM_CLUSTER_RESOURCE_ID}</DbClusterResourceId>\n        \
         <DBClusterArn>arn:aws:rds:{SIM_REGION}:{SIM_ACCOUNT}:cluster:{SIM_CLUSTER_ID}</DBClusterArn>\n      \
         </DBCluster>\n    </DBClusters>\n",
        engine = xml_escape(engine),
        status = xml_escape(&options.status),
        iam = options.iam_auth,
    ))
}
