//! One local partition: its log, its high watermark, and group commit.
//!
//! Appends go to the page cache under a short lock. A flusher task per partition then runs one
//! fdatasync for everything appended since the previous one (group commit) and advances the
//! high watermark; producers waiting for an acknowledgement wake when it passes their batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use strom_log::{AppendInfo, Log, LogError};
use strom_metadata::TopicId;
use tokio::sync::{watch, Notify};

/// What waiters watch: how far data is acknowledged, and whether the log still works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Exclusive: every offset below it may be served and acknowledged.
    pub high_watermark: i64,
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
    /// Broker-wide "some high watermark moved" signal for long-polling fetches.
    data_arrived: Arc<watch::Sender<u64>>,
}

/// Why an acknowledgement could not be given.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AckError {
    TimedOut,
    Offline,
}

impl Partition {
    pub fn new(
        topic: String,
        index: i32,
        topic_id: TopicId,
        log: Log,
        fsync_on_ack: bool,
        data_arrived: Arc<watch::Sender<u64>>,
    ) -> Arc<Partition> {
        // After recovery everything left in the log is what survived: serve all of it.
        let hw = log.log_end_offset();
        let (progress, _) = watch::channel(Progress { high_watermark: hw, offline: false });
        let p = Arc::new(Partition {
            topic,
            index,
            topic_id,
            log: Mutex::new(log),
            progress,
            flush_requested: Notify::new(),
            fsync_on_ack: AtomicBool::new(fsync_on_ack),
            closed: AtomicBool::new(false),
            data_arrived,
        });
        tokio::spawn(flusher(p.clone()));
        p
    }

    /// The log, for short synchronous work. A poisoned lock means a panic mid-append: the
    /// in-memory state may be torn, so the partition goes offline rather than guess.
    pub fn log(&self) -> Result<MutexGuard<'_, Log>, LogError> {
        self.log.lock().map_err(|_| {
            self.set_offline();
            LogError::LogOffline { dir: format!("{}-{}", self.topic, self.index).into() }
        })
    }

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    pub fn set_fsync_on_ack(&self, on: bool) {
        self.fsync_on_ack.store(on, Ordering::Relaxed);
    }

    fn set_offline(&self) {
        self.progress.send_modify(|p| p.offline = true);
    }

    /// Appends a producer's batches. Returns once they are in the page cache; call
    /// [`Partition::wait_acked`] for durability.
    pub fn append(
        &self,
        batches: &Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        if self.progress().offline {
            return Err(LogError::LogOffline {
                dir: format!("{}-{}", self.topic, self.index).into(),
            });
        }
        let mut log = self.log()?;
        let info = log.append(batches, leader_epoch, now_ms)?;
        let leo = log.log_end_offset();
        drop(log);
        if self.fsync_on_ack.load(Ordering::Relaxed) {
            self.flush_requested.notify_one();
        } else {
            self.advance_hw(leo);
        }
        Ok(info)
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
            self.data_arrived.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Waits until every offset below `end` is acknowledged (fsynced, or appended when
    /// fsync-on-ack is off), or the timeout passes.
    pub async fn wait_acked(&self, end: i64, timeout: Duration) -> Result<(), AckError> {
        let mut rx = self.progress.subscribe();
        let wait = async move {
            match rx.wait_for(|p| p.offline || p.high_watermark >= end).await {
                Ok(p) if !p.offline => Ok(()),
                _ => Err(AckError::Offline),
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
            h.sync().map_err(|source| LogError::SegmentSync {
                path: format!("{}-{}", self.topic, self.index).into(),
                source,
            })?;
            self.log()?.mark_synced(&h);
            self.advance_hw(upto);
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
    }
}

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
                if let Ok(mut log) = p.log() {
                    // mark_synced ignores a handle taken before a truncation.
                    log.mark_synced(&handle);
                }
                p.advance_hw(upto);
            }
            Ok(Err(e)) => {
                // After a failed fsync the page cache state is unknown (the kernel may have
                // dropped the dirty pages): never acknowledge from this log again.
                tracing::error!(topic = %p.topic, partition = p.index, error = %e,
                    "fdatasync failed; partition log is offline (KAFKA_STORAGE_ERROR)");
                p.set_offline();
                return;
            }
            Err(e) => {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "flush task failed");
                p.set_offline();
                return;
            }
        }
    }
}
