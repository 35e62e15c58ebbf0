//! The transaction coordinator (issue 12). Its sans-IO core: one state machine per
//! transactional id ([`state`], Kafka's `TransactionMetadata`), the ids of one
//! `__transaction_state` partition with the rules of InitProducerId, AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn, timeouts, expiry and failover ([`partition`], Kafka's
//! `TransactionCoordinator` and `TransactionStateManager`), the topic's record layout
//! ([`records`]) and the marker sender's grouping and retry rules ([`markers`]).
//!
//! Its tokio shell, built as the group coordinator's: one shard task per led partition
//! ([`shard`], started and stopped by [`coordinator`]) that carries out the core's
//! [`Effect`]s as [`partition`] describes, and one marker sender per broker ([`sender`]) that
//! sends WriteTxnMarkers to the partition leaders.

mod coordinator;
mod markers;
mod partition;
mod records;
mod sender;
mod shard;
mod state;
mod verify;

#[cfg(test)]
mod tests;

pub(crate) use coordinator::{ensure_txn_topic, run, TxnCoordinator, TXN_TOPIC};
pub(crate) use partition::*;
pub(crate) use sender::{run as send_markers, MarkerSender};
pub(crate) use shard::{Answer, TxnCmd, TxnSummary};
pub(crate) use state::*;
pub(crate) use verify::{answer_v4 as answer_add_partitions_v4, verify};
