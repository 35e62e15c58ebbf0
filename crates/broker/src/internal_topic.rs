//! The topics the coordinators keep their state in (`__consumer_offsets` for groups,
//! `__transaction_state` for transactions): which partition a key belongs to, and the topic's
//! creation on the first coordinator lookup, waiting a little for the replicas it wants.

use std::sync::OnceLock;
use std::time::Duration;

use strom_metadata::control::{ControlRequest, ControlResponse, CreateTopic, CreateTopicsRequest};

use crate::BrokerCtx;

/// How long the first coordinator lookups wait for every registered broker to be live before
/// an internal topic is created with fewer replicas than wanted (a cluster starting up
/// registers its brokers one by one; one that stays down must not block coordinators for ever).
const REPLICAS_WAIT: Duration = Duration::from_secs(10);

/// Kafka's `Utils.abs(key.hashCode()) % partitions`: Java's `String.hashCode` over UTF-16 code
/// units, so that a group or transactional id maps to the partition Kafka would pick.
pub(crate) fn partition_for(key: &str, partitions: i32) -> i32 {
    let hash = key.encode_utf16().fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(u as i32));
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// What the broker remembers about creating one internal topic.
#[derive(Default)]
pub(crate) struct FirstLookup {
    /// When a client first looked up a coordinator of the topic, on the broker's clock
    /// (creation waits a little for brokers from then).
    at_ms: OnceLock<i64>,
}

/// One internal topic as it is created.
pub(crate) struct InternalTopic<'a> {
    pub name: &'static str,
    pub num_partitions: i32,
    /// The wanted replication factor, capped by the brokers when the topic is created.
    pub replication_factor: i16,
    pub segment_bytes: u64,
    /// `min.insync.replicas`, capped by the replication factor the topic gets (`None`: the
    /// broker's default).
    pub min_insync_replicas: Option<i32>,
    pub first_lookup: &'a FirstLookup,
}

/// The replication factor an internal topic gets now, or `None` to wait: the wanted factor
/// capped by the registered brokers once that many are live, or what is live once `waited`
/// passes [`REPLICAS_WAIT`].
pub(crate) fn replication_factor(
    wanted: i16,
    registered: usize,
    live: usize,
    waited: Duration,
) -> Option<i16> {
    let target = (wanted.max(1) as usize).min(registered.max(1));
    if live >= target {
        Some(target as i16)
    } else if waited >= REPLICAS_WAIT && live > 0 {
        Some(live as i16)
    } else {
        None
    }
}

/// The topic's configs: compacted, its segment size, and its `min.insync.replicas` no higher
/// than its replication factor (a single node's coordinator must be able to write).
fn configs(topic: &InternalTopic<'_>, replication_factor: i16) -> Vec<(String, Option<String>)> {
    let mut configs = vec![
        ("cleanup.policy".to_owned(), Some("compact".to_owned())),
        ("segment.bytes".to_owned(), Some(topic.segment_bytes.to_string())),
    ];
    if let Some(min_isr) = topic.min_insync_replicas {
        let min_isr = min_isr.clamp(1, i32::from(replication_factor.max(1)));
        configs.push(("min.insync.replicas".to_owned(), Some(min_isr.to_string())));
    }
    configs
}

/// Asks the controller for the topic if it does not exist yet (Kafka creates it on the first
/// FindCoordinator); its replication factor comes from [`replication_factor`].
pub(crate) async fn ensure(ctx: &BrokerCtx, topic: InternalTopic<'_>) {
    let name = topic.name;
    let image = ctx.image.current();
    if image.topic(name).is_some() {
        return;
    }
    let now = ctx.clock.now_ms();
    let first = *topic.first_lookup.at_ms.get_or_init(|| now);
    let Some(replication_factor) = replication_factor(
        topic.replication_factor,
        image.brokers.len(),
        image.live_brokers().count(),
        Duration::from_millis(u64::try_from(now - first).unwrap_or(0)),
    ) else {
        tracing::debug!("waiting for more live brokers before creating {name}");
        return;
    };
    let request = CreateTopicsRequest {
        validate_only: false,
        internal: true,
        topics: vec![CreateTopic {
            name: name.to_owned(),
            num_partitions: topic.num_partitions,
            replication_factor,
            assignments: Vec::new(),
            configs: configs(&topic, replication_factor),
        }],
    };
    match ctx.controller.submit(ControlRequest::CreateTopics(request)).await {
        Ok(ControlResponse::CreateTopics(items)) => match items.into_iter().next() {
            Some(item) if item.result.is_ok() => {
                tracing::info!(replication_factor, "created {name}")
            }
            Some(item) => tracing::info!(result = ?item.result, "{name} not created"),
            None => {}
        },
        Ok(other) => tracing::warn!(?other, "unexpected answer creating {name}"),
        Err(e) => tracing::info!(error = %e, "cannot create {name} yet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_topics_wait_briefly_for_the_replicas_they_want() {
        let now = Duration::ZERO;
        let later = REPLICAS_WAIT;
        assert_eq!(replication_factor(3, 1, 1, now), Some(1), "a single node");
        assert_eq!(replication_factor(3, 3, 3, now), Some(3));
        assert_eq!(replication_factor(3, 5, 4, now), Some(3), "capped by the setting");
        assert_eq!(replication_factor(3, 3, 1, now), None, "two still starting");
        assert_eq!(replication_factor(3, 3, 2, later), Some(2), "one stays down");
        assert_eq!(replication_factor(3, 3, 0, later), None, "nobody live");
        assert_eq!(replication_factor(1, 3, 3, now), Some(1));
    }

    #[test]
    fn min_insync_replicas_never_exceeds_the_replication_factor() {
        let first_lookup = FirstLookup::default();
        let topic = |min_insync_replicas| InternalTopic {
            name: "__t",
            num_partitions: 50,
            replication_factor: 3,
            segment_bytes: 1 << 20,
            min_insync_replicas,
            first_lookup: &first_lookup,
        };
        let min_isr = |t: &InternalTopic<'_>, rf| {
            configs(t, rf).into_iter().find(|(k, _)| k == "min.insync.replicas").and_then(|c| c.1)
        };
        assert_eq!(min_isr(&topic(Some(2)), 3).as_deref(), Some("2"));
        assert_eq!(min_isr(&topic(Some(2)), 1).as_deref(), Some("1"), "a single node");
        assert_eq!(min_isr(&topic(None), 3), None, "the broker's default");
        let all = configs(&topic(None), 3);
        assert!(all.contains(&("cleanup.policy".to_owned(), Some("compact".to_owned()))));
        assert!(all.contains(&("segment.bytes".to_owned(), Some((1 << 20).to_string()))));
    }

    #[test]
    fn keys_map_to_the_partition_kafka_picks() {
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
