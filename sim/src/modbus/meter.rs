//! A simulated revenue meter at a segment's point of connection: model 1 and model 203
//! (three-phase wye), reading the power of a source you pass in and the grid's voltage and
//! frequency.
//!
//! Sign convention (the meter's): positive `W` imports from the grid, negative exports.
//! Import integrates into `TotWhImp`, export into `TotWhExp`; the phases share power and
//! current equally.
//!
//! Invariants: [`step`] is pure (the power source is read by [`MeterSim::step`], which passes
//! the value in); energies never decrease; the image is rebuilt from the state after every
//! step. The meter has no writable register: every write is refused with
//! `IllegalDataAddress`.

use std::{fmt, time::Duration};

use gridvisor_transports::modbus::{
    sunspec::{Common, ModelImage, RegisterImage, SunSpecMapBuilder},
    EncodeError, ExceptionCode,
};

use super::device::SimDevice;
use super::grid::{Grid, GridSample};
use super::SimError;

/// Where the map starts.
pub const BASE: u16 = 40000;

/// The power a meter measures, W (positive: import from the grid).
pub trait PowerSource: Send + 'static {
    /// The power now.
    fn power_w(&self) -> f64;
}

impl<F: Fn() -> f64 + Send + 'static> PowerSource for F {
    fn power_w(&self) -> f64 {
        self()
    }
}

/// What the meter is.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterParams {
    /// Serial number in model 1.
    pub serial: String,
    /// The largest |power| it must show, W (> 0): chooses `W_SF`. A source beyond it is
    /// shown clamped to it.
    pub w_max: f64,
}

impl MeterParams {
    /// A meter for up to 100 kW.
    pub fn new(serial: &str) -> Self {
        Self {
            serial: serial.to_owned(),
            w_max: 100_000.0,
        }
    }

    fn validate(&self) -> Result<(), SimError> {
        if !(self.w_max.is_finite() && self.w_max > 0.0 && self.w_max <= 3.0e11) {
            return Err(SimError::Config {
                field: "w_max".into(),
                detail: format!("must be in (0, 3e11] W, got {}", self.w_max),
            });
        }
        if self.serial.is_empty() || self.serial.len() > 32 || self.serial.contains('\0') {
            return Err(SimError::Config {
                field: "serial".into(),
                detail: "must be 1..=32 bytes without NUL".into(),
            });
        }
        Ok(())
    }
}

/// What the meter measured last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterState {
    /// Power, W (positive: import).
    pub w: f64,
    /// The grid at the last step.
    pub grid: GridSample,
    /// Energy imported, Wh.
    pub wh_imported: f64,
    /// Energy exported, Wh.
    pub wh_exported: f64,
}

/// The meter's state `dt` later, the source at `power_w` (clamped to ±`w_max`) and the grid
/// at `grid` during the step. Pure.
pub fn step(
    s: &MeterState,
    params: &MeterParams,
    power_w: f64,
    grid: &GridSample,
    dt: Duration,
) -> MeterState {
    let w = if power_w.is_finite() {
        power_w.clamp(-params.w_max, params.w_max)
    } else {
        0.0
    };
    let wh = (s.w + w) / 2.0 * dt.as_secs_f64() / 3600.0;
    MeterState {
        w,
        grid: *grid,
        wh_imported: s.wh_imported + wh.max(0.0),
        wh_exported: s.wh_exported + (-wh).max(0.0),
    }
}

/// A simulated meter serving models 1 and 203.
pub struct MeterSim {
    params: MeterParams,
    source: Box<dyn PowerSource>,
    grid: Grid,
    now: Duration,
    scales: Scales,
    state: MeterState,
    image: RegisterImage,
}

impl fmt::Debug for MeterSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeterSim")
            .field("params", &self.params)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl MeterSim {
    /// A meter of `source` on `grid`, reading it at once.
    pub fn new(
        params: MeterParams,
        source: impl PowerSource,
        grid: Grid,
    ) -> Result<Self, SimError> {
        params.validate()?;
        grid.model().validate()?;
        let w_sf = sf_for(params.w_max, 0);
        // The largest current: full power at half the nominal voltage.
        let a_sf = sf_for(params.w_max / (0.5 * grid.model().nominal_v), -1);
        let g = grid.sample(Duration::ZERO);
        let state = step(
            &MeterState {
                w: 0.0,
                grid: g,
                wh_imported: 0.0,
                wh_exported: 0.0,
            },
            &params,
            source.power_w(),
            &g,
            Duration::ZERO,
        );
        let scales = Scales { w: w_sf, a: a_sf };
        let image = build_image(&params, &state, scales)?;
        Ok(Self {
            params,
            source: Box::new(source),
            grid,
            now: Duration::ZERO,
            scales,
            state,
            image,
        })
    }

    /// The state.
    pub fn state(&self) -> &MeterState {
        &self.state
    }

    /// Simulated time since start.
    pub fn now(&self) -> Duration {
        self.now
    }
}

impl SimDevice for MeterSim {
    fn image(&self) -> &RegisterImage {
        &self.image
    }

    fn write(&mut self, _addr: u16, _values: &[u16]) -> Result<(), ExceptionCode> {
        Err(ExceptionCode::IllegalDataAddress)
    }

    fn step(&mut self, dt: Duration) -> Result<(), SimError> {
        self.now += dt;
        let g = self.grid.sample(self.now);
        self.state = step(&self.state, &self.params, self.source.power_w(), &g, dt);
        self.image = build_image(&self.params, &self.state, self.scales)?;
        Ok(())
    }
}

/// The smallest exponent `from..=10` that brings `max` within int16.
fn sf_for(max: f64, from: i8) -> i8 {
    (from..=10)
        .find(|s| max / 10f64.powi(i32::from(*s)) <= 32_767.0)
        .unwrap_or(10)
}

/// The scale factors of the map, chosen from the rating so that every value fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scales {
    w: i8,
    a: i8,
}

fn build_image(p: &MeterParams, s: &MeterState, sc: Scales) -> Result<RegisterImage, EncodeError> {
    let common = Common {
        manufacturer: Some("gridvisor".into()),
        model: Some("sim-meter".into()),
        version: Some(env!("CARGO_PKG_VERSION").into()),
        serial_number: Some(p.serial.clone()),
        device_address: Some(1),
        ..Common::default()
    };
    let v = s.grid.v;
    // Below half the nominal voltage the current is shown as at half (the bound its scale
    // factor was chosen for); the grid model never goes that low.
    let phase_a = s.w / 3.0 / v.max(0.5 * s.grid.nominal_v);
    let mut m = ModelImage::of(203)?;
    m.set_sf("A_SF", sc.a)?
        .set_sf("V_SF", -1)?
        .set_sf("Hz_SF", -2)?
        .set_sf("W_SF", sc.w)?
        .set_sf("TotWh_SF", 0)?
        .set_scaled("A", phase_a.abs() * 3.0)?
        .set_scaled("PhV", v)?
        .set_scaled("PPV", v * 3f64.sqrt())?
        .set_scaled("Hz", s.grid.hz)?
        .set_scaled("W", s.w)?;
    for ph in ["A", "B", "C"] {
        m.set_scaled(&format!("Aph{ph}"), phase_a.abs())?
            .set_scaled(&format!("PhVph{ph}"), v)?
            .set_scaled(&format!("Wph{ph}"), s.w / 3.0)?;
    }
    for ll in ["AB", "BC", "CA"] {
        m.set_scaled(&format!("PhVph{ll}"), v * 3f64.sqrt())?;
    }
    for (name, wh) in [("TotWhImp", s.wh_imported), ("TotWhExp", s.wh_exported)] {
        // An accumulator reads "not implemented" at 0; it wraps at 2^32 like a real one.
        let raw = wh.round() % 4_294_967_296.0;
        if raw >= 1.0 {
            m.set_scaled(name, raw)?;
        }
    }
    SunSpecMapBuilder::new(BASE)
        .push(common.to_image()?)
        .push(m)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::grid::GridModel;
    use gridvisor_transports::modbus::sunspec::AcMeter;

    #[test]
    fn energy_integrates_both_ways() {
        let p = MeterParams::new("M");
        let g = crate::modbus::grid::sample(&GridModel::new(2), None, Duration::ZERO);
        let mut s = MeterState {
            w: 0.0,
            grid: g,
            wh_imported: 0.0,
            wh_exported: 0.0,
        };
        s = step(&s, &p, 3_600.0, &g, Duration::ZERO);
        for _ in 0..3600 {
            s = step(&s, &p, 3_600.0, &g, Duration::from_secs(1));
        }
        assert!((s.wh_imported - 3_600.0).abs() < 1e-6);
        s = step(&s, &p, -7_200.0, &g, Duration::ZERO);
        for _ in 0..1800 {
            s = step(&s, &p, -7_200.0, &g, Duration::from_secs(1));
        }
        assert!((s.wh_exported - 3_600.0).abs() < 1e-6);
        assert!((s.wh_imported - 3_600.0).abs() < 1e-6);
        // A source beyond the range or not finite.
        assert_eq!(step(&s, &p, 1e9, &g, Duration::ZERO).w, 100_000.0);
        assert_eq!(step(&s, &p, f64::NAN, &g, Duration::ZERO).w, 0.0);
    }

    #[test]
    fn image_decodes_to_the_state() {
        let grid = Grid::new(GridModel::new(5));
        let mut m = MeterSim::new(MeterParams::new("M-1"), || -4_200.0, grid).unwrap();
        m.step(Duration::from_secs(3600)).unwrap();
        let img = m.image();
        let map = img.walk().unwrap();
        let r = AcMeter::decode(&img.block(map.find(203).unwrap()).unwrap()).unwrap();
        assert_eq!(r.w, Some(-4_200.0));
        assert_eq!(r.wh_exported, Some(4_200.0));
        assert_eq!(r.wh_imported, None, "nothing imported: not implemented (0)");
        assert_eq!(r.hz, Some((m.state().grid.hz * 100.0).round() / 100.0));
        assert!(m.write(40_010, &[1]).is_err());
        // A 5 MW meter: the scale factors grow with the rating.
        let big = MeterParams {
            w_max: 5e6,
            ..MeterParams::new("M-2")
        };
        let mut m = MeterSim::new(big, || 4.9e6, Grid::new(GridModel::new(5))).unwrap();
        m.step(Duration::from_secs(1)).unwrap();
        let img = m.image();
        let r =
            AcMeter::decode(&img.block(img.walk().unwrap().find(203).unwrap()).unwrap()).unwrap();
        assert_eq!(r.w, Some(4.9e6));
        let a = 4.9e6 / m.state().grid.v;
        assert!((r.a.unwrap() - a).abs() <= 10.0, "{:?} vs {a}", r.a);
        let bad = MeterParams {
            w_max: -1.0,
            ..MeterParams::new("M")
        };
        assert!(matches!(
            MeterSim::new(bad, || 0.0, Grid::new(GridModel::new(5))),
            Err(SimError::Config { .. })
        ));
    }
}
