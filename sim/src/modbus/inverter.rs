//! A simulated storage inverter's physics: the state, the 704 active power controls it
//! obeys, and the pure step function.
//!
//! Invariants, kept by [`step`] for any input:
//! - `|power_w| <= w_max`, and power moves toward the effective setpoint
//!   ([`effective_target_w`]) by at most `ramp_w_per_s × dt` per step, except that a grid
//!   outside the IEEE 1547 continuous range ([`GridSample::in_band`]) makes the inverter cease
//!   to energize at once (power 0, `tripped`).
//! - Temperature follows `ambient + k·|P|` as a first-order lag with time constant `tau`
//!   (exact discretisation, so the result does not depend on how a span is cut into steps).
//! - SoC stays in 0..=100 %: it integrates power (positive power discharges: SunSpec's DER
//!   sign, positive injects into the grid); an empty battery does not inject, a full one
//!   does not absorb.
//! - A control whose reversion timer runs out takes its reversion values (`*Rvrt`,
//!   `*EnaRvrt`); a timer of 0 s never runs out.
//!
//! Time only enters as the `dt` argument: a run replays exactly, at any speed.

use std::time::Duration;

use gridvisor_transports::modbus::sunspec::SetpointMode;

use super::grid::GridSample;
use super::SimError;

/// What the inverter is: ratings and physical constants.
#[derive(Debug, Clone, PartialEq)]
pub struct InverterParams {
    /// Serial number in model 1.
    pub serial: String,
    /// Maximum active power, both directions, W (> 0).
    pub w_max: f64,
    /// Ramp rate, W/s (> 0).
    pub ramp_w_per_s: f64,
    /// Setpoint when no control is enabled, W (within ±`w_max`).
    pub default_w: f64,
    /// Ambient temperature, °C.
    pub ambient_c: f64,
    /// Steady-state temperature rise per watt of |P|, °C/W (>= 0).
    pub heat_c_per_w: f64,
    /// Thermal time constant (> 0).
    pub tau: Duration,
    /// Battery capacity, Wh (> 0).
    pub capacity_wh: f64,
    /// State of charge at start, % (0..=100).
    pub initial_soc_pct: f64,
}

impl InverterParams {
    /// A 10 kW / 20 kWh inverter: ramp 5 kW/s, default setpoint 0 W, 25 °C ambient, +30 °C
    /// at full power with a 60 s time constant, starting at 50 % SoC.
    pub fn new(serial: &str) -> Self {
        Self {
            serial: serial.to_owned(),
            w_max: 10_000.0,
            ramp_w_per_s: 5_000.0,
            default_w: 0.0,
            ambient_c: 25.0,
            heat_c_per_w: 0.003,
            tau: Duration::from_secs(60),
            capacity_wh: 20_000.0,
            initial_soc_pct: 50.0,
        }
    }

    /// Checks every field; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field: &str, detail: String| {
            Err(SimError::Config {
                field: field.to_owned(),
                detail,
            })
        };
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        if !finite_pos(self.w_max) || self.w_max > 3.0e9 {
            return bad(
                "w_max",
                format!("must be in (0, 3e9] W, got {}", self.w_max),
            );
        }
        if !finite_pos(self.ramp_w_per_s) {
            return bad(
                "ramp_w_per_s",
                format!("must be > 0, got {}", self.ramp_w_per_s),
            );
        }
        if !self.default_w.is_finite() || self.default_w.abs() > self.w_max {
            return bad(
                "default_w",
                format!("must be within ±w_max, got {}", self.default_w),
            );
        }
        if !(-50.0..=100.0).contains(&self.ambient_c) {
            return bad(
                "ambient_c",
                format!("must be in -50..=100 °C, got {}", self.ambient_c),
            );
        }
        if !(0.0..=1.0).contains(&self.heat_c_per_w) {
            return bad(
                "heat_c_per_w",
                format!("must be in 0..=1 °C/W, got {}", self.heat_c_per_w),
            );
        }
        if self.tau.is_zero() {
            return bad("tau", "must be > 0".into());
        }
        if !finite_pos(self.capacity_wh) || self.capacity_wh > 6.5e8 {
            return bad(
                "capacity_wh",
                format!("must be in (0, 6.5e8] Wh, got {}", self.capacity_wh),
            );
        }
        if !(0.0..=100.0).contains(&self.initial_soc_pct) {
            return bad(
                "initial_soc_pct",
                format!("must be in 0..=100, got {}", self.initial_soc_pct),
            );
        }
        if self.serial.is_empty() || self.serial.len() > 32 || self.serial.contains('\0') {
            return bad("serial", "must be 1..=32 bytes without NUL".into());
        }
        Ok(())
    }
}

/// A reversion timer: armed by a command, runs out after `secs` unless the command is
/// refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RevertTimer {
    /// The reversion time, s (0: the command never reverts).
    pub secs: u32,
    /// Time left while armed.
    pub remaining: Option<Duration>,
}

impl RevertTimer {
    /// (Re)arms the timer for its full time (not at all when `secs` is 0).
    pub fn arm(&mut self) {
        self.remaining = (self.secs > 0).then(|| Duration::from_secs(u64::from(self.secs)));
    }

    /// Whole seconds left, rounded up (what `*RvrtRem` reports), 0 when not armed.
    pub fn remaining_secs(&self) -> u32 {
        self.remaining.map_or(0, |r| {
            let s = r.as_secs() + u64::from(r.subsec_nanos() > 0);
            u32::try_from(s).unwrap_or(u32::MAX)
        })
    }

    /// Counts `dt` down; `true` when the timer runs out within it.
    fn tick(&mut self, dt: Duration) -> bool {
        match self.remaining {
            Some(r) if r <= dt => {
                self.remaining = None;
                true
            }
            Some(r) => {
                self.remaining = Some(r - dt);
                false
            }
            None => false,
        }
    }
}

/// 704 "limit maximum active power" (`WMaxLimPct*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerLimitControl {
    /// `WMaxLimPctEna`.
    pub enabled: bool,
    /// `WMaxLimPct`, % of `w_max`.
    pub pct: f64,
    /// `WMaxLimPctRvrt`, %.
    pub revert_pct: f64,
    /// `WMaxLimPctEnaRvrt`.
    pub revert_enabled: bool,
    /// `WMaxLimPctRvrtTms` and the time left.
    pub timer: RevertTimer,
}

impl Default for PowerLimitControl {
    /// Disabled, 100 %, no reversion.
    fn default() -> Self {
        Self {
            enabled: false,
            pct: 100.0,
            revert_pct: 100.0,
            revert_enabled: false,
            timer: RevertTimer::default(),
        }
    }
}

/// 704 "set active power" (`WSet*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SetpointControl {
    /// `WSetEna`.
    pub enabled: bool,
    /// `WSetMod`.
    pub mode: SetpointMode,
    /// `WSet`, W.
    pub w: f64,
    /// `WSetRvrt`, W.
    pub revert_w: f64,
    /// `WSetPct`, % of `w_max`.
    pub pct: f64,
    /// `WSetPctRvrt`, %.
    pub revert_pct: f64,
    /// `WSetEnaRvrt`.
    pub revert_enabled: bool,
    /// `WSetRvrtTms` and the time left.
    pub timer: RevertTimer,
}

impl Default for SetpointControl {
    /// Disabled, watts, 0 W, no reversion.
    fn default() -> Self {
        Self {
            enabled: false,
            mode: SetpointMode::Watts,
            w: 0.0,
            revert_w: 0.0,
            pct: 0.0,
            revert_pct: 0.0,
            revert_enabled: false,
            timer: RevertTimer::default(),
        }
    }
}

/// The active power controls of model 704 the inverter obeys.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Controls {
    /// The maximum active power limit.
    pub limit: PowerLimitControl,
    /// The active power setpoint.
    pub setpoint: SetpointControl,
}

/// The inverter's state at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InverterState {
    /// Active power, W (positive injects into the grid, i.e. discharges).
    pub power_w: f64,
    /// Heat sink temperature, °C.
    pub temperature_c: f64,
    /// State of charge, %.
    pub soc_pct: f64,
    /// Energy injected since start, Wh.
    pub wh_injected: f64,
    /// Energy absorbed since start, Wh.
    pub wh_absorbed: f64,
    /// Ceased to energize because the grid was out of band at the last step.
    pub tripped: bool,
    /// The last grid sample seen.
    pub grid: GridSample,
    /// The 704 controls.
    pub controls: Controls,
}

impl InverterState {
    /// At rest at ambient temperature, initial SoC, no control enabled.
    pub fn initial(params: &InverterParams, grid: GridSample) -> Self {
        Self {
            power_w: 0.0,
            temperature_c: params.ambient_c,
            soc_pct: params.initial_soc_pct,
            wh_injected: 0.0,
            wh_absorbed: 0.0,
            tripped: false,
            grid,
            controls: Controls::default(),
        }
    }
}

/// The power the inverter heads for with these controls and this SoC (before the grid
/// trip): the enabled setpoint (else `default_w`), capped by the enabled limit, by `w_max`,
/// and by the battery (no injecting when empty, no absorbing when full).
pub fn effective_target_w(controls: &Controls, soc_pct: f64, params: &InverterParams) -> f64 {
    let sp = &controls.setpoint;
    let mut w = if sp.enabled {
        match sp.mode {
            SetpointMode::Watts => sp.w,
            SetpointMode::WMaxPct => sp.pct / 100.0 * params.w_max,
        }
    } else {
        params.default_w
    };
    let mut cap = params.w_max;
    if controls.limit.enabled {
        cap = cap.min(controls.limit.pct / 100.0 * params.w_max);
    }
    w = w.clamp(-cap, cap);
    if (soc_pct <= 0.0 && w > 0.0) || (soc_pct >= 100.0 && w < 0.0) {
        w = 0.0;
    }
    w
}

/// Counts the reversion timers down by `dt`; a timer that runs out reverts its control.
pub fn step_controls(mut c: Controls, dt: Duration) -> Controls {
    if c.limit.timer.tick(dt) {
        c.limit.enabled = c.limit.revert_enabled;
        c.limit.pct = c.limit.revert_pct;
    }
    if c.setpoint.timer.tick(dt) {
        let sp = &mut c.setpoint;
        sp.enabled = sp.revert_enabled;
        sp.w = sp.revert_w;
        sp.pct = sp.revert_pct;
    }
    c
}

/// The state `dt` later, with the grid as `grid` during the step (see the module's
/// invariants). Pure.
pub fn step(
    state: &InverterState,
    params: &InverterParams,
    grid: &GridSample,
    dt: Duration,
) -> InverterState {
    let secs = dt.as_secs_f64();
    let controls = step_controls(state.controls, dt);
    let tripped = !grid.in_band();
    let power_w = if tripped {
        0.0
    } else {
        let target = effective_target_w(&controls, state.soc_pct, params);
        let max_delta = params.ramp_w_per_s * secs;
        let p = state.power_w + (target - state.power_w).clamp(-max_delta, max_delta);
        p.clamp(-params.w_max, params.w_max)
    };
    // Trapezoid: the energy of the step from the mean power over it.
    let mean_w = (state.power_w + power_w) / 2.0;
    let wh = mean_w * secs / 3600.0;
    let soc_pct = (state.soc_pct - wh / params.capacity_wh * 100.0).clamp(0.0, 100.0);
    let steady = params.ambient_c + params.heat_c_per_w * power_w.abs();
    let decay = (-secs / params.tau.as_secs_f64()).exp();
    InverterState {
        power_w,
        temperature_c: steady + (state.temperature_c - steady) * decay,
        soc_pct,
        wh_injected: state.wh_injected + wh.max(0.0),
        wh_absorbed: state.wh_absorbed + (-wh).max(0.0),
        tripped,
        grid: *grid,
        controls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::grid::{sample, GridModel};

    fn setup() -> (InverterParams, InverterState, GridSample) {
        let p = InverterParams::new("SN-T");
        let g = sample(&GridModel::new(3), None, Duration::ZERO);
        let s = InverterState::initial(&p, g);
        (p, s, g)
    }

    fn run(
        mut s: InverterState,
        p: &InverterParams,
        g: &GridSample,
        n: u32,
        dt_ms: u64,
    ) -> InverterState {
        for _ in 0..n {
            s = step(&s, p, g, Duration::from_millis(dt_ms));
        }
        s
    }

    #[test]
    fn power_ramps_to_the_setpoint_within_the_limit() {
        let (p, mut s, g) = setup();
        s.controls.setpoint = SetpointControl {
            enabled: true,
            w: 8_000.0,
            ..SetpointControl::default()
        };
        // 5 kW/s: 2.5 kW after 0.5 s, exactly.
        let half = run(s, &p, &g, 5, 100);
        assert!((half.power_w - 2_500.0).abs() < 1e-9, "{}", half.power_w);
        let done = run(half, &p, &g, 20, 100);
        assert_eq!(done.power_w, 8_000.0);
        // A limit of 40 % of 10 kW caps it at 4 kW, ramping down.
        let mut limited = done;
        limited.controls.limit = PowerLimitControl {
            enabled: true,
            pct: 40.0,
            ..PowerLimitControl::default()
        };
        let one = step(&limited, &p, &g, Duration::from_millis(200));
        assert!((one.power_w - 7_000.0).abs() < 1e-9);
        assert_eq!(run(one, &p, &g, 10, 100).power_w, 4_000.0);
        // Percent mode, negative (charging).
        let mut pct = done;
        pct.controls.setpoint.mode = SetpointMode::WMaxPct;
        pct.controls.setpoint.pct = -25.0;
        assert_eq!(run(pct, &p, &g, 40, 100).power_w, -2_500.0);
    }

    #[test]
    fn revert_timers_return_to_the_reversion_values() {
        let (p, mut s, g) = setup();
        s.controls.limit = PowerLimitControl {
            enabled: true,
            pct: 20.0,
            revert_pct: 100.0,
            revert_enabled: false,
            timer: RevertTimer {
                secs: 3,
                remaining: None,
            },
        };
        s.controls.limit.timer.arm();
        s.controls.setpoint = SetpointControl {
            enabled: true,
            w: 9_000.0,
            revert_w: -1_000.0,
            revert_enabled: true,
            timer: RevertTimer {
                secs: 5,
                remaining: None,
            },
            ..SetpointControl::default()
        };
        s.controls.setpoint.timer.arm();
        let s2 = run(s, &p, &g, 29, 100);
        assert!(s2.controls.limit.enabled);
        assert_eq!(s2.controls.limit.timer.remaining_secs(), 1);
        assert_eq!(s2.power_w, 2_000.0);
        let s3 = run(s2, &p, &g, 1, 100);
        assert!(!s3.controls.limit.enabled, "limit reverted at 3 s");
        assert_eq!(s3.controls.limit.timer.remaining, None);
        let s4 = run(s3, &p, &g, 20, 100);
        assert!(s4.controls.setpoint.enabled);
        assert_eq!(s4.controls.setpoint.w, -1_000.0, "setpoint reverted at 5 s");
        assert_eq!(run(s4, &p, &g, 30, 100).power_w, -1_000.0);
        // A timer of 0 s never runs out.
        let mut t = RevertTimer {
            secs: 0,
            remaining: None,
        };
        t.arm();
        assert_eq!(t.remaining, None);
    }

    #[test]
    fn temperature_is_a_first_order_lag_of_power() {
        let (p, mut s, g) = setup();
        s.power_w = 10_000.0;
        s.controls.setpoint = SetpointControl {
            enabled: true,
            w: 10_000.0,
            ..SetpointControl::default()
        };
        // One tau: 63.2 % of the 30 °C rise, whether in 1 step or 600.
        let one = step(&s, &p, &g, Duration::from_secs(60));
        let many = run(s, &p, &g, 600, 100);
        let expected = 25.0 + 30.0 * (1.0 - (-1.0f64).exp());
        assert!((one.temperature_c - expected).abs() < 1e-9);
        assert!((many.temperature_c - expected).abs() < 1e-6);
        let hot = run(many, &p, &g, 100, 10_000);
        assert!((hot.temperature_c - 55.0).abs() < 1e-6);
    }

    #[test]
    fn soc_integrates_power_and_stays_in_range() {
        let (p, mut s, g) = setup();
        s.power_w = 10_000.0;
        s.controls.setpoint = SetpointControl {
            enabled: true,
            w: 10_000.0,
            ..SetpointControl::default()
        };
        // 10 kW for 6 min = 1 kWh = 5 % of 20 kWh.
        let d = run(s, &p, &g, 360, 1000);
        assert!((d.soc_pct - 45.0).abs() < 1e-9, "{}", d.soc_pct);
        assert!((d.wh_injected - 1_000.0).abs() < 1e-6);
        // Until empty: then it stops injecting.
        let empty = run(d, &p, &g, 4000, 1000);
        assert_eq!(empty.soc_pct, 0.0);
        let after = run(empty, &p, &g, 10, 1000);
        assert_eq!(after.power_w, 0.0);
        assert_eq!(after.soc_pct, 0.0);
    }

    #[test]
    fn out_of_band_grid_trips_at_once() {
        let (p, mut s, g) = setup();
        s.power_w = 5_000.0;
        s.controls.setpoint.enabled = true;
        s.controls.setpoint.w = 5_000.0;
        let island = GridSample { hz: 52.5, ..g };
        let t = step(&s, &p, &island, Duration::from_millis(10));
        assert!(t.tripped);
        assert_eq!(t.power_w, 0.0);
        let back = step(&t, &p, &g, Duration::from_millis(100));
        assert!(!back.tripped);
        assert!((back.power_w - 500.0).abs() < 1e-9, "ramps up again");
    }

    #[test]
    fn params_are_validated() {
        let ok = InverterParams::new("A");
        assert!(ok.validate().is_ok());
        let cases: Vec<(&str, InverterParams)> = vec![
            (
                "w_max",
                InverterParams {
                    w_max: 0.0,
                    ..ok.clone()
                },
            ),
            (
                "ramp_w_per_s",
                InverterParams {
                    ramp_w_per_s: f64::NAN,
                    ..ok.clone()
                },
            ),
            (
                "default_w",
                InverterParams {
                    default_w: 20_000.0,
                    ..ok.clone()
                },
            ),
            (
                "tau",
                InverterParams {
                    tau: Duration::ZERO,
                    ..ok.clone()
                },
            ),
            (
                "initial_soc_pct",
                InverterParams {
                    initial_soc_pct: 101.0,
                    ..ok.clone()
                },
            ),
            (
                "serial",
                InverterParams {
                    serial: String::new(),
                    ..ok.clone()
                },
            ),
        ];
        for (field, p) in cases {
            match p.validate() {
                Err(SimError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    proptest::proptest! {
        /// Whatever the controls, the grid and the steps: power within ±w_max and moving by
        /// at most ramp × dt (unless tripped to 0), SoC within 0..=100, temperature between
        /// the ambient and the hottest steady state, energies never decreasing.
        #[test]
        fn step_keeps_its_invariants(
            sp_w in -20_000.0f64..20_000.0,
            sp_pct in -150.0f64..150.0,
            pct_mode in proptest::bool::ANY,
            lim in 0.0f64..100.0,
            lim_on in proptest::bool::ANY,
            soc in 0.0f64..=100.0,
            hz in 45.0f64..55.0,
            steps in proptest::collection::vec(1u64..5_000, 1..40),
        ) {
            let (p, mut s, g) = setup();
            s.soc_pct = soc;
            s.controls.setpoint = SetpointControl {
                enabled: true,
                mode: if pct_mode { SetpointMode::WMaxPct } else { SetpointMode::Watts },
                w: sp_w,
                pct: sp_pct,
                timer: RevertTimer { secs: 3, remaining: Some(Duration::from_secs(3)) },
                ..SetpointControl::default()
            };
            s.controls.limit.enabled = lim_on;
            s.controls.limit.pct = lim;
            let g = GridSample { hz, ..g };
            for ms in steps {
                let dt = Duration::from_millis(ms);
                let n = step(&s, &p, &g, dt);
                proptest::prop_assert!(n.power_w.abs() <= p.w_max);
                if n.tripped {
                    proptest::prop_assert_eq!(n.power_w, 0.0);
                } else {
                    let max = p.ramp_w_per_s * dt.as_secs_f64() + 1e-9;
                    proptest::prop_assert!((n.power_w - s.power_w).abs() <= max);
                }
                if lim_on && !n.tripped && n.controls.limit.enabled {
                    let cap = lim / 100.0 * p.w_max;
                    proptest::prop_assert!(
                        n.power_w.abs() <= s.power_w.abs().max(cap) + 1e-9,
                        "the limit is never crossed outward"
                    );
                }
                proptest::prop_assert!((0.0..=100.0).contains(&n.soc_pct));
                proptest::prop_assert!(n.temperature_c >= p.ambient_c - 1e-9);
                proptest::prop_assert!(n.temperature_c <= p.ambient_c + p.heat_c_per_w * p.w_max + 1e-9);
                proptest::prop_assert!(n.wh_injected >= s.wh_injected && n.wh_absorbed >= s.wh_absorbed);
                proptest::prop_assert_eq!(n, step(&s, &p, &g, dt), "deterministic");
                s = n;
            }
        }
    }
}
