//! The replica manager's reconcile as a plan: from the metadata image (and what changed in it)
//! and the logs this node has open, the actions that make the local logs match the image. Pure:
//! no IO, no locks, no clock; `replica` carries the actions out, its IO off the async workers.

use std::collections::HashSet;

use strom_metadata::{MetadataDelta, MetadataImage, NodeId, TopicId};

/// A partition log this node has open. Only the reconcile opens logs, one image after another,
/// so every open log was placed here by the image being reconciled or an older one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LocalLog {
    pub topic: String,
    pub index: i32,
    pub topic_id: TopicId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Close and delete a local log: its topic is gone (or was recreated under a new id), or
    /// this node no longer replicates the partition.
    Delete(LocalLog),
    /// Open (recovering) the log of a partition this node replicates but has not open.
    Open { topic: String, index: i32, topic_id: TopicId },
    /// Bring an open log's settings (fsync on ack, min.insync.replicas, log config) and role
    /// (leader, follower, idle) to the image.
    Sync { topic: String, index: i32 },
    /// Delete the directories of topics deleted while this node was down (first image only).
    DeleteStrays,
}

/// The actions that make the local logs match `image`, in the order to carry them out: deletes
/// first (a recreated topic's log reuses the directory name of the log it replaces), then each
/// partition's open and sync. Only the topics `delta` names are looked at, unless it is whole
/// (a snapshot) or this is the first image: a commit costs the broker what it changed.
/// `local` is what this node has open (of at least the topics looked at).
pub(crate) fn plan(
    image: &MetadataImage,
    delta: &MetadataDelta,
    first: bool,
    node: NodeId,
    local: &[LocalLog],
) -> Vec<Action> {
    let full = first || delta.whole;
    let in_scope = |topic: &str| full || delta.topics.contains(topic);
    let replicated = |topic: &str, index: i32, topic_id: TopicId| {
        image.topic(topic).is_some_and(|t| {
            t.id == topic_id && t.partitions.get(&index).is_some_and(|p| p.replicas.contains(&node))
        })
    };
    let mut actions: Vec<Action> = local
        .iter()
        .filter(|l| in_scope(&l.topic) && !replicated(&l.topic, l.index, l.topic_id))
        .map(|l| Action::Delete(l.clone()))
        .collect();
    let topics: Vec<&strom_metadata::TopicImage> = if full {
        image.topics.values().map(|t| &**t).collect()
    } else {
        delta.topics.iter().filter_map(|name| image.topic(name)).collect()
    };
    // A set, not a scan per partition: a restart plans 100,000 partitions against as many logs.
    let open: HashSet<(&str, i32, TopicId)> =
        local.iter().map(|l| (l.topic.as_str(), l.index, l.topic_id)).collect();
    for topic in topics {
        for (&index, part) in &topic.partitions {
            if !part.replicas.contains(&node) {
                continue;
            }
            if !open.contains(&(topic.name.as_str(), index, topic.id)) {
                actions.push(Action::Open { topic: topic.name.clone(), index, topic_id: topic.id });
            }
            actions.push(Action::Sync { topic: topic.name.clone(), index });
        }
    }
    if first {
        actions.push(Action::DeleteStrays);
    }
    actions
}

#[cfg(test)]
mod tests {
    use strom_metadata::records::{
        metadata_record::Record, MetadataRecord, PartitionRecord, RemoveTopicRecord, TopicRecord,
    };
    use strom_metadata::MetadataOffset;

    use super::*;

    const ME: NodeId = NodeId(1);

    fn wrap(r: Record) -> MetadataRecord {
        MetadataRecord { record: Some(r) }
    }

    /// A topic `name` with id `[id; 16]` and one partition per replica list.
    fn create(name: &str, id: u8, placements: &[&[i32]]) -> Vec<MetadataRecord> {
        let mut out =
            vec![wrap(Record::Topic(TopicRecord { name: name.into(), topic_id: vec![id; 16] }))];
        out.extend(placements.iter().enumerate().map(|(p, replicas)| {
            wrap(Record::Partition(PartitionRecord {
                topic_id: vec![id; 16],
                partition_id: p as i32,
                replicas: replicas.to_vec(),
                isr: replicas.to_vec(),
                leader: replicas[0],
                leader_epoch: 0,
                partition_epoch: 0,
                ..Default::default()
            }))
        }));
        out
    }

    fn remove(id: u8) -> Vec<MetadataRecord> {
        vec![wrap(Record::RemoveTopic(RemoveTopicRecord { topic_id: vec![id; 16] }))]
    }

    fn image_of(batches: &[Vec<MetadataRecord>]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for (at, records) in batches.iter().enumerate() {
            image.apply_batch(MetadataOffset(at as u64 + 1), records).expect("applies");
        }
        image
    }

    fn changed(topics: &[&str]) -> MetadataDelta {
        MetadataDelta {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }
    }

    fn log(topic: &str, index: i32, id: u8) -> LocalLog {
        LocalLog { topic: topic.into(), index, topic_id: TopicId([id; 16]) }
    }

    fn open(topic: &str, index: i32, id: u8) -> Action {
        Action::Open { topic: topic.into(), index, topic_id: TopicId([id; 16]) }
    }

    fn sync(topic: &str, index: i32) -> Action {
        Action::Sync { topic: topic.into(), index }
    }

    #[test]
    fn the_first_image_opens_every_partition_placed_here_and_then_deletes_strays() {
        let image = image_of(&[create("a", 1, &[&[1], &[2], &[2, 1]]), create("b", 2, &[&[3]])]);
        let actions = plan(&image, &MetadataDelta::whole(), true, ME, &[]);
        assert_eq!(
            actions,
            [open("a", 0, 1), sync("a", 0), open("a", 2, 1), sync("a", 2), Action::DeleteStrays]
        );
    }

    #[test]
    fn an_open_log_is_synced_not_reopened() {
        let image = image_of(&[create("a", 1, &[&[1], &[1]])]);
        let actions = plan(&image, &changed(&["a"]), false, ME, &[log("a", 0, 1)]);
        assert_eq!(actions, [sync("a", 0), open("a", 1, 1), sync("a", 1)]);
    }

    #[test]
    fn a_commit_looks_only_at_the_topics_it_changed() {
        let image = image_of(&[create("a", 1, &[&[1]]), create("b", 2, &[&[1]])]);
        // "a" is open but gone from nowhere; "b" is not open: only "b" changed.
        let actions = plan(&image, &changed(&["b"]), false, ME, &[log("a", 0, 1)]);
        assert_eq!(actions, [open("b", 0, 2), sync("b", 0)]);
        // A snapshot looks at everything, but deletes no strays: those are the first image's.
        let whole = plan(&image, &MetadataDelta::whole(), false, ME, &[log("a", 0, 1)]);
        assert_eq!(whole, [sync("a", 0), open("b", 0, 2), sync("b", 0)]);
    }

    #[test]
    fn a_deleted_topics_logs_are_deleted() {
        let image = image_of(&[create("a", 1, &[&[1], &[1]]), remove(1)]);
        let local = [log("a", 0, 1), log("a", 1, 1)];
        let actions = plan(&image, &changed(&["a"]), false, ME, &local);
        assert_eq!(actions, [Action::Delete(local[0].clone()), Action::Delete(local[1].clone())]);
    }

    #[test]
    fn a_recreated_topic_deletes_the_old_log_before_opening_the_new_one() {
        let image = image_of(&[create("a", 1, &[&[1]]), remove(1), create("a", 2, &[&[1]])]);
        let actions = plan(&image, &changed(&["a"]), false, ME, &[log("a", 0, 1)]);
        assert_eq!(actions, [Action::Delete(log("a", 0, 1)), open("a", 0, 2), sync("a", 0)]);
    }

    #[test]
    fn a_partition_moved_away_is_deleted_and_others_are_left_alone() {
        let image = image_of(&[create("a", 1, &[&[2], &[1]])]);
        let local = [log("a", 0, 1), log("a", 1, 1)];
        let actions = plan(&image, &changed(&["a"]), false, ME, &local);
        assert_eq!(actions, [Action::Delete(log("a", 0, 1)), sync("a", 1)]);
        // A partition not placed here and not open: nothing to do.
        assert_eq!(plan(&image, &changed(&["a"]), false, NodeId(3), &[]), []);
    }

    /// A first image (or a snapshot) judges every open log: one the image no longer places
    /// here, or does not know at all, is deleted; one it places here is kept and synced. No
    /// open log can come from an image newer than the one planned (only the reconcile opens
    /// logs), so even a topic the image has never heard of is stray.
    #[test]
    fn a_whole_image_deletes_every_open_log_it_does_not_place_here() {
        let image = image_of(&[create("a", 1, &[&[2], &[1]]), create("b", 2, &[&[1]]), remove(2)]);
        let local = [log("a", 0, 1), log("a", 1, 1), log("b", 0, 2), log("c", 0, 3)];
        let first = plan(&image, &MetadataDelta::whole(), true, ME, &local);
        assert_eq!(
            first,
            [
                Action::Delete(log("a", 0, 1)),
                Action::Delete(log("b", 0, 2)),
                Action::Delete(log("c", 0, 3)),
                sync("a", 1),
                Action::DeleteStrays,
            ]
        );
        let snapshot = plan(&image, &MetadataDelta::whole(), false, ME, &local);
        assert_eq!(snapshot, first[..4]);
    }
}
