//! SIP over TLS (RFC 3261 §26.2.1, RFC 5630 §3: `transport=tls`): the rustls configurations
//! the transport uses, built once from the config's PEM files.
//!
//! Connections the gateway accepts present its certificate and, with `tls_verify_client`,
//! must present one signed by `tls_ca` (mutual TLS, as between a carrier and an emergency
//! desk). Connections it opens to a `transport = "tls"` peer check the peer's certificate
//! against `tls_ca` and the peer's `tls_name` (default: its IP address).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// What the transport needs for TLS.
#[derive(Clone)]
pub struct TlsSettings {
    /// Where to accept TLS connections (None: the gateway only opens them).
    pub listen: Option<SocketAddr>,
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub connector: tokio_rustls::TlsConnector,
    /// Per TLS peer address: the name its certificate must carry.
    pub names: HashMap<SocketAddr, ServerName<'static>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("listen", &self.listen)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client verification: {0}")]
    Verifier(String),
}

/// The PEM files and choices of `[sip]`.
pub struct TlsFiles<'a> {
    pub listen: Option<SocketAddr>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub ca: &'a Path,
    pub verify_client: bool,
    /// TLS peers: address and the name to check.
    pub peers: Vec<(SocketAddr, ServerName<'static>)>,
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Builds the acceptor (if the gateway has a certificate) and the connector.
///
/// # Errors
/// [`TlsError`] naming the file that could not be used.
pub fn settings(files: &TlsFiles<'_>) -> Result<TlsSettings, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(files.ca)? {
        roots.add(cert)?;
    }
    let roots = Arc::new(roots);
    let identity = match (files.cert, files.key) {
        (Some(cert), Some(key)) => Some((certificates(cert)?, private_key(key)?)),
        _ => None,
    };
    let acceptor = match &identity {
        Some((chain, key)) => {
            let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()?;
            let builder = if files.verify_client {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::clone(&roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_no_client_auth()
            };
            let config = builder.with_single_cert(chain.clone(), key.clone_key())?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
        None => None,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    // The same certificate proves the gateway to peers that ask for one.
    let client = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(TlsSettings {
        listen: files.listen,
        acceptor,
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        names: files.peers.iter().cloned().collect(),
    })
}
