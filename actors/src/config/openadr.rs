//! `[openadr]`: the node as an OpenADR 2.0b VEN of a utility's VTN (`crate::io::openadr`).
//!
//! ```toml
//! [openadr]
//! vtn_url = "https://vtn.example.net/OpenADR2/Simple/2.0b"  # http:// only on loopback
//! ven_name = "depot-7"
//! poll_interval_s = 10       # oadrPoll period
//! report_interval_s = 60     # TELEMETRY_USAGE (site power) period
//! store = "openadr.redb"     # registration and events, relative to the topology file
//!
//! [openadr.tls]              # required with https://
//! ca = "vtn-ca.pem"
//! cert = "ven.pem"           # a client certificate, with key (2.0b's usual VEN identity)
//! key = "ven.key"
//!
//! [openadr.simple_levels]    # SIMPLE levels → site target, kW (absent: SIMPLE events opt out)
//! 0 = 0.0
//! 1 = -50.0
//! 2 = -100.0
//! 3 = -150.0
//! ```

use std::path::PathBuf;

use serde::Serialize;

use super::{Reader, Tbl};

/// `[openadr] poll_interval_s` when none is given.
pub const DEFAULT_OPENADR_POLL_S: f64 = 10.0;
/// `[openadr] report_interval_s` when none is given.
pub const DEFAULT_OPENADR_REPORT_S: f64 = 60.0;
/// The shortest poll or report period accepted, s.
pub const MIN_OPENADR_INTERVAL_S: f64 = 1.0;
/// The longest poll or report period accepted, s (a day: 2.0b's longest poll).
pub const MAX_OPENADR_INTERVAL_S: f64 = 86_400.0;
/// `[openadr] store` when none is given.
pub const DEFAULT_OPENADR_STORE: &str = "openadr.redb";
/// The longest `ven_name`, characters.
pub const MAX_VEN_NAME_CHARS: usize = 64;

pub(super) const OPENADR_KEYS: &[&str] = &[
    "vtn_url",
    "ven_name",
    "poll_interval_s",
    "report_interval_s",
    "store",
    "tls",
    "simple_levels",
];
const OPENADR_TLS_KEYS: &[&str] = &["ca", "cert", "key"];
const SIMPLE_LEVEL_KEYS: &[&str] = &["0", "1", "2", "3"];

/// `[openadr]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenAdr {
    /// The VTN's Simple-HTTP base URL: `https://` with `[openadr.tls]`, or `http://` on
    /// loopback only (a VTN commands the site, so off loopback it must authenticate).
    pub vtn_url: String,
    /// `oadrVenName`: 1 to [`MAX_VEN_NAME_CHARS`] printable characters.
    pub ven_name: String,
    /// The oadrPoll period, s ([`MIN_OPENADR_INTERVAL_S`]..=[`MAX_OPENADR_INTERVAL_S`]).
    pub poll_interval_s: f64,
    /// The TELEMETRY_USAGE report period, s (same range).
    pub report_interval_s: f64,
    /// The VEN's redb file (relative paths: to the topology file).
    pub store: PathBuf,
    /// TLS to the VTN.
    pub tls: Option<OpenAdrTls>,
    /// SIMPLE level 0..=3 → site target, kW; None: SIMPLE events are opted out.
    pub simple_levels: Option<[f64; 4]>,
}

/// `[openadr.tls]`: paths read when the node starts, relative to its working directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenAdrTls {
    /// The CA that issued the VTN's certificate (PEM).
    pub ca: PathBuf,
    /// A client certificate chain (PEM); always with `key`.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM); always with `cert`.
    pub key: Option<PathBuf>,
}

/// Whether `host` (a URL's) names this machine.
fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Reader {
    /// The optional `[openadr]` table.
    pub(super) fn openadr(&mut self, root: &Tbl<'_, '_>) -> Option<OpenAdr> {
        let t = self.child(root, "openadr", OPENADR_KEYS);
        t.table?;
        let vtn_url = self.string(&t, "vtn_url");
        let https = self.vtn_url(&t, &vtn_url);
        let ven_name = self.string(&t, "ven_name");
        if let (path, Some(node)) = self.lookup(&t, "ven_name") {
            let n = ven_name.chars().count();
            if n == 0 || n > MAX_VEN_NAME_CHARS || ven_name.chars().any(char::is_control) {
                let message = format!("must be 1 to {MAX_VEN_NAME_CHARS} printable characters");
                self.problem(&path, node.span().start, message);
            }
        }
        let poll_interval_s = self.interval(&t, "poll_interval_s", DEFAULT_OPENADR_POLL_S);
        let report_interval_s = self.interval(&t, "report_interval_s", DEFAULT_OPENADR_REPORT_S);
        let store = self
            .optional_string(&t, "store")
            .unwrap_or_else(|| DEFAULT_OPENADR_STORE.to_owned());
        let tls = self.openadr_tls(&t);
        if https != Some(tls.is_some()) && https.is_some() {
            let (path, at) = match self.lookup(&t, "vtn_url") {
                (path, Some(node)) => (path, node.span().start),
                (path, None) => (path, t.at),
            };
            let message = if tls.is_some() {
                "[openadr.tls] is given: the VTN must be https://"
            } else {
                "an https:// VTN needs [openadr.tls] (its CA)"
            };
            self.problem(&path, at, message.into());
        }
        Some(OpenAdr {
            vtn_url,
            ven_name,
            poll_interval_s,
            report_interval_s,
            store: store.into(),
            tls,
            simple_levels: self.simple_levels(&t),
        })
    }

    /// Whether `vtn_url` is https (None when it is not a usable URL: reported).
    fn vtn_url(&mut self, t: &Tbl<'_, '_>, url: &str) -> Option<bool> {
        let (path, node) = self.lookup(t, "vtn_url");
        let node = node?;
        let scheme = url.split_once("://").map(|(s, _)| s);
        let host_ok = url
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'));
        match (scheme, host_ok, url.parse::<hyper::Uri>()) {
            (Some("http"), true, Ok(uri)) if !loopback(uri.host().unwrap_or_default()) => {
                // The VTN commands the site: off loopback it must prove who it is (TLS).
                let message = "a plain http:// VTN must be on loopback; use https:// with \
                               [openadr.tls]";
                self.problem(&path, node.span().start, message.into());
                None
            }
            (Some("http"), true, Ok(_)) => Some(false),
            (Some("https"), true, Ok(_)) => Some(true),
            (_, _, Err(e)) => {
                self.problem(&path, node.span().start, format!("not a URL: {e}"));
                None
            }
            _ => {
                let message = format!("{url:?} is not an http:// or https:// URL with a host");
                self.problem(&path, node.span().start, message);
                None
            }
        }
    }

    fn interval(&mut self, t: &Tbl<'_, '_>, key: &str, default: f64) -> f64 {
        let v = self.number(t, key, Some(default));
        if let (path, Some(node)) = self.lookup(t, key) {
            let ok = (MIN_OPENADR_INTERVAL_S..=MAX_OPENADR_INTERVAL_S).contains(&v);
            if !ok && !self.sources.is_broken(&path) {
                let message = format!(
                    "{v} is not within {MIN_OPENADR_INTERVAL_S}..={MAX_OPENADR_INTERVAL_S} s"
                );
                self.problem(&path, node.span().start, message);
            }
        }
        v
    }

    fn openadr_tls(&mut self, t: &Tbl<'_, '_>) -> Option<OpenAdrTls> {
        let tls = self.child(t, "tls", OPENADR_TLS_KEYS);
        tls.table?;
        let ca = self.string(&tls, "ca");
        let cert = self.optional_string(&tls, "cert");
        let key = self.optional_string(&tls, "key");
        if cert.is_some() != key.is_some() {
            let message = "cert and key go together: give both or neither";
            self.problem(&tls.path, tls.at, message.into());
        }
        Some(OpenAdrTls {
            ca: ca.into(),
            cert: cert.map(Into::into),
            key: key.map(Into::into),
        })
    }

    fn simple_levels(&mut self, t: &Tbl<'_, '_>) -> Option<[f64; 4]> {
        let levels = self.child(t, "simple_levels", SIMPLE_LEVEL_KEYS);
        levels.table?;
        let mut out = [0.0; 4];
        for (i, key) in SIMPLE_LEVEL_KEYS.iter().enumerate() {
            out[i] = self.number(&levels, key, None);
            if let (path, Some(node)) = self.lookup(&levels, key) {
                let v = out[i];
                let limit = crate::runtime::MAX_REQUEST_KW;
                if (!v.is_finite() || v.abs() > limit) && !self.sources.is_broken(&path) {
                    let message = format!("{v} is not within ±{limit} kW");
                    self.problem(&path, node.span().start, message);
                }
            }
        }
        Some(out)
    }
}
