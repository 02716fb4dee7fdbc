//! The harness of the conformance suite (tests/conformance/): one test worker, one event
//! log, the actors that watch supervisors from outside, and the helpers the tests share.
//!
//! Nothing here sleeps to "let things settle"; every helper waits on an event, and every
//! wait has a limit ([`LIMIT`]) after which the test fails with a message saying what did
//! not happen. The events waited on are:
//! - the worker's log: `start <id>` from `pre_start`, `stop <id>` from `post_stop`,
//!   `refuse <id>` when its start fails, `hang <id>` when its `post_stop` hangs, and
//!   `note <id> <text> @<actor id>` when told to;
//! - `ActorCell::wait` on an incarnation. ractor notifies the supervisor of an exit *before*
//!   it marks the actor stopped, and an actor polls supervision events before messages, so a
//!   call made after `wait` returns is answered after the supervisor has decided on that exit;
//! - a [`Watcher`] linked above a top-level supervisor receives its exit reason;
//! - a [`Forwarder`] (or a [`Notifier::function`] over a channel) receives the notices a hook
//!   asks for.
//!
//! Backoff, restart periods and shutdown limits are tested on tokio's paused clock
//! (`#[tokio::test(start_paused = true)]`), where a timer fires only when virtual time
//! reaches it: exact and instant.
//!
//! [`Notifier::function`]: gridvisor_supervisors::Notifier::function

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridvisor_supervisors::{
    Backoff, ChildContext, ChildExitNotice, ChildInfo, ChildSpec, DynamicSupervisorRef, ExitReason,
    Strategy, Supervisor, SupervisorConfig, SupervisorRef,
};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc;

/// Longest any helper waits for an event that must come.
pub(crate) const LIMIT: Duration = Duration::from_secs(5);

/// An intensity no test reaches unless it means to.
pub(crate) const MANY: u32 = 1000;

// ---------------------------------------------------------------------------------------------
// Event log
// ---------------------------------------------------------------------------------------------

/// Where workers record what happens to them: a list (for whole-run assertions) and a
/// channel (to wait on).
#[derive(Clone)]
pub(crate) struct Log {
    all: Arc<Mutex<Vec<String>>>,
    tx: mpsc::UnboundedSender<String>,
}

impl Log {
    fn record(&self, event: String) {
        self.all.lock().unwrap().push(event.clone());
        let _ = self.tx.send(event);
    }
}

/// The test's end of a [`Log`].
pub(crate) struct Events {
    log: Log,
    rx: mpsc::UnboundedReceiver<String>,
}

/// A new log (to give to workers) and the test's end of it.
pub(crate) fn events() -> (Log, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let log = Log {
        all: Arc::default(),
        tx,
    };
    (log.clone(), Events { log, rx })
}

impl Events {
    /// Waits up to [`LIMIT`] for the next event not yet consumed.
    pub(crate) async fn next(&mut self) -> String {
        match tokio::time::timeout(LIMIT, self.rx.recv()).await {
            Ok(Some(e)) => e,
            _ => panic!("no event within {LIMIT:?}"),
        }
    }

    /// The next events are exactly `want`, in this order. Waits up to [`LIMIT`] for each.
    pub(crate) async fn expect<S: AsRef<str>>(&mut self, want: &[S]) {
        let want: Vec<&str> = want.iter().map(AsRef::as_ref).collect();
        let mut got = Vec::new();
        while got.len() < want.len() {
            match tokio::time::timeout(LIMIT, self.rx.recv()).await {
                Ok(Some(e)) => got.push(e),
                _ => panic!("expected events {want:?}, got only {got:?}"),
            }
        }
        assert_eq!(got, want);
    }

    /// Nothing was recorded that the test has not consumed. Does not wait: call it after a
    /// wait that orders the events it rules out (an ended incarnation, an answered call).
    pub(crate) fn assert_quiet(&mut self) {
        if let Ok(e) = self.rx.try_recv() {
            panic!("unexpected event {e:?}");
        }
    }

    /// Everything recorded so far, consumed or not. Does not wait.
    pub(crate) fn all(&self) -> Vec<String> {
        self.log.all.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The worker
// ---------------------------------------------------------------------------------------------

/// A typed error a worker fails with ([`Cmd::Overheat`]), to check that the child's own
/// error reaches hooks, notices and escalations.
#[derive(Debug, thiserror::Error)]
#[error("over temperature: {celsius} °C")]
pub(crate) struct OverTemperature {
    pub(crate) celsius: u32,
}

/// What a test tells a worker to do.
#[derive(Debug, PartialEq)]
pub(crate) enum Cmd {
    /// The handler returns an error (abnormal).
    Fail,
    /// The handler returns a typed error, [`OverTemperature`] (abnormal).
    Overheat(u32),
    /// The handler panics (abnormal).
    Panic,
    /// `myself.stop(None)` (normal).
    Stop,
    /// `myself.stop(Some(reason))` (normal).
    StopWith(String),
    /// Record `note <id> <text> @<actor id>`.
    Note(String),
}

/// How a worker misbehaves.
#[derive(Clone, Default)]
pub(crate) struct Behaviour {
    /// Starts to refuse before starting again (`u32::MAX`: refuse forever). Shared, so a
    /// test can change it while the child runs.
    pub(crate) refuse: Arc<AtomicU32>,
    /// `post_stop` never returns.
    pub(crate) hang_on_stop: bool,
}

impl Behaviour {
    /// Refuses its next `n` starts.
    pub(crate) fn refusing(n: u32) -> Self {
        Behaviour {
            refuse: Arc::new(AtomicU32::new(n)),
            hang_on_stop: false,
        }
    }

    /// Records `hang <id>` in `post_stop` and never returns from it.
    pub(crate) fn hanging() -> Self {
        Behaviour {
            hang_on_stop: true,
            ..Behaviour::default()
        }
    }
}

/// The test worker: records its life in a [`Log`] and obeys [`Cmd`]s.
pub(crate) struct Worker;

/// A [`Worker`]'s arguments.
pub(crate) struct WorkerArgs {
    /// Its name in the log (the leaf of its path).
    pub(crate) name: String,
    /// The argument of a dynamic child, recorded as `start <id> arg=<n>`.
    pub(crate) tag: Option<u32>,
    pub(crate) log: Log,
    pub(crate) behaviour: Behaviour,
}

/// A [`Worker`]'s state.
pub(crate) struct WorkerState {
    name: String,
    log: Log,
    hang_on_stop: bool,
}

impl Actor for Worker {
    type Msg = Cmd;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Cmd>,
        a: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        let left = a.behaviour.refuse.load(SeqCst);
        if left > 0 {
            if left != u32::MAX {
                a.behaviour.refuse.fetch_sub(1, SeqCst);
            }
            a.log.record(format!("refuse {}", a.name));
            return Err(format!("{} refused to start", a.name).into());
        }
        a.log.record(match a.tag {
            Some(t) => format!("start {} arg={t}", a.name),
            None => format!("start {}", a.name),
        });
        Ok(WorkerState {
            name: a.name,
            log: a.log,
            hang_on_stop: a.behaviour.hang_on_stop,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Cmd>,
        cmd: Cmd,
        s: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match cmd {
            Cmd::Fail => return Err(format!("{} failed", s.name).into()),
            Cmd::Overheat(celsius) => return Err(Box::new(OverTemperature { celsius })),
            Cmd::Panic => panic!("{} panicked on purpose", s.name),
            Cmd::Stop => myself.stop(None),
            Cmd::StopWith(reason) => myself.stop(Some(reason)),
            Cmd::Note(text) => s
                .log
                .record(format!("note {} {text} @{}", s.name, myself.get_id())),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Cmd>,
        s: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        if s.hang_on_stop {
            s.log.record(format!("hang {}", s.name));
            std::future::pending::<()>().await;
        }
        s.log.record(format!("stop {}", s.name));
        Ok(())
    }
}

/// A permanent worker that behaves.
pub(crate) fn worker(id: &str, log: &Log) -> ChildSpec {
    worker_with(id, log, Behaviour::default())
}

/// A permanent worker that misbehaves as `behaviour` says.
pub(crate) fn worker_with(id: &str, log: &Log, behaviour: Behaviour) -> ChildSpec {
    let log = log.clone();
    ChildSpec::worker(id, move |ctx: ChildContext, ()| {
        let args = WorkerArgs {
            name: ctx.path().leaf().to_string(),
            tag: None,
            log: log.clone(),
            behaviour: behaviour.clone(),
        };
        async move { ctx.spawn(Worker, args).await }
    })
}

/// A template for dynamic children: the argument is recorded as `start <id> arg=<n>`.
pub(crate) fn template(id: &str, log: &Log, behaviour: Behaviour) -> ChildSpec<u32> {
    let log = log.clone();
    ChildSpec::worker(id, move |ctx: ChildContext, n: u32| {
        let args = WorkerArgs {
            name: ctx.path().leaf().to_string(),
            tag: Some(n),
            log: log.clone(),
            behaviour: behaviour.clone(),
        };
        async move { ctx.spawn(Worker, args).await }
    })
}

/// Exponential backoff without jitter, so delays are exact on the paused clock.
pub(crate) fn exponential(initial: Duration, max: Duration) -> Backoff {
    Backoff::exponential(initial, max).with_jitter(0.0)
}

// ---------------------------------------------------------------------------------------------
// Watching supervisors from outside
// ---------------------------------------------------------------------------------------------

/// Linked above a top-level supervisor: forwards how it ended.
pub(crate) struct Watcher;

impl Actor for Watcher {
    type Msg = ();
    type State = mpsc::UnboundedSender<ExitReason>;
    type Arguments = mpsc::UnboundedSender<ExitReason>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        evt: SupervisionEvent,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, reason)) = ExitReason::from_event(evt) {
            let _ = tx.send(reason);
        }
        Ok(())
    }
}

/// Links a [`Watcher`] above `sup`; the receiver gets `sup`'s exit reason (wait on it with
/// [`recv`]). Stop the watcher at the end of the test.
pub(crate) async fn watch(
    sup: &SupervisorRef,
) -> (ActorRef<()>, mpsc::UnboundedReceiver<ExitReason>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (watcher, _) = Actor::spawn(None, Watcher, tx)
        .await
        .expect("watcher starts");
    sup.cell().link(watcher.get_cell());
    (watcher, rx)
}

/// Receives [`ChildExitNotice`]s as an actor (for [`Notifier::actor`]) and forwards them to
/// a channel.
///
/// [`Notifier::actor`]: gridvisor_supervisors::Notifier::actor
pub(crate) struct Forwarder;

/// The [`Forwarder`]'s message.
pub(crate) struct Noticed(ChildExitNotice);

impl From<ChildExitNotice> for Noticed {
    fn from(n: ChildExitNotice) -> Self {
        Noticed(n)
    }
}

impl Actor for Forwarder {
    type Msg = Noticed;
    type State = mpsc::UnboundedSender<ChildExitNotice>;
    type Arguments = mpsc::UnboundedSender<ChildExitNotice>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Noticed>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Noticed>,
        msg: Noticed,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(msg.0);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A config whose intensity ([`MANY`] in 60 s) no test reaches by accident.
pub(crate) fn config(name: &str, strategy: Strategy) -> SupervisorConfig {
    SupervisorConfig::new(name, strategy).intensity(MANY, Duration::from_secs(60))
}

/// Starts a static supervisor; panics if it does not start. Returns when every child has
/// started (`Supervisor::start` starts them before it answers).
pub(crate) async fn start(config: SupervisorConfig, children: Vec<ChildSpec>) -> SupervisorRef {
    Supervisor::start(config, children)
        .await
        .expect("supervisor starts")
}

/// Waits up to [`LIMIT`] for the next value on `rx` (exit reasons, notices).
pub(crate) async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    match tokio::time::timeout(LIMIT, rx.recv()).await {
        Ok(Some(v)) => v,
        _ => panic!("nothing received within {LIMIT:?}"),
    }
}

/// `which_children`: one call to the supervisor, answered after every exit it has been
/// told of (see the module docs).
pub(crate) async fn children(sup: &SupervisorRef) -> Vec<ChildInfo> {
    sup.which_children().await.expect("which_children")
}

/// The child `id` as `which_children` shows it; panics if there is none.
pub(crate) async fn child(sup: &SupervisorRef, id: &str) -> ChildInfo {
    children(sup)
        .await
        .into_iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("{} has no child {id}", sup.path()))
}

/// The running incarnation of the child `id`; panics if it is not running.
pub(crate) async fn cell(sup: &SupervisorRef, id: &str) -> ActorCell {
    child(sup, id)
        .await
        .actor
        .unwrap_or_else(|| panic!("{id} is not running"))
}

/// Child ids in start order with their running incarnations.
pub(crate) async fn incarnations(sup: &SupervisorRef) -> Vec<(String, Option<ActorId>)> {
    children(sup)
        .await
        .into_iter()
        .map(|c| (c.id, c.actor.map(|a| a.get_id())))
        .collect()
}

/// Which children run another incarnation than before (children that are gone now are
/// left out; children that are not running are a failure). Does not wait.
pub(crate) fn renewed(
    before: &[(String, Option<ActorId>)],
    after: &[(String, Option<ActorId>)],
) -> Vec<String> {
    after
        .iter()
        .filter(|(id, now)| {
            assert!(now.is_some(), "{id} is not running");
            before.iter().any(|(b, then)| b == id && then != now)
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// Sends `cmd` to a worker; panics if its mailbox is closed. Does not wait.
pub(crate) fn send(cell: &ActorCell, cmd: Cmd) {
    cell.send_message(cmd).expect("the child takes the command");
}

/// Waits up to [`LIMIT`] for the actor to end (its supervisor, if any, has then heard of
/// it; see the module docs).
pub(crate) async fn ended(cell: &ActorCell) {
    cell.wait(Some(LIMIT))
        .await
        .unwrap_or_else(|_| panic!("actor {} did not end within {LIMIT:?}", cell.get_id()));
}

/// Tells the running child `id` to do `cmd` and waits up to [`LIMIT`] until that
/// incarnation has ended (its supervisor has then heard of it first; see the module docs).
/// Returns its ractor id.
pub(crate) async fn exit_child(sup: &SupervisorRef, id: &str, cmd: Cmd) -> ActorId {
    let c = cell(sup, id).await;
    send(&c, cmd);
    ended(&c).await;
    c.get_id()
}

/// Kills the running child `id` (ractor's `Signal::Kill`) and waits up to [`LIMIT`] until
/// it has ended. Returns its ractor id.
pub(crate) async fn kill_child(sup: &SupervisorRef, id: &str) -> ActorId {
    let c = cell(sup, id).await;
    c.kill();
    ended(&c).await;
    c.get_id()
}

/// The dynamic supervisor `c`, child `id` of `sup`, taking `u32` arguments. Does not wait.
pub(crate) fn dynamic_ref(
    sup: &SupervisorRef,
    id: &str,
    c: ActorCell,
) -> DynamicSupervisorRef<u32> {
    DynamicSupervisorRef::from_cell(c, sup.path().child(id)).expect("a dynamic supervisor")
}

/// The value of a counter or gauge with these labels, if the series exists. Reads the
/// registry as it is now and does not wait: read it after a wait that orders the event
/// counted (a supervisor counts an exit while it handles it, before it answers a later call).
pub(crate) fn metric(
    prom: &prometheus::Registry,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let families = prom.gather();
    let family = families.iter().find(|f| f.name() == name)?;
    let m = family.get_metric().iter().find(|m| {
        labels.iter().all(|(k, v)| {
            m.get_label()
                .iter()
                .any(|l| l.name() == *k && l.value() == *v)
        })
    })?;
    Some(match family.get_field_type() {
        prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
        _ => m.get_counter().get_value(),
    })
}
