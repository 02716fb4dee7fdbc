//! Provisioning payloads: BootNotification, Heartbeat, StatusNotification, GetVariables,
//! SetVariables, Reset.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::*;
use super::enums::*;

/// OCPP `ModemType`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Modem {
    /// SIM card ICCID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iccid: Option<String>,
    /// SIM card IMSI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imsi: Option<String>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `ChargingStationType`: what the station says it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingStation {
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Model (at most 20 characters).
    pub model: String,
    /// Modem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modem: Option<Modem>,
    /// Vendor (at most 50 characters).
    pub vendor_name: String,
    /// Firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// BootNotification request: the station (re)started and asks to be registered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootNotificationRequest {
    /// The station.
    pub charging_station: ChargingStation,
    /// Why it booted.
    pub reason: BootReason,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// BootNotification response: registration verdict and heartbeat interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootNotificationResponse {
    /// The CSMS's clock.
    pub current_time: DateTime,
    /// Heartbeat interval in seconds (or retry delay when not accepted).
    pub interval: i32,
    /// The verdict.
    pub status: RegistrationStatus,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<StatusInfo>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Heartbeat request (no fields besides `customData`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Heartbeat response: the CSMS's clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// The CSMS's clock.
    pub current_time: DateTime,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// StatusNotification request: a connector changed state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusNotificationRequest {
    /// When the state changed.
    pub timestamp: DateTime,
    /// The new state.
    pub connector_status: ConnectorStatus,
    /// EVSE id.
    pub evse_id: i32,
    /// Connector id on that EVSE.
    pub connector_id: i32,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// StatusNotification response (empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusNotificationResponse {
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `GetVariableDataType`: one variable to read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetVariableData {
    /// Which attribute (default `Actual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_type: Option<AttributeType>,
    /// The component.
    pub component: Component,
    /// The variable.
    pub variable: Variable,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// GetVariables request: read device-model variables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetVariablesRequest {
    /// Variables to read (at least one).
    pub get_variable_data: Vec<GetVariableData>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `GetVariableResultType`: one variable read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetVariableResult {
    /// Whether the read succeeded.
    pub attribute_status: GetVariableStatus,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_status_info: Option<StatusInfo>,
    /// Which attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_type: Option<AttributeType>,
    /// The value read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_value: Option<String>,
    /// The component.
    pub component: Component,
    /// The variable.
    pub variable: Variable,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// GetVariables response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetVariablesResponse {
    /// One result per requested variable.
    pub get_variable_result: Vec<GetVariableResult>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `SetVariableDataType`: one variable to write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetVariableData {
    /// Which attribute (default `Actual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_type: Option<AttributeType>,
    /// The value to write.
    pub attribute_value: String,
    /// The component.
    pub component: Component,
    /// The variable.
    pub variable: Variable,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// SetVariables request: write device-model variables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetVariablesRequest {
    /// Variables to write (at least one).
    pub set_variable_data: Vec<SetVariableData>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `SetVariableResultType`: one variable written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetVariableResult {
    /// Which attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_type: Option<AttributeType>,
    /// Whether the write succeeded.
    pub attribute_status: SetVariableStatus,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_status_info: Option<StatusInfo>,
    /// The component.
    pub component: Component,
    /// The variable.
    pub variable: Variable,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// SetVariables response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetVariablesResponse {
    /// One result per written variable.
    pub set_variable_result: Vec<SetVariableResult>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Reset request: restart the station or one EVSE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResetRequest {
    /// When to reset.
    #[serde(rename = "type")]
    pub kind: ResetType,
    /// Only this EVSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evse_id: Option<i32>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Reset response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResetResponse {
    /// Whether the station will reset.
    pub status: ResetStatus,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<StatusInfo>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
