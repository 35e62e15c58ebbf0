//! `__consumer_offsets` itself: its name, which of its partitions a group belongs to, and its
//! creation on the first coordinator lookup (`crate::internal_topic`).

use crate::internal_topic::{self, FirstLookup, InternalTopic};
use crate::BrokerCtx;

pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Kafka's `Utils.abs(groupId.hashCode()) % partitions`.
pub(crate) fn partition_for(group_id: &str, partitions: i32) -> i32 {
    internal_topic::partition_for(group_id, partitions)
}

/// What the broker remembers about creating the topic.
#[derive(Default)]
pub(crate) struct OffsetsTopic {
    first_lookup: FirstLookup,
}

/// Asks the controller for `__consumer_offsets` if it does not exist yet (Kafka creates it on
/// the first FindCoordinator): compacted, `offsets.topic.*` settings, and the broker's default
/// `min.insync.replicas`, as Kafka leaves it.
pub(crate) async fn ensure_offsets_topic(ctx: &BrokerCtx) {
    let settings = &ctx.config.groups;
    let topic = InternalTopic {
        name: OFFSETS_TOPIC,
        num_partitions: settings.offsets_topic_num_partitions,
        replication_factor: settings.offsets_topic_replication_factor,
        segment_bytes: settings.offsets_topic_segment_bytes,
        min_insync_replicas: None,
        first_lookup: &ctx.groups.offsets_topic.first_lookup,
    };
    internal_topic::ensure(ctx, topic).await;
}
