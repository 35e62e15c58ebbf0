//! The transaction coordinator's sans-IO core (issue 12): one state machine per transactional
//! id ([`state`], Kafka's `TransactionMetadata`), the ids of one `__transaction_state`
//! partition with the rules of InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn,
//! timeouts, expiry and failover ([`partition`], Kafka's `TransactionCoordinator` and
//! `TransactionStateManager`), and the topic's record layout ([`records`]).
//!
//! No sockets, timers or tokio here: the shell that will drive it (one task per led partition,
//! as `group::shard`) carries out the [`Effect`]s and reports their outcomes; see
//! [`partition`] for that contract.

// The shell and the Kafka APIs built on this core come next; until then only tests call it.
#![allow(dead_code)]

mod partition;
mod records;
mod state;

#[cfg(test)]
mod tests;

#[allow(unused_imports)] // likewise, until the shell imports them
pub(crate) use partition::*;
#[allow(unused_imports)]
pub(crate) use records::RecordError;
pub(crate) use state::*;
