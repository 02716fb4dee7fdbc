//! Supervisor reports (OTP's SASL supervisor and progress reports): a crashed child is
//! reported as exited and then restarted, a supervisor past its intensity as gave up, a
//! failed restart as start_failed; a subscriber that does not read loses the oldest reports,
//! is told how many, and never slows the supervisor. Real actors; every wait has a limit.

use std::time::Duration;

use gridvisor_supervisors::report::{Received, ReportSubscriber};
use gridvisor_supervisors::{
    ChildContext, ChildSpec, ExitClass, Registry, ReportEvent, Strategy, Supervisor,
    SupervisorConfig, SupervisorReport, SupervisorReports, TreeContext,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// Longest any test waits for a report that must come.
const LIMIT: Duration = Duration::from_secs(5);

struct Crashy;

impl Actor for Crashy {
    type Msg = ();
    type State = ();
    type Arguments = bool;

    async fn pre_start(&self, _: ActorRef<()>, fail: bool) -> Result<(), ActorProcessingErr> {
        if fail {
            return Err("refused to start".into());
        }
        Ok(())
    }

    async fn handle(&self, _: ActorRef<()>, _: (), _: &mut ()) -> Result<(), ActorProcessingErr> {
        Err("boom: crashed on request".into())
    }
}

fn crashy(id: &str) -> ChildSpec<()> {
    ChildSpec::worker(id, |ctx: ChildContext, ()| async move {
        ctx.spawn(Crashy, false).await
    })
}

fn tree(reports: &SupervisorReports) -> TreeContext {
    TreeContext {
        registry: Some(Registry::new()),
        metrics: None,
        reports: Some(reports.clone()),
    }
}

/// The next report (panics on a lag, a close or the limit).
async fn next(sub: &mut ReportSubscriber) -> SupervisorReport {
    match tokio::time::timeout(LIMIT, sub.recv()).await {
        Ok(Some(Received::Report(r))) => r,
        Ok(Some(Received::Lagged(n))) => panic!("lagged {n} reports"),
        Ok(None) => panic!("report channel closed"),
        Err(_) => panic!("no report within {LIMIT:?}"),
    }
}

/// Send the child at `path` the message that makes it fail.
fn crash(registry: &Registry, path: &str) {
    let cell = registry.lookup(path).expect("child is running");
    cell.send_message::<()>(())
        .expect("child takes the message");
}

#[tokio::test]
async fn a_crash_is_reported_as_exited_then_restarted() {
    let reports = SupervisorReports::new(64).unwrap();
    let ctx = tree(&reports);
    let registry = ctx.registry.clone().unwrap();
    let mut sub = reports.subscribe();
    let sup = Supervisor::start(
        SupervisorConfig::new("root", Strategy::OneForOne)
            .intensity(10, Duration::from_secs(60))
            .tree(ctx),
        vec![crashy("a"), crashy("b")],
    )
    .await
    .unwrap();
    for id in ["a", "b"] {
        let r = next(&mut sub).await;
        assert_eq!(r.path.as_str(), format!("root/{id}"));
        assert_eq!(r.supervisor.as_str(), "root");
        assert_eq!(r.event, ReportEvent::Started);
    }

    crash(&registry, "root/b");
    let exited = next(&mut sub).await;
    assert_eq!(exited.path.as_str(), "root/b");
    match &exited.event {
        ReportEvent::Exited { class, reason } => {
            assert_eq!(*class, ExitClass::Failed);
            assert!(reason.contains("boom"), "{reason}");
        }
        other => panic!("expected exited, got {other:?}"),
    }
    let restarted = next(&mut sub).await;
    assert_eq!(restarted.path.as_str(), "root/b");
    assert_eq!(restarted.event, ReportEvent::Restarted { restarts: 1 });
    assert!(restarted.seq > exited.seq);

    // A second crash counts on.
    crash(&registry, "root/b");
    assert!(matches!(
        next(&mut sub).await.event,
        ReportEvent::Exited { .. }
    ));
    assert_eq!(
        next(&mut sub).await.event,
        ReportEvent::Restarted { restarts: 2 }
    );

    // The report's JSON is what the live view reads.
    let json = serde_json::to_value(&restarted).unwrap();
    assert_eq!(json["event"], "restarted");
    assert_eq!(json["restarts"], 1);
    assert_eq!(json["path"], "root/b");
    sup.shutdown().await;
}

#[tokio::test]
async fn past_its_intensity_a_supervisor_reports_that_it_gave_up() {
    let reports = SupervisorReports::new(64).unwrap();
    let ctx = tree(&reports);
    let registry = ctx.registry.clone().unwrap();
    let mut sub = reports.subscribe();
    let sup = Supervisor::start(
        SupervisorConfig::new("root", Strategy::OneForOne)
            .intensity(1, Duration::from_secs(60))
            .tree(ctx),
        vec![crashy("a")],
    )
    .await
    .unwrap();
    assert_eq!(next(&mut sub).await.event, ReportEvent::Started);
    crash(&registry, "root/a");
    assert!(matches!(
        next(&mut sub).await.event,
        ReportEvent::Exited { .. }
    ));
    assert_eq!(
        next(&mut sub).await.event,
        ReportEvent::Restarted { restarts: 1 }
    );
    crash(&registry, "root/a");
    assert!(matches!(
        next(&mut sub).await.event,
        ReportEvent::Exited { .. }
    ));
    let gave_up = next(&mut sub).await;
    assert_eq!(gave_up.path.as_str(), "root");
    match gave_up.event {
        ReportEvent::GaveUp {
            max_restarts,
            period_ms,
            reason,
        } => {
            assert_eq!(max_restarts, 1);
            assert_eq!(period_ms, 60_000);
            assert!(reason.starts_with("a: "), "{reason}");
        }
        other => panic!("expected gave_up, got {other:?}"),
    }
    let deadline = tokio::time::Instant::now() + LIMIT;
    while matches!(
        sup.cell().get_status(),
        ractor::ActorStatus::Running | ractor::ActorStatus::Starting
    ) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "supervisor still runs"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_failed_restart_is_reported_as_start_failed() {
    let reports = SupervisorReports::new(64).unwrap();
    let ctx = tree(&reports);
    let registry = ctx.registry.clone().unwrap();
    let mut sub = reports.subscribe();
    // Starts the first time, refuses every later start.
    let starts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let spec = ChildSpec::worker("flaky", move |ctx: ChildContext, ()| {
        let n = starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { ctx.spawn(Crashy, n > 0).await }
    });
    let sup = Supervisor::start(
        SupervisorConfig::new("root", Strategy::OneForOne)
            .intensity(3, Duration::from_secs(60))
            .tree(ctx),
        vec![spec],
    )
    .await
    .unwrap();
    assert_eq!(next(&mut sub).await.event, ReportEvent::Started);
    crash(&registry, "root/flaky");
    assert!(matches!(
        next(&mut sub).await.event,
        ReportEvent::Exited { .. }
    ));
    let failed = next(&mut sub).await;
    assert_eq!(failed.path.as_str(), "root/flaky");
    match failed.event {
        ReportEvent::StartFailed { reason } => {
            assert!(reason.contains("refused to start"), "{reason}")
        }
        other => panic!("expected start_failed, got {other:?}"),
    }
    sup.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_loses_the_oldest_and_is_told_how_many() {
    const CAPACITY: usize = 4;
    const CRASHES: usize = 20;
    let reports = SupervisorReports::new(CAPACITY).unwrap();
    let ctx = tree(&reports);
    let registry = ctx.registry.clone().unwrap();
    let mut slow = reports.subscribe();
    let mut fast = reports.subscribe();
    let sup = Supervisor::start(
        SupervisorConfig::new("root", Strategy::OneForOne)
            .intensity(1_000, Duration::from_secs(60))
            .tree(ctx),
        vec![crashy("a")],
    )
    .await
    .unwrap();
    assert_eq!(next(&mut fast).await.event, ReportEvent::Started);
    // The supervisor goes on restarting while `slow` reads nothing: each crash is seen by
    // `fast` as exited then restarted, so the supervisor was never held up.
    for i in 1..=CRASHES {
        crash(&registry, "root/a");
        assert!(matches!(
            next(&mut fast).await.event,
            ReportEvent::Exited { .. }
        ));
        assert_eq!(
            next(&mut fast).await.event,
            ReportEvent::Restarted { restarts: i as u32 }
        );
    }
    let published = 1 + 2 * CRASHES;
    assert_eq!(reports.published(), published as u64);
    match slow.recv().await {
        Some(Received::Lagged(n)) => assert_eq!(n as usize, published - CAPACITY),
        other => panic!("expected a lag, got {other:?}"),
    }
    assert_eq!(reports.lagged() as usize, published - CAPACITY);
    // Then the newest CAPACITY reports, oldest first, the last being the last restart.
    let mut last = None;
    for _ in 0..CAPACITY {
        last = Some(next(&mut slow).await);
    }
    assert_eq!(
        last.unwrap().event,
        ReportEvent::Restarted {
            restarts: CRASHES as u32
        }
    );
    assert!(matches!(slow.try_recv(), Ok(None)));
    sup.shutdown().await;
}
