//! `strom produce` and `strom consume`: the data verbs, speaking the Kafka protocol to the
//! brokers' Kafka listeners (`--brokers`) with `kafka-protocol`'s codecs. Produce sends stdin's
//! lines as records to each partition's leader; consume fetches from the leaders from an
//! offset, a timestamp or a group's committed offsets, and prints records as text or JSON.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use strom_broker::PeerConn;
use strom_protocol::batch::Compression as Codec;
use strom_protocol::kafka_protocol::indexmap::IndexMap;
use strom_protocol::kafka_protocol::messages::{
    fetch_request, list_offsets_request, metadata_request, offset_commit_request,
    offset_fetch_request, produce_request, ApiKey, BrokerId, FetchRequest, FetchResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse, TopicName,
};
use strom_protocol::kafka_protocol::protocol::StrBytes;
use strom_protocol::kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use strom_protocol::kafka_protocol::ResponseError;

use super::args::{ConsumeArgs, ConsumeFormat, ProduceArgs, StartAt};
use super::CliError;

const CLIENT_ID: &str = "strom-cli";
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const METADATA_VERSION: i16 = 9;
const LIST_OFFSETS_VERSION: i16 = 7;
/// Records per Produce request and partition.
const BATCH_RECORDS_MAX: usize = 1_000;
/// Record bytes per batch, under the default `message.max.bytes`.
const BATCH_BYTES_MAX: usize = 512 * 1024;
/// Bytes one record batch may inflate to when the consumer decompresses it.
const DECOMPRESSED_BYTES_MAX: u64 = 256 << 20;
/// Produce with acks=all waits for replication; give it the broker's request timeout.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
const FETCH_MAX_WAIT_MS: i32 = 500;

/// How long the group calls retry while the coordinator moves or loads (the first use of
/// groups creates `__consumer_offsets`).
const COORDINATOR_RETRY_FOR: Duration = Duration::from_secs(15);

/// Runs a group call (`$call`, an expression using `$cluster`) again while it fails with a
/// retriable error, for a bounded time.
macro_rules! with_retries {
    ($cluster:ident, $call:expr) => {{
        let deadline = std::time::Instant::now() + COORDINATOR_RETRY_FOR;
        loop {
            match $call {
                Err(CliError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                    // The coordinator may have moved: reconnect.
                    $cluster.conns.clear();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other,
            }
        }
    }};
}

/// The brokers' addresses and a connection to each broker that leads something we use.
struct Cluster {
    bootstrap: Vec<String>,
    brokers: BTreeMap<i32, String>,
    conns: BTreeMap<i32, PeerConn>,
}

/// One partition's leader, as Metadata answered.
struct PartitionInfo {
    leader: i32,
}

impl Cluster {
    fn new(brokers: &str) -> Result<Cluster, CliError> {
        let bootstrap: Vec<String> =
            brokers.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        if bootstrap.is_empty() {
            return Err(CliError::Usage("--brokers is empty: give host:port of a broker".into()));
        }
        Ok(Cluster { bootstrap, brokers: BTreeMap::new(), conns: BTreeMap::new() })
    }

    /// Metadata of `topic` from the first bootstrap broker that answers.
    async fn metadata(&mut self, topic: &str) -> Result<BTreeMap<i32, PartitionInfo>, CliError> {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.into()))))]))
            .with_allow_auto_topic_creation(false);
        let mut last = String::new();
        for addr in self.bootstrap.clone() {
            let answer = async {
                let mut conn = PeerConn::connect(&addr).await?;
                conn.call::<_, MetadataResponse>(
                    ApiKey::Metadata,
                    METADATA_VERSION,
                    &request,
                    CLIENT_ID,
                )
                .await
            };
            match answer.await {
                Ok(response) => {
                    self.brokers = response
                        .brokers
                        .iter()
                        .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
                        .collect();
                    let t = response.topics.first().ok_or_else(|| {
                        CliError::Unavailable(format!("{addr} answered Metadata without {topic}"))
                    })?;
                    if t.error_code == ResponseError::UnknownTopicOrPartition.code() {
                        return Err(CliError::Refused(format!("topic {topic} does not exist")));
                    }
                    if t.error_code != 0 {
                        return Err(kafka_error(&format!("topic {topic}"), t.error_code));
                    }
                    return Ok(t
                        .partitions
                        .iter()
                        .map(|p| (p.partition_index, PartitionInfo { leader: p.leader_id.0 }))
                        .collect());
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(CliError::Connect { addr: self.bootstrap.join(","), reason: last })
    }

    /// The connection to broker `id`, opened on first use.
    async fn conn(&mut self, id: i32) -> Result<&mut PeerConn, CliError> {
        if !self.conns.contains_key(&id) {
            let addr = self.brokers.get(&id).cloned().ok_or_else(|| {
                CliError::Unavailable(format!("broker {id} is not in the cluster's metadata"))
            })?;
            let conn = PeerConn::connect(&addr)
                .await
                .map_err(|reason| CliError::Connect { addr: addr.clone(), reason })?;
            self.conns.insert(id, conn);
        }
        Ok(self.conns.get_mut(&id).expect("inserted above"))
    }
}

/// A Kafka error code as a CLI error: retriable codes (a moved leader, a timeout) are exit 1.
fn kafka_error(what: &str, code: i16) -> CliError {
    match ResponseError::try_from_code(code) {
        Some(e) if e.is_retriable() => CliError::Unavailable(format!("{what}: {e:?} ({code})")),
        Some(e) => CliError::Refused(format!("{what}: {e:?} ({code})")),
        None => CliError::Refused(format!("{what}: error code {code}")),
    }
}

fn call_failed(broker: i32, e: String) -> CliError {
    CliError::Unavailable(format!("broker {broker}: {e}"))
}

fn codec_of(name: &str) -> Result<(Compression, Codec), CliError> {
    Ok(match name {
        "none" => (Compression::None, Codec::None),
        "gzip" => (Compression::Gzip, Codec::Gzip),
        "snappy" => (Compression::Snappy, Codec::Snappy),
        "lz4" => (Compression::Lz4, Codec::Lz4),
        "zstd" => (Compression::Zstd, Codec::Zstd),
        other => {
            return Err(CliError::Usage(format!(
                "--compression {other}: use none, gzip, snappy, lz4 or zstd"
            )))
        }
    })
}

fn codec_from(c: Compression) -> Codec {
    match c {
        Compression::None => Codec::None,
        Compression::Gzip => Codec::Gzip,
        Compression::Snappy => Codec::Snappy,
        Compression::Lz4 => Codec::Lz4,
        Compression::Zstd => Codec::Zstd,
    }
}

/// Kafka's default partitioner for keyed records: murmur2 of the key, positive, modulo the
/// partition count (what the Java client and librdkafka's `murmur2_random` choose).
pub fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let len = key.len();
    let mut h: u32 = SEED ^ len as u32;
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions as u32) as i32
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One input line as a record: `key<SEP>value` with `--key-separator`, else the whole line.
fn parse_line(line: &str, separator: Option<&str>) -> (Option<Bytes>, Bytes) {
    match separator.and_then(|sep| line.split_once(sep)) {
        Some((key, value)) => {
            (Some(Bytes::copy_from_slice(key.as_bytes())), Bytes::copy_from_slice(value.as_bytes()))
        }
        None => (None, Bytes::copy_from_slice(line.as_bytes())),
    }
}

pub async fn produce(args: ProduceArgs, input: impl BufRead) -> Result<String, CliError> {
    let (compression, codec) = codec_of(&args.compression)?;
    let acks: i16 = match args.acks.as_str() {
        "all" | "-1" => -1,
        "1" => 1,
        "0" => 0,
        other => return Err(CliError::Usage(format!("--acks {other}: use all, -1, 1 or 0"))),
    };
    let mut headers: IndexMap<StrBytes, Option<Bytes>> = IndexMap::new();
    for (key, value) in &args.headers {
        headers.insert(StrBytes::from_string(key.clone()), Some(Bytes::from(value.clone())));
    }
    let mut cluster = Cluster::new(&args.brokers.brokers)?;
    let partitions = cluster.metadata(&args.topic).await?;
    let count = partitions.len() as i32;
    if let Some(p) = args.partition {
        if !partitions.contains_key(&p) {
            return Err(CliError::Refused(format!(
                "{} has no partition {p} (it has {count})",
                args.topic
            )));
        }
    }
    // Keyless records go to one partition per batch (Kafka's sticky partitioner), in turn.
    let target =
        ProduceTarget { topic: &args.topic, partitions: &partitions, acks, compression, codec };
    let mut sticky = 0i32;
    let mut pending: BTreeMap<i32, (Vec<Record>, usize)> = BTreeMap::new();
    let mut written: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let mut total = 0usize;
    let timestamp = now_ms();
    for line in input.lines() {
        let line = line.map_err(|e| CliError::Usage(format!("cannot read stdin: {e}")))?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        let (key, value) = parse_line(line, args.key_separator.as_deref());
        let partition = match (args.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => murmur2_partition(k, count),
            (None, None) => sticky,
        };
        let size = value.len() + key.as_ref().map_or(0, Bytes::len);
        let entry = pending.entry(partition).or_default();
        entry.0.push(Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: entry.0.len() as i64,
            sequence: -1,
            timestamp,
            key,
            value: Some(value),
            headers: headers.clone(),
        });
        entry.1 += size;
        total += 1;
        if entry.0.len() >= BATCH_RECORDS_MAX || entry.1 >= BATCH_BYTES_MAX {
            let records = pending.remove(&partition).map(|(r, _)| r).unwrap_or_default();
            target.send(&mut cluster, partition, records, &mut written).await?;
            sticky = (sticky + 1) % count;
        }
    }
    for (partition, (records, _)) in std::mem::take(&mut pending) {
        target.send(&mut cluster, partition, records, &mut written).await?;
    }
    let mut out = String::new();
    for (partition, (first, last)) in &written {
        out.push_str(&format!("{}-{partition}: offsets {first}..={last}\n", args.topic));
    }
    eprintln!("produced {total} record(s) to {}", args.topic);
    Ok(out)
}

/// Where and how `strom produce` sends its batches: the same for every batch of one run.
struct ProduceTarget<'a> {
    topic: &'a str,
    partitions: &'a BTreeMap<i32, PartitionInfo>,
    acks: i16,
    compression: Compression,
    codec: Codec,
}

impl ProduceTarget<'_> {
    /// Sends `records` to `partition`'s leader; records the offsets they got in `written`.
    async fn send(
        &self,
        cluster: &mut Cluster,
        partition: i32,
        records: Vec<Record>,
        written: &mut BTreeMap<i32, (i64, i64)>,
    ) -> Result<(), CliError> {
        let ProduceTarget { topic, partitions, acks, compression, codec } = *self;
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression };
        let compressor = |plain: &mut BytesMut, out: &mut BytesMut, _: Compression| {
            let packed = strom_protocol::compression::compress(codec, plain)?;
            out.extend_from_slice(&packed);
            Ok(())
        };
        RecordBatchEncoder::encode_with_custom_compression(
            &mut batch,
            &records,
            &options,
            Some(compressor),
        )
        .map_err(|e| CliError::Usage(format!("cannot encode the records: {e}")))?;
        let request = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(PRODUCE_TIMEOUT.as_millis() as i32)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.into())))
                .with_partition_data(vec![produce_request::PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch.freeze()))])]);
        let leader = partitions[&partition].leader;
        if leader < 0 {
            return Err(CliError::Unavailable(format!("{topic}-{partition} has no leader")));
        }
        let conn = cluster.conn(leader).await?;
        if acks == 0 {
            return conn
                .send(ApiKey::Produce, PRODUCE_VERSION, &request, CLIENT_ID)
                .await
                .map_err(|e| call_failed(leader, e));
        }
        let response: ProduceResponse = conn
            .call_within(
                ApiKey::Produce,
                PRODUCE_VERSION,
                &request,
                CLIENT_ID,
                PRODUCE_TIMEOUT + Duration::from_secs(5),
            )
            .await
            .map_err(|e| call_failed(leader, e))?;
        let answer =
            response.responses.first().and_then(|t| t.partition_responses.first()).ok_or_else(
                || {
                    CliError::Unavailable(format!(
                        "broker {leader} answered Produce without {topic}-{partition}"
                    ))
                },
            )?;
        if answer.error_code != 0 {
            let detail =
                answer.error_message.as_ref().map(|m| format!(": {m}")).unwrap_or_default();
            return Err(kafka_error(
                &format!("produce to {topic}-{partition}{detail}"),
                answer.error_code,
            ));
        }
        let last = answer.base_offset + records.len() as i64 - 1;
        let range = written.entry(partition).or_insert((answer.base_offset, last));
        range.1 = last;
        Ok(())
    }
}

/// Where consuming a partition starts and stops.
struct Position {
    leader: i32,
    next: i64,
    /// The high watermark when consuming started, for `--exit-at-end`.
    end: i64,
}

pub async fn consume(args: ConsumeArgs, mut out: impl Write) -> Result<String, CliError> {
    let mut cluster = Cluster::new(&args.brokers.brokers)?;
    let partitions = cluster.metadata(&args.topic).await?;
    let chosen: Vec<i32> = match args.partition {
        Some(p) if partitions.contains_key(&p) => vec![p],
        Some(p) => return Err(CliError::Refused(format!("{} has no partition {p}", args.topic))),
        None => partitions.keys().copied().collect(),
    };
    let isolation: i8 = if args.read_committed { 1 } else { 0 };
    let mut positions: BTreeMap<i32, Position> = BTreeMap::new();
    let committed = match &args.group {
        Some(group) => with_retries!(
            cluster,
            committed_offsets(&mut cluster, group, &args.topic, &chosen).await
        )?,
        None => BTreeMap::new(),
    };
    for &p in &chosen {
        let leader = partitions[&p].leader;
        let end = list_offset(&mut cluster, leader, &args.topic, p, -1, isolation).await?;
        let next = match (committed.get(&p), &args.start) {
            (Some(&offset), _) if offset >= 0 => offset,
            (_, StartAt::Earliest) => {
                list_offset(&mut cluster, leader, &args.topic, p, -2, isolation).await?
            }
            (_, StartAt::Latest) => end,
            (_, StartAt::Offset(o)) => *o,
            (_, StartAt::Timestamp(ts)) => {
                let found =
                    list_offset(&mut cluster, leader, &args.topic, p, *ts, isolation).await?;
                if found < 0 {
                    end
                } else {
                    found
                }
            }
        };
        positions.insert(p, Position { leader, next, end });
    }
    let mut printed = 0u64;
    let deadline = args.timeout_ms.map(|ms| std::time::Instant::now() + Duration::from_millis(ms));
    loop {
        if args.exit_at_end && positions.values().all(|pos| pos.next >= pos.end) {
            break;
        }
        if args.max_records.is_some_and(|max| printed >= max) {
            break;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        let leaders: Vec<i32> = {
            let mut l: Vec<i32> = positions.values().map(|p| p.leader).collect();
            l.sort_unstable();
            l.dedup();
            l
        };
        for leader in leaders {
            let fetched = fetch_once(&mut cluster, leader, &args, &positions, isolation).await?;
            for (partition, records, next) in fetched {
                for record in records {
                    if args.max_records.is_some_and(|max| printed >= max) {
                        break;
                    }
                    write_record(&mut out, &args, partition, &record)?;
                    printed += 1;
                    if let Some(pos) = positions.get_mut(&partition) {
                        pos.next = record.offset + 1;
                    }
                }
                if let Some(pos) = positions.get_mut(&partition) {
                    if args.max_records.is_none_or(|max| printed < max) {
                        pos.next = pos.next.max(next);
                    }
                }
            }
        }
        out.flush().map_err(|e| CliError::Usage(format!("cannot write stdout: {e}")))?;
        if let (Some(group), true) = (&args.group, args.commit) {
            with_retries!(cluster, commit(&mut cluster, group, &args.topic, &positions).await)?;
        }
    }
    eprintln!("consumed {printed} record(s) from {}", args.topic);
    Ok(String::new())
}

/// One Fetch to `leader` for the partitions it leads: each partition's records (control
/// records and aborted transactions left out) and the offset to fetch next.
async fn fetch_once(
    cluster: &mut Cluster,
    leader: i32,
    args: &ConsumeArgs,
    positions: &BTreeMap<i32, Position>,
    isolation: i8,
) -> Result<Vec<(i32, Vec<Record>, i64)>, CliError> {
    let wanted: Vec<fetch_request::FetchPartition> = positions
        .iter()
        .filter(|(_, pos)| pos.leader == leader && !(args.exit_at_end && pos.next >= pos.end))
        .map(|(&p, pos)| {
            fetch_request::FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(pos.next)
                .with_partition_max_bytes(1_048_576)
        })
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(FETCH_MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(16 * 1_048_576)
        .with_isolation_level(isolation)
        .with_session_epoch(-1)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(args.topic.clone())))
            .with_partitions(wanted)]);
    let conn = cluster.conn(leader).await?;
    let response: FetchResponse = conn
        .call_within(ApiKey::Fetch, FETCH_VERSION, &request, CLIENT_ID, Duration::from_secs(10))
        .await
        .map_err(|e| call_failed(leader, e))?;
    if response.error_code != 0 {
        return Err(kafka_error("fetch", response.error_code));
    }
    let mut out = Vec::new();
    for topic in response.responses {
        for p in topic.partitions {
            let what = format!("fetch {}-{}", args.topic, p.partition_index);
            if p.error_code != 0 {
                return Err(kafka_error(&what, p.error_code));
            }
            let aborted: Vec<(i64, i64)> = p
                .aborted_transactions
                .unwrap_or_default()
                .iter()
                .map(|a| (a.producer_id.0, a.first_offset))
                .collect();
            // A fetch answers whole batches: records below the fetch offset are skipped.
            let from = positions.get(&p.partition_index).map_or(0, |pos| pos.next);
            let (records, next) = decode_records(p.records.unwrap_or_default(), &aborted, from)
                .map_err(|e| CliError::Refused(format!("{what}: {e}")))?;
            out.push((p.partition_index, records, next));
        }
    }
    Ok(out)
}

/// The data records of fetched batches, without control records and without records of the
/// aborted transactions (`(producer id, first offset)`, as read_committed Fetch lists them),
/// from offset `from` on; and the offset after the last whole batch.
fn decode_records(
    mut data: Bytes,
    aborted: &[(i64, i64)],
    from: i64,
) -> Result<(Vec<Record>, i64), String> {
    let mut records = Vec::new();
    let mut next = -1;
    let mut open_aborts: Vec<i64> = Vec::new();
    let mut pending: Vec<(i64, i64)> = aborted.to_vec();
    pending.sort_by_key(|&(_, first)| first);
    while data.len() >= 61 {
        let batch_length = i32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let total = 12 + batch_length.max(0) as usize;
        if total > data.len() {
            break; // A partial batch at the end of the response.
        }
        let mut batch = data.split_to(total);
        let set = RecordBatchDecoder::decode_with_custom_compression(
            &mut batch,
            Some(|compressed: &mut Bytes, c: Compression| {
                let mut plain = Vec::new();
                strom_protocol::compression::reader(
                    codec_from(c),
                    compressed,
                    DECOMPRESSED_BYTES_MAX,
                )
                .map_err(|e| anyhow::anyhow!(e.to_string()))?
                .take(DECOMPRESSED_BYTES_MAX)
                .read_to_end(&mut plain)
                .map_err(|e| anyhow::anyhow!(e.to_string()))?;
                Ok(Bytes::from(plain))
            }),
        )
        .map_err(|e| e.to_string())?;
        for record in set.records {
            next = next.max(record.offset + 1);
            if record.transactional {
                // Each aborted transaction applies once: from its first offset to the
                // producer's next marker.
                if let Some(i) = pending
                    .iter()
                    .position(|&(pid, first)| pid == record.producer_id && first <= record.offset)
                {
                    pending.remove(i);
                    if !open_aborts.contains(&record.producer_id) {
                        open_aborts.push(record.producer_id);
                    }
                }
            }
            if record.control {
                // An abort or commit marker ends the producer's transaction.
                open_aborts.retain(|&pid| pid != record.producer_id);
                continue;
            }
            if record.offset < from
                || (record.transactional && open_aborts.contains(&record.producer_id))
            {
                continue;
            }
            records.push(record);
        }
    }
    Ok((records, next))
}

fn write_record(
    out: &mut impl Write,
    args: &ConsumeArgs,
    partition: i32,
    record: &Record,
) -> Result<(), CliError> {
    let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let line = match args.format {
        ConsumeFormat::Text => match (&args.print_key, text(&record.key)) {
            (Some(sep), key) => format!(
                "{}{sep}{}\n",
                key.unwrap_or_default(),
                text(&record.value).unwrap_or_default()
            ),
            (None, _) => format!("{}\n", text(&record.value).unwrap_or_default()),
        },
        ConsumeFormat::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = record
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        text(v).map_or(serde_json::Value::Null, serde_json::Value::String),
                    )
                })
                .collect();
            let value = serde_json::json!({
                "topic": args.topic,
                "partition": partition,
                "offset": record.offset,
                "timestamp": record.timestamp,
                "key": text(&record.key),
                "value": text(&record.value),
                "headers": headers,
            });
            format!("{value}\n")
        }
    };
    match out.write_all(line.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Usage(format!("cannot write stdout: {e}"))),
    }
}

/// ListOffsets of one partition: `timestamp` -2 earliest, -1 latest, else the first offset at
/// or after it (-1 when there is none).
async fn list_offset(
    cluster: &mut Cluster,
    leader: i32,
    topic: &str,
    partition: i32,
    timestamp: i64,
    isolation: i8,
) -> Result<i64, CliError> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(isolation)
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(timestamp)])]);
    let conn = cluster.conn(leader).await?;
    let response: ListOffsetsResponse = conn
        .call(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request, CLIENT_ID)
        .await
        .map_err(|e| call_failed(leader, e))?;
    let p = response.topics.first().and_then(|t| t.partitions.first()).ok_or_else(|| {
        CliError::Unavailable(format!(
            "broker {leader} answered ListOffsets without {topic}-{partition}"
        ))
    })?;
    if p.error_code != 0 {
        return Err(kafka_error(&format!("list offsets of {topic}-{partition}"), p.error_code));
    }
    Ok(p.offset)
}

/// The group coordinator's broker id.
async fn coordinator(cluster: &mut Cluster, group: &str) -> Result<i32, CliError> {
    let request = FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.into()));
    let any = *cluster
        .brokers
        .keys()
        .next()
        .ok_or_else(|| CliError::Unavailable("no broker in the metadata".into()))?;
    let conn = cluster.conn(any).await?;
    let response: FindCoordinatorResponse = conn
        .call(ApiKey::FindCoordinator, 3, &request, CLIENT_ID)
        .await
        .map_err(|e| call_failed(any, e))?;
    if response.error_code != 0 {
        return Err(kafka_error(
            &format!("find the coordinator of group {group}"),
            response.error_code,
        ));
    }
    Ok(response.node_id.0)
}

/// The group's committed offsets of `partitions` (-1: none).
async fn committed_offsets(
    cluster: &mut Cluster,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, CliError> {
    let id = coordinator(cluster, group).await?;
    let request = OffsetFetchRequest::default()
        .with_group_id(StrBytes::from_string(group.into()).into())
        .with_topics(Some(vec![offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_indexes(partitions.to_vec())]));
    let conn = cluster.conn(id).await?;
    let response: OffsetFetchResponse = conn
        .call(ApiKey::OffsetFetch, 7, &request, CLIENT_ID)
        .await
        .map_err(|e| call_failed(id, e))?;
    if response.error_code != 0 {
        return Err(kafka_error(&format!("offsets of group {group}"), response.error_code));
    }
    let mut out = BTreeMap::new();
    for t in response.topics {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(kafka_error(
                    &format!("offset of group {group} on {topic}-{}", p.partition_index),
                    p.error_code,
                ));
            }
            out.insert(p.partition_index, p.committed_offset);
        }
    }
    Ok(out)
}

/// Commits the next offsets as a consumer outside any generation (Kafka's standalone commit,
/// which a group with no active members accepts).
async fn commit(
    cluster: &mut Cluster,
    group: &str,
    topic: &str,
    positions: &BTreeMap<i32, Position>,
) -> Result<(), CliError> {
    let id = coordinator(cluster, group).await?;
    let request = OffsetCommitRequest::default()
        .with_group_id(StrBytes::from_string(group.into()).into())
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(
                positions
                    .iter()
                    .map(|(&p, pos)| {
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(pos.next)
                    })
                    .collect(),
            )]);
    let conn = cluster.conn(id).await?;
    let response: OffsetCommitResponse = conn
        .call(ApiKey::OffsetCommit, 8, &request, CLIENT_ID)
        .await
        .map_err(|e| call_failed(id, e))?;
    for t in response.topics {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(kafka_error(
                    &format!("commit of group {group} on {topic}-{}", p.partition_index),
                    p.error_code,
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's `Utils.murmur2` of these keys, positive and modulo 6 / 100, as the Java
    /// client's default partitioner places them.
    #[test]
    fn murmur2_places_keys_where_kafkas_partitioner_does() {
        // Known values of Kafka's murmur2 (Utils.murmur2, masked positive).
        assert_eq!(murmur2_partition(b"21", 1 << 30), (-973932308i32 & 0x7fff_ffff) % (1 << 30));
        assert_eq!(
            murmur2_partition(b"foobar", 1 << 30),
            (-790332482i32 & 0x7fff_ffff) % (1 << 30)
        );
        assert_eq!(
            murmur2_partition(b"a-little-bit-long-string", 1 << 30),
            (-985981536i32 & 0x7fff_ffff) % (1 << 30)
        );
        assert_eq!(murmur2_partition(b"abc", 1 << 30), 479470107);
    }

    #[test]
    fn a_line_splits_at_the_first_separator() {
        assert_eq!(parse_line("k:v:w", Some(":")), (Some(Bytes::from("k")), Bytes::from("v:w")));
        assert_eq!(parse_line("no-sep", Some(":")), (None, Bytes::from("no-sep")));
        assert_eq!(parse_line("k:v", None), (None, Bytes::from("k:v")));
    }
}
