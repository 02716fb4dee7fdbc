//! A plain register profile, from configuration, for devices without SunSpec: named points
//! with an address, a register type, a scale and a unit, optionally writable and bounded.
//!
//! The field's example, a battery inverter with its active and reactive power at 40001 and
//! 40002 and a writable discharge limit at 0x4001 (tenths of kW, up to 15.0 kW):
//!
//! ```
//! use gridvisor_transports::modbus::profile::RegisterProfile;
//!
//! let profile: RegisterProfile = serde_json::from_value(serde_json::json!({
//!     "points": [
//!         { "name": "active_power", "address": 40001, "type": "i16", "scale": 0.1, "unit": "kW" },
//!         { "name": "reactive_power", "address": 40002, "type": "i16", "scale": 0.1, "unit": "kvar" },
//!         { "name": "discharge_limit", "address": 0x4001, "type": "u16", "scale": 0.1, "unit": "kW",
//!           "writable": true, "min": 0.0, "max": 15.0 }
//!     ]
//! }))?;
//! profile.validate()?;
//! assert_eq!(profile.decode("active_power", &[(-125i16) as u16])?, -12.5);
//! let write = profile.encode("discharge_limit", 15.0)?;
//! assert_eq!((write.addr, write.values), (0x4001, vec![150]));
//! assert!(profile.encode("discharge_limit", 15.1).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same in TOML (as the site configuration holds it; hexadecimal addresses are TOML):
//!
//! ```toml
//! [[points]]
//! name = "active_power"
//! address = 40001
//! type = "i16"
//! scale = 0.1
//! unit = "kW"
//!
//! [[points]]
//! name = "discharge_limit"
//! address = 0x4001
//! type = "u16"
//! scale = 0.1
//! unit = "kW"
//! writable = true
//! min = 0.0
//! max = 15.0
//! ```
//!
//! Addresses are the addresses on the wire (0..=65535) unless the profile says
//! `addressing = "modicon"`: then 40001 is holding register 0 and 30001 input register 0
//! (six digits, 400001 and 300001, work too), the convention of many device manuals.

use serde::Deserialize;

use super::client::ModbusClient;
use super::error::{DecodeError, EncodeError, ModbusError};
use super::regs::{u32_from, u32_to, RegisterWrite, WordOrder};

/// How the profile's addresses are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Addressing {
    /// The address on the wire, 0..=65535.
    #[default]
    Protocol,
    /// Modicon references: 4xxxx / 4xxxxx holding registers, 3xxxx / 3xxxxx input registers,
    /// counted from 1.
    Modicon,
}

/// Which registers a point is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Holding registers (read 0x03, write 0x06 / 0x10).
    #[default]
    Holding,
    /// Input registers (read 0x04, read-only).
    Input,
}

/// A point's register type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterType {
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Two registers, IEEE 754 single precision.
    F32,
}

impl RegisterType {
    /// Registers taken.
    pub fn words(self) -> usize {
        match self {
            Self::U16 | Self::I16 => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
        }
    }

    /// The raw range of the integer types.
    fn raw_range(self) -> Option<(f64, f64)> {
        Some(match self {
            Self::U16 => (0.0, f64::from(u16::MAX)),
            Self::I16 => (f64::from(i16::MIN), f64::from(i16::MAX)),
            Self::U32 => (0.0, f64::from(u32::MAX)),
            Self::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
            Self::F32 => return None,
        })
    }
}

fn one() -> f64 {
    1.0
}

/// One point of a profile.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointSpec {
    /// Its name, unique in the profile.
    pub name: String,
    /// Its (first) register's address (see [`Addressing`]).
    pub address: u32,
    /// Its register type.
    #[serde(rename = "type")]
    pub ty: RegisterType,
    /// The order of the two words of a 32-bit type. Default high word first.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Value = raw × scale. Default 1; not 0, finite.
    #[serde(default = "one")]
    pub scale: f64,
    /// The unit of the value (documentation; not converted).
    #[serde(default)]
    pub unit: Option<String>,
    /// Whether gridvisor may write it. Default false.
    #[serde(default)]
    pub writable: bool,
    /// Smallest valid value (after scaling): a reading below is an error, a write below is
    /// refused.
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest valid value (after scaling).
    #[serde(default)]
    pub max: Option<f64>,
    /// Holding (default) or input registers; with Modicon addressing the address says it.
    #[serde(default)]
    pub table: Option<Table>,
}

/// A profile: points and how their addresses are written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterProfile {
    /// How `address` is to be read. Default [`Addressing::Protocol`].
    #[serde(default)]
    pub addressing: Addressing,
    /// The points.
    pub points: Vec<PointSpec>,
}

/// A profile that does not hold together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("register profile, point {point:?}: {detail}")]
pub struct ProfileError {
    /// The point.
    pub point: String,
    /// What is wrong.
    pub detail: String,
}

fn perr(point: &str, detail: impl Into<String>) -> ProfileError {
    ProfileError {
        point: point.to_owned(),
        detail: detail.into(),
    }
}

/// Divides by `1 / scale` when that is a whole number (0.1 → ÷ 10), so that decimal scales
/// give the nearest decimal value (150 × 0.1 would be 15.000000000000002).
fn apply_scale(raw: f64, scale: f64) -> f64 {
    let inv = 1.0 / scale;
    if scale.abs() < 1.0 && (inv - inv.round()).abs() < 1e-9 * inv.abs() {
        raw / inv.round()
    } else {
        raw * scale
    }
}

fn remove_scale(value: f64, scale: f64) -> f64 {
    let inv = 1.0 / scale;
    if scale.abs() < 1.0 && (inv - inv.round()).abs() < 1e-9 * inv.abs() {
        value * inv.round()
    } else {
        value / scale
    }
}

impl PointSpec {
    /// The point's table and wire address under `addressing`.
    pub fn location(&self, addressing: Addressing) -> Result<(Table, u16), ProfileError> {
        let (table, addr) = match addressing {
            Addressing::Protocol => (self.table.unwrap_or_default(), self.address),
            Addressing::Modicon => {
                let reference = self.address;
                let (table, first) = match reference {
                    40_001..=49_999 => (Table::Holding, 40_001),
                    30_001..=39_999 => (Table::Input, 30_001),
                    400_001..=465_536 => (Table::Holding, 400_001),
                    300_001..=365_536 => (Table::Input, 300_001),
                    _ => {
                        let detail =
                            format!("{reference} is not a Modicon 4xxxx or 3xxxx reference");
                        return Err(perr(&self.name, detail));
                    }
                };
                if self.table.is_some_and(|t| t != table) {
                    return Err(perr(
                        &self.name,
                        "its table contradicts its Modicon reference",
                    ));
                }
                (table, self.address - first)
            }
        };
        let addr = u16::try_from(addr)
            .ok()
            .filter(|a| usize::from(*a) + self.ty.words() <= 0x1_0000)
            .ok_or_else(|| {
                perr(
                    &self.name,
                    format!(
                        "address {addr} (+{} registers) is past 65535",
                        self.ty.words()
                    ),
                )
            })?;
        Ok((table, addr))
    }

    /// Decodes the point's value from its registers (exactly [`RegisterType::words`], or more:
    /// the first ones are used), checking min/max.
    pub fn decode(&self, regs: &[u16]) -> Result<f64, DecodeError> {
        let need = self.ty.words();
        let r = regs.get(..need).ok_or_else(|| DecodeError::TooShort {
            what: self.name.clone(),
            need,
            got: regs.len(),
        })?;
        let two = || u32_from([r[0], r[1]], self.word_order);
        let raw = match self.ty {
            RegisterType::U16 => f64::from(r[0]),
            RegisterType::I16 => f64::from(r[0] as i16),
            RegisterType::U32 => f64::from(two()),
            RegisterType::I32 => f64::from(two() as i32),
            RegisterType::F32 => f64::from(f32::from_bits(two())),
        };
        let value = apply_scale(raw, self.scale);
        let out = |expected: String| DecodeError::OutOfRange {
            point: self.name.clone(),
            value: value.to_string(),
            expected,
        };
        if !value.is_finite() {
            return Err(out("a finite number".into()));
        }
        if self.min.is_some_and(|m| value < m) || self.max.is_some_and(|m| value > m) {
            return Err(out(format!(
                "{}..={}",
                self.min.unwrap_or(f64::NEG_INFINITY),
                self.max.unwrap_or(f64::INFINITY)
            )));
        }
        Ok(value)
    }

    /// The registers of `value`: range-checked against min/max and against what the register
    /// type can hold after scaling (integers are rounded to the nearest raw value).
    pub fn encode_regs(&self, value: f64) -> Result<Vec<u16>, EncodeError> {
        let point = || self.name.clone();
        if !value.is_finite() {
            return Err(EncodeError::NotFinite {
                point: point(),
                value,
            });
        }
        let (min, max) = (
            self.min.unwrap_or(f64::NEG_INFINITY),
            self.max.unwrap_or(f64::INFINITY),
        );
        if value < min || value > max {
            return Err(EncodeError::OutOfRange {
                point: point(),
                value,
                min,
                max,
            });
        }
        let raw = remove_scale(value, self.scale);
        let Some((lo, hi)) = self.ty.raw_range() else {
            let f = raw as f32;
            if !f.is_finite() {
                return Err(EncodeError::OutOfRange {
                    point: point(),
                    value,
                    min: apply_scale(f64::from(f32::MIN), self.scale),
                    max: apply_scale(f64::from(f32::MAX), self.scale),
                });
            }
            return Ok(u32_to(f.to_bits(), self.word_order).to_vec());
        };
        let raw = raw.round();
        if raw < lo || raw > hi {
            let (a, b) = (apply_scale(lo, self.scale), apply_scale(hi, self.scale));
            return Err(EncodeError::OutOfRange {
                point: point(),
                value,
                min: a.min(b),
                max: a.max(b),
            });
        }
        Ok(match self.ty {
            RegisterType::U16 | RegisterType::I16 => vec![raw as i32 as u16],
            RegisterType::U32 => u32_to(raw as u32, self.word_order).to_vec(),
            RegisterType::I32 => u32_to(raw as i32 as u32, self.word_order).to_vec(),
            RegisterType::F32 => u32_to((raw as f32).to_bits(), self.word_order).to_vec(),
        })
    }
}

impl RegisterProfile {
    /// Checks the profile: unique names, addresses on the wire, a finite non-zero scale,
    /// min ≤ max, writable points in holding registers.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let mut names = std::collections::HashSet::new();
        for p in &self.points {
            if p.name.is_empty() {
                return Err(perr("", "a point needs a name"));
            }
            if !names.insert(p.name.as_str()) {
                return Err(perr(&p.name, "the name is used twice"));
            }
            let (table, _) = p.location(self.addressing)?;
            if !p.scale.is_finite() || p.scale == 0.0 {
                return Err(perr(
                    &p.name,
                    format!("scale {} must be finite and not 0", p.scale),
                ));
            }
            if p.min.is_some_and(|m| !m.is_finite()) || p.max.is_some_and(|m| !m.is_finite()) {
                return Err(perr(&p.name, "min and max must be finite"));
            }
            if let (Some(min), Some(max)) = (p.min, p.max) {
                if min > max {
                    return Err(perr(&p.name, format!("min {min} is above max {max}")));
                }
            }
            if p.writable && table == Table::Input {
                return Err(perr(&p.name, "input registers cannot be written"));
            }
        }
        Ok(())
    }

    /// A point by name.
    pub fn point(&self, name: &str) -> Option<&PointSpec> {
        self.points.iter().find(|p| p.name == name)
    }

    fn require(&self, name: &str) -> Result<&PointSpec, DecodeError> {
        self.point(name).ok_or_else(|| DecodeError::UnknownPoint {
            model: "register profile".into(),
            point: name.to_owned(),
        })
    }

    /// Decodes a point from its registers.
    pub fn decode(&self, name: &str, regs: &[u16]) -> Result<f64, DecodeError> {
        self.require(name)?.decode(regs)
    }

    /// The write that sets a point to `value` (refused for a point that is not writable).
    pub fn encode(&self, name: &str, value: f64) -> Result<RegisterWrite, EncodeError> {
        let p = self.point(name).ok_or_else(|| EncodeError::Invalid {
            point: name.to_owned(),
            detail: "not a point of the register profile".into(),
        })?;
        if !p.writable {
            return Err(EncodeError::ReadOnly {
                point: name.to_owned(),
            });
        }
        let (table, addr) = p
            .location(self.addressing)
            .map_err(|e| EncodeError::Invalid {
                point: name.to_owned(),
                detail: e.detail,
            })?;
        if table == Table::Input {
            return Err(EncodeError::ReadOnly {
                point: name.to_owned(),
            });
        }
        Ok(RegisterWrite {
            addr,
            values: p.encode_regs(value)?,
        })
    }

    /// Reads and decodes a point.
    pub async fn read(&self, client: &ModbusClient, name: &str) -> Result<f64, ModbusError> {
        let p = self.require(name)?;
        let (table, addr) = p
            .location(self.addressing)
            .map_err(|e| ModbusError::InvalidRequest(e.to_string()))?;
        let n = p.ty.words() as u16;
        let regs = match table {
            Table::Holding => client.read_holding_registers(addr, n).await?,
            Table::Input => client.read_input_registers(addr, n).await?,
        };
        Ok(p.decode(&regs)?)
    }

    /// Encodes and writes a point.
    pub async fn write(
        &self,
        client: &ModbusClient,
        name: &str,
        value: f64,
    ) -> Result<(), ModbusError> {
        let w = self.encode(name, value)?;
        client.write(&w).await
    }

    /// Reads every point, in profile order (one request per point).
    pub async fn read_all(&self, client: &ModbusClient) -> Result<Vec<(String, f64)>, ModbusError> {
        let mut out = Vec::with_capacity(self.points.len());
        for p in &self.points {
            out.push((p.name.clone(), self.read(client, &p.name).await?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(ty: RegisterType, scale: f64) -> PointSpec {
        PointSpec {
            name: "p".into(),
            address: 0,
            ty,
            word_order: WordOrder::HighFirst,
            scale,
            unit: None,
            writable: true,
            min: None,
            max: None,
            table: None,
        }
    }

    #[test]
    fn decimal_scales_are_exact() {
        let p = point(RegisterType::U16, 0.1);
        assert_eq!(p.decode(&[150]).unwrap(), 15.0);
        assert_eq!(p.encode_regs(15.0).unwrap(), vec![150]);
        let p = point(RegisterType::I32, 0.001);
        assert_eq!(p.decode(&[0xFFFF, 0xFFFF]).unwrap(), -0.001);
        let p = point(RegisterType::U16, 2.5);
        assert_eq!(p.decode(&[3]).unwrap(), 7.5);
    }

    #[test]
    fn word_orders_and_types() {
        let mut p = point(RegisterType::U32, 1.0);
        assert_eq!(p.decode(&[1, 2]).unwrap(), 65538.0);
        p.word_order = WordOrder::LowFirst;
        assert_eq!(p.decode(&[2, 1]).unwrap(), 65538.0);
        assert_eq!(p.encode_regs(65538.0).unwrap(), vec![2, 1]);
        let p = point(RegisterType::F32, 1.0);
        let regs = p.encode_regs(-1.5).unwrap();
        assert_eq!(p.decode(&regs).unwrap(), -1.5);
        assert!(p.decode(&[0x7FC0, 0]).is_err(), "NaN is not a reading");
        assert!(p.encode_regs(1e300).is_err());
        let p = point(RegisterType::I16, -1.0);
        assert_eq!(p.encode_regs(5.0).unwrap(), vec![(-5i16) as u16]);
        assert!(p.encode_regs(40000.0).is_err());
    }

    #[test]
    fn ranges() {
        let mut p = point(RegisterType::U16, 1.0);
        assert!(p.encode_regs(-1.0).is_err());
        assert!(p.encode_regs(65536.0).is_err());
        assert!(p.encode_regs(f64::NAN).is_err());
        p.min = Some(10.0);
        p.max = Some(20.0);
        assert!(matches!(
            p.decode(&[9]),
            Err(DecodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            p.encode_regs(21.0),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(p.decode(&[]).is_err());
    }

    #[test]
    fn modicon_addressing() {
        let mut p = point(RegisterType::U16, 1.0);
        p.address = 40001;
        assert_eq!(
            p.location(Addressing::Modicon).unwrap(),
            (Table::Holding, 0)
        );
        assert_eq!(
            p.location(Addressing::Protocol).unwrap(),
            (Table::Holding, 40001)
        );
        p.address = 300_010;
        assert_eq!(p.location(Addressing::Modicon).unwrap(), (Table::Input, 9));
        p.address = 12;
        assert!(p.location(Addressing::Modicon).is_err());
        p.address = 65535;
        p.ty = RegisterType::U32;
        assert!(p.location(Addressing::Protocol).is_err());
        p.address = 40001;
        p.table = Some(Table::Input);
        assert!(p.location(Addressing::Modicon).is_err());
    }

    #[test]
    fn validation() {
        let ok = RegisterProfile {
            addressing: Addressing::Protocol,
            points: vec![point(RegisterType::U16, 1.0)],
        };
        ok.validate().unwrap();
        let mut twice = ok.clone();
        twice.points.push(point(RegisterType::U16, 1.0));
        assert!(twice.validate().is_err());
        let mut bad = ok.clone();
        bad.points[0].scale = 0.0;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.points[0].min = Some(2.0);
        bad.points[0].max = Some(1.0);
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.points[0].table = Some(Table::Input);
        assert!(bad.validate().is_err());
        let mut ro = ok;
        ro.points[0].writable = false;
        assert!(matches!(
            ro.encode("p", 1.0),
            Err(EncodeError::ReadOnly { .. })
        ));
    }
}
