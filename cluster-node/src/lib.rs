//! The cluster runtime: a node of a site run by several `gridvisor run` processes.
//!
//! It ties gridvisor-cluster's parts to one [`Node`]:
//!
//! - the mutual-TLS [`Transport`] carries [`Wire`] messages between nodes;
//! - the openraft [`Membership`] commits which nodes are up; the shard map
//!   ([`gridvisor_cluster::shard`]) places each transformer segment on one of them, its
//!   checkpoint replica on another;
//! - majority leases ([`gridvisor_cluster::lease`]): every node heartbeats every other; a node
//!   drives its segments while a majority confirms it, puts them in ChargeOnly when the
//!   confirmation gets old and stops them at the lease's end;
//! - the raft leader takes a silent (or released) node's segments over only when a majority
//!   released it (their promises ran out, so its lease ended), by committing its removal;
//!   it re-admits a node that is heard again;
//! - a node adopts a segment only when every other member's newest heartbeat, sent from a
//!   view at least as new as its own, says it does not drive that segment (the handback);
//! - checkpoints of a segment are copied to its replica before a write counts as durable,
//!   so a setpoint is acknowledged only once two nodes hold it ([`ClusterReplicator`]); the
//!   copies carry versions that no restart can make look old, one key's copies go one at a
//!   time, and a replica takes them only from the segment's owner in its own view, answering
//!   a stale or unauthorised copy with an error ([`replica`]).
//!
//! The state machine of a node's segments is decided by the pure [`plan::plan`] and carried
//! out by the reconcile pass, run every heartbeat and at every committed view:
//!
//! ```text
//!   not driven --(owner in the committed map, lease Driving, handback seen)--> adopt (ChargeOnly for the hold time)
//!   driven --(lease ChargeOnly)--> Quorum fault: ChargeOnly --(lease Driving)--> cleared
//!   driven --(lease Stopped, or the map moved it)--> release (devices to ChargeOnly, subtree stopped)
//! ```

pub mod config;
pub mod events;
pub mod network;
pub mod plan;
pub mod replica;
pub mod simnet;
#[cfg(test)]
mod wire_fuzz;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use gridvisor_actors::checkpoint::{CheckpointError, CheckpointStore, Replicator};
use gridvisor_actors::config::Topology;
use gridvisor_actors::ladder::Fault;
use gridvisor_actors::runtime::Node;
use gridvisor_cluster::lease::{Grantor, Holder, LeaseState, NodeId, Takeover};
use gridvisor_cluster::membership::{
    Command, CommittedView, Membership, MembershipConfig, RaftRequest, RaftResponse, RaftRpc,
    RpcError, Storage,
};
use gridvisor_cluster::shard;
use gridvisor_cluster::tls::NodeTls;
use gridvisor_cluster::transport::{
    Inbound, Security, SendError, Transport, TransportConfig, TransportLimits,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use config::ClusterConfig;
use events::{ClusterEvent, Events};
use network::Network;
use plan::{PeerSeen, ReleaseReason};
use replica::{Refusal, ReplicaBook, Sequencer, Version};

/// Longest wait for a replica to confirm a checkpoint write.
pub const REPLICATION_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for a request forwarded to another node's API.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls waiting for an answer, at most (beyond, a call fails at once: a peer that answers
/// nothing cannot make this node hold unbounded state).
pub const MAX_PENDING_CALLS: usize = 65_536;
/// Calls from other nodes handled at once (beyond, a call is answered `Failed`).
pub const MAX_INBOUND_CALLS: usize = 256;
/// Checkpoint copies one resync keeps in flight to one node (well under the receiver's
/// [`MAX_INBOUND_CALLS`]).
pub const RESYNC_IN_FLIGHT: usize = 32;
/// Largest HTTP answer a node forwards to another (under the transport's frame limit).
pub const MAX_FORWARDED_ANSWER: usize = 15 * 1024 * 1024;
/// Replication round trips kept for the latency figures in [`ClusterStatus`].
pub const REPLICATION_SAMPLES: usize = 4096;
/// Inbound messages buffered between the transport and the runtime.
pub const INBOUND_QUEUE: usize = 8_192;

/// Which API a forwarded HTTP call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Api {
    /// The grid API.
    Grid,
    /// The admin API.
    Admin,
}

/// Who a forwarded call came from: the node, and the client identity it authenticated.
#[derive(Debug, Clone)]
pub struct ForwardedFrom {
    /// The forwarding node.
    pub node: String,
    /// Its client's identity.
    pub caller: Option<String>,
}

/// This node's own APIs, as the runtime sees them: the binary's HTTP routers answer the calls
/// other nodes forward here (the runtime knows nothing of HTTP; see the binary's
/// `cluster::route`). Answers over [`MAX_FORWARDED_ANSWER`] bytes must be `Reply::Failed`.
pub trait LocalApi: Send + Sync + 'static {
    /// Answer one forwarded call from this node's own state only (never forward it again).
    fn answer(
        &self,
        api: Api,
        method: String,
        path: String,
        body: Vec<u8>,
        from: ForwardedFrom,
    ) -> BoxFuture<'static, Reply>;
}

/// A request to another node that expects a [`Reply`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Call {
    /// An openraft RPC ([`RaftRequest::encode`]).
    Raft(Vec<u8>),
    /// Store a replica of a checkpoint (`None`: removed).
    Replicate {
        /// The checkpoint key.
        key: String,
        /// Its encoded value.
        value: Option<Vec<u8>>,
        /// Its version ([`replica::Version`]: epoch, the sender's boot number, its copy
        /// counter). A replica stores only a strictly newer version than it holds and
        /// refuses the others ([`Refusal::Stale`]): calls can arrive out of order, and an
        /// old owner's late copy must not replace the new owner's.
        version: Version,
    },
    /// An HTTP request for the other node's own API (it answers from its own state only).
    Http {
        /// Which API.
        api: Api,
        /// GET, POST, ...
        method: String,
        /// The path and query.
        path: String,
        /// The body.
        body: Vec<u8>,
        /// The identity of the client that called the forwarding node (it authenticated and
        /// authorised the call): the owner audits the command and records the keep-alive as
        /// theirs.
        caller: Option<String>,
    },
}

/// The answer to a [`Call`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// An openraft answer ([`RaftResponse::encode`]).
    Raft(Vec<u8>),
    /// The replica stored it, or why it did not.
    Replicated(Result<(), Refusal>),
    /// The HTTP answer.
    Http {
        /// Status code.
        status: u16,
        /// Body (JSON).
        body: Vec<u8>,
    },
    /// The call could not be handled.
    Failed(String),
}

/// Every message between nodes (in versioned envelopes, see gridvisor_transports::envelope).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Wire {
    /// A lease heartbeat round of the sender, with what it drives now and the committed
    /// view it has applied (its epoch).
    Heartbeat {
        /// The round.
        round: u64,
        /// The sender's committed epoch.
        epoch: u64,
        /// The segments the sender drives.
        driving: Vec<String>,
    },
    /// The receiver acknowledges a round: it promises the sender its segments for a lease.
    HeartbeatAck {
        /// The round.
        round: u64,
    },
    /// The raft leader asks the receiver to release `holder` (vote for a takeover).
    ReleaseAsk {
        /// The node to take over.
        holder: String,
    },
    /// The answer to [`Wire::ReleaseAsk`].
    ReleaseVote {
        /// The node to take over.
        holder: String,
        /// Whether the receiver released it.
        granted: bool,
    },
    /// A call.
    Call {
        /// Correlates the reply.
        id: u64,
        /// The call.
        call: Call,
    },
    /// A reply.
    Reply {
        /// The call's id.
        id: u64,
        /// The reply.
        reply: Reply,
    },
}

/// The lease bookkeeping of this node (all pure state machines, fed here).
struct LeaseBook {
    holder: Holder,
    grantor: Grantor,
    peers: BTreeMap<String, PeerSeen>,
    takeovers: BTreeMap<String, Takeover>,
}

/// A segment as the cluster sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SegmentPlacement {
    /// The segment.
    pub segment: String,
    /// The member the committed map gives it to.
    pub owner: Option<String>,
    /// Its checkpoint replica.
    pub replica: Option<String>,
    /// Whether this node drives it now.
    pub driven_here: bool,
    /// `driving`, `charge_only` (its owner's lease is ageing or the owner is silent: no
    /// discharge until it is driven again), `handoff` (moving: nobody drives it yet).
    pub state: &'static str,
}

/// The cluster as this node sees it (for `/api/tree`, `/api/ready` and the metrics).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// This node.
    pub node: String,
    /// Every configured node.
    pub nodes: Vec<String>,
    /// The committed up members.
    pub members: BTreeSet<String>,
    /// The committed epoch.
    pub epoch: u64,
    /// The raft leader, if known.
    pub leader: Option<String>,
    /// This node's lease.
    pub lease: LeaseState,
    /// The lease came back while segments were held: the lease gate commands nothing until
    /// they are all released (and adopted again through the handback), whatever `lease` says.
    pub lapsed: bool,
    /// Peers with an authenticated link up.
    pub connected: BTreeSet<String>,
    /// Members not heard from within `charge_only_after`.
    pub silent: BTreeSet<String>,
    /// Every segment.
    pub segments: Vec<SegmentPlacement>,
    /// What checkpoint replication adds to a write (and so to a setpoint's
    /// acknowledgement): the newest round trips to the replica.
    pub replication: ReplicationLatency,
}

/// Percentiles of the newest replication round trips.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReplicationLatency {
    /// Round trips measured (at most [`REPLICATION_SAMPLES`]).
    pub samples: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

impl ReplicationLatency {
    fn of(samples: &std::collections::VecDeque<f64>) -> ReplicationLatency {
        let mut v: Vec<f64> = samples.iter().copied().collect();
        if v.is_empty() {
            return ReplicationLatency::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        ReplicationLatency {
            samples: v.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: v[v.len() - 1],
        }
    }
}

/// How a node is wired to the others ([`Cluster::start_on`]).
pub struct Wiring {
    /// Sends to the other nodes.
    pub network: Arc<dyn Network>,
    /// What the other nodes sent (bounded: [`INBOUND_QUEUE`] for the mTLS transport).
    pub inbound: mpsc::Receiver<Inbound<Wire>>,
    /// Where this node listens, if on a real network.
    pub listen: Option<std::net::SocketAddr>,
    /// Where raft keeps its state.
    pub storage: Storage,
    /// The events file ([`events::EVENTS_FILE`] in the data dir), if any.
    pub events_file: Option<std::path::PathBuf>,
}

/// A running cluster node. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    ids: BTreeMap<String, NodeId>,
    node: Arc<Node>,
    topology: Arc<Topology>,
    /// Every segment of the site.
    segment_ids: BTreeSet<String>,
    /// Every message to other nodes goes through this ([`network`]).
    transport: Arc<dyn Network>,
    /// Where this node listens for the others (None on a simulated network).
    listen: Option<std::net::SocketAddr>,
    membership: OnceLock<Membership>,
    /// The runtime's clock origin (tokio's clock: paused in a simulation).
    started: tokio::time::Instant,
    book: Mutex<LeaseBook>,
    pending: Mutex<HashMap<u64, (String, oneshot::Sender<Reply>)>>,
    next_id: AtomicU64,
    proposing: AtomicBool,
    /// Answers the calls other nodes forward to this node's APIs (set by the binary).
    local_api: OnceLock<Arc<dyn LocalApi>>,
    kick: Notify,
    stopping: AtomicBool,
    status: watch::Sender<Option<ClusterStatus>>,
    /// Segments this node put in ChargeOnly for its ageing lease.
    quorum_flagged: Mutex<BTreeSet<String>>,
    metrics: ClusterMetrics,
    /// Segments released here whose checkpoints the new owner has not confirmed yet: still
    /// announced as driven, so the new owner waits for them (the handback).
    handing_over: Mutex<BTreeSet<String>>,
    /// The epoch whose releases the reconcile pass has carried out: what heartbeats announce.
    applied_epoch: AtomicU64,
    /// Versions and per-key turns of this node's checkpoint copies.
    sequencer: Sequencer,
    /// The versions of the copies this node holds for others, per key.
    held: ReplicaBook,
    /// Bounds the calls from other nodes handled at once.
    inbound_calls: Arc<tokio::sync::Semaphore>,
    /// What the lease allows at this moment (read by the site's dispatch rounds).
    gate: Arc<LeaseGate>,
    /// Held by a reconcile pass; shutdown takes it to wait for the pass.
    pass: tokio::sync::Mutex<()>,
    /// The newest replication round trips, ms.
    replication: Mutex<std::collections::VecDeque<f64>>,
    /// Placement of the owned segments' replicas when last resynchronised.
    replicas: Mutex<BTreeMap<String, Option<String>>>,
    /// The typed events ([`events`]): adoptions, releases, lease changes, takeovers.
    events: Events,
    /// The lease state last published (a change is an event).
    last_lease: Mutex<Option<LeaseState>>,
}

/// The cluster's series on the node's /metrics.
struct ClusterMetrics {
    lease: prometheus::IntGauge,
    members: prometheus::IntGauge,
    epoch: prometheus::IntGauge,
    leader: prometheus::IntGauge,
    peer_up: prometheus::IntGaugeVec,
    driven: prometheus::IntGauge,
    replication: prometheus::Histogram,
    handoffs: prometheus::IntCounterVec,
    /// This node's copies that a replica refused, by reason.
    refused: prometheus::IntCounterVec,
    /// Copies from other nodes that this node refused, by reason.
    refusals: prometheus::IntCounterVec,
}

impl ClusterMetrics {
    fn register(r: &prometheus::Registry) -> Result<ClusterMetrics, prometheus::Error> {
        use prometheus::{HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts};
        let lease = IntGauge::new(
            "gridvisor_cluster_lease_state",
            "This node's lease: 0 driving, 1 charge-only (no majority confirmed it lately), 2 stopped",
        )?;
        let members = IntGauge::new("gridvisor_cluster_members", "Committed up members")?;
        let epoch = IntGauge::new(
            "gridvisor_cluster_epoch",
            "Log index of the last committed membership change",
        )?;
        let leader = IntGauge::new(
            "gridvisor_cluster_leader",
            "1 while this node is the raft leader",
        )?;
        let peer_up = IntGaugeVec::new(
            Opts::new(
                "gridvisor_cluster_peer_connected",
                "1 while the authenticated link to the peer is up",
            ),
            &["peer"],
        )?;
        let driven = IntGauge::new(
            "gridvisor_cluster_segments_driven",
            "Segments this node drives",
        )?;
        let replication = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "gridvisor_cluster_replication_seconds",
                "Checkpoint replication round trip to the segment's replica (added to a setpoint's acknowledgement)",
            )
            .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0]),
        )?;
        let handoffs = IntCounterVec::new(
            Opts::new(
                "gridvisor_cluster_handoffs_total",
                "Segments adopted or released by this node",
            ),
            &["direction"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "gridvisor_cluster_replication_refused_total",
                "Checkpoint copies of this node that the replica refused (the write failed), by reason",
            ),
            &["reason"],
        )?;
        let refusals = IntCounterVec::new(
            Opts::new(
                "gridvisor_cluster_replica_refusals_total",
                "Checkpoint copies from other nodes that this node refused, by reason",
            ),
            &["reason"],
        )?;
        r.register(Box::new(refused.clone()))?;
        r.register(Box::new(refusals.clone()))?;
        r.register(Box::new(lease.clone()))?;
        r.register(Box::new(members.clone()))?;
        r.register(Box::new(epoch.clone()))?;
        r.register(Box::new(leader.clone()))?;
        r.register(Box::new(peer_up.clone()))?;
        r.register(Box::new(driven.clone()))?;
        r.register(Box::new(replication.clone()))?;
        r.register(Box::new(handoffs.clone()))?;
        Ok(ClusterMetrics {
            lease,
            members,
            epoch,
            leader,
            peer_up,
            driven,
            replication,
            handoffs,
            refused,
            refusals,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The lease as the dispatch rounds see it: checked synchronously at every round, so a node
/// whose lease ran out commands nothing even before its reconcile pass releases the segments.
struct LeaseGate {
    started: tokio::time::Instant,
    /// The lease's end, ms since `started` (0: no lease).
    deadline_ms: AtomicU64,
    /// When ChargeOnly begins, ms since `started`.
    charge_only_ms: AtomicU64,
    /// The lease lapsed while segments were held: nothing is driven until the reconcile pass
    /// released them all (they come back through the handback).
    lapsed: AtomicBool,
}

impl LeaseGate {
    fn update(&self, holder: &Holder, lease: &gridvisor_cluster::lease::LeaseConfig) {
        if let (Some(c), Some(end)) = (holder.confirmed_at(), holder.lease_end()) {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            self.charge_only_ms
                .store(ms(c + lease.charge_only_after), Ordering::Release);
            self.deadline_ms.store(ms(end), Ordering::Release);
        }
    }
}

impl gridvisor_actors::runtime::DriveGate for LeaseGate {
    fn drive(&self) -> gridvisor_actors::runtime::Drive {
        use gridvisor_actors::runtime::Drive;
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if self.lapsed.load(Ordering::Acquire) || now >= self.deadline_ms.load(Ordering::Acquire) {
            Drive::No
        } else if now >= self.charge_only_ms.load(Ordering::Acquire) {
            Drive::ChargeOnly
        } else {
            Drive::Yes
        }
    }
}

/// Removes a call's entry from `pending` however the call ends (a dropped future included).
struct PendingGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.pending).remove(&self.id);
    }
}

/// The raft network: calls over the cluster transport.
struct RaftOverTransport(std::sync::Weak<Inner>);

impl RaftRpc for RaftOverTransport {
    fn call(
        &self,
        to: &str,
        req: RaftRequest,
    ) -> BoxFuture<'static, Result<RaftResponse, RpcError>> {
        let inner = self.0.clone();
        let to = to.to_string();
        Box::pin(async move {
            let failed = |reason: String| RpcError::Failed {
                node: to.clone(),
                reason,
            };
            let inner = inner
                .upgrade()
                .ok_or_else(|| failed("the node is stopping".into()))?;
            let bytes = req.encode().map_err(|e| failed(e.to_string()))?;
            let timeout = MembershipConfig::default().rpc_timeout;
            match inner.call(&to, Call::Raft(bytes), timeout).await {
                Ok(Reply::Raft(b)) => RaftResponse::decode(&b).map_err(|e| failed(e.to_string())),
                Ok(other) => Err(failed(format!("unexpected reply {other:?}"))),
                Err(CallError::Unreachable(reason)) => Err(RpcError::Unreachable {
                    node: to.clone(),
                    reason,
                }),
                Err(CallError::Timeout(after)) => Err(RpcError::Timeout {
                    node: to.clone(),
                    after,
                }),
                Err(e) => Err(failed(e.to_string())),
            }
        })
    }
}

/// Why a call to another node failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No link to it.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Too many calls waiting.
    #[error("{MAX_PENDING_CALLS} calls are already waiting for answers")]
    TooMany,
}

/// The checkpoint replication of a cluster node: a segment's keys go to its replica.
pub struct ClusterReplicator(std::sync::Weak<Inner>);

impl Replicator for ClusterReplicator {
    fn replicate(
        &self,
        key: String,
        _value: Option<Vec<u8>>,
    ) -> BoxFuture<'static, Result<(), CheckpointError>> {
        // The version and the key's turn are taken now, when the write is queued, so that
        // one key's copies go, and compare, in the order its writes were made. The copy
        // carries the key's committed value when it is sent (see `replica`).
        let inner = self.0.upgrade();
        let ticket = inner.as_ref().and_then(|i| {
            let segment = i.segment_of_key(&key)?;
            let (version, turn) = i.sequencer.next(&key, || i.view().epoch);
            Some((segment, version, turn))
        });
        Box::pin(async move {
            let (Some(inner), Some((segment, version, mut turn))) = (inner, ticket) else {
                // Node-level keys (the dispatch counter, the boot number) stay on their node.
                return Ok(());
            };
            let result = (inner.copy(&segment, &key, (version, &mut turn), None)).await;
            if let Err(e) = &result {
                tracing::warn!(segment, key, %version, error = %e, "a checkpoint copy failed: the write is not acknowledged");
            }
            result
        })
    }
}

impl Inner {
    /// Send `key`'s committed local value at `version` to `target` (None: the segment's copy
    /// target when the copy goes), once the key's previous copy ended (at most
    /// [`replica::PREDECESSOR_WAIT`]). A refusal fails the write, is counted, and marks the
    /// segment for a full resync.
    async fn copy(
        &self,
        segment: &str,
        key: &str,
        (version, turn): (Version, &mut replica::Turn),
        target: Option<&str>,
    ) -> Result<(), CheckpointError> {
        let fail = |reason: String| CheckpointError::Replication {
            key: key.to_string(),
            reason,
        };
        if !turn.wait(replica::PREDECESSOR_WAIT).await {
            tracing::warn!(
                key,
                "the previous copy of this key is still running; this one goes first"
            );
        }
        let Some(target) = target
            .map(str::to_string)
            .or_else(|| self.copy_target(segment))
        else {
            // A cluster of one member has nowhere to copy to.
            return Ok(());
        };
        let value = (self.node.shared.store.get_raw(key))
            .map_err(|e| fail(format!("reading the committed value: {e}")))?;
        let started = Instant::now();
        let call = Call::Replicate {
            key: key.to_string(),
            value,
            version,
        };
        match self.call(&target, call, REPLICATION_TIMEOUT).await {
            Ok(Reply::Replicated(Ok(()))) => {
                self.record_replication(started.elapsed());
                Ok(())
            }
            Ok(Reply::Replicated(Err(refusal))) => {
                self.metrics
                    .refused
                    .with_label_values(&[refusal.label()])
                    .inc();
                if refusal.wants_resync() {
                    // The next reconcile pass copies every key of the segment again.
                    lock(&self.replicas).remove(segment);
                }
                Err(fail(format!("{target} refused it: {refusal}")))
            }
            Ok(other) => Err(fail(format!("{target}: unexpected reply {other:?}"))),
            Err(e) => Err(fail(format!("{target}: {e}"))),
        }
    }

    fn record_replication(&self, took: Duration) {
        let mut r = lock(&self.replication);
        if r.len() == REPLICATION_SAMPLES {
            r.pop_front();
        }
        r.push_back(took.as_secs_f64() * 1e3);
        self.metrics.replication.observe(took.as_secs_f64());
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn me(&self) -> &str {
        &self.config.me.name
    }

    fn view(&self) -> CommittedView {
        match self.membership.get() {
            Some(m) => m.view().borrow().clone(),
            None => CommittedView {
                members: BTreeSet::new(),
                epoch: 0,
                leader: None,
            },
        }
    }

    fn placement(&self, segment: &str) -> Option<shard::Placement> {
        let members: Vec<String> = self.view().members.into_iter().collect();
        shard::place(&members, segment)
    }

    /// Where this node's writes of `segment` are copied: its replica, or, while this node
    /// still drives a segment the committed map gave to another node, that new owner.
    fn copy_target(&self, segment: &str) -> Option<String> {
        let p = self.placement(segment)?;
        let target = if p.owner == self.me() {
            p.replica?
        } else {
            p.owner
        };
        (target != self.me()).then_some(target)
    }

    /// The segment a checkpoint key belongs to (None: a node-level key).
    fn segment_of_key(&self, key: &str) -> Option<String> {
        let (kind, rest) = key.split_once('/')?;
        match kind {
            "applied" | "safety" => self
                .node
                .shared
                .segments
                .contains_key(rest)
                .then(|| rest.to_string()),
            "session" => {
                let v = self.node.shared.vehicle(rest)?;
                self.node
                    .shared
                    .charger_segment(&v.charger)
                    .map(str::to_string)
            }
            _ => None,
        }
    }

    /// Every checkpoint key of `segment`.
    fn keys_of_segment(&self, segment: &str) -> Vec<String> {
        let mut keys = vec![format!("applied/{segment}"), format!("safety/{segment}")];
        if let Some((_, s)) = self.topology.segments().find(|(_, s)| s.id == segment) {
            for c in &s.chargers {
                for v in self.topology.vehicles.iter().filter(|v| v.charger == c.id) {
                    keys.push(format!("session/{}", v.id));
                }
            }
        }
        keys
    }

    async fn call(&self, to: &str, call: Call, timeout: Duration) -> Result<Reply, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.pending);
            if p.len() >= MAX_PENDING_CALLS {
                return Err(CallError::TooMany);
            }
            p.insert(id, (to.to_string(), tx));
        }
        let _guard = PendingGuard { inner: self, id };
        if let Err(e) = self.transport.send(to, Wire::Call { id, call }) {
            return Err(CallError::Unreachable(e.to_string()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CallError::Unreachable("the node is stopping".into())),
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }

    fn send(&self, to: &str, msg: Wire) {
        match self.transport.send(to, msg) {
            Ok(()) | Err(SendError::NotConnected { .. }) => {}
            Err(e) => tracing::debug!(peer = %to, error = %e, "cluster message not sent"),
        }
    }

    /// One inbound message.
    fn on_message(self: &Arc<Self>, from: String, msg: Wire) {
        let now = self.now();
        let Some(&from_id) = self.ids.get(&from) else {
            return;
        };
        match msg {
            Wire::Heartbeat {
                round,
                epoch,
                driving,
            } => {
                let ack = {
                    let mut b = lock(&self.book);
                    b.peers.insert(
                        from.clone(),
                        PeerSeen {
                            heard: now,
                            epoch,
                            driving: driving.into_iter().collect(),
                        },
                    );
                    b.grantor.on_heartbeat(from_id, now)
                };
                if ack {
                    self.send(&from, Wire::HeartbeatAck { round });
                }
            }
            Wire::HeartbeatAck { round } => {
                let mut b = lock(&self.book);
                let before = b.holder.state(now);
                b.holder.on_ack(from_id, round);
                // A lease that ended and came back while segments were held: another node
                // may have driven them meanwhile. They go back through the handback.
                if before == LeaseState::Stopped
                    && b.holder.state(now) != LeaseState::Stopped
                    && !self.node.owned_segments().is_empty()
                {
                    self.gate.lapsed.store(true, Ordering::Release);
                    self.kick.notify_one();
                }
                self.gate.update(&b.holder, &self.config.lease);
            }
            Wire::ReleaseAsk { holder } => {
                let granted = match self.ids.get(&holder) {
                    Some(&h) => lock(&self.book).grantor.release(h, now),
                    None => false,
                };
                self.send(&from, Wire::ReleaseVote { holder, granted });
            }
            Wire::ReleaseVote { holder, granted } => {
                if granted {
                    if let Some(t) = lock(&self.book).takeovers.get_mut(&holder) {
                        t.on_vote(from_id);
                    }
                }
            }
            Wire::Reply { id, reply } => {
                let mut pending = lock(&self.pending);
                // Only the node the call went to can answer it.
                if pending.get(&id).is_some_and(|(to, _)| *to == from) {
                    if let Some((_, tx)) = pending.remove(&id) {
                        let _ = tx.send(reply);
                    }
                }
            }
            Wire::Call { id, call } => {
                let Ok(permit) = self.inbound_calls.clone().try_acquire_owned() else {
                    let busy = format!("{MAX_INBOUND_CALLS} calls are being handled already");
                    self.send(
                        &from,
                        Wire::Reply {
                            id,
                            reply: Reply::Failed(busy),
                        },
                    );
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    let reply = me.answer(&from, call).await;
                    drop(permit);
                    if let Err(e) = me.transport.send(&from, Wire::Reply { id, reply }) {
                        // Most likely an answer over the frame limit: say so rather than let
                        // the caller wait for its timeout.
                        let reply = Reply::Failed(format!("the answer could not be sent: {e}"));
                        me.send(&from, Wire::Reply { id, reply });
                    }
                });
            }
        }
    }

    async fn answer(&self, from: &str, call: Call) -> Reply {
        match call {
            Call::Raft(bytes) => {
                let Some(m) = self.membership.get() else {
                    return Reply::Failed("membership not started".into());
                };
                let req = match RaftRequest::decode(&bytes) {
                    Ok(r) => r,
                    Err(e) => return Reply::Failed(e.to_string()),
                };
                match m.handle(from, req).await.encode() {
                    Ok(b) => Reply::Raft(b),
                    Err(e) => Reply::Failed(e.to_string()),
                }
            }
            Call::Replicate {
                key,
                value,
                version,
            } => {
                let result = self.store_replica(from, key, value, version).await;
                if let Err(refusal) = &result {
                    self.metrics
                        .refusals
                        .with_label_values(&[refusal.label()])
                        .inc();
                    tracing::debug!(from, %version, reason = %refusal, "refused a checkpoint copy");
                }
                Reply::Replicated(result)
            }
            Call::Http {
                api,
                method,
                path,
                body,
                caller,
            } => {
                let Some(local) = self.local_api.get() else {
                    return Reply::Failed("the APIs are not up yet".into());
                };
                let from = ForwardedFrom {
                    node: from.to_owned(),
                    caller,
                };
                local.answer(api, method, path, body, from).await
            }
        }
    }

    /// Store a checkpoint copy from `from` if `from` may send it and it is newer than the
    /// one held (see [`replica`]); otherwise say why not.
    async fn store_replica(
        &self,
        from: &str,
        key: String,
        value: Option<Vec<u8>>,
        version: Version,
    ) -> Result<(), Refusal> {
        let segment =
            (self.segment_of_key(&key)).ok_or_else(|| Refusal::NotSegmentKey(key.clone()))?;
        let view = self.view();
        let members: Vec<String> = view.members.iter().cloned().collect();
        let placement = shard::place(&members, &segment);
        let driven_here = self.node.owned_segments().contains(&segment)
            || lock(&self.handing_over).contains(&segment);
        let sender_announces =
            (lock(&self.book).peers.get(from)).is_some_and(|p| p.driving.contains(&segment));
        replica::authorize(&replica::Arrival {
            me: self.me(),
            from,
            segment: &segment,
            placement: placement.as_ref(),
            epoch: view.epoch,
            driven_here,
            sender_announces,
        })?;
        // One copy of a key at a time: checked, stored, and only then recorded as held.
        let slot = self.held.slot(&key);
        let mut held = slot.lock().await;
        replica::admit(&key, *held, version)?;
        (self.node.shared.store.put_replica(&key, value).await)
            .map_err(|e| Refusal::Store(e.to_string()))?;
        *held = Some(version);
        Ok(())
    }

    /// One heartbeat period: confirm the lease, and on the leader take over or re-admit.
    fn tick(self: &Arc<Self>) {
        let now = self.now();
        let view = self.view();
        let mut driving = self.node.owned_segments();
        driving.extend(lock(&self.handing_over).iter().cloned());
        let driving: Vec<String> = driving.into_iter().collect();
        let epoch = self.applied_epoch.load(Ordering::Acquire);
        let round = {
            let mut b = lock(&self.book);
            let r = b.holder.heartbeat(now);
            self.gate.update(&b.holder, &self.config.lease);
            r
        };
        for peer in self.config.peers() {
            self.send(
                &peer.name,
                Wire::Heartbeat {
                    round,
                    epoch,
                    driving: driving.clone(),
                },
            );
        }
        if self.membership.get().is_some_and(|m| m.is_leader()) {
            self.lead(now, &view);
        } else {
            lock(&self.book).takeovers.clear();
        }
        self.publish(now, &view);
    }

    /// The leader's part: take over members that went silent (or that this node released),
    /// re-admit nodes heard again.
    fn lead(self: &Arc<Self>, now: Duration, view: &CommittedView) {
        let suspect_after = self.config.lease.charge_only_after;
        let grace = now < self.config.lease.grantor_promise();
        let mut propose = None;
        let mut asks = Vec::new();
        {
            let mut b = lock(&self.book);
            let cluster = self.config.nodes.len();
            for peer in self.config.peers() {
                let p = peer.name.clone();
                let pid = self.ids[&p];
                let silent = b
                    .peers
                    .get(&p)
                    .is_none_or(|s| now.saturating_sub(s.heard) > suspect_after);
                if view.members.contains(&p) {
                    if (silent && !grace) || b.grantor.is_released(pid) {
                        let my_vote = b.grantor.release(pid, now);
                        let me = self.ids[self.me()];
                        let t = b
                            .takeovers
                            .entry(p.clone())
                            .or_insert_with(|| Takeover::new(pid, cluster));
                        if my_vote {
                            t.on_vote(me);
                        }
                        if t.granted() {
                            propose.get_or_insert(Command::Remove { node: p.clone() });
                        } else {
                            asks.push(p.clone());
                        }
                    } else {
                        b.takeovers.remove(&p);
                    }
                } else {
                    b.takeovers.remove(&p);
                    if !silent {
                        propose.get_or_insert(Command::Admit { node: p.clone() });
                    }
                }
            }
        }
        for holder in asks {
            for peer in self.config.peers().filter(|n| n.name != holder) {
                self.send(
                    &peer.name,
                    Wire::ReleaseAsk {
                        holder: holder.clone(),
                    },
                );
            }
        }
        if let Some(cmd) = propose {
            if !self.proposing.swap(true, Ordering::AcqRel) {
                self.events.emit(match &cmd {
                    Command::Remove { node } => ClusterEvent::TakeoverProposed {
                        holder: node.clone(),
                    },
                    Command::Admit { node } => ClusterEvent::AdmitProposed {
                        admitted: node.clone(),
                    },
                });
                let me = self.clone();
                tokio::spawn(async move {
                    if let Some(m) = me.membership.get() {
                        tracing::info!(command = ?cmd, "proposing a membership change");
                        match m.propose(cmd.clone()).await {
                            Ok(v) => {
                                tracing::info!(command = ?cmd, epoch = v.epoch, members = ?v.members, "membership change committed")
                            }
                            Err(e) => {
                                tracing::warn!(command = ?cmd, error = %e, "membership change not committed")
                            }
                        }
                    }
                    me.proposing.store(false, Ordering::Release);
                    me.kick.notify_one();
                });
            }
        }
    }

    fn lease_state(&self, now: Duration) -> LeaseState {
        lock(&self.book).holder.state(now)
    }

    fn publish(&self, now: Duration, view: &CommittedView) {
        let lease = self.lease_state(now);
        let before = lock(&self.last_lease).replace(lease);
        if let Some(from) = before.filter(|b| *b != lease) {
            self.events.emit(ClusterEvent::Lease { from, to: lease });
        }
        let owned = self.node.owned_segments();
        let members: Vec<String> = view.members.iter().cloned().collect();
        let b = lock(&self.book);
        let silent: BTreeSet<String> = view
            .members
            .iter()
            .filter(|m| m.as_str() != self.me())
            .filter(|m| {
                b.peers.get(*m).is_none_or(|s| {
                    now.saturating_sub(s.heard) > self.config.lease.charge_only_after
                })
            })
            .cloned()
            .collect();
        let segments = self
            .topology
            .segments()
            .map(|(_, s)| {
                let p = shard::place(&members, &s.id);
                let owner = p.as_ref().map(|p| p.owner.clone());
                let driven_here = owned.contains(&s.id);
                let driven_elsewhere = b
                    .peers
                    .iter()
                    .any(|(n, seen)| !silent.contains(n) && seen.driving.contains(&s.id));
                let state = if driven_here {
                    if lease == LeaseState::Driving {
                        "driving"
                    } else {
                        "charge_only"
                    }
                } else if owner.as_ref().is_some_and(|o| silent.contains(o)) {
                    "charge_only"
                } else if driven_elsewhere {
                    "driving"
                } else {
                    "handoff"
                };
                SegmentPlacement {
                    segment: s.id.clone(),
                    owner,
                    replica: p.and_then(|p| p.replica),
                    driven_here,
                    state,
                }
            })
            .collect();
        drop(b);
        let m = &self.metrics;
        m.lease.set(match lease {
            LeaseState::Driving => 0,
            LeaseState::ChargeOnly => 1,
            LeaseState::Stopped => 2,
        });
        m.members.set(view.members.len() as i64);
        m.epoch.set(view.epoch as i64);
        m.leader
            .set(i64::from(view.leader.as_deref() == Some(self.me())));
        let connected = self.transport.connected();
        for p in self.config.peers() {
            m.peer_up
                .with_label_values(&[p.name.as_str()])
                .set(i64::from(connected.contains(&p.name)));
        }
        m.driven.set(owned.len() as i64);
        let status = ClusterStatus {
            node: self.me().to_string(),
            nodes: self.config.names(),
            members: view.members.clone(),
            epoch: view.epoch,
            leader: view.leader.clone(),
            lease,
            lapsed: self.gate.lapsed.load(Ordering::Acquire),
            connected,
            silent,
            segments,
            replication: ReplicationLatency::of(&lock(&self.replication)),
        };
        self.status.send_replace(Some(status));
    }

    /// Bring the node's driven segments in line with the committed map and the lease: the
    /// decisions are [`plan::plan`]'s, on one snapshot; this pass carries them out.
    async fn reconcile(self: &Arc<Self>) {
        let _pass = self.pass.lock().await;
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let view = self.view();
        let lease = self.lease_state(self.now());
        let lapsed = self.gate.lapsed.load(Ordering::Acquire);
        let actions = self.plan(&view, lease, lapsed);
        for r in &actions.release {
            self.release(r).await;
        }
        for s in &actions.quorum_lost {
            if lock(&self.quorum_flagged).insert(s.clone()) {
                tracing::warn!(segment = %s, "no majority confirmed the lease lately: ChargeOnly");
                self.events
                    .emit(ClusterEvent::QuorumLost { segment: s.clone() });
                self.node.observe(s, Fault::Quorum(false));
            }
        }
        for s in &actions.quorum_back {
            if lock(&self.quorum_flagged).remove(s) {
                tracing::info!(segment = %s, "the lease is confirmed again");
                self.events
                    .emit(ClusterEvent::QuorumBack { segment: s.clone() });
                self.node.observe(s, Fault::Quorum(true));
            }
        }
        if lapsed && self.node.owned_segments().is_empty() {
            self.gate.lapsed.store(false, Ordering::Release);
        }
        // Hand the checkpoints of released segments to their new owners; only then do the
        // heartbeats stop announcing them.
        for h in &actions.handovers {
            let done = match &h.copy_to {
                None => true,
                Some(o) => self.resync(&h.segment, o).await,
            };
            if done && lock(&self.handing_over).remove(&h.segment) {
                self.events.emit(ClusterEvent::HandedOver {
                    segment: h.segment.clone(),
                    to: h.copy_to.clone(),
                });
            }
        }
        // The releases this view asks for are done: heartbeats may say so.
        self.applied_epoch.store(view.epoch, Ordering::Release);
        for s in &actions.adopt {
            // A view or a lease that changed during the pass decides nothing more.
            if self.view().epoch != view.epoch
                || self.lease_state(self.now()) != LeaseState::Driving
            {
                break;
            }
            self.adopt(s, view.epoch).await;
        }
        self.resync_replicas().await;
    }

    /// The snapshot [`plan::plan`] decides from, and its decision.
    fn plan(&self, view: &CommittedView, lease: LeaseState, lapsed: bool) -> plan::Actions {
        let owned = self.node.owned_segments();
        let handing_over = lock(&self.handing_over).clone();
        let quorum_flagged = lock(&self.quorum_flagged).clone();
        let peers = lock(&self.book).peers.clone();
        plan::plan(&plan::Snapshot {
            me: self.me(),
            view,
            segments: &self.segment_ids,
            lease,
            lapsed,
            owned: &owned,
            handing_over: &handing_over,
            quorum_flagged: &quorum_flagged,
            peers: &peers,
        })
    }

    async fn release(&self, r: &plan::Release) {
        let s = &r.segment;
        tracing::info!(segment = %s, why = r.reason.describe(), "releasing a segment");
        if r.hand_over {
            // Announced as driven until the new owner has its checkpoints.
            lock(&self.handing_over).insert(s.clone());
        }
        self.release_segment(s, r.reason).await;
        lock(&self.quorum_flagged).remove(s);
        lock(&self.replicas).remove(s);
    }

    /// Release `s` on the node, with its events (the driving interval ends at `Released`).
    async fn release_segment(&self, s: &str, reason: ReleaseReason) {
        let segment = s.to_string();
        self.events.emit(ClusterEvent::Releasing {
            segment: segment.clone(),
            reason,
        });
        match self.node.release_segment(s).await {
            Ok(()) => {
                self.metrics.handoffs.with_label_values(&["release"]).inc();
                self.events.emit(ClusterEvent::Released { segment, reason });
            }
            Err(e) => {
                tracing::warn!(segment = %s, error = %e, "release failed");
                let error = e.to_string();
                self.events
                    .emit(ClusterEvent::ReleaseFailed { segment, error });
            }
        }
    }

    async fn adopt(&self, s: &str, epoch: u64) {
        tracing::info!(segment = %s, epoch, "adopting a segment");
        let segment = s.to_string();
        // Before anything is driven: the driving interval begins here.
        self.events.emit(ClusterEvent::Adopting {
            segment: segment.clone(),
            epoch,
        });
        // `Quorum(true)`: a majority is there (a cause left from an earlier lease that aged
        // here must not hold the adopted segment in ChargeOnly).
        self.node.observe(s, Fault::Quorum(true));
        match self.node.adopt_segment(s).await {
            Ok(()) => {
                self.metrics.handoffs.with_label_values(&["adopt"]).inc();
                tracing::info!(segment = %s, epoch, "segment adopted");
                self.events.emit(ClusterEvent::Adopted { segment, epoch });
            }
            Err(e) => {
                tracing::warn!(segment = %s, error = %e, "adoption failed");
                let error = e.to_string();
                self.events
                    .emit(ClusterEvent::AdoptionFailed { segment, error });
            }
        }
    }

    /// Replicas that changed (a member left or came back) get the segment's state now, not
    /// only at its next write.
    async fn resync_replicas(&self) {
        for s in self.node.owned_segments() {
            let replica = self.copy_target(&s);
            let stale = lock(&self.replicas).get(&s) != Some(&replica);
            if stale {
                if let Some(r) = replica.clone() {
                    if !self.resync(&s, &r).await {
                        continue;
                    }
                }
                lock(&self.replicas).insert(s, replica);
            }
        }
    }

    /// Copy every checkpoint of `segment` to `target`, as new versions; false if any copy
    /// failed. The copies go out together, at most [`RESYNC_IN_FLIGHT`] at a time: one
    /// after another, a slow link's round trip times the segment's keys held the reconcile
    /// pass (and with it every adoption) for seconds.
    async fn resync(&self, segment: &str, target: &str) -> bool {
        use futures::stream::{self, StreamExt};
        let mut copies = Vec::new();
        for key in self.keys_of_segment(segment) {
            match self.node.shared.store.get_raw(&key) {
                Ok(Some(_)) => {}
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(key, error = %e, "cannot read a checkpoint to copy");
                    return false;
                }
            }
            // Versions and turns are taken in key order, before anything is sent.
            let (version, turn) = self.sequencer.next(&key, || self.view().epoch);
            copies.push((key, version, turn));
        }
        let results: Vec<bool> = stream::iter(copies)
            .map(|(key, version, mut turn)| async move {
                match (self.copy(segment, &key, (version, &mut turn), Some(target))).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(key, target, error = %e, "copy failed; retried next period");
                        false
                    }
                }
            })
            .buffer_unordered(RESYNC_IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().all(|ok| ok)
    }
}

impl Cluster {
    /// Join the cluster described by `config` with `node` (started with no segments:
    /// `NodeOptions::segments = Some(empty)`); `store` gets the cluster's replicator.
    pub async fn start(
        config: ClusterConfig,
        node: Arc<Node>,
        store: &CheckpointStore,
        data: &std::path::Path,
    ) -> Result<Cluster, String> {
        let tls = NodeTls::load(&config.tls, &config.me.name).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|e| format!("cluster listener {}: {e}", config.bind))?;
        let (tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        let transport = Transport::start(
            TransportConfig {
                node: config.me.name.clone(),
                peers: config
                    .peers()
                    .map(|p| (p.name.clone(), p.cluster.clone()))
                    .collect(),
                cookie: config.cookie.clone(),
                settings: config.shared_settings(),
                security: Security::MutualTls(tls),
                limits: TransportLimits::default(),
            },
            listener,
            tx,
        )
        .map_err(|e| e.to_string())?;
        let wiring = Wiring {
            listen: Some(transport.local_addr()),
            network: Arc::new(transport),
            inbound,
            storage: Storage::Redb(data.join("membership.redb")),
            events_file: Some(data.join(events::EVENTS_FILE)),
        };
        Cluster::start_on(config, node, store, wiring).await
    }

    /// Join the cluster over any [`Network`] (the simulated one included): `wiring` says how
    /// messages go and come, where raft keeps its state and where the events go.
    pub async fn start_on(
        config: ClusterConfig,
        node: Arc<Node>,
        store: &CheckpointStore,
        wiring: Wiring,
    ) -> Result<Cluster, String> {
        // Before the replicator is set: every copy of this process carries this boot number.
        let boot = replica::bump_boot(store)
            .await
            .map_err(|e| format!("the boot number in the checkpoint store: {e}"))?;
        let Wiring {
            network: transport,
            inbound: rx,
            listen,
            storage,
            events_file,
        } = wiring;
        let ids: BTreeMap<String, NodeId> = config
            .names()
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, i as NodeId))
            .collect();
        let me_id = ids[&config.me.name];
        let n = config.nodes.len();
        let book = LeaseBook {
            holder: Holder::new(me_id, n, config.lease).map_err(|e| e.to_string())?,
            grantor: Grantor::new(me_id, config.lease).map_err(|e| e.to_string())?,
            peers: BTreeMap::new(),
            takeovers: BTreeMap::new(),
        };
        let topology = node.shared.topology.clone();
        let started = tokio::time::Instant::now();
        let events = Events::new(&config.me.name, events_file.as_deref())?;
        let metrics = ClusterMetrics::register(&node.shared.prometheus)
            .map_err(|e| format!("cluster metrics: {e}"))?;
        let inner = Arc::new(Inner {
            metrics,
            ids,
            node,
            segment_ids: topology.segments().map(|(_, s)| s.id.clone()).collect(),
            topology,
            transport,
            listen,
            membership: OnceLock::new(),
            started,
            book: Mutex::new(book),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            proposing: AtomicBool::new(false),
            local_api: OnceLock::new(),
            kick: Notify::new(),
            stopping: AtomicBool::new(false),
            status: watch::channel(None).0,
            quorum_flagged: Mutex::new(BTreeSet::new()),
            replicas: Mutex::new(BTreeMap::new()),
            replication: Mutex::new(std::collections::VecDeque::new()),
            handing_over: Mutex::new(BTreeSet::new()),
            applied_epoch: AtomicU64::new(0),
            sequencer: Sequencer::new(boot),
            held: ReplicaBook::default(),
            inbound_calls: Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND_CALLS)),
            gate: Arc::new(LeaseGate {
                started,
                deadline_ms: AtomicU64::new(0),
                charge_only_ms: AtomicU64::new(0),
                lapsed: AtomicBool::new(false),
            }),
            pass: tokio::sync::Mutex::new(()),
            events,
            last_lease: Mutex::new(None),
            config,
        });
        // Inbound first: raft's first calls are answered as soon as the membership exists.
        tokio::spawn(inbound_loop(Arc::downgrade(&inner), rx));
        let membership = Membership::start(
            &inner.config.me.name,
            &inner.config.names(),
            storage,
            Arc::new(RaftOverTransport(Arc::downgrade(&inner))),
            MembershipConfig::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let _ = inner.membership.set(membership);
        store.set_replicator(Arc::new(ClusterReplicator(Arc::downgrade(&inner))));
        let _ = inner.node.shared.drive_gate.set(inner.gate.clone());
        tokio::spawn(tick_loop(Arc::downgrade(&inner)));
        tokio::spawn(reconcile_loop(Arc::downgrade(&inner)));
        tokio::spawn(view_loop(Arc::downgrade(&inner)));
        tracing::info!(node = %inner.config.me.name, listen = ?inner.listen, boot = inner.sequencer.boot(), "cluster node started");
        let boot = inner.sequencer.boot();
        inner.events.emit(ClusterEvent::Started { boot });
        Ok(Cluster { inner })
    }

    /// Set what answers the calls forwarded from other nodes (the binary's grid and admin
    /// APIs); until then such a call is answered `Failed`.
    pub fn set_local_api(&self, api: Arc<dyn LocalApi>) {
        let _ = self.inner.local_api.set(api);
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        self.inner.me()
    }

    /// The node's typed events from now on ([`events`]; also in its data dir's
    /// [`events::EVENTS_FILE`]).
    pub fn events(&self) -> events::EventSubscriber {
        self.inner.events.subscribe()
    }

    /// The cluster as this node sees it (None before the first heartbeat period).
    pub fn status(&self) -> Option<ClusterStatus> {
        self.inner.status.borrow().clone()
    }

    /// Every configured node's name.
    pub fn nodes(&self) -> Vec<String> {
        self.inner.config.names()
    }

    /// Where this node listens for the others (None on a simulated network).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.listen
    }

    /// The committed view.
    pub fn view(&self) -> CommittedView {
        self.inner.view()
    }

    /// The owner of `segment` in the committed map.
    pub fn owner(&self, segment: &str) -> Option<String> {
        self.inner.placement(segment).map(|p| p.owner)
    }

    /// The node (for local answers).
    pub fn node(&self) -> &Arc<Node> {
        &self.inner.node
    }

    /// Call node `to`'s API on behalf of `caller` (the identity this node authenticated).
    pub async fn forward(
        &self,
        to: &str,
        api: Api,
        method: &str,
        path: &str,
        body: Vec<u8>,
        caller: Option<&str>,
    ) -> Result<(u16, Vec<u8>), String> {
        let call = Call::Http {
            api,
            method: method.to_string(),
            path: path.to_string(),
            body,
            caller: caller.map(str::to_owned),
        };
        match self.inner.call(to, call, FORWARD_TIMEOUT).await {
            Ok(Reply::Http { status, body }) => Ok((status, body)),
            Ok(Reply::Failed(e)) => Err(format!("node {to}: {e}")),
            Ok(other) => Err(format!("node {to}: unexpected reply {other:?}")),
            Err(e) => Err(format!("node {to}: {e}")),
        }
    }

    /// Stop: release every driven segment through ChargeOnly, then leave the transport and
    /// the raft group.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.kick.notify_one();
        // A pass under way finishes first (it could adopt after the releases below).
        let _pass = self.inner.pass.lock().await;
        for s in self.inner.node.owned_segments() {
            (self.inner)
                .release_segment(&s, ReleaseReason::Shutdown)
                .await;
        }
        // Tell the others at once that nothing is driven here any more.
        let epoch = self.inner.applied_epoch.load(Ordering::Acquire);
        for peer in self.inner.config.peers() {
            self.inner.send(
                &peer.name,
                Wire::Heartbeat {
                    round: 0,
                    epoch,
                    driving: Vec::new(),
                },
            );
        }
        if let Some(m) = self.inner.membership.get() {
            m.shutdown().await;
        }
        self.inner.transport.shutdown();
    }
}

async fn inbound_loop(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<Inbound<Wire>>) {
    while let Some(Inbound { from, msg }) = rx.recv().await {
        let Some(i) = inner.upgrade() else { return };
        i.on_message(from, msg);
    }
}

async fn tick_loop(inner: std::sync::Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => i.config.heartbeat,
        None => return,
    };
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(i) = inner.upgrade() else { return };
        if i.stopping.load(Ordering::Acquire) {
            return;
        }
        i.tick();
        i.kick.notify_one();
    }
}

async fn reconcile_loop(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.stopping.load(Ordering::Acquire) {
            return;
        }
        i.reconcile().await;
        // A kick during the pass is kept as a permit: the next pass follows at once.
        i.kick.notified().await;
    }
}

async fn view_loop(inner: std::sync::Weak<Inner>) {
    let Some(mut rx) = inner
        .upgrade()
        .and_then(|i| i.membership.get().map(|m| m.view()))
    else {
        return;
    };
    let mut members = rx.borrow().members.clone();
    while rx.changed().await.is_ok() {
        let view = rx.borrow().clone();
        let Some(i) = inner.upgrade() else { return };
        // A node the committed membership took back is acknowledged again.
        for m in view.members.difference(&members) {
            if let Some(&id) = i.ids.get(m) {
                lock(&i.book).grantor.readmit(id);
            }
        }
        tracing::info!(epoch = view.epoch, members = ?view.members, leader = ?view.leader, "committed view");
        i.events.emit(ClusterEvent::View {
            epoch: view.epoch,
            members: view.members.iter().cloned().collect(),
            leader: view.leader.clone(),
        });
        members = view.members.clone();
        i.kick.notify_one();
    }
}
