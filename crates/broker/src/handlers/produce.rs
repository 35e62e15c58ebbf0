//! Produce: validate and append in arrival order, then acknowledge once the data is durable
//! (fsynced by group commit, or appended when the topic's `flush.messages` > 1).

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError as K;
use strom_metadata::config::is_internal_topic;
use strom_metadata::control::validate_topic_name;

use super::{leader_hint, now_ms, s, Meta, Reply};
use crate::errors::log_code;
use crate::partition::{AckError, Partition};
use crate::BrokerCtx;

/// The longest acknowledgement wait a request may ask for.
const ACK_TIMEOUT_MAX: Duration = Duration::from_secs(300);

struct Slot {
    topic: usize,
    response: PartitionProduceResponse,
    /// The partition and exclusive end offset to wait for, if the append succeeded.
    /// With the leader epoch the batch was appended at.
    wait: Option<(Arc<Partition>, i64, i32)>,
}

fn refused(
    index: i32,
    code: i16,
    message: Option<String>,
    version: i16,
) -> PartitionProduceResponse {
    let mut r = PartitionProduceResponse::default().with_index(index).with_error_code(code);
    if version >= 8 {
        r.error_message = message.map(s);
    }
    r
}

/// KIP-951 (v10+): partitions refused for leadership name the current leader, and the response
/// carries that leader's endpoint, so the client retries there without a Metadata round trip.
fn add_leader_hints(image: &strom_metadata::MetadataImage, resp: &mut ProduceResponse) {
    let mut endpoints = std::collections::BTreeMap::new();
    for t in &mut resp.responses {
        for p in &mut t.partition_responses {
            if let Some(hint) = leader_hint(image, t.name.as_str(), p.index, p.error_code) {
                p.current_leader = LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(hint.leader_id))
                    .with_leader_epoch(hint.leader_epoch);
                if let Some((id, host, port, rack)) = hint.endpoint {
                    endpoints.insert(id, (host, port, rack));
                }
            }
        }
    }
    resp.node_endpoints = endpoints
        .into_iter()
        .map(|(id, (host, port, rack))| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(id))
                .with_host(s(host))
                .with_port(port)
                .with_rack(rack.map(s))
        })
        .collect();
}

pub(crate) fn handle(ctx: &Arc<BrokerCtx>, meta: Meta, req: ProduceRequest) -> Reply {
    let version = meta.version;
    let image = ctx.image.current();
    let node = ctx.image.node;
    let now = now_ms();
    let acks = req.acks;
    let mut topics = Vec::with_capacity(req.topic_data.len());
    let mut slots = Vec::new();
    for (ti, td) in req.topic_data.into_iter().enumerate() {
        let name = td.name.0.to_string();
        topics.push(TopicProduceResponse::default().with_name(td.name.clone()));
        for pd in td.partition_data {
            let index = pd.index;
            let mut wait = None;
            let response = if !(-1..=1).contains(&acks) {
                refused(index, K::InvalidRequiredAcks.code(), None, version)
            } else if let Err(e) = validate_topic_name(&name) {
                refused(index, K::InvalidTopicException.code(), Some(e.to_string()), version)
            } else if is_internal_topic(&name) {
                // Only the coordinators write their own topics (as in Kafka).
                let why = format!("cannot append to internal topic {name}");
                refused(index, K::InvalidTopicException.code(), Some(why), version)
            } else {
                match image.partition(&name, index) {
                    None => refused(index, K::UnknownTopicOrPartition.code(), None, version),
                    Some(p) if p.leader != Some(node) => {
                        refused(index, K::NotLeaderOrFollower.code(), None, version)
                    }
                    Some(_) => match ctx.replicas.get_or_open(&image, node, &name, index) {
                        None => refused(index, K::KafkaStorageError.code(), None, version),
                        Some(part) => match (part.leader_view(), &pd.records) {
                            (None, _) => {
                                refused(index, K::NotLeaderOrFollower.code(), None, version)
                            }
                            (_, None) => refused(
                                index,
                                K::CorruptMessage.code(),
                                Some("no records".into()),
                                version,
                            ),
                            (Some((isr, _)), Some(_)) if acks == -1 && isr < part.min_insync() => {
                                refused(
                                    index,
                                    K::NotEnoughReplicas.code(),
                                    Some(format!(
                                        "ISR has {isr} replicas, min.insync.replicas is {}",
                                        part.min_insync()
                                    )),
                                    version,
                                )
                            }
                            (Some((_, epoch)), Some(records)) => {
                                match part.append(records, epoch, now) {
                                    Ok(info) => {
                                        let mut r = PartitionProduceResponse::default()
                                            .with_index(index)
                                            .with_base_offset(info.base_offset)
                                            .with_log_append_time_ms(
                                                info.log_append_time.unwrap_or(-1),
                                            );
                                        if version >= 5 {
                                            r.log_start_offset = part
                                                .log()
                                                .map(|l| l.log_start_offset())
                                                .unwrap_or(-1);
                                        }
                                        wait = Some((part.clone(), info.last_offset + 1, epoch));
                                        r
                                    }
                                    Err(e) => {
                                        tracing::debug!(topic = %name, partition = index, error = %e, "produce refused");
                                        refused(index, log_code(&e), Some(e.to_string()), version)
                                    }
                                }
                            }
                        },
                    },
                }
            };
            slots.push(Slot { topic: ti, response, wait });
        }
    }
    if acks == 0 {
        return Reply::Now(None);
    }
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64).min(ACK_TIMEOUT_MAX);
    let ctx = ctx.clone();
    Reply::Later(Box::pin(async move {
        for slot in &mut slots {
            if let Some((part, end, epoch)) = slot.wait.take() {
                match part.wait_acked(end, epoch, acks == -1, timeout).await {
                    Ok(())
                        if acks == -1
                            && part
                                .leader_view()
                                .is_none_or(|(isr, _)| isr < part.min_insync()) =>
                    {
                        slot.response.error_code = K::NotEnoughReplicasAfterAppend.code()
                    }
                    Ok(()) => {}
                    Err(AckError::TimedOut) => slot.response.error_code = K::RequestTimedOut.code(),
                    Err(AckError::Offline) => {
                        slot.response.error_code = K::KafkaStorageError.code()
                    }
                    // Kafka's answer when leadership moves while a produce waits: the batch
                    // may be cut from this log by the new leader, so it is not acknowledged.
                    Err(AckError::NotLeader) => {
                        slot.response.error_code = K::NotLeaderOrFollower.code()
                    }
                }
                if slot.response.error_code != 0 {
                    slot.response.base_offset = -1;
                }
            }
        }
        for slot in slots {
            topics[slot.topic].partition_responses.push(slot.response);
        }
        let mut resp = ProduceResponse::default().with_responses(topics);
        if version >= 10 {
            // The image now, not at append: leadership may have moved while we waited.
            add_leader_hints(&ctx.image.current(), &mut resp);
        }
        meta.encode(&resp)
    }))
}
