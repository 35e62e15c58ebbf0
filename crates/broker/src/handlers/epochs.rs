//! OffsetsForLeaderEpoch: the end offset of a leader epoch in this leader's log, which a
//! follower (or a consumer after a leader change) uses to find where its log diverged.

use std::sync::Arc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::check_leader;
use crate::errors::KafkaError;
use crate::BrokerCtx;

pub(crate) fn handle(
    ctx: &Arc<BrokerCtx>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let image = ctx.image.current();
    let node = ctx.image.node;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.topic.0.to_string();
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let out = EpochEndOffset::default().with_partition(p.partition);
                    let answer = (|| -> Result<(i32, i64), KafkaError> {
                        let pi = check_leader(
                            image.partition(&name, p.partition),
                            node,
                            p.current_leader_epoch,
                        )?;
                        let part = ctx
                            .replicas
                            .get_or_open(&image, node, &name, p.partition)
                            .ok_or(KafkaError::KafkaStorageError)?;
                        let log = part.log()?;
                        if p.leader_epoch == pi.leader_epoch.0 {
                            return Ok((p.leader_epoch, log.log_end_offset()));
                        }
                        Ok(log.end_offset_for_epoch(p.leader_epoch).unwrap_or((-1, -1)))
                    })();
                    match answer {
                        Ok((epoch, end)) => out.with_leader_epoch(epoch).with_end_offset(end),
                        Err(e) => {
                            out.with_error_code(e.into()).with_leader_epoch(-1).with_end_offset(-1)
                        }
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default().with_topic(t.topic).with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
