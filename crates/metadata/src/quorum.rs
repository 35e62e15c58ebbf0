//! The metadata quorum as one node sees it: what a voter reads from its raft node and a
//! broker-only node from its metadata stream, for the admin API's DescribeCluster.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuorumState {
    /// The node answering.
    pub node_id: u64,
    /// Voter id → its control (gRPC) address, in id order.
    pub voters: Vec<(u64, String)>,
    /// The raft leader this node knows of (the active controller).
    pub active_controller: Option<u64>,
    pub term: u64,
    /// The highest metadata log index this node has applied (so known committed).
    pub commit_index: u64,
}
