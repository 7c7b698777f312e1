//! AWS credentials for signing: the aws-config default chain (env, profile, SSO, assume-role,
//! credential_process, IMDS) loaded once, kept, and re-read when they near expiry or when a login
//! failure suggests they went stale. One [`CredentialSource`] is the one cache of a target: the
//! IAM tokens and every AWS client (STS, Secrets Manager, SSM, RDS API) take their credentials
//! from it ([`CredentialSource::shared_with`]), so SSO's GetRoleCredentials is called once per
//! renewal, not once per client.

use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use tokio::sync::Mutex;

/// Credentials this close to expiry are re-read before use, so a token is never signed with
/// credentials that die while it is in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// [`crate::aws::load_sdk_config`] with the process's one credentials cache for the profile (see
/// [`CredentialSource::process_shared`]); unchanged when it has no credentials provider at all.
pub async fn load_shared_sdk_config(profile: Option<&str>, region: Option<&str>) -> SdkConfig {
    let sdk = crate::aws::load_sdk_config(profile, region).await;
    match CredentialSource::process_shared(profile, &sdk) {
        Ok((_, shared)) => shared,
        Err(_) => sdk,
    }
}

/// The name of the provider that produced `creds` ("Environment", "ProfileFile", "SSO",
/// "CredentialProcess", "IMDSv2", …). aws-credential-types only shows it through `Debug`, whose
/// other fields (the access key id) are never logged.
pub fn provider_name(creds: &Credentials) -> String {
    let debug = format!("{creds:?}");
    debug
        .split_once("provider_name: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(name, _)| name.to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The fix for a credentials failure: the exact `aws sso login --profile X` when it is an
/// IAM Identity Center (SSO) session that expired or never started, else the general advice.
pub fn fix_for(err: &(dyn std::error::Error + 'static), profile: Option<&str>) -> String {
    let login = match profile
        .map(str::to_owned)
        .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()))
    {
        Some(profile) => format!("`aws sso login --profile {profile}`"),
        None => "`aws sso login` (with --profile NAME for a named profile)".to_owned(),
    };
    let chain = crate::errors::display_chain(err).to_ascii_lowercase();
    if sso_session_expired(err) || chain.contains("sso") {
        format!("Your IAM Identity Center (SSO) session has expired or was never started: run {login}, then retry (no restart needed).")
    } else {
        format!(
            "Provide AWS credentials: {login} for IAM Identity Center, or set AWS_PROFILE, or \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        )
    }
}

/// Whether IAM Identity Center refused the portal session: GetRoleCredentials answered 401
/// `UnauthorizedException` ("Session token not found or invalid": `aws sso login` expired, or
/// the `sso_session` token could not be refreshed). The error text does not say "SSO".
fn sso_session_expired(err: &(dyn std::error::Error + 'static)) -> bool {
    use aws_sdk_sso::operation::get_role_credentials::GetRoleCredentialsError;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<GetRoleCredentialsError>()
            .is_some_and(GetRoleCredentialsError::is_unauthorized_exception)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("no AWS credentials provider is configured")]
    NoProvider,
    #[error("could not load AWS credentials")]
    Load(#[source] aws_credential_types::provider::error::CredentialsError),
    #[error("the AWS credentials expired at {0} and no fresh ones could be loaded")]
    Expired(humantime_lite::Rfc3339),
}

/// A credentials provider with one cached value. Clones share the value: hand a clone to every
/// AWS client ([`CredentialSource::shared_with`]) and there is one cache for all of them.
#[derive(Clone)]
pub struct CredentialSource {
    shared: std::sync::Arc<Shared>,
}

struct Shared {
    provider: SharedCredentialsProvider,
    current: Mutex<Option<Credentials>>,
    /// Successful loads, for `/metrics`: the counter of each target that uses this source.
    loads: std::sync::Mutex<Vec<prometheus_client::metrics::counter::Counter>>,
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSource").finish_non_exhaustive()
    }
}

impl CredentialSource {
    pub fn new(provider: SharedCredentialsProvider) -> Self {
        CredentialSource {
            shared: std::sync::Arc::new(Shared {
                provider,
                current: Mutex::new(None),
                loads: Default::default(),
            }),
        }
    }

    /// Counts every successful load into `counter` too (each target that shares the source
    /// counts the loads of the credentials it uses).
    pub fn count_loads(&mut self, counter: prometheus_client::metrics::counter::Counter) {
        let mut loads = self.shared.loads.lock().unwrap_or_else(|p| p.into_inner());
        // A target rebuilt by a reload brings its same counter again.
        if !loads.iter().any(|c| std::ptr::eq(c.inner(), counter.inner())) {
            loads.push(counter);
        }
    }

    /// From a loaded SDK config; fails when the config has no provider at all.
    pub fn from_sdk_config(config: &SdkConfig) -> Result<Self, CredentialsError> {
        config
            .credentials_provider()
            .map(Self::new)
            .ok_or(CredentialsError::NoProvider)
    }

    /// The source for `config`'s credentials, and `config` changed so that every client built
    /// from it takes its credentials from that source (no cache of its own): one load serves
    /// the IAM tokens and every AWS call, and a reload after a failed login reaches them all.
    pub fn shared_with(config: &SdkConfig) -> Result<(Self, SdkConfig), CredentialsError> {
        Self::from_sdk_config(config).map(|source| source.serving(config))
    }

    /// [`CredentialSource::shared_with`] for the AWS configuration's `profile` (`None`: the
    /// default chain), with one source per profile for the whole process: a config file's
    /// targets with the same profile, the start-up lookups and every AWS client share one cache
    /// (one GetRoleCredentials per renewal for an SSO profile, however many targets use it).
    pub fn process_shared(
        profile: Option<&str>,
        config: &SdkConfig,
    ) -> Result<(Self, SdkConfig), CredentialsError> {
        type Registry = std::sync::Mutex<std::collections::HashMap<Option<String>, CredentialSource>>;
        static SOURCES: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
        let mut sources = SOURCES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let source = match sources.get(&profile.map(str::to_owned)) {
            Some(source) => source.clone(),
            None => {
                let source = Self::from_sdk_config(config)?;
                sources.insert(profile.map(str::to_owned), source.clone());
                source
            }
        };
        Ok(source.serving(config))
    }

    /// This source and `config` changed to take its credentials from it, with no cache of its
    /// own.
    fn serving(self, config: &SdkConfig) -> (Self, SdkConfig) {
        let config = config
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(self.clone()))
            .identity_cache(aws_config::identity::IdentityCache::no_cache())
            .build();
        (self, config)
    }

    /// Fixed credentials (tests, the simulator's demo).
    pub fn fixed(credentials: Credentials) -> Self {
        Self::new(SharedCredentialsProvider::new(credentials))
    }

    /// The cached credentials, re-read first when absent or close to expiry.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        let mut current = self.shared.current.lock().await;
        if let Some(creds) = current.as_ref() {
            let fresh = creds
                .expiry()
                .is_none_or(|exp| SystemTime::now() + EXPIRY_MARGIN < exp);
            if fresh {
                return Ok(creds.clone());
            }
        }
        let creds = self.load().await?;
        *current = Some(creds.clone());
        Ok(creds)
    }

    /// Drops the cached credentials and loads them again (after an IAM login failure).
    pub async fn reload(&self) -> Result<Credentials, CredentialsError> {
        let mut current = self.shared.current.lock().await;
        let creds = self.load().await?;
        *current = Some(creds.clone());
        Ok(creds)
    }

    async fn load(&self) -> Result<Credentials, CredentialsError> {
        let creds = self
            .shared
            .provider
            .provide_credentials()
            .await
            .map_err(CredentialsError::Load)?;
        if let Some(exp) = creds.expiry() {
            if exp <= SystemTime::now() {
                return Err(CredentialsError::Expired(humantime_lite::Rfc3339(exp)));
            }
        }
        for counter in self.shared.loads.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            counter.inc();
        }
        tracing::debug!(
            access_key_id = %mask_key_id(creds.access_key_id()),
            expires = ?creds.expiry().map(humantime_lite::Rfc3339),
            "loaded AWS credentials"
        );
        Ok(creds)
    }
}

/// What the AWS clients see: the cached credentials, loaded (once, for all) when needed.
impl ProvideCredentials for CredentialSource {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        use aws_credential_types::provider::error::CredentialsError as SdkCredentialsError;
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            self.get().await.map_err(|e| match e {
                // The chain's own error, not wrapped once more.
                CredentialsError::Load(e) => e,
                other => SdkCredentialsError::provider_error(other),
            })
        })
    }
}

/// An access key id shortened to its first four and last four characters: enough to tell which
/// identity signed, too little to use.
pub fn mask_key_id(id: &str) -> String {
    if id.len() > 12 && id.is_ascii() {
        format!("{}…{}", &id[..4], &id[id.len() - 4..])
    } else {
        "…".to_owned()
    }
}

/// RFC 3339 formatting of a `SystemTime` (shared with the simulator).
pub use rds_auth_proxy_protocol::time as humantime_lite;

#[cfg(test)]
mod tests {
    use super::*;

    /// One source per profile for the whole process: the second target (or client) of a
    /// profile gets the first one's cache, and each counts the loads of the credentials it uses
    /// (once, however often it is rebuilt by a reload); another profile has its own.
    #[tokio::test]
    async fn one_source_per_profile_for_the_process() {
        let sdk = SdkConfig::builder()
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIAEXAMPLEEXAMPLE",
                "s",
                None,
                None,
                "test",
            )))
            .build();
        let profile = "unit-test-one-source-per-profile";
        let (mut a, _) = CredentialSource::process_shared(Some(profile), &sdk).unwrap();
        let (mut b, _) = CredentialSource::process_shared(Some(profile), &sdk).unwrap();
        let (other, _) = CredentialSource::process_shared(Some("unit-test-another-profile"), &sdk).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a.shared, &b.shared));
        assert!(!std::sync::Arc::ptr_eq(&a.shared, &other.shared));
        use prometheus_client::metrics::counter::Counter;
        let (count_a, count_b) = (Counter::<u64>::default(), Counter::<u64>::default());
        a.count_loads(count_a.clone());
        a.count_loads(count_a.clone());
        b.count_loads(count_b.clone());
        a.get().await.unwrap();
        b.get().await.unwrap();
        assert_eq!((count_a.get(), count_b.get()), (1, 1), "one load, counted once for each");
    }

    #[tokio::test]
    async fn expired_credentials_are_refused() {
        let creds = Credentials::new(
            "AKIAEXAMPLEEXAMPLE",
            "s",
            None,
            Some(SystemTime::now() - Duration::from_secs(5)),
            "test",
        );
        let err = CredentialSource::fixed(creds).get().await.unwrap_err();
        assert!(matches!(err, CredentialsError::Expired(_)));
    }

    #[tokio::test]
    async fn caches_until_reload() {
        let creds = Credentials::from_keys("AKIAEXAMPLEEXAMPLE", "s", None);
        let src = CredentialSource::fixed(creds);
        assert_eq!(src.get().await.unwrap().access_key_id(), "AKIAEXAMPLEEXAMPLE");
        assert_eq!(src.reload().await.unwrap().access_key_id(), "AKIAEXAMPLEEXAMPLE");
    }

    #[test]
    fn names_the_provider_and_nothing_else() {
        let creds = Credentials::new("AKIAEXAMPLEEXAMPLE", "secret", None, None, "ProfileFile");
        assert_eq!(provider_name(&creds), "ProfileFile");
    }

    #[test]
    fn masks_key_ids() {
        assert_eq!(mask_key_id("AKIAIOSFODNN7EXAMPLE"), "AKIA…MPLE");
        assert_eq!(mask_key_id("short"), "…");
    }
}
