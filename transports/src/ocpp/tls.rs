//! rustls configurations (ring provider) for OCPP security profiles 2 and 3.
//!
//! Invariants: TLS 1.2 or 1.3 only (rustls' safe defaults, as OCPP requires); profile 3's
//! server config verifies every client certificate against the given CA with
//! [`WebPkiClientVerifier`] and refuses clients without one; PEM input that yields no
//! certificate or no key is an error, never an empty config.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input could not be read.
    #[error("{what}: invalid PEM: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// The parser's description.
        reason: String,
    },
    /// A PEM input holds no certificate.
    #[error("{0}: no certificate found")]
    NoCertificate(&'static str),
    /// The key PEM holds no private key.
    #[error("no private key found")]
    NoPrivateKey,
    /// rustls refused the configuration (bad key, bad CA, ...).
    #[error("{what}: {reason}")]
    Rustls {
        /// Which step.
        what: &'static str,
        /// rustls' description.
        reason: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM bundle.
pub fn certificates(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: crate::pem::reason(&e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey,
        e => TlsError::Pem {
            what: "private key",
            reason: crate::pem::reason(&e),
        },
    })
}

fn roots(ca_pem: &[u8], what: &'static str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(ca_pem, what)? {
        store.add(cert).map_err(|e| TlsError::Rustls {
            what,
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

/// A server config: `client_ca_pem` `None` is profile 2 (server certificate only), `Some` is
/// profile 3 (every client must present a certificate issued by that CA).
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(cert_chain_pem, "server certificate chain")?;
    let key = private_key(key_pem)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls {
            what: "protocol versions",
            reason: e.to_string(),
        })?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots(ca, "client CA")?, provider())
                    .build()
                    .map_err(|e| TlsError::Rustls {
                        what: "client verifier",
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls {
            what: "server certificate",
            reason: e.to_string(),
        })?;
    Ok(Arc::new(config))
}

/// A client config trusting `ca_pem`, with a client certificate for profile 3.
pub fn client_config(
    ca_pem: &[u8],
    client_identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls {
            what: "protocol versions",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots(ca_pem, "server CA")?);
    let config = match client_identity {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key_pem)) => builder
            .with_client_auth_cert(
                certificates(chain_pem, "client certificate chain")?,
                private_key(key_pem)?,
            )
            .map_err(|e| TlsError::Rustls {
                what: "client certificate",
                reason: e.to_string(),
            })?,
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_or_garbage_pem_is_an_error() {
        assert!(matches!(
            certificates(b"", "x"),
            Err(TlsError::NoCertificate("x"))
        ));
        assert!(matches!(private_key(b"hello"), Err(TlsError::NoPrivateKey)));
        // A section that starts and never ends names what is wrong.
        let cut = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        let e = certificates(cut, "server CA").unwrap_err().to_string();
        assert!(
            e.starts_with("server CA: invalid PEM") && e.contains("`-----END CERTIFICATE-----`"),
            "{e}"
        );
        let e = private_key(b"-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("private key: invalid PEM"), "{e}");
        assert!(server_config(b"", b"", None).is_err());
        assert!(client_config(b"junk", None).is_err());
    }
}
