//! IAM Identity Center (SSO) end to end: the real binary with a legacy SSO profile whose token is
//! in `~/.aws/sso/cache`, the SDK's SSO provider calling the simulated portal
//! (`AWS_ENDPOINT_URL_SSO`), and the RDS front, STS and the other simulated services accepting
//! the temporary credentials it issues. Renewal without a restart (one portal call per renewal),
//! the expired portal session's HINT, and a new `aws sso login` picked up without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::binary::{sim_command, Running};
use common::{db_error, direct_args, start_sim};
use rds_auth_proxy_sim::runner::SIM_REGION;
use rds_auth_proxy::auth::credentials::humantime_lite::Rfc3339;
use rds_auth_proxy_sim::sso::{cache_file_stem, SIM_SSO_ROLE, SIM_SSO_START_URL};
use rds_auth_proxy_sim::sts::SIM_ACCOUNT;
use rds_auth_proxy_sim::Simulator;

const PROFILE: &str = "sim-sso";
/// A profile in the `sso_session` format, and its session.
const SESSION_PROFILE: &str = "sim-sso-session";
const SESSION: &str = "sim-session";

/// The proxy renews credentials with less than this left (`EXPIRY_MARGIN` in
/// src/auth/credentials.rs): role credentials of `RENEW_MARGIN + w` are used for `w`.
const RENEW_MARGIN: Duration = Duration::from_secs(60);
/// How long role credentials stay usable before the proxy renews them, in this test.
const USABLE: Duration = Duration::from_secs(8);
/// Longest a poll below waits for the proxy to renew (it takes [`USABLE`]).
const DEADLINE: Duration = Duration::from_secs(60);

/// `HOME/.aws/config` with a legacy SSO profile ([`PROFILE`]) for the simulated portal, and one
/// in the `sso_session` format ([`SESSION_PROFILE`]).
fn write_profiles(home: &Path) -> PathBuf {
    let config = home.join(".aws/config");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "[profile {PROFILE}]\nsso_start_url = {SIM_SSO_START_URL}\nsso_region = {SIM_REGION}\n\
             sso_account_id = {SIM_ACCOUNT}\nsso_role_name = {SIM_SSO_ROLE}\nregion = {SIM_REGION}\n\n\
             [profile {SESSION_PROFILE}]\nsso_session = {SESSION}\nsso_account_id = {SIM_ACCOUNT}\n\
             sso_role_name = {SIM_SSO_ROLE}\nregion = {SIM_REGION}\n\n\
             [sso-session {SESSION}]\nsso_start_url = {SIM_SSO_START_URL}\nsso_region = {SIM_REGION}\n"
        ),
    )
    .unwrap();
    config
}

/// The proxy as an SSO user runs it: no access keys in the environment, only the profile.
fn sso_command(sim: &Simulator, home: &Path, profile: &str) -> Command {
    let config = write_profiles(home);
    let mut cmd = sim_command(sim);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_ENDPOINT_URL_SSO", sim.sso.endpoint_url())
        .args(direct_args(sim))
        .args(["--profile", profile]);
    cmd
}

async fn login(port: u16) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=db_user dbname=postgres connect_timeout=20"),
        tokio_postgres::NoTls,
    )
    .await?;
    let task = tokio::spawn(connection);
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);
    drop(client);
    let _ = task.await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sso_profile_login_renewal_expired_session_hint_and_relogin_without_restart() {
    let sim = start_sim().await;
    let home = tempfile::tempdir().unwrap();
    sim.sso.login(home.path(), SIM_SSO_START_URL, SIM_REGION).unwrap();
    sim.sso.set_role_lifetime(RENEW_MARGIN + USABLE);
    let mut proxy = Running::start(sso_command(&sim, home.path(), PROFILE));
    let port = proxy.port;

    // Login: the start-up check, the IAM token and the audit line's STS call share one load.
    login(port).await.expect("login with SSO role credentials");
    assert_eq!(sim.sso.role_credentials_issued(), 1, "one GetRoleCredentials for the start-up check, the token and STS");
    // STS names the role IAM Identity Center signed the user in to, as AWS does.
    let audit = proxy.wait_log("the audit line with the principal", |v| {
        v["fields"]["principal_arn"].as_str().is_some_and(|a| !a.is_empty())
    });
    let arn = audit["fields"]["principal_arn"].as_str().unwrap_or_default();
    assert!(arn.starts_with(&format!("arn:aws:sts::{SIM_ACCOUNT}:assumed-role/AWSReservedSSO_{SIM_SSO_ROLE}_")), "{audit}");

    // Renewal: the role credentials near their expiry are renewed by the next login, once.
    let deadline = Instant::now() + DEADLINE;
    while sim.sso.role_credentials_issued() < 2 {
        assert!(Instant::now() < deadline, "the role credentials were not renewed");
        login(port).await.expect("logins keep working while the credentials are renewed");
    }
    login(port).await.expect("login with the renewed credentials");
    assert_eq!(sim.sso.role_credentials_issued(), 2, "one GetRoleCredentials per renewal");
    assert_eq!(sim.sso.unauthorized_calls(), 0);

    // The portal session ends: once the role credentials need renewing, the client is told to
    // log in again with the exact command.
    sim.sso.expire_sessions();
    let deadline = Instant::now() + DEADLINE;
    let err = loop {
        assert!(Instant::now() < deadline, "logins kept working after the SSO session ended");
        if let Err(e) = login(port).await {
            break e;
        }
    };
    let (code, message, hint) = db_error(&err);
    assert_eq!(code, "28000", "{message}");
    let hint = hint.unwrap_or_default();
    assert!(hint.contains("IAM Identity Center"), "{hint}");
    assert!(hint.contains(&format!("`aws sso login --profile {PROFILE}`")), "{hint}");
    assert!(sim.sso.unauthorized_calls() >= 1);
    // The error chain in the log says each thing once.
    // The error chain says each thing once, to the client and in the log.
    let failure = proxy.wait_for_log("login failed; the client was told why");
    for text in [message.as_str(), failure["fields"]["error"].as_str().unwrap_or_default()] {
        assert_eq!(text.matches("UnauthorizedException: Session token not found or invalid").count(), 1, "{text}");
        assert_eq!(text.matches("an error occurred while loading credentials").count(), 1, "{text}");
    }

    // `aws sso login` again: the next login works, no restart.
    sim.sso.login(home.path(), SIM_SSO_START_URL, SIM_REGION).unwrap();
    login(port).await.expect("login after a new aws sso login");
    assert_eq!(sim.sso.role_credentials_issued(), 3);
    proxy.stop();

    // The `sso_session` format: the SDK refreshes the token itself, here in vain (the OIDC
    // endpoint refuses), so the expired token reaches the portal, which answers 401: the same HINT.
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join(".aws/sso/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let now = std::time::SystemTime::now();
    std::fs::write(
        cache.join(format!("{}.json", cache_file_stem(SESSION))),
        serde_json::json!({
            "startUrl": SIM_SSO_START_URL,
            "region": SIM_REGION,
            "accessToken": "an-expired-portal-token",
            "expiresAt": Rfc3339(now - Duration::from_secs(60)).to_string(),
            "refreshToken": "a-refresh-token",
            "clientId": "a-client-id",
            "clientSecret": "a-client-secret",
            "registrationExpiresAt": Rfc3339(now + Duration::from_secs(86_400)).to_string(),
        })
        .to_string(),
    )
    .unwrap();
    let mut cmd = sso_command(&sim, home.path(), SESSION_PROFILE);
    cmd.env("AWS_ENDPOINT_URL_SSO_OIDC", sim.sso.endpoint_url());
    // The refresh is tried once (the SDK waits 30 s before another try): by the start-up check
    // or by the login, whichever comes first; the login's error is the same HINT either way.
    let unauthorized = sim.sso.unauthorized_calls();
    let mut proxy = Running::start(cmd);
    let err = login(proxy.port).await.expect_err("the SSO session has expired");
    let (code, message, hint) = db_error(&err);
    assert_eq!(code, "28000", "{message}");
    let hint = hint.unwrap_or_default();
    assert!(hint.contains(&format!("`aws sso login --profile {SESSION_PROFILE}`")), "{hint}");
    assert!(sim.sso.unauthorized_calls() > unauthorized, "the expired token reached the portal");
    proxy.stop();
}

/// The simulated STS issues temporary credentials as AWS does (AssumeRole, GetSessionToken), and
/// the other simulated services accept requests signed with them; a forged session token is
/// `InvalidClientTokenId`, a too-short duration refused as STS refuses it.
#[tokio::test]
async fn sts_temporary_credentials_are_accepted_by_every_simulated_service() {
    use rds_auth_proxy::auth::identity::{IdentityError, StsApi};
    use rds_auth_proxy::auth::secrets::SecretsApi;
    use rds_auth_proxy_sim::secrets::SecretsSim;
    use rds_auth_proxy_sim::sigv4::SimCredentials;

    rds_auth_proxy::tls::install_default_provider();
    let sim_creds = SimCredentials::new("AKIASIMSTSTEST000001", "sts-test-secret-access-key-000000000000");
    let sts = rds_auth_proxy_sim::sts::start(sim_creds.clone()).await.unwrap();
    let secrets = SecretsSim::start(sim_creds.clone(), SIM_REGION).await.unwrap();
    secrets.put("app/db", r#"{"username":"app","password":"s3cret"}"#);
    let long_term = aws_credential_types::Credentials::from_keys(&sim_creds.access_key_id, &sim_creds.secret_access_key, None);
    let client = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::config::Builder::new()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new(SIM_REGION))
            .credentials_provider(long_term)
            .http_client(rds_auth_proxy::aws::http_client())
            .endpoint_url(sts.endpoint_url())
            .build(),
    );
    let out = client
        .assume_role()
        .role_arn(format!("arn:aws:iam::{SIM_ACCOUNT}:role/Dev"))
        .role_session_name("alice")
        .duration_seconds(900)
        .send()
        .await
        .expect("AssumeRole");
    assert_eq!(out.assumed_role_user.unwrap().arn, format!("arn:aws:sts::{SIM_ACCOUNT}:assumed-role/Dev/alice"));
    let c = out.credentials.expect("credentials");
    assert!(c.access_key_id.starts_with("ASIA"), "{}", c.access_key_id);
    let expires = std::time::SystemTime::try_from(c.expiration).unwrap();
    let left = expires.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(900) && left > Duration::from_secs(800), "{left:?}");
    let temp = aws_credential_types::Credentials::new(&c.access_key_id, &c.secret_access_key, Some(c.session_token.clone()), Some(expires), "test");

    let who = StsApi::with_credentials(temp.clone(), SIM_REGION, Some(&sts.endpoint_url())).caller_identity().await.expect("GetCallerIdentity");
    assert_eq!(who.arn, format!("arn:aws:sts::{SIM_ACCOUNT}:assumed-role/Dev/alice"));
    assert!(who.user_id.starts_with("AROA") && who.user_id.ends_with(":alice"), "{}", who.user_id);
    let secret = SecretsApi::with_credentials(temp.clone(), SIM_REGION, Some(&secrets.endpoint_url()))
        .get_secret_string("app/db")
        .await
        .expect("GetSecretValue with temporary credentials");
    assert!(secret.contains("s3cret"));

    let forged = aws_credential_types::Credentials::new(&c.access_key_id, &c.secret_access_key, Some("forged".to_owned()), Some(expires), "test");
    match StsApi::with_credentials(forged, SIM_REGION, Some(&sts.endpoint_url())).caller_identity().await {
        Err(IdentityError::Refused { code, .. }) => assert_eq!(code, "InvalidClientTokenId"),
        other => panic!("{other:?}"),
    }
    let session = client.get_session_token().send().await.expect("GetSessionToken");
    assert!(session.credentials.unwrap().access_key_id.starts_with("ASIA"));
    let short = client.get_session_token().duration_seconds(60).send().await.expect_err("60 s is below STS's minimum");
    assert!(format!("{short:?}").contains("ValidationError"), "{short:?}");
}
