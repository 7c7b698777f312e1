//! What the upstream login is answered with: RDS IAM tokens (credentials, minting and reuse,
//! [`IamAuth`]), or a password user's password ([`password`], [`secrets`]) and the SCRAM pieces
//! that are ours ([`scram`]). The exchange itself is [`crate::upstream`]'s.

pub mod cache;
pub mod credentials;
pub mod identity;
pub mod password;
pub mod scram;
pub mod secrets;
pub mod token;

use std::time::SystemTime;

pub use credentials::{CredentialSource, CredentialsError};
pub use password::{Password, PasswordError, PasswordProvider, PasswordSource};
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
