//! Partition replication (issue 5) on three real nodes driven by librdkafka: 200,000 `acks=all`
//! records read back from every leader with byte-identical replicas; kill -9 of leaders,
//! followers and the active controller while a producer streams; a SIGSTOPped leader that
//! comes back as a zombie; a node cut off by a network partition (namespaces the test owns);
//! `min.insync.replicas` with two nodes down.
//!
//! The checks are the same everywhere: every acknowledged record is at its acknowledged offset,
//! offsets are contiguous, and once the cluster is quiet every replica holds exactly the bytes
//! `[0, HW)` of the leader (batch by batch, FNV-1a checksums printed). Timings (throughput,
//! unavailability windows, failover and catch-up times) are printed with `eprintln!`, never
//! asserted: run with `--no-capture` to see them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use strom_tests::cluster::StromCluster;
use strom_tests::kafka::{self, AckingProducer, Consumed, Outgoing};
use strom_tests::netns::{self, NetnsCluster};
use strom_tests::raw::{self, RawConnection};
use strom_tests::stream::{id_of, value_of, Streamer, VALUE_BYTES};
use strom_tests::{segment, wait_until, with_cluster, ClusterOptions, CLIENT_TIMEOUT};

/// Kafka error codes the tests expect from the broker.
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const REQUEST_TIMED_OUT: i16 = 7;
const NOT_ENOUGH_REPLICAS: i16 = 19;

/// Bound for a partition to get a new leader, or a write to be acknowledged again.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(45);
/// Bound for a restarted or healed replica to be back in every ISR with identical logs.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);
/// Values of the raw probes the tests write (not from the streaming producer).
const PROBE_PREFIX: &[u8] = b"probe-";

// ---------------------------------------------------------------------------------------------
// Checks.

/// Reads `partitions` back (through `bootstrap`, up to their high watermarks) and checks that
/// offsets are contiguous from 0, that every record is one the test wrote, and that every
/// acknowledged record is at its acknowledged offset. Returns what was read.
fn verify_acked(
    bootstrap: &str,
    topic: &str,
    partitions: &[i32],
    acked: &BTreeMap<usize, (i32, i64)>,
) -> anyhow::Result<Vec<Consumed>> {
    let started = Instant::now();
    let consumed = kafka::consume_all(bootstrap, topic, partitions, &[])?;
    let mut at: BTreeMap<(i32, i64), &Consumed> = BTreeMap::new();
    for record in &consumed {
        let value = record.value.as_deref().unwrap_or_default();
        ensure!(
            id_of(value).is_some() || value.starts_with(PROBE_PREFIX),
            "{topic}-{}@{} holds a record this test never wrote: {:?}",
            record.partition,
            record.offset,
            String::from_utf8_lossy(value)
        );
        ensure!(
            at.insert((record.partition, record.offset), record).is_none(),
            "{topic}-{}@{} served twice",
            record.partition,
            record.offset
        );
    }
    let mut ends = BTreeMap::new();
    for &partition in partitions {
        let offsets: Vec<i64> = at.keys().filter(|(p, _)| *p == partition).map(|k| k.1).collect();
        if let Some(gap) = offsets.iter().enumerate().find(|(i, &o)| *i as i64 != o) {
            bail!(
                "{topic}-{partition}: offsets are not contiguous from 0 (index {} is offset {})",
                gap.0,
                gap.1
            );
        }
        ends.insert(partition, offsets.len() as i64);
    }
    let mut lost = Vec::new();
    for (&id, &(partition, offset)) in acked {
        match at.get(&(partition, offset)) {
            Some(record) if record.value.as_deref() == Some(&value_of(id)[..]) => {}
            Some(record) => lost.push(format!(
                "record {id} acknowledged at {partition}@{offset} but that offset holds {:?}",
                record.value.as_deref().map(String::from_utf8_lossy)
            )),
            None => lost.push(format!(
                "record {id} acknowledged at {partition}@{offset} is missing (partition end {:?})",
                ends.get(&partition)
            )),
        }
    }
    if !lost.is_empty() {
        bail!(
            "{} of {} acknowledged records are not at their acknowledged offset; first: {:#?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(10)]
        );
    }
    eprintln!(
        "read back {} records of {topic} (ends {ends:?}) in {:?}: all {} acknowledged records at \
         their offsets",
        consumed.len(),
        started.elapsed(),
        acked.len()
    );
    Ok(consumed)
}

/// One complete batch of a replica's log: base offset, next offset, bytes.
type Batch = (i64, i64, Vec<u8>);

/// Every complete batch of a partition directory's segments, in offset order.
fn replica_batches(dir: &Path) -> anyhow::Result<Vec<Batch>> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let mut out = Vec::new();
    for path in segments {
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        for b in segment::batches(&bytes) {
            out.push((b.base_offset, b.next_offset(), bytes[b.position..b.end()].to_vec()));
        }
    }
    Ok(out)
}

fn fnv1a(batches: &[Batch]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (_, _, bytes) in batches {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Checks that every replica directory holds exactly the batches `[0, hw)` and nothing after,
/// byte for byte the same; returns a one-line summary with the checksum.
fn compare_replicas(dirs: &BTreeMap<u32, PathBuf>, hw: i64) -> anyhow::Result<String> {
    let mut logs: BTreeMap<u32, Vec<Batch>> = BTreeMap::new();
    for (&node, dir) in dirs {
        let batches = replica_batches(dir)?;
        let mut next = 0i64;
        for (base, end, _) in &batches {
            ensure!(*base == next, "node {node}: batch at {base} follows offset {next}");
            next = *end;
        }
        ensure!(next == hw, "node {node}: log ends at {next}, high watermark is {hw}");
        logs.insert(node, batches);
    }
    let (&first, reference) = logs.iter().next().context("no replica")?;
    for (&node, batches) in &logs {
        if let Some(i) = (0..batches.len().max(reference.len()))
            .find(|&i| batches.get(i).map(|b| &b.2) != reference.get(i).map(|b| &b.2))
        {
            let describe = |b: Option<&Batch>| b.map(|(s, e, bytes)| (*s, *e, bytes.len()));
            bail!(
                "replicas diverge below the high watermark {hw}: batch #{i} is {:?} on node \
                 {first} and {:?} on node {node}",
                describe(reference.get(i)),
                describe(batches.get(i))
            );
        }
    }
    Ok(format!(
        "{} batches, fnv1a {:016x} on nodes {:?}",
        reference.len(),
        fnv1a(reference),
        logs.keys().collect::<Vec<_>>()
    ))
}

/// Waits until every partition of `topic` has the same bytes `[0, HW)` on each of its
/// replicas (and nothing after), HW as the leader reports it; prints the checksums.
fn wait_replicas_identical(
    bootstrap: &str,
    topic: &str,
    replicas: &BTreeMap<i32, BTreeMap<u32, PathBuf>>,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let started = Instant::now();
    let partitions: Vec<i32> = replicas.keys().copied().collect();
    let (hws, summaries) = wait_until(CATCH_UP_TIMEOUT, "replicas identical up to the HW", || {
        let marks = kafka::watermarks(bootstrap, topic, &partitions)?;
        let mut hws = BTreeMap::new();
        let mut summaries = Vec::new();
        for (&partition, dirs) in replicas {
            let hw = marks[&partition].1;
            let summary =
                compare_replicas(dirs, hw).with_context(|| format!("{topic}-{partition}"))?;
            summaries.push(format!("{topic}-{partition}: hw {hw}, {summary}"));
            hws.insert(partition, hw);
        }
        Ok(Some((hws, summaries)))
    })?;
    eprintln!("replicas identical after {:?}:\n  {}", started.elapsed(), summaries.join("\n  "));
    Ok(hws)
}

/// `replication-offset-checkpoint` of one node: (topic, partition) → high watermark.
fn checkpointed_hws(data_dir: &Path) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let path = data_dir.join("replication-offset-checkpoint");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut out = BTreeMap::new();
    for line in text.lines().skip(2) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        ensure!(fields.len() == 3, "{}: bad line {line:?}", path.display());
        out.insert((fields[0].to_owned(), fields[1].parse()?), fields[2].parse()?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Cluster helpers on top of the harness.

fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(3));
    for (key, value) in configs {
        new_topic = new_topic.set(key, value);
    }
    kafka::create_new_topic(bootstrap, &new_topic, &kafka::admin_options())
}

/// Partition → replicas (preference order) of `topic`, from a running node.
fn replicas_of(cluster: &StromCluster, topic: &str) -> anyhow::Result<BTreeMap<i32, Vec<i32>>> {
    let id = *cluster.running().first().context("no node running")?;
    let metadata = cluster.metadata(id)?;
    let t = metadata.topic(topic).with_context(|| format!("{topic} not listed"))?;
    Ok(t.partitions.iter().map(|(&p, info)| (p, info.replicas.clone())).collect())
}

/// Partition → replica node → partition directory.
fn replica_dirs(
    cluster: &StromCluster,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, BTreeMap<u32, PathBuf>>> {
    Ok(replicas_of(cluster, topic)?
        .into_iter()
        .map(|(p, replicas)| {
            let dirs = replicas
                .iter()
                .map(|&r| (r as u32, cluster.node(r as u32).partition_dir(topic, p)))
                .collect();
            (p, dirs)
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Raw Kafka requests for the zombie-leader probes.

/// Sends one Produce of `value` to `partition` without waiting; returns (correlation, version).
fn send_probe(
    conn: &mut RawConnection,
    topic: &str,
    partition: i32,
    value: &[u8],
    acks: i16,
    timeout_ms: i32,
) -> anyhow::Result<(i32, i16)> {
    let version = 8;
    let batch = raw::record_batch(&[value], kafka_now_ms())?;
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])]);
    Ok((conn.send_request(ApiKey::Produce as i16, version, &request, version)?, version))
}

/// Reads a Produce response: (error code, base offset) of the partition.
fn read_probe(
    conn: &mut RawConnection,
    sent: (i32, i16),
    partition: i32,
) -> anyhow::Result<(i16, i64)> {
    let response: ProduceResponse = conn.read_response(sent.0, sent.1)?;
    response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition)
        .map(|p| (p.error_code, p.base_offset))
        .context("Produce response without the partition")
}

fn kafka_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A record a node served: offset and value.
type Served = (i64, Vec<u8>);

/// A consumer's Fetch (no replica id) from `offset`: error code, high watermark and the
/// (offset, value) of every record in the complete batches returned.
fn raw_fetch(
    addr: SocketAddr,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<(i16, i64, Vec<Served>)> {
    let version = 11;
    let data = RawConnection::connect(addr)?.fetch_partition(version, topic, partition, offset)?;
    let bytes = data.records.unwrap_or_default();
    let mut records = Vec::new();
    for b in segment::batches(&bytes) {
        let mut slice = Bytes::copy_from_slice(&bytes[b.position..b.end()]);
        let set = RecordBatchDecoder::decode(&mut slice).context("decode a fetched batch")?;
        for r in set.records {
            records.push((r.offset, r.value.map(|v| v.to_vec()).unwrap_or_default()));
        }
    }
    Ok((data.error_code, data.high_watermark, records))
}

/// Checks records a node served (or a probe it acknowledged) against the final committed log.
fn check_against_log(
    what: &str,
    served: &[Served],
    log: &BTreeMap<i64, Vec<u8>>,
) -> anyhow::Result<()> {
    for (offset, value) in served {
        match log.get(offset) {
            Some(committed) if committed == value => {}
            other => bail!(
                "{what}: offset {offset} was {:?} there but the committed log holds {:?}",
                String::from_utf8_lossy(value),
                other.map(|v| String::from_utf8_lossy(v).into_owned())
            ),
        }
    }
    Ok(())
}

fn log_of(consumed: &[Consumed], partition: i32) -> BTreeMap<i64, Vec<u8>> {
    consumed
        .iter()
        .filter(|r| r.partition == partition)
        .map(|r| (r.offset, r.value.clone().unwrap_or_default()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. 200,000 acks=all records, every leader, identical replicas.

const BULK_RECORDS: usize = 200_000;
const BULK_PARTITIONS: i32 = 6;

/// Reads the bulk topic back and checks every partition holds its ids in send order.
fn verify_bulk(
    bootstrap: &str,
    topic: &str,
    acked: &BTreeMap<usize, (i32, i64)>,
) -> anyhow::Result<()> {
    let partitions: Vec<i32> = (0..BULK_PARTITIONS).collect();
    let consumed = verify_acked(bootstrap, topic, &partitions, acked)?;
    ensure!(
        consumed.len() == BULK_RECORDS,
        "read {} records, produced {BULK_RECORDS}",
        consumed.len()
    );
    for p in partitions {
        let ids: Vec<usize> = consumed
            .iter()
            .filter(|r| r.partition == p)
            .filter_map(|r| r.value.as_deref().and_then(id_of))
            .collect();
        let expected: Vec<usize> =
            (0..BULK_RECORDS).filter(|id| id % BULK_PARTITIONS as usize == p as usize).collect();
        ensure!(ids == expected, "{topic}-{p}: records are not the ids sent to it, in send order");
    }
    Ok(())
}

#[test]
fn rf3_acks_all_records_read_back_from_every_leader_with_identical_replicas() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let topic = "bulk";
        create_topic(&cluster.bootstrap(), topic, BULK_PARTITIONS, &[])?;
        cluster.wait_topic_everywhere(topic, BULK_PARTITIONS as usize)?;
        cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;

        let producer = AckingProducer::new(
            &cluster.bootstrap(),
            &[("queue.buffering.max.messages", "200000"), ("linger.ms", "10")],
        )?;
        let started = Instant::now();
        for id in 0..BULK_RECORDS {
            let (key, value) = (format!("k{id}"), value_of(id));
            let record = Outgoing {
                partition: Some((id % BULK_PARTITIONS as usize) as i32),
                key: Some(key.as_bytes()),
                value: Some(&value),
                ..Outgoing::default()
            };
            producer.send(topic, id, record)?;
            if id % 1000 == 0 {
                producer.poll(Duration::ZERO);
            }
        }
        producer.flush(Duration::from_secs(240))?;
        let elapsed = started.elapsed();
        let acked: BTreeMap<usize, (i32, i64)> = producer
            .acks_of(0..BULK_RECORDS)?
            .into_iter()
            .enumerate()
            .map(|(id, ack)| (id, (ack.partition, ack.offset)))
            .collect();
        eprintln!(
            "RF=3 acks=all: {BULK_RECORDS} records of {VALUE_BYTES} B in {elapsed:?} = {:.0} \
             records/s ({:.2} MB/s of values)",
            BULK_RECORDS as f64 / elapsed.as_secs_f64(),
            (BULK_RECORDS * VALUE_BYTES) as f64 / elapsed.as_secs_f64() / 1e6
        );
        drop(producer);

        let replicas = replicas_of(cluster, topic)?;
        let mut read_from: BTreeMap<i32, BTreeSet<i32>> = BTreeMap::new();
        let note_leaders =
            |leaders: &BTreeMap<i32, i32>, read_from: &mut BTreeMap<i32, BTreeSet<i32>>| {
                for (&p, &l) in leaders {
                    read_from.entry(p).or_default().insert(l);
                }
            };
        let leaders = cluster.leaders_of(topic)?;
        note_leaders(&leaders, &mut read_from);
        eprintln!("reading from leaders {leaders:?} (replicas {replicas:?})");
        verify_bulk(&cluster.bootstrap(), topic, &acked)?;
        let dirs = replica_dirs(cluster, topic)?;
        let hws = wait_replicas_identical(&cluster.bootstrap(), topic, &dirs)?;

        // Move leadership so that every replica of every partition leads once: a controlled
        // shutdown of two nodes hands every partition to the third (the second shutdown still
        // has a controller quorum while it runs); read everything from that node alone; then
        // both return, catch up, and a preferred election gives leadership back.
        for keeper in cluster.ids() {
            let stopped: Vec<u32> = cluster.ids().into_iter().filter(|&id| id != keeper).collect();
            let moving = Instant::now();
            for &id in &stopped {
                let status = cluster.sigterm(id)?;
                ensure!(status.success(), "node {id} exited with {status} on SIGTERM");
            }
            let leaders =
                wait_until(FAILOVER_TIMEOUT, "the remaining node leads everything", || {
                    let leaders = cluster.metadata(keeper)?.leaders_of(topic);
                    Ok(leaders.values().all(|&l| l == keeper as i32).then_some(leaders))
                })?;
            note_leaders(&leaders, &mut read_from);
            eprintln!(
                "nodes {stopped:?} stopped: node {keeper} leads every partition after {:?}",
                moving.elapsed()
            );
            verify_bulk(&cluster.bootstrap_of(&[keeper]), topic, &acked)?;
            // A stopped node checkpointed the high watermarks it may serve: never beyond the
            // committed ones.
            for &id in &stopped {
                for ((t, p), hw) in checkpointed_hws(cluster.node(id).data_dir())? {
                    ensure!(
                        t != topic || hw <= hws[&p],
                        "node {id} checkpointed HW {hw} for {t}-{p}, committed HW is {}",
                        hws[&p]
                    );
                }
            }
            let back = Instant::now();
            for &id in &stopped {
                cluster.restart(id)?;
            }
            let isr = cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;
            let election = cluster.cli(keeper, &["cluster", "elect-leaders", "--topic", topic])?;
            eprintln!(
                "nodes {stopped:?} back in every ISR {:?} after their restart ({isr:?} waiting); \
                 elect-leaders exit {}: {:?}",
                back.elapsed(),
                election.status,
                election.stdout.lines().collect::<Vec<_>>()
            );
            // The election moves nothing to a preferred replica that is (still, or again)
            // fenced, e.g. when a loaded machine delays a restarted node's heartbeats past its
            // session: ask again until the leaders are back.
            let mut asked = Instant::now();
            wait_until(FAILOVER_TIMEOUT, "preferred leaders back", || {
                let leaders = cluster.leaders_of(topic)?;
                let preferred = leaders.iter().all(|(p, &l)| replicas[p].first() == Some(&l));
                if !preferred && asked.elapsed() >= Duration::from_secs(1) {
                    cluster.cli(keeper, &["cluster", "elect-leaders", "--topic", topic])?;
                    asked = Instant::now();
                }
                Ok(preferred.then_some(()))
            })?;
        }
        let leaders = cluster.leaders_of(topic)?;
        verify_bulk(&cluster.bootstrap(), topic, &acked)?;
        eprintln!("partition → leaders it was read from: {read_from:?} (now {leaders:?})");
        for (p, nodes) in &read_from {
            let expected: BTreeSet<i32> = replicas[p].iter().copied().collect();
            ensure!(nodes == &expected, "{topic}-{p} was read from leaders {nodes:?} only");
        }
        let final_hws = wait_replicas_identical(&cluster.bootstrap(), topic, &dirs)?;
        ensure!(final_hws == hws, "high watermarks moved without writes: {hws:?} → {final_hws:?}");

        // A clean stop of every node leaves each HW checkpointed at the committed value.
        for id in cluster.ids() {
            cluster.sigterm(id)?;
            let checkpointed = checkpointed_hws(cluster.node(id).data_dir())?;
            for (&p, &hw) in &hws {
                let saved = checkpointed.get(&(topic.to_owned(), p)).copied();
                ensure!(
                    saved == Some(hw),
                    "node {id}: {topic}-{p} checkpointed HW {saved:?}, committed {hw}"
                );
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 of leader, follower and active controller while a producer streams.

/// Rounds of the kill test. `make test` runs the default; `make soak` runs the 10:
/// `STROM_KILL_ROUNDS=10 cargo nextest run -p strom-tests replication::acks_all_survives`.
const KILL_ROUNDS_ENV: &str = "STROM_KILL_ROUNDS";
const KILL_ROUNDS_DEFAULT: usize = 4;
const STREAM_PARTITIONS: i32 = 3;
const STREAM_RATE: u64 = 1_500;
/// How long a killed node stays down: past the broker session timeout (1.5 s).
const DOWN_FOR: Duration = Duration::from_secs(3);

#[test]
fn acks_all_survives_kill9_of_leader_follower_and_controller() {
    let rounds = std::env::var(KILL_ROUNDS_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(KILL_ROUNDS_DEFAULT);
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let topic = "stream";
        let partitions: Vec<i32> = (0..STREAM_PARTITIONS).collect();
        create_topic(&cluster.bootstrap(), topic, STREAM_PARTITIONS, &[])?;
        cluster.wait_topic_everywhere(topic, partitions.len())?;
        cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;
        let replicas = replicas_of(cluster, topic)?;
        let streamer =
            Streamer::start(&cluster.bootstrap(), topic, STREAM_PARTITIONS, STREAM_RATE, &[])?;
        streamer.wait_acks(1_000, CLIENT_TIMEOUT)?;

        let mut report = Vec::new();
        for round in 0..rounds {
            let partition = (round % partitions.len()) as i32;
            let leader = cluster.leaders_of(topic)?[&partition];
            let (kind, victim) = match round % 3 {
                0 => ("leader", leader as u32),
                1 => {
                    let followers: Vec<i32> =
                        replicas[&partition].iter().copied().filter(|&r| r != leader).collect();
                    ("follower", followers[round / 3 % followers.len()] as u32)
                }
                _ => ("controller", cluster.active_controller()?),
            };
            let controller = cluster.active_controller()?;
            let killed = Instant::now();
            cluster.kill9(victim)?;
            let acked = wait_until(
                FAILOVER_TIMEOUT,
                &format!("an ack on {topic}-{partition} after the kill"),
                || Ok(streamer.ledger().first_ack_after(partition, killed)),
            )
            .with_context(|| {
                format!(
                    "round {round}: killed {kind} node {victim}; {}",
                    streamer.ledger().summary()
                )
            })?;
            let window = acked.saturating_duration_since(killed);
            let down = killed.elapsed();
            if down < DOWN_FOR {
                std::thread::sleep(DOWN_FOR - down);
            }
            cluster.restart(victim)?;
            let caught_up = cluster
                .wait_isr_full(topic, CATCH_UP_TIMEOUT)
                .with_context(|| format!("round {round}: node {victim} back in the ISRs"))?;
            let line = format!(
                "round {round}: kill -9 {kind} node {victim} (partition {partition} leader {leader}, \
                 controller {controller}): unavailable {window:?}; ISRs full {caught_up:?} after restart"
            );
            eprintln!("{line}");
            report.push(line);
        }
        let ledger = streamer.stop()?;
        eprintln!("kill test: {rounds} rounds; producer {}", ledger.summary());
        let acked = ledger.acks();
        verify_acked(&cluster.bootstrap(), topic, &partitions, &acked)?;
        cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;
        wait_replicas_identical(&cluster.bootstrap(), topic, &replica_dirs(cluster, topic)?)?;
        eprintln!("unavailability per round:\n  {}", report.join("\n  "));
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// 3. A SIGSTOPped leader comes back as a zombie.

#[test]
fn paused_leader_is_fenced_truncates_and_loses_no_acked_record() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let topic = "pause";
        let partitions: Vec<i32> = (0..STREAM_PARTITIONS).collect();
        create_topic(&cluster.bootstrap(), topic, STREAM_PARTITIONS, &[])?;
        cluster.wait_topic_everywhere(topic, partitions.len())?;
        cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;
        // Pause a leader that is not the active controller, so that only the data plane fails
        // over (the controller keeps its term).
        let controller = cluster.active_controller()?;
        let leaders = cluster.leaders_of(topic)?;
        let (&partition, &old) = leaders
            .iter()
            .find(|(_, &l)| l != controller as i32)
            .or_else(|| leaders.iter().next())
            .context("no partition")?;
        let old_node = old as u32;
        let streamer =
            Streamer::start(&cluster.bootstrap(), topic, STREAM_PARTITIONS, STREAM_RATE, &[])?;
        streamer.wait_acks(1_000, CLIENT_TIMEOUT)?;

        // A probe in flight as the leader stops: appended (or not) just before the pause, its
        // answer comes after SIGCONT and must be true.
        let mut in_flight = RawConnection::connect(cluster.kafka_addr(old_node))?;
        let before =
            send_probe(&mut in_flight, topic, partition, b"probe-before-stop", -1, 25_000)?;
        cluster.sigstop(old_node)?;
        let stopped = Instant::now();
        let new = cluster.wait_new_leader(topic, partition, old, FAILOVER_TIMEOUT)?;
        let failover = stopped.elapsed();
        let acked = wait_until(FAILOVER_TIMEOUT, "an ack from the new leader", || {
            Ok(streamer.ledger().first_ack_after(partition, stopped))
        })?;
        streamer.wait_acks(1_000, CLIENT_TIMEOUT)?;
        let new_hw = kafka::watermarks(&cluster.bootstrap_of(&[new as u32]), topic, &[partition])?
            [&partition]
            .1;
        eprintln!(
            "leader {old} of {topic}-{partition} stopped: node {new} leads after {failover:?}, \
             first ack after {:?}; new leader's HW {new_hw}",
            acked.saturating_duration_since(stopped)
        );

        cluster.sigcont(old_node)?;
        let resumed = Instant::now();
        // Straight after SIGCONT the zombie may still believe it leads: whatever it serves to a
        // consumer and whatever it acknowledges with acks=all must be committed.
        let mut direct = RawConnection::connect(cluster.kafka_addr(old_node))?;
        let after = send_probe(&mut direct, topic, partition, b"probe-after-cont", -1, 5_000)?;
        // acks=1 promises nothing after a leader change; its answer is reported, not checked.
        let mut direct_1 = RawConnection::connect(cluster.kafka_addr(old_node))?;
        let after_1 = send_probe(&mut direct_1, topic, partition, b"probe-acks-1", 1, 5_000)?;
        let (fetch_error, zombie_hw, zombie_served) =
            raw_fetch(cluster.kafka_addr(old_node), topic, partition, 0)?;
        let before_answer = read_probe(&mut in_flight, before, partition)?;
        let after_answer = read_probe(&mut direct, after, partition)?;
        let acks_1_answer = read_probe(&mut direct_1, after_1, partition)?;
        eprintln!(
            "zombie right after SIGCONT: fetch error {fetch_error} HW {zombie_hw} ({} records \
             served); probe sent before the stop → {before_answer:?}; probe after SIGCONT → \
             {after_answer:?} (error, base offset)",
            zombie_served.len()
        );
        // The old leader learns the new epoch and refuses produce as a follower. Each probe
        // carries its own value; one it acknowledges with acks=all must be in the final log
        // at that offset (checked below, after the log is read). Connection errors are retried.
        let mut refused_probes: Vec<(Vec<u8>, (i16, i64))> = Vec::new();
        let learned = wait_until(FAILOVER_TIMEOUT, "the old leader refuses produce", || {
            let value = format!("probe-refused-{}", refused_probes.len()).into_bytes();
            let mut conn = RawConnection::connect(cluster.kafka_addr(old_node))?;
            let sent = send_probe(&mut conn, topic, partition, &value, -1, 2_000)?;
            let answer = read_probe(&mut conn, sent, partition)?;
            refused_probes.push((value, answer));
            Ok((answer.0 == NOT_LEADER_OR_FOLLOWER).then_some(answer))
        });
        let learned = learned.map(|_| resumed.elapsed());
        streamer.wait_acks(1_000, CLIENT_TIMEOUT)?;
        let ledger = streamer.stop()?;
        eprintln!("pause test: producer {}", ledger.summary());
        let learned = learned?;
        eprintln!("old leader answers NOT_LEADER_OR_FOLLOWER {learned:?} after SIGCONT");

        let consumed = verify_acked(&cluster.bootstrap(), topic, &partitions, &ledger.acks())?;
        let log = log_of(&consumed, partition);
        check_against_log("records the zombie served to a consumer", &zombie_served, &log)?;
        if let (0, offset) = acks_1_answer {
            eprintln!(
                "acks=1 probe to the zombie after SIGCONT acknowledged at {offset}; the log holds \
                 {:?} there",
                log.get(&offset).map(|v| String::from_utf8_lossy(v).into_owned())
            );
        } else {
            eprintln!("acks=1 probe to the zombie after SIGCONT: {acks_1_answer:?}");
        }
        let probes = [
            ("probe sent before SIGSTOP".to_owned(), b"probe-before-stop".to_vec(), before_answer),
            ("probe sent after SIGCONT".to_owned(), b"probe-after-cont".to_vec(), after_answer),
        ];
        let refused = refused_probes.into_iter().map(|(value, answer)| {
            (format!("probe {}", String::from_utf8_lossy(&value)), value, answer)
        });
        for (name, value, (error, offset)) in probes.into_iter().chain(refused) {
            if error == 0 {
                check_against_log(
                    &format!("the {name}, acknowledged by node {old}"),
                    &[(offset, value.clone())],
                    &log,
                )?;
            } else {
                ensure!(
                    [NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS]
                        .contains(&error),
                    "the {name} got error {error}"
                );
            }
        }
        cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;
        wait_replicas_identical(&cluster.bootstrap(), topic, &replica_dirs(cluster, topic)?)?;
        // The acks=1 probe was written to the zombie's log at `offset` (it said so). Where the
        // committed log holds something else there, the zombie's suffix diverged, and the
        // replicas are identical now only because the old leader cut it: it must say so.
        let truncated = cluster.node(old_node).stderr().contains("truncating divergent log suffix");
        let diverged = match acks_1_answer {
            (0, offset) => log.get(&offset).map(Vec::as_slice) != Some(&b"probe-acks-1"[..]),
            _ => false,
        };
        eprintln!("old leader's suffix diverged: {diverged}; it logged a truncation: {truncated}");
        ensure!(
            !diverged || truncated,
            "the old leader held a divergent suffix (acks=1 probe at {}) but never logged \
             truncating it",
            acks_1_answer.1
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// 4. A node cut off by a network partition.

#[test]
fn isolated_leader_is_replaced_and_no_acked_record_is_lost() {
    if let Some(reason) = netns::unavailable_reason() {
        // CI runs as root with iproute2 (scripts/install-test-deps.sh): there a missing
        // namespace is a broken machine, not a reason to pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "network namespaces are unavailable in CI: {reason}"
        );
        eprintln!(
            "SKIPPED isolated_leader_is_replaced_and_no_acked_record_is_lost: this machine does \
             not allow network namespaces ({reason}); run as root with iproute2"
        );
        return;
    }
    let cluster = match NetnsCluster::start(3, "", Duration::from_secs(60)) {
        Ok(cluster) => cluster,
        Err(error) => panic!("the namespaced cluster did not form: {error:#}"),
    };
    if let Err(error) = partition_test(&cluster) {
        panic!("{error:#}\n{}", cluster.log_tails(60));
    }
}

fn partition_test(cluster: &NetnsCluster) -> anyhow::Result<()> {
    let topic = "split";
    let partitions: Vec<i32> = (0..STREAM_PARTITIONS).collect();
    let everyone = cluster.bootstrap();
    create_topic(&everyone, topic, STREAM_PARTITIONS, &[])?;
    let full = |view: &netns::Leadership| view.values().all(|(l, isr)| *l > 0 && isr.len() == 3);
    wait_until(CATCH_UP_TIMEOUT, "every ISR full on every node", || {
        for id in cluster.ids() {
            let view = cluster.leadership_seen_by(id, topic)?;
            ensure!(view.len() == partitions.len() && full(&view), "node {id}: {view:?}");
        }
        Ok(Some(()))
    })?;
    let partition = 0;
    let isolated = cluster.leadership_seen_by(1, topic)?[&partition].0 as u32;
    let others: Vec<u32> = cluster.ids().into_iter().filter(|&id| id != isolated).collect();
    let streamer = Streamer::start(&everyone, topic, STREAM_PARTITIONS, STREAM_RATE, &[])?;
    streamer.wait_acks(1_000, CLIENT_TIMEOUT)?;

    cluster.lab.isolate(isolated)?;
    let cut = Instant::now();
    eprintln!("isolated node {isolated}, leader of {topic}-{partition}");
    let new = wait_until(FAILOVER_TIMEOUT, "the majority elects another leader", || {
        let view = cluster.leadership_seen_by(others[0], topic)?;
        let leader = view[&partition].0;
        Ok((leader > 0 && leader != isolated as i32).then_some(leader))
    })?;
    let failover = cut.elapsed();
    let acked = wait_until(FAILOVER_TIMEOUT, "an ack after the partition", || {
        Ok(streamer.ledger().first_ack_after(partition, cut))
    })?;
    eprintln!(
        "node {new} leads {topic}-{partition} {failover:?} after the cut; first ack after {:?}",
        acked.saturating_duration_since(cut)
    );
    // The test still reaches the isolated node: it must not acknowledge acks=all writes, and
    // what it serves consumers must be committed.
    let mut conn = RawConnection::connect(cluster.kafka_addr(isolated))?;
    let sent = send_probe(&mut conn, topic, partition, b"probe-isolated", -1, 3_000)?;
    let isolated_answer = read_probe(&mut conn, sent, partition)?;
    let (fetch_error, isolated_hw, isolated_served) =
        raw_fetch(cluster.kafka_addr(isolated), topic, partition, 0)?;
    let view = cluster.leadership_seen_by(isolated, topic)?;
    eprintln!(
        "isolated node: acks=all probe → {isolated_answer:?}; fetch error {fetch_error} HW \
         {isolated_hw} ({} records); it sees {topic} as {view:?}",
        isolated_served.len()
    );
    streamer.wait_acks(2_000, CLIENT_TIMEOUT)?;

    cluster.lab.heal(isolated)?;
    let healed = Instant::now();
    eprintln!("healed after {:?} apart", cut.elapsed());
    wait_until(CATCH_UP_TIMEOUT, "every ISR full again on every node", || {
        for id in cluster.ids() {
            let view = cluster.leadership_seen_by(id, topic)?;
            ensure!(full(&view), "node {id}: {view:?}");
        }
        Ok(Some(()))
    })?;
    eprintln!("isolated node back in every ISR {:?} after healing", healed.elapsed());
    streamer.wait_acks(1_000, CLIENT_TIMEOUT)?;
    let ledger = streamer.stop()?;
    eprintln!("partition test: producer {}", ledger.summary());

    let consumed = verify_acked(&everyone, topic, &partitions, &ledger.acks())?;
    let log = log_of(&consumed, partition);
    check_against_log("records the isolated node served", &isolated_served, &log)?;
    match isolated_answer {
        (0, offset) => check_against_log(
            "the acks=all probe the isolated node acknowledged",
            &[(offset, b"probe-isolated".to_vec())],
            &log,
        )?,
        (error, _) => ensure!(
            [NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS].contains(&error),
            "the isolated node answered the acks=all probe with error {error}"
        ),
    }
    let dirs: BTreeMap<i32, BTreeMap<u32, PathBuf>> = partitions
        .iter()
        .map(|&p| {
            (
                p,
                cluster
                    .ids()
                    .into_iter()
                    .map(|id| (id, cluster.node(id).partition_dir(topic, p)))
                    .collect(),
            )
        })
        .collect();
    wait_replicas_identical(&everyone, topic, &dirs)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. min.insync.replicas = 2 with two replicas down.

/// One record with the given `acks` through a fresh producer bootstrapped at `bootstrap`; the
/// delivery result (offset, or the librdkafka error code).
fn produce_one(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    acks: &str,
    value: &[u8],
) -> anyhow::Result<Result<i64, RDKafkaErrorCode>> {
    let producer = AckingProducer::new(
        bootstrap,
        &[("acks", acks), ("message.timeout.ms", "10000"), ("retries", "0")],
    )?;
    producer.send(
        topic,
        0,
        Outgoing { partition: Some(partition), value: Some(value), ..Outgoing::default() },
    )?;
    producer.flush(Duration::from_secs(20))?;
    match producer.reports().remove(&0).context("no delivery report")? {
        Ok(ack) => Ok(Ok(ack.offset)),
        Err(error) => {
            let code = [
                RDKafkaErrorCode::NotEnoughReplicas,
                RDKafkaErrorCode::NotEnoughReplicasAfterAppend,
                RDKafkaErrorCode::RequestTimedOut,
                RDKafkaErrorCode::MessageTimedOut,
                RDKafkaErrorCode::NotLeaderForPartition,
            ]
            .into_iter()
            .find(|c| error.contains(&format!("{c:?} (")));
            code.map(Err).with_context(|| format!("unexpected delivery error {error}"))
        }
    }
}

#[test]
fn min_insync_two_refuses_acks_all_with_two_replicas_down_but_takes_acks_1() {
    // Two of three nodes down would leave no controller quorum, so no ISR could shrink (acks=all
    // would time out, as in Kafka): five nodes keep a quorum while two replicas are down.
    let options = ClusterOptions { min_insync_replicas: Some(2), ..ClusterOptions::default() };
    with_cluster(5, options, |cluster| {
        let topic = "minisr";
        create_topic(&cluster.bootstrap(), topic, 1, &[])?;
        cluster.wait_topic_everywhere(topic, 1)?;
        cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;
        let replicas = replicas_of(cluster, topic)?[&0].clone();
        let leader = cluster.leaders_of(topic)?[&0];
        let followers: Vec<u32> =
            replicas.iter().filter(|&&r| r != leader).map(|&r| r as u32).collect();
        let bootstrap = cluster.bootstrap();
        let first = produce_one(&bootstrap, topic, 0, "all", b"probe-all-isr")?;
        ensure!(first.is_ok(), "acks=all with a full ISR: {first:?}");

        for &f in &followers {
            cluster.kill9(f)?;
        }
        let killed = Instant::now();
        // acks=1 is answered after the leader's own write, whatever the followers do: a raw
        // acks=1 Produce with a 300 ms timeout, sent before the dead followers are fenced
        // (1.5 s), must not time out waiting for them.
        let mut conn = RawConnection::connect(cluster.kafka_addr(leader as u32))?;
        let sent = send_probe(&mut conn, topic, 0, b"probe-acks-1-early", 1, 300)?;
        let early = read_probe(&mut conn, sent, 0)?;
        eprintln!(
            "acks=1 {:?} after killing the followers: {early:?} (error, base offset)",
            killed.elapsed()
        );
        // Checked at the end, so that the min.insync.replicas checks run either way.
        let early_finding = (early.0 != 0).then(|| {
            format!(
                "acks=1 while dead followers were still in the ISR got error {} (7 = \
                 REQUEST_TIMED_OUT: acks=1 waited for the high watermark)",
                early.0
            )
        });
        let shrunk = wait_until(FAILOVER_TIMEOUT, "the ISR shrinks to the leader", || {
            let id = cluster.running()[0];
            let m = cluster.metadata(id)?;
            let p = &m.topic(topic).context("listed")?.partitions[&0];
            Ok((p.isr == vec![leader]).then_some(()))
        });
        shrunk.with_context(|| format!("followers {followers:?} of leader {leader} killed"))?;
        eprintln!("followers {followers:?} killed: ISR [{leader}] after {:?}", killed.elapsed());
        let live = cluster.bootstrap_of(&cluster.running());
        let all = produce_one(&live, topic, 0, "all", b"probe-all-refused")?;
        ensure!(
            all == Err(RDKafkaErrorCode::NotEnoughReplicas),
            "acks=all with ISR [{leader}]: {all:?}"
        );
        // The raw error code, too.
        let mut conn = RawConnection::connect(cluster.kafka_addr(leader as u32))?;
        let sent = send_probe(&mut conn, topic, 0, b"probe-raw-refused", -1, 5_000)?;
        let (code, _) = read_probe(&mut conn, sent, 0)?;
        ensure!(code == NOT_ENOUGH_REPLICAS, "raw acks=all Produce: error {code}");
        let one = produce_one(&live, topic, 0, "1", b"probe-acks-1")?;
        let one_offset = one.map_err(|e| anyhow::anyhow!("acks=1 with ISR [{leader}]: {e:?}"))?;
        eprintln!(
            "ISR [{leader}]: acks=all → NOT_ENOUGH_REPLICAS (19); acks=1 → offset {one_offset}"
        );

        cluster.restart(followers[0])?;
        let back = Instant::now();
        let resumed = wait_until(CATCH_UP_TIMEOUT, "acks=all succeeds again", || {
            let result = produce_one(
                &cluster.bootstrap_of(&cluster.running()),
                topic,
                0,
                "all",
                b"probe-all-resumed",
            )?;
            Ok(result.ok())
        })?;
        eprintln!(
            "node {} back: acks=all accepted again at offset {resumed} after {:?}",
            followers[0],
            back.elapsed()
        );
        cluster.restart(followers[1])?;
        cluster.wait_isr_full(topic, CATCH_UP_TIMEOUT)?;
        let log = log_of(&kafka::consume_all(&cluster.bootstrap(), topic, &[0], &[])?, 0);
        check_against_log("acks=1 record", &[(one_offset, b"probe-acks-1".to_vec())], &log)?;
        check_against_log("acks=all record", &[(resumed, b"probe-all-resumed".to_vec())], &log)?;
        ensure!(
            !log.values().any(|v| v == b"probe-all-refused" || v == b"probe-raw-refused"),
            "a refused acks=all record was written: {log:?}"
        );
        wait_replicas_identical(&cluster.bootstrap(), topic, &replica_dirs(cluster, topic)?)?;
        match early_finding {
            Some(finding) => bail!("{finding}"),
            None => Ok(()),
        }
    });
}
