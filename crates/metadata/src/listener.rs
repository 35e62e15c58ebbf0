//! The seams between controller and broker, so that neither crate depends on the other, and
//! the clock seam through which both read the time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::control::{ControlRequest, ControlResponse};
use crate::records::MetadataRecord;
use crate::{ControlError, MetadataImage, MetadataOffset};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Receives committed metadata in log order (Kafka's MetadataPublisher). In a combined node the
/// controller's state machine calls it directly; a broker-only node calls it from its follower
/// stream. Implementations must return quickly: hand the image to a task, do not block.
pub trait MetadataListener: Send + Sync + 'static {
    fn on_commit(
        &self,
        offset: MetadataOffset,
        records: &[MetadataRecord],
        image: Arc<MetadataImage>,
    );
}

/// Where time-dependent shells (the active controller's broker sessions, the group
/// coordinator's member sessions) read the time, in milliseconds. Only the trait lives here:
/// this crate never reads a clock. The broker and controller hold a system clock; tests hold
/// a manual one and move it forward without sleeping. Readings from one clock never go back.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// How a broker asks the active controller for a decision (create topics, alter configs, ...).
/// The answer comes only after the resulting records have committed.
pub trait ControllerClient: Send + Sync + 'static {
    fn submit(&self, request: ControlRequest) -> BoxFuture<Result<ControlResponse, ControlError>>;
}

/// How the admin API (served by the controller crate) sees consumer groups, which live in the
/// brokers' group coordinators. A node that runs a broker provides it; errors are plain text
/// for the operator (which broker could not be asked, and why).
pub trait GroupAdmin: Send + Sync + 'static {
    /// Every group of the cluster: each live broker lists the groups it coordinates.
    fn list_groups(&self) -> BoxFuture<Result<GroupListings, String>>;
    /// Members, assignments, committed offsets and lag of one group, from its coordinator.
    fn describe_group(&self, group_id: String) -> BoxFuture<Result<GroupDescription, String>>;
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupListings {
    pub groups: Vec<GroupListing>,
    /// Brokers that could not be asked, with the reason: the list may be incomplete.
    pub unreachable: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    /// Kafka's state name: Empty, PreparingRebalance, CompletingRebalance, Stable, Dead.
    pub state: String,
    pub coordinator_id: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    /// The assignor the members agreed on (e.g. `range`).
    pub protocol: String,
    pub coordinator_id: i32,
    pub members: Vec<GroupMember>,
    /// Every partition the group has a committed offset for or is assigned, sorted.
    pub partitions: Vec<GroupPartitionLag>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// (topic, partitions) from the member's consumer-protocol assignment.
    pub assignment: Vec<(String, Vec<i32>)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupPartitionLag {
    pub topic: String,
    pub partition: i32,
    /// -1: nothing committed.
    pub committed_offset: i64,
    /// -1: unknown (the partition's leader could not be asked).
    pub log_end_offset: i64,
    /// log end − committed; -1 when nothing is committed or the log end is unknown.
    pub lag: i64,
    /// The member the partition is assigned to, if any.
    pub member_id: Option<String>,
}
