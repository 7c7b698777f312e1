//! The simulator's PKI, generated at run time (never committed): a CA and server certificates
//! for the simulated endpoint names, as rustls server configs. Besides the "RDS" CA, an
//! "ATS-like" root with an intermediate stands in for Amazon Trust Services (whose keys we do not
//! have), so RDS Proxy names can present the shape of chain they present on AWS: root →
//! intermediate → leaf, the leaf and the intermediate sent. [`SniCerts`] picks a certificate by
//! the name the client asks for, as one RDS front serves several endpoint names.

use std::collections::HashMap;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    #[error("TLS server configuration failed")]
    Tls(#[from] rustls::Error),
}

type Chain = Vec<CertificateDer<'static>>;

/// ring, as the proxy uses (the simulator builds its own rustls configs).
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority that exists only for this run.
pub struct SimCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Sent after a leaf it issues: itself (a root, as the simulator always did), or an
    /// intermediate alone (its root is what clients must already trust).
    sent_after_leaf: Chain,
}

impl std::fmt::Debug for SimCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCa").finish_non_exhaustive()
    }
}

impl SimCa {
    pub fn new(common_name: &str) -> Result<SimCa, CertError> {
        let params = ca_params(common_name, BasicConstraints::Unconstrained)?;
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let sent_after_leaf = vec![issuer.der().clone()];
        Ok(SimCa { issuer, sent_after_leaf })
    }

    /// An intermediate CA issued by this one; its leaves are sent with the intermediate only
    /// (path length 0: it may issue leaves, not more CAs).
    pub fn intermediate(&self, common_name: &str) -> Result<SimCa, CertError> {
        let params = ca_params(common_name, BasicConstraints::Constrained(0))?;
        let issuer = CertifiedIssuer::signed_by(params, KeyPair::generate()?, &self.issuer)?;
        let sent_after_leaf = vec![issuer.der().clone()];
        Ok(SimCa { issuer, sent_after_leaf })
    }

    /// A fresh leaf for `names` (the first is also the CN) issued by this CA, and its key.
    fn leaf(&self, names: &[String]) -> Result<(rcgen::Certificate, KeyPair), CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert, key))
    }

    /// A fresh leaf for `names` as a server sends it (leaf, then what this CA sends after it),
    /// with its key.
    fn leaf_chain(&self, names: &[String]) -> Result<(Chain, PrivateKeyDer<'static>), CertError> {
        let (cert, key) = self.leaf(names)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.sent_after_leaf.iter().cloned());
        Ok((chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))))
    }

    /// A fresh certificate for `names` with its chain (as sent) and key, for [`SniCerts`].
    pub fn certified_key(&self, names: &[String]) -> Result<Arc<CertifiedKey>, CertError> {
        let (chain, key) = self.leaf_chain(names)?;
        Ok(Arc::new(CertifiedKey::from_der(chain, key, &crypto_provider())?))
    }

    /// The CA certificate in PEM, for `--ca-bundle` / `sslrootcert`.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A fresh certificate for `names` issued by this CA, as PEM (leaf then CA) and its key as
    /// PEM: for servers that read files (PostgreSQL).
    pub fn issue_pem(&self, names: &[String]) -> Result<(String, String), CertError> {
        let (cert, key) = self.leaf(names)?;
        Ok((format!("{}{}", cert.pem(), self.issuer.pem()), key.serialize_pem()))
    }

    /// A rustls server config presenting a fresh certificate for `names`, issued by this CA.
    pub fn server_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let (chain, key) = self.leaf_chain(names)?;
        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A CA's parameters: its CN, how deep a chain below it may go, and the usages of a CA.
fn ca_params(common_name: &str, constraints: BasicConstraints) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(constraints);
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Certificates chosen by SNI, as a server with several names does; a client that names none
/// of them (or no name: an IP address) gets the default one, and its own verification decides.
#[derive(Debug)]
pub struct SniCerts {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniCerts {
    pub fn new(default: Arc<CertifiedKey>) -> SniCerts {
        SniCerts {
            by_name: HashMap::new(),
            default,
        }
    }

    /// Serves `cert` to clients asking for `name` (case-insensitive).
    pub fn add(&mut self, name: &str, cert: Arc<CertifiedKey>) {
        self.by_name.insert(name.to_ascii_lowercase(), cert);
    }

    /// A rustls server config (ALPN `postgresql`) that picks among these certificates.
    pub fn server_config(self) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self));
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello
            .server_name()
            .and_then(|name| self.by_name.get(&name.to_ascii_lowercase()));
        Some(named.unwrap_or(&self.default).clone())
    }
}
