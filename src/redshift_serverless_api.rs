//! The Amazon Redshift Serverless API calls a login needs: GetCredentials (temporary database
//! credentials for a workgroup) and GetWorkgroup (its endpoint and ID by name). JSON 1.1
//! (`X-Amz-Target: RedshiftServerless.…`, signing name `redshift-serverless`), sent by
//! [`crate::aws_api`]; `AWS_ENDPOINT_URL_REDSHIFT_SERVERLESS` overrides the endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::aws_api::{self, partition, AwsApi, DbCredentials, EngineApiError, Permission};

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// What GetWorkgroup says about one workgroup, as far as a connection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workgroup {
    pub name: String,
    /// The workgroup's UUID: what IAM resource ARNs name (`…:workgroup/ID`).
    pub id: String,
    pub arn: String,
    /// `CREATING`, `AVAILABLE`, `MODIFYING`, `DELETING`.
    pub status: String,
    /// `endpoint.address`.
    pub endpoint: Option<String>,
    pub port: Option<u16>,
}

/// A Redshift Serverless API client.
#[derive(Debug, Clone)]
pub struct RedshiftServerlessApi {
    api: AwsApi,
    /// Workgroup IDs by name, learned from GetWorkgroup, for the ARN an AccessDenied names.
    ids: Arc<Mutex<HashMap<String, String>>>,
}

impl RedshiftServerlessApi {
    /// From the loaded AWS configuration: its credentials, and
    /// `AWS_ENDPOINT_URL_REDSHIFT_SERVERLESS`, `AWS_ENDPOINT_URL` or the configuration's endpoint
    /// URL when set.
    pub fn from_sdk_config(sdk: &aws_config::SdkConfig, region: &str) -> Self {
        Self::of(AwsApi::from_sdk_config(&aws_api::REDSHIFT_SERVERLESS, sdk, region))
    }

    /// With fixed credentials and no environment lookups at all (tests, the demo).
    pub fn with_credentials(credentials: aws_credential_types::Credentials, region: &str, endpoint: Option<&str>) -> Self {
        Self::of(AwsApi::with_credentials(&aws_api::REDSHIFT_SERVERLESS, credentials, region, endpoint))
    }

    fn of(api: AwsApi) -> Self {
        RedshiftServerlessApi {
            api,
            ids: Arc::default(),
        }
    }

    /// The caller's account id (from STS) for the ARNs an AccessDenied HINT names.
    pub fn with_account(self, account: Option<String>) -> Self {
        RedshiftServerlessApi {
            api: self.api.with_account(account),
            ids: self.ids,
        }
    }

    /// `arn:PARTITION:redshift-serverless:REGION:ACCOUNT:workgroup/ID`: the workgroup's ID when
    /// known (GetWorkgroup, or AWS's message), else `*`.
    fn workgroup_arn(&self, account: &str, workgroup: &str, message: &str) -> String {
        let region = self.api.region();
        let known = self.ids.lock().unwrap_or_else(|p| p.into_inner()).get(workgroup).cloned();
        let id = known.or_else(|| id_in_message(message)).unwrap_or_else(|| "*".into());
        format!("arn:{}:redshift-serverless:{region}:{account}:workgroup/{id}", partition(region))
    }

    /// GetCredentials: a temporary password for the database user the IAM identity maps to
    /// (`IAM:user`, `IAMR:role`).
    pub async fn get_credentials(
        &self,
        workgroup: &str,
        db_name: Option<&str>,
        duration: Duration,
    ) -> Result<DbCredentials, EngineApiError> {
        let mut body = serde_json::json!({
            "workgroupName": workgroup,
            "durationSeconds": duration.as_secs(),
        });
        if let Some(db) = db_name {
            body["dbName"] = db.into();
        }
        let answer = self
            .call("GetCredentials", "redshift-serverless:GetCredentials", &body, workgroup)
            .await?;
        let text = |key: &str| answer.get(key).and_then(|v| v.as_str());
        let missing = |what: &str| EngineApiError::bad(&self.api, format!("GetCredentials answered without {what}"));
        Ok(DbCredentials {
            db_user: text("dbUser").ok_or_else(|| missing("dbUser"))?.to_owned(),
            password: crate::aws_api::TemporaryPassword::new(text("dbPassword").ok_or_else(|| missing("dbPassword"))?),
            expiration: answer
                .get("expiration")
                .and_then(aws_api::epoch_seconds)
                .ok_or_else(|| missing("a readable expiration"))?,
        })
    }

    /// GetWorkgroup for one name.
    pub async fn get_workgroup(&self, workgroup: &str) -> Result<Workgroup, EngineApiError> {
        let body = serde_json::json!({ "workgroupName": workgroup });
        let answer = self
            .call("GetWorkgroup", "redshift-serverless:GetWorkgroup", &body, workgroup)
            .await?;
        let w = answer
            .get("workgroup")
            .ok_or_else(|| EngineApiError::bad(&self.api, "GetWorkgroup answered without a workgroup"))?;
        let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
        let port = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_u64()).and_then(|p| u16::try_from(p).ok());
        let id = text(w.get("workgroupId"))
            .ok_or_else(|| EngineApiError::bad(&self.api, "GetWorkgroup answered without a workgroupId"))?;
        let name = text(w.get("workgroupName")).unwrap_or_else(|| workgroup.to_owned());
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), id.clone());
        let endpoint = w.get("endpoint");
        Ok(Workgroup {
            name,
            id,
            arn: text(w.get("workgroupArn")).unwrap_or_default(),
            status: text(w.get("status")).unwrap_or_default(),
            endpoint: text(endpoint.and_then(|e| e.get("address"))),
            port: port(endpoint.and_then(|e| e.get("port"))).or_else(|| port(w.get("port"))),
        })
    }

    /// One JSON 1.1 call: the answer's JSON on success, else the error AWS names.
    async fn call(
        &self,
        operation: &str,
        permission: &'static str,
        body: &serde_json::Value,
        workgroup: &str,
    ) -> Result<serde_json::Value, EngineApiError> {
        let target = format!("RedshiftServerless.{operation}");
        let answer = self
            .api
            .call(aws_api::ApiRequest {
                method: "POST",
                path: "/",
                content_type: Some(CONTENT_TYPE),
                target: Some(&target),
                body: body.to_string().into_bytes(),
            })
            .await
            .map_err(|e| EngineApiError::from_call(&self.api, e))?;
        if !answer.status.is_success() {
            let (_, message) = answer.error();
            let denied = |account: &str| (self.workgroup_arn(account, workgroup, &message), Vec::<Permission>::new());
            return Err(EngineApiError::from_answer(&self.api, &answer, permission, denied, "Redshift Serverless workgroup", workgroup));
        }
        // The error names a position only: the body may hold the password.
        serde_json::from_str(&answer.body)
            .map_err(|e| EngineApiError::bad(&self.api, format!("{operation} answered something that is not JSON (line {}, column {})", e.line(), e.column())))
    }
}

/// The workgroup ID of a `…:workgroup/ID` ARN in an AWS message.
fn id_in_message(message: &str) -> Option<String> {
    let (_, rest) = message.split_once(":workgroup/")?;
    let id: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::aws_api::test_server::TestServer;

    fn api(server: &TestServer) -> RedshiftServerlessApi {
        let creds = aws_credential_types::Credentials::from_keys("AKIDEXAMPLE", "secret", None);
        RedshiftServerlessApi::with_credentials(creds, "eu-west-1", Some(&server.url()))
    }

    #[tokio::test]
    async fn get_credentials_request_and_answer() {
        let server = TestServer::start(
            200,
            &[("content-type", "application/x-amz-json-1.1")],
            r#"{"dbPassword":"EXAMPLEpw/+=","dbUser":"IAMR:analyst","expiration":1.7966562E9,"nextRefreshTime":1.7966559E9}"#,
        )
        .await;
        let creds = api(&server)
            .get_credentials("my-wg", Some("dev"), Duration::from_secs(1800))
            .await
            .unwrap();
        assert_eq!((creds.db_user.as_str(), creds.password.expose()), ("IAMR:analyst", "EXAMPLEpw/+="));
        assert_eq!(creds.expiration, SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_656_200));
        let sent = server.requests().remove(0);
        assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/"));
        let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(body, serde_json::json!({"workgroupName": "my-wg", "dbName": "dev", "durationSeconds": 1800}));
        assert_eq!(sent.header("x-amz-target"), Some("RedshiftServerless.GetCredentials"));
        assert_eq!(sent.header("content-type"), Some("application/x-amz-json-1.1"));
        sent.assert_signed("redshift-serverless", "eu-west-1");
        assert!(sent.header("authorization").unwrap().contains("SignedHeaders=content-type;host;x-amz-date;x-amz-target,"));
    }

    #[tokio::test]
    async fn get_workgroup_then_a_denial_names_the_workgroup_id() {
        let server = TestServer::start(
            200,
            &[],
            r#"{"workgroup":{"workgroupName":"my-wg","workgroupId":"3741886a-223d-446f-a77c-a5d0e7b5ad32",
                "workgroupArn":"arn:aws:redshift-serverless:eu-west-1:123456789012:workgroup/3741886a-223d-446f-a77c-a5d0e7b5ad32",
                "namespaceName":"ns","status":"AVAILABLE","port":5439,"publiclyAccessible":false,
                "endpoint":{"address":"my-wg.123456789012.eu-west-1.redshift-serverless.amazonaws.com","port":5439,
                "vpcEndpoints":[{"vpcEndpointId":"vpce-1","vpcId":"vpc-1","networkInterfaces":[]}]}}}"#,
        )
        .await;
        let client = api(&server);
        let w = client.get_workgroup("my-wg").await.unwrap();
        assert_eq!(
            w,
            Workgroup {
                name: "my-wg".into(),
                id: "3741886a-223d-446f-a77c-a5d0e7b5ad32".into(),
                arn: "arn:aws:redshift-serverless:eu-west-1:123456789012:workgroup/3741886a-223d-446f-a77c-a5d0e7b5ad32".into(),
                status: "AVAILABLE".into(),
                endpoint: Some("my-wg.123456789012.eu-west-1.redshift-serverless.amazonaws.com".into()),
                port: Some(5439),
            }
        );
        let sent = server.requests().remove(0);
        assert_eq!(sent.header("x-amz-target"), Some("RedshiftServerless.GetWorkgroup"));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&sent.body).unwrap(), serde_json::json!({"workgroupName": "my-wg"}));
        sent.assert_signed("redshift-serverless", "eu-west-1");

        // The same client (its clones too) now knows the ID; the namespaced __type is read.
        let denied = TestServer::start(
            400,
            &[],
            r#"{"__type":"com.amazonaws.redshiftserverless#AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/Dev/alice is not authorized to perform: redshift-serverless:GetCredentials"}"#,
        )
        .await;
        let mut pointed = client.clone();
        pointed.api = AwsApi::with_credentials(
            &aws_api::REDSHIFT_SERVERLESS,
            aws_credential_types::Credentials::from_keys("AKIDEXAMPLE", "secret", None),
            "eu-west-1",
            Some(&denied.url()),
        );
        let e = pointed.get_credentials("my-wg", None, Duration::from_secs(900)).await.unwrap_err();
        assert!(
            e.hint().starts_with(
                "Allow redshift-serverless:GetCredentials on \
                 arn:aws:redshift-serverless:eu-west-1:123456789012:workgroup/3741886a-223d-446f-a77c-a5d0e7b5ad32 for"
            ),
            "{}",
            e.hint()
        );
        // Unknown: the ID from AWS's message if it names one, else workgroup/*.
        let e = api(&denied).get_credentials("other", None, Duration::from_secs(900)).await.unwrap_err();
        assert!(e.hint().starts_with("Allow redshift-serverless:GetCredentials on arn:aws:redshift-serverless:eu-west-1:123456789012:workgroup/* for"), "{}", e.hint());
        assert_eq!(
            id_in_message("… on resource: arn:aws:redshift-serverless:eu-west-1:1:workgroup/0b1f-2e because"),
            Some("0b1f-2e".into())
        );
    }

    #[tokio::test]
    async fn errors_by_header_and_body() {
        let server = TestServer::start(
            400,
            &[("x-amzn-ErrorType", "ResourceNotFoundException:http://internal.amazon.com/coral/com.amazonaws.redshiftserverless/")],
            r#"{"message":"Serverless workgroup nope not found.","resourceName":"nope"}"#,
        )
        .await;
        let e = api(&server).get_credentials("nope", None, Duration::from_secs(900)).await.unwrap_err();
        assert!(matches!(&e, EngineApiError::NotFound { what: "Redshift Serverless workgroup", id, .. } if id == "nope"), "{e:?}");
        assert!(e.hint().contains("aws redshift-serverless list-workgroups --region eu-west-1"), "{}", e.hint());

        let server = TestServer::start(400, &[], r#"{"__type":"ValidationException","message":"durationSeconds must be between 900 and 3600"}"#).await;
        let e = api(&server).get_credentials("wg", None, Duration::from_secs(60)).await.unwrap_err();
        assert!(matches!(e, EngineApiError::Invalid { .. }) && e.hint().contains("durationSeconds must be between 900 and 3600"), "{e:?}");

        let server = TestServer::start(400, &[], r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#).await;
        let e = api(&server).get_workgroup("wg").await.unwrap_err();
        assert!(matches!(e, EngineApiError::CredentialsRefused { .. }), "{e:?}");

        // An unreadable answer never repeats its text (it may be a password).
        let server = TestServer::start(200, &[], r#"{"dbPassword":"EXAMPLEsecret","dbUser":"IAM:x","expiration":"#).await;
        let e = api(&server).get_credentials("wg", None, Duration::from_secs(900)).await.unwrap_err();
        assert!(matches!(e, EngineApiError::BadResponse { .. }) && !e.to_string().contains("EXAMPLEsecret"), "{e}");
        let server = TestServer::start(200, &[], r#"{"dbPassword":"EXAMPLEsecret","dbUser":"IAM:x","expiration":"soon"}"#).await;
        let e = api(&server).get_credentials("wg", None, Duration::from_secs(900)).await.unwrap_err();
        assert!(matches!(e, EngineApiError::BadResponse { .. }) && !e.to_string().contains("EXAMPLEsecret"), "{e}");
    }
}
