//! The group coordinator's shard manager. Groups live in `__consumer_offsets`
//! ([`super::offsets_topic`]): the leader of a group's partition is its coordinator. For every
//! partition this broker leads, the manager starts a shard task ([`super::shard`]) that loads the
//! partition's log and then owns its groups; requests reach a shard over a bounded channel
//! ([`Coordinator::route`]). When leadership moves the shard stops and the new leader loads the
//! same state from its copy of the log.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::consumer::{ConsumerGroup, Heartbeat, HeartbeatAnswer, ImageTopics};
use super::offsets_topic::{partition_for, OffsetsTopic, OFFSETS_TOPIC};
use super::records::OffsetValue;
use super::shard::{self, Shard, SHARD_QUEUE_MAX};
use super::state::*;
use crate::partition::Partition;
use crate::shards::{Routed, ShardSlots};
use crate::BrokerCtx;

/// One group as DescribeGroups and the admin API show it.
#[derive(Clone, Debug)]
pub(crate) struct GroupSummary {
    pub group_id: String,
    /// `None`: no such group.
    pub state: Option<GroupState>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub members: Vec<MemberRecord>,
    /// The KIP-848 state name (`Stable`, `Reconciling`, …) of a group whose members use the
    /// consumer protocol; `None` for a classic group.
    pub consumer_state: Option<&'static str>,
}

impl GroupSummary {
    /// The state name ListGroups and DescribeGroups report.
    pub fn state_name(&self) -> &'static str {
        self.consumer_state.unwrap_or_else(|| state_name(self.state))
    }

    /// ListGroups v5's group type.
    pub fn group_type(&self) -> &'static str {
        if self.consumer_state.is_some() {
            "consumer"
        } else {
            "classic"
        }
    }
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

/// A shard's committed offsets as (group, topic, partition, offset), at most the limit
/// asked for, and the count of all it holds.
pub(crate) type CommittedOffsets = (Vec<(String, String, i32, i64)>, usize);
/// OffsetFetch's answer: each partition with its committed offset, if any.
pub(crate) type FetchedOffsets = Vec<(TopicPartition, Option<OffsetValue>)>;
/// OffsetFetch's answer: the offsets, and (with `require_stable`) the partitions a
/// transaction still holds.
pub(crate) type FetchAnswer = (FetchedOffsets, Vec<TopicPartition>);
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
    /// KIP-848's ConsumerGroupHeartbeat, with the metadata its assignor reads.
    ConsumerHeartbeat {
        group_id: String,
        heartbeat: Heartbeat,
        topics: ImageTopics,
        reply: oneshot::Sender<Result<HeartbeatAnswer, GroupError>>,
    },
    /// ConsumerGroupDescribe: the group's KIP-848 side (`None`: not a consumer group).
    ConsumerDescribe(String, oneshot::Sender<Option<ConsumerGroup>>),
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
    /// `member`: OffsetFetch v9's member id and epoch (KIP-848), checked when the group's
    /// members use the consumer protocol.
    FetchOffsets {
        group_id: String,
        wanted: Option<Vec<(String, i32)>>,
        require_stable: bool,
        member: Option<(String, i32)>,
        reply: oneshot::Sender<Result<FetchAnswer, GroupError>>,
    },
    Describe(String, oneshot::Sender<GroupSummary>),
    List(oneshot::Sender<Vec<GroupSummary>>),
    /// Up to `limit` committed offsets of the shard's groups, and how many it holds in all
    /// (the consumer lag metrics).
    CommittedOffsets {
        limit: usize,
        reply: oneshot::Sender<CommittedOffsets>,
    },
    Delete(String, oneshot::Sender<Result<(), GroupError>>),
    DeleteOffsets(String, Vec<(String, i32)>, oneshot::Sender<DeletedOffsets>),
}

/// Which shards this broker runs, by `__consumer_offsets` partition.
pub(crate) struct Coordinator {
    slots: ShardSlots<mpsc::Sender<Cmd>>,
    pub(super) offsets_topic: OffsetsTopic,
}

impl Default for Coordinator {
    fn default() -> Self {
        Coordinator {
            slots: ShardSlots::new(OFFSETS_TOPIC),
            offsets_topic: OffsetsTopic::default(),
        }
    }
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
        match self.slots.get(partition) {
            Routed::Ready(tx) => Ok(tx),
            Routed::Loading => Err(RouteError::Loading),
            Routed::Absent => Err(RouteError::NotCoordinator),
        }
    }

    /// The shard of `__consumer_offsets` partition `index`, if this broker runs it.
    pub fn shard(&self, index: i32) -> Option<mpsc::Sender<Cmd>> {
        match self.slots.get(index) {
            Routed::Ready(tx) => Some(tx),
            Routed::Loading | Routed::Absent => None,
        }
    }

    /// Every running shard, for ListGroups.
    pub fn shards(&self) -> Vec<mpsc::Sender<Cmd>> {
        self.slots.ready()
    }

    /// Whether some shard is still loading (ListGroups reports COORDINATOR_LOAD_IN_PROGRESS).
    pub fn any_loading(&self) -> bool {
        self.slots.any_loading()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteError {
    NotCoordinator,
    Loading,
    NotAvailable,
}

/// Starts and stops shards as leadership of `__consumer_offsets` partitions comes and goes.
pub(crate) async fn run(ctx: Arc<BrokerCtx>, shutdown: watch::Receiver<bool>) {
    crate::shards::follow_leadership(ctx, shutdown, |ctx| &ctx.groups.slots, load_and_serve).await
}

async fn load_and_serve(ctx: Arc<BrokerCtx>, partition: Arc<Partition>, index: i32, epoch: i32) {
    let started = std::time::Instant::now();
    let Some(loaded) = crate::shards::load(partition.clone(), shard::load).await else {
        ctx.groups.slots.stopped(index, epoch);
        return;
    };
    let settings = ctx.config.groups.clone();
    let now = ctx.clock.now_ms();
    let (tx, rx) = mpsc::channel(SHARD_QUEUE_MAX);
    let mut shard = Shard::new(partition, index, epoch, settings, ctx.clock.clone());
    let groups = loaded.groups();
    shard.install(loaded, now);
    if !ctx.groups.slots.loaded(index, epoch, tx, groups, started) {
        return; // leadership moved while loading
    }
    shard.run(rx).await;
    ctx.groups.slots.stopped(index, epoch);
}
