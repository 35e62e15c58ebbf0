//! Produce: validate and append in arrival order, then acknowledge once the data is durable
//! (fsynced by group commit, or appended when the topic's `flush.messages` > 1). A request's
//! partitions wait for their acknowledgements together, until one deadline: `timeout_ms`
//! bounds the whole request, not each partition.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use strom_log::LogError;
use strom_metadata::config::is_internal_topic;
use strom_metadata::control::validate_topic_name;
use strom_metadata::MetadataImage;
use strom_protocol::batch::BatchHeader;
use tokio::time::Instant;

use super::{leader_hint, local_partition, now_ms, s, Meta, Reply};
use crate::errors::KafkaError;
use crate::partition::Partition;
use crate::txn::{TopicPartition, TxnProducer};
use crate::BrokerCtx;

/// The longest acknowledgement wait a request may ask for.
const ACK_TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// Record errors quoted in the partition's `error_message` (all are in `record_errors`).
const QUOTED_RECORD_ERRORS_MAX: usize = 3;

/// Why a partition's records were not appended: the error, and for v8+ clients a message and
/// the records at fault (KIP-467: `(index among the partition's records, message)`).
struct Refusal {
    error: KafkaError,
    message: Option<String>,
    record_errors: Vec<(i32, String)>,
}

impl Refusal {
    fn new(error: KafkaError, message: impl Into<String>) -> Refusal {
        Refusal { error, message: Some(message.into()), record_errors: Vec::new() }
    }

    /// A refusal of the append to `topic`-`index`: records without a key on a compacted
    /// topic are named one by one, as Kafka does.
    fn of_append(e: LogError, topic: &str, index: i32) -> Refusal {
        let LogError::RecordsWithoutKey { records } = &e else {
            return Refusal::new(KafkaError::from(&e), e.to_string());
        };
        let why = format!(
            "Compacted topic cannot accept message without key in topic partition {topic}-{index}."
        );
        let record_errors: Vec<(i32, String)> = records.iter().map(|&i| (i, why.clone())).collect();
        let quoted: Vec<String> = (record_errors.iter().take(QUOTED_RECORD_ERRORS_MAX))
            .map(|(i, m)| format!("record {i}: {m}"))
            .collect();
        let message = format!(
            "{} record(s) refused, the first {} quoted: {}",
            record_errors.len(),
            quoted.len(),
            quoted.join("; ")
        );
        Refusal { error: KafkaError::from(&e), message: Some(message), record_errors }
    }
}

impl From<KafkaError> for Refusal {
    fn from(error: KafkaError) -> Refusal {
        Refusal { error, message: None, record_errors: Vec::new() }
    }
}

/// A batch in the page cache, waiting to be acknowledged.
struct Appended {
    partition: Arc<Partition>,
    /// Exclusive end offset of the batch.
    end: i64,
    /// The leader epoch the batch was appended at: a change means it may be cut.
    leader_epoch: i32,
}

impl Appended {
    /// Waits until `deadline` for the batch to be acknowledged: on every ISR replica
    /// (acks=all) or durable here (acks=1).
    async fn acknowledged(self, all_replicas: bool, deadline: Instant) -> Result<(), KafkaError> {
        let part = &self.partition;
        let timeout = deadline.saturating_duration_since(Instant::now());
        part.wait_acked(self.end, self.leader_epoch, all_replicas, timeout).await?;
        // As Kafka: acks=all is refused when the ISR shrank below min.insync.replicas while
        // the batch waited, although the replicas that are left have it.
        if all_replicas && part.leader_view().is_none_or(|(isr, _)| isr < part.min_insync()) {
            return Err(KafkaError::NotEnoughReplicasAfterAppend);
        }
        Ok(())
    }
}

/// One partition of the request, in request order.
struct Slot {
    topic: usize,
    response: PartitionProduceResponse,
    error: Option<KafkaError>,
    wait: Option<Appended>,
}

impl Slot {
    async fn acknowledge(&mut self, all_replicas: bool, deadline: Instant) {
        let Some(appended) = self.wait.take() else { return };
        if let Err(e) = appended.acknowledged(all_replicas, deadline).await {
            self.error = Some(e);
            self.response.error_code = e.into();
            self.response.base_offset = -1;
        }
    }
}

/// Validates one partition's records and appends them to its log.
fn append(
    ctx: &BrokerCtx,
    image: &MetadataImage,
    acks: i16,
    topic: &str,
    pd: &PartitionProduceData,
    now: i64,
    version: i16,
) -> Result<(PartitionProduceResponse, Appended), Refusal> {
    let node = ctx.image.node;
    let index = pd.index;
    if !(-1..=1).contains(&acks) {
        return Err(KafkaError::InvalidRequiredAcks.into());
    }
    validate_topic_name(topic)
        .map_err(|e| Refusal::new(KafkaError::InvalidTopicException, e.to_string()))?;
    if is_internal_topic(topic) {
        // Only the coordinators write their own topics (as in Kafka).
        let why = format!("cannot append to internal topic {topic}");
        return Err(Refusal::new(KafkaError::InvalidTopicException, why));
    }
    let p = image.partition(topic, index).ok_or(KafkaError::UnknownTopicOrPartition)?;
    if p.leader != Some(node) {
        return Err(KafkaError::NotLeaderOrFollower.into());
    }
    let part = super::local_partition(ctx, image, topic, index)?;
    let (isr, leader_epoch) = part.leader_view().ok_or(KafkaError::NotLeaderOrFollower)?;
    let records = (pd.records.as_ref())
        .ok_or_else(|| Refusal::new(KafkaError::CorruptMessage, "no records"))?;
    if version < super::ZSTD_PRODUCE_VERSION_MIN && super::holds_zstd(records) {
        let why = format!("zstd needs Produce v{} or later", super::ZSTD_PRODUCE_VERSION_MIN);
        return Err(Refusal::new(KafkaError::UnsupportedCompressionType, why));
    }
    if acks == -1 && isr < part.min_insync() {
        let why = format!("ISR has {isr} replicas, min.insync.replicas is {}", part.min_insync());
        return Err(Refusal::new(KafkaError::NotEnoughReplicas, why));
    }
    let info = part.append(records, leader_epoch, now).map_err(|e| {
        tracing::debug!(topic, partition = index, error = %e, "produce refused");
        Refusal::of_append(e, topic, index)
    })?;
    ctx.metrics.bytes_in(topic, records.len());
    let mut response = PartitionProduceResponse::default()
        .with_index(index)
        .with_base_offset(info.base_offset)
        .with_log_append_time_ms(info.log_append_time.unwrap_or(-1));
    if version >= 5 {
        response.log_start_offset = part.log().map(|l| l.log_start_offset()).unwrap_or(-1);
    }
    Ok((response, Appended { partition: part, end: info.last_offset + 1, leader_epoch }))
}

fn refused(index: i32, refusal: Refusal, version: i16) -> PartitionProduceResponse {
    let mut r =
        PartitionProduceResponse::default().with_index(index).with_error_code(refusal.error.into());
    if version >= 8 {
        r.error_message = refusal.message.map(s);
        r.record_errors = (refusal.record_errors.into_iter())
            .map(|(batch_index, message)| {
                BatchIndexAndErrorMessage::default()
                    .with_batch_index(batch_index)
                    .with_batch_index_error_message(Some(s(message)))
            })
            .collect();
    }
    r
}

/// A leader's Kafka endpoint: (host, port, rack) by node id.
type Endpoints = BTreeMap<i32, (String, i32, Option<String>)>;

/// KIP-951 (v10+): a partition refused for leadership names the current leader, and the
/// response carries that leader's endpoint, so the client retries there without a Metadata
/// round trip.
fn add_leader_hint(image: &MetadataImage, topic: &str, slot: &mut Slot, endpoints: &mut Endpoints) {
    let Some(error) = slot.error else { return };
    let Some(hint) = leader_hint(image, topic, slot.response.index, error) else { return };
    slot.response.current_leader = LeaderIdAndEpoch::default()
        .with_leader_id(BrokerId(hint.leader_id))
        .with_leader_epoch(hint.leader_epoch);
    if let Some((id, host, port, rack)) = hint.endpoint {
        endpoints.insert(id, (host, port, rack));
    }
}

/// KIP-890 part 1: the partitions whose batch opens a transaction here (transactional, and its
/// producer has no transaction open in the partition at that epoch) are checked with the
/// transaction coordinator before anything is appended; those it does not confirm are refused
/// with its answer. Awaited in the request's turn, so a connection's produces stay in order.
async fn verify_transactional(
    ctx: &BrokerCtx,
    image: &MetadataImage,
    req: &ProduceRequest,
) -> HashMap<(String, i32), KafkaError> {
    let transactional_id = req.transactional_id.as_ref().map(|t| t.to_string());
    let mut wanted: BTreeMap<(i64, i16), Vec<TopicPartition>> = BTreeMap::new();
    for td in &req.topic_data {
        for pd in &td.partition_data {
            let Some(header) = pd.records.as_ref().and_then(|r| BatchHeader::parse(r).ok()) else {
                continue; // the append refuses it
            };
            if !header.is_transactional() || header.producer_id < 0 {
                continue;
            }
            let Ok(part) = local_partition(ctx, image, td.name.as_str(), pd.index) else {
                continue; // the append refuses it
            };
            let open = part.log().is_ok_and(|log| {
                log.producer_states().in_transaction(header.producer_id, header.producer_epoch)
            });
            if !open {
                let tp = TopicPartition { topic: td.name.to_string(), partition: pd.index };
                wanted.entry((header.producer_id, header.producer_epoch)).or_default().push(tp);
            }
        }
    }
    let mut refused = HashMap::new();
    for ((producer_id, producer_epoch), partitions) in wanted {
        let producer = TxnProducer {
            transactional_id: transactional_id.clone().unwrap_or_default(),
            producer_id,
            producer_epoch,
        };
        if let Err(e) = crate::txn::verify(ctx, producer, partitions.clone()).await {
            tracing::debug!(producer_id, error = ?e, "transactional produce not verified");
            refused.extend(partitions.into_iter().map(|tp| ((tp.topic, tp.partition), e)));
        }
    }
    refused
}

pub(crate) async fn handle(ctx: &Arc<BrokerCtx>, meta: Meta, req: ProduceRequest) -> Reply {
    let version = meta.version;
    let image = ctx.image.current();
    let now = now_ms();
    let acks = req.acks;
    let unverified = verify_transactional(ctx, &image, &req).await;
    let mut topics = Vec::with_capacity(req.topic_data.len());
    let mut slots = Vec::new();
    for (topic, td) in req.topic_data.into_iter().enumerate() {
        let name = td.name.0.to_string();
        for pd in &td.partition_data {
            let verified = match unverified.get(&(name.clone(), pd.index)) {
                Some(&e) => Err(Refusal::from(e)),
                None => append(ctx, &image, acks, &name, pd, now, version),
            };
            slots.push(match verified {
                Ok((response, appended)) => {
                    Slot { topic, response, error: None, wait: Some(appended) }
                }
                Err(refusal) => Slot {
                    topic,
                    error: Some(refusal.error),
                    response: refused(pd.index, refusal, version),
                    wait: None,
                },
            });
        }
        topics.push(TopicProduceResponse::default().with_name(td.name));
    }
    if acks == 0 {
        return Reply::Now(None);
    }
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64).min(ACK_TIMEOUT_MAX);
    let deadline = Instant::now() + timeout;
    let ctx = ctx.clone();
    // Only acks=all waits on other replicas (Kafka's delayed produce); acks=1 waits for the
    // local flush alone.
    let parked = (acks == -1 && slots.iter().any(|s| s.wait.is_some()))
        .then(|| ctx.metrics.produce_parked());
    Reply::Later(Box::pin(async move {
        let _parked = parked;
        let waits = slots.iter_mut().map(|slot| slot.acknowledge(acks == -1, deadline));
        futures::future::join_all(waits).await;
        // The image now, not at append: leadership may have moved while we waited.
        let image = (version >= 10).then(|| ctx.image.current());
        let mut endpoints = Endpoints::new();
        for mut slot in slots {
            if let Some(image) = &image {
                add_leader_hint(image, topics[slot.topic].name.as_str(), &mut slot, &mut endpoints);
            }
            topics[slot.topic].partition_responses.push(slot.response);
        }
        let mut resp = ProduceResponse::default().with_responses(topics);
        resp.node_endpoints = super::node_endpoints!(endpoints, NodeEndpoint);
        meta.encode(&resp)
    }))
}
