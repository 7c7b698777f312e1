//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) in PostgreSQL's flavour: the client
//! sends an empty user name (`n=`; the StartupMessage names the user), no authorization
//! identity, and a GS2 header of `n,,`, `y,,` or, over TLS, `p=tls-server-end-point,,`
//! (SCRAM-SHA-256-PLUS, RFC 5929: the hash of the listener's certificate). Only a [`Verifier`]
//! (salt, StoredKey, ServerKey) is kept, never the password.
//!
//! Written here rather than taken from pgwire: the proxy reads the client's raw startup bytes
//! itself (`pg::startup`) and relays them, so pgwire's server framework would not fit, and the
//! SCRAM arithmetic is a few HMACs over primitives already in the build (`hmac`, `sha2`), with
//! SASLprep from `stringprep`, as `postgres-protocol` uses on the client side.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The mechanism every client can use.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// The same, bound to the TLS channel; offered to TLS clients.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel binding type PostgreSQL (and so libpq) knows.
const CHANNEL_BINDING_TYPE: &str = "tls-server-end-point";

/// What the server offered and the client chose, for the GS2 header rules of RFC 5802 §6.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// No -PLUS offered (no TLS): `n` or `y` are fine.
    NotOffered,
    /// -PLUS offered, plain SCRAM-SHA-256 chosen: `n` only; `y` ("I could bind, I think you
    /// cannot") means someone in between removed -PLUS from the list.
    Offered,
    /// -PLUS chosen: `p=tls-server-end-point` with this channel's data.
    Selected(&'a [u8]),
}
/// PostgreSQL's default (`scram_iterations`).
pub const ITERATIONS: u32 = 4096;
/// Salt and nonce sizes as PostgreSQL makes them.
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 18;

/// What the server keeps of a password (as PostgreSQL keeps in `pg_authid`): enough to check a
/// client's proof and to prove itself, not enough to log in elsewhere.
#[derive(Clone)]
pub struct Verifier {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `password` with a fresh random salt.
    pub fn new(password: &str) -> Verifier {
        let salt: [u8; SALT_LEN] = rand::random();
        Verifier::with_salt(password, &salt, ITERATIONS)
    }

    /// A verifier for `password` with the given salt (tests use RFC 7677's).
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        // Clients SASLprep the password (RFC 4013) and fall back to the raw bytes when it has
        // prohibited characters; PostgreSQL's server does the same, and so do we.
        let prepared = stringprep::saslprep(password)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| password.to_owned());
        let salted = hi(prepared.as_bytes(), salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Verifier {
            salt: salt.to_vec(),
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }
}

/// Why an exchange failed. Carries no secret and no client-supplied text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("the client asked for channel binding (SCRAM-SHA-256-PLUS), which this listener does not offer")]
    ChannelBindingRequested,
    #[error("the client says it can bind to the channel but saw no SCRAM-SHA-256-PLUS, which was offered: the mechanism list was tampered with")]
    ChannelBindingDowngrade,
    #[error("the client chose SCRAM-SHA-256-PLUS without channel binding tls-server-end-point")]
    ChannelBindingMissing,
    #[error("the client sent an authorization identity, which is not supported")]
    AuthorizationIdentity,
    #[error("the client requires an unsupported SCRAM extension")]
    MandatoryExtension,
    #[error("the channel binding of the final SCRAM message does not match the first")]
    ChannelBindingMismatch,
    #[error("the nonce of the final SCRAM message does not match")]
    NonceMismatch,
    #[error("wrong password")]
    WrongPassword,
}

/// An exchange after the server-first message: what the final step needs.
#[derive(Debug)]
pub struct Exchange {
    /// `n,,`, `y,,` or `p=tls-server-end-point,,` followed by the channel's data: what the
    /// client must echo (base64) in `c=`.
    gs2_header: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    /// Client nonce + server nonce.
    nonce: String,
}

/// A fresh server nonce: 18 random bytes, base64 (printable, no `,`), as PostgreSQL.
pub fn server_nonce() -> String {
    let raw: [u8; NONCE_LEN] = rand::random();
    BASE64.encode(raw)
}

/// Reads the client-first message and answers with the server-first message
/// ([`Exchange::server_first`]). `binding`: what was offered and chosen.
pub fn start(verifier: &Verifier, client_first: &[u8], server_nonce: &str, binding: Binding<'_>) -> Result<Exchange, ScramError> {
    let text = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let (cbind, rest) = text
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    let channel_data = match (cbind, binding) {
        ("n", Binding::NotOffered | Binding::Offered) | ("y", Binding::NotOffered) => &[][..],
        ("y", Binding::Offered) => return Err(ScramError::ChannelBindingDowngrade),
        ("n" | "y", Binding::Selected(_)) => return Err(ScramError::ChannelBindingMissing),
        (c, Binding::Selected(data)) if c.strip_prefix("p=") == Some(CHANNEL_BINDING_TYPE) => data,
        (c, Binding::Selected(_)) if c.starts_with("p=") => return Err(ScramError::ChannelBindingMissing),
        (c, _) if c.starts_with("p=") => return Err(ScramError::ChannelBindingRequested),
        _ => return Err(ScramError::Malformed("unknown channel binding flag")),
    };
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    if !authzid.is_empty() {
        return Err(ScramError::AuthorizationIdentity);
    }
    // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
    if bare.starts_with("m=") {
        return Err(ScramError::MandatoryExtension);
    }
    let mut attrs = bare.split(',');
    // The user name is ignored, as PostgreSQL does: the StartupMessage names the user.
    attrs
        .next()
        .and_then(|a| a.strip_prefix("n="))
        .ok_or(ScramError::Malformed("no user name attribute"))?;
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed("no nonce attribute"))?;
    if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ScramError::Malformed("the nonce is not printable"));
    }
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        BASE64.encode(&verifier.salt),
        verifier.iterations
    );
    let mut gs2_header = format!("{cbind},,").into_bytes();
    gs2_header.extend_from_slice(channel_data);
    Ok(Exchange {
        gs2_header,
        client_first_bare: bare.to_owned(),
        server_first,
        nonce,
    })
}

impl Exchange {
    /// The server-first message: `r=<nonce>,s=<salt>,i=<iterations>`.
    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks the client-final message's proof; on success returns the server-final message
    /// (`v=<ServerSignature>`), which proves to the client that we know the password too.
    pub fn finish(&self, verifier: &Verifier, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof attribute"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if binding != self.gs2_header {
            return Err(ScramError::ChannelBindingMismatch);
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce attribute"))?;
        if nonce != self.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof is not 32 bytes"));
        }
        let auth_message = format!("{},{},{without_proof}", self.client_first_bare, self.server_first);
        let client_signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(client_signature.iter())) {
            *k = p ^ s;
        }
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored_key.ct_eq(&verifier.stored_key)) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac_sha256(&verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)))
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Hi() of RFC 5802: PBKDF2 with HMAC-SHA-256 and one block of output.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(password).expect("HMAC takes keys of any length");
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_sha256(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";

    fn rfc_verifier() -> Verifier {
        Verifier::with_salt("pencil", &BASE64.decode(RFC_SALT).unwrap(), 4096)
    }

    /// RFC 7677 §3, byte for byte, played from the server's side.
    #[test]
    fn rfc7677_vector() {
        let v = rfc_verifier();
        let x = start(&v, format!("n,,n=user,r={RFC_CLIENT_NONCE}").as_bytes(), RFC_SERVER_NONCE, Binding::NotOffered).unwrap();
        assert_eq!(
            x.server_first(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(
            x.finish(&v, client_final.as_bytes()).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // One bit of the proof flipped: refused, and nothing about the password is returned.
        let tampered = client_final.replace("p=dHz", "p=dHy");
        assert_eq!(x.finish(&v, tampered.as_bytes()), Err(ScramError::WrongPassword));
    }

    /// The client side of postgres-protocol (what tokio-postgres runs) against our server.
    fn run_client(client_password: &str, verifier: &Verifier) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(client_password.as_bytes(), ChannelBinding::unrequested());
        let x = start(verifier, client.message(), &server_nonce(), Binding::NotOffered)?;
        client.update(x.server_first().as_bytes()).unwrap();
        let server_final = x.finish(verifier, client.message())?;
        client.finish(server_final.as_bytes()).expect("the client accepts our server signature");
        Ok(())
    }

    /// postgres-protocol's client with tls-server-end-point: bound to the same data it logs in;
    /// to other data (another certificate: a TLS-terminating man in the middle) it is refused.
    #[test]
    fn plus_binds_to_the_certificate_hash() {
        let v = Verifier::new("pw");
        let ours = [1u8; 32];
        let run = |client_sees: &[u8]| {
            let mut client = ScramSha256::new(b"pw", ChannelBinding::tls_server_end_point(client_sees.to_vec()));
            let x = start(&v, client.message(), &server_nonce(), Binding::Selected(&ours))?;
            client.update(x.server_first().as_bytes()).unwrap();
            let server_final = x.finish(&v, client.message())?;
            client.finish(server_final.as_bytes()).expect("the client accepts our signature");
            Ok::<(), ScramError>(())
        };
        assert_eq!(run(&ours), Ok(()));
        assert_eq!(run(&[2u8; 32]), Err(ScramError::ChannelBindingMismatch));
    }

    #[test]
    fn postgres_protocol_client_logs_in_and_checks_our_signature() {
        let v = Verifier::new("s3cret pass");
        assert_eq!(run_client("s3cret pass", &v), Ok(()));
        assert_eq!(run_client("s3cret pasS", &v), Err(ScramError::WrongPassword));
        assert_eq!(run_client("", &v), Err(ScramError::WrongPassword));
        // SASLprep on both sides: a soft hyphen maps to nothing, U+00A0 to a space.
        let v = Verifier::new("I\u{ad}X\u{a0}y");
        assert_eq!(run_client("IX y", &v), Ok(()));
    }

    #[test]
    fn client_first_refusals() {
        let v = rfc_verifier();
        let cases: [(&str, ScramError); 8] = [
            ("p=tls-server-end-point,,n=,r=abc", ScramError::ChannelBindingRequested),
            ("n,a=admin,n=,r=abc", ScramError::AuthorizationIdentity),
            ("n,,m=ext,n=,r=abc", ScramError::MandatoryExtension),
            ("x,,n=,r=abc", ScramError::Malformed("unknown channel binding flag")),
            ("n,,r=abc", ScramError::Malformed("no user name attribute")),
            ("n,,n=", ScramError::Malformed("no nonce attribute")),
            ("n,,n=,r=a b", ScramError::Malformed("the nonce is not printable")),
            ("n", ScramError::Malformed("no GS2 header")),
        ];
        for (input, expected) in cases {
            assert_eq!(start(&v, input.as_bytes(), "S", Binding::NotOffered).unwrap_err(), expected, "{input}");
        }
        // `y`: the client could bind but we offered no -PLUS; its final message must say `y`.
        let x = start(&v, b"y,,n=,r=abc", "S", Binding::NotOffered).unwrap();
        assert_eq!(x.gs2_header, b"y,,");
        assert!(start(&v, b"n,,n=,r=abc,x=ignored", "S", Binding::NotOffered).is_ok(), "optional extensions are ignored");
        assert_eq!(start(&v, b"n,,n=,r=\xff", "S", Binding::NotOffered).unwrap_err(), ScramError::Malformed("not UTF-8"));
        // With -PLUS offered: `y` is a downgrade; `n` is a client that cannot bind; -PLUS chosen
        // needs `p=tls-server-end-point`, and nothing else.
        let cb = [7u8; 32];
        let cases: [(&str, Binding<'_>, ScramError); 5] = [
            ("y,,n=,r=abc", Binding::Offered, ScramError::ChannelBindingDowngrade),
            ("p=tls-server-end-point,,n=,r=abc", Binding::Offered, ScramError::ChannelBindingRequested),
            ("n,,n=,r=abc", Binding::Selected(&cb), ScramError::ChannelBindingMissing),
            ("y,,n=,r=abc", Binding::Selected(&cb), ScramError::ChannelBindingMissing),
            ("p=tls-unique,,n=,r=abc", Binding::Selected(&cb), ScramError::ChannelBindingMissing),
        ];
        for (input, binding, expected) in cases {
            assert_eq!(start(&v, input.as_bytes(), "S", binding).unwrap_err(), expected, "{input}");
        }
        assert!(start(&v, b"n,,n=,r=abc", "S", Binding::Offered).is_ok());
        let x = start(&v, b"p=tls-server-end-point,,n=,r=abc", "S", Binding::Selected(&cb)).unwrap();
        assert_eq!(x.gs2_header, [&b"p=tls-server-end-point,,"[..], &cb].concat());
    }

    #[test]
    fn client_final_refusals() {
        let v = rfc_verifier();
        let x = start(&v, b"n,,n=,r=abc", "SRV", Binding::NotOffered).unwrap();
        let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let cases: [(String, ScramError); 6] = [
            (format!("c=eSws,r=abcSRV,{proof}"), ScramError::ChannelBindingMismatch),
            (format!("c=biws,r=abcXXX,{proof}"), ScramError::NonceMismatch),
            ("c=biws,r=abcSRV".to_owned(), ScramError::Malformed("no proof attribute")),
            ("c=biws,r=abcSRV,p=AAAA".to_owned(), ScramError::Malformed("proof is not 32 bytes")),
            ("c=biws,r=abcSRV,p=***".to_owned(), ScramError::Malformed("proof is not base64")),
            (format!("r=abcSRV,{proof}"), ScramError::Malformed("no channel binding attribute")),
        ];
        for (input, expected) in cases {
            assert_eq!(x.finish(&v, input.as_bytes()).unwrap_err(), expected, "{input}");
        }
        assert_eq!(
            x.finish(&v, format!("c=biws,r=abcSRV,{proof}").as_bytes()),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn debug_shows_no_key_material() {
        let v = rfc_verifier();
        let shown = format!("{v:?}");
        assert_eq!(shown, "Verifier { iterations: 4096, .. }");
    }
}
