//! Escalation hooks (beyond OTP: a per-supervisor function that sees each child exit with
//! its typed reason and decides): restart (follow the restart type), ignore (leave the child
//! down) or escalate (stop the others and fail with `Escalated`, carrying the child's
//! reason), optionally notifying an actor or a function.

use std::sync::{Arc, Mutex};

use gridvisor_supervisors::{
    ChildExit, ChildExitNotice, ChildState, ExitAction, ExitClass, HookDecision, Notifier, Restart,
    Strategy, SupervisorConfig, SupervisorError,
};
use ractor::Actor;
use tokio::sync::mpsc;

use crate::harness::*;

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
async fn a_hook_can_ignore_or_escalate_with_the_childs_typed_reason() {
    let (log, mut ev) = events();
    let sup = start(
        SupervisorConfig::new("esc", Strategy::OneForOne).hook(|e: &ChildExit<'_>| {
            if e.reason.error::<OverTemperature>().is_some() {
                HookDecision::escalate()
            } else if e.id == "ignored" {
                HookDecision::ignore()
            } else {
                HookDecision::restart()
            }
        }),
        vec![
            worker("ignored", &log),
            worker("a", &log),
            worker("b", &log),
        ],
    )
    .await;
    let (watcher, mut exits) = watch(&sup).await;
    ev.expect(&["start ignored", "start a", "start b"]).await;

    // Ignored: left down, with its exit reason.
    exit_child(&sup, "ignored", Cmd::Fail).await;
    let ignored = child(&sup, "ignored").await;
    assert_eq!(ignored.state, ChildState::Terminated, "ignored: left down");
    assert_eq!(ignored.last_exit.as_deref(), Some("failed: ignored failed"));

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
