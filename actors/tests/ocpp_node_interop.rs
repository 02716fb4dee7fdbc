//! The node's CSMS against an independent OCPP implementation: a charge point written with
//! the PyPI `ocpp` package (transports/tests/py/ocpp_charge_point.py, as a child process)
//! connects to a running node over ws, for OCPP 2.0.1 and 2.1. The node's answers must satisfy
//! the Python library (it validates them against its own copy of the schemas), its vehicle's
//! id token starts a session, and a grid request reaches it as a SetChargingProfile the library
//! accepts.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;

use serde_json::Value;
use tokio::sync::mpsc;

const PASSWORD: &str = "py-charger-secret";
/// The token the Python charge point presents (a configured vehicle's id).
const TOKEN: &str = "04A1B2C3";

use gridvisor_testkit::python;

/// The Python charge point; killed on drop.
struct PyCp {
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
    stderr: Arc<Mutex<String>>,
}

impl PyCp {
    fn spawn(url: &str, version: &str) -> PyCp {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../transports/tests/py/ocpp_charge_point.py"
        );
        let mut child = Command::new(python())
            .arg(script)
            .args([url, version, "--password", PASSWORD])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the python charge point (the tests' venv, gridvisor-testkit)");
        let (lines, stderr) = json_lines(&mut child);
        PyCp {
            child,
            lines,
            stderr,
        }
    }

    /// The next line, within the bound.
    async fn next(&mut self) -> Value {
        match tokio::time::timeout(LIMIT, self.lines.recv()).await {
            Ok(Some(v)) => {
                assert_ne!(v["event"], "missing", "python `ocpp` is not installed: {v}");
                v
            }
            _ => panic!(
                "the python charge point said nothing more; stderr:\n{}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// Lines until one with `event` (returned last).
    async fn until(&mut self, event: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let v = self.next().await;
            let done = v["event"] == event;
            seen.push(v);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for PyCp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The site, with PY-1's credentials file in `dir` (the fewest iterations the file allows).
fn site(dir: &std::path::Path) -> String {
    let mut file = gridvisor_transports::ocpp::credentials::CredentialsFile::default();
    file.set(
        "PY-1",
        PASSWORD.as_bytes(),
        gridvisor_transports::ocpp::credentials::MIN_ITERATIONS,
    )
    .unwrap();
    let creds = dir.join("stations.cred");
    file.write_atomic(&creds).unwrap();
    format!(
        "[site]\nid = \"py\"\ncycle_ms = 100\nlease_s = 5\nkeepalive_required = false\n\
         [safety]\nhold_s = 1\n[[substations]]\nid = \"sub\"\n\
         [[substations.segments]]\nid = \"tx-0\"\nrated_kw = 100\n\
         [[substations.segments.meters]]\nid = \"m-0\"\n\
         [[substations.segments.chargers]]\nid = \"PY-1\"\nmax_kw = 50\nbidirectional = true\n\
         [[vehicles]]\nid = \"{TOKEN}\"\ncharger = \"PY-1\"\ncapacity_kwh = 80\nsoc_pct = 60\ndepart_s = 36000\nmax_kw = 50\n\
         [ocpp]\nlisten = \"127.0.0.1:0\"\npasswords = {creds:?}\nheartbeat_s = 42\n",
        creds = creds.display().to_string()
    )
}

async fn interop(version: &str, target_kw: f64) {
    let creds = tempfile::tempdir().unwrap();
    let t = start(&site(creds.path())).await;
    let addr = t.node.ocpp_addr().unwrap();
    let mut py = PyCp::spawn(&format!("ws://{addr}/ocpp/PY-1"), version);
    let seen = py.until("ready").await;
    let result = |action: &str| {
        seen.iter()
            .find(|v| v["event"] == "result" && v["action"] == action)
            .unwrap_or_else(|| panic!("no {action} result in {seen:#?}"))["payload"]
            .clone()
    };
    // The node's answers, as the Python library decoded them.
    let boot = result("BootNotification");
    assert_eq!(boot["status"], "Accepted", "{boot}");
    assert_eq!(boot["interval"], 42, "{boot}");
    assert_eq!(result("Authorize")["id_token_info"]["status"], "Accepted");
    assert_eq!(
        result("TransactionEvent")["id_token_info"]["status"],
        "Accepted"
    );
    assert_eq!(result("NotifyEVChargingNeeds")["status"], "Accepted");
    // Malformed frames got CALLERRORs and the connection lived on.
    let raw: Vec<&Value> = seen.iter().filter(|v| v["event"] == "raw").collect();
    assert_eq!(raw.len(), 3, "{seen:#?}");
    for r in raw {
        assert_eq!(r["received"][0], 4, "a CALLERROR: {r}");
    }
    // The token's transaction started the vehicle's session.
    wait(
        &t.node,
        "the session of the Python charge point's vehicle",
        || t.node.session(TOKEN).is_some(),
    )
    .await;
    // A grid request reaches it as a charging profile the library accepts.
    request_until_acked(&t.node, "py", target_kw, 1).await;
    // The closed loop sends revisions (the first may be 0 kW while the session's estimate
    // settles); look for the one carrying the request's direction.
    let wanted = |p: &Value| {
        let period = &p["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0];
        if version == "2.1" {
            period["setpoint"].as_f64().is_some_and(|w| w < 0.0)
        } else {
            period["limit"].as_f64().is_some_and(|w| w > 0.0)
        }
    };
    let profile = loop {
        let v = py.next().await;
        if v["event"] == "received"
            && v["message"][2] == "SetChargingProfile"
            && wanted(&v["message"][3])
        {
            break v["message"][3].clone();
        }
    };
    let p = &profile["chargingProfile"];
    assert_eq!(p["chargingProfilePurpose"], "TxDefaultProfile", "{profile}");
    assert!(p["id"].as_i64().unwrap() >= 1_000_000_000, "{profile}");
    let period = &p["chargingSchedule"][0]["chargingSchedulePeriod"][0];
    if version == "2.1" {
        assert_eq!(period["operationMode"], "CentralSetpoint", "{profile}");
        assert!(
            period["setpoint"].as_f64().unwrap() < 0.0,
            "a discharge: {profile}"
        );
        assert_eq!(p["invalidAfterOfflineDuration"], true, "{profile}");
    } else {
        assert!(period["limit"].as_f64().unwrap() > 0.0, "{profile}");
    }
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ocpp_21_charge_point_against_the_node() {
    interop("2.1", -5.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ocpp_201_charge_point_against_the_node() {
    interop("2.0.1", 5.0).await;
}

impl PyCp {
    /// Lines until one with `event` and `key` = `value` (returned); `message` compares the
    /// action of a received frame.
    async fn until_with(&mut self, event: &str, key: &str, value: &str) -> Value {
        loop {
            let v = self.next().await;
            let field = match key {
                "message" => v["message"][2].clone(),
                _ => v[key].clone(),
            };
            if v["event"] == event && field == value {
                return v;
            }
        }
    }
}

/// The node's own OCPP actions (issue 21) answered by the Python charge point: TriggerMessage,
/// the standard read-back, RequestStop/StartTransaction, ClearChargingProfile at session end.
async fn actions(version: &str) {
    use gridvisor_actors::io::ocpp::{ReadBack, RemoteStart};
    use gridvisor_transports::ocpp::messages::{
        ChargingProfilePurpose, IdToken, MessageTrigger, TriggerMessageStatus,
    };
    let creds = tempfile::tempdir().unwrap();
    let t = start(&site(creds.path())).await;
    let hub = t.node.ocpp_hub().cloned().unwrap();
    let addr = t.node.ocpp_addr().unwrap();
    let mut py = PyCp::spawn(&format!("ws://{addr}/ocpp/PY-1"), version);
    py.until("ready").await;
    wait(&t.node, "the Python charge point's session", || {
        t.node.session(TOKEN).is_some()
    })
    .await;

    for (m, action) in [
        (MessageTrigger::StatusNotification, "StatusNotification"),
        (MessageTrigger::MeterValues, "MeterValues"),
    ] {
        let status = hub.trigger("PY-1", m).await.unwrap();
        assert_eq!(status, TriggerMessageStatus::Accepted);
        py.until_with("sent", "action", action).await;
    }

    request_until_acked(&t.node, "py-actions", 5.0, 1).await;
    wait(&t.node, "the standard read-back learned", || {
        hub.read_back("PY-1") == ReadBack::Standard
    })
    .await;
    let reported = hub.charging_profiles("PY-1").await.unwrap().unwrap();
    assert!(!reported.is_empty());
    for p in &reported {
        assert_eq!(
            p.charging_profile_purpose,
            ChargingProfilePurpose::TxDefaultProfile
        );
        assert!(p.id >= 1_000_000_000, "{p:?}");
    }

    let stop = hub.request_stop("PY-1", None).await.unwrap();
    assert_eq!(stop.status, "Accepted", "{stop:?}");
    assert_eq!(stop.transaction_id.as_deref(), Some("tx-1"));
    // The station's TransactionEvent(Ended) and the node's ClearChargingProfile after it, in
    // whichever order the two lines come.
    let (mut ended, mut cleared) = (false, false);
    while !(ended && cleared) {
        let v = py.next().await;
        ended |= v["event"] == "sent" && v["action"] == "TransactionEvent";
        cleared |= v["event"] == "received" && v["message"][2] == "ClearChargingProfile";
    }
    wait(&t.node, "the session ended by the remote stop", || {
        t.node.session(TOKEN).is_none()
    })
    .await;

    let start = RemoteStart {
        id_token: IdToken {
            id_token: TOKEN.to_owned(),
            kind: "ISO14443".to_owned(),
            additional_info: None,
            extra: Default::default(),
        },
        evse_id: Some(1),
        charging_profile: None,
    };
    let answer = hub.request_start("PY-1", start.clone()).await.unwrap();
    assert_eq!(answer.status, "Accepted", "{answer:?}");
    wait(&t.node, "the remotely started session", || {
        t.node.session(TOKEN).is_some()
    })
    .await;
    let again = hub.request_start("PY-1", start).await.unwrap();
    assert_eq!(
        (again.status, again.reason.as_deref()),
        ("Rejected", Some("TxInProgress"))
    );
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ocpp_21_charge_point_answers_the_nodes_actions() {
    actions("2.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ocpp_201_charge_point_answers_the_nodes_actions() {
    actions("2.0.1").await;
}
