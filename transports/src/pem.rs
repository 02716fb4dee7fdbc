//! PEM errors in words, for the TLS setups of the CSMS and the cluster (rustls-pki-types
//! reads the files; its own `Display` of a missing end marker is a list of byte values).

use rustls::pki_types::pem;

/// What is wrong with a PEM file, in words.
pub fn reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a section has no end line `-----END {}-----`",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed section start line `{}`",
            String::from_utf8_lossy(line)
        ),
        other => other.to_string(),
    }
}
