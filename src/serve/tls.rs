//! `--tls-cert` / `--tls-key`: the server's rustls configuration from PEM files
//! (a chain in the certificate file; PKCS#1 RSA, SEC1 EC or PKCS#8 keys), with
//! ALPN offering HTTP/2 and HTTP/1.1. Every fault is found at start and names its file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key cannot be used; each names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file could not be read (missing, unreadable, not valid PEM).
    #[error("{}: reading {what}: {why}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// The cause.
        why: String,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("{}: no PEM certificate in this file", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key block.
    #[error("{}: no PEM private key in this file (RSA, EC or PKCS#8)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is unusable, or is not the key of the certificate.
    #[error("{}: {why} (certificate {})", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls found.
        why: String,
    },
}

/// ALPN protocols offered, preferred first: HTTP/2, then HTTP/1.1.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Reads and checks the certificate chain and its key into a server configuration.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |path: &Path, what, e: pem::Error| match e {
        pem::Error::NoItemsFound => match what {
            "certificate" => TlsError::NoCertificate {
                path: path.to_path_buf(),
            },
            _ => TlsError::NoKey {
                path: path.to_path_buf(),
            },
        },
        pem::Error::Io(io) => TlsError::Read {
            path: path.to_path_buf(),
            what,
            why: io.to_string(),
        },
        other => TlsError::Read {
            path: path.to_path_buf(),
            what,
            why: other.to_string(),
        },
    };
    // Opened first so that a missing file is named as such, not as "no certificate".
    std::fs::File::open(cert).map_err(|e| read(cert, "certificate", pem::Error::Io(e)))?;
    std::fs::File::open(key).map_err(|e| read(key, "private key", pem::Error::Io(e)))?;
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read(cert, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(cert, "certificate", e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| read(key, "private key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mismatch = |e: rustls::Error| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        why: match e {
            rustls::Error::InconsistentKeys(_) => {
                "this private key is not the certificate's key".to_string()
            }
            other => other.to_string(),
        },
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(mismatch)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
