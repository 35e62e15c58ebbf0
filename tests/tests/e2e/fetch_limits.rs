//! Fetch limits (issue 11, "no request can take a node down"): the broker's `fetch.max.bytes`
//! and its bounds on fetched bytes in flight keep huge Fetch requests from growing the node's
//! memory; responses follow KIP-74 exactly; and a forged follower fetch cannot move the high
//! watermark.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use strom_tests::raw::{self, batch_layout, RawConnection};
use strom_tests::{
    kafka, with_cluster, with_node, ClusterOptions, NodeOptions, StromCluster, StromNode,
};

/// Kafka's default `fetch.max.bytes`, which strom uses too.
const FETCH_MAX_BYTES: usize = 57_671_680;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const UNKNOWN_LEADER_EPOCH: i16 = 75;

/// One partition's part of a Fetch request: (partition, fetch offset, partition_max_bytes).
type Want = (i32, i64, i32);

/// A Fetch (v12, topic names) of `wants` in one topic; `replica_id` -1 for a consumer.
fn fetch_request(
    topic: &str,
    wants: &[Want],
    max_bytes: i32,
    max_wait_ms: i32,
    replica_id: i32,
    leader_epoch: i32,
) -> FetchRequest {
    let partitions = wants
        .iter()
        .map(|&(partition, offset, partition_max)| {
            FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(leader_epoch)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(partition_max)
        })
        .collect();
    FetchRequest::default()
        .with_replica_id(BrokerId(replica_id))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(0)
        .with_max_bytes(max_bytes)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(partitions)])
}

fn fetch(connection: &mut RawConnection, request: &FetchRequest) -> anyhow::Result<FetchResponse> {
    let version = raw::FETCH_VERSION_MAX;
    let id = connection.send_request(ApiKey::Fetch as i16, version, request, version)?;
    let response: FetchResponse = connection.read_response(id, version)?;
    ensure!(response.error_code == 0, "Fetch top-level error {}", response.error_code);
    Ok(response)
}

/// (error code, high watermark, record bytes) by partition.
fn partitions_of(response: &FetchResponse) -> BTreeMap<i32, (i16, i64, Bytes)> {
    response
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| {
            let records = p.records.clone().unwrap_or_default();
            (p.partition_index, (p.error_code, p.high_watermark, records))
        })
        .collect()
}

/// The lengths of the whole v2 batches in `records`; fails on a partial batch.
fn batch_lengths(mut records: Bytes) -> anyhow::Result<Vec<usize>> {
    let mut lengths = Vec::new();
    while records.has_remaining() {
        ensure!(records.len() >= batch_layout::LOG_OVERHEAD, "a partial batch header");
        let at = batch_layout::BATCH_LENGTH_OFFSET;
        let batch_length = i32::from_be_bytes(records[at..at + 4].try_into()?);
        let total = batch_layout::LOG_OVERHEAD + usize::try_from(batch_length)?;
        ensure!(total <= records.len(), "a partial batch: {total} bytes, {} left", records.len());
        lengths.push(total);
        records.advance(total);
    }
    Ok(lengths)
}

/// One record batch of `records` values of `value_bytes` each.
fn batch(records: usize, value_bytes: usize) -> anyhow::Result<Bytes> {
    let value = vec![b's'; value_bytes];
    let values: Vec<&[u8]> = (0..records).map(|_| value.as_slice()).collect();
    raw::record_batch(&values, 1_700_000_000_000)
}

/// Produces `batches` (concatenated, one request) to `topic`/`partition` and checks the answer.
fn produce(
    connection: &mut RawConnection,
    topic: &str,
    partition: i32,
    batches: &[Bytes],
) -> anyhow::Result<()> {
    let joined: Vec<u8> = batches.iter().flat_map(|b| b.iter().copied()).collect();
    let code = connection.produce(topic, partition, Bytes::from(joined))?;
    ensure!(code == 0, "produce to {topic}-{partition}: error {code}");
    Ok(())
}

/// The node's resident memory in bytes (VmRSS).
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib: u64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kib * 1024)
}

/// Log bytes the memory test writes. The figure is 600 MB; a debug build produces it
/// in well under a minute here, so the test uses it as it is.
const BIG_LOG_BYTES: usize = 600 * 1_000_000;
/// Raw Fetch requests asking for 2 GiB each, on connections of their own, all at once.
const GREEDY_FETCHERS: usize = 8;
/// Requests each greedy connection sends, one after the other, at different offsets.
const GREEDY_ROUNDS: usize = 3;
/// How much the node's resident memory may rise while they are served.
const RSS_RISE_MAX: u64 = 256 * 1024 * 1024;

#[test]
fn eight_two_gib_fetches_hold_bounded_memory_while_a_consumer_keeps_reading() {
    // Acknowledge on write: the test is about reads, and 600 MB of fsyncs would only slow it.
    let options = NodeOptions {
        config_toml: Some("[log]\nflush_interval_messages = 1000000000\n".to_owned()),
        ..NodeOptions::default()
    };
    with_node(options, |node| {
        let topic = "big";
        kafka::create_topic(&node.bootstrap(), topic, 1, &[])?;
        // ~960 KiB batches, eight to a request (under max.message.bytes and the frame bound).
        let one = batch(15, 64 * 1024)?;
        let request: Vec<Bytes> = (0..8).map(|_| one.clone()).collect();
        let mut producer = RawConnection::connect(node.kafka_addr())?;
        let mut written = 0usize;
        let mut records = 0i64;
        while written < BIG_LOG_BYTES {
            produce(&mut producer, topic, 0, &request)?;
            written += 8 * one.len();
            records += 8 * 15;
        }
        let end = records;
        storm(node, topic, end)
    });
}

fn storm(node: &StromNode, topic: &str, end: i64) -> anyhow::Result<()> {
    let pid = node.pid().context("node pid")?;
    let before = rss_bytes(pid)?;
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(rss) = rss_bytes(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // A normal consumer reads the same partition from the start throughout.
    let consumed = Arc::new(AtomicU64::new(0));
    let reader = {
        let (done, consumed) = (done.clone(), consumed.clone());
        let consumer: BaseConsumer = kafka::consumer(&node.bootstrap(), &[])?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        std::thread::spawn(move || -> anyhow::Result<()> {
            while !done.load(Ordering::Relaxed) {
                if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                    let message = message.context("consumer poll")?;
                    ensure!(message.payload().is_some(), "a record without a value");
                    consumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
    };
    let started = Instant::now();
    let greedy: Vec<_> = (0..GREEDY_FETCHERS)
        .map(|i| {
            let addr = node.kafka_addr();
            let topic = topic.to_owned();
            std::thread::spawn(move || -> anyhow::Result<Vec<usize>> {
                let mut connection = RawConnection::connect(addr)?;
                let mut sizes = Vec::new();
                for round in 0..GREEDY_ROUNDS {
                    let offset = end * (i * GREEDY_ROUNDS + round) as i64
                        / (GREEDY_FETCHERS * GREEDY_ROUNDS) as i64;
                    // Long enough a wait that a request queued behind the memory bound is
                    // served, not answered empty.
                    let request =
                        fetch_request(&topic, &[(0, offset, i32::MAX)], i32::MAX, 20_000, -1, -1);
                    let response = fetch(&mut connection, &request)?;
                    let (code, _, records) =
                        partitions_of(&response).remove(&0).context("no partition 0")?;
                    ensure!(code == 0, "greedy fetch at {offset}: error {code}");
                    batch_lengths(records.clone())?;
                    sizes.push(records.len());
                }
                Ok(sizes)
            })
        })
        .collect();
    let mut sizes = Vec::new();
    for handle in greedy {
        match handle.join() {
            Ok(result) => sizes.extend(result?),
            Err(_) => anyhow::bail!("a greedy fetcher panicked"),
        }
    }
    let served_in = started.elapsed();
    let consumed_during = consumed.load(Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    match reader.join() {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("the consumer thread panicked"),
    }
    let rise = peak.load(Ordering::Relaxed).saturating_sub(before);
    eprintln!(
        "fetch storm: RSS {} MiB before, +{} MiB at peak; {} responses of {:?} MiB in {served_in:?}; \
         consumer read {consumed_during} records meanwhile",
        before >> 20,
        rise >> 20,
        sizes.len(),
        sizes.iter().map(|s| s >> 20).collect::<Vec<_>>(),
    );
    ensure!(
        rise < RSS_RISE_MAX,
        "RSS rose by {} MiB (limit {} MiB)",
        rise >> 20,
        RSS_RISE_MAX >> 20
    );
    ensure!(
        sizes.iter().all(|s| *s <= FETCH_MAX_BYTES),
        "a response exceeded fetch.max.bytes: {sizes:?}"
    );
    ensure!(sizes.iter().any(|s| *s > 0), "no greedy fetch was served at all: {sizes:?}");
    ensure!(consumed_during > 0, "the consumer read nothing while the greedy fetches were served");
    Ok(())
}

#[test]
fn fetch_responses_follow_kip_74_exactly() {
    with_node(NodeOptions::default(), |node| {
        let topic = "kip74";
        kafka::create_topic(&node.bootstrap(), topic, 3, &[])?;
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        // Batches of uneven sizes (13 to 250 KB), so no limit falls on a batch boundary by luck;
        // partition 2 starts with one 700 KB batch.
        let mut stored: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for partition in 0..3 {
            let mut batches = Vec::new();
            if partition == 2 {
                batches.push(batch(7, 100_000)?);
            }
            for i in 0..12 {
                batches.push(batch(1 + (i * 7 + partition as usize * 3) % 10, 25_000)?);
            }
            produce(&mut connection, topic, partition, &batches)?;
            stored.insert(partition, batches.iter().map(Bytes::len).collect());
        }
        // What KIP-74 gives: partitions in order, each up to its own limit and what is left of
        // max_bytes, whole batches, only the first batch of the first partition with data over.
        let expect = |max_bytes: usize, order: &[(i32, usize)]| -> Vec<usize> {
            let mut left = max_bytes;
            let mut first = true;
            order
                .iter()
                .map(|&(partition, partition_max)| {
                    let limit = partition_max.min(left);
                    let mut taken = 0;
                    for (i, len) in stored[&partition].iter().enumerate() {
                        let allowance = first && i == 0;
                        if taken + len > limit && !allowance {
                            break;
                        }
                        taken += len;
                    }
                    if taken > 0 {
                        first = false;
                    }
                    left = left.saturating_sub(taken);
                    taken
                })
                .collect()
        };
        let cases: [(usize, Vec<(i32, usize)>); 4] = [
            // librdkafka's 0082-fetch_max_bytes: a 1 MB response limit over partitions with
            // more than that each.
            (1_000_000, vec![(0, 1 << 20), (1, 1 << 20), (2, 1 << 20)]),
            (1_000_000, vec![(1, 300_000), (0, 1 << 20), (2, 1 << 20)]),
            // The first partition's first batch alone exceeds both limits: it is served, the
            // others get nothing.
            (100_000, vec![(2, 50_000), (0, 1 << 20), (1, 1 << 20)]),
            // An oversize first batch after a partition with data is not served.
            (1_000_000, vec![(0, 100_000), (2, 1 << 20), (1, 1 << 20)]),
        ];
        for (max_bytes, order) in cases {
            let wants: Vec<Want> = order.iter().map(|&(p, m)| (p, 0, m as i32)).collect();
            let request = fetch_request(topic, &wants, max_bytes as i32, 0, -1, -1);
            let got = partitions_of(&fetch(&mut connection, &request)?);
            let mut sizes = Vec::new();
            for &(partition, _) in &order {
                let (code, _, records) = got.get(&partition).context("partition missing")?.clone();
                ensure!(code == 0, "partition {partition}: error {code}");
                let lengths = batch_lengths(records.clone())?;
                let n = lengths.len();
                ensure!(
                    lengths == stored[&partition][..n],
                    "partition {partition}: batches {lengths:?} are not the first stored ones"
                );
                sizes.push(records.len());
            }
            let wanted = expect(max_bytes, &order);
            ensure!(
                sizes == wanted,
                "max_bytes {max_bytes}, {order:?}: got {sizes:?}, KIP-74 says {wanted:?}"
            );
            let total: usize = sizes.iter().sum();
            let first_over = sizes.iter().find(|s| **s > 0).copied().unwrap_or(0);
            ensure!(
                total <= max_bytes || total == first_over,
                "max_bytes {max_bytes}: {total} bytes beyond the one-batch allowance"
            );
        }
        Ok(())
    });
}

/// Follower fetch validation on a 3-node cluster: with one follower stopped (still in the ISR),
/// a fetch forged in its name with an offset beyond the log end is refused with
/// OFFSET_OUT_OF_RANGE and leaves the high watermark where the stopped follower holds it;
/// fetches forged for nodes that are not followers are refused too.
#[test]
fn a_forged_follower_fetch_beyond_the_log_end_moves_no_high_watermark() {
    // The stopped follower must stay registered and in the ISR for the test's length.
    let options = ClusterOptions {
        extra_toml: "replica_lag_time_max_ms = 120000\n\
                     broker.session_timeout_ms = 120000\n"
            .to_owned(),
        ..ClusterOptions::default()
    };
    with_cluster(3, options, forged_follower_fetch);
}

/// A forged fetch in the name of `replica` at `offset`; returns the partition's error code.
fn forged_fetch(
    connection: &mut RawConnection,
    topic: &str,
    replica: i32,
    offset: i64,
    leader_epoch: i32,
) -> anyhow::Result<i16> {
    let request = fetch_request(topic, &[(0, offset, 1 << 20)], 1 << 20, 0, replica, leader_epoch);
    let response = fetch(connection, &request)?;
    let (code, ..) = partitions_of(&response).remove(&0).context("partition 0")?;
    Ok(code)
}

fn forged_follower_fetch(cluster: &mut StromCluster) -> anyhow::Result<()> {
    let topic = "forged";
    kafka::create_topic_replicated(&cluster.bootstrap(), topic, 1, 3)?;
    cluster.wait_topic_everywhere(topic, 1)?;
    let info = cluster.metadata(cluster.ids()[0])?;
    let partition = info.topic(topic).context("topic in metadata")?.partitions[&0].clone();
    ensure!(partition.isr.len() == 3, "ISR not complete: {partition:?}");
    let leader = u32::try_from(partition.leader)?;
    let stopped =
        *partition.replicas.iter().find(|r| **r != partition.leader).context("follower")?;
    let stranger = 7;

    // Ten records that all three replicas have (acks=all), then thirty the stopped follower
    // never gets (acks=1): the log end moves, the high watermark cannot.
    let ten = batch(10, 100)?;
    let mut connection = RawConnection::connect(cluster.kafka_addr(leader))?;
    produce(&mut connection, topic, 0, std::slice::from_ref(&ten))?;
    let committed = 10i64;
    cluster.sigstop(u32::try_from(stopped)?)?;
    let acks_one =
        ProduceRequest::default().with_acks(1).with_timeout_ms(30_000).with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from([ten.clone(), ten.clone(), ten].concat())))]),
        ]);
    let version = connection.max_version(ApiKey::Produce)?.min(raw::PRODUCE_VERSION_MAX);
    let id = connection.send_request(ApiKey::Produce as i16, version, &acks_one, version)?;
    let produced = connection.read_response(id, version)?;
    ensure!(raw::produce_error_code(&produced, 0)? == 0, "acks=1 produce failed");
    let end = committed + 30;
    let (code, hw) = connection.fetch(topic, 0, 0)?;
    ensure!(code == 0 && hw == committed, "before: error {code}, HW {hw} (expected {committed})");

    let code = forged_fetch(&mut connection, topic, stopped, end + 1000, -1)?;
    ensure!(code == OFFSET_OUT_OF_RANGE, "forged fetch past the end: error {code}");
    let code = forged_fetch(&mut connection, topic, stranger, end, -1)?;
    ensure!(code == NOT_LEADER_OR_FOLLOWER, "a stranger's fetch: error {code}");
    let code = forged_fetch(&mut connection, topic, partition.leader, end, -1)?;
    ensure!(code == NOT_LEADER_OR_FOLLOWER, "the leader's own id: error {code}");
    if partition.leader_epoch >= 0 {
        let code = forged_fetch(&mut connection, topic, stranger, end, partition.leader_epoch)?;
        ensure!(code == UNKNOWN_LEADER_EPOCH, "a stranger naming the epoch: error {code}");
    }
    let (code, hw) = connection.fetch(topic, 0, 0)?;
    ensure!(
        code == 0 && hw == committed,
        "after the forged fetches: HW {hw}, expected {committed}"
    );

    // The real follower, resumed, still moves it: the partition was not wedged.
    cluster.sigcont(u32::try_from(stopped)?)?;
    strom_tests::wait_until(Duration::from_secs(30), "the HW reaches the log end", || {
        let (_, hw) = connection.fetch(topic, 0, 0)?;
        Ok((hw == end).then_some(()))
    })?;
    Ok(())
}
