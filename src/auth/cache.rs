//! Token reuse: one token per (endpoint, port, region, user, signing identity), reused for at most
//! 14 minutes (a minute short of the 15 RDS allows) and never past the credentials' own expiry.
//! Reuse matters because RDS throttles new IAM logins above ~200/s.
//!
//! The key holds the user name a client sent, so the map is bounded: an entry unused for longer
//! than a token lives is dropped (nothing could reuse it), and past [`MAX_ENTRIES`] the least
//! recently used entry makes room. Idle time is measured on tokio's clock, so tests can pause it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use tokio::time::Instant;

use super::token::{presign, presign_dsql, Token, TokenError, TokenKind, TokenRequest, TOKEN_LIFETIME};

/// How long a minted token is reused.
pub const MAX_TOKEN_REUSE: Duration = Duration::from_secs(14 * 60);
/// An entry unused this long is dropped: the life of an RDS IAM token.
pub const IDLE_EVICTION: Duration = Duration::from_secs(15 * 60);
/// The most entries kept, however many distinct user names clients send in 15 minutes.
pub const MAX_ENTRIES: usize = 4096;
/// How often idle entries are looked for (a sweep walks the whole map).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Entry {
    token: Token,
    /// Which credentials signed it: a token from replaced credentials is not reused.
    access_key_id: String,
    usable_until: SystemTime,
    /// When RDS stops accepting it: its 15-minute life, or the credentials' expiry if sooner.
    valid_until: SystemTime,
    /// Last handed out (or minted): what idle eviction and the size cap go by.
    last_used: Instant,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<TokenRequest, Entry>,
    /// When the next sweep for idle entries is due (`None`: at the next call).
    next_sweep: Option<Instant>,
}

impl Entries {
    /// Drops entries idle for [`IDLE_EVICTION`], at most once per [`SWEEP_EVERY`].
    fn sweep_if_due(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|due| now >= due) {
            self.map
                .retain(|_, e| now.saturating_duration_since(e.last_used) < IDLE_EVICTION);
            self.next_sweep = Some(now + SWEEP_EVERY);
        }
    }

    /// Makes room for one more entry below [`MAX_ENTRIES`] by dropping the least recently used
    /// (a walk of the map, only when it is full; minting a token costs more).
    fn make_room(&mut self) {
        while self.map.len() >= MAX_ENTRIES {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.map.remove(&oldest);
        }
    }
}

#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<Entries>,
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
        let used_at = Instant::now();
        entries.sweep_if_due(used_at);
        if let Some(entry) = entries.map.get_mut(request) {
            if entry.access_key_id == credentials.access_key_id() && now < entry.usable_until {
                entry.last_used = used_at;
                return Ok((entry.token.clone(), false));
            }
        }
        let token = match request.kind {
            TokenKind::Rds => presign(request, credentials, now)?,
            TokenKind::Dsql => presign_dsql(
                &request.endpoint,
                &request.region,
                request.db_user == "admin",
                credentials,
                now,
                TOKEN_LIFETIME,
            )?,
        };
        let mut usable_until = now + MAX_TOKEN_REUSE;
        let mut valid_until = now + TOKEN_LIFETIME;
        if let Some(expiry) = credentials.expiry() {
            usable_until = usable_until.min(expiry);
            valid_until = valid_until.min(expiry);
        }
        if !entries.map.contains_key(request) {
            entries.make_room();
        }
        entries.map.insert(
            request.clone(),
            Entry {
                token: token.clone(),
                access_key_id: credentials.access_key_id().to_owned(),
                usable_until,
                valid_until,
                last_used: used_at,
            },
        );
        Ok((token, true))
    }

    /// When the token cached for `request` stops being valid, if one is cached and still reused
    /// at `now` (what a login right now would most likely use); for a connection logged in with
    /// it, e.g. a spare kept ready ([`crate::spare`]), which must not outlive its login's token.
    pub fn valid_until(&self, request: &TokenRequest, now: SystemTime) -> Option<SystemTime> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.map.get(request)?;
        (now < entry.usable_until).then_some(entry.valid_until)
    }

    /// Forgets the token for `request` (after the upstream refused it).
    pub fn invalidate(&self, request: &TokenRequest) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .remove(request);
    }

    /// How many tokens are held (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
            kind: TokenKind::Rds,
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

    /// A token's end is its 15 minutes, or the credentials' expiry when sooner; nothing is
    /// reported once the token is no longer reused.
    #[test]
    fn valid_until_is_the_token_life_capped_by_the_credentials() {
        let cache = TokenCache::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(cache.valid_until(&req("u"), t0), None);
        let long = Credentials::from_keys("AKIAEXAMPLEEXAMPLE", "s", None);
        cache.get_or_mint(&req("u"), &long, t0).unwrap();
        assert_eq!(cache.valid_until(&req("u"), t0 + Duration::from_secs(60)), Some(t0 + TOKEN_LIFETIME));
        assert_eq!(cache.valid_until(&req("u"), t0 + MAX_TOKEN_REUSE), None, "no longer reused");
        let short = Credentials::new("ASIAEXAMPLEEXAMPLE", "s", Some("tok".into()), Some(t0 + Duration::from_secs(300)), "test");
        cache.get_or_mint(&req("v"), &short, t0).unwrap();
        assert_eq!(cache.valid_until(&req("v"), t0), Some(t0 + Duration::from_secs(300)));
    }

    /// Idle entries go away after a token's life, on tokio's paused clock (no real waiting).
    #[tokio::test(start_paused = true)]
    async fn idle_entries_are_evicted_after_fifteen_minutes() {
        let cache = TokenCache::default();
        let creds = Credentials::from_keys("AKIAEXAMPLEEXAMPLE", "s", None);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for i in 0..100 {
            cache.get_or_mint(&req(&format!("user{i}")), &creds, t0).unwrap();
        }
        assert_eq!(cache.len(), 100);
        // `kept` is used again ten minutes in, so it is idle for only five at the 15-minute mark.
        tokio::time::advance(Duration::from_secs(10 * 60)).await;
        let kept = cache
            .get_or_mint(&req("user7"), &creds, t0 + Duration::from_secs(10 * 60))
            .unwrap();
        assert_eq!(cache.len(), 100, "nothing is idle for 15 minutes yet");
        tokio::time::advance(IDLE_EVICTION - Duration::from_secs(10 * 60)).await;
        let again = cache
            .get_or_mint(&req("user7"), &creds, t0 + Duration::from_secs(13 * 60))
            .unwrap();
        // (Wall time for reuse is passed in; 13 minutes keeps it within the 14-minute reuse.)
        assert_eq!(kept, again, "a used entry stays");
        assert_eq!(cache.len(), 1, "the 99 idle entries are gone");
        tokio::time::advance(IDLE_EVICTION).await;
        cache.get_or_mint(&req("other"), &creds, t0 + Duration::from_secs(31 * 60)).unwrap();
        assert_eq!(cache.len(), 1, "user7 idle for 15 minutes went too");
    }

    /// However many distinct user names arrive within 15 minutes, the map stays at the cap and
    /// the least recently used entries make room.
    #[tokio::test(start_paused = true)]
    async fn size_is_capped_under_many_distinct_users() {
        let cache = TokenCache::default();
        let creds = Credentials::from_keys("AKIAEXAMPLEEXAMPLE", "s", None);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = cache.get_or_mint(&req("hot"), &creds, t0).unwrap();
        for i in 0..MAX_ENTRIES + 500 {
            tokio::time::advance(Duration::from_millis(1)).await;
            cache.get_or_mint(&req(&format!("u{i}")), &creds, t0).unwrap();
            if i % 1000 == 0 {
                // `hot` keeps being used, so it is never the least recently used.
                assert_eq!(cache.get_or_mint(&req("hot"), &creds, t0).unwrap(), first);
            }
            assert!(cache.len() <= MAX_ENTRIES, "{} entries after {i}", cache.len());
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert_eq!(cache.get_or_mint(&req("hot"), &creds, t0).unwrap(), first);
        cache.get_or_mint(&req("u0"), &creds, t0).unwrap();
        assert_eq!(cache.len(), MAX_ENTRIES, "re-minting an evicted entry made room first");
    }
}
