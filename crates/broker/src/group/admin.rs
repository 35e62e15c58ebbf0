//! Consumer groups for the admin API and `strom group`: asks the brokers over the Kafka
//! protocol, as Kafka's `kafka-consumer-groups` tool does. ListGroups goes to every live broker
//! (each lists the groups it coordinates); a description comes from the group's coordinator
//! (DescribeGroups, OffsetFetch) and the partition leaders (ListOffsets, for the lag).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Buf;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ApiKey, BrokerId, ConsumerProtocolAssignment, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, ListGroupsRequest, ListGroupsResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::Decodable;
use strom_metadata::{MetadataImage, NodeId};
use strom_proto::admin as pb;

use super::{partition_for, OFFSETS_TOPIC};
use crate::peer::{broker_addr, PeerConn};
use crate::wire::{error_name, s};
use crate::BrokerCtx;

const CLIENT_ID: &str = "strom-admin";

/// Consumer groups as the admin API shows them (its `pb` messages), asked of the brokers.
/// The binary plugs it into the admin service.
pub struct BrokerGroupAdmin {
    pub(crate) ctx: Arc<BrokerCtx>,
}

/// Why a group could not be described: its coordinator is unknown or could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum GroupAdminError {
    #[error("{OFFSETS_TOPIC} does not exist yet: no group has looked up its coordinator")]
    OffsetsTopicMissing,
    #[error("{OFFSETS_TOPIC}-{0} has no leader: no coordinator")]
    CoordinatorUnknown(i32),
    #[error("coordinator {0} has no PLAINTEXT endpoint")]
    CoordinatorEndpointMissing(i32),
    /// The connection or the exchange failed (the peer module's reason).
    #[error("{0}")]
    Peer(String),
    #[error("empty {0} response")]
    EmptyResponse(&'static str),
    #[error("{api}: {}", error_name(*.code))]
    Refused { api: &'static str, code: i16 },
}

impl From<String> for GroupAdminError {
    fn from(reason: String) -> Self {
        GroupAdminError::Peer(reason)
    }
}

impl BrokerGroupAdmin {
    /// Every group of the cluster: each live broker lists the groups it coordinates; the
    /// brokers that could not be asked are named in `unreachable`.
    pub async fn list_groups(&self) -> pb::ListGroupsResponse {
        let ctx = &self.ctx;
        let image = ctx.image.current();
        let brokers: Vec<(NodeId, Option<String>)> =
            image.live_brokers().map(|b| (b.id, broker_addr(&ctx.config, &image, b.id))).collect();
        let asks = brokers.into_iter().map(|(id, addr)| async move {
            let Some(addr) = addr else {
                return (id, Err("no PLAINTEXT endpoint".to_owned()));
            };
            let answer = async {
                let mut conn = PeerConn::connect(&addr).await?;
                let resp: ListGroupsResponse = conn
                    .call(ApiKey::ListGroups, 4, &ListGroupsRequest::default(), CLIENT_ID)
                    .await?;
                if resp.error_code != 0 {
                    return Err(error_name(resp.error_code));
                }
                Ok(resp.groups)
            };
            (id, answer.await.map_err(|e| format!("{addr}: {e}")))
        });
        let mut out = pb::ListGroupsResponse::default();
        for (id, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(groups) => out.groups.extend(groups.into_iter().map(|g| pb::GroupListing {
                    group_id: g.group_id.0.to_string(),
                    protocol_type: g.protocol_type.to_string(),
                    state: g.group_state.to_string(),
                    coordinator_id: id.0,
                })),
                Err(e) => out.unreachable.push(format!("broker {}: {e}", id.0)),
            }
        }
        out.groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// Members, assignments, committed offsets and lag of one group, from its coordinator.
    pub async fn describe_group(
        &self,
        group_id: String,
    ) -> Result<pb::GroupDescription, GroupAdminError> {
        describe(&self.ctx, group_id).await
    }
}

async fn describe(
    ctx: &BrokerCtx,
    group_id: String,
) -> Result<pb::GroupDescription, GroupAdminError> {
    let image = ctx.image.current();
    let topic = image.topic(OFFSETS_TOPIC).ok_or(GroupAdminError::OffsetsTopicMissing)?;
    let partition = partition_for(&group_id, topic.partitions.len() as i32);
    let coordinator = image
        .partition(OFFSETS_TOPIC, partition)
        .and_then(|p| p.leader)
        .ok_or(GroupAdminError::CoordinatorUnknown(partition))?;
    let addr = broker_addr(&ctx.config, &image, coordinator)
        .ok_or(GroupAdminError::CoordinatorEndpointMissing(coordinator.0))?;
    let mut conn = PeerConn::connect(&addr).await?;
    let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group_id.clone()))]);
    let described: DescribeGroupsResponse =
        conn.call(ApiKey::DescribeGroups, 5, &req, CLIENT_ID).await?;
    let group = described
        .groups
        .into_iter()
        .next()
        .ok_or(GroupAdminError::EmptyResponse("DescribeGroups"))?;
    if group.error_code != 0 {
        return Err(GroupAdminError::Refused { api: "DescribeGroups", code: group.error_code });
    }
    let req = OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
        .with_group_id(GroupId(s(group_id.clone())))
        .with_topics(None)]);
    let fetched: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, 8, &req, CLIENT_ID).await?;
    let fetched =
        fetched.groups.into_iter().next().ok_or(GroupAdminError::EmptyResponse("OffsetFetch"))?;
    if fetched.error_code != 0 {
        return Err(GroupAdminError::Refused { api: "OffsetFetch", code: fetched.error_code });
    }

    let consumer = group.protocol_type.as_str() == "consumer";
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    let members: Vec<pb::GroupMember> = group
        .members
        .into_iter()
        .map(|m| {
            let assignment = if consumer { decode_assignment(m.member_assignment) } else { vec![] };
            for (t, parts) in &assignment {
                for p in parts {
                    owner.insert((t.clone(), *p), m.member_id.to_string());
                }
            }
            pb::GroupMember {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.map(|i| i.to_string()),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                assignment: assignment
                    .into_iter()
                    .map(|(topic, partitions)| pb::TopicPartitions { topic, partitions })
                    .collect(),
            }
        })
        .collect();
    let mut committed: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for t in fetched.topics {
        for p in t.partitions {
            if p.error_code == 0 {
                committed.insert((t.name.0.to_string(), p.partition_index), p.committed_offset);
            }
        }
    }
    let keys: BTreeSet<(String, i32)> = committed.keys().chain(owner.keys()).cloned().collect();
    let ends = log_end_offsets(&ctx.config, &image, &keys).await;
    let partitions = keys
        .into_iter()
        .map(|key| {
            let committed_offset = committed.get(&key).copied().unwrap_or(-1);
            let log_end_offset = ends.get(&key).copied().unwrap_or(-1);
            let lag = if committed_offset >= 0 && log_end_offset >= 0 {
                (log_end_offset - committed_offset).max(0)
            } else {
                -1
            };
            pb::GroupPartition {
                member_id: owner.get(&key).cloned(),
                topic: key.0,
                partition: key.1,
                committed_offset,
                log_end_offset,
                lag,
            }
        })
        .collect();
    Ok(pb::GroupDescription {
        group_id,
        state: group.group_state.to_string(),
        protocol_type: group.protocol_type.to_string(),
        protocol: group.protocol_data.to_string(),
        coordinator_id: coordinator.0,
        members,
        partitions,
        error: None,
    })
}

/// A consumer-protocol assignment: a version, then (topic, partitions) pairs.
fn decode_assignment(mut raw: bytes::Bytes) -> Vec<(String, Vec<i32>)> {
    if raw.remaining() < 2 {
        return Vec::new();
    }
    let version = raw.get_i16().clamp(0, 3);
    match ConsumerProtocolAssignment::decode(&mut raw, version) {
        Ok(a) => a
            .assigned_partitions
            .into_iter()
            .map(|tp| (tp.topic.0.to_string(), tp.partitions))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The log end offsets (high watermarks) of `keys`, asked of each partition's leader; a leader
/// that cannot be asked leaves its partitions out.
async fn log_end_offsets(
    config: &crate::BrokerConfig,
    image: &MetadataImage,
    keys: &BTreeSet<(String, i32)>,
) -> BTreeMap<(String, i32), i64> {
    let mut by_leader: BTreeMap<NodeId, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    for (topic, p) in keys {
        if let Some(leader) = image.partition(topic, *p).and_then(|pi| pi.leader) {
            by_leader.entry(leader).or_default().entry(topic.clone()).or_default().push(*p);
        }
    }
    let mut out = BTreeMap::new();
    for (leader, topics) in by_leader {
        let Some(addr) = broker_addr(config, image, leader) else { continue };
        let req = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(
            topics
                .into_iter()
                .map(|(t, parts)| {
                    ListOffsetsTopic::default().with_name(TopicName(s(t))).with_partitions(
                        parts
                            .into_iter()
                            .map(|p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p)
                                    .with_current_leader_epoch(-1)
                                    .with_timestamp(-1)
                            })
                            .collect(),
                    )
                })
                .collect(),
        );
        let answer: Result<ListOffsetsResponse, String> = async {
            let mut conn = PeerConn::connect(&addr).await?;
            conn.call(ApiKey::ListOffsets, 5, &req, CLIENT_ID).await
        }
        .await;
        match answer {
            Ok(resp) => {
                for t in resp.topics {
                    for p in t.partitions {
                        if p.error_code == 0 {
                            out.insert((t.name.0.to_string(), p.partition_index), p.offset);
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(leader = leader.0, error = %e, "ListOffsets for group lag"),
        }
    }
    out
}
