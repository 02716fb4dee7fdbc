//! Flexibility forecasts, pure (time is an argument): over a horizon cut into steps, how
//! many kW a scope can take (charge) and give (discharge) and how much energy it can deliver,
//! from its vehicles and its transformers. An aggregator bids this before it dispatches.
//!
//! Every step is measured from now (offset `0`) and assumes no other dispatch before it:
//!
//! - **Power** (`charge_kw`, `discharge_kw`) is what the scope can hold over the whole step,
//!   from the vehicles present for the whole step (a vehicle leaving before the step's end
//!   contributes nothing to it): per vehicle the least of its own and its charger's limits
//!   and the power that its energy allows over the step (to 100 % when charging; down to its
//!   floor when discharging); per segment the least of that sum, the transformer's thermal
//!   cap ([`thermal_cap_kw`]) and the segment's safe state (Limited caps both ways,
//!   ChargeOnly gives no discharge, Tripped nothing).
//! - **Energy** (`charge_kwh`, `discharge_kwh`) is the most the scope can deliver from now to
//!   the step's end: per vehicle its energy room, bounded by its power over the time it is
//!   present; per segment bounded by the thermal and safe-state cap held that long.
//!
//! A vehicle's floor is the highest of its minimum SoC (the contract's or the V2X minimum,
//! `min_soc_pct`) and its departure floor at the step's end (the SoC from which its target is
//! still reachable by departure at its charge limit). A vehicle whose SoC or capacity is not
//! a usable number contributes nothing and is counted in `excluded`: a missing reading is
//! never taken as an empty or a full battery.
//!
//! Not modelled: the load besides our devices (the building, PV) at the transformer, which
//! the site's closed loop corrects, and arrivals yet to come.

use serde::Serialize;

use crate::ladder::SafeState;
use crate::session::{ENERGY_GUARD_KWH, SECONDS_PER_HOUR};
use crate::thermal::ThermalParams;

/// The most steps one forecast has.
pub const MAX_STEPS: usize = 2_000;
/// The longest horizon, seconds (7 days, as far as a request may be scheduled).
pub const MAX_HORIZON_S: f64 = 7.0 * 86_400.0;
/// The shortest step, seconds.
pub const MIN_STEP_S: f64 = 1.0;

/// One vehicle as the forecast needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct VehicleFlex {
    /// State of charge now, %.
    pub soc_pct: f64,
    /// Battery capacity, kWh.
    pub capacity_kwh: f64,
    /// The contract's or the V2X minimum SoC, %.
    pub min_soc_pct: f64,
    /// The SoC promised at departure, %.
    pub target_soc_pct: f64,
    /// Seconds from now until it leaves (infinite: unknown, stays).
    pub depart_in_s: f64,
    /// Most it charges at (vehicle and EV limits), kW.
    pub max_charge_kw: f64,
    /// Most it discharges at, kW (0 without V2G).
    pub max_discharge_kw: f64,
    /// Its charger's rating, kW (bidirectional or not: see `max_discharge_kw`).
    pub charger_kw: f64,
}

/// One transformer segment as the forecast needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentFlex {
    /// The vehicles plugged in now.
    pub vehicles: Vec<VehicleFlex>,
    /// The transformer's thermal model parameters.
    pub thermal: ThermalParams,
    /// Its hot spot now, °C.
    pub hot_spot_c: f64,
    /// Its safe state now.
    pub level: SafeState,
}

/// One step of a forecast.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FlexStep {
    /// Start, seconds from now.
    pub start_s: f64,
    /// End, seconds from now.
    pub end_s: f64,
    /// Charge power the scope can hold over the step, kW (>= 0).
    pub charge_kw: f64,
    /// Discharge power the scope can hold over the step, kW (>= 0, a magnitude).
    pub discharge_kw: f64,
    /// Most energy the scope can take from now to the step's end, kWh.
    pub charge_kwh: f64,
    /// Most energy the scope can give from now to the step's end, kWh.
    pub discharge_kwh: f64,
    /// Vehicles present for the whole step.
    pub vehicles: usize,
}

/// A forecast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    /// Its steps, in order.
    pub steps: Vec<FlexStep>,
    /// Vehicles left out for an unusable SoC or capacity.
    pub excluded: usize,
}

/// Why a forecast was refused: the parameter and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[error("{param}: {message}")]
pub struct FlexError {
    /// The parameter.
    pub param: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The steps of `horizon_s` cut by `step_s` (the last may be shorter), or why not.
pub fn steps(horizon_s: f64, step_s: f64) -> Result<Vec<(f64, f64)>, FlexError> {
    let bad = |param, message| Err(FlexError { param, message });
    if !(horizon_s.is_finite() && horizon_s > 0.0 && horizon_s <= MAX_HORIZON_S) {
        return bad(
            "horizon_s",
            format!("{horizon_s} is not within (0, {MAX_HORIZON_S}] s"),
        );
    }
    if !(step_s.is_finite() && (MIN_STEP_S..=horizon_s).contains(&step_s)) {
        return bad(
            "step_s",
            format!("{step_s} is not within [{MIN_STEP_S}, horizon_s = {horizon_s}] s"),
        );
    }
    let n = (horizon_s / step_s).ceil();
    if n > MAX_STEPS as f64 {
        return bad(
            "step_s",
            format!("{n} steps of {step_s} s over {horizon_s} s; at most MAX_STEPS = {MAX_STEPS}"),
        );
    }
    Ok((0..n as usize)
        .map(|i| (i as f64 * step_s, ((i + 1) as f64 * step_s).min(horizon_s)))
        .collect())
}

/// The forecast of `segments` over `horizon_s` in steps of `step_s`.
pub fn forecast(
    segments: &[SegmentFlex],
    horizon_s: f64,
    step_s: f64,
) -> Result<Forecast, FlexError> {
    let cuts = steps(horizon_s, step_s)?;
    let excluded = segments
        .iter()
        .flat_map(|s| &s.vehicles)
        .filter(|v| !usable(v))
        .count();
    let steps = cuts
        .into_iter()
        .map(|(t0, t1)| {
            let mut sum = FlexStep {
                start_s: t0,
                end_s: t1,
                charge_kw: 0.0,
                discharge_kw: 0.0,
                charge_kwh: 0.0,
                discharge_kwh: 0.0,
                vehicles: 0,
            };
            for s in segments {
                let x = segment_step(s, t0, t1);
                sum.charge_kw += x.charge_kw;
                sum.discharge_kw += x.discharge_kw;
                sum.charge_kwh += x.charge_kwh;
                sum.discharge_kwh += x.discharge_kwh;
                sum.vehicles += x.vehicles;
            }
            sum
        })
        .collect();
    Ok(Forecast { steps, excluded })
}

fn usable(v: &VehicleFlex) -> bool {
    v.soc_pct.is_finite()
        && (0.0..=100.0).contains(&v.soc_pct)
        && v.capacity_kwh.is_finite()
        && v.capacity_kwh > 0.0
}

/// One segment over the step `[t0, t1]` (seconds from now).
fn segment_step(s: &SegmentFlex, t0: f64, t1: f64) -> FlexStep {
    let mut x = FlexStep {
        start_s: t0,
        end_s: t1,
        charge_kw: 0.0,
        discharge_kw: 0.0,
        charge_kwh: 0.0,
        discharge_kwh: 0.0,
        vehicles: 0,
    };
    for v in s.vehicles.iter().filter(|v| usable(v)) {
        let (ch, dis) = vehicle_power(v, t1);
        if v.depart_in_s >= t1 {
            x.charge_kw += ch;
            x.discharge_kw += dis;
            x.vehicles += 1;
        }
        let (ech, edis) = vehicle_energy(v, t1);
        x.charge_kwh += ech;
        x.discharge_kwh += edis;
    }
    // The transformer, held from now to the step's end, and the safe state.
    let thermal = thermal_cap_kw(&s.thermal, s.hot_spot_c, t1);
    let (cap_ch, cap_dis) = match s.level {
        SafeState::Normal => (thermal, thermal),
        SafeState::Limited { cap_kw } => (thermal.min(cap_kw), thermal.min(cap_kw)),
        SafeState::ChargeOnly => (thermal, 0.0),
        SafeState::Tripped => (0.0, 0.0),
    };
    x.charge_kw = x.charge_kw.min(cap_ch);
    x.discharge_kw = x.discharge_kw.min(cap_dis);
    x.charge_kwh = x.charge_kwh.min(cap_ch * t1 / SECONDS_PER_HOUR);
    x.discharge_kwh = x.discharge_kwh.min(cap_dis * t1 / SECONDS_PER_HOUR);
    x
}

/// The vehicle's floor at `t` seconds from now, %: its minimum SoC or its departure floor.
pub fn floor_pct(v: &VehicleFlex, t: f64) -> f64 {
    let hours = (v.depart_in_s - t) / SECONDS_PER_HOUR;
    // At the departure itself the floor is the target: no time is left to charge.
    let departure = if hours.is_finite() && hours >= 0.0 {
        v.target_soc_pct - v.max_charge_kw.max(0.0) * hours / v.capacity_kwh * 100.0
    } else {
        0.0
    };
    v.min_soc_pct.max(departure).clamp(0.0, 100.0)
}

fn energy_kwh(v: &VehicleFlex, low_pct: f64, high_pct: f64) -> f64 {
    ((high_pct - low_pct) / 100.0 * v.capacity_kwh - ENERGY_GUARD_KWH).max(0.0)
}

/// The power the vehicle can hold from now to `t1` from its SoC now: (charge, discharge) kW.
fn vehicle_power(v: &VehicleFlex, t1: f64) -> (f64, f64) {
    // Held from now to t1 (the step's own power: no dispatch before it), so t0 does not
    // enter: a vehicle's energy bounds the power held over [0, t1].
    let hours = t1 / SECONDS_PER_HOUR;
    let ch = v.max_charge_kw.min(v.charger_kw).max(0.0);
    let dis = v.max_discharge_kw.min(v.charger_kw).max(0.0);
    let room_ch = energy_kwh(v, v.soc_pct, 100.0) / hours;
    let room_dis = energy_kwh(v, floor_pct(v, t1), v.soc_pct) / hours;
    (ch.min(room_ch), dis.min(room_dis))
}

/// The energy the vehicle can take and give from now to `t1` (to its departure if earlier).
fn vehicle_energy(v: &VehicleFlex, t1: f64) -> (f64, f64) {
    let present = t1.min(v.depart_in_s).max(0.0) / SECONDS_PER_HOUR;
    let ch = v.max_charge_kw.min(v.charger_kw).max(0.0);
    let dis = v.max_discharge_kw.min(v.charger_kw).max(0.0);
    let end = t1.min(v.depart_in_s);
    (
        energy_kwh(v, v.soc_pct, 100.0).min(ch * present),
        energy_kwh(v, floor_pct(v, end), v.soc_pct).min(dis * present),
    )
}

/// The most power (kW, magnitude) the transformer can carry held from now for `t` seconds
/// without its hot spot passing its limit, from its hot spot now (the model of
/// [`crate::thermal`]): with `L = limit − ambient`, `r₀ = hot spot − ambient` and
/// `e = exp(−t/τ)`, the steady rise may be `(L − r₀·e) / (1 − e)`, and the power is
/// `rated · √(rise / rated_rise)`. It tends to the allowance for long `t`; 0 when the hot
/// spot is already at the limit and `t` is short.
pub fn thermal_cap_kw(p: &ThermalParams, hot_spot_c: f64, t: f64) -> f64 {
    let l = p.limit_c - p.ambient_c;
    let r0 = if hot_spot_c.is_finite() {
        (hot_spot_c - p.ambient_c).max(0.0)
    } else {
        l
    };
    let e = (-t.max(0.0) / p.time_constant_s).exp();
    if 1.0 - e <= f64::EPSILON {
        return if r0 < l { f64::INFINITY } else { 0.0 };
    }
    let rise = ((l - r0 * e) / (1.0 - e)).max(0.0);
    p.rated_kw * (rise / p.rated_rise_c).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 60 kWh at 50 %, floor 20 %, target 80 %, 11 kW both ways, leaves in 4 h.
    fn ev() -> VehicleFlex {
        VehicleFlex {
            soc_pct: 50.0,
            capacity_kwh: 60.0,
            min_soc_pct: 20.0,
            target_soc_pct: 80.0,
            depart_in_s: 4.0 * 3600.0,
            max_charge_kw: 11.0,
            max_discharge_kw: 11.0,
            charger_kw: 22.0,
        }
    }

    /// rated 100 kW, τ 1 h, ambient 20 °C, rated rise 60 °C, limit 110 °C: L = 90 °C, the
    /// allowance is 100 · √(90/60) = 122.47 kW.
    fn params() -> ThermalParams {
        ThermalParams {
            rated_kw: 100.0,
            time_constant_s: 3600.0,
            ambient_c: 20.0,
            rated_rise_c: 60.0,
            limit_c: 110.0,
        }
    }

    fn seg(vehicles: Vec<VehicleFlex>, level: SafeState) -> SegmentFlex {
        SegmentFlex {
            vehicles,
            thermal: params(),
            hot_spot_c: 20.0,
            level,
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-3, "{a} != {b}");
    }

    #[test]
    fn one_vehicle_by_hand() {
        let f = forecast(&[seg(vec![ev()], SafeState::Normal)], 3.0 * 3600.0, 3600.0).unwrap();
        assert_eq!(f.steps.len(), 3);
        let s = f.steps[0];
        // Step 1 [0, 1 h]: charge room (100 − 50) % of 60 kWh = 30 kWh over 1 h = 30 kW,
        // above 11 kW: 11 kW. Departure floor at 1 h: 3 h left at 11 kW = 33 kWh = 55 %,
        // 80 − 55 = 25 % > 20 %: floor 25 %, room (50 − 25) % = 15 kWh over 1 h: 11 kW.
        close(s.charge_kw, 11.0);
        close(s.discharge_kw, 11.0);
        // Energy to 1 h: min(30, 11 · 1) = 11 kWh both ways (15 kWh room > 11).
        close(s.charge_kwh, 11.0);
        close(s.discharge_kwh, 11.0);
        // Step 3 [2 h, 3 h]: departure floor at 3 h: 1 h left, 11 kWh = 18.33 %,
        // 80 − 18.33 = 61.67 % > 50 %: nothing to give. Charge: 30 kWh over 3 h = 10 kW.
        let s = f.steps[2];
        close(s.discharge_kw, 0.0);
        close(s.discharge_kwh, 0.0);
        close(s.charge_kw, 30.0 / 3.0 - ENERGY_GUARD_KWH / 3.0);
        // Energy to 3 h: min(30 kWh room, 11 kW · 3 h = 33 kWh) = 30 kWh.
        close(s.charge_kwh, 30.0 - ENERGY_GUARD_KWH);
        assert_eq!(f.excluded, 0);
    }

    #[test]
    fn departures_floors_and_bad_readings() {
        // Leaves at 30 min: in [0, 1 h] it contributes no power (not there the whole step)
        // but the energy of its half hour: 11 kW · 0.5 h = 5.5 kWh (room 30 kWh).
        let mut early = ev();
        early.depart_in_s = 1800.0;
        // V2X minimum 45 %: (50 − 45) % of 60 kWh = 3 kWh over 1 h = 3 kW.
        let mut high_floor = ev();
        high_floor.min_soc_pct = 45.0;
        high_floor.depart_in_s = f64::INFINITY;
        // Unknown SoC: nothing, counted.
        let mut unknown = ev();
        unknown.soc_pct = f64::NAN;
        let f = forecast(
            &[seg(vec![early, high_floor, unknown], SafeState::Normal)],
            3600.0,
            3600.0,
        )
        .unwrap();
        let s = f.steps[0];
        assert_eq!((s.vehicles, f.excluded), (1, 1));
        close(s.discharge_kw, 3.0 - ENERGY_GUARD_KWH);
        // Charge: high_floor 11 kW (power); energy 11 (high_floor) + 5.5 (early) kWh.
        close(s.charge_kw, 11.0);
        close(s.charge_kwh, 16.5);
        // Discharge energy: early's floor at its departure is max(20, 80 − 0) = 80 % > 50 %:
        // 0; high_floor 3 kWh.
        close(s.discharge_kwh, 3.0 - ENERGY_GUARD_KWH);
    }

    #[test]
    fn safe_state_and_the_transformer_cap() {
        let many = vec![ev(); 20]; // 20 × 11 kW = 220 kW each way over a short step
        let at = |level, hot| {
            let mut s = seg(many.clone(), level);
            s.hot_spot_c = hot;
            forecast(&[s], 60.0, 60.0).unwrap().steps[0]
        };
        // Cold transformer over 60 s: e = exp(−1/60) = 0.98347, rise = 90 / 0.016529 =
        // 5445 °C, cap 100 · √(5445/60) = 952.6 kW: the vehicles' 220 kW stand.
        close(at(SafeState::Normal, 20.0).charge_kw, 220.0);
        // Limited to 50 kW both ways; ChargeOnly gives nothing; Tripped nothing at all.
        let l = at(SafeState::Limited { cap_kw: 50.0 }, 20.0);
        close(l.charge_kw, 50.0);
        close(l.discharge_kw, 50.0);
        // Energy to 60 s under 50 kW: 50 · 60 / 3600 = 0.8333 kWh.
        close(l.charge_kwh, 50.0 / 60.0);
        let c = at(SafeState::ChargeOnly, 20.0);
        assert_eq!((c.discharge_kw, c.discharge_kwh), (0.0, 0.0));
        close(c.charge_kw, 220.0);
        let t = at(SafeState::Tripped, 20.0);
        assert_eq!((t.charge_kw, t.discharge_kw), (0.0, 0.0));
        // At the limit (110 °C): r₀ = L = 90, rise = (90 − 90e)/(1 − e) = 90: the allowance,
        // 122.47 kW, both ways.
        let hot = at(SafeState::Normal, 110.0);
        close(hot.charge_kw, 100.0 * 1.5f64.sqrt());
        close(hot.discharge_kw, 100.0 * 1.5f64.sqrt());
        // Above the limit (120 °C): r₀ = 100, rise = (90 − 100 · 0.98347) / 0.016529 < 0: 0.
        close(at(SafeState::Normal, 120.0).charge_kw, 0.0);
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let param = |h, s| forecast(&[], h, s).unwrap_err().param;
        assert_eq!(param(0.0, 1.0), "horizon_s");
        assert_eq!(param(f64::NAN, 1.0), "horizon_s");
        assert_eq!(param(MAX_HORIZON_S * 2.0, 60.0), "horizon_s");
        assert_eq!(param(3600.0, 0.5), "step_s");
        assert_eq!(param(3600.0, 7200.0), "step_s");
        assert_eq!(param(MAX_HORIZON_S, 60.0), "step_s"); // 10080 steps > MAX_STEPS
                                                          // The last step is shorter: 90 s in 60 s steps is [0, 60], [60, 90].
        assert_eq!(steps(90.0, 60.0).unwrap(), vec![(0.0, 60.0), (60.0, 90.0)]);
    }
}
