//! One local partition: its log, its high watermark, and group commit.
//!
//! Appends go to the page cache under a short lock. A flusher task per partition then runs one
//! fdatasync for everything appended since the previous one (group commit) and advances the
//! high watermark; producers waiting for an acknowledgement wake when it passes their batch.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use strom_log::{AppendInfo, Log, LogError};
use strom_protocol::control::Marker;

use crate::log_dir::LogDirHealth;
use strom_metadata::{NodeId, TopicId};
use tokio::sync::{watch, Notify};

use crate::fetch_session::{PartitionKey, SessionSignal};
use crate::isr::{FollowerFetchRefused, LeaderState};

/// This broker's part in a partition, from the metadata image.
pub(crate) enum Role {
    /// No leader is known, or the reconciler has not seen the partition yet.
    Idle,
    Leader(LeaderState),
    /// Copies the leader's log; its leader's fetcher drops the partition once `stop` is dropped.
    Follower {
        leader: NodeId,
        leader_epoch: i32,
        _stop: watch::Sender<bool>,
    },
}

/// What waiters watch: how far data is acknowledged, and whether the log still works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Exclusive: every offset below it may be served and acknowledged.
    pub high_watermark: i64,
    /// Exclusive: everything below it is durable on this replica (what acks=1 waits for).
    pub durable_leo: i64,
    /// The leader epoch while this broker leads the partition; `None` otherwise. A waiting
    /// produce fails when it changes: its batch may not be in the new leader's log.
    pub leader_epoch: Option<i32>,
    pub offline: bool,
}

pub(crate) struct Partition {
    pub topic: String,
    pub index: i32,
    pub topic_id: TopicId,
    log: Mutex<Log>,
    progress: watch::Sender<Progress>,
    flush_requested: Notify,
    /// `flush.messages == 1`: acknowledge only fsynced data.
    fsync_on_ack: AtomicBool,
    closed: AtomicBool,
    /// Told of this log's storage failures: the whole log directory is failed then.
    health: Arc<LogDirHealth>,
    /// The fetch sessions (and waiting sessionless fetches) that hold this partition: each is
    /// marked when an append, a high watermark, a role or the log start changes, so that a
    /// fetch checks only partitions that changed and wakes only for its own.
    subscribers: Mutex<Vec<Subscriber>>,
    role: Mutex<Role>,
    /// Everything below this offset is durable locally (fsynced, or written when fsync-on-ack
    /// is off): what the leader counts as its own end offset for the high watermark.
    durable_leo: AtomicI64,
    /// `min.insync.replicas` of the topic.
    min_insync: AtomicI32,
    /// The high watermark the leader last reported to this follower (-1: none yet): what
    /// DescribeLogDirs' offset lag counts from.
    leader_hw: AtomicI64,
}

/// A fetch session that holds a partition, and the key it knows the partition by.
struct Subscriber {
    signal: Arc<SessionSignal>,
    key: PartitionKey,
}

/// DeleteRecords' offset that stands for the high watermark.
pub(crate) const DELETE_TO_HIGH_WATERMARK: i64 = -1;

/// Why DeleteRecords refused a partition.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeleteRecordsError {
    #[error("this broker does not lead the partition")]
    NotLeader,
    #[error("the topic's cleanup.policy has no `delete`")]
    PolicyViolation,
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Why an acknowledgement could not be given.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AckError {
    TimedOut,
    Offline,
    /// Leadership moved (or the epoch changed) while waiting.
    NotLeader,
}

impl Partition {
    pub fn new(
        topic: String,
        index: i32,
        topic_id: TopicId,
        log: Log,
        fsync_on_ack: bool,
        checkpointed_hw: i64,
        health: Arc<LogDirHealth>,
    ) -> Arc<Partition> {
        // The high watermark restarts from its checkpoint: data above it may not be committed.
        // (A sole replica moves it to its log end as soon as it leads.)
        let hw = checkpointed_hw.clamp(0, log.log_end_offset());
        let leo = log.log_end_offset();
        let (progress, _) = watch::channel(Progress {
            high_watermark: hw,
            durable_leo: leo,
            leader_epoch: None,
            offline: false,
        });
        let p = Arc::new(Partition {
            topic,
            index,
            topic_id,
            log: Mutex::new(log),
            progress,
            flush_requested: Notify::new(),
            fsync_on_ack: AtomicBool::new(fsync_on_ack),
            closed: AtomicBool::new(false),
            health,
            subscribers: Mutex::new(Vec::new()),
            role: Mutex::new(Role::Idle),
            // What survived recovery is on disk.
            durable_leo: AtomicI64::new(leo),
            min_insync: AtomicI32::new(1),
            leader_hw: AtomicI64::new(-1),
        });
        tokio::spawn(flusher(p.clone()));
        p
    }

    /// The log, for short synchronous work. A poisoned lock means a panic mid-append: the
    /// in-memory state may be torn, so the partition goes offline rather than guess.
    pub fn log(&self) -> Result<MutexGuard<'_, Log>, LogError> {
        self.log.lock().map_err(|_| {
            let dir = format!("{}-{}", self.topic, self.index);
            self.set_offline(&"a panic while the log was locked");
            LogError::LogOffline { dir: dir.into() }
        })
    }

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Changes of [`Progress`], for tasks that must stop when leadership moves.
    pub fn progress_watch(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn set_fsync_on_ack(&self, on: bool) {
        self.fsync_on_ack.store(on, Ordering::Relaxed);
    }

    /// After a storage failure: never acknowledge from this log again, and fail the log
    /// directory (a log already closed for deletion is gone on purpose, not failed).
    fn set_offline(&self, cause: &dyn std::fmt::Display) {
        self.progress.send_modify(|p| p.offline = true);
        if !self.closed.load(Ordering::Relaxed) {
            self.health.fail(&format!("partition {}-{}", self.topic, self.index), cause);
        }
        self.changed();
    }

    /// Passes `result` through; a storage failure in it takes the log offline first.
    fn check_storage<T>(&self, result: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(e) = &result {
            if e.is_storage_failure() {
                self.set_offline(e);
            }
        }
        result
    }

    /// Appends a producer's batches. Returns once they are in the page cache; call
    /// [`Partition::wait_acked`] for durability. A retried idempotent batch the log already
    /// holds comes back as a duplicate with its original offsets, and nothing is written.
    pub fn append(
        &self,
        batches: &Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.append_with(|log| log.append(batches, leader_epoch, now_ms))
    }

    /// Appends records a coordinator of this broker built ([`Log::append_trusted`]).
    pub fn append_trusted(
        &self,
        batches: &Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.append_with(|log| log.append_trusted(batches, leader_epoch, now_ms))
    }

    /// Writes a transaction marker as the leader at `leader_epoch` (WriteTxnMarkers); acked
    /// as any append.
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: Marker,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.append_with(|log| {
            log.append_marker(producer_id, producer_epoch, marker, leader_epoch, now_ms)
        })
    }

    fn append_with(
        &self,
        append: impl FnOnce(&mut Log) -> Result<AppendInfo, LogError>,
    ) -> Result<AppendInfo, LogError> {
        if self.progress().offline {
            return Err(LogError::LogOffline {
                dir: format!("{}-{}", self.topic, self.index).into(),
            });
        }
        let mut log = self.log()?;
        let info = self.check_storage(append(&mut log))?;
        let leo = log.log_end_offset();
        // Unsynced data files hold their descriptors: with many of them, sync now rather than
        // at the next periodic flush (file handles are bounded, `strom_log::FileHandles`).
        let handles_under_pressure = log.file_handles().under_pressure();
        drop(log);
        if handles_under_pressure {
            self.flush_requested.notify_one();
        }
        if !info.duplicate {
            self.appended(leo);
        }
        Ok(info)
    }

    /// Appends batches fetched from `leader` at `leader_epoch`, exactly as they are. Refused
    /// (`Ok(None)`) once this broker no longer follows that leader at that epoch: a fetch that
    /// was in flight across a leader change must not write into the new role's log.
    pub fn append_as_follower(
        &self,
        batches: &Bytes,
        leader: NodeId,
        leader_epoch: i32,
    ) -> Result<Option<i64>, LogError> {
        let role = self.role.lock().map_err(|_| LogError::LogOffline {
            dir: format!("{}-{}", self.topic, self.index).into(),
        })?;
        let current = matches!(&*role,
            Role::Follower { leader: l, leader_epoch: e, .. } if *l == leader && *e == leader_epoch);
        if !current {
            return Ok(None);
        }
        let mut log = self.log()?;
        self.check_storage(log.append_as_follower(batches))?;
        let leo = log.log_end_offset();
        drop(log);
        drop(role);
        self.appended(leo);
        Ok(Some(leo))
    }

    fn subscribers(&self) -> MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `signal`'s session holds this partition as `key`: mark it on every change from now on.
    /// Also drops subscribers whose sessions ended.
    pub fn subscribe(&self, signal: &Arc<SessionSignal>, key: &PartitionKey) {
        let mut subscribers = self.subscribers();
        subscribers.retain(|s| !s.signal.is_closed());
        if !subscribers.iter().any(|s| Arc::ptr_eq(&s.signal, signal)) {
            subscribers.push(Subscriber { signal: signal.clone(), key: key.clone() });
        }
    }

    /// `signal`'s session no longer holds this partition (or answers it with an error, which
    /// it checks on every fetch anyway).
    pub fn unsubscribe(&self, signal: &Arc<SessionSignal>) {
        self.subscribers().retain(|s| !s.signal.is_closed() && !Arc::ptr_eq(&s.signal, signal));
    }

    /// Something a fetch answers changed (records, high watermark, last stable offset, log
    /// start offset, role, health): every session holding the partition checks it next time.
    /// Takes only leaf locks (the subscriber list, then each session's marks), so callers may
    /// hold the log lock.
    pub fn changed(&self) {
        let mut subscribers = self.subscribers();
        subscribers.retain(|s| !s.signal.is_closed());
        for s in subscribers.iter() {
            s.signal.mark(&s.key);
        }
    }

    /// When each open session of a follower that holds this partition last fetched (for the
    /// ISR: a session leaves out a partition that did not change).
    fn session_fetches(&self) -> Vec<(NodeId, i64)> {
        self.subscribers()
            .iter()
            .filter_map(|s| Some((s.signal.replica?, s.signal.last_fetch_ms()?)))
            .collect()
    }

    fn appended(&self, leo: i64) {
        if self.fsync_on_ack.load(Ordering::Relaxed) {
            self.flush_requested.notify_one();
        } else {
            self.on_durable(leo);
        }
        self.changed();
    }

    /// Everything below `upto` is durable here: a leader may move its high watermark.
    fn on_durable(&self, upto: i64) {
        self.durable_leo.fetch_max(upto, Ordering::Relaxed);
        let durable = self.durable_leo.load(Ordering::Relaxed);
        self.progress.send_if_modified(|p| {
            let moved = durable > p.durable_leo;
            p.durable_leo = p.durable_leo.max(durable);
            moved
        });
        let moved = match self.role.lock() {
            Ok(mut role) => match &mut *role {
                Role::Leader(state) => state.update_hw(durable),
                _ => None,
            },
            Err(_) => None,
        };
        if let Some(hw) = moved {
            self.advance_hw(hw);
        }
    }

    pub fn durable_leo(&self) -> i64 {
        self.durable_leo.load(Ordering::Relaxed)
    }

    pub fn set_min_insync(&self, n: i32) {
        self.min_insync.store(n.max(1), Ordering::Relaxed);
    }

    pub fn min_insync(&self) -> usize {
        self.min_insync.load(Ordering::Relaxed).max(1) as usize
    }

    /// A follower's fetch at `fetch_offset`: moves the high watermark when the ISR allows.
    /// Refused, changing nothing, unless this broker leads at `leader_epoch`, `follower` is
    /// one of its followers and the offset is within the log.
    pub fn on_follower_fetch(
        &self,
        follower: NodeId,
        fetch_offset: i64,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<(), FollowerFetchRefused> {
        let (start, leo) = match self.log() {
            Ok(log) => (log.log_start_offset(), log.log_end_offset()),
            Err(_) => return Err(FollowerFetchRefused::NotReplica),
        };
        if fetch_offset < start {
            return Err(FollowerFetchRefused::OffsetOutOfRange);
        }
        let durable = self.durable_leo();
        let moved = match self.role.lock() {
            Ok(mut role) => match &mut *role {
                Role::Leader(state) if state.leader_epoch == leader_epoch => {
                    state.on_follower_fetch(follower, fetch_offset, leo, now_ms)?;
                    state.update_hw(durable)
                }
                _ => return Err(FollowerFetchRefused::NotReplica),
            },
            Err(_) => return Err(FollowerFetchRefused::NotReplica),
        };
        if let Some(hw) = moved {
            self.advance_hw(hw);
        }
        Ok(())
    }

    /// The high watermark the leader reported to this follower.
    pub fn set_follower_hw(&self, leader_hw: i64) {
        self.leader_hw.store(leader_hw, Ordering::Relaxed);
        let bound = leader_hw.min(self.durable_leo());
        self.advance_hw(bound);
    }

    /// How far this replica's log end is behind the partition's high watermark (Kafka's
    /// DescribeLogDirs offset lag): 0 on the leader, and on a follower the leader's last
    /// reported high watermark minus its log end offset (0 before any report).
    pub fn offset_lag(&self, log_end_offset: i64) -> i64 {
        if self.progress().leader_epoch.is_some() {
            return 0;
        }
        (self.leader_hw.load(Ordering::Relaxed) - log_end_offset).max(0)
    }

    /// Runs `f` on the role under its lock.
    pub fn with_role<T>(&self, f: impl FnOnce(&mut Role) -> T) -> Option<T> {
        self.role.lock().ok().map(|mut r| f(&mut r))
    }

    /// Makes this broker the partition's leader at `leader_epoch` (no-op if it already is),
    /// or applies an ISR/replica change at the same epoch. True when it became leader (the
    /// caller logs role changes: see `replica::RoleLog`).
    pub fn lead(
        &self,
        me: NodeId,
        replicas: Vec<NodeId>,
        isr: Vec<NodeId>,
        leader_epoch: i32,
        partition_epoch: i32,
        now_ms: i64,
    ) -> bool {
        let hw = self.progress().high_watermark;
        let mut became = false;
        let moved = self.with_role(|role| {
            match role {
                Role::Leader(state) if state.leader_epoch == leader_epoch => {
                    // The AlterPartition answer may carry the partition epoch of a change that
                    // also changed the replicas (a completed reassignment): compare them too.
                    if state.partition_epoch != partition_epoch || state.replicas() != replicas {
                        state.on_partition_change(replicas, isr, partition_epoch, now_ms);
                    }
                }
                _ => {
                    became = true;
                    self.progress.send_modify(|p| p.leader_epoch = Some(leader_epoch));
                    *role = Role::Leader(LeaderState::new(
                        me,
                        replicas,
                        isr,
                        leader_epoch,
                        partition_epoch,
                        hw,
                        now_ms,
                    ));
                }
            }
            match role {
                Role::Leader(state) => state.update_hw(self.durable_leo()),
                _ => None,
            }
        });
        if let Some(Some(hw)) = moved {
            self.advance_hw(hw);
        }
        // A new epoch, or followers added or removed: sessions check the partition again.
        self.changed();
        became
    }

    /// Makes this broker a follower of `leader` at `leader_epoch`. Returns the receiver the
    /// fetcher watches to drop the partition when this role ends, or `None` if it already follows
    /// that leader at that epoch.
    pub fn follow(&self, leader: NodeId, leader_epoch: i32) -> Option<watch::Receiver<bool>> {
        let stop = self
            .with_role(|role| {
                if let Role::Follower { leader: l, leader_epoch: e, .. } = role {
                    if *l == leader && *e == leader_epoch {
                        return None;
                    }
                }
                self.progress.send_modify(|p| p.leader_epoch = None);
                let (stop, rx) = watch::channel(false);
                // Replacing the role drops the old stop sender: the old fetcher ends.
                *role = Role::Follower { leader, leader_epoch, _stop: stop };
                Some(rx)
            })
            .flatten();
        if stop.is_some() {
            self.changed();
        }
        stop
    }

    /// No leader is known: stop leading or following. True when the role changed.
    pub fn idle(&self) -> bool {
        let changed = self.with_role(|role| {
            if matches!(role, Role::Idle) {
                return false;
            }
            self.progress.send_modify(|p| p.leader_epoch = None);
            *role = Role::Idle;
            true
        });
        self.changed();
        changed == Some(true)
    }

    /// DeleteRecords on the leader: moves the log start offset to `offset` (-1: the high
    /// watermark), which must not pass the high watermark, and returns the new log start
    /// offset (the partition's low watermark). Memory only, under the log lock: the caller
    /// persists the log start checkpoint before it answers, and the retention pass deletes the
    /// segments below it. Refused for a compacted-only topic (POLICY_VIOLATION, as Kafka).
    pub fn delete_records(&self, offset: i64) -> Result<i64, DeleteRecordsError> {
        if self.progress().leader_epoch.is_none() {
            return Err(DeleteRecordsError::NotLeader);
        }
        let hw = self.progress().high_watermark;
        let offset = if offset == DELETE_TO_HIGH_WATERMARK { hw } else { offset };
        let mut log = self.log()?;
        if !log.config().cleanup_policy.delete {
            return Err(DeleteRecordsError::PolicyViolation);
        }
        let start = log.log_start_offset();
        if offset < 0 || offset > hw {
            return Err(LogError::OffsetOutOfRange { offset, start, end: hw }.into());
        }
        let moved = self.check_storage(log.increment_log_start_offset(offset))?;
        let start = log.log_start_offset();
        drop(log);
        if moved {
            tracing::info!(topic = %self.topic, partition = self.index, log_start_offset = start, "records deleted: log start offset moved");
            // Fetch sessions answer the new log start offset (followers take it from there).
            self.changed();
        }
        Ok(start)
    }

    /// A follower takes its leader's log start offset (from a Fetch response), up to its own
    /// high watermark, as Kafka's followers do: so a follower that becomes leader serves no
    /// record the leader's DeleteRecords removed.
    pub fn set_follower_log_start(&self, leader_log_start: i64) {
        let bound = leader_log_start.min(self.progress().high_watermark);
        let Ok(mut log) = self.log() else { return };
        if bound <= log.log_start_offset() {
            return;
        }
        match self.check_storage(log.increment_log_start_offset(bound)) {
            Ok(true) => {
                drop(log);
                tracing::debug!(topic = %self.topic, partition = self.index, log_start_offset = bound, "log start offset moved with the leader's");
                self.changed();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "cannot move the log start offset")
            }
        }
    }

    /// A follower whose log ends before its leader's log starts (the leader deleted records
    /// or segments meanwhile) starts over, empty, at the leader's log start offset.
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), LogError> {
        let mut log = self.log()?;
        if offset <= log.log_end_offset() {
            return Ok(());
        }
        tracing::info!(topic = %self.topic, partition = self.index, from = log.log_end_offset(), to = offset, "log ends before the leader's log start; starting over there");
        self.check_storage(log.truncate_fully_and_start_at(offset))?;
        let leo = log.log_end_offset();
        drop(log);
        // The new empty log is durable: nothing below its start is left to sync.
        self.durable_leo.store(leo, Ordering::Relaxed);
        self.progress.send_modify(|p| {
            p.durable_leo = leo;
            p.high_watermark = p.high_watermark.max(leo);
        });
        self.changed();
        Ok(())
    }

    /// Cuts a follower's divergent suffix (everything at and after `offset`).
    pub fn truncate_to(&self, offset: i64) -> Result<(), LogError> {
        let mut log = self.log()?;
        if offset < log.log_end_offset() {
            tracing::info!(topic = %self.topic, partition = self.index, from = log.log_end_offset(), to = offset, "truncating divergent log suffix");
            self.check_storage(log.truncate_to(offset))?;
        }
        let leo = log.log_end_offset();
        self.durable_leo.fetch_min(leo, Ordering::Relaxed);
        self.progress.send_modify(|p| p.durable_leo = p.durable_leo.min(leo));
        Ok(())
    }

    /// The controller committed the ISR change this leader asked for at `leader_epoch`:
    /// applied now (see [`LeaderState::isr_change_committed`]); the high watermark may move (a
    /// lagging member left).
    pub fn isr_change_committed(&self, leader_epoch: i32, partition_epoch: i32, isr: Vec<NodeId>) {
        let moved = self.with_role(|role| match role {
            Role::Leader(state) if state.leader_epoch == leader_epoch => {
                state.isr_change_committed(partition_epoch, isr);
                state.update_hw(self.durable_leo())
            }
            _ => None,
        });
        if let Some(Some(hw)) = moved {
            self.advance_hw(hw);
        }
        self.changed();
    }

    /// Leader-only: the ISR to ask the controller for, if it should change, with the leader
    /// and partition epochs (see [`LeaderState::propose_isr`]). A follower whose fetch session
    /// holds this partition and whose fetch offset is this log's end counts as caught up as of
    /// its session's latest fetch: the session leaves the partition out while nothing changes.
    pub fn propose_isr(
        &self,
        now_ms: i64,
        lag_max_ms: i64,
        eligible: impl Fn(NodeId) -> bool,
    ) -> Option<(Vec<NodeId>, i32, i32)> {
        self.progress().leader_epoch?;
        // The fetch times before the log end: a session that fetched at T saw a log end at
        // most the one read after T.
        let fetches = self.session_fetches();
        let leo = self.log().ok()?.log_end_offset();
        let fetched_ms = |r: NodeId| fetches.iter().filter(|(f, _)| *f == r).map(|(_, t)| *t).max();
        self.with_role(|role| match role {
            Role::Leader(state) => state
                .propose_isr(now_ms, lag_max_ms, eligible, leo, fetched_ms)
                .map(|isr| (isr, state.leader_epoch, state.partition_epoch)),
            _ => None,
        })
        .flatten()
    }

    /// Leader-only: the current ISR size and leader epoch, or `None` when not leader.
    pub fn leader_view(&self) -> Option<(usize, i32)> {
        self.with_role(|role| match role {
            Role::Leader(state) => Some((state.isr().len(), state.leader_epoch)),
            _ => None,
        })
        .flatten()
    }

    fn advance_hw(&self, to: i64) {
        let moved = self.progress.send_if_modified(|p| {
            if to > p.high_watermark {
                p.high_watermark = to;
                true
            } else {
                false
            }
        });
        if moved {
            self.changed();
        }
    }

    /// Waits until every offset below `end` is acknowledged while this broker still leads at
    /// `leader_epoch`: for acks=all until the high watermark passes it, for acks=1 until it is
    /// durable here (fsynced, or written when fsync-on-ack is off).
    pub async fn wait_acked(
        &self,
        end: i64,
        leader_epoch: i32,
        all_replicas: bool,
        timeout: Duration,
    ) -> Result<(), AckError> {
        let mut rx = self.progress.subscribe();
        let wait = async move {
            let reached = |p: &Progress| {
                if all_replicas {
                    p.high_watermark >= end
                } else {
                    p.durable_leo >= end
                }
            };
            let outcome = rx
                .wait_for(|p| p.offline || p.leader_epoch != Some(leader_epoch) || reached(p))
                .await;
            match outcome {
                Ok(p) if p.offline => Err(AckError::Offline),
                Ok(p) if p.leader_epoch != Some(leader_epoch) => Err(AckError::NotLeader),
                Ok(_) => Ok(()),
                Err(_) => Err(AckError::Offline),
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(Err(AckError::TimedOut))
    }

    /// Requests a flush (used for periodic flushing when fsync-on-ack is off).
    pub fn request_flush(&self) {
        self.flush_requested.notify_one();
    }

    /// Flushes synchronously what is unflushed; used at shutdown.
    pub fn flush_now(&self) -> Result<(), LogError> {
        let handle = self.log()?.sync_handle();
        if let Some(h) = handle {
            let upto = h.upto();
            // Out of file descriptors is returned, not a storage failure.
            self.check_storage(h.sync())?;
            if self.log()?.mark_synced(&h) {
                self.on_durable(upto);
            }
        }
        Ok(())
    }

    pub fn recovery_point(&self) -> Option<i64> {
        self.log.lock().ok().map(|l| l.recovery_point())
    }

    /// Stops the flusher; the caller flushes or deletes the log afterwards.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.flush_requested.notify_one();
        // Sessions holding it look again, and find the log that replaces it, or none.
        self.changed();
    }
}

/// How long a flush that could not open its files (out of descriptors) waits to try again.
const FLUSH_RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Group commit: one fdatasync covers every append made before it started.
async fn flusher(p: Arc<Partition>) {
    loop {
        p.flush_requested.notified().await;
        if p.closed.load(Ordering::Relaxed) {
            return;
        }
        let handle = match p.log() {
            Ok(log) => log.sync_handle(),
            Err(_) => return,
        };
        let Some(handle) = handle else { continue };
        let handle = Arc::new(handle);
        let upto = handle.upto();
        let h = handle.clone();
        let synced = tokio::task::spawn_blocking(move || h.sync()).await;
        match synced {
            Ok(Ok(())) => {
                // A handle taken before a truncation synced files that may hold other bytes
                // at its offsets now: it proves nothing, the next flush covers them.
                let current = p.log().is_ok_and(|mut log| log.mark_synced(&handle));
                if current {
                    p.on_durable(upto);
                } else {
                    p.flush_requested.notify_one();
                }
            }
            Ok(Err(e)) if !e.is_storage_failure() => {
                // Out of file descriptors to reopen a file for its sync: nothing failed on
                // disk. The data stays unacknowledged until a later flush gets through.
                tracing::debug!(topic = %p.topic, partition = p.index, error = %e, "flush postponed");
                tokio::time::sleep(FLUSH_RETRY_BACKOFF).await;
                p.flush_requested.notify_one();
            }
            Ok(Err(e)) => {
                // After a failed fsync the page cache state is unknown (the kernel may have
                // dropped the dirty pages): never acknowledge from this log again.
                tracing::error!(topic = %p.topic, partition = p.index, error = %e,
                    "fdatasync failed; partition log is offline (KAFKA_STORAGE_ERROR)");
                p.set_offline(&format!("fdatasync failed: {e}"));
                return;
            }
            Err(e) => {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "flush task failed");
                p.set_offline(&format!("flush task failed: {e}"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch_session::TopicKey;

    /// One record in one v2 batch.
    fn batch() -> Bytes {
        Bytes::from(strom_protocol::batch::test_support::build_batch(0, &[0], 0))
    }

    /// A partition led by node 1 alone, acknowledging without fsync.
    fn led(dir: &std::path::Path, index: i32) -> Arc<Partition> {
        let handles = strom_log::FileHandles::new(strom_log::FILE_HANDLES_MIN);
        let log = Log::open(dir, strom_log::LogConfig::default(), 0, &handles).expect("log opens");
        let p = Partition::new("t".into(), index, TopicId([1; 16]), log, false, 0, Arc::default());
        p.lead(NodeId(1), vec![NodeId(1)], vec![NodeId(1)], 0, 0, 0);
        p
    }

    fn key_of(p: &Partition) -> PartitionKey {
        PartitionKey { topic: TopicKey::Name(p.topic.as_str().into()), partition: p.index }
    }

    // A runtime only because a partition starts its flusher task; nothing here waits.
    #[tokio::test]
    async fn a_session_is_marked_and_woken_by_its_own_partitions_only() {
        let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
        let (a, b) = (led(dirs[0].path(), 0), led(dirs[1].path(), 1));
        let session = Arc::new(SessionSignal::new(None));
        let mut wakes = session.wakes();
        a.subscribe(&session, &key_of(&a));
        a.subscribe(&session, &key_of(&a));
        b.append(&batch(), 0, 0).expect("appends");
        assert_eq!(b.progress().high_watermark, 1);
        assert!(!wakes.has_changed().expect("open"), "another partition's append woke it");
        a.append(&batch(), 0, 0).expect("appends");
        assert!(wakes.has_changed().expect("open"), "its own append went unseen");
        wakes.borrow_and_update();
        assert_eq!(session.drain(), [key_of(&a)].into_iter().collect(), "marked once");
        a.unsubscribe(&session);
        a.append(&batch(), 0, 0).expect("appends");
        assert!(!wakes.has_changed().expect("open"), "unsubscribed");
        assert!(session.drain().is_empty());
    }

    #[tokio::test]
    async fn a_closed_session_is_dropped_and_a_role_change_marks_the_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = led(dir.path(), 0);
        let (open, closed) =
            (Arc::new(SessionSignal::new(None)), Arc::new(SessionSignal::new(None)));
        a.subscribe(&open, &key_of(&a));
        a.subscribe(&closed, &key_of(&a));
        closed.close();
        a.lead(NodeId(1), vec![NodeId(1)], vec![NodeId(1)], 1, 1, 0);
        assert_eq!(open.drain().len(), 1, "a new leader epoch is a change");
        assert!(closed.drain().is_empty(), "a closed session hears nothing");
        assert_eq!(a.subscribers().len(), 1);
    }
}
