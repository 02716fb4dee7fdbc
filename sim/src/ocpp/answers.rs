//! How a simulated charge point answers the CSMS's CALLs, as functions of its state.
//!
//! Device-model variables (GetVariables / SetVariables), component / variable:
//! - `OCPPCommCtrlr` / `HeartbeatInterval`: seconds, read-write, in
//!   [`MIN_INTERVAL_SECS`]..=[`MAX_INTERVAL_SECS`];
//! - `SampledDataCtrlr` / `TxUpdatedInterval`: the meter value interval in seconds, read-write,
//!   same bounds;
//! - `SmartChargingCtrlr` / `DefaultLimit` and `OfflineLimit`: charge power in W with no
//!   profile in force, online and offline, read-write, in 0..=the hardware limit (simulator
//!   variables, not OCPP's standard list);
//! - `SmartChargingCtrlr` / `AppliedProfile`: read-only, the read-back of the setpoint in
//!   force: `none`, or a JSON object
//!   `{"id","stackLevel","evseId","scheduleId","validTo","setpointW","limitW","dischargeLimitW"}`
//!   (absent fields omitted). This stands in for GetChargingProfiles, which the transports crate
//!   does not model;
//! - `EVSE` / `Power`: read-only, the power delivered now in W (negative = discharge).
//!
//! Remote control and read-back (issue 21):
//! - RequestStartTransaction: with a vehicle plugged in and no transaction reported started,
//!   `Accepted`, then a TransactionEvent(Started, `RemoteStart`) with the given token and
//!   `remoteStartId`; a `TxProfile` it carries is installed first. `Rejected` with a reason
//!   otherwise: `NoEVConnected` (this simulator does not hold a remote start until a vehicle
//!   comes), `TxInProgress` (with the running `transactionId`), `UnknownEvse`,
//!   `InvalidProfile`;
//! - RequestStopTransaction of the running transaction: `Accepted`, then
//!   TransactionEvent(Ended, `RemoteStop`, stopped reason `Remote`); the vehicle stays plugged
//!   in. Another id: `Rejected` (`UnknownTransaction`);
//! - TriggerMessage StatusNotification, MeterValues, Heartbeat: `Accepted`, then the message;
//!   any other: `NotImplemented`;
//! - GetChargingProfiles: the installed profiles matching every given criterion
//!   (`NoProfiles` when none), reported in one ReportChargingProfiles (source `CSO`);
//! - ClearChargingProfile: by id, EVSE, purpose and stack level.
//!
//! What follows an answer (a CALL of the charge point's own) is returned as a [`FollowUp`].
//!
//! Invariants: every CALL gets exactly one answer; a value that cannot be applied is answered
//! `Rejected` with a reason, never clamped silently.

use std::time::Duration;

use gridvisor_transports::ocpp::frame::{ErrorCode, RpcError};
use gridvisor_transports::ocpp::messages::*;
use serde_json::{json, Map, Value};

use super::profile::{Installed, InstalledProfile};
use super::state::SimState;

/// Shortest heartbeat / meter interval accepted, seconds.
pub const MIN_INTERVAL_SECS: u64 = 1;
/// Longest heartbeat / meter interval accepted, seconds (one day).
pub const MAX_INTERVAL_SECS: u64 = 86_400;

/// What answering a CALL did besides answering.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Nothing else.
    None,
    /// A profile was installed (or was already, identical).
    ProfileInstalled {
        /// Profile id.
        id: i32,
        /// What changed.
        change: Installed,
    },
    /// A profile was refused.
    ProfileRejected {
        /// Profile id.
        id: i32,
        /// Why.
        reason: String,
    },
    /// Variables were written (intervals may have changed).
    VariablesChanged,
    /// Profiles were cleared.
    ProfilesCleared(usize),
    /// The CSMS asked for a reset: close and reconnect after answering.
    Reset,
    /// The answer asks for a CALL of the charge point's own.
    Follow(FollowUp),
}

/// A CALL the charge point makes because of an answer it gave.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowUp {
    /// StatusNotification (TriggerMessage).
    Status,
    /// MeterValues (TriggerMessage).
    Meter,
    /// Heartbeat (TriggerMessage).
    Heartbeat,
    /// TransactionEvent(Started, RemoteStart) of the transaction just set up.
    StartRemote,
    /// TransactionEvent(Ended, RemoteStop) of the running transaction.
    StopRemote,
    /// ReportChargingProfiles (GetChargingProfiles).
    Report(Box<ReportChargingProfilesRequest>),
}

fn status_info(reason_code: &str, info: String) -> Option<StatusInfo> {
    Some(StatusInfo {
        reason_code: reason_code.to_owned(),
        additional_info: Some(info.chars().take(1024).collect()),
        extra: Map::new(),
    })
}

/// Answers one CSMS CALL against `state`, for the charge point's `evse_id`.
pub fn answer(
    state: &mut SimState,
    evse_id: i32,
    request: &Request,
) -> (Result<Response, RpcError>, Effect) {
    match request {
        Request::SetChargingProfile(r) => set_charging_profile(state, evse_id, r),
        Request::RequestStartTransaction(r) => request_start(state, evse_id, r),
        Request::RequestStopTransaction(r) => request_stop(state, r),
        Request::TriggerMessage(r) => trigger(r),
        Request::GetChargingProfiles(r) => get_charging_profiles(state, r),
        Request::ClearChargingProfile(r) => {
            let c = r.charging_profile_criteria.as_ref();
            let n = state.profiles.clear(
                r.charging_profile_id,
                c.and_then(|c| c.evse_id),
                c.and_then(|c| c.stack_level),
                c.and_then(|c| c.charging_profile_purpose),
            );
            let status = if n > 0 {
                ClearChargingProfileStatus::Accepted
            } else {
                ClearChargingProfileStatus::Unknown
            };
            let response = ClearChargingProfileResponse {
                status,
                status_info: None,
                extra: Map::new(),
            };
            (Ok(response.into()), Effect::ProfilesCleared(n))
        }
        Request::GetVariables(r) => {
            let results = r
                .get_variable_data
                .iter()
                .map(|d| get_variable(state, d))
                .collect();
            let response = GetVariablesResponse {
                get_variable_result: results,
                extra: Map::new(),
            };
            (Ok(response.into()), Effect::None)
        }
        Request::SetVariables(r) => {
            let results = r
                .set_variable_data
                .iter()
                .map(|d| set_variable(state, d))
                .collect();
            let response = SetVariablesResponse {
                set_variable_result: results,
                extra: Map::new(),
            };
            (Ok(response.into()), Effect::VariablesChanged)
        }
        Request::Reset(_) => {
            let response = ResetResponse {
                status: ResetStatus::Accepted,
                status_info: None,
                extra: Map::new(),
            };
            (Ok(response.into()), Effect::Reset)
        }
        other => (
            Err(RpcError::new(
                ErrorCode::NotSupported,
                format!(
                    "the simulated charge point does not handle {}",
                    other.action()
                ),
            )),
            Effect::None,
        ),
    }
}

fn start_answer(
    status: RequestStartStopStatus,
    info: Option<StatusInfo>,
    transaction_id: Option<String>,
) -> Result<Response, RpcError> {
    Ok(RequestStartTransactionResponse {
        status,
        status_info: info,
        transaction_id,
        extra: Map::new(),
    }
    .into())
}

fn request_start(
    state: &mut SimState,
    evse_id: i32,
    r: &RequestStartTransactionRequest,
) -> (Result<Response, RpcError>, Effect) {
    let rejected = |code: &str, why: String, tx: Option<String>| {
        let info = status_info(code, why);
        (
            start_answer(RequestStartStopStatus::Rejected, info, tx),
            Effect::None,
        )
    };
    if r.evse_id.is_some_and(|e| e != evse_id) {
        return rejected(
            "UnknownEvse",
            format!("this charge point has EVSE {evse_id}"),
            None,
        );
    }
    if state.vehicle.is_none() {
        return rejected("NoEVConnected", "no vehicle is plugged in".to_owned(), None);
    }
    if let Some(t) = state.transaction.as_ref().filter(|t| t.started_sent) {
        let why = "a transaction is running".to_owned();
        return rejected("TxInProgress", why, Some(t.id.clone()));
    }
    if let Some(p) = &r.charging_profile {
        let installed = InstalledProfile::new(evse_id, p.clone(), state.now)
            .and_then(|p| state.profiles.install(p));
        if let Err(e) = installed {
            return rejected("InvalidProfile", e.to_string(), None);
        }
    }
    if state.transaction.is_none() {
        state.transactions_started += 1;
        state.transaction = Some(super::state::Transaction {
            id: format!("remote-{}", state.transactions_started),
            seq_no: 0,
            started_sent: false,
            began_offline: false,
            id_token: None,
            id_token_type: None,
            remote_start_id: None,
            needs: None,
        });
    }
    if let Some(t) = state.transaction.as_mut() {
        t.id_token = Some(r.id_token.id_token.clone());
        t.id_token_type = Some(r.id_token.kind.clone());
        t.remote_start_id = Some(r.remote_start_id);
    }
    let answer = start_answer(RequestStartStopStatus::Accepted, None, None);
    (answer, Effect::Follow(FollowUp::StartRemote))
}

fn request_stop(
    state: &SimState,
    r: &RequestStopTransactionRequest,
) -> (Result<Response, RpcError>, Effect) {
    let running = state
        .transaction
        .as_ref()
        .is_some_and(|t| t.started_sent && t.id == r.transaction_id);
    let (status, info, effect) = if running {
        let effect = Effect::Follow(FollowUp::StopRemote);
        (RequestStartStopStatus::Accepted, None, effect)
    } else {
        let why = format!("no transaction {:?} runs here", r.transaction_id);
        let info = status_info("UnknownTransaction", why);
        (RequestStartStopStatus::Rejected, info, Effect::None)
    };
    let response = RequestStopTransactionResponse {
        status,
        status_info: info,
        extra: Map::new(),
    };
    (Ok(response.into()), effect)
}

fn trigger(r: &TriggerMessageRequest) -> (Result<Response, RpcError>, Effect) {
    let follow = match r.requested_message {
        MessageTrigger::StatusNotification => Some(FollowUp::Status),
        MessageTrigger::MeterValues => Some(FollowUp::Meter),
        MessageTrigger::Heartbeat => Some(FollowUp::Heartbeat),
        _ => None,
    };
    let status = match follow {
        Some(_) => TriggerMessageStatus::Accepted,
        None => TriggerMessageStatus::NotImplemented,
    };
    let response = TriggerMessageResponse {
        status,
        status_info: None,
        extra: Map::new(),
    };
    (
        Ok(response.into()),
        follow.map_or(Effect::None, Effect::Follow),
    )
}

fn get_charging_profiles(
    state: &SimState,
    r: &GetChargingProfilesRequest,
) -> (Result<Response, RpcError>, Effect) {
    let c = &r.charging_profile;
    // Every profile of this simulator was set by the CSMS (source CSO).
    let from_cso = c
        .charging_limit_source
        .as_ref()
        .is_none_or(|s| s.iter().any(|s| s == "CSO"));
    let matching: Vec<&InstalledProfile> = state
        .profiles
        .iter()
        .filter(|p| from_cso && r.evse_id.is_none_or(|e| e == p.evse_id))
        .filter(|p| {
            c.charging_profile_purpose
                .is_none_or(|x| x == p.profile.charging_profile_purpose)
        })
        .filter(|p| c.stack_level.is_none_or(|x| x == p.profile.stack_level))
        .filter(|p| {
            c.charging_profile_id
                .as_ref()
                .is_none_or(|ids| ids.contains(&p.profile.id))
        })
        .collect();
    let status = if matching.is_empty() {
        GetChargingProfileStatus::NoProfiles
    } else {
        GetChargingProfileStatus::Accepted
    };
    let response = GetChargingProfilesResponse {
        status,
        status_info: None,
        extra: Map::new(),
    };
    let Some(first) = matching.first() else {
        return (Ok(response.into()), Effect::None);
    };
    // One report per EVSE; this charge point has one.
    let report = ReportChargingProfilesRequest {
        request_id: r.request_id,
        charging_limit_source: "CSO".to_owned(),
        charging_profile: matching.iter().map(|p| p.profile.clone()).collect(),
        tbc: Some(false),
        evse_id: first.evse_id,
        extra: Map::new(),
    };
    let effect = Effect::Follow(FollowUp::Report(Box::new(report)));
    (Ok(response.into()), effect)
}

fn set_charging_profile(
    state: &mut SimState,
    evse_id: i32,
    r: &SetChargingProfileRequest,
) -> (Result<Response, RpcError>, Effect) {
    let id = r.charging_profile.id;
    let reply = |status, info| -> Result<Response, RpcError> {
        Ok(SetChargingProfileResponse {
            status,
            status_info: info,
            extra: Map::new(),
        }
        .into())
    };
    if r.evse_id != 0 && r.evse_id != evse_id {
        let reason = format!(
            "no EVSE {} (this charge point has EVSE {evse_id})",
            r.evse_id
        );
        return (
            reply(
                ChargingProfileStatus::Rejected,
                status_info("UnknownEvse", reason.clone()),
            ),
            Effect::ProfileRejected { id, reason },
        );
    }
    let installed = InstalledProfile::new(r.evse_id, r.charging_profile.clone(), state.now)
        .and_then(|p| state.profiles.install(p));
    match installed {
        Ok(change) => {
            if change != Installed::Unchanged {
                state.profile_changes += 1;
            }
            (
                reply(ChargingProfileStatus::Accepted, None),
                Effect::ProfileInstalled { id, change },
            )
        }
        Err(e) => {
            let reason = e.to_string();
            (
                reply(
                    ChargingProfileStatus::Rejected,
                    status_info("InvalidProfile", reason.clone()),
                ),
                Effect::ProfileRejected { id, reason },
            )
        }
    }
}

/// The read-back of the profile in force (see the module docs).
pub fn applied_profile(state: &SimState) -> String {
    let Some(p) = state.profiles.active(state.now, state.offline_for()) else {
        return "none".to_owned();
    };
    let mut o = Map::new();
    o.insert("id".into(), json!(p.profile.id));
    o.insert("stackLevel".into(), json!(p.profile.stack_level));
    o.insert("evseId".into(), json!(p.evse_id));
    if let Some(s) = p.profile.charging_schedule.first() {
        o.insert("scheduleId".into(), json!(s.id));
    }
    if let Some(t) = &p.profile.valid_to {
        o.insert("validTo".into(), json!(t.as_str()));
    }
    let elapsed_period = p
        .profile
        .charging_schedule
        .first()
        .and_then(|s| s.charging_schedule_period.first());
    if let Some(period) = elapsed_period {
        for (k, v) in [
            ("setpointW", period.setpoint),
            ("limitW", period.limit),
            ("dischargeLimitW", period.discharge_limit),
        ] {
            if let Some(v) = v {
                o.insert(k.into(), json!(v));
            }
        }
    }
    Value::Object(o).to_string()
}

fn get_variable(state: &SimState, d: &GetVariableData) -> GetVariableResult {
    let value = match (d.component.name.as_str(), d.variable.name.as_str()) {
        ("OCPPCommCtrlr", "HeartbeatInterval") => {
            Ok(state.heartbeat_interval.as_secs().to_string())
        }
        ("SampledDataCtrlr", "TxUpdatedInterval") => Ok(state.meter_interval.as_secs().to_string()),
        ("SmartChargingCtrlr", "DefaultLimit") => Ok(watts(state.default_limit_kw)),
        ("SmartChargingCtrlr", "OfflineLimit") => Ok(watts(state.offline_limit_kw)),
        ("SmartChargingCtrlr", "AppliedProfile") => Ok(applied_profile(state)),
        ("EVSE", "Power") => Ok(watts(state.power_kw)),
        (c, _) if !KNOWN_COMPONENTS.contains(&c) => Err(GetVariableStatus::UnknownComponent),
        _ => Err(GetVariableStatus::UnknownVariable),
    };
    let (attribute_status, attribute_value) = match value {
        Ok(v) => (GetVariableStatus::Accepted, Some(v)),
        Err(s) => (s, None),
    };
    GetVariableResult {
        attribute_status,
        attribute_status_info: None,
        attribute_type: d.attribute_type,
        attribute_value,
        component: d.component.clone(),
        variable: d.variable.clone(),
        extra: Map::new(),
    }
}

const KNOWN_COMPONENTS: [&str; 4] = [
    "OCPPCommCtrlr",
    "SampledDataCtrlr",
    "SmartChargingCtrlr",
    "EVSE",
];

fn watts(kw: f64) -> String {
    format!("{}", (kw * 1000.0).round() + 0.0)
}

fn set_variable(state: &mut SimState, d: &SetVariableData) -> SetVariableResult {
    let v = d.attribute_value.trim();
    let interval = || -> Result<Duration, String> {
        v.parse::<u64>()
            .ok()
            .filter(|s| (MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(s))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                format!("{v:?} is not whole seconds in {MIN_INTERVAL_SECS}..={MAX_INTERVAL_SECS}")
            })
    };
    let max_w = state.max_power_kw * 1000.0;
    let limit = || -> Result<f64, String> {
        v.parse::<f64>()
            .ok()
            .filter(|w| w.is_finite() && (0.0..=max_w).contains(w))
            .map(|w| w / 1000.0)
            .ok_or_else(|| format!("{v:?} is not a power in W within 0..={max_w}"))
    };
    let outcome: Result<(), (SetVariableStatus, Option<String>)> =
        match (d.component.name.as_str(), d.variable.name.as_str()) {
            ("OCPPCommCtrlr", "HeartbeatInterval") => interval()
                .map(|i| state.heartbeat_interval = i)
                .map_err(|e| (SetVariableStatus::Rejected, Some(e))),
            ("SampledDataCtrlr", "TxUpdatedInterval") => interval()
                .map(|i| state.meter_interval = i)
                .map_err(|e| (SetVariableStatus::Rejected, Some(e))),
            ("SmartChargingCtrlr", "DefaultLimit") => limit()
                .map(|kw| state.default_limit_kw = kw)
                .map_err(|e| (SetVariableStatus::Rejected, Some(e))),
            ("SmartChargingCtrlr", "OfflineLimit") => limit()
                .map(|kw| state.offline_limit_kw = kw)
                .map_err(|e| (SetVariableStatus::Rejected, Some(e))),
            ("SmartChargingCtrlr", "AppliedProfile") | ("EVSE", "Power") => Err((
                SetVariableStatus::Rejected,
                Some("read-only variable".to_owned()),
            )),
            (c, _) if !KNOWN_COMPONENTS.contains(&c) => {
                Err((SetVariableStatus::UnknownComponent, None))
            }
            _ => Err((SetVariableStatus::UnknownVariable, None)),
        };
    let (attribute_status, info) = match outcome {
        Ok(()) => (SetVariableStatus::Accepted, None),
        Err((s, reason)) => (s, reason.and_then(|r| status_info("InvalidValue", r))),
    };
    SetVariableResult {
        attribute_type: d.attribute_type,
        attribute_status,
        attribute_status_info: info,
        component: d.component.clone(),
        variable: d.variable.clone(),
        extra: Map::new(),
    }
}
