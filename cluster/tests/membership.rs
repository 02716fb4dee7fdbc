//! The membership group in process: members talk through direct calls (each request and
//! answer goes through the wire encoding) over a network the tests partition by cutting
//! chosen pairs. Every wait is on a watch (view or raft metrics) with a bounded deadline.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use gridvisor_cluster::membership::{
    Command, CommittedView, Membership, MembershipConfig, MembershipConfigError, MembershipError,
    ProposeError, RaftRequest, RaftResponse, RaftRpc, RpcError, Storage,
};
use tokio::time::{timeout, Instant};

/// The longest any wait may take: generous, the machine is shared and small.
const WAIT: Duration = Duration::from_secs(10);
/// Most attempts at a proposal when leadership moves under it.
const PROPOSE_ATTEMPTS: usize = 10;

fn config() -> MembershipConfig {
    MembershipConfig {
        heartbeat: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(150),
        election_timeout_max: Duration::from_millis(300),
        rpc_timeout: Duration::from_millis(150),
        propose_timeout: Duration::from_secs(2),
        ..MembershipConfig::default()
    }
}

fn names(ns: &[&str]) -> Vec<String> {
    ns.iter().map(|s| s.to_string()).collect()
}

fn set(ns: &[&str]) -> BTreeSet<String> {
    ns.iter().map(|s| s.to_string()).collect()
}

/// The in-process network: who is reachable by name, and which pairs are cut.
#[derive(Default)]
struct Net {
    nodes: Mutex<HashMap<String, Membership>>,
    cut: Mutex<HashSet<(String, String)>>,
    /// InstallSnapshot chunks delivered.
    snapshot_chunks: AtomicUsize,
}

impl Net {
    fn is_cut(&self, a: &str, b: &str) -> bool {
        let cut = self.cut.lock().unwrap();
        cut.contains(&(a.to_string(), b.to_string()))
            || cut.contains(&(b.to_string(), a.to_string()))
    }

    /// Cuts `node` from every other node in `others`.
    fn isolate(&self, node: &str, others: &[&str]) {
        let mut cut = self.cut.lock().unwrap();
        for o in others {
            if *o != node {
                cut.insert((node.to_string(), o.to_string()));
            }
        }
    }

    fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }

    fn add(&self, m: &Membership) {
        self.nodes
            .lock()
            .unwrap()
            .insert(m.me().to_string(), m.clone());
    }

    fn remove(&self, name: &str) {
        self.nodes.lock().unwrap().remove(name);
    }
}

struct Rpc {
    net: Arc<Net>,
    from: String,
}

impl RaftRpc for Rpc {
    fn call(
        &self,
        to: &str,
        req: RaftRequest,
    ) -> BoxFuture<'static, Result<RaftResponse, RpcError>> {
        let net = Arc::clone(&self.net);
        let from = self.from.clone();
        let to = to.to_string();
        Box::pin(async move {
            let unreachable = |reason: &str| RpcError::Unreachable {
                node: to.clone(),
                reason: reason.to_string(),
            };
            if net.is_cut(&from, &to) {
                return Err(unreachable("partitioned"));
            }
            let target = net.nodes.lock().unwrap().get(&to).cloned();
            let Some(target) = target else {
                return Err(unreachable("not running"));
            };
            let failed = |e: &dyn std::fmt::Display| RpcError::Failed {
                node: to.clone(),
                reason: e.to_string(),
            };
            let bytes = req.encode().map_err(|e| failed(&e))?;
            let req = RaftRequest::decode(&bytes).map_err(|e| failed(&e))?;
            if matches!(req, RaftRequest::InstallSnapshot(_)) {
                net.snapshot_chunks.fetch_add(1, Ordering::Relaxed);
            }
            let resp = target.handle(&from, req).await;
            // The answer is lost too if the link was cut meanwhile.
            if net.is_cut(&from, &to) {
                return Err(unreachable("partitioned"));
            }
            let bytes = resp.encode().map_err(|e| failed(&e))?;
            RaftResponse::decode(&bytes).map_err(|e| failed(&e))
        })
    }
}

async fn start(net: &Arc<Net>, me: &str, voters: &[String], storage: Storage) -> Membership {
    let rpc = Arc::new(Rpc {
        net: Arc::clone(net),
        from: me.to_string(),
    });
    let m = Membership::start(me, voters, storage, rpc, config())
        .await
        .expect("start");
    net.add(&m);
    m
}

async fn cluster(net: &Arc<Net>, ns: &[&str]) -> Vec<Membership> {
    let voters = names(ns);
    let mut out = Vec::new();
    for n in ns {
        out.push(start(net, n, &voters, Storage::InMemory).await);
    }
    out
}

/// Waits until `m`'s view satisfies `pred`.
async fn wait_view(
    m: &Membership,
    what: &str,
    pred: impl FnMut(&CommittedView) -> bool,
) -> CommittedView {
    let mut rx = m.view();
    let got = match timeout(WAIT, rx.wait_for(pred)).await {
        Ok(Ok(v)) => Some(v.clone()),
        Ok(Err(_)) => panic!("{}: view closed while waiting for {what}", m.me()),
        Err(_) => None,
    };
    got.unwrap_or_else(|| {
        panic!(
            "{}: no {what} within {WAIT:?}; view {:?}",
            m.me(),
            *rx.borrow()
        )
    })
}

/// Waits until every node of `ms` names the same leader, one of them, and that one knows it.
async fn wait_leader(ms: &[&Membership]) -> Membership {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut leaders = BTreeSet::new();
        for m in ms {
            leaders.insert(m.view().borrow().leader.clone());
        }
        if leaders.len() == 1 {
            if let Some(Some(l)) = leaders.first() {
                if let Some(m) = ms.iter().find(|m| m.me() == l) {
                    if m.is_leader() {
                        return (*m).clone();
                    }
                }
            }
        }
        // Something must still change: wait for any node's raft metrics to move.
        let waits = ms.iter().map(|m| {
            let mut rx = m.raft_metrics();
            Box::pin(async move {
                let _ = rx.changed().await;
            })
        });
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no agreed leader among {:?} within {WAIT:?}",
            ms.iter().map(|m| m.me()).collect::<Vec<_>>()
        );
        let _ = timeout(left, futures::future::select_all(waits)).await;
    }
}

/// Proposes `cmd` on the agreed leader of `ms`, again if leadership moved meanwhile.
async fn propose(ms: &[&Membership], cmd: Command) -> CommittedView {
    let mut last = None;
    for _ in 0..PROPOSE_ATTEMPTS {
        let leader = wait_leader(ms).await;
        match leader.propose(cmd.clone()).await {
            Ok(v) => return v,
            Err(e @ (ProposeError::NotLeader { .. } | ProposeError::Timeout(_))) => last = Some(e),
            Err(e) => panic!("propose {cmd:?}: {e}"),
        }
    }
    panic!("propose {cmd:?} failed {PROPOSE_ATTEMPTS} times, last {last:?}");
}

/// Waits until every node of `ms` shows `members` at `epoch`.
async fn converge(ms: &[&Membership], members: &BTreeSet<String>, epoch: u64) {
    for m in ms {
        wait_view(m, &format!("members {members:?} at epoch {epoch}"), |v| {
            &v.members == members && v.epoch == epoch
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_remove_and_admit() {
    let net = Arc::new(Net::default());
    let ms = cluster(&net, &["a", "b", "c"]).await;
    let all: Vec<&Membership> = ms.iter().collect();
    for m in &all {
        let v = m.view().borrow().clone();
        assert_eq!((v.members, v.epoch), (set(&["a", "b", "c"]), 0));
    }
    let leader = wait_leader(&all).await;

    let v = propose(&all, Command::Remove { node: "c".into() }).await;
    assert_eq!(v.members, set(&["a", "b"]));
    assert!(v.epoch > 0);
    converge(&all, &v.members, v.epoch).await;

    let v2 = propose(&all, Command::Admit { node: "c".into() }).await;
    assert_eq!(v2.members, set(&["a", "b", "c"]));
    assert!(v2.epoch > v.epoch);
    converge(&all, &v2.members, v2.epoch).await;

    // An Admit of a member already up commits as a no-op: same members, same epoch.
    let v3 = propose(&all, Command::Admit { node: "c".into() }).await;
    assert_eq!(
        (v3.members.clone(), v3.epoch),
        (v2.members.clone(), v2.epoch)
    );
    assert_eq!(
        leader.propose(Command::Remove { node: "zz".into() }).await,
        Err(ProposeError::UnknownNode("zz".into()))
    );
    for m in &ms {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_cannot_commit_and_converges_after_heal() {
    let net = Arc::new(Net::default());
    let ms = cluster(&net, &["a", "b", "c"]).await;
    let all: Vec<&Membership> = ms.iter().collect();
    let old = wait_leader(&all).await;
    let old_name = old.me().to_string();
    net.isolate(&old_name, &["a", "b", "c"]);

    // The old leader alone cannot commit.
    let r = old.propose(Command::Remove { node: "a".into() }).await;
    assert!(
        matches!(
            r,
            Err(ProposeError::Timeout(_) | ProposeError::NotLeader { .. })
        ),
        "an isolated leader committed: {r:?}"
    );
    assert_eq!(old.view().borrow().epoch, 0);

    // The majority elects another leader and removes the old one.
    let majority: Vec<&Membership> = ms.iter().filter(|m| m.me() != old_name).collect();
    let v = propose(
        &majority,
        Command::Remove {
            node: old_name.clone(),
        },
    )
    .await;
    let expect: BTreeSet<String> = set(&["a", "b", "c"])
        .into_iter()
        .filter(|n| *n != old_name)
        .collect();
    assert_eq!(v.members, expect);
    converge(&majority, &v.members, v.epoch).await;
    assert_eq!(
        old.view().borrow().epoch,
        0,
        "the cut-off node saw a commit"
    );

    net.heal();
    converge(&all, &v.members, v.epoch).await;
    let new_leader = wait_leader(&all).await;
    assert_ne!(new_leader.me(), old_name);
    for m in &ms {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_redb_keeps_vote_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let file = |n: &str| Storage::Redb(dir.path().join(format!("{n}.redb")));
    let net = Arc::new(Net::default());
    let voters = names(&["a", "b", "c"]);
    let mut ms = Vec::new();
    for n in ["a", "b", "c"] {
        ms.push(start(&net, n, &voters, file(n)).await);
    }
    let all: Vec<&Membership> = ms.iter().collect();
    let leader = wait_leader(&all).await;
    let follower = ms.iter().find(|m| m.me() != leader.me()).unwrap().clone();
    let f = follower.me().to_string();
    let other = ["a", "b", "c"]
        .into_iter()
        .find(|n| *n != f && *n != leader.me())
        .unwrap();

    let v = propose(&all, Command::Remove { node: other.into() }).await;
    converge(&all, &v.members, v.epoch).await;

    // Cut off, the follower campaigns in vain: its term climbs past the leader's.
    let leader_term = leader.term().await.unwrap();
    net.isolate(&f, &["a", "b", "c"]);
    let mut metrics = follower.raft_metrics();
    timeout(
        WAIT,
        metrics.wait_for(|m| m.current_term >= leader_term + 2),
    )
    .await
    .expect("the isolated follower campaigns")
    .unwrap();
    drop(metrics);
    net.remove(&f);
    let term_before = follower.term().await.unwrap();
    assert!(term_before >= leader_term + 2);
    follower.shutdown().await;
    drop(follower);

    // Another voter list: refused, naming both.
    let rpc = Arc::new(Rpc {
        net: Arc::clone(&net),
        from: f.clone(),
    });
    let wrong = names(&["a", "b", "c", "d"]);
    let err = Membership::start(&f, &wrong, file(&f), rpc, config())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        MembershipError::VoterMismatch {
            stored: voters.clone(),
            given: wrong
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("\"d\"") && msg.contains("[\"a\", \"b\", \"c\"]"),
        "{msg}"
    );

    // Same list, still cut off: it has only its own file, which has its vote and log.
    let again = start(&net, &f, &voters, file(&f)).await;
    net.isolate(&f, &["a", "b", "c"]);
    let term = again.term().await.unwrap();
    assert!(
        term >= term_before,
        "term {term} after restart, {term_before} before"
    );
    converge(&[&again], &v.members, v.epoch).await;

    // Back in the network it follows the others again.
    net.heal();
    let rest: Vec<Membership> = ms.into_iter().filter(|m| m.me() != f).collect();
    let all: Vec<&Membership> = rest.iter().chain(std::iter::once(&again)).collect();
    let v2 = propose(&all, Command::Admit { node: other.into() }).await;
    converge(&all, &v2.members, v2.epoch).await;
    for m in &all {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_propose_names_the_leader() {
    let net = Arc::new(Net::default());
    let ms = cluster(&net, &["a", "b", "c"]).await;
    let all: Vec<&Membership> = ms.iter().collect();
    let mut attempts = 0;
    loop {
        let leader = wait_leader(&all).await;
        let follower = ms.iter().find(|m| m.me() != leader.me()).unwrap();
        assert!(!follower.is_leader());
        match follower.propose(Command::Remove { node: "a".into() }).await {
            Err(ProposeError::NotLeader { leader: Some(l) }) if l == leader.me() => break,
            // Leadership moved between the two looks: look again (bounded).
            other => {
                attempts += 1;
                assert!(attempts < PROPOSE_ATTEMPTS, "follower's propose: {other:?}");
            }
        }
    }
    for m in &ms {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_commits_alone() {
    let dir = tempfile::tempdir().unwrap();
    let net = Arc::new(Net::default());
    let voters = names(&["solo"]);
    let path = dir.path().join("solo.redb");
    let m = start(&net, "solo", &voters, Storage::Redb(path.clone())).await;
    wait_view(&m, "itself as leader", |v| {
        v.leader.as_deref() == Some("solo")
    })
    .await;
    let v = m
        .propose(Command::Remove {
            node: "solo".into(),
        })
        .await
        .unwrap();
    assert!(v.members.is_empty());
    let v = m
        .propose(Command::Admit {
            node: "solo".into(),
        })
        .await
        .unwrap();
    assert_eq!(v.members, set(&["solo"]));
    m.shutdown().await;
    net.remove("solo");

    // And it restarts from its file alone.
    let m = start(&net, "solo", &voters, Storage::Redb(path)).await;
    let got = wait_view(&m, "the committed state", |x| x.epoch == v.epoch).await;
    assert_eq!(got.members, v.members);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_by_snapshot() {
    let net = Arc::new(Net::default());
    let voters = names(&["a", "b", "c"]);
    let mut ms = Vec::new();
    for n in ["a", "b", "c"] {
        let rpc = Arc::new(Rpc {
            net: Arc::clone(&net),
            from: n.to_string(),
        });
        let cfg = MembershipConfig {
            snapshot_every: 2,
            ..config()
        };
        let m = Membership::start(n, &voters, Storage::InMemory, rpc, cfg)
            .await
            .unwrap();
        net.add(&m);
        ms.push(m);
    }
    let all: Vec<&Membership> = ms.iter().collect();
    let leader = wait_leader(&all).await;
    let lagging = ms.iter().find(|m| m.me() != leader.me()).unwrap().clone();
    net.isolate(lagging.me(), &["a", "b", "c"]);
    let majority: Vec<&Membership> = ms.iter().filter(|m| m.me() != lagging.me()).collect();
    let mut v = None;
    for _ in 0..3 {
        propose(
            &majority,
            Command::Remove {
                node: lagging.me().into(),
            },
        )
        .await;
        v = Some(
            propose(
                &majority,
                Command::Admit {
                    node: lagging.me().into(),
                },
            )
            .await,
        );
    }
    let v = v.unwrap();
    let mut metrics = majority[0].raft_metrics();
    timeout(WAIT, metrics.wait_for(|m| m.purged.is_some()))
        .await
        .expect("the log is purged")
        .unwrap();
    net.heal();
    converge(&all, &v.members, v.epoch).await;
    assert!(
        net.snapshot_chunks.load(Ordering::Relaxed) > 0,
        "the lagging follower caught up without a snapshot"
    );
    for m in &ms {
        m.shutdown().await;
    }
}

#[test]
fn config_validation() {
    assert_eq!(MembershipConfig::default().validate(), Ok(()));
    let c = MembershipConfig {
        election_timeout_min: Duration::from_millis(1200),
        ..MembershipConfig::default()
    };
    assert!(matches!(
        c.validate(),
        Err(MembershipConfigError::ElectionRange { .. })
    ));
    let c = MembershipConfig {
        heartbeat: Duration::from_millis(300),
        ..MembershipConfig::default()
    };
    assert!(matches!(
        c.validate(),
        Err(MembershipConfigError::HeartbeatTooSlow { .. })
    ));
    let c = MembershipConfig {
        rpc_timeout: Duration::ZERO,
        ..MembershipConfig::default()
    };
    assert_eq!(
        c.validate(),
        Err(MembershipConfigError::TooShort {
            field: "rpc_timeout",
            value: Duration::ZERO
        })
    );
}

#[tokio::test]
async fn bad_voter_lists_are_refused() {
    let net = Arc::new(Net::default());
    let rpc = || {
        Arc::new(Rpc {
            net: Arc::clone(&net),
            from: "a".into(),
        })
    };
    let r = Membership::start("a", &[], Storage::InMemory, rpc(), config()).await;
    assert_eq!(r.unwrap_err(), MembershipError::NoVoters);
    let r = Membership::start(
        "a",
        &names(&["a", "b", "a"]),
        Storage::InMemory,
        rpc(),
        config(),
    )
    .await;
    assert_eq!(r.unwrap_err(), MembershipError::DuplicateVoter("a".into()));
    let r = Membership::start("x", &names(&["a", "b"]), Storage::InMemory, rpc(), config()).await;
    assert!(matches!(r.unwrap_err(), MembershipError::NotAVoter { .. }));
}

#[tokio::test]
async fn inbound_rpcs_must_come_from_who_they_claim() {
    use openraft::raft::VoteRequest;
    use openraft::Vote;

    let net = Arc::new(Net::default());
    let voters = names(&["a", "b", "c"]);
    let a = start(&net, "a", &voters, Storage::InMemory).await;
    // "b" is raft id 1; a vote request from "b" claiming to be candidate 2 ("c") is refused.
    let forged = RaftRequest::Vote(VoteRequest::new(Vote::new(5, 2), None));
    assert!(matches!(
        a.handle("b", forged.clone()).await,
        RaftResponse::Error(_)
    ));
    // So is anything from a node that is not a voter.
    assert!(matches!(
        a.handle("zz", forged).await,
        RaftResponse::Error(_)
    ));
    // The genuine one is answered.
    let genuine = RaftRequest::Vote(VoteRequest::new(Vote::new(5, 1), None));
    assert!(matches!(
        a.handle("b", genuine).await,
        RaftResponse::Vote(_)
    ));
    a.shutdown().await;
}
