//! How this voter reaches the others: openraft's `RaftNetworkFactory`.
//!
//! Placeholder: the gRPC transport (a tonic client per peer, the `strom.raft.v1` service on the
//! control port) replaces `UnreachableNetwork`. Until then every RPC fails as `Unreachable`, so
//! only a single-voter quorum makes progress. A real transport drops in by implementing
//! [`PeerTransport`]; the factory and the error mapping stay.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::types::{ControllerNode, TypeConfig};

/// Why a peer RPC failed before the peer answered.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer cannot be reached (down, partitioned, or no transport yet).
    #[error("controller {target} at '{addr}' is unreachable: {reason}")]
    Unreachable { target: u64, addr: String, reason: String },
    /// The peer was reached but the exchange broke (bad frame, reset stream).
    #[error("RPC to controller {target} failed: {reason}")]
    Rpc { target: u64, reason: String },
}

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, ControllerNode, E>>;

/// One peer's RPCs, in transport terms: a tonic client implements this.
pub trait PeerTransport: Send + Sync + 'static {
    fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> impl std::future::Future<Output = Result<AppendEntriesResponse<u64>, TransportError>> + Send;
    fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> impl std::future::Future<Output = Result<InstallSnapshotResponse<u64>, TransportError>> + Send;
    fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
    ) -> impl std::future::Future<Output = Result<VoteResponse<u64>, TransportError>> + Send;
}

/// The transport that is not there yet: every RPC fails as `Unreachable`.
#[derive(Clone, Debug)]
pub struct UnreachableTransport {
    target: u64,
    addr: String,
}

impl UnreachableTransport {
    fn refuse<T>(&self) -> Result<T, TransportError> {
        Err(TransportError::Unreachable {
            target: self.target,
            addr: self.addr.clone(),
            reason: "no controller-to-controller transport in this build".into(),
        })
    }
}

impl PeerTransport for UnreachableTransport {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<u64>, TransportError> {
        self.refuse()
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotResponse<u64>, TransportError> {
        self.refuse()
    }

    async fn vote(&mut self, _rpc: VoteRequest<u64>) -> Result<VoteResponse<u64>, TransportError> {
        self.refuse()
    }
}

/// Maps transport failures to what openraft retries on: `Unreachable` backs off, a broken
/// exchange is a `Network` error.
fn to_rpc_error<E: std::error::Error>(e: TransportError) -> RPCError<u64, ControllerNode, E> {
    match &e {
        TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        TransportError::Rpc { .. } => RPCError::Network(NetworkError::new(&e)),
    }
}

/// openraft's view of one peer over a [`PeerTransport`].
pub struct PeerNetwork<T> {
    transport: T,
}

impl<T: PeerTransport> RaftNetwork<TypeConfig> for PeerNetwork<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        self.transport.append_entries(rpc).await.map_err(to_rpc_error)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        self.transport.install_snapshot(rpc).await.map_err(to_rpc_error)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        self.transport.vote(rpc).await.map_err(to_rpc_error)
    }
}

/// Hands openraft a [`PeerNetwork`] per peer, until the gRPC transport replaces it.
#[derive(Clone, Debug, Default)]
pub struct UnreachableNetwork;

impl RaftNetworkFactory<TypeConfig> for UnreachableNetwork {
    type Network = PeerNetwork<UnreachableTransport>;

    async fn new_client(&mut self, target: u64, node: &ControllerNode) -> Self::Network {
        PeerNetwork { transport: UnreachableTransport { target, addr: node.control_addr.clone() } }
    }
}
