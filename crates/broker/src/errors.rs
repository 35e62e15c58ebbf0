//! The one place where internal errors become Kafka error codes: [`KafkaError`] is every
//! error the broker answers a client with, and `i16::from` is the only way to its code.

use kafka_protocol::ResponseError as K;
use strom_log::producer::ProducerError;
use strom_log::LogError;
use strom_metadata::control::ElectionError;
use strom_metadata::ControlError;

use crate::group::{GroupError, RouteError};
use crate::partition::{AckError, DeleteRecordsError};
use crate::producer_ids::ProducerIdError;
use crate::txn::TxnError;

/// Operational errors of the broker process itself (not of one request).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot bind the Kafka listener on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot open partition log {topic}-{partition}: {source}")]
    LogOpen { topic: String, partition: i32, source: LogError },
    #[error("cannot write checkpoint: {0}")]
    Checkpoint(LogError),
    #[error("cannot read or create data dir {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("refusing to open a log for topic '{topic}': {reason}")]
    ReservedTopic { topic: String, reason: ControlError },
}

/// A Kafka error the broker answers with, named as in Kafka's table. Handlers build these (or
/// convert an internal error with `From`) and turn them into a response's code with
/// `i16::from` only when they fill in the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KafkaError {
    UnknownServerError,
    OffsetOutOfRange,
    CorruptMessage,
    UnknownTopicOrPartition,
    LeaderNotAvailable,
    NotLeaderOrFollower,
    RequestTimedOut,
    ReplicaNotAvailable,
    MessageTooLarge,
    OffsetMetadataTooLarge,
    CoordinatorLoadInProgress,
    CoordinatorNotAvailable,
    NotCoordinator,
    InvalidTopicException,
    NotEnoughReplicas,
    NotEnoughReplicasAfterAppend,
    InvalidRequiredAcks,
    IllegalGeneration,
    InconsistentGroupProtocol,
    InvalidGroupId,
    UnknownMemberId,
    InvalidSessionTimeout,
    RebalanceInProgress,
    UnsupportedVersion,
    TopicAlreadyExists,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidReplicaAssignment,
    InvalidConfig,
    NotController,
    InvalidRequest,
    UnsupportedForMessageFormat,
    UnsupportedCompressionType,
    PolicyViolation,
    InvalidTxnState,
    InvalidProducerIdMapping,
    InvalidTransactionTimeout,
    ConcurrentTransactions,
    ProducerFenced,
    KafkaStorageError,
    NonEmptyGroup,
    GroupIdNotFound,
    FencedLeaderEpoch,
    UnknownLeaderEpoch,
    StaleBrokerEpoch,
    MemberIdRequired,
    GroupMaxSizeReached,
    FencedInstanceId,
    FencedMemberEpoch,
    UnreleasedInstanceId,
    UnsupportedAssignor,
    StaleMemberEpoch,
    InvalidRegularExpression,
    GroupSubscribedToTopic,
    InvalidRecord,
    InvalidUpdateVersion,
    UnknownTopicId,
    DuplicateBrokerRegistration,
    IneligibleReplica,
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
    TransactionCoordinatorFenced,
    UnstableOffsetCommit,
    OperationNotAttempted,
    TransactionalIdNotFound,
    InvalidVoterKey,
    DuplicateVoter,
    VoterNotFound,
    InconsistentClusterId,
    FetchSessionIdNotFound,
    InvalidFetchSessionEpoch,
    FetchSessionTopicIdError,
    PreferredLeaderNotAvailable,
    EligibleLeadersNotAvailable,
    ElectionNotNeeded,
    NoReassignmentInProgress,
}

impl KafkaError {
    /// Kafka's code: the only mapping from an error to a number in the broker. Comparing
    /// codes uses this; an answer takes its code through `i16::from`, which also counts it.
    pub(crate) fn code(self) -> i16 {
        let k = match self {
            KafkaError::UnknownServerError => K::UnknownServerError,
            KafkaError::OffsetOutOfRange => K::OffsetOutOfRange,
            KafkaError::CorruptMessage => K::CorruptMessage,
            KafkaError::UnknownTopicOrPartition => K::UnknownTopicOrPartition,
            KafkaError::LeaderNotAvailable => K::LeaderNotAvailable,
            KafkaError::NotLeaderOrFollower => K::NotLeaderOrFollower,
            KafkaError::RequestTimedOut => K::RequestTimedOut,
            KafkaError::ReplicaNotAvailable => K::ReplicaNotAvailable,
            KafkaError::MessageTooLarge => K::MessageTooLarge,
            KafkaError::OffsetMetadataTooLarge => K::OffsetMetadataTooLarge,
            KafkaError::CoordinatorLoadInProgress => K::CoordinatorLoadInProgress,
            KafkaError::CoordinatorNotAvailable => K::CoordinatorNotAvailable,
            KafkaError::NotCoordinator => K::NotCoordinator,
            KafkaError::InvalidTopicException => K::InvalidTopicException,
            KafkaError::NotEnoughReplicas => K::NotEnoughReplicas,
            KafkaError::NotEnoughReplicasAfterAppend => K::NotEnoughReplicasAfterAppend,
            KafkaError::InvalidRequiredAcks => K::InvalidRequiredAcks,
            KafkaError::IllegalGeneration => K::IllegalGeneration,
            KafkaError::InconsistentGroupProtocol => K::InconsistentGroupProtocol,
            KafkaError::InvalidGroupId => K::InvalidGroupId,
            KafkaError::UnknownMemberId => K::UnknownMemberId,
            KafkaError::InvalidSessionTimeout => K::InvalidSessionTimeout,
            KafkaError::RebalanceInProgress => K::RebalanceInProgress,
            KafkaError::UnsupportedVersion => K::UnsupportedVersion,
            KafkaError::TopicAlreadyExists => K::TopicAlreadyExists,
            KafkaError::InvalidPartitions => K::InvalidPartitions,
            KafkaError::InvalidReplicationFactor => K::InvalidReplicationFactor,
            KafkaError::InvalidReplicaAssignment => K::InvalidReplicaAssignment,
            KafkaError::InvalidConfig => K::InvalidConfig,
            KafkaError::NotController => K::NotController,
            KafkaError::InvalidRequest => K::InvalidRequest,
            KafkaError::UnsupportedForMessageFormat => K::UnsupportedForMessageFormat,
            KafkaError::UnsupportedCompressionType => K::UnsupportedCompressionType,
            KafkaError::PolicyViolation => K::PolicyViolation,
            KafkaError::InvalidTxnState => K::InvalidTxnState,
            KafkaError::InvalidProducerIdMapping => K::InvalidProducerIdMapping,
            KafkaError::InvalidTransactionTimeout => K::InvalidTransactionTimeout,
            KafkaError::ConcurrentTransactions => K::ConcurrentTransactions,
            KafkaError::ProducerFenced => K::ProducerFenced,
            KafkaError::KafkaStorageError => K::KafkaStorageError,
            KafkaError::NonEmptyGroup => K::NonEmptyGroup,
            KafkaError::GroupIdNotFound => K::GroupIdNotFound,
            KafkaError::FencedLeaderEpoch => K::FencedLeaderEpoch,
            KafkaError::UnknownLeaderEpoch => K::UnknownLeaderEpoch,
            KafkaError::StaleBrokerEpoch => K::StaleBrokerEpoch,
            KafkaError::MemberIdRequired => K::MemberIdRequired,
            KafkaError::GroupMaxSizeReached => K::GroupMaxSizeReached,
            KafkaError::FencedInstanceId => K::FencedInstanceId,
            KafkaError::FencedMemberEpoch => K::FencedMemberEpoch,
            KafkaError::UnreleasedInstanceId => K::UnreleasedInstanceId,
            KafkaError::UnsupportedAssignor => K::UnsupportedAssignor,
            KafkaError::StaleMemberEpoch => K::StaleMemberEpoch,
            KafkaError::InvalidRegularExpression => K::InvalidRegularExpression,
            KafkaError::GroupSubscribedToTopic => K::GroupSubscribedToTopic,
            KafkaError::InvalidRecord => K::InvalidRecord,
            KafkaError::InvalidUpdateVersion => K::InvalidUpdateVersion,
            KafkaError::UnknownTopicId => K::UnknownTopicId,
            KafkaError::DuplicateBrokerRegistration => K::DuplicateBrokerRegistration,
            KafkaError::IneligibleReplica => K::IneligibleReplica,
            KafkaError::OutOfOrderSequenceNumber => K::OutOfOrderSequenceNumber,
            KafkaError::InvalidProducerEpoch => K::InvalidProducerEpoch,
            KafkaError::TransactionCoordinatorFenced => K::TransactionCoordinatorFenced,
            KafkaError::UnstableOffsetCommit => K::UnstableOffsetCommit,
            KafkaError::OperationNotAttempted => K::OperationNotAttempted,
            KafkaError::TransactionalIdNotFound => K::TransactionalIdNotFound,
            KafkaError::InvalidVoterKey => K::InvalidVoterKey,
            KafkaError::DuplicateVoter => K::DuplicateVoter,
            KafkaError::VoterNotFound => K::VoterNotFound,
            KafkaError::InconsistentClusterId => K::InconsistentClusterId,
            KafkaError::FetchSessionIdNotFound => K::FetchSessionIdNotFound,
            KafkaError::InvalidFetchSessionEpoch => K::InvalidFetchSessionEpoch,
            KafkaError::FetchSessionTopicIdError => K::FetchSessionTopicIdError,
            KafkaError::PreferredLeaderNotAvailable => K::PreferredLeaderNotAvailable,
            KafkaError::EligibleLeadersNotAvailable => K::EligibleLeadersNotAvailable,
            KafkaError::ElectionNotNeeded => K::ElectionNotNeeded,
            KafkaError::NoReassignmentInProgress => K::NoReassignmentInProgress,
        };
        k.code()
    }
}

impl KafkaError {
    /// A coordinator's answer to a transaction verification (AddPartitionsToTxn v4), read
    /// back: the refusals a producer must see by name, anything else as retriable
    /// NOT_ENOUGH_REPLICAS (as Kafka's leaders answer a coordinator they cannot use).
    pub(crate) fn from_verification_code(code: i16) -> KafkaError {
        [
            KafkaError::InvalidTxnState,
            KafkaError::ProducerFenced,
            KafkaError::InvalidProducerEpoch,
            KafkaError::InvalidProducerIdMapping,
        ]
        .into_iter()
        .find(|e| e.code() == code)
        .unwrap_or(KafkaError::NotEnoughReplicas)
    }
}

/// An error becoming the code of an answer: counted for `/metrics` (`strom_errors_total`).
impl From<KafkaError> for i16 {
    fn from(e: KafkaError) -> i16 {
        let code = e.code();
        crate::metrics::count_error(code);
        code
    }
}

/// The code of an outcome that may have failed: 0 (NONE) when it did not.
pub(crate) fn code_of<E: Into<KafkaError>>(e: Option<E>) -> i16 {
    e.map_or(0, |e| i16::from(e.into()))
}

/// A controller refusal. `ControllerUnavailable` is REQUEST_TIMED_OUT, as Kafka answers when
/// the controller does not answer a forwarded request in time.
impl From<&ControlError> for KafkaError {
    fn from(e: &ControlError) -> KafkaError {
        match e {
            ControlError::TopicAlreadyExists(_) => KafkaError::TopicAlreadyExists,
            ControlError::UnknownTopicOrPartition(_) => KafkaError::UnknownTopicOrPartition,
            ControlError::UnknownTopicId(_) => KafkaError::UnknownTopicId,
            ControlError::InvalidTopic(_) => KafkaError::InvalidTopicException,
            ControlError::InvalidPartitions(_) => KafkaError::InvalidPartitions,
            ControlError::InvalidReplicationFactor(_) => KafkaError::InvalidReplicationFactor,
            ControlError::InvalidReplicaAssignment(_) => KafkaError::InvalidReplicaAssignment,
            ControlError::InvalidConfig(_) => KafkaError::InvalidConfig,
            ControlError::InvalidRequest(_) => KafkaError::InvalidRequest,
            ControlError::StaleBrokerEpoch(_) => KafkaError::StaleBrokerEpoch,
            ControlError::DuplicateBrokerRegistration(_) => KafkaError::DuplicateBrokerRegistration,
            ControlError::FencedLeaderEpoch(_) => KafkaError::FencedLeaderEpoch,
            ControlError::InvalidUpdateVersion(_) => KafkaError::InvalidUpdateVersion,
            ControlError::IneligibleReplica(_) => KafkaError::IneligibleReplica,
            ControlError::PolicyViolation(_) => KafkaError::PolicyViolation,
            ControlError::NotController => KafkaError::NotController,
            ControlError::ControllerUnavailable(_) | ControlError::OutcomeUnknown(_) => {
                KafkaError::RequestTimedOut
            }
            ControlError::ProducerIdsExhausted => KafkaError::UnknownServerError,
            ControlError::DuplicateVoter(_) => KafkaError::DuplicateVoter,
            ControlError::VoterNotFound(_) => KafkaError::VoterNotFound,
            ControlError::InvalidVoterKey(_) => KafkaError::InvalidVoterKey,
            // KIP-853: a change in progress or a new voter not caught up.
            ControlError::VoterChangeTimedOut(_) => KafkaError::RequestTimedOut,
            ControlError::NoReassignmentInProgress(_) => KafkaError::NoReassignmentInProgress,
        }
    }
}

/// Why an election gave a partition no new leader (ElectLeaders' per-partition errors).
impl From<ElectionError> for KafkaError {
    fn from(e: ElectionError) -> KafkaError {
        match e {
            ElectionError::UnknownTopicOrPartition => KafkaError::UnknownTopicOrPartition,
            ElectionError::ElectionNotNeeded => KafkaError::ElectionNotNeeded,
            ElectionError::PreferredLeaderNotAvailable => KafkaError::PreferredLeaderNotAvailable,
            ElectionError::EligibleLeadersNotAvailable => KafkaError::EligibleLeadersNotAvailable,
        }
    }
}

/// No producer id to hand out yet: Kafka's RPCProducerIdManager answers
/// COORDINATOR_LOAD_IN_PROGRESS, which every client retries (older clients take
/// REQUEST_TIMED_OUT, the natural code for a wait that ran out, as fatal).
impl From<ProducerIdError> for KafkaError {
    fn from(e: ProducerIdError) -> KafkaError {
        match e {
            ProducerIdError::BlockPending | ProducerIdError::BlockUnavailable => {
                KafkaError::CoordinatorLoadInProgress
            }
        }
    }
}

/// A failed append or read: what the client sent is refused, anything else is the storage's
/// fault (KAFKA_STORAGE_ERROR: the log dir is going offline), except running out of file
/// descriptors: REPLICA_NOT_AVAILABLE ("this replica cannot serve the partition now"), which
/// both Kafka's Java clients and librdkafka retry quietly after a metadata refresh, for Produce
/// and Fetch alike, without spending a retry (librdkafka) and with the batch known unwritten.
/// Not KAFKA_STORAGE_ERROR, which says the log dir failed (librdkafka counts its retries to
/// give up early); not REQUEST_TIMED_OUT, which Java's consumer does not expect in a Fetch
/// (it throws) and which tells producers the batch may have been written.
impl From<&LogError> for KafkaError {
    fn from(e: &LogError) -> KafkaError {
        match e {
            LogError::CorruptBatch { .. } | LogError::AppendEmpty => KafkaError::CorruptMessage,
            LogError::UnsupportedMagic { .. } => KafkaError::UnsupportedForMessageFormat,
            LogError::BatchTooLarge { .. } => KafkaError::MessageTooLarge,
            LogError::AppendOffsetSpanTooLarge { .. }
            | LogError::ClientControlBatch { .. }
            | LogError::RecordsWithoutKey { .. }
            | LogError::SequenceMissing { .. } => KafkaError::InvalidRecord,
            LogError::OffsetOutOfRange { .. } => KafkaError::OffsetOutOfRange,
            LogError::FileHandlesExhausted { .. } => KafkaError::ReplicaNotAvailable,
            LogError::LeaderEpochStale { .. } => KafkaError::FencedLeaderEpoch,
            LogError::Producer(ProducerError::OutOfOrderSequence { .. }) => {
                KafkaError::OutOfOrderSequenceNumber
            }
            LogError::Producer(ProducerError::InvalidProducerEpoch { .. }) => {
                KafkaError::InvalidProducerEpoch
            }
            LogError::Producer(ProducerError::CoordinatorFenced { .. }) => {
                KafkaError::TransactionCoordinatorFenced
            }
            _ => KafkaError::KafkaStorageError,
        }
    }
}

impl From<LogError> for KafkaError {
    fn from(e: LogError) -> KafkaError {
        KafkaError::from(&e)
    }
}

/// A group coordinator refusal (its variants are named after Kafka's errors).
impl From<GroupError> for KafkaError {
    fn from(e: GroupError) -> KafkaError {
        match e {
            GroupError::CoordinatorNotAvailable => KafkaError::CoordinatorNotAvailable,
            GroupError::IllegalGeneration => KafkaError::IllegalGeneration,
            GroupError::InconsistentGroupProtocol => KafkaError::InconsistentGroupProtocol,
            GroupError::UnknownMemberId => KafkaError::UnknownMemberId,
            GroupError::InvalidSessionTimeout => KafkaError::InvalidSessionTimeout,
            GroupError::RebalanceInProgress => KafkaError::RebalanceInProgress,
            GroupError::InvalidRequest => KafkaError::InvalidRequest,
            GroupError::NonEmptyGroup => KafkaError::NonEmptyGroup,
            GroupError::MemberIdRequired => KafkaError::MemberIdRequired,
            GroupError::GroupMaxSizeReached => KafkaError::GroupMaxSizeReached,
            GroupError::FencedInstanceId => KafkaError::FencedInstanceId,
            GroupError::FencedMemberEpoch => KafkaError::FencedMemberEpoch,
            GroupError::UnreleasedInstanceId => KafkaError::UnreleasedInstanceId,
            GroupError::UnsupportedAssignor => KafkaError::UnsupportedAssignor,
            GroupError::StaleMemberEpoch => KafkaError::StaleMemberEpoch,
            GroupError::InvalidRegularExpression => KafkaError::InvalidRegularExpression,
            GroupError::NotCoordinator => KafkaError::NotCoordinator,
            GroupError::GroupIdNotFound => KafkaError::GroupIdNotFound,
            GroupError::GroupSubscribedToTopic => KafkaError::GroupSubscribedToTopic,
        }
    }
}

/// A transaction coordinator refusal (its variants are named after Kafka's errors).
impl From<TxnError> for KafkaError {
    fn from(e: TxnError) -> KafkaError {
        match e {
            TxnError::InvalidRequest => KafkaError::InvalidRequest,
            TxnError::InvalidTransactionTimeout => KafkaError::InvalidTransactionTimeout,
            TxnError::ConcurrentTransactions => KafkaError::ConcurrentTransactions,
            TxnError::ProducerFenced => KafkaError::ProducerFenced,
            TxnError::InvalidProducerEpoch => KafkaError::InvalidProducerEpoch,
            TxnError::InvalidProducerIdMapping => KafkaError::InvalidProducerIdMapping,
            TxnError::InvalidTxnState => KafkaError::InvalidTxnState,
            TxnError::NotCoordinator => KafkaError::NotCoordinator,
            TxnError::CoordinatorNotAvailable => KafkaError::CoordinatorNotAvailable,
            TxnError::CoordinatorLoadInProgress => KafkaError::CoordinatorLoadInProgress,
            TxnError::UnknownServerError => KafkaError::UnknownServerError,
        }
    }
}

/// Why a group's request could not reach its shard.
impl From<RouteError> for KafkaError {
    fn from(e: RouteError) -> KafkaError {
        match e {
            RouteError::NotCoordinator => KafkaError::NotCoordinator,
            RouteError::Loading => KafkaError::CoordinatorLoadInProgress,
            RouteError::NotAvailable => KafkaError::CoordinatorNotAvailable,
        }
    }
}

/// Why an appended batch was not acknowledged. When leadership moves while a produce waits,
/// Kafka answers NOT_LEADER_OR_FOLLOWER: the new leader may cut the batch from this log.
impl From<AckError> for KafkaError {
    fn from(e: AckError) -> KafkaError {
        match e {
            AckError::TimedOut => KafkaError::RequestTimedOut,
            AckError::Offline => KafkaError::KafkaStorageError,
            AckError::NotLeader => KafkaError::NotLeaderOrFollower,
        }
    }
}

/// Why DeleteRecords refused a partition: a log error maps as any other (an offset beyond the
/// high watermark is OFFSET_OUT_OF_RANGE).
impl From<DeleteRecordsError> for KafkaError {
    fn from(e: DeleteRecordsError) -> KafkaError {
        match e {
            DeleteRecordsError::NotLeader => KafkaError::NotLeaderOrFollower,
            DeleteRecordsError::PolicyViolation => KafkaError::PolicyViolation,
            DeleteRecordsError::Log(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's error table (`org.apache.kafka.common.protocol.Errors`), written out as numbers
    /// so that the mapping is checked against the table, not only against the names.
    fn kafka_table(e: KafkaError) -> i16 {
        match e {
            KafkaError::UnknownServerError => -1,
            KafkaError::OffsetOutOfRange => 1,
            KafkaError::CorruptMessage => 2,
            KafkaError::UnknownTopicOrPartition => 3,
            KafkaError::LeaderNotAvailable => 5,
            KafkaError::NotLeaderOrFollower => 6,
            KafkaError::RequestTimedOut => 7,
            KafkaError::ReplicaNotAvailable => 9,
            KafkaError::MessageTooLarge => 10,
            KafkaError::OffsetMetadataTooLarge => 12,
            KafkaError::CoordinatorLoadInProgress => 14,
            KafkaError::CoordinatorNotAvailable => 15,
            KafkaError::NotCoordinator => 16,
            KafkaError::InvalidTopicException => 17,
            KafkaError::NotEnoughReplicas => 19,
            KafkaError::NotEnoughReplicasAfterAppend => 20,
            KafkaError::InvalidRequiredAcks => 21,
            KafkaError::IllegalGeneration => 22,
            KafkaError::InconsistentGroupProtocol => 23,
            KafkaError::InvalidGroupId => 24,
            KafkaError::UnknownMemberId => 25,
            KafkaError::InvalidSessionTimeout => 26,
            KafkaError::RebalanceInProgress => 27,
            KafkaError::UnsupportedVersion => 35,
            KafkaError::TopicAlreadyExists => 36,
            KafkaError::InvalidPartitions => 37,
            KafkaError::InvalidReplicationFactor => 38,
            KafkaError::InvalidReplicaAssignment => 39,
            KafkaError::InvalidConfig => 40,
            KafkaError::NotController => 41,
            KafkaError::InvalidRequest => 42,
            KafkaError::UnsupportedForMessageFormat => 43,
            KafkaError::UnsupportedCompressionType => 76,
            KafkaError::PolicyViolation => 44,
            KafkaError::InvalidTxnState => 48,
            KafkaError::InvalidProducerIdMapping => 49,
            KafkaError::InvalidTransactionTimeout => 50,
            KafkaError::ConcurrentTransactions => 51,
            KafkaError::ProducerFenced => 90,
            KafkaError::KafkaStorageError => 56,
            KafkaError::NonEmptyGroup => 68,
            KafkaError::GroupIdNotFound => 69,
            KafkaError::FencedLeaderEpoch => 74,
            KafkaError::UnknownLeaderEpoch => 75,
            KafkaError::StaleBrokerEpoch => 77,
            KafkaError::MemberIdRequired => 79,
            KafkaError::GroupMaxSizeReached => 81,
            KafkaError::FencedInstanceId => 82,
            KafkaError::FencedMemberEpoch => 110,
            KafkaError::UnreleasedInstanceId => 111,
            KafkaError::UnsupportedAssignor => 112,
            KafkaError::StaleMemberEpoch => 113,
            KafkaError::InvalidRegularExpression => 128,
            KafkaError::GroupSubscribedToTopic => 86,
            KafkaError::InvalidRecord => 87,
            KafkaError::InvalidUpdateVersion => 95,
            KafkaError::UnknownTopicId => 100,
            KafkaError::DuplicateBrokerRegistration => 101,
            KafkaError::IneligibleReplica => 107,
            KafkaError::OutOfOrderSequenceNumber => 45,
            KafkaError::InvalidProducerEpoch => 47,
            KafkaError::TransactionCoordinatorFenced => 52,
            KafkaError::UnstableOffsetCommit => 88,
            KafkaError::OperationNotAttempted => 55,
            KafkaError::TransactionalIdNotFound => 105,
            KafkaError::InvalidVoterKey => 125,
            KafkaError::DuplicateVoter => 126,
            KafkaError::VoterNotFound => 127,
            KafkaError::InconsistentClusterId => 104,
            KafkaError::FetchSessionIdNotFound => 70,
            KafkaError::InvalidFetchSessionEpoch => 71,
            KafkaError::FetchSessionTopicIdError => 106,
            KafkaError::PreferredLeaderNotAvailable => 80,
            KafkaError::EligibleLeadersNotAvailable => 83,
            KafkaError::ElectionNotNeeded => 84,
            KafkaError::NoReassignmentInProgress => 85,
        }
    }

    /// Every variant; `kafka_table`'s exhaustive match makes a new one name its number there.
    const ALL: [KafkaError; 76] = [
        KafkaError::UnknownServerError,
        KafkaError::OffsetOutOfRange,
        KafkaError::CorruptMessage,
        KafkaError::UnknownTopicOrPartition,
        KafkaError::LeaderNotAvailable,
        KafkaError::NotLeaderOrFollower,
        KafkaError::RequestTimedOut,
        KafkaError::ReplicaNotAvailable,
        KafkaError::MessageTooLarge,
        KafkaError::OffsetMetadataTooLarge,
        KafkaError::CoordinatorLoadInProgress,
        KafkaError::CoordinatorNotAvailable,
        KafkaError::NotCoordinator,
        KafkaError::InvalidTopicException,
        KafkaError::NotEnoughReplicas,
        KafkaError::NotEnoughReplicasAfterAppend,
        KafkaError::InvalidRequiredAcks,
        KafkaError::IllegalGeneration,
        KafkaError::InconsistentGroupProtocol,
        KafkaError::InvalidGroupId,
        KafkaError::UnknownMemberId,
        KafkaError::InvalidSessionTimeout,
        KafkaError::RebalanceInProgress,
        KafkaError::UnsupportedVersion,
        KafkaError::TopicAlreadyExists,
        KafkaError::InvalidPartitions,
        KafkaError::InvalidReplicationFactor,
        KafkaError::InvalidReplicaAssignment,
        KafkaError::InvalidConfig,
        KafkaError::NotController,
        KafkaError::InvalidRequest,
        KafkaError::UnsupportedForMessageFormat,
        KafkaError::UnsupportedCompressionType,
        KafkaError::PolicyViolation,
        KafkaError::InvalidTxnState,
        KafkaError::InvalidProducerIdMapping,
        KafkaError::InvalidTransactionTimeout,
        KafkaError::ConcurrentTransactions,
        KafkaError::ProducerFenced,
        KafkaError::KafkaStorageError,
        KafkaError::NonEmptyGroup,
        KafkaError::GroupIdNotFound,
        KafkaError::FencedLeaderEpoch,
        KafkaError::UnknownLeaderEpoch,
        KafkaError::StaleBrokerEpoch,
        KafkaError::MemberIdRequired,
        KafkaError::GroupMaxSizeReached,
        KafkaError::FencedInstanceId,
        KafkaError::FencedMemberEpoch,
        KafkaError::UnreleasedInstanceId,
        KafkaError::UnsupportedAssignor,
        KafkaError::StaleMemberEpoch,
        KafkaError::InvalidRegularExpression,
        KafkaError::GroupSubscribedToTopic,
        KafkaError::InvalidRecord,
        KafkaError::InvalidUpdateVersion,
        KafkaError::UnknownTopicId,
        KafkaError::DuplicateBrokerRegistration,
        KafkaError::IneligibleReplica,
        KafkaError::OutOfOrderSequenceNumber,
        KafkaError::InvalidProducerEpoch,
        KafkaError::TransactionCoordinatorFenced,
        KafkaError::UnstableOffsetCommit,
        KafkaError::OperationNotAttempted,
        KafkaError::TransactionalIdNotFound,
        KafkaError::InvalidVoterKey,
        KafkaError::DuplicateVoter,
        KafkaError::VoterNotFound,
        KafkaError::InconsistentClusterId,
        KafkaError::FetchSessionIdNotFound,
        KafkaError::InvalidFetchSessionEpoch,
        KafkaError::FetchSessionTopicIdError,
        KafkaError::PreferredLeaderNotAvailable,
        KafkaError::EligibleLeadersNotAvailable,
        KafkaError::ElectionNotNeeded,
        KafkaError::NoReassignmentInProgress,
    ];

    #[test]
    fn every_kafka_error_has_the_number_of_kafkas_table() {
        for e in ALL {
            assert_eq!(i16::from(e), kafka_table(e), "{e:?}");
        }
        let mut codes: Vec<i16> = ALL.iter().map(|e| i16::from(*e)).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len(), "two variants share a code: one is a duplicate");
        assert_eq!(code_of(None::<KafkaError>), 0, "NONE");
    }

    /// The internal errors map to the Kafka errors Kafka answers in the same situation.
    #[test]
    fn internal_errors_map_to_kafkas_codes() {
        let control = |e: ControlError| i16::from(KafkaError::from(&e));
        assert_eq!(control(ControlError::TopicAlreadyExists("t".into())), 36);
        assert_eq!(control(ControlError::UnknownTopicOrPartition("t".into())), 3);
        assert_eq!(control(ControlError::InvalidTopic("t".into())), 17);
        assert_eq!(control(ControlError::InvalidPartitions("t".into())), 37);
        assert_eq!(control(ControlError::InvalidReplicationFactor("t".into())), 38);
        assert_eq!(control(ControlError::InvalidReplicaAssignment("t".into())), 39);
        assert_eq!(control(ControlError::NotController), 41);
        assert_eq!(control(ControlError::OutcomeUnknown("t".into())), 7);
        assert_eq!(control(ControlError::InvalidRequest("t".into())), 42);
        assert_eq!(control(ControlError::InvalidConfig("t".into())), 40);
        assert_eq!(control(ControlError::PolicyViolation("t".into())), 44);
        assert_eq!(control(ControlError::StaleBrokerEpoch(1)), 77);
        assert_eq!(control(ControlError::ProducerIdsExhausted), -1, "UNKNOWN_SERVER_ERROR");
        assert_eq!(control(ControlError::VoterChangeTimedOut("t".into())), 7);
        assert_eq!(control(ControlError::InvalidVoterKey("t".into())), 125);
        assert_eq!(control(ControlError::DuplicateVoter("t".into())), 126);
        assert_eq!(control(ControlError::VoterNotFound("t".into())), 127);
        assert_eq!(control(ControlError::NoReassignmentInProgress("t".into())), 85);
        let election = |e: ElectionError| i16::from(KafkaError::from(e));
        assert_eq!(election(ElectionError::UnknownTopicOrPartition), 3);
        assert_eq!(election(ElectionError::PreferredLeaderNotAvailable), 80);
        assert_eq!(election(ElectionError::EligibleLeadersNotAvailable), 83);
        assert_eq!(election(ElectionError::ElectionNotNeeded), 84);
        for e in [ProducerIdError::BlockPending, ProducerIdError::BlockUnavailable] {
            assert_eq!(code_of(Some(e)), 14, "{e:?}: COORDINATOR_LOAD_IN_PROGRESS");
        }
        let log = |e: LogError| i16::from(KafkaError::from(e));
        assert_eq!(log(LogError::AppendEmpty), 2);
        assert_eq!(log(LogError::BatchTooLarge { batch_index: 0, size: 2, max: 1 }), 10);
        assert_eq!(log(LogError::OffsetOutOfRange { offset: 9, start: 0, end: 1 }), 1);
        assert_eq!(log(LogError::LogOffline { dir: "x".into() }), 56);
        let emfile = std::io::Error::from_raw_os_error(24);
        assert_eq!(log(LogError::FileHandlesExhausted { path: "x".into(), source: emfile }), 9);
        let groups = [
            (GroupError::CoordinatorNotAvailable, 15),
            (GroupError::NotCoordinator, 16),
            (GroupError::IllegalGeneration, 22),
            (GroupError::InconsistentGroupProtocol, 23),
            (GroupError::UnknownMemberId, 25),
            (GroupError::InvalidSessionTimeout, 26),
            (GroupError::RebalanceInProgress, 27),
            (GroupError::InvalidRequest, 42),
            (GroupError::NonEmptyGroup, 68),
            (GroupError::MemberIdRequired, 79),
            (GroupError::GroupMaxSizeReached, 81),
            (GroupError::FencedInstanceId, 82),
            (GroupError::FencedMemberEpoch, 110),
            (GroupError::UnreleasedInstanceId, 111),
            (GroupError::UnsupportedAssignor, 112),
            (GroupError::StaleMemberEpoch, 113),
            (GroupError::InvalidRegularExpression, 128),
            (GroupError::GroupIdNotFound, 69),
            (GroupError::GroupSubscribedToTopic, 86),
        ];
        for (e, code) in groups {
            assert_eq!(code_of(Some(e)), code, "{e:?}");
        }
        let routes = [
            (RouteError::NotCoordinator, 16),
            (RouteError::Loading, 14),
            (RouteError::NotAvailable, 15),
        ];
        for (e, code) in routes {
            assert_eq!(code_of(Some(e)), code, "{e:?}");
        }
        let txns = [
            (TxnError::InvalidRequest, 42),
            (TxnError::InvalidTransactionTimeout, 50),
            (TxnError::ConcurrentTransactions, 51),
            (TxnError::ProducerFenced, 90),
            (TxnError::InvalidProducerEpoch, 47),
            (TxnError::InvalidProducerIdMapping, 49),
            (TxnError::InvalidTxnState, 48),
            (TxnError::NotCoordinator, 16),
            (TxnError::CoordinatorNotAvailable, 15),
            (TxnError::UnknownServerError, -1),
        ];
        for (e, code) in txns {
            assert_eq!(code_of(Some(e)), code, "{e:?}");
        }
        let acks = [(AckError::TimedOut, 7), (AckError::Offline, 56), (AckError::NotLeader, 6)];
        for (e, code) in acks {
            let name = format!("{e:?}");
            assert_eq!(code_of(Some(e)), code, "{name}");
        }
    }
}
