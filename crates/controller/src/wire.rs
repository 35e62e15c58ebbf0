//! `strom_metadata::control` requests, responses and errors as the prost messages of
//! `proto/controller.proto`, both ways: what a follower relays to the active controller.
//! Also the metadata stream's updates (`WatchMetadata`), which a broker-only node follows.
//! Decoding checks what a peer sent (lengths, enum values, required fields) and never panics.

use prost::Message;
use strom_metadata::control::{
    AllocateProducerIdsRequest, AlterClientQuotasRequest, AlterConfigOp, AlterConfigsRequest,
    AlterPartitionReply, AlterPartitionRequest, BrokerHeartbeatRequest, ConfigAlteration,
    ControlRequest, ControlResponse, CreatePartitionsRequest, CreateTopic, CreateTopicsRequest,
    CreatedTopic, DeleteTopicsRequest, ElectionError, HeartbeatReply, IsrChange, IsrChangeResult,
    IsrChanged, ItemResult, NewPartitions, PartitionElection, PartitionReassignment,
    PartitionResult, ProducerIdBlock, QuotaAlteration, ReassignPartitionsRequest,
    RegisterBrokerRequest, ResourceResult,
};
use strom_metadata::records::{
    ConfigResourceType, Endpoint, MetadataBatch, MetadataRecord, MetadataSnapshot,
};
use strom_metadata::{BrokerEpoch, ControlError, MetadataOffset, NodeId, TopicId};
use strom_proto::controller as pb;

mod quorum;

/// Why a relayed message could not be turned back into a request or response.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message lacks required field '{0}'")]
    MissingField(&'static str),
    #[error("field '{field}' has the unknown value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("field '{0}' is not a 16-byte id")]
    BadTopicId(&'static str),
    #[error("field '{0}' is not a 16-byte directory id")]
    BadDirectoryId(&'static str),
    #[error("field '{field}' does not decode: {source}")]
    Decode {
        field: &'static str,
        #[source]
        source: prost::DecodeError,
    },
}

fn required<T>(field: Option<T>, name: &'static str) -> Result<T, WireError> {
    field.ok_or(WireError::MissingField(name))
}

fn topic_id(bytes: &[u8], field: &'static str) -> Result<TopicId, WireError> {
    TopicId::from_slice(bytes).ok_or(WireError::BadTopicId(field))
}

fn node_ids(ids: &[NodeId]) -> pb::NodeIds {
    pb::NodeIds { ids: ids.iter().map(|n| n.0).collect() }
}

fn from_node_ids(ids: &pb::NodeIds) -> Vec<NodeId> {
    ids.ids.iter().map(|&i| NodeId(i)).collect()
}

// ---- errors ----

pub fn error_to_pb(e: &ControlError) -> pb::ControlError {
    use pb::ControlErrorCode as C;
    let (code, message, broker_id, topic_id) = match e {
        ControlError::TopicAlreadyExists(m) => (C::TopicAlreadyExists, m.clone(), 0, Vec::new()),
        ControlError::UnknownTopicOrPartition(m) => {
            (C::UnknownTopicOrPartition, m.clone(), 0, Vec::new())
        }
        ControlError::UnknownTopicId(id) => (C::UnknownTopicId, String::new(), 0, id.0.to_vec()),
        ControlError::InvalidTopic(m) => (C::InvalidTopic, m.clone(), 0, Vec::new()),
        ControlError::InvalidPartitions(m) => (C::InvalidPartitions, m.clone(), 0, Vec::new()),
        ControlError::InvalidReplicationFactor(m) => {
            (C::InvalidReplicationFactor, m.clone(), 0, Vec::new())
        }
        ControlError::InvalidReplicaAssignment(m) => {
            (C::InvalidReplicaAssignment, m.clone(), 0, Vec::new())
        }
        ControlError::InvalidConfig(m) => (C::InvalidConfig, m.clone(), 0, Vec::new()),
        ControlError::InvalidRequest(m) => (C::InvalidRequest, m.clone(), 0, Vec::new()),
        ControlError::StaleBrokerEpoch(id) => (C::StaleBrokerEpoch, String::new(), *id, Vec::new()),
        ControlError::DuplicateBrokerRegistration(m) => {
            (C::DuplicateBrokerRegistration, m.clone(), 0, Vec::new())
        }
        ControlError::FencedLeaderEpoch(m) => (C::FencedLeaderEpoch, m.clone(), 0, Vec::new()),
        ControlError::InvalidUpdateVersion(m) => {
            (C::InvalidUpdateVersion, m.clone(), 0, Vec::new())
        }
        ControlError::IneligibleReplica(m) => (C::IneligibleReplica, m.clone(), 0, Vec::new()),
        ControlError::PolicyViolation(m) => (C::PolicyViolation, m.clone(), 0, Vec::new()),
        ControlError::NotController => (C::NotController, String::new(), 0, Vec::new()),
        ControlError::ControllerUnavailable(m) => {
            (C::ControllerUnavailable, m.clone(), 0, Vec::new())
        }
        ControlError::OutcomeUnknown(m) => (C::OutcomeUnknown, m.clone(), 0, Vec::new()),
        ControlError::ProducerIdsExhausted => {
            (C::ProducerIdsExhausted, String::new(), 0, Vec::new())
        }
        ControlError::DuplicateVoter(m) => (C::DuplicateVoter, m.clone(), 0, Vec::new()),
        ControlError::VoterNotFound(m) => (C::VoterNotFound, m.clone(), 0, Vec::new()),
        ControlError::InvalidVoterKey(m) => (C::InvalidVoterKey, m.clone(), 0, Vec::new()),
        ControlError::VoterChangeTimedOut(m) => (C::VoterChangeTimedOut, m.clone(), 0, Vec::new()),
        ControlError::NoReassignmentInProgress(m) => {
            (C::NoReassignmentInProgress, m.clone(), 0, Vec::new())
        }
    };
    pb::ControlError { code: code as i32, message, broker_id, topic_id }
}

pub fn error_from_pb(e: &pb::ControlError) -> Result<ControlError, WireError> {
    use pb::ControlErrorCode as C;
    let code = C::try_from(e.code)
        .map_err(|_| WireError::UnknownEnum { field: "ControlError.code", value: e.code })?;
    let m = e.message.clone();
    Ok(match code {
        C::ControlErrorUnknown => {
            return Err(WireError::UnknownEnum { field: "ControlError.code", value: e.code })
        }
        C::TopicAlreadyExists => ControlError::TopicAlreadyExists(m),
        C::UnknownTopicOrPartition => ControlError::UnknownTopicOrPartition(m),
        C::UnknownTopicId => {
            ControlError::UnknownTopicId(topic_id(&e.topic_id, "ControlError.topic_id")?)
        }
        C::InvalidTopic => ControlError::InvalidTopic(m),
        C::InvalidPartitions => ControlError::InvalidPartitions(m),
        C::InvalidReplicationFactor => ControlError::InvalidReplicationFactor(m),
        C::InvalidReplicaAssignment => ControlError::InvalidReplicaAssignment(m),
        C::InvalidConfig => ControlError::InvalidConfig(m),
        C::InvalidRequest => ControlError::InvalidRequest(m),
        C::StaleBrokerEpoch => ControlError::StaleBrokerEpoch(e.broker_id),
        C::DuplicateBrokerRegistration => ControlError::DuplicateBrokerRegistration(m),
        C::FencedLeaderEpoch => ControlError::FencedLeaderEpoch(m),
        C::InvalidUpdateVersion => ControlError::InvalidUpdateVersion(m),
        C::IneligibleReplica => ControlError::IneligibleReplica(m),
        C::PolicyViolation => ControlError::PolicyViolation(m),
        C::NotController => ControlError::NotController,
        C::ControllerUnavailable => ControlError::ControllerUnavailable(m),
        C::OutcomeUnknown => ControlError::OutcomeUnknown(m),
        C::ProducerIdsExhausted => ControlError::ProducerIdsExhausted,
        C::DuplicateVoter => ControlError::DuplicateVoter(m),
        C::VoterNotFound => ControlError::VoterNotFound(m),
        C::InvalidVoterKey => ControlError::InvalidVoterKey(m),
        C::VoterChangeTimedOut => ControlError::VoterChangeTimedOut(m),
        C::NoReassignmentInProgress => ControlError::NoReassignmentInProgress(m),
    })
}

fn item_error(result: &Result<(), ControlError>) -> Option<pb::ControlError> {
    result.as_ref().err().map(error_to_pb)
}

fn item_result(error: &Option<pb::ControlError>) -> Result<Result<(), ControlError>, WireError> {
    match error {
        None => Ok(Ok(())),
        Some(e) => Ok(Err(error_from_pb(e)?)),
    }
}

fn config_entries(configs: &[(String, Option<String>)]) -> Vec<pb::ConfigEntry> {
    configs
        .iter()
        .map(|(name, value)| pb::ConfigEntry { name: name.clone(), value: value.clone() })
        .collect()
}

fn op_to_pb(op: AlterConfigOp) -> pb::AlterConfigOp {
    match op {
        AlterConfigOp::Set => pb::AlterConfigOp::Set,
        AlterConfigOp::Delete => pb::AlterConfigOp::Delete,
        AlterConfigOp::Append => pb::AlterConfigOp::Append,
        AlterConfigOp::Subtract => pb::AlterConfigOp::Subtract,
    }
}

fn op_from_pb(op: i32) -> Result<AlterConfigOp, WireError> {
    let op = pb::AlterConfigOp::try_from(op)
        .map_err(|_| WireError::UnknownEnum { field: "ConfigOp.op", value: op })?;
    Ok(match op {
        pb::AlterConfigOp::Set => AlterConfigOp::Set,
        pb::AlterConfigOp::Delete => AlterConfigOp::Delete,
        pb::AlterConfigOp::Append => AlterConfigOp::Append,
        pb::AlterConfigOp::Subtract => AlterConfigOp::Subtract,
    })
}

fn resource_type(value: i32, field: &'static str) -> Result<ConfigResourceType, WireError> {
    ConfigResourceType::try_from(value).map_err(|_| WireError::UnknownEnum { field, value })
}

fn election_error_to_pb(e: ElectionError) -> pb::ElectionError {
    match e {
        ElectionError::UnknownTopicOrPartition => {
            pb::ElectionError::ElectionUnknownTopicOrPartition
        }
        ElectionError::ElectionNotNeeded => pb::ElectionError::ElectionNotNeeded,
        ElectionError::PreferredLeaderNotAvailable => {
            pb::ElectionError::PreferredLeaderNotAvailable
        }
        ElectionError::EligibleLeadersNotAvailable => {
            pb::ElectionError::EligibleLeadersNotAvailable
        }
    }
}

fn election_error_from_pb(value: i32) -> Result<ElectionError, WireError> {
    let unknown = WireError::UnknownEnum { field: "PartitionElection.error", value };
    Ok(match pb::ElectionError::try_from(value).map_err(|_| unknown)? {
        pb::ElectionError::Unknown => {
            return Err(WireError::UnknownEnum { field: "PartitionElection.error", value })
        }
        pb::ElectionError::ElectionUnknownTopicOrPartition => {
            ElectionError::UnknownTopicOrPartition
        }
        pb::ElectionError::ElectionNotNeeded => ElectionError::ElectionNotNeeded,
        pb::ElectionError::PreferredLeaderNotAvailable => {
            ElectionError::PreferredLeaderNotAvailable
        }
        pb::ElectionError::EligibleLeadersNotAvailable => {
            ElectionError::EligibleLeadersNotAvailable
        }
    })
}

// ---- requests ----

pub fn request_to_pb(r: &ControlRequest) -> pb::ControlRequest {
    use pb::control_request::Request as R;
    let request = match r {
        ControlRequest::AddVoter(r) => R::AddVoter(quorum::add_voter_to_pb(r)),
        ControlRequest::RemoveVoter(r) => R::RemoveVoter(quorum::remove_voter_to_pb(r)),
        ControlRequest::UpdateVoter(r) => R::UpdateVoter(quorum::update_voter_to_pb(r)),
        ControlRequest::JoinQuorum(r) => R::JoinQuorum(quorum::join_to_pb(r)),
        ControlRequest::DescribeQuorum => R::DescribeQuorum(pb::DescribeQuorumRequest {}),
        ControlRequest::CreateTopics(r) => R::CreateTopics(pb::CreateTopicsRequest {
            topics: r
                .topics
                .iter()
                .map(|t| pb::CreateTopic {
                    name: t.name.clone(),
                    num_partitions: t.num_partitions,
                    replication_factor: i32::from(t.replication_factor),
                    assignments: t.assignments.iter().map(|(p, ids)| (*p, node_ids(ids))).collect(),
                    configs: config_entries(&t.configs),
                })
                .collect(),
            validate_only: r.validate_only,
            internal: r.internal,
        }),
        ControlRequest::DeleteTopics(r) => R::DeleteTopics(pb::DeleteTopicsRequest {
            names: r.names.clone(),
            ids: r.ids.iter().map(|id| id.0.to_vec()).collect(),
        }),
        ControlRequest::CreatePartitions(r) => R::CreatePartitions(pb::CreatePartitionsRequest {
            topics: r
                .topics
                .iter()
                .map(|t| pb::NewPartitions {
                    topic: t.topic.clone(),
                    count: t.count,
                    assignments: t.assignments.iter().map(|ids| node_ids(ids)).collect(),
                })
                .collect(),
            validate_only: r.validate_only,
        }),
        ControlRequest::AlterConfigs(r) => R::AlterConfigs(pb::AlterConfigsRequest {
            resources: r
                .resources
                .iter()
                .map(|res| pb::ConfigAlteration {
                    resource_type: res.resource_type as i32,
                    resource_name: res.resource_name.clone(),
                    ops: res
                        .ops
                        .iter()
                        .map(|(name, op, value)| pb::ConfigOp {
                            name: name.clone(),
                            op: op_to_pb(*op) as i32,
                            value: value.clone(),
                        })
                        .collect(),
                })
                .collect(),
            incremental: r.incremental,
            validate_only: r.validate_only,
        }),
        ControlRequest::RegisterBroker(r) => R::RegisterBroker(pb::RegisterBrokerRequest {
            broker_id: r.broker_id.0,
            incarnation_id: r.incarnation_id.clone(),
            endpoints: r
                .endpoints
                .iter()
                .map(|e| pb::Endpoint { name: e.name.clone(), host: e.host.clone(), port: e.port })
                .collect(),
            rack: r.rack.clone(),
        }),
        ControlRequest::BrokerHeartbeat(r) => R::BrokerHeartbeat(pb::BrokerHeartbeatRequest {
            broker_id: r.broker_id.0,
            broker_epoch: r.broker_epoch.0,
            current_metadata_offset: r.current_metadata_offset.0,
            want_fence: r.want_fence,
            want_shutdown: r.want_shutdown,
        }),
        ControlRequest::ElectLeaders { topics, preferred } => {
            R::ElectLeaders(pb::ElectLeadersRequest {
                some_topics: topics.is_some(),
                topics: topics
                    .iter()
                    .flatten()
                    .map(|(topic, partitions)| pb::TopicPartitions {
                        topic: topic.clone(),
                        partitions: partitions.clone(),
                    })
                    .collect(),
                preferred: *preferred,
            })
        }
        ControlRequest::AlterPartition(r) => R::AlterPartition(pb::AlterPartitionRequest {
            broker_id: r.broker_id.0,
            broker_epoch: r.broker_epoch.0,
            changes: r
                .changes
                .iter()
                .map(|c| pb::IsrChange {
                    topic: c.topic.clone(),
                    partition: c.partition,
                    leader_epoch: c.leader_epoch,
                    partition_epoch: c.partition_epoch,
                    new_isr: c.new_isr.iter().map(|n| n.0).collect(),
                })
                .collect(),
        }),
        ControlRequest::AllocateProducerIds(r) => {
            R::AllocateProducerIds(pb::AllocateProducerIdsRequest {
                broker_id: r.broker_id.0,
                broker_epoch: r.broker_epoch.0,
            })
        }
        ControlRequest::AlterPartitionReassignments(r) => {
            R::AlterReassignments(pb::AlterReassignmentsRequest {
                partitions: r
                    .partitions
                    .iter()
                    .map(|p| pb::PartitionReassignment {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        cancel: p.target.is_none(),
                        target: p.target.iter().flatten().map(|n| n.0).collect(),
                    })
                    .collect(),
            })
        }
        ControlRequest::AlterClientQuotas(r) => {
            R::AlterClientQuotas(pb::AlterClientQuotasRequest {
                entries: r
                    .entries
                    .iter()
                    .map(|e| pb::QuotaAlteration {
                        entity: e
                            .entity
                            .iter()
                            .map(|(t, n)| pb::QuotaEntityPart {
                                entity_type: t.clone(),
                                entity_name: n.clone(),
                            })
                            .collect(),
                        ops: e
                            .ops
                            .iter()
                            .map(|(key, value)| pb::QuotaOp { key: key.clone(), value: *value })
                            .collect(),
                    })
                    .collect(),
                validate_only: r.validate_only,
            })
        }
    };
    pb::ControlRequest { request: Some(request) }
}

pub fn request_from_pb(r: pb::ControlRequest) -> Result<ControlRequest, WireError> {
    use pb::control_request::Request as R;
    Ok(match required(r.request, "ControlRequest.request")? {
        R::AddVoter(r) => ControlRequest::AddVoter(quorum::add_voter_from_pb(r)?),
        R::RemoveVoter(r) => ControlRequest::RemoveVoter(quorum::remove_voter_from_pb(r)?),
        R::UpdateVoter(r) => ControlRequest::UpdateVoter(quorum::update_voter_from_pb(r)?),
        R::JoinQuorum(r) => ControlRequest::JoinQuorum(quorum::join_from_pb(r)?),
        R::DescribeQuorum(_) => ControlRequest::DescribeQuorum,
        R::CreateTopics(r) => ControlRequest::CreateTopics(CreateTopicsRequest {
            topics: r
                .topics
                .into_iter()
                .map(|t| {
                    let replication_factor = i16::try_from(t.replication_factor).map_err(|_| {
                        WireError::UnknownEnum {
                            field: "CreateTopic.replication_factor",
                            value: t.replication_factor,
                        }
                    })?;
                    let mut assignments: Vec<(i32, Vec<NodeId>)> =
                        t.assignments.iter().map(|(p, ids)| (*p, from_node_ids(ids))).collect();
                    assignments.sort_by_key(|(p, _)| *p);
                    Ok(CreateTopic {
                        name: t.name,
                        num_partitions: t.num_partitions,
                        replication_factor,
                        assignments,
                        configs: t.configs.into_iter().map(|c| (c.name, c.value)).collect(),
                    })
                })
                .collect::<Result<_, WireError>>()?,
            validate_only: r.validate_only,
            internal: r.internal,
        }),
        R::DeleteTopics(r) => ControlRequest::DeleteTopics(DeleteTopicsRequest {
            names: r.names,
            ids: r
                .ids
                .iter()
                .map(|id| topic_id(id, "DeleteTopicsRequest.ids"))
                .collect::<Result<_, _>>()?,
        }),
        R::CreatePartitions(r) => ControlRequest::CreatePartitions(CreatePartitionsRequest {
            topics: r
                .topics
                .into_iter()
                .map(|t| NewPartitions {
                    topic: t.topic,
                    count: t.count,
                    assignments: t.assignments.iter().map(from_node_ids).collect(),
                })
                .collect(),
            validate_only: r.validate_only,
        }),
        R::AlterConfigs(r) => ControlRequest::AlterConfigs(AlterConfigsRequest {
            resources: r
                .resources
                .into_iter()
                .map(|res| {
                    Ok(ConfigAlteration {
                        resource_type: resource_type(
                            res.resource_type,
                            "ConfigAlteration.resource_type",
                        )?,
                        resource_name: res.resource_name,
                        ops: res
                            .ops
                            .into_iter()
                            .map(|op| Ok((op.name, op_from_pb(op.op)?, op.value)))
                            .collect::<Result<_, WireError>>()?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
            incremental: r.incremental,
            validate_only: r.validate_only,
        }),
        R::RegisterBroker(r) => ControlRequest::RegisterBroker(RegisterBrokerRequest {
            broker_id: NodeId(r.broker_id),
            incarnation_id: r.incarnation_id,
            endpoints: r
                .endpoints
                .into_iter()
                .map(|e| Endpoint { name: e.name, host: e.host, port: e.port })
                .collect(),
            rack: r.rack,
        }),
        R::BrokerHeartbeat(r) => ControlRequest::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: NodeId(r.broker_id),
            broker_epoch: BrokerEpoch(r.broker_epoch),
            current_metadata_offset: MetadataOffset(r.current_metadata_offset),
            want_fence: r.want_fence,
            want_shutdown: r.want_shutdown,
        }),
        R::ElectLeaders(r) => ControlRequest::ElectLeaders {
            topics: r
                .some_topics
                .then(|| r.topics.into_iter().map(|t| (t.topic, t.partitions)).collect()),
            preferred: r.preferred,
        },
        R::AlterPartition(r) => ControlRequest::AlterPartition(AlterPartitionRequest {
            broker_id: NodeId(r.broker_id),
            broker_epoch: BrokerEpoch(r.broker_epoch),
            changes: r
                .changes
                .into_iter()
                .map(|c| IsrChange {
                    topic: c.topic,
                    partition: c.partition,
                    leader_epoch: c.leader_epoch,
                    partition_epoch: c.partition_epoch,
                    new_isr: c.new_isr.into_iter().map(NodeId).collect(),
                })
                .collect(),
        }),
        R::AllocateProducerIds(r) => {
            ControlRequest::AllocateProducerIds(AllocateProducerIdsRequest {
                broker_id: NodeId(r.broker_id),
                broker_epoch: BrokerEpoch(r.broker_epoch),
            })
        }
        R::AlterReassignments(r) => {
            ControlRequest::AlterPartitionReassignments(ReassignPartitionsRequest {
                partitions: r
                    .partitions
                    .into_iter()
                    .map(|p| PartitionReassignment {
                        topic: p.topic,
                        partition: p.partition,
                        target: (!p.cancel).then(|| p.target.into_iter().map(NodeId).collect()),
                    })
                    .collect(),
            })
        }
        R::AlterClientQuotas(r) => ControlRequest::AlterClientQuotas(AlterClientQuotasRequest {
            entries: r
                .entries
                .into_iter()
                .map(|e| QuotaAlteration {
                    entity: e.entity.into_iter().map(|p| (p.entity_type, p.entity_name)).collect(),
                    ops: e.ops.into_iter().map(|op| (op.key, op.value)).collect(),
                })
                .collect(),
            validate_only: r.validate_only,
        }),
    })
}

// ---- responses ----

pub fn response_to_pb(r: &Result<ControlResponse, ControlError>) -> pb::ControlResponse {
    use pb::control_response::Response as R;
    let response = match r {
        Err(e) => R::Error(error_to_pb(e)),
        Ok(ControlResponse::Quorum(d)) => R::Quorum(quorum::description_to_pb(d)),
        Ok(ControlResponse::CreateTopics(items)) => R::CreateTopics(pb::CreateTopicsResponse {
            results: items
                .iter()
                .map(|item| {
                    use pb::create_topic_result::Result as T;
                    let result = match &item.result {
                        Ok(c) => T::Created(pb::CreatedTopic {
                            topic_id: c.topic_id.0.to_vec(),
                            num_partitions: c.num_partitions,
                            replication_factor: i32::from(c.replication_factor),
                            configs: c
                                .configs
                                .iter()
                                .map(|(name, value)| pb::ConfigEntry {
                                    name: name.clone(),
                                    value: Some(value.clone()),
                                })
                                .collect(),
                        }),
                        Err(e) => T::Error(error_to_pb(e)),
                    };
                    pb::CreateTopicResult { name: item.name.clone(), result: Some(result) }
                })
                .collect(),
        }),
        Ok(ControlResponse::DeleteTopics(items)) => R::DeleteTopics(pb::DeleteTopicsResponse {
            results: items
                .iter()
                .map(|item| {
                    use pb::delete_topic_result::Result as T;
                    let result = match &item.result {
                        Ok(id) => T::TopicId(id.0.to_vec()),
                        Err(e) => T::Error(error_to_pb(e)),
                    };
                    pb::DeleteTopicResult { name: item.name.clone(), result: Some(result) }
                })
                .collect(),
        }),
        Ok(ControlResponse::CreatePartitions(items)) => {
            R::CreatePartitions(pb::CreatePartitionsResponse {
                results: items
                    .iter()
                    .map(|item| pb::ItemResult {
                        name: item.name.clone(),
                        error: item_error(&item.result),
                    })
                    .collect(),
            })
        }
        Ok(ControlResponse::AlterConfigs(items)) => R::AlterConfigs(pb::AlterConfigsResponse {
            results: items
                .iter()
                .map(|item| pb::ResourceResult {
                    resource_type: item.resource_type as i32,
                    resource_name: item.resource_name.clone(),
                    error: item_error(&item.result),
                })
                .collect(),
        }),
        Ok(ControlResponse::RegisterBroker(epoch)) => R::RegisterBrokerEpoch(epoch.0),
        Ok(ControlResponse::BrokerHeartbeat(h)) => R::BrokerHeartbeat(pb::HeartbeatReply {
            is_caught_up: h.is_caught_up,
            is_fenced: h.is_fenced,
            should_shutdown: h.should_shutdown,
        }),
        Ok(ControlResponse::AlterPartition(reply)) => R::AlterPartition(pb::AlterPartitionReply {
            partitions: reply
                .partitions
                .iter()
                .map(|item| pb::IsrChangeResult {
                    topic: item.topic.clone(),
                    partition: item.partition,
                    result: Some(match &item.result {
                        Ok(changed) => pb::isr_change_result::Result::Changed(pb::IsrChanged {
                            partition_epoch: changed.partition_epoch,
                            isr: changed.isr.iter().map(|n| n.0).collect(),
                        }),
                        Err(e) => pb::isr_change_result::Result::Error(error_to_pb(e)),
                    }),
                })
                .collect(),
        }),
        Ok(ControlResponse::AlterClientQuotas(results)) => {
            R::AlterClientQuotas(pb::AlterClientQuotasResponse {
                results: results
                    .iter()
                    .map(|result| pb::QuotaEntryResult { error: item_error(result) })
                    .collect(),
            })
        }
        Ok(ControlResponse::AllocateProducerIds(block)) => {
            R::AllocateProducerIds(pb::ProducerIdBlock {
                first_producer_id: block.first_producer_id,
                len: block.len,
            })
        }
        Ok(ControlResponse::ElectLeaders(items)) => R::ElectLeaders(pb::ElectLeadersResponse {
            results: items
                .iter()
                .map(|item| {
                    use pb::partition_election::Result as T;
                    let result = match item.result {
                        Ok(leader) => T::Leader(leader.0),
                        Err(e) => T::Error(election_error_to_pb(e) as i32),
                    };
                    pb::PartitionElection {
                        topic: item.topic.clone(),
                        partition: item.partition,
                        result: Some(result),
                    }
                })
                .collect(),
        }),
        Ok(ControlResponse::AlterPartitionReassignments(items)) => {
            R::AlterReassignments(pb::AlterReassignmentsResponse {
                results: items
                    .iter()
                    .map(|item| pb::PartitionOutcome {
                        topic: item.topic.clone(),
                        partition: item.partition,
                        error: item_error(&item.result),
                    })
                    .collect(),
            })
        }
    };
    pb::ControlResponse { response: Some(response) }
}

pub fn response_from_pb(
    r: pb::ControlResponse,
) -> Result<Result<ControlResponse, ControlError>, WireError> {
    use pb::control_response::Response as R;
    Ok(Ok(match required(r.response, "ControlResponse.response")? {
        R::Error(e) => return Ok(Err(error_from_pb(&e)?)),
        R::Quorum(d) => ControlResponse::Quorum(quorum::description_from_pb(d)?),
        R::CreateTopics(r) => ControlResponse::CreateTopics(
            r.results
                .into_iter()
                .map(|item| {
                    use pb::create_topic_result::Result as T;
                    let result = match required(item.result, "CreateTopicResult.result")? {
                        T::Created(c) => Ok(CreatedTopic {
                            topic_id: topic_id(&c.topic_id, "CreatedTopic.topic_id")?,
                            num_partitions: c.num_partitions,
                            replication_factor: i16::try_from(c.replication_factor).map_err(
                                |_| WireError::UnknownEnum {
                                    field: "CreatedTopic.replication_factor",
                                    value: c.replication_factor,
                                },
                            )?,
                            configs: c
                                .configs
                                .into_iter()
                                .map(|e| (e.name, e.value.unwrap_or_default()))
                                .collect(),
                        }),
                        T::Error(e) => Err(error_from_pb(&e)?),
                    };
                    Ok(ItemResult { name: item.name, result })
                })
                .collect::<Result<_, WireError>>()?,
        ),
        R::DeleteTopics(r) => ControlResponse::DeleteTopics(
            r.results
                .into_iter()
                .map(|item| {
                    use pb::delete_topic_result::Result as T;
                    let result = match required(item.result, "DeleteTopicResult.result")? {
                        T::TopicId(id) => Ok(topic_id(&id, "DeleteTopicResult.topic_id")?),
                        T::Error(e) => Err(error_from_pb(&e)?),
                    };
                    Ok(ItemResult { name: item.name, result })
                })
                .collect::<Result<_, WireError>>()?,
        ),
        R::CreatePartitions(r) => ControlResponse::CreatePartitions(
            r.results
                .into_iter()
                .map(|item| Ok(ItemResult { result: item_result(&item.error)?, name: item.name }))
                .collect::<Result<_, WireError>>()?,
        ),
        R::AlterConfigs(r) => ControlResponse::AlterConfigs(
            r.results
                .into_iter()
                .map(|item| {
                    Ok(ResourceResult {
                        resource_type: resource_type(
                            item.resource_type,
                            "ResourceResult.resource_type",
                        )?,
                        result: item_result(&item.error)?,
                        resource_name: item.resource_name,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        ),
        R::RegisterBrokerEpoch(epoch) => ControlResponse::RegisterBroker(BrokerEpoch(epoch)),
        R::BrokerHeartbeat(h) => ControlResponse::BrokerHeartbeat(HeartbeatReply {
            is_caught_up: h.is_caught_up,
            is_fenced: h.is_fenced,
            should_shutdown: h.should_shutdown,
        }),
        R::AlterPartition(r) => ControlResponse::AlterPartition(AlterPartitionReply {
            partitions: r
                .partitions
                .into_iter()
                .map(|item| {
                    let result = match required(item.result, "IsrChangeResult.result")? {
                        pb::isr_change_result::Result::Changed(c) => Ok(IsrChanged {
                            partition_epoch: c.partition_epoch,
                            isr: c.isr.into_iter().map(NodeId).collect(),
                        }),
                        pb::isr_change_result::Result::Error(e) => Err(error_from_pb(&e)?),
                    };
                    Ok(IsrChangeResult { topic: item.topic, partition: item.partition, result })
                })
                .collect::<Result<_, WireError>>()?,
        }),
        R::AlterClientQuotas(r) => ControlResponse::AlterClientQuotas(
            r.results
                .iter()
                .map(|item| item_result(&item.error))
                .collect::<Result<_, WireError>>()?,
        ),
        R::AllocateProducerIds(b) => ControlResponse::AllocateProducerIds(ProducerIdBlock {
            first_producer_id: b.first_producer_id,
            len: b.len,
        }),
        R::ElectLeaders(r) => ControlResponse::ElectLeaders(
            r.results
                .into_iter()
                .map(|item| {
                    use pb::partition_election::Result as T;
                    let result = match required(item.result, "PartitionElection.result")? {
                        T::Leader(id) => Ok(NodeId(id)),
                        T::Error(e) => Err(election_error_from_pb(e)?),
                    };
                    Ok(PartitionElection { topic: item.topic, partition: item.partition, result })
                })
                .collect::<Result<_, WireError>>()?,
        ),
        R::AlterReassignments(r) => ControlResponse::AlterPartitionReassignments(
            r.results
                .into_iter()
                .map(|item| {
                    Ok(PartitionResult {
                        result: item_result(&item.error)?,
                        topic: item.topic,
                        partition: item.partition,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        ),
    }))
}

// ---- the metadata stream ----

/// One message of `Controller.WatchMetadata`, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct MetadataUpdate {
    /// The voter's metadata offset after this update.
    pub offset: MetadataOffset,
    /// The active controller as the voter knows it.
    pub leader_id: Option<u64>,
    pub change: MetadataChange,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MetadataChange {
    /// No metadata: the leader changed, or the voter says it is alive.
    None,
    /// One committed entry's records, to apply to the image at `prev_offset`.
    Delta { prev_offset: MetadataOffset, records: Vec<MetadataRecord> },
    /// The whole image at the update's offset, as `MetadataImage::to_records`.
    Snapshot(Vec<MetadataRecord>),
    /// Chunk `index` of the whole image at the update's offset: its next records.
    SnapshotChunk { index: u32, last: bool, records: Vec<MetadataRecord> },
}

/// Encoded bytes of one snapshot chunk of the metadata stream.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;

const _: () = assert!(
    SNAPSHOT_CHUNK_BYTES_MAX * 4 <= crate::network::RPC_MESSAGE_BYTES_MAX
        && strom_metadata::control::ENTRY_BYTES_MAX * 4 <= crate::network::RPC_MESSAGE_BYTES_MAX
);

/// Node ids travel as int64 with -1 for "none"; an id past i64 is no id a voter can have.
pub fn leader_to_pb(leader: Option<u64>) -> i64 {
    leader.and_then(|id| i64::try_from(id).ok()).unwrap_or(-1)
}

pub fn leader_from_pb(leader: i64) -> Option<u64> {
    u64::try_from(leader).ok()
}

/// A request too large to relay to the active controller over gRPC ([`RPC_MESSAGE_BYTES_MAX`]):
/// refused at once as a policy violation (it is far over the per-operation record cap anyway)
/// rather than retried until the deadline.
///
/// [`RPC_MESSAGE_BYTES_MAX`]: crate::network::RPC_MESSAGE_BYTES_MAX
pub fn check_relayable(message: &pb::ControlRequest) -> Result<(), ControlError> {
    let bytes = message.encoded_len();
    if bytes > crate::network::RPC_MESSAGE_BYTES_MAX {
        return Err(ControlError::PolicyViolation(format!(
            "the request is {bytes} bytes; one relayed to the active controller may be at most \
             {} bytes: split it into smaller requests",
            crate::network::RPC_MESSAGE_BYTES_MAX
        )));
    }
    Ok(())
}

/// One entry's records as `MetadataDelta.batch` bytes: encoded once, sent to every watcher.
pub fn encode_batch(records: &[MetadataRecord]) -> Vec<u8> {
    MetadataBatch { records: records.to_vec() }.encode_to_vec()
}

/// An image's records as `MetadataUpdate.snapshot` bytes.
pub fn encode_snapshot(records: Vec<MetadataRecord>) -> Vec<u8> {
    MetadataSnapshot { records }.encode_to_vec()
}

/// An image's records as `SnapshotChunk.batch` bytes, in order: each chunk at most
/// [`SNAPSHOT_CHUNK_BYTES_MAX`] unless one record alone is larger; an empty image is one empty
/// chunk, so the watcher still hears of it.
pub fn encode_snapshot_chunks(records: Vec<MetadataRecord>) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut current: Vec<MetadataRecord> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = strom_metadata::control::batch_bytes(std::slice::from_ref(&record));
        if !current.is_empty() && bytes + size > SNAPSHOT_CHUNK_BYTES_MAX {
            chunks.push(MetadataBatch { records: std::mem::take(&mut current) }.encode_to_vec());
            bytes = 0;
        }
        bytes += size;
        current.push(record);
    }
    if !current.is_empty() || chunks.is_empty() {
        chunks.push(MetadataBatch { records: current }.encode_to_vec());
    }
    chunks
}

pub fn update_to_pb(u: &MetadataUpdate) -> pb::MetadataUpdate {
    use pb::metadata_update::Update as U;
    let update = match &u.change {
        MetadataChange::None => None,
        MetadataChange::Delta { prev_offset, records } => Some(U::Delta(pb::MetadataDelta {
            prev_offset: prev_offset.0,
            batch: encode_batch(records),
        })),
        MetadataChange::Snapshot(records) => Some(U::Snapshot(encode_snapshot(records.clone()))),
        MetadataChange::SnapshotChunk { index, last, records } => {
            Some(U::SnapshotChunk(pb::SnapshotChunk {
                index: *index,
                last: *last,
                batch: encode_batch(records),
            }))
        }
    };
    pb::MetadataUpdate { offset: u.offset.0, leader_id: leader_to_pb(u.leader_id), update }
}

pub fn update_from_pb(u: pb::MetadataUpdate) -> Result<MetadataUpdate, WireError> {
    use pb::metadata_update::Update as U;
    let change = match u.update {
        None => MetadataChange::None,
        Some(U::Delta(d)) => MetadataChange::Delta {
            prev_offset: MetadataOffset(d.prev_offset),
            records: MetadataBatch::decode(d.batch.as_slice())
                .map_err(|source| WireError::Decode { field: "MetadataDelta.batch", source })?
                .records,
        },
        Some(U::Snapshot(bytes)) => MetadataChange::Snapshot(
            MetadataSnapshot::decode(bytes.as_slice())
                .map_err(|source| WireError::Decode { field: "MetadataUpdate.snapshot", source })?
                .records,
        ),
        Some(U::SnapshotChunk(c)) => MetadataChange::SnapshotChunk {
            index: c.index,
            last: c.last,
            records: MetadataBatch::decode(c.batch.as_slice())
                .map_err(|source| WireError::Decode { field: "SnapshotChunk.batch", source })?
                .records,
        },
    };
    Ok(MetadataUpdate {
        offset: MetadataOffset(u.offset),
        leader_id: leader_from_pb(u.leader_id),
        change,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_updates_survive_the_wire() {
        use strom_metadata::records::{metadata_record::Record, FeatureRecord};
        let record = MetadataRecord {
            record: Some(Record::Feature(FeatureRecord { name: "x".into(), feature_level: 3 })),
        };
        for change in [
            MetadataChange::None,
            MetadataChange::Delta { prev_offset: MetadataOffset(4), records: vec![record.clone()] },
            MetadataChange::Snapshot(vec![record.clone(), record.clone()]),
            MetadataChange::SnapshotChunk { index: 3, last: true, records: vec![record] },
        ] {
            for leader_id in [None, Some(0), Some(3)] {
                let u =
                    MetadataUpdate { offset: MetadataOffset(9), leader_id, change: change.clone() };
                assert_eq!(update_from_pb(update_to_pb(&u)).expect("decodes"), u);
            }
        }
        let garbage = pb::MetadataUpdate {
            offset: 1,
            leader_id: -1,
            update: Some(pb::metadata_update::Update::Snapshot(vec![0xff, 0xff, 0xff])),
        };
        assert!(matches!(update_from_pb(garbage), Err(WireError::Decode { .. })));
    }

    #[test]
    fn a_request_too_large_to_relay_is_a_policy_violation() {
        let topic = |partitions: usize| CreateTopic {
            name: "t".into(),
            num_partitions: -1,
            replication_factor: -1,
            assignments: (0..partitions as i32).map(|p| (p, vec![NodeId(1), NodeId(2)])).collect(),
            configs: Vec::new(),
        };
        let request = |partitions| {
            request_to_pb(&ControlRequest::CreateTopics(CreateTopicsRequest {
                topics: vec![topic(partitions)],
                ..Default::default()
            }))
        };
        assert!(check_relayable(&request(10_000)).is_ok());
        let refused = check_relayable(&request(2_000_000));
        assert!(matches!(refused, Err(ControlError::PolicyViolation(m)) if m.contains("bytes")));
    }

    #[test]
    fn a_large_image_goes_in_bounded_chunks_that_rebuild_it() {
        use strom_metadata::records::{metadata_record::Record, FeatureRecord};
        let records: Vec<MetadataRecord> = (0..5_000)
            .map(|i| MetadataRecord {
                record: Some(Record::Feature(FeatureRecord {
                    name: format!("{i:0>500}"),
                    feature_level: i,
                })),
            })
            .collect();
        let chunks = encode_snapshot_chunks(records.clone());
        assert!(chunks.len() >= 2, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.len() <= SNAPSHOT_CHUNK_BYTES_MAX));
        let back: Vec<MetadataRecord> = chunks
            .iter()
            .flat_map(|c| MetadataBatch::decode(c.as_slice()).expect("decodes").records)
            .collect();
        assert_eq!(back, records);
        assert_eq!(encode_snapshot_chunks(Vec::new()).len(), 1);
    }

    fn round_trip_request(r: ControlRequest) {
        let back = request_from_pb(request_to_pb(&r)).expect("decodes");
        assert_eq!(format!("{back:?}"), format!("{r:?}"));
    }

    fn round_trip_response(r: Result<ControlResponse, ControlError>) {
        let back = response_from_pb(response_to_pb(&r)).expect("decodes");
        assert_eq!(back, r);
    }

    #[test]
    fn every_request_survives_the_wire() {
        round_trip_request(ControlRequest::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: "t".into(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: vec![(0, vec![NodeId(1), NodeId(2)]), (1, vec![NodeId(2), NodeId(3)])],
                configs: vec![("retention.ms".into(), Some("5".into())), ("x".into(), None)],
            }],
            validate_only: true,
            internal: true,
        }));
        round_trip_request(ControlRequest::DeleteTopics(DeleteTopicsRequest {
            names: vec!["a".into()],
            ids: vec![TopicId([7; 16])],
        }));
        round_trip_request(ControlRequest::CreatePartitions(CreatePartitionsRequest {
            topics: vec![NewPartitions {
                topic: "t".into(),
                count: 4,
                assignments: vec![vec![NodeId(1)]],
            }],
            validate_only: false,
        }));
        round_trip_request(ControlRequest::AlterConfigs(AlterConfigsRequest {
            resources: vec![ConfigAlteration {
                resource_type: ConfigResourceType::ConfigResourceTopic,
                resource_name: "t".into(),
                ops: vec![
                    ("cleanup.policy".into(), AlterConfigOp::Append, Some("compact".into())),
                    ("retention.ms".into(), AlterConfigOp::Delete, None),
                ],
            }],
            incremental: true,
            validate_only: false,
        }));
        round_trip_request(ControlRequest::RegisterBroker(RegisterBrokerRequest {
            broker_id: NodeId(3),
            incarnation_id: vec![1; 16],
            endpoints: vec![Endpoint { name: "PLAINTEXT".into(), host: "h".into(), port: 9 }],
            rack: Some("r1".into()),
        }));
        round_trip_request(ControlRequest::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: NodeId(3),
            broker_epoch: BrokerEpoch(12),
            current_metadata_offset: MetadataOffset(40),
            want_fence: false,
            want_shutdown: true,
        }));
        round_trip_request(ControlRequest::ElectLeaders { topics: None, preferred: true });
        round_trip_request(ControlRequest::ElectLeaders {
            topics: Some(vec![("t".into(), vec![0, 2])]),
            preferred: false,
        });
        round_trip_request(ControlRequest::AlterPartitionReassignments(
            ReassignPartitionsRequest {
                partitions: vec![
                    PartitionReassignment {
                        topic: "t".into(),
                        partition: 1,
                        target: Some(vec![NodeId(3), NodeId(1)]),
                    },
                    PartitionReassignment { topic: "t".into(), partition: 0, target: None },
                ],
            },
        ));
        round_trip_request(ControlRequest::AlterClientQuotas(AlterClientQuotasRequest {
            entries: vec![QuotaAlteration {
                entity: vec![("user".into(), None), ("client-id".into(), Some("c".into()))],
                ops: vec![
                    ("producer_byte_rate".into(), Some(1e6)),
                    ("request_percentage".into(), None),
                ],
            }],
            validate_only: true,
        }));
        round_trip_request(ControlRequest::AllocateProducerIds(AllocateProducerIdsRequest {
            broker_id: NodeId(2),
            broker_epoch: BrokerEpoch(31),
        }));
        round_trip_request(ControlRequest::AlterPartition(AlterPartitionRequest {
            broker_id: NodeId(1),
            broker_epoch: BrokerEpoch(9),
            changes: vec![IsrChange {
                topic: "t".into(),
                partition: 3,
                leader_epoch: 4,
                partition_epoch: 5,
                new_isr: vec![NodeId(1), NodeId(3)],
            }],
        }));
    }

    #[test]
    fn every_response_and_error_survives_the_wire() {
        round_trip_response(Ok(ControlResponse::CreateTopics(vec![
            ItemResult {
                name: "a".into(),
                result: Ok(CreatedTopic {
                    topic_id: TopicId([3; 16]),
                    num_partitions: 2,
                    replication_factor: 3,
                    configs: vec![("retention.ms".into(), "9".into())],
                }),
            },
            ItemResult {
                name: "b".into(),
                result: Err(ControlError::TopicAlreadyExists("b".into())),
            },
        ])));
        round_trip_response(Ok(ControlResponse::DeleteTopics(vec![
            ItemResult { name: "a".into(), result: Ok(TopicId([3; 16])) },
            ItemResult {
                name: String::new(),
                result: Err(ControlError::UnknownTopicId(TopicId([4; 16]))),
            },
        ])));
        round_trip_response(Ok(ControlResponse::CreatePartitions(vec![ItemResult {
            name: "a".into(),
            result: Err(ControlError::InvalidPartitions("no".into())),
        }])));
        round_trip_response(Ok(ControlResponse::AlterConfigs(vec![ResourceResult {
            resource_type: ConfigResourceType::ConfigResourceTopic,
            resource_name: "a".into(),
            result: Ok(()),
        }])));
        round_trip_response(Ok(ControlResponse::RegisterBroker(BrokerEpoch(17))));
        round_trip_response(Ok(ControlResponse::AlterPartition(AlterPartitionReply {
            partitions: vec![
                IsrChangeResult {
                    topic: "t".into(),
                    partition: 0,
                    result: Ok(IsrChanged { partition_epoch: 2, isr: vec![NodeId(1)] }),
                },
                IsrChangeResult {
                    topic: "t".into(),
                    partition: 1,
                    result: Err(ControlError::InvalidUpdateVersion("stale".into())),
                },
            ],
        })));
        round_trip_response(Ok(ControlResponse::AlterClientQuotas(vec![
            Ok(()),
            Err(ControlError::InvalidRequest("no".into())),
        ])));
        round_trip_response(Ok(ControlResponse::AllocateProducerIds(ProducerIdBlock {
            first_producer_id: 7_000,
            len: 1_000,
        })));
        round_trip_response(Ok(ControlResponse::BrokerHeartbeat(HeartbeatReply {
            is_caught_up: true,
            is_fenced: false,
            should_shutdown: true,
        })));
        round_trip_response(Ok(ControlResponse::AlterPartitionReassignments(vec![
            PartitionResult { topic: "a".into(), partition: 0, result: Ok(()) },
            PartitionResult {
                topic: "a".into(),
                partition: 1,
                result: Err(ControlError::NoReassignmentInProgress("a-1".into())),
            },
        ])));
        round_trip_response(Ok(ControlResponse::ElectLeaders(vec![
            PartitionElection { topic: "a".into(), partition: 0, result: Ok(NodeId(2)) },
            PartitionElection {
                topic: "a".into(),
                partition: 1,
                result: Err(ElectionError::PreferredLeaderNotAvailable),
            },
        ])));
        for e in [
            ControlError::UnknownTopicOrPartition("x".into()),
            ControlError::InvalidTopic("x".into()),
            ControlError::InvalidReplicationFactor("x".into()),
            ControlError::InvalidReplicaAssignment("x".into()),
            ControlError::InvalidConfig("x".into()),
            ControlError::InvalidRequest("x".into()),
            ControlError::StaleBrokerEpoch(4),
            ControlError::DuplicateBrokerRegistration("x".into()),
            ControlError::NotController,
            ControlError::ControllerUnavailable("x".into()),
            ControlError::OutcomeUnknown("x".into()),
            ControlError::ProducerIdsExhausted,
        ] {
            round_trip_response(Err(e));
        }
    }

    #[test]
    fn garbage_from_a_peer_is_an_error_not_a_panic() {
        assert!(request_from_pb(pb::ControlRequest { request: None }).is_err());
        let bad_code = pb::ControlResponse {
            response: Some(pb::control_response::Response::Error(pb::ControlError {
                code: 999,
                ..Default::default()
            })),
        };
        assert!(response_from_pb(bad_code).is_err());
        let bad_id = pb::ControlRequest {
            request: Some(pb::control_request::Request::DeleteTopics(pb::DeleteTopicsRequest {
                names: vec![],
                ids: vec![vec![1, 2, 3]],
            })),
        };
        assert!(request_from_pb(bad_id).is_err());
    }
}
