//! The vehicle behind a simulated charge point and the charger's energy register, as pure
//! step functions so chaos runs can advance time faster than real time.
//!
//! Sign convention (OCPP 2.1): positive power charges the vehicle, negative discharges it.
//!
//! Invariants:
//! - [`Vehicle::step`] never moves the state of charge outside `[min_soc, 1]`, never exceeds
//!   the vehicle's power limits, and never discharges a vehicle that is not bidirectional; the
//!   power it returns is the power actually delivered over the step (it is what the energy
//!   register integrates);
//! - [`EnergyRegister`]'s import and export counters only grow.

use std::time::Duration;

/// Why a vehicle description is not usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VehicleError {
    /// Capacity must be finite and positive.
    #[error("capacity {0} kWh must be finite and > 0")]
    Capacity(f64),
    /// A state of charge must be a finite fraction in [0, 1].
    #[error("{field} {value} must be a finite fraction in [0, 1]")]
    Soc {
        /// Which field (`soc` or `min_soc`).
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// `soc` is below `min_soc`.
    #[error("soc {soc} is below min_soc {min_soc}")]
    SocBelowMinimum {
        /// The state of charge.
        soc: f64,
        /// The floor.
        min_soc: f64,
    },
    /// Charge power must be finite and ≥ 0, discharge power finite and ≥ 0 (a magnitude).
    #[error("{field} {value} kW must be finite and >= 0")]
    Power {
        /// Which field.
        field: &'static str,
        /// The value given.
        value: f64,
    },
}

/// What an EV says about its visit (ISO 15118-20, carried by OCPP's NotifyEVChargingNeeds):
/// when the driver leaves, the state of charge wanted by then, and the lowest state of charge
/// it lets V2X discharging reach (fractions of capacity).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvNeeds {
    /// When the driver leaves (wall clock).
    pub departure: std::time::SystemTime,
    /// State of charge wanted at departure.
    pub target_soc: f64,
    /// Lowest state of charge V2X may discharge to.
    pub min_v2x_soc: f64,
}

impl EvNeeds {
    /// Checks both fractions are finite and in [0, 1], the V2X floor not above the target.
    pub fn check(self) -> Result<EvNeeds, VehicleError> {
        for (field, value) in [
            ("target_soc", self.target_soc),
            ("min_v2x_soc", self.min_v2x_soc),
        ] {
            if !value.is_finite() || !(0.0..=1.0).contains(&value) {
                return Err(VehicleError::Soc { field, value });
            }
        }
        if self.min_v2x_soc > self.target_soc {
            return Err(VehicleError::SocBelowMinimum {
                soc: self.target_soc,
                min_soc: self.min_v2x_soc,
            });
        }
        Ok(self)
    }
}

/// A vehicle's battery and its power limits (kW, kWh, SoC as a fraction of capacity).
#[derive(Debug, Clone, PartialEq)]
pub struct Vehicle {
    capacity_kwh: f64,
    soc: f64,
    min_soc: f64,
    max_charge_kw: f64,
    max_discharge_kw: f64,
    bidirectional: bool,
}

/// The outcome of one step: the new vehicle and the power actually delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct VehicleStep {
    /// The vehicle after the step.
    pub vehicle: Vehicle,
    /// Average power delivered over the step, kW (positive = into the vehicle).
    pub power_kw: f64,
}

impl Vehicle {
    /// A vehicle with `capacity_kwh`, state of charge `soc`, a floor `min_soc` below which it
    /// refuses to discharge, and its power magnitudes. `max_discharge_kw` is ignored (treated
    /// as 0) when `bidirectional` is false.
    pub fn new(
        capacity_kwh: f64,
        soc: f64,
        min_soc: f64,
        max_charge_kw: f64,
        max_discharge_kw: f64,
        bidirectional: bool,
    ) -> Result<Vehicle, VehicleError> {
        if !capacity_kwh.is_finite() || capacity_kwh <= 0.0 {
            return Err(VehicleError::Capacity(capacity_kwh));
        }
        for (field, value) in [("soc", soc), ("min_soc", min_soc)] {
            if !value.is_finite() || !(0.0..=1.0).contains(&value) {
                return Err(VehicleError::Soc { field, value });
            }
        }
        if soc < min_soc {
            return Err(VehicleError::SocBelowMinimum { soc, min_soc });
        }
        for (field, value) in [
            ("max_charge_kw", max_charge_kw),
            ("max_discharge_kw", max_discharge_kw),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(VehicleError::Power { field, value });
            }
        }
        Ok(Vehicle {
            capacity_kwh,
            soc,
            min_soc,
            max_charge_kw,
            max_discharge_kw: if bidirectional { max_discharge_kw } else { 0.0 },
            bidirectional,
        })
    }

    /// State of charge as a fraction of capacity.
    pub fn soc(&self) -> f64 {
        self.soc
    }

    /// The floor below which it refuses to discharge, as a fraction of capacity.
    pub fn min_soc(&self) -> f64 {
        self.min_soc
    }

    /// Usable capacity in kWh.
    pub fn capacity_kwh(&self) -> f64 {
        self.capacity_kwh
    }

    /// Whether the vehicle can give energy back (V2G).
    pub fn bidirectional(&self) -> bool {
        self.bidirectional
    }

    /// The most it accepts, kW.
    pub fn max_charge_kw(&self) -> f64 {
        self.max_charge_kw
    }

    /// The most it gives back, kW (0 unless bidirectional).
    pub fn max_discharge_kw(&self) -> f64 {
        self.max_discharge_kw
    }

    /// Applies `requested_kw` for `dt`: the power is clamped to the vehicle's limits and to
    /// the energy left before full (charging) or before `min_soc` (discharging). A non-finite
    /// request delivers nothing. Pure: the same inputs give the same outputs.
    pub fn step(&self, requested_kw: f64, dt: Duration) -> VehicleStep {
        let hours = dt.as_secs_f64() / 3600.0;
        if !requested_kw.is_finite() || hours <= 0.0 {
            return VehicleStep {
                vehicle: self.clone(),
                power_kw: 0.0,
            };
        }
        let room_kwh = (1.0 - self.soc) * self.capacity_kwh;
        let reserve_kwh = (self.soc - self.min_soc).max(0.0) * self.capacity_kwh;
        let power_kw = if requested_kw >= 0.0 {
            requested_kw.min(self.max_charge_kw).min(room_kwh / hours)
        } else {
            -(-requested_kw)
                .min(self.max_discharge_kw)
                .min(reserve_kwh / hours)
        };
        let soc = (self.soc + power_kw * hours / self.capacity_kwh).clamp(self.min_soc, 1.0);
        VehicleStep {
            vehicle: Vehicle {
                soc,
                ..self.clone()
            },
            power_kw: power_kw + 0.0,
        }
    }
}

/// The charger's energy meter: imported (into the vehicle) and exported (back to the grid)
/// energy, each monotonic, in kWh.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EnergyRegister {
    /// Energy delivered to vehicles, kWh (never decreases).
    pub import_kwh: f64,
    /// Energy taken from vehicles, kWh (never decreases).
    pub export_kwh: f64,
}

impl EnergyRegister {
    /// The register after `power_kw` flowed for `dt` (positive adds to import, negative to
    /// export; a non-finite power adds nothing).
    pub fn step(self, power_kw: f64, dt: Duration) -> EnergyRegister {
        let kwh = power_kw * dt.as_secs_f64() / 3600.0;
        if !kwh.is_finite() {
            return self;
        }
        EnergyRegister {
            import_kwh: self.import_kwh + kwh.max(0.0),
            export_kwh: self.export_kwh + (-kwh).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(soc: f64) -> Vehicle {
        Vehicle::new(60.0, soc, 0.2, 11.0, 10.0, true).unwrap()
    }

    #[test]
    fn charges_and_discharges_within_limits() {
        let s = ev(0.5).step(50.0, Duration::from_secs(3600));
        assert_eq!(s.power_kw, 11.0);
        assert!((s.vehicle.soc() - (0.5 + 11.0 / 60.0)).abs() < 1e-12);
        let d = ev(0.5).step(-50.0, Duration::from_secs(360));
        assert_eq!(d.power_kw, -10.0);
        assert!(d.vehicle.soc() < 0.5);
    }

    #[test]
    fn stops_at_full_and_at_the_floor() {
        let s = ev(0.99).step(11.0, Duration::from_secs(3600));
        assert!((s.power_kw - 0.6).abs() < 1e-9, "{}", s.power_kw);
        assert_eq!(s.vehicle.soc(), 1.0);
        let d = ev(0.21).step(-10.0, Duration::from_secs(3600));
        assert!((d.power_kw + 0.6).abs() < 1e-9);
        assert_eq!(d.vehicle.soc(), 0.2);
    }

    #[test]
    fn unidirectional_never_discharges() {
        let v = Vehicle::new(40.0, 0.8, 0.0, 7.4, 7.4, false).unwrap();
        assert_eq!(v.step(-5.0, Duration::from_secs(60)).power_kw, 0.0);
    }

    #[test]
    fn bad_vehicles_are_typed_errors() {
        assert_eq!(
            Vehicle::new(0.0, 0.5, 0.0, 1.0, 1.0, true),
            Err(VehicleError::Capacity(0.0))
        );
        assert!(matches!(
            Vehicle::new(10.0, 1.5, 0.0, 1.0, 1.0, true),
            Err(VehicleError::Soc { field: "soc", .. })
        ));
        assert!(matches!(
            Vehicle::new(10.0, 0.1, 0.2, 1.0, 1.0, true),
            Err(VehicleError::SocBelowMinimum { .. })
        ));
        assert!(matches!(
            Vehicle::new(10.0, 0.5, 0.0, f64::NAN, 1.0, true),
            Err(VehicleError::Power { .. })
        ));
    }

    #[test]
    fn register_is_monotonic() {
        let r = EnergyRegister::default()
            .step(3.6, Duration::from_secs(1000))
            .step(-7.2, Duration::from_secs(500))
            .step(f64::NAN, Duration::from_secs(1));
        assert!((r.import_kwh - 1.0).abs() < 1e-12);
        assert!((r.export_kwh - 1.0).abs() < 1e-12);
    }

    proptest::proptest! {
        #[test]
        fn step_keeps_invariants(soc in 0.2f64..=1.0, kw in -100.0f64..100.0, secs in 0u64..100_000) {
            let v = ev(soc);
            let s = v.step(kw, Duration::from_secs(secs));
            proptest::prop_assert!(s.vehicle.soc() >= 0.2 && s.vehicle.soc() <= 1.0);
            proptest::prop_assert!(s.power_kw <= 11.0 && s.power_kw >= -10.0);
            proptest::prop_assert!(s.power_kw * kw >= 0.0);
        }
    }
}
