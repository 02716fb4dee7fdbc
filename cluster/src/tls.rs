//! A node's mutual-TLS identity: the rustls configurations the transport accepts and dials
//! with, built once at start from the cluster CA, the node's certificate and its key.
//!
//! Invariants:
//! - the server side refuses every client without a certificate signed by the cluster CA
//!   ([`WebPkiClientVerifier`]); the client side trusts only the cluster CA (never the system
//!   roots) and presents this node's certificate;
//! - [`NodeTls::load`] / [`NodeTls::from_pem`] check, before any connection, that the node's
//!   certificate chains to the CA for both client and server use and names the node (its
//!   subject CN or a SAN DNS name, and a SAN DNS name for the server side, which is what a
//!   dialer verifies). A wrong file is an error at start naming the file and what is wrong,
//!   not a handshake failure on some other node minutes later;
//! - TLS 1.2 and 1.3 only (rustls' safe defaults), on the ring provider like the rest of the
//!   workspace (`transports/src/ocpp/tls.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// Where a node's TLS material lives on disk (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate (one or more PEM certificates: every one is trusted).
    pub ca: PathBuf,
    /// This node's certificate, optionally followed by intermediates.
    pub cert: PathBuf,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a node's TLS identity could not be built, or a certificate not read. Every variant
/// names its input (a file path, or which PEM string) so an operator knows which file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A PEM input could not be parsed.
    #[error("{what}: invalid PEM: {reason}")]
    Pem {
        /// Which input.
        what: String,
        /// The parser's description.
        reason: String,
    },
    /// A PEM input holds no certificate.
    #[error("{what}: no certificate found")]
    NoCertificate {
        /// Which input.
        what: String,
    },
    /// The key input holds no private key.
    #[error("{what}: no private key found")]
    NoPrivateKey {
        /// Which input.
        what: String,
    },
    /// A certificate is not valid DER X.509.
    #[error("{what}: not a valid X.509 certificate: {reason}")]
    BadCertificate {
        /// Which input.
        what: String,
        /// The parser's description.
        reason: String,
    },
    /// The node's certificate does not chain to the cluster CA (or is expired, or lacks the
    /// client/server usage the transport needs).
    #[error("{what}: not a valid {usage} certificate under the cluster CA {ca}: {reason}")]
    NotTrusted {
        /// Which certificate input.
        what: String,
        /// Which CA input.
        ca: String,
        /// "client" or "server".
        usage: &'static str,
        /// The verifier's description.
        reason: String,
    },
    /// The node's certificate is for another node.
    #[error(
        "{what}: certificate names {names:?}, not node {node:?} (subject CN and SAN DNS names)"
    )]
    WrongNode {
        /// Which certificate input.
        what: String,
        /// The node this identity is for.
        node: String,
        /// The names the certificate carries.
        names: Vec<String>,
    },
    /// The node name cannot be a TLS server name (dialers verify a node by its name).
    #[error("node name {node:?} is not a valid DNS name: {reason}")]
    BadNodeName {
        /// The name.
        node: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match the certificate, ...).
    #[error("{what}: {reason}")]
    Rustls {
        /// Which step or input.
        what: String,
        /// rustls' description.
        reason: String,
    },
}

/// A node's TLS identity: the acceptor and dialer configurations. Cheap to clone.
#[derive(Clone)]
pub struct NodeTls {
    node: Arc<str>,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for NodeTls {
    // The configs hold the private key: show only whose identity this is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_string(),
            reason: gridvisor_transports::pem::reason(&e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_string(),
        });
    }
    Ok(certs)
}

fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            what: what.to_string(),
        },
        e => TlsError::Pem {
            what: what.to_string(),
            reason: gridvisor_transports::pem::reason(&e),
        },
    })
}

fn rustls_err(what: impl Into<String>) -> impl FnOnce(rustls::Error) -> TlsError {
    let what = what.into();
    move |e| TlsError::Rustls {
        what,
        reason: e.to_string(),
    }
}

/// One PEM input and how to name it in errors.
struct Input<'a> {
    bytes: &'a [u8],
    what: String,
}

impl NodeTls {
    /// Reads the CA, certificate and key files and builds `node`'s identity (see
    /// [`NodeTls::from_pem`] for the checks). Errors name the file.
    pub fn load(files: &TlsFiles, node: &str) -> Result<NodeTls, TlsError> {
        let ca = read(&files.ca)?;
        let cert = read(&files.cert)?;
        let key = read(&files.key)?;
        Self::build(
            Input {
                bytes: &ca,
                what: files.ca.display().to_string(),
            },
            Input {
                bytes: &cert,
                what: files.cert.display().to_string(),
            },
            Input {
                bytes: &key,
                what: files.key.display().to_string(),
            },
            node,
        )
    }

    /// Builds `node`'s identity from PEM strings. Checks that the certificate chains to the
    /// CA for client and server use, that it names `node`, and that the key matches it.
    pub fn from_pem(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        node: &str,
    ) -> Result<NodeTls, TlsError> {
        Self::build(
            Input {
                bytes: ca_pem.as_bytes(),
                what: "CA PEM".into(),
            },
            Input {
                bytes: cert_pem.as_bytes(),
                what: "certificate PEM".into(),
            },
            Input {
                bytes: key_pem.as_bytes(),
                what: "key PEM".into(),
            },
            node,
        )
    }

    fn build(
        ca: Input<'_>,
        cert: Input<'_>,
        key: Input<'_>,
        node: &str,
    ) -> Result<NodeTls, TlsError> {
        let server_name = server_name(node)?;
        let mut roots = RootCertStore::empty();
        for c in certificates(ca.bytes, &ca.what)? {
            roots.add(c).map_err(rustls_err(ca.what.clone()))?;
        }
        let roots = Arc::new(roots);
        let chain = certificates(cert.bytes, &cert.what)?;
        let key_der = private_key(key.bytes, &key.what)?;

        // The names first: "this is node-b's certificate" is the likelier mistake and the
        // clearer message than a verifier's.
        let (end_entity, intermediates) = match chain.split_first() {
            Some(split) => split,
            None => {
                return Err(TlsError::NoCertificate {
                    what: cert.what.clone(),
                })
            }
        };
        let names = peer_names(end_entity).map_err(|e| match e {
            TlsError::BadCertificate { reason, .. } => TlsError::BadCertificate {
                what: cert.what.clone(),
                reason,
            },
            other => other,
        })?;
        if !names.iter().any(|n| n == node) {
            return Err(TlsError::WrongNode {
                what: cert.what.clone(),
                node: node.to_string(),
                names,
            });
        }

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Rustls {
                    what: format!("{}: client verifier", ca.what),
                    reason: e.to_string(),
                })?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Rustls {
                    what: format!("{}: server verifier", ca.what),
                    reason: e.to_string(),
                })?;
        let now = UnixTime::now();
        let not_trusted = |usage: &'static str| {
            let what = cert.what.clone();
            let ca = ca.what.clone();
            move |e: rustls::Error| TlsError::NotTrusted {
                what,
                ca,
                usage,
                reason: e.to_string(),
            }
        };
        client_verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(not_trusted("client"))?;
        // Dialers verify this node as a server under its name (SAN DNS only, as webpki does).
        server_verifier
            .verify_server_cert(end_entity, intermediates, &server_name, &[], now)
            .map_err(not_trusted("server"))?;

        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err("protocol versions"))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(rustls_err(format!("{} / {}", cert.what, key.what)))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err("protocol versions"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der)
            .map_err(rustls_err(format!("{} / {}", cert.what, key.what)))?;
        Ok(NodeTls {
            node: node.into(),
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The node this identity is for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The acceptor's configuration (requires a client certificate under the cluster CA).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The dialer's configuration (trusts only the cluster CA, presents this node's
    /// certificate).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }
}

/// `node` as a TLS server name: the name a dialer verifies the acceptor's certificate against.
pub fn server_name(node: &str) -> Result<ServerName<'static>, TlsError> {
    let name = ServerName::try_from(node.to_string()).map_err(|e| TlsError::BadNodeName {
        node: node.to_string(),
        reason: e.to_string(),
    })?;
    match name {
        ServerName::DnsName(_) => Ok(name),
        _ => Err(TlsError::BadNodeName {
            node: node.to_string(),
            reason: "an IP address, not a name".into(),
        }),
    }
}

/// The names a certificate carries: its subject common names, then its SAN DNS names (in
/// certificate order, without repeats). These are the names the transport accepts a peer as.
pub fn peer_names(cert_der: &[u8]) -> Result<Vec<String>, TlsError> {
    let bad = |reason: String| TlsError::BadCertificate {
        what: "peer certificate".into(),
        reason,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| bad(e.to_string()))?;
    let mut names: Vec<String> = Vec::new();
    let mut push = |n: &str| {
        if !names.iter().any(|m| m == n) {
            names.push(n.to_string());
        }
    };
    for cn in cert.subject().iter_common_name() {
        // A CN that is not a string (BMPString, ...) names no node: skip it.
        if let Ok(s) = cn.as_str() {
            push(s);
        }
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("subject alternative names: {e}")))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                push(dns);
            }
        }
    }
    Ok(names)
}
