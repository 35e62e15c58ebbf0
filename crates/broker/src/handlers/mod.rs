//! Request handlers, one module per API family. Each returns its response, or a future of it
//! for requests that wait (acks, long polls).

pub(crate) mod admin;
pub(crate) mod api_versions;
mod authorized;
mod consumer_groups;
mod coordinator;
mod epochs;
mod fetch;
pub(crate) mod groups;
mod list_offsets;
mod log_dirs;
pub(crate) mod metadata;
mod partition_admin;
mod produce;
mod producer_id;
mod quorum;
mod quotas;
mod records;
mod topic_partitions;
mod transactions;
mod txn_coordinator;

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::Encodable;
use strom_protocol::request::{encode_response, RequestFrame};
use strom_protocol::Request as R;

use crate::errors::KafkaError;
use crate::BrokerCtx;

pub(crate) type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What the connection does with a request.
pub(crate) enum Reply {
    /// Send this now (`None`: send nothing, e.g. acks=0).
    Now(Option<Bytes>),
    /// Send what this future yields, in this request's turn.
    Later(BoxFuture<Option<Bytes>>),
    /// Like `Later`, for a frame written as a chain of buffers back to back (Fetch: the stored
    /// record batches go out as they are, without being copied into the response).
    LaterChain(BoxFuture<Option<Vec<Bytes>>>),
    /// Close the connection; the reason is logged.
    Close(String),
}

/// The header facts a response needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
}

impl Meta {
    pub fn encode<R: Encodable>(&self, body: &R) -> Option<Bytes> {
        match encode_response(self.api_key, self.version, self.correlation_id, body) {
            Ok(b) => Some(b),
            Err(e) => {
                // A bug (a field set that this version lacks): say so loudly, answer nothing.
                tracing::error!(api = ?self.api_key, version = self.version, error = %e,
                    "cannot encode response");
                debug_assert!(false, "cannot encode {:?} v{}: {e}", self.api_key, self.version);
                None
            }
        }
    }
}

pub(crate) use crate::clock::now_ms;
pub(crate) use crate::wire::s;

/// Checks that this broker leads the partition at the epoch the client believes current
/// (negative: the client did not say): UNKNOWN_TOPIC_OR_PARTITION, NOT_LEADER_OR_FOLLOWER,
/// FENCED_LEADER_EPOCH (client behind) or UNKNOWN_LEADER_EPOCH (client ahead) otherwise.
/// Produce v7 and Fetch v10 are the first versions whose clients know zstd (KIP-110): older
/// ones are answered UNSUPPORTED_COMPRESSION_TYPE for zstd batches, as Kafka answers them.
pub(crate) const ZSTD_PRODUCE_VERSION_MIN: i16 = 7;
pub(crate) const ZSTD_FETCH_VERSION_MIN: i16 = 10;

/// Whether a batch of `records` is compressed with zstd; reads batch headers only, and stops at
/// the first bytes that are not a whole batch (a fetch's last batch may be cut).
pub(crate) fn holds_zstd(records: &Bytes) -> bool {
    use strom_protocol::batch::{Batches, Compression};
    Batches::new(records.clone())
        .map_while(Result::ok)
        .any(|(header, _)| header.compression() == Ok(Compression::Zstd))
}

pub(crate) fn check_leader(
    partition: Option<&strom_metadata::PartitionImage>,
    node: strom_metadata::NodeId,
    current_leader_epoch: i32,
) -> Result<&strom_metadata::PartitionImage, KafkaError> {
    let p = partition.ok_or(KafkaError::UnknownTopicOrPartition)?;
    if p.leader != Some(node) {
        return Err(KafkaError::NotLeaderOrFollower);
    }
    if current_leader_epoch >= 0 && current_leader_epoch < p.leader_epoch.0 {
        return Err(KafkaError::FencedLeaderEpoch);
    }
    if current_leader_epoch > p.leader_epoch.0 {
        return Err(KafkaError::UnknownLeaderEpoch);
    }
    Ok(p)
}

/// The open local log of a partition of `image`'s topic (the same topic id: a log of a
/// deleted topic that the reconcile has not removed yet is not the recreated topic's). Handlers
/// never open logs: until the replica manager has reconciled an image that places the partition
/// here, its log is not served, and the answer is Kafka's for a partition the metadata knows and
/// the replica manager does not host: NOT_LEADER_OR_FOLLOWER (KAFKA_STORAGE_ERROR once the log
/// directory has failed), so the client retries.
pub(crate) fn local_partition(
    ctx: &BrokerCtx,
    image: &strom_metadata::MetadataImage,
    topic: &str,
    index: i32,
) -> Result<std::sync::Arc<crate::partition::Partition>, KafkaError> {
    let topic_id = image.topic(topic).ok_or(KafkaError::UnknownTopicOrPartition)?.id;
    match ctx.replicas.get(topic, index).filter(|p| p.topic_id == topic_id) {
        Some(p) => Ok(p),
        None if ctx.replicas.health.failed() => Err(KafkaError::KafkaStorageError),
        None => Err(KafkaError::NotLeaderOrFollower),
    }
}

/// The local log of a partition this broker leads at the epoch the request claims (-1: no
/// claim), with the leader epoch: what ListOffsets and OffsetsForLeaderEpoch read.
pub(crate) fn led_partition(
    ctx: &BrokerCtx,
    image: &strom_metadata::MetadataImage,
    topic: &str,
    index: i32,
    claimed_leader_epoch: i32,
) -> Result<(i32, std::sync::Arc<crate::partition::Partition>), KafkaError> {
    let node = ctx.image.node;
    let p = check_leader(image.partition(topic, index), node, claimed_leader_epoch)?;
    Ok((p.leader_epoch.0, local_partition(ctx, image, topic, index)?))
}

/// KIP-951: the leader a client should turn to after NOT_LEADER_OR_FOLLOWER or
/// FENCED_LEADER_EPOCH on this partition, as (leader id, leader epoch, its Kafka endpoint).
pub(crate) struct LeaderHint {
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub endpoint: Option<(i32, String, i32, Option<String>)>,
}

pub(crate) fn leader_hint(
    image: &strom_metadata::MetadataImage,
    topic: &str,
    partition: i32,
    error: KafkaError,
) -> Option<LeaderHint> {
    if !matches!(error, KafkaError::NotLeaderOrFollower | KafkaError::FencedLeaderEpoch) {
        return None;
    }
    let p = image.partition(topic, partition)?;
    let leader = p.leader?;
    let endpoint = image.brokers.get(&leader).and_then(|b| {
        let e = b.endpoint(metadata::LISTENER)?;
        Some((leader.0, e.host.clone(), e.port as i32, b.rack.clone()))
    });
    Some(LeaderHint { leader_id: leader.0, leader_epoch: p.leader_epoch.0, endpoint })
}

/// KIP-951: a response's `node_endpoints`, made of the leaders' endpoints gathered from
/// [`LeaderHint`]s (node id -> (host, port, rack)) as `$endpoint`, the response's own
/// `NodeEndpoint`. A macro because Produce and Fetch each have their own generated type, with
/// no trait in common.
macro_rules! node_endpoints {
    ($endpoints:expr, $endpoint:ty) => {
        $endpoints
            .into_iter()
            .map(|(id, (host, port, rack))| {
                <$endpoint>::default()
                    .with_node_id(::kafka_protocol::messages::BrokerId(id))
                    .with_host($crate::wire::s(host))
                    .with_port(port)
                    .with_rack(rack.map($crate::wire::s))
            })
            .collect()
    };
}
pub(crate) use node_endpoints;

pub(crate) async fn handle(
    ctx: &Arc<BrokerCtx>,
    frame: RequestFrame,
    peer: std::net::SocketAddr,
) -> Reply {
    let meta = Meta {
        api_key: frame.api_key,
        version: frame.api_version,
        correlation_id: frame.header.correlation_id,
    };
    let now = |b: Option<Bytes>| match b {
        Some(b) => Reply::Now(Some(b)),
        None => Reply::Close(format!("cannot encode {:?} response", meta.api_key)),
    };
    match frame.request {
        R::ApiVersions(_) => now(meta.encode(&api_versions::response())),
        R::Metadata(req) => {
            let ctx = ctx.clone();
            Reply::Later(Box::pin(async move {
                let resp = metadata::handle(&ctx, meta.version, req).await;
                meta.encode(&resp)
            }))
        }
        R::Produce(req) => produce::handle(ctx, meta, req).await,
        R::Fetch(req) => {
            let ctx = ctx.clone();
            Reply::LaterChain(Box::pin(async move { fetch::handle(&ctx, meta, req, peer).await }))
        }
        R::OffsetForLeaderEpoch(req) => now(meta.encode(&epochs::handle(ctx, req))),
        R::FindCoordinator(req) => {
            let ctx = ctx.clone();
            Reply::Later(Box::pin(async move {
                meta.encode(&coordinator::handle(&ctx, meta.version, req).await)
            }))
        }
        R::InitProducerId(req) => {
            let ctx = ctx.clone();
            Reply::Later(Box::pin(async move {
                let resp = producer_id::handle(&ctx, meta.version, req).await;
                meta.encode(&resp)
            }))
        }
        R::AddPartitionsToTxn(req) => txn_coordinator::add_partitions(ctx, meta, req).await,
        R::AddOffsetsToTxn(req) => txn_coordinator::add_offsets(ctx, meta, req).await,
        R::EndTxn(req) => txn_coordinator::end_txn(ctx, meta, req).await,
        R::DescribeTransactions(req) => txn_coordinator::describe_transactions(ctx, meta, req),
        R::ListTransactions(req) => txn_coordinator::list_transactions(ctx, meta, req),
        R::WriteTxnMarkers(req) => transactions::write_txn_markers(ctx, meta, req),
        R::TxnOffsetCommit(req) => transactions::txn_offset_commit(ctx, meta, req).await,
        R::DescribeProducers(req) => now(meta.encode(&transactions::describe_producers(ctx, req))),
        R::JoinGroup(req) => {
            let client_id = frame.header.client_id.map(|c| c.to_string()).unwrap_or_default();
            groups::join(ctx, meta, req, client_id, peer).await
        }
        R::ConsumerGroupHeartbeat(req) => {
            let client_id = frame.header.client_id.map(|c| c.to_string()).unwrap_or_default();
            consumer_groups::heartbeat(ctx, meta, req, client_id, peer).await
        }
        R::ConsumerGroupDescribe(req) => consumer_groups::describe(ctx, meta, req),
        R::SyncGroup(req) => groups::sync(ctx, meta, req).await,
        R::Heartbeat(req) => groups::heartbeat(ctx, meta, req).await,
        R::LeaveGroup(req) => groups::leave(ctx, meta, req).await,
        R::OffsetCommit(req) => groups::offset_commit(ctx, meta, req).await,
        R::OffsetFetch(req) => groups::offset_fetch(ctx, meta, req).await,
        R::OffsetDelete(req) => groups::offset_delete(ctx, meta, req).await,
        R::ListGroups(req) => groups::list_groups(ctx, meta, req).await,
        R::DescribeGroups(req) => groups::describe_groups(ctx, meta, req).await,
        R::DeleteGroups(req) => groups::delete_groups(ctx, meta, req).await,
        R::ListOffsets(req) => now(meta.encode(&list_offsets::handle(ctx, meta.version, req))),
        R::DescribeCluster(req) => {
            now(meta.encode(&admin::describe_cluster(ctx, meta.version, &req)))
        }
        R::DescribeConfigs(req) => {
            now(meta.encode(&admin::describe_configs(ctx, meta.version, req)))
        }
        // Admin writes run in arrival order: the reader waits for each, as Kafka does.
        R::CreateTopics(req) => {
            now(meta.encode(&admin::create_topics(ctx, meta.version, req).await))
        }
        R::DeleteTopics(req) => {
            now(meta.encode(&admin::delete_topics(ctx, meta.version, req).await))
        }
        R::CreatePartitions(req) => now(meta.encode(&admin::create_partitions(ctx, req).await)),
        R::AlterConfigs(req) => now(meta.encode(&admin::alter_configs(ctx, req).await)),
        R::DeleteRecords(req) => {
            let ctx = ctx.clone();
            Reply::Later(Box::pin(
                async move { meta.encode(&records::delete_records(&ctx, req).await) },
            ))
        }
        R::DescribeLogDirs(req) => {
            let ctx = ctx.clone();
            Reply::Later(Box::pin(async move {
                meta.encode(&log_dirs::describe_log_dirs(&ctx, meta.version, req).await)
            }))
        }
        R::ElectLeaders(req) => {
            let ctx = ctx.clone();
            Reply::Later(Box::pin(async move {
                meta.encode(&partition_admin::elect_leaders(&ctx, meta.version, req).await)
            }))
        }
        R::AlterPartitionReassignments(req) => {
            let ctx = ctx.clone();
            Reply::Later(Box::pin(async move {
                meta.encode(&partition_admin::alter_partition_reassignments(&ctx, req).await)
            }))
        }
        R::ListPartitionReassignments(req) => {
            now(meta.encode(&partition_admin::list_partition_reassignments(ctx, req)))
        }
        R::DescribeTopicPartitions(req) => {
            now(meta.encode(&topic_partitions::describe(&ctx.image.current(), &req)))
        }
        R::IncrementalAlterConfigs(req) => {
            now(meta.encode(&admin::incremental_alter_configs(ctx, req).await))
        }
        R::DescribeClientQuotas(req) => {
            now(meta.encode(&quotas::describe_client_quotas(ctx, &req)))
        }
        R::AlterClientQuotas(req) => now(meta.encode(&quotas::alter_client_quotas(ctx, req).await)),
        // The metadata quorum (KIP-853): answered by the active controller; a voter change may
        // wait for a new voter to catch up, so it answers in its turn, not in the reader.
        R::DescribeQuorum(req) => {
            let ctx = ctx.clone();
            Reply::Later(Box::pin(async move {
                meta.encode(&quorum::describe_quorum(&ctx, meta.version, req).await)
            }))
        }
        R::AddRaftVoter(req) => {
            let ctx = ctx.clone();
            Reply::Later(Box::pin(
                async move { meta.encode(&quorum::add_raft_voter(&ctx, req).await) },
            ))
        }
        R::RemoveRaftVoter(req) => {
            let ctx = ctx.clone();
            Reply::Later(Box::pin(async move {
                meta.encode(&quorum::remove_raft_voter(&ctx, req).await)
            }))
        }
        R::UpdateRaftVoter(req) => {
            let ctx = ctx.clone();
            Reply::Later(Box::pin(async move {
                meta.encode(&quorum::update_raft_voter(&ctx, req).await)
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use strom_metadata::records::{metadata_record::Record, RemoveTopicRecord};
    use strom_metadata::{LeaderEpoch, MetadataImage, NodeId, PartitionEpoch, PartitionImage};

    use super::{check_leader, local_partition};
    use crate::errors::KafkaError;
    use crate::image::ImageListener;
    use crate::replica::test_support::{commit, created, ctx, reconcile_once, ME};

    #[test]
    fn leader_checks_follow_kafkas_epoch_rules() {
        let p = PartitionImage {
            replicas: vec![NodeId(1), NodeId(2)],
            isr: vec![NodeId(1), NodeId(2)],
            leader: Some(NodeId(1)),
            leader_epoch: LeaderEpoch(5),
            partition_epoch: PartitionEpoch(7),
            adding_replicas: vec![],
            removing_replicas: vec![],
        };
        assert!(check_leader(Some(&p), NodeId(1), -1).is_ok(), "no claim: no check");
        assert!(check_leader(Some(&p), NodeId(1), 5).is_ok());
        let code =
            |p, node, epoch| check_leader(p, NodeId(node), epoch).map(|_| ()).map_err(i16::from);
        assert_eq!(code(Some(&p), 1, 4).unwrap_err(), 74, "FENCED_LEADER_EPOCH");
        assert_eq!(code(Some(&p), 1, 6).unwrap_err(), 75, "UNKNOWN_LEADER_EPOCH");
        assert_eq!(code(Some(&p), 2, 5).unwrap_err(), 6, "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(code(None, 1, 5).unwrap_err(), 3, "UNKNOWN_TOPIC_OR_PARTITION");
    }

    /// Handlers never open a log: until the reconcile has opened it, a partition the image
    /// places here answers NOT_LEADER_OR_FOLLOWER, and one of a deleted topic is not served
    /// under its recreated name.
    #[tokio::test]
    async fn a_partition_whose_log_the_reconcile_has_not_opened_is_not_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = ImageListener::new(ME);
        let ctx = ctx(&listener, dir.path());
        let mut rx = ctx.image.subscribe();
        let mut image = MetadataImage::default();
        commit(&listener, &mut image, 1, &created("a", 1));
        let served = local_partition(&ctx, &ctx.image.current(), "a", 0).map(|_| ());
        assert_eq!(served, Err(KafkaError::NotLeaderOrFollower));
        assert!(
            !dir.path().join(strom_log::partition_dir_name("a", 0)).exists(),
            "a handler opened a log"
        );
        reconcile_once(&ctx, &mut rx, true).await;
        assert!(local_partition(&ctx, &ctx.image.current(), "a", 0).is_ok());

        // Deleted and recreated: the old log is still open until the next reconcile.
        let remove = Record::RemoveTopic(RemoveTopicRecord { topic_id: vec![1; 16] });
        commit(&listener, &mut image, 2, &[remove]);
        let gone = local_partition(&ctx, &ctx.image.current(), "a", 0).map(|_| ());
        assert_eq!(gone, Err(KafkaError::UnknownTopicOrPartition));
        commit(&listener, &mut image, 3, &created("a", 2));
        assert!(ctx.replicas.get("a", 0).is_some(), "the old log");
        let served = local_partition(&ctx, &ctx.image.current(), "a", 0).map(|_| ());
        assert_eq!(served, Err(KafkaError::NotLeaderOrFollower));
        reconcile_once(&ctx, &mut rx, false).await;
        let p = local_partition(&ctx, &ctx.image.current(), "a", 0).expect("the new log");
        assert_eq!(p.topic_id, strom_metadata::TopicId([2; 16]));
        ctx.replicas.close_all().await.expect("closes");
    }

    /// KIP-951: Produce's and Fetch's `node_endpoints` both carry each hinted leader's host,
    /// port and rack, in node id order.
    #[test]
    fn node_endpoints_carry_each_leaders_host_port_and_rack() {
        use kafka_protocol::messages::{fetch_response, produce_response};
        let endpoints = || {
            std::collections::BTreeMap::from([
                (3, ("b".to_string(), 9093, None)),
                (1, ("a".to_string(), 9092, Some("r1".to_string()))),
            ])
        };
        let expected =
            [(1, "a".to_string(), 9092, Some("r1".to_string())), (3, "b".to_string(), 9093, None)];
        let fetch: Vec<fetch_response::NodeEndpoint> =
            super::node_endpoints!(endpoints(), fetch_response::NodeEndpoint);
        let fields = |e: &fetch_response::NodeEndpoint| {
            (e.node_id.0, e.host.to_string(), e.port, e.rack.as_ref().map(|r| r.to_string()))
        };
        assert_eq!(fetch.iter().map(fields).collect::<Vec<_>>(), expected);
        let produce: Vec<produce_response::NodeEndpoint> =
            super::node_endpoints!(endpoints(), produce_response::NodeEndpoint);
        let fields = |e: &produce_response::NodeEndpoint| {
            (e.node_id.0, e.host.to_string(), e.port, e.rack.as_ref().map(|r| r.to_string()))
        };
        assert_eq!(produce.iter().map(fields).collect::<Vec<_>>(), expected);
    }
}
