//! Finding things by name and asking who we are: STS GetCallerIdentity, RDS DescribeDBInstances /
//! DescribeDBClusters, SSM DescribeInstanceInformation — each against the simulator's
//! SigV4-checked Query/JSON APIs.

mod common;

use std::process::{Command, Stdio};

use clap::Parser;
use common::binary::*;
use common::SimAwsSetup;
use rds_auth_proxy::app::{AwsSetup, Credentials};
use rds_auth_proxy::auth::identity::{IdentityError, StsApi};
use rds_auth_proxy::cli::Cli;
use rds_auth_proxy::lookup::{check_db, resolve_args, DbRef, LookupError, RdsApi, RdsApiError};
use rds_auth_proxy_sim::rds_api::{RdsApiOptions, RdsApiSim, SIM_CLUSTER_READER_ENDPOINT, SIM_DBI_RESOURCE_ID};
use rds_auth_proxy_sim::runner::{SIM_ENDPOINT, SIM_REGION};
use rds_auth_proxy_sim::sigv4::SimCredentials;
use rds_auth_proxy_sim::ssm::{SsmSim, SsmSimOptions, SIM_TARGET_ID};

const KEY_ID: &str = "AKIASIMLOOKUPTEST001";
const SECRET: &str = "lookup-test-secret-access-key-0000000000";

fn creds(secret: &str) -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::from_keys(KEY_ID, secret, None)
}

#[tokio::test]
async fn sts_get_caller_identity_names_the_simulated_user() {
    rds_auth_proxy::tls::install_default_provider();
    let sts = rds_auth_proxy_sim::sts::start(SimCredentials::new(KEY_ID, SECRET)).await.unwrap();
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
        redshift_endpoint: None,
        redshift_serverless_endpoint: None,
        dsql_endpoint: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_db_instance_and_auto_node_by_name() {
    let sim = common::start_sim().await;
    let mut cmd = sim_command(&sim);
    cmd.args([
        "--db-instance", "simdb", "--via", "ssm", "--ssm-target", "auto", "--ssm-tag", "role=db-tunnel",
        "--ca-bundle", sim.ca_file.to_str().unwrap(), "--port", "0",
    ]);
    let mut proxy = Running::start(cmd);
    assert_eq!(proxy.ready_line()["fields"]["target"], format!("{SIM_ENDPOINT}:5432"));
    let log = proxy.startup_log();
    assert!(log.contains("found the database by name") && log.contains("picked the online managed node"), "{log}");
    assert!(log.contains(SIM_TARGET_ID), "{log}");
    let out = psql_at(proxy.port, "db_user", "postgres", "SELECT current_user");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "db_user");
    proxy.stop();

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
    sim.stop().await;
}

/// Runs doctor in process against `sim` with `flags`; returns the report and its printed lines.
async fn doctor(sim: &rds_auth_proxy_sim::Simulator, flags: &[&str]) -> (rds_auth_proxy::doctor::Report, String) {
    let args = proxy_args(flags);
    let mut out = String::new();
    let report = rds_auth_proxy::doctor::run(&args, Some("postgres"), Credentials::FixedWith(sim.aws_setup()), |step| {
        out.push_str(&format!("{step}\n"));
    })
    .await;
    (report, out)
}

/// The failed step's name, cause and fix.
fn failure(report: &rds_auth_proxy::doctor::Report) -> (&'static str, String, String) {
    use rds_auth_proxy::doctor::Outcome;
    let failed: Vec<_> = report
        .steps
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Failed { cause, fix } => Some((s.name, cause.clone(), fix.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "exactly one failed step: {report:#?}");
    assert!(!report.passed(), "a failed step fails the run (exit code 1)");
    let after = report.steps.iter().skip_while(|s| s.name != failed[0].0).skip(1);
    for s in after {
        assert_eq!(s.outcome, Outcome::Skipped, "{} after the failure", s.name);
    }
    failed[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_and_names_each_injected_failure() {
    let sim = common::start_sim().await;
    let ca = sim.ca_file.to_str().unwrap().to_owned();
    let ssm: Vec<&str> = vec!["--db-instance", "simdb", "--via", "ssm", "--ssm-target", "auto", "--ca-bundle", &ca, "--db-user", "db_user", "--region", SIM_REGION];

    let (report, out) = doctor(&sim, &ssm).await;
    assert!(report.passed(), "{out}");
    let names: Vec<_> = report.steps.iter().map(|s| s.name).collect();
    assert_eq!(names, ["credentials", "region", "database", "ssm node", "reach", "tls", "iam login", "select 1"]);
    assert!(out.contains("arn:aws:iam::123456789012:user/sim-user"), "{out}");
    assert!(out.contains(SIM_DBI_RESOURCE_ID), "{out}");
    assert!(out.contains(&format!("{SIM_TARGET_ID} online, StartSession allowed")), "{out}");
    assert!(out.contains(&format!("certificate valid for {SIM_ENDPOINT}")), "{out}");
    assert!(report.step("select 1").map(|s| format!("{:?}", s.outcome)).unwrap().contains("PostgreSQL"), "{out}");

    // Wrong region: the endpoint's name says otherwise.
    let target = format!("{SIM_ENDPOINT}:5432");
    let direct = ["--target", &target, "--via", "direct", "--connect-addr", &sim.front_addr.to_string(), "--ca-bundle", &ca, "--db-user", "db_user"];
    let mut flags = direct.to_vec();
    flags.extend(["--region", "us-west-2"]);
    let (name, cause, fix) = failure(&doctor(&sim, &flags).await.0);
    assert_eq!(name, "region");
    assert_eq!(cause, "the endpoint's name is in eu-central-1, but the region in use is us-west-2");
    assert!(fix.starts_with("Use --region eu-central-1"), "{fix}");

    // The node offline.
    sim.ssm.options().update(|o| o.node_offline = true);
    let mut flags = ssm.clone();
    flags[5] = SIM_TARGET_ID;
    let (name, cause, fix) = failure(&doctor(&sim, &flags).await.0);
    sim.ssm.options().update(|o| o.node_offline = false);
    assert_eq!(name, "ssm node");
    assert_eq!(cause, format!("managed node {SIM_TARGET_ID} is ConnectionLost (not Online)"));
    assert!(fix.starts_with("Start the instance or its SSM Agent"), "{fix}");

    // AccessDenied on StartSession: the action and both resources.
    sim.ssm.options().update(|o| o.refuse_start = Some("AccessDeniedException".into()));
    let (name, cause, fix) = failure(&doctor(&sim, &ssm).await.0);
    sim.ssm.options().update(|o| o.refuse_start = None);
    assert_eq!(name, "ssm node");
    assert!(cause.contains("not authorized to call ssm:StartSession"), "{cause}");
    assert!(fix.starts_with("Allow ssm:StartSession for your IAM identity on"), "{fix}");
    assert!(fix.contains(&format!("instance/{SIM_TARGET_ID}")) && fix.contains("document/AWS-StartPortForwardingSessionToRemoteHost"), "{fix}");

    // Port unreachable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut flags = direct.to_vec();
    flags[5] = &closed;
    let (name, cause, fix) = failure(&doctor(&sim, &flags).await.0);
    assert_eq!(name, "reach");
    assert!(cause.contains(&format!("cannot connect to {closed}")), "{cause}");
    assert!(fix.starts_with(&format!("Check that {closed} is reachable from this machine")), "{fix}");

    // Wrong CA: the simulator's CA not given, so the built-in RDS bundle refuses its certificate.
    let flags: Vec<&str> = direct.iter().copied().filter(|f| *f != "--ca-bundle" && *f != ca).collect();
    let (name, cause, fix) = failure(&doctor(&sim, &flags).await.0);
    assert_eq!(name, "tls");
    assert!(cause.starts_with(&format!("TLS handshake with {SIM_ENDPOINT} failed")), "{cause}");
    assert!(fix.contains("not a CNAME or an IP"), "{fix}");

    // A user without GRANT rds_iam.
    let mut flags = direct.to_vec();
    flags[9] = "postgres";
    let (name, cause, fix) = failure(&doctor(&sim, &flags).await.0);
    assert_eq!(name, "iam login");
    assert!(cause.contains("for user \"postgres\"") && cause.contains("not an IAM database user"), "{cause}");
    assert!(fix.contains("GRANT rds_iam TO \"postgres\";"), "{fix}");

    // TLS name mismatch: a CNAME-like name, and an IP address, given instead of the endpoint name.
    for given in ["localhost:5432", "127.0.0.1:5432"] {
        let flags = ["--target", given, "--via", "direct", "--connect-addr", &sim.front_addr.to_string(), "--ca-bundle", &ca, "--db-user", "db_user", "--region", SIM_REGION]
            .map(str::to_owned);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (name, cause, fix) = failure(&doctor(&sim, &flags).await.0);
        let host = given.rsplit_once(':').unwrap().0;
        assert_eq!(name, "tls", "{given}");
        assert!(cause.starts_with(&format!("TLS handshake with {host} failed")), "{cause}");
        assert!(
            fix.starts_with(&format!("The server's certificate is not valid for the name {host}: give --target the endpoint name RDS shows")),
            "{fix}"
        );
        assert!(fix.contains("not a CNAME or an IP address"), "{fix}");
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_command_exit_codes() {
    let sim = common::start_sim().await;
    let ca = sim.ca_file.to_str().unwrap().to_owned();
    let out = sim_command(&sim)
        .args(["doctor", "--db-instance", "simdb", "--via", "ssm", "--ssm-target", "auto", "--ca-bundle", &ca, "--db-user", "db_user"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.starts_with("[ ok ]")).count(), 8, "{stdout}");
    let select = stdout.lines().find(|l| l.starts_with("[ ok ] select 1")).unwrap_or_default();
    assert!(select.contains("PostgreSQL 1"), "the server version: {stdout}");
    assert!(stdout.ends_with("all checks passed\n"), "{stdout}");

    sim.ssm.options().update(|o| o.refuse_start = Some("AccessDeniedException".into()));
    let out = sim_command(&sim)
        .args(["doctor", "--db-instance", "simdb", "--via", "ssm", "--ssm-target", "auto", "--ca-bundle", &ca, "--db-user", "db_user"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("[FAIL] ssm node") && stdout.contains("       fix: Allow ssm:StartSession"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("[skip]")).count(), 4, "{stdout}");
    let out = sim_command(&sim).args(["doctor", "--target", SIM_ENDPOINT]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_iam_token_gets_the_rds_db_connect_arn_with_the_looked_up_resource_id() {
    let sim = common::start_sim().await;
    let ca = sim.ca_file.to_str().unwrap().to_owned();
    let front = sim.front_addr.to_string();
    let setup = Credentials::FixedWith(sim.aws_setup());
    let mut args = proxy_args(&["--db-instance", "simdb", "--connect-addr", &front, "--ca-bundle", &ca, "--region", SIM_REGION, "--port", "0"]);
    let resolved = resolve_args(&mut args, &setup).await.unwrap();
    let mut config = rds_auth_proxy::config::Config::from_args(&args).unwrap();
    config.dbi_resource_id = resolved.db.and_then(|d| d.description.resource_id);
    let proxy = rds_auth_proxy::app::Proxy::bind(&config, Credentials::FixedWith(sim.aws_setup())).await.unwrap();
    let proxy = common::RunningProxy::spawn(proxy);
    assert!(common::connect(&proxy, "db_user").await.is_ok(), "a good token logs in");
    // RDS refuses the token and the retry with fresh credentials: "PAM authentication failed".
    sim.front_state.reject_next.store(2, std::sync::atomic::Ordering::SeqCst);
    let err = common::connect(&proxy, "db_user").await.unwrap_err();
    let (code, message, hint) = common::db_error(&err);
    assert_eq!(code, "28000");
    assert_eq!(message, "PAM authentication failed for user \"db_user\"");
    let hint = hint.expect("a hint");
    assert!(
        hint.starts_with(&format!("RDS refused the IAM token. Allow rds-db:connect for your IAM identity on arn:aws:rds-db:eu-central-1:<account>:dbuser:{SIM_DBI_RESOURCE_ID}/db_user")),
        "{hint}"
    );
    proxy.stop().await;
    sim.stop().await;
}

#[test]
fn an_sso_profile_without_a_session_gets_the_exact_sso_login_command() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config");
    std::fs::write(
        &config,
        "[profile dev-sso]\nsso_start_url = https://example.awsapps.com/start\nsso_region = eu-central-1\n\
         sso_account_id = 123456789012\nsso_role_name = Dev\nregion = eu-central-1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["token", "--hostname", SIM_ENDPOINT, "--username", "db_user", "--profile", "dev-sso"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("hint: Your IAM Identity Center (SSO) session has expired or was never started: run `aws sso login --profile dev-sso`"), "{err}");
}

/// An AWS config with an IAM Identity Center profile that has no cached session.
fn sso_profile(home: &std::path::Path) -> std::path::PathBuf {
    let config = home.join("config");
    std::fs::write(
        &config,
        "[profile dev-sso]\nsso_start_url = https://example.awsapps.com/start\nsso_region = eu-central-1\n\
         sso_account_id = 123456789012\nsso_role_name = Dev\nregion = eu-central-1\n",
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sso_profile_without_a_session_gets_the_sso_login_command_in_doctor_and_the_proxy() {
    let sim = common::start_sim().await;
    let ca = sim.ca_file.to_str().unwrap().to_owned();
    let front = sim.front_addr.to_string();
    let home = tempfile::tempdir().unwrap();
    let config = sso_profile(home.path());
    let env = |cmd: &mut Command| {
        cmd.env("HOME", home.path())
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true");
    };
    let mut cmd = bare();
    env(&mut cmd);
    let out = cmd
        .args(["doctor", "--profile", "dev-sso", "--target", SIM_ENDPOINT, "--connect-addr", &front, "--ca-bundle", &ca, "--db-user", "db_user"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("[FAIL] credentials"), "{stdout}");
    assert!(
        stdout.contains("fix: Your IAM Identity Center (SSO) session has expired or was never started: run `aws sso login --profile dev-sso`"),
        "{stdout}"
    );

    // The proxy starts (credentials may come later) and tells the client the same.
    let mut cmd = bare();
    env(&mut cmd);
    cmd.args(["--profile", "dev-sso", "--target", SIM_ENDPOINT, "--connect-addr", &front, "--ca-bundle", &ca, "--port", "0"]);
    let mut proxy = Running::start(cmd);
    // Its start-up warning already names the exact command for the profile in use.
    let warning = proxy.find_log("no AWS credentials found yet");
    assert_eq!(warning["level"], "WARN", "{warning}");
    let fix = warning["fields"]["fix"].as_str().unwrap_or_default();
    assert!(fix.contains("run `aws sso login --profile dev-sso`"), "{warning}");
    let out = psql_at(proxy.port, "db_user", "postgres", "SELECT 1");
    proxy.stop();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("HINT:  Your IAM Identity Center (SSO) session has expired or was never started: run `aws sso login --profile dev-sso`"), "{err}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_on_start_session_names_the_action_and_both_resources_to_the_client() {
    let sim = common::start_sim().await;
    let ca = sim.ca_file.to_str().unwrap().to_owned();
    sim.ssm.options().update(|o| o.refuse_start = Some("AccessDeniedException".into()));
    let args = proxy_args(&["--target", SIM_ENDPOINT, "--via", "ssm", "--ssm-target", SIM_TARGET_ID, "--ca-bundle", &ca, "--port", "0"]);
    let config = rds_auth_proxy::config::Config::from_args(&args).unwrap();
    let proxy = rds_auth_proxy::app::Proxy::bind(&config, Credentials::FixedWith(sim.aws_setup())).await.unwrap();
    let proxy = common::RunningProxy::spawn(proxy);
    let err = common::connect(&proxy, "db_user").await.unwrap_err();
    let (code, message, hint) = common::db_error(&err);
    assert_eq!(code, "08001");
    assert!(message.contains("not authorized to call ssm:StartSession"), "{message}");
    assert_eq!(
        hint.as_deref(),
        Some(
            format!(
                "Allow ssm:StartSession for your IAM identity on the managed node \
                 (arn:aws:ec2:{SIM_REGION}:<account>:instance/{SIM_TARGET_ID}) and the document \
                 arn:aws:ssm:{SIM_REGION}::document/AWS-StartPortForwardingSessionToRemoteHost."
            )
            .as_str()
        )
    );
    proxy.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cname_or_an_ip_as_target_gets_the_name_mismatch_hint_from_the_proxy() {
    let sim = common::start_sim().await;
    let ca = sim.ca_file.to_str().unwrap().to_owned();
    let front = sim.front_addr.to_string();
    for given in ["localhost", "127.0.0.1"] {
        let args = proxy_args(&["--target", given, "--connect-addr", &front, "--ca-bundle", &ca, "--region", SIM_REGION, "--port", "0"]);
        let config = rds_auth_proxy::config::Config::from_args(&args).unwrap();
        let proxy = rds_auth_proxy::app::Proxy::bind(&config, Credentials::FixedWith(sim.aws_setup())).await.unwrap();
        let proxy = common::RunningProxy::spawn(proxy);
        let err = common::connect(&proxy, "db_user").await.unwrap_err();
        let (code, message, hint) = common::db_error(&err);
        assert_eq!(code, "08001", "{given}");
        assert!(message.contains(&format!("TLS handshake with {given} failed")), "{message}");
        let hint = hint.expect("a hint");
        assert!(hint.starts_with(&format!("The server's certificate is not valid for the name {given}: give --target the endpoint name RDS shows")), "{hint}");
        proxy.stop().await;
    }
    sim.stop().await;
}

/// `connect-info` run with a clean environment plus `env`; (exit code, stdout, stderr).
fn connect_info(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = bare();
    cmd.env("HOME", "/nonexistent");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.arg("connect-info").args(args).stdin(Stdio::null()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_and_connect_info_read_the_config_file_as_the_proxy_does() {
    let sim = common::start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    // The file's user is the superuser, not granted rds_iam: doctor fails unless a flag wins.
    let text = format!(
        "db_user = \"postgres\"\nca_bundle = \"{}\"\n\n[[target]]\nname = \"sim\"\nendpoint = \"{SIM_ENDPOINT}:5432\"\n\
         via = \"direct\"\nconnect_addr = \"{}\"\nport = 16601\n\n[[target]]\nname = \"other\"\n\
         endpoint = \"other.abc123.eu-central-1.rds.amazonaws.com\"\nport = 16602\n",
        sim.ca_file.display(),
        sim.front_addr
    );
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &text).unwrap();
    let f = file.to_str().unwrap();

    // Two targets and no --target NAME: which one?
    let (code, _, err) = connect_info(&["--config", f], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err, format!("rds-auth-proxy: {f} defines 2 targets (sim, other): pick one with --target NAME\n"));
    // --target NAME picks the table; the top-level keys are its defaults.
    let (code, out, err) = connect_info(&["--config", f, "--target", "sim", "--format", "dsn"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("postgresql://postgres@127.0.0.1:16601/postgres"), "{out}");
    // Precedence: variable over file, flag over variable; RDS_AUTH_PROXY_CONFIG names the file.
    let env = [("RDS_AUTH_PROXY_DB_USER", "env_user"), ("RDS_AUTH_PROXY_CONFIG", f)];
    let (_, out, err) = connect_info(&["--target", "sim", "--format", "dsn"], &env);
    assert!(out.starts_with("postgresql://env_user@127.0.0.1:16601/"), "{out}{err}");
    let (_, out, err) = connect_info(&["--target", "sim", "--format", "dsn", "--db-user", "flag_user", "--port", "16609"], &env);
    assert!(out.starts_with("postgresql://flag_user@127.0.0.1:16609/"), "{out}{err}");
    // The default path, under $HOME/.config.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".config/rds-auth-proxy")).unwrap();
    std::fs::write(home.path().join(".config/rds-auth-proxy/config.toml"), &text).unwrap();
    let (code, out, err) = connect_info(&["--target", "other", "--format", "dsn"], &[("HOME", home.path().to_str().unwrap())]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("postgresql://postgres@127.0.0.1:16602/"), "{out}");

    // doctor: the file's target and user (refused: not rds_iam), then a flag's user (passes).
    let out = sim_command(&sim).args(["doctor", "--config", f, "--target", "sim"]).stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("[FAIL] iam login") && stdout.contains("GRANT rds_iam TO \"postgres\";"), "{stdout}");
    assert!(stdout.contains(&format!("{SIM_ENDPOINT}:5432 answers (direct to {})", sim.front_addr)), "{stdout}");
    let out = sim_command(&sim)
        .args(["doctor", "--target", "sim", "--db-user", "db_user"])
        .env("RDS_AUTH_PROXY_CONFIG", f)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let out = sim_command(&sim).args(["doctor", "--config", f]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pick one with --target NAME"));
    sim.stop().await;
}
