//! Property tests and a fuzz-style long run for the OCPP-J frame decoder, the schema validator
//! and typed payload decoding.
//!
//! The long run is cheap by default and scales with `GRIDVISOR_FUZZ_CASES` (default
//! [`DEFAULT_FUZZ_CASES`]); it mutates valid frames (bytes and JSON structure) with a seeded
//! generator, so a failure is reproducible from the printed seed and case number.

use gridvisor_transports::ocpp::frame::{
    ErrorCode, Frame, MessageId, RpcError, MAX_FRAME_BYTES, MAX_MESSAGE_ID_LEN,
};
use gridvisor_transports::ocpp::messages::{Action, Request, Response};
use gridvisor_transports::ocpp::schema::{validate, PayloadKind};
use gridvisor_transports::ocpp::OcppVersion;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Cases of the long run when `GRIDVISOR_FUZZ_CASES` is not set.
const DEFAULT_FUZZ_CASES: u64 = 5_000;

const VERSIONS: [OcppVersion; 2] = [OcppVersion::V201, OcppVersion::V21];

/// One valid request and response per action (valid for both versions unless noted).
fn samples() -> Vec<(Action, Value, Value)> {
    let t = "2026-03-01T12:00:00Z";
    let status =
        json!({"status": "Accepted", "statusInfo": {"reasonCode": "ok", "additionalInfo": "fine"}});
    let comp =
        json!({"name": "SmartChargingCtrlr", "instance": "1", "evse": {"id": 1, "connectorId": 1}});
    vec![
        (
            Action::Authorize,
            json!({"idToken": {"idToken": "04A1", "type": "ISO14443", "additionalInfo": [{"additionalIdToken": "x", "type": "y"}]}}),
            json!({"idTokenInfo": {"status": "Accepted", "evseId": [1, 2], "personalMessage": {"format": "UTF8", "content": "hi"}}}),
        ),
        (
            Action::BootNotification,
            json!({"chargingStation": {"model": "M", "vendorName": "V", "modem": {"iccid": "1"}}, "reason": "PowerUp", "customData": {"vendorId": "acme", "extra": [1]}}),
            json!({"currentTime": t, "interval": 300, "status": "Pending", "statusInfo": {"reasonCode": "wait"}}),
        ),
        (
            Action::ClearChargingProfile,
            json!({"chargingProfileCriteria": {"evseId": 1, "chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 8}}),
            json!({"status": "Unknown"}),
        ),
        (
            Action::GetVariables,
            json!({"getVariableData": [{"component": comp, "variable": {"name": "Enabled"}, "attributeType": "Actual"}]}),
            json!({"getVariableResult": [{"attributeStatus": "Accepted", "attributeValue": "true", "component": comp, "variable": {"name": "Enabled"}}]}),
        ),
        (Action::Heartbeat, json!({}), json!({"currentTime": t})),
        (
            Action::MeterValues,
            json!({"evseId": 1, "meterValue": [{"timestamp": t, "sampledValue": [{"value": 1.5, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent", "multiplier": 0}, "phase": "L1-N", "location": "EV", "context": "Sample.Periodic"}]}]}),
            json!({}),
        ),
        (
            Action::NotifyEVChargingNeeds,
            json!({"evseId": 1, "maxScheduleTuples": 3, "chargingNeeds": {"requestedEnergyTransfer": "AC_three_phase", "departureTime": t, "acChargingParameters": {"energyAmount": 20000, "evMinCurrent": 6, "evMaxCurrent": 32, "evMaxVoltage": 400}}}),
            json!({"status": "Processing"}),
        ),
        (
            Action::Reset,
            json!({"type": "OnIdle", "evseId": 2}),
            json!({"status": "Scheduled"}),
        ),
        (
            Action::SetChargingProfile,
            json!({"evseId": 1, "chargingProfile": {"id": 7, "stackLevel": 1, "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Relative", "transactionId": "tx-1",
                "chargingSchedule": [{"id": 1, "chargingRateUnit": "A", "minChargingRate": 6.0, "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0, "numberPhases": 3}, {"startPeriod": 600, "limit": 8.0}]}]}}),
            status.clone(),
        ),
        (
            Action::SetVariables,
            json!({"setVariableData": [{"attributeValue": "60", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}),
            json!({"setVariableResult": [{"attributeStatus": "RebootRequired", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}),
        ),
        (
            Action::StatusNotification,
            json!({"timestamp": t, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}),
            json!({}),
        ),
        (
            Action::TransactionEvent,
            json!({"eventType": "Updated", "timestamp": t, "triggerReason": "MeterValuePeriodic", "seqNo": 3, "offline": false,
                "transactionInfo": {"transactionId": "tx-1", "chargingState": "Charging", "timeSpentCharging": 60},
                "evse": {"id": 1}, "meterValue": [{"timestamp": t, "sampledValue": [{"value": 2500.0}]}]}),
            json!({"totalCost": 1.25, "chargingPriority": 0}),
        ),
    ]
}

/// 2.1-only samples (V2X).
fn samples_v21() -> Vec<(Action, Value)> {
    vec![
        (
            Action::SetChargingProfile,
            json!({"evseId": 1, "chargingProfile": {"id": 8, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Dynamic",
                "dynUpdateInterval": 60, "maxOfflineDuration": 300, "invalidAfterOfflineDuration": true,
                "chargingSchedule": [{"id": 2, "chargingRateUnit": "W", "limitAtSoC": {"soc": 80, "limit": 3000.0}, "chargingSchedulePeriod": [
                    {"startPeriod": 0, "setpoint": -7000.0, "dischargeLimit": -11000.0, "limit_L2": 1.0, "operationMode": "CentralSetpoint",
                     "v2xFreqWattCurve": [{"frequency": 49.8, "power": 5000.0}, {"frequency": 50.2, "power": -5000.0}]}]}]}}),
        ),
        (
            Action::NotifyEVChargingNeeds,
            json!({"evseId": 1, "timestamp": "2026-03-01T12:00:00Z", "chargingNeeds": {"requestedEnergyTransfer": "DC_BPT", "availableEnergyTransfer": ["DC", "DC_BPT"],
                "controlMode": "DynamicControl", "mobilityNeedsMode": "EVCC_SECC",
                "v2xChargingParameters": {"maxChargePower": 50000, "maxDischargePower": 30000, "evMinV2XEnergyRequest": -10000, "targetSoC": 80, "maxChargePower_L2": 1},
                "dcChargingParameters": {"evMaxCurrent": 200, "evMaxVoltage": 450, "fullSoC": 95, "bulkSoC": 80}}}),
        ),
        (
            Action::TransactionEvent,
            json!({"eventType": "Started", "timestamp": "2026-03-01T12:00:00Z", "triggerReason": "OperationModeChanged", "seqNo": 0, "preconditioningStatus": "Ready",
                "transactionInfo": {"transactionId": "tx-2", "operationMode": "CentralSetpoint", "transactionLimit": {"maxSoC": 90}},
                "costDetails": {"totalCost": {"currency": "EUR", "typeOfCost": "NormalCost", "total": {"inclTax": 1.0}}, "totalUsage": {"energy": 1.0, "chargingTime": 1, "idleTime": 0}}}),
        ),
    ]
}

/// Numbers as f64, so `20000` (integer in the sample) equals `20000.0` (an f64 field typed).
fn norm(v: &Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        Value::Array(a) => Value::Array(a.iter().map(norm).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), norm(v))).collect()),
        other => other.clone(),
    }
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[test]
fn samples_are_schema_valid_and_round_trip_through_the_types() {
    let mut checked = 0;
    for (action, request, response) in samples() {
        for v in VERSIONS {
            validate(v, action, PayloadKind::Request, &request).unwrap_or_else(|e| panic!("{e}"));
            validate(v, action, PayloadKind::Response, &response).unwrap_or_else(|e| panic!("{e}"));
        }
        let typed = Request::from_payload(action, obj(&request)).unwrap();
        assert_eq!(
            norm(&Value::Object(typed.to_payload().unwrap())),
            norm(&request),
            "{action} request"
        );
        let typed = Response::from_payload(action, obj(&response)).unwrap();
        assert_eq!(
            norm(&Value::Object(typed.to_payload().unwrap())),
            norm(&response),
            "{action} response"
        );
        checked += 1;
    }
    for (action, request) in samples_v21() {
        validate(OcppVersion::V21, action, PayloadKind::Request, &request)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            validate(OcppVersion::V201, action, PayloadKind::Request, &request).is_err(),
            "{action} is 2.1-only"
        );
        let typed = Request::from_payload(action, obj(&request)).unwrap();
        assert_eq!(
            norm(&Value::Object(typed.to_payload().unwrap())),
            norm(&request),
            "{action} 2.1 request"
        );
        checked += 1;
    }
    assert_eq!(checked, 15);
}

// ---------------------------------------------------------------- property tests

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,12}", inner, 0..8)
                .prop_map(|m: BTreeMap<String, Value>| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_id() -> impl Strategy<Value = MessageId> {
    "[-a-zA-Z0-9]{1,36}".prop_map(|s| MessageId::new(s).unwrap())
}

fn arb_map() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-zA-Z]{1,12}", arb_json(), 0..6)
        .prop_map(|m| m.into_iter().collect())
}

fn arb_error() -> impl Strategy<Value = RpcError> {
    (0..ErrorCode::ALL.len(), ".{0,255}", arb_map()).prop_map(|(i, d, details)| RpcError {
        code: ErrorCode::ALL[i],
        description: d,
        details,
    })
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (arb_id(), "[A-Za-z]{1,30}", arb_map()).prop_map(|(id, action, payload)| Frame::Call {
            id,
            action,
            payload
        }),
        (arb_id(), arb_map()).prop_map(|(id, payload)| Frame::CallResult { id, payload }),
        (arb_id(), arb_error()).prop_map(|(id, error)| Frame::CallError { id, error }),
        (arb_id(), arb_error()).prop_map(|(id, error)| Frame::CallResultError { id, error }),
        (arb_id(), "[A-Za-z]{1,30}", arb_map()).prop_map(|(id, action, payload)| Frame::Send {
            id,
            action,
            payload
        }),
    ]
}

fn check_error_invariants(text: &str, v: OcppVersion) {
    match Frame::decode(text, v) {
        Ok(frame) => {
            let again = Frame::decode(&frame.encode(), v)
                .expect("a decoded frame re-encodes to a decodable one");
            assert_eq!(again, frame);
        }
        Err(e) => {
            let answer = e.to_call_error();
            assert!(answer.id().as_str().chars().count() <= MAX_MESSAGE_ID_LEN);
            assert!(matches!(
                Frame::decode(&answer.encode(), v),
                Ok(Frame::CallError { .. })
            ));
            assert!(!e.to_string().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,300}") {
        for v in VERSIONS { check_error_invariants(&s, v); }
    }

    #[test]
    fn arbitrary_json_never_panics(j in arb_json()) {
        for v in VERSIONS { check_error_invariants(&j.to_string(), v); }
    }

    #[test]
    fn frame_shaped_json_never_panics(t in -2i64..9, id in arb_json(), rest in prop::collection::vec(arb_json(), 0..5)) {
        let mut items = vec![Value::from(t), id];
        items.extend(rest);
        for v in VERSIONS { check_error_invariants(&Value::Array(items.clone()).to_string(), v); }
    }

    #[test]
    fn encode_then_decode_is_identity(frame in arb_frame()) {
        let text = frame.encode();
        prop_assert!(text.len() < MAX_FRAME_BYTES);
        prop_assert_eq!(Frame::decode(&text, OcppVersion::V21).unwrap(), frame);
    }

    #[test]
    fn arbitrary_payloads_validate_and_type_without_panic(i in 0..Action::ALL.len(), p in arb_map()) {
        let action = Action::ALL[i];
        for v in VERSIONS {
            let value = Value::Object(p.clone());
            for kind in [PayloadKind::Request, PayloadKind::Response] {
                if let Err(e) = validate(v, action, kind, &value) {
                    prop_assert!(e.path.starts_with('/') || e.path.is_empty());
                }
            }
        }
        let _ = Request::from_payload(action, p.clone());
        let _ = Response::from_payload(action, p);
    }
}

// ---------------------------------------------------------------- fuzz-style long run

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn random_value(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 1),
        2 => Value::from(rng.next() as i64),
        3 => Value::from(-(rng.below(100_000) as f64) / 7.0),
        4 => Value::from("x".repeat(rng.below(60))),
        5 => Value::from("2026-13-45T99:99:99Z"),
        6 => json!([]),
        7 => json!({}),
        _ => Value::from(rng.below(3_000_000_000)),
    }
}

/// Mutates a JSON value in place at a random node.
fn mutate_json(v: &mut Value, rng: &mut Rng, depth: usize) {
    match v {
        Value::Object(m) if !m.is_empty() && depth < 8 && rng.below(4) != 0 => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.below(keys.len())];
            match rng.below(6) {
                0 => {
                    m.remove(k);
                }
                1 => {
                    m.insert(format!("extra{}", rng.below(9)), random_value(rng));
                }
                _ => {
                    if let Some(child) = m.get_mut(k) {
                        mutate_json(child, rng, depth + 1);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() && depth < 8 && rng.below(4) != 0 => match rng.below(5) {
            0 => {
                a.remove(rng.below(a.len()));
            }
            1 => {
                let i = rng.below(a.len());
                let dup = a[i].clone();
                a.push(dup);
            }
            _ => {
                let i = rng.below(a.len());
                mutate_json(&mut a[i], rng, depth + 1);
            }
        },
        _ => *v = random_value(rng),
    }
}

fn mutate_bytes(text: &str, other: &str, rng: &mut Rng) -> String {
    let mut b = text.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let len = b.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                b.insert(i, b"[]{}\",:0-9e\\"[rng.below(12)]);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let j = (i + rng.below(16)).min(len);
                b.drain(i..j);
            }
            3 => b.truncate(rng.below(len + 1)),
            4 => {
                let o = other.as_bytes();
                let i = rng.below(o.len() + 1);
                let j = (i + rng.below(64)).min(o.len());
                let at = rng.below(len + 1);
                b.splice(at..at, o[i..j].iter().copied());
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn fuzz_decoder_validator_and_types() {
    let cases: u64 = std::env::var("GRIDVISOR_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_FUZZ_CASES);
    let seed: u64 = std::env::var("GRIDVISOR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0CC9_2021);
    let mut rng = Rng(seed | 1);
    let mut seeds: Vec<Value> = Vec::new();
    for (i, (action, req, resp)) in samples().into_iter().enumerate() {
        seeds.push(json!([2, format!("s{i}"), action.as_str(), req]));
        seeds.push(json!([3, format!("r{i}"), resp]));
    }
    for (action, req) in samples_v21() {
        seeds.push(json!([2, "v21", action.as_str(), req]));
    }
    seeds.push(json!([4, "e", "GenericError", "boom", {}]));
    seeds.push(json!([5, "f", "InternalError", "", {"why": 1}]));
    seeds.push(json!([6, "g", "NotifyPeriodicEventStream", {}]));
    let texts: Vec<String> = seeds.iter().map(Value::to_string).collect();

    let mut decoded = 0u64;
    let mut schema_valid_calls = 0u64;
    let mut codes = std::collections::HashSet::new();
    let started = std::time::Instant::now();
    for case in 0..cases {
        let pick = rng.below(seeds.len());
        let text = if rng.below(2) == 0 {
            let mut v = seeds[pick].clone();
            for _ in 0..=rng.below(3) {
                mutate_json(&mut v, &mut rng, 0);
            }
            v.to_string()
        } else {
            let other = &texts[rng.below(texts.len())];
            mutate_bytes(&texts[pick], other, &mut rng)
        };
        let v = VERSIONS[rng.below(2)];
        let outcome = std::panic::catch_unwind(|| {
            check_error_invariants(&text, v);
            match Frame::decode(&text, v) {
                Ok(Frame::Call {
                    action, payload, ..
                }) => {
                    let Some(action) = Action::parse(&action) else {
                        return (true, None, false);
                    };
                    let value = Value::Object(payload.clone());
                    match validate(v, action, PayloadKind::Request, &value) {
                        Ok(()) => {
                            // Schema-valid: typing may only fail on a number beyond the
                            // 32-bit OCPP integer, never panic; what types round-trips.
                            if let Ok(typed) = Request::from_payload(action, payload) {
                                let again =
                                    Request::from_payload(action, typed.to_payload().unwrap())
                                        .unwrap();
                                assert_eq!(again, typed);
                            }
                            (true, None, true)
                        }
                        Err(e) => (true, Some(e.code), false),
                    }
                }
                Ok(_) => (true, None, false),
                Err(e) => (false, Some(e.code()), false),
            }
        });
        match outcome {
            Ok((ok, code, valid)) => {
                decoded += u64::from(ok);
                schema_valid_calls += u64::from(valid);
                if let Some(c) = code {
                    codes.insert(c);
                }
            }
            Err(_) => panic!("case {case} (seed {seed}) panicked on input {text:?}"),
        }
    }
    eprintln!(
        "fuzz: {cases} cases in {:?}: {decoded} decoded, {schema_valid_calls} schema-valid calls, codes seen {codes:?}",
        started.elapsed()
    );
    if cases >= 1_000 {
        // The run is not vacuous: it reaches valid frames, valid payloads and many error kinds.
        assert!(decoded > cases / 20, "too few inputs decoded: {decoded}");
        assert!(
            schema_valid_calls > 0,
            "no schema-valid call reached the typed decoder"
        );
        assert!(codes.len() >= 5, "too few error codes exercised: {codes:?}");
    }
}
