//! The data of the membership group: its raft type configuration, the commands it commits,
//! the state they build and the wire form of openraft's RPCs.

use std::collections::BTreeSet;
use std::io::Cursor;

use openraft::error::SnapshotMismatch;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

/// A voter's raft id: its index in the sorted list of configured voters.
pub type RaftNodeId = u64;

openraft::declare_raft_types!(
    /// The raft types of the membership group. A node is a [`BasicNode`] whose `addr` is the
    /// node's name (the transport resolves names to addresses, raft never dials anything).
    pub TypeConfig:
        D = Command,
        R = AppliedState,
        NodeId = RaftNodeId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A change of the up members, as committed in the raft log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Command {
    /// Mark a configured node as up: the shard map places segments on it again.
    Admit {
        /// The node's name, one of the configured voters.
        node: String,
    },
    /// Mark a configured node as down: its segments move to the remaining members.
    Remove {
        /// The node's name, one of the configured voters.
        node: String,
    },
}

impl Command {
    /// The node the command is about.
    pub fn node(&self) -> &str {
        match self {
            Command::Admit { node } | Command::Remove { node } => node,
        }
    }
}

/// The state the committed commands build, as every node applies it (also the answer to a
/// proposal, and the content of a snapshot).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AppliedState {
    /// The up members.
    pub members: BTreeSet<String>,
    /// The log index of the last command that changed `members` (0 before any).
    pub epoch: u64,
}

impl AppliedState {
    /// Applies `cmd` committed at log index `index`. An Admit of a member already up or a
    /// Remove of one not up changes nothing, so the epoch stays: equal epochs keep meaning
    /// equal members.
    pub fn apply(&mut self, cmd: &Command, index: u64) {
        let changed = match cmd {
            Command::Admit { node } => self.members.insert(node.clone()),
            Command::Remove { node } => self.members.remove(node),
        };
        if changed {
            self.epoch = index;
        }
    }
}

/// What the shard map and the runtime see of the membership.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommittedView {
    /// The up members (initially every configured voter): what the shard map places segments
    /// on.
    pub members: BTreeSet<String>,
    /// The log index of the last applied change (0 before any): every node with the same
    /// epoch has the same members.
    pub epoch: u64,
    /// The current raft leader as this node knows it (not part of the committed state; it
    /// comes from the raft metrics).
    pub leader: Option<String>,
}

/// The wire form of an openraft RPC, node to node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRequest {
    /// Log replication and heartbeats, from the leader.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// A candidate asks for a vote.
    Vote(VoteRequest<RaftNodeId>),
    /// One chunk of a snapshot, from the leader to a follower too far behind for the log.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`RaftRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    /// Answer to [`RaftRequest::AppendEntries`].
    AppendEntries(AppendEntriesResponse<RaftNodeId>),
    /// Answer to [`RaftRequest::Vote`].
    Vote(VoteResponse<RaftNodeId>),
    /// Answer to [`RaftRequest::InstallSnapshot`].
    InstallSnapshot(InstallSnapshotResponse<RaftNodeId>),
    /// The snapshot chunk did not follow the one the receiver expected: the sender restarts
    /// the snapshot from its beginning (openraft needs the structured error to do so).
    SnapshotMismatch(SnapshotMismatch),
    /// The receiver could not handle the request (it is shutting down, its storage failed,
    /// the sender is not who the request claims): the sender backs off and retries.
    Error(String),
}

/// A message that could not be encoded or decoded for the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Encoding failed.
    #[error("cannot encode raft message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// Decoding failed (a corrupt frame, or a peer of another version).
    #[error("cannot decode raft message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

impl RaftRequest {
    /// MessagePack with field names (robust to field order and to openraft's optional
    /// fields), the form the transport sends.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    /// Decodes what [`RaftRequest::encode`] made.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

impl RaftResponse {
    /// MessagePack with field names, the form the transport sends.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    /// Decodes what [`RaftResponse::encode`] made.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}
