//! Idempotent producers (issue 12) against real nodes.
//!
//! - One node: librdkafka (`enable.idempotence=true`), kafkajs (`idempotent: true`), aiokafka
//!   and kafka-python 3 (`enable_idempotence=True`) and sarama (`Idempotent`) each produce records to two partitions; a
//!   librdkafka consumer reads every one exactly once, in send order, at its acknowledged
//!   offset, and the batches carry the client's producer id with sequences 0, 1, 2, ... per
//!   partition (proof that the client really ran idempotent).
//! - One node, raw protocol: a producer id from InitProducerId; a resent batch is answered with
//!   its first offsets and not written again; a gap in the sequence is
//!   OUT_OF_ORDER_SEQUENCE_NUMBER; a new epoch starts at sequence 0; the old epoch is then
//!   INVALID_PRODUCER_EPOCH.
//! - Three nodes, RF 3, `min.insync.replicas` 2: an idempotent librdkafka producer streams
//!   keyed records with retries while the partition leader is killed (-9) and restarted, or
//!   paused (SIGSTOP) long enough for the client to retry elsewhere and then resumed: every
//!   record is acknowledged and appears exactly once, in per-partition send order. A raw
//!   batch resent to the new leader after the kill, and to the restarted node once it leads
//!   again, is answered with its first offsets: the producer state moved with the log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kafka_protocol::messages::ApiKey;
use rdkafka::admin::{NewTopic, TopicReplication};
use strom_tests::clients::{Client, Library};
use strom_tests::cluster::StromCluster;
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::raw::{self, FetchedRecord, RawConnection};
use strom_tests::stream::{id_of, Ledger, Streamer};
use strom_tests::{
    wait_until, with_cluster, with_node, ClusterOptions, NodeOptions, StromNode, CLIENT_TIMEOUT,
};

/// Kafka error codes the broker must answer.
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;

// ---------------------------------------------------------------------------------------------
// One node, every client library.

/// Records each client produces, and over how many partitions.
const CLIENT_RECORDS: usize = 2_000;
const CLIENT_PARTITIONS: i32 = 2;
/// One record as the producer reported its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Acked {
    partition: i32,
    offset: i64,
    value: String,
}

/// The records a client sends, in send order: (partition, value), as the scripts make them.
fn client_records(prefix: &str) -> Vec<(i32, String)> {
    (0..CLIENT_RECORDS)
        .map(|i| ((i % CLIENT_PARTITIONS as usize) as i32, format!("{prefix}-{i:06}")))
        .collect()
}

#[test]
fn librdkafka_idempotent_producer_writes_each_record_once_in_order() {
    single_node_client(Client::Librdkafka);
}

#[test]
fn kafkajs_idempotent_producer_writes_each_record_once_in_order() {
    single_node_client(Client::Script(Library::Kafkajs));
}

#[test]
fn aiokafka_idempotent_producer_writes_each_record_once_in_order() {
    single_node_client(Client::Script(Library::Aiokafka));
}

#[test]
fn kafka_python_idempotent_producer_writes_each_record_once_in_order() {
    single_node_client(Client::Script(Library::KafkaPython));
}

/// sarama 1.22 (Debian's): `Idempotent = true`, acks all, `Net.MaxOpenRequests = 1`.
#[test]
fn sarama_idempotent_producer_writes_each_record_once_in_order() {
    single_node_client(Client::Script(Library::Sarama));
}

fn single_node_client(client: Client) {
    if let Client::Script(library) = client {
        library.require("idempotent_producer");
    }
    with_node(NodeOptions::default(), |node| {
        let topic = "idempotent";
        kafka::create_topic(&node.bootstrap(), topic, CLIENT_PARTITIONS, &[])?;
        let started = Instant::now();
        let acked = produce_with(client, &node.bootstrap(), topic)
            .with_context(|| format!("{} producing {CLIENT_RECORDS} records", client.name()))?;
        eprintln!(
            "{}: {} records acknowledged in {:?}",
            client.name(),
            acked.len(),
            started.elapsed()
        );
        check_client_records(node, topic, &client_records(client.name()), &acked)
            .with_context(|| format!("records of the {} idempotent producer", client.name()))
    });
}

/// Produces [`client_records`] with `client`'s idempotent producer; the acknowledgements in
/// send order.
fn produce_with(client: Client, bootstrap: &str, topic: &str) -> anyhow::Result<Vec<Acked>> {
    let records = client_records(client.name());
    let library = match client {
        Client::Librdkafka => {
            let producer = AckingProducer::new(bootstrap, &[("enable.idempotence", "true")])?;
            for (id, (partition, value)) in records.iter().enumerate() {
                let key = format!("k{id}");
                producer.send(
                    topic,
                    id,
                    Outgoing {
                        partition: Some(*partition),
                        key: Some(key.as_bytes()),
                        value: Some(value.as_bytes()),
                        ..Outgoing::default()
                    },
                )?;
            }
            producer.flush(CLIENT_TIMEOUT)?;
            let acks = producer.acks_of(0..records.len())?;
            return Ok(acks
                .into_iter()
                .zip(records)
                .map(|(ack, (_, value))| Acked {
                    partition: ack.partition,
                    offset: ack.offset,
                    value,
                })
                .collect());
        }
        Client::Script(library) => library,
    };
    let args =
        [("--partitions", CLIENT_PARTITIONS.to_string()), ("--count", CLIENT_RECORDS.to_string())];
    let run = library.run_producer("idempotent_producer", bootstrap, topic, &args)?;
    run.stdout
        .lines()
        .map(|line| {
            let mut words = line.splitn(3, ' ');
            let parsed = (|| {
                let partition = words.next()?.parse().ok()?;
                let offset = words.next()?.parse().ok()?;
                Some(Acked { partition, offset, value: words.next()?.to_owned() })
            })();
            parsed.with_context(|| format!("{} printed a malformed line {line:?}", library.name()))
        })
        .collect()
}

/// Every record was acknowledged where it was sent; each partition holds exactly the records
/// sent to it, in send order, at their acknowledged offsets; and its batches carry one
/// producer id and epoch with sequences counting from 0.
fn check_client_records(
    node: &StromNode,
    topic: &str,
    sent: &[(i32, String)],
    acked: &[Acked],
) -> anyhow::Result<()> {
    ensure!(acked.len() == sent.len(), "{} of {} records acknowledged", acked.len(), sent.len());
    for (i, (ack, (partition, value))) in acked.iter().zip(sent).enumerate() {
        ensure!(
            ack.partition == *partition && ack.value == *value,
            "acknowledgement {i} is {ack:?}, for record {value:?} sent to partition {partition}"
        );
    }
    let partitions: Vec<i32> = (0..CLIENT_PARTITIONS).collect();
    let consumed = kafka::consume_all(&node.bootstrap(), topic, &partitions, &[])?;
    let mut producers = BTreeMap::new();
    for &partition in &partitions {
        let expected: Vec<(i64, &str)> = acked
            .iter()
            .filter(|a| a.partition == partition)
            .map(|a| (a.offset, a.value.as_str()))
            .collect();
        let read: Vec<(i64, String)> = consumed
            .iter()
            .filter(|c| c.partition == partition)
            .map(|c| {
                let value = c.value.as_deref().unwrap_or_default();
                (c.offset, String::from_utf8_lossy(value).into_owned())
            })
            .collect();
        if let Some(i) = (0..expected.len().max(read.len())).find(|&i| {
            expected.get(i).map(|&(o, v)| (o, v)) != read.get(i).map(|(o, v)| (*o, v.as_str()))
        }) {
            bail!(
                "{topic}-{partition}: a consumer read {} records, {} were sent there; the first \
                 difference is at index {i}: sent and acknowledged {:?}, read {:?}",
                read.len(),
                expected.len(),
                expected.get(i),
                read.get(i)
            );
        }
        let batches = raw::read_partition(node.kafka_addr(), topic, partition)?;
        ensure!(batches.len() == expected.len(), "{topic}-{partition}: raw read differs in length");
        for (rank, record) in batches.iter().enumerate() {
            let first =
                *producers.entry(partition).or_insert((record.producer_id, record.producer_epoch));
            ensure!(
                record.producer_id >= 0
                    && (record.producer_id, record.producer_epoch) == first
                    && record.sequence == rank as i32,
                "{topic}-{partition}@{}: producer id {} epoch {} sequence {}, expected the \
                 partition's first producer id and epoch {first:?} and sequence {rank} (an \
                 idempotent producer numbers each partition's records from 0)",
                record.offset,
                record.producer_id,
                record.producer_epoch,
                record.sequence
            );
        }
    }
    let ids: Vec<(i64, i16)> = producers.values().copied().collect();
    ensure!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one producer wrote partitions under different producer ids: {producers:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One node, raw protocol: the broker's answers.

/// A new producer id for an idempotent producer, from `conn`'s node.
fn new_producer_id(conn: &mut RawConnection) -> anyhow::Result<(i64, i16)> {
    let versions = conn
        .max_version(ApiKey::InitProducerId)
        .context("the broker must list InitProducerId in ApiVersions for idempotent producers")?;
    let answer = conn.init_producer_id()?;
    ensure!(
        answer.error_code == 0 && answer.producer_id.0 >= 0 && answer.producer_epoch >= 0,
        "InitProducerId v{} (no transactional id): error {} producer id {} epoch {}",
        versions.min(raw::INIT_PRODUCER_ID_VERSION_MAX),
        answer.error_code,
        answer.producer_id.0,
        answer.producer_epoch
    );
    Ok((answer.producer_id.0, answer.producer_epoch))
}

/// The values `raw-<first>` .. `raw-<first + count - 1>`.
fn raw_values(first: usize, count: usize) -> Vec<Vec<u8>> {
    (first..first + count).map(|i| format!("raw-{i}").into_bytes()).collect()
}

/// An idempotent batch of `values` from producer (`id`, `epoch`) numbered from `sequence`.
fn batch_of(
    values: &[Vec<u8>],
    producer: (i64, i16),
    sequence: i32,
) -> anyhow::Result<bytes::Bytes> {
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    raw::idempotent_batch(&refs, producer.0, producer.1, sequence, kafka_now_ms())
}

/// Produces `batch` to `addr` and returns (error code, base offset).
fn produce_raw(
    addr: std::net::SocketAddr,
    topic: &str,
    partition: i32,
    batch: bytes::Bytes,
) -> anyhow::Result<(i16, i64)> {
    let mut conn = RawConnection::connect(addr)?;
    let answer = conn.produce_answer(topic, partition, batch)?;
    Ok((answer.error_code, answer.base_offset))
}

fn kafka_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[test]
fn broker_answers_a_resent_batch_with_its_offsets_and_refuses_gaps_and_old_epochs() {
    with_node(NodeOptions::default(), |node| {
        let topic = "idempotent-raw";
        kafka::create_topic(&node.bootstrap(), topic, 1, &[])?;
        let addr = node.kafka_addr();
        let mut conn = RawConnection::connect(addr)?;
        let (id, epoch) = new_producer_id(&mut conn)?;
        let (other, _) = new_producer_id(&mut conn)?;
        ensure!(other != id, "two InitProducerId calls handed out the same producer id {id}");
        let producer = (id, epoch);

        let first = raw_values(0, 5);
        let answer = produce_raw(addr, topic, 0, batch_of(&first, producer, 0)?)?;
        ensure!(answer == (0, 0), "first batch (sequences 0-4): (error, base offset) {answer:?}");
        let answer = produce_raw(addr, topic, 0, batch_of(&first, producer, 0)?)?;
        ensure!(
            answer == (0, 0),
            "the same batch sent again: {answer:?}, expected no error and its first base offset 0"
        );
        let second = raw_values(5, 5);
        let answer = produce_raw(addr, topic, 0, batch_of(&second, producer, 5)?)?;
        ensure!(answer == (0, 5), "second batch (sequences 5-9): {answer:?}");
        // An older batch, still among the last five of this producer, is a duplicate too.
        let answer = produce_raw(addr, topic, 0, batch_of(&first, producer, 0)?)?;
        ensure!(answer == (0, 0), "the first batch sent again after the second: {answer:?}");

        let gap = raw_values(12, 2);
        let answer = produce_raw(addr, topic, 0, batch_of(&gap, producer, 12)?)?;
        ensure!(
            answer.0 == OUT_OF_ORDER_SEQUENCE_NUMBER,
            "sequence 12 after 9: error {} (expected {OUT_OF_ORDER_SEQUENCE_NUMBER}, \
             OUT_OF_ORDER_SEQUENCE_NUMBER)",
            answer.0
        );

        // A producer bumps its own epoch (KIP-360); the new epoch starts at sequence 0.
        let bumped = (id, epoch + 1);
        let not_zero = raw_values(20, 1);
        let answer = produce_raw(addr, topic, 0, batch_of(&not_zero, bumped, 3)?)?;
        ensure!(
            answer.0 == OUT_OF_ORDER_SEQUENCE_NUMBER,
            "new epoch {} starting at sequence 3: error {} (expected \
             {OUT_OF_ORDER_SEQUENCE_NUMBER})",
            bumped.1,
            answer.0
        );
        let third = raw_values(10, 3);
        let answer = produce_raw(addr, topic, 0, batch_of(&third, bumped, 0)?)?;
        ensure!(answer == (0, 10), "epoch {} sequence 0: {answer:?}", bumped.1);
        let stale = raw_values(30, 1);
        let answer = produce_raw(addr, topic, 0, batch_of(&stale, producer, 10)?)?;
        ensure!(
            answer.0 == INVALID_PRODUCER_EPOCH,
            "epoch {epoch} after epoch {} wrote: error {} (expected {INVALID_PRODUCER_EPOCH}, \
             INVALID_PRODUCER_EPOCH)",
            bumped.1,
            answer.0
        );

        let log = raw::read_partition(addr, topic, 0)?;
        let expected: Vec<(i64, Vec<u8>, i16, i32)> = first
            .iter()
            .chain(&second)
            .enumerate()
            .map(|(i, v)| (i as i64, v.clone(), epoch, i as i32))
            .chain(
                third
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (10 + i as i64, v.clone(), epoch + 1, i as i32)),
            )
            .collect();
        let held: Vec<(i64, Vec<u8>, i16, i32)> =
            log.iter().map(|r| (r.offset, value_bytes(r), r.producer_epoch, r.sequence)).collect();
        ensure!(
            held == expected,
            "the log holds (offset, value, epoch, sequence) {:?}, expected {:?}",
            printable(&held),
            printable(&expected)
        );
        ensure!(log.iter().all(|r| r.producer_id == id), "a record with another producer id");
        Ok(())
    });
}

fn value_bytes(record: &FetchedRecord) -> Vec<u8> {
    record.value.as_deref().unwrap_or_default().to_vec()
}

fn printable(records: &[(i64, Vec<u8>, i16, i32)]) -> Vec<(i64, String, i16, i32)> {
    records
        .iter()
        .map(|(o, v, e, s)| (*o, String::from_utf8_lossy(v).into_owned(), *e, *s))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Three nodes: the leader killed or paused under an idempotent producer.

const STREAM_PARTITIONS: i32 = 3;
const STREAM_RATE: u64 = 2_000;
/// Bound for a partition to get a new leader, or a write to be acknowledged again.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(45);
/// Bound for a restarted or resumed replica to be back in every ISR.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a killed node stays down: past the broker session timeout.
const DOWN_FOR: Duration = Duration::from_secs(3);

/// librdkafka's idempotent producer with room to retry through a failover: messages may wait a
/// minute, and a request to a paused leader is given up (and retried) after 4 s.
const IDEMPOTENT_STREAM: [(&str, &str); 4] = [
    ("enable.idempotence", "true"),
    ("message.timeout.ms", "60000"),
    ("socket.timeout.ms", "4000"),
    ("request.timeout.ms", "4000"),
];

fn cluster_options() -> ClusterOptions {
    ClusterOptions { min_insync_replicas: Some(2), ..ClusterOptions::default() }
}

/// A topic of [`STREAM_PARTITIONS`] partitions on all three nodes with `configs`, every ISR
/// full.
fn create_replicated_topic(
    cluster: &StromCluster,
    topic: &str,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut new_topic = NewTopic::new(topic, STREAM_PARTITIONS, TopicReplication::Fixed(3));
    for (key, value) in configs {
        new_topic = new_topic.set(key, value);
    }
    kafka::create_new_topic(&cluster.bootstrap(), &new_topic, &kafka::admin_options())?;
    cluster.wait_topic_everywhere(topic, STREAM_PARTITIONS as usize)?;
    cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;
    Ok(())
}

/// The streamer delivered every record it sent, without a fatal error; then the topic holds,
/// per partition, the streamer's records in strictly rising id order (no duplicate, no
/// reordering), each acknowledged one at its acknowledged offset, every batch from an
/// idempotent producer; and each of `raw` (partition, offset, value) exactly once where it was
/// acknowledged.
fn check_stream(
    cluster: &StromCluster,
    topic: &str,
    ledger: &Ledger,
    raw: &[(i32, i64, Vec<u8>)],
) -> anyhow::Result<()> {
    let (errors, error_count) = ledger.client_errors();
    eprintln!("producer: {}; {error_count} client errors, first: {errors:?}", ledger.summary());
    ensure!(ledger.fatal().is_none(), "the idempotent producer failed: {}", ledger.summary());
    let failed = ledger.failed();
    ensure!(
        failed.is_empty(),
        "{} records were not delivered (message.timeout.ms is a minute), first: {:?}",
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    let acks = ledger.acks();
    ensure!(
        acks.len() == ledger.sent(),
        "{} of {} records acknowledged",
        acks.len(),
        ledger.sent()
    );

    let partitions: Vec<i32> = (0..STREAM_PARTITIONS).collect();
    let consumed = kafka::consume_all(&cluster.bootstrap(), topic, &partitions, &[])?;
    let mut at: BTreeMap<(i32, i64), &[u8]> = BTreeMap::new();
    let mut last_id: BTreeMap<i32, (usize, i64)> = BTreeMap::new();
    let mut first_seen: BTreeMap<usize, (i32, i64)> = BTreeMap::new();
    let mut raw_seen: BTreeMap<&[u8], Vec<(i32, i64)>> = BTreeMap::new();
    for record in &consumed {
        let value = record.value.as_deref().unwrap_or_default();
        at.insert((record.partition, record.offset), value);
        if let Some(id) = id_of(value) {
            if let Some(&(partition, offset)) = first_seen.get(&id) {
                bail!(
                    "{topic}: record {id} is in the log twice, at {partition}@{offset} and at \
                     {}@{}",
                    record.partition,
                    record.offset
                );
            }
            first_seen.insert(id, (record.partition, record.offset));
            if let Some(&(previous, offset)) = last_id.get(&record.partition) {
                ensure!(
                    id > previous,
                    "{topic}-{}: record {id} at offset {} follows record {previous} at offset \
                     {offset}: out of send order",
                    record.partition,
                    record.offset
                );
            }
            last_id.insert(record.partition, (id, record.offset));
        } else if value.starts_with(b"raw-") {
            raw_seen.entry(value).or_default().push((record.partition, record.offset));
        } else {
            bail!(
                "{topic}-{}@{} holds a record this test never wrote: {:?}",
                record.partition,
                record.offset,
                String::from_utf8_lossy(value)
            );
        }
    }
    let mut misplaced = Vec::new();
    for (&id, &(partition, offset)) in &acks {
        if at.get(&(partition, offset)).and_then(|v| id_of(v)) != Some(id) {
            misplaced.push(format!("record {id} acknowledged at {partition}@{offset}"));
        }
    }
    ensure!(
        misplaced.is_empty(),
        "{} acknowledged records are not at their offsets, first: {:?}",
        misplaced.len(),
        &misplaced[..misplaced.len().min(10)]
    );
    for (partition, offset, value) in raw {
        let seen = raw_seen.get(value.as_slice()).cloned().unwrap_or_default();
        ensure!(
            seen == [(*partition, *offset)],
            "raw record {:?} acknowledged at {partition}@{offset} is in the log at {seen:?}",
            String::from_utf8_lossy(value)
        );
    }
    // Every streamed batch must carry a producer id: otherwise the client never ran idempotent
    // and the check above proved nothing about deduplication.
    let leaders = cluster.leaders_of(topic)?;
    for &partition in &partitions {
        let leader = *leaders.get(&partition).context("no leader")? as u32;
        let records = raw::read_partition(cluster.kafka_addr(leader), topic, partition)?;
        if let Some(r) = records
            .iter()
            .find(|r| r.producer_id < 0 && r.value.as_deref().and_then(id_of).is_some())
        {
            bail!("{topic}-{partition}@{}: a streamed record without a producer id", r.offset);
        }
    }
    eprintln!(
        "read back {} records of {topic}: every one of {} sent exactly once, in send order",
        consumed.len(),
        ledger.sent()
    );
    Ok(())
}

/// The names of the files in `dir` that end with `suffix`.
fn files_ending(dir: &std::path::Path, suffix: &str) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(suffix) {
            names.push(name);
        }
    }
    Ok(names)
}

#[test]
fn idempotent_producer_writes_each_record_once_across_kill9_of_the_leader() {
    with_cluster(3, cluster_options(), |cluster| {
        let topic = "idempotent-kill";
        // Segments of 16 KiB (about 100 records) roll several times before the kill: the
        // restarted node rebuilds its producers from a snapshot taken at a roll plus the
        // batches after it.
        create_replicated_topic(cluster, topic, &[("segment.bytes", "16384")])?;
        let partition = 0;
        let preferred = cluster
            .metadata(cluster.running()[0])?
            .topic(topic)
            .and_then(|t| t.partitions.get(&partition).map(|p| p.replicas[0]))
            .context("no replicas")?;
        let leader = cluster.leaders_of(topic)?[&partition];
        ensure!(leader == preferred, "{topic}-{partition} led by {leader}, not by {preferred}");

        // A raw producer's batch, acknowledged by the leader before it dies.
        let mut conn = RawConnection::connect(cluster.kafka_addr(leader as u32))?;
        let producer = new_producer_id(&mut conn)?;
        let first = raw_values(0, 5);
        let (code, first_offset) = produce_raw(
            cluster.kafka_addr(leader as u32),
            topic,
            partition,
            batch_of(&first, producer, 0)?,
        )?;
        ensure!(code == 0, "raw batch to leader {leader}: error {code}");

        let streamer = Streamer::start(
            &cluster.bootstrap(),
            topic,
            STREAM_PARTITIONS,
            STREAM_RATE,
            &IDEMPOTENT_STREAM,
        )?;
        streamer.wait_acks(1_000, CLIENT_TIMEOUT)?;
        let killed = Instant::now();
        cluster.kill9(leader as u32)?;
        let new = cluster.wait_new_leader(topic, partition, leader, FAILOVER_TIMEOUT)?;
        let acked = wait_until(FAILOVER_TIMEOUT, "an ack after the kill", || {
            Ok(streamer.ledger().first_ack_after(partition, killed))
        })
        .with_context(|| format!("producer {}", streamer.ledger().summary()))?;
        eprintln!(
            "kill -9 of leader {leader}: node {new} leads {topic}-{partition}; first ack after {:?}",
            acked.saturating_duration_since(killed)
        );

        // The new leader knows the raw producer from the replicated log.
        let answer = produce_raw(
            cluster.kafka_addr(new as u32),
            topic,
            partition,
            batch_of(&first, producer, 0)?,
        )?;
        ensure!(
            answer == (0, first_offset),
            "the raw batch resent to new leader {new}: (error, base offset) {answer:?}, expected \
             (0, {first_offset}) as node {leader} answered before it was killed"
        );
        let second = raw_values(5, 5);
        let (code, second_offset) = produce_raw(
            cluster.kafka_addr(new as u32),
            topic,
            partition,
            batch_of(&second, producer, 5)?,
        )?;
        ensure!(code == 0, "the raw producer's next batch to new leader {new}: error {code}");

        streamer.wait_acks(1_000, CLIENT_TIMEOUT)?;
        let down = killed.elapsed();
        if down < DOWN_FOR {
            std::thread::sleep(DOWN_FOR - down);
        }
        let dir = cluster.node(leader as u32).partition_dir(topic, partition);
        let (segments, snapshots) = (files_ending(&dir, ".log")?, files_ending(&dir, ".snapshot")?);
        ensure!(
            segments.len() > 1 && !snapshots.is_empty(),
            "node {leader} holds {} segments and {} producer snapshots (<offset>.snapshot) of \
             {topic}-{partition}: every roll must leave a snapshot",
            segments.len(),
            snapshots.len()
        );
        cluster.restart(leader as u32)?;
        cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;

        // The restarted node rebuilt the producer's state from its own log: once it leads
        // again, the resent batch is still a duplicate.
        let keeper = new as u32;
        let mut asked: Option<Instant> = None;
        wait_until(
            FAILOVER_TIMEOUT,
            &format!("node {leader} leads {topic}-{partition} again"),
            || {
                if cluster.leaders_of(topic)?[&partition] == leader {
                    return Ok(Some(()));
                }
                // The election moves nothing while the restarted node is still fenced: ask again.
                if asked.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    cluster.cli(keeper, &["cluster", "elect-leaders", "--topic", topic])?;
                    asked = Some(Instant::now());
                }
                Ok(None)
            },
        )?;
        let answer = produce_raw(
            cluster.kafka_addr(leader as u32),
            topic,
            partition,
            batch_of(&second, producer, 5)?,
        )?;
        ensure!(
            answer == (0, second_offset),
            "the raw batch resent to restarted node {leader}, leader again: {answer:?}, \
             expected (0, {second_offset}) as node {new} answered"
        );

        let ledger = streamer.stop()?;
        let raw: Vec<(i32, i64, Vec<u8>)> = first
            .iter()
            .enumerate()
            .map(|(i, v)| (partition, first_offset + i as i64, v.clone()))
            .chain(
                second
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (partition, second_offset + i as i64, v.clone())),
            )
            .collect();
        check_stream(cluster, topic, &ledger, &raw)
    });
}

#[test]
fn idempotent_producer_writes_each_record_once_across_a_paused_leader() {
    with_cluster(3, cluster_options(), |cluster| {
        let topic = "idempotent-pause";
        create_replicated_topic(cluster, topic, &[])?;
        // Pause a leader that is not the active controller, so that only the data plane fails
        // over.
        let controller = cluster.active_controller()? as i32;
        let leaders = cluster.leaders_of(topic)?;
        let (&partition, &old) = leaders
            .iter()
            .find(|(_, &l)| l != controller)
            .or_else(|| leaders.iter().next())
            .context("no partition")?;
        let streamer = Streamer::start(
            &cluster.bootstrap(),
            topic,
            STREAM_PARTITIONS,
            STREAM_RATE,
            &IDEMPOTENT_STREAM,
        )?;
        streamer.wait_acks(1_000, CLIENT_TIMEOUT)?;

        cluster.sigstop(old as u32)?;
        let stopped = Instant::now();
        let paused = (|| {
            let new = cluster.wait_new_leader(topic, partition, old, FAILOVER_TIMEOUT)?;
            // The requests in flight to the paused leader time out on the client, which sends
            // them again to the new leader: the retries the broker must deduplicate.
            let acked = wait_until(FAILOVER_TIMEOUT, "an ack from the new leader", || {
                Ok(streamer.ledger().first_ack_after(partition, stopped))
            })?;
            streamer.wait_acks(500, CLIENT_TIMEOUT)?;
            Ok::<_, anyhow::Error>((new, acked))
        })();
        let resumed = cluster.sigcont(old as u32);
        let (new, acked) =
            paused.with_context(|| format!("producer {}", streamer.ledger().summary()))?;
        resumed?;
        eprintln!(
            "leader {old} of {topic}-{partition} paused for {:?}: node {new} leads, first ack \
             after {:?}",
            stopped.elapsed(),
            acked.saturating_duration_since(stopped)
        );
        cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;
        streamer.wait_acks(500, CLIENT_TIMEOUT)?;
        let ledger = streamer.stop()?;
        check_stream(cluster, topic, &ledger, &[])
    });
}
