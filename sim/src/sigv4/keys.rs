//! The simulator's AWS credentials: its own long-term keys and the temporary credentials it
//! issues, looked up by access key id when a signature is checked.

use super::*;

/// The simulator's own AWS credentials, and the temporary credentials issued from them: the only
/// ones its RDS front and its APIs accept.
#[derive(Clone)]
pub struct SimCredentials {
    /// Access key id; public (it appears in every credential scope).
    pub access_key_id: String,
    /// Secret key; only ever used as HMAC key material, never printed.
    pub secret_access_key: String,
    /// Session token the simulator issued with these credentials, if any. When `None`, a request or
    /// token that carries a session token is rejected, as AWS rejects a token it did not issue.
    pub session_token: Option<String>,
    /// Temporary credentials issued from these (STS, the IAM Identity Center portal), shared by
    /// every clone: a key the simulated STS issues is at once good at every simulated service.
    pub(super) issued: Arc<Mutex<HashMap<String, TemporaryCredentials>>>,
}

/// Temporary credentials as AWS issues them (STS, IAM Identity Center): an `ASIA…` access key, its
/// secret, the session token every signature must carry, and when they stop being accepted.
#[derive(Clone)]
pub struct TemporaryCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: SystemTime,
    /// Who STS GetCallerIdentity says signed with them: (ARN, user id); `None` is the identity
    /// they were issued from (GetSessionToken).
    pub caller: Option<(String, String)>,
}

impl fmt::Debug for TemporaryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemporaryCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// The key material a signature is checked with, once its access key id is known.
pub(super) struct SigningKey {
    pub(super) secret: String,
    /// The session token the signature must carry (temporary credentials), if any.
    pub(super) session_token: Option<String>,
    /// When temporary credentials stop being accepted.
    pub(super) expiration: Option<SystemTime>,
}

impl SimCredentials {
    /// Long-term credentials (no session token), which is what the simulator issues by default.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
            issued: Arc::default(),
        }
    }

    /// Temporary credentials: signatures must also carry this session token.
    pub fn with_session_token(mut self, session_token: impl Into<String>) -> Self {
        self.session_token = Some(session_token.into());
        self
    }

    /// Issues new temporary credentials valid for `lifetime`, accepted from now on by every
    /// simulated service that shares these credentials. The session token has the `+`, `/` and
    /// `=` of AWS's, so a signer that forgets to encode it fails here as it would at AWS.
    pub fn issue_temporary(&self, lifetime: Duration) -> TemporaryCredentials {
        self.issue_temporary_as(lifetime, None)
    }

    /// [`SimCredentials::issue_temporary`] for another identity (an assumed role): `caller` is
    /// its (ARN, user id), what GetCallerIdentity answers for these credentials.
    pub fn issue_temporary_as(&self, lifetime: Duration, caller: Option<(String, String)>) -> TemporaryCredentials {
        use base64::Engine;
        use rand::distr::{Alphanumeric, SampleString};
        use rand::RngCore;
        let mut rng = rand::rng();
        let mut token = [0u8; 160];
        rng.fill_bytes(&mut token);
        let issued = TemporaryCredentials {
            access_key_id: format!("ASIASIM{}", Alphanumeric.sample_string(&mut rng, 13).to_uppercase()),
            secret_access_key: Alphanumeric.sample_string(&mut rng, 40),
            // 158 bytes → 212 base64 characters, the last one a '=' (158 = 3 × 52 + 2).
            session_token: base64::engine::general_purpose::STANDARD.encode(&token[..158]),
            expiration: SystemTime::now() + lifetime,
            caller,
        };
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(issued.access_key_id.clone(), issued.clone());
        issued
    }

    /// How many temporary credentials were issued (and are still known), expired ones included.
    pub fn issued_count(&self) -> usize {
        self.issued.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The (ARN, user id) of the identity temporary credentials were issued for, if another.
    pub fn caller_of(&self, access_key_id: &str) -> Option<(String, String)> {
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.get(access_key_id).and_then(|t| t.caller.clone())
    }

    /// The key for `access_key_id`: these credentials' own, or temporary ones issued from them.
    pub(super) fn key_for(&self, access_key_id: &str) -> Option<SigningKey> {
        if access_key_id == self.access_key_id {
            return Some(SigningKey {
                secret: self.secret_access_key.clone(),
                session_token: self.session_token.clone(),
                expiration: None,
            });
        }
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.get(access_key_id).map(|t| SigningKey {
            secret: t.secret_access_key.clone(),
            session_token: Some(t.session_token.clone()),
            expiration: Some(t.expiration),
        })
    }
}

impl fmt::Debug for SimCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}
