//! Partition log storage: segments of v2 record batches, sparse indexes, recovery, retention,
//! key-based compaction (`compact`).
//!
//! File IO only (std::fs, positional reads); batches are stored exactly as producers sent them
//! apart from the broker-owned header fields, until compaction rewrites the closed segments of
//! a compacted topic (same offsets, fewer records, fresh CRCs). Index design: each segment keeps its offset and
//! time index in memory and mirrors them to append-only `.index`/`.timeindex` files, which are
//! loaded for segments below the recovery point and rebuilt from the `.log` otherwise (or when
//! they fail their checks). File handles are a bounded resource (`handles`): a log holds no
//! descriptor of its own; its files open on use through the log directory's LRU cache.

pub mod checkpoint;
mod compact;
mod epoch;
mod error;
mod handles;
mod index;
mod log;
pub mod producer;
mod segment;
mod snapshot;
mod txn_index;

pub use crate::compact::{
    compact_locked, CleanedGroup, CompactStats, Compaction, KEY_MAP_ENTRIES_MAX,
};
pub use crate::error::LogError;
pub use crate::handles::{FileHandleStats, FileHandles, FILE_HANDLES_MIN};
pub use crate::log::{Log, ReadStart, SyncHandle};
pub use crate::segment::Located;
pub use crate::txn_index::AbortedTxn;
pub use strom_protocol::batch::TimestampType;

/// Kafka's default `max.message.bytes` (1 MiB + record-batch overhead).
pub const MAX_MESSAGE_BYTES_DEFAULT: u32 = 1_048_588;
/// Kafka's `segment.bytes` is an int; positions in the index are u32.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64);

/// Kafka's default `delete.retention.ms`: how long a tombstone outlives compaction (1 day).
pub const DELETE_RETENTION_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;
/// Kafka's default `min.cleanable.dirty.ratio`.
pub const MIN_CLEANABLE_DIRTY_RATIO_DEFAULT: f64 = 0.5;

/// Kafka's `cleanup.policy`: a list of `delete` and `compact`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// Time and size retention delete old segments.
    pub delete: bool,
    /// Compaction keeps the latest record of every key.
    pub compact: bool,
}

impl CleanupPolicy {
    pub const DELETE: CleanupPolicy = CleanupPolicy { delete: true, compact: false };

    /// Parses Kafka's comma-separated list; unknown items are ignored (the controller validates
    /// topic configs) and an empty list means `delete`, Kafka's default.
    pub fn parse(list: &str) -> CleanupPolicy {
        let items = || list.split(',').map(str::trim);
        let policy = CleanupPolicy {
            delete: items().any(|item| item.eq_ignore_ascii_case("delete")),
            compact: items().any(|item| item.eq_ignore_ascii_case("compact")),
        };
        if policy.delete || policy.compact {
            policy
        } else {
            CleanupPolicy::DELETE
        }
    }
}

impl Default for CleanupPolicy {
    fn default() -> Self {
        CleanupPolicy::DELETE
    }
}

/// Per-partition storage settings, named after Kafka's topic configs.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub segment_bytes: u64,
    /// `segment.ms`: an append rolls the active segment when its batches' timestamp is more
    /// than this newer than the segment's first batch (Kafka's rule, which needs no clock on
    /// followers).
    pub segment_ms: i64,
    /// `segment.index.bytes`: the segment rolls when its offset index (8 bytes an entry) or
    /// time index (12 bytes an entry) would outgrow this.
    pub segment_index_bytes: u32,
    pub index_interval_bytes: u32,
    /// `None` keeps data forever. Applies only when the policy has `delete`.
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<u64>,
    pub message_timestamp_type: TimestampType,
    pub max_message_bytes: u32,
    pub cleanup_policy: CleanupPolicy,
    /// How long a tombstone (and with it the news of the deletion) survives compaction, from
    /// its timestamp.
    pub delete_retention_ms: i64,
    /// A closed segment is compacted only once its newest timestamp is at least this old.
    pub min_compaction_lag_ms: i64,
    /// A compacted log is compacted whatever its dirty ratio once its oldest uncompacted
    /// closed segment is this old, and its active segment rolls at this age too (Kafka's
    /// `max.compaction.lag.ms`).
    pub max_compaction_lag_ms: i64,
    /// Compaction starts once the uncompacted share of the closed segments' bytes reaches this.
    pub min_cleanable_dirty_ratio: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            segment_index_bytes: 10 * 1024 * 1024,
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 60 * 60 * 1000),
            retention_bytes: None,
            message_timestamp_type: TimestampType::CreateTime,
            max_message_bytes: MAX_MESSAGE_BYTES_DEFAULT,
            cleanup_policy: CleanupPolicy::DELETE,
            delete_retention_ms: DELETE_RETENTION_MS_DEFAULT,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            min_cleanable_dirty_ratio: MIN_CLEANABLE_DIRTY_RATIO_DEFAULT,
        }
    }
}

/// What an append did, for the produce response and the replica manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The broker's timestamp when the log uses LogAppendTime.
    pub log_append_time: Option<i64>,
    pub max_timestamp: i64,
    /// A retried idempotent batch that the log already holds: nothing was written, the
    /// offsets are the original batch's.
    pub duplicate: bool,
}

/// `<topic>-<partition>`, the directory of one partition under a log dir.
pub fn partition_dir_name(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// Inverse of [`partition_dir_name`]; `None` for directories that are not partitions.
pub fn parse_partition_dir_name(name: &str) -> Option<(String, i32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    if topic.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let partition: i32 = partition.parse().ok()?;
    Some((topic.to_owned(), partition))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_policy_parses_kafka_lists() {
        let policy = |delete, compact| CleanupPolicy { delete, compact };
        assert_eq!(CleanupPolicy::parse("delete"), policy(true, false));
        assert_eq!(CleanupPolicy::parse("compact"), policy(false, true));
        assert_eq!(CleanupPolicy::parse("compact,delete"), policy(true, true));
        assert_eq!(CleanupPolicy::parse(" delete , compact "), policy(true, true));
        assert_eq!(CleanupPolicy::parse(""), policy(true, false));
    }

    #[test]
    fn partition_dir_names_round_trip() {
        assert_eq!(partition_dir_name("orders", 3), "orders-3");
        assert_eq!(parse_partition_dir_name("orders-3"), Some(("orders".to_owned(), 3)));
        assert_eq!(parse_partition_dir_name("my-topic-12"), Some(("my-topic".to_owned(), 12)));
        assert_eq!(parse_partition_dir_name("__consumer_offsets-0").map(|p| p.1), Some(0));
        for bad in ["orders", "orders-", "-3", "orders-+1", "orders-x", "orders-99999999999"] {
            assert_eq!(parse_partition_dir_name(bad), None, "{bad}");
        }
    }
}
