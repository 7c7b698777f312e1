//! What every AWS client here shares, below the modules that call AWS ([`crate::auth`],
//! [`crate::tunnel::ssm`], [`crate::lookup`]): the one HTTP client, the SDK configuration
//! (loaded from the environment, or built from fixed credentials), the region lookup, and
//! where credentials come from ([`Credentials`]).

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};

/// Where credentials come from: the AWS chain (the product) or fixed ones (tests, demo).
#[derive(Clone)]
pub enum Credentials {
    /// aws-config's chain; `AWS_ENDPOINT_URL_SSM` and profiles apply.
    Chain,
    Fixed(aws_credential_types::Credentials),
    /// Fixed credentials and explicit endpoints (the simulator), no environment involved.
    FixedWith(AwsSetup),
}

/// Fixed credentials plus where the AWS services are (in-process tests, `demo`).
#[derive(Debug, Clone)]
pub struct AwsSetup {
    pub credentials: aws_credential_types::Credentials,
    /// The SSM API endpoint, e.g. the simulator's `http://127.0.0.1:PORT`.
    pub ssm_endpoint: Option<String>,
    /// The Secrets Manager endpoint, e.g. the simulator's `http://127.0.0.1:PORT`.
    pub secrets_endpoint: Option<String>,
    /// The STS endpoint (GetCallerIdentity), e.g. the simulator's `http://127.0.0.1:PORT`.
    pub sts_endpoint: Option<String>,
    /// The RDS API endpoint (DescribeDBInstances/Clusters), e.g. the simulator's.
    pub rds_endpoint: Option<String>,
    /// The Redshift API endpoint (GetClusterCredentials, DescribeClusters), e.g. the simulator's.
    pub redshift_endpoint: Option<String>,
    /// The Redshift Serverless API endpoint (GetCredentials, GetWorkgroup).
    pub redshift_serverless_endpoint: Option<String>,
    /// The Aurora DSQL control-plane endpoint (GetCluster).
    pub dsql_endpoint: Option<String>,
}

impl From<AwsSetup> for Credentials {
    fn from(setup: AwsSetup) -> Self {
        Credentials::FixedWith(setup)
    }
}

/// The HTTP client for every AWS call (SSO, STS, IMDS, SSM): rustls on ring, the one crypto
/// provider this binary uses.
pub fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::{tls, Builder};
    Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// Whether a credentials-provider failure (no credentials, an expired SSO session) is somewhere in the error's source chain.
pub fn has_credentials_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The SDK configuration of fixed credentials, with no environment lookups at all (tests, the
/// demo): every AWS client's `with_credentials` is its `from_sdk_config` of this.
pub fn fixed_sdk_config(
    credentials: aws_credential_types::Credentials,
    region: &str,
    endpoint: Option<&str>,
) -> SdkConfig {
    let mut builder = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(credentials))
        .http_client(http_client());
    if let Some(url) = endpoint {
        builder = builder.endpoint_url(url);
    }
    builder.build()
}

/// Loads the SDK configuration the normal way, honouring `--profile` and `--region`.
pub async fn load_sdk_config(profile: Option<&str>, region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client());
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    loader.load().await
}

/// The region from the AWS configuration, asked quietly: `AWS_REGION`/`AWS_DEFAULT_REGION`, the
/// profile, then — only on a machine that might be an EC2 instance — the instance metadata service
/// with one short attempt. A missing region is the caller's one clear message; the IMDS miss is a
/// debug line, not a warning (aws-config's own chain logs three and retries for seconds).
pub async fn configured_region(profile: Option<&str>) -> Option<String> {
    use aws_config::meta::region::ProvideRegion;
    use aws_config::provider_config::ProviderConfig;

    let conf = ProviderConfig::without_region().with_http_client(http_client());
    if let Some(region) = aws_config::environment::region::EnvironmentVariableRegionProvider::new()
        .region()
        .await
    {
        return Some(region.to_string());
    }
    let mut from_profile = aws_config::profile::region::Builder::default().configure(&conf);
    if let Some(profile) = profile {
        from_profile = from_profile.profile_name(profile);
    }
    if let Some(region) = from_profile.build().region().await {
        return Some(region.to_string());
    }
    if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        tracing::debug!("no region from the environment or profile; IMDS is disabled");
        return None;
    }
    let imds = aws_config::imds::Client::builder()
        .configure(&conf)
        .max_attempts(1)
        .connect_timeout(Duration::from_millis(500))
        .read_timeout(Duration::from_secs(1))
        .build();
    match imds.get("/latest/meta-data/placement/region").await {
        Ok(region) => {
            tracing::debug!(region = region.as_ref(), "region from the instance metadata service");
            Some(region.as_ref().to_owned())
        }
        Err(e) => {
            tracing::debug!(error = %e, "no region from the instance metadata service (not on EC2?)");
            None
        }
    }
}
