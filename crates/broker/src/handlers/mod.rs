//! Request handlers, one module per API family. Each returns its response, or a future of it
//! for requests that wait (acks, long polls).

pub(crate) mod admin;
pub(crate) mod api_versions;
mod coordinator;
mod epochs;
mod fetch;
pub(crate) mod groups;
mod list_offsets;
pub(crate) mod metadata;
mod produce;
mod producer_id;

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
    let part =
        ctx.replicas.get_or_open(image, node, topic, index).ok_or(KafkaError::KafkaStorageError)?;
    Ok((p.leader_epoch.0, part))
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
        R::Produce(req) => produce::handle(ctx, meta, req),
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
                let resp = producer_id::handle(&ctx, req).await;
                meta.encode(&resp)
            }))
        }
        R::JoinGroup(req) => {
            let client_id = frame.header.client_id.map(|c| c.to_string()).unwrap_or_default();
            groups::join(ctx, meta, req, client_id, peer).await
        }
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
        R::DescribeCluster(_) => now(meta.encode(&admin::describe_cluster(ctx, meta.version))),
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
        R::IncrementalAlterConfigs(req) => {
            now(meta.encode(&admin::incremental_alter_configs(ctx, req).await))
        }
    }
}

#[cfg(test)]
mod tests {
    use strom_metadata::{LeaderEpoch, NodeId, PartitionEpoch, PartitionImage};

    use super::check_leader;

    #[test]
    fn leader_checks_follow_kafkas_epoch_rules() {
        let p = PartitionImage {
            replicas: vec![NodeId(1), NodeId(2)],
            isr: vec![NodeId(1), NodeId(2)],
            leader: Some(NodeId(1)),
            leader_epoch: LeaderEpoch(5),
            partition_epoch: PartitionEpoch(7),
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
}
