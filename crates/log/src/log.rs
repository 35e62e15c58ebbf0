//! The partition log: ordered segments, offset assignment, reads, recovery, retention, fsync.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use strom_protocol::batch::{
    self, BatchError, BatchHeader, Batches, TimestampType, ATTRIBUTES_OFFSET, BASE_OFFSET_OFFSET,
    MAGIC_V2, PARTITION_LEADER_EPOCH_OFFSET,
};

use crate::checkpoint::sync_dir;
use crate::epoch::LeaderEpochCache;
use crate::handles::{FileHandles, SyncTarget};
use crate::index::{OFFSET_ENTRY_LEN, TIME_ENTRY_LEN};
use crate::producer::{AppendCheck, ProducerStates};
use crate::segment::{Located, OpenMode, PreparedBatch, Segment, SegmentView, RELATIVE_OFFSET_MAX};
use crate::txn_index::{self, AbortedTxn};
use crate::{AppendInfo, LogConfig, LogError, SEGMENT_BYTES_MAX};
use strom_protocol::control::{self, Marker};

/// A partition's log. Not thread-safe by itself: the broker wraps it in a mutex and fsyncs
/// outside that mutex through [`SyncHandle`].
#[derive(Debug)]
pub struct Log {
    pub(crate) dir: PathBuf,
    /// The log directory's cache of open handles, through which every segment file opens.
    pub(crate) handles: FileHandles,
    pub(crate) config: LogConfig,
    /// Never empty; the last one is the active segment.
    pub(crate) segments: Vec<Segment>,
    epochs: LeaderEpochCache,
    /// Kafka's log start offset: the first offset a reader may ask for. At or above the first
    /// segment's base offset; DeleteRecords (or a follower's leader) moves it inside a
    /// segment, and retention then deletes the segments wholly below it. Never above the log
    /// end offset.
    log_start_offset: i64,
    /// Every offset below this is durable.
    recovery_point: i64,
    /// Set at a roll to the new segment's base offset until an fsync covering data after it
    /// has also fsynced the directory entry of the new file.
    dir_unsynced_since: Option<i64>,
    /// Bumped by truncation so that a [`SyncHandle`] taken before it cannot advance the
    /// recovery point over data written after it (nor a compaction install what it cleaned
    /// from data that is gone).
    pub(crate) generation: u64,
    /// A write failed and could not be undone: the files no longer match memory.
    pub(crate) offline: bool,
    /// Compaction: every offset below this was compacted by a pass whose key map covered it, so
    /// no key repeats there. In memory only: after a restart the whole log counts as dirty.
    pub(crate) cleaned_upto: i64,
    /// The max timestamp of the active segment's first batch, which `segment.ms` counts from.
    /// After an open or a truncation, the segment's max timestamp then (which is no earlier,
    /// so the roll comes no earlier than Kafka's).
    active_first_timestamp: Option<i64>,
    /// Idempotent producers' state of every batch in the log (see `producer`): checked by
    /// leader appends, updated by every append, snapshotted at each roll and rebuilt from
    /// the newest snapshot plus the batches after it on open and on truncation.
    producers: ProducerStates,
    /// Every aborted transaction whose marker is in the log, by marker offset (see
    /// `txn_index`).
    aborted: Vec<AbortedTxn>,
}

/// The files a group commit must fdatasync, taken under the broker's lock and synced outside:
/// every segment file written since its last sync (a written `.log` through the very handle
/// the writes went through, which its slot keeps open until then), and the directory after a
/// roll.
#[derive(Debug)]
pub struct SyncHandle {
    upto: i64,
    generation: u64,
    targets: Vec<SyncTarget>,
    /// The partition directory, when a roll created files in it since its last sync.
    dir: Option<(PathBuf, FileHandles)>,
}

impl SyncHandle {
    /// The log end offset when the handle was taken: everything below is durable after `sync`.
    pub fn upto(&self) -> i64 {
        self.upto
    }

    /// fdatasyncs the files. [`LogError::FileHandlesExhausted`] when a file that must be
    /// reopened for it cannot be (nothing failed on disk: try again later); any other error
    /// is a failed sync.
    pub fn sync(&self) -> Result<(), LogError> {
        for target in &self.targets {
            target.sync()?;
        }
        if let Some((dir, handles)) = &self.dir {
            handles.retry_exhausted(dir, || strom_fsio::sync_dir(dir)).map_err(|source| {
                if crate::handles::is_descriptor_exhaustion(&source) {
                    LogError::FileHandlesExhausted { path: dir.clone(), source }
                } else {
                    LogError::DirSync { path: dir.clone(), source }
                }
            })?;
        }
        Ok(())
    }
}

/// A read taken under the log's lock by [`Log::read_start`], performed outside it.
#[derive(Debug, Clone)]
pub struct ReadStart {
    offset: i64,
    max_offset: i64,
    /// The segments that may hold the first batch, in order.
    segments: Vec<SegmentView>,
}

impl ReadStart {
    /// Finds the batch holding the read's offset (file IO; `Ok(None)`: no batch holds it).
    pub fn locate(&self) -> Result<Option<Located>, LogError> {
        for segment in self.segments.iter().filter(|s| !s.is_empty()) {
            if let Some(found) = segment.locate(self.offset, self.max_offset)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}

fn map_batch_error(batch_index: usize, source: BatchError) -> LogError {
    match source {
        BatchError::UnsupportedMagic { magic } => LogError::UnsupportedMagic { batch_index, magic },
        source => LogError::CorruptBatch { batch_index, source },
    }
}

impl Log {
    /// Opens (recovering if needed) the log in `dir`. Its files open on use through
    /// `handles`, the log directory's cache; the log holds no descriptor while unused.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        recovery_point: i64,
        handles: &FileHandles,
    ) -> Result<Log, LogError> {
        Log::open_at(dir, config, recovery_point, 0, handles)
    }

    /// [`Log::open`] with the log start offset a checkpoint recorded (Kafka's
    /// `log-start-offset-checkpoint`): the log starts at the larger of it and the first
    /// segment's base offset, but never after its end (data a crash took).
    pub fn open_at(
        dir: &Path,
        config: LogConfig,
        recovery_point: i64,
        checkpointed_log_start: i64,
        handles: &FileHandles,
    ) -> Result<Log, LogError> {
        if config.segment_bytes == 0 || config.segment_bytes > SEGMENT_BYTES_MAX {
            return Err(LogError::ConfigInvalid {
                key: "segment_bytes",
                value: config.segment_bytes,
            });
        }
        fs::create_dir_all(dir)
            .map_err(|source| LogError::DirCreate { path: dir.to_owned(), source })?;
        crate::compact::recover_leftovers(dir)?;
        let mut bases = Vec::new();
        let mut others = Vec::new();
        let read_dir = |source| LogError::DirRead { path: dir.to_owned(), source };
        for entry in fs::read_dir(dir).map_err(read_dir)? {
            let name = entry.map_err(read_dir)?.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            match crate::segment::base_offset_of(name) {
                Some(base) => bases.push(base),
                None => others.push(name.to_owned()),
            }
        }
        bases.sort_unstable();
        let interval = config.index_interval_bytes;

        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
        // Segments before the one holding the recovery point were fsynced: trust them.
        let first_verified =
            bases.partition_point(|base| *base <= recovery_point).saturating_sub(1);
        let mut bytes_cut = 0u64;
        for (i, &base) in bases.iter().enumerate() {
            let overlaps = segments.last().is_some_and(|prev| base < prev.next_offset);
            if bytes_cut > 0 || overlaps {
                // Everything after the first invalid batch goes, whole segments included.
                let (doomed, _) =
                    Segment::open(dir, base, interval, OpenMode::Trusted, 0, handles)?;
                bytes_cut += doomed.size;
                doomed.delete_files()?;
                if bytes_cut == 0 {
                    // An empty overlapping segment still ends the valid log.
                    bytes_cut = 1;
                }
                continue;
            }
            let gap = segments.last().map(|prev| prev.next_offset).filter(|end| *end < base);
            if let (Some(end), false) = (gap, config.cleanup_policy.compact) {
                // Segments follow each other without holes unless compaction made them (it
                // keeps base offsets and drops records): a hole here is a lost segment file.
                return Err(LogError::SegmentGap { dir: dir.to_owned(), from: end, to: base });
            }
            let trusted = i < first_verified && Segment::index_files_exist(dir, base);
            let mode = if trusted { OpenMode::Trusted } else { OpenMode::Verify };
            let (segment, cut) = Segment::open(dir, base, interval, mode, recovery_point, handles)?;
            bytes_cut += cut;
            segments.push(segment);
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0, interval, handles)?);
        }
        for segment in &mut segments {
            // An empty segment holds nothing a crash could lose; the others' writes during the
            // open are synced by the next flush, which opens them again.
            segment.release_pins();
        }
        if bytes_cut > 0 {
            tracing::warn!(dir = %dir.display(), bytes_cut, "log recovery cut a torn or corrupt tail");
        }
        // Index files whose segment is gone (deleted by retention or the cut above).
        for name in others {
            let stem = name.strip_suffix(".index").or_else(|| name.strip_suffix(".timeindex"));
            let orphan = stem
                .and_then(|s| crate::segment::base_offset_of(&format!("{s}.log")))
                .is_some_and(|base| !segments.iter().any(|segment| segment.base_offset == base));
            if orphan || name.ends_with(".tmp") {
                let _ = fs::remove_file(dir.join(&name));
            }
        }

        let mut log = Log {
            dir: dir.to_owned(),
            handles: handles.clone(),
            config,
            segments,
            epochs: LeaderEpochCache::load(dir)?,
            log_start_offset: 0,
            recovery_point,
            dir_unsynced_since: None,
            generation: 0,
            offline: false,
            cleaned_upto: 0,
            active_first_timestamp: None,
            producers: ProducerStates::default(),
            aborted: Vec::new(),
        };
        let end = log.log_end_offset();
        let first_base = log.segments[0].base_offset;
        if checkpointed_log_start > end {
            tracing::warn!(dir = %dir.display(), checkpointed_log_start, end,
                "log start offset checkpoint is beyond the log end; the log starts at its end");
        }
        log.log_start_offset = checkpointed_log_start.min(end).max(first_base);
        let start = log.log_start_offset;
        log.recovery_point = recovery_point.min(end).max(start);
        log.epochs.truncate_from_end(end)?;
        log.epochs.truncate_from_start(start)?;
        log.active_first_timestamp = log.active().max_timestamp.map(|(ts, _)| ts);
        log.aborted = txn_index::load_all(dir)?;
        log.aborted.retain(|t| t.last_offset >= start);
        log.rebuild_producer_state()?;
        if bytes_cut > 0 {
            sync_dir(dir)?;
        }
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log directory's handle cache this log opens its files through.
    pub fn file_handles(&self) -> &FileHandles {
        &self.handles
    }

    /// Idempotent producers' state as of the log end offset.
    pub fn producer_states(&self) -> &ProducerStates {
        &self.producers
    }

    /// Forgets producers silent for longer than `expiration_ms` (Kafka's
    /// `producer.id.expiration.ms`), counted from their newest batch's timestamp.
    pub fn expire_producers(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        self.producers.expire(now_ms, expiration_ms)
    }

    /// Rebuilds the producer state from the newest snapshot at or below the log end offset
    /// and the batch headers after it. Without a snapshot (a log written before snapshots
    /// existed, or whose snapshots a crash destroyed) the replay starts at the second-newest
    /// segment, as Kafka's loader does, so that an open never walks a whole large log.
    fn rebuild_producer_state(&mut self) -> Result<(), LogError> {
        let end = self.log_end_offset();
        let (from, states) = match crate::snapshot::load_latest(&self.dir, end) {
            Some(found) => found,
            None => {
                let penultimate = self.segments.len().saturating_sub(2);
                (self.segments[penultimate].base_offset, ProducerStates::default())
            }
        };
        self.producers = states;
        // Entries the replay is about to find again, and any a truncation left in the files.
        self.aborted.retain(|t| t.last_offset < from);
        let Log { segments, producers, aborted, .. } = self;
        for segment in segments.iter().filter(|s| s.next_offset > from) {
            let mut failed = None;
            segment.visit_headers_from(from, |position, header| {
                if header.base_offset < from || failed.is_some() {
                    return;
                }
                let marker = if header.is_control() {
                    match segment.read_prefix(position, control::MARKER_PREFIX_LEN) {
                        Ok(prefix) => control::parse_marker(&prefix),
                        Err(e) => {
                            failed = Some(e);
                            return;
                        }
                    }
                } else {
                    None
                };
                record_batch(producers, aborted, header, marker);
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The first offset of the oldest open transaction, if any: a read_committed reader's
    /// last stable offset is the smaller of this and the high watermark.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.producers.first_unstable_offset()
    }

    /// The aborted transactions a read of `[from, upto)` overlaps: marker at or after `from`,
    /// first offset before `upto`, in marker order.
    pub fn aborted_transactions(&self, from: i64, upto: i64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|t| t.last_offset < from);
        self.aborted[start..].iter().filter(|t| t.first_offset < upto).copied().collect()
    }

    /// Writes a transaction marker for `producer_id` (a partition leader, told by the
    /// transaction coordinator): COMMIT makes the producer's open transaction visible to
    /// read_committed readers, ABORT adds it to the aborted index. Refused for a producer
    /// epoch or coordinator epoch older than the log has seen.
    pub fn append_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: Marker,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.check_online()?;
        self.producers.check_marker(producer_id, producer_epoch, marker.coordinator_epoch)?;
        let bytes = Bytes::from(control::build_marker(producer_id, producer_epoch, marker, now_ms));
        self.append_validated(&bytes, leader_epoch, now_ms, false)
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Applies a topic config change. Segment size and index interval take effect from the
    /// next segment; limits and retention at once. An invalid segment size is refused.
    pub fn set_config(&mut self, config: LogConfig) -> Result<(), LogError> {
        if config.segment_bytes == 0 || config.segment_bytes > SEGMENT_BYTES_MAX {
            return Err(LogError::ConfigInvalid {
                key: "segment.bytes",
                value: config.segment_bytes,
            });
        }
        self.config = config;
        Ok(())
    }

    pub fn log_start_offset(&self) -> i64 {
        debug_assert!(self.log_start_offset >= self.segments[0].base_offset);
        self.log_start_offset
    }

    /// The log start offset when a checkpoint must remember it: `None` while it is the first
    /// segment's base offset, which the files say by themselves (Kafka checkpoints only
    /// those, so the file stays small with many partitions).
    pub fn log_start_offset_to_checkpoint(&self) -> Option<i64> {
        (self.log_start_offset > self.segments[0].base_offset).then_some(self.log_start_offset)
    }

    /// Moves the log start offset up to `offset` (DeleteRecords on a leader, which checks it
    /// against its high watermark first; on a follower, its leader's log start offset).
    /// Memory only, under the caller's lock: reads below it are refused from now on, and the
    /// retention pass deletes the segments wholly below it and trims the leader-epoch cache.
    /// Never moves it back. `Ok(true)` when it moved.
    pub fn increment_log_start_offset(&mut self, offset: i64) -> Result<bool, LogError> {
        self.check_online()?;
        let (start, end) = (self.log_start_offset, self.log_end_offset());
        if offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start, end });
        }
        if offset <= start {
            return Ok(false);
        }
        self.log_start_offset = offset;
        self.aborted.retain(|t| t.last_offset >= offset);
        self.cleaned_upto = self.cleaned_upto.max(offset);
        Ok(true)
    }

    /// Replaces the whole log by an empty one that starts at `offset`, beyond its end: a
    /// follower whose leader's log now starts after this log ends (Kafka's
    /// `truncateFullyAndStartAt`). Durable before it returns.
    pub fn truncate_fully_and_start_at(&mut self, offset: i64) -> Result<(), LogError> {
        self.check_online()?;
        if offset <= self.log_end_offset() {
            return self.truncate_to(offset);
        }
        self.generation += 1;
        crate::snapshot::delete_above(&self.dir, i64::MIN);
        txn_index::delete_from(&self.dir, i64::MIN)?;
        self.aborted.clear();
        self.replace_with_empty_at(offset)?;
        self.epochs.truncate_from_end(i64::MIN)?;
        self.rebuild_producer_state()?;
        Ok(())
    }

    /// Swaps every segment for one empty segment based at `offset` and makes it durable.
    fn replace_with_empty_at(&mut self, offset: i64) -> Result<(), LogError> {
        // Create first: `segments` must never be empty, even if a deletion fails midway.
        let fresh =
            Segment::create(&self.dir, offset, self.config.index_interval_bytes, &self.handles)?;
        let old = std::mem::replace(&mut self.segments, vec![fresh]);
        for segment in old.iter().rev() {
            segment.delete_files()?;
        }
        sync_dir(&self.dir)?;
        self.log_start_offset = offset;
        self.cleaned_upto = offset;
        self.recovery_point = offset;
        self.dir_unsynced_since = None;
        self.active_first_timestamp = None;
        Ok(())
    }

    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active(&self) -> &Segment {
        // The constructor and every removal keep at least one segment.
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    pub(crate) fn check_online(&self) -> Result<(), LogError> {
        if self.offline {
            return Err(LogError::LogOffline { dir: self.dir.clone() });
        }
        Ok(())
    }

    /// Validates `batches` (all or nothing), assigns offsets from the log end offset, stamps the
    /// leader epoch and writes them without copying (except for LogAppendTime).
    pub fn append(
        &mut self,
        batches: &Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.append_validated(batches, leader_epoch, now_ms, true)
    }

    /// Appends batches the broker itself built (a coordinator's records): validated as a
    /// follower's are, not checked against the producer state (a transaction's offset commits
    /// carry a producer id but no sequence).
    pub fn append_trusted(
        &mut self,
        batches: &Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.append_validated(batches, leader_epoch, now_ms, false)
    }

    /// [`Log::append`] of a client's batches (`from_client`: checked against the producer
    /// state, no control batches) or of the leader's own (markers).
    fn append_validated(
        &mut self,
        batches: &Bytes,
        leader_epoch: i32,
        now_ms: i64,
        from_client: bool,
    ) -> Result<AppendInfo, LogError> {
        self.check_online()?;
        if let Some(latest) = self.epochs.latest_epoch().filter(|latest| leader_epoch < *latest) {
            return Err(LogError::LeaderEpochStale { epoch: leader_epoch, latest });
        }
        let validated = self.validate_batches(batches, from_client)?;
        let headers: Vec<BatchHeader> = validated.iter().map(|(h, _)| *h).collect();
        let check = if from_client {
            self.producers.check_client_append(&headers)?
        } else {
            AppendCheck::Append
        };
        if let AppendCheck::Duplicate(original) = check {
            return Ok(AppendInfo {
                base_offset: original.first_offset,
                last_offset: original.last_offset,
                log_append_time: None,
                max_timestamp: -1,
                duplicate: true,
            });
        }
        let span: i64 = validated.iter().map(|(h, _)| i64::from(h.last_offset_delta) + 1).sum();
        let total_bytes: u64 = validated.iter().map(|(_, slice)| slice.len() as u64).sum();
        let base_offset = self.log_end_offset();
        if span > RELATIVE_OFFSET_MAX || base_offset.checked_add(span).is_none() {
            return Err(LogError::AppendOffsetSpanTooLarge { span });
        }
        if total_bytes > SEGMENT_BYTES_MAX {
            return Err(LogError::BatchTooLarge {
                batch_index: 0,
                size: total_bytes as usize,
                max: SEGMENT_BYTES_MAX as u32,
            });
        }
        let last_offset = base_offset + span - 1;

        let log_append_time =
            (self.config.message_timestamp_type == TimestampType::LogAppendTime).then_some(now_ms);
        let incoming_timestamp = log_append_time
            .unwrap_or_else(|| validated.iter().map(|(h, _)| h.max_timestamp).max().unwrap_or(0));
        self.roll_if_full(base_offset, last_offset, total_bytes, incoming_timestamp)?;
        // Persisting the epoch before the data is harmless if the write then fails: the epoch
        // would start at the unchanged log end offset either way.
        if leader_epoch >= 0 {
            self.epochs.assign(leader_epoch, base_offset)?;
        }

        let mut prepared = Vec::with_capacity(validated.len());
        let mut next_offset = base_offset;
        let mut max_timestamp = i64::MIN;
        for (batch_index, (mut header, slice)) in validated.into_iter().enumerate() {
            header.base_offset = next_offset;
            header.partition_leader_epoch = leader_epoch;
            next_offset = header.last_offset() + 1;
            let slice = match log_append_time {
                None => slice,
                Some(now_ms) => {
                    // The timestamps are CRC-covered, so only this mode pays for a copy.
                    let mut copy = BytesMut::from(&slice[..]);
                    batch::set_log_append_time(&mut copy, now_ms)
                        .map_err(|source| map_batch_error(batch_index, source))?;
                    header = BatchHeader::parse(&copy)
                        .map_err(|source| map_batch_error(batch_index, source))?;
                    header.base_offset = next_offset - i64::from(header.last_offset_delta) - 1;
                    header.partition_leader_epoch = leader_epoch;
                    copy.freeze()
                }
            };
            max_timestamp = max_timestamp.max(header.max_timestamp);
            let mut head = [0u8; ATTRIBUTES_OFFSET];
            head.copy_from_slice(&slice[..ATTRIBUTES_OFFSET]);
            head[BASE_OFFSET_OFFSET..BASE_OFFSET_OFFSET + 8]
                .copy_from_slice(&header.base_offset.to_be_bytes());
            head[PARTITION_LEADER_EPOCH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET + 4]
                .copy_from_slice(&leader_epoch.to_be_bytes());
            prepared.push(PreparedBatch { header, head, tail: slice.slice(ATTRIBUTES_OFFSET..) });
        }
        debug_assert_eq!(next_offset, last_offset + 1);

        self.write_prepared(&prepared)?;
        debug_assert_eq!(self.log_end_offset(), last_offset + 1);
        self.record_prepared(&prepared);
        Ok(AppendInfo {
            base_offset,
            last_offset,
            log_append_time,
            max_timestamp,
            duplicate: false,
        })
    }

    /// Splits and checks producer or leader batches (all or nothing): framing, magic, CRC,
    /// and that offsets can be assigned from the record counts. A leader's batches may have
    /// lost records to compaction (fewer records than offsets, down to none), producers' not.
    fn validate_batches(
        &self,
        batches: &Bytes,
        from_producer: bool,
    ) -> Result<Vec<(BatchHeader, Bytes)>, LogError> {
        let mut validated: Vec<(BatchHeader, Bytes)> = Vec::new();
        for (batch_index, item) in Batches::new(batches.clone()).enumerate() {
            let (header, slice) = item.map_err(|source| map_batch_error(batch_index, source))?;
            if header.magic != MAGIC_V2 {
                return Err(LogError::UnsupportedMagic { batch_index, magic: header.magic });
            }
            if from_producer && slice.len() > self.config.max_message_bytes as usize {
                return Err(LogError::BatchTooLarge {
                    batch_index,
                    size: slice.len(),
                    max: self.config.max_message_bytes,
                });
            }
            let header =
                batch::validate(&slice).map_err(|source| map_batch_error(batch_index, source))?;
            if from_producer && header.is_control() {
                // Only partition leaders write transaction markers.
                return Err(LogError::ClientControlBatch { batch_index });
            }
            if from_producer && header.producer_id >= 0 && header.base_sequence < 0 {
                return Err(LogError::SequenceMissing {
                    batch_index,
                    producer_id: header.producer_id,
                    base_sequence: header.base_sequence,
                });
            }
            // Offsets are assigned from the delta, so it must agree with the record count.
            let counts_agree = if from_producer {
                header.records_count >= 1 && header.last_offset_delta == header.records_count - 1
            } else {
                i64::from(header.records_count) <= i64::from(header.last_offset_delta) + 1
            };
            if !counts_agree {
                let source = BatchError::RecordsCountMismatch {
                    records_count: header.records_count,
                    last_offset_delta: header.last_offset_delta,
                };
                return Err(LogError::CorruptBatch { batch_index, source });
            }
            validated.push((header, slice));
        }
        if validated.is_empty() {
            return Err(LogError::AppendEmpty);
        }
        if from_producer && self.config.cleanup_policy.compact {
            self.check_keys(&validated)?;
        }
        Ok(validated)
    }

    /// A compacted log refuses records without a key (Kafka's rule). The only place the
    /// produce path reads records: it walks them, decompressing if need be, and only for
    /// compacted logs.
    fn check_keys(&self, validated: &[(BatchHeader, Bytes)]) -> Result<(), LogError> {
        let mut keyless = Vec::new();
        let mut first_record = 0i32;
        for (batch_index, (header, slice)) in validated.iter().enumerate() {
            let in_batch = strom_protocol::keys::keyless_records(slice)
                .map_err(|source| map_batch_error(batch_index, source))?;
            keyless.extend(in_batch.into_iter().map(|i| first_record.saturating_add(i)));
            first_record = first_record.saturating_add(header.records_count);
        }
        if keyless.is_empty() {
            Ok(())
        } else {
            Err(LogError::RecordsWithoutKey { records: keyless })
        }
    }

    /// Appends batches copied from the partition leader (a follower's fetch): offsets and
    /// leader epochs are the leader's, so the bytes are written exactly as received. Batches
    /// must start at or after this log's end offset and follow each other; gaps are offsets
    /// the leader's compaction removed.
    pub fn append_as_follower(&mut self, batches: &Bytes) -> Result<Option<AppendInfo>, LogError> {
        self.check_online()?;
        if batches.is_empty() {
            return Ok(None);
        }
        let validated = self.validate_batches(batches, false)?;
        let mut expected = self.log_end_offset();
        for (batch_index, (header, _)) in validated.iter().enumerate() {
            if header.base_offset < expected {
                return Err(LogError::FollowerOffsetMismatch {
                    batch_index,
                    expected,
                    found: header.base_offset,
                });
            }
            expected = header.last_offset() + 1;
        }
        let base_offset = validated[0].0.base_offset;
        let last_offset = expected - 1;
        let total_bytes: u64 = validated.iter().map(|(_, slice)| slice.len() as u64).sum();
        let incoming_timestamp = validated.iter().map(|(h, _)| h.max_timestamp).max().unwrap_or(0);
        self.roll_if_full(base_offset, last_offset, total_bytes, incoming_timestamp)?;
        let mut prepared = Vec::with_capacity(validated.len());
        let mut max_timestamp = i64::MIN;
        for (header, slice) in validated {
            if header.partition_leader_epoch >= 0 {
                self.epochs.assign(header.partition_leader_epoch, header.base_offset)?;
            }
            max_timestamp = max_timestamp.max(header.max_timestamp);
            let mut head = [0u8; ATTRIBUTES_OFFSET];
            head.copy_from_slice(&slice[..ATTRIBUTES_OFFSET]);
            prepared.push(PreparedBatch { header, head, tail: slice.slice(ATTRIBUTES_OFFSET..) });
        }
        self.write_prepared(&prepared)?;
        debug_assert_eq!(self.log_end_offset(), last_offset + 1);
        self.record_prepared(&prepared);
        Ok(Some(AppendInfo {
            base_offset,
            last_offset,
            log_append_time: None,
            max_timestamp,
            duplicate: false,
        }))
    }

    /// Updates the producer state (and the aborted index) with batches just written.
    fn record_prepared(&mut self, prepared: &[PreparedBatch]) {
        for batch in prepared {
            let marker = batch.header.is_control().then(|| {
                let mut bytes = batch.head.to_vec();
                let rest = control::MARKER_PREFIX_LEN.saturating_sub(bytes.len());
                bytes.extend_from_slice(&batch.tail[..rest.min(batch.tail.len())]);
                control::parse_marker(&bytes)
            });
            record_batch(&mut self.producers, &mut self.aborted, &batch.header, marker.flatten());
        }
    }

    /// Rolls to a new segment at `base_offset` when `total_bytes` more, up to `last_offset`,
    /// would not fit the active one (by size, by the 32-bit relative offsets of its index, or
    /// by `segment.index.bytes`), or when batches with max timestamp `incoming_timestamp` are
    /// more than `segment.ms` (on a compacted log, at most `max.compaction.lag.ms`) newer
    /// than its first batch.
    fn roll_if_full(
        &mut self,
        base_offset: i64,
        last_offset: i64,
        total_bytes: u64,
        incoming_timestamp: i64,
    ) -> Result<(), LogError> {
        let active = self.active();
        if active.size == 0 {
            return Ok(());
        }
        let would_overflow = active.size + total_bytes > self.config.segment_bytes
            || last_offset - active.base_offset > RELATIVE_OFFSET_MAX;
        let (offset_entries, time_entries) = active.index_entries();
        let index_bytes = self.config.segment_index_bytes as usize;
        let index_full = offset_entries >= index_bytes / OFFSET_ENTRY_LEN
            || time_entries >= index_bytes / TIME_ENTRY_LEN;
        let roll_ms = if self.config.cleanup_policy.compact {
            self.config.segment_ms.min(self.config.max_compaction_lag_ms)
        } else {
            self.config.segment_ms
        };
        let aged = self
            .active_first_timestamp
            .is_some_and(|first| incoming_timestamp.saturating_sub(first) > roll_ms);
        if would_overflow || index_full || aged {
            self.roll(base_offset)?;
        }
        Ok(())
    }

    /// Writes prepared batches to the active segment. A failed write that could not be rolled
    /// back leaves the segment in an unknown state: the log goes offline.
    fn write_prepared(&mut self, prepared: &[PreparedBatch]) -> Result<(), LogError> {
        let was_empty = self.active().size == 0;
        if let Err(failure) = self.active_mut().append(prepared) {
            if !failure.rolled_back {
                tracing::error!(dir = %self.dir.display(), error = %failure.error, "log offline");
                self.offline = true;
            }
            return Err(failure.error);
        }
        if was_empty {
            self.active_first_timestamp = prepared.first().map(|batch| batch.header.max_timestamp);
        }
        Ok(())
    }

    fn roll(&mut self, base_offset: i64) -> Result<(), LogError> {
        self.active_mut().finalize()?;
        // The closing segment's aborted transactions, durable before anything follows them
        // (the replay on open covers only the active segment and what follows a snapshot).
        let closing = self.active().base_offset;
        let from = self.aborted.partition_point(|t| t.last_offset < closing);
        txn_index::write(&self.dir, closing, &self.aborted[from..])?;
        // Every batch below the new segment is recorded: an open replays from here.
        crate::snapshot::write(&self.dir, base_offset, &self.producers);
        self.active_first_timestamp = None;
        let segment = Segment::create(
            &self.dir,
            base_offset,
            self.config.index_interval_bytes,
            &self.handles,
        )?;
        self.segments.push(segment);
        self.dir_unsynced_since.get_or_insert(base_offset);
        Ok(())
    }

    /// Whole batches from `offset` up to `max_bytes` (at least one, so that a reader always
    /// progresses), none at or above `max_offset`, from one segment.
    pub fn read(&self, offset: i64, max_bytes: usize, max_offset: i64) -> Result<Bytes, LogError> {
        let Some(start) = self.read_start(offset, max_offset)? else {
            return Ok(Bytes::new());
        };
        let Some(located) = start.locate()? else {
            return Ok(Bytes::new());
        };
        let first_len = located.first_len();
        if first_len == 0 {
            return Ok(Bytes::new());
        }
        let len = (max_bytes as u64).min(located.available()).max(first_len as u64) as usize;
        Ok(Bytes::from(located.read(len)?))
    }

    /// The part of a read at `offset` (batches below `max_offset`) that needs the log's lock,
    /// which is memory only: the file IO ([`ReadStart::locate`], [`Located::read`]) runs
    /// outside the lock. `Ok(None)`: nothing to read.
    pub fn read_start(&self, offset: i64, max_offset: i64) -> Result<Option<ReadStart>, LogError> {
        let (start, end) = (self.log_start_offset(), self.log_end_offset());
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start, end });
        }
        if offset == end || offset >= max_offset {
            return Ok(None);
        }
        let first = self.segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1);
        let mut segments = Vec::with_capacity(1);
        for segment in &self.segments[first..] {
            if segment.next_offset <= offset {
                continue;
            }
            segments.push(segment.view(offset)?);
            // A non-empty segment starting at or after `offset` holds a batch with it (or
            // above it, after compaction): no later segment is needed.
            if segment.base_offset >= offset && segment.size > 0 {
                break;
            }
        }
        Ok(Some(ReadStart { offset, max_offset, segments }))
    }

    /// Kafka ListOffsets by timestamp: the first record (in offset order) whose timestamp is
    /// >= `timestamp`, exact for uncompressed batches, the batch start for compressed ones.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, LogError> {
        for segment in &self.segments {
            if segment.max_timestamp.is_some_and(|(max, _)| max >= timestamp) {
                if let Some(found) = segment.offset_for_timestamp(timestamp)? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// `(offset, timestamp)` of the largest timestamp in the log (ListOffsets MAX_TIMESTAMP);
    /// the offset is the last offset of the first batch that carries it.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let mut best: Option<(i64, i64)> = None;
        for segment in &self.segments {
            if let Some((ts, offset)) = segment.max_timestamp {
                if best.is_none_or(|(_, best_ts)| ts > best_ts) {
                    best = Some((offset, ts));
                }
            }
        }
        best
    }

    /// Drops every batch at and after the one holding `offset` (follower truncation), trims
    /// the epoch cache and makes the cut durable before returning.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        self.check_online()?;
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        self.generation += 1;
        // Before the data goes: a snapshot must never describe batches that were cut.
        crate::snapshot::delete_above(&self.dir, offset);
        let cut_segment_base =
            self.segments.iter().rev().find(|s| s.base_offset <= offset).map(|s| s.base_offset);
        txn_index::delete_from(&self.dir, cut_segment_base.map_or(offset, |b| b + 1))?;
        self.aborted.retain(|t| t.last_offset < offset);
        if offset < self.log_start_offset() {
            self.replace_with_empty_at(offset)?;
        } else {
            let keep = self.segments.partition_point(|s| s.base_offset <= offset);
            self.delete_segments_from(keep)?;
            self.active_mut().truncate_to(offset)?;
        }
        sync_dir(&self.dir)?;
        let end = self.log_end_offset();
        self.cleaned_upto = self.cleaned_upto.min(end);
        self.recovery_point = self.recovery_point.min(end).max(self.log_start_offset());
        self.dir_unsynced_since = None;
        self.active_first_timestamp = self.active().max_timestamp.map(|(ts, _)| ts);
        self.epochs.truncate_from_end(end)?;
        self.rebuild_producer_state()?;
        Ok(())
    }

    /// Deletes the files of segments `from..` (newest first, so a crash midway leaves a
    /// contiguous prefix) and forgets them.
    fn delete_segments_from(&mut self, from: usize) -> Result<(), LogError> {
        while self.segments.len() > from {
            let last = self.segments.len() - 1;
            self.segments[last].delete_files()?;
            self.segments.pop();
        }
        Ok(())
    }

    pub fn leader_epoch_entries(&self) -> &[(i32, i64)] {
        self.epochs.entries()
    }

    /// Kafka OffsetsForLeaderEpoch: `(largest epoch <= epoch, its end offset)`; `None` when
    /// the epoch is undefined or newer than any known.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// The files to fdatasync for everything appended so far; `None` when all is durable.
    pub fn sync_handle(&self) -> Option<SyncHandle> {
        let upto = self.log_end_offset();
        let mut targets = Vec::new();
        // Only segments reaching the recovery point can have unsynced files: those above it
        // were written or verified since the last sync, and the one it ends in may have been
        // finalized by a roll after it.
        let rp = self.recovery_point;
        for segment in self.segments.iter().rev().take_while(|s| s.next_offset >= rp) {
            segment.sync_targets(&mut targets);
        }
        if upto <= rp && self.dir_unsynced_since.is_none() && targets.is_empty() {
            return None;
        }
        let dir = self.dir_unsynced_since.map(|_| (self.dir.clone(), self.handles.clone()));
        Some(SyncHandle { upto, generation: self.generation, targets, dir })
    }

    /// After a [`SyncHandle::sync`] succeeded: everything below `upto` is durable. Must not be
    /// used for a handle taken before a `truncate_to` ([`Log::mark_synced`] checks that).
    fn mark_flushed(&mut self, upto: i64) {
        let upto = upto.min(self.log_end_offset());
        if upto > self.recovery_point {
            self.recovery_point = upto;
        }
        // A handle covering data appended after the roll was taken after it, so it synced the dir.
        if self.dir_unsynced_since.is_some_and(|rolled_at| upto > rolled_at) {
            self.dir_unsynced_since = None;
        }
    }

    /// [`Log::mark_flushed`] for `handle`, ignored when a truncation happened since it was
    /// taken (its files may not cover what was written after the truncation).
    /// Records what `handle`'s sync made durable. `false` (nothing recorded) for a handle taken
    /// before a truncation: the files it synced may hold other bytes at those offsets now.
    #[must_use = "a stale handle made nothing durable"]
    pub fn mark_synced(&mut self, handle: &SyncHandle) -> bool {
        let current = handle.generation == self.generation;
        if current {
            self.mark_flushed(handle.upto);
            for target in &handle.targets {
                // Newest first: the targets are nearly always in the last segment or two.
                for segment in self.segments.iter_mut().rev() {
                    if segment.mark_synced(target) {
                        break;
                    }
                }
            }
        }
        current
    }

    /// Deletes the oldest segments wholly below the log start offset (whatever the cleanup
    /// policy: DeleteRecords moved it), then those past `retention_ms` (by their largest
    /// timestamp) or beyond `retention_bytes` when the policy has `delete` (compacted-only
    /// topics keep every key's latest), never the active one, and advances the log start
    /// offset. Also trims the leader-epoch cache to the log start offset.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<usize, LogError> {
        self.check_online()?;
        let start = self.log_start_offset;
        // A segment is wholly below the log start when the next one starts at or before it.
        let mut deletable =
            self.segments.windows(2).take_while(|pair| pair[1].base_offset <= start).count();
        if self.config.cleanup_policy.delete {
            let mut excess_bytes = match self.config.retention_bytes {
                Some(limit) => self.size_bytes().saturating_sub(limit),
                None => 0,
            };
            for segment in &self.segments[..deletable] {
                excess_bytes = excess_bytes.saturating_sub(segment.size);
            }
            for segment in &self.segments[deletable..self.segments.len() - 1] {
                let expired = self.config.retention_ms.is_some_and(|retention_ms| {
                    segment
                        .max_timestamp
                        .is_none_or(|(ts, _)| now_ms.saturating_sub(ts) > retention_ms)
                });
                let over_size = excess_bytes > 0 && segment.size <= excess_bytes;
                if !expired && !over_size {
                    break;
                }
                excess_bytes = excess_bytes.saturating_sub(segment.size);
                deletable += 1;
            }
        }
        for _ in 0..deletable {
            // Oldest first, so a failure leaves the log contiguous.
            self.segments[0].delete_files()?;
            self.segments.remove(0);
            self.log_start_offset = self.log_start_offset.max(self.segments[0].base_offset);
        }
        let start = self.log_start_offset;
        if deletable > 0 {
            self.aborted.retain(|t| t.last_offset >= start);
            txn_index::delete_below(&self.dir, start, &self.aborted);
            self.recovery_point = self.recovery_point.max(start);
            tracing::info!(dir = %self.dir.display(), deletable, start, "retention deleted segments");
        }
        // After DeleteRecords too, which moved the start without deleting anything yet.
        self.epochs.truncate_from_start(start)?;
        Ok(deletable)
    }

    /// Removes the partition directory with everything in it.
    pub fn delete(self) -> Result<(), LogError> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir).map_err(|source| LogError::DirDelete { path: dir, source })
    }
}

/// Records one batch the log holds in the producer state; an ABORT marker that ends a
/// transaction adds it to `aborted`.
fn record_batch(
    producers: &mut ProducerStates,
    aborted: &mut Vec<AbortedTxn>,
    header: &BatchHeader,
    marker: Option<Marker>,
) {
    if !header.is_control() {
        producers.record(header);
        return;
    }
    let Some(done) = marker.and_then(|m| producers.record_marker(header, m)) else { return };
    if !done.commit {
        let last_stable_offset = producers.first_unstable_offset().unwrap_or(done.last_offset + 1);
        aborted.push(AbortedTxn {
            producer_id: done.producer_id,
            first_offset: done.first_offset,
            last_offset: done.last_offset,
            last_stable_offset,
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::segment::{self, base_offset_of};

    #[test]
    fn segment_file_names_parse_back() {
        assert_eq!(base_offset_of(&segment::file_name(0, "log")), Some(0));
        assert_eq!(base_offset_of(&segment::file_name(1234567, "log")), Some(1234567));
        assert_eq!(base_offset_of("00000000000000000001.index"), None);
        assert_eq!(base_offset_of("1.log"), None);
        assert_eq!(base_offset_of("0000000000000000000x.log"), None);
    }
}
