//! The group coordinator's shard manager. Groups live in `__consumer_offsets`
//! ([`super::offsets_topic`]): the leader of a group's partition is its coordinator. For every
//! partition this broker leads, the manager starts a shard task ([`super::shard`]) that loads the
//! partition's log and then owns its groups; requests reach a shard over a bounded channel
//! ([`Coordinator::route`]). When leadership moves the shard stops and the new leader loads the
//! same state from its copy of the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::offsets_topic::{partition_for, OffsetsTopic, OFFSETS_TOPIC};
use super::records::OffsetValue;
use super::shard::{self, Shard, SHARD_QUEUE_MAX};
use super::state::*;
use crate::partition::Partition;
use crate::BrokerCtx;

/// How often the shard manager re-checks leadership besides image changes (a partition may
/// become leader locally a moment after the image says so).
const MANAGER_TICK: Duration = Duration::from_millis(200);

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
    /// TxnOffsetCommit by producer (id, epoch).
    TxnCommit(String, (i64, i16), CommitRequest, oneshot::Sender<Result<(), GroupError>>),
    /// A transaction marker of this producer id was written to the shard's partition (true:
    /// COMMIT).
    TxnCompleted {
        producer_id: i64,
        commit: bool,
    },
    /// `None`: every committed offset of the group. With `require_stable`, the partitions
    /// that a transaction still holds come back in the second list.
    FetchOffsets {
        group_id: String,
        wanted: Option<Vec<(String, i32)>>,
        require_stable: bool,
        reply: oneshot::Sender<(FetchedOffsets, Vec<(String, i32)>)>,
    },
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
    pub(super) offsets_topic: OffsetsTopic,
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
    /// The shard of `__consumer_offsets` partition `index`, if this broker runs it.
    pub fn shard(&self, index: i32) -> Option<mpsc::Sender<Cmd>> {
        match self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&index) {
            Some(Slot::Ready { tx, .. }) => Some(tx.clone()),
            _ => None,
        }
    }

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
    let loaded = tokio::task::spawn_blocking(move || shard::load(&p)).await;
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
    let (groups, offsets) = (loaded.groups(), loaded.offsets);
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
