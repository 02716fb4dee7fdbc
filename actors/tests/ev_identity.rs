//! Vehicles known by token, with the EV's own data (issue 21), against the PyPI `ocpp` 2.1
//! charge point (actors/tests/py/ev_charge_point.py, a child process driven line by line):
//! a token at a charger it was never configured for, NotifyEVChargingNeeds and SoC meter
//! values into the session, a discharge that stops at the EV's V2X minimum, refused,
//! unknown and revoked tokens, a node restart that keeps the departure on the wall clock, and
//! (OCPP 2.1) the EV's NotifyEVChargingSchedule kept in the session and its `evEnergyOffer`
//! capping the energy it gives.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use gridvisor_actors::authorization::{Contract, TokenId};
use gridvisor_actors::session::SourceKind;
use gridvisor_testkit::python;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const PASSWORD: &str = "ev-charger-secret";
/// The fleet's token, seeded: V2G, 30 % minimum, 80 kWh, a 10 h stay.
const FLEET: &str = "FLEET-1";
/// A seeded token that is blocked.
const BLOCKED: &str = "BLOCKED-1";

/// The Python charge point; killed on drop.
struct Ev {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Ev {
    async fn connect(url: &str) -> Ev {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/ev_charge_point.py");
        let mut child = Command::new(python())
            .arg(script)
            .args([url, "--password", PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the python charge point (the tests' venv, gridvisor-testkit)");
        let stdin = child.stdin.take().unwrap();
        let (lines, stderr) = json_lines(&mut child);
        let mut ev = Ev {
            child,
            stdin,
            lines,
            stderr,
        };
        let first = ev.next().await;
        assert_eq!(first["event"], "connected", "{first}");
        ev
    }

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

    /// Send one CALL and return the CSMS's answer (as the library decoded it).
    async fn call(&mut self, action: &str, payload: Value) -> Value {
        let line = json!({"action": action, "payload": payload}).to_string();
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        loop {
            let v = self.next().await;
            if v["event"] == "error" {
                panic!("{action}: {v}");
            }
            if v["event"] == "result" && v["action"] == action {
                return v["payload"].clone();
            }
        }
    }

    /// The next SetChargingProfile the CSMS sends whose setpoint (W) satisfies `wanted`.
    async fn profile(&mut self, wanted: impl Fn(f64) -> bool) -> f64 {
        loop {
            let v = self.next().await;
            if v["event"] == "received" && v["message"][2] == "SetChargingProfile" {
                let p = &v["message"][3]["chargingProfile"]["chargingSchedule"][0]
                    ["chargingSchedulePeriod"][0]["setpoint"];
                if let Some(w) = p.as_f64().filter(|w| wanted(*w)) {
                    return w;
                }
            }
        }
    }

    async fn boot(&mut self) {
        let boot = self
            .call(
                "BootNotification",
                json!({"charging_station": {"model": "EvCP", "vendor_name": "interop"},
                       "reason": "PowerUp"}),
            )
            .await;
        assert_eq!(boot["status"], "Accepted", "{boot}");
        self.status("Available").await;
    }

    async fn status(&mut self, status: &str) {
        let ts = now_rfc3339(SystemTime::now());
        self.call(
            "StatusNotification",
            json!({"timestamp": ts, "connector_status": status, "evse_id": 1, "connector_id": 1}),
        )
        .await;
    }

    async fn authorize(&mut self, token: &str) -> String {
        let r = self
            .call(
                "Authorize",
                json!({"id_token": {"id_token": token, "type": "ISO14443"}}),
            )
            .await;
        r["id_token_info"]["status"].as_str().unwrap().to_owned()
    }

    /// A TransactionEvent (`Started`, `Updated`, `Ended`) of transaction `tx` with `token`.
    async fn transaction(&mut self, kind: &str, seq: u32, tx: &str, token: &str) -> String {
        let ts = now_rfc3339(SystemTime::now());
        let r = self
            .call(
                "TransactionEvent",
                json!({"event_type": kind, "timestamp": ts, "trigger_reason": "Authorized",
                       "seq_no": seq, "transaction_info": {"transaction_id": tx},
                       "evse": {"id": 1, "connector_id": 1},
                       "id_token": {"id_token": token, "type": "ISO14443"},
                       "meter_value": [{"timestamp": ts, "sampled_value": [
                           {"value": 10000.0, "measurand": "Energy.Active.Import.Register"}]}]}),
            )
            .await;
        r["id_token_info"]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// MeterValues: the SoC (%) and the energy register (Wh).
    async fn meter(&mut self, soc: f64, register_wh: f64) {
        let ts = now_rfc3339(SystemTime::now());
        self.call(
            "MeterValues",
            json!({"evse_id": 1, "meter_value": [{"timestamp": ts, "sampled_value": [
                {"value": soc, "measurand": "SoC", "unit_of_measure": {"unit": "Percent"}},
                {"value": register_wh, "measurand": "Energy.Active.Import.Register"},
                {"value": 0.0, "measurand": "Power.Active.Import"}]}]}),
        )
        .await;
    }
}

impl Drop for Ev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RFC 3339 UTC, whole seconds (civil from days: Howard Hinnant's algorithm).
fn now_rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A site of two bidirectional chargers (`EV-A`, `EV-B`), no `[[vehicles]]`, the list in
/// `dir` seeded with [`FLEET`] and [`BLOCKED`]; `unknown` is the policy.
fn site(dir: &Path, unknown: &str) -> String {
    let mut file = gridvisor_transports::ocpp::credentials::CredentialsFile::default();
    for id in ["EV-A", "EV-B"] {
        file.set(
            id,
            PASSWORD.as_bytes(),
            gridvisor_transports::ocpp::credentials::MIN_ITERATIONS,
        )
        .unwrap();
    }
    let creds = dir.join("stations.cred");
    file.write_atomic(&creds).unwrap();
    let seed = dir.join("tokens.toml");
    std::fs::write(
        &seed,
        format!(
            "[[tokens]]\ntype = \"ISO14443\"\nvalue = \"{FLEET}\"\nname = \"fleet-a\"\nv2g = true\n\
             min_soc_pct = 30\ncapacity_kwh = 80\nstay_s = 36000\n\
             [[tokens]]\ntype = \"ISO14443\"\nvalue = \"{BLOCKED}\"\nname = \"gone\"\nblocked = true\n"
        ),
    )
    .unwrap();
    format!(
        "[site]\nid = \"ev\"\ncycle_ms = 100\nlease_s = 5\nkeepalive_required = false\n\
         [safety]\nhold_s = 1\n[[substations]]\nid = \"sub\"\n\
         [[substations.segments]]\nid = \"tx-0\"\nrated_kw = 200\n\
         [[substations.segments.meters]]\nid = \"m-0\"\n\
         [[substations.segments.chargers]]\nid = \"EV-A\"\nmax_kw = 50\nbidirectional = true\n\
         [[substations.segments.chargers]]\nid = \"EV-B\"\nmax_kw = 50\nbidirectional = true\n\
         [ocpp]\nlisten = \"127.0.0.1:0\"\npasswords = {creds:?}\n\
         [authorization]\nstore = {store:?}\nseed = {seed:?}\nunknown = \"{unknown}\"\n",
        creds = creds.display().to_string(),
        store = dir.join("tokens.redb").display().to_string(),
        seed = seed.display().to_string(),
    )
}

async fn start_site(dir: &tempfile::TempDir, unknown: &str) -> TestNode {
    let toml = site(dir.path(), unknown);
    let topology =
        gridvisor_actors::config::parse("ev.toml", &toml).unwrap_or_else(|e| panic!("{e}"));
    let data = tempfile::tempdir().unwrap();
    start_in(Arc::new(topology), data).await
}

fn url(t: &TestNode, charger: &str) -> String {
    format!("ws://{}/ocpp/{charger}", t.node.ocpp_addr().unwrap())
}

/// The NotifyEVChargingNeeds of the test's EV: 80 kWh at 60 %, 8 kWh above its V2X minimum
/// (so 50 %), 16 kWh wanted (so 80 %), 22 kW in, 11 kW out, leaving at `departure`.
fn needs(departure: SystemTime) -> Value {
    json!({"evse_id": 1, "charging_needs": {
        "requested_energy_transfer": "DC_BPT",
        "available_energy_transfer": ["DC", "DC_BPT"],
        "control_mode": "DynamicControl",
        "departure_time": now_rfc3339(departure),
        "dc_charging_parameters": {"ev_max_current": 200, "ev_max_voltage": 450,
                                   "ev_energy_capacity": 80000, "state_of_charge": 60},
        "v2x_charging_parameters": {"max_charge_power": 22000, "max_discharge_power": 11000,
                                    "ev_target_energy_request": 16000,
                                    "ev_min_v2x_energy_request": -8000}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_at_any_charger_brings_the_evs_own_data_and_its_v2x_floor_holds() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_site(&dir, "refuse").await;
    // EV-B: no vehicle was ever configured there (there is no [[vehicles]] at all).
    let mut ev = Ev::connect(&url(&t, "EV-B")).await;
    ev.boot().await;
    assert_eq!(ev.authorize(FLEET).await, "Accepted");
    assert_eq!(
        ev.transaction("Started", 0, "tx-1", FLEET).await,
        "Accepted"
    );
    wait(&t.node, "the token's session", || {
        t.node.session(FLEET).is_some()
    })
    .await;
    let s = t.node.session(FLEET).unwrap();
    assert_eq!(s.charger, "EV-B");
    // Nothing reported yet: the contract's data, and the SoC assumed at its minimum.
    let sess = &s.status.session;
    assert_eq!((sess.capacity_kwh, sess.min_soc_pct), (80.0, 30.0));
    assert_eq!(sess.sources.soc.kind, SourceKind::Assumed);
    assert_eq!(sess.sources.capacity.kind, SourceKind::Contract);

    let departure = SystemTime::now() + Duration::from_secs(2 * 3600);
    let departure_unix = departure.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64;
    let r = ev.call("NotifyEVChargingNeeds", needs(departure)).await;
    assert_eq!(r["status"], "Accepted", "{r}");
    ev.meter(60.0, 10_000.0).await;
    wait(&t.node, "the EV's needs in the session", || {
        t.node.session(FLEET).is_some_and(|s| {
            let s = s.status.session;
            s.sources.min_soc.kind == SourceKind::Reported
                && s.sources.soc.kind == SourceKind::Reported
        })
    })
    .await;
    let s = t.node.session(FLEET).unwrap().status.session;
    assert_eq!(s.depart_unix_s, Some(departure_unix));
    assert_eq!(s.sources.departure.kind, SourceKind::Reported);
    assert_eq!(s.capacity_kwh, 80.0);
    assert_eq!(s.soc_pct, 60.0);
    assert!((s.min_soc_pct - 50.0).abs() < 1e-9, "{s:?}");
    assert!((s.target_soc_pct - 80.0).abs() < 1e-9, "{s:?}");
    assert_eq!(
        (s.ev_max_charge_kw, s.ev_max_discharge_kw),
        (Some(22.0), Some(11.0))
    );

    // A site discharge of 40 kW: this EV gives at most its own 11 kW.
    request_until_acked(&t.node, "dis", -40.0, 1).await;
    let w = ev.profile(|w| w < 0.0).await;
    assert!(
        w >= -11_000.0 - 1e-6,
        "beyond the EV's discharge limit: {w} W"
    );
    // The EV reports it reached its V2X minimum: no more discharge.
    ev.meter(50.0, 10_000.0).await;
    wait(&t.node, "the reported SoC at the floor", || {
        t.node
            .session(FLEET)
            .is_some_and(|s| s.status.session.soc_pct == 50.0)
    })
    .await;
    let w = ev.profile(|w| w >= 0.0).await;
    assert!(w >= 0.0);
    let s = t.node.session(FLEET).unwrap().status.session;
    assert_eq!(s.discharge_limit_kw(1.0), 0.0, "{s:?}");
    t.node.shutdown().await;
}

/// NotifyEVChargingSchedule of the test's EV: 11 kW for 30 min, then 7 kW.
fn ev_schedule(selected: i64) -> Value {
    json!({"time_base": now_rfc3339(SystemTime::now()), "evse_id": 1,
           "selected_charging_schedule_id": selected,
           "charging_schedule": {"id": 3, "charging_rate_unit": "W",
               "charging_schedule_period": [{"start_period": 0, "limit": 11000.0},
                                            {"start_period": 1800, "limit": 7000.0}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evs_schedule_is_kept_and_its_energy_offer_caps_the_discharge() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_site(&dir, "refuse").await;
    let mut ev = Ev::connect(&url(&t, "EV-A")).await;
    ev.boot().await;
    // No transaction yet: the hub knows none to keep the schedule for.
    let r = ev.call("NotifyEVChargingSchedule", ev_schedule(1)).await;
    assert_eq!(r["status"], "Rejected", "{r}");
    assert_eq!(r["status_info"]["reason_code"], "UnknownTransaction", "{r}");
    assert_eq!(
        ev.transaction("Started", 0, "tx-s", FLEET).await,
        "Accepted"
    );
    wait(&t.node, "the token's session", || {
        t.node.session(FLEET).is_some()
    })
    .await;
    let mut wrong_evse = ev_schedule(1);
    wrong_evse["evse_id"] = json!(2);
    let r = ev.call("NotifyEVChargingSchedule", wrong_evse).await;
    assert_eq!(r["status_info"]["reason_code"], "UnknownEvse", "{r}");
    let r = ev.call("NotifyEVChargingSchedule", ev_schedule(2)).await;
    assert_eq!(r["status"], "Accepted", "{r}");

    // The needs with an energy offer: 6 min at -10 kW (1 kWh), then nothing (+5 kW).
    let mut needs = needs(SystemTime::now() + Duration::from_secs(2 * 3600));
    needs["charging_needs"]["ev_energy_offer"] = json!({"ev_power_schedule": {
        "time_anchor": now_rfc3339(SystemTime::now()),
        "ev_power_schedule_entries": [{"duration": 360, "power": -10000.0},
                                      {"duration": 3600, "power": 5000.0}]}});
    let r = ev.call("NotifyEVChargingNeeds", needs).await;
    assert_eq!(r["status"], "Accepted", "{r}");
    ev.meter(60.0, 10_000.0).await;
    wait(&t.node, "the schedule and the offer in the session", || {
        t.node.session(FLEET).is_some_and(|s| {
            let s = s.status.session;
            s.ev_schedule.is_some() && s.ev_offer_kwh.is_some()
        })
    })
    .await;
    let s = t.node.session(FLEET).unwrap();
    // As GET /api/v1/sessions/{token} shows it (the same struct, serialized).
    let api = serde_json::to_value(&s).unwrap();
    let sch = &api["session"]["ev_schedule"];
    assert_eq!(
        (sch["id"].as_i64(), sch["selected_id"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(sch["unit"], "W");
    assert_eq!(sch["periods"][1]["start_s"], 1800.0);
    assert_eq!(sch["periods"][1]["limit"], 7000.0);
    let src = &api["session"]["sources"];
    assert_eq!(src["schedule"]["kind"], "reported", "{src}");
    assert_eq!(src["offer"]["kind"], "reported", "{src}");
    let sess = s.status.session;
    assert!((sess.ev_offer_kwh.unwrap() - 1.0).abs() < 1e-9, "{sess:?}");

    // A site discharge: the EV gives its own 11 kW at most while its offer lasts.
    request_until_acked(&t.node, "dis", -40.0, 1).await;
    let w = ev.profile(|w| w < 0.0).await;
    assert!(
        w >= -11_000.0 - 1e-6,
        "beyond the EV's discharge limit: {w} W"
    );
    // 1.2 kWh went out (the register falls): the offer is used up, though the SoC (60 %)
    // is still 8 kWh above the EV's V2X minimum (50 %). No more discharge.
    ev.meter(60.0, 8_800.0).await;
    wait(&t.node, "the discharge counted against the offer", || {
        t.node
            .session(FLEET)
            .is_some_and(|s| s.status.session.discharged_kwh >= 1.0)
    })
    .await;
    let w = ev.profile(|w| w >= 0.0).await;
    assert!(w >= 0.0);
    let s = t.node.session(FLEET).unwrap().status.session;
    assert_eq!(s.soc_pct, 60.0);
    assert!(s.energy_above_min_kwh() > 7.0, "{s:?}");
    assert_eq!(s.discharge_limit_kw(1.0), 0.0, "{s:?}");
    assert_eq!(s.max_discharge_kw(), 0.0, "dispatch no longer counts on it");
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_unknown_and_revoked_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_site(&dir, "refuse").await;
    let mut ev = Ev::connect(&url(&t, "EV-A")).await;
    ev.boot().await;
    assert_eq!(ev.authorize(BLOCKED).await, "Blocked");
    assert_eq!(ev.authorize("NOBODY").await, "Unknown");
    assert_eq!(
        ev.transaction("Started", 0, "tx-u", "NOBODY").await,
        "Unknown"
    );
    assert!(t.node.session("NOBODY").is_none());
    ev.transaction("Ended", 1, "tx-u", "NOBODY").await;

    // A listed token's session, then its token is revoked (as the API's DELETE does).
    assert_eq!(
        ev.transaction("Started", 0, "tx-f", FLEET).await,
        "Accepted"
    );
    wait(&t.node, "the fleet session", || {
        t.node.session(FLEET).is_some()
    })
    .await;
    let list = t.node.authorization().expect("the list");
    let id = TokenId::new("ISO14443", FLEET).unwrap();
    assert!(list.delete(&id).unwrap());
    // At once (within a cycle): no more discharge, before the station says anything.
    wait(&t.node, "no discharge for the revoked token", || {
        t.node
            .session(FLEET)
            .is_some_and(|s| !s.status.session.discharge_allowed)
    })
    .await;
    assert_eq!(ev.transaction("Updated", 1, "tx-f", FLEET).await, "Unknown");
    wait(&t.node, "the revoked token's session ended", || {
        t.node.session(FLEET).is_none()
    })
    .await;
    // Listed again, the next transaction starts a session again.
    let contract = Contract {
        v2g: false,
        ..Contract::unknown()
    };
    assert!(!list.put(id, contract).unwrap());
    ev.transaction("Ended", 2, "tx-f", FLEET).await;
    assert_eq!(
        ev.transaction("Started", 0, "tx-g", FLEET).await,
        "Accepted"
    );
    wait(&t.node, "the session again", || {
        t.node.session(FLEET).is_some()
    })
    .await;
    assert!(
        !t.node
            .session(FLEET)
            .unwrap()
            .status
            .session
            .discharge_allowed
    );
    // The same token at another charger meanwhile: one session per token.
    let mut other = Ev::connect(&url(&t, "EV-B")).await;
    other.boot().await;
    assert_eq!(other.authorize(FLEET).await, "ConcurrentTx");
    let status = other.transaction("Started", 0, "tx-h", FLEET).await;
    assert_eq!(status, "ConcurrentTx");
    assert_eq!(t.node.session(FLEET).unwrap().charger, "EV-A");
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_charges_only_when_the_site_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_site(&dir, "charge_only").await;
    let mut ev = Ev::connect(&url(&t, "EV-A")).await;
    ev.boot().await;
    assert_eq!(ev.authorize("VISITOR").await, "Accepted");
    assert_eq!(ev.authorize(BLOCKED).await, "Blocked");
    assert_eq!(
        ev.transaction("Started", 0, "tx-v", "VISITOR").await,
        "Accepted"
    );
    wait(&t.node, "the visitor's session", || {
        t.node.session("VISITOR").is_some()
    })
    .await;
    let s = t.node.session("VISITOR").unwrap().status.session;
    assert!(!s.discharge_allowed);
    assert_eq!(s.contract.as_ref().map(|c| c.0.as_str()), Some("unknown"));
    // A site discharge finds nothing to take from it.
    ev.meter(90.0, 10_000.0).await;
    wait(&t.node, "the visitor's SoC", || {
        t.node
            .session("VISITOR")
            .is_some_and(|s| s.status.session.soc_pct == 90.0)
    })
    .await;
    let r = t
        .node
        .request(request(
            "dis-v",
            gridvisor_actors::runtime::Scope::Site,
            -20.0,
            60.0,
        ))
        .await
        .unwrap();
    assert!(r.unallocated_kw <= -20.0 + 1e-6, "{r:#?}");
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_departure_on_the_wall_clock_and_the_soc_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let toml = site(dir.path(), "refuse");
    let topology = Arc::new(
        gridvisor_actors::config::parse("ev.toml", &toml).unwrap_or_else(|e| panic!("{e}")),
    );
    let data = tempfile::tempdir().unwrap();
    let departure = SystemTime::now() + Duration::from_secs(3 * 3600);
    let departure_unix = departure.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64;
    let (depart_s_before, data) = {
        let t = start_in(topology.clone(), data).await;
        let mut ev = Ev::connect(&url(&t, "EV-A")).await;
        ev.boot().await;
        assert_eq!(
            ev.transaction("Started", 0, "tx-r", FLEET).await,
            "Accepted"
        );
        ev.call("NotifyEVChargingNeeds", needs(departure)).await;
        ev.meter(60.0, 10_000.0).await;
        wait(&t.node, "the reported SoC", || {
            t.node
                .session(FLEET)
                .is_some_and(|s| s.status.session.sources.soc.kind == SourceKind::Reported)
        })
        .await;
        // 4 kWh metered since: 5 % of 80 kWh on top of the reported 60 %.
        let ts = now_rfc3339(SystemTime::now());
        ev.call(
            "MeterValues",
            json!({"evse_id": 1, "meter_value": [{"timestamp": ts, "sampled_value": [
                {"value": 14000.0, "measurand": "Energy.Active.Import.Register"}]}]}),
        )
        .await;
        wait(&t.node, "the integrated estimate", || {
            t.node
                .session(FLEET)
                .is_some_and(|s| (s.status.session.soc_pct - 65.0).abs() < 1e-6)
        })
        .await;
        let s = t.node.session(FLEET).unwrap().status.session;
        drop(ev);
        t.node.shutdown().await;
        let TestNode { dir, .. } = t;
        (s.depart_s, dir)
    };
    // A new node (its clock starts again at zero): the same wall-clock departure, the
    // estimate from the checkpoint, before the charger is even back.
    let t = start_in(topology, data).await;
    wait(&t.node, "the resumed session", || {
        t.node.session(FLEET).is_some()
    })
    .await;
    let s = t.node.session(FLEET).unwrap().status.session;
    assert_eq!(s.depart_unix_s, Some(departure_unix));
    assert_eq!(s.charger, "EV-A");
    assert!((s.soc_pct - 65.0).abs() < 1e-6, "{s:?}");
    let now = t.node.shared.clock.now().as_secs_f64();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expected = now + (departure_unix - wall);
    assert!(
        (s.depart_s - expected).abs() < 2.0,
        "depart_s {} (was {depart_s_before}) should be {expected} on the new clock",
        s.depart_s
    );
    t.node.shutdown().await;
}
