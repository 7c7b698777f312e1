//! STUB (replaced by the api20 branch at merge).
use std::time::SystemTime;
#[derive(Debug, Clone)]
pub struct DbCredentials { pub db_user: String, pub password: crate::auth::Password, pub expiration: SystemTime }
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineApiError { #[error("stub")] Stub }
impl EngineApiError { pub fn hint(&self) -> String { String::new() } }
pub fn dsql_connect_hint(_region: &str, _account: Option<&str>, _cluster: &str, _admin: bool) -> String { String::new() }
pub fn redshift_login_hint() -> String { String::new() }
