//! A SigV4-checked JSON API on loopback, for the simulated services that speak AWS JSON 1.1
//! (Redshift Serverless) or REST-JSON (the Aurora DSQL control plane): a signed request in, a
//! status and a JSON body out; a refused signature answered as those protocols answer it
//! (`{"__type", "message"}`, the code in `x-amzn-ErrorType` too).

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::query::LoopbackServer;
use super::sigv4::{self, SimCredentials};

/// These APIs' requests are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// One verified call as a handler sees it.
#[derive(Debug)]
pub struct JsonCall {
    pub method: http::Method,
    pub path: String,
    /// `X-Amz-Target` (JSON 1.1), empty for REST.
    pub target: String,
    /// The body as JSON (`{}` when empty); a body that is not JSON is refused before.
    pub body: Value,
    /// The access key id that signed the call.
    pub signer: String,
}

/// An answer: status and JSON body. Errors are `{"__type": CODE, "message": …}`.
pub type JsonAnswer = (StatusCode, Value);

/// A refused call.
pub fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> JsonAnswer {
    (status, json!({ "__type": code, "message": message.into() }))
}

pub type JsonHandler = Arc<dyn Fn(&JsonCall) -> JsonAnswer + Send + Sync>;

/// How a JSON service is signed.
#[derive(Debug, Clone)]
pub struct JsonService {
    /// SigV4 signing name (`redshift-serverless`, `dsql`).
    pub signing_name: &'static str,
    /// The region signatures must be scoped to.
    pub region: String,
    /// The status of a refused signature: 400 in AWS JSON 1.1, 403 in REST-JSON services.
    pub auth_error_status: StatusCode,
    /// `application/x-amz-json-1.1` or `application/json` (REST-JSON).
    pub content_type: &'static str,
}

/// A running simulated JSON API.
pub struct JsonServer(LoopbackServer);

impl JsonServer {
    pub async fn start(
        service: JsonService,
        credentials: SimCredentials,
        handler: JsonHandler,
    ) -> std::io::Result<JsonServer> {
        let shared = Arc::new((service, credentials, handler));
        let server = LoopbackServer::start("JSON", move |request| {
            let shared = shared.clone();
            async move {
                let (service, credentials, handler) = &*shared;
                handle(request, service, credentials, handler).await
            }
        })
        .await?;
        Ok(JsonServer(server))
    }
}

impl std::ops::Deref for JsonServer {
    type Target = LoopbackServer;

    fn deref(&self) -> &LoopbackServer {
        &self.0
    }
}

async fn handle(
    request: Request<Incoming>,
    service: &JsonService,
    credentials: &SimCredentials,
    handler: &JsonHandler,
) -> Response<Full<Bytes>> {
    use sigv4::SignedCallError as E;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (status, body) = match sigv4::read_signed_call(request, MAX_BODY, service.signing_name, credentials, &service.region).await {
        Err(E::Body) => json_error(StatusCode::BAD_REQUEST, "SerializationException", "The request body could not be read."),
        Err(E::Signature(rejection)) => {
            json_error(service.auth_error_status, rejection.aws_error_code(), rejection.to_string())
        }
        Err(E::WrongRegion) => json_error(
            service.auth_error_status,
            "InvalidSignatureException",
            "Credential should be scoped to a valid region.",
        ),
        Ok(call) => {
            let body = if call.body.is_empty() {
                Ok(json!({}))
            } else {
                serde_json::from_slice::<Value>(&call.body)
            };
            match body {
                Err(_) => json_error(StatusCode::BAD_REQUEST, "SerializationException", "The request body is not JSON."),
                Ok(body) => handler(&JsonCall {
                    method,
                    path,
                    target: call.target,
                    body,
                    signer: call.access_key_id,
                }),
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(service.content_type));
    if let Some(code) = body.get("__type").and_then(Value::as_str) {
        if let Ok(value) = HeaderValue::from_str(code) {
            headers.insert("x-amzn-errortype", value);
        }
    }
    headers.insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).unwrap_or(HeaderValue::from_static("0")),
    );
    response
}
