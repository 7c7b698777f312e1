//! The upstream TLS configuration: rustls on ring, roots = the embedded RDS CA bundle plus any
//! `--ca-bundle`, full verification of the endpoint name. There is deliberately no way to weaken
//! it: no `danger` module, no "insecure" flag.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The RDS global CA bundle (see `certs/README.md` for its provenance).
pub const RDS_CA_BUNDLE: &[u8] = include_bytes!("../certs/rds-ca-bundle.pem");

/// The one crypto provider of this binary. Every rustls config is built with it explicitly, so
/// nothing depends on a process-wide default that another crate might set differently.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process default too, for libraries that build their own configs.
pub fn install_default_provider() {
    // Err means a default is already installed (e.g. a second call in tests); that is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA bundle {path}")]
    ReadBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA bundle {path} holds no PEM certificate")]
    EmptyBundle { path: PathBuf },
    #[error("CA bundle {path} has a certificate rustls cannot use")]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration error")]
    Config(#[source] rustls::Error),
}

/// Parses every certificate of a PEM bundle.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    let mut reader = pem;
    rustls_pemfile::certs(&mut reader).collect()
}

/// Root store: the embedded RDS bundle plus the certificates in `extra`.
pub fn root_store(extra: &[PathBuf]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let embedded = parse_pem_certs(RDS_CA_BUNDLE).map_err(|source| TlsError::ReadBundle {
        path: "certs/rds-ca-bundle.pem (embedded)".into(),
        source,
    })?;
    // Some of AWS's published roots are expired or use odd encodings; skipping those mirrors
    // what OpenSSL-based clients do with the same bundle.
    roots.add_parsable_certificates(embedded);
    for path in extra {
        add_bundle_file(&mut roots, path)?;
    }
    Ok(roots)
}

fn add_bundle_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadBundle {
        path: path.to_owned(),
        source,
    })?;
    let certs = parse_pem_certs(&pem).map_err(|source| TlsError::ReadBundle {
        path: path.to_owned(),
        source,
    })?;
    if certs.is_empty() {
        return Err(TlsError::EmptyBundle {
            path: path.to_owned(),
        });
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|source| TlsError::BadCertificate {
                path: path.to_owned(),
                source,
            })?;
    }
    Ok(())
}

/// The client config for upstream connections.
pub fn upstream_client_config(extra_ca: &[PathBuf]) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = root_store(extra_ca)?;
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // PostgreSQL's registered ALPN id; servers that do not know it ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_bundle_loads() {
        let certs = parse_pem_certs(RDS_CA_BUNDLE).unwrap();
        assert_eq!(certs.len(), 115);
        let roots = root_store(&[]).unwrap();
        assert!(roots.len() >= 100, "only {} roots usable", roots.len());
    }

    #[test]
    fn bad_extra_bundles_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a cert").unwrap();
        assert!(matches!(
            root_store(&[empty]),
            Err(TlsError::EmptyBundle { .. })
        ));
        assert!(matches!(
            root_store(&[dir.path().join("missing.pem")]),
            Err(TlsError::ReadBundle { .. })
        ));
    }
}
