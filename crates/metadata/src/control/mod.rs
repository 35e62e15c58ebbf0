//! The controller's decisions as pure functions: `decide(&image, request, ctx)` returns the
//! records to commit and the answer to give once they have committed. The active controller
//! proposes the records; nothing here touches the log, a clock or a socket.

mod brokers;
mod configs;
mod isr;
pub mod liveness;
mod topics;

#[cfg(test)]
mod tests;

pub use brokers::{
    fence_broker, remove_leadership, unclean_election_enabled, BrokerHeartbeatRequest,
    ElectionError, HeartbeatReply, PartitionElection, RegisterBrokerRequest,
    UNCLEAN_LEADER_ELECTION_ENABLE,
};
pub use configs::{AlterConfigOp, AlterConfigsRequest, ConfigAlteration, ResourceResult};
pub use isr::{AlterPartitionReply, AlterPartitionRequest};
pub use liveness::BrokerLiveness;
pub use topics::{
    placement, rack_aware_placement, validate_topic_name, CreatePartitionsRequest, CreateTopic,
    CreateTopicsRequest, CreatedTopic, DeleteTopicsRequest, NewPartitions,
};

use crate::records::MetadataRecord;
use crate::{ControlError, MetadataImage, MetadataOffset, TopicId};

/// How often a broker heartbeats by default (`broker.heartbeat.interval.ms`).
pub const BROKER_HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 500;
/// How long a broker may stay silent before it is fenced (`broker.session.timeout.ms`):
/// three heartbeats, so one lost heartbeat is not a failure, and a dead leader is replaced
/// within 2 s (timeout plus the controller's check interval plus a commit).
pub const BROKER_SESSION_TIMEOUT_MS_DEFAULT: u64 = 1_500;

const _: () = assert!(BROKER_HEARTBEAT_INTERVAL_MS_DEFAULT < BROKER_SESSION_TIMEOUT_MS_DEFAULT);
const _: () =
    assert!(BROKER_SESSION_TIMEOUT_MS_DEFAULT + BROKER_HEARTBEAT_INTERVAL_MS_DEFAULT <= 2_000);

/// Cluster-wide defaults the controller applies where a request leaves a value out (-1), and
/// the broker session settings the active controller enforces.
#[derive(Clone, Debug)]
pub struct ControlDefaults {
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    /// A broker not heard from for longer than this is fenced.
    pub session_timeout_ms: u64,
    /// The brokers' heartbeat interval; the active controller checks sessions this often.
    pub broker_heartbeat_interval_ms: u64,
}

impl Default for ControlDefaults {
    fn default() -> Self {
        ControlDefaults {
            num_partitions: 1,
            default_replication_factor: 1,
            session_timeout_ms: BROKER_SESSION_TIMEOUT_MS_DEFAULT,
            broker_heartbeat_interval_ms: BROKER_HEARTBEAT_INTERVAL_MS_DEFAULT,
        }
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
    match request {
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
    }
}

/// Wraps a record variant.
pub(crate) fn rec(r: crate::records::metadata_record::Record) -> MetadataRecord {
    MetadataRecord { record: Some(r) }
}
