//! Wiring: turn a validated [`Config`] into a running proxy — AWS configuration and credentials,
//! TLS, the tunnel, the listeners — and run it until shutdown.

use std::future::Future;
use std::sync::{Arc, Weak};

use crate::auth::password::{PasswordError, PasswordProvider, PasswordSource, Passwords};
use crate::auth::secrets::SecretsApi;
use crate::auth::{CredentialSource, CredentialsError, IamAuth};
pub use crate::aws::{AwsSetup, Credentials};
use crate::config::{Config, PasswordConfig, ViaConfig};
use crate::listener::{ListenError, Listeners};
use crate::local_tls::{LocalTls, LocalTlsError};
use crate::target::{Target, TargetContext};
use crate::tls::{self, TlsError};
use crate::tunnel::ssm::api::SsmApi;
use crate::tunnel::ssm::websocket::{UpgradeSigner, WebSocketError, WsConnector};
use crate::tunnel::ssm::{SsmSettings, SsmTunnel};
use crate::tunnel::{direct::Direct, Tunnel};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no AWS region: pass --region, or set AWS_REGION or a region in your AWS profile")]
    NoRegion,
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot set up the SSM data channel client")]
    SsmSetup(#[from] WebSocketError),
    #[error("cannot set up --local-tls")]
    LocalTls(#[from] LocalTlsError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// A secret without a configured user could not be read at start to learn its `username`.
    #[error("cannot learn which database user the password secret is for (--password-user NAME names it without reading the secret at start)")]
    PasswordUser(#[source] PasswordError),
    #[error("two passwords for database user \"{0}\": give each user one password source")]
    TwoPasswordsForUser(String),
}

/// Builds the shared context of the target from the config, with metrics counted nowhere.
pub async fn build_context(
    config: &Config,
    credentials: Credentials,
) -> Result<Arc<TargetContext>, AppError> {
    build_context_with(config, credentials, &crate::metrics::Metrics::new()).await
}

/// Builds the shared context of the target, counting into `metrics` under the target's name.
pub async fn build_context_with(
    config: &Config,
    credentials: Credentials,
    metrics: &crate::metrics::Metrics,
) -> Result<Arc<TargetContext>, AppError> {
    let target_metrics = metrics.target(&config.name);
    metrics.describe_target(&config.name, config.engine.engine, &config.endpoint);
    // Where an SSM client would come from; it is only built for --via ssm.
    let (region, source, aws) = match credentials {
        Credentials::Chain => {
            let region = region_or_configured(config.region.clone(), config.profile.as_deref()).await?;
            let sdk = crate::aws::load_sdk_config(config.profile.as_deref(), Some(&region)).await;
            // One credentials cache for the tokens and every AWS client of every target with
            // this profile.
            let (source, sdk) = CredentialSource::process_shared(config.profile.as_deref(), &sdk)?;
            (region, source, AwsSource::Sdk(Box::new(sdk)))
        }
        Credentials::Fixed(credentials) => (
            config.region.clone().ok_or(AppError::NoRegion)?,
            CredentialSource::fixed(credentials.clone()),
            AwsSource::Fixed(Box::new(AwsSetup {
                credentials,
                ssm_endpoint: None,
                secrets_endpoint: None,
                sts_endpoint: None,
                rds_endpoint: None,
                redshift_endpoint: None,
                redshift_serverless_endpoint: None,
                dsql_endpoint: None,
            })),
        ),
        Credentials::FixedWith(setup) => (
            config.region.clone().ok_or(AppError::NoRegion)?,
            CredentialSource::fixed(setup.credentials.clone()),
            AwsSource::Fixed(Box::new(setup)),
        ),
    };
    let tunnel = match &config.via {
        ViaConfig::Direct { connect_addr } => Tunnel::Direct(Direct::new(connect_addr.clone(), config.timeouts.keepalive)),
        ViaConfig::Ssm(ssm) => Tunnel::Ssm(ssm_tunnel(config, ssm, &region, &aws, &target_metrics)?),
    };
    let passwords = config
        .passwords
        .iter()
        .map(|p| {
            let source = match &p.source {
                PasswordConfig::File(path) => PasswordSource::File(path.clone()),
                PasswordConfig::Secret { secret_id, key } => PasswordSource::Secret {
                    api: match &aws {
                        AwsSource::Sdk(sdk) => SecretsApi::from_sdk_config(sdk, &region),
                        AwsSource::Fixed(setup) => SecretsApi::with_credentials(
                            setup.credentials.clone(),
                            &region,
                            setup.secrets_endpoint.as_deref(),
                        ),
                    },
                    secret_id: secret_id.clone(),
                    key: key.clone(),
                },
            };
            Arc::new(PasswordProvider::new(source, p.user.clone()).counting_reads(target_metrics.password_reads.clone()))
        })
        .collect();
    let passwords = password_users(Passwords::new(passwords)).await?;
    let mut auth = IamAuth::new(source).with_metrics(target_metrics.auth.clone());
    // The principal ARN for audit lines; fixed credentials without an STS endpoint (tests)
    // never ask the real STS.
    let sts = match &aws {
        AwsSource::Sdk(sdk) => Some(crate::auth::identity::StsApi::from_sdk_config(sdk, &region)),
        AwsSource::Fixed(setup) => setup.sts_endpoint.as_deref().map(|endpoint| {
            crate::auth::identity::StsApi::with_credentials(setup.credentials.clone(), &region, Some(endpoint))
        }),
    };
    if let Some(sts) = sts {
        auth = auth.with_identity(sts);
    }
    if let Some(api) = temporary_api(config.engine.engine, &region, &aws) {
        auth = auth.with_temporary(api);
    }
    let spares = config.spares;
    let spare_metrics = target_metrics.spares.clone();
    let tls = upstream_tls(config)?;
    let local_tls = local_tls(config)?;
    // Spares open connections in background tasks, which reach the context they belong to weakly.
    Ok(Arc::new_cyclic(|ctx| TargetContext {
        spares: crate::spare::Spares::new(spares, Some(ctx.clone() as Weak<dyn crate::spare::SpareHost>), spare_metrics),
        target: Target {
            name: config.name.clone(),
            endpoint: config.endpoint.clone(),
            port: config.port,
            region,
            engine: config.engine.clone(),
        },
        tunnel,
        tls,
        auth: Arc::new(auth),
        passwords,
        iam_reloads: Arc::default(),
        db_user: config.db_user.clone(),
        timeouts: config.timeouts,
        dbi_resource_id: config.dbi_resource_id.clone(),
        local_tls,
        metrics: target_metrics,
        profile: config.profile.clone(),
        server: crate::upstream::ServerKnowledge::new(config.direct_tls),
        max_connection_age: config.max_connection_age,
    }))
}

/// Where a Redshift or Redshift Serverless target asks for temporary credentials.
fn temporary_api(engine: crate::engine::Engine, region: &str, aws: &AwsSource) -> Option<crate::auth::temporary::TemporaryApi> {
    use crate::auth::temporary::TemporaryApi;
    use crate::engine::Engine;
    use crate::redshift_api::RedshiftApi;
    use crate::redshift_serverless_api::RedshiftServerlessApi;
    Some(match (engine, aws) {
        (Engine::Redshift, AwsSource::Sdk(sdk)) => TemporaryApi::Redshift(RedshiftApi::from_sdk_config(sdk, region)),
        (Engine::Redshift, AwsSource::Fixed(setup)) => TemporaryApi::Redshift(RedshiftApi::with_credentials(
            setup.credentials.clone(),
            region,
            setup.redshift_endpoint.as_deref(),
        )),
        (Engine::RedshiftServerless, AwsSource::Sdk(sdk)) => {
            TemporaryApi::Serverless(RedshiftServerlessApi::from_sdk_config(sdk, region))
        }
        (Engine::RedshiftServerless, AwsSource::Fixed(setup)) => TemporaryApi::Serverless(
            RedshiftServerlessApi::with_credentials(setup.credentials.clone(), region, setup.redshift_serverless_endpoint.as_deref()),
        ),
        (Engine::Rds | Engine::Dsql, _) => return None,
    })
}

/// Learns the user of each secret configured without one (its `username`, read now, so a secret
/// that names nobody stops the start), and checks that no user has two password sources.
async fn password_users(passwords: Passwords) -> Result<Passwords, AppError> {
    for p in passwords.iter().filter(|p| p.user().is_none()) {
        p.get().await.map_err(AppError::PasswordUser)?;
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = passwords.iter().filter_map(|p| p.user()).find(|u| !seen.insert(u.clone())) {
        return Err(AppError::TwoPasswordsForUser(twice));
    }
    Ok(passwords)
}

/// The upstream TLS config, with one line saying which roots verify this endpoint name.
fn upstream_tls(config: &Config) -> Result<Arc<rustls::ClientConfig>, AppError> {
    let engine = config.engine.engine;
    let trust = tls::TrustStore::for_target(engine, &config.endpoint, &config.ca_bundles, &config.proxy_ca_bundles);
    let kind = tls::classify_endpoint(&config.endpoint);
    tracing::info!(target = %config.name, engine = engine.as_str(), endpoint_kind = kind.as_str(), trust = %trust.describe(), "upstream TLS verifies the endpoint name with these roots");
    if !tls::uses_amazon_trust_services(engine, &config.endpoint) && !config.proxy_ca_bundles.is_empty() {
        tracing::warn!(endpoint = %config.endpoint, "--proxy-ca-bundle has no effect: the endpoint is neither an RDS Proxy endpoint name (NAME.proxy-ID.REGION.rds.amazonaws.com) nor an Aurora DSQL or Redshift endpoint");
    }
    if engine.uses_amazon_trust_services() && !config.ca_bundles.is_empty() {
        tracing::warn!(endpoint = %config.endpoint, engine = engine.as_str(), "--ca-bundle has no effect: {} endpoints present Amazon Trust Services certificates (use --proxy-ca-bundle for other roots)", engine.product());
    }
    Ok(tls::upstream_client_config(&trust)?)
}

/// The listener's TLS for `--local-tls`, with one line saying which CA file clients trust.
fn local_tls(config: &Config) -> Result<Option<LocalTls>, AppError> {
    let Some(local) = &config.local_tls else {
        return Ok(None);
    };
    let tls = LocalTls::build(local, config.listen.address.ip(), config.listen.client_ca_file.as_deref())?;
    if let Some(ca) = &config.listen.client_ca_file {
        tracing::info!(client_ca = %ca.display(), "clients from other hosts may log in with a certificate from this CA whose CN is their user name");
    }
    match &tls.ca_cert {
        Some(ca) => tracing::info!(sslrootcert = %ca.display(), "local TLS on: clients may use sslmode=verify-full with this CA file as sslrootcert (host localhost, 127.0.0.1 or ::1)"),
        None => tracing::info!("local TLS on, with the certificate from --local-tls-cert"),
    }
    Ok(Some(tls))
}

/// `explicit` (from --region or the endpoint name), else the AWS configuration's, found quietly.
async fn region_or_configured(explicit: Option<String>, profile: Option<&str>) -> Result<String, AppError> {
    match explicit {
        Some(region) => Ok(region),
        None => crate::aws::configured_region(profile)
            .await
            .ok_or(AppError::NoRegion),
    }
}

/// The start-up check of the credential chain: one line saying where credentials come from
/// (never what they are), or what to do. Never fatal: `aws sso login` may come later, and the
/// next connection picks the credentials up without a restart.
pub async fn report_credentials(ctx: &TargetContext, profile: Option<&str>) {
    let named = profile;
    let profile = profile
        .map(str::to_owned)
        .or_else(|| std::env::var("AWS_PROFILE").ok())
        .unwrap_or_else(|| "default".to_owned());
    match ctx.auth.credentials().await {
        Ok(creds) => tracing::info!(
            source = %crate::auth::credentials::provider_name(&creds),
            %profile,
            expires = %creds.expiry().map_or("never".to_owned(), |e| crate::auth::credentials::humantime_lite::Rfc3339(e).to_string()),
            "AWS credentials found"
        ),
        Err(e) => {
            // The same fix a client gets: `aws sso login --profile X` for the profile in use.
            let fix = crate::auth::credentials::fix_for(&e, named);
            tracing::warn!(
                %profile,
                error = crate::errors::display_chain(&e),
                %fix,
                "no AWS credentials found yet, so logins will fail until there are; no restart needed once there are"
            );
        }
    }
}

/// What AWS clients are built from.
enum AwsSource {
    Sdk(Box<aws_config::SdkConfig>),
    Fixed(Box<AwsSetup>),
}

/// The `--via ssm` tunnel: SSM API client, WebSocket connector (optionally signing), pool.
fn ssm_tunnel(
    config: &Config,
    ssm: &crate::config::SsmConfig,
    region: &str,
    aws: &AwsSource,
    metrics: &crate::metrics::TargetMetrics,
) -> Result<SsmTunnel, AppError> {
    let (api, provider) = match aws {
        AwsSource::Sdk(sdk) => (
            SsmApi::from_sdk_config(sdk, region, None),
            sdk.credentials_provider(),
        ),
        AwsSource::Fixed(setup) => (
            SsmApi::with_credentials(setup.credentials.clone(), region, setup.ssm_endpoint.as_deref()),
            Some(aws_credential_types::provider::SharedCredentialsProvider::new(
                setup.credentials.clone(),
            )),
        ),
    };
    let signer = match provider {
        Some(credentials) if ssm.sign_websocket => Some(UpgradeSigner {
            credentials,
            region: region.to_owned(),
        }),
        _ => None,
    };
    let mut settings = SsmSettings::new(ssm.node.clone(), config.endpoint.clone(), config.port);
    settings.max_sessions = ssm.sessions;
    settings.idle_timeout = ssm.idle_timeout;
    settings.keepalive_interval = ssm.keepalive;
    settings.stall_timeout = ssm.stall_timeout;
    settings.data_channel.max_payload = ssm.max_payload;
    settings.data_channel.max_rate = ssm.max_rate;
    settings.prewarm = ssm.prewarm;
    settings.data_channel.counters = metrics.ssm.clone();
    Ok(SsmTunnel::new(
        settings,
        Arc::new(api),
        Arc::new(WsConnector::new(signer)?),
    ))
}

/// Longest wait, after the drain, for spare connections to send their Terminate before the
/// tunnel closes under them (they began at the start of the drain; a write into the tunnel is
/// quick). Short, so exit stays within `--drain-timeout` + 5 s; a background login still under
/// way is not waited for: the tunnel's shutdown ends it.
const SPARES_CLOSE_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Longest wait for the tunnel to close after the drain (SSM: flag, TerminateSession).
const TUNNEL_SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(4);

/// A bound, ready proxy. Tests bind port 0 and read [`Proxy::local_addr`].
pub struct Proxy {
    pub listeners: Listeners,
    pub ctx: Arc<TargetContext>,
    /// Health state and metrics of this process.
    pub ops: Arc<crate::http::Ops>,
    /// The bound `--http-address`/`--http-port` listener, if asked for.
    pub http: Option<tokio::net::TcpListener>,
}

impl Proxy {
    /// Binds the listeners first — a port in use is the most common start-up mistake, and it
    /// should not wait behind AWS configuration — then builds the target's context.
    pub async fn bind(config: &Config, credentials: Credentials) -> Result<Proxy, AppError> {
        let http = match config.http {
            Some(addr) => Some(crate::http::bind(addr).await?),
            None => None,
        };
        let listeners = Listeners::bind(&config.listen).await?;
        let ops = Arc::new(crate::http::Ops::new());
        let ctx = build_context_with(config, credentials, &ops.metrics).await?;
        ops.add_target(ctx.clone(), config.listen.max_connections);
        Ok(Proxy {
            listeners,
            ctx,
            ops,
            http,
        })
    }

    /// A proxy from parts built elsewhere (the demo), without an HTTP endpoint.
    pub fn from_parts(listeners: Listeners, ctx: Arc<TargetContext>) -> Proxy {
        let ops = Arc::new(crate::http::Ops::new());
        ops.add_target(ctx.clone(), 0);
        Proxy {
            listeners,
            ctx,
            ops,
            http: None,
        }
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listeners.local_addr()
    }

    /// Where health checks and metrics are served, if they are.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_with(shutdown, true).await;
    }

    /// Runs until `shutdown` resolves, then drains. `whole_process`: the shutdown is the
    /// process's, so readiness turns to "shutting down"; a target stopped by a reload
    /// ([`crate::reload`]) drains alone and leaves the others ready.
    pub async fn run_with(self, shutdown: impl Future<Output = ()>, whole_process: bool) {
        let t = &self.ctx.target;
        let http_addr = self.http_addr();
        let http = self
            .http
            .map(|listener| AbortOnDrop(tokio::spawn(crate::http::serve(listener, self.ops.clone()))));
        tracing::info!(
            name = %t.name,
            listen = %self.listeners.local_addr(),
            unix_socket = ?self.listeners.unix_path(),
            target = %format!("{}:{}", t.endpoint, t.port),
            region = %t.region,
            via = %self.ctx.tunnel.describe(),
            http = %http_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            "ready for connections"
        );
        self.ops.set_started();
        self.ctx.tunnel.start_prewarm();
        let ctx = self.ctx.clone();
        let ops = self.ops.clone();
        let spares = self.ctx.clone();
        let shutdown = async move {
            shutdown.await;
            if whole_process {
                ops.set_draining();
            }
            // No new client can use a spare now: close them while the open sessions drain.
            spares.spares.close();
        };
        self.listeners.run(self.ctx, shutdown).await;
        if tokio::time::timeout(SPARES_CLOSE_LIMIT, ctx.spares.closed()).await.is_err() {
            tracing::debug!("spare connections still closing; the tunnel's shutdown ends them");
        }
        // After the drain: no connection needs the tunnel any more (SSM: TerminateSession).
        // Bounded, so a half-open WebSocket cannot hold the exit up.
        if tokio::time::timeout(TUNNEL_SHUTDOWN_LIMIT, ctx.tunnel.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                limit_s = TUNNEL_SHUTDOWN_LIMIT.as_secs(),
                "the tunnel did not close in time; exiting anyway (sessions end at the service's idle timeout)"
            );
        }
        drop(http);
    }
}

/// Stops a background task when its owner is done with it.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `rds-auth-proxy token`: one token from the normal credential chain.
pub async fn print_token(
    args: &crate::cli::TokenArgs,
) -> Result<crate::auth::Token, Box<dyn std::error::Error + Send + Sync>> {
    let (endpoint, _) = crate::config::parse_target(&args.hostname)?;
    let region_arg = args
        .region
        .clone()
        .or_else(|| crate::config::infer_region(&endpoint));
    let region = region_or_configured(region_arg, args.profile.as_deref()).await?;
    let sdk = crate::aws::load_sdk_config(args.profile.as_deref(), Some(&region)).await;
    let auth = IamAuth::new(CredentialSource::from_sdk_config(&sdk)?);
    let request = crate::auth::TokenRequest {
        endpoint,
        port: args.port,
        region,
        db_user: args.username.clone(),
        kind: crate::auth::token::TokenKind::Rds,
    };
    Ok(auth.token(&request).await?)
}
