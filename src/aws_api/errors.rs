//! What the database-engine clients share: [`DbCredentials`] (temporary database credentials)
//! and [`EngineApiError`], whose HINT names the missing permission and its ARN; the login HINTs
//! of Aurora DSQL and Redshift.

use std::time::SystemTime;

use super::{account_in_message, partition, ApiResponse, AwsApi, CallError};
use super::answers::{is_access_denied, is_credentials_refused};

/// Temporary database credentials (Redshift, Redshift Serverless). `Debug` prints the password
/// as `<redacted>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbCredentials {
    /// The user to log in as, verbatim (`IAM:alice`, `IAMA:bob`, `IAMR:role`).
    pub db_user: String,
    pub password: TemporaryPassword,
    pub expiration: SystemTime,
}

/// A temporary database password. `Debug` and `Display` print `<redacted>`; use
/// [`TemporaryPassword::expose`] only where it is written into a login.
#[derive(Clone, PartialEq, Eq)]
pub struct TemporaryPassword(String);

impl TemporaryPassword {
    pub fn new(value: impl Into<String>) -> Self {
        TemporaryPassword(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TemporaryPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TemporaryPassword(<redacted>)")
    }
}

impl std::fmt::Display for TemporaryPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One IAM permission: an action on a resource ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub action: &'static str,
    pub resource: String,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.action, self.resource)
    }
}

/// Why a Redshift, Redshift Serverless or Aurora DSQL API call failed. Never carries a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineApiError {
    #[error("no {what} named {id} in {region} ({code})")]
    NotFound {
        what: &'static str,
        id: String,
        region: String,
        code: String,
    },
    #[error("not authorized to call {action} on {resource_arn} ({code}): {message}")]
    AccessDenied {
        /// `redshift:GetClusterCredentials`, …
        action: &'static str,
        /// The resource the call needs `action` on, from what we asked (not AWS's message).
        resource_arn: String,
        /// Further permissions the same call needs (`redshift:CreateClusterUser` with
        /// AutoCreate, `redshift:JoinGroup` per group).
        also: Vec<Permission>,
        code: String,
        message: String,
    },
    #[error("the AWS credentials were refused by {service} ({code}): {message}")]
    CredentialsRefused {
        service: &'static str,
        code: String,
        message: String,
    },
    #[error("{service} refused the request as invalid ({code}): {message}")]
    Invalid {
        service: &'static str,
        code: String,
        message: String,
    },
    #[error("{action} failed ({code}): {message}")]
    Service {
        action: &'static str,
        code: String,
        message: String,
    },
    #[error("no usable AWS credentials for {service}: {reason}")]
    NoCredentials { service: &'static str, reason: String },
    #[error("cannot reach the {service} API at {endpoint}: {reason}")]
    Unreachable {
        service: &'static str,
        endpoint: String,
        /// The variable that overrides the endpoint (`AWS_ENDPOINT_URL_REDSHIFT`).
        variable: String,
        reason: String,
    },
    #[error("the {service} API answered something unreadable: {reason}")]
    BadResponse { service: &'static str, reason: String },
}

impl EngineApiError {
    /// What the user should do about it; for AccessDenied the permission and the resource ARN.
    pub fn hint(&self) -> String {
        match self {
            EngineApiError::NotFound { what, region, .. } => format!(
                "Check the name and the region ({region}): each {what} lives in one region; \
                 `{} --region {region}` lists them. Or give the endpoint with --target.",
                list_command(what)
            ),
            EngineApiError::AccessDenied {
                action,
                resource_arn,
                also,
                ..
            } => {
                let mut hint = format!("Allow {action} on {resource_arn} for your IAM identity");
                for p in also {
                    hint.push_str(&format!(", and {p}"));
                }
                hint.push_str(
                    " (an identity-based policy; ACCOUNT is your AWS account id). Check with \
                     `aws iam simulate-principal-policy`.",
                );
                hint
            }
            EngineApiError::CredentialsRefused { .. } | EngineApiError::NoCredentials { .. } => {
                "Refresh your AWS credentials: run `aws sso login` (with --profile if you use \
                 one), or set AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."
                    .into()
            }
            EngineApiError::Invalid { code, message, .. } if code.starts_with("InvalidClusterState") => format!(
                "The cluster cannot issue credentials in its current state ({message}): resume \
                 it if it is paused (`aws redshift resume-cluster`), or wait until it is available."
            ),
            EngineApiError::Invalid { message, .. } => format!(
                "Check the names and values given (cluster or workgroup, database user, \
                 database, a duration of 900 to 3600 s): AWS said \"{message}\"."
            ),
            EngineApiError::Unreachable { endpoint, variable, .. } => format!(
                "Check the network path to {endpoint} (proxy, VPN, VPC endpoint) and --region; \
                 {variable} overrides the endpoint."
            ),
            EngineApiError::BadResponse { service, .. } => format!(
                "Check that the endpoint is the real {service} API (AWS_ENDPOINT_URL and the \
                 service's own variable override it), and --region."
            ),
            EngineApiError::Service { .. } => {
                "Retry; if it persists, check the AWS Health dashboard for the service.".into()
            }
        }
    }

    /// The error of a failed call, by AWS's error code. `denied` is the permission (and any
    /// further ones) an AccessDenied names; `what` and `id` name a missing resource.
    pub fn from_answer(
        api: &AwsApi,
        answer: &ApiResponse,
        action: &'static str,
        denied: impl FnOnce(&str) -> (String, Vec<Permission>),
        what: &'static str,
        id: &str,
    ) -> EngineApiError {
        let (code, message) = answer.error();
        let service = api.service().label;
        if is_access_denied(&code) || (answer.status == http::StatusCode::FORBIDDEN && !is_credentials_refused(&code)) {
            let account = api.account.clone().or_else(|| account_in_message(&message));
            let (resource_arn, also) = denied(account.as_deref().unwrap_or("ACCOUNT"));
            return EngineApiError::AccessDenied {
                action,
                resource_arn,
                also,
                code,
                message,
            };
        }
        if is_credentials_refused(&code) {
            return EngineApiError::CredentialsRefused { service, code, message };
        }
        match code.as_str() {
            "ClusterNotFound" | "ClusterNotFoundFault" | "ResourceNotFoundException" | "ResourceNotFound" => {
                EngineApiError::NotFound {
                    what,
                    id: id.to_owned(),
                    region: api.region().to_owned(),
                    code,
                }
            }
            "ValidationException" | "InvalidParameterValue" | "InvalidParameterCombination" | "MissingParameter"
            | "InvalidClusterState" | "InvalidClusterStateFault" => EngineApiError::Invalid { service, code, message },
            _ => EngineApiError::Service { action, code, message },
        }
    }

    /// A call that got no answer from AWS.
    pub fn from_call(api: &AwsApi, error: CallError) -> EngineApiError {
        let service = api.service().label;
        match error {
            CallError::NoCredentials(reason) => EngineApiError::NoCredentials { service, reason },
            CallError::Unreachable(reason) => EngineApiError::Unreachable {
                service,
                endpoint: api.endpoint().to_owned(),
                variable: api.service().env_variable(),
                reason,
            },
            CallError::BadResponse(reason) => EngineApiError::BadResponse { service, reason },
        }
    }

    /// An answer that does not say what it should.
    pub fn bad(api: &AwsApi, reason: impl Into<String>) -> EngineApiError {
        EngineApiError::BadResponse {
            service: api.service().label,
            reason: reason.into(),
        }
    }
}

/// The AWS CLI command that lists the resources of a [`EngineApiError::NotFound`].
fn list_command(what: &str) -> &'static str {
    match what {
        "Redshift cluster" => "aws redshift describe-clusters",
        "Redshift Serverless workgroup" => "aws redshift-serverless list-workgroups",
        _ => "aws dsql list-clusters",
    }
}

/// The HINT for Aurora DSQL refusing a login with our token: the identity lacks
/// `dsql:DbConnectAdmin` (user `admin`) or `dsql:DbConnect` on the cluster, or — for any other
/// role — the role is not linked to the IAM identity in SQL.
pub fn dsql_connect_hint(region: &str, account: Option<&str>, cluster_id: &str, admin: bool) -> String {
    let arn = format!(
        "arn:{}:dsql:{region}:{}:cluster/{cluster_id}",
        partition(region),
        account.unwrap_or("ACCOUNT")
    );
    if admin {
        format!(
            "Aurora DSQL refused the auth token. Allow dsql:DbConnectAdmin for your IAM identity \
             on {arn} (user admin always needs DbConnectAdmin), and check that the credentials' \
             session has not expired."
        )
    } else {
        format!(
            "Aurora DSQL refused the auth token. Allow dsql:DbConnect for your IAM identity on \
             {arn}, and link the database role to it: as admin run AWS IAM GRANT <role> TO \
             '<your IAM role ARN>'; (the role must exist: CREATE ROLE <role> WITH LOGIN)."
        )
    }
}

/// The HINT for Redshift refusing a login with fresh temporary credentials from
/// GetClusterCredentials(WithIAM) or Serverless GetCredentials.
pub fn redshift_login_hint(cluster_or_workgroup: &str, db_user: &str, serverless: bool) -> String {
    let what = if serverless { "workgroup" } else { "cluster" };
    format!(
        "Redshift refused the temporary password it had just issued for {db_user}. Check that \
         the {what} {cluster_or_workgroup} is available (not paused or resizing), that the \
         database user {db_user} exists (or turn on auto-create), that it may connect to this \
         database, and that the credentials came from the same {what} and region as the endpoint."
    )
}
