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

use gridvisor_supervisors::{CountedRef, Mailbox};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use gridvisor_supervisors::SupervisorError;

use super::shared::{lock, SegmentShared, SiteShared};
use super::{LinkMsg, SafetyMsg, SiteMsg, LEASE_SCAN, SAFETY_TICK};
use crate::ladder::{Fault, FaultKey, SafeState, Transition};
use crate::setpoint::SetpointKey;

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

    async fn transitioned(&mut self, t: Transition) -> Result<(), ActorProcessingErr> {
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
        self.command_all().await;
        if let Some(site) = lock(&self.shared.site).as_ref() {
            let _ = site.send_message(SiteMsg::Redispatch);
        }
        self.shared
            .store
            .put(&checkpoint_key(&seg.id), &SafetyCheckpoint { level })
            .await?;
        Ok(())
    }

    /// Command every device of the segment to the current level, directly through the
    /// device connections and all at once: not through the links' mailboxes, where a safe
    /// state would queue behind setpoints, and not only the devices whose link is running.
    /// Then every link re-clamps with everything it knows (the vehicle's minimum SoC too),
    /// which also corrects a setpoint a link computed under the old level a moment before.
    async fn command_all(&self) {
        command_devices(&self.shared, &self.seg).await;
        for l in self.seg.links.iter() {
            let _ = l.actor.send_message(LinkMsg::Enforce);
        }
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

/// Command every device of `seg` to the segment's current level, all at once, directly
/// through the device connections; records how long it took. Used by the safety actor on a
/// change of level, and by the `segments` hook when the whole segment is down.
pub(crate) async fn command_devices(shared: &SiteShared, seg: &SegmentShared) {
    let started = tokio::time::Instant::now();
    let level = seg.level();
    let now = shared.clock.now();
    let devices = &shared.devices;
    let chargers = seg.config.chargers.iter().filter_map(|c| {
        let io = devices.chargers.get(&c.id)?.clone();
        Some(async move {
            let r = io.read(now).await?;
            let clamped = level.clamp(r.setpoint_kw);
            if clamped != r.setpoint_kw {
                let key = r.applied.unwrap_or(SetpointKey::new(0, 0));
                io.write(key, clamped, r.lease_until, now).await?;
            }
            Ok::<_, crate::device::DeviceError>(())
        })
    });
    let inverters = seg.config.inverters.iter().filter_map(|i| {
        let io = devices.inverters.get(&i.id)?.clone();
        Some(async move {
            let r = io.read(now).await?;
            let clamped = level.clamp(r.setpoint_kw);
            if clamped != r.setpoint_kw {
                io.write(clamped, now).await?;
            }
            Ok::<_, crate::device::DeviceError>(())
        })
    });
    let (c, i) = futures::future::join(
        futures::future::join_all(chargers),
        futures::future::join_all(inverters),
    )
    .await;
    shared.record_command(&seg.id, started.elapsed());
    for e in c.into_iter().chain(i).filter_map(Result::err) {
        tracing::warn!(segment = %seg.id, error = %e, "safe-state command not delivered");
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
        let mut state = SafetyState {
            shared,
            seg,
            path,
            mailbox,
            causes,
            ticks: 0,
            timer: None,
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
        for t in transitions {
            state.transitioned(t).await?;
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
            state.transitioned(t).await?;
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
