//! Who am I: STS GetCallerIdentity with the same credentials as the IAM tokens, for `doctor`
//! and for audit lines. `AWS_ENDPOINT_URL_STS` (or an explicit endpoint: the simulator) is
//! honoured. The answer names the identity (ARN, account), never a secret.

use std::sync::Arc;

use aws_config::SdkConfig;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};

/// The identity AWS sees behind the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// e.g. `arn:aws:sts::123456789012:assumed-role/Dev/alice` or `arn:aws:iam::…:user/bob`.
    pub arn: String,
    pub account: String,
    /// The unique id (`AIDA…`, `AROA…:session`), what `${aws:userid}` means in a policy.
    pub user_id: String,
}

/// Why the identity could not be asked. Never carries a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    #[error("STS refused the credentials ({code}): {message}")]
    Refused { code: String, message: String },
    #[error("no usable AWS credentials")]
    NoCredentials(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("cannot reach STS{}", endpoint.as_ref().map(|e| format!(" at {e}")).unwrap_or_default())]
    Unreachable {
        endpoint: Option<String>,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("STS answered without {0}")]
    Incomplete(&'static str),
}

/// An STS client.
#[derive(Debug, Clone)]
pub struct StsApi {
    client: aws_sdk_sts::Client,
    endpoint: Option<String>,
}

impl StsApi {
    /// From the loaded AWS configuration, so `AWS_ENDPOINT_URL_STS` and profiles apply.
    pub fn from_sdk_config(sdk: &SdkConfig, region: &str) -> Self {
        let builder = aws_sdk_sts::config::Builder::from(sdk)
            .region(aws_sdk_sts::config::Region::new(region.to_owned()));
        StsApi {
            client: aws_sdk_sts::Client::from_conf(builder.build()),
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
        StsApi {
            endpoint: endpoint.map(str::to_owned),
            ..Self::from_sdk_config(&sdk, region)
        }
    }

    /// `sts:GetCallerIdentity` (needs no permission: every valid identity may call it).
    pub async fn caller_identity(&self) -> Result<CallerIdentity, IdentityError> {
        let out = self
            .client
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| self.map_error(e))?;
        Ok(CallerIdentity {
            arn: out.arn.ok_or(IdentityError::Incomplete("Arn"))?,
            account: out.account.ok_or(IdentityError::Incomplete("Account"))?,
            user_id: out.user_id.ok_or(IdentityError::Incomplete("UserId"))?,
        })
    }

    fn map_error<E>(&self, err: SdkError<E>) -> IdentityError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if let Some(service) = err.as_service_error() {
            return IdentityError::Refused {
                code: service.code().unwrap_or("Unknown").to_owned(),
                message: service.message().unwrap_or("").to_owned(),
            };
        }
        let boxed: Arc<dyn std::error::Error + Send + Sync> = Arc::new(err);
        if crate::aws::has_credentials_error(&*boxed) {
            return IdentityError::NoCredentials(boxed);
        }
        IdentityError::Unreachable {
            endpoint: self.endpoint.clone(),
            source: boxed,
        }
    }
}

impl IdentityError {
    /// What the user should do about it.
    pub fn hint(&self) -> String {
        match self {
            IdentityError::Refused { code, .. } if code == "ExpiredToken" || code == "ExpiredTokenException" => {
                "The session credentials expired: refresh them (`aws sso login`, or re-run what \
                 exported them) and retry."
                    .into()
            }
            IdentityError::Refused { .. } => {
                "AWS does not accept these credentials: check the access key (it may be deleted or \
                 inactive) and the secret key, or the profile you chose (--profile, AWS_PROFILE)."
                    .into()
            }
            IdentityError::NoCredentials(_) => {
                "Provide AWS credentials: run `aws sso login` (with --profile if you use one), or \
                 set AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."
                    .into()
            }
            IdentityError::Unreachable { .. } | IdentityError::Incomplete(_) => {
                "Check the network path to sts.<region>.amazonaws.com; AWS_ENDPOINT_URL_STS \
                 overrides the endpoint."
                    .into()
            }
        }
    }
}
