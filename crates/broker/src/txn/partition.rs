//! The transactional ids of one `__transaction_state` partition, as the broker leading it
//! coordinates them (Kafka's `TransactionCoordinator` and `TransactionStateManager` for one
//! partition): InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn and EndTxn decide here;
//! replies wait for the record they depend on; markers follow a durable Prepare*; timeouts
//! abort; idle ids expire; a new leader replays the partition and finishes what was prepared.
//!
//! The shell (one task per led partition) feeds it requests, the outcomes of the effects it
//! asked for, and the time, and carries out every [`Effect`] it returns:
//! - [`Effect::AppendRecord`]: append with acks=all, then [`TxnPartition::record_committed`],
//!   or [`TxnPartition::record_failed`] with [`TxnError::from_append`] of the failure.
//! - [`Effect::WriteMarkers`]: WriteTxnMarkers to the partitions' leaders, then
//!   [`TxnPartition::markers_written`] (or [`TxnPartition::markers_failed`]).
//! - [`Effect::Reply`]: answer that request.
//!
//! Call [`TxnPartition::tick`] every `transaction.abort.timed.out.transaction.cleanup.interval.ms`
//! and [`TxnPartition::expire`] every `transaction.remove.expired.transaction.cleanup.interval.ms`.
//! When leadership goes, [`TxnPartition::resign`] answers whoever still waits.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::records;
use super::state::{
    Effect, OpId, ProducerIdAndEpoch, ReplyTo, TopicPartition, Transit, Txn, TxnConfig, TxnError,
    TxnRecord, TxnState, EPOCH_EXHAUSTED_AT, NO_PRODUCER_EPOCH,
};
use crate::internal_records::RecordError;

/// The largest record value an id may grow to (its partition list is most of it); an
/// AddPartitionsToTxn past it is refused as Kafka refuses an append over `message.max.bytes`
/// (UNKNOWN_SERVER_ERROR). It bounds the memory one id holds, too.
pub(crate) const TXN_VALUE_BYTES_MAX: usize = 1_000_000;
/// A batch header (61 bytes), one record's framing (at most 21) and the largest key (an int16
/// version and an int16-length id): a full record still fits Kafka's default message size.
const _: () = assert!(
    TXN_VALUE_BYTES_MAX + 61 + 21 + 4 + i16::MAX as usize
        <= strom_metadata::config::BROKER_DEFAULTS.message_max_bytes as usize
);
/// Timed-out transactions one tick starts to abort; the rest wait for the next tick, so that
/// one tick never asks for an unbounded number of appends.
pub(crate) const TIMEOUTS_PER_TICK_MAX: usize = 1_000;
/// Expired ids one pass tombstones (Kafka bounds a pass by one batch per partition).
pub(crate) const EXPIRATIONS_PER_PASS_MAX: usize = 1_000;

/// InitProducerId of a transactional producer (the shell answers non-transactional ones
/// itself: a new producer id at epoch 0).
#[derive(Clone, Debug)]
pub(crate) struct InitProducerId {
    pub transactional_id: String,
    pub transaction_timeout_ms: i32,
    /// InitProducerId v3+ (KIP-360): the id and epoch a producer recovering from an error
    /// had, or `None` (the request's -1/-1) for a producer starting up.
    pub expected: Option<ProducerIdAndEpoch>,
}

/// The producer a transactional request (AddPartitionsToTxn, AddOffsetsToTxn, EndTxn) says
/// it is.
#[derive(Clone, Debug)]
pub(crate) struct TxnProducer {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// What became of an InitProducerId.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InitStep {
    /// Decided: carry these out (one of them answers the request, maybe after a commit).
    Done(Vec<Effect>),
    /// It needs a producer id from the broker's producer id blocks (a new transactional id,
    /// or an exhausted epoch): get one, then call `init_producer_id` again with it. Nothing
    /// changed meanwhile; the request is decided afresh then (the id may go unused).
    NeedProducerId,
}

/// What an id is waiting for. While it waits it takes no other change.
#[derive(Clone, Debug)]
enum Pending {
    /// `transit`'s record is being appended as `op`.
    Write { op: OpId, transit: Transit, then: Then },
    /// The markers of the prepared transaction are being written as `op`.
    Markers { op: OpId },
    /// The marker write failed: the next tick asks for it again.
    RetryMarkers,
    /// The markers are written but the Complete* record failed: the next tick appends it again.
    RetryComplete,
}

/// What follows a committed record.
#[derive(Clone, Debug)]
enum Then {
    /// Answer with the id's producer id and epoch.
    Reply(ReplyTo),
    /// A Prepare* is durable: answer (OK to EndTxn; CONCURRENT_TRANSACTIONS to the
    /// InitProducerId that fenced an open transaction, which retries, as Kafka makes it), then
    /// write the markers.
    Prepared { to: Option<ReplyTo>, fenced: bool },
    /// The markers were written and the transaction is complete.
    Completed,
    /// The tombstone of an expired id: forget it.
    Forget,
}

#[derive(Clone, Debug)]
struct Entry {
    txn: Txn,
    pending: Option<Pending>,
}

/// One `__transaction_state` partition's transactional ids.
#[derive(Debug)]
pub(crate) struct TxnPartition {
    /// The leader epoch of the partition when this broker took it: the coordinator epoch in
    /// WriteTxnMarkers, by which partition leaders refuse a deposed coordinator's markers.
    coordinator_epoch: i32,
    config: TxnConfig,
    ids: BTreeMap<String, Entry>,
    /// Every op in flight → its transactional id (each id has at most one).
    ops: BTreeMap<OpId, String>,
    next_op: u64,
}

impl TxnPartition {
    /// An empty partition: replay its records with [`TxnPartition::replay`], then call
    /// [`TxnPartition::loaded`] before the first request.
    pub fn new(coordinator_epoch: i32, config: TxnConfig) -> TxnPartition {
        TxnPartition {
            coordinator_epoch,
            config,
            ids: BTreeMap::new(),
            ops: BTreeMap::new(),
            next_op: 0,
        }
    }

    /// One record read back from the partition, in log order; `None` is a tombstone.
    pub fn replay(&mut self, transactional_id: String, value: Option<TxnRecord>) {
        let Some(mut record) = value else {
            self.ids.remove(&transactional_id);
            return;
        };
        match record.state {
            // Kafka writes neither (a tombstone ends an id; a fence is written as PrepareAbort).
            TxnState::Dead => {
                self.ids.remove(&transactional_id);
                return;
            }
            TxnState::PrepareEpochFence => record.state = TxnState::Ongoing,
            _ => {}
        }
        match self.ids.get_mut(&transactional_id) {
            Some(entry) => entry.txn.replace(record),
            None => {
                let txn = Txn::from_record(transactional_id.clone(), record);
                self.ids.insert(transactional_id, Entry { txn, pending: None });
            }
        }
    }

    /// [`TxnPartition::replay`] of the raw key and value.
    pub fn replay_record(&mut self, key: Bytes, value: Option<Bytes>) -> Result<(), RecordError> {
        let (id, record) = records::decode(key, value)?;
        self.replay(id, record);
        Ok(())
    }

    /// The log is replayed: transactions a previous coordinator prepared get their markers
    /// written (and are then completed), as Kafka's coordinator does on election.
    pub fn loaded(&mut self, now_ms: i64) -> Vec<Effect> {
        let prepared: Vec<String> = self
            .ids
            .iter()
            .filter(|(_, e)| {
                e.pending.is_none()
                    && matches!(e.txn.state(), TxnState::PrepareCommit | TxnState::PrepareAbort)
            })
            .map(|(id, _)| id.clone())
            .collect();
        prepared.into_iter().map(|id| self.start_markers(&id, now_ms)).collect()
    }

    /// Leadership of the partition is gone: every request still waiting is answered
    /// NOT_COORDINATOR (its client finds the new coordinator); the shell drops the rest.
    pub fn resign(self) -> Vec<Effect> {
        let result = Err(TxnError::NotCoordinator);
        self.ids
            .into_values()
            .filter_map(|e| match e.pending {
                Some(Pending::Write { then: Then::Reply(to), .. })
                | Some(Pending::Write { then: Then::Prepared { to: Some(to), .. }, .. }) => {
                    Some(Effect::Reply { to, result })
                }
                _ => None,
            })
            .collect()
    }

    pub fn get(&self, transactional_id: &str) -> Option<&Txn> {
        self.ids.get(transactional_id).map(|e| &e.txn)
    }

    /// Every id, for ListTransactions and the admin API.
    pub fn transactions(&self) -> impl Iterator<Item = &Txn> {
        self.ids.values().map(|e| &e.txn)
    }

    /// The state an id is moving to, if a change is in flight: the state of the record being
    /// written (PrepareEpochFence for a fencing abort), or the Complete* its markers lead to.
    pub fn pending_state(&self, transactional_id: &str) -> Option<TxnState> {
        let entry = self.ids.get(transactional_id)?;
        Some(match entry.pending.as_ref()? {
            Pending::Write { then: Then::Prepared { fenced: true, .. }, .. } => {
                TxnState::PrepareEpochFence
            }
            Pending::Write { transit, .. } => transit.record.state,
            Pending::Markers { .. } | Pending::RetryMarkers | Pending::RetryComplete => {
                match entry.txn.state() {
                    TxnState::PrepareCommit => TxnState::CompleteCommit,
                    _ => TxnState::CompleteAbort,
                }
            }
        })
    }

    // ---- requests ---------------------------------------------------------------------

    /// InitProducerId for a transactional id (Kafka's `handleInitProducerId`): a new id gets
    /// a producer id; an idle one the next epoch (a new producer id once the epoch is
    /// exhausted); an open transaction is first aborted at a bumped epoch, fencing its
    /// producer, and the caller is told to retry.
    pub fn init_producer_id(
        &mut self,
        to: ReplyTo,
        req: &InitProducerId,
        fresh_producer_id: Option<i64>,
        now_ms: i64,
    ) -> InitStep {
        let refuse = |e| InitStep::Done(vec![Effect::Reply { to, result: Err(e) }]);
        let id = &req.transactional_id;
        let timeout_ms = req.transaction_timeout_ms;
        if id.is_empty() {
            return refuse(TxnError::InvalidRequest);
        }
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return refuse(TxnError::InvalidTransactionTimeout);
        }
        let mut fresh_producer_id = fresh_producer_id;
        if !self.ids.contains_key(id) {
            let Some(producer_id) = fresh_producer_id.take() else {
                return InitStep::NeedProducerId;
            };
            let txn = Txn::new(id.clone(), producer_id, timeout_ms, now_ms);
            self.ids.insert(id.clone(), Entry { txn, pending: None });
        }
        let entry = &self.ids[id];
        let txn = &entry.txn;
        if entry.pending.is_some() {
            return refuse(TxnError::ConcurrentTransactions);
        }
        if let Some(expected) = req.expected {
            // KIP-360: a recovering producer must be this id's current producer, or its
            // previous one retrying the rotation that its exhausted epoch caused.
            let valid = txn.producer_epoch() == NO_PRODUCER_EPOCH
                || expected.producer_id == txn.producer_id()
                || (expected.producer_id == txn.previous_producer_id()
                    && expected.producer_epoch >= EPOCH_EXHAUSTED_AT);
            if !valid {
                return refuse(TxnError::ProducerFenced);
            }
        }
        let (transit, then) = match txn.state() {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                return refuse(TxnError::ConcurrentTransactions);
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let expected_epoch = req.expected.map(|e| e.producer_epoch);
                let transit = if txn.epoch_exhausted()
                    && expected_epoch.is_none_or(|e| e == txn.producer_epoch())
                {
                    let Some(producer_id) = fresh_producer_id else {
                        return InitStep::NeedProducerId;
                    };
                    let keep_last_epoch = req.expected.is_some();
                    txn.prepare_producer_id_rotation(
                        producer_id,
                        timeout_ms,
                        keep_last_epoch,
                        now_ms,
                    )
                } else {
                    match txn.prepare_epoch_bump(timeout_ms, expected_epoch, now_ms) {
                        Ok(transit) => transit,
                        Err(e) => return refuse(e),
                    }
                };
                (transit, Then::Reply(to))
            }
            TxnState::Ongoing => {
                (txn.prepare_fence_abort(now_ms), Then::Prepared { to: Some(to), fenced: true })
            }
            // Never a settled state: Dead only while its tombstone is pending, and a fence is
            // written as PrepareAbort.
            TxnState::Dead | TxnState::PrepareEpochFence => {
                debug_assert!(false, "{id} settled in {:?}", txn.state());
                return refuse(TxnError::ConcurrentTransactions);
            }
        };
        InitStep::Done(vec![self.start_write(id, transit, then)])
    }

    /// AddPartitionsToTxn (Kafka's `handleAddPartitionsToTransaction`): the partitions join
    /// the transaction, which opens if it was not; answered once that is durable.
    pub fn add_partitions(
        &mut self,
        to: ReplyTo,
        producer: &TxnProducer,
        partitions: Vec<TopicPartition>,
        now_ms: i64,
    ) -> Vec<Effect> {
        let reply = |result| vec![Effect::Reply { to, result }];
        let txn = match self.check_producer(producer) {
            Ok(txn) => txn,
            Err(e) => return reply(Err(e)),
        };
        match txn.state() {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                return reply(Err(TxnError::ConcurrentTransactions));
            }
            TxnState::Ongoing if partitions.iter().all(|p| txn.partitions().contains(p)) => {
                return reply(Ok(txn.producer()));
            }
            _ => {}
        }
        let transit = txn.prepare_add_partitions(partitions, now_ms);
        let value = records::value(&transit.record);
        if value.len() > TXN_VALUE_BYTES_MAX {
            return reply(Err(TxnError::UnknownServerError));
        }
        let id = producer.transactional_id.clone();
        vec![self.start_write_value(&id, transit, Some(value), Then::Reply(to))]
    }

    /// KIP-890 part 1 (AddPartitionsToTxn v4 with `verify_only`, asked by a partition leader
    /// before it appends a producer's first transactional batch): whether `partitions` are in
    /// the producer's ongoing transaction. Nothing changes; the leader refuses the batch unless
    /// this is `Ok`, so a late or stray produce cannot open a transaction nobody will end.
    pub fn verify(
        &self,
        producer: &TxnProducer,
        partitions: &[TopicPartition],
    ) -> Result<(), TxnError> {
        let txn = self.check_producer(producer)?;
        match txn.state() {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Err(TxnError::ConcurrentTransactions)
            }
            TxnState::Ongoing if partitions.iter().all(|p| txn.partitions().contains(p)) => Ok(()),
            _ => Err(TxnError::InvalidTxnState),
        }
    }

    /// AddOffsetsToTxn: the `__consumer_offsets` partition of the consumer group (the shell
    /// computes it) joins the transaction, so that its offsets commit or abort with it.
    pub fn add_offsets(
        &mut self,
        to: ReplyTo,
        producer: &TxnProducer,
        offsets_partition: TopicPartition,
        now_ms: i64,
    ) -> Vec<Effect> {
        self.add_partitions(to, producer, vec![offsets_partition], now_ms)
    }

    /// EndTxn (Kafka's `handleEndTransaction` for a client): an open transaction prepares to
    /// commit or abort, answered once that is durable, and its markers follow. A retry of an
    /// EndTxn that already completed the same way is answered OK.
    pub fn end_txn(
        &mut self,
        to: ReplyTo,
        producer: &TxnProducer,
        commit: bool,
        now_ms: i64,
    ) -> Vec<Effect> {
        let reply = |result| vec![Effect::Reply { to, result }];
        let txn = match self.check_producer(producer) {
            Ok(txn) => txn,
            Err(e) => return reply(Err(e)),
        };
        let result = match (txn.state(), commit) {
            (TxnState::Ongoing, _) => {
                let transit = txn.prepare_end(commit, now_ms);
                let then = Then::Prepared { to: Some(to), fenced: false };
                let id = producer.transactional_id.clone();
                return vec![self.start_write(&id, transit, then)];
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
                Ok(txn.producer())
            }
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(TxnError::ConcurrentTransactions)
            }
            _ => Err(TxnError::InvalidTxnState),
        };
        reply(result)
    }

    // ---- outcomes of effects ------------------------------------------------------------

    /// The record of `op` is replicated: the id takes its new state, and whoever waited on it
    /// is answered.
    pub fn record_committed(&mut self, op: OpId, now_ms: i64) -> Vec<Effect> {
        let Some((id, transit, then)) = self.take_write(op) else { return Vec::new() };
        if let Then::Forget = then {
            self.ids.remove(&id);
            return Vec::new();
        }
        let Some(entry) = self.ids.get_mut(&id) else { return Vec::new() };
        entry.txn.complete(transit);
        let producer = entry.txn.producer();
        match then {
            Then::Reply(to) => vec![Effect::Reply { to, result: Ok(producer) }],
            Then::Prepared { to, fenced } => {
                let result =
                    if fenced { Err(TxnError::ConcurrentTransactions) } else { Ok(producer) };
                let mut effects: Vec<Effect> =
                    to.map(|to| Effect::Reply { to, result }).into_iter().collect();
                effects.push(self.start_markers(&id, now_ms));
                effects
            }
            Then::Completed | Then::Forget => Vec::new(),
        }
    }

    /// The record of `op` was not appended (`error` from [`TxnError::from_append`]): the id
    /// stays as it was and the request that waited gets the error. A Complete* record is
    /// appended again on the next tick; an abort for a timeout or an expiry is tried again
    /// when it is next due.
    pub fn record_failed(&mut self, op: OpId, error: TxnError) -> Vec<Effect> {
        let Some((id, _, then)) = self.take_write(op) else { return Vec::new() };
        match then {
            Then::Reply(to) | Then::Prepared { to: Some(to), .. } => {
                vec![Effect::Reply { to, result: Err(error) }]
            }
            Then::Completed => {
                if let Some(entry) = self.ids.get_mut(&id) {
                    entry.pending = Some(Pending::RetryComplete);
                }
                Vec::new()
            }
            Then::Prepared { to: None, .. } | Then::Forget => Vec::new(),
        }
    }

    /// Every marker of `op` is written: the transaction completes (a Complete* record).
    pub fn markers_written(&mut self, op: OpId, now_ms: i64) -> Vec<Effect> {
        let Some(id) = self.take_markers(op) else { return Vec::new() };
        vec![self.start_complete(&id, now_ms)]
    }

    /// The markers of `op` could not all be written: the next tick asks for them again.
    pub fn markers_failed(&mut self, op: OpId) {
        if let Some(id) = self.take_markers(op) {
            if let Some(entry) = self.ids.get_mut(&id) {
                entry.pending = Some(Pending::RetryMarkers);
            }
        }
    }

    // ---- time ---------------------------------------------------------------------------

    /// Failed markers and completions are asked for again; open transactions past their
    /// timeout are aborted at a bumped epoch, which fences their producer (Kafka's
    /// `abortTimedOutTransactions`), at most [`TIMEOUTS_PER_TICK_MAX`] at a time.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Effect> {
        let mut retry_markers = Vec::new();
        let mut retry_complete = Vec::new();
        let mut timed_out = Vec::new();
        for (id, entry) in &self.ids {
            match entry.pending {
                Some(Pending::RetryMarkers) => retry_markers.push(id.clone()),
                Some(Pending::RetryComplete) => retry_complete.push(id.clone()),
                None if timed_out.len() < TIMEOUTS_PER_TICK_MAX && entry.txn.timed_out(now_ms) => {
                    timed_out.push(id.clone());
                }
                _ => {}
            }
        }
        let mut effects = Vec::new();
        for id in retry_markers {
            effects.push(self.start_markers(&id, now_ms));
        }
        for id in retry_complete {
            effects.push(self.start_complete(&id, now_ms));
        }
        for id in timed_out {
            let transit = self.ids[&id].txn.prepare_fence_abort(now_ms);
            let then = Then::Prepared { to: None, fenced: true };
            effects.push(self.start_write(&id, transit, then));
        }
        effects
    }

    /// Ids idle for `transactional.id.expiration.ms` with no transaction open are forgotten:
    /// a tombstone each, at most [`EXPIRATIONS_PER_PASS_MAX`] per pass (Kafka's
    /// `removeExpiredTransactionalIds`).
    pub fn expire(&mut self, now_ms: i64) -> Vec<Effect> {
        let expiration_ms = self.config.transactional_id_expiration_ms;
        let expired: Vec<String> = self
            .ids
            .iter()
            .filter(|(_, e)| e.pending.is_none() && e.txn.expired(now_ms, expiration_ms))
            .map(|(id, _)| id.clone())
            .take(EXPIRATIONS_PER_PASS_MAX)
            .collect();
        expired
            .into_iter()
            .map(|id| {
                let transit = self.ids[&id].txn.prepare_dead();
                self.start_write_value(&id, transit, None, Then::Forget)
            })
            .collect()
    }

    // ---- helpers ------------------------------------------------------------------------

    /// Kafka's checks shared by AddPartitionsToTxn, AddOffsetsToTxn and EndTxn.
    fn check_producer(&self, p: &TxnProducer) -> Result<&Txn, TxnError> {
        if p.transactional_id.is_empty() {
            return Err(TxnError::InvalidRequest);
        }
        let entry = self.ids.get(&p.transactional_id).ok_or(TxnError::InvalidProducerIdMapping)?;
        if entry.txn.producer_id() != p.producer_id {
            Err(TxnError::InvalidProducerIdMapping)
        } else if entry.txn.producer_epoch() != p.producer_epoch {
            Err(TxnError::ProducerFenced)
        } else if entry.pending.is_some() {
            Err(TxnError::ConcurrentTransactions)
        } else {
            Ok(&entry.txn)
        }
    }

    fn new_op(&mut self, id: &str) -> OpId {
        let op = OpId(self.next_op);
        self.next_op += 1;
        self.ops.insert(op, id.to_owned());
        op
    }

    fn start_write(&mut self, id: &str, transit: Transit, then: Then) -> Effect {
        let value = records::value(&transit.record);
        self.start_write_value(id, transit, Some(value), then)
    }

    fn start_write_value(
        &mut self,
        id: &str,
        transit: Transit,
        value: Option<Bytes>,
        then: Then,
    ) -> Effect {
        let op = self.new_op(id);
        let entry = self.ids.get_mut(id).expect("writes are started for known ids");
        assert!(entry.pending.is_none(), "{id}: a second change while one is pending");
        entry.pending = Some(Pending::Write { op, transit, then });
        Effect::AppendRecord { op, transactional_id: id.to_owned(), key: records::key(id), value }
    }

    /// Markers for the prepared transaction of `id`; with no partition there are none to
    /// write, and it completes at once.
    fn start_markers(&mut self, id: &str, now_ms: i64) -> Effect {
        let entry = &self.ids[id];
        if entry.txn.partitions().is_empty() {
            self.ids.get_mut(id).expect("present").pending = None;
            return self.start_complete(id, now_ms);
        }
        let txn = &entry.txn;
        let (producer_id, producer_epoch) = (txn.producer_id(), txn.producer_epoch());
        let commit = txn.state() == TxnState::PrepareCommit;
        debug_assert!(commit || txn.state() == TxnState::PrepareAbort);
        let partitions = txn.partitions().iter().cloned().collect();
        let op = self.new_op(id);
        self.ids.get_mut(id).expect("present").pending = Some(Pending::Markers { op });
        Effect::WriteMarkers {
            op,
            transactional_id: id.to_owned(),
            producer_id,
            producer_epoch,
            commit,
            coordinator_epoch: self.coordinator_epoch,
            partitions,
        }
    }

    fn start_complete(&mut self, id: &str, now_ms: i64) -> Effect {
        let entry = self.ids.get_mut(id).expect("present");
        entry.pending = None;
        let transit = entry.txn.prepare_complete(now_ms);
        self.start_write(id, transit, Then::Completed)
    }

    fn take_write(&mut self, op: OpId) -> Option<(String, Transit, Then)> {
        let id = self.ops.remove(&op)?;
        let entry = self.ids.get_mut(&id)?;
        match entry.pending.take() {
            Some(Pending::Write { op: o, transit, then }) if o == op => Some((id, transit, then)),
            other => {
                entry.pending = other;
                None
            }
        }
    }

    fn take_markers(&mut self, op: OpId) -> Option<String> {
        let id = self.ops.remove(&op)?;
        let entry = self.ids.get_mut(&id)?;
        match entry.pending {
            Some(Pending::Markers { op: o }) if o == op => {
                entry.pending = None;
                Some(id)
            }
            _ => None,
        }
    }
}
