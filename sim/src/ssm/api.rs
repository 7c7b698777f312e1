//! The simulated SSM API (AWS JSON 1.1 over HTTP/1.1, `ssm-protocol.md` §1.1): StartSession,
//! ResumeSession and TerminateSession, each SigV4-verified against the simulator's credentials,
//! and the data channel WebSocket upgrade (`GET /v1/data-channel/<SessionId>`) on the same port.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::{agent, bump, channel, Inner, SIM_NODES, SIM_TARGET_ID};
use crate::sigv4::{self, SignatureRejection};

/// The service name SSM requests are signed for.
const SIGNING_NAME: &str = "ssm";

/// The only document the simulated node runs, and its sibling without a `host`.
const DOC_TO_REMOTE_HOST: &str = "AWS-StartPortForwardingSessionToRemoteHost";
const DOC_PORT_FORWARDING: &str = "AWS-StartPortForwardingSession";

/// The document StartSession uses when none is named (an interactive shell, not simulated).
const DEFAULT_DOCUMENT: &str = "SSM-SessionManagerRunShell";

/// Largest request body read; SSM requests are a few hundred bytes.
const MAX_BODY: usize = 1024 * 1024;

/// Where data channel WebSockets are served, followed by the SessionId.
const DATA_CHANNEL_PATH: &str = "/v1/data-channel/";

const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// A refused API request, answered as AWS does: HTTP 400 and `{"__type", "message"}`.
#[derive(Debug, thiserror::Error)]
pub(super) enum ApiError {
    #[error(transparent)]
    Signature(#[from] SignatureRejection),
    #[error("Credential should be scoped to a valid region.")]
    WrongRegion,
    #[error("{0} is not connected.")]
    TargetNotConnected(String),
    #[error("{0}")]
    InvalidDocument(String),
    #[error("{0}")]
    Validation(String),
    #[error("Session with id {0} does not exist.")]
    DoesNotExist(String),
    #[error("The operation {0} is not supported by the simulated SSM endpoint.")]
    UnknownOperation(String),
    #[error("{0}")]
    Serialization(String),
    /// The `refuse_start` knob: the code, and the message AWS gives with it.
    #[error("{message}")]
    Refused { code: String, message: String },
}

impl ApiError {
    /// The `__type` AWS puts in the body.
    fn code(&self) -> &str {
        match self {
            ApiError::Signature(rejection) => rejection.aws_error_code(),
            ApiError::WrongRegion => "InvalidSignatureException",
            ApiError::TargetNotConnected(_) => "TargetNotConnected",
            ApiError::InvalidDocument(_) => "InvalidDocument",
            ApiError::Validation(_) => "ValidationException",
            ApiError::DoesNotExist(_) => "DoesNotExistException",
            ApiError::UnknownOperation(_) => "UnknownOperationException",
            ApiError::Serialization(_) => "SerializationException",
            ApiError::Refused { code, .. } => code,
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let body = json!({ "__type": self.code(), "message": self.to_string() });
        json_response(StatusCode::BAD_REQUEST, &body)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

/// Accepts connections until the task is aborted.
pub(super) async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "simulated SSM: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let inner = inner.clone();
        tokio::spawn(async move {
            // The first request on a connection also pays for opening it (see `handle`).
            let opened = std::sync::atomic::AtomicBool::new(false);
            let service = service_fn(move |request| {
                let inner = inner.clone();
                let new_connection = !opened.swap(true, std::sync::atomic::Ordering::Relaxed);
                async move { Ok::<_, Infallible>(handle(request, inner, new_connection).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "simulated SSM: connection ended");
            }
        });
    }
}

/// Round trips to open an `https://`/`wss://` connection before its first request: the TCP
/// handshake and the TLS 1.3 handshake.
const CONNECTION_SETUP_ROUND_TRIPS: usize = 2;

/// One request over the simulated network (the `latency`/`jitter` knobs; see
/// [`super::SsmSimOptions`]): it reaches the service one way after it was sent (plus the TCP and
/// TLS 1.3 handshakes, [`CONNECTION_SETUP_ROUND_TRIPS`], on a `new_connection`), is served, and
/// the answer takes another one way back. A data channel upgrade, always on a new connection,
/// thus answers after 3 round trips; an API call on a kept-alive connection after 1.
async fn handle(
    request: Request<Incoming>,
    inner: Arc<Inner>,
    new_connection: bool,
) -> Response<Full<Bytes>> {
    let crossings = if new_connection {
        1 + 2 * CONNECTION_SETUP_ROUND_TRIPS
    } else {
        1
    };
    let there: Duration = (0..crossings).map(|_| inner.one_way_delay()).sum();
    if !there.is_zero() {
        tokio::time::sleep(there).await;
    }
    let response = answer(request, inner.clone()).await;
    let back = inner.one_way_delay();
    if !back.is_zero() {
        tokio::time::sleep(back).await;
    }
    response
}

async fn answer(request: Request<Incoming>, inner: Arc<Inner>) -> Response<Full<Bytes>> {
    if request.method() == Method::GET {
        if let Some(id) = request.uri().path().strip_prefix(DATA_CHANNEL_PATH) {
            let id = id.to_owned();
            if inner.knobs.read(|o| o.hang_upgrade) {
                // No answer at all: the request is held until the simulator stops (or the
                // client drops the connection, which drops this future).
                bump(&inner.stats.upgrades_hung);
                let mut shutdown = inner.shutdown.subscribe();
                let _ = shutdown.wait_for(|stopped| *stopped).await;
                return plain(StatusCode::SERVICE_UNAVAILABLE, "stopping");
            }
            return upgrade(request, inner, &id);
        }
    }
    if request.method() == Method::POST && request.uri().path() == "/" {
        return match api_call(request, &inner).await {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(e) => {
                tracing::debug!(error = %e, code = e.code(), "simulated SSM: request refused");
                e.response()
            }
        };
    }
    plain(StatusCode::NOT_FOUND, "not found")
}

async fn api_call(request: Request<Incoming>, inner: &Arc<Inner>) -> Result<Value, ApiError> {
    use sigv4::SignedCallError as E;
    let call = sigv4::read_signed_call(request, MAX_BODY, SIGNING_NAME, &inner.credentials, &inner.region)
        .await
        .map_err(|e| match e {
            E::Body => ApiError::Serialization("The request body could not be read.".to_owned()),
            E::Signature(e) => ApiError::Signature(e),
            E::WrongRegion => ApiError::WrongRegion,
        })?;
    let (target, body) = (call.target.as_str(), call.body);
    let operation = target.strip_prefix("AmazonSSM.").unwrap_or(target);
    let input: Value = if body.is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            ApiError::Serialization("The request body is not valid JSON.".to_owned())
        })?
    };
    let input = input.as_object().ok_or_else(|| {
        ApiError::Serialization("The request body must be a JSON object.".to_owned())
    })?;
    match operation {
        "StartSession" => start_session(inner, input),
        "ResumeSession" => {
            if inner.knobs.read(|o| o.hang_resume) {
                // No answer at all, like a request lost with the Wi-Fi: held until the
                // simulator stops or the client gives up (which drops this future).
                bump(&inner.stats.resumes_hung);
                let mut shutdown = inner.shutdown.subscribe();
                let _ = shutdown.wait_for(|stopped| *stopped).await;
                return Err(ApiError::Serialization("The simulator is stopping.".to_owned()));
            }
            resume_session(inner, input)
        }
        "TerminateSession" => terminate_session(inner, input).await,
        "DescribeInstanceInformation" => describe_instance_information(inner, input),
        other => Err(ApiError::UnknownOperation(other.to_owned())),
    }
}

fn string_field<'a>(
    input: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::Serialization(format!("{name} must be a string."))),
    }
}

fn required<'a>(input: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    string_field(input, name)?.ok_or_else(|| {
        ApiError::Validation(format!(
            "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
            lower_first(name)
        ))
    })
}

fn lower_first(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// One document parameter: a list holding exactly one string (documents' String parameters).
fn parameter(parameters: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match parameters.get(name) {
        None => Ok(None),
        Some(Value::Array(values)) => match values.as_slice() {
            [Value::String(value)] => Ok(Some(value.clone())),
            _ => Err(ApiError::Validation(format!(
                "Parameter {name} must be a list with exactly one string value."
            ))),
        },
        Some(_) => Err(ApiError::Serialization(format!(
            "Parameters.{name} must be a list of strings."
        ))),
    }
}

fn start_session(inner: &Arc<Inner>, input: &Map<String, Value>) -> Result<Value, ApiError> {
    let target = required(input, "Target")?;
    if let Some(code) = inner.knobs.read(|o| o.refuse_start.clone()) {
        bump(&inner.stats.starts_refused);
        let message = refusal_message(&code, target, &inner.region);
        return Err(ApiError::Refused { code, message });
    }
    if !node_online(inner, target) {
        return Err(ApiError::TargetNotConnected(target.to_owned()));
    }
    let document = string_field(input, "DocumentName")?.unwrap_or(DEFAULT_DOCUMENT);
    let parameters = match input.get("Parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => {
            return Err(ApiError::Serialization(
                "Parameters must be a map of string lists.".to_owned(),
            ))
        }
    };
    // The document's `properties` with its parameters substituted, as the agent receives them;
    // defaults are the AWS documents' (portNumber 80, localPortNumber 0).
    let mut properties = Map::new();
    match document {
        DOC_TO_REMOTE_HOST => {
            let host = parameter(&parameters, "host")?.ok_or_else(|| {
                ApiError::InvalidDocument(format!(
                    "Document {DOC_TO_REMOTE_HOST} requires parameter host."
                ))
            })?;
            properties.insert("host".to_owned(), Value::String(host));
        }
        DOC_PORT_FORWARDING => {}
        other => {
            return Err(ApiError::InvalidDocument(format!(
                "Document {other} is not supported by the simulated managed node; use {DOC_TO_REMOTE_HOST}."
            )))
        }
    }
    let port_number = parameter(&parameters, "portNumber")?.unwrap_or_else(|| "80".to_owned());
    let local_port = parameter(&parameters, "localPortNumber")?.unwrap_or_else(|| "0".to_owned());
    properties.insert("portNumber".to_owned(), Value::String(port_number));
    properties.insert("localPortNumber".to_owned(), Value::String(local_port));
    properties.insert(
        "type".to_owned(),
        Value::String("LocalPortForwarding".to_owned()),
    );

    let id = new_session_id();
    let shared = agent::start(inner, id.clone(), Value::Object(properties));
    inner.sessions().insert(id.clone(), shared.clone());
    let token = shared.issue_token().unwrap_or_default();
    inner.record_token(&token);
    bump(&inner.stats.sessions_started);
    Ok(json!({
        "SessionId": id,
        "TokenValue": token,
        "StreamUrl": inner.stream_url(&id),
    }))
}

/// Whether `id` is a known node whose agent is connected now.
fn node_online(inner: &Inner, id: &str) -> bool {
    let offline = inner.knobs.read(|o| o.node_offline);
    SIM_NODES
        .iter()
        .any(|n| n.id == id && n.online && !(offline && n.id == SIM_TARGET_ID))
}

/// DescribeInstanceInformation with the `Filters` AWS documents for it that a client picking
/// a node uses: `tag:KEY`, `tag-key`, `PingStatus`, `InstanceIds`. Other keys are refused as AWS
/// refuses unknown ones. Tags filter but are not part of the output, as on AWS.
fn describe_instance_information(inner: &Inner, input: &Map<String, Value>) -> Result<Value, ApiError> {
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    match input.get("Filters") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for f in list {
                let key = f.get("Key").and_then(Value::as_str);
                let values = f.get("Values").and_then(Value::as_array);
                let (Some(key), Some(values)) = (key, values) else {
                    return Err(ApiError::Serialization("Each filter needs a Key and a list of Values.".into()));
                };
                let values: Vec<String> = values.iter().filter_map(Value::as_str).map(str::to_owned).collect();
                if values.is_empty() {
                    return Err(ApiError::Validation(format!("The filter {key} needs at least one value.")));
                }
                let known = key.starts_with("tag:") || ["tag-key", "PingStatus", "InstanceIds"].contains(&key);
                if !known {
                    return Err(ApiError::Refused {
                        code: "InvalidFilterKey".into(),
                        message: format!("The filter key {key} is not valid."),
                    });
                }
                filters.push((key.to_owned(), values));
            }
        }
        Some(_) => return Err(ApiError::Serialization("Filters must be a list.".into())),
    }
    let agent_version = inner.knobs.read(|o| o.agent_version.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let list: Vec<Value> = SIM_NODES
        .iter()
        .filter(|node| {
            let ping = if node_online(inner, node.id) { "Online" } else { "ConnectionLost" };
            filters.iter().all(|(key, values)| match key.as_str() {
                "PingStatus" => values.iter().any(|v| v == ping),
                "InstanceIds" => values.iter().any(|v| v == node.id),
                "tag-key" => values.iter().any(|v| node.tags.iter().any(|(k, _)| k == v)),
                tag => {
                    let k = tag.trim_start_matches("tag:");
                    values.iter().any(|v| node.tags.iter().any(|(tk, tv)| *tk == k && tv == v))
                }
            })
        })
        .map(|node| {
            let online = node_online(inner, node.id);
            json!({
                "InstanceId": node.id,
                "PingStatus": if online { "Online" } else { "ConnectionLost" },
                // An offline node's last ping is an hour old.
                "LastPingDateTime": if online { now } else { now - 3600.0 },
                "AgentVersion": agent_version,
                "IsLatestVersion": false,
                "PlatformType": "Linux",
                "PlatformName": "Amazon Linux",
                "PlatformVersion": "2023",
                "ResourceType": "EC2Instance",
                "IPAddress": node.ip,
                "ComputerName": format!("ip-{}.{}.compute.internal", node.ip.replace('.', "-"), inner.region),
            })
        })
        .collect();
    Ok(json!({ "InstanceInformationList": list }))
}

/// What AWS says with each error code the `refuse_start` knob may name.
fn refusal_message(code: &str, target: &str, region: &str) -> String {
    match code {
        "AccessDeniedException" => format!(
            "User: arn:aws:iam::{SIM_ACCOUNT}:user/sim-user is not authorized to perform: \
             ssm:StartSession on resource: arn:aws:ec2:{region}:{SIM_ACCOUNT}:instance/{target} \
             because no identity-based policy allows the ssm:StartSession action"
        ),
        "ThrottlingException" => "Rate exceeded".to_owned(),
        "TargetNotConnected" => format!("{target} is not connected."),
        "InternalServerError" => "An internal error occurred.".to_owned(),
        other => format!("The simulated SSM endpoint refuses StartSession ({other})."),
    }
}

/// The account id in simulated ARNs.
const SIM_ACCOUNT: &str = "123456789012";

/// `<name>-<17 hex digits>`, the shape of real SessionIds.
fn new_session_id() -> String {
    let n: u128 = rand::random();
    format!("sim-{:017x}", n & ((1u128 << 68) - 1))
}

fn resume_session(inner: &Inner, input: &Map<String, Value>) -> Result<Value, ApiError> {
    let id = required(input, "SessionId")?;
    let session = inner
        .session(id)
        .ok_or_else(|| ApiError::DoesNotExist(id.to_owned()))?;
    let refuse = inner.knobs.read(|o| o.refuse_resume);
    let token = if refuse { None } else { session.issue_token() };
    match token {
        Some(token) => {
            inner.record_token(&token);
            bump(&inner.stats.sessions_resumed);
            Ok(json!({
                "SessionId": id,
                "TokenValue": token,
                "StreamUrl": inner.stream_url(id),
            }))
        }
        // What a timed-out session answers: no token, so the client gives up (§1.1).
        None => {
            bump(&inner.stats.resume_refused);
            Ok(json!({ "SessionId": id }))
        }
    }
}

async fn terminate_session(inner: &Inner, input: &Map<String, Value>) -> Result<Value, ApiError> {
    let id = required(input, "SessionId")?;
    let session = inner
        .session(id)
        .ok_or_else(|| ApiError::DoesNotExist(id.to_owned()))?;
    bump(&inner.stats.terminate_api_calls);
    session.terminate().await;
    Ok(json!({ "SessionId": id }))
}

/// Answers the WebSocket handshake for a known session and hands the socket to [`channel`].
fn upgrade(mut request: Request<Incoming>, inner: Arc<Inner>, id: &str) -> Response<Full<Bytes>> {
    let Some(session) = inner.session(id) else {
        return plain(StatusCode::NOT_FOUND, "unknown session");
    };
    let headers = request.headers();
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| is_websocket && version_ok)
    else {
        return plain(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);
    bump(&inner.stats.ws_connections);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "simulated MGS: upgrade failed");
                return;
            }
        };
        // Back to the raw TcpStream when possible, so the kill knobs can reset it.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let tcp = parts.io.into_inner();
                let hard_close = socket2::SockRef::from(&tcp).try_clone().ok();
                let ws = WebSocketStream::from_partially_read(
                    tcp,
                    parts.read_buf.to_vec(),
                    Role::Server,
                    None,
                )
                .await;
                channel::serve(ws, inner, session, hard_close).await;
            }
            Err(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                channel::serve(ws, inner, session, None).await;
            }
        }
    });
    let mut response = plain(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}
