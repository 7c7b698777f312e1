//! AWS Secrets Manager GetSecretValue for `--password-secret`: the same credential chain as the
//! IAM tokens, and `AWS_ENDPOINT_URL_SECRETS_MANAGER` (or an explicit endpoint) honoured. The
//! secret string is handed on at once and never logged; the SDK's own `Debug` redacts it too.

use std::sync::Arc;

use aws_config::SdkConfig;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

/// Why a secret could not be read. Never carries the secret's value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretsError {
    #[error("the secret does not exist in this region ({code}): {message}")]
    NotFound { code: String, message: String },
    #[error("not authorized to read it ({code}): {message}")]
    AccessDenied { code: String, message: String },
    #[error("secretsmanager:GetSecretValue failed ({code}): {message}")]
    Service { code: String, message: String },
    #[error("no usable AWS credentials for Secrets Manager")]
    NoCredentials(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("cannot reach Secrets Manager{}", endpoint.as_ref().map(|e| format!(" at {e}")).unwrap_or_default())]
    Unreachable {
        endpoint: Option<String>,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("the secret has no SecretString (binary secrets are not supported)")]
    NoString,
    #[error("the secret string is empty")]
    Empty,
    #[error("the secret's JSON has no key {key:?} (it has: {keys}); choose one with --password-secret-key")]
    MissingKey { key: String, keys: String },
    #[error("the secret's JSON value under {0:?} is not a non-empty string")]
    KeyNotAString(String),
}

impl SecretsError {
    /// What the user should do about it.
    pub fn hint(&self) -> String {
        match self {
            SecretsError::NotFound { .. } => {
                "Check --password-secret (a secret name or full ARN) and --region.".into()
            }
            SecretsError::AccessDenied { .. } => {
                "Allow secretsmanager:GetSecretValue on the secret for your IAM identity (and \
                 kms:Decrypt on its key if it uses a customer-managed KMS key)."
                    .into()
            }
            SecretsError::NoCredentials(_) => {
                "Provide AWS credentials: run `aws sso login` (with --profile if you use one), \
                 or set AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; then reconnect."
                    .into()
            }
            SecretsError::Unreachable { .. } | SecretsError::Service { .. } => {
                "Check the network path to secretsmanager.<region>.amazonaws.com; \
                 AWS_ENDPOINT_URL_SECRETS_MANAGER overrides the endpoint."
                    .into()
            }
            SecretsError::NoString
            | SecretsError::Empty
            | SecretsError::MissingKey { .. }
            | SecretsError::KeyNotAString(_) => {
                "The secret must be a plain password string or JSON like RDS's managed secret \
                 {\"username\": …, \"password\": …}; --password-secret-key names the JSON key."
                    .into()
            }
        }
    }
}

/// A Secrets Manager client.
#[derive(Debug, Clone)]
pub struct SecretsApi {
    client: aws_sdk_secretsmanager::Client,
    /// Shown when the endpoint cannot be reached (only when explicitly overridden).
    endpoint: Option<String>,
}

impl SecretsApi {
    /// From the loaded AWS configuration, so `AWS_ENDPOINT_URL_SECRETS_MANAGER` and profiles apply.
    pub fn from_sdk_config(sdk: &SdkConfig, region: &str) -> Self {
        let builder = aws_sdk_secretsmanager::config::Builder::from(sdk).region(
            aws_sdk_secretsmanager::config::Region::new(region.to_owned()),
        );
        SecretsApi {
            client: aws_sdk_secretsmanager::Client::from_conf(builder.build()),
            endpoint: None,
        }
    }

    /// With fixed credentials and no environment lookups at all (tests, the demo).
    pub fn with_credentials(
        credentials: aws_credential_types::Credentials,
        region: &str,
        endpoint: Option<&str>,
    ) -> Self {
        let sdk = crate::aws::fixed_sdk_config(credentials, region, endpoint);
        SecretsApi {
            endpoint: endpoint.map(str::to_owned),
            ..Self::from_sdk_config(&sdk, region)
        }
    }

    /// The current (AWSCURRENT) SecretString of `secret_id` (a name or an ARN).
    pub async fn get_secret_string(&self, secret_id: &str) -> Result<String, SecretsError> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| self.map_error(e))?;
        tracing::debug!(secret_id, "read the password secret from Secrets Manager");
        let text = output.secret_string.ok_or(SecretsError::NoString)?;
        Ok(text)
    }

    fn map_error<E>(&self, err: SdkError<E>) -> SecretsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if let Some(service) = err.as_service_error() {
            let code = service.code().unwrap_or("Unknown").to_owned();
            let message = service.message().unwrap_or("").to_owned();
            return match code.as_str() {
                "ResourceNotFoundException" => SecretsError::NotFound { code, message },
                "AccessDeniedException" | "AccessDenied" => {
                    SecretsError::AccessDenied { code, message }
                }
                _ => SecretsError::Service { code, message },
            };
        }
        let boxed: Arc<dyn std::error::Error + Send + Sync> = Arc::new(err);
        if crate::aws::has_credentials_error(&*boxed) {
            return SecretsError::NoCredentials(boxed);
        }
        SecretsError::Unreachable {
            endpoint: self.endpoint.clone(),
            source: boxed,
        }
    }
}
