//! The APIs strom serves and their version ranges: what ApiVersions advertises, and the gate
//! every request passes before it is decoded.

use kafka_protocol::messages::ApiKey;

/// (api, min version, max version). Ranges stop where strom stops implementing the fields a
/// newer version adds; every bound is within the `kafka-protocol` crate's own range.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 10),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    // v9: KIP-848 members commit with their member epoch.
    (ApiKey::OffsetCommit, 2, 9),
    // v9: a KIP-848 member fetches at its member epoch.
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::WriteTxnMarkers, 1, 1),
    // v4 is KIP-890 part 2 (server-side epoch bumps), not implemented.
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeProducers, 0, 0),
    // v4+ is KIP-890's broker-to-broker verification, not implemented.
    // v4 is brokers' KIP-890 part 1 verification; v5 (part 2) is not implemented.
    (ApiKey::AddPartitionsToTxn, 0, 4),
    // v4 (and EndTxn v4-5) belong to KIP-890, not implemented.
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::DescribeTransactions, 0, 0),
    // v2 adds a filter by transactional id pattern, not implemented.
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    // v0 left Kafka in 4.0 (KIP-896), and the codec with it.
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::ElectLeaders, 0, 2),
    // v1 is KIP-860's allow_replication_factor_change, not implemented.
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    // KIP-966's paged topic listing, served from the broker's metadata image.
    (ApiKey::DescribeTopicPartitions, 0, 0),
    // The metadata quorum (KIP-853): forwarded to the active controller, as Kafka's brokers
    // forward them. UpdateRaftVoter is a controller's own request, served for completeness.
    (ApiKey::DescribeQuorum, 0, 2),
    (ApiKey::AddRaftVoter, 0, 0),
    (ApiKey::RemoveRaftVoter, 0, 0),
    (ApiKey::UpdateRaftVoter, 0, 0),
    // Client quotas, stored as metadata records; only the `user` and `client-id` entities.
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
    // KIP-848's consumer groups: the coordinator assigns partitions itself.
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
];

/// The served range of an API, or `None` if strom does not serve it.
pub fn supported(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED.iter().find(|(k, _, _)| *k == key).map(|&(_, min, max)| (min, max))
}

pub fn is_supported(key: ApiKey, version: i16) -> bool {
    supported(key).is_some_and(|(min, max)| (min..=max).contains(&version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_range_is_within_the_codec_range() {
        for &(key, min, max) in SUPPORTED {
            let codec = key.valid_versions();
            assert!(min <= max, "{key:?}");
            assert!(codec.min <= min && max <= codec.max, "{key:?} {min}..{max} vs {codec:?}");
        }
    }
}
