//! Interop: the independent Python `ocpp` 2.1.0 charge point (OCPP 2.0.1 and 2.1) against our
//! CSMS over ws (profile 1), wss (profile 2) and wss with mutual TLS (profile 3). Real sockets,
//! real TLS, real frames. The charge point runs in the tests' own venv (gridvisor-testkit);
//! these tests fail, never skip, when it cannot be made.

use crate::ocpp_support;

use std::time::{Duration, UNIX_EPOCH};

use gridvisor_transports::ocpp::connection::{DisconnectReason, RpcConfig};
use gridvisor_transports::ocpp::messages::*;
use gridvisor_transports::ocpp::server::{HandshakeRejection, ServerEvent};
use gridvisor_transports::ocpp::setpoint::{setpoint_profile, Setpoint};
use gridvisor_transports::ocpp::OcppVersion;
use ocpp_support::*;
use serde_json::{json, Map, Value};

#[derive(Clone, Copy, Debug)]
enum Transport {
    Ws,
    Wss,
    Mtls,
}

fn args_for(
    pki: &Pki,
    csms: &Csms,
    t: Transport,
    cp_id: &str,
    password: &str,
    version: &str,
) -> Vec<String> {
    let ca = pki.path("ca.pem").display().to_string();
    let mut a = match t {
        Transport::Ws => vec![format!("ws://127.0.0.1:{}/ocpp/{cp_id}", csms.ws.port())],
        Transport::Wss => vec![format!("wss://127.0.0.1:{}/ocpp/{cp_id}", csms.wss.port())],
        Transport::Mtls => vec![format!("wss://127.0.0.1:{}/ocpp/{cp_id}", csms.mtls.port())],
    };
    a.push(version.to_owned());
    match t {
        Transport::Ws => a.extend(["--password".to_owned(), password.to_owned()]),
        Transport::Wss => a.extend([
            "--password".to_owned(),
            password.to_owned(),
            "--ca".to_owned(),
            ca,
        ]),
        Transport::Mtls => a.extend([
            "--ca".to_owned(),
            ca,
            "--cert".to_owned(),
            pki.path("client.pem").display().to_string(),
            "--key".to_owned(),
            pki.path("client.key").display().to_string(),
        ]),
    }
    a
}

/// The next frame the Python charge point received with `action` as a CALL.
async fn received_call(py: &mut PyCp, action: &str) -> Value {
    loop {
        let v = py.next().await;
        if v["event"] == "received" && v["message"][0] == 2 && v["message"][2] == action {
            return v["message"][3].clone();
        }
        assert_ne!(
            v["event"], "closed",
            "python closed before receiving {action}"
        );
    }
}

fn result<'a>(lines: &'a [Value], action: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["event"] == "result" && l["action"] == action)
        .unwrap_or_else(|| panic!("no result for {action} in {lines:#?}"))
}

fn component(name: &str) -> Component {
    Component {
        name: name.to_owned(),
        instance: None,
        evse: None,
        extra: Map::new(),
    }
}

fn variable(name: &str) -> Variable {
    Variable {
        name: name.to_owned(),
        instance: None,
        extra: Map::new(),
    }
}

async fn full_session(version: &str, transport: Transport) {
    require_python_ocpp();
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;
    let (cp_id, password, expected) = match version {
        "2.1" => ("CP-21", "pw-21-secret", OcppVersion::V21),
        _ => ("CP-201", "pw-201-secret", OcppVersion::V201),
    };
    // Profile 3: the charge point is who its certificate says it is.
    let cp_id = if matches!(transport, Transport::Mtls) {
        "CP-MTLS"
    } else {
        cp_id
    };
    let mut py = PyCp::spawn(&args_for(&pki, &csms, transport, cp_id, password, version));
    let session = expect_connected(&mut csms.server).await;
    assert_eq!(session.connection.info().charge_point_id, cp_id);
    assert_eq!(session.connection.info().version, expected);
    let profile = match transport {
        Transport::Ws => 1,
        Transport::Wss => 2,
        Transport::Mtls => 3,
    };
    assert_eq!(session.security_profile, profile);
    let conn = session.connection.clone();
    let mut requests = answer_calls(session.calls);

    let lines = py.until("ready").await;
    assert_eq!(
        lines[0]["subprotocol"],
        expected.subprotocol(),
        "{lines:#?}"
    );

    // Malformed frames: CALLERROR with the right code and id, and the connection lives on.
    let raws: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "raw")
        .map(|l| &l["received"])
        .collect();
    assert_eq!(raws.len(), 3, "{lines:#?}");
    assert_eq!(
        (&raws[0][0], &raws[0][1], &raws[0][2]),
        (&json!(4), &json!("-1"), &json!("RpcFrameworkError"))
    );
    assert_eq!(
        (&raws[1][0], &raws[1][1], &raws[1][2]),
        (
            &json!(4),
            &json!("bad-1"),
            &json!("OccurrenceConstraintViolation")
        )
    );
    assert_eq!(
        raws[1][4]["field"], "/chargingStation",
        "the CALLERROR names the missing field"
    );
    assert_eq!(
        (&raws[2][1], &raws[2][2]),
        (&json!("bad-2"), &json!("NotImplemented"))
    );

    // The charge point's CALLs, as it saw our answers...
    assert_eq!(
        result(&lines, "BootNotification")["payload"]["status"],
        "Accepted"
    );
    assert_eq!(
        result(&lines, "BootNotification")["payload"]["interval"],
        300
    );
    assert!(result(&lines, "Heartbeat")["payload"]["current_time"].is_string());
    assert_eq!(
        result(&lines, "Authorize")["payload"]["id_token_info"]["status"],
        "Accepted"
    );
    assert_eq!(
        result(&lines, "TransactionEvent")["payload"]["id_token_info"]["status"],
        "Accepted"
    );
    assert_eq!(
        result(&lines, "NotifyEVChargingNeeds")["payload"]["status"],
        "Accepted"
    );
    assert!(result(&lines, "StatusNotification")["payload"].is_object());
    assert!(result(&lines, "MeterValues")["payload"].is_object());

    // ... and as our CSMS typed them.
    let Request::BootNotification(boot) = recv(&mut requests).await else {
        panic!("boot first")
    };
    assert_eq!(
        (boot.charging_station.model.as_str(), boot.reason),
        ("PyCP", BootReason::PowerUp)
    );
    assert!(matches!(recv(&mut requests).await, Request::Heartbeat(_)));
    let Request::StatusNotification(status) = recv(&mut requests).await else {
        panic!("status")
    };
    assert_eq!(
        (status.connector_status, status.evse_id),
        (ConnectorStatus::Available, 1)
    );
    let Request::Authorize(auth) = recv(&mut requests).await else {
        panic!("authorize")
    };
    assert_eq!(auth.id_token.id_token, "04A1B2C3");
    let Request::TransactionEvent(tx) = recv(&mut requests).await else {
        panic!("tx")
    };
    assert_eq!(
        (
            tx.event_type,
            tx.seq_no,
            tx.transaction_info.transaction_id.as_str()
        ),
        (TransactionEventType::Started, 0, "tx-1")
    );
    assert_eq!(
        tx.meter_value.as_ref().unwrap()[0].sampled_value[0].value,
        1234.5
    );
    let Request::MeterValues(mv) = recv(&mut requests).await else {
        panic!("meter values")
    };
    assert_eq!(
        mv.meter_value[0].sampled_value[0].measurand,
        Some(Measurand::PowerActiveImport)
    );
    assert_eq!(mv.meter_value[0].sampled_value[0].value, 7.4);
    let Request::NotifyEVChargingNeeds(needs) = recv(&mut requests).await else {
        panic!("needs")
    };
    if expected == OcppVersion::V21 {
        assert_eq!(
            needs.charging_needs.requested_energy_transfer,
            EnergyTransferMode::DcBpt
        );
        let v2x = needs
            .charging_needs
            .v2x_charging_parameters
            .as_ref()
            .unwrap();
        assert_eq!(v2x.max_discharge_power, Some(30000.0));
    } else {
        assert_eq!(
            needs.charging_needs.requested_energy_transfer,
            EnergyTransferMode::Dc
        );
    }

    // Our CALLs: a dispatch setpoint (2.1: discharge as a negative setpoint).
    let from = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let kw = if expected == OcppVersion::V21 {
        -11.0
    } else {
        7.4
    };
    let request = setpoint_profile(
        expected,
        &Setpoint {
            dispatch_id: "dispatch-7",
            revision: 2,
            power_kw: kw,
            valid_from: from,
            valid_until: from + Duration::from_secs(900),
            evse_id: 1,
        },
    )
    .unwrap();
    let sent = serde_json::to_value(&request).unwrap();
    let answer = conn.call(request.clone()).await.unwrap();
    assert_eq!(answer.status, ChargingProfileStatus::Accepted);
    let seen = received_call(&mut py, "SetChargingProfile").await;
    assert_eq!(seen, sent, "the charge point received exactly our JSON");
    let period = &seen["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0];
    if expected == OcppVersion::V21 {
        assert_eq!(period["setpoint"], json!(-11000.0));
        assert_eq!(period["dischargeLimit"], json!(-11000.0));
        assert_eq!(period["operationMode"], "CentralSetpoint");
    } else {
        assert_eq!(period["limit"], json!(7400.0));
        assert!(period.get("setpoint").is_none());
    }

    let cleared = conn
        .call(ClearChargingProfileRequest {
            charging_profile_id: Some(request.charging_profile.id),
            charging_profile_criteria: None,
            extra: Map::new(),
        })
        .await
        .unwrap();
    assert_eq!(cleared.status, ClearChargingProfileStatus::Accepted);
    assert_eq!(
        received_call(&mut py, "ClearChargingProfile").await["chargingProfileId"],
        request.charging_profile.id
    );

    let got = conn
        .call(GetVariablesRequest {
            get_variable_data: vec![GetVariableData {
                attribute_type: None,
                component: component("SmartChargingCtrlr"),
                variable: variable("Enabled"),
                extra: Map::new(),
            }],
            extra: Map::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        got.get_variable_result[0].attribute_status,
        GetVariableStatus::Accepted
    );
    assert_eq!(
        got.get_variable_result[0].attribute_value.as_deref(),
        Some("42")
    );
    assert_eq!(
        got.get_variable_result[0].component.name,
        "SmartChargingCtrlr"
    );

    let set = conn
        .call(SetVariablesRequest {
            set_variable_data: vec![SetVariableData {
                attribute_type: Some(AttributeType::Actual),
                attribute_value: "60".to_owned(),
                component: component("OCPPCommCtrlr"),
                variable: variable("HeartbeatInterval"),
                extra: Map::new(),
            }],
            extra: Map::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        set.set_variable_result[0].attribute_status,
        SetVariableStatus::RebootRequired
    );

    let reset = conn
        .call(ResetRequest {
            kind: ResetType::OnIdle,
            evse_id: None,
            extra: Map::new(),
        })
        .await
        .unwrap();
    assert_eq!(reset.status, ResetStatus::Scheduled);

    // Closing: the charge point sees the close, the owner gets Disconnected.
    conn.close();
    py.until("closed").await;
    match next_event(&mut csms.server).await {
        ServerEvent::Disconnected {
            charge_point_id,
            reason,
        } => {
            assert_eq!(charge_point_id, cp_id);
            assert_eq!(reason, DisconnectReason::ClosedByOwner);
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_v201_over_ws_basic_auth() {
    full_session("2.0.1", Transport::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_v21_over_ws_basic_auth() {
    full_session("2.1", Transport::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_v201_over_wss_basic_auth() {
    full_session("2.0.1", Transport::Wss).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_v21_over_wss_basic_auth() {
    full_session("2.1", Transport::Wss).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_v201_over_mutual_tls() {
    full_session("2.0.1", Transport::Mtls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_v21_over_mutual_tls() {
    full_session("2.1", Transport::Mtls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_wrong_password_is_refused_with_401() {
    require_python_ocpp();
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;
    let mut py = PyCp::spawn(&args_for(
        &pki,
        &csms,
        Transport::Ws,
        "CP-21",
        "not-the-password",
        "2.1",
    ));
    assert_eq!(py.next().await, json!({"event": "refused", "status": 401}));
    match next_event(&mut csms.server).await {
        ServerEvent::Rejected {
            reason:
                HandshakeRejection::Unauthorized {
                    charge_point_id, ..
                },
            ..
        } => {
            assert_eq!(charge_point_id, "CP-21")
        }
        other => panic!("expected an Unauthorized rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_bad_path_is_refused_with_404() {
    require_python_ocpp();
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;
    let url = format!("ws://127.0.0.1:{}/not-ocpp/CP-21", csms.ws.port());
    let mut py = PyCp::spawn(&[
        url,
        "2.1".to_owned(),
        "--password".to_owned(),
        "pw-21-secret".to_owned(),
    ]);
    assert_eq!(py.next().await, json!({"event": "refused", "status": 404}));
    assert!(matches!(
        next_event(&mut csms.server).await,
        ServerEvent::Rejected {
            reason: HandshakeRejection::BadPath { .. },
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_certificate_from_another_ca_is_refused() {
    require_python_ocpp();
    let pki = pki();
    let mut csms = start_csms(&pki, RpcConfig::default()).await;
    let mut args = args_for(&pki, &csms, Transport::Mtls, "CP-ROGUE", "", "2.1");
    let n = args.len();
    args[n - 3] = pki.path("rogue.pem").display().to_string();
    args[n - 1] = pki.path("rogue.key").display().to_string();
    let mut py = PyCp::spawn(&args);
    let line = py.next().await;
    assert_eq!(line["event"], "error", "{line}");
    match next_event(&mut csms.server).await {
        ServerEvent::Rejected {
            reason: HandshakeRejection::Tls(why),
            ..
        } => {
            assert!(why.to_lowercase().contains("cert"), "{why}")
        }
        other => panic!("expected a TLS rejection, got {other:?}"),
    }
}
