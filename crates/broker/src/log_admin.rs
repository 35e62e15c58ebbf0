//! Partition logs for the admin API and the CLI (`strom topic delete-records`, `strom cluster
//! log-dirs`): asks the brokers over the Kafka protocol, as Kafka's `kafka-delete-records` and
//! `kafka-log-dirs` tools do. DeleteRecords goes to the partition's leader; DescribeLogDirs to
//! every live broker. The Kafka answers become the admin API's `pb` messages here, in pure
//! functions.

use std::sync::Arc;

use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::{
    ApiKey, DeleteRecordsRequest, DeleteRecordsResponse, DescribeLogDirsRequest,
    DescribeLogDirsResponse, TopicName,
};
use kafka_protocol::ResponseError;
use strom_metadata::NodeId;
use strom_proto::admin as pb;

use crate::peer::{ask_every_live_broker, leader_endpoint, LeaderUnreachable, PeerConn};
use crate::wire::{error_name, s};
use crate::BrokerCtx;

const CLIENT_ID: &str = "strom-admin";
const DELETE_RECORDS_VERSION: i16 = 2;
const DESCRIBE_LOG_DIRS_VERSION: i16 = 4;
/// How long the leader may take to move the log start offset and checkpoint it.
const DELETE_RECORDS_TIMEOUT_MS: i32 = 30_000;

/// Partition logs as the admin API shows them, asked of the brokers. The binary plugs it into
/// the admin service.
pub struct BrokerLogAdmin {
    pub(crate) ctx: Arc<BrokerCtx>,
}

/// Why records could not be deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogAdminError {
    #[error("topic '{topic}' has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("partition {partition} of topic '{topic}' has no leader to ask")]
    NoLeader { topic: String, partition: i32 },
    #[error("broker {0} has no endpoint this broker can reach")]
    EndpointMissing(i32),
    /// The connection or the exchange failed (the peer module's reason).
    #[error("{0}")]
    Peer(String),
    #[error("broker {broker} answered DeleteRecords without partition {partition} of '{topic}'")]
    Incomplete { broker: i32, topic: String, partition: i32 },
    #[error("DeleteRecords to broker {broker}: {}", error_name(*.code))]
    Refused { broker: i32, code: i16 },
}

impl LogAdminError {
    /// The partition does not exist: NOT_FOUND to the caller.
    pub fn is_not_found(&self) -> bool {
        matches!(self, LogAdminError::UnknownPartition { .. })
    }
}

impl From<String> for LogAdminError {
    fn from(reason: String) -> Self {
        LogAdminError::Peer(reason)
    }
}

impl BrokerLogAdmin {
    /// Moves the log start offset of `topic`-`partition` to `offset` (-1: the high watermark)
    /// at its leader; the low watermark it answers.
    pub async fn delete_records(
        &self,
        topic: String,
        partition: i32,
        offset: i64,
    ) -> Result<pb::DeleteRecordsResponse, LogAdminError> {
        let ctx = &self.ctx;
        let image = ctx.image.current();
        let (leader, addr) = match leader_endpoint(&ctx.config, &image, &topic, partition) {
            Ok(found) => found,
            Err(LeaderUnreachable::UnknownPartition) => {
                return Err(LogAdminError::UnknownPartition { topic, partition })
            }
            Err(LeaderUnreachable::NoLeader) => {
                return Err(LogAdminError::NoLeader { topic, partition })
            }
            Err(LeaderUnreachable::EndpointMissing(leader)) => {
                return Err(LogAdminError::EndpointMissing(leader.0))
            }
        };
        let req = DeleteRecordsRequest::default()
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(TopicName(s(topic.clone())))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(partition)
                    .with_offset(offset)])])
            .with_timeout_ms(DELETE_RECORDS_TIMEOUT_MS);
        let mut conn = PeerConn::connect(&addr).await?;
        let answer: DeleteRecordsResponse =
            conn.call(ApiKey::DeleteRecords, DELETE_RECORDS_VERSION, &req, CLIENT_ID).await?;
        deleted(answer, topic, partition, leader)
    }

    /// Every live broker's log directory, by broker id; those that could not be asked are
    /// named in `unreachable`.
    pub async fn describe_log_dirs(&self) -> pb::DescribeLogDirsResponse {
        let ctx = &self.ctx;
        let image = ctx.image.current();
        // No topics (null): every partition.
        let req = DescribeLogDirsRequest::default().with_topics(None);
        let key = ApiKey::DescribeLogDirs;
        log_dirs(
            ask_every_live_broker(
                &ctx.config,
                &image,
                key,
                DESCRIBE_LOG_DIRS_VERSION,
                &req,
                CLIENT_ID,
            )
            .await,
        )
    }
}

/// The leader's DeleteRecords answer for `topic`-`partition`.
fn deleted(
    answer: DeleteRecordsResponse,
    topic: String,
    partition: i32,
    leader: NodeId,
) -> Result<pb::DeleteRecordsResponse, LogAdminError> {
    let answered = answer
        .topics
        .into_iter()
        .filter(|t| t.name.0.as_str() == topic)
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == partition);
    let Some(answered) = answered else {
        return Err(LogAdminError::Incomplete { broker: leader.0, topic, partition });
    };
    if answered.error_code == ResponseError::UnknownTopicOrPartition.code() {
        return Err(LogAdminError::UnknownPartition { topic, partition });
    }
    if answered.error_code != 0 {
        return Err(LogAdminError::Refused { broker: leader.0, code: answered.error_code });
    }
    Ok(pb::DeleteRecordsResponse {
        topic,
        partition,
        leader_id: leader.0,
        low_watermark: answered.low_watermark,
    })
}

/// Every broker's DescribeLogDirs answer, as log directories by broker id.
fn log_dirs(
    answers: Vec<(NodeId, Result<DescribeLogDirsResponse, String>)>,
) -> pb::DescribeLogDirsResponse {
    let mut out = pb::DescribeLogDirsResponse::default();
    for (broker, answer) in answers {
        let Ok(answer) = answer else {
            out.unreachable.push(broker.0);
            continue;
        };
        for result in answer.results {
            let mut partitions: Vec<pb::LogDirPartition> = result
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions.iter().map(|p| pb::LogDirPartition {
                        topic: t.name.0.to_string(),
                        partition: p.partition_index,
                        size_bytes: p.partition_size,
                        offset_lag: p.offset_lag,
                    })
                })
                .collect();
            partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            out.log_dirs.push(pb::LogDir {
                broker_id: broker.0,
                path: result.log_dir.to_string(),
                error: (result.error_code != 0).then(|| error_name(result.error_code)),
                total_bytes: result.total_bytes,
                usable_bytes: result.usable_bytes,
                partitions,
            });
        }
    }
    out.log_dirs.sort_by_key(|d| d.broker_id);
    out.unreachable.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::delete_records_response::{
        DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
    };
    use kafka_protocol::messages::describe_log_dirs_response::{
        DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
    };

    use super::*;

    #[test]
    fn a_leaders_answer_becomes_the_low_watermark_or_its_refusal() {
        let answer = |code, low| {
            DeleteRecordsResponse::default().with_topics(vec![DeleteRecordsTopicResult::default()
                .with_name(TopicName(s("t".to_owned())))
                .with_partitions(vec![DeleteRecordsPartitionResult::default()
                    .with_partition_index(2)
                    .with_error_code(code)
                    .with_low_watermark(low)])])
        };
        let ok = deleted(answer(0, 40), "t".into(), 2, NodeId(3)).expect("deleted");
        assert_eq!((ok.leader_id, ok.low_watermark), (3, 40));
        let refused = deleted(answer(1, -1), "t".into(), 2, NodeId(3));
        assert_eq!(refused, Err(LogAdminError::Refused { broker: 3, code: 1 }));
        assert!(deleted(answer(3, -1), "t".into(), 2, NodeId(3)).is_err_and(|e| e.is_not_found()));
        let other = deleted(answer(0, 40), "t".into(), 1, NodeId(3));
        assert!(matches!(other, Err(LogAdminError::Incomplete { .. })));
    }

    #[test]
    fn log_dirs_come_by_broker_with_partitions_in_order_and_the_silent_named() {
        let dir = |partitions: Vec<(&str, i32)>| {
            let topics = partitions
                .into_iter()
                .map(|(t, p)| {
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(s(t.to_owned())))
                        .with_partitions(vec![DescribeLogDirsPartition::default()
                            .with_partition_index(p)
                            .with_partition_size(100)])
                })
                .collect();
            DescribeLogDirsResponse::default().with_results(vec![DescribeLogDirsResult::default()
                .with_log_dir(s("/data".to_owned()))
                .with_topics(topics)
                .with_total_bytes(10)
                .with_usable_bytes(5)])
        };
        let out = log_dirs(vec![
            (NodeId(2), Ok(dir(vec![("b", 0), ("a", 1), ("a", 0)]))),
            (NodeId(3), Err("refused".to_owned())),
            (NodeId(1), Ok(dir(vec![]))),
        ]);
        assert_eq!(out.unreachable, [3]);
        assert_eq!(out.log_dirs.iter().map(|d| d.broker_id).collect::<Vec<_>>(), [1, 2]);
        let order: Vec<(String, i32)> =
            out.log_dirs[1].partitions.iter().map(|p| (p.topic.clone(), p.partition)).collect();
        assert_eq!(order, [("a".into(), 0), ("a".into(), 1), ("b".into(), 0)]);
        assert_eq!((out.log_dirs[1].total_bytes, out.log_dirs[1].error.as_deref()), (10, None));
    }
}
