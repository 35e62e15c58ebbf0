//! Newtypes for the numbers that must not be mixed up: node ids, epochs, offsets, topic ids.

use std::fmt;

/// A node's id (`node.id`): one id names a broker and, on combined nodes, its controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub i32);

/// A broker's registration epoch: the metadata offset at which it registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrokerEpoch(pub i64);

/// A partition's leader epoch: rises by one on every leader change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaderEpoch(pub i32);

/// A partition's epoch: rises by one on every change of its leader, ISR or replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionEpoch(pub i32);

/// The position of a record in the metadata log (the raft log index of its entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetadataOffset(pub u64);

/// A topic's 16-byte id (Kafka's topic UUID).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicId(pub [u8; 16]);

impl TopicId {
    /// The all-zero id Kafka uses for "no id".
    pub const ZERO: TopicId = TopicId([0; 16]);

    /// Reads an id from a record field; `None` unless it is exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<TopicId> {
        <[u8; 16]>::try_from(bytes).ok().map(TopicId)
    }

    pub fn from_u64_pair(high: u64, low: u64) -> TopicId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&high.to_be_bytes());
        id[8..].copy_from_slice(&low.to_be_bytes());
        TopicId(id)
    }
}

impl fmt::Debug for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicId({self})")
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
