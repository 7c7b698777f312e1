//! RDS IAM authentication: credentials, token minting and reuse ([`IamAuth`]), and the upstream
//! authentication exchange ([`upstream`]).

pub mod cache;
pub mod credentials;
pub mod token;

use std::time::SystemTime;

pub use credentials::{CredentialSource, CredentialsError};
pub use token::{Token, TokenError, TokenRequest};

/// Everything needed to answer an upstream password request with an IAM token.
#[derive(Debug)]
pub struct IamAuth {
    credentials: CredentialSource,
    cache: cache::TokenCache,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl IamAuth {
    pub fn new(credentials: CredentialSource) -> Self {
        IamAuth {
            credentials,
            cache: cache::TokenCache::default(),
        }
    }

    /// A token for `request`, reused from the cache when still good.
    pub async fn token(&self, request: &TokenRequest) -> Result<Token, AuthError> {
        let creds = self.credentials.get().await?;
        Ok(self.cache.get_or_mint(request, &creds, SystemTime::now())?)
    }

    /// Loads (and caches) the credentials without signing anything: the start-up check.
    pub async fn credentials(&self) -> Result<aws_credential_types::Credentials, CredentialsError> {
        self.credentials.get().await
    }

    /// A new token signed with credentials loaded anew: the one retry after a login failure.
    pub async fn fresh_token(&self, request: &TokenRequest) -> Result<Token, AuthError> {
        self.cache.invalidate(request);
        let creds = self.credentials.reload().await?;
        Ok(self.cache.get_or_mint(request, &creds, SystemTime::now())?)
    }
}
