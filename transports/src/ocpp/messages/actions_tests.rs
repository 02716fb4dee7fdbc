//! Sample payloads of the remote-control and read-back actions against both versions'
//! schemas, and through the typed structs and back (a valid payload survives the round trip
//! byte for byte; an invalid one is refused naming its field).

use serde_json::{json, Value};

use super::*;
use crate::ocpp::frame::ErrorCode;
use crate::ocpp::schema::{validate, PayloadKind};
use crate::ocpp::OcppVersion;

const BOTH: [OcppVersion; 2] = [OcppVersion::V201, OcppVersion::V21];

/// Valid under `version`'s schema, decodes, and encodes back to the same JSON.
fn round_trip(version: OcppVersion, action: Action, kind: PayloadKind, sample: Value) {
    validate(version, action, kind, &sample).unwrap_or_else(|e| panic!("{e}"));
    let Value::Object(map) = sample.clone() else {
        panic!("sample is not an object")
    };
    let back = match kind {
        PayloadKind::Request => Request::from_payload(action, map).unwrap().to_payload(),
        PayloadKind::Response => Response::from_payload(action, map).unwrap().to_payload(),
    }
    .unwrap();
    assert_eq!(Value::Object(back), sample, "{action} {kind:?} {version}");
}

fn refused(version: OcppVersion, action: Action, sample: Value) -> (ErrorCode, String) {
    let e = validate(version, action, PayloadKind::Request, &sample).unwrap_err();
    (e.code, e.path)
}

fn profile() -> Value {
    json!({"id": 7, "stackLevel": 1, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": [{"id": 1, "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.0}]}]})
}

#[test]
fn request_start_transaction_both_ways() {
    for v in BOTH {
        let req = json!({"evseId": 1, "remoteStartId": 42,
            "idToken": {"idToken": "FLEET-7", "type": "Central"}, "chargingProfile": profile()});
        round_trip(
            v,
            Action::RequestStartTransaction,
            PayloadKind::Request,
            req,
        );
        let ok = json!({"status": "Rejected", "statusInfo": {"reasonCode": "Occupied"},
            "transactionId": "tx-1"});
        round_trip(
            v,
            Action::RequestStartTransaction,
            PayloadKind::Response,
            ok,
        );
        let missing = json!({"idToken": {"idToken": "A", "type": "Central"}});
        assert_eq!(
            refused(v, Action::RequestStartTransaction, missing),
            (
                ErrorCode::OccurrenceConstraintViolation,
                "/remoteStartId".into()
            )
        );
    }
    // 2.0.1's token type is an enumeration, 2.1's a free string.
    let odd = json!({"remoteStartId": 1, "idToken": {"idToken": "A", "type": "Fleet"}});
    validate(
        OcppVersion::V21,
        Action::RequestStartTransaction,
        PayloadKind::Request,
        &odd,
    )
    .unwrap();
    assert_eq!(
        refused(OcppVersion::V201, Action::RequestStartTransaction, odd),
        (
            ErrorCode::PropertyConstraintViolation,
            "/idToken/type".into()
        )
    );
}

#[test]
fn request_stop_transaction_both_ways() {
    for v in BOTH {
        let req = json!({"transactionId": "tx-1"});
        round_trip(v, Action::RequestStopTransaction, PayloadKind::Request, req);
        round_trip(
            v,
            Action::RequestStopTransaction,
            PayloadKind::Response,
            json!({"status": "Accepted"}),
        );
        let long = json!({"transactionId": "x".repeat(37)});
        assert_eq!(
            refused(v, Action::RequestStopTransaction, long).0,
            ErrorCode::PropertyConstraintViolation
        );
        let e = validate(
            v,
            Action::RequestStopTransaction,
            PayloadKind::Response,
            &json!({"status": "Maybe"}),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.path.as_str()),
            (ErrorCode::PropertyConstraintViolation, "/status")
        );
    }
}

#[test]
fn trigger_message_both_ways() {
    for v in BOTH {
        for m in ["StatusNotification", "MeterValues"] {
            let req = json!({"requestedMessage": m, "evse": {"id": 1, "connectorId": 1}});
            round_trip(v, Action::TriggerMessage, PayloadKind::Request, req);
        }
        round_trip(
            v,
            Action::TriggerMessage,
            PayloadKind::Response,
            json!({"status": "NotImplemented"}),
        );
        assert_eq!(
            refused(v, Action::TriggerMessage, json!({"evse": {"id": 1}})),
            (
                ErrorCode::OccurrenceConstraintViolation,
                "/requestedMessage".into()
            )
        );
    }
    let custom = json!({"requestedMessage": "CustomTrigger", "customTrigger": "x"});
    round_trip(
        OcppVersion::V21,
        Action::TriggerMessage,
        PayloadKind::Request,
        custom.clone(),
    );
    assert!(validate(
        OcppVersion::V201,
        Action::TriggerMessage,
        PayloadKind::Request,
        &custom
    )
    .is_err());
}

#[test]
fn get_and_report_charging_profiles_both_ways() {
    for v in BOTH {
        let get = json!({"requestId": 3, "evseId": 1, "chargingProfile":
            {"chargingProfilePurpose": "TxProfile", "chargingLimitSource": ["CSO"]}});
        round_trip(v, Action::GetChargingProfiles, PayloadKind::Request, get);
        round_trip(
            v,
            Action::GetChargingProfiles,
            PayloadKind::Response,
            json!({"status": "NoProfiles"}),
        );
        let report = json!({"requestId": 3, "chargingLimitSource": "CSO", "evseId": 1,
            "tbc": false, "chargingProfile": [profile()]});
        round_trip(
            v,
            Action::ReportChargingProfiles,
            PayloadKind::Request,
            report,
        );
        round_trip(
            v,
            Action::ReportChargingProfiles,
            PayloadKind::Response,
            json!({}),
        );
        let empty = json!({"requestId": 3, "chargingLimitSource": "CSO", "evseId": 1,
            "chargingProfile": []});
        assert_eq!(
            refused(v, Action::ReportChargingProfiles, empty),
            (
                ErrorCode::OccurrenceConstraintViolation,
                "/chargingProfile".into()
            )
        );
        assert_eq!(
            refused(v, Action::GetChargingProfiles, json!({"requestId": 3})),
            (
                ErrorCode::OccurrenceConstraintViolation,
                "/chargingProfile".into()
            )
        );
    }
    let other = json!({"requestId": 3, "chargingLimitSource": "Aggregator", "evseId": 1,
        "chargingProfile": [profile()]});
    validate(
        OcppVersion::V21,
        Action::ReportChargingProfiles,
        PayloadKind::Request,
        &other,
    )
    .unwrap();
    assert_eq!(
        refused(OcppVersion::V201, Action::ReportChargingProfiles, other),
        (
            ErrorCode::PropertyConstraintViolation,
            "/chargingLimitSource".into()
        )
    );
}

#[test]
fn clear_charging_profile_both_ways() {
    for v in BOTH {
        let by_criteria = json!({"chargingProfileCriteria": {"evseId": 1, "chargingProfilePurpose": "TxDefaultProfile"}});
        round_trip(
            v,
            Action::ClearChargingProfile,
            PayloadKind::Request,
            by_criteria,
        );
        round_trip(
            v,
            Action::ClearChargingProfile,
            PayloadKind::Request,
            json!({"chargingProfileId": 9}),
        );
        round_trip(
            v,
            Action::ClearChargingProfile,
            PayloadKind::Response,
            json!({"status": "Unknown"}),
        );
        assert_eq!(
            refused(
                v,
                Action::ClearChargingProfile,
                json!({"chargingProfileId": "9"})
            ),
            (
                ErrorCode::TypeConstraintViolation,
                "/chargingProfileId".into()
            )
        );
    }
}

#[test]
fn notify_ev_charging_schedule_both_ways() {
    for v in BOTH {
        let req = json!({"timeBase": "2026-12-08T02:00:00Z", "evseId": 1,
            "chargingSchedule": {"id": 3, "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.0},
                                           {"startPeriod": 1800, "limit": 7000.0}]}});
        round_trip(
            v,
            Action::NotifyEVChargingSchedule,
            PayloadKind::Request,
            req,
        );
        let no = json!({"status": "Rejected", "statusInfo": {"reasonCode": "UnknownTransaction"}});
        round_trip(
            v,
            Action::NotifyEVChargingSchedule,
            PayloadKind::Response,
            no,
        );
        let missing = json!({"evseId": 1, "chargingSchedule": {"id": 3,
            "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 1.0}]}});
        assert_eq!(
            refused(v, Action::NotifyEVChargingSchedule, missing),
            (ErrorCode::OccurrenceConstraintViolation, "/timeBase".into())
        );
    }
    // 2.1 only: the schedule the EV selected.
    let selected = json!({"timeBase": "2026-12-08T02:00:00Z", "evseId": 1,
        "selectedChargingScheduleId": 1, "powerToleranceAcceptance": true,
        "chargingSchedule": {"id": 3, "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.0}]}});
    round_trip(
        OcppVersion::V21,
        Action::NotifyEVChargingSchedule,
        PayloadKind::Request,
        selected.clone(),
    );
    assert_eq!(
        refused(
            OcppVersion::V201,
            Action::NotifyEVChargingSchedule,
            selected
        )
        .0,
        ErrorCode::FormatViolation
    );
}

#[test]
fn an_ev_energy_offer_is_typed_in_2_1_needs() {
    let req = json!({"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "DC_BPT",
        "evEnergyOffer": {"evPowerSchedule": {"timeAnchor": "2026-12-08T02:00:00Z",
            "evPowerScheduleEntries": [{"duration": 1800, "power": -10000.0}]}}}});
    round_trip(
        OcppVersion::V21,
        Action::NotifyEVChargingNeeds,
        PayloadKind::Request,
        req.clone(),
    );
    let Value::Object(map) = req else { panic!() };
    let Request::NotifyEVChargingNeeds(r) =
        Request::from_payload(Action::NotifyEVChargingNeeds, map).unwrap()
    else {
        panic!("not NotifyEVChargingNeeds")
    };
    let offer = r.charging_needs.ev_energy_offer.expect("typed offer");
    let e = &offer.ev_power_schedule.ev_power_schedule_entries[0];
    assert_eq!((e.duration, e.power), (1800, -10_000.0));
    assert!(r.charging_needs.extra.is_empty());
}
