//! STUB
use std::time::Duration;
use crate::aws_api::{DbCredentials, EngineApiError};
pub struct ClusterCredentialsRequest { pub cluster: String, pub db_user: String, pub db_name: Option<String>, pub duration: Duration, pub auto_create: bool, pub db_groups: Vec<String> }
#[derive(Debug, Clone)]
pub struct RedshiftApi;
impl RedshiftApi {
    pub fn from_sdk_config(_sdk: &aws_config::SdkConfig, _region: &str) -> Self { RedshiftApi }
    pub fn with_credentials(_c: aws_credential_types::Credentials, _region: &str, _e: Option<&str>) -> Self { RedshiftApi }
    pub async fn get_cluster_credentials(&self, _r: &ClusterCredentialsRequest, _a: Option<&str>) -> Result<DbCredentials, EngineApiError> { Err(EngineApiError::Stub) }
    pub async fn get_cluster_credentials_with_iam(&self, _c: &str, _d: Option<&str>, _du: Duration, _a: Option<&str>) -> Result<DbCredentials, EngineApiError> { Err(EngineApiError::Stub) }
}
