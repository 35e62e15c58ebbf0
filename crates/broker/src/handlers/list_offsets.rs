//! ListOffsets: earliest, latest, max timestamp, and the first offset at or after a time.

use std::sync::Arc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::check_leader;
use crate::errors::KafkaError;
use crate::BrokerCtx;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

pub(crate) fn handle(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let image = ctx.image.current();
    let node = ctx.image.node;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let partitions = t
                .partitions
                .into_iter()
                .map(|lp| {
                    let index = lp.partition_index;
                    let answer = (|| -> Result<(i64, i64, i32), KafkaError> {
                        // v4 added current_leader_epoch: older requests carry no claim to check.
                        let claimed = if version >= 4 { lp.current_leader_epoch } else { -1 };
                        let p = check_leader(image.partition(&name, index), node, claimed)?;
                        let part = ctx
                            .replicas
                            .get_or_open(&image, node, &name, index)
                            .ok_or(KafkaError::KafkaStorageError)?;
                        let hw = part.progress().high_watermark;
                        let log = part.log()?;
                        let epoch = p.leader_epoch.0;
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
                    })();
                    let mut r = ListOffsetsPartitionResponse::default().with_partition_index(index);
                    match answer {
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
                    r
                })
                .collect();
            ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
