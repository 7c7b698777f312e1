//! Redshift temporary database credentials: asked of the Redshift API
//! (`GetClusterCredentials`, `GetClusterCredentialsWithIAM`) or the Redshift Serverless API
//! (`GetCredentials`), and reused until shortly before the expiry the answer states. Each answer
//! names the user to log in as (`IAM:alice`, `IAMR:role`): the login rewrites the startup's user.
//!
//! The cache key is what the answer depends on — the cluster or workgroup, the database, the
//! user the client named (only where the API takes it: `GetClusterCredentials`), AutoCreate and
//! the groups — and the AWS identity that asked (its access key id): new AWS credentials ask
//! again. Entries are bounded like IAM tokens ([`super::cache`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::aws_api::{DbCredentials, EngineApiError};
use crate::engine::{Engine, RedshiftAuth};
use crate::redshift_api::{ClusterCredentialsRequest, RedshiftApi};
use crate::redshift_serverless_api::RedshiftServerlessApi;

/// The life asked for (Redshift's default and minimum; the APIs allow up to an hour).
pub const CREDENTIALS_LIFE: Duration = Duration::from_secs(900);
/// Credentials are not handed out for a new login this close to their expiry.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// The most entries kept.
const MAX_ENTRIES: usize = 4096;

/// The API a target asks its credentials of.
#[derive(Debug, Clone)]
pub enum TemporaryApi {
    Redshift(RedshiftApi),
    Serverless(RedshiftServerlessApi),
}

/// What one login asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemporaryRequest {
    pub engine: Engine,
    /// The cluster identifier or workgroup name.
    pub resource: String,
    /// The database user the client named: the DbUser of `GetClusterCredentials`; empty where
    /// the IAM identity decides (`…WithIAM`, Serverless).
    pub db_user: String,
    pub db_name: String,
    pub auth: RedshiftAuth,
    pub auto_create: bool,
    pub db_groups: Vec<String>,
}

impl TemporaryRequest {
    /// The API call this request makes, as IAM names the permission.
    pub fn action(&self) -> &'static str {
        match (self.engine, self.auth) {
            (Engine::RedshiftServerless, _) => "redshift-serverless:GetCredentials",
            (_, RedshiftAuth::Iam) => "redshift:GetClusterCredentialsWithIAM",
            _ => "redshift:GetClusterCredentials",
        }
    }
}

#[derive(Debug)]
struct Entry {
    credentials: DbCredentials,
    access_key_id: String,
    last_used: SystemTime,
}

/// Temporary credentials per request and identity, reused within their life.
#[derive(Debug)]
pub struct TemporaryCredentials {
    api: TemporaryApi,
    entries: Mutex<HashMap<TemporaryRequest, Entry>>,
}

impl TemporaryCredentials {
    pub fn new(api: TemporaryApi) -> Self {
        TemporaryCredentials {
            api,
            entries: Mutex::default(),
        }
    }

    /// Reused credentials for `request` asked by `access_key_id`, if still good at `now`.
    pub fn cached(&self, request: &TemporaryRequest, access_key_id: &str, now: SystemTime) -> Option<DbCredentials> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get_mut(request)?;
        if entry.access_key_id != access_key_id || now + EXPIRY_MARGIN >= entry.credentials.expiration {
            return None;
        }
        entry.last_used = now;
        Some(entry.credentials.clone())
    }

    /// Asks the API and keeps the answer for `request`.
    pub async fn fetch(
        &self,
        request: &TemporaryRequest,
        access_key_id: &str,
        account: Option<&str>,
    ) -> Result<DbCredentials, EngineApiError> {
        let db_name = Some(request.db_name.as_str()).filter(|d| !d.is_empty());
        let account = account.map(str::to_owned);
        let credentials = match (&self.api, request.auth) {
            (TemporaryApi::Serverless(api), _) => {
                api.clone()
                    .with_account(account)
                    .get_credentials(&request.resource, db_name, CREDENTIALS_LIFE)
                    .await?
            }
            (TemporaryApi::Redshift(api), RedshiftAuth::Iam) => {
                api.clone()
                    .with_account(account)
                    .get_cluster_credentials_with_iam(&request.resource, db_name, CREDENTIALS_LIFE)
                    .await?
            }
            (TemporaryApi::Redshift(api), RedshiftAuth::DbUser) => {
                let call = ClusterCredentialsRequest {
                    cluster: request.resource.clone(),
                    db_user: request.db_user.clone(),
                    db_name: db_name.map(str::to_owned),
                    duration: CREDENTIALS_LIFE,
                    auto_create: request.auto_create,
                    db_groups: request.db_groups.clone(),
                };
                api.clone().with_account(account).get_cluster_credentials(&call).await?
            }
        };
        let now = SystemTime::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Expired entries go first; past the cap, the least recently used.
        entries.retain(|_, e| e.credentials.expiration > now);
        while entries.len() >= MAX_ENTRIES {
            let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone()) else {
                break;
            };
            entries.remove(&oldest);
        }
        entries.insert(
            request.clone(),
            Entry {
                credentials: credentials.clone(),
                access_key_id: access_key_id.to_owned(),
                last_used: now,
            },
        );
        Ok(credentials)
    }

    /// Forgets the credentials for `request` (the server refused them).
    pub fn invalidate(&self, request: &TemporaryRequest) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(request);
    }

    /// How many are held (tests, diagnostics).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
