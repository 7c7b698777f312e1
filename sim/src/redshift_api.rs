//! The simulated Redshift APIs that issue database passwords, each SigV4-checked with the
//! simulator's credentials (temporary ones included) for its own signing name in the simulator's
//! region:
//!
//! - Redshift (Query protocol, `Version=2012-12-01`, signing name `redshift`):
//!   GetClusterCredentials (`IAM:user`, or `IAMA:user` with AutoCreate), GetClusterCredentialsWithIAM
//!   (`IAM:sim-user` for the IAM user's keys, `IAMR:ROLE` for an assumed role's), DescribeClusters;
//! - Redshift Serverless (AWS JSON 1.1, `RedshiftServerless.*`, signing name
//!   `redshift-serverless`): GetCredentials (the caller's `IAM:`/`IAMR:` name) and GetWorkgroup.
//!
//! Every password goes into the [`RedshiftLogins`] the Redshift front checks. AccessDenied comes
//! when a test denies an action ([`ApiControl::deny`]), worded as IAM words it, with the resource
//! ARN the action is authorized on.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::{json, Value};

use super::json_api::{json_error, JsonAnswer, JsonCall, JsonHandler, JsonServer, JsonService};
use super::query::{xml_escape, ApiControl, Handler, Params, QueryError, QueryServer, QueryService};
use super::redshift::{RedshiftLogins, RedshiftTarget};
use super::runner::{
    SIM_REDSHIFT_CLUSTER, SIM_REDSHIFT_DB, SIM_REDSHIFT_ENDPOINT, SIM_REDSHIFT_PORT, SIM_REDSHIFT_SERVERLESS_ENDPOINT,
    SIM_REDSHIFT_WORKGROUP, SIM_REDSHIFT_WORKGROUP_ID, SIM_REGION,
};
use super::sigv4::SimCredentials;
use super::sts::{SIM_ACCOUNT, SIM_USER_ARN};
use rds_auth_proxy_protocol::time::Rfc3339;

/// The simulated cluster's master user (DescribeClusters).
pub const SIM_REDSHIFT_MASTER_USER: &str = "awsuser";
/// The Serverless namespace the workgroup belongs to.
pub const SIM_REDSHIFT_NAMESPACE: &str = "simns";

/// Who signed a call: their ARN (for AccessDenied) and the database user Redshift derives from
/// them (GetClusterCredentialsWithIAM, Serverless GetCredentials).
fn caller(credentials: &SimCredentials, signer: &str) -> (String, String) {
    match credentials.caller_of(signer) {
        Some((arn, _)) => {
            let prefix = format!("arn:aws:sts::{SIM_ACCOUNT}:assumed-role/");
            match arn.strip_prefix(&prefix).and_then(|rest| rest.split('/').next()) {
                Some(role) => {
                    let user = format!("IAMR:{role}");
                    (arn, user)
                }
                None => (arn, "IAM:sim-user".to_owned()),
            }
        }
        None => (SIM_USER_ARN.to_owned(), "IAM:sim-user".to_owned()),
    }
}

/// IAM's words for a denied action.
fn denied_message(caller_arn: &str, action: &str, resource: &str) -> String {
    format!(
        "User: {caller_arn} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action"
    )
}

fn redshift_arn(kind: &str, rest: &str) -> String {
    format!("arn:aws:redshift:{SIM_REGION}:{SIM_ACCOUNT}:{kind}:{rest}")
}

/// The Serverless workgroup's ARN (by its id, as IAM policies name it).
pub fn workgroup_arn() -> String {
    format!("arn:aws:redshift-serverless:{SIM_REGION}:{SIM_ACCOUNT}:workgroup/{SIM_REDSHIFT_WORKGROUP_ID}")
}

/// The simulated Redshift (provisioned) API.
pub struct RedshiftApiSim {
    server: QueryServer,
    control: Arc<ApiControl>,
}

impl RedshiftApiSim {
    pub async fn start(credentials: SimCredentials, logins: Arc<RedshiftLogins>) -> std::io::Result<Self> {
        let control = Arc::new(ApiControl::default());
        let (state, identities) = (control.clone(), credentials.clone());
        let handler: Handler = Arc::new(move |action, params, signer| {
            let denied = state.record(action);
            let (caller_arn, iam_user) = caller(&identities, signer);
            let deny = |resource: String| {
                Err(QueryError {
                    status: StatusCode::FORBIDDEN,
                    code: "AccessDenied".into(),
                    message: denied_message(&caller_arn, &format!("redshift:{action}"), &resource),
                })
            };
            match action {
                "GetClusterCredentials" => {
                    let db_user = db_user(params)?;
                    let cluster = cluster_id(params)?;
                    let life = duration(params)?;
                    let auto_create = flag(params, "AutoCreate")?;
                    db_groups(params)?;
                    if denied {
                        return deny(redshift_arn("dbuser", &format!("{cluster}/{db_user}")));
                    }
                    known_cluster(cluster)?;
                    let login = format!("{}:{db_user}", if auto_create { "IAMA" } else { "IAM" });
                    Ok(credentials_xml(&logins, &login, db_user, auto_create, life))
                }
                "GetClusterCredentialsWithIAM" => {
                    let cluster = cluster_id(params)?;
                    let life = duration(params)?;
                    if denied {
                        let db = params.get("DbName").map_or("*", String::as_str);
                        return deny(redshift_arn("dbname", &format!("{cluster}/{db}")));
                    }
                    known_cluster(cluster)?;
                    Ok(credentials_xml(&logins, &iam_user, &iam_user, true, life))
                }
                "DescribeClusters" => {
                    let cluster = params.get("ClusterIdentifier").map(String::as_str);
                    if denied {
                        return deny(redshift_arn("cluster", cluster.unwrap_or("*")));
                    }
                    if let Some(cluster) = cluster {
                        known_cluster(cluster)?;
                    }
                    Ok(describe_clusters_xml())
                }
                other => Err(QueryError::bad_request(
                    "InvalidAction",
                    format!("Could not find operation {other} for version 2012-12-01"),
                )),
            }
        });
        let server = QueryServer::start(
            QueryService {
                signing_name: "redshift",
                version: "2012-12-01",
                xmlns: "http://redshift.amazonaws.com/doc/2012-12-01/",
                region: Some(SIM_REGION.to_owned()),
            },
            credentials,
            handler,
        )
        .await?;
        Ok(RedshiftApiSim { server, control })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_REDSHIFT`.
    pub fn endpoint_url(&self) -> String {
        self.server.endpoint_url()
    }

    /// Calls by action, and the AccessDenied switch per action.
    pub fn control(&self) -> &Arc<ApiControl> {
        &self.control
    }

    pub fn stop(&self) {
        self.server.stop();
    }
}

fn invalid(message: impl Into<String>) -> QueryError {
    QueryError::bad_request("InvalidParameterValue", message)
}

/// `DbUser` by AWS's rules: 1–64 characters of letters, digits, `_+.@-`, a letter first (so no
/// `:` or `/`), not the reserved PUBLIC.
fn db_user(params: &Params) -> Result<&str, QueryError> {
    let user = params
        .get("DbUser")
        .map(String::as_str)
        .ok_or_else(|| QueryError::bad_request("MissingParameter", "The request must contain the parameter DbUser."))?;
    let valid = (1..=64).contains(&user.len())
        && user.starts_with(|c: char| c.is_ascii_alphabetic())
        && user.chars().all(|c| c.is_ascii_alphanumeric() || "_+.@-".contains(c))
        && !user.eq_ignore_ascii_case("public");
    if !valid {
        return Err(invalid(format!(
            "DbUser '{user}' is not valid: 1 to 64 letters, digits or _+.@-, starting with a letter, not PUBLIC."
        )));
    }
    Ok(user)
}

fn cluster_id(params: &Params) -> Result<&str, QueryError> {
    params
        .get("ClusterIdentifier")
        .map(String::as_str)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| QueryError::bad_request("MissingParameter", "The request must contain the parameter ClusterIdentifier."))
}

/// Cluster identifiers are case-sensitive in these calls.
fn known_cluster(cluster: &str) -> Result<(), QueryError> {
    if cluster == SIM_REDSHIFT_CLUSTER {
        Ok(())
    } else {
        Err(QueryError {
            status: StatusCode::NOT_FOUND,
            code: "ClusterNotFound".into(),
            message: format!("Cluster {cluster} not found."),
        })
    }
}

/// `DurationSeconds`: 900–3600, default 900.
fn duration(params: &Params) -> Result<Duration, QueryError> {
    match params.get("DurationSeconds") {
        None => Ok(Duration::from_secs(900)),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| (900..=3600).contains(s))
            .map(Duration::from_secs)
            .ok_or_else(|| invalid(format!("DurationSeconds {v} is not between 900 and 3600."))),
    }
}

fn flag(params: &Params, name: &str) -> Result<bool, QueryError> {
    match params.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(invalid(format!("{name} '{other}' is not a boolean."))),
    }
}

/// `DbGroups.DbGroup.N`: accepted (the simulated cluster has no groups to join), but not empty.
fn db_groups(params: &Params) -> Result<(), QueryError> {
    for (name, value) in params {
        if name.starts_with("DbGroups.") && value.is_empty() {
            return Err(invalid(format!("{name} must not be empty.")));
        }
    }
    Ok(())
}

/// Issues a password on the simulated cluster and answers it; `role` is the PostgreSQL role the
/// login maps to (GetClusterCredentials: the plain DbUser; the IAM identities: their own name).
fn credentials_xml(logins: &RedshiftLogins, login: &str, role: &str, create_role: bool, life: Duration) -> String {
    let target = RedshiftTarget::Cluster(SIM_REDSHIFT_CLUSTER.to_owned());
    let issued = logins.issue(target, login, role, create_role, life);
    format!(
        "    <DbUser>{}</DbUser>\n    <DbPassword>{}</DbPassword>\n    <Expiration>{}</Expiration>\n",
        xml_escape(login),
        issued.password,
        Rfc3339(issued.expiration),
    )
}

fn describe_clusters_xml() -> String {
    format!(
        "    <Clusters>\n      <Cluster>\n        <ClusterIdentifier>{SIM_REDSHIFT_CLUSTER}</ClusterIdentifier>\n        \
         <NodeType>ra3.xlplus</NodeType>\n        <ClusterStatus>available</ClusterStatus>\n        \
         <MasterUsername>{SIM_REDSHIFT_MASTER_USER}</MasterUsername>\n        <DBName>{SIM_REDSHIFT_DB}</DBName>\n        \
         <Endpoint>\n          <Address>{SIM_REDSHIFT_ENDPOINT}</Address>\n          <Port>{SIM_REDSHIFT_PORT}</Port>\n        </Endpoint>\n        \
         <ClusterNamespaceArn>{namespace}</ClusterNamespaceArn>\n      </Cluster>\n    </Clusters>\n",
        namespace = redshift_arn("namespace", "5e1d0f5a-0000-4000-8000-00000000a5a5"),
    )
}

/// The simulated Redshift Serverless API.
pub struct RedshiftServerlessApiSim {
    server: JsonServer,
    control: Arc<ApiControl>,
}

impl RedshiftServerlessApiSim {
    pub async fn start(credentials: SimCredentials, logins: Arc<RedshiftLogins>) -> std::io::Result<Self> {
        let control = Arc::new(ApiControl::default());
        let (state, identities) = (control.clone(), credentials.clone());
        let handler: JsonHandler = Arc::new(move |call: &JsonCall| serverless(call, &state, &identities, &logins));
        let server = JsonServer::start(
            JsonService {
                signing_name: "redshift-serverless",
                region: SIM_REGION.to_owned(),
                auth_error_status: StatusCode::BAD_REQUEST,
                content_type: "application/x-amz-json-1.1",
            },
            credentials,
            handler,
        )
        .await?;
        Ok(RedshiftServerlessApiSim { server, control })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_REDSHIFT_SERVERLESS`.
    pub fn endpoint_url(&self) -> String {
        self.server.endpoint_url()
    }

    /// Calls by operation (`GetCredentials`, `GetWorkgroup`), and the AccessDenied switch.
    pub fn control(&self) -> &Arc<ApiControl> {
        &self.control
    }

    pub fn stop(&self) {
        self.server.stop();
    }
}

fn validation(message: impl Into<String>) -> JsonAnswer {
    json_error(StatusCode::BAD_REQUEST, "ValidationException", message)
}

fn serverless(call: &JsonCall, control: &ApiControl, credentials: &SimCredentials, logins: &RedshiftLogins) -> JsonAnswer {
    let Some(operation) = call.target.strip_prefix("RedshiftServerless.") else {
        return json_error(StatusCode::BAD_REQUEST, "UnknownOperationException", "");
    };
    if !matches!(operation, "GetCredentials" | "GetWorkgroup") {
        return json_error(StatusCode::BAD_REQUEST, "UnknownOperationException", "");
    }
    let denied = control.record(operation);
    let workgroup = match call.body.get("workgroupName") {
        None => return validation("workgroupName is required (customDomainName is not supported by the simulator)."),
        Some(Value::String(w)) => w.as_str(),
        Some(_) => return json_error(StatusCode::BAD_REQUEST, "SerializationException", "workgroupName must be a string"),
    };
    let well_formed = (3..=64).contains(&workgroup.len())
        && workgroup.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !well_formed {
        return validation(format!(
            "1 validation error detected: Value '{workgroup}' at 'workgroupName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-z0-9-]+$"
        ));
    }
    if workgroup != SIM_REDSHIFT_WORKGROUP {
        return json_error(
            StatusCode::BAD_REQUEST,
            "ResourceNotFoundException",
            format!("Serverless workgroup {workgroup} not found."),
        );
    }
    let (caller_arn, db_user) = caller(credentials, &call.signer);
    if denied {
        let action = format!("redshift-serverless:{operation}");
        let message = denied_message(&caller_arn, &action, &workgroup_arn());
        return json_error(StatusCode::BAD_REQUEST, "AccessDeniedException", message);
    }
    if operation == "GetWorkgroup" {
        return (StatusCode::OK, json!({ "workgroup": workgroup_json() }));
    }
    let life = match call.body.get("durationSeconds") {
        None => 900,
        Some(v) => match v.as_u64().filter(|s| (900..=3600).contains(s)) {
            Some(secs) => secs,
            None => {
                return validation(format!(
                    "1 validation error detected: Value '{v}' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 3600"
                ))
            }
        },
    };
    let target = RedshiftTarget::Workgroup(SIM_REDSHIFT_WORKGROUP.to_owned());
    let issued = logins.issue(target, &db_user, &db_user, true, Duration::from_secs(life));
    let expiration = issued.expiration.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let issued_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    (
        StatusCode::OK,
        json!({
            "dbUser": db_user,
            "dbPassword": issued.password,
            "expiration": expiration,
            "nextRefreshTime": issued_at + (expiration.saturating_sub(issued_at)) / 2,
        }),
    )
}

fn workgroup_json() -> Value {
    json!({
        "workgroupName": SIM_REDSHIFT_WORKGROUP,
        "workgroupId": SIM_REDSHIFT_WORKGROUP_ID,
        "workgroupArn": workgroup_arn(),
        "namespaceName": SIM_REDSHIFT_NAMESPACE,
        "status": "AVAILABLE",
        "port": SIM_REDSHIFT_PORT,
        "publiclyAccessible": false,
        "endpoint": { "address": SIM_REDSHIFT_SERVERLESS_ENDPOINT, "port": SIM_REDSHIFT_PORT, "vpcEndpoints": [] },
    })
}
