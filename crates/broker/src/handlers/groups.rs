//! The group APIs: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
//! ListGroups, DescribeGroups, DeleteGroups and OffsetDelete, translated to the coordinator's
//! commands. The command is queued to its shard in the request's turn (so that a connection's
//! requests reach the coordinator in order); the answer is awaited in the waiting part.

use std::sync::Arc;

use kafka_protocol::messages::{
    delete_groups_response::DeletableGroupResult, describe_groups_response::*,
    join_group_response::*, leave_group_response::MemberResponse,
    list_groups_response::ListedGroup, offset_commit_response::*, offset_delete_response::*,
    offset_fetch_response::*, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use tokio::sync::oneshot;

use super::{s, Meta, Reply};
use crate::errors::{code_of, KafkaError};
use crate::group::{
    self, Cmd, CommitRequest, GroupSummary, JoinRequest, OffsetValue, Protocol, SyncRequest,
};
use crate::BrokerCtx;

/// An offset a commit (OffsetCommit or TxnOffsetCommit) may store: of a partition that exists,
/// with metadata within `offset.metadata.max.bytes`.
pub(super) fn check_offset(
    image: &strom_metadata::MetadataImage,
    max_metadata: usize,
    topic: &str,
    partition: i32,
    value: OffsetValue,
) -> Result<OffsetValue, KafkaError> {
    if image.partition(topic, partition).is_none() {
        Err(KafkaError::UnknownTopicOrPartition)
    } else if value.metadata.len() > max_metadata {
        Err(KafkaError::OffsetMetadataTooLarge)
    } else {
        Ok(value)
    }
}

/// Queues `cmd` on the shard coordinating `group_id`.
pub(super) async fn send(ctx: &BrokerCtx, group_id: &str, cmd: Cmd) -> Result<(), KafkaError> {
    let tx = ctx.groups.route(ctx, group_id)?;
    tx.send(cmd).await.map_err(|_| KafkaError::NotCoordinator)
}

/// A shard that stopped before answering has lost its partition: ask FindCoordinator again.
fn gone() -> KafkaError {
    KafkaError::NotCoordinator
}

pub(super) fn later(
    fut: impl std::future::Future<Output = Option<bytes::Bytes>> + Send + 'static,
) -> Reply {
    Reply::Later(Box::pin(fut))
}

fn now(b: Option<bytes::Bytes>) -> Reply {
    match b {
        Some(b) => Reply::Now(Some(b)),
        None => Reply::Close("cannot encode group response".to_owned()),
    }
}

// ---- JoinGroup / SyncGroup / Heartbeat / LeaveGroup -------------------------------------

fn join_error(version: i16, member_id: String, error_code: i16) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default()
        .with_error_code(error_code)
        .with_generation_id(-1)
        .with_member_id(s(member_id));
    if version < 7 {
        r.protocol_name = Some(s(""));
    }
    r
}

pub(crate) async fn join(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: JoinGroupRequest,
    client_id: String,
    peer: std::net::SocketAddr,
) -> Reply {
    let v = meta.version;
    let group_id = req.group_id.0.to_string();
    let member_id = req.member_id.to_string();
    if group_id.is_empty() {
        return now(meta.encode(&join_error(v, member_id, KafkaError::InvalidGroupId.into())));
    }
    let request = JoinRequest {
        member_id: member_id.clone(),
        group_instance_id: req.group_instance_id.map(|i| i.to_string()),
        client_id,
        client_host: format!("/{}", peer.ip()),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if v >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| Protocol { name: p.name.to_string(), metadata: p.metadata })
            .collect(),
        require_known_member_id: v >= 4,
    };
    let (tx, rx) = oneshot::channel();
    if let Err(c) = send(ctx, &group_id, Cmd::Join(group_id.clone(), request, tx)).await {
        return now(meta.encode(&join_error(v, member_id, c.into())));
    }
    later(async move {
        let resp = match rx.await {
            Err(_) => join_error(v, member_id, gone().into()),
            Ok(r) => {
                let mut out = JoinGroupResponse::default()
                    .with_error_code(code_of(r.error))
                    .with_generation_id(r.generation_id)
                    .with_leader(s(r.leader))
                    .with_member_id(s(r.member_id))
                    .with_members(
                        r.members
                            .into_iter()
                            .map(|m| {
                                let mut jm = JoinGroupResponseMember::default()
                                    .with_member_id(s(m.member_id))
                                    .with_metadata(m.metadata);
                                if v >= 5 {
                                    jm.group_instance_id = m.group_instance_id.map(s);
                                }
                                jm
                            })
                            .collect(),
                    );
                if v >= 7 {
                    out.protocol_type = r.protocol_type.map(s);
                    out.protocol_name = r.protocol_name.map(s);
                } else {
                    out.protocol_name = Some(s(r.protocol_name.unwrap_or_default()));
                }
                if v >= 9 {
                    out.skip_assignment = r.skip_assignment;
                }
                out
            }
        };
        meta.encode(&resp)
    })
}

pub(crate) async fn sync(ctx: &Arc<BrokerCtx>, meta: Meta, req: SyncGroupRequest) -> Reply {
    let v = meta.version;
    let group_id = req.group_id.0.to_string();
    let error = |c: i16| SyncGroupResponse::default().with_error_code(c);
    if group_id.is_empty() {
        return now(meta.encode(&error(KafkaError::InvalidGroupId.into())));
    }
    let request = SyncRequest {
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|i| i.to_string()),
        generation_id: req.generation_id,
        protocol_type: req.protocol_type.map(|p| p.to_string()),
        protocol_name: req.protocol_name.map(|p| p.to_string()),
        assignments: req
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let (tx, rx) = oneshot::channel();
    if let Err(c) = send(ctx, &group_id, Cmd::Sync(group_id.clone(), request, tx)).await {
        return now(meta.encode(&error(c.into())));
    }
    later(async move {
        let resp = match rx.await {
            Err(_) => error(gone().into()),
            Ok(r) => {
                let mut out = SyncGroupResponse::default()
                    .with_error_code(code_of(r.error))
                    .with_assignment(r.assignment);
                if v >= 5 {
                    out.protocol_type = r.protocol_type.map(s);
                    out.protocol_name = r.protocol_name.map(s);
                }
                out
            }
        };
        meta.encode(&resp)
    })
}

pub(crate) async fn heartbeat(ctx: &Arc<BrokerCtx>, meta: Meta, req: HeartbeatRequest) -> Reply {
    let group_id = req.group_id.0.to_string();
    let error = |c: i16| HeartbeatResponse::default().with_error_code(c);
    if group_id.is_empty() {
        return now(meta.encode(&error(KafkaError::InvalidGroupId.into())));
    }
    let (tx, rx) = oneshot::channel();
    let cmd = Cmd::Heartbeat {
        group_id: group_id.clone(),
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|i| i.to_string()),
        generation_id: req.generation_id,
        reply: tx,
    };
    if let Err(c) = send(ctx, &group_id, cmd).await {
        return now(meta.encode(&error(c.into())));
    }
    later(async move {
        let c = match rx.await {
            Ok(e) => code_of(e),
            Err(_) => gone().into(),
        };
        meta.encode(&error(c))
    })
}

pub(crate) async fn leave(ctx: &Arc<BrokerCtx>, meta: Meta, req: LeaveGroupRequest) -> Reply {
    let v = meta.version;
    let group_id = req.group_id.0.to_string();
    let error = |c: i16| LeaveGroupResponse::default().with_error_code(c);
    if group_id.is_empty() {
        return now(meta.encode(&error(KafkaError::InvalidGroupId.into())));
    }
    let members: Vec<(String, Option<String>)> = if v >= 3 {
        req.members
            .into_iter()
            .map(|m| (m.member_id.to_string(), m.group_instance_id.map(|i| i.to_string())))
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let (tx, rx) = oneshot::channel();
    if let Err(c) = send(ctx, &group_id, Cmd::Leave(group_id.clone(), members, tx)).await {
        return now(meta.encode(&error(c.into())));
    }
    later(async move {
        let resp = match rx.await {
            Err(_) => error(gone().into()),
            Ok((top, members)) if v >= 3 => error(code_of(top)).with_members(
                members
                    .into_iter()
                    .map(|m| {
                        MemberResponse::default()
                            .with_member_id(s(m.member_id))
                            .with_group_instance_id(m.group_instance_id.map(s))
                            .with_error_code(code_of(m.error))
                    })
                    .collect(),
            ),
            // Before v3 one member leaves, and its outcome is the response's.
            Ok((top, members)) => error(code_of(top.or(members.first().and_then(|m| m.error)))),
        };
        meta.encode(&resp)
    })
}

// ---- OffsetCommit / OffsetFetch / OffsetDelete ------------------------------------------

pub(crate) async fn offset_commit(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: OffsetCommitRequest,
) -> Reply {
    let group_id = req.group_id.0.to_string();
    let image = ctx.image.current();
    let max_metadata = ctx.config.groups.offset_metadata_max_bytes;
    let commit_ts = super::now_ms();
    // Per-partition refusals first; what is left is committed as one write.
    // (topic, [(partition, refusal code)])
    type Refusals = Vec<(String, Vec<(i32, Option<i16>)>)>;
    let mut codes: Refusals = Vec::with_capacity(req.topics.len());
    let mut offsets = Vec::new();
    for t in &req.topics {
        let topic = t.name.0.to_string();
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let leader_epoch = if meta.version >= 6 { p.committed_leader_epoch } else { -1 };
            let value = OffsetValue {
                offset: p.committed_offset,
                leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default(),
                commit_timestamp_ms: commit_ts,
            };
            let refused = match check_offset(&image, max_metadata, &topic, p.partition_index, value)
            {
                Ok(v) => {
                    offsets.push(((topic.clone(), p.partition_index), v));
                    None
                }
                Err(e) => Some(e.into()),
            };
            parts.push((p.partition_index, refused));
        }
        codes.push((topic, parts));
    }
    let build = move |all: i16| {
        OffsetCommitResponse::default().with_topics(
            codes
                .iter()
                .map(|(topic, parts)| {
                    OffsetCommitResponseTopic::default()
                        .with_name(TopicName(s(topic.clone())))
                        .with_partitions(
                            parts
                                .iter()
                                .map(|(p, refused)| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(*p)
                                        .with_error_code(refused.unwrap_or(all))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    };
    if group_id.is_empty() {
        return now(meta.encode(&build(KafkaError::InvalidGroupId.into())));
    }
    let request = CommitRequest {
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|i| i.to_string()),
        generation_id: req.generation_id_or_member_epoch,
        offsets,
    };
    let (tx, rx) = oneshot::channel();
    if let Err(c) = send(ctx, &group_id, Cmd::Commit(group_id.clone(), request, tx)).await {
        return now(meta.encode(&build(c.into())));
    }
    later(async move {
        let c = match rx.await {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => code_of(Some(e)),
            Err(_) => gone().into(),
        };
        meta.encode(&build(c))
    })
}

type Wanted = Option<Vec<(String, i32)>>;

/// The (topic, partition) pairs of a request's topics and their partition indexes.
fn partitions_of(topics: impl Iterator<Item = (TopicName, Vec<i32>)>) -> Vec<(String, i32)> {
    topics
        .flat_map(|(name, partitions)| {
            let name = name.0.to_string();
            partitions.into_iter().map(move |p| (name.clone(), p))
        })
        .collect()
}

/// Committed offsets of one group, or the error for the whole group. With `require_stable`
/// (v7+), a partition with offsets of a transaction that has not ended answers
/// UNSTABLE_OFFSET_COMMIT, and the client asks again.
async fn fetch_group(
    ctx: &BrokerCtx,
    group_id: &str,
    wanted: Wanted,
    require_stable: bool,
    member: Option<(String, i32)>,
) -> FetchedGroup {
    let (reply, rx) = oneshot::channel();
    let requested = wanted.clone();
    let group_id_owned = group_id.to_owned();
    let cmd = Cmd::FetchOffsets { group_id: group_id_owned, wanted, require_stable, member, reply };
    let failed = |error: KafkaError| FetchedGroup {
        error: error.into(),
        offsets: Vec::new(),
        unstable: Vec::new(),
        requested: requested.clone(),
    };
    match send(ctx, group_id, cmd).await {
        Err(c) => failed(c),
        Ok(()) => match rx.await {
            Ok(Ok((offsets, unstable))) => FetchedGroup { error: 0, offsets, unstable, requested },
            Ok(Err(e)) => failed(e.into()),
            Err(_) => failed(gone()),
        },
    }
}

struct FetchedGroup {
    error: i16,
    offsets: Vec<((String, i32), Option<OffsetValue>)>,
    unstable: Vec<(String, i32)>,
    requested: Wanted,
}

impl FetchedGroup {
    /// (topic, [(partition, offset, leader epoch, metadata, code)]) in request order, every
    /// requested partition present (offset -1 when nothing is committed).
    #[allow(clippy::type_complexity)]
    fn by_topic(
        self,
        per_partition_error: bool,
    ) -> Vec<(String, Vec<(i32, i64, i32, String, i16)>)> {
        let mut out: Vec<(String, Vec<(i32, i64, i32, String, i16)>)> = Vec::new();
        let items: Vec<((String, i32), Option<OffsetValue>)> = if self.error != 0 {
            self.requested.unwrap_or_default().into_iter().map(|k| (k, None)).collect()
        } else {
            self.offsets
        };
        let pcode = if per_partition_error { self.error } else { 0 };
        let unstable = i16::from(KafkaError::UnstableOffsetCommit);
        for ((topic, p), v) in items {
            let row = match v {
                _ if self.unstable.iter().any(|(t, i)| *t == topic && *i == p) => {
                    (p, -1, -1, String::new(), unstable)
                }
                Some(v) => (p, v.offset, v.leader_epoch, v.metadata, pcode),
                None => (p, -1, -1, String::new(), pcode),
            };
            match out.last_mut() {
                Some((t, rows)) if *t == topic => rows.push(row),
                _ => out.push((topic, vec![row])),
            }
        }
        out
    }
}

pub(crate) async fn offset_fetch(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: OffsetFetchRequest,
) -> Reply {
    let v = meta.version;
    let ctx = ctx.clone();
    // Lookups are queued in this request's turn only when one group is asked (the common
    // case); a batched v8 request asks its groups one after another in the waiting part.
    later(async move {
        if v >= 8 {
            let mut groups = Vec::with_capacity(req.groups.len());
            for g in req.groups {
                let group_id = g.group_id.0.to_string();
                let wanted = g
                    .topics
                    .map(|ts| partitions_of(ts.into_iter().map(|t| (t.name, t.partition_indexes))));
                // v9 (KIP-848): a member names itself and its epoch.
                let member = (v >= 9).then(|| (g.member_id.map(|m| m.to_string()), g.member_epoch));
                let member = member.and_then(|(id, epoch)| id.map(|id| (id, epoch)));
                let fetched =
                    fetch_group(&ctx, &group_id, wanted, req.require_stable, member).await;
                let error = fetched.error;
                let topics = fetched
                    .by_topic(false)
                    .into_iter()
                    .map(|(t, rows)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(s(t)))
                            .with_partitions(
                                rows.into_iter()
                                    .map(|(p, o, e, m, c)| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(o)
                                            .with_committed_leader_epoch(e)
                                            .with_metadata(Some(s(m)))
                                            .with_error_code(c)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                groups.push(
                    OffsetFetchResponseGroup::default()
                        .with_group_id(GroupId(s(group_id)))
                        .with_topics(topics)
                        .with_error_code(error),
                );
            }
            return meta.encode(&OffsetFetchResponse::default().with_groups(groups));
        }
        let group_id = req.group_id.0.to_string();
        let wanted = req
            .topics
            .map(|ts| partitions_of(ts.into_iter().map(|t| (t.name, t.partition_indexes))));
        let fetched =
            fetch_group(&ctx, &group_id, wanted, v >= 7 && req.require_stable, None).await;
        let error = fetched.error;
        // v1 has no top-level error: each partition carries it.
        let topics = fetched
            .by_topic(v < 2)
            .into_iter()
            .map(|(t, rows)| {
                OffsetFetchResponseTopic::default().with_name(TopicName(s(t))).with_partitions(
                    rows.into_iter()
                        .map(|(p, o, e, m, c)| {
                            let mut part = OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o)
                                .with_metadata(Some(s(m)))
                                .with_error_code(c);
                            if v >= 5 {
                                part.committed_leader_epoch = e;
                            }
                            part
                        })
                        .collect(),
                )
            })
            .collect();
        let mut resp = OffsetFetchResponse::default().with_topics(topics);
        if v >= 2 {
            resp.error_code = error;
        }
        meta.encode(&resp)
    })
}

pub(crate) async fn offset_delete(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: OffsetDeleteRequest,
) -> Reply {
    let group_id = req.group_id.0.to_string();
    let partitions: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            let name = t.name.0.to_string();
            t.partitions.iter().map(move |p| (name.clone(), p.partition_index))
        })
        .collect();
    let error = |c: i16| OffsetDeleteResponse::default().with_error_code(c);
    let (tx, rx) = oneshot::channel();
    if let Err(c) = send(ctx, &group_id, Cmd::DeleteOffsets(group_id.clone(), partitions, tx)).await
    {
        return now(meta.encode(&error(c.into())));
    }
    later(async move {
        let resp = match rx.await {
            Err(_) => error(gone().into()),
            Ok(Err(e)) => error(code_of(Some(e))),
            Ok(Ok(results)) => {
                let mut topics: Vec<OffsetDeleteResponseTopic> = Vec::new();
                for ((topic, p), e) in results {
                    let part = OffsetDeleteResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(code_of(e));
                    match topics.last_mut() {
                        Some(t) if t.name.0.as_str() == topic => t.partitions.push(part),
                        _ => topics.push(
                            OffsetDeleteResponseTopic::default()
                                .with_name(TopicName(s(topic)))
                                .with_partitions(vec![part]),
                        ),
                    }
                }
                error(0).with_topics(topics)
            }
        };
        meta.encode(&resp)
    })
}

// ---- ListGroups / DescribeGroups / DeleteGroups -----------------------------------------

/// Every group this broker coordinates (a client asks each broker and merges).
pub(crate) async fn local_groups(ctx: &BrokerCtx) -> Vec<GroupSummary> {
    let mut all = Vec::new();
    for shard in ctx.groups.shards() {
        let (tx, rx) = oneshot::channel();
        if shard.send(Cmd::List(tx)).await.is_ok() {
            if let Ok(groups) = rx.await {
                all.extend(groups);
            }
        }
    }
    all.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    all
}

pub(crate) async fn list_groups(ctx: &Arc<BrokerCtx>, meta: Meta, req: ListGroupsRequest) -> Reply {
    let v = meta.version;
    let ctx = ctx.clone();
    later(async move {
        let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
        let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
        let groups = local_groups(&ctx)
            .await
            .into_iter()
            .filter(|g| states.is_empty() || states.contains(&g.state_name().to_lowercase()))
            .filter(|g| types.is_empty() || types.iter().any(|t| t == g.group_type()))
            .map(|g| {
                let (state, group_type) = (g.state_name(), g.group_type());
                let mut l = ListedGroup::default()
                    .with_group_id(GroupId(s(g.group_id)))
                    .with_protocol_type(s(g.protocol_type.unwrap_or_default()));
                if v >= 4 {
                    l.group_state = s(state);
                }
                if v >= 5 {
                    l.group_type = s(group_type);
                }
                l
            })
            .collect();
        let code =
            code_of(ctx.groups.any_loading().then_some(KafkaError::CoordinatorLoadInProgress));
        meta.encode(&ListGroupsResponse::default().with_error_code(code).with_groups(groups))
    })
}

/// One group's summary, or the routing error.
pub(crate) async fn describe_one(
    ctx: &BrokerCtx,
    group_id: &str,
) -> Result<GroupSummary, KafkaError> {
    let (tx, rx) = oneshot::channel();
    send(ctx, group_id, Cmd::Describe(group_id.to_owned(), tx)).await?;
    rx.await.map_err(|_| gone())
}

pub(crate) async fn describe_groups(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: DescribeGroupsRequest,
) -> Reply {
    let v = meta.version;
    let ctx = ctx.clone();
    later(async move {
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in req.groups {
            let group_id = g.0.to_string();
            let mut d = DescribedGroup::default().with_group_id(GroupId(s(group_id.clone())));
            if v >= 3 {
                d.authorized_operations = super::authorized::operations(
                    super::authorized::Resource::Group,
                    req.include_authorized_operations,
                );
            }
            match describe_one(&ctx, &group_id).await {
                Err(c) => {
                    d.error_code = c.into();
                    d.group_state = s("Dead");
                }
                Ok(summary) => {
                    d.group_state = s(summary.state_name());
                    // A KIP-848 group's members are shown by ConsumerGroupDescribe.
                    let protocol_type = match summary.consumer_state {
                        Some(_) => Some("consumer".to_owned()),
                        None => summary.protocol_type,
                    };
                    d.protocol_type = s(protocol_type.unwrap_or_default());
                    d.protocol_data = s(summary.protocol_name.unwrap_or_default());
                    d.members = summary
                        .members
                        .into_iter()
                        .map(|m| {
                            let mut dm = DescribedGroupMember::default()
                                .with_member_id(s(m.member_id))
                                .with_client_id(s(m.client_id))
                                .with_client_host(s(m.client_host))
                                .with_member_metadata(m.subscription)
                                .with_member_assignment(m.assignment);
                            if v >= 4 {
                                dm.group_instance_id = m.group_instance_id.map(s);
                            }
                            dm
                        })
                        .collect();
                }
            }
            groups.push(d);
        }
        meta.encode(&DescribeGroupsResponse::default().with_groups(groups))
    })
}

pub(crate) async fn delete_groups(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: DeleteGroupsRequest,
) -> Reply {
    let ctx = ctx.clone();
    later(async move {
        let mut results = Vec::with_capacity(req.groups_names.len());
        for g in req.groups_names {
            let group_id = g.0.to_string();
            let (tx, rx) = oneshot::channel();
            let c = match send(&ctx, &group_id, Cmd::Delete(group_id.clone(), tx)).await {
                Err(c) => c.into(),
                Ok(()) => match rx.await {
                    Ok(r) => code_of(r.err()),
                    Err(_) => gone().into(),
                },
            };
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(GroupId(s(group_id)))
                    .with_error_code(c),
            );
        }
        meta.encode(&DeleteGroupsResponse::default().with_results(results))
    })
}

/// Used by FindCoordinator: the group's partition and whether the topic exists.
pub(crate) fn coordinator_partition(ctx: &BrokerCtx, group_id: &str) -> Option<i32> {
    let image = ctx.image.current();
    let topic = image.topic(group::OFFSETS_TOPIC)?;
    Some(group::partition_for(group_id, topic.partitions.len() as i32))
}
