//! The site aggregator: grid requests in, segment shares out, closed loop every cycle.
//!
//! A grid request names a scope (the site, a substation or a segment), a target at the
//! metering point in kW (negative = discharge) and a duration. The aggregator gives it a
//! dispatch id (increasing across node restarts: the counter is checkpointed before the id
//! is used) and, every cycle, closes the loop: the request's [`SiteController`] compares the
//! target with the metered power of the scope and commands a corrected total, which
//! [`split_by_headroom`] divides over the scope's segments (a segment near its thermal limit
//! gets less). Every cycle is a new revision of the dispatch, so every setpoint a device sees
//! is newer than the one before, and a replayed one is recognised.
//!
//! A request is answered when every device of its scope acknowledged the first revision
//! (or [`ROUND_LIMIT`] passed); the same request id posted again is answered with the first
//! receipt (idempotent at the API as well). A newer request whose scope overlaps an active
//! one replaces it. Segments no request covers hold their safe default.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gridvisor_supervisors::{CountedRef, Mailbox};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::shared::{lock, SiteShared};
use super::{DispatcherMsg, SessionMsg, SiteMsg, CALL_TIMEOUT};
use crate::control::{SiteConfig, SiteController};
use crate::dispatch::{split_by_headroom, SegmentCapacity};
use crate::ladder::{Fault, SafeState};
use crate::setpoint::SetpointKey;

/// The largest target a request may ask for, kW.
pub const MAX_REQUEST_KW: f64 = 1.0e6;
/// The longest a request may last, seconds.
pub const MAX_REQUEST_S: f64 = 7.0 * 86_400.0;
/// The longest request id accepted.
pub const MAX_REQUEST_ID: usize = 128;
/// How many receipts are kept to answer repeated request ids.
pub const RECEIPT_LIMIT: usize = 4_096;
/// How many requests may be active at once.
pub const ACTIVE_LIMIT: usize = 256;
/// How long a round may wait for its segments before it is answered with what arrived.
pub const ROUND_LIMIT: Duration = Duration::from_secs(3);
/// Weight of a new sample in the smoothed uncontrolled-load estimate (per round).
pub const UNCONTROLLED_SMOOTHING: f64 = 0.2;
/// How many callers may wait on rounds at once.
pub const WAITER_LIMIT: usize = 1_024;

/// Where a request applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The whole site.
    Site,
    /// One substation.
    Substation(String),
    /// One transformer segment.
    Segment(String),
}

/// A grid request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridRequest {
    /// The grid operator's id for it (a repeat of an id is answered with the first receipt).
    pub id: String,
    /// Where it applies.
    pub scope: Scope,
    /// Target at the metering point of the scope, kW (negative = discharge).
    pub target_kw: f64,
    /// How long it holds, seconds.
    pub duration_s: f64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum RequestError {
    /// A field is out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The scope names nothing in this site.
    #[error("scope: no {kind} named {id:?} in this site")]
    UnknownScope {
        /// substation or segment.
        kind: String,
        /// The id given.
        id: String,
    },
    /// Too much at once.
    #[error("busy: {what} is at its limit of {limit}")]
    Busy {
        /// Which limit.
        what: String,
        /// Its value.
        limit: usize,
    },
    /// The site aggregator is not running (it is restarting).
    #[error("the site aggregator is not running")]
    Unavailable,
    /// No segment of the scope is driven by this node now (in a cluster, the segment is
    /// moving between nodes): nothing would carry the request. Retry.
    #[error(
        "no segment of this scope is driven by this node now (it is moving between nodes); retry"
    )]
    NotDriven,
    /// The checkpoint store failed.
    #[error("checkpoint: {0}")]
    Storage(String),
}

/// One segment's answer to a round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentReceipt {
    /// The segment.
    pub segment: String,
    /// The key sent.
    pub key: SetpointKey,
    /// Its share, kW.
    pub target_kw: f64,
    /// The share after the segment's safe state, kW.
    pub clamped_kw: f64,
    /// Sum of the setpoints sent, kW.
    pub setpoint_kw: f64,
    /// The safe state it dispatched under.
    pub level: SafeState,
    /// Devices that applied the setpoint now.
    pub applied: usize,
    /// Devices that had applied it before.
    pub repeat: usize,
    /// Devices that refused it as stale.
    pub stale: usize,
    /// Devices that could not be written.
    pub failed: usize,
    /// Devices that did not answer in time.
    pub unanswered: usize,
    /// From dispatch to the last answer, ms.
    pub elapsed_ms: f64,
}

/// The answer to a grid request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DispatchReceipt {
    /// The request's id.
    pub request: String,
    /// The dispatch id it got.
    pub dispatch: u64,
    /// The revision acknowledged here (0: the first).
    pub revision: u64,
    /// The request's target, kW.
    pub target_kw: f64,
    /// Until when it holds (node clock, seconds).
    pub until_s: f64,
    /// Per segment.
    pub segments: Vec<SegmentReceipt>,
    /// Devices that acknowledged (applied or repeat).
    pub acknowledged: usize,
    /// Devices that did not (failed, stale, unanswered).
    pub not_acknowledged: usize,
    /// Power the scope could not take, kW.
    pub unallocated_kw: f64,
    /// Request received → every device acknowledged, ms.
    pub elapsed_ms: f64,
    /// True when this is the answer to a repeated request id.
    pub repeat: bool,
}

/// A vehicle session as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionView {
    /// The segment.
    pub segment: String,
    /// The charger.
    pub charger: String,
    /// The energy the vehicle will lack at its departure even at full charge power from
    /// now on, kWh (0 while its target can be met; see `Session::departure_shortfall_kwh`).
    pub departure_shortfall_kwh: f64,
    /// The session.
    #[serde(flatten)]
    pub status: super::shared::SessionStatus,
}

struct Active {
    request: GridRequest,
    dispatch: u64,
    until: Duration,
    segments: BTreeSet<String>,
    controller: SiteController,
    receipt_pending: bool,
    unallocated_kw: f64,
    last_command: Option<tokio::time::Instant>,
    /// The smoothed estimate of what the meters see besides our devices, kW.
    uncontrolled_kw: Option<f64>,
}

/// What a round needs to answer a request, kept with the round: the request may be replaced
/// or end before the round does, and its callers are answered all the same.
#[derive(Clone)]
struct Answer {
    id: String,
    dispatch: u64,
    target_kw: f64,
    until: Duration,
    segments: BTreeSet<String>,
    unallocated_kw: f64,
}

struct Round {
    key: SetpointKey,
    expected: BTreeSet<String>,
    received: Vec<SegmentReceipt>,
    started: tokio::time::Instant,
    /// The requests answered by this round (their first revision).
    answers: Vec<Answer>,
}

/// Why a round starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoundKind {
    /// The control period elapsed (skipped while a round is still collecting).
    Tick,
    /// A new grid request: revision 0 of its dispatch id.
    NewRequest,
    /// A safe-state change: move power to where it is allowed now.
    Redispatch,
}

pub(crate) struct Site;

pub(crate) struct SiteState {
    shared: Arc<SiteShared>,
    mailbox: Mailbox,
    dispatch_seq: u64,
    revision: u64,
    active: Vec<Active>,
    receipts: HashMap<String, DispatchReceipt>,
    receipt_order: VecDeque<String>,
    waiters: HashMap<String, Vec<RpcReplyPort<Result<DispatchReceipt, RequestError>>>>,
    received_at: HashMap<String, tokio::time::Instant>,
    round: Option<Round>,
    last_cycle: Option<tokio::time::Instant>,
    skipped_ticks: u64,
    redispatch_pending: bool,
    /// An arrivals task is running.
    arrivals_running: Arc<std::sync::atomic::AtomicBool>,
    timer: Option<JoinHandle<()>>,
}

/// The checkpoint key of the dispatch counter.
pub(crate) const DISPATCH_SEQ_KEY: &str = "site/dispatch_seq";

impl SiteState {
    fn scope_segments(&self, scope: &Scope) -> Result<BTreeSet<String>, RequestError> {
        let t = &self.shared.topology;
        let segs: BTreeSet<String> = match scope {
            Scope::Site => t.segments().map(|(_, s)| s.id.clone()).collect(),
            Scope::Substation(id) => {
                let sub = t.substations.iter().find(|s| &s.id == id).ok_or_else(|| {
                    RequestError::UnknownScope {
                        kind: "substation".into(),
                        id: id.clone(),
                    }
                })?;
                sub.segments.iter().map(|s| s.id.clone()).collect()
            }
            Scope::Segment(id) => {
                if t.segment(id).is_none() {
                    return Err(RequestError::UnknownScope {
                        kind: "segment".into(),
                        id: id.clone(),
                    });
                }
                [id.clone()].into()
            }
        };
        // In a cluster each node drives only its own segments of a wider scope (the
        // cluster's router gives each node its share of the target); the segments of other
        // nodes must not take a share here that no device would carry.
        let owned = lock(&self.shared.owned);
        let driven: BTreeSet<String> = segs.into_iter().filter(|s| owned.contains(s)).collect();
        if driven.is_empty() {
            return Err(RequestError::NotDriven);
        }
        Ok(driven)
    }

    fn validate(&self, r: &GridRequest) -> Result<BTreeSet<String>, RequestError> {
        let invalid = |field: &str, message: String| RequestError::Invalid {
            field: field.into(),
            message,
        };
        if r.id.is_empty() || r.id.len() > MAX_REQUEST_ID {
            return Err(invalid(
                "id",
                format!("must be 1..={MAX_REQUEST_ID} characters"),
            ));
        }
        if !r.target_kw.is_finite() || r.target_kw.abs() > MAX_REQUEST_KW {
            return Err(invalid(
                "target_kw",
                format!("{} is not within ±{MAX_REQUEST_KW} kW", r.target_kw),
            ));
        }
        if !r.duration_s.is_finite() || r.duration_s <= 0.0 || r.duration_s > MAX_REQUEST_S {
            return Err(invalid(
                "duration_s",
                format!("{} is not within (0, {MAX_REQUEST_S}] s", r.duration_s),
            ));
        }
        self.scope_segments(&r.scope)
    }

    async fn request(
        &mut self,
        myself: &ActorRef<SiteMsg>,
        r: GridRequest,
        reply: RpcReplyPort<Result<DispatchReceipt, RequestError>>,
    ) {
        if let Some(done) = self.receipts.get(&r.id) {
            let mut again = done.clone();
            again.repeat = true;
            let _ = reply.send(Ok(again));
            return;
        }
        if let Some(w) = self.waiters.get_mut(&r.id) {
            w.push(reply);
            return;
        }
        let segments = match self.validate(&r) {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if self.waiters.len() >= WAITER_LIMIT {
            let _ = reply.send(Err(RequestError::Busy {
                what: "requests waiting for acknowledgement".into(),
                limit: WAITER_LIMIT,
            }));
            return;
        }
        // A newer request replaces the active ones it overlaps.
        self.active.retain(|a| a.segments.is_disjoint(&segments));
        if self.active.len() >= ACTIVE_LIMIT {
            let _ = reply.send(Err(RequestError::Busy {
                what: "active requests".into(),
                limit: ACTIVE_LIMIT,
            }));
            return;
        }
        // Past the floor too: a segment adopted from another node carries its keys.
        let next = self.dispatch_seq.max(
            self.shared
                .dispatch_floor
                .load(std::sync::atomic::Ordering::Acquire),
        ) + 1;
        if let Err(e) = self.shared.store.put(DISPATCH_SEQ_KEY, &next).await {
            let _ = reply.send(Err(RequestError::Storage(e.to_string())));
            return;
        }
        self.dispatch_seq = next;
        self.revision = 0;
        tracing::info_span!("dispatch", dispatch = next).in_scope(|| {
            tracing::info!(
                request = %r.id,
                target_kw = r.target_kw,
                duration_s = r.duration_s,
                segments = segments.len(),
                "grid request accepted"
            )
        });
        let now = self.shared.clock.now();
        let controller = match SiteController::new(SiteConfig::default()) {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(RequestError::Invalid {
                    field: "controller".into(),
                    message: e.to_string(),
                }));
                return;
            }
        };
        self.received_at
            .insert(r.id.clone(), tokio::time::Instant::now());
        self.waiters.insert(r.id.clone(), vec![reply]);
        self.active.push(Active {
            until: now + Duration::from_secs_f64(r.duration_s),
            dispatch: next,
            segments,
            controller,
            last_command: None,
            uncontrolled_kw: None,
            receipt_pending: true,
            unallocated_kw: 0.0,
            request: r,
        });
        self.cycle(myself, RoundKind::NewRequest);
    }

    /// One round: close the loop for every active request and dispatch every segment.
    fn cycle(&mut self, myself: &ActorRef<SiteMsg>, why: RoundKind) {
        let tick = why == RoundKind::Tick;
        let now = self.shared.clock.now();
        let cycle = Duration::from_millis(self.shared.topology.site.cycle_ms);
        // One round at a time. A periodic tick while a round is still collecting answers is
        // skipped (the loop slows down rather than piling up batches); a new request or a
        // safe-state change starts a new round at once, and the requests the old round was
        // to answer are answered by the new one.
        let mut carried = Vec::new();
        if let Some(round) = self.round.as_mut() {
            if tick && round.started.elapsed() < ROUND_LIMIT {
                self.skipped_ticks += 1;
                tracing::debug!(
                    skipped = self.skipped_ticks,
                    "a round is still collecting: tick skipped"
                );
                return;
            }
            if round.started.elapsed() < ROUND_LIMIT {
                carried = std::mem::take(&mut round.answers);
            }
            self.finish_round();
        }
        // Requests not answered yet are answered by this round, even if they end now.
        let mut answers = carried;
        for a in self.active.iter_mut().filter(|a| a.receipt_pending) {
            a.receipt_pending = false;
            answers.push(Answer {
                id: a.request.id.clone(),
                dispatch: a.dispatch,
                target_kw: a.request.target_kw,
                until: a.until,
                segments: a.segments.clone(),
                unallocated_kw: 0.0,
            });
        }
        // Requests that ended: their segments go back to their safe default.
        let before = self.active.len();
        self.active.retain(|a| a.until > now);
        if self.active.len() != before {
            tracing::info!(ended = before - self.active.len(), "grid requests ended");
        }
        // A new request's first round is revision 0 of its dispatch id; every other round is
        // a newer revision, so that every device sees strictly increasing keys.
        if why != RoundKind::NewRequest {
            self.revision += 1;
        }
        // A segment adopted from another node carries that node's keys: move past them.
        let floor = self
            .shared
            .dispatch_floor
            .load(std::sync::atomic::Ordering::Acquire);
        if self.dispatch_seq <= floor {
            let next = floor + 1;
            // Queued, not awaited (a round does not wait for an fsync): should it be lost, a
            // restarted node recomputes the floor from the applied records it loads.
            if let Err(e) = self.shared.store.try_put(DISPATCH_SEQ_KEY, &next).map(drop) {
                tracing::warn!(error = %e, "cannot queue the dispatch counter");
            }
            self.dispatch_seq = next;
            self.revision = 0;
        }
        let key = SetpointKey {
            dispatch: self.dispatch_seq,
            revision: self.revision,
        };
        self.last_cycle = Some(tokio::time::Instant::now());
        // One span per dispatch id and revision: each segment's batch and each device write
        // of this round are its children.
        let span =
            tracing::info_span!("dispatch", dispatch = key.dispatch, revision = key.revision);
        span.in_scope(|| tracing::debug!(why = ?why, active = self.active.len(), "dispatch round"));
        let segs = &self.shared.segments;
        let mut shares: HashMap<&str, f64> = HashMap::new();
        let mut site_target = 0.0;
        let mut site_power = 0.0;
        for seg in segs.values() {
            site_power += seg.telemetry().metered_kw;
        }
        for a in self.active.iter_mut() {
            // What the meters see that is not our devices (the building, PV, losses) is fed
            // forward, so the loop only has to correct what the devices get wrong.
            let (metered, devices): (f64, f64) = a
                .segments
                .iter()
                .filter_map(|s| segs.get(s))
                .map(|s| {
                    let d: f64 = s.links.iter().filter_map(|l| l.status.measured_kw).sum();
                    (s.telemetry().metered_kw, d)
                })
                .fold((0.0, 0.0), |(m, d), (m1, d1)| (m + m1, d + d1));
            // The devices' powers are read when they are written, up to a cycle before the
            // meter: smooth the difference, or a device's ramp is taken for load and fed
            // back as an oscillation.
            let raw = metered - devices;
            let uncontrolled = match a.uncontrolled_kw {
                Some(u) if raw.is_finite() => u + UNCONTROLLED_SMOOTHING * (raw - u),
                Some(u) => u,
                None if raw.is_finite() => raw,
                None => 0.0,
            };
            a.uncontrolled_kw = Some(uncontrolled);
            // A new request's first command is its feed-forward over a whole period.
            let dt = a
                .last_command
                .map(|t| t.elapsed())
                .unwrap_or(cycle)
                .min(cycle * 4);
            a.last_command = Some(tokio::time::Instant::now());
            // The segments' frequency response is added on top of their shares by their
            // dispatchers: the loop compares the request with what the devices do without
            // it, so it neither trims the response away nor adds it twice.
            let droop: f64 = a
                .segments
                .iter()
                .filter_map(|s| segs.get(s))
                .map(|s| s.telemetry().droop_kw)
                .sum();
            let command =
                a.controller
                    .command(a.request.target_kw - uncontrolled, devices - droop, dt);
            site_target += a.request.target_kw;
            let ids: Vec<&String> = a.segments.iter().collect();
            let caps: Vec<SegmentCapacity> = ids
                .iter()
                .filter_map(|id| segs.get(*id))
                .map(|s| {
                    let t = s.telemetry();
                    let level = s.level();
                    let (mut ch, mut dis) = (t.max_charge_kw, t.max_discharge_kw);
                    match level {
                        SafeState::Normal => {}
                        SafeState::Limited { cap_kw } => {
                            ch = ch.min(cap_kw);
                            dis = dis.min(cap_kw);
                        }
                        SafeState::ChargeOnly => dis = 0.0,
                        SafeState::Tripped => {
                            ch = 0.0;
                            dis = 0.0;
                        }
                    }
                    // Before the first batch a segment has not measured its capacity yet:
                    // its rating is the best guess.
                    if t.last_key.is_none() {
                        ch = s.config.rated_kw;
                        dis = s.config.rated_kw;
                    }
                    SegmentCapacity {
                        id: s.id.clone(),
                        headroom: t.headroom,
                        max_charge_kw: ch,
                        max_discharge_kw: dis,
                    }
                })
                .collect();
            let split = split_by_headroom(command, &caps);
            a.unallocated_kw = split.unallocated_kw;
            for (c, kw) in caps.iter().zip(split.shares_kw.iter()) {
                if let Some((id, _)) = segs.get_key_value(&c.id) {
                    *shares.entry(id.as_str()).or_insert(0.0) += kw;
                }
            }
            if let Some(ans) = answers.iter_mut().find(|x| x.id == a.request.id) {
                ans.unallocated_kw = split.unallocated_kw;
            }
        }
        self.shared.metrics.site_target.set(site_target);
        self.shared.metrics.site_power.set(site_power);
        let lease_until = now + Duration::from_secs_f64(self.shared.topology.site.lease_s);
        let mut expected = BTreeSet::new();
        // In a cluster, the node's lease decides at this moment whether it may command its
        // segments at all (the cluster's reconcile pass may run later than this round).
        let gate = self.shared.drive_gate();
        if gate == super::shared::Drive::No {
            tracing::debug!("no lease: this round commands nothing");
        }
        let owned = lock(&self.shared.owned).clone();
        for (id, seg) in segs.iter() {
            if gate == super::shared::Drive::No || !owned.contains(id) {
                continue;
            }
            let mut target = shares
                .get(id.as_str())
                .copied()
                .unwrap_or(seg.config.safe_default_kw);
            if gate == super::shared::Drive::ChargeOnly {
                target = target.max(0.0);
            }
            let d = lock(&seg.dispatcher).clone();
            if let Some(d) = d {
                if d.send_message(DispatcherMsg::Dispatch {
                    key,
                    target_kw: target,
                    lease_until,
                    span: span.clone(),
                })
                .is_ok()
                {
                    expected.insert(id.clone());
                }
            }
        }
        self.round = Some(Round {
            key,
            expected,
            received: Vec::new(),
            started: tokio::time::Instant::now(),
            answers,
        });
        drop(myself.send_after(ROUND_LIMIT, || SiteMsg::RoundDeadline));
        if self.round.as_ref().is_some_and(|r| r.expected.is_empty()) {
            self.finish_round();
        }
    }

    fn segment_done(&mut self, receipt: SegmentReceipt) {
        let Some(round) = self.round.as_mut() else {
            return;
        };
        if round.key != receipt.key {
            return;
        }
        round.expected.remove(&receipt.segment);
        round.received.push(receipt);
        if round.expected.is_empty() {
            self.finish_round();
        }
    }

    fn finish_round(&mut self) {
        let Some(round) = self.round.take() else {
            return;
        };
        self.shared
            .metrics
            .cycle
            .observe(round.started.elapsed().as_secs_f64());
        for a in round.answers {
            let id = a.id.clone();
            let segments: Vec<SegmentReceipt> = round
                .received
                .iter()
                .filter(|r| a.segments.contains(&r.segment))
                .cloned()
                .collect();
            let missing: usize = a
                .segments
                .iter()
                .filter(|s| round.expected.contains(*s))
                .count();
            let acknowledged = segments.iter().map(|s| s.applied + s.repeat).sum();
            let not_acknowledged = segments
                .iter()
                .map(|s| s.failed + s.stale + s.unanswered)
                .sum::<usize>()
                + missing;
            let elapsed = self
                .received_at
                .remove(&id)
                .map(|t| t.elapsed())
                .unwrap_or_default();
            self.shared
                .metrics
                .request_ack
                .observe(elapsed.as_secs_f64());
            let receipt = DispatchReceipt {
                request: id.clone(),
                dispatch: a.dispatch,
                revision: round.key.revision,
                target_kw: a.target_kw,
                until_s: a.until.as_secs_f64(),
                segments,
                acknowledged,
                not_acknowledged,
                unallocated_kw: a.unallocated_kw,
                elapsed_ms: elapsed.as_secs_f64() * 1e3,
                repeat: false,
            };
            if self.receipts.len() >= RECEIPT_LIMIT {
                if let Some(old) = self.receipt_order.pop_front() {
                    self.receipts.remove(&old);
                }
            }
            self.receipts.insert(id.clone(), receipt.clone());
            self.receipt_order.push_back(id.clone());
            for w in self.waiters.remove(&id).unwrap_or_default() {
                let _ = w.send(Ok(receipt.clone()));
            }
        }
    }
}

/// Vehicles arrive and leave on the simulated site's schedule. Runs as its own task (one
/// at a time), so that a slow charger supervisor never delays keep-alives or requests.
async fn arrivals(shared: Arc<SiteShared>) {
    if shared.devices.ocpp.is_some() {
        // Real chargers report their vehicles (OCPP transactions start the sessions).
        return;
    }
    let now = shared.clock.now();
    let now_s = now.as_secs_f64();
    for v in &shared.topology.vehicles {
        let plugged = shared
            .plugged
            .get(&v.charger)
            .is_some_and(|p| p.value() == &v.id);
        let present = v.arrive_s <= now_s && now_s < v.depart_s;
        let result = if present && !plugged && !shared.plugged.contains_key(&v.charger) {
            super::node::plug(&shared, v, now).await
        } else if !present && plugged && now_s >= v.depart_s {
            super::node::unplug(&shared, v, now).await
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(vehicle = %v.id, error = %e, "arrival or departure failed");
        }
    }
}

impl Actor for Site {
    type Msg = SiteMsg;
    type State = SiteState;
    type Arguments = Arc<SiteShared>;

    async fn pre_start(
        &self,
        myself: ActorRef<SiteMsg>,
        shared: Arc<SiteShared>,
    ) -> Result<SiteState, ActorProcessingErr> {
        // A fresh dispatch id for this incarnation, durable before its first use: the links
        // hold keys of the previous one, and every key we send must be newer.
        let stored: u64 = shared.store.get(DISPATCH_SEQ_KEY)?.unwrap_or(0);
        let dispatch_seq = stored.checked_add(1).ok_or("dispatch ids exhausted")?;
        shared.store.put(DISPATCH_SEQ_KEY, &dispatch_seq).await?;
        let mailbox = shared
            .supervision
            .mailbox(&format!("{}/site", super::node::ROOT))
            .reopen();
        *lock(&shared.site) = Some(CountedRef::new(myself.clone(), mailbox.clone()));
        let period = Duration::from_millis(shared.topology.site.cycle_ms);
        let timer = Some(myself.send_interval(period, || SiteMsg::Cycle));
        Ok(SiteState {
            shared,
            mailbox,
            dispatch_seq,
            revision: 0,
            active: Vec::new(),
            receipts: HashMap::new(),
            receipt_order: VecDeque::new(),
            waiters: HashMap::new(),
            received_at: HashMap::new(),
            round: None,
            last_cycle: None,
            skipped_ticks: 0,
            redispatch_pending: false,
            arrivals_running: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            timer,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SiteMsg>,
        msg: SiteMsg,
        s: &mut SiteState,
    ) -> Result<(), ActorProcessingErr> {
        s.mailbox.handled();
        match msg {
            SiteMsg::Request(r, reply) => s.request(&myself, r, reply).await,
            SiteMsg::KeepAlive => {
                let now = s.shared.clock.now();
                for seg in s.shared.segments.values() {
                    seg.observe(Fault::KeepAlive, now);
                }
            }
            SiteMsg::Cycle => {
                if !s
                    .arrivals_running
                    .swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    let (shared, flag) = (s.shared.clone(), s.arrivals_running.clone());
                    tokio::spawn(async move {
                        arrivals(shared).await;
                        flag.store(false, std::sync::atomic::Ordering::Release);
                    });
                }
                s.cycle(&myself, RoundKind::Tick);
            }
            SiteMsg::Redispatch => {
                // Several segments changing level at once make one new round, not one each.
                if s.round.is_some() {
                    s.redispatch_pending = true;
                } else {
                    s.cycle(&myself, RoundKind::Redispatch);
                }
            }
            SiteMsg::SegmentDone(r) => {
                s.segment_done(r);
                if s.round.is_none() && std::mem::take(&mut s.redispatch_pending) {
                    s.cycle(&myself, RoundKind::Redispatch);
                }
            }
            SiteMsg::Cancel(id, reply) => {
                let before = s.active.len();
                s.active.retain(|a| a.request.id != id);
                let found = s.active.len() < before;
                if found && s.round.is_some() {
                    s.redispatch_pending = true;
                } else if found {
                    s.cycle(&myself, RoundKind::Redispatch);
                }
                let _ = reply.send(found);
            }
            SiteMsg::RoundDeadline => {
                // A round past its limit is answered with what arrived.
                if s.round
                    .as_ref()
                    .is_some_and(|r| r.started.elapsed() >= ROUND_LIMIT)
                {
                    s.finish_round();
                    if std::mem::take(&mut s.redispatch_pending) {
                        s.cycle(&myself, RoundKind::Redispatch);
                    }
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SiteMsg>,
        s: &mut SiteState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = s.timer.take() {
            t.abort();
        }
        super::shared::release(&s.shared.site, &myself);
        s.mailbox.close();
        Ok(())
    }
}

/// Unplug a session: ask the session to end, for the node's departure logic.
pub(crate) async fn end_session(
    actor: &ActorRef<SessionMsg>,
) -> Result<(), ractor::RactorErr<SessionMsg>> {
    ractor::call_t!(actor, SessionMsg::Unplug, CALL_TIMEOUT.as_millis() as u64)
}
