//! The islanding scenarios that pass because the trip relay opened: a charger that cannot be
//! commanded (its OCPP connection dropped a second before the grid was lost, or it answers
//! after 12 s) keeps exporting 22 kW into the dead grid; only the relay cuts it off. Each
//! runs here once more with the relays taken out of its topology, and must then fail on
//! exactly that charger, by IEEE 1547's 2 s bound.

use std::path::Path;
use std::sync::Arc;

use gridvisor_chaos::sweep::quiet_injected_panics;

const SEEDS: [u64; 3] = [1, 2, 3];

fn scenario(file: &str) -> gridvisor_chaos::Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs/chaos")
        .join(file);
    gridvisor_chaos::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// The scenario's topology without any trip relay.
fn without_relays(mut s: gridvisor_chaos::Scenario) -> gridvisor_chaos::Scenario {
    let mut topology = (*s.topology).clone();
    for sub in &mut topology.substations {
        for seg in &mut sub.segments {
            assert!(seg.trip.is_some(), "{}: the chaos site has relays", seg.id);
            seg.trip = None;
        }
    }
    s.topology = Arc::new(topology);
    s
}

fn passes_only_with_the_relay(file: &str) {
    quiet_injected_panics();
    let with = scenario(file);
    let without = without_relays(scenario(file));
    for seed in SEEDS {
        let r = gridvisor_chaos::run(&with, seed).unwrap().report;
        assert!(r.passed, "{file} seed {seed}: {:#?}", r.violations);
        let island = r
            .invariants
            .iter()
            .find(|i| i.name == "no_export_into_island");
        assert!(island.is_some_and(|i| i.exercised), "{file} seed {seed}");
        let r = gridvisor_chaos::run(&without, seed).unwrap().report;
        assert!(!r.passed, "{file} seed {seed} passed without its relay");
        let v = r
            .violations
            .iter()
            .map(|v| &v.violation)
            .find(|v| v.invariant == "no_export_into_island")
            .unwrap_or_else(|| panic!("{file} seed {seed}: {:#?}", r.violations));
        assert_eq!(v.subject, "evse-1", "{v:?}");
    }
}

#[test]
fn a_charger_dropped_before_islanding_is_stopped_by_the_relay_alone() {
    passes_only_with_the_relay("islanding-charger-dropped.toml");
}

#[test]
fn a_charger_that_answers_late_is_stopped_by_the_relay_alone() {
    passes_only_with_the_relay("islanding-charger-late.toml");
}
