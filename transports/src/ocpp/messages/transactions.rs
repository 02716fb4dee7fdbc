//! Transaction payloads: TransactionEvent and MeterValues.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::*;
use super::enums::*;

/// OCPP `TransactionLimitType` (2.1): limits the CSMS set on a transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionLimit {
    /// Maximum cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
    /// Maximum energy in Wh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_energy: Option<f64>,
    /// Maximum duration in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time: Option<i32>,
    /// Maximum state of charge in percent.
    #[serde(default, rename = "maxSoC", skip_serializing_if = "Option::is_none")]
    pub max_soc: Option<i32>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `TransactionType`: the transaction an event belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transaction {
    /// Station-assigned id (at most 36 characters).
    pub transaction_id: String,
    /// Charging state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging_state: Option<ChargingState>,
    /// Seconds spent charging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_spent_charging: Option<i32>,
    /// Why the transaction stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<StopReason>,
    /// Id of the RequestStartTransaction that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_start_id: Option<i32>,
    /// V2X operation mode in force (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_mode: Option<OperationMode>,
    /// Tariff in use (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tariff_id: Option<String>,
    /// Limits in force (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_limit: Option<TransactionLimit>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// TransactionEvent request: a transaction started, changed or ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionEventRequest {
    /// Started, Updated or Ended.
    pub event_type: TransactionEventType,
    /// When it happened.
    pub timestamp: DateTime,
    /// What triggered the event.
    pub trigger_reason: TriggerReason,
    /// Sequence number within the transaction (detects lost events).
    pub seq_no: i32,
    /// Whether the event happened while the station was offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline: Option<bool>,
    /// Phases used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_phases_used: Option<i32>,
    /// Maximum current of the cable in A.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cable_max_current: Option<i32>,
    /// Reservation used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<i32>,
    /// Preconditioning state (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preconditioning_status: Option<PreconditioningStatus>,
    /// Whether the EVSE sleeps (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evse_sleep: Option<bool>,
    /// The transaction.
    pub transaction_info: Transaction,
    /// The EVSE (required on the first event of a transaction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evse: Option<Evse>,
    /// The token that authorised it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<IdToken>,
    /// Meter values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_value: Option<Vec<MeterValue>>,
    /// Unmodelled fields (`costDetails` of 2.1, `customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// TransactionEvent response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionEventResponse {
    /// Running or final cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost: Option<f64>,
    /// Priority of the transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging_priority: Option<i32>,
    /// Verdict on the token, when one was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token_info: Option<IdTokenInfo>,
    /// Limits (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_limit: Option<TransactionLimit>,
    /// Message to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_personal_message: Option<MessageContent>,
    /// Unmodelled fields (`updatedPersonalMessageExtra` of 2.1, `customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// MeterValues request: samples outside a transaction event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterValuesRequest {
    /// EVSE id (0 = the station's main meter).
    pub evse_id: i32,
    /// The samples (at least one).
    pub meter_value: Vec<MeterValue>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// MeterValues response (empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeterValuesResponse {
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
