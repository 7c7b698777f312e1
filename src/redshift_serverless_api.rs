//! STUB
use std::time::Duration;
use crate::aws_api::{DbCredentials, EngineApiError};
#[derive(Debug, Clone)]
pub struct RedshiftServerlessApi;
impl RedshiftServerlessApi {
    pub fn from_sdk_config(_sdk: &aws_config::SdkConfig, _region: &str) -> Self { RedshiftServerlessApi }
    pub fn with_credentials(_c: aws_credential_types::Credentials, _region: &str, _e: Option<&str>) -> Self { RedshiftServerlessApi }
    pub async fn get_credentials(&self, _w: &str, _d: Option<&str>, _du: Duration, _a: Option<&str>) -> Result<DbCredentials, EngineApiError> { Err(EngineApiError::Stub) }
}
