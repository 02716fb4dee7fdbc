//! The invariants, checked on every step of a run.
//!
//! The runner turns the simulated world into a [`Sample`] every step (the truth: device
//! powers and batteries from the simulation, the transformer's hot spot from an independent
//! thermal model fed with the true load, the devices' own records of applied keys, the
//! durable acknowledgement records, the registry's view of the actors). The checkers here
//! only look at samples, so each can be tested alone against a hand-made history that breaks
//! it (a checker that cannot fail is worth nothing).
//!
//! Each checker reports the first violation of each episode (a segment discharging too
//! long after it was restricted is one violation, not one per step), its worst margin over
//! the run, and whether the run exercised it at all.

use std::collections::{BTreeMap, BTreeSet};

use gridvisor_actors::setpoint::SetpointKey;
use serde::Serialize;

use crate::scenario::Bounds;

/// Below this magnitude a device is not discharging, kW (rounding, ramps ending).
pub const DISCHARGE_EPS_KW: f64 = 0.01;
/// A transformer within this of its limit exercised the transformer invariant, °C.
pub const EXERCISE_BAND_C: f64 = 5.0;
/// Safe-state severity from which no discharge is allowed (ChargeOnly).
pub const CHARGE_ONLY_SEVERITY: u8 = 2;
/// Every responsive device of an islanded segment holds a setpoint that exports nothing
/// within this of the segment's reaction, simulated ms (issue 19: no device stalls the
/// safety path; [`ResponsiveStopOnIslanding`]).
pub const ISLANDING_COMMAND_BOUND_MS: u64 = 100;

/// The state of the world at one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Simulated time, ms.
    pub t_ms: u64,
    /// Segments, by id.
    pub segments: Vec<SegmentSample>,
    /// Plugged vehicles, by id.
    pub vehicles: Vec<VehicleSample>,
    /// Chargers, by id.
    pub chargers: Vec<ChargerSample>,
    /// Permanent actors that are not running now (paths, sorted).
    pub down: Vec<String>,
    /// Permanent actors running now as a newer incarnation than at the last step without
    /// having been seen down: restarted within one step (paths, sorted).
    pub restarted: Vec<String>,
    /// The true grid at the point of connection is dead: beyond the fast trip limits of its
    /// grid ([`grid_dead_at`]), where export must cease.
    pub grid_dead: bool,
    /// Devices (chargers, inverters) exporting now by the truth (power below
    /// -[`DISCHARGE_EPS_KW`]), by id.
    pub exporting: Vec<ExportSample>,
    /// Segments whose trip relay is open now by the truth (their devices are cut from the
    /// grid), sorted.
    pub relays_open: Vec<String>,
    /// The devices the safety path commands (chargers and inverters), by id.
    pub outputs: Vec<OutputSample>,
    /// The true grid frequency at the point of connection, Hz.
    pub frequency_hz: f64,
}

/// One device exporting at one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportSample {
    /// Its id.
    pub id: String,
    /// Its segment.
    pub segment: String,
    /// How much it exports, kW (magnitude).
    pub kw: f64,
}

/// One device the safety path commands, at one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputSample {
    /// Its id.
    pub id: String,
    /// Its segment.
    pub segment: String,
    /// The setpoint the device holds (its own record), kW (negative: export).
    pub setpoint_kw: f64,
    /// It answers promptly: healthy, without an injected delay or panic. A device that
    /// hangs, times out, is disconnected, refuses, sends garbage or answers slowly is not.
    pub responsive: bool,
}

/// Whether a grid reading is beyond IEEE 1547-2018's fast trip limits (category II
/// defaults): voltage under 0.45 or over 1.20 per unit, frequency under 56.5 or over 62 Hz
/// (each with a 160 ms clearing time). A reading that is not a number counts as dead.
pub fn grid_dead(voltage_pu: f64, frequency_hz: f64) -> bool {
    grid_dead_at(60.0, voltage_pu, frequency_hz)
}

/// The fast (stage 2) frequency trip limits of a grid, Hz: IEEE 1547-2018 at 60 Hz (56.5 and
/// 62 Hz), EN 50549-1 as commonly set at 50 Hz (47 and 52 Hz). Written out here rather than
/// taken from the node's configuration: the checker judges the truth on its own.
pub fn fast_frequency_limits(nominal_hz: f64) -> (f64, f64) {
    if nominal_hz < 55.0 {
        (47.0, 52.0)
    } else {
        (56.5, 62.0)
    }
}

/// [`grid_dead`] on a grid of `nominal_hz` (50 or 60): voltage under 0.45 or over 1.20 per
/// unit, or frequency beyond [`fast_frequency_limits`]. A reading that is not a number
/// counts as dead.
pub fn grid_dead_at(nominal_hz: f64, voltage_pu: f64, frequency_hz: f64) -> bool {
    let (lo, hi) = fast_frequency_limits(nominal_hz);
    let within = (0.45..=1.20).contains(&voltage_pu) && (lo..=hi).contains(&frequency_hz);
    // A NaN is in no range, so a reading that is not a number is dead too.
    !within
}

/// One segment at one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentSample {
    /// Its id.
    pub id: String,
    /// Safe-state severity (0 Normal, 1 Limited, 2 ChargeOnly, 3 Tripped).
    pub level: u8,
    /// The cap when Limited, kW.
    pub cap_kw: Option<f64>,
    /// True power of its devices (chargers and inverters), kW (negative: export).
    pub power_kw: f64,
    /// True discharge of its devices (sum of the discharging ones, magnitude), kW.
    pub discharge_kw: f64,
    /// What the node's meter actor last measured, kW.
    pub metered_kw: f64,
    /// The transformer's true load (devices, base load, injected load), kW.
    pub load_kw: f64,
    /// The transformer's rating, kW.
    pub rated_kw: f64,
    /// Hot spot of the independent thermal model, °C.
    pub hot_spot_c: f64,
    /// The transformer's limit, °C.
    pub limit_c: f64,
    /// When the segment entered its current level (the node's transition), ms.
    pub level_since_ms: u64,
    /// The frequency response in the node's last batch for it, kW (> 0 more charge).
    pub droop_kw: f64,
    /// Rated power of its bidirectional chargers whose vehicle's true SoC is between its
    /// floor and full (what a frequency response can use), kW.
    pub v2g_kw: f64,
    /// What those chargers' setpoints leave to their ratings, kW: `(up, down)`, more charge
    /// and more discharge (magnitudes).
    pub v2g_room_kw: (f64, f64),
}

/// One plugged vehicle at one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VehicleSample {
    /// Its id.
    pub id: String,
    /// True state of charge, %.
    pub soc_pct: f64,
    /// What discharging must not go below: its minimum SoC, or its SoC on arrival if that
    /// was lower, %.
    pub floor_pct: f64,
}

/// One charger at one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChargerSample {
    /// Its id.
    pub id: String,
    /// The newest key the device applied (its own record).
    pub applied: Option<SetpointKey>,
    /// The newest key acknowledged durably for it (the segment's applied record).
    pub acked: Option<SetpointKey>,
    /// Writes the device received with a key older than one it had applied.
    pub older_writes: u64,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// The invariant's name.
    pub invariant: &'static str,
    /// When, ms.
    pub t_ms: u64,
    /// What broke it (a segment, vehicle, charger or actor path).
    pub subject: String,
    /// What happened.
    pub message: String,
}

/// An invariant's verdict over a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Its name.
    pub name: &'static str,
    /// What it says, with its bound.
    pub statement: String,
    /// No violation.
    pub held: bool,
    /// The run came close enough to test it.
    pub exercised: bool,
    /// The smallest margin seen (None: nothing to measure).
    pub worst_margin: Option<f64>,
    /// The margin's unit.
    pub unit: &'static str,
    /// Violations (first of each episode).
    pub violations: usize,
    /// The first violation.
    pub first: Option<Violation>,
    /// What the margin means.
    pub note: String,
}

/// An invariant checked step by step.
pub trait Checker {
    /// Check one step; returns the violations that begin now.
    fn step(&mut self, s: &Sample) -> Vec<Violation>;
    /// The verdict so far.
    fn summary(&self) -> Summary;
}

/// Violations seen by a checker: how many, and the first.
#[derive(Debug, Default, Clone)]
struct Seen {
    count: usize,
    first: Option<Violation>,
}

impl Seen {
    fn add(&mut self, v: &Violation) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(v.clone());
        }
    }
}

fn ms_to_s(ms: u64) -> f64 {
    ms as f64 / 1_000.0
}

/// No discharge from a segment in ChargeOnly or Tripped after the reaction bound.
#[derive(Debug)]
pub struct NoDischargeWhenRestricted {
    bound_ms: u64,
    /// Per segment: (restricted since, violated in this episode, discharging at the last step).
    state: BTreeMap<String, (Option<u64>, bool, bool)>,
    longest_ms: Option<u64>,
    exercised: bool,
    seen: Seen,
}

impl NoDischargeWhenRestricted {
    /// With the reaction bound, s.
    pub fn new(reaction_s: f64) -> Self {
        NoDischargeWhenRestricted {
            bound_ms: (reaction_s * 1_000.0).round() as u64,
            state: BTreeMap::new(),
            longest_ms: None,
            exercised: false,
            seen: Seen::default(),
        }
    }
}

impl Checker for NoDischargeWhenRestricted {
    fn step(&mut self, s: &Sample) -> Vec<Violation> {
        let mut out = Vec::new();
        for seg in &s.segments {
            let (since, violated, was_discharging) = self
                .state
                .entry(seg.id.clone())
                .or_insert((None, false, false));
            let discharging = seg.discharge_kw > DISCHARGE_EPS_KW;
            if seg.level >= CHARGE_ONLY_SEVERITY {
                if since.is_none() {
                    *since = Some(s.t_ms);
                    // Restricted while discharging: the reaction is being tested.
                    self.exercised |= discharging || *was_discharging;
                }
                let start = since.unwrap_or(s.t_ms);
                if discharging {
                    let lasted = s.t_ms - start;
                    self.longest_ms = Some(self.longest_ms.map_or(lasted, |l| l.max(lasted)));
                    if lasted > self.bound_ms && !*violated {
                        *violated = true;
                        let v = Violation {
                            invariant: "no_discharge_when_restricted",
                            t_ms: s.t_ms,
                            subject: seg.id.clone(),
                            message: format!(
                                "segment {} still discharges {:.3} kW {:.3} s after it entered level {} (bound {:.3} s)",
                                seg.id,
                                seg.discharge_kw,
                                ms_to_s(lasted),
                                seg.level,
                                ms_to_s(self.bound_ms)
                            ),
                        };
                        self.seen.add(&v);
                        out.push(v);
                    }
                }
            } else {
                *since = None;
                *violated = false;
            }
            *was_discharging = discharging;
        }
        out
    }

    fn summary(&self) -> Summary {
        Summary {
            name: "no_discharge_when_restricted",
            statement: format!(
                "no discharge from a segment in ChargeOnly or Tripped after {:.3} s",
                ms_to_s(self.bound_ms)
            ),
            held: self.seen.count == 0,
            exercised: self.exercised,
            worst_margin: Some(ms_to_s(self.bound_ms) - self.longest_ms.map_or(0.0, ms_to_s)),
            unit: "s",
            violations: self.seen.count,
            first: self.seen.first.clone(),
            note: "bound minus the longest discharge seen after a restriction began".to_owned(),
        }
    }
}

/// No discharge into a dead grid (anti-islanding): once the true grid is beyond the fast trip
/// limits, no segment discharges after the reaction bound, for as long as it stays dead,
/// whatever the node's own view of it.
#[derive(Debug)]
pub struct NoDischargeIntoDeadGrid {
    bound_ms: u64,
    dead_since: Option<u64>,
    /// Segments that already violated in this dead episode.
    violated: BTreeSet<String>,
    longest_ms: Option<u64>,
    exercised: bool,
    seen: Seen,
}

impl NoDischargeIntoDeadGrid {
    /// With the reaction bound, s.
    pub fn new(reaction_s: f64) -> Self {
        NoDischargeIntoDeadGrid {
            bound_ms: (reaction_s * 1_000.0).round() as u64,
            dead_since: None,
            violated: BTreeSet::new(),
            longest_ms: None,
            exercised: false,
            seen: Seen::default(),
        }
    }
}

impl Checker for NoDischargeIntoDeadGrid {
    fn step(&mut self, s: &Sample) -> Vec<Violation> {
        let mut out = Vec::new();
        if !s.grid_dead {
            self.dead_since = None;
            self.violated.clear();
            return out;
        }
        let since = *self.dead_since.get_or_insert(s.t_ms);
        let dead_for = s.t_ms - since;
        for seg in &s.segments {
            if seg.discharge_kw <= DISCHARGE_EPS_KW {
                continue;
            }
            self.exercised = true;
            self.longest_ms = Some(self.longest_ms.map_or(dead_for, |l| l.max(dead_for)));
            if dead_for > self.bound_ms && self.violated.insert(seg.id.clone()) {
                let v = Violation {
                    invariant: "no_discharge_into_dead_grid",
                    t_ms: s.t_ms,
                    subject: seg.id.clone(),
                    message: format!(
                        "segment {} discharges {:.3} kW into a grid dead for {:.3} s (bound {:.3} s)",
                        seg.id,
                        seg.discharge_kw,
                        ms_to_s(dead_for),
                        ms_to_s(self.bound_ms)
                    ),
                };
                self.seen.add(&v);
                out.push(v);
            }
        }
        out
    }

    fn summary(&self) -> Summary {
        Summary {
            name: "no_discharge_into_dead_grid",
            statement: format!(
                "no discharge into a dead grid (beyond its fast trip limits) after {:.3} s",
                ms_to_s(self.bound_ms)
            ),
            held: self.seen.count == 0,
            exercised: self.exercised,
            worst_margin: Some(ms_to_s(self.bound_ms) - self.longest_ms.map_or(0.0, ms_to_s)),
            unit: "s",
            violations: self.seen.count,
            first: self.seen.first.clone(),
            note: "bound minus the longest discharge seen into a dead grid".to_owned(),
        }
    }
}

/// IEEE 1547-2018's bound on ceasing to energize an island: 2 s (its unintentional
/// islanding clause), whatever a scenario's own reaction bound is.
pub const ISLAND_CEASE_MS: u64 = 2_000;

/// No device exports into an islanded (dead) grid beyond [`ISLAND_CEASE_MS`], and a device
/// behind an open trip relay exports nothing at all. Per device: a charger that cannot be
/// commanded (its connection dropped, it answers late) is caught here by name, and only its
/// segment's relay can stop it.
#[derive(Debug)]
pub struct NoExportIntoIsland {
    dead_since: Option<u64>,
    /// Devices that already violated in this dead episode.
    violated: BTreeSet<String>,
    longest_ms: Option<u64>,
    exercised: bool,
    seen: Seen,
}

impl Default for NoExportIntoIsland {
    fn default() -> Self {
        Self::new()
    }
}

impl NoExportIntoIsland {
    /// A checker with IEEE 1547's bound.
    pub fn new() -> Self {
        NoExportIntoIsland {
            dead_since: None,
            violated: BTreeSet::new(),
            longest_ms: None,
            exercised: false,
            seen: Seen::default(),
        }
    }

    fn violation(&mut self, s: &Sample, d: &ExportSample, message: String) -> Option<Violation> {
        if !self.violated.insert(d.id.clone()) {
            return None;
        }
        let v = Violation {
            invariant: "no_export_into_island",
            t_ms: s.t_ms,
            subject: d.id.clone(),
            message,
        };
        self.seen.add(&v);
        Some(v)
    }
}

impl Checker for NoExportIntoIsland {
    fn step(&mut self, s: &Sample) -> Vec<Violation> {
        let mut out = Vec::new();
        if !s.grid_dead {
            self.dead_since = None;
            self.violated.clear();
            return out;
        }
        let since = *self.dead_since.get_or_insert(s.t_ms);
        let dead_for = s.t_ms - since;
        self.exercised |= !s.relays_open.is_empty();
        for d in &s.exporting {
            self.exercised = true;
            self.longest_ms = Some(self.longest_ms.map_or(dead_for, |l| l.max(dead_for)));
            let (id, seg, kw) = (&d.id, &d.segment, d.kw);
            let message = if s.relays_open.binary_search(seg).is_ok() {
                format!("{id} exports {kw:.3} kW behind the open trip relay of {seg}")
            } else if dead_for > ISLAND_CEASE_MS {
                format!(
                    "{id} ({seg}) exports {kw:.3} kW into a grid dead for {:.3} s (IEEE 1547: {:.3} s)",
                    ms_to_s(dead_for),
                    ms_to_s(ISLAND_CEASE_MS)
                )
            } else {
                continue;
            };
            out.extend(self.violation(s, d, message));
        }
        out
    }

    fn summary(&self) -> Summary {
        Summary {
            name: "no_export_into_island",
            statement: format!(
                "no device exports into a dead grid after {:.3} s (IEEE 1547-2018), none behind an open trip relay",
                ms_to_s(ISLAND_CEASE_MS)
            ),
            held: self.seen.count == 0,
            exercised: self.exercised,
            worst_margin: Some(ms_to_s(ISLAND_CEASE_MS) - self.longest_ms.map_or(0.0, ms_to_s)),
            unit: "s",
            violations: self.seen.count,
            first: self.seen.first.clone(),
            note: "bound minus the longest export of one device into a dead grid".to_owned(),
        }
    }
}

/// No vehicle below its minimum SoC.
#[derive(Debug)]
pub struct MinSoc {
    tolerance_pct: f64,
    /// Per vehicle: (last SoC, violated in this episode).
    state: BTreeMap<String, (f64, bool)>,
    worst: Option<f64>,
    exercised: bool,
    seen: Seen,
}

impl MinSoc {
    /// With how far below its floor a vehicle may read, %.
    pub fn new(tolerance_pct: f64) -> Self {
        MinSoc {
            tolerance_pct,
            state: BTreeMap::new(),
            worst: None,
            exercised: false,
            seen: Seen::default(),
        }
    }
}

impl Checker for MinSoc {
    fn step(&mut self, s: &Sample) -> Vec<Violation> {
        let mut out = Vec::new();
        for v in &s.vehicles {
            let (last, violated) = self.state.entry(v.id.clone()).or_insert((v.soc_pct, false));
            if v.soc_pct < *last {
                // It discharged: the floor is being tested.
                self.exercised = true;
            }
            *last = v.soc_pct;
            let margin = v.soc_pct - v.floor_pct;
            self.worst = Some(self.worst.map_or(margin, |w| w.min(margin)));
            if margin < -self.tolerance_pct {
                if !*violated {
                    *violated = true;
                    let x = Violation {
                        invariant: "min_soc",
                        t_ms: s.t_ms,
                        subject: v.id.clone(),
                        message: format!(
                            "vehicle {} at {:.4} % SoC, below its floor of {:.4} % (tolerance {} %)",
                            v.id, v.soc_pct, v.floor_pct, self.tolerance_pct
                        ),
                    };
                    self.seen.add(&x);
                    out.push(x);
                }
            } else {
                *violated = false;
            }
        }
        out
    }

    fn summary(&self) -> Summary {
        Summary {
            name: "min_soc",
            statement: format!(
                "no vehicle below its minimum SoC (tolerance {} %)",
                self.tolerance_pct
            ),
            held: self.seen.count == 0,
            exercised: self.exercised,
            worst_margin: self.worst,
            unit: "% SoC",
            violations: self.seen.count,
            first: self.seen.first.clone(),
            note: "smallest SoC minus floor of any plugged vehicle".to_owned(),
        }
    }
}

/// No transformer above its limit past the bound.
#[derive(Debug)]
pub struct TransformerLimit {
    bound_ms: u64,
    /// Per segment: (over since, violated in this episode).
    state: BTreeMap<String, (Option<u64>, bool)>,
    longest_ms: Option<u64>,
    hottest_over_c: Option<f64>,
    exercised: bool,
    seen: Seen,
}

impl TransformerLimit {
    /// With the bound, s.
    pub fn new(transformer_s: f64) -> Self {
        TransformerLimit {
            bound_ms: (transformer_s * 1_000.0).round() as u64,
            state: BTreeMap::new(),
            longest_ms: None,
            hottest_over_c: None,
            exercised: false,
            seen: Seen::default(),
        }
    }
}

impl Checker for TransformerLimit {
    fn step(&mut self, s: &Sample) -> Vec<Violation> {
        let mut out = Vec::new();
        for seg in &s.segments {
            let over_c = seg.hot_spot_c - seg.limit_c;
            self.hottest_over_c = Some(self.hottest_over_c.map_or(over_c, |h| h.max(over_c)));
            self.exercised |= over_c >= -EXERCISE_BAND_C;
            let (since, violated) = self.state.entry(seg.id.clone()).or_insert((None, false));
            // A hot spot that is not a number is not below the limit.
            if over_c > 0.0 || over_c.is_nan() {
                let start = *since.get_or_insert(s.t_ms);
                let lasted = s.t_ms - start;
                self.longest_ms = Some(self.longest_ms.map_or(lasted, |l| l.max(lasted)));
                if lasted > self.bound_ms && !*violated {
                    *violated = true;
                    let v = Violation {
                        invariant: "transformer_limit",
                        t_ms: s.t_ms,
                        subject: seg.id.clone(),
                        message: format!(
                            "transformer {} at {:.2} °C, above its limit of {:.2} °C for {:.3} s (bound {:.3} s), load {:.1} kW on {:.1} kW rated",
                            seg.id,
                            seg.hot_spot_c,
                            seg.limit_c,
                            ms_to_s(lasted),
                            ms_to_s(self.bound_ms),
                            seg.load_kw,
                            seg.rated_kw
                        ),
                    };
                    self.seen.add(&v);
                    out.push(v);
                }
            } else {
                *since = None;
                *violated = false;
            }
        }
        out
    }

    fn summary(&self) -> Summary {
        Summary {
            name: "transformer_limit",
            statement: format!(
                "no transformer above its limit for longer than {:.3} s",
                ms_to_s(self.bound_ms)
            ),
            held: self.seen.count == 0,
            exercised: self.exercised,
            worst_margin: Some(ms_to_s(self.bound_ms) - self.longest_ms.map_or(0.0, ms_to_s)),
            unit: "s",
            violations: self.seen.count,
            first: self.seen.first.clone(),
            note: match self.hottest_over_c {
                Some(h) => format!(
                    "bound minus the longest time over the limit; hottest {h:+.2} °C from the limit"
                ),
                None => "no transformer".to_owned(),
            },
        }
    }
}

/// Every acknowledged setpoint applied exactly once: a device never receives a key older
/// than one it applied (a superseded setpoint applied again), its applied key never goes
/// back, and every durably acknowledged key is one the device applied.
#[derive(Debug, Default)]
pub struct AppliedOnce {
    /// Per charger: the last sample's applied key, older-writes count and acknowledged key.
    state: BTreeMap<String, ChargerSeen>,
    /// Distinct acknowledged keys seen.
    acked: usize,
    seen: Seen,
}

#[derive(Debug, Default, Clone, Copy)]
struct ChargerSeen {
    applied: Option<SetpointKey>,
    older_writes: u64,
    acked: Option<SetpointKey>,
}

impl AppliedOnce {
    /// A fresh checker.
    pub fn new() -> Self {
        AppliedOnce::default()
    }
}

fn key_text(k: Option<SetpointKey>) -> String {
    k.map_or("none".to_owned(), |k| {
        format!("{}.{}", k.dispatch, k.revision)
    })
}

impl Checker for AppliedOnce {
    fn step(&mut self, s: &Sample) -> Vec<Violation> {
        let mut out = Vec::new();
        for c in &s.chargers {
            let last = self.state.entry(c.id.clone()).or_default();
            let problem = if c.older_writes > last.older_writes {
                Some(format!(
                    "charger {} received {} write(s) with a key older than one it had applied",
                    c.id,
                    c.older_writes - last.older_writes
                ))
            } else if c.applied < last.applied {
                Some(format!(
                    "charger {}'s applied key went back from {} to {}",
                    c.id,
                    key_text(last.applied),
                    key_text(c.applied)
                ))
            } else if c.acked.is_some() && c.acked > c.applied {
                Some(format!(
                    "charger {}: key {} acknowledged but the device applied only {}",
                    c.id,
                    key_text(c.acked),
                    key_text(c.applied)
                ))
            } else {
                None
            };
            if c.acked.is_some() && c.acked != last.acked {
                self.acked += 1;
            }
            *last = ChargerSeen {
                applied: last.applied.max(c.applied),
                older_writes: c.older_writes,
                acked: c.acked,
            };
            if let Some(message) = problem {
                let v = Violation {
                    invariant: "applied_once",
                    t_ms: s.t_ms,
                    subject: c.id.clone(),
                    message,
                };
                self.seen.add(&v);
                out.push(v);
            }
        }
        out
    }

    fn summary(&self) -> Summary {
        Summary {
            name: "applied_once",
            statement: "every acknowledged setpoint applied exactly once (never lost, never re-applied after a newer one)".to_owned(),
            held: self.seen.count == 0,
            exercised: self.acked > 0,
            worst_margin: None,
            unit: "",
            violations: self.seen.count,
            first: self.seen.first.clone(),
            note: format!("{} acknowledged keys checked against the devices", self.acked),
        }
    }
}

/// Every crashed permanent actor running again within the bound.
#[derive(Debug)]
pub struct RestartWithin {
    bound_ms: u64,
    /// Per path: (down since, violated in this episode).
    state: BTreeMap<String, (u64, bool)>,
    longest_ms: Option<u64>,
    episodes: usize,
    seen: Seen,
}

impl RestartWithin {
    /// With the bound, s.
    pub fn new(restart_s: f64) -> Self {
        RestartWithin {
            bound_ms: (restart_s * 1_000.0).round() as u64,
            state: BTreeMap::new(),
            longest_ms: None,
            episodes: 0,
            seen: Seen::default(),
        }
    }
}

impl Checker for RestartWithin {
    fn step(&mut self, s: &Sample) -> Vec<Violation> {
        let mut out = Vec::new();
        self.episodes += s.restarted.len();
        self.state.retain(|path, _| s.down.contains(path));
        for path in &s.down {
            let (since, violated) = self.state.entry(path.clone()).or_insert_with(|| {
                self.episodes += 1;
                (s.t_ms, false)
            });
            let lasted = s.t_ms - *since;
            self.longest_ms = Some(self.longest_ms.map_or(lasted, |l| l.max(lasted)));
            if lasted > self.bound_ms && !*violated {
                *violated = true;
                let v = Violation {
                    invariant: "restart_within_bound",
                    t_ms: s.t_ms,
                    subject: path.clone(),
                    message: format!(
                        "{path} not running for {:.3} s (bound {:.3} s)",
                        ms_to_s(lasted),
                        ms_to_s(self.bound_ms)
                    ),
                };
                self.seen.add(&v);
                out.push(v);
            }
        }
        out
    }

    fn summary(&self) -> Summary {
        Summary {
            name: "restart_within_bound",
            statement: format!(
                "every crashed permanent actor running again within {:.3} s",
                ms_to_s(self.bound_ms)
            ),
            held: self.seen.count == 0,
            exercised: self.episodes > 0,
            worst_margin: Some(ms_to_s(self.bound_ms) - self.longest_ms.map_or(0.0, ms_to_s)),
            unit: "s",
            violations: self.seen.count,
            first: self.seen.first.clone(),
            note: format!(
                "bound minus the longest time an actor was seen down; {} restarts seen (those within one step count as 0 s)",
                self.episodes
            ),
        }
    }
}

/// Every responsive device of an islanded segment exports nothing within
/// [`ISLANDING_COMMAND_BOUND_MS`]: once the true grid is dead and the segment restricted
/// (ChargeOnly or Tripped), each device that stayed responsive since holds a setpoint that
/// exports nothing within the bound of the segment's reaction (its transition, or the grid's
/// death if it was restricted before). What a device *holds* is checked, not its power,
/// which follows with its ramp. A device that hangs, is disconnected or is otherwise not
/// responsive at any step of the episode is left out (the trip relay is what stops those).
#[derive(Debug, Default)]
pub struct ResponsiveStopOnIslanding {
    dead_since: Option<u64>,
    /// Per islanded segment: when its reaction began.
    since: BTreeMap<String, u64>,
    /// Devices left out of this episode (unresponsive at a step of it), or already reported.
    excluded: BTreeSet<String>,
    /// Devices exporting at the last step (to tell whether the check was exercised).
    exporting: BTreeSet<String>,
    longest_ms: Option<u64>,
    exercised: bool,
    seen: Seen,
}

impl ResponsiveStopOnIslanding {
    /// A fresh checker.
    pub fn new() -> Self {
        Self::default()
    }

    fn check(&mut self, t_ms: u64, start: u64, o: &OutputSample) -> Option<Violation> {
        let exports = o.setpoint_kw < -DISCHARGE_EPS_KW;
        if !o.responsive || self.excluded.contains(&o.id) {
            self.excluded.insert(o.id.clone());
            return None;
        }
        self.exercised |= exports || self.exporting.contains(&o.id);
        if !exports {
            return None;
        }
        let lasted = t_ms.saturating_sub(start);
        self.longest_ms = Some(self.longest_ms.map_or(lasted, |l| l.max(lasted)));
        if lasted <= ISLANDING_COMMAND_BOUND_MS {
            return None;
        }
        self.excluded.insert(o.id.clone());
        let v = Violation {
            invariant: "responsive_stop_on_islanding",
            t_ms,
            subject: o.id.clone(),
            message: format!(
                "{} of islanded segment {} answers but still holds {:.3} kW {:.3} s after the segment's reaction (bound {:.3} s)",
                o.id,
                o.segment,
                o.setpoint_kw,
                ms_to_s(lasted),
                ms_to_s(ISLANDING_COMMAND_BOUND_MS)
            ),
        };
        self.seen.add(&v);
        Some(v)
    }
}

impl Checker for ResponsiveStopOnIslanding {
    fn step(&mut self, s: &Sample) -> Vec<Violation> {
        let mut out = Vec::new();
        if !s.grid_dead {
            self.dead_since = None;
            self.since.clear();
            self.excluded.clear();
        } else {
            let dead = *self.dead_since.get_or_insert(s.t_ms);
            for seg in &s.segments {
                if seg.level < CHARGE_ONLY_SEVERITY {
                    self.since.remove(&seg.id);
                    continue;
                }
                let start = *self
                    .since
                    .entry(seg.id.clone())
                    .or_insert(seg.level_since_ms.max(dead));
                for o in s.outputs.iter().filter(|o| o.segment == seg.id) {
                    out.extend(self.check(s.t_ms, start, o));
                }
            }
        }
        self.exporting = s
            .outputs
            .iter()
            .filter(|o| o.setpoint_kw < -DISCHARGE_EPS_KW)
            .map(|o| o.id.clone())
            .collect();
        out
    }

    fn summary(&self) -> Summary {
        Summary {
            name: "responsive_stop_on_islanding",
            statement: format!(
                "every responsive device of an islanded segment exports nothing within {:.3} s",
                ms_to_s(ISLANDING_COMMAND_BOUND_MS)
            ),
            held: self.seen.count == 0,
            exercised: self.exercised,
            worst_margin: Some(
                ms_to_s(ISLANDING_COMMAND_BOUND_MS) - self.longest_ms.map_or(0.0, ms_to_s),
            ),
            unit: "s",
            violations: self.seen.count,
            first: self.seen.first.clone(),
            note: "bound minus the longest a responsive device held an exporting setpoint after its segment reacted to a dead grid (steps are the sampling grain)".to_owned(),
        }
    }
}

/// Every checker of the in-process mode, with the scenario's bounds.
pub fn all(bounds: &Bounds) -> Vec<Box<dyn Checker + Send>> {
    vec![
        Box::new(NoDischargeWhenRestricted::new(bounds.reaction_s)),
        Box::new(NoDischargeIntoDeadGrid::new(bounds.reaction_s)),
        Box::new(MinSoc::new(bounds.soc_tolerance_pct)),
        Box::new(TransformerLimit::new(bounds.transformer_s)),
        Box::new(AppliedOnce::new()),
        Box::new(RestartWithin::new(bounds.restart_s)),
        Box::new(NoExportIntoIsland::new()),
        Box::new(ResponsiveStopOnIslanding::new()),
    ]
}
