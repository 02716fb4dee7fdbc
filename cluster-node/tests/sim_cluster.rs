//! Three nodes of configs/cluster/site.toml in this process over the simulated network
//! (`simnet`): the real runtime (actors, openraft in memory, leases, replication), each node
//! with its own checkpoint store. They share the segments out; a node cut off both ways goes
//! to ChargeOnly and is taken over by the majority; healed, it is re-admitted. One driver per
//! segment is checked on the nodes' typed events (the same records a real-process run reads).
//!
//! The clock is tokio's real one here (the first step towards the paused-clock simulator of
//! issue 23); every wait is bounded by [`LIMIT`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gridvisor_actors::checkpoint::{CheckpointStore, StoreLimits};
use gridvisor_actors::clock::Clock;
use gridvisor_actors::runtime::{Node, NodeOptions};
use gridvisor_cluster::lease::LeaseState;
use gridvisor_cluster::membership::Storage;
use gridvisor_cluster_node::events::{ClusterEvent, EventSubscriber, Received};
use gridvisor_cluster_node::simnet::{SimNet, SimNetConfig};
use gridvisor_cluster_node::{config, Cluster, Wiring};

/// Every wait of this test is bounded by this.
const LIMIT: Duration = Duration::from_secs(60);
const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn cluster_file() -> String {
    let mut f = String::from(
        "[tls]\nca = \"ca.pem\"\ncert = \"{node}.pem\"\nkey = \"{node}-key.pem\"\n\
         [lease]\nheartbeat_ms = 100\ncharge_only_after_ms = 500\nlease_ms = 1500\nmax_drift_ppm = 10000\n",
    );
    for (i, n) in NAMES.iter().enumerate() {
        f.push_str(&format!(
            "[[nodes]]\nname = \"{n}\"\ncluster = \"127.0.0.1:{}\"\ngrid = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
            4700 + i,
            9100 + i,
            9200 + i
        ));
    }
    f
}

struct SimNode {
    cluster: Cluster,
    events: EventSubscriber,
    _store: CheckpointStore,
}

async fn start(name: &str, net: &SimNet, dir: &Path) -> SimNode {
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cluster/site.toml");
    let topology = Arc::new(gridvisor_actors::config::load(&site).expect("the example site"));
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let store = CheckpointStore::open(&data.join("checkpoints.redb"), StoreLimits::default())
        .expect("a checkpoint store");
    let options = NodeOptions {
        per_session_metrics: false,
        segments: Some(BTreeSet::new()),
    };
    let node = Node::start(
        topology,
        store.clone(),
        Clock::tokio(),
        prometheus::Registry::new(),
        options,
    )
    .await
    .expect("the node starts");
    let config =
        config::parse(&cluster_file(), dir, name, Some("simulated-network-cookie")).unwrap();
    let (endpoint, inbound) = net.join(name);
    let wiring = Wiring {
        network: Arc::new(endpoint),
        inbound,
        listen: None,
        storage: Storage::InMemory,
        events_file: Some(data.join("cluster-events.jsonl")),
    };
    let cluster = Cluster::start_on(config, Arc::new(node), &store, wiring)
        .await
        .expect("the cluster node starts");
    let events = cluster.events();
    SimNode {
        cluster,
        events,
        _store: store,
    }
}

/// segment → its driver, once `names` agree on `members`, drive on a confirmed lease and
/// every segment is driven by exactly one of them.
fn settled(nodes: &BTreeMap<String, SimNode>, names: &[&str]) -> Option<BTreeMap<String, String>> {
    let mut driver = BTreeMap::new();
    for n in names {
        let s = nodes[*n].cluster.status()?;
        let members: Vec<&str> = s.members.iter().map(String::as_str).collect();
        if members != names || s.lease != LeaseState::Driving || s.lapsed {
            return None;
        }
        for seg in s.segments.iter().filter(|s| s.driven_here) {
            if driver.insert(seg.segment.clone(), n.to_string()).is_some() {
                return None;
            }
        }
    }
    (driver.len() == 6).then_some(driver)
}

/// Waits (bounded) until `names` settled, on `want` if given.
async fn wait_settled(
    nodes: &BTreeMap<String, SimNode>,
    names: &[&str],
    want: Option<&BTreeMap<String, String>>,
    what: &str,
) -> BTreeMap<String, String> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(d) = settled(nodes, names).filter(|d| want.is_none_or(|w| w == d)) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not settled within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every node's events received so far, in the order of their times (one machine clock);
/// a lost record fails the test (the check would not be complete).
fn drain(nodes: &mut BTreeMap<String, SimNode>) -> Vec<(String, ClusterEvent)> {
    let mut log = Vec::new();
    for (name, n) in nodes.iter_mut() {
        while let Some(r) = n.events.try_recv() {
            match r {
                Received::Event(e) => {
                    let rfc = time::format_description::well_known::Rfc3339;
                    let at = time::OffsetDateTime::parse(&e.at, &rfc).expect("an RFC 3339 time");
                    log.push((at, e.seq, name.clone(), e.event));
                }
                Received::Lagged(k) => panic!("{name}: {k} events lost"),
            }
        }
    }
    log.sort_by_key(|a| (a.0, a.1));
    log.into_iter().map(|(_, _, n, e)| (n, e)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_the_simulated_network_fail_over_and_heal() {
    let dir = tempfile::tempdir().unwrap();
    let net = SimNet::new(SimNetConfig::seeded(23));
    let mut nodes = BTreeMap::new();
    for n in NAMES {
        nodes.insert(n.to_string(), start(n, &net, dir.path()).await);
    }
    let driver = wait_settled(&nodes, &NAMES, None, "three nodes").await;
    let minority = "node-c";
    let moved: Vec<String> = (driver.iter())
        .filter(|(_, d)| *d == minority)
        .map(|(s, _)| s.clone())
        .collect();
    assert!(!moved.is_empty(), "{driver:?}");

    net.partition(&[minority], &["node-a", "node-b"]);
    let taken = wait_settled(&nodes, &["node-a", "node-b"], None, "the majority").await;
    assert!(moved.iter().all(|s| taken[s] != minority));
    let cut_off = nodes[minority].cluster.status().unwrap();
    assert_ne!(
        cut_off.lease,
        LeaseState::Driving,
        "the minority kept its lease"
    );
    assert!(cut_off
        .segments
        .iter()
        .all(|s| !s.driven_here || cut_off.lapsed || cut_off.lease != LeaseState::Driving));

    net.heal();
    // The shard map gives the minority its segments back.
    wait_settled(&nodes, &NAMES, Some(&driver), "the healed cluster").await;

    // One driver per segment, from the events: a node drives from `adopting` to `released`
    // or to its lease's end, and in between no other node adopts.
    let log = drain(&mut nodes);
    let mut driving: BTreeMap<String, String> = BTreeMap::new();
    let mut handoffs = 0;
    for (node, e) in &log {
        match e {
            ClusterEvent::Adopting { segment, .. } => {
                if let Some(other) = driving.insert(segment.clone(), node.clone()) {
                    assert_eq!(
                        &other, node,
                        "{segment} adopted by {node} while {other} drove it"
                    );
                }
                handoffs += 1;
            }
            ClusterEvent::Released { segment, .. } if driving.get(segment) == Some(node) => {
                driving.remove(segment);
            }
            ClusterEvent::Lease {
                to: LeaseState::Stopped,
                ..
            } => driving.retain(|_, d| d != node),
            _ => {}
        }
    }
    assert!(
        handoffs >= 6 + 2 * moved.len(),
        "adoptions seen: {handoffs}"
    );
    for n in nodes.values() {
        n.cluster.shutdown().await;
    }
}
