//! The upstream TLS configuration: rustls on ring, full verification of the endpoint name. The
//! roots depend on the kind of endpoint the name is ([`classify_endpoint`]): RDS Proxy endpoints
//! present ACM certificates, which chain to the Amazon Trust Services roots, so for those names
//! (and only those) the roots are the embedded ATS roots, or exactly `--proxy-ca-bundle`;
//! every other name is verified against the embedded RDS CA bundle plus any `--ca-bundle`.
//! Keeping the two apart means a certificate from a public CA is never accepted for a DB
//! instance or Aurora name. There is deliberately no way to weaken it: no `danger` module, no
//! "insecure" flag.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::engine::Engine;

/// `--direct-tls`: whether to open TLS to the server without an SSLRequest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectTls {
    /// Direct once the server has shown PostgreSQL 17 or later in a login, else SSLRequest;
    /// a server that refuses it is remembered and gets SSLRequest from then on.
    #[default]
    Auto,
    /// Always direct (PostgreSQL 17 or later only); a refusal is an error.
    Always,
    /// Always SSLRequest first, as every PostgreSQL before 17 needs.
    Never,
}

/// The RDS global CA bundle (see `certs/README.md` for its provenance).
pub const RDS_CA_BUNDLE: &[u8] = include_bytes!("../certs/rds-ca-bundle.pem");

/// The Amazon Trust Services roots (Amazon Root CA 1–4, Starfield Services Root G2) that RDS
/// Proxy endpoints chain to; see `certs/README.md` and the header of the file.
pub const AMAZON_TRUST_SERVICES: &[u8] = include_bytes!("../certs/amazon-trust-services.pem");

/// What an endpoint name is, from its shape alone (AWS's DNS naming, in the `aws` and
/// `aws-cn` partitions). Only [`EndpointKind::RdsProxy`] changes the trust store; the rest is
/// for log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// `NAME.ID.REGION.rds.amazonaws.com`
    Instance,
    /// `NAME.cluster-ID.REGION.rds.amazonaws.com` (Aurora writer)
    AuroraCluster,
    /// `NAME.cluster-ro-ID.REGION.rds.amazonaws.com` (Aurora reader)
    AuroraReader,
    /// `NAME.cluster-custom-ID.REGION.rds.amazonaws.com` (Aurora custom endpoint)
    AuroraCustom,
    /// `NAME.proxy-ID.REGION.rds.amazonaws.com`, or an additional proxy endpoint
    /// `NAME.endpoint.proxy-ID.REGION.rds.amazonaws.com`
    RdsProxy,
    /// `ID.dsql.REGION.on.aws` (Aurora DSQL; [`crate::engine::parse_endpoint`])
    Dsql,
    /// `CLUSTER.HASH.REGION.redshift.amazonaws.com` (Amazon Redshift, provisioned)
    Redshift,
    /// `WORKGROUP.ACCOUNT.REGION.redshift-serverless.amazonaws.com`
    RedshiftServerless,
    /// Anything else: a CNAME, an IP, a private name. Verified like an instance.
    Other,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Instance => "RDS DB instance",
            EndpointKind::AuroraCluster => "Aurora cluster (writer) endpoint",
            EndpointKind::AuroraReader => "Aurora reader endpoint",
            EndpointKind::AuroraCustom => "Aurora custom endpoint",
            EndpointKind::RdsProxy => "RDS Proxy endpoint",
            EndpointKind::Dsql => "Aurora DSQL cluster endpoint",
            EndpointKind::Redshift => "Amazon Redshift cluster endpoint",
            EndpointKind::RedshiftServerless => "Amazon Redshift Serverless endpoint",
            EndpointKind::Other => "not an AWS database endpoint name",
        }
    }
}

/// Classifies an endpoint name (case-insensitive, a trailing dot ignored).
pub fn classify_endpoint(name: &str) -> EndpointKind {
    if let Some(parts) = crate::engine::parse_endpoint(name) {
        return match parts.engine {
            Engine::Dsql => EndpointKind::Dsql,
            Engine::Redshift => EndpointKind::Redshift,
            Engine::RedshiftServerless => EndpointKind::RedshiftServerless,
            Engine::Rds => EndpointKind::Other,
        };
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let mut labels: Vec<&str> = name.split('.').collect();
    // China's names also come as `NAME.ID.rds.REGION.amazonaws.com.cn` (service before region):
    // read them in the usual order.
    if let [.., "rds", region, "amazonaws", "com", "cn"] = labels.as_slice() {
        let (region, at) = (*region, labels.len() - 4);
        labels[at - 1] = region;
        labels[at] = "rds";
    }
    let suffix_len = if labels.ends_with(&["rds", "amazonaws", "com"]) {
        3
    } else if labels.ends_with(&["rds", "amazonaws", "com", "cn"]) {
        4
    } else {
        return EndpointKind::Other;
    };
    // Before the suffix: the region, then the id label (`proxy-…`, `cluster-…` or the account
    // hash), then the resource name — and for a proxy's additional endpoint, `endpoint` too.
    let Some(rest) = labels.len().checked_sub(suffix_len + 1) else {
        return EndpointKind::Other;
    };
    let region = labels[rest];
    if region.split('-').count() < 3 || rest < 2 {
        return EndpointKind::Other;
    }
    let (id, names) = (labels[rest - 1], &labels[..rest - 1]);
    let label_ok = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !names.iter().all(|l| label_ok(l)) || !label_ok(id) {
        return EndpointKind::Other;
    }
    let suffix_of = |prefix: &str| id.strip_prefix(prefix).filter(|s| !s.is_empty() && !s.contains('-'));
    match names {
        [_] | [_, "endpoint"] if suffix_of("proxy-").is_some() => EndpointKind::RdsProxy,
        [_] if suffix_of("cluster-ro-").is_some() => EndpointKind::AuroraReader,
        [_] if suffix_of("cluster-custom-").is_some() => EndpointKind::AuroraCustom,
        [_] if suffix_of("cluster-").is_some() => EndpointKind::AuroraCluster,
        [_] if !id.contains('-') => EndpointKind::Instance,
        _ => EndpointKind::Other,
    }
}

/// Which roots verify an endpoint's certificate (logged at start, named in TLS hints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustStore {
    /// The embedded RDS CA bundle plus `--ca-bundle` files.
    Rds { extra: Vec<PathBuf> },
    /// The embedded Amazon Trust Services roots (RDS Proxy, Aurora DSQL and Redshift endpoints).
    AmazonTrustServices,
    /// Exactly these `--proxy-ca-bundle` files (in place of the Amazon Trust Services roots).
    ProxyCaBundle(Vec<PathBuf>),
}

impl TrustStore {
    /// The store for `endpoint`: the Amazon Trust Services roots (or `--proxy-ca-bundle`) for
    /// RDS Proxy, DSQL and Redshift names, the RDS bundle otherwise.
    pub fn for_endpoint(endpoint: &str, ca_bundles: &[PathBuf], proxy_ca_bundles: &[PathBuf]) -> TrustStore {
        Self::for_target(Engine::Rds, endpoint, ca_bundles, proxy_ca_bundles)
    }

    /// [`TrustStore::for_endpoint`] for a target of `engine` (`--engine`): DSQL and Redshift
    /// always present ACM certificates, whatever the name (a custom domain, a load balancer's).
    pub fn for_target(engine: Engine, endpoint: &str, ca_bundles: &[PathBuf], proxy_ca_bundles: &[PathBuf]) -> TrustStore {
        if uses_amazon_trust_services(engine, endpoint) {
            if proxy_ca_bundles.is_empty() {
                return TrustStore::AmazonTrustServices;
            }
            return TrustStore::ProxyCaBundle(proxy_ca_bundles.to_vec());
        }
        TrustStore::Rds {
            extra: ca_bundles.to_vec(),
        }
    }

    /// How log lines and hints name it.
    pub fn describe(&self) -> String {
        let files = |paths: &[PathBuf]| paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        match self {
            TrustStore::Rds { extra } if extra.is_empty() => "the built-in RDS CA bundle".into(),
            TrustStore::Rds { extra } => format!("the built-in RDS CA bundle and --ca-bundle {}", files(extra)),
            TrustStore::AmazonTrustServices => "the built-in Amazon Trust Services roots".into(),
            TrustStore::ProxyCaBundle(paths) => format!("--proxy-ca-bundle {}", files(paths)),
        }
    }

    pub fn roots(&self) -> Result<RootCertStore, TlsError> {
        match self {
            TrustStore::Rds { extra } => root_store(extra),
            TrustStore::AmazonTrustServices => {
                let mut roots = RootCertStore::empty();
                let certs = parse_pem_certs(AMAZON_TRUST_SERVICES).map_err(|source| TlsError::ReadBundle {
                    path: "certs/amazon-trust-services.pem (embedded)".into(),
                    source,
                })?;
                for cert in certs {
                    roots.add(cert).map_err(TlsError::Config)?;
                }
                Ok(roots)
            }
            TrustStore::ProxyCaBundle(paths) => {
                let mut roots = RootCertStore::empty();
                for path in paths {
                    add_bundle_file(&mut roots, path)?;
                }
                Ok(roots)
            }
        }
    }
}

/// Whether `endpoint` of `engine` presents an ACM certificate (Amazon Trust Services roots):
/// every DSQL and Redshift endpoint, and RDS Proxy endpoints; other RDS names chain to the RDS CA.
pub fn uses_amazon_trust_services(engine: Engine, endpoint: &str) -> bool {
    engine.uses_amazon_trust_services()
        || matches!(
            classify_endpoint(endpoint),
            EndpointKind::RdsProxy | EndpointKind::Dsql | EndpointKind::Redshift | EndpointKind::RedshiftServerless
        )
}

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

/// PostgreSQL's registered ALPN protocol id.
pub use rds_auth_proxy_protocol::pg::POSTGRESQL_ALPN;

/// The client config for upstream connections to names verified with `trust`.
pub fn upstream_client_config(trust: &TrustStore) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = trust.roots()?;
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // PostgreSQL's registered ALPN id; servers that do not know it ignore it, and direct TLS
    // (PostgreSQL 17+) requires it.
    config.alpn_protocols = vec![POSTGRESQL_ALPN.to_vec()];
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
    fn endpoint_kinds() {
        use EndpointKind::*;
        let cases = [
            ("mydb.c9akciq32.eu-central-1.rds.amazonaws.com", Instance),
            ("MyDB.C9AKCIQ32.EU-CENTRAL-1.RDS.AMAZONAWS.COM.", Instance),
            ("my-db.c9akciq32.cn-north-1.rds.amazonaws.com.cn", Instance),
            ("db.c9akciq32.us-gov-west-1.rds.amazonaws.com", Instance),
            ("aur.cluster-c9akciq32.eu-west-1.rds.amazonaws.com", AuroraCluster),
            ("aur.cluster-ro-c9akciq32.eu-west-1.rds.amazonaws.com", AuroraReader),
            ("analytics.cluster-custom-c9akciq32.eu-west-1.rds.amazonaws.com", AuroraCustom),
            ("aur.cluster-ro-c9akciq32.cn-northwest-1.rds.amazonaws.com.cn", AuroraReader),
            ("app-proxy.proxy-c9akciq32.us-east-1.rds.amazonaws.com", RdsProxy),
            ("app-proxy.proxy-c9akciq32.cn-north-1.rds.amazonaws.com.cn", RdsProxy),
            ("APP.PROXY-C9AKCIQ32.US-EAST-1.RDS.AMAZONAWS.COM", RdsProxy),
            ("reads.endpoint.proxy-c9akciq32.us-east-1.rds.amazonaws.com", RdsProxy),
            // China's other order (service before region), as real configurations show it.
            ("my-db.c9akciq32.rds.cn-north-1.amazonaws.com.cn", Instance),
            ("aur.cluster-c9akciq32.rds.cn-northwest-1.amazonaws.com.cn", AuroraCluster),
            ("app.proxy-c9akciq32.rds.cn-north-1.amazonaws.com.cn", RdsProxy),
            // The other engines (their table: crate::engine's tests).
            ("abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws", Dsql),
            ("examplecluster.abc123xyz789.us-west-2.redshift.amazonaws.com", Redshift),
            ("wg.123456789012.eu-west-1.redshift-serverless.amazonaws.com", RedshiftServerless),
            // Look-alikes: only AWS's own shapes count.
            ("proxy-c9akciq32.us-east-1.rds.amazonaws.com", Other),
            ("a.b.proxy-c9akciq32.us-east-1.rds.amazonaws.com", Other),
            ("a.proxy-.us-east-1.rds.amazonaws.com", Other),
            ("a.proxy-x-y.us-east-1.rds.amazonaws.com", Other),
            ("a.proxy-c9akciq32.us-east-1.rds.amazonaws.com.evil.example", Other),
            ("a.proxy-c9akciq32.useast1.rds.amazonaws.com", Other),
            ("a.proxy-c9akciq32.us-east-1.rds.amazonaws.org", Other),
            ("a.x.proxy-c9akciq32.us-east-1.rds.amazonaws.com", Other),
            ("a.endpoint.cluster-c9akciq32.us-east-1.rds.amazonaws.com", Other),
            ("a.cluster-ro-.eu-west-1.rds.amazonaws.com", Other),
            ("a.some-thing.eu-west-1.rds.amazonaws.com", Other),
            ("a..eu-west-1.rds.amazonaws.com", Other),
            ("db.internal.example.com", Other),
            ("10.0.0.12", Other),
            ("localhost", Other),
            ("", Other),
        ];
        for (name, kind) in cases {
            assert_eq!(classify_endpoint(name), kind, "{name}");
        }
    }

    /// The embedded Amazon Trust Services roots are the five AWS publishes, byte for byte: the
    /// certificates' SHA-256 fingerprints as listed for them (Mozilla's CA list, JDK cacerts;
    /// the repository's SPKI hashes are in the file header).
    #[test]
    fn amazon_trust_services_roots_are_the_published_ones() {
        use sha2::Digest;
        let published = [
            "8ECDE6884F3D87B1125BA31AC3FCB13D7016DE7F57CC904FE1CB97C6AE98196E", // Amazon Root CA 1
            "1BA5B2AA8C65401A82960118F80BEC4F62304D83CEC4713A19C39C011EA46DB4", // Amazon Root CA 2
            "18CE6CFE7BF14E60B2E347B8DFE868CB31D02EBB3ADA271569F50343B46DB3A4", // Amazon Root CA 3
            "E35D28419ED02025CFA69038CD623962458DA5C695FBDEA3C22B0BFB25897092", // Amazon Root CA 4
            "568D6905A2C88708A4B3025190EDCFEDB1974A606A13C6E5290FCB2AE63EDAB5", // Starfield Services Root G2
        ];
        let certs = parse_pem_certs(AMAZON_TRUST_SERVICES).unwrap();
        let fingerprints: Vec<String> = certs
            .iter()
            .map(|c| sha2::Sha256::digest(c.as_ref()).iter().map(|b| format!("{b:02X}")).collect())
            .collect();
        assert_eq!(fingerprints, published);
        // The header's fingerprint lines say the same as the certificates.
        let text = std::str::from_utf8(AMAZON_TRUST_SERVICES).unwrap();
        for fp in published {
            let colons = fp.as_bytes().chunks(2).map(|p| std::str::from_utf8(p).unwrap()).collect::<Vec<_>>().join(":");
            assert!(text.contains(&format!("# SHA-256 {colons}")), "{fp}");
        }
        assert_eq!(TrustStore::AmazonTrustServices.roots().unwrap().len(), 5);
    }

    #[test]
    fn trust_store_follows_the_name() {
        let ca = vec![PathBuf::from("/ca.pem")];
        let proxy_ca = vec![PathBuf::from("/proxy.pem")];
        let proxy = "p.proxy-abc.eu-west-1.rds.amazonaws.com";
        let reader = "c.cluster-ro-abc.eu-west-1.rds.amazonaws.com";
        assert_eq!(TrustStore::for_endpoint(proxy, &ca, &[]), TrustStore::AmazonTrustServices);
        assert_eq!(TrustStore::for_endpoint(proxy, &ca, &proxy_ca), TrustStore::ProxyCaBundle(proxy_ca.clone()));
        assert_eq!(TrustStore::for_endpoint(reader, &ca, &proxy_ca), TrustStore::Rds { extra: ca.clone() });
        assert_eq!(TrustStore::for_endpoint("db.example.com", &[], &proxy_ca), TrustStore::Rds { extra: vec![] });
        assert_eq!(TrustStore::AmazonTrustServices.describe(), "the built-in Amazon Trust Services roots");
        // DSQL and Redshift: ACM certificates, by name or by --engine (a custom domain name).
        for name in ["abc.dsql.us-east-1.on.aws", "c.h.eu-west-1.redshift.amazonaws.com", "w.123456789012.eu-west-1.redshift-serverless.amazonaws.com"] {
            assert_eq!(TrustStore::for_endpoint(name, &ca, &[]), TrustStore::AmazonTrustServices, "{name}");
            assert_eq!(TrustStore::for_endpoint(name, &ca, &proxy_ca), TrustStore::ProxyCaBundle(proxy_ca.clone()), "{name}");
        }
        for engine in [Engine::Dsql, Engine::Redshift, Engine::RedshiftServerless] {
            assert_eq!(TrustStore::for_target(engine, "warehouse.example.com", &ca, &[]), TrustStore::AmazonTrustServices);
        }
        assert_eq!(TrustStore::for_target(Engine::Rds, "db.example.com", &ca, &[]), TrustStore::Rds { extra: ca.clone() });
        assert_eq!(TrustStore::Rds { extra: ca }.describe(), "the built-in RDS CA bundle and --ca-bundle /ca.pem");
    }

    /// What each store accepts, with the simulator's chains: an ATS-like chain (root →
    /// intermediate → leaf) for a proxy name verifies only against its root; the RDS store
    /// and the real ATS roots refuse it.
    #[test]
    fn stores_accept_only_their_own_chains() {
        use rds_auth_proxy_sim::certs::SimCa;
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{ServerName, UnixTime};
        let name = "p.proxy-abc.eu-west-1.rds.amazonaws.com";
        let root = SimCa::new("test ATS-like root").unwrap();
        let leaf = root.intermediate("test intermediate").unwrap().certified_key(&[name.to_owned()]).unwrap();
        assert_eq!(leaf.cert.len(), 2, "leaf and intermediate are sent, not the root");
        let dir = tempfile::tempdir().unwrap();
        let root_file = dir.path().join("root.pem");
        std::fs::write(&root_file, root.pem()).unwrap();
        let verify = |trust: TrustStore| {
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(trust.roots().unwrap()),
                crypto_provider(),
            )
            .build()
            .unwrap();
            verifier.verify_server_cert(
                &leaf.cert[0],
                &leaf.cert[1..],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        assert!(verify(TrustStore::ProxyCaBundle(vec![root_file.clone()])).is_ok());
        for wrong in [TrustStore::AmazonTrustServices, TrustStore::Rds { extra: vec![] }] {
            let e = verify(wrong).unwrap_err();
            assert!(matches!(e, rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)), "{e:?}");
        }
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
