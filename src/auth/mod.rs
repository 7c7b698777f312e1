//! What the upstream login is answered with: RDS IAM tokens (credentials, minting and reuse,
//! [`IamAuth`]), or a password user's password ([`password`], [`secrets`]) and the SCRAM pieces
//! that are ours ([`scram`]). The exchange itself is [`crate::upstream`]'s.

pub mod cache;
pub mod credentials;
pub mod identity;
pub mod password;
pub mod reload;
pub mod scram;
pub mod secrets;
pub mod temporary;
pub mod token;

use std::time::SystemTime;

pub use credentials::{CredentialSource, CredentialsError};
pub use password::{Password, PasswordError, PasswordProvider, PasswordSource, Passwords};
pub use token::{Token, TokenError, TokenRequest};

/// Everything needed to answer an upstream password request with an IAM token.
#[derive(Debug)]
pub struct IamAuth {
    credentials: CredentialSource,
    cache: cache::TokenCache,
    metrics: AuthMetrics,
    /// Asked who the credentials belong to, once per credential refresh (audit lines).
    identity: Option<identity::StsApi>,
    /// (access key id, principal ARN) of the credentials last asked about; the ARN is empty
    /// when STS could not say.
    principal: std::sync::Mutex<Option<(String, String)>>,
    /// Redshift and Redshift Serverless targets: temporary credentials from their API.
    temporary: Option<temporary::TemporaryCredentials>,
    /// One API call at a time for temporary credentials: logins that arrive together while
    /// none is cached wait for the first answer instead of each asking.
    temporary_calls: tokio::sync::Mutex<()>,
}

/// How long a login may wait for STS GetCallerIdentity (once per credential refresh).
const IDENTITY_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

pub use crate::metrics::AuthMetrics;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The Redshift / Redshift Serverless API did not give temporary credentials.
    #[error(transparent)]
    Api(#[from] crate::aws_api::EngineApiError),
    #[error("no API is configured for temporary credentials (the target is not Redshift)")]
    NoTemporaryApi,
}

impl IamAuth {
    pub fn new(credentials: CredentialSource) -> Self {
        IamAuth {
            credentials,
            cache: cache::TokenCache::default(),
            metrics: AuthMetrics::default(),
            identity: None,
            principal: std::sync::Mutex::new(None),
            temporary: None,
            temporary_calls: tokio::sync::Mutex::new(()),
        }
    }

    /// Answers logins with temporary credentials from `api` (Redshift, Redshift Serverless).
    pub fn with_temporary(mut self, api: temporary::TemporaryApi) -> Self {
        self.temporary = Some(temporary::TemporaryCredentials::new(api));
        self
    }

    /// The AWS account of the credentials, when STS has said (for ARNs in hints).
    pub fn account(&self) -> Option<String> {
        let arn = self.principal_arn();
        let account = arn.split(':').nth(4).filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))?;
        Some(account.to_owned())
    }

    /// Temporary credentials for `request`, reused while good; `fresh`: asked anew with AWS
    /// credentials loaded anew (the one retry after a refused login).
    pub async fn temporary_credentials(
        &self,
        request: &temporary::TemporaryRequest,
        fresh: bool,
    ) -> Result<crate::aws_api::DbCredentials, AuthError> {
        let Some(temporary) = &self.temporary else {
            return Err(AuthError::NoTemporaryApi);
        };
        let creds = if fresh {
            temporary.invalidate(request);
            self.credentials.reload().await?
        } else {
            self.credentials.get().await?
        };
        self.learn_principal(&creds).await;
        let key = creds.access_key_id();
        if let Some(cached) = temporary.cached(request, key, SystemTime::now()) {
            self.metrics.tokens_reused.inc();
            return Ok(cached);
        }
        let _one_call = self.temporary_calls.lock().await;
        if let Some(cached) = temporary.cached(request, key, SystemTime::now()) {
            self.metrics.tokens_reused.inc();
            return Ok(cached);
        }
        let account = self.account();
        let fetched = temporary.fetch(request, key, account.as_deref()).await?;
        self.metrics.tokens_minted.inc();
        Ok(fetched)
    }

    /// Learns the IAM principal ARN of each new set of credentials from `sts`.
    pub fn with_identity(mut self, sts: identity::StsApi) -> Self {
        self.identity = Some(sts);
        self
    }

    /// The IAM principal the credentials belong to, for audit lines; empty until known.
    pub fn principal_arn(&self) -> String {
        self.principal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, arn)| arn.clone())
            .unwrap_or_default()
    }

    /// Asks STS who `creds` belong to, unless already asked for these credentials.
    async fn learn_principal(&self, creds: &aws_credential_types::Credentials) {
        let Some(sts) = &self.identity else { return };
        let key = creds.access_key_id();
        let known = self
            .principal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|(k, _)| k == key);
        if known {
            return;
        }
        let arn = match tokio::time::timeout(IDENTITY_LIMIT, sts.caller_identity()).await {
            Ok(Ok(id)) => id.arn,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "STS GetCallerIdentity failed; audit lines carry no principal ARN");
                String::new()
            }
            Err(_) => {
                tracing::debug!("STS GetCallerIdentity did not answer in time; audit lines carry no principal ARN");
                String::new()
            }
        };
        *self.principal.lock().unwrap_or_else(|p| p.into_inner()) = Some((key.to_owned(), arn));
    }

    /// Counts tokens and credential loads into `metrics`.
    pub fn with_metrics(mut self, metrics: AuthMetrics) -> Self {
        self.credentials.count_loads(metrics.credential_refreshes.clone());
        self.metrics = metrics;
        self
    }

    fn mint_or_reuse(
        &self,
        request: &TokenRequest,
        creds: &aws_credential_types::Credentials,
    ) -> Result<Token, TokenError> {
        let (token, minted) = self.cache.lookup_or_mint(request, creds, SystemTime::now())?;
        if minted {
            self.metrics.tokens_minted.inc();
        } else {
            self.metrics.tokens_reused.inc();
        }
        Ok(token)
    }

    /// A token for `request`, reused from the cache when still good.
    pub async fn token(&self, request: &TokenRequest) -> Result<Token, AuthError> {
        let creds = self.credentials.get().await?;
        self.learn_principal(&creds).await;
        Ok(self.mint_or_reuse(request, &creds)?)
    }

    /// When the token a login for `request` would use now stops being valid (see
    /// [`cache::TokenCache::valid_until`]); `None` when none is cached. Mints nothing.
    pub fn token_valid_until(&self, request: &TokenRequest) -> Option<SystemTime> {
        self.cache.valid_until(request, SystemTime::now())
    }

    /// Loads (and caches) the credentials without signing anything: the start-up check.
    pub async fn credentials(&self) -> Result<aws_credential_types::Credentials, CredentialsError> {
        self.credentials.get().await
    }

    /// A new token signed with credentials loaded anew: the one retry after a login failure.
    pub async fn fresh_token(&self, request: &TokenRequest) -> Result<Token, AuthError> {
        self.cache.invalidate(request);
        let creds = self.credentials.reload().await?;
        self.learn_principal(&creds).await;
        Ok(self.mint_or_reuse(request, &creds)?)
    }
}
