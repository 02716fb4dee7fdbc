//! openraft's network over the runtime's [`RaftRpc`]: one connection per peer, each call
//! bounded by the shorter of openraft's own deadline and [`super::MembershipConfig::rpc_timeout`].

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RPCTypes};

use super::types::{RaftNodeId, RaftRequest, RaftResponse, TypeConfig};
use super::{RaftRpc, RpcError};

type RpcErr<E = openraft::error::Infallible> =
    RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId, E>>;

/// Makes a [`Connection`] per peer.
pub(crate) struct Network {
    pub(crate) rpc: Arc<dyn RaftRpc>,
    pub(crate) me: RaftNodeId,
    pub(crate) rpc_timeout: Duration,
    /// The pause before calling an unreachable peer again.
    pub(crate) unreachable_backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: RaftNodeId, node: &BasicNode) -> Connection {
        Connection {
            rpc: Arc::clone(&self.rpc),
            me: self.me,
            target,
            name: node.addr.clone(),
            rpc_timeout: self.rpc_timeout,
            unreachable_backoff: self.unreachable_backoff,
        }
    }
}

/// Calls to one peer, by name.
pub(crate) struct Connection {
    rpc: Arc<dyn RaftRpc>,
    me: RaftNodeId,
    target: RaftNodeId,
    name: String,
    rpc_timeout: Duration,
    unreachable_backoff: Duration,
}

impl Connection {
    async fn call<E: Error>(
        &self,
        req: RaftRequest,
        action: RPCTypes,
        option: &RPCOption,
    ) -> Result<RaftResponse, RpcErr<E>> {
        let limit = self.rpc_timeout.min(option.hard_ttl());
        let timeout = || {
            RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout: limit,
            })
        };
        match tokio::time::timeout(limit, self.rpc.call(&self.name, req)).await {
            Err(_) => Err(timeout()),
            Ok(Err(RpcError::Timeout { .. })) => Err(timeout()),
            Ok(Err(e @ RpcError::Unreachable { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(e @ RpcError::Failed { .. })) => Err(RPCError::Network(NetworkError::new(&e))),
            // The peer is shutting down or broken: back off as from an unreachable one.
            Ok(Ok(RaftResponse::Error(msg))) => Err(RPCError::Unreachable(Unreachable::new(
                &AnyError::error(format!("{} answered: {msg}", self.name)),
            ))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    fn unexpected<E: Error>(&self, what: &str, resp: &RaftResponse) -> RpcErr<E> {
        let e = AnyError::error(format!(
            "{} answered a {what} request with {resp:?}",
            self.name
        ));
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftNodeId>, RpcErr> {
        match self
            .call(
                RaftRequest::AppendEntries(rpc),
                RPCTypes::AppendEntries,
                &option,
            )
            .await?
        {
            RaftResponse::AppendEntries(r) => Ok(r),
            other => Err(self.unexpected("AppendEntries", &other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<RaftNodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .call(
                RaftRequest::InstallSnapshot(rpc),
                RPCTypes::InstallSnapshot,
                &option,
            )
            .await?
        {
            RaftResponse::InstallSnapshot(r) => Ok(r),
            RaftResponse::SnapshotMismatch(m) => Err(RPCError::RemoteError(RemoteError::new(
                self.target,
                RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m)),
            ))),
            other => Err(self.unexpected("InstallSnapshot", &other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftNodeId>, RpcErr> {
        match self
            .call(RaftRequest::Vote(rpc), RPCTypes::Vote, &option)
            .await?
        {
            RaftResponse::Vote(r) => Ok(r),
            other => Err(self.unexpected("Vote", &other)),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.unreachable_backoff))
    }
}
