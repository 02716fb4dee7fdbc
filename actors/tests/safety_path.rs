//! A safety path no device can stall (issue 19, item 4), driven through a running node on
//! tokio's paused clock (simulated time: the bounds below are exact, not timing luck):
//! - a charger that never answers does not hold back the other devices of its segment, nor
//!   the next level: a Tripped overtakes the ChargeOnly still in flight to it, and the tick
//!   (which detects the islanding here) keeps running;
//! - the hung charger's command misses its deadline, is counted and retried, and lands once
//!   the charger answers again;
//! - a checkpoint store that fails is retried while the safety actor keeps enforcing levels.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use gridvisor_actors::checkpoint::{CheckpointError, CheckpointStore, Replicator};
use gridvisor_actors::clock::Clock;
use gridvisor_actors::config;
use gridvisor_actors::ladder::{Fault, SafeState};
use gridvisor_actors::runtime::safe_command::{SAFE_COMMAND_DEADLINE, SAFE_COMMAND_RETRY_MAX};
use gridvisor_actors::runtime::{Node, NodeOptions, SafetyCheckpoint, Scope};
use gridvisor_supervisors::registry::Lookup;
use tokio::time::Instant;

use crate::common::{request, site_toml};

/// The longest simulated wait of these tests.
const SIM_LIMIT: Duration = Duration::from_secs(60);
/// Responsive devices are commanded within this of a change of level (simulated time).
const COMMAND_BOUND: Duration = Duration::from_millis(10);

async fn start(segments: usize, chargers: usize, store: CheckpointStore) -> Node {
    let toml = site_toml(segments, chargers, "", "");
    let topology = config::parse("test.toml", &toml).unwrap_or_else(|e| panic!("{e}"));
    Node::start(
        Arc::new(topology),
        store,
        Clock::tokio(),
        prometheus::Registry::new(),
        NodeOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("node: {e}"))
}

/// Wait in simulated time until `cond` holds; returns how long it took. Panics after
/// [`SIM_LIMIT`] with `what` and the segments.
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

fn level(node: &Node, seg: &str) -> SafeState {
    node.segment(seg).unwrap().level
}

fn outcome(node: &Node, seg: &str, outcome: &str) -> u64 {
    node.shared
        .metrics
        .safe_commands
        .with_label_values(&[seg, outcome])
        .get()
}

/// The chargers of tx-0 but `but`, and whether each holds a setpoint satisfying `ok`.
fn others_hold(node: &Node, but: &str, ok: impl Fn(f64) -> bool) -> bool {
    let seg = node.shared.topology.segment("tx-0").unwrap();
    seg.chargers
        .iter()
        .filter(|c| c.id != but)
        .all(|c| ok(node.sim.chargers[&c.id].setpoint_kw()))
}

/// tx-0 discharging through every charger.
async fn discharging(node: &Node) {
    let r = node
        .request(request("export", Scope::Site, -30.0, 600.0))
        .await
        .unwrap();
    assert_eq!(r.not_acknowledged, 0, "{r:?}");
    sim_wait(node, "every charger discharging", || {
        others_hold(node, "", |kw| kw < 0.0)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_charger_stalls_neither_its_segment_nor_the_next_level() {
    let node = start(1, 4, CheckpointStore::in_memory()).await;
    discharging(&node).await;
    let hung = node.sim.chargers["evse-0"].clone();
    let exporting_kw = hung.setpoint_kw();
    hung.set_hung(true);

    // ChargeOnly (a handoff begins): every other device within the bound, although the
    // command to evse-0 never comes back.
    let seg = node.shared.segments["tx-0"].clone();
    seg.observe(Fault::Handoff(true), node.shared.clock.now());
    let took = sim_wait(&node, "the responsive chargers at charge only", || {
        others_hold(&node, "evse-0", |kw| kw >= 0.0)
    })
    .await;
    assert!(took <= COMMAND_BOUND, "{took:?}");
    assert_eq!(level(&node, "tx-0"), SafeState::ChargeOnly);

    // Islanding, seen by the tick's and the meter's work while the ChargeOnly to evse-0 is
    // still in flight: Tripped overtakes it, and every other device is at 0 kW at once.
    node.sim.grid.set(0.0, 60.0);
    let detected = sim_wait(&node, "tripped", || {
        level(&node, "tx-0") == SafeState::Tripped
    })
    .await;
    assert!(detected < SAFE_COMMAND_DEADLINE, "{detected:?}");
    let took = sim_wait(&node, "the responsive chargers at 0 kW", || {
        others_hold(&node, "evse-0", |kw| kw == 0.0)
    })
    .await;
    assert!(took <= COMMAND_BOUND, "{took:?}");
    assert!(outcome(&node, "tx-0", "superseded") >= 1);
    assert_eq!(node.sim.inverters["inv-0"].setpoint_kw(), 0.0);
    // The hung charger still exports what it held: only its own command waits.
    assert_eq!(hung.setpoint_kw(), exporting_kw);

    // Its command misses the deadline, is counted and tried again, and again.
    sim_wait(&node, "two missed deadlines", || {
        outcome(&node, "tx-0", "missed") >= 2
    })
    .await;
    // It answers again: the retry lands (within the longest backoff and one deadline).
    hung.set_hung(false);
    let took = sim_wait(&node, "evse-0 at 0 kW", || hung.setpoint_kw() == 0.0).await;
    assert!(
        took <= SAFE_COMMAND_RETRY_MAX + SAFE_COMMAND_DEADLINE,
        "{took:?}"
    );
    // A round with a missed device still settles (at its deadline), so the node's command
    // latencies are bounded by it.
    let rounds = node.shared.command_latencies();
    assert!(!rounds.is_empty());
    assert!(
        rounds.iter().all(|d| *d <= SAFE_COMMAND_DEADLINE),
        "{rounds:?}"
    );
    node.shutdown().await;
}

/// The safety actor of tx-0.
const SAFETY: &str = "node/segments/tx-0/safety";

/// A replica that refuses the safety checkpoints while `failing` is set.
struct FailingSafetyReplica {
    failing: Arc<AtomicBool>,
}

impl Replicator for FailingSafetyReplica {
    fn replicate(
        &self,
        key: String,
        _value: Option<Vec<u8>>,
    ) -> BoxFuture<'static, Result<(), CheckpointError>> {
        let fail = key.starts_with("safety/") && self.failing.load(Ordering::Acquire);
        Box::pin(async move {
            if fail {
                Err(CheckpointError::Replication {
                    key,
                    reason: "test: the replica refuses".into(),
                })
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_checkpoint_is_retried_and_the_enforcer_keeps_running() {
    let store = CheckpointStore::in_memory();
    let failing = Arc::new(AtomicBool::new(true));
    assert!(store.set_replicator(Arc::new(FailingSafetyReplica {
        failing: failing.clone()
    })));
    let node = start(1, 3, store.clone()).await;
    discharging(&node).await;
    let incarnation = || match node.registry().lookup_incarnation(SAFETY) {
        Lookup::Running(_, n) => Some(n),
        _ => None,
    };
    let safety = incarnation();
    assert!(safety.is_some());
    let failures = || {
        node.shared
            .metrics
            .safe_checkpoint_failures
            .with_label_values(&["tx-0"])
            .get()
    };
    // Islanding while exporting: Tripped, and its checkpoint fails again and again.
    node.sim.grid.set(0.0, 60.0);
    sim_wait(&node, "tripped and every charger at 0 kW", || {
        level(&node, "tx-0") == SafeState::Tripped && others_hold(&node, "", |kw| kw == 0.0)
    })
    .await;
    sim_wait(&node, "the checkpoint failed and was tried again", || {
        failures() >= 3
    })
    .await;
    assert_eq!(safety, incarnation(), "the safety actor was restarted");
    // The store works again: the level is written.
    failing.store(false, Ordering::Release);
    let written = || {
        store
            .get::<SafetyCheckpoint>("safety/tx-0")
            .ok()
            .flatten()
            .map(|c| c.level)
    };
    sim_wait(&node, "the checkpoint holds Tripped", || {
        written() == Some(SafeState::Tripped)
    })
    .await;
    // The same actor goes on: the grid returns; after the hold the operator's reset ends
    // the lockout: Normal, checkpointed.
    node.sim.grid.set(1.0, 60.0);
    sim_wait(&node, "the reset accepted after the hold", || {
        node.reset_segment("tx-0").is_ok()
    })
    .await;
    sim_wait(&node, "normal again, checkpointed", || {
        level(&node, "tx-0") == SafeState::Normal && written() == Some(SafeState::Normal)
    })
    .await;
    assert_eq!(safety, incarnation(), "the safety actor was restarted");
    node.shutdown().await;
}
