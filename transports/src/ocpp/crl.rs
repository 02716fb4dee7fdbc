//! Certificate revocation for security profile 3: a CRL file (PEM or DER) makes the CSMS
//! refuse a revoked station certificate at the TLS handshake.
//!
//! Kept apart from [`super::tls`] (whose PEM loading is being moved to rustls-pki-types): the
//! CRL is read with pki-types' PEM API and [`mutual_tls_server_config`] builds the profile 3
//! config with the CRLs, reusing [`super::tls::certificates`] and
//! [`super::tls::private_key`].
//!
//! Invariants: the station certificate (the end entity) is checked against the CRLs, and a
//! certificate whose issuer no CRL covers is refused (webpki's default: an unknown revocation
//! status is an error), so a CRL of the wrong CA fails closed; a CRL past its `nextUpdate` is
//! still used (a stale list is better than none; rotate the file before it expires). A file
//! with no CRL, or one webpki cannot parse, is an error when the config is built, never an
//! empty list.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::tls::{certificates, private_key, TlsError};

/// Largest CRL file read.
pub const MAX_CRL_FILE_BYTES: usize = 16 * 1024 * 1024;

/// Every CRL of a file: PEM (`-----BEGIN X509 CRL-----` blocks) or one DER CRL.
pub fn crls(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem_error = |reason: String| TlsError::Pem {
        what: "CRL",
        reason,
    };
    if bytes.len() > MAX_CRL_FILE_BYTES {
        return Err(pem_error(format!("larger than {MAX_CRL_FILE_BYTES} bytes")));
    }
    let list: Vec<_> = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| pem_error(e.to_string()))?
    } else if bytes.first() == Some(&0x30) {
        vec![CertificateRevocationListDer::from(bytes.to_vec())]
    } else {
        Vec::new()
    };
    if list.is_empty() {
        return Err(pem_error(
            "no CRL found (expected PEM X509 CRL or DER)".into(),
        ));
    }
    Ok(list)
}

/// Profile 3's server config: client certificates issued by `client_ca_pem`, and refused when
/// one of `crls` revokes them.
pub fn mutual_tls_server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let rustls_error = |what: &'static str| move |e: String| TlsError::Rustls { what, reason: e };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in certificates(client_ca_pem, "client CA")? {
        roots
            .add(cert)
            .map_err(|e| rustls_error("client CA")(e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| rustls_error("client verifier")(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| rustls_error("protocol versions")(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certificates(cert_chain_pem, "server certificate chain")?,
            private_key(key_pem)?,
        )
        .map_err(|e| rustls_error("server certificate")(e.to_string()))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty_files_are_errors() {
        assert!(crls(b"").is_err());
        assert!(crls(b"hello").is_err());
        assert!(crls(b"-----BEGIN X509 CRL-----\n!!!\n-----END X509 CRL-----\n").is_err());
        assert!(crls(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }
}
