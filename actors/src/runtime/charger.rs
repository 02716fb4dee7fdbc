//! A charger: its supervisor (rest_for_one: the link, then the session of the vehicle
//! plugged in), the link that owns the device connection, and the vehicle session.
//!
//! The link is where a setpoint becomes a device write, so it is where idempotency and
//! local safety are enforced:
//! - a setpoint is applied at most once per key ([`IdempotentApplier`]); a repeat is
//!   answered with the first result, an older key is refused as stale;
//! - the kW written is clamped by the segment's safe state and by the vehicle's minimum SoC,
//!   whatever the dispatcher asked (local safety always clamps remote dispatch);
//! - the applied key goes into the segment's applied map, which the dispatcher checkpoints
//!   durably (one record per segment and batch) BEFORE the acknowledgement, so an
//!   acknowledged setpoint survives any crash or stop;
//! - a restarted link reads its entry of the applied map and the device's own record of the
//!   applied key before it writes anything (read before write), and adopts the device's
//!   record if the previous incarnation died between the write and the checkpoint.
//!
//! The session follows the ISO 15118-like state machine of [`crate::session`] and integrates
//! SoC from the charger's energy register, not from commanded power: a restarted session
//! re-reads the register, so energy delivered while it was down is counted once, never twice
//! and never lost.

use std::sync::Arc;
use std::time::Duration;

use gridvisor_supervisors::prelude::*;
use gridvisor_supervisors::{CountedRef, Mailbox};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::repeats::{Say, REPEAT_WINDOW};
use super::shared::{LinkEntry, LinkStatus, SegmentShared, SessionStatus, SiteShared};
use super::{BatchTally, LinkMsg, SessionMsg, SetpointOutcome};
use crate::device::{ChargerIo, ChargerReading};
use crate::session::{Session, SessionEvent, SessionState};
use crate::setpoint::{Applied, Decision, IdempotentApplier, Setpoint, SetpointKey};

/// A charger supervisor's restart intensity: more than this many restarts ...
pub const CHARGER_MAX_RESTARTS: u32 = 20;
/// ... within this period and the charger gives up (its parent decides).
pub const CHARGER_RESTART_PERIOD: Duration = Duration::from_secs(10);
/// A session checkpoints its SoC at least every this many readings (and on every state
/// change). SoC is derived from the energy register, so readings in between lose nothing.
pub const SESSION_CHECKPOINT_EVERY: u64 = 10;

/// What a charger child of the `chargers` dynamic supervisor is started with.
#[derive(Clone)]
pub(crate) struct ChargerArgs {
    pub shared: Arc<SiteShared>,
    pub seg: Arc<SegmentShared>,
    pub charger: crate::config::Charger,
}

/// The template of the segment's dynamic `chargers` supervisor.
pub(crate) fn charger_template() -> ChildSpec<ChargerArgs> {
    ChildSpec::worker(
        "charger",
        |ctx: ChildContext, args: ChargerArgs| async move {
            let id = args.charger.id.clone();
            let link_args = args.clone();
            let link = ChildSpec::worker("link", move |ctx: ChildContext, ()| {
                let a = link_args.clone();
                async move {
                    let path = ctx.path().to_string();
                    ctx.spawn(Link, (a.shared, a.seg, a.charger, path)).await
                }
            });
            let mut children = vec![link];
            // A vehicle that is plugged in gets its session back (after a restart of the
            // charger by its parent, the session spec added at plug-in time is gone with the
            // old supervisor). It is part of the start, so a failed start leaves nothing
            // running behind it.
            let plugged = args.shared.plugged.get(&id).map(|v| v.value().clone());
            if let Some(vehicle) = plugged {
                children.push(session_spec(&args, &vehicle));
            }
            // Its running children are counted with every other charger supervisor's of the
            // segment (as its own starts and exits are, by its parent).
            let config = SupervisorConfig::new(&id, Strategy::RestForOne)
                .intensity(CHARGER_MAX_RESTARTS, CHARGER_RESTART_PERIOD)
                .metrics_label(super::node::charger_path(&args.seg.id, "*"));
            let cell = Supervisor::start_in(&ctx, config, children).await?;
            Ok(cell)
        },
    )
    .kind(ChildKind::Supervisor)
    .shutdown(Shutdown::Infinity)
}

/// The child spec of a vehicle's session (transient: a session that ends normally, because
/// the vehicle left, is not restarted).
pub(crate) fn session_spec(args: &ChargerArgs, vehicle: &str) -> ChildSpec<()> {
    let label =
        (!args.shared.options.per_session_metrics).then(|| aggregated_session_label(&args.seg.id));
    let args = args.clone();
    let vehicle_id = vehicle.to_string();
    let spec = ChildSpec::worker(vehicle, move |ctx: ChildContext, ()| {
        let a = args.clone();
        let v = vehicle_id.clone();
        async move {
            let path = ctx.path().to_string();
            ctx.spawn(SessionActor, (a.shared, a.seg, a.charger.id, v, path))
                .await
        }
    })
    .restart(Restart::Transient);
    match label {
        Some(label) => spec.metrics_label(label),
        None => spec,
    }
}

/// The one metrics label of all a segment's sessions when sessions are not counted per
/// actor (`node/segments/<id>/chargers/*/session`).
pub(crate) fn aggregated_session_label(segment: &str) -> String {
    format!("{}/session", super::node::charger_path(segment, "*"))
}

/// A link whose device does not answer retries after this long, doubling ...
pub const LINK_RETRY_FIRST: Duration = Duration::from_millis(100);
/// ... up to this.
pub const LINK_RETRY_MAX: Duration = Duration::from_secs(10);

pub(crate) struct Link;

pub(crate) struct LinkState {
    shared: Arc<SiteShared>,
    seg: Arc<SegmentShared>,
    io: Arc<dyn ChargerIo>,
    charger: crate::config::Charger,
    applier: IdempotentApplier,
    /// Its mailbox counts (handled messages and depth; per actor: chargers are few enough
    /// and each matters).
    mailbox: Mailbox,
    myself: ActorRef<LinkMsg>,
    /// Whether the last applied setpoint was applied by this run of the node.
    same_run: bool,
    /// Whether the device answered the last read-before-write.
    online: bool,
    /// The next retry's wait while offline.
    retry: Duration,
    /// The setpoint whose lease end was already handled (it must not fire again).
    lease_handled: Option<SetpointKey>,
    /// Failed setpoints, said once a window (`gridvisor_setpoints_total{outcome="failed"}` counts
    /// each).
    failures: std::cell::Cell<super::repeats::Repeats>,
}

impl LinkState {
    fn publish(&self, reading: Option<&ChargerReading>) {
        let last = self.applier.last();
        // Update the entry in place (keeping the last reading when there is no new one);
        // insert it the first time (the only time the id is copied).
        let mut entry = match self.seg.links.get_mut(&self.charger.id) {
            Some(e) => e,
            None => self
                .seg
                .links
                .entry(self.charger.id.clone())
                .or_insert_with(|| LinkEntry {
                    actor: CountedRef::new(self.myself.clone(), self.mailbox.clone()),
                    status: LinkStatus {
                        commanded_kw: None,
                        measured_kw: None,
                        applied: None,
                        lease_until: None,
                    },
                }),
        };
        if entry.actor.get_id() != self.myself.get_id() {
            entry.actor = CountedRef::new(self.myself.clone(), self.mailbox.clone());
        }
        let status = &mut entry.status;
        if let Some(r) = reading {
            status.commanded_kw = Some(r.setpoint_kw);
            status.measured_kw = Some(r.power_kw);
        }
        status.applied = last.map(|a| a.key);
        status.lease_until = last
            .filter(|a| Some(a.key) != self.lease_handled)
            .map(|a| a.lease_until);
    }

    /// The most this link may write now: the segment's safe state, then the vehicle's
    /// minimum SoC (no discharge at or below it) and its full battery.
    fn local_clamp(&self, kw: f64) -> f64 {
        let mut kw = self.seg.level().clamp(kw);
        if let Some(s) = self.seg.sessions.get(&self.charger.id) {
            let sess = &s.session;
            if sess.state == SessionState::Ended {
                kw = 0.0;
            } else if kw < 0.0 {
                // A setpoint may hold for its whole lease if nothing else arrives: discharge
                // only what keeps the vehicle above its minimum SoC for that long.
                let horizon_s = self.shared.topology.site.lease_s;
                kw = kw.max(-sess.discharge_limit_kw(horizon_s));
            }
        } else {
            // No session: no vehicle we know of, no power.
            kw = 0.0;
        }
        if !self.charger.bidirectional {
            kw = kw.max(0.0);
        }
        kw.clamp(-self.charger.max_kw, self.charger.max_kw)
    }

    /// Apply a setpoint: decide, clamp, write the device and record it in the segment's
    /// applied map. The dispatcher checkpoints that map once per batch and acknowledges the
    /// batch only when it is durable, so the link's mailbox never waits for an fsync and a
    /// safe-state command behind a setpoint is handled at once.
    async fn apply(&mut self, sp: Setpoint, batch: &tracing::Span) -> SetpointOutcome {
        match self.applier.decide(sp.key) {
            // A repeat is answered with the first result (the dispatcher's record of this
            // batch makes it durable before it is acknowledged).
            Decision::Repeat(a) => return SetpointOutcome::Repeat(a),
            Decision::Stale { latest } => return SetpointOutcome::Stale { latest },
            Decision::Apply => {}
        }
        let failed = |e: String| SetpointOutcome::Failed { error: e };
        let kw = self.local_clamp(sp.kw);
        let now = self.shared.clock.now();
        let span = tracing::debug_span!(parent: batch, "device_write", charger = %self.charger.id);
        let written = self
            .io
            .write(sp.key, kw, Some(sp.lease_until), now)
            .instrument(span.clone())
            .await;
        let reading = match written {
            Ok(r) => r,
            Err(e) => {
                span.in_scope(|| tracing::debug!(error = %e, "device write failed"));
                return failed(e.to_string());
            }
        };
        span.in_scope(|| {
            tracing::debug!(requested_kw = sp.kw, applied_kw = kw, "setpoint written")
        });
        let applied = Applied {
            key: sp.key,
            requested_kw: sp.kw,
            applied_kw: kw,
            lease_until: sp.lease_until,
        };
        if let Err(e) = self.applier.record(applied) {
            return failed(e.to_string());
        }
        self.seg
            .record_applied(&self.charger.id, applied, self.shared.boot);
        self.same_run = true;
        self.publish(Some(&reading));
        SetpointOutcome::Applied(applied)
    }

    /// Count the answer in its batch's tally (the last one wakes the dispatcher).
    fn ack(&self, tally: &BatchTally, outcome: SetpointOutcome) {
        self.shared.metrics.setpoint_outcomes[outcome.index()].inc();
        if let SetpointOutcome::Failed { error } = &outcome {
            let mut failures = self.failures.get();
            let say = failures.note(self.shared.clock.now());
            self.failures.set(failures);
            if let Say::Now { since } = say {
                let window = REPEAT_WINDOW;
                tracing::warn!(charger = %self.charger.id, %error, key = %tally.key(), also_failed = since, ?window, "setpoint failed (once per window; every failure is counted in gridvisor_setpoints_total, outcome failed)");
            }
        }
        tally.answer(&outcome);
    }

    /// Read the device, adopt its record of the applied key if it is newer than ours (the
    /// previous incarnation wrote it and died before its checkpoint), and bring it under the
    /// current safe state and the lease rule. Marks the link online.
    async fn sync(&mut self) -> Result<(), ActorProcessingErr> {
        let now = self.shared.clock.now();
        let reading = self.io.read(now).await?;
        let mut adopted = false;
        if let Some(device_key) = reading.applied {
            if self.applier.last().is_none_or(|a| a.key < device_key) {
                // The device is the truth. Its lease is unknown, so it counts as ended now.
                self.applier.record(Applied {
                    key: device_key,
                    requested_kw: reading.setpoint_kw,
                    applied_kw: reading.setpoint_kw,
                    lease_until: now,
                })?;
                if let Some(a) = self.applier.last() {
                    self.seg
                        .record_applied(&self.charger.id, a, self.shared.boot);
                }
                adopted = true;
            }
        }
        self.publish(Some(&reading));
        // An adopted record's lease is unknown, and a lease from another run of the node is a
        // time on another clock: both count as ended.
        let lease_ok =
            self.same_run && !adopted && self.applier.last().is_some_and(|a| a.lease_until > now);
        let target = (!lease_ok).then_some(self.seg.config.safe_default_kw);
        self.enforce(target).await?;
        self.online = true;
        self.retry = LINK_RETRY_FIRST;
        Ok(())
    }

    /// Try to reach the device again after the current backoff (doubling up to
    /// [`LINK_RETRY_MAX`]).
    fn schedule_retry(&mut self) {
        self.online = false;
        let wait = self.retry;
        self.retry = (self.retry * 2).min(LINK_RETRY_MAX);
        drop(self.myself.send_after(wait, || LinkMsg::Poll));
    }

    /// Re-apply the local clamps to what the device holds (a safe-state change, a lease
    /// that ended). The device keeps its applied key: this is a local override, not a
    /// remote setpoint.
    async fn enforce(&mut self, target_kw: Option<f64>) -> Result<(), ActorProcessingErr> {
        let now = self.shared.clock.now();
        let r = self.io.read(now).await?;
        let wanted = target_kw.unwrap_or(r.setpoint_kw);
        let clamped = self.local_clamp(wanted);
        if clamped != r.setpoint_kw {
            let key = r.applied.unwrap_or(SetpointKey {
                dispatch: 0,
                revision: 0,
            });
            // A clamp keeps the device's lease; the safe default itself needs none.
            let lease = if target_kw.is_some() {
                None
            } else {
                r.lease_until
            };
            let r = self.io.write(key, clamped, lease, now).await?;
            self.publish(Some(&r));
        }
        Ok(())
    }
}

impl Actor for Link {
    type Msg = LinkMsg;
    type State = LinkState;
    type Arguments = (
        Arc<SiteShared>,
        Arc<SegmentShared>,
        crate::config::Charger,
        String,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<LinkMsg>,
        (shared, seg, charger, path): Self::Arguments,
    ) -> Result<LinkState, ActorProcessingErr> {
        let io = shared.devices.charger(&charger.id)?;
        // Read before write, part one: the segment's record of what this charger applied
        // (checkpointed by the dispatcher, kept in memory while the node runs).
        let last = seg.applied.get(&charger.id).map(|e| *e.value());
        // A lease from another run of the node is a time on another clock: ended.
        let same_run = last.as_ref().is_some_and(|(_, boot)| *boot == shared.boot);
        let applier = IdempotentApplier::from_last(last.map(|(a, _)| a))?;
        let mailbox = shared.supervision.mailbox(&path).reopen();
        let mut state = LinkState {
            shared,
            seg,
            io,
            charger,
            applier,
            mailbox,
            myself: myself.clone(),
            same_run,
            online: false,
            retry: LINK_RETRY_FIRST,
            lease_handled: None,
            failures: Default::default(),
        };
        // Registered at once, online or not (the node counts its links to know it is up).
        state.publish(None);
        // Part two: the device. A device that does not answer does not stop the link (nor,
        // through its supervisors, the segment): the link starts offline and retries.
        if let Err(e) = state.sync().await {
            if state.shared.devices.ocpp.is_some() {
                // An OCPP charger connects when it connects: its link hears of it at once.
                tracing::info!(charger = %state.charger.id, "waiting for the charge point to connect");
            } else {
                tracing::warn!(charger = %state.charger.id, error = %e, "charger offline at start; retrying");
            }
            state.schedule_retry();
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<LinkMsg>,
        msg: LinkMsg,
        s: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        s.mailbox.handled();
        match msg {
            LinkMsg::Setpoint(sp, tally) => {
                if !s.online {
                    // Read before write: a link that could not read its device writes nothing.
                    if let Err(e) = s.sync().await {
                        s.ack(
                            &tally,
                            SetpointOutcome::Failed {
                                error: format!("charger offline: {e}"),
                            },
                        );
                        return Ok(());
                    }
                }
                let outcome = s.apply(sp, tally.span()).await;
                if matches!(outcome, SetpointOutcome::Failed { .. }) && s.online {
                    s.schedule_retry();
                }
                s.ack(&tally, outcome);
            }
            LinkMsg::Enforce => {
                let r = if s.online {
                    s.enforce(None).await
                } else {
                    s.sync().await
                };
                if let Err(e) = r {
                    tracing::warn!(charger = %s.charger.id, error = %e, "re-clamp not delivered: charger offline");
                    if s.online {
                        s.schedule_retry();
                    }
                }
            }
            LinkMsg::LeaseExpired => {
                let now = s.shared.clock.now();
                let last = s.applier.last();
                let expired = last.filter(|a| a.lease_until <= now).map(|a| a.key);
                if expired.is_some() && expired != s.lease_handled && s.online {
                    tracing::info!(charger = %s.charger.id, "setpoint lease ended: safe default");
                    match s.enforce(Some(s.seg.config.safe_default_kw)).await {
                        Ok(()) => {
                            // The lease rule must not fire again for this setpoint.
                            s.lease_handled = expired;
                            s.publish(None);
                        }
                        Err(e) => {
                            tracing::warn!(charger = %s.charger.id, error = %e, "lease fallback not delivered: charger offline");
                            s.schedule_retry();
                        }
                    }
                }
            }
            LinkMsg::ConnectionLost(reason) => {
                // The supervisor restarts this link (and the session after it); the new one
                // starts offline and reads the device when it is back.
                return Err(format!("charger {}: connection lost: {reason}", s.charger.id).into());
            }
            LinkMsg::Poll => {
                if s.online {
                    let now = s.shared.clock.now();
                    match s.io.read(now).await {
                        Ok(r) => s.publish(Some(&r)),
                        Err(_) => s.schedule_retry(),
                    }
                } else if let Err(e) = s.sync().await {
                    tracing::debug!(charger = %s.charger.id, error = %e, "charger still offline");
                    s.schedule_retry();
                } else {
                    tracing::info!(charger = %s.charger.id, "charger back online");
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<LinkMsg>,
        s: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        s.seg
            .links
            .remove_if(&s.charger.id, |_, e| e.actor.get_id() == myself.get_id());
        s.mailbox.close();
        Ok(())
    }
}

/// What a session checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionCheckpoint {
    /// The session model.
    pub session: Session,
    /// The charger's energy register when `session` was last updated; None until the
    /// charger could be read once (a session may start while its charger is offline).
    pub register_kwh: Option<f64>,
}

pub(crate) fn session_checkpoint_key(vehicle: &str) -> String {
    format!("session/{vehicle}")
}

pub(crate) struct SessionActor;

pub(crate) struct SessionActorState {
    shared: Arc<SiteShared>,
    seg: Arc<SegmentShared>,
    io: Arc<dyn ChargerIo>,
    charger: String,
    cp: SessionCheckpoint,
    readings: u64,
    mailbox: Mailbox,
    /// How often it reads its charger (the site's cycle).
    period: Duration,
    timer: Option<JoinHandle<()>>,
}

impl SessionActorState {
    fn publish(&self, power_kw: f64) {
        // The link's entry shows what the charger delivers. A session reads it every cycle,
        // the link only when it writes: without this, a vehicle that left would go on
        // counting at its last written power, which the thermal cap would take for load
        // the meter no longer sees besides the chargers (and loosen the cap by it).
        if let Some(mut link) = self.seg.links.get_mut(&self.charger) {
            link.status.measured_kw = Some(power_kw);
        }
        self.seg.sessions.insert(
            self.charger.clone(),
            SessionStatus {
                session: self.cp.session.clone(),
                register_kwh: self.cp.register_kwh,
                power_kw,
            },
        );
        if self.shared.options.per_session_metrics {
            self.shared
                .metrics
                .session_soc
                .with_label_values(&[&self.cp.session.vehicle, &self.seg.id])
                .set(self.cp.session.soc_pct);
        }
    }

    async fn checkpoint(&self) -> Result<(), crate::checkpoint::CheckpointError> {
        self.shared
            .store
            .put(&session_checkpoint_key(&self.cp.session.vehicle), &self.cp)
            .await
    }

    /// Integrate the register since the last reading and follow the power's direction.
    fn take(&mut self, r: &ChargerReading) -> bool {
        let Some(base) = self.cp.register_kwh else {
            // The first reading of this session: the base, nothing delivered yet.
            self.cp.register_kwh = Some(r.energy_kwh);
            return false;
        };
        let delta = r.energy_kwh - base;
        self.cp.register_kwh = Some(r.energy_kwh);
        match self.cp.session.integrate(delta) {
            Ok(false) => {}
            // The estimate left 0..=100 %: the model and the vehicle disagree (a register
            // reset, a wrong capacity). The clamp keeps it usable; say so.
            Ok(true) => tracing::warn!(
                vehicle = %self.cp.session.vehicle,
                delta_kwh = delta,
                "SoC estimate clamped to 0..=100 %"
            ),
            Err(e) => tracing::warn!(
                vehicle = %self.cp.session.vehicle,
                error = %e,
                "energy register reading refused"
            ),
        }
        // What the EV itself reported (OCPP: its needs, its SoC) corrects the estimate.
        let ev_changed = self.take_ev();
        let before = self.cp.session.state;
        if matches!(
            before,
            SessionState::Authorized
                | SessionState::Charging
                | SessionState::Discharging
                | SessionState::Paused
        ) {
            let _ = self
                .cp
                .session
                .apply(SessionEvent::Power { kw: r.power_kw });
        }
        self.cp.session.state != before || ev_changed
    }

    /// Take the EV's report from the CSMS (issue 21); whether the session changed.
    fn take_ev(&mut self) -> bool {
        let Some(hub) = &self.shared.devices.ocpp else {
            return false;
        };
        let now_s = self.shared.clock.now().as_secs_f64();
        let report = hub.ev_report(&self.charger).unwrap_or_default();
        self.cp.session.take_ev(&report, now_s, hub.now_unix_s())
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionActorState;
    type Arguments = (Arc<SiteShared>, Arc<SegmentShared>, String, String, String);

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        (shared, seg, charger, vehicle, path): Self::Arguments,
    ) -> Result<SessionActorState, ActorProcessingErr> {
        let io = shared.devices.charger(&charger)?;
        let now = shared.clock.now();
        // A charger that does not answer does not stop the session: it counts from the
        // first reading it gets.
        let reading = match io.read(now).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(%charger, %vehicle, error = %e, "session starts with its charger offline");
                None
            }
        };
        let cp: Option<SessionCheckpoint> = shared.store.get(&session_checkpoint_key(&vehicle))?;
        let fresh = cp.is_none();
        let cp = match cp {
            Some(cp) => cp,
            None => {
                let v = shared
                    .vehicle(&vehicle)
                    .ok_or_else(|| format!("vehicle {vehicle} is not in the topology"))?;
                SessionCheckpoint {
                    session: Session::from_vehicle(v),
                    register_kwh: reading.map(|r| r.energy_kwh),
                }
            }
        };
        let mailbox = if shared.options.per_session_metrics {
            shared.supervision.mailbox(&path).reopen()
        } else {
            shared
                .supervision
                .mailbox(&aggregated_session_label(&seg.id))
                .open()
        };
        let shared_cycle_ms = shared.topology.site.cycle_ms;
        let mut state = SessionActorState {
            shared,
            seg,
            io,
            charger,
            cp,
            readings: 0,
            mailbox,
            period: Duration::from_millis(shared_cycle_ms),
            timer: None,
        };
        if state.cp.session.state == SessionState::Plugged {
            state.cp.session.apply(SessionEvent::Authorize)?;
        }
        // Count what was delivered while no session actor was running.
        if let Some(r) = &reading {
            state.take(r);
        }
        state.publish(reading.map_or(0.0, |r| r.power_kw));
        if fresh || state.cp.session.state != SessionState::Ended {
            state.checkpoint().await?;
        }
        state
            .seg
            .session_actors
            .insert(state.charger.clone(), myself.clone());
        state.timer = Some(super::tick_after(&myself, state.period, || {
            SessionMsg::Tick
        }));
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        s: &mut SessionActorState,
    ) -> Result<(), ActorProcessingErr> {
        s.mailbox.handled();
        match msg {
            SessionMsg::Tick => {
                s.timer = Some(super::tick_after(&myself, s.period, || SessionMsg::Tick));
                let now = s.shared.clock.now();
                let r = match s.io.read(now).await {
                    Ok(r) => r,
                    Err(e) => {
                        // The link handles the device; the session waits for readings.
                        tracing::debug!(vehicle = %s.cp.session.vehicle, error = %e, "no reading");
                        return Ok(());
                    }
                };
                let changed = s.take(&r);
                s.readings += 1;
                s.publish(r.power_kw);
                // Local safety: a vehicle at its minimum SoC stops discharging now, whatever
                // the dispatcher last asked.
                let sess = &s.cp.session;
                if r.power_kw < 0.0 && sess.discharge_limit_kw(1.0) < -r.power_kw {
                    if let Some(link) = s.seg.links.get(&s.charger) {
                        let _ = link.actor.send_message(LinkMsg::Enforce);
                    }
                }
                if changed || s.readings % SESSION_CHECKPOINT_EVERY == 0 {
                    s.checkpoint().await?;
                }
            }
            SessionMsg::Unplug(reply) => {
                let now = s.shared.clock.now();
                if let Ok(r) = s.io.read(now).await {
                    s.take(&r);
                }
                s.cp.session.apply(SessionEvent::Unplug)?;
                s.publish(0.0);
                s.checkpoint().await?;
                let _ = reply.send(());
                myself.stop(Some("vehicle left".into()));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SessionMsg>,
        s: &mut SessionActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = s.timer.take() {
            t.abort();
        }
        s.mailbox.close();
        s.seg
            .session_actors
            .remove_if(&s.charger, |_, r| r.get_id() == myself.get_id());
        if s.cp.session.state == SessionState::Ended {
            let vehicle = s.cp.session.vehicle.clone();
            s.seg
                .sessions
                .remove_if(&s.charger, |_, st| st.session.vehicle == vehicle);
        }
        Ok(())
    }
}
