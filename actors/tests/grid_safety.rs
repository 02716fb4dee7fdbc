//! Grids of either frequency, ROCOF and the age of grid readings, driven through a running
//! node (issue 19): the 50 Hz demo site (configs/demo-50hz.toml) runs Normal on a healthy
//! simulated 50 Hz grid and trips on each band (under/over frequency, under/over voltage,
//! ROCOF); a meter that stops answering, in process or as a SunSpec Modbus server of the
//! simulator, makes its segment ChargeOnly for `meter_stale`; an inverter whose temperature
//! cannot be read counts as over-temperature.

use crate::common;

use common::*;
use gridvisor_actors::config::{self, ModbusEndpoint};
use gridvisor_actors::ladder::{FaultKey, SafeState};
use gridvisor_actors::runtime::{EventCursor, Scope};
use gridvisor_sim::modbus::{
    Fault, Grid, GridModel, MeterParams, MeterSim, ServerConfig, ServerHandle, SimServer,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The 50 Hz demo site, as `gridvisor check-config` reads it.
const DEMO_50HZ: &str = include_str!("../../configs/demo-50hz.toml");

fn level(t: &TestNode, seg: &str) -> SafeState {
    t.node.segment(seg).unwrap().level
}

fn causes(t: &TestNode, seg: &str) -> Vec<FaultKey> {
    t.node.segment(seg).unwrap().causes
}

/// The 50 Hz demo node, discharging on `tx-a` (exporting at its meter).
async fn exporting_demo(toml: &str) -> TestNode {
    let t = start(toml).await;
    let r = t
        .node
        .request(request("d", Scope::Segment("tx-a".into()), -30.0, 600.0))
        .await
        .unwrap();
    assert_eq!(r.not_acknowledged, 0, "{r:?}");
    wait(&t.node, "tx-a exporting", || {
        t.node.segment("tx-a").unwrap().telemetry.metered_kw < -5.0
    })
    .await;
    t
}

#[test]
fn the_50hz_demo_is_a_valid_topology_on_a_50hz_grid() {
    let t = config::parse("configs/demo-50hz.toml", DEMO_50HZ).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.safety.grid().hz(), 50.0);
    let l = t.safety.ladder_config();
    let f: Vec<f64> = l.frequency_bands.iter().map(|b| b.threshold).collect();
    assert_eq!(f, [52.0, 51.5, 47.5, 47.0]);
    assert_eq!(
        gridvisor_actors::device::SimSite::new(&t).grid.get(),
        (1.0, 50.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50hz_site_runs_normal_on_a_healthy_50hz_grid() {
    let t = exporting_demo(DEMO_50HZ).await;
    // Exporting on a 50 Hz grid with readings every poll: no transition at all since start
    // (a 60 Hz ladder would have tripped at the first reading: 50 Hz is below its UF2).
    let r = t
        .node
        .request(request("d2", Scope::Site, -40.0, 600.0))
        .await
        .unwrap();
    assert_eq!(r.not_acknowledged, 0, "{r:?}");
    wait(&t.node, "tx-b exporting", || {
        t.node.segment("tx-b").unwrap().telemetry.metered_kw < -5.0
    })
    .await;
    let events = t.node.events_since(&mut EventCursor::default(), 100);
    assert!(events.is_empty(), "{events:#?}");
    for seg in ["tx-a", "tx-b"] {
        assert_eq!(level(&t, seg), SafeState::Normal);
    }
    t.node.shutdown().await;
}

/// Moves the grid to `(voltage_pu, frequency_hz)` while tx-a exports: it trips for
/// islanding, no sooner than `at_least` after the change, and every charger is at 0 kW.
async fn trips_on(toml: &str, voltage_pu: f64, frequency_hz: f64, at_least: Duration) {
    let t = exporting_demo(toml).await;
    let changed = Instant::now();
    t.node.sim.grid.set(voltage_pu, frequency_hz);
    wait(&t.node, "tripped", || {
        level(&t, "tx-a") == SafeState::Tripped
    })
    .await;
    let after = changed.elapsed();
    assert!(after >= at_least, "tripped {after:?} after the change");
    assert!(causes(&t, "tx-a").contains(&FaultKey::Islanding));
    wait(&t.node, "chargers at 0 kW", || {
        ["bay-1", "bay-2"]
            .iter()
            .all(|c| t.node.sim.chargers[*c].setpoint_kw() == 0.0)
    })
    .await;
    t.node.shutdown().await;
}

/// The demo with `from` replaced by `to` (a line of its `[safety]` table).
fn demo_with(edits: &[(&str, &str)]) -> String {
    edits.iter().fold(DEMO_50HZ.to_owned(), |text, (from, to)| {
        assert!(text.contains(from), "{from}");
        text.replacen(from, to, 1)
    })
}

/// A reading age that a test machine busy with parallel tests cannot exceed: these tests
/// are about the bands, and a segment made ChargeOnly by a late poll would stop exporting
/// before a 2 s band clears (the reading age has its own tests below).
const PATIENT: (&str, &str) = ("max_reading_age_ms = 500", "max_reading_age_ms = 10000");

/// The demo with ROCOF out of the way (a step into a band trips by the band alone), and the
/// stage-1 frequency bands overridden to clear in [`STAGE_1_CLEARING`] (EN 50549-1's 2 s
/// defaults are checked in the ladder's unit tests): a trip is due only while exporting, and
/// on a machine busy with parallel tests the dispatcher's first re-dispatch, about a second
/// after the request, can read a measurement older than its command as throttling and stop
/// the export before a 2 s band clears (see the closing note of issue 19).
fn bands_only() -> String {
    demo_with(&[
        PATIENT,
        ("rocof_hz_per_s = 2.0", "rocof_hz_per_s = 100"),
        (
            "[safety.bands]\n",
            "[safety.bands]\nuf1 = { hz = 47.5, clearing_ms = 400 }\nof1 = { hz = 51.5, clearing_ms = 400 }\n",
        ),
    ])
}

/// The stage-1 clearing time of [`bands_only`].
const STAGE_1_CLEARING: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_frequency_stage_2_trips_after_its_clearing_time() {
    trips_on(&bands_only(), 1.0, 46.8, Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_frequency_stage_1_trips_after_its_clearing_time() {
    trips_on(&bands_only(), 1.0, 47.3, STAGE_1_CLEARING).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_frequency_stage_2_trips_after_its_clearing_time() {
    trips_on(&bands_only(), 1.0, 52.3, Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_frequency_stage_1_trips_after_its_clearing_time() {
    trips_on(&bands_only(), 1.0, 51.7, STAGE_1_CLEARING).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_voltage_trips_after_the_demos_own_clearing_time() {
    // The demo overrides UV1 with 0.80 pu / 3 s.
    trips_on(&demo_with(&[PATIENT]), 0.75, 50.0, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_voltage_trips_after_its_clearing_time() {
    // The demo overrides OV2 with 1.15 pu / 0.2 s.
    trips_on(
        &demo_with(&[PATIENT]),
        1.17,
        50.0,
        Duration::from_millis(200),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frequency_step_inside_every_band_trips_on_rocof() {
    // 50 → 51.3 Hz: inside OF1 (51.5 Hz), but 1.3 Hz within one 500 ms window is 2.6 Hz/s,
    // beyond the 2 Hz/s threshold: a loss of mains.
    trips_on(&demo_with(&[PATIENT]), 1.0, 51.3, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_that_stops_answering_is_meter_stale_then_recovers() {
    let t = exporting_demo(DEMO_50HZ).await;
    t.node.sim.meters["meter-a"].set_unreachable(true);
    wait(&t.node, "charge only for a stale reading", || {
        level(&t, "tx-a") == SafeState::ChargeOnly && causes(&t, "tx-a") == [FaultKey::MeterStale]
    })
    .await;
    wait(&t.node, "no discharge from tx-a", || {
        ["bay-1", "bay-2"]
            .iter()
            .all(|c| t.node.sim.chargers[*c].setpoint_kw() >= 0.0)
    })
    .await;
    assert_eq!(
        level(&t, "tx-b"),
        SafeState::Normal,
        "the other meter answers"
    );
    t.node.sim.meters["meter-a"].set_unreachable(false);
    wait(&t.node, "normal after the hold", || {
        level(&t, "tx-a") == SafeState::Normal
    })
    .await;
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inverter_whose_temperature_cannot_be_read_is_over_temperature() {
    let t = start(DEMO_50HZ).await;
    wait(&t.node, "running", || {
        level(&t, "tx-a") == SafeState::Normal
    })
    .await;
    t.node.sim.inverters["bat-a"].set_unreachable(true);
    // Three failed reads in a row (the demo's `temperature_read_failures`): fully derated.
    wait(&t.node, "limited to 0 kW", || {
        level(&t, "tx-a") == SafeState::Limited { cap_kw: 0.0 }
            && causes(&t, "tx-a") == [FaultKey::OverTemperature("bat-a".into())]
    })
    .await;
    assert_eq!(level(&t, "tx-b"), SafeState::Normal);
    t.node.sim.inverters["bat-a"].set_unreachable(false);
    wait(&t.node, "normal after the hold", || {
        level(&t, "tx-a") == SafeState::Normal
    })
    .await;
    t.node.shutdown().await;
}

/// A 50 Hz meter served by the simulator over SunSpec Modbus TCP, importing 4 kW.
async fn modbus_meter() -> ServerHandle<MeterSim> {
    let grid = Grid::new(GridModel::new(19)); // 230 V / 50 Hz
    let meter = MeterSim::new(MeterParams::new("MTR-50"), || 4_000.0, grid).unwrap();
    SimServer::new(ServerConfig::default())
        .start(meter)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sunspec_meter_is_meter_stale_within_the_reading_age() {
    let sim = modbus_meter().await;
    sim.step(Duration::from_millis(100)).unwrap();
    let mut topology = config::parse("configs/demo-50hz.toml", DEMO_50HZ).unwrap();
    let meter = &mut topology.substations[0].segments[0].meters[0];
    meter.modbus = Some(ModbusEndpoint {
        addr: sim.addr(),
        unit: 1,
        profile: None,
    });
    topology.validate().unwrap_or_else(|e| panic!("{e}"));
    let t = start_in(Arc::new(topology), tempfile::tempdir().unwrap()).await;
    wait(&t.node, "reading the SunSpec meter", || {
        t.node.segment("tx-a").unwrap().telemetry.metered_kw == 4.0
    })
    .await;
    assert_eq!(level(&t, "tx-a"), SafeState::Normal, "a healthy 50 Hz grid");
    // The meter accepts requests and never answers: each read ends at its time-out (half
    // the reading age); the age alone makes the segment blind.
    sim.set_fault(Fault::Hang).unwrap();
    wait(&t.node, "charge only for a stale reading", || {
        level(&t, "tx-a") == SafeState::ChargeOnly && causes(&t, "tx-a") == [FaultKey::MeterStale]
    })
    .await;
    let stale = t
        .node
        .events_since(&mut EventCursor::default(), 100)
        .into_iter()
        .find(|e| e.transition.causes.contains(&FaultKey::MeterStale))
        .expect("the transition is logged");
    assert_eq!(stale.segment, "tx-a");
    sim.set_fault(Fault::None).unwrap();
    wait(&t.node, "normal after the hold", || {
        level(&t, "tx-a") == SafeState::Normal
    })
    .await;
    t.node.shutdown().await;
}
