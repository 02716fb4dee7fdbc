//! The binary driven as a user drives it: real processes, real output.

use std::process::Command;

fn gridvisor(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .args(args)
        .output()
        .expect("the gridvisor binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every figure of shared/bench/otp_baseline.escript, in its unit.
const FIGURES: &[(&str, &str)] = &[
    ("start_children_total", "ms"),
    ("start_child_each", "us"),
    ("memory_per_child", "bytes"),
    ("fanout_setpoint_all_acked", "ms"),
    ("restart_one_median", "us"),
    ("restart_one_p99", "us"),
    ("restart_10pct_all_up", "ms"),
    ("call_roundtrip", "us"),
    ("messages_per_second", "msg/s"),
    ("shutdown_tree", "ms"),
];

#[test]
fn bench_supervision_prints_every_figure_of_the_erlang_baseline() {
    let (ok, stdout, stderr) = gridvisor(&["bench", "supervision", "--children", "2000"]);
    assert!(ok, "bench failed: {stderr}");
    for (name, unit) in FIGURES {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("figure {name} missing from:\n{stdout}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "`name value unit`: {line}");
        let value: f64 = fields[1]
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(value.is_finite() && value > 0.0, "{line}");
        assert_eq!(fields[2], *unit, "{line}");
    }
    assert!(stdout.contains("children 2000.000 count"), "{stdout}");
}

#[test]
fn bench_refuses_a_meaningless_size() {
    let (ok, _, stderr) = gridvisor(&["bench", "supervision", "--children", "3"]);
    assert!(!ok);
    assert!(
        stderr.contains("--children must be at least 10"),
        "{stderr}"
    );
}

#[test]
fn demo_crashes_restarts_and_stops_in_order() {
    let (ok, stdout, stderr) = gridvisor(&["run"]);
    assert!(ok, "demo failed: {stderr}\n{stdout}");
    // rest_for_one: the dispatcher (after the meter) was stopped and started again.
    assert!(
        stdout.contains("meter [Running, 1 restarts, last exit: failed: injected fault]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("session-2 [Running, 1 restarts"),
        "{stdout}"
    );
    // dynamic children restart with their arguments.
    assert_eq!(
        stdout
            .matches("start  demo/sessions/session-2 (vehicle EV-1002)")
            .count(),
        2,
        "{stdout}"
    );
    // shutdown in reverse start order.
    let shutdown = &stdout[stdout.find("shutting down").expect("shutdown section")..];
    let pos = |p: &str| {
        shutdown
            .find(&format!("stop   {p}\n"))
            .unwrap_or_else(|| panic!("{p} not stopped:\n{shutdown}"))
    };
    assert!(pos("demo/segment-1/dispatcher") < pos("demo/segment-1/meter"));
    assert!(pos("demo/segment-1/meter") < pos("demo/segment-1/safety"));
    assert!(pos("demo/segment-1/safety") < pos("demo/telemetry"));
    assert!(stdout.trim_end().ends_with("done"), "{stdout}");
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["bench", "--help"],
        &["bench", "supervision", "--help"],
    ] {
        let (ok, stdout, stderr) = gridvisor(args);
        assert!(ok, "{args:?}: {stderr}");
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
}
