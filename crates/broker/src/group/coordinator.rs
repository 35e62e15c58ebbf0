//! The group coordinator's tokio shell. Groups live in `__consumer_offsets`: a group belongs to
//! partition `abs(java_hash(group_id)) % partitions`, and the leader of that partition is its
//! coordinator. For every partition this broker leads, one task (a shard) loads the partition's
//! log into memory, then owns the [`Group`] state machines and committed offsets of its groups:
//! requests reach it over a bounded channel, it appends the records the core asks for, and it
//! answers once they are replicated (acks=all). When leadership moves the shard stops and the
//! new leader loads the same state from its copy of the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::records::{self, Entry, OffsetValue};
use super::state::*;
use crate::clock::Clock;
use crate::config::GroupSettings;
use crate::partition::{AckError, Partition};
use crate::BrokerCtx;

pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Requests queued for one shard before senders wait.
const SHARD_QUEUE_MAX: usize = 1_024;
/// Bytes read from the log per step while loading a partition.
const LOAD_READ_BYTES: usize = 1 << 20;
/// How often the shard manager re-checks leadership besides image changes (a partition may
/// become leader locally a moment after the image says so).
const MANAGER_TICK: Duration = Duration::from_millis(200);
/// Groups one shard (offsets partition) holds; a new group beyond it is refused with
/// COORDINATOR_NOT_AVAILABLE. Kafka has no such bound; a broker must.
const GROUPS_PER_SHARD_MAX: usize = 1_000_000;
/// Longest sleep of a shard between timer checks.
const SHARD_TICK_MAX_MS: i64 = 1_000;

/// Kafka's `Utils.abs(groupId.hashCode()) % partitions`: Java's `String.hashCode` over UTF-16
/// code units, so that a group maps to the partition Kafka would pick.
pub(crate) fn partition_for(group_id: &str, partitions: i32) -> i32 {
    let hash = group_id.encode_utf16().fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(u as i32));
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// One group as DescribeGroups and the admin API show it.
#[derive(Clone, Debug)]
pub(crate) struct GroupSummary {
    pub group_id: String,
    /// `None`: no such group.
    pub state: Option<GroupState>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub members: Vec<MemberRecord>,
}

/// Kafka's name for a group state, as DescribeGroups and ListGroups report it.
pub(crate) fn state_name(state: Option<GroupState>) -> &'static str {
    match state {
        None | Some(GroupState::Dead) => "Dead",
        Some(GroupState::Empty) => "Empty",
        Some(GroupState::PreparingRebalance) => "PreparingRebalance",
        Some(GroupState::CompletingRebalance) => "CompletingRebalance",
        Some(GroupState::Stable) => "Stable",
    }
}

pub(crate) struct CommitRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub generation_id: i32,
    pub offsets: Vec<((String, i32), OffsetValue)>,
}

/// A topic partition, as the group APIs name it.
pub(crate) type TopicPartition = (String, i32);
/// OffsetFetch's answer: each partition with its committed offset, if any.
pub(crate) type FetchedOffsets = Vec<(TopicPartition, Option<OffsetValue>)>;
/// OffsetDelete's answer: each partition's refusal, if any, or the group's.
pub(crate) type DeletedOffsets = Result<Vec<(TopicPartition, Option<GroupError>)>, GroupError>;

/// A request for one shard, with the channel its answer goes back on.
pub(crate) enum Cmd {
    Join(String, JoinRequest, oneshot::Sender<JoinResponse>),
    Sync(String, SyncRequest, oneshot::Sender<SyncResponse>),
    Heartbeat {
        group_id: String,
        member_id: String,
        group_instance_id: Option<String>,
        generation_id: i32,
        reply: oneshot::Sender<Option<GroupError>>,
    },
    Leave(
        String,
        Vec<(String, Option<String>)>,
        oneshot::Sender<(Option<GroupError>, Vec<LeftMember>)>,
    ),
    Commit(String, CommitRequest, oneshot::Sender<Result<(), GroupError>>),
    /// `None`: every committed offset of the group.
    FetchOffsets(String, Option<Vec<(String, i32)>>, oneshot::Sender<FetchedOffsets>),
    Describe(String, oneshot::Sender<GroupSummary>),
    List(oneshot::Sender<Vec<GroupSummary>>),
    Delete(String, oneshot::Sender<Result<(), GroupError>>),
    DeleteOffsets(String, Vec<(String, i32)>, oneshot::Sender<DeletedOffsets>),
}

enum Slot {
    Loading { leader_epoch: i32 },
    Ready { leader_epoch: i32, tx: mpsc::Sender<Cmd> },
}

/// Which shards this broker runs, by `__consumer_offsets` partition.
#[derive(Default)]
pub(crate) struct Coordinator {
    slots: Mutex<HashMap<i32, Slot>>,
    /// When a client first looked up a group coordinator, on the broker's clock (offsets
    /// topic creation waits a little for brokers from then).
    first_lookup: std::sync::OnceLock<i64>,
}

impl Coordinator {
    /// The shard that coordinates `group_id`, or the error a client must see: NOT_COORDINATOR
    /// (ask FindCoordinator again), COORDINATOR_LOAD_IN_PROGRESS (retry here), or
    /// COORDINATOR_NOT_AVAILABLE (no offsets topic yet).
    pub fn route(&self, ctx: &BrokerCtx, group_id: &str) -> Result<mpsc::Sender<Cmd>, RouteError> {
        let image = ctx.image.current();
        let Some(topic) = image.topic(OFFSETS_TOPIC) else {
            return Err(RouteError::NotAvailable);
        };
        let partition = partition_for(group_id, topic.partitions.len() as i32);
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get(&partition) {
            Some(Slot::Ready { tx, .. }) => Ok(tx.clone()),
            Some(Slot::Loading { .. }) => Err(RouteError::Loading),
            None => Err(RouteError::NotCoordinator),
        }
    }

    /// Every running shard, for ListGroups.
    pub fn shards(&self) -> Vec<mpsc::Sender<Cmd>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .filter_map(|s| match s {
                Slot::Ready { tx, .. } => Some(tx.clone()),
                Slot::Loading { .. } => None,
            })
            .collect()
    }

    /// Whether some shard is still loading (ListGroups reports COORDINATOR_LOAD_IN_PROGRESS).
    pub fn any_loading(&self) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().any(|s| matches!(s, Slot::Loading { .. }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteError {
    NotCoordinator,
    Loading,
    NotAvailable,
}

/// Starts and stops shards as leadership of `__consumer_offsets` partitions comes and goes.
pub(crate) async fn run(ctx: Arc<BrokerCtx>, mut shutdown: watch::Receiver<bool>) {
    let mut image_rx = ctx.image.subscribe();
    let mut tick = tokio::time::interval(MANAGER_TICK);
    loop {
        reconcile(&ctx);
        tokio::select! {
            changed = image_rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn reconcile(ctx: &Arc<BrokerCtx>) {
    let node = ctx.config.node_id;
    let image = ctx.image.current();
    let mut led: HashMap<i32, i32> = HashMap::new();
    if let Some(topic) = image.topic(OFFSETS_TOPIC) {
        for (index, p) in &topic.partitions {
            if p.leader == Some(node) {
                led.insert(*index, p.leader_epoch.0);
            }
        }
    }
    let mut slots = ctx.groups.slots.lock().unwrap_or_else(|p| p.into_inner());
    slots.retain(|index, slot| {
        let epoch = match slot {
            Slot::Loading { leader_epoch } | Slot::Ready { leader_epoch, .. } => *leader_epoch,
        };
        let keep = led.get(index) == Some(&epoch);
        if !keep {
            tracing::debug!(partition = index, "no longer coordinator for this offsets partition");
        }
        keep
    });
    for (index, epoch) in led {
        if slots.contains_key(&index) {
            continue;
        }
        let Some(partition) = ctx.replicas.get(OFFSETS_TOPIC, index) else { continue };
        // The local log must be in the leader role at this epoch before anything is written.
        if partition.progress().leader_epoch != Some(epoch) {
            continue;
        }
        slots.insert(index, Slot::Loading { leader_epoch: epoch });
        tokio::spawn(load_and_serve(ctx.clone(), partition, index, epoch));
    }
}

async fn load_and_serve(ctx: Arc<BrokerCtx>, partition: Arc<Partition>, index: i32, epoch: i32) {
    let started = std::time::Instant::now();
    let p = partition.clone();
    let loaded = tokio::task::spawn_blocking(move || load(&p)).await;
    let loaded = match loaded {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            tracing::error!(partition = index, error = %e, "cannot load offsets partition");
            drop_slot(&ctx, index, epoch);
            return;
        }
        Err(e) => {
            tracing::error!(partition = index, error = %e, "offsets partition load task failed");
            drop_slot(&ctx, index, epoch);
            return;
        }
    };
    let settings = ctx.config.groups.clone();
    let now = ctx.clock.now_ms();
    let (tx, rx) = mpsc::channel(SHARD_QUEUE_MAX);
    let mut shard = Shard::new(partition, index, epoch, settings, ctx.clock.clone());
    let (groups, offsets) = (loaded.groups.len(), loaded.offsets);
    shard.install(loaded, now);
    {
        let mut slots = ctx.groups.slots.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(slots.get(&index), Some(Slot::Loading { leader_epoch }) if *leader_epoch == epoch)
        {
            return; // leadership moved while loading
        }
        slots.insert(index, Slot::Ready { leader_epoch: epoch, tx });
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if groups > 0 {
        tracing::info!(
            partition = index,
            leader_epoch = epoch,
            groups,
            offsets,
            elapsed_ms,
            "coordinator loaded offsets partition"
        );
    } else {
        tracing::debug!(
            partition = index,
            leader_epoch = epoch,
            elapsed_ms,
            "coordinator took over an empty offsets partition"
        );
    }
    shard.run(rx).await;
    drop_slot(&ctx, index, epoch);
    tracing::debug!(partition = index, leader_epoch = epoch, "coordinator shard stopped");
}

fn drop_slot(ctx: &BrokerCtx, index: i32, epoch: i32) {
    let mut slots = ctx.groups.slots.lock().unwrap_or_else(|p| p.into_inner());
    let same = match slots.get(&index) {
        Some(Slot::Loading { leader_epoch }) | Some(Slot::Ready { leader_epoch, .. }) => {
            *leader_epoch == epoch
        }
        None => false,
    };
    if same {
        slots.remove(&index);
    }
}

/// What a partition's log says, latest record per key.
#[derive(Default)]
struct Loaded {
    groups: HashMap<String, Option<GroupRecord>>,
    offsets_by_group: HashMap<String, BTreeMap<(String, i32), OffsetValue>>,
    offsets: usize,
}

/// Reads the whole local log of an offsets partition (the leader's copy is authoritative).
fn load(partition: &Partition) -> Result<Loaded, strom_log::LogError> {
    let (start, end) = {
        let log = partition.log()?;
        (log.log_start_offset(), log.log_end_offset())
    };
    let mut loaded = Loaded::default();
    let mut next = start;
    while next < end {
        let chunk = partition.log()?.read(next, LOAD_READ_BYTES, end)?;
        if chunk.is_empty() {
            break;
        }
        let mut buf = chunk;
        let sets = match RecordBatchDecoder::decode_all(&mut buf) {
            Ok(sets) => sets,
            Err(e) => {
                // Only strom writes this topic, uncompressed; a batch it cannot read is skipped
                // rather than stopping the coordinator for every group of the partition.
                tracing::error!(topic = OFFSETS_TOPIC, partition = partition.index, offset = next,
                    error = %e, "cannot decode offsets batch; skipping the rest of this read");
                next += 1;
                continue;
            }
        };
        let before = next;
        for set in sets {
            for r in set.records {
                if r.offset < next || r.control {
                    continue;
                }
                next = r.offset + 1;
                let Some(key) = r.key else { continue };
                match records::decode(key, r.value) {
                    Ok(entry) => loaded.apply(entry),
                    Err(e) => tracing::warn!(partition = partition.index, offset = r.offset,
                        error = %e, "skipping unreadable offsets record"),
                }
            }
        }
        if next == before {
            // A read that returned only batches we had already passed (e.g. empty ones).
            next += 1;
        }
    }
    loaded.offsets = loaded.offsets_by_group.values().map(BTreeMap::len).sum();
    Ok(loaded)
}

impl Loaded {
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

/// A group and its committed offsets.
struct GroupEntry {
    group: Group,
    offsets: BTreeMap<(String, i32), OffsetValue>,
    /// When the group last became Empty: offsets of an empty consumer group expire
    /// `offsets.retention.minutes` after this.
    empty_since_ms: i64,
    /// Whether anything about it is in the log (a group that was only asked about is not).
    persisted: bool,
}

/// What a replicated write was for.
enum Pending {
    Group {
        group_id: String,
        generation_id: i32,
    },
    Offsets {
        group_id: String,
        offsets: Vec<((String, i32), OffsetValue)>,
        reply: Option<oneshot::Sender<Result<(), GroupError>>>,
    },
    Tombstones {
        group_id: String,
        offsets: Vec<(String, i32)>,
        /// The group's own record goes too.
        group: bool,
        reply: Option<oneshot::Sender<Result<(), GroupError>>>,
    },
}

enum Waiter {
    Join(oneshot::Sender<JoinResponse>),
    Sync(oneshot::Sender<SyncResponse>),
    Heartbeat(oneshot::Sender<Option<GroupError>>),
    Leave(oneshot::Sender<(Option<GroupError>, Vec<LeftMember>)>),
}

struct Shard {
    partition: Arc<Partition>,
    index: i32,
    leader_epoch: i32,
    settings: GroupSettings,
    /// Member sessions, rebalance timeouts and offset retention are measured on this clock.
    clock: Arc<dyn Clock>,
    groups: HashMap<String, GroupEntry>,
    waiters: HashMap<u64, Waiter>,
    next_reply: u64,
    done_tx: mpsc::UnboundedSender<(Pending, Result<(), GroupError>)>,
    done_rx: mpsc::UnboundedReceiver<(Pending, Result<(), GroupError>)>,
    next_retention_ms: i64,
}

impl Shard {
    fn new(
        partition: Arc<Partition>,
        index: i32,
        leader_epoch: i32,
        settings: GroupSettings,
        clock: Arc<dyn Clock>,
    ) -> Shard {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Shard {
            partition,
            index,
            leader_epoch,
            settings,
            clock,
            groups: HashMap::new(),
            waiters: HashMap::new(),
            next_reply: 0,
            done_tx,
            done_rx,
            next_retention_ms: 0,
        }
    }

    fn group_config(&self) -> GroupConfig {
        GroupConfig {
            initial_rebalance_delay_ms: self.settings.initial_rebalance_delay_ms,
            session_timeout_min_ms: self.settings.min_session_timeout_ms,
            session_timeout_max_ms: self.settings.max_session_timeout_ms,
        }
    }

    fn install(&mut self, loaded: Loaded, now_ms: i64) {
        let config = self.group_config();
        let Loaded { groups, mut offsets_by_group, .. } = loaded;
        for (group_id, record) in groups {
            let Some(record) = record else { continue };
            let empty_since_ms = if record.members.is_empty() {
                record.current_state_timestamp_ms.max(0)
            } else {
                now_ms
            };
            let offsets = offsets_by_group.remove(&group_id).unwrap_or_default();
            let group = Group::load(record, config, now_ms);
            self.groups
                .insert(group_id, GroupEntry { group, offsets, empty_since_ms, persisted: true });
        }
        for (group_id, offsets) in offsets_by_group {
            if offsets.is_empty() {
                continue;
            }
            let group = Group::new(group_id.clone(), config);
            let empty_since_ms = offsets.values().map(|o| o.commit_timestamp_ms).max().unwrap_or(0);
            self.groups
                .insert(group_id, GroupEntry { group, offsets, empty_since_ms, persisted: true });
        }
        self.next_retention_ms =
            now_ms + self.settings.offsets_retention_check_interval_ms.min(i64::MAX as u64) as i64;
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
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
                .filter_map(|e| e.group.next_deadline_ms())
                .min()
                .unwrap_or(i64::MAX)
                .min(self.next_retention_ms)
                .min(now + SHARD_TICK_MAX_MS);
            let sleep = Duration::from_millis((next - now).clamp(0, SHARD_TICK_MAX_MS) as u64);
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => return,
                },
                Some((pending, result)) = self.done_rx.recv() => self.on_done(pending, result),
                changed = progress.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(sleep) => self.on_tick(),
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
        Ok(self.groups.entry(group_id.to_owned()).or_insert_with(|| GroupEntry {
            group: Group::new(group_id.to_owned(), config),
            offsets: BTreeMap::new(),
            empty_since_ms: now,
            persisted: false,
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
            Cmd::Commit(group_id, req, reply) => self.commit(group_id, req, reply, now),
            Cmd::FetchOffsets(group_id, partitions, reply) => {
                let offsets = self.groups.get(&group_id).map(|e| &e.offsets);
                let out = match partitions {
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
                };
                let _ = reply.send(out);
            }
            Cmd::Describe(group_id, reply) => {
                let _ = reply.send(self.summary(&group_id));
            }
            Cmd::List(reply) => {
                let mut out: Vec<GroupSummary> = self
                    .groups
                    .values()
                    .filter(|e| e.group.state() != GroupState::Dead)
                    .map(|e| GroupSummary {
                        group_id: e.group.group_id().to_owned(),
                        state: Some(e.group.state()),
                        protocol_type: e.group.protocol_type().map(str::to_owned),
                        protocol_name: e.group.protocol_name().map(str::to_owned),
                        members: Vec::new(),
                    })
                    .collect();
                out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
                let _ = reply.send(out);
            }
            Cmd::Delete(group_id, reply) => {
                let Some(e) = self.groups.get_mut(&group_id) else {
                    let _ = reply.send(Err(GroupError::GroupIdNotFound));
                    return;
                };
                match e.group.delete() {
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                    Ok(_) => {
                        let offsets: Vec<(String, i32)> = e.offsets.keys().cloned().collect();
                        let pending = Pending::Tombstones {
                            group_id: group_id.clone(),
                            offsets,
                            group: true,
                            reply: Some(reply),
                        };
                        self.persist(pending, now);
                    }
                }
            }
            Cmd::DeleteOffsets(group_id, partitions, reply) => {
                let Some(e) = self.groups.get(&group_id) else {
                    let _ = reply.send(Err(GroupError::GroupIdNotFound));
                    return;
                };
                if e.group.state() == GroupState::Dead {
                    let _ = reply.send(Err(GroupError::GroupIdNotFound));
                    return;
                }
                let subscribed = subscribed_topics(&e.group);
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
                if delete.is_empty() {
                    let _ = reply.send(Ok(results));
                    return;
                }
                // The answer waits for the tombstones; the per-partition results ride along.
                let (tx, rx) = oneshot::channel();
                let pending = Pending::Tombstones {
                    group_id,
                    offsets: delete,
                    group: false,
                    reply: Some(tx),
                };
                self.persist(pending, now);
                tokio::spawn(async move {
                    let outcome = rx.await.unwrap_or(Err(GroupError::NotCoordinator));
                    let _ = reply.send(outcome.map(|()| results));
                });
            }
        }
    }

    fn commit(
        &mut self,
        group_id: String,
        req: CommitRequest,
        reply: oneshot::Sender<Result<(), GroupError>>,
        now: i64,
    ) {
        let entry = match self.entry(&group_id) {
            Ok(e) => e,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if let Err(e) = entry.group.validate_offset_commit(
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
            now,
        ) {
            let _ = reply.send(Err(e));
            return;
        }
        if req.offsets.is_empty() {
            let _ = reply.send(Ok(()));
            return;
        }
        let pending = Pending::Offsets { group_id, offsets: req.offsets, reply: Some(reply) };
        self.persist(pending, now);
    }

    fn summary(&self, group_id: &str) -> GroupSummary {
        match self.groups.get(group_id) {
            Some(e) if e.group.state() != GroupState::Dead => GroupSummary {
                group_id: group_id.to_owned(),
                state: Some(e.group.state()),
                protocol_type: e.group.protocol_type().map(str::to_owned),
                protocol_name: e.group.protocol_name().map(str::to_owned),
                members: e.group.describe_members(),
            },
            _ => GroupSummary {
                group_id: group_id.to_owned(),
                state: None,
                protocol_type: None,
                protocol_name: None,
                members: Vec::new(),
            },
        }
    }

    fn on_tick(&mut self) {
        let now = self.clock.now_ms();
        let due: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, e)| e.group.next_deadline_ms().is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for group_id in due {
            let effects = match self.groups.get_mut(&group_id) {
                Some(e) => e.group.tick(now),
                None => continue,
            };
            self.apply(&group_id, effects, now);
        }
        if now >= self.next_retention_ms {
            self.expire_offsets(now);
            self.next_retention_ms =
                now + self.settings.offsets_retention_check_interval_ms.min(i64::MAX as u64) as i64;
        }
    }

    /// `offsets.retention.minutes`: an empty consumer group's offsets go once it has been empty
    /// that long; offsets committed outside any group membership (no protocol type) go that
    /// long after their commit. A group left with nothing is deleted.
    fn expire_offsets(&mut self, now: i64) {
        let retention = self.settings.offsets_retention_ms;
        let mut work = Vec::new();
        for (group_id, e) in &self.groups {
            if e.group.state() != GroupState::Empty {
                continue;
            }
            let expired = expired_offsets(
                e.group.protocol_type().is_some(),
                e.empty_since_ms,
                &e.offsets,
                retention,
                now,
            );
            let all_gone = expired.len() == e.offsets.len();
            if !expired.is_empty() || (all_gone && e.persisted) {
                work.push((group_id.clone(), expired, all_gone));
            } else if all_gone && !e.persisted {
                work.push((group_id.clone(), Vec::new(), false));
            }
        }
        for (group_id, offsets, delete_group) in work {
            if offsets.is_empty() && !delete_group {
                // Never written anywhere: forget it.
                self.groups.remove(&group_id);
                continue;
            }
            if delete_group {
                if let Some(e) = self.groups.get_mut(&group_id) {
                    let _ = e.group.delete();
                }
            }
            tracing::info!(group = %group_id, offsets = offsets.len(), group_deleted = delete_group,
                "expiring committed offsets (offsets.retention.minutes)");
            let pending =
                Pending::Tombstones { group_id, offsets, group: delete_group, reply: None };
            self.persist(pending, now);
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
                    let generation_id = record.generation_id;
                    self.persist_group(record, generation_id, now);
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

    fn persist_group(&mut self, record: GroupRecord, generation_id: i32, now: i64) {
        let group_id = record.group_id.clone();
        let batch = encode_batch(
            &[(records::group_key(&group_id), Some(records::group_value(&record)))],
            now,
        );
        let pending = Pending::Group { group_id, generation_id };
        self.write(batch, pending, now);
    }

    fn persist(&mut self, pending: Pending, now: i64) {
        let entries: Vec<(Bytes, Option<Bytes>)> = match &pending {
            Pending::Offsets { group_id, offsets, .. } => offsets
                .iter()
                .map(|((t, p), v)| {
                    (records::offset_key(group_id, t, *p), Some(records::offset_value(v)))
                })
                .collect(),
            Pending::Tombstones { group_id, offsets, group, .. } => {
                let mut e: Vec<(Bytes, Option<Bytes>)> = offsets
                    .iter()
                    .map(|(t, p)| (records::offset_key(group_id, t, *p), None))
                    .collect();
                if *group {
                    e.push((records::group_key(group_id), None));
                }
                e
            }
            Pending::Group { .. } => unreachable!("group records go through persist_group"),
        };
        let batch = encode_batch(&entries, now);
        self.write(batch, pending, now);
    }

    /// Appends one batch at this shard's leader epoch and reports when it is replicated.
    fn write(&mut self, batch: Bytes, pending: Pending, now: i64) {
        let appended = self.partition.append(&batch, self.leader_epoch, now);
        let info = match appended {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(partition = self.index, error = %e, "cannot append to offsets partition");
                self.on_done(pending, Err(GroupError::CoordinatorNotAvailable));
                return;
            }
        };
        let partition = self.partition.clone();
        let done = self.done_tx.clone();
        let epoch = self.leader_epoch;
        let timeout = Duration::from_millis(self.settings.offsets_commit_timeout_ms);
        tokio::spawn(async move {
            let result = partition
                .wait_acked(info.last_offset + 1, epoch, true, timeout)
                .await
                .map_err(|e| match e {
                    AckError::NotLeader => GroupError::NotCoordinator,
                    AckError::TimedOut | AckError::Offline => GroupError::CoordinatorNotAvailable,
                });
            let _ = done.send((pending, result));
        });
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
            Pending::Offsets { group_id, offsets, reply } => {
                if result.is_ok() {
                    // The commit created its group, which the bound counted then.
                    if let Some(e) = self.groups.get_mut(&group_id) {
                        e.persisted = true;
                        e.offsets.extend(offsets);
                    }
                }
                if let Some(r) = reply {
                    let _ = r.send(result);
                }
            }
            Pending::Tombstones { group_id, offsets, group, reply } => {
                match (&result, group) {
                    (Ok(()), true) => {
                        self.groups.remove(&group_id);
                    }
                    (Ok(()), false) => {
                        if let Some(e) = self.groups.get_mut(&group_id) {
                            for k in &offsets {
                                e.offsets.remove(k);
                            }
                        }
                    }
                    (Err(_), true) => {
                        // The group went Dead for a deletion that did not happen: it is Empty
                        // again (only an empty group is deleted), with its offsets.
                        let config = self.group_config();
                        if let Some(e) = self.groups.get_mut(&group_id) {
                            e.group = Group::new(group_id.clone(), config);
                        }
                    }
                    (Err(_), false) => {}
                }
                if let Some(r) = reply {
                    let _ = r.send(result);
                }
            }
        }
    }
}

/// The offsets of an Empty group that `offsets.retention.minutes` (`retention_ms`) has run out
/// for at `now_ms`. A group with members keeps its offsets. Offsets of a group that ran the
/// protocol (`ran_protocol`) are kept for the retention period after the group became empty
/// (`empty_since_ms`, or after the commit if that is later); offsets committed without a
/// membership (an assign()-only consumer) for the retention period after their commit.
pub(crate) fn expired_offsets(
    ran_protocol: bool,
    empty_since_ms: i64,
    offsets: &BTreeMap<(String, i32), OffsetValue>,
    retention_ms: i64,
    now_ms: i64,
) -> Vec<(String, i32)> {
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

fn unknown_sync() -> SyncResponse {
    SyncResponse {
        protocol_type: None,
        protocol_name: None,
        assignment: Bytes::new(),
        error: Some(GroupError::UnknownMemberId),
    }
}

/// Topics the members of a consumer group subscribe to (from their ConsumerProtocol
/// subscriptions), for OffsetDelete's GROUP_SUBSCRIBED_TO_TOPIC.
fn subscribed_topics(group: &Group) -> std::collections::HashSet<String> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    let mut topics = std::collections::HashSet::new();
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

/// One uncompressed v2 batch of `__consumer_offsets` records (offsets assigned on append).
fn encode_batch(entries: &[(Bytes, Option<Bytes>)], now_ms: i64) -> Bytes {
    let records: Vec<Record> = entries
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now_ms,
            key: Some(key.clone()),
            value: value.clone(),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    // Encoding an uncompressed batch of in-memory records cannot fail.
    if let Err(e) = RecordBatchEncoder::encode(&mut buf, &records, &options) {
        debug_assert!(false, "cannot encode offsets batch: {e}");
        tracing::error!(error = %e, "cannot encode offsets batch");
    }
    buf.freeze()
}

/// How long the first group lookups wait for every registered broker to be live before
/// `__consumer_offsets` is created with fewer replicas than wanted (a cluster starting up
/// registers its brokers one by one; one that stays down must not block groups for ever).
const OFFSETS_TOPIC_REPLICAS_WAIT: Duration = Duration::from_secs(10);

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
    let first = *ctx.groups.first_lookup.get_or_init(|| now);
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

    /// A shard over a real (temporary) offsets log, on a manual clock.
    fn shard_on(dir: &std::path::Path, clock: &strom_testkit::ManualClock) -> Shard {
        let log = strom_log::Log::open(dir, strom_log::LogConfig::default(), 0).expect("log opens");
        let partition = Partition::new(
            OFFSETS_TOPIC.to_owned(),
            0,
            strom_metadata::TopicId([7; 16]),
            log,
            false,
            0,
            Arc::default(),
        );
        Shard::new(partition, 0, 0, GroupSettings::default(), Arc::new(clock.clone()))
    }

    #[tokio::test]
    async fn a_member_session_expires_when_the_shard_clock_passes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = strom_testkit::ManualClock::at(1_000_000);
        let mut shard = shard_on(dir.path(), &clock);
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

    #[test]
    fn offsets_expire_after_the_retention_counted_from_emptiness_or_commit() {
        let at = |ts: i64| OffsetValue {
            offset: 1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: ts,
        };
        let offsets: BTreeMap<(String, i32), OffsetValue> =
            [(("t".to_owned(), 0), at(100)), (("t".to_owned(), 1), at(500))].into();
        // A consumer group empty since 1000: nothing goes before 1000 + retention.
        assert!(expired_offsets(true, 1_000, &offsets, 1_000, 1_999).is_empty());
        assert_eq!(expired_offsets(true, 1_000, &offsets, 1_000, 2_000).len(), 2);
        // Offsets without a membership count from their own commit.
        assert_eq!(expired_offsets(false, 0, &offsets, 1_000, 1_100), vec![("t".to_owned(), 0)]);
        assert_eq!(expired_offsets(false, 0, &offsets, 1_000, 1_500).len(), 2);
        // A commit after the group emptied counts from the commit.
        assert!(expired_offsets(true, 0, &offsets, 1_000, 1_499).len() == 1);
    }

    #[test]
    fn offsets_batches_decode_back_to_their_records() {
        let entries = vec![
            (
                records::offset_key("g", "t", 0),
                Some(records::offset_value(&OffsetValue {
                    offset: 5,
                    leader_epoch: 1,
                    metadata: String::new(),
                    commit_timestamp_ms: 7,
                })),
            ),
            (records::group_key("g"), None),
        ];
        let mut batch = encode_batch(&entries, 7);
        let sets = RecordBatchDecoder::decode_all(&mut batch).unwrap();
        let got: Vec<(Option<Bytes>, Option<Bytes>)> =
            sets.into_iter().flat_map(|s| s.records).map(|r| (r.key, r.value)).collect();
        let want: Vec<(Option<Bytes>, Option<Bytes>)> =
            entries.into_iter().map(|(k, v)| (Some(k), v)).collect();
        assert_eq!(got, want);
    }
}
