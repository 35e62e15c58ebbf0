//! One coordinator shard: the task that owns the groups of one `__consumer_offsets` partition
//! this broker leads. It loads the partition's log into memory, then takes requests from its
//! queue one at a time, runs them through the group state machines ([`Group`]) and the offset
//! rules ([`offsets`]), appends the records they ask for and answers once those are replicated
//! (acks=all). At most [`WRITES_IN_FLIGHT_MAX`] writes wait for replication at once; when that
//! many do, the shard takes no request and fires no timer until one finishes.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::consumer::{
    ConsumerGroup, ConsumerGroupConfig, Heartbeat, HeartbeatAnswer, ImageTopics,
};
use super::offsets::{self, GroupEntry, OffsetWrite};
use super::records::{self, Entry, OffsetValue};
use super::state::*;
use super::{Cmd, CommitRequest, DeletedOffsets, GroupSummary, TopicPartition};
use crate::clock::Clock;
use crate::config::GroupSettings;
use crate::partition::{AckError, Partition};

/// Requests queued for one shard before senders wait.
pub(super) const SHARD_QUEUE_MAX: usize = 1_024;
/// Writes of one shard waiting for replication at once. Each holds at most one request's reply,
/// so a shard never holds more waiting writes than requests it queues.
const WRITES_IN_FLIGHT_MAX: usize = 256;
const _: () = assert!(WRITES_IN_FLIGHT_MAX > 0 && WRITES_IN_FLIGHT_MAX <= SHARD_QUEUE_MAX);
/// Groups one shard (offsets partition) holds; a new group beyond it is refused with
/// COORDINATOR_NOT_AVAILABLE. Kafka has no such bound; a broker must.
const GROUPS_PER_SHARD_MAX: usize = 1_000_000;
/// Longest sleep of a shard between timer checks.
const SHARD_TICK_MAX_MS: i64 = 1_000;

/// What a partition's log says, latest record per key.
#[derive(Default)]
pub(super) struct Loaded {
    groups: HashMap<String, Option<GroupRecord>>,
    offsets_by_group: HashMap<String, BTreeMap<TopicPartition, OffsetValue>>,
    /// Offsets written by transactions whose marker has not been read yet, by producer id
    /// and group.
    pending_txn: HashMap<i64, HashMap<String, BTreeMap<TopicPartition, OffsetValue>>>,
    pub offsets: usize,
}

impl Loaded {
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// An offset record of producer `producer_id`'s transaction: it counts from its marker.
    fn apply_txn(&mut self, producer_id: i64, entry: Entry) {
        if let Entry::Offset { group, topic, partition, value: Some(v) } = entry {
            let by_group = self.pending_txn.entry(producer_id).or_default();
            by_group.entry(group).or_default().insert((topic, partition), v);
        }
    }

    /// A transaction marker of `producer_id`.
    fn complete_txn(&mut self, producer_id: i64, commit: bool) {
        let Some(by_group) = self.pending_txn.remove(&producer_id) else { return };
        if commit {
            for (group, offsets) in by_group {
                self.offsets_by_group.entry(group).or_default().extend(offsets);
            }
        }
    }

    fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Offset { group, topic, partition, value: Some(v) } => {
                self.offsets_by_group.entry(group).or_default().insert((topic, partition), v);
            }
            Entry::Offset { group, topic, partition, value: None } => {
                if let Some(o) = self.offsets_by_group.get_mut(&group) {
                    o.remove(&(topic, partition));
                }
            }
            Entry::Group { group, value } => {
                self.groups.insert(group, value);
            }
        }
    }
}

/// Reads the whole local log of an offsets partition (the leader's copy is authoritative).
pub(super) fn load(partition: &Partition) -> Result<Loaded, strom_log::LogError> {
    let mut loaded = Loaded::default();
    crate::shards::read_log(partition, |r| {
        let Some(key) = r.key else { return };
        if r.control {
            // A transaction marker: key (version, type 0 ABORT / 1 COMMIT).
            if let Some(kind) = key.get(2..4) {
                loaded.complete_txn(r.producer_id, kind == [0, 1]);
            }
            return;
        }
        match records::decode(key, r.value) {
            Ok(entry) if r.transactional => loaded.apply_txn(r.producer_id, entry),
            Ok(entry) => loaded.apply(entry),
            Err(e) => tracing::warn!(partition = partition.index, offset = r.offset,
                error = %e, "skipping unreadable offsets record"),
        }
    })?;
    loaded.offsets = loaded.offsets_by_group.values().map(BTreeMap::len).sum();
    Ok(loaded)
}

/// What a replicated write was for.
enum Pending {
    Group { group_id: String, generation_id: i32 },
    Offsets { write: OffsetWrite, reply: WriteReply },
}

/// Who hears about an offsets write once it is replicated.
enum WriteReply {
    /// Nobody (offsets expiry).
    None,
    Done(oneshot::Sender<Result<(), GroupError>>),
    /// OffsetDelete: the per-partition results ride along.
    Deleted(oneshot::Sender<DeletedOffsets>, Vec<(TopicPartition, Option<GroupError>)>),
}

enum Waiter {
    Join(oneshot::Sender<JoinResponse>),
    Sync(oneshot::Sender<SyncResponse>),
    Heartbeat(oneshot::Sender<Option<GroupError>>),
    Leave(oneshot::Sender<(Option<GroupError>, Vec<LeftMember>)>),
}

/// A write waiting for replication, with what it was for.
type InFlight =
    Pin<Box<dyn std::future::Future<Output = (Pending, Result<(), GroupError>)> + Send>>;

pub(super) struct Shard {
    partition: Arc<Partition>,
    index: i32,
    leader_epoch: i32,
    settings: GroupSettings,
    /// Member sessions, rebalance timeouts and offset retention are measured on this clock.
    clock: Arc<dyn Clock>,
    groups: HashMap<String, GroupEntry>,
    waiters: HashMap<u64, Waiter>,
    next_reply: u64,
    /// At most [`WRITES_IN_FLIGHT_MAX`], but for the few writes of the step that filled it.
    in_flight: FuturesUnordered<InFlight>,
    next_retention_ms: i64,
    /// Where an offsets expiry pass cut short by the write bound goes on.
    retention_after: Option<String>,
}

impl Shard {
    pub fn new(
        partition: Arc<Partition>,
        index: i32,
        leader_epoch: i32,
        settings: GroupSettings,
        clock: Arc<dyn Clock>,
    ) -> Shard {
        Shard {
            partition,
            index,
            leader_epoch,
            settings,
            clock,
            groups: HashMap::new(),
            waiters: HashMap::new(),
            next_reply: 0,
            in_flight: FuturesUnordered::new(),
            next_retention_ms: 0,
            retention_after: None,
        }
    }

    fn group_config(&self) -> GroupConfig {
        GroupConfig {
            initial_rebalance_delay_ms: self.settings.initial_rebalance_delay_ms,
            session_timeout_min_ms: self.settings.min_session_timeout_ms,
            session_timeout_max_ms: self.settings.max_session_timeout_ms,
        }
    }

    fn retention_check_interval_ms(&self) -> i64 {
        self.settings.offsets_retention_check_interval_ms.min(i64::MAX as u64) as i64
    }

    pub fn install(&mut self, loaded: Loaded, now_ms: i64) {
        let config = self.group_config();
        let Loaded { groups, mut offsets_by_group, pending_txn, .. } = loaded;
        for (group_id, record) in groups {
            let Some(record) = record else { continue };
            let empty_since_ms = if record.members.is_empty() {
                record.current_state_timestamp_ms.max(0)
            } else {
                now_ms
            };
            let offsets = offsets_by_group.remove(&group_id).unwrap_or_default();
            let group = Group::load(record, config, now_ms);
            self.groups.insert(group_id, GroupEntry::new(group, offsets, empty_since_ms, true));
        }
        for (group_id, offsets) in offsets_by_group {
            if offsets.is_empty() {
                continue;
            }
            let group = Group::new(group_id.clone(), config);
            let empty_since_ms = offsets.values().map(|o| o.commit_timestamp_ms).max().unwrap_or(0);
            self.groups.insert(group_id, GroupEntry::new(group, offsets, empty_since_ms, true));
        }
        // Transactions still open at the end of the log: their offsets wait for a marker.
        for (producer_id, by_group) in pending_txn {
            for (group_id, offsets) in by_group {
                let group = Group::new(group_id.clone(), config);
                let e = self
                    .groups
                    .entry(group_id)
                    .or_insert_with(|| GroupEntry::new(group, BTreeMap::new(), now_ms, true));
                e.pending_txn.insert(producer_id, offsets);
            }
        }
        self.next_retention_ms = now_ms + self.retention_check_interval_ms();
    }

    /// Whether [`WRITES_IN_FLIGHT_MAX`] writes wait for replication: the shard then waits for
    /// one to finish before it takes a request or fires a timer.
    fn writes_full(&self) -> bool {
        self.in_flight.len() >= WRITES_IN_FLIGHT_MAX
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut progress = self.partition.progress_watch();
        loop {
            if progress.borrow().leader_epoch != Some(self.leader_epoch)
                || progress.borrow().offline
            {
                return;
            }
            let now = self.clock.now_ms();
            let next = self
                .groups
                .values()
                .filter_map(|e| {
                    let consumer = e.consumer.as_ref().and_then(ConsumerGroup::next_deadline);
                    e.group.next_deadline_ms().into_iter().chain(consumer).min()
                })
                .min()
                .unwrap_or(i64::MAX)
                .min(self.next_retention_ms)
                .min(now + SHARD_TICK_MAX_MS);
            let sleep = Duration::from_millis((next - now).clamp(0, SHARD_TICK_MAX_MS) as u64);
            let full = self.writes_full();
            tokio::select! {
                cmd = rx.recv(), if !full => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => return,
                },
                Some((pending, result)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.on_done(pending, result)
                }
                changed = progress.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(sleep), if !full => self.on_tick(),
            }
        }
    }

    /// The group, created (Empty) on first use, unless the shard already holds
    /// [`GROUPS_PER_SHARD_MAX`] groups.
    fn entry(&mut self, group_id: &str) -> Result<&mut GroupEntry, GroupError> {
        let config = self.group_config();
        let now = self.clock.now_ms();
        if !self.groups.contains_key(group_id) && self.groups.len() >= GROUPS_PER_SHARD_MAX {
            tracing::warn!(partition = self.index, group = %group_id,
                "{GROUPS_PER_SHARD_MAX} groups on this offsets partition; refusing a new one");
            return Err(GroupError::CoordinatorNotAvailable);
        }
        Ok(self.groups.entry(group_id.to_owned()).or_insert_with(|| {
            GroupEntry::new(Group::new(group_id.to_owned(), config), BTreeMap::new(), now, false)
        }))
    }

    fn reply_to(&mut self, waiter: Waiter) -> ReplyTo {
        self.next_reply += 1;
        self.waiters.insert(self.next_reply, waiter);
        ReplyTo(self.next_reply)
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        let now = self.clock.now_ms();
        match cmd {
            Cmd::Join(group_id, req, reply) => {
                let to = self.reply_to(Waiter::Join(reply));
                let mut ids =
                    |prefix: &str| format!("{prefix}-{}", uuid::Uuid::new_v4().as_hyphenated());
                let effects = match self.entry(&group_id) {
                    Ok(e) if e.consumer_active() => {
                        // KIP-848 members consume in it: a classic member cannot join.
                        if let Some(Waiter::Join(tx)) = self.waiters.remove(&to.0) {
                            let error = GroupError::InconsistentGroupProtocol;
                            let _ = tx.send(JoinResponse::refused(req.member_id, error));
                        }
                        return;
                    }
                    Ok(e) => e.group.join(to, req, now, &mut ids),
                    Err(error) => {
                        if let Some(Waiter::Join(tx)) = self.waiters.remove(&to.0) {
                            let _ = tx.send(JoinResponse::refused(req.member_id, error));
                        }
                        return;
                    }
                };
                self.apply(&group_id, effects, now);
            }
            Cmd::Sync(group_id, req, reply) => {
                let to = self.reply_to(Waiter::Sync(reply));
                let effects = match self.groups.get_mut(&group_id) {
                    Some(e) => e.group.sync(to, req, now),
                    None => {
                        self.reply_sync(to, unknown_sync());
                        return;
                    }
                };
                self.apply(&group_id, effects, now);
            }
            Cmd::Heartbeat { group_id, member_id, group_instance_id, generation_id, reply } => {
                let Some(e) = self.groups.get_mut(&group_id) else {
                    let _ = reply.send(Some(GroupError::UnknownMemberId));
                    return;
                };
                self.next_reply += 1;
                let to = ReplyTo(self.next_reply);
                let effects = e.group.heartbeat(
                    to,
                    &member_id,
                    group_instance_id.as_deref(),
                    generation_id,
                    now,
                );
                self.waiters.insert(to.0, Waiter::Heartbeat(reply));
                self.apply(&group_id, effects, now);
            }
            Cmd::Leave(group_id, members, reply) => {
                let Some(e) = self.groups.get_mut(&group_id) else {
                    let results = members
                        .into_iter()
                        .map(|(member_id, group_instance_id)| LeftMember {
                            member_id,
                            group_instance_id,
                            error: Some(GroupError::UnknownMemberId),
                        })
                        .collect();
                    let _ = reply.send((None, results));
                    return;
                };
                self.next_reply += 1;
                let to = ReplyTo(self.next_reply);
                let effects = e.group.leave(to, members, now);
                self.waiters.insert(to.0, Waiter::Leave(reply));
                self.apply(&group_id, effects, now);
            }
            Cmd::ConsumerHeartbeat { group_id, heartbeat, topics, reply } => {
                let _ = reply.send(self.consumer_heartbeat(&group_id, heartbeat, &topics, now));
            }
            Cmd::ConsumerDescribe(group_id, reply) => {
                let group = self.groups.get(&group_id).and_then(|e| e.consumer.clone());
                let _ = reply.send(group);
            }
            Cmd::Commit(group_id, req, reply) => self.commit(group_id, req, reply, now),
            Cmd::FetchOffsets { group_id, wanted, require_stable, member, reply } => {
                let entry = self.groups.get(&group_id);
                let consumer = entry.and_then(|e| e.consumer.as_ref());
                if let (Some(c), Some((member_id, epoch))) = (consumer, member) {
                    if let Err(e) = c.validate_offset_fetch(&member_id, epoch) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
                let fetched = offsets::fetch(entry, wanted);
                let unstable = match entry {
                    Some(e) if require_stable => {
                        fetched.iter().map(|(k, _)| k).filter(|k| e.unstable(k)).cloned().collect()
                    }
                    _ => Vec::new(),
                };
                let _ = reply.send(Ok((fetched, unstable)));
            }
            Cmd::TxnCommit(group_id, producer, req, reply) => {
                let decided = self
                    .entry(&group_id)
                    .and_then(|e| offsets::txn_commit(group_id, e, producer, req));
                self.answer_commit(decided, reply, now);
            }
            Cmd::TxnCompleted { producer_id, commit } => {
                offsets::txn_completed(&mut self.groups, producer_id, commit);
            }
            Cmd::Describe(group_id, reply) => {
                let _ = reply.send(self.summary(&group_id));
            }
            Cmd::List(reply) => {
                let mut out: Vec<GroupSummary> = self
                    .groups
                    .values()
                    .filter(|e| e.group.state() != GroupState::Dead)
                    .map(|e| {
                        let consumer = e.consumer.as_ref().filter(|_| e.consumer_active());
                        GroupSummary {
                            group_id: e.group.group_id().to_owned(),
                            state: Some(e.group.state()),
                            protocol_type: match consumer {
                                Some(_) => Some("consumer".to_owned()),
                                None => e.group.protocol_type().map(str::to_owned),
                            },
                            protocol_name: e.group.protocol_name().map(str::to_owned),
                            members: Vec::new(),
                            consumer_state: consumer.map(|c| c.state().name()),
                        }
                    })
                    .collect();
                out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
                let _ = reply.send(out);
            }
            Cmd::CommittedOffsets { limit, reply } => {
                let _ = reply.send(offsets::committed(&self.groups, limit));
            }
            Cmd::Delete(group_id, reply) => {
                let entry = self.groups.get_mut(&group_id);
                match offsets::delete_group(group_id.clone(), entry) {
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                    Ok(write) => self.write_offsets(write, WriteReply::Done(reply), now),
                }
            }
            Cmd::DeleteOffsets(group_id, partitions, reply) => {
                let entry = self.groups.get(&group_id);
                match offsets::delete_offsets(group_id.clone(), entry, partitions) {
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                    Ok((results, None)) => {
                        let _ = reply.send(Ok(results));
                    }
                    // The answer waits for the tombstones.
                    Ok((results, Some(write))) => {
                        self.write_offsets(write, WriteReply::Deleted(reply, results), now)
                    }
                }
            }
        }
    }

    /// A KIP-848 heartbeat. A group with classic members is not a consumer group to it
    /// (GROUP_ID_NOT_FOUND, as Kafka answers), and the reverse holds for JoinGroup.
    fn consumer_heartbeat(
        &mut self,
        group_id: &str,
        heartbeat: Heartbeat,
        topics: &ImageTopics,
        now: i64,
    ) -> Result<HeartbeatAnswer, GroupError> {
        let config = self.consumer_config();
        let e = self.entry(group_id)?;
        if !matches!(e.group.state(), GroupState::Empty | GroupState::Dead) {
            return Err(GroupError::GroupIdNotFound);
        }
        let consumer = e.consumer.get_or_insert_with(ConsumerGroup::new);
        let mut ids = || uuid::Uuid::new_v4().as_hyphenated().to_string();
        let (epoch_before, members_before) = (consumer.group_epoch, consumer.members.len());
        let answer = consumer.heartbeat(heartbeat, now, topics, &config, &mut ids);
        if consumer.group_epoch != epoch_before || consumer.members.len() != members_before {
            tracing::debug!(group = %group_id, epoch = consumer.group_epoch,
                members = consumer.members.len(), "consumer group changed");
        }
        if consumer.is_empty() {
            e.empty_since_ms = now;
        }
        answer
    }

    fn consumer_config(&self) -> ConsumerGroupConfig {
        ConsumerGroupConfig {
            session_timeout_ms: self.settings.consumer_session_timeout_ms,
            heartbeat_interval_ms: self.settings.consumer_heartbeat_interval_ms,
            max_size: self.settings.consumer_max_size,
        }
    }

    fn commit(
        &mut self,
        group_id: String,
        req: CommitRequest,
        reply: oneshot::Sender<Result<(), GroupError>>,
        now: i64,
    ) {
        let decided = self.entry(&group_id).and_then(|e| offsets::commit(group_id, e, req, now));
        self.answer_commit(decided, reply, now);
    }

    /// An OffsetCommit's or TxnOffsetCommit's decision: the refusal or "nothing to write" at
    /// once, else the write, answered once it is replicated.
    fn answer_commit(
        &mut self,
        decided: Result<Option<OffsetWrite>, GroupError>,
        reply: oneshot::Sender<Result<(), GroupError>>,
        now: i64,
    ) {
        match decided {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(None) => {
                let _ = reply.send(Ok(()));
            }
            Ok(Some(write)) => self.write_offsets(write, WriteReply::Done(reply), now),
        }
    }

    pub fn summary(&self, group_id: &str) -> GroupSummary {
        match self.groups.get(group_id) {
            Some(e) if e.group.state() != GroupState::Dead => GroupSummary {
                group_id: group_id.to_owned(),
                state: Some(e.group.state()),
                protocol_type: e.group.protocol_type().map(str::to_owned),
                protocol_name: e.group.protocol_name().map(str::to_owned),
                members: e.group.describe_members(),
                consumer_state: e
                    .consumer
                    .as_ref()
                    .filter(|_| e.consumer_active())
                    .map(|c| c.state().name()),
            },
            _ => GroupSummary {
                group_id: group_id.to_owned(),
                state: None,
                protocol_type: None,
                protocol_name: None,
                members: Vec::new(),
                consumer_state: None,
            },
        }
    }

    /// Group timers, then (when due) a pass of offsets expiry, as far as the write bound lets
    /// them go; what is left is due again on the next turn of the loop.
    pub fn on_tick(&mut self) {
        let now = self.clock.now_ms();
        for (group_id, e) in self.groups.iter_mut() {
            let Some(consumer) = e.consumer.as_mut() else { continue };
            if consumer.next_deadline().is_some_and(|d| d <= now) {
                let expired = consumer.tick(now);
                tracing::info!(group = %group_id, members = ?expired, epoch = consumer.group_epoch,
                    "consumer group members removed: session or rebalance timeout");
                if consumer.is_empty() {
                    e.empty_since_ms = now;
                }
            }
        }
        let due: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, e)| e.group.next_deadline_ms().is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for group_id in due {
            if self.writes_full() {
                return;
            }
            let effects = match self.groups.get_mut(&group_id) {
                Some(e) => e.group.tick(now),
                None => continue,
            };
            self.apply(&group_id, effects, now);
        }
        if now >= self.next_retention_ms && !self.writes_full() {
            let room = WRITES_IN_FLIGHT_MAX - self.in_flight.len();
            let (writes, after) = offsets::expire(
                &mut self.groups,
                self.settings.offsets_retention_ms,
                now,
                self.retention_after.as_deref(),
                room,
            );
            for write in writes {
                if let OffsetWrite::Tombstones { group_id, offsets, group } = &write {
                    tracing::info!(group = %group_id, offsets = offsets.len(),
                        group_deleted = group, "expiring committed offsets (offsets.retention.minutes)");
                }
                self.write_offsets(write, WriteReply::None, now);
            }
            self.retention_after = after;
            if self.retention_after.is_none() {
                self.next_retention_ms = now + self.retention_check_interval_ms();
            }
        }
    }

    /// Carries out the core's effects: replies go to their waiters, writes to the log.
    fn apply(&mut self, group_id: &str, effects: Vec<Effect>, now: i64) {
        for effect in effects {
            match effect {
                Effect::Join { to, response } => {
                    if let Some(Waiter::Join(tx)) = self.waiters.remove(&to.0) {
                        let _ = tx.send(response);
                    }
                }
                Effect::Sync { to, response } => self.reply_sync(to, response),
                Effect::Heartbeat { to, error } => {
                    if let Some(Waiter::Heartbeat(tx)) = self.waiters.remove(&to.0) {
                        let _ = tx.send(error);
                    }
                }
                Effect::Leave { to, error, members } => {
                    if let Some(Waiter::Leave(tx)) = self.waiters.remove(&to.0) {
                        let _ = tx.send((error, members));
                    }
                }
                Effect::PersistGroup(record) => {
                    let group_id = record.group_id.clone();
                    let generation_id = record.generation_id;
                    let batch = records::encode_batch(
                        &[(records::group_key(&group_id), Some(records::group_value(&record)))],
                        now,
                    );
                    self.write(batch, Pending::Group { group_id, generation_id }, now);
                }
                Effect::DeleteGroup { group_id } => {
                    // Written by the DeleteGroups path itself (with the offsets' tombstones).
                    debug_assert!(!group_id.is_empty());
                }
            }
        }
        if let Some(e) = self.groups.get_mut(group_id) {
            if e.group.state() != GroupState::Empty {
                e.empty_since_ms = now;
            }
        }
    }

    fn reply_sync(&mut self, to: ReplyTo, response: SyncResponse) {
        if let Some(Waiter::Sync(tx)) = self.waiters.remove(&to.0) {
            let _ = tx.send(response);
        }
    }

    fn write_offsets(&mut self, write: OffsetWrite, reply: WriteReply, now: i64) {
        let producer = match &write {
            OffsetWrite::TxnCommit { producer_id, producer_epoch, .. } => {
                Some((*producer_id, *producer_epoch))
            }
            _ => None,
        };
        let batch = records::encode_batch_of(&write.records(), producer, now);
        self.write(batch, Pending::Offsets { write, reply }, now);
    }

    /// Appends one batch at this shard's leader epoch; it joins the writes in flight until it
    /// is replicated. A transaction's batch carries no sequence, so it skips the idempotence
    /// check of client appends.
    fn write(&mut self, batch: Bytes, pending: Pending, now: i64) {
        let appended =
            if matches!(pending, Pending::Offsets { write: OffsetWrite::TxnCommit { .. }, .. }) {
                self.partition.append_trusted(&batch, self.leader_epoch, now)
            } else {
                self.partition.append(&batch, self.leader_epoch, now)
            };
        let info = match appended {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(partition = self.index, error = %e, "cannot append to offsets partition");
                self.on_done(pending, Err(GroupError::CoordinatorNotAvailable));
                return;
            }
        };
        let partition = self.partition.clone();
        let epoch = self.leader_epoch;
        let timeout = Duration::from_millis(self.settings.offsets_commit_timeout_ms);
        self.in_flight.push(Box::pin(async move {
            let result = partition
                .wait_acked(info.last_offset + 1, epoch, true, timeout)
                .await
                .map_err(|e| match e {
                    AckError::NotLeader => GroupError::NotCoordinator,
                    AckError::TimedOut | AckError::Offline => GroupError::CoordinatorNotAvailable,
                });
            (pending, result)
        }));
    }

    fn on_done(&mut self, pending: Pending, result: Result<(), GroupError>) {
        let now = self.clock.now_ms();
        match pending {
            Pending::Group { group_id, generation_id } => {
                if let Some(e) = self.groups.get_mut(&group_id) {
                    if result.is_ok() {
                        e.persisted = true;
                    }
                    let effects = e.group.persisted(generation_id, result);
                    self.apply(&group_id, effects, now);
                }
            }
            Pending::Offsets { write, reply } => {
                let config = self.group_config();
                offsets::written(&mut self.groups, write, &result, config);
                match reply {
                    WriteReply::None => {}
                    WriteReply::Done(tx) => {
                        let _ = tx.send(result);
                    }
                    WriteReply::Deleted(tx, results) => {
                        let _ = tx.send(result.map(|()| results));
                    }
                }
            }
        }
    }
}

fn unknown_sync() -> SyncResponse {
    SyncResponse {
        protocol_type: None,
        protocol_name: None,
        assignment: Bytes::new(),
        error: Some(GroupError::UnknownMemberId),
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use strom_metadata::{NodeId, TopicId};

    use super::*;
    use crate::group::OFFSETS_TOPIC;

    /// An offsets partition over a real (temporary) log.
    fn partition_on(dir: &std::path::Path) -> Arc<Partition> {
        let log = strom_log::Log::open(
            dir,
            strom_log::LogConfig::default(),
            0,
            &strom_log::FileHandles::new(strom_log::FILE_HANDLES_MIN),
        )
        .expect("log opens");
        Partition::new(OFFSETS_TOPIC.to_owned(), 0, TopicId([7; 16]), log, false, 0, Arc::default())
    }

    fn shard_on(partition: Arc<Partition>, clock: &strom_testkit::ManualClock) -> Shard {
        Shard::new(partition, 0, 0, GroupSettings::default(), Arc::new(clock.clone()))
    }

    /// Polls the shard's loop until it has done all it can without a write finishing.
    async fn turn(run: &mut Pin<Box<impl Future<Output = ()>>>) {
        for _ in 0..1_000 {
            assert!(futures::poll!(run.as_mut()).is_pending(), "the shard stopped");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_member_session_expires_when_the_shard_clock_passes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = strom_testkit::ManualClock::at(1_000_000);
        let mut shard = shard_on(partition_on(dir.path()), &clock);
        let member = MemberRecord {
            member_id: "m-1".to_owned(),
            group_instance_id: None,
            client_id: "c".to_owned(),
            client_host: "/127.0.0.1".to_owned(),
            rebalance_timeout_ms: 30_000,
            session_timeout_ms: 10_000,
            subscription: Bytes::new(),
            assignment: Bytes::new(),
        };
        let record = GroupRecord {
            group_id: "g".to_owned(),
            generation_id: 3,
            protocol_type: Some("consumer".to_owned()),
            protocol_name: Some("range".to_owned()),
            leader: Some("m-1".to_owned()),
            current_state_timestamp_ms: 0,
            members: vec![member],
        };
        let mut loaded = Loaded::default();
        loaded.groups.insert("g".to_owned(), Some(record));
        shard.install(loaded, clock.now_ms());
        assert_eq!(shard.summary("g").state, Some(GroupState::Stable));

        // The timer path reads the shard's clock: half a session on, the member stays.
        clock.advance(5_000);
        shard.on_tick();
        assert_eq!(shard.summary("g").members.len(), 1, "expired inside its session");

        // Past the session (counted from the load, its last contact), it is gone.
        clock.advance(5_001);
        shard.on_tick();
        let after = shard.summary("g");
        assert!(after.members.is_empty(), "member outlived its session: {after:?}");
        assert_ne!(after.state, Some(GroupState::Stable));
    }

    #[tokio::test]
    async fn a_shard_with_its_writes_in_flight_full_takes_no_request_until_one_finishes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = strom_testkit::ManualClock::at(1_000_000);
        let partition = partition_on(dir.path());
        // A follower in the ISR that never fetches: no write is acknowledged.
        let (me, other) = (NodeId(1), NodeId(2));
        partition.lead(me, vec![me, other], vec![me, other], 0, 0, 0);
        let (tx, rx) = mpsc::channel(SHARD_QUEUE_MAX);
        let mut replies = Vec::new();
        for i in 0..=WRITES_IN_FLIGHT_MAX {
            let (reply, answer) = oneshot::channel();
            let offset = OffsetValue {
                offset: i as i64,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: 0,
            };
            let req = CommitRequest {
                member_id: String::new(),
                group_instance_id: None,
                generation_id: -1,
                offsets: vec![(("t".to_owned(), 0), offset)],
            };
            tx.try_send(Cmd::Commit("g".to_owned(), req, reply)).expect("the queue has room");
            replies.push(answer);
        }
        let log_end = || partition.log().expect("log").log_end_offset();
        let mut run = Box::pin(shard_on(partition.clone(), &clock).run(rx));

        turn(&mut run).await;
        assert_eq!(log_end(), WRITES_IN_FLIGHT_MAX as i64, "one commit (one record) per write");
        assert!(replies[0].try_recv().is_err(), "answered before replication");

        // The follower leaves the ISR: the writes are replicated, the last request goes in.
        partition.lead(me, vec![me, other], vec![me], 0, 1, 0);
        turn(&mut run).await;
        assert_eq!(log_end(), WRITES_IN_FLIGHT_MAX as i64 + 1);
        for answer in &mut replies {
            assert_eq!(answer.try_recv().expect("answered"), Ok(()));
        }
    }

    #[tokio::test]
    async fn transactional_offsets_count_from_their_commit_marker_and_survive_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = strom_testkit::ManualClock::at(1_000_000);
        let partition = partition_on(dir.path());
        partition.lead(NodeId(1), vec![NodeId(1)], vec![NodeId(1)], 0, 0, 0);
        let mut shard = shard_on(partition.clone(), &clock);
        shard.install(Loaded::default(), clock.now_ms());
        let offset = |o: i64| OffsetValue {
            offset: o,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 1,
        };
        let txn_commit = |shard: &mut Shard, producer: (i64, i16), o: i64| {
            let req = CommitRequest {
                member_id: String::new(),
                group_instance_id: None,
                generation_id: -1,
                offsets: vec![(("t".to_owned(), 0), offset(o))],
            };
            let (reply, answer) = oneshot::channel();
            shard.on_cmd(Cmd::TxnCommit("g".to_owned(), producer, req, reply));
            answer
        };
        let fetch = |shard: &mut Shard| {
            let (reply, answer) = oneshot::channel();
            let wanted = Some(vec![("t".to_owned(), 0)]);
            shard.on_cmd(Cmd::FetchOffsets {
                group_id: "g".to_owned(),
                wanted,
                require_stable: true,
                member: None,
                reply,
            });
            answer
        };
        // Producer 5 commits offset 10 in a transaction; producer 6 writes 20 and aborts.
        let mut answers =
            vec![txn_commit(&mut shard, (5, 0), 10), txn_commit(&mut shard, (6, 0), 20)];
        while let Some((pending, result)) = shard.in_flight.next().await {
            shard.on_done(pending, result);
        }
        for answer in answers.drain(..) {
            assert_eq!(answer.await.expect("answered"), Ok(()));
        }
        let (offsets, unstable) = fetch(&mut shard).await.expect("fetched").expect("no refusal");
        assert_eq!(offsets, vec![(("t".to_owned(), 0), None)], "not visible before the marker");
        assert_eq!(unstable, vec![("t".to_owned(), 0)]);
        let marker = |commit| strom_protocol::control::Marker { commit, coordinator_epoch: 0 };
        partition.append_marker(5, 0, marker(true), 0, 1).expect("commit marker");
        shard.on_cmd(Cmd::TxnCompleted { producer_id: 5, commit: true });
        partition.append_marker(6, 0, marker(false), 0, 1).expect("abort marker");
        shard.on_cmd(Cmd::TxnCompleted { producer_id: 6, commit: false });
        let (offsets, unstable) = fetch(&mut shard).await.expect("fetched").expect("no refusal");
        assert_eq!(offsets, vec![(("t".to_owned(), 0), Some(offset(10)))]);
        assert!(unstable.is_empty());

        // A reload reads the same from the log, and a transaction still open stays pending.
        let open = txn_commit(&mut shard, (7, 0), 30);
        let (pending, result) = shard.in_flight.next().await.expect("a write");
        shard.on_done(pending, result);
        assert_eq!(open.await.expect("answered"), Ok(()));
        let mut reloaded = shard_on(partition.clone(), &clock);
        reloaded.install(load(&partition).expect("loads"), clock.now_ms());
        let (offsets, unstable) = fetch(&mut reloaded).await.expect("fetched").expect("no refusal");
        assert_eq!(offsets, vec![(("t".to_owned(), 0), Some(offset(10)))]);
        assert_eq!(unstable, vec![("t".to_owned(), 0)], "producer 7's transaction is open");
    }
}
