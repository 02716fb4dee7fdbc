//! The segment's dispatcher: splits the segment's share of the grid requests over its
//! sessions and collects the links' acknowledgements.
//!
//! One batch is in flight at a time. A batch is a key (dispatch id, revision), a target and
//! a lease; the dispatcher clamps the target with the segment's safe state (local safety
//! first), builds one [`Candidate`] per session from the segment board (SoC, departure,
//! limits, and what the device measured against what it was commanded, so a throttled
//! charger's missing power goes to others), allocates, and sends each link its setpoint.
//!
//! With `[grid_services.frequency]` on, the batch adds the segment's frequency response
//! ([`crate::droop`]) to the allocation, on the V2G-capable sessions only, within the
//! segment's level and each session's limits ([`allocate_response`]). The meter poller asks
//! for a round as soon as the frequency moves, so the response does not wait for a cycle.
//!
//! When every link has answered, the dispatcher checkpoints the segment's applied map (one
//! [`AppliedRecord`](super::shared::AppliedRecord) per batch) and the batch's answers count
//! as acknowledged only once that write is durable. The batch ends then, or when
//! [`ACK_TIMEOUT`] passed; the site hears of it. A newer batch supersedes an unfinished one:
//! answers not yet durable are reported unanswered, never acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gridvisor_supervisors::{CountedRef, Mailbox};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::shared::{applied_record_key, lock, SegmentShared, SiteShared};
use super::site::SegmentReceipt;
use super::{BatchTally, DispatcherMsg, LinkMsg, SetpointOutcome, SiteMsg, ACK_TIMEOUT};
use crate::checkpoint::CheckpointError;
use crate::dispatch::{
    allocate, allocate_response, apply_obligations, effective_limits, must_charge_kw, Allocation,
    Candidate,
};
use crate::ladder::SafeState;
use crate::session::SessionState;
use crate::setpoint::{Setpoint, SetpointKey};

pub(crate) struct Dispatcher;

struct Batch {
    key: SetpointKey,
    expected: usize,
    /// The links' answers, counted by the links.
    tally: Arc<BatchTally>,
    receipt: SegmentReceipt,
    started: tokio::time::Instant,
    /// Every answer is in; the segment's applied record is being committed.
    committing: bool,
}

pub(crate) struct DispatcherState {
    shared: Arc<SiteShared>,
    seg: Arc<SegmentShared>,
    mailbox: Mailbox,
    batch: Option<Batch>,
    /// The segment's chargers by id (built once: the topology does not change).
    chargers: HashMap<String, crate::config::Charger, foldhash::fast::RandomState>,
    /// A frequency reading older than this gives no droop response (`[safety]
    /// max_reading_age_ms`: the age at which the ladder calls the meter stale).
    max_reading_age: Duration,
}

/// A candidate that takes part in the frequency response: it can discharge (a bidirectional
/// charger with a V2G session) and is above its floor.
fn v2g_capable(c: &Candidate) -> bool {
    c.max_discharge_kw > 0.0 && c.soc_pct > c.min_soc_pct
}

impl DispatcherState {
    /// End the current batch and report it. `durable`: the applied record holding its
    /// answers was committed; if not, its applied and repeated answers are unanswered.
    fn finish(&mut self, durable: bool) {
        let Some(b) = self.batch.take() else { return };
        let mut receipt = b.receipt;
        let [applied, repeat, stale, failed] = b.tally.counts();
        receipt.applied += applied;
        receipt.repeat += repeat;
        receipt.stale += stale;
        receipt.failed += failed;
        if !durable {
            receipt.unanswered += receipt.applied + receipt.repeat;
            receipt.applied = 0;
            receipt.repeat = 0;
        }
        receipt.elapsed_ms = b.started.elapsed().as_secs_f64() * 1e3;
        receipt.unanswered = b
            .expected
            .saturating_sub(receipt.applied + receipt.repeat + receipt.stale + receipt.failed);
        if let Some(site) = lock(&self.shared.site).as_ref() {
            let _ = site.send_message(SiteMsg::SegmentDone(receipt));
        }
    }

    fn dispatch(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        key: SetpointKey,
        target_kw: f64,
        lease_until: Duration,
        round: &tracing::Span,
    ) {
        if self.batch.is_some() {
            self.finish(false);
        }
        let seg = &self.seg;
        let level = seg.level();
        // Local safety first: the segment's share is clamped with its level before allocating.
        let target = level.clamp(target_kw);
        let horizon = Duration::from_millis(self.shared.topology.site.cycle_ms);
        let chargers = &self.chargers;
        let now_s = self.shared.clock.now().as_secs_f64();
        let mut candidates = Vec::with_capacity(seg.links.len());
        // The must-charge obligations (kW), for departures the EV or its contract gave.
        let mut must = Vec::with_capacity(seg.links.len());
        let mut targets: Vec<CountedRef<LinkMsg>> = Vec::with_capacity(seg.links.len());
        for link in seg.links.iter() {
            let Some(sess) = seg.sessions.get(link.key()) else {
                continue;
            };
            let s = &sess.session;
            if s.state == SessionState::Ended {
                continue;
            }
            let Some(c) = chargers.get(link.key()) else {
                continue;
            };
            let candidate = Candidate::from_session(
                s,
                c.max_kw,
                c.bidirectional,
                now_s,
                link.status.measured_kw,
                link.status.commanded_kw,
            );
            let configured = s.sources.departure.kind == crate::session::SourceKind::Config;
            must.push(match configured {
                true => 0.0,
                false => must_charge_kw(&candidate, now_s, horizon),
            });
            candidates.push(candidate);
            targets.push(link.actor.clone());
        }
        let mut by_state = [0u32; SessionState::ALL.len()];
        for s in seg.sessions.iter() {
            by_state[usize::from(s.session.state.code())] += 1;
        }
        for state in SessionState::ALL {
            self.shared
                .metrics
                .sessions
                .with_label_values(&[&seg.id, state.as_str()])
                .set(f64::from(by_state[usize::from(state.code())]));
        }
        let (mut max_charge, mut max_discharge) = (0.0, 0.0);
        for c in &candidates {
            let (ch, dis) = effective_limits(c, horizon);
            max_charge += ch;
            max_discharge += dis;
        }
        let (mut allocation, droop_kw) = self.setpoints(target, level, &candidates, horizon);
        // Charge enough to meet each departure, within the level's charge ceiling. After the
        // droop: an obligation is a floor that a frequency response does not take away.
        let urgency: Vec<f64> = candidates.iter().map(|c| c.depart_s).collect();
        let short = apply_obligations(
            &mut allocation.setpoints_kw,
            &must,
            &urgency,
            level.clamp(f64::MAX),
        );
        if short > 0.0 {
            tracing::debug!(segment = %seg.id, short_kw = short, ?level, "must-charge obligations not met");
        }
        let span = tracing::info_span!(parent: round, "segment", segment = %seg.id);
        span.in_scope(|| {
            tracing::debug!(
                target_kw = target,
                level = ?level,
                setpoints = targets.len(),
                "segment batch"
            )
        });
        let tally = Arc::new(BatchTally::new(key, targets.len(), myself.clone(), span));
        let mut sent = 0usize;
        let mut failed = 0usize;
        let mut setpoint_kw = 0.0;
        for (link, kw) in targets.iter().zip(allocation.setpoints_kw.iter()) {
            setpoint_kw += kw;
            let sp = Setpoint {
                key,
                kw: *kw,
                lease_until,
            };
            if link
                .send_message(LinkMsg::Setpoint(sp, Arc::clone(&tally)))
                .is_ok()
            {
                sent += 1;
            } else {
                // A link that stopped counts as answered (failed), so the tally completes.
                failed += 1;
                tally.answer(&SetpointOutcome::Failed {
                    error: "link stopped".into(),
                });
            }
        }
        {
            let mut t = lock(&seg.telemetry);
            t.target_kw = target_kw;
            t.setpoint_kw = setpoint_kw;
            t.max_charge_kw = max_charge;
            t.max_discharge_kw = max_discharge;
            t.last_key = Some(key);
            t.droop_kw = droop_kw;
        }
        let m = &self.shared.metrics;
        m.segment_setpoint
            .with_label_values(&[&seg.id])
            .set(setpoint_kw);
        m.segment_target
            .with_label_values(&[&seg.id])
            .set(target_kw);
        m.segment_droop.with_label_values(&[&seg.id]).set(droop_kw);
        m.segment_limit
            .with_label_values(&[&seg.id, "charge"])
            .set(max_charge);
        m.segment_limit
            .with_label_values(&[&seg.id, "discharge"])
            .set(max_discharge);
        self.batch = Some(Batch {
            key,
            expected: sent + failed,
            tally,
            committing: false,
            receipt: SegmentReceipt {
                segment: seg.id.clone(),
                key,
                target_kw,
                clamped_kw: target,
                setpoint_kw,
                level,
                applied: 0,
                repeat: 0,
                stale: 0,
                failed: 0, // counted in the tally
                unanswered: 0,
                elapsed_ms: 0.0,
            },
            started: tokio::time::Instant::now(),
        });
        if sent == 0 {
            self.finish(true);
        } else {
            // The timer task is detached: it sends once and ends.
            drop(myself.send_after(ACK_TIMEOUT, move || DispatcherMsg::Deadline(key)));
        }
    }
}

impl DispatcherState {
    /// The batch's setpoints: `target` (already clamped by `level`) allocated over the
    /// candidates, plus the frequency response on the V2G-capable ones, the total still
    /// within `level` (so within the transformer's cap) and each candidate within its
    /// limits (so above its SoC floor). Returns the allocation and the response in it, kW.
    fn setpoints(
        &self,
        target: f64,
        level: SafeState,
        candidates: &[Candidate],
        horizon: Duration,
    ) -> (Allocation, f64) {
        let mut allocation = allocate(target, candidates, horizon);
        let now = self.shared.clock.now();
        let excess = lock(&self.seg.droop).dispatch_excess(now, self.max_reading_age);
        if excess == 0.0 {
            return (allocation, 0.0);
        }
        let eligible: Vec<bool> = candidates.iter().map(v2g_capable).collect();
        let (mut up, mut down) = (0.0, 0.0);
        for c in candidates.iter().filter(|c| v2g_capable(c)) {
            let (ch, dis) = effective_limits(c, horizon);
            up += ch;
            down += dis;
        }
        let settings = *lock(&self.seg.droop).settings();
        let wanted = settings.response_kw(excess, up, down);
        // Local safety first: the response never takes the segment past its level.
        let delta = level.clamp(target + wanted) - target;
        let discharge_allowed = level.clamp(-1.0) < 0.0;
        let response = allocate_response(
            delta,
            candidates,
            &allocation.setpoints_kw,
            &eligible,
            discharge_allowed,
            horizon,
        );
        let mut droop_kw = 0.0;
        for (sp, d) in allocation
            .setpoints_kw
            .iter_mut()
            .zip(&response.setpoints_kw)
        {
            *sp += d;
            droop_kw += d;
        }
        tracing::debug!(segment = %self.seg.id, excess_hz = excess, wanted_kw = wanted, droop_kw, "frequency response");
        (allocation, droop_kw)
    }

    /// Checkpoint the segment's applied map for batch `key`; `Durable` follows when the
    /// write committed. The write is queued here, in the dispatcher's order, so a newer
    /// batch's record always commits after an older one's; only the wait is a task.
    async fn commit(&mut self, myself: &ActorRef<DispatcherMsg>, key: SetpointKey) {
        let record = self.seg.applied_record();
        let record_key = applied_record_key(&self.seg.id);
        let result = match self.shared.store.try_put(&record_key, &record) {
            Ok(ticket) => {
                let me = myself.clone();
                tokio::spawn(async move {
                    let error = ticket.await.err().map(|e| e.to_string());
                    let _ = me.send_message(DispatcherMsg::Durable { key, error });
                });
                return;
            }
            // The store's queue is full: wait here, which slows dispatch down instead of
            // growing a queue.
            Err(CheckpointError::QueueFull { .. }) => {
                self.shared.store.put(&record_key, &record).await
            }
            Err(e) => Err(e),
        };
        let _ = myself.send_message(DispatcherMsg::Durable {
            key,
            error: result.err().map(|e| e.to_string()),
        });
    }
}

impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = (Arc<SiteShared>, Arc<SegmentShared>, String);

    async fn pre_start(
        &self,
        myself: ActorRef<DispatcherMsg>,
        (shared, seg, path): Self::Arguments,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        let mailbox = shared.supervision.mailbox(&path).reopen();
        *lock(&seg.dispatcher) = Some(CountedRef::new(myself, mailbox.clone()));
        let chargers = seg
            .config
            .chargers
            .iter()
            .map(|c| (c.id.clone(), c.clone()))
            .collect();
        let max_reading_age = shared.topology.safety.ladder_config().max_reading_age;
        Ok(DispatcherState {
            shared,
            seg,
            mailbox,
            batch: None,
            chargers,
            max_reading_age,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        s: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        s.mailbox.handled();
        match msg {
            DispatcherMsg::Dispatch {
                key,
                target_kw,
                lease_until,
                span,
            } => s.dispatch(&myself, key, target_kw, lease_until, &span),
            DispatcherMsg::Answered(key) => {
                let Some(b) = s.batch.as_mut() else {
                    return Ok(());
                };
                if b.key != key || b.committing {
                    return Ok(());
                }
                let [applied, repeat, ..] = b.tally.counts();
                if applied + repeat == 0 {
                    s.finish(true);
                    return Ok(());
                }
                b.committing = true;
                s.commit(&myself, key).await;
            }
            DispatcherMsg::Durable { key, error } => {
                if s.batch.as_ref().is_some_and(|b| b.key == key) {
                    if let Some(e) = &error {
                        tracing::error!(segment = %s.seg.id, key = %key, error = %e, "applied record not written: batch not acknowledged");
                    }
                    s.finish(error.is_none());
                }
            }
            DispatcherMsg::Deadline(key) => {
                if let Some(b) = s.batch.as_ref().filter(|b| b.key == key) {
                    tracing::warn!(segment = %s.seg.id, key = %key, committing = b.committing, "acknowledgements missing at the deadline");
                    s.finish(false);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<DispatcherMsg>,
        s: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        s.finish(false);
        super::shared::release(&s.seg.dispatcher, &myself);
        s.mailbox.close();
        Ok(())
    }
}
