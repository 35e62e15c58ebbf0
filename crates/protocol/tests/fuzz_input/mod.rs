//! Fuzz input shared by the decoder fuzz (`crates/protocol/tests/fuzz.rs`) and the running-node
//! fuzz (`tests/tests/e2e/fuzz_node.rs`, which includes this file by path): a valid request
//! frame of every API and version, with fields populated, and a seeded mutator that breaks it
//! the ways a hostile or buggy client would (bit flips, boundary values, lying length and count
//! fields, truncation, junk, stray varints).
//!
//! Depends only on `kafka-protocol`, `bytes` and `strom-testkit`, which both test crates have.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    add_raft_voter_request, alter_client_quotas_request, alter_configs_request,
    alter_partition_reassignments_request, create_partitions_request, create_topics_request,
    delete_records_request, delete_topics_request, describe_client_quotas_request,
    describe_configs_request, describe_log_dirs_request, describe_quorum_request,
    describe_topic_partitions_request, elect_leaders_request, fetch_request,
    incremental_alter_configs_request, join_group_request, leave_group_request,
    list_offsets_request, list_partition_reassignments_request, metadata_request,
    offset_commit_request, offset_delete_request, offset_fetch_request,
    offset_for_leader_epoch_request, produce_request, sync_group_request,
    update_raft_voter_request, AddOffsetsToTxnRequest, AddPartitionsToTxnRequest,
    AddRaftVoterRequest, AlterClientQuotasRequest, AlterConfigsRequest,
    AlterPartitionReassignmentsRequest, ApiKey, ApiVersionsRequest, BrokerId,
    ConsumerGroupDescribeRequest, ConsumerGroupHeartbeatRequest, CreatePartitionsRequest,
    CreateTopicsRequest, DeleteGroupsRequest, DeleteRecordsRequest, DeleteTopicsRequest,
    DescribeClientQuotasRequest, DescribeClusterRequest, DescribeConfigsRequest,
    DescribeGroupsRequest, DescribeLogDirsRequest, DescribeProducersRequest, DescribeQuorumRequest,
    DescribeTopicPartitionsRequest, DescribeTransactionsRequest, ElectLeadersRequest,
    EndTxnRequest, FetchRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest,
    IncrementalAlterConfigsRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, ListOffsetsRequest, ListPartitionReassignmentsRequest,
    ListTransactionsRequest, MetadataRequest, OffsetCommitRequest, OffsetDeleteRequest,
    OffsetFetchRequest, OffsetForLeaderEpochRequest, ProduceRequest, ProducerId,
    RemoveRaftVoterRequest, RequestHeader, SyncGroupRequest, TopicName, TransactionalId,
    TxnOffsetCommitRequest, UpdateRaftVoterRequest, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use strom_testkit::TestRng;

/// The topic the generated requests name (the node fuzz creates it first).
pub const TOPIC: &str = "fuzz-topic";
/// The topic CreateTopics and DeleteTopics requests name, so the fuzz never deletes `TOPIC`.
pub const SCRATCH_TOPIC: &str = "fuzz-scratch";
pub const GROUP: &str = "fuzz-group";
pub const CLIENT_ID: &str = "strom-fuzz";
/// Bytes at the start of a frame that hold the api key and version.
pub const KEY_AND_VERSION_BYTES: usize = 4;
/// An unknown tagged field added to every flexible request, so that tag parsing is fuzzed too.
const UNKNOWN_TAG: i32 = 999;

fn s(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

fn topic(text: &'static str) -> TopicName {
    TopicName(s(text))
}

fn tag() -> Bytes {
    Bytes::from_static(b"fuzz")
}

/// A valid request frame without its length prefix (what `decode_request` takes): header for
/// `version`, then a body with populated fields. `records` is the record batch a Produce
/// carries. `None` only for an API this module does not know.
pub fn valid_frame(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    records: &Bytes,
) -> Option<Vec<u8>> {
    let body = valid_body(key, version, records)?;
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s(CLIENT_ID)));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, key.request_header_version(version)).ok()?;
    buf.extend_from_slice(&body);
    Some(buf.to_vec())
}

/// The body of the first candidate that encodes at `version`. Candidates go from richest to
/// `Default`: a field a version lacks makes the codec refuse the richer ones.
fn first_encodable<R: Encodable>(version: i16, candidates: Vec<R>) -> Option<Vec<u8>> {
    candidates.into_iter().find_map(|request| {
        let mut buf = BytesMut::new();
        request.encode(&mut buf, version).ok().map(|()| buf.to_vec())
    })
}

fn valid_body(key: ApiKey, v: i16, records: &Bytes) -> Option<Vec<u8>> {
    match key {
        ApiKey::Produce => first_encodable(v, produce(v, records)),
        ApiKey::Fetch => first_encodable(v, fetch(v)),
        ApiKey::ListOffsets => first_encodable(v, list_offsets()),
        ApiKey::OffsetForLeaderEpoch => first_encodable(v, offset_for_leader_epoch()),
        ApiKey::Metadata => first_encodable(v, metadata()),
        ApiKey::FindCoordinator => first_encodable(v, find_coordinator()),
        ApiKey::JoinGroup => first_encodable(v, join_group()),
        ApiKey::SyncGroup => first_encodable(v, sync_group()),
        ApiKey::Heartbeat => first_encodable(v, heartbeat()),
        ApiKey::LeaveGroup => first_encodable(v, leave_group()),
        ApiKey::OffsetCommit => first_encodable(v, offset_commit()),
        ApiKey::OffsetFetch => first_encodable(v, offset_fetch()),
        ApiKey::ListGroups => first_encodable(v, list_groups()),
        ApiKey::DescribeGroups => first_encodable(v, describe_groups()),
        ApiKey::DeleteGroups => first_encodable(v, delete_groups()),
        ApiKey::OffsetDelete => first_encodable(v, offset_delete()),
        ApiKey::ApiVersions => first_encodable(v, api_versions()),
        ApiKey::CreateTopics => first_encodable(v, create_topics()),
        ApiKey::DeleteTopics => first_encodable(v, delete_topics()),
        ApiKey::DescribeConfigs => first_encodable(v, describe_configs()),
        ApiKey::AlterConfigs => first_encodable(v, alter_configs()),
        ApiKey::CreatePartitions => first_encodable(v, create_partitions()),
        ApiKey::IncrementalAlterConfigs => first_encodable(v, incremental_alter_configs()),
        ApiKey::DescribeCluster => first_encodable(v, describe_cluster()),
        ApiKey::InitProducerId => first_encodable(v, init_producer_id()),
        ApiKey::WriteTxnMarkers => first_encodable(v, write_txn_markers()),
        ApiKey::DescribeProducers => first_encodable(v, describe_producers()),
        ApiKey::TxnOffsetCommit => first_encodable(v, txn_offset_commit()),
        ApiKey::AddPartitionsToTxn => first_encodable(v, add_partitions_to_txn()),
        ApiKey::AddOffsetsToTxn => first_encodable(v, add_offsets_to_txn()),
        ApiKey::EndTxn => first_encodable(v, end_txn()),
        ApiKey::DescribeTransactions => first_encodable(v, describe_transactions()),
        ApiKey::ListTransactions => first_encodable(v, list_transactions()),
        ApiKey::DescribeQuorum => first_encodable(v, describe_quorum()),
        ApiKey::AddRaftVoter => first_encodable(v, add_raft_voter()),
        ApiKey::RemoveRaftVoter => first_encodable(v, remove_raft_voter()),
        ApiKey::UpdateRaftVoter => first_encodable(v, update_raft_voter()),
        ApiKey::DeleteRecords => first_encodable(v, delete_records()),
        ApiKey::DescribeLogDirs => first_encodable(v, describe_log_dirs()),
        ApiKey::ElectLeaders => first_encodable(v, elect_leaders()),
        ApiKey::AlterPartitionReassignments => first_encodable(v, alter_reassignments()),
        ApiKey::ListPartitionReassignments => first_encodable(v, list_reassignments()),
        ApiKey::DescribeTopicPartitions => first_encodable(v, describe_topic_partitions()),
        ApiKey::DescribeClientQuotas => first_encodable(v, describe_client_quotas()),
        ApiKey::AlterClientQuotas => first_encodable(v, alter_client_quotas()),
        ApiKey::ConsumerGroupHeartbeat => first_encodable(v, consumer_group_heartbeat()),
        ApiKey::ConsumerGroupDescribe => first_encodable(v, consumer_group_describe()),
        _ => None,
    }
}

fn produce(v: i16, records: &Bytes) -> Vec<ProduceRequest> {
    let partition = |index| {
        produce_request::PartitionProduceData::default()
            .with_index(index)
            .with_records(Some(records.clone()))
    };
    // v13 names topics by id only.
    let name = if v <= 12 { topic(TOPIC) } else { TopicName::default() };
    let rich = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(1_000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(name)
            .with_partition_data(vec![partition(0), partition(1)])])
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, ProduceRequest::default()]
}

fn fetch(v: i16) -> Vec<FetchRequest> {
    let name = if v <= 12 { topic(TOPIC) } else { TopicName::default() };
    let partition = |index| {
        fetch_request::FetchPartition::default()
            .with_partition(index)
            .with_fetch_offset(0)
            .with_current_leader_epoch(-1)
            .with_partition_max_bytes(64 * 1024)
    };
    let topics = vec![fetch_request::FetchTopic::default()
        .with_topic(name.clone())
        .with_partitions(vec![partition(0), partition(1)])];
    let base = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(256 * 1024)
        .with_topics(topics);
    let rich = base
        .clone()
        .with_isolation_level(1)
        .with_forgotten_topics_data(vec![fetch_request::ForgottenTopic::default()
            .with_topic(name)
            .with_partitions(vec![3])])
        .with_rack_id(s("rack-a"))
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, base, FetchRequest::default()]
}

fn list_offsets() -> Vec<ListOffsetsRequest> {
    let partition = |index, timestamp| {
        list_offsets_request::ListOffsetsPartition::default()
            .with_partition_index(index)
            .with_current_leader_epoch(-1)
            .with_timestamp(timestamp)
    };
    let topics = vec![list_offsets_request::ListOffsetsTopic::default()
        .with_name(topic(TOPIC))
        .with_partitions(vec![
            partition(0, -1),
            partition(1, -2),
            partition(0, 1_700_000_000_000),
        ])];
    let base = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(topics);
    let rich = base.clone().with_isolation_level(1).with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, base, ListOffsetsRequest::default()]
}

fn offset_for_leader_epoch() -> Vec<OffsetForLeaderEpochRequest> {
    let partition = |index| {
        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
            .with_partition(index)
            .with_current_leader_epoch(-1)
            .with_leader_epoch(0)
    };
    let rich = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
            .with_topic(topic(TOPIC))
            .with_partitions(vec![partition(0), partition(1)])])
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, OffsetForLeaderEpochRequest::default()]
}

fn metadata() -> Vec<MetadataRequest> {
    let topics = Some(vec![
        metadata_request::MetadataRequestTopic::default().with_name(Some(topic(TOPIC))),
        metadata_request::MetadataRequestTopic::default().with_name(Some(topic("fuzz-absent"))),
    ]);
    let base = MetadataRequest::default().with_topics(topics);
    let rich = base
        .clone()
        .with_allow_auto_topic_creation(false)
        .with_include_topic_authorized_operations(true)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, base, MetadataRequest::default()]
}

fn find_coordinator() -> Vec<FindCoordinatorRequest> {
    let old = FindCoordinatorRequest::default().with_key(s(GROUP)).with_key_type(0);
    let batched = FindCoordinatorRequest::default()
        .with_key_type(0)
        .with_coordinator_keys(vec![s(GROUP), s("fuzz-other-group")])
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![batched, old.clone().with_unknown_tagged_field(UNKNOWN_TAG, tag()), old]
}

fn join_group() -> Vec<JoinGroupRequest> {
    let protocols = vec![join_group_request::JoinGroupRequestProtocol::default()
        .with_name(s("range"))
        .with_metadata(Bytes::from_static(&[0, 1, 0, 0, 0, 1, 0, 10, b'f', b'u', b'z', b'z']))];
    let base = JoinGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_session_timeout_ms(10_000)
        .with_member_id(StrBytes::default())
        .with_protocol_type(s("consumer"))
        .with_protocols(protocols);
    let rich = base
        .clone()
        .with_rebalance_timeout_ms(1_000)
        .with_group_instance_id(Some(s("fuzz-instance")))
        .with_reason(Some(s("fuzz")))
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    let middle = base.clone().with_rebalance_timeout_ms(1_000);
    vec![rich, middle, base, JoinGroupRequest::default()]
}

fn sync_group() -> Vec<SyncGroupRequest> {
    let base = SyncGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_generation_id(1)
        .with_member_id(s("fuzz-member"))
        .with_assignments(vec![sync_group_request::SyncGroupRequestAssignment::default()
            .with_member_id(s("fuzz-member"))
            .with_assignment(Bytes::from_static(&[0, 1, 0, 0, 0, 0]))]);
    let rich = base
        .clone()
        .with_group_instance_id(Some(s("fuzz-instance")))
        .with_protocol_type(Some(s("consumer")))
        .with_protocol_name(Some(s("range")))
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, base, SyncGroupRequest::default()]
}

fn heartbeat() -> Vec<HeartbeatRequest> {
    let base = HeartbeatRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_generation_id(1)
        .with_member_id(s("fuzz-member"));
    let rich = base
        .clone()
        .with_group_instance_id(Some(s("fuzz-instance")))
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, base, HeartbeatRequest::default()]
}

fn leave_group() -> Vec<LeaveGroupRequest> {
    let old = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_member_id(s("fuzz-member"));
    let member = |id: &'static str| {
        leave_group_request::MemberIdentity::default()
            .with_member_id(s(id))
            .with_group_instance_id(Some(s("fuzz-instance")))
    };
    let batched = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_members(vec![member("fuzz-member"), member("fuzz-other")]);
    let rich = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_members(vec![member("fuzz-member").with_reason(Some(s("fuzz")))])
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, batched, old, LeaveGroupRequest::default()]
}

fn offset_commit() -> Vec<OffsetCommitRequest> {
    let partition = |index, offset| {
        offset_commit_request::OffsetCommitRequestPartition::default()
            .with_partition_index(index)
            .with_committed_offset(offset)
            .with_committed_metadata(Some(s("fuzz-metadata")))
    };
    let topics = vec![offset_commit_request::OffsetCommitRequestTopic::default()
        .with_name(topic(TOPIC))
        .with_partitions(vec![partition(0, 1), partition(1, 0)])];
    let base = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::default())
        .with_topics(topics);
    let with_retention = base.clone().with_retention_time_ms(-1);
    let rich = base
        .clone()
        .with_group_instance_id(Some(s("fuzz-instance")))
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, with_retention, base, OffsetCommitRequest::default()]
}

fn offset_fetch() -> Vec<OffsetFetchRequest> {
    let old =
        OffsetFetchRequest::default().with_group_id(GroupId(s(GROUP))).with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(topic(TOPIC))
                .with_partition_indexes(vec![0, 1]),
        ]));
    let group = |id: &'static str| {
        offset_fetch_request::OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s(id)))
            .with_topics(Some(vec![offset_fetch_request::OffsetFetchRequestTopics::default()
                .with_name(topic(TOPIC))
                .with_partition_indexes(vec![0, 1])]))
    };
    let batched = OffsetFetchRequest::default()
        .with_groups(vec![group(GROUP), group("fuzz-other-group")])
        .with_require_stable(true)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![batched, old.clone().with_require_stable(true), old, OffsetFetchRequest::default()]
}

fn list_groups() -> Vec<ListGroupsRequest> {
    let states = ListGroupsRequest::default().with_states_filter(vec![s("Stable"), s("Empty")]);
    let rich = states
        .clone()
        .with_types_filter(vec![s("classic")])
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, states, ListGroupsRequest::default()]
}

fn describe_groups() -> Vec<DescribeGroupsRequest> {
    let base = DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(s(GROUP)), GroupId(s("fuzz-other-group"))]);
    let rich = base
        .clone()
        .with_include_authorized_operations(true)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, base, DescribeGroupsRequest::default()]
}

fn delete_groups() -> Vec<DeleteGroupsRequest> {
    let rich = DeleteGroupsRequest::default()
        .with_groups_names(vec![GroupId(s("fuzz-other-group"))])
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, DeleteGroupsRequest::default()]
}

fn offset_delete() -> Vec<OffsetDeleteRequest> {
    let rich = OffsetDeleteRequest::default().with_group_id(GroupId(s(GROUP))).with_topics(vec![
        offset_delete_request::OffsetDeleteRequestTopic::default()
            .with_name(topic(TOPIC))
            .with_partitions(vec![offset_delete_request::OffsetDeleteRequestPartition::default()
                .with_partition_index(1)]),
    ]);
    vec![rich, OffsetDeleteRequest::default()]
}

fn api_versions() -> Vec<ApiVersionsRequest> {
    let rich = ApiVersionsRequest::default()
        .with_client_software_name(s("strom-fuzz"))
        .with_client_software_version(s("1.0"))
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, ApiVersionsRequest::default()]
}

fn create_topics() -> Vec<CreateTopicsRequest> {
    let creatable = create_topics_request::CreatableTopic::default()
        .with_name(topic(SCRATCH_TOPIC))
        .with_num_partitions(2)
        .with_replication_factor(1)
        .with_configs(vec![
            create_topics_request::CreatableTopicConfig::default()
                .with_name(s("retention.ms"))
                .with_value(Some(s("60000"))),
            create_topics_request::CreatableTopicConfig::default()
                .with_name(s("cleanup.policy"))
                .with_value(Some(s("compact"))),
        ]);
    let assigned = create_topics_request::CreatableTopic::default()
        .with_name(topic("fuzz-assigned"))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
        .with_assignments(vec![create_topics_request::CreatableReplicaAssignment::default()
            .with_partition_index(0)
            .with_broker_ids(vec![BrokerId(1)])]);
    let rich = CreateTopicsRequest::default()
        .with_topics(vec![creatable, assigned])
        .with_timeout_ms(5_000)
        .with_validate_only(true)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, CreateTopicsRequest::default()]
}

fn delete_topics() -> Vec<DeleteTopicsRequest> {
    let by_name = DeleteTopicsRequest::default()
        .with_topic_names(vec![topic(SCRATCH_TOPIC), topic("fuzz-absent")])
        .with_timeout_ms(5_000);
    let by_state = DeleteTopicsRequest::default()
        .with_topics(vec![delete_topics_request::DeleteTopicState::default()
            .with_name(Some(topic(SCRATCH_TOPIC)))])
        .with_timeout_ms(5_000)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![by_state, by_name, DeleteTopicsRequest::default()]
}

/// Kafka's ConfigResource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn describe_configs() -> Vec<DescribeConfigsRequest> {
    let resources = vec![
        describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(s(TOPIC))
            .with_configuration_keys(Some(vec![s("retention.ms"), s("cleanup.policy")])),
        describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_BROKER)
            .with_resource_name(s("1"))
            .with_configuration_keys(None),
    ];
    let base = DescribeConfigsRequest::default().with_resources(resources);
    let rich = base
        .clone()
        .with_include_synonyms(true)
        .with_include_documentation(true)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    let synonyms = base.clone().with_include_synonyms(true);
    vec![rich, synonyms, base, DescribeConfigsRequest::default()]
}

fn alter_configs() -> Vec<AlterConfigsRequest> {
    let rich = AlterConfigsRequest::default()
        .with_resources(vec![alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(s(SCRATCH_TOPIC))
            .with_configs(vec![alter_configs_request::AlterableConfig::default()
                .with_name(s("retention.ms"))
                .with_value(Some(s("120000")))])])
        .with_validate_only(true)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, AlterConfigsRequest::default()]
}

fn describe_client_quotas() -> Vec<DescribeClientQuotasRequest> {
    let component = |entity_type: &'static str, match_type, name: Option<&'static str>| {
        describe_client_quotas_request::ComponentData::default()
            .with_entity_type(s(entity_type))
            .with_match_type(match_type)
            .with_match(name.map(s))
    };
    let rich = DescribeClientQuotasRequest::default()
        .with_components(vec![
            component("client-id", 0, Some("fuzz-quota")),
            component("user", 1, None),
        ])
        .with_strict(true)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, DescribeClientQuotasRequest::default()]
}

/// Validate-only, on a client id the fuzz does not use: a mutated frame that sets a quota
/// does not throttle the fuzz's own connection.
fn alter_client_quotas() -> Vec<AlterClientQuotasRequest> {
    let rich = AlterClientQuotasRequest::default()
        .with_entries(vec![alter_client_quotas_request::EntryData::default()
            .with_entity(vec![
                alter_client_quotas_request::EntityData::default()
                    .with_entity_type(s("client-id"))
                    .with_entity_name(Some(s("fuzz-quota"))),
                alter_client_quotas_request::EntityData::default()
                    .with_entity_type(s("user"))
                    .with_entity_name(None),
            ])
            .with_ops(vec![
                alter_client_quotas_request::OpData::default()
                    .with_key(s("producer_byte_rate"))
                    .with_value(1e12),
                alter_client_quotas_request::OpData::default()
                    .with_key(s("consumer_byte_rate"))
                    .with_remove(true),
            ])])
        .with_validate_only(true)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, AlterClientQuotasRequest::default()]
}

fn incremental_alter_configs() -> Vec<IncrementalAlterConfigsRequest> {
    let config = |name: &'static str, operation, value: Option<&'static str>| {
        incremental_alter_configs_request::AlterableConfig::default()
            .with_name(s(name))
            .with_config_operation(operation)
            .with_value(value.map(s))
    };
    let rich = IncrementalAlterConfigsRequest::default()
        .with_resources(vec![incremental_alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(s(SCRATCH_TOPIC))
            .with_configs(vec![
                config("retention.ms", 0, Some("120000")),
                config("cleanup.policy", 2, Some("delete")),
                config("segment.bytes", 1, None),
            ])])
        .with_validate_only(true)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, IncrementalAlterConfigsRequest::default()]
}

fn create_partitions() -> Vec<CreatePartitionsRequest> {
    let rich = CreatePartitionsRequest::default()
        .with_topics(vec![create_partitions_request::CreatePartitionsTopic::default()
            .with_name(topic(SCRATCH_TOPIC))
            .with_count(3)
            .with_assignments(Some(vec![
                create_partitions_request::CreatePartitionsAssignment::default()
                    .with_broker_ids(vec![BrokerId(1)]),
            ]))])
        .with_timeout_ms(5_000)
        .with_validate_only(true)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, CreatePartitionsRequest::default()]
}

fn describe_quorum() -> Vec<DescribeQuorumRequest> {
    let partition = describe_quorum_request::PartitionData::default().with_partition_index(0);
    let topic = describe_quorum_request::TopicData::default()
        .with_topic_name(topic("__cluster_metadata"))
        .with_partitions(vec![partition]);
    vec![DescribeQuorumRequest::default().with_topics(vec![topic])]
}

/// The quorum changes name another cluster and a voter that does not exist, so a running node
/// refuses them at once; a mutation that clears the cluster id still asks only for node 99,
/// with a short timeout.
const FUZZ_CLUSTER: &str = "fuzz-other-cluster";
const FUZZ_VOTER: i32 = 99;

fn add_raft_voter() -> Vec<AddRaftVoterRequest> {
    let listener = add_raft_voter_request::Listener::default()
        .with_name(StrBytes::from_static_str("CONTROLLER"))
        .with_host(StrBytes::from_static_str("127.0.0.1"))
        .with_port(1);
    vec![AddRaftVoterRequest::default()
        .with_cluster_id(Some(StrBytes::from_static_str(FUZZ_CLUSTER)))
        .with_timeout_ms(100)
        .with_voter_id(FUZZ_VOTER)
        .with_listeners(vec![listener])]
}

fn remove_raft_voter() -> Vec<RemoveRaftVoterRequest> {
    vec![RemoveRaftVoterRequest::default()
        .with_cluster_id(Some(StrBytes::from_static_str(FUZZ_CLUSTER)))
        .with_voter_id(FUZZ_VOTER)]
}

fn update_raft_voter() -> Vec<UpdateRaftVoterRequest> {
    let listener = update_raft_voter_request::Listener::default()
        .with_name(StrBytes::from_static_str("CONTROLLER"))
        .with_host(StrBytes::from_static_str("127.0.0.1"))
        .with_port(1);
    vec![UpdateRaftVoterRequest::default()
        .with_cluster_id(Some(StrBytes::from_static_str(FUZZ_CLUSTER)))
        .with_voter_id(FUZZ_VOTER)
        .with_listeners(vec![listener])]
}

/// Deletes nothing on a running node: offset 0 never moves a log start offset.
fn delete_records() -> Vec<DeleteRecordsRequest> {
    let partition =
        delete_records_request::DeleteRecordsPartition::default().with_partition_index(0);
    let topic = delete_records_request::DeleteRecordsTopic::default()
        .with_name(topic(TOPIC))
        .with_partitions(vec![partition]);
    let rich = DeleteRecordsRequest::default()
        .with_topics(vec![topic.clone()])
        .with_timeout_ms(1_000)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, DeleteRecordsRequest::default().with_topics(vec![topic])]
}

fn describe_log_dirs() -> Vec<DescribeLogDirsRequest> {
    let topic = describe_log_dirs_request::DescribableLogDirTopic::default()
        .with_topic(topic(TOPIC))
        .with_partitions(vec![0, 1]);
    let rich = DescribeLogDirsRequest::default()
        .with_topics(Some(vec![topic]))
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, DescribeLogDirsRequest::default()]
}

/// A preferred election of the fuzz topic's partitions (on a running node: already preferred).
fn elect_leaders() -> Vec<ElectLeadersRequest> {
    let partitions = elect_leaders_request::TopicPartitions::default()
        .with_topic(topic(TOPIC))
        .with_partitions(vec![0, 1]);
    let rich = ElectLeadersRequest::default()
        .with_election_type(0)
        .with_topic_partitions(Some(vec![partitions.clone()]))
        .with_timeout_ms(1_000)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, ElectLeadersRequest::default().with_topic_partitions(Some(vec![partitions]))]
}

/// Cancels a reassignment of the fuzz topic (on a running node: none is in progress).
fn alter_reassignments() -> Vec<AlterPartitionReassignmentsRequest> {
    let partition = alter_partition_reassignments_request::ReassignablePartition::default()
        .with_partition_index(0)
        .with_replicas(None);
    let topic = alter_partition_reassignments_request::ReassignableTopic::default()
        .with_name(topic(TOPIC))
        .with_partitions(vec![partition]);
    let rich = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(1_000)
        .with_topics(vec![topic.clone()])
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, AlterPartitionReassignmentsRequest::default().with_topics(vec![topic])]
}

fn list_reassignments() -> Vec<ListPartitionReassignmentsRequest> {
    let topic = list_partition_reassignments_request::ListPartitionReassignmentsTopics::default()
        .with_name(topic(TOPIC))
        .with_partition_indexes(vec![0, 1]);
    let rich = ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(1_000)
        .with_topics(Some(vec![topic]))
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, ListPartitionReassignmentsRequest::default()]
}

/// The fuzz topic and one that does not exist, a page of one partition, from the cursor
/// `TOPIC`-0 (the cursor topic must be among those named).
fn describe_topic_partitions() -> Vec<DescribeTopicPartitionsRequest> {
    let named =
        |name| describe_topic_partitions_request::TopicRequest::default().with_name(topic(name));
    let cursor = describe_topic_partitions_request::Cursor::default()
        .with_topic_name(topic(TOPIC))
        .with_partition_index(0);
    let rich = DescribeTopicPartitionsRequest::default()
        .with_topics(vec![named(TOPIC), named(SCRATCH_TOPIC)])
        .with_response_partition_limit(1)
        .with_cursor(Some(cursor))
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, DescribeTopicPartitionsRequest::default()]
}

fn describe_cluster() -> Vec<DescribeClusterRequest> {
    let rich = DescribeClusterRequest::default()
        .with_include_cluster_authorized_operations(true)
        .with_endpoint_type(1)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    let base = DescribeClusterRequest::default().with_include_cluster_authorized_operations(true);
    vec![rich, base, DescribeClusterRequest::default()]
}

/// An idempotent producer's request (no transactional id): what a running node answers with
/// a fresh producer id.
fn init_producer_id() -> Vec<InitProducerIdRequest> {
    let base = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000);
    // v3+ (KIP-360): the producer's current id and epoch.
    let rich = base
        .clone()
        .with_producer_id(ProducerId(1_000))
        .with_producer_epoch(3)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, base.clone().with_unknown_tagged_field(UNKNOWN_TAG, tag()), base]
}

/// A coordinator's markers: a commit for two partitions and an abort for one.
fn write_txn_markers() -> Vec<WriteTxnMarkersRequest> {
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    let topic = |name: &'static str, partitions: Vec<i32>| {
        WritableTxnMarkerTopic::default()
            .with_name(TopicName(s(name)))
            .with_partition_indexes(partitions)
    };
    let commit = WritableTxnMarker::default()
        .with_producer_id(ProducerId(7))
        .with_producer_epoch(1)
        .with_transaction_result(true)
        .with_coordinator_epoch(3)
        .with_topics(vec![topic("orders", vec![0, 1])]);
    let abort = WritableTxnMarker::default()
        .with_producer_id(ProducerId(8))
        .with_transaction_result(false)
        .with_topics(vec![topic("orders", vec![2])]);
    vec![WriteTxnMarkersRequest::default().with_markers(vec![commit, abort])]
}

/// A transactional consumer's offsets: v3 carries its membership, older versions none.
fn txn_offset_commit() -> Vec<TxnOffsetCommitRequest> {
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    let topic = TxnOffsetCommitRequestTopic::default()
        .with_name(TopicName(s("orders")))
        .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
            .with_partition_index(0)
            .with_committed_offset(42)
            .with_committed_metadata(Some(s("m")))]);
    let base = TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(s("txn-1")))
        .with_group_id(GroupId(s("group")))
        .with_producer_id(ProducerId(7))
        .with_topics(vec![topic]);
    let rich = base.clone().with_generation_id(3).with_member_id(s("member-1"));
    vec![rich, base]
}

fn describe_producers() -> Vec<DescribeProducersRequest> {
    use kafka_protocol::messages::describe_producers_request::TopicRequest;
    let topic = TopicRequest::default()
        .with_name(TopicName(s("orders")))
        .with_partition_indexes(vec![0, 1]);
    vec![DescribeProducersRequest::default().with_topics(vec![topic])]
}

/// A transactional producer adding two partitions of one topic and one of another (the
/// client versions, v0-3).
fn add_partitions_to_txn() -> Vec<AddPartitionsToTxnRequest> {
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
    };
    let topic = |name: &'static str, partitions: Vec<i32>| {
        AddPartitionsToTxnTopic::default().with_name(TopicName(s(name))).with_partitions(partitions)
    };
    // v4+: a partition leader's verification (KIP-890), batched by transaction.
    let verify = AddPartitionsToTxnTransaction::default()
        .with_transactional_id(TransactionalId(s("txn-1")))
        .with_producer_id(ProducerId(7))
        .with_producer_epoch(1)
        .with_verify_only(true)
        .with_topics(vec![topic(TOPIC, vec![0])]);
    vec![
        AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(s("txn-1")))
            .with_v3_and_below_producer_id(ProducerId(7))
            .with_v3_and_below_producer_epoch(1)
            .with_v3_and_below_topics(vec![topic(TOPIC, vec![0, 1]), topic("orders", vec![2])]),
        AddPartitionsToTxnRequest::default().with_transactions(vec![verify]),
    ]
}

fn add_offsets_to_txn() -> Vec<AddOffsetsToTxnRequest> {
    vec![AddOffsetsToTxnRequest::default()
        .with_transactional_id(TransactionalId(s("txn-1")))
        .with_producer_id(ProducerId(7))
        .with_producer_epoch(1)
        .with_group_id(GroupId(s(GROUP)))]
}

fn end_txn() -> Vec<EndTxnRequest> {
    vec![EndTxnRequest::default()
        .with_transactional_id(TransactionalId(s("txn-1")))
        .with_producer_id(ProducerId(7))
        .with_producer_epoch(1)
        .with_committed(true)]
}

fn describe_transactions() -> Vec<DescribeTransactionsRequest> {
    let ids = vec![TransactionalId(s("txn-1")), TransactionalId(s(""))];
    vec![DescribeTransactionsRequest::default().with_transactional_ids(ids)]
}

/// Every filter: states (one Kafka does not know), producer ids and, from v1, a duration.
fn list_transactions() -> Vec<ListTransactionsRequest> {
    let base = ListTransactionsRequest::default()
        .with_state_filters(vec![s("Ongoing"), s("NoSuchState")])
        .with_producer_id_filters(vec![ProducerId(7)]);
    vec![base.clone().with_duration_filter(60_000), base]
}

// ---------------------------------------------------------------------------------------------
// The mutator
// ---------------------------------------------------------------------------------------------

const INTERESTING_8: &[u8] = &[0x00, 0x01, 0x7f, 0x80, 0x81, 0xfe, 0xff];
const INTERESTING_16: &[i16] = &[0, 1, -1, -2, 0x7f, 0xff, 0x7fff, i16::MIN, 0x0100];
const INTERESTING_32: &[i32] = &[
    0,
    1,
    -1,
    -2,
    0x7f,
    0x100,
    0xffff,
    0x0001_0000,
    0x00ff_ffff,
    0x0100_0000,
    0x7fff_fffe,
    i32::MAX,
    i32::MIN,
];
const INTERESTING_64: &[i64] = &[0, -1, 1, i64::MAX, i64::MIN, i32::MAX as i64 + 1];
/// Unsigned varints (compact lengths and counts are `n + 1`) and broken ones: the largest
/// 5-byte values, an overlong 10-byte encoding, and one that never terminates.
const INTERESTING_VARINTS: &[&[u8]] = &[
    &[0x00],
    &[0x01],
    &[0x02],
    &[0x7f],
    &[0x80, 0x01],
    &[0xff, 0x7f],
    &[0xff, 0xff, 0x03],
    &[0xff, 0xff, 0xff, 0x7f],
    &[0xfe, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0x7f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80],
];
/// Mutations stacked on one frame at most.
const MUTATIONS_MAX: u64 = 4;
/// Longest run of junk appended or inserted at once.
const JUNK_BYTES_MAX: usize = 64;

/// Applies 1 to `MUTATIONS_MAX` random mutations to `frame`, never touching its first
/// `protect` bytes unless a mutation truncates the whole frame. A third of the time it is one
/// boundary value written over a field instead: such frames mostly still decode, so hostile
/// values (negative partitions, huge sizes, overflowing offsets) reach the handlers.
pub fn mutate(rng: &mut TestRng, frame: &mut Vec<u8>, protect: usize) {
    let protect = protect.min(frame.len());
    if rng.chance(1, 3) {
        if let Some(at) = position(rng, frame, protect, false) {
            match rng.below(4) {
                0 => frame[at] = pick(rng, INTERESTING_8),
                1 => overwrite(frame, at, &pick(rng, INTERESTING_16).to_be_bytes()),
                2 => overwrite(frame, at, &pick(rng, INTERESTING_32).to_be_bytes()),
                _ => overwrite(frame, at, &pick(rng, INTERESTING_64).to_be_bytes()),
            }
            return;
        }
    }
    let count = 1 + rng.below(MUTATIONS_MAX);
    for _ in 0..count {
        mutate_once(rng, frame, protect.min(frame.len()));
    }
}

fn pick<T: Copy>(rng: &mut TestRng, values: &[T]) -> T {
    values[rng.below(values.len() as u64) as usize]
}

/// A position in `protect..=len` (an insertion point) or `protect..len` (a byte).
fn position(rng: &mut TestRng, frame: &[u8], protect: usize, inclusive: bool) -> Option<usize> {
    let end = frame.len() + usize::from(inclusive);
    (protect < end).then(|| rng.in_range(protect..end))
}

fn overwrite(frame: &mut [u8], at: usize, bytes: &[u8]) {
    let end = (at + bytes.len()).min(frame.len());
    frame[at..end].copy_from_slice(&bytes[..end - at]);
}

fn mutate_once(rng: &mut TestRng, frame: &mut Vec<u8>, protect: usize) {
    match rng.below(13) {
        0 => {
            if let Some(at) = position(rng, frame, protect, false) {
                frame[at] ^= 1 << rng.below(8);
            }
        }
        1 => {
            if let Some(at) = position(rng, frame, protect, false) {
                frame[at] = pick(rng, INTERESTING_8);
            }
        }
        2 => {
            if let Some(at) = position(rng, frame, protect, false) {
                frame[at] = rng.below(256) as u8;
            }
        }
        // Big-endian boundary values over whatever is there: lengths, counts, ids, offsets.
        3 => {
            if let Some(at) = position(rng, frame, protect, false) {
                overwrite(frame, at, &pick(rng, INTERESTING_16).to_be_bytes());
            }
        }
        4 => {
            if let Some(at) = position(rng, frame, protect, false) {
                overwrite(frame, at, &pick(rng, INTERESTING_32).to_be_bytes());
            }
        }
        5 => {
            if let Some(at) = position(rng, frame, protect, false) {
                overwrite(frame, at, &pick(rng, INTERESTING_64).to_be_bytes());
            }
        }
        6 => {
            if let Some(at) = position(rng, frame, protect, true) {
                frame.truncate(at);
            }
        }
        7 => {
            let junk = rng.in_range(1..JUNK_BYTES_MAX + 1);
            frame.extend(rng.bytes(junk));
        }
        8 => {
            if let Some(at) = position(rng, frame, protect, true) {
                let varint = pick(rng, INTERESTING_VARINTS);
                frame.splice(at..at, varint.iter().copied());
            }
        }
        9 => {
            if let Some(at) = position(rng, frame, protect, false) {
                overwrite(frame, at, pick(rng, INTERESTING_VARINTS));
            }
        }
        10 => {
            if let Some(at) = position(rng, frame, protect, false) {
                let len = rng.in_range(1..(frame.len() - at).min(JUNK_BYTES_MAX) + 1);
                frame.drain(at..at + len);
            }
        }
        11 => {
            // Duplicate a slice elsewhere: repeated array elements, shifted fields.
            if let (Some(from), Some(to)) =
                (position(rng, frame, protect, false), position(rng, frame, protect, true))
            {
                let len = rng.in_range(1..(frame.len() - from).min(JUNK_BYTES_MAX) + 1);
                let copy = frame[from..from + len].to_vec();
                frame.splice(to..to, copy);
            }
        }
        _ => {
            if let Some(at) = position(rng, frame, protect, true) {
                let len = rng.in_range(1..9);
                let byte = pick(rng, INTERESTING_8);
                frame.splice(at..at, std::iter::repeat_n(byte, len));
            }
        }
    }
}

/// A per-case seed from the run's seed, so that any one case can be rebuilt from
/// `(seed, api key, case)` and a replayed run (`STROM_SEED`) produces the same frames.
pub fn case_seed(seed: u64, stream: u64, case: u64) -> u64 {
    let mut rng =
        TestRng::new(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ case.rotate_left(32));
    rng.next_u64()
}

fn consumer_group_heartbeat() -> Vec<ConsumerGroupHeartbeatRequest> {
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    let join = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_member_id(s("5d1c3c42-4a0e-4c4e-9a57-0f5c0e1b1f00"))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(30_000)
        .with_subscribed_topic_names(Some(vec![topic(TOPIC)]))
        .with_topic_partitions(Some(Vec::new()));
    let rich = join
        .clone()
        .with_member_epoch(3)
        .with_instance_id(Some(s("fuzz-instance")))
        .with_rack_id(Some(s("rack-a")))
        .with_server_assignor(Some(s("uniform")))
        .with_topic_partitions(Some(vec![TopicPartitions::default().with_partitions(vec![0, 1])]))
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, join, ConsumerGroupHeartbeatRequest::default()]
}

fn consumer_group_describe() -> Vec<ConsumerGroupDescribeRequest> {
    let rich = ConsumerGroupDescribeRequest::default()
        .with_group_ids(vec![GroupId(s(GROUP)), GroupId(s("other"))])
        .with_include_authorized_operations(true)
        .with_unknown_tagged_field(UNKNOWN_TAG, tag());
    vec![rich, ConsumerGroupDescribeRequest::default()]
}
