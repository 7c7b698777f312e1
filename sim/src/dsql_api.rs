//! The simulated Aurora DSQL control plane (REST-JSON, signing name `dsql`): `GET
//! /cluster/{identifier}` describing the cluster the DSQL front serves; 404
//! ResourceNotFoundException for any other, 403 AccessDeniedException when a test denies
//! `GetCluster` ([`ApiControl::deny`]).

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::json;

use super::json_api::{json_error, JsonAnswer, JsonCall, JsonHandler, JsonServer, JsonService};
use super::query::ApiControl;
use super::runner::{SIM_DSQL_CLUSTER, SIM_DSQL_ENDPOINT, SIM_REGION};
use super::sigv4::SimCredentials;
use super::sts::{SIM_ACCOUNT, SIM_USER_ARN};

/// When the simulated cluster was created (epoch seconds, as REST-JSON timestamps are).
const CREATION_TIME: u64 = 1_733_529_600;

/// The cluster's ARN, as `dsql:DbConnect` policies name it.
pub fn dsql_cluster_arn(id: &str) -> String {
    format!("arn:aws:dsql:{SIM_REGION}:{SIM_ACCOUNT}:cluster/{id}")
}

/// The simulated DSQL control plane.
pub struct DsqlApiSim {
    server: JsonServer,
    control: Arc<ApiControl>,
}

impl DsqlApiSim {
    pub async fn start(credentials: SimCredentials) -> std::io::Result<Self> {
        let control = Arc::new(ApiControl::default());
        let (state, identities) = (control.clone(), credentials.clone());
        let handler: JsonHandler = Arc::new(move |call: &JsonCall| get_cluster(call, &state, &identities));
        let server = JsonServer::start(
            JsonService {
                signing_name: "dsql",
                region: SIM_REGION.to_owned(),
                auth_error_status: StatusCode::FORBIDDEN,
                content_type: "application/json",
            },
            credentials,
            handler,
        )
        .await?;
        Ok(DsqlApiSim { server, control })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_DSQL`.
    pub fn endpoint_url(&self) -> String {
        self.server.endpoint_url()
    }

    /// Calls by operation (`GetCluster`), and the AccessDenied switch.
    pub fn control(&self) -> &Arc<ApiControl> {
        &self.control
    }

    pub fn stop(&self) {
        self.server.stop();
    }
}

fn get_cluster(call: &JsonCall, control: &ApiControl, credentials: &SimCredentials) -> JsonAnswer {
    let id = match call.path.strip_prefix("/cluster/") {
        Some(id) if call.method == Method::GET && !id.is_empty() && !id.contains('/') => id,
        _ => return json_error(StatusCode::NOT_FOUND, "UnknownOperationException", "Unknown operation"),
    };
    let arn = dsql_cluster_arn(id);
    if control.record("GetCluster") {
        let caller = credentials
            .caller_of(&call.signer)
            .map_or_else(|| SIM_USER_ARN.to_owned(), |(arn, _)| arn);
        let message = format!(
            "User: {caller} is not authorized to perform: dsql:GetCluster on resource: {arn} because no identity-based policy allows the dsql:GetCluster action"
        );
        return json_error(StatusCode::FORBIDDEN, "AccessDeniedException", message);
    }
    if id != SIM_DSQL_CLUSTER {
        let (status, mut body) = json_error(StatusCode::NOT_FOUND, "ResourceNotFoundException", "Cluster not found");
        body["resourceId"] = json!(id);
        body["resourceType"] = json!("cluster");
        return (status, body);
    }
    (
        StatusCode::OK,
        json!({
            "identifier": SIM_DSQL_CLUSTER,
            "arn": arn,
            "status": "ACTIVE",
            "creationTime": CREATION_TIME,
            "deletionProtectionEnabled": false,
            "endpoint": SIM_DSQL_ENDPOINT,
        }),
    )
}
