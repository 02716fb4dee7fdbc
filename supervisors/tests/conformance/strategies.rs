//! Restart strategies (OTP's `one_for_one`, `one_for_all`, `rest_for_one` and
//! `simple_one_for_one`): which children a supervisor stops and restarts when one exits, and
//! in which order. A group restart stops the others in reverse start order, then starts the
//! group in start order.

use gridvisor_supervisors::{ChildState, Restart, Strategy, Supervisor};

use crate::harness::*;

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

    // An error (not only a panic) restarts the same way, from the exited child on.
    let before = after;
    exit_child(&sup, "c", Cmd::Fail).await;
    ev.expect(&["stop d", "start c", "start d"]).await;
    let after = incarnations(&sup).await;
    assert_eq!(renewed(&before, &after), ["c", "d"]);

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
