//! Smart charging payloads: SetChargingProfile, ClearChargingProfile, NotifyEVChargingNeeds,
//! with OCPP 2.1's V2X fields (discharge limits, setpoints, operation modes).
//!
//! Sign convention (OCPP 2.1): positive power or current is charging (energy into the EV),
//! negative is discharging; `dischargeLimit` is never positive.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::*;
use super::enums::*;

/// OCPP `LimitAtSoCType` (2.1): a limit that applies above a state of charge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitAtSoc {
    /// State of charge in percent.
    pub soc: i32,
    /// Limit in the schedule's unit.
    pub limit: f64,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `V2XFreqWattPointType` (2.1): a point of a frequency–power curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V2xFreqWattPoint {
    /// Grid frequency in Hz.
    pub frequency: f64,
    /// Power in W (negative = discharge).
    pub power: f64,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `V2XSignalWattPointType` (2.1): a point of a signal–power curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V2xSignalWattPoint {
    /// Signal value.
    pub signal: i32,
    /// Power in W (negative = discharge).
    pub power: f64,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `ChargingSchedulePeriodType`: what applies from `start_period` on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingSchedulePeriod {
    /// Seconds from the schedule's start.
    pub start_period: i32,
    /// Charging limit (required in 2.0.1, optional in 2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// Limit on phase 2 (2.1).
    #[serde(default, rename = "limit_L2", skip_serializing_if = "Option::is_none")]
    pub limit_l2: Option<f64>,
    /// Limit on phase 3 (2.1).
    #[serde(default, rename = "limit_L3", skip_serializing_if = "Option::is_none")]
    pub limit_l3: Option<f64>,
    /// Phases to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_phases: Option<i32>,
    /// The phase to use when `number_phases` is 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_to_use: Option<i32>,
    /// Discharge limit, ≤ 0 (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discharge_limit: Option<f64>,
    /// Discharge limit on phase 2 (2.1).
    #[serde(
        default,
        rename = "dischargeLimit_L2",
        skip_serializing_if = "Option::is_none"
    )]
    pub discharge_limit_l2: Option<f64>,
    /// Discharge limit on phase 3 (2.1).
    #[serde(
        default,
        rename = "dischargeLimit_L3",
        skip_serializing_if = "Option::is_none"
    )]
    pub discharge_limit_l3: Option<f64>,
    /// Power or current setpoint, negative = discharge (2.1, with `CentralSetpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setpoint: Option<f64>,
    /// Setpoint on phase 2 (2.1).
    #[serde(
        default,
        rename = "setpoint_L2",
        skip_serializing_if = "Option::is_none"
    )]
    pub setpoint_l2: Option<f64>,
    /// Setpoint on phase 3 (2.1).
    #[serde(
        default,
        rename = "setpoint_L3",
        skip_serializing_if = "Option::is_none"
    )]
    pub setpoint_l3: Option<f64>,
    /// Reactive power setpoint (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setpoint_reactive: Option<f64>,
    /// Reactive setpoint on phase 2 (2.1).
    #[serde(
        default,
        rename = "setpointReactive_L2",
        skip_serializing_if = "Option::is_none"
    )]
    pub setpoint_reactive_l2: Option<f64>,
    /// Reactive setpoint on phase 3 (2.1).
    #[serde(
        default,
        rename = "setpointReactive_L3",
        skip_serializing_if = "Option::is_none"
    )]
    pub setpoint_reactive_l3: Option<f64>,
    /// Ask the EV to precondition (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preconditioning_request: Option<bool>,
    /// Let the EVSE sleep (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evse_sleep: Option<bool>,
    /// Baseline for frequency / signal curves (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v2x_baseline: Option<f64>,
    /// V2X operation mode (2.1; absent means `ChargingOnly`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_mode: Option<OperationMode>,
    /// Frequency–power curve (2.1, `LocalFrequency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v2x_freq_watt_curve: Option<Vec<V2xFreqWattPoint>>,
    /// Signal–power curve (2.1, `CentralFrequency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v2x_signal_watt_curve: Option<Vec<V2xSignalWattPoint>>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `ChargingScheduleType`: periods in one unit, from a start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingSchedule {
    /// Schedule id.
    pub id: i32,
    /// Absolute start (for `Absolute` profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_schedule: Option<DateTime>,
    /// Duration in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i32>,
    /// W or A.
    pub charging_rate_unit: ChargingRateUnit,
    /// Minimum rate the EV supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_charging_rate: Option<f64>,
    /// Allowed deviation from setpoints (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_tolerance: Option<f64>,
    /// Limit above a state of charge (2.1).
    #[serde(
        default,
        rename = "limitAtSoC",
        skip_serializing_if = "Option::is_none"
    )]
    pub limit_at_soc: Option<LimitAtSoc>,
    /// Signature id (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_id: Option<i32>,
    /// Digest (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_value: Option<String>,
    /// Times are local (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_local_time: Option<bool>,
    /// Random delay in seconds (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub randomized_delay: Option<i32>,
    /// The periods (1 to 1024), by increasing `start_period`.
    pub charging_schedule_period: Vec<ChargingSchedulePeriod>,
    /// Unmodelled fields (`salesTariff`, `absolutePriceSchedule`, `priceLevelSchedule`,
    /// `customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `ChargingProfileType`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingProfile {
    /// Profile id; a profile with the same id replaces this one.
    pub id: i32,
    /// Priority within its purpose (higher wins).
    pub stack_level: i32,
    /// What the profile is for.
    pub charging_profile_purpose: ChargingProfilePurpose,
    /// How its schedule is anchored in time.
    pub charging_profile_kind: ChargingProfileKind,
    /// Daily or weekly, for `Recurring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurrency_kind: Option<RecurrencyKind>,
    /// Valid from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<DateTime>,
    /// Valid until; afterwards the station ignores the profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<DateTime>,
    /// Transaction it applies to (for `TxProfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// Seconds offline after which the profile is dropped (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_offline_duration: Option<i32>,
    /// Whether going offline longer than `max_offline_duration` invalidates it (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_after_offline_duration: Option<bool>,
    /// Update interval in seconds for `Dynamic` profiles (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dyn_update_interval: Option<i32>,
    /// Last update of a `Dynamic` profile (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dyn_update_time: Option<DateTime>,
    /// Price schedule signature (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_schedule_signature: Option<String>,
    /// The schedules (1 to 3).
    pub charging_schedule: Vec<ChargingSchedule>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// SetChargingProfile request: install (or replace, by id) a charging profile on an EVSE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetChargingProfileRequest {
    /// EVSE (0 = the whole station).
    pub evse_id: i32,
    /// The profile.
    pub charging_profile: ChargingProfile,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// SetChargingProfile response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetChargingProfileResponse {
    /// Accepted or rejected.
    pub status: ChargingProfileStatus,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<StatusInfo>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `ClearChargingProfileType`: which profiles to clear.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClearChargingProfileCriteria {
    /// On this EVSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evse_id: Option<i32>,
    /// With this purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging_profile_purpose: Option<ChargingProfilePurpose>,
    /// At this stack level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_level: Option<i32>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// ClearChargingProfile request: by id, or by criteria.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClearChargingProfileRequest {
    /// The profile id to clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging_profile_id: Option<i32>,
    /// Criteria for the profiles to clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging_profile_criteria: Option<ClearChargingProfileCriteria>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// ClearChargingProfile response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClearChargingProfileResponse {
    /// Accepted, or Unknown when nothing matched.
    pub status: ClearChargingProfileStatus,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<StatusInfo>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `ACChargingParametersType`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcChargingParameters {
    /// Energy requested in Wh.
    pub energy_amount: f64,
    /// Minimum current per phase in A.
    pub ev_min_current: f64,
    /// Maximum current per phase in A.
    pub ev_max_current: f64,
    /// Maximum voltage in V.
    pub ev_max_voltage: f64,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `DCChargingParametersType`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DcChargingParameters {
    /// Maximum current in A.
    pub ev_max_current: f64,
    /// Maximum voltage in V.
    pub ev_max_voltage: f64,
    /// Maximum power in W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ev_max_power: Option<f64>,
    /// Battery capacity in Wh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ev_energy_capacity: Option<f64>,
    /// Energy requested in Wh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_amount: Option<f64>,
    /// State of charge in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_of_charge: Option<i32>,
    /// State of charge considered full.
    #[serde(default, rename = "fullSoC", skip_serializing_if = "Option::is_none")]
    pub full_soc: Option<i32>,
    /// State of charge where bulk charging ends.
    #[serde(default, rename = "bulkSoC", skip_serializing_if = "Option::is_none")]
    pub bulk_soc: Option<i32>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `V2XChargingParametersType` (2.1): the EV's bidirectional limits (per-phase `_L2`/`_L3`
/// fields are kept in `extra`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V2xChargingParameters {
    /// Minimum charge power in W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_charge_power: Option<f64>,
    /// Maximum charge power in W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_charge_power: Option<f64>,
    /// Minimum discharge power in W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_discharge_power: Option<f64>,
    /// Maximum discharge power in W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_discharge_power: Option<f64>,
    /// Minimum charge current in A.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_charge_current: Option<f64>,
    /// Maximum charge current in A.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_charge_current: Option<f64>,
    /// Minimum discharge current in A.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_discharge_current: Option<f64>,
    /// Maximum discharge current in A.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_discharge_current: Option<f64>,
    /// Minimum voltage in V.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_voltage: Option<f64>,
    /// Maximum voltage in V.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_voltage: Option<f64>,
    /// Energy to reach the target in Wh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ev_target_energy_request: Option<f64>,
    /// Energy to reach the minimum in Wh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ev_min_energy_request: Option<f64>,
    /// Energy to reach the maximum in Wh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ev_max_energy_request: Option<f64>,
    /// Energy to the minimum V2X level in Wh.
    #[serde(
        default,
        rename = "evMinV2XEnergyRequest",
        skip_serializing_if = "Option::is_none"
    )]
    pub ev_min_v2x_energy_request: Option<f64>,
    /// Energy to the maximum V2X level in Wh.
    #[serde(
        default,
        rename = "evMaxV2XEnergyRequest",
        skip_serializing_if = "Option::is_none"
    )]
    pub ev_max_v2x_energy_request: Option<f64>,
    /// Target state of charge in percent.
    #[serde(default, rename = "targetSoC", skip_serializing_if = "Option::is_none")]
    pub target_soc: Option<i32>,
    /// Unmodelled fields (per-phase values, `customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `ChargingNeedsType`: what the EV needs (from ISO 15118).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingNeeds {
    /// The energy transfer mode the EV asks for.
    pub requested_energy_transfer: EnergyTransferMode,
    /// Modes the EV supports (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_energy_transfer: Option<Vec<EnergyTransferMode>>,
    /// Scheduled or dynamic control (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_mode: Option<ControlMode>,
    /// Who decides the mobility needs (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobility_needs_mode: Option<MobilityNeedsMode>,
    /// When the driver leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departure_time: Option<DateTime>,
    /// AC parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ac_charging_parameters: Option<AcChargingParameters>,
    /// DC parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dc_charging_parameters: Option<DcChargingParameters>,
    /// V2X parameters (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v2x_charging_parameters: Option<V2xChargingParameters>,
    /// What the EV offers to discharge (2.1; boxed to keep `Request` small).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ev_energy_offer: Option<Box<EvEnergyOffer>>,
    /// Unmodelled fields (`derChargingParameters`, `customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `EVPowerScheduleEntryType` (2.1): a power for a duration; negative: the EV is willing
/// to discharge up to that much, positive: it offers nothing then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvPowerScheduleEntry {
    /// Seconds.
    pub duration: i32,
    /// W (negative: discharge).
    pub power: f64,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `EVPowerScheduleType` (2.1): the entries, one after another from `time_anchor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvPowerSchedule {
    /// 1 to 1024 entries.
    pub ev_power_schedule_entries: Vec<EvPowerScheduleEntry>,
    /// When the first entry starts.
    pub time_anchor: DateTime,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// OCPP `EVEnergyOfferType` (2.1): the energy the EV is willing to discharge over time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvEnergyOffer {
    /// The power schedule of the offer.
    pub ev_power_schedule: EvPowerSchedule,
    /// Unmodelled fields (`evAbsolutePriceSchedule`, `customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// NotifyEVChargingNeeds request: the EV's needs, to compute a schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyEVChargingNeedsRequest {
    /// EVSE id (≥ 1).
    pub evse_id: i32,
    /// Most schedule periods the EV accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_schedule_tuples: Option<i32>,
    /// The needs.
    pub charging_needs: ChargingNeeds,
    /// When the needs were received (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// NotifyEVChargingNeeds response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyEVChargingNeedsResponse {
    /// Whether a schedule will follow.
    pub status: NotifyEVChargingNeedsStatus,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<StatusInfo>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// NotifyEVChargingSchedule request: the schedule the EV computed (ISO 15118) for an EVSE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyEVChargingScheduleRequest {
    /// The schedule's periods are relative to this time.
    pub time_base: DateTime,
    /// The EV's schedule (boxed: it is large, and requests are moved around as one enum).
    pub charging_schedule: Box<ChargingSchedule>,
    /// EVSE id (≥ 1).
    pub evse_id: i32,
    /// The schedule the EV selected from the CSMS's profile (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_charging_schedule_id: Option<i32>,
    /// Whether the EV accepts the power tolerance (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_tolerance_acceptance: Option<bool>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// NotifyEVChargingSchedule response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyEVChargingScheduleResponse {
    /// Whether the CSMS took the schedule.
    pub status: GenericStatus,
    /// Why (a rejection names its reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<StatusInfo>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
