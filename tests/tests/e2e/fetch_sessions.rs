//! Incremental fetch sessions (KIP-227, issue 15): a consumer's session over the raw protocol
//! (a FULL fetch creates it, INCREMENTAL fetches name only what changed and are answered only
//! what changed, forgotten partitions stay out, a wrong epoch is answered
//! INVALID_FETCH_SESSION_EPOCH, an unknown session FETCH_SESSION_ID_NOT_FOUND, a switch
//! between topic names and ids FETCH_SESSION_TOPIC_ID_ERROR), and an idle 3-node cluster whose
//! followers send incremental fetches that carry no partition at all.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use strom_tests::raw::{self, RawConnection};
use strom_tests::{kafka, wait_until, with_cluster, with_node, ClusterOptions, NodeOptions};

const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
const FETCH_SESSION_TOPIC_ID_ERROR: i16 = 106;
/// Fetch by topic name (the last version before topic ids).
const BY_NAME: i16 = 12;
/// Fetch by topic id.
const BY_ID: i16 = 13;

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

/// A consumer's Fetch in session `session_id` at `epoch`, naming `partitions` (partition,
/// fetch offset) of `topic` and forgetting `forgotten`.
fn session_fetch(
    session_id: i32,
    epoch: i32,
    topic: &str,
    partitions: &[(i32, i64)],
    forgotten: &[i32],
    max_wait_ms: i32,
) -> FetchRequest {
    let mut request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_id(session_id)
        .with_session_epoch(epoch);
    if !partitions.is_empty() {
        request.topics = vec![FetchTopic::default().with_topic(name(topic)).with_partitions(
            partitions
                .iter()
                .map(|&(partition, offset)| {
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_current_leader_epoch(-1)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20)
                })
                .collect(),
        )];
    }
    if !forgotten.is_empty() {
        request.forgotten_topics_data = vec![ForgottenTopic::default()
            .with_topic(name(topic))
            .with_partitions(forgotten.to_vec())];
    }
    request
}

fn send(c: &mut RawConnection, version: i16, request: &FetchRequest) -> anyhow::Result<i32> {
    c.send_request(ApiKey::Fetch as i16, version, request, version)
}

fn call(
    c: &mut RawConnection,
    version: i16,
    request: &FetchRequest,
) -> anyhow::Result<FetchResponse> {
    let id = send(c, version, request)?;
    c.read_response(id, version)
}

/// Partition → (high watermark, record bytes) of a response without errors.
fn answered(response: &FetchResponse) -> anyhow::Result<BTreeMap<i32, (i64, usize)>> {
    ensure!(response.error_code == 0, "top-level error {}", response.error_code);
    let mut out = BTreeMap::new();
    for p in response.responses.iter().flat_map(|t| &t.partitions) {
        ensure!(p.error_code == 0, "partition {} error {}", p.partition_index, p.error_code);
        let bytes = p.records.as_ref().map_or(0, |r| r.len());
        out.insert(p.partition_index, (p.high_watermark, bytes));
    }
    Ok(out)
}

fn produce_one(c: &mut RawConnection, topic: &str, partition: i32) -> anyhow::Result<()> {
    let code = c.produce(topic, partition, raw::record_batch(&[b"session"], 0)?)?;
    ensure!(code == 0, "produce to {topic}-{partition}: error {code}");
    Ok(())
}

/// The topic's entry of a Metadata (v12) answer, with its id.
fn topic_metadata(c: &mut RawConnection, topic: &str) -> anyhow::Result<MetadataResponseTopic> {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(name(topic)))]));
    let id = c.send_request(ApiKey::Metadata as i16, 12, &request, 12)?;
    let response: MetadataResponse = c.read_response(id, 12)?;
    let t = response.topics.into_iter().next().context("Metadata lists no topic")?;
    ensure!(t.error_code == 0, "Metadata error {}", t.error_code);
    Ok(t)
}

#[test]
fn a_consumer_session_answers_only_what_changed_and_refuses_wrong_epochs_and_ids() {
    with_node(NodeOptions::default(), |node| {
        let topic = "sessions";
        kafka::create_topic(&node.bootstrap(), topic, 3, &[])?;
        let mut c = RawConnection::connect(node.kafka_addr())?;
        let mut producer = RawConnection::connect(node.kafka_addr())?;
        produce_one(&mut producer, topic, 0)?;

        // FULL: creates the session and answers every partition.
        let full =
            call(&mut c, BY_NAME, &session_fetch(0, 0, topic, &[(0, 0), (1, 0), (2, 0)], &[], 0))?;
        let session = full.session_id;
        ensure!(session != 0, "no session created: {full:?}");
        let all = answered(&full)?;
        ensure!(all.keys().copied().eq([0, 1, 2]), "a FULL answer names every partition: {all:?}");
        ensure!(all[&0].0 == 1 && all[&0].1 > 0, "partition 0 has its record: {all:?}");

        // INCREMENTAL: partition 0 moved past its record; nothing else changed: empty answer.
        let idle = call(&mut c, BY_NAME, &session_fetch(session, 1, topic, &[(0, 1)], &[], 0))?;
        ensure!(idle.session_id == session, "session id {} != {session}", idle.session_id);
        ensure!(answered(&idle)?.is_empty(), "nothing changed, yet: {idle:?}");

        // A parked incremental fetch wakes for an append to one of its partitions, and is
        // answered that partition only.
        let started = Instant::now();
        let wait = send(&mut c, BY_NAME, &session_fetch(session, 2, topic, &[], &[], 20_000))?;
        std::thread::sleep(Duration::from_millis(200));
        produce_one(&mut producer, topic, 2)?;
        let woken: FetchResponse = c.read_response(wait, BY_NAME)?;
        let woken_parts = answered(&woken)?;
        ensure!(woken_parts.keys().copied().eq([2]), "only partition 2 changed: {woken_parts:?}");
        ensure!(woken_parts[&2].0 == 1 && woken_parts[&2].1 > 0, "{woken_parts:?}");
        ensure!(started.elapsed() < Duration::from_secs(15), "the append did not wake the fetch");

        // Forget partition 2: its next append is not answered.
        let forget = call(&mut c, BY_NAME, &session_fetch(session, 3, topic, &[(2, 1)], &[2], 0))?;
        ensure!(answered(&forget)?.is_empty(), "{forget:?}");
        produce_one(&mut producer, topic, 2)?;
        let after = call(&mut c, BY_NAME, &session_fetch(session, 4, topic, &[], &[], 300))?;
        ensure!(answered(&after)?.is_empty(), "a forgotten partition was answered: {after:?}");
        // ... while partition 1, still in the session, is.
        produce_one(&mut producer, topic, 1)?;
        let one = call(&mut c, BY_NAME, &session_fetch(session, 5, topic, &[], &[], 5_000))?;
        ensure!(answered(&one)?.keys().copied().eq([1]), "{one:?}");

        // A wrong epoch: INVALID_FETCH_SESSION_EPOCH, and the session is left as it was.
        let stale = call(&mut c, BY_NAME, &session_fetch(session, 5, topic, &[], &[], 0))?;
        ensure!(stale.error_code == INVALID_FETCH_SESSION_EPOCH, "{stale:?}");
        ensure!(stale.responses.is_empty() && stale.session_id == 0, "{stale:?}");
        let ahead = call(&mut c, BY_NAME, &session_fetch(session, 9, topic, &[], &[], 0))?;
        ensure!(ahead.error_code == INVALID_FETCH_SESSION_EPOCH, "{ahead:?}");
        let next = call(&mut c, BY_NAME, &session_fetch(session, 6, topic, &[(1, 1)], &[], 0))?;
        ensure!(answered(&next)?.is_empty(), "{next:?}");

        // An unknown session: FETCH_SESSION_ID_NOT_FOUND.
        let unknown = session.wrapping_add(1).max(1);
        let lost = call(&mut c, BY_NAME, &session_fetch(unknown, 1, topic, &[], &[], 0))?;
        ensure!(lost.error_code == FETCH_SESSION_ID_NOT_FOUND, "{lost:?}");

        // A session by topic id refuses a request by name, and the other way round.
        let id = topic_metadata(&mut c, topic)?.topic_id;
        let mut by_id = session_fetch(0, 0, topic, &[(0, 0)], &[], 0);
        by_id.topics[0].topic = TopicName::default();
        by_id.topics[0].topic_id = id;
        let full_by_id = call(&mut c, BY_ID, &by_id)?;
        let id_session = full_by_id.session_id;
        ensure!(id_session != 0 && full_by_id.error_code == 0, "{full_by_id:?}");
        let mixed = call(&mut c, BY_NAME, &session_fetch(id_session, 1, topic, &[], &[], 0))?;
        ensure!(mixed.error_code == FETCH_SESSION_TOPIC_ID_ERROR, "{mixed:?}");
        let mixed = call(&mut c, BY_ID, &session_fetch(session, 7, topic, &[], &[], 0))?;
        ensure!(mixed.error_code == FETCH_SESSION_TOPIC_ID_ERROR, "{mixed:?}");

        // A FINAL fetch closes the session and is answered without one.
        let last = call(&mut c, BY_NAME, &session_fetch(session, -1, topic, &[(0, 0)], &[], 0))?;
        ensure!(last.session_id == 0 && answered(&last)?.keys().copied().eq([0]), "{last:?}");
        let closed = call(&mut c, BY_NAME, &session_fetch(session, 7, topic, &[], &[], 0))?;
        ensure!(closed.error_code == FETCH_SESSION_ID_NOT_FOUND, "{closed:?}");
        Ok(())
    });
}

/// Topics × partitions of the idle cluster: 3,000 partitions, RF 3.
const IDLE_TOPICS: usize = 30;
const IDLE_PARTITIONS: i32 = 100;

/// `line` without the terminal color sequences (ESC [ ... m) the log may carry.
fn without_colors(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What each node's fetchers logged as idle: node → leader → partitions in the session.
fn idle_sessions(cluster: &strom_tests::StromCluster) -> BTreeMap<u32, BTreeMap<i32, usize>> {
    let mut out = BTreeMap::new();
    for id in cluster.running() {
        let mut leaders = BTreeMap::new();
        for line in cluster.node(id).stderr().lines() {
            if !line.contains("replica fetch session idle") {
                continue;
            }
            let line = without_colors(line);
            let field = |name: &str| -> Option<i64> {
                let at = line.find(&format!("{name}="))? + name.len() + 1;
                line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
            };
            if let (Some(leader), Some(partitions)) = (field("leader"), field("partitions")) {
                leaders.insert(leader as i32, partitions as usize);
            }
        }
        out.insert(id, leaders);
    }
    out
}

#[test]
fn idle_followers_send_incremental_fetches_that_carry_no_partition() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let bootstrap = cluster.bootstrap();
        let topics: Vec<String> = (0..IDLE_TOPICS).map(|n| format!("idle-{n:02}")).collect();
        for topic in &topics {
            kafka::create_topic_replicated(&bootstrap, topic, IDLE_PARTITIONS, 3)?;
        }
        for topic in &topics {
            cluster.wait_isr_full(topic, Duration::from_secs(120))?;
        }
        // Each node follows, from each other node, the partitions that node leads; once the
        // cluster is idle every such session stays idle.
        let metadata = cluster.metadata(cluster.running()[0])?;
        let led: BTreeMap<i32, usize> =
            metadata.broker_ids().into_iter().map(|b| (b, metadata.led_by(b).len())).collect();
        ensure!(led.values().sum::<usize>() == IDLE_TOPICS * IDLE_PARTITIONS as usize, "{led:?}");
        // The last idle report of each session counts: one from before the last partitions
        // joined may name fewer.
        let seen = wait_until(Duration::from_secs(120), "every follower session idle", || {
            let idle = idle_sessions(cluster);
            for (&node, leaders) in &idle {
                let expected: BTreeMap<i32, usize> =
                    led.iter().filter(|(&b, _)| b != node as i32).map(|(&b, &n)| (b, n)).collect();
                if *leaders != expected {
                    eprintln!("node {node}: idle sessions {leaders:?}, expecting {expected:?}");
                    return Ok(None);
                }
            }
            Ok(Some(idle))
        })?;
        eprintln!("idle follower sessions (node → leader → partitions): {seen:?}");
        Ok(())
    });
}
