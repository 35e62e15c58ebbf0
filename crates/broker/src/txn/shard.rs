//! One transaction coordinator shard: the task that owns the transactional ids of one
//! `__transaction_state` partition this broker leads. It replays the partition's log into a
//! [`TxnPartition`], finishes what a previous coordinator prepared, then takes requests from
//! its queue one at a time and carries out the effects the core returns: appends with acks=all
//! (answered once the ISR has them), markers through the broker's marker sender, replies. It
//! asks the core to abort timed-out transactions and expire idle ids on Kafka's intervals. At
//! most [`IN_FLIGHT_MAX`] appends, marker jobs and producer id requests wait at once; while
//! that many do, the shard takes no request and fires no timer. When leadership of the
//! partition moves it stops, and whoever still waits is answered NOT_COORDINATOR.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use strom_metadata::config::TransactionDefaults;
use strom_metadata::BrokerEpoch;
use tokio::sync::{mpsc, oneshot};

use super::markers::MarkerJob;
use super::{
    Effect, InitProducerId, InitStep, OpId, ProducerIdAndEpoch, ReplyTo, TopicPartition, TxnError,
    TxnPartition, TxnProducer, TxnState,
};
use crate::errors::KafkaError;
use crate::partition::Partition;
use crate::BrokerCtx;

/// Requests queued for one shard before senders wait.
pub(super) const SHARD_QUEUE_MAX: usize = 1_024;
/// Appends, marker jobs and producer id requests of one shard waiting at once. Each holds at
/// most one request's reply, so a shard never holds more of them than requests it queues.
const IN_FLIGHT_MAX: usize = 256;
const _: () = assert!(IN_FLIGHT_MAX > 0 && IN_FLIGHT_MAX <= SHARD_QUEUE_MAX);
/// How long an append waits for the ISR (Kafka's coordinator waits `request.timeout.ms`);
/// then the request is answered COORDINATOR_NOT_AVAILABLE and the client retries.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest sleep of a shard between timer checks.
const TICK_MAX_MS: i64 = 1_000;

/// A transactional request's answer: the id's producer id and epoch after it, or the refusal.
pub(crate) type Answer = Result<ProducerIdAndEpoch, TxnError>;

/// One transactional id as DescribeTransactions and ListTransactions show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TxnSummary {
    pub transactional_id: String,
    pub state: TxnState,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub start_timestamp_ms: i64,
    pub partitions: Vec<TopicPartition>,
}

/// A request for one shard, with the channel its answer goes back on.
pub(crate) enum TxnCmd {
    InitProducerId(InitProducerId, oneshot::Sender<Answer>),
    AddPartitions(TxnProducer, Vec<TopicPartition>, oneshot::Sender<Answer>),
    /// AddOffsetsToTxn: the group's `__consumer_offsets` partition joins the transaction.
    AddOffsets(TxnProducer, TopicPartition, oneshot::Sender<Answer>),
    EndTxn {
        producer: TxnProducer,
        commit: bool,
        reply: oneshot::Sender<Answer>,
    },
    /// KIP-890 part 1: are these partitions in the producer's ongoing transaction?
    Verify(TxnProducer, Vec<TopicPartition>, oneshot::Sender<Result<(), TxnError>>),
    /// `None`: no such id (or it is expiring).
    Describe(String, oneshot::Sender<Option<TxnSummary>>),
    List(oneshot::Sender<Vec<TxnSummary>>),
}

/// Something the shard waited for has happened.
enum Done {
    Appended { op: OpId, result: Result<(), TxnError> },
    Markers { op: OpId, written: bool },
    ProducerId { to: ReplyTo, req: InitProducerId, result: Result<i64, TxnError> },
}

type InFlight = Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

/// The ids of a partition read back from its log.
pub(super) fn load(
    partition: &Partition,
    core: &mut TxnPartition,
) -> Result<(), strom_log::LogError> {
    let index = partition.index;
    crate::shards::read_log(partition, |r| {
        if r.control {
            return;
        }
        let Some(key) = r.key else { return };
        if let Err(e) = core.replay_record(key, r.value) {
            tracing::warn!(partition = index, offset = r.offset, error = %e,
                "skipping unreadable transaction state record");
        }
    })
}

pub(super) struct Shard {
    ctx: Arc<BrokerCtx>,
    partition: Arc<Partition>,
    leader_epoch: i32,
    settings: TransactionDefaults,
    core: TxnPartition,
    waiters: BTreeMap<ReplyTo, oneshot::Sender<Answer>>,
    next_reply: u64,
    in_flight: FuturesUnordered<InFlight>,
    next_tick_ms: i64,
    next_expire_ms: i64,
}

impl Shard {
    /// A shard over `core`, which holds the partition's replayed log; the effects of
    /// finishing what was prepared are carried out at once.
    pub fn new(
        ctx: Arc<BrokerCtx>,
        partition: Arc<Partition>,
        leader_epoch: i32,
        settings: TransactionDefaults,
        core: TxnPartition,
    ) -> Shard {
        let now = ctx.clock.now_ms();
        let mut shard = Shard {
            next_tick_ms: now
                + settings.transaction_abort_timed_out_transaction_cleanup_interval_ms as i64,
            next_expire_ms: now
                + settings.transaction_remove_expired_transaction_cleanup_interval_ms as i64,
            ctx,
            partition,
            leader_epoch,
            settings,
            core,
            waiters: BTreeMap::new(),
            next_reply: 0,
            in_flight: FuturesUnordered::new(),
        };
        let effects = shard.core.loaded(now);
        shard.carry_out(effects);
        shard
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<TxnCmd>) {
        let mut progress = self.partition.progress_watch();
        loop {
            if progress.borrow().leader_epoch != Some(self.leader_epoch)
                || progress.borrow().offline
            {
                break;
            }
            let now = self.ctx.clock.now_ms();
            let next = self.next_tick_ms.min(self.next_expire_ms).min(now + TICK_MAX_MS);
            let sleep = Duration::from_millis((next - now).clamp(0, TICK_MAX_MS) as u64);
            let full = self.in_flight.len() >= IN_FLIGHT_MAX;
            tokio::select! {
                cmd = rx.recv(), if !full => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => break,
                },
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.on_done(done)
                }
                changed = progress.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(sleep), if !full => self.on_timer(),
            }
        }
        // Whoever waits for a record of this shard is told to find the new coordinator;
        // markers in flight are dropped with their jobs (the new coordinator writes them).
        let Shard { core, waiters, .. } = self;
        let mut waiters = waiters;
        for effect in core.resign() {
            if let Effect::Reply { to, result } = effect {
                if let Some(tx) = waiters.remove(&to) {
                    let _ = tx.send(result);
                }
            }
        }
        for (_, tx) in waiters {
            let _ = tx.send(Err(TxnError::NotCoordinator));
        }
    }

    fn reply_to(&mut self, tx: oneshot::Sender<Answer>) -> ReplyTo {
        self.next_reply += 1;
        let to = ReplyTo(self.next_reply);
        self.waiters.insert(to, tx);
        to
    }

    fn on_cmd(&mut self, cmd: TxnCmd) {
        let now = self.ctx.clock.now_ms();
        let effects = match cmd {
            TxnCmd::InitProducerId(req, tx) => {
                let to = self.reply_to(tx);
                self.init_producer_id(to, req, None);
                return;
            }
            TxnCmd::AddPartitions(producer, partitions, tx) => {
                let to = self.reply_to(tx);
                self.core.add_partitions(to, &producer, partitions, now)
            }
            TxnCmd::AddOffsets(producer, partition, tx) => {
                let to = self.reply_to(tx);
                self.core.add_offsets(to, &producer, partition, now)
            }
            TxnCmd::EndTxn { producer, commit, reply } => {
                let to = self.reply_to(reply);
                self.core.end_txn(to, &producer, commit, now)
            }
            TxnCmd::Verify(producer, partitions, tx) => {
                let _ = tx.send(self.core.verify(&producer, &partitions));
                return;
            }
            TxnCmd::Describe(id, tx) => {
                let _ = tx.send(self.summary(&id));
                return;
            }
            TxnCmd::List(tx) => {
                let all = self.core.transactions().map(|t| t.transactional_id().to_owned());
                let all: Vec<String> = all.collect();
                let _ = tx.send(all.iter().filter_map(|id| self.summary(id)).collect());
                return;
            }
        };
        self.carry_out(effects);
    }

    /// Kafka reports an id's state as its last record left it; one whose tombstone is being
    /// written is already gone.
    fn summary(&self, id: &str) -> Option<TxnSummary> {
        if self.core.pending_state(id) == Some(TxnState::Dead) {
            return None;
        }
        let t = self.core.get(id)?;
        Some(TxnSummary {
            transactional_id: id.to_owned(),
            state: t.state(),
            producer_id: t.producer_id(),
            producer_epoch: t.producer_epoch(),
            timeout_ms: t.timeout_ms(),
            start_timestamp_ms: t.start_timestamp_ms(),
            partitions: t.partitions().iter().cloned().collect(),
        })
    }

    /// InitProducerId, with a producer id from the broker's blocks when the core needs one
    /// (fetched without holding up the shard).
    fn init_producer_id(&mut self, to: ReplyTo, req: InitProducerId, fresh: Option<i64>) {
        let now = self.ctx.clock.now_ms();
        match self.core.init_producer_id(to, &req, fresh, now) {
            InitStep::Done(effects) => self.carry_out(effects),
            InitStep::NeedProducerId if fresh.is_none() => {
                let ids = self.ctx.producer_ids.clone();
                let epoch = BrokerEpoch(self.ctx.broker_epoch.load(Ordering::Relaxed));
                self.in_flight.push(Box::pin(async move {
                    let result =
                        ids.next_id(epoch).await.map_err(|_| TxnError::CoordinatorLoadInProgress);
                    Done::ProducerId { to, req, result }
                }));
            }
            InitStep::NeedProducerId => {
                // The core takes the id it is given; asking twice is a bug.
                debug_assert!(false, "InitProducerId asked twice for a producer id");
                self.reply(to, Err(TxnError::ConcurrentTransactions));
            }
        }
    }

    fn reply(&mut self, to: ReplyTo, result: Answer) {
        if let Some(tx) = self.waiters.remove(&to) {
            let _ = tx.send(result);
        }
    }

    fn on_done(&mut self, done: Done) {
        let now = self.ctx.clock.now_ms();
        let effects = match done {
            Done::Appended { op, result: Ok(()) } => self.core.record_committed(op, now),
            Done::Appended { op, result: Err(e) } => self.core.record_failed(op, e),
            Done::Markers { op, written: true } => self.core.markers_written(op, now),
            Done::Markers { op, written: false } => {
                self.core.markers_failed(op);
                Vec::new()
            }
            Done::ProducerId { to, req, result: Ok(id) } => {
                self.init_producer_id(to, req, Some(id));
                return;
            }
            Done::ProducerId { to, result: Err(e), .. } => {
                self.reply(to, Err(e));
                return;
            }
        };
        self.carry_out(effects);
    }

    fn on_timer(&mut self) {
        let now = self.ctx.clock.now_ms();
        let s = &self.settings;
        let mut effects = Vec::new();
        if now >= self.next_tick_ms {
            effects.extend(self.core.tick(now));
            let interval = s.transaction_abort_timed_out_transaction_cleanup_interval_ms;
            self.next_tick_ms = now + interval as i64;
        }
        if now >= self.next_expire_ms {
            effects.extend(self.core.expire(now));
            let interval = s.transaction_remove_expired_transaction_cleanup_interval_ms;
            self.next_expire_ms = now + interval as i64;
        }
        self.carry_out(effects);
    }

    /// Carries out `effects` and those that follow at once from a failed append.
    fn carry_out(&mut self, effects: Vec<Effect>) {
        let mut todo: VecDeque<Effect> = effects.into();
        while let Some(effect) = todo.pop_front() {
            match effect {
                Effect::Reply { to, result } => self.reply(to, result),
                Effect::AppendRecord { op, key, value, .. } => {
                    if let Err(e) = self.append(op, key, value) {
                        todo.extend(self.core.record_failed(op, TxnError::from_append(e)));
                    }
                }
                Effect::WriteMarkers {
                    op,
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    commit,
                    coordinator_epoch,
                    partitions,
                } => {
                    let job = MarkerJob {
                        transactional_id,
                        producer_id,
                        producer_epoch,
                        commit,
                        coordinator_epoch,
                        partitions,
                    };
                    let sender = self.ctx.txn.markers.clone();
                    self.in_flight.push(Box::pin(async move {
                        Done::Markers { op, written: sender.write(job).await }
                    }));
                }
            }
        }
    }

    /// Appends one record at this shard's leader epoch, as acks=all: refused while the ISR is
    /// below `min.insync.replicas`; then it joins the waits in flight until it is replicated.
    fn append(
        &mut self,
        op: OpId,
        key: bytes::Bytes,
        value: Option<bytes::Bytes>,
    ) -> Result<(), KafkaError> {
        let now = self.ctx.clock.now_ms();
        let (isr, epoch) = self.partition.leader_view().ok_or(KafkaError::NotLeaderOrFollower)?;
        if epoch != self.leader_epoch {
            return Err(KafkaError::NotLeaderOrFollower);
        }
        if isr < self.partition.min_insync() {
            return Err(KafkaError::NotEnoughReplicas);
        }
        let batch = crate::group::encode_batch(&[(key, value)], now);
        let info = self
            .partition
            .append(&batch, epoch, now)
            .map_err(|e| KafkaError::from(&e))
            .inspect_err(|e| {
                tracing::warn!(partition = self.partition.index, error = ?e,
                    "cannot append to transaction state partition")
            })?;
        let partition = self.partition.clone();
        self.in_flight.push(Box::pin(async move {
            let acked =
                partition.wait_acked(info.last_offset + 1, epoch, true, WRITE_TIMEOUT).await;
            let result = acked.map_err(|e| TxnError::from_append(KafkaError::from(e)));
            Done::Appended { op, result }
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use strom_metadata::config::TRANSACTION_DEFAULTS;
    use strom_metadata::TopicId;

    use super::*;
    use crate::image::ImageListener;
    use crate::replica::test_support::{ctx, ME};
    use crate::txn::{Txn, TxnConfig, TxnRecord, TXN_TOPIC};

    /// A `__transaction_state` partition over a real (temporary) log, led by this broker alone
    /// at leader epoch 3.
    fn partition_on(dir: &std::path::Path) -> Arc<Partition> {
        let log = strom_log::Log::open(
            dir,
            strom_log::LogConfig::default(),
            0,
            &strom_log::FileHandles::new(strom_log::FILE_HANDLES_MIN),
        )
        .expect("log opens");
        let p = Partition::new(
            TXN_TOPIC.to_owned(),
            0,
            TopicId([9; 16]),
            log,
            false,
            0,
            Arc::default(),
        );
        p.lead(ME, vec![ME], vec![ME], 3, 0, 0);
        p
    }

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition { topic: topic.into(), partition }
    }

    /// Waits for the next thing in flight and hands it to the shard.
    async fn next_done(shard: &mut Shard) {
        let done = shard.in_flight.next().await.expect("something in flight");
        shard.on_done(done);
    }

    #[tokio::test]
    async fn answers_wait_for_their_record_and_a_new_leader_replays_what_was_prepared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = ImageListener::new(ME);
        let ctx = ctx(&listener, &dir.path().join("broker"));
        let partition = partition_on(&dir.path().join("txn"));
        // An id the log already holds: producer 1000 at epoch 0, no transaction open.
        let mut core = TxnPartition::new(3, TxnConfig::default());
        let record =
            TxnRecord { producer_epoch: 0, ..Txn::new("tx".into(), 1000, 60_000, 0).record() };
        core.replay("tx".into(), Some(record));
        let mut shard = Shard::new(ctx.clone(), partition.clone(), 3, TRANSACTION_DEFAULTS, core);
        let producer =
            TxnProducer { transactional_id: "tx".into(), producer_id: 1000, producer_epoch: 0 };
        let me = Ok(ProducerIdAndEpoch { producer_id: 1000, producer_epoch: 0 });

        let (reply, mut added) = oneshot::channel();
        shard.on_cmd(TxnCmd::AddPartitions(producer.clone(), vec![tp("t", 0), tp("t", 1)], reply));
        assert!(added.try_recv().is_err(), "answered before its record was replicated");
        next_done(&mut shard).await;
        assert_eq!(added.await.expect("answered"), me);

        // EndTxn is answered once PrepareCommit is replicated; its markers then go to the
        // marker sender, which this test does not run: they fail, for the next tick.
        let (reply, ended) = oneshot::channel();
        shard.on_cmd(TxnCmd::EndTxn { producer, commit: true, reply });
        next_done(&mut shard).await;
        assert_eq!(ended.await.expect("answered"), me);
        assert_eq!(shard.in_flight.len(), 1, "the markers");
        next_done(&mut shard).await;
        let (reply, described) = oneshot::channel();
        shard.on_cmd(TxnCmd::Describe("tx".into(), reply));
        let summary = described.await.expect("answered").expect("known");
        assert_eq!(summary.state, TxnState::PrepareCommit);
        assert_eq!(summary.partitions, vec![tp("t", 0), tp("t", 1)]);

        // A new leader (epoch 4) replays the log: the transaction is still prepared, and
        // loading asks for its markers at the new coordinator epoch.
        let mut replayed = TxnPartition::new(4, TxnConfig::default());
        load(&partition, &mut replayed).expect("the log reads back");
        let txn = replayed.get("tx").expect("replayed");
        assert_eq!(txn.state(), TxnState::PrepareCommit);
        let partitions: BTreeSet<_> = [tp("t", 0), tp("t", 1)].into();
        assert_eq!(txn.partitions(), &partitions);
        let effects = replayed.loaded(ctx.clock.now_ms());
        assert!(
            matches!(
                &effects[..],
                [Effect::WriteMarkers {
                    coordinator_epoch: 4,
                    commit: true,
                    producer_id: 1000,
                    ..
                }]
            ),
            "{effects:?}"
        );
    }
}
