//! ListOffsets: earliest, latest, max timestamp, and the first offset at or after a time.

use std::sync::Arc;

use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use strom_metadata::MetadataImage;

use super::led_partition;
use crate::errors::KafkaError;
use crate::BrokerCtx;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

/// (timestamp, offset, leader epoch) for one partition's query. A read_committed query
/// (isolation level 1, v2+) sees the log only up to the last stable offset.
fn offset_for(
    ctx: &BrokerCtx,
    image: &MetadataImage,
    topic: &str,
    version: i16,
    read_committed: bool,
    lp: &ListOffsetsPartition,
) -> Result<(i64, i64, i32), KafkaError> {
    // v4 added current_leader_epoch: older requests carry no claim to check.
    let claimed = if version >= 4 { lp.current_leader_epoch } else { -1 };
    let (epoch, part) = led_partition(ctx, image, topic, lp.partition_index, claimed)?;
    let log = part.log()?;
    let hw = part.progress().high_watermark;
    let hw = match log.first_unstable_offset() {
        Some(first) if read_committed => first.min(hw),
        _ => hw,
    };
    Ok(match lp.timestamp {
        LATEST => (-1, hw, epoch),
        EARLIEST | EARLIEST_LOCAL => (-1, log.log_start_offset(), epoch),
        MAX_TIMESTAMP => match log.max_timestamp() {
            Some((offset, ts)) if offset < hw => (ts, offset, epoch),
            _ => (-1, -1, -1),
        },
        ts if ts >= 0 => match log.offset_for_timestamp(ts)? {
            Some((offset, found)) if offset < hw => (found, offset, epoch),
            _ => (-1, -1, -1),
        },
        _ => return Err(KafkaError::InvalidRequest),
    })
}

pub(crate) fn handle(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let image = ctx.image.current();
    let read_committed = version >= 2 && req.isolation_level == 1;
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for lp in &t.partitions {
            let mut r =
                ListOffsetsPartitionResponse::default().with_partition_index(lp.partition_index);
            match offset_for(ctx, &image, &name, version, read_committed, lp) {
                Ok((timestamp, offset, epoch)) => {
                    r.timestamp = timestamp;
                    r.offset = offset;
                    if version >= 4 {
                        r.leader_epoch = epoch;
                    }
                }
                Err(e) => {
                    r.error_code = e.into();
                    r.offset = -1;
                }
            }
            partitions.push(r);
        }
        topics.push(
            ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
