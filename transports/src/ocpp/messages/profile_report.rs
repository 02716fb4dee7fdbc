//! Profile read-back payloads: GetChargingProfiles (the CSMS asks which profiles a station
//! holds; it answers Accepted or NoProfiles at once) and ReportChargingProfiles (the station's
//! later CALLs carrying them, `tbc` while more follow, all with the request's `requestId`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::*;
use super::enums::*;
use super::smart_charging::ChargingProfile;

/// OCPP `ChargingProfileCriterionType`: which profiles to report (all given criteria must
/// match; none given: every profile).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingProfileCriterion {
    /// With this purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging_profile_purpose: Option<ChargingProfilePurpose>,
    /// At this stack level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_level: Option<i32>,
    /// With one of these ids (at least one when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging_profile_id: Option<Vec<i32>>,
    /// Set by one of these sources (1 to 4; `EMS`, `Other`, `SO`, `CSO` in 2.0.1, any string
    /// of at most 20 characters in 2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging_limit_source: Option<Vec<String>>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// GetChargingProfiles request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetChargingProfilesRequest {
    /// Id the reports carry.
    pub request_id: i32,
    /// EVSE (0 = the station's own profiles; absent: every EVSE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evse_id: Option<i32>,
    /// Which profiles.
    pub charging_profile: ChargingProfileCriterion,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// GetChargingProfiles response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetChargingProfilesResponse {
    /// Accepted (reports follow) or NoProfiles.
    pub status: GetChargingProfileStatus,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_info: Option<StatusInfo>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// ReportChargingProfiles request: profiles of one EVSE and one source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportChargingProfilesRequest {
    /// The GetChargingProfiles request this answers.
    pub request_id: i32,
    /// Who set the profiles (`CSO` for a CSMS's).
    pub charging_limit_source: String,
    /// The profiles (at least one).
    pub charging_profile: Vec<ChargingProfile>,
    /// To be continued: more reports follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tbc: Option<bool>,
    /// The EVSE they are installed on.
    pub evse_id: i32,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// ReportChargingProfiles response (empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportChargingProfilesResponse {
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
