//! The Aurora DSQL API call a lookup by name needs: GetCluster (`GET /cluster/{identifier}`,
//! rest-json, signing name `dsql`), sent by [`crate::aws_api`]; `AWS_ENDPOINT_URL_DSQL`
//! overrides the endpoint. Logins need no API call: their token is signed locally
//! (`auth::token::presign_dsql`).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::aws_api::{self, partition, AwsApi, EngineApiError};

/// A path segment: everything but SigV4's unreserved characters is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// What GetCluster says about one cluster, as far as a connection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsqlCluster {
    pub id: String,
    pub arn: String,
    /// `ACTIVE`, `IDLE`, `CREATING`, `INACTIVE`, …
    pub status: String,
    /// The endpoint name; older API versions do not say (then it is [`DsqlCluster::endpoint_name`]).
    pub endpoint: Option<String>,
}

impl DsqlCluster {
    /// The endpoint GetCluster names, else the documented `ID.dsql.REGION.on.aws`.
    pub fn endpoint_name(&self, region: &str) -> String {
        self.endpoint.clone().unwrap_or_else(|| format!("{}.dsql.{region}.on.aws", self.id))
    }
}

/// An Aurora DSQL API client.
#[derive(Debug, Clone)]
pub struct DsqlApi {
    api: AwsApi,
}

impl DsqlApi {
    /// From the loaded AWS configuration: its credentials, and `AWS_ENDPOINT_URL_DSQL`,
    /// `AWS_ENDPOINT_URL` or the configuration's endpoint URL when set.
    pub fn from_sdk_config(sdk: &aws_config::SdkConfig, region: &str) -> Self {
        DsqlApi {
            api: AwsApi::from_sdk_config(&aws_api::DSQL, sdk, region),
        }
    }

    /// With fixed credentials and no environment lookups at all (tests, the demo).
    pub fn with_credentials(credentials: aws_credential_types::Credentials, region: &str, endpoint: Option<&str>) -> Self {
        DsqlApi {
            api: AwsApi::with_credentials(&aws_api::DSQL, credentials, region, endpoint),
        }
    }

    /// The caller's account id (from STS) for the ARNs an AccessDenied HINT names.
    pub fn with_account(self, account: Option<String>) -> Self {
        DsqlApi {
            api: self.api.with_account(account),
        }
    }

    /// GetCluster for one identifier.
    pub async fn get_cluster(&self, id: &str) -> Result<DsqlCluster, EngineApiError> {
        let path = format!("/cluster/{}", utf8_percent_encode(id, SEGMENT));
        let answer = self
            .api
            .call(aws_api::ApiRequest {
                method: "GET",
                path: &path,
                content_type: None,
                target: None,
                body: Vec::new(),
            })
            .await
            .map_err(|e| EngineApiError::from_call(&self.api, e))?;
        if !answer.status.is_success() {
            let denied = |account: &str| {
                let region = self.api.region();
                (format!("arn:{}:dsql:{region}:{account}:cluster/{id}", partition(region)), Vec::new())
            };
            return Err(EngineApiError::from_answer(&self.api, &answer, "dsql:GetCluster", denied, "Aurora DSQL cluster", id));
        }
        let value: serde_json::Value = serde_json::from_str(&answer.body)
            .map_err(|e| EngineApiError::bad(&self.api, format!("GetCluster answered something that is not JSON: {e}")))?;
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(DsqlCluster {
            id: text("identifier").unwrap_or_else(|| id.to_owned()),
            arn: text("arn").unwrap_or_default(),
            status: text("status").ok_or_else(|| EngineApiError::bad(&self.api, "GetCluster answered without a status"))?,
            endpoint: text("endpoint").filter(|e| !e.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws_api::test_server::TestServer;

    fn api(server: &TestServer) -> DsqlApi {
        let creds = aws_credential_types::Credentials::from_keys("AKIDEXAMPLE", "secret", None);
        DsqlApi::with_credentials(creds, "us-east-1", Some(&server.url()))
    }

    #[tokio::test]
    async fn get_cluster_request_and_answer() {
        let server = TestServer::start(
            200,
            &[("content-type", "application/json")],
            r#"{"identifier":"abcdefghijklmnopqrstuvwxyz","arn":"arn:aws:dsql:us-east-1:123456789012:cluster/abcdefghijklmnopqrstuvwxyz",
                "status":"ACTIVE","creationTime":1.7336E9,"deletionProtectionEnabled":true,
                "endpoint":"abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"}"#,
        )
        .await;
        let c = api(&server).get_cluster("abcdefghijklmnopqrstuvwxyz").await.unwrap();
        assert_eq!(
            c,
            DsqlCluster {
                id: "abcdefghijklmnopqrstuvwxyz".into(),
                arn: "arn:aws:dsql:us-east-1:123456789012:cluster/abcdefghijklmnopqrstuvwxyz".into(),
                status: "ACTIVE".into(),
                endpoint: Some("abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws".into()),
            }
        );
        let sent = server.requests().remove(0);
        assert_eq!((sent.method.as_str(), sent.path.as_str(), sent.body.len()), ("GET", "/cluster/abcdefghijklmnopqrstuvwxyz", 0));
        sent.assert_signed("dsql", "us-east-1");

        // An older answer without `endpoint`: the documented name.
        let server = TestServer::start(200, &[], r#"{"identifier":"c1","arn":"arn:aws:dsql:us-east-1:1:cluster/c1","status":"IDLE"}"#).await;
        let c = api(&server).get_cluster("c1").await.unwrap();
        assert_eq!(c.endpoint_name("us-east-1"), "c1.dsql.us-east-1.on.aws");
        // An identifier is one path segment, whatever it holds.
        let _ = api(&server).get_cluster("a/b c").await;
        assert_eq!(server.requests()[1].path, "/cluster/a%2Fb%20c");
    }

    #[tokio::test]
    async fn errors() {
        let server = TestServer::start(
            403,
            &[("x-amzn-ErrorType", "AccessDeniedException:http://internal.amazon.com/coral/com.amazonaws.dsql/")],
            r#"{"Message":"User: arn:aws:sts::123456789012:assumed-role/Dev/alice is not authorized to perform: dsql:GetCluster"}"#,
        )
        .await;
        let e = api(&server).get_cluster("c1").await.unwrap_err();
        assert!(matches!(e, EngineApiError::AccessDenied { action: "dsql:GetCluster", .. }), "{e:?}");
        assert!(e.hint().starts_with("Allow dsql:GetCluster on arn:aws:dsql:us-east-1:123456789012:cluster/c1 for your IAM identity"), "{}", e.hint());

        let server = TestServer::start(
            404,
            &[("x-amzn-ErrorType", "ResourceNotFoundException")],
            r#"{"message":"Cluster not found","resourceId":"c1","resourceType":"cluster"}"#,
        )
        .await;
        let e = api(&server).get_cluster("c1").await.unwrap_err();
        assert!(matches!(e, EngineApiError::NotFound { what: "Aurora DSQL cluster", .. }), "{e:?}");
        assert!(e.hint().contains("aws dsql list-clusters --region us-east-1"), "{}", e.hint());

        let server = TestServer::start(429, &[("x-amzn-ErrorType", "ThrottlingException")], r#"{"message":"Rate exceeded"}"#).await;
        let e = api(&server).get_cluster("c1").await.unwrap_err();
        assert!(matches!(&e, EngineApiError::Service { code, .. } if code == "ThrottlingException"), "{e:?}");
    }
}
