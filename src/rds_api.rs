//! The two RDS API calls name lookups need — DescribeDBInstances and DescribeDBClusters — spoken
//! directly: the Query protocol (a form-encoded POST, `Version=2014-10-31`), signed and sent by
//! [`crate::aws_api`], the XML answer read there too. `aws-sdk-rds` would add minutes of compile
//! time for two calls (see docs/development.md, "Build"). `AWS_ENDPOINT_URL_RDS` (then
//! `AWS_ENDPOINT_URL`) overrides the endpoint, as for the SDK clients.

use crate::aws_api::{self, field, records, AwsApi, CallError};

/// The RDS API version every request names.
const API_VERSION: &str = "2014-10-31";

/// What RDS says about one instance or cluster, as far as a connection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbDescription {
    pub id: String,
    pub engine: String,
    /// `DBInstanceStatus` or the cluster's `Status`.
    pub status: String,
    pub iam_auth: bool,
    /// The instance's `Endpoint/Address`, or the cluster's writer `Endpoint`.
    pub endpoint: Option<String>,
    /// A cluster's `ReaderEndpoint`.
    pub reader_endpoint: Option<String>,
    pub port: Option<u16>,
    /// `DbiResourceId` / `DbClusterResourceId`: what `rds-db:connect` ARNs name.
    pub resource_id: Option<String>,
    pub arn: Option<String>,
}

/// Why a Describe call failed. Never carries a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RdsApiError {
    #[error("no {kind} named {id} in {region} ({code})")]
    NotFound {
        kind: &'static str,
        id: String,
        region: String,
        code: String,
    },
    #[error("not authorized to call rds:{action} ({code}): {message}")]
    AccessDenied {
        action: &'static str,
        code: String,
        message: String,
    },
    #[error("the AWS credentials were refused by RDS ({code}): {message}")]
    CredentialsRefused { code: String, message: String },
    #[error("rds:{action} failed ({code}): {message}")]
    Service {
        action: &'static str,
        code: String,
        message: String,
    },
    #[error("no usable AWS credentials for RDS: {0}")]
    NoCredentials(String),
    #[error("cannot reach the RDS API at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the RDS API answered something unreadable: {0}")]
    BadResponse(String),
}

impl RdsApiError {
    /// What the user should do about it.
    pub fn hint(&self) -> String {
        match self {
            RdsApiError::NotFound { kind, region, .. } => format!(
                "Check the identifier and the region ({region}): RDS names are per region; \
                 `aws rds describe-{}s --region {region}` lists them. Or give the endpoint \
                 with --target.",
                kind.to_ascii_lowercase().replace(' ', "-")
            ),
            RdsApiError::AccessDenied { action, .. } => format!(
                "Allow rds:{action} for your IAM identity (on the instance or cluster ARN, or *), \
                 or give the endpoint name with --target instead of looking it up."
            ),
            RdsApiError::CredentialsRefused { .. } | RdsApiError::NoCredentials(_) => {
                "Refresh your AWS credentials: run `aws sso login` (with --profile if you use \
                 one), or set AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."
                    .into()
            }
            RdsApiError::Unreachable { .. } | RdsApiError::BadResponse(_) => {
                "Check the network path to rds.<region>.amazonaws.com (proxy, VPN, VPC endpoint) \
                 and --region; AWS_ENDPOINT_URL_RDS overrides the endpoint."
                    .into()
            }
            RdsApiError::Service { .. } => {
                "Retry; if it persists, check the AWS Health dashboard for RDS.".into()
            }
        }
    }
}

/// An RDS API client for the two Describe calls.
#[derive(Debug, Clone)]
pub struct RdsApi {
    api: AwsApi,
}

impl RdsApi {
    /// From the loaded AWS configuration: its credentials, and `AWS_ENDPOINT_URL_RDS`,
    /// `AWS_ENDPOINT_URL` or the configuration's endpoint URL when set.
    pub fn from_sdk_config(sdk: &aws_config::SdkConfig, region: &str) -> Self {
        RdsApi {
            api: AwsApi::from_sdk_config(&aws_api::RDS, sdk, region),
        }
    }

    /// With fixed credentials and no environment lookups at all (tests, the demo).
    pub fn with_credentials(credentials: aws_credential_types::Credentials, region: &str, endpoint: Option<&str>) -> Self {
        RdsApi {
            api: AwsApi::with_credentials(&aws_api::RDS, credentials, region, endpoint),
        }
    }

    /// DescribeDBInstances for one identifier.
    pub async fn describe_instance(&self, id: &str) -> Result<DbDescription, RdsApiError> {
        let xml = self
            .call("DescribeDBInstances", &[("DBInstanceIdentifier", id)], "DB instance", id)
            .await?;
        let record = records(&xml, "DBInstance")
            .map_err(RdsApiError::BadResponse)?
            .into_iter()
            .next()
            .ok_or_else(|| RdsApiError::BadResponse("no DBInstance in the answer".into()))?;
        Ok(DbDescription {
            id: field(&record, "DBInstanceIdentifier").unwrap_or(id).to_owned(),
            engine: field(&record, "Engine").unwrap_or_default().to_owned(),
            status: field(&record, "DBInstanceStatus").unwrap_or_default().to_owned(),
            iam_auth: field(&record, "IAMDatabaseAuthenticationEnabled") == Some("true"),
            endpoint: field(&record, "Endpoint/Address").map(str::to_owned),
            reader_endpoint: None,
            port: field(&record, "Endpoint/Port").and_then(|p| p.parse().ok()),
            resource_id: field(&record, "DbiResourceId").map(str::to_owned),
            arn: field(&record, "DBInstanceArn").map(str::to_owned),
        })
    }

    /// DescribeDBClusters for one identifier.
    pub async fn describe_cluster(&self, id: &str) -> Result<DbDescription, RdsApiError> {
        let xml = self
            .call("DescribeDBClusters", &[("DBClusterIdentifier", id)], "DB cluster", id)
            .await?;
        let record = records(&xml, "DBCluster")
            .map_err(RdsApiError::BadResponse)?
            .into_iter()
            .next()
            .ok_or_else(|| RdsApiError::BadResponse("no DBCluster in the answer".into()))?;
        Ok(DbDescription {
            id: field(&record, "DBClusterIdentifier").unwrap_or(id).to_owned(),
            engine: field(&record, "Engine").unwrap_or_default().to_owned(),
            status: field(&record, "Status").unwrap_or_default().to_owned(),
            iam_auth: field(&record, "IAMDatabaseAuthenticationEnabled") == Some("true"),
            endpoint: field(&record, "Endpoint").map(str::to_owned),
            reader_endpoint: field(&record, "ReaderEndpoint").map(str::to_owned),
            port: field(&record, "Port").and_then(|p| p.parse().ok()),
            resource_id: field(&record, "DbClusterResourceId").map(str::to_owned),
            arn: field(&record, "DBClusterArn").map(str::to_owned),
        })
    }

    /// One signed Query call; the answer's XML on HTTP 200, else the AWS error it names.
    async fn call(
        &self,
        action: &'static str,
        params: &[(&str, &str)],
        kind: &'static str,
        id: &str,
    ) -> Result<String, RdsApiError> {
        let answer = self
            .api
            .query(action, API_VERSION, params)
            .await
            .map_err(|e| match e {
                CallError::NoCredentials(reason) => RdsApiError::NoCredentials(reason),
                CallError::Unreachable(reason) => RdsApiError::Unreachable {
                    endpoint: self.api.endpoint().to_owned(),
                    reason,
                },
                CallError::BadResponse(reason) => RdsApiError::BadResponse(reason),
            })?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        let (code, message) = answer.error();
        Err(match code.as_str() {
            "DBInstanceNotFound" | "DBInstanceNotFoundFault" | "DBClusterNotFoundFault" | "DBClusterNotFound" => {
                RdsApiError::NotFound {
                    kind,
                    id: id.to_owned(),
                    region: self.api.region().to_owned(),
                    code,
                }
            }
            c if aws_api::is_access_denied(c) => RdsApiError::AccessDenied { action, code, message },
            c if aws_api::is_credentials_refused(c) => RdsApiError::CredentialsRefused { code, message },
            _ => RdsApiError::Service { action, code, message },
        })
    }
}
