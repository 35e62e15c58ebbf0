//! The log crate's one error type: operational failures named after the subject and the verb.

use std::io;
use std::path::PathBuf;

use strom_protocol::batch::BatchError;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create directory {path}: {source}")]
    DirCreate { path: PathBuf, source: io::Error },
    #[error("cannot list directory {path}: {source}")]
    DirRead { path: PathBuf, source: io::Error },
    #[error("cannot fsync directory {path}: {source}")]
    DirSync { path: PathBuf, source: io::Error },
    #[error("cannot delete directory {path}: {source}")]
    DirDelete { path: PathBuf, source: io::Error },
    #[error("cannot open segment {path}: {source}")]
    SegmentOpen { path: PathBuf, source: io::Error },
    #[error("cannot read segment {path}: {source}")]
    SegmentRead { path: PathBuf, source: io::Error },
    #[error("cannot write segment {path}: {source}")]
    SegmentWrite { path: PathBuf, source: io::Error },
    #[error("cannot truncate segment {path}: {source}")]
    SegmentTruncate { path: PathBuf, source: io::Error },
    #[error("cannot fsync segment {path}: {source}")]
    SegmentSync { path: PathBuf, source: io::Error },
    #[error("cannot rename {from} to {to}: {source}")]
    SegmentRename { from: PathBuf, to: PathBuf, source: io::Error },
    #[error("cannot delete segment file {path}: {source}")]
    SegmentDelete { path: PathBuf, source: io::Error },
    #[error("segment {path} holds no valid batch at position {position}: {source}")]
    SegmentCorrupt { path: PathBuf, position: u64, source: BatchError },
    #[error("cannot open index {path}: {source}")]
    IndexOpen { path: PathBuf, source: io::Error },
    #[error("cannot read index {path}: {source}")]
    IndexRead { path: PathBuf, source: io::Error },
    #[error("cannot write index {path}: {source}")]
    IndexWrite { path: PathBuf, source: io::Error },
    #[error("cannot read checkpoint {path}: {source}")]
    CheckpointRead { path: PathBuf, source: io::Error },
    #[error("cannot write checkpoint {path}: {source}")]
    CheckpointWrite { path: PathBuf, source: io::Error },
    #[error("checkpoint {path} line {line} is malformed: {reason}")]
    CheckpointParse { path: PathBuf, line: usize, reason: &'static str },
    #[error("batch {batch_index} of the append is invalid: {source}")]
    CorruptBatch { batch_index: usize, source: BatchError },
    #[error("batch {batch_index} of the append has unsupported magic {magic}")]
    UnsupportedMagic { batch_index: usize, magic: i8 },
    #[error("batch {batch_index} of the append is {size} bytes, over the {max} byte limit")]
    BatchTooLarge { batch_index: usize, size: usize, max: u32 },
    #[error(
        "replicated batch {batch_index} starts at offset {found}, expected at least {expected}"
    )]
    FollowerOffsetMismatch { batch_index: usize, expected: i64, found: i64 },
    #[error("append carries no record batch")]
    AppendEmpty,
    #[error("append spans {span} offsets, more than one segment can address")]
    AppendOffsetSpanTooLarge { span: i64 },
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error("leader epoch {epoch} is older than the latest epoch {latest} in the log")]
    LeaderEpochStale { epoch: i32, latest: i32 },
    #[error("invalid log config {key} = {value}")]
    ConfigInvalid { key: &'static str, value: u64 },
    #[error(
        "segment {path} is corrupt at byte {position} (offset {offset}), below the recovery \
         point {recovery_point}: data that was on disk is damaged, so the log is not opened \
         (restore the file, or move the partition directory away so that it re-replicates)"
    )]
    CorruptBelowRecoveryPoint { path: PathBuf, position: u64, offset: i64, recovery_point: i64 },
    #[error(
        "log {dir} has no segment for offsets {from} to {to}: a segment file is missing, so the \
         log is not opened (restore it, or move the partition directory away so that it \
         re-replicates)"
    )]
    SegmentGap { dir: PathBuf, from: i64, to: i64 },
    #[error("log {dir} is offline after a write failure that could not be rolled back")]
    LogOffline { dir: PathBuf },
    #[error(
        "aborted-transaction index {path} is damaged ({len} bytes): read_committed readers \
         could see aborted records, so the log is not opened (restore the file, or move the \
         partition directory away so that it re-replicates)"
    )]
    TxnIndexCorrupt { path: PathBuf, len: usize },
    /// Compaction keeps the latest record of each key, so a compacted log takes only keyed
    /// records. `records` are indexes among the append's records, from 0, across its batches.
    #[error("a compacted log cannot take records without a key ({} of them)", records.len())]
    RecordsWithoutKey { records: Vec<i32> },
    #[error("batch {batch_index} of the append is a control batch, which only a leader writes")]
    ClientControlBatch { batch_index: usize },
    #[error(
        "batch {batch_index} of the append has producer id {producer_id} but sequence \
         {base_sequence}"
    )]
    SequenceMissing { batch_index: usize, producer_id: i64, base_sequence: i32 },
    #[error(
        "cannot open {path}: {source}; the process is out of file descriptors (the request \
         fails and may be retried)"
    )]
    FileHandlesExhausted { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Producer(#[from] crate::producer::ProducerError),
}

impl LogError {
    /// Whether the error says the disk failed (an IO error, lost or damaged data on disk)
    /// rather than that a request was invalid: a broker stops using a log directory that
    /// fails. Exhaustive on purpose: a new variant must decide.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            LogError::CorruptBatch { .. }
            | LogError::UnsupportedMagic { .. }
            | LogError::BatchTooLarge { .. }
            | LogError::FollowerOffsetMismatch { .. }
            | LogError::AppendEmpty
            | LogError::AppendOffsetSpanTooLarge { .. }
            | LogError::OffsetOutOfRange { .. }
            | LogError::LeaderEpochStale { .. }
            | LogError::ConfigInvalid { .. }
            | LogError::ClientControlBatch { .. }
            | LogError::RecordsWithoutKey { .. }
            | LogError::SequenceMissing { .. }
            | LogError::Producer(_) => false,
            // Out of descriptors is not a failed disk: other opens succeed once handles close.
            LogError::FileHandlesExhausted { .. } => false,
            LogError::DirCreate { .. }
            | LogError::DirRead { .. }
            | LogError::DirSync { .. }
            | LogError::DirDelete { .. }
            | LogError::SegmentOpen { .. }
            | LogError::SegmentRead { .. }
            | LogError::SegmentWrite { .. }
            | LogError::SegmentTruncate { .. }
            | LogError::SegmentSync { .. }
            | LogError::SegmentRename { .. }
            | LogError::SegmentDelete { .. }
            | LogError::SegmentCorrupt { .. }
            | LogError::IndexOpen { .. }
            | LogError::IndexRead { .. }
            | LogError::IndexWrite { .. }
            | LogError::CheckpointRead { .. }
            | LogError::CheckpointWrite { .. }
            | LogError::CheckpointParse { .. }
            | LogError::CorruptBelowRecoveryPoint { .. }
            | LogError::SegmentGap { .. }
            | LogError::TxnIndexCorrupt { .. }
            | LogError::LogOffline { .. } => true,
        }
    }
}
