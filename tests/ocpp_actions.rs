//! The grid API's OCPP actions (issue 21) through a real node process: the demo node, whose
//! chargers are the simulator's OCPP 2.1 charge points on loopback. A controller stops a
//! vehicle's transaction (`POST /api/v1/chargers/{id}/stop`) and its session ends; it starts
//! one again with the vehicle's token (`POST /api/v1/chargers/{id}/start`) and the session
//! comes back; what the station refuses is answered with its reason, what cannot be sent is an
//! error naming why, and every command is in the audit log.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{http, DemoNode, LIMIT};

/// Poll `GET path` until its status is `want` (bounded by [`LIMIT`]).
fn until_status(grid: &str, path: &str, want: u16) {
    let start = Instant::now();
    loop {
        let (status, body) = http(grid, "GET", path, None);
        if status == want {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "GET {path}: still {status} after {LIMIT:?}: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn post(grid: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, raw) = http(grid, "POST", path, Some(body));
    let v = serde_json::from_str(&raw).unwrap_or_else(|_| panic!("{path}: not JSON: {raw}"));
    (status, v)
}

#[test]
fn a_controller_stops_and_starts_a_transaction_through_the_grid_api() {
    let data = tempfile::tempdir().unwrap();
    let mut node = DemoNode::start(data.path());
    let (grid, _admin) = node.addresses();
    until_status(&grid, "/api/v1/sessions/ev-1", 200);

    let (status, stop) = post(&grid, "/api/v1/chargers/evse-1/stop", "");
    assert_eq!(status, 200, "{stop}");
    assert_eq!(stop["status"], "Accepted", "{stop}");
    assert!(stop["transaction_id"].is_string(), "{stop}");
    until_status(&grid, "/api/v1/sessions/ev-1", 404);

    let start = r#"{"id_token": {"type": "ISO14443", "value": "ev-1"}, "evse_id": 1}"#;
    let (status, answer) = post(&grid, "/api/v1/chargers/evse-1/start", start);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "Accepted", "{answer}");
    assert!(answer["remote_start_id"].is_i64(), "{answer}");
    until_status(&grid, "/api/v1/sessions/ev-1", 200);

    // The station refuses a second start, and says why.
    let (status, again) = post(&grid, "/api/v1/chargers/evse-1/start", start);
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["status"].as_str(), again["reason"].as_str()),
        (Some("Rejected"), Some("TxInProgress")),
        "{again}"
    );

    // What cannot be sent: each an error naming why.
    let (status, e) = post(&grid, "/api/v1/chargers/nope/start", start);
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );
    let (status, e) = post(
        &grid,
        "/api/v1/chargers/evse-1/start",
        r#"{"id_token": {"type": "Central"}}"#,
    );
    assert_eq!(status, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("id_token"), "{e}");
    let long = format!(
        r#"{{"id_token": {{"type": "Central", "value": "{}"}}}}"#,
        "x".repeat(300)
    );
    let (status, e) = post(&grid, "/api/v1/chargers/evse-1/start", &long);
    assert_eq!(status, 400, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("/idToken/idToken"),
        "{e}"
    );
    let (status, e) = post(
        &grid,
        "/api/v1/chargers/evse-1/stop",
        r#"{"transaction": "x"}"#,
    );
    assert_eq!(status, 400, "{e}");

    // Every command is audited with its outcome.
    let (status, audit) = http(&grid, "GET", "/api/v1/audit", None);
    assert_eq!(status, 200, "{audit}");
    let records: Vec<Value> = serde_json::from_str(&audit).unwrap();
    let of = |request: &str| {
        records
            .iter()
            .filter(|r| r["request"] == request)
            .map(|r| r["status"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(of("POST /api/v1/chargers/evse-1/stop"), [200, 400]);
    assert_eq!(
        of("POST /api/v1/chargers/evse-1/start"),
        [200, 200, 400, 400]
    );
}
