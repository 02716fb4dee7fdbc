//! `gridvisor chaos` driven as a user drives it: real processes, real output, exit status.

use std::path::{Path, PathBuf};
use std::process::Command;

fn chaos(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .arg("chaos")
        .args(args)
        .env_remove("RUST_LOG")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the gridvisor binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("gridvisor-chaos-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_passing_sweep_exits_0_and_writes_a_report_per_run() {
    let dir = temp_dir("pass");
    let report = dir.to_string_lossy().into_owned();
    let (code, stdout, stderr) = chaos(&[
        "configs/chaos/keepalive-loss.toml",
        "--seeds",
        "1..3",
        "--report",
        &report,
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("PASS keepalive-loss seed 1:"), "{stdout}");
    assert!(stdout.contains("PASS keepalive-loss seed 2:"), "{stdout}");
    assert!(!stdout.contains("seed 3:"), "A..B excludes B: {stdout}");
    assert!(stdout.contains("2 of 2 runs passed"), "{stdout}");
    assert!(stdout.contains("per simulated hour"), "{stdout}");
    // Without RUST_LOG the node's own log lines stay out of a sweep's output.
    assert!(stderr.lines().count() < 5, "{stderr}");
    for seed in [1, 2] {
        let json = dir.join(format!("keepalive-loss-seed-{seed}.json"));
        let page = dir.join(format!("keepalive-loss-seed-{seed}.html"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["passed"], true);
        assert_eq!(v["seed"], seed);
        assert_eq!(v["invariants"].as_array().unwrap().len(), 9);
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(
            html.contains("<svg") && html.contains("PASSED"),
            "{}",
            page.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_broken_invariant_exits_1_with_the_violation_and_the_replay_command() {
    let file = "configs/chaos/must-fail/islanding-tight-bound.toml";
    let (code, stdout, stderr) = chaos(&[file, "--seed", "5"]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FAIL islanding-tight-bound seed 5:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("VIOLATED no_discharge_when_restricted at "),
        "{stdout}"
    );
    let replay = format!("replay: gridvisor chaos {file} --seed 5");
    assert!(stdout.contains(&replay), "{stdout}");
    // The replay reproduces the same run (same history digest).
    let digest = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("FAIL"))
            .and_then(|l| l.rsplit("history ").next())
            .map(str::to_owned)
    };
    let (code2, again, _) = chaos(&[file, "--seed", "5"]);
    assert_eq!(code2, Some(1));
    assert_eq!(digest(&stdout), digest(&again));
    assert!(digest(&stdout).is_some());
}

#[test]
fn a_bad_scenario_exits_2_naming_the_file_line_and_field() {
    let dir = temp_dir("bad");
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/chaos/site.toml");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        format!(
            "[chaos]\nduration_s = 30\ntopology = {:?}\n\n[[faults]]\nat_s = 5\nkind = \"timeout\"\ndevice = \"evse-99\"\n",
            site.to_string_lossy()
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = chaos(&[file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("{}:8:", file.display())),
        "no file:line: {stderr}"
    );
    assert!(
        stderr.contains("faults[0].device: no device named \"evse-99\""),
        "{stderr}"
    );
    let (code, _, stderr) = chaos(&["configs/chaos/islanding.toml", "--seeds", "5..2"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--seeds"), "{stderr}");
    let (code, _, stderr) = chaos(&["configs/chaos/nope.toml"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("configs/chaos/nope.toml"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
