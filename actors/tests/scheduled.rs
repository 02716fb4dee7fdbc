//! Ramped grid requests through a running node (in-process devices, the real clock): the
//! site's target moves from the scope's power toward the request's at no more than the ramp
//! rate, reaches it, and after a cancel moves back at that rate and ends.

use std::time::{Duration, Instant};

use gridvisor_actors::runtime::{Cancel, GridRequest, Node, Scope};

use crate::common::{site_toml, start, wait};

/// The ramp rate of the test's request, kW/s.
const RATE: f64 = 20.0;
/// How far above the scope's power the request aims, kW (2 s of ramp).
const STEP_KW: f64 = 40.0;
/// What a sample may be ahead of the rate: one cycle of the site (100 ms in `site_toml`) at
/// the rate, and rounding.
const SLACK_KW: f64 = RATE * 0.1 + 0.5;

fn site_target(node: &Node) -> f64 {
    node.shared.metrics.site_target.get()
}

fn metered(node: &Node) -> f64 {
    node.segments().iter().map(|s| s.telemetry.metered_kw).sum()
}

/// Sample the site's target until `done`, checking that it never moved away from `origin`
/// faster than [`RATE`] since `since` (0 exactly: no request is active any more, the gauge's
/// sum is empty).
async fn follow(node: &Node, origin: f64, since: Instant, what: &str, done: impl Fn(f64) -> bool) {
    wait(node, what, || {
        let v = site_target(node);
        let allowed = RATE * since.elapsed().as_secs_f64() + SLACK_KW;
        assert!(
            v == 0.0 || (v - origin).abs() <= allowed,
            "{what}: {v} kW is {} kW from {origin} after {:?} (at most {allowed})",
            (v - origin).abs(),
            since.elapsed()
        );
        done(v)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramped_request_moves_at_its_rate_and_ramps_back_when_cancelled() {
    let t = start(&site_toml(1, 3, "", "")).await;
    let node = &t.node;
    wait(node, "a metered power", || metered(node).is_finite()).await;
    let from = metered(node);
    let goal = from + STEP_KW;
    let mut r = GridRequest::now("ramp-1", Scope::Site, goal, 600.0);
    r.ramp_kw_per_s = Some(RATE);
    let accepted = Instant::now();
    let receipt = node.request(r).await.unwrap();
    assert!(!receipt.scheduled && receipt.dispatch > 0, "{receipt:?}");
    // The ramp starts where the scope was (its meter moved little meanwhile) ...
    follow(node, from, accepted, "ramp up", |v| (v - goal).abs() < 1e-6).await;
    // ... and cannot have reached the goal before STEP_KW / RATE (less a cycle).
    let took = accepted.elapsed().as_secs_f64();
    assert!(
        took >= STEP_KW / RATE - 0.2,
        "reached {goal} kW in {took} s"
    );

    let cancelled = Instant::now();
    assert_eq!(node.cancel("ramp-1").await.unwrap(), Cancel::Active);
    assert_eq!(
        node.cancel("ramp-1").await.unwrap(),
        Cancel::AlreadyCancelled
    );
    // Back at the rate; once back, the request ends and nothing targets the site.
    follow(node, goal, cancelled, "ramp back", |v| v == 0.0).await;
    let took = cancelled.elapsed().as_secs_f64();
    assert!(took >= STEP_KW / RATE - 0.2, "back in {took} s");
    assert_eq!(
        node.cancel("ramp-1").await.unwrap(),
        Cancel::AlreadyCancelled
    );
    assert_eq!(node.cancel("never").await.unwrap(), Cancel::Unknown);
    // The record went with it: a restart would not resume it.
    let _ = tokio::time::timeout(Duration::from_secs(5), t.store.flush()).await;
    assert!(t
        .store
        .keys_with_prefix(gridvisor_actors::runtime::REQUEST_KEY_PREFIX)
        .unwrap()
        .is_empty());
    t.node.shutdown().await;
}
