//! `rds-auth-proxy doctor`: the whole chain checked once, in order, with the same flags as the
//! proxy — credentials and who they belong to (STS GetCallerIdentity), the region, the name
//! lookups, (SSM) the node and StartSession, the node reaching host:port, TLS verify-full for
//! the endpoint name, the IAM login, and `select 1` with the server version. One line per step
//! with its time; a failed step says its cause and its fix, and the steps after it are skipped.
//! Exit code 0 only when every step passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::aws::{AwsSetup, Credentials};
use crate::cli::{ProxyArgs, Via};
use crate::config::Config;
use crate::lookup::{self, ApiSource};
use crate::pg::backend;
use crate::pg::startup::{encode_startup, parse_first_packet, FirstPacket, SSL_REQUEST};
use crate::pg::UserFacing;
use crate::target::TargetContext;
use crate::upstream::{self, UpstreamError};

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    Failed { cause: String, fix: String },
    Skipped,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    pub outcome: Outcome,
    pub took: Duration,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = format!("{:.2}s", self.took.as_secs_f64());
        match &self.outcome {
            Outcome::Ok(detail) => write!(f, "[ ok ] {:<14} {secs:>7}  {detail}", self.name),
            Outcome::Failed { cause, fix } => write!(
                f,
                "[FAIL] {:<14} {secs:>7}  {cause}\n       fix: {fix}",
                self.name
            ),
            Outcome::Skipped => write!(f, "[skip] {:<14} {:>7}  (an earlier step failed)", self.name, "-"),
        }
    }
}

/// The report of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub steps: Vec<Step>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.steps.iter().all(|s| matches!(s.outcome, Outcome::Ok(_)))
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

type StepResult = Result<String, (String, String)>;

// doctor's own fixes (the other steps report the proxy's HINTs). Named `FIX_*` and `*_fix` so
// tests/readme.rs finds them and checks that docs/troubleshooting.md lists each.
const FIX_NO_REGION: &str = "Pass --region, or set AWS_REGION or a region in your AWS profile.";
const FIX_FLAG: &str = "Fix the flag and run doctor again.";
const FIX_CONFIG: &str = "Fix the configuration and run doctor again.";
const FIX_NODE_OFFLINE: &str = "Start the instance or its SSM Agent and check that its instance profile allows \
     Session Manager, or pick another node (--ssm-target auto --ssm-tag KEY=VALUE).";
const FIX_NO_NODE: &str = "Check --ssm-target and --region (`aws ssm describe-instance-information`).";
const FIX_QUERY_IO: &str = "Retry the check; if it fails again, look in the server log.";
const FIX_QUERY_SLOW: &str = "The server is slow to answer: check its load and retry.";
const FIX_QUERY_REFUSED: &str = "The login worked but the query was refused: check the database user's privileges.";
const FIX_QUERY_NO_ROW: &str = "The server answered select 1 without a row: check that it is PostgreSQL.";

fn region_fix(named: &str) -> String {
    format!("Use --region {named} (or drop --region: the endpoint name gives it).")
}

/// Runs the steps in order, printing each line as it completes (`print`).
pub async fn run(
    args: &ProxyArgs,
    database: Option<&str>,
    credentials: Credentials,
    mut print: impl FnMut(&Step),
) -> Report {
    let mut report = Report::default();
    let mut failed = false;
    let mut push = |report: &mut Report, failed: &mut bool, name: &'static str, started: Option<Instant>, result: Option<StepResult>| {
        let outcome = match result {
            None => Outcome::Skipped,
            Some(Ok(detail)) => Outcome::Ok(detail),
            Some(Err((cause, fix))) => {
                *failed = true;
                Outcome::Failed { cause, fix }
            }
        };
        let step = Step {
            name,
            outcome,
            took: started.map(|s| s.elapsed()).unwrap_or_default(),
        };
        print(&step);
        report.steps.push(step);
    };
    let names = ["credentials", "region", "database", "ssm node", "reach", "tls", "iam login", "select 1"];
    let mut args = args.clone();

    // 1. Credentials and who they belong to. The region for the STS call is the configured one
    //    (any region's STS answers).
    let t = Instant::now();
    let region = lookup::lookup_region(&args, &credentials).await.ok().or_else(|| {
        args.target
            .as_deref()
            .and_then(|t| crate::config::parse_target(t).ok())
            .and_then(|(e, _)| crate::config::infer_region(&e))
    });
    let sdk = match &credentials {
        Credentials::Chain => Some(crate::auth::credentials::load_shared_sdk_config(args.profile.as_deref(), region.as_deref()).await),
        _ => None,
    };
    let setup = fixed_setup(&credentials);
    let source = match (&sdk, &setup) {
        (Some(sdk), _) => ApiSource::Sdk(sdk),
        (None, Some(setup)) => ApiSource::Fixed(setup),
        (None, None) => unreachable_source(),
    };
    let result = credentials_step(&source, sdk.as_ref(), setup.as_ref(), region.as_deref().unwrap_or("us-east-1"), args.profile.as_deref()).await;
    push(&mut report, &mut failed, names[0], Some(t), Some(result));

    // 2. The region: known, and the one in the endpoint's name when it has one.
    let mut region_ok = None;
    if !failed {
        let t = Instant::now();
        let result = match &region {
            None => Err((
                "no AWS region".to_owned(),
                FIX_NO_REGION.to_owned(),
            )),
            Some(r) => {
                let named = args
                    .target
                    .as_deref()
                    .and_then(|t| crate::config::parse_target(t).ok())
                    .and_then(|(e, _)| crate::config::infer_region(&e));
                match named {
                    Some(n) if &n != r => Err((
                        format!("the endpoint's name is in {n}, but the region in use is {r}"),
                        region_fix(&n),
                    )),
                    _ => {
                        region_ok = Some(r.clone());
                        Ok(format!("{r}{}", if args.region.is_some() { " (--region)" } else { "" }))
                    }
                }
            }
        };
        push(&mut report, &mut failed, names[1], Some(t), Some(result));
    } else {
        push(&mut report, &mut failed, names[1], None, None);
    }

    // 3. Name lookups (--db-instance/--db-cluster, --ssm-target auto).
    let mut resource_id = None;
    if !failed {
        let region = region_ok.clone().unwrap_or_default();
        if lookup::needs_lookup(&args) {
            let t = Instant::now();
            let result = match lookup::resolve_names(&mut args, &source, &region).await {
                Ok(found) => {
                    let mut parts = Vec::new();
                    if let Some(db) = &found.db {
                        resource_id = db.description.resource_id.clone();
                        parts.push(format!(
                            "{}:{} ({}, {}, IAM authentication on{})",
                            db.endpoint,
                            db.port,
                            db.description.engine,
                            db.description.status,
                            db.description.resource_id.as_deref().map(|r| format!(", {r}")).unwrap_or_default()
                        ));
                    }
                    if let Some(node) = &found.node {
                        parts.push(format!("node {node}"));
                    }
                    Ok(parts.join("; "))
                }
                Err(e) => Err((e.to_string(), e.hint())),
            };
            push(&mut report, &mut failed, names[2], Some(t), Some(result));
        } else {
            push(&mut report, &mut failed, names[2], Some(Instant::now()), Some(Ok("--target given, no lookup".into())));
        }
    } else {
        push(&mut report, &mut failed, names[2], None, None);
    }

    // Everything after needs the proxy's own context.
    let ctx = if failed {
        None
    } else {
        match Config::from_args(&args) {
            Err(e) => {
                push(&mut report, &mut failed, names[3], Some(Instant::now()), Some(Err((e.to_string(), FIX_FLAG.into()))));
                None
            }
            Ok(config) => {
                let creds = match &credentials {
                    Credentials::Chain => Credentials::Chain,
                    Credentials::Fixed(c) => Credentials::Fixed(c.clone()),
                    Credentials::FixedWith(s) => Credentials::FixedWith(s.clone()),
                };
                let mut config = config;
                config.dbi_resource_id = resource_id.clone();
                if config.region.is_none() {
                    config.region = region_ok.clone();
                }
                match crate::app::build_context(&config, creds).await {
                    Ok(ctx) => Some((ctx, config)),
                    Err(e) => {
                        push(&mut report, &mut failed, names[3], Some(Instant::now()), Some(Err((crate::errors::display_chain(&e), FIX_CONFIG.into()))));
                        None
                    }
                }
            }
        }
    };
    let Some((ctx, config)) = ctx else {
        for name in &names[report.steps.len()..] {
            push(&mut report, &mut failed, name, None, None);
        }
        return report;
    };

    // 4. (ssm) The node is online and StartSession is allowed: the first tunnel stream opens.
    let t = Instant::now();
    let mut raw = None;
    if args.via == Via::Ssm {
        let node = args.ssm_target.clone().unwrap_or_default();
        let api = source.ssm(&ctx.target.region);
        let online = match api.describe_nodes(&[("InstanceIds".to_owned(), vec![node.clone()])]).await {
            Ok(nodes) => match nodes.first() {
                Some(n) if n.ping_status == "Online" => Ok(()),
                Some(n) => Err((
                    format!("managed node {node} is {} (not Online)", n.ping_status),
                    FIX_NODE_OFFLINE.to_owned(),
                )),
                None => Err((
                    format!("no managed node {node} in {}", ctx.target.region),
                    FIX_NO_NODE.into(),
                )),
            },
            Err(e) => Err((e.to_string(), e.hint())),
        };
        let opened = match online {
            Err(e) => Err(e),
            Ok(()) => ctx.tunnel.open().await.map_err(|e| {
                let e = upstream::tunnel_error(&*ctx, e);
                (crate::errors::display_chain(&e), e.hint().unwrap_or_default())
            }),
        };
        match opened {
            Ok(stream) => {
                raw = Some(stream);
                push(&mut report, &mut failed, names[3], Some(t), Some(Ok(format!("{node} online, StartSession allowed"))));
            }
            Err(e) => push(&mut report, &mut failed, names[3], Some(t), Some(Err(e))),
        }
    } else {
        push(&mut report, &mut failed, names[3], Some(t), Some(Ok("--via direct, no node".into())));
    }

    // 5. The port answers: SSLRequest → 'S' (through the node for ssm).
    let t = Instant::now();
    let reached = if failed {
        None
    } else {
        let stream = match raw {
            Some(s) => Ok(s),
            None => ctx.tunnel.open().await.map_err(|e| upstream::tunnel_error(&*ctx, e)),
        };
        Some(match stream {
            Err(e) => Err((crate::errors::display_chain(&e), e.hint().unwrap_or_default())),
            Ok(mut s) => match ssl_request(&mut s).await {
                Ok(b'S') => Ok(s),
                Ok(_) => {
                    let e = UpstreamError::TlsRefused { endpoint: ctx.target.endpoint.clone() };
                    Err((e.to_string(), e.hint().unwrap_or_default()))
                }
                Err(e) => {
                    let e = match crate::tunnel::TunnelError::from_stream_error(&e) {
                        Some(t) => upstream::tunnel_error(&*ctx, t),
                        None => UpstreamError::Io(e),
                    };
                    Err((crate::errors::display_chain(&e), e.hint().unwrap_or_default()))
                }
            },
        })
    };
    let reach_detail = format!("{}:{} answers ({})", ctx.target.endpoint, ctx.target.port, ctx.tunnel.describe());
    let tls_input = match reached {
        None => {
            push(&mut report, &mut failed, names[4], None, None);
            None
        }
        Some(Ok(s)) => {
            push(&mut report, &mut failed, names[4], Some(t), Some(Ok(reach_detail)));
            Some(s)
        }
        Some(Err(e)) => {
            push(&mut report, &mut failed, names[4], Some(t), Some(Err(e)));
            None
        }
    };

    // 6. TLS verify-full for the endpoint name.
    match tls_input {
        None => push(&mut report, &mut failed, names[5], None, None),
        Some(s) => {
            let t = Instant::now();
            let result = match tls_handshake(&ctx, s).await {
                Ok(version) => Ok(format!("certificate valid for {} ({version})", ctx.target.endpoint)),
                Err(e) => Err((crate::errors::display_chain(&e), e.hint().unwrap_or_default())),
            };
            push(&mut report, &mut failed, names[5], Some(t), Some(result));
        }
    }

    // 7. The IAM login, and 8. a query.
    let user = config.db_user.clone().unwrap_or_default();
    let engine = config.engine.engine;
    let database = database.unwrap_or(engine.default_database());
    if failed {
        push(&mut report, &mut failed, names[6], None, None);
        push(&mut report, &mut failed, names[7], None, None);
    } else {
        let t = Instant::now();
        let startup = startup_message(&user, database);
        match upstream::connect(&*ctx, &startup).await {
            Err(e) => {
                let client = e.to_client_error();
                let fix = login_fix(&e, &ctx, &user, resource_id.as_deref()).or(client.hint).unwrap_or_default();
                push(&mut report, &mut failed, names[6], Some(t), Some(Err((client.message, fix))));
                push(&mut report, &mut failed, names[7], None, None);
            }
            Ok(mut up) => {
                let how = match (ctx.passwords.known(&user).is_some(), engine) {
                    (true, _) => "with the configured password".to_owned(),
                    (false, crate::engine::Engine::Rds) => "with an IAM token".to_owned(),
                    (false, crate::engine::Engine::Dsql) => "with an Aurora DSQL token".to_owned(),
                    (false, _) => format!(
                        "with temporary credentials, as {}",
                        up.login_user.as_deref().unwrap_or(&user)
                    ),
                };
                push(&mut report, &mut failed, names[6], Some(t), Some(Ok(format!("{user}@{database} ({}) {how}", engine.product()))));
                let t = Instant::now();
                let result = select_one(&mut up.stream).await;
                push(&mut report, &mut failed, names[7], Some(t), Some(result));
            }
        }
    }
    ctx.tunnel.shutdown().await;
    report
}

/// A dummy that is never used: `run` always has one of the two sources.
fn unreachable_source() -> ApiSource<'static> {
    static EMPTY: std::sync::OnceLock<AwsSetup> = std::sync::OnceLock::new();
    ApiSource::Fixed(EMPTY.get_or_init(|| AwsSetup {
        credentials: aws_credential_types::Credentials::from_keys("", "", None),
        ssm_endpoint: None,
        secrets_endpoint: None,
        sts_endpoint: None,
        rds_endpoint: None,
        redshift_endpoint: None,
        redshift_serverless_endpoint: None,
        dsql_endpoint: None,
    }))
}

fn fixed_setup(credentials: &Credentials) -> Option<AwsSetup> {
    match credentials {
        Credentials::Chain => None,
        Credentials::Fixed(c) => Some(AwsSetup {
            credentials: c.clone(),
            ssm_endpoint: None,
            secrets_endpoint: None,
            sts_endpoint: None,
            rds_endpoint: None,
            redshift_endpoint: None,
            redshift_serverless_endpoint: None,
            dsql_endpoint: None,
        }),
        Credentials::FixedWith(s) => Some(s.clone()),
    }
}

async fn credentials_step(
    source: &ApiSource<'_>,
    sdk: Option<&aws_config::SdkConfig>,
    setup: Option<&AwsSetup>,
    region: &str,
    profile: Option<&str>,
) -> StepResult {
    let provider = match (sdk, setup) {
        (Some(sdk), _) => match crate::auth::CredentialSource::from_sdk_config(sdk) {
            Ok(source) => match source.get().await {
                Ok(c) => crate::auth::credentials::provider_name(&c),
                Err(e) => return Err((crate::errors::display_chain(&e), crate::auth::credentials::fix_for(&e, profile))),
            },
            Err(e) => return Err((e.to_string(), crate::auth::credentials::fix_for(&e, profile))),
        },
        (None, Some(_)) => "fixed".to_owned(),
        (None, None) => "none".to_owned(),
    };
    match source.sts(region).caller_identity().await {
        Ok(who) => Ok(format!("{provider}: {} (account {})", who.arn, who.account)),
        Err(e) => Err((format!("sts:GetCallerIdentity: {}", crate::errors::display_chain(&e)), e.hint())),
    }
}

/// A better fix than the generic one for a refused IAM login: the `rds-db:connect` ARN.
fn login_fix(e: &UpstreamError, ctx: &TargetContext, user: &str, resource_id: Option<&str>) -> Option<String> {
    match e {
        UpstreamError::Rejected { password_from: None, after_authentication: false, message, .. }
            if message.contains("PAM authentication failed") =>
        {
            Some(upstream::rds_db_connect_hint(&ctx.target.region, user, resource_id.or(ctx.dbi_resource_id.as_deref())))
        }
        _ => None,
    }
}

fn startup_message(user: &str, database: &str) -> crate::pg::startup::StartupMessage {
    let raw = encode_startup(
        3,
        0,
        &[
            ("user".to_owned(), user.to_owned()),
            ("database".to_owned(), database.to_owned()),
            ("application_name".to_owned(), "rds-auth-proxy doctor".to_owned()),
        ],
    );
    match parse_first_packet(raw) {
        Ok(FirstPacket::Startup(s)) => s,
        // Our own well-formed packet always parses as a StartupMessage.
        _ => unreachable_startup(),
    }
}

#[allow(clippy::panic)]
fn unreachable_startup() -> crate::pg::startup::StartupMessage {
    panic!("encode_startup produced a packet parse_first_packet does not accept")
}

async fn ssl_request(s: &mut crate::tunnel::TunnelStream) -> std::io::Result<u8> {
    s.write_all(&SSL_REQUEST).await?;
    s.flush().await?;
    let mut answer = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(20), s.read(&mut answer)).await {
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to SSLRequest within 20 s")),
        Ok(Ok(0)) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the port closed the connection without answering")),
        Ok(Ok(_)) => Ok(answer[0]),
        Ok(Err(e)) => Err(e),
    }
}

async fn tls_handshake(ctx: &Arc<TargetContext>, raw: crate::tunnel::TunnelStream) -> Result<String, UpstreamError> {
    let endpoint = ctx.target.endpoint.clone();
    let name = ServerName::try_from(endpoint.clone()).map_err(|_| UpstreamError::Tls {
        endpoint: endpoint.clone(),
        source: std::io::Error::other("the endpoint is not a valid DNS name"),
    })?;
    let tls = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_rustls::TlsConnector::from(ctx.tls.clone()).connect(name, raw),
    )
    .await
    .map_err(|_| UpstreamError::Timeout { phase: "negotiating TLS", secs: 20 })?
    .map_err(|source| UpstreamError::Tls { endpoint, source })?;
    Ok(tls
        .get_ref()
        .1
        .protocol_version()
        .map(|v| format!("{v:?}").replace('_', "."))
        .unwrap_or_else(|| "TLS".into()))
}

/// `select 1, version()` over the simple query protocol: the row, or the server's error.
async fn select_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) -> StepResult {
    let sql = b"select 1, version()\0";
    let mut q = BytesMut::with_capacity(sql.len() + 5);
    q.put_u8(b'Q');
    q.put_u32((sql.len() + 4) as u32);
    q.put_slice(sql);
    let io = |e: std::io::Error| (format!("the connection failed during the query: {e}"), FIX_QUERY_IO.to_owned());
    s.write_all(&q).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let mut buf = BytesMut::new();
    let mut version = None;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), backend::read_message(s, &mut buf, 1 << 20))
            .await
            .map_err(|_| ("no answer to select 1 within 20 s".to_owned(), FIX_QUERY_SLOW.to_owned()))?
            .map_err(|e| (format!("reading the answer failed: {e}"), FIX_QUERY_IO.to_owned()))?;
        match msg.tag() {
            b'D' => version = data_row_column(msg.body(), 1),
            b'E' => {
                let text = backend::parse_error_fields(msg.body())
                    .ok()
                    .map(|e| backend::error_field(&e, b'M').unwrap_or_default().to_owned())
                    .unwrap_or_default();
                return Err((format!("select 1 failed: {text}"), FIX_QUERY_REFUSED.into()));
            }
            b'Z' => break,
            _ => {}
        }
    }
    match version {
        Some(v) => Ok(v),
        None => Err(("select 1 returned no row".into(), FIX_QUERY_NO_ROW.into())),
    }
}

/// Column `index` of a DataRow as text.
fn data_row_column(body: &[u8], index: usize) -> Option<String> {
    let count = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let mut at = 2;
    for i in 0..count {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            if i == index {
                return None;
            }
            continue;
        }
        let end = at + len as usize;
        if i == index {
            return String::from_utf8(body.get(at..end)?.to_vec()).ok();
        }
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_row_columns() {
        let body = b"\x00\x02\x00\x00\x00\x011\x00\x00\x00\x05PG 16";
        assert_eq!(data_row_column(body, 0).as_deref(), Some("1"));
        assert_eq!(data_row_column(body, 1).as_deref(), Some("PG 16"));
        assert_eq!(data_row_column(body, 2), None);
        assert_eq!(data_row_column(b"\x00", 0), None);
    }

    #[test]
    fn lines() {
        let ok = Step { name: "region", outcome: Outcome::Ok("eu-central-1".into()), took: Duration::from_millis(20) };
        assert_eq!(ok.to_string(), "[ ok ] region           0.02s  eu-central-1");
        let fail = Step {
            name: "tls",
            outcome: Outcome::Failed { cause: "bad".into(), fix: "do x".into() },
            took: Duration::from_millis(1500),
        };
        assert_eq!(fail.to_string(), "[FAIL] tls              1.50s  bad\n       fix: do x");
    }
}
