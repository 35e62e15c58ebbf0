//! librdkafka (`rdkafka`) helpers for end-to-end tests: a producer that records every delivery
//! report, an assign-based consumer that reads partitions from the beginning up to their high
//! watermarks, and admin calls with bounded waits. No consumer groups: those come later.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::{CLIENT_TIMEOUT, CONSUME_TIMEOUT, POLL_INTERVAL};

/// Headers as the tests compare them: ordered, values may be null.
pub type HeaderList = Vec<(String, Option<Vec<u8>>)>;

/// Settings shared by every client the tests create.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "strom-tests")
        // Fail fast rather than hang a test on a node that is down.
        .set("socket.connection.setup.timeout.ms", "10000")
        .set("reconnect.backoff.max.ms", "1000");
    config
}

fn apply(config: &mut ClientConfig, extra: &[(&str, &str)]) {
    for (key, value) in extra {
        config.set(*key, *value);
    }
}

/// An assign-only consumer: no commits, CRCs checked on every fetched batch. librdkafka wants a
/// `group.id` before `assign`, but nothing here joins a group or commits.
pub fn consumer(bootstrap: &str, extra: &[(&str, &str)]) -> anyhow::Result<BaseConsumer> {
    let mut config = client_config(bootstrap);
    config
        .set("group.id", "strom-tests")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("check.crcs", "true");
    apply(&mut config, extra);
    config.create().context("create rdkafka consumer")
}

pub fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    client_config(bootstrap).create().context("create rdkafka admin client")
}

/// Runs an rdkafka future (admin calls) to completion within [`CLIENT_TIMEOUT`].
pub fn block_on<F: Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    runtime
        .block_on(async { tokio::time::timeout(CLIENT_TIMEOUT, future).await })
        .with_context(|| format!("admin request did not complete within {CLIENT_TIMEOUT:?}"))
}

/// Admin requests bounded by [`CLIENT_TIMEOUT`].
pub fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(CLIENT_TIMEOUT))
        .operation_timeout(Some(CLIENT_TIMEOUT))
}

/// Sends one Kafka CreateTopics (rdkafka's AdminClient) for `new_topic`; fails on the
/// topic's error code.
pub fn create_new_topic(
    bootstrap: &str,
    new_topic: &NewTopic<'_>,
    options: &AdminOptions,
) -> anyhow::Result<()> {
    let admin = admin(bootstrap)?;
    for result in
        block_on(admin.create_topics([new_topic], options))?.context("CreateTopics request")?
    {
        if let Err((name, code)) = result {
            bail!("CreateTopics {name}: {code:?}");
        }
    }
    Ok(())
}

/// Creates a topic with `rf` replicas through Kafka CreateTopics (rdkafka's AdminClient).
pub fn create_topic_replicated(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    rf: i32,
) -> anyhow::Result<()> {
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(rf));
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(20)))
        .operation_timeout(Some(Duration::from_secs(20)));
    create_new_topic(bootstrap, &new_topic, &options)
}

/// Creates a topic with replication factor 1 and `configs`, then waits until metadata shows
/// every partition with a leader.
pub fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        new_topic = new_topic.set(key, value);
    }
    create_new_topic(bootstrap, &new_topic, &admin_options())?;
    wait_for_topic(bootstrap, topic, partitions)
}

/// Waits until metadata lists `topic` with `partitions` partitions, each with a leader.
pub fn wait_for_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let consumer = consumer(bootstrap, &[])?;
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        let last = match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() => {
                    let led = t.partitions().iter().filter(|p| p.leader() >= 0).count();
                    if led == partitions as usize && t.partitions().len() == led {
                        return Ok(());
                    }
                    format!("{} partitions, {led} with a leader", t.partitions().len())
                }
                Some(t) => format!("topic error {:?}", t.error()),
                None => "topic absent from metadata".to_owned(),
            },
            Err(error) => format!("metadata request: {error}"),
        };
        if Instant::now() >= deadline {
            bail!("topic {topic} not ready with {partitions} partitions: {last}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Partition count and per-partition leader of `topic`, from a Metadata request.
pub fn topic_partitions(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<(i32, i32)>> {
    let consumer = consumer(bootstrap, &[])?;
    let metadata = consumer.fetch_metadata(Some(topic), CLIENT_TIMEOUT)?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("{topic} absent from metadata"))?;
    if let Some(error) = t.error() {
        bail!("metadata for {topic}: {error:?}");
    }
    Ok(t.partitions().iter().map(|p| (p.id(), p.leader())).collect())
}

/// The topic's configuration entries (name → value) from DescribeConfigs.
pub fn describe_topic_configs(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<HashMap<String, Option<String>>> {
    let admin = admin(bootstrap)?;
    let results =
        block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &admin_options()))?
            .context("DescribeConfigs request")?;
    let resource = results
        .into_iter()
        .next()
        .context("DescribeConfigs returned no resource")?
        .map_err(|code| anyhow::anyhow!("DescribeConfigs {topic}: {code:?}"))?;
    Ok(resource.entries.into_iter().map(|e| (e.name, e.value)).collect())
}

/// Replaces the topic's configuration with `configs` (AlterConfigs: keys not given return to
/// their defaults, as in Kafka).
pub fn alter_topic_configs(
    bootstrap: &str,
    topic: &str,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin = admin(bootstrap)?;
    let alter = configs
        .iter()
        .fold(AlterConfig::new(ResourceSpecifier::Topic(topic)), |alter, (k, v)| alter.set(k, v));
    let results = block_on(admin.alter_configs([&alter], &admin_options()))?
        .context("AlterConfigs request")?;
    for result in results {
        if let Err((resource, code)) = result {
            bail!("AlterConfigs {resource:?}: {code:?}");
        }
    }
    Ok(())
}

/// How long one watermark lookup may wait before [`watermarks`] retries with a fresh client.
const WATERMARK_ATTEMPT: Duration = Duration::from_secs(5);

/// (low, high) watermark of each partition.
pub fn watermarks(
    bootstrap: &str,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
    let mut consumer = consumer(bootstrap, &[])?;
    let mut out = HashMap::new();
    for &partition in partitions {
        // A node that has just (re)started serves a partition only once it has opened the log
        // and the controller has unfenced it: until then librdkafka reports the partition
        // unknown or leaderless, which a client retries. librdkafka treats "unknown partition"
        // as permanent for as long as its metadata cache holds the topic (minutes), so each
        // retry asks with a fresh client, as an application restarting its lookup would.
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let marks = loop {
            match consumer.fetch_watermarks(topic, partition, WATERMARK_ATTEMPT) {
                Ok(marks) => break marks,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(POLL_INTERVAL);
                    consumer = self::consumer(bootstrap, &[])?;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("watermarks of {topic}-{partition}"))
                }
            }
        };
        out.insert(partition, marks);
    }
    Ok(out)
}

/// Where the broker put one acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ack {
    pub partition: i32,
    pub offset: i64,
}

/// Collects delivery reports, keyed by the id the test gave each record.
#[derive(Default)]
pub struct AckContext {
    reports: Mutex<HashMap<usize, Result<Ack, String>>>,
    acked: AtomicUsize,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<usize>) {
        let report = match result {
            Ok(message) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                Ok(Ack { partition: message.partition(), offset: message.offset() })
            }
            Err((error, _)) => Err(error.to_string()),
        };
        let mut reports = self.reports.lock().unwrap_or_else(|poison| poison.into_inner());
        let previous = reports.insert(*id, report);
        assert!(previous.is_none(), "two delivery reports for record {id}");
    }
}

/// One record to produce.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outgoing<'a> {
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(String, Option<Vec<u8>>)],
    pub timestamp_ms: Option<i64>,
}

/// A `BaseProducer` (acks=all unless overridden) that records each record's delivery report.
pub struct AckingProducer {
    producer: BaseProducer<AckContext>,
}

/// How long `send` keeps retrying while librdkafka's local queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(60);

impl AckingProducer {
    /// `acks=all`, `linger.ms=5`, idempotence off; `extra` overrides any of these (e.g.
    /// `enable.idempotence=true`).
    pub fn new(bootstrap: &str, extra: &[(&str, &str)]) -> anyhow::Result<AckingProducer> {
        let mut config = client_config(bootstrap);
        config
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("enable.idempotence", "false")
            .set("message.timeout.ms", "60000");
        apply(&mut config, extra);
        let producer =
            config.create_with_context(AckContext::default()).context("create producer")?;
        Ok(AckingProducer { producer })
    }

    /// Queues one record with the test's `id`; waits (bounded) while the local queue is full.
    pub fn send(&self, topic: &str, id: usize, record: Outgoing<'_>) -> anyhow::Result<()> {
        let headers = record.headers.iter().fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header { key, value: value.as_ref() })
        });
        let mut base: BaseRecord<'_, [u8], [u8], Box<usize>> =
            BaseRecord::with_opaque_to(topic, Box::new(id));
        base.partition = record.partition;
        base.key = record.key;
        base.payload = record.value;
        base.timestamp = record.timestamp_ms;
        if !record.headers.is_empty() {
            base.headers = Some(headers);
        }
        let deadline = Instant::now() + QUEUE_FULL_WAIT;
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if Instant::now() >= deadline {
                        bail!("producer queue stayed full for {QUEUE_FULL_WAIT:?}");
                    }
                    base = back;
                    self.producer.poll(Duration::from_millis(20));
                }
                Err((error, _)) => bail!("produce record {id}: {error}"),
            }
        }
    }

    /// Serves delivery callbacks for up to `timeout`.
    pub fn poll(&self, timeout: Duration) {
        self.producer.poll(timeout);
    }

    /// Waits until every queued record has a delivery report.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer.flush(timeout).with_context(|| format!("flush within {timeout:?}"))
    }

    /// Drops queued and in-flight records (their reports become errors) and serves the
    /// resulting callbacks.
    pub fn purge(&self) {
        self.producer.purge(PurgeConfig::default().queue().inflight());
        let _ = self.producer.flush(Duration::from_secs(5));
    }

    /// Number of records acknowledged so far (callbacks already served).
    pub fn acked(&self) -> usize {
        self.producer.context().acked.load(Ordering::Relaxed)
    }

    /// Every delivery report served so far.
    pub fn reports(&self) -> HashMap<usize, Result<Ack, String>> {
        let context = self.producer.context();
        context.reports.lock().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// The acknowledgement of every record in `ids`, or an error naming the first failure.
    pub fn acks_of(&self, ids: impl IntoIterator<Item = usize>) -> anyhow::Result<Vec<Ack>> {
        let reports = self.reports();
        ids.into_iter()
            .map(|id| match reports.get(&id) {
                Some(Ok(ack)) => Ok(*ack),
                Some(Err(error)) => bail!("record {id} was not acknowledged: {error}"),
                None => bail!("record {id} has no delivery report"),
            })
            .collect()
    }
}

/// One record as a consumer read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HeaderList,
    pub timestamp_ms: Option<i64>,
}

/// Errors a consumer may report before giving up (transient ones are logged and retried).
const CONSUMER_ERRORS_MAX: usize = 20;

/// Reads `partitions` of `topic` from their beginning up to the high watermarks they have when
/// this is called, with an assign-based consumer. Returns records in the order read (per
/// partition, offset order).
pub fn consume_all(
    bootstrap: &str,
    topic: &str,
    partitions: &[i32],
    extra: &[(&str, &str)],
) -> anyhow::Result<Vec<Consumed>> {
    let marks = watermarks(bootstrap, topic, partitions)?;
    let consumer = consumer(bootstrap, extra)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for &partition in partitions {
        let (low, high) = marks[&partition];
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
            remaining.insert(partition, high);
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok(out);
    }
    consumer.assign(&assignment).with_context(|| format!("assign {topic} {partitions:?}"))?;
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    let mut errors = Vec::new();
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            bail!(
                "consume {topic}: read {} records within {CONSUME_TIMEOUT:?}, still missing up \
                 to high watermarks {remaining:?} (watermarks at start {marks:?}); errors: \
                 {errors:?}",
                out.len()
            );
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Ok(message)) => {
                let partition = message.partition();
                let offset = message.offset();
                let Some(&high) = remaining.get(&partition) else { continue };
                if offset >= high {
                    remaining.remove(&partition);
                    continue;
                }
                out.push(Consumed {
                    partition,
                    offset,
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers: headers_of(&message),
                    timestamp_ms: message.timestamp().to_millis(),
                });
                if offset + 1 >= high {
                    remaining.remove(&partition);
                }
            }
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::BadMessage))) => {
                bail!("consume {topic}: the broker served a corrupt batch (CRC mismatch)");
            }
            Some(Err(error)) => {
                errors.push(error.to_string());
                if errors.len() > CONSUMER_ERRORS_MAX {
                    bail!("consume {topic}: too many consumer errors: {errors:?}");
                }
            }
        }
    }
    Ok(out)
}

fn headers_of<M: Message>(message: &M) -> HeaderList {
    let Some(headers) = message.headers() else { return Vec::new() };
    (0..headers.count())
        .map(|i| {
            let header = headers.get(i);
            (header.key.to_owned(), header.value.map(<[u8]>::to_vec))
        })
        .collect()
}

/// Value prefix of the records [`assert_node_serves`] writes.
pub const LIVENESS_PREFIX: &str = "still-serving-";

/// Produces one record to `topic`/`partition` and reads it back at the acknowledged offset:
/// proof that the node still serves clients.
pub fn assert_node_serves(bootstrap: &str, topic: &str, partition: i32) -> anyhow::Result<Ack> {
    let producer = AckingProducer::new(bootstrap, &[])?;
    let value = format!("{LIVENESS_PREFIX}{}", std::process::id()).into_bytes();
    producer.send(
        topic,
        0,
        // Keyed: a compacted topic refuses records without a key (KIP-467).
        Outgoing {
            partition: Some(partition),
            key: Some(LIVENESS_PREFIX.as_bytes()),
            value: Some(&value),
            ..Outgoing::default()
        },
    )?;
    producer.flush(CLIENT_TIMEOUT)?;
    let ack = producer.acks_of([0])?[0];
    let consumer = consumer(bootstrap, &[])?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(ack.offset))?;
    consumer.assign(&assignment).context("assign for read-back")?;
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(result) = consumer.poll(Duration::from_millis(500)) {
            let message = result.context("consume the record just produced")?;
            anyhow::ensure!(
                message.offset() == ack.offset && message.payload() == Some(&value[..]),
                "read back offset {} payload {:?}, expected offset {} payload {:?}",
                message.offset(),
                message.payload().map(String::from_utf8_lossy),
                ack.offset,
                String::from_utf8_lossy(&value)
            );
            return Ok(ack);
        }
    }
    bail!(
        "record produced at {topic}-{partition}@{} not read back within {CLIENT_TIMEOUT:?}",
        ack.offset
    )
}
