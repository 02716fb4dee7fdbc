//! End to end: the demo node as a real process, driven over real HTTP (grid API and admin),
//! stopped with SIGINT, and its checkpoints read back: no acknowledged setpoint is lost.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gridvisor_actors::checkpoint::{CheckpointStore, StoreLimits};
use serde_json::Value;

/// Every wait of this test is bounded by this.
const LIMIT: Duration = Duration::from_secs(60);

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(data: &std::path::Path) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gridvisor"))
            .args([
                "run",
                "--ocpp",
                "127.0.0.1:0",
                "--grid",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gridvisor starts");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Wait for a stdout line containing `needle`.
    fn line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

fn addr_of(line: &str) -> String {
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("a URL");
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host:port")
        .to_string()
}

/// A minimal HTTP/1.1 client: one request per connection.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let status: u16 = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {raw}"));
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

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
    let mut p = Proc::start(dir.path());
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

/// `promtool check metrics` when promtool is installed (CI installs it and sets
/// GRIDVISOR_REQUIRE_PROMTOOL=1 so that a missing promtool fails there).
fn promtool_check(metrics: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("GRIDVISOR_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here: {e}"
            );
            eprintln!("promtool not installed: skipping its check ({e})");
            return;
        }
    };
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
