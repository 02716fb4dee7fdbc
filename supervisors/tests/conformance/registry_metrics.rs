//! The registry and metrics (beyond OTP's registered names): a path resolves to the
//! current incarnation of a child, is `Restarting` between an exit and the restart (a send is
//! handed back), unknown once the child is terminated, and empty after shutdown; the metrics
//! count starts, restarts and exits by reason per path.

use std::time::Duration;

use gridvisor_supervisors::registry::SendError;
use gridvisor_supervisors::{AddressError, Strategy, Supervisor, SupervisorRef, TreeContext};

use crate::harness::*;

#[tokio::test(start_paused = true)]
async fn the_registry_resolves_paths_to_current_incarnations() {
    let (log, mut ev) = events();
    let prom = prometheus::Registry::new();
    let tree = TreeContext::with_metrics(&prom).unwrap();
    let reg = tree.registry.clone().expect("with_metrics has a registry");
    let sup = start(
        config("site", Strategy::OneForOne).tree(tree),
        vec![
            worker("w", &log).backoff(exponential(Duration::from_secs(1), Duration::from_secs(1))),
            Supervisor::child_spec(
                "bay",
                config("x", Strategy::OneForOne),
                vec![worker("s", &log)],
            ),
        ],
    )
    .await;
    ev.expect(&["start w", "start s"]).await;

    let w = cell(&sup, "w").await;
    assert_eq!(reg.lookup("site/w").unwrap().get_id(), w.get_id());
    let bay = SupervisorRef::from_cell(reg.lookup("site/bay").unwrap(), "site/bay".into()).unwrap();
    assert_eq!(
        reg.lookup("site/bay/s").unwrap().get_id(),
        cell(&bay, "s").await.get_id(),
        "nested supervisors share the registry"
    );
    reg.send("site/w", Cmd::Note("one".into())).unwrap();
    ev.expect(&[format!("note w one @{}", w.get_id())]).await;

    // Between an exit and the restart, the path is restarting and messages come back.
    exit_child(&sup, "w", Cmd::Fail).await;
    assert_eq!(
        reg.lookup("site/w").unwrap_err(),
        AddressError::Restarting("site/w".into())
    );
    let SendError { error, message } = reg.send("site/w", Cmd::Note("two".into())).unwrap_err();
    assert_eq!(error, AddressError::Restarting("site/w".into()));
    assert_eq!(
        message,
        Cmd::Note("two".into()),
        "the message is handed back"
    );

    // send_when_ready waits for the next incarnation and delivers to it.
    let r = reg.clone();
    let pending = tokio::spawn(async move {
        r.send_when_ready("site/w", Cmd::Note("three".into()), LIMIT)
            .await
    });
    ev.expect(&["start w"]).await;
    let note = ev.next().await;
    pending.await.unwrap().unwrap();
    let w2 = cell(&sup, "w").await;
    assert_ne!(w2.get_id(), w.get_id());
    assert_eq!(note, format!("note w three @{}", w2.get_id()));
    assert_eq!(reg.lookup("site/w").unwrap().get_id(), w2.get_id());

    // Unknown paths and wrong message types are errors, not silence.
    assert_eq!(
        reg.lookup("site/nope").unwrap_err(),
        AddressError::Unknown("site/nope".into())
    );
    let err = reg.send("site/nope", Cmd::Note("four".into())).unwrap_err();
    assert_eq!(err.error, AddressError::Unknown("site/nope".into()));
    assert_eq!(err.message, Cmd::Note("four".into()));
    assert_eq!(
        reg.resolve("site/nope", Duration::from_millis(100))
            .await
            .unwrap_err(),
        AddressError::TimedOut {
            path: "site/nope".into(),
            waited: Duration::from_millis(100)
        }
    );
    assert_eq!(
        reg.send("site/w", 5u64).unwrap_err().error,
        AddressError::WrongType("site/w".into())
    );

    // A terminated child is no longer addressable; restarted by hand, it is again.
    sup.terminate_child("w").await.unwrap();
    ev.expect(&["stop w"]).await;
    assert_eq!(
        reg.lookup("site/w").unwrap_err(),
        AddressError::Unknown("site/w".into())
    );
    let w3 = sup.restart_child("w").await.unwrap().cell;
    ev.expect(&["start w"]).await;
    assert_eq!(reg.lookup("site/w").unwrap().get_id(), w3.get_id());

    // Nothing stays registered after the tree is shut down.
    sup.shutdown().await;
    assert!(
        reg.paths_under(&"site".into()).is_empty(),
        "{:?}",
        reg.paths_under(&"site".into())
    );
    assert!(reg.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_starts_restarts_and_exits_by_reason() {
    let (log, mut ev) = events();
    let prom = prometheus::Registry::new();
    let sup = start(
        config("m", Strategy::OneForOne).tree(TreeContext::with_metrics(&prom).unwrap()),
        vec![worker("w", &log), worker("v", &log)],
    )
    .await;
    ev.expect(&["start w", "start v"]).await;
    let exits = |reason: &str| {
        metric(
            &prom,
            "gridvisor_actor_exits_total",
            &[("path", "m/w"), ("reason", reason)],
        )
    };
    let restarts = || metric(&prom, "gridvisor_actor_restarts_total", &[("path", "m/w")]);
    // A per-path series of restarts or exits appears with its first event.
    assert_eq!(restarts(), None);
    assert_eq!(
        metric(&prom, "gridvisor_actor_starts_total", &[("path", "m/w")]),
        Some(1.0)
    );

    exit_child(&sup, "w", Cmd::Fail).await;
    ev.expect(&["start w"]).await;
    assert_eq!(restarts(), Some(1.0));
    assert_eq!(exits("failed"), Some(1.0));
    assert_eq!(exits("killed"), None);
    assert_eq!(exits("normal"), None);
    assert_eq!(
        metric(&prom, "gridvisor_actor_starts_total", &[("path", "m/w")]),
        Some(2.0)
    );
    assert_eq!(
        metric(&prom, "gridvisor_actor_restarts_total", &[("path", "m/v")]),
        None,
        "the sibling's series is its own"
    );
    assert_eq!(
        metric(&prom, "gridvisor_supervisor_children", &[("path", "m")]),
        Some(2.0)
    );

    kill_child(&sup, "w").await;
    ev.expect(&["start w"]).await;
    exit_child(&sup, "w", Cmd::Stop).await;
    ev.expect(&["stop w", "start w"]).await;
    assert_eq!(restarts(), Some(3.0));
    assert_eq!(exits("failed"), Some(1.0));
    assert_eq!(exits("killed"), Some(1.0));
    assert_eq!(exits("normal"), Some(1.0));

    sup.terminate_child("v").await.unwrap();
    assert_eq!(
        metric(
            &prom,
            "gridvisor_actor_exits_total",
            &[("path", "m/v"), ("reason", "shutdown")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&prom, "gridvisor_supervisor_children", &[("path", "m")]),
        Some(1.0)
    );
    sup.shutdown().await;
}
