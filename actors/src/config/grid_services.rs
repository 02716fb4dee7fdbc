//! `[grid_services.frequency]`: the frequency-watt response (droop) of every segment
//! ([`crate::droop`]).
//!
//! ```toml
//! [grid_services.frequency]
//! enabled = true            # default false: off unless the topology turns it on
//! deadband_hz = 0.036       # default by [safety] nominal_hz: 0.036 (60 Hz) / 0.2 (50 Hz)
//! droop_pct = 5.0           # default 5 (IEEE 1547-2018 and EN 50549-1)
//! response_time_ms = 1000   # full response within this
//! max_response_pct = 100    # |ΔP| at most this share of the power available
//! trigger_hz = 0.005        # a change of the deviation by this much dispatches at once
//! ```

use serde::Serialize;

use super::{Checker, Hi, Lo, Reader, Tbl};
use crate::droop::DroopSettings;
use crate::ladder::GridFrequency;

/// The keys of `[grid_services]`.
pub(super) const GRID_SERVICES_KEYS: &[&str] = &["frequency"];
/// The keys of `[grid_services.frequency]`.
pub(super) const FREQUENCY_KEYS: &[&str] = &[
    "enabled",
    "deadband_hz",
    "droop_pct",
    "response_time_ms",
    "max_response_pct",
    "trigger_hz",
];
/// The widest deadband accepted, Hz (IEEE 1547-2018 allows up to 1 Hz).
pub const MAX_DEADBAND_HZ: f64 = 1.0;
/// The droop range accepted, %: EN 50549-1's 2 % to 12 % (it holds IEEE 1547's 2 % to 5 %).
pub const DROOP_PCT_RANGE: (f64, f64) = (2.0, 12.0);
/// The response time range accepted, ms.
pub const RESPONSE_TIME_MS_RANGE: (u64, u64) = (100, 10_000);
/// The largest `trigger_hz` accepted, Hz.
pub const MAX_TRIGGER_HZ: f64 = 0.1;

/// `[grid_services]`: what the site offers the grid besides requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GridServices {
    /// `[grid_services.frequency]`: the frequency-watt response.
    pub frequency: DroopSettings,
}

impl GridServices {
    /// The defaults for a grid: every service off.
    pub fn for_grid(grid: GridFrequency) -> GridServices {
        GridServices {
            frequency: DroopSettings::for_grid(grid),
        }
    }
}

impl Reader {
    /// `[grid_services]` of the root: the droop settings (the grid's defaults, off, when
    /// the table is absent).
    pub(super) fn grid_services(
        &mut self,
        root: &Tbl<'_, '_>,
        grid: GridFrequency,
    ) -> GridServices {
        let d = DroopSettings::for_grid(grid);
        let services = self.child(root, "grid_services", GRID_SERVICES_KEYS);
        let t = self.child(&services, "frequency", FREQUENCY_KEYS);
        if t.table.is_none() {
            return GridServices::for_grid(grid);
        }
        let frequency = DroopSettings {
            enabled: self.boolean(&t, "enabled", d.enabled),
            nominal_hz: d.nominal_hz,
            deadband_hz: self.number(&t, "deadband_hz", Some(d.deadband_hz)),
            droop_pct: self.number(&t, "droop_pct", Some(d.droop_pct)),
            response_time_ms: self.integer(&t, "response_time_ms", d.response_time_ms),
            max_response_pct: self.number(&t, "max_response_pct", Some(d.max_response_pct)),
            trigger_hz: self.number(&t, "trigger_hz", Some(d.trigger_hz)),
        };
        GridServices { frequency }
    }
}

impl Checker<'_> {
    /// `[grid_services.frequency]`: every value in its range.
    pub(super) fn grid_services(&mut self, g: &GridServices) {
        let d = &g.frequency;
        let f = |k: &str| format!("grid_services.frequency.{k}");
        self.number(
            &f("deadband_hz"),
            d.deadband_hz,
            Lo::AtLeast(0.0),
            Hi::AtMost(MAX_DEADBAND_HZ),
        );
        let (lo, hi) = DROOP_PCT_RANGE;
        self.number(
            &f("droop_pct"),
            d.droop_pct,
            Lo::AtLeast(lo),
            Hi::AtMost(hi),
        );
        self.number(
            &f("max_response_pct"),
            d.max_response_pct,
            Lo::Above(0.0),
            Hi::AtMost(100.0),
        );
        self.number(
            &f("trigger_hz"),
            d.trigger_hz,
            Lo::Above(0.0),
            Hi::AtMost(MAX_TRIGGER_HZ),
        );
        let (lo, hi) = RESPONSE_TIME_MS_RANGE;
        if !(lo..=hi).contains(&d.response_time_ms) {
            let m = format!("must be {lo}..={hi} ms, got {}", d.response_time_ms);
            self.report(&f("response_time_ms"), &[], m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const SITE: &str = r#"[site]
id = "s"
[[substations]]
id = "sub"
[[substations.segments]]
id = "tx"
rated_kw = 100
[[substations.segments.chargers]]
id = "c1"
max_kw = 11
[[substations.segments.meters]]
id = "m1"
"#;

    #[test]
    fn absent_is_off_with_the_grids_defaults() {
        let t = parse("t.toml", SITE).expect("valid");
        let d = t.grid_services.frequency;
        assert!(!d.enabled);
        assert_eq!(
            (d.nominal_hz, d.deadband_hz, d.droop_pct),
            (60.0, 0.036, 5.0)
        );
        let eu = format!("{SITE}[safety]\nnominal_hz = 50\n");
        let d = parse("t.toml", &eu).expect("valid").grid_services.frequency;
        assert_eq!((d.nominal_hz, d.deadband_hz), (50.0, 0.2));
    }

    #[test]
    fn the_table_turns_it_on_and_overrides() {
        let text = format!(
            "{SITE}[grid_services.frequency]\nenabled = true\ndroop_pct = 4\nresponse_time_ms = 500\n"
        );
        let d = parse("t.toml", &text)
            .expect("valid")
            .grid_services
            .frequency;
        assert!(d.enabled);
        assert_eq!(
            (d.droop_pct, d.response_time_ms, d.deadband_hz),
            (4.0, 500, 0.036)
        );
    }

    #[test]
    fn bad_values_are_named_with_their_place() {
        let text = format!(
            "{SITE}[grid_services.frequency]\nenabled = \"yes\"\ndroop_pct = 40\nresponse_time_ms = 5\ntrigger = 1\n"
        );
        let e = parse("t.toml", &text).expect_err("invalid").to_string();
        let first = SITE.lines().count() + 2;
        let line = |n: usize| format!("t.toml:{}:", first + n);
        assert!(
            e.contains(&line(0)) && e.contains("grid_services.frequency.enabled"),
            "{e}"
        );
        assert!(
            e.contains(&line(1)) && e.contains("grid_services.frequency.droop_pct"),
            "{e}"
        );
        assert!(
            e.contains(&line(2)) && e.contains("grid_services.frequency.response_time_ms"),
            "{e}"
        );
        assert!(
            e.contains(&line(3)) && e.contains("unknown key `trigger`"),
            "{e}"
        );
    }
}
