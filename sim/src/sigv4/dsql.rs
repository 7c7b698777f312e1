//! Aurora DSQL auth tokens: a SigV4 query presign of `GET https://HOST/?Action=DbConnect`
//! (`DbConnectAdmin` for the `admin` role), signing name `dsql`, only `host` signed, the payload
//! hash of the empty body, up to a week of life; the token is the URL without `https://`.

use super::*;

/// What the simulated DSQL cluster expects a token to have been signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsqlTokenExpectation {
    /// The endpoint name the client asked for by SNI; the token must be signed for exactly this
    /// host, without a port.
    pub host: String,
    /// The cluster's region; the credential scope must name it.
    pub region: String,
    /// The startup `user`: `admin` needs `Action=DbConnectAdmin`, every other role `DbConnect`.
    pub user: String,
}

impl DsqlTokenExpectation {
    /// The action a token for this user must carry (the AWS connectors' rule too).
    pub fn action(&self) -> &'static str {
        if self.user == "admin" {
            "DbConnectAdmin"
        } else {
            "DbConnect"
        }
    }
}

/// Verifies an Aurora DSQL auth token as DSQL would: signed by `creds` for `dsql` in the cluster's
/// region, for the host the client named and the action its role needs, and not expired at `now`.
pub fn verify_dsql_token(
    token: &str,
    expect: &DsqlTokenExpectation,
    creds: &SimCredentials,
    now: SystemTime,
) -> Result<(), TokenRejection> {
    use TokenRejection as R;
    let (authority, params) = split_token(token)?;
    let claim = PresignedClaim::parse(&params)?;
    if claim.algorithm != ALGORITHM {
        return Err(R::UnsupportedAlgorithm);
    }
    // Signed for the name alone: the SDKs presign `https://HOST/`, so a port here was never
    // part of a DSQL token.
    if !authority.eq_ignore_ascii_case(&expect.host) {
        return Err(R::WrongHost {
            expected: expect.host.clone(),
            got: authority.to_owned(),
        });
    }
    if query_param(&params, "Action") != Some(expect.action()) {
        return Err(R::WrongAction);
    }
    let signed_for = PresignedFor {
        service: DSQL_SERVICE,
        region: &expect.region,
        max_expires: MAX_DSQL_TOKEN_EXPIRES_SECS,
    };
    claim.verify(authority, &params, &signed_for, creds, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// aws-sdk-rust `sdk/dsql/src/auth_token.rs` test vector (engines-research.md §4): akid/secret,
    /// 2024-08-27T00:00:00Z, 450 s.
    const SDK_TOKEN: &str = "peccy.dsql.us-east-1.on.aws/?Action=DbConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240827%2Fus-east-1%2Fdsql%2Faws4_request&X-Amz-Date=20240827T000000Z&X-Amz-Expires=450&X-Amz-SignedHeaders=host&X-Amz-Signature=f5f2ad764ca5df44045d4ab6ccecba0eef941b0007e5765885a0b6ed3702a3f8";
    /// The same with `Action=DbConnectAdmin`.
    const SDK_ADMIN_SIGNATURE: &str = "267cf8d04d84444f7a62d5bdb40c44bfc6cb13dd6c64fa7f772df6bbaa90fff1";

    fn at(amz_date: &str) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(parse_amz_date(amz_date).unwrap() as u64)
    }

    fn expect(user: &str) -> DsqlTokenExpectation {
        DsqlTokenExpectation {
            host: "peccy.dsql.us-east-1.on.aws".into(),
            region: "us-east-1".into(),
            user: user.into(),
        }
    }

    fn admin_token() -> String {
        SDK_TOKEN
            .replace("Action=DbConnect&", "Action=DbConnectAdmin&")
            .replace(&SDK_TOKEN[SDK_TOKEN.len() - 64..], SDK_ADMIN_SIGNATURE)
    }

    fn creds() -> SimCredentials {
        SimCredentials::new("akid", "secret")
    }

    #[test]
    fn sdk_vectors_verify_within_their_life() {
        let now = at("20240827T000500Z");
        assert_eq!(verify_dsql_token(SDK_TOKEN, &expect("alice"), &creds(), now), Ok(()));
        assert_eq!(verify_dsql_token(&admin_token(), &expect("admin"), &creds(), now), Ok(()));
        // The last second of its 450 s, and a little ahead of our clock.
        assert_eq!(verify_dsql_token(SDK_TOKEN, &expect("alice"), &creds(), at("20240827T000730Z")), Ok(()));
        assert_eq!(verify_dsql_token(SDK_TOKEN, &expect("alice"), &creds(), at("20240826T235800Z")), Ok(()));
    }

    #[test]
    fn one_hex_digit_flipped_is_refused() {
        let mut flipped = SDK_TOKEN.to_owned();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '8' { '9' } else { '8' });
        assert_eq!(
            verify_dsql_token(&flipped, &expect("alice"), &creds(), at("20240827T000500Z")),
            Err(TokenRejection::BadSignature)
        );
    }

    #[test]
    fn the_action_must_match_the_role() {
        let now = at("20240827T000500Z");
        assert_eq!(verify_dsql_token(SDK_TOKEN, &expect("admin"), &creds(), now), Err(TokenRejection::WrongAction));
        assert_eq!(verify_dsql_token(&admin_token(), &expect("alice"), &creds(), now), Err(TokenRejection::WrongAction));
        // Claiming the other action without signing it.
        let relabelled = SDK_TOKEN.replace("Action=DbConnect&", "Action=DbConnectAdmin&");
        assert_eq!(verify_dsql_token(&relabelled, &expect("admin"), &creds(), now), Err(TokenRejection::BadSignature));
        // An RDS token is for another action (and service) altogether.
        let rds = SDK_TOKEN.replace("Action=DbConnect&", "Action=connect&DBUser=alice&");
        assert_eq!(verify_dsql_token(&rds, &expect("alice"), &creds(), now), Err(TokenRejection::WrongAction));
    }

    #[test]
    fn a_token_signed_for_rds_db_is_refused() {
        let rds_db = SDK_TOKEN.replace("%2Fdsql%2F", "%2Frds-db%2F");
        assert_eq!(
            verify_dsql_token(&rds_db, &expect("alice"), &creds(), at("20240827T000500Z")),
            Err(TokenRejection::WrongService { expected: "dsql", got: "rds-db".into() })
        );
    }

    #[test]
    fn the_host_must_be_the_sni_name_without_port() {
        let now = at("20240827T000500Z");
        let mut other = expect("alice");
        other.host = "other0000000000000000000aa.dsql.us-east-1.on.aws".into();
        assert!(matches!(verify_dsql_token(SDK_TOKEN, &other, &creds(), now), Err(TokenRejection::WrongHost { .. })));
        let with_port = SDK_TOKEN.replace("on.aws/?", "on.aws:5432/?");
        assert!(matches!(
            verify_dsql_token(&with_port, &expect("alice"), &creds(), now),
            Err(TokenRejection::WrongHost { .. })
        ));
        let mut region = expect("alice");
        region.region = "eu-central-1".into();
        assert!(matches!(verify_dsql_token(SDK_TOKEN, &region, &creds(), now), Err(TokenRejection::WrongRegion { .. })));
    }

    #[test]
    fn expired_far_future_and_too_long_tokens_are_refused() {
        assert_eq!(
            verify_dsql_token(SDK_TOKEN, &expect("alice"), &creds(), at("20240827T000731Z")),
            Err(TokenRejection::Expired { seconds_ago: 1 })
        );
        assert!(matches!(
            verify_dsql_token(SDK_TOKEN, &expect("alice"), &creds(), at("20240826T235400Z")),
            Err(TokenRejection::NotYetValid { .. })
        ));
        let week_and_a_second = SDK_TOKEN.replace("X-Amz-Expires=450", "X-Amz-Expires=604801");
        assert_eq!(
            verify_dsql_token(&week_and_a_second, &expect("alice"), &creds(), at("20240827T000500Z")),
            Err(TokenRejection::InvalidExpires)
        );
        // A week is allowed (the signature then no longer matches: it was signed for 450 s).
        let week = SDK_TOKEN.replace("X-Amz-Expires=450", "X-Amz-Expires=604800");
        assert_eq!(
            verify_dsql_token(&week, &expect("alice"), &creds(), at("20240827T000500Z")),
            Err(TokenRejection::BadSignature)
        );
        assert_eq!(
            verify_dsql_token(SDK_TOKEN, &expect("alice"), &SimCredentials::new("akid", "other"), at("20240827T000500Z")),
            Err(TokenRejection::BadSignature)
        );
    }
}
