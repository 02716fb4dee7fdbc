//! Simulated charge points against the real CSMS of gridvisor-transports on 127.0.0.1:0 (ws,
//! and wss with a test CA from rcgen): boot, plug-in, a 2.1 discharge setpoint, its resend,
//! its lease, variables, reset, and each injected fault as the CSMS sees it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gridvisor_sim::ocpp::profile::Installed;
use gridvisor_sim::ocpp::{
    BadValue, ChargePoint, ChargePointConfig, ChargePointEvent, Fault, Vehicle,
};
use gridvisor_transports::ocpp::client::ClientConfig;
use gridvisor_transports::ocpp::connection::{CallError, Connection, RpcConfig};
use gridvisor_transports::ocpp::frame::ErrorCode;
use gridvisor_transports::ocpp::messages::*;
use gridvisor_transports::ocpp::server::Session;
use gridvisor_transports::ocpp::setpoint::{setpoint_profile, Setpoint};
use gridvisor_transports::ocpp::{tls, OcppVersion, ServerEvent};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc};

use crate::ocpp_support;
use ocpp_support::{
    answer_calls, expect_connected, next_event, pki, recv, start_csms, Csms, Pki, WAIT,
};

/// The charge point id and password known to the test CSMS (ocpp_support::PASSWORDS).
const ID: &str = "RUST-1";
const PASSWORD: &str = "rust-secret";

struct Rig {
    _pki: Pki,
    csms: Csms,
    cp: ChargePoint,
    events: broadcast::Receiver<ChargePointEvent>,
    session: Session,
    requests: mpsc::UnboundedReceiver<Request>,
    start: SystemTime,
}

/// Whole seconds, so profile times written by the CSMS compare exactly with the sim clock.
fn now_secs() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

async fn rig(rpc: RpcConfig, wss: bool) -> Rig {
    let pki = pki();
    let mut csms = start_csms(&pki, rpc).await;
    let addr = if wss { csms.wss } else { csms.ws };
    let mut client = ClientConfig::new("127.0.0.1", addr.port(), ID);
    client.password = Some(PASSWORD.as_bytes().to_vec());
    if wss {
        client.tls = Some(tls::client_config(pki.ca_pem.as_bytes(), None).unwrap());
    }
    eprintln!("CSMS on {addr} ({})", if wss { "wss" } else { "ws" });
    let mut config = ChargePointConfig::new(client);
    config.meter_interval = Duration::from_secs(3600);
    config.reconnect_initial = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(400);
    let start = now_secs();
    let (cp, _task) = ChargePoint::start(config, start).unwrap();
    let events = cp.subscribe();
    let mut session = expect_connected(&mut csms.server).await;
    let mut requests = answer_calls(std::mem::replace(&mut session.calls, mpsc::channel(1).1));
    assert!(
        matches!(recv(&mut requests).await, Request::BootNotification(b) if b.reason == BootReason::PowerUp)
    );
    assert!(
        matches!(recv(&mut requests).await, Request::StatusNotification(s) if s.connector_status == ConnectorStatus::Available)
    );
    Rig {
        _pki: pki,
        csms,
        cp,
        events,
        session,
        requests,
        start,
    }
}

/// The next event matching `want` (bounded by WAIT).
async fn until(
    events: &mut broadcast::Receiver<ChargePointEvent>,
    want: impl Fn(&ChargePointEvent) -> bool,
) -> ChargePointEvent {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) if want(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("charge point events closed"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("event within the wait bound")
}

fn ev() -> Vehicle {
    Vehicle::new(60.0, 0.8, 0.2, 11.0, 11.0, true).unwrap()
}

fn variable(component: &str, variable: &str) -> GetVariableData {
    GetVariableData {
        attribute_type: None,
        component: Component {
            name: component.to_owned(),
            instance: None,
            evse: None,
            extra: Map::new(),
        },
        variable: Variable {
            name: variable.to_owned(),
            instance: None,
            extra: Map::new(),
        },
        extra: Map::new(),
    }
}

async fn get(conn: &Connection, component: &str, name: &str) -> Result<String, CallError> {
    let r = conn
        .call(GetVariablesRequest {
            get_variable_data: vec![variable(component, name)],
            extra: Map::new(),
        })
        .await?;
    Ok(r.get_variable_result[0]
        .attribute_value
        .clone()
        .unwrap_or_default())
}

async fn plug_in(rig: &mut Rig) {
    rig.cp.plug_in(ev()).unwrap();
    until(&mut rig.events, |e| {
        matches!(e, ChargePointEvent::TransactionStarted(_))
    })
    .await;
    // Status (Occupied), Authorize, TransactionEvent(Started); the status may come last when
    // the plug-in raced the end of the boot sequence.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(recv(&mut rig.requests).await.action());
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            Action::Authorize,
            Action::StatusNotification,
            Action::TransactionEvent
        ]
    );
}

#[tokio::test]
async fn discharge_setpoint_resend_and_lease() {
    let mut rig = rig(RpcConfig::default(), false).await;
    assert_eq!(rig.session.connection.info().version, OcppVersion::V21);
    plug_in(&mut rig).await;

    let sp = Setpoint {
        dispatch_id: "dispatch-7",
        revision: 1,
        power_kw: -7.0,
        valid_from: rig.start,
        valid_until: rig.start + Duration::from_secs(120),
        evse_id: 1,
    };
    let request = setpoint_profile(OcppVersion::V21, &sp).unwrap();
    let conn = rig.session.connection.clone();
    let answer = conn.call(request.clone()).await.unwrap();
    assert_eq!(answer.status, ChargingProfileStatus::Accepted);
    until(&mut rig.events, |e| {
        matches!(
            e,
            ChargePointEvent::ProfileInstalled {
                change: Installed::New,
                ..
            }
        )
    })
    .await;

    rig.cp.step(Duration::from_secs(60));
    let s = rig.cp.snapshot();
    assert_eq!(s.power_kw, -7.0);
    let soc = s.vehicle.as_ref().unwrap().soc();
    assert!(soc < 0.8, "SoC {soc} should fall while discharging");
    assert!(s.register.export_kwh > 0.1 && s.register.import_kwh == 0.0);

    // The CSMS reads the applied setpoint back.
    let applied: Value = serde_json::from_str(
        &get(&conn, "SmartChargingCtrlr", "AppliedProfile")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(applied["id"], request.charging_profile.id);
    assert_eq!(applied["setpointW"], -7000.0);
    assert_eq!(applied["scheduleId"], 1);
    assert_eq!(get(&conn, "EVSE", "Power").await.unwrap(), "-7000");

    // A resend (as after a CSMS restart) changes nothing.
    let before = rig.cp.snapshot();
    let answer = conn.call(request.clone()).await.unwrap();
    assert_eq!(answer.status, ChargingProfileStatus::Accepted);
    until(&mut rig.events, |e| {
        matches!(
            e,
            ChargePointEvent::ProfileInstalled {
                change: Installed::Unchanged,
                ..
            }
        )
    })
    .await;
    let after = rig.cp.snapshot();
    assert_eq!(after.profiles, before.profiles);
    assert_eq!(after.profile_changes, 1);
    assert_eq!(after.target_kw(), before.target_kw());

    // The lease (validTo) ends: back to the default limit, charging again.
    // (A step applies the command in force at its start.)
    rig.cp.step(Duration::from_secs(59));
    assert_eq!(rig.cp.snapshot().power_kw, -7.0, "still inside the lease");
    rig.cp.step(Duration::from_secs(1));
    assert_eq!(rig.cp.snapshot().target_kw(), 11.0, "validTo reached");
    rig.cp.step(Duration::from_secs(1));
    let s = rig.cp.snapshot();
    assert_eq!(s.power_kw, 11.0, "default limit after validTo");
    assert_eq!(rig.cp.applied_profile(), "none");
    assert_eq!(
        get(&conn, "SmartChargingCtrlr", "AppliedProfile")
            .await
            .unwrap(),
        "none"
    );

    // ClearChargingProfile removes it.
    let cleared = conn
        .call(ClearChargingProfileRequest {
            charging_profile_id: Some(request.charging_profile.id),
            charging_profile_criteria: None,
            extra: Map::new(),
        })
        .await
        .unwrap();
    assert_eq!(cleared.status, ClearChargingProfileStatus::Accepted);
    assert!(rig.cp.snapshot().profiles.is_empty());
}

#[tokio::test]
async fn wss_meter_values_and_variables() {
    let mut rig = rig(RpcConfig::default(), true).await;
    assert_eq!(rig.session.security_profile, 2);
    plug_in(&mut rig).await;
    let conn = rig.session.connection.clone();
    let set = |component: &str, name: &str, value: &str| SetVariableData {
        attribute_type: None,
        attribute_value: value.to_owned(),
        component: variable(component, name).component,
        variable: variable(component, name).variable,
        extra: Map::new(),
    };
    let r = conn
        .call(SetVariablesRequest {
            set_variable_data: vec![
                set("SampledDataCtrlr", "TxUpdatedInterval", "7200"),
                set("OCPPCommCtrlr", "HeartbeatInterval", "0"),
                set("Nope", "X", "1"),
            ],
            extra: Map::new(),
        })
        .await
        .unwrap();
    let statuses: Vec<_> = r
        .set_variable_result
        .iter()
        .map(|r| r.attribute_status)
        .collect();
    assert_eq!(
        statuses,
        [
            SetVariableStatus::Accepted,
            SetVariableStatus::Rejected,
            SetVariableStatus::UnknownComponent
        ]
    );
    rig.cp.step(Duration::from_secs(600));
    let r = conn
        .call(SetVariablesRequest {
            set_variable_data: vec![set("SampledDataCtrlr", "TxUpdatedInterval", "1")],
            extra: Map::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        r.set_variable_result[0].attribute_status,
        SetVariableStatus::Accepted
    );
    assert_eq!(
        get(&conn, "SampledDataCtrlr", "TxUpdatedInterval")
            .await
            .unwrap(),
        "1"
    );
    let updated = loop {
        if let Request::TransactionEvent(t) = recv(&mut rig.requests).await {
            if t.event_type == TransactionEventType::Updated {
                break t;
            }
        }
    };
    let samples = &updated.meter_value.as_ref().unwrap()[0].sampled_value;
    let soc = samples
        .iter()
        .find(|s| s.measurand == Some(Measurand::SoC))
        .expect("SoC sampled");
    assert!(
        soc.value > 80.0,
        "charging at 11 kW for 10 min raises SoC: {}",
        soc.value
    );
    let import = samples
        .iter()
        .find(|s| s.measurand == Some(Measurand::EnergyActiveImportRegister))
        .unwrap();
    assert!(
        (import.value - 1833.0).abs() <= 1.0,
        "11 kW for 600 s: {}",
        import.value
    );
}

#[tokio::test]
async fn drop_reconnects_and_boots_again_on_the_offline_limit() {
    let mut rig = rig(RpcConfig::default(), false).await;
    plug_in(&mut rig).await;
    rig.cp
        .set_fault(Fault::Drop(Duration::from_secs(2)))
        .unwrap();
    until(&mut rig.events, |e| {
        matches!(e, ChargePointEvent::Disconnected)
    })
    .await;
    let s = rig.cp.snapshot();
    assert!(s.offline_since.is_some());
    assert_eq!(s.target_kw(), 3.7, "offline limit while away");
    rig.cp.step(Duration::from_secs(10));
    assert_eq!(rig.cp.snapshot().power_kw, 3.7);
    match next_event(&mut rig.csms.server).await {
        ServerEvent::Disconnected {
            charge_point_id, ..
        } => assert_eq!(charge_point_id, ID),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    rig.cp.set_fault(Fault::None).unwrap();
    let session = expect_connected(&mut rig.csms.server).await;
    let mut requests = answer_calls(session.calls);
    match recv(&mut requests).await {
        Request::BootNotification(b) => assert_eq!(b.reason, BootReason::Unknown),
        other => panic!("expected a boot, got {other:?}"),
    }
    until(&mut rig.events, |e| {
        matches!(e, ChargePointEvent::Booted { count: 2, .. })
    })
    .await;
    assert!(rig.cp.snapshot().offline_since.is_none());
    assert_eq!(
        rig.cp.snapshot().target_kw(),
        11.0,
        "default limit once back"
    );
}

#[tokio::test]
async fn reset_reconnects_with_remote_reset() {
    let mut rig = rig(RpcConfig::default(), false).await;
    let answer = rig
        .session
        .connection
        .call(ResetRequest {
            kind: ResetType::Immediate,
            evse_id: None,
            extra: Map::new(),
        })
        .await
        .unwrap();
    assert_eq!(answer.status, ResetStatus::Accepted);
    let session = loop {
        match next_event(&mut rig.csms.server).await {
            ServerEvent::Connected(s) => break s,
            ServerEvent::Disconnected { .. } => {}
            other => panic!("{other:?}"),
        }
    };
    let mut requests = answer_calls(session.calls);
    match recv(&mut requests).await {
        Request::BootNotification(b) => assert_eq!(b.reason, BootReason::RemoteReset),
        other => panic!("expected a boot, got {other:?}"),
    }
}

#[tokio::test]
async fn hang_times_out_the_csms_call_then_recovers() {
    let rpc = RpcConfig {
        call_timeout: Duration::from_millis(500),
        ..RpcConfig::default()
    };
    let mut rig = rig(rpc, false).await;
    rig.cp.set_fault(Fault::Hang).unwrap();
    let conn = rig.session.connection.clone();
    match get(&conn, "EVSE", "Power").await {
        Err(CallError::Timeout { action, .. }) => assert_eq!(action, Action::GetVariables),
        other => panic!("expected a timeout, got {other:?}"),
    }
    until(&mut rig.events, |e| {
        matches!(e, ChargePointEvent::Held(Action::GetVariables))
    })
    .await;
    assert!(!conn.is_closed(), "a hang keeps the socket open");
    rig.cp.set_fault(Fault::None).unwrap();
    assert_eq!(get(&conn, "EVSE", "Power").await.unwrap(), "0");
}

#[tokio::test]
async fn reject_answers_with_callerror() {
    let mut rig = rig(RpcConfig::default(), false).await;
    rig.cp.set_fault(Fault::Reject).unwrap();
    let conn = rig.session.connection.clone();
    match get(&conn, "EVSE", "Power").await {
        Err(CallError::Rejected { action, error }) => {
            assert_eq!(action, Action::GetVariables);
            assert_eq!(error.code, ErrorCode::GenericError);
        }
        other => panic!("expected a CALLERROR, got {other:?}"),
    }
    until(&mut rig.events, |e| {
        matches!(e, ChargePointEvent::Rejected(Action::GetVariables))
    })
    .await;
}

#[tokio::test]
async fn bad_value_is_a_typing_error_and_the_connection_lives() {
    let mut rig = rig(RpcConfig::default(), false).await;
    rig.cp
        .set_fault(Fault::BadValue(BadValue::Malformed))
        .unwrap();
    match until(&mut rig.events, |e| {
        matches!(
            e,
            ChargePointEvent::CallFailed {
                action: Action::MeterValues,
                ..
            }
        )
    })
    .await
    {
        ChargePointEvent::CallFailed { code, error, .. } => {
            assert_eq!(code, Some(ErrorCode::TypeConstraintViolation), "{error}");
            assert!(
                error.contains("value"),
                "the error names the field: {error}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rig.cp.snapshot().fault,
        Fault::None,
        "a bad value is sent once"
    );
    let conn = rig.session.connection.clone();
    assert!(!conn.is_closed());
    assert_eq!(get(&conn, "EVSE", "Power").await.unwrap(), "0");
    // An out-of-range SoC is schema-valid: the CSMS's engine accepts it (plausibility is the
    // CSMS owner's job) and the owner receives it.
    rig.cp
        .set_fault(Fault::BadValue(BadValue::OutOfRange))
        .unwrap();
    loop {
        if let Request::MeterValues(m) = recv(&mut rig.requests).await {
            assert_eq!(m.meter_value[0].sampled_value[0].value, 250.0);
            break;
        }
    }
}

#[tokio::test]
async fn offline_from_the_start_backs_off_and_drives_in_real_time() {
    // A port with nothing listening: every connect is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut client = ClientConfig::new("127.0.0.1", port, "NOBODY");
    client.password = Some(b"x".to_vec());
    let mut config = ChargePointConfig::new(client);
    config.reconnect_initial = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(80);
    let (cp, task) = ChargePoint::start(config, now_secs()).unwrap();
    let mut events = cp.subscribe();
    let mut delays = Vec::new();
    while delays.len() < 5 {
        if let ChargePointEvent::ConnectFailed { retry_in, .. } = until(&mut events, |e| {
            matches!(e, ChargePointEvent::ConnectFailed { .. })
        })
        .await
        {
            delays.push(retry_in.as_millis());
        }
    }
    // The first failure may have happened before we subscribed: compare the tail.
    assert!(delays.ends_with(&[80, 80]), "{delays:?}");
    assert!(
        delays.windows(2).all(|w| w[1] == (w[0] * 2).min(80)),
        "{delays:?}"
    );

    cp.plug_in(ev()).unwrap();
    let driver = cp.spawn_realtime_driver(Duration::from_millis(5));
    let mut attempts = 0;
    while cp.snapshot().register.import_kwh == 0.0 {
        attempts += 1;
        assert!(
            attempts < 1000,
            "the real-time driver did not step the physics"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = cp.snapshot();
    assert_eq!(s.power_kw, 3.7, "offline limit with no CSMS ever seen");
    assert!(s.vehicle.unwrap().soc() > 0.8);
    driver.abort();
    cp.stop().unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}
