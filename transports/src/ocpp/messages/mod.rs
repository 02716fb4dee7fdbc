//! Typed request/response payloads for the OCPP actions gridvisor uses, one struct per
//! payload, valid for both OCPP 2.0.1 and 2.1 (fields that only 2.1 has are `Option`s).
//!
//! Invariants:
//! - serialisation writes camelCase names exactly as the schemas spell them and omits absent
//!   optional fields, so a struct built for 2.0.1 validates against the 2.0.1 schema;
//! - parts of the schemas gridvisor does not act on (tariffs, cost details, DER parameters,
//!   `customData`) are kept as raw JSON in an `extra` map on the enclosing struct: they are
//!   schema-validated like everything else and survive a decode → encode round trip;
//! - [`Action`] lists exactly the actions with vendored schemas, and [`Request`] / [`Response`]
//!   have one variant per action.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

/// Declares a string enumeration serialised as its OCPP spelling.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $wire)] $variant,)*
        }
        impl $name {
            /// The value as written on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)* }
            }
        }
    };
}

mod authorization;
mod common;
mod enums;
mod profile_report;
mod provisioning;
mod remote_control;
mod smart_charging;
mod transactions;

pub use authorization::*;
pub use common::*;
pub use enums::*;
pub use profile_report::*;
pub use provisioning::*;
pub use remote_control::*;
pub use smart_charging::*;
pub use transactions::*;

/// Who sends the CALL of an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// The charge point (charging station) calls, the CSMS answers.
    ChargePoint,
    /// The CSMS calls, the charge point answers.
    Csms,
}

/// A typed request payload: ties it to its action and its response type, so a connection can
/// send it and hand back the typed answer.
pub trait OcppRequest: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + 'static {
    /// The action this payload belongs to.
    const ACTION: Action;
    /// The answer's payload.
    type Response: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + 'static;
    /// Wraps the payload in the [`Request`] enum.
    fn into_request(self) -> Request;
    /// Takes the typed response out of the [`Response`] enum (`None` for another action's).
    fn response_from(response: Response) -> Option<Self::Response>;
}

/// Why a payload could not be turned into its typed struct (after schema validation, this means
/// the struct is stricter than the schema, e.g. an integer beyond 32 bits).
#[derive(Debug, thiserror::Error)]
#[error("{action} payload does not fit its type at `{path}`: {reason}")]
pub struct PayloadTypeError {
    /// The action.
    pub action: Action,
    /// JSON path of the offending field.
    pub path: String,
    /// serde's description.
    pub reason: String,
}

/// Serialises a payload struct into the JSON object a frame carries.
pub fn to_payload<T: Serialize>(
    action: Action,
    value: &T,
) -> Result<Map<String, Value>, PayloadTypeError> {
    match serde_json::to_value(value) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(PayloadTypeError {
            action,
            path: String::new(),
            reason: format!("serialised to a non-object: {other}"),
        }),
        Err(e) => Err(PayloadTypeError {
            action,
            path: String::new(),
            reason: e.to_string(),
        }),
    }
}

/// Deserialises a frame's JSON object into a payload struct, naming the offending field.
pub fn from_payload<T: DeserializeOwned>(
    action: Action,
    payload: Map<String, Value>,
) -> Result<T, PayloadTypeError> {
    serde_path_to_error::deserialize(Value::Object(payload)).map_err(|e| PayloadTypeError {
        action,
        path: e.path().to_string(),
        reason: e.inner().to_string(),
    })
}

macro_rules! actions {
    ($($name:ident: $req:ident => $resp:ident, $init:ident;)*) => {
        /// The OCPP actions this crate models (each has vendored 2.0.1 and 2.1 schemas).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Action {
            $(#[doc = concat!("`", stringify!($name), "`.")] $name,)*
        }

        impl Action {
            /// Every modelled action.
            pub const ALL: &'static [Action] = &[$(Action::$name,)*];

            /// The action name as written in a CALL.
            pub fn as_str(self) -> &'static str {
                match self { $(Action::$name => stringify!($name),)* }
            }

            /// Parses an action name; `None` for an action this crate does not model.
            pub fn parse(name: &str) -> Option<Action> {
                match name { $(stringify!($name) => Some(Action::$name),)* _ => None }
            }

            /// Who calls this action.
            pub fn initiator(self) -> Initiator {
                match self { $(Action::$name => Initiator::$init,)* }
            }
        }

        /// A typed request payload of any modelled action.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Request {
            $(#[doc = concat!("`", stringify!($name), "` request.")] $name($req),)*
        }

        /// A typed response payload of any modelled action.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Response {
            $(#[doc = concat!("`", stringify!($name), "` response.")] $name($resp),)*
        }

        impl Request {
            /// The request's action.
            pub fn action(&self) -> Action {
                match self { $(Request::$name(_) => Action::$name,)* }
            }
            /// The JSON object a CALL carries.
            pub fn to_payload(&self) -> Result<Map<String, Value>, PayloadTypeError> {
                match self { $(Request::$name(r) => to_payload(Action::$name, r),)* }
            }
            /// Decodes a (schema-validated) CALL payload of `action`.
            pub fn from_payload(action: Action, payload: Map<String, Value>) -> Result<Request, PayloadTypeError> {
                match action { $(Action::$name => from_payload(action, payload).map(Request::$name),)* }
            }
        }

        impl Response {
            /// The response's action.
            pub fn action(&self) -> Action {
                match self { $(Response::$name(_) => Action::$name,)* }
            }
            /// The JSON object a CALLRESULT carries.
            pub fn to_payload(&self) -> Result<Map<String, Value>, PayloadTypeError> {
                match self { $(Response::$name(r) => to_payload(Action::$name, r),)* }
            }
            /// Decodes a (schema-validated) CALLRESULT payload of `action`.
            pub fn from_payload(action: Action, payload: Map<String, Value>) -> Result<Response, PayloadTypeError> {
                match action { $(Action::$name => from_payload(action, payload).map(Response::$name),)* }
            }
        }

        $(
            impl OcppRequest for $req {
                const ACTION: Action = Action::$name;
                type Response = $resp;
                fn into_request(self) -> Request { Request::$name(self) }
                fn response_from(response: Response) -> Option<$resp> {
                    match response { Response::$name(r) => Some(r), #[allow(unreachable_patterns)] _ => None }
                }
            }
            impl From<$resp> for Response {
                fn from(r: $resp) -> Response { Response::$name(r) }
            }
        )*
    };
}

actions! {
    Authorize: AuthorizeRequest => AuthorizeResponse, ChargePoint;
    BootNotification: BootNotificationRequest => BootNotificationResponse, ChargePoint;
    ClearChargingProfile: ClearChargingProfileRequest => ClearChargingProfileResponse, Csms;
    GetChargingProfiles: GetChargingProfilesRequest => GetChargingProfilesResponse, Csms;
    GetVariables: GetVariablesRequest => GetVariablesResponse, Csms;
    Heartbeat: HeartbeatRequest => HeartbeatResponse, ChargePoint;
    MeterValues: MeterValuesRequest => MeterValuesResponse, ChargePoint;
    NotifyEVChargingNeeds: NotifyEVChargingNeedsRequest => NotifyEVChargingNeedsResponse, ChargePoint;
    NotifyEVChargingSchedule: NotifyEVChargingScheduleRequest => NotifyEVChargingScheduleResponse, ChargePoint;
    ReportChargingProfiles: ReportChargingProfilesRequest => ReportChargingProfilesResponse, ChargePoint;
    RequestStartTransaction: RequestStartTransactionRequest => RequestStartTransactionResponse, Csms;
    RequestStopTransaction: RequestStopTransactionRequest => RequestStopTransactionResponse, Csms;
    Reset: ResetRequest => ResetResponse, Csms;
    SetChargingProfile: SetChargingProfileRequest => SetChargingProfileResponse, Csms;
    SetVariables: SetVariablesRequest => SetVariablesResponse, Csms;
    StatusNotification: StatusNotificationRequest => StatusNotificationResponse, ChargePoint;
    TransactionEvent: TransactionEventRequest => TransactionEventResponse, ChargePoint;
    TriggerMessage: TriggerMessageRequest => TriggerMessageResponse, Csms;
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod actions_tests;
