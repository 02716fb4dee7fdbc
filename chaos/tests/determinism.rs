//! The in-process mode is deterministic: the same scenario and seed give the same history,
//! byte for byte; another seed gives another.

use std::path::Path;

use gridvisor_chaos::sweep::quiet_injected_panics;

fn storm() -> gridvisor_chaos::Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/chaos/storm.toml");
    gridvisor_chaos::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_same_seed_gives_the_same_history_byte_for_byte() {
    quiet_injected_panics();
    let s = storm();
    let a = gridvisor_chaos::run(&s, 7).unwrap();
    let b = gridvisor_chaos::run(&s, 7).unwrap();
    let (ha, hb) = (a.history.to_json(), b.history.to_json());
    assert!(ha.len() > 100_000, "a thin history: {} bytes", ha.len());
    if ha != hb {
        let at = ha
            .iter()
            .zip(&hb)
            .position(|(x, y)| x != y)
            .unwrap_or(ha.len().min(hb.len()));
        let from = at.saturating_sub(300);
        panic!(
            "the histories differ at byte {at}:\n{}\n---\n{}",
            String::from_utf8_lossy(&ha[from..(at + 300).min(ha.len())]),
            String::from_utf8_lossy(&hb[from..(at + 300).min(hb.len())])
        );
    }
    assert_eq!(a.report.history_digest, b.report.history_digest);
    // The history is not a trivial one: faults, transitions, restarts and receipts are in it.
    for kind in [
        "fault_start",
        "transition",
        "actor_restarted",
        "receipt",
        "vehicle_arrived",
    ] {
        assert!(
            a.history.events.iter().any(|e| e.kind == kind),
            "no {kind} event"
        );
    }
}

#[test]
fn another_seed_gives_another_history() {
    quiet_injected_panics();
    let s = storm();
    let a = gridvisor_chaos::run(&s, 7).unwrap();
    let c = gridvisor_chaos::run(&s, 8).unwrap();
    assert_ne!(a.history.to_json(), c.history.to_json());
    // The seed moved the faults.
    let starts = |o: &gridvisor_chaos::RunOutcome| -> Vec<u64> {
        o.history
            .events
            .iter()
            .filter(|e| e.kind == "fault_start")
            .map(|e| e.t_ms)
            .collect()
    };
    assert_ne!(starts(&a), starts(&c));
}
