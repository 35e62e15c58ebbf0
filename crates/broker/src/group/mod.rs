//! The group coordinator for Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit/OffsetFetch and the admin APIs): a sans-IO state machine per group
//! ([`state`]) and sans-IO offset rules ([`offsets`]), the `__consumer_offsets` record layout
//! ([`records`]) and the topic's creation ([`offsets_topic`]), and the tokio shell: one shard task
//! per offsets partition this broker leads ([`shard`]), started and stopped by [`coordinator`].

mod admin;
pub(crate) mod consumer;
mod coordinator;
mod offsets;
mod offsets_topic;
mod records;
mod shard;
mod state;

#[cfg(test)]
mod tests;

pub use admin::{BrokerGroupAdmin, GroupAdminError};
pub(crate) use consumer::{
    CONSUMER_MEMBERS_MAX, HEARTBEAT_INTERVAL_MS_DEFAULT as CONSUMER_HEARTBEAT_INTERVAL_MS_DEFAULT,
    SESSION_TIMEOUT_MS_DEFAULT as CONSUMER_SESSION_TIMEOUT_MS_DEFAULT,
};
pub(crate) use coordinator::*;
pub(crate) use offsets_topic::{ensure_offsets_topic, partition_for, OFFSETS_TOPIC};
pub(crate) use records::{encode_batch, OffsetValue};
pub(crate) use state::*;
