//! What a SigV4 signature claims about itself (credential scope, signed headers, time), parsed
//! from a token's query or an `Authorization` header, and checked by signing again.

use super::*;

/// What a signature says about itself: who signed, for which scope, when, and the signature.
pub(super) struct Claim<'a> {
    pub(super) scope: CredentialScope<'a>,
    /// `X-Amz-Date` as Unix seconds.
    pub(super) signed_at: i64,
    /// 64 lowercase hex digits.
    pub(super) signature: &'a str,
}

impl Claim<'_> {
    /// Signs `request` again as the claimed signer would have (with `secret` and the signed
    /// `session_token`, at the claimed time, for the claimed scope) and compares in constant time.
    /// A request `aws-sigv4` cannot sign cannot carry a valid signature either.
    pub(super) fn matches(
        &self,
        request: SignableRequest<'_>,
        settings: SigningSettings,
        secret: &str,
        session_token: Option<&str>,
    ) -> bool {
        let Ok(secs) = u64::try_from(self.signed_at) else {
            return false;
        };
        let identity = Credentials::new(
            self.scope.access_key_id,
            secret,
            session_token.map(str::to_owned),
            None,
            "simulator",
        )
        .into();
        let Ok(params) = v4::SigningParams::builder()
            .identity(&identity)
            .region(self.scope.region)
            .name(self.scope.service)
            .time(UNIX_EPOCH + Duration::from_secs(secs))
            .settings(settings)
            .build()
        else {
            return false;
        };
        match sign(request, &params.into()) {
            Ok(output) => output.signature().as_bytes().ct_eq(self.signature.as_bytes()).into(),
            Err(_) => false,
        }
    }
}

/// `<akid>/<yyyymmdd>/<region>/<service>/aws4_request`, borrowed from the credential string.
pub(super) struct CredentialScope<'a> {
    pub(super) access_key_id: &'a str,
    pub(super) date: &'a str,
    pub(super) region: &'a str,
    pub(super) service: &'a str,
}

impl<'a> CredentialScope<'a> {
    pub(super) fn parse(credential: &'a str) -> Option<Self> {
        let mut parts = credential.split('/');
        let scope = Self {
            access_key_id: parts.next()?,
            date: parts.next()?,
            region: parts.next()?,
            service: parts.next()?,
        };
        let well_formed = parts.next() == Some(SCOPE_TERMINATOR)
            && parts.next().is_none()
            && !scope.access_key_id.is_empty()
            && !scope.region.is_empty()
            && !scope.service.is_empty()
            && scope.date.len() == 8
            && scope.date.bytes().all(|b| b.is_ascii_digit());
        well_formed.then_some(scope)
    }
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
pub(super) struct Authorization<'a> {
    pub(super) credential: &'a str,
    pub(super) signed_headers: &'a str,
    pub(super) signature: &'a str,
}

impl<'a> Authorization<'a> {
    pub(super) fn parse(raw: &'a [u8]) -> Result<Self, SignatureRejection> {
        use SignatureRejection as R;
        let raw = std::str::from_utf8(raw).map_err(|_| R::MalformedAuthorization("not UTF-8"))?;
        let (algorithm, rest) = raw
            .trim()
            .split_once(' ')
            .ok_or(R::MalformedAuthorization("expected '<algorithm> <fields>'"))?;
        if algorithm != ALGORITHM {
            return Err(R::UnsupportedAlgorithm);
        }
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for field in rest.split(',') {
            let (key, value) = field
                .trim()
                .split_once('=')
                .ok_or(R::MalformedAuthorization("field without '='"))?;
            let slot = match key {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed_headers,
                "Signature" => &mut signature,
                _ => return Err(R::MalformedAuthorization("unknown field")),
            };
            if slot.replace(value).is_some() {
                return Err(R::MalformedAuthorization("repeated field"));
            }
        }
        let signature = signature.ok_or(R::MalformedAuthorization("missing Signature"))?;
        if !is_signature_hex(signature) {
            return Err(R::MalformedAuthorization(
                "Signature is not 64 lowercase hex digits",
            ));
        }
        Ok(Self {
            credential: credential.ok_or(R::MalformedAuthorization("missing Credential"))?,
            signed_headers: signed_headers
                .ok_or(R::MalformedAuthorization("missing SignedHeaders"))?,
            signature,
        })
    }
}

/// Signatures are 64 lowercase hex digits; AWS compares the string, so uppercase hex does not verify.
pub(super) fn is_signature_hex(signature: &str) -> bool {
    signature.len() == 64 && signature.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Decodes `k=v&k=v` the way AWS and `aws-sigv4` do (form-urlencoded: `+` is a space). Empty pieces
/// are skipped; a repeated key is refused, so no check can look at one `DBUser` while the signature
/// covers another.
pub(super) fn parse_query(query: &str) -> Result<Vec<(String, String)>, &'static str> {
    let mut params: Vec<(String, String)> = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        let (k, v) = (form_decode(k)?, form_decode(v)?);
        if params.iter().any(|(seen, _)| *seen == k) {
            return Err("repeated query parameter");
        }
        params.push((k, v));
    }
    Ok(params)
}

pub(super) fn form_decode(raw: &str) -> Result<String, &'static str> {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "query parameter is not UTF-8")
}

/// Splits `host:port`; a bare host means the https default 443 (how `url` prints such a token).
pub(super) fn split_authority(authority: &str) -> Option<(&str, u16)> {
    match authority.rsplit_once(':') {
        // `[::1]` alone: the colon belongs to the IPv6 literal.
        Some((host, port)) if !port.contains(']') => {
            if host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((host, port.parse().ok()?))
        }
        _ => Some((authority, 443)),
    }
}

/// The one value of a header, as text; `None` if absent, repeated or not UTF-8.
pub(super) fn single_header<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    std::str::from_utf8(value.as_bytes()).ok()
}

pub(super) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Parses `yyyymmddThhmmssZ` (UTC) into Unix seconds, validating every field: `aws-sigv4` signs
/// with the time written back in that form, which is then the very string the request carried.
pub(super) fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = s.get(range)?;
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub(super) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
