//! Property tests of the Modbus and SunSpec codecs: builder → walk → decode round trips over
//! random maps, scaled values through every integer type, register profiles, and the 704
//! control encoders read back through the 704 decoder.

use std::time::Duration;

use gridvisor_transports::modbus::{
    profile::{PointSpec, RegisterType},
    sunspec::{
        point::{apply_sf, decode_value},
        tables::{MODELS, MODEL_704},
        walk_image, AcMeasurement, AcMeter, ActivePowerSetpoint, Common, DerControls, DerCtlScales,
        ModelDef, ModelHeader, ModelImage, PointType, PowerLimit, RegisterImage, SetpointMode,
        StorageCapacity, SunSpecMapBuilder, Value, METER_MODELS,
    },
    DecodeError, EncodeError, WordOrder,
};
use proptest::prelude::*;

/// splitmix64: values of a model from one seed (proptest picks the seeds).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: i128, hi: i128) -> i128 {
        let span = (hi - lo + 1) as u128;
        let r = (u128::from(self.next()) << 64 | u128::from(self.next())) % span;
        lo + r as i128
    }

    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

/// What a point was set to: `None` is "not implemented".
type Expected = Vec<(&'static str, Option<Value>)>;

fn value_for(ty: PointType, raw: i128) -> Value {
    match ty {
        PointType::Int16 => Value::I16(raw as i16),
        PointType::Int32 => Value::I32(raw as i32),
        PointType::Int64 => Value::I64(raw as i64),
        PointType::Sunssf => Value::Sf(raw as i16),
        t if t.size() == 1 => Value::U16(raw as u16),
        t if t.size() == 2 => Value::U32(raw as u32),
        _ => Value::U64(raw as u64),
    }
}

/// A model image with random values (some not implemented; scale factors -10..=10).
fn random_model(def: &'static ModelDef, rng: &mut Rng) -> (ModelImage, Expected) {
    let mut image = ModelImage::new(def);
    let mut expected = Vec::new();
    for p in def.points.iter().skip(2) {
        let v = match p.ty {
            PointType::Pad => continue,
            _ if rng.chance(20) => None,
            PointType::String(n) => {
                let len = rng.range(1, i128::from(n) * 2) as usize;
                let s: String = (0..len)
                    .map(|_| char::from(b"ABCxyz019 -_."[rng.range(0, 12) as usize]))
                    .collect();
                // Trailing spaces are padding: decoded without them.
                if s.trim_end().is_empty() {
                    None
                } else {
                    image.set_str(p.name, &s).unwrap();
                    expected.push((p.name, Some(Value::Str(s.trim_end().to_owned()))));
                    continue;
                }
            }
            ty => {
                let (lo, hi) = ty.raw_range().unwrap();
                Some(value_for(ty, rng.range(lo, hi)))
            }
        };
        match &v {
            Some(v) => image.set(p.name, v.clone()).unwrap(),
            None => image.set_not_implemented(p.name).unwrap(),
        };
        expected.push((p.name, v));
    }
    (image, expected)
}

fn model_strategy() -> impl Strategy<Value = (usize, u64)> {
    (0..=MODELS.len(), any::<u64>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn builder_walk_decode_round_trip(
        base in prop_oneof![Just(40000u16), Just(0u16), Just(50000u16), 0u16..60000],
        models in prop::collection::vec(model_strategy(), 1..7),
        end_marker in any::<bool>(),
    ) {
        let mut builder = SunSpecMapBuilder::new(base);
        let mut expected = Vec::new();
        let mut total = 2 + 2 * usize::from(end_marker);
        for &(which, seed) in &models {
            let mut rng = Rng(seed);
            if which == MODELS.len() {
                // A vendor model without a table.
                let id = rng.range(60000, 65534) as u16;
                let body: Vec<u16> = (0..rng.range(0, 20)).map(|_| rng.next() as u16).collect();
                total += 2 + body.len();
                builder.push(ModelImage::raw(id, body).unwrap());
                expected.push((id, None));
            } else {
                let (image, values) = random_model(MODELS[which], &mut rng);
                expected.push((image.id(), Some(values)));
                total += image.regs().len();
                builder.push(image);
            }
        }
        if !end_marker {
            builder.without_end_marker();
        }
        let image = match builder.build() {
            Ok(image) => image,
            // Too long for the space above `base`: the only reason to refuse.
            Err(EncodeError::Invalid { .. }) => {
                prop_assert!(usize::from(base) + total > 0x1_0000);
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        let map = image.walk().unwrap();
        prop_assert_eq!(map.end_marker, end_marker);
        prop_assert_eq!(map.models.len(), expected.len());
        let mut addr = u32::from(base) + 2;
        for (header, (id, values)) in map.models.iter().zip(&expected) {
            prop_assert_eq!(header.id, *id);
            prop_assert_eq!(u32::from(header.addr), addr);
            addr = header.end();
            let block = image.block(header).unwrap();
            let Some(values) = values else { continue };
            let def = ModelDef::by_id(*id).unwrap();
            for (name, v) in values {
                let p = def.point(name).unwrap();
                prop_assert_eq!(&block.value(name).unwrap(), v, "{}.{}", id, name);
                if matches!(p.ty, PointType::String(_) | PointType::Sunssf) {
                    continue;
                }
                // The scaled value: raw × 10^sf, or an error when the scale factor is missing.
                let sf = p.sf.map(|sf| {
                    values.iter().find(|(n, _)| *n == sf).and_then(|(_, v)| v.clone())
                });
                let scaled = block.scaled(name);
                match (v, sf) {
                    (None, _) => prop_assert_eq!(scaled.unwrap(), None),
                    (Some(v), None) => {
                        prop_assert_eq!(scaled.unwrap(), Some(v.as_i128().unwrap() as f64))
                    }
                    (Some(_), Some(None)) => prop_assert!(
                        matches!(scaled, Err(DecodeError::MissingScaleFactor { .. })),
                        "{:?}", scaled
                    ),
                    (Some(v), Some(Some(Value::Sf(sf)))) => prop_assert_eq!(
                        scaled.unwrap(),
                        Some(apply_sf(v.as_i128().unwrap() as f64, sf as i8))
                    ),
                    (Some(_), Some(Some(other))) => {
                        return Err(TestCaseError::fail(format!("scale factor {other:?}")))
                    }
                }
            }
            // The typed decoder: the values above, or an error that names a value (random enums
            // and percentages may be out of range, scale factors missing), never a layout error.
            let typed = match *id {
                1 => Common::decode(&block).map(|_| ()),
                701 => AcMeasurement::decode(&block).map(|_| ()),
                704 => DerControls::decode(&block).map(|_| ()),
                713 => StorageCapacity::decode(&block).map(|_| ()),
                id if METER_MODELS.contains(&id) => AcMeter::decode(&block).map(|_| ()),
                _ => Ok(()),
            };
            if let Err(e) = typed {
                prop_assert!(
                    matches!(e, DecodeError::OutOfRange { .. } | DecodeError::MissingScaleFactor { .. }),
                    "{}", e
                );
            }
        }
        // The walk of the image and the headers seen by the builder agree on the end.
        let last: Option<&ModelHeader> = map.models.last();
        prop_assert_eq!(
            last.map_or(u32::from(base) + 2, |h| h.end()) + if end_marker { 2 } else { 0 },
            u32::from(base) + image.regs.len() as u32
        );
        prop_assert_eq!(walk_image(image.base, &image.regs).unwrap(), map);
    }

    #[test]
    fn scaled_values_round_trip_through_every_integer_type(
        which in 0..MODELS.len(),
        point in any::<prop::sample::Index>(),
        sf in -10i8..=10,
        seed in any::<u64>(),
    ) {
        let def = MODELS[which];
        let scaled: Vec<_> = def.points.iter().filter(|p| p.sf.is_some()).collect();
        prop_assume!(!scaled.is_empty());
        let p = point.get(&scaled);
        let (lo, hi) = p.ty.raw_range().unwrap();
        // f64 carries 52 bits: raw values of 64-bit points are kept within them.
        let (lo, hi) = (lo.max(-(1 << 50)), hi.min(1 << 50));
        let raw = Rng(seed).range(lo, hi);
        let mut image = ModelImage::new(def);
        image.set_sf(p.sf.unwrap(), sf).unwrap();
        let value = apply_sf(raw as f64, sf);
        image.set_scaled(p.name, value).unwrap();
        let block = image.block(40002);
        prop_assert_eq!(block.value(p.name).unwrap().and_then(|v| v.as_i128()), Some(raw));
        prop_assert_eq!(block.scaled(p.name).unwrap(), Some(value));
    }

    #[test]
    fn profile_points_round_trip(
        ty in prop_oneof![
            Just(RegisterType::U16), Just(RegisterType::I16), Just(RegisterType::U32),
            Just(RegisterType::I32), Just(RegisterType::F32),
        ],
        low_first in any::<bool>(),
        scale in prop_oneof![Just(1.0), Just(0.1), Just(0.01), Just(0.001), Just(10.0), Just(2.5), Just(-1.0)],
        regs in prop::array::uniform2(any::<u16>()),
    ) {
        let scale = if ty == RegisterType::F32 { 1.0 } else { scale };
        let spec = PointSpec {
            name: "p".into(),
            address: 0,
            ty,
            word_order: if low_first { WordOrder::LowFirst } else { WordOrder::HighFirst },
            scale,
            unit: None,
            writable: true,
            min: None,
            max: None,
            table: None,
        };
        let regs = &regs[..ty.words()];
        match spec.decode(regs) {
            Ok(v) => {
                let back = spec.encode_regs(v).unwrap();
                if ty == RegisterType::F32 && f32::from_bits(u32::from(regs[0]) << 16 | u32::from(regs[1])) == 0.0 {
                    // -0.0 and 0.0 are one value.
                    prop_assert_eq!(spec.decode(&back).unwrap(), v);
                } else {
                    prop_assert_eq!(&back[..], regs);
                }
            }
            Err(e) => {
                prop_assert!(ty == RegisterType::F32, "{}", e);
                prop_assert!(matches!(e, DecodeError::OutOfRange { .. }), "{}", e);
            }
        }
    }

    #[test]
    fn power_limits_read_back_through_704(
        sf in -3i8..=3,
        pct in 0.0f64..=100.0,
        revert in prop::option::of(0.0f64..=100.0),
        secs in 1u64..1_000_000,
        millis in 0u64..1000,
    ) {
        let (scales, mut image) = ctl_image(sf);
        let cmd = PowerLimit {
            pct,
            revert_after: Duration::from_millis(secs * 1000 + millis),
            revert_to_pct: revert,
        };
        let writes = match scales.power_limit(&cmd) {
            Ok(w) => w,
            Err(EncodeError::OutOfRange { .. }) => {
                // Only when the scaled percentage does not fit uint16.
                prop_assert!(apply_sf(pct.max(revert.unwrap_or(0.0)), -sf) > 65534.0 - 1.0);
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        prop_assert_eq!(writes.last().unwrap().values.clone(), vec![1]);
        for w in &writes {
            prop_assert!(image.write(w.addr, &w.values));
        }
        let ctl = DerControls::decode(&image.block(&image.walk().unwrap().models[0]).unwrap()).unwrap();
        let half = apply_sf(0.5, sf);
        prop_assert_eq!(ctl.power_limit.enabled, Some(true));
        prop_assert!((ctl.power_limit.pct.unwrap() - pct).abs() <= half);
        prop_assert_eq!(ctl.power_limit.revert_enabled, Some(revert.is_some()));
        if let Some(r) = revert {
            prop_assert!((ctl.power_limit.revert_pct.unwrap() - r).abs() <= half);
        }
        prop_assert_eq!(ctl.power_limit.revert_secs, Some(secs as u32));
    }

    #[test]
    fn setpoints_read_back_through_704(
        sf in -3i8..=3,
        watts in any::<bool>(),
        value in -100.0f64..=100.0,
        kilo in any::<bool>(),
        revert in prop::option::of(-100.0f64..=100.0),
        secs in 1u64..100_000,
    ) {
        let (scales, mut image) = ctl_image(sf);
        let scale = if watts && kilo { 1000.0 } else { 1.0 };
        let cmd = ActivePowerSetpoint {
            mode: if watts { SetpointMode::Watts } else { SetpointMode::WMaxPct },
            value: value * scale,
            revert_after: Duration::from_secs(secs),
            revert_to: revert.map(|r| r * scale),
        };
        let writes = match scales.setpoint(&cmd) {
            Ok(w) => w,
            Err(EncodeError::OutOfRange { .. }) => {
                prop_assert!(!watts, "watts within ±100 kW fit int32 with -3..=3");
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        for w in &writes {
            prop_assert!(image.write(w.addr, &w.values));
        }
        let ctl = DerControls::decode(&image.block(&image.walk().unwrap().models[0]).unwrap()).unwrap();
        let half = apply_sf(0.5, sf);
        let s = ctl.setpoint;
        prop_assert_eq!(s.enabled, Some(true));
        prop_assert_eq!(s.mode, Some(cmd.mode));
        prop_assert_eq!(s.revert_enabled, Some(revert.is_some()));
        prop_assert_eq!(s.revert_secs, Some(secs as u32));
        let got = if watts { s.w } else { s.pct }.unwrap();
        prop_assert!((got - cmd.value).abs() <= half, "{} vs {}", got, cmd.value);
        if let Some(r) = cmd.revert_to {
            let got = if watts { s.revert_w } else { s.revert_pct }.unwrap();
            prop_assert!((got - r).abs() <= half);
        }
    }

    #[test]
    fn not_implemented_never_decodes_as_a_number(ty_index in 0usize..8) {
        let types = [
            (PointType::Int16, vec![0x8000]),
            (PointType::Uint16, vec![0xFFFF]),
            (PointType::Enum16, vec![0xFFFF]),
            (PointType::Bitfield16, vec![0xFFFF]),
            (PointType::Int32, vec![0x8000, 0]),
            (PointType::Uint32, vec![0xFFFF, 0xFFFF]),
            (PointType::Acc32, vec![0, 0]),
            (PointType::Sunssf, vec![0x8000]),
        ];
        let (ty, regs) = &types[ty_index];
        prop_assert_eq!(decode_value(*ty, regs, "p").unwrap(), None);
    }
}

/// A 704 image at 40002 with every scale factor `sf`, and its scales.
fn ctl_image(sf: i8) -> (DerCtlScales, RegisterImage) {
    let mut m = ModelImage::new(&MODEL_704);
    for p in MODEL_704
        .points
        .iter()
        .filter(|p| p.ty == PointType::Sunssf)
    {
        m.set_sf(p.name, sf).unwrap();
    }
    let image = SunSpecMapBuilder::new(40000).push(m).build().unwrap();
    let ctl = DerControls::decode(&image.block(&image.walk().unwrap().models[0]).unwrap()).unwrap();
    (ctl.scales, image)
}
