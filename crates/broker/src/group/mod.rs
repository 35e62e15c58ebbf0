//! The group coordinator for Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit/OffsetFetch and the admin APIs): a sans-IO state machine per group
//! ([`state`]), the `__consumer_offsets` record layout ([`records`]), and the tokio shell that
//! runs one shard per offsets partition this broker leads ([`coordinator`]).

mod admin;
mod coordinator;
mod records;
mod state;

#[cfg(test)]
mod tests;

pub use admin::{BrokerGroupAdmin, GroupAdminError};
pub(crate) use coordinator::*;
pub(crate) use records::OffsetValue;
pub(crate) use state::*;
