//! Every scenario of the library (configs/chaos/) with a few seeds: every invariant holds.
//! The scenarios in configs/chaos/must-fail/ each break an invariant on purpose: the runner
//! must report the violation with the command that replays it.

use std::path::{Path, PathBuf};

use gridvisor_chaos::sweep::quiet_injected_panics;

/// The seeds every scenario runs with.
const SEEDS: [u64; 3] = [1, 2, 3];

fn library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/chaos")
}

/// The library's scenario files (site.toml is the topology they share).
fn scenario_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml") && n != "site.toml")
        .collect();
    names.sort();
    names
}

fn passes(name: &str) {
    quiet_injected_panics();
    let path = library().join(name);
    let scenario = gridvisor_chaos::load(&path).unwrap_or_else(|e| panic!("{e}"));
    for seed in SEEDS {
        let out = gridvisor_chaos::run(&scenario, seed)
            .unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
        let r = &out.report;
        if seed == SEEDS[0] {
            // Every fault family is deterministic, not only the one determinism.rs replays.
            let again = gridvisor_chaos::run(&scenario, seed)
                .unwrap_or_else(|e| panic!("{name} seed {seed}, again: {e}"));
            assert_eq!(
                again.report.history_digest, r.history_digest,
                "{name} seed {seed}: two runs gave different histories"
            );
        }
        assert!(
            r.passed,
            "{name} seed {seed} broke an invariant:\n{}",
            serde_json::to_string_pretty(&r.violations).unwrap()
        );
        assert_eq!(r.invariants.len(), 9);
        assert!(out.history.samples.len() as u64 == r.steps && r.steps > 0);
        // The fault under test happened: at least one fault started.
        assert!(
            r.events.iter().any(|e| e.kind == "fault_start"),
            "{name} seed {seed}: no fault was injected"
        );
        // Something beyond bookkeeping was exercised.
        assert!(
            r.invariants.iter().filter(|i| i.exercised).count() >= 2,
            "{name} seed {seed}: only {:?} exercised",
            r.invariants
                .iter()
                .filter(|i| i.exercised)
                .map(|i| i.name)
                .collect::<Vec<_>>()
        );
    }
}

macro_rules! scenario_tests {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                passes($file);
            }
        )*

        #[test]
        fn every_scenario_of_the_library_has_its_test() {
            let tested: Vec<&str> = vec![$($file),*];
            let mut tested: Vec<String> = tested.into_iter().map(str::to_owned).collect();
            tested.sort();
            assert_eq!(scenario_files(&library()), tested);
            assert!(tested.len() >= 10, "the library has {} scenarios", tested.len());
        }
    };
}

scenario_tests! {
    clock_unsynchronised => "clock-unsynchronised.toml",
    frequency_excursions => "frequency-excursions.toml",
    garbage_values => "garbage-values.toml",
    handler_panic => "handler-panic.toml",
    heat_and_drift => "heat-and-drift.toml",
    islanding => "islanding.toml",
    islanding_50hz => "islanding-50hz.toml",
    islanding_charger_dropped => "islanding-charger-dropped.toml",
    islanding_charger_late => "islanding-charger-late.toml",
    islanding_hung_chargers => "islanding-hung-chargers.toml",
    keepalive_loss => "keepalive-loss.toml",
    kill_actors => "kill-actors.toml",
    kill_segment => "kill-segment.toml",
    meter_loss_inline => "meter-loss-inline.toml",
    meter_stale => "meter-stale.toml",
    modbus_exceptions => "modbus-exceptions.toml",
    modbus_timeouts => "modbus-timeouts.toml",
    ocpp_disconnect => "ocpp-disconnect.toml",
    over_temperature => "over-temperature.toml",
    ptp_drift => "ptp-drift.toml",
    slow_peers => "slow-peers.toml",
    storm => "storm.toml",
    transformer_overload => "transformer-overload.toml",
    vehicles_arriving => "vehicles-arriving.toml",
}

/// Each must-fail scenario breaks the invariant it names, and the report says how to replay.
#[test]
fn scenarios_built_to_break_an_invariant_are_reported_with_their_replay_command() {
    quiet_injected_panics();
    let dir = library().join("must-fail");
    // The first invariant each breaks, and every one it breaks (a 50 ms reaction bound is
    // too tight for both discharge invariants: the trip needs the band's clearing time).
    let expected: [(&str, &str, &[&str]); 2] = [
        (
            "islanding-tight-bound.toml",
            "no_discharge_when_restricted",
            &[
                "no_discharge_when_restricted",
                "no_discharge_into_dead_grid",
            ],
        ),
        (
            "transformer-uncontrolled-load.toml",
            "transformer_limit",
            &["transformer_limit"],
        ),
    ];
    assert_eq!(
        scenario_files(&dir),
        expected
            .iter()
            .map(|(f, _, _)| f.to_string())
            .collect::<Vec<_>>()
    );
    for (file, invariant, all_broken) in expected {
        let path = dir.join(file);
        let scenario = gridvisor_chaos::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let out = gridvisor_chaos::run(&scenario, 4).unwrap();
        let r = &out.report;
        assert!(!r.passed, "{file} held every invariant");
        let broken: Vec<&str> = r
            .invariants
            .iter()
            .filter(|i| !i.held)
            .map(|i| i.name)
            .collect();
        assert_eq!(broken, all_broken, "{file}");
        let v = &r.violations[0];
        assert_eq!(v.violation.invariant, invariant);
        assert_eq!(
            v.replay,
            format!("gridvisor chaos {} --seed 4", path.display())
        );
        assert!(
            !v.lead_up.is_empty(),
            "{file}: no events led to the violation"
        );
        assert!(v.lead_up.iter().all(|e| e.t_ms <= v.violation.t_ms));
        assert!(
            out.history.events.iter().any(|e| e.kind == "violation"),
            "{file}: the violation is not in the history"
        );
        let page = gridvisor_chaos::html(r);
        assert!(
            page.contains("First violation") && page.contains(&v.replay),
            "{file}"
        );
        assert!(page.contains("<svg"), "{file}: no timeline plot");
    }
}
