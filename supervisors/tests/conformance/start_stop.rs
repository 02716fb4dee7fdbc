//! Starting and stopping (OTP's start order, start failures and `shutdown`): children start
//! in order and stop in reverse order, through nested supervisors; a child that fails to
//! start fails the supervisor's start and stops those already started; a child past its
//! shutdown limit is killed, a `brutal_kill` child is killed at once, and dynamic children
//! stop in parallel.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridvisor_supervisors::{
    ChildContext, ChildSpec, ChildState, Shutdown, StartError, Strategy, Supervisor,
    SupervisorError,
};
use ractor::{Actor, ActorCell};
use tokio::time::Instant;

use crate::harness::*;

/// A start function that panics.
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

#[tokio::test(start_paused = true)]
async fn a_hanging_child_and_a_brutal_one_do_not_hold_up_the_supervisors_shutdown() {
    let (log, mut ev) = events();
    let limit = Duration::from_millis(50);
    let sup = start(
        config("mixed", Strategy::OneForOne),
        vec![
            worker("first", &log),
            worker_with("hangs", &log, Behaviour::hanging()).shutdown(Shutdown::Timeout(limit)),
            worker("brutal", &log).shutdown(Shutdown::Brutal),
        ],
    )
    .await;
    ev.expect(&["start first", "start hangs", "start brutal"])
        .await;
    let hangs = cell(&sup, "hangs").await;
    let brutal = cell(&sup, "brutal").await;

    let t0 = Instant::now();
    tokio::time::timeout(LIMIT, sup.shutdown())
        .await
        .expect("shutdown completes despite a hanging child");
    assert_eq!(t0.elapsed(), limit, "the brutal kill costs no time");
    assert_eq!(hangs.get_status(), ractor::ActorStatus::Stopped);
    assert_eq!(brutal.get_status(), ractor::ActorStatus::Stopped);
    // brutal: no "stop brutal"; hangs: killed inside post_stop, so no "stop hangs" either.
    ev.expect(&["hang hangs", "stop first"]).await;
    ev.assert_quiet();
}
