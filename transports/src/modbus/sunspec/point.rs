//! SunSpec point types, the point tables' shape, and the decoding of one point from a model's
//! registers: SunSpec's "not implemented" values become `None`, never a number, and scale
//! factors are checked (-10..=10) before they scale anything.

use std::fmt;

use crate::modbus::{
    error::{DecodeError, EncodeError},
    regs::{bytes_of, u32_from, u64_from, WordOrder},
};

/// The type of a SunSpec point, as named in the model definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointType {
    /// `uint16`; not implemented: 0xFFFF.
    Uint16,
    /// `int16`; not implemented: 0x8000.
    Int16,
    /// `enum16`; not implemented: 0xFFFF.
    Enum16,
    /// `bitfield16`; not implemented: 0xFFFF.
    Bitfield16,
    /// `acc16` (an accumulator); not implemented: 0.
    Acc16,
    /// `count`; not implemented: 0xFFFF.
    Count,
    /// `uint32`; not implemented: 0xFFFFFFFF.
    Uint32,
    /// `int32`; not implemented: 0x80000000.
    Int32,
    /// `acc32`; not implemented: 0.
    Acc32,
    /// `enum32`; not implemented: 0xFFFFFFFF.
    Enum32,
    /// `bitfield32`; not implemented: 0xFFFFFFFF.
    Bitfield32,
    /// `uint64`; not implemented: 0xFFFFFFFFFFFFFFFF.
    Uint64,
    /// `int64`; not implemented: 0x8000000000000000.
    Int64,
    /// `acc64`; not implemented: 0.
    Acc64,
    /// `float32`; not implemented: NaN.
    Float32,
    /// `sunssf`, a scale factor (a power of ten, -10..=10); not implemented: 0x8000.
    Sunssf,
    /// `pad`: no value.
    Pad,
    /// `string` of this many registers (two bytes each); not implemented: all zero.
    String(u16),
}

impl PointType {
    /// Registers taken by a point of this type.
    pub const fn size(self) -> u16 {
        match self {
            Self::Uint16
            | Self::Int16
            | Self::Enum16
            | Self::Bitfield16
            | Self::Acc16
            | Self::Count
            | Self::Sunssf
            | Self::Pad => 1,
            Self::Uint32
            | Self::Int32
            | Self::Acc32
            | Self::Enum32
            | Self::Bitfield32
            | Self::Float32 => 2,
            Self::Uint64 | Self::Int64 | Self::Acc64 => 4,
            Self::String(n) => n,
        }
    }

    /// The type's name in the model definitions (`uint16`, `string`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Uint16 => "uint16",
            Self::Int16 => "int16",
            Self::Enum16 => "enum16",
            Self::Bitfield16 => "bitfield16",
            Self::Acc16 => "acc16",
            Self::Count => "count",
            Self::Uint32 => "uint32",
            Self::Int32 => "int32",
            Self::Acc32 => "acc32",
            Self::Enum32 => "enum32",
            Self::Bitfield32 => "bitfield32",
            Self::Uint64 => "uint64",
            Self::Int64 => "int64",
            Self::Acc64 => "acc64",
            Self::Float32 => "float32",
            Self::Sunssf => "sunssf",
            Self::Pad => "pad",
            Self::String(_) => "string",
        }
    }

    /// The smallest and largest raw value a point of this type can carry as a number (the
    /// "not implemented" value excluded), for the integer types; `None` for the others.
    pub const fn raw_range(self) -> Option<(i128, i128)> {
        Some(match self {
            Self::Uint16 | Self::Enum16 | Self::Bitfield16 | Self::Count => (0, 0xFFFE),
            Self::Int16 => (-0x7FFF, 0x7FFF),
            Self::Acc16 => (1, 0xFFFF),
            Self::Uint32 | Self::Enum32 | Self::Bitfield32 => (0, 0xFFFF_FFFE),
            Self::Int32 => (-0x7FFF_FFFF, 0x7FFF_FFFF),
            Self::Acc32 => (1, 0xFFFF_FFFF),
            Self::Uint64 => (0, 0xFFFF_FFFF_FFFF_FFFE),
            Self::Int64 => (-0x7FFF_FFFF_FFFF_FFFF, 0x7FFF_FFFF_FFFF_FFFF),
            Self::Acc64 => (1, 0xFFFF_FFFF_FFFF_FFFF),
            Self::Sunssf => (-10, 10),
            Self::Float32 | Self::Pad | Self::String(_) => return None,
        })
    }
}

impl fmt::Display for PointType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(n) => write!(f, "string({n})"),
            other => f.write_str(other.name()),
        }
    }
}

/// One point of a model table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointDef {
    /// The point's name (`W`, `WMaxLimPct`; a point of a group is `Group.Point`).
    pub name: &'static str,
    /// Its offset from the model's `ID` register (which is offset 0; `L` is 1).
    pub offset: u16,
    /// Its type.
    pub ty: PointType,
    /// The name of its scale factor point in the same model, if it is scaled.
    pub sf: Option<&'static str>,
    /// Whether the model lets a client write it (`access: RW`).
    pub writable: bool,
}

impl PointDef {
    /// One past the point's last register, as an offset from the model's `ID`.
    pub const fn end(&self) -> u32 {
        self.offset as u32 + self.ty.size() as u32
    }
}

/// A model table: its id, its length `L` (registers after `ID` and `L`) and its points.
#[derive(Debug, PartialEq, Eq)]
pub struct ModelDef {
    /// The model id.
    pub id: u16,
    /// The model's name in its definition.
    pub name: &'static str,
    /// Its length `L`: registers after `ID` and `L`.
    pub len: u16,
    /// Every point, in register order, `ID` and `L` included.
    pub points: &'static [PointDef],
}

impl ModelDef {
    /// The table of a model id this crate knows.
    pub fn by_id(id: u16) -> Option<&'static ModelDef> {
        super::tables::MODELS.iter().copied().find(|m| m.id == id)
    }

    /// A point by name.
    pub fn point(&self, name: &str) -> Option<&'static PointDef> {
        self.points.iter().find(|p| p.name == name)
    }

    /// A point by name, or the error naming the model and the point.
    pub fn require(&self, name: &str) -> Result<&'static PointDef, DecodeError> {
        self.point(name).ok_or_else(|| DecodeError::UnknownPoint {
            model: format!("model {}", self.id),
            point: name.to_owned(),
        })
    }
}

/// A point's value as read. SunSpec's "not implemented" values never become a `Value`: they
/// decode as `None`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint16`, `enum16`, `bitfield16`, `acc16`, `count`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`, `enum32`, `bitfield32`, `acc32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `uint64`, `acc64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float32`.
    F32(f32),
    /// `sunssf` as read (its range is checked where it scales a value).
    Sf(i16),
    /// `string`, up to its first NUL, trailing spaces trimmed (bytes that are not UTF-8 are
    /// replaced, never an error).
    Str(String),
}

impl Value {
    /// The value as a whole number, for the integer types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            Self::Sf(v) => v.into(),
            Self::F32(_) | Self::Str(_) => return None,
        })
    }
}

/// Decodes a point of type `ty` from exactly its registers; `None` when it holds SunSpec's
/// "not implemented" value (or is a pad). `regs` shorter than the type is an error.
pub fn decode_value(
    ty: PointType,
    regs: &[u16],
    point: &str,
) -> Result<Option<Value>, DecodeError> {
    let need = usize::from(ty.size());
    let regs = regs.get(..need).ok_or_else(|| DecodeError::TooShort {
        what: point.to_owned(),
        need,
        got: regs.len(),
    })?;
    let two = || u32_from([regs[0], regs[1]], WordOrder::HighFirst);
    let four = || u64_from([regs[0], regs[1], regs[2], regs[3]]);
    Ok(match ty {
        PointType::Uint16 | PointType::Enum16 | PointType::Bitfield16 | PointType::Count => {
            (regs[0] != 0xFFFF).then_some(Value::U16(regs[0]))
        }
        PointType::Acc16 => (regs[0] != 0).then_some(Value::U16(regs[0])),
        PointType::Int16 => (regs[0] != 0x8000).then_some(Value::I16(regs[0] as i16)),
        PointType::Sunssf => (regs[0] != 0x8000).then_some(Value::Sf(regs[0] as i16)),
        PointType::Uint32 | PointType::Enum32 | PointType::Bitfield32 => {
            let v = two();
            (v != u32::MAX).then_some(Value::U32(v))
        }
        PointType::Acc32 => {
            let v = two();
            (v != 0).then_some(Value::U32(v))
        }
        PointType::Int32 => {
            let v = two() as i32;
            (v != i32::MIN).then_some(Value::I32(v))
        }
        PointType::Uint64 => {
            let v = four();
            (v != u64::MAX).then_some(Value::U64(v))
        }
        PointType::Acc64 => {
            let v = four();
            (v != 0).then_some(Value::U64(v))
        }
        PointType::Int64 => {
            let v = four() as i64;
            (v != i64::MIN).then_some(Value::I64(v))
        }
        PointType::Float32 => {
            let v = f32::from_bits(two());
            (!v.is_nan()).then_some(Value::F32(v))
        }
        PointType::Pad => None,
        PointType::String(_) => decode_string(regs),
    })
}

fn decode_string(regs: &[u16]) -> Option<Value> {
    if regs.iter().all(|&r| r == 0) {
        return None;
    }
    let bytes = bytes_of(regs);
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let s = String::from_utf8_lossy(&bytes[..end]);
    Some(Value::Str(s.trim_end_matches([' ', '\0']).to_owned()))
}

/// Checks a scale factor as read: `None` (not implemented) stays `None`; -10..=10 is the
/// exponent; anything else is an error naming the scaled point.
pub fn check_sf(raw: Option<i16>, point: &str, sf: &str) -> Result<Option<i8>, DecodeError> {
    match raw {
        None => Ok(None),
        Some(v @ -10..=10) => Ok(Some(v as i8)),
        Some(value) => Err(DecodeError::ScaleFactorOutOfRange {
            point: point.to_owned(),
            sf: sf.to_owned(),
            value,
        }),
    }
}

/// `raw × 10^sf`, computed so that a negative exponent divides by an exact power of ten
/// (2305 with -1 is 230.5, not 230.50000000000003).
pub fn apply_sf(raw: f64, sf: i8) -> f64 {
    let p = 10f64.powi(i32::from(sf.unsigned_abs()));
    if sf >= 0 {
        raw * p
    } else {
        raw / p
    }
}

/// The raw value that `value` scales to with exponent `sf`, rounded to the nearest whole
/// number, checked against the raw range of `ty` (SunSpec's "not implemented" value is never
/// produced).
pub fn unscale(value: f64, sf: i8, ty: PointType, point: &str) -> Result<i128, EncodeError> {
    if !value.is_finite() {
        return Err(EncodeError::NotFinite {
            point: point.to_owned(),
            value,
        });
    }
    let Some((min, max)) = ty.raw_range() else {
        return Err(EncodeError::Invalid {
            point: point.to_owned(),
            detail: format!("a {ty} point is not a scaled integer"),
        });
    };
    let raw = apply_sf(value, -sf).round();
    let out_of_range = || EncodeError::OutOfRange {
        point: point.to_owned(),
        value,
        min: apply_sf(min as f64, sf),
        max: apply_sf(max as f64, sf),
    };
    // Compare in f64 first: a value far outside would not fit i128 (the cast saturates).
    if raw < min as f64 || raw > max as f64 {
        return Err(out_of_range());
    }
    let raw = raw as i128;
    if raw < min || raw > max {
        return Err(out_of_range());
    }
    Ok(raw)
}

/// Registers of an integer `raw` value of type `ty` (range already checked by the caller).
pub(crate) fn int_regs(ty: PointType, raw: i128) -> Vec<u16> {
    match ty.size() {
        1 => vec![raw as u16],
        2 => {
            let v = raw as u32;
            vec![(v >> 16) as u16, v as u16]
        }
        _ => crate::modbus::regs::u64_to(raw as u64).to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_implemented_values_decode_as_none() {
        use PointType::*;
        let cases: &[(PointType, &[u16])] = &[
            (Uint16, &[0xFFFF]),
            (Enum16, &[0xFFFF]),
            (Bitfield16, &[0xFFFF]),
            (Count, &[0xFFFF]),
            (Acc16, &[0]),
            (Int16, &[0x8000]),
            (Sunssf, &[0x8000]),
            (Uint32, &[0xFFFF, 0xFFFF]),
            (Enum32, &[0xFFFF, 0xFFFF]),
            (Bitfield32, &[0xFFFF, 0xFFFF]),
            (Acc32, &[0, 0]),
            (Int32, &[0x8000, 0]),
            (Uint64, &[0xFFFF; 4]),
            (Acc64, &[0; 4]),
            (Int64, &[0x8000, 0, 0, 0]),
            (Float32, &[0x7FC0, 0]),
            (Pad, &[0]),
            (String(4), &[0; 4]),
        ];
        for (ty, regs) in cases {
            assert_eq!(decode_value(*ty, regs, "p").unwrap(), None, "{ty}");
        }
    }

    #[test]
    fn values_next_to_the_sentinels_are_numbers() {
        use PointType::*;
        assert_eq!(
            decode_value(Int16, &[0x8001], "p").unwrap(),
            Some(Value::I16(-32767))
        );
        assert_eq!(
            decode_value(Uint16, &[0xFFFE], "p").unwrap(),
            Some(Value::U16(0xFFFE))
        );
        assert_eq!(
            decode_value(Int32, &[0xFFFF, 0xFFFF], "p").unwrap(),
            Some(Value::I32(-1))
        );
        assert_eq!(
            decode_value(Acc32, &[0, 1], "p").unwrap(),
            Some(Value::U32(1))
        );
        assert_eq!(
            decode_value(Acc32, &[1, 0], "p").unwrap(),
            Some(Value::U32(65536))
        );
        assert_eq!(
            decode_value(Sunssf, &[0xFFFE], "p").unwrap(),
            Some(Value::Sf(-2))
        );
    }

    #[test]
    fn strings_stop_at_nul_and_trim_padding() {
        let regs = [u16::from_be_bytes(*b"Ab"), u16::from_be_bytes(*b"c "), 0, 0];
        assert_eq!(
            decode_value(PointType::String(4), &regs, "p").unwrap(),
            Some(Value::Str("Abc".into()))
        );
        let bad = [0xFFFE, 0x4100];
        assert!(matches!(
            decode_value(PointType::String(2), &bad, "p").unwrap(),
            Some(Value::Str(_))
        ));
    }

    #[test]
    fn short_registers_are_an_error() {
        let err = decode_value(PointType::Uint32, &[1], "W").unwrap_err();
        assert_eq!(err.to_string(), "W: needs 2 registers, got 1");
    }

    #[test]
    fn scale_factors() {
        assert_eq!(apply_sf(2305.0, -1), 230.5);
        assert_eq!(apply_sf(15.0, 3), 15000.0);
        assert_eq!(check_sf(Some(-10), "W", "W_SF").unwrap(), Some(-10));
        assert_eq!(check_sf(None, "W", "W_SF").unwrap(), None);
        let err = check_sf(Some(11), "W", "W_SF").unwrap_err();
        assert_eq!(
            err.to_string(),
            "W: scale factor W_SF = 11 is outside -10..=10"
        );
    }

    #[test]
    fn unscale_rounds_and_checks_the_range() {
        assert_eq!(unscale(230.5, -1, PointType::Uint16, "V").unwrap(), 2305);
        assert_eq!(unscale(-1.0, 0, PointType::Int16, "W").unwrap(), -1);
        assert!(unscale(-1.0, 0, PointType::Uint16, "V").is_err());
        // 0xFFFF is "not implemented" for uint16: never produced.
        assert!(unscale(65535.0, 0, PointType::Uint16, "V").is_err());
        assert!(unscale(-32768.0, 0, PointType::Int16, "W").is_err());
        assert!(unscale(f64::NAN, 0, PointType::Int16, "W").is_err());
        assert!(unscale(1e300, 0, PointType::Int64, "W").is_err());
        // An accumulator of 0 would read back as "not implemented".
        assert!(unscale(0.0, 0, PointType::Acc32, "Wh").is_err());
    }
}
