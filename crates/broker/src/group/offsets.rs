//! The committed-offset rules of a shard, sans-IO: commit validation, OffsetFetch, OffsetDelete,
//! DeleteGroups and `offsets.retention.minutes`. Each rule reads or changes the shard's
//! [`GroupEntry`]s and returns what the shell must do: the [`OffsetWrite`] to append (its
//! records from [`OffsetWrite::records`]) and the reply, given once the write is replicated and
//! applied with [`written`].

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;

use super::consumer::ConsumerGroup;
use super::records::{self, OffsetValue};
use super::state::{Group, GroupConfig, GroupError, GroupState};
use super::{CommitRequest, FetchedOffsets, TopicPartition};

/// A group and its committed offsets.
pub(super) struct GroupEntry {
    pub group: Group,
    pub offsets: BTreeMap<TopicPartition, OffsetValue>,
    /// When the group last became Empty: offsets of an empty consumer group expire
    /// `offsets.retention.minutes` after this.
    pub empty_since_ms: i64,
    /// Whether anything about it is in the log (a group that was only asked about is not).
    pub persisted: bool,
    /// Offsets committed inside transactions that have not ended, by producer id: they count
    /// once their transaction's COMMIT marker is written, and never after an ABORT.
    pub pending_txn: HashMap<i64, BTreeMap<TopicPartition, OffsetValue>>,
    /// The group's KIP-848 side, once a ConsumerGroupHeartbeat has reached it. Members of
    /// both protocols never share a group: the other side must be empty.
    pub consumer: Option<ConsumerGroup>,
}

impl GroupEntry {
    /// Whether KIP-848 members consume in this group now.
    pub fn consumer_active(&self) -> bool {
        self.consumer.as_ref().is_some_and(|c| !c.is_empty())
    }

    pub fn new(
        group: Group,
        offsets: BTreeMap<TopicPartition, OffsetValue>,
        empty_since_ms: i64,
        persisted: bool,
    ) -> GroupEntry {
        GroupEntry {
            group,
            offsets,
            empty_since_ms,
            persisted,
            pending_txn: HashMap::new(),
            consumer: None,
        }
    }

    /// Whether a transaction that has not ended committed an offset for `partition`: a
    /// fetch that requires stable offsets is told UNSTABLE_OFFSET_COMMIT.
    pub fn unstable(&self, partition: &TopicPartition) -> bool {
        self.pending_txn.values().any(|p| p.contains_key(partition))
    }
}

/// A write of offset records that a rule asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OffsetWrite {
    Commit {
        group_id: String,
        offsets: Vec<(TopicPartition, OffsetValue)>,
    },
    Tombstones {
        group_id: String,
        offsets: Vec<TopicPartition>,
        /// The group's own record goes too.
        group: bool,
    },
    /// TxnOffsetCommit: offset records written as part of producer `producer_id`'s
    /// transaction.
    TxnCommit {
        group_id: String,
        producer_id: i64,
        producer_epoch: i16,
        offsets: Vec<(TopicPartition, OffsetValue)>,
    },
}

impl OffsetWrite {
    /// The `__consumer_offsets` keys and values (`None`: a tombstone) this write appends.
    pub fn records(&self) -> Vec<(Bytes, Option<Bytes>)> {
        match self {
            OffsetWrite::Commit { group_id, offsets }
            | OffsetWrite::TxnCommit { group_id, offsets, .. } => offsets
                .iter()
                .map(|((t, p), v)| {
                    (records::offset_key(group_id, t, *p), Some(records::offset_value(v)))
                })
                .collect(),
            OffsetWrite::Tombstones { group_id, offsets, group } => {
                let mut e: Vec<(Bytes, Option<Bytes>)> = offsets
                    .iter()
                    .map(|(t, p)| (records::offset_key(group_id, t, *p), None))
                    .collect();
                if *group {
                    e.push((records::group_key(group_id), None));
                }
                e
            }
        }
    }
}

/// OffsetCommit: the group's refusal, or the write to make (`None`: nothing to commit, answer
/// at once).
pub(super) fn commit(
    group_id: String,
    entry: &mut GroupEntry,
    req: CommitRequest,
    now_ms: i64,
) -> Result<Option<OffsetWrite>, GroupError> {
    match &entry.consumer {
        // KIP-848: the generation field carries the member's epoch.
        Some(c) if !c.is_empty() || c.members.contains_key(&req.member_id) => {
            c.validate_offset_commit(&req.member_id, req.generation_id)?
        }
        _ => entry.group.validate_offset_commit(
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
            now_ms,
        )?,
    }
    if req.offsets.is_empty() {
        return Ok(None);
    }
    Ok(Some(OffsetWrite::Commit { group_id, offsets: req.offsets }))
}

/// TxnOffsetCommit: the group's refusal, or the transactional write to make (`None`: nothing
/// to commit).
pub(super) fn txn_commit(
    group_id: String,
    entry: &GroupEntry,
    (producer_id, producer_epoch): (i64, i16),
    req: CommitRequest,
) -> Result<Option<OffsetWrite>, GroupError> {
    entry.group.validate_txn_offset_commit(
        &req.member_id,
        req.group_instance_id.as_deref(),
        req.generation_id,
    )?;
    if req.offsets.is_empty() {
        return Ok(None);
    }
    Ok(Some(OffsetWrite::TxnCommit { group_id, producer_id, producer_epoch, offsets: req.offsets }))
}

/// A transaction marker of `producer_id` was written to the shard's partition: its pending
/// offsets become the groups' committed offsets (COMMIT) or are dropped (ABORT).
pub(super) fn txn_completed(
    groups: &mut HashMap<String, GroupEntry>,
    producer_id: i64,
    commit: bool,
) {
    for e in groups.values_mut() {
        if let Some(pending) = e.pending_txn.remove(&producer_id) {
            if commit {
                e.persisted = true;
                e.offsets.extend(pending);
            }
        }
    }
}

/// OffsetFetch: the wanted partitions with their committed offsets, or (`wanted` `None`) every
/// committed offset of the group.
pub(super) fn fetch(
    entry: Option<&GroupEntry>,
    wanted: Option<Vec<TopicPartition>>,
) -> FetchedOffsets {
    let offsets = entry.map(|e| &e.offsets);
    match wanted {
        None => offsets
            .map(|o| o.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect())
            .unwrap_or_default(),
        Some(wanted) => wanted
            .into_iter()
            .map(|k| {
                let v = offsets.and_then(|o| o.get(&k)).cloned();
                (k, v)
            })
            .collect(),
    }
}

/// Up to `limit` committed offsets of `groups` (groups in id order, so a capped answer is
/// the same from one scrape to the next), and how many there are in all.
pub(super) fn committed(
    groups: &HashMap<String, GroupEntry>,
    limit: usize,
) -> super::CommittedOffsets {
    let mut ids: Vec<&String> = groups.keys().collect();
    ids.sort();
    let total: usize = groups.values().map(|e| e.offsets.len()).sum();
    let mut out = Vec::with_capacity(total.min(limit));
    for id in ids {
        for ((topic, partition), value) in &groups[id].offsets {
            if out.len() == limit {
                return (out, total);
            }
            out.push((id.clone(), topic.clone(), *partition, value.offset));
        }
    }
    (out, total)
}

/// OffsetDelete's per-partition results, and the tombstones to write first (`None`: answer at
/// once). A partition of a topic the group's members subscribe to is refused.
pub(super) type OffsetDeletion = (Vec<(TopicPartition, Option<GroupError>)>, Option<OffsetWrite>);

/// OffsetDelete: what to delete, or the group's refusal.
pub(super) fn delete_offsets(
    group_id: String,
    entry: Option<&GroupEntry>,
    partitions: Vec<TopicPartition>,
) -> Result<OffsetDeletion, GroupError> {
    let Some(e) = entry.filter(|e| e.group.state() != GroupState::Dead) else {
        return Err(GroupError::GroupIdNotFound);
    };
    let mut subscribed = subscribed_topics(&e.group);
    if let Some(c) = &e.consumer {
        subscribed.extend(c.subscribed_topics());
    }
    let mut results = Vec::with_capacity(partitions.len());
    let mut delete = Vec::new();
    for (topic, p) in partitions {
        let error = if subscribed.contains(&topic) {
            Some(GroupError::GroupSubscribedToTopic)
        } else {
            if e.offsets.contains_key(&(topic.clone(), p)) {
                delete.push((topic.clone(), p));
            }
            None
        };
        results.push(((topic, p), error));
    }
    let write = (!delete.is_empty()).then_some(OffsetWrite::Tombstones {
        group_id,
        offsets: delete,
        group: false,
    });
    Ok((results, write))
}

/// DeleteGroups: the group goes Dead and its record and offsets get tombstones, or it is
/// refused (only an empty group is deleted).
pub(super) fn delete_group(
    group_id: String,
    entry: Option<&mut GroupEntry>,
) -> Result<OffsetWrite, GroupError> {
    let e = entry.ok_or(GroupError::GroupIdNotFound)?;
    if e.consumer_active() {
        return Err(GroupError::NonEmptyGroup);
    }
    e.group.delete()?;
    e.consumer = None;
    let offsets = e.offsets.keys().cloned().collect();
    Ok(OffsetWrite::Tombstones { group_id, offsets, group: true })
}

/// Applies the outcome of a replicated (or failed) write to the shard's groups.
pub(super) fn written(
    groups: &mut HashMap<String, GroupEntry>,
    write: OffsetWrite,
    result: &Result<(), GroupError>,
    config: GroupConfig,
) {
    match write {
        OffsetWrite::Commit { group_id, offsets } => {
            if result.is_ok() {
                // The commit created its group, which the shard's bound counted then.
                if let Some(e) = groups.get_mut(&group_id) {
                    e.persisted = true;
                    e.offsets.extend(offsets);
                }
            }
        }
        OffsetWrite::TxnCommit { group_id, producer_id, offsets, .. } => {
            if result.is_ok() {
                if let Some(e) = groups.get_mut(&group_id) {
                    e.pending_txn.entry(producer_id).or_default().extend(offsets);
                }
            }
        }
        OffsetWrite::Tombstones { group_id, offsets, group } => match (result, group) {
            (Ok(()), true) => {
                groups.remove(&group_id);
            }
            (Ok(()), false) => {
                if let Some(e) = groups.get_mut(&group_id) {
                    for k in &offsets {
                        e.offsets.remove(k);
                    }
                }
            }
            (Err(_), true) => {
                // The group went Dead for a deletion that did not happen: it is Empty again
                // (only an empty group is deleted), with its offsets.
                if let Some(e) = groups.get_mut(&group_id) {
                    e.group = Group::new(group_id.clone(), config);
                }
            }
            (Err(_), false) => {}
        },
    }
}

/// One pass of `offsets.retention.minutes` over the shard's groups, in group id order from after
/// `after`: an empty consumer group's offsets go once it has been empty that long; offsets
/// committed outside any group membership (no protocol type) go that long after their commit.
/// A group left with nothing is deleted (forgotten at once if it was never written). Returns at
/// most `writes_max` tombstone writes and, if groups were left for another pass, the last group
/// id it went through.
pub(super) fn expire(
    groups: &mut HashMap<String, GroupEntry>,
    retention_ms: i64,
    now_ms: i64,
    after: Option<&str>,
    writes_max: usize,
) -> (Vec<OffsetWrite>, Option<String>) {
    let mut work = Vec::new();
    for (group_id, e) in groups.iter() {
        if e.group.state() != GroupState::Empty
            || e.consumer_active()
            || after.is_some_and(|a| group_id.as_str() <= a)
        {
            continue;
        }
        let expired = expired_offsets(
            e.group.protocol_type().is_some() || e.consumer.is_some(),
            e.empty_since_ms,
            &e.offsets,
            retention_ms,
            now_ms,
        );
        let all_gone = expired.len() == e.offsets.len();
        if !expired.is_empty() || (all_gone && e.persisted) {
            work.push((group_id.clone(), expired, all_gone));
        } else if all_gone && !e.persisted {
            work.push((group_id.clone(), Vec::new(), false));
        }
    }
    work.sort_by(|a, b| a.0.cmp(&b.0));
    let mut writes = Vec::new();
    let mut last: Option<String> = after.map(str::to_owned);
    for (group_id, offsets, delete_group) in work {
        if offsets.is_empty() && !delete_group {
            // Never written anywhere: forget it.
            groups.remove(&group_id);
            continue;
        }
        if writes.len() >= writes_max.max(1) {
            return (writes, last);
        }
        last = Some(group_id.clone());
        if delete_group {
            if let Some(e) = groups.get_mut(&group_id) {
                let _ = e.group.delete();
            }
        }
        writes.push(OffsetWrite::Tombstones { group_id, offsets, group: delete_group });
    }
    (writes, None)
}

/// The offsets of an Empty group that `offsets.retention.minutes` (`retention_ms`) has run out
/// for at `now_ms`. A group with members keeps its offsets. Offsets of a group that ran the
/// protocol (`ran_protocol`) are kept for the retention period after the group became empty
/// (`empty_since_ms`, or after the commit if that is later); offsets committed without a
/// membership (an assign()-only consumer) for the retention period after their commit.
pub(crate) fn expired_offsets(
    ran_protocol: bool,
    empty_since_ms: i64,
    offsets: &BTreeMap<TopicPartition, OffsetValue>,
    retention_ms: i64,
    now_ms: i64,
) -> Vec<TopicPartition> {
    offsets
        .iter()
        .filter(|(_, v)| {
            let base = if ran_protocol {
                empty_since_ms.max(v.commit_timestamp_ms)
            } else {
                v.commit_timestamp_ms
            };
            base.saturating_add(retention_ms) <= now_ms
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// Topics the members of a consumer group subscribe to (from their ConsumerProtocol
/// subscriptions), for OffsetDelete's GROUP_SUBSCRIBED_TO_TOPIC.
fn subscribed_topics(group: &Group) -> HashSet<String> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    let mut topics = HashSet::new();
    if group.protocol_type() != Some("consumer") {
        return topics;
    }
    for m in group.describe_members() {
        let mut buf = m.subscription.clone();
        if buf.len() < 2 {
            continue;
        }
        let version = i16::from_be_bytes([buf[0], buf[1]]);
        let _ = bytes::Buf::get_i16(&mut buf);
        let version = version.clamp(0, 3);
        if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut buf, version) {
            topics.extend(sub.topics.into_iter().map(|t| t.to_string()));
        }
    }
    topics
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::super::state::{GroupRecord, MemberRecord};
    use super::*;

    fn at(offset: i64, commit_timestamp_ms: i64) -> OffsetValue {
        OffsetValue { offset, leader_epoch: -1, metadata: String::new(), commit_timestamp_ms }
    }

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        (topic.to_owned(), partition)
    }

    /// An Empty group that never ran the protocol, with these committed offsets.
    fn empty(group_id: &str, offsets: &[(TopicPartition, OffsetValue)]) -> GroupEntry {
        GroupEntry::new(
            Group::new(group_id.to_owned(), GroupConfig::default()),
            offsets.iter().cloned().collect(),
            0,
            true,
        )
    }

    /// A Stable consumer group whose one member subscribes to `topics`.
    fn stable(group_id: &str, topics: &[&str]) -> GroupEntry {
        let mut sub = ConsumerProtocolSubscription::default();
        sub.topics = topics.iter().map(|t| StrBytes::from_string((*t).to_owned())).collect();
        let mut subscription = bytes::BytesMut::new();
        subscription.extend_from_slice(&1i16.to_be_bytes());
        sub.encode(&mut subscription, 1).expect("encodes");
        let member = MemberRecord {
            member_id: "m-1".to_owned(),
            group_instance_id: None,
            client_id: "c".to_owned(),
            client_host: "/127.0.0.1".to_owned(),
            rebalance_timeout_ms: 30_000,
            session_timeout_ms: 10_000,
            subscription: subscription.freeze(),
            assignment: Bytes::new(),
        };
        let record = GroupRecord {
            group_id: group_id.to_owned(),
            generation_id: 1,
            protocol_type: Some("consumer".to_owned()),
            protocol_name: Some("range".to_owned()),
            leader: Some("m-1".to_owned()),
            current_state_timestamp_ms: 0,
            members: vec![member],
        };
        let group = Group::load(record, GroupConfig::default(), 0);
        GroupEntry::new(group, BTreeMap::new(), 0, true)
    }

    fn standalone(offsets: Vec<(TopicPartition, OffsetValue)>) -> CommitRequest {
        CommitRequest {
            member_id: String::new(),
            group_instance_id: None,
            generation_id: -1,
            offsets,
        }
    }

    #[test]
    fn a_commit_is_written_first_and_applied_only_once_replicated() {
        let mut groups: HashMap<String, GroupEntry> = [("g".to_owned(), empty("g", &[]))].into();
        groups.get_mut("g").expect("g").persisted = false;
        let req = standalone(vec![(tp("t", 0), at(5, 1))]);
        let write = commit("g".to_owned(), groups.get_mut("g").expect("g"), req, 1)
            .expect("an empty group takes a standalone commit")
            .expect("a write");
        assert_eq!(write.records().len(), 1);
        assert!(groups["g"].offsets.is_empty(), "applied before replication");

        let failed =
            OffsetWrite::Commit { group_id: "g".to_owned(), offsets: vec![(tp("t", 1), at(6, 1))] };
        written(&mut groups, failed, &Err(GroupError::NotCoordinator), GroupConfig::default());
        assert!(groups["g"].offsets.is_empty() && !groups["g"].persisted);

        written(&mut groups, write, &Ok(()), GroupConfig::default());
        assert_eq!(groups["g"].offsets.get(&tp("t", 0)), Some(&at(5, 1)));
        assert!(groups["g"].persisted);
    }

    #[test]
    fn an_empty_commit_is_answered_without_a_write_and_a_refused_one_with_the_error() {
        let mut entry = empty("g", &[]);
        assert_eq!(commit("g".to_owned(), &mut entry, standalone(Vec::new()), 1), Ok(None));
        let mut entry = stable("g", &["t"]);
        let refused =
            commit("g".to_owned(), &mut entry, standalone(vec![(tp("t", 0), at(1, 1))]), 1);
        assert_eq!(refused, Err(GroupError::UnknownMemberId), "members own the partitions");
    }

    #[test]
    fn offset_fetch_answers_the_wanted_partitions_or_every_committed_one() {
        let entry = empty("g", &[(tp("t", 0), at(5, 1)), (tp("u", 1), at(7, 1))]);
        assert_eq!(fetch(Some(&entry), None).len(), 2);
        assert_eq!(
            fetch(Some(&entry), Some(vec![tp("t", 0), tp("t", 9)])),
            vec![(tp("t", 0), Some(at(5, 1))), (tp("t", 9), None)]
        );
        assert_eq!(fetch(None, Some(vec![tp("t", 0)])), vec![(tp("t", 0), None)]);
        assert!(fetch(None, None).is_empty());
    }

    #[test]
    fn offset_delete_refuses_subscribed_topics_and_tombstones_only_committed_offsets() {
        let mut entry = stable("g", &["t"]);
        entry.offsets = [(tp("t", 0), at(1, 1)), (tp("u", 0), at(1, 1))].into();
        let (results, write) =
            delete_offsets("g".to_owned(), Some(&entry), vec![tp("t", 0), tp("u", 0), tp("u", 1)])
                .expect("the group exists");
        assert_eq!(
            results,
            vec![
                (tp("t", 0), Some(GroupError::GroupSubscribedToTopic)),
                (tp("u", 0), None),
                (tp("u", 1), None)
            ]
        );
        assert_eq!(
            write,
            Some(OffsetWrite::Tombstones {
                group_id: "g".to_owned(),
                offsets: vec![tp("u", 0)],
                group: false
            })
        );
        let nothing =
            delete_offsets("g".to_owned(), Some(&entry), vec![tp("u", 1)]).expect("exists");
        assert_eq!(nothing.1, None, "nothing committed: answered at once");
        assert_eq!(
            delete_offsets("g".to_owned(), None, vec![tp("u", 0)]),
            Err(GroupError::GroupIdNotFound)
        );
    }

    #[test]
    fn a_group_deletion_that_is_not_written_leaves_the_group_empty_with_its_offsets() {
        let mut groups: HashMap<String, GroupEntry> =
            [("g".to_owned(), empty("g", &[(tp("t", 0), at(1, 1))]))].into();
        let write = delete_group("g".to_owned(), groups.get_mut("g")).expect("an empty group goes");
        assert_eq!(groups["g"].group.state(), GroupState::Dead);
        assert_eq!(write.records().len(), 2, "the offset's tombstone and the group's");
        written(
            &mut groups,
            write,
            &Err(GroupError::CoordinatorNotAvailable),
            GroupConfig::default(),
        );
        assert_eq!(groups["g"].group.state(), GroupState::Empty);
        assert_eq!(groups["g"].offsets.len(), 1);

        let write = delete_group("g".to_owned(), groups.get_mut("g")).expect("still empty");
        written(&mut groups, write, &Ok(()), GroupConfig::default());
        assert!(groups.is_empty());
        assert_eq!(delete_group("g".to_owned(), None), Err(GroupError::GroupIdNotFound));
        let mut busy = stable("h", &["t"]);
        assert_eq!(delete_group("h".to_owned(), Some(&mut busy)), Err(GroupError::NonEmptyGroup));
    }

    #[test]
    fn offsets_expire_after_the_retention_counted_from_emptiness_or_commit() {
        let offsets: BTreeMap<TopicPartition, OffsetValue> =
            [(tp("t", 0), at(1, 100)), (tp("t", 1), at(1, 500))].into();
        // A consumer group empty since 1000: nothing goes before 1000 + retention.
        assert!(expired_offsets(true, 1_000, &offsets, 1_000, 1_999).is_empty());
        assert_eq!(expired_offsets(true, 1_000, &offsets, 1_000, 2_000).len(), 2);
        // Offsets without a membership count from their own commit.
        assert_eq!(expired_offsets(false, 0, &offsets, 1_000, 1_100), vec![tp("t", 0)]);
        assert_eq!(expired_offsets(false, 0, &offsets, 1_000, 1_500).len(), 2);
        // A commit after the group emptied counts from the commit.
        assert!(expired_offsets(true, 0, &offsets, 1_000, 1_499).len() == 1);
    }

    #[test]
    fn an_expiry_pass_writes_at_most_its_bound_and_the_next_goes_on_where_it_stopped() {
        let mut groups: HashMap<String, GroupEntry> = (0..5)
            .map(|i| {
                let id = format!("g{i}");
                let entry = empty(&id, &[(tp("t", 0), at(1, 0))]);
                (id, entry)
            })
            .collect();
        let mut asked = empty("asked-only", &[]);
        asked.persisted = false;
        groups.insert("asked-only".to_owned(), asked);
        groups.insert("fresh".to_owned(), empty("fresh", &[(tp("t", 0), at(1, 10_000))]));

        let deleted = |writes: &[OffsetWrite]| -> Vec<String> {
            writes
                .iter()
                .map(|w| match w {
                    OffsetWrite::Tombstones { group_id, group: true, .. } => group_id.clone(),
                    other => panic!("not a group's tombstones: {other:?}"),
                })
                .collect()
        };
        let (writes, after) = expire(&mut groups, 1_000, 1_000, None, 2);
        assert_eq!(deleted(&writes), ["g0", "g1"]);
        assert_eq!(after.as_deref(), Some("g1"));
        assert!(!groups.contains_key("asked-only"), "never written: forgotten");
        let (writes, after) = expire(&mut groups, 1_000, 1_000, after.as_deref(), 2);
        assert_eq!(deleted(&writes), ["g2", "g3"]);
        let (writes, after) = expire(&mut groups, 1_000, 1_000, after.as_deref(), 2);
        assert_eq!(deleted(&writes), ["g4"]);
        assert_eq!(after, None, "the pass is over");
        assert_eq!(groups["fresh"].group.state(), GroupState::Empty, "inside its retention");
        // The deleted groups are Dead until their tombstones are written: not expired twice.
        let (writes, _) = expire(&mut groups, 1_000, 1_000, None, 10);
        assert!(writes.is_empty());
    }
}
