//! The one place where internal errors become Kafka error codes.

use kafka_protocol::ResponseError as K;
use strom_log::LogError;
use strom_metadata::ControlError;

use crate::group::GroupError;

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

/// Kafka's code for a controller refusal.
pub fn control_code(e: &ControlError) -> i16 {
    let k = match e {
        ControlError::TopicAlreadyExists(_) => K::TopicAlreadyExists,
        ControlError::UnknownTopicOrPartition(_) => K::UnknownTopicOrPartition,
        ControlError::UnknownTopicId(_) => K::UnknownTopicId,
        ControlError::InvalidTopic(_) => K::InvalidTopicException,
        ControlError::InvalidPartitions(_) => K::InvalidPartitions,
        ControlError::InvalidReplicationFactor(_) => K::InvalidReplicationFactor,
        ControlError::InvalidReplicaAssignment(_) => K::InvalidReplicaAssignment,
        ControlError::InvalidConfig(_) => K::InvalidConfig,
        ControlError::InvalidRequest(_) => K::InvalidRequest,
        ControlError::StaleBrokerEpoch(_) => K::StaleBrokerEpoch,
        ControlError::DuplicateBrokerRegistration(_) => K::DuplicateBrokerRegistration,
        ControlError::FencedLeaderEpoch(_) => K::FencedLeaderEpoch,
        ControlError::InvalidUpdateVersion(_) => K::InvalidUpdateVersion,
        ControlError::IneligibleReplica(_) => K::IneligibleReplica,
        ControlError::PolicyViolation(_) => K::PolicyViolation,
        ControlError::NotController => K::NotController,
        ControlError::ControllerUnavailable(_) => K::RequestTimedOut,
    };
    k.code()
}

/// Kafka's code for a failed append or read.
pub fn log_code(e: &LogError) -> i16 {
    let k = match e {
        LogError::CorruptBatch { .. } | LogError::AppendEmpty => K::CorruptMessage,
        LogError::UnsupportedMagic { .. } => K::UnsupportedForMessageFormat,
        LogError::BatchTooLarge { .. } => K::MessageTooLarge,
        LogError::AppendOffsetSpanTooLarge { .. } => K::InvalidRecord,
        LogError::OffsetOutOfRange { .. } => K::OffsetOutOfRange,
        LogError::LeaderEpochStale { .. } => K::FencedLeaderEpoch,
        _ => K::KafkaStorageError,
    };
    k.code()
}

/// Kafka's code for a group coordinator refusal.
pub(crate) fn group_code(e: GroupError) -> i16 {
    let k = match e {
        GroupError::CoordinatorNotAvailable => K::CoordinatorNotAvailable,
        GroupError::IllegalGeneration => K::IllegalGeneration,
        GroupError::InconsistentGroupProtocol => K::InconsistentGroupProtocol,
        GroupError::UnknownMemberId => K::UnknownMemberId,
        GroupError::InvalidSessionTimeout => K::InvalidSessionTimeout,
        GroupError::RebalanceInProgress => K::RebalanceInProgress,
        GroupError::InvalidRequest => K::InvalidRequest,
        GroupError::NonEmptyGroup => K::NonEmptyGroup,
        GroupError::MemberIdRequired => K::MemberIdRequired,
        GroupError::GroupMaxSizeReached => K::GroupMaxSizeReached,
        GroupError::FencedInstanceId => K::FencedInstanceId,
        GroupError::NotCoordinator => K::NotCoordinator,
        GroupError::GroupIdNotFound => K::GroupIdNotFound,
        GroupError::GroupSubscribedToTopic => K::GroupSubscribedToTopic,
    };
    k.code()
}

/// The public form for callers outside this module (tests, the binary's admin mapping).
pub fn kafka_code(e: &ControlError) -> i16 {
    control_code(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mapping is checked against Kafka's code table as numbers, not only as names.
    #[test]
    fn codes_match_kafkas_table() {
        assert_eq!(control_code(&ControlError::TopicAlreadyExists("t".into())), 36);
        assert_eq!(control_code(&ControlError::UnknownTopicOrPartition("t".into())), 3);
        assert_eq!(control_code(&ControlError::InvalidTopic("t".into())), 17);
        assert_eq!(control_code(&ControlError::InvalidPartitions("t".into())), 37);
        assert_eq!(control_code(&ControlError::InvalidReplicationFactor("t".into())), 38);
        assert_eq!(control_code(&ControlError::InvalidReplicaAssignment("t".into())), 39);
        assert_eq!(control_code(&ControlError::NotController), 41);
        assert_eq!(control_code(&ControlError::InvalidRequest("t".into())), 42);
        assert_eq!(control_code(&ControlError::InvalidConfig("t".into())), 40);
        assert_eq!(control_code(&ControlError::PolicyViolation("t".into())), 44);
        let corrupt = LogError::AppendEmpty;
        assert_eq!(log_code(&corrupt), 2);
        assert_eq!(log_code(&LogError::BatchTooLarge { batch_index: 0, size: 2, max: 1 }), 10);
        assert_eq!(log_code(&LogError::OffsetOutOfRange { offset: 9, start: 0, end: 1 }), 1);
        assert_eq!(log_code(&LogError::LogOffline { dir: "x".into() }), 56);
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
            (GroupError::GroupIdNotFound, 69),
            (GroupError::GroupSubscribedToTopic, 86),
        ];
        for (e, code) in groups {
            assert_eq!(group_code(e), code, "{e:?}");
        }
    }
}
