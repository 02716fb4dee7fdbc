//! The register-profile adapters of `io::modbus_profile` against a real Modbus TCP server on
//! 127.0.0.1: the simulator's `SimServer` serving a device of plain registers (no SunSpec),
//! described by profiles written in TOML as a site's profile files are.
//!
//! Covered: the field's example (active power at 40001, a discharge limit at 0x4001) read with
//! the actors' signs and written as a discharge limit; a signed setpoint with a temperature;
//! a read-only device; a meter with Modicon addressing and per-unit voltage; profiles refused
//! by `new` and files refused by `load`; a stopped, dropping or hanging device unreachable, an
//! exception refused, an out-of-range value a bad value, and recovery once the fault is gone.
//!
//! Nothing waits on a clock except the client's own back-off (`wait_backoff`) and one request
//! time-out for the hang.

use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gridvisor_actors::{
    config::ModbusEndpoint,
    device::{DeviceError, InverterIo, MeterIo},
    io::modbus_profile::{ProfileInverter, ProfileMeter, INVERTER_TEMPERATURE_UNKNOWN_C},
};
use gridvisor_sim::modbus::{Fault, ServerConfig, ServerHandle, SimDevice, SimError, SimServer};
use gridvisor_transports::modbus::{
    profile::RegisterProfile, sunspec::RegisterImage, ExceptionCode,
};

const T0: Duration = Duration::ZERO;
/// The inverter's rating: above the field example's 15 kW limit, so that the limit's own
/// bound is what refuses -15.1 kW.
const RATED_KW: f64 = 20.0;
const NOMINAL_V: f64 = 230.0;

/// The field's example: a battery inverter with its active and reactive power at 40001 and
/// 40002 (tenths of kW, positive exporting) and a writable discharge limit at 0x4001 (tenths
/// of kW, up to 15.0 kW).
const FIELD_EXAMPLE: &str =
    include_str!("../../configs/modbus-profiles/field-battery-inverter.toml");

/// A device of plain registers: one contiguous image (reads anywhere in it succeed, as on
/// many devices), writes only to the registers listed as writable.
struct Plain {
    image: RegisterImage,
    writable: Vec<u16>,
}

impl Plain {
    /// Registers `first..=last`, all 0.
    fn new(first: u16, last: u16, writable: &[u16]) -> Self {
        Plain {
            image: RegisterImage {
                base: first,
                regs: vec![0; usize::from(last - first) + 1],
            },
            writable: writable.to_vec(),
        }
    }
}

impl SimDevice for Plain {
    fn image(&self) -> &RegisterImage {
        &self.image
    }

    fn write(&mut self, addr: u16, values: &[u16]) -> Result<(), ExceptionCode> {
        let all_writable = (0..values.len()).all(|i| {
            u16::try_from(i)
                .ok()
                .and_then(|i| addr.checked_add(i))
                .is_some_and(|a| self.writable.contains(&a))
        });
        if all_writable && self.image.write(addr, values) {
            Ok(())
        } else {
            Err(ExceptionCode::IllegalDataAddress)
        }
    }

    fn step(&mut self, _dt: Duration) -> Result<(), SimError> {
        Ok(())
    }
}

async fn serve(device: Plain) -> ServerHandle<Plain> {
    SimServer::new(ServerConfig::default())
        .start(device)
        .await
        .unwrap()
}

/// The field example's device: 0x4001 ..= 40002, 0x4001 writable.
async fn field_device() -> ServerHandle<Plain> {
    serve(Plain::new(0x4001, 40_002, &[0x4001])).await
}

fn set(s: &ServerHandle<Plain>, addr: u16, values: &[u16]) {
    assert!(s.with_device(|d| d.image.write(addr, values)));
}

fn get(s: &ServerHandle<Plain>, addr: u16) -> u16 {
    s.with_device(|d| d.image.read(addr, 1).unwrap()[0])
}

fn endpoint(addr: SocketAddr) -> ModbusEndpoint {
    ModbusEndpoint {
        addr,
        unit: 1,
        profile: None,
    }
}

fn profile(toml_text: &str) -> RegisterProfile {
    toml::from_str(toml_text).unwrap()
}

fn refused(r: Result<impl std::fmt::Debug, DeviceError>) -> String {
    match r {
        Err(DeviceError::Refused { reason, .. }) => reason,
        other => panic!("expected Refused, got {other:?}"),
    }
}

fn unreachable(r: Result<impl std::fmt::Debug, DeviceError>) {
    assert!(
        matches!(r, Err(DeviceError::Unreachable { .. })),
        "expected Unreachable, got {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_field_example_reads_power_and_writes_the_discharge_limit() {
    let sim = field_device().await;
    let inv = ProfileInverter::new(
        "inv-1",
        &endpoint(sim.addr()),
        profile(FIELD_EXAMPLE),
        RATED_KW,
    )
    .unwrap();
    assert_eq!(inv.id(), "inv-1");

    // Power: the device counts export positive, the actors count into the battery positive.
    set(&sim, 40_001, &[(-125i16) as u16]);
    let r = inv.read(T0).await.unwrap();
    assert_eq!(r.power_kw, 12.5, "-12.5 kW on the device: charging");
    assert_eq!(
        r.core_c, INVERTER_TEMPERATURE_UNKNOWN_C,
        "no temperature point"
    );
    assert_eq!(r.setpoint_kw, 0.0, "a discharge limit of 0");
    assert!(r.setpoint_kw.is_sign_positive());
    set(&sim, 40_001, &[300]);
    assert_eq!(inv.read(T0).await.unwrap().power_kw, -30.0, "exporting");

    // A discharge of 12.5 kW is a limit of 12.5 kW: 125 tenths.
    let r = inv.write(-12.5, T0).await.unwrap();
    assert_eq!(get(&sim, 0x4001), 125);
    assert_eq!(r.setpoint_kw, -12.5, "read back from the device");
    assert_eq!(r.power_kw, -30.0);
    // The whole limit is allowed.
    inv.write(-15.0, T0).await.unwrap();
    assert_eq!(get(&sim, 0x4001), 150);

    // Charging or idle: no discharge allowed.
    let r = inv.write(5.0, T0).await.unwrap();
    assert_eq!(get(&sim, 0x4001), 0);
    assert_eq!(
        r.setpoint_kw, 0.0,
        "what the device holds, not what was asked"
    );
    inv.write(-1.0, T0).await.unwrap();
    inv.write(0.0, T0).await.unwrap();
    assert_eq!(get(&sim, 0x4001), 0);

    // Beyond the limit's bound: refused before anything is sent, naming the point and bound.
    inv.write(-3.0, T0).await.unwrap();
    let requests = sim.requests();
    let reason = refused(inv.write(-15.1, T0).await);
    assert!(
        reason.contains("discharge_limit") && reason.contains("0..=15"),
        "{reason}"
    );
    // Beyond the rating (a charge, so the limit would be 0): refused too.
    let reason = refused(inv.write(25.0, T0).await);
    assert!(reason.contains("rating"), "{reason}");
    let reason = refused(inv.write(f64::NAN, T0).await);
    assert!(reason.contains("not a number"), "{reason}");
    assert_eq!(sim.requests(), requests, "nothing was sent");
    assert_eq!(get(&sim, 0x4001), 30, "the last accepted limit stands");

    // The device's limit outside the profile's bounds is a bad value of that point.
    set(&sim, 0x4001, &[200]);
    match inv.read(T0).await {
        Err(DeviceError::BadValue { field, value, .. }) => {
            assert_eq!(field, "discharge_limit");
            assert!(value.contains("20"), "{value}");
        }
        other => panic!("{other:?}"),
    }
    set(&sim, 0x4001, &[0]);
    assert_eq!(inv.read(T0).await.unwrap().setpoint_kw, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_setpoint_with_a_temperature() {
    let sim = serve(Plain::new(100, 104, &[103])).await;
    let text = r#"
        [[points]]
        name = "active_power"
        address = 100
        type = "f32"
        unit = "kW"

        [[points]]
        name = "temperature"
        address = 102
        type = "i16"
        scale = 0.1
        unit = "°C"

        [[points]]
        name = "setpoint"
        address = 103
        type = "i16"
        scale = 0.1
        unit = "kW"
        writable = true
        min = -10.0
        max = 10.0
    "#;
    let inv =
        ProfileInverter::new("inv-2", &endpoint(sim.addr()), profile(text), RATED_KW).unwrap();
    let bits = 7.25f32.to_bits();
    set(&sim, 100, &[(bits >> 16) as u16, bits as u16]);
    set(&sim, 102, &[456]);
    let r = inv.read(T0).await.unwrap();
    assert_eq!((r.power_kw, r.core_c, r.setpoint_kw), (-7.25, 45.6, 0.0));

    // A discharge of 7.5 kW is +7.5 on the device (export positive), and back.
    let r = inv.write(-7.5, T0).await.unwrap();
    assert_eq!(get(&sim, 103), 75);
    assert_eq!(r.setpoint_kw, -7.5);
    let r = inv.write(4.0, T0).await.unwrap();
    assert_eq!(get(&sim, 103), (-40i16) as u16);
    assert_eq!(r.setpoint_kw, 4.0);
    let reason = refused(inv.write(-10.5, T0).await);
    assert!(
        reason.contains("setpoint") && reason.contains("-10..=10"),
        "{reason}"
    );
    assert_eq!(get(&sim, 103), (-40i16) as u16);

    // The device refuses a write the profile allows: an exception, refused, naming the point.
    let ro = profile(&text.replace("address = 103", "address = 104"));
    let inv = ProfileInverter::new("inv-3", &endpoint(sim.addr()), ro, RATED_KW).unwrap();
    let reason = refused(inv.write(1.0, T0).await);
    assert!(
        reason.contains("illegal data address") && reason.contains("setpoint"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_a_control_point_is_read_only() {
    let sim = serve(Plain::new(0, 0, &[])).await;
    let text = r#"
        [[points]]
        name = "active_power"
        address = 0
        type = "i16"
    "#;
    let inv =
        ProfileInverter::new("inv-4", &endpoint(sim.addr()), profile(text), RATED_KW).unwrap();
    set(&sim, 0, &[(-3i16) as u16]);
    let r = inv.read(T0).await.unwrap();
    assert_eq!(
        (r.power_kw, r.setpoint_kw),
        (3.0, 3.0),
        "setpoint = measured"
    );
    let reason = refused(inv.write(1.0, T0).await);
    assert_eq!(
        reason,
        "the profile has no writable setpoint or discharge_limit point"
    );
}

const METER: &str = r#"
addressing = "modicon"

[[points]]
name = "active_power"
address = 40001
type = "i32"
scale = 0.001
unit = "kW"

[[points]]
name = "voltage"
address = 40003
type = "u16"
scale = 0.1
unit = "V"

[[points]]
name = "frequency"
address = 40004
type = "u16"
scale = 0.01
unit = "Hz"
min = 40.0
max = 70.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_reads_import_per_unit_voltage_and_frequency() {
    // Modicon 40001..40004: holding registers 0..=3.
    let sim = serve(Plain::new(0, 3, &[])).await;
    let meter = ProfileMeter::new("m-1", &endpoint(sim.addr()), profile(METER), NOMINAL_V).unwrap();
    assert_eq!(meter.id(), "m-1");
    set(&sim, 0, &[0, 4_200, 2_415, 5_000]);
    let m = meter.read(T0).await.unwrap();
    assert_eq!(m.power_kw, 4.2, "importing, positive as the actors count");
    assert!((m.voltage_pu - 1.05).abs() < 1e-12, "{m:?}");
    assert_eq!(m.frequency_hz, 50.0);

    let export = (-1_500i32) as u32;
    set(&sim, 0, &[(export >> 16) as u16, export as u16, 0, 4_990]);
    let m = meter.read(T0).await.unwrap();
    assert_eq!(m.power_kw, -1.5, "exporting");
    assert_eq!(m.voltage_pu, 0.0, "a dead grid reads 0 V, not an error");
    assert_eq!(m.frequency_hz, 49.9);

    // A frequency outside the profile's bounds: a bad value of that point.
    set(&sim, 3, &[0]);
    match meter.read(T0).await {
        Err(DeviceError::BadValue { field, .. }) => assert_eq!(field, "frequency"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn profiles_without_a_required_point_are_refused() {
    let ep = endpoint("127.0.0.1:1502".parse().unwrap());
    let no_power = FIELD_EXAMPLE.replace("\"active_power\"", "\"p\"");
    let err = ProfileInverter::new("inv-1", &ep, profile(&no_power), RATED_KW).unwrap_err();
    assert!(
        err.contains("inv-1") && err.contains("no point \"active_power\""),
        "{err}"
    );
    let err = ProfileMeter::new("m-1", &ep, profile(FIELD_EXAMPLE), NOMINAL_V).unwrap_err();
    assert!(err.contains("no point \"voltage\""), "{err}");
    let no_hz = METER.replace("\"frequency\"", "\"f\"");
    let err = ProfileMeter::new("m-1", &ep, profile(&no_hz), NOMINAL_V).unwrap_err();
    assert!(err.contains("no point \"frequency\""), "{err}");

    // A control point that cannot be written, or two of them, or a duplicate name.
    let read_only = FIELD_EXAMPLE.replace("writable = true", "writable = false");
    let err = ProfileInverter::new("inv-1", &ep, profile(&read_only), RATED_KW).unwrap_err();
    assert!(
        err.contains("discharge_limit") && err.contains("writable"),
        "{err}"
    );
    let both = FIELD_EXAMPLE.replace("\"reactive_power\"", "\"setpoint\"");
    let both = both.replace("unit = \"kvar\"", "unit = \"kW\"\nwritable = true");
    let err = ProfileInverter::new("inv-1", &ep, profile(&both), RATED_KW).unwrap_err();
    assert!(err.contains("both"), "{err}");
    let twice = FIELD_EXAMPLE.replace("\"reactive_power\"", "\"active_power\"");
    let err = ProfileInverter::new("inv-1", &ep, profile(&twice), RATED_KW).unwrap_err();
    assert!(err.contains("used twice"), "{err}");
}

#[test]
fn load_reads_the_file_and_names_it_in_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let with = |path: PathBuf| ModbusEndpoint {
        profile: Some(path),
        ..endpoint("127.0.0.1:1502".parse().unwrap())
    };

    let good = dir.path().join("battery.toml");
    std::fs::write(&good, FIELD_EXAMPLE).unwrap();
    let inv = ProfileInverter::load("inv-1", &with(good.clone()), RATED_KW).unwrap();
    assert_eq!(inv.profile(), &profile(FIELD_EXAMPLE));
    let meter_file = dir.path().join("meter.toml");
    std::fs::write(&meter_file, METER).unwrap();
    ProfileMeter::load("m-1", &with(meter_file), NOMINAL_V).unwrap();

    let missing = dir.path().join("devices/nope.toml");
    let err = ProfileInverter::load("inv-1", &with(missing.clone()), RATED_KW).unwrap_err();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let err = ProfileMeter::load("m-1", &with(missing.clone()), NOMINAL_V).unwrap_err();
    assert!(err.contains(&missing.display().to_string()), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, FIELD_EXAMPLE.replacen("scale", "scael", 1)).unwrap();
    let err = ProfileInverter::load("inv-1", &with(bad.clone()), RATED_KW).unwrap_err();
    assert!(
        err.contains(&bad.display().to_string()) && err.contains("scael"),
        "{err}"
    );

    // A file that parses but lacks a required point names the point and the file.
    let err = ProfileMeter::load("m-1", &with(good.clone()), NOMINAL_V).unwrap_err();
    assert!(
        err.contains("voltage") && err.contains(&good.display().to_string()),
        "{err}"
    );

    let err = ProfileInverter::load(
        "inv-1",
        &endpoint("127.0.0.1:1502".parse().unwrap()),
        RATED_KW,
    )
    .unwrap_err();
    assert!(err.contains("no register profile"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_unreachable_or_refused_and_the_adapter_recovers() {
    let sim = field_device().await;
    let ep = endpoint(sim.addr());
    let inv = ProfileInverter::new("inv-1", &ep, profile(FIELD_EXAMPLE), RATED_KW).unwrap();
    set(&sim, 40_001, &[10]);
    assert_eq!(inv.read(T0).await.unwrap().power_kw, -1.0);

    // An exception: refused, naming it and the point; the connection stays up.
    sim.set_fault(Fault::Exception(ExceptionCode::ServerDeviceFailure))
        .unwrap();
    let reason = refused(inv.read(T0).await);
    assert!(
        reason.contains("server device failure") && reason.contains("active_power"),
        "{reason}"
    );
    let reason = refused(inv.write(-2.0, T0).await);
    assert!(
        reason.contains("server device failure") && reason.contains("discharge_limit"),
        "{reason}"
    );
    sim.set_fault(Fault::None).unwrap();
    assert_eq!(inv.write(-2.0, T0).await.unwrap().setpoint_kw, -2.0);

    // Connections dropped: unreachable, then back once the device is.
    sim.set_fault(Fault::Drop).unwrap();
    unreachable(inv.read(T0).await);
    unreachable(inv.write(-1.0, T0).await);
    sim.set_fault(Fault::None).unwrap();
    inv.client().wait_backoff().await;
    assert_eq!(inv.read(T0).await.unwrap().setpoint_kw, -2.0);

    // A device that never answers: unreachable after one request time-out.
    sim.set_fault(Fault::Hang).unwrap();
    unreachable(inv.read(T0).await);
    sim.set_fault(Fault::None).unwrap();
    inv.client().wait_backoff().await;
    assert_eq!(inv.read(T0).await.unwrap().power_kw, -1.0);

    // Stopped (its connections dropped first: see modbus_devices.rs), then nothing listens.
    let meter_sim = serve(Plain::new(0, 3, &[])).await;
    set(&meter_sim, 0, &[0, 1_000, 2_300, 5_000]);
    let meter = ProfileMeter::new(
        "m-1",
        &endpoint(meter_sim.addr()),
        profile(METER),
        NOMINAL_V,
    )
    .unwrap();
    assert_eq!(meter.read(T0).await.unwrap().voltage_pu, 1.0);
    for s in [sim, meter_sim] {
        s.set_fault(Fault::Drop).unwrap();
        s.stop().await.unwrap();
    }
    unreachable(inv.read(T0).await);
    unreachable(meter.read(T0).await);
    inv.client().wait_backoff().await;
    meter.client().wait_backoff().await;
    unreachable(inv.read(T0).await);
    unreachable(meter.read(T0).await);

    // Nothing ever listened: construction does not care, reads are unreachable.
    let never = ProfileMeter::new("m-2", &ep, profile(METER), NOMINAL_V).unwrap();
    unreachable(never.read(T0).await);
}

/// A node whose inverter is described by the field example's profile file: the node polls
/// it through the profile; a profile file that is missing fails the node's start, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_polls_an_inverter_through_its_profile_file() {
    let device = field_device().await;
    set(&device, 40_000, &[(-50i16) as u16]); // exporting 5.0 kW
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("field-inverter.toml");
    std::fs::write(&file, FIELD_EXAMPLE).unwrap();
    let site = |path: &std::path::Path| {
        common::site_toml(1, 1, "", "").replace(
            "[[substations.segments.inverters]]\nid = \"inv-0\"\nmax_kw = 50\n",
            &format!(
                "[[substations.segments.inverters]]\nid = \"inv-0\"\nmax_kw = {RATED_KW}\n\
                 modbus = {{ addr = \"{}\", profile = \"{}\" }}\n",
                device.addr(),
                path.display()
            ),
        )
    };
    let text = site(&file);
    assert!(
        text.contains("profile ="),
        "the inverter line was replaced: {text}"
    );
    let t = common::start(&text).await;
    let before = device.requests();
    common::wait(
        &t.node,
        "the node polls the inverter over its profile",
        || device.requests() > before,
    )
    .await;
    t.node.shutdown().await;

    let missing = dir.path().join("no-such-profile.toml");
    let topology = gridvisor_actors::config::parse("t.toml", &site(&missing)).unwrap();
    let store = gridvisor_actors::checkpoint::CheckpointStore::open(
        &dir.path().join("cp.redb"),
        gridvisor_actors::checkpoint::StoreLimits::default(),
    )
    .unwrap();
    let err = gridvisor_actors::runtime::Node::start(
        std::sync::Arc::new(topology),
        store,
        gridvisor_actors::clock::Clock::tokio(),
        prometheus::Registry::new(),
        gridvisor_actors::runtime::NodeOptions::default(),
    )
    .await
    .err()
    .expect("a missing profile fails the start");
    assert!(err.to_string().contains("no-such-profile.toml"), "{err}");
}
