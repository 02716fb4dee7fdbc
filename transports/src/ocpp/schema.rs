//! Validation of payloads against the official OCPP JSON schemas (vendored, unmodified, in
//! `transports/schemas/{v201,v21}/`, embedded at compile time).
//!
//! Invariants:
//! - every modelled action has a request and a response schema for each version (checked by a
//!   test that compiles all of them);
//! - a violation maps to the CALLERROR code the OCPP-J specification defines for it and names
//!   the offending field by its JSON pointer; when several fields are wrong, the first one the
//!   validator reports is named (deterministic for a given payload);
//! - formats are checked (`date-time` in particular), as the schemas declare them.
//!
//! Code mapping (OCPP-J 2.0.1 §4.3): wrong JSON type → TypeConstraintViolation; missing
//! required field, too few or too many array items → OccurrenceConstraintViolation; value out
//! of range, not in the enumeration, too long, badly formatted → PropertyConstraintViolation;
//! unknown field and anything else → FormatViolation.

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::Validator;
use serde_json::{Map, Value};

use super::frame::ErrorCode;
use super::messages::Action;
use super::OcppVersion;

/// Which payload of an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// The CALL's payload.
    Request,
    /// The CALLRESULT's payload.
    Response,
}

/// A payload that breaks its schema.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{action} {kind:?} ({version}) violates its schema at `{path}`: {message}")]
pub struct SchemaViolation {
    /// The CALLERROR code OCPP prescribes for this violation.
    pub code: ErrorCode,
    /// The action.
    pub action: Action,
    /// Request or response.
    pub kind: PayloadKind,
    /// The version whose schema was used.
    pub version: OcppVersion,
    /// JSON pointer of the offending field (a missing required field is named as its would-be
    /// path, e.g. `/chargingStation/model`).
    pub path: String,
    /// The validator's description.
    pub message: String,
}

/// A vendored schema that does not compile (a build defect, found by the tests).
#[derive(Debug, Clone, thiserror::Error)]
#[error("schema {file} does not compile: {reason}")]
pub struct SchemaCompileError {
    /// The schema file.
    pub file: String,
    /// The compiler's description.
    pub reason: String,
}

macro_rules! schema_files {
    ($($name:ident),* $(,)?) => {
        /// (version, action, kind, file name, schema text) for every vendored schema.
        const SCHEMAS: &[(OcppVersion, Action, PayloadKind, &str, &str)] = &[
            $(
                (OcppVersion::V201, Action::$name, PayloadKind::Request,
                 concat!("v201/", stringify!($name), "Request.json"),
                 include_str!(concat!("../../schemas/v201/", stringify!($name), "Request.json"))),
                (OcppVersion::V201, Action::$name, PayloadKind::Response,
                 concat!("v201/", stringify!($name), "Response.json"),
                 include_str!(concat!("../../schemas/v201/", stringify!($name), "Response.json"))),
                (OcppVersion::V21, Action::$name, PayloadKind::Request,
                 concat!("v21/", stringify!($name), "Request.json"),
                 include_str!(concat!("../../schemas/v21/", stringify!($name), "Request.json"))),
                (OcppVersion::V21, Action::$name, PayloadKind::Response,
                 concat!("v21/", stringify!($name), "Response.json"),
                 include_str!(concat!("../../schemas/v21/", stringify!($name), "Response.json"))),
            )*
        ];
    };
}

schema_files!(
    Authorize,
    BootNotification,
    ClearChargingProfile,
    GetChargingProfiles,
    GetVariables,
    Heartbeat,
    MeterValues,
    NotifyEVChargingNeeds,
    NotifyEVChargingSchedule,
    ReportChargingProfiles,
    RequestStartTransaction,
    RequestStopTransaction,
    Reset,
    SetChargingProfile,
    SetVariables,
    StatusNotification,
    TransactionEvent,
    TriggerMessage,
);

type Registry = HashMap<(OcppVersion, Action, PayloadKind), Validator>;

static REGISTRY: OnceLock<Result<Registry, SchemaCompileError>> = OnceLock::new();

fn compile_all() -> Result<Registry, SchemaCompileError> {
    let mut map = HashMap::with_capacity(SCHEMAS.len());
    for (version, action, kind, file, text) in SCHEMAS {
        let err = |reason: String| SchemaCompileError {
            file: (*file).to_owned(),
            reason,
        };
        let schema: Value = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| err(e.to_string()))?;
        map.insert((*version, *action, *kind), validator);
    }
    Ok(map)
}

/// Compiles every schema (once per process); call at start-up so a defect shows early and the
/// first payload does not pay the compile time.
pub fn warm_up() -> Result<(), SchemaCompileError> {
    REGISTRY
        .get_or_init(compile_all)
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

/// Validates `payload` against the schema of (`version`, `action`, `kind`).
pub fn validate(
    version: OcppVersion,
    action: Action,
    kind: PayloadKind,
    payload: &Value,
) -> Result<(), SchemaViolation> {
    let violation = |code, path: String, message: String| SchemaViolation {
        code,
        action,
        kind,
        version,
        path,
        message,
    };
    let registry = match REGISTRY.get_or_init(compile_all) {
        Ok(r) => r,
        Err(e) => {
            return Err(violation(
                ErrorCode::InternalError,
                String::new(),
                e.to_string(),
            ))
        }
    };
    let Some(validator) = registry.get(&(version, action, kind)) else {
        return Err(violation(
            ErrorCode::InternalError,
            String::new(),
            "no schema registered".to_owned(),
        ));
    };
    let Some(error) = validator.iter_errors(payload).next() else {
        return Ok(());
    };
    let mut path = error.instance_path().to_string();
    let code = match error.kind() {
        ValidationErrorKind::Type { .. } => ErrorCode::TypeConstraintViolation,
        ValidationErrorKind::Required { property } => {
            path.push('/');
            path.push_str(property.as_str().unwrap_or("?"));
            ErrorCode::OccurrenceConstraintViolation
        }
        ValidationErrorKind::MinItems { .. } | ValidationErrorKind::MaxItems { .. } => {
            ErrorCode::OccurrenceConstraintViolation
        }
        ValidationErrorKind::Enum { .. }
        | ValidationErrorKind::MaxLength { .. }
        | ValidationErrorKind::MinLength { .. }
        | ValidationErrorKind::Maximum { .. }
        | ValidationErrorKind::Minimum { .. }
        | ValidationErrorKind::ExclusiveMaximum { .. }
        | ValidationErrorKind::ExclusiveMinimum { .. }
        | ValidationErrorKind::Pattern { .. }
        | ValidationErrorKind::Format { .. }
        | ValidationErrorKind::MultipleOf { .. } => ErrorCode::PropertyConstraintViolation,
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            if let Some(first) = unexpected.first() {
                path.push('/');
                path.push_str(first);
            }
            ErrorCode::FormatViolation
        }
        _ => ErrorCode::FormatViolation,
    };
    Err(violation(code, path, error.to_string()))
}

/// Validates a JSON object payload and hands it back (saves the caller a clone).
pub fn validate_object(
    version: OcppVersion,
    action: Action,
    kind: PayloadKind,
    payload: Map<String, Value>,
) -> Result<Map<String, Value>, SchemaViolation> {
    let value = Value::Object(payload);
    validate(version, action, kind, &value)?;
    match value {
        Value::Object(m) => Ok(m),
        // Unreachable: `value` was built as an object above.
        _ => Err(SchemaViolation {
            code: ErrorCode::InternalError,
            action,
            kind,
            version,
            path: String::new(),
            message: "payload is not an object".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: OcppVersion, a: Action, p: Value) -> Result<(), SchemaViolation> {
        validate(v, a, PayloadKind::Request, &p)
    }

    #[test]
    fn every_schema_compiles_and_is_registered() {
        warm_up().unwrap();
        for v in OcppVersion::PREFERENCE {
            for a in Action::ALL {
                for k in [PayloadKind::Request, PayloadKind::Response] {
                    let r = validate(v, *a, k, &json!({}));
                    if let Err(e) = r {
                        assert_ne!(e.code, ErrorCode::InternalError, "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn violations_map_to_codes_and_name_the_field() {
        let v = OcppVersion::V201;
        let boot =
            json!({"chargingStation": {"model": "m", "vendorName": "v"}, "reason": "PowerUp"});
        check(v, Action::BootNotification, boot).unwrap();

        let e = check(
            v,
            Action::BootNotification,
            json!({"chargingStation": {"vendorName": "v"}, "reason": "PowerUp"}),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.path.as_str()),
            (
                ErrorCode::OccurrenceConstraintViolation,
                "/chargingStation/model"
            )
        );

        let e = check(
            v,
            Action::BootNotification,
            json!({"chargingStation": {"model": 5, "vendorName": "v"}, "reason": "PowerUp"}),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.path.as_str()),
            (ErrorCode::TypeConstraintViolation, "/chargingStation/model")
        );

        let e = check(
            v,
            Action::BootNotification,
            json!({"chargingStation": {"model": "m", "vendorName": "v"}, "reason": "Bored"}),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.path.as_str()),
            (ErrorCode::PropertyConstraintViolation, "/reason")
        );

        let e = check(v, Action::BootNotification, json!({"chargingStation": {"model": "m".repeat(21), "vendorName": "v"}, "reason": "PowerUp"})).unwrap_err();
        assert_eq!(e.code, ErrorCode::PropertyConstraintViolation);

        let e = check(v, Action::Heartbeat, json!({"bogus": 1})).unwrap_err();
        assert_eq!(
            (e.code, e.path.as_str()),
            (ErrorCode::FormatViolation, "/bogus")
        );

        let e = check(v, Action::StatusNotification, json!({"timestamp": "yesterday", "connectorStatus": "Available", "evseId": 1, "connectorId": 1})).unwrap_err();
        assert_eq!(
            (e.code, e.path.as_str()),
            (ErrorCode::PropertyConstraintViolation, "/timestamp")
        );
    }

    #[test]
    fn v21_fields_are_refused_by_the_v201_schema() {
        let profile = json!({"evseId": 1, "chargingProfile": {"id": 1, "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": 1, "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "setpoint": -7000.0, "operationMode": "CentralSetpoint"}]}]}});
        check(
            OcppVersion::V21,
            Action::SetChargingProfile,
            profile.clone(),
        )
        .unwrap();
        let e = check(OcppVersion::V201, Action::SetChargingProfile, profile).unwrap_err();
        assert!(
            e.path
                .starts_with("/chargingProfile/chargingSchedule/0/chargingSchedulePeriod/0"),
            "{e}"
        );
    }
}
