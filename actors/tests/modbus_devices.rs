//! The SunSpec adapters of `io::modbus` against the simulator's Modbus TCP servers on
//! 127.0.0.1: readings with the actors' sign conventions, a setpoint written with its
//! reversion timer and the power following it as the physics is stepped, refusals, each
//! injected fault seen as the right `DeviceError` and the adapter recovering once it is
//! cleared, and a 60 Hz grid that islands seen by the meter and tripping the ladder.
//!
//! Nothing waits on a clock except the client's own back-off (`wait_backoff`) and one
//! request time-out for the hang: the physics moves only when a test steps it.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use gridvisor_actors::{
    config::ModbusEndpoint,
    device::{DeviceError, InverterIo, MeterIo},
    io::modbus::{SunSpecInverter, SunSpecMeter, REVERT_AFTER},
    Fault as LadderFault, LadderConfig, SafeState, SafeStateLadder,
};
use gridvisor_sim::modbus::{
    BadValue, Fault, Grid, GridModel, InverterParams, InverterSim, MeterParams, MeterSim,
    ServerConfig, ServerHandle, SimServer,
};
use gridvisor_transports::modbus::{
    sunspec::{PowerLimit, SetpointMode, SunSpecDevice},
    ClientConfig, ExceptionCode, ModbusClient,
};

const TICK: Duration = Duration::from_millis(100);
const NOMINAL_V: f64 = 120.0;
const NOMINAL_HZ: f64 = 60.0;
const RATED_KW: f64 = 10.0;
const T0: Duration = Duration::ZERO;

/// A 120 V / 60 Hz grid (the actors' trip bands are IEEE 1547's at 60 Hz).
fn grid() -> Grid {
    Grid::new(GridModel {
        nominal_v: NOMINAL_V,
        nominal_hz: NOMINAL_HZ,
        ..GridModel::new(17)
    })
}

fn endpoint(addr: SocketAddr) -> ModbusEndpoint {
    ModbusEndpoint {
        addr,
        unit: 1,
        profile: None,
    }
}

async fn start_inverter(params: InverterParams, grid: &Grid) -> ServerHandle<InverterSim> {
    SimServer::new(ServerConfig::default())
        .start(InverterSim::new(params, grid.clone()).unwrap())
        .await
        .unwrap()
}

/// A meter whose source is `import_w` (W, positive importing from the grid).
async fn start_meter(grid: &Grid, import_w: &Arc<Mutex<f64>>) -> ServerHandle<MeterSim> {
    let p = import_w.clone();
    let source = move || *p.lock().unwrap();
    SimServer::new(ServerConfig::default())
        .start(MeterSim::new(MeterParams::new("MTR-1"), source, grid.clone()).unwrap())
        .await
        .unwrap()
}

fn step<D: gridvisor_sim::modbus::SimDevice>(s: &ServerHandle<D>, n: u32, dt: Duration) {
    for _ in 0..n {
        s.step(dt).unwrap();
    }
}

/// A plain transports client on the device, to look at its 704 block independently.
async fn sunspec(addr: SocketAddr) -> SunSpecDevice {
    let mut c = ClientConfig::new(addr);
    c.request_timeout = Duration::from_secs(1);
    SunSpecDevice::discover(ModbusClient::new(c)).await.unwrap()
}

fn round(v: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (v * p).round() / p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_inverter_and_the_meter_with_the_actors_signs() {
    let grid = grid();
    let sim = start_inverter(InverterParams::new("INV-1"), &grid).await;
    let import_w = Arc::new(Mutex::new(4_200.0));
    let msim = start_meter(&grid, &import_w).await;
    let inv = SunSpecInverter::new("inv-1", &endpoint(sim.addr()), RATED_KW);
    let meter = SunSpecMeter::new("meter-1", &endpoint(msim.addr()), NOMINAL_V);
    assert_eq!(inv.id(), "inv-1");

    // At rest: no setpoint enabled, so the setpoint reported is the measured power.
    let r = inv.read(T0).await.unwrap();
    assert_eq!((r.power_kw, r.setpoint_kw), (0.0, 0.0));
    assert_eq!(r.core_c, 25.0, "the heat sink at ambient");
    // The first read discovered the map; the next ones reuse it.
    let first = sim.requests();
    inv.read(T0).await.unwrap();
    let steady = sim.requests() - first;
    assert!(first > steady, "discovery {first}, then {steady} per read");

    msim.step(TICK).unwrap();
    let m = meter.read(T0).await.unwrap();
    assert_eq!(
        m.power_kw, 4.2,
        "the meter's W is positive importing, as ours"
    );
    let g = msim.with_device(|d| d.state().grid);
    assert!(
        (m.voltage_pu - round(g.v, 1) / NOMINAL_V).abs() < 1e-9,
        "{m:?} {g:?}"
    );
    assert!((m.voltage_pu - 1.0).abs() <= 0.006, "{m:?}");
    assert_eq!(m.frequency_hz, round(g.hz, 2));
    assert!((m.frequency_hz - NOMINAL_HZ).abs() <= 0.011, "{m:?}");

    *import_w.lock().unwrap() = -2_500.0;
    msim.step(TICK).unwrap();
    assert_eq!(meter.read(T0).await.unwrap().power_kw, -2.5, "export");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setpoint_is_written_with_its_revert_timer_and_the_power_follows() {
    let grid = grid();
    let sim = start_inverter(InverterParams::new("INV-2"), &grid).await;
    let inv = SunSpecInverter::new("inv-2", &endpoint(sim.addr()), RATED_KW);

    // Discharge 5 kW: the device injects, SunSpec's W is positive, ours negative.
    let r = inv.write(-5.0, T0).await.unwrap();
    assert_eq!(
        (r.setpoint_kw, r.power_kw),
        (-5.0, 0.0),
        "read back before any step"
    );
    let sp = sim.with_device(|d| d.state().controls.setpoint);
    assert!(sp.enabled);
    assert_eq!(sp.mode, SetpointMode::Watts);
    assert_eq!(sp.w, 5_000.0);
    assert!(sp.revert_enabled);
    assert_eq!(sp.revert_w, 0.0);
    assert_eq!(sp.timer.secs, REVERT_AFTER.as_secs() as u32);
    assert_eq!(
        sp.timer.remaining,
        Some(REVERT_AFTER),
        "the reversion timer is armed"
    );
    // The same, as a third party reads it over the wire.
    let ctl = sunspec(sim.addr()).await.der_controls().await.unwrap();
    assert_eq!(ctl.setpoint.revert_remaining_secs, Some(30));
    assert_eq!(ctl.setpoint.revert_enabled, Some(true));

    // 5 kW/s ramp: there after 1 s.
    step(&sim, 20, TICK);
    let r = inv.read(T0).await.unwrap();
    assert_eq!((r.power_kw, r.setpoint_kw), (-5.0, -5.0));
    let s = sim.with_device(|d| *d.state());
    assert_eq!(s.power_w, 5_000.0, "the device discharges");
    assert!(r.core_c > 25.0, "heating up: {r:?}");
    assert_eq!(r.core_c, round(s.temperature_c, 1));

    // Charge 3 kW: a new write re-arms the timer (2 s + 20 s after the first write).
    step(&sim, 10, Duration::from_secs(2));
    let remaining = sim.with_device(|d| d.state().controls.setpoint.timer.remaining);
    assert_eq!(remaining, Some(REVERT_AFTER - Duration::from_secs(22)));
    let r = inv.write(3.0, T0).await.unwrap();
    assert_eq!(r.setpoint_kw, 3.0);
    let remaining = sim.with_device(|d| d.state().controls.setpoint.timer.remaining);
    assert_eq!(remaining, Some(REVERT_AFTER));
    step(&sim, 20, TICK);
    let r = inv.read(T0).await.unwrap();
    assert_eq!(r.power_kw, 3.0);
    assert_eq!(
        sim.with_device(|d| d.state().power_w),
        -3_000.0,
        "absorbing"
    );

    // Left alone past the reversion time, the device falls back to 0 kW by itself.
    step(&sim, REVERT_AFTER.as_secs() as u32, Duration::from_secs(1));
    let r = inv.read(T0).await.unwrap();
    assert_eq!((r.setpoint_kw, r.power_kw), (0.0, 0.0), "{r:?}");
    let sp = sim.with_device(|d| d.state().controls.setpoint);
    assert!(
        sp.enabled && sp.w == 0.0 && sp.timer.remaining.is_none(),
        "{sp:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setpoint_reported_is_what_the_device_runs_toward() {
    let grid = grid();
    // A device whose own default (no setpoint enabled) is to inject 2 kW.
    let params = InverterParams {
        default_w: 2_000.0,
        ..InverterParams::new("INV-3")
    };
    let sim = start_inverter(params, &grid).await;
    let inv = SunSpecInverter::new("inv-3", &endpoint(sim.addr()), RATED_KW);
    step(&sim, 10, TICK);
    let r = inv.read(T0).await.unwrap();
    assert_eq!(
        (r.power_kw, r.setpoint_kw),
        (-2.0, -2.0),
        "disabled: the measured power"
    );

    // A 40 % power limit enabled by someone else caps an 8 kW setpoint at 4 kW.
    let dev = sunspec(sim.addr()).await;
    dev.set_power_limit(&PowerLimit {
        pct: 40.0,
        revert_after: Duration::from_secs(600),
        revert_to_pct: None,
    })
    .await
    .unwrap();
    let r = inv.write(8.0, T0).await.unwrap();
    assert_eq!(r.setpoint_kw, 4.0, "{r:?}");
    step(&sim, 20, TICK);
    assert_eq!(inv.read(T0).await.unwrap().power_kw, 4.0);
    assert_eq!(sim.with_device(|d| d.state().power_w), -4_000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setpoints_out_of_range_are_refused() {
    let grid = grid();
    let sim = start_inverter(InverterParams::new("INV-4"), &grid).await;
    let inv = SunSpecInverter::new("inv-4", &endpoint(sim.addr()), RATED_KW);
    inv.read(T0).await.unwrap();
    let before = sim.requests();
    for kw in [10.5, -10.01, f64::NAN, f64::INFINITY] {
        match inv.write(kw, T0).await {
            Err(DeviceError::Refused { device, reason }) => {
                assert_eq!(device, "inv-4");
                assert!(reason.contains(&format!("{kw}")), "{reason}");
            }
            other => panic!("{kw}: {other:?}"),
        }
    }
    assert_eq!(sim.requests(), before, "refused before anything was sent");
    assert!(!sim.with_device(|d| d.state().controls.setpoint.enabled));
    // The rating itself is fine.
    assert_eq!(inv.write(-10.0, T0).await.unwrap().setpoint_kw, -10.0);

    // Configured for more than the device can do: the device refuses with an exception.
    let oversold = SunSpecInverter::new("inv-4b", &endpoint(sim.addr()), 20.0);
    match oversold.write(15.0, T0).await {
        Err(DeviceError::Refused { reason, .. }) => {
            assert!(reason.contains("illegal data value"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let r = oversold.read(T0).await.unwrap();
    assert_eq!(r.setpoint_kw, -10.0, "the refused write changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inverter_faults_are_device_errors_and_the_adapter_recovers() {
    let grid = grid();
    let sim = start_inverter(InverterParams::new("INV-5"), &grid).await;
    let inv = SunSpecInverter::new("inv-5", &endpoint(sim.addr()), RATED_KW);
    inv.read(T0).await.unwrap();
    let unreachable =
        |r| matches!(r, Err(DeviceError::Unreachable { ref device }) if device == "inv-5");

    // Drop: the device closes the connection and refuses new ones.
    sim.set_fault(Fault::Drop).unwrap();
    assert!(unreachable(inv.read(T0).await));
    assert!(unreachable(inv.write(1.0, T0).await));
    sim.set_fault(Fault::None).unwrap();
    inv.client().wait_backoff().await;
    let before = sim.requests();
    inv.read(T0).await.unwrap();
    let rediscovery = sim.requests() - before;
    let before = sim.requests();
    inv.read(T0).await.unwrap();
    assert!(
        rediscovery > sim.requests() - before,
        "the map was discovered again after the reconnect"
    );

    // Hang: one request time-out.
    sim.set_fault(Fault::Hang).unwrap();
    assert!(unreachable(inv.read(T0).await));
    sim.set_fault(Fault::None).unwrap();
    inv.client().wait_backoff().await;
    inv.read(T0).await.unwrap();

    // Exception: refused, named.
    sim.set_fault(Fault::Exception(ExceptionCode::ServerDeviceBusy))
        .unwrap();
    for r in [inv.read(T0).await, inv.write(1.0, T0).await] {
        match r {
            Err(DeviceError::Refused { reason, .. }) => {
                assert!(reason.contains("server device busy"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    sim.set_fault(Fault::None).unwrap();
    inv.read(T0).await.unwrap();

    // Bad values: a wild scale factor of the power, of the setpoint.
    sim.set_fault(Fault::BadValue(BadValue::scale_factor(701, "W_SF")))
        .unwrap();
    match inv.read(T0).await {
        Err(DeviceError::BadValue { field, value, .. }) => {
            assert_eq!(field, "W");
            assert!(value.contains("W_SF"), "{value}");
        }
        other => panic!("{other:?}"),
    }
    sim.set_fault(Fault::BadValue(BadValue::scale_factor(704, "WSet_SF")))
        .unwrap();
    assert!(matches!(
        inv.write(2.0, T0).await,
        Err(DeviceError::BadValue {
            field: "WSet_SF",
            ..
        })
    ));
    assert!(
        !sim.with_device(|d| d.state().controls.setpoint.enabled),
        "nothing written"
    );
    // A core temperature that is not implemented.
    sim.set_fault(Fault::BadValue(BadValue {
        model: 701,
        point: "TmpSnk".into(),
        raw: vec![0x8000],
    }))
    .unwrap();
    assert!(matches!(
        inv.read(T0).await,
        Err(DeviceError::BadValue { field, .. }) if field.contains("TmpSnk")
    ));
    sim.set_fault(Fault::None).unwrap();
    let r = inv.write(2.0, T0).await.unwrap();
    assert_eq!(r.setpoint_kw, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_faults_are_device_errors_and_the_adapter_recovers() {
    let grid = grid();
    let import_w = Arc::new(Mutex::new(1_000.0));
    let msim = start_meter(&grid, &import_w).await;
    let meter = SunSpecMeter::new("meter-6", &endpoint(msim.addr()), NOMINAL_V);
    assert_eq!(meter.read(T0).await.unwrap().power_kw, 1.0);

    msim.set_fault(Fault::Drop).unwrap();
    assert!(matches!(
        meter.read(T0).await,
        Err(DeviceError::Unreachable { .. })
    ));
    msim.set_fault(Fault::None).unwrap();
    meter.client().wait_backoff().await;
    meter.read(T0).await.unwrap();

    msim.set_fault(Fault::Exception(ExceptionCode::ServerDeviceFailure))
        .unwrap();
    match meter.read(T0).await {
        Err(DeviceError::Refused { reason, .. }) => {
            assert!(reason.contains("server device failure"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    msim.set_fault(Fault::None).unwrap();
    meter.read(T0).await.unwrap();

    for (point, field) in [("Hz_SF", "Hz"), ("W_SF", "W"), ("V_SF", "PhVphA")] {
        msim.set_fault(Fault::BadValue(BadValue::scale_factor(203, point)))
            .unwrap();
        match meter.read(T0).await {
            Err(DeviceError::BadValue { field: f, .. }) => assert_eq!(f, field, "{point}"),
            other => panic!("{point}: {other:?}"),
        }
    }
    msim.set_fault(Fault::None).unwrap();
    assert_eq!(meter.read(T0).await.unwrap().power_kw, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_device_is_unreachable_until_it_is_back() {
    let grid = grid();
    let sim = start_inverter(InverterParams::new("INV-7"), &grid).await;
    let addr = sim.addr();
    sim.stop().await.unwrap();
    // Nothing listens: construction does not care, reads are unreachable.
    let inv = SunSpecInverter::new("inv-7", &endpoint(addr), RATED_KW);
    assert!(matches!(
        inv.read(T0).await,
        Err(DeviceError::Unreachable { .. })
    ));
    let sim = SimServer::new(ServerConfig::default())
        .start_on(
            addr,
            InverterSim::new(InverterParams::new("INV-7"), grid.clone()).unwrap(),
        )
        .await
        .unwrap();
    inv.client().wait_backoff().await;
    assert_eq!(inv.read(T0).await.unwrap().power_kw, 0.0);
    assert_eq!(inv.write(1.5, T0).await.unwrap().setpoint_kw, 1.5);

    // Connections dropped, then stopped, then a fresh device at the same address. (The
    // drop first: `stop` ends the server task, but its connections end a moment later, so a
    // request right after `stop` may still be answered by the old connection.)
    sim.set_fault(Fault::Drop).unwrap();
    assert!(matches!(
        inv.read(T0).await,
        Err(DeviceError::Unreachable { .. })
    ));
    sim.stop().await.unwrap();
    inv.client().wait_backoff().await;
    assert!(matches!(
        inv.read(T0).await,
        Err(DeviceError::Unreachable { .. })
    ));
    let sim = SimServer::new(ServerConfig::default())
        .start_on(
            addr,
            InverterSim::new(InverterParams::new("INV-7"), grid.clone()).unwrap(),
        )
        .await
        .unwrap();
    inv.client().wait_backoff().await;
    let r = inv.read(T0).await.unwrap();
    assert_eq!(
        r.setpoint_kw, 0.0,
        "a fresh device holds no setpoint: {r:?}"
    );
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meter_shows_an_island_and_the_ladder_trips_on_it() {
    let grid = grid();
    let import_w = Arc::new(Mutex::new(-3_000.0));
    let msim = start_meter(&grid, &import_w).await;
    let meter = SunSpecMeter::new("meter-8", &endpoint(msim.addr()), NOMINAL_V);
    let mut ladder = SafeStateLadder::new(LadderConfig::default(), T0);
    let mut now = T0;
    let mut observe = |ladder: &mut SafeStateLadder, m: gridvisor_actors::device::MeterReading| {
        now += TICK;
        ladder.observe(
            LadderFault::GridReading {
                voltage_pu: m.voltage_pu,
                frequency_hz: m.frequency_hz,
                exporting: m.power_kw < 0.0,
            },
            now,
        );
    };

    for _ in 0..10 {
        msim.step(TICK).unwrap();
        let m = meter.read(T0).await.unwrap();
        assert!((m.voltage_pu - 1.0).abs() <= 0.006, "{m:?}");
        assert!((m.frequency_hz - NOMINAL_HZ).abs() <= 0.011, "{m:?}");
        observe(&mut ladder, m);
    }
    assert_eq!(ladder.level(), SafeState::Normal);

    // Islanded: +0.1 pu/s up to 1.25 pu, +1 Hz/s up to 62.5 Hz.
    grid.island();
    for _ in 0..30 {
        msim.step(TICK).unwrap();
        let m = meter.read(T0).await.unwrap();
        observe(&mut ladder, m);
    }
    let m = meter.read(T0).await.unwrap();
    assert!((m.voltage_pu - 1.25).abs() <= 0.006, "{m:?}");
    assert!((m.frequency_hz - 62.5).abs() <= 0.011, "{m:?}");
    assert!(m.power_kw < 0.0, "exporting");
    assert_eq!(
        ladder.level(),
        SafeState::Tripped,
        "beyond 1.20 pu and 62 Hz"
    );

    grid.reconnect();
    msim.step(TICK).unwrap();
    let m = meter.read(T0).await.unwrap();
    assert!((m.voltage_pu - 1.0).abs() <= 0.006, "{m:?}");
    assert!((m.frequency_hz - NOMINAL_HZ).abs() <= 0.011, "{m:?}");
}
