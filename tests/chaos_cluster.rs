//! `gridvisor chaos` in its multi-process mode: a scenario with a `[cluster]` table starts
//! three real `gridvisor run --cluster` processes, their links through the in-tree proxy,
//! and checks the cluster's invariants. A kill-and-restart scenario passes with its reports
//! written; a scenario whose takeover bound is shorter than the lease fails, naming the
//! `takeover` invariant and the command that replays it.

use std::path::Path;
use std::process::{Command, Output};

fn chaos(args: &[&str]) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("chaos")
        .args(args)
        .output()
        .expect("gridvisor runs");
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn a_killed_node_is_taken_over_and_readmitted_and_every_invariant_holds() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().to_str().unwrap();
    let (code, out, err) = chaos(&[
        "configs/chaos/cluster/kill-node.toml",
        "--seed",
        "1",
        "--report",
        report,
    ]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.starts_with("PASS cluster-kill-node seed 1: 6/6 invariants held"),
        "{out}"
    );
    let json = dir.path().join("cluster-kill-node-seed-1.json");
    let page = dir.path().join("cluster-kill-node-seed-1.html");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["passed"], true);
    let names: Vec<&str> = r["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "one_driver_per_segment",
            "charge_only_when_cut_off",
            "takeover",
            "settles",
            "acknowledged_not_lost",
            "acknowledged_monotone"
        ]
    );
    // The kill was taken over and the restart settled: each was put to the test.
    for i in r["invariants"].as_array().unwrap() {
        if i["name"] == "takeover"
            || i["name"] == "settles"
            || i["name"] == "one_driver_per_segment"
        {
            assert!(i["checks"].as_u64().unwrap() >= 1, "{i}");
        }
    }
    assert_eq!(r["faults"].as_array().unwrap().len(), 2);
    assert!(
        r["dispatch"]["ok"].as_u64().unwrap() > 0,
        "{}",
        r["dispatch"]
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<svg") && html.contains("kill_node"));
    for n in ["node-a", "node-b", "node-c"] {
        assert!(dir
            .path()
            .join(format!("cluster-kill-node-seed-1-{n}.log"))
            .is_file());
    }
}

#[test]
fn a_takeover_bound_shorter_than_the_lease_fails_with_its_replay_command() {
    let file = "configs/chaos/cluster/must-fail/tight-takeover.toml";
    let (code, out, err) = chaos(&[file, "--seed", "3"]);
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.starts_with("FAIL cluster-tight-takeover seed 3"),
        "{out}"
    );
    assert!(out.contains("VIOLATED takeover at"), "{out}");
    assert!(
        out.contains(&format!("replay: gridvisor chaos {file} --seed 3")),
        "{out}"
    );
}

#[test]
fn a_bad_cluster_scenario_names_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/cluster/site.toml");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        format!(
            "[cluster]\nnodes = 3\nsite = {:?}\nduration_s = 5\n[[faults]]\nat_s = 1\nkind = \"kill_node\"\nnode = \"node-q\"\n",
            site.display().to_string()
        ),
    )
    .unwrap();
    let (code, _, err) = chaos(&[file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("faults[0].node"),
        "{err}"
    );
}
