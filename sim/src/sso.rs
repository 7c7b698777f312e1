//! The simulated IAM Identity Center (SSO) portal: GetRoleCredentials
//! (`GET /federation/credentials?role_name=…&account_id=…` with the `x-amz-sso_bearer_token`
//! header), which the SDK's SSO provider calls (reached with `AWS_ENDPOINT_URL_SSO`). It answers
//! with temporary credentials issued from the simulator's ([`SimCredentials::issue_temporary`]),
//! so every simulated service accepts them, and with AWS's 401 `UnauthorizedException: Session
//! token not found or invalid` once the portal session (the `aws sso login` token) has expired or
//! was revoked. [`SsoPortal::login`] does what `aws sso login` does for a legacy SSO profile: it
//! starts a portal session and writes its token to `~/.aws/sso/cache/<sha1 of the start URL>.json`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::sigv4::SimCredentials;
use super::sts::{SIM_ACCOUNT, SIM_ROLE_ID};
use rds_auth_proxy_protocol::time::Rfc3339;

/// The permission set (role) the simulated user is assigned in [`SIM_ACCOUNT`]; the portal
/// refuses other roles as IAM Identity Center does.
pub const SIM_SSO_ROLE: &str = "SimDeveloper";
/// The start URL of the simulated portal, as a legacy SSO profile names it.
pub const SIM_SSO_START_URL: &str = "https://sim-portal.awsapps.com/start";
/// Role credentials live an hour by default (a permission set's default session duration).
const DEFAULT_ROLE_LIFETIME: Duration = Duration::from_secs(3600);
/// A portal session (`aws sso login`) lasts eight hours by default.
const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

struct Inner {
    /// Issues the role credentials, and shares them with every simulated service.
    credentials: SimCredentials,
    /// Portal access token → when its session ends.
    sessions: Mutex<HashMap<String, SystemTime>>,
    /// How long the role credentials of each GetRoleCredentials call live (a test knob).
    role_lifetime: Mutex<Duration>,
    /// GetRoleCredentials calls answered with credentials: tells how often the proxy asks.
    issued: AtomicU64,
    /// GetRoleCredentials calls answered 401 (no, an expired or a revoked session token).
    unauthorized: AtomicU64,
}

/// A running simulated IAM Identity Center portal on loopback.
pub struct SsoPortal {
    addr: SocketAddr,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl SsoPortal {
    pub async fn start(credentials: SimCredentials) -> std::io::Result<SsoPortal> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            credentials,
            sessions: Mutex::new(HashMap::new()),
            role_lifetime: Mutex::new(DEFAULT_ROLE_LIFETIME),
            issued: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
        });
        let server = tokio::spawn(serve(listener, inner.clone()));
        Ok(SsoPortal { addr, inner, server })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_SSO`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What `aws sso login` does for a legacy SSO profile (one with `sso_start_url`): starts a
    /// portal session of eight hours and writes its token where the SDK looks for it,
    /// `HOME/.aws/sso/cache/<sha1 of start_url>.json`. Returns the file's path.
    pub fn login(&self, home: &Path, start_url: &str, region: &str) -> std::io::Result<PathBuf> {
        self.login_for(home, start_url, region, DEFAULT_SESSION_LIFETIME)
    }

    /// [`SsoPortal::login`] with a session of `lifetime`.
    pub fn login_for(
        &self,
        home: &Path,
        start_url: &str,
        region: &str,
        lifetime: Duration,
    ) -> std::io::Result<PathBuf> {
        let token = uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
        let expires = SystemTime::now() + lifetime;
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), expires);
        let dir = home.join(".aws/sso/cache");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.json", cache_file_stem(start_url)));
        let body = json!({
            "startUrl": start_url,
            "region": region,
            "accessToken": token,
            "expiresAt": Rfc3339(expires).to_string(),
        });
        std::fs::write(&path, body.to_string())?;
        Ok(path)
    }

    /// Ends every portal session now, as their expiry (or a sign-out) would: GetRoleCredentials
    /// answers 401 until the next [`SsoPortal::login`].
    pub fn expire_sessions(&self) {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// How long the role credentials of the following calls live.
    pub fn set_role_lifetime(&self, lifetime: Duration) {
        *self.inner.role_lifetime.lock().unwrap_or_else(|p| p.into_inner()) = lifetime;
    }

    /// GetRoleCredentials calls answered with credentials.
    pub fn role_credentials_issued(&self) -> u64 {
        self.inner.issued.load(Ordering::SeqCst)
    }

    /// GetRoleCredentials calls answered 401 Unauthorized.
    pub fn unauthorized_calls(&self) -> u64 {
        self.inner.unauthorized.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for SsoPortal {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The SDK's (and the AWS CLI's) cache file name for a legacy profile's token: the lowercase
/// hex SHA-1 of the start URL.
pub fn cache_file_stem(start_url: &str) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(start_url.as_bytes()))
}

async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "simulated SSO portal: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(handle(request, &inner)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(error = %e, "simulated SSO portal: connection ended");
            }
        });
    }
}

/// A refusal as the portal (restJson1) sends it: the code in `x-amzn-errortype`, the message in
/// the body.
fn error(status: StatusCode, code: &'static str, message: &str) -> Response<Full<Bytes>> {
    tracing::debug!(code, message, "simulated SSO portal: request refused");
    let mut response = json_response(status, &json!({ "message": message }));
    response
        .headers_mut()
        .insert("x-amzn-errortype", HeaderValue::from_static(code));
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

fn handle(request: Request<Incoming>, inner: &Inner) -> Response<Full<Bytes>> {
    if request.method() != Method::GET || request.uri().path() != "/federation/credentials" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let params: HashMap<String, String> = super::query::parse_form(request.uri().query().unwrap_or("").as_bytes()).unwrap_or_default();
    let (Some(role), Some(account)) = (params.get("role_name"), params.get("account_id")) else {
        return error(StatusCode::BAD_REQUEST, "InvalidRequestException", "role_name and account_id are required");
    };
    // The session is checked first: with no valid token the portal tells nothing about roles.
    let now = SystemTime::now();
    let session_ok = request
        .headers()
        .get("x-amz-sso_bearer_token")
        .and_then(|t| t.to_str().ok())
        .is_some_and(|token| {
            let sessions = inner.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.get(token).is_some_and(|expires| now < *expires)
        });
    if !session_ok {
        inner.unauthorized.fetch_add(1, Ordering::SeqCst);
        return error(StatusCode::UNAUTHORIZED, "UnauthorizedException", "Session token not found or invalid");
    }
    if account != SIM_ACCOUNT || role != SIM_SSO_ROLE {
        return error(StatusCode::FORBIDDEN, "ForbiddenException", "No access");
    }
    let lifetime = *inner.role_lifetime.lock().unwrap_or_else(|p| p.into_inner());
    // IAM Identity Center signs users in to a role it made for the permission set.
    let arn = format!("arn:aws:sts::{SIM_ACCOUNT}:assumed-role/AWSReservedSSO_{SIM_SSO_ROLE}_0123456789abcdef/sim-user");
    let issued = inner
        .credentials
        .issue_temporary_as(lifetime, Some((arn, format!("{SIM_ROLE_ID}:sim-user"))));
    inner.issued.fetch_add(1, Ordering::SeqCst);
    let expiration_ms = issued
        .expiration
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json_response(
        StatusCode::OK,
        &json!({
            "roleCredentials": {
                "accessKeyId": issued.access_key_id,
                "secretAccessKey": issued.secret_access_key,
                "sessionToken": issued.session_token,
                "expiration": expiration_ms,
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache file names the AWS SDK's own test of the path expects.
    #[test]
    fn cache_file_name_is_sha1_of_the_start_url() {
        assert_eq!(cache_file_stem("admin"), "d033e22ae348aeb5660fc2140aec35850c4da997");
        assert_eq!(cache_file_stem("dev-scopes"), "75e4d41276d8bd17f85986fc6cccef29fd725ce3");
    }
}
