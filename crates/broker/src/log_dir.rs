//! The health of the node's log directory, as Kafka's LogDirFailureChannel: the first storage
//! error on a partition log (a failed write, fsync, open, truncation or checkpoint) marks the
//! directory failed; running out of file descriptors does not (that request fails and is
//! retried: `strom_log::FileHandles`). strom has one log directory, so a failed directory is a
//! broker that can no longer keep its promises: its partitions answer KAFKA_STORAGE_ERROR and
//! the node stops, as Kafka halts a broker whose every log directory is offline. The
//! controller then fences it and moves its leaderships; a supervisor restarts it once the disk
//! is fixed, and recovery starts from what was synced.

use tokio::sync::watch;

#[derive(Debug)]
pub struct LogDirHealth {
    failed: watch::Sender<Option<String>>,
}

impl Default for LogDirHealth {
    fn default() -> Self {
        LogDirHealth { failed: watch::Sender::new(None) }
    }
}

impl LogDirHealth {
    /// Marks the directory failed; the first cause is kept and reported.
    pub fn fail(&self, what: &str, error: &dyn std::fmt::Display) {
        let cause = format!("{what}: {error}");
        let first = self.failed.send_if_modified(|failed| {
            if failed.is_some() {
                return false;
            }
            *failed = Some(cause.clone());
            true
        });
        if first {
            tracing::error!(%cause, "log directory failed: every partition of this broker is offline");
        }
    }

    /// Whether the directory has failed.
    pub fn failed(&self) -> bool {
        self.failed.borrow().is_some()
    }

    /// The first failure's cause, once there is one.
    pub fn watch(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }
}
