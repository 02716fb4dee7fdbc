//! One test per row of the fault table (DESIGN.md, "The safe-state ladder"), driven through
//! a running node: the fault is injected where it would happen (the simulated grid, the PTP
//! monitor, an inverter, the transformer's load, the supervision tree, the grid
//! controller's silence), and the test watches the segment's level and what its devices
//! actually do. Plus: local safety clamps remote dispatch, leaving needs the hold time, and
//! an expired lease falls back to the safe default.

use crate::common;

use common::*;
use gridvisor_actors::ladder::{Fault, FaultKey, SafeState};
use gridvisor_actors::runtime::Scope;
use std::time::Duration;

fn level(t: &TestNode, seg: &str) -> SafeState {
    t.node.segment(seg).unwrap().level
}

/// Every charger of `seg` holds a setpoint satisfying `ok`.
fn chargers_of(
    t: &TestNode,
    seg: &str,
) -> Vec<std::sync::Arc<gridvisor_actors::device::SimCharger>> {
    let s = t.node.shared.topology.segment(seg).unwrap();
    s.chargers
        .iter()
        .map(|c| t.node.sim.chargers[&c.id].clone())
        .collect()
}

async fn discharge(t: &TestNode, id: &str, scope: Scope, kw: f64) {
    let r = t.node.request(request(id, scope, kw, 600.0)).await.unwrap();
    assert_eq!(r.not_acknowledged, 0, "{r:?}");
}

async fn exporting(t: &TestNode, seg: &str) {
    wait(&t.node, &format!("{seg} exporting"), || {
        t.node.segment(seg).unwrap().telemetry.metered_kw < -5.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn islanding_trips_the_segment_and_stops_every_device_then_holds() {
    let t = start(&site_toml(2, 4, "", "")).await;
    discharge(&t, "r1", Scope::Site, -60.0).await;
    exporting(&t, "tx-0").await;
    exporting(&t, "tx-1").await;
    // The grid is lost while we export.
    t.node.sim.grid.set(0.0, 60.0);
    wait(&t.node, "both segments tripped", || {
        level(&t, "tx-0") == SafeState::Tripped && level(&t, "tx-1") == SafeState::Tripped
    })
    .await;
    wait(&t.node, "every charger commanded to 0 kW", || {
        ["tx-0", "tx-1"]
            .iter()
            .flat_map(|s| chargers_of(&t, s))
            .all(|c| c.setpoint_kw() == 0.0)
    })
    .await;
    let seg = t.node.segment("tx-0").unwrap();
    assert!(
        seg.causes.contains(&FaultKey::Islanding),
        "{:?}",
        seg.causes
    );
    assert!(!t.node.shared.command_latencies().is_empty());
    // Tripped, nothing exports any more, but the grid is still gone: the trip stays for
    // longer than the hold time (1 s), and nothing discharges into the dead grid.
    let lost = std::time::Instant::now();
    while lost.elapsed() < Duration::from_millis(1_500) {
        for seg in ["tx-0", "tx-1"] {
            assert_eq!(
                level(&t, seg),
                SafeState::Tripped,
                "{seg} while the grid is lost"
            );
            assert!(chargers_of(&t, seg).iter().all(|c| c.setpoint_kw() >= 0.0));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The grid comes back: the cause holds for hold_s (1 s); then the segment stays locked
    // out (Tripped, cause `lockout` only) until an operator resets it.
    t.node.sim.grid.set(1.0, 60.0);
    let back = std::time::Instant::now();
    wait(&t.node, "the hold passed, locked out", || {
        t.node.segment("tx-0").unwrap().causes == vec![FaultKey::Lockout]
    })
    .await;
    assert!(
        back.elapsed() >= Duration::from_millis(900),
        "{:?}",
        back.elapsed()
    );
    assert_eq!(level(&t, "tx-0"), SafeState::Tripped);
    let view = t.node.reset_segment("tx-0").expect("the reset");
    assert_eq!(view.level, SafeState::Normal);
    assert_eq!(
        level(&t, "tx-1"),
        SafeState::Tripped,
        "each segment its own reset"
    );
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_frequency_while_exporting_trips_after_the_clearing_time() {
    let t = start(&site_toml(1, 3, "", "")).await;
    discharge(&t, "r1", Scope::Site, -20.0).await;
    exporting(&t, "tx-0").await;
    t.node.sim.grid.set(1.0, 62.5);
    wait(&t.node, "tripped", || {
        level(&t, "tx-0") == SafeState::Tripped
    })
    .await;
    wait(&t.node, "devices at 0", || {
        chargers_of(&t, "tx-0")
            .iter()
            .all(|c| c.setpoint_kw() == 0.0)
    })
    .await;
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptp_offset_over_1ms_is_charge_only_and_over_100ms_trips() {
    // With automatic reclose (0.3 s after the hold): the trip ends without a reset.
    let toml = site_toml(1, 3, "", "").replacen(
        "id = \"tx-0\"\nrated_kw = 66",
        "id = \"tx-0\"\nrated_kw = 66\ntrip = { auto_reclose_s = 0.3 }",
        1,
    );
    assert!(toml.contains("auto_reclose_s"));
    let t = start(&toml).await;
    discharge(&t, "r1", Scope::Site, -20.0).await;
    exporting(&t, "tx-0").await;
    t.node.sim.ptp.set_offset(Duration::from_millis(2));
    wait(&t.node, "charge only", || {
        level(&t, "tx-0") == SafeState::ChargeOnly
    })
    .await;
    wait(&t.node, "no device discharging", || {
        chargers_of(&t, "tx-0")
            .iter()
            .all(|c| c.setpoint_kw() >= 0.0)
    })
    .await;
    t.node.sim.ptp.set_offset(Duration::from_millis(150));
    wait(&t.node, "tripped", || {
        level(&t, "tx-0") == SafeState::Tripped
    })
    .await;
    t.node.sim.ptp.set_offset(Duration::from_micros(10));
    wait(
        &t.node,
        "normal after the hold and the reclose delay",
        || level(&t, "tx-0") == SafeState::Normal,
    )
    .await;
    let reclosed = t
        .node
        .events()
        .into_iter()
        .rev()
        .find(|e| e.transition.from == SafeState::Tripped);
    assert_eq!(
        reclosed.expect("the reclose in the log").transition.reset,
        Some(gridvisor_actors::ladder::Reset::AutoReclose)
    );
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_grid_controller_means_charge_only_until_keepalives_return() {
    let toml = site_toml(1, 2, "", "keepalive_timeout_s = 0.3")
        .replace("keepalive_required = false", "keepalive_required = true");
    let t = start(&toml).await;
    wait(&t.node, "charge only", || {
        level(&t, "tx-0") == SafeState::ChargeOnly
    })
    .await;
    let seg = t.node.segment("tx-0").unwrap();
    assert!(
        seg.causes.contains(&FaultKey::KeepAlive),
        "{:?}",
        seg.causes
    );
    // Keep-alives again: after the hold time, normal.
    let start = std::time::Instant::now();
    while level(&t, "tx-0") != SafeState::Normal {
        assert!(start.elapsed() < LIMIT, "still {:?}", level(&t, "tx-0"));
        t.node.keepalive().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_inverter_limits_its_segment_derated_with_temperature() {
    let t = start(&site_toml(2, 3, "", "")).await;
    // 45 °C above ambient (35): 80 °C, a quarter of the way from 85 °C: 12.5 kW of 50.
    let now = t.node.shared.clock.now();
    t.node.sim.inverters["inv-0"].set_cooling_fault(45.0, true, now);
    wait(&t.node, "limited", || {
        matches!(level(&t, "tx-0"), SafeState::Limited { .. })
    })
    .await;
    let SafeState::Limited { cap_kw } = level(&t, "tx-0") else {
        unreachable!()
    };
    assert!(cap_kw > 5.0 && cap_kw < 20.0, "{cap_kw}");
    assert_eq!(level(&t, "tx-1"), SafeState::Normal);
    // A request for the hot segment is clamped to the cap.
    let r = t
        .node
        .request(request("r1", Scope::Segment("tx-0".into()), -30.0, 60.0))
        .await
        .unwrap();
    let seg = &r.segments[0];
    assert!(seg.setpoint_kw.abs() <= cap_kw + 1e-6, "{r:?}");
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transformer_at_its_thermal_limit_is_limited_and_its_share_moves() {
    // tx-0: a small transformer with a short time constant that 4 chargers overload.
    let toml = site_toml(2, 4, "", "").replacen(
        "id = \"tx-0\"\nrated_kw = 88",
        "id = \"tx-0\"\nrated_kw = 20\n[substations.segments.thermal]\ntime_constant_s = 1\nambient_c = 30\nrated_rise_c = 65\nlimit_c = 60",
        1,
    );
    assert!(toml.contains("limit_c = 60"));
    let t = start(&toml).await;
    discharge(&t, "r1", Scope::Site, -80.0).await;
    wait(&t.node, "tx-0 limited by its thermal model", || {
        let s = t.node.segment("tx-0").unwrap();
        s.causes.contains(&FaultKey::TransformerThermal)
    })
    .await;
    let SafeState::Limited { cap_kw } = level(&t, "tx-0") else {
        panic!("{:?}", level(&t, "tx-0"))
    };
    // The aggregator moves discharge to the cooler segment.
    wait(&t.node, "the share moved to tx-1", || {
        let a = t.node.segment("tx-0").unwrap().telemetry;
        let b = t.node.segment("tx-1").unwrap().telemetry;
        a.setpoint_kw.abs() <= cap_kw + 1e-6 && b.setpoint_kw < a.setpoint_kw - 10.0
    })
    .await;
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_past_its_restart_intensity_goes_charge_only_with_an_alarm() {
    let t = start(&site_toml(2, 2, "", "")).await;
    discharge(&t, "r1", Scope::Site, -30.0).await;
    exporting(&t, "tx-0").await;
    let path = "node/segments/tx-0/dispatcher";
    // Kill the dispatcher more often than the segment's intensity allows (10 in 10 s).
    for _ in 0..40 {
        if level(&t, "tx-0") == SafeState::ChargeOnly {
            break;
        }
        if let Ok(cell) = t
            .node
            .registry()
            .resolve(path, Duration::from_secs(5))
            .await
        {
            cell.kill();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait(&t.node, "charge only", || {
        level(&t, "tx-0") == SafeState::ChargeOnly
    })
    .await;
    assert_eq!(level(&t, "tx-1"), SafeState::Normal);
    wait(&t.node, "no device of tx-0 discharging", || {
        chargers_of(&t, "tx-0")
            .iter()
            .all(|c| c.setpoint_kw() >= 0.0)
    })
    .await;
    let alarm = t
        .node
        .events()
        .into_iter()
        .any(|e| e.segment == "tx-0" && e.transition.alarm);
    assert!(alarm, "{:?}", t.node.events());
    // The segment was restarted and runs; after the hold time it is normal again.
    wait(&t.node, "normal again", || {
        level(&t, "tx-0") == SafeState::Normal
    })
    .await;
    assert!(t.node.registry().lookup(path).is_ok());
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_cluster_majority_is_charge_only() {
    let t = start(&site_toml(1, 2, "", "")).await;
    t.node.observe("tx-0", Fault::Quorum(false));
    assert_eq!(level(&t, "tx-0"), SafeState::ChargeOnly);
    t.node.observe("tx-0", Fault::Quorum(true));
    assert_eq!(level(&t, "tx-0"), SafeState::ChargeOnly, "held");
    wait(&t.node, "normal after the hold", || {
        level(&t, "tx-0") == SafeState::Normal
    })
    .await;
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_safety_clamps_remote_dispatch() {
    let t = start(&site_toml(1, 3, "", "")).await;
    t.node.observe("tx-0", Fault::Quorum(false));
    let r = t
        .node
        .request(request("r1", Scope::Site, -30.0, 60.0))
        .await
        .unwrap();
    let seg = &r.segments[0];
    assert_eq!(seg.level, SafeState::ChargeOnly);
    assert!(seg.clamped_kw >= 0.0 && seg.setpoint_kw >= 0.0, "{r:?}");
    assert!(chargers_of(&t, "tx-0")
        .iter()
        .all(|c| c.setpoint_kw() >= 0.0));
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_falls_back_to_the_safe_default() {
    // One dispatch only (a one-minute cycle) with a short lease: nothing renews it.
    let toml = site_toml(1, 3, "", "")
        .replace("cycle_ms = 100", "cycle_ms = 60000")
        .replace("lease_s = 5", "lease_s = 0.5");
    let t = start(&toml).await;
    discharge(&t, "r1", Scope::Site, -20.0).await;
    assert!(chargers_of(&t, "tx-0")
        .iter()
        .any(|c| c.setpoint_kw() < 0.0));
    wait(&t.node, "every device at the safe default (0 kW)", || {
        chargers_of(&t, "tx-0")
            .iter()
            .all(|c| c.setpoint_kw() == 0.0)
    })
    .await;
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_that_cannot_be_read_is_charge_only_until_it_answers_again() {
    let t = start(&site_toml(2, 2, "", "")).await;
    t.node.sim.meters["m-0"].set_unreachable(true);
    wait(&t.node, "charge only", || {
        level(&t, "tx-0") == SafeState::ChargeOnly
    })
    .await;
    assert!(t
        .node
        .segment("tx-0")
        .unwrap()
        .causes
        .contains(&FaultKey::MeterStale));
    assert_eq!(level(&t, "tx-1"), SafeState::Normal);
    t.node.sim.meters["m-0"].set_unreachable(false);
    wait(&t.node, "normal after the hold", || {
        level(&t, "tx-0") == SafeState::Normal
    })
    .await;
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_reading_garbage_is_a_meter_that_cannot_be_read() {
    let t = start(&site_toml(1, 2, "", "")).await;
    // Readings that are not numbers (the grid's voltage is what the meter reports).
    t.node.sim.grid.set(f64::NAN, 60.0);
    wait(&t.node, "charge only for a stale reading", || {
        t.node.segment("tx-0").is_some_and(|s| {
            s.level == SafeState::ChargeOnly && s.causes.contains(&FaultKey::MeterStale)
        })
    })
    .await;
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_charger_neither_stops_its_segment_nor_the_node() {
    let t = start(&site_toml(2, 3, "", "")).await;
    let dead = t.node.sim.chargers["evse-0"].clone();
    dead.set_unreachable(true);
    // Its link restarts (and keeps restarting the device connection) while it is away.
    let link = "node/segments/tx-0/chargers/evse-0/link";
    for _ in 0..5 {
        if let Ok(cell) = t.node.registry().resolve(link, LIMIT).await {
            cell.kill();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = t
        .node
        .request(request("r1", Scope::Site, -30.0, 60.0))
        .await
        .unwrap();
    assert!(t.node.running());
    let tx0 = r.segments.iter().find(|s| s.segment == "tx-0").unwrap();
    let tx1 = r.segments.iter().find(|s| s.segment == "tx-1").unwrap();
    assert_eq!(tx1.applied, 3, "{r:?}");
    assert_eq!(tx0.applied, 2, "{r:?}");
    assert!(tx0.failed <= 1, "{r:?}");
    assert_eq!(level(&t, "tx-0"), SafeState::Normal);
    // It answers again: its link comes back online and takes setpoints.
    dead.set_unreachable(false);
    wait(&t.node, "evse-0 back and dispatched", || {
        dead.setpoint_kw() < 0.0
    })
    .await;
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_falls_back_at_the_end_of_its_lease_even_with_its_link_gone() {
    let toml = site_toml(1, 2, "", "")
        .replace("cycle_ms = 100", "cycle_ms = 60000")
        .replace("lease_s = 5", "lease_s = 0.4");
    let t = start(&toml).await;
    discharge(&t, "r1", Scope::Site, -15.0).await;
    let c = t.node.sim.chargers["evse-0"].clone();
    assert!(c.setpoint_kw() < 0.0);
    // The charger's whole subtree is stopped: nobody will tell the device anything.
    let chargers = t
        .node
        .registry()
        .resolve("node/segments/tx-0/chargers", LIMIT)
        .await
        .unwrap();
    let sup = gridvisor_supervisors::SupervisorRef::from_cell(
        chargers,
        "node/segments/tx-0/chargers".into(),
    )
    .unwrap();
    sup.terminate_child("evse-0").await.unwrap();
    // The device's own revert timer puts it at its failsafe (the safe default, 0 kW).
    wait(&t.node, "the device at its failsafe", || {
        futures::executor::block_on(gridvisor_actors::device::ChargerIo::read(
            c.as_ref(),
            t.node.shared.clock.now(),
        ))
        .unwrap()
        .setpoint_kw
            == 0.0
    })
    .await;
    t.node.shutdown().await;
}
