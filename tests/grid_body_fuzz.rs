//! The grid API's request bodies, fuzzed through the real node over loopback HTTP: the demo
//! node's `POST /api/v1/dispatch`, `/api/v1/keepalive` and `/api/v1/segments/{id}/reset`
//! get arbitrary bytes, mutated and mistyped JSON, and valid requests. Every answer is an HTTP
//! answer (the node never drops a connection or dies: a handler that panicked would), every
//! refusal is a JSON error naming what was wrong, and valid requests come back as receipts of
//! their own id. The body is parsed in src/server.rs (a binary, no library to call), so the
//! fuzz goes through the process, as a grid controller would.
//!
//! Case counts scale with GRIDVISOR_FUZZ_CASES (default 2,000): a tenth of them as requests,
//! at least 100 and at most 2,000, of which a few are valid dispatches (each one a real round
//! to the simulated devices).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use support::{DemoNode, LIMIT};

fn requests() -> u32 {
    let cases: u32 = std::env::var("GRIDVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    (cases / 10).clamp(100, 2_000)
}

/// Valid dispatches sent (each waits for a round of the site).
const VALID_DISPATCHES: u32 = 8;

/// One request with a byte body: (status, body). Any failure to get an HTTP answer panics,
/// naming the request.
fn post(addr: &str, path: &str, body: &[u8]) -> (u16, String) {
    let answer = (|| -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(LIMIT))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {raw:?}")))?;
        let body = raw
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Ok((status, body))
    })();
    answer.unwrap_or_else(|e| {
        panic!(
            "POST {path} with {:?}: no HTTP answer: {e}",
            String::from_utf8_lossy(body)
        )
    })
}

/// A refusal: a JSON object whose `error` names the kind, with a message or field.
fn refusal(path: &str, sent: &[u8], status: u16, body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| {
        panic!(
            "{path} {:?} -> {status} with a body that is not JSON ({e}): {body}",
            String::from_utf8_lossy(sent)
        )
    });
    let kind = v["error"].as_str().unwrap_or("");
    assert!(
        !kind.is_empty(),
        "{path} -> {status} without an error kind: {body}"
    );
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty())
            || v["field"].as_str().is_some_and(|f| !f.is_empty()),
        "{path} -> {status}: the refusal names nothing: {body}"
    );
    v
}

/// A scalar of any JSON type, and the odd values (huge, negative, non-ASCII).
fn json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        Just(json!("NaN")),
        Just(json!(1e308)),
        Just(json!({"segment": "tx-1"})),
        Just(json!(["site"])),
    ]
}

/// A GridRequest-shaped object with fields dropped, retyped, added or renamed.
fn mangled_request() -> impl Strategy<Value = Vec<u8>> {
    let fields = [
        "id",
        "scope",
        "target_kw",
        "duration_s",
        "extra",
        "Scope",
        "",
    ];
    (
        prop::collection::vec((prop::sample::select(fields.to_vec()), json_scalar()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(pairs, base)| {
            let mut m = if base {
                json!({"id": "f", "scope": "site", "target_kw": 1.0, "duration_s": 1.0})
            } else {
                json!({})
            };
            for (k, v) in pairs {
                m[k] = v;
            }
            serde_json::to_vec(&m).unwrap()
        })
}

/// A valid JSON text cut short or with bytes overwritten.
fn mutated_valid() -> impl Strategy<Value = Vec<u8>> {
    let valid =
        br#"{"id":"m-1","scope":{"segment":"tx-2"},"target_kw":-5,"duration_s":30}"#.to_vec();
    (
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
    )
        .prop_map(move |(flips, cut)| {
            let mut b = valid.clone();
            for (i, x) in flips {
                let i = i.index(b.len());
                b[i] = x;
            }
            b.truncate(cut.index(b.len() + 1));
            b
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        mangled_request(),
        mutated_valid(),
        "\\PC{0,80}".prop_map(String::into_bytes),
    ]
}

fn check_dispatch(grid: &str, sent: &[u8]) {
    let (status, answer) = post(grid, "/api/v1/dispatch", sent);
    match status {
        200 => {
            // Only a valid request is dispatched: its receipt names its own id.
            let req: Value = serde_json::from_slice(sent).expect("a 200 for a non-JSON body");
            let receipt: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(receipt["request"], req["id"], "{answer}");
        }
        400 | 404 | 429 | 503 => {
            let v = refusal("/api/v1/dispatch", sent, status, &answer);
            if v["error"] == "bad_body" {
                let m = v["message"].as_str().unwrap();
                assert!(m.starts_with("dispatch request: "), "{m}");
            }
        }
        other => panic!(
            "dispatch {:?} -> {other}: {answer}",
            String::from_utf8_lossy(sent)
        ),
    }
}

fn check_keepalive(grid: &str, sent: &[u8]) {
    let (status, answer) = post(grid, "/api/v1/keepalive", sent);
    let is_json = sent.is_empty() || serde_json::from_slice::<Value>(sent).is_ok();
    match status {
        204 => assert!(is_json, "a keep-alive with a non-JSON body was taken"),
        400 => {
            assert!(!is_json, "a JSON keep-alive refused: {answer}");
            refusal("/api/v1/keepalive", sent, status, &answer);
        }
        503 => {
            refusal("/api/v1/keepalive", sent, status, &answer);
        }
        other => panic!("keep-alive -> {other}: {answer}"),
    }
}

fn check_reset(grid: &str, segment: &str, sent: &[u8]) {
    let path = format!("/api/v1/segments/{segment}/reset");
    let (status, answer) = post(grid, &path, sent);
    match status {
        200 => {
            let v: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(v["id"], segment, "{answer}");
        }
        404 | 409 | 503 => {
            refusal(&path, sent, status, &answer);
        }
        other => panic!("{path} -> {other}: {answer}"),
    }
}

#[test]
fn grid_api_bodies_get_answers_never_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = DemoNode::start(dir.path());
    let (grid, _admin) = node.addresses();
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let segment = prop_oneof![
        Just("tx-1".to_string()),
        Just("tx-9".to_string()),
        "[a-z0-9-]{1,12}",
    ];
    let strategy = (body(), segment);
    for n in 0..requests() {
        let (sent, seg) = strategy.new_tree(&mut runner).expect("case").current();
        match n % 3 {
            0 => check_dispatch(&grid, &sent),
            1 => check_keepalive(&grid, &sent),
            _ => check_reset(&grid, &seg, &sent),
        }
    }

    // Valid requests round-trip: each is answered with a receipt of its own id.
    for n in 0..VALID_DISPATCHES {
        let scope = match n % 3 {
            0 => json!("site"),
            1 => json!({"segment": "tx-2"}),
            _ => json!({"substation": "sub-1"}),
        };
        let req = json!({
            "id": format!("fuzz-valid-{n}"),
            "scope": scope,
            "target_kw": -2.5 * f64::from(n),
            "duration_s": 60,
        });
        let sent = serde_json::to_vec(&req).unwrap();
        let (status, answer) = post(&grid, "/api/v1/dispatch", &sent);
        assert_eq!(status, 200, "{req} -> {answer}");
        let receipt: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(receipt["request"], req["id"], "{answer}");
        assert_eq!(receipt["target_kw"], req["target_kw"], "{answer}");
    }
    assert!(
        node.child.try_wait().expect("the node's status").is_none(),
        "the node exited during the fuzz"
    );
}
