//! The metadata quorum as this voter's raft node sees it, for the admin API's DescribeCluster.

use openraft::RaftMetrics;
use strom_metadata::quorum::QuorumState;
use tokio::sync::watch;

use crate::types::{ControllerNode, Raft};

/// The cluster id and the quorum from a local raft node's metrics.
pub struct RaftClusterInfo {
    cluster_id: String,
    metrics: watch::Receiver<RaftMetrics<u64, ControllerNode>>,
}

impl RaftClusterInfo {
    pub fn new(cluster_id: impl Into<String>, raft: &Raft) -> Self {
        RaftClusterInfo { cluster_id: cluster_id.into(), metrics: raft.metrics() }
    }

    pub fn cluster_id(&self) -> String {
        self.cluster_id.clone()
    }

    pub fn quorum(&self) -> QuorumState {
        let m = self.metrics.borrow();
        let membership = m.membership_config.membership();
        let mut voters: Vec<(u64, String)> = membership
            .voter_ids()
            .map(|id| {
                let addr = membership.get_node(&id).map(|n| n.control_addr.clone());
                (id, addr.unwrap_or_default())
            })
            .collect();
        voters.sort();
        QuorumState {
            node_id: m.id,
            voters,
            active_controller: m.current_leader,
            term: m.current_term,
            commit_index: m.last_applied.map_or(0, |l| l.index),
        }
    }
}
