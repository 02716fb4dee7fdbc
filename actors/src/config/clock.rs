//! `[safety.clock]`: where the node's PTP clock offset and synchronisation come from.
//!
//! ```toml
//! [safety.clock]
//! source = "ptp4l"                # "ptp4l" | "none" | "simulated"
//! path = "/var/run/ptp4l"         # ptp4l's uds_address
//! poll_ms = 250                   # how often ptp4l is asked
//! stale_ms = 3000                 # older than this, a reading (or the last Sync) is a fault
//! timeout_ms = 200                # how long one request waits for ptp4l's answer
//! domain = 0                      # ptp4l's domainNumber
//! accept_uncalibrated = false     # true only for a monitoring-only (free_running) ptp4l
//! # socket_dir = "/run/gridvisor" # where the node's own client socket is made
//! ```
//!
//! Without the table a topology with no real device (no `modbus` endpoint, no `[ocpp]`) runs
//! on the simulated monitor, as the demo and the chaos runs always did; one with real devices
//! runs with the PTP rows off ([`ClockSourceKind::None`]), and `check-config` warns
//! ([`Topology::warnings`]). The keys other than `source` belong to ptp4l and are refused
//! with another source.

use std::path::PathBuf;

use serde::Serialize;

use super::{Checker, Reader, Tbl, Topology, MAX_DURATION_S};

/// ptp4l's default management socket (`uds_address`).
pub const DEFAULT_PTP4L_PATH: &str = "/var/run/ptp4l";
/// How often ptp4l is asked when `poll_ms` is not given, ms.
pub const DEFAULT_CLOCK_POLL_MS: u64 = 250;
/// The shortest accepted poll period, ms.
pub const MIN_CLOCK_POLL_MS: u64 = 10;
/// Reading age (and age of the last Sync) beyond which the clock is unsynchronised, when
/// `stale_ms` is not given, ms: three Sync intervals of ptp4l's default profile
/// (logSyncInterval 0), so that one lost Sync is not a fault.
pub const DEFAULT_CLOCK_STALE_MS: u64 = 3_000;
/// How long one request waits for ptp4l's answer when `timeout_ms` is not given, ms.
pub const DEFAULT_CLOCK_TIMEOUT_MS: u64 = 200;
/// The keys of `[safety.clock]`.
pub(super) const CLOCK_KEYS: &[&str] = &[
    "source",
    "path",
    "poll_ms",
    "stale_ms",
    "timeout_ms",
    "domain",
    "accept_uncalibrated",
    "socket_dir",
];

/// Where the clock readings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockSourceKind {
    /// A real ptp4l, over its management socket.
    Ptp4l,
    /// None: the PTP rows of the ladder are off, on purpose.
    None,
    /// The simulated monitor that tests, the demo and chaos runs set.
    Simulated,
}

impl ClockSourceKind {
    /// The name in the topology, the API and the metric's label.
    pub fn name(self) -> &'static str {
        match self {
            ClockSourceKind::Ptp4l => "ptp4l",
            ClockSourceKind::None => "none",
            ClockSourceKind::Simulated => "simulated",
        }
    }
}

/// `[safety.clock]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockConfig {
    /// Where readings come from.
    pub source: ClockSourceKind,
    /// ptp4l's management socket (default [`DEFAULT_PTP4L_PATH`]).
    pub path: PathBuf,
    /// How often ptp4l is asked, ms (>= [`MIN_CLOCK_POLL_MS`], default
    /// [`DEFAULT_CLOCK_POLL_MS`]).
    pub poll_ms: u64,
    /// A reading older than this, or a last Sync older than this, means unsynchronised, ms
    /// (> `poll_ms`, default [`DEFAULT_CLOCK_STALE_MS`]).
    pub stale_ms: u64,
    /// How long one request waits for ptp4l, ms (1..`stale_ms`, default
    /// [`DEFAULT_CLOCK_TIMEOUT_MS`]).
    pub timeout_ms: u64,
    /// ptp4l's PTP domain (0..=255, default 0).
    pub domain: u8,
    /// Whether a port in UNCALIBRATED counts as synchronised (default false: only SLAVE
    /// does). A ptp4l with `free_running 1` monitors without steering and never leaves
    /// UNCALIBRATED; only such a monitoring setup should set this.
    pub accept_uncalibrated: bool,
    /// Where the node's client socket is made (None: the system's temporary directory).
    pub socket_dir: Option<PathBuf>,
}

/// Written as it is read: the ptp4l settings only with `source = "ptp4l"` (the reader refuses
/// them with another source), so a serialized topology reads back equal.
impl Serialize for ClockConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let ptp = self.source == ClockSourceKind::Ptp4l;
        let mut t = s.serialize_struct("ClockConfig", 8)?;
        t.serialize_field("source", &self.source)?;
        if ptp {
            t.serialize_field("path", &self.path)?;
            t.serialize_field("poll_ms", &self.poll_ms)?;
            t.serialize_field("stale_ms", &self.stale_ms)?;
            t.serialize_field("timeout_ms", &self.timeout_ms)?;
            t.serialize_field("domain", &self.domain)?;
            t.serialize_field("accept_uncalibrated", &self.accept_uncalibrated)?;
            if let Some(dir) = &self.socket_dir {
                t.serialize_field("socket_dir", dir)?;
            }
        }
        t.end()
    }
}

impl ClockConfig {
    /// The settings of `source` with every default.
    pub fn new(source: ClockSourceKind) -> Self {
        ClockConfig {
            source,
            path: PathBuf::from(DEFAULT_PTP4L_PATH),
            poll_ms: DEFAULT_CLOCK_POLL_MS,
            stale_ms: DEFAULT_CLOCK_STALE_MS,
            timeout_ms: DEFAULT_CLOCK_TIMEOUT_MS,
            domain: 0,
            accept_uncalibrated: false,
            socket_dir: None,
        }
    }
}

impl Topology {
    /// Whether any device is real: a `modbus` endpoint or an `[ocpp]` table.
    pub fn has_real_devices(&self) -> bool {
        self.ocpp.is_some()
            || self.segments().any(|(_, s)| {
                s.inverters.iter().any(|i| i.modbus.is_some())
                    || s.meters.iter().any(|m| m.modbus.is_some())
            })
    }

    /// The clock source in force: `[safety.clock]`, or without it the simulated monitor for a
    /// site without real devices and none (the PTP rows off) for one with them.
    pub fn clock(&self) -> ClockConfig {
        match &self.safety.clock {
            Some(c) => c.clone(),
            None if self.has_real_devices() => ClockConfig::new(ClockSourceKind::None),
            None => ClockConfig::new(ClockSourceKind::Simulated),
        }
    }

    /// What is valid but probably not meant (`gridvisor check-config` prints them, `run`
    /// logs them).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.safety.clock.is_none() && self.has_real_devices() {
            w.push(
                "safety.clock: the topology has real devices (modbus or [ocpp]) and no \
                 [safety.clock]: the PTP rows of the safe-state ladder are off; add \
                 [safety.clock] source = \"ptp4l\" (or source = \"none\" to say so)"
                    .to_owned(),
            );
        }
        w
    }
}

impl Reader {
    /// The optional `[safety.clock]` table of `safety`.
    pub(super) fn clock(&mut self, safety: &Tbl<'_, '_>) -> Option<ClockConfig> {
        let t = self.child(safety, "clock", CLOCK_KEYS);
        t.table?;
        let source = match self.lookup(&t, "source") {
            (path, None) => {
                self.missing(
                    &t,
                    &path,
                    "key `source` (\"ptp4l\", \"none\" or \"simulated\")",
                );
                return None;
            }
            (path, Some(node)) => match node.get_ref().as_str() {
                Some("ptp4l") => ClockSourceKind::Ptp4l,
                Some("none") => ClockSourceKind::None,
                Some("simulated") => ClockSourceKind::Simulated,
                other => {
                    let found =
                        other.map_or("a value that is not a string".into(), |s| format!("{s:?}"));
                    let message =
                        format!("expected \"ptp4l\", \"none\" or \"simulated\", found {found}");
                    self.problem(&path, node.span().start, message);
                    return None;
                }
            },
        };
        if source != ClockSourceKind::Ptp4l {
            self.only_for_ptp4l(&t, source);
            return Some(ClockConfig::new(source));
        }
        let domain = self.integer(&t, "domain", 0);
        let domain = u8::try_from(domain).unwrap_or_else(|_| {
            let (path, node) = self.lookup(&t, "domain");
            let at = node.map_or(t.at, |n| n.span().start);
            self.problem(&path, at, format!("domain {domain} is outside 0..=255"));
            0
        });
        Some(ClockConfig {
            source,
            path: self
                .optional_string(&t, "path")
                .map_or_else(|| PathBuf::from(DEFAULT_PTP4L_PATH), PathBuf::from),
            poll_ms: self.integer(&t, "poll_ms", DEFAULT_CLOCK_POLL_MS),
            stale_ms: self.integer(&t, "stale_ms", DEFAULT_CLOCK_STALE_MS),
            timeout_ms: self.integer(&t, "timeout_ms", DEFAULT_CLOCK_TIMEOUT_MS),
            domain,
            accept_uncalibrated: self.boolean(&t, "accept_uncalibrated", false),
            socket_dir: self.optional_string(&t, "socket_dir").map(PathBuf::from),
        })
    }

    /// ptp4l's keys given with another source: an error each (they would be ignored).
    fn only_for_ptp4l(&mut self, t: &Tbl<'_, '_>, source: ClockSourceKind) {
        for key in CLOCK_KEYS.iter().filter(|k| **k != "source") {
            if let (path, Some(node)) = self.lookup(t, key) {
                let message = format!(
                    "`{key}` is a setting of source = \"ptp4l\"; source = \"{}\" takes none",
                    source.name()
                );
                self.problem(&path, node.span().start, message);
            }
        }
    }
}

impl Checker<'_> {
    /// `[safety.clock]`: poll period, staleness bound and timeout in range and in order, a
    /// path that can be a Unix socket address.
    pub(super) fn clock(&mut self, c: &ClockConfig) {
        if c.source != ClockSourceKind::Ptp4l {
            return;
        }
        let max_ms = (MAX_DURATION_S * 1_000.0) as u64;
        let (poll, stale, timeout) = (
            "safety.clock.poll_ms",
            "safety.clock.stale_ms",
            "safety.clock.timeout_ms",
        );
        let poll_ok = (MIN_CLOCK_POLL_MS..=max_ms).contains(&c.poll_ms);
        if !poll_ok {
            let m = format!(
                "must be between {MIN_CLOCK_POLL_MS} and {max_ms} ms, got {}",
                c.poll_ms
            );
            self.report(poll, &[], m);
        }
        if c.stale_ms > max_ms {
            self.report(
                stale,
                &[],
                format!("must be <= {max_ms} ms, got {}", c.stale_ms),
            );
        } else if poll_ok && c.stale_ms <= c.poll_ms {
            let m = format!(
                "must be > poll_ms ({}): a reading is at least one poll old, got {}",
                c.poll_ms, c.stale_ms
            );
            self.report(stale, &[poll], m);
        }
        if c.timeout_ms == 0 || c.timeout_ms >= c.stale_ms {
            let m = format!("must be 1..stale_ms ({}), got {}", c.stale_ms, c.timeout_ms);
            self.report(timeout, &[stale], m);
        }
        let path = c.path.as_os_str().len();
        if path == 0 || path > gridvisor_transports::ptp::client::MAX_SOCKET_PATH_BYTES {
            let m = format!(
                "must be 1 to {} bytes (a Unix socket address), got {path}",
                gridvisor_transports::ptp::client::MAX_SOCKET_PATH_BYTES
            );
            self.report("safety.clock.path", &[], m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, ConfigErrors};
    use super::*;

    const SITE: &str = r#"
[site]
id = "s"
[[substations]]
id = "sub"
[[substations.segments]]
id = "tx"
rated_kw = 100
[[substations.segments.meters]]
id = "m"
"#;

    fn topology(extra: &str) -> Result<Topology, ConfigErrors> {
        parse("t.toml", &format!("{SITE}{extra}"))
    }

    fn errors(extra: &str) -> Vec<String> {
        match topology(extra) {
            Ok(_) => panic!("valid: {extra}"),
            Err(ConfigErrors(e)) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn reads_a_ptp4l_source_with_defaults_and_settings() {
        let t = topology("[safety.clock]\nsource = \"ptp4l\"\n").unwrap();
        assert_eq!(t.clock(), ClockConfig::new(ClockSourceKind::Ptp4l));
        let t = topology(
            "[safety.clock]\nsource = \"ptp4l\"\npath = \"/run/ptp/slave\"\npoll_ms = 100\n\
             stale_ms = 1000\ntimeout_ms = 50\ndomain = 24\naccept_uncalibrated = true\n\
             socket_dir = \"/run/gridvisor\"\n",
        )
        .unwrap();
        let c = t.clock();
        assert_eq!(c.path, PathBuf::from("/run/ptp/slave"));
        assert_eq!((c.poll_ms, c.stale_ms, c.timeout_ms), (100, 1000, 50));
        assert_eq!((c.domain, c.accept_uncalibrated), (24, true));
        assert_eq!(c.socket_dir, Some(PathBuf::from("/run/gridvisor")));
        assert!(t.warnings().is_empty());
    }

    #[test]
    fn without_the_table_the_source_follows_the_devices_and_real_ones_warn() {
        let t = topology("").unwrap();
        assert_eq!(t.clock().source, ClockSourceKind::Simulated);
        assert!(t.warnings().is_empty());
        let t = topology("[ocpp]\nlisten = \"127.0.0.1:8080\"\npasswords = \"s.cred\"\n").unwrap();
        assert_eq!(t.clock().source, ClockSourceKind::None);
        assert!(
            t.warnings()[0].contains("[safety.clock]"),
            "{:?}",
            t.warnings()
        );
        let t = topology("[ocpp]\nlisten = \"127.0.0.1:8080\"\npasswords = \"s.cred\"\n[safety.clock]\nsource = \"none\"\n").unwrap();
        assert_eq!(t.clock().source, ClockSourceKind::None);
        assert!(t.warnings().is_empty());
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let e = errors("[safety.clock]\nsource = \"gps\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:12:10: safety.clock.source: expected \"ptp4l\""),
            "{e:?}"
        );
        let e = errors("[safety.clock]\npath = \"/x\"\n");
        assert!(
            e[0].contains("safety.clock.source: missing required key `source`"),
            "{e:?}"
        );
        let e = errors("[safety.clock]\nsource = \"none\"\npoll_ms = 100\n");
        assert!(
            e[0].starts_with("t.toml:13:11: safety.clock.poll_ms: `poll_ms` is a setting of"),
            "{e:?}"
        );
        let e = errors("[safety.clock]\nsource = \"ptp4l\"\npoll_ms = 500\nstale_ms = 400\n");
        assert!(
            e[0].contains("safety.clock.stale_ms: must be > poll_ms (500)"),
            "{e:?}"
        );
        let e = errors("[safety.clock]\nsource = \"ptp4l\"\ntimeout_ms = 0\ndomain = 300\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("safety.clock.timeout_ms: must be 1..stale_ms"));
        assert!(e[1].contains("safety.clock.domain: domain 300 is outside 0..=255"));
        let e = errors("[safety.clock]\nsource = \"ptp4l\"\npoll_ms = 1\nwhat = 1\n");
        assert!(e.iter().any(|e| e.contains("unknown key `what`")), "{e:?}");
        assert!(e
            .iter()
            .any(|e| e.contains("safety.clock.poll_ms: must be between 10")));
        let long = format!(
            "[safety.clock]\nsource = \"ptp4l\"\npath = \"/{}\"\n",
            "p".repeat(120)
        );
        assert!(errors(&long)[0].contains("safety.clock.path: must be 1 to 107 bytes"));
    }
}
