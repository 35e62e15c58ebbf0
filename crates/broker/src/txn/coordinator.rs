//! The transaction coordinator's shard manager. Transactional ids live in
//! `__transaction_state` (created on the first FindCoordinator for a transactional id): the
//! leader of an id's partition is its coordinator. For every partition this broker leads, the
//! manager starts a shard task ([`super::shard`]) that replays the partition's log and then owns
//! its ids; requests reach a shard over a bounded channel ([`TxnCoordinator::route`]). When
//! leadership moves the shard stops and the new leader replays the same log, with the new
//! leader epoch as its coordinator epoch.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::sender::MarkerSender;
use super::shard::{self, Shard, TxnCmd, SHARD_QUEUE_MAX};
use super::{TxnConfig, TxnPartition};
use crate::group::RouteError;
use crate::internal_topic::{self, FirstLookup, InternalTopic};
use crate::partition::Partition;
use crate::shards::{Routed, ShardSlots};
use crate::BrokerCtx;

pub(crate) const TXN_TOPIC: &str = "__transaction_state";

/// Which shards this broker runs, by `__transaction_state` partition, and the marker sender
/// they share.
pub(crate) struct TxnCoordinator {
    slots: ShardSlots<mpsc::Sender<TxnCmd>>,
    topic: FirstLookup,
    pub(super) markers: MarkerSender,
}

impl TxnCoordinator {
    pub fn new(markers: MarkerSender) -> TxnCoordinator {
        let slots = ShardSlots::new(TXN_TOPIC);
        TxnCoordinator { slots, topic: FirstLookup::default(), markers }
    }

    /// The `__transaction_state` partition of `transactional_id`, if the topic exists.
    pub fn partition_of(ctx: &BrokerCtx, transactional_id: &str) -> Option<i32> {
        let image = ctx.image.current();
        let topic = image.topic(TXN_TOPIC)?;
        Some(internal_topic::partition_for(transactional_id, topic.partitions.len() as i32))
    }

    /// The shard that coordinates `transactional_id`, or the error a client must see:
    /// NOT_COORDINATOR (ask FindCoordinator again), COORDINATOR_LOAD_IN_PROGRESS (retry here),
    /// or COORDINATOR_NOT_AVAILABLE (no `__transaction_state` yet).
    pub fn route(
        &self,
        ctx: &BrokerCtx,
        transactional_id: &str,
    ) -> Result<mpsc::Sender<TxnCmd>, RouteError> {
        let partition =
            Self::partition_of(ctx, transactional_id).ok_or(RouteError::NotAvailable)?;
        match self.slots.get(partition) {
            Routed::Ready(tx) => Ok(tx),
            Routed::Loading => Err(RouteError::Loading),
            Routed::Absent => Err(RouteError::NotCoordinator),
        }
    }

    /// Every running shard, for ListTransactions.
    pub fn shards(&self) -> Vec<mpsc::Sender<TxnCmd>> {
        self.slots.ready()
    }

    /// Whether some shard is still loading (ListTransactions answers
    /// COORDINATOR_LOAD_IN_PROGRESS, as Kafka does).
    pub fn any_loading(&self) -> bool {
        self.slots.any_loading()
    }
}

/// Asks the controller for `__transaction_state` if it does not exist yet (Kafka creates it on
/// the first FindCoordinator for a transactional id): compacted, with this node's
/// `transaction.state.log.*` settings; `min.insync.replicas` from
/// `transaction.state.log.min.isr`, capped by the replication factor the topic gets.
pub(crate) async fn ensure_txn_topic(ctx: &BrokerCtx) {
    let d = ctx.config.transactions;
    let topic = InternalTopic {
        name: TXN_TOPIC,
        num_partitions: d.transaction_state_log_num_partitions,
        replication_factor: d.transaction_state_log_replication_factor,
        segment_bytes: d.transaction_state_log_segment_bytes,
        min_insync_replicas: Some(d.transaction_state_log_min_isr),
        first_lookup: &ctx.txn.topic,
    };
    internal_topic::ensure(ctx, topic).await;
}

/// Starts and stops shards as leadership of `__transaction_state` partitions comes and goes.
pub(crate) async fn run(ctx: Arc<BrokerCtx>, shutdown: watch::Receiver<bool>) {
    crate::shards::follow_leadership(ctx, shutdown, |ctx| &ctx.txn.slots, load_and_serve).await
}

async fn load_and_serve(ctx: Arc<BrokerCtx>, partition: Arc<Partition>, index: i32, epoch: i32) {
    let started = std::time::Instant::now();
    // The coordinator epoch is the partition's leader epoch: leaders refuse markers of a
    // coordinator older than the last one they saw.
    let mut core = TxnPartition::new(epoch, TxnConfig::of(&ctx.config.transactions));
    let loaded = crate::shards::load(partition.clone(), move |p: &Partition| {
        shard::load(p, &mut core).map(|()| core)
    })
    .await;
    let Some(core) = loaded else {
        ctx.txn.slots.stopped(index, epoch);
        return;
    };
    let ids = core.transactions().count();
    let (tx, rx) = mpsc::channel(SHARD_QUEUE_MAX);
    if !ctx.txn.slots.loaded(index, epoch, tx, ids, started) {
        return; // leadership moved while loading
    }
    let shard = Shard::new(ctx.clone(), partition, epoch, ctx.config.transactions, core);
    shard.run(rx).await;
    ctx.txn.slots.stopped(index, epoch);
}
