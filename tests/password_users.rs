//! Credentials per database user: a password source belongs to one user (the secret's
//! `username`, else `--db-user`, else `--password-user`) and every other user keeps IAM tokens on
//! the same listener; refused logins reload credentials at most once per interval.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;

use common::*;
use rds_auth_proxy::app::{AwsSetup, Credentials};
use rds_auth_proxy_sim::runner::{secret_name, SIM_PASSWORD_USER};
use rds_auth_proxy_sim::{SimOptions, Simulator};

/// The IAM user every simulator has (`GRANT rds_iam`).
const IAM_USER: &str = "db_user";

/// A 0600 file holding `password` on one line.
fn password_file(password: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), format!("{password}\n")).expect("write");
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    f
}

async fn current_user(proxy: &RunningProxy, user: &str) -> Result<String, tokio_postgres::Error> {
    let client = connect(proxy, user).await?;
    let row = client.query_one("SELECT current_user", &[]).await?;
    Ok(row.get(0))
}

/// Both users through one listener: the password user by SCRAM (PostgreSQL's own, behind the
/// front), the IAM user with a token the front verifies.
async fn both_users_log_in(sim: &Simulator, proxy: &RunningProxy) {
    let tokens_before = sim.front_state.accepted.load(Ordering::SeqCst);
    assert_eq!(current_user(proxy, SIM_PASSWORD_USER).await.expect("password user"), SIM_PASSWORD_USER);
    assert_eq!(current_user(proxy, IAM_USER).await.expect("IAM user"), IAM_USER);
    assert_eq!(current_user(proxy, SIM_PASSWORD_USER).await.expect("password user again"), SIM_PASSWORD_USER);
    assert_eq!(
        sim.front_state.accepted.load(Ordering::SeqCst) - tokens_before,
        1,
        "the IAM user's login was an IAM token; the password user's never were"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iam_user_and_a_password_user_through_one_listener() {
    let sim = start_sim().await;
    let setup = || Credentials::FixedWith(sim.aws_setup());

    // From a secret that names its user (RDS's managed secret does): read at start to learn it.
    let before = sim.secrets.reads();
    let mut args = direct_args(&sim);
    args.extend(["--password-secret".into(), secret_name(SIM_PASSWORD_USER)]);
    let proxy = RunningProxy::spawn(bind_proxy_with(&args, setup()).await);
    assert_eq!(sim.secrets.reads() - before, 1, "read at start for its username");
    both_users_log_in(&sim, &proxy).await;
    assert_eq!(sim.secrets.reads() - before, 1, "and cached");
    proxy.stop().await;

    // From a file, for the user --password-user names.
    let password = sim.password(SIM_PASSWORD_USER).expect("the sim has a password user");
    let file = password_file(&password);
    let mut args = direct_args(&sim);
    args.extend(["--password-file".into(), file.path().display().to_string(), "--password-user".into(), SIM_PASSWORD_USER.into()]);
    let proxy = RunningProxy::spawn(bind_proxy_with(&args, setup()).await);
    both_users_log_in(&sim, &proxy).await;
    proxy.stop().await;

    // A secret that names nobody, and no --password-user: the start stops, saying what to add.
    sim.secrets.put("plain-password", &password);
    let mut args = direct_args(&sim);
    args.extend(["--password-secret".into(), "plain-password".into()]);
    let config = rds_auth_proxy::config::Config::from_args(&proxy_args(&args)).expect("valid flags");
    let err = rds_auth_proxy::app::Proxy::bind(&config, setup()).await.err().expect("refused at start");
    let line = rds_auth_proxy::errors::display_chain(&err);
    assert!(line.contains("plain-password") && line.contains("add --password-user NAME"), "{line}");
    // A secret whose username contradicts --password-user: its user's logins are refused,
    // naming both (the secret is read at the first login of that user, not at start).
    let mut args = direct_args(&sim);
    args.extend(["--password-secret".into(), secret_name(SIM_PASSWORD_USER), "--password-user".into(), "someone".into()]);
    let proxy = RunningProxy::spawn(bind_proxy_with(&args, setup()).await);
    let before = sim.secrets.reads();
    for attempt in 0..5 {
        let (code, message, hint) = db_error(&connect(&proxy, "someone").await.expect_err("refused"));
        assert_eq!(code, "28000");
        assert!(message.contains("is the password of database user \"scram_user\", not of \"someone\""), "{message}");
        assert_eq!(message.contains("not read again for up to 30 s"), attempt > 0, "{message}");
        assert!(hint.expect("a hint").starts_with("Name the database user the password is for"));
    }
    assert_eq!(sim.secrets.reads() - before, 1, "a secret that failed is not read again at every login");
    assert_eq!(current_user(&proxy, IAM_USER).await.expect("IAM users are untouched"), IAM_USER);
    proxy.stop().await;
    sim.stop().await;
}

/// A password user whose server asks a cleartext password (pg_hba `password`) gets the
/// password, not an IAM token: straight to the simulator's PostgreSQL, which serves TLS itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_user_asked_cleartext_gets_the_password() {
    let sim = start_sim_with(SimOptions {
        password_users: vec!["clear_user".into()],
        pg_extra_hba: vec!["host all clear_user 127.0.0.1/32 password".into()],
        ..SimOptions::default()
    })
    .await;
    let mut args = direct_args(&sim);
    let i = args.iter().position(|a| a == "--connect-addr").expect("flag present");
    args[i + 1] = sim.postgres.addr().to_string();
    args.extend(["--password-secret".into(), secret_name("clear_user")]);
    let proxy = RunningProxy::spawn(bind_proxy_with(&args, Credentials::FixedWith(sim.aws_setup())).await);
    assert_eq!(current_user(&proxy, "clear_user").await.expect("cleartext login"), "clear_user");
    // PostgreSQL asked cleartext and checked the password: a wrong one is its 28P01.
    sim.secrets.put(&secret_name("clear_user"), r#"{"username":"clear_user","password":"wrong"}"#);
    let mut args2 = args.clone();
    args2.extend(["--password-user".into(), "clear_user".into()]);
    let wrong = RunningProxy::spawn(bind_proxy_with(&args2, Credentials::FixedWith(sim.aws_setup())).await);
    let (code, message, _) = db_error(&connect(&wrong, "clear_user").await.expect_err("wrong password"));
    assert_eq!(code, "28P01", "{message}");
    assert!(message.contains("password authentication failed for user \"clear_user\""), "{message}");
    wrong.stop().await;
    proxy.stop().await;
    sim.stop().await;
}

/// 100 refused logins in a loop: one secret re-read (the simulated Secrets Manager counts
/// GetSecretValue) and one AWS credential reload (`credential_refreshes`) in the interval, and
/// every attempt still gets the server's clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_refused_logins_reload_once_per_interval() {
    let sim = start_sim().await;

    // A stale password in the secret: every login of the password user is 28P01.
    sim.secrets.put(&secret_name(SIM_PASSWORD_USER), r#"{"username":"scram_user","password":"stale"}"#);
    let mut args = direct_args(&sim);
    args.extend(["--password-secret".into(), secret_name(SIM_PASSWORD_USER)]);
    let bound = bind_proxy_with(&args, Credentials::FixedWith(sim.aws_setup())).await;
    let password_reads = bound.ctx.metrics.password_reads.clone();
    let proxy = RunningProxy::spawn(bound);
    let before = sim.secrets.reads();
    for i in 0..100 {
        let (code, message, _) = db_error(&connect(&proxy, SIM_PASSWORD_USER).await.expect_err("stale password"));
        assert_eq!(code, "28P01", "attempt {i}: {message}");
        assert!(message.contains("password authentication failed"), "attempt {i}: {message}");
    }
    assert_eq!(sim.secrets.reads() - before, 1, "one re-read for 100 refused logins");
    assert_eq!(password_reads.get(), 2, "/metrics counts the read at start and the one re-read");
    proxy.stop().await;

    // Credentials the simulated IAM does not know: every IAM login is refused (28000).
    let mut setup: AwsSetup = sim.aws_setup();
    setup.credentials = aws_credential_types::Credentials::from_keys(
        setup.credentials.access_key_id().to_owned(),
        "not-the-secret-key-not-the-secret-key-00",
        None,
    );
    let bound = bind_proxy_with(&direct_args(&sim), Credentials::FixedWith(setup)).await;
    let refreshes = bound.ctx.metrics.auth.credential_refreshes.clone();
    let proxy = RunningProxy::spawn(bound);
    for i in 0..100 {
        let (code, message, hint) = db_error(&connect(&proxy, IAM_USER).await.expect_err("bad credentials"));
        assert_eq!(code, "28000", "attempt {i}: {message}");
        assert!(hint.is_some_and(|h| h.contains("rds-db:connect")), "attempt {i}");
    }
    assert_eq!(refreshes.get(), 2, "the first load, and one reload for 100 refused logins");
    proxy.stop().await;
    sim.stop().await;
}

fn proxy_args(args: &[String]) -> rds_auth_proxy::cli::ProxyArgs {
    use clap::Parser;
    let mut argv = vec!["rds-auth-proxy".to_owned()];
    argv.extend_from_slice(args);
    rds_auth_proxy::cli::Cli::try_parse_from(argv).expect("valid flags").proxy
}
