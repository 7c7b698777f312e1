//! The two RDS API calls name lookups need — DescribeDBInstances and DescribeDBClusters — spoken
//! directly: the Query protocol (a form-encoded POST, `Version=2014-10-31`), SigV4-signed with
//! aws-sigv4, the XML answer read with xmlparser. Both are already part of the build (the AWS
//! SDK uses them); `aws-sdk-rds` would add minutes of compile time for two calls (see
//! docs/development.md, "Build"). `AWS_ENDPOINT_URL_RDS` (then `AWS_ENDPOINT_URL`) overrides the
//! endpoint, as for the SDK clients.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The RDS API version every request names.
const API_VERSION: &str = "2014-10-31";
/// Longest wait for one call (connect, TLS, answer).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer read: one instance or cluster is a few KiB.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

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
#[derive(Clone)]
pub struct RdsApi {
    credentials: Option<SharedCredentialsProvider>,
    region: String,
    endpoint: String,
}

impl std::fmt::Debug for RdsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdsApi")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl RdsApi {
    /// From the loaded AWS configuration: its credentials, and `AWS_ENDPOINT_URL_RDS`,
    /// `AWS_ENDPOINT_URL` or the configuration's endpoint URL when set.
    pub fn from_sdk_config(sdk: &aws_config::SdkConfig, region: &str) -> Self {
        let endpoint = std::env::var("AWS_ENDPOINT_URL_RDS")
            .ok()
            .filter(|e| !e.is_empty())
            .or_else(|| sdk.endpoint_url().map(str::to_owned));
        Self::new(sdk.credentials_provider(), region, endpoint.as_deref())
    }

    /// With fixed credentials and no environment lookups at all (tests, the demo).
    pub fn with_credentials(credentials: aws_credential_types::Credentials, region: &str, endpoint: Option<&str>) -> Self {
        Self::new(Some(SharedCredentialsProvider::new(credentials)), region, endpoint)
    }

    fn new(credentials: Option<SharedCredentialsProvider>, region: &str, endpoint: Option<&str>) -> Self {
        let endpoint = endpoint.map(|e| e.trim_end_matches('/').to_owned()).unwrap_or_else(|| {
            let suffix = if region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" };
            format!("https://rds.{region}.{suffix}")
        });
        RdsApi {
            credentials,
            region: region.to_owned(),
            endpoint,
        }
    }

    /// DescribeDBInstances for one identifier.
    pub async fn describe_instance(&self, id: &str) -> Result<DbDescription, RdsApiError> {
        let xml = self
            .call("DescribeDBInstances", &[("DBInstanceIdentifier", id)], "DB instance", id)
            .await?;
        let record = records(&xml, "DBInstance")?
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
        let record = records(&xml, "DBCluster")?
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
        let mut body = format!("Action={action}&Version={API_VERSION}");
        for (k, v) in params {
            body.push('&');
            body.push_str(k);
            body.push('=');
            body.push_str(&percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string());
        }
        let request = self.signed_request(&body).await?;
        let (status, text) = tokio::time::timeout(CALL_TIMEOUT, self.send(request))
            .await
            .map_err(|_| self.unreachable(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))??;
        if status.is_success() {
            return Ok(text);
        }
        let (code, message) = error_code(&text).unwrap_or_else(|| (format!("HTTP {status}"), String::new()));
        Err(match code.as_str() {
            "DBInstanceNotFound" | "DBInstanceNotFoundFault" | "DBClusterNotFoundFault" | "DBClusterNotFound" => {
                RdsApiError::NotFound {
                    kind,
                    id: id.to_owned(),
                    region: self.region.clone(),
                    code,
                }
            }
            "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
                RdsApiError::AccessDenied { action, code, message }
            }
            "ExpiredToken" | "ExpiredTokenException" | "InvalidClientTokenId" | "SignatureDoesNotMatch"
            | "IncompleteSignature" | "MissingAuthenticationToken" | "UnrecognizedClientException" => {
                RdsApiError::CredentialsRefused { code, message }
            }
            _ => RdsApiError::Service { action, code, message },
        })
    }

    async fn signed_request(&self, body: &str) -> Result<http::Request<Full<bytes::Bytes>>, RdsApiError> {
        let provider = self
            .credentials
            .as_ref()
            .ok_or_else(|| RdsApiError::NoCredentials("no AWS credentials provider is configured".into()))?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| RdsApiError::NoCredentials(crate::errors::display_chain(&e)))?;
        let uri: http::Uri = format!("{}/", self.endpoint)
            .parse()
            .map_err(|_| self.unreachable("not a valid URL".into()))?;
        let host = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let mut request = http::Request::builder()
            .method("POST")
            .uri(uri.clone())
            .header("host", &host)
            .header("content-type", content_type)
            .body(Full::new(bytes::Bytes::from(body.to_owned())))
            .map_err(|e| RdsApiError::BadResponse(e.to_string()))?;
        let identity = creds.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("rds")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| RdsApiError::NoCredentials(e.to_string()))?
            .into();
        let url = uri.to_string();
        let signable = SignableRequest::new(
            "POST",
            &url,
            [("host", host.as_str()), ("content-type", content_type)].into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| RdsApiError::NoCredentials(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| RdsApiError::NoCredentials(e.to_string()))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);
        Ok(request)
    }

    fn unreachable(&self, reason: String) -> RdsApiError {
        RdsApiError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    /// HTTP/1.1 over TCP (`http://`, loopback only: the simulator) or rustls (`https://`).
    async fn send(&self, request: http::Request<Full<bytes::Bytes>>) -> Result<(http::StatusCode, String), RdsApiError> {
        let uri = request.uri().clone();
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(self.unreachable("the endpoint must be an http:// or https:// URL".into())),
        };
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
        if !tls && !is_loopback(&host) {
            return Err(self.unreachable("plain http:// is only allowed to a loopback address".into()));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let io: crate::tunnel::TunnelStream = if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| self.unreachable("not a valid host name".into()))?;
            Box::new(
                tokio_rustls::TlsConnector::from(public_tls_config().map_err(|e| self.unreachable(e))?)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.unreachable(format!("TLS: {e}")))?,
            )
        } else {
            Box::new(tcp)
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.unreachable(e.to_string()))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| self.unreachable(e.to_string()))?
                .to_bytes();
            let text = String::from_utf8(body.to_vec())
                .map_err(|_| RdsApiError::BadResponse("the answer is not UTF-8".into()))?;
            Ok((status, text))
        }
        .await;
        driver.abort();
        result
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The system's roots (the RDS API has a public certificate).
fn public_tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One `<record>` element's leaves, keyed by their path below it (`Endpoint/Address`).
type Record = HashMap<String, String>;

fn field<'a>(record: &'a Record, path: &str) -> Option<&'a str> {
    record.get(path).map(String::as_str)
}

/// Every `<name>` element's leaves, in document order.
fn records(xml: &str, name: &str) -> Result<Vec<Record>, RdsApiError> {
    let mut out = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    // Depth of the open record element, if inside one.
    let mut open: Option<usize> = None;
    for token in xmlparser::Tokenizer::from(xml) {
        let token = token.map_err(|e| RdsApiError::BadResponse(e.to_string()))?;
        match token {
            xmlparser::Token::ElementStart { local, .. } => {
                stack.push(local.as_str().to_owned());
                if open.is_none() && local.as_str() == name {
                    open = Some(stack.len());
                    out.push(Record::new());
                }
            }
            xmlparser::Token::ElementEnd { end, .. } => match end {
                xmlparser::ElementEnd::Open => {}
                xmlparser::ElementEnd::Close(..) | xmlparser::ElementEnd::Empty => {
                    if open == Some(stack.len()) {
                        open = None;
                    }
                    stack.pop();
                }
            },
            xmlparser::Token::Text { text } => {
                if let (Some(depth), Some(record)) = (open, out.last_mut()) {
                    if stack.len() > depth {
                        let path = stack[depth..].join("/");
                        record.entry(path).or_default().push_str(&unescape(text.as_str()));
                    }
                }
            }
            xmlparser::Token::Cdata { text, .. } => {
                if let (Some(depth), Some(record)) = (open, out.last_mut()) {
                    if stack.len() > depth {
                        record.entry(stack[depth..].join("/")).or_default().push_str(text.as_str());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `<ErrorResponse><Error><Code>…</Code><Message>…</Message></Error>` → (code, message).
fn error_code(xml: &str) -> Option<(String, String)> {
    let error = records(xml, "Error").ok()?.into_iter().next()?;
    let code = error.get("Code")?.trim().to_owned();
    Some((code, error.get("Message").map(|m| m.trim().to_owned()).unwrap_or_default()))
}

/// XML's predefined entities and character references.
fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_instances_and_errors() {
        let xml = r#"<DescribeDBInstancesResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/">
  <DescribeDBInstancesResult><DBInstances><DBInstance>
    <DBInstanceIdentifier>db1</DBInstanceIdentifier><Engine>postgres</Engine>
    <Endpoint><Address>db1.abc.eu-west-1.rds.amazonaws.com</Address><Port>5432</Port></Endpoint>
    <VpcSecurityGroups><VpcSecurityGroupMembership><Status>active</Status></VpcSecurityGroupMembership></VpcSecurityGroups>
    <DBInstanceStatus>available</DBInstanceStatus>
  </DBInstance></DBInstances></DescribeDBInstancesResult></DescribeDBInstancesResponse>"#;
        let r = records(xml, "DBInstance").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(field(&r[0], "Endpoint/Address"), Some("db1.abc.eu-west-1.rds.amazonaws.com"));
        assert_eq!(field(&r[0], "Endpoint/Port"), Some("5432"));
        assert_eq!(field(&r[0], "DBInstanceStatus"), Some("available"), "a nested Status does not shadow it");
        let err = "<ErrorResponse><Error><Type>Sender</Type><Code>DBInstanceNotFound</Code>\
                   <Message>DBInstance x &amp; &#121; not found.</Message></Error></ErrorResponse>";
        assert_eq!(error_code(err), Some(("DBInstanceNotFound".into(), "DBInstance x & y not found.".into())));
        assert_eq!(error_code("not xml <"), None);
    }
}
