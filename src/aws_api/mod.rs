//! One signed AWS API call, shared by the hand-written API clients ([`crate::rds_api`],
//! [`crate::redshift_api`], [`crate::redshift_serverless_api`], [`crate::dsql_api`]): the
//! endpoint (`AWS_ENDPOINT_URL_<SERVICE>`, then `AWS_ENDPOINT_URL`, then the SDK configuration's,
//! then the service's public name), SigV4 signing with aws-sigv4, the HTTP/1.1 exchange (plain
//! `http://` to loopback only: the simulator), and reading the answer: XML records and the AWS
//! error code of an XML, JSON 1.0/1.1 or rest-json error. The AWS SDK crates would cost minutes
//! of compile time for a handful of calls (see docs/development.md, "Build").
//!
//! Also what the database-engine clients share: [`DbCredentials`] (temporary database
//! credentials) and [`EngineApiError`], whose HINT names the missing permission and its ARN.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

mod answers;
mod errors;

pub use self::answers::*;
use self::answers::error_type_name;
pub use self::errors::*;

/// Longest wait for one call (connect, TLS, answer).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer read: one instance, cluster or credential set is a few KiB.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// One AWS service as a hand-written client speaks to it.
#[derive(Debug)]
pub struct Service {
    /// The SigV4 signing name (`rds`, `redshift`, `redshift-serverless`, `dsql`).
    pub signing_name: &'static str,
    /// The SDK's name for the endpoint variable: `AWS_ENDPOINT_URL_` followed by this.
    pub env_suffix: &'static str,
    /// The first label of the public endpoint name.
    pub host_prefix: &'static str,
    /// Whether the public endpoint is under `api.aws` (`api.amazonwebservices.com.cn` in China)
    /// rather than `amazonaws.com` (`.com.cn`).
    pub api_aws: bool,
    /// The service's name in messages.
    pub label: &'static str,
}

impl Service {
    /// `https://PREFIX.REGION.amazonaws.com` (or the `api.aws` / China form).
    pub fn default_endpoint(&self, region: &str) -> String {
        let china = region.starts_with("cn-");
        let suffix = match (self.api_aws, china) {
            (false, false) => "amazonaws.com",
            (false, true) => "amazonaws.com.cn",
            (true, false) => "api.aws",
            (true, true) => "api.amazonwebservices.com.cn",
        };
        format!("https://{}.{region}.{suffix}", self.host_prefix)
    }

    /// `AWS_ENDPOINT_URL_RDS`, …: what overrides this service's endpoint.
    pub fn env_variable(&self) -> String {
        format!("AWS_ENDPOINT_URL_{}", self.env_suffix)
    }
}

pub const RDS: Service = Service {
    signing_name: "rds",
    env_suffix: "RDS",
    host_prefix: "rds",
    api_aws: false,
    label: "RDS",
};
pub const REDSHIFT: Service = Service {
    signing_name: "redshift",
    env_suffix: "REDSHIFT",
    host_prefix: "redshift",
    api_aws: false,
    label: "Redshift",
};
pub const REDSHIFT_SERVERLESS: Service = Service {
    signing_name: "redshift-serverless",
    env_suffix: "REDSHIFT_SERVERLESS",
    host_prefix: "redshift-serverless",
    api_aws: false,
    label: "Redshift Serverless",
};
pub const DSQL: Service = Service {
    signing_name: "dsql",
    env_suffix: "DSQL",
    host_prefix: "dsql",
    api_aws: true,
    label: "Aurora DSQL",
};

/// The ARN partition of a region: `aws-cn` in China, `aws-us-gov` in GovCloud, else `aws`.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// The account id of the first ARN an AWS message names (`User: arn:aws:sts::123456789012:…`).
pub fn account_in_message(message: &str) -> Option<String> {
    message.match_indices("arn:").find_map(|(i, _)| {
        let account = message[i..].split(':').nth(4)?;
        (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then(|| account.to_owned())
    })
}

/// What one call asks.
#[derive(Debug)]
pub struct ApiRequest<'a> {
    pub method: &'static str,
    /// The path and query, already percent-encoded (`/`, `/cluster/abc`).
    pub path: &'a str,
    pub content_type: Option<&'static str>,
    /// `X-Amz-Target` (JSON 1.0/1.1 protocols).
    pub target: Option<&'a str>,
    pub body: Vec<u8>,
}

/// What AWS answered, whatever the status.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: http::StatusCode,
    /// The `x-amzn-ErrorType` header (JSON protocols).
    pub error_type: Option<String>,
    pub body: String,
}

impl ApiResponse {
    /// The error (code, message) of a failed call, from the `x-amzn-ErrorType` header, a JSON
    /// `__type`/`code` or an XML `<Error><Code>`; `HTTP <status>` when none says.
    pub fn error(&self) -> (String, String) {
        let from_header = self.error_type.as_deref().map(error_type_name).filter(|c| !c.is_empty());
        let (code, message) = json_error(&self.body)
            .or_else(|| xml_error(&self.body))
            .unwrap_or_default();
        let code = from_header.map(str::to_owned).or((!code.is_empty()).then_some(code));
        (code.unwrap_or_else(|| format!("HTTP {}", self.status)), message)
    }
}

/// Why a call got no answer from AWS to read. Never carries a credential.
#[derive(Debug, Clone)]
pub enum CallError {
    NoCredentials(String),
    Unreachable(String),
    BadResponse(String),
}

/// A client of one AWS service: credentials, region, endpoint.
#[derive(Clone)]
pub struct AwsApi {
    service: &'static Service,
    credentials: Option<SharedCredentialsProvider>,
    region: String,
    endpoint: String,
    /// The caller's AWS account id when known (STS), for the ARNs a HINT names.
    account: Option<String>,
}

impl std::fmt::Debug for AwsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsApi")
            .field("service", &self.service.signing_name)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AwsApi {
    /// From the loaded AWS configuration: its credentials, and the endpoint from
    /// `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL` or the configuration's endpoint URL, in
    /// that order (none when `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`).
    pub fn from_sdk_config(service: &'static Service, sdk: &aws_config::SdkConfig, region: &str) -> Self {
        let ignore = std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let variable = |name: &str| std::env::var(name).ok().filter(|e| !e.is_empty());
        let endpoint = if ignore {
            None
        } else {
            variable(&service.env_variable())
                .or_else(|| variable("AWS_ENDPOINT_URL"))
                .or_else(|| sdk.endpoint_url().map(str::to_owned))
        };
        Self::new(service, sdk.credentials_provider(), region, endpoint.as_deref())
    }

    /// With fixed credentials and no environment lookups at all (tests, the demo).
    pub fn with_credentials(
        service: &'static Service,
        credentials: aws_credential_types::Credentials,
        region: &str,
        endpoint: Option<&str>,
    ) -> Self {
        Self::new(service, Some(SharedCredentialsProvider::new(credentials)), region, endpoint)
    }

    fn new(
        service: &'static Service,
        credentials: Option<SharedCredentialsProvider>,
        region: &str,
        endpoint: Option<&str>,
    ) -> Self {
        let endpoint = endpoint
            .map(|e| e.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| service.default_endpoint(region));
        AwsApi {
            service,
            credentials,
            region: region.to_owned(),
            endpoint,
            account: None,
        }
    }

    /// The caller's account id (from STS), for the ARNs a HINT names; without it, the account
    /// in AWS's AccessDenied message, else `ACCOUNT`.
    pub fn with_account(mut self, account: Option<String>) -> Self {
        self.account = account.filter(|a| !a.is_empty());
        self
    }

    pub fn service(&self) -> &'static Service {
        self.service
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The endpoint URL calls go to, without a trailing `/`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A Query protocol call (form-encoded POST to `/`): `Action`, `Version`, then `params`.
    pub async fn query(
        &self,
        action: &str,
        version: &str,
        params: &[(&str, &str)],
    ) -> Result<ApiResponse, CallError> {
        self.call(ApiRequest {
            method: "POST",
            path: "/",
            content_type: Some("application/x-www-form-urlencoded; charset=utf-8"),
            target: None,
            body: query_body(action, version, params).into_bytes(),
        })
        .await
    }

    /// One signed call; any HTTP status is an answer.
    pub async fn call(&self, request: ApiRequest<'_>) -> Result<ApiResponse, CallError> {
        let request = self.signed_request(request).await?;
        tokio::time::timeout(CALL_TIMEOUT, self.send(request))
            .await
            .map_err(|_| CallError::Unreachable(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))?
    }

    async fn signed_request(&self, request: ApiRequest<'_>) -> Result<http::Request<Full<bytes::Bytes>>, CallError> {
        let provider = self
            .credentials
            .as_ref()
            .ok_or_else(|| CallError::NoCredentials("no AWS credentials provider is configured".into()))?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| CallError::NoCredentials(crate::errors::display_chain(&e)))?;
        let uri: http::Uri = format!("{}{}", self.endpoint, request.path)
            .parse()
            .map_err(|_| CallError::Unreachable("not a valid URL".into()))?;
        let host = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let mut headers = vec![("host", host.as_str())];
        if let Some(content_type) = request.content_type {
            headers.push(("content-type", content_type));
        }
        if let Some(target) = request.target {
            headers.push(("x-amz-target", target));
        }
        // Origin-form on the wire (`POST / HTTP/1.1`, the host in its header), as SDKs send it.
        let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
        let mut builder = http::Request::builder().method(request.method).uri(target);
        for (name, value) in &headers {
            builder = builder.header(*name, *value);
        }
        let identity = creds.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service.signing_name)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| CallError::NoCredentials(e.to_string()))?
            .into();
        let url = uri.to_string();
        let signable = SignableRequest::new(
            request.method,
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(&request.body),
        )
        .map_err(|e| CallError::NoCredentials(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| CallError::NoCredentials(e.to_string()))?
            .into_parts();
        let mut http_request = builder
            .body(Full::new(bytes::Bytes::from(request.body)))
            .map_err(|e| CallError::BadResponse(e.to_string()))?;
        instructions.apply_to_request_http1x(&mut http_request);
        Ok(http_request)
    }

    /// HTTP/1.1 over TCP (`http://`, loopback only: the simulator) or rustls (`https://`).
    async fn send(&self, request: http::Request<Full<bytes::Bytes>>) -> Result<ApiResponse, CallError> {
        let unreachable = CallError::Unreachable;
        let uri: http::Uri = self
            .endpoint
            .parse()
            .map_err(|_| unreachable("not a valid URL".into()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(unreachable("the endpoint must be an http:// or https:// URL".into())),
        };
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
        if !tls && !is_loopback(&host) {
            return Err(unreachable("plain http:// is only allowed to a loopback address".into()));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let io: crate::tunnel::TunnelStream = if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| unreachable("not a valid host name".into()))?;
            Box::new(
                tokio_rustls::TlsConnector::from(public_tls_config().map_err(unreachable)?)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS: {e}")))?,
            )
        } else {
            Box::new(tcp)
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let error_type = response
                .headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            let body = String::from_utf8(body.to_vec())
                .map_err(|_| CallError::BadResponse("the answer is not UTF-8".into()))?;
            Ok(ApiResponse { status, error_type, body })
        }
        .await;
        driver.abort();
        result
    }
}

/// `Action=…&Version=…&k=v…`, each value percent-encoded.
pub fn query_body(action: &str, version: &str, params: &[(&str, &str)]) -> String {
    let mut body = format!("Action={action}&Version={version}");
    for (k, v) in params {
        body.push('&');
        body.push_str(k);
        body.push('=');
        body.extend(percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC));
    }
    body
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The system's roots (the AWS APIs have public certificates).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_xml_errors() {
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
        assert_eq!(xml_error(err), Some(("DBInstanceNotFound".into(), "DBInstance x & y not found.".into())));
        assert_eq!(xml_error("not xml <"), None);
    }

    fn answer(status: u16, error_type: Option<&str>, body: &str) -> ApiResponse {
        ApiResponse {
            status: http::StatusCode::from_u16(status).unwrap(),
            error_type: error_type.map(str::to_owned),
            body: body.to_owned(),
        }
    }

    #[test]
    fn error_codes_from_json_xml_and_the_header() {
        let namespaced = r#"{"__type":"com.amazonaws.redshiftserverless#AccessDeniedException","message":"User: x is not authorized"}"#;
        assert_eq!(answer(400, None, namespaced).error(), ("AccessDeniedException".into(), "User: x is not authorized".into()));
        let bare = r#"{"__type":"ResourceNotFoundException","Message":"Serverless workgroup w not found."}"#;
        assert_eq!(answer(400, None, bare).error(), ("ResourceNotFoundException".into(), "Serverless workgroup w not found.".into()));
        // rest-json: the type is in the header, the body has only a message.
        let header = "ValidationException:http://internal.amazon.com/coral/com.amazonaws.dsql/";
        assert_eq!(answer(400, Some(header), r#"{"message":"bad id"}"#).error(), ("ValidationException".into(), "bad id".into()));
        let xml = "<ErrorResponse><Error><Code>ClusterNotFound</Code><Message>Cluster c not found.</Message></Error></ErrorResponse>";
        assert_eq!(answer(404, None, xml).error(), ("ClusterNotFound".into(), "Cluster c not found.".into()));
        assert_eq!(answer(503, None, "").error(), ("HTTP 503 Service Unavailable".into(), String::new()));
    }

    #[test]
    fn endpoints_partitions_and_accounts() {
        assert_eq!(REDSHIFT.default_endpoint("eu-west-1"), "https://redshift.eu-west-1.amazonaws.com");
        assert_eq!(REDSHIFT.default_endpoint("cn-north-1"), "https://redshift.cn-north-1.amazonaws.com.cn");
        assert_eq!(REDSHIFT_SERVERLESS.default_endpoint("us-east-2"), "https://redshift-serverless.us-east-2.amazonaws.com");
        assert_eq!(DSQL.default_endpoint("us-east-1"), "https://dsql.us-east-1.api.aws");
        assert_eq!(DSQL.default_endpoint("cn-northwest-1"), "https://dsql.cn-northwest-1.api.amazonwebservices.com.cn");
        assert_eq!(RDS.default_endpoint("cn-north-1"), "https://rds.cn-north-1.amazonaws.com.cn");
        assert_eq!(REDSHIFT_SERVERLESS.env_variable(), "AWS_ENDPOINT_URL_REDSHIFT_SERVERLESS");
        assert_eq!((partition("cn-north-1"), partition("us-gov-west-1"), partition("eu-west-1")), ("aws-cn", "aws-us-gov", "aws"));
        assert_eq!(
            account_in_message("User: arn:aws:sts::123456789012:assumed-role/Dev/alice is not authorized"),
            Some("123456789012".into())
        );
        assert_eq!(account_in_message("User: arn:aws:iam::12:user/x; nothing else"), None);
        assert_eq!(account_in_message("no arn here"), None);
    }

    #[test]
    fn timestamps() {
        let t = parse_timestamp("2026-12-07T15:10:00Z").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 1_796_656_200);
        assert!(parse_timestamp("2026-12-07T15:10:00.250Z").is_some());
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(epoch_seconds(&serde_json::json!(1796656200.5)).map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis()), Some(1_796_656_200_500));
        assert_eq!(epoch_seconds(&serde_json::json!("1796656200")), None);
    }

    #[test]
    fn dsql_and_redshift_login_hints_name_the_permission_and_the_arn() {
        let admin = dsql_connect_hint("us-east-1", Some("123456789012"), "abcdefghijklmnopqrstuvwxyz", true);
        assert!(admin.contains("dsql:DbConnectAdmin for your IAM identity on arn:aws:dsql:us-east-1:123456789012:cluster/abcdefghijklmnopqrstuvwxyz"), "{admin}");
        let role = dsql_connect_hint("cn-north-1", None, "c1", false);
        assert!(role.contains("dsql:DbConnect for your IAM identity on arn:aws-cn:dsql:cn-north-1:ACCOUNT:cluster/c1"), "{role}");
        assert!(role.contains("AWS IAM GRANT <role> TO '<your IAM role ARN>'"), "{role}");
        assert!(!role.contains("DbConnectAdmin"), "{role}");
        let redshift = redshift_login_hint("examplecluster", "IAM:alice", false);
        assert!(redshift.contains("cluster examplecluster") && redshift.contains("IAM:alice"), "{redshift}");
    }

    #[test]
    fn credentials_print_redacted() {
        let c = DbCredentials {
            db_user: "IAM:alice".into(),
            password: TemporaryPassword::new("EXAMPLEpassword123"),
            expiration: SystemTime::UNIX_EPOCH,
        };
        let printed = format!("{c:?}");
        assert!(printed.contains("IAM:alice") && printed.contains("<redacted>") && !printed.contains("EXAMPLE"), "{printed}");
    }
}

/// A loopback HTTP/1.1 server for the API clients' unit tests: it records each request as it
/// came and answers every one with the same status, headers and body.
#[cfg(test)]
pub mod test_server {
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request as received.
    #[derive(Debug, Clone)]
    pub struct Recorded {
        pub method: String,
        pub path: String,
        /// Names lower-cased.
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Recorded {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }

        /// The request carries a SigV4 signature for `service` in `region` by the test key
        /// (`AKIDEXAMPLE`/`secret`) over exactly what was received: signing the recorded
        /// method, path, signed headers and body again at its X-Amz-Date gives the same
        /// Authorization header.
        pub fn assert_signed(&self, service: &str, region: &str) {
            use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
            let authorization = self.header("authorization").expect("an Authorization header");
            let date = self.header("x-amz-date").expect("an X-Amz-Date header");
            assert!(
                authorization.starts_with(&format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{}/{region}/{service}/aws4_request, ", &date[..8])),
                "{authorization}"
            );
            let signed: Vec<&str> = authorization
                .split("SignedHeaders=")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .expect("SignedHeaders")
                .split(';')
                .collect();
            let iso = format!("{}-{}-{}T{}:{}:{}Z", &date[..4], &date[4..6], &date[6..8], &date[9..11], &date[11..13], &date[13..15]);
            let time: SystemTime = super::parse_timestamp(&iso).expect("X-Amz-Date");
            let headers: Vec<(&str, &str)> = signed
                .iter()
                .filter(|h| **h != "x-amz-date")
                .map(|h| (*h, self.header(h).unwrap_or_else(|| panic!("signed header {h} not sent"))))
                .collect();
            let identity = aws_credential_types::Credentials::from_keys("AKIDEXAMPLE", "secret", None).into();
            let params = aws_sigv4::sign::v4::SigningParams::builder()
                .identity(&identity)
                .region(region)
                .name(service)
                .time(time)
                .settings(SigningSettings::default())
                .build()
                .unwrap()
                .into();
            let url = format!("http://{}{}", self.header("host").unwrap(), self.path);
            let signable = SignableRequest::new(&self.method, &url, headers.into_iter(), SignableBody::Bytes(&self.body)).unwrap();
            let (instructions, _) = sign(signable, &params).unwrap().into_parts();
            let (again, _) = instructions.into_parts();
            let again = again.iter().find(|h| h.name() == "authorization").expect("re-signed").value().to_owned();
            assert_eq!(authorization, again, "the signature does not cover what was sent");
        }
    }

    pub struct TestServer {
        port: u16,
        requests: Arc<Mutex<Vec<Recorded>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestServer {
        pub async fn start(status: u16, headers: &[(&str, &str)], body: &str) -> TestServer {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let mut answer = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
            for (name, value) in headers {
                answer.push_str(&format!("{name}: {value}\r\n"));
            }
            answer.push_str("\r\n");
            answer.push_str(body);
            let log = requests.clone();
            let task = tokio::spawn(async move {
                while let Ok((mut tcp, _)) = listener.accept().await {
                    let mut buf = Vec::new();
                    let head_end = loop {
                        let mut chunk = [0u8; 4096];
                        let n = tcp.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break None;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break Some(i);
                        }
                    };
                    let Some(head_end) = head_end else { continue };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let mut lines = head.split("\r\n");
                    let mut first = lines.next().unwrap_or_default().split(' ');
                    let (method, path) = (first.next().unwrap_or_default().to_owned(), first.next().unwrap_or_default().to_owned());
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let length: usize = headers
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = buf[head_end + 4..].to_vec();
                    while body.len() < length {
                        let mut chunk = [0u8; 4096];
                        let n = tcp.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        body.extend_from_slice(&chunk[..n]);
                    }
                    log.lock().unwrap().push(Recorded { method, path, headers, body });
                    let _ = tcp.write_all(answer.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                }
            });
            TestServer { port, requests, task }
        }

        pub fn url(&self) -> String {
            format!("http://127.0.0.1:{}", self.port)
        }

        pub fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }
    }
}
