//! Exactly-once across kill -9 (issue 12), three nodes, RF 3, librdkafka.
//!
//! - Consume-transform-produce: a processor (a read_committed group consumer and a
//!   transactional producer) reads an input topic, writes each record transformed to an output
//!   topic and commits its consumer offsets in the same transaction
//!   (`send_offsets_to_transaction`). Mid-transaction the broker that coordinates it
//!   (FindCoordinator key type 1), or in the second variant the leader of an output partition,
//!   is killed -9; later the processor itself "crashes" with a transaction open and a new one
//!   with the same transactional id fences it and resumes from the committed offsets. At the
//!   end a read_committed read of the output holds every input record exactly once, each
//!   compared with its input, and the group's offsets are at the input's end.
//! - Random kills: a transactional producer commits and aborts (each value says whether its
//!   transaction is meant to commit) while nodes are killed -9 at random and restarted; a
//!   read_committed consumer reading all along never sees a record of an aborted transaction
//!   or of one whose commit had not been asked for yet, and at the end every committed
//!   transaction is read whole, once. `make test` runs a few rounds; `make soak` runs 20
//!   (`STROM_TXN_KILL_ROUNDS`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::Producer;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use strom_testkit::rng::{seed_from_env, TestRng};
use strom_tests::cluster::StromCluster;
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::{wait_until, with_cluster, ClusterOptions, CLIENT_TIMEOUT};

use crate::transactions::{
    is_fenced, read_to_end, retrying, retrying_classified, send, txn_producer, wait_coordinator,
    wait_stable, wait_txn_coordinator, TxnError, TxnProducer, KEY_TYPE_GROUP, TXN_CALL_TIMEOUT,
};

const PARTITIONS: i32 = 3;
/// How long the cluster may take to serve the transaction again after a kill: broker
/// session timeout, leader election, loading of the coordinator's state, client backoffs.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for a node's replicas to rejoin every ISR after a restart.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// Kafka's internal topic of the transaction coordinators.
const TXN_STATE_TOPIC: &str = "__transaction_state";

/// Groups join at once (strom's default delays the first rebalance by 3 s), so that a
/// restarted processor does not wait for it.
fn cluster_options() -> ClusterOptions {
    ClusterOptions {
        extra_toml: "group.initial_rebalance_delay_ms = 0\n".to_owned(),
        ..ClusterOptions::default()
    }
}

fn bootstrap_addrs(cluster: &StromCluster) -> Vec<std::net::SocketAddr> {
    cluster.running().into_iter().map(|id| cluster.kafka_addr(id)).collect()
}

// ---------------------------------------------------------------------------------------------
// Consume-transform-produce.

const INPUT: &str = "ctp-input";
const OUTPUT: &str = "ctp-output";
const GROUP: &str = "ctp-processor";
/// The processor's transactional id is the first `<prefix><n>` coordinated by another node than
/// the group's (see [`choose_transactional_id`]).
const TXN_ID_PREFIX: &str = "ctp-processor-txn-";
/// How long send_offsets_to_transaction may block. librdkafka enforces its timeout only when an
/// answer comes (confluentinc/librdkafka#5456) and waits for a group coordinator it cached
/// until some broker's state changes, forever if that coordinator left the metadata
/// (confluentinc/librdkafka#5511): past this bound the producer counts as unusable.
const SEND_OFFSETS_BOUND: Duration = Duration::from_secs(60);
const INPUT_RECORDS: usize = 1_500;
/// Most input records in one transaction.
const BATCH_MAX: usize = 100;
/// How long the processor waits for more input before it ends a batch.
const BATCH_WAIT: Duration = Duration::from_millis(300);
/// Bound on the whole pipeline run.
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(240);

/// Which broker the consume-transform-produce test kills mid-transaction.
#[derive(Debug, Clone, Copy)]
enum Victim {
    /// The transaction coordinator (FindCoordinator key type 1).
    Coordinator,
    /// The leader of an output partition (one that is not the coordinator, if any is).
    OutputLeader,
}

#[test]
fn consume_transform_produce_exactly_once_across_kill9_of_the_transaction_coordinator() {
    consume_transform_produce(Victim::Coordinator);
}

#[test]
fn consume_transform_produce_exactly_once_across_kill9_of_an_output_partition_leader() {
    consume_transform_produce(Victim::OutputLeader);
}

/// The output record for input record `value` read at `partition`/`offset`.
fn transformed(partition: i32, offset: i64, value: &str) -> String {
    format!("out:{partition}:{offset}:{}", value.to_uppercase())
}

/// Remembers that the group's partitions moved: polled records gathered before it are
/// dropped, since the consumer's positions restart from the committed offsets.
#[derive(Default)]
struct RebalanceFlag(AtomicBool);

impl ClientContext for RebalanceFlag {}

impl ConsumerContext for RebalanceFlag {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs inside a transaction before its commit, given the offsets it adds; answers whether it
/// acted.
type BeforeCommit<'a> = dyn FnMut(&BTreeMap<i32, i64>) -> anyhow::Result<bool> + 'a;

/// What one transaction of the processor came to.
#[derive(Debug)]
enum Step {
    /// Nothing to read within [`BATCH_WAIT`].
    Idle,
    /// Committed; the new offsets of the partitions it read.
    Committed(BTreeMap<i32, i64>),
    /// Aborted after an abortable error; the consumer is back at the committed offsets.
    Aborted(String),
    /// The producer is unusable: the caller makes a new processor. `pending`: the offsets of
    /// a transaction whose commit was asked and not answered (the coordinator decides).
    Fatal { why: String, pending: Option<BTreeMap<i32, i64>> },
}

/// One incarnation of the processor: a read_committed group member and a transactional
/// producer with the test's one transactional id.
struct Processor {
    consumer: BaseConsumer<RebalanceFlag>,
    /// Shared with the thread that bounds send_offsets_to_transaction.
    producer: Arc<TxnProducer>,
}

impl Processor {
    /// InitProducerId (fencing any earlier incarnation and ending its transaction), then
    /// subscribes to the input (the group assigns it on the first polls).
    fn start(bootstrap: &str, transactional_id: &str) -> anyhow::Result<Processor> {
        let producer =
            txn_producer(bootstrap, transactional_id, &[("transaction.timeout.ms", "30000")])?;
        retrying("init_transactions", FAILOVER_TIMEOUT, || {
            producer.init_transactions(TXN_CALL_TIMEOUT)
        })
        .map_err(|e| anyhow::anyhow!("init_transactions: {e:?}"))?;
        let mut config = kafka::client_config(bootstrap);
        config
            .set("group.id", GROUP)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("max.partition.fetch.bytes", "2048")
            .set("check.crcs", "true");
        let consumer: BaseConsumer<RebalanceFlag> =
            config.create_with_context(RebalanceFlag::default())?;
        consumer.subscribe(&[INPUT])?;
        Ok(Processor { consumer, producer: Arc::new(producer) })
    }

    /// The group's committed offsets of the input partitions as the broker answers them
    /// (OffsetFetch with require_stable, librdkafka's read_committed default).
    fn committed(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(INPUT, p);
        }
        let answer = self.consumer.committed_offsets(tpl, CLIENT_TIMEOUT)?;
        Ok(answer
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    /// Up to [`BATCH_MAX`] records, ending when none comes for [`BATCH_WAIT`]. Records polled
    /// before a rebalance are dropped: the new assignment starts from the committed offsets,
    /// and a record that the same poll returns after the rebalance already belongs to it.
    fn poll_batch(&self) -> anyhow::Result<Vec<(i32, i64, String, String)>> {
        let rebalanced = &self.consumer.context().0;
        let mut batch = Vec::new();
        while batch.len() < BATCH_MAX {
            let polled = self.consumer.poll(BATCH_WAIT);
            if rebalanced.swap(false, Ordering::SeqCst) && !batch.is_empty() {
                eprintln!(
                    "processor: the group rebalanced; {} polled records dropped",
                    batch.len()
                );
                batch.clear();
            }
            match polled {
                None => break,
                Some(Ok(m)) => {
                    let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                    let value = m.payload().map(String::from_utf8_lossy).unwrap_or_default();
                    batch.push((m.partition(), m.offset(), key.into_owned(), value.into_owned()));
                }
                Some(Err(error)) => eprintln!("processor consumer: {error}"),
            }
        }
        Ok(batch)
    }

    /// Begins a transaction, writes `batch` transformed and adds the offsets after it; the
    /// transaction stays open. The offsets it will commit, or why it must end otherwise.
    fn write_batch(
        &self,
        batch: &[(i32, i64, String, String)],
    ) -> Result<BTreeMap<i32, i64>, TxnError> {
        self.producer.begin_transaction().map_err(|e| TxnError::of(&e))?;
        let mut next = BTreeMap::new();
        for (p, o, key, value) in batch {
            send(&self.producer, OUTPUT, *p, key, &transformed(*p, *o, value))
                .map_err(|e| TxnError::of(&e))?;
            next.insert(*p, o + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for (&p, &o) in &next {
            offsets
                .add_partition_offset(INPUT, p, Offset::Offset(o))
                .map_err(|e| TxnError::Abort(e.to_string()))?;
        }
        let metadata = self
            .consumer
            .group_metadata()
            .ok_or_else(|| TxnError::Abort("the consumer has no group metadata".to_owned()))?;
        let (producer, metadata) = (self.producer.clone(), Arc::new(metadata));
        retrying_classified("send_offsets_to_transaction", FAILOVER_TIMEOUT, || {
            let (producer, metadata, offsets) =
                (producer.clone(), metadata.clone(), offsets.clone());
            let (done, answer) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let result =
                    producer.send_offsets_to_transaction(&offsets, &metadata, TXN_CALL_TIMEOUT);
                let _ = done.send(result);
            });
            match answer.recv_timeout(SEND_OFFSETS_BOUND) {
                Ok(result) => result.map_err(|error| TxnError::of(&error)),
                Err(_) => {
                    let text = format!(
                        "send_offsets_to_transaction blocked for {SEND_OFFSETS_BOUND:?} \
                         (librdkafka#5511); the producer is abandoned"
                    );
                    eprintln!("processor: {text}");
                    Err(TxnError::Fatal(text))
                }
            }
        })?;
        Ok(next)
    }

    /// One transaction: a batch in, transformed out, offsets committed with it. `before_commit`
    /// runs with the transaction open (records sent, offsets added), just before the commit;
    /// it is given the offsets the transaction adds (its keys: the partitions it wrote).
    fn step(&self, before_commit: &mut BeforeCommit<'_>) -> anyhow::Result<Step> {
        let batch = self.poll_batch()?;
        if batch.is_empty() {
            return Ok(Step::Idle);
        }
        let next = match self.write_batch(&batch) {
            Ok(next) => next,
            Err(error) => return Ok(self.end_failed(error, None)),
        };
        before_commit(&next)?;
        match retrying("commit_transaction", FAILOVER_TIMEOUT, || {
            self.producer.commit_transaction(TXN_CALL_TIMEOUT)
        }) {
            Ok(()) => Ok(Step::Committed(next)),
            Err(error) => Ok(self.end_failed(error, Some(next))),
        }
    }

    /// Ends a transaction that failed: aborts it unless the producer is unusable. A
    /// successful abort after a commit attempt means the commit did not happen.
    fn end_failed(&self, error: TxnError, commit_asked: Option<BTreeMap<i32, i64>>) -> Step {
        let text = match error {
            TxnError::Fatal(why) => return Step::Fatal { why, pending: commit_asked },
            TxnError::Abort(text) | TxnError::Retriable(text) => text,
        };
        match retrying("abort_transaction", FAILOVER_TIMEOUT, || {
            self.producer.abort_transaction(TXN_CALL_TIMEOUT)
        }) {
            Ok(()) => Step::Aborted(text),
            Err(abort) => Step::Fatal {
                why: format!("{text}; then abort_transaction: {abort:?}"),
                pending: commit_asked,
            },
        }
    }

    /// Moves the consumer back to the offsets committed before an aborted transaction.
    fn rewind(&self, committed: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            let offset = committed.get(&p).map_or(Offset::Beginning, |&o| Offset::Offset(o));
            tpl.add_partition_offset(INPUT, p, offset)?;
        }
        self.consumer.seek_partitions(tpl, CLIENT_TIMEOUT).context("rewind the processor")?;
        Ok(())
    }
}

/// The processor as the test drives it: its current incarnation and what the test knows was
/// committed.
struct Pipeline {
    bootstrap: String,
    transactional_id: String,
    /// Input end offsets: the processor is done when it committed them all.
    ends: BTreeMap<i32, i64>,
    /// Offsets of every committed transaction, as the test saw the commits succeed.
    committed: BTreeMap<i32, i64>,
    processor: Option<Processor>,
    /// Offsets of a transaction whose commit the last incarnation asked for and never saw
    /// answered.
    pending: Option<BTreeMap<i32, i64>>,
    incarnations: usize,
    transactions: usize,
    aborts: Vec<String>,
    fatal: Vec<String>,
}

impl Pipeline {
    fn records_committed(&self) -> i64 {
        self.committed.values().sum()
    }

    fn done(&self) -> bool {
        self.ends.iter().all(|(p, end)| self.committed.get(p).copied().unwrap_or(0) >= *end)
    }

    /// A new processor incarnation; it must resume exactly at the committed offsets.
    fn start_processor(&mut self) -> anyhow::Result<()> {
        let processor = Processor::start(&self.bootstrap, &self.transactional_id)?;
        self.incarnations += 1;
        let known = self.committed.clone();
        let broker = wait_until(CLIENT_TIMEOUT, "the group's offsets are stable", || {
            processor.committed().map(Some)
        })?;
        // A commit left unanswered by an unusable producer may have happened, or not.
        let mut with_pending = known.clone();
        with_pending.extend(self.pending.take().unwrap_or_default());
        ensure!(
            broker == known || broker == with_pending,
            "incarnation {}: the group's committed offsets are {broker:?}, but the committed \
             transactions committed {known:?} (with the unanswered one: {with_pending:?})",
            self.incarnations
        );
        if broker != known {
            eprintln!("incarnation {}: the unanswered commit happened", self.incarnations);
            self.transactions += 1;
        }
        self.committed = broker;
        self.processor = Some(processor);
        Ok(())
    }

    /// Runs transactions until `records` input records are committed (or all of them).
    fn run_until(&mut self, records: i64, deadline: Instant) -> anyhow::Result<()> {
        while self.records_committed() < records && !self.done() {
            ensure!(
                Instant::now() < deadline,
                "the processor committed {} of {records} records by the deadline; aborts \
                 {:?}; fatal errors {:?}",
                self.records_committed(),
                self.aborts,
                self.fatal
            );
            self.transaction(&mut |_| Ok(false))?;
        }
        Ok(())
    }

    /// One transaction of the current processor (a new one first if there is none).
    fn transaction(&mut self, before_commit: &mut BeforeCommit<'_>) -> anyhow::Result<Step> {
        if self.processor.is_none() {
            self.start_processor()?;
        }
        let processor = self.processor.as_ref().context("no processor")?;
        let step = processor.step(before_commit)?;
        match &step {
            Step::Idle => {}
            Step::Committed(next) => {
                self.transactions += 1;
                for (&p, &o) in next {
                    let previous = self.committed.insert(p, o).unwrap_or(0);
                    ensure!(o > previous, "input-{p}: committed {o} after {previous}");
                }
            }
            Step::Aborted(why) => {
                eprintln!("processor: transaction aborted: {why}");
                self.aborts.push(why.clone());
                processor.rewind(&self.committed)?;
            }
            Step::Fatal { why, pending } => {
                eprintln!("processor: fatal error, starting a new incarnation: {why}");
                self.fatal.push(why.clone());
                self.pending = pending.clone();
                self.processor = None;
            }
        }
        Ok(step)
    }

    /// Runs transactions until `before_commit` acts (answers true) inside one; returns what
    /// that transaction came to and how long its commit took after the action.
    fn transaction_with(
        &mut self,
        before_commit: &mut BeforeCommit<'_>,
        deadline: Instant,
    ) -> anyhow::Result<(Step, Duration)> {
        loop {
            ensure!(Instant::now() < deadline, "no transaction let the action run");
            let mut acted = None;
            let step = self.transaction(&mut |offsets| {
                let act = before_commit(offsets)?;
                if act {
                    acted = Some(Instant::now());
                }
                Ok(act)
            })?;
            if let Some(at) = acted {
                return Ok((step, at.elapsed()));
            }
        }
    }
}

fn consume_transform_produce(victim: Victim) {
    with_cluster(3, cluster_options(), |cluster| {
        let partitions: Vec<i32> = (0..PARTITIONS).collect();
        for topic in [INPUT, OUTPUT] {
            kafka::create_topic_replicated(&cluster.bootstrap(), topic, PARTITIONS, 3)?;
            cluster.wait_topic_everywhere(topic, partitions.len())?;
            cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;
        }
        let input = produce_input(&cluster.bootstrap())?;
        let ends = kafka::watermarks(&cluster.bootstrap(), INPUT, &partitions)?
            .into_iter()
            .map(|(p, (_, high))| (p, high))
            .collect::<BTreeMap<_, _>>();
        ensure!(ends.values().sum::<i64>() == INPUT_RECORDS as i64, "input ends {ends:?}");
        let deadline = Instant::now() + PIPELINE_TIMEOUT;
        let group_coordinator = wait_coordinator(&bootstrap_addrs(cluster), KEY_TYPE_GROUP, GROUP)?;
        let transactional_id = choose_transactional_id(cluster, group_coordinator)?;
        let mut pipeline = Pipeline {
            bootstrap: cluster.bootstrap(),
            transactional_id: transactional_id.clone(),
            ends,
            committed: BTreeMap::new(),
            processor: None,
            pending: None,
            incarnations: 0,
            transactions: 0,
            aborts: Vec::new(),
            fatal: Vec::new(),
        };
        let total = INPUT_RECORDS as i64;
        pipeline.run_until(total / 4, deadline)?;

        // Kill the victim with a transaction open: records sent, offsets added, no EndTxn yet.
        // An output leader is killed only in a transaction that wrote to its partition, and
        // preferably one that coordinates neither the transaction nor the group.
        let coordinator = wait_txn_coordinator(&bootstrap_addrs(cluster), &transactional_id)?;
        let output_leaders = cluster.leaders_of(OUTPUT)?;
        let eligible = |leader: i32| leader != coordinator && leader != group_coordinator;
        let any_eligible = output_leaders.values().any(|&l| eligible(l));
        let mut target = None;
        let killed_at = pipeline.records_committed();
        let (step, commit_took) = {
            let mut kill = |offsets: &BTreeMap<i32, i64>| -> anyhow::Result<bool> {
                let written: BTreeSet<i32> = offsets.keys().map(|p| output_leaders[p]).collect();
                let victim_node = match victim {
                    Victim::Coordinator => coordinator,
                    Victim::OutputLeader => {
                        match written.iter().find(|&&l| eligible(l) || !any_eligible) {
                            Some(&leader) => leader,
                            None => return Ok(false),
                        }
                    }
                };
                eprintln!(
                    "killing node {victim_node} ({victim:?}; transaction coordinator \
                     {coordinator}, group coordinator {group_coordinator}, output leaders \
                     {output_leaders:?}) with a transaction open on output partitions {:?}",
                    offsets.keys().collect::<Vec<_>>()
                );
                cluster.kill9(victim_node as u32)?;
                target = Some(victim_node as u32);
                Ok(true)
            };
            pipeline.transaction_with(&mut kill, deadline)?
        };
        let target = target.context("nothing was killed")?;
        eprintln!("the transaction open during the kill: {step:?}, commit took {commit_took:?}");
        if matches!(victim, Victim::Coordinator) {
            let what =
                format!("FindCoordinator names a coordinator other than killed {coordinator}");
            let successor = wait_until(FAILOVER_TIMEOUT, &what, || {
                let now = wait_txn_coordinator(&bootstrap_addrs(cluster), &transactional_id)?;
                Ok((now != coordinator).then_some(now))
            })?;
            eprintln!("node {successor} coordinates {transactional_id} after the kill");
        }
        pipeline.run_until(killed_at + total / 4, deadline)?;

        // The processor crashes with a transaction open; its successor (same transactional id)
        // fences it, and the open transaction never commits.
        let crashed = pipeline.processor.take().context("no processor before the crash")?;
        let batch = loop {
            let batch = crashed.poll_batch()?;
            if !batch.is_empty() {
                break batch;
            }
            ensure!(Instant::now() < deadline, "no input left for the crash transaction");
        };
        let offsets = crashed.write_batch(&batch).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        crashed.producer.flush(TXN_CALL_TIMEOUT)?;
        eprintln!(
            "processor crashes with {} records and offsets {offsets:?} uncommitted",
            batch.len()
        );
        let Processor { consumer, producer: zombie } = crashed;
        drop(consumer);
        pipeline.start_processor()?;
        let zombie_commit = zombie.commit_transaction(TXN_CALL_TIMEOUT);
        eprintln!(
            "the crashed incarnation's commit after its successor started: {zombie_commit:?}"
        );
        match &zombie_commit {
            Ok(()) => bail!("the fenced incarnation committed its transaction"),
            Err(error) => {
                ensure!(is_fenced(error), "zombie commit failed with {error}, not fenced")
            }
        }
        drop(zombie);

        cluster.restart(target)?;
        pipeline.run_until(total, deadline)?;
        eprintln!(
            "pipeline: {} transactions committed by {} incarnations; {} aborted ({:?}); fatal \
             errors {:?}",
            pipeline.transactions,
            pipeline.incarnations,
            pipeline.aborts.len(),
            pipeline.aborts,
            pipeline.fatal
        );
        pipeline.processor = None;
        check_output(cluster, &input, &pipeline.ends)
    });
}

/// The processor's transactional id: the first `TXN_ID_PREFIX<n>` whose coordinator
/// (FindCoordinator key type 1) is not the group's, so that the kill of the transaction
/// coordinator does not also take the group coordinator librdkafka cached, which
/// send_offsets_to_transaction would then wait for without a bound (librdkafka#5511, see
/// [`SEND_OFFSETS_BOUND`]).
fn choose_transactional_id(
    cluster: &StromCluster,
    group_coordinator: i32,
) -> anyhow::Result<String> {
    let mut seen = Vec::new();
    for n in 0..32 {
        let id = format!("{TXN_ID_PREFIX}{n}");
        let coordinator = wait_txn_coordinator(&bootstrap_addrs(cluster), &id)?;
        if coordinator != group_coordinator {
            eprintln!(
                "transactional id {id}: coordinator {coordinator}, group coordinator \
                 {group_coordinator}"
            );
            return Ok(id);
        }
        seen.push(coordinator);
    }
    bail!("every candidate transactional id is coordinated by the group's node: {seen:?}")
}

/// Writes the input records (plain, acks=all): record i to partition i % 3, value `in-<i>`.
/// Returns (partition, offset) → value.
fn produce_input(bootstrap: &str) -> anyhow::Result<BTreeMap<(i32, i64), String>> {
    // Small batches, read in small fetches (below), so that a processor batch mixes partitions.
    let producer = AckingProducer::new(bootstrap, &[("batch.num.messages", "10")])?;
    let values: Vec<String> = (0..INPUT_RECORDS).map(|i| format!("in-{i:06}")).collect();
    for (i, value) in values.iter().enumerate() {
        let key = format!("k{i}");
        let record = Outgoing {
            partition: Some((i % PARTITIONS as usize) as i32),
            key: Some(key.as_bytes()),
            value: Some(value.as_bytes()),
            ..Outgoing::default()
        };
        producer.send(INPUT, i, record)?;
    }
    producer.flush(CLIENT_TIMEOUT)?;
    let acks = producer.acks_of(0..INPUT_RECORDS)?;
    Ok(acks.into_iter().zip(values).map(|(a, v)| ((a.partition, a.offset), v)).collect())
}

/// A read_committed read of the output holds every input record exactly once, transformed
/// from the value at its partition and offset; the group's offsets are at the input's end.
fn check_output(
    cluster: &StromCluster,
    input: &BTreeMap<(i32, i64), String>,
    ends: &BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    let bootstrap = cluster.bootstrap();
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    wait_stable(&bootstrap, OUTPUT, &partitions)?;
    let output = read_to_end(&bootstrap, OUTPUT, &partitions, "read_committed")?;
    let written = read_to_end(&bootstrap, OUTPUT, &partitions, "read_uncommitted")?.len();
    eprintln!(
        "output: {} records read_committed, {written} read_uncommitted (aborted ones included)",
        output.len()
    );
    let mut seen: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for record in &output {
        let mut fields = record.value.splitn(4, ':');
        let parsed = (|| {
            ensure!(fields.next() == Some("out"), "not an output record");
            let p: i32 = fields.next().context("no partition")?.parse()?;
            let o: i64 = fields.next().context("no offset")?.parse()?;
            Ok((p, o))
        })();
        let (p, o) = match parsed {
            Ok(at) => at,
            Err(error) => {
                problems.push(format!("{record:?}: {error:#}"));
                continue;
            }
        };
        match input.get(&(p, o)) {
            Some(value) if record.value == transformed(p, o, value) && record.partition == p => {}
            other => problems.push(format!("{record:?} does not match input {p}/{o} {other:?}")),
        }
        *seen.entry((p, o)).or_default() += 1;
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    let missing: Vec<_> = input.keys().filter(|at| !seen.contains_key(at)).collect();
    ensure!(
        problems.is_empty() && duplicated.is_empty() && missing.is_empty(),
        "output of {} input records: {} read_committed; {} wrong (first {:?}); {} duplicated \
         (first {:?}); {} missing (first {:?})",
        input.len(),
        output.len(),
        problems.len(),
        problems.first(),
        duplicated.len(),
        duplicated.first(),
        missing.len(),
        missing.first()
    );
    let consumer: BaseConsumer =
        kafka::consumer(&bootstrap, &[("group.id", GROUP), ("isolation.level", "read_committed")])?;
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition(INPUT, p);
    }
    let committed = consumer.committed_offsets(tpl, CLIENT_TIMEOUT)?;
    let committed: BTreeMap<i32, i64> = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    ensure!(committed == *ends, "the group's offsets {committed:?}, input ends {ends:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Random kills while a transactional producer commits and aborts.

/// Rounds of random kills. `make test` runs the default; `make soak` runs the 20:
/// `STROM_TXN_KILL_ROUNDS=20 cargo nextest run -p strom-tests transactions_failover::read_committed_never`.
const TXN_KILL_ROUNDS_ENV: &str = "STROM_TXN_KILL_ROUNDS";
const TXN_KILL_ROUNDS_DEFAULT: usize = 2;
const CHAOS_TOPIC: &str = "txn-chaos";
const CHAOS_TXN_ID: &str = "txn-chaos-producer";
/// Most records in one transaction.
const CHAOS_TXN_RECORDS_MAX: usize = 40;

/// What became of one transaction of the chaos producer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Begun, not ended yet.
    Open,
    Committed,
    /// Aborted by the producer (meant to, or after an abortable error), or never asked to
    /// commit before its producer became unusable.
    Aborted,
    /// commit_transaction was called and the producer became unusable before it answered:
    /// the coordinator decides; either every record is visible or none.
    Unknown(String),
}

#[derive(Debug, Clone)]
struct TxnEntry {
    /// What the values say: meant to commit.
    commit: bool,
    /// (partition, value) in send order.
    records: Vec<(i32, String)>,
    /// When commit_transaction was first called.
    commit_asked: Option<Instant>,
    /// When commit_transaction returned success.
    committed_at: Option<Instant>,
    outcome: Outcome,
}

/// The value of record `i` of transaction `txn`: says whether the transaction is meant to
/// commit.
fn chaos_value(txn: usize, commit: bool, i: usize) -> String {
    format!("txn-{txn:08}-{}-{i:04}", if commit { "C" } else { "A" })
}

/// (transaction, meant to commit, record) of a [`chaos_value`].
fn parse_chaos(value: &str) -> Option<(usize, bool, usize)> {
    let mut fields = value.strip_prefix("txn-")?.split('-');
    let txn = fields.next()?.parse().ok()?;
    let commit = match fields.next()? {
        "C" => true,
        "A" => false,
        _ => return None,
    };
    Some((txn, commit, fields.next()?.parse().ok()?))
}

#[derive(Default)]
struct ChaosLedger {
    txns: Mutex<Vec<TxnEntry>>,
    /// Producer incarnations and why each earlier one was given up.
    restarts: Mutex<Vec<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl ChaosLedger {
    /// When the first transaction whose commit was asked after `since` committed.
    fn committed_after(&self, since: Instant) -> Option<Instant> {
        lock(&self.txns)
            .iter()
            .filter(|t| t.commit_asked.is_some_and(|at| at >= since))
            .find_map(|t| t.committed_at)
    }

    fn summary(&self) -> String {
        let txns = lock(&self.txns);
        let count = |f: &dyn Fn(&Outcome) -> bool| txns.iter().filter(|t| f(&t.outcome)).count();
        format!(
            "{} transactions: {} committed, {} aborted ({} meant to commit), {} unknown, {} \
             open; producer restarts {:?}",
            txns.len(),
            count(&|o| *o == Outcome::Committed),
            count(&|o| *o == Outcome::Aborted),
            txns.iter().filter(|t| t.commit && t.outcome == Outcome::Aborted).count(),
            count(&|o| matches!(o, Outcome::Unknown(_))),
            count(&|o| *o == Outcome::Open),
            lock(&self.restarts)
        )
    }
}

/// The chaos producer's loop: transactions of random size over random partitions, two in
/// three meant to commit, until `stop`.
fn chaos_producer(
    bootstrap: String,
    seed: u64,
    ledger: Arc<ChaosLedger>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut rng = TestRng::new(seed);
    let mut producer: Option<TxnProducer> = None;
    while !stop.load(Ordering::Relaxed) {
        let current = match producer.take() {
            Some(p) => p,
            None => {
                let p =
                    txn_producer(&bootstrap, CHAOS_TXN_ID, &[("transaction.timeout.ms", "30000")])?;
                match retrying("init_transactions", FAILOVER_TIMEOUT, || {
                    p.init_transactions(TXN_CALL_TIMEOUT)
                }) {
                    Ok(()) => p,
                    Err(error) => {
                        lock(&ledger.restarts).push(format!("init_transactions: {error:?}"));
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                }
            }
        };
        if let Err(error) = current.begin_transaction() {
            lock(&ledger.restarts).push(format!("begin_transaction: {error}"));
            continue;
        }
        let commit = rng.chance(2, 3);
        let count = rng.in_range(1..CHAOS_TXN_RECORDS_MAX + 1);
        let txn = {
            let mut txns = lock(&ledger.txns);
            let txn = txns.len();
            let records = (0..count)
                .map(|i| (rng.below(PARTITIONS as u64) as i32, chaos_value(txn, commit, i)))
                .collect();
            txns.push(TxnEntry {
                commit,
                records,
                commit_asked: None,
                committed_at: None,
                outcome: Outcome::Open,
            });
            txn
        };
        let records = lock(&ledger.txns)[txn].records.clone();
        let mut failure = None;
        for (partition, value) in &records {
            if let Err(error) = send(&current, CHAOS_TOPIC, *partition, "k", value) {
                failure = Some(TxnError::of(&error));
                break;
            }
        }
        if failure.is_none() && !commit {
            // Acknowledged before the abort, so the aborted records are in the log.
            if let Err(error) = current.flush(TXN_CALL_TIMEOUT) {
                failure = Some(TxnError::of(&error));
            }
        }
        if failure.is_none() && commit {
            lock(&ledger.txns)[txn].commit_asked = Some(Instant::now());
            match retrying("commit_transaction", FAILOVER_TIMEOUT, || {
                current.commit_transaction(TXN_CALL_TIMEOUT)
            }) {
                Ok(()) => {
                    let mut txns = lock(&ledger.txns);
                    txns[txn].outcome = Outcome::Committed;
                    txns[txn].committed_at = Some(Instant::now());
                    producer = Some(current);
                    continue;
                }
                Err(TxnError::Fatal(text)) => {
                    lock(&ledger.txns)[txn].outcome = Outcome::Unknown(text.clone());
                    lock(&ledger.restarts).push(format!("commit of {txn}: {text}"));
                    continue;
                }
                Err(other) => failure = Some(other),
            }
        }
        if let Some(TxnError::Fatal(text)) = &failure {
            lock(&ledger.txns)[txn].outcome = Outcome::Aborted;
            lock(&ledger.restarts).push(format!("transaction {txn}: {text}"));
            continue;
        }
        if let Some(error) = &failure {
            eprintln!("chaos producer: transaction {txn} aborts after {error:?}");
        }
        match retrying("abort_transaction", FAILOVER_TIMEOUT, || {
            current.abort_transaction(TXN_CALL_TIMEOUT)
        }) {
            Ok(()) => {
                lock(&ledger.txns)[txn].outcome = Outcome::Aborted;
                producer = Some(current);
            }
            Err(error) => {
                // Never asked to commit, the coordinator can only abort it; after an
                // unanswered commit it may have committed.
                let mut txns = lock(&ledger.txns);
                txns[txn].outcome = match txns[txn].commit_asked {
                    None => Outcome::Aborted,
                    Some(_) => Outcome::Unknown(format!("abort after the commit: {error:?}")),
                };
                lock(&ledger.restarts).push(format!("abort of {txn}: {error:?}"));
            }
        }
    }
    Ok(())
}

/// One record the concurrent read_committed consumer read, and when.
#[derive(Debug, Clone)]
struct Seen {
    partition: i32,
    offset: i64,
    value: String,
    at: Instant,
}

/// A read_committed consumer of every partition from the beginning, until `stop`.
fn chaos_consumer(bootstrap: String, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<Seen>> {
    let consumer: BaseConsumer = kafka::consumer(
        &bootstrap,
        &[("isolation.level", "read_committed"), ("topic.metadata.refresh.interval.ms", "1000")],
    )?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment.add_partition_offset(CHAOS_TOPIC, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let value = m.payload().map(String::from_utf8_lossy).unwrap_or_default();
                seen.push(Seen {
                    partition: m.partition(),
                    offset: m.offset(),
                    value: value.into_owned(),
                    at: Instant::now(),
                });
            }
            // Transient errors while nodes die (transport, leader changes) are retried by
            // librdkafka; they say nothing about what it delivers.
            Some(Err(error)) => eprintln!("chaos consumer: {error}"),
        }
    }
    Ok(seen)
}

#[test]
fn read_committed_never_sees_aborted_or_open_records_across_random_kills() {
    let rounds = std::env::var(TXN_KILL_ROUNDS_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(TXN_KILL_ROUNDS_DEFAULT);
    let seed =
        seed_from_env("read_committed_never_sees_aborted_or_open_records_across_random_kills");
    with_cluster(3, cluster_options(), |cluster| {
        let partitions: Vec<i32> = (0..PARTITIONS).collect();
        kafka::create_topic_replicated(&cluster.bootstrap(), CHAOS_TOPIC, PARTITIONS, 3)?;
        cluster.wait_topic_everywhere(CHAOS_TOPIC, partitions.len())?;
        cluster.wait_isr_full(CHAOS_TOPIC, CATCH_UP_TIMEOUT)?;
        let mut rng = TestRng::new(seed ^ 0x6b69_6c6c);
        let ledger = Arc::new(ChaosLedger::default());
        let stop_producer = Arc::new(AtomicBool::new(false));
        let stop_consumer = Arc::new(AtomicBool::new(false));
        let producer: JoinHandle<anyhow::Result<()>> = {
            let (bootstrap, ledger, stop) =
                (cluster.bootstrap(), ledger.clone(), stop_producer.clone());
            std::thread::spawn(move || chaos_producer(bootstrap, seed, ledger, stop))
        };
        let consumer: JoinHandle<anyhow::Result<Vec<Seen>>> = {
            let (bootstrap, stop) = (cluster.bootstrap(), stop_consumer.clone());
            std::thread::spawn(move || chaos_consumer(bootstrap, stop))
        };
        let stop_all = |ledger: &ChaosLedger| {
            stop_producer.store(true, Ordering::Relaxed);
            stop_consumer.store(true, Ordering::Relaxed);
            eprintln!("chaos producer: {}", ledger.summary());
        };
        let outcome = (|| -> anyhow::Result<()> {
            let started = Instant::now();
            wait_until(FAILOVER_TIMEOUT, "a first committed transaction", || {
                Ok(ledger.committed_after(started))
            })?;
            for round in 0..rounds {
                std::thread::sleep(Duration::from_millis(200 + rng.below(1_300)));
                let coordinator = wait_txn_coordinator(&bootstrap_addrs(cluster), CHAOS_TXN_ID)?;
                let (kind, victim) = match rng.below(4) {
                    0 => ("transaction coordinator", coordinator as u32),
                    1 => {
                        let p = rng.below(PARTITIONS as u64) as i32;
                        ("partition leader", cluster.leaders_of(CHAOS_TOPIC)?[&p] as u32)
                    }
                    2 => ("active controller", cluster.active_controller()?),
                    _ => ("random node", cluster.ids()[rng.below(3) as usize]),
                };
                let killed = Instant::now();
                cluster.kill9(victim)?;
                let committed = wait_until(
                    FAILOVER_TIMEOUT,
                    &format!("a transaction committed after the kill of node {victim}"),
                    || Ok(ledger.committed_after(killed)),
                )
                .with_context(|| format!("round {round}: {}", ledger.summary()))?;
                cluster.restart(victim)?;
                cluster.wait_isr_full(CHAOS_TOPIC, CATCH_UP_TIMEOUT)?;
                cluster.wait_isr_full(TXN_STATE_TOPIC, CATCH_UP_TIMEOUT)?;
                eprintln!(
                    "round {round}: kill -9 of the {kind} (node {victim}, coordinator was \
                     {coordinator}): next commit after {:?}; {}",
                    committed.saturating_duration_since(killed),
                    ledger.summary()
                );
            }
            // Some transactions after the last restart, with every node up.
            let last = Instant::now();
            wait_until(FAILOVER_TIMEOUT, "a transaction committed after the last round", || {
                Ok(ledger.committed_after(last))
            })?;
            Ok(())
        })();
        stop_producer.store(true, Ordering::Relaxed);
        let produced = producer.join().map_err(|_| anyhow::anyhow!("the producer panicked"));
        if let Err(error) = outcome {
            stop_all(&ledger);
            let _ = consumer.join();
            return Err(error);
        }
        produced??;
        // Every transaction has ended; the consumer reads up to the end, then stops.
        let bootstrap = cluster.bootstrap();
        let ends = wait_stable(&bootstrap, CHAOS_TOPIC, &partitions)?;
        let final_read = read_to_end(&bootstrap, CHAOS_TOPIC, &partitions, "read_committed")?;
        let last_offsets: BTreeMap<i32, i64> = final_read
            .iter()
            .map(|r| (r.partition, r.offset))
            .fold(BTreeMap::new(), |mut m, (p, o)| {
                m.insert(p, o);
                m
            });
        eprintln!("final ends {ends:?}; last committed record per partition {last_offsets:?}");
        stop_all(&ledger);
        let seen = consumer.join().map_err(|_| anyhow::anyhow!("the consumer panicked"))??;
        let txns = lock(&ledger.txns).clone();
        ensure!(
            txns.iter().any(|t| t.outcome == Outcome::Committed)
                && txns.iter().any(|t| !t.commit && t.outcome == Outcome::Aborted),
            "nothing to check: {}",
            ledger.summary()
        );
        check_concurrent_reads(&seen, &txns)?;
        check_final_read(&final_read, &txns)?;
        eprintln!(
            "{} rounds: {}; the concurrent consumer read {} records, the final read {}",
            rounds,
            ledger.summary(),
            seen.len(),
            final_read.len()
        );
        Ok(())
    });
}

/// Record by record: each one the concurrent read_committed consumer read belongs to a
/// transaction meant to commit that did not end aborted, and was read after its commit was
/// asked for; no offset or value was read twice.
fn check_concurrent_reads(seen: &[Seen], txns: &[TxnEntry]) -> anyhow::Result<()> {
    let mut offsets = BTreeSet::new();
    let mut values = BTreeSet::new();
    for record in seen {
        let (txn, commit, _) = parse_chaos(&record.value)
            .with_context(|| format!("read_committed read a foreign record {record:?}"))?;
        let entry = txns.get(txn).with_context(|| format!("{record:?}: unknown transaction"))?;
        ensure!(
            commit,
            "read_committed read {record:?} of transaction {txn}, which aborted by design"
        );
        ensure!(
            entry.outcome != Outcome::Aborted,
            "read_committed read {record:?} of transaction {txn}, which was aborted"
        );
        let asked = entry.commit_asked.with_context(|| {
            format!("read_committed read {record:?} of transaction {txn}, never asked to commit")
        })?;
        ensure!(
            record.at >= asked,
            "read_committed read {record:?} {:?} before its transaction's commit was asked",
            asked.saturating_duration_since(record.at)
        );
        ensure!(offsets.insert((record.partition, record.offset)), "read twice: {record:?}");
        ensure!(values.insert(record.value.clone()), "value read twice: {record:?}");
    }
    Ok(())
}

/// The final read_committed read: exactly the records of the committed transactions (and of
/// each unknown one either all or none), each once, per partition in send order.
fn check_final_read(read: &[crate::transactions::Read], txns: &[TxnEntry]) -> anyhow::Result<()> {
    let mut by_txn: BTreeMap<usize, Vec<&crate::transactions::Read>> = BTreeMap::new();
    let mut order: BTreeMap<i32, Vec<(usize, usize)>> = BTreeMap::new();
    for record in read {
        let (txn, commit, i) = parse_chaos(&record.value)
            .with_context(|| format!("final read: a foreign record {record:?}"))?;
        ensure!(commit, "final read_committed read {record:?}: transaction aborted by design");
        by_txn.entry(txn).or_default().push(record);
        order.entry(record.partition).or_default().push((txn, i));
    }
    for (t, entry) in txns.iter().enumerate() {
        let got = by_txn.remove(&t).unwrap_or_default();
        let mut got_values: Vec<(i32, &str)> =
            got.iter().map(|r| (r.partition, r.value.as_str())).collect();
        let mut want: Vec<(i32, &str)> =
            entry.records.iter().map(|(p, v)| (*p, v.as_str())).collect();
        got_values.sort_unstable();
        want.sort_unstable();
        match &entry.outcome {
            Outcome::Committed => ensure!(
                got_values == want,
                "committed transaction {t}: read {} of its {} records: {got_values:?}",
                got_values.len(),
                want.len()
            ),
            Outcome::Unknown(why) => ensure!(
                got_values.is_empty() || got_values == want,
                "transaction {t} (commit unanswered: {why}) read in part: {got_values:?}"
            ),
            Outcome::Aborted | Outcome::Open => ensure!(
                got_values.is_empty(),
                "transaction {t} ({:?}) read: {got_values:?}",
                entry.outcome
            ),
        }
    }
    ensure!(by_txn.is_empty(), "records of transactions the producer never began: {by_txn:?}");
    for (p, sequence) in order {
        ensure!(
            sequence.windows(2).all(|w| w[0] < w[1]),
            "{CHAOS_TOPIC}-{p}: records out of send order: {sequence:?}"
        );
    }
    Ok(())
}
