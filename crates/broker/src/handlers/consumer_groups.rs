//! KIP-848's consumer group APIs: ConsumerGroupHeartbeat (the member's whole conversation with
//! its coordinator: join, heartbeat, assignment, leave) and ConsumerGroupDescribe, translated to
//! the coordinator's commands as the classic group APIs are ([`super::groups`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member,
    TopicPartitions as DescribedPartitions,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as HeartbeatAssignment, TopicPartitions,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, GroupId, TopicName,
};
use strom_metadata::{MetadataImage, TopicId};
use tokio::sync::oneshot;

use super::groups::{later, send};
use super::{s, Meta, Reply};
use crate::errors::KafkaError;
use crate::group::consumer::{Assignment, ConsumerGroup, Heartbeat, ImageTopics};
use crate::group::Cmd;
use crate::BrokerCtx;

/// KIP-848's `authorized_operations` when the request did not ask for them.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

fn refused(meta: Meta, error: KafkaError, message: Option<String>) -> Reply {
    let resp = ConsumerGroupHeartbeatResponse::default()
        .with_error_code(error.into())
        .with_error_message(message.map(s))
        .with_member_epoch(-1);
    match meta.encode(&resp) {
        Some(b) => Reply::Now(Some(b)),
        None => Reply::Close("cannot encode ConsumerGroupHeartbeat response".to_owned()),
    }
}

pub(crate) async fn heartbeat(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: ConsumerGroupHeartbeatRequest,
    client_id: String,
    peer: std::net::SocketAddr,
) -> Reply {
    let group_id = req.group_id.0.to_string();
    if group_id.is_empty() {
        return refused(meta, KafkaError::InvalidGroupId, None);
    }
    if meta.version >= 1 && req.member_id.is_empty() {
        // v1: the member chooses its id (a UUID) before it joins.
        let why = "member_id must be set (a UUID chosen by the member)";
        return refused(meta, KafkaError::InvalidRequest, Some(why.to_owned()));
    }
    let owned = req.topic_partitions.map(|topics| {
        let mut owned = Assignment::new();
        for t in topics {
            let parts: BTreeSet<i32> = t.partitions.into_iter().collect();
            owned.entry(TopicId(*t.topic_id.as_bytes())).or_default().extend(parts);
        }
        owned
    });
    let heartbeat = Heartbeat {
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|i| i.to_string()),
        rack_id: req.rack_id.map(|r| r.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .map(|names| names.into_iter().map(|n| n.0.to_string()).collect()),
        subscribed_topic_regex: req.subscribed_topic_regex.map(|r| r.to_string()),
        server_assignor: req.server_assignor.map(|a| a.to_string()),
        owned,
        client_id,
        client_host: format!("/{}", peer.ip()),
    };
    let (tx, rx) = oneshot::channel();
    let topics = ImageTopics(ctx.image.current());
    let cmd = Cmd::ConsumerHeartbeat { group_id: group_id.clone(), heartbeat, topics, reply: tx };
    if let Err(e) = send(ctx, &group_id, cmd).await {
        return refused(meta, e, None);
    }
    later(async move {
        let resp = match rx.await {
            Ok(Ok(answer)) => ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(s(answer.member_id)))
                .with_member_epoch(answer.member_epoch)
                .with_heartbeat_interval_ms(answer.heartbeat_interval_ms)
                .with_assignment(answer.assignment.map(|a| {
                    HeartbeatAssignment::default().with_topic_partitions(
                        a.into_iter()
                            .map(|(topic, parts)| {
                                TopicPartitions::default()
                                    .with_topic_id(uuid::Uuid::from_bytes(topic.0))
                                    .with_partitions(parts.into_iter().collect())
                            })
                            .collect(),
                    )
                })),
            Ok(Err(e)) => ConsumerGroupHeartbeatResponse::default()
                .with_error_code(KafkaError::from(e).into())
                .with_member_epoch(-1),
            Err(_) => ConsumerGroupHeartbeatResponse::default()
                .with_error_code(KafkaError::NotCoordinator.into())
                .with_member_epoch(-1),
        };
        meta.encode(&resp)
    })
}

pub(crate) fn describe(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: ConsumerGroupDescribeRequest,
) -> Reply {
    let ctx = ctx.clone();
    later(async move {
        let mut groups = Vec::with_capacity(req.group_ids.len());
        for g in req.group_ids {
            let group_id = g.0.to_string();
            let described = DescribedGroup::default()
                .with_group_id(GroupId(s(group_id.clone())))
                .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
            let (tx, rx) = oneshot::channel();
            let answer =
                match send(&ctx, &group_id, Cmd::ConsumerDescribe(group_id.clone(), tx)).await {
                    Err(e) => Err(e),
                    Ok(()) => rx.await.map_err(|_| KafkaError::NotCoordinator),
                };
            let image = ctx.image.current();
            groups.push(match answer {
                Err(e) => described.with_error_code(e.into()),
                Ok(None) => described
                    .with_error_code(KafkaError::GroupIdNotFound.into())
                    .with_error_message(Some(s(format!("{group_id} is not a consumer group")))),
                Ok(Some(group)) => describe_group(described, &group, &image),
            });
        }
        meta.encode(&ConsumerGroupDescribeResponse::default().with_groups(groups))
    })
}

fn describe_group(
    described: DescribedGroup,
    group: &ConsumerGroup,
    image: &MetadataImage,
) -> DescribedGroup {
    let assignment = |a: &Assignment| {
        let topics = a
            .iter()
            .map(|(id, parts)| {
                let name = image.topic_by_id(*id).map(|t| t.name.clone()).unwrap_or_default();
                DescribedPartitions::default()
                    .with_topic_id(uuid::Uuid::from_bytes(id.0))
                    .with_topic_name(TopicName(s(name)))
                    .with_partitions(parts.iter().copied().collect())
            })
            .collect();
        DescribedAssignment::default().with_topic_partitions(topics)
    };
    let empty = BTreeMap::new();
    let members = group
        .members
        .values()
        .map(|m| {
            Member::default()
                .with_member_id(s(m.member_id.clone()))
                .with_instance_id(m.instance_id.clone().map(s))
                .with_rack_id(m.rack_id.clone().map(s))
                .with_member_epoch(m.member_epoch)
                .with_client_id(s(m.client_id.clone()))
                .with_client_host(s(m.client_host.clone()))
                .with_subscribed_topic_names(
                    m.subscribed.iter().map(|t| TopicName(s(t.clone()))).collect(),
                )
                .with_subscribed_topic_regex(m.regex.as_ref().map(|r| s(regex_of(r.as_str()))))
                .with_assignment(assignment(&m.assigned))
                .with_target_assignment(assignment(
                    group.target.get(&m.member_id).unwrap_or(&empty),
                ))
                // 1: a member of the consumer protocol (0: of the classic one).
                .with_member_type(1)
        })
        .collect();
    described
        .with_group_state(s(group.state().name()))
        .with_group_epoch(group.group_epoch)
        .with_assignment_epoch(group.assignment_epoch)
        .with_assignor_name(s(group.assignor.clone()))
        .with_members(members)
}

/// The member's pattern as it sent it (compiled anchored as `^(?:pattern)$`).
fn regex_of(anchored: &str) -> String {
    anchored.strip_prefix("^(?:").and_then(|r| r.strip_suffix(")$")).unwrap_or(anchored).to_owned()
}
