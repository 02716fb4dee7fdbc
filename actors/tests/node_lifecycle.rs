//! A node's life, driven through a running node: vehicles leave and arrive on the site's
//! schedule, a throttled charger's missing power moves to the others, a node restarted on
//! its checkpoint directory resumes where it stopped (the safe state it was in, increasing
//! dispatch ids, keys the devices accept), and a repeated request id is answered without a
//! second dispatch (no device is written again).

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use gridvisor_actors::device::{ChargerIo, SimCharger};
use gridvisor_actors::ladder::{Fault, FaultKey, SafeState};
use gridvisor_actors::runtime::shared::{applied_record_key, AppliedRecord};
use gridvisor_actors::runtime::{charger_path, Node, Scope};
use gridvisor_actors::session::SessionState;
use gridvisor_actors::setpoint::SetpointKey;
use gridvisor_supervisors::{ChildState, TreeNode};

fn level(t: &TestNode, seg: &str) -> SafeState {
    t.node.segment(seg).unwrap().level
}

/// A checkpoint as data (the store writes named MessagePack, so any value decodes).
fn checkpoint(t: &TestNode, key: &str) -> Option<serde_json::Value> {
    t.store
        .get::<serde_json::Value>(key)
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// The state recorded in a vehicle's session checkpoint.
fn checkpointed_state(t: &TestNode, vehicle: &str) -> Option<SessionState> {
    let cp = checkpoint(t, &format!("session/{vehicle}"))?;
    Some(serde_json::from_value(cp["session"]["state"].clone()).unwrap())
}

/// The key checkpointed as a charger's last applied setpoint (in its segment's record).
fn link_key(t: &TestNode, charger: &str) -> Option<SetpointKey> {
    applied_key(&t.store, &t.node.shared.topology, charger)
}

/// The key of `charger` in its segment's applied record in `store`.
fn applied_key(
    store: &gridvisor_actors::checkpoint::CheckpointStore,
    topology: &gridvisor_actors::config::Topology,
    charger: &str,
) -> Option<SetpointKey> {
    let seg = topology.charger_segment(charger).unwrap();
    let record: AppliedRecord = store
        .get(&applied_record_key(seg))
        .unwrap_or_else(|e| panic!("{seg}: {e}"))?;
    record.chargers.get(charger).map(|(a, _)| a.key)
}

/// The device's own reading now (power, register, setpoint).
fn read(t: &TestNode, c: &SimCharger) -> gridvisor_actors::device::ChargerReading {
    let now = t.node.shared.clock.now();
    futures::executor::block_on(ChargerIo::read(c, now)).unwrap()
}

/// Wait until the supervision tree satisfies `cond`, at most [`LIMIT`].
async fn wait_tree(node: &Node, what: &str, mut cond: impl FnMut(&TreeNode) -> bool) {
    let start = Instant::now();
    loop {
        let tree = node.tree().await.unwrap();
        if cond(&tree) {
            return;
        }
        if start.elapsed() > LIMIT {
            panic!("{what}: not within {LIMIT:?}\n{tree:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_leaves_and_the_next_one_arrives_on_the_same_charger() {
    // ev-0 leaves evse-0 after 1 s; ev-late (another battery, another SoC) arrives at 1.5 s.
    let mut toml = site_toml(1, 2, "", "");
    assert!(toml.contains("depart_s = 3600\n"));
    toml = toml.replacen("depart_s = 3600\n", "depart_s = 1\n", 1);
    toml.push_str(
        "[[vehicles]]\nid = \"ev-late\"\ncharger = \"evse-0\"\ncapacity_kwh = 30\nsoc_pct = 73\n\
         arrive_s = 1.5\ndepart_s = 3600\nmax_kw = 11\n",
    );
    let t = start(&toml).await;
    let node = &t.node;
    let first = format!("{}/ev-0", charger_path("tx-0", "evse-0"));
    let second = format!("{}/ev-late", charger_path("tx-0", "evse-0"));
    let link = format!("{}/link", charger_path("tx-0", "evse-0"));

    // ev-0 is there first, with a running session and its child in the charger supervisor.
    wait(node, "ev-0's session running", || {
        node.session("ev-0")
            .is_some_and(|s| s.status.session.state != SessionState::Ended)
    })
    .await;
    assert!(
        node.session("ev-late").is_none(),
        "{:?}",
        node.session("ev-late")
    );
    wait_tree(node, "ev-0 in the tree", |tree| tree.find(&first).is_some()).await;

    // ev-0 leaves: its session ends (checkpointed as ended), not before its departure.
    wait(node, "ev-0's session checkpointed as ended", || {
        checkpointed_state(&t, "ev-0") == Some(SessionState::Ended)
    })
    .await;
    let ended_at = node.shared.clock.now();
    assert!(ended_at >= Duration::from_secs(1), "ended at {ended_at:?}");
    // Its child is gone from the charger supervisor; the link stays.
    wait_tree(node, "ev-0 gone from the tree", |tree| {
        tree.find(&first).is_none()
    })
    .await;
    let tree = node.tree().await.unwrap();
    assert_eq!(
        tree.find(&link).map(|l| l.state),
        Some(ChildState::Running),
        "{tree:#?}"
    );

    // ev-late arrives on the same charger: a new running session from its own configuration.
    wait(node, "ev-late's session running", || {
        node.session("ev-late")
            .is_some_and(|s| s.status.session.state != SessionState::Ended)
    })
    .await;
    let now = node.shared.clock.now();
    assert!(now >= Duration::from_millis(1500), "arrived at {now:?}");
    let s = node.session("ev-late").unwrap();
    assert_eq!(s.charger, "evse-0");
    assert_eq!(s.status.session.vehicle, "ev-late");
    assert_eq!(s.status.session.capacity_kwh, 30.0, "{s:?}");
    assert!(
        (s.status.session.soc_pct - 73.0).abs() < 0.01,
        "ev-late starts at {} %, configured 73 %",
        s.status.session.soc_pct
    );
    assert!(s.status.session.energy_kwh.abs() < 0.01, "{s:?}");
    // The device holds ev-late's battery, and ev-0's session is still the ended one.
    let battery = node.sim.chargers["evse-0"].battery(now).unwrap();
    assert_eq!(battery.capacity_kwh, 30.0);
    assert!((battery.soc_pct - 73.0).abs() < 0.01, "{battery:?}");
    assert_eq!(checkpointed_state(&t, "ev-0"), Some(SessionState::Ended));
    wait(node, "ev-late's session checkpointed", || {
        checkpoint(&t, "session/ev-late").is_some()
    })
    .await;
    let cp = checkpoint(&t, "session/ev-late").unwrap();
    assert_ne!(cp["session"]["state"], "ended", "{cp}");
    assert!(
        (cp["session"]["soc_pct"].as_f64().unwrap() - 73.0).abs() < 0.01,
        "{cp}"
    );
    wait_tree(node, "ev-late running in the tree", |tree| {
        tree.find(&second)
            .is_some_and(|c| c.state == ChildState::Running)
            && tree.find(&first).is_none()
    })
    .await;
    assert_eq!(node.segment("tx-0").unwrap().sessions, 2);
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_chargers_missing_power_goes_to_the_others() {
    let t = start(&site_toml(1, 4, "", "")).await;
    let node = &t.node;
    let seg = "tx-0";
    const TARGET: f64 = -20.0;
    // Discharging, the latest departure goes first: ev-3 on evse-3 carries the most.
    let hot = node.sim.chargers["evse-3"].clone();
    let others: Vec<_> = (0..3)
        .map(|i| node.sim.chargers[&format!("evse-{i}")].clone())
        .collect();
    let metered = || node.segment(seg).unwrap().telemetry.metered_kw;
    let r = node
        .request(request("r1", Scope::Segment(seg.into()), TARGET, 600.0))
        .await
        .unwrap();
    assert_eq!(r.not_acknowledged, 0, "{r:?}");
    wait(node, "at the target, evse-3 at full power", || {
        (metered() - TARGET).abs() <= 1.5 && hot.setpoint_kw() < -10.0
    })
    .await;

    // evse-3 overheats: it delivers at most 2 kW whatever it is told.
    hot.set_throttle(Some(2.0), node.shared.clock.now());
    wait(
        node,
        "evse-3's setpoint lowered and the target met again",
        || {
            let sp = hot.setpoint_kw();
            (-3.5..0.0).contains(&sp) && (metered() - TARGET).abs() <= 1.5
        },
    )
    .await;
    // Steady: after a second to settle, sampled over a second (ten cycles), evse-3 keeps a
    // setpoint near what it delivers and the loop holds the segment at the target.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut samples = Vec::new();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        samples.push((hot.setpoint_kw(), metered()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        samples.iter().all(|(sp, _)| (-3.5..0.0).contains(sp)),
        "evse-3 told {:?} kW",
        samples.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    let delivered = read(&t, &hot).power_kw;
    assert!(
        (-2.0 - 1e-6..=-1.0).contains(&delivered),
        "evse-3 delivers {delivered} kW"
    );
    let (lo, hi) = samples
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, m)| {
            (lo.min(*m), hi.max(*m))
        });
    // Within 1.5 kW of the target, and steady (a settled loop moves by far less than 1 kW
    // from cycle to cycle).
    assert!(
        (lo - TARGET).abs() <= 1.5 && (hi - TARGET).abs() <= 1.5 && hi - lo <= 1.0,
        "the segment did not hold {TARGET} kW: metered between {lo:.2} and {hi:.2} kW"
    );
    // The others carry the rest.
    let rest: f64 = others.iter().map(|c| read(&t, c).power_kw).sum();
    assert!(
        (rest - (TARGET - delivered)).abs() <= 1.5,
        "the others deliver {rest} kW of {TARGET} kW (evse-3: {delivered} kW)"
    );
    let told: f64 = others.iter().map(|c| c.setpoint_kw()).sum();
    assert!(told < -16.0, "the others are told {told} kW");
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_on_its_checkpoints_resumes() {
    let t = start(&site_toml(2, 2, "", "")).await;
    let chargers: Vec<String> = (0..4).map(|i| format!("evse-{i}")).collect();
    let r1 = t
        .node
        .request(request("before", Scope::Site, -10.0, 600.0))
        .await
        .unwrap();
    assert_eq!(r1.not_acknowledged, 0, "{r1:?}");
    let d1 = r1.dispatch;
    t.node.observe("tx-0", Fault::Quorum(false));
    assert_eq!(level(&t, "tx-0"), SafeState::ChargeOnly);
    wait(&t.node, "ChargeOnly checkpointed", || {
        checkpoint(&t, "safety/tx-0").is_some_and(|cp| {
            serde_json::from_value::<SafeState>(cp["level"].clone()).ok()
                == Some(SafeState::ChargeOnly)
        })
    })
    .await;
    // A few closed-loop revisions of the dispatch reach every device.
    wait(&t.node, "revisions applied", || {
        chargers
            .iter()
            .all(|c| link_key(&t, c).is_some_and(|k| k.dispatch == d1 && k.revision >= 5))
    })
    .await;

    // Stop; release the store; start again on the same directory.
    let TestNode { node, store, dir } = t;
    node.shutdown().await;
    let old_keys: Vec<(String, SetpointKey)> = chargers
        .iter()
        .map(|c| {
            let key = applied_key(&store, &node.shared.topology, c).unwrap();
            (c.clone(), key)
        })
        .collect();
    let topology = node.shared.topology.clone();
    store.close();
    drop(node);
    let started = Instant::now();
    let t = start_in(topology, dir).await;

    // The segment that was ChargeOnly starts ChargeOnly (restored, held); the other is normal.
    assert_eq!(level(&t, "tx-0"), SafeState::ChargeOnly);
    let causes = t.node.segment("tx-0").unwrap().causes;
    assert!(causes.contains(&FaultKey::Restored), "{causes:?}");
    assert_eq!(level(&t, "tx-1"), SafeState::Normal);

    // The new node's periodic rounds: the keys it sends before any new request.
    wait(&t.node, "the new node dispatches", || {
        t.node
            .segments()
            .iter()
            .all(|s| s.telemetry.last_key.is_some())
    })
    .await;
    let first_keys: Vec<(String, SetpointKey)> = t
        .node
        .segments()
        .iter()
        .map(|s| (s.id.clone(), s.telemetry.last_key.unwrap()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale_before_request = t
        .node
        .shared
        .metrics
        .setpoints
        .with_label_values(&["stale"])
        .get();

    // A new request gets a newer dispatch id, and every device takes it.
    let r2 = t
        .node
        .request(request("after", Scope::Site, -10.0, 600.0))
        .await
        .unwrap();
    assert!(r2.dispatch > d1, "{} after {d1}", r2.dispatch);
    assert!(!r2.repeat);
    assert_eq!(r2.not_acknowledged, 0, "{r2:?}");
    assert!(r2.segments.iter().all(|s| s.stale == 0), "{r2:?}");
    wait(&t.node, "every link checkpointed the new dispatch", || {
        chargers
            .iter()
            .all(|c| link_key(&t, c).is_some_and(|k| k.dispatch == r2.dispatch))
    })
    .await;
    for c in &chargers {
        assert_eq!(t.node.sim.chargers[c].older_writes(), 0, "{c}");
    }
    // The restored level is held for hold_s (1 s), then released.
    wait(&t.node, "tx-0 normal after the hold", || {
        level(&t, "tx-0") == SafeState::Normal
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Every key the new node sent is at least the key each device's link applied before the
    // restart: otherwise the links refuse the new node's setpoints as stale.
    let seg_of = |c: &str| {
        t.node
            .shared
            .topology
            .charger_segment(c)
            .unwrap()
            .to_string()
    };
    for (c, old) in &old_keys {
        let (_, sent) = first_keys.iter().find(|(s, _)| *s == seg_of(c)).unwrap();
        assert!(
            old <= sent,
            "after the restart {} sent {sent} to {c}, older than {old} applied before it",
            seg_of(c)
        );
    }
    assert_eq!(
        stale_before_request, 0,
        "setpoints refused as stale after the restart"
    );
    t.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_id_is_answered_without_writing_again() {
    // One-minute cycle: no control round runs between the posts.
    let toml = site_toml(1, 3, "", "").replace("cycle_ms = 100", "cycle_ms = 60000");
    let t = start(&toml).await;
    let node = &t.node;
    let chargers: Vec<_> = (0..3)
        .map(|i| node.sim.chargers[&format!("evse-{i}")].clone())
        .collect();
    let writes = || chargers.iter().map(|c| c.writes()).collect::<Vec<_>>();
    let seq = || checkpoint(&t, "site/dispatch_seq").and_then(|v| v.as_u64());

    let req = request("once", Scope::Site, -15.0, 600.0);
    let first = node.request(req.clone()).await.unwrap();
    assert_eq!(first.not_acknowledged, 0, "{first:?}");
    assert!(!first.repeat);
    let before = writes();
    assert!(before.iter().all(|w| *w > 0), "not written: {before:?}");
    assert_eq!(seq(), Some(first.dispatch));

    let again = node.request(req.clone()).await.unwrap();
    assert!(again.repeat, "{again:?}");
    assert_eq!(again.dispatch, first.dispatch);
    assert_eq!(again.revision, first.revision);
    assert_eq!(writes(), before, "a repeated request wrote the devices");
    assert_eq!(seq(), Some(first.dispatch), "a repeat took a dispatch id");

    // A third post of the same id, still nothing; a new id does dispatch and write.
    let third = node.request(req).await.unwrap();
    assert!(
        third.repeat && third.dispatch == first.dispatch,
        "{third:?}"
    );
    assert_eq!(writes(), before);
    let other = node
        .request(request("other", Scope::Site, -15.0, 600.0))
        .await
        .unwrap();
    assert!(!other.repeat);
    assert!(other.dispatch > first.dispatch, "{other:?}");
    let after = writes();
    assert!(
        after.iter().zip(&before).all(|(a, b)| a > b),
        "{before:?} -> {after:?}"
    );
    t.node.shutdown().await;
}
