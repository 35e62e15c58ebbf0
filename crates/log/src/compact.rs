//! Key-based compaction (Kafka's `cleanup.policy=compact`): of every key only the latest record
//! survives, a tombstone (null value) is removed once older than `delete.retention.ms`, offsets
//! never change (compaction leaves gaps; a batch keeps its base offset) and the active segment
//! is never touched, so the log end offset stays.
//!
//! A pass is split so that the broker holds a partition's lock only briefly:
//! [`Log::prepare_compaction`] (under the lock) snapshots the segments with their open files;
//! [`Compaction::clean_next_group`] (outside it) builds the key map, then rewrites one group of
//! adjacent closed segments into `<base>.log.cleaned` and its indexes. Closed segments never
//! change in place, and an open file keeps reading its data after the file is replaced or
//! deleted, so this runs safely while producers append. [`Log::install_cleaned`] (under the
//! lock) swaps the group in if the log still holds exactly those segments and was not
//! truncated since the snapshot. Reads copy out of the files under that same lock, so a read
//! sees either the old segments or the new one, never a mix. One pass per log at a time.
//!
//! Crash safety (Kafka's `.cleaned` → `.swap` → final): the cleaned files are fsynced, the
//! `.log.cleaned` is renamed to `.log.swap` and the directory fsynced; from then on it replaces
//! its group. The group's other segments and the first one's index files are deleted, then the
//! swap and the new indexes take the final names. On open (`recover_leftovers`) `*.cleaned`
//! files are deleted and every `.log.swap` completes its swap: the segments whose base offset
//! lies in [swap base, swap end) go, the swap becomes the `.log`, its indexes are rebuilt.
//!
//! Memory: the key map holds a 128-bit digest of each key (two SipHash values under random
//! keys) with its latest offset, at most [`KEY_MAP_ENTRIES_MAX`] entries. When the dirty part
//! of a log has more distinct keys, a pass compacts the segments the map covers and the next
//! pass goes on from there. Two keys whose digests collide (odds about n²/2¹²⁹ for n keys)
//! would make one key's records look superseded by the other's: that is the price of the bound,
//! as with Kafka's MD5-keyed map.
//!
//! Kept whole, their keys unread: compressed batches (only the produce path of a compacted
//! topic decompresses, to refuse keyless records: `strom_protocol::keys`),
//! transactional and control batches (strom has no transactions), and batches whose records do
//! not parse. Their keys are not in the map, so they can only make compaction keep more; but
//! since an older record of a tombstoned key may hide in one, no tombstone after the first such
//! batch of the log is removed.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::BuildHasher;
use std::io;
use std::ops::{ControlFlow, DerefMut, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use strom_protocol::batch::{
    self, BatchError, BatchHeader, Compression, TimestampType, VarintReader, ATTRIBUTES_OFFSET,
    BATCH_HEADER_LEN, BATCH_LENGTH_OFFSET, LAST_OFFSET_DELTA_OFFSET, LOG_OVERHEAD,
    MAX_TIMESTAMP_OFFSET, RECORDS_COUNT_OFFSET, RECORDS_OFFSET,
};

use crate::checkpoint::sync_dir;
use crate::handles::FileHandles;
use crate::segment::{
    self, ChunkReader, PreparedBatch, Segment, CLEANED_SUFFIX, RELATIVE_OFFSET_MAX,
    SCAN_CHUNK_BYTES, SWAP_SUFFIX,
};
use crate::{Log, LogError};

/// Most keys one pass remembers: 7/8 (the hash table's load factor) of 2^20 buckets, each a
/// 16-byte digest, an 8-byte offset and a control byte, so the map stays within 25 MiB (about
/// 37 MiB for the moment its table last doubles).
pub const KEY_MAP_ENTRIES_MAX: usize = 7 << 17;
const _: () = assert!(KEY_MAP_ENTRIES_MAX == (1 << 20) / 8 * 7);
/// Cleaned batches go to the new segment in writes of about this many bytes.
const WRITE_RUN_BYTES: usize = 1 << 20;

/// What a compaction did, summed over the groups it installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Closed segments replaced by cleaned ones.
    pub segments_replaced: usize,
    /// Cleaned segments written in their place (fewer when small segments were merged).
    pub segments_written: usize,
    /// Records removed because a later record has the same key.
    pub records_superseded: u64,
    /// Tombstones removed because they were older than `delete.retention.ms`.
    pub tombstones_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl CompactStats {
    pub fn add(&mut self, other: CompactStats) {
        self.segments_replaced += other.segments_replaced;
        self.segments_written += other.segments_written;
        self.records_superseded += other.records_superseded;
        self.tombstones_removed += other.tombstones_removed;
        self.bytes_before += other.bytes_before;
        self.bytes_after += other.bytes_after;
    }
}

/// A segment as the pass saw it: its file stays readable whatever happens to the log.
#[derive(Debug)]
struct Source {
    base_offset: i64,
    next_offset: i64,
    size: u64,
    file: Arc<File>,
    path: PathBuf,
}

/// Latest offset of every key seen in `[start, end)`, by key digest.
#[derive(Debug)]
struct KeyMap {
    /// Two u64 rather than a u128, whose 16-byte alignment would pad every entry to 32 bytes.
    latest: HashMap<(u64, u64), i64>,
    /// Records at and after this offset were not looked at (the snapshot's log end offset, or
    /// where the map filled up).
    end: i64,
    digest: [RandomState; 2],
}

impl KeyMap {
    fn digest(&self, key: &[u8]) -> (u64, u64) {
        let [a, b] = &self.digest;
        (a.hash_one(key), b.hash_one(key))
    }
}

/// One compaction pass over a log, from [`Log::prepare_compaction`]. Holds no lock.
#[derive(Debug)]
pub struct Compaction {
    dir: PathBuf,
    handles: FileHandles,
    generation: u64,
    now_ms: i64,
    delete_retention_ms: i64,
    segment_bytes: u64,
    index_interval_bytes: u32,
    /// Every segment at the snapshot, oldest first; the last is the active one, read only up
    /// to its size then.
    sources: Vec<Source>,
    /// Leading closed segments old enough (`min.compaction.lag.ms`) to be rewritten.
    cleanable: usize,
    /// The map starts here: below it the log was compacted already and no key repeats.
    map_start: i64,
    /// Records from here on are neither read nor removed: they are not yet committed (high
    /// watermark) or durable (recovery point), and may still be truncated or lost.
    map_bound: i64,
    map_entries_max: usize,
    map: Option<KeyMap>,
    /// The next source to clean.
    next: usize,
    /// A batch whose keys are unknown was passed: no later tombstone may be removed.
    seen_opaque: bool,
}

/// The result of cleaning one group of segments, for [`Log::install_cleaned`]. Dropping it
/// uninstalled deletes its files.
#[derive(Debug)]
pub struct CleanedGroup {
    generation: u64,
    /// `(base offset, size)` of the segments it replaces, oldest first.
    replaces: Vec<(i64, u64)>,
    /// `None` when cleaning changed nothing: then only the bookkeeping is installed.
    segment: Option<Segment>,
    /// Where the replaced segments' data ended: everything below is compacted once installed.
    end_offset: i64,
    stats: CompactStats,
}

impl Drop for CleanedGroup {
    fn drop(&mut self) {
        if let Some(segment) = &self.segment {
            segment.remove_files_quietly();
        }
    }
}

/// One record of an uncompressed batch; ranges index the batch's bytes.
#[derive(Debug)]
struct Record {
    offset: i64,
    timestamp: i64,
    key: Option<Range<usize>>,
    tombstone: bool,
    /// The whole record, length prefix included.
    bytes: Range<usize>,
}

/// Batches whose records the cleaner does not read.
fn is_opaque(header: &BatchHeader) -> bool {
    header.compression() != Ok(Compression::None)
        || header.is_transactional()
        || header.is_control()
}

/// Splits an uncompressed, validated batch into its records. Offsets must rise within the
/// batch's offset range and the records must fill it exactly.
fn parse_records(batch: &[u8], header: &BatchHeader) -> Result<Vec<Record>, BatchError> {
    let total = header
        .total_len()
        .filter(|total| *total >= BATCH_HEADER_LEN && *total <= batch.len())
        .ok_or(BatchError::InvalidBatchLength { batch_length: header.batch_length })?;
    let count = usize::try_from(header.records_count)
        .map_err(|_| BatchError::InvalidRecordsCount { records_count: header.records_count })?;
    let log_append_time = header.timestamp_type() == TimestampType::LogAppendTime;
    let mut reader = VarintReader::new(&batch[..total], RECORDS_OFFSET);
    // Each record takes at least one byte, which bounds the allocation by the batch size.
    let mut records: Vec<Record> = Vec::with_capacity(count.min(total));
    for index in 0..header.records_count {
        let malformed = |reason| BatchError::MalformedRecord { index, reason };
        let start = reader.position();
        let length = reader.varint().ok_or(malformed("bad length varint"))?;
        let length = usize::try_from(length).map_err(|_| malformed("negative length"))?;
        let end = reader
            .position()
            .checked_add(length)
            .filter(|end| *end <= total)
            .ok_or(malformed("length past end of batch"))?;
        let mut body = VarintReader::new(&batch[..end], reader.position());
        body.skip(1).ok_or(malformed("missing attributes"))?;
        let timestamp_delta = body.varlong().ok_or(malformed("bad timestamp delta"))?;
        let offset_delta = body.varint().ok_or(malformed("bad offset delta"))?;
        let key = body.bytes().ok_or(malformed("bad key"))?;
        let value = body.bytes().ok_or(malformed("bad value"))?;
        if !(0..=header.last_offset_delta).contains(&offset_delta) {
            return Err(malformed("offset delta outside the batch"));
        }
        let offset = header.base_offset + i64::from(offset_delta);
        if records.last().is_some_and(|previous| previous.offset >= offset) {
            return Err(malformed("offsets do not rise"));
        }
        let timestamp = if log_append_time {
            header.max_timestamp
        } else {
            header.base_timestamp.checked_add(timestamp_delta).ok_or(malformed("bad timestamp"))?
        };
        records.push(Record {
            offset,
            timestamp,
            key,
            tombstone: value.is_none(),
            bytes: start..end,
        });
        reader.set_position(end);
    }
    if reader.position() != total {
        return Err(BatchError::MalformedRecord {
            index: header.records_count,
            reason: "bytes after the last record",
        });
    }
    Ok(records)
}

/// A batch holding only `kept` of `batch`'s records: same base offset, leader epoch,
/// attributes, base timestamp and producer fields; last offset delta, max timestamp (for
/// CreateTime), count, length and CRC recomputed. Records are copied byte for byte.
fn rebuild_batch(
    batch: &[u8],
    header: &BatchHeader,
    kept: &[&Record],
) -> Result<Vec<u8>, BatchError> {
    let (Some(first), Some(last)) = (kept.first(), kept.last()) else {
        return Err(BatchError::InvalidRecordsCount { records_count: 0 });
    };
    let records_len: usize = kept.iter().map(|record| record.bytes.len()).sum();
    let mut out = Vec::with_capacity(BATCH_HEADER_LEN + records_len);
    out.extend_from_slice(&batch[..BATCH_HEADER_LEN]);
    for record in kept {
        out.extend_from_slice(&batch[record.bytes.clone()]);
    }
    // Shorter than the original, whose length was an i32.
    let batch_length = (out.len() - LOG_OVERHEAD) as i32;
    let last_offset_delta = (last.offset - header.base_offset) as i32;
    let max_timestamp = match header.timestamp_type() {
        TimestampType::LogAppendTime => header.max_timestamp,
        TimestampType::CreateTime => {
            kept.iter().map(|record| record.timestamp).max().unwrap_or(first.timestamp)
        }
    };
    let records_count = kept.len() as i32;
    let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
    put(BATCH_LENGTH_OFFSET, &batch_length.to_be_bytes());
    put(LAST_OFFSET_DELTA_OFFSET, &last_offset_delta.to_be_bytes());
    put(MAX_TIMESTAMP_OFFSET, &max_timestamp.to_be_bytes());
    put(RECORDS_COUNT_OFFSET, &records_count.to_be_bytes());
    batch::recompute_crc(&mut out)?;
    Ok(out)
}

/// Visits every whole batch of a snapshotted segment, CRC-checked: compaction must never give
/// a damaged batch a fresh, valid CRC.
fn walk_batches<T>(
    source: &Source,
    mut visit: impl FnMut(&BatchHeader, &[u8]) -> Result<ControlFlow<T>, LogError>,
) -> Result<Option<T>, LogError> {
    let mut reader = ChunkReader::new(&source.file, &source.path, source.size, SCAN_CHUNK_BYTES);
    let mut position = 0u64;
    while position < source.size {
        let corrupt =
            |error| LogError::SegmentCorrupt { path: source.path.clone(), position, source: error };
        let available = (source.size - position) as usize;
        let header = reader.header(position)?.ok_or_else(|| {
            corrupt(BatchError::Truncated { needed: BATCH_HEADER_LEN, available })
        })?;
        batch::validate_header(&header).map_err(corrupt)?;
        let total = header.total_len().ok_or_else(|| {
            corrupt(BatchError::InvalidBatchLength { batch_length: header.batch_length })
        })?;
        let bytes = reader
            .get(position, total)?
            .ok_or_else(|| corrupt(BatchError::Truncated { needed: total, available }))?;
        let computed = batch::compute_crc(bytes).map_err(corrupt)?;
        if computed != header.crc {
            return Err(corrupt(BatchError::CorruptCrc { stored: header.crc, computed }));
        }
        if let ControlFlow::Break(found) = visit(&header, bytes)? {
            return Ok(Some(found));
        }
        position += total as u64;
    }
    Ok(None)
}

/// Maps every key in `sources` from `map_start` up to `bound` to its latest offset, stopping
/// at a batch boundary before `bound` or before the map would exceed `entries_max` (but taking
/// at least one batch, so that every pass makes progress).
fn build_key_map(
    sources: &[Source],
    map_start: i64,
    bound: i64,
    entries_max: usize,
) -> Result<KeyMap, LogError> {
    let mut map = KeyMap {
        latest: HashMap::new(),
        end: bound,
        digest: [RandomState::new(), RandomState::new()],
    };
    for source in sources.iter().filter(|source| source.next_offset > map_start) {
        if source.base_offset >= bound {
            break;
        }
        let full_at = walk_batches(source, |header, bytes| {
            if header.last_offset() >= bound {
                return Ok(ControlFlow::Break(header.base_offset));
            }
            if header.last_offset() < map_start || is_opaque(header) {
                return Ok(ControlFlow::Continue(()));
            }
            // Unreadable records are kept whole when cleaning; nothing to learn from them.
            let Ok(records) = parse_records(bytes, header) else {
                return Ok(ControlFlow::Continue(()));
            };
            if !map.latest.is_empty() && map.latest.len() + records.len() > entries_max {
                return Ok(ControlFlow::Break(header.base_offset));
            }
            for record in records.iter().filter(|record| record.offset >= map_start) {
                if let Some(key) = &record.key {
                    let digest = map.digest(&bytes[key.clone()]);
                    map.latest.insert(digest, record.offset);
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        if let Some(offset) = full_at {
            map.end = offset;
            break;
        }
    }
    Ok(map)
}

/// What cleaning does to one batch.
enum BatchOutcome {
    Keep,
    Drop,
    Rebuilt(Vec<u8>),
}

/// Decides one batch: which records a later record of their key supersedes, and which
/// tombstones expired. Counts into `stats`.
fn clean_batch(
    compaction: &mut Compaction,
    header: &BatchHeader,
    bytes: &[u8],
    stats: &mut CompactStats,
) -> Result<BatchOutcome, LogError> {
    let Some(map) = &compaction.map else {
        return Ok(BatchOutcome::Keep);
    };
    if is_opaque(header) {
        compaction.seen_opaque = true;
        return Ok(BatchOutcome::Keep);
    }
    let records = match parse_records(bytes, header) {
        Ok(records) => records,
        Err(error) => {
            tracing::warn!(dir = %compaction.dir.display(), offset = header.base_offset, %error,
                "compaction keeps a batch whose records do not parse");
            compaction.seen_opaque = true;
            return Ok(BatchOutcome::Keep);
        }
    };
    let mut kept: Vec<&Record> = Vec::with_capacity(records.len());
    for record in &records {
        let Some(key) = &record.key else {
            kept.push(record);
            continue;
        };
        let digest = map.digest(&bytes[key.clone()]);
        if map.latest.get(&digest).is_some_and(|latest| *latest > record.offset) {
            stats.records_superseded += 1;
            continue;
        }
        // Only a tombstone the map saw as its key's latest (or one in the already compacted
        // part, where no older record of its key is left) may go.
        let expired = record.tombstone
            && record.offset < map.end
            && !compaction.seen_opaque
            && compaction.now_ms.saturating_sub(record.timestamp) > compaction.delete_retention_ms;
        if expired {
            stats.tombstones_removed += 1;
            continue;
        }
        kept.push(record);
    }
    Ok(if kept.len() == records.len() {
        BatchOutcome::Keep
    } else if kept.is_empty() {
        BatchOutcome::Drop
    } else {
        let rebuilt = rebuild_batch(bytes, header, &kept).map_err(|source| {
            LogError::SegmentCorrupt { path: compaction.dir.clone(), position: 0, source }
        })?;
        BatchOutcome::Rebuilt(rebuilt)
    })
}

fn prepared(bytes: Bytes, header: BatchHeader) -> PreparedBatch {
    let mut head = [0u8; ATTRIBUTES_OFFSET];
    head.copy_from_slice(&bytes[..ATTRIBUTES_OFFSET]);
    PreparedBatch { header, head, tail: bytes.slice(ATTRIBUTES_OFFSET..) }
}

impl Compaction {
    /// Caps the key map (tests use a small cap to exercise passes that cover only part of the
    /// dirty log).
    pub fn with_key_map_entries_max(mut self, entries_max: usize) -> Compaction {
        self.map_entries_max = entries_max;
        self
    }

    /// Cleans the next group of adjacent closed segments (up to `segment.bytes` together)
    /// into new files beside them; `None` when the pass is done. Builds the key map first if
    /// it was not built yet. Reads and writes files only: call it without the log's lock.
    pub fn clean_next_group(&mut self) -> Result<Option<CleanedGroup>, LogError> {
        if self.map.is_none() {
            let map =
                build_key_map(&self.sources, self.map_start, self.map_bound, self.map_entries_max)?;
            self.map = Some(map);
        }
        let map_end = self.map.as_ref().map_or(self.map_start, |map| map.end);
        // Segments from the map's end on gain nothing: their keys' later records are unknown.
        // (The one the map ends in is cleaned; its records from `map_end` on only lose what
        // the map proves superseded.)
        let limit = self.sources[..self.cleanable]
            .iter()
            .take_while(|source| source.base_offset < map_end)
            .count();
        if self.next >= limit {
            return Ok(None);
        }
        let first = self.next;
        let mut last = first + 1;
        let mut group_bytes = self.sources[first].size;
        while last < limit
            && group_bytes + self.sources[last].size <= self.segment_bytes
            && self.sources[last].next_offset - self.sources[first].base_offset
                <= RELATIVE_OFFSET_MAX
        {
            group_bytes += self.sources[last].size;
            last += 1;
        }
        self.next = last;

        let base_offset = self.sources[first].base_offset;
        let mut out = Segment::create_cleaned(
            &self.dir,
            base_offset,
            self.index_interval_bytes,
            &self.handles,
        )?;
        let mut stats = CompactStats::default();
        let result = self.write_group(first..last, &mut out, &mut stats);
        if let Err(error) = result {
            out.remove_files_quietly();
            return Err(error);
        }
        let replaces: Vec<(i64, u64)> = self.sources[first..last]
            .iter()
            .map(|source| (source.base_offset, source.size))
            .collect();
        let changed = stats.records_superseded + stats.tombstones_removed > 0 || replaces.len() > 1;
        let segment = if changed {
            if let Err(error) = out.finalize().and_then(|()| out.sync_all()) {
                out.remove_files_quietly();
                return Err(error);
            }
            stats.segments_replaced = replaces.len();
            stats.segments_written = 1;
            stats.bytes_before = group_bytes;
            stats.bytes_after = out.size;
            Some(out)
        } else {
            out.remove_files_quietly();
            None
        };
        Ok(Some(CleanedGroup {
            generation: self.generation,
            replaces,
            segment,
            end_offset: self.sources[last - 1].next_offset.min(map_end),
            stats,
        }))
    }

    fn write_group(
        &mut self,
        group: Range<usize>,
        out: &mut Segment,
        stats: &mut CompactStats,
    ) -> Result<(), LogError> {
        let sources = std::mem::take(&mut self.sources);
        let mut run: Vec<PreparedBatch> = Vec::new();
        let mut run_bytes = 0usize;
        let flush = |run: &mut Vec<PreparedBatch>, out: &mut Segment| {
            let result = out.append(run).map_err(|failure| failure.error);
            run.clear();
            result
        };
        let mut result = Ok(());
        for source in &sources[group] {
            let walked = walk_batches(source, |header, bytes| {
                let batch = match clean_batch(self, header, bytes, stats)? {
                    BatchOutcome::Keep => prepared(Bytes::copy_from_slice(bytes), *header),
                    BatchOutcome::Drop => return Ok(ControlFlow::Continue(())),
                    BatchOutcome::Rebuilt(rebuilt) => {
                        let header = BatchHeader::parse(&rebuilt).map_err(|source| {
                            LogError::SegmentCorrupt { path: self.dir.clone(), position: 0, source }
                        })?;
                        prepared(Bytes::from(rebuilt), header)
                    }
                };
                run_bytes += batch.head.len() + batch.tail.len();
                run.push(batch);
                if run_bytes >= WRITE_RUN_BYTES {
                    run_bytes = 0;
                    flush(&mut run, out)?;
                }
                Ok(ControlFlow::<()>::Continue(()))
            });
            if let Err(error) = walked {
                result = Err(error);
                break;
            }
        }
        self.sources = sources;
        result?;
        if !run.is_empty() {
            flush(&mut run, out)?;
        }
        Ok(())
    }
}

impl Log {
    /// Starts a compaction pass if the policy has `compact` and enough of the closed,
    /// compactable segments (`min.compaction.lag.ms`) is new since the last pass
    /// (`min.cleanable.dirty.ratio`). Records at and after `upto` (the high watermark) or the
    /// recovery point are left alone and supersede nothing: a truncation or a crash could
    /// still take them, and the older records they replace must then still be there. Cheap:
    /// takes a snapshot of the segment list and files.
    pub fn prepare_compaction(&self, now_ms: i64, upto: i64) -> Option<Compaction> {
        if self.offline || !self.config.cleanup_policy.compact {
            return None;
        }
        let map_start = self.cleaned_upto.max(self.log_start_offset());
        let map_bound = upto.min(self.recovery_point()).min(self.log_end_offset());
        if map_bound <= map_start {
            return None;
        }
        let closed = &self.segments[..self.segments.len() - 1];
        let lag_ms = self.config.min_compaction_lag_ms;
        let cleanable = closed
            .iter()
            .take_while(|segment| {
                lag_ms <= 0
                    || segment
                        .max_timestamp
                        .is_none_or(|(ts, _)| now_ms.saturating_sub(ts) >= lag_ms)
            })
            .count();
        let (mut dirty_bytes, mut total_bytes) = (0u64, 0u64);
        for segment in &closed[..cleanable] {
            total_bytes += segment.size;
            if segment.next_offset > self.cleaned_upto {
                dirty_bytes += segment.size;
            }
        }
        // `max.compaction.lag.ms`: the oldest uncompacted closed segment has waited too long
        // (by its newest timestamp: the first is not kept, so this is never early).
        let overdue = closed[..cleanable]
            .iter()
            .find(|segment| segment.next_offset > self.cleaned_upto)
            .and_then(|segment| segment.max_timestamp)
            .is_some_and(|(ts, _)| now_ms.saturating_sub(ts) > self.config.max_compaction_lag_ms);
        if dirty_bytes == 0
            || (!overdue
                && (dirty_bytes as f64)
                    < self.config.min_cleanable_dirty_ratio * total_bytes as f64)
        {
            return None;
        }
        // The pass reads these handles outside the lock, whatever happens to the segments
        // meanwhile: it holds one descriptor per segment of this log while it runs. Out of
        // descriptors, the pass waits for the next round.
        let mut sources = Vec::with_capacity(self.segments.len());
        for segment in &self.segments {
            let file = match segment.log_handle() {
                Ok(file) => file,
                Err(error) => {
                    tracing::debug!(dir = %self.dir.display(), %error, "compaction postponed");
                    return None;
                }
            };
            sources.push(Source {
                base_offset: segment.base_offset,
                next_offset: segment.next_offset,
                size: segment.size,
                file,
                path: segment.log_path().to_owned(),
            });
        }
        Some(Compaction {
            dir: self.dir.clone(),
            handles: self.handles.clone(),
            generation: self.generation,
            now_ms,
            delete_retention_ms: self.config.delete_retention_ms,
            segment_bytes: self.config.segment_bytes,
            index_interval_bytes: self.config.index_interval_bytes,
            sources,
            cleanable,
            map_start,
            map_bound,
            map_entries_max: KEY_MAP_ENTRIES_MAX,
            map: None,
            next: 0,
            seen_opaque: false,
        })
    }

    /// Swaps a cleaned group in for the segments it was cleaned from. `Ok(None)` (and the
    /// cleaned files deleted) when the log changed under the pass: those segments are gone or
    /// the log was truncated. The pass should stop then. A failure after the swap was committed
    /// takes the log offline: the next open completes the swap.
    pub fn install_cleaned(
        &mut self,
        mut group: CleanedGroup,
    ) -> Result<Option<CompactStats>, LogError> {
        self.check_online()?;
        let first = self
            .segments
            .iter()
            .position(|s| Some(s.base_offset) == group.replaces.first().map(|r| r.0));
        let end = first.map(|first| first + group.replaces.len());
        let unchanged = group.generation == self.generation
            && first.zip(end).is_some_and(|(first, end)| {
                // Never the active segment.
                end < self.segments.len()
                    && self.segments[first..end].iter().zip(&group.replaces).all(
                        |(segment, &(base, size))| {
                            segment.base_offset == base && segment.size == size
                        },
                    )
            });
        let (Some(first), Some(end), true) = (first, end, unchanged) else {
            return Ok(None);
        };
        let Some(mut cleaned) = group.segment.take() else {
            self.cleaned_upto = self.cleaned_upto.max(group.end_offset);
            return Ok(Some(group.stats));
        };
        if let Err(error) = cleaned.commit_swap().and_then(|()| sync_dir(&self.dir)) {
            cleaned.remove_files_quietly();
            return Err(error);
        }
        let swapped = (|| {
            // Newest first, like every other deletion here.
            for segment in self.segments[first + 1..end].iter().rev() {
                segment.delete_files()?;
            }
            cleaned.finish_swap(&self.dir)?;
            sync_dir(&self.dir)
        })();
        if let Err(error) = swapped {
            tracing::error!(dir = %self.dir.display(), %error, "compaction swap failed; log offline");
            self.offline = true;
            return Err(error);
        }
        debug_assert!(cleaned.next_offset <= self.segments[end].base_offset);
        self.segments.drain(first + 1..end);
        self.segments[first] = cleaned;
        self.cleaned_upto = self.cleaned_upto.max(group.end_offset);
        Ok(Some(group.stats))
    }

    /// One whole compaction pass with the log borrowed throughout (tests, tools), over the
    /// durable part of the log. The broker uses [`compact_locked`] so that appends go on.
    pub fn compact(&mut self, now_ms: i64) -> Result<CompactStats, LogError> {
        let mut stats = CompactStats::default();
        let Some(mut compaction) = self.prepare_compaction(now_ms, i64::MAX) else {
            return Ok(stats);
        };
        while let Some(group) = compaction.clean_next_group()? {
            match self.install_cleaned(group)? {
                Some(installed) => stats.add(installed),
                None => break,
            }
        }
        Ok(stats)
    }
}

/// One compaction pass over the log behind `lock` up to `upto` (the high watermark), taking
/// the lock only to snapshot and to install each cleaned group. `keep_going` is asked before
/// each group (shutdown, partition deleted).
pub fn compact_locked<G, L, K>(
    lock: L,
    now_ms: i64,
    upto: i64,
    keep_going: K,
) -> Result<CompactStats, LogError>
where
    G: DerefMut<Target = Log>,
    L: Fn() -> Result<G, LogError>,
    K: Fn() -> bool,
{
    let mut stats = CompactStats::default();
    let Some(mut compaction) = lock()?.prepare_compaction(now_ms, upto) else {
        return Ok(stats);
    };
    while keep_going() {
        let Some(group) = compaction.clean_next_group()? else {
            break;
        };
        match lock()?.install_cleaned(group)? {
            Some(installed) => stats.add(installed),
            None => break,
        }
    }
    Ok(stats)
}

fn remove_if_present(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LogError::SegmentDelete { path: path.to_owned(), source }),
    }
}

/// Finishes or discards what an interrupted compaction left in `dir`, before the log opens:
/// `*.cleaned` files were never committed and go; a `.log.swap` was, and replaces every
/// segment whose base offset lies in [its base, its end). A segment of its group beyond the
/// swap's last batch (all its records were removed) stays with its old, uncompacted data,
/// which is harmless: compaction only ever removes records that a later one supersedes.
pub(crate) fn recover_leftovers(dir: &Path) -> Result<(), LogError> {
    let read_dir = |source| LogError::DirRead { path: dir.to_owned(), source };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir)? {
        if let Ok(name) = entry.map_err(read_dir)?.file_name().into_string() {
            names.push(name);
        }
    }
    let mut changed = false;
    for name in names.iter().filter(|name| name.ends_with(CLEANED_SUFFIX)) {
        tracing::info!(dir = %dir.display(), file = %name, "deleting an uncommitted compaction file");
        remove_if_present(&dir.join(name))?;
        changed = true;
    }
    let bases: Vec<i64> = names.iter().filter_map(|name| segment::base_offset_of(name)).collect();
    let mut swaps: Vec<i64> = names
        .iter()
        .filter_map(|name| name.strip_suffix(SWAP_SUFFIX))
        .filter_map(segment::base_offset_of)
        .collect();
    swaps.sort_unstable();
    for base in swaps {
        let swap = Segment::paths(dir, base, SWAP_SUFFIX).0;
        let end = segment::scan_end_offset(&swap, base)?;
        for &other in bases.iter().filter(|other| **other > base && **other < end) {
            let (log, index, time_index) = Segment::paths(dir, other, "");
            // The `.log` last, so that an interruption here still finds the segment next time.
            remove_if_present(&index)?;
            remove_if_present(&time_index)?;
            remove_if_present(&log)?;
        }
        let (log, index, time_index) = Segment::paths(dir, base, "");
        remove_if_present(&index)?;
        remove_if_present(&time_index)?;
        strom_fsio::rename(&swap, &log).map_err(|source| LogError::SegmentRename {
            from: swap.clone(),
            to: log.clone(),
            source,
        })?;
        tracing::warn!(dir = %dir.display(), base, end, "completed an interrupted compaction swap");
        changed = true;
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use strom_protocol::batch::test_support::put_varint;

    /// `(offset delta, timestamp delta, key, value)`.
    type Spec<'a> = (i64, i64, Option<&'a [u8]>, Option<&'a [u8]>);

    /// A batch at `base_offset` of the given records.
    fn batch(base_offset: i64, records: &[Spec<'_>]) -> Vec<u8> {
        let mut body_all = Vec::new();
        for (offset_delta, ts_delta, key, value) in records {
            let mut body = vec![0u8];
            put_varint(&mut body, *ts_delta);
            put_varint(&mut body, *offset_delta);
            for field in [key, value] {
                match field {
                    Some(bytes) => {
                        put_varint(&mut body, bytes.len() as i64);
                        body.extend_from_slice(bytes);
                    }
                    None => put_varint(&mut body, -1),
                }
            }
            put_varint(&mut body, 1); // one header, to check it is carried along
            put_varint(&mut body, 1);
            body.push(b'h');
            put_varint(&mut body, 1);
            body.push(b'v');
            put_varint(&mut body_all, body.len() as i64);
            body_all.extend_from_slice(&body);
        }
        let last_delta = records.last().map_or(0, |r| r.0) as i32;
        let max_ts = 1000 + records.iter().map(|r| r.1).max().unwrap_or(0);
        let mut out = Vec::new();
        out.extend_from_slice(&base_offset.to_be_bytes());
        out.extend_from_slice(
            &((BATCH_HEADER_LEN - LOG_OVERHEAD + body_all.len()) as i32).to_be_bytes(),
        );
        out.extend_from_slice(&7i32.to_be_bytes());
        out.push(2);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&last_delta.to_be_bytes());
        out.extend_from_slice(&1000i64.to_be_bytes());
        out.extend_from_slice(&max_ts.to_be_bytes());
        out.extend_from_slice(&55i64.to_be_bytes());
        out.extend_from_slice(&3i16.to_be_bytes());
        out.extend_from_slice(&9i32.to_be_bytes());
        out.extend_from_slice(&(records.len() as i32).to_be_bytes());
        out.extend_from_slice(&body_all);
        batch::recompute_crc(&mut out).unwrap();
        out
    }

    #[test]
    fn records_parse_with_keys_tombstones_and_offsets() {
        let bytes = batch(
            40,
            &[(0, 0, Some(b"a"), Some(b"1")), (1, 5, None, Some(b"2")), (3, 2, Some(b"b"), None)],
        );
        let header = batch::validate(&bytes).unwrap();
        let records = parse_records(&bytes, &header).unwrap();
        let summary: Vec<_> = records
            .iter()
            .map(|r| (r.offset, r.timestamp, r.key.clone().map(|k| bytes[k].to_vec()), r.tombstone))
            .collect();
        assert_eq!(
            summary,
            vec![
                (40, 1000, Some(b"a".to_vec()), false),
                (41, 1005, None, false),
                (43, 1002, Some(b"b".to_vec()), true),
            ]
        );
        assert_eq!(records.last().unwrap().bytes.end, bytes.len());
    }

    #[test]
    fn malformed_records_are_refused_not_misread() {
        let bytes = batch(0, &[(0, 0, Some(b"a"), Some(b"1")), (1, 0, Some(b"b"), Some(b"2"))]);
        let header = batch::validate(&bytes).unwrap();
        // A count that promises a record more than the bytes hold.
        let mut more = header;
        more.records_count = 3;
        assert!(parse_records(&bytes, &more).is_err());
        // Fewer: the last record's bytes are left over.
        let mut fewer = header;
        fewer.records_count = 1;
        assert!(parse_records(&bytes, &fewer).is_err());
        // Offset deltas beyond the batch's last offset.
        let mut narrow = header;
        narrow.last_offset_delta = 0;
        assert!(parse_records(&bytes, &narrow).is_err());
        // Truncated bytes.
        assert!(parse_records(&bytes[..bytes.len() - 1], &header).is_err());
    }

    #[test]
    fn a_rebuilt_batch_keeps_its_identity_and_gets_a_valid_crc() {
        let bytes = batch(
            100,
            &[
                (0, 9, Some(b"a"), Some(b"1")),
                (1, 2, Some(b"b"), Some(b"2")),
                (2, 4, Some(b"c"), Some(b"3")),
            ],
        );
        let header = batch::validate(&bytes).unwrap();
        let records = parse_records(&bytes, &header).unwrap();
        let rebuilt = rebuild_batch(&bytes, &header, &[&records[1]]).unwrap();
        let new = batch::validate(&rebuilt).unwrap();
        assert_eq!(new.base_offset, 100);
        assert_eq!(new.partition_leader_epoch, 7);
        assert_eq!((new.producer_id, new.producer_epoch, new.base_sequence), (55, 3, 9));
        assert_eq!(new.base_timestamp, 1000);
        assert_eq!(new.max_timestamp, 1002);
        assert_eq!((new.records_count, new.last_offset_delta), (1, 1));
        let again = parse_records(&rebuilt, &new).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].offset, 101);
        assert_eq!(&rebuilt[again[0].bytes.clone()], &bytes[records[1].bytes.clone()]);
        assert!(rebuild_batch(&bytes, &header, &[]).is_err());
    }
}
