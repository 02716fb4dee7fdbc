//! Development certificates for a cluster: a CA, one certificate per node and a cookie
//! (`gridvisor certs` writes them).
//!
//! These are for development and tests: the CA key is written next to the certificates. In
//! production the CA lives elsewhere and only the node's files are mounted.
//!
//! Invariants:
//! - node names are DNS labels (lowercase letters, digits, `-`): a dialer verifies the
//!   acceptor's certificate against the peer's *name* as the TLS server name, so a name that
//!   cannot be one could never connect. Names whose files would collide (`ca`, `*-key`) are
//!   refused too;
//! - every node certificate is usable as both server and client (mutual TLS), carries its
//!   node as CN and SAN DNS name, plus `localhost`, 127.0.0.1, ::1 and the extra hosts;
//! - keys and the cookie are written with mode 0600, and nothing is overwritten unless asked
//!   (checked for every file before the first is written, so a refusal leaves no mix of old
//!   and new files).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The CA's subject common name.
pub const CA_COMMON_NAME: &str = "gridvisor cluster CA";
/// How long the CA and the node certificates are valid, in years.
pub const VALIDITY_YEARS: i32 = 10;
/// Bytes of randomness in a cookie (written as twice as many hex digits).
pub const COOKIE_BYTES: usize = 32;
/// Random bytes in the development CA's name (its OU), so two CAs have different names.
pub const CA_ID_BYTES: usize = 4;
/// Longest DNS label (RFC 1035).
pub const MAX_LABEL: usize = 63;

/// A generated cluster: the CA and, per node, its certificate and key (all PEM), and the
/// cluster cookie.
#[derive(Clone)]
pub struct GeneratedCerts {
    /// The CA certificate.
    pub ca_pem: String,
    /// The CA's private key (to sign more nodes later; keep it off the nodes in production).
    pub ca_key_pem: String,
    /// Node name → (certificate PEM, private key PEM).
    pub nodes: BTreeMap<String, (String, String)>,
    /// The cluster cookie: [`COOKIE_BYTES`] random bytes in lowercase hex.
    pub cookie: String,
}

impl std::fmt::Debug for GeneratedCerts {
    // Keys and the cookie are secrets: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedCerts")
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why certificates could not be generated, written or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// No node names were given.
    #[error("no node names given")]
    NoNodes,
    /// A node name is not usable.
    #[error("node name {name:?}: {reason}")]
    BadNodeName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// An extra host is neither an IP address nor a DNS name.
    #[error("extra host {host:?} is neither an IP address nor a valid DNS name")]
    BadHost {
        /// The host.
        host: String,
    },
    /// rcgen failed.
    #[error("generating {what}: {reason}")]
    Generate {
        /// What was being generated.
        what: String,
        /// rcgen's description.
        reason: String,
    },
    /// The system random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// A file exists and `force` was not given.
    #[error("{0} already exists (use --force to overwrite)")]
    Exists(PathBuf),
    /// A file or directory could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A cookie file is empty.
    #[error("{0}: the cookie is empty")]
    EmptyCookie(PathBuf),
}

/// Checks that `name` can be a node name: a lowercase DNS label whose files do not collide
/// with the CA's.
pub fn validate_node_name(name: &str) -> Result<(), CertError> {
    let bad = |reason: &str| CertError::BadNodeName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_LABEL {
        return Err(bad("longer than 63 characters (a DNS label)"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad(
            "must be a DNS label: lowercase letters, digits and '-' only",
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(bad("must be a DNS label: cannot start or end with '-'"));
    }
    if name == "ca" || name.ends_with("-key") {
        return Err(bad(
            "reserved: its files would collide with ca.pem / ca-key.pem or another node's key",
        ));
    }
    Ok(())
}

fn gen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |e| CertError::Generate {
        what,
        reason: e.to_string(),
    }
}

/// Validity: from yesterday (a peer whose clock is a little behind still accepts the
/// certificate) for [`VALIDITY_YEARS`].
fn validity(params: &mut CertificateParams) {
    let start = time::OffsetDateTime::now_utc().date() - time::Duration::days(1);
    params.not_before = start.midnight().assume_utc();
    // 29 February plus ten years is not a date: the day before is.
    let end = start
        .replace_year(start.year() + VALIDITY_YEARS)
        .or_else(|_| (start - time::Duration::days(1)).replace_year(start.year() + VALIDITY_YEARS))
        .unwrap_or(start);
    params.not_after = end.midnight().assume_utc();
}

fn random_hex(n: usize) -> Result<String, CertError> {
    let mut bytes = vec![0u8; n];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|e| CertError::Random(format!("{e:?}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn san_for(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = || CertError::BadHost {
        host: name.to_string(),
    };
    match rustls::pki_types::ServerName::try_from(name) {
        Ok(rustls::pki_types::ServerName::DnsName(_)) => {}
        _ => return Err(bad()),
    }
    Ok(SanType::DnsName(name.try_into().map_err(|_| bad())?))
}

/// Generates a development CA and a certificate per node (see the module docs), and a
/// cookie. `extra_hosts` are DNS names or IP addresses every node certificate also carries
/// (for example a pod's DNS name, `gridvisor-0.gridvisor.default.svc.cluster.local`).
pub fn generate(nodes: &[String], extra_hosts: &[String]) -> Result<GeneratedCerts, CertError> {
    if nodes.is_empty() {
        return Err(CertError::NoNodes);
    }
    for (i, n) in nodes.iter().enumerate() {
        validate_node_name(n)?;
        if nodes[..i].contains(n) {
            return Err(CertError::BadNodeName {
                name: n.clone(),
                reason: "given twice".into(),
            });
        }
    }
    let mut common_sans = vec![SanType::DnsName(
        "localhost".try_into().map_err(gen_err("localhost"))?,
    )];
    for h in extra_hosts {
        let san = san_for(h)?;
        if !common_sans.contains(&san) {
            common_sans.push(san);
        }
    }
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let san = SanType::IpAddress(ip);
        if !common_sans.contains(&san) {
            common_sans.push(san);
        }
    }

    let ca_key = KeyPair::generate().map_err(gen_err("the CA key"))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "gridvisor");
    // Two development CAs differ in name, not only in key: a certificate of another
    // cluster is then "UnknownIssuer" rather than a puzzling "BadSignature".
    ca_params.distinguished_name.push(
        DnType::OrganizationalUnitName,
        format!("development CA {}", &random_hex(CA_ID_BYTES)?),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(gen_err("the CA certificate"))?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut out = BTreeMap::new();
    for node in nodes {
        let key = KeyPair::generate().map_err(gen_err(format!("the key of {node}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, node.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "gridvisor");
        let own = SanType::DnsName(
            node.as_str()
                .try_into()
                .map_err(gen_err(format!("the name of {node}")))?,
        );
        params.subject_alt_names = vec![own.clone()];
        params
            .subject_alt_names
            .extend(common_sans.iter().filter(|s| **s != own).cloned());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(gen_err(format!("the certificate of {node}")))?;
        out.insert(node.clone(), (cert.pem(), key.serialize_pem()));
    }
    Ok(GeneratedCerts {
        ca_pem,
        ca_key_pem,
        nodes: out,
        cookie: random_hex(COOKIE_BYTES)?,
    })
}

/// The files of a node in a directory written by [`write_dev_certs`].
pub fn node_files(dir: &Path, node: &str) -> crate::tls::TlsFiles {
    crate::tls::TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{node}.pem")),
        key: dir.join(format!("{node}-key.pem")),
    }
}

/// Generates (as [`generate`]) and writes `out/ca.pem`, `out/ca-key.pem`, `out/<node>.pem`,
/// `out/<node>-key.pem` and `out/cookie` (the hex cookie, no newline), creating `out` if
/// needed. Keys and the cookie get mode 0600. Refuses to overwrite an existing file unless
/// `force`. Returns the paths written, in that order.
pub fn write_dev_certs(
    out: &Path,
    nodes: &[String],
    extra_hosts: &[String],
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    let generated = generate(nodes, extra_hosts)?;
    // (path, contents, secret)
    let mut files: Vec<(PathBuf, &str, bool)> = vec![
        (out.join("ca.pem"), generated.ca_pem.as_str(), false),
        (out.join("ca-key.pem"), generated.ca_key_pem.as_str(), true),
    ];
    for (node, (cert, key)) in &generated.nodes {
        let f = node_files(out, node);
        files.push((f.cert, cert.as_str(), false));
        files.push((f.key, key.as_str(), true));
    }
    files.push((out.join("cookie"), generated.cookie.as_str(), true));

    if !force {
        for (path, _, _) in &files {
            if path.exists() {
                return Err(CertError::Exists(path.clone()));
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|source| CertError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut written = Vec::with_capacity(files.len());
    for (path, contents, secret) in files {
        write_file(&path, contents, secret)?;
        written.push(path);
    }
    Ok(written)
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Remove first and create anew: an existing file's looser mode is not inherited, and
    // a secret is never readable by others, not even for a moment.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// Reads a cookie file (surrounding whitespace is ignored, so a cookie written by hand with
/// a trailing newline works).
pub fn read_cookie(path: &Path) -> Result<String, CertError> {
    let text = std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let cookie = text.trim();
    if cookie.is_empty() {
        return Err(CertError::EmptyCookie(path.to_path_buf()));
    }
    Ok(cookie.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_valid_from_yesterday_for_its_years() {
        let mut params = CertificateParams::default();
        validity(&mut params);
        let today = time::OffsetDateTime::now_utc().date();
        assert_eq!(params.not_before.date(), today - time::Duration::days(1));
        assert_eq!(
            params.not_after.year() - params.not_before.year(),
            VALIDITY_YEARS
        );
    }

    #[test]
    fn node_names_are_dns_labels() {
        for ok in ["node-a", "n1", "gridvisor-0"] {
            assert!(validate_node_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a_b",
            "ca",
            "x-key",
            &"a".repeat(64),
        ] {
            let e = validate_node_name(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
