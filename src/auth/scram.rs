//! SCRAM-SHA-256(-PLUS) on the upstream leg, as far as it is ours: picking the mechanism, the
//! tls-server-end-point channel binding data (RFC 5929) from the certificate our verified TLS
//! session saw, and the frontend messages that carry the exchange. The SCRAM arithmetic itself
//! (nonces, SaltedPassword, proofs, the server signature check) is `postgres-protocol`'s.

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use sha2::Digest;

/// The mechanism chosen from the server's list, with its channel binding.
pub struct Choice {
    pub mechanism: &'static str,
    pub scram: ScramSha256,
    /// Whether the exchange is bound to the TLS session (SCRAM-SHA-256-PLUS).
    pub bound: bool,
}

/// Chooses like libpq with `channel_binding=prefer`: `-PLUS` when offered and the certificate
/// hash is known; plain SCRAM with `y` (we could bind, the server did not offer it) when only
/// SCRAM-SHA-256 is offered; `n` when `-PLUS` is offered but the hash cannot be computed (a
/// `y` would then be taken for a downgrade). `None`: no SCRAM-SHA-256 mechanism offered.
pub fn choose(mechanisms: &[String], password: &str, cert_hash: Option<Vec<u8>>) -> Option<Choice> {
    let offered = |m: &str| mechanisms.iter().any(|x| x == m);
    let plus = offered(SCRAM_SHA_256_PLUS);
    match (plus, cert_hash) {
        (true, Some(hash)) => Some(Choice {
            mechanism: SCRAM_SHA_256_PLUS,
            scram: ScramSha256::new(
                password.as_bytes(),
                ChannelBinding::tls_server_end_point(hash),
            ),
            bound: true,
        }),
        (true, None) if offered(SCRAM_SHA_256) => Some(Choice {
            mechanism: SCRAM_SHA_256,
            scram: ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported()),
            bound: false,
        }),
        (false, _) if offered(SCRAM_SHA_256) => Some(Choice {
            mechanism: SCRAM_SHA_256,
            scram: ScramSha256::new(password.as_bytes(), ChannelBinding::unrequested()),
            bound: false,
        }),
        _ => None,
    }
}

/// tls-server-end-point channel binding data: the hash of the server's DER certificate, with
/// the hash of its signature algorithm, MD5 and SHA-1 replaced by SHA-256 (RFC 5929 §4.1, as
/// PostgreSQL's `be_tls_get_certificate_hash`). `None` for algorithms PostgreSQL cannot bind
/// either (RSASSA-PSS, Ed25519, anything unknown or a certificate that does not parse).
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm_oid(cert_der)?;
    Some(match oid_hash(oid)? {
        Hash::Sha256 => sha2::Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// Signature algorithm OIDs (DER content bytes) and the hash RFC 5929 picks for each.
fn oid_hash(oid: &[u8]) -> Option<Hash> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01]; // 1.2.840.113549.1.1
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03]; // 1.2.840.10045.4.3
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]; // 1.2.840.10045.4.1
    if oid == ECDSA_SHA1 {
        return Some(Hash::Sha256);
    }
    if let Some(last) = oid.strip_prefix(RSA) {
        return match last {
            [4] | [5] | [11] | [14] => Some(Hash::Sha256), // md5, sha1, sha256, sha224
            [12] => Some(Hash::Sha384),
            [13] => Some(Hash::Sha512),
            _ => None, // 10 = RSASSA-PSS: hash in the parameters; PostgreSQL refuses it too
        };
    }
    if let Some(last) = oid.strip_prefix(ECDSA_SHA2) {
        return match last {
            [1] | [2] => Some(Hash::Sha256), // sha224, sha256
            [3] => Some(Hash::Sha384),
            [4] => Some(Hash::Sha512),
            _ => None,
        };
    }
    None
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, … }`:
/// the OID of the outer signatureAlgorithm, read with bounds checks only.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    use crate::der::{element, expect, OID, SEQUENCE};
    let (cert, _) = expect(der, SEQUENCE)?;
    let (_, _, after_tbs) = element(cert)?;
    let (alg, _) = expect(after_tbs, SEQUENCE)?;
    expect(alg, OID).map(|(oid, _)| oid)
}

/// SASLInitialResponse: `p`, length, mechanism\0, Int32 length of the data, the data.
pub fn initial_response(mechanism: &str, data: &[u8]) -> BytesMut {
    let mut m = BytesMut::with_capacity(mechanism.len() + data.len() + 10);
    m.put_u8(b'p');
    m.put_u32((4 + mechanism.len() + 1 + 4 + data.len()) as u32);
    m.put_slice(mechanism.as_bytes());
    m.put_u8(0);
    m.put_i32(data.len() as i32);
    m.put_slice(data);
    m
}

/// SASLResponse (and PasswordMessage without its terminator): `p`, length, the data.
pub fn response(data: &[u8]) -> BytesMut {
    let mut m = BytesMut::with_capacity(data.len() + 5);
    m.put_u8(b'p');
    m.put_u32((4 + data.len()) as u32);
    m.put_slice(data);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use hmac::{Hmac, Mac};

    #[test]
    fn frontend_messages_byte_exact() {
        assert_eq!(
            &initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")[..],
            b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc"
        );
        assert_eq!(&response(b"c=biws")[..], b"p\x00\x00\x00\x0ac=biws");
    }

    #[test]
    fn mechanism_choice() {
        let both = vec![SCRAM_SHA_256_PLUS.to_owned(), SCRAM_SHA_256.to_owned()];
        let plain = vec![SCRAM_SHA_256.to_owned()];
        let c = choose(&both, "pw", Some(vec![1; 32])).unwrap();
        assert_eq!((c.mechanism, c.bound), (SCRAM_SHA_256_PLUS, true));
        assert!(c
            .scram
            .message()
            .starts_with(b"p=tls-server-end-point,,n=,r="));
        let c = choose(&both, "pw", None).unwrap();
        assert_eq!((c.mechanism, c.bound), (SCRAM_SHA_256, false));
        assert!(
            c.scram.message().starts_with(b"n,,n=,r="),
            "never `y` when PLUS was offered"
        );
        let c = choose(&plain, "pw", Some(vec![1; 32])).unwrap();
        assert_eq!(c.mechanism, SCRAM_SHA_256);
        assert!(c.scram.message().starts_with(b"y,,n=,r="));
        assert!(choose(&["SCRAM-SHA-1".to_owned()], "pw", None).is_none());
        assert!(choose(&[SCRAM_SHA_256_PLUS.to_owned()], "pw", None).is_none());
    }

    /// RFC 7677's vector, byte-exact: the reference arithmetic the next test plays the server
    /// with (postgres-protocol's own tests run a PostgreSQL exchange vector through its client).
    #[test]
    fn rfc7677_vector() {
        type HmacSha256 = Hmac<sha2::Sha256>;
        let b64 = base64::engine::general_purpose::STANDARD;
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let final_without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let salt = b64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        // Hi() = PBKDF2-HMAC-SHA-256; this vector also vouches for the helper the next test uses.
        let mut salted = [0u8; 32];
        pbkdf2_sha256(b"pencil", &salt, 4096, &mut salted);
        let hmac = |key: &[u8], msg: &[u8]| {
            let mut mac = HmacSha256::new_from_slice(key).unwrap();
            mac.update(msg);
            mac.finalize().into_bytes()
        };
        let auth_message = format!("{client_first_bare},{server_first},{final_without_proof}");
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = sha2::Sha256::digest(client_key);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(
            b64.encode(&proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server_key = hmac(&salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        assert_eq!(
            b64.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    /// A full exchange through postgres-protocol against a server we compute by hand: a right
    /// server signature is accepted, a wrong one refused.
    #[test]
    fn server_signature_is_checked() {
        type HmacSha256 = Hmac<sha2::Sha256>;
        let b64 = base64::engine::general_purpose::STANDARD;
        let run = |tamper: bool| {
            let mut c = choose(&[SCRAM_SHA_256.to_owned()], "pencil", None).unwrap();
            let first = String::from_utf8(c.scram.message().to_vec()).unwrap();
            let client_nonce = first.rsplit("r=").next().unwrap().to_owned();
            let salt = b"0123456789abcdef";
            let server_first = format!("r={client_nonce}SRV,s={},i=4096", b64.encode(salt));
            c.scram.update(server_first.as_bytes()).unwrap();
            let client_final = String::from_utf8(c.scram.message().to_vec()).unwrap();
            assert!(client_final.starts_with("c=eSws,r="), "{client_final}");
            let without_proof = client_final.split(",p=").next().unwrap();
            let bare = first.strip_prefix("y,,").unwrap();
            let auth_message = format!("{bare},{server_first},{without_proof}");
            let mut salted = [0u8; 32];
            pbkdf2_sha256(b"pencil", salt, 4096, &mut salted);
            let mut mac = HmacSha256::new_from_slice(&salted).unwrap();
            mac.update(b"Server Key");
            let server_key = mac.finalize().into_bytes();
            let mut mac = HmacSha256::new_from_slice(&server_key).unwrap();
            mac.update(auth_message.as_bytes());
            let mut sig = mac.finalize().into_bytes().to_vec();
            if tamper {
                sig[0] ^= 1;
            }
            c.scram.finish(format!("v={}", b64.encode(sig)).as_bytes())
        };
        assert!(run(false).is_ok());
        assert!(run(true).is_err());
    }

    fn pbkdf2_sha256(password: &[u8], salt: &[u8], rounds: u32, out: &mut [u8; 32]) {
        type HmacSha256 = Hmac<sha2::Sha256>;
        let mut mac = HmacSha256::new_from_slice(password).unwrap();
        mac.update(salt);
        mac.update(&[0, 0, 0, 1]);
        let mut u = mac.finalize().into_bytes();
        out.copy_from_slice(&u);
        for _ in 1..rounds {
            let mut mac = HmacSha256::new_from_slice(password).unwrap();
            mac.update(&u);
            u = mac.finalize().into_bytes();
            for (o, x) in out.iter_mut().zip(u.iter()) {
                *o ^= x;
            }
        }
    }

    #[test]
    fn channel_binding_hash_follows_the_signature_algorithm() {
        // rcgen's default key is ECDSA P-256, signed with ecdsa-with-SHA256.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        assert_eq!(
            tls_server_end_point(&der),
            Some(sha2::Sha256::digest(&der).to_vec())
        );
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        assert_eq!(
            tls_server_end_point(&der),
            Some(sha2::Sha384::digest(&der).to_vec())
        );
        assert_eq!(
            oid_hash(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 5]),
            Some(Hash::Sha256)
        );
        assert_eq!(
            oid_hash(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 13]),
            Some(Hash::Sha512)
        );
        assert_eq!(
            oid_hash(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 10]),
            None,
            "PSS"
        );
        assert_eq!(oid_hash(&[0x2b, 0x65, 0x70]), None, "Ed25519");
        assert_eq!(tls_server_end_point(b"\x30\x82\xff"), None);
        assert_eq!(tls_server_end_point(&der[..der.len() / 2]), None);
    }
}
