//! One transactional id's state machine (Kafka's `TransactionMetadata`): Empty → Ongoing →
//! PrepareCommit/PrepareAbort → CompleteCommit/CompleteAbort, Dead on expiry, and the types
//! the coordinator core ([`super::partition`]) speaks in: requests' errors, effects, the
//! persisted record. No IO, no clock: `now_ms` is passed in.
//!
//! A change is two steps, as in Kafka: `prepare_*` computes the next state as a [`Transit`]
//! (which is also the record to append), and [`Txn::complete`] takes it once that record is
//! replicated. Between the two the id has a pending transit and refuses other changes
//! (CONCURRENT_TRANSACTIONS), so records of one id are written one at a time, in order.

use std::collections::BTreeSet;

use bytes::Bytes;
use strom_metadata::config::TransactionDefaults;

use crate::errors::KafkaError;

/// Kafka's `RecordBatch.NO_PRODUCER_ID`.
pub(crate) const NO_PRODUCER_ID: i64 = -1;
/// Kafka's `RecordBatch.NO_PRODUCER_EPOCH`.
pub(crate) const NO_PRODUCER_EPOCH: i16 = -1;
/// An epoch at or above this is exhausted (Kafka's `isEpochExhausted`): a producer is never
/// handed `i16::MAX`, so that the coordinator can always fence it by one more bump.
pub(crate) const EPOCH_EXHAUSTED_AT: i16 = i16::MAX - 1;

/// The reason a transactional request is refused, named after Kafka's error. Clients that
/// predate PRODUCER_FENCED get [`TxnError::for_legacy_client`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxnError {
    /// An empty transactional id.
    InvalidRequest,
    /// `transaction.timeout.ms` ≤ 0 or above `transaction.max.timeout.ms`.
    InvalidTransactionTimeout,
    /// Another change of this id is in flight (or its markers are being written): retry.
    ConcurrentTransactions,
    /// A newer producer has this transactional id (the request's epoch is not the current one).
    ProducerFenced,
    /// What older clients get instead of [`TxnError::ProducerFenced`].
    InvalidProducerEpoch,
    /// Unknown transactional id, or another producer id holds it.
    InvalidProducerIdMapping,
    /// EndTxn that does not match the transaction's state (commit of an aborted one, …).
    InvalidTxnState,
    /// This broker no longer leads the id's `__transaction_state` partition.
    NotCoordinator,
    /// The record could not be replicated in time: retry.
    CoordinatorNotAvailable,
    /// No producer id could be had from the broker's blocks in time: retry.
    CoordinatorLoadInProgress,
    /// The record is too large to append (Kafka's answer to MESSAGE_TOO_LARGE).
    UnknownServerError,
}

impl TxnError {
    /// The error for a request version that predates PRODUCER_FENCED (KIP-588): InitProducerId
    /// before v4, AddPartitionsToTxn, AddOffsetsToTxn and EndTxn before v2. Kafka answers
    /// those INVALID_PRODUCER_EPOCH, which they handle the same way.
    pub fn for_legacy_client(self) -> TxnError {
        match self {
            TxnError::ProducerFenced => TxnError::InvalidProducerEpoch,
            e => e,
        }
    }

    /// A failed append of a `__transaction_state` record as the coordinator answers it
    /// (Kafka's `TransactionStateManager.appendTransactionToLog`): a replication timeout or a
    /// short ISR is retriable (COORDINATOR_NOT_AVAILABLE), a lost leadership or a failed disk
    /// sends the client to look the coordinator up again (NOT_COORDINATOR).
    pub fn from_append(e: KafkaError) -> TxnError {
        match e {
            KafkaError::UnknownTopicOrPartition
            | KafkaError::NotEnoughReplicas
            | KafkaError::NotEnoughReplicasAfterAppend
            | KafkaError::RequestTimedOut => TxnError::CoordinatorNotAvailable,
            KafkaError::NotLeaderOrFollower | KafkaError::KafkaStorageError => {
                TxnError::NotCoordinator
            }
            _ => TxnError::UnknownServerError,
        }
    }
}

/// A transaction's state, with Kafka's numbering (the `TransactionStatus` of the record) and
/// names (DescribeTransactions, ListTransactions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TxnState {
    /// No transaction open (after InitProducerId).
    Empty,
    /// Partitions were added; the transaction is open.
    Ongoing,
    /// EndTxn(commit) is durable; commit markers are being written.
    PrepareCommit,
    /// EndTxn(abort), a timeout or a fencing producer; abort markers are being written.
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    /// Expired: its tombstone is being written.
    Dead,
    /// Kafka's in-memory step while a new producer fences an open transaction. Kafka never
    /// writes it; here it is only the pending state of that fencing abort
    /// ([`super::TxnPartition::pending_state`]).
    PrepareEpochFence,
}

impl TxnState {
    pub const ALL: [TxnState; 8] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ];

    pub fn id(self) -> i8 {
        self as i8
    }

    pub fn from_id(id: i8) -> Option<TxnState> {
        TxnState::ALL.get(usize::try_from(id).ok()?).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    /// States an idle id may expire from (`transactional.id.expiration.ms`).
    pub fn expiration_allowed(self) -> bool {
        matches!(self, TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort)
    }

    /// Kafka's `validPreviousStates`: may an id in `from` move to `self`?
    fn may_follow(self, from: TxnState) -> bool {
        use TxnState::*;
        match self {
            Empty => matches!(from, Empty | CompleteCommit | CompleteAbort),
            Ongoing => matches!(from, Ongoing | Empty | CompleteCommit | CompleteAbort),
            PrepareCommit => from == Ongoing,
            PrepareAbort => matches!(from, Ongoing | PrepareEpochFence),
            CompleteCommit => from == PrepareCommit,
            CompleteAbort => from == PrepareAbort,
            Dead => matches!(from, Empty | CompleteCommit | CompleteAbort),
            PrepareEpochFence => from == Ongoing,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProducerIdAndEpoch {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// The shell's handle on one request in flight; each request gets exactly one
/// [`Effect::Reply`] addressed to it, possibly once a record has committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ReplyTo(pub u64);

/// One append or one round of markers the core asked the shell for; the shell reports its
/// outcome under the same id. Outcomes of ids the core no longer waits for are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct OpId(pub u64);

/// Broker settings that shape transactions, with Kafka's config names.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TxnConfig {
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask.
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: an id with no transaction open and no change for
    /// this long is forgotten (a tombstone is written).
    pub transactional_id_expiration_ms: i64,
}

impl TxnConfig {
    /// The core's part of the node's transaction settings.
    pub fn of(settings: &TransactionDefaults) -> TxnConfig {
        TxnConfig {
            max_timeout_ms: settings.transaction_max_timeout_ms,
            transactional_id_expiration_ms: settings.transactional_id_expiration_ms,
        }
    }
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig::of(&strom_metadata::config::TRANSACTION_DEFAULTS)
    }
}

/// A transactional id's state as `__transaction_state` stores it (TransactionLogValue).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TxnRecord {
    pub producer_id: i64,
    /// The producer id before the last rotation (epoch exhaustion), or -1.
    pub previous_producer_id: i64,
    /// Transactions v2 (KIP-890) only; strom keeps what it reads and writes -1.
    pub next_producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TopicPartition>,
    pub last_update_timestamp_ms: i64,
    /// When the first partition was added; -1 while Empty.
    pub start_timestamp_ms: i64,
    /// Transactions v2 (KIP-890) only; 0 for the protocol strom runs.
    pub client_transaction_version: i16,
}

/// A prepared change: the record to append and, once it commits, the id's new state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transit {
    pub record: TxnRecord,
    /// Not persisted (Kafka neither): lets a producer retrying InitProducerId with the epoch
    /// it had get the one it was given, instead of being fenced by its own bump.
    pub last_producer_epoch: i16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Append this record to the id's `__transaction_state` partition with acks=all, then
    /// report [`super::TxnPartition::record_committed`] or `record_failed` with `op`.
    /// `value: None` is a tombstone.
    AppendRecord { op: OpId, transactional_id: String, key: Bytes, value: Option<Bytes> },
    /// Send WriteTxnMarkers (COMMIT or ABORT control batches) to the leaders of `partitions`,
    /// retrying each until it is written, then report `markers_written` (or `markers_failed`
    /// to be asked again on the next tick) with `op`.
    WriteMarkers {
        op: OpId,
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        partitions: Vec<TopicPartition>,
    },
    /// Answer the request `to`: the producer id and epoch the transactional id has after it
    /// (InitProducerId's answer, EndTxn v5's fields; other APIs take only the error).
    Reply { to: ReplyTo, result: Result<ProducerIdAndEpoch, TxnError> },
}

/// One transactional id (Kafka's `TransactionMetadata`).
#[derive(Clone, Debug)]
pub(crate) struct Txn {
    transactional_id: String,
    producer_id: i64,
    previous_producer_id: i64,
    next_producer_id: i64,
    producer_epoch: i16,
    last_producer_epoch: i16,
    timeout_ms: i32,
    state: TxnState,
    partitions: BTreeSet<TopicPartition>,
    start_timestamp_ms: i64,
    last_update_timestamp_ms: i64,
    client_transaction_version: i16,
}

impl Txn {
    /// A transactional id seen for the first time, holding `producer_id` at no epoch yet
    /// (its first InitProducerId bumps it to 0).
    pub fn new(transactional_id: String, producer_id: i64, timeout_ms: i32, now_ms: i64) -> Txn {
        Txn {
            transactional_id,
            producer_id,
            previous_producer_id: NO_PRODUCER_ID,
            next_producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_timestamp_ms: -1,
            last_update_timestamp_ms: now_ms,
            client_transaction_version: 0,
        }
    }

    /// The id as its last record left it (coordinator failover).
    pub fn from_record(transactional_id: String, r: TxnRecord) -> Txn {
        Txn {
            transactional_id,
            producer_id: r.producer_id,
            previous_producer_id: r.previous_producer_id,
            next_producer_id: r.next_producer_id,
            producer_epoch: r.producer_epoch,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms: r.timeout_ms,
            state: r.state,
            partitions: r.partitions,
            start_timestamp_ms: r.start_timestamp_ms,
            last_update_timestamp_ms: r.last_update_timestamp_ms,
            client_transaction_version: r.client_transaction_version,
        }
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    pub fn previous_producer_id(&self) -> i64 {
        self.previous_producer_id
    }

    pub fn producer_epoch(&self) -> i16 {
        self.producer_epoch
    }

    pub fn producer(&self) -> ProducerIdAndEpoch {
        ProducerIdAndEpoch { producer_id: self.producer_id, producer_epoch: self.producer_epoch }
    }

    pub fn state(&self) -> TxnState {
        self.state
    }

    pub fn timeout_ms(&self) -> i32 {
        self.timeout_ms
    }

    pub fn partitions(&self) -> &BTreeSet<TopicPartition> {
        &self.partitions
    }

    pub fn start_timestamp_ms(&self) -> i64 {
        self.start_timestamp_ms
    }

    #[cfg(test)]
    pub fn last_update_timestamp_ms(&self) -> i64 {
        self.last_update_timestamp_ms
    }

    /// Kafka's `isProducerEpochExhausted`.
    pub fn epoch_exhausted(&self) -> bool {
        self.producer_epoch >= EPOCH_EXHAUSTED_AT
    }

    /// Whether an open transaction has run past its timeout (Kafka's `timedOutTransactions`).
    pub fn timed_out(&self, now_ms: i64) -> bool {
        self.state == TxnState::Ongoing
            && self.start_timestamp_ms + i64::from(self.timeout_ms) < now_ms
    }

    /// Whether an idle id has outlived `transactional.id.expiration.ms`.
    pub fn expired(&self, now_ms: i64, expiration_ms: i64) -> bool {
        self.state.expiration_allowed()
            && self.last_update_timestamp_ms <= now_ms.saturating_sub(expiration_ms)
    }

    /// The record of the id as it is.
    pub fn record(&self) -> TxnRecord {
        TxnRecord {
            producer_id: self.producer_id,
            previous_producer_id: self.previous_producer_id,
            next_producer_id: self.next_producer_id,
            producer_epoch: self.producer_epoch,
            timeout_ms: self.timeout_ms,
            state: self.state,
            partitions: self.partitions.clone(),
            last_update_timestamp_ms: self.last_update_timestamp_ms,
            start_timestamp_ms: self.start_timestamp_ms,
            client_transaction_version: self.client_transaction_version,
        }
    }

    // ---- prepared changes (Kafka's prepare* methods) -----------------------------------

    /// InitProducerId in Empty or Complete*: the next epoch of the same producer id. With
    /// `expected` (KIP-360: a producer recovering with the id and epoch it had), a producer
    /// that is current bumps, one retrying a bump whose answer it lost gets the same epoch
    /// again, and any other is fenced.
    pub fn prepare_epoch_bump(
        &self,
        timeout_ms: i32,
        expected_epoch: Option<i16>,
        now_ms: i64,
    ) -> Result<Transit, TxnError> {
        let bumped = self.producer_epoch.checked_add(1).filter(|e| *e <= EPOCH_EXHAUSTED_AT);
        let (epoch, last_epoch) = match expected_epoch {
            None => (bumped, NO_PRODUCER_EPOCH),
            Some(e) if self.producer_epoch == NO_PRODUCER_EPOCH || e == self.producer_epoch => {
                (bumped, self.producer_epoch)
            }
            Some(e) if e == self.last_producer_epoch => {
                (Some(self.producer_epoch), self.last_producer_epoch)
            }
            Some(_) => return Err(TxnError::ProducerFenced),
        };
        // The caller rotates the producer id instead of bumping an exhausted epoch.
        let Some(epoch) = epoch else { return Err(TxnError::ProducerFenced) };
        let record = self.next_record(TxnState::Empty, epoch, BTreeSet::new(), -1, now_ms);
        Ok(self.transit(TxnRecord { timeout_ms, ..record }, last_epoch))
    }

    /// InitProducerId once the epoch is exhausted: a new producer id at epoch 0. The old one
    /// becomes the previous id, so that a retry with it is recognised.
    pub fn prepare_producer_id_rotation(
        &self,
        new_producer_id: i64,
        timeout_ms: i32,
        keep_last_epoch: bool,
        now_ms: i64,
    ) -> Transit {
        debug_assert!(!matches!(
            self.state,
            TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort
        ));
        let record = TxnRecord {
            producer_id: new_producer_id,
            previous_producer_id: self.producer_id,
            timeout_ms,
            ..self.next_record(TxnState::Empty, 0, BTreeSet::new(), -1, now_ms)
        };
        let last_epoch = if keep_last_epoch { self.producer_epoch } else { NO_PRODUCER_EPOCH };
        self.transit(record, last_epoch)
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: Ongoing with `added` joined; a transaction
    /// starting now gets its start timestamp (its timeout counts from it).
    pub fn prepare_add_partitions(
        &self,
        added: impl IntoIterator<Item = TopicPartition>,
        now_ms: i64,
    ) -> Transit {
        let start = match self.state {
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => now_ms,
            _ => self.start_timestamp_ms,
        };
        let mut partitions = self.partitions.clone();
        partitions.extend(added);
        let record =
            self.next_record(TxnState::Ongoing, self.producer_epoch, partitions, start, now_ms);
        self.transit(record, self.last_producer_epoch)
    }

    /// EndTxn: PrepareCommit or PrepareAbort of the open transaction.
    pub fn prepare_end(&self, commit: bool, now_ms: i64) -> Transit {
        let state = if commit { TxnState::PrepareCommit } else { TxnState::PrepareAbort };
        let record = self.next_record(
            state,
            self.producer_epoch,
            self.partitions.clone(),
            self.start_timestamp_ms,
            now_ms,
        );
        self.transit(record, self.last_producer_epoch)
    }

    /// The coordinator aborts the open transaction at the next epoch, so that its producer is
    /// fenced: a new producer's InitProducerId, or the transaction's timeout (Kafka's
    /// `prepareFenceProducerEpoch` followed by the abort). The epoch only changes once this
    /// record is durable, so a failed append leaves nothing to undo (Kafka's
    /// `hasFailedEpochFence`).
    pub fn prepare_fence_abort(&self, now_ms: i64) -> Transit {
        // A client never holds i16::MAX (exhaustion rotates the id first), so the bump fits.
        debug_assert!(self.producer_epoch < i16::MAX);
        let epoch = self.producer_epoch.saturating_add(1);
        let record = self.next_record(
            TxnState::PrepareAbort,
            epoch,
            self.partitions.clone(),
            self.start_timestamp_ms,
            now_ms,
        );
        self.transit(record, NO_PRODUCER_EPOCH)
    }

    /// The markers are written: Complete* and no partitions.
    pub fn prepare_complete(&self, now_ms: i64) -> Transit {
        let state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            s => panic!("{}: markers written in state {s:?}", self.transactional_id),
        };
        let record = self.next_record(
            state,
            self.producer_epoch,
            BTreeSet::new(),
            self.start_timestamp_ms,
            now_ms,
        );
        self.transit(record, self.last_producer_epoch)
    }

    /// Expiry: the id goes, and a tombstone says so. Only the state matters here.
    pub fn prepare_dead(&self) -> Transit {
        let record = self.next_record(
            TxnState::Dead,
            self.producer_epoch,
            BTreeSet::new(),
            self.start_timestamp_ms,
            self.last_update_timestamp_ms,
        );
        self.transit(record, self.last_producer_epoch)
    }

    /// Takes a prepared change whose record is now replicated (Kafka's
    /// `completeTransitionTo`, with its checks as assertions: the core prepared it).
    pub fn complete(&mut self, transit: Transit) {
        let r = transit.record;
        let id = &self.transactional_id;
        assert!(
            r.state.may_follow(self.state),
            "{id}: no transition {:?} -> {:?}",
            self.state,
            r.state
        );
        let same_producer = r.producer_id == self.producer_id;
        match r.state {
            TxnState::Empty => {
                let bump = (same_producer && r.producer_epoch >= self.producer_epoch)
                    || (!same_producer && r.producer_epoch == 0);
                assert!(bump && r.partitions.is_empty(), "{id}: bad InitProducerId transit");
            }
            TxnState::Ongoing => assert!(
                same_producer
                    && r.producer_epoch == self.producer_epoch
                    && self.partitions.is_subset(&r.partitions),
                "{id}: bad AddPartitions transit"
            ),
            TxnState::PrepareCommit | TxnState::PrepareAbort => assert!(
                same_producer
                    && (0..=1)
                        .contains(&(i32::from(r.producer_epoch) - i32::from(self.producer_epoch)))
                    && r.partitions == self.partitions,
                "{id}: bad EndTxn transit"
            ),
            TxnState::CompleteCommit | TxnState::CompleteAbort => assert!(
                same_producer && r.producer_epoch == self.producer_epoch,
                "{id}: bad marker completion"
            ),
            TxnState::Dead => {}
            TxnState::PrepareEpochFence => panic!("{id}: PrepareEpochFence is never a record"),
        }
        self.producer_id = r.producer_id;
        self.previous_producer_id = r.previous_producer_id;
        self.next_producer_id = r.next_producer_id;
        self.producer_epoch = r.producer_epoch;
        self.last_producer_epoch = transit.last_producer_epoch;
        self.timeout_ms = r.timeout_ms;
        self.state = r.state;
        self.partitions = r.partitions;
        self.start_timestamp_ms = r.start_timestamp_ms;
        self.last_update_timestamp_ms = r.last_update_timestamp_ms;
        self.client_transaction_version = r.client_transaction_version;
    }

    /// Replaying a record read back from the log (`load`).
    pub fn replace(&mut self, r: TxnRecord) {
        *self = Txn::from_record(std::mem::take(&mut self.transactional_id), r);
    }

    fn next_record(
        &self,
        state: TxnState,
        producer_epoch: i16,
        partitions: BTreeSet<TopicPartition>,
        start_timestamp_ms: i64,
        now_ms: i64,
    ) -> TxnRecord {
        TxnRecord {
            state,
            producer_epoch,
            partitions,
            start_timestamp_ms,
            // Time never goes back in a record, even if the clock does.
            last_update_timestamp_ms: now_ms.max(self.last_update_timestamp_ms),
            ..self.record()
        }
    }

    fn transit(&self, record: TxnRecord, last_producer_epoch: i16) -> Transit {
        debug_assert!(record.state == TxnState::Dead || record.producer_epoch >= 0);
        Transit { record, last_producer_epoch }
    }
}
