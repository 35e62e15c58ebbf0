//! One segment: a `.log` file of whole v2 batches starting at `base_offset`, with its indexes.

use std::fs::{self, File};
use std::io::{self, IoSlice, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use strom_protocol::batch::{
    self, BatchError, BatchHeader, Compression, TimestampType, ATTRIBUTES_OFFSET, BATCH_HEADER_LEN,
    CRC_COVERED_FROM,
};

use crate::handles::{FileHandles, FileKind, FileSlot, SyncTarget};
use crate::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use crate::LogError;

/// Largest read while scanning a segment; batches bigger than this are CRC-checked in pieces so
/// a corrupt length field cannot make recovery allocate the whole file.
pub(crate) const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Read size for short header walks (index floor to target), which usually span one interval.
const SEEK_CHUNK_BYTES: usize = 16 << 10;
/// Offsets inside a segment are stored relative to its base as u32; rolling before this keeps
/// every relative offset representable (Kafka uses the same i32 bound).
pub const RELATIVE_OFFSET_MAX: i64 = i32::MAX as i64;

pub fn file_name(base_offset: i64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

/// The base offset a segment's `.log` file is named after (the inverse of [`file_name`]);
/// `None` for any other file.
pub(crate) fn base_offset_of(file_name: &str) -> Option<i64> {
    let stem = file_name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Suffix of the files a compaction writes before they replace a segment.
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of a cleaned `.log` that is complete and fsynced: from the moment it exists it
/// replaces the segments it covers, on the next open if not before.
pub const SWAP_SUFFIX: &str = ".swap";

/// The first 21 bytes of a batch as they go to disk (base offset and leader epoch patched),
/// followed by the untouched rest: writing both as two slices avoids copying the batch.
pub struct PreparedBatch {
    pub header: BatchHeader,
    pub head: [u8; ATTRIBUTES_OFFSET],
    pub tail: Bytes,
}

impl PreparedBatch {
    fn len(&self) -> u64 {
        (self.head.len() + self.tail.len()) as u64
    }
}

/// An append that failed; `rolled_back` says whether the files are back to their old state.
pub struct AppendFailure {
    pub error: LogError,
    pub rolled_back: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Below the recovery point: load the index files and check only the tail cheaply.
    Trusted,
    /// At or after the recovery point: validate every batch, CRC included.
    Verify,
}

/// A segment's files are [`FileSlot`]s: opened on use through the log directory's
/// [`FileHandles`], so a segment nobody uses holds no descriptor.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: i64,
    log_file: FileSlot,
    index_file: FileSlot,
    time_index_file: FileSlot,
    pub size: u64,
    /// Offset after the last batch; `base_offset` when empty.
    pub next_offset: i64,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    /// `(timestamp, offset)`: the largest batch max timestamp, with the last offset of the first
    /// batch that reached it (Kafka's shallow offset-of-max-timestamp for v2 batches).
    pub max_timestamp: Option<(i64, i64)>,
    bytes_since_index_entry: u64,
    index_interval_bytes: u32,
}

/// Reads a file through a window so that walking many small batches costs few syscalls.
pub(crate) struct ChunkReader<'a> {
    file: &'a File,
    path: &'a Path,
    file_len: u64,
    chunk_bytes: usize,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> ChunkReader<'a> {
    pub(crate) fn new(file: &'a File, path: &'a Path, file_len: u64, chunk_bytes: usize) -> Self {
        ChunkReader { file, path, file_len, chunk_bytes, buf: Vec::new(), buf_start: 0 }
    }

    /// `len` bytes at `position`, or `None` when the file ends first.
    pub(crate) fn get(&mut self, position: u64, len: usize) -> Result<Option<&[u8]>, LogError> {
        let Some(end) = position.checked_add(len as u64).filter(|end| *end <= self.file_len) else {
            return Ok(None);
        };
        let buf_end = self.buf_start + self.buf.len() as u64;
        if position < self.buf_start || end > buf_end {
            let want = (len.max(self.chunk_bytes) as u64).min(self.file_len - position) as usize;
            self.buf.resize(want, 0);
            self.file
                .read_exact_at(&mut self.buf, position)
                .map_err(|source| LogError::SegmentRead { path: self.path.to_owned(), source })?;
            self.buf_start = position;
        }
        let from = (position - self.buf_start) as usize;
        Ok(Some(&self.buf[from..from + len]))
    }

    pub(crate) fn header(&mut self, position: u64) -> Result<Option<BatchHeader>, LogError> {
        Ok(match self.get(position, BATCH_HEADER_LEN)? {
            Some(bytes) => BatchHeader::parse(bytes).ok(),
            None => None,
        })
    }

    /// CRC-32C of `len` bytes at `position`, read a chunk at a time.
    fn crc(&mut self, position: u64, len: u64) -> Result<Option<u32>, LogError> {
        let mut crc = 0u32;
        let mut done = 0u64;
        while done < len {
            let step = (len - done).min(self.chunk_bytes as u64) as usize;
            let Some(bytes) = self.get(position + done, step)? else {
                return Ok(None);
            };
            crc = batch::crc_append(crc, bytes);
            done += step as u64;
        }
        Ok(Some(crc))
    }
}

/// Why a scan stopped before the end of the file.
#[derive(Debug, thiserror::Error)]
pub enum ScanStop {
    #[error("torn batch (the file ends inside it)")]
    Torn,
    #[error("invalid batch: {0}")]
    Invalid(BatchError),
    #[error("batch base offset {base_offset} is below {expected_at_least}")]
    OffsetsNotIncreasing { base_offset: i64, expected_at_least: i64 },
}

impl Segment {
    /// The `.log`, `.index` and `.timeindex` paths of a segment, each ending with `suffix`.
    pub fn paths(dir: &Path, base_offset: i64, suffix: &str) -> (PathBuf, PathBuf, PathBuf) {
        let path = |extension| dir.join(file_name(base_offset, extension) + suffix);
        (path("log"), path("index"), path("timeindex"))
    }

    /// Whether both index files of a segment exist. A missing one (lost in a crash while a
    /// compaction swapped files) makes the next open rebuild both from the `.log`.
    pub fn index_files_exist(dir: &Path, base_offset: i64) -> bool {
        let (_, index, time_index) = Self::paths(dir, base_offset, "");
        index.exists() && time_index.exists()
    }

    /// The segment's files, created if missing (each through the cache, which may close
    /// them again at once).
    fn with_files(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u32,
        suffix: &str,
        handles: &FileHandles,
    ) -> Result<Segment, LogError> {
        let (log_path, index_path, time_index_path) = Self::paths(dir, base_offset, suffix);
        let (log_file, log) = FileSlot::create(handles, log_path, FileKind::Segment)?;
        let size = log
            .metadata()
            .map_err(|source| LogError::SegmentRead { path: log_file.path().to_owned(), source })?
            .len();
        drop(log);
        let (index_file, _) = FileSlot::create(handles, index_path, FileKind::Index)?;
        let (time_index_file, _) = FileSlot::create(handles, time_index_path, FileKind::Index)?;
        Ok(Segment {
            base_offset,
            log_file,
            index_file,
            time_index_file,
            size,
            next_offset: base_offset,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            max_timestamp: None,
            bytes_since_index_entry: 0,
            index_interval_bytes,
        })
    }

    /// A new empty segment; leftovers of an older segment with the same name are discarded.
    pub fn create(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u32,
        handles: &FileHandles,
    ) -> Result<Segment, LogError> {
        let mut segment = Self::with_files(dir, base_offset, index_interval_bytes, "", handles)?;
        segment.set_log_len(0)?;
        segment.write_index_files()?;
        Ok(segment)
    }

    /// A new empty segment whose files carry [`CLEANED_SUFFIX`]: the output of a compaction,
    /// invisible to [`Segment::open`] until [`Segment::commit_swap`] and
    /// [`Segment::finish_swap`] give it the real names.
    pub fn create_cleaned(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u32,
        handles: &FileHandles,
    ) -> Result<Segment, LogError> {
        let mut segment =
            Self::with_files(dir, base_offset, index_interval_bytes, CLEANED_SUFFIX, handles)?;
        segment.set_log_len(0)?;
        segment.write_index_files()?;
        Ok(segment)
    }

    /// Renames the cleaned `.log` to its swap name: once the directory is fsynced after this,
    /// the cleaned segment is committed (recovery completes the swap).
    pub fn commit_swap(&mut self) -> Result<(), LogError> {
        let swap = self.log_path().with_extension(&SWAP_SUFFIX[1..]);
        rename(self.log_path(), &swap)?;
        self.log_file.set_path(swap);
        Ok(())
    }

    /// Gives a committed swap segment its final names. The old index files go first: if the
    /// process dies before the new ones are in place, the next open finds none and rebuilds,
    /// instead of trusting an index of the replaced file.
    pub fn finish_swap(&mut self, dir: &Path) -> Result<(), LogError> {
        let (log_path, index_path, time_index_path) = Self::paths(dir, self.base_offset, "");
        for path in [&index_path, &time_index_path] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(LogError::SegmentDelete { path: path.clone(), source }),
            }
        }
        for (slot, path) in [
            (&mut self.log_file, log_path),
            (&mut self.index_file, index_path),
            (&mut self.time_index_file, time_index_path),
        ] {
            rename(slot.path(), &path)?;
            slot.set_path(path);
        }
        Ok(())
    }

    /// Removes whatever files of this segment exist, for discarding a cleaned segment.
    pub fn remove_files_quietly(&self) {
        for path in [self.log_path(), self.index_file.path(), self.time_index_file.path()] {
            if let Err(error) = fs::remove_file(path) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %error, "cannot delete file");
                }
            }
        }
    }

    /// Opens an existing segment. Returns it with the number of bytes cut from its end when
    /// the scan found a torn or invalid batch (the file is already truncated then).
    pub fn open(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u32,
        mode: OpenMode,
        recovery_point: i64,
        handles: &FileHandles,
    ) -> Result<(Segment, u64), LogError> {
        let mut segment = Self::with_files(dir, base_offset, index_interval_bytes, "", handles)?;
        if mode == OpenMode::Trusted && segment.load_trusted()? {
            return Ok((segment, 0));
        }
        // Not known to be durable (it is at or above the recovery point, or its indexes are
        // rewritten below): the log's next sync covers all three files. Unpinned: a
        // recovered log that nobody writes must not hold descriptors.
        for slot in segment.slots_mut() {
            slot.mark_unsynced();
        }
        let (valid_end, stop) = segment.rebuild(true)?;
        let cut = segment.size - valid_end;
        if stop.is_some() && segment.next_offset < recovery_point {
            // Everything below the recovery point was fsynced before the checkpoint said so:
            // damage there is not a torn write, and cutting it would quietly drop records that
            // were acknowledged (and, in the log, every later segment).
            return Err(LogError::CorruptBelowRecoveryPoint {
                path: segment.log_path().to_owned(),
                position: valid_end,
                offset: segment.next_offset,
                recovery_point,
            });
        }
        if let Some(stop) = stop {
            tracing::warn!(
                segment = %segment.log_path().display(),
                position = valid_end,
                bytes_cut = cut,
                reason = %stop,
                "segment ends with a torn or invalid batch; truncating it",
            );
            segment.set_log_len(valid_end)?;
        }
        segment.write_index_files()?;
        Ok((segment, cut))
    }

    pub fn log_path(&self) -> &Path {
        self.log_file.path()
    }

    fn slots_mut(&mut self) -> [&mut FileSlot; 3] {
        [&mut self.log_file, &mut self.index_file, &mut self.time_index_file]
    }

    /// The segment's `.log`, open (pinned, cached, or opened again).
    pub(crate) fn log_handle(&self) -> Result<Arc<File>, LogError> {
        self.log_file.get()
    }

    /// Loads the index files and checks that the batches after the last index entry end
    /// exactly at the end of the file. `false` when anything is off and a full scan is needed.
    fn load_trusted(&mut self) -> Result<bool, LogError> {
        let read_index = |path: &Path| match fs::read(path) {
            Ok(bytes) => Ok(bytes),
            Err(source) => Err(LogError::IndexRead { path: path.to_owned(), source }),
        };
        let Some(offset_index) =
            OffsetIndex::decode(&read_index(self.index_file.path())?, self.size)
        else {
            return Ok(false);
        };
        let Some(time_index) = TimeIndex::decode(&read_index(self.time_index_file.path())?) else {
            return Ok(false);
        };
        let start = offset_index.last().unwrap_or(OffsetEntry { relative_offset: 0, position: 0 });
        let mut max_timestamp = time_index
            .last()
            .map(|e| (e.timestamp, self.base_offset + i64::from(e.relative_offset)));
        let mut next_offset = self.base_offset + i64::from(start.relative_offset);
        let mut first = true;
        let mut position = u64::from(start.position);
        let log = self.log_file.get()?;
        let mut reader = ChunkReader::new(&log, self.log_path(), self.size, SEEK_CHUNK_BYTES);
        while position < self.size {
            let Some(header) = reader.header(position)? else {
                return Ok(false);
            };
            let Some(total) =
                header.total_len().filter(|_| batch::validate_header(&header).is_ok())
            else {
                return Ok(false);
            };
            // The indexed batch must start exactly at its offset; later ones only move forward.
            let offsets_ok = if first {
                header.base_offset == next_offset
            } else {
                header.base_offset >= next_offset
            };
            if !offsets_ok || header.last_offset() - self.base_offset > RELATIVE_OFFSET_MAX {
                return Ok(false);
            }
            first = false;
            if max_timestamp.is_none_or(|(ts, _)| header.max_timestamp > ts) {
                max_timestamp = Some((header.max_timestamp, header.last_offset()));
            }
            next_offset = header.last_offset() + 1;
            position += total as u64;
        }
        if position != self.size {
            return Ok(false);
        }
        self.next_offset = next_offset;
        self.max_timestamp = max_timestamp;
        self.bytes_since_index_entry = self.size - u64::from(start.position);
        self.offset_index = offset_index;
        self.time_index = time_index;
        Ok(true)
    }

    /// Rebuilds the in-memory state from the `.log`, stopping at the first torn or invalid
    /// batch. Returns the end of the valid prefix and why it stopped early, if it did.
    fn rebuild(&mut self, verify_crc: bool) -> Result<(u64, Option<ScanStop>), LogError> {
        self.offset_index = OffsetIndex::default();
        self.time_index = TimeIndex::default();
        self.max_timestamp = None;
        self.bytes_since_index_entry = 0;
        self.next_offset = self.base_offset;
        let (log, log_path) = (self.log_file.get()?, self.log_path().to_owned());
        let mut reader = ChunkReader::new(&log, &log_path, self.size, SCAN_CHUNK_BYTES);
        let mut position = 0u64;
        let mut unused = (Vec::new(), Vec::new());
        while position < self.size {
            let Some(header) = reader.header(position)? else {
                return Ok((position, Some(ScanStop::Torn)));
            };
            if let Err(error) = batch::validate_header(&header) {
                return Ok((position, Some(ScanStop::Invalid(error))));
            }
            let Some(total) = header.total_len() else {
                return Ok((position, Some(ScanStop::Torn)));
            };
            if position + total as u64 > self.size {
                return Ok((position, Some(ScanStop::Torn)));
            }
            if header.base_offset < self.next_offset
                || header.last_offset() - self.base_offset > RELATIVE_OFFSET_MAX
            {
                let stop = ScanStop::OffsetsNotIncreasing {
                    base_offset: header.base_offset,
                    expected_at_least: self.next_offset,
                };
                return Ok((position, Some(stop)));
            }
            if verify_crc {
                let covered = total - CRC_COVERED_FROM;
                match reader.crc(position + CRC_COVERED_FROM as u64, covered as u64)? {
                    None => return Ok((position, Some(ScanStop::Torn))),
                    Some(computed) if computed != header.crc => {
                        let error = BatchError::CorruptCrc { stored: header.crc, computed };
                        return Ok((position, Some(ScanStop::Invalid(error))));
                    }
                    Some(_) => {}
                }
            }
            self.track(position, &header, total as u64, &mut unused);
            position += total as u64;
        }
        Ok((position, None))
    }

    /// Updates indexes and timestamps for a batch written at `position`, appending the encoded
    /// new index entries to `new_entries` (offset index, time index).
    fn track(
        &mut self,
        position: u64,
        header: &BatchHeader,
        total: u64,
        new_entries: &mut (Vec<u8>, Vec<u8>),
    ) {
        if self.max_timestamp.is_none_or(|(ts, _)| header.max_timestamp > ts) {
            self.max_timestamp = Some((header.max_timestamp, header.last_offset()));
        }
        let relative = u32::try_from(header.base_offset - self.base_offset).ok();
        if let (Some(relative_offset), Ok(position)) = (relative, u32::try_from(position)) {
            if self.bytes_since_index_entry >= u64::from(self.index_interval_bytes) {
                let entry = OffsetEntry { relative_offset, position };
                if self
                    .offset_index
                    .last()
                    .is_none_or(|last| last.relative_offset < relative_offset)
                {
                    self.offset_index.push(entry);
                    entry.encode(&mut new_entries.0);
                    self.bytes_since_index_entry = 0;
                }
                self.push_time_entry(&mut new_entries.1);
            }
        }
        self.bytes_since_index_entry += total;
        self.next_offset = header.last_offset() + 1;
    }

    /// Entries in the offset index and the time index.
    pub fn index_entries(&self) -> (usize, usize) {
        (self.offset_index.len(), self.time_index.len())
    }

    /// Records the current max timestamp in the time index if it grew since the last entry.
    fn push_time_entry(&mut self, out: &mut Vec<u8>) {
        let Some((timestamp, offset)) = self.max_timestamp else {
            return;
        };
        let Ok(relative_offset) = u32::try_from(offset - self.base_offset) else {
            return;
        };
        if self.time_index.last().is_none_or(|last| last.timestamp < timestamp) {
            let entry = TimeEntry { timestamp, relative_offset };
            self.time_index.push(entry);
            entry.encode(out);
        }
    }

    /// Called when the segment stops being active: the time index must end with the segment's
    /// true max timestamp because trusted segments take it from there on the next open.
    pub fn finalize(&mut self) -> Result<(), LogError> {
        let mut entry = Vec::new();
        self.push_time_entry(&mut entry);
        if !entry.is_empty() {
            let file = self.time_index_file.get()?;
            self.time_index_file.written(&file);
            (&*file).write_all(&entry).map_err(|source| LogError::IndexWrite {
                path: self.time_index_file.path().to_owned(),
                source,
            })?;
        }
        Ok(())
    }

    /// Appends already prepared batches. On failure the files and memory are put back as they
    /// were; if even that fails the caller must stop using the log. The handles the append
    /// and its rollback need are taken first: when descriptors run out, nothing has changed.
    pub fn append(&mut self, batches: &[PreparedBatch]) -> Result<(), AppendFailure> {
        let files = match self.open_all() {
            Ok(files) => files,
            Err(error) => return Err(AppendFailure { error, rolled_back: true }),
        };
        let old_size = self.size;
        let old_state = (
            self.next_offset,
            self.offset_index.len(),
            self.time_index.len(),
            self.max_timestamp,
            self.bytes_since_index_entry,
        );
        let result = self.append_inner(batches, &files);
        let Err(error) = result else {
            return Ok(());
        };
        self.next_offset = old_state.0;
        self.offset_index.truncate(old_state.1);
        self.time_index.truncate(old_state.2);
        self.max_timestamp = old_state.3;
        self.bytes_since_index_entry = old_state.4;
        let rolled_back = self.set_log_len_with(&files[0], old_size).is_ok()
            && self.write_index_files_with(&files[1], &files[2]).is_ok();
        Err(AppendFailure { error, rolled_back })
    }

    /// The `.log`, `.index` and `.timeindex` handles, open.
    fn open_all(&self) -> Result<[Arc<File>; 3], LogError> {
        Ok([self.log_file.get()?, self.index_file.get()?, self.time_index_file.get()?])
    }

    fn append_inner(
        &mut self,
        batches: &[PreparedBatch],
        [log, index, time_index]: &[Arc<File>; 3],
    ) -> Result<(), LogError> {
        let mut slices = Vec::with_capacity(batches.len() * 2);
        for batch in batches {
            slices.push(IoSlice::new(&batch.head));
            slices.push(IoSlice::new(&batch.tail));
        }
        self.log_file.written(log);
        write_all_vectored(log, &mut slices).map_err(|source| LogError::SegmentWrite {
            path: self.log_path().to_owned(),
            source,
        })?;
        let mut new_entries = (Vec::new(), Vec::new());
        for batch in batches {
            let position = self.size;
            self.track(position, &batch.header, batch.len(), &mut new_entries);
            self.size += batch.len();
        }
        for (slot, file, entries) in [
            (&mut self.index_file, index, &new_entries.0),
            (&mut self.time_index_file, time_index, &new_entries.1),
        ] {
            if !entries.is_empty() {
                slot.written(file);
                (&**file).write_all(entries).map_err(|source| LogError::IndexWrite {
                    path: slot.path().to_owned(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    fn set_log_len(&mut self, len: u64) -> Result<(), LogError> {
        let file = self.log_file.get()?;
        self.set_log_len_with(&file, len)
    }

    fn set_log_len_with(&mut self, file: &Arc<File>, len: u64) -> Result<(), LogError> {
        self.log_file.written(file);
        file.set_len(len).map_err(|source| LogError::SegmentTruncate {
            path: self.log_path().to_owned(),
            source,
        })?;
        self.size = len;
        Ok(())
    }

    /// Rewrites both index files from memory (after a scan or a truncation).
    fn write_index_files(&mut self) -> Result<(), LogError> {
        let (index, time_index) = (self.index_file.get()?, self.time_index_file.get()?);
        self.write_index_files_with(&index, &time_index)
    }

    fn write_index_files_with(
        &mut self,
        index: &Arc<File>,
        time_index: &Arc<File>,
    ) -> Result<(), LogError> {
        let (offset_entries, time_entries) = (self.offset_index.encode(), self.time_index.encode());
        for (slot, file, bytes) in [
            (&mut self.index_file, index, offset_entries),
            (&mut self.time_index_file, time_index, time_entries),
        ] {
            slot.written(file);
            let write = || -> io::Result<()> {
                file.set_len(0)?;
                (&**file).write_all(&bytes)
            };
            write()
                .map_err(|source| LogError::IndexWrite { path: slot.path().to_owned(), source })?;
        }
        Ok(())
    }

    /// Drops the batch holding `offset` and everything after it, then makes that durable.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        let Some((position, _)) = self.find_batch(offset)? else {
            return Ok(());
        };
        // Every handle first: out of descriptors must fail before the file is cut.
        let [log, index, time_index] = self.open_all()?;
        self.set_log_len_with(&log, position)?;
        let (valid_end, _) = self.rebuild(false)?;
        debug_assert_eq!(valid_end, position, "a prefix of a valid segment is valid");
        self.write_index_files_with(&index, &time_index)?;
        self.sync_all()
    }

    /// fsyncs all three files; everything written to them is durable then.
    pub fn sync_all(&mut self) -> Result<(), LogError> {
        for slot in self.slots_mut() {
            slot.sync_all()?;
        }
        Ok(())
    }

    /// What a group commit must fdatasync for this segment (its files written since their
    /// last sync).
    pub(crate) fn sync_targets(&self, out: &mut Vec<SyncTarget>) {
        for slot in [&self.log_file, &self.index_file, &self.time_index_file] {
            out.extend(slot.sync_target());
        }
    }

    /// Lets go of the handles its writes pinned, leaving the files unsynced (a log's open),
    /// or synced when the segment is empty: then there is nothing a crash could lose.
    pub(crate) fn release_pins(&mut self) {
        let empty = self.size == 0;
        for slot in self.slots_mut() {
            slot.release_pin();
            if empty {
                slot.mark_synced(u64::MAX);
            }
        }
    }

    /// A sync of `target` succeeded; `false` when the target is none of this segment's files.
    pub(crate) fn mark_synced(&mut self, target: &SyncTarget) -> bool {
        for slot in self.slots_mut() {
            if slot.id() == target.id() {
                slot.mark_synced(target.writes());
                return true;
            }
        }
        false
    }

    pub fn delete_files(&self) -> Result<(), LogError> {
        fs::remove_file(self.log_path()).map_err(|source| LogError::SegmentDelete {
            path: self.log_path().to_owned(),
            source,
        })?;
        for path in [self.index_file.path(), self.time_index_file.path()] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                // Index files are derived data; a leftover one is removed on the next open.
                Err(error) => tracing::warn!(path = %path.display(), %error, "cannot delete index"),
            }
        }
        Ok(())
    }

    /// Walks batch headers from `position` until `visit` breaks; `Ok(None)` at the end.
    fn walk<T>(
        &self,
        position: u64,
        visit: impl FnMut(u64, &BatchHeader) -> ControlFlow<T>,
    ) -> Result<Option<T>, LogError> {
        let log = self.log_file.get()?;
        walk(&log, self.log_path(), self.size, position, SEEK_CHUNK_BYTES, visit)
    }

    /// Visits, in order, the header of every batch whose last offset is at or after `offset`,
    /// reading the file in large chunks (producer-state replay walks whole segments).
    pub(crate) fn visit_headers_from(
        &self,
        offset: i64,
        mut visit: impl FnMut(u64, &BatchHeader),
    ) -> Result<(), LogError> {
        let relative = (offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        let start = self.offset_index.lookup(relative).map_or(0, |e| u64::from(e.position));
        let log = self.log_file.get()?;
        walk::<()>(&log, self.log_path(), self.size, start, SCAN_CHUNK_BYTES, |at, header| {
            if header.last_offset() >= offset {
                visit(at, header);
            }
            ControlFlow::Continue(())
        })?;
        Ok(())
    }

    /// Up to `len` bytes of the batch at `position` (fewer where the segment ends).
    pub(crate) fn read_prefix(&self, position: u64, len: usize) -> Result<Vec<u8>, LogError> {
        let len = (len as u64).min(self.size.saturating_sub(position)) as usize;
        let mut buf = vec![0; len];
        self.log_file
            .get()?
            .read_exact_at(&mut buf, position)
            .map_err(|source| LogError::SegmentRead { path: self.log_path().to_owned(), source })?;
        Ok(buf)
    }

    /// What a read at `offset` needs from this segment, for use outside the log's lock: the
    /// open handle, taken here so that the read sees this segment even if it is deleted or
    /// replaced meanwhile (a cache miss opens the file under the log's lock: one open(2)).
    pub(crate) fn view(&self, offset: i64) -> Result<SegmentView, LogError> {
        let relative = (offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        let file = if self.size == 0 { None } else { Some(self.log_file.get()?) };
        Ok(SegmentView {
            file,
            path: self.log_path().to_owned(),
            scan_from: self.offset_index.lookup(relative).map_or(0, |e| u64::from(e.position)),
            size: self.size,
        })
    }
    /// Position and header of the first batch whose last offset is >= `offset`.
    pub fn find_batch(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>, LogError> {
        let relative = (offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        let start = self.offset_index.lookup(relative).map_or(0, |e| u64::from(e.position));
        self.walk(start, |position, header| {
            if header.last_offset() >= offset {
                ControlFlow::Break((position, *header))
            } else {
                ControlFlow::Continue(())
            }
        })
    }

    /// First record with timestamp >= `timestamp` in this segment: `(offset, timestamp)`.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, LogError> {
        let start = self
            .time_index
            .lookup_before(timestamp)
            .and_then(|entry| self.offset_index.lookup(entry.relative_offset))
            .map_or(0, |entry| u64::from(entry.position));
        let mut position = start;
        loop {
            let candidate = self.walk(position, |position, header| {
                if header.max_timestamp >= timestamp {
                    ControlFlow::Break((position, *header))
                } else {
                    ControlFlow::Continue(())
                }
            })?;
            let Some((batch_position, header)) = candidate else {
                return Ok(None);
            };
            let total = header.total_len().unwrap_or(BATCH_HEADER_LEN);
            let shallow = header.compression() != Ok(Compression::None)
                || header.timestamp_type() == TimestampType::LogAppendTime;
            if shallow {
                // Without decompressing, the batch start is the earliest offset that is safe to
                // return; LogAppendTime batches give every record the batch's timestamp anyway.
                return Ok(Some((header.base_offset, header.max_timestamp)));
            }
            let mut buf = vec![0u8; total];
            self.log_file.get()?.read_exact_at(&mut buf, batch_position).map_err(|source| {
                LogError::SegmentRead { path: self.log_path().to_owned(), source }
            })?;
            match batch::record_timestamps(&buf) {
                Ok(records) => {
                    if let Some(found) = records.into_iter().find(|(_, ts)| *ts >= timestamp) {
                        return Ok(Some(found));
                    }
                }
                Err(error) => {
                    // Records are never validated on append; a malformed one still has a
                    // usable batch-level answer.
                    tracing::debug!(segment = %self.log_path().display(), %error, "record scan failed");
                    return Ok(Some((header.base_offset, header.max_timestamp)));
                }
            }
            // The batch's max_timestamp overstated its records: keep looking after it.
            position = batch_position + total as u64;
        }
    }
}

/// Walks the batch headers of a segment file of `size` bytes from `position` until `visit`
/// breaks; `Ok(None)` at the end.
fn walk<T>(
    file: &File,
    path: &Path,
    size: u64,
    position: u64,
    chunk_bytes: usize,
    mut visit: impl FnMut(u64, &BatchHeader) -> ControlFlow<T>,
) -> Result<Option<T>, LogError> {
    let mut reader = ChunkReader::new(file, path, size, chunk_bytes);
    let mut position = position;
    while position < size {
        let corrupt = |source| LogError::SegmentCorrupt { path: path.to_owned(), position, source };
        let Some(header) = reader.header(position)? else {
            let available = (size - position) as usize;
            return Err(corrupt(BatchError::Truncated { needed: BATCH_HEADER_LEN, available }));
        };
        let total = header
            .total_len()
            .filter(|total| *total >= BATCH_HEADER_LEN)
            .ok_or(BatchError::InvalidBatchLength { batch_length: header.batch_length })
            .map_err(corrupt)?;
        if let ControlFlow::Break(found) = visit(position, &header) {
            return Ok(Some(found));
        }
        position += total as u64;
    }
    Ok(None)
}

/// A segment as a read saw it under the log's lock: its open file (readable even if the
/// segment is deleted or replaced meanwhile), where the scan for the read's offset starts, and
/// its size then (later appends are not read).
#[derive(Debug, Clone)]
pub(crate) struct SegmentView {
    /// `None` for an empty segment, which has nothing to read.
    file: Option<Arc<File>>,
    path: PathBuf,
    scan_from: u64,
    size: u64,
}

impl SegmentView {
    pub(crate) fn is_empty(&self) -> bool {
        self.size == 0 || self.file.is_none()
    }

    /// The first batch whose last offset is >= `offset`, below `max_offset` or not.
    pub(crate) fn locate(&self, offset: i64, max_offset: i64) -> Result<Option<Located>, LogError> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let found = walk(
            file,
            &self.path,
            self.size,
            self.scan_from,
            SEEK_CHUNK_BYTES,
            |position, header| {
                if header.last_offset() >= offset {
                    ControlFlow::Break((position, *header))
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        Ok(found.map(|(position, first)| Located {
            file: file.clone(),
            path: self.path.clone(),
            position,
            first,
            size: self.size,
            max_offset,
        }))
    }
}

/// The batch a read starts with, found outside the log's lock; [`Located::read`] reads from it.
#[derive(Debug, Clone)]
pub struct Located {
    file: Arc<File>,
    path: PathBuf,
    position: u64,
    first: BatchHeader,
    size: u64,
    max_offset: i64,
}

impl Located {
    /// The length of the first batch, or 0 when it is at or above the read's bound (nothing
    /// to serve).
    pub fn first_len(&self) -> usize {
        if self.first.last_offset() >= self.max_offset {
            return 0;
        }
        (self.first.total_len().unwrap_or(0) as u64).min(self.available()) as usize
    }

    /// Bytes from the first batch to the end of its segment (as it was when viewed).
    pub fn available(&self) -> u64 {
        self.size.saturating_sub(self.position)
    }

    /// Reads `len` bytes (at least [`Located::first_len`]; more than [`Located::available`]
    /// reads that) into fresh memory that is not zeroed first, and keeps the whole batches
    /// below the read's bound. The buffer is shrunk to what is kept.
    pub fn read(&self, len: usize) -> Result<Vec<u8>, LogError> {
        let len = len.min(usize::try_from(self.available()).unwrap_or(usize::MAX));
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let position = self.position + buf.len() as u64;
            let spare = rustix::buffer::spare_capacity(&mut buf);
            let n = rustix::io::pread(&*self.file, spare, position)
                .map_err(|e| LogError::SegmentRead { path: self.path.clone(), source: e.into() })?;
            if n == 0 {
                // The file shrank under us (a follower's truncation): keep what was read.
                break;
            }
        }
        let end = whole_batches_len(&buf, self.max_offset);
        if end == 0 {
            let needed = self.first.total_len().unwrap_or(BATCH_HEADER_LEN);
            let source = BatchError::Truncated { needed, available: buf.len() };
            return Err(LogError::SegmentCorrupt {
                path: self.path.clone(),
                position: self.position,
                source,
            });
        }
        buf.truncate(end);
        buf.shrink_to_fit();
        Ok(buf)
    }
}

/// The length of the whole batches at the start of `buf` whose last offset is below
/// `max_offset`.
fn whole_batches_len(buf: &[u8], max_offset: i64) -> usize {
    let mut end = 0usize;
    while let Ok(header) = BatchHeader::parse(&buf[end..]) {
        let Some(total) =
            header.total_len().filter(|t| *t >= BATCH_HEADER_LEN && end + *t <= buf.len())
        else {
            break;
        };
        if header.last_offset() >= max_offset {
            break;
        }
        end += total;
    }
    end
}

fn rename(from: &Path, to: &Path) -> Result<(), LogError> {
    strom_fsio::rename(from, to).map_err(|source| LogError::SegmentRename {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    })
}

/// The offset after the last whole, well-formed batch of the `.log`-format file at `path`
/// whose first batch would start at `base_offset` (`base_offset` when it holds none).
pub fn scan_end_offset(path: &Path, base_offset: i64) -> Result<i64, LogError> {
    let file = File::open(path)
        .map_err(|source| LogError::SegmentOpen { path: path.to_owned(), source })?;
    let size = file
        .metadata()
        .map_err(|source| LogError::SegmentRead { path: path.to_owned(), source })?
        .len();
    let mut reader = ChunkReader::new(&file, path, size, SCAN_CHUNK_BYTES);
    let (mut position, mut next_offset) = (0u64, base_offset);
    while let Some(header) = reader.header(position)? {
        let Some(total) = header.total_len().filter(|_| batch::validate_header(&header).is_ok())
        else {
            break;
        };
        if position + total as u64 > size || header.base_offset < next_offset {
            break;
        }
        next_offset = header.last_offset() + 1;
        position += total as u64;
    }
    Ok(next_offset)
}

/// `write_all` for vectored IO (std's is unstable): one syscall in the common case.
fn write_all_vectored(file: &File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match (&*file).write_vectored(slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_protocol::batch::test_support::build_batch;

    fn prepared(base_offset: i64, timestamps: &[i64]) -> PreparedBatch {
        let bytes = Bytes::from(build_batch(base_offset, timestamps, 0));
        let header = BatchHeader::parse(&bytes).unwrap();
        let mut head = [0u8; ATTRIBUTES_OFFSET];
        head.copy_from_slice(&bytes[..ATTRIBUTES_OFFSET]);
        PreparedBatch { header, head, tail: bytes.slice(ATTRIBUTES_OFFSET..) }
    }

    fn handles() -> FileHandles {
        FileHandles::new(crate::handles::FILE_HANDLES_MIN)
    }

    fn written_segment(dir: &Path, handles: &FileHandles) -> Segment {
        let mut segment = Segment::create(dir, 100, 150, handles).unwrap();
        for i in 0..10 {
            let batch = prepared(100 + 2 * i, &[10 * i, 10 * i + 5]);
            assert!(segment.append(&[batch]).is_ok());
        }
        segment.finalize().unwrap();
        segment
    }

    #[test]
    fn trusted_open_uses_the_index_files_written_by_append() {
        let dir = tempfile::tempdir().unwrap();
        let handles = handles();
        let written = written_segment(dir.path(), &handles);
        assert!(written.offset_index.len() > 1);
        let (entries, max_timestamp) = (written.offset_index.encode(), written.max_timestamp);
        drop(written);
        let mut loaded = Segment::with_files(dir.path(), 100, 150, "", &handles).unwrap();
        assert!(loaded.load_trusted().unwrap());
        assert_eq!(loaded.offset_index.encode(), entries);
        assert_eq!(loaded.next_offset, 120);
        assert_eq!(loaded.max_timestamp, max_timestamp);
        assert_eq!(max_timestamp, Some((95, 119)));
        let (position, header) = loaded.find_batch(107).unwrap().unwrap();
        assert_eq!(header.base_offset, 106);
        assert_eq!(position, 3 * header.total_len().unwrap() as u64);
    }

    #[test]
    fn trusted_open_refuses_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let handles = handles();
        let written = written_segment(dir.path(), &handles);
        written.log_handle().unwrap().set_len(written.size - 1).unwrap();
        drop(written);
        let mut loaded = Segment::with_files(dir.path(), 100, 150, "", &handles).unwrap();
        assert!(!loaded.load_trusted().unwrap());
        let (segment, cut) =
            Segment::open(dir.path(), 100, 150, OpenMode::Trusted, 0, &handles).unwrap();
        assert_eq!(segment.next_offset, 118);
        assert!(cut > 0);
    }
}
