//! DeleteRecords (21): the leader moves each partition's log start offset to the requested
//! offset (-1: the high watermark) and answers the new low watermark once the log start
//! offset checkpoint holds it. Nothing is read or deleted here: reads below the new start are
//! refused at once, followers take it from their Fetch responses, and the retention pass
//! deletes the segments wholly below it (off the request path, without decoding a batch).

use std::sync::Arc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::{check_leader, local_partition};
use crate::errors::KafkaError;
use crate::BrokerCtx;

/// One partition: its new log start offset, or why not.
fn delete_one(ctx: &BrokerCtx, topic: &str, index: i32, offset: i64) -> Result<i64, KafkaError> {
    let image = ctx.image.current();
    check_leader(image.partition(topic, index), ctx.image.node, -1)?;
    let part = local_partition(ctx, &image, topic, index)?;
    Ok(part.delete_records(offset)?)
}

pub(crate) async fn delete_records(
    ctx: &Arc<BrokerCtx>,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    let mut moved = false;
    for t in req.topics {
        let name = t.name.0.to_string();
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                let mut r = DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1);
                match delete_one(ctx, &name, p.partition_index, p.offset) {
                    Ok(low_watermark) => {
                        moved = true;
                        r.low_watermark = low_watermark;
                    }
                    Err(e) => r.error_code = e.into(),
                }
                r
            })
            .collect();
        topics.push(
            DeleteRecordsTopicResult::default().with_name(t.name).with_partitions(partitions),
        );
    }
    if moved {
        // Answered only once a restart would find the new log starts.
        let written = {
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || ctx.replicas.write_log_start_checkpoint()).await
        };
        let failed = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => {
                ctx.replicas.health.fail("writing the log start offset checkpoint", &e);
                Some(KafkaError::KafkaStorageError)
            }
            Err(e) => {
                tracing::error!(error = %e, "writing the log start offset checkpoint failed");
                Some(KafkaError::UnknownServerError)
            }
        };
        if let Some(error) = failed {
            for r in topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                if r.error_code == 0 {
                    r.error_code = error.into();
                    r.low_watermark = -1;
                }
            }
        }
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
