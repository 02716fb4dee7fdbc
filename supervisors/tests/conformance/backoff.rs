//! Restart backoff (beyond OTP, which restarts at once): a child's restart waits a delay
//! that grows exponentially while it keeps failing and resets after it has been up long
//! enough; meanwhile it is `Restarting`, its path says so, and a send that waits reaches the
//! next incarnation. Tested on tokio's paused clock, so the delays are exact.

use std::time::Duration;

use gridvisor_supervisors::{AddressError, ChildState, Strategy, TreeContext};
use tokio::time::Instant;

use crate::harness::*;

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

#[tokio::test(start_paused = true)]
async fn during_a_backoff_the_path_is_restarting_and_a_waiting_send_reaches_the_next_incarnation() {
    let (log, mut ev) = events();
    let prom = prometheus::Registry::new();
    let tree = TreeContext::with_metrics(&prom).unwrap();
    let registry = tree.registry.clone().expect("with_metrics has a registry");
    let second = Duration::from_secs(1);
    let sup = start(
        config("s", Strategy::OneForOne).tree(tree),
        vec![worker("modem", &log).backoff(exponential(second, Duration::from_secs(30)))],
    )
    .await;
    ev.expect(&["start modem"]).await;

    let first = registry.lookup("s/modem").unwrap();
    let t0 = Instant::now();
    send(&first, Cmd::Fail);
    ended(&first).await;
    assert_eq!(child(&sup, "modem").await.state, ChildState::Restarting);
    // A send during the restart is handed back, with the reason.
    let err = registry.send("s/modem", Cmd::Fail).unwrap_err();
    assert_eq!(err.error, AddressError::Restarting("s/modem".into()));
    assert_eq!(err.message, Cmd::Fail);
    // Not before the delay...
    tokio::time::advance(Duration::from_millis(900)).await;
    ev.assert_quiet(); // not restarted before its backoff
                       // ... and a send that waits is delivered to the next incarnation.
    let r = registry.clone();
    let waiter = tokio::spawn(async move {
        r.send_when_ready("s/modem", Cmd::Stop, Duration::from_secs(10))
            .await
            .map_err(|e| e.error)
    });
    ev.expect(&["start modem"]).await;
    assert_eq!(t0.elapsed(), second);
    waiter
        .await
        .unwrap()
        .expect("delivered to the new incarnation");

    // The Stop it delivered ends the new incarnation normally; permanent, so it restarts after
    // the next (doubled) delay.
    ev.expect(&["stop modem"]).await;
    let t1 = Instant::now();
    ev.expect(&["start modem"]).await;
    assert_eq!(t1.elapsed(), 2 * second);
    assert_eq!(child(&sup, "modem").await.restarts, 2);
    assert!(matches!(
        registry.lookup("nowhere"),
        Err(AddressError::Unknown(_))
    ));
    sup.shutdown().await;
    ev.expect(&["stop modem"]).await;
    assert!(registry.is_empty());
}
