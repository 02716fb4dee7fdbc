//! The node's `/metrics` exposition through `Node::metrics_exposition`: which actors get
//! their own series at each granularity, mailbox depths and fault causes, both formats.

use crate::common;

use common::*;
use gridvisor_actors::ladder::FaultKey;
use gridvisor_actors::runtime::{Format, Node, NodeOptions, Scope};

async fn node(per_session_metrics: bool, toml: &str) -> (Node, tempfile::TempDir) {
    let options = NodeOptions {
        per_session_metrics,
        ..NodeOptions::default()
    };
    let t = start_with(toml, options)
        .await
        .unwrap_or_else(|e| panic!("node: {e}"));
    (t.node, t.dir)
}

/// The value of the sample `line_prefix` (`name{labels}`) in `text`, if present.
fn sample(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chargers_are_per_actor_and_sessions_aggregated_by_default_for_large_sites() {
    let (node, _dir) = node(false, &site_toml(1, 3, "", "")).await;
    let receipt = request_until_acked(&node, "m", 10.0, 3).await;
    assert_eq!(receipt.acknowledged, 3, "{receipt:?}");
    let text = node.metrics_exposition(Format::Text);

    // Each charger (its link actor) has its own series.
    for c in 0..3 {
        let link = format!("node/segments/tx-0/chargers/evse-{c}/link");
        let handled = sample(
            &text,
            &format!("gridvisor_actor_messages_total{{path=\"{link}\"}}"),
        )
        .unwrap_or_else(|| panic!("{link}:\n{text}"));
        assert!(handled >= 1.0, "{link} handled the dispatch");
        assert!(
            sample(
                &text,
                &format!("gridvisor_actor_mailbox_depth{{path=\"{link}\"}}")
            )
            .is_some(),
            "{link} depth"
        );
        assert_eq!(
            sample(
                &text,
                &format!("gridvisor_actor_starts_total{{path=\"{link}\"}}")
            ),
            Some(1.0)
        );
    }
    // The three sessions share one label; no session has a series of its own.
    let shared = "node/segments/tx-0/chargers/*/session";
    assert_eq!(
        sample(
            &text,
            &format!("gridvisor_actor_starts_total{{path=\"{shared}\"}}")
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        !text.contains("/ev-"),
        "a session has its own series:\n{text}"
    );
    // The charger supervisors count their running children together (link + session each).
    assert_eq!(
        sample(
            &text,
            "gridvisor_supervisor_children{path=\"node/segments/tx-0/chargers/*\"}"
        ),
        Some(6.0),
        "{text}"
    );
    // A healthy child has no restart or exit series; an aggregated label has them at zero.
    assert!(!text.contains(
        "gridvisor_actor_restarts_total{path=\"node/segments/tx-0/chargers/evse-0/link\"}"
    ));
    assert_eq!(
        sample(
            &text,
            "gridvisor_actor_restarts_total{path=\"node/segments/tx-0/chargers/*\"}"
        ),
        Some(0.0)
    );
    // Segment-level actors have mailboxes too (the safety actor's first tick may still be
    // ahead: the node answered within milliseconds of starting).
    for actor in ["dispatcher", "safety"] {
        let line = format!("gridvisor_actor_messages_total{{path=\"node/segments/tx-0/{actor}\"}}");
        wait(&node, &line, || {
            sample(&node.metrics_exposition(Format::Text), &line).is_some_and(|n| n >= 1.0)
        })
        .await;
    }
    // Every kind of fault cause is exported for the segment (keep-alive not required here).
    for cause in FaultKey::KINDS {
        let line = format!("gridvisor_segment_fault_active{{cause=\"{cause}\",segment=\"tx-0\"}}");
        assert!(sample(&text, &line).is_some(), "{line}:\n{text}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_granularity_gives_each_session_its_series() {
    let (node, _dir) = node(true, &site_toml(1, 2, "", "")).await;
    wait(&node, "two sessions", || {
        node.metrics_exposition(Format::Text).contains(
            "gridvisor_actor_starts_total{path=\"node/segments/tx-0/chargers/evse-1/ev-1\"} 1",
        )
    })
    .await;
    let text = node.metrics_exposition(Format::Text);
    assert!(
        sample(
            &text,
            "gridvisor_actor_messages_total{path=\"node/segments/tx-0/chargers/evse-0/ev-0\"}"
        )
        .is_some(),
        "{text}"
    );
    assert!(!text.contains("chargers/*/session"), "{text}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_keepalive_shows_as_its_cause() {
    // Keep-alive required, 1 s timeout: the segment goes to ChargeOnly for that cause.
    let toml = site_toml(1, 1, "", "keepalive_timeout_s = 1")
        .replace("keepalive_required = false", "keepalive_required = true");
    let (node, _dir) = node(false, &toml).await;
    let line = "gridvisor_segment_fault_active{cause=\"keepalive\",segment=\"tx-0\"}";
    wait(&node, "keepalive cause exported", || {
        sample(&node.metrics_exposition(Format::Text), line) == Some(1.0)
    })
    .await;
    let text = node.metrics_exposition(Format::Text);
    assert_eq!(
        sample(
            &text,
            "gridvisor_segment_fault_active{cause=\"islanding\",segment=\"tx-0\"}"
        ),
        Some(0.0)
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_names_counters_without_total_and_ends_with_eof() {
    let (node, _dir) = node(false, &site_toml(1, 1, "", "")).await;
    let _ = node
        .request(request("om", Scope::Site, 5.0, 60.0))
        .await
        .unwrap();
    let om = node.metrics_exposition(Format::OpenMetrics);
    assert!(
        om.ends_with("# EOF\n"),
        "{}",
        &om[om.len().saturating_sub(200)..]
    );
    assert_eq!(om.matches("# EOF").count(), 1);
    assert!(
        om.contains("# TYPE gridvisor_actor_starts counter\n"),
        "{om}"
    );
    assert!(om.contains("# TYPE gridvisor_setpoints counter\n"), "{om}");
    assert!(!om.contains("# TYPE gridvisor_actor_starts_total"), "{om}");
    assert!(om.contains("gridvisor_actor_starts_total{path="), "{om}");
    assert!(om.contains("# TYPE gridvisor_dispatch_request_ack_seconds histogram\n"));
    assert!(om.contains("gridvisor_dispatch_request_ack_seconds_bucket{le=\"+Inf\"}"));
    // Each family's samples are together: a family's TYPE line appears once.
    for line in om.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert_eq!(om.matches(&format!("{line}\n")).count(), 1, "{line}");
    }
    let text = node.metrics_exposition(Format::Text);
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE gridvisor_actor_starts_total counter\n"));
    node.shutdown().await;
}
