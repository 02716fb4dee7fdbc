//! The grid API's OCPP actions on a charger (issue 21): `POST /api/v1/chargers/{id}/start`
//! (RequestStartTransaction) and `POST /api/v1/chargers/{id}/stop` (RequestStopTransaction),
//! role `controller`.
//!
//! A station that answered gets 200 with what it answered (`Accepted` or `Rejected` with its
//! reason code and detail); a request the node could not deliver gets an error naming why:
//! 400 a bad body or a field the station's OCPP version refuses (the schema's path), 404 no
//! such charger or no `[ocpp]`, 409 not connected or nothing to stop, 504 no answer within
//! the CALL bound (`OCPP_CALL_TIMEOUT`), 502 any other failure of the call.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gridvisor_actors::io::ocpp::{ActionError, RemoteStart};
use gridvisor_actors::runtime::Node;
use gridvisor_transports::ocpp::connection::CallError;
use gridvisor_transports::ocpp::messages::{ChargingProfile, IdToken};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Map;

use super::error;

/// `id_token` of a start: OCPP's `IdTokenType` in the API's spelling.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    /// `ISO14443`, `eMAID`, `Central`, ...
    #[serde(rename = "type")]
    kind: String,
    /// The identifier.
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    id_token: Token,
    #[serde(default)]
    evse_id: Option<i32>,
    /// An OCPP `ChargingProfileType` (camelCase, as on the wire).
    #[serde(default)]
    charging_profile: Option<ChargingProfile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StopBody {
    #[serde(default)]
    transaction_id: Option<String>,
}

fn parse<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| format!("{what}: {e}"))
}

fn no_ocpp() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no_ocpp",
        "this node runs no CSMS (its topology has no [ocpp] table)",
    )
}

fn action_error(e: ActionError) -> Response {
    let (status, kind) = match &e {
        ActionError::UnknownCharger(_) => (StatusCode::NOT_FOUND, "not_found"),
        ActionError::NotConnected(_) => (StatusCode::CONFLICT, "not_connected"),
        ActionError::NoTransaction(_) => (StatusCode::CONFLICT, "no_transaction"),
        ActionError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
        ActionError::Call {
            error: CallError::Timeout { .. },
            ..
        } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        ActionError::Call { .. } => (StatusCode::BAD_GATEWAY, "station_error"),
    };
    error(status, kind, e.to_string())
}

/// `POST /api/v1/chargers/{id}/start`.
pub(super) async fn start(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let body: StartBody = match parse("start request", &body) {
        Ok(b) => b,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_body", m),
    };
    for (field, v) in [
        ("id_token.type", &body.id_token.kind),
        ("id_token.value", &body.id_token.value),
    ] {
        if v.trim().is_empty() {
            let msg = format!("start request: {field} must not be empty");
            return error(StatusCode::BAD_REQUEST, "bad_body", msg);
        }
    }
    let Some(hub) = node.ocpp_hub().cloned() else {
        return no_ocpp();
    };
    let start = RemoteStart {
        id_token: IdToken {
            id_token: body.id_token.value,
            kind: body.id_token.kind,
            additional_info: None,
            extra: Map::new(),
        },
        evse_id: body.evse_id,
        charging_profile: body.charging_profile,
    };
    match hub.request_start(&id, start).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => action_error(e),
    }
}

/// `POST /api/v1/chargers/{id}/stop` (an empty body stops the transaction it reported).
pub(super) async fn stop(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let body: StopBody = if body.iter().all(u8::is_ascii_whitespace) {
        StopBody::default()
    } else {
        match parse("stop request", &body) {
            Ok(b) => b,
            Err(m) => return error(StatusCode::BAD_REQUEST, "bad_body", m),
        }
    };
    let Some(hub) = node.ocpp_hub().cloned() else {
        return no_ocpp();
    };
    match hub.request_stop(&id, body.transaction_id).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => action_error(e),
    }
}
