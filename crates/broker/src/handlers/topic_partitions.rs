//! DescribeTopicPartitions (KIP-966): the topics' partitions from the broker's metadata image,
//! a page at a time. Topics go in name order; a page stops after `response_partition_limit`
//! partitions (at most [`RESPONSE_PARTITIONS_MAX`]) and names where the next one starts
//! (`next_cursor`), exactly where Kafka's broker cuts it, so a client pages the same way
//! against either. The work a request causes is bounded by the page, plus one entry per topic
//! it names: a huge limit allocates nothing by it, and a listing of every topic starts at the
//! cursor without walking the names before it.

use std::collections::BTreeSet;

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition as PartitionOut,
    DescribeTopicPartitionsResponseTopic as TopicOut,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName,
};
use strom_metadata::config::is_internal_topic;
use strom_metadata::{MetadataImage, NodeId, PartitionImage, TopicImage};
use uuid::Uuid;

use super::authorized::{self, Resource};
use super::metadata::LISTENER;
use super::s;
use crate::errors::KafkaError;

/// Partitions one response may hold, whatever the request asks: Kafka's
/// `max.request.partition.size.limit` default.
pub(crate) const RESPONSE_PARTITIONS_MAX: i32 = 2000;

/// The response to `req` from `image`.
pub(crate) fn describe(
    image: &MetadataImage,
    req: &DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let cursor = req.cursor.as_ref().map(|c| (c.topic_name.as_str(), c.partition_index));
    let cursor_topic = cursor.map_or("", |(name, _)| name);
    let list_all = req.topics.is_empty();
    // The named topics from the cursor's on, once each, in name order.
    let named: BTreeSet<&str> =
        req.topics.iter().map(|t| t.name.as_str()).filter(|n| *n >= cursor_topic).collect();
    if !list_all && cursor.is_some() && !named.contains(cursor_topic) {
        return invalid_request(req);
    }
    let topics: Box<dyn Iterator<Item = (&str, Option<&TopicImage>)>> = if list_all {
        Box::new(image.topics.iter_from(cursor_topic).map(|(n, t)| (n.as_str(), Some(&**t))))
    } else {
        Box::new(named.iter().map(|n| (*n, image.topic(n))))
    };
    let first_index =
        |name: &str| cursor.filter(|(topic, _)| *topic == name).map_or(0, |(_, index)| index);
    let operations = authorized::operations(Resource::Topic, true);
    let mut remaining = RESPONSE_PARTITIONS_MAX.min(req.response_partition_limit);
    let mut out = Vec::new();
    let mut next_cursor = None;
    for (name, topic) in topics {
        // A negative limit answers nothing, and no cursor either (as Kafka's broker does).
        if remaining < 0 {
            break;
        }
        if remaining == 0 {
            // The page is full: the next one starts at this topic, known or not.
            next_cursor = Some(cursor_at(name, 0));
            break;
        }
        let Some(topic) = topic else {
            // Only a named topic can be missing; it takes no room on the page.
            out.push(missing(name, operations));
            continue;
        };
        let (partitions, next) = page(image, topic, first_index(name), remaining);
        remaining -= partitions.len() as i32;
        out.push(
            TopicOut::default()
                .with_name(Some(TopicName(s(name.to_string()))))
                .with_topic_id(Uuid::from_bytes(topic.id.0))
                .with_is_internal(is_internal_topic(name))
                .with_partitions(partitions)
                .with_topic_authorized_operations(operations),
        );
        if let Some(next) = next {
            next_cursor = Some(cursor_at(name, next));
            break;
        }
    }
    DescribeTopicPartitionsResponse::default().with_topics(out).with_next_cursor(next_cursor)
}

/// The partitions of `topic` from index `start` on, at most `room` (> 0) of them, and the
/// index the next page starts at if some are left. As Kafka counts it: the page covers the
/// indexes `start..min(partition count, start + room)`; a start past the end gives an empty
/// page and no next one. (Kafka adds in 32 bits, so a start near `i32::MAX` wraps there; here
/// it does not.)
fn page(
    image: &MetadataImage,
    topic: &TopicImage,
    start: i32,
    room: i32,
) -> (Vec<PartitionOut>, Option<i32>) {
    debug_assert!(room > 0);
    let count = i64::try_from(topic.partitions.len()).unwrap_or(i64::MAX);
    let end = count.min(i64::from(start) + i64::from(room));
    let next = (end < count).then_some(end as i32);
    let partitions = if i64::from(start) < end {
        topic.partitions.range(start..end as i32).map(|(&i, p)| partition(image, i, p)).collect()
    } else {
        Vec::new()
    };
    (partitions, next)
}

fn partition(image: &MetadataImage, index: i32, p: &PartitionImage) -> PartitionOut {
    let ids = |v: &[NodeId]| v.iter().map(|n| BrokerId(n.0)).collect::<Vec<_>>();
    // Kafka names a leader only while it is registered with this listener.
    let leader =
        p.leader.filter(|l| image.brokers.get(l).is_some_and(|b| b.endpoint(LISTENER).is_some()));
    // Kafka's offline replicas: unregistered, fenced or without this listener.
    let offline = p
        .replicas
        .iter()
        .filter(|r| image.brokers.get(r).is_none_or(|b| b.fenced || b.endpoint(LISTENER).is_none()))
        .map(|n| BrokerId(n.0))
        .collect();
    PartitionOut::default()
        .with_partition_index(index)
        .with_leader_id(BrokerId(leader.map_or(-1, |n| n.0)))
        .with_leader_epoch(p.leader_epoch.0)
        .with_replica_nodes(ids(&p.replicas))
        .with_isr_nodes(ids(&p.isr))
        // No eligible leader replicas (KIP-966's ELR is not kept): empty, as Kafka sends them.
        .with_eligible_leader_replicas(Some(Vec::new()))
        .with_last_known_elr(Some(Vec::new()))
        .with_offline_replicas(offline)
}

fn cursor_at(topic: &str, partition_index: i32) -> Cursor {
    Cursor::default()
        .with_topic_name(TopicName(s(topic.to_string())))
        .with_partition_index(partition_index)
}

/// A named topic the image lacks.
fn missing(name: &str, operations: i32) -> TopicOut {
    let error = match strom_metadata::control::validate_topic_name(name) {
        Ok(()) => KafkaError::UnknownTopicOrPartition,
        Err(_) => KafkaError::InvalidTopicException,
    };
    TopicOut::default()
        .with_error_code(error.into())
        .with_name(Some(TopicName(s(name.to_string()))))
        .with_is_internal(is_internal_topic(name))
        .with_topic_authorized_operations(operations)
}

/// A cursor on a topic the request does not name: Kafka answers INVALID_REQUEST for every
/// topic it names.
fn invalid_request(req: &DescribeTopicPartitionsRequest) -> DescribeTopicPartitionsResponse {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            TopicOut::default()
                .with_error_code(KafkaError::InvalidRequest.into())
                .with_name(Some(t.name.clone()))
        })
        .collect();
    DescribeTopicPartitionsResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use kafka_protocol::messages::describe_topic_partitions_request::{
        Cursor as CursorIn, TopicRequest,
    };
    use strom_metadata::records::Endpoint;
    use strom_metadata::{
        BrokerEpoch, BrokerImage, LeaderEpoch, PartitionEpoch, TopicId, TopicImage,
    };

    use super::*;

    const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    const INVALID_TOPIC_EXCEPTION: i16 = 17;
    const INVALID_REQUEST: i16 = 42;

    /// Brokers 1-3 (3 fenced) and topics `a` (3 partitions), `b` (2), `c` (1), led by
    /// broker 1 with replicas [1, 2, 3].
    fn image() -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in 1..=3 {
            let endpoint = Endpoint {
                name: LISTENER.into(),
                host: "127.0.0.1".into(),
                port: 9000 + id as u32,
            };
            image.brokers.insert(
                NodeId(id),
                BrokerImage {
                    id: NodeId(id),
                    epoch: BrokerEpoch(1),
                    incarnation_id: vec![],
                    endpoints: vec![endpoint],
                    rack: None,
                    fenced: id == 3,
                    in_controlled_shutdown: false,
                },
            );
        }
        for (n, (name, count)) in [("a", 3), ("b", 2), ("c", 1)].into_iter().enumerate() {
            let partitions = (0..count)
                .map(|i| {
                    let p = PartitionImage {
                        replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
                        isr: vec![NodeId(1), NodeId(2)],
                        leader: Some(NodeId(1)),
                        leader_epoch: LeaderEpoch(4),
                        partition_epoch: PartitionEpoch(5),
                        adding_replicas: vec![],
                        removing_replicas: vec![],
                    };
                    (i, p)
                })
                .collect::<BTreeMap<_, _>>();
            let topic =
                TopicImage { name: name.into(), id: TopicId([n as u8 + 1; 16]), partitions };
            image.topics.insert(name.into(), Arc::new(topic));
        }
        image
    }

    fn request(
        topics: &[&str],
        limit: i32,
        cursor: Option<(&str, i32)>,
    ) -> DescribeTopicPartitionsRequest {
        DescribeTopicPartitionsRequest::default()
            .with_topics(
                topics
                    .iter()
                    .map(|t| TopicRequest::default().with_name(TopicName(s(t.to_string()))))
                    .collect(),
            )
            .with_response_partition_limit(limit)
            .with_cursor(cursor.map(|(t, i)| {
                CursorIn::default()
                    .with_topic_name(TopicName(s(t.to_string())))
                    .with_partition_index(i)
            }))
    }

    /// Each topic as (name, error, partition indexes), and the next cursor.
    type Listed = (Vec<(String, i16, Vec<i32>)>, Option<(String, i32)>);

    fn listed(resp: &DescribeTopicPartitionsResponse) -> Listed {
        let topics = resp
            .topics
            .iter()
            .map(|t| {
                let name = t.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
                (name, t.error_code, t.partitions.iter().map(|p| p.partition_index).collect())
            })
            .collect();
        let cursor =
            resp.next_cursor.as_ref().map(|c| (c.topic_name.to_string(), c.partition_index));
        (topics, cursor)
    }

    fn t(name: &str, error: i16, partitions: &[i32]) -> (String, i16, Vec<i32>) {
        (name.to_string(), error, partitions.to_vec())
    }

    fn at(name: &str, index: i32) -> Option<(String, i32)> {
        Some((name.to_string(), index))
    }

    #[test]
    fn an_empty_request_lists_every_topic_in_name_order() {
        let image = image();
        let resp = describe(&image, &request(&[], 2000, None));
        let (topics, cursor) = listed(&resp);
        assert_eq!(topics, vec![t("a", 0, &[0, 1, 2]), t("b", 0, &[0, 1]), t("c", 0, &[0])]);
        assert_eq!(cursor, None);
        let a0 = &resp.topics[0].partitions[0];
        assert_eq!(a0.leader_id.0, 1);
        assert_eq!(a0.leader_epoch, 4);
        assert_eq!(a0.replica_nodes.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(a0.isr_nodes.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(a0.offline_replicas.iter().map(|b| b.0).collect::<Vec<_>>(), [3], "fenced");
        assert_eq!(a0.eligible_leader_replicas, Some(vec![]));
        assert_eq!(resp.topics[0].topic_id, Uuid::from_bytes([1; 16]));
        assert_eq!(
            resp.topics[0].topic_authorized_operations,
            authorized::operations(Resource::Topic, true)
        );
    }

    /// Pages of two partitions walk every partition exactly once, across topic boundaries.
    #[test]
    fn pages_cut_where_kafka_cuts_them() {
        let image = image();
        let page = |cursor| listed(&describe(&image, &request(&[], 2, cursor)));
        assert_eq!(page(None), (vec![t("a", 0, &[0, 1])], at("a", 2)));
        assert_eq!(page(Some(("a", 2))), (vec![t("a", 0, &[2]), t("b", 0, &[0])], at("b", 1)));
        // A topic that fills the page exactly: the cursor names the next topic's first partition.
        assert_eq!(page(Some(("b", 1))), (vec![t("b", 0, &[1]), t("c", 0, &[0])], None));
        let exact = listed(&describe(&image, &request(&[], 3, None)));
        assert_eq!(exact, (vec![t("a", 0, &[0, 1, 2])], at("b", 0)));
        // A limit of 0 answers the cursor only; a negative one nothing at all.
        assert_eq!(listed(&describe(&image, &request(&[], 0, None))), (vec![], at("a", 0)));
        assert_eq!(listed(&describe(&image, &request(&[], -1, None))), (vec![], None));
        // A cursor on a topic that is gone starts at the next one.
        assert_eq!(page(Some(("aa", 1))), (vec![t("b", 0, &[0, 1])], at("c", 0)));
    }

    #[test]
    fn a_huge_limit_is_capped_and_a_cursor_past_the_end_gives_an_empty_topic() {
        let image = image();
        let all = listed(&describe(&image, &request(&[], i32::MAX, None)));
        assert_eq!(all.0.len(), 3);
        let past = listed(&describe(&image, &request(&[], i32::MAX, Some(("a", i32::MAX)))));
        assert_eq!(past, (vec![t("a", 0, &[]), t("b", 0, &[0, 1]), t("c", 0, &[0])], None));
        let negative = listed(&describe(&image, &request(&[], 2, Some(("a", -1)))));
        assert_eq!(negative, (vec![t("a", 0, &[0])], at("a", 1)));
    }

    #[test]
    fn named_topics_are_sorted_deduplicated_and_unknown_ones_answered() {
        let image = image();
        let resp =
            describe(&image, &request(&["c", "nope", "a", "c", "bad/name", "a"], 2000, None));
        let (topics, cursor) = listed(&resp);
        assert_eq!(
            topics,
            vec![
                t("a", 0, &[0, 1, 2]),
                t("bad/name", INVALID_TOPIC_EXCEPTION, &[]),
                t("c", 0, &[0]),
                t("nope", UNKNOWN_TOPIC_OR_PARTITION, &[]),
            ]
        );
        assert_eq!(cursor, None);
        assert_eq!(resp.topics[3].topic_id, Uuid::nil());
        // Unknown topics take no room on the page; the topic after a full page is the cursor.
        let page = listed(&describe(&image, &request(&["a", "b", "aa"], 3, None)));
        assert_eq!(page, (vec![t("a", 0, &[0, 1, 2])], at("aa", 0)));
        let next = listed(&describe(&image, &request(&["a", "b", "aa"], 3, Some(("aa", 0)))));
        assert_eq!(
            next,
            (vec![t("aa", UNKNOWN_TOPIC_OR_PARTITION, &[]), t("b", 0, &[0, 1])], None)
        );
        // Thousands of copies of one name are one topic.
        let copies = vec!["b"; 10_000];
        assert_eq!(
            listed(&describe(&image, &request(&copies, 2000, None))).0,
            vec![t("b", 0, &[0, 1])]
        );
    }

    #[test]
    fn a_cursor_on_a_topic_the_request_does_not_name_is_an_invalid_request() {
        let image = image();
        let resp = listed(&describe(&image, &request(&["a", "b"], 10, Some(("c", 0)))));
        assert_eq!(resp, (vec![t("a", INVALID_REQUEST, &[]), t("b", INVALID_REQUEST, &[])], None));
    }

    #[test]
    fn a_leader_that_is_not_registered_is_not_named() {
        let mut image = image();
        image.brokers.remove(&NodeId(1));
        let resp = describe(&image, &request(&["c"], 10, None));
        let p = &resp.topics[0].partitions[0];
        assert_eq!(p.leader_id.0, -1);
        assert_eq!(p.error_code, 0);
        assert_eq!(p.offline_replicas.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 3]);
    }
}
