//! Token reuse: one token per (endpoint, port, region, user, signing identity), reused for at most
//! 14 minutes (a minute short of the 15 RDS allows) and never past the credentials' own expiry.
//! Reuse matters because RDS throttles new IAM logins above ~200/s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;

use super::token::{presign, Token, TokenError, TokenRequest};

/// How long a minted token is reused.
pub const MAX_TOKEN_REUSE: Duration = Duration::from_secs(14 * 60);

#[derive(Debug, Clone)]
struct Entry {
    token: Token,
    /// Which credentials signed it: a token from replaced credentials is not reused.
    access_key_id: String,
    usable_until: SystemTime,
}

#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<TokenRequest, Entry>>,
}

impl TokenCache {
    /// A cached token for `request` signed by `credentials`, or a new one minted at `now`.
    pub fn get_or_mint(
        &self,
        request: &TokenRequest,
        credentials: &Credentials,
        now: SystemTime,
    ) -> Result<Token, TokenError> {
        self.lookup_or_mint(request, credentials, now).map(|(token, _)| token)
    }

    /// [`TokenCache::get_or_mint`], also saying whether the token was minted (`true`) or reused.
    pub fn lookup_or_mint(
        &self,
        request: &TokenRequest,
        credentials: &Credentials,
        now: SystemTime,
    ) -> Result<(Token, bool), TokenError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get(request) {
            if entry.access_key_id == credentials.access_key_id() && now < entry.usable_until {
                return Ok((entry.token.clone(), false));
            }
        }
        let token = presign(request, credentials, now)?;
        let mut usable_until = now + MAX_TOKEN_REUSE;
        if let Some(expiry) = credentials.expiry() {
            usable_until = usable_until.min(expiry);
        }
        entries.insert(
            request.clone(),
            Entry {
                token: token.clone(),
                access_key_id: credentials.access_key_id().to_owned(),
                usable_until,
            },
        );
        Ok((token, true))
    }

    /// Forgets the token for `request` (after the upstream refused it).
    pub fn invalidate(&self, request: &TokenRequest) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(user: &str) -> TokenRequest {
        TokenRequest {
            endpoint: "db.abc.eu-central-1.rds.amazonaws.com".into(),
            port: 5432,
            region: "eu-central-1".into(),
            db_user: user.into(),
        }
    }

    #[test]
    fn reuses_for_fourteen_minutes_only() {
        let cache = TokenCache::default();
        let creds = Credentials::from_keys("AKIAEXAMPLEEXAMPLE", "s", None);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = cache.get_or_mint(&req("u"), &creds, t0).unwrap();
        let b = cache
            .get_or_mint(&req("u"), &creds, t0 + Duration::from_secs(13 * 60))
            .unwrap();
        assert_eq!(a, b);
        let c = cache
            .get_or_mint(&req("u"), &creds, t0 + Duration::from_secs(14 * 60))
            .unwrap();
        assert_ne!(a, c);
        let other_user = cache.get_or_mint(&req("v"), &creds, t0).unwrap();
        assert_ne!(a, other_user);
    }

    #[test]
    fn never_past_credential_expiry_nor_across_identities() {
        let cache = TokenCache::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let short = Credentials::new(
            "ASIAEXAMPLEEXAMPLE",
            "s",
            Some("tok".into()),
            Some(t0 + Duration::from_secs(120)),
            "test",
        );
        let a = cache.get_or_mint(&req("u"), &short, t0).unwrap();
        let b = cache
            .get_or_mint(&req("u"), &short, t0 + Duration::from_secs(60))
            .unwrap();
        assert_eq!(a, b);
        let c = cache
            .get_or_mint(&req("u"), &short, t0 + Duration::from_secs(120))
            .unwrap();
        assert_ne!(a, c);
        let other = Credentials::from_keys("AKIAOTHEROTHEROTH", "s", None);
        let d = cache
            .get_or_mint(&req("u"), &other, t0 + Duration::from_secs(121))
            .unwrap();
        assert_ne!(c, d);
        cache.invalidate(&req("u"));
        let e = cache
            .get_or_mint(&req("u"), &other, t0 + Duration::from_secs(122))
            .unwrap();
        assert_ne!(d, e);
    }
}
