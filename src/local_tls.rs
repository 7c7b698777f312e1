//! TLS towards local clients (`--local-tls`): the rustls server config that answers SSLRequest
//! with `S`, from a certificate for localhost/127.0.0.1/::1 issued at start by a local CA kept
//! on disk (so `sslrootcert` stays valid across restarts), or from the user's own files.
//!
//! The local CA is this machine's only: its key never leaves the config directory (mode 0600)
//! and it signs only the proxy's listener certificates. It is unrelated to the upstream, which is
//! always verified against the RDS bundle whatever happens here.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The subject of every generated local CA. Fixed, because the issuer of a fresh listener
/// certificate is rebuilt from it and the stored key at each start (see [`load_ca`]).
const CA_COMMON_NAME: &str = "rds-auth-proxy local CA";
const CA_ORGANIZATION: &str = "rds-auth-proxy";

/// Where the local CA comes from, or the user's own certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalTlsConfig {
    /// A listener certificate issued at start by the local CA at `ca_cert` (created on first
    /// use; its key beside it, see [`ca_key_path`]).
    Generated { ca_cert: PathBuf },
    /// `--local-tls-cert` / `--local-tls-key`: the user's PEM chain and key.
    Files { cert: PathBuf, key: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum LocalTlsError {
    #[error("cannot create the directory {path} for the local CA")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("the local CA key {key} is readable by others (mode {mode:o}); chmod 600 it, or delete both {key} and {cert} to make a new CA")]
    OpenKey { key: PathBuf, cert: PathBuf, mode: u32 },
    #[error("the local CA {cert} does not belong to the key {key}; delete both to make a new CA (clients then need the new {cert} as sslrootcert)")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("only one of the local CA files exists ({present}); delete it to make a new CA, or restore {missing}")]
    HalfCa { present: PathBuf, missing: PathBuf },
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    #[error("the local TLS certificate or key cannot be used")]
    Rustls(#[from] rustls::Error),
    #[error("--client-ca-file {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// The client-facing TLS of a listener, ready to accept.
#[derive(Clone)]
pub struct LocalTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The CA file clients give as `sslrootcert` (generated CA only).
    pub ca_cert: Option<PathBuf>,
    /// Clients are asked for a certificate, verified against `--client-ca-file` (optional, so
    /// clients without one still get TLS and the password path).
    pub client_certificates: bool,
    /// tls-server-end-point data of the listener's certificate, for SCRAM-SHA-256-PLUS with
    /// remote clients (`None`: a signature algorithm that cannot be bound).
    pub server_end_point: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for LocalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTls")
            .field("ca_cert", &self.ca_cert)
            .field("client_certificates", &self.client_certificates)
            .finish_non_exhaustive()
    }
}

/// The key file of the CA whose certificate is `ca_cert`: `local-ca.pem` → `local-ca.key`.
pub fn ca_key_path(ca_cert: &Path) -> PathBuf {
    ca_cert.with_extension("key")
}

/// The default CA file: `$XDG_CONFIG_HOME/rds-auth-proxy/local-ca.pem`, else
/// `~/.config/rds-auth-proxy/local-ca.pem`; `None` without a home directory.
pub fn default_ca_path(xdg_config_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    // Windows: beside the config file, in %APPDATA% (see crate::os::config_dir).
    if cfg!(windows) {
        return crate::os::config_dir(|k| std::env::var_os(k)).map(|dir| dir.join("local-ca.pem"));
    }
    // The XDG spec: a relative XDG_CONFIG_HOME is invalid and must be ignored.
    let base = match (xdg_config_home, home) {
        (Some(x), _) if Path::new(x).is_absolute() => PathBuf::from(x),
        (_, Some(h)) if !h.is_empty() => Path::new(h).join(".config"),
        _ => return None,
    };
    Some(base.join("rds-auth-proxy").join("local-ca.pem"))
}

impl LocalTls {
    /// Builds the listener's TLS. `listen_ip` is added to the certificate's names when it is
    /// not one of the loopback names already there (`--address` with `--allow-remote`).
    /// `client_ca`: `--client-ca-file`, the PEM CA(s) whose client certificates are accepted.
    pub fn build(
        config: &LocalTlsConfig,
        listen_ip: IpAddr,
        client_ca: Option<&Path>,
    ) -> Result<LocalTls, LocalTlsError> {
        let (chain, key, ca_cert) = match config {
            LocalTlsConfig::Generated { ca_cert } => {
                let ca = load_or_create_ca(ca_cert)?;
                let (chain, key) = issue_listener_cert(&ca, listen_ip)?;
                (chain, key, Some(ca_cert.clone()))
            }
            LocalTlsConfig::Files { cert, key } => (read_chain(cert)?, read_key(key)?, None),
        };
        let builder = rustls::ServerConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            Some(path) => builder.with_client_cert_verifier(client_verifier(path)?),
            None => builder.with_no_client_auth(),
        };
        let server_end_point = chain
            .first()
            .and_then(|leaf| crate::auth::scram::tls_server_end_point(leaf.as_ref()))
            .map(Arc::from);
        let mut server = builder.with_single_cert(chain, key)?;
        // libpq offers ALPN "postgresql" and accepts a server that picks it; a client offering
        // only other protocols is refused, as PostgreSQL 17+ does.
        server.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(LocalTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            ca_cert,
            client_certificates: client_ca.is_some(),
            server_end_point,
        })
    }
}

/// Asks every client for a certificate and checks one if given (chain to `path`, validity,
/// clientAuth usage when the certificate restricts it). A client without one still completes
/// the handshake: whether it may log in is [`crate::client_auth`]'s decision, and loopback
/// clients and password users need none. A certificate that does not verify fails the handshake.
fn client_verifier(path: &Path) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, LocalTlsError> {
    let bad = |reason: String| LocalTlsError::ClientCa {
        path: path.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_chain(path)? {
        roots.add(cert).map_err(|e| bad(format!("not a usable CA certificate ({e})")))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::crypto_provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// The names every listener certificate carries: what a client may put in `host`.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn issue_listener_cert(
    ca: &Issuer<'static, KeyPair>,
    listen_ip: IpAddr,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), LocalTlsError> {
    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|s| (*s).to_owned()).collect();
    let ip = listen_ip.to_string();
    if !listen_ip.is_unspecified() && !names.contains(&ip) {
        names.push(ip);
    }
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.distinguished_name.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone()], key))
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// The CA at `ca_cert` (and its key), created when neither file exists. Reused otherwise, so the
/// `sslrootcert` a user configured once stays valid.
pub fn load_or_create_ca(ca_cert: &Path) -> Result<Issuer<'static, KeyPair>, LocalTlsError> {
    let key_path = ca_key_path(ca_cert);
    match (ca_cert.exists(), key_path.exists()) {
        (true, true) => load_ca(ca_cert, &key_path),
        (false, false) => create_ca(ca_cert, &key_path),
        (true, false) => Err(LocalTlsError::HalfCa {
            present: ca_cert.to_owned(),
            missing: key_path,
        }),
        (false, true) => Err(LocalTlsError::HalfCa {
            present: key_path,
            missing: ca_cert.to_owned(),
        }),
    }
}

fn create_ca(cert_path: &Path, key_path: &Path) -> Result<Issuer<'static, KeyPair>, LocalTlsError> {
    if let Some(dir) = cert_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| LocalTlsError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    // The key first, created 0600 (never briefly world-readable), and only then the certificate:
    // a crash in between leaves a half CA that the next start reports instead of trusting.
    write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert_path, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(ca = %cert_path.display(), key = %key_path.display(), "created a local CA for --local-tls");
    Ok(Issuer::new(ca_params()?, key))
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), LocalTlsError> {
    let err = |source| LocalTlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = crate::os::create_with_mode(std::fs::OpenOptions::new().write(true).create_new(true), mode)
        .open(path)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Rebuilds the issuer from the stored key and the fixed CA subject; the stored certificate must
/// carry that key, or leaves signed now would not chain to it.
fn load_ca(cert_path: &Path, key_path: &Path) -> Result<Issuer<'static, KeyPair>, LocalTlsError> {
    let meta = std::fs::metadata(key_path).map_err(|source| LocalTlsError::Read {
        path: key_path.to_owned(),
        source,
    })?;
    let mode = crate::os::mode(&meta) & 0o777;
    if mode & 0o077 != 0 {
        return Err(LocalTlsError::OpenKey {
            key: key_path.to_owned(),
            cert: cert_path.to_owned(),
            mode,
        });
    }
    let key_pem = std::fs::read_to_string(key_path).map_err(|source| LocalTlsError::Read {
        path: key_path.to_owned(),
        source,
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|_| LocalTlsError::NoKey {
        path: key_path.to_owned(),
    })?;
    let certs = read_chain(cert_path)?;
    let public = key.public_key_raw();
    let matches = certs
        .first()
        .is_some_and(|c| c.as_ref().windows(public.len()).any(|w| w == public));
    if !matches {
        return Err(LocalTlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        });
    }
    Ok(Issuer::new(ca_params()?, key))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, LocalTlsError> {
    let pem = std::fs::read(path).map_err(|source| LocalTlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = crate::tls::parse_pem_certs(&pem).map_err(|source| LocalTlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    if certs.is_empty() {
        return Err(LocalTlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, LocalTlsError> {
    let pem = std::fs::read(path).map_err(|source| LocalTlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| LocalTlsError::Read {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| LocalTlsError::NoKey {
            path: path.to_owned(),
        })
}

/// A client connection before and after an SSLRequest answered `S`: the session keeps one type
/// whichever it is, and upgrades it in place.
pub enum ClientStream<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
    /// A TLS handshake took the plain stream and failed: nothing is left to talk to.
    Closed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientStream<S> {
    /// Runs the server side of a TLS handshake on the plain stream (after `S` was sent).
    pub async fn upgrade(&mut self, tls: &LocalTls) -> std::io::Result<()> {
        match std::mem::replace(self, ClientStream::Closed) {
            ClientStream::Plain(plain) => {
                let stream = tls.acceptor.accept(plain).await?;
                *self = ClientStream::Tls(Box::new(stream));
                Ok(())
            }
            other => {
                *self = other;
                Err(std::io::Error::other("TLS is already set up on this connection"))
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The client's certificate, when it gave one in the TLS handshake; with a client CA
    /// configured rustls has verified it by then (an unverified one fails the handshake).
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        match self {
            ClientStream::Tls(s) => s.get_ref().1.peer_certificates()?.first(),
            _ => None,
        }
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "the TLS handshake failed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ClientStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
            ClientStream::Closed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(ca_pem: &[u8]) -> Arc<rustls::client::WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::tls::parse_pem_certs(ca_pem).unwrap() {
            roots.add(c).unwrap();
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::crypto_provider(),
        )
        .build()
        .unwrap()
    }

    /// Whether the listener certificate issued by `ca` verifies for `name` against `ca_pem`.
    fn verifies(ca: &Issuer<'static, KeyPair>, ca_pem: &[u8], listen: IpAddr, name: &str) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        let (chain, _) = issue_listener_cert(ca, listen).unwrap();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        verifier(ca_pem)
            .verify_server_cert(&chain[0], &[], &name, &[], rustls::pki_types::UnixTime::now())
            .is_ok()
    }

    #[test]
    fn ca_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("sub/local-ca.pem");
        let ca = load_or_create_ca(&cert).unwrap();
        let key = ca_key_path(&cert);
        assert_eq!(key, dir.path().join("sub/local-ca.key"));
        assert_eq!(crate::os::mode(&std::fs::metadata(&key).unwrap()) & 0o777, 0o600);
        let pem = std::fs::read(&cert).unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            assert!(verifies(&ca, &pem, lo, name), "{name}");
        }
        assert!(!verifies(&ca, &pem, lo, "example.com"));
        // A second start: same files, and its fresh leaf chains to the CA written the first time.
        let again = load_or_create_ca(&cert).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), pem, "the CA file was rewritten");
        assert!(verifies(&again, &pem, lo, "localhost"));
        // A non-loopback --address is a name too.
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(verifies(&again, &pem, remote, "192.0.2.7"));
        assert!(!verifies(&again, &pem, lo, "192.0.2.7"));
    }

    #[test]
    fn broken_ca_files_are_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("ca.pem");
        load_or_create_ca(&cert).unwrap();
        let key = ca_key_path(&cert);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(load_or_create_ca(&cert), Err(LocalTlsError::OpenKey { mode: 0o644, .. })));
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }

        // Another CA's certificate beside this key.
        let other = dir.path().join("other.pem");
        load_or_create_ca(&other).unwrap();
        std::fs::copy(&other, &cert).unwrap();
        assert!(matches!(load_or_create_ca(&cert), Err(LocalTlsError::Mismatch { .. })));

        std::fs::remove_file(&cert).unwrap();
        assert!(matches!(load_or_create_ca(&cert), Err(LocalTlsError::HalfCa { .. })));
        assert!(key.exists() && !cert.exists(), "nothing was replaced");
    }

    #[test]
    fn default_ca_path_table() {
        let cases = [
            (Some("/x/cfg"), Some("/home/u"), Some("/x/cfg/rds-auth-proxy/local-ca.pem")),
            (Some("relative"), Some("/home/u"), Some("/home/u/.config/rds-auth-proxy/local-ca.pem")),
            (None, Some("/home/u"), Some("/home/u/.config/rds-auth-proxy/local-ca.pem")),
            (None, Some(""), None),
            (None, None, None),
        ];
        for (xdg, home, want) in cases {
            assert_eq!(default_ca_path(xdg, home), want.map(PathBuf::from), "{xdg:?} {home:?}");
        }
    }

    #[test]
    fn user_files_load_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = load_or_create_ca(&dir.path().join("ca.pem")).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let lo = "127.0.0.1".parse().unwrap();
        let files = LocalTlsConfig::Files { cert: cert_path.clone(), key: key_path.clone() };
        assert!(LocalTls::build(&files, lo, None).unwrap().ca_cert.is_none());
        let swapped = LocalTlsConfig::Files { cert: key_path.clone(), key: cert_path.clone() };
        assert!(matches!(LocalTls::build(&swapped, lo, None), Err(LocalTlsError::NoCertificate { .. })));
    }
}
