//! The openraft type configuration of the metadata log: what an entry carries, who a node is,
//! and what applying an entry answers.
//!
//! No serde: openraft 0.9 only asks for serde with its `serde` feature, and everything strom
//! stores or sends is encoded with prost (`proto/raft.proto`).

use std::io::Cursor;

use strom_metadata::quorum::DirectoryId;
use strom_metadata::records::MetadataBatch;
use strom_metadata::MetadataOffset;

/// A controller voter (or observer) as the membership records it: where its control (gRPC)
/// listener is, and which metadata directory it is (KIP-853).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerNode {
    pub control_addr: String,
    /// `None`: not known yet (a voter of a static quorum before it said its own).
    pub directory_id: Option<DirectoryId>,
}

/// What the state machine answers for an applied entry: the offset it applied at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub offset: MetadataOffset,
}

openraft::declare_raft_types!(
    /// The metadata log: one entry's app data is one `MetadataBatch`.
    pub TypeConfig:
        D = MetadataBatch,
        R = Applied,
        NodeId = u64,
        Node = ControllerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type Membership = openraft::Membership<u64, ControllerNode>;
pub type StoredMembership = openraft::StoredMembership<u64, ControllerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, ControllerNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<u64>;
pub type Raft = openraft::Raft<TypeConfig>;
