//! OffsetsForLeaderEpoch: the end offset of a leader epoch in this leader's log, which a
//! follower (or a consumer after a leader change) uses to find where its log diverged.

use std::sync::Arc;

use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderPartition;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use strom_metadata::MetadataImage;

use super::led_partition;
use crate::errors::KafkaError;
use crate::BrokerCtx;

/// The end offset of `epoch` in this leader's log, as (epoch, end offset).
fn epoch_end(
    ctx: &BrokerCtx,
    image: &MetadataImage,
    topic: &str,
    p: &OffsetForLeaderPartition,
) -> Result<(i32, i64), KafkaError> {
    let (leader_epoch, part) =
        led_partition(ctx, image, topic, p.partition, p.current_leader_epoch)?;
    let log = part.log()?;
    if p.leader_epoch == leader_epoch {
        return Ok((p.leader_epoch, log.log_end_offset()));
    }
    Ok(log.end_offset_for_epoch(p.leader_epoch).unwrap_or((-1, -1)))
}

pub(crate) fn handle(
    ctx: &Arc<BrokerCtx>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let image = ctx.image.current();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.topic.0.to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let out = EpochEndOffset::default().with_partition(p.partition);
            partitions.push(match epoch_end(ctx, &image, &name, p) {
                Ok((epoch, end)) => out.with_leader_epoch(epoch).with_end_offset(end),
                Err(e) => out.with_error_code(e.into()).with_leader_epoch(-1).with_end_offset(-1),
            });
        }
        topics.push(
            OffsetForLeaderTopicResult::default().with_topic(t.topic).with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
