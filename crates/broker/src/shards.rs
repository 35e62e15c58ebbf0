//! What the group and transaction coordinators share about their shards: a shard is the task
//! that owns the state kept in one partition of the coordinator's internal topic, and runs on
//! the broker that leads that partition. [`ShardSlots`] says which shards run (loading or
//! ready) and starts and stops them as leadership moves ([`follow_leadership`]); [`load`]
//! reads a partition's log into memory, record by record, off the async workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kafka_protocol::records::{Record, RecordBatchDecoder};
use tokio::sync::watch;

use crate::partition::Partition;
use crate::BrokerCtx;

/// How often the shard managers re-check leadership besides image changes (a partition may
/// become leader locally a moment after the image says so).
const MANAGER_TICK: Duration = Duration::from_millis(200);
/// Bytes read from the log per step while loading a partition.
const LOAD_READ_BYTES: usize = 1 << 20;

enum Slot<Tx> {
    Loading { leader_epoch: i32 },
    Ready { leader_epoch: i32, tx: Tx },
}

impl<Tx> Slot<Tx> {
    fn leader_epoch(&self) -> i32 {
        match self {
            Slot::Loading { leader_epoch } | Slot::Ready { leader_epoch, .. } => *leader_epoch,
        }
    }
}

/// Where a request for one partition's shard goes.
pub(crate) enum Routed<Tx> {
    /// The shard's queue.
    Ready(Tx),
    /// The shard is loading the partition (COORDINATOR_LOAD_IN_PROGRESS).
    Loading,
    /// This broker runs no shard for the partition (NOT_COORDINATOR).
    Absent,
}

/// The shards of one coordinator on this broker, by partition of its internal topic; `Tx` is
/// a shard's queue handle.
pub(crate) struct ShardSlots<Tx> {
    topic: &'static str,
    slots: Mutex<HashMap<i32, Slot<Tx>>>,
}

impl<Tx: Clone> ShardSlots<Tx> {
    /// The shards of partitions of `topic`.
    pub fn new(topic: &'static str) -> ShardSlots<Tx> {
        ShardSlots { topic, slots: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Slot<Tx>>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, index: i32) -> Routed<Tx> {
        match self.lock().get(&index) {
            Some(Slot::Ready { tx, .. }) => Routed::Ready(tx.clone()),
            Some(Slot::Loading { .. }) => Routed::Loading,
            None => Routed::Absent,
        }
    }

    /// Every shard that has loaded.
    pub fn ready(&self) -> Vec<Tx> {
        self.lock()
            .values()
            .filter_map(|s| match s {
                Slot::Ready { tx, .. } => Some(tx.clone()),
                Slot::Loading { .. } => None,
            })
            .collect()
    }

    pub fn any_loading(&self) -> bool {
        self.lock().values().any(|s| matches!(s, Slot::Loading { .. }))
    }

    /// Forgets the shards of partitions this broker no longer leads at their epoch (they see
    /// it themselves and stop), and returns the led partitions that need a shard, now marked
    /// loading: (partition, leader epoch, its local log). A partition whose local log does not
    /// lead at the image's epoch yet waits for a later call.
    fn reconcile(&self, ctx: &BrokerCtx) -> Vec<(i32, i32, Arc<Partition>)> {
        let topic = self.topic;
        let node = ctx.config.node_id;
        let image = ctx.image.current();
        let mut led: HashMap<i32, i32> = HashMap::new();
        if let Some(t) = image.topic(topic) {
            for (index, p) in &t.partitions {
                if p.leader == Some(node) {
                    led.insert(*index, p.leader_epoch.0);
                }
            }
        }
        let mut slots = self.lock();
        slots.retain(|index, slot| {
            let keep = led.get(index) == Some(&slot.leader_epoch());
            if !keep {
                tracing::debug!(
                    topic,
                    partition = index,
                    "no longer coordinator for this partition"
                );
            }
            keep
        });
        let mut start = Vec::new();
        for (index, epoch) in led {
            if slots.contains_key(&index) {
                continue;
            }
            let Some(partition) = ctx.replicas.get(topic, index) else { continue };
            // The local log must be in the leader role at this epoch before anything is written.
            if partition.progress().leader_epoch != Some(epoch) {
                continue;
            }
            slots.insert(index, Slot::Loading { leader_epoch: epoch });
            start.push((index, epoch, partition));
        }
        start
    }

    /// The shard of `index` at `leader_epoch` has loaded `entries` (groups, transactional
    /// ids) since `started`; requests go to `tx` from now on. `false` if leadership moved
    /// while it loaded: the shard must not run.
    pub fn loaded(
        &self,
        index: i32,
        leader_epoch: i32,
        tx: Tx,
        entries: usize,
        started: std::time::Instant,
    ) -> bool {
        let mut slots = self.lock();
        if !matches!(slots.get(&index), Some(Slot::Loading { leader_epoch: e }) if *e == leader_epoch)
        {
            return false;
        }
        slots.insert(index, Slot::Ready { leader_epoch, tx });
        let (topic, elapsed_ms) = (self.topic, started.elapsed().as_millis() as u64);
        if entries > 0 {
            tracing::info!(
                topic,
                partition = index,
                leader_epoch,
                entries,
                elapsed_ms,
                "coordinator loaded its partition"
            );
        } else {
            tracing::debug!(
                topic,
                partition = index,
                leader_epoch,
                elapsed_ms,
                "coordinator took over an empty partition"
            );
        }
        true
    }

    /// The shard of `index` at `leader_epoch` stopped (or failed to load).
    pub fn stopped(&self, index: i32, leader_epoch: i32) {
        let mut slots = self.lock();
        if slots.get(&index).is_some_and(|s| s.leader_epoch() == leader_epoch) {
            slots.remove(&index);
            tracing::debug!(
                topic = self.topic,
                partition = index,
                leader_epoch,
                "coordinator shard stopped"
            );
        }
    }
}

/// Starts a shard with `serve` (which loads the partition, reports [`ShardSlots::loaded`],
/// runs the shard and reports [`ShardSlots::stopped`]) for every partition of the slots' topic
/// this broker comes to lead, on every image change and every [`MANAGER_TICK`], until
/// shutdown.
pub(crate) async fn follow_leadership<Tx, F>(
    ctx: Arc<BrokerCtx>,
    mut shutdown: watch::Receiver<bool>,
    slots: fn(&BrokerCtx) -> &ShardSlots<Tx>,
    serve: fn(Arc<BrokerCtx>, Arc<Partition>, i32, i32) -> F,
) where
    Tx: Clone,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut image_rx = ctx.image.subscribe();
    let mut tick = tokio::time::interval(MANAGER_TICK);
    loop {
        for (index, epoch, partition) in slots(&ctx).reconcile(&ctx) {
            tokio::spawn(serve(ctx.clone(), partition, index, epoch));
        }
        tokio::select! {
            changed = image_rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Runs `read` (which reads the partition's log, e.g. with [`read_log`]) on a blocking thread;
/// `None` (logged) if the log cannot be read.
pub(crate) async fn load<T: Send + 'static>(
    partition: Arc<Partition>,
    read: impl FnOnce(&Partition) -> Result<T, strom_log::LogError> + Send + 'static,
) -> Option<T> {
    let (topic, index) = (partition.topic.clone(), partition.index);
    match tokio::task::spawn_blocking(move || read(&partition)).await {
        Ok(Ok(loaded)) => Some(loaded),
        Ok(Err(e)) => {
            tracing::error!(topic, partition = index, error = %e, "cannot load coordinator partition");
            None
        }
        Err(e) => {
            tracing::error!(topic, partition = index, error = %e, "coordinator load task failed");
            None
        }
    }
}

/// Every record of the partition's local log (the leader's copy is authoritative), in offset
/// order, control records included.
pub(crate) fn read_log(
    partition: &Partition,
    mut visit: impl FnMut(Record),
) -> Result<(), strom_log::LogError> {
    let (start, end) = {
        let log = partition.log()?;
        (log.log_start_offset(), log.log_end_offset())
    };
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
                // Only strom writes these topics, uncompressed; a batch it cannot read is
                // skipped rather than stopping the coordinator for the whole partition.
                tracing::error!(topic = partition.topic, partition = partition.index,
                    offset = next, error = %e, "cannot decode batch; skipping the rest of this read");
                next += 1;
                continue;
            }
        };
        let before = next;
        for set in sets {
            for r in set.records {
                if r.offset < next {
                    continue;
                }
                next = r.offset + 1;
                visit(r);
            }
        }
        if next == before {
            // A read that returned only batches already passed (e.g. empty ones).
            next += 1;
        }
    }
    Ok(())
}
