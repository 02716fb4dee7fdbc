//! Remote control payloads: RequestStartTransaction, RequestStopTransaction and
//! TriggerMessage (the CSMS asks, the charge point answers).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::*;
use super::enums::*;
use super::smart_charging::ChargingProfile;

/// RequestStartTransaction request: start a transaction for `id_token`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestStartTransactionRequest {
    /// EVSE to start on (the station picks one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evse_id: Option<i32>,
    /// The group the token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id_token: Option<IdToken>,
    /// The token to start the transaction for.
    pub id_token: IdToken,
    /// Id the station echoes in the transaction's `remoteStartId`.
    pub remote_start_id: i32,
    /// A `TxProfile` to apply to the transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging_profile: Option<ChargingProfile>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// RequestStartTransaction response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestStartTransactionResponse {
    /// Accepted or Rejected.
    pub status: RequestStartStopStatus,
    /// Details (why it was rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<StatusInfo>,
    /// The transaction already running on the EVSE, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// RequestStopTransaction request: stop a running transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestStopTransactionRequest {
    /// The transaction (at most 36 characters).
    pub transaction_id: String,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// RequestStopTransaction response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestStopTransactionResponse {
    /// Accepted or Rejected.
    pub status: RequestStartStopStatus,
    /// Details (why it was rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<StatusInfo>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// TriggerMessage request: ask the station to send one of its messages now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerMessageRequest {
    /// The message to send.
    pub requested_message: MessageTrigger,
    /// The EVSE (or connector) it is about; absent: the whole station.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evse: Option<Evse>,
    /// The vendor trigger, with `CustomTrigger` (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_trigger: Option<String>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// TriggerMessage response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerMessageResponse {
    /// Accepted, Rejected or NotImplemented.
    pub status: TriggerMessageStatus,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<StatusInfo>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
