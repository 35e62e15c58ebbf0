//! `__consumer_offsets` itself: its name, which of its partitions a group belongs to, and its
//! creation on the first coordinator lookup (waiting a little for the replicas it wants).

use std::sync::OnceLock;
use std::time::Duration;

use crate::BrokerCtx;

pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// How long the first group lookups wait for every registered broker to be live before
/// `__consumer_offsets` is created with fewer replicas than wanted (a cluster starting up
/// registers its brokers one by one; one that stays down must not block groups for ever).
const OFFSETS_TOPIC_REPLICAS_WAIT: Duration = Duration::from_secs(10);

/// Kafka's `Utils.abs(groupId.hashCode()) % partitions`: Java's `String.hashCode` over UTF-16
/// code units, so that a group maps to the partition Kafka would pick.
pub(crate) fn partition_for(group_id: &str, partitions: i32) -> i32 {
    let hash = group_id.encode_utf16().fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(u as i32));
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// What the broker remembers about creating the topic.
#[derive(Default)]
pub(crate) struct OffsetsTopic {
    /// When a client first looked up a group coordinator, on the broker's clock (creation waits
    /// a little for brokers from then).
    first_lookup: OnceLock<i64>,
}

/// The replication factor `__consumer_offsets` gets now, or `None` to wait: the wanted factor
/// (`offsets.topic.replication.factor` capped by the registered brokers) once that many are
/// live, or what is live once `waited` passes [`OFFSETS_TOPIC_REPLICAS_WAIT`].
pub(crate) fn offsets_replication_factor(
    wanted: i16,
    registered: usize,
    live: usize,
    waited: Duration,
) -> Option<i16> {
    let target = (wanted.max(1) as usize).min(registered.max(1));
    if live >= target {
        Some(target as i16)
    } else if waited >= OFFSETS_TOPIC_REPLICAS_WAIT && live > 0 {
        Some(live as i16)
    } else {
        None
    }
}

/// Asks the controller for `__consumer_offsets` if it does not exist yet (Kafka creates it on
/// the first FindCoordinator). The topic is compacted; its replication factor comes from
/// [`offsets_replication_factor`].
pub(crate) async fn ensure_offsets_topic(ctx: &BrokerCtx) {
    use strom_metadata::control::{
        ControlRequest, ControlResponse, CreateTopic, CreateTopicsRequest,
    };
    let image = ctx.image.current();
    if image.topic(OFFSETS_TOPIC).is_some() {
        return;
    }
    let now = ctx.clock.now_ms();
    let first = *ctx.groups.offsets_topic.first_lookup.get_or_init(|| now);
    let Some(replication_factor) = offsets_replication_factor(
        ctx.config.groups.offsets_topic_replication_factor,
        image.brokers.len(),
        image.live_brokers().count(),
        Duration::from_millis(u64::try_from(now - first).unwrap_or(0)),
    ) else {
        tracing::debug!("waiting for more live brokers before creating {OFFSETS_TOPIC}");
        return;
    };
    let request = CreateTopicsRequest {
        validate_only: false,
        internal: true,
        topics: vec![CreateTopic {
            name: OFFSETS_TOPIC.to_owned(),
            num_partitions: ctx.config.groups.offsets_topic_num_partitions,
            replication_factor,
            assignments: Vec::new(),
            configs: vec![
                ("cleanup.policy".to_owned(), Some("compact".to_owned())),
                (
                    "segment.bytes".to_owned(),
                    Some(ctx.config.groups.offsets_topic_segment_bytes.to_string()),
                ),
            ],
        }],
    };
    match ctx.controller.submit(ControlRequest::CreateTopics(request)).await {
        Ok(ControlResponse::CreateTopics(items)) => match items.into_iter().next() {
            Some(item) if item.result.is_ok() => {
                tracing::info!(replication_factor, "created {OFFSETS_TOPIC}")
            }
            Some(item) => tracing::info!(result = ?item.result, "{OFFSETS_TOPIC} not created"),
            None => {}
        },
        Ok(other) => tracing::warn!(?other, "unexpected answer creating {OFFSETS_TOPIC}"),
        Err(e) => tracing::info!(error = %e, "cannot create {OFFSETS_TOPIC} yet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_topic_waits_briefly_for_the_replicas_it_wants() {
        let now = Duration::ZERO;
        let later = OFFSETS_TOPIC_REPLICAS_WAIT;
        assert_eq!(offsets_replication_factor(3, 1, 1, now), Some(1), "a single node");
        assert_eq!(offsets_replication_factor(3, 3, 3, now), Some(3));
        assert_eq!(offsets_replication_factor(3, 5, 4, now), Some(3), "capped by the setting");
        assert_eq!(offsets_replication_factor(3, 3, 1, now), None, "two still starting");
        assert_eq!(offsets_replication_factor(3, 3, 2, later), Some(2), "one stays down");
        assert_eq!(offsets_replication_factor(3, 3, 0, later), None, "nobody live");
        assert_eq!(offsets_replication_factor(1, 3, 3, now), Some(1));
    }

    #[test]
    fn groups_map_to_the_partition_kafka_picks() {
        // Java: "hello".hashCode() == 99162322
        assert_eq!(partition_for("hello", 50), 99_162_322 % 50);
        let h = "a".encode_utf16().fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(u as i32));
        assert_eq!(h, 97);
        assert_eq!(partition_for("a", 50), 97 % 50);
        // "ab" = 97 * 31 + 98
        assert_eq!(partition_for("ab", 50), (97 * 31 + 98) % 50);
        // Overflowing hashes wrap like Java's int and stay in range.
        for g in ["", "group-with-a-rather-long-name-0123456789", "ümlaut", "😀"] {
            let p = partition_for(g, 50);
            assert!((0..50).contains(&p), "{g}: {p}");
        }
        assert_eq!(partition_for("anything", 1), 0);
    }
}
