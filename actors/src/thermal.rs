//! A first-order thermal model of a segment's transformer hot spot (after IEC 60076-7,
//! simplified to one time constant).
//!
//! The hot spot sits `rise` degrees above ambient. Under a constant load the rise approaches
//! its steady-state value
//!
//! ```text
//! rise_ss = rated_rise_c · (|load_kw| / rated_kw)²
//! ```
//!
//! exponentially with the time constant `τ`: over a step of `dt`,
//! `rise ← rise_ss + (rise − rise_ss) · e^(−dt/τ)`. The update is the exact solution of the
//! first-order ODE for a load held constant over the step, so one step of `dt` equals two steps
//! of `dt/2`, and the model does not depend on how often it is stepped.
//!
//! Loading is by apparent power, so exporting heats the windings exactly as much as importing:
//! only `|load_kw|` matters.
//!
//! Invariants:
//! - The parameters are validated once ([`TransformerThermal::new`], and again when a
//!   checkpoint is restored): every value finite, `rated_kw`, `time_constant_s` and
//!   `rated_rise_c` positive, `limit_c` above `ambient_c`. With valid parameters the hot spot
//!   stays finite whatever load is fed in.
//! - A load reading that is not a number is not trusted to be small: it is taken as
//!   [`NONFINITE_LOAD_PU`] times rated (pessimistic, so a broken meter drives the segment
//!   towards its limit and the ladder limits it), and any load is capped at [`MAX_LOAD_PU`]
//!   times rated so that an absurd reading cannot overflow the model.
//! - [`TransformerThermal::headroom`] is in `[0, 1]`: 1 at (or below) ambient, 0 at (or above)
//!   the limit, linear in between, so it falls monotonically as the hot spot rises.
//! - [`TransformerThermal::allowance_kw`] is the steady load that holds the hot spot exactly at
//!   the limit; it is what the ladder caps the segment to (`Fault::TransformerLimit`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ladder::Fault;

/// The model is "at its limit" once the hot spot is within this many °C of `limit_c`, so the
/// ladder starts limiting just before the limit rather than just after it.
pub const LIMIT_MARGIN_C: f64 = 1.0;

/// A load reading that is not a finite number is taken as this multiple of rated power:
/// when the meter cannot be trusted, assume an overload rather than an idle transformer.
pub const NONFINITE_LOAD_PU: f64 = 2.0;

/// Loads beyond this multiple of rated power are taken as this multiple (a real transformer's
/// protection would have opened long before); keeps the squared loading finite.
pub const MAX_LOAD_PU: f64 = 10.0;

/// The transformer's thermal parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThermalParams {
    /// Rated (nameplate) power, kW; positive.
    pub rated_kw: f64,
    /// The thermal time constant, seconds; positive.
    pub time_constant_s: f64,
    /// Ambient temperature, °C.
    pub ambient_c: f64,
    /// Hot-spot rise above ambient at rated load, in steady state, °C; positive.
    pub rated_rise_c: f64,
    /// The hot-spot limit, °C; above `ambient_c`.
    pub limit_c: f64,
}

/// Why thermal parameters (or a restored checkpoint) were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ThermalError {
    /// A parameter is out of its domain.
    #[error("thermal parameter `{name}` is {value}, but must be {requirement}")]
    InvalidParam {
        /// The field's name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What it must be.
        requirement: &'static str,
    },
    /// A restored hot-spot temperature is not a finite number.
    #[error("restored hot-spot temperature is {0} °C, but must be a finite number")]
    InvalidHotSpot(f64),
}

impl ThermalParams {
    /// Check every field; the error names the first field that is wrong.
    pub fn validate(&self) -> Result<(), ThermalError> {
        let positive = |name: &'static str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(ThermalError::InvalidParam {
                    name,
                    value,
                    requirement: "a finite number above 0",
                })
            }
        };
        positive("rated_kw", self.rated_kw)?;
        positive("time_constant_s", self.time_constant_s)?;
        positive("rated_rise_c", self.rated_rise_c)?;
        if !self.ambient_c.is_finite() {
            return Err(ThermalError::InvalidParam {
                name: "ambient_c",
                value: self.ambient_c,
                requirement: "a finite number",
            });
        }
        if !(self.limit_c.is_finite() && self.limit_c > self.ambient_c) {
            return Err(ThermalError::InvalidParam {
                name: "limit_c",
                value: self.limit_c,
                requirement: "a finite number above ambient_c",
            });
        }
        Ok(())
    }

    /// Steady-state hot-spot rise above ambient for a load, °C (see the module docs for how
    /// non-finite and absurd loads are taken).
    fn steady_rise_c(&self, load_kw: f64) -> f64 {
        let pu = if load_kw.is_finite() {
            (load_kw.abs() / self.rated_kw).min(MAX_LOAD_PU)
        } else {
            NONFINITE_LOAD_PU
        };
        self.rated_rise_c * pu * pu
    }
}

/// The hot-spot model of one transformer. Checkpointed: it serializes its parameters and
/// hot-spot temperature, and deserializing validates both.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransformerThermal {
    params: ThermalParams,
    hot_spot_c: f64,
}

impl TransformerThermal {
    /// A model at ambient temperature, or the reason the parameters are refused.
    pub fn new(params: ThermalParams) -> Result<Self, ThermalError> {
        params.validate()?;
        Ok(TransformerThermal {
            params,
            hot_spot_c: params.ambient_c,
        })
    }

    /// The parameters.
    pub fn params(&self) -> &ThermalParams {
        &self.params
    }

    /// Advance the model by `dt` with `load_kw` (kW, either sign) held over the step.
    pub fn step(&mut self, load_kw: f64, dt: Duration) {
        let p = &self.params;
        let target_c = p.ambient_c + p.steady_rise_c(load_kw);
        let decay = (-dt.as_secs_f64() / p.time_constant_s).exp();
        self.hot_spot_c = target_c + (self.hot_spot_c - target_c) * decay;
    }

    /// The hot-spot temperature, °C.
    pub fn hot_spot_c(&self) -> f64 {
        self.hot_spot_c
    }

    /// How far the hot spot is from its limit, from 1 (at or below ambient) to 0 (at or above
    /// the limit), linear in the temperature.
    pub fn headroom(&self) -> f64 {
        let p = &self.params;
        ((p.limit_c - self.hot_spot_c) / (p.limit_c - p.ambient_c)).clamp(0.0, 1.0)
    }

    /// True once the hot spot is within [`LIMIT_MARGIN_C`] of the limit.
    pub fn at_limit(&self) -> bool {
        self.hot_spot_c >= self.params.limit_c - LIMIT_MARGIN_C
    }

    /// The steady load (kW, magnitude) that would hold the hot spot exactly at the limit:
    /// `rated_kw · √((limit_c − ambient_c) / rated_rise_c)`; always positive.
    pub fn allowance_kw(&self) -> f64 {
        let p = &self.params;
        p.rated_kw * ((p.limit_c - p.ambient_c) / p.rated_rise_c).sqrt()
    }

    /// The observation for the segment's ladder: the allowance while at the limit, `None`
    /// below it.
    pub fn fault(&self) -> Fault {
        Fault::TransformerLimit(self.at_limit().then(|| self.allowance_kw()))
    }
}

impl fmt::Display for TransformerThermal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hot spot {:.1} °C (limit {:.1} °C, headroom {:.0} %)",
            self.hot_spot_c,
            self.params.limit_c,
            self.headroom() * 100.0
        )
    }
}

impl<'de> Deserialize<'de> for TransformerThermal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Checkpoint {
            params: ThermalParams,
            hot_spot_c: f64,
        }
        let c = Checkpoint::deserialize(deserializer)?;
        let mut model = TransformerThermal::new(c.params).map_err(serde::de::Error::custom)?;
        if !c.hot_spot_c.is_finite() {
            return Err(serde::de::Error::custom(ThermalError::InvalidHotSpot(
                c.hot_spot_c,
            )));
        }
        model.hot_spot_c = c.hot_spot_c;
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 MW distribution transformer: 60 K rise at rated load over 30 °C ambient, limit
    /// 120 °C, 30 min time constant.
    fn params() -> ThermalParams {
        ThermalParams {
            rated_kw: 1000.0,
            time_constant_s: 1800.0,
            ambient_c: 30.0,
            rated_rise_c: 60.0,
            limit_c: 120.0,
        }
    }

    fn model() -> TransformerThermal {
        TransformerThermal::new(params()).expect("valid parameters")
    }

    /// A way to break the parameters, and the field it breaks.
    type Breaker = (fn(&mut ThermalParams), &'static str);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn starts_at_ambient_with_full_headroom() {
        let m = model();
        assert_eq!(m.hot_spot_c(), 30.0);
        assert_eq!(m.headroom(), 1.0);
        assert!(!m.at_limit());
        assert_eq!(m.fault(), Fault::TransformerLimit(None));
    }

    #[test]
    fn rated_load_settles_at_ambient_plus_rated_rise() {
        let mut m = model();
        for _ in 0..(20 * 60) {
            m.step(1000.0, secs(30.0)); // 10 h = 20 τ
        }
        assert!((m.hot_spot_c() - 90.0).abs() < 1e-6, "{}", m.hot_spot_c());
        assert!((m.headroom() - 1.0 / 3.0).abs() < 1e-6);
        assert!(!m.at_limit());
    }

    #[test]
    fn one_time_constant_covers_63_percent() {
        let mut m = model();
        m.step(1000.0, secs(1800.0));
        let expected = 30.0 + 60.0 * (1.0 - (-1.0f64).exp());
        assert!((m.hot_spot_c() - expected).abs() < 1e-9);
    }

    #[test]
    fn export_heats_as_much_as_import() {
        let (mut import, mut export) = (model(), model());
        import.step(800.0, secs(600.0));
        export.step(-800.0, secs(600.0));
        assert_eq!(import.hot_spot_c(), export.hot_spot_c());
        assert!(import.hot_spot_c() > 30.0);
    }

    #[test]
    fn overload_reaches_the_limit_and_reports_the_allowance() {
        let mut m = model();
        // 1.5 pu: steady rise 135 K, hot spot would settle at 165 °C.
        let mut minutes = 0;
        while !m.at_limit() {
            m.step(1500.0, secs(60.0));
            minutes += 1;
            assert!(minutes < 600, "never reached the limit: {m}");
        }
        assert!(m.hot_spot_c() >= 119.0 && m.hot_spot_c() < 122.5, "{m}");
        assert!(m.headroom() <= LIMIT_MARGIN_C / 90.0 + 1e-12);
        let allowance = m.allowance_kw();
        // √(90 / 60) pu of 1 MW.
        assert!((allowance - 1000.0 * 1.5f64.sqrt()).abs() < 1e-9);
        assert_eq!(m.fault(), Fault::TransformerLimit(Some(allowance)));
        // Held at the allowance, the hot spot settles at the limit itself.
        for _ in 0..(20 * 30) {
            m.step(allowance, secs(60.0));
        }
        assert!((m.hot_spot_c() - 120.0).abs() < 1e-6, "{m}");
        assert!(m.at_limit());
    }

    #[test]
    fn cooling_below_the_margin_clears_the_fault() {
        let mut m = model();
        m.step(3000.0, secs(3600.0));
        assert!(m.at_limit());
        m.step(0.0, secs(3600.0));
        assert!(!m.at_limit());
        assert_eq!(m.fault(), Fault::TransformerLimit(None));
    }

    #[test]
    fn a_nonfinite_load_is_taken_as_an_overload() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let (mut m, mut reference) = (model(), model());
            m.step(bad, secs(900.0));
            reference.step(NONFINITE_LOAD_PU * 1000.0, secs(900.0));
            assert_eq!(m.hot_spot_c(), reference.hot_spot_c());
        }
        let mut m = model();
        m.step(f64::NAN, secs(1e6));
        assert!(m.at_limit());
    }

    #[test]
    fn absurd_loads_stay_finite() {
        let mut m = model();
        m.step(f64::MAX, Duration::MAX);
        assert!(m.hot_spot_c().is_finite());
        assert_eq!(m.hot_spot_c(), 30.0 + 60.0 * MAX_LOAD_PU * MAX_LOAD_PU);
        m.step(0.0, Duration::MAX);
        assert_eq!(m.hot_spot_c(), 30.0);
        m.step(1e-300, Duration::ZERO);
        assert_eq!(m.hot_spot_c(), 30.0);
    }

    #[test]
    fn invalid_parameters_are_refused_by_name() {
        let cases: [Breaker; 7] = [
            (|p| p.rated_kw = 0.0, "rated_kw"),
            (|p| p.rated_kw = f64::NAN, "rated_kw"),
            (|p| p.time_constant_s = -1.0, "time_constant_s"),
            (|p| p.rated_rise_c = f64::INFINITY, "rated_rise_c"),
            (|p| p.ambient_c = f64::NAN, "ambient_c"),
            (|p| p.limit_c = 30.0, "limit_c"),
            (|p| p.limit_c = f64::NAN, "limit_c"),
        ];
        for (break_it, field) in cases {
            let mut p = params();
            break_it(&mut p);
            match TransformerThermal::new(p) {
                Err(e @ ThermalError::InvalidParam { name, .. }) => {
                    assert_eq!(name, field);
                    assert!(e.to_string().contains(field));
                }
                other => panic!("{field}: expected an error, got {other:?}"),
            }
        }
    }

    #[test]
    fn checkpoints_round_trip_and_corrupt_ones_are_refused() {
        let mut m = model();
        m.step(1200.0, secs(1234.5));
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            serde_json::from_str::<TransformerThermal>(&json).unwrap(),
            m
        );
        let packed = rmp_serde::to_vec_named(&m).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<TransformerThermal>(&packed).unwrap(),
            m
        );
        let bad_params = json.replace("\"rated_kw\":1000.0", "\"rated_kw\":-5.0");
        assert_ne!(bad_params, json);
        let err = serde_json::from_str::<TransformerThermal>(&bad_params).unwrap_err();
        assert!(err.to_string().contains("rated_kw"), "{err}");
        let bad_hot_spot = serde_json::json!({ "params": params(), "hot_spot_c": null });
        assert!(serde_json::from_value::<TransformerThermal>(bad_hot_spot).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn params() -> impl Strategy<Value = ThermalParams> {
        (
            1.0f64..5000.0,
            1.0f64..20_000.0,
            -30.0f64..45.0,
            5.0f64..100.0,
            1.0f64..150.0,
        )
            .prop_map(|(rated_kw, tau, ambient_c, rise, above)| ThermalParams {
                rated_kw,
                time_constant_s: tau,
                ambient_c,
                rated_rise_c: rise,
                limit_c: ambient_c + above,
            })
    }

    proptest! {
        /// The update is the exact exponential: one step of dt equals two of dt/2.
        #[test]
        fn stepping_is_exact(p in params(), load in -3.0f64..3.0, warm in 0.0f64..3.0,
                             dt in 0.0f64..10_000.0) {
            let mut a = TransformerThermal::new(p).unwrap();
            a.step(warm * p.rated_kw, Duration::from_secs(3600));
            let mut b = a.clone();
            a.step(load * p.rated_kw, Duration::from_secs_f64(dt));
            b.step(load * p.rated_kw, Duration::from_secs_f64(dt / 2.0));
            b.step(load * p.rated_kw, Duration::from_secs_f64(dt / 2.0));
            let scale = a.hot_spot_c().abs().max(1.0);
            prop_assert!((a.hot_spot_c() - b.hot_spot_c()).abs() <= 1e-9 * scale);
        }

        /// Any constant load settles at ambient + rated_rise · (load / rated)².
        #[test]
        fn steady_state_is_reached(p in params(), load in -3.0f64..3.0, start in 0.0f64..3.0) {
            let mut m = TransformerThermal::new(p).unwrap();
            m.step(start * p.rated_kw, Duration::from_secs_f64(p.time_constant_s));
            for _ in 0..40 {
                m.step(load * p.rated_kw, Duration::from_secs_f64(p.time_constant_s));
            }
            let expected = p.ambient_c + p.rated_rise_c * load * load;
            prop_assert!((m.hot_spot_c() - expected).abs() < 1e-6 * expected.abs().max(1.0),
                "{} vs {}", m.hot_spot_c(), expected);
        }

        /// Headroom stays in [0, 1] and falls while heating, rises while cooling.
        #[test]
        fn headroom_is_monotone(p in params(), load in 0.0f64..4.0,
                                steps in prop::collection::vec(1u64..3600, 1..40)) {
            let mut m = TransformerThermal::new(p).unwrap();
            let mut last = m.headroom();
            prop_assert_eq!(last, 1.0);
            for &s in &steps {
                m.step(load * p.rated_kw, Duration::from_secs(s));
                let h = m.headroom();
                prop_assert!((0.0..=1.0).contains(&h));
                prop_assert!(h <= last, "heating: {} after {}", h, last);
                last = h;
            }
            for &s in &steps {
                m.step(0.0, Duration::from_secs(s));
                let h = m.headroom();
                prop_assert!(h >= last, "cooling: {} after {}", h, last);
                last = h;
            }
        }

        /// Any reading, even nonsense, leaves a finite hot spot, a headroom in [0, 1] and a
        /// positive allowance.
        #[test]
        fn any_reading_keeps_the_model_sane(p in params(),
            loads in prop::collection::vec(prop_oneof![
                any::<f64>(),
                Just(f64::NAN),
                Just(f64::INFINITY),
                -1e4f64..1e4,
            ], 1..20),
            dt in 0u64..1_000_000) {
            let mut m = TransformerThermal::new(p).unwrap();
            for load in loads {
                m.step(load, Duration::from_millis(dt));
                prop_assert!(m.hot_spot_c().is_finite());
                prop_assert!((0.0..=1.0).contains(&m.headroom()));
                prop_assert!(m.allowance_kw() > 0.0);
                let fault_matches = match m.fault() {
                    Fault::TransformerLimit(Some(a)) => m.at_limit() && a == m.allowance_kw(),
                    Fault::TransformerLimit(None) => !m.at_limit(),
                    _ => false,
                };
                prop_assert!(fault_matches);
            }
        }
    }
}
