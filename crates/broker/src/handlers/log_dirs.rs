//! DescribeLogDirs (35): the node's one log directory, with each local partition's size on
//! disk and offset lag (0 on the leader; on a follower, how far its log end is behind the
//! leader's last reported high watermark), and (v4) the file system's total and usable bytes.
//! Sizes are the logs' in-memory segment sizes: nothing is read from disk but one statvfs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::s;
use crate::errors::KafkaError;
use crate::BrokerCtx;

/// (total, usable) bytes of the file system holding `dir`, as Kafka reports them (usable: what
/// an unprivileged writer may still use); `None` when statvfs fails.
fn space_of(dir: &Path) -> Option<(i64, i64)> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    let block = stat.f_frsize.max(1);
    let bytes = |blocks: u64| i64::try_from(blocks.saturating_mul(block)).unwrap_or(i64::MAX);
    Some((bytes(stat.f_blocks), bytes(stat.f_bavail)))
}

/// The partitions of the request's topics (`None`: every local partition) by topic name.
fn partitions(
    ctx: &BrokerCtx,
    wanted: Option<&BTreeMap<String, Vec<i32>>>,
) -> Vec<DescribeLogDirsTopic> {
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for p in ctx.replicas.all() {
        if let Some(wanted) = wanted {
            if !wanted.get(&p.topic).is_some_and(|indexes| indexes.contains(&p.index)) {
                continue;
            }
        }
        let Ok(log) = p.log() else { continue };
        let (size, end) = (log.size_bytes(), log.log_end_offset());
        drop(log);
        topics.entry(p.topic.clone()).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(p.index)
                .with_partition_size(i64::try_from(size).unwrap_or(i64::MAX))
                .with_offset_lag(p.offset_lag(end))
                .with_is_future_key(false),
        );
    }
    topics
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            DescribeLogDirsTopic::default()
                .with_name(TopicName(s(name)))
                .with_partitions(partitions)
        })
        .collect()
}

pub(crate) async fn describe_log_dirs(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let wanted: Option<BTreeMap<String, Vec<i32>>> = req
        .topics
        .map(|topics| topics.into_iter().map(|t| (t.topic.0.to_string(), t.partitions)).collect());
    let dir = ctx.config.data_dir.clone();
    let shown = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(s(shown.display().to_string()))
        .with_total_bytes(-1)
        .with_usable_bytes(-1);
    if ctx.replicas.health.failed() {
        // Kafka's answer for an offline log directory: the error and no partitions.
        result.error_code = KafkaError::KafkaStorageError.into();
    } else {
        result.topics = partitions(ctx, wanted.as_ref());
        if version >= 4 {
            // One statvfs: off the async workers, as every file system call.
            let space = tokio::task::spawn_blocking(move || space_of(&dir)).await.ok().flatten();
            if let Some((total, usable)) = space {
                result.total_bytes = total;
                result.usable_bytes = usable;
            }
        }
    }
    DescribeLogDirsResponse::default().with_results(vec![result])
}
