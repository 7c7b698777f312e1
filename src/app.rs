//! Wiring: turn a validated [`Config`] into a running proxy — AWS configuration and credentials,
//! TLS, the tunnel, the listeners — and run it until shutdown.

use std::future::Future;
use std::sync::Arc;

use crate::auth::{CredentialSource, CredentialsError, IamAuth};
use crate::config::{Config, ViaConfig};
use crate::listener::{ListenError, Listeners};
use crate::target::{Target, TargetContext};
use crate::tls::{self, TlsError};
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
}

/// Where credentials come from: the AWS chain (the product) or fixed ones (tests, demo).
pub enum Credentials {
    Chain,
    Fixed(aws_credential_types::Credentials),
}

/// Builds the shared context of the target from the config.
pub async fn build_context(
    config: &Config,
    credentials: Credentials,
) -> Result<Arc<TargetContext>, AppError> {
    let (region, source) = match credentials {
        Credentials::Chain => {
            let sdk = crate::auth::credentials::load_sdk_config(
                config.profile.as_deref(),
                config.region.as_deref(),
            )
            .await;
            let region = config
                .region
                .clone()
                .or_else(|| sdk.region().map(|r| r.to_string()))
                .ok_or(AppError::NoRegion)?;
            (region, CredentialSource::from_sdk_config(&sdk)?)
        }
        Credentials::Fixed(c) => (
            config.region.clone().ok_or(AppError::NoRegion)?,
            CredentialSource::fixed(c),
        ),
    };
    let tunnel = match &config.via {
        ViaConfig::Direct { connect_addr } => Tunnel::Direct(Direct::new(connect_addr.clone())),
    };
    Ok(Arc::new(TargetContext {
        target: Target {
            endpoint: config.endpoint.clone(),
            port: config.port,
            region,
        },
        tunnel,
        tls: tls::upstream_client_config(&config.ca_bundles)?,
        auth: Arc::new(IamAuth::new(source)),
        db_user: config.db_user.clone(),
        timeouts: config.timeouts,
    }))
}

/// A bound, ready proxy. Tests bind port 0 and read [`Proxy::local_addr`].
pub struct Proxy {
    pub listeners: Listeners,
    pub ctx: Arc<TargetContext>,
}

impl Proxy {
    pub async fn bind(config: &Config, credentials: Credentials) -> Result<Proxy, AppError> {
        let ctx = build_context(config, credentials).await?;
        let listeners = Listeners::bind(&config.listen).await?;
        Ok(Proxy { listeners, ctx })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listeners.local_addr()
    }

    /// Runs until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let t = &self.ctx.target;
        tracing::info!(
            listen = %self.listeners.local_addr(),
            unix_socket = ?self.listeners.unix_path(),
            target = %format!("{}:{}", t.endpoint, t.port),
            region = %t.region,
            via = %self.ctx.tunnel.describe(),
            "ready for connections"
        );
        self.listeners.run(self.ctx, shutdown).await;
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
    let sdk = crate::auth::credentials::load_sdk_config(args.profile.as_deref(), region_arg.as_deref()).await;
    let region = region_arg
        .or_else(|| sdk.region().map(|r| r.to_string()))
        .ok_or(AppError::NoRegion)?;
    let auth = IamAuth::new(CredentialSource::from_sdk_config(&sdk)?);
    let request = crate::auth::TokenRequest {
        endpoint,
        port: args.port,
        region,
        db_user: args.username.clone(),
    };
    Ok(auth.token(&request).await?)
}
