//! The simulator's PKI, generated at run time (never committed): a CA and server certificates
//! for the simulated endpoint names, as rustls server configs.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    #[error("TLS server configuration failed")]
    Tls(#[from] rustls::Error),
}

/// A certificate authority that exists only for this run.
pub struct SimCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for SimCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCa").finish_non_exhaustive()
    }
}

impl SimCa {
    pub fn new(common_name: &str) -> Result<SimCa, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(SimCa { issuer })
    }

    /// The CA certificate in PEM, for `--ca-bundle` / `sslrootcert`.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A fresh certificate for `names` issued by this CA, as PEM (leaf then CA) and its key as
    /// PEM: for servers that read files (PostgreSQL).
    pub fn issue_pem(&self, names: &[String]) -> Result<(String, String), CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((format!("{}{}", cert.pem(), self.issuer.pem()), key.serialize_pem()))
    }

    /// A rustls server config presenting a fresh certificate for `names`, issued by this CA.
    pub fn server_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = vec![cert.der().clone(), self.issuer.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Arc::new(config))
    }
}
