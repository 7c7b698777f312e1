//! The AWS Query protocol as the simulated STS and RDS APIs speak it: a form-encoded POST
//! (`Action=…&Version=…&…`), SigV4-checked like the JSON services ([`super::sigv4::read_signed_call`]),
//! answered with `<ActionResponse><ActionResult>…</ActionResult>` XML, or AWS's
//! `<ErrorResponse><Error><Type/><Code/><Message/></Error>` with the status AWS uses.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::sigv4::{self, SignatureRejection, SimCredentials};

/// Query requests are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// A refused call: the HTTP status, the AWS error code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl QueryError {
    /// A `Sender` fault with HTTP 400.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        QueryError {
            status: StatusCode::BAD_REQUEST,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    fn signature(rejection: &SignatureRejection) -> Self {
        // The Query services' names for the JSON services' codes, and AWS's 403.
        let code = match rejection.aws_error_code() {
            "MissingAuthenticationTokenException" => "MissingAuthenticationToken",
            "IncompleteSignatureException" => "IncompleteSignature",
            "UnrecognizedClientException" => "InvalidClientTokenId",
            "ExpiredTokenException" => "ExpiredToken",
            _ => "SignatureDoesNotMatch",
        };
        QueryError {
            status: StatusCode::FORBIDDEN,
            code: code.to_owned(),
            message: rejection.to_string(),
        }
    }
}

/// The form parameters of one call, `Action` and `Version` included.
pub type Params = HashMap<String, String>;

/// What a simulated Query service does with a verified call (action, parameters, the access key
/// id that signed it): the XML inside `<ActionResult>`.
pub type Handler = Arc<dyn Fn(&str, &Params, &str) -> Result<String, QueryError> + Send + Sync>;

/// How a Query service is signed and named.
#[derive(Debug, Clone)]
pub struct QueryService {
    /// SigV4 signing name (`sts`, `rds`).
    pub signing_name: &'static str,
    /// The API version every request must name.
    pub version: &'static str,
    /// The XML namespace of responses.
    pub xmlns: &'static str,
    /// The region signatures must be scoped to; `None` accepts any (STS: every region has one).
    pub region: Option<String>,
}

/// A loopback HTTP/1.1 server of the simulator (the Query and JSON APIs): every connection is
/// served by `handle` in a task of its own, until the server is stopped or dropped.
pub struct LoopbackServer {
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl LoopbackServer {
    /// Binds 127.0.0.1 on a free port; `label` names the API in log lines.
    pub(crate) async fn start<F, Fut>(label: &'static str, handle: F) -> std::io::Result<LoopbackServer>
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let handle = Arc::new(handle);
        let server = tokio::spawn(async move {
            loop {
                let (tcp, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "simulated {label} API: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handle = handle.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let answer = handle(request);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await
                    {
                        tracing::debug!(error = %e, "simulated {label} API: connection ended");
                    }
                });
            }
        });
        Ok(LoopbackServer { addr, server })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_<SERVICE>`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A running simulated Query API on loopback.
pub struct QueryServer(LoopbackServer);

impl QueryServer {
    pub async fn start(
        service: QueryService,
        credentials: SimCredentials,
        handler: Handler,
    ) -> std::io::Result<QueryServer> {
        let shared = Arc::new((service, credentials, handler));
        let server = LoopbackServer::start("Query", move |request| {
            let shared = shared.clone();
            async move {
                let (service, credentials, handler) = &*shared;
                handle(request, service, credentials, handler).await
            }
        })
        .await?;
        Ok(QueryServer(server))
    }
}

impl std::ops::Deref for QueryServer {
    type Target = LoopbackServer;

    fn deref(&self) -> &LoopbackServer {
        &self.0
    }
}

async fn handle(
    request: Request<Incoming>,
    service: &QueryService,
    credentials: &SimCredentials,
    handler: &Handler,
) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != "/" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    match call(request, service, credentials, handler).await {
        Ok((action, result)) => xml_response(
            StatusCode::OK,
            format!(
                "<{action}Response xmlns=\"{ns}\">\n  <{action}Result>\n{result}  </{action}Result>\n  \
                 <ResponseMetadata>\n    <RequestId>{request_id}</RequestId>\n  </ResponseMetadata>\n</{action}Response>\n",
                ns = service.xmlns
            ),
        ),
        Err(e) => {
            tracing::debug!(code = %e.code, message = %e.message, "simulated Query API: request refused");
            xml_response(
                e.status,
                format!(
                    "<ErrorResponse xmlns=\"{ns}\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n    \
                     <Message>{message}</Message>\n  </Error>\n  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n",
                    ns = service.xmlns,
                    code = xml_escape(&e.code),
                    message = xml_escape(&e.message)
                ),
            )
        }
    }
}

async fn call(
    request: Request<Incoming>,
    service: &QueryService,
    credentials: &SimCredentials,
    handler: &Handler,
) -> Result<(String, String), QueryError> {
    use sigv4::SignedCallError as E;
    // The region check is ours (below): STS accepts every region's scope.
    let call = sigv4::read_signed_call_any_region(request, MAX_BODY, service.signing_name, credentials)
        .await
        .map_err(|e| match e {
            E::Body => QueryError::bad_request("MalformedQueryString", "The request body could not be read."),
            E::Signature(e) => QueryError::signature(&e),
            E::WrongRegion => QueryError::bad_request("SignatureDoesNotMatch", "Credential should be scoped to a valid region."),
        })?;
    if let Some(region) = &service.region {
        if &call.region != region {
            return Err(QueryError {
                status: StatusCode::FORBIDDEN,
                code: "SignatureDoesNotMatch".into(),
                message: format!("Credential should be scoped to a valid region, not '{}'.", call.region),
            });
        }
    }
    let params = parse_form(&call.body)
        .ok_or_else(|| QueryError::bad_request("MalformedQueryString", "The request body is not form-encoded UTF-8."))?;
    let action = params
        .get("Action")
        .cloned()
        .ok_or_else(|| QueryError::bad_request("MissingAction", "Missing Action"))?;
    if params.get("Version").map(String::as_str) != Some(service.version) {
        return Err(QueryError::bad_request(
            "InvalidAction",
            format!("Could not find operation {action} for version {}", params.get("Version").map_or("NO_VERSION_SPECIFIED", String::as_str)),
        ));
    }
    let result = handler(&action, &params, &call.access_key_id)?;
    Ok((action, result))
}

fn xml_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    response
}

/// `application/x-www-form-urlencoded` → map (`+` is a space); `None` when not UTF-8.
pub fn parse_form(body: &[u8]) -> Option<Params> {
    let text = std::str::from_utf8(body).ok()?;
    let mut params = Params::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
                .ok()
        };
        params.insert(decode(k)?, decode(v)?);
    }
    Some(params)
}

/// Escapes text for an XML element.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What tests see and steer of a simulated API while it runs: calls by action, and actions
/// answered with AccessDenied (as if the caller's IAM policy lacked them). Shared by the Query,
/// JSON and REST simulated APIs of the Redshift and DSQL services.
#[derive(Debug, Default)]
pub struct ApiControl {
    calls: std::sync::Mutex<HashMap<String, u64>>,
    denied: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl ApiControl {
    /// Counts a signed call of `action`; true when the action is denied.
    pub fn record(&self, action: &str) -> bool {
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(action.to_owned())
            .or_default() += 1;
        self.denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(action)
    }

    /// Signed calls of `action` so far (denied ones included).
    pub fn calls(&self, action: &str) -> u64 {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(action)
            .copied()
            .unwrap_or(0)
    }

    /// Answers `action` with AccessDenied from now on (`deny == false` allows it again).
    pub fn deny(&self, action: &str, deny: bool) {
        let mut denied = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        if deny {
            denied.insert(action.to_owned());
        } else {
            denied.remove(action);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let p = parse_form(b"Action=DescribeDBInstances&Version=2014-10-31&DBInstanceIdentifier=my+db%2Dx&Flag").unwrap();
        assert_eq!(p["Action"], "DescribeDBInstances");
        assert_eq!(p["DBInstanceIdentifier"], "my db-x");
        assert_eq!(p["Flag"], "");
        assert!(parse_form(b"A=%FF").is_none());
    }

    #[test]
    fn escapes() {
        assert_eq!(xml_escape("a<b&\"c\">"), "a&lt;b&amp;&quot;c&quot;&gt;");
    }
}
