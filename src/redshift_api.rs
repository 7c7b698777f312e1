//! The Amazon Redshift (provisioned) API calls a login needs: GetClusterCredentials,
//! GetClusterCredentialsWithIAM (temporary database credentials) and DescribeClusters (the
//! endpoint by name). The Query protocol (`Version=2012-12-01`, signing name `redshift`), sent by
//! [`crate::aws_api`]; `AWS_ENDPOINT_URL_REDSHIFT` overrides the endpoint.

use std::time::Duration;

use crate::aws_api::{self, field, partition, records, AwsApi, DbCredentials, EngineApiError, Permission};

/// The Redshift API version every request names.
const API_VERSION: &str = "2012-12-01";

/// What GetClusterCredentials asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCredentialsRequest {
    /// The cluster identifier (case-sensitive).
    pub cluster: String,
    /// The database user, without the `IAM:` prefix the answer carries.
    pub db_user: String,
    pub db_name: Option<String>,
    /// 900 to 3600 s.
    pub duration: Duration,
    /// Create the user if it does not exist (the answer's user is then `IAMA:…`).
    pub auto_create: bool,
    /// Groups the user joins for this session.
    pub db_groups: Vec<String>,
}

/// What DescribeClusters says about one cluster, as far as a connection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedshiftCluster {
    pub id: String,
    /// `ClusterStatus`: `available`, `paused`, `resizing`, …
    pub status: String,
    /// `Endpoint/Address`; none while the cluster is being created.
    pub endpoint: Option<String>,
    pub port: Option<u16>,
    /// `DBName`: the database created with the cluster.
    pub db_name: Option<String>,
    pub namespace_arn: Option<String>,
}

/// A Redshift API client.
#[derive(Debug, Clone)]
pub struct RedshiftApi {
    api: AwsApi,
}

impl RedshiftApi {
    /// From the loaded AWS configuration: its credentials, and `AWS_ENDPOINT_URL_REDSHIFT`,
    /// `AWS_ENDPOINT_URL` or the configuration's endpoint URL when set.
    pub fn from_sdk_config(sdk: &aws_config::SdkConfig, region: &str) -> Self {
        RedshiftApi {
            api: AwsApi::from_sdk_config(&aws_api::REDSHIFT, sdk, region),
        }
    }

    /// With fixed credentials and no environment lookups at all (tests, the demo).
    pub fn with_credentials(credentials: aws_credential_types::Credentials, region: &str, endpoint: Option<&str>) -> Self {
        RedshiftApi {
            api: AwsApi::with_credentials(&aws_api::REDSHIFT, credentials, region, endpoint),
        }
    }

    /// The caller's account id (from STS) for the ARNs an AccessDenied HINT names.
    pub fn with_account(self, account: Option<String>) -> Self {
        RedshiftApi {
            api: self.api.with_account(account),
        }
    }

    /// `arn:PARTITION:redshift:REGION:ACCOUNT:TYPE:CLUSTER/NAME`.
    fn arn(&self, account: &str, kind: &str, cluster: &str, name: &str) -> String {
        let region = self.api.region();
        format!("arn:{}:redshift:{region}:{account}:{kind}:{cluster}/{name}", partition(region))
    }

    /// GetClusterCredentials: a temporary password for `r.db_user` (answered as `IAM:user`, or
    /// `IAMA:user` with auto-create).
    pub async fn get_cluster_credentials(&self, r: &ClusterCredentialsRequest) -> Result<DbCredentials, EngineApiError> {
        let duration = r.duration.as_secs().to_string();
        let mut params = vec![("ClusterIdentifier", r.cluster.clone()), ("DbUser", r.db_user.clone())];
        if let Some(db) = &r.db_name {
            params.push(("DbName", db.clone()));
        }
        params.push(("DurationSeconds", duration));
        if r.auto_create {
            params.push(("AutoCreate", "true".into()));
        }
        let groups: Vec<(String, String)> = r
            .db_groups
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("DbGroups.DbGroup.{}", i + 1), g.clone()))
            .collect();
        let mut pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        pairs.extend(groups.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let denied = |account: &str| {
            let user_arn = self.arn(account, "dbuser", &r.cluster, &r.db_user);
            let mut also = Vec::new();
            if r.auto_create {
                also.push(Permission {
                    action: "redshift:CreateClusterUser",
                    resource: user_arn.clone(),
                });
            }
            for group in &r.db_groups {
                also.push(Permission {
                    action: "redshift:JoinGroup",
                    resource: self.arn(account, "dbgroup", &r.cluster, group),
                });
            }
            (user_arn, also)
        };
        let xml = self
            .call("GetClusterCredentials", "redshift:GetClusterCredentials", &pairs, denied, &r.cluster)
            .await?;
        self.credentials(&xml, "GetClusterCredentialsResult")
    }

    /// GetClusterCredentialsWithIAM: a temporary password for the database user the IAM identity
    /// maps to (`IAM:user`, `IAMR:role`).
    pub async fn get_cluster_credentials_with_iam(
        &self,
        cluster: &str,
        db_name: Option<&str>,
        duration: Duration,
    ) -> Result<DbCredentials, EngineApiError> {
        let duration = duration.as_secs().to_string();
        let mut pairs = vec![("ClusterIdentifier", cluster)];
        if let Some(db) = db_name {
            pairs.push(("DbName", db));
        }
        pairs.push(("DurationSeconds", &duration));
        let denied = |account: &str| (self.arn(account, "dbname", cluster, db_name.unwrap_or("*")), Vec::new());
        let xml = self
            .call("GetClusterCredentialsWithIAM", "redshift:GetClusterCredentialsWithIAM", &pairs, denied, cluster)
            .await?;
        self.credentials(&xml, "GetClusterCredentialsWithIAMResult")
    }

    /// DescribeClusters for one identifier.
    pub async fn describe_cluster(&self, cluster: &str) -> Result<RedshiftCluster, EngineApiError> {
        let denied = |account: &str| {
            let region = self.api.region();
            (format!("arn:{}:redshift:{region}:{account}:cluster:{cluster}", partition(region)), Vec::new())
        };
        let xml = self
            .call("DescribeClusters", "redshift:DescribeClusters", &[("ClusterIdentifier", cluster)], denied, cluster)
            .await?;
        let record = records(&xml, "Cluster")
            .map_err(|e| EngineApiError::bad(&self.api, e))?
            .into_iter()
            .next()
            .ok_or_else(|| EngineApiError::bad(&self.api, "no Cluster in the DescribeClusters answer"))?;
        Ok(RedshiftCluster {
            id: field(&record, "ClusterIdentifier").unwrap_or(cluster).to_owned(),
            status: field(&record, "ClusterStatus").unwrap_or_default().to_owned(),
            endpoint: field(&record, "Endpoint/Address").map(str::to_owned),
            port: field(&record, "Endpoint/Port").and_then(|p| p.parse().ok()),
            db_name: field(&record, "DBName").map(str::to_owned),
            namespace_arn: field(&record, "ClusterNamespaceArn").map(str::to_owned),
        })
    }

    /// The user, password and expiry of a credentials answer.
    fn credentials(&self, xml: &str, result: &str) -> Result<DbCredentials, EngineApiError> {
        let record = records(xml, result)
            .map_err(|e| EngineApiError::bad(&self.api, e))?
            .into_iter()
            .next()
            .ok_or_else(|| EngineApiError::bad(&self.api, format!("no {result} in the answer")))?;
        let missing = |what: &str| EngineApiError::bad(&self.api, format!("{result} without {what}"));
        Ok(DbCredentials {
            db_user: field(&record, "DbUser").ok_or_else(|| missing("DbUser"))?.trim().to_owned(),
            password: crate::aws_api::TemporaryPassword::new(field(&record, "DbPassword").ok_or_else(|| missing("DbPassword"))?),
            expiration: field(&record, "Expiration")
                .and_then(aws_api::parse_timestamp)
                .ok_or_else(|| missing("a readable Expiration"))?,
        })
    }

    /// One Query call: the answer's XML on success, else the error AWS names.
    async fn call(
        &self,
        action: &str,
        permission: &'static str,
        params: &[(&str, &str)],
        denied: impl FnOnce(&str) -> (String, Vec<Permission>),
        cluster: &str,
    ) -> Result<String, EngineApiError> {
        let answer = self
            .api
            .query(action, API_VERSION, params)
            .await
            .map_err(|e| EngineApiError::from_call(&self.api, e))?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        Err(EngineApiError::from_answer(&self.api, &answer, permission, denied, "Redshift cluster", cluster))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::aws_api::test_server::{Recorded, TestServer};

    fn api(server: &TestServer) -> RedshiftApi {
        let creds = aws_credential_types::Credentials::from_keys("AKIDEXAMPLE", "secret", None);
        RedshiftApi::with_credentials(creds, "us-east-1", Some(&server.url()))
    }

    fn form(request: &Recorded) -> String {
        String::from_utf8(request.body.clone()).unwrap()
    }

    #[tokio::test]
    async fn get_cluster_credentials_request_and_answer() {
        let server = TestServer::start(
            200,
            &[],
            r#"<GetClusterCredentialsResponse xmlns="http://redshift.amazonaws.com/doc/2012-12-01/">
  <GetClusterCredentialsResult>
    <DbUser>IAMA:alice</DbUser>
    <DbPassword>EXAMPLEjArE3hcnQj8zt4XQj9Xtma8oxYEM8OyxpDHwXVPyJYBDm/gqX2Eeaq6P3DgTzgPg==</DbPassword>
    <Expiration>2026-12-07T15:10:00Z</Expiration>
  </GetClusterCredentialsResult>
  <ResponseMetadata><RequestId>cb8a3c43-b27b-11e6-a2a2-0b4a2a0a6b1c</RequestId></ResponseMetadata>
</GetClusterCredentialsResponse>"#,
        )
        .await;
        let request = ClusterCredentialsRequest {
            cluster: "examplecluster".into(),
            db_user: "alice".into(),
            db_name: Some("dev".into()),
            duration: Duration::from_secs(900),
            auto_create: true,
            db_groups: vec!["analysts".into(), "etl users".into()],
        };
        let creds = api(&server).get_cluster_credentials(&request).await.unwrap();
        assert_eq!(creds.db_user, "IAMA:alice");
        assert_eq!(creds.password.expose(), "EXAMPLEjArE3hcnQj8zt4XQj9Xtma8oxYEM8OyxpDHwXVPyJYBDm/gqX2Eeaq6P3DgTzgPg==");
        assert_eq!(creds.expiration, SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_656_200));
        let sent = server.requests().remove(0);
        assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/"));
        assert_eq!(
            form(&sent),
            "Action=GetClusterCredentials&Version=2012-12-01&ClusterIdentifier=examplecluster&DbUser=alice\
             &DbName=dev&DurationSeconds=900&AutoCreate=true&DbGroups.DbGroup.1=analysts\
             &DbGroups.DbGroup.2=etl%20users"
        );
        assert_eq!(sent.header("content-type"), Some("application/x-www-form-urlencoded; charset=utf-8"));
        sent.assert_signed("redshift", "us-east-1");
    }

    #[tokio::test]
    async fn with_iam_and_describe_clusters() {
        let server = TestServer::start(
            200,
            &[],
            "<GetClusterCredentialsWithIAMResponse><GetClusterCredentialsWithIAMResult><DbUser>IAMR:dev-role</DbUser>\
             <DbPassword>pw&amp;1</DbPassword><Expiration>2026-12-07T15:10:00.000Z</Expiration>\
             <NextRefreshTime>2026-12-07T15:05:00Z</NextRefreshTime></GetClusterCredentialsWithIAMResult>\
             </GetClusterCredentialsWithIAMResponse>",
        )
        .await;
        let creds = api(&server)
            .get_cluster_credentials_with_iam("examplecluster", None, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!((creds.db_user.as_str(), creds.password.expose()), ("IAMR:dev-role", "pw&1"));
        assert_eq!(
            form(&server.requests()[0]),
            "Action=GetClusterCredentialsWithIAM&Version=2012-12-01&ClusterIdentifier=examplecluster&DurationSeconds=3600"
        );

        let server = TestServer::start(
            200,
            &[],
            r#"<DescribeClustersResponse xmlns="http://redshift.amazonaws.com/doc/2012-12-01/"><DescribeClustersResult><Clusters><Cluster>
  <ClusterIdentifier>examplecluster</ClusterIdentifier><ClusterStatus>available</ClusterStatus>
  <Endpoint><Address>examplecluster.abc123xyz789.us-east-1.redshift.amazonaws.com</Address><Port>5439</Port>
    <VpcEndpoints><VpcEndpoint><VpcEndpointId>vpce-1</VpcEndpointId></VpcEndpoint></VpcEndpoints></Endpoint>
  <DBName>dev</DBName><MasterUsername>awsuser</MasterUsername>
  <ClusterNamespaceArn>arn:aws:redshift:us-east-1:123456789012:namespace:0b1fd2ea-7f4b-4c1c-9d0e-7a0e5f0f7e0a</ClusterNamespaceArn>
</Cluster></Clusters></DescribeClustersResult></DescribeClustersResponse>"#,
        )
        .await;
        let cluster = api(&server).describe_cluster("examplecluster").await.unwrap();
        assert_eq!(
            cluster,
            RedshiftCluster {
                id: "examplecluster".into(),
                status: "available".into(),
                endpoint: Some("examplecluster.abc123xyz789.us-east-1.redshift.amazonaws.com".into()),
                port: Some(5439),
                db_name: Some("dev".into()),
                namespace_arn: Some("arn:aws:redshift:us-east-1:123456789012:namespace:0b1fd2ea-7f4b-4c1c-9d0e-7a0e5f0f7e0a".into()),
            }
        );
        assert_eq!(form(&server.requests()[0]), "Action=DescribeClusters&Version=2012-12-01&ClusterIdentifier=examplecluster");
    }

    const DENIED: &str = "<ErrorResponse xmlns=\"http://redshift.amazonaws.com/doc/2012-12-01/\"><Error><Type>Sender</Type>\
        <Code>AccessDenied</Code><Message>User: arn:aws:sts::123456789012:assumed-role/Dev/alice is not authorized to \
        perform: redshift:GetClusterCredentials on resource: arn:aws:redshift:us-east-1:123456789012:dbuser:examplecluster/alice\
        </Message></Error><RequestId>x</RequestId></ErrorResponse>";

    #[tokio::test]
    async fn access_denied_names_each_permission_and_arn() {
        let server = TestServer::start(403, &[], DENIED).await;
        let request = ClusterCredentialsRequest {
            cluster: "examplecluster".into(),
            db_user: "alice".into(),
            db_name: None,
            duration: Duration::from_secs(900),
            auto_create: true,
            db_groups: vec!["analysts".into()],
        };
        let e = api(&server).get_cluster_credentials(&request).await.unwrap_err();
        assert!(matches!(e, EngineApiError::AccessDenied { action: "redshift:GetClusterCredentials", .. }), "{e:?}");
        let hint = e.hint();
        assert!(
            hint.starts_with(
                "Allow redshift:GetClusterCredentials on arn:aws:redshift:us-east-1:123456789012:dbuser:examplecluster/alice \
                 for your IAM identity, and redshift:CreateClusterUser on \
                 arn:aws:redshift:us-east-1:123456789012:dbuser:examplecluster/alice, and redshift:JoinGroup on \
                 arn:aws:redshift:us-east-1:123456789012:dbgroup:examplecluster/analysts"
            ),
            "{hint}"
        );
        // A known account wins; without any, ACCOUNT; the dbname ARN for WithIAM.
        let server = TestServer::start(403, &[], "<ErrorResponse><Error><Code>AccessDenied</Code><Message>denied</Message></Error></ErrorResponse>").await;
        let e = api(&server)
            .get_cluster_credentials_with_iam("examplecluster", Some("dev"), Duration::from_secs(900))
            .await
            .unwrap_err();
        assert!(e.hint().starts_with("Allow redshift:GetClusterCredentialsWithIAM on arn:aws:redshift:us-east-1:ACCOUNT:dbname:examplecluster/dev for"), "{}", e.hint());
        let e = api(&server).with_account(Some("210987654321".into())).describe_cluster("c1").await.unwrap_err();
        assert!(e.hint().starts_with("Allow redshift:DescribeClusters on arn:aws:redshift:us-east-1:210987654321:cluster:c1 for"), "{}", e.hint());
    }

    #[tokio::test]
    async fn other_errors() {
        let not_found = "<ErrorResponse><Error><Type>Sender</Type><Code>ClusterNotFound</Code>\
                         <Message>Cluster nope not found.</Message></Error></ErrorResponse>";
        let server = TestServer::start(404, &[], not_found).await;
        let e = api(&server).describe_cluster("nope").await.unwrap_err();
        assert!(matches!(&e, EngineApiError::NotFound { id, .. } if id == "nope"), "{e:?}");
        assert!(e.hint().contains("aws redshift describe-clusters --region us-east-1"), "{}", e.hint());

        let paused = "<ErrorResponse><Error><Code>InvalidClusterState</Code><Message>Cluster examplecluster is paused.</Message></Error></ErrorResponse>";
        let server = TestServer::start(400, &[], paused).await;
        let e = api(&server).get_cluster_credentials_with_iam("examplecluster", None, Duration::from_secs(900)).await.unwrap_err();
        assert!(matches!(e, EngineApiError::Invalid { .. }) && e.hint().contains("resume-cluster"), "{e:?}");

        let expired = "<ErrorResponse><Error><Code>ExpiredToken</Code><Message>The security token included in the request is expired</Message></Error></ErrorResponse>";
        let server = TestServer::start(403, &[], expired).await;
        let e = api(&server).describe_cluster("c").await.unwrap_err();
        assert!(matches!(e, EngineApiError::CredentialsRefused { .. }), "{e:?}");

        let server = TestServer::start(200, &[], "<GetClusterCredentialsWithIAMResponse/>").await;
        let e = api(&server).get_cluster_credentials_with_iam("c", None, Duration::from_secs(900)).await.unwrap_err();
        assert!(matches!(e, EngineApiError::BadResponse { .. }), "{e:?}");

        let unreachable = RedshiftApi::with_credentials(
            aws_credential_types::Credentials::from_keys("a", "b", None),
            "us-east-1",
            Some("http://192.0.2.1:1"),
        );
        let e = unreachable.describe_cluster("c").await.unwrap_err();
        assert!(e.hint().contains("AWS_ENDPOINT_URL_REDSHIFT overrides the endpoint"), "{}", e.hint());
    }
}
