//! The vehicles-arriving workload (configs/chaos/vehicles-arriving.toml) through the real
//! runner: drivers known only by token plug in at different free bays over the run under
//! their contracts, leave at their departures, and the SoC invariant holds each to its
//! contract's floor; a bad `[workload.arrivals]` is named by file, line and field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use gridvisor_chaos::sweep::quiet_injected_panics;

fn library() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/chaos")
}

#[test]
fn drivers_by_token_move_between_bays_under_their_contracts() {
    quiet_injected_panics();
    let s = gridvisor_chaos::load(&library().join("vehicles-arriving.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let a = s.workload.arrivals.clone().expect("[workload.arrivals]");
    assert_eq!(a.drivers.len(), 8);
    assert_eq!(
        a.chargers.len(),
        6,
        "no [[vehicles]]: every charger is free"
    );
    let out = gridvisor_chaos::run(&s, 2).unwrap();
    assert!(out.report.passed, "{:?}", out.report.violations);
    let events = &out.history.events;
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "token_refused")
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    // token → the bays it plugged in at.
    let mut bays: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == "token_plugged") {
        let bay = e.detail.split_whitespace().nth(1).unwrap();
        bays.entry(e.subject.as_str()).or_default().insert(bay);
    }
    assert!(
        bays.len() >= 6,
        "only {} drivers came: {bays:?}",
        bays.len()
    );
    assert!(
        bays.values().any(|b| b.len() >= 2),
        "no driver parked at two bays: {bays:?}"
    );
    let plugged = events.iter().filter(|e| e.kind == "token_plugged").count();
    let unplugged = events
        .iter()
        .filter(|e| e.kind == "token_unplugged")
        .count();
    assert!(unplugged >= plugged.saturating_sub(6) && unplugged > 0);
    // The invariant's floor is the contract's: FLEET-01 (V2G, min 40 %) never below
    // min(40, its arrival SoC); VISITOR-01 (charge only) never below its arrival SoC.
    let floors: BTreeMap<&str, f64> = out
        .history
        .samples
        .iter()
        .flat_map(|s| s.vehicles.iter().map(|v| (v.id.as_str(), v.floor_pct)))
        .collect();
    for (token, floor) in &floors {
        let (_, contract) = a.drivers.iter().find(|(t, _)| t.value == *token).unwrap();
        if contract.v2g {
            assert!(*floor <= contract.min_soc_pct + 1e-9, "{token}: {floor}");
        } else {
            assert!(*floor >= 20.0, "{token}: the arrival SoC, {floor}");
        }
    }
    let min_soc = out.report.invariants.iter().find(|i| i.name == "min_soc");
    assert!(
        min_soc.is_some_and(|i| i.exercised),
        "{:?}",
        out.report.invariants
    );
}

#[test]
fn a_bad_arrivals_table_is_named_by_file_line_and_field() {
    let text = std::fs::read_to_string(library().join("vehicles-arriving.toml")).unwrap();
    let bad = text
        .replace(
            "tokens = \"drivers/tokens.toml\"",
            "tokens = \"drivers/none.toml\"",
        )
        .replace("max_away_s = 90", "max_away_s = 10");
    let e = gridvisor_chaos::scenario::parse("v.toml", &bad, &library())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("workload.arrivals.tokens") && e.contains("none.toml"),
        "{e}"
    );
    assert!(
        e.contains("v.toml:") && e.contains("workload.arrivals.max_away_s"),
        "{e}"
    );
    let bad = text.replace("soc_max_pct = 90", "soc_max_pct = 90\nseats = 4");
    let e = gridvisor_chaos::scenario::parse("v.toml", &bad, &library())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("workload.arrivals.seats") && e.contains("unknown key"),
        "{e}"
    );
}
