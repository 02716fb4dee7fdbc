//! The supervisor actor: OTP's `supervisor` behaviour as a ractor actor.
//!
//! ## State machine of a child
//! ```text
//!            start ok                       exit, restart decided, no backoff
//!  (new) ───────────────▶ Running ──────────────────────────────────┐
//!    │ start fails             │  exit, restart decided, backoff     │ restart now
//!    ▼                         ▼                                     ▼
//!  supervisor            Restarting ──── timer / retry ────▶ start ok: Running
//!  start fails                 │                              start fails: count it,
//!                              │                              retry (or give up)
//!           exit, no restart   ▼
//!  Running ───────────────▶ Terminated (static: kept; temporary and dynamic: removed)
//! ```
//!
//! ## State machine of the supervisor
//! `Starting` (children start in order; one failure stops the started ones in reverse order
//! and fails the start) → `Running` (each child exit is decided by the escalation hook, the
//! child's restart type and the strategy; every restart is counted in the
//! [`RestartWindow`]) → either `Stopping` (asked to stop: children stop in reverse order,
//! each within its shutdown limit) or `Failed` (intensity reached or a hook escalated:
//! children stop in reverse order, then the supervisor fails with a [`SupervisorError`] that
//! its own supervisor sees as the exit reason).
//!
//! ## Strategies
//! - `OneForOne`: only the exited child is restarted.
//! - `OneForAll`: all other children are stopped (reverse order) and all restarted in order.
//! - `RestForOne`: the children started after the exited one are stopped (reverse order) and
//!   they and the exited child are restarted in order.
//! - `SimpleOneForOne`: a dynamic supervisor of many children of one spec, started with
//!   arguments; like `OneForOne`, children are restarted with the arguments they were started
//!   with, and on shutdown all stop at once (in parallel), as OTP does.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;

pub use crate::config::{Strategy, SupervisorConfig};
use crate::escalation::{ChildExit, ChildExitNotice, EscalationHook, ExitAction, HookDecision};
use crate::exit::{ExitClass, ExitReason};
use crate::handle::{DynamicSupervisorRef, SupervisorRef};
use crate::intensity::{RestartWindow, SplitMix64};
use crate::introspect::{ChildCounts, ChildInfo, ChildState};
use crate::metrics::{ChildrenGauge, MetricsGranularity, Series};
use crate::msg::{Request, RestartToken, StartRequest};
pub use crate::msg::{StartedChild, SupervisorError, SupervisorInfo, SupervisorMsg};
use crate::path::ActorPath;
use crate::report::{reason_text, ReportEvent};
use crate::spec::{ChildContext, ChildKind, ChildSpec, Restart, Shutdown, StartError};
pub use crate::tree::TreeContext;

/// How long a supervisor waits for a killed child to be gone before it moves on. A kill only
/// takes effect when the child's task next yields; a child stuck in a CPU loop is left to die
/// when it does, and the supervisor logs it.
pub const KILL_WAIT_LIMIT: Duration = Duration::from_secs(5);

/// The supervisor actor. `A` is the argument type of a dynamic supervisor's children (`()`
/// for static supervisors).
pub struct Supervisor<A = ()>(PhantomData<fn() -> A>);

/// What a supervisor starts with.
pub struct SupervisorInit<A> {
    config: SupervisorConfig,
    children: Children<A>,
}

enum Children<A> {
    Static(Vec<ChildSpec<A>>),
    Dynamic(ChildSpec<A>),
}

struct Child<A> {
    spec: Arc<ChildSpec<A>>,
    args: A,
    path: ActorPath,
    cell: Option<ActorCell>,
    incarnation: u64,
    started_at: Instant,
    state: ChildState,
    restarts: u32,
    consecutive: u32,
    token: u64,
    last_exit: Option<Box<str>>,
    series: Option<Series>,
}

/// The supervisor's state (see the module docs for its state machine).
pub struct SupervisorState<A> {
    path: ActorPath,
    strategy: Strategy,
    hook: Option<EscalationHook>,
    tree: TreeContext,
    window: RestartWindow,
    rng: SplitMix64,
    /// Dynamic supervisors: the spec every child is started from.
    template: Option<Arc<ChildSpec<A>>>,
    /// Children by position; static supervisors never reuse a position, so position order
    /// is start order. Dynamic supervisors reuse freed positions.
    slots: Vec<Option<Child<A>>>,
    free: Vec<usize>,
    /// Running incarnations by ractor id: how an exit event finds its child.
    by_actor: HashMap<ActorId, usize>,
    /// Children by path (a child's id is its path's leaf): how a request finds a child by
    /// id, and how ids are kept unique. An index rather than a scan of `slots`, so that
    /// checking a dynamic child's id stays O(1) with 100,000 children.
    by_path: HashMap<ActorPath, usize>,
    /// Scheduled restarts: positions to start, in order.
    pending: HashMap<u64, Vec<usize>>,
    next_token: u64,
    next_seq: u64,
    running: usize,
    /// Aggregated series for dynamic children (when not per child).
    shared_series: Option<Series>,
    children_gauge: Option<ChildrenGauge>,
}

impl<A> Drop for SupervisorState<A> {
    /// Whatever way the supervisor ended (even killed, when `post_stop` does not run), its
    /// children's paths must not keep resolving to dead incarnations.
    fn drop(&mut self) {
        if let Some(reg) = &self.tree.registry {
            for c in self.slots.iter().flatten() {
                reg.table().unregister(c.path.as_str(), c.incarnation);
            }
        }
    }
}

/// Internal outcome of a step that may make the supervisor give up.
type Step = Result<(), SupervisorError>;

impl Supervisor<()> {
    /// Start a static supervisor (`OneForOne`, `OneForAll` or `RestForOne`) with `children`,
    /// started in order. Fails if any child fails to start.
    pub async fn start(
        config: SupervisorConfig,
        children: Vec<ChildSpec<()>>,
    ) -> Result<SupervisorRef, SupervisorError> {
        let path = config.path.clone();
        check_static(&config)?;
        let init = SupervisorInit {
            config,
            children: Children::Static(children),
        };
        let (actor, _) = Actor::spawn(None, Supervisor::<()>(PhantomData), init)
            .await
            .map_err(|e| spawn_error(&path, e))?;
        Ok(SupervisorRef::new(actor, path))
    }

    /// A child spec that starts a nested static supervisor (kind `Supervisor`, shutdown
    /// `Infinity`). Its path is its place in the parent; it inherits the parent's registry
    /// and metrics unless `config` sets its own.
    pub fn child_spec(
        id: &str,
        config: SupervisorConfig,
        children: Vec<ChildSpec<()>>,
    ) -> ChildSpec<()> {
        let children = Arc::new(children);
        ChildSpec::worker(id, move |ctx: ChildContext, ()| {
            let config = config.clone();
            let children = children.clone();
            async move { Supervisor::start_in(&ctx, config, (*children).clone()).await }
        })
        .kind(ChildKind::Supervisor)
        .shutdown(Shutdown::Infinity)
    }

    /// Start a nested static supervisor from inside a start function.
    pub async fn start_in(
        ctx: &ChildContext,
        config: SupervisorConfig,
        children: Vec<ChildSpec<()>>,
    ) -> Result<ActorCell, StartError> {
        let config = nested(ctx, config);
        check_static(&config).map_err(|e| StartError::Failed(e.to_string()))?;
        let init = SupervisorInit {
            config,
            children: Children::Static(children),
        };
        ctx.spawn(Supervisor::<()>(PhantomData), init).await
    }
}

impl<A: Clone + Send + 'static> Supervisor<A> {
    /// Start a dynamic supervisor (`SimpleOneForOne`) whose children are all started from
    /// `template` with the arguments given to [`DynamicSupervisorRef::start_child`].
    pub async fn start_dynamic(
        config: SupervisorConfig,
        template: ChildSpec<A>,
    ) -> Result<DynamicSupervisorRef<A>, SupervisorError> {
        let path = config.path.clone();
        let config = SupervisorConfig {
            strategy: Strategy::SimpleOneForOne,
            ..config
        };
        let init = SupervisorInit {
            config,
            children: Children::Dynamic(template),
        };
        let (actor, _) = Actor::spawn(None, Supervisor::<A>(PhantomData), init)
            .await
            .map_err(|e| spawn_error(&path, e))?;
        Ok(DynamicSupervisorRef::new(SupervisorRef::new(actor, path)))
    }

    /// A child spec that starts a nested dynamic supervisor.
    pub fn dynamic_child_spec(
        id: &str,
        config: SupervisorConfig,
        template: ChildSpec<A>,
    ) -> ChildSpec<()>
    where
        A: Sync,
    {
        ChildSpec::worker(id, move |ctx: ChildContext, ()| {
            let config = config.clone();
            let template = template.clone();
            async move { Supervisor::start_dynamic_in(&ctx, config, template).await }
        })
        .kind(ChildKind::Supervisor)
        .shutdown(Shutdown::Infinity)
    }

    /// Start a nested dynamic supervisor from inside a start function.
    pub async fn start_dynamic_in(
        ctx: &ChildContext,
        config: SupervisorConfig,
        template: ChildSpec<A>,
    ) -> Result<ActorCell, StartError> {
        let config = SupervisorConfig {
            strategy: Strategy::SimpleOneForOne,
            ..nested(ctx, config)
        };
        let init = SupervisorInit {
            config,
            children: Children::Dynamic(template),
        };
        ctx.spawn(Supervisor::<A>(PhantomData), init).await
    }
}

fn nested(ctx: &ChildContext, mut config: SupervisorConfig) -> SupervisorConfig {
    config.path = ctx.path().clone();
    if config.tree.is_none() {
        config.tree = Some(ctx.tree().clone());
    }
    config
}

fn check_static(config: &SupervisorConfig) -> Result<(), SupervisorError> {
    if config.strategy == Strategy::SimpleOneForOne {
        return Err(SupervisorError::BadRequest {
            path: config.path.clone(),
            what: "simple_one_for_one takes a template: use Supervisor::start_dynamic".into(),
        });
    }
    Ok(())
}

fn spawn_error(path: &ActorPath, e: ractor::SpawnErr) -> SupervisorError {
    match e {
        ractor::SpawnErr::StartupFailed(inner) => match inner.downcast::<SupervisorError>() {
            Ok(sup) => *sup,
            Err(other) => SupervisorError::Unreachable {
                path: path.clone(),
                error: other.to_string(),
            },
        },
        other => SupervisorError::Unreachable {
            path: path.clone(),
            error: other.to_string(),
        },
    }
}

impl<A: Clone + Send + 'static> SupervisorState<A> {
    fn new(config: SupervisorConfig, template: Option<ChildSpec<A>>) -> Self {
        let tree = config.tree.unwrap_or_default();
        let dynamic = config.strategy == Strategy::SimpleOneForOne;
        let granularity = config.granularity.unwrap_or(if dynamic {
            MetricsGranularity::Aggregated
        } else {
            MetricsGranularity::PerChild
        });
        let shared_series = match (&tree.metrics, granularity, dynamic) {
            (Some(m), MetricsGranularity::Aggregated, true) => {
                Some(m.series(&format!("{}/*", config.path), true))
            }
            _ => None,
        };
        let children_gauge = tree.metrics.as_ref().map(|m| match &config.metrics_label {
            Some(label) => m.children_gauge(label.as_str(), true),
            None => m.children_gauge(config.path.as_str(), false),
        });
        SupervisorState {
            path: config.path,
            strategy: config.strategy,
            hook: config.hook,
            tree,
            window: RestartWindow::new(config.intensity),
            rng: SplitMix64::new(config.seed),
            template: template.map(Arc::new),
            slots: Vec::new(),
            free: Vec::new(),
            by_actor: HashMap::new(),
            by_path: HashMap::new(),
            pending: HashMap::new(),
            next_token: 1,
            next_seq: 1,
            running: 0,
            shared_series,
            children_gauge,
        }
    }

    fn is_dynamic(&self) -> bool {
        self.strategy == Strategy::SimpleOneForOne
    }

    fn child(&self, slot: usize) -> &Child<A> {
        self.slots[slot]
            .as_ref()
            .expect("slot refers to a live child")
    }

    fn child_mut(&mut self, slot: usize) -> &mut Child<A> {
        self.slots[slot]
            .as_mut()
            .expect("slot refers to a live child")
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.by_path.get(self.path.child(id).as_str()).copied()
    }

    fn series_for(&self, spec: &ChildSpec<A>, path: &ActorPath) -> Option<Series> {
        let m = self.tree.metrics.as_ref()?;
        if let Some(label) = &spec.metrics_label {
            return Some(m.series(label.as_str(), true));
        }
        if self.shared_series.is_some() {
            return None;
        }
        Some(m.series(path.as_str(), false))
    }

    fn add_child(&mut self, spec: Arc<ChildSpec<A>>, args: A, path: ActorPath) -> usize {
        let series = self.series_for(&spec, &path);
        let child = Child {
            spec,
            args,
            path: path.clone(),
            cell: None,
            incarnation: 0,
            started_at: Instant::now(),
            state: ChildState::Restarting,
            restarts: 0,
            consecutive: 0,
            token: 0,
            last_exit: None,
            series,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                debug_assert!(self.slots[slot].is_none());
                self.slots[slot] = Some(child);
                slot
            }
            None => {
                self.slots.push(Some(child));
                self.slots.len() - 1
            }
        };
        let previous = self.by_path.insert(path, slot);
        debug_assert!(previous.is_none(), "child ids are unique");
        slot
    }

    fn remove_child(&mut self, slot: usize) {
        let child = self.slots[slot].take().expect("removing a live child");
        debug_assert!(child.cell.is_none(), "a running child is never removed");
        self.by_path.remove(child.path.as_str());
        if let Some(reg) = &self.tree.registry {
            reg.table()
                .unregister(child.path.as_str(), child.incarnation);
        }
        if child.series.is_some() && child.spec.metrics_label.is_none() && self.is_dynamic() {
            if let Some(m) = &self.tree.metrics {
                m.remove_series(child.path.as_str());
            }
        }
        // Static positions are never reused so that position order stays start order.
        if self.is_dynamic() {
            self.free.push(slot);
        }
    }

    fn series(&self, slot: usize) -> Option<&Series> {
        self.child(slot)
            .series
            .as_ref()
            .or(self.shared_series.as_ref())
    }

    fn set_running(&mut self, delta: isize) {
        self.running = self
            .running
            .checked_add_signed(delta)
            .expect("running count underflow");
        if let Some(g) = &self.children_gauge {
            g.set(self.running as i64);
        }
    }

    /// Start the child at `slot` (its cell must be `None`).
    async fn start_slot(&mut self, me: &ActorCell, slot: usize) -> Result<(), StartError> {
        let (start, args, path) = {
            let c = self.child(slot);
            debug_assert!(c.cell.is_none());
            (c.spec.start.clone(), c.args.clone(), c.path.clone())
        };
        let ctx = ChildContext {
            supervisor: me.clone(),
            path: path.clone(),
            tree: self.tree.clone(),
        };
        // A start function that panics (outside the actor's own pre_start, which ractor
        // already guards) is a failed start, not a crash of the supervisor.
        let started =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(start(ctx, args))).await;
        let cell = match started {
            Ok(result) => result?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic".to_string());
                return Err(StartError::Failed(format!(
                    "start function panicked: {what}"
                )));
            }
        };
        let linked = cell
            .try_get_supervisor()
            .is_some_and(|s| s.get_id() == me.get_id());
        if !linked {
            cell.kill();
            return Err(StartError::NotLinked);
        }
        let incarnation = match &self.tree.registry {
            Some(reg) => reg.table().register(path, cell.clone()),
            None => 0,
        };
        self.by_actor.insert(cell.get_id(), slot);
        let c = self.child_mut(slot);
        c.cell = Some(cell);
        c.incarnation = incarnation;
        c.started_at = Instant::now();
        c.state = ChildState::Running;
        c.token = 0;
        if let Some(s) = self.series(slot) {
            s.start();
        }
        self.set_running(1);
        let c = self.child(slot);
        self.report(&c.path, || match c.restarts {
            0 => ReportEvent::Started,
            restarts => ReportEvent::Restarted { restarts },
        });
        Ok(())
    }

    /// Stop the running child at `slot` according to its shutdown policy and wait for it.
    async fn stop_slot(&mut self, slot: usize) {
        let (cell, shutdown) = {
            let c = self.child_mut(slot);
            let Some(cell) = c.cell.take() else { return };
            (cell, c.spec.shutdown)
        };
        self.by_actor.remove(&cell.get_id());
        let class = shut_down(&cell, shutdown).await;
        self.after_stop(slot, class);
    }

    fn after_stop(&mut self, slot: usize, class: ExitClass) {
        if let Some(s) = self.series(slot) {
            s.exit(class);
        }
        let c = self.child_mut(slot);
        c.last_exit = Some(Box::from(class.as_str()));
        c.state = ChildState::Terminated;
        self.set_running(-1);
    }

    /// Stop every running child: static supervisors in reverse start order, one at a time;
    /// dynamic supervisors all at once.
    async fn stop_all(&mut self) {
        if self.is_dynamic() {
            let mut stopping = Vec::with_capacity(self.running);
            for slot in 0..self.slots.len() {
                let Some(c) = self.slots[slot].as_mut() else {
                    continue;
                };
                let Some(cell) = c.cell.take() else { continue };
                let shutdown = c.spec.shutdown;
                match shutdown {
                    Shutdown::Brutal => cell.kill(),
                    _ => cell.stop(Some("shutdown".to_string())),
                }
                stopping.push((slot, cell, shutdown));
            }
            let started = Instant::now();
            for (slot, cell, shutdown) in stopping {
                self.by_actor.remove(&cell.get_id());
                let class = match shutdown {
                    Shutdown::Brutal => {
                        wait_killed(&cell).await;
                        ExitClass::Killed
                    }
                    Shutdown::Infinity => {
                        let _ = cell.wait(None).await;
                        ExitClass::Shutdown
                    }
                    Shutdown::Timeout(limit) => {
                        let left = limit.saturating_sub(started.elapsed());
                        if cell.wait(Some(left)).await.is_ok() {
                            ExitClass::Shutdown
                        } else {
                            cell.kill();
                            wait_killed(&cell).await;
                            ExitClass::Killed
                        }
                    }
                };
                self.after_stop(slot, class);
            }
        } else {
            for slot in (0..self.slots.len()).rev() {
                if self.slots[slot].as_ref().is_some_and(|c| c.cell.is_some()) {
                    self.stop_slot(slot).await;
                }
            }
        }
        debug_assert_eq!(self.running, 0);
        debug_assert!(self.by_actor.is_empty());
    }

    fn mark_restarting(&self, slot: usize) {
        if let Some(reg) = &self.tree.registry {
            let c = self.child(slot);
            reg.table().mark_restarting(c.path.as_str(), c.incarnation);
        }
    }

    /// Publish a report about `path` (built only if someone subscribes).
    fn report(&self, path: &ActorPath, event: impl FnOnce() -> ReportEvent) {
        if let Some(r) = &self.tree.reports {
            r.publish(&self.path, path, event);
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// A child exited: decide and act (the heart of the supervisor).
    async fn on_exit(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        id: ActorId,
        reason: ExitReason,
    ) -> Step {
        let Some(slot) = self.by_actor.remove(&id) else {
            // An incarnation we already stopped or replaced.
            return Ok(());
        };
        self.set_running(-1);
        let uptime = {
            let c = self.child_mut(slot);
            c.cell = None;
            c.last_exit = Some(reason.to_string().into_boxed_str());
            c.started_at.elapsed()
        };
        if let Some(s) = self.series(slot) {
            s.exit(reason.class());
        }
        let (restart, path) = {
            let c = self.child(slot);
            (c.spec.restart, c.path.clone())
        };
        self.report(&path, || ReportEvent::Exited {
            class: reason.class(),
            reason: reason_text(&reason),
        });
        let decision = match &self.hook {
            Some(hook) => hook(&ChildExit {
                id: path.leaf(),
                path: &path,
                restart,
                reason: &reason,
            }),
            None => HookDecision::restart(),
        };
        if let Some(n) = &decision.notify {
            n.notify(ChildExitNotice {
                path: path.clone(),
                reason: reason.clone(),
                action: decision.action,
            });
        }
        let restart_it = match decision.action {
            ExitAction::Escalate => {
                self.child_mut(slot).state = ChildState::Terminated;
                self.report(&self.path, || ReportEvent::Escalated {
                    reason: format!("{}: {}", path.leaf(), reason_text(&reason)),
                });
                self.stop_all().await;
                return Err(SupervisorError::Escalated {
                    path: self.path.clone(),
                    child: path.leaf().to_string(),
                    reason,
                });
            }
            ExitAction::Ignore => false,
            ExitAction::Restart => match restart {
                Restart::Permanent => true,
                Restart::Transient => reason.is_abnormal(),
                Restart::Temporary => false,
            },
        };
        if !restart_it {
            self.child_mut(slot).state = ChildState::Terminated;
            if restart == Restart::Temporary || self.is_dynamic() {
                self.remove_child(slot);
            } else if let Some(reg) = &self.tree.registry {
                let c = self.child(slot);
                reg.table().unregister(c.path.as_str(), c.incarnation);
            }
            return Ok(());
        }
        if !self.window.record(Instant::now()) {
            return self.give_up(path.leaf(), &reason).await;
        }
        {
            let c = self.child_mut(slot);
            c.restarts += 1;
            c.state = ChildState::Restarting;
        }
        self.mark_restarting(slot);
        if let Some(s) = self.series(slot) {
            s.restart();
        }
        // Which children restart, in start order.
        let plan = match self.strategy {
            Strategy::OneForOne | Strategy::SimpleOneForOne => vec![slot],
            Strategy::RestForOne => {
                let mut v = vec![slot];
                v.extend(self.stop_group(slot + 1, slot).await);
                v
            }
            Strategy::OneForAll => {
                let mut v = self.stop_group(0, slot).await;
                v.push(slot);
                v.sort_unstable();
                v
            }
        };
        let delay = self.backoff_delay(slot, uptime);
        self.schedule(me, plan, delay).await
    }

    /// Stop the running children at positions `from..` (reverse order) for a group restart;
    /// temporary ones are removed, the rest marked restarting. Returns the positions to start.
    async fn stop_group(&mut self, from: usize, exited: usize) -> Vec<usize> {
        let mut group = Vec::new();
        for slot in (from..self.slots.len()).rev() {
            if slot == exited {
                continue;
            }
            let Some(c) = self.slots[slot].as_ref() else {
                continue;
            };
            if c.cell.is_some() {
                self.stop_slot(slot).await;
            }
            if self.child(slot).spec.restart == Restart::Temporary {
                self.remove_child(slot);
                continue;
            }
            // Restarted as part of the group: it counts as a restart of this child (for
            // introspection and metrics), but not again against the supervisor's intensity,
            // which counts decisions, as OTP does.
            let c = self.child_mut(slot);
            c.state = ChildState::Restarting;
            c.restarts += 1;
            if let Some(s) = self.series(slot) {
                s.restart();
            }
            self.mark_restarting(slot);
            group.push(slot);
        }
        group.reverse();
        group
    }

    fn backoff_delay(&mut self, slot: usize, uptime: Duration) -> Duration {
        let Some(b) = self.child(slot).spec.backoff.clone() else {
            return Duration::ZERO;
        };
        let attempt = {
            let c = self.child_mut(slot);
            if uptime >= b.reset_after {
                c.consecutive = 0;
            }
            let a = c.consecutive;
            c.consecutive = c.consecutive.saturating_add(1);
            a
        };
        b.delay(attempt, &mut self.rng)
    }

    /// Start `plan` now, or after `delay`.
    async fn schedule(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        plan: Vec<usize>,
        delay: Duration,
    ) -> Step {
        if delay.is_zero() {
            return self.run_plan(me, plan).await;
        }
        let token = self.token();
        for &slot in &plan {
            let c = self.child_mut(slot);
            c.token = token;
            c.state = ChildState::Restarting;
        }
        self.pending.insert(token, plan);
        let me = me.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // The supervisor may have stopped meanwhile; nothing to do then.
            let _ = me.send_message(SupervisorMsg(Request::RestartDue(RestartToken(token))));
        });
        Ok(())
    }

    /// Start the children of `plan` in order. A start failure counts as another restart
    /// (OTP's `try_again_restart`): the rest of the plan is retried through the mailbox, or
    /// the supervisor gives up.
    async fn run_plan(&mut self, me: &ActorRef<SupervisorMsg>, plan: Vec<usize>) -> Step {
        for (i, &slot) in plan.iter().enumerate() {
            let still_wanted = self.slots[slot]
                .as_ref()
                .is_some_and(|c| c.state == ChildState::Restarting && c.cell.is_none());
            if !still_wanted {
                continue;
            }
            if let Err(e) = self.start_slot(&me.get_cell(), slot).await {
                let id = self.child(slot).path.leaf().to_string();
                tracing::warn!(supervisor = %self.path, child = %id, error = %e, "restart failed");
                self.child_mut(slot).last_exit =
                    Some(format!("start failed: {e}").into_boxed_str());
                if let Some(s) = self.series(slot) {
                    s.exit(ExitClass::Failed);
                }
                self.report(&self.child(slot).path, || ReportEvent::StartFailed {
                    reason: reason_text(&e),
                });
                if !self.window.record(Instant::now()) {
                    let reason = ExitReason::Failed(Arc::new(e));
                    return self.give_up(&id, &reason).await;
                }
                let rest = plan[i..].to_vec();
                let delay = self.backoff_delay(slot, Duration::ZERO);
                let token = self.token();
                for &s in &rest {
                    self.child_mut(s).token = token;
                }
                self.pending.insert(token, rest);
                if delay.is_zero() {
                    let _ =
                        me.send_message(SupervisorMsg(Request::RestartDue(RestartToken(token))));
                } else {
                    let me = me.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = me
                            .send_message(SupervisorMsg(Request::RestartDue(RestartToken(token))));
                    });
                }
                return Ok(());
            }
        }
        Ok(())
    }

    async fn on_restart_due(&mut self, me: &ActorRef<SupervisorMsg>, token: u64) -> Step {
        let Some(plan) = self.pending.remove(&token) else {
            return Ok(());
        };
        let plan: Vec<usize> = plan
            .into_iter()
            .filter(|&s| {
                self.slots[s]
                    .as_ref()
                    .is_some_and(|c| c.token == token && c.cell.is_none())
            })
            .collect();
        self.run_plan(me, plan).await
    }

    async fn give_up(&mut self, child: &str, reason: &ExitReason) -> Step {
        tracing::error!(supervisor = %self.path, %child, %reason, "reached max restart intensity");
        if let Some(m) = &self.tree.metrics {
            m.intensity_exceeded(&self.path);
        }
        let limit = self.window.limit();
        self.report(&self.path, || ReportEvent::GaveUp {
            max_restarts: limit.max_restarts,
            period_ms: limit.period.as_millis() as u64,
            reason: format!("{child}: {}", reason_text(reason)),
        });
        self.stop_all().await;
        Err(SupervisorError::ReachedMaxRestartIntensity {
            path: self.path.clone(),
            max_restarts: limit.max_restarts,
            period: limit.period,
            child: child.to_string(),
            reason: reason.to_string(),
        })
    }

    fn info(&self, slot: usize) -> ChildInfo {
        let c = self.child(slot);
        ChildInfo {
            id: c.path.leaf().to_string(),
            path: c.path.clone(),
            kind: c.spec.kind,
            restart: c.spec.restart,
            state: c.state,
            restarts: c.restarts,
            last_exit: c.last_exit.as_deref().map(str::to_string),
            uptime_ms: if c.cell.is_some() {
                c.started_at.elapsed().as_millis() as u64
            } else {
                0
            },
            actor: c.cell.clone(),
        }
    }

    fn which_children(&self) -> Vec<ChildInfo> {
        (0..self.slots.len())
            .filter(|&s| self.slots[s].is_some())
            .map(|s| self.info(s))
            .collect()
    }

    fn count_children(&self) -> ChildCounts {
        let mut n = ChildCounts::default();
        for c in self.slots.iter().flatten() {
            n.specs += 1;
            if c.cell.is_some() {
                n.active += 1;
            }
            match c.spec.kind {
                ChildKind::Supervisor => n.supervisors += 1,
                ChildKind::Worker => n.workers += 1,
            }
        }
        n
    }

    fn started(&self, slot: usize) -> StartedChild {
        let c = self.child(slot);
        StartedChild {
            id: c.path.leaf().to_string(),
            path: c.path.clone(),
            cell: c.cell.clone().expect("a started child has a cell"),
        }
    }

    async fn start_request(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        req: StartRequest,
    ) -> Result<StartedChild, SupervisorError> {
        let bad = |what: &str| SupervisorError::BadRequest {
            path: self.path.clone(),
            what: what.to_string(),
        };
        let (spec, args, id) = match (req, &self.template) {
            (StartRequest::Args { id, args }, Some(template)) => {
                let args = *args
                    .downcast::<A>()
                    .map_err(|_| bad("arguments of the wrong type for this dynamic supervisor"))?;
                // Ids must be unique, as for static children: two children at one path would
                // share a registry entry and metrics series, and requests by id would reach
                // only one of them. A named id that is taken is refused; a generated id steps
                // over ids taken by named children (`start_child_named("conn-2", ..)`).
                let id = match id {
                    Some(id) if self.find(&id).is_some() => {
                        return Err(SupervisorError::AlreadyPresent {
                            path: self.path.clone(),
                            id,
                        })
                    }
                    Some(id) => id,
                    None => loop {
                        let n = self.next_seq;
                        self.next_seq += 1;
                        let id = format!("{}-{n}", template.id);
                        if self.find(&id).is_none() {
                            break id;
                        }
                    },
                };
                (template.clone(), args, id)
            }
            (StartRequest::Spec(spec), None) => {
                let spec = *spec
                    .downcast::<ChildSpec<A>>()
                    .map_err(|_| bad("a child spec of the wrong argument type"))?;
                if self.find(&spec.id).is_some() {
                    return Err(SupervisorError::AlreadyPresent {
                        path: self.path.clone(),
                        id: spec.id.to_string(),
                    });
                }
                let id = spec.id.to_string();
                // A static child has no arguments: A is () for static supervisors.
                let args = *(Box::new(()) as Box<dyn Any>)
                    .downcast::<A>()
                    .map_err(|_| bad("static supervisors take children without arguments"))?;
                (Arc::new(spec), args, id)
            }
            (StartRequest::Args { .. }, None) => {
                return Err(bad("start_child with arguments needs a dynamic supervisor"))
            }
            (StartRequest::Spec(_), Some(_)) => {
                return Err(bad(
                    "a dynamic supervisor starts children from its template",
                ))
            }
        };
        if id.contains('/') {
            return Err(bad("a child id must not contain '/'"));
        }
        let path = self.path.child(&id);
        let slot = self.add_child(spec, args, path);
        match self.start_slot(&me.get_cell(), slot).await {
            Ok(()) => Ok(self.started(slot)),
            Err(error) => {
                self.remove_child(slot);
                Err(SupervisorError::StartFailed {
                    path: self.path.clone(),
                    child: id,
                    error,
                })
            }
        }
    }

    async fn terminate_request(&mut self, id: &str) -> Result<(), SupervisorError> {
        let slot = self.find(id).ok_or_else(|| SupervisorError::UnknownChild {
            path: self.path.clone(),
            id: id.to_string(),
        })?;
        if self.child(slot).cell.is_some() {
            self.stop_slot(slot).await;
        }
        let c = self.child_mut(slot);
        c.token = 0; // cancels a scheduled restart
        c.state = ChildState::Terminated;
        if let Some(reg) = &self.tree.registry {
            let c = self.child(slot);
            reg.table().unregister(c.path.as_str(), c.incarnation);
        }
        // OTP: a dynamic or temporary child that is terminated is deleted.
        if self.is_dynamic() || self.child(slot).spec.restart == Restart::Temporary {
            self.remove_child(slot);
        }
        Ok(())
    }

    async fn restart_request(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        id: &str,
    ) -> Result<StartedChild, SupervisorError> {
        if self.is_dynamic() {
            return Err(SupervisorError::BadRequest {
                path: self.path.clone(),
                what: "restart_child is for static children".into(),
            });
        }
        let slot = self.find(id).ok_or_else(|| SupervisorError::UnknownChild {
            path: self.path.clone(),
            id: id.to_string(),
        })?;
        if self.child(slot).cell.is_some() {
            return Err(SupervisorError::Running {
                path: self.path.clone(),
                id: id.to_string(),
            });
        }
        self.child_mut(slot).token = 0;
        self.start_slot(&me.get_cell(), slot)
            .await
            .map_err(|error| SupervisorError::StartFailed {
                path: self.path.clone(),
                child: id.to_string(),
                error,
            })?;
        Ok(self.started(slot))
    }

    fn delete_request(&mut self, id: &str) -> Result<(), SupervisorError> {
        if self.is_dynamic() {
            return Err(SupervisorError::BadRequest {
                path: self.path.clone(),
                what: "delete_child is for static children".into(),
            });
        }
        let slot = self.find(id).ok_or_else(|| SupervisorError::UnknownChild {
            path: self.path.clone(),
            id: id.to_string(),
        })?;
        if self.child(slot).cell.is_some() {
            return Err(SupervisorError::Running {
                path: self.path.clone(),
                id: id.to_string(),
            });
        }
        self.child_mut(slot).token = 0;
        self.remove_child(slot);
        Ok(())
    }
}

/// Stop `cell` by `shutdown` and wait for it; returns how it ended.
async fn shut_down(cell: &ActorCell, shutdown: Shutdown) -> ExitClass {
    match shutdown {
        Shutdown::Brutal => {
            cell.kill();
            wait_killed(cell).await;
            ExitClass::Killed
        }
        Shutdown::Timeout(limit) => {
            cell.stop(Some("shutdown".to_string()));
            if cell.wait(Some(limit)).await.is_ok() {
                ExitClass::Shutdown
            } else {
                tracing::warn!(actor = ?cell.get_id(), ?limit, "did not stop within its shutdown limit; killed");
                cell.kill();
                wait_killed(cell).await;
                ExitClass::Killed
            }
        }
        Shutdown::Infinity => {
            cell.stop(Some("shutdown".to_string()));
            let _ = cell.wait(None).await;
            ExitClass::Shutdown
        }
    }
}

/// The error a supervisor fails with. Boxed as `dyn Error` directly: `?` on a
/// `Box<SupervisorError>` would box it twice and the parent could not downcast the reason.
fn failure(e: SupervisorError) -> ActorProcessingErr {
    Box::new(e)
}

async fn wait_killed(cell: &ActorCell) {
    if cell.wait(Some(KILL_WAIT_LIMIT)).await.is_err() {
        tracing::error!(actor = ?cell.get_id(), limit = ?KILL_WAIT_LIMIT, "killed actor has not exited (it has not yielded); moving on");
    }
}

impl<A: Clone + Send + 'static> Actor for Supervisor<A> {
    type Msg = SupervisorMsg;
    type State = SupervisorState<A>;
    type Arguments = SupervisorInit<A>;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        init: SupervisorInit<A>,
    ) -> Result<Self::State, ActorProcessingErr> {
        match init.children {
            Children::Dynamic(template) => Ok(SupervisorState::new(init.config, Some(template))),
            Children::Static(specs) => {
                let mut state = SupervisorState::new(init.config, None);
                for spec in specs {
                    if state.find(&spec.id).is_some() || spec.id.contains('/') {
                        state.stop_all().await;
                        return Err(Box::new(SupervisorError::BadRequest {
                            path: state.path.clone(),
                            what: format!("child id {:?} is repeated or contains '/'", &*spec.id),
                        }));
                    }
                    let id = spec.id.to_string();
                    let path = state.path.child(&id);
                    let args = *(Box::new(()) as Box<dyn Any>)
                        .downcast::<A>()
                        .map_err(|_| "static children take no arguments")?;
                    let slot = state.add_child(Arc::new(spec), args, path);
                    if let Err(error) = state.start_slot(&myself.get_cell(), slot).await {
                        state.remove_child(slot);
                        state.stop_all().await;
                        return Err(Box::new(SupervisorError::StartFailed {
                            path: state.path.clone(),
                            child: id,
                            error,
                        }));
                    }
                }
                Ok(state)
            }
        }
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg.0 {
            Request::StartChild(req, reply) => {
                let r = state.start_request(&myself, req).await;
                let _ = reply.send(r);
            }
            Request::TerminateChild(id, reply) => {
                let r = state.terminate_request(&id).await;
                let _ = reply.send(r);
            }
            Request::RestartChild(id, reply) => {
                let r = state.restart_request(&myself, &id).await;
                let _ = reply.send(r);
            }
            Request::DeleteChild(id, reply) => {
                let _ = reply.send(state.delete_request(&id));
            }
            Request::WhichChildren(reply) => {
                let _ = reply.send(state.which_children());
            }
            Request::CountChildren(reply) => {
                let _ = reply.send(state.count_children());
            }
            Request::Describe(reply) => {
                let _ = reply.send(SupervisorInfo {
                    path: state.path.clone(),
                    strategy: state.strategy,
                    children: state.which_children(),
                });
            }
            Request::RestartDue(RestartToken(token)) => {
                // The restart was counted against the intensity when it was decided.
                state
                    .on_restart_due(&myself, token)
                    .await
                    .map_err(failure)?;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((id, reason)) = ExitReason::from_event(evt) {
            state.on_exit(&myself, id, reason).await.map_err(failure)?;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_all().await;
        Ok(())
    }
}
