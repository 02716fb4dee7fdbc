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
//! receipt (idempotent at the API as well). Segments no request covers hold their safe
//! default.
//!
//! # Scheduled requests, ramps, cancel
//!
//! A request may carry `start_at` and `end_at` (RFC 3339) instead of, or with, `duration_s`
//! (exactly one of `end_at` and `duration_s`), and `ramp_kw_per_s` ([`schedule`]). A request
//! whose start is in the future is answered at once with a receipt marked `scheduled`
//! (dispatch 0: its dispatch id is taken when it starts) and waits in the site's list of
//! scheduled requests (at most [`SCHEDULED_LIMIT`], at most
//! [`schedule::MAX_SCHEDULE_AHEAD_S`] ahead). The site's cycle starts the requests that are
//! due: there is no timer per request.
//!
//! **Overlap rule.** When a request starts, it replaces every active request whose scope
//! shares a segment with it: the newest start wins per segment (requests starting in the
//! same cycle start in the order they were accepted, so the later one wins). A scheduled
//! request displaces nothing until it starts, and a request accepted later does not cancel a
//! scheduled one.
//!
//! With a ramp, the target moves from the scope's metered power at the start (the sum of the
//! last commands when a meter has no reading) toward the request's target at the ramp rate,
//! and is back at that power at the end: ramps stay inside the window.
//!
//! [`Cancel`]: a scheduled request is dropped; an active one without a ramp ends at once
//! (its segments get their safe default or the other requests covering them in the same
//! round); one with a ramp ramps back from where it is and ends when it is back.
//!
//! # Durable requests
//!
//! Every accepted request (scheduled or active) is a record in the checkpoint store under
//! [`REQUEST_KEY_PREFIX`]: the request, its window and its receipt. The record is durable
//! before the request is answered (the first receipt too: the waiters are answered after
//! its commit), and removed when the request ends, is replaced or is cancelled. A site that
//! starts (after a crash too) reloads them: a repeated id is answered with its receipt, a
//! future request stays scheduled, an active one resumes (a new dispatch id, ramping again
//! from the scope's power) until its end; records that ended meanwhile are removed.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gridvisor_supervisors::{CountedRef, Mailbox};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

mod schedule;

pub(crate) use schedule::format_time;
pub use schedule::{Window, MAX_SCHEDULE_AHEAD_S};

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
/// How many requests may wait for their start at once.
pub const SCHEDULED_LIMIT: usize = 256;
/// The checkpoint keys of the request records (`site/requests/<request id>`).
pub const REQUEST_KEY_PREFIX: &str = "site/requests/";

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
    /// How long it holds from its start, seconds (exactly one of this and `end_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// When it starts, RFC 3339 (absent or past: now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// When it ends, RFC 3339 (exactly one of this and `duration_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<String>,
    /// How fast the target moves at the start and the end, kW/s (absent: a step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_kw_per_s: Option<f64>,
}

impl GridRequest {
    /// A request that starts now and holds `duration_s`, without a ramp.
    pub fn now(id: impl Into<String>, scope: Scope, target_kw: f64, duration_s: f64) -> Self {
        GridRequest {
            id: id.into(),
            scope,
            target_kw,
            duration_s: Some(duration_s),
            start_at: None,
            end_at: None,
            ramp_kw_per_s: None,
        }
    }
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancel {
    /// A scheduled request: it will not start.
    Scheduled,
    /// An active request: it ended (no ramp) or ramps back.
    Active,
    /// Cancelled before: nothing more to do.
    AlreadyCancelled,
    /// It ended (or was replaced) before: nothing to do.
    Ended,
    /// No request has this id here (or it is too old to be remembered).
    Unknown,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchReceipt {
    /// The request's id.
    pub request: String,
    /// The dispatch id it got (0: scheduled, not started yet).
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
    /// True while the request waits for its start (no device was commanded yet).
    #[serde(default)]
    pub scheduled: bool,
    /// True once the request was cancelled.
    #[serde(default)]
    pub cancelled: bool,
    /// When it starts (or started), RFC 3339.
    #[serde(default)]
    pub start_at: String,
    /// When it ends, RFC 3339.
    #[serde(default)]
    pub end_at: String,
}

/// A request's durable record (under [`REQUEST_KEY_PREFIX`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RequestRecord {
    request: GridRequest,
    window: Window,
    /// Its newest receipt (none: accepted, first round not answered yet).
    receipt: Option<DispatchReceipt>,
}

fn record_key(id: &str) -> String {
    format!("{REQUEST_KEY_PREFIX}{id}")
}

/// A request waiting for its start.
struct Pending {
    request: GridRequest,
    window: Window,
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
    window: Window,
    dispatch: u64,
    /// The end on the node's clock.
    until: Duration,
    /// Where the target ramps from, kW (the scope's power when it started).
    from_kw: f64,
    /// When its ramp started, node clock (its start, or the restart that resumed it).
    ramp_start: Duration,
    cancelled: bool,
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
    request: GridRequest,
    window: Window,
    dispatch: u64,
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
    scheduled: Vec<Pending>,
    /// What each segment was last commanded, kW (a ramp's start when a meter has no reading).
    last_targets: HashMap<String, f64>,
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

    fn validate(&self, r: &GridRequest) -> Result<(Window, BTreeSet<String>), RequestError> {
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
        let window = schedule::resolve(r, self.wall_now_ns())?;
        Ok((window, self.scope_segments(&r.scope)?))
    }

    /// The wall clock now, Unix ns, on the node's clock (a paused test clock moves it).
    fn wall_now_ns(&self) -> i64 {
        let now = i64::try_from(self.shared.clock.now().as_nanos()).unwrap_or(i64::MAX);
        self.shared.wall_epoch_ns.saturating_add(now)
    }

    /// A wall-clock time on the node's clock, exactly (a time before its zero is its zero).
    fn node_time(&self, unix_ns: i64) -> Duration {
        let since = unix_ns.saturating_sub(self.shared.wall_epoch_ns).max(0);
        Duration::from_nanos(u64::try_from(since).unwrap_or(0))
    }

    /// Keep `receipt` to answer its id again (the oldest forgotten past [`RECEIPT_LIMIT`]).
    fn remember(&mut self, receipt: DispatchReceipt) {
        let id = receipt.request.clone();
        if self.receipts.insert(id.clone(), receipt).is_none() {
            self.receipt_order.push_back(id);
        }
        while self.receipts.len() > RECEIPT_LIMIT {
            match self.receipt_order.pop_front() {
                Some(old) => drop(self.receipts.remove(&old)),
                None => break,
            }
        }
    }

    /// Queue the removal of the records of `ids` (requests that ended, were replaced or
    /// cancelled); a full queue is logged, and a restart removes what it finds expired.
    fn drop_records<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            if let Err(e) = self.shared.store.try_remove(&record_key(id)) {
                tracing::warn!(request = %id, error = %e, "cannot queue the removal of a request record");
            }
        }
    }

    /// A receipt for a request that has not dispatched yet (scheduled).
    fn scheduled_receipt(&self, r: &GridRequest, w: &Window) -> DispatchReceipt {
        DispatchReceipt {
            request: r.id.clone(),
            dispatch: 0,
            revision: 0,
            target_kw: r.target_kw,
            until_s: self.node_time(w.end_unix_ns).as_secs_f64(),
            segments: Vec::new(),
            acknowledged: 0,
            not_acknowledged: 0,
            unallocated_kw: 0.0,
            elapsed_ms: 0.0,
            repeat: false,
            scheduled: true,
            cancelled: false,
            start_at: schedule::format_time(w.start_unix_ns),
            end_at: schedule::format_time(w.end_unix_ns),
        }
    }

    /// Accept a request that starts later: durable, then answered with a scheduled receipt.
    async fn schedule(
        &mut self,
        r: GridRequest,
        window: Window,
    ) -> Result<DispatchReceipt, RequestError> {
        if self.scheduled.len() >= SCHEDULED_LIMIT {
            return Err(RequestError::Busy {
                what: "scheduled requests".into(),
                limit: SCHEDULED_LIMIT,
            });
        }
        let receipt = self.scheduled_receipt(&r, &window);
        let record = RequestRecord {
            request: r.clone(),
            window,
            receipt: Some(receipt.clone()),
        };
        self.shared
            .store
            .put(&record_key(&r.id), &record)
            .await
            .map_err(|e| RequestError::Storage(e.to_string()))?;
        tracing::info!(request = %r.id, start_at = %receipt.start_at, end_at = %receipt.end_at, "grid request scheduled");
        self.remember(receipt.clone());
        self.scheduled.push(Pending { request: r, window });
        Ok(receipt)
    }

    /// The scope's power now: its meters' sum when every one has a reading, else the sum of
    /// what the site last commanded there (a missing reading is never taken as 0 kW).
    fn scope_power(&self, segments: &BTreeSet<String>) -> f64 {
        let metered: f64 = segments
            .iter()
            .filter_map(|s| self.shared.segments.get(s))
            .map(|s| s.telemetry().metered_kw)
            .sum();
        if metered.is_finite() {
            return metered;
        }
        segments
            .iter()
            .filter_map(|s| {
                let seg = self.shared.segments.get(s)?;
                Some(
                    self.last_targets
                        .get(s)
                        .copied()
                        .unwrap_or(seg.config.safe_default_kw),
                )
            })
            .sum()
    }

    /// Make `r` active now with dispatch id `dispatch`: it replaces the active requests it
    /// overlaps (their records are dropped). Refused past [`ACTIVE_LIMIT`].
    fn activate(
        &mut self,
        r: GridRequest,
        window: Window,
        segments: BTreeSet<String>,
        dispatch: u64,
        receipt_pending: bool,
    ) -> Result<(), RequestError> {
        let controller =
            SiteController::new(SiteConfig::default()).map_err(|e| RequestError::Invalid {
                field: "controller".into(),
                message: e.to_string(),
            })?;
        let (keep, replaced): (Vec<Active>, Vec<Active>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|a| a.segments.is_disjoint(&segments));
        self.active = keep;
        self.drop_records(replaced.iter().map(|a| a.request.id.as_str()));
        if self.active.len() >= ACTIVE_LIMIT {
            return Err(RequestError::Busy {
                what: "active requests".into(),
                limit: ACTIVE_LIMIT,
            });
        }
        let now = self.shared.clock.now();
        self.active.push(Active {
            until: self.node_time(window.end_unix_ns),
            from_kw: self.scope_power(&segments),
            ramp_start: now,
            cancelled: false,
            window,
            dispatch,
            segments,
            controller,
            last_command: None,
            uncontrolled_kw: None,
            receipt_pending,
            unallocated_kw: 0.0,
            request: r,
        });
        Ok(())
    }

    /// A fresh dispatch id, durable before it is used.
    async fn next_dispatch(&mut self) -> Result<u64, RequestError> {
        // Past the floor too: a segment adopted from another node carries its keys.
        let next = self.dispatch_seq.max(
            self.shared
                .dispatch_floor
                .load(std::sync::atomic::Ordering::Acquire),
        ) + 1;
        self.shared
            .store
            .put(DISPATCH_SEQ_KEY, &next)
            .await
            .map_err(|e| RequestError::Storage(e.to_string()))?;
        self.dispatch_seq = next;
        self.revision = 0;
        Ok(next)
    }

    /// Start the scheduled requests that are due, in the order they were accepted (the last
    /// one wins a shared segment). True if any started: the caller runs a new round.
    ///
    /// A due request none of whose segments this node drives now (in a cluster, right after
    /// a restart or during a handoff) waits for the next cycle until its end; one that ended
    /// while waiting, or whose scope is gone, is dropped with its record.
    async fn start_due(&mut self) -> bool {
        let now = self.wall_now_ns();
        let (due, later): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.scheduled)
            .into_iter()
            .partition(|p| p.window.start_unix_ns <= now);
        self.scheduled = later;
        let mut ready = Vec::new();
        for p in due {
            let id = p.request.id.clone();
            match self.scope_segments(&p.request.scope) {
                _ if p.window.end_unix_ns <= now => {
                    tracing::warn!(request = %id, "scheduled grid request ended before it could start: dropped");
                    self.drop_records([id.as_str()]);
                }
                Ok(segs) => ready.push((p, segs)),
                Err(RequestError::NotDriven) => self.scheduled.push(p),
                Err(e) => {
                    tracing::warn!(request = %id, error = %e, "scheduled grid request could not start: dropped");
                    self.drop_records([id.as_str()]);
                }
            }
        }
        if ready.is_empty() {
            return false;
        }
        let dispatch = match self.next_dispatch().await {
            Ok(d) => d,
            Err(e) => {
                // Tried again next cycle.
                tracing::warn!(error = %e, "cannot take a dispatch id for scheduled requests");
                self.scheduled.extend(ready.into_iter().map(|(p, _)| p));
                return false;
            }
        };
        let mut started = false;
        for (p, segs) in ready {
            let id = p.request.id.clone();
            // A request resumed after a restart keeps its first receipt.
            let pending = self.receipts.get(&id).is_none_or(|r| r.scheduled);
            match self.activate(p.request, p.window, segs, dispatch, pending) {
                Ok(()) => {
                    started = true;
                    tracing::info!(request = %id, dispatch, "scheduled grid request started");
                }
                Err(e) => {
                    tracing::warn!(request = %id, error = %e, "scheduled grid request could not start: dropped");
                    self.drop_records([id.as_str()]);
                }
            }
        }
        started
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
        let (window, segments) = match self.validate(&r) {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if window.start_unix_ns > self.wall_now_ns() {
            let _ = reply.send(self.schedule(r, window).await);
            return;
        }
        if self.waiters.len() >= WAITER_LIMIT {
            let _ = reply.send(Err(RequestError::Busy {
                what: "requests waiting for acknowledgement".into(),
                limit: WAITER_LIMIT,
            }));
            return;
        }
        if let Err(e) = self.accept_now(&r, &window).await {
            let _ = reply.send(Err(e));
            return;
        }
        let next = self.dispatch_seq;
        tracing::info_span!("dispatch", dispatch = next).in_scope(|| {
            tracing::info!(
                request = %r.id,
                target_kw = r.target_kw,
                end_at = %schedule::format_time(window.end_unix_ns),
                segments = segments.len(),
                "grid request accepted"
            )
        });
        let id = r.id.clone();
        if let Err(e) = self.activate(r, window, segments, next, true) {
            self.drop_records([id.as_str()]);
            let _ = reply.send(Err(e));
            return;
        }
        self.received_at
            .insert(id.clone(), tokio::time::Instant::now());
        self.waiters.insert(id, vec![reply]);
        self.cycle(myself, RoundKind::NewRequest);
    }

    /// A request that starts now: its record and a fresh dispatch id, both durable (one
    /// group commit) before anything is commanded.
    async fn accept_now(&mut self, r: &GridRequest, window: &Window) -> Result<(), RequestError> {
        let record = RequestRecord {
            request: r.clone(),
            window: *window,
            receipt: None,
        };
        let key = record_key(&r.id);
        let store = self.shared.store.clone();
        let (seq, rec) = futures::join!(self.next_dispatch(), store.put(&key, &record));
        let result = seq.and(rec.map_err(|e| RequestError::Storage(e.to_string())));
        if result.is_err() {
            self.drop_records([r.id.as_str()]);
        }
        result
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
                request: a.request.clone(),
                window: a.window,
                dispatch: a.dispatch,
                until: a.until,
                segments: a.segments.clone(),
                unallocated_kw: 0.0,
            });
        }
        // Requests that ended: their segments go back to their safe default.
        let (keep, ended): (Vec<Active>, Vec<Active>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|a| a.until > now);
        self.active = keep;
        if !ended.is_empty() {
            tracing::info!(ended = ended.len(), "grid requests ended");
            self.drop_records(ended.iter().map(|a| a.request.id.as_str()));
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
            let target = schedule::ramped(
                a.from_kw,
                a.request.target_kw,
                a.window.ramp_kw_per_s,
                a.ramp_start.as_secs_f64(),
                a.until.as_secs_f64(),
                now.as_secs_f64(),
            );
            // The segments' frequency response is added on top of their shares by their
            // dispatchers: the loop compares the request with what the devices do without
            // it, so it neither trims the response away nor adds it twice.
            let droop: f64 = a
                .segments
                .iter()
                .filter_map(|s| segs.get(s))
                .map(|s| s.telemetry().droop_kw)
                .sum();
            let command = a
                .controller
                .command(target - uncontrolled, devices - droop, dt);
            site_target += target;
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
            if let Some(ans) = answers.iter_mut().find(|x| x.request.id == a.request.id) {
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
            self.last_targets.insert(id.clone(), target);
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
        let Some(mut round) = self.round.take() else {
            return;
        };
        self.shared
            .metrics
            .cycle
            .observe(round.started.elapsed().as_secs_f64());
        for a in std::mem::take(&mut round.answers) {
            let receipt = self.receipt_of(&round, &a);
            self.remember(receipt.clone());
            let waiters = self.waiters.remove(&a.request.id).unwrap_or_default();
            self.answer_durably(a, receipt, waiters);
        }
    }

    /// The receipt of request `a` from the answers `round` collected.
    fn receipt_of(&mut self, round: &Round, a: &Answer) -> DispatchReceipt {
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
        // From the POST; a scheduled request's start has no caller waiting and is not counted.
        let elapsed = match self.received_at.remove(&a.request.id) {
            Some(t) => {
                let e = t.elapsed();
                self.shared.metrics.request_ack.observe(e.as_secs_f64());
                e
            }
            None => Duration::ZERO,
        };
        DispatchReceipt {
            request: a.request.id.clone(),
            dispatch: a.dispatch,
            revision: round.key.revision,
            target_kw: a.request.target_kw,
            until_s: a.until.as_secs_f64(),
            segments,
            acknowledged,
            not_acknowledged,
            unallocated_kw: a.unallocated_kw,
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
            repeat: false,
            scheduled: false,
            cancelled: false,
            start_at: schedule::format_time(a.window.start_unix_ns),
            end_at: schedule::format_time(a.window.end_unix_ns),
        }
    }

    /// Answer `waiters` once the receipt is in the request's durable record, so that a
    /// receipt a controller saw survives a crash. A request no longer active (it ended or
    /// was replaced or cancelled meanwhile) has no record to update: answered at once.
    fn answer_durably(
        &self,
        a: Answer,
        receipt: DispatchReceipt,
        waiters: Vec<RpcReplyPort<Result<DispatchReceipt, RequestError>>>,
    ) {
        let live = self
            .active
            .iter()
            .any(|x| x.request.id == a.request.id && !x.cancelled);
        let record = RequestRecord {
            request: a.request,
            window: a.window,
            receipt: Some(receipt.clone()),
        };
        let ticket = live.then(|| {
            self.shared
                .store
                .try_put(&record_key(&record.request.id), &record)
        });
        tokio::spawn(async move {
            match ticket {
                Some(Ok(t)) => {
                    if let Err(e) = t.await {
                        tracing::warn!(request = %record.request.id, error = %e, "the receipt is not durable");
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(request = %record.request.id, error = %e, "cannot queue the receipt's record");
                }
                None => {}
            }
            for w in waiters {
                let _ = w.send(Ok(receipt.clone()));
            }
        });
    }

    /// Cancel request `id` (see the module docs); `Unknown` if it is not known here.
    fn cancel(&mut self, myself: &ActorRef<SiteMsg>, id: &str) -> Cancel {
        if let Some(i) = self.scheduled.iter().position(|p| p.request.id == id) {
            self.scheduled.remove(i);
            self.drop_records([id]);
            self.mark_cancelled(id);
            tracing::info!(request = %id, "scheduled grid request cancelled");
            return Cancel::Scheduled;
        }
        let now = self.shared.clock.now();
        let Some(i) = self.active.iter().position(|a| a.request.id == id) else {
            return match self.receipts.get(id) {
                Some(r) if r.cancelled => Cancel::AlreadyCancelled,
                Some(_) => Cancel::Ended,
                None => Cancel::Unknown,
            };
        };
        if self.active[i].cancelled {
            return Cancel::AlreadyCancelled;
        }
        self.mark_cancelled(id);
        self.drop_records([id]);
        let a = &mut self.active[i];
        match a.window.ramp_kw_per_s {
            Some(rate) => {
                // Back from where it is at the ramp rate: the ramp down ends at the new end.
                let now_s = now.as_secs_f64();
                let at = schedule::ramped(
                    a.from_kw,
                    a.request.target_kw,
                    Some(rate),
                    a.ramp_start.as_secs_f64(),
                    a.until.as_secs_f64(),
                    now_s,
                );
                let back = (at - a.from_kw).abs() / rate;
                a.until = a.until.min(now + Duration::from_secs_f64(back));
                a.cancelled = true;
                tracing::info!(request = %id, ramp_s = back, "active grid request cancelled: ramping back");
            }
            None => {
                self.active.remove(i);
                tracing::info!(request = %id, "active grid request cancelled");
                if self.round.is_some() {
                    self.redispatch_pending = true;
                } else {
                    self.cycle(myself, RoundKind::Redispatch);
                }
            }
        }
        Cancel::Active
    }

    fn mark_cancelled(&mut self, id: &str) {
        if let Some(r) = self.receipts.get_mut(id) {
            r.cancelled = true;
        }
    }

    /// Reload the request records (module docs, "Durable requests"): every one that has not
    /// ended waits in `scheduled` (one due now starts at the first cycle, ramping from the
    /// scope's power then); its receipt answers its id again. Records that ended are removed.
    fn reload(&mut self) -> Result<(), crate::checkpoint::CheckpointError> {
        let now = self.wall_now_ns();
        let mut records = Vec::new();
        for key in self.shared.store.keys_with_prefix(REQUEST_KEY_PREFIX)? {
            match self.shared.store.get::<RequestRecord>(&key) {
                Ok(Some(r)) => records.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!(%key, error = %e, "request record unreadable: ignored"),
            }
        }
        // In the order they started, so that the newest start wins a shared segment again.
        records.sort_by_key(|r| r.window.start_unix_ns);
        let (mut resumed, mut expired) = (0, Vec::new());
        for r in records {
            if r.window.end_unix_ns <= now {
                expired.push(r.request.id);
                continue;
            }
            if let Some(receipt) = r.receipt {
                self.remember(receipt);
            }
            // Accepted requests are bounded by both limits; more means a foreign store.
            if self.scheduled.len() >= SCHEDULED_LIMIT + ACTIVE_LIMIT {
                tracing::warn!(request = %r.request.id, "more request records than the limits allow: left in the store");
                continue;
            }
            resumed += 1;
            self.scheduled.push(Pending {
                request: r.request,
                window: r.window,
            });
        }
        self.drop_records(expired.iter().map(String::as_str));
        if resumed + expired.len() > 0 {
            tracing::info!(resumed, expired = expired.len(), "grid requests reloaded");
        }
        Ok(())
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
        let mut state = SiteState {
            shared,
            mailbox,
            dispatch_seq,
            revision: 0,
            active: Vec::new(),
            scheduled: Vec::new(),
            last_targets: HashMap::new(),
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
        };
        state.reload()?;
        Ok(state)
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
                if s.start_due().await {
                    s.cycle(&myself, RoundKind::NewRequest);
                } else {
                    s.cycle(&myself, RoundKind::Tick);
                }
            }
            SiteMsg::Cancel(id, reply) => {
                let _ = reply.send(s.cancel(&myself, &id));
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
