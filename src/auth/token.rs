//! IAM authentication tokens: for RDS a SigV4 query-presigned `GET https://host:port/?Action=connect
//! &DBUser=…` for service `rds-db`, valid 900 s; for Aurora DSQL `GET https://host/?Action=DbConnect`
//! (`DbConnectAdmin`) for service `dsql`; each with the scheme stripped. The token is a
//! credential, so [`Token`] never prints its value.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// How long RDS accepts a token (`X-Amz-Expires`); AWS caps it at 15 minutes.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// SigV4's unreserved characters: everything else in a query value is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A minted IAM token. `Debug` and `Display` print `<redacted>`; use [`Token::expose`] only where
/// the token is written into a PasswordMessage or printed by `rds-auth-proxy token`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a token is signed for: always the real endpoint and port, never the local listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenRequest {
    pub endpoint: String,
    pub port: u16,
    pub region: String,
    pub db_user: String,
    /// Which service's token: RDS's (`rds-db:connect`) or Aurora DSQL's.
    pub kind: TokenKind,
}

/// The service a token is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// `rds-db`, `Action=connect&DBUser=…`, signed for `endpoint:port`.
    #[default]
    Rds,
    /// `dsql`, `Action=DbConnectAdmin` for user `admin`, else `Action=DbConnect`, signed for the
    /// host alone.
    Dsql,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("could not build SigV4 signing parameters")]
    Params(#[source] v4::signing_params::BuildError),
    #[error("could not presign the connect request")]
    Sign(#[source] aws_sigv4::http_request::SigningError),
}

/// Presigns a token with the given credentials at `time`.
pub fn presign(
    request: &TokenRequest,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<Token, TokenError> {
    let host = format!("{}:{}", request.endpoint, request.port);
    let query = format!(
        "Action=connect&DBUser={}",
        utf8_percent_encode(&request.db_user, QUERY_VALUE)
    );
    presign_get(&host, query, "rds-db", &request.region, credentials, time, TOKEN_LIFETIME)
}

/// How long an Aurora DSQL token is good for by default, as the AWS SDKs mint it.
pub const DSQL_TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// Presigns an Aurora DSQL auth token: `GET https://HOST/?Action=DbConnect` (`DbConnectAdmin`
/// for the `admin` user), service `dsql`, the host without a port, valid `expires` (up to a
/// week). As the AWS SDKs: the URL without `https://`.
pub fn presign_dsql(
    host: &str,
    region: &str,
    admin: bool,
    credentials: &Credentials,
    time: SystemTime,
    expires: Duration,
) -> Result<Token, TokenError> {
    let action = if admin { "DbConnectAdmin" } else { "DbConnect" };
    presign_get(host, format!("Action={action}"), "dsql", region, credentials, time, expires)
}

/// The SigV4 query presign both tokens are: `GET https://HOST/?QUERY` for `service`, only
/// `host` signed, the payload hash of the empty body; the signing parameters appended to
/// `query` in the signer's order; the scheme left off.
fn presign_get(
    host: &str,
    mut query: String,
    service: &str,
    region: &str,
    credentials: &Credentials,
    time: SystemTime,
    expires: Duration,
) -> Result<Token, TokenError> {
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(expires);
    settings.signature_location = SignatureLocation::QueryParams;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(TokenError::Params)?
        .into();

    let url = format!("https://{host}/?{query}");
    let signable = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(TokenError::Sign)?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(TokenError::Sign)?
        .into_parts();
    let (_headers, query_params) = instructions.into_parts();
    for (name, value) in query_params {
        let value: Cow<'_, str> = value;
        query.push('&');
        query.push_str(name);
        query.push('=');
        query.extend(utf8_percent_encode(&value, QUERY_VALUE));
    }
    Ok(Token(format!("{host}/?{query}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_sdk_rds_vector_byte_for_byte() {
        let creds = Credentials::from_keys("akid", "secret", None);
        let req = TokenRequest {
            endpoint: "prod-instance.us-east-1.rds.amazonaws.com".into(),
            port: 3306,
            region: "us-east-1".into(),
            db_user: "peccy".into(),
            kind: TokenKind::Rds,
        };
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_724_709_600);
        let token = presign(&req, &creds, time).unwrap();
        assert_eq!(
            token.expose(),
            "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89"
        );
    }

    #[test]
    fn session_token_vector() {
        let creds = Credentials::from_keys(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("IQoJb3JpZ2luX2VjEXAMPLE/+token=".into()),
        );
        let req = TokenRequest {
            endpoint: "mydb.abc123xyz.eu-west-1.rds.amazonaws.com".into(),
            port: 5432,
            region: "eu-west-1".into(),
            db_user: "iam_user".into(),
            kind: TokenKind::Rds,
        };
        // 2026-01-01T00:00:00Z
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let token = presign(&req, &creds, time).unwrap();
        let t = token.expose();
        assert!(t.starts_with("mydb.abc123xyz.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=iam_user&"));
        assert!(t.contains("X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE%2F%2Btoken%3D"), "{t}");
        assert!(t.contains(
            "X-Amz-Signature=7834a6ea78e67ea300229f868b1df60cf5ff0721f1cc138a4d6e5fb480b9101a"
        ));
    }

    /// The AWS SDK for Rust's DSQL vectors (`sdk/dsql/src/auth_token.rs`), byte for byte.
    #[test]
    fn aws_sdk_dsql_vectors_byte_for_byte() {
        let creds = Credentials::from_keys("akid", "secret", None);
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_724_716_800); // 2024-08-27T00:00:00Z
        let host = "peccy.dsql.us-east-1.on.aws";
        let expires = Duration::from_secs(450);
        let token = presign_dsql(host, "us-east-1", false, &creds, time, expires).unwrap();
        assert_eq!(
            token.expose(),
            "peccy.dsql.us-east-1.on.aws/?Action=DbConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=akid%2F20240827%2Fus-east-1%2Fdsql%2Faws4_request&X-Amz-Date=20240827T000000Z\
             &X-Amz-Expires=450&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=f5f2ad764ca5df44045d4ab6ccecba0eef941b0007e5765885a0b6ed3702a3f8"
        );
        let admin = presign_dsql(host, "us-east-1", true, &creds, time, expires).unwrap();
        assert_eq!(
            admin.expose(),
            "peccy.dsql.us-east-1.on.aws/?Action=DbConnectAdmin&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=akid%2F20240827%2Fus-east-1%2Fdsql%2Faws4_request&X-Amz-Date=20240827T000000Z\
             &X-Amz-Expires=450&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=267cf8d04d84444f7a62d5bdb40c44bfc6cb13dd6c64fa7f772df6bbaa90fff1"
        );
    }

    /// With temporary credentials the session token is in the query and signed: the signature,
    /// computed here from SigV4's definition (not by aws-sigv4), covers it.
    #[test]
    fn dsql_token_signs_the_session_token() {
        use hmac::{Hmac, Mac};
        use sha2::{Digest, Sha256};
        let session = "IQoJb3JpZ2luX2VjEXAMPLE/+token=";
        let creds = Credentials::from_keys("ASIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", Some(session.into()));
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600); // 2026-01-01T00:00:00Z
        let host = "abcdefghijklmnopqrstuvwxyz.dsql.eu-west-1.on.aws";
        let token = presign_dsql(host, "eu-west-1", false, &creds, time, DSQL_TOKEN_LIFETIME).unwrap();
        let t = token.expose();
        let (prefix, query) = t.split_once("/?").unwrap();
        assert_eq!(prefix, host, "no scheme, no port");
        let mut pairs: Vec<&str> = query.split('&').collect();
        assert_eq!(pairs[0], "Action=DbConnect");
        assert!(pairs.contains(&"X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE%2F%2Btoken%3D"), "{t}");
        assert!(pairs.contains(&"X-Amz-Expires=900") && pairs.contains(&"X-Amz-SignedHeaders=host"), "{t}");
        let at = pairs.iter().position(|p| p.starts_with("X-Amz-Signature=")).expect("a signature");
        let signature = pairs.remove(at)["X-Amz-Signature=".len()..].to_owned();
        pairs.sort();
        let canonical = format!(
            "GET\n/\n{}\nhost:{host}\n\nhost\n{}",
            pairs.join("&"),
            hex::encode(Sha256::digest(b""))
        );
        let scope = "20260101/eu-west-1/dsql/aws4_request";
        let to_sign = format!("AWS4-HMAC-SHA256\n20260101T000000Z\n{scope}\n{}", hex::encode(Sha256::digest(canonical.as_bytes())));
        let mac = |key: &[u8], data: &str| {
            let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
            m.update(data.as_bytes());
            m.finalize().into_bytes().to_vec()
        };
        let mut key = b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_vec();
        for part in ["20260101", "eu-west-1", "dsql", "aws4_request"] {
            key = mac(&key, part);
        }
        assert_eq!(signature, hex::encode(mac(&key, &to_sign)));
    }

    #[test]
    fn token_never_prints() {
        let creds = Credentials::from_keys("AKIAXX", "sekrit", None);
        let req = TokenRequest {
            endpoint: "db.x.eu-central-1.rds.amazonaws.com".into(),
            port: 5432,
            region: "eu-central-1".into(),
            db_user: "a b&c".into(),
            kind: TokenKind::Rds,
        };
        let token = presign(&req, &creds, SystemTime::now()).unwrap();
        assert_eq!(token.to_string(), "<redacted>");
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        assert!(token.expose().contains("DBUser=a%20b%26c&"));
    }
}

/// The simulator's SigV4 check against this module's tokens: temporary credentials it issued
/// sign good tokens until they expire.
#[cfg(test)]
mod sim_verifies {
    use std::time::{Duration, SystemTime};

    use rds_auth_proxy_sim::sigv4::{verify_rds_token, RdsTokenExpectation, SimCredentials, TemporaryCredentials, TokenRejection};

    /// Temporary credentials the simulator issued are good for IAM tokens (signed by the proxy's
    /// own signer, with the session token's `+`, `/` and `=` encoded) until they expire, and any
    /// clone of the issuing credentials knows them.
    #[test]
    fn issued_temporary_credentials_sign_rds_tokens_until_they_expire() {
        let issuer = SimCredentials::new("AKIASIMISSUER0000000", "issuer-secret");
        let front = issuer.clone();
        let temp = issuer.issue_temporary(Duration::from_secs(3600));
        assert!(temp.access_key_id.starts_with("ASIA"));
        assert!(temp.session_token.ends_with('='));
        let request = crate::auth::TokenRequest {
            endpoint: "mydb.abc123xyz.eu-west-1.rds.amazonaws.com".into(),
            port: 5432,
            region: "eu-west-1".into(),
            db_user: "iam_user".into(),
            kind: crate::auth::token::TokenKind::Rds,
        };
        let expect = RdsTokenExpectation {
            host: request.endpoint.clone(),
            port: 5432,
            region: "eu-west-1".into(),
            user: "iam_user".into(),
        };
        let signed_at = SystemTime::now();
        let sdk = |t: &TemporaryCredentials| {
            aws_credential_types::Credentials::new(
                &t.access_key_id,
                &t.secret_access_key,
                Some(t.session_token.clone()),
                Some(t.expiration),
                "test",
            )
        };
        let token = crate::auth::token::presign(&request, &sdk(&temp), signed_at).unwrap();
        assert_eq!(verify_rds_token(token.expose(), &expect, &front, signed_at), Ok(()));
        // Without the session token the same keys are refused; a wrong one is refused.
        let no_session = aws_credential_types::Credentials::from_keys(&temp.access_key_id, &temp.secret_access_key, None);
        let token = crate::auth::token::presign(&request, &no_session, signed_at).unwrap();
        assert_eq!(verify_rds_token(token.expose(), &expect, &front, signed_at), Err(TokenRejection::MissingSessionToken));
        let mut forged = temp.clone();
        forged.session_token.insert(0, 'x');
        let token = crate::auth::token::presign(&request, &sdk(&forged), signed_at).unwrap();
        assert_eq!(verify_rds_token(token.expose(), &expect, &front, signed_at), Err(TokenRejection::InvalidSessionToken));
        // Credentials that expire in a second: a token signed before is refused after.
        let short = issuer.issue_temporary(Duration::from_secs(1));
        let token = crate::auth::token::presign(&request, &sdk(&short), signed_at).unwrap();
        assert_eq!(verify_rds_token(token.expose(), &expect, &front, signed_at), Ok(()));
        assert!(matches!(
            verify_rds_token(token.expose(), &expect, &front, signed_at + Duration::from_secs(5)),
            Err(TokenRejection::ExpiredSessionToken { .. })
        ));
        // Credentials issued by another simulator are unknown here.
        let stranger = SimCredentials::new("AKIASIMOTHER00000000", "x").issue_temporary(Duration::from_secs(3600));
        let token = crate::auth::token::presign(&request, &sdk(&stranger), signed_at).unwrap();
        assert_eq!(verify_rds_token(token.expose(), &expect, &front, signed_at), Err(TokenRejection::UnknownAccessKey));
        assert_eq!(issuer.issued_count(), 2);
    }
}
