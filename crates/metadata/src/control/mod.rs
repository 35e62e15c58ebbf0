//! The controller's decisions as pure functions: `decide(&image, request, ctx)` returns the
//! records to commit and the answer to give once they have committed. The active controller
//! proposes the records; nothing here touches the log, a clock or a socket.

mod brokers;
mod configs;
mod topics;

#[cfg(test)]
mod tests;

pub use brokers::{
    remove_leadership, BrokerHeartbeatRequest, HeartbeatReply, RegisterBrokerRequest,
};
pub use configs::{AlterConfigOp, AlterConfigsRequest, ConfigAlteration, ResourceResult};
pub use topics::{
    placement, validate_topic_name, CreatePartitionsRequest, CreateTopic, CreateTopicsRequest,
    CreatedTopic, DeleteTopicsRequest, NewPartitions,
};

use crate::records::MetadataRecord;
use crate::{ControlError, MetadataImage, MetadataOffset, TopicId};

/// Cluster-wide defaults the controller applies where a request leaves a value out (-1).
#[derive(Clone, Debug)]
pub struct ControlDefaults {
    pub num_partitions: i32,
    pub default_replication_factor: i16,
}

impl Default for ControlDefaults {
    fn default() -> Self {
        ControlDefaults { num_partitions: 1, default_replication_factor: 1 }
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
    }
}

/// Wraps a record variant.
pub(crate) fn rec(r: crate::records::metadata_record::Record) -> MetadataRecord {
    MetadataRecord { record: Some(r) }
}
