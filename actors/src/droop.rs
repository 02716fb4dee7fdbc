//! Frequency-watt response (droop): the pure core. Time is an argument; nothing here reads a
//! clock or talks to a device.
//!
//! Outside a deadband around the nominal frequency, a segment's V2G-capable resources
//! change their power in proportion to the frequency deviation beyond the deadband's edge:
//!
//! ```text
//! generator convention (the standards'):  ΔP_export = −(Δf / f_nominal) / droop × P_available
//! this crate's convention (kW > 0 = charge): ΔP        = +(Δf / f_nominal) / droop × P_available
//! ```
//!
//! where `Δf = f − (f_nominal ± deadband)` beyond the edge and 0 within it, so the response is
//! continuous at the edge, as both standards define it. Over-frequency (too much generation)
//! charges more or discharges less; under-frequency charges less or discharges more.
//! `P_available` is what the V2G-capable resources can still move in the response's
//! direction (charge headroom over-frequency, discharge headroom under-frequency), and
//! `|ΔP|` never exceeds `max_response_pct` of it.
//!
//! Defaults by the grid's nominal frequency:
//! - 60 Hz, IEEE 1547-2018 clause 6.5.2.7 (frequency-droop), Table 24 default settings for
//!   Categories I–III: deadband `db_OF = db_UF = 0.036 Hz`, droop `k_OF = k_UF = 0.05` (5 %).
//! - 50 Hz, EN 50549-1:2019 clauses 4.6.1 (LFSM-O) and 4.6.2 (LFSM-U): threshold frequency
//!   `f1 = 50.2 Hz` over and `49.8 Hz` under (a 0.2 Hz deadband), droop `s = 5 %` (the
//!   default of the 2 % to 12 % range).
//!
//! The response time (`response_time_ms`, default 1 s) is this node's own bound for a
//! frequency step to reach the devices; the standards' own open-loop response times (IEEE
//! 1547's 5 s default for Categories I and II; EN 50549-1's 2 s for LFSM-O) are looser.
//!
//! [`FrequencyTracker`] decides when a new reading must be acted on now rather than at the
//! next dispatch cycle: when the deviation beyond the deadband moved by `trigger_hz` since it
//! last asked, or when a request it made was not dispatched within a fraction of the
//! response time. A reading older than the bound the caller gives counts as no reading: no
//! response is computed from it (the ladder's `meter_stale` already takes the segment to
//! ChargeOnly); a missing reading is never a frequency of 0 or of nominal.

use std::time::Duration;

use serde::Serialize;

use crate::ladder::GridFrequency;

/// IEEE 1547-2018 Table 24: the default frequency-droop deadband, Hz.
pub const IEEE_1547_DEADBAND_HZ: f64 = 0.036;
/// IEEE 1547-2018 Table 24: the default droop, %.
pub const IEEE_1547_DROOP_PCT: f64 = 5.0;
/// EN 50549-1 LFSM-O / LFSM-U: the default thresholds are 50.2 and 49.8 Hz, a deadband, Hz.
pub const EN_50549_DEADBAND_HZ: f64 = 0.2;
/// EN 50549-1 LFSM-O / LFSM-U: the default droop, %.
pub const EN_50549_DROOP_PCT: f64 = 5.0;
/// Full response within this, ms, when `response_time_ms` is not given.
pub const DEFAULT_RESPONSE_TIME_MS: u64 = 1_000;
/// `|ΔP|` is capped at this share of `P_available`, %, when `max_response_pct` is not given.
pub const DEFAULT_MAX_RESPONSE_PCT: f64 = 100.0;
/// A change of the deviation beyond the deadband of at least this much, Hz, starts a
/// dispatch round at once, when `trigger_hz` is not given. 5 mHz of a 5 % droop at 60 Hz is
/// 0.17 % of `P_available`.
pub const DEFAULT_TRIGGER_HZ: f64 = 0.005;
/// A dispatch the tracker asked for and that has not happened within
/// `response_time / RETRY_DIVISOR` is asked for again (a round may have been coalesced or
/// lost to a restart).
pub const RETRY_DIVISOR: u32 = 4;
/// A deviation within this of the deadband's edge, Hz, is at the edge (a reading of exactly
/// 60.036 Hz is not 1e-15 Hz beyond it); far below any meter's resolution.
pub const EDGE_TOLERANCE_HZ: f64 = 1e-9;

/// `[grid_services.frequency]`: the droop settings of every segment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DroopSettings {
    /// The response is on (`enabled`, default false: off unless the topology turns it on).
    pub enabled: bool,
    /// The grid's nominal frequency, Hz (`[safety] nominal_hz`; not a key of this table, so
    /// not serialized with it).
    #[serde(skip)]
    pub nominal_hz: f64,
    /// Half-width of the band around nominal with no response, Hz (`deadband_hz`).
    pub deadband_hz: f64,
    /// The droop, % (`droop_pct`): a deviation of `droop_pct` % of nominal beyond the
    /// deadband moves 100 % of `P_available`.
    pub droop_pct: f64,
    /// Full response within this, ms (`response_time_ms`).
    pub response_time_ms: u64,
    /// `|ΔP|` at most this share of `P_available`, % (`max_response_pct`).
    pub max_response_pct: f64,
    /// A change of the deviation by this much, Hz, dispatches at once (`trigger_hz`).
    pub trigger_hz: f64,
}

impl DroopSettings {
    /// The defaults for a grid (see the module docs for the standards), off.
    pub fn for_grid(grid: GridFrequency) -> DroopSettings {
        let (deadband_hz, droop_pct) = match grid {
            GridFrequency::Hz60 => (IEEE_1547_DEADBAND_HZ, IEEE_1547_DROOP_PCT),
            GridFrequency::Hz50 => (EN_50549_DEADBAND_HZ, EN_50549_DROOP_PCT),
        };
        DroopSettings {
            enabled: false,
            nominal_hz: grid.hz(),
            deadband_hz,
            droop_pct,
            response_time_ms: DEFAULT_RESPONSE_TIME_MS,
            max_response_pct: DEFAULT_MAX_RESPONSE_PCT,
            trigger_hz: DEFAULT_TRIGGER_HZ,
        }
    }

    /// The response time as a duration.
    pub fn response_time(&self) -> Duration {
        Duration::from_millis(self.response_time_ms)
    }

    /// The deviation of `f_hz` beyond the deadband's edge, Hz (signed: > 0 over-frequency;
    /// 0 within the deadband or when off); `None` when `f_hz` is not a number.
    pub fn excess_hz(&self, f_hz: f64) -> Option<f64> {
        if !f_hz.is_finite() {
            return None;
        }
        if !self.enabled {
            return Some(0.0);
        }
        let d = f_hz - self.nominal_hz;
        let band = self.deadband_hz.max(0.0) + EDGE_TOLERANCE_HZ;
        let edge = band - EDGE_TOLERANCE_HZ;
        Some(if d > band {
            d - edge
        } else if d < -band {
            d + edge
        } else {
            0.0
        })
    }

    /// ΔP for a deviation `excess_hz` beyond the deadband, kW (> 0 charge more), given what
    /// the V2G-capable resources can still move: `up_kw` more charge (or less discharge),
    /// `down_kw` less charge (or more discharge), both magnitudes. Anything not a number
    /// gives no response.
    pub fn response_kw(&self, excess_hz: f64, up_kw: f64, down_kw: f64) -> f64 {
        let valid = |x: f64| x.is_finite() && x > 0.0;
        if !self.enabled
            || !excess_hz.is_finite()
            || !valid(self.nominal_hz)
            || !valid(self.droop_pct)
        {
            return 0.0;
        }
        let available = if excess_hz > 0.0 { up_kw } else { down_kw };
        if !valid(available) {
            return 0.0;
        }
        let share = (excess_hz / self.nominal_hz) / (self.droop_pct / 100.0);
        let cap = (self.max_response_pct / 100.0).clamp(0.0, 1.0);
        share.clamp(-cap, cap) * available
    }
}

/// When a segment's frequency readings must start a dispatch round now (see the module docs).
#[derive(Debug, Clone)]
pub struct FrequencyTracker {
    settings: DroopSettings,
    /// The last good reading: (Hz, when it was taken).
    last: Option<(f64, Duration)>,
    /// The deviation the last request (or dispatch) was for, Hz.
    asked_excess: f64,
    /// A request not yet dispatched: when it was made.
    pending_since: Option<Duration>,
}

impl FrequencyTracker {
    /// A tracker with no reading yet.
    pub fn new(settings: DroopSettings) -> FrequencyTracker {
        FrequencyTracker {
            settings,
            last: None,
            asked_excess: 0.0,
            pending_since: None,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &DroopSettings {
        &self.settings
    }

    /// A reading of `f_hz` taken at `now`: true when a dispatch round must start now.
    /// Readings that are not numbers are ignored (the reading ages instead).
    pub fn observe(&mut self, f_hz: f64, now: Duration) -> bool {
        if !self.settings.enabled {
            return false;
        }
        let Some(excess) = self.settings.excess_hz(f_hz) else {
            return false;
        };
        self.last = Some((f_hz, now));
        let moved = (excess - self.asked_excess).abs() >= self.settings.trigger_hz
            || (excess == 0.0 && self.asked_excess != 0.0);
        let overdue = self.pending_since.is_some_and(|t| {
            now.saturating_sub(t) >= self.settings.response_time() / RETRY_DIVISOR
        });
        if moved || overdue {
            self.asked_excess = excess;
            self.pending_since = Some(now);
            return true;
        }
        false
    }

    /// The last reading's frequency if it is at most `max_age` old at `now`.
    pub fn frequency_hz(&self, now: Duration, max_age: Duration) -> Option<f64> {
        self.last
            .filter(|(_, at)| now.saturating_sub(*at) <= max_age)
            .map(|(f, _)| f)
    }

    /// The deviation beyond the deadband to respond to at `now`: that of the last reading at
    /// most `max_age` old; 0 (no response) without one. Marks any request as dispatched.
    pub fn dispatch_excess(&mut self, now: Duration, max_age: Duration) -> f64 {
        self.pending_since = None;
        let excess = self
            .frequency_hz(now, max_age)
            .and_then(|f| self.settings.excess_hz(f))
            .unwrap_or(0.0);
        self.asked_excess = excess;
        excess
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(grid: GridFrequency) -> DroopSettings {
        DroopSettings {
            enabled: true,
            ..DroopSettings::for_grid(grid)
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn defaults_follow_the_standards() {
        let us = DroopSettings::for_grid(GridFrequency::Hz60);
        assert_eq!(
            (us.nominal_hz, us.deadband_hz, us.droop_pct),
            (60.0, 0.036, 5.0)
        );
        let eu = DroopSettings::for_grid(GridFrequency::Hz50);
        assert_eq!(
            (eu.nominal_hz, eu.deadband_hz, eu.droop_pct),
            (50.0, 0.2, 5.0)
        );
        assert!(
            !us.enabled && !eu.enabled,
            "off unless the topology turns it on"
        );
        assert_eq!(us.response_time(), Duration::from_secs(1));
    }

    #[test]
    fn within_the_deadband_nothing_moves() {
        let s = on(GridFrequency::Hz60);
        for f in [60.0, 60.036, 59.964, 60.02] {
            assert_eq!(s.excess_hz(f), Some(0.0), "{f}");
            assert_eq!(s.response_kw(s.excess_hz(f).unwrap(), 100.0, 100.0), 0.0);
        }
    }

    #[test]
    fn ieee_1547_over_and_under_frequency_by_hand() {
        let s = on(GridFrequency::Hz60);
        // 60.336 Hz: 0.3 Hz beyond the 36 mHz edge; 0.3 / 60 = 0.5 %, / 5 % = 10 %.
        let e = s.excess_hz(60.336).unwrap();
        assert!(close(e, 0.3));
        assert!(
            close(s.response_kw(e, 200.0, 80.0), 20.0),
            "10 % of 200 kW more charge"
        );
        // 59.664 Hz: −0.3 Hz beyond the edge: 10 % of the 80 kW that can move down.
        let e = s.excess_hz(59.664).unwrap();
        assert!(close(e, -0.3));
        assert!(close(s.response_kw(e, 200.0, 80.0), -8.0));
        // 58.5 Hz: 1.464 Hz beyond, 2.44 % of nominal, 48.8 % of 50 kW = 24.4 kW down.
        let e = s.excess_hz(58.5).unwrap();
        assert!(close(s.response_kw(e, 0.0, 50.0), -24.4));
    }

    #[test]
    fn en_50549_lfsm_by_hand() {
        let s = on(GridFrequency::Hz50);
        // LFSM-O: 50.7 Hz is 0.5 Hz above 50.2 Hz: 1 % of 50 Hz / 5 % = 20 % of 150 kW.
        let e = s.excess_hz(50.7).unwrap();
        assert!(close(s.response_kw(e, 150.0, 0.0), 30.0));
        // LFSM-U: 49.55 Hz is 0.25 Hz below 49.8 Hz: 0.5 % / 5 % = 10 % of 40 kW.
        let e = s.excess_hz(49.55).unwrap();
        assert!(close(s.response_kw(e, 0.0, 40.0), -4.0));
        // Within 49.8..=50.2: nothing.
        assert_eq!(s.excess_hz(50.19), Some(0.0));
    }

    #[test]
    fn the_response_is_capped_and_safe_with_bad_inputs() {
        let s = DroopSettings {
            max_response_pct: 50.0,
            ..on(GridFrequency::Hz60)
        };
        // 57 Hz: far past 100 % of the droop; capped at 50 % of 10 kW.
        let e = s.excess_hz(57.0).unwrap();
        assert!(close(s.response_kw(e, 10.0, 10.0), -5.0));
        assert_eq!(s.excess_hz(f64::NAN), None);
        assert_eq!(s.response_kw(f64::NAN, 10.0, 10.0), 0.0);
        assert_eq!(s.response_kw(0.3, f64::INFINITY, 10.0), 0.0);
        assert_eq!(s.response_kw(0.3, -5.0, 10.0), 0.0);
        let off = DroopSettings::for_grid(GridFrequency::Hz60);
        assert_eq!(off.response_kw(0.3, 10.0, 10.0), 0.0);
        assert_eq!(off.excess_hz(61.0), Some(0.0));
    }

    #[test]
    fn the_tracker_asks_on_steps_not_on_noise() {
        let ms = Duration::from_millis;
        let mut t = FrequencyTracker::new(on(GridFrequency::Hz60));
        assert!(!t.observe(60.01, ms(0)), "within the deadband");
        assert!(t.observe(60.2, ms(50)), "a step beyond the deadband");
        assert!(
            !t.observe(60.202, ms(100)),
            "2 mHz is noise below trigger_hz"
        );
        // Dispatched: the request is served.
        let age = ms(500);
        assert!(
            close(t.dispatch_excess(ms(110), age), 0.166),
            "the last reading"
        );
        assert!(
            !t.observe(60.203, ms(400)),
            "nothing pending, nothing moved"
        );
        assert!(
            t.observe(60.0, ms(450)),
            "back within the deadband is a step too"
        );
        assert!(!t.observe(60.0, ms(500)));
        // Not dispatched within response_time / 4: asked again.
        assert!(!t.observe(60.0, ms(650)));
        assert!(t.observe(60.0, ms(700)));
    }

    #[test]
    fn a_stale_or_missing_reading_gives_no_response() {
        let ms = Duration::from_millis;
        let mut t = FrequencyTracker::new(on(GridFrequency::Hz60));
        assert_eq!(t.dispatch_excess(ms(0), ms(500)), 0.0, "no reading");
        assert!(t.observe(59.0, ms(0)));
        assert!(!t.observe(f64::NAN, ms(100)), "not a number: ignored");
        assert_eq!(t.frequency_hz(ms(400), ms(500)), Some(59.0));
        assert_eq!(t.frequency_hz(ms(600), ms(500)), None);
        assert_eq!(t.dispatch_excess(ms(600), ms(500)), 0.0);
    }
}
