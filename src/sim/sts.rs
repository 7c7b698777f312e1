//! The simulated AWS STS: GetCallerIdentity over the Query protocol ([`super::query`]),
//! SigV4-checked against the simulator's credentials, naming the simulated IAM user — the same
//! identity the simulated SSM names in its AccessDenied messages.

use std::sync::Arc;

use super::query::{Handler, QueryError, QueryServer, QueryService};
use super::sigv4::SimCredentials;

/// The account every simulated ARN is in.
pub const SIM_ACCOUNT: &str = "123456789012";
/// The IAM user the simulator's credentials belong to.
pub const SIM_USER_ARN: &str = "arn:aws:iam::123456789012:user/sim-user";
/// Its unique id, shaped like an IAM user's (`AIDA…`).
pub const SIM_USER_ID: &str = "AIDASIMUSER0EXAMPLE01";

/// Starts the simulated STS. Every region's scope is accepted: every region has an STS endpoint,
/// so a client set to another region still finds one.
pub async fn start(credentials: SimCredentials) -> std::io::Result<QueryServer> {
    let handler: Handler = Arc::new(|action, _params| match action {
        "GetCallerIdentity" => Ok(format!(
            "    <Arn>{SIM_USER_ARN}</Arn>\n    <UserId>{SIM_USER_ID}</UserId>\n    <Account>{SIM_ACCOUNT}</Account>\n"
        )),
        other => Err(QueryError::bad_request(
            "InvalidAction",
            format!("Could not find operation {other} for version 2011-06-15"),
        )),
    });
    QueryServer::start(
        QueryService {
            signing_name: "sts",
            version: "2011-06-15",
            xmlns: "https://sts.amazonaws.com/doc/2011-06-15/",
            region: None,
        },
        credentials,
        handler,
    )
    .await
}
