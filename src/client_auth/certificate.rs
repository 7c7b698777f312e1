//! The one thing the proxy reads from a client certificate: its subject's common name (CN),
//! which must equal the user name the client logs in as (PostgreSQL's `clientcert=verify-full`
//! rule). rustls has already verified the chain against `--client-ca-file` by then, so the
//! DER is well formed; this walker still checks every length and returns `None` rather than
//! panic on anything unexpected.

/// What the TLS handshake proved about a client: it holds the key of a certificate issued by the
/// CA in `--client-ca-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject's first CN, as PostgreSQL takes it; `None` when there is none, or it is not
    /// text, or it holds a NUL (which PostgreSQL refuses too).
    pub common_name: Option<String>,
}

impl ClientCertificate {
    pub fn from_der(der: &[u8]) -> ClientCertificate {
        ClientCertificate {
            common_name: common_name(der),
        }
    }
}

use crate::der::{element, expect, OID, SEQUENCE, SET};

/// `[0] EXPLICIT Version` at the start of a TBSCertificate.
const VERSION: u8 = 0xa0;
/// 2.5.4.3, id-at-commonName.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, … }, … }; subject ::= SEQUENCE OF SET OF
/// SEQUENCE { type OID, value ANY }.
fn common_name(der: &[u8]) -> Option<String> {
    let (certificate, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    if let Some((VERSION, _, after)) = element(rest) {
        rest = after;
    }
    // serialNumber, signature, issuer, validity.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (mut names, _) = expect(rest, SEQUENCE)?;
    while !names.is_empty() {
        let (mut set, after) = expect(names, SET)?;
        names = after;
        while !set.is_empty() {
            let (attribute, after) = expect(set, SEQUENCE)?;
            set = after;
            let (oid, value) = expect(attribute, OID)?;
            if oid == CN_OID {
                let (tag, text, _) = element(value)?;
                return directory_string(tag, text).filter(|s| !s.contains('\0'));
            }
        }
    }
    None
}

/// A DirectoryString (or IA5String) as text: UTF8String, PrintableString, IA5String, and
/// BMPString (UTF-16BE); anything else is not a name we can compare.
fn directory_string(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String.
        0x0c | 0x13 | 0x16 => String::from_utf8(bytes.to_vec()).ok(),
        // BMPString.
        0x1e if bytes.len().is_multiple_of(2) => {
            let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair};

    fn cert_with(dn: &[(DnType, DnValue)]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), v.clone());
        }
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_table() {
        let utf8 = |s: &str| DnValue::Utf8String(s.to_owned());
        type Case = (Vec<(DnType, DnValue)>, Option<&'static str>);
        let cases: Vec<Case> = vec![
            (vec![(DnType::CommonName, utf8("db_user"))], Some("db_user")),
            (vec![(DnType::OrganizationName, utf8("org")), (DnType::CommonName, utf8("ålice"))], Some("ålice")),
            (vec![(DnType::CommonName, DnValue::PrintableString("bob".try_into().unwrap()))], Some("bob")),
            (vec![(DnType::CommonName, DnValue::BmpString("carol".try_into().unwrap()))], Some("carol")),
            (vec![(DnType::OrganizationName, utf8("no cn"))], None),
            (vec![], None),
            (vec![(DnType::CommonName, utf8("nul\0inside"))], None),
        ];
        for (dn, want) in cases {
            assert_eq!(ClientCertificate::from_der(&cert_with(&dn)).common_name.as_deref(), want, "{dn:?}");
        }
    }

    #[test]
    fn truncated_or_garbage_input_is_none_not_a_panic() {
        let der = cert_with(&[(DnType::CommonName, DnValue::Utf8String("db_user".into()))]);
        for len in 0..der.len() {
            // Cut anywhere: the outer length then overruns the input.
            assert_eq!(common_name(&der[..len]), None, "cut at {len}");
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = common_name(&flipped);
            flipped[i] ^= 0xff;
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
    }
}
