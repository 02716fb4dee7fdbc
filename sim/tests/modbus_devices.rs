//! The simulated inverter and meter read and commanded by our transports client over real
//! TCP on 127.0.0.1: discovery and the model walk, decoded values equal to the simulation's
//! state, a 704 limit that the power ramps to and that reverts when its timer runs out, a
//! refused out-of-range write, and an island seen as out-of-band voltage and frequency.

use crate::modbus_support;

use std::time::Duration;

use gridvisor_sim::modbus::grid::GridSample;
use gridvisor_transports::modbus::{
    sunspec::{
        ActivePowerSetpoint, ConnectionState, MeterReading, PowerLimit, SetpointMode, SunSpecDevice,
    },
    ExceptionCode, ModbusError,
};
use modbus_support::{client, Site};

const TICK: Duration = Duration::from_millis(100);

fn round(v: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (v * p).round() / p
}

async fn inverter(site: &Site) -> SunSpecDevice {
    SunSpecDevice::discover(client(site.inverter.addr()))
        .await
        .unwrap()
}

async fn meter(site: &Site) -> SunSpecDevice {
    SunSpecDevice::discover(client(site.meter.addr()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovers_and_reads_the_inverter_and_the_meter() {
    let site = Site::start().await;
    site.step(10, TICK);
    let inv = inverter(&site).await;
    let ids: Vec<u16> = inv.map().models.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1, 701, 704, 713]);
    assert_eq!(inv.map().base, 40000);
    let common = inv.common().await.unwrap();
    assert_eq!(common.serial_number.as_deref(), Some("INV-1"));
    assert_eq!(common.manufacturer.as_deref(), Some("gridvisor"));

    let state = site.inverter.with_device(|d| *d.state());
    let ac = inv.ac_measurement().await.unwrap();
    assert_eq!(ac.w, Some(state.power_w));
    assert_eq!(ac.hz, Some(round(state.grid.hz, 3)));
    assert_eq!(ac.v_ln, Some(round(state.grid.v, 1)));
    assert_eq!(
        ac.temperatures.heat_sink,
        Some(round(state.temperature_c, 1))
    );
    assert_eq!(ac.connection_state, Some(ConnectionState::Connected));
    let storage = inv.storage().await.unwrap();
    assert_eq!(storage.soc_pct, Some(round(state.soc_pct, 1)));
    assert_eq!(storage.energy_rating_wh, Some(20_000.0));

    let m = meter(&site).await;
    let ids: Vec<u16> = m.map().models.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1, 203]);
    let MeterReading::Meter(r) = m.meter().await.unwrap() else {
        panic!("model 203 expected");
    };
    let ms = site.meter.with_device(|d| *d.state());
    assert_eq!(r.model_id, 203);
    assert_eq!(r.hz, Some(round(ms.grid.hz, 2)));
    assert_eq!(r.v_ln, Some(round(ms.grid.v, 1)));
    assert_eq!(r.w, Some(ms.w));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_704_limit_is_ramped_to_and_reverts() {
    let site = Site::start().await;
    let inv = inverter(&site).await;
    // The setpoint asks for 8 kW (for 10 minutes), the limit caps at 30 % of 10 kW for 5 s.
    inv.set_active_power(&ActivePowerSetpoint {
        mode: SetpointMode::Watts,
        value: 8_000.0,
        revert_after: Duration::from_secs(600),
        revert_to: Some(0.0),
    })
    .await
    .unwrap();
    inv.set_power_limit(&PowerLimit {
        pct: 30.0,
        revert_after: Duration::from_secs(5),
        revert_to_pct: None,
    })
    .await
    .unwrap();
    let ctl = inv.der_controls().await.unwrap();
    assert_eq!(ctl.power_limit.enabled, Some(true));
    assert_eq!(ctl.power_limit.pct, Some(30.0));
    assert_eq!(ctl.power_limit.revert_remaining_secs, Some(5));
    assert_eq!(ctl.setpoint.w, Some(8_000.0));
    let c = site.inverter.with_device(|d| d.state().controls);
    assert!(c.limit.enabled && c.setpoint.enabled);

    // 5 kW/s: 1 kW after 0.2 s, then held at the 3 kW cap.
    site.step(2, TICK);
    assert_eq!(inv.ac_measurement().await.unwrap().w, Some(1_000.0));
    site.step(10, TICK);
    assert_eq!(inv.ac_measurement().await.unwrap().w, Some(3_000.0));
    let MeterReading::Meter(r) = meter(&site).await.meter().await.unwrap() else {
        panic!("model 203 expected");
    };
    assert_eq!(
        r.w,
        Some(-3_000.0),
        "the meter sees the injection as export"
    );

    // 5 s after the write the limit reverts (disabled): the power ramps to the setpoint.
    site.step(37, TICK);
    let ctl = inv.der_controls().await.unwrap();
    assert_eq!(ctl.power_limit.enabled, Some(true));
    assert_eq!(ctl.power_limit.revert_remaining_secs, Some(1));
    site.step(1, TICK);
    let ctl = inv.der_controls().await.unwrap();
    assert_eq!(ctl.power_limit.enabled, Some(false), "reverted");
    assert_eq!(ctl.power_limit.revert_remaining_secs, Some(0));
    site.step(10, TICK);
    assert_eq!(inv.ac_measurement().await.unwrap().w, Some(8_000.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_and_read_only_writes_are_refused() {
    let site = Site::start().await;
    let inv = inverter(&site).await;
    let addr = inv.map().find(704).unwrap().addr;
    let c = inv.client();
    // WMaxLimPct = 100.1 % (raw 1001 with WMaxLimPct_SF = -1).
    let e = c.write_single_register(addr + 15, 1001).await.unwrap_err();
    assert_eq!(
        e.exception_code(),
        Some(ExceptionCode::IllegalDataValue),
        "{e}"
    );
    // WSet = 20 kW on a 10 kW inverter (int32, WSet_SF = 0).
    let e = c
        .write_multiple_registers(addr + 24, &[0, 20_000])
        .await
        .unwrap_err();
    assert_eq!(e.exception_code(), Some(ExceptionCode::IllegalDataValue));
    // WMaxLimPct_SF is read-only; so is every register of the meter.
    let e = c.write_single_register(addr + 54, 0).await.unwrap_err();
    assert_eq!(e.exception_code(), Some(ExceptionCode::IllegalDataAddress));
    let e = client(site.meter.addr())
        .write_single_register(40_010, 1)
        .await
        .unwrap_err();
    assert_eq!(e.exception_code(), Some(ExceptionCode::IllegalDataAddress));
    // A read outside the map.
    let e = c.read_holding_registers(1000, 2).await.unwrap_err();
    assert!(
        matches!(
            e,
            ModbusError::Exception {
                code: ExceptionCode::IllegalDataAddress,
                ..
            }
        ),
        "{e}"
    );
    // Nothing changed.
    let ctl = inv.der_controls().await.unwrap();
    assert_eq!(ctl.power_limit.pct, Some(100.0));
    assert_eq!(ctl.power_limit.enabled, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_island_shows_out_of_band_voltage_and_frequency() {
    let site = Site::start().await;
    let inv = inverter(&site).await;
    let m = meter(&site).await;
    inv.set_active_power(&ActivePowerSetpoint {
        mode: SetpointMode::Watts,
        value: 4_000.0,
        revert_after: Duration::from_secs(600),
        revert_to: None,
    })
    .await
    .unwrap();
    site.step(10, TICK);
    assert_eq!(inv.ac_measurement().await.unwrap().w, Some(4_000.0));

    site.grid.island();
    site.step(30, TICK);
    let ac = inv.ac_measurement().await.unwrap();
    let sample = |v: f64, hz: f64| GridSample {
        v,
        hz,
        nominal_v: 230.0,
        nominal_hz: 50.0,
    };
    let (v, hz) = (ac.v_ln.unwrap(), ac.hz.unwrap());
    assert!(!sample(v, hz).in_band(), "inverter reads {v} V, {hz} Hz");
    assert!(
        hz > 52.0 && v > 1.2 * 230.0,
        "past the must-trip limits: {v} V, {hz} Hz"
    );
    assert_eq!(ac.w, Some(0.0), "ceased to energize");
    assert_eq!(ac.connection_state, Some(ConnectionState::Disconnected));
    let MeterReading::Meter(r) = m.meter().await.unwrap() else {
        panic!("model 203 expected");
    };
    let (v, hz) = (r.v_ln.unwrap(), r.hz.unwrap());
    assert!(!sample(v, hz).in_band(), "meter reads {v} V, {hz} Hz");

    site.grid.reconnect();
    site.step(10, TICK);
    let ac = inv.ac_measurement().await.unwrap();
    assert!(sample(ac.v_ln.unwrap(), ac.hz.unwrap()).in_band());
    assert_eq!(ac.connection_state, Some(ConnectionState::Connected));
    assert_eq!(ac.w, Some(4_000.0), "back at the setpoint after the ramp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_setpoint_reverts_to_its_reversion_value() {
    let site = Site::start().await;
    let inv = inverter(&site).await;
    // Charge at 40 % of 10 kW for 2 s, then -5 % (the reversion value).
    inv.set_active_power(&ActivePowerSetpoint {
        mode: SetpointMode::WMaxPct,
        value: -40.0,
        revert_after: Duration::from_secs(2),
        revert_to: Some(-5.0),
    })
    .await
    .unwrap();
    let ctl = inv.der_controls().await.unwrap();
    assert_eq!(ctl.setpoint.mode, Some(SetpointMode::WMaxPct));
    assert_eq!(ctl.setpoint.pct, Some(-40.0));
    assert_eq!(ctl.setpoint.revert_pct, Some(-5.0));
    site.step(19, TICK);
    assert_eq!(inv.ac_measurement().await.unwrap().w, Some(-4_000.0));
    assert_eq!(
        inv.der_controls()
            .await
            .unwrap()
            .setpoint
            .revert_remaining_secs,
        Some(1)
    );
    site.step(1, TICK);
    let ctl = inv.der_controls().await.unwrap();
    assert_eq!(ctl.setpoint.pct, Some(-5.0), "reverted");
    assert_eq!(ctl.setpoint.enabled, Some(true), "WSetEnaRvrt = 1");
    // 3.5 kW to go at 5 kW/s, the step of the reversion included.
    site.step(6, TICK);
    assert_eq!(inv.ac_measurement().await.unwrap().w, Some(-500.0));
    // Disabling the setpoint returns to the default (0 W) and stops the timer.
    inv.write(&ctl.scales.setpoint_disable().unwrap())
        .await
        .unwrap();
    site.step(2, TICK);
    assert_eq!(inv.ac_measurement().await.unwrap().w, Some(0.0));
    let ctl = inv.der_controls().await.unwrap();
    assert_eq!(ctl.setpoint.enabled, Some(false));
    assert_eq!(ctl.setpoint.revert_remaining_secs, Some(0));
}
