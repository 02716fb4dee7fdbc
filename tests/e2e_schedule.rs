//! Scheduled grid requests, cancel, and durable requests against the demo node as a real
//! process over real HTTP: a future request is answered `scheduled` and starts in the site's
//! cycle; DELETE cancels idempotently; after SIGKILL and a restart on the same data
//! directory, a repeated request id gets its first receipt and a future request still starts.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{http, DemoNode, LIMIT};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How often a test asks whether a scheduled request started (each ask is bounded by
/// [`LIMIT`] in all).
const POLL: Duration = Duration::from_millis(100);

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// RFC 3339 `s` seconds from now.
fn in_s(s: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(s))
        .replace_nanosecond(0)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

fn post(grid: &str, body: &str) -> Value {
    let (status, answer) = http(grid, "POST", "/api/v1/dispatch", Some(body));
    assert_eq!(status, 200, "{body} -> {answer}");
    json(&answer)
}

fn delete(grid: &str, id: &str) -> (u16, Value) {
    let (status, answer) = http(grid, "DELETE", &format!("/api/v1/dispatch/{id}"), None);
    (status, json(&answer))
}

/// Repeat `body` until its receipt is no longer scheduled (the request started): that receipt.
fn await_start(grid: &str, body: &str) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = post(grid, body);
        if r["scheduled"] == false {
            return r;
        }
        assert!(Instant::now() < deadline, "never started: {r}");
        std::thread::sleep(POLL);
    }
}

#[test]
fn scheduled_requests_start_in_the_cycle_and_cancel_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = DemoNode::start(dir.path());
    let (grid, _) = p.addresses();
    assert_eq!(http(&grid, "POST", "/api/v1/keepalive", None).0, 204);

    // An active request on tx-1, then one scheduled 2 s ahead on tx-1 with a ramp.
    let now = post(
        &grid,
        r#"{"id":"now-1","scope":{"segment":"tx-1"},"target_kw":5,"duration_s":600}"#,
    );
    assert_eq!(now["scheduled"], false, "{now}");
    let start = in_s(2);
    let body = format!(
        r#"{{"id":"sched-1","scope":{{"segment":"tx-1"}},"target_kw":-10,"start_at":"{start}","duration_s":600,"ramp_kw_per_s":5}}"#
    );
    let r = post(&grid, &body);
    assert_eq!(r["scheduled"], true, "{r}");
    assert_eq!(r["dispatch"], 0, "{r}");
    assert_eq!(r["start_at"], start.as_str(), "{r}");
    assert_eq!(r["repeat"], false, "{r}");
    // Scheduled, it displaces nothing yet; far in the future, neither does this one.
    let far = format!(
        r#"{{"id":"far-1","scope":"site","target_kw":3,"start_at":"{}","end_at":"{}"}}"#,
        in_s(3_600),
        in_s(7_200)
    );
    assert_eq!(post(&grid, &far)["scheduled"], true);
    let again = post(&grid, &body);
    assert_eq!(
        (&again["repeat"], &again["scheduled"]),
        (&Value::Bool(true), &Value::Bool(true))
    );

    // It starts in the cycle: a dispatch id newer than now-1's, acknowledged by devices.
    let started = await_start(&grid, &body);
    assert!(
        started["dispatch"].as_u64().unwrap() > now["dispatch"].as_u64().unwrap(),
        "{started}"
    );
    assert!(started["acknowledged"].as_u64().unwrap() > 0, "{started}");
    // Starting, it replaced now-1 (same segment: the newest start wins).
    let (status, c) = delete(&grid, "now-1");
    assert_eq!((status, &c["state"]), (200, &Value::from("ended")), "{c}");
    assert_eq!(c["cancelled"], false);

    // Cancel: active, then again (idempotent), then an unknown id.
    let (status, c) = delete(&grid, "sched-1");
    assert_eq!(
        (status, &c["state"], &c["cancelled"]),
        (200, &Value::from("active"), &Value::Bool(true)),
        "{c}"
    );
    let (status, c) = delete(&grid, "sched-1");
    assert_eq!(
        (status, &c["state"], &c["cancelled"]),
        (200, &Value::from("already_cancelled"), &Value::Bool(false)),
        "{c}"
    );
    let (status, c) = delete(&grid, "never-sent");
    assert_eq!(
        (status, &c["error"]),
        (404, &Value::from("not_found")),
        "{c}"
    );
    // A scheduled one: cancelled before it starts; its receipt says so.
    let (status, c) = delete(&grid, "far-1");
    assert_eq!(
        (status, &c["state"]),
        (200, &Value::from("scheduled")),
        "{c}"
    );
    let r = post(&grid, &far);
    assert_eq!(
        (&r["repeat"], &r["cancelled"]),
        (&Value::Bool(true), &Value::Bool(true)),
        "{r}"
    );

    // Bad windows name their field.
    for (body, needle) in [
        (
            r#"{"id":"x","scope":"site","target_kw":1,"start_at":"soon","duration_s":1}"#
                .to_string(),
            "start_at",
        ),
        (
            format!(
                r#"{{"id":"x","scope":"site","target_kw":1,"end_at":"{}","duration_s":1}}"#,
                in_s(60)
            ),
            "duration_s",
        ),
        (
            format!(
                r#"{{"id":"x","scope":"site","target_kw":1,"start_at":"{}","duration_s":1}}"#,
                in_s(8 * 86_400)
            ),
            "MAX_SCHEDULE_AHEAD_S",
        ),
        (
            format!(
                r#"{{"id":"x","scope":"site","target_kw":1,"start_at":"{}","end_at":"{}"}}"#,
                in_s(60),
                in_s(30)
            ),
            "end_at",
        ),
        (
            r#"{"id":"x","scope":"site","target_kw":1,"duration_s":1,"ramp_kw_per_s":-1}"#
                .to_string(),
            "ramp_kw_per_s",
        ),
    ] {
        let (status, answer) = http(&grid, "POST", "/api/v1/dispatch", Some(&body));
        assert_eq!(status, 400, "{body} -> {answer}");
        assert!(
            answer.contains(needle),
            "{body} -> {answer} (expected {needle:?})"
        );
    }
}

#[test]
fn requests_and_their_ids_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = DemoNode::start(dir.path());
    let (grid, _) = p.addresses();
    assert_eq!(http(&grid, "POST", "/api/v1/keepalive", None).0, 204);
    let active = r#"{"id":"kill-1","scope":{"segment":"tx-1"},"target_kw":-20,"duration_s":600}"#;
    // Its first receipt (devices that just connected may not all have answered yet: the
    // receipt is what the repeat must give back, whatever it says).
    let first = post(&grid, active);
    assert!(first["dispatch"].as_u64().unwrap() > 0, "{first}");
    // Far enough ahead to be still scheduled after the restart (a node starts in a few
    // seconds), near enough for the test.
    let future = format!(
        r#"{{"id":"kill-2","scope":{{"segment":"tx-2"}},"target_kw":4,"start_at":"{}","duration_s":60}}"#,
        in_s(20)
    );
    let scheduled = post(&grid, &future);
    assert_eq!(scheduled["scheduled"], true, "{scheduled}");

    // SIGKILL: no ordered stop.
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    drop(p);

    let mut p = DemoNode::start(dir.path());
    let (grid, _) = p.addresses();
    assert_eq!(http(&grid, "POST", "/api/v1/keepalive", None).0, 204);
    // The repeated id gets the first receipt, not a new dispatch.
    let again = post(&grid, active);
    assert_eq!(again["repeat"], true, "{again}");
    assert_eq!(again["dispatch"], first["dispatch"], "{again}");
    assert_eq!(again["start_at"], first["start_at"], "{again}");
    let again = post(&grid, &future);
    assert_eq!(again["repeat"], true, "{again}");
    assert_eq!(again["start_at"], scheduled["start_at"], "{again}");
    // The future request still starts, with a dispatch id of this run (newer).
    let started = await_start(&grid, &future);
    assert!(
        started["dispatch"].as_u64().unwrap() > first["dispatch"].as_u64().unwrap(),
        "{started}"
    );
    assert!(started["acknowledged"].as_u64().unwrap() > 0, "{started}");
    // The active one resumed (on tx-1, which kill-2 does not touch) and runs.
    let (status, c) = delete(&grid, "kill-1");
    assert_eq!((status, &c["state"]), (200, &Value::from("active")), "{c}");
}

#[test]
fn the_flexibility_forecast_of_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = DemoNode::start(dir.path());
    let (grid, _) = p.addresses();
    assert_eq!(http(&grid, "POST", "/api/v1/keepalive", None).0, 204);
    let get = |q: &str| http(&grid, "GET", &format!("/api/v1/flexibility?{q}"), None);

    // The demo's vehicles plug in on their schedule: wait for a site forecast with vehicles.
    let deadline = Instant::now() + LIMIT;
    let site = loop {
        let (status, body) = get("scope=site&horizon_s=3600&step_s=900");
        assert_eq!(status, 200, "{body}");
        let f = json(&body);
        if f["steps"][0]["vehicles"].as_u64().unwrap() > 0 {
            break f;
        }
        assert!(Instant::now() < deadline, "no vehicle ever: {f}");
        std::thread::sleep(POLL);
    };
    let steps = site["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "{site}");
    assert_eq!(
        site["segments"],
        serde_json::json!(["tx-1", "tx-2", "tx-3"])
    );
    assert_eq!(
        (steps[3]["start_s"].as_f64(), steps[3]["end_s"].as_f64()),
        (Some(2700.0), Some(3600.0))
    );
    for s in steps {
        for k in ["charge_kw", "discharge_kw", "charge_kwh", "discharge_kwh"] {
            let v = s[k].as_f64().unwrap();
            assert!(v.is_finite() && v >= 0.0, "{k} in {s}");
        }
    }
    // The energy from now to a step's end never shrinks as the steps go on.
    for w in steps.windows(2) {
        assert!(
            w[1]["charge_kwh"].as_f64() >= w[0]["charge_kwh"].as_f64(),
            "{site}"
        );
    }
    assert!(steps[0]["charge_kw"].as_f64().unwrap() > 0.0, "{site}");

    // The segments sum to the site. Vehicles plug in on the demo's schedule: compare a set
    // of calls that saw the same vehicles (the site's before and after the segments').
    let first = |q: &str| {
        let (status, body) = get(q);
        assert_eq!(status, 200, "{body}");
        json(&body)["steps"][0].clone()
    };
    let deadline = Instant::now() + LIMIT;
    loop {
        let before = first("scope=site&horizon_s=3600&step_s=900");
        let segs: Vec<Value> = ["tx-1", "tx-2", "tx-3"]
            .iter()
            .map(|s| first(&format!("scope=segment&id={s}&horizon_s=3600&step_s=900")))
            .collect();
        let after = first("scope=site&horizon_s=3600&step_s=900");
        let count: u64 = segs.iter().map(|s| s["vehicles"].as_u64().unwrap()).sum();
        if before["vehicles"] == after["vehicles"] && after["vehicles"] == count {
            let sum: f64 = segs.iter().map(|s| s["charge_kw"].as_f64().unwrap()).sum();
            let total = after["charge_kw"].as_f64().unwrap();
            // Within the SoC the vehicles gained between the calls.
            assert!(
                (sum - total).abs() <= 0.05 * total + 0.5,
                "segments {sum} vs site {total}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the vehicles never settled");
        std::thread::sleep(POLL);
    }
    let (status, body) = get("scope=substation&id=nowhere&horizon_s=60&step_s=60");
    assert_eq!(status, 404, "{body}");

    // Bad queries are 400s naming the parameter.
    for (q, needle) in [
        ("horizon_s=60&step_s=60", "scope"),
        ("scope=moon&horizon_s=60&step_s=60", "scope"),
        ("scope=segment&horizon_s=60&step_s=60", "id"),
        ("scope=site&step_s=60", "horizon_s"),
        ("scope=site&horizon_s=ten&step_s=60", "horizon_s"),
        ("scope=site&horizon_s=60&step_s=0.1", "step_s"),
        ("scope=site&horizon_s=604800&step_s=1", "MAX_STEPS"),
        ("scope=site&horizon_s=60&step_s=60&colour=red", "colour"),
    ] {
        let (status, body) = get(q);
        assert_eq!(status, 400, "{q} -> {body}");
        assert!(body.contains(needle), "{q} -> {body} (expected {needle:?})");
    }
}
