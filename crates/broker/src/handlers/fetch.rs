//! Fetch: serves stored batches up to the high watermark without decoding them, and
//! long-polls until `min_bytes` have arrived or `max_wait_ms` has passed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{
    FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use kafka_protocol::ResponseError as K;
use strom_metadata::{MetadataImage, NodeId, TopicId};
use strom_protocol::request::{encode_response_sharing, SHARED_BYTES_MIN};

use super::Meta;
use super::{check_leader, leader_hint, s};
use crate::errors::log_code;
use crate::BrokerCtx;

/// The longest long-poll a request may ask for.
const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);

fn error_partition(index: i32, code: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(code)
        .with_high_watermark(-1)
        .with_records(Some(Bytes::new()))
}

/// One pass over the requested partitions; returns the response and the record bytes in it.
fn read_once(
    ctx: &BrokerCtx,
    image: &MetadataImage,
    version: i16,
    req: &FetchRequest,
    replica: Option<NodeId>,
) -> (FetchResponse, usize, bool) {
    let node = ctx.image.node;
    let now = super::now_ms();
    let mut budget = if req.max_bytes <= 0 { usize::MAX } else { req.max_bytes as usize };
    let mut total = 0usize;
    let mut any_error = false;
    let mut endpoints = std::collections::BTreeMap::new();
    let mut responses = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let topic = if version >= 13 {
            image.topic_by_id(TopicId(*t.topic_id.as_bytes()))
        } else {
            image.topic(t.topic.as_str())
        };
        let mut out = FetchableTopicResponse::default();
        if version >= 13 {
            out.topic_id = t.topic_id;
        } else {
            out.topic = t.topic.clone();
        }
        let Some(topic) = topic else {
            let code = if version >= 13 { K::UnknownTopicId } else { K::UnknownTopicOrPartition };
            out.partitions =
                t.partitions.iter().map(|p| error_partition(p.partition, code.code())).collect();
            any_error = true;
            responses.push(out);
            continue;
        };
        for fp in &t.partitions {
            let index = fp.partition;
            let data = (|| {
                // v9 added current_leader_epoch: older requests carry no claim to check.
                let claimed = if version >= 9 { fp.current_leader_epoch } else { -1 };
                let p = check_leader(topic.partitions.get(&index), node, claimed)?;
                let part = ctx
                    .replicas
                    .get_or_open(image, node, &topic.name, index)
                    .ok_or(K::KafkaStorageError.code())?;
                if let Some(r) = replica {
                    // A follower's fetch offset is its durable end: it may move the HW.
                    if !part.on_follower_fetch(r, fp.fetch_offset, p.leader_epoch.0, now) {
                        return Err(K::NotLeaderOrFollower.code());
                    }
                }
                let progress = part.progress();
                if progress.offline {
                    return Err(K::KafkaStorageError.code());
                }
                let hw = progress.high_watermark;
                let log = part.log().map_err(|e| log_code(&e))?;
                let (start, end) = (log.log_start_offset(), log.log_end_offset());
                if fp.fetch_offset < start || fp.fetch_offset > end {
                    return Err(K::OffsetOutOfRange.code());
                }
                // Consumers read up to the high watermark, followers up to the log end.
                let bound = if replica.is_some() { end } else { hw };
                let records = if fp.fetch_offset >= bound || budget == 0 {
                    Bytes::new()
                } else {
                    let max = (fp.partition_max_bytes.max(0) as usize).min(budget);
                    log.read(fp.fetch_offset, max, bound).map_err(|e| log_code(&e))?
                };
                drop(log);
                budget = budget.saturating_sub(records.len());
                total += records.len();
                let mut d = PartitionData::default()
                    .with_partition_index(index)
                    .with_high_watermark(hw)
                    .with_last_stable_offset(hw)
                    .with_records(Some(records));
                if version >= 5 {
                    d.log_start_offset = start;
                }
                Ok(d)
            })();
            out.partitions.push(data.unwrap_or_else(|code| {
                any_error = true;
                let mut d = error_partition(index, code);
                if version >= 12 {
                    // KIP-951: name the current leader so the client can go straight there.
                    if let Some(hint) = leader_hint(image, &topic.name, index, code) {
                        d.current_leader = LeaderIdAndEpoch::default()
                            .with_leader_id(BrokerId(hint.leader_id))
                            .with_leader_epoch(hint.leader_epoch);
                        if let Some((id, host, port, rack)) = hint.endpoint {
                            endpoints.insert(id, (host, port, rack));
                        }
                    }
                }
                d
            }));
        }
        responses.push(out);
    }
    let mut resp = FetchResponse::default().with_responses(responses);
    if version >= 16 {
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
    (resp, total, any_error)
}

/// The response frame as a chain of buffers in which the stored batches are shared, not copied.
fn encode(meta: Meta, resp: &FetchResponse) -> Option<Vec<Bytes>> {
    let shared: Vec<Bytes> = resp
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .filter_map(|p| p.records.clone())
        .filter(|r| r.len() >= SHARED_BYTES_MIN)
        .collect();
    match encode_response_sharing(meta.api_key, meta.version, meta.correlation_id, resp, &shared) {
        Ok(chain) => Some(chain),
        Err(e) => {
            // A bug (a field set that this version lacks): say so loudly, answer nothing.
            tracing::error!(version = meta.version, error = %e, "cannot encode Fetch response");
            debug_assert!(false, "cannot encode Fetch v{}: {e}", meta.version);
            None
        }
    }
}

pub(crate) async fn handle(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: FetchRequest,
) -> Option<Vec<Bytes>> {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MAX);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let mut arrived = ctx.replicas.data_arrived.subscribe();
    let replica_id =
        if meta.version >= 15 { req.replica_state.replica_id.0 } else { req.replica_id.0 };
    let replica = (replica_id >= 0).then_some(NodeId(replica_id));
    loop {
        arrived.borrow_and_update();
        let image = ctx.image.current();
        let (resp, bytes, any_error) = read_once(ctx, &image, meta.version, &req, replica);
        let done = bytes >= min_bytes || any_error || tokio::time::Instant::now() >= deadline;
        if done {
            return encode(meta, &resp);
        }
        tokio::select! {
            changed = arrived.changed() => if changed.is_err() { return encode(meta, &resp) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
