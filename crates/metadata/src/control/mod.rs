//! The controller's decisions as pure functions: `decide(&image, request, ctx)` returns the
//! records to commit and the answer to give once they have committed. The active controller
//! proposes the records; nothing here touches the log, a clock or a socket.

mod brokers;
mod configs;
mod isr;
pub mod liveness;
mod producer_ids;
mod quotas;
mod reassign;
mod topics;

#[cfg(test)]
mod tests;

pub use brokers::{
    fence_broker, remove_leadership, unclean_election_enabled, BrokerHeartbeatRequest,
    ElectionError, HeartbeatReply, PartitionElection, RegisterBrokerRequest,
    UNCLEAN_LEADER_ELECTION_ENABLE,
};
pub use configs::{AlterConfigOp, AlterConfigsRequest, ConfigAlteration, ResourceResult};
pub use isr::{
    AlterPartitionReply, AlterPartitionRequest, IsrChange, IsrChangeResult, IsrChanged,
    ISR_CHANGES_PER_REQUEST_MAX,
};
pub use liveness::BrokerLiveness;
pub use producer_ids::{AllocateProducerIdsRequest, ProducerIdBlock, PRODUCER_ID_BLOCK_SIZE};
pub use quotas::{quota_entity, quota_entity_parts, AlterClientQuotasRequest, QuotaAlteration};
pub use reassign::{
    PartitionReassignment, PartitionResult, ReassignPartitionsRequest,
    REASSIGNMENTS_PER_REQUEST_MAX,
};
pub use topics::{
    placement, rack_aware_placement, validate_topic_name, CreatePartitionsRequest, CreateTopic,
    CreateTopicsRequest, CreatedTopic, DeleteTopicsRequest, NewPartitions,
};

use prost::Message;

use crate::quorum::{
    AddVoterRequest, JoinQuorumRequest, QuorumDescription, RemoveVoterRequest, UpdateVoterRequest,
};
use crate::records::{MetadataBatch, MetadataRecord};
use crate::{ControlError, MetadataImage, MetadataOffset, TopicId};

/// Records one user request (CreateTopics, CreatePartitions, DeleteTopics, AlterConfigs) may
/// write. They commit atomically as one metadata log entry, which every voter encodes, sends,
/// decodes and fsyncs within one raft heartbeat (openraft's AppendEntries deadline), and every
/// broker applies at once. Kafka bounds the same (`MAX_RECORDS_PER_USER_OP`, and 10,000
/// partitions per CreateTopics); here: 10,000 partitions with their topic and config records
/// and room to spare. A request over it gets POLICY_VIOLATION and writes nothing.
pub const RECORDS_PER_USER_OP_MAX: usize = 12_000;

/// Encoded bytes of one metadata log entry's records (a `MetadataBatch`). A user request over
/// it is refused like one over [`RECORDS_PER_USER_OP_MAX`]; the controller's own decisions
/// (fencing a broker, elections) are split into entries of at most this size and
/// [`RECORDS_PER_ENTRY_MAX`] records (see [`split_into_entries`]).
pub const ENTRY_BYTES_MAX: usize = 2 << 20;

/// Records per metadata log entry when the controller splits a large decision of its own.
pub const RECORDS_PER_ENTRY_MAX: usize = RECORDS_PER_USER_OP_MAX;

/// What one partition record costs at replication factor 3 with a leaderless partition (the
/// largest common case: `leader = -1` takes ten bytes), measured in the tests.
pub const PARTITION_RECORD_BYTES_RF3: usize = 64;

// A user request at the record cap, made of partition records, is well inside one entry.
const _: () = assert!(RECORDS_PER_USER_OP_MAX * PARTITION_RECORD_BYTES_RF3 * 2 <= ENTRY_BYTES_MAX);

/// Cluster-wide defaults the controller applies where a request leaves a value out (-1), and
/// the broker session settings the active controller enforces. The defaults are
/// [`crate::config::BROKER_DEFAULTS`].
#[derive(Clone, Debug)]
pub struct ControlDefaults {
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    /// A broker not heard from for longer than this is fenced.
    pub session_timeout_ms: u64,
    /// The brokers' heartbeat interval; the active controller checks sessions this often.
    pub broker_heartbeat_interval_ms: u64,
}

impl From<&crate::config::BrokerDefaults> for ControlDefaults {
    fn from(d: &crate::config::BrokerDefaults) -> Self {
        ControlDefaults {
            num_partitions: d.num_partitions,
            default_replication_factor: d.default_replication_factor,
            session_timeout_ms: d.broker_session_timeout_ms,
            broker_heartbeat_interval_ms: d.broker_heartbeat_interval_ms,
        }
    }
}

impl Default for ControlDefaults {
    fn default() -> Self {
        ControlDefaults::from(&crate::config::BROKER_DEFAULTS)
    }
}

/// What a decision may read besides the image: injected so decisions replay deterministically.
pub struct DecideCtx<'a> {
    pub now_ms: i64,
    /// The offset the decision's records will commit at (a new broker's epoch).
    pub next_offset: MetadataOffset,
    pub defaults: &'a ControlDefaults,
    /// Source of fresh topic ids and placement offsets (a seeded RNG in tests).
    pub random: &'a mut dyn FnMut() -> u64,
}

/// One request to the active controller.
#[derive(Clone, Debug)]
pub enum ControlRequest {
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    AlterConfigs(AlterConfigsRequest),
    RegisterBroker(RegisterBrokerRequest),
    BrokerHeartbeat(BrokerHeartbeatRequest),
    /// Leader elections: `preferred` moves leadership to the first replica where it is live
    /// and in the ISR; otherwise leaderless partitions get a leader, out of the ISR if need
    /// be (Kafka's UNCLEAN type). `topics: None` is every partition.
    ElectLeaders {
        topics: Option<Vec<(String, Vec<i32>)>>,
        preferred: bool,
    },
    /// A partition leader's ISR change (Kafka's AlterPartition).
    AlterPartition(AlterPartitionRequest),
    /// Move partitions to new replicas, or cancel a move (Kafka's AlterPartitionReassignments).
    AlterPartitionReassignments(ReassignPartitionsRequest),
    /// A broker's next block of producer ids (Kafka's AllocateProducerIds).
    AllocateProducerIds(AllocateProducerIdsRequest),
    /// Kafka's AlterClientQuotas: one `ClientQuotaRecord` per changed key.
    AlterClientQuotas(AlterClientQuotasRequest),
    /// The quorum's membership (KIP-853), carried out by the active controller with raft's
    /// membership changes, not decided as records: [`decide`] refuses these.
    AddVoter(AddVoterRequest),
    RemoveVoter(RemoveVoterRequest),
    UpdateVoter(UpdateVoterRequest),
    JoinQuorum(JoinQuorumRequest),
    DescribeQuorum,
}

impl ControlRequest {
    /// A request about the quorum itself, answered by the active controller's raft node.
    pub fn is_quorum(&self) -> bool {
        matches!(
            self,
            ControlRequest::AddVoter(_)
                | ControlRequest::RemoveVoter(_)
                | ControlRequest::UpdateVoter(_)
                | ControlRequest::JoinQuorum(_)
                | ControlRequest::DescribeQuorum
        )
    }

    /// A voter change: it may wait for a new voter to catch up and commits membership
    /// entries, so it is given longer than a metadata decision.
    pub fn is_voter_change(&self) -> bool {
        self.is_quorum() && !matches!(self, ControlRequest::DescribeQuorum)
    }
}

/// The outcome of one item (a topic, a resource) of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemResult<T> {
    pub name: String,
    pub result: Result<T, ControlError>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlResponse {
    CreateTopics(Vec<ItemResult<CreatedTopic>>),
    DeleteTopics(Vec<ItemResult<TopicId>>),
    CreatePartitions(Vec<ItemResult<()>>),
    AlterConfigs(Vec<ResourceResult>),
    RegisterBroker(crate::BrokerEpoch),
    BrokerHeartbeat(HeartbeatReply),
    ElectLeaders(Vec<PartitionElection>),
    AlterPartition(AlterPartitionReply),
    AlterPartitionReassignments(Vec<PartitionResult>),
    AllocateProducerIds(ProducerIdBlock),
    /// Per entry of the request, in its order.
    AlterClientQuotas(Vec<Result<(), ControlError>>),
    /// Every quorum request's answer: the quorum as its leader sees it (after a change, with
    /// the change committed).
    Quorum(QuorumDescription),
}

/// Records to commit, and the answer to send after they commit.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub records: Vec<MetadataRecord>,
    pub response: ControlResponse,
}

/// Decides one request against the current image.
pub fn decide(
    image: &MetadataImage,
    request: &ControlRequest,
    ctx: &mut DecideCtx<'_>,
) -> Result<Decision, ControlError> {
    check_requested_records(image, request, ctx.defaults)?;
    let decision = match request {
        ControlRequest::CreateTopics(r) => Ok(topics::create_topics(image, r, ctx)),
        ControlRequest::DeleteTopics(r) => Ok(topics::delete_topics(image, r)),
        ControlRequest::CreatePartitions(r) => Ok(topics::create_partitions(image, r, ctx)),
        ControlRequest::AlterConfigs(r) => Ok(configs::alter_configs(image, r)),
        ControlRequest::RegisterBroker(r) => brokers::register(image, r, ctx),
        ControlRequest::BrokerHeartbeat(r) => brokers::heartbeat(image, r),
        ControlRequest::ElectLeaders { topics, preferred } => {
            Ok(brokers::elect_leaders(image, topics.as_deref(), *preferred))
        }
        ControlRequest::AlterPartition(r) => isr::alter_partition(image, r),
        ControlRequest::AlterPartitionReassignments(r) => reassign::alter_reassignments(image, r),
        ControlRequest::AllocateProducerIds(r) => producer_ids::allocate(image, r),
        ControlRequest::AlterClientQuotas(r) => Ok(quotas::alter_client_quotas(image, r)),
        ControlRequest::AddVoter(_)
        | ControlRequest::RemoveVoter(_)
        | ControlRequest::UpdateVoter(_)
        | ControlRequest::JoinQuorum(_)
        | ControlRequest::DescribeQuorum => Err(ControlError::InvalidRequest(format!(
            "{} is carried out by the metadata quorum, not decided as metadata records",
            op_name(request)
        ))),
    }?;
    if is_user_op(request) {
        check_user_op_size(request, &decision.records)?;
    }
    Ok(decision)
}

/// Requests from users (admin clients), which commit as one entry and so are bounded by
/// [`RECORDS_PER_USER_OP_MAX`]; the rest are the brokers' and the controller's own, which
/// cannot be refused for their size and are split instead.
fn is_user_op(request: &ControlRequest) -> bool {
    matches!(
        request,
        ControlRequest::CreateTopics(_)
            | ControlRequest::DeleteTopics(_)
            | ControlRequest::CreatePartitions(_)
            | ControlRequest::AlterConfigs(_)
            | ControlRequest::AlterPartitionReassignments(_)
            | ControlRequest::AlterClientQuotas(_)
    )
}

fn op_name(request: &ControlRequest) -> &'static str {
    match request {
        ControlRequest::CreateTopics(_) => "CreateTopics",
        ControlRequest::DeleteTopics(_) => "DeleteTopics",
        ControlRequest::CreatePartitions(_) => "CreatePartitions",
        ControlRequest::AlterConfigs(_) => "AlterConfigs",
        ControlRequest::RegisterBroker(_) => "RegisterBroker",
        ControlRequest::BrokerHeartbeat(_) => "BrokerHeartbeat",
        ControlRequest::ElectLeaders { .. } => "ElectLeaders",
        ControlRequest::AlterPartition(_) => "AlterPartition",
        ControlRequest::AlterPartitionReassignments(_) => "AlterPartitionReassignments",
        ControlRequest::AllocateProducerIds(_) => "AllocateProducerIds",
        ControlRequest::AlterClientQuotas(_) => "AlterClientQuotas",
        ControlRequest::AddVoter(_) => "AddRaftVoter",
        ControlRequest::RemoveVoter(_) => "RemoveRaftVoter",
        ControlRequest::UpdateVoter(_) => "UpdateRaftVoter",
        ControlRequest::JoinQuorum(_) => "JoinQuorum",
        ControlRequest::DescribeQuorum => "DescribeQuorum",
    }
}

fn too_many_records(request: &ControlRequest, records: usize) -> ControlError {
    ControlError::PolicyViolation(format!(
        "{} would write {records} metadata records; one request may write at most \
         {RECORDS_PER_USER_OP_MAX} (about 10,000 partitions): split it into smaller requests",
        op_name(request)
    ))
}

/// Refuses a request that asks for more partitions than the cap allows before any placement
/// is computed, as Kafka does: deciding two million partitions only to refuse them would
/// stall the active controller. Counts what the request asks for, valid or not.
fn check_requested_records(
    image: &MetadataImage,
    request: &ControlRequest,
    defaults: &ControlDefaults,
) -> Result<(), ControlError> {
    let asked: u64 = match request {
        ControlRequest::CreateTopics(r) => r
            .topics
            .iter()
            .map(|t| {
                let partitions = if !t.assignments.is_empty() {
                    t.assignments.len() as u64
                } else if t.num_partitions == -1 {
                    defaults.num_partitions.max(0) as u64
                } else {
                    t.num_partitions.max(0) as u64
                };
                1 + partitions + t.configs.len() as u64
            })
            .sum(),
        ControlRequest::CreatePartitions(r) => r
            .topics
            .iter()
            .map(|np| {
                let current = image.topic(&np.topic).map_or(0, |t| t.partitions.len() as i64);
                (i64::from(np.count) - current).max(0) as u64
            })
            .sum(),
        _ => 0,
    };
    if asked > RECORDS_PER_USER_OP_MAX as u64 {
        return Err(too_many_records(request, usize::try_from(asked).unwrap_or(usize::MAX)));
    }
    Ok(())
}

/// The records a user request decided on must commit as one entry of bounded size.
fn check_user_op_size(
    request: &ControlRequest,
    records: &[MetadataRecord],
) -> Result<(), ControlError> {
    if records.len() > RECORDS_PER_USER_OP_MAX {
        return Err(too_many_records(request, records.len()));
    }
    let bytes = batch_bytes(records);
    if bytes > ENTRY_BYTES_MAX {
        return Err(ControlError::PolicyViolation(format!(
            "{} would write {bytes} bytes of metadata records; one request may write at most \
             {ENTRY_BYTES_MAX}: split it into smaller requests",
            op_name(request)
        )));
    }
    Ok(())
}

/// Encoded size of `records` as one entry's `MetadataBatch`.
pub fn batch_bytes(records: &[MetadataRecord]) -> usize {
    records.iter().map(|r| prost::length_delimiter_len(r.encoded_len()) + 1 + r.encoded_len()).sum()
}

/// Splits the records of one decision into metadata log entries of at most
/// [`RECORDS_PER_ENTRY_MAX`] records and [`ENTRY_BYTES_MAX`] bytes, in order. A user request
/// always fits in one (`decide` refuses it otherwise); a large decision of the controller's
/// own (fencing a broker that leads 100,000 partitions) becomes several entries, each of which
/// leaves the image consistent on its own. A record larger than an entry gets an entry alone;
/// the caller must refuse to propose it.
pub fn split_into_entries(records: Vec<MetadataRecord>) -> Vec<MetadataBatch> {
    let mut entries = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0;
    for record in records {
        let bytes = batch_bytes(std::slice::from_ref(&record));
        if !current.is_empty()
            && (current.len() == RECORDS_PER_ENTRY_MAX || current_bytes + bytes > ENTRY_BYTES_MAX)
        {
            entries.push(MetadataBatch { records: std::mem::take(&mut current) });
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.push(record);
    }
    if !current.is_empty() {
        entries.push(MetadataBatch { records: current });
    }
    entries
}

/// Wraps a record variant.
pub(crate) fn rec(r: crate::records::metadata_record::Record) -> MetadataRecord {
    MetadataRecord { record: Some(r) }
}
