//! The segment's safety actor: the owner of the segment's safe-state ladder.
//!
//! It starts first in its segment (rest_for_one), so every device actor of the segment
//! starts under the current level. Observations reach the ladder from the pollers (grid
//! readings, temperatures, the thermal model, all through [`SegmentShared::observe`]), from
//! the site (keep-alives), from the clock source (its status read on every tick, see
//! [`crate::clock_source`]) and from the escalation
//! hooks of the supervisors (a supervisor past its restart intensity). On every change of
//! level it checkpoints the level, records the transition and commands every device of the
//! segment at once (the links clamp their devices locally: no round trip to the dispatcher),
//! then asks for a fresh dispatch so that power moves to where it is allowed.
//!
//! A restarted safety actor resumes the ladder where it was (the ladder lives in the
//! segment's shared state); after a node restart it restores the checkpointed level and
//! holds it for the hold time ([`Fault::Restored`]).

use std::sync::Arc;
use std::time::Duration;

use gridvisor_supervisors::{CountedRef, Mailbox};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use gridvisor_supervisors::SupervisorError;

use super::safe_command;
use super::shared::{lock, SegmentShared, SiteShared};
use super::{LinkMsg, SafetyMsg, SiteMsg, LEASE_SCAN, SAFETY_TICK};
use crate::checkpoint::CheckpointStore;
use crate::ladder::{Fault, FaultKey, SafeState, Transition};

/// What the safety actor checkpoints.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SafetyCheckpoint {
    /// The level when it was written.
    pub level: SafeState,
}

pub(crate) struct Safety;

pub(crate) struct SafetyState {
    shared: Arc<SiteShared>,
    seg: Arc<SegmentShared>,
    path: String,
    mailbox: Mailbox,
    /// `gridvisor_segment_fault_active` for each of [`FaultKey::KINDS`], resolved once.
    causes: [prometheus::Gauge; FaultKey::KINDS.len()],
    ticks: u64,
    timer: Option<JoinHandle<()>>,
    checkpoint: CheckpointWriter,
}

pub(crate) fn checkpoint_key(segment: &str) -> String {
    format!("safety/{segment}")
}

impl SafetyState {
    /// Export which kinds of fault source the ladder holds a demand for (after every message:
    /// a tick at least every [`SAFETY_TICK`]).
    fn publish_causes(&self) {
        let mut active = [false; FaultKey::KINDS.len()];
        for key in lock(&self.seg.ladder).causes() {
            if let Some(i) = FaultKey::KINDS.iter().position(|k| *k == key.kind()) {
                active[i] = true;
            }
        }
        for (gauge, on) in self.causes.iter().zip(active) {
            gauge.set(if on { 1.0 } else { 0.0 });
        }
    }
    fn now(&self) -> std::time::Duration {
        self.shared.clock.now()
    }

    /// Enforce a transition: publish it, command every device (each by its own task: this
    /// returns at once), then the links' re-clamp and a fresh dispatch, and checkpoint the
    /// level (in the background, retried). Nothing here waits on a device or the store.
    fn transitioned(&mut self, t: Transition) {
        let seg = &self.seg;
        // The ladder's level now, not `t.to`: a transition may be older than the latest.
        let level = seg.publish_level();
        let m = &self.shared.metrics;
        m.segment_level
            .with_label_values(&[&seg.id])
            .set(f64::from(level.severity()));
        m.transitions
            .with_label_values(&[&seg.id, level_name(t.to)])
            .inc();
        if t.alarm {
            tracing::error!(segment = %seg.id, to = %t.to, causes = ?t.causes, "ALARM: safe state");
        } else {
            tracing::warn!(segment = %seg.id, from = %t.from, to = %t.to, causes = ?t.causes, "safe state");
        }
        self.shared.record(&seg.id, t.clone());
        self.drive_relay(Some(t.from));
        // Command every device first: the checkpoint can wait a millisecond, the grid not.
        self.command_all();
        self.checkpoint.write(level);
    }

    /// Command every device of the segment to the current level, directly through the
    /// device connections, each by its own task ([`safe_command`]): not through the links'
    /// mailboxes, where a safe state would queue behind setpoints, and not only the devices
    /// whose link is running. Then every link re-clamps with everything it knows (the
    /// vehicle's minimum SoC too), which also corrects a setpoint a link computed under the
    /// old level a moment before, and the site dispatches again so that power moves to where
    /// it is allowed. Those follow-ups wait until every device's first attempt ended, at
    /// most [`FOLLOW_UP_WAIT`]: thousands of link handlers and a dispatch round over every
    /// session must not take the workers before the safe-state writes (they did, by tens of
    /// milliseconds, in `bench site`).
    fn command_all(&self) {
        let round = safe_command::command(&self.seg, self.now());
        let seg = self.seg.clone();
        let site = lock(&self.shared.site).clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(FOLLOW_UP_WAIT, round.settled()).await;
            for l in seg.links.iter() {
                let _ = l.actor.send_message(LinkMsg::Enforce);
            }
            if let Some(site) = site {
                let _ = site.send_message(SiteMsg::Redispatch);
            }
        });
    }

    /// The trip relay, if the segment has one, follows the level (`crate::io::relay`): the
    /// trip asserted on a transition to Tripped and re-asserted on every tick while Tripped
    /// (`from` None), released by the transition that ends the lockout. Never waits for it.
    fn drive_relay(&self, from: Option<SafeState>) {
        if let Some(relay) = &self.seg.relay {
            lock(relay).follow(self.seg.level(), from, self.now());
        }
    }

    fn scan_leases(&self) {
        let now = self.now();
        for l in self.seg.links.iter() {
            if l.status.lease_until.is_some_and(|u| u <= now) {
                let _ = l.actor.send_message(LinkMsg::LeaseExpired);
            }
        }
    }
}

/// Command every device of `seg` to the segment's current level, each by its own task, and
/// wait until every device's first attempt ended (delivered, failed or missed its deadline),
/// at most [`SETTLE_LIMIT`]. For the callers outside the safety actor (a segment handed
/// off, a segment whose supervisor gave up), which want the devices commanded before they go
/// on; the safety actor itself never waits.
pub(crate) async fn command_devices(shared: &SiteShared, seg: &SegmentShared) {
    let round = safe_command::command(seg, shared.clock.now());
    if tokio::time::timeout(SETTLE_LIMIT, round.settled())
        .await
        .is_err()
    {
        tracing::warn!(segment = %seg.id, limit = ?SETTLE_LIMIT, "safe-state command not settled (a newer level replaced it)");
    }
}

/// How long [`command_devices`] waits for a round: every first attempt ends within the
/// deadline, so only a round that a newer level replaced takes longer.
pub const SETTLE_LIMIT: Duration = Duration::from_millis(
    safe_command::SAFE_COMMAND_DEADLINE.as_millis() as u64
        + safe_command::SAFE_COMMAND_RETRY_FIRST.as_millis() as u64,
);

/// How long the follow-ups of a safe-state command (the links' re-clamp, a fresh dispatch)
/// wait for the devices' first attempts to end (one safety tick).
pub const FOLLOW_UP_WAIT: Duration = super::SAFETY_TICK;

/// The first wait before a safe-state checkpoint that failed is written again.
pub const CHECKPOINT_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a checkpoint that keeps failing (the wait doubles
/// from [`CHECKPOINT_RETRY_FIRST`]); it is tried until written or replaced by a newer level.
pub const CHECKPOINT_RETRY_MAX: Duration = Duration::from_secs(5);

/// The safety actor's checkpoint of its level, written by a task of its own: the newest
/// level in a latest-value slot, a failed write logged, counted
/// (`gridvisor_safe_state_checkpoint_failures_total`) and retried with a backoff. A store
/// that fails never stops the actor (it used to crash it, which restarted the segment).
struct CheckpointWriter {
    tx: watch::Sender<Option<SafeState>>,
    task: JoinHandle<()>,
}

impl CheckpointWriter {
    fn start(shared: &SiteShared, segment: &str) -> Self {
        let (tx, rx) = watch::channel(None);
        let store = shared.store.clone();
        let failures = shared
            .metrics
            .safe_checkpoint_failures
            .with_label_values(&[segment]);
        let task = tokio::spawn(write_levels(store, segment.to_owned(), failures, rx));
        CheckpointWriter { tx, task }
    }

    /// Checkpoint `level` (replaces a level not written yet).
    fn write(&self, level: SafeState) {
        self.tx.send_replace(Some(level));
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The checkpoint writer's task.
async fn write_levels(
    store: CheckpointStore,
    segment: String,
    failures: prometheus::IntCounter,
    mut rx: watch::Receiver<Option<SafeState>>,
) {
    let key = checkpoint_key(&segment);
    let mut pending = None;
    loop {
        let level = match pending.take() {
            Some(level) => level,
            None => match next_level(&mut rx).await {
                Some(level) => level,
                None => return,
            },
        };
        let mut retry = CHECKPOINT_RETRY_FIRST;
        while let Err(error) = store.put(&key, &SafetyCheckpoint { level }).await {
            failures.inc();
            tracing::warn!(%segment, %level, %error, retry_in = ?retry, "safe-state checkpoint failed");
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                newer = next_level(&mut rx) => match newer {
                    Some(newer) => { pending = Some(newer); break; }
                    None => return,
                },
            }
            retry = (retry * 2).min(CHECKPOINT_RETRY_MAX);
        }
    }
}

async fn next_level(rx: &mut watch::Receiver<Option<SafeState>>) -> Option<SafeState> {
    loop {
        rx.changed().await.ok()?;
        if let Some(level) = *rx.borrow_and_update() {
            return Some(level);
        }
    }
}

pub(crate) fn level_name(s: SafeState) -> &'static str {
    match s {
        SafeState::Normal => "normal",
        SafeState::Limited { .. } => "limited",
        SafeState::ChargeOnly => "charge_only",
        SafeState::Tripped => "tripped",
    }
}

impl Actor for Safety {
    type Msg = SafetyMsg;
    type State = SafetyState;
    type Arguments = (Arc<SiteShared>, Arc<SegmentShared>, String);

    async fn pre_start(
        &self,
        myself: ActorRef<SafetyMsg>,
        (shared, seg, path): Self::Arguments,
    ) -> Result<SafetyState, ActorProcessingErr> {
        let now = shared.clock.now();
        let mailbox = shared.supervision.mailbox(&path).reopen();
        let causes = FaultKey::KINDS.map(|kind| {
            shared
                .metrics
                .fault_active
                .with_label_values(&[&seg.id, kind])
        });
        let checkpoint = CheckpointWriter::start(&shared, &seg.id);
        let mut state = SafetyState {
            shared,
            seg,
            path,
            mailbox,
            causes,
            ticks: 0,
            timer: None,
            checkpoint,
        };
        // After a node restart the in-memory ladder is fresh: restore the checkpointed level
        // and hold it. After an actor restart the ladder kept its state; restoring is then a
        // no-op for a level it already holds.
        let restored: Option<SafetyCheckpoint> =
            state.shared.store.get(&checkpoint_key(&state.seg.id))?;
        let mut transitions = Vec::new();
        {
            let mut ladder = lock(&state.seg.ladder);
            if let Some(cp) = restored {
                if ladder.level().severity() < cp.level.severity() {
                    transitions.extend(ladder.observe(Fault::Restored(cp.level), now));
                }
            }
            // The segment runs (again): a restart-intensity cause set by the hook is cleared
            // and held for the hold time.
            let sup = segment_path(&state.path);
            transitions.extend(ladder.observe(
                Fault::RestartIntensity {
                    supervisor: sup,
                    exceeded: false,
                },
                now,
            ));
            state.seg.set_level(ladder.level());
        }
        state
            .shared
            .metrics
            .segment_level
            .with_label_values(&[&state.seg.id])
            .set(f64::from(state.seg.level().severity()));
        *lock(&state.seg.safety) = Some(CountedRef::new(myself.clone(), state.mailbox.clone()));
        let restarted_quietly = transitions.is_empty();
        for t in transitions {
            state.transitioned(t);
        }
        if restarted_quietly {
            // A write the previous incarnation could not finish is not lost.
            state.checkpoint.write(state.seg.level());
        }
        state.timer = Some(super::tick_after(&myself, SAFETY_TICK, || SafetyMsg::Tick));
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SafetyMsg>,
        msg: SafetyMsg,
        state: &mut SafetyState,
    ) -> Result<(), ActorProcessingErr> {
        state.mailbox.handled();
        let now = state.now();
        let transition = match msg {
            SafetyMsg::Observe(f) => lock(&state.seg.ladder).observe(f, now),
            SafetyMsg::Enforce(t) => Some(t),
            SafetyMsg::Tick => {
                state.timer = Some(super::tick_after(&myself, SAFETY_TICK, || SafetyMsg::Tick));
                state.ticks += 1;
                let mut ladder = lock(&state.seg.ladder);
                let mut t = None;
                if !state.shared.topology.site.keepalive_required {
                    t = t.or(ladder.observe(Fault::KeepAlive, now));
                }
                let clock = state.shared.clock_status();
                t = crate::clock_source::observe(&mut ladder, &clock, now).or(t);
                t = ladder.tick(now).or(t);
                drop(ladder);
                let every = (LEASE_SCAN.as_millis() / SAFETY_TICK.as_millis()).max(1) as u64;
                if state.ticks % every == 0 {
                    state.scan_leases();
                }
                state.drive_relay(None);
                t
            }
            SafetyMsg::ChildExit(n) => {
                tracing::info!(child = %n.path, reason = %n.reason, action = ?n.action, "segment child exited");
                let gave_up = matches!(
                    n.reason.error::<SupervisorError>(),
                    Some(SupervisorError::ReachedMaxRestartIntensity { .. })
                );
                gave_up
                    .then(|| {
                        lock(&state.seg.ladder).observe(
                            Fault::RestartIntensity {
                                supervisor: n.path.to_string(),
                                exceeded: true,
                            },
                            now,
                        )
                    })
                    .flatten()
            }
        };
        if let Some(t) = transition {
            state.transitioned(t);
        }
        state.publish_causes();
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SafetyMsg>,
        state: &mut SafetyState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        super::shared::release(&state.seg.safety, &myself);
        state.mailbox.close();
        Ok(())
    }
}

/// The segment supervisor's path from the safety actor's path (its parent).
fn segment_path(path: &str) -> String {
    path.rsplit_once('/')
        .map(|(p, _)| p.to_string())
        .unwrap_or_else(|| path.to_string())
}
