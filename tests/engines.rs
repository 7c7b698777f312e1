//! Aurora DSQL, Amazon Redshift and Redshift Serverless through the proxy, against the
//! simulator's fronts on the same real PostgreSQL: psql and tokio-postgres, direct and through
//! the simulated SSM tunnel; the Redshift user rewrite as `current_user` shows it; temporary
//! credentials reused within their life and asked anew once refused; each HINT with its
//! permission and ARN; the name lookups.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::binary::psql_at;
use common::{db_error, start_proxy_with, start_sim, RunningProxy, SimAwsSetup};
use rds_auth_proxy::app::Credentials;
use rds_auth_proxy_sim::redshift::RedshiftAuthMethod;
use rds_auth_proxy_sim::runner::{
    SIM_DSQL_CLUSTER, SIM_DSQL_ENDPOINT, SIM_REDSHIFT_CLUSTER, SIM_REDSHIFT_DB, SIM_REDSHIFT_ENDPOINT,
    SIM_REDSHIFT_SERVERLESS_ENDPOINT, SIM_REDSHIFT_USER, SIM_REDSHIFT_WORKGROUP, SIM_REGION,
};
use rds_auth_proxy_sim::Simulator;

/// How the proxy reaches the front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Ssm,
}

/// Flags for a proxy in front of `endpoint` (no port: the engine's default), trusting the
/// simulator's ATS-like root as DSQL and Redshift names chain to Amazon Trust Services.
fn engine_args(sim: &Simulator, endpoint: &str, front: std::net::SocketAddr, via: Via, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--target".into(),
        endpoint.into(),
        "--proxy-ca-bundle".into(),
        sim.proxy_ca_file.display().to_string(),
        "--port".into(),
        "0".into(),
    ];
    match via {
        Via::Direct => args.extend(["--via".into(), "direct".into(), "--connect-addr".into(), front.to_string()]),
        Via::Ssm => args.extend(["--via".into(), "ssm".into(), "--ssm-target".into(), sim.ssm.target_id().to_owned()]),
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

async fn proxy(sim: &Simulator, args: &[String]) -> RunningProxy {
    start_proxy_with(args, Credentials::FixedWith(sim.aws_setup())).await
}

async fn client(proxy: &RunningProxy, user: &str, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn = format!("host={} port={} user={user} dbname={db} connect_timeout=20", proxy.addr.ip(), proxy.addr.port());
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn current_user(proxy: &RunningProxy, user: &str, db: &str) -> String {
    let c = client(proxy, user, db).await.unwrap_or_else(|e| panic!("login as {user}: {e:?}"));
    c.query_one("select current_user::text", &[]).await.unwrap().get(0)
}

/// `select current_user` through psql (blocking, so off the runtime's threads).
async fn psql_current_user(proxy: &RunningProxy, user: &str, db: &str) -> String {
    let (port, user, db) = (proxy.addr.port(), user.to_owned(), db.to_owned());
    let out = tokio::task::spawn_blocking(move || psql_at(port, &user, &db, "select current_user"))
        .await
        .unwrap();
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsql_admin_and_other_roles_direct_and_through_ssm() {
    let sim = start_sim().await;
    for via in [Via::Direct, Via::Ssm] {
        let before = sim.dsql_state.accepted.load(Ordering::Relaxed);
        let p = proxy(&sim, &engine_args(&sim, SIM_DSQL_ENDPOINT, sim.dsql_addr, via, &[])).await;
        assert_eq!(current_user(&p, "admin", "postgres").await, "admin", "{via:?}");
        assert_eq!(current_user(&p, "dsql_reader", "postgres").await, "dsql_reader", "{via:?}");
        assert_eq!(psql_current_user(&p, "admin", "postgres").await, "admin", "{via:?}");
        assert_eq!(psql_current_user(&p, "dsql_reader", "postgres").await, "dsql_reader", "{via:?}");
        // Each login was checked by the front: DbConnectAdmin for admin, DbConnect for the role.
        assert_eq!(sim.dsql_state.accepted.load(Ordering::Relaxed) - before, 4, "{via:?}");
        p.stop().await;
    }
    assert_eq!(sim.dsql_state.rejected.load(Ordering::Relaxed), 0);
    assert_eq!(sim.dsql_state.no_sni.load(Ordering::Relaxed), 0, "SNI is sent, also through SSM");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redshift_logs_in_as_the_user_the_credentials_name() {
    let sim = start_sim().await;
    let api = sim.redshift_api.control().clone();

    // GetClusterCredentials for the client's user: Redshift answers IAM:alice, which logs in as
    // alice; one API call serves both logins.
    let p = proxy(&sim, &engine_args(&sim, SIM_REDSHIFT_ENDPOINT, sim.redshift_addr, Via::Direct, &[])).await;
    assert_eq!(current_user(&p, SIM_REDSHIFT_USER, SIM_REDSHIFT_DB).await, SIM_REDSHIFT_USER);
    assert_eq!(psql_current_user(&p, SIM_REDSHIFT_USER, SIM_REDSHIFT_DB).await, SIM_REDSHIFT_USER);
    assert_eq!(api.calls("GetClusterCredentials"), 1, "credentials are reused within their life");
    // Whatever the front asks: MD5 (above), cleartext, Redshift's SHA-256 digest (code 13).
    for method in [RedshiftAuthMethod::Cleartext, RedshiftAuthMethod::Sha256Digest] {
        sim.redshift_state.set_auth_method(method);
        assert_eq!(current_user(&p, SIM_REDSHIFT_USER, SIM_REDSHIFT_DB).await, SIM_REDSHIFT_USER, "{method:?}");
    }
    sim.redshift_state.set_auth_method(RedshiftAuthMethod::Md5);
    p.stop().await;

    // GetClusterCredentialsWithIAM: the user follows the IAM identity, whatever the client says;
    // through SSM too.
    for via in [Via::Direct, Via::Ssm] {
        let p = proxy(&sim, &engine_args(&sim, SIM_REDSHIFT_ENDPOINT, sim.redshift_addr, via, &["--redshift-auth", "iam"])).await;
        assert_eq!(current_user(&p, "anyone", SIM_REDSHIFT_DB).await, "IAM:sim-user", "{via:?}");
        assert_eq!(psql_current_user(&p, "anyone", SIM_REDSHIFT_DB).await, "IAM:sim-user", "{via:?}");
        p.stop().await;
    }
    assert_eq!(api.calls("GetClusterCredentialsWithIAM"), 2, "one per proxy");
    assert_eq!(sim.redshift_state.rejected.load(Ordering::Relaxed), 0);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redshift_serverless_direct_and_through_ssm() {
    let sim = start_sim().await;
    for via in [Via::Direct, Via::Ssm] {
        let p = proxy(&sim, &engine_args(&sim, SIM_REDSHIFT_SERVERLESS_ENDPOINT, sim.redshift_addr, via, &[])).await;
        assert_eq!(current_user(&p, "whoever", SIM_REDSHIFT_DB).await, "IAM:sim-user", "{via:?}");
        assert_eq!(psql_current_user(&p, "whoever", SIM_REDSHIFT_DB).await, "IAM:sim-user", "{via:?}");
        p.stop().await;
    }
    assert_eq!(sim.redshift_serverless_api.control().calls("GetCredentials"), 2, "one per proxy, reused within it");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_temporary_credentials_are_asked_anew() {
    let sim = start_sim().await;
    let api = sim.redshift_api.control().clone();
    let p = proxy(&sim, &engine_args(&sim, SIM_REDSHIFT_ENDPOINT, sim.redshift_addr, Via::Direct, &[])).await;
    assert_eq!(current_user(&p, SIM_REDSHIFT_USER, SIM_REDSHIFT_DB).await, SIM_REDSHIFT_USER);
    assert_eq!(api.calls("GetClusterCredentials"), 1);
    // The cached password stops working (expired, or revoked): the login is refused once, the
    // proxy asks again and the client never sees the refusal.
    sim.redshift_logins.expire_all();
    assert_eq!(current_user(&p, SIM_REDSHIFT_USER, SIM_REDSHIFT_DB).await, SIM_REDSHIFT_USER);
    assert_eq!(api.calls("GetClusterCredentials"), 2);
    assert_eq!(sim.redshift_state.rejected.load(Ordering::Relaxed), 1);
    p.stop().await;

    // Credentials whose reported expiry is within a minute are not used for a new login: each
    // login asks anew (and the front never sees an expired password).
    sim.redshift_logins.set_life_cap(Some(Duration::from_secs(30)));
    let p = proxy(&sim, &engine_args(&sim, SIM_REDSHIFT_ENDPOINT, sim.redshift_addr, Via::Direct, &[])).await;
    let before = api.calls("GetClusterCredentials");
    for _ in 0..3 {
        assert_eq!(current_user(&p, SIM_REDSHIFT_USER, SIM_REDSHIFT_DB).await, SIM_REDSHIFT_USER);
    }
    assert_eq!(api.calls("GetClusterCredentials") - before, 3);
    assert_eq!(sim.redshift_state.rejected.load(Ordering::Relaxed), 1, "no login with a stale password");
    p.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_a_hint_with_the_permission_and_the_arn() {
    let sim = start_sim().await;

    // Redshift: GetClusterCredentials denied.
    sim.redshift_api.control().deny("GetClusterCredentials", true);
    let p = proxy(&sim, &engine_args(&sim, SIM_REDSHIFT_ENDPOINT, sim.redshift_addr, Via::Direct, &[])).await;
    let e = client(&p, SIM_REDSHIFT_USER, SIM_REDSHIFT_DB).await.expect_err("refused");
    let (code, message, hint) = db_error(&e);
    let hint = hint.unwrap_or_default();
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("redshift:GetClusterCredentials"), "{message}");
    assert!(hint.contains("Allow redshift:GetClusterCredentials on arn:aws:redshift:eu-central-1:123456789012:dbuser:simrs/alice"), "{hint}");
    sim.redshift_api.control().deny("GetClusterCredentials", false);

    // A user that does not exist (no AutoCreate): Redshift refuses the password it just issued.
    let e = client(&p, "nobody", SIM_REDSHIFT_DB).await.expect_err("refused");
    let (code, message, hint) = db_error(&e);
    assert_eq!(code, "28000", "{message}");
    assert!(hint.as_deref().unwrap_or_default().contains("Redshift refused the temporary password it had just issued for IAM:nobody"), "{message} {hint:?}");
    p.stop().await;

    // Serverless: GetCredentials denied, the workgroup's ARN named.
    sim.redshift_serverless_api.control().deny("GetCredentials", true);
    let p = proxy(&sim, &engine_args(&sim, SIM_REDSHIFT_SERVERLESS_ENDPOINT, sim.redshift_addr, Via::Direct, &[])).await;
    let e = client(&p, "whoever", SIM_REDSHIFT_DB).await.expect_err("refused");
    let (_, message, hint) = db_error(&e);
    let hint = hint.unwrap_or_default();
    assert!(message.contains("redshift-serverless:GetCredentials"), "{message}");
    assert!(hint.contains("Allow redshift-serverless:GetCredentials on arn:aws:redshift-serverless:eu-central-1:123456789012:workgroup/"), "{hint}");
    p.stop().await;

    // DSQL: a token signed with keys the service does not know is refused; the HINT names the
    // action for the user and the cluster's ARN.
    let stranger = aws_credential_types::Credentials::from_keys("AKIASTRANGER00000000", "not-a-known-secret", None);
    let args = engine_args(&sim, SIM_DSQL_ENDPOINT, sim.dsql_addr, Via::Direct, &["--region", SIM_REGION]);
    let p = start_proxy_with(&args, Credentials::Fixed(stranger)).await;
    for (user, action) in [("admin", "dsql:DbConnectAdmin"), ("dsql_reader", "dsql:DbConnect ")] {
        let e = client(&p, user, "postgres").await.expect_err("refused");
        let (code, message, hint) = db_error(&e);
        let hint = hint.unwrap_or_default();
        assert_eq!(code, "28000", "{message}");
        assert!(hint.contains(action), "{user}: {hint}");
        assert!(hint.contains(&format!("arn:aws:dsql:eu-central-1:ACCOUNT:cluster/{SIM_DSQL_CLUSTER}")), "{hint}");
    }
    assert!(sim.dsql_state.rejected.load(Ordering::Relaxed) >= 2);
    p.stop().await;
    sim.stop().await;
}

/// `--dsql-cluster`, `--redshift-cluster`, `--redshift-workgroup` without `--target`: found by
/// name through the simulated APIs, then served (through SSM: the names are not in DNS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_by_name() {
    use clap::Parser;
    let sim = start_sim().await;
    let setup = Credentials::FixedWith(sim.aws_setup());
    let node = sim.ssm.target_id().to_owned();
    let ca = sim.proxy_ca_file.display().to_string();
    for (flag, name, user, db, expect) in [
        ("--dsql-cluster", SIM_DSQL_CLUSTER, "admin", "postgres", "admin"),
        ("--redshift-cluster", SIM_REDSHIFT_CLUSTER, SIM_REDSHIFT_USER, SIM_REDSHIFT_DB, SIM_REDSHIFT_USER),
        ("--redshift-workgroup", SIM_REDSHIFT_WORKGROUP, "x", SIM_REDSHIFT_DB, "IAM:sim-user"),
    ] {
        let argv = [
            "rds-auth-proxy", flag, name, "--region", SIM_REGION, "--via", "ssm", "--ssm-target", &node,
            "--proxy-ca-bundle", &ca, "--port", "0", "--drain-timeout", "1",
        ];
        let mut args = rds_auth_proxy::cli::Cli::try_parse_from(argv).unwrap().proxy;
        let found = rds_auth_proxy::lookup::resolve_args(&mut args, &setup).await.expect(flag);
        assert!(found.db.is_some(), "{flag}");
        let config = rds_auth_proxy::config::Config::from_args(&args).expect(flag);
        let p = RunningProxy::spawn(rds_auth_proxy::app::Proxy::bind(&config, Credentials::FixedWith(sim.aws_setup())).await.unwrap());
        assert_eq!(current_user(&p, user, db).await, expect, "{flag}");
        p.stop().await;
    }
    assert_eq!(sim.dsql_api.control().calls("GetCluster"), 1);
    assert_eq!(sim.redshift_api.control().calls("DescribeClusters"), 1);
    assert_eq!(sim.redshift_serverless_api.control().calls("GetWorkgroup"), 1);

    // A cluster the API does not know: one line with the lookup's HINT.
    let argv = ["rds-auth-proxy", "--redshift-cluster", "nosuch", "--region", SIM_REGION, "--port", "0"];
    let mut args = rds_auth_proxy::cli::Cli::try_parse_from(argv).unwrap().proxy;
    let e = rds_auth_proxy::lookup::resolve_args(&mut args, &setup).await.unwrap_err();
    assert!(e.is_input_error(), "{e}");
    assert!(e.hint().contains("aws redshift describe-clusters"), "{}", e.hint());
    sim.stop().await;
}

/// `doctor` runs the whole chain for each engine and says how it logged in; `connect-info`
/// names the engine's default database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_and_connect_info_know_the_engine() {
    use clap::Parser;
    let sim = start_sim().await;
    let node = sim.ssm.target_id().to_owned();
    let ca = sim.proxy_ca_file.display().to_string();
    for (flags, expect) in [
        (vec!["--dsql-cluster", SIM_DSQL_CLUSTER, "--db-user", "admin"], "admin@postgres (Aurora DSQL) with an Aurora DSQL token"),
        (vec!["--redshift-cluster", SIM_REDSHIFT_CLUSTER, "--db-user", SIM_REDSHIFT_USER], "alice@dev (Amazon Redshift) with temporary credentials, as IAM:alice"),
        (vec!["--redshift-workgroup", SIM_REDSHIFT_WORKGROUP, "--db-user", "x"], "x@dev (Amazon Redshift Serverless) with temporary credentials, as IAM:sim-user"),
    ] {
        let mut argv = vec!["rds-auth-proxy", "--region", SIM_REGION, "--via", "ssm", "--ssm-target", &node, "--proxy-ca-bundle", &ca];
        argv.extend(flags.iter().copied());
        let args = rds_auth_proxy::cli::Cli::try_parse_from(argv).unwrap().proxy;
        let mut out = String::new();
        let report = rds_auth_proxy::doctor::run(&args, None, Credentials::FixedWith(sim.aws_setup()), |step| {
            out.push_str(&format!("{step}\n"));
        })
        .await;
        assert!(report.passed(), "{flags:?}:\n{out}");
        assert!(out.contains(expect), "{flags:?}:\n{out}");
    }

    for (endpoint, dbname) in [(SIM_REDSHIFT_ENDPOINT, "dbname=dev"), (SIM_DSQL_ENDPOINT, "dbname=postgres")] {
        let out = common::binary::bare().args(["connect-info", "--target", endpoint]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(dbname) && text.contains("port=6543"), "{endpoint}: {text}");
    }
    sim.stop().await;
}

/// Aurora DSQL ends a connection at its age limit without a word; the proxy, whose limit comes
/// first, tells the client (NOTICE, then 57P01 while idle) before the service's cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsql_connections_end_with_57p01_before_the_service_cuts_them() {
    use tokio_postgres::AsyncMessage;
    let sim = start_sim().await;
    sim.dsql_state.set_connection_age_limit(Duration::from_secs(8));
    let p = proxy(&sim, &engine_args(&sim, SIM_DSQL_ENDPOINT, sim.dsql_addr, Via::Direct, &["--max-connection-age", "4s"])).await;
    let conn = format!("host={} port={} user=admin dbname=postgres", p.addr.ip(), p.addr.port());
    let started = std::time::Instant::now();
    let (client, mut connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("login");
    let seen = tokio::spawn(async move {
        let (mut notices, mut error) = (Vec::new(), None);
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notice(n))) => notices.push(n),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    error = Some(e);
                    break;
                }
                None => break,
            }
        }
        (notices, error, started.elapsed())
    });
    assert_eq!(client.query_one("select current_user::text", &[]).await.unwrap().get::<_, String>(0), "admin");
    let (notices, error, ended) = tokio::time::timeout(Duration::from_secs(60), seen).await.expect("the connection ended").unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].message().starts_with("this connection will be closed"), "{:?}", notices[0]);
    let (code, message, _) = db_error(&error.expect("an error ends it"));
    assert_eq!(code, "57P01", "{message}");
    assert!(ended < Duration::from_secs(8), "before the service's own cut: {ended:?}");
    assert_eq!(sim.dsql_state.age_cuts.load(Ordering::Relaxed), 0, "the proxy ended it first");
    p.stop().await;
    sim.stop().await;
}

/// The real binary, its AWS setup from the environment (`AWS_ENDPOINT_URL_REDSHIFT` as `sim`
/// exports it): psql logs in, and the audit lines name the engine and the user Redshift logged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_audits_the_engine_and_the_rewritten_user() {
    use common::binary::{sim_command, Running};
    let sim = start_sim().await;
    let mut cmd = sim_command(&sim);
    cmd.args(["--target", SIM_REDSHIFT_ENDPOINT, "--via", "direct", "--connect-addr", &sim.redshift_addr.to_string()])
        .args(["--proxy-ca-bundle", &sim.proxy_ca_file.display().to_string(), "--port", "0"]);
    let mut proxy = Running::start(cmd);
    let port = proxy.port;
    let out = tokio::task::spawn_blocking(move || psql_at(port, SIM_REDSHIFT_USER, SIM_REDSHIFT_DB, "select current_user"))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), SIM_REDSHIFT_USER);
    let open = proxy.wait_log("audit open", |v| v["fields"]["audit"] == "open");
    assert_eq!(open["fields"]["engine"], "redshift", "{open}");
    assert_eq!(open["fields"]["db_user"], SIM_REDSHIFT_USER, "{open}");
    assert_eq!(open["fields"]["upstream_user"], "IAM:alice", "{open}");
    assert_eq!(sim.redshift_api.control().calls("GetClusterCredentials"), 1);
    proxy.stop();
    sim.stop().await;
}
