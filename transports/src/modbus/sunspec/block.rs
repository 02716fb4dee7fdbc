//! [`ModelBlock`]: the registers of one SunSpec model as read, with typed access to its points
//! by name (through the model's table), scale factors applied.

use super::point::{apply_sf, check_sf, decode_value, ModelDef, PointDef, PointType, Value};
use crate::modbus::error::DecodeError;

/// The registers of one model, from its `ID` register on: `regs[0]` is the model id,
/// `regs[1]` its length `L`, then `L` registers (or fewer, when only the first part was read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelBlock {
    addr: u16,
    regs: Vec<u16>,
}

impl ModelBlock {
    /// A block read at register `addr` (the address of its `ID`). Registers past `L + 2` are
    /// dropped; fewer than `L + 2` are fine (points past the end are then an error when asked
    /// for); fewer than 2 (no `ID` and `L`) are an error.
    pub fn new(addr: u16, mut regs: Vec<u16>) -> Result<Self, DecodeError> {
        if regs.len() < 2 {
            return Err(DecodeError::TooShort {
                what: format!("SunSpec model header at {addr}"),
                need: 2,
                got: regs.len(),
            });
        }
        regs.truncate(usize::from(regs[1]) + 2);
        Ok(Self { addr, regs })
    }

    /// The register address of the model's `ID`.
    pub fn addr(&self) -> u16 {
        self.addr
    }

    /// The model id.
    pub fn id(&self) -> u16 {
        self.regs[0]
    }

    /// The model's length `L` (registers after `ID` and `L`).
    pub fn len(&self) -> u16 {
        self.regs[1]
    }

    /// Whether the model has no registers after `ID` and `L`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The registers held, `ID` and `L` included.
    pub fn regs(&self) -> &[u16] {
        &self.regs
    }

    /// The table of this model, when this crate knows it.
    pub fn def(&self) -> Option<&'static ModelDef> {
        ModelDef::by_id(self.id())
    }

    /// Checks that this block is model `def` (or, with `ids`, one of those ids sharing the
    /// table's layout) and long enough to hold every register up to offset `need_end`.
    pub fn expect(&self, ids: &[u16], need_end: u16, name: &str) -> Result<(), DecodeError> {
        if !ids.contains(&self.id()) {
            return Err(DecodeError::WrongModel {
                expected: name.to_owned(),
                found: self.id(),
            });
        }
        let need = need_end.saturating_sub(2);
        if self.len() < need {
            return Err(DecodeError::ModelTooShort {
                id: self.id(),
                len: self.len(),
                need,
            });
        }
        if self.regs.len() < usize::from(need_end) {
            return Err(DecodeError::TooShort {
                what: format!("model {}", self.id()),
                need: usize::from(need_end),
                got: self.regs.len(),
            });
        }
        Ok(())
    }

    fn def_or_err(&self) -> Result<&'static ModelDef, DecodeError> {
        self.def().ok_or_else(|| DecodeError::UnknownPoint {
            model: format!("model {} (no table)", self.id()),
            point: String::new(),
        })
    }

    /// A point's definition by name.
    pub fn point_def(&self, name: &str) -> Result<&'static PointDef, DecodeError> {
        self.def_or_err()?.require(name)
    }

    /// A point's value by name: `None` when the device says "not implemented", or when the
    /// point lies past the model's length `L` (an older, shorter version of the model).
    pub fn value(&self, name: &str) -> Result<Option<Value>, DecodeError> {
        let def = self.point_def(name)?;
        self.value_of(def)
    }

    /// A point's value by its definition (see [`ModelBlock::value`]).
    pub fn value_of(&self, def: &PointDef) -> Result<Option<Value>, DecodeError> {
        if def.end() > u32::from(self.len()) + 2 {
            return Ok(None);
        }
        let start = usize::from(def.offset);
        let regs = self.regs.get(start..).unwrap_or(&[]);
        decode_value(def.ty, regs, def.name)
    }

    fn wrong_type(def: &PointDef, asked: &str) -> DecodeError {
        DecodeError::WrongType {
            point: def.name.to_owned(),
            actual: def.ty.to_string(),
            asked: asked.to_owned(),
        }
    }

    /// A 16-bit unsigned point (`uint16`, `enum16`, `bitfield16`, `acc16`, `count`).
    pub fn u16(&self, name: &str) -> Result<Option<u16>, DecodeError> {
        let def = self.point_def(name)?;
        match self.value_of(def)? {
            None => Ok(None),
            Some(Value::U16(v)) => Ok(Some(v)),
            Some(_) => Err(Self::wrong_type(def, "16-bit unsigned")),
        }
    }

    /// A 32-bit unsigned point (`uint32`, `enum32`, `bitfield32`, `acc32`).
    pub fn u32(&self, name: &str) -> Result<Option<u32>, DecodeError> {
        let def = self.point_def(name)?;
        match self.value_of(def)? {
            None => Ok(None),
            Some(Value::U32(v)) => Ok(Some(v)),
            Some(_) => Err(Self::wrong_type(def, "32-bit unsigned")),
        }
    }

    /// A string point.
    pub fn string(&self, name: &str) -> Result<Option<String>, DecodeError> {
        let def = self.point_def(name)?;
        match self.value_of(def)? {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(_) => Err(Self::wrong_type(def, "string")),
        }
    }

    /// An enumerated point (`enum16`) mapped through `map`; a value with no meaning is an
    /// [`DecodeError::OutOfRange`] naming the point and the values it may take.
    pub fn enum16<T>(
        &self,
        name: &str,
        map: impl Fn(u16) -> Option<T>,
        expected: &str,
    ) -> Result<Option<T>, DecodeError> {
        match self.u16(name)? {
            None => Ok(None),
            Some(v) => map(v).map(Some).ok_or_else(|| DecodeError::OutOfRange {
                point: name.to_owned(),
                value: v.to_string(),
                expected: expected.to_owned(),
            }),
        }
    }

    /// An enable (`enum16` DISABLED = 0 / ENABLED = 1) as a bool.
    pub fn enabled(&self, name: &str) -> Result<Option<bool>, DecodeError> {
        self.enum16(
            name,
            |v| match v {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            },
            "0 (disabled) or 1 (enabled)",
        )
    }

    /// A scale factor point, checked (-10..=10); `None` when not implemented.
    pub fn scale_factor(&self, name: &str) -> Result<Option<i8>, DecodeError> {
        let def = self.point_def(name)?;
        let raw = match self.value_of(def)? {
            None => None,
            Some(Value::Sf(v)) => Some(v),
            Some(_) => return Err(Self::wrong_type(def, "sunssf")),
        };
        check_sf(raw, name, name)
    }

    /// A point as a number in its unit: its raw value times ten to the power of its scale
    /// factor (when it has one). `None` when the point is not implemented. A point with a
    /// value whose scale factor is not implemented, or out of -10..=10, is an error.
    pub fn scaled(&self, name: &str) -> Result<Option<f64>, DecodeError> {
        let def = self.point_def(name)?;
        let Some(value) = self.value_of(def)? else {
            return Ok(None);
        };
        let raw = match value {
            Value::F32(v) => f64::from(v),
            Value::Str(_) => return Err(Self::wrong_type(def, "number")),
            ref v => v.as_i128().map(|v| v as f64).unwrap_or_default(),
        };
        let Some(sf_name) = def.sf else {
            return Ok(Some(raw));
        };
        let sf_def = self.point_def(sf_name)?;
        let sf_raw = match self.value_of(sf_def)? {
            None => None,
            Some(Value::Sf(v)) => Some(v),
            Some(_) => return Err(Self::wrong_type(sf_def, "sunssf")),
        };
        match check_sf(sf_raw, def.name, sf_name)? {
            Some(sf) => Ok(Some(apply_sf(raw, sf))),
            None => Err(DecodeError::MissingScaleFactor {
                point: def.name.to_owned(),
                sf: sf_name.to_owned(),
            }),
        }
    }

    /// Like [`ModelBlock::scaled`], for a point that must be of an integer type.
    pub fn scaled_int(&self, name: &str) -> Result<Option<f64>, DecodeError> {
        let def = self.point_def(name)?;
        if matches!(
            def.ty,
            PointType::String(_) | PointType::Pad | PointType::Float32
        ) {
            return Err(Self::wrong_type(def, "integer"));
        }
        self.scaled(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_713(regs: [u16; 7]) -> ModelBlock {
        let mut v = vec![713, 7];
        v.extend(regs);
        ModelBlock::new(40002, v).unwrap()
    }

    #[test]
    fn scaled_values_and_sentinels() {
        // WHRtg 1000 x10^1, WHAvail n/i, SoC 5512 x10^-2, SoH 0xFFFF, Sta 0, WH_SF 1, Pct_SF -2
        let b = block_713([1000, 0xFFFF, 5512, 0xFFFF, 0, 1, (-2i16) as u16]);
        assert_eq!(b.scaled("WHRtg").unwrap(), Some(10000.0));
        assert_eq!(b.scaled("WHAvail").unwrap(), None);
        assert_eq!(b.scaled("SoC").unwrap(), Some(55.12));
        assert_eq!(b.scaled("SoH").unwrap(), None);
        assert_eq!(b.u16("Sta").unwrap(), Some(0));
        assert!(matches!(
            b.value("Nope"),
            Err(DecodeError::UnknownPoint { .. })
        ));
        assert!(matches!(
            b.string("SoC"),
            Err(DecodeError::WrongType { .. })
        ));
    }

    #[test]
    fn missing_or_wild_scale_factors_are_errors() {
        let b = block_713([1000, 0, 5512, 0, 0, 0x8000, 11]);
        assert_eq!(
            b.scaled("WHRtg").unwrap_err(),
            DecodeError::MissingScaleFactor {
                point: "WHRtg".into(),
                sf: "WH_SF".into()
            }
        );
        assert!(matches!(
            b.scaled("SoC").unwrap_err(),
            DecodeError::ScaleFactorOutOfRange { value: 11, .. }
        ));
        // Not implemented values need no scale factor.
        let b = block_713([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0x8000, 0x8000]);
        assert_eq!(b.scaled("WHRtg").unwrap(), None);
    }

    #[test]
    fn short_blocks() {
        assert!(ModelBlock::new(0, vec![1]).is_err());
        // L says 7 but only 3 registers after the header were read.
        let b = ModelBlock::new(0, vec![713, 7, 1, 2, 3]).unwrap();
        assert!(matches!(b.scaled("Sta"), Err(DecodeError::TooShort { .. })));
        // L says 2: points past it are absent (an older, shorter model), not an error.
        let b = ModelBlock::new(0, vec![713, 2, 1, 2, 3, 4]).unwrap();
        assert_eq!(b.regs().len(), 4);
        assert_eq!(b.u16("Sta").unwrap(), None);
        assert!(matches!(
            b.expect(&[713], 9, "713"),
            Err(DecodeError::ModelTooShort { .. })
        ));
    }
}
