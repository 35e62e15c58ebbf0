//! The replica manager: opens, reconfigures and deletes local partition logs so that they
//! match the metadata image, and writes the recovery-point checkpoint. What to do is decided
//! by `plan` (pure); this module carries it out, with the file IO (log open and recovery,
//! directory deletes, retention, checkpoints) on blocking threads and never under the
//! partitions map's lock. Only the reconcile opens logs: a handler that finds a log not open
//! yet refuses the request, and the broker reports as applied only the metadata offset it has
//! reconciled, so the controller does not unfence it (or make it a leader) before its logs
//! are open.

mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use strom_log::{checkpoint, FileHandles, Log, LogConfig, TimestampType};
use strom_metadata::config::{BrokerDefaults, MessageTimestampType, TopicConfig};
use strom_metadata::{MetadataDelta, MetadataImage, MetadataOffset, TopicId, TopicImage};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::BrokerConfig;
use crate::errors::BrokerError;
use crate::log_dir::LogDirHealth;
use crate::partition::Partition;
use crate::BrokerCtx;
use plan::{Action, LocalLog};

pub(crate) const RECOVERY_CHECKPOINT: &str = "recovery-point-offset-checkpoint";
/// High watermarks, so a restarted replica does not serve data it cannot know is committed.
pub(crate) const HW_CHECKPOINT: &str = "replication-offset-checkpoint";
/// Log start offsets that DeleteRecords moved inside a segment (Kafka's file and format);
/// only those: the others are their first segment's base offset.
pub(crate) const LOG_START_CHECKPOINT: &str = "log-start-offset-checkpoint";
/// Written into each partition dir so a log is never served under a recreated topic's name.
const PARTITION_METADATA: &str = "partition.metadata";
/// How often logs that do not fsync on ack are flushed and checkpoints written.
const FLUSH_TICK: Duration = Duration::from_secs(10);

/// Partitions a reconcile opens and syncs before it moves to the next ones: a chunk's
/// partitions serve while the next chunk opens.
const RECONCILE_CHUNK: usize = 1024;

/// Blocking threads a reconcile opens logs on at once: opening is mostly file-system metadata
/// work (directory listings, inode creation), which overlaps across threads even on 2 cores.
const OPEN_THREADS: usize = 4;
const _: () = assert!(RECONCILE_CHUNK >= OPEN_THREADS);

/// How soon the reconcile tries again the logs it could not open for want of file
/// descriptors (an open of a log that is not broken, refused until handles free up).
const OPEN_RETRY_EVERY: Duration = Duration::from_secs(1);

type Key = (String, i32);

pub(crate) struct ReplicaManager {
    data_dir: PathBuf,
    /// By topic, so that a change to one topic visits only that topic's logs.
    partitions: RwLock<HashMap<String, BTreeMap<i32, Arc<Partition>>>>,
    /// The offset of the last image whose every action has been carried out: what the broker
    /// reports to the controller as applied (Kafka's rule: unfenced only once caught up).
    reconciled: watch::Sender<MetadataOffset>,
    /// Held while the checkpoints are written: the maintenance loop's write, still running on
    /// its blocking thread when shutdown aborts the loop, and the final one share a file.
    checkpointing: Mutex<()>,
    recovery_points: HashMap<Key, i64>,
    high_watermarks: HashMap<Key, i64>,
    log_starts: HashMap<Key, i64>,
    defaults: BrokerDefaults,
    /// The log directory's health: every partition log reports its storage failures here.
    pub health: Arc<LogDirHealth>,
    /// The log directory's open file handles, shared by all its logs (`strom_log::handles`).
    file_handles: FileHandles,
    /// Topics with a log the reconcile could not open for want of file descriptors: the
    /// reconcile loop plans them again every [`OPEN_RETRY_EVERY`] until they open.
    open_retries: Mutex<BTreeSet<String>>,
    /// Moves whenever a local partition's role changes or a log opens or goes: the ISR check
    /// lists the partitions this broker leads again only then, instead of at every check.
    roles_generation: std::sync::atomic::AtomicU64,
    /// Where leadership changes read the time (the ISR's follower clocks start there).
    clock: Arc<dyn Clock>,
}

/// The effective log settings of a topic (`metadata::config::TopicConfig`: its overrides over
/// the broker defaults), and whether it fsyncs before acknowledging.
pub(crate) fn log_config(
    defaults: &BrokerDefaults,
    image: &MetadataImage,
    topic: &str,
) -> (LogConfig, bool) {
    let c = TopicConfig::effective(image.topic_configs(topic), defaults);
    let config = LogConfig {
        segment_bytes: c.segment_bytes,
        segment_ms: c.segment_ms,
        segment_index_bytes: c.segment_index_bytes,
        index_interval_bytes: c.index_interval_bytes,
        retention_ms: (c.retention_ms >= 0).then_some(c.retention_ms),
        retention_bytes: (c.retention_bytes >= 0).then_some(c.retention_bytes as u64),
        message_timestamp_type: match c.message_timestamp_type {
            MessageTimestampType::CreateTime => TimestampType::CreateTime,
            MessageTimestampType::LogAppendTime => TimestampType::LogAppendTime,
        },
        max_message_bytes: c.max_message_bytes,
        cleanup_policy: strom_log::CleanupPolicy {
            delete: c.cleanup_delete,
            compact: c.cleanup_compact,
        },
        delete_retention_ms: c.delete_retention_ms,
        min_compaction_lag_ms: c.min_compaction_lag_ms,
        max_compaction_lag_ms: c.max_compaction_lag_ms,
        min_cleanable_dirty_ratio: c.min_cleanable_dirty_ratio,
    };
    (config, c.flush_messages <= 1)
}

/// `min.insync.replicas` of a topic: its override, else the broker default.
fn min_insync(defaults: &BrokerDefaults, image: &MetadataImage, topic: &str) -> i32 {
    TopicConfig::effective(image.topic_configs(topic), defaults).min_insync_replicas
}

/// How many role changes one reconcile logs one line each (INFO); past that they are counted
/// into one summary line (each still at DEBUG), so a restart of a node holding 100,000
/// partitions writes a few lines, not 100,000.
const ROLE_LINES_MAX: usize = 32;

/// The role changes of one reconcile, for the log.
#[derive(Default)]
pub(crate) struct RoleLog {
    led: usize,
    followed: usize,
    idle: usize,
}

impl RoleLog {
    fn note(&mut self, p: &Partition, role: &str, leader: Option<i32>, leader_epoch: i32) {
        let seen = self.led + self.followed + self.idle;
        match role {
            "leader" => self.led += 1,
            "follower" => self.followed += 1,
            _ => self.idle += 1,
        }
        let (topic, partition) = (&p.topic, p.index);
        if seen < ROLE_LINES_MAX {
            tracing::info!(%topic, partition, role, leader, leader_epoch, "partition role changed");
        } else {
            tracing::debug!(%topic, partition, role, leader, leader_epoch, "partition role changed");
        }
    }

    /// One line for the changes past [`ROLE_LINES_MAX`].
    fn finish(&self) {
        let total = self.led + self.followed + self.idle;
        if total > ROLE_LINES_MAX {
            tracing::info!(
                leader = self.led,
                follower = self.followed,
                no_leader = self.idle,
                unlisted = total - ROLE_LINES_MAX,
                "partition roles changed (the first {ROLE_LINES_MAX} listed above; each at \
                 DEBUG with RUST_LOG=strom_broker::replica=debug)"
            );
        }
    }
}

/// Puts a local partition in the role the image gives it; a follower joins its leader's
/// fetcher. A partition leaves its fetcher by itself when its role changes (`Partition::follow`).
/// A change moves the replica manager's role generation (the ISR check's list of led partitions).
fn sync_role(
    ctx: &Arc<BrokerCtx>,
    p: &Arc<Partition>,
    node: strom_metadata::NodeId,
    pi: &strom_metadata::PartitionImage,
    now: i64,
    roles: &mut RoleLog,
) {
    let epoch = pi.leader_epoch.0;
    let changed = match pi.leader {
        Some(leader) if leader == node => {
            let replicas = pi.replicas.clone();
            let before = p.leader_view();
            let became = p.lead(node, replicas, pi.isr.clone(), epoch, pi.partition_epoch.0, now);
            if became {
                roles.note(p, "leader", Some(leader.0), epoch);
            } else if let (Some((isr, e)), Some((now_isr, _))) = (before, p.leader_view()) {
                // An ISR change this leader did not ask for (the controller dropped a fenced
                // follower); its own changes are counted when their AlterPartition commits,
                // whichever of the two it sees first.
                if e == epoch {
                    ctx.metrics.isr_changed(Some(isr), now_isr);
                }
            }
            became
        }
        Some(leader) => match p.follow(leader, epoch) {
            Some(stop) => {
                roles.note(p, "follower", Some(leader.0), epoch);
                ctx.fetchers.add(ctx, p, leader, epoch, stop);
                true
            }
            None => false,
        },
        None => {
            let idle = p.idle();
            if idle {
                roles.note(p, "none", None, epoch);
            }
            idle
        }
    };
    if changed {
        ctx.replicas.roles_changed();
    }
}

/// Runs blocking IO from synchronous code on an async worker (the final flush): on a
/// multi-thread runtime the worker hands its other tasks to another thread meanwhile (a
/// current-thread runtime, as in unit tests, cannot).
fn in_place<T>(io: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(io)
        }
        _ => io(),
    }
}

fn read_topic_id(dir: &Path) -> Option<TopicId> {
    let text = std::fs::read_to_string(dir.join(PARTITION_METADATA)).ok()?;
    let hex = text.lines().find_map(|l| l.strip_prefix("topic_id: "))?;
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(TopicId(id))
}

impl ReplicaManager {
    pub fn open(
        config: &BrokerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<ReplicaManager, BrokerError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| BrokerError::DataDir { path: config.data_dir.clone(), source })?;
        let recovery_points = checkpoint::read(&config.data_dir.join(RECOVERY_CHECKPOINT))
            .map_err(BrokerError::Checkpoint)?
            .into_iter()
            .map(|(t, p, o)| ((t, p), o))
            .collect();
        let high_watermarks = checkpoint::read(&config.data_dir.join(HW_CHECKPOINT))
            .map_err(BrokerError::Checkpoint)?
            .into_iter()
            .map(|(t, p, o)| ((t, p), o))
            .collect();
        let log_starts = checkpoint::read(&config.data_dir.join(LOG_START_CHECKPOINT))
            .map_err(BrokerError::Checkpoint)?
            .into_iter()
            .map(|(t, p, o)| ((t, p), o))
            .collect();
        Ok(ReplicaManager {
            data_dir: config.data_dir.clone(),
            partitions: RwLock::new(HashMap::new()),
            reconciled: watch::Sender::new(MetadataOffset(0)),
            checkpointing: Mutex::new(()),
            recovery_points,
            high_watermarks,
            log_starts,
            defaults: config.defaults,
            health: Arc::default(),
            file_handles: FileHandles::new(config.log_open_files_max),
            open_retries: Mutex::default(),
            roles_generation: std::sync::atomic::AtomicU64::new(0),
            clock,
        })
    }

    /// The metadata offset of the last image fully reconciled: every log it places here was
    /// opened (or its open failed and said so), every log it removes deleted. 0 before the
    /// first. Behind the broker's image while a reconcile runs.
    pub fn reconciled_offset(&self) -> watch::Receiver<MetadataOffset> {
        self.reconciled.subscribe()
    }

    /// Topics with a log the reconcile could not open yet and will try again.
    pub fn logs_awaiting_open(&self) -> usize {
        self.open_retries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The open local log of a partition. Only the reconcile opens logs: `None` until it has
    /// reconciled an image that places the partition here.
    pub fn get(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        let map = self.partitions.read().ok()?;
        map.get(topic)?.get(&partition).cloned()
    }

    /// See `roles_generation`.
    fn roles_changed(&self) {
        self.roles_generation.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    fn roles_generation(&self) -> u64 {
        self.roles_generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The open partitions this broker leads.
    fn led(&self) -> Vec<Arc<Partition>> {
        let map = self.partitions.read().unwrap_or_else(PoisonError::into_inner);
        map.values()
            .flat_map(|t| t.values())
            .filter(|p| p.progress().leader_epoch.is_some())
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .map(|m| m.values().flat_map(|t| t.values().cloned()).collect())
            .unwrap_or_default()
    }

    /// The local logs of one topic.
    fn of_topic(&self, topic: &str) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .map(|m| m.get(topic).map(|t| t.values().cloned().collect()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// What this node has open, as the plan sees it: every log, or those of `topics`.
    fn local_logs<'a>(&self, topics: Option<impl Iterator<Item = &'a String>>) -> Vec<LocalLog> {
        let partitions = match topics {
            None => self.all(),
            Some(names) => names.flat_map(|name| self.of_topic(name)).collect(),
        };
        partitions
            .iter()
            .map(|p| LocalLog { topic: p.topic.clone(), index: p.index, topic_id: p.topic_id })
            .collect()
    }

    /// Makes the local logs match `image` (see `plan::plan`); then records `image` as
    /// reconciled. Deletes go one after another; opens and syncs go by chunks of
    /// [`RECONCILE_CHUNK`] partitions, the chunk's opens spread over [`OPEN_THREADS`] blocking
    /// threads, then its syncs, so a restart or a large creation opens logs in parallel and
    /// the partitions of a chunk serve before the next chunk opens. An open that fails does not
    /// hold the offset back: a storage failure takes the whole node down (`log_dir`), any
    /// other leaves that one partition unserved, and neither may keep the broker fenced.
    async fn reconcile(
        &self,
        ctx: &Arc<BrokerCtx>,
        image: &Arc<MetadataImage>,
        delta: &MetadataDelta,
        first: bool,
    ) {
        let node = ctx.image.node;
        let local = self.local_logs((!first && !delta.whole).then(|| delta.topics.iter()));
        let mut opens = Vec::new();
        let mut syncs = Vec::new();
        let mut roles = RoleLog::default();
        for action in plan::plan(image, delta, first, node, &local) {
            match action {
                Action::Open { topic, index, .. } => opens.push((topic, index)),
                Action::Sync { topic, index } => {
                    // The plan puts a partition's open before its sync: every sync of a chunk
                    // has its log opened by this chunk or an earlier one.
                    syncs.push((topic, index));
                    if syncs.len() == RECONCILE_CHUNK {
                        self.open_and_sync(ctx, image, &mut opens, &mut syncs, &mut roles).await;
                    }
                }
                Action::Delete(log) => {
                    self.open_and_sync(ctx, image, &mut opens, &mut syncs, &mut roles).await;
                    self.delete(ctx, &log).await;
                }
                Action::DeleteStrays => {
                    self.open_and_sync(ctx, image, &mut opens, &mut syncs, &mut roles).await;
                    let (data_dir, image) = (self.data_dir.clone(), image.clone());
                    let deleted = tokio::task::spawn_blocking(move || {
                        delete_strays(&data_dir, &image, node);
                    });
                    if let Err(e) = deleted.await {
                        tracing::error!(error = %e, "deleting stray logs failed");
                    }
                }
            }
        }
        self.open_and_sync(ctx, image, &mut opens, &mut syncs, &mut roles).await;
        roles.finish();
        self.reconciled.send_modify(|reconciled| {
            debug_assert!(image.offset >= *reconciled, "metadata images only move forward");
            *reconciled = image.offset.max(*reconciled);
        });
    }

    /// Opens the logs of `opens` on up to [`OPEN_THREADS`] blocking threads (each partition
    /// on one thread only), then brings every partition of `syncs` to the image. Empties both.
    async fn open_and_sync(
        &self,
        ctx: &Arc<BrokerCtx>,
        image: &Arc<MetadataImage>,
        opens: &mut Vec<(String, i32)>,
        syncs: &mut Vec<(String, i32)>,
        roles: &mut RoleLog,
    ) {
        if !opens.is_empty() {
            let per_thread = opens.len().div_ceil(OPEN_THREADS);
            let mut tasks = Vec::with_capacity(OPEN_THREADS);
            while !opens.is_empty() {
                let chunk: Vec<(String, i32)> =
                    opens.drain(..per_thread.min(opens.len())).collect();
                let (ctx, image) = (ctx.clone(), image.clone());
                tasks.push(tokio::task::spawn_blocking(move || {
                    for (topic, index) in chunk {
                        let Some(topic) = image.topic(&topic) else { continue };
                        match ctx.replicas.ensure(&image, topic, index) {
                            Ok(_) => {}
                            Err(
                                e @ BrokerError::LogOpen {
                                    source: strom_log::LogError::FileHandlesExhausted { .. },
                                    ..
                                },
                            ) => {
                                tracing::warn!(error = %e, "cannot open partition yet; retrying");
                                ctx.replicas.retry_open(&topic.name);
                            }
                            Err(e) => tracing::error!(error = %e, "cannot open partition"),
                        }
                    }
                }));
            }
            for task in tasks {
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "cannot open partitions");
                }
            }
        }
        for (topic, index) in syncs.drain(..) {
            self.sync(ctx, image, &topic, index, roles);
        }
    }

    fn retry_open(&self, topic: &str) {
        self.open_retries.lock().unwrap_or_else(PoisonError::into_inner).insert(topic.to_owned());
    }

    /// The topics to plan again for logs that could not be opened yet; forgets them (a
    /// failure adds them back).
    fn take_open_retries(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.open_retries.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Opens (recovering if needed) the log of a partition this node replicates and adds it to
    /// the map. Blocking IO, on a blocking thread; only the reconcile calls it, each partition
    /// from one thread only, so no two `Log`s are ever open on one directory.
    fn ensure(
        &self,
        image: &MetadataImage,
        topic: &TopicImage,
        index: i32,
    ) -> Result<Arc<Partition>, BrokerError> {
        let key = (topic.name.clone(), index);
        if let Some(p) = self.get(&topic.name, index).filter(|p| p.topic_id == topic.id) {
            return Ok(p);
        }
        let (config, fsync_on_ack) = log_config(&self.defaults, image, &topic.name);
        let log = OpenJob {
            topic: &topic.name,
            index,
            topic_id: topic.id,
            dir: self.data_dir.join(strom_log::partition_dir_name(&topic.name, index)),
            config,
            recovery_point: self.recovery_points.get(&key).copied().unwrap_or(0),
            log_start: self.log_starts.get(&key).copied().unwrap_or(0),
            health: &self.health,
            file_handles: &self.file_handles,
        }
        .run()?;
        let p = Partition::new(
            topic.name.clone(),
            index,
            topic.id,
            log,
            fsync_on_ack,
            self.high_watermarks.get(&key).copied().unwrap_or(0),
            self.health.clone(),
        );
        let old = self
            .partitions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(topic.name.clone())
            .or_default()
            .insert(index, p.clone());
        if let Some(old) = old {
            old.close();
        }
        self.roles_changed();
        tracing::debug!(topic = %topic.name, partition = index, "partition log open");
        Ok(p)
    }

    /// Brings an open log's settings and role to the image.
    fn sync(
        &self,
        ctx: &Arc<BrokerCtx>,
        image: &MetadataImage,
        topic: &str,
        index: i32,
        roles: &mut RoleLog,
    ) {
        let Some(t) = image.topic(topic) else { return };
        let Some(part) = t.partitions.get(&index) else { return };
        // Not open: its open failed (and said so).
        let Some(p) = self.get(topic, index).filter(|p| p.topic_id == t.id) else { return };
        let (config, fsync) = log_config(&self.defaults, image, topic);
        p.set_fsync_on_ack(fsync);
        p.set_min_insync(min_insync(&self.defaults, image, topic));
        sync_role(ctx, &p, ctx.image.node, part, self.clock.now_ms(), roles);
        if let Ok(mut log) = p.log() {
            if log.config() != &config {
                if let Err(e) = log.set_config(config) {
                    tracing::warn!(topic, error = %e, "config not applied");
                }
            }
        };
    }

    /// Closes a local log and deletes its directory (on a blocking thread).
    async fn delete(&self, ctx: &Arc<BrokerCtx>, log: &LocalLog) {
        let Some(p) = self.get(&log.topic, log.index).filter(|p| p.topic_id == log.topic_id) else {
            return;
        };
        {
            let mut map = self.partitions.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(topic) = map.get_mut(&p.topic) {
                // Only this log: a newer one opened under the same name stays.
                if topic.get(&p.index).is_some_and(|current| Arc::ptr_eq(current, &p)) {
                    topic.remove(&p.index);
                }
                if topic.is_empty() {
                    map.remove(&p.topic);
                }
            }
        }
        ctx.fetchers.remove(&p);
        p.close();
        self.roles_changed();
        let dir = self.data_dir.join(strom_log::partition_dir_name(&p.topic, p.index));
        tracing::info!(topic = %p.topic, partition = p.index, "deleting partition log");
        let shown = dir.display().to_string();
        match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(dir = %shown, error = %e, "cannot delete partition dir"),
            Err(e) => tracing::warn!(dir = %shown, error = %e, "cannot delete partition dir"),
        }
    }

    /// Writes the log start offset checkpoint: what DeleteRecords waits for before it
    /// answers. Blocking IO.
    pub fn write_log_start_checkpoint(&self) -> Result<(), BrokerError> {
        let _writing = self.checkpointing.lock().unwrap_or_else(PoisonError::into_inner);
        self.write_log_starts()
    }

    fn write_log_starts(&self) -> Result<(), BrokerError> {
        let entries: Vec<(String, i32, i64)> = self
            .all()
            .iter()
            .filter_map(|p| {
                let start = p.log().ok()?.log_start_offset_to_checkpoint()?;
                Some((p.topic.clone(), p.index, start))
            })
            .collect();
        checkpoint::write(&self.data_dir.join(LOG_START_CHECKPOINT), &entries)
            .map_err(BrokerError::Checkpoint)
    }

    /// Writes the recovery-point, high-watermark and log start checkpoints. Blocking IO.
    pub fn write_checkpoint(&self) -> Result<(), BrokerError> {
        let _writing = self.checkpointing.lock().unwrap_or_else(PoisonError::into_inner);
        self.write_log_starts()?;
        let entries: Vec<(String, i32, i64)> = self
            .all()
            .iter()
            .filter_map(|p| p.recovery_point().map(|o| (p.topic.clone(), p.index, o)))
            .collect();
        checkpoint::write(&self.data_dir.join(RECOVERY_CHECKPOINT), &entries)
            .map_err(BrokerError::Checkpoint)?;
        let hws: Vec<(String, i32, i64)> = self
            .all()
            .iter()
            .map(|p| (p.topic.clone(), p.index, p.progress().high_watermark))
            .collect();
        checkpoint::write(&self.data_dir.join(HW_CHECKPOINT), &hws).map_err(BrokerError::Checkpoint)
    }

    /// Flushes every log and writes the recovery points: a clean shutdown recovers nothing.
    /// Blocking IO, in `block_in_place`.
    pub async fn close_all(&self) -> Result<(), BrokerError> {
        in_place(|| {
            for p in self.all() {
                p.close();
                if let Err(e) = p.flush_now() {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "final flush failed");
                }
            }
            self.write_checkpoint()
        })
    }
}

/// What opening one partition log needs.
struct OpenJob<'a> {
    topic: &'a str,
    index: i32,
    topic_id: TopicId,
    dir: PathBuf,
    config: LogConfig,
    recovery_point: i64,
    /// From the log start checkpoint (0: none).
    log_start: i64,
    health: &'a LogDirHealth,
    file_handles: &'a FileHandles,
}

impl OpenJob<'_> {
    /// Opens (recovering if needed) the log and marks its directory with the topic id.
    /// Blocking IO.
    fn run(self) -> Result<Log, BrokerError> {
        let OpenJob {
            topic,
            index,
            topic_id,
            dir,
            config,
            recovery_point,
            log_start,
            health,
            file_handles,
        } = self;
        // An image written before a name was reserved could hold it: its directory may be the
        // node's own state (the metadata log), so never open it as a partition.
        strom_metadata::control::validate_topic_name(topic)
            .map_err(|reason| BrokerError::ReservedTopic { topic: topic.to_owned(), reason })?;
        let marked = read_topic_id(&dir);
        if marked.is_some_and(|id| id != topic_id) {
            tracing::warn!(dir = %dir.display(), "log belongs to a deleted topic of the same name; removing it");
            let _ = std::fs::remove_dir_all(&dir);
        }
        let log =
            Log::open_at(&dir, config, recovery_point, log_start, file_handles).map_err(|e| {
                if e.is_storage_failure() {
                    // A log that cannot be opened as it was left (IO errors, damage below the
                    // recovery point, a missing segment) is a failed disk, not a missing topic.
                    health.fail(&format!("opening {topic}-{index}"), &e);
                }
                BrokerError::LogOpen { topic: topic.to_owned(), partition: index, source: e }
            })?;
        // A restart finds most logs marked already: no write for them.
        if marked != Some(topic_id) {
            std::fs::write(
                dir.join(PARTITION_METADATA),
                format!("version: 0\ntopic_id: {topic_id}\n"),
            )
            .map_err(|source| {
                health.fail(&format!("writing {}", dir.display()), &source);
                BrokerError::DataDir { path: dir.clone(), source }
            })?;
        }
        Ok(log)
    }
}

/// Deletes the logs left on disk for topics deleted while this node was down. Blocking IO.
fn delete_strays(data_dir: &Path, image: &MetadataImage, node: strom_metadata::NodeId) {
    let Ok(entries) = std::fs::read_dir(data_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some((topic, index)) = strom_log::parse_partition_dir_name(&name) else { continue };
        if !entry.path().join(PARTITION_METADATA).exists() {
            continue; // not a partition dir of ours (e.g. __cluster_metadata-0)
        }
        let keep = image
            .topic(&topic)
            .and_then(|t| t.partitions.get(&index))
            .is_some_and(|p| p.replicas.contains(&node));
        if !keep {
            tracing::info!(dir = %name, "deleting log of a topic that no longer exists");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Follows the image and reconciles local logs after every change.
pub(crate) async fn reconcile_loop(ctx: Arc<BrokerCtx>, mut shutdown: watch::Receiver<bool>) {
    let mut rx = ctx.image.subscribe();
    let mut first = true;
    let mut retry = false;
    loop {
        let (image, mut delta) = ctx.image.take_changes(&mut rx);
        if retry {
            delta.topics.extend(ctx.replicas.take_open_retries());
        }
        if image.offset.0 > 0 {
            // Throttles first: a replica this change adds fetches under the image's rates.
            ctx.replication_quotas.follow(&image, ctx.config.node_id, ctx.clock.now_ms());
            ctx.replicas.reconcile(&ctx, &image, &delta, first).await;
            first = false;
        }
        let waiting =
            !ctx.replicas.open_retries.lock().unwrap_or_else(PoisonError::into_inner).is_empty();
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() { return }
                retry = waiting;
            }
            _ = tokio::time::sleep(OPEN_RETRY_EVERY), if waiting => retry = true,
            _ = shutdown.changed() => return,
        }
    }
}

/// Retention, periodic flushes of logs that do not fsync on ack, and checkpoints.
pub(crate) async fn maintenance_loop(ctx: Arc<BrokerCtx>, mut shutdown: watch::Receiver<bool>) {
    let retention_every = Duration::from_millis(ctx.config.retention_check_interval_ms.max(100));
    let mut flush_tick = tokio::time::interval(FLUSH_TICK.min(retention_every));
    let mut last_retention = tokio::time::Instant::now();
    // At most one compaction pass at a time, over the compacted logs one after another.
    let mut compaction: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = flush_tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now_ms = ctx.clock.now_ms();
        let retention_due = last_retention.elapsed() >= retention_every;
        // Retention deletes segment files: off the async threads.
        let retained = {
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || apply_retention(&ctx, retention_due, now_ms))
        };
        if let Err(e) = retained.await {
            tracing::warn!(error = %e, "retention failed");
        }
        // Compaction rewrites whole segments: off the async threads, and holding a partition's
        // lock only to snapshot it and to swap each cleaned group in, so appends go on.
        if retention_due && compaction.as_ref().is_none_or(|task| task.is_finished()) {
            let compacted: Vec<Arc<Partition>> = ctx
                .replicas
                .all()
                .into_iter()
                .filter(|p| p.log().is_ok_and(|log| log.config().cleanup_policy.compact))
                .collect();
            if !compacted.is_empty() {
                let (ctx, stop) = (ctx.clone(), shutdown.clone());
                compaction = Some(tokio::task::spawn_blocking(move || {
                    for p in compacted {
                        // Stop at shutdown; skip a partition deleted or reopened meanwhile.
                        let live = || {
                            !*stop.borrow()
                                && ctx
                                    .replicas
                                    .get(&p.topic, p.index)
                                    .is_some_and(|current| Arc::ptr_eq(&current, &p))
                        };
                        if !live() {
                            continue;
                        }
                        let high_watermark = p.progress().high_watermark;
                        match strom_log::compact_locked(|| p.log(), now_ms, high_watermark, live) {
                            Ok(stats) if stats.segments_replaced > 0 => tracing::info!(
                                topic = %p.topic,
                                partition = p.index,
                                segments_replaced = stats.segments_replaced,
                                segments_written = stats.segments_written,
                                records_superseded = stats.records_superseded,
                                tombstones_removed = stats.tombstones_removed,
                                bytes_before = stats.bytes_before,
                                bytes_after = stats.bytes_after,
                                "compacted log"
                            ),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "compaction failed")
                            }
                        }
                    }
                }));
            }
        }
        if retention_due {
            last_retention = tokio::time::Instant::now();
        }
        let written = {
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || ctx.replicas.write_checkpoint())
        };
        match written.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                ctx.replicas.health.fail("writing the recovery and high watermark checkpoints", &e)
            }
            Err(e) => tracing::error!(error = %e, "writing the checkpoints failed"),
        }
    }
}

/// Asks every log for its periodic flush and, when due, applies retention. Blocking IO.
fn apply_retention(ctx: &BrokerCtx, retention_due: bool, now_ms: i64) {
    let producer_expiration_ms =
        i64::try_from(ctx.config.defaults.producer_id_expiration_ms).unwrap_or(i64::MAX);
    for p in ctx.replicas.all() {
        p.request_flush();
        if retention_due {
            if let Ok(mut log) = p.log() {
                // producer.id.expiration.ms, checked on the retention pass (Kafka checks on its
                // own ten-minute interval).
                let expired = log.expire_producers(now_ms, producer_expiration_ms);
                if expired > 0 {
                    tracing::debug!(topic = %p.topic, partition = p.index, expired, "idle producers forgotten");
                }
                match log.apply_retention(now_ms) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(topic = %p.topic, partition = p.index, segments = n, "retention deleted segments");
                        // The log start offset moved: fetch sessions answer it.
                        p.changed();
                    }
                    Err(e) => {
                        tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "retention failed")
                    }
                }
            }
        }
    }
}

/// How often leaders check whether their ISR should change.
const ISR_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Asks the controller to shrink or expand the ISR of partitions this broker leads: every
/// change due at a check goes in one AlterPartition request (as Kafka's AlterPartitionManager
/// batches them), so a broker rejoining the ISR of 60,000 partitions costs a few commits, not
/// 60,000. One request is in flight at a time; changes due meanwhile wait for the next check.
pub(crate) async fn isr_loop(ctx: Arc<BrokerCtx>, mut shutdown: watch::Receiver<bool>) {
    use strom_metadata::control::{
        AlterPartitionRequest, ControlRequest, ControlResponse, IsrChange,
        ISR_CHANGES_PER_REQUEST_MAX,
    };
    let mut tick = tokio::time::interval(ISR_CHECK_EVERY);
    let lag_max_ms = ctx.config.replica_lag_time_max_ms as i64;
    let mut in_flight: Option<tokio::task::JoinHandle<()>> = None;
    let mut led: Vec<Arc<Partition>> = Vec::new();
    let mut led_generation: Option<u64> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let broker_epoch = ctx.broker_epoch.load(std::sync::atomic::Ordering::Relaxed);
        if broker_epoch < 0 || in_flight.as_ref().is_some_and(|task| !task.is_finished()) {
            continue;
        }
        let now = ctx.clock.now_ms();
        let image = ctx.image.current();
        let mut changes = Vec::new();
        let mut proposed = Vec::new();
        // Roles change only in the reconcile: the led partitions are listed again only when
        // the generation moved (a node holding 100,000 replicas leads a third of them).
        let generation = ctx.replicas.roles_generation();
        if led_generation != Some(generation) {
            led = ctx.replicas.led();
            led_generation = Some(generation);
        }
        for p in led.iter().cloned() {
            if changes.len() == ISR_CHANGES_PER_REQUEST_MAX {
                break;
            }
            let proposal = p.propose_isr(now, lag_max_ms, |r| image.is_live(r));
            let Some((new_isr, leader_epoch, partition_epoch)) = proposal else { continue };
            tracing::debug!(topic = %p.topic, partition = p.index,
                isr = ?new_isr.iter().map(|n| n.0).collect::<Vec<_>>(), "asking the controller to change the ISR");
            changes.push(IsrChange {
                topic: p.topic.clone(),
                partition: p.index,
                leader_epoch,
                partition_epoch,
                new_isr,
            });
            proposed.push((p, leader_epoch));
        }
        if changes.is_empty() {
            continue;
        }
        // One line per request: after a broker returns, thousands of partitions change at once.
        tracing::info!(
            partitions = changes.len(),
            first = %format_args!("{}-{}", changes[0].topic, changes[0].partition),
            "asking the controller to change ISRs"
        );
        let request = ControlRequest::AlterPartition(AlterPartitionRequest {
            broker_id: ctx.image.node,
            broker_epoch: strom_metadata::BrokerEpoch(broker_epoch),
            changes,
        });
        let ctx = ctx.clone();
        in_flight = Some(tokio::spawn(async move {
            // The changes that did not commit may be proposed again at a later check.
            let failed = |p: &Partition| {
                p.with_role(|role| {
                    if let crate::partition::Role::Leader(state) = role {
                        state.isr_change_failed();
                    }
                });
            };
            match ctx.controller.submit(request).await {
                Ok(ControlResponse::AlterPartition(reply)) => {
                    let mut refused = 0;
                    let mut first_refusal = None;
                    for ((p, leader_epoch), item) in proposed.iter().zip(reply.partitions) {
                        match item.result {
                            Ok(changed) => {
                                tracing::debug!(topic = %p.topic, partition = p.index,
                                    isr = ?changed.isr.iter().map(|n| n.0).collect::<Vec<_>>(),
                                    partition_epoch = changed.partition_epoch, "ISR changed");
                                let before = p.leader_view().map(|(isr, _)| isr);
                                ctx.metrics.isr_changed(before, changed.isr.len());
                                p.isr_change_committed(
                                    *leader_epoch,
                                    changed.partition_epoch,
                                    changed.isr,
                                );
                            }
                            // Refused for this partition (a stale epoch: the metadata that
                            // moved it is on its way; a replica not eligible yet): asked
                            // again only once the metadata changes the partition or the
                            // retry interval has passed, as Kafka's leader waits for its
                            // next metadata. Asking at every check would keep the controller
                            // deciding the same refusals while the broker catches up.
                            Err(e) => {
                                tracing::debug!(topic = %p.topic, partition = p.index,
                                    error = %e, "ISR change refused");
                                refused += 1;
                                first_refusal
                                    .get_or_insert_with(|| format!("{}-{}: {e}", p.topic, p.index));
                            }
                        }
                    }
                    if let Some(first) = first_refusal {
                        tracing::warn!(
                            refused,
                            first = %first,
                            "ISR changes refused; asked again after the partitions' next \
                             metadata change (or {} s)",
                            crate::isr::ISR_CHANGE_RETRY_MS / 1000
                        );
                    }
                }
                Ok(other) => {
                    tracing::error!(reply = ?other, "AlterPartition answered with another reply");
                    proposed.iter().for_each(|(p, _)| failed(p));
                }
                Err(e) => {
                    tracing::warn!(partitions = proposed.len(), error = %e, "ISR changes refused");
                    proposed.iter().for_each(|(p, _)| failed(p));
                }
            }
        }));
    }
}

#[cfg(test)]
mod config_tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use strom_log::{CleanupPolicy, LogConfig, TimestampType};
    use strom_metadata::config::{BrokerDefaults, BROKER_DEFAULTS, TOPIC_CONFIGS};
    use strom_metadata::records::ConfigResourceType;
    use strom_metadata::{MetadataImage, NodeId, TopicId};

    use super::{log_config, min_insync};
    use crate::partition::Partition;

    fn image_with(overrides: &[(&str, &str)]) -> MetadataImage {
        let mut image = MetadataImage::default();
        let configs: BTreeMap<String, String> =
            overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Arc::make_mut(&mut image.configs)
            .insert((ConfigResourceType::ConfigResourceTopic as i32, "t".into()), configs);
        image
    }

    /// Every accepted topic config reaches the log (or the partition): the log's own tests
    /// show what each setting does.
    #[test]
    fn every_topic_config_reaches_the_log_or_the_partition() {
        let overrides = [
            ("cleanup.policy", "compact,delete"),
            ("compression.type", "producer"),
            ("delete.retention.ms", "11"),
            ("flush.messages", "5"),
            ("follower.replication.throttled.replicas", "0:2"),
            ("index.interval.bytes", "12"),
            ("leader.replication.throttled.replicas", "*"),
            ("max.compaction.lag.ms", "13"),
            ("max.message.bytes", "14"),
            ("message.timestamp.type", "LogAppendTime"),
            ("min.cleanable.dirty.ratio", "0.25"),
            ("min.compaction.lag.ms", "15"),
            ("min.insync.replicas", "2"),
            ("preallocate", "false"),
            ("retention.bytes", "16"),
            ("retention.ms", "17"),
            ("segment.bytes", "18"),
            ("segment.index.bytes", "19"),
            ("segment.ms", "20"),
            ("unclean.leader.election.enable", "true"),
        ];
        let mut keys: Vec<&str> = overrides.iter().map(|(k, _)| *k).collect();
        keys.sort();
        let mut table: Vec<&str> = TOPIC_CONFIGS.iter().map(|d| d.name).collect();
        table.sort();
        assert_eq!(keys, table, "a topic config without a test here");
        let image = image_with(&overrides);
        let (config, fsync_on_ack) = log_config(&BROKER_DEFAULTS, &image, "t");
        assert_eq!(
            config,
            LogConfig {
                segment_bytes: 18,
                segment_ms: 20,
                segment_index_bytes: 19,
                index_interval_bytes: 12,
                retention_ms: Some(17),
                retention_bytes: Some(16),
                message_timestamp_type: TimestampType::LogAppendTime,
                max_message_bytes: 14,
                cleanup_policy: CleanupPolicy { delete: true, compact: true },
                delete_retention_ms: 11,
                min_compaction_lag_ms: 15,
                max_compaction_lag_ms: 13,
                min_cleanable_dirty_ratio: 0.25,
            }
        );
        assert!(!fsync_on_ack, "flush.messages > 1 acknowledges before the fsync");
        assert_eq!(min_insync(&BROKER_DEFAULTS, &image, "t"), 2);
        // unclean.leader.election.enable is the controller's: metadata::control's elections.
        // The two *.replication.throttled.replicas are the replication quotas':
        // replication_quota's tests.
        // compression.type and preallocate accept only what strom does (validation refuses
        // the rest, by name).
    }

    /// `flush.messages`: 1 acknowledges (moves the high watermark) only after an fsync; more
    /// acknowledges what is written, and the periodic flush makes it durable.
    /// On a current-thread runtime the partition's flusher task cannot run between the append
    /// and the check.
    #[tokio::test]
    async fn flush_messages_decides_whether_an_append_waits_for_the_fsync() {
        let batch =
            bytes::Bytes::from(strom_protocol::batch::test_support::build_batch(0, &[1], 0));
        for (flush_messages, acked_before_the_fsync) in [("1", false), ("5", true)] {
            let image = image_with(&[("flush.messages", flush_messages)]);
            let (config, fsync_on_ack) = log_config(&BROKER_DEFAULTS, &image, "t");
            let dir = tempfile::tempdir().unwrap();
            let log = strom_log::Log::open(
                dir.path(),
                config,
                0,
                &strom_log::FileHandles::new(strom_log::FILE_HANDLES_MIN),
            )
            .unwrap();
            let p = Partition::new(
                "t".into(),
                0,
                TopicId([1; 16]),
                log,
                fsync_on_ack,
                0,
                Arc::default(),
            );
            let me = NodeId(1);
            p.lead(me, vec![me], vec![me], 0, 0, 0);
            p.append(&batch, 0, 0).unwrap();
            let acked = p.progress().high_watermark == 1;
            assert_eq!(acked, acked_before_the_fsync, "flush.messages={flush_messages}");
            p.flush_now().unwrap();
            assert_eq!(p.progress().high_watermark, 1);
        }
    }

    #[test]
    fn a_topic_without_overrides_gets_the_brokers_settings() {
        let broker = BrokerDefaults {
            log_segment_bytes: 2 << 20,
            log_retention_ms: -1,
            log_flush_interval_messages: 1,
            min_insync_replicas: 2,
            message_max_bytes: 4096,
            ..BROKER_DEFAULTS
        };
        let image = image_with(&[]);
        let (config, fsync_on_ack) = log_config(&broker, &image, "t");
        assert_eq!(
            (config.segment_bytes, config.retention_ms, config.max_message_bytes),
            (2 << 20, None, 4096)
        );
        assert!(fsync_on_ack);
        assert_eq!(config.segment_ms, 7 * 24 * 60 * 60 * 1000);
        assert_eq!(min_insync(&broker, &image, "t"), 2);
        // strom-log's own defaults (its tests' starting point) are the same facts.
        assert_eq!(log_config(&BROKER_DEFAULTS, &image, "t"), (LogConfig::default(), true));
    }
}

/// A broker context around a replica manager on `data_dir`, fed by a listener, for unit tests
/// of the reconcile and of what handlers find: no listener bound, no task started.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use strom_metadata::config::BROKER_DEFAULTS;
    use strom_metadata::control::{ControlRequest, ControlResponse};
    use strom_metadata::records::{
        metadata_record::Record, MetadataRecord, PartitionRecord, TopicRecord,
    };
    use strom_metadata::{
        BoxFuture, ControlError, ControllerClient, MetadataImage, MetadataListener, MetadataOffset,
        NodeId,
    };

    use super::ReplicaManager;
    use crate::config::{BrokerConfig, ConnectionLimits, GroupSettings};
    use crate::image::ImageListener;
    use crate::BrokerCtx;

    pub const ME: NodeId = NodeId(1);

    /// The reconcile asks the controller nothing.
    struct NoController;

    impl ControllerClient for NoController {
        fn submit(&self, _: ControlRequest) -> BoxFuture<Result<ControlResponse, ControlError>> {
            Box::pin(async { Err(ControlError::NotController) })
        }
    }

    pub fn ctx(listener: &ImageListener, data_dir: &std::path::Path) -> Arc<BrokerCtx> {
        let config = BrokerConfig {
            node_id: ME,
            cluster_id: "test".into(),
            data_dir: data_dir.to_owned(),
            kafka_addr: ([127, 0, 0, 1], 0).into(),
            connections: ConnectionLimits::default(),
            inter_broker: None,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 0,
            rack: None,
            socket_request_max_bytes: 100 << 20,
            fetch_max_bytes: crate::FETCH_MAX_BYTES_DEFAULT,
            max_incremental_fetch_session_cache_slots: crate::FETCH_SESSION_CACHE_SLOTS_DEFAULT,
            auto_create_topics_enable: false,
            replica_lag_time_max_ms: 30_000,
            retention_check_interval_ms: 300_000,
            defaults: BROKER_DEFAULTS,
            static_configs: Vec::new(),
            groups: GroupSettings::default(),
            transactions: strom_metadata::config::TRANSACTION_DEFAULTS,
            log_open_files_max: strom_log::FILE_HANDLES_MIN,
            consumer_lag_metrics: false,
        };
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(strom_testkit::ManualClock::at(0));
        Arc::new(BrokerCtx {
            image: listener.cell(),
            replicas: ReplicaManager::open(&config, clock.clone()).expect("opens"),
            controller: Arc::new(NoController),
            controller_id: std::sync::atomic::AtomicI32::new(ME.0),
            broker_epoch: std::sync::atomic::AtomicI64::new(-1),
            groups: crate::group::Coordinator::default(),
            fetchers: crate::fetcher::FetcherManager::default(),
            fetch_memory: crate::fetch_memory::FetchMemory::new(),
            fetch_sessions: crate::fetch_session::FetchSessions::new(1, 0),
            producer_ids: Arc::new(crate::producer_ids::ProducerIdManager::new(
                ME,
                Arc::new(crate::producer_ids::ControllerBlocks(Arc::new(NoController))),
                clock.clone(),
            )),
            txn: crate::txn::TxnCoordinator::new(crate::txn::MarkerSender::new().0),
            quotas: crate::quota::ClientQuotaManager::default(),
            replication_quotas: crate::replication_quota::ReplicationQuotaManager::default(),
            metrics: Arc::default(),
            clock,
            config,
        })
    }

    /// Topic `name` with id `[id; 16]` and one partition, led by this node.
    pub fn created(name: &str, id: u8) -> Vec<Record> {
        vec![
            Record::Topic(TopicRecord { name: name.into(), topic_id: vec![id; 16] }),
            Record::Partition(PartitionRecord {
                topic_id: vec![id; 16],
                partition_id: 0,
                replicas: vec![ME.0],
                isr: vec![ME.0],
                leader: ME.0,
                leader_epoch: 0,
                partition_epoch: 0,
                ..Default::default()
            }),
        ]
    }

    /// Commits `records` at `offset` to the listener, as the controller does.
    pub fn commit(
        listener: &ImageListener,
        image: &mut MetadataImage,
        offset: u64,
        records: &[Record],
    ) {
        let records: Vec<MetadataRecord> =
            records.iter().map(|r| MetadataRecord { record: Some(r.clone()) }).collect();
        image.apply_batch(MetadataOffset(offset), &records).expect("applies");
        listener.on_commit(MetadataOffset(offset), &records, Arc::new(image.clone()));
    }

    /// One pass of the reconcile loop.
    pub async fn reconcile_once(
        ctx: &Arc<BrokerCtx>,
        rx: &mut tokio::sync::watch::Receiver<Arc<MetadataImage>>,
        first: bool,
    ) {
        let (image, delta) = ctx.image.take_changes(rx);
        ctx.replicas.reconcile(ctx, &image, &delta, first).await;
    }
}

#[cfg(test)]
mod reconcile_tests {
    use strom_metadata::records::{metadata_record::Record, RemoveTopicRecord};
    use strom_metadata::{MetadataImage, MetadataOffset};

    use super::test_support::{commit, created, ctx, reconcile_once};
    use crate::image::ImageListener;

    /// The offset a broker reports as applied (and so whether it may be unfenced) waits for
    /// its logs: an image received but not reconciled is not applied.
    #[tokio::test]
    async fn the_reconciled_offset_trails_the_image_until_its_logs_match_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = ImageListener::new(super::test_support::ME);
        let ctx = ctx(&listener, dir.path());
        let mut rx = ctx.image.subscribe();
        let mut image = MetadataImage::default();
        let log_dir = dir.path().join(strom_log::partition_dir_name("a", 0));

        commit(&listener, &mut image, 5, &created("a", 7));
        assert_eq!(ctx.image.current().offset, MetadataOffset(5));
        assert_eq!(
            *ctx.replicas.reconciled_offset().borrow(),
            MetadataOffset(0),
            "nothing applied yet"
        );
        assert!(ctx.replicas.get("a", 0).is_none());

        reconcile_once(&ctx, &mut rx, true).await;
        assert_eq!(*ctx.replicas.reconciled_offset().borrow(), MetadataOffset(5));
        let p = ctx.replicas.get("a", 0).expect("open once reconciled");
        assert!(p.leader_view().is_some(), "in the role the image gives it");
        assert!(log_dir.exists());

        // Deleted: the log stays, and so does the applied offset, until the next reconcile.
        let remove = Record::RemoveTopic(RemoveTopicRecord { topic_id: vec![7; 16] });
        commit(&listener, &mut image, 6, &[remove]);
        assert_eq!(*ctx.replicas.reconciled_offset().borrow(), MetadataOffset(5));
        assert!(ctx.replicas.get("a", 0).is_some());
        reconcile_once(&ctx, &mut rx, false).await;
        assert_eq!(*ctx.replicas.reconciled_offset().borrow(), MetadataOffset(6));
        assert!(ctx.replicas.get("a", 0).is_none());
        assert!(!log_dir.exists());
        ctx.replicas.close_all().await.expect("closes");
    }

    /// A creation larger than a reconcile chunk opens in several chunks, on several threads:
    /// every partition ends up open, in its role, and the image reconciled.
    #[tokio::test]
    async fn a_creation_of_several_chunks_opens_and_syncs_every_partition() {
        use strom_metadata::records::{PartitionRecord, TopicRecord};
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = ImageListener::new(super::test_support::ME);
        let ctx = ctx(&listener, dir.path());
        let mut rx = ctx.image.subscribe();
        let mut image = MetadataImage::default();
        let me = super::test_support::ME.0;
        let partitions = (2 * super::RECONCILE_CHUNK + 3) as i32;
        let mut records =
            vec![Record::Topic(TopicRecord { name: "big".into(), topic_id: vec![9; 16] })];
        records.extend((0..partitions).map(|partition_id| {
            Record::Partition(PartitionRecord {
                topic_id: vec![9; 16],
                partition_id,
                replicas: vec![me],
                isr: vec![me],
                leader: me,
                leader_epoch: 0,
                partition_epoch: 0,
                ..Default::default()
            })
        }));
        commit(&listener, &mut image, 3, &records);
        reconcile_once(&ctx, &mut rx, true).await;
        assert_eq!(*ctx.replicas.reconciled_offset().borrow(), MetadataOffset(3));
        assert_eq!(ctx.replicas.all().len(), partitions as usize);
        for index in 0..partitions {
            let p = ctx.replicas.get("big", index).expect("open");
            assert!(p.leader_view().is_some(), "partition {index} leads");
        }
        ctx.replicas.close_all().await.expect("closes");
    }
}
