//! The metadata quorum as one node sees it: what a voter reads from its raft node and a
//! broker-only node from its metadata stream, for the admin API's DescribeCluster; and the
//! quorum's membership operations and their answer (KIP-853: AddRaftVoter, RemoveRaftVoter,
//! UpdateRaftVoter, DescribeQuorum), which the active controller carries out with raft's own
//! membership changes rather than decides as metadata records.

use std::fmt;
use std::str::FromStr;

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

/// The identity of one metadata directory (KIP-853's directory id): drawn at random when the
/// node formats its data directory and kept in `meta.properties`, so a replica whose disk was
/// wiped comes back as another replica and cannot vote as its former self. Printed as Kafka
/// prints a `Uuid` (22 characters of unpadded URL-safe base64).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DirectoryId(pub [u8; 16]);

impl DirectoryId {
    /// Kafka's `Uuid.ZERO`: no directory id (a voter of a static quorum before it said its
    /// own, as Kafka's kraft.version 0 voters).
    pub const ZERO: DirectoryId = DirectoryId([0; 16]);

    /// `None` for anything but 16 bytes, or for [`DirectoryId::ZERO`].
    pub fn from_slice(bytes: &[u8]) -> Option<DirectoryId> {
        <[u8; 16]>::try_from(bytes).ok().map(DirectoryId).filter(|d| *d != DirectoryId::ZERO)
    }
}

const BASE64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl fmt::Display for DirectoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut acc = 0u32;
        let mut bits = 0;
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 6 {
                bits -= 6;
                write!(f, "{}", BASE64_URL[((acc >> bits) & 63) as usize] as char)?;
            }
        }
        // 128 bits leave 2: they go out as the top of one more character.
        write!(f, "{}", BASE64_URL[((acc << (6 - bits)) & 63) as usize] as char)
    }
}

impl fmt::Debug for DirectoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirectoryId({self})")
    }
}

/// Why a string is not a directory id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a directory id (22 characters of URL-safe base64, as Kafka prints a Uuid)")]
pub struct DirectoryIdParseError(pub String);

impl FromStr for DirectoryId {
    type Err = DirectoryIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DirectoryIdParseError(s.to_string());
        if s.len() != 22 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        let mut acc = 0u32;
        let mut bits = 0;
        let mut at = 0;
        for c in s.bytes() {
            let v = BASE64_URL.iter().position(|&a| a == c).ok_or_else(bad)? as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                if at == 16 {
                    return Err(bad());
                }
                out[at] = (acc >> bits) as u8;
                at += 1;
            }
        }
        // The last character carries 2 bits of the id and 4 zero bits.
        if at != 16 || acc & ((1 << bits) - 1) != 0 {
            return Err(bad());
        }
        Ok(DirectoryId(out))
    }
}

/// Kafka's AddRaftVoter: make a node a voter. The node must run and follow the quorum
/// (an observer); it becomes a voter only once it has caught up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddVoterRequest {
    pub node_id: u64,
    /// Must be the node's own when given; else the one the node announced as an observer.
    pub directory_id: Option<DirectoryId>,
    /// The node's control (gRPC) address; else the one it announced as an observer.
    pub control_addr: Option<String>,
    /// How long the node may take to catch up (the controller caps it).
    pub timeout_ms: Option<u64>,
}

/// Kafka's RemoveRaftVoter. A removed voter that still runs stays an observer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveVoterRequest {
    pub node_id: u64,
    /// When given it must be the voter's: a replica that replaced it is not removed by
    /// mistake.
    pub directory_id: Option<DirectoryId>,
}

/// Kafka's UpdateRaftVoter: a voter tells the quorum its directory id and control address
/// (a voter of a static quorum at its first start, or after its address changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateVoterRequest {
    pub node_id: u64,
    pub directory_id: DirectoryId,
    pub control_addr: String,
}

/// A node that runs the controller role without being a voter asks to follow the metadata
/// log as an observer (a raft learner), as a KIP-853 controller started with
/// `controller.quorum.bootstrap.servers` fetches from the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinQuorumRequest {
    pub node_id: u64,
    pub directory_id: DirectoryId,
    pub control_addr: String,
}

/// Which role a replica of the metadata log has in [`QuorumDescription`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaKind {
    /// A controller node: a voter, or an observer replicated to by raft (a learner).
    Controller,
    /// A broker-only node following the committed metadata (its offset from its heartbeats).
    Broker,
}

/// One replica of the metadata log as the leader sees it (Kafka's DescribeQuorum
/// `ReplicaState`). Offsets are "end" offsets as Kafka's: the offset after the last entry the
/// replica has, so that lag = the leader's log end offset - the replica's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaDescription {
    pub node_id: u64,
    pub directory_id: Option<DirectoryId>,
    /// Its control (gRPC) address; empty when unknown (a broker).
    pub control_addr: String,
    pub kind: ReplicaKind,
    /// -1: unknown (nothing heard yet).
    pub log_end_offset: i64,
    /// Wall-clock ms of the last answer the leader had from it; -1: never.
    pub last_fetch_ms: i64,
    /// Wall-clock ms when it last had everything the leader had; -1: never.
    pub last_caught_up_ms: i64,
}

impl ReplicaDescription {
    /// Entries the replica lacks, given the leader's log end offset; `None` while unknown.
    pub fn lag(&self, leader_log_end_offset: i64) -> Option<u64> {
        (self.log_end_offset >= 0)
            .then(|| u64::try_from(leader_log_end_offset - self.log_end_offset).unwrap_or(0))
    }
}

/// The metadata quorum as its leader sees it: every quorum operation answers it (after a
/// change: the quorum with the change committed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumDescription {
    pub leader_id: u64,
    /// The raft term (Kafka's leader epoch of `__cluster_metadata`).
    pub term: u64,
    /// The end offset of the committed log: the last committed index + 1.
    pub high_watermark: u64,
    /// The leader's own log end offset.
    pub log_end_offset: u64,
    /// In node id order; the leader among them.
    pub voters: Vec<ReplicaDescription>,
    /// Controller observers (raft learners) and broker-only nodes, in node id order.
    pub observers: Vec<ReplicaDescription>,
    /// True while the voters are between two sets (raft joint consensus).
    pub joint: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_ids_print_and_parse_as_kafka_uuids() {
        assert_eq!(DirectoryId([0; 16]).to_string(), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(DirectoryId([0xff; 16]).to_string(), "_____________________w");
        let id = DirectoryId(*b"0123456789abcdef");
        let text = id.to_string();
        assert_eq!(text.len(), 22);
        assert_eq!(text.parse::<DirectoryId>(), Ok(id));
        for bad in ["", "AAAA", "AAAAAAAAAAAAAAAAAAAAA=", "_____________________x", "a b"] {
            assert!(bad.parse::<DirectoryId>().is_err(), "{bad:?}");
        }
        assert_eq!(DirectoryId::from_slice(&[0; 16]), None, "zero means none");
        assert_eq!(DirectoryId::from_slice(&[1; 15]), None);
        assert_eq!(DirectoryId::from_slice(&[1; 16]), Some(DirectoryId([1; 16])));
    }

    #[test]
    fn lag_is_counted_from_the_leaders_end() {
        let mut r = ReplicaDescription {
            node_id: 2,
            directory_id: None,
            control_addr: String::new(),
            kind: ReplicaKind::Controller,
            log_end_offset: -1,
            last_fetch_ms: -1,
            last_caught_up_ms: -1,
        };
        assert_eq!(r.lag(40), None);
        r.log_end_offset = 37;
        assert_eq!(r.lag(40), Some(3));
        r.log_end_offset = 41;
        assert_eq!(r.lag(40), Some(0), "a replica is never ahead of the leader");
    }
}
