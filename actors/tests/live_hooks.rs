//! What the live view reads from a running node: `Node::kill` (by path, through the
//! registry), the supervisor reports a kill produces, the safe-state event log read with a
//! cursor (`Node::events_since`), and a subtree asked of its supervisor (`Node::subtree`).

use crate::common;

use common::*;
use gridvisor_actors::ladder::{Fault, SafeState};
use gridvisor_actors::runtime::{EventCursor, KillError};
use gridvisor_supervisors::report::Received;
use gridvisor_supervisors::{ExitClass, ReportEvent, SupervisorReport};

/// The next report about `path` (others are skipped), within [`LIMIT`].
async fn next_about(
    sub: &mut gridvisor_supervisors::ReportSubscriber,
    path: &str,
) -> SupervisorReport {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, sub.recv()).await {
            Ok(Some(Received::Report(r))) if r.path.as_str() == path => return r,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("report channel closed"),
            Err(_) => panic!("no report about {path} within {LIMIT:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_by_path_is_reported_and_restarted() {
    let t = start(&site_toml(2, 2, "", "")).await;
    let path = "node/segments/tx-1/safety";
    let mut sub = t.node.reports().subscribe();

    let killed = t.node.kill(path).unwrap();
    assert_eq!(killed.path, path);
    let exited = next_about(&mut sub, path).await;
    assert_eq!(exited.supervisor.as_str(), "node/segments/tx-1");
    assert!(
        matches!(
            exited.event,
            ReportEvent::Exited {
                class: ExitClass::Killed,
                ..
            }
        ),
        "{exited:?}"
    );
    assert_eq!(
        next_about(&mut sub, path).await.event,
        ReportEvent::Restarted { restarts: 1 }
    );
    // The new incarnation runs, with a higher number; killing it again works.
    wait(&t.node, "the safety actor back", || {
        t.node.registry().lookup(path).is_ok()
    })
    .await;
    assert!(t.node.kill(path).unwrap().incarnation > killed.incarnation);

    // What cannot be killed says why.
    assert_eq!(
        t.node.kill("node/segments/tx-9/safety").unwrap_err(),
        KillError::Unknown("node/segments/tx-9/safety".into())
    );
    assert!(matches!(t.node.kill("node"), Err(KillError::Root(_))));
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_is_read_once_with_a_cursor() {
    let t = start(&site_toml(2, 1, "", "")).await;
    let mut cursor = EventCursor::default();
    t.node.events_since(&mut cursor, 64);
    assert_eq!(t.node.events_since(&mut cursor, 64).len(), 0, "nothing new");

    // Two transitions; each segment's safety actor records its own (asynchronously).
    for seg in ["tx-0", "tx-1"] {
        t.node
            .observe(seg, Fault::Quorum(false))
            .expect("a transition");
    }
    let mut new = Vec::new();
    let started = std::time::Instant::now();
    while new.len() < 2 {
        new.extend(t.node.events_since(&mut cursor, 64));
        assert!(started.elapsed() < LIMIT, "{new:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(new.len(), 2, "{new:?}");
    let mut segments: Vec<&str> = new.iter().map(|e| e.segment.as_str()).collect();
    segments.sort_unstable();
    assert_eq!(segments, ["tx-0", "tx-1"]);
    assert!(new.iter().all(|e| e.transition.to != SafeState::Normal));
    assert!(t.node.events_since(&mut cursor, 64).is_empty());
    // A fresh cursor gets at most `max` of the newest.
    let mut fresh = EventCursor::default();
    let last = t.node.events_since(&mut fresh, 1);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].segment, new[1].segment);
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtree_is_asked_of_its_supervisor() {
    let t = start(&site_toml(2, 3, "", "")).await;
    let chargers = "node/segments/tx-0/chargers";
    let sub = t
        .node
        .subtree(chargers)
        .await
        .unwrap()
        .expect("the chargers");
    assert_eq!(sub.path.as_str(), chargers);
    assert_eq!(sub.children.len(), 3);
    // The same children as in the whole tree.
    let whole = t.node.tree().await.unwrap();
    let there = whole.find(chargers).unwrap();
    let ids = |n: &gridvisor_supervisors::TreeNode| {
        n.children
            .iter()
            .map(|c| c.path.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&sub), ids(there));
    // A worker's subtree comes from the whole tree; an unknown path is None.
    let safety = t
        .node
        .subtree("node/segments/tx-0/safety")
        .await
        .unwrap()
        .unwrap();
    assert!(safety.children.is_empty());
    assert!(t.node.subtree("node/nope").await.unwrap().is_none());
    assert_eq!(
        t.node.subtree("node").await.unwrap().unwrap().size(),
        whole.size()
    );
    t.node.shutdown().await;
}
