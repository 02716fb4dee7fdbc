//! The OTP supervisor API and introspection: `start_child`, `terminate_child`,
//! `restart_child`, `delete_child`, `which_children` and `count_children` with OTP's
//! answers and errors, and the tree of nested supervisors with their strategies (rendered and
//! as JSON).

use gridvisor_supervisors::{
    ChildContext, ChildKind, ChildSpec, ChildState, Restart, StartError, Strategy, Supervisor,
    SupervisorError, SupervisorRef,
};

use crate::harness::*;

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
    assert_eq!(
        tree.find("plant/feeders")
            .unwrap()
            .children
            .iter()
            .map(|c| c.path.as_str())
            .collect::<Vec<_>>(),
        ["plant/feeders/f1", "plant/feeders/deep"],
        "a nested supervisor's children in start order"
    );
    let json = serde_json::to_value(&tree).unwrap();
    assert_eq!(json["children"][1]["strategy"], "rest_for_one");
    assert_eq!(json["children"][1]["kind"], "supervisor");
    assert_eq!(
        json["children"][1]["children"][0]["path"],
        "plant/feeders/f1"
    );

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
    let counts = sup.count_children().await.unwrap();
    assert_eq!(
        (
            counts.specs,
            counts.active,
            counts.workers,
            counts.supervisors
        ),
        (3, 2, 3, 0),
        "a terminated child is counted, not active"
    );
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
    let ids: Vec<String> = children(&sup).await.into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["b", "t"]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_start_function_is_a_failed_start_not_a_dead_supervisor() {
    let (log, mut ev) = events();
    let sup = start(config("p", Strategy::OneForOne), vec![worker("a", &log)]).await;
    ev.expect(&["start a"]).await;
    let bad = ChildSpec::worker("bad", |_ctx: ChildContext, ()| async move {
        if true {
            panic!("wiring bug");
        }
        Err(StartError::NotLinked)
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
    let ids: Vec<String> = children(&sup).await.into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["a"], "the failed start leaves nothing behind");
    ev.assert_quiet();
    sup.shutdown().await;
}
