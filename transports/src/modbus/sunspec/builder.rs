//! Laying out SunSpec maps: [`ModelImage`] (one model's registers, every point "not
//! implemented" until set), [`SunSpecMapBuilder`] (models one after the other behind "SunS",
//! closed by the end marker) and [`RegisterImage`] (the result, which a simulated device
//! serves and which [`walk_image`] walks).

use super::block::ModelBlock;
use super::models::Common;
use super::point::{int_regs, unscale, ModelDef, PointDef, PointType, Value};
use super::tables::MODEL_1;
use super::walk::{walk_image, ModelHeader, SunSpecMap, END_MODEL_ID, SUNS};
use crate::modbus::error::{DecodeError, EncodeError};

/// The registers of one model, `ID` and `L` included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelImage {
    def: Option<&'static ModelDef>,
    regs: Vec<u16>,
}

fn not_implemented(ty: PointType) -> Vec<u16> {
    match ty {
        PointType::Uint16 | PointType::Enum16 | PointType::Bitfield16 | PointType::Count => {
            vec![0xFFFF]
        }
        PointType::Int16 | PointType::Sunssf => vec![0x8000],
        PointType::Acc16 | PointType::Pad => vec![0],
        PointType::Uint32 | PointType::Enum32 | PointType::Bitfield32 => vec![0xFFFF; 2],
        PointType::Int32 => vec![0x8000, 0],
        PointType::Acc32 => vec![0; 2],
        PointType::Float32 => vec![0x7FC0, 0],
        PointType::Uint64 => vec![0xFFFF; 4],
        PointType::Int64 => vec![0x8000, 0, 0, 0],
        PointType::Acc64 => vec![0; 4],
        PointType::String(n) => vec![0; usize::from(n)],
    }
}

impl ModelImage {
    /// A model of a table, every point "not implemented".
    pub fn new(def: &'static ModelDef) -> Self {
        let mut regs = vec![0; usize::from(def.len) + 2];
        for p in def.points {
            let v = not_implemented(p.ty);
            let at = usize::from(p.offset);
            regs[at..at + v.len()].copy_from_slice(&v);
        }
        regs[0] = def.id;
        regs[1] = def.len;
        Self {
            def: Some(def),
            regs,
        }
    }

    /// A model this crate has a table for, by id.
    pub fn of(id: u16) -> Result<Self, EncodeError> {
        ModelDef::by_id(id)
            .map(Self::new)
            .ok_or_else(|| EncodeError::Invalid {
                point: format!("model {id}"),
                detail: "no table for this model".into(),
            })
    }

    /// A model without a table (a vendor's), from its registers after `ID` and `L`.
    pub fn raw(id: u16, body: Vec<u16>) -> Result<Self, EncodeError> {
        let len = u16::try_from(body.len())
            .ok()
            .filter(|_| id != 0 && id != END_MODEL_ID);
        let len = len.ok_or_else(|| EncodeError::Invalid {
            point: format!("model {id}"),
            detail: format!(
                "id must be 1..=65534 and length at most 65535, got {}",
                body.len()
            ),
        })?;
        let mut regs = vec![id, len];
        regs.extend(body);
        Ok(Self { def: None, regs })
    }

    /// The model id.
    pub fn id(&self) -> u16 {
        self.regs[0]
    }

    /// The registers, `ID` and `L` included.
    pub fn regs(&self) -> &[u16] {
        &self.regs
    }

    /// The registers as a block read at `addr`.
    pub fn block(&self, addr: u16) -> ModelBlock {
        ModelBlock::new(addr, self.regs.clone()).expect("an image has its ID and L")
    }

    fn point(&self, name: &str) -> Result<&'static PointDef, EncodeError> {
        let def = self.def.ok_or_else(|| EncodeError::Invalid {
            point: name.to_owned(),
            detail: format!("model {} has no table", self.id()),
        })?;
        let p = def.point(name).ok_or_else(|| EncodeError::Invalid {
            point: name.to_owned(),
            detail: format!("not a point of model {}", def.id),
        })?;
        if matches!(p.name, "ID" | "L") {
            return Err(EncodeError::ReadOnly {
                point: name.to_owned(),
            });
        }
        Ok(p)
    }

    fn put(&mut self, p: &PointDef, regs: &[u16]) {
        let at = usize::from(p.offset);
        self.regs[at..at + regs.len()].copy_from_slice(regs);
    }

    /// Sets a point to SunSpec's "not implemented" value.
    pub fn set_not_implemented(&mut self, name: &str) -> Result<&mut Self, EncodeError> {
        let p = self.point(name)?;
        self.put(p, &not_implemented(p.ty));
        Ok(self)
    }

    /// Sets a point's raw value. The value's kind must fit the point's type (`U16` for the
    /// 16-bit unsigned types, `Sf` for a scale factor, …) and must not be the type's "not
    /// implemented" value (use [`ModelImage::set_not_implemented`]).
    pub fn set(&mut self, name: &str, value: Value) -> Result<&mut Self, EncodeError> {
        let p = self.point(name)?;
        let invalid = |detail: String| EncodeError::Invalid {
            point: name.to_owned(),
            detail,
        };
        let regs = match (&value, p.ty) {
            (Value::Str(s), PointType::String(n)) => {
                let max = usize::from(n) * 2;
                if s.is_empty() || s.len() > max || s.contains('\0') {
                    return Err(invalid(format!(
                        "a string of 1..={max} bytes without NUL, got {} bytes",
                        s.len()
                    )));
                }
                let mut bytes = s.as_bytes().to_vec();
                bytes.resize(max, 0);
                bytes
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect()
            }
            (Value::F32(v), PointType::Float32) => {
                if v.is_nan() {
                    return Err(EncodeError::NotFinite {
                        point: name.to_owned(),
                        value: f64::from(*v),
                    });
                }
                let bits = v.to_bits();
                vec![(bits >> 16) as u16, bits as u16]
            }
            (v, ty) => {
                let fits = matches!(
                    (v, ty),
                    (
                        Value::U16(_),
                        PointType::Uint16
                            | PointType::Enum16
                            | PointType::Bitfield16
                            | PointType::Acc16
                            | PointType::Count
                    ) | (Value::I16(_), PointType::Int16)
                        | (Value::Sf(_), PointType::Sunssf)
                        | (
                            Value::U32(_),
                            PointType::Uint32
                                | PointType::Enum32
                                | PointType::Bitfield32
                                | PointType::Acc32
                        )
                        | (Value::I32(_), PointType::Int32)
                        | (Value::U64(_), PointType::Uint64 | PointType::Acc64)
                        | (Value::I64(_), PointType::Int64)
                );
                let raw = v
                    .as_i128()
                    .filter(|_| fits)
                    .ok_or_else(|| invalid(format!("a {ty} point cannot hold {v:?}")))?;
                let (min, max) = ty.raw_range().unwrap_or((0, 0));
                if raw < min || raw > max {
                    return Err(EncodeError::OutOfRange {
                        point: name.to_owned(),
                        value: raw as f64,
                        min: min as f64,
                        max: max as f64,
                    });
                }
                int_regs(ty, raw)
            }
        };
        self.put(p, &regs);
        Ok(self)
    }

    /// Sets a scale factor (-10..=10).
    pub fn set_sf(&mut self, name: &str, sf: i8) -> Result<&mut Self, EncodeError> {
        self.set(name, Value::Sf(sf.into()))
    }

    /// Sets a string point.
    pub fn set_str(&mut self, name: &str, s: &str) -> Result<&mut Self, EncodeError> {
        self.set(name, Value::Str(s.to_owned()))
    }

    /// Sets a point from a number in its unit, scaled by its scale factor as already set in
    /// this image (set the scale factor first): rounded to the nearest raw value, which must
    /// fit the point's type and not be its "not implemented" value.
    pub fn set_scaled(&mut self, name: &str, value: f64) -> Result<&mut Self, EncodeError> {
        let p = self.point(name)?;
        let sf = match p.sf {
            None => 0,
            Some(sf_name) => {
                let sf_def = self.point(sf_name)?;
                let raw = self.regs[usize::from(sf_def.offset)];
                if raw == 0x8000 {
                    return Err(EncodeError::Scale {
                        point: name.to_owned(),
                        detail: format!("{sf_name} is not set"),
                    });
                }
                match raw as i16 {
                    v @ -10..=10 => v as i8,
                    v => {
                        return Err(EncodeError::Scale {
                            point: name.to_owned(),
                            detail: format!("{sf_name} = {v} is outside -10..=10"),
                        })
                    }
                }
            }
        };
        if p.ty == PointType::Float32 {
            return self.set(name, Value::F32(value as f32));
        }
        let raw = unscale(value, sf, p.ty, name)?;
        let regs = int_regs(p.ty, raw);
        self.put(p, &regs);
        Ok(self)
    }
}

impl Common {
    /// Model 1 with these values (length 66, with the final pad).
    pub fn to_image(&self) -> Result<ModelImage, EncodeError> {
        let mut m = ModelImage::new(&MODEL_1);
        let strings = [
            ("Mn", &self.manufacturer),
            ("Md", &self.model),
            ("Opt", &self.options),
            ("Vr", &self.version),
            ("SN", &self.serial_number),
        ];
        for (name, v) in strings {
            if let Some(s) = v {
                m.set_str(name, s)?;
            }
        }
        if let Some(da) = self.device_address {
            m.set("DA", Value::U16(da))?;
        }
        Ok(m)
    }
}

/// Lays models out behind a "SunS" marker.
#[derive(Debug, Clone)]
pub struct SunSpecMapBuilder {
    base: u16,
    models: Vec<ModelImage>,
    end_marker: bool,
}

impl SunSpecMapBuilder {
    /// A map whose marker is at `base` (40000, 0 or 50000 for a device discovered the
    /// standard way).
    pub fn new(base: u16) -> Self {
        Self {
            base,
            models: Vec::new(),
            end_marker: true,
        }
    }

    /// Appends a model.
    pub fn push(&mut self, model: ModelImage) -> &mut Self {
        self.models.push(model);
        self
    }

    /// Leaves the end marker out (as devices that end their map by refusing to read further).
    pub fn without_end_marker(&mut self) -> &mut Self {
        self.end_marker = false;
        self
    }

    /// The register image; an error when it does not fit below register 65536.
    pub fn build(&self) -> Result<RegisterImage, EncodeError> {
        let mut regs = SUNS.to_vec();
        for m in &self.models {
            regs.extend_from_slice(&m.regs);
        }
        if self.end_marker {
            regs.extend([END_MODEL_ID, 0]);
        }
        if usize::from(self.base) + regs.len() > 0x1_0000 {
            return Err(EncodeError::Invalid {
                point: "SunSpec map".into(),
                detail: format!(
                    "{} registers from {} run past address 65535",
                    regs.len(),
                    self.base
                ),
            });
        }
        Ok(RegisterImage {
            base: self.base,
            regs,
        })
    }
}

/// Registers from `base` on, as a device holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterImage {
    /// The address of `regs[0]`.
    pub base: u16,
    /// The registers.
    pub regs: Vec<u16>,
}

impl RegisterImage {
    fn index(&self, addr: u16, count: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::from(addr.checked_sub(self.base)?);
        let end = start.checked_add(count)?;
        (end <= self.regs.len()).then_some(start..end)
    }

    /// `count` registers at `addr`, `None` when any is outside the image (a device answers
    /// "illegal data address").
    pub fn read(&self, addr: u16, count: usize) -> Option<&[u16]> {
        self.index(addr, count).map(|r| &self.regs[r])
    }

    /// Writes registers at `addr`; `false` (and nothing written) when any is outside.
    pub fn write(&mut self, addr: u16, values: &[u16]) -> bool {
        match self.index(addr, values.len()) {
            Some(r) => {
                self.regs[r].copy_from_slice(values);
                true
            }
            None => false,
        }
    }

    /// Walks the image's SunSpec map.
    pub fn walk(&self) -> Result<SunSpecMap, DecodeError> {
        walk_image(self.base, &self.regs)
    }

    /// The block of a model of the map.
    pub fn block(&self, header: &ModelHeader) -> Result<ModelBlock, DecodeError> {
        let count = usize::from(header.len) + 2;
        let regs = self
            .read(header.addr, count)
            .ok_or_else(|| DecodeError::TooShort {
                what: format!("model {} at {}", header.id, header.addr),
                need: count,
                got: 0,
            })?;
        ModelBlock::new(header.addr, regs.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::sunspec::models::StorageCapacity;

    #[test]
    fn build_walk_decode() {
        let common = Common {
            manufacturer: Some("gridvisor".into()),
            model: Some("sim-inverter".into()),
            serial_number: Some("SN-1".into()),
            device_address: Some(1),
            ..Common::default()
        };
        let mut storage = ModelImage::of(713).unwrap();
        storage
            .set_sf("WH_SF", 1)
            .unwrap()
            .set_sf("Pct_SF", -1)
            .unwrap()
            .set_scaled("WHRtg", 60_000.0)
            .unwrap()
            .set_scaled("SoC", 55.5)
            .unwrap();
        let image = SunSpecMapBuilder::new(40000)
            .push(common.to_image().unwrap())
            .push(storage)
            .build()
            .unwrap();
        let map = image.walk().unwrap();
        assert_eq!(map.models.len(), 2);
        let c = Common::decode(&image.block(&map.models[0]).unwrap()).unwrap();
        assert_eq!(c, common);
        let s = StorageCapacity::decode(&image.block(map.find(713).unwrap()).unwrap()).unwrap();
        assert_eq!(s.energy_rating_wh, Some(60_000.0));
        assert_eq!(s.soc_pct, Some(55.5));
        assert_eq!(s.soh_pct, None);
        assert_eq!(s.status, None);
    }

    #[test]
    fn setters_check_types_and_ranges() {
        let mut m = ModelImage::of(713).unwrap();
        assert!(m.set_scaled("SoC", 50.0).is_err(), "Pct_SF not set yet");
        m.set_sf("Pct_SF", 0).unwrap();
        assert!(
            m.set_scaled("SoC", 65535.0).is_err(),
            "0xFFFF is not implemented"
        );
        assert!(m.set("SoC", Value::I16(1)).is_err());
        assert!(m.set("ID", Value::U16(1)).is_err());
        assert!(m.set_sf("Pct_SF", 11).is_err());
        assert!(m.set("Nope", Value::U16(1)).is_err());
        let mut c = ModelImage::of(1).unwrap();
        assert!(c.set_str("Opt", &"x".repeat(17)).is_err());
        assert!(c.set_str("Opt", "").is_err());
        c.set_str("Opt", &"x".repeat(16)).unwrap();
        assert!(ModelImage::raw(0, vec![]).is_err());
        assert_eq!(
            ModelImage::raw(64001, vec![7]).unwrap().regs(),
            &[64001, 1, 7]
        );
    }

    #[test]
    fn images_that_do_not_fit() {
        let mut b = SunSpecMapBuilder::new(65500);
        b.push(ModelImage::of(701).unwrap());
        assert!(b.build().is_err());
        let image = RegisterImage {
            base: 10,
            regs: vec![1, 2, 3],
        };
        assert_eq!(image.read(10, 3), Some(&[1, 2, 3][..]));
        assert_eq!(image.read(9, 1), None);
        assert_eq!(image.read(12, 2), None);
    }
}
