//! The simulated charge point answers the CSMS's remote-control and read-back actions
//! (issue 21) over a real WebSocket to the test CSMS of gridvisor-transports (which accepts
//! any token): GetChargingProfiles → ReportChargingProfiles with what it holds,
//! TriggerMessage, RequestStop/StartTransaction and ClearChargingProfile, for 2.1 and 2.0.1.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gridvisor_sim::ocpp::{ChargePoint, ChargePointConfig, ChargePointEvent, Vehicle};
use gridvisor_transports::ocpp::client::ClientConfig;
use gridvisor_transports::ocpp::connection::Connection;
use gridvisor_transports::ocpp::messages::*;
use gridvisor_transports::ocpp::setpoint::{setpoint_profile, Setpoint};
use gridvisor_transports::ocpp::OcppVersion;
use serde_json::Map;
use tokio::sync::{broadcast, mpsc};

use crate::ocpp_support;
use ocpp_support::{answer_calls, expect_connected, pki, recv, start_csms, WAIT};

struct Rig {
    _pki: ocpp_support::Pki,
    _csms: ocpp_support::Csms,
    cp: ChargePoint,
    events: broadcast::Receiver<ChargePointEvent>,
    conn: Connection,
    requests: mpsc::UnboundedReceiver<Request>,
}

fn whole_seconds() -> SystemTime {
    let s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + Duration::from_secs(s.as_secs())
}

async fn rig(version: OcppVersion) -> Rig {
    let pki = pki();
    let mut csms = start_csms(&pki, Default::default()).await;
    let mut client = ClientConfig::new("127.0.0.1", csms.ws.port(), "RUST-1");
    client.password = Some(b"rust-secret".to_vec());
    client.versions = vec![version];
    let mut config = ChargePointConfig::new(client);
    config.meter_interval = Duration::from_secs(3600);
    let (cp, _task) = ChargePoint::start(config, whole_seconds()).unwrap();
    let events = cp.subscribe();
    let mut session = expect_connected(&mut csms.server).await;
    assert_eq!(session.connection.info().version, version);
    let calls = std::mem::replace(&mut session.calls, mpsc::channel(1).1);
    let mut requests = answer_calls(calls);
    assert_eq!(recv(&mut requests).await.action(), Action::BootNotification);
    assert_eq!(
        recv(&mut requests).await.action(),
        Action::StatusNotification
    );
    Rig {
        _pki: pki,
        _csms: csms,
        cp,
        events,
        conn: session.connection.clone(),
        requests,
    }
}

/// The next CALL of `action` the charge point sends (others are skipped), within the bound.
async fn next_of(requests: &mut mpsc::UnboundedReceiver<Request>, action: Action) -> Request {
    loop {
        let r = recv(requests).await;
        if r.action() == action {
            return r;
        }
    }
}

async fn until(
    events: &mut broadcast::Receiver<ChargePointEvent>,
    want: fn(&ChargePointEvent) -> bool,
) {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) if want(&e) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("event within the bound");
}

fn get_profiles(request_id: i32) -> GetChargingProfilesRequest {
    GetChargingProfilesRequest {
        request_id,
        evse_id: Some(1),
        charging_profile: ChargingProfileCriterion {
            charging_profile_purpose: Some(ChargingProfilePurpose::TxDefaultProfile),
            ..Default::default()
        },
        extra: Map::new(),
    }
}

fn token(value: &str) -> IdToken {
    IdToken {
        id_token: value.to_owned(),
        kind: "Central".to_owned(),
        additional_info: None,
        extra: Map::new(),
    }
}

async fn read_back_and_clear(rig: &mut Rig, version: OcppVersion) {
    let none = rig.conn.call(get_profiles(1)).await.unwrap();
    assert_eq!(none.status, GetChargingProfileStatus::NoProfiles);

    let now = whole_seconds();
    let sp = Setpoint {
        dispatch_id: "d-42",
        revision: 3,
        power_kw: 7.0,
        valid_from: now,
        valid_until: now + Duration::from_secs(60),
        evse_id: 1,
    };
    let set = setpoint_profile(version, &sp).unwrap();
    let answer = rig.conn.call(set.clone()).await.unwrap();
    assert_eq!(answer.status, ChargingProfileStatus::Accepted);

    let got = rig.conn.call(get_profiles(7)).await.unwrap();
    assert_eq!(got.status, GetChargingProfileStatus::Accepted);
    let Request::ReportChargingProfiles(report) =
        next_of(&mut rig.requests, Action::ReportChargingProfiles).await
    else {
        unreachable!()
    };
    assert_eq!((report.request_id, report.evse_id), (7, 1));
    assert_eq!(report.charging_limit_source, "CSO");
    assert_eq!(report.tbc, Some(false));
    assert_eq!(report.charging_profile, vec![set.charging_profile.clone()]);

    // Criteria that match nothing: NoProfiles, no report.
    let mut other = get_profiles(8);
    other.charging_profile.stack_level = Some(99);
    assert_eq!(
        rig.conn.call(other).await.unwrap().status,
        GetChargingProfileStatus::NoProfiles
    );

    let clear = |purpose| ClearChargingProfileRequest {
        charging_profile_id: None,
        charging_profile_criteria: Some(ClearChargingProfileCriteria {
            evse_id: Some(1),
            charging_profile_purpose: Some(purpose),
            stack_level: None,
            extra: Map::new(),
        }),
        extra: Map::new(),
    };
    // Another purpose clears nothing; the profile's own clears it.
    let answer = rig
        .conn
        .call(clear(ChargingProfilePurpose::TxProfile))
        .await;
    assert_eq!(answer.unwrap().status, ClearChargingProfileStatus::Unknown);
    let answer = rig
        .conn
        .call(clear(ChargingProfilePurpose::TxDefaultProfile))
        .await;
    assert_eq!(answer.unwrap().status, ClearChargingProfileStatus::Accepted);
    assert!(rig.cp.snapshot().profiles.is_empty());
    let after = rig.conn.call(get_profiles(9)).await.unwrap();
    assert_eq!(after.status, GetChargingProfileStatus::NoProfiles);
}

async fn triggers(rig: &mut Rig) {
    let trigger = |m| TriggerMessageRequest {
        requested_message: m,
        evse: Some(Evse {
            id: 1,
            connector_id: None,
            extra: Map::new(),
        }),
        custom_trigger: None,
        extra: Map::new(),
    };
    let a = rig
        .conn
        .call(trigger(MessageTrigger::MeterValues))
        .await
        .unwrap();
    assert_eq!(a.status, TriggerMessageStatus::Accepted);
    next_of(&mut rig.requests, Action::MeterValues).await;
    let a = rig
        .conn
        .call(trigger(MessageTrigger::StatusNotification))
        .await
        .unwrap();
    assert_eq!(a.status, TriggerMessageStatus::Accepted);
    let Request::StatusNotification(s) =
        next_of(&mut rig.requests, Action::StatusNotification).await
    else {
        unreachable!()
    };
    assert_eq!(s.connector_status, ConnectorStatus::Available);
    let a = rig
        .conn
        .call(trigger(MessageTrigger::BootNotification))
        .await
        .unwrap();
    assert_eq!(a.status, TriggerMessageStatus::NotImplemented);
}

async fn remote_stop_and_start(rig: &mut Rig) {
    let start = |id| RequestStartTransactionRequest {
        evse_id: Some(1),
        group_id_token: None,
        id_token: token("FLEET-9"),
        remote_start_id: id,
        charging_profile: None,
        extra: Map::new(),
    };
    // No vehicle: refused with the reason.
    let a = rig.conn.call(start(4)).await.unwrap();
    assert_eq!(a.status, RequestStartStopStatus::Rejected);
    assert_eq!(a.status_info.unwrap().reason_code, "NoEVConnected");

    rig.cp
        .plug_in(Vehicle::new(60.0, 0.5, 0.2, 11.0, 11.0, true).unwrap())
        .unwrap();
    let Request::TransactionEvent(started) =
        next_of(&mut rig.requests, Action::TransactionEvent).await
    else {
        unreachable!()
    };
    let tx = started.transaction_info.transaction_id.clone();

    let stop = |id: &str| RequestStopTransactionRequest {
        transaction_id: id.to_owned(),
        extra: Map::new(),
    };
    let a = rig.conn.call(stop("nope")).await.unwrap();
    assert_eq!(a.status, RequestStartStopStatus::Rejected);
    let a = rig.conn.call(stop(&tx)).await.unwrap();
    assert_eq!(a.status, RequestStartStopStatus::Accepted);
    let Request::TransactionEvent(ended) =
        next_of(&mut rig.requests, Action::TransactionEvent).await
    else {
        unreachable!()
    };
    assert_eq!(ended.event_type, TransactionEventType::Ended);
    assert_eq!(ended.trigger_reason, TriggerReason::RemoteStop);
    assert_eq!(
        ended.transaction_info.stopped_reason,
        Some(StopReason::Remote)
    );
    until(&mut rig.events, |e| {
        matches!(e, ChargePointEvent::TransactionStopped(_))
    })
    .await;
    assert!(
        rig.cp.snapshot().vehicle.is_some(),
        "the vehicle stays plugged in"
    );

    // The plugged-in vehicle's driver is started remotely, with the CSMS's token.
    let a = rig.conn.call(start(5)).await.unwrap();
    assert_eq!(a.status, RequestStartStopStatus::Accepted);
    let Request::TransactionEvent(remote) =
        next_of(&mut rig.requests, Action::TransactionEvent).await
    else {
        unreachable!()
    };
    assert_eq!(remote.event_type, TransactionEventType::Started);
    assert_eq!(remote.trigger_reason, TriggerReason::RemoteStart);
    assert_eq!(remote.transaction_info.remote_start_id, Some(5));
    assert_eq!(remote.id_token, Some(token("FLEET-9")));
    until(&mut rig.events, |e| {
        matches!(e, ChargePointEvent::TransactionStarted(_))
    })
    .await;
    // A second start while it runs: refused, naming the running transaction.
    let a = rig.conn.call(start(6)).await.unwrap();
    assert_eq!(a.status, RequestStartStopStatus::Rejected);
    assert_eq!(
        a.transaction_id,
        Some(remote.transaction_info.transaction_id)
    );
}

async fn all(version: OcppVersion) {
    let mut rig = rig(version).await;
    read_back_and_clear(&mut rig, version).await;
    triggers(&mut rig).await;
    remote_stop_and_start(&mut rig).await;
    rig.cp.stop().unwrap();
}

#[tokio::test]
async fn ocpp_actions_21() {
    all(OcppVersion::V21).await;
}

#[tokio::test]
async fn ocpp_actions_201() {
    all(OcppVersion::V201).await;
}
