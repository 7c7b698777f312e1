//! The simulated AWS Secrets Manager: GetSecretValue (AWS JSON 1.1 over HTTP on loopback,
//! `X-Amz-Target: secretsmanager.GetSecretValue`), SigV4-verified against the simulator's
//! credentials, for the secrets the simulator creates (one per password user, shaped like RDS's
//! managed master user secret). [`SecretsSim::put`] replaces a value — rotation.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::sigv4::{self, SignatureRejection, SimCredentials};

/// The service name requests are signed for.
const SIGNING_NAME: &str = "secretsmanager";
/// The account every simulated ARN is in.
const ACCOUNT: &str = "123456789012";
const MAX_BODY: usize = 64 * 1024;
const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// A refused request, answered as AWS does: HTTP 400 and `{"__type", "message"}`.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error(transparent)]
    Signature(#[from] SignatureRejection),
    #[error("Credential should be scoped to a valid region.")]
    WrongRegion,
    #[error("Secrets Manager can't find the specified secret.")]
    NotFound,
    #[error("{0}")]
    Validation(String),
    #[error("The operation {0} is not supported by the simulated Secrets Manager endpoint.")]
    UnknownOperation(String),
}

impl ApiError {
    fn code(&self) -> &str {
        match self {
            ApiError::Signature(rejection) => rejection.aws_error_code(),
            ApiError::WrongRegion => "InvalidSignatureException",
            ApiError::NotFound => "ResourceNotFoundException",
            ApiError::Validation(_) => "InvalidParameterException",
            ApiError::UnknownOperation(_) => "UnknownOperationException",
        }
    }
}

/// One secret's current version.
#[derive(Clone)]
struct Secret {
    arn: String,
    value: String,
    version: String,
}

struct Inner {
    credentials: SimCredentials,
    region: String,
    secrets: Mutex<HashMap<String, Secret>>,
    /// Successful GetSecretValue calls: tells whether the proxy caches and re-reads.
    reads: AtomicU64,
}

/// A running simulated Secrets Manager.
pub struct SecretsSim {
    addr: SocketAddr,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl SecretsSim {
    pub async fn start(credentials: SimCredentials, region: &str) -> std::io::Result<SecretsSim> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            credentials,
            region: region.to_owned(),
            secrets: Mutex::new(HashMap::new()),
            reads: AtomicU64::new(0),
        });
        let server = tokio::spawn(serve(listener, inner.clone()));
        Ok(SecretsSim {
            addr,
            inner,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_SECRETS_MANAGER`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates `name` or gives it a new current version with `value` (rotation).
    pub fn put(&self, name: &str, value: &str) {
        let mut secrets = self.inner.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let arn = secrets.get(name).map(|s| s.arn.clone()).unwrap_or_else(|| {
            // AWS appends a dash and six random characters to the name.
            let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
            format!(
                "arn:aws:secretsmanager:{}:{ACCOUNT}:secret:{name}-{suffix}",
                self.inner.region
            )
        });
        secrets.insert(
            name.to_owned(),
            Secret {
                arn,
                value: value.to_owned(),
                version: uuid::Uuid::new_v4().to_string(),
            },
        );
    }

    /// The ARN of `name`, if it exists.
    pub fn arn(&self, name: &str) -> Option<String> {
        let secrets = self.inner.secrets.lock().unwrap_or_else(|p| p.into_inner());
        secrets.get(name).map(|s| s.arn.clone())
    }

    /// How many GetSecretValue calls succeeded.
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for SecretsSim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "simulated Secrets Manager: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(handle(request, &inner).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(error = %e, "simulated Secrets Manager: connection ended");
            }
        });
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    response
}

async fn handle(request: Request<Incoming>, inner: &Inner) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != "/" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    match api_call(request, inner).await {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => {
            tracing::debug!(error = %e, code = e.code(), "simulated Secrets Manager: request refused");
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "__type": e.code(), "message": e.to_string() }),
            )
        }
    }
}

async fn api_call(request: Request<Incoming>, inner: &Inner) -> Result<Value, ApiError> {
    use sigv4::SignedCallError as E;
    let call = sigv4::read_signed_call(request, MAX_BODY, SIGNING_NAME, &inner.credentials, &inner.region)
        .await
        .map_err(|e| match e {
            E::Body => ApiError::Validation("The request body could not be read.".into()),
            E::Signature(e) => ApiError::Signature(e),
            E::WrongRegion => ApiError::WrongRegion,
        })?;
    let (target, body) = (call.target.as_str(), call.body);
    if target != "secretsmanager.GetSecretValue" {
        return Err(ApiError::UnknownOperation(target.to_owned()));
    }
    let input: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::Validation("The request body is not valid JSON.".into()))?;
    let id = input
        .get("SecretId")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::Validation("SecretId is required.".into()))?;
    let (name, secret) = {
        let secrets = inner.secrets.lock().unwrap_or_else(|p| p.into_inner());
        secrets
            .iter()
            .find(|(name, s)| name.as_str() == id || s.arn == id)
            .map(|(n, s)| (n.clone(), s.clone()))
            .ok_or(ApiError::NotFound)?
    };
    inner.reads.fetch_add(1, Ordering::SeqCst);
    let created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    Ok(json!({
        "ARN": secret.arn,
        "Name": name,
        "VersionId": secret.version,
        "SecretString": secret.value,
        "VersionStages": ["AWSCURRENT"],
        "CreatedDate": created,
    }))
}
