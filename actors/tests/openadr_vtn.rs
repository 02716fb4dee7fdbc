//! The node's OpenADR 2.0b VEN against an independent VTN: PyPI `openleadr` 0.5.36
//! (tests/py/openadr_vtn.py, a child process on a free loopback port; it validates every
//! message of ours against the 2.0b schema). The node registers, opts in to an event within
//! the site's capacity and dispatches it at its start, opts out of one beyond it, stops a
//! cancelled one, and the VTN receives its TELEMETRY_USAGE reports. A restarted node keeps
//! its registration and events (its own redb file).

use crate::common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use gridvisor_actors::io::openadr::messages::Opt;
use gridvisor_supervisors::registry::Lookup;
use gridvisor_testkit::python;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The openleadr VTN; killed on drop.
struct Vtn {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    stderr: Arc<Mutex<String>>,
    port: u16,
}

impl Vtn {
    async fn spawn() -> Vtn {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/openadr_vtn.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the openleadr VTN (the tests' venv, gridvisor-testkit)");
        let stdin = child.stdin.take().unwrap();
        let (lines, stderr) = json_lines(&mut child);
        let mut vtn = Vtn {
            child,
            stdin,
            lines,
            stderr,
            port: 0,
        };
        let listening = vtn.until("listening").await;
        vtn.port = listening["port"].as_u64().unwrap() as u16;
        vtn
    }

    async fn next(&mut self) -> Value {
        match tokio::time::timeout(LIMIT, self.lines.recv()).await {
            Ok(Some(v)) => {
                assert_ne!(
                    v["event"], "missing",
                    "python `openleadr` is not installed: {v}"
                );
                v
            }
            _ => panic!(
                "the VTN said nothing more; stderr:\n{}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// The next line with `event` (others are skipped).
    async fn until(&mut self, event: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["event"] == event {
                return v;
            }
        }
    }

    fn send(&mut self, cmd: Value) {
        use std::io::Write;
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// An event of one signal with one interval starting in `start_in_s`.
    fn add_event(&mut self, id: &str, name: &str, kind: &str, start_in_s: f64, value: f64) {
        self.send(json!({
            "cmd": "add_event", "id": id, "signal_name": name, "signal_type": kind,
            "intervals": [{"start_in_s": start_in_s, "duration_s": 120, "value": value}],
        }));
    }
}

impl Drop for Vtn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One segment of two 11 kW bidirectional chargers with a vehicle each, and `[openadr]`.
fn site(port: u16, store: &std::path::Path) -> String {
    format!(
        "{}\n[openadr]\nvtn_url = \"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b\"\n\
         ven_name = \"gridvisor-test\"\npoll_interval_s = 1\nreport_interval_s = 1\n\
         store = {store:?}\n[openadr.simple_levels]\n0 = 0.0\n1 = 2.0\n2 = 4.0\n3 = 6.0\n",
        site_toml(1, 2, "", ""),
        store = store.display().to_string(),
    )
}

fn target_kw(node: &gridvisor_actors::runtime::Node) -> f64 {
    node.segments().iter().map(|s| s.telemetry.target_kw).sum()
}

fn event(
    node: &gridvisor_actors::runtime::Node,
    id: &str,
) -> Option<gridvisor_actors::runtime::openadr::EventView> {
    node.openadr()?.events.into_iter().find(|e| e.id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_a_ven_of_an_openleadr_vtn() {
    let mut vtn = Vtn::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("openadr.redb");
    let toml = site(vtn.port, &store);
    let t = start(&toml).await;
    let node = &t.node;

    // Registration, then the usage report.
    let reg = vtn.until("registered").await;
    assert_eq!(reg["ven_name"], "gridvisor-test");
    let report = vtn.until("report_registered").await;
    assert_eq!(report["resource_id"], "t");
    wait(node, "the VEN stores its registration", || {
        node.openadr()
            .and_then(|s| s.registration)
            .is_some_and(|r| r.ven_id == "ven-under-test" && r.registration_id == "reg-under-test")
    })
    .await;
    let r = vtn.until("report").await;
    let values = r["values"].as_array().unwrap();
    assert!(values[0][1].is_number(), "{r}");

    // An event within the site's capacity: optIn, dispatched at its start, not before.
    wait(node, "the site's capacity is known", || {
        gridvisor_actors::runtime::openadr::site_capacity(&node.shared).max_kw > 10.0
    })
    .await;
    vtn.add_event("ev-in", "LOAD_DISPATCH", "setpoint", 4.0, 8.0);
    let added = vtn.until("added").await;
    let starts_at = time::OffsetDateTime::parse(
        added["starts"][0].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let opt = vtn.until("opt").await;
    assert_eq!(
        (opt["event_id"].as_str(), opt["opt"].as_str()),
        (Some("ev-in"), Some("optIn"))
    );
    assert_eq!(event(node, "ev-in").unwrap().opt, Opt::In);
    wait(node, "ev-in dispatched", || {
        event(node, "ev-in").is_some_and(|e| e.submitted == 1)
    })
    .await;
    let now = time::OffsetDateTime::from(SystemTime::now());
    assert!(
        now >= starts_at,
        "dispatched at {now}, before the interval's start {starts_at}"
    );
    assert_eq!(
        event(node, "ev-in").unwrap().request.as_deref(),
        Some("oadr:ev-in:0:0")
    );
    wait(node, "the site carries ev-in's target", || {
        target_kw(node) > 4.0
    })
    .await;

    // Beyond the site's capacity: optOut, nothing dispatched.
    vtn.add_event("ev-out", "LOAD_DISPATCH", "setpoint", 1.0, 5_000.0);
    let opt = vtn.until("opt").await;
    assert_eq!(
        (opt["event_id"].as_str(), opt["opt"].as_str()),
        (Some("ev-out"), Some("optOut"))
    );
    let out = event(node, "ev-out").unwrap();
    assert!(
        out.reason.as_ref().unwrap().contains("5000.0 kW"),
        "{out:?}"
    );

    // Cancelled while running: its request is stopped and the site returns to its default.
    vtn.add_event("ev-cancel", "simple", "level", 1.0, 3.0);
    let opt = vtn.until("opt").await;
    assert_eq!(opt["opt"], "optIn", "{opt} {:?}", event(node, "ev-cancel"));
    wait(node, "ev-cancel dispatched", || {
        event(node, "ev-cancel").is_some_and(|e| e.submitted == 1)
    })
    .await;
    vtn.send(json!({"cmd": "cancel", "id": "ev-cancel"}));
    wait(node, "ev-cancel stopped", || {
        event(node, "ev-cancel").is_some_and(|e| e.cancelled && e.stopped)
    })
    .await;
    wait(node, "the site back at its safe default", || {
        target_kw(node) == 0.0
    })
    .await;
    assert!(event(node, "ev-out").is_some_and(|e| e.submitted == 0));

    // A failed VEN is restarted by its own supervisor; the site is not touched, and the
    // registration is read back from the store (no new registration).
    let incarnation = |path: &str| match node.registry().lookup_incarnation(path) {
        Lookup::Running(_, n) => Some(n),
        _ => None,
    };
    let site_before = incarnation("node/site").unwrap();
    let killed = node.kill("node/openadr/ven").unwrap();
    wait(node, "the VEN restarted", || {
        incarnation("node/openadr/ven").is_some_and(|n| n > killed.incarnation)
    })
    .await;
    assert_eq!(incarnation("node/site"), Some(site_before));
    assert!(node.openadr().unwrap().registration.is_some());

    // Reports keep arriving with the metered power.
    let before = node.openadr().unwrap().reports_sent;
    vtn.until("report").await;
    wait(node, "another report", || {
        node.openadr().unwrap().reports_sent > before
    })
    .await;
    let metrics = node.metrics_exposition(gridvisor_actors::runtime::Format::Text);
    for line in [
        "gridvisor_openadr_events_total{outcome=\"opt_in\"} 2",
        "gridvisor_openadr_events_total{outcome=\"opt_out\"} 1",
        "gridvisor_openadr_events_total{outcome=\"cancelled\"} 1",
        "gridvisor_openadr_requests_total{action=\"stop\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in the metrics");
    }

    // A restart keeps the registration and the events.
    let registration = node.openadr().unwrap().registration;
    t.node.shutdown().await;
    drop(t);
    let started = Instant::now();
    let again = start(&toml).await;
    let snap = again.node.openadr().unwrap();
    assert_eq!(snap.registration, registration);
    assert!(snap
        .events
        .iter()
        .any(|e| e.id == "ev-out" && e.opt == Opt::Out));
    assert!(started.elapsed() < Duration::from_secs(30));
    again.node.shutdown().await;
}
