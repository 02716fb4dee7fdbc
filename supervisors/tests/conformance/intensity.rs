//! Restart intensity (OTP's `intensity` and `period`): a supervisor that restarts more than
//! `max_restarts` times within `period` stops its children and fails with
//! `ReachedMaxRestartIntensity`; a nested one escalates so to its parent, a top-level one
//! ends. The period is a sliding window that includes its end, the default is one restart in
//! five seconds, and failed restart attempts count too.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use gridvisor_supervisors::{
    ChildExitNotice, ChildKind, ChildState, ExitAction, ExitClass, HookDecision, Notifier,
    Strategy, Supervisor, SupervisorConfig, SupervisorError, SupervisorRef, TreeContext,
};
use tokio::sync::mpsc;

use crate::harness::*;

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
    assert!(
        notices.try_recv().is_err(),
        "one notice: the nested supervisor failed once"
    );
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
