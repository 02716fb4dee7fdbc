//! The frequency-watt response (droop) invariant: with `[grid_services.frequency]` on, every
//! segment's response has the sign of the true grid's deviation beyond the deadband, is no
//! larger than the droop allows for the segment's V2G chargers, and is there within the
//! response time. Computed here from the true frequency with its own formula (generator
//! convention `ΔP = −(Δf / f_n) / droop × P`, so + charge over-frequency), not with the node's
//! code.

use std::collections::BTreeMap;

use gridvisor_actors::droop::DroopSettings;

use crate::invariants::{Checker, Sample, Summary, Violation};

/// A response within this of zero counts as none, kW.
pub const RESPONSE_EPS_KW: f64 = 0.01;
/// A segment whose V2G chargers have less room than this in the response's direction, kW,
/// may show none (a throttled charger is offered its delivery plus `PROBE_KW`, 1 kW).
pub const MIN_ROOM_KW: f64 = 2.0;
/// The response may exceed the droop's share of the rated V2G power by this (rounding), kW.
pub const SIZE_TOLERANCE_KW: f64 = 0.05;

/// The droop invariant (see the module docs). Off (held, not exercised) when the topology
/// does not turn the response on.
#[derive(Debug)]
pub struct FrequencyResponse {
    settings: DroopSettings,
    /// When the deviation beyond the deadband last changed, ms, and its value, Hz.
    changed: Option<(u64, f64)>,
    /// Per segment: in a violation episode.
    violating: BTreeMap<String, bool>,
    /// The longest a response took to show with the right sign, ms.
    longest_ms: Option<u64>,
    /// Per segment: the step its current deviation began, still waiting for the response.
    waiting: BTreeMap<String, u64>,
    /// The excursion (its start, ms) whose response was judged.
    judged_since: Option<u64>,
    exercised: bool,
    count: usize,
    first: Option<Violation>,
}

impl FrequencyResponse {
    /// The checker for `settings` (the topology's `[grid_services.frequency]`).
    pub fn new(settings: DroopSettings) -> Self {
        FrequencyResponse {
            settings,
            changed: None,
            violating: BTreeMap::new(),
            longest_ms: None,
            waiting: BTreeMap::new(),
            judged_since: None,
            exercised: false,
            count: 0,
            first: None,
        }
    }

    /// The deviation beyond the deadband, Hz (signed), by this checker's own arithmetic.
    fn excess(&self, hz: f64) -> f64 {
        let d = hz - self.settings.nominal_hz;
        let band = self.settings.deadband_hz + 1e-9;
        if d.abs() <= band {
            0.0
        } else {
            d - d.signum() * self.settings.deadband_hz
        }
    }

    /// The largest response the droop allows on `v2g_kw` of rated V2G power, kW.
    fn largest(&self, excess: f64, v2g_kw: f64) -> f64 {
        let share = (excess.abs() / self.settings.nominal_hz) / (self.settings.droop_pct / 100.0);
        share.min(self.settings.max_response_pct / 100.0) * v2g_kw + SIZE_TOLERANCE_KW
    }

    fn judge(&self, excess: f64, droop_kw: f64, v2g_kw: f64) -> Option<String> {
        let sign = |x: f64| {
            if x.abs() <= RESPONSE_EPS_KW {
                0.0
            } else {
                x.signum()
            }
        };
        if excess == 0.0 && sign(droop_kw) != 0.0 {
            return Some(format!("{droop_kw} kW of response within the deadband"));
        }
        if excess != 0.0 && sign(droop_kw) == -excess.signum() {
            return Some(format!("{droop_kw} kW: the wrong sign for {excess:+.3} Hz"));
        }
        let largest = self.largest(excess, v2g_kw);
        (droop_kw.abs() > largest).then(|| {
            format!("{droop_kw} kW exceeds the droop's {largest:.3} kW for {excess:+.3} Hz")
        })
    }
}

impl FrequencyResponse {
    fn record(&mut self, t_ms: u64, subject: String, message: String) -> Violation {
        let v = Violation {
            invariant: "frequency_response",
            t_ms,
            subject,
            message,
        };
        self.count += 1;
        self.first.get_or_insert_with(|| v.clone());
        v
    }

    /// Once per excursion, when the response time has passed: some segment responds with the
    /// right sign, if any Normal segment's V2G chargers have room in that direction (a
    /// segment's own chargers may be throttled or at a limit the checker cannot see, so the
    /// site as a whole is judged). Returns the violation's message.
    fn missing(&mut self, s: &Sample, excess: f64, since: u64, settled: bool) -> Option<String> {
        if !settled || excess == 0.0 || self.judged_since == Some(since) {
            return None;
        }
        self.judged_since = Some(since);
        let room = |seg: &crate::invariants::SegmentSample| {
            if excess > 0.0 {
                seg.v2g_room_kw.0
            } else {
                seg.v2g_room_kw.1
            }
        };
        let could = s
            .segments
            .iter()
            .any(|g| g.level == 0 && room(g) >= MIN_ROOM_KW);
        let did = s
            .segments
            .iter()
            .any(|g| g.droop_kw.abs() > RESPONSE_EPS_KW && g.droop_kw.signum() == excess.signum());
        (could && !did).then(|| {
            format!(
                "no segment responds {} ms after the frequency moved {excess:+.3} Hz beyond the deadband",
                s.t_ms - since
            )
        })
    }
}

impl Checker for FrequencyResponse {
    fn step(&mut self, s: &Sample) -> Vec<Violation> {
        if !self.settings.enabled {
            return Vec::new();
        }
        let excess = self.excess(s.frequency_hz);
        if self.changed.is_none_or(|(_, e)| (e - excess).abs() > 1e-9) {
            self.changed = Some((s.t_ms, excess));
            self.waiting.clear();
        }
        let since = self.changed.map_or(s.t_ms, |(t, _)| t);
        let settled = s.t_ms.saturating_sub(since) >= self.settings.response_time_ms;
        let mut out = Vec::new();
        if let Some(message) = self.missing(s, excess, since, settled) {
            out.push(self.record(s.t_ms, "site".to_owned(), message));
        }
        for seg in &s.segments {
            // Responding with the right sign: how long it took.
            let right = excess != 0.0
                && seg.droop_kw.abs() > RESPONSE_EPS_KW
                && seg.droop_kw.signum() == excess.signum();
            if right {
                self.exercised = true;
                if !self.waiting.contains_key(&seg.id) {
                    self.waiting.insert(seg.id.clone(), s.t_ms);
                    let took = s.t_ms - since;
                    self.longest_ms = Some(self.longest_ms.map_or(took, |l| l.max(took)));
                }
            }
            let problem = if settled {
                self.judge(excess, seg.droop_kw, seg.v2g_kw)
            } else {
                None
            };
            let was = self.violating.insert(seg.id.clone(), problem.is_some());
            if let (Some(message), false) = (problem, was.unwrap_or(false)) {
                out.push(self.record(s.t_ms, seg.id.clone(), message));
            }
        }
        out
    }

    fn summary(&self) -> Summary {
        let bound_s = self.settings.response_time_ms as f64 / 1_000.0;
        Summary {
            name: "frequency_response",
            statement: format!(
                "with droop on, every segment's response has the sign of the deviation beyond \
                 the {} Hz deadband, at most {} % droop of its V2G power, within {bound_s:.3} s",
                self.settings.deadband_hz, self.settings.droop_pct
            ),
            held: self.count == 0,
            exercised: self.exercised,
            worst_margin: self
                .longest_ms
                .map(|l| bound_s - l as f64 / 1_000.0),
            unit: "s",
            violations: self.count,
            first: self.first.clone(),
            note: "the response time minus the longest a segment took to respond with the right sign (steps are the sampling grain)".to_owned(),
        }
    }
}
