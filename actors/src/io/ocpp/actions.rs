//! The CSMS's own OCPP actions beyond setpoints (issue 21): remote start and stop of a
//! transaction (for the grid API), TriggerMessage after a (re)connect, the standard profile
//! read-back (GetChargingProfiles answered by ReportChargingProfiles) and ClearChargingProfile
//! when a session ends.
//!
//! # Read-back capability
//! Each connection starts [`ReadBack::Unknown`]. The first read asks GetChargingProfiles for
//! the node's dispatch profiles (purpose `TxDefaultProfile`, stack level
//! [`DISPATCH_STACK_LEVEL`], EVSE [`EVSE_ID`]):
//! - an answer (`Accepted` then the ReportChargingProfiles, or `NoProfiles`) makes it
//!   [`ReadBack::Standard`], used from then on;
//! - a CALLERROR `NotImplemented` / `NotSupported` makes the reader try the simulator's
//!   `SmartChargingCtrlr/AppliedProfile` variable: answered, [`ReadBack::Variable`]; refused,
//!   [`ReadBack::Unsupported`] (the applied key is then unknown and the link re-sends, which
//!   the byte-identical profiles make harmless).
//!
//! A reconnect starts over (the station may have new firmware). While a CALL of the station is
//! being answered (OCPP-J: one outstanding CALL per side, so it cannot report meanwhile, and
//! a TransactionEvent's answer starts a session that reads the charger), a read skips the
//! standard read-back, asks the variable where it may exist, and learns nothing.
//!
//! # Reports
//! A read registers its `requestId` before the CALL, so a report that overtakes the CALLRESULT
//! is kept. Reports are collected until one arrives without `tbc`, within [`REPORT_TIMEOUT`]
//! and at most [`REPORTS_PER_REQUEST`] reports; a report for a request nobody waits for (late,
//! or never asked) is answered and dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gridvisor_transports::ocpp::connection::{CallError, Connection};
use gridvisor_transports::ocpp::frame::ErrorCode;
use gridvisor_transports::ocpp::messages::*;
use gridvisor_transports::ocpp::setpoint::DISPATCH_STACK_LEVEL;
use serde::Serialize;
use serde_json::Map;
use tokio::sync::oneshot;

use super::{lock, OcppHub, EVSE_ID, OCPP_CALL_TIMEOUT};
use crate::setpoint::SetpointKey;

/// How long a read waits for the ReportChargingProfiles after GetChargingProfiles was
/// accepted (the same bound as a CALL: a link never waits longer on a charge point).
pub const REPORT_TIMEOUT: Duration = OCPP_CALL_TIMEOUT;
/// The most ReportChargingProfiles one request collects (a longer `tbc` chain is an error).
pub const REPORTS_PER_REQUEST: usize = 16;
/// The most read-backs waiting for their reports at once, over all chargers (one per link is
/// the normal case; more means reports are being lost).
pub const PENDING_REPORTS_MAX: usize = 16_384;

/// How a charger's applied profile is read back (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadBack {
    /// Not yet learned on this connection.
    #[default]
    Unknown,
    /// GetChargingProfiles / ReportChargingProfiles.
    Standard,
    /// The simulator's `SmartChargingCtrlr/AppliedProfile` variable.
    Variable,
    /// Neither: the applied key is unknown.
    Unsupported,
}

/// What a read-back found in force.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// The key this node wrote it with, if it recognises it.
    pub key: Option<SetpointKey>,
    /// Its setpoint (or limit), kW.
    pub setpoint_kw: Option<f64>,
    /// Its `validTo`, on the node's clock.
    pub lease_until: Option<Duration>,
}

struct Pending {
    charger: String,
    profiles: Vec<ChargingProfile>,
    reports: usize,
    done: Option<oneshot::Sender<Result<Vec<ChargingProfile>, String>>>,
}

/// The hub's state for these actions.
#[derive(Default)]
pub(super) struct Actions {
    next_id: AtomicI32,
    pending: Mutex<HashMap<i32, Pending>>,
    read_back: Mutex<HashMap<String, ReadBack>>,
    /// Charger → CALLs of its being answered now (see [`OcppHub::answering`]).
    answering: Mutex<HashMap<String, usize>>,
}

impl Actions {
    fn next_id(&self) -> i32 {
        // Positive ids, wrapping long before i32::MAX is reached.
        self.next_id
            .fetch_add(1, Ordering::Relaxed)
            .rem_euclid(i32::MAX - 1)
            + 1
    }
}

/// Why an action could not be carried out (the station's own refusal is an answer, not this).
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No such charger on the site.
    #[error("no charger {0:?} on this site")]
    UnknownCharger(String),
    /// The charger has no live connection.
    #[error("charger {0:?} is not connected")]
    NotConnected(String),
    /// No transaction to stop, and none was named.
    #[error("charger {0:?} has no transaction running (name one with transaction_id)")]
    NoTransaction(String),
    /// The request breaks the schema of the charger's OCPP version (not sent).
    #[error("charger {charger:?}: {error}")]
    Invalid {
        /// The charger.
        charger: String,
        /// The schema violation, naming the field.
        error: CallError,
    },
    /// The call failed (timeout, disconnect, CALLERROR, bad answer).
    #[error("charger {charger:?}: {error}")]
    Call {
        /// The charger.
        charger: String,
        /// What happened.
        error: CallError,
    },
}

/// A station's answer to a remote start or stop.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RemoteAnswer {
    /// `Accepted` or `Rejected`.
    pub status: &'static str,
    /// The station's reason code, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its free-text detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The transaction already running (start) or stopped (stop), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// The `remoteStartId` the transaction will carry (start only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_start_id: Option<i32>,
}

impl RemoteAnswer {
    fn new(status: RequestStartStopStatus, info: Option<StatusInfo>) -> RemoteAnswer {
        RemoteAnswer {
            status: status.as_str(),
            reason: info.as_ref().map(|i| i.reason_code.clone()),
            detail: info.and_then(|i| i.additional_info),
            transaction_id: None,
            remote_start_id: None,
        }
    }
}

/// A remote start: the token to start for, optionally the EVSE and a `TxProfile`.
#[derive(Clone, Debug)]
pub struct RemoteStart {
    /// The driver's or fleet's token.
    pub id_token: IdToken,
    /// EVSE (None: the station chooses).
    pub evse_id: Option<i32>,
    /// A charging profile for the transaction.
    pub charging_profile: Option<ChargingProfile>,
}

fn not_supported(e: &CallError) -> bool {
    matches!(e, CallError::Rejected { error, .. }
        if matches!(error.code, ErrorCode::NotImplemented | ErrorCode::NotSupported))
}

impl OcppHub {
    fn live(&self, cp: &str) -> Result<Connection, ActionError> {
        if !self.configured(cp) {
            return Err(ActionError::UnknownCharger(cp.to_owned()));
        }
        self.connection(cp)
            .map_err(|_| ActionError::NotConnected(cp.to_owned()))
    }

    async fn act<R: OcppRequest>(&self, cp: &str, req: R) -> Result<R::Response, ActionError> {
        let conn = self.live(cp)?;
        let answer = conn.call(req).await;
        answer.map_err(|error| self.action_error(cp, error))
    }

    /// An optional action ([`Connection::call_optional`]): it never delays a read or a
    /// setpoint of the charger's link.
    async fn act_optional<R: OcppRequest>(
        &self,
        cp: &str,
        req: R,
    ) -> Result<R::Response, ActionError> {
        let conn = self.live(cp)?;
        let answer = conn.call_optional(req).await;
        answer.map_err(|error| self.action_error(cp, error))
    }

    fn action_error(&self, cp: &str, error: CallError) -> ActionError {
        match error {
            e @ CallError::InvalidRequest(_) => ActionError::Invalid {
                charger: cp.to_owned(),
                error: e,
            },
            error => ActionError::Call {
                charger: cp.to_owned(),
                error,
            },
        }
    }

    /// RequestStartTransaction on charger `cp`; the station's answer, Accepted or Rejected.
    pub async fn request_start(
        &self,
        cp: &str,
        start: RemoteStart,
    ) -> Result<RemoteAnswer, ActionError> {
        let remote_start_id = self.actions.next_id();
        let req = RequestStartTransactionRequest {
            evse_id: start.evse_id,
            group_id_token: None,
            id_token: start.id_token,
            remote_start_id,
            charging_profile: start.charging_profile,
            extra: Map::new(),
        };
        let r = self.act(cp, req).await?;
        let mut answer = RemoteAnswer::new(r.status, r.status_info);
        answer.transaction_id = r.transaction_id;
        answer.remote_start_id = Some(remote_start_id);
        tracing::info!(charger = %cp, status = answer.status, remote_start_id, "RequestStartTransaction answered");
        Ok(answer)
    }

    /// RequestStopTransaction on charger `cp`, of `transaction` (None: the one it reported).
    pub async fn request_stop(
        &self,
        cp: &str,
        transaction: Option<String>,
    ) -> Result<RemoteAnswer, ActionError> {
        self.live(cp)?;
        let id = transaction
            .or_else(|| self.reported(cp).and_then(|r| r.transaction))
            .ok_or_else(|| ActionError::NoTransaction(cp.to_owned()))?;
        let req = RequestStopTransactionRequest {
            transaction_id: id.clone(),
            extra: Map::new(),
        };
        let r = self.act(cp, req).await?;
        let mut answer = RemoteAnswer::new(r.status, r.status_info);
        answer.transaction_id = Some(id);
        tracing::info!(charger = %cp, status = answer.status, "RequestStopTransaction answered");
        Ok(answer)
    }

    /// TriggerMessage: ask charger `cp` to send `message` about the node's EVSE now, as an
    /// explicit request: an ordinary CALL, in turn with the link's reads and writes.
    pub async fn trigger(
        &self,
        cp: &str,
        message: MessageTrigger,
    ) -> Result<TriggerMessageStatus, ActionError> {
        Ok(self.act(cp, trigger_request(message)).await?.status)
    }

    /// TriggerMessage as a hint (the node's own, after a connect): an optional CALL that
    /// waits for a free slot, gives it up to any read or setpoint of the link
    /// ([`CallError::Preempted`]), and is bounded by [`super::TRIGGER_TIMEOUT`]. A station
    /// that never answers it delays nothing.
    pub async fn trigger_optional(
        &self,
        cp: &str,
        message: MessageTrigger,
    ) -> Result<TriggerMessageStatus, ActionError> {
        Ok(self
            .act_optional(cp, trigger_request(message))
            .await?
            .status)
    }

    /// After a (re)connect: trigger StatusNotification and MeterValues, so the node learns
    /// the station's state without waiting for its next ones. Runs in the background; each
    /// call is optional (bounded by [`super::TRIGGER_TIMEOUT`], preempted by the link's
    /// reads and writes); the outcome is logged.
    pub(super) fn after_attach(self: &Arc<Self>, cp: &str) {
        lock(&self.actions.read_back).insert(cp.to_owned(), ReadBack::Unknown);
        let hub = Arc::clone(self);
        let cp = cp.to_owned();
        tokio::spawn(async move {
            for m in [
                MessageTrigger::StatusNotification,
                MessageTrigger::MeterValues,
            ] {
                match hub.trigger_optional(&cp, m).await {
                    Ok(status) => {
                        tracing::debug!(charger = %cp, message = m.as_str(), status = status.as_str(), "TriggerMessage answered")
                    }
                    // Preempted by the link's own read: the station has the trigger all the
                    // same (it acts on it; only its answer goes unheard).
                    Err(ActionError::Call {
                        error: e @ CallError::Preempted { .. },
                        ..
                    }) => {
                        tracing::debug!(charger = %cp, message = m.as_str(), error = %e, "TriggerMessage preempted")
                    }
                    Err(e) => {
                        tracing::info!(charger = %cp, message = m.as_str(), error = %e, "TriggerMessage failed")
                    }
                }
            }
        });
    }

    /// After a transaction ended on `cp`: clear the node's dispatch profiles there
    /// (ClearChargingProfile by EVSE, purpose and stack level), in the background.
    pub(super) fn after_session_end(self: &Arc<Self>, cp: &str) {
        let hub = Arc::clone(self);
        let cp = cp.to_owned();
        tokio::spawn(async move {
            match hub.clear_dispatch_profiles(&cp).await {
                Ok(status) => {
                    tracing::info!(charger = %cp, status = status.as_str(), "session ended: dispatch profiles cleared")
                }
                Err(e) => {
                    tracing::info!(charger = %cp, error = %e, "session ended: ClearChargingProfile failed")
                }
            }
        });
    }

    /// ClearChargingProfile of the node's dispatch profiles on `cp`.
    pub async fn clear_dispatch_profiles(
        &self,
        cp: &str,
    ) -> Result<ClearChargingProfileStatus, ActionError> {
        let req = ClearChargingProfileRequest {
            charging_profile_id: None,
            charging_profile_criteria: Some(ClearChargingProfileCriteria {
                evse_id: Some(EVSE_ID),
                charging_profile_purpose: Some(ChargingProfilePurpose::TxDefaultProfile),
                stack_level: Some(DISPATCH_STACK_LEVEL),
                extra: Map::new(),
            }),
            extra: Map::new(),
        };
        Ok(self.act(cp, req).await?.status)
    }

    /// Marks a CALL of `cp` as being answered until the guard drops (`attach`'s handler).
    pub(super) fn answering_call(&self, cp: &str) -> Answering<'_> {
        *lock(&self.actions.answering)
            .entry(cp.to_owned())
            .or_default() += 1;
        Answering(self, cp.to_owned())
    }

    /// Whether a CALL of `cp` is being answered now. OCPP-J allows one outstanding CALL per
    /// side, so while the node answers one (a TransactionEvent whose session start reads the
    /// charger), the station cannot send a ReportChargingProfiles: a read then must not wait
    /// for one (it would wait out [`REPORT_TIMEOUT`]).
    pub fn answering(&self, cp: &str) -> bool {
        lock(&self.actions.answering).contains_key(cp)
    }

    /// How `cp`'s applied profile is read on its current connection.
    pub fn read_back(&self, cp: &str) -> ReadBack {
        lock(&self.actions.read_back)
            .get(cp)
            .copied()
            .unwrap_or_default()
    }

    pub(super) fn set_read_back(&self, cp: &str, mode: ReadBack) {
        let mut m = lock(&self.actions.read_back);
        if m.get(cp) != Some(&mode) {
            tracing::info!(charger = %cp, read_back = ?mode, "profile read-back learned");
            m.insert(cp.to_owned(), mode);
        }
    }

    /// GetChargingProfiles for the node's dispatch profiles on `cp`, and the profiles its
    /// ReportChargingProfiles carried. `Ok(None)`: the station does not support the action.
    pub async fn dispatch_profiles(
        &self,
        cp: &str,
        conn: &Connection,
    ) -> Result<Option<Vec<ChargingProfile>>, CallError> {
        let request_id = self.actions.next_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.actions.pending);
            if pending.len() >= PENDING_REPORTS_MAX {
                pending.retain(|_, p| p.done.as_ref().is_some_and(|d| !d.is_closed()));
            }
            pending.insert(
                request_id,
                Pending {
                    charger: cp.to_owned(),
                    profiles: Vec::new(),
                    reports: 0,
                    done: Some(tx),
                },
            );
        }
        let _unregister = Unregister(self, request_id);
        let req = GetChargingProfilesRequest {
            request_id,
            evse_id: Some(EVSE_ID),
            charging_profile: ChargingProfileCriterion {
                charging_profile_purpose: Some(ChargingProfilePurpose::TxDefaultProfile),
                stack_level: Some(DISPATCH_STACK_LEVEL),
                ..Default::default()
            },
            extra: Map::new(),
        };
        let status = match conn.call(req).await {
            Ok(r) => r.status,
            Err(e) if not_supported(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        if status == GetChargingProfileStatus::NoProfiles {
            return Ok(Some(Vec::new()));
        }
        match tokio::time::timeout(REPORT_TIMEOUT, rx).await {
            Ok(Ok(Ok(profiles))) => Ok(Some(profiles)),
            Ok(Ok(Err(why))) => Err(CallError::Rejected {
                action: Action::ReportChargingProfiles,
                error: gridvisor_transports::ocpp::frame::RpcError::new(
                    ErrorCode::OccurrenceConstraintViolation,
                    why,
                ),
            }),
            Ok(Err(_)) | Err(_) => Err(CallError::Timeout {
                action: Action::ReportChargingProfiles,
                after: REPORT_TIMEOUT,
            }),
        }
    }

    /// The node's dispatch profiles installed on `cp`, as its ReportChargingProfiles said
    /// (`Ok(None)`: it does not support GetChargingProfiles).
    pub async fn charging_profiles(
        &self,
        cp: &str,
    ) -> Result<Option<Vec<ChargingProfile>>, ActionError> {
        let conn = self.live(cp)?;
        self.dispatch_profiles(cp, &conn)
            .await
            .map_err(|error| ActionError::Call {
                charger: cp.to_owned(),
                error,
            })
    }

    /// A ReportChargingProfiles from `cp` (the `answer` arm): added to its request's
    /// collection; the last one (no `tbc`) completes it.
    pub(super) fn take_report(&self, cp: &str, r: ReportChargingProfilesRequest) {
        let mut pending = lock(&self.actions.pending);
        let Some(p) = pending.get_mut(&r.request_id).filter(|p| p.charger == cp) else {
            tracing::debug!(charger = %cp, request_id = r.request_id, "ReportChargingProfiles for no pending request: dropped");
            return;
        };
        p.reports += 1;
        if r.evse_id == EVSE_ID {
            p.profiles.extend(r.charging_profile);
        }
        let result = if p.reports > REPORTS_PER_REQUEST {
            Some(Err(format!(
                "more than {REPORTS_PER_REQUEST} ReportChargingProfiles for one request"
            )))
        } else if r.tbc != Some(true) {
            Some(Ok(std::mem::take(&mut p.profiles)))
        } else {
            None
        };
        if let Some(result) = result {
            if let Some(done) = p.done.take() {
                let _ = done.send(result);
            }
            pending.remove(&r.request_id);
        }
    }

    /// What is in force among `profiles` at `now_wall`: the one with the highest stack level
    /// (then id) whose `validTo` is later, as the station chooses.
    pub(super) fn applied_of(
        &self,
        cp: &str,
        profiles: &[ChargingProfile],
        now_wall: SystemTime,
    ) -> Applied {
        let valid_to =
            |p: &ChargingProfile| p.valid_to.as_ref().and_then(|t| parse_date_time(t).ok());
        let Some(p) = profiles
            .iter()
            .filter(|p| valid_to(p).is_none_or(|t| t > now_wall))
            .max_by_key(|p| (p.stack_level, p.id))
        else {
            return Applied::default();
        };
        let schedule = p.charging_schedule.first();
        let period = schedule.and_then(|s| s.charging_schedule_period.first());
        let watts = schedule.is_some_and(|s| s.charging_rate_unit == ChargingRateUnit::W);
        Applied {
            key: self.recognise(cp, p.id, schedule.map(|s| s.id)),
            setpoint_kw: period
                .filter(|_| watts)
                .and_then(|x| x.setpoint.or(x.limit))
                .map(|w| w / 1000.0),
            lease_until: valid_to(p).map(|t| t.duration_since(self.epoch).unwrap_or_default()),
        }
    }

    /// The standard read-back on `conn`, learning the capability: `Ok(None)` when the
    /// station does not support it (the caller falls back to the variable).
    pub(super) async fn read_standard(
        &self,
        cp: &str,
        conn: &Connection,
    ) -> Result<Option<Applied>, CallError> {
        if matches!(
            self.read_back(cp),
            ReadBack::Variable | ReadBack::Unsupported
        ) {
            return Ok(None);
        }
        match self.dispatch_profiles(cp, conn).await? {
            Some(profiles) => {
                self.set_read_back(cp, ReadBack::Standard);
                Ok(Some(self.applied_of(cp, &profiles, self.now_wall())))
            }
            None => Ok(None),
        }
    }
}

/// TriggerMessage for `message` about the node's EVSE (its connector for a status).
fn trigger_request(message: MessageTrigger) -> TriggerMessageRequest {
    let connector = (message == MessageTrigger::StatusNotification).then_some(1);
    TriggerMessageRequest {
        requested_message: message,
        evse: Some(Evse {
            id: EVSE_ID,
            connector_id: connector,
            extra: Map::new(),
        }),
        custom_trigger: None,
        extra: Map::new(),
    }
}

/// Counts a CALL of a charger as being answered while it lives (dropped however the answer
/// ends).
pub(super) struct Answering<'a>(&'a OcppHub, String);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        let mut m = lock(&self.0.actions.answering);
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Removes a read's pending entry however the read ends (answered, timed out, cancelled).
struct Unregister<'a>(&'a OcppHub, i32);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        lock(&self.0.actions.pending).remove(&self.1);
    }
}
