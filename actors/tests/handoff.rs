//! Segments changing owner within a node's tree (the building block of the cluster's
//! handoff): a node drives only the segments it is given, adopts one in ChargeOnly, and
//! releases one through ChargeOnly, its devices commanded before its subtree stops.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use gridvisor_actors::ladder::{FaultKey, SafeState};
use gridvisor_actors::runtime::{HandoffError, Node, NodeOptions, Scope};

async fn node_owning(toml: &str, owned: &[&str]) -> Result<(Node, tempfile::TempDir), String> {
    let options = NodeOptions {
        segments: Some(owned.iter().map(|s| s.to_string()).collect()),
        ..NodeOptions::default()
    };
    let t = start_with(toml, options).await?;
    Ok((t.node, t.dir))
}

fn running(node: &Node, segment: &str) -> bool {
    node.registry()
        .lookup(&format!("node/segments/{segment}/safety"))
        .is_ok_and(|cell| {
            matches!(
                cell.get_status(),
                ractor::ActorStatus::Running | ractor::ActorStatus::Starting
            )
        })
}

fn setpoint(node: &Node, charger: &str) -> f64 {
    node.sim.chargers[charger].setpoint_kw()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_drives_only_its_segments_and_hands_them_over_through_charge_only() {
    // Two segments of two chargers; this node drives tx-0 only.
    let toml = site_toml(2, 2, "", "");
    let (node, _dir) = node_owning(&toml, &["tx-0"]).await.unwrap();
    assert_eq!(node.owned_segments(), BTreeSet::from(["tx-0".to_string()]));
    wait(&node, "tx-0's safety actor", || running(&node, "tx-0")).await;
    assert!(!running(&node, "tx-1"), "tx-1 belongs to another node");
    let views = node.segments();
    assert!(views.iter().any(|v| v.id == "tx-0" && v.owned));
    assert!(views.iter().any(|v| v.id == "tx-1" && !v.owned));

    // A site request reaches only the driven segment's chargers (evse-0, evse-1).
    let receipt = request_until_acked(&node, "own", -20.0, 2).await;
    assert_eq!(receipt.acknowledged, 2, "{receipt:?}");
    assert!(setpoint(&node, "evse-0") < 0.0, "tx-0 discharges");
    assert_eq!(setpoint(&node, "evse-2"), 0.0, "tx-1 is not driven here");

    // Adopt tx-1: it runs, in ChargeOnly for the handoff, and is held there for the hold
    // time (1 s here) before it may discharge.
    node.adopt_segment("tx-1").await.unwrap();
    assert!(running(&node, "tx-1"));
    let v = node.segment("tx-1").unwrap();
    assert!(v.owned);
    assert_eq!(v.level, SafeState::ChargeOnly, "{v:?}");
    assert!(v.causes.contains(&FaultKey::Handoff), "{v:?}");
    assert!(matches!(
        node.adopt_segment("tx-1").await,
        Err(HandoffError::AlreadyOwned(_))
    ));
    let r = node
        .request(request(
            "adopted",
            Scope::Segment("tx-1".into()),
            -20.0,
            60.0,
        ))
        .await
        .unwrap();
    assert!(
        setpoint(&node, "evse-2") >= 0.0 && setpoint(&node, "evse-3") >= 0.0,
        "no discharge from a segment in handoff: {r:?}"
    );
    wait(&node, "tx-1 back to Normal after the hold time", || {
        node.segment("tx-1").unwrap().level == SafeState::Normal
    })
    .await;
    request_until_acked(&node, "later", -20.0, 4).await;
    wait(&node, "tx-1 discharges once it may", || {
        setpoint(&node, "evse-2") < 0.0
    })
    .await;

    // Release tx-0: ChargeOnly on its devices before its subtree stops. The site's
    // discharge is now shared with tx-1, so one of tx-0's chargers may carry all of tx-0's.
    wait(&node, "a charger of tx-0 discharging", || {
        setpoint(&node, "evse-0") < 0.0 || setpoint(&node, "evse-1") < 0.0
    })
    .await;
    node.release_segment("tx-0").await.unwrap();
    for c in ["evse-0", "evse-1"] {
        assert!(
            setpoint(&node, c) >= 0.0,
            "{c} still discharges after release"
        );
    }
    // The subtree has stopped; its registry entries go as its supervisor's state drops.
    wait(&node, "tx-0's actors gone", || !running(&node, "tx-0")).await;
    let v = node.segment("tx-0").unwrap();
    assert!(!v.owned);
    assert_eq!(v.level, SafeState::ChargeOnly, "{v:?}");
    assert!(matches!(
        node.release_segment("tx-0").await,
        Err(HandoffError::NotOwned(_))
    ));
    // Later rounds leave it alone: its chargers keep what the release commanded.
    let before = (setpoint(&node, "evse-0"), setpoint(&node, "evse-1"));
    let r = request_until_acked(&node, "after-release", -15.0, 2).await;
    assert!(r.segments.iter().all(|s| s.segment != "tx-0"), "{r:?}");
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        assert_eq!(
            (setpoint(&node, "evse-0"), setpoint(&node, "evse-1")),
            before,
            "a released segment's chargers were written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_segment_outside_the_topology_is_refused_at_start_and_at_adoption() {
    let toml = site_toml(1, 1, "", "");
    let e = node_owning(&toml, &["tx-9"]).await.err().expect("refused");
    assert!(e.contains("tx-9"), "{e}");
    let (node, _dir) = node_owning(&toml, &[]).await.unwrap();
    assert!(node.owned_segments().is_empty());
    assert!(matches!(
        node.adopt_segment("tx-9").await,
        Err(HandoffError::Unknown(_))
    ));
    node.shutdown().await;
}
