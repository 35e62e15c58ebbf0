//! Transactions (issue 12) with real clients against one real node.
//!
//! - Every client library: librdkafka (`transactional.id`), kafkajs
//!   (`producer({ transactionalId, idempotent: true, maxInFlightRequests: 1 })`), kafka-python 3
//!   and aiokafka (`transactional_id=...`) each commit a transaction, abort one, commit another.
//!   A librdkafka read_committed consumer reads exactly the committed records, in order; a
//!   read_uncommitted one reads all three transactions' records.
//! - A zombie: two librdkafka producers with one transactional id; the second one's
//!   InitProducerId fences the first, whose open transaction is aborted and whose commit
//!   fails with a fenced error.
//! - An abandoned transaction: a producer with `transaction.timeout.ms` 3000 leaves its
//!   transaction open; the coordinator aborts it, the last stable offset moves past it, and a
//!   read_committed consumer that waited at it reads the records written after it.
//!
//! The helpers here (the transaction coordinator from FindCoordinator key type 1, reads to the
//! end at either isolation level, a transactional librdkafka producer and its error classes)
//! serve `transactions_failover.rs` too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use strom_tests::clients::{Client, Library};
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::raw::RawConnection;
use strom_tests::{wait_until, with_node, NodeOptions, StromNode, CLIENT_TIMEOUT};

/// FindCoordinator's key types: a consumer group, a transactional id.
pub(crate) const KEY_TYPE_GROUP: i8 = 0;
pub(crate) const KEY_TYPE_TRANSACTION: i8 = 1;
/// How long the transaction APIs of a producer may take (InitProducerId waits for an earlier
/// incarnation's transaction to be completed or aborted).
pub(crate) const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for a read to the end of a topic, and for its last stable offset to catch up.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers shared with transactions_failover.rs.

/// The node that FindCoordinator at `addr` names as the coordinator of `key` (a group or a
/// transactional id, by `key_type`), or the error code it answered.
pub(crate) fn find_coordinator(
    addr: SocketAddr,
    key_type: i8,
    key: &str,
) -> anyhow::Result<Result<i32, i16>> {
    let mut conn = RawConnection::connect(addr)?;
    let version = conn.max_version(ApiKey::FindCoordinator)?.min(4);
    ensure!(version >= 1, "FindCoordinator v{version} has no key type");
    let key = StrBytes::from_string(key.to_owned());
    let mut request = FindCoordinatorRequest::default().with_key_type(key_type);
    request =
        if version >= 4 { request.with_coordinator_keys(vec![key]) } else { request.with_key(key) };
    let id = conn.send_request(ApiKey::FindCoordinator as i16, version, &request, version)?;
    let response: FindCoordinatorResponse = conn.read_response(id, version)?;
    let (error, node) = if version >= 4 {
        let entry = response.coordinators.first().context("FindCoordinator: no entry")?;
        (entry.error_code, entry.node_id.0)
    } else {
        (response.error_code, response.node_id.0)
    };
    Ok(if error == 0 { Ok(node) } else { Err(error) })
}

/// Asks the nodes at `addrs` in turn until one names the coordinator of `key` (bounded; the
/// first lookup creates the coordinators' internal topic); the node id.
pub(crate) fn wait_coordinator(
    addrs: &[SocketAddr],
    key_type: i8,
    key: &str,
) -> anyhow::Result<i32> {
    let what = format!("FindCoordinator (key type {key_type}) names a coordinator of {key}");
    wait_until(READ_TIMEOUT, &what, || {
        let mut answers = Vec::new();
        for &addr in addrs {
            match find_coordinator(addr, key_type, key) {
                Ok(Ok(node)) => return Ok(Some(node)),
                Ok(Err(code)) => answers.push(format!("{addr}: error {code}")),
                Err(error) => answers.push(format!("{addr}: {error:#}")),
            }
        }
        bail!("answers: {answers:?}")
    })
}

/// The coordinator of `transactional_id` (FindCoordinator key type 1), as [`wait_coordinator`].
pub(crate) fn wait_txn_coordinator(
    addrs: &[SocketAddr],
    transactional_id: &str,
) -> anyhow::Result<i32> {
    wait_coordinator(addrs, KEY_TYPE_TRANSACTION, transactional_id)
}

/// One record as a consumer read it; the value as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    pub partition: i32,
    pub offset: i64,
    pub value: String,
}

/// The end of each partition a consumer at `isolation` sees: the high watermark for
/// read_uncommitted, the last stable offset for read_committed (librdkafka's ListOffsets
/// carries its isolation level).
pub(crate) fn ends(
    bootstrap: &str,
    topic: &str,
    partitions: &[i32],
    isolation: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = kafka::consumer(bootstrap, &[("isolation.level", isolation)])?;
    partitions
        .iter()
        .map(|&p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, CLIENT_TIMEOUT)
                .with_context(|| format!("{isolation} end of {topic}-{p}"))?;
            Ok((p, high))
        })
        .collect()
}

/// Waits until no transaction is open on any of `partitions`: every last stable offset equals
/// the high watermark (markers are written after EndTxn returns, so a client's commit can be
/// answered before the LSO moves). Returns the high watermarks.
pub(crate) fn wait_stable(
    bootstrap: &str,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<BTreeMap<i32, i64>> {
    wait_until(READ_TIMEOUT, &format!("the LSO of every {topic} partition reaches its HW"), || {
        let hw = ends(bootstrap, topic, partitions, "read_uncommitted")?;
        let lso = ends(bootstrap, topic, partitions, "read_committed")?;
        if lso == hw {
            Ok(Some(hw))
        } else {
            bail!("last stable offsets {lso:?}, high watermarks {hw:?}")
        }
    })
}

/// Every record a consumer at `isolation` reads from the beginning of `partitions` until it
/// reaches the end it can see on each (librdkafka's partition EOF: the LSO for
/// read_committed), filtered by librdkafka's own read_committed logic. Per partition in
/// offset order.
pub(crate) fn read_to_end(
    bootstrap: &str,
    topic: &str,
    partitions: &[i32],
    isolation: &str,
) -> anyhow::Result<Vec<Read>> {
    let consumer: BaseConsumer = kafka::consumer(
        bootstrap,
        &[("isolation.level", isolation), ("enable.partition.eof", "true")],
    )?;
    let mut assignment = TopicPartitionList::new();
    for &p in partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut at_end = BTreeSet::new();
    let mut out = Vec::new();
    while at_end.len() < partitions.len() {
        ensure!(
            Instant::now() < deadline,
            "{isolation} read of {topic}: {} records within {READ_TIMEOUT:?}, at the end of \
             {at_end:?} only",
            out.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                let value = message.payload().map(String::from_utf8_lossy).unwrap_or_default();
                out.push(Read {
                    partition: message.partition(),
                    offset: message.offset(),
                    value: value.into_owned(),
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(error)) => bail!("{isolation} read of {topic}: {error}"),
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// Set to a list of librdkafka debug contexts (`eos,protocol,broker,cgrp`) to have the
/// transactional producers of these tests log them to stderr.
pub(crate) const RDKAFKA_DEBUG_ENV: &str = "STROM_RDKAFKA_DEBUG";

/// A transactional producer's context: librdkafka's log lines go to stderr (the test's
/// output), named by the producer's transactional id.
pub(crate) struct StderrLog(String);

impl ClientContext for StderrLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        eprintln!("librdkafka {} {level:?} {facility}: {message}", self.0);
    }
}

impl ProducerContext for StderrLog {
    type DeliveryOpaque = ();
    // Delivery failures surface again as the transaction's commit error.
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

pub(crate) type TxnProducer = BaseProducer<StderrLog>;

/// A librdkafka transactional producer (acks=all, idempotent as transactions require);
/// `extra` overrides its settings. Transactions are not initialized yet.
pub(crate) fn txn_producer(
    bootstrap: &str,
    transactional_id: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<TxnProducer> {
    let mut config = kafka::client_config(bootstrap);
    config.set("transactional.id", transactional_id).set("acks", "all").set("linger.ms", "5");
    if let Ok(contexts) = std::env::var(RDKAFKA_DEBUG_ENV) {
        config.set("debug", contexts);
    }
    for (key, value) in extra {
        config.set(*key, *value);
    }
    config
        .create_with_context(StderrLog(transactional_id.to_owned()))
        .with_context(|| format!("create the transactional producer {transactional_id}"))
}

/// What librdkafka says to do after a transactional call failed (its three error classes,
/// see rdkafka's `producer` module documentation).
#[derive(Debug)]
pub(crate) enum TxnError {
    /// Call it again.
    Retriable(String),
    /// The transaction cannot commit: abort it and start a new one.
    Abort(String),
    /// The producer is unusable (fenced, or a fatal error): make a new one.
    Fatal(String),
}

impl TxnError {
    pub(crate) fn of(error: &KafkaError) -> TxnError {
        let text = error.to_string();
        match error {
            KafkaError::Transaction(e) if e.is_fatal() => TxnError::Fatal(text),
            KafkaError::Transaction(e) if e.txn_requires_abort() => TxnError::Abort(text),
            KafkaError::Transaction(e) if e.is_retriable() => TxnError::Retriable(text),
            // commit_transaction flushes first: a flush that timed out is tried again.
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => TxnError::Retriable(text),
            KafkaError::Transaction(_) => TxnError::Abort(text),
            _ => TxnError::Abort(text),
        }
    }
}

/// Calls a transactional operation until it succeeds, fails with a non-retriable error, or
/// `timeout` has passed (then the last retriable error is returned as an abort).
pub(crate) fn retrying(
    what: &str,
    timeout: Duration,
    mut call: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), TxnError> {
    retrying_classified(what, timeout, || call().map_err(|error| TxnError::of(&error)))
}

/// [`retrying`] for a call that classifies its own errors.
pub(crate) fn retrying_classified(
    what: &str,
    timeout: Duration,
    mut call: impl FnMut() -> Result<(), TxnError>,
) -> Result<(), TxnError> {
    let deadline = Instant::now() + timeout;
    loop {
        match call() {
            Ok(()) => return Ok(()),
            Err(TxnError::Retriable(text)) if Instant::now() < deadline => {
                eprintln!("{what}: retriable error {text}; again");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(TxnError::Retriable(text)) => {
                return Err(TxnError::Abort(format!("{what}: still failing: {text}")))
            }
            Err(other) => return Err(other),
        }
    }
}

/// Queues one record on a librdkafka producer, serving callbacks while its queue is full.
pub(crate) fn send(
    producer: &TxnProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: &str,
) -> Result<(), KafkaError> {
    let mut record = BaseRecord::<str, str>::to(topic).partition(partition).key(key).payload(value);
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if Instant::now() < deadline =>
            {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Whether a librdkafka error says the producer was fenced by a newer one with its
/// transactional id (librdkafka's own `_FENCED`, or the broker's codes for it).
pub(crate) fn is_fenced(error: &KafkaError) -> bool {
    let fenced_codes = [
        RDKafkaErrorCode::Fenced,
        RDKafkaErrorCode::ProducerFenced,
        RDKafkaErrorCode::InvalidProducerEpoch,
    ];
    matches!(error, KafkaError::Transaction(e) if e.is_fatal() && fenced_codes.contains(&e.code()))
}

// ---------------------------------------------------------------------------------------------
// Every client library commits, aborts and commits again.

/// Records per transaction, over how many partitions.
const MATRIX_RECORDS: usize = 200;
const MATRIX_PARTITIONS: i32 = 2;
/// (transaction, committed?) as the client scripts run them.
const MATRIX_TRANSACTIONS: [(usize, bool); 3] = [(0, true), (1, false), (2, true)];

/// Record `i` of transaction `txn` as the scripts make it: (partition, value).
fn matrix_record(prefix: &str, txn: usize, commit: bool, i: usize) -> (i32, String) {
    let outcome = if commit { "commit" } else { "abort" };
    ((i % MATRIX_PARTITIONS as usize) as i32, format!("{prefix}-t{txn}-{outcome}-{i:06}"))
}

#[test]
fn librdkafka_transaction_commit_is_read_committed_and_abort_never() {
    client_matrix(Client::Librdkafka);
}

#[test]
fn kafkajs_transaction_commit_is_read_committed_and_abort_never() {
    client_matrix(Client::Script(Library::Kafkajs));
}

#[test]
fn kafka_python_transaction_commit_is_read_committed_and_abort_never() {
    client_matrix(Client::Script(Library::KafkaPython));
}

#[test]
fn aiokafka_transaction_commit_is_read_committed_and_abort_never() {
    client_matrix(Client::Script(Library::Aiokafka));
}

fn client_matrix(client: Client) {
    if let Client::Script(library) = client {
        library.require("transactional_producer");
    }
    with_node(NodeOptions::default(), |node| {
        let topic = "transactions";
        let partitions: Vec<i32> = (0..MATRIX_PARTITIONS).collect();
        kafka::create_topic(&node.bootstrap(), topic, MATRIX_PARTITIONS, &[])?;
        let transactional_id = format!("{}-txn", client.name());
        let started = Instant::now();
        let outcomes = run_transactions(client, &node.bootstrap(), topic, &transactional_id)
            .with_context(|| format!("{} transactions", client.name()))?;
        eprintln!("{}: transactions {outcomes:?} in {:?}", client.name(), started.elapsed());
        let expected: Vec<String> = MATRIX_TRANSACTIONS
            .iter()
            .map(|&(t, commit)| format!("{t} {}", if commit { "committed" } else { "aborted" }))
            .collect();
        ensure!(
            outcomes == expected,
            "{} reported {outcomes:?}, expected {expected:?}",
            client.name()
        );
        let coordinator = wait_txn_coordinator(&[node.kafka_addr()], &transactional_id)?;
        ensure!(coordinator == 1, "FindCoordinator names node {coordinator} on a one-node cluster");
        check_matrix_reads(node, topic, &partitions, client.name())
    });
}

/// Runs the three transactions with `client`; the outcome lines it reported.
fn run_transactions(
    client: Client,
    bootstrap: &str,
    topic: &str,
    transactional_id: &str,
) -> anyhow::Result<Vec<String>> {
    let library = match client {
        Client::Librdkafka => return librdkafka_transactions(bootstrap, topic, transactional_id),
        Client::Script(library) => library,
    };
    let args = [
        ("--transactional-id", transactional_id.to_owned()),
        ("--partitions", MATRIX_PARTITIONS.to_string()),
        ("--count", MATRIX_RECORDS.to_string()),
    ];
    let run = library.run_producer("transactional_producer", bootstrap, topic, &args)?;
    Ok(run.stdout.lines().map(str::to_owned).collect())
}

/// The same three transactions as the scripts, with librdkafka.
fn librdkafka_transactions(
    bootstrap: &str,
    topic: &str,
    transactional_id: &str,
) -> anyhow::Result<Vec<String>> {
    let producer = txn_producer(bootstrap, transactional_id, &[])?;
    producer.init_transactions(TXN_CALL_TIMEOUT).context("init_transactions")?;
    let mut outcomes = Vec::new();
    for (txn, commit) in MATRIX_TRANSACTIONS {
        producer.begin_transaction().context("begin_transaction")?;
        for i in 0..MATRIX_RECORDS {
            let (partition, value) = matrix_record("librdkafka", txn, commit, i);
            send(&producer, topic, partition, &format!("k{i}"), &value)
                .with_context(|| format!("send {value}"))?;
        }
        // Every record acknowledged before the end: an aborted one is then in the log.
        producer.flush(TXN_CALL_TIMEOUT).context("flush")?;
        if commit {
            producer.commit_transaction(TXN_CALL_TIMEOUT).context("commit_transaction")?;
        } else {
            producer.abort_transaction(TXN_CALL_TIMEOUT).context("abort_transaction")?;
        }
        outcomes.push(format!("{txn} {}", if commit { "committed" } else { "aborted" }));
    }
    Ok(outcomes)
}

/// read_committed reads transactions 0 and 2, read_uncommitted all three, each partition in
/// send order.
fn check_matrix_reads(
    node: &StromNode,
    topic: &str,
    partitions: &[i32],
    prefix: &str,
) -> anyhow::Result<()> {
    let expected = |isolation_committed: bool| -> BTreeMap<i32, Vec<String>> {
        let mut out: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for (txn, commit) in MATRIX_TRANSACTIONS {
            if isolation_committed && !commit {
                continue;
            }
            for i in 0..MATRIX_RECORDS {
                let (partition, value) = matrix_record(prefix, txn, commit, i);
                out.entry(partition).or_default().push(value);
            }
        }
        out
    };
    let bootstrap = node.bootstrap();
    wait_stable(&bootstrap, topic, partitions)?;
    for (isolation, committed_only) in [("read_committed", true), ("read_uncommitted", false)] {
        let mut read: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for record in read_to_end(&bootstrap, topic, partitions, isolation)? {
            read.entry(record.partition).or_default().push(record.value);
        }
        let want = expected(committed_only);
        for p in partitions {
            let (got, want) = (read.remove(p).unwrap_or_default(), &want[p]);
            if got != *want {
                let first = got.iter().zip(want).position(|(g, w)| g != w);
                bail!(
                    "{isolation} read of {topic}-{p}: {} records, expected {}; first difference \
                     at {first:?}: read {:?}, expected {:?}",
                    got.len(),
                    want.len(),
                    first.and_then(|i| got.get(i)),
                    first.and_then(|i| want.get(i)),
                );
            }
        }
        eprintln!("{prefix}: {isolation} read exactly the expected records");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A zombie with the old epoch is fenced.

#[test]
fn zombie_producer_is_fenced_by_a_new_incarnation_and_its_transaction_aborted() {
    with_node(NodeOptions::default(), |node| {
        let (bootstrap, topic, id) = (node.bootstrap(), "zombie", "zombie-txn");
        kafka::create_topic(&bootstrap, topic, 1, &[])?;
        let zombie = txn_producer(&bootstrap, id, &[])?;
        zombie.init_transactions(TXN_CALL_TIMEOUT).context("zombie: init_transactions")?;
        zombie.begin_transaction().context("zombie: begin_transaction")?;
        for i in 0..10 {
            send(&zombie, topic, 0, "z", &format!("zombie-{i}"))?;
        }
        zombie.flush(TXN_CALL_TIMEOUT).context("zombie: flush")?;

        // The new incarnation's InitProducerId bumps the epoch and aborts the open transaction
        // (CONCURRENT_TRANSACTIONS until it is done, which librdkafka retries).
        let successor = txn_producer(&bootstrap, id, &[])?;
        successor.init_transactions(TXN_CALL_TIMEOUT).context("successor: init_transactions")?;
        successor.begin_transaction().context("successor: begin_transaction")?;
        for i in 0..10 {
            send(&successor, topic, 0, "s", &format!("successor-{i}"))?;
        }
        successor.commit_transaction(TXN_CALL_TIMEOUT).context("successor: commit")?;

        let zombie_commit = zombie.commit_transaction(TXN_CALL_TIMEOUT);
        eprintln!("zombie's commit after the successor's InitProducerId: {zombie_commit:?}");
        match &zombie_commit {
            Ok(()) => bail!("the zombie's commit succeeded after a newer epoch was initialized"),
            Err(error) => ensure!(
                is_fenced(error),
                "the zombie's commit failed with {error}, not a fatal fenced error \
                 (PRODUCER_FENCED / INVALID_PRODUCER_EPOCH → librdkafka's _FENCED)"
            ),
        }
        // A fenced producer sends nothing more into the partition.
        let late = send(&zombie, topic, 0, "z", "zombie-late");
        let _ = zombie.flush(Duration::from_secs(5));
        eprintln!("zombie's send after it was fenced: {late:?}");

        wait_stable(&bootstrap, topic, &[0])?;
        let committed: Vec<String> = read_to_end(&bootstrap, topic, &[0], "read_committed")?
            .into_iter()
            .map(|r| r.value)
            .collect();
        let successor_values: Vec<String> = (0..10).map(|i| format!("successor-{i}")).collect();
        ensure!(
            committed == successor_values,
            "read_committed read {committed:?}, expected only the successor's records"
        );
        let all: Vec<String> = read_to_end(&bootstrap, topic, &[0], "read_uncommitted")?
            .into_iter()
            .map(|r| r.value)
            .collect();
        let zombie_values: Vec<String> = (0..10).map(|i| format!("zombie-{i}")).collect();
        ensure!(
            all.starts_with(&zombie_values) && all.ends_with(&successor_values),
            "read_uncommitted read {all:?}: the zombie's aborted records, then the successor's"
        );
        ensure!(!all.iter().any(|v| v == "zombie-late"), "the fenced zombie wrote {all:?}");
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// A transaction left open past its timeout is aborted by the coordinator.

/// The abandoned producer's `transaction.timeout.ms`.
const SHORT_TXN_TIMEOUT_MS: u64 = 3_000;
/// Bound for the coordinator to abort it: the timeout plus Kafka's default check interval
/// (`transaction.abort.timed.out.transaction.cleanup.interval.ms`, 10 s), with room to spare.
const TIMEOUT_ABORT_WITHIN: Duration = Duration::from_secs(60);

#[test]
fn transaction_left_open_past_its_timeout_is_aborted_and_the_lso_moves_on() {
    with_node(NodeOptions::default(), |node| {
        let (bootstrap, topic, id) = (node.bootstrap(), "abandoned", "abandoned-txn");
        kafka::create_topic(&bootstrap, topic, 1, &[])?;
        let timeout = SHORT_TXN_TIMEOUT_MS.to_string();
        // librdkafka wants message.timeout.ms ≤ transaction.timeout.ms.
        let abandoned = txn_producer(
            &bootstrap,
            id,
            &[("transaction.timeout.ms", &timeout), ("message.timeout.ms", &timeout)],
        )?;
        abandoned.init_transactions(TXN_CALL_TIMEOUT).context("init_transactions")?;
        abandoned.begin_transaction().context("begin_transaction")?;
        let began = Instant::now();
        for i in 0..10 {
            send(&abandoned, topic, 0, "o", &format!("open-{i}"))?;
        }
        abandoned.flush(TXN_CALL_TIMEOUT).context("flush the open transaction's records")?;
        let plain = AckingProducer::new(&bootstrap, &[])?;
        for i in 0..10 {
            let value = format!("after-{i}");
            let record = Outgoing {
                partition: Some(0),
                value: Some(value.as_bytes()),
                ..Outgoing::default()
            };
            plain.send(topic, i, record)?;
        }
        plain.flush(CLIENT_TIMEOUT)?;
        plain.acks_of(0..10)?;

        // Before the timeout has passed the transaction must still hold the LSO.
        let lso = ends(&bootstrap, topic, &[0], "read_committed")?[&0];
        let hw = ends(&bootstrap, topic, &[0], "read_uncommitted")?[&0];
        let open_for = began.elapsed();
        eprintln!("open for {open_for:?}: LSO {lso}, HW {hw}");
        if open_for < Duration::from_millis(SHORT_TXN_TIMEOUT_MS) {
            ensure!(lso == 0, "LSO {lso} (HW {hw}) while the transaction from offset 0 is open");
        }

        // A read_committed consumer waits at the LSO, then reads the records after the
        // transaction once the coordinator aborted it; never the open ones.
        let consumer: BaseConsumer =
            kafka::consumer(&bootstrap, &[("isolation.level", "read_committed")])?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let mut read = Vec::new();
        let deadline = Instant::now() + TIMEOUT_ABORT_WITHIN;
        while read.len() < 10 {
            ensure!(
                Instant::now() < deadline,
                "read_committed consumer read {read:?} within {TIMEOUT_ABORT_WITHIN:?} of the \
                 transaction's {SHORT_TXN_TIMEOUT_MS} ms timeout; LSO now {:?}",
                ends(&bootstrap, topic, &[0], "read_committed")
            );
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.context("read_committed consumer")?;
                let value = message.payload().map(String::from_utf8_lossy).unwrap_or_default();
                read.push(value.into_owned());
            }
        }
        eprintln!(
            "read_committed consumer passed the abandoned transaction after {:?}",
            began.elapsed()
        );
        let after: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
        ensure!(read == after, "read_committed read {read:?}, expected {after:?}");
        let hw_map = wait_stable(&bootstrap, topic, &[0])?;
        // Ten records, ten plain records and the ABORT marker.
        ensure!(hw_map[&0] == 21, "HW {} after the abort marker, expected 21", hw_map[&0]);

        // The coordinator bumped the epoch when it aborted: the producer cannot commit.
        let commit = abandoned.commit_transaction(TXN_CALL_TIMEOUT);
        eprintln!("the abandoned producer's commit after the timeout: {commit:?}");
        ensure!(commit.is_err(), "a transaction aborted by its timeout was committed");
        let committed: Vec<String> = read_to_end(&bootstrap, topic, &[0], "read_committed")?
            .into_iter()
            .map(|r| r.value)
            .collect();
        ensure!(committed == after, "read_committed after the late commit: {committed:?}");
        Ok(())
    });
}
