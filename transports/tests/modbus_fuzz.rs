//! Fuzz-style runs of every Modbus and SunSpec decoder: arbitrary registers and bytes must end
//! in a value or a typed error, never a panic. Case counts: GRIDVISOR_FUZZ_CASES (default 512
//! for the decoders; the client over real sockets runs a sixteenth of it, at least 16).
//!
//! A long run: `GRIDVISOR_FUZZ_CASES=200000 cargo test --release -p gridvisor-transports --test modbus_fuzz`

use crate::modbus_support;

use std::time::Duration;

use gridvisor_transports::modbus::{
    profile::{Addressing, PointSpec, RegisterProfile, RegisterType, Table},
    sunspec::{
        point::decode_value, tables::MODELS, walk_image, AcMeasurement, AcMeter,
        ActivePowerSetpoint, Common, DerControls, DerCtlScales, ModelBlock, ModelImage, ModelWalk,
        PointType, PowerLimit, SetpointMode, StorageCapacity, Value, MAX_MODELS, SUNS,
    },
    ModbusClient, WordOrder,
};
use proptest::prelude::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

fn cases(divisor: u32, min: u32) -> u32 {
    let n = std::env::var("GRIDVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(512);
    (n / divisor).max(min)
}

fn config(divisor: u32, min: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(divisor, min),
        // A fuzz run must not leave files in the source tree; failures print their input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn any_point_type() -> impl Strategy<Value = PointType> {
    prop_oneof![
        Just(PointType::Uint16),
        Just(PointType::Int16),
        Just(PointType::Enum16),
        Just(PointType::Bitfield16),
        Just(PointType::Acc16),
        Just(PointType::Count),
        Just(PointType::Uint32),
        Just(PointType::Int32),
        Just(PointType::Acc32),
        Just(PointType::Enum32),
        Just(PointType::Bitfield32),
        Just(PointType::Uint64),
        Just(PointType::Int64),
        Just(PointType::Acc64),
        Just(PointType::Float32),
        Just(PointType::Sunssf),
        Just(PointType::Pad),
        (0u16..40).prop_map(PointType::String),
    ]
}

/// Registers of a model block: an id of a known model (or any), then anything.
fn block_regs() -> impl Strategy<Value = Vec<u16>> {
    let ids: Vec<u16> = MODELS.iter().map(|m| m.id).collect();
    (
        prop_oneof![3 => prop::sample::select(ids), 1 => any::<u16>()],
        prop_oneof![any::<u16>(), 0u16..200],
        prop::collection::vec(
            prop_oneof![
                any::<u16>(),
                Just(0x8000u16),
                Just(0xFFFF),
                Just(0),
                (-10i16..=10).prop_map(|v| v as u16),
            ],
            0..300,
        ),
    )
        .prop_map(|(id, len, mut body)| {
            body.insert(0, len);
            body.insert(0, id);
            body
        })
}

fn decode_everything(block: &ModelBlock) {
    let _ = Common::decode(block);
    let _ = AcMeasurement::decode(block);
    let _ = DerControls::decode(block);
    let _ = StorageCapacity::decode(block);
    let _ = AcMeter::decode(block);
    for m in MODELS {
        for p in m.points {
            let _ = block.value_of(p);
        }
    }
    if let Some(def) = block.def() {
        for p in def.points {
            let _ = block.value(p.name);
            let _ = block.scaled(p.name);
            let _ = block.scale_factor(p.name);
            let _ = block.u16(p.name);
            let _ = block.u32(p.name);
            let _ = block.string(p.name);
            let _ = block.enabled(p.name);
        }
    }
}

proptest! {
    #![proptest_config(config(1, 64))]

    #[test]
    fn register_blocks_never_panic(addr in any::<u16>(), regs in block_regs()) {
        if let Ok(block) = ModelBlock::new(addr, regs) {
            decode_everything(&block);
        }
    }

    #[test]
    fn points_never_panic(ty in any_point_type(), regs in prop::collection::vec(any::<u16>(), 0..50)) {
        match decode_value(ty, &regs, "p") {
            Ok(Some(Value::Str(s))) => prop_assert!(!s.contains('\0')),
            Ok(_) => {}
            Err(_) => prop_assert!(regs.len() < usize::from(ty.size())),
        }
    }

    #[test]
    fn model_walks_never_panic(
        base in any::<u16>(),
        marker in any::<bool>(),
        regs in prop::collection::vec(
            prop_oneof![any::<u16>(), 0u16..10, Just(0xFFFF), prop::sample::select(vec![1u16, 701, 704, 713, 203])],
            0..400,
        ),
    ) {
        let mut regs = regs;
        if marker {
            regs.splice(0..0, SUNS);
        }
        if let Ok(map) = walk_image(base, &regs) {
            // What a walk returns holds together: increasing, inside the image, bounded.
            let end = u32::from(base) + regs.len() as u32;
            let mut next = u32::from(base) + 2;
            prop_assert!(map.models.len() <= MAX_MODELS);
            for m in &map.models {
                prop_assert_eq!(u32::from(m.addr), next);
                prop_assert!(m.id != 0 && m.id != 0xFFFF);
                next = m.end();
                prop_assert!(next <= end);
            }
        }
    }

    #[test]
    fn fed_walks_never_panic(
        base in any::<u16>(),
        headers in prop::collection::vec((any::<u16>(), any::<u16>(), any::<bool>()), 0..300),
    ) {
        let mut walk = ModelWalk::new(base);
        for (id, len, end) in headers {
            if walk.next_addr().is_none() {
                break;
            }
            if end && walk.is_end(id) {
                break;
            }
            if walk.push(id, len).is_err() {
                break;
            }
        }
        let map = walk.into_map();
        prop_assert!(map.models.len() <= MAX_MODELS);
    }

    #[test]
    fn profiles_never_panic(
        ty in prop_oneof![
            Just(RegisterType::U16), Just(RegisterType::I16), Just(RegisterType::U32),
            Just(RegisterType::I32), Just(RegisterType::F32),
        ],
        address in any::<u32>(),
        modicon in any::<bool>(),
        low_first in any::<bool>(),
        scale in prop_oneof![any::<f64>(), Just(0.1), Just(1e-300), Just(1e300)],
        min in prop::option::of(any::<f64>()),
        max in prop::option::of(any::<f64>()),
        regs in prop::collection::vec(any::<u16>(), 0..3),
        value in prop_oneof![any::<f64>(), -1e6f64..1e6],
    ) {
        let spec = PointSpec {
            name: "p".into(),
            address,
            ty,
            word_order: if low_first { WordOrder::LowFirst } else { WordOrder::HighFirst },
            scale,
            unit: None,
            writable: true,
            min,
            max,
            table: Some(Table::Holding),
        };
        let profile = RegisterProfile {
            addressing: if modicon { Addressing::Modicon } else { Addressing::Protocol },
            points: vec![spec.clone()],
        };
        let _ = profile.validate();
        let _ = spec.location(profile.addressing);
        let decoded = profile.decode("p", &regs);
        if let Ok(v) = decoded {
            prop_assert!(v.is_finite());
        }
        if let Ok(w) = profile.encode("p", value) {
            prop_assert_eq!(w.values.len(), ty.words());
        }
    }

    #[test]
    fn control_encoders_never_panic(
        addr in any::<u16>(),
        sfs in prop::array::uniform3(prop::option::of(-10i8..=10)),
        value in prop_oneof![any::<f64>(), -200f64..200.0, -1e7f64..1e7],
        revert in prop::option::of(any::<f64>()),
        secs in any::<u64>(),
        nanos in 0u32..1_000_000_000,
        watts in any::<bool>(),
    ) {
        let scales = DerCtlScales { addr, wmax_lim_pct: sfs[0], wset: sfs[1], wset_pct: sfs[2] };
        let after = Duration::new(secs, nanos);
        let _ = scales.power_limit(&PowerLimit { pct: value, revert_after: after, revert_to_pct: revert });
        let r = scales.setpoint(&ActivePowerSetpoint {
            mode: if watts { SetpointMode::Watts } else { SetpointMode::WMaxPct },
            value,
            revert_after: after,
            revert_to: revert,
        });
        if let Ok(writes) = r {
            for w in writes {
                prop_assert!(usize::from(w.addr) + w.values.len() <= 0x1_0000);
            }
        }
    }

    #[test]
    fn model_images_never_panic(
        which in 0..MODELS.len(),
        point in any::<prop::sample::Index>(),
        value in any::<f64>(),
        raw in any::<i64>(),
        sf in any::<i8>(),
    ) {
        let def = MODELS[which];
        let p = point.get(def.points);
        let mut m = ModelImage::new(def);
        let _ = m.set_sf(p.name, sf);
        if let Some(sf_name) = p.sf {
            let _ = m.set_sf(sf_name, sf);
        }
        let _ = m.set_scaled(p.name, value);
        let _ = m.set(p.name, Value::I64(raw));
        let _ = m.set(p.name, Value::U16(raw as u16));
        let _ = m.set(p.name, Value::Str(raw.to_string()));
        decode_everything(&m.block(0));
    }
}

proptest! {
    #![proptest_config(config(16, 16))]

    /// The client against a peer that answers arbitrary bytes (a valid MBAP header or not):
    /// some error or a value, never a panic, and the client is usable afterwards.
    #[test]
    fn the_client_never_panics_on_arbitrary_answers(
        answer in prop::collection::vec(any::<u8>(), 0..64),
        framed in any::<bool>(),
        count in 1u16..=4,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let peer = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let mut out = Vec::new();
                if framed {
                    // The request's transaction id and a length that matches what follows.
                    out.extend(&head[..4]);
                    out.extend(((answer.len() + 1) as u16).to_be_bytes());
                    out.push(head[6]);
                }
                out.extend(&answer);
                let _ = s.write_all(&out).await;
                let _ = s.flush().await;
                // Keep the connection open until the client gives up on it.
                let mut sink = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_millis(300), s.read(&mut sink)).await;
            });
            let mut cfg = modbus_support::test_config(addr);
            cfg.request_timeout = Duration::from_millis(100);
            // Each case waits out one back-off: keep it short (nothing here asserts on it).
            cfg.backoff_initial = Duration::from_millis(5);
            cfg.backoff_max = Duration::from_millis(20);
            let c = ModbusClient::new(cfg);
            match c.read_holding_registers(0, count).await {
                Ok(regs) => assert_eq!(regs.len(), usize::from(count)),
                Err(e) => {
                    let _ = e.to_string();
                }
            }
            let _ = peer.await;
            // Usable afterwards: fails cleanly (the peer is gone).
            c.wait_backoff().await;
            assert!(c.read_holding_registers(0, 1).await.is_err());
        });
    }
}
