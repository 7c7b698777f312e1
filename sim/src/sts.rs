//! The simulated AWS STS: GetCallerIdentity over the Query protocol ([`super::query`]),
//! SigV4-checked against the simulator's credentials, naming the simulated IAM user — the same
//! identity the simulated SSM names in its AccessDenied messages — and GetSessionToken and
//! AssumeRole, issuing temporary credentials the other simulated services accept.

use std::sync::Arc;
use std::time::Duration;

use super::query::{xml_escape, Handler, Params, QueryError, QueryServer, QueryService};
use super::sigv4::{SimCredentials, TemporaryCredentials};
use rds_auth_proxy_protocol::time::Rfc3339;

/// The account every simulated ARN is in.
pub const SIM_ACCOUNT: &str = "123456789012";
/// The IAM user the simulator's credentials belong to.
pub const SIM_USER_ARN: &str = "arn:aws:iam::123456789012:user/sim-user";
/// Its unique id, shaped like an IAM user's (`AIDA…`).
pub const SIM_USER_ID: &str = "AIDASIMUSER0EXAMPLE01";
/// The unique id of every role assumed in the simulator (`AROA…`), before `:session`.
pub const SIM_ROLE_ID: &str = "AROASIMROLE0EXAMPLE01";

/// Starts the simulated STS. Every region's scope is accepted: every region has an STS endpoint,
/// so a client set to another region still finds one. GetSessionToken and AssumeRole issue
/// temporary credentials that every simulated service sharing `credentials` then accepts.
pub async fn start(credentials: SimCredentials) -> std::io::Result<QueryServer> {
    let issuer = credentials.clone();
    let handler: Handler = Arc::new(move |action, params, signer| match action {
        "GetCallerIdentity" => {
            let (arn, user_id) = issuer
                .caller_of(signer)
                .unwrap_or_else(|| (SIM_USER_ARN.to_owned(), SIM_USER_ID.to_owned()));
            Ok(format!(
                "    <Arn>{}</Arn>\n    <UserId>{}</UserId>\n    <Account>{SIM_ACCOUNT}</Account>\n",
                xml_escape(&arn),
                xml_escape(&user_id)
            ))
        }
        "GetSessionToken" => {
            let lifetime = duration(params, 43_200, 129_600)?;
            Ok(credentials_xml(&issuer.issue_temporary(lifetime)))
        }
        "AssumeRole" => {
            let role_arn = required(params, "RoleArn")?;
            let session = required(params, "RoleSessionName")?;
            let role = role_arn
                .strip_prefix(&format!("arn:aws:iam::{SIM_ACCOUNT}:role/"))
                .filter(|r| !r.is_empty())
                .ok_or_else(|| QueryError::bad_request("AccessDenied", format!("User: {SIM_USER_ARN} is not authorized to perform: sts:AssumeRole on resource: {role_arn}")))?;
            let lifetime = duration(params, 3_600, 43_200)?;
            let arn = format!("arn:aws:sts::{SIM_ACCOUNT}:assumed-role/{role}/{session}");
            let issued = issuer.issue_temporary_as(lifetime, Some((arn, format!("{SIM_ROLE_ID}:{session}"))));
            Ok(format!(
                "{}    <AssumedRoleUser>\n      <AssumedRoleId>{SIM_ROLE_ID}:{session}</AssumedRoleId>\n      \
                 <Arn>arn:aws:sts::{SIM_ACCOUNT}:assumed-role/{role}/{session}</Arn>\n    </AssumedRoleUser>\n",
                credentials_xml(&issued),
                session = xml_escape(session),
                role = xml_escape(role),
            ))
        }
        other => Err(QueryError::bad_request(
            "InvalidAction",
            format!("Could not find operation {other} for version 2011-06-15"),
        )),
    });
    QueryServer::start(
        QueryService {
            signing_name: "sts",
            version: "2011-06-15",
            xmlns: "https://sts.amazonaws.com/doc/2011-06-15/",
            region: None,
        },
        credentials,
        handler,
    )
    .await
}

fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, QueryError> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| QueryError::bad_request("ValidationError", format!("1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null")))
}

/// `DurationSeconds`, as AWS bounds it: at least 900 s (the simulator is not kinder than STS).
fn duration(params: &Params, default: u64, max: u64) -> Result<Duration, QueryError> {
    let secs = match params.get("DurationSeconds") {
        None => default,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| (900..=max).contains(s))
            .ok_or_else(|| QueryError::bad_request("ValidationError", format!("1 validation error detected: Value '{v}' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and {max}")))?,
    };
    Ok(Duration::from_secs(secs))
}

/// The `<Credentials>` element of GetSessionToken's and AssumeRole's results.
fn credentials_xml(issued: &TemporaryCredentials) -> String {
    format!(
        "    <Credentials>\n      <AccessKeyId>{}</AccessKeyId>\n      <SecretAccessKey>{}</SecretAccessKey>\n      \
         <SessionToken>{}</SessionToken>\n      <Expiration>{}</Expiration>\n    </Credentials>\n",
        issued.access_key_id,
        issued.secret_access_key,
        xml_escape(&issued.session_token),
        Rfc3339(issued.expiration),
    )
}
