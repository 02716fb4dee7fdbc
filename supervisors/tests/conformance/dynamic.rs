//! Dynamic children (OTP's `simple_one_for_one` children, started with
//! `supervisor:start_child/2`): each has a unique id, generated or given, keeps the arguments
//! it was started with across restarts, and arguments of the wrong type are refused.

use gridvisor_supervisors::{DynamicSupervisorRef, Strategy, Supervisor, SupervisorError};

use crate::harness::*;

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
    let third = sup.start_child(9).await.unwrap();
    assert_eq!(third.id, "conn-2", "generated ids count on");
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

    // Arguments of the wrong type are refused, not mis-cast.
    let wrong = DynamicSupervisorRef::<u64>::from_cell(sup.cell(), "args".into()).unwrap();
    assert!(matches!(
        wrong.start_child(7).await,
        Err(SupervisorError::BadRequest { .. })
    ));
    // terminate_child removes a dynamic child: it is not restarted, and not kept.
    sup.terminate_child("conn-1").await.unwrap();
    ev.expect(&["stop conn-1"]).await;
    assert_eq!(sup.count_children().await.unwrap().specs, 2);
    ev.assert_quiet();
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
