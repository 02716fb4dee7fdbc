//! Frequency-watt response (issue 22, item 1) through a running node on tokio's paused clock
//! (simulated time: the bounds are exact, not timing luck). The dispatch cycle is 10 s, so a
//! response within `response_time_ms` (1 s) can only come from the meter's reading, never
//! from the next cycle:
//! - over-frequency charges more, under-frequency charges less or discharges, by
//!   `(Δf beyond the deadband / 60 Hz) / 5 % × P_available` (IEEE 1547-2018 defaults);
//! - back within the deadband, the response ends;
//! - the response never crosses the safe-state clamp (ChargeOnly: no device discharges,
//!   whatever the frequency).

use std::sync::Arc;
use std::time::Duration;

use gridvisor_actors::checkpoint::CheckpointStore;
use gridvisor_actors::clock::Clock;
use gridvisor_actors::config;
use gridvisor_actors::ladder::{Fault, SafeState};
use gridvisor_actors::runtime::{Node, NodeOptions};
use tokio::time::Instant;

use crate::common::site_toml;

/// The longest simulated wait of these tests.
const SIM_LIMIT: Duration = Duration::from_secs(60);
/// `response_time_ms`'s default: the full response is on the devices within it.
const RESPONSE_BOUND: Duration = Duration::from_millis(1_000);
/// Four 11 kW V2G chargers: what the response can move either way, kW.
const P_AVAILABLE_KW: f64 = 44.0;
/// Setpoints are compared to the hand-computed response within this, kW.
const TOLERANCE_KW: f64 = 0.01;

/// One segment of four bidirectional 11 kW chargers with a V2G vehicle each (SoC 40–61 %,
/// floor 20 %), a 10 s cycle, droop on with its defaults. ROCOF is set out of the way: a
/// step of the simulated grid is not a real grid's ramp, and ROCOF has its own tests.
async fn start() -> Node {
    let toml = site_toml(1, 4, "", "rocof_hz_per_s = 10\nmax_reading_age_ms = 2000").replacen(
        "cycle_ms = 100",
        "cycle_ms = 10000",
        1,
    ) + "[grid_services.frequency]\nenabled = true\n";
    let topology = config::parse("test.toml", &toml).unwrap_or_else(|e| panic!("{e}"));
    let node = Node::start(
        Arc::new(topology),
        CheckpointStore::in_memory(),
        Clock::tokio(),
        prometheus::Registry::new(),
        NodeOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("node: {e}"));
    sim_wait(&node, "every vehicle plugged in", || {
        (0..4).all(|n| node.session(&format!("ev-{n}")).is_some())
    })
    .await;
    node
}

/// Wait in simulated time until `cond` holds; returns how long it took.
async fn sim_wait(node: &Node, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > SIM_LIMIT {
            panic!(
                "{what}: not within {SIM_LIMIT:?} (simulated)\n{}",
                serde_json::to_string_pretty(&node.segments()).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

fn setpoints(node: &Node) -> Vec<f64> {
    (0..4)
        .map(|n| node.sim.chargers[&format!("evse-{n}")].setpoint_kw())
        .collect()
}

fn total(node: &Node) -> f64 {
    setpoints(node).iter().sum()
}

/// Step the grid to `hz` and wait for the chargers' total to reach `expect_kw`; the wait
/// must be within [`RESPONSE_BOUND`].
async fn step(node: &Node, hz: f64, expect_kw: f64) {
    node.sim.grid.set(1.0, hz);
    let took = sim_wait(node, &format!("{expect_kw} kW at {hz} Hz"), || {
        (total(node) - expect_kw).abs() < TOLERANCE_KW
    })
    .await;
    assert!(took <= RESPONSE_BOUND, "{hz} Hz: {took:?} (simulated)");
}

#[tokio::test(start_paused = true)]
async fn the_response_follows_the_frequency_both_ways_within_the_bound() {
    let node = start().await;
    assert_eq!(total(&node), 0.0, "no request: the safe default");
    // 60.336 Hz: 0.3 Hz beyond the 36 mHz deadband, 0.5 % of 60 Hz, 10 % of 44 kW.
    step(&node, 60.336, 0.1 * P_AVAILABLE_KW).await;
    assert!(setpoints(&node).iter().all(|kw| *kw >= 0.0));
    let droop = node.segment("tx-0").unwrap().telemetry.droop_kw;
    assert!((droop - 4.4).abs() < TOLERANCE_KW, "{droop}");
    // 59.664 Hz: as far under: 4.4 kW discharged.
    step(&node, 59.664, -0.1 * P_AVAILABLE_KW).await;
    assert!(setpoints(&node).iter().all(|kw| *kw <= 0.0));
    // Within the deadband: no response.
    step(&node, 60.02, 0.0).await;
    assert_eq!(node.segment("tx-0").unwrap().level, SafeState::Normal);
    node.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn charge_only_clamps_the_response() {
    let node = start().await;
    let seg = node.shared.segments["tx-0"].clone();
    seg.observe(Fault::Handoff(true), node.shared.clock.now());
    assert_eq!(node.segment("tx-0").unwrap().level, SafeState::ChargeOnly);
    // Over-frequency: charging more is allowed in ChargeOnly.
    step(&node, 60.336, 0.1 * P_AVAILABLE_KW).await;
    // A deep under-frequency (58.7 Hz: 42 % of 44 kW down): the chargers stop charging,
    // none discharges.
    step(&node, 58.7, 0.0).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sp = setpoints(&node);
        assert!(
            sp.iter().all(|kw| *kw >= 0.0),
            "ChargeOnly discharged: {sp:?}"
        );
    }
    assert_eq!(node.segment("tx-0").unwrap().telemetry.droop_kw, 0.0);
    node.shutdown().await;
}
