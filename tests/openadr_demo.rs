//! The demo driven by an OpenADR VTN: `gridvisor run --openadr-vtn URL` against PyPI
//! `openleadr`'s VTN (actors/tests/py/openadr_vtn.py, a child process on a free loopback
//! port). The demo registers, reports its site power, opts in to a LOAD_DISPATCH event and
//! submits it at its start (seen in the admin API's metrics and `GET /api/v1/openadr`).

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Instant, SystemTime};

use serde_json::{json, Value};
use support::*;

struct Vtn {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Vtn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vtn {
    fn until(&mut self, event: &str) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the VTN printed no {event:?} line"));
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            assert_ne!(
                v["event"], "missing",
                "python `openleadr` is not installed: {v}"
            );
            if v["event"] == event {
                return v;
            }
        }
    }
}

fn counter(admin: &str, series: &str) -> f64 {
    let (_, body) = http(admin, "GET", "/metrics", None);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn the_demo_is_a_ven_of_an_openleadr_vtn() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/actors/tests/py/openadr_vtn.py"
    );
    let mut child = Command::new(gridvisor_testkit::python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the openleadr VTN");
    let mut stdin = child.stdin.take().unwrap();
    let lines = stdout_lines(&mut child);
    let mut vtn = Vtn { child, lines };
    let port = vtn.until("listening")["port"].as_u64().unwrap();
    let url = format!("http://127.0.0.1:{port}/OpenADR2/Simple/2.0b");

    let data = tempfile::tempdir().unwrap();
    let mut node = DemoNode::start_args(
        data.path(),
        &[],
        &["--ocpp", "127.0.0.1:0", "--openadr-vtn", &url],
    );
    let (grid, admin) = node.addresses();
    assert_eq!(vtn.until("registered")["ven_name"], "demo-site");
    assert_eq!(vtn.until("report_registered")["resource_id"], "demo-site");
    let report = vtn.until("report");
    assert!(report["values"][0][1].is_number(), "{report}");

    let event = json!({
        "cmd": "add_event", "id": "demo-ev", "signal_name": "LOAD_DISPATCH",
        "signal_type": "setpoint",
        "intervals": [{"start_in_s": 3, "duration_s": 120, "value": 10.0}],
    });
    writeln!(stdin, "{event}").unwrap();
    stdin.flush().unwrap();
    let added = vtn.until("added");
    let opt = vtn.until("opt");
    assert_eq!(opt["opt"], "optIn", "{opt}");
    let submitted = "gridvisor_openadr_requests_total{action=\"submit\"}";
    let deadline = Instant::now() + LIMIT;
    while counter(&admin, submitted) < 1.0 {
        assert!(Instant::now() < deadline, "demo-ev was not submitted");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let start = added["starts_unix"][0].as_f64().unwrap();
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(now >= start, "submitted at {now}, before its start {start}");
    assert_eq!(
        counter(&admin, "gridvisor_openadr_events_total{outcome=\"opt_in\"}"),
        1.0
    );
    // The grid API shows the VEN: its registration and the event's running request.
    let (status, body) = http(&grid, "GET", "/api/v1/openadr", None);
    assert_eq!(status, 200, "{body}");
    let ven: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ven["registration"]["ven_id"], "ven-under-test", "{ven}");
    let ev = &ven["events"][0];
    assert_eq!(
        (ev["id"].as_str(), ev["opt"].as_str()),
        (Some("demo-ev"), Some("optIn"))
    );
    assert_eq!(ev["request"], "oadr:demo-ev:0:0", "{ven}");
}
