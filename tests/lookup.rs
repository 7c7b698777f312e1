//! Finding things by name and asking who we are: STS GetCallerIdentity, RDS DescribeDBInstances /
//! DescribeDBClusters, SSM DescribeInstanceInformation — each against the simulator's
//! SigV4-checked Query/JSON APIs.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use rds_auth_proxy::app::{AwsSetup, Credentials};
use rds_auth_proxy::auth::identity::{IdentityError, StsApi};
use rds_auth_proxy::cli::Cli;
use rds_auth_proxy::lookup::{check_db, resolve_args, DbRef, LookupError, RdsApi, RdsApiError};
use rds_auth_proxy::sim::rds_api::{RdsApiOptions, RdsApiSim, SIM_CLUSTER_READER_ENDPOINT, SIM_DBI_RESOURCE_ID};
use rds_auth_proxy::sim::runner::{SIM_ENDPOINT, SIM_REGION};
use rds_auth_proxy::sim::sigv4::SimCredentials;
use rds_auth_proxy::sim::ssm::{SsmSim, SsmSimOptions, SIM_TARGET_ID};

const BIN: &str = env!("CARGO_BIN_EXE_rds-auth-proxy");

const KEY_ID: &str = "AKIASIMLOOKUPTEST001";
const SECRET: &str = "lookup-test-secret-access-key-0000000000";

fn creds(secret: &str) -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::from_keys(KEY_ID, secret, None)
}

#[tokio::test]
async fn sts_get_caller_identity_names_the_simulated_user() {
    rds_auth_proxy::tls::install_default_provider();
    let sts = rds_auth_proxy::sim::sts::start(SimCredentials::new(KEY_ID, SECRET)).await.unwrap();
    // Any region's scope is accepted, as every region has an STS endpoint.
    for region in ["eu-central-1", "us-west-2"] {
        let api = StsApi::with_credentials(creds(SECRET), region, Some(&sts.endpoint_url()));
        let who = api.caller_identity().await.expect("identity");
        assert_eq!(who.arn, "arn:aws:iam::123456789012:user/sim-user");
        assert_eq!(who.account, "123456789012");
        assert!(who.user_id.starts_with("AIDA"), "{}", who.user_id);
    }
    let api = StsApi::with_credentials(creds("wrong-secret"), "eu-central-1", Some(&sts.endpoint_url()));
    match api.caller_identity().await {
        Err(e @ IdentityError::Refused { .. }) => {
            let text = e.to_string();
            assert!(text.contains("SignatureDoesNotMatch"), "{text}");
            assert!(!text.contains("wrong-secret"), "{text}");
            assert!(e.hint().contains("secret key"), "{}", e.hint());
        }
        other => panic!("{other:?}"),
    }
    let unknown = aws_credential_types::Credentials::from_keys("AKIANOTKNOWN00000000", SECRET, None);
    let api = StsApi::with_credentials(unknown, "eu-central-1", Some(&sts.endpoint_url()));
    match api.caller_identity().await {
        Err(IdentityError::Refused { code, .. }) => assert_eq!(code, "InvalidClientTokenId"),
        other => panic!("{other:?}"),
    }
    // A port nobody listens on: the error names the endpoint.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}");
    let api = StsApi::with_credentials(creds(SECRET), "eu-central-1", Some(&url));
    match api.caller_identity().await {
        Err(e @ IdentityError::Unreachable { .. }) => assert!(e.to_string().contains(&url), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn rds_describe_calls_against_the_simulator_and_what_is_refused() {
    rds_auth_proxy::tls::install_default_provider();
    let rds = RdsApiSim::start(RdsApiOptions::default(), SimCredentials::new(KEY_ID, SECRET)).await.unwrap();
    let api = RdsApi::with_credentials(creds(SECRET), SIM_REGION, Some(&rds.endpoint_url()));
    let inst = DbRef::Instance("simdb".into());
    let d = api.describe_instance("simdb").await.expect("described");
    assert_eq!(d.resource_id.as_deref(), Some(SIM_DBI_RESOURCE_ID));
    let found = check_db(&inst, d).expect("fit for IAM logins");
    assert_eq!((found.endpoint.as_str(), found.port), (SIM_ENDPOINT, 5432));

    let reader = DbRef::Cluster { id: "simcluster".into(), reader: true };
    let found = check_db(&reader, api.describe_cluster("simcluster").await.unwrap()).unwrap();
    assert_eq!(found.endpoint, SIM_CLUSTER_READER_ENDPOINT);
    assert_eq!(found.description.engine, "aurora-postgresql");

    match api.describe_instance("nope").await {
        Err(e @ RdsApiError::NotFound { .. }) => {
            assert_eq!(e.to_string(), "no DB instance named nope in eu-central-1 (DBInstanceNotFound)");
            assert!(e.hint().contains("aws rds describe-db-instances --region eu-central-1"), "{}", e.hint());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(api.describe_cluster("nope").await, Err(RdsApiError::NotFound { .. })));
    // Signed for another region than the endpoint's: refused as AWS refuses it.
    let elsewhere = RdsApi::with_credentials(creds(SECRET), "us-west-2", Some(&rds.endpoint_url()));
    assert!(matches!(elsewhere.describe_instance("simdb").await, Err(RdsApiError::CredentialsRefused { .. })));
    let bad = RdsApi::with_credentials(creds("wrong"), SIM_REGION, Some(&rds.endpoint_url()));
    match bad.describe_instance("simdb").await {
        Err(e @ RdsApiError::CredentialsRefused { .. }) => assert!(e.hint().contains("aws sso login"), "{}", e.hint()),
        other => panic!("{other:?}"),
    }

    // The knobs: each is refused with its HINT.
    rds.update(|o| o.iam_auth = false);
    let e = check_db(&inst, api.describe_instance("simdb").await.unwrap()).unwrap_err();
    assert_eq!(e.to_string(), "--db-instance simdb: IAM database authentication is not enabled on it");
    assert!(e.hint().ends_with("aws rds modify-db-instance --db-instance-identifier simdb --enable-iam-database-authentication --apply-immediately"), "{}", e.hint());
    rds.update(|o| *o = RdsApiOptions { engine: "mysql".into(), ..RdsApiOptions::default() });
    let e = check_db(&inst, api.describe_instance("simdb").await.unwrap()).unwrap_err();
    assert!(e.hint().contains("PostgreSQL only"), "{}", e.hint());
    rds.update(|o| *o = RdsApiOptions { status: "stopped".into(), ..RdsApiOptions::default() });
    let e = check_db(&inst, api.describe_instance("simdb").await.unwrap()).unwrap_err();
    assert_eq!(e.to_string(), "--db-instance simdb: its status is stopped, not available");
    assert!(e.hint().starts_with("Wait until it is available"), "{}", e.hint());
}

fn proxy_args(flags: &[&str]) -> rds_auth_proxy::cli::ProxyArgs {
    let argv = ["rds-auth-proxy"].iter().chain(flags);
    Cli::try_parse_from(argv).expect("valid flags").proxy
}

#[tokio::test]
async fn ssm_target_auto_picks_an_online_node_deterministically() {
    rds_auth_proxy::tls::install_default_provider();
    let sim_creds = SimCredentials::new(KEY_ID, SECRET);
    let ssm = SsmSim::start(SsmSimOptions::default(), sim_creds, SIM_REGION, Default::default()).await.unwrap();
    let setup = AwsSetup {
        credentials: creds(SECRET),
        ssm_endpoint: Some(ssm.endpoint_url()),
        secrets_endpoint: None,
        sts_endpoint: None,
        rds_endpoint: None,
    };
    let credentials = Credentials::FixedWith(setup);
    let pick = |tags: &'static [&'static str]| {
        let credentials = &credentials;
        async move {
            let mut flags = vec!["--target", SIM_ENDPOINT, "--via", "ssm", "--ssm-target", "auto", "--region", SIM_REGION];
            for t in tags {
                flags.extend(["--ssm-tag", t]);
            }
            let mut args = proxy_args(&flags);
            resolve_args(&mut args, credentials).await.map(|r| (r.node, args.ssm_target))
        }
    };
    // i-00aa… sorts first but is offline; i-0123… is the smallest online id.
    let (node, target) = pick(&[]).await.unwrap();
    assert_eq!(node.as_deref(), Some(SIM_TARGET_ID));
    assert_eq!(target.as_deref(), Some(SIM_TARGET_ID));
    assert_eq!(pick(&["Name=web"]).await.unwrap().0.as_deref(), Some("i-0fedcba9876543210"));
    assert_eq!(pick(&["role=db-tunnel"]).await.unwrap().0.as_deref(), Some(SIM_TARGET_ID));
    ssm.options().update(|o| o.node_offline = true);
    match pick(&["role=db-tunnel"]).await {
        Err(e @ LookupError::NoNode { .. }) => {
            assert_eq!(e.to_string(), "--ssm-target auto: no online managed node matches PingStatus=Online, tag:role=db-tunnel");
            let hint = e.hint();
            assert!(hint.contains("Matching but offline: i-00aaaaaaaaaaaaaa0 (ConnectionLost), i-0123456789abcdef0 (ConnectionLost)."), "{hint}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(pick(&["role"]).await, Err(LookupError::BadTag(_))));
    ssm.stop();
}

/// The binary with only the simulator's AWS identity and endpoints visible.
fn sim_command(sim: &rds_auth_proxy::sim::Simulator) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", &sim.credentials.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &sim.credentials.secret_access_key)
        .env("AWS_REGION", SIM_REGION)
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (name, value) in sim.exports() {
        if name.starts_with("AWS_ENDPOINT_URL_") {
            cmd.env(name, value);
        }
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_db_instance_and_auto_node_by_name() {
    let sim = common::start_sim().await;
    let mut cmd = sim_command(&sim);
    cmd.args([
        "--db-instance", "simdb", "--via", "ssm", "--ssm-target", "auto", "--ssm-tag", "role=db-tunnel",
        "--ca-bundle", sim.ca_file.to_str().unwrap(), "--port", "0", "--log-format", "json",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    let mut seen = Vec::new();
    let port = loop {
        let line = lines.next().unwrap_or_else(|| panic!("no ready line; log: {seen:#?}"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        seen.push(line);
        if v["fields"]["message"] == "ready for connections" {
            assert_eq!(v["fields"]["target"], format!("{SIM_ENDPOINT}:5432"));
            break v["fields"]["listen"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
        }
    };
    let log = seen.join("\n");
    assert!(log.contains("found the database by name") && log.contains("picked the online managed node"), "{log}");
    assert!(log.contains(SIM_TARGET_ID), "{log}");
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "db_user", "-d", "postgres", "-tA", "-c", "SELECT current_user"])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "20")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "db_user");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();

    // IAM authentication off: refused before listening, exit code 2, the fix in the hint.
    sim.rds_api.update(|o| o.iam_auth = false);
    let out = sim_command(&sim)
        .args(["--db-instance", "simdb", "--port", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("rds-auth-proxy: --db-instance simdb: IAM database authentication is not enabled on it"), "{err}");
    assert!(err.contains("hint: rds-auth-proxy logs in with IAM tokens"), "{err}");
    let out = sim_command(&sim).args(["--db-instance", "nosuchdb", "--port", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no DB instance named nosuchdb in eu-central-1"));
    let _ = Duration::ZERO;
    sim.stop().await;
}
