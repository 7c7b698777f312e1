//! The SSM control plane: StartSession (port forwarding to the RDS endpoint), ResumeSession after
//! a WebSocket drop, TerminateSession on close — and what each failure means for the user.
//!
//! The stream token every call returns is wrapped in [`StreamToken`], whose `Debug`/`Display`
//! print `<redacted>`; no error built here ever contains it.

use std::fmt;
use std::sync::Arc;

use aws_config::SdkConfig;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use futures_util::future::BoxFuture;

/// The document that forwards to a host the managed node can reach (§1.1 of `ssm-protocol.md`).
pub const DOCUMENT_NAME: &str = "AWS-StartPortForwardingSessionToRemoteHost";

/// The `TokenValue` of StartSession/ResumeSession: it lets anyone attach to the session.
#[derive(Clone, PartialEq, Eq)]
pub struct StreamToken(String);

impl StreamToken {
    pub fn new(value: impl Into<String>) -> Self {
        StreamToken(value.into())
    }

    /// The secret itself, only for the OpenDataChannel frame.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for StreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What StartSession/ResumeSession hand out: where to attach and with which token.
#[derive(Debug, Clone)]
pub struct StreamGrant {
    pub session_id: String,
    pub token: StreamToken,
    /// The data channel URL, used exactly as returned. May be empty on ResumeSession, which
    /// then means "keep the previous one".
    pub stream_url: String,
}

/// What a port-forwarding session is opened to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// The managed node (`i-…`, `mi-…`).
    pub target: String,
    /// The host the node dials (the RDS endpoint name).
    pub host: String,
    pub port: u16,
}

/// A control-plane failure, with enough context to tell the user what to fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("SSM managed node {target} is not connected to Session Manager")]
    TargetNotConnected { target: String },
    #[error("not authorized to call ssm:{operation}: {message}")]
    AccessDenied {
        operation: &'static str,
        message: String,
        /// The resources the permission must cover, for the hint.
        resources: Vec<String>,
    },
    #[error("SSM document {document} cannot be used: {message}")]
    InvalidDocument { document: String, message: String },
    #[error("the AWS credentials were refused by SSM ({code}): {message}")]
    CredentialsRefused { code: String, message: String },
    #[error("no usable AWS credentials for SSM")]
    NoCredentials(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("cannot reach the SSM API{}", endpoint.as_ref().map(|e| format!(" at {e}")).unwrap_or_default())]
    Unreachable {
        endpoint: Option<String>,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("ssm:{operation} failed ({code}): {message}")]
    Service {
        operation: &'static str,
        code: String,
        message: String,
    },
    #[error("ssm:{operation} returned no {field}")]
    IncompleteResponse {
        operation: &'static str,
        field: &'static str,
    },
}

impl ApiError {
    /// What the user should do about it.
    pub fn hint(&self) -> String {
        match self {
            ApiError::TargetNotConnected { target } => format!(
                "Check that {target} is running, that its SSM Agent is online (`aws ssm \
                 describe-instance-information`), that it has an instance profile allowing \
                 Session Manager, and that --ssm-target and --region name the right node."
            ),
            ApiError::AccessDenied {
                operation,
                resources,
                ..
            } => format!(
                "Allow ssm:{operation} for your IAM identity on {}.",
                resources.join(" and ")
            ),
            ApiError::InvalidDocument { document, .. } => format!(
                "The document {document} must exist in this region and be shareable with your \
                 account; it is an AWS-owned document in every commercial region."
            ),
            ApiError::CredentialsRefused { .. } | ApiError::NoCredentials(_) => {
                "Refresh your AWS credentials: run `aws sso login` (with --profile if you use \
                 one), or set AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; then \
                 reconnect."
                    .into()
            }
            ApiError::Unreachable { .. } => {
                "Check the network path to ssm.<region>.amazonaws.com (proxy, VPN, VPC endpoint) \
                 and --region; AWS_ENDPOINT_URL_SSM overrides the endpoint."
                    .into()
            }
            ApiError::Service { .. } | ApiError::IncompleteResponse { .. } => {
                "Retry; if it persists, check the AWS Health dashboard for Systems Manager.".into()
            }
        }
    }

    /// Whether a later retry might succeed (used by the reconnect loop).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ApiError::Unreachable { .. }
                | ApiError::Service { .. }
                | ApiError::IncompleteResponse { .. }
        )
    }
}

/// The three control-plane calls, as a trait so the data channel's reconnect logic can be
/// tested without an HTTP endpoint.
pub trait ControlPlane: Send + Sync + fmt::Debug {
    fn start_session<'a>(
        &'a self,
        request: &'a StartRequest,
    ) -> BoxFuture<'a, Result<StreamGrant, ApiError>>;
    /// `Ok(None)`: the session is over (timed out, terminated, unknown): do not retry.
    fn resume_session<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StreamGrant>, ApiError>>;
    fn terminate_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<(), ApiError>>;
}

/// The real control plane: aws-sdk-ssm.
#[derive(Debug, Clone)]
pub struct SsmApi {
    client: aws_sdk_ssm::Client,
    /// For ARNs in hints.
    region: String,
    /// Shown when the endpoint cannot be reached (only when explicitly overridden).
    endpoint: Option<String>,
}

impl SsmApi {
    /// From the loaded AWS configuration, so `AWS_ENDPOINT_URL_SSM` and profiles apply;
    /// `endpoint` overrides the endpoint explicitly (in-process tests, the demo).
    pub fn from_sdk_config(sdk: &SdkConfig, region: &str, endpoint: Option<&str>) -> Self {
        let mut builder = aws_sdk_ssm::config::Builder::from(sdk)
            .region(aws_sdk_ssm::config::Region::new(region.to_owned()));
        if let Some(url) = endpoint {
            builder = builder.endpoint_url(url);
        }
        SsmApi {
            client: aws_sdk_ssm::Client::from_conf(builder.build()),
            region: region.to_owned(),
            endpoint: endpoint.map(str::to_owned),
        }
    }

    /// With fixed credentials and no environment lookups at all (tests, the demo).
    pub fn with_credentials(
        credentials: aws_credential_types::Credentials,
        region: &str,
        endpoint: Option<&str>,
    ) -> Self {
        Self::from_sdk_config(&crate::aws::fixed_sdk_config(credentials, region, None), region, endpoint)
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    fn document_arn(&self) -> String {
        format!("arn:aws:ssm:{}::document/{DOCUMENT_NAME}", self.region)
    }

    fn map_error<E>(
        &self,
        operation: &'static str,
        err: SdkError<E>,
        resources: Vec<String>,
    ) -> ApiError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if let Some(service) = err.as_service_error() {
            let code = service.code().unwrap_or("Unknown").to_owned();
            let message = service.message().unwrap_or("").to_owned();
            return classify_code(operation, code, message, resources);
        }
        let boxed: Arc<dyn std::error::Error + Send + Sync> = Arc::new(err);
        if crate::aws::has_credentials_error(&*boxed) {
            return ApiError::NoCredentials(boxed);
        }
        ApiError::Unreachable {
            endpoint: self.endpoint.clone(),
            source: boxed,
        }
    }
}

/// Maps an AWS error code to what it means here.
fn classify_code(
    operation: &'static str,
    code: String,
    message: String,
    resources: Vec<String>,
) -> ApiError {
    match code.as_str() {
        "AccessDeniedException" | "AccessDenied" => ApiError::AccessDenied {
            operation,
            message,
            resources,
        },
        "ExpiredTokenException"
        | "ExpiredToken"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "MissingAuthenticationToken"
        | "MissingAuthenticationTokenException"
        | "IncompleteSignature"
        | "IncompleteSignatureException" => ApiError::CredentialsRefused { code, message },
        _ => ApiError::Service {
            operation,
            code,
            message,
        },
    }
}

impl ControlPlane for SsmApi {
    fn start_session<'a>(
        &'a self,
        request: &'a StartRequest,
    ) -> BoxFuture<'a, Result<StreamGrant, ApiError>> {
        Box::pin(async move {
            let result = self
                .client
                .start_session()
                .target(&request.target)
                .document_name(DOCUMENT_NAME)
                .reason("rds-auth-proxy port forwarding")
                .parameters("host", vec![request.host.clone()])
                .parameters("portNumber", vec![request.port.to_string()])
                // Only the client side reads it; the agent ignores it (§5.5).
                .parameters("localPortNumber", vec!["0".to_owned()])
                .send()
                .await;
            let output = match result {
                Ok(o) => o,
                Err(err) => {
                    if let Some(service) = err.as_service_error() {
                        use aws_sdk_ssm::operation::start_session::StartSessionError as E;
                        match service {
                            E::TargetNotConnected(_) => {
                                return Err(ApiError::TargetNotConnected {
                                    target: request.target.clone(),
                                })
                            }
                            E::InvalidDocument(e) => {
                                return Err(ApiError::InvalidDocument {
                                    document: DOCUMENT_NAME.into(),
                                    message: e.message().unwrap_or("").to_owned(),
                                })
                            }
                            _ => {}
                        }
                    }
                    let resources = vec![
                        format!(
                            "the managed node (arn:aws:ec2:{}:<account>:instance/{})",
                            self.region, request.target
                        ),
                        format!("the document {}", self.document_arn()),
                    ];
                    return Err(self.map_error("StartSession", err, resources));
                }
            };
            let session_id = output.session_id().filter(|s| !s.is_empty()).ok_or(
                ApiError::IncompleteResponse {
                    operation: "StartSession",
                    field: "SessionId",
                },
            )?;
            let token = output.token_value().filter(|s| !s.is_empty()).ok_or(
                ApiError::IncompleteResponse {
                    operation: "StartSession",
                    field: "TokenValue",
                },
            )?;
            let stream_url = output.stream_url().filter(|s| !s.is_empty()).ok_or(
                ApiError::IncompleteResponse {
                    operation: "StartSession",
                    field: "StreamUrl",
                },
            )?;
            Ok(StreamGrant {
                session_id: session_id.to_owned(),
                token: StreamToken::new(token),
                stream_url: stream_url.to_owned(),
            })
        })
    }

    fn resume_session<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StreamGrant>, ApiError>> {
        Box::pin(async move {
            match self
                .client
                .resume_session()
                .session_id(session_id)
                .send()
                .await
            {
                Ok(output) => {
                    Ok(output
                        .token_value()
                        .filter(|t| !t.is_empty())
                        .map(|token| StreamGrant {
                            session_id: session_id.to_owned(),
                            token: StreamToken::new(token),
                            stream_url: output.stream_url().unwrap_or("").to_owned(),
                        }))
                }
                Err(err) => {
                    use aws_sdk_ssm::operation::resume_session::ResumeSessionError as E;
                    if let Some(E::DoesNotExistException(_)) = err.as_service_error() {
                        return Ok(None);
                    }
                    let resources = vec![format!(
                        "arn:aws:ssm:{}:<account>:session/{session_id}",
                        self.region
                    )];
                    Err(self.map_error("ResumeSession", err, resources))
                }
            }
        })
    }

    fn terminate_session<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            match self
                .client
                .terminate_session()
                .session_id(session_id)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(err) => {
                    let resources = vec![format!(
                        "arn:aws:ssm:{}:<account>:session/{session_id}",
                        self.region
                    )];
                    Err(self.map_error("TerminateSession", err, resources))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_prints() {
        let grant = StreamGrant {
            session_id: "s-1".into(),
            token: StreamToken::new("SECRET-TOKEN"),
            stream_url: "wss://x".into(),
        };
        assert!(!format!("{grant:?}").contains("SECRET"));
        assert_eq!(grant.token.to_string(), "<redacted>");
    }

    #[test]
    fn codes_are_classified() {
        let r = || vec!["the node".to_owned(), "the document".to_owned()];
        let e = classify_code(
            "StartSession",
            "AccessDeniedException".into(),
            "no".into(),
            r(),
        );
        assert!(matches!(e, ApiError::AccessDenied { .. }));
        assert_eq!(
            e.hint(),
            "Allow ssm:StartSession for your IAM identity on the node and the document."
        );
        assert!(matches!(
            classify_code(
                "StartSession",
                "ExpiredTokenException".into(),
                "".into(),
                r()
            ),
            ApiError::CredentialsRefused { .. }
        ));
        let e = classify_code(
            "StartSession",
            "ThrottlingException".into(),
            "slow".into(),
            r(),
        );
        assert!(e.is_transient());
        assert!(e.to_string().contains("ThrottlingException"));
    }
}

/// A managed node as DescribeInstanceInformation lists it (`--ssm-target auto`, `doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// `Online`, `ConnectionLost`, `Inactive`.
    pub ping_status: String,
    pub computer_name: Option<String>,
}

impl SsmApi {
    /// Every node matching `filters` (`Key`, `Values`: `tag:Name`, `PingStatus`, `InstanceIds`…),
    /// all pages.
    pub async fn describe_nodes(&self, filters: &[(String, Vec<String>)]) -> Result<Vec<NodeInfo>, ApiError> {
        use aws_sdk_ssm::types::InstanceInformationStringFilter;
        let mut nodes = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut call = self.client.describe_instance_information().max_results(50);
            for (key, values) in filters {
                let filter = InstanceInformationStringFilter::builder()
                    .key(key)
                    .set_values(Some(values.clone()))
                    .build()
                    .map_err(|_| ApiError::IncompleteResponse {
                        operation: "DescribeInstanceInformation",
                        field: "filter",
                    })?;
                call = call.filters(filter);
            }
            if let Some(token) = &next {
                call = call.next_token(token);
            }
            let out = call.send().await.map_err(|e| {
                self.map_error(
                    "DescribeInstanceInformation",
                    e,
                    vec!["* (DescribeInstanceInformation takes no resource)".to_owned()],
                )
            })?;
            for info in out.instance_information_list.unwrap_or_default() {
                if let Some(id) = info.instance_id {
                    nodes.push(NodeInfo {
                        id,
                        ping_status: info.ping_status.map(|p| p.as_str().to_owned()).unwrap_or_default(),
                        computer_name: info.computer_name,
                    });
                }
            }
            next = out.next_token.filter(|t| !t.is_empty());
            if next.is_none() {
                return Ok(nodes);
            }
        }
    }
}
