//! The scenario file: a topology, a workload, faults over time, bounds and a seed.
//!
//! A scenario is one TOML file. Its own tables are `[chaos]`, `[workload]` (with
//! `[[workload.requests]]`), `[[faults]]` and `[bounds]`; the topology is either written inline
//! in the same file with the node's own tables (`[site]`, `[safety]`, `[[substations]]`,
//! `[[vehicles]]`, as in `configs/demo.toml`), or named by `[chaos] topology = "path"`
//! (relative to the scenario's folder). The vehicles of the topology, with their `arrive_s`
//! and `depart_s`, are the workload's arrivals and departures.
//!
//! ```toml
//! [chaos]
//! name = "islanding"          # default: the file's stem
//! seed = 1                    # the default seed (`--seed` overrides)
//! duration_s = 120            # simulated time
//! step_ms = 100               # the invariants are checked every step
//!
//! [workload]
//! keepalive_every_s = 1       # the grid controller's keep-alive period (0: none)
//! [[workload.requests]]
//! at_s = 5
//! scope = "site"              # or "substation:<id>", "segment:<id>"
//! target_kw = -40             # negative: discharge
//! duration_s = 100
//! jitter_kw = 5               # the target moves by up to ± this, drawn from the seed
//!
//! [[faults]]
//! at_s = 30
//! jitter_s = 5                # the start moves later by up to this, drawn from the seed
//! for_s = 20                  # cleared after this (default: never)
//! kind = "islanding"
//!
//! [bounds]
//! reaction_s = 2              # no discharge from a ChargeOnly/Tripped segment after this
//! transformer_s = 60          # no transformer above its limit for longer than this
//! restart_s = 5               # a crashed permanent actor runs again within this
//! soc_tolerance_pct = 0       # how far below its minimum SoC a vehicle may read
//! ```
//!
//! Fault kinds and their keys: `kill` (`target`: an actor path, `*` matches one path
//! segment; the seed picks among matches), `panic` (`device`, `count`: the device's next
//! `count` calls panic inside the actor's handler), `kill_segment` (`segment`), `exception`,
//! `timeout`, `garbage` (`device`: a charger, inverter or meter answers with a Modbus-like
//! exception, hangs for [`crate::devices::INJECTED_TIMEOUT`], or sends values that are not
//! valid), `hang` (`device`: never answers while the fault lasts; a call then fails),
//! `islanding` (`voltage_pu`, default 0; `frequency_hz`, default the topology's
//! `nominal_hz`), `frequency` (`frequency_hz` at nominal voltage: an excursion for the
//! frequency response), `ptp_drift` (`to_ms`, over `for_s`), `clock_jump` (`offset_ms`),
//! `clock_unsynchronised` (the clock source loses its grandmaster for `for_s`),
//! `over_temperature` (`inverter`, `celsius` of extra heat),
//! `transformer_overload` (`segment`, `extra_kw` of uncontrolled load), `keepalive_loss`,
//! `ocpp_disconnect` (`charger`: its OCPP connection drops; every call fails at once, the
//! write that raced the drop lands with its answer lost, and offline past OCPP 2.1's
//! `maxOfflineDuration` the charger drops a discharge profile) and `slow_peer` (`charger`,
//! `delay_ms` up to [`crate::devices::MAX_PEER_DELAY`]: every call answers that late; past the
//! CSMS's call timeout the call fails while its write still lands, in order).
//!
//! Every problem is reported at once, as `file:line:column: field: message`, like the
//! topology's own errors (and the topology's errors, inline or in their file, come through
//! unchanged).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use gridvisor_actors::config::{self, ConfigErrors, Topology};
use gridvisor_actors::runtime::Scope;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

mod arrivals;
pub use arrivals::{
    DEFAULT_MAX_AWAY_S, DEFAULT_MIN_AWAY_S, DEFAULT_SOC_MAX_PCT, DEFAULT_SOC_MIN_PCT,
};

/// The largest scenario file accepted, bytes.
pub const MAX_SCENARIO_BYTES: usize = 1024 * 1024;
/// The longest simulated run accepted, seconds (a day).
pub const MAX_DURATION_S: f64 = 86_400.0;
/// The shortest step between invariant checks, ms.
pub const MIN_STEP_MS: u64 = 10;
/// The longest step between invariant checks, ms.
pub const MAX_STEP_MS: u64 = 10_000;
/// The default step, ms.
pub const DEFAULT_STEP_MS: u64 = 100;
/// The most faults (and, separately, requests) a scenario may schedule.
pub const MAX_EVENTS: usize = 10_000;
/// The default keep-alive period of the workload, s.
pub const DEFAULT_KEEPALIVE_EVERY_S: f64 = 1.0;
/// The default reaction bound, s.
pub const DEFAULT_REACTION_S: f64 = 2.0;
/// The default transformer bound, s.
pub const DEFAULT_TRANSFORMER_S: f64 = 60.0;
/// The default restart bound, s.
pub const DEFAULT_RESTART_S: f64 = 5.0;
/// The most panics one `panic` fault may inject.
pub const MAX_PANICS: u64 = 1_000;

/// The scenario's own root tables; every other root key belongs to the inline topology.
const SCENARIO_ROOTS: &[&str] = &["chaos", "workload", "faults", "bounds"];
const CHAOS_KEYS: &[&str] = &[
    "name",
    "description",
    "seed",
    "duration_s",
    "step_ms",
    "topology",
];
const WORKLOAD_KEYS: &[&str] = &["keepalive_every_s", "requests", "arrivals"];
const REQUEST_KEYS: &[&str] = &[
    "at_s",
    "id",
    "scope",
    "target_kw",
    "duration_s",
    "jitter_kw",
];
const BOUNDS_KEYS: &[&str] = &[
    "reaction_s",
    "transformer_s",
    "restart_s",
    "soc_tolerance_pct",
];
const FAULT_COMMON_KEYS: &[&str] = &["at_s", "for_s", "jitter_s", "kind"];
/// Each fault kind with its own keys.
const FAULT_KINDS: &[(&str, &[&str])] = &[
    ("kill", &["target"]),
    ("panic", &["device", "count"]),
    ("kill_segment", &["segment"]),
    ("exception", &["device"]),
    ("timeout", &["device"]),
    ("hang", &["device"]),
    ("garbage", &["device"]),
    ("islanding", &["voltage_pu", "frequency_hz"]),
    ("frequency", &["frequency_hz"]),
    ("ptp_drift", &["to_ms"]),
    ("clock_jump", &["offset_ms"]),
    ("clock_unsynchronised", &[]),
    ("over_temperature", &["inverter", "celsius"]),
    ("transformer_overload", &["segment", "extra_kw"]),
    ("keepalive_loss", &[]),
    ("ocpp_disconnect", &["charger"]),
    ("slow_peer", &["charger", "delay_ms"]),
];

/// A scenario, read and checked.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file as given (what the replay command names).
    pub file: String,
    /// Its name.
    pub name: String,
    /// What it is about.
    pub description: String,
    /// The default seed.
    pub seed: u64,
    /// Simulated time, s.
    pub duration_s: f64,
    /// The step between invariant checks, ms.
    pub step_ms: u64,
    /// The site.
    pub topology: Arc<Topology>,
    /// The workload.
    pub workload: Workload,
    /// Faults, in file order.
    pub faults: Vec<FaultPlan>,
    /// The invariants' bounds.
    pub bounds: Bounds,
}

/// Grid requests and keep-alives over time.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The keep-alive period, s (0: the grid controller sends none).
    pub keepalive_every_s: f64,
    /// Grid requests, in file order.
    pub requests: Vec<RequestPlan>,
    /// Vehicles arriving by token (`[workload.arrivals]`, [`crate::arrivals`]); None: only
    /// the topology's `[[vehicles]]`.
    pub arrivals: Option<crate::arrivals::ArrivalsPlan>,
}

/// A grid request the workload sends.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestPlan {
    /// When, s.
    pub at_s: f64,
    /// Its id.
    pub id: String,
    /// Where it applies.
    pub scope: Scope,
    /// Target, kW (negative: discharge).
    pub target_kw: f64,
    /// How long it holds, s.
    pub duration_s: f64,
    /// The seed moves the target by up to ± this, kW.
    pub jitter_kw: f64,
}

/// A fault over time.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// When it starts, s (before jitter).
    pub at_s: f64,
    /// The seed moves the start later by up to this, s.
    pub jitter_s: f64,
    /// How long it lasts, s (None: until the end).
    pub for_s: Option<f64>,
    /// What it is.
    pub kind: FaultKind,
    /// The line of its `[[faults]]` table.
    pub line: usize,
}

/// The fault injectors of the in-process mode.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Kill an actor (a path; `*` matches one path segment, the seed picks among matches).
    Kill {
        /// The path or pattern.
        target: String,
    },
    /// The device's next `count` calls panic inside the actor's handler.
    Panic {
        /// The device id.
        device: String,
        /// How many calls panic.
        count: u64,
    },
    /// Kill a segment's whole subtree (its supervisor).
    KillSegment {
        /// The segment.
        segment: String,
    },
    /// The device answers with an exception (Modbus-like: the request is refused).
    Exception {
        /// The device id.
        device: String,
    },
    /// The device does not answer (each call hangs, then fails).
    Timeout {
        /// The device id.
        device: String,
    },
    /// The device never answers: a call waits until the fault ends (then fails as
    /// unreachable); only the caller's own deadline ends it sooner.
    Hang {
        /// The device id.
        device: String,
    },
    /// The device answers with values that are not valid.
    Garbage {
        /// The device id.
        device: String,
    },
    /// The grid at the point of connection moves out of its bands.
    Islanding {
        /// Voltage, per unit.
        voltage_pu: f64,
        /// Frequency, Hz.
        frequency_hz: f64,
    },
    /// The grid's frequency moves to `frequency_hz` at nominal voltage (an excursion within
    /// the bands: the frequency response's test).
    Frequency {
        /// Frequency, Hz.
        frequency_hz: f64,
    },
    /// The PTP offset grows linearly from 0 to `to_ms` over the fault's duration.
    PtpDrift {
        /// The offset at the end, ms.
        to_ms: f64,
    },
    /// The PTP offset jumps to `offset_ms`.
    ClockJump {
        /// The offset, ms.
        offset_ms: f64,
    },
    /// The clock source loses its grandmaster: unsynchronised, no offset at all.
    ClockUnsynchronised,
    /// An inverter's cooling fails.
    OverTemperature {
        /// The inverter.
        inverter: String,
        /// Extra heat, °C.
        celsius: f64,
    },
    /// Uncontrolled load appears on a segment's transformer.
    TransformerOverload {
        /// The segment.
        segment: String,
        /// The extra load, kW.
        extra_kw: f64,
    },
    /// The grid controller's keep-alives stop.
    KeepAliveLoss,
    /// A charge point's OCPP connection drops (every call fails at once; the write that
    /// raced the drop lands with its answer lost; offline past OCPP 2.1's
    /// `maxOfflineDuration` the charger drops a discharge profile on its own).
    OcppDisconnect {
        /// The charger.
        charger: String,
    },
    /// A charge point answers every call after `delay_ms` (past the CSMS's call timeout the
    /// call fails while its write still lands).
    SlowPeer {
        /// The charger.
        charger: String,
        /// The round trip, ms.
        delay_ms: u64,
    },
}

impl FaultKind {
    /// The kind's name in the file.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Kill { .. } => "kill",
            FaultKind::Panic { .. } => "panic",
            FaultKind::KillSegment { .. } => "kill_segment",
            FaultKind::Exception { .. } => "exception",
            FaultKind::Timeout { .. } => "timeout",
            FaultKind::Hang { .. } => "hang",
            FaultKind::Garbage { .. } => "garbage",
            FaultKind::Islanding { .. } => "islanding",
            FaultKind::Frequency { .. } => "frequency",
            FaultKind::PtpDrift { .. } => "ptp_drift",
            FaultKind::ClockJump { .. } => "clock_jump",
            FaultKind::ClockUnsynchronised => "clock_unsynchronised",
            FaultKind::OverTemperature { .. } => "over_temperature",
            FaultKind::TransformerOverload { .. } => "transformer_overload",
            FaultKind::KeepAliveLoss => "keepalive_loss",
            FaultKind::OcppDisconnect { .. } => "ocpp_disconnect",
            FaultKind::SlowPeer { .. } => "slow_peer",
        }
    }

    /// A short description for the history and the report.
    pub fn describe(&self) -> String {
        match self {
            FaultKind::Kill { target } => format!("kill {target}"),
            FaultKind::Panic { device, count } => format!("panic in {device} ×{count}"),
            FaultKind::KillSegment { segment } => format!("kill segment {segment}"),
            FaultKind::Exception { device } => format!("exceptions from {device}"),
            FaultKind::Timeout { device } => format!("timeouts from {device}"),
            FaultKind::Hang { device } => format!("{device} hangs"),
            FaultKind::Garbage { device } => format!("garbage from {device}"),
            FaultKind::Islanding {
                voltage_pu,
                frequency_hz,
            } => format!("islanding ({voltage_pu} pu, {frequency_hz} Hz)"),
            FaultKind::Frequency { frequency_hz } => format!("grid frequency {frequency_hz} Hz"),
            FaultKind::PtpDrift { to_ms } => format!("PTP drift to {to_ms} ms"),
            FaultKind::ClockJump { offset_ms } => format!("clock jump {offset_ms} ms"),
            FaultKind::ClockUnsynchronised => "clock unsynchronised".to_owned(),
            FaultKind::OverTemperature { inverter, celsius } => {
                format!("{inverter} cooling fault +{celsius} °C")
            }
            FaultKind::TransformerOverload { segment, extra_kw } => {
                format!("{segment} overload +{extra_kw} kW")
            }
            FaultKind::KeepAliveLoss => "keep-alive loss".to_owned(),
            FaultKind::OcppDisconnect { charger } => format!("{charger} OCPP connection lost"),
            FaultKind::SlowPeer { charger, delay_ms } => {
                format!("{charger} answers after {delay_ms} ms")
            }
        }
    }
}

/// The invariants' bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// No discharge from a segment in ChargeOnly or Tripped after this, s.
    pub reaction_s: f64,
    /// No transformer above its limit for longer than this, s.
    pub transformer_s: f64,
    /// A crashed permanent actor runs again within this, s.
    pub restart_s: f64,
    /// How far below its minimum SoC a vehicle may read, %.
    pub soc_tolerance_pct: f64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            reaction_s: DEFAULT_REACTION_S,
            transformer_s: DEFAULT_TRANSFORMER_S,
            restart_s: DEFAULT_RESTART_S,
            soc_tolerance_pct: 0.0,
        }
    }
}

/// One problem in a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file.
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// The dotted field path, e.g. `faults[2].device`; empty for syntax errors.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a scenario, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioErrors {}

impl From<ConfigErrors> for ScenarioErrors {
    fn from(e: ConfigErrors) -> Self {
        ScenarioErrors(
            e.0.into_iter()
                .map(|e| ScenarioError {
                    file: e.file,
                    line: e.line,
                    column: e.column,
                    field: e.field,
                    message: e.message,
                })
                .collect(),
        )
    }
}

/// Read a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioErrors> {
    let file = path.display().to_string();
    let fail = |message: String| {
        ScenarioErrors(vec![ScenarioError {
            file: file.clone(),
            line: 0,
            column: 0,
            field: String::new(),
            message,
        }])
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    if meta.len() > MAX_SCENARIO_BYTES as u64 {
        return Err(fail(format!(
            "file is larger than the limit of {MAX_SCENARIO_BYTES} bytes"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&file, &text, &dir)
}

/// Read a scenario from `text`; `file` names it in errors and in the replay command, `dir`
/// is where a `topology` path is looked up.
pub fn parse(file: &str, text: &str, dir: &Path) -> Result<Scenario, ScenarioErrors> {
    let locator = Locator::new(file, text);
    if text.len() > MAX_SCENARIO_BYTES {
        return Err(locator.errors(vec![Problem::new(
            "",
            None,
            format!(
                "scenario is {} bytes, more than the limit of {MAX_SCENARIO_BYTES}",
                text.len()
            ),
        )]));
    }
    let document = DeTable::parse(text).map_err(|e| {
        locator.errors(vec![Problem::new(
            "",
            e.span().map(|s| s.start),
            e.message().to_owned(),
        )])
    })?;
    let root = document.get_ref();
    let mut r = Reader::default();
    let chaos = r.table(root, "chaos", CHAOS_KEYS, true);
    let name = r.string(&chaos, "name", false).unwrap_or_else(|| {
        Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.to_owned())
    });
    let description = r.string(&chaos, "description", false).unwrap_or_default();
    let seed = r.integer(&chaos, "seed", 1);
    let duration_s = r.number(&chaos, "duration_s", None);
    r.check(
        &chaos,
        "duration_s",
        duration_s > 0.0 && duration_s <= MAX_DURATION_S,
        || format!("must be within (0, {MAX_DURATION_S}] s, not {duration_s}"),
    );
    let step_ms = r.integer(&chaos, "step_ms", DEFAULT_STEP_MS);
    r.check(
        &chaos,
        "step_ms",
        (MIN_STEP_MS..=MAX_STEP_MS).contains(&step_ms),
        || format!("must be within {MIN_STEP_MS}..={MAX_STEP_MS} ms, not {step_ms}"),
    );
    let topology_path = r.string(&chaos, "topology", false);
    let has_inline = root
        .iter()
        .any(|(k, _)| !SCENARIO_ROOTS.contains(&k.get_ref().as_ref()));

    let workload_t = r.table(root, "workload", WORKLOAD_KEYS, false);
    let keepalive_every_s = r.number(
        &workload_t,
        "keepalive_every_s",
        Some(DEFAULT_KEEPALIVE_EVERY_S),
    );
    r.check(
        &workload_t,
        "keepalive_every_s",
        keepalive_every_s >= 0.0 && keepalive_every_s.is_finite(),
        || format!("must be 0 (no keep-alives) or a positive period, not {keepalive_every_s}"),
    );
    let mut requests = Vec::new();
    for (i, t) in r
        .array(&workload_t, "requests", REQUEST_KEYS)
        .into_iter()
        .enumerate()
    {
        let at_s = r.number(&t, "at_s", None);
        r.within(&t, "at_s", at_s, duration_s);
        let id = r
            .string(&t, "id", false)
            .unwrap_or_else(|| format!("req-{}", i + 1));
        let scope_text = r.string(&t, "scope", true).unwrap_or_default();
        let scope = match scope_text.split_once(':') {
            None if scope_text == "site" => Some(Scope::Site),
            Some(("segment", id)) => Some(Scope::Segment(id.to_owned())),
            Some(("substation", id)) => Some(Scope::Substation(id.to_owned())),
            _ => {
                r.check(&t, "scope", scope_text.is_empty(), || {
                    format!("expected \"site\", \"substation:<id>\" or \"segment:<id>\", found {scope_text:?}")
                });
                None
            }
        };
        let target_kw = r.number(&t, "target_kw", None);
        let duration = r.number(&t, "duration_s", None);
        r.check(&t, "duration_s", duration > 0.0, || {
            format!("must be positive, not {duration}")
        });
        let jitter_kw = r.number(&t, "jitter_kw", Some(0.0));
        r.check(&t, "jitter_kw", jitter_kw >= 0.0, || {
            format!("must not be negative, not {jitter_kw}")
        });
        requests.push((
            t.path.clone(),
            RequestPlan {
                at_s,
                id,
                scope: scope.unwrap_or(Scope::Site),
                target_kw,
                duration_s: duration,
                jitter_kw,
            },
        ));
    }
    let mut arrivals = arrivals::read(&mut r, &workload_t, dir, duration_s);
    let mut faults = Vec::new();
    let fault_tables = r.array_root(root, "faults");
    for t in fault_tables {
        let kind_name = r.string(&t, "kind", true).unwrap_or_default();
        let Some((_, own)) = FAULT_KINDS.iter().find(|(k, _)| *k == kind_name) else {
            if !kind_name.is_empty() {
                let kinds: Vec<&str> = FAULT_KINDS.iter().map(|(k, _)| *k).collect();
                r.check(&t, "kind", false, || {
                    format!(
                        "unknown fault kind {kind_name:?}; expected one of: {}",
                        kinds.join(", ")
                    )
                });
            }
            continue;
        };
        let keys: Vec<&str> = FAULT_COMMON_KEYS
            .iter()
            .chain(own.iter())
            .copied()
            .collect();
        r.unknown_keys(&t, &keys);
        let at_s = r.number(&t, "at_s", None);
        r.within(&t, "at_s", at_s, duration_s);
        let jitter_s = r.number(&t, "jitter_s", Some(0.0));
        r.check(&t, "jitter_s", jitter_s >= 0.0, || {
            format!("must not be negative, not {jitter_s}")
        });
        let for_s = r.optional_number(&t, "for_s");
        if let Some(f) = for_s {
            r.check(&t, "for_s", f > 0.0, || {
                format!("must be positive, not {f}")
            });
        }
        let kind = match kind_name.as_str() {
            "kill" => {
                let target = r.string(&t, "target", true).unwrap_or_default();
                r.check(
                    &t,
                    "target",
                    target.is_empty() || target.starts_with("node/") || target == "node",
                    || format!("an actor path starts with \"node/\", not {target:?}"),
                );
                FaultKind::Kill { target }
            }
            "panic" => {
                let device = r.string(&t, "device", true).unwrap_or_default();
                let count = r.integer(&t, "count", 1);
                r.check(&t, "count", (1..=MAX_PANICS).contains(&count), || {
                    format!("must be within 1..={MAX_PANICS}, not {count}")
                });
                FaultKind::Panic { device, count }
            }
            "kill_segment" => FaultKind::KillSegment {
                segment: r.string(&t, "segment", true).unwrap_or_default(),
            },
            "exception" => FaultKind::Exception {
                device: r.string(&t, "device", true).unwrap_or_default(),
            },
            "timeout" => FaultKind::Timeout {
                device: r.string(&t, "device", true).unwrap_or_default(),
            },
            "hang" => FaultKind::Hang {
                device: r.string(&t, "device", true).unwrap_or_default(),
            },
            "garbage" => FaultKind::Garbage {
                device: r.string(&t, "device", true).unwrap_or_default(),
            },
            "islanding" => FaultKind::Islanding {
                voltage_pu: r.number(&t, "voltage_pu", Some(0.0)),
                // Not given: the grid's nominal frequency, once the topology is read.
                frequency_hz: r.optional_number(&t, "frequency_hz").unwrap_or(f64::NAN),
            },
            "frequency" => FaultKind::Frequency {
                frequency_hz: r.number(&t, "frequency_hz", None),
            },
            "ptp_drift" => {
                let to_ms = r.number(&t, "to_ms", None);
                r.check(&t, "to_ms", to_ms >= 0.0, || {
                    format!("must not be negative, not {to_ms}")
                });
                r.check(&t, "for_s", for_s.is_some(), || {
                    "a drift needs `for_s`, the time it takes".to_owned()
                });
                FaultKind::PtpDrift { to_ms }
            }
            "clock_jump" => {
                let offset_ms = r.number(&t, "offset_ms", None);
                r.check(&t, "offset_ms", offset_ms >= 0.0, || {
                    format!("the monitor measures the offset's magnitude: must not be negative, not {offset_ms}")
                });
                FaultKind::ClockJump { offset_ms }
            }
            "clock_unsynchronised" => FaultKind::ClockUnsynchronised,
            "over_temperature" => {
                let inverter = r.string(&t, "inverter", true).unwrap_or_default();
                let celsius = r.number(&t, "celsius", None);
                r.check(&t, "celsius", celsius > 0.0 && celsius < 1000.0, || {
                    format!("must be within (0, 1000) °C, not {celsius}")
                });
                FaultKind::OverTemperature { inverter, celsius }
            }
            "transformer_overload" => {
                let segment = r.string(&t, "segment", true).unwrap_or_default();
                let extra_kw = r.number(&t, "extra_kw", None);
                r.check(&t, "extra_kw", extra_kw > 0.0, || {
                    format!("must be positive, not {extra_kw}")
                });
                FaultKind::TransformerOverload { segment, extra_kw }
            }
            "ocpp_disconnect" => FaultKind::OcppDisconnect {
                charger: r.string(&t, "charger", true).unwrap_or_default(),
            },
            "slow_peer" => {
                let charger = r.string(&t, "charger", true).unwrap_or_default();
                let delay_ms = r.integer(&t, "delay_ms", 0);
                let max_ms = crate::devices::MAX_PEER_DELAY.as_millis() as u64;
                r.check(&t, "delay_ms", (1..=max_ms).contains(&delay_ms), || {
                    format!("the round trip in ms: must be within 1..={max_ms}, not {delay_ms}")
                });
                FaultKind::SlowPeer { charger, delay_ms }
            }
            _ => FaultKind::KeepAliveLoss,
        };
        faults.push((
            t.path.clone(),
            t.at,
            FaultPlan {
                at_s,
                jitter_s,
                for_s,
                kind,
                line: locator.position(t.at).0,
            },
        ));
    }
    if faults.len() > MAX_EVENTS || requests.len() > MAX_EVENTS {
        r.problems.push(Problem::new(
            "faults",
            None,
            format!("at most {MAX_EVENTS} faults and {MAX_EVENTS} requests"),
        ));
    }
    let bounds_t = r.table(root, "bounds", BOUNDS_KEYS, false);
    let defaults = Bounds::default();
    let bounds = Bounds {
        reaction_s: r.number(&bounds_t, "reaction_s", Some(defaults.reaction_s)),
        transformer_s: r.number(&bounds_t, "transformer_s", Some(defaults.transformer_s)),
        restart_s: r.number(&bounds_t, "restart_s", Some(defaults.restart_s)),
        soc_tolerance_pct: r.number(
            &bounds_t,
            "soc_tolerance_pct",
            Some(defaults.soc_tolerance_pct),
        ),
    };
    for (key, v) in [
        ("reaction_s", bounds.reaction_s),
        ("transformer_s", bounds.transformer_s),
        ("restart_s", bounds.restart_s),
        ("soc_tolerance_pct", bounds.soc_tolerance_pct),
    ] {
        r.check(&bounds_t, key, v >= 0.0, || {
            format!("must not be negative, not {v}")
        });
    }

    // The topology: inline (the file with the scenario's tables blanked, so that its errors
    // keep their lines) or from its own file.
    let topology = match (&topology_path, has_inline) {
        (Some(_), true) => {
            // With a topology file, every other root key is a mistake: name each.
            for (key, _) in root.iter() {
                let name: &str = key.get_ref();
                if !SCENARIO_ROOTS.contains(&name) {
                    r.problem(
                        name,
                        key.span().start,
                        format!(
                            "unknown table `{name}`; expected one of: {} (the topology comes from `chaos.topology`)",
                            SCENARIO_ROOTS.join(", ")
                        ),
                    );
                }
            }
            None
        }
        (Some(p), false) => {
            let path = dir.join(p);
            match config::load(&path) {
                Ok(t) => Some(t),
                Err(e) => {
                    let mut own = locator.errors(std::mem::take(&mut r.problems));
                    own.0.extend(ScenarioErrors::from(e).0);
                    return Err(own);
                }
            }
        }
        (None, _) => match config::parse(file, &mask_scenario_tables(text)) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut own = locator.errors(std::mem::take(&mut r.problems));
                own.0.extend(ScenarioErrors::from(e).0);
                own.0.sort_by_key(|e| (e.line, e.column));
                return Err(own);
            }
        },
    };
    // References into the topology.
    if let (Some(t), Some(a)) = (&topology, arrivals.as_mut()) {
        arrivals::chargers(a, t, &mut r.problems);
    }
    if let Some(t) = &topology {
        let devices: HashSet<&str> = t
            .segments()
            .flat_map(|(_, s)| {
                s.chargers
                    .iter()
                    .map(|c| c.id.as_str())
                    .chain(s.inverters.iter().map(|i| i.id.as_str()))
                    .chain(s.meters.iter().map(|m| m.id.as_str()))
            })
            .collect();
        // Trip relays are devices too (`<segment>/trip`), for faults of their I/O module.
        let relays: HashSet<String> = t
            .segments()
            .filter(|(_, s)| s.trip.is_some())
            .map(|(_, s)| gridvisor_actors::device::relay_id(&s.id))
            .collect();
        let inverters: HashSet<&str> = t
            .segments()
            .flat_map(|(_, s)| s.inverters.iter().map(|i| i.id.as_str()))
            .collect();
        let chargers: HashSet<&str> = t
            .segments()
            .flat_map(|(_, s)| s.chargers.iter().map(|c| c.id.as_str()))
            .collect();
        for (path, at, f) in &faults {
            let (key, id, known) = match &f.kind {
                FaultKind::Panic { device, .. }
                | FaultKind::Exception { device }
                | FaultKind::Timeout { device }
                | FaultKind::Hang { device }
                | FaultKind::Garbage { device } => {
                    let known = devices.contains(device.as_str()) || relays.contains(device);
                    ("device", device, known)
                }
                FaultKind::KillSegment { segment }
                | FaultKind::TransformerOverload { segment, .. } => {
                    ("segment", segment, t.segment(segment).is_some())
                }
                FaultKind::OverTemperature { inverter, .. } => {
                    ("inverter", inverter, inverters.contains(inverter.as_str()))
                }
                FaultKind::OcppDisconnect { charger } | FaultKind::SlowPeer { charger, .. } => {
                    ("charger", charger, chargers.contains(charger.as_str()))
                }
                _ => continue,
            };
            if !known && !id.is_empty() {
                let field = format!("{path}.{key}");
                let at = r.sources.get(&field).copied().unwrap_or(*at);
                r.problems.push(Problem::new(
                    &field,
                    Some(at),
                    format!("no {key} named {id:?} in the topology"),
                ));
            }
        }
        for (path, q) in &requests {
            let known = match &q.scope {
                Scope::Site => true,
                Scope::Segment(id) => t.segment(id).is_some(),
                Scope::Substation(id) => t.substations.iter().any(|s| &s.id == id),
            };
            if !known {
                let at = r.sources.get(&format!("{path}.scope")).copied();
                r.problems.push(Problem::new(
                    &format!("{path}.scope"),
                    at,
                    format!("{:?} names nothing in the topology", q.scope),
                ));
            }
        }
        let networked = t.segments().any(|(_, s)| {
            s.inverters.iter().any(|i| i.modbus.is_some())
                || s.meters.iter().any(|m| m.modbus.is_some())
        });
        for (present, what) in [
            (t.ocpp.is_some(), "[ocpp] (chargers over the network)"),
            (t.mqtt.is_some(), "[mqtt] (a broker on the network)"),
            (networked, "Modbus endpoints (devices on the network)"),
        ] {
            if present {
                r.problems.push(Problem::new(
                    "",
                    None,
                    format!("the in-process mode simulates every device: a topology with {what} needs the multi-process mode"),
                ));
            }
        }
    }
    if !r.problems.is_empty() {
        return Err(locator.errors(r.problems));
    }
    let Some(topology) = topology else {
        return Err(locator.errors(vec![Problem::new("", None, "no topology".to_owned())]));
    };
    for (_, _, f) in &mut faults {
        if let FaultKind::Islanding { frequency_hz, .. } = &mut f.kind {
            if frequency_hz.is_nan() {
                *frequency_hz = topology.safety.grid().hz();
            }
        }
    }
    Ok(Scenario {
        file: file.to_owned(),
        name,
        description,
        seed,
        duration_s,
        step_ms,
        topology: Arc::new(topology),
        workload: Workload {
            keepalive_every_s,
            requests: requests.into_iter().map(|(_, q)| q).collect(),
            arrivals,
        },
        faults: faults.into_iter().map(|(_, _, f)| f).collect(),
        bounds,
    })
}

/// The text with the scenario's own tables replaced by empty lines (line numbers kept), for
/// the topology's parser.
fn mask_scenario_tables(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut masking = false;
    for line in text.split_inclusive('\n') {
        let head = line.trim_start();
        if head.starts_with('[') {
            let name = head.trim_start_matches('[').trim_start();
            let root = name
                .split(|c: char| c == '.' || c == ']' || c.is_whitespace())
                .next()
                .unwrap_or("");
            masking = SCENARIO_ROOTS.contains(&root);
        }
        if masking {
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Problem {
    field: String,
    offset: Option<usize>,
    message: String,
}

impl Problem {
    fn new(field: &str, offset: Option<usize>, message: String) -> Self {
        Problem {
            field: field.to_owned(),
            offset,
            message,
        }
    }
}

/// Byte offsets → 1-based lines and character columns.
struct Locator<'t> {
    file: &'t str,
    text: &'t str,
    line_starts: Vec<usize>,
}

impl<'t> Locator<'t> {
    fn new(file: &'t str, text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Locator {
            file,
            text,
            line_starts,
        }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line.max(1), column + 1)
    }

    fn errors(&self, mut problems: Vec<Problem>) -> ScenarioErrors {
        problems.sort_by_key(|p| p.offset);
        ScenarioErrors(
            problems
                .into_iter()
                .map(|p| {
                    let (line, column) = p.offset.map_or((0, 0), |o| self.position(o));
                    ScenarioError {
                        file: self.file.to_owned(),
                        line,
                        column,
                        field: p.field,
                        message: p.message,
                    }
                })
                .collect(),
        )
    }
}

type Node<'i> = Spanned<DeValue<'i>>;

/// A table being read (None: absent or broken; every key then reads as its default).
struct Tbl<'a, 'i> {
    path: String,
    at: usize,
    table: Option<&'a DeTable<'i>>,
}

#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
    /// Where each field was read, by path.
    sources: HashMap<String, usize>,
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Reader {
    fn problem(&mut self, field: &str, offset: usize, message: String) {
        self.problems
            .push(Problem::new(field, Some(offset), message));
    }

    fn mismatch(&mut self, field: &str, node: &Node<'_>, expected: &str) {
        let message = format!("expected {expected}, found {}", kind(node.get_ref()));
        self.problem(field, node.span().start, message);
    }

    fn unknown_keys(&mut self, t: &Tbl<'_, '_>, keys: &[&str]) {
        let Some(table) = t.table else { return };
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if !keys.contains(&name) {
                let message = format!("unknown key `{name}`; expected one of: {}", keys.join(", "));
                self.problem(&join(&t.path, name), key.span().start, message);
            }
        }
    }

    fn open<'a, 'i>(
        &mut self,
        path: String,
        node: &'a Node<'i>,
        keys: Option<&[&str]>,
    ) -> Tbl<'a, 'i> {
        let at = node.span().start;
        match node.get_ref() {
            DeValue::Table(table) => {
                let t = Tbl {
                    path,
                    at,
                    table: Some(table),
                };
                if let Some(keys) = keys {
                    self.unknown_keys(&t, keys);
                }
                t
            }
            _ => {
                self.mismatch(&path, node, "a table");
                Tbl {
                    path,
                    at,
                    table: None,
                }
            }
        }
    }

    /// A root table.
    fn table<'a, 'i>(
        &mut self,
        root: &'a DeTable<'i>,
        key: &str,
        keys: &[&str],
        required: bool,
    ) -> Tbl<'a, 'i> {
        match root.get(key) {
            Some(node) => self.open(key.to_owned(), node, Some(keys)),
            None => {
                if required {
                    self.problems.push(Problem::new(
                        key,
                        Some(0),
                        format!("missing required table [{key}]"),
                    ));
                }
                Tbl {
                    path: key.to_owned(),
                    at: 0,
                    table: None,
                }
            }
        }
    }

    fn tables_of<'a, 'i>(
        &mut self,
        path: &str,
        node: &'a Node<'i>,
        keys: Option<&[&str]>,
    ) -> Vec<Tbl<'a, 'i>> {
        match node.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| self.open(format!("{path}[{i}]"), n, keys))
                .collect(),
            _ => {
                self.mismatch(path, node, "an array of tables");
                Vec::new()
            }
        }
    }

    fn array<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str, keys: &[&str]) -> Vec<Tbl<'a, 'i>> {
        let path = join(&t.path, key);
        match t.table.and_then(|table| table.get(key)) {
            Some(node) => self.tables_of(&path, node, Some(keys)),
            None => Vec::new(),
        }
    }

    fn array_root<'a, 'i>(&mut self, root: &'a DeTable<'i>, key: &str) -> Vec<Tbl<'a, 'i>> {
        match root.get(key) {
            Some(node) => self.tables_of(key, node, None),
            None => Vec::new(),
        }
    }

    fn lookup<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str) -> (String, Option<&'a Node<'i>>) {
        let path = join(&t.path, key);
        let node = t.table.and_then(|table| table.get(key));
        if let Some(node) = node {
            self.sources.insert(path.clone(), node.span().start);
        }
        (path, node)
    }

    /// Record a problem with `key` of `t` unless `ok`.
    fn check(&mut self, t: &Tbl<'_, '_>, key: &str, ok: bool, message: impl FnOnce() -> String) {
        if ok || t.table.is_none() {
            return;
        }
        let path = join(&t.path, key);
        if self.problems.iter().any(|p| p.field == path) {
            // Its value is already reported (a wrong type, a missing key).
            return;
        }
        let at = self.sources.get(&path).copied().unwrap_or(t.at);
        self.problem(&path, at, message());
    }

    /// `at_s` within the run.
    fn within(&mut self, t: &Tbl<'_, '_>, key: &str, at_s: f64, duration_s: f64) {
        let ok = at_s >= 0.0 && (!duration_s.is_finite() || at_s < duration_s);
        self.check(t, key, ok, || {
            format!("must be within [0, duration_s = {duration_s}) s, not {at_s}")
        });
    }

    fn string(&mut self, t: &Tbl<'_, '_>, key: &str, required: bool) -> Option<String> {
        match self.lookup(t, key) {
            (_, Some(node)) if matches!(node.get_ref(), DeValue::String(_)) => {
                node.get_ref().as_str().map(str::to_owned)
            }
            (path, Some(node)) => {
                self.mismatch(&path, node, "a string");
                None
            }
            (path, None) => {
                if required && t.table.is_some() {
                    self.problem(&path, t.at, format!("missing required key `{key}`"));
                }
                None
            }
        }
    }

    fn optional_number(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<f64> {
        let (path, node) = self.lookup(t, key);
        let node = node?;
        let parsed = match node.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .map(|v| v as f64)
                .map_err(|_| format!("integer {i} does not fit 64 bits")),
            DeValue::Float(f) => f
                .as_str()
                .parse::<f64>()
                .map_err(|_| format!("invalid float {f}")),
            _ => {
                self.mismatch(&path, node, "a number");
                return Some(f64::NAN);
            }
        };
        match parsed {
            Ok(v) if v.is_finite() => Some(v),
            Ok(v) => {
                self.problem(
                    &path,
                    node.span().start,
                    format!("must be a finite number, not {v}"),
                );
                Some(f64::NAN)
            }
            Err(message) => {
                self.problem(&path, node.span().start, message);
                Some(f64::NAN)
            }
        }
    }

    /// A number; `default` when absent, and absence is an error without one.
    fn number(&mut self, t: &Tbl<'_, '_>, key: &str, default: Option<f64>) -> f64 {
        match self.optional_number(t, key) {
            Some(v) => v,
            None => match default {
                Some(v) => v,
                None => {
                    if t.table.is_some() {
                        self.problem(
                            &join(&t.path, key),
                            t.at,
                            format!("missing required key `{key}`"),
                        );
                    }
                    f64::NAN
                }
            },
        }
    }

    fn integer(&mut self, t: &Tbl<'_, '_>, key: &str, default: u64) -> u64 {
        match self.lookup(t, key) {
            (_, None) => default,
            (path, Some(node)) => match node.get_ref() {
                DeValue::Integer(i) => {
                    u64::from_str_radix(i.as_str(), i.radix()).unwrap_or_else(|_| {
                        let message = format!("expected a non-negative 64-bit integer, found {i}");
                        self.problem(&path, node.span().start, message);
                        default
                    })
                }
                _ => {
                    self.mismatch(&path, node, "an integer");
                    default
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = r#"
[site]
id = "t"
cycle_ms = 500
[[substations]]
id = "sub-1"
[[substations.segments]]
id = "tx-1"
rated_kw = 100
[[substations.segments.chargers]]
id = "evse-1"
max_kw = 11
bidirectional = true
[[substations.segments.inverters]]
id = "inv-1"
max_kw = 20
[[substations.segments.meters]]
id = "m-1"
"#;

    fn parse_str(text: &str) -> Result<Scenario, ScenarioErrors> {
        parse("s.toml", text, Path::new("."))
    }

    #[test]
    fn a_full_scenario_reads() {
        let text = format!(
            "[chaos]\nseed = 7\nduration_s = 60\n{SITE}\n[workload]\nkeepalive_every_s = 2\n[[workload.requests]]\nat_s = 1\nscope = \"segment:tx-1\"\ntarget_kw = -5\nduration_s = 30\n[[faults]]\nat_s = 10\nfor_s = 5\nkind = \"timeout\"\ndevice = \"m-1\"\n[[faults]]\nat_s = 20\nkind = \"kill\"\ntarget = \"node/segments/tx-1/*\"\n[bounds]\nreaction_s = 1.5\n"
        );
        let s = parse_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name, "s");
        assert_eq!(s.seed, 7);
        assert_eq!(s.step_ms, DEFAULT_STEP_MS);
        assert_eq!(s.workload.requests[0].scope, Scope::Segment("tx-1".into()));
        assert_eq!(s.workload.requests[0].id, "req-1");
        assert_eq!(s.faults.len(), 2);
        assert_eq!(s.faults[0].for_s, Some(5.0));
        assert_eq!(
            s.faults[1].kind,
            FaultKind::Kill {
                target: "node/segments/tx-1/*".into()
            }
        );
        assert_eq!(s.bounds.reaction_s, 1.5);
        assert_eq!(s.bounds.restart_s, DEFAULT_RESTART_S);
        assert_eq!(s.topology.segments().count(), 1);
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let text = format!(
            "[chaos]\nduration_s = 60\n{SITE}\n[[faults]]\nat_s = 10\nkind = \"timeout\"\ndevice = \"nope\"\n[[faults]]\nat_s = 99\nkind = \"explode\"\n[bounds]\nrestart_s = -1\n"
        );
        let e = parse_str(&text).unwrap_err();
        let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
        let find = |field: &str| {
            e.0.iter()
                .find(|x| x.field == field)
                .unwrap_or_else(|| panic!("no error for {field}: {lines:?}"))
                .clone()
        };
        let device = find("faults[0].device");
        assert!(
            device.message.contains("no device named \"nope\""),
            "{device}"
        );
        assert_eq!(device.file, "s.toml");
        assert!(device.line > 20, "{device}");
        assert!(find("faults[1].kind")
            .message
            .contains("unknown fault kind"));
        let restart = find("bounds.restart_s");
        assert_eq!(
            text.lines().nth(restart.line - 1).unwrap(),
            "restart_s = -1",
            "{restart}"
        );
    }

    #[test]
    fn ocpp_faults_name_a_charger_and_a_bounded_delay() {
        let text = format!(
            "[chaos]\nduration_s = 60\n{SITE}\n[[faults]]\nat_s = 1\nkind = \"ocpp_disconnect\"\ncharger = \"evse-9\"\n[[faults]]\nat_s = 2\nkind = \"slow_peer\"\ncharger = \"evse-1\"\ndelay_ms = 600000\n[[faults]]\nat_s = 3\nkind = \"slow_peer\"\ncharger = \"evse-1\"\n"
        );
        let e = parse_str(&text).unwrap_err();
        let has = |field: &str, what: &str| {
            assert!(
                e.0.iter()
                    .any(|x| x.field == field && x.message.contains(what)),
                "no {field}: {what} in {e}"
            )
        };
        has("faults[0].charger", "no charger named \"evse-9\"");
        has("faults[1].delay_ms", "within 1..=60000, not 600000");
        has("faults[2].delay_ms", "not 0");
        let ok = format!(
            "[chaos]\nduration_s = 60\n{SITE}\n[[faults]]\nat_s = 2\nkind = \"slow_peer\"\ncharger = \"evse-1\"\ndelay_ms = 900\n"
        );
        let s = parse_str(&ok).unwrap();
        assert_eq!(
            s.faults[0].kind,
            FaultKind::SlowPeer {
                charger: "evse-1".into(),
                delay_ms: 900
            }
        );
    }

    #[test]
    fn topology_errors_keep_their_lines_and_missing_things_are_named() {
        let text = "[chaos]\nduration_s = 60\n[[faults]]\nat_s = 1\nkind = \"keepalive_loss\"\n[site]\nid = \"t\"\ncycle_ms = 5\n";
        let e = parse_str(text).unwrap_err();
        let cycle =
            e.0.iter()
                .find(|x| x.field == "site.cycle_ms")
                .unwrap_or_else(|| panic!("{e}"));
        assert_eq!(cycle.line, 8, "{cycle}");
        let e = parse_str(&format!("[chaos]\n{SITE}")).unwrap_err();
        assert!(
            e.0.iter()
                .any(|x| x.field == "chaos.duration_s" && x.message.contains("missing")),
            "{e}"
        );
        let e = parse_str(&format!("[chaos]\nduration_s = 10\n{SITE}\n[[faults]]\nat_s = 1\nkind = \"kill\"\ntarget = \"x\"\nbogus = 1\n")).unwrap_err();
        assert!(e.0.iter().any(|x| x.field == "faults[0].target"), "{e}");
        assert!(e.0.iter().any(|x| x.field == "faults[0].bogus"), "{e}");
        let e = parse_str("[chaos\n").unwrap_err();
        assert_eq!(e.0[0].line, 1, "{e}");
    }

    #[test]
    fn a_topology_with_network_devices_is_refused() {
        let text =
            format!("[chaos]\nduration_s = 10\n{SITE}\n[mqtt]\nbroker = \"127.0.0.1:1883\"\n");
        let e = parse_str(&text).unwrap_err();
        assert!(
            e.to_string().contains("[mqtt]") && e.to_string().contains("multi-process"),
            "{e}"
        );
    }

    #[test]
    fn a_topology_file_is_read_relative_to_the_scenario() {
        let dir =
            std::env::temp_dir().join(format!("gridvisor-chaos-scenario-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("site.toml"), SITE).unwrap();
        std::fs::write(
            dir.join("s.toml"),
            "[chaos]\nduration_s = 5\ntopology = \"site.toml\"\n",
        )
        .unwrap();
        let s = load(&dir.join("s.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.topology.site.id, "t");
        std::fs::write(
            dir.join("bad.toml"),
            "[chaos]\nduration_s = 5\ntopology = \"missing.toml\"\n",
        )
        .unwrap();
        let e = load(&dir.join("bad.toml")).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
        std::fs::write(
            dir.join("typo.toml"),
            "[chaos]\nduration_s = 5\ntopology = \"site.toml\"\n[bound]\nrestart_s = 1\n",
        )
        .unwrap();
        let e = load(&dir.join("typo.toml")).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!((e.0[0].line, e.0[0].field.as_str()), (4, "bound"), "{e}");
        assert!(e.0[0].message.contains("unknown table"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
