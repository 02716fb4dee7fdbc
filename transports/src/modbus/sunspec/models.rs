//! Typed decoders of the models gridvisor reads: common (1), DER AC measurement (701), DER AC
//! controls (704), DER storage capacity (713) and the AC meters (201–204). Every number is in
//! its unit (scale factor applied); `None` is SunSpec's "not implemented".

use super::block::ModelBlock;
use super::point::{ModelDef, PointDef};
use super::tables::{MODEL_1, MODEL_201, MODEL_701, MODEL_704, MODEL_713};
use crate::modbus::error::DecodeError;

/// One past the last register of the last point a decoder reads (an offset from `ID`).
fn end_of(def: &ModelDef, last_point: &str) -> u16 {
    def.point(last_point)
        .map_or(def.len + 2, |p: &PointDef| p.end() as u16)
}

/// Model 1: the device's identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Common {
    /// `Mn`: the manufacturer.
    pub manufacturer: Option<String>,
    /// `Md`: the device model.
    pub model: Option<String>,
    /// `Opt`: options.
    pub options: Option<String>,
    /// `Vr`: the version.
    pub version: Option<String>,
    /// `SN`: the serial number.
    pub serial_number: Option<String>,
    /// `DA`: the Modbus device address.
    pub device_address: Option<u16>,
}

impl Common {
    /// Decodes model 1 (length 65, without the final pad of newer maps, or 66).
    pub fn decode(block: &ModelBlock) -> Result<Self, DecodeError> {
        block.expect(&[1], end_of(&MODEL_1, "DA"), "1 (common)")?;
        Ok(Self {
            manufacturer: block.string("Mn")?,
            model: block.string("Md")?,
            options: block.string("Opt")?,
            version: block.string("Vr")?,
            serial_number: block.string("SN")?,
            device_address: block.u16("DA")?,
        })
    }
}

/// 701 `ACType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcType {
    /// 0
    SinglePhase,
    /// 1
    SplitPhase,
    /// 2
    ThreePhase,
}

impl AcType {
    fn from_raw(v: u16) -> Option<Self> {
        Some(match v {
            0 => Self::SinglePhase,
            1 => Self::SplitPhase,
            2 => Self::ThreePhase,
            _ => return None,
        })
    }
}

/// 701 `St`: the DER's operating state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatingState {
    /// 0
    Off,
    /// 1
    On,
}

/// 701 `InvSt`: the inverter's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InverterState {
    /// 0
    Off,
    /// 1
    Sleeping,
    /// 2
    Starting,
    /// 3
    Running,
    /// 4
    Throttled,
    /// 5
    ShuttingDown,
    /// 6
    Fault,
    /// 7
    Standby,
}

impl InverterState {
    fn from_raw(v: u16) -> Option<Self> {
        Some(match v {
            0 => Self::Off,
            1 => Self::Sleeping,
            2 => Self::Starting,
            3 => Self::Running,
            4 => Self::Throttled,
            5 => Self::ShuttingDown,
            6 => Self::Fault,
            7 => Self::Standby,
            _ => return None,
        })
    }
}

/// 701 `ConnSt`: whether the DER is connected to the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// 0
    Disconnected,
    /// 1
    Connected,
}

/// 701 temperatures, °C.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Temperatures {
    /// `TmpAmb`: ambient.
    pub ambient: Option<f64>,
    /// `TmpCab`: cabinet.
    pub cabinet: Option<f64>,
    /// `TmpSnk`: heat sink.
    pub heat_sink: Option<f64>,
    /// `TmpTrns`: transformer.
    pub transformer: Option<f64>,
    /// `TmpSw`: IGBT/MOSFET.
    pub switch: Option<f64>,
    /// `TmpOt`: other.
    pub other: Option<f64>,
}

impl Temperatures {
    /// The highest temperature reported, if any.
    pub fn max(&self) -> Option<f64> {
        [
            self.ambient,
            self.cabinet,
            self.heat_sink,
            self.transformer,
            self.switch,
            self.other,
        ]
        .into_iter()
        .flatten()
        .reduce(f64::max)
    }
}

/// 701 measurements of one phase (L1, L2 or L3).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PhaseMeasurement {
    /// Active power, W.
    pub w: Option<f64>,
    /// Apparent power, VA.
    pub va: Option<f64>,
    /// Reactive power, var.
    pub var: Option<f64>,
    /// Power factor.
    pub pf: Option<f64>,
    /// Current, A.
    pub a: Option<f64>,
    /// Line-to-line voltage (L1-L2, L2-L3, L3-L1), V.
    pub v_ll: Option<f64>,
    /// Line-to-neutral voltage, V.
    pub v_ln: Option<f64>,
    /// Energy injected, Wh.
    pub wh_injected: Option<f64>,
    /// Energy absorbed, Wh.
    pub wh_absorbed: Option<f64>,
    /// Reactive energy injected, varh.
    pub varh_injected: Option<f64>,
    /// Reactive energy absorbed, varh.
    pub varh_absorbed: Option<f64>,
}

/// Model 701: DER AC measurements. Powers are positive when the DER injects into the grid
/// (SunSpec DER convention).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AcMeasurement {
    /// `ACType`.
    pub ac_type: Option<AcType>,
    /// `St`.
    pub operating_state: Option<OperatingState>,
    /// `InvSt`.
    pub inverter_state: Option<InverterState>,
    /// `ConnSt`.
    pub connection_state: Option<ConnectionState>,
    /// `Alrm`: active alarms (bitfield).
    pub alarms: Option<u32>,
    /// `DERMode`: active modes (bitfield).
    pub der_mode: Option<u32>,
    /// `W`: total active power, W.
    pub w: Option<f64>,
    /// `VA`: total apparent power, VA.
    pub va: Option<f64>,
    /// `Var`: total reactive power, var.
    pub var: Option<f64>,
    /// `PF`: power factor.
    pub pf: Option<f64>,
    /// `A`: total current, A.
    pub a: Option<f64>,
    /// `LLV`: line-to-line voltage, V.
    pub v_ll: Option<f64>,
    /// `LNV`: line-to-neutral voltage, V.
    pub v_ln: Option<f64>,
    /// `Hz`: frequency.
    pub hz: Option<f64>,
    /// `TotWhInj`: energy injected, Wh.
    pub wh_injected: Option<f64>,
    /// `TotWhAbs`: energy absorbed, Wh.
    pub wh_absorbed: Option<f64>,
    /// `TotVarhInj`: reactive energy injected, varh.
    pub varh_injected: Option<f64>,
    /// `TotVarhAbs`: reactive energy absorbed, varh.
    pub varh_absorbed: Option<f64>,
    /// `Tmp*`: temperatures.
    pub temperatures: Temperatures,
    /// L1, L2, L3.
    pub phases: [PhaseMeasurement; 3],
    /// `ThrotPct`: throttling, % of maximum power.
    pub throttle_pct: Option<u16>,
    /// `ThrotSrc`: throttling sources (bitfield).
    pub throttle_source: Option<u32>,
    /// `MnAlrmInfo`: the manufacturer's alarm text.
    pub alarm_info: Option<String>,
}

impl AcMeasurement {
    /// Decodes model 701.
    pub fn decode(b: &ModelBlock) -> Result<Self, DecodeError> {
        b.expect(
            &[701],
            end_of(&MODEL_701, "MnAlrmInfo"),
            "701 (DER AC measurement)",
        )?;
        let phase = |n: u8, ll: &str| -> Result<PhaseMeasurement, DecodeError> {
            let p = |base: &str| format!("{base}L{n}");
            Ok(PhaseMeasurement {
                w: b.scaled(&p("W"))?,
                va: b.scaled(&p("VA"))?,
                var: b.scaled(&p("Var"))?,
                pf: b.scaled(&p("PF"))?,
                a: b.scaled(&p("A"))?,
                v_ll: b.scaled(ll)?,
                v_ln: b.scaled(&format!("VL{n}"))?,
                wh_injected: b.scaled(&p("TotWhInj"))?,
                wh_absorbed: b.scaled(&p("TotWhAbs"))?,
                varh_injected: b.scaled(&p("TotVarhInj"))?,
                varh_absorbed: b.scaled(&p("TotVarhAbs"))?,
            })
        };
        Ok(Self {
            ac_type: b.enum16("ACType", AcType::from_raw, "0..=2")?,
            operating_state: b.enum16(
                "St",
                |v| match v {
                    0 => Some(OperatingState::Off),
                    1 => Some(OperatingState::On),
                    _ => None,
                },
                "0 (off) or 1 (on)",
            )?,
            inverter_state: b.enum16("InvSt", InverterState::from_raw, "0..=7")?,
            connection_state: b.enum16(
                "ConnSt",
                |v| match v {
                    0 => Some(ConnectionState::Disconnected),
                    1 => Some(ConnectionState::Connected),
                    _ => None,
                },
                "0 (disconnected) or 1 (connected)",
            )?,
            alarms: b.u32("Alrm")?,
            der_mode: b.u32("DERMode")?,
            w: b.scaled("W")?,
            va: b.scaled("VA")?,
            var: b.scaled("Var")?,
            pf: b.scaled("PF")?,
            a: b.scaled("A")?,
            v_ll: b.scaled("LLV")?,
            v_ln: b.scaled("LNV")?,
            hz: b.scaled("Hz")?,
            wh_injected: b.scaled("TotWhInj")?,
            wh_absorbed: b.scaled("TotWhAbs")?,
            varh_injected: b.scaled("TotVarhInj")?,
            varh_absorbed: b.scaled("TotVarhAbs")?,
            temperatures: Temperatures {
                ambient: b.scaled("TmpAmb")?,
                cabinet: b.scaled("TmpCab")?,
                heat_sink: b.scaled("TmpSnk")?,
                transformer: b.scaled("TmpTrns")?,
                switch: b.scaled("TmpSw")?,
                other: b.scaled("TmpOt")?,
            },
            phases: [phase(1, "VL1L2")?, phase(2, "VL2L3")?, phase(3, "VL3L1")?],
            throttle_pct: b.u16("ThrotPct")?,
            throttle_source: b.u32("ThrotSrc")?,
            alarm_info: b.string("MnAlrmInfo")?,
        })
    }
}

/// 704 `WSetMod`: what the active power setpoint is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetpointMode {
    /// 0 (`W_MAX_PCT`): percent of the DER's maximum active power.
    WMaxPct,
    /// 1 (`WATTS`): watts.
    Watts,
}

impl SetpointMode {
    /// The value on the wire.
    pub fn raw(self) -> u16 {
        match self {
            Self::WMaxPct => 0,
            Self::Watts => 1,
        }
    }
}

/// The 704 scale factors and the model's address: what the control encoders need
/// ([`DerCtlScales::power_limit`], [`DerCtlScales::setpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DerCtlScales {
    /// The register address of model 704's `ID`.
    pub addr: u16,
    /// `WMaxLimPct_SF`.
    pub wmax_lim_pct: Option<i8>,
    /// `WSet_SF`.
    pub wset: Option<i8>,
    /// `WSetPct_SF`.
    pub wset_pct: Option<i8>,
}

/// 704 "limit maximum active power" as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PowerLimitState {
    /// `WMaxLimPctEna`.
    pub enabled: Option<bool>,
    /// `WMaxLimPct`: the limit, % of `WMax`.
    pub pct: Option<f64>,
    /// `WMaxLimPctRvrt`: the limit after the reversion time, %.
    pub revert_pct: Option<f64>,
    /// `WMaxLimPctEnaRvrt`: whether the limit is enabled after the reversion time.
    pub revert_enabled: Option<bool>,
    /// `WMaxLimPctRvrtTms`: the reversion time, s.
    pub revert_secs: Option<u32>,
    /// `WMaxLimPctRvrtRem`: the reversion time remaining, s.
    pub revert_remaining_secs: Option<u32>,
}

/// 704 "set active power" as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SetpointState {
    /// `WSetEna`.
    pub enabled: Option<bool>,
    /// `WSetMod`.
    pub mode: Option<SetpointMode>,
    /// `WSet`: the setpoint, W.
    pub w: Option<f64>,
    /// `WSetRvrt`: the setpoint after the reversion time, W.
    pub revert_w: Option<f64>,
    /// `WSetPct`: the setpoint, %.
    pub pct: Option<f64>,
    /// `WSetPctRvrt`: the setpoint after the reversion time, %.
    pub revert_pct: Option<f64>,
    /// `WSetEnaRvrt`: whether the setpoint is enabled after the reversion time.
    pub revert_enabled: Option<bool>,
    /// `WSetRvrtTms`: the reversion time, s.
    pub revert_secs: Option<u32>,
    /// `WSetRvrtRem`: the reversion time remaining, s.
    pub revert_remaining_secs: Option<u32>,
}

/// Model 704: DER AC controls (the active power parts gridvisor uses).
#[derive(Debug, Clone, PartialEq)]
pub struct DerControls {
    /// Scale factors and address, for the encoders.
    pub scales: DerCtlScales,
    /// The maximum active power limit.
    pub power_limit: PowerLimitState,
    /// The active power setpoint.
    pub setpoint: SetpointState,
}

impl DerControls {
    /// Decodes model 704.
    pub fn decode(b: &ModelBlock) -> Result<Self, DecodeError> {
        b.expect(
            &[704],
            end_of(&MODEL_704, "VarSetPct_SF"),
            "704 (DER AC controls)",
        )?;
        Ok(Self {
            scales: DerCtlScales {
                addr: b.addr(),
                wmax_lim_pct: b.scale_factor("WMaxLimPct_SF")?,
                wset: b.scale_factor("WSet_SF")?,
                wset_pct: b.scale_factor("WSetPct_SF")?,
            },
            power_limit: PowerLimitState {
                enabled: b.enabled("WMaxLimPctEna")?,
                pct: b.scaled("WMaxLimPct")?,
                revert_pct: b.scaled("WMaxLimPctRvrt")?,
                revert_enabled: b.enabled("WMaxLimPctEnaRvrt")?,
                revert_secs: b.u32("WMaxLimPctRvrtTms")?,
                revert_remaining_secs: b.u32("WMaxLimPctRvrtRem")?,
            },
            setpoint: SetpointState {
                enabled: b.enabled("WSetEna")?,
                mode: b.enum16(
                    "WSetMod",
                    |v| match v {
                        0 => Some(SetpointMode::WMaxPct),
                        1 => Some(SetpointMode::Watts),
                        _ => None,
                    },
                    "0 (% of WMax) or 1 (W)",
                )?,
                w: b.scaled("WSet")?,
                revert_w: b.scaled("WSetRvrt")?,
                pct: b.scaled("WSetPct")?,
                revert_pct: b.scaled("WSetPctRvrt")?,
                revert_enabled: b.enabled("WSetEnaRvrt")?,
                revert_secs: b.u32("WSetRvrtTms")?,
                revert_remaining_secs: b.u32("WSetRvrtRem")?,
            },
        })
    }
}

/// 713 `Sta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageStatus {
    /// 0
    Ok,
    /// 1
    Warning,
    /// 2
    Error,
}

/// Model 713: DER storage capacity.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StorageCapacity {
    /// `WHRtg`: energy rating, Wh.
    pub energy_rating_wh: Option<f64>,
    /// `WHAvail`: energy available, Wh.
    pub energy_available_wh: Option<f64>,
    /// `SoC`: state of charge, %.
    pub soc_pct: Option<f64>,
    /// `SoH`: state of health, %.
    pub soh_pct: Option<f64>,
    /// `Sta`.
    pub status: Option<StorageStatus>,
}

impl StorageCapacity {
    /// Decodes model 713. A state of charge or health outside 0..=100 % is an error.
    pub fn decode(b: &ModelBlock) -> Result<Self, DecodeError> {
        b.expect(
            &[713],
            end_of(&MODEL_713, "Pct_SF"),
            "713 (DER storage capacity)",
        )?;
        let pct = |name: &str| -> Result<Option<f64>, DecodeError> {
            match b.scaled(name)? {
                Some(v) if !(0.0..=100.0).contains(&v) => Err(DecodeError::OutOfRange {
                    point: name.to_owned(),
                    value: v.to_string(),
                    expected: "0..=100 %".to_owned(),
                }),
                v => Ok(v),
            }
        };
        Ok(Self {
            energy_rating_wh: b.scaled("WHRtg")?,
            energy_available_wh: b.scaled("WHAvail")?,
            soc_pct: pct("SoC")?,
            soh_pct: pct("SoH")?,
            status: b.enum16(
                "Sta",
                |v| match v {
                    0 => Some(StorageStatus::Ok),
                    1 => Some(StorageStatus::Warning),
                    2 => Some(StorageStatus::Error),
                    _ => None,
                },
                "0..=2",
            )?,
        })
    }
}

/// The meter models: 201 (single phase), 202 (split phase), 203 (wye), 204 (delta).
pub const METER_MODELS: [u16; 4] = [201, 202, 203, 204];

/// Models 201–204: an AC meter. Phase arrays are A, B, C (a phase the meter does not have is
/// `None`). Powers keep the meter's own sign convention.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AcMeter {
    /// Which of 201–204.
    pub model_id: u16,
    /// `A`: total current, A.
    pub a: Option<f64>,
    /// `AphA..C`.
    pub a_phase: [Option<f64>; 3],
    /// `PhV`: line-to-neutral voltage (average), V.
    pub v_ln: Option<f64>,
    /// `PhVphA..C`.
    pub v_ln_phase: [Option<f64>; 3],
    /// `PPV`: line-to-line voltage (average), V.
    pub v_ll: Option<f64>,
    /// AB, BC, CA.
    pub v_ll_phase: [Option<f64>; 3],
    /// `Hz`.
    pub hz: Option<f64>,
    /// `W`: total active power, W.
    pub w: Option<f64>,
    /// `WphA..C`.
    pub w_phase: [Option<f64>; 3],
    /// `VA`: total apparent power, VA.
    pub va: Option<f64>,
    /// `VAR`: total reactive power, var.
    pub var: Option<f64>,
    /// `PF`: power factor (SunSpec meters scale it as percent).
    pub pf: Option<f64>,
    /// `TotWhExp`: energy exported, Wh.
    pub wh_exported: Option<f64>,
    /// `TotWhImp`: energy imported, Wh.
    pub wh_imported: Option<f64>,
    /// `TotVAhExp`: apparent energy exported, VAh.
    pub vah_exported: Option<f64>,
    /// `TotVAhImp`: apparent energy imported, VAh.
    pub vah_imported: Option<f64>,
    /// `Evt`: meter events (bitfield).
    pub events: Option<u32>,
}

impl AcMeter {
    /// Decodes model 201, 202, 203 or 204 (one layout, point names differ slightly).
    pub fn decode(b: &ModelBlock) -> Result<Self, DecodeError> {
        b.expect(
            &METER_MODELS,
            end_of(&MODEL_201, "Evt"),
            "201..=204 (AC meter)",
        )?;
        let ph = |base: &str| -> Result<[Option<f64>; 3], DecodeError> {
            Ok([
                b.scaled(&format!("{base}phA"))?,
                b.scaled(&format!("{base}phB"))?,
                b.scaled(&format!("{base}phC"))?,
            ])
        };
        let ll = if b.id() == 201 { "PPV" } else { "PhV" };
        Ok(Self {
            model_id: b.id(),
            a: b.scaled("A")?,
            a_phase: ph("A")?,
            v_ln: b.scaled("PhV")?,
            v_ln_phase: ph("PhV")?,
            v_ll: b.scaled("PPV")?,
            v_ll_phase: [
                b.scaled(&format!("{ll}phAB"))?,
                b.scaled(&format!("{ll}phBC"))?,
                b.scaled(&format!("{ll}phCA"))?,
            ],
            hz: b.scaled("Hz")?,
            w: b.scaled("W")?,
            w_phase: ph("W")?,
            va: b.scaled("VA")?,
            var: b.scaled("VAR")?,
            pf: b.scaled("PF")?,
            wh_exported: b.scaled("TotWhExp")?,
            wh_imported: b.scaled("TotWhImp")?,
            vah_exported: b.scaled("TotVAhExp")?,
            vah_imported: b.scaled("TotVAhImp")?,
            events: b.u32("Evt")?,
        })
    }
}

/// A meter reading: from an AC meter model (201–204) or, for a device without one, from its
/// DER AC measurement (701). The two keep their own sign conventions.
#[derive(Debug, Clone, PartialEq)]
pub enum MeterReading {
    /// From model 201–204.
    Meter(Box<AcMeter>),
    /// From model 701.
    Der(Box<AcMeasurement>),
}
