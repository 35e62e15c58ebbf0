//! The gRPC services a controller serves on its control port: `strom.raft.v1.Raft` (the other
//! voters' replication RPCs, handed to openraft) and `strom.controller.v1.Controller` (requests
//! relayed to this node while it is the active controller).

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RaftError};
use strom_proto::controller as cpb;
use strom_proto::raft as rpb;
use tonic::{Request, Response, Status};

use crate::codec;
use crate::controller::EventClient;
use crate::types::Raft;
use crate::wire;

/// Serves openraft's voter-to-voter RPCs for one raft node.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub(crate) fn new(raft: Raft) -> RaftService {
        RaftService { raft }
    }
}

fn malformed(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("malformed raft message: {e}"))
}

/// A raft that stopped (shut down, or a storage failure) answers like an unreachable peer, so
/// the sender backs off instead of spinning.
fn stopped(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft is not running: {e}"))
}

#[tonic::async_trait]
impl rpb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<rpb::AppendEntriesRequest>,
    ) -> Result<Response<rpb::AppendEntriesResponse>, Status> {
        let rpc = codec::append_request_from_pb(request.into_inner()).map_err(malformed)?;
        let answer = self.raft.append_entries(rpc).await.map_err(stopped)?;
        Ok(Response::new(codec::append_response_to_pb(&answer)))
    }

    async fn vote(
        &self,
        request: Request<rpb::VoteRequest>,
    ) -> Result<Response<rpb::VoteResponse>, Status> {
        let rpc = codec::vote_request_from_pb(request.into_inner()).map_err(malformed)?;
        let answer = self.raft.vote(rpc).await.map_err(stopped)?;
        Ok(Response::new(codec::vote_response_to_pb(&answer)))
    }

    async fn install_snapshot(
        &self,
        request: Request<rpb::InstallSnapshotRequest>,
    ) -> Result<Response<rpb::InstallSnapshotReply>, Status> {
        let rpc = codec::install_request_from_pb(request.into_inner()).map_err(malformed)?;
        let answer = match self.raft.install_snapshot(rpc).await {
            Ok(resp) => Ok(resp),
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => Err(m),
            Err(RaftError::Fatal(e)) => return Err(stopped(e)),
        };
        Ok(Response::new(codec::install_reply_to_pb(&answer)))
    }
}

/// Serves requests relayed by other voters, to this node's active controller task only.
pub struct ControllerService {
    local: Arc<EventClient>,
}

impl ControllerService {
    pub(crate) fn new(local: Arc<EventClient>) -> ControllerService {
        ControllerService { local }
    }
}

#[tonic::async_trait]
impl cpb::controller_server::Controller for ControllerService {
    async fn submit(
        &self,
        request: Request<cpb::ControlRequest>,
    ) -> Result<Response<cpb::ControlResponse>, Status> {
        let request = wire::request_from_pb(request.into_inner())
            .map_err(|e| Status::invalid_argument(format!("malformed control request: {e}")))?;
        let answer = self.local.submit_local(request).await;
        Ok(Response::new(wire::response_to_pb(&answer)))
    }
}
