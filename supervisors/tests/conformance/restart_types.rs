//! Restart types (OTP's `permanent`, `transient` and `temporary`) against normal and
//! abnormal exits: a permanent child is restarted after any exit, a transient one only after
//! an abnormal exit (an error, a panic, a kill), a temporary one never, and it is forgotten.
//! Dynamic children follow the same rules and are deleted when they will not be restarted.

use gridvisor_supervisors::{ChildState, Restart, Strategy, Supervisor};

use crate::harness::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_restart_types_side_by_side_each_follow_their_own_rule() {
    let (log, mut ev) = events();
    let sup = start(
        config("types", Strategy::OneForOne),
        vec![
            worker("perm", &log),
            worker("trans", &log).restart(Restart::Transient),
            worker("temp", &log).restart(Restart::Temporary),
        ],
    )
    .await;
    ev.expect(&["start perm", "start trans", "start temp"])
        .await;

    // Permanent: restarted even after a normal exit.
    exit_child(&sup, "perm", Cmd::Stop).await;
    ev.expect(&["stop perm", "start perm"]).await;

    // Transient: restarted after a failure or a kill, not after a normal exit.
    exit_child(&sup, "trans", Cmd::Fail).await;
    ev.expect(&["start trans"]).await;
    kill_child(&sup, "trans").await;
    ev.expect(&["start trans"]).await;
    exit_child(&sup, "trans", Cmd::Stop).await;
    ev.expect(&["stop trans"]).await;
    let trans = child(&sup, "trans").await; // a transient child stays listed
    assert_eq!(trans.state, ChildState::Terminated);
    assert_eq!(trans.restarts, 2);

    // Temporary: never restarted, and forgotten.
    exit_child(&sup, "temp", Cmd::Fail).await;
    let counts = sup.count_children().await.unwrap();
    assert_eq!((counts.specs, counts.active), (2, 1));
    ev.assert_quiet(); // the temporary child was not restarted
    sup.shutdown().await;
    ev.expect(&["stop perm"]).await;
    ev.assert_quiet();
}
