//! Conformance suite for `gridvisor-supervisors`, modelled on OTP's `supervisor_SUITE`.
//!
//! Every test drives the real supervisor through its public API with real ractor actors.
//! Nothing sleeps to "let things settle"; the tests wait on events:
//! - a worker reports `start <id>` from `pre_start`, `stop <id>` from `post_stop`,
//!   `refuse <id>` when its start fails and `hang <id>` when its `post_stop` hangs;
//! - `ActorCell::wait` on an incarnation. ractor notifies the supervisor of an exit *before*
//!   it marks the actor stopped, and an actor polls supervision events before messages, so a
//!   call made after `wait` returns is answered after the supervisor has decided on that exit;
//! - a watcher actor linked above a top-level supervisor receives its exit reason.
//!
//! Backoff, restart periods and shutdown limits are tested on tokio's paused clock, where a
//! timer fires only when virtual time reaches it: exact and instant.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridvisor_supervisors::registry::SendError;
use gridvisor_supervisors::{
    AddressError, Backoff, ChildContext, ChildExit, ChildExitNotice, ChildInfo, ChildKind,
    ChildSpec, ChildState, DynamicSupervisorRef, ExitAction, ExitClass, ExitReason, HookDecision,
    Notifier, Restart, Shutdown, StartError, Strategy, Supervisor, SupervisorConfig,
    SupervisorError, SupervisorRef, TreeContext,
};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Longest any test waits for an event that must come.
const LIMIT: Duration = Duration::from_secs(5);

/// An intensity no test reaches unless it means to.
const MANY: u32 = 1000;

// ---------------------------------------------------------------------------------------------
// Event log
// ---------------------------------------------------------------------------------------------

/// Where workers record what happens to them: a list (for whole-run assertions) and a
/// channel (to wait on).
#[derive(Clone)]
struct Log {
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
struct Events {
    log: Log,
    rx: mpsc::UnboundedReceiver<String>,
}

/// A new log and the test's end of it.
fn events() -> (Log, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let log = Log {
        all: Arc::default(),
        tx,
    };
    (log.clone(), Events { log, rx })
}

impl Events {
    async fn next(&mut self) -> String {
        match tokio::time::timeout(LIMIT, self.rx.recv()).await {
            Ok(Some(e)) => e,
            _ => panic!("no event within {LIMIT:?}"),
        }
    }

    /// The next events are exactly `want`, in this order.
    async fn expect<S: AsRef<str>>(&mut self, want: &[S]) {
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

    /// Nothing was recorded that the test has not consumed.
    fn assert_quiet(&mut self) {
        if let Ok(e) = self.rx.try_recv() {
            panic!("unexpected event {e:?}");
        }
    }

    /// Everything recorded so far.
    fn all(&self) -> Vec<String> {
        self.log.all.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The worker
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
#[error("over temperature: {celsius} °C")]
struct OverTemperature {
    celsius: u32,
}

/// What a test tells a worker to do.
#[derive(Debug, PartialEq)]
enum Cmd {
    /// The handler returns an error (abnormal).
    Fail,
    /// The handler returns a typed error (abnormal).
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
struct Behaviour {
    /// Starts to refuse before starting again (`u32::MAX`: refuse forever). Shared, so a
    /// test can change it while the child runs.
    refuse: Arc<AtomicU32>,
    /// `post_stop` never returns.
    hang_on_stop: bool,
}

impl Behaviour {
    fn refusing(n: u32) -> Self {
        Behaviour {
            refuse: Arc::new(AtomicU32::new(n)),
            hang_on_stop: false,
        }
    }

    fn hanging() -> Self {
        Behaviour {
            hang_on_stop: true,
            ..Behaviour::default()
        }
    }
}

struct Worker;

struct WorkerArgs {
    name: String,
    tag: Option<u32>,
    log: Log,
    behaviour: Behaviour,
}

struct WorkerState {
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
fn worker(id: &str, log: &Log) -> ChildSpec {
    worker_with(id, log, Behaviour::default())
}

fn worker_with(id: &str, log: &Log, behaviour: Behaviour) -> ChildSpec {
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
fn template(id: &str, log: &Log, behaviour: Behaviour) -> ChildSpec<u32> {
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

fn exponential(initial: Duration, max: Duration) -> Backoff {
    Backoff::exponential(initial, max).with_jitter(0.0)
}

// ---------------------------------------------------------------------------------------------
// Watching supervisors from above
// ---------------------------------------------------------------------------------------------

/// Linked above a top-level supervisor: forwards how it ended.
struct Watcher;

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

async fn watch(sup: &SupervisorRef) -> (ActorRef<()>, mpsc::UnboundedReceiver<ExitReason>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (watcher, _) = Actor::spawn(None, Watcher, tx)
        .await
        .expect("watcher starts");
    sup.cell().link(watcher.get_cell());
    (watcher, rx)
}

/// Receives [`ChildExitNotice`]s as an actor (for [`Notifier::actor`]).
struct Forwarder;

struct Noticed(ChildExitNotice);

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

/// A config whose intensity no test reaches by accident.
fn config(name: &str, strategy: Strategy) -> SupervisorConfig {
    SupervisorConfig::new(name, strategy).intensity(MANY, Duration::from_secs(60))
}

async fn start(config: SupervisorConfig, children: Vec<ChildSpec>) -> SupervisorRef {
    Supervisor::start(config, children)
        .await
        .expect("supervisor starts")
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    match tokio::time::timeout(LIMIT, rx.recv()).await {
        Ok(Some(v)) => v,
        _ => panic!("nothing received within {LIMIT:?}"),
    }
}

async fn children(sup: &SupervisorRef) -> Vec<ChildInfo> {
    sup.which_children().await.expect("which_children")
}

async fn child(sup: &SupervisorRef, id: &str) -> ChildInfo {
    children(sup)
        .await
        .into_iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("{} has no child {id}", sup.path()))
}

async fn cell(sup: &SupervisorRef, id: &str) -> ActorCell {
    child(sup, id)
        .await
        .actor
        .unwrap_or_else(|| panic!("{id} is not running"))
}

/// Child ids in start order with their running incarnations.
async fn incarnations(sup: &SupervisorRef) -> Vec<(String, Option<ActorId>)> {
    children(sup)
        .await
        .into_iter()
        .map(|c| (c.id, c.actor.map(|a| a.get_id())))
        .collect()
}

/// Which children run another incarnation than before (children that are gone now are
/// left out; children that are not running are a failure).
fn renewed(
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

fn send(cell: &ActorCell, cmd: Cmd) {
    cell.send_message(cmd).expect("the child takes the command");
}

async fn ended(cell: &ActorCell) {
    cell.wait(Some(LIMIT))
        .await
        .unwrap_or_else(|_| panic!("actor {} did not end within {LIMIT:?}", cell.get_id()));
}

/// Tell the running child `id` to do `cmd` and wait until that incarnation has ended (its
/// supervisor has then heard of it first; see the module docs). Returns its ractor id.
async fn exit_child(sup: &SupervisorRef, id: &str, cmd: Cmd) -> ActorId {
    let c = cell(sup, id).await;
    send(&c, cmd);
    ended(&c).await;
    c.get_id()
}

/// Kill the running child `id` (ractor's `Signal::Kill`) and wait until it has ended.
async fn kill_child(sup: &SupervisorRef, id: &str) -> ActorId {
    let c = cell(sup, id).await;
    c.kill();
    ended(&c).await;
    c.get_id()
}

fn dynamic_ref(sup: &SupervisorRef, id: &str, c: ActorCell) -> DynamicSupervisorRef<u32> {
    DynamicSupervisorRef::from_cell(c, sup.path().child(id)).expect("a dynamic supervisor")
}

/// The value of a counter or gauge with these labels, if the series exists.
fn metric(prom: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_one_restarts_only_the_exited_child() {
    let (log, mut ev) = events();
    let sup = start(
        config("o41", Strategy::OneForOne),
        vec![worker("a", &log), worker("b", &log), worker("c", &log)],
    )
    .await;
    ev.expect(&["start a", "start b", "start c"]).await;

    let before = incarnations(&sup).await;
    exit_child(&sup, "b", Cmd::Fail).await;
    ev.expect(&["start b"]).await;
    let after = incarnations(&sup).await;
    assert_eq!(renewed(&before, &after), ["b"]);
    let b = child(&sup, "b").await;
    assert_eq!(b.restarts, 1);
    assert_eq!(b.state, ChildState::Running);
    assert!(b.last_exit.as_deref().unwrap().starts_with("failed"));
    assert_eq!(child(&sup, "a").await.restarts, 0);

    let before = after;
    kill_child(&sup, "c").await;
    ev.expect(&["start c"]).await;
    assert_eq!(renewed(&before, &incarnations(&sup).await), ["c"]);
    assert_eq!(child(&sup, "c").await.last_exit.as_deref(), Some("killed"));

    sup.shutdown().await;
    ev.expect(&["stop c", "stop b", "stop a"]).await;
    ev.assert_quiet();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order() {
    let (log, mut ev) = events();
    let sup = start(
        config("o4a", Strategy::OneForAll),
        vec![
            worker("a", &log),
            worker("b", &log),
            worker("c", &log),
            // OTP: a temporary child stopped by a group restart is not restarted.
            worker("t", &log).restart(Restart::Temporary),
        ],
    )
    .await;
    ev.expect(&["start a", "start b", "start c", "start t"])
        .await;

    let before = incarnations(&sup).await;
    exit_child(&sup, "b", Cmd::Fail).await;
    ev.expect(&[
        "stop t", "stop c", "stop a", "start a", "start b", "start c",
    ])
    .await;
    let after = incarnations(&sup).await;
    assert_eq!(renewed(&before, &after), ["a", "b", "c"]);
    assert_eq!(
        after.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"],
        "the temporary child is gone"
    );
    for c in children(&sup).await {
        assert_eq!(c.restarts, 1, "{} restarted once", c.id);
    }
    ev.assert_quiet();
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_restarts_the_exited_child_and_those_started_after_it() {
    let (log, mut ev) = events();
    let sup = start(
        config("r41", Strategy::RestForOne),
        vec![
            worker("a", &log),
            worker("b", &log),
            worker("c", &log),
            worker("d", &log),
        ],
    )
    .await;
    ev.expect(&["start a", "start b", "start c", "start d"])
        .await;

    let before = incarnations(&sup).await;
    exit_child(&sup, "b", Cmd::Panic).await;
    ev.expect(&["stop d", "stop c", "start b", "start c", "start d"])
        .await;
    let after = incarnations(&sup).await;
    assert_eq!(renewed(&before, &after), ["b", "c", "d"]);

    // The last child has nobody after it.
    let before = after;
    kill_child(&sup, "d").await;
    ev.expect(&["start d"]).await;
    assert_eq!(renewed(&before, &incarnations(&sup).await), ["d"]);
    ev.assert_quiet();
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_one_for_one_restarts_only_the_exited_dynamic_child() {
    let (log, mut ev) = events();
    let sup = Supervisor::start_dynamic(
        config("pool", Strategy::OneForOne), // the strategy is SimpleOneForOne regardless
        template("conn", &log, Behaviour::default()),
    )
    .await
    .expect("dynamic supervisor starts");
    assert!(children(&sup).await.is_empty(), "starts without children");

    for n in [10, 20, 30] {
        sup.start_child(n).await.expect("child starts");
    }
    ev.expect(&[
        "start conn-1 arg=10",
        "start conn-2 arg=20",
        "start conn-3 arg=30",
    ])
    .await;

    let before = incarnations(&sup).await;
    exit_child(&sup, "conn-2", Cmd::Fail).await;
    ev.expect(&["start conn-2 arg=20"]).await;
    assert_eq!(renewed(&before, &incarnations(&sup).await), ["conn-2"]);
    let tree = sup.tree().await.unwrap();
    assert_eq!(tree.strategy.as_deref(), Some("simple_one_for_one"));

    // All children stop on shutdown (OTP stops them in parallel).
    sup.shutdown().await;
    let mut stops: Vec<String> = ev
        .all()
        .into_iter()
        .filter(|e| e.starts_with("stop"))
        .collect();
    stops.sort();
    assert_eq!(stops, ["stop conn-1", "stop conn-2", "stop conn-3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_restart_starts_terminated_siblings_too_as_otp_does() {
    // OTP's one_for_all and rest_for_one restart every non-temporary child of the group,
    // running or not (`terminate_children` then `start_children` over the whole group).
    let (log, mut ev) = events();
    let sup = start(
        config("grp", Strategy::OneForAll),
        vec![
            worker("a", &log),
            worker("b", &log),
            worker("c", &log).restart(Restart::Transient),
        ],
    )
    .await;
    ev.expect(&["start a", "start b", "start c"]).await;
    sup.terminate_child("a").await.unwrap();
    exit_child(&sup, "c", Cmd::Stop).await;
    ev.expect(&["stop a", "stop c"]).await;
    assert_eq!(child(&sup, "a").await.state, ChildState::Terminated);
    assert_eq!(child(&sup, "c").await.state, ChildState::Terminated);

    exit_child(&sup, "b", Cmd::Fail).await;
    ev.expect(&["start a", "start b", "start c"]).await;
    for c in children(&sup).await {
        assert_eq!(c.state, ChildState::Running, "{}", c.id);
    }
    sup.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Restart types and exit reasons
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_children_restart_after_every_exit() {
    let (log, mut ev) = events();
    let sup = start(config("perm", Strategy::OneForOne), vec![worker("p", &log)]).await;
    ev.expect(&["start p"]).await;

    let cases: [(Cmd, &[&str], &str); 4] = [
        (Cmd::Stop, &["stop p", "start p"], "normal"),
        (Cmd::Fail, &["start p"], "failed: p failed"),
        (Cmd::Panic, &["start p"], "failed"),
        (
            Cmd::StopWith("shutdown".into()),
            &["stop p", "start p"],
            "shutdown",
        ),
    ];
    let mut restarts = 0;
    for (cmd, events, exit) in cases {
        let old = exit_child(&sup, "p", cmd).await;
        ev.expect(events).await;
        restarts += 1;
        let p = child(&sup, "p").await;
        assert_eq!(p.restarts, restarts);
        assert_ne!(p.actor.unwrap().get_id(), old);
        assert!(
            p.last_exit.as_deref().unwrap().starts_with(exit),
            "{:?} should start with {exit:?}",
            p.last_exit
        );
    }
    let old = kill_child(&sup, "p").await;
    ev.expect(&["start p"]).await; // killed: no post_stop
    assert_ne!(cell(&sup, "p").await.get_id(), old);
    assert_eq!(child(&sup, "p").await.last_exit.as_deref(), Some("killed"));
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_children_restart_only_after_abnormal_exits() {
    let (log, mut ev) = events();
    let sup = start(
        config("trans", Strategy::OneForOne),
        vec![
            worker("t", &log).restart(Restart::Transient),
            worker("other", &log),
        ],
    )
    .await;
    ev.expect(&["start t", "start other"]).await;

    // Abnormal: an error, a panic, a kill.
    exit_child(&sup, "t", Cmd::Fail).await;
    ev.expect(&["start t"]).await;
    exit_child(&sup, "t", Cmd::Panic).await;
    ev.expect(&["start t"]).await;
    kill_child(&sup, "t").await;
    ev.expect(&["start t"]).await;
    assert_eq!(child(&sup, "t").await.restarts, 3);

    // Normal: a graceful stop, with no reason, "shutdown" or a reason of its own. The child
    // stays listed as terminated (a static child) and can be restarted by hand.
    for cmd in [
        Cmd::Stop,
        Cmd::StopWith("shutdown".into()),
        Cmd::StopWith("done".into()),
    ] {
        exit_child(&sup, "t", cmd).await;
        ev.expect(&["stop t"]).await;
        let t = child(&sup, "t").await;
        assert_eq!(t.state, ChildState::Terminated);
        assert!(t.actor.is_none());
        assert_eq!(t.restarts, 3, "a normal exit is not restarted");
        ev.assert_quiet();
        sup.restart_child("t").await.expect("restart by hand");
        ev.expect(&["start t"]).await;
    }
    assert_eq!(
        child(&sup, "other").await.restarts,
        0,
        "one_for_one: the sibling is untouched"
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_children_are_removed_after_any_exit() {
    let (log, mut ev) = events();
    let sup = start(
        config("temp", Strategy::OneForOne),
        vec![
            worker("keep", &log),
            worker("t1", &log).restart(Restart::Temporary),
            worker("t2", &log).restart(Restart::Temporary),
            worker("t3", &log).restart(Restart::Temporary),
        ],
    )
    .await;
    ev.expect(&["start keep", "start t1", "start t2", "start t3"])
        .await;

    exit_child(&sup, "t1", Cmd::Fail).await;
    exit_child(&sup, "t2", Cmd::Stop).await;
    kill_child(&sup, "t3").await;
    let ids: Vec<String> = children(&sup).await.into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["keep"]);
    ev.expect(&["stop t2"]).await;
    ev.assert_quiet(); // nothing restarted
    let counts = sup.count_children().await.unwrap();
    assert_eq!((counts.specs, counts.active), (1, 1));
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_children_follow_their_restart_type_and_leave_when_done() {
    let (log, mut ev) = events();
    let transient = Supervisor::start_dynamic(
        config("tpool", Strategy::SimpleOneForOne),
        template("s", &log, Behaviour::default()).restart(Restart::Transient),
    )
    .await
    .unwrap();
    transient.start_child(1).await.unwrap();
    transient.start_child(2).await.unwrap();
    ev.expect(&["start s-1 arg=1", "start s-2 arg=2"]).await;

    // A transient dynamic child that ends normally is removed (there is nothing to keep:
    // OTP deletes dynamic children that will not be restarted).
    exit_child(&transient, "s-1", Cmd::Stop).await;
    ev.expect(&["stop s-1"]).await;
    let ids: Vec<String> = children(&transient)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["s-2"]);
    // One that fails is restarted with its arguments.
    exit_child(&transient, "s-2", Cmd::Fail).await;
    ev.expect(&["start s-2 arg=2"]).await;
    assert_eq!(child(&transient, "s-2").await.restarts, 1);

    let temporary = Supervisor::start_dynamic(
        config("xpool", Strategy::SimpleOneForOne),
        template("x", &log, Behaviour::default()).restart(Restart::Temporary),
    )
    .await
    .unwrap();
    temporary.start_child(7).await.unwrap();
    ev.expect(&["start x-1 arg=7"]).await;
    exit_child(&temporary, "x-1", Cmd::Fail).await;
    assert!(children(&temporary).await.is_empty());
    ev.assert_quiet();

    transient.shutdown().await;
    temporary.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Restart intensity
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_supervisor_that_reaches_its_intensity_fails_and_its_parent_sees_why() {
    let (log, mut ev) = events();
    let (ntx, mut notices) = mpsc::unbounded_channel::<ChildExitNotice>();
    let notifier = Notifier::function(move |n| {
        let _ = ntx.send(n);
    });
    let inner = Supervisor::child_spec(
        "inner",
        // The nested supervisor takes its path from its parent, not from this name.
        SupervisorConfig::new("ignored", Strategy::OneForOne).intensity(2, Duration::from_secs(60)),
        vec![worker("w", &log)],
    );
    let top = start(
        SupervisorConfig::new("top", Strategy::OneForOne)
            .hook(move |_| HookDecision::restart().notify(notifier.clone())),
        vec![inner],
    )
    .await;
    ev.expect(&["start w"]).await;
    let inner_cell = cell(&top, "inner").await;
    let inner = SupervisorRef::from_cell(inner_cell.clone(), "top/inner".into()).unwrap();

    // Two restarts are within 2 in 60 s.
    for _ in 0..2 {
        exit_child(&inner, "w", Cmd::Fail).await;
        ev.expect(&["start w"]).await;
    }
    assert_eq!(child(&inner, "w").await.restarts, 2);
    assert_eq!(cell(&top, "inner").await.get_id(), inner_cell.get_id());
    assert!(notices.try_recv().is_err(), "the parent heard of nothing");

    // The third is one too many: the nested supervisor gives up and fails.
    send(&cell(&inner, "w").await, Cmd::Fail);
    ended(&inner_cell).await;
    let notice = recv(&mut notices).await;
    assert_eq!(notice.path.as_str(), "top/inner");
    assert_eq!(notice.action, ExitAction::Restart);
    assert_eq!(notice.reason.class(), ExitClass::Failed);
    match notice.reason.error::<SupervisorError>() {
        Some(SupervisorError::ReachedMaxRestartIntensity {
            path,
            max_restarts,
            period,
            child,
            reason,
        }) => {
            assert_eq!(path.as_str(), "top/inner");
            assert_eq!(*max_restarts, 2);
            assert_eq!(*period, Duration::from_secs(60));
            assert_eq!(child, "w");
            assert!(reason.contains("w failed"), "{reason}");
        }
        other => panic!("expected ReachedMaxRestartIntensity, got {other:?}"),
    }

    // The parent restarts it (one restart is within its default intensity); it starts its
    // child afresh.
    ev.expect(&["start w"]).await;
    let info = child(&top, "inner").await;
    assert_eq!(info.kind, ChildKind::Supervisor);
    assert_eq!(info.restarts, 1);
    assert_ne!(info.actor.unwrap().get_id(), inner_cell.get_id());
    top.shutdown().await;
    ev.expect(&["stop w"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_level_supervisor_ends_after_the_default_intensity_of_one_restart_in_five_seconds() {
    let (log, mut ev) = events();
    let prom = prometheus::Registry::new();
    let sup = start(
        SupervisorConfig::new("lone", Strategy::OneForOne)
            .tree(TreeContext::with_metrics(&prom).unwrap()),
        vec![worker("a", &log), worker("b", &log)],
    )
    .await;
    let (watcher, mut exits) = watch(&sup).await;
    ev.expect(&["start a", "start b"]).await;

    exit_child(&sup, "a", Cmd::Fail).await;
    ev.expect(&["start a"]).await; // the one allowed restart

    let sup_cell = sup.cell();
    send(&cell(&sup, "a").await, Cmd::Fail);
    ended(&sup_cell).await;
    // It stopped its other child before it went.
    assert_eq!(ev.all(), ["start a", "start b", "start a", "stop b"]);
    let reason = recv(&mut exits).await;
    match reason.error::<SupervisorError>() {
        Some(SupervisorError::ReachedMaxRestartIntensity {
            path,
            max_restarts: 1,
            period,
            child,
            ..
        }) => {
            assert_eq!(path.as_str(), "lone");
            assert_eq!(*period, Duration::from_secs(5));
            assert_eq!(child, "a");
        }
        other => panic!("expected ReachedMaxRestartIntensity, got {other:?} ({reason})"),
    }
    assert_eq!(
        metric(
            &prom,
            "gridvisor_supervisor_intensity_exceeded_total",
            &[("path", "lone")]
        ),
        Some(1.0)
    );
    assert!(matches!(
        sup.which_children().await,
        Err(SupervisorError::Unreachable { .. })
    ));
    watcher.stop(None);
}

#[tokio::test(start_paused = true)]
async fn the_restart_period_is_a_sliding_window_that_includes_its_end() {
    let (log, mut ev) = events();
    // Default intensity: 1 restart in 5 s. A restart exactly 5 s after the last one is still
    // inside the period (OTP keeps restarts with Now - Then =< Period).
    let inclusive = start(
        SupervisorConfig::new("inclusive", Strategy::OneForOne),
        vec![worker("a", &log)],
    )
    .await;
    ev.expect(&["start a"]).await;
    exit_child(&inclusive, "a", Cmd::Fail).await;
    ev.expect(&["start a"]).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let cell_of_sup = inclusive.cell();
    exit_child(&inclusive, "a", Cmd::Fail).await;
    ended(&cell_of_sup).await;

    // Just past the period the first restart has expired.
    let sliding = start(
        SupervisorConfig::new("sliding", Strategy::OneForOne),
        vec![worker("b", &log)],
    )
    .await;
    ev.expect(&["start b"]).await;
    exit_child(&sliding, "b", Cmd::Fail).await;
    ev.expect(&["start b"]).await;
    tokio::time::advance(Duration::from_millis(5001)).await;
    exit_child(&sliding, "b", Cmd::Fail).await;
    ev.expect(&["start b"]).await;
    assert_eq!(child(&sliding, "b").await.restarts, 2);
    // ... but a second restart at the same instant is one too many.
    let cell_of_sup = sliding.cell();
    exit_child(&sliding, "b", Cmd::Fail).await;
    ended(&cell_of_sup).await;
    ev.assert_quiet();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_restarts_are_retried_and_count_against_the_intensity() {
    let (log, mut ev) = events();
    // Recovers: two refused starts, then a good one (5 in 60 s allows all three attempts).
    let flaky = Behaviour::default();
    let sup = start(
        SupervisorConfig::new("flaky", Strategy::OneForOne).intensity(5, Duration::from_secs(60)),
        vec![worker_with("f", &log, flaky.clone())],
    )
    .await;
    ev.expect(&["start f"]).await;
    flaky.refuse.store(2, SeqCst);
    exit_child(&sup, "f", Cmd::Fail).await;
    ev.expect(&["refuse f", "refuse f", "start f"]).await;
    let f = child(&sup, "f").await;
    assert_eq!(f.state, ChildState::Running);
    sup.shutdown().await;
    ev.expect(&["stop f"]).await;

    // Never recovers: the exit and each failed attempt count; with 3 in 60 s the supervisor
    // gives up at the third refusal.
    let broken = Behaviour::default();
    let sup = start(
        SupervisorConfig::new("broken", Strategy::OneForOne).intensity(3, Duration::from_secs(60)),
        vec![worker_with("g", &log, broken.clone())],
    )
    .await;
    let (watcher, mut exits) = watch(&sup).await;
    ev.expect(&["start g"]).await;
    broken.refuse.store(u32::MAX, SeqCst);
    let sup_cell = sup.cell();
    exit_child(&sup, "g", Cmd::Fail).await;
    ended(&sup_cell).await;
    ev.expect(&["refuse g", "refuse g", "refuse g"]).await;
    ev.assert_quiet();
    let reason = recv(&mut exits).await;
    match reason.error::<SupervisorError>() {
        Some(SupervisorError::ReachedMaxRestartIntensity { child, reason, .. }) => {
            assert_eq!(child, "g");
            assert!(reason.contains("refused to start"), "{reason}");
        }
        other => panic!("expected ReachedMaxRestartIntensity, got {other:?}"),
    }
    watcher.stop(None);
}

// ---------------------------------------------------------------------------------------------
// Starting and stopping
// ---------------------------------------------------------------------------------------------

async fn panicking_start(_ctx: ChildContext, _args: ()) -> Result<ActorCell, StartError> {
    panic!("start function panicked on purpose")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_fails_to_start_fails_the_start_and_stops_the_started_in_reverse() {
    let (log, ev) = events();
    let r = Supervisor::start(
        config("sf", Strategy::OneForOne),
        vec![
            worker("a", &log),
            worker("b", &log),
            worker_with("c", &log, Behaviour::refusing(1)),
            worker("d", &log),
        ],
    )
    .await;
    match r {
        Err(SupervisorError::StartFailed {
            path,
            child,
            error: StartError::Failed(msg),
        }) => {
            assert_eq!(path.as_str(), "sf");
            assert_eq!(child, "c");
            assert!(msg.contains("c refused to start"), "{msg}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert_eq!(
        ev.all(),
        ["start a", "start b", "refuse c", "stop b", "stop a"],
        "d never started"
    );

    // A start function that panics is a failed start too.
    let (log, ev) = events();
    let r = Supervisor::start(
        config("sp", Strategy::OneForOne),
        vec![
            worker("a", &log),
            ChildSpec::worker("boom", panicking_start),
        ],
    )
    .await;
    assert!(
        matches!(&r, Err(SupervisorError::StartFailed { child, error: StartError::Failed(m), .. })
            if child == "boom" && m.contains("panicked")),
        "{r:?}"
    );
    assert_eq!(ev.all(), ["start a", "stop a"]);

    // A start function that does not link its actor is refused, and the actor stopped.
    let (log, ev) = events();
    let rogue: Arc<Mutex<Option<ActorCell>>> = Arc::default();
    let (rlog, slot) = (log.clone(), rogue.clone());
    let unlinked = ChildSpec::worker("rogue", move |ctx: ChildContext, ()| {
        let args = WorkerArgs {
            name: ctx.path().leaf().to_string(),
            tag: None,
            log: rlog.clone(),
            behaviour: Behaviour::default(),
        };
        let slot = slot.clone();
        async move {
            let (actor, _) = Actor::spawn(None, Worker, args).await?;
            *slot.lock().unwrap() = Some(actor.get_cell());
            Ok(actor.get_cell())
        }
    });
    let r = Supervisor::start(config("su", Strategy::OneForOne), vec![unlinked]).await;
    assert!(
        matches!(
            &r,
            Err(SupervisorError::StartFailed {
                error: StartError::NotLinked,
                ..
            })
        ),
        "{r:?}"
    );
    let rogue = rogue
        .lock()
        .unwrap()
        .clone()
        .expect("the rogue actor was spawned");
    ended(&rogue).await;
    assert_eq!(ev.all(), ["start rogue"], "killed: no post_stop");

    // Repeated ids and the dynamic strategy without a template are refused.
    let r = Supervisor::start(
        config("dup", Strategy::OneForOne),
        vec![worker("x", &log), worker("x", &log)],
    )
    .await;
    assert!(
        matches!(r, Err(SupervisorError::BadRequest { .. })),
        "{r:?}"
    );
    let r = Supervisor::start(config("s141", Strategy::SimpleOneForOne), vec![]).await;
    assert!(
        matches!(r, Err(SupervisorError::BadRequest { .. })),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_start_in_order_and_stop_in_reverse_order_through_nested_supervisors() {
    let (log, mut ev) = events();
    let sup = start(
        config("order", Strategy::OneForOne),
        vec![
            worker("a", &log),
            Supervisor::child_spec(
                "n",
                config("n", Strategy::RestForOne),
                vec![worker("x", &log), worker("y", &log)],
            ),
            worker("c", &log),
        ],
    )
    .await;
    assert_eq!(ev.all(), ["start a", "start x", "start y", "start c"]);
    ev.expect(&["start a", "start x", "start y", "start c"])
        .await;
    sup.shutdown().await;
    assert_eq!(
        ev.all(),
        ["start a", "start x", "start y", "start c", "stop c", "stop y", "stop x", "stop a"]
    );
    ev.expect(&["stop c", "stop y", "stop x", "stop a"]).await;
    ev.assert_quiet(); // no child was restarted while stopping
}

#[tokio::test(start_paused = true)]
async fn a_child_that_overruns_its_shutdown_limit_is_killed_and_shutdown_completes() {
    let (log, mut ev) = events();
    let limit = Duration::from_millis(300);
    let sup = start(
        config("slow", Strategy::OneForOne),
        vec![
            worker("a", &log),
            worker_with("h", &log, Behaviour::hanging()).shutdown(Shutdown::Timeout(limit)),
            worker("c", &log),
        ],
    )
    .await;
    ev.expect(&["start a", "start h", "start c"]).await;

    // terminate_child waits out the limit, then kills.
    let h = cell(&sup, "h").await;
    let t0 = Instant::now();
    sup.terminate_child("h").await.unwrap();
    assert_eq!(t0.elapsed(), limit);
    ended(&h).await;
    ev.expect(&["hang h"]).await; // and never "stop h"
    let info = child(&sup, "h").await;
    assert_eq!(info.state, ChildState::Terminated);
    assert_eq!(info.last_exit.as_deref(), Some("killed"));

    // A child that stops in time is shut down, not killed.
    sup.terminate_child("c").await.unwrap();
    ev.expect(&["stop c"]).await;
    assert_eq!(
        child(&sup, "c").await.last_exit.as_deref(),
        Some("shutdown")
    );

    // The supervisor's own shutdown goes on past a hanging child.
    sup.restart_child("h").await.unwrap();
    sup.restart_child("c").await.unwrap();
    ev.expect(&["start h", "start c"]).await;
    let h = cell(&sup, "h").await;
    let t0 = Instant::now();
    sup.shutdown().await;
    assert_eq!(t0.elapsed(), limit);
    ev.expect(&["stop c", "hang h", "stop a"]).await;
    ended(&h).await;
    ev.assert_quiet();
}

#[tokio::test(start_paused = true)]
async fn dynamic_children_stop_in_parallel_each_within_its_limit() {
    let (log, mut ev) = events();
    let limit = Duration::from_millis(300);
    let sup = Supervisor::start_dynamic(
        config("par", Strategy::SimpleOneForOne),
        template("h", &log, Behaviour::hanging()).shutdown(Shutdown::Timeout(limit)),
    )
    .await
    .unwrap();
    for n in 0..3 {
        sup.start_child(n).await.unwrap();
    }
    ev.expect(&["start h-1 arg=0", "start h-2 arg=1", "start h-3 arg=2"])
        .await;
    let cells: Vec<ActorCell> = children(&sup)
        .await
        .into_iter()
        .map(|c| c.actor.unwrap())
        .collect();
    let t0 = Instant::now();
    sup.shutdown().await;
    assert_eq!(
        t0.elapsed(),
        limit,
        "one limit for all, not one after another"
    );
    for c in &cells {
        ended(c).await;
    }
    let hangs = ev.all().iter().filter(|e| e.starts_with("hang")).count();
    assert_eq!(hangs, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brutal_shutdown_kills_without_running_post_stop() {
    let (log, mut ev) = events();
    let sup = start(
        config("brutal", Strategy::OneForOne),
        vec![
            worker("a", &log),
            worker("b", &log).shutdown(Shutdown::Brutal),
            worker("c", &log).shutdown(Shutdown::Brutal),
        ],
    )
    .await;
    ev.expect(&["start a", "start b", "start c"]).await;

    let c = cell(&sup, "c").await;
    sup.terminate_child("c").await.unwrap();
    ended(&c).await;
    let info = child(&sup, "c").await;
    assert_eq!(info.state, ChildState::Terminated);
    assert_eq!(info.last_exit.as_deref(), Some("killed"));

    let b = cell(&sup, "b").await;
    sup.shutdown().await;
    ended(&b).await;
    assert_eq!(ev.all(), ["start a", "start b", "start c", "stop a"]);
}

// ---------------------------------------------------------------------------------------------
// Nested supervisors and introspection
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_shows_nested_supervisors_with_their_strategies() {
    let (log, mut ev) = events();
    let sup = start(
        config("plant", Strategy::OneForOne),
        vec![
            worker("meter", &log),
            Supervisor::child_spec(
                "feeders",
                config("anything", Strategy::RestForOne),
                vec![
                    worker("f1", &log),
                    Supervisor::child_spec(
                        "deep",
                        config("anything", Strategy::OneForAll),
                        vec![worker("d1", &log)],
                    ),
                ],
            ),
            Supervisor::<u32>::dynamic_child_spec(
                "sessions",
                config("anything", Strategy::SimpleOneForOne),
                template("session", &log, Behaviour::default()),
            ),
        ],
    )
    .await;
    ev.expect(&["start meter", "start f1", "start d1"]).await;
    let sessions = dynamic_ref(&sup, "sessions", cell(&sup, "sessions").await);
    assert_eq!(sessions.path().as_str(), "plant/sessions");
    sessions.start_child(1).await.unwrap();
    sessions.start_child(2).await.unwrap();
    ev.expect(&["start session-1 arg=1", "start session-2 arg=2"])
        .await;

    let tree = sup.tree().await.unwrap();
    assert_eq!(tree.path.as_str(), "plant");
    assert_eq!(tree.kind, ChildKind::Supervisor);
    assert_eq!(tree.strategy.as_deref(), Some("one_for_one"));
    let shape: Vec<(&str, ChildKind, Option<&str>, usize)> = tree
        .children
        .iter()
        .map(|n| {
            (
                n.path.as_str(),
                n.kind,
                n.strategy.as_deref(),
                n.children.len(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("plant/meter", ChildKind::Worker, None, 0),
            (
                "plant/feeders",
                ChildKind::Supervisor,
                Some("rest_for_one"),
                2
            ),
            (
                "plant/sessions",
                ChildKind::Supervisor,
                Some("simple_one_for_one"),
                2
            ),
        ]
    );
    let deep = tree
        .find("plant/feeders/deep")
        .expect("nested two levels down");
    assert_eq!(deep.strategy.as_deref(), Some("one_for_all"));
    assert_eq!(deep.children[0].path.as_str(), "plant/feeders/deep/d1");
    assert_eq!(
        tree.find("plant/sessions/session-2").unwrap().state,
        ChildState::Running
    );
    assert_eq!(tree.size(), 9);
    let text = tree.render();
    assert!(
        text.contains("  feeders (rest_for_one) [Running]"),
        "{text}"
    );
    assert!(text.contains("      d1 [Running]"), "{text}");
    let json = serde_json::to_value(&tree).unwrap();
    assert_eq!(json["children"][1]["strategy"], "rest_for_one");
    assert_eq!(json["children"][1]["kind"], "supervisor");

    // A restart deep down shows in the tree.
    let feeders =
        SupervisorRef::from_cell(cell(&sup, "feeders").await, "plant/feeders".into()).unwrap();
    let deep = SupervisorRef::from_cell(cell(&feeders, "deep").await, "plant/feeders/deep".into())
        .unwrap();
    exit_child(&deep, "d1", Cmd::Fail).await;
    ev.expect(&["start d1"]).await;
    let tree = sup.tree().await.unwrap();
    let d1 = tree.find("plant/feeders/deep/d1").unwrap();
    assert_eq!(d1.restarts, 1);
    assert!(d1.last_exit.as_deref().unwrap().starts_with("failed"));

    // Not a supervisor: from_cell refuses a worker.
    assert!(SupervisorRef::from_cell(cell(&sup, "meter").await, "plant/meter".into()).is_err());
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_children_are_restarted_with_their_original_arguments() {
    let (log, mut ev) = events();
    let sup = Supervisor::start_dynamic(
        config("args", Strategy::SimpleOneForOne),
        template("conn", &log, Behaviour::default()),
    )
    .await
    .unwrap();
    let first = sup.start_child(7).await.unwrap();
    assert_eq!(first.id, "conn-1");
    assert_eq!(first.path.as_str(), "args/conn-1");
    let named = sup.start_child_named("special", 11).await.unwrap();
    assert_eq!(named.path.as_str(), "args/special");
    sup.start_child(9).await.unwrap();
    ev.expect(&[
        "start conn-1 arg=7",
        "start special arg=11",
        "start conn-2 arg=9",
    ])
    .await;

    exit_child(&sup, "conn-1", Cmd::Fail).await;
    ev.expect(&["start conn-1 arg=7"]).await;
    kill_child(&sup, "special").await;
    ev.expect(&["start special arg=11"]).await;
    exit_child(&sup, "conn-2", Cmd::Stop).await; // permanent: restarted after a normal exit
    ev.expect(&["stop conn-2", "start conn-2 arg=9"]).await;
    assert_ne!(cell(&sup, "conn-1").await.get_id(), first.cell.get_id());
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_children_have_unique_ids() {
    let (log, mut ev) = events();
    let sup = Supervisor::start_dynamic(
        config("uniq", Strategy::SimpleOneForOne),
        template("c", &log, Behaviour::default()),
    )
    .await
    .unwrap();
    sup.start_child_named("c-2", 0).await.unwrap();
    ev.expect(&["start c-2 arg=0"]).await;
    let r = sup.start_child_named("c-2", 1).await;
    assert!(
        matches!(&r, Err(SupervisorError::AlreadyPresent { id, .. }) if id == "c-2"),
        "{r:?}"
    );
    // Generated ids step over ids that are taken.
    let a = sup.start_child(2).await.unwrap();
    let b = sup.start_child(3).await.unwrap();
    assert_eq!(a.id, "c-1");
    assert_eq!(b.id, "c-3", "c-2 is taken");
    let mut ids: Vec<String> = children(&sup).await.into_iter().map(|c| c.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        sup.start_child_named("a/b", 4).await.is_err(),
        "no '/' in ids"
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_restart_and_delete_child_follow_otp() {
    let (log, mut ev) = events();
    let sup = start(
        config("api", Strategy::OneForOne),
        vec![
            worker("a", &log),
            worker("b", &log).restart(Restart::Transient),
            worker("t", &log).restart(Restart::Temporary),
        ],
    )
    .await;
    ev.expect(&["start a", "start b", "start t"]).await;

    // terminate_child: stopped by its shutdown policy, kept as terminated, not restarted.
    let a = cell(&sup, "a").await;
    sup.terminate_child("a").await.unwrap();
    ev.expect(&["stop a"]).await;
    ended(&a).await;
    let info = child(&sup, "a").await;
    assert_eq!(info.state, ChildState::Terminated);
    assert!(info.actor.is_none());
    assert_eq!(info.last_exit.as_deref(), Some("shutdown"));
    assert_eq!(info.restarts, 0);
    ev.assert_quiet();
    // Terminating a terminated child is fine.
    sup.terminate_child("a").await.unwrap();

    // restart_child: a terminated child only.
    let started = sup.restart_child("a").await.unwrap();
    ev.expect(&["start a"]).await;
    assert_eq!(started.id, "a");
    assert_eq!(started.path.as_str(), "api/a");
    assert_ne!(started.cell.get_id(), a.get_id());
    assert_eq!(
        cell(&sup, "a").await.get_id(),
        started.cell.get_id(),
        "which_children shows the new incarnation"
    );
    assert!(matches!(
        sup.restart_child("a").await,
        Err(SupervisorError::Running { .. })
    ));

    // delete_child: a terminated child only; then it is unknown.
    assert!(matches!(
        sup.delete_child("a").await,
        Err(SupervisorError::Running { .. })
    ));
    sup.terminate_child("a").await.unwrap();
    ev.expect(&["stop a"]).await;
    sup.delete_child("a").await.unwrap();
    assert!(matches!(
        sup.restart_child("a").await,
        Err(SupervisorError::UnknownChild { .. })
    ));
    assert!(matches!(
        sup.terminate_child("nope").await,
        Err(SupervisorError::UnknownChild { .. })
    ));
    assert!(matches!(
        sup.delete_child("nope").await,
        Err(SupervisorError::UnknownChild { .. })
    ));

    // A terminated temporary child is deleted.
    sup.terminate_child("t").await.unwrap();
    ev.expect(&["stop t"]).await;
    let ids: Vec<String> = children(&sup).await.into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["b"]);

    // start_child adds a spec at the end; an existing id is refused; a failed start leaves
    // nothing behind.
    assert!(matches!(
        sup.start_child(worker("b", &log)).await,
        Err(SupervisorError::AlreadyPresent { .. })
    ));
    let n = sup.start_child(worker("n", &log)).await.unwrap();
    ev.expect(&["start n"]).await;
    assert_eq!(n.path.as_str(), "api/n");
    assert!(matches!(
        sup.start_child(worker_with("z", &log, Behaviour::refusing(1)))
            .await,
        Err(SupervisorError::StartFailed { .. })
    ));
    ev.expect(&["refuse z"]).await;
    let ids: Vec<String> = children(&sup).await.into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["b", "n"]);
    // The added child is supervised like the others.
    exit_child(&sup, "n", Cmd::Fail).await;
    ev.expect(&["start n"]).await;

    // Dynamic supervisors take arguments, not specs, and have no restart/delete_child.
    let dynamic = Supervisor::start_dynamic(
        config("dyn", Strategy::SimpleOneForOne),
        template("d", &log, Behaviour::default()),
    )
    .await
    .unwrap();
    assert!(matches!(
        SupervisorRef::start_child(&dynamic, worker("x", &log)).await,
        Err(SupervisorError::BadRequest { .. })
    ));
    dynamic.start_child(1).await.unwrap();
    ev.expect(&["start d-1 arg=1"]).await;
    assert!(matches!(
        dynamic.restart_child("d-1").await,
        Err(SupervisorError::BadRequest { .. })
    ));
    assert!(matches!(
        dynamic.delete_child("d-1").await,
        Err(SupervisorError::BadRequest { .. })
    ));
    dynamic.terminate_child("d-1").await.unwrap();
    ev.expect(&["stop d-1"]).await;
    assert!(
        children(&dynamic).await.is_empty(),
        "a terminated dynamic child is deleted"
    );

    dynamic.shutdown().await;
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_and_which_children_report_every_child() {
    let (log, mut ev) = events();
    let sup = start(
        config("cnt", Strategy::OneForOne),
        vec![
            worker("w1", &log),
            Supervisor::child_spec(
                "s1",
                config("x", Strategy::OneForAll),
                vec![worker("i", &log)],
            ),
            worker("w2", &log).restart(Restart::Transient),
            Supervisor::<u32>::dynamic_child_spec(
                "s2",
                config("x", Strategy::SimpleOneForOne),
                template("d", &log, Behaviour::default()),
            ),
        ],
    )
    .await;
    ev.expect(&["start w1", "start i", "start w2"]).await;
    let counts = sup.count_children().await.unwrap();
    assert_eq!(
        (
            counts.specs,
            counts.active,
            counts.supervisors,
            counts.workers
        ),
        (4, 4, 2, 2)
    );

    let list = children(&sup).await;
    let summary: Vec<(&str, &str, ChildKind, Restart, ChildState)> = list
        .iter()
        .map(|c| (c.id.as_str(), c.path.as_str(), c.kind, c.restart, c.state))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "w1",
                "cnt/w1",
                ChildKind::Worker,
                Restart::Permanent,
                ChildState::Running
            ),
            (
                "s1",
                "cnt/s1",
                ChildKind::Supervisor,
                Restart::Permanent,
                ChildState::Running
            ),
            (
                "w2",
                "cnt/w2",
                ChildKind::Worker,
                Restart::Transient,
                ChildState::Running
            ),
            (
                "s2",
                "cnt/s2",
                ChildKind::Supervisor,
                Restart::Permanent,
                ChildState::Running
            ),
        ]
    );
    assert!(list
        .iter()
        .all(|c| c.actor.is_some() && c.last_exit.is_none()));

    // A transient child that ended normally is counted but not active.
    exit_child(&sup, "w2", Cmd::Stop).await;
    ev.expect(&["stop w2"]).await;
    let counts = sup.count_children().await.unwrap();
    assert_eq!((counts.specs, counts.active, counts.workers), (4, 3, 2));

    // Dynamic children are counted by their own supervisor.
    let s2 = dynamic_ref(&sup, "s2", cell(&sup, "s2").await);
    for n in 0..3 {
        s2.start_child(n).await.unwrap();
    }
    let counts = s2.count_children().await.unwrap();
    assert_eq!((counts.specs, counts.active, counts.workers), (3, 3, 3));
    sup.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Escalation hooks
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_can_leave_a_child_down() {
    let (log, mut ev) = events();
    let (tx, mut notices) = mpsc::unbounded_channel();
    let (forwarder, _) = Actor::spawn(None, Forwarder, tx).await.unwrap();
    let notifier = Notifier::actor(forwarder.clone());
    /// What the hook saw: id, path, restart type, exit class.
    type Seen = Vec<(String, String, Restart, ExitClass)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let seen2 = seen.clone();
    let sup = start(
        config("ign", Strategy::OneForOne).hook(move |e: &ChildExit<'_>| {
            seen2.lock().unwrap().push((
                e.id.to_string(),
                e.path.to_string(),
                e.restart,
                e.reason.class(),
            ));
            if e.id == "a" {
                HookDecision::ignore().notify(notifier.clone())
            } else {
                HookDecision::restart()
            }
        }),
        vec![worker("a", &log), worker("b", &log)],
    )
    .await;
    ev.expect(&["start a", "start b"]).await;

    let before = incarnations(&sup).await;
    exit_child(&sup, "a", Cmd::Overheat(90)).await;
    let a = child(&sup, "a").await;
    assert_eq!(a.state, ChildState::Terminated, "ignored: left down");
    assert!(a.actor.is_none());
    assert_eq!(a.restarts, 0);
    assert_eq!(
        cell(&sup, "b").await.get_id(),
        before[1].1.unwrap(),
        "the sibling is untouched"
    );
    ev.assert_quiet();
    let notice = recv(&mut notices).await;
    assert_eq!(notice.path.as_str(), "ign/a");
    assert_eq!(notice.action, ExitAction::Ignore);
    assert_eq!(
        notice.reason.error::<OverTemperature>().unwrap().celsius,
        90
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [(
            "a".to_string(),
            "ign/a".to_string(),
            Restart::Permanent,
            ExitClass::Failed
        )]
    );

    // Other children follow the strategy; the ignored one can be restarted by hand.
    exit_child(&sup, "b", Cmd::Fail).await;
    ev.expect(&["start b"]).await;
    assert_eq!(child(&sup, "a").await.state, ChildState::Terminated);
    sup.restart_child("a").await.unwrap();
    ev.expect(&["start a"]).await;
    sup.shutdown().await;
    forwarder.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_can_escalate_with_the_childs_typed_reason() {
    let (log, mut ev) = events();
    let sup = start(
        SupervisorConfig::new("esc", Strategy::OneForOne).hook(|e: &ChildExit<'_>| {
            if e.reason.error::<OverTemperature>().is_some() {
                HookDecision::escalate()
            } else {
                HookDecision::restart()
            }
        }),
        vec![worker("a", &log), worker("b", &log)],
    )
    .await;
    let (watcher, mut exits) = watch(&sup).await;
    ev.expect(&["start a", "start b"]).await;

    // An untyped failure is restarted as usual.
    exit_child(&sup, "a", Cmd::Fail).await;
    ev.expect(&["start a"]).await;

    // A typed fault escalates: the other children stop, the supervisor fails.
    let sup_cell = sup.cell();
    exit_child(&sup, "a", Cmd::Overheat(120)).await;
    ended(&sup_cell).await;
    ev.expect(&["stop b"]).await;
    let reason = recv(&mut exits).await;
    match reason.error::<SupervisorError>() {
        Some(SupervisorError::Escalated {
            path,
            child,
            reason,
        }) => {
            assert_eq!(path.as_str(), "esc");
            assert_eq!(child, "a");
            assert_eq!(reason.error::<OverTemperature>().unwrap().celsius, 120);
        }
        other => panic!("expected Escalated, got {other:?}"),
    }
    ev.assert_quiet();
    watcher.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_can_notify_and_restart() {
    let (log, mut ev) = events();
    let (tx, mut notices) = mpsc::unbounded_channel::<ChildExitNotice>();
    let notifier = Notifier::function(move |n| {
        let _ = tx.send(n);
    });
    let sup = start(
        config("note", Strategy::OneForOne)
            .hook(move |_| HookDecision::restart().notify(notifier.clone())),
        vec![
            worker("a", &log),
            worker("t", &log).restart(Restart::Transient),
        ],
    )
    .await;
    ev.expect(&["start a", "start t"]).await;

    let old = exit_child(&sup, "a", Cmd::Overheat(80)).await;
    let notice = recv(&mut notices).await;
    assert_eq!(notice.path.as_str(), "note/a");
    assert_eq!(notice.action, ExitAction::Restart);
    assert_eq!(
        notice.reason.error::<OverTemperature>().unwrap().celsius,
        80
    );
    ev.expect(&["start a"]).await;
    assert_ne!(cell(&sup, "a").await.get_id(), old);

    kill_child(&sup, "a").await;
    assert_eq!(recv(&mut notices).await.reason.class(), ExitClass::Killed);
    ev.expect(&["start a"]).await;

    // Restart means "follow the restart type": a transient child's normal exit is notified
    // and not restarted.
    exit_child(&sup, "t", Cmd::Stop).await;
    let notice = recv(&mut notices).await;
    assert_eq!(notice.path.as_str(), "note/t");
    assert_eq!(notice.reason.class(), ExitClass::Normal);
    ev.expect(&["stop t"]).await;
    assert_eq!(child(&sup, "t").await.state, ChildState::Terminated);
    ev.assert_quiet();
    sup.shutdown().await;
    assert!(notices.try_recv().is_err(), "no notices for a shutdown");
}

// ---------------------------------------------------------------------------------------------
// Backoff
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn backoff_delays_restarts_exponentially_and_resets_after_uptime() {
    let (log, mut ev) = events();
    let second = Duration::from_secs(1);
    let sup = start(
        config("bo", Strategy::OneForOne),
        vec![
            worker("b", &log).backoff(exponential(second, Duration::from_secs(10))),
            worker("other", &log),
        ],
    )
    .await;
    ev.expect(&["start b", "start other"]).await;

    for (n, delay) in [(1, second), (2, 2 * second), (3, 4 * second)] {
        let t0 = Instant::now();
        let old = exit_child(&sup, "b", Cmd::Fail).await;
        let b = child(&sup, "b").await;
        assert_eq!(b.state, ChildState::Restarting);
        assert!(b.actor.is_none());
        assert_eq!(b.restarts, n);
        let counts = sup.count_children().await.unwrap();
        assert_eq!((counts.specs, counts.active), (2, 1));

        // Not before the delay...
        tokio::time::advance(delay - Duration::from_millis(1)).await;
        assert_eq!(child(&sup, "b").await.state, ChildState::Restarting);
        ev.assert_quiet();
        // ... and right after it.
        ev.expect(&["start b"]).await;
        assert_eq!(t0.elapsed(), delay, "restart {n}");
        let b = child(&sup, "b").await;
        assert_eq!(b.state, ChildState::Running);
        assert_ne!(b.actor.unwrap().get_id(), old);
    }

    // Up for `reset_after` (here max = 10 s): the next delay is the initial one again.
    tokio::time::advance(Duration::from_secs(10)).await;
    let t0 = Instant::now();
    exit_child(&sup, "b", Cmd::Fail).await;
    ev.expect(&["start b"]).await;
    assert_eq!(t0.elapsed(), second);

    // terminate_child during the backoff cancels the scheduled restart.
    exit_child(&sup, "b", Cmd::Fail).await;
    assert_eq!(child(&sup, "b").await.state, ChildState::Restarting);
    sup.terminate_child("b").await.unwrap();
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(child(&sup, "b").await.state, ChildState::Terminated);
    ev.assert_quiet();
    sup.restart_child("b").await.unwrap();
    ev.expect(&["start b"]).await;

    assert_eq!(child(&sup, "other").await.restarts, 0);
    sup.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Registry and metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_registry_resolves_paths_to_current_incarnations() {
    let (log, mut ev) = events();
    let prom = prometheus::Registry::new();
    let tree = TreeContext::with_metrics(&prom).unwrap();
    let reg = tree.registry.clone().expect("with_metrics has a registry");
    let sup = start(
        config("site", Strategy::OneForOne).tree(tree),
        vec![
            worker("w", &log).backoff(exponential(Duration::from_secs(1), Duration::from_secs(1))),
            Supervisor::child_spec(
                "bay",
                config("x", Strategy::OneForOne),
                vec![worker("s", &log)],
            ),
        ],
    )
    .await;
    ev.expect(&["start w", "start s"]).await;

    let w = cell(&sup, "w").await;
    assert_eq!(reg.lookup("site/w").unwrap().get_id(), w.get_id());
    let bay = SupervisorRef::from_cell(reg.lookup("site/bay").unwrap(), "site/bay".into()).unwrap();
    assert_eq!(
        reg.lookup("site/bay/s").unwrap().get_id(),
        cell(&bay, "s").await.get_id(),
        "nested supervisors share the registry"
    );
    reg.send("site/w", Cmd::Note("one".into())).unwrap();
    ev.expect(&[format!("note w one @{}", w.get_id())]).await;

    // Between an exit and the restart, the path is restarting and messages come back.
    exit_child(&sup, "w", Cmd::Fail).await;
    assert_eq!(
        reg.lookup("site/w").unwrap_err(),
        AddressError::Restarting("site/w".into())
    );
    let SendError { error, message } = reg.send("site/w", Cmd::Note("two".into())).unwrap_err();
    assert_eq!(error, AddressError::Restarting("site/w".into()));
    assert_eq!(
        message,
        Cmd::Note("two".into()),
        "the message is handed back"
    );

    // send_when_ready waits for the next incarnation and delivers to it.
    let r = reg.clone();
    let pending = tokio::spawn(async move {
        r.send_when_ready("site/w", Cmd::Note("three".into()), LIMIT)
            .await
    });
    ev.expect(&["start w"]).await;
    let note = ev.next().await;
    pending.await.unwrap().unwrap();
    let w2 = cell(&sup, "w").await;
    assert_ne!(w2.get_id(), w.get_id());
    assert_eq!(note, format!("note w three @{}", w2.get_id()));
    assert_eq!(reg.lookup("site/w").unwrap().get_id(), w2.get_id());

    // Unknown paths and wrong message types are errors, not silence.
    assert_eq!(
        reg.lookup("site/nope").unwrap_err(),
        AddressError::Unknown("site/nope".into())
    );
    let err = reg.send("site/nope", Cmd::Note("four".into())).unwrap_err();
    assert_eq!(err.error, AddressError::Unknown("site/nope".into()));
    assert_eq!(err.message, Cmd::Note("four".into()));
    assert_eq!(
        reg.resolve("site/nope", Duration::from_millis(100))
            .await
            .unwrap_err(),
        AddressError::TimedOut {
            path: "site/nope".into(),
            waited: Duration::from_millis(100)
        }
    );
    assert_eq!(
        reg.send("site/w", 5u64).unwrap_err().error,
        AddressError::WrongType("site/w".into())
    );

    // A terminated child is no longer addressable; restarted by hand, it is again.
    sup.terminate_child("w").await.unwrap();
    ev.expect(&["stop w"]).await;
    assert_eq!(
        reg.lookup("site/w").unwrap_err(),
        AddressError::Unknown("site/w".into())
    );
    let w3 = sup.restart_child("w").await.unwrap().cell;
    ev.expect(&["start w"]).await;
    assert_eq!(reg.lookup("site/w").unwrap().get_id(), w3.get_id());

    // Nothing stays registered after the tree is shut down.
    sup.shutdown().await;
    assert!(
        reg.paths_under(&"site".into()).is_empty(),
        "{:?}",
        reg.paths_under(&"site".into())
    );
    assert!(reg.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_starts_restarts_and_exits_by_reason() {
    let (log, mut ev) = events();
    let prom = prometheus::Registry::new();
    let sup = start(
        config("m", Strategy::OneForOne).tree(TreeContext::with_metrics(&prom).unwrap()),
        vec![worker("w", &log), worker("v", &log)],
    )
    .await;
    ev.expect(&["start w", "start v"]).await;
    let exits = |reason: &str| {
        metric(
            &prom,
            "gridvisor_actor_exits_total",
            &[("path", "m/w"), ("reason", reason)],
        )
    };
    let restarts = || metric(&prom, "gridvisor_actor_restarts_total", &[("path", "m/w")]);
    // A per-path series of restarts or exits appears with its first event.
    assert_eq!(restarts(), None);
    assert_eq!(
        metric(&prom, "gridvisor_actor_starts_total", &[("path", "m/w")]),
        Some(1.0)
    );

    exit_child(&sup, "w", Cmd::Fail).await;
    ev.expect(&["start w"]).await;
    assert_eq!(restarts(), Some(1.0));
    assert_eq!(exits("failed"), Some(1.0));
    assert_eq!(exits("killed"), None);
    assert_eq!(exits("normal"), None);
    assert_eq!(
        metric(&prom, "gridvisor_actor_starts_total", &[("path", "m/w")]),
        Some(2.0)
    );
    assert_eq!(
        metric(&prom, "gridvisor_actor_restarts_total", &[("path", "m/v")]),
        None,
        "the sibling's series is its own"
    );
    assert_eq!(
        metric(&prom, "gridvisor_supervisor_children", &[("path", "m")]),
        Some(2.0)
    );

    kill_child(&sup, "w").await;
    ev.expect(&["start w"]).await;
    exit_child(&sup, "w", Cmd::Stop).await;
    ev.expect(&["stop w", "start w"]).await;
    assert_eq!(restarts(), Some(3.0));
    assert_eq!(exits("failed"), Some(1.0));
    assert_eq!(exits("killed"), Some(1.0));
    assert_eq!(exits("normal"), Some(1.0));

    sup.terminate_child("v").await.unwrap();
    assert_eq!(
        metric(
            &prom,
            "gridvisor_actor_exits_total",
            &[("path", "m/v"), ("reason", "shutdown")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&prom, "gridvisor_supervisor_children", &[("path", "m")]),
        Some(1.0)
    );
    sup.shutdown().await;
}
