//! Our Modbus client and SunSpec decoders against a pymodbus 3.16.1 server
//! (tests/py/modbus_server.py) over real sockets: the server's register image is built in
//! Python from the official model definitions, with values it chooses and prints; every
//! decoded point is compared to them, not-implemented points and a Modbus exception included,
//! and the 704 control writes are checked point by point as the server received them.

use crate::modbus_support;

use std::time::Duration;

use gridvisor_transports::modbus::{
    profile::RegisterProfile,
    sunspec::{
        point::apply_sf, AcMeasurement, AcType, ActivePowerSetpoint, DerControls, MeterReading,
        ModelDef, PointType, PowerLimit, SetpointMode, SunSpecDevice,
    },
    EncodeError, ExceptionCode, ModbusError,
};
use modbus_support::{client, require_pymodbus, PyServer};
use serde_json::{json, Value};

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

struct Expected<'a>(&'a Value);

impl Expected<'_> {
    fn point(&self, model: u16, name: &str) -> &Value {
        let v = &self.0["points"][model.to_string()][name];
        assert!(!v.is_null(), "the server printed no point {model}.{name}");
        v
    }

    fn value(&self, model: u16, name: &str) -> Option<f64> {
        let v = &self.point(model, name)["value"];
        (!v.is_null()).then(|| v.as_f64().unwrap_or_else(|| panic!("{model}.{name}: {v}")))
    }

    fn raw(&self, model: u16, name: &str) -> Option<i64> {
        self.point(model, name)["raw"].as_i64()
    }

    fn string(&self, model: u16, name: &str) -> Option<String> {
        self.point(model, name)["value"].as_str().map(str::to_owned)
    }
}

#[track_caller]
fn assert_num(actual: Option<f64>, expected: Option<f64>, what: &str) {
    match (actual, expected) {
        (None, None) => {}
        (Some(a), Some(e)) if close(a, e) => {}
        _ => panic!("{what}: decoded {actual:?}, the server holds {expected:?}"),
    }
}

/// Every point of every model with a table, through the generic block decoder.
async fn check_every_point(dev: &SunSpecDevice, exp: &Expected<'_>) {
    for header in &dev.map().models {
        let Some(def) = ModelDef::by_id(header.id) else {
            continue;
        };
        let block = dev.read_block(header).await.unwrap();
        for p in def.points {
            let what = format!("{}.{}", header.id, p.name);
            match p.ty {
                PointType::Pad => {}
                PointType::String(_) => {
                    assert_eq!(
                        block.string(p.name).unwrap(),
                        exp.string(header.id, p.name),
                        "{what}"
                    )
                }
                PointType::Sunssf => assert_eq!(
                    block.scale_factor(p.name).unwrap().map(i64::from),
                    exp.raw(header.id, p.name),
                    "{what}"
                ),
                _ => assert_num(
                    block
                        .scaled(p.name)
                        .unwrap_or_else(|e| panic!("{what}: {e}")),
                    exp.value(header.id, p.name),
                    &what,
                ),
            }
        }
    }
}

async fn check_typed(dev: &SunSpecDevice, exp: &Expected<'_>) {
    let common = dev.common().await.unwrap();
    assert_eq!(common.manufacturer, exp.string(1, "Mn"));
    assert_eq!(common.model, exp.string(1, "Md"));
    assert_eq!(common.serial_number, exp.string(1, "SN"));
    assert_eq!(common.device_address.map(i64::from), exp.raw(1, "DA"));

    let m: AcMeasurement = dev.ac_measurement().await.unwrap();
    let ac_type = m.ac_type.map(|t| match t {
        AcType::SinglePhase => 0,
        AcType::SplitPhase => 1,
        AcType::ThreePhase => 2,
    });
    assert_eq!(ac_type, exp.raw(701, "ACType"));
    assert_num(m.w, exp.value(701, "W"), "701 W");
    assert_num(m.var, exp.value(701, "Var"), "701 Var");
    assert_num(m.pf, exp.value(701, "PF"), "701 PF");
    assert_num(m.hz, exp.value(701, "Hz"), "701 Hz");
    assert_num(m.v_ln, exp.value(701, "LNV"), "701 LNV");
    assert_num(m.wh_injected, exp.value(701, "TotWhInj"), "701 TotWhInj");
    assert_num(m.wh_absorbed, exp.value(701, "TotWhAbs"), "701 TotWhAbs");
    assert_num(
        m.temperatures.ambient,
        exp.value(701, "TmpAmb"),
        "701 TmpAmb",
    );
    assert_num(m.temperatures.switch, exp.value(701, "TmpSw"), "701 TmpSw");
    assert_num(m.phases[1].v_ll, exp.value(701, "VL2L3"), "701 VL2L3");
    assert_num(m.phases[2].w, exp.value(701, "WL3"), "701 WL3");
    assert_eq!(m.alarms.map(i64::from), exp.raw(701, "Alrm"));
    assert_eq!(m.alarm_info, exp.string(701, "MnAlrmInfo"));

    let ctl: DerControls = dev.der_controls().await.unwrap();
    assert_eq!(
        ctl.scales.wmax_lim_pct.map(i64::from),
        exp.raw(704, "WMaxLimPct_SF")
    );
    assert_eq!(ctl.scales.wset.map(i64::from), exp.raw(704, "WSet_SF"));
    assert_num(
        ctl.power_limit.pct,
        exp.value(704, "WMaxLimPct"),
        "704 WMaxLimPct",
    );
    assert_eq!(
        ctl.power_limit.revert_secs.map(i64::from),
        exp.raw(704, "WMaxLimPctRvrtTms")
    );
    assert_num(ctl.setpoint.w, exp.value(704, "WSet"), "704 WSet");
    assert_num(ctl.setpoint.pct, exp.value(704, "WSetPct"), "704 WSetPct");
    assert_eq!(ctl.setpoint.enabled.map(i64::from), exp.raw(704, "WSetEna"));

    let s = dev.storage().await.unwrap();
    assert_num(s.soc_pct, exp.value(713, "SoC"), "713 SoC");
    assert_num(s.soh_pct, exp.value(713, "SoH"), "713 SoH");
    assert_num(s.energy_rating_wh, exp.value(713, "WHRtg"), "713 WHRtg");

    match dev.meter().await.unwrap() {
        MeterReading::Meter(meter) => {
            assert_eq!(meter.model_id, 203);
            assert_num(meter.w, exp.value(203, "W"), "203 W");
            assert_num(meter.hz, exp.value(203, "Hz"), "203 Hz");
            assert_num(
                meter.v_ll_phase[0],
                exp.value(203, "PhVphAB"),
                "203 PhVphAB",
            );
            assert_num(meter.a_phase[2], exp.value(203, "AphC"), "203 AphC");
            assert_num(
                meter.wh_imported,
                exp.value(203, "TotWhImp"),
                "203 TotWhImp",
            );
            assert_num(
                meter.wh_exported,
                exp.value(203, "TotWhExp"),
                "203 TotWhExp",
            );
            assert_eq!(meter.events.map(i64::from), exp.raw(203, "Evt"));
        }
        other => panic!("expected the 203 meter, got {other:?}"),
    }
}

fn assert_map(dev: &SunSpecDevice, info: &Value, end_marker: bool) {
    let models: Vec<Value> = dev
        .map()
        .models
        .iter()
        .map(|m| json!({"id": m.id, "addr": m.addr, "len": m.len}))
        .collect();
    assert_eq!(Value::from(models), info["models"]);
    assert_eq!(i64::from(dev.map().base), info["base"].as_i64().unwrap());
    assert_eq!(dev.map().end_marker, end_marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sunspec_device_against_pymodbus() {
    require_pymodbus();
    for (seed, base) in [(1, "40000"), (2, "0"), (3, "40000"), (4, "40000")] {
        let server = PyServer::start(&["--seed", &seed.to_string(), "--base", base]);
        let exp = Expected(&server.info);
        let c = client(server.addr());
        let dev = SunSpecDevice::discover(c.clone())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_map(&dev, &server.info, true);
        check_every_point(&dev, &exp).await;
        check_typed(&dev, &exp).await;

        // An address the device does not have: a typed exception, the connection stays.
        let illegal = server.info["illegal_address"].as_u64().unwrap() as u16;
        let err = c.read_holding_registers(illegal, 2).await.unwrap_err();
        assert_eq!(
            err.exception_code(),
            Some(ExceptionCode::IllegalDataAddress),
            "{err}"
        );
        assert!(
            matches!(err, ModbusError::Exception { function: 0x03, .. }),
            "{err}"
        );
        dev.common().await.unwrap();
        assert_eq!(c.stats().connects, 1, "seed {seed}");
        assert_eq!(c.stats().failures, 0, "seed {seed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_at_50000_without_end_marker() {
    require_pymodbus();
    let server = PyServer::start(&["--seed", "5", "--base", "50000", "--no-end-marker"]);
    let c = client(server.addr());
    // 40000 and 0 answer "illegal data address"; 50000 has the marker; the walk ends where
    // the device refuses to read further.
    let dev = SunSpecDevice::discover(c.clone()).await.unwrap();
    assert_map(&dev, &server.info, false);
    check_every_point(&dev, &Expected(&server.info)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_704_written_to_pymodbus() {
    require_pymodbus();
    let mut checked_limit = false;
    let mut checked_setpoint = false;
    for seed in 1..=8 {
        let server = PyServer::start(&["--seed", &seed.to_string()]);
        let exp = Expected(&server.info);
        let dev = SunSpecDevice::discover(client(server.addr()))
            .await
            .unwrap();

        // The power limit: 42.5 %, reverting to 10 % after 90 s.
        let limit = PowerLimit {
            pct: 42.5,
            revert_after: Duration::from_secs(90),
            revert_to_pct: Some(10.0),
        };
        match exp.raw(704, "WMaxLimPct_SF") {
            None => {
                let err = dev.set_power_limit(&limit).await.unwrap_err();
                assert!(
                    matches!(err, ModbusError::Encode(EncodeError::Scale { .. })),
                    "{err}"
                );
            }
            Some(sf) => {
                dev.set_power_limit(&limit).await.unwrap();
                let raw = |v: f64| json!([apply_sf(v, -(sf as i8)).round() as u16]);
                let writes = server.writes(2, Duration::from_secs(5));
                assert_eq!(writes.len(), 2, "seed {seed}: {writes:?}");
                assert_eq!(writes[0]["function"], 16);
                assert_eq!(
                    writes[0]["points"],
                    json!({
                        "704.WMaxLimPct": raw(42.5),
                        "704.WMaxLimPctRvrt": raw(10.0),
                        "704.WMaxLimPctEnaRvrt": [1],
                        "704.WMaxLimPctRvrtTms": [0, 90],
                    }),
                    "seed {seed}"
                );
                assert_eq!(writes[1]["function"], 6);
                assert_eq!(writes[1]["points"], json!({"704.WMaxLimPctEna": [1]}));
                let ctl = dev.der_controls().await.unwrap();
                assert_eq!(ctl.power_limit.enabled, Some(true));
                assert_eq!(ctl.power_limit.revert_enabled, Some(true));
                assert_eq!(ctl.power_limit.revert_secs, Some(90));
                let pct = ctl.power_limit.pct.unwrap();
                assert!((pct - 42.5).abs() <= apply_sf(0.5, sf as i8), "{pct}");
                checked_limit = true;
            }
        }

        // The setpoint: -1500 W (absorbing), reverting to 0 W after 30 s.
        let setpoint = ActivePowerSetpoint {
            mode: SetpointMode::Watts,
            value: -1500.0,
            revert_after: Duration::from_secs(30),
            revert_to: Some(0.0),
        };
        match exp.raw(704, "WSet_SF") {
            None => {
                let err = dev.set_active_power(&setpoint).await.unwrap_err();
                assert!(
                    matches!(err, ModbusError::Encode(EncodeError::Scale { .. })),
                    "{err}"
                );
            }
            Some(sf) => {
                dev.set_active_power(&setpoint).await.unwrap();
                let raw = apply_sf(-1500.0, -(sf as i8)).round() as i32 as u32;
                let writes = server.writes(3, Duration::from_secs(5));
                assert_eq!(writes.len(), 3, "seed {seed}: {writes:?}");
                assert_eq!(
                    writes[0]["points"],
                    json!({
                        "704.WSetMod": [1],
                        "704.WSet": [raw >> 16, raw & 0xFFFF],
                        "704.WSetRvrt": [0, 0],
                    }),
                    "seed {seed}"
                );
                assert_eq!(
                    writes[1]["points"],
                    json!({"704.WSetEnaRvrt": [1], "704.WSetRvrtTms": [0, 30]})
                );
                assert_eq!(writes[2]["points"], json!({"704.WSetEna": [1]}));
                let ctl = dev.der_controls().await.unwrap();
                assert_eq!(ctl.setpoint.mode, Some(SetpointMode::Watts));
                assert_eq!(ctl.setpoint.enabled, Some(true));
                assert_eq!(ctl.setpoint.revert_w, Some(0.0));
                let w = ctl.setpoint.w.unwrap();
                assert!((w + 1500.0).abs() <= apply_sf(0.5, sf as i8), "{w}");
                checked_setpoint = true;
            }
        }
    }
    assert!(
        checked_limit && checked_setpoint,
        "no seed implemented both scale factors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_profile_against_pymodbus() {
    require_pymodbus();
    let server = PyServer::start(&["--mode", "plain", "--seed", "7"]);
    let regs = &server.info["registers"];
    let reg = |a: u16| regs[a.to_string()].as_u64().unwrap() as u16;
    let profile: RegisterProfile = toml::from_str(modbus_support::FIELD_PROFILE).unwrap();
    profile.validate().unwrap();
    let c = client(server.addr());
    let values = profile.read_all(&c).await.unwrap();
    assert_eq!(
        values[0],
        ("active_power".into(), f64::from(reg(40001) as i16) / 10.0)
    );
    assert_eq!(
        values[1],
        ("reactive_power".into(), f64::from(reg(40002) as i16) / 10.0)
    );
    assert_eq!(
        values[2],
        ("discharge_limit".into(), f64::from(reg(0x4001)) / 10.0)
    );

    profile.write(&c, "discharge_limit", 15.0).await.unwrap();
    let writes = server.writes(1, Duration::from_secs(5));
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0]["function"], 6);
    assert_eq!(writes[0]["address"], 0x4001);
    assert_eq!(writes[0]["values"], json!([150]));
    assert_eq!(profile.read(&c, "discharge_limit").await.unwrap(), 15.0);

    // Out of range: refused before anything is sent.
    let err = profile
        .write(&c, "discharge_limit", 15.1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ModbusError::Encode(EncodeError::OutOfRange { .. })),
        "{err}"
    );
    let err = profile.write(&c, "active_power", 1.0).await.unwrap_err();
    assert!(
        matches!(err, ModbusError::Encode(EncodeError::ReadOnly { .. })),
        "{err}"
    );
    assert!(server.writes(1, Duration::from_millis(200)).is_empty());
    // A register the device does not have.
    let err = c.read_holding_registers(40003, 1).await.unwrap_err();
    assert_eq!(
        err.exception_code(),
        Some(ExceptionCode::IllegalDataAddress)
    );
}

/// The coil calls (0x05 write single coil, 0x01 read coils) against a pymodbus relay module
/// (tests/py/modbus_relay.py): what the server received, and what it reads back.
#[tokio::test]
async fn coils_against_a_pymodbus_relay_module() {
    require_pymodbus();
    let py = PyServer::start_script("modbus_relay.py", &[]);
    let c = client(py.addr());
    c.write_single_coil(3, true).await.unwrap();
    c.write_single_coil(7, true).await.unwrap();
    let mut expected = vec![false; 16];
    expected[3] = true;
    expected[7] = true;
    assert_eq!(c.read_coils(0, 16).await.unwrap(), expected);
    assert_eq!(c.read_coils(3, 1).await.unwrap(), [true]);
    c.write_single_coil(3, false).await.unwrap();
    assert_eq!(c.read_coils(2, 3).await.unwrap(), [false, false, false]);
    let writes = py.writes(3, Duration::from_secs(10));
    assert_eq!(
        writes,
        [
            json!({"function": 5, "address": 3, "values": [true]}),
            json!({"function": 5, "address": 7, "values": [true]}),
            json!({"function": 5, "address": 3, "values": [false]}),
        ]
    );
    let outside = c.read_coils(16, 1).await.unwrap_err();
    assert!(
        matches!(outside, ModbusError::Exception { .. }),
        "{outside}"
    );
    assert!(matches!(
        c.read_coils(0, 0).await,
        Err(ModbusError::InvalidRequest(_))
    ));
}
