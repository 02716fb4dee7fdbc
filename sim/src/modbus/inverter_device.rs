//! [`InverterSim`]: the inverter of [`inverter`](super::inverter) as a SunSpec device.
//!
//! The map at 40000: model 1 (common), 701 (AC measurement: W, V, Hz, temperatures,
//! energies, states), 704 (AC controls: the active power limit and setpoint with their
//! reversion timers) and 713 (storage: SoC), then the end marker.
//!
//! Invariants:
//! - The image is rebuilt from the state after every step and every accepted write, so what
//!   a client reads is always the state (rounded by the scale factors), never a stale copy.
//! - A write is accepted only if every register it touches is a writable point of 704 (else
//!   `IllegalDataAddress`) and the resulting 704 block decodes with every value in range:
//!   percentages 0..=100 (limit) or -100..=100 (setpoint), watts within ±`w_max`, enables 0
//!   or 1 (else `IllegalDataValue`). A refused write changes nothing.
//! - A write to a control's registers that leaves it enabled (re)arms its reversion timer; a
//!   write that disables it stops the timer.

use std::time::Duration;

use gridvisor_transports::modbus::{
    sunspec::{Common, DerControls, ModelImage, RegisterImage, SunSpecMapBuilder, Value},
    EncodeError, ExceptionCode,
};

use super::device::SimDevice;
use super::grid::Grid;
use super::inverter::{step, InverterParams, InverterState, PowerLimitControl, SetpointControl};
use super::SimError;

/// Where the map starts.
pub const BASE: u16 = 40000;
/// Offsets in 704 of the limit's registers (`WMaxLimPctEna` ..= `WMaxLimPctRvrtRem`).
const LIMIT_REGS: std::ops::RangeInclusive<u16> = 14..=21;
/// Offsets in 704 of the setpoint's registers (`WSetEna` ..= `WSetRvrtRem`).
const SETPOINT_REGS: std::ops::RangeInclusive<u16> = 22..=34;

/// The scale factors of the map, chosen from the ratings so that every value fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scales {
    w: i8,
    wh: i8,
}

/// The smallest exponent 0..=10 that brings `max` within `limit`.
fn sf_for(max: f64, limit: f64) -> i8 {
    (0..=10i8)
        .find(|s| max / 10f64.powi(i32::from(*s)) <= limit)
        .unwrap_or(10)
}

/// A simulated inverter: parameters, state, the grid it sits on, its simulated clock and its
/// register image.
#[derive(Debug, Clone)]
pub struct InverterSim {
    params: InverterParams,
    state: InverterState,
    grid: Grid,
    now: Duration,
    scales: Scales,
    image: RegisterImage,
    ctl_addr: u16,
}

impl InverterSim {
    /// An inverter at rest on `grid` (parameters checked).
    pub fn new(params: InverterParams, grid: Grid) -> Result<Self, SimError> {
        params.validate()?;
        grid.model().validate()?;
        let state = InverterState::initial(&params, grid.sample(Duration::ZERO));
        let scales = Scales {
            w: sf_for(params.w_max, 32_767.0),
            wh: sf_for(params.capacity_wh, 65_534.0),
        };
        let image = build_image(&params, &state, scales)?;
        let map = image.walk().map_err(|e| EncodeError::Invalid {
            point: "SunSpec map".into(),
            detail: e.to_string(),
        })?;
        let ctl_addr = map
            .find(704)
            .map(|h| h.addr)
            .ok_or(SimError::UnknownPoint {
                model: 704,
                point: "ID".into(),
            })?;
        Ok(Self {
            params,
            state,
            grid,
            now: Duration::ZERO,
            scales,
            image,
            ctl_addr,
        })
    }

    /// The state.
    pub fn state(&self) -> &InverterState {
        &self.state
    }

    /// The parameters.
    pub fn params(&self) -> &InverterParams {
        &self.params
    }

    /// Simulated time since start.
    pub fn now(&self) -> Duration {
        self.now
    }

    fn refresh(&mut self) -> Result<(), SimError> {
        self.image = build_image(&self.params, &self.state, self.scales)?;
        Ok(())
    }

    /// Checks that every register of a write is a writable point of 704.
    fn check_writable(&self, addr: u16, len: usize) -> Result<(), ExceptionCode> {
        let def = &gridvisor_transports::modbus::sunspec::tables::MODEL_704;
        for i in 0..len {
            let a = usize::from(addr) + i;
            let off = a
                .checked_sub(usize::from(self.ctl_addr))
                .and_then(|o| u16::try_from(o).ok())
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            let writable = def
                .points
                .iter()
                .any(|p| p.writable && off >= p.offset && u32::from(off) < p.end());
            if !writable {
                return Err(ExceptionCode::IllegalDataAddress);
            }
        }
        Ok(())
    }

    /// Decodes the 704 block of `image` into controls, range-checked.
    fn decode_controls(
        &self,
        image: &RegisterImage,
        touched: (bool, bool),
    ) -> Option<(PowerLimitControl, SetpointControl)> {
        let header = image.walk().ok()?.find(704).copied()?;
        let ctl = DerControls::decode(&image.block(&header).ok()?).ok()?;
        let w_max = self.params.w_max;
        let pct = |v: Option<f64>, lo: f64| v.filter(|v| (lo..=100.0).contains(v));
        let watts = |v: Option<f64>| v.filter(|v| v.abs() <= w_max);
        let old = self.state.controls;
        let pl = ctl.power_limit;
        let mut limit = PowerLimitControl {
            enabled: pl.enabled?,
            pct: pct(pl.pct, 0.0)?,
            revert_pct: pct(pl.revert_pct, 0.0)?,
            revert_enabled: pl.revert_enabled?,
            timer: old.limit.timer,
        };
        limit.timer.secs = pl.revert_secs?;
        let sp = ctl.setpoint;
        let mut setpoint = SetpointControl {
            enabled: sp.enabled?,
            mode: sp.mode?,
            w: watts(sp.w)?,
            revert_w: watts(sp.revert_w)?,
            pct: pct(sp.pct, -100.0)?,
            revert_pct: pct(sp.revert_pct, -100.0)?,
            revert_enabled: sp.revert_enabled?,
            timer: old.setpoint.timer,
        };
        setpoint.timer.secs = sp.revert_secs?;
        if touched.0 {
            limit.timer.arm();
        }
        if !limit.enabled {
            limit.timer.remaining = None;
        }
        if touched.1 {
            setpoint.timer.arm();
        }
        if !setpoint.enabled {
            setpoint.timer.remaining = None;
        }
        Some((limit, setpoint))
    }
}

impl SimDevice for InverterSim {
    fn image(&self) -> &RegisterImage {
        &self.image
    }

    fn write(&mut self, addr: u16, values: &[u16]) -> Result<(), ExceptionCode> {
        if values.is_empty() {
            return Err(ExceptionCode::IllegalDataValue);
        }
        self.check_writable(addr, values.len())?;
        let mut candidate = self.image.clone();
        if !candidate.write(addr, values) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let first = addr - self.ctl_addr;
        let last = first + values.len().saturating_sub(1) as u16;
        let touches = |r: &std::ops::RangeInclusive<u16>| first <= *r.end() && last >= *r.start();
        let (limit, setpoint) = self
            .decode_controls(&candidate, (touches(&LIMIT_REGS), touches(&SETPOINT_REGS)))
            .ok_or(ExceptionCode::IllegalDataValue)?;
        let before = self.state.controls;
        self.state.controls.limit = limit;
        self.state.controls.setpoint = setpoint;
        if self.refresh().is_err() {
            self.state.controls = before;
            return Err(ExceptionCode::ServerDeviceFailure);
        }
        tracing::debug!(serial = %self.params.serial, addr, n = values.len(), "sim inverter: 704 write applied");
        Ok(())
    }

    fn step(&mut self, dt: Duration) -> Result<(), SimError> {
        self.now += dt;
        let g = self.grid.sample(self.now);
        self.state = step(&self.state, &self.params, &g, dt);
        self.refresh()
    }
}

/// Sets an energy accumulator, which SunSpec reads as "not implemented" at 0.
fn set_energy(m: &mut ModelImage, name: &str, wh: f64) -> Result<(), EncodeError> {
    if wh.round() >= 1.0 {
        m.set_scaled(name, wh)?;
    }
    Ok(())
}

fn build_image(
    p: &InverterParams,
    s: &InverterState,
    sc: Scales,
) -> Result<RegisterImage, EncodeError> {
    let common = Common {
        manufacturer: Some("gridvisor".into()),
        model: Some("sim-inverter".into()),
        version: Some(env!("CARGO_PKG_VERSION").into()),
        serial_number: Some(p.serial.clone()),
        device_address: Some(1),
        ..Common::default()
    };
    let mut ac = ModelImage::of(701)?;
    ac.set("ACType", Value::U16(2))? // three phase, with neutral
        .set("St", Value::U16(u16::from(!s.tripped)))?
        .set("InvSt", Value::U16(if s.tripped { 6 } else { 3 }))? // fault or running
        .set("ConnSt", Value::U16(u16::from(!s.tripped)))?
        .set_sf("W_SF", sc.w)?
        .set_sf("V_SF", -1)?
        .set_sf("Hz_SF", -3)?
        .set_sf("TotWh_SF", 0)?
        .set_sf("Tmp_SF", -1)?
        .set_scaled("W", s.power_w)?
        .set_scaled("LNV", s.grid.v)?
        .set_scaled("LLV", s.grid.v * 3f64.sqrt())?
        .set_scaled("Hz", s.grid.hz)?
        .set_scaled("TmpAmb", p.ambient_c)?
        .set_scaled("TmpSnk", s.temperature_c)?;
    set_energy(&mut ac, "TotWhInj", s.wh_injected)?;
    set_energy(&mut ac, "TotWhAbs", s.wh_absorbed)?;

    let c = &s.controls;
    let mut ctl = ModelImage::of(704)?;
    ctl.set_sf("WMaxLimPct_SF", -1)?
        .set_sf("WSet_SF", 0)?
        .set_sf("WSetPct_SF", -1)?
        .set("WMaxLimPctEna", Value::U16(u16::from(c.limit.enabled)))?
        .set_scaled("WMaxLimPct", c.limit.pct)?
        .set_scaled("WMaxLimPctRvrt", c.limit.revert_pct)?
        .set(
            "WMaxLimPctEnaRvrt",
            Value::U16(u16::from(c.limit.revert_enabled)),
        )?
        .set("WMaxLimPctRvrtTms", Value::U32(c.limit.timer.secs))?
        .set(
            "WMaxLimPctRvrtRem",
            Value::U32(c.limit.timer.remaining_secs()),
        )?
        .set("WSetEna", Value::U16(u16::from(c.setpoint.enabled)))?
        .set("WSetMod", Value::U16(c.setpoint.mode.raw()))?
        .set_scaled("WSet", c.setpoint.w)?
        .set_scaled("WSetRvrt", c.setpoint.revert_w)?
        .set_scaled("WSetPct", c.setpoint.pct)?
        .set_scaled("WSetPctRvrt", c.setpoint.revert_pct)?
        .set(
            "WSetEnaRvrt",
            Value::U16(u16::from(c.setpoint.revert_enabled)),
        )?
        .set("WSetRvrtTms", Value::U32(c.setpoint.timer.secs))?
        .set("WSetRvrtRem", Value::U32(c.setpoint.timer.remaining_secs()))?;

    let mut storage = ModelImage::of(713)?;
    storage
        .set_sf("WH_SF", sc.wh)?
        .set_sf("Pct_SF", -1)?
        .set_scaled("WHRtg", p.capacity_wh)?
        .set_scaled("WHAvail", p.capacity_wh * s.soc_pct / 100.0)?
        .set_scaled("SoC", s.soc_pct)?
        .set_scaled("SoH", 100.0)?
        .set("Sta", Value::U16(0))?;

    SunSpecMapBuilder::new(BASE)
        .push(common.to_image()?)
        .push(ac)
        .push(ctl)
        .push(storage)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::grid::GridModel;
    use gridvisor_transports::modbus::sunspec::{
        AcMeasurement, DerControls, PowerLimit, StorageCapacity,
    };

    fn sim() -> InverterSim {
        InverterSim::new(InverterParams::new("SN-1"), Grid::new(GridModel::new(1))).unwrap()
    }

    fn controls(s: &InverterSim) -> DerControls {
        let img = s.image();
        let map = img.walk().unwrap();
        DerControls::decode(&img.block(map.find(704).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn image_decodes_to_the_state() {
        let mut s = sim();
        s.state.controls.setpoint.enabled = true;
        s.state.controls.setpoint.w = -3_000.0;
        for _ in 0..10 {
            s.step(Duration::from_millis(100)).unwrap();
        }
        let img = s.image();
        let map = img.walk().unwrap();
        let ids: Vec<u16> = map.models.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 701, 704, 713]);
        let ac = AcMeasurement::decode(&img.block(map.find(701).unwrap()).unwrap()).unwrap();
        assert_eq!(ac.w, Some(-3_000.0));
        assert_eq!(ac.hz, Some((s.state.grid.hz * 1000.0).round() / 1000.0));
        let st = StorageCapacity::decode(&img.block(map.find(713).unwrap()).unwrap()).unwrap();
        assert_eq!(st.soc_pct, Some((s.state.soc_pct * 10.0).round() / 10.0));
    }

    #[test]
    fn transports_encoder_writes_are_applied() {
        let mut s = sim();
        let writes = controls(&s)
            .scales
            .power_limit(&PowerLimit {
                pct: 42.5,
                revert_after: Duration::from_secs(30),
                revert_to_pct: None,
            })
            .unwrap();
        for w in &writes {
            s.write(w.addr, &w.values).unwrap();
        }
        let l = s.state().controls.limit;
        assert!(l.enabled);
        assert_eq!(l.pct, 42.5);
        assert_eq!(l.timer.remaining, Some(Duration::from_secs(30)));
        assert_eq!(controls(&s).power_limit.revert_remaining_secs, Some(30));
    }

    #[test]
    fn bad_writes_are_refused_and_change_nothing() {
        let mut s = sim();
        let before = s.image().clone();
        let ctl = s.ctl_addr;
        // WMaxLimPct = 100.1 % (raw 1001 with SF -1).
        assert_eq!(
            s.write(ctl + 15, &[1001]),
            Err(ExceptionCode::IllegalDataValue)
        );
        // WMaxLimPctEna = 2.
        assert_eq!(
            s.write(ctl + 14, &[2]),
            Err(ExceptionCode::IllegalDataValue)
        );
        // WSet = 20 kW on a 10 kW inverter.
        assert_eq!(
            s.write(ctl + 24, &[0, 20_000]),
            Err(ExceptionCode::IllegalDataValue)
        );
        // Read-only: WMaxLimPctRvrtRem, a scale factor, model 701, outside the map.
        assert_eq!(
            s.write(ctl + 20, &[0, 1]),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            s.write(ctl + 54, &[0]),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            s.write(40_100, &[0]),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            s.write(60_000, &[0]),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(s.image(), &before);
    }
}
