//! The partition-leader side of transactions: WriteTxnMarkers (the transaction coordinator
//! asks each leader of a transaction's partitions to write its COMMIT or ABORT marker; on a
//! `__consumer_offsets` partition the group coordinator then counts or drops the transaction's
//! offsets), TxnOffsetCommit (a transaction's consumer offsets, written by the group
//! coordinator as transactional records) and DescribeProducers (the producer state a leader
//! keeps per partition).

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_request::WritableTxnMarker;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, ProducerId, TopicName,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse, WriteTxnMarkersRequest,
    WriteTxnMarkersResponse,
};
use strom_metadata::MetadataImage;
use strom_protocol::control::Marker;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::groups::{check_offset, send};
use super::{led_partition, Meta, Reply};
use crate::errors::{code_of, KafkaError};
use crate::group::{Cmd, CommitRequest, OffsetValue, OFFSETS_TOPIC};
use crate::BrokerCtx;

/// How long a marker waits for the ISR: Kafka's `request.timeout.ms` default, which its
/// leaders use for markers (the request carries no timeout).
const MARKER_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes one marker to one partition this broker leads; returns what to wait for.
fn write_marker(
    ctx: &BrokerCtx,
    image: &MetadataImage,
    marker: &WritableTxnMarker,
    topic: &str,
    index: i32,
) -> Result<(Arc<crate::partition::Partition>, i64, i32), KafkaError> {
    let (_, part) = led_partition(ctx, image, topic, index, -1)?;
    let (isr, leader_epoch) = part.leader_view().ok_or(KafkaError::NotLeaderOrFollower)?;
    if isr < part.min_insync() {
        return Err(KafkaError::NotEnoughReplicas);
    }
    let kind =
        Marker { commit: marker.transaction_result, coordinator_epoch: marker.coordinator_epoch };
    let info = part
        .append_marker(
            marker.producer_id.0,
            marker.producer_epoch,
            kind,
            leader_epoch,
            ctx.clock.now_ms(),
        )
        .inspect_err(|e| tracing::debug!(topic, partition = index, error = %e, "marker refused"))?;
    Ok((part, info.last_offset + 1, leader_epoch))
}

pub(crate) fn write_txn_markers(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: WriteTxnMarkersRequest,
) -> Reply {
    let image = ctx.image.current();
    let mut results = Vec::with_capacity(req.markers.len());
    let mut waits = Vec::new();
    for marker in &req.markers {
        let mut topics = Vec::with_capacity(marker.topics.len());
        for t in &marker.topics {
            let mut partitions = Vec::with_capacity(t.partition_indexes.len());
            for &index in &t.partition_indexes {
                let at = (results.len(), topics.len(), partitions.len());
                let mut r = WritableTxnMarkerPartitionResult::default().with_partition_index(index);
                match write_marker(ctx, &image, marker, t.name.as_str(), index) {
                    Ok(wait) => waits.push((at, wait)),
                    Err(e) => r.error_code = e.into(),
                }
                partitions.push(r);
            }
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions),
            );
        }
        results.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    let deadline = Instant::now() + MARKER_ACK_TIMEOUT;
    let ctx = ctx.clone();
    Reply::Later(Box::pin(async move {
        let acked = waits.into_iter().map(|(at, (part, end, leader_epoch))| async move {
            let timeout = deadline.saturating_duration_since(Instant::now());
            (at, part.index, part.wait_acked(end, leader_epoch, true, timeout).await)
        });
        for ((m, t, p), index, outcome) in futures::future::join_all(acked).await {
            let topic = &results[m].topics[t];
            match outcome {
                Err(e) => {
                    results[m].topics[t].partitions[p].error_code = KafkaError::from(e).into();
                }
                Ok(()) if topic.name.as_str() == OFFSETS_TOPIC => {
                    // The group coordinator counts (or drops) the transaction's offsets.
                    let producer_id = results[m].producer_id.0;
                    let commit = req.markers[m].transaction_result;
                    if let Some(shard) = ctx.groups.shard(index) {
                        let _ = shard.send(Cmd::TxnCompleted { producer_id, commit }).await;
                    }
                }
                Ok(()) => {}
            }
        }
        meta.encode(&WriteTxnMarkersResponse::default().with_markers(results))
    }))
}

pub(crate) fn describe_producers(
    ctx: &BrokerCtx,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let image = ctx.image.current();
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|&index| {
                    let mut r = PartitionResponse::default().with_partition_index(index);
                    let described = led_partition(ctx, &image, t.name.as_str(), index, -1)
                        .and_then(|(_, part)| {
                            let log = part.log().map_err(|e| KafkaError::from(&e))?;
                            Ok(log.producer_states().describe())
                        });
                    match described {
                        Ok(producers) => {
                            r.active_producers = producers
                                .into_iter()
                                .map(|p| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(p.producer_id))
                                        .with_producer_epoch(i32::from(p.epoch))
                                        .with_last_sequence(p.last_sequence.unwrap_or(-1))
                                        .with_last_timestamp(p.last_timestamp_ms)
                                        .with_coordinator_epoch(p.coordinator_epoch)
                                        .with_current_txn_start_offset(
                                            p.txn_first_offset.unwrap_or(-1),
                                        )
                                })
                                .collect();
                        }
                        Err(e) => r.error_code = e.into(),
                    }
                    r
                })
                .collect();
            TopicResponse::default().with_name(t.name).with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}

/// One partition of a TxnOffsetCommit and why it was refused, if it was.
type Refusal = (i32, Option<KafkaError>);

pub(crate) async fn txn_offset_commit(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: TxnOffsetCommitRequest,
) -> Reply {
    let image = ctx.image.current();
    let max_metadata = ctx.config.groups.offset_metadata_max_bytes;
    let now = ctx.clock.now_ms();
    let group_id = req.group_id.0.to_string();
    // What is not refused is written as one batch.
    let mut refusals: Vec<(TopicName, Vec<Refusal>)> = Vec::new();
    let mut offsets = Vec::new();
    for t in &req.topics {
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let value = OffsetValue {
                offset: p.committed_offset,
                leader_epoch: if meta.version >= 2 { p.committed_leader_epoch } else { -1 },
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default(),
                commit_timestamp_ms: now,
            };
            let topic = t.name.as_str();
            match check_offset(&image, max_metadata, topic, p.partition_index, value) {
                Ok(v) => {
                    offsets.push(((topic.to_owned(), p.partition_index), v));
                    parts.push((p.partition_index, None));
                }
                Err(e) => parts.push((p.partition_index, Some(e))),
            }
        }
        refusals.push((t.name.clone(), parts));
    }
    let build = move |all: Option<KafkaError>| {
        let topics = refusals
            .iter()
            .map(|(name, parts)| {
                let partitions = parts
                    .iter()
                    .map(|(index, refused)| {
                        TxnOffsetCommitResponsePartition::default()
                            .with_partition_index(*index)
                            .with_error_code(code_of(refused.or(all)))
                    })
                    .collect();
                TxnOffsetCommitResponseTopic::default()
                    .with_name(name.clone())
                    .with_partitions(partitions)
            })
            .collect();
        TxnOffsetCommitResponse::default().with_topics(topics)
    };
    if group_id.is_empty() {
        return Reply::Now(meta.encode(&build(Some(KafkaError::InvalidGroupId))));
    }
    let request = CommitRequest {
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|i| i.to_string()),
        generation_id: req.generation_id,
        offsets,
    };
    let producer = (req.producer_id.0, req.producer_epoch);
    let (tx, rx) = oneshot::channel();
    if let Err(e) =
        send(ctx, &group_id, Cmd::TxnCommit(group_id.clone(), producer, request, tx)).await
    {
        return Reply::Now(meta.encode(&build(Some(e))));
    }
    Reply::Later(Box::pin(async move {
        let outcome = match rx.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(KafkaError::from(e)),
            Err(_) => Some(KafkaError::NotCoordinator),
        };
        meta.encode(&build(outcome))
    }))
}
