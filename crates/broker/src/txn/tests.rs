//! Every transition of the transaction coordinator's core, driven as the shell would drive it
//! (requests, then the outcomes of the effects they asked for) without sockets or timers.

use bytes::Bytes;

use super::records;
use super::*;
use crate::errors::KafkaError;

const MINUTE_MS: i64 = 60_000;
const COORDINATOR_EPOCH: i32 = 4;

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition { topic: topic.into(), partition }
}

fn pid(producer_id: i64, producer_epoch: i16) -> ProducerIdAndEpoch {
    ProducerIdAndEpoch { producer_id, producer_epoch }
}

fn producer(id: &str, p: ProducerIdAndEpoch) -> TxnProducer {
    TxnProducer {
        transactional_id: id.into(),
        producer_id: p.producer_id,
        producer_epoch: p.producer_epoch,
    }
}

fn init(id: &str, expected: Option<ProducerIdAndEpoch>) -> InitProducerId {
    InitProducerId { transactional_id: id.into(), transaction_timeout_ms: 60_000, expected }
}

/// The effects of one step, taken apart as the shell would carry them out.
#[derive(Debug, Default)]
struct Out {
    appends: Vec<(OpId, String, Bytes, Option<Bytes>)>,
    markers: Vec<Effect>,
    replies: Vec<(ReplyTo, Result<ProducerIdAndEpoch, TxnError>)>,
}

fn split(effects: Vec<Effect>) -> Out {
    let mut out = Out::default();
    for e in effects {
        match e {
            Effect::AppendRecord { op, transactional_id, key, value } => {
                out.appends.push((op, transactional_id, key, value))
            }
            Effect::WriteMarkers { .. } => out.markers.push(e),
            Effect::Reply { to, result } => out.replies.push((to, result)),
        }
    }
    out
}

/// A partition with every record it asked to append kept as its log, in order.
struct Harness {
    core: TxnPartition,
    log: Vec<(Bytes, Option<Bytes>)>,
    now_ms: i64,
    next_reply: u64,
    next_producer_id: i64,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            core: TxnPartition::new(COORDINATOR_EPOCH, TxnConfig::default()),
            log: Vec::new(),
            now_ms: 1_000,
            next_reply: 0,
            next_producer_id: 1_000,
        }
    }

    fn to(&mut self) -> ReplyTo {
        self.next_reply += 1;
        ReplyTo(self.next_reply)
    }

    /// Every append of `effects` commits, in order, and so do those that follow from them;
    /// returns everything else.
    fn commit_all(&mut self, effects: Vec<Effect>) -> Out {
        let mut out = split(effects);
        let mut rest = Out { replies: std::mem::take(&mut out.replies), ..Out::default() };
        rest.markers.append(&mut out.markers);
        for (op, _, key, value) in out.appends {
            self.log.push((key, value));
            let effects = self.core.record_committed(op, self.now_ms);
            let more = self.commit_all(effects);
            rest.replies.extend(more.replies);
            rest.markers.extend(more.markers);
        }
        rest
    }

    /// InitProducerId until decided, handing out producer ids as the broker's blocks would.
    fn init(&mut self, req: &InitProducerId) -> Result<ProducerIdAndEpoch, TxnError> {
        let to = self.to();
        let mut step = self.core.init_producer_id(to, req, None, self.now_ms);
        if step == InitStep::NeedProducerId {
            self.next_producer_id += 1;
            let fresh = Some(self.next_producer_id);
            step = self.core.init_producer_id(to, req, fresh, self.now_ms);
        }
        let InitStep::Done(effects) = step else { panic!("asked twice for a producer id") };
        self.only_reply(to, effects)
    }

    fn add(&mut self, p: &TxnProducer, partitions: &[TopicPartition]) -> Result<(), TxnError> {
        let to = self.to();
        let effects = self.core.add_partitions(to, p, partitions.to_vec(), self.now_ms);
        self.only_reply(to, effects).map(|_| ())
    }

    /// EndTxn, its Prepare* committed; returns the answer and the markers asked for.
    fn end(&mut self, p: &TxnProducer, commit: bool) -> (Result<(), TxnError>, Out) {
        let to = self.to();
        let effects = self.core.end_txn(to, p, commit, self.now_ms);
        let mut out = self.commit_all(effects);
        assert_eq!(out.replies.len(), 1, "{out:?}");
        let (got, result) = out.replies.remove(0);
        assert_eq!(got, to);
        (result.map(|_| ()), out)
    }

    fn only_reply(
        &mut self,
        to: ReplyTo,
        effects: Vec<Effect>,
    ) -> Result<ProducerIdAndEpoch, TxnError> {
        let out = self.commit_all(effects);
        assert!(out.markers.is_empty(), "{out:?}");
        assert_eq!(out.replies.len(), 1, "{out:?}");
        assert_eq!(out.replies[0].0, to);
        out.replies[0].1
    }

    /// The markers of `out` are written; returns what followed (the Complete* record, committed).
    fn markers_written(&mut self, out: Out) -> Out {
        let [Effect::WriteMarkers { op, .. }] = out.markers[..] else { panic!("{out:?}") };
        let effects = self.core.markers_written(op, self.now_ms);
        self.commit_all(effects)
    }

    /// Carries out `effects` of a call on the core, every append committing.
    fn settle(&mut self, call: impl FnOnce(&mut TxnPartition, i64) -> Vec<Effect>) -> Out {
        let effects = call(&mut self.core, self.now_ms);
        self.commit_all(effects)
    }

    fn state(&self, id: &str) -> TxnState {
        self.core.get(id).expect("known id").state()
    }

    /// A new coordinator (the next leader epoch) replaying this one's log.
    fn failover(&self) -> (TxnPartition, Vec<Effect>) {
        let mut core = TxnPartition::new(COORDINATOR_EPOCH + 1, TxnConfig::default());
        for (key, value) in &self.log {
            core.replay_record(key.clone(), value.clone()).expect("records decode");
        }
        let effects = core.loaded(self.now_ms);
        (core, effects)
    }
}

fn markers_of(e: &Effect) -> (i64, i16, bool, i32, Vec<TopicPartition>) {
    let Effect::WriteMarkers {
        producer_id,
        producer_epoch,
        commit,
        coordinator_epoch,
        partitions,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    (*producer_id, *producer_epoch, *commit, *coordinator_epoch, partitions.clone())
}

/// A producer with an open transaction over `t-0` and the offsets partition of a group.
fn open_transaction(h: &mut Harness, id: &str) -> TxnProducer {
    let p = producer(id, h.init(&init(id, None)).unwrap());
    h.add(&p, &[tp("t", 0)]).unwrap();
    let to = h.to();
    let effects = h.core.add_offsets(to, &p, tp("__consumer_offsets", 7), h.now_ms);
    assert_eq!(h.only_reply(to, effects), Ok(pid(p.producer_id, p.producer_epoch)));
    p
}

#[test]
fn a_committed_transaction_goes_through_every_state_in_order() {
    let mut h = Harness::new();
    let first = h.init(&init("tx", None)).unwrap();
    assert_eq!(first, pid(1_001, 0));
    assert_eq!(h.state("tx"), TxnState::Empty);
    let p = producer("tx", first);
    h.now_ms += 10;
    h.add(&p, &[tp("t", 0), tp("t", 1)]).unwrap();
    assert_eq!(h.state("tx"), TxnState::Ongoing);
    assert_eq!(h.core.get("tx").unwrap().start_timestamp_ms(), 1_010);
    h.now_ms += 10;
    // Adding what is already in the transaction writes nothing.
    let to = h.to();
    let effects = h.core.add_partitions(to, &p, vec![tp("t", 1)], h.now_ms);
    assert_eq!(effects, vec![Effect::Reply { to, result: Ok(first) }]);
    h.add(&p, &[tp("u", 3)]).unwrap();
    assert_eq!(h.core.get("tx").unwrap().start_timestamp_ms(), 1_010, "the start stays");

    let (answer, out) = h.end(&p, true);
    assert_eq!(answer, Ok(()));
    assert_eq!(h.state("tx"), TxnState::PrepareCommit);
    assert_eq!(h.core.pending_state("tx"), Some(TxnState::CompleteCommit));
    let want = vec![tp("t", 0), tp("t", 1), tp("u", 3)];
    assert_eq!(markers_of(&out.markers[0]), (1_001, 0, true, COORDINATOR_EPOCH, want));
    let after = h.markers_written(out);
    assert!(after.replies.is_empty() && after.markers.is_empty());
    assert_eq!(h.state("tx"), TxnState::CompleteCommit);
    assert!(h.core.get("tx").unwrap().partitions().is_empty());
    assert_eq!(h.core.pending_state("tx"), None);
    // Empty, Ongoing ×2, PrepareCommit, CompleteCommit: one record per change, in order.
    let states: Vec<TxnState> = h
        .log
        .iter()
        .map(|(k, v)| records::decode(k.clone(), v.clone()).unwrap().1.unwrap().state)
        .collect();
    use TxnState::*;
    assert_eq!(states, [Empty, Ongoing, Ongoing, PrepareCommit, CompleteCommit]);

    // A retried EndTxn that matches is answered OK; one that contradicts it is refused.
    assert_eq!(h.end(&p, true).0, Ok(()));
    assert_eq!(h.end(&p, false).0, Err(TxnError::InvalidTxnState));
    // The next transaction starts from CompleteCommit with a new start time.
    h.now_ms += 10;
    h.add(&p, &[tp("t", 0)]).unwrap();
    assert_eq!(h.core.get("tx").unwrap().start_timestamp_ms(), h.now_ms);
}

#[test]
fn an_aborted_transaction_writes_abort_markers_and_only_matching_retries_succeed() {
    let mut h = Harness::new();
    let p = open_transaction(&mut h, "tx");
    let (answer, out) = h.end(&p, false);
    assert_eq!(answer, Ok(()));
    let (_, epoch, commit, _, partitions) = markers_of(&out.markers[0]);
    assert_eq!((epoch, commit), (0, false));
    assert_eq!(partitions, vec![tp("__consumer_offsets", 7), tp("t", 0)]);
    h.markers_written(out);
    assert_eq!(h.state("tx"), TxnState::CompleteAbort);
    assert_eq!(h.end(&p, false).0, Ok(()));
    assert_eq!(h.end(&p, true).0, Err(TxnError::InvalidTxnState));
    // EndTxn with nothing open is refused too.
    let mut h = Harness::new();
    let p = producer("tx", h.init(&init("tx", None)).unwrap());
    assert_eq!(h.end(&p, true).0, Err(TxnError::InvalidTxnState));
}

#[test]
fn nothing_is_answered_before_its_record_commits_and_a_failed_append_changes_nothing() {
    let mut h = Harness::new();
    let p = producer("tx", h.init(&init("tx", None)).unwrap());
    let to = h.to();
    let out = split(h.core.add_partitions(to, &p, vec![tp("t", 0)], h.now_ms));
    assert!(out.replies.is_empty(), "no answer before the record is replicated");
    let (op, ..) = out.appends[0];
    // Meanwhile every other change of the id waits.
    let to2 = h.to();
    let refused = h.core.end_txn(to2, &p, true, h.now_ms);
    let concurrent = Err(TxnError::ConcurrentTransactions);
    assert_eq!(refused, vec![Effect::Reply { to: to2, result: concurrent }]);
    let failed = h.core.record_failed(op, TxnError::from_append(KafkaError::RequestTimedOut));
    let unavailable = Err(TxnError::CoordinatorNotAvailable);
    assert_eq!(failed, vec![Effect::Reply { to, result: unavailable }]);
    assert_eq!(h.state("tx"), TxnState::Empty, "the id stays as it was");
    assert!(h.core.record_committed(op, h.now_ms).is_empty(), "a stale outcome is ignored");
    h.add(&p, &[tp("t", 0)]).unwrap();
    assert_eq!(h.state("tx"), TxnState::Ongoing);
}

#[test]
fn concurrent_end_txns_are_told_to_retry_until_the_markers_are_written() {
    let mut h = Harness::new();
    let p = open_transaction(&mut h, "tx");
    let to = h.to();
    let out = split(h.core.end_txn(to, &p, true, h.now_ms));
    let (op, ..) = out.appends[0];
    let concurrent = Err(TxnError::ConcurrentTransactions);
    for commit in [true, false] {
        let to = h.to();
        let refused = h.core.end_txn(to, &p, commit, h.now_ms);
        assert_eq!(refused, vec![Effect::Reply { to, result: concurrent }]);
    }
    let mut prepared = h.settle(|core, now| core.record_committed(op, now));
    assert_eq!(prepared.replies.remove(0), (to, Ok(pid(1_001, 0))));
    // Markers in flight: EndTxn, AddPartitionsToTxn and InitProducerId all wait.
    assert_eq!(h.end(&p, true).0, concurrent.map(|_| ()));
    assert_eq!(h.add(&p, &[tp("t", 9)]), concurrent.map(|_| ()));
    assert_eq!(h.init(&init("tx", None)), concurrent);
    h.markers_written(prepared);
    assert_eq!(h.end(&p, true).0, Ok(()));
}

#[test]
fn a_new_producer_fences_the_old_one_by_aborting_its_transaction_at_a_bumped_epoch() {
    let mut h = Harness::new();
    let old = open_transaction(&mut h, "tx");
    let to = h.to();
    let InitStep::Done(effects) = h.core.init_producer_id(to, &init("tx", None), None, h.now_ms)
    else {
        panic!("an existing id needs no new producer id")
    };
    assert_eq!(h.core.pending_state("tx"), Some(TxnState::PrepareEpochFence));
    let mut out = h.commit_all(effects);
    // The fencing InitProducerId is told to retry once the abort is durable, as Kafka does.
    assert_eq!(out.replies.remove(0), (to, Err(TxnError::ConcurrentTransactions)));
    assert_eq!(h.state("tx"), TxnState::PrepareAbort);
    let (producer_id, epoch, commit, ..) = markers_of(&out.markers[0]);
    assert_eq!((producer_id, epoch, commit), (1_001, 1, false), "the abort carries the new epoch");
    // The zombie is fenced from now on, in the words its client version knows.
    assert_eq!(h.add(&old, &[tp("t", 1)]), Err(TxnError::ProducerFenced));
    assert_eq!(TxnError::ProducerFenced.for_legacy_client(), TxnError::InvalidProducerEpoch);
    h.markers_written(out);
    assert_eq!(h.state("tx"), TxnState::CompleteAbort);
    assert_eq!(h.end(&old, true).0, Err(TxnError::ProducerFenced));
    // The new producer's retry gets the next epoch.
    assert_eq!(h.init(&init("tx", None)), Ok(pid(1_001, 2)));
    assert_eq!(h.end(&old, false).0, Err(TxnError::ProducerFenced));
}

#[test]
fn a_transaction_open_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let mut h = Harness::new();
    let p = open_transaction(&mut h, "tx");
    let start = h.core.get("tx").unwrap().start_timestamp_ms();
    assert!(h.core.tick(start + MINUTE_MS).is_empty(), "not past its 60 s yet");
    h.now_ms = start + MINUTE_MS + 1;
    let out = h.settle(TxnPartition::tick);
    assert!(out.replies.is_empty(), "nobody asked for this abort");
    assert_eq!(markers_of(&out.markers[0]).1, 1, "the epoch is bumped");
    assert_eq!(h.state("tx"), TxnState::PrepareAbort);
    assert!(h.core.tick(h.now_ms + MINUTE_MS).is_empty(), "aborted once");
    h.markers_written(out);
    assert_eq!(h.state("tx"), TxnState::CompleteAbort);
    assert_eq!(h.end(&p, true).0, Err(TxnError::ProducerFenced));
    // KIP-360: the fenced producer may not take the id back with its old epoch.
    let recovering = init("tx", Some(pid(p.producer_id, p.producer_epoch)));
    assert_eq!(h.init(&recovering), Err(TxnError::ProducerFenced));
}

#[test]
fn a_failed_timeout_abort_is_tried_again_on_the_next_tick() {
    let mut h = Harness::new();
    open_transaction(&mut h, "tx");
    h.now_ms += 2 * MINUTE_MS;
    let out = split(h.core.tick(h.now_ms));
    let (op, ..) = out.appends[0];
    assert!(h.core.record_failed(op, TxnError::CoordinatorNotAvailable).is_empty());
    assert_eq!(h.state("tx"), TxnState::Ongoing);
    let out = h.settle(TxnPartition::tick);
    assert_eq!(markers_of(&out.markers[0]).1, 1, "bumped once, not twice");
}

#[test]
fn a_new_coordinator_finishes_a_prepared_commit_with_its_own_epoch() {
    let mut h = Harness::new();
    let p = open_transaction(&mut h, "tx");
    let (answer, _markers_never_written) = h.end(&p, true);
    assert_eq!(answer, Ok(()));
    open_transaction(&mut h, "other");
    let idle = producer("idle", h.init(&init("idle", None)).unwrap());

    let (core, effects) = h.failover();
    h.core = core;
    let out = split(effects);
    assert_eq!(out.markers.len(), 1, "only the prepared transaction resumes: {out:?}");
    let (producer_id, epoch, commit, coordinator_epoch, partitions) = markers_of(&out.markers[0]);
    assert_eq!((producer_id, epoch, commit), (p.producer_id, 0, true));
    assert_eq!(coordinator_epoch, COORDINATOR_EPOCH + 1);
    assert_eq!(partitions, vec![tp("__consumer_offsets", 7), tp("t", 0)]);
    assert_eq!(h.end(&p, true).0, Err(TxnError::ConcurrentTransactions));
    h.markers_written(out);
    assert_eq!(h.state("tx"), TxnState::CompleteCommit);
    assert_eq!(h.state("other"), TxnState::Ongoing);
    assert_eq!(h.state("idle"), TxnState::Empty);
    assert_eq!(h.core.get("idle").unwrap().producer(), pid(idle.producer_id, 0));
    assert_eq!(h.end(&p, true).0, Ok(()));
}

#[test]
fn failed_markers_and_completions_are_asked_for_again_on_the_next_tick() {
    let mut h = Harness::new();
    let p = open_transaction(&mut h, "tx");
    let (_, out) = h.end(&p, true);
    let [Effect::WriteMarkers { op, .. }] = out.markers[..] else { panic!("{out:?}") };
    h.core.markers_failed(op);
    let again = split(h.core.tick(h.now_ms));
    assert_eq!(again.markers.len(), 1);
    let [Effect::WriteMarkers { op, .. }] = again.markers[..] else { panic!() };
    let complete = split(h.core.markers_written(op, h.now_ms));
    let (op, ..) = complete.appends[0];
    assert!(h.core.record_failed(op, TxnError::NotCoordinator).is_empty());
    assert_eq!(h.state("tx"), TxnState::PrepareCommit);
    h.settle(TxnPartition::tick);
    assert_eq!(h.state("tx"), TxnState::CompleteCommit);
}

#[test]
fn an_exhausted_epoch_gets_a_new_producer_id_and_a_lost_answer_can_be_asked_again() {
    let mut h = Harness::new();
    let old = pid(500, EPOCH_EXHAUSTED_AT);
    let record = TxnRecord {
        producer_id: old.producer_id,
        previous_producer_id: NO_PRODUCER_ID,
        next_producer_id: NO_PRODUCER_ID,
        producer_epoch: old.producer_epoch,
        timeout_ms: 60_000,
        state: TxnState::CompleteCommit,
        partitions: Default::default(),
        last_update_timestamp_ms: h.now_ms,
        start_timestamp_ms: h.now_ms,
        client_transaction_version: 0,
    };
    h.core.replay("tx".into(), Some(record));
    assert!(h.core.loaded(h.now_ms).is_empty());
    assert!(h.core.get("tx").unwrap().epoch_exhausted());
    let recovering = init("tx", Some(old));
    let rotated = h.init(&recovering).unwrap();
    assert_eq!(rotated, pid(1_001, 0), "a new producer id at epoch 0");
    assert_eq!(h.core.get("tx").unwrap().previous_producer_id(), 500);
    // The producer lost that answer and asks again with what it had: same answer, no bump.
    assert_eq!(h.init(&recovering), Ok(rotated));
    // Across a failover too: the previous producer id is in the record (v1).
    let (core, _) = h.failover();
    h.core = core;
    assert_eq!(h.core.get("tx").unwrap().previous_producer_id(), 500);
    assert_eq!(h.init(&init("tx", Some(rotated))), Ok(pid(1_001, 1)));
    assert_eq!(h.init(&init("tx", Some(pid(42, 0)))), Err(TxnError::ProducerFenced));
}

#[test]
fn epochs_run_up_to_the_exhausted_one_then_the_producer_id_rotates() {
    let mut h = Harness::new();
    let mut record = TxnRecord {
        producer_id: 7,
        previous_producer_id: NO_PRODUCER_ID,
        next_producer_id: NO_PRODUCER_ID,
        producer_epoch: EPOCH_EXHAUSTED_AT - 1,
        timeout_ms: 60_000,
        state: TxnState::Empty,
        partitions: Default::default(),
        last_update_timestamp_ms: h.now_ms,
        start_timestamp_ms: -1,
        client_transaction_version: 0,
    };
    h.core.replay("tx".into(), Some(record.clone()));
    assert_eq!(h.init(&init("tx", None)), Ok(pid(7, EPOCH_EXHAUSTED_AT)));
    assert_eq!(h.init(&init("tx", None)), Ok(pid(1_001, 0)));
    // A fence of a producer at the exhausted epoch takes the last one, i16::MAX.
    record.producer_epoch = EPOCH_EXHAUSTED_AT;
    record.state = TxnState::Ongoing;
    record.partitions.insert(tp("t", 0));
    record.start_timestamp_ms = h.now_ms;
    h.core.replay("z".into(), Some(record));
    let to = h.to();
    let mut out =
        h.settle(|core, now| match core.init_producer_id(to, &init("z", None), None, now) {
            InitStep::Done(effects) => effects,
            InitStep::NeedProducerId => panic!("the fence comes first"),
        });
    assert_eq!(out.replies.remove(0).1, Err(TxnError::ConcurrentTransactions));
    assert_eq!(markers_of(&out.markers[0]).1, i16::MAX);
    h.markers_written(out);
    assert_eq!(h.init(&init("z", None)), Ok(pid(1_002, 0)));
}

#[test]
fn idle_ids_expire_after_seven_days_with_a_tombstone_and_open_ones_never_do() {
    let mut h = Harness::new();
    h.init(&init("idle", None)).unwrap();
    let done = open_transaction(&mut h, "done");
    let (_, out) = h.end(&done, true);
    h.markers_written(out);
    open_transaction(&mut h, "open");
    let week_ms = 7 * 24 * 60 * MINUTE_MS;
    assert_eq!(TxnConfig::default().transactional_id_expiration_ms, week_ms);
    let last = h.core.get("done").unwrap().last_update_timestamp_ms();
    assert!(h.core.expire(last + week_ms - 1).is_empty());

    h.now_ms = last + week_ms;
    let out = split(h.core.expire(h.now_ms));
    let ids: Vec<&str> = out.appends.iter().map(|(_, id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["done", "idle"], "an Ongoing transaction only times out");
    for (_, id, key, value) in &out.appends {
        assert_eq!(value, &None, "a tombstone");
        assert_eq!(&records::decode_key(key.clone()).unwrap(), id);
    }
    assert_eq!(h.core.pending_state("idle"), Some(TxnState::Dead));
    assert_eq!(h.init(&init("idle", None)), Err(TxnError::ConcurrentTransactions));
    for (op, _, key, value) in &out.appends {
        h.log.push((key.clone(), value.clone()));
        assert!(h.core.record_committed(*op, h.now_ms).is_empty());
    }
    assert!(h.core.get("idle").is_none() && h.core.get("done").is_none(), "forgotten");
    assert_eq!(h.state("open"), TxnState::Ongoing);
    // Seen again, it is a new id with a new producer id.
    assert_eq!(h.init(&init("idle", None)), Ok(pid(1_004, 0)));
    // A new coordinator replaying the tombstones forgets them too.
    let (core, _) = h.failover();
    assert!(core.get("done").is_none());
    assert_eq!(core.get("idle").unwrap().producer(), pid(1_004, 0));
}

#[test]
fn a_failed_tombstone_leaves_the_id_for_the_next_pass() {
    let mut h = Harness::new();
    h.init(&init("idle", None)).unwrap();
    h.now_ms += 8 * 24 * 60 * MINUTE_MS;
    let out = split(h.core.expire(h.now_ms));
    let (op, ..) = out.appends[0];
    assert!(h.core.record_failed(op, TxnError::CoordinatorNotAvailable).is_empty());
    assert_eq!(h.state("idle"), TxnState::Empty);
    assert_eq!(split(h.core.expire(h.now_ms)).appends.len(), 1);
}

#[test]
fn requests_are_checked_as_kafka_checks_them() {
    let mut h = Harness::new();
    let max = TxnConfig::default().max_timeout_ms;
    assert_eq!(max, 900_000);
    for timeout in [0, -1, max + 1] {
        let req = InitProducerId { transaction_timeout_ms: timeout, ..init("tx", None) };
        assert_eq!(h.init(&req), Err(TxnError::InvalidTransactionTimeout), "{timeout}");
    }
    assert_eq!(h.init(&init("", None)), Err(TxnError::InvalidRequest));
    let p = producer("tx", h.init(&init("tx", None)).unwrap());
    let unknown = producer("nobody", pid(p.producer_id, p.producer_epoch));
    assert_eq!(h.add(&unknown, &[tp("t", 0)]), Err(TxnError::InvalidProducerIdMapping));
    let other_id = producer("tx", pid(p.producer_id + 1, p.producer_epoch));
    assert_eq!(h.add(&other_id, &[tp("t", 0)]), Err(TxnError::InvalidProducerIdMapping));
    assert_eq!(h.end(&other_id, true).0, Err(TxnError::InvalidProducerIdMapping));
    let old_epoch = producer("tx", pid(p.producer_id, p.producer_epoch - 1));
    assert_eq!(h.add(&old_epoch, &[tp("t", 0)]), Err(TxnError::ProducerFenced));
    assert_eq!(h.add(&producer("", pid(1, 0)), &[]), Err(TxnError::InvalidRequest));
    // A transaction whose record would outgrow a message is refused as Kafka refuses it.
    let long: Vec<TopicPartition> = (0..250_000).map(|i| tp("t", i)).collect();
    assert_eq!(h.add(&p, &long), Err(TxnError::UnknownServerError));
    assert_eq!(h.state("tx"), TxnState::Empty);
}

#[test]
fn a_recovering_producer_bumps_its_epoch_and_a_retry_of_that_gets_the_same_answer() {
    let mut h = Harness::new();
    let first = h.init(&init("tx", None)).unwrap();
    let bumped = h.init(&init("tx", Some(first))).unwrap();
    assert_eq!(bumped, pid(first.producer_id, 1));
    // Its answer was lost: asking again with the epoch it had returns the same epoch.
    assert_eq!(h.init(&init("tx", Some(first))), Ok(bumped));
    // Another producer starting up takes the id; the recovering one is then fenced.
    assert_eq!(h.init(&init("tx", None)), Ok(pid(first.producer_id, 2)));
    assert_eq!(h.init(&init("tx", Some(first))), Err(TxnError::ProducerFenced));
}

#[test]
fn resigning_answers_every_waiting_request_not_coordinator() {
    let mut h = Harness::new();
    let p = open_transaction(&mut h, "tx");
    let to = h.to();
    let _pending = h.core.end_txn(to, &p, true, h.now_ms);
    let effects =
        std::mem::replace(&mut h.core, TxnPartition::new(0, TxnConfig::default())).resign();
    assert_eq!(effects, vec![Effect::Reply { to, result: Err(TxnError::NotCoordinator) }]);
}

#[test]
fn append_failures_map_to_the_coordinator_errors_kafka_answers() {
    use KafkaError as K;
    for (e, want) in [
        (K::RequestTimedOut, TxnError::CoordinatorNotAvailable),
        (K::NotEnoughReplicas, TxnError::CoordinatorNotAvailable),
        (K::NotEnoughReplicasAfterAppend, TxnError::CoordinatorNotAvailable),
        (K::UnknownTopicOrPartition, TxnError::CoordinatorNotAvailable),
        (K::NotLeaderOrFollower, TxnError::NotCoordinator),
        (K::KafkaStorageError, TxnError::NotCoordinator),
        (K::MessageTooLarge, TxnError::UnknownServerError),
    ] {
        assert_eq!(TxnError::from_append(e), want, "{e:?}");
    }
    for (i, state) in TxnState::ALL.into_iter().enumerate() {
        assert_eq!(state.id(), i as i8);
        assert_eq!(TxnState::from_id(state.id()), Some(state));
    }
    assert_eq!(TxnState::from_id(8), None);
    assert_eq!(TxnState::from_id(-1), None);
    assert_eq!(TxnState::PrepareEpochFence.name(), "PrepareEpochFence");
}

#[test]
fn verification_confirms_only_partitions_of_the_producers_ongoing_transaction() {
    let mut h = Harness::new();
    let p = producer("tx", h.init(&init("tx", None)).unwrap());
    // Nothing open yet: a produce that skipped AddPartitionsToTxn is refused.
    assert_eq!(h.core.verify(&p, &[tp("t", 0)]), Err(TxnError::InvalidTxnState));
    h.add(&p, &[tp("t", 0)]).unwrap();
    assert_eq!(h.core.verify(&p, &[tp("t", 0)]), Ok(()));
    assert_eq!(h.core.verify(&p, &[tp("t", 0), tp("t", 1)]), Err(TxnError::InvalidTxnState));
    let stranger = TxnProducer { producer_id: p.producer_id + 1, ..p.clone() };
    assert_eq!(h.core.verify(&stranger, &[tp("t", 0)]), Err(TxnError::InvalidProducerIdMapping));
    let older = TxnProducer { producer_epoch: p.producer_epoch - 1, ..p.clone() };
    assert_eq!(h.core.verify(&older, &[tp("t", 0)]), Err(TxnError::ProducerFenced));
    // While the markers are written, and once the transaction ended, a late produce of it
    // is not confirmed: it cannot open a transaction nobody will end.
    let (answer, out) = h.end(&p, false);
    assert_eq!(answer, Ok(()));
    assert_eq!(h.core.verify(&p, &[tp("t", 0)]), Err(TxnError::ConcurrentTransactions));
    h.markers_written(out);
    assert_eq!(h.core.verify(&p, &[tp("t", 0)]), Err(TxnError::InvalidTxnState));
    let unknown = producer("nobody", pid(5, 0));
    assert_eq!(h.core.verify(&unknown, &[tp("t", 0)]), Err(TxnError::InvalidProducerIdMapping));
}
