//! What `--version` prints: the version, the git commit it was built from, and the embedded RDS
//! CA bundle's and Amazon Trust Services roots' size and newest expiry — what to check first
//! when a verify-full handshake fails after AWS rotates its CAs.

use clap::CommandFactory;

use crate::cli::Cli;

/// `git rev-parse --short HEAD` at build time, or "unknown" outside a git checkout (build.rs).
pub const GIT_COMMIT: &str = env!("RDS_AUTH_PROXY_GIT_COMMIT");

/// The embedded bundle: how many certificates, and the latest `notAfter` among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    pub certificates: usize,
    /// `YYYY-MM-DD HH:MM:SS UTC`; `None` if no certificate's validity could be read.
    pub newest_expiry: Option<String>,
}

pub fn embedded_bundle() -> BundleInfo {
    bundle_info(crate::tls::RDS_CA_BUNDLE)
}

pub fn bundle_info(pem: &[u8]) -> BundleInfo {
    let certs = crate::tls::parse_pem_certs(pem).unwrap_or_default();
    // Compared as YYYYMMDDHHMMSS digits, which sort like the times they are.
    let newest = certs.iter().filter_map(|c| not_after(c.as_ref())).max();
    BundleInfo {
        certificates: certs.len(),
        newest_expiry: newest.map(|t| {
            format!("{}-{}-{} {}:{}:{} UTC", &t[0..4], &t[4..6], &t[6..8], &t[8..10], &t[10..12], &t[12..14])
        }),
    }
}

/// The `--version` text.
pub fn long_version() -> String {
    let bundle = embedded_bundle();
    let ats = bundle_info(crate::tls::AMAZON_TRUST_SERVICES);
    format!(
        "{}\ncommit: {GIT_COMMIT}\nembedded RDS CA bundle: {} certificates, newest expires {}\n\
         embedded Amazon Trust Services roots (RDS Proxy endpoints only): {} certificates, newest expires {}",
        env!("CARGO_PKG_VERSION"),
        bundle.certificates,
        bundle.newest_expiry.as_deref().unwrap_or("(unreadable)"),
        ats.certificates,
        ats.newest_expiry.as_deref().unwrap_or("(unreadable)")
    )
}

/// The command line definition with the long version filled in (`-V` stays short).
pub fn command() -> clap::Command {
    // Computed once per run, so leaking it is the simplest way to hand clap a 'static str.
    let long: &'static str = Box::leak(long_version().into_boxed_str());
    Cli::command().long_version(long)
}

/// A certificate's `notAfter` as 14 digits `YYYYMMDDHHMMSS` (RFC 5280 §4.1: Certificate ::=
/// SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
/// issuer, validity SEQUENCE { notBefore, notAfter }, … } … }). A few lines of DER walking
/// instead of an X.509 crate: this is the only field we read, and only for `--version`.
pub fn not_after(der: &[u8]) -> Option<String> {
    use crate::der::{element, SEQUENCE};
    let (SEQUENCE, cert, _) = element(der)? else { return None };
    let (SEQUENCE, tbs, _) = element(cert)? else { return None };
    let (tag, _, mut rest) = element(tbs)?;
    if tag != 0xa0 {
        rest = tbs; // no explicit version: v1, the serial number comes first
    }
    for _ in 0..3 {
        rest = element(rest)?.2; // serialNumber, signature, issuer
    }
    let (SEQUENCE, validity, _) = element(rest)? else { return None };
    let (_, _, after_not_before) = element(validity)?;
    let (tag, time, _) = element(after_not_before)?;
    let time = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let full = match (tag, time.len()) {
        // UTCTime YYMMDDHHMMSSZ: years 50–99 are 19xx (RFC 5280 §4.1.2.5.1).
        (0x17, 12) => {
            let yy: u32 = time.get(..2)?.parse().ok()?;
            format!("{}{time}", if yy >= 50 { "19" } else { "20" })
        }
        // GeneralizedTime YYYYMMDDHHMMSSZ.
        (0x18, 14) => time.to_owned(),
        _ => return None,
    };
    full.bytes().all(|b| b.is_ascii_digit()).then_some(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_expiring(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["example.test".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // rcgen writes UTCTime up to 2049 and GeneralizedTime from 2050, as RFC 5280 says.
        assert_eq!(not_after(&cert_expiring(2049, 12, 31)).as_deref(), Some("20491231000000"));
        assert_eq!(not_after(&cert_expiring(2051, 1, 2)).as_deref(), Some("20510102000000"));
    }

    #[test]
    fn byte_exact_vectors() {
        // SEQUENCE { SEQUENCE { [0] { INTEGER 2 }, INTEGER 1, SEQUENCE {}, SEQUENCE {},
        //   SEQUENCE { UTCTime "990101000000Z", UTCTime "491231235959Z" } } }
        let tbs: &[u8] = &[
            0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x01, 0x30, 0x00, 0x30, 0x00, 0x30, 0x1e, 0x17, 0x0d,
            b'9', b'9', b'0', b'1', b'0', b'1', b'0', b'0', b'0', b'0', b'0', b'0', b'Z', 0x17, 0x0d, b'4',
            b'9', b'1', b'2', b'3', b'1', b'2', b'3', b'5', b'9', b'5', b'9', b'Z',
        ];
        let mut cert = vec![0x30, tbs.len() as u8 + 2, 0x30, tbs.len() as u8];
        cert.extend_from_slice(tbs);
        assert_eq!(not_after(&cert).as_deref(), Some("20491231235959"));
        // A 1999 notAfter (UTCTime 99…) is 1999, not 2099.
        let mut old = cert.clone();
        let pos = old.len() - 13;
        old[pos..pos + 2].copy_from_slice(b"99");
        assert_eq!(not_after(&old).as_deref(), Some("19991231235959"));
        // Truncated or garbage input is None, never a panic.
        for n in 0..cert.len() {
            assert_eq!(not_after(&cert[..n]), None, "truncated at {n}");
        }
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(not_after(b"not DER at all"), None);
    }

    #[test]
    fn embedded_bundle_is_counted() {
        let info = embedded_bundle();
        let pem = std::str::from_utf8(crate::tls::RDS_CA_BUNDLE).unwrap();
        assert_eq!(info.certificates, pem.matches("-----BEGIN CERTIFICATE-----").count());
        assert!(info.certificates > 10, "{info:?}");
        let newest = info.newest_expiry.expect("readable");
        assert!(newest.as_str() > "2030-01-01", "RDS's current CAs live into the 2060s: {newest}");
        // Two certificates, the later expiry wins.
        let pem = |der: Vec<u8>| {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
        };
        let two = pem(cert_expiring(2031, 5, 6)) + &pem(cert_expiring(2041, 7, 8));
        assert_eq!(
            bundle_info(two.as_bytes()),
            BundleInfo { certificates: 2, newest_expiry: Some("2041-07-08 00:00:00 UTC".into()) }
        );
    }
}
