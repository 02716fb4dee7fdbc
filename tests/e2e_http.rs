//! End to end: the demo node as a real process, driven over real HTTP (grid API and admin),
//! stopped with SIGINT, and its checkpoints read back: no acknowledged setpoint is lost.

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{addr_of, http, DemoNode, LIMIT};

use gridvisor_actors::checkpoint::{CheckpointStore, StoreLimits};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn sigint(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[test]
fn the_demo_node_over_real_http() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = DemoNode::start(dir.path());
    let grid = addr_of(&p.line("grid API"));
    let admin = addr_of(&p.line("metrics"));
    p.line("Ctrl-C");

    // The grid controller is there: keep-alive first.
    let (status, _) = http(&grid, "POST", "/api/v1/keepalive", None);
    assert_eq!(status, 204);

    let (status, body) = http(&grid, "GET", "/api/v1/segments", None);
    assert_eq!(status, 200, "{body}");
    let segs = json(&body);
    let ids: Vec<&str> = segs
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tx-1", "tx-2", "tx-3"]);

    // A discharge request over the whole site: every device acknowledges.
    let req = r#"{"id":"e2e-1","scope":"site","target_kw":-30,"duration_s":120}"#;
    let (status, body) = http(&grid, "POST", "/api/v1/dispatch", Some(req));
    assert_eq!(status, 200, "{body}");
    let receipt = json(&body);
    assert!(receipt["acknowledged"].as_u64().unwrap() > 0, "{receipt}");
    assert_eq!(receipt["not_acknowledged"], 0, "{receipt}");
    assert_eq!(receipt["repeat"], false);
    let dispatch = receipt["dispatch"].as_u64().unwrap();

    // The same request id again: the first receipt, marked as a repeat.
    let (status, body) = http(&grid, "POST", "/api/v1/dispatch", Some(req));
    assert_eq!(status, 200, "{body}");
    let again = json(&body);
    assert_eq!(again["repeat"], true);
    assert_eq!(again["dispatch"].as_u64(), Some(dispatch));

    // Bad bodies get clear 4xx answers naming what was wrong.
    for (body, status, needle) in [
        ("{", 400, "EOF"),
        (
            r#"{"id":"x","scope":"site","target_kw":1}"#,
            400,
            "duration_s",
        ),
        (
            r#"{"id":"x","scope":"site","target_kw":"lots","duration_s":1}"#,
            400,
            "target_kw",
        ),
        (
            r#"{"id":"x","scope":"site","target_kw":1e9,"duration_s":1}"#,
            400,
            "target_kw",
        ),
        (
            r#"{"id":"x","scope":"site","target_kw":1,"duration_s":-1}"#,
            400,
            "duration_s",
        ),
        (
            r#"{"id":"x","scope":{"segment":"tx-99"},"target_kw":1,"duration_s":1}"#,
            404,
            "tx-99",
        ),
        (
            r#"{"id":"x","scope":"moon","target_kw":1,"duration_s":1}"#,
            400,
            "moon",
        ),
        (
            r#"{"id":"x","scope":"site","target_kw":1,"duration_s":1,"extra":1}"#,
            400,
            "extra",
        ),
    ] {
        let (got, answer) = http(&grid, "POST", "/api/v1/dispatch", Some(body));
        assert_eq!(got, status, "{body} -> {answer}");
        assert!(
            answer.contains(needle),
            "{body} -> {answer} (expected {needle:?})"
        );
        json(&answer);
    }
    let (status, _) = http(&grid, "GET", "/api/v1/nothing", None);
    assert_eq!(status, 404);
    let (status, _) = http(&grid, "GET", "/api/v1/segments/tx-99", None);
    assert_eq!(status, 404);

    // A vehicle's session.
    let topology = gridvisor_actors::config::demo();
    let vehicle = &topology.vehicles[0];
    let (status, body) = http(
        &grid,
        "GET",
        &format!("/api/v1/sessions/{}", vehicle.id),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let session = json(&body);
    assert_eq!(session["charger"], vehicle.charger.as_str());
    let soc = session["session"]["soc_pct"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&soc), "{session}");

    // Admin: metrics with per-actor and domain series, the tree as JSON.
    let (status, metrics) = http(&admin, "GET", "/metrics", None);
    assert_eq!(status, 200);
    for family in [
        "gridvisor_actor_restarts_total",
        "gridvisor_actor_starts_total",
        "gridvisor_actor_messages_total",
        "gridvisor_segment_power_kw",
        "gridvisor_segment_setpoint_kw",
        "gridvisor_segment_limit_kw",
        "gridvisor_segment_safe_state",
        "gridvisor_session_soc_percent",
        "gridvisor_dispatch_request_ack_seconds_bucket",
    ] {
        assert!(metrics.contains(family), "{family} missing from /metrics");
    }
    promtool_check(&metrics);
    let (status, body) = http(&admin, "GET", "/api/tree", None);
    assert_eq!(status, 200);
    let tree = json(&body);
    assert_eq!(tree["path"], "node");
    assert!(body.contains("node/segments/tx-1/safety"), "{body}");
    let session_path = format!(
        "node/segments/{}/chargers/{}/{}",
        topology.charger_segment(&vehicle.charger).unwrap(),
        vehicle.charger,
        vehicle.id
    );
    assert!(
        body.contains(&session_path),
        "{session_path} not in the tree"
    );

    // Ctrl-C: an ordered stop.
    sigint(&p.child);
    p.line("stopped");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the node did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");

    // Every acknowledged setpoint is in the checkpoints: each charger's entry in its
    // segment's applied record holds a key of this dispatch (or a later revision of it).
    let store = CheckpointStore::open(&dir.path().join("checkpoints.redb"), StoreLimits::default())
        .unwrap();
    let records = store.keys_with_prefix("applied/").unwrap();
    assert!(!records.is_empty());
    let mut links = Vec::new();
    let mut with_dispatch = 0;
    for k in &records {
        let record: Value = store.get(k).unwrap().unwrap();
        for (charger, entry) in record["chargers"].as_object().unwrap() {
            links.push(charger.clone());
            // An entry is [applied, boot].
            if entry[0]["key"]["dispatch"].as_u64() == Some(dispatch) {
                with_dispatch += 1;
            }
        }
    }
    assert!(!links.is_empty());
    assert!(
        with_dispatch as u64
            >= receipt["acknowledged"]
                .as_u64()
                .unwrap()
                .min(links.len() as u64),
        "{with_dispatch} of {} links hold dispatch {dispatch}",
        links.len()
    );
}

/// `promtool check metrics` when promtool is installed (else a recorded skip; CI installs it
/// and sets GRIDVISOR_REQUIRE_PROMTOOL=1 so that a missing promtool fails there).
fn promtool_check(metrics: &str) {
    let Some(promtool) =
        gridvisor_testkit::tool(&gridvisor_testkit::needs::PROMTOOL, &["promtool"])
    else {
        return;
    };
    let spawned = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = spawned.expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
