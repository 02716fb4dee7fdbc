//! Conformance suite modelled on OTP's supervisor_SUITE: every strategy, restart type,
//! normal vs abnormal exit, intensity and escalation, start failure, shutdown order and
//! limits, nested supervisors, dynamic children, the OTP API, hooks, backoff, the registry
//! and metrics. Real ractor actors throughout; waits are on events, each with a limit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridvisor_supervisors::introspect::ChildState;
use gridvisor_supervisors::registry::AddressError;
use gridvisor_supervisors::{
    Backoff, ChildContext, ChildExitNotice, ChildKind, ChildSpec, ExitReason, HookDecision,
    Notifier, Restart, Shutdown, Strategy, Supervisor, SupervisorConfig, SupervisorError,
    SupervisorRef, TreeContext,
};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

/// Longest any test waits for an event that must come.
const LIMIT: Duration = Duration::from_secs(5);

type Events = mpsc::UnboundedSender<String>;

#[derive(Debug, thiserror::Error)]
#[error("over temperature")]
struct OverTemperature;

enum Probe {
    Crash,
    CrashTyped,
    Stop,
}

#[derive(Clone, Default)]
struct Behaviour {
    fail_start: bool,
    hang_in_stop: bool,
}

struct Worker;

struct WorkerState {
    name: String,
    events: Events,
    hang_in_stop: bool,
}

impl Actor for Worker {
    type Msg = Probe;
    type State = WorkerState;
    type Arguments = (String, Events, Behaviour);

    async fn pre_start(
        &self,
        _: ActorRef<Probe>,
        (name, events, b): Self::Arguments,
    ) -> Result<WorkerState, ActorProcessingErr> {
        if b.fail_start {
            let _ = events.send(format!("start-failed {name}"));
            return Err("refused to start".into());
        }
        let _ = events.send(format!("start {name}"));
        Ok(WorkerState {
            name,
            events,
            hang_in_stop: b.hang_in_stop,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<Probe>,
        msg: Probe,
        _: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Probe::Crash => return Err("crash".into()),
            Probe::CrashTyped => return Err(Box::new(OverTemperature)),
            Probe::Stop => me.stop(None),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Probe>,
        s: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        if s.hang_in_stop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let _ = s.events.send(format!("stop {}", s.name));
        Ok(())
    }
}

fn worker(id: &str, events: &Events) -> ChildSpec<()> {
    worker_with(id, events, Behaviour::default())
}

fn worker_with(id: &str, events: &Events, b: Behaviour) -> ChildSpec<()> {
    let events = events.clone();
    ChildSpec::worker(id, move |ctx: ChildContext, ()| {
        let args = (ctx.path().leaf().to_string(), events.clone(), b.clone());
        async move { ctx.spawn(Worker, args).await }
    })
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("an event within the limit")
        .expect("events open")
}

/// Collect events until `want` has been seen; returns all seen.
async fn until(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let e = next(rx).await;
        let done = e == want;
        seen.push(e);
        if done {
            return seen;
        }
    }
}

async fn ids(sup: &SupervisorRef) -> Vec<(String, Option<ActorId>)> {
    sup.which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.actor.map(|a| a.get_id())))
        .collect()
}

async fn cell(sup: &SupervisorRef, id: &str) -> ActorCell {
    sup.which_children()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
        .and_then(|c| c.actor)
        .expect("child running")
}

fn channel() -> (Events, mpsc::UnboundedReceiver<String>) {
    mpsc::unbounded_channel()
}

async fn three(strategy: Strategy) -> (SupervisorRef, mpsc::UnboundedReceiver<String>) {
    let (tx, mut rx) = channel();
    let sup = Supervisor::start(
        SupervisorConfig::new("s", strategy).intensity(10, Duration::from_secs(10)),
        vec![worker("a", &tx), worker("b", &tx), worker("c", &tx)],
    )
    .await
    .unwrap();
    until(&mut rx, "start c").await;
    (sup, rx)
}

/// Which children got a new incarnation between two snapshots.
fn changed(
    before: &[(String, Option<ActorId>)],
    after: &[(String, Option<ActorId>)],
) -> Vec<String> {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, _)| b.0.clone())
        .collect()
}

#[tokio::test]
async fn one_for_one_restarts_only_the_failed_child() {
    let (sup, mut rx) = three(Strategy::OneForOne).await;
    let before = ids(&sup).await;
    cell(&sup, "b").await.send_message(Probe::Crash).unwrap();
    assert_eq!(next(&mut rx).await, "start b");
    assert_eq!(changed(&before, &ids(&sup).await), vec!["b"]);
    sup.shutdown().await;
}

#[tokio::test]
async fn one_for_all_restarts_all_in_order_after_stopping_the_others_in_reverse() {
    let (sup, mut rx) = three(Strategy::OneForAll).await;
    let before = ids(&sup).await;
    cell(&sup, "b").await.send_message(Probe::Crash).unwrap();
    let seen = until(&mut rx, "start c").await;
    assert_eq!(
        seen,
        vec!["stop c", "stop a", "start a", "start b", "start c"]
    );
    assert_eq!(changed(&before, &ids(&sup).await), vec!["a", "b", "c"]);
    sup.shutdown().await;
}

#[tokio::test]
async fn rest_for_one_restarts_the_failed_child_and_those_after_it() {
    let (sup, mut rx) = three(Strategy::RestForOne).await;
    let before = ids(&sup).await;
    cell(&sup, "b").await.send_message(Probe::Crash).unwrap();
    let seen = until(&mut rx, "start c").await;
    assert_eq!(seen, vec!["stop c", "start b", "start c"]);
    assert_eq!(changed(&before, &ids(&sup).await), vec!["b", "c"]);
    sup.shutdown().await;
}

#[tokio::test]
async fn restart_types_follow_normal_and_abnormal_exits() {
    let (tx, mut rx) = channel();
    let sup = Supervisor::start(
        SupervisorConfig::new("s", Strategy::OneForOne).intensity(10, Duration::from_secs(10)),
        vec![
            worker("perm", &tx),
            worker("trans", &tx).restart(Restart::Transient),
            worker("temp", &tx).restart(Restart::Temporary),
        ],
    )
    .await
    .unwrap();
    until(&mut rx, "start temp").await;

    // Permanent: restarted even after a normal exit.
    let c = cell(&sup, "perm").await;
    c.send_message(Probe::Stop).unwrap();
    assert_eq!(
        until(&mut rx, "start perm").await,
        vec!["stop perm", "start perm"]
    );

    // Transient: restarted after a failure or a kill, not after a normal exit.
    cell(&sup, "trans")
        .await
        .send_message(Probe::Crash)
        .unwrap();
    assert_eq!(next(&mut rx).await, "start trans");
    cell(&sup, "trans").await.kill();
    assert_eq!(next(&mut rx).await, "start trans");
    let c = cell(&sup, "trans").await;
    c.send_message(Probe::Stop).unwrap();
    assert_eq!(next(&mut rx).await, "stop trans");
    c.wait(Some(LIMIT)).await.unwrap();
    let info = sup.which_children().await.unwrap();
    let trans = info
        .iter()
        .find(|c| c.id == "trans")
        .expect("a transient child stays listed");
    assert_eq!(trans.state, ChildState::Terminated);
    assert_eq!(trans.restarts, 2);

    // Temporary: never restarted, and forgotten.
    let c = cell(&sup, "temp").await;
    c.send_message(Probe::Crash).unwrap();
    c.wait(Some(LIMIT)).await.unwrap();
    let counts = sup.count_children().await.unwrap();
    assert_eq!((counts.specs, counts.active), (2, 1));
    sup.shutdown().await;
    assert!(
        rx.try_recv().map(|e| e != "start temp").unwrap_or(true),
        "temporary child was restarted"
    );
}

#[tokio::test]
async fn default_intensity_one_in_five_seconds_stops_the_supervisor() {
    let (tx, mut rx) = channel();
    let sup = Supervisor::start(
        SupervisorConfig::new("s", Strategy::OneForOne),
        vec![worker("a", &tx), worker("b", &tx)],
    )
    .await
    .unwrap();
    until(&mut rx, "start b").await;
    cell(&sup, "a").await.send_message(Probe::Crash).unwrap();
    assert_eq!(next(&mut rx).await, "start a");
    cell(&sup, "a").await.send_message(Probe::Crash).unwrap();
    // Second restart within 5 s: the supervisor stops its other children and fails.
    assert_eq!(next(&mut rx).await, "stop b");
    sup.cell()
        .wait(Some(LIMIT))
        .await
        .expect("the supervisor stopped");
}

#[tokio::test]
async fn intensity_reached_in_a_nested_supervisor_escalates_to_its_parent() {
    let (tx, mut rx) = channel();
    let notices: Arc<Mutex<Vec<ChildExitNotice>>> = Arc::default();
    let seen = notices.clone();
    let inner = Supervisor::child_spec(
        "inner",
        SupervisorConfig::new("inner", Strategy::OneForOne).intensity(1, Duration::from_secs(60)),
        vec![worker("w", &tx)],
    );
    let sup = Supervisor::start(
        SupervisorConfig::new("outer", Strategy::OneForOne)
            .intensity(5, Duration::from_secs(60))
            .hook(move |_| {
                HookDecision::restart().notify(Notifier::function({
                    let seen = seen.clone();
                    move |n| seen.lock().unwrap().push(n)
                }))
            }),
        vec![inner],
    )
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await, "start w");
    let inner_sup =
        SupervisorRef::from_cell(cell(&sup, "inner").await, "outer/inner".into()).unwrap();
    cell(&inner_sup, "w")
        .await
        .send_message(Probe::Crash)
        .unwrap();
    assert_eq!(next(&mut rx).await, "start w");
    cell(&inner_sup, "w")
        .await
        .send_message(Probe::Crash)
        .unwrap();
    // The inner supervisor gives up; the outer one restarts it (and with it, w).
    assert_eq!(next(&mut rx).await, "start w");
    let notices = notices.lock().unwrap().clone();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].path.as_str(), "outer/inner");
    match notices[0].reason.error::<SupervisorError>() {
        Some(SupervisorError::ReachedMaxRestartIntensity {
            path,
            max_restarts,
            child,
            ..
        }) => {
            assert_eq!(
                (path.as_str(), *max_restarts, child.as_str()),
                ("outer/inner", 1, "w")
            );
        }
        other => panic!(
            "expected ReachedMaxRestartIntensity, got {other:?} ({})",
            notices[0].reason
        ),
    }
    sup.shutdown().await;
}

#[tokio::test]
async fn a_child_that_fails_to_start_fails_the_start_and_stops_the_others_in_reverse() {
    let (tx, mut rx) = channel();
    let r = Supervisor::start(
        SupervisorConfig::new("s", Strategy::OneForOne),
        vec![
            worker("a", &tx),
            worker("b", &tx),
            worker_with(
                "c",
                &tx,
                Behaviour {
                    fail_start: true,
                    ..Default::default()
                },
            ),
        ],
    )
    .await;
    match r {
        Err(SupervisorError::StartFailed { child, .. }) => assert_eq!(child, "c"),
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert_eq!(
        until(&mut rx, "stop a").await,
        vec!["start a", "start b", "start-failed c", "stop b", "stop a"]
    );
}

#[tokio::test]
async fn children_stop_in_reverse_start_order() {
    let (sup, mut rx) = three(Strategy::OneForOne).await;
    sup.shutdown().await;
    assert_eq!(
        until(&mut rx, "stop a").await,
        vec!["stop c", "stop b", "stop a"]
    );
}

#[tokio::test]
async fn a_child_past_its_shutdown_limit_is_killed_and_brutal_kill_runs_no_cleanup() {
    let (tx, mut rx) = channel();
    let sup = Supervisor::start(
        SupervisorConfig::new("s", Strategy::OneForOne),
        vec![
            worker("first", &tx),
            worker_with(
                "hangs",
                &tx,
                Behaviour {
                    hang_in_stop: true,
                    ..Default::default()
                },
            )
            .shutdown(Shutdown::Timeout(Duration::from_millis(50))),
            worker("brutal", &tx).shutdown(Shutdown::Brutal),
        ],
    )
    .await
    .unwrap();
    until(&mut rx, "start brutal").await;
    let hangs = cell(&sup, "hangs").await;
    tokio::time::timeout(LIMIT, sup.shutdown())
        .await
        .expect("shutdown completes despite a hanging child");
    assert_eq!(hangs.get_status(), ractor::ActorStatus::Stopped);
    // brutal: no "stop brutal"; hangs: killed inside post_stop, so no "stop hangs" either.
    assert_eq!(until(&mut rx, "stop first").await, vec!["stop first"]);
}

#[tokio::test]
async fn the_tree_shows_nested_supervisors_with_their_strategies() {
    let (tx, mut rx) = channel();
    let dynamic = Supervisor::dynamic_child_spec(
        "sessions",
        SupervisorConfig::new("sessions", Strategy::SimpleOneForOne),
        ChildSpec::worker("session", {
            let tx = tx.clone();
            move |ctx: ChildContext, n: u32| {
                let args = (format!("session {n}"), tx.clone(), Behaviour::default());
                async move { ctx.spawn(Worker, args).await }
            }
        }),
    );
    let sup = Supervisor::start(
        SupervisorConfig::new("site", Strategy::OneForOne),
        vec![
            worker("telemetry", &tx),
            Supervisor::child_spec(
                "tx-17",
                SupervisorConfig::new("tx-17", Strategy::RestForOne),
                vec![worker("safety", &tx), worker("meter", &tx)],
            ),
            dynamic,
        ],
    )
    .await
    .unwrap();
    until(&mut rx, "start meter").await;
    let tree = sup.tree().await.unwrap();
    assert_eq!(tree.size(), 6);
    let tx17 = tree.find("site/tx-17").expect("segment node");
    assert_eq!(
        (tx17.kind, tx17.strategy.as_deref()),
        (ChildKind::Supervisor, Some("rest_for_one"))
    );
    assert_eq!(
        tx17.children
            .iter()
            .map(|c| c.path.as_str())
            .collect::<Vec<_>>(),
        ["site/tx-17/safety", "site/tx-17/meter"]
    );
    assert_eq!(
        tree.find("site/sessions").unwrap().strategy.as_deref(),
        Some("simple_one_for_one")
    );
    let json = serde_json::to_value(&tree).unwrap();
    assert_eq!(
        json["children"][1]["children"][0]["path"],
        "site/tx-17/safety"
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn dynamic_children_are_restarted_with_their_arguments() {
    let (tx, mut rx) = channel();
    let spec = ChildSpec::worker("session", {
        let tx = tx.clone();
        move |ctx: ChildContext, vehicle: String| {
            let args = (
                format!("{} {vehicle}", ctx.path().leaf()),
                tx.clone(),
                Behaviour::default(),
            );
            async move { ctx.spawn(Worker, args).await }
        }
    });
    let sup = Supervisor::start_dynamic(
        SupervisorConfig::new("d", Strategy::SimpleOneForOne).intensity(5, Duration::from_secs(5)),
        spec,
    )
    .await
    .unwrap();
    let a = sup.start_child("EV-1".to_string()).await.unwrap();
    let b = sup.start_child("EV-2".to_string()).await.unwrap();
    assert_eq!((a.id.as_str(), b.id.as_str()), ("session-1", "session-2"));
    assert_eq!(until(&mut rx, "start session-2 EV-2").await.len(), 2);
    b.cell.send_message(Probe::Crash).unwrap();
    assert_eq!(next(&mut rx).await, "start session-2 EV-2");
    // Arguments of the wrong type are refused, not mis-cast.
    let wrong =
        gridvisor_supervisors::DynamicSupervisorRef::<u64>::from_cell(sup.cell(), "d".into())
            .unwrap();
    assert!(matches!(
        wrong.start_child(7).await,
        Err(SupervisorError::BadRequest { .. })
    ));
    // A dynamic child that ends normally (permanent: restarted) vs terminate_child (removed).
    sup.terminate_child("session-1").await.unwrap();
    assert_eq!(sup.count_children().await.unwrap().specs, 1);
    sup.shutdown().await;
}

#[tokio::test]
async fn terminate_restart_delete_and_counts_follow_otp() {
    let (sup, mut rx) = three(Strategy::OneForOne).await;
    assert!(matches!(
        sup.restart_child("b").await,
        Err(SupervisorError::Running { .. })
    ));
    assert!(matches!(
        sup.delete_child("b").await,
        Err(SupervisorError::Running { .. })
    ));
    sup.terminate_child("b").await.unwrap();
    assert_eq!(next(&mut rx).await, "stop b");
    let counts = sup.count_children().await.unwrap();
    assert_eq!(
        (
            counts.specs,
            counts.active,
            counts.workers,
            counts.supervisors
        ),
        (3, 2, 3, 0)
    );
    sup.restart_child("b").await.unwrap();
    assert_eq!(next(&mut rx).await, "start b");
    sup.terminate_child("b").await.unwrap();
    sup.delete_child("b").await.unwrap();
    assert_eq!(
        ids(&sup)
            .await
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert!(matches!(
        sup.terminate_child("nope").await,
        Err(SupervisorError::UnknownChild { .. })
    ));
    let (tx2, _rx2) = channel();
    assert!(matches!(
        sup.start_child(worker("a", &tx2)).await,
        Err(SupervisorError::AlreadyPresent { .. })
    ));
    sup.start_child(worker("d", &tx2)).await.unwrap();
    assert_eq!(
        ids(&sup)
            .await
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>(),
        ["a", "c", "d"]
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn hooks_can_ignore_or_escalate_with_the_typed_reason() {
    let (tx, mut rx) = channel();
    let sup = Supervisor::start(
        SupervisorConfig::new("seg", Strategy::OneForOne)
            .intensity(10, Duration::from_secs(10))
            .hook(|exit| {
                if exit.reason.error::<OverTemperature>().is_some() {
                    HookDecision::escalate()
                } else if exit.id == "ignored" {
                    HookDecision::ignore()
                } else {
                    HookDecision::restart()
                }
            }),
        vec![worker("ignored", &tx), worker("inverter", &tx)],
    )
    .await
    .unwrap();
    until(&mut rx, "start inverter").await;
    let c = cell(&sup, "ignored").await;
    c.send_message(Probe::Crash).unwrap();
    c.wait(Some(LIMIT)).await.unwrap();
    let info = sup.which_children().await.unwrap();
    assert_eq!(info[0].state, ChildState::Terminated, "ignored: left down");
    assert_eq!(info[0].last_exit.as_deref(), Some("failed: crash"));

    // Escalate: the supervisor fails with Escalated carrying the child's typed error.
    let (parent_tx, mut parent_rx) = mpsc::unbounded_channel::<ExitReason>();
    struct Watcher;
    impl Actor for Watcher {
        type Msg = ();
        type State = mpsc::UnboundedSender<ExitReason>;
        type Arguments = mpsc::UnboundedSender<ExitReason>;
        async fn pre_start(
            &self,
            _: ActorRef<()>,
            a: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(a)
        }
        async fn handle_supervisor_evt(
            &self,
            _: ActorRef<()>,
            e: ractor::SupervisionEvent,
            s: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if let Some((_, r)) = ExitReason::from_event(e) {
                let _ = s.send(r);
            }
            Ok(())
        }
    }
    let (watcher, _) = Actor::spawn(None, Watcher, parent_tx).await.unwrap();
    sup.cell().link(watcher.get_cell());
    cell(&sup, "inverter")
        .await
        .send_message(Probe::CrashTyped)
        .unwrap();
    let reason = tokio::time::timeout(LIMIT, parent_rx.recv())
        .await
        .unwrap()
        .unwrap();
    match reason.error::<SupervisorError>() {
        Some(SupervisorError::Escalated { child, reason, .. }) => {
            assert_eq!(child, "inverter");
            assert!(
                reason.error::<OverTemperature>().is_some(),
                "the typed fault survives escalation"
            );
        }
        other => panic!("expected Escalated, got {other:?}"),
    }
    watcher.stop(None);
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_the_restart_and_the_registry_says_restarting() {
    let (tx, mut rx) = channel();
    let prom = prometheus::Registry::new();
    let tree = TreeContext::with_metrics(&prom).unwrap();
    let registry = tree.registry.clone().unwrap();
    let sup = Supervisor::start(
        SupervisorConfig::new("s", Strategy::OneForOne)
            .intensity(10, Duration::from_secs(60))
            .tree(tree),
        vec![worker("modem", &tx).backoff(
            Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30)).with_jitter(0.0),
        )],
    )
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await, "start modem");
    let first = registry.lookup("s/modem").unwrap();
    first.send_message(Probe::Crash).unwrap();
    first.wait(Some(LIMIT)).await.unwrap();
    let info = sup.which_children().await.unwrap();
    assert_eq!(info[0].state, ChildState::Restarting);
    // A send during the restart is handed back, with the reason.
    let err = registry.send("s/modem", Probe::Crash).unwrap_err();
    assert_eq!(err.error, AddressError::Restarting("s/modem".into()));
    assert!(matches!(err.message, Probe::Crash));
    // Not before the delay...
    tokio::time::advance(Duration::from_millis(900)).await;
    assert!(rx.try_recv().is_err(), "restarted before its backoff");
    // ...and a send that waits is delivered to the next incarnation.
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel::<()>();
    let r2 = registry.clone();
    let waiter = tokio::spawn(async move {
        let res = r2
            .send_when_ready("s/modem", Probe::Stop, Duration::from_secs(10))
            .await;
        let _ = reply_tx.send(());
        res.map_err(|e| e.error)
    });
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_eq!(next(&mut rx).await, "start modem");
    let _ = reply_rx.await;
    waiter
        .await
        .unwrap()
        .expect("delivered to the new incarnation");
    // The Stop it delivered ends the new incarnation normally; permanent, so it restarts after
    // the next (doubled) delay.
    assert_eq!(next(&mut rx).await, "stop modem");
    tokio::time::advance(Duration::from_millis(2100)).await;
    assert_eq!(next(&mut rx).await, "start modem");
    assert!(matches!(
        registry.lookup("nowhere"),
        Err(AddressError::Unknown(_))
    ));
    sup.shutdown().await;
    assert!(registry.is_empty());
}

#[tokio::test]
async fn metrics_count_starts_restarts_and_exits_by_reason() {
    let (tx, mut rx) = channel();
    let prom = prometheus::Registry::new();
    let sup = Supervisor::start(
        SupervisorConfig::new("m", Strategy::OneForOne)
            .intensity(10, Duration::from_secs(10))
            .tree(TreeContext::with_metrics(&prom).unwrap()),
        vec![worker("a", &tx)],
    )
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await, "start a");
    cell(&sup, "a").await.send_message(Probe::Crash).unwrap();
    assert_eq!(next(&mut rx).await, "start a");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        prom.gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().to_vec())
            .find(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| {
                if m.get_counter().get_value() != 0.0 {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                }
            })
            .unwrap_or(f64::NAN)
    };
    assert_eq!(
        value("gridvisor_actor_restarts_total", &[("path", "m/a")]),
        1.0
    );
    assert_eq!(
        value("gridvisor_actor_starts_total", &[("path", "m/a")]),
        2.0
    );
    assert_eq!(
        value(
            "gridvisor_actor_exits_total",
            &[("path", "m/a"), ("reason", "failed")]
        ),
        1.0
    );
    assert_eq!(
        value("gridvisor_supervisor_children", &[("path", "m")]),
        1.0
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn a_panicking_start_function_is_a_failed_start_not_a_dead_supervisor() {
    let (tx, mut rx) = channel();
    let sup = Supervisor::start(
        SupervisorConfig::new("p", Strategy::OneForOne),
        vec![worker("a", &tx)],
    )
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await, "start a");
    let bad = ChildSpec::worker("bad", |_ctx: ChildContext, ()| async move {
        if true {
            panic!("wiring bug");
        }
        Err(gridvisor_supervisors::StartError::NotLinked)
    });
    match sup.start_child(bad).await {
        Err(SupervisorError::StartFailed { child, error, .. }) => {
            assert_eq!(child, "bad");
            assert!(
                error
                    .to_string()
                    .contains("start function panicked: wiring bug"),
                "{error}"
            );
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert_eq!(
        sup.count_children().await.unwrap().active,
        1,
        "the supervisor lives on"
    );
    sup.shutdown().await;
}
