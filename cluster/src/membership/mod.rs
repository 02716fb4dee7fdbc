//! The committed membership: an embedded openraft group over the configured nodes that
//! commits which of them are "up". The shard map places transformer segments on the up
//! members, so every node must see the same set at the same epoch, whatever crashes,
//! partitions and leader changes happen.
//!
//! - Every configured node is a raft voter, always: raft's own membership never changes, so
//!   quorum is a majority of the configured nodes. "Up" is application state, the set the
//!   committed [`Command`]s build ([`types::AppliedState`]); removing a node that is down
//!   does not shrink the quorum, so a minority can never commit alone.
//! - A voter's raft id is its index in the sorted voter list, so the list must be the same
//!   on every node; the store keeps it and [`Membership::start`] refuses a different one.
//! - Every node initializes the group with the same voters on a fresh store: openraft writes
//!   the same first entry on each, so it does not matter who starts first.
//! - [`Storage::Redb`] fsyncs vote, log, committed index and snapshot (see [`store`]): a node
//!   killed with -9 restarts without forgetting its vote or its log, which Raft's safety
//!   needs.
//! - The network is the runtime's [`RaftRpc`] (mutual TLS in production, direct calls in the
//!   tests); inbound RPCs come in through [`Membership::handle`].

mod network;
mod store;
pub mod types;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{ClientWriteError, InitializeError, InstallSnapshotError, RaftError};
use openraft::{BasicNode, Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use types::{
    AppliedState, Command, CommittedView, RaftNodeId, RaftRequest, RaftResponse, TypeConfig,
    WireError,
};

/// The raft cluster name (it only appears in openraft's logs and metrics).
const CLUSTER_NAME: &str = "gridvisor-membership";
/// How long [`Membership::shutdown`] waits for the raft tasks to let go of the store file.
pub const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The timing of the membership group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often the leader sends heartbeats; also openraft's bound on one AppendEntries, so
    /// it must exceed the longest round trip between nodes that must still commit.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time between `election_timeout_min` and
    /// `election_timeout_max` starts an election (the randomness breaks ties).
    pub election_timeout_min: Duration,
    /// See `election_timeout_min`.
    pub election_timeout_max: Duration,
    /// The longest wait for one RPC's answer (openraft's own deadline applies if shorter);
    /// also the bound on one snapshot chunk.
    pub rpc_timeout: Duration,
    /// The longest [`Membership::propose`] waits for its command to commit and apply.
    pub propose_timeout: Duration,
    /// Log entries applied between two snapshots. The state is a handful of names, so a
    /// snapshot is cheap; the log after it is purged, and a follower further behind receives
    /// the snapshot.
    pub snapshot_every: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            // openraft 0.9 bounds every AppendEntries (heartbeats and entries alike) by the
            // heartbeat interval: a follower whose round trip is longer never acknowledges,
            // and with one node down the majority cannot commit (a 100 ms interval stalled
            // the takeover behind 100 ms of link delay; configs/chaos/cluster/combined.toml).
            // 250 ms takes round trips up to a quarter second. Leader liveness is the
            // election timeout's, and the cluster's own 100 ms lease heartbeats are separate.
            heartbeat: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(600),
            election_timeout_max: Duration::from_millis(1200),
            rpc_timeout: Duration::from_millis(300),
            propose_timeout: Duration::from_secs(2),
            snapshot_every: 1000,
        }
    }
}

/// A [`MembershipConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipConfigError {
    /// openraft counts in whole milliseconds.
    #[error("{field} is {value:?}; it must be at least 1 ms")]
    TooShort {
        /// The field.
        field: &'static str,
        /// Its value.
        value: Duration,
    },
    /// The election range is empty.
    #[error("election_timeout_min ({min:?}) must be shorter than election_timeout_max ({max:?})")]
    ElectionRange {
        /// election_timeout_min
        min: Duration,
        /// election_timeout_max
        max: Duration,
    },
    /// Followers would start elections between heartbeats of a healthy leader.
    #[error(
        "heartbeat ({heartbeat:?}) must be shorter than half of election_timeout_min \
         ({election_timeout_min:?}): a follower must miss two heartbeats before it elects"
    )]
    HeartbeatTooSlow {
        /// heartbeat
        heartbeat: Duration,
        /// election_timeout_min
        election_timeout_min: Duration,
    },
    /// No snapshot interval.
    #[error("snapshot_every must be at least 1")]
    ZeroSnapshotEvery,
}

impl MembershipConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), MembershipConfigError> {
        for (field, value) in [
            ("heartbeat", self.heartbeat),
            ("election_timeout_min", self.election_timeout_min),
            ("election_timeout_max", self.election_timeout_max),
            ("rpc_timeout", self.rpc_timeout),
            ("propose_timeout", self.propose_timeout),
        ] {
            if value < Duration::from_millis(1) {
                return Err(MembershipConfigError::TooShort { field, value });
            }
        }
        if self.election_timeout_min >= self.election_timeout_max {
            return Err(MembershipConfigError::ElectionRange {
                min: self.election_timeout_min,
                max: self.election_timeout_max,
            });
        }
        if self.heartbeat.saturating_mul(2) >= self.election_timeout_min {
            return Err(MembershipConfigError::HeartbeatTooSlow {
                heartbeat: self.heartbeat,
                election_timeout_min: self.election_timeout_min,
            });
        }
        if self.snapshot_every == 0 {
            return Err(MembershipConfigError::ZeroSnapshotEvery);
        }
        Ok(())
    }

    /// openraft's configuration for this one.
    fn raft_config(&self) -> Result<Config, MembershipError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: CLUSTER_NAME.to_string(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            install_snapshot_timeout: ms(self.rpc_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            // The state is tiny: a lagging follower gets the snapshot rather than old entries.
            max_in_snapshot_log_to_keep: 0,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| MembershipError::Raft(format!("openraft rejects the configuration: {e}")))
    }
}

/// Where a node keeps its raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A redb file holding vote, log, committed index, snapshot and the voter list, each write
    /// fsynced.
    Redb(PathBuf),
    /// Nothing survives the process: only for tests (a restarted node would have forgotten
    /// its vote, which breaks Raft's safety).
    InMemory,
}

/// Why an RPC to a peer failed (what a [`RaftRpc`] returns).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No connection to the peer (refused, down, partitioned): raft waits a little before
    /// calling it again.
    #[error("node {node} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        node: String,
        /// Why.
        reason: String,
    },
    /// Sent, but no answer in time.
    #[error("no answer from node {node} within {after:?}")]
    Timeout {
        /// The peer.
        node: String,
        /// The wait.
        after: Duration,
    },
    /// Anything else (the connection broke mid-call, a frame did not decode): raft retries
    /// right away.
    #[error("rpc to node {node} failed: {reason}")]
    Failed {
        /// The peer.
        node: String,
        /// Why.
        reason: String,
    },
}

/// The network the membership group talks over, implemented by the runtime.
pub trait RaftRpc: Send + Sync + 'static {
    /// Sends `req` to node `to` and waits for its answer. The implementation bounds the wait
    /// (the membership also cuts it at [`MembershipConfig::rpc_timeout`]); the peer passes the
    /// request to its [`Membership::handle`].
    fn call(
        &self,
        to: &str,
        req: RaftRequest,
    ) -> BoxFuture<'static, Result<RaftResponse, RpcError>>;
}

/// Why a node cannot join the group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The configuration is unusable.
    #[error("membership configuration: {0}")]
    Config(#[from] MembershipConfigError),
    /// No voters.
    #[error("the voter list is empty")]
    NoVoters,
    /// The same name twice: ids would differ between nodes that dedupe and those that don't.
    #[error("voter {0:?} is listed twice")]
    DuplicateVoter(String),
    /// This node is not a voter.
    #[error("this node {me:?} is not among the voters {voters:?}")]
    NotAVoter {
        /// This node.
        me: String,
        /// The (sorted) voters.
        voters: Vec<String>,
    },
    /// The store was made for another voter list: raft ids (indexes in the list) would name
    /// other nodes.
    #[error(
        "the store was created for voters {stored:?} but this node was started with {given:?}; \
         every node must be configured with the same voters (or start from a fresh store)"
    )]
    VoterMismatch {
        /// The list in the store.
        stored: Vec<String>,
        /// The list given (sorted).
        given: Vec<String>,
    },
    /// The store cannot be opened or read.
    #[error("membership store: {0}")]
    Storage(String),
    /// openraft refused to start or stopped.
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a proposal did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader commits; ask it (None: no leader known, an election is under way).
    #[error("not the leader; the leader is {leader:?}")]
    NotLeader {
        /// The leader this node knows.
        leader: Option<String>,
    },
    /// No commit within [`MembershipConfig::propose_timeout`]. The outcome is unknown: the
    /// command may still commit later (watch [`Membership::view`]).
    #[error("no commit within {0:?} (the command may still commit)")]
    Timeout(Duration),
    /// The node named is not a configured voter.
    #[error("unknown node {0:?}: not a configured voter")]
    UnknownNode(String),
    /// The raft group of this node stopped (shutdown, or a storage failure).
    #[error("raft stopped: {0}")]
    Stopped(String),
}

struct Inner {
    me: String,
    my_id: RaftNodeId,
    /// Sorted: a voter's raft id is its index here.
    voters: Vec<String>,
    config: MembershipConfig,
    raft: Raft<TypeConfig>,
    view: Arc<watch::Sender<CommittedView>>,
    leader_task: StdMutex<Option<JoinHandle<()>>>,
    store_closed: StdMutex<Option<oneshot::Receiver<()>>>,
}

/// A node's handle on the membership group; clones share it.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", &self.inner.me)
            .field("voters", &self.inner.voters)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Starts this node's member of the group. `voters` is every configured node name, this
    /// one included, in any order (sorted here). On a fresh store the group is initialized
    /// with every voter, every member up at epoch 0.
    pub async fn start(
        me: &str,
        voters: &[String],
        storage: Storage,
        rpc: Arc<dyn RaftRpc>,
        config: MembershipConfig,
    ) -> Result<Membership, MembershipError> {
        config.validate()?;
        let raft_config = Arc::new(config.raft_config()?);
        let mut sorted = voters.to_vec();
        sorted.sort();
        if sorted.is_empty() {
            return Err(MembershipError::NoVoters);
        }
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(MembershipError::DuplicateVoter(w[0].clone()));
        }
        let my_id =
            sorted
                .iter()
                .position(|v| v == me)
                .ok_or_else(|| MembershipError::NotAVoter {
                    me: me.to_string(),
                    voters: sorted.clone(),
                })? as RaftNodeId;

        let (db, store_closed) = {
            let given = sorted.clone();
            tokio::task::spawn_blocking(move || store::open(&storage, &given))
                .await
                .map_err(|e| MembershipError::Storage(format!("opening task failed: {e}")))?
                .map_err(|e| match e {
                    store::OpenError::VoterMismatch { stored } => MembershipError::VoterMismatch {
                        stored,
                        given: sorted.clone(),
                    },
                    store::OpenError::Storage(s) => MembershipError::Storage(s),
                })?
        };

        let initial = CommittedView {
            members: sorted.iter().cloned().collect(),
            epoch: 0,
            leader: None,
        };
        let view = Arc::new(watch::channel(initial).0);
        let sm = store::StateMachine::load(Arc::clone(&db), &sorted, Arc::clone(&view))
            .await
            .map_err(|e| MembershipError::Storage(format!("loading the state machine: {e}")))?;
        let log = store::LogStore::new(db);
        let net = network::Network {
            rpc,
            me: my_id,
            rpc_timeout: config.rpc_timeout,
            // A peer that comes back is called again within one election timeout.
            unreachable_backoff: config.election_timeout_min,
        };
        let raft = Raft::new(my_id, raft_config, net, log, sm)
            .await
            .map_err(|e| MembershipError::Raft(format!("starting: {e}")))?;

        let nodes: BTreeMap<RaftNodeId, BasicNode> = sorted
            .iter()
            .enumerate()
            .map(|(i, name)| (i as RaftNodeId, BasicNode::new(name.clone())))
            .collect();
        match raft.initialize(nodes).await {
            Ok(()) => tracing::info!(me, "membership group initialized"),
            // Already initialized (a restart, or a peer's entries arrived first): the same
            // first entry either way.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => {
                let _ = raft.shutdown().await;
                return Err(MembershipError::Raft(format!("initializing: {e}")));
            }
        }

        let leader_task = tokio::spawn(track_leader(
            raft.metrics(),
            Arc::clone(&view),
            sorted.clone(),
        ));
        Ok(Membership {
            inner: Arc::new(Inner {
                me: me.to_string(),
                my_id,
                voters: sorted,
                config,
                raft,
                view,
                leader_task: StdMutex::new(Some(leader_task)),
                store_closed: StdMutex::new(Some(store_closed)),
            }),
        })
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.inner.me
    }

    /// The configured voters, sorted (a voter's raft id is its index).
    pub fn voters(&self) -> &[String] {
        &self.inner.voters
    }

    fn id_of(&self, name: &str) -> Option<RaftNodeId> {
        self.inner
            .voters
            .binary_search_by(|v| v.as_str().cmp(name))
            .ok()
            .map(|i| i as RaftNodeId)
    }

    fn name_of(&self, id: RaftNodeId) -> Option<String> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.inner.voters.get(i))
            .cloned()
    }

    /// Handles an RPC that node `from` (as the transport authenticated it) sent to this one.
    /// A request whose raft sender is not `from` is refused: a node must not speak for
    /// another.
    pub async fn handle(&self, from: &str, req: RaftRequest) -> RaftResponse {
        let Some(from_id) = self.id_of(from) else {
            return RaftResponse::Error(format!("{from:?} is not a configured voter"));
        };
        let claimed = match &req {
            RaftRequest::AppendEntries(r) => r.vote.leader_id().voted_for(),
            RaftRequest::Vote(r) => r.vote.leader_id().voted_for(),
            RaftRequest::InstallSnapshot(r) => r.vote.leader_id().voted_for(),
        };
        if claimed != Some(from_id) {
            return RaftResponse::Error(format!(
                "request from {from:?} (raft id {from_id}) claims to come from raft id {claimed:?}"
            ));
        }
        let raft = &self.inner.raft;
        match req {
            RaftRequest::AppendEntries(r) => match raft.append_entries(r).await {
                Ok(resp) => RaftResponse::AppendEntries(resp),
                Err(e) => RaftResponse::Error(e.to_string()),
            },
            RaftRequest::Vote(r) => match raft.vote(r).await {
                Ok(resp) => RaftResponse::Vote(resp),
                Err(e) => RaftResponse::Error(e.to_string()),
            },
            RaftRequest::InstallSnapshot(r) => match raft.install_snapshot(r).await {
                Ok(resp) => RaftResponse::InstallSnapshot(resp),
                Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                    RaftResponse::SnapshotMismatch(m)
                }
                Err(e) => RaftResponse::Error(e.to_string()),
            },
        }
    }

    /// The committed view, updated on every applied change and every leader change.
    pub fn view(&self) -> watch::Receiver<CommittedView> {
        self.inner.view.subscribe()
    }

    /// Whether this node is the raft leader now (as far as it knows: a leader cut off from the
    /// majority believes it until it hears of a newer term).
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.my_id)
    }

    /// openraft's metrics of this node (term, log indexes, state), for diagnostics and tests.
    pub fn raft_metrics(&self) -> watch::Receiver<RaftMetrics<RaftNodeId, BasicNode>> {
        self.inner.raft.metrics()
    }

    /// The term of this node's current vote, read from the raft core (so, after a restart,
    /// the persisted one before any new election).
    pub async fn term(&self) -> Result<u64, MembershipError> {
        self.inner
            .raft
            .with_raft_state(|st| st.vote_ref().leader_id().term)
            .await
            .map_err(|e| MembershipError::Raft(e.to_string()))
    }

    /// Commits `cmd` and returns the view after it was applied. Only the leader commits;
    /// elsewhere the answer is [`ProposeError::NotLeader`]. An Admit of a member already up
    /// or a Remove of one not up commits as a no-op (same members, same epoch).
    pub async fn propose(&self, cmd: Command) -> Result<CommittedView, ProposeError> {
        if self.id_of(cmd.node()).is_none() {
            return Err(ProposeError::UnknownNode(cmd.node().to_string()));
        }
        let limit = self.inner.config.propose_timeout;
        let res = tokio::time::timeout(limit, self.inner.raft.client_write(cmd)).await;
        match res {
            Err(_) => Err(ProposeError::Timeout(limit)),
            Ok(Ok(resp)) => Ok(CommittedView {
                members: resp.data.members,
                epoch: resp.data.epoch,
                leader: Some(self.inner.me.clone()),
            }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader {
                    leader: f.leader_id.and_then(|id| self.name_of(id)),
                })
            }
            Ok(Err(RaftError::APIError(e))) => Err(ProposeError::Stopped(format!(
                "unexpected answer to a write: {e}"
            ))),
            Ok(Err(RaftError::Fatal(e))) => Err(ProposeError::Stopped(e.to_string())),
        }
    }

    /// Stops this node's raft tasks and waits (at most [`STORE_CLOSE_TIMEOUT`]) until they
    /// have closed the store, so the same file can be opened again. Later calls do nothing.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "membership raft did not stop cleanly");
        }
        let task = self
            .inner
            .leader_task
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
        }
        let closed = self
            .inner
            .store_closed
            .lock()
            .ok()
            .and_then(|mut c| c.take());
        if let Some(closed) = closed {
            // The sender drops with the last handle on the store: Err(RecvError) is the signal.
            if tokio::time::timeout(STORE_CLOSE_TIMEOUT, closed)
                .await
                .is_err()
            {
                tracing::warn!(
                    after = ?STORE_CLOSE_TIMEOUT,
                    "membership store still open after shutdown; reopening it will fail"
                );
            }
        }
    }
}

/// Copies the leader from the raft metrics into the view until raft stops.
async fn track_leader(
    mut metrics: watch::Receiver<RaftMetrics<RaftNodeId, BasicNode>>,
    view: Arc<watch::Sender<CommittedView>>,
    voters: Vec<String>,
) {
    loop {
        let leader = metrics
            .borrow_and_update()
            .current_leader
            .and_then(|id| usize::try_from(id).ok())
            .and_then(|i| voters.get(i).cloned());
        view.send_if_modified(|v| {
            if v.leader == leader {
                return false;
            }
            v.leader = leader;
            true
        });
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
