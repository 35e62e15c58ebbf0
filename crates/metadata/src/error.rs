//! Errors of the metadata crate: refused controller requests and records that cannot apply.

use crate::TopicId;

/// Why the controller refused a request (or one topic of it). Each variant maps to one Kafka
/// error code in the broker's error module, and to one gRPC status in the admin service.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("topic '{0}' already exists")]
    TopicAlreadyExists(String),
    #[error("unknown topic or partition: {0}")]
    UnknownTopicOrPartition(String),
    #[error("unknown topic id {0}")]
    UnknownTopicId(TopicId),
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("broker {0} is not registered or its epoch is stale")]
    StaleBrokerEpoch(i32),
    #[error("duplicate broker registration: {0}")]
    DuplicateBrokerRegistration(String),
    #[error("fenced leader epoch: {0}")]
    FencedLeaderEpoch(String),
    #[error("stale partition epoch: {0}")]
    InvalidUpdateVersion(String),
    #[error("ineligible replica: {0}")]
    IneligibleReplica(String),
    /// The request is well-formed but larger than one metadata operation may be (Kafka's
    /// POLICY_VIOLATION): it would write more records than `RECORDS_PER_USER_OP_MAX`.
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    /// A reassignment cancelled where none is in progress (Kafka's
    /// NO_REASSIGNMENT_IN_PROGRESS).
    #[error("no reassignment in progress: {0}")]
    NoReassignmentInProgress(String),
    #[error("this node is not the active controller")]
    NotController,
    #[error("the controller is not available: {0}")]
    ControllerUnavailable(String),
    /// The request was sent to the active controller and no answer came back (the connection
    /// dropped, the time ran out): it may have been proposed, and may yet commit. Asking again
    /// blindly could apply it twice; look at the metadata first.
    #[error("the outcome is unknown, the request may have been applied: {0}")]
    OutcomeUnknown(String),
    /// Every producer id below `i64::MAX` has been handed out (Kafka answers
    /// UNKNOWN_SERVER_ERROR): ids are never reused, so none can be given.
    #[error("producer ids are exhausted: the next block would end past 2^63-1")]
    ProducerIdsExhausted,
    /// KIP-853: the node to add is a voter already (Kafka's DUPLICATE_VOTER).
    #[error("duplicate voter: {0}")]
    DuplicateVoter(String),
    /// KIP-853: no voter has that id (and directory id) (Kafka's VOTER_NOT_FOUND).
    #[error("voter not found: {0}")]
    VoterNotFound(String),
    /// KIP-853: a replica whose directory id is not the one the quorum knows for its node id
    /// (a wiped disk): it cannot act as its former self (Kafka's INVALID_VOTER_KEY).
    #[error("invalid voter key: {0}")]
    InvalidVoterKey(String),
    /// Another voter change is being made, or the new voter has not caught up in time: only
    /// one change at a time, and asking again later may succeed (Kafka answers
    /// REQUEST_TIMED_OUT for both).
    #[error("voter change not made: {0}")]
    VoterChangeTimedOut(String),
}

/// A committed record that does not apply to the image: the log and the image disagree, which
/// is fatal for the node that meets it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("record names unknown topic id {0}")]
    UnknownTopicId(TopicId),
    #[error("record has a malformed field: {0}")]
    MalformedRecord(&'static str),
    #[error("record is empty (no variant set)")]
    EmptyRecord,
}
