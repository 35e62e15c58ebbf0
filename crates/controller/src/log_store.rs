//! The metadata log on disk: openraft's `RaftLogStorage` over append-only segment files in
//! `<data_dir>/__cluster_metadata-0/`.
//!
//! Layout of the directory:
//! - `<base index, 20 digits>.log`: segments of CRC-32C frames, one prost `LogEntry` each
//!   (see `codec`). The name is the index of the first entry written to the segment; only the
//!   last segment is ever written.
//! - `vote`, `committed`, `purged`: one framed message each, replaced atomically.
//!
//! Every live entry is also kept decoded in memory (a `BTreeMap` by index), so reads never
//! touch the files; the metadata log between snapshots is small by design. File IO runs on
//! tokio's blocking pool so an fsync does not stall the runtime.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use strom_proto::raft as pb;

use crate::codec::{self, CodecError};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";
const PURGED_FILE: &str = "purged";
const SEGMENT_SUFFIX: &str = ".log";
const TMP_SUFFIX: &str = ".tmp";

/// Default byte size at which a segment rolls, whatever its entry count.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;

/// When the last segment rolls over to a new file.
#[derive(Clone, Debug)]
pub struct LogStoreOptions {
    /// Entries per segment. The controller sets it to its snapshot interval, so each snapshot
    /// lets a purge delete about one whole segment.
    pub segment_entries_max: u64,
    pub segment_bytes_max: u64,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            segment_entries_max: 10_000,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
        }
    }
}

/// The metadata log, as openraft's log storage.
pub struct LogStore {
    files: Arc<Mutex<SegmentFiles>>,
    index: Arc<Mutex<LogIndex>>,
    dir: PathBuf,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// Reads entries from memory; replication tasks hold one each while the store appends.
#[derive(Clone)]
pub struct LogReader {
    index: Arc<Mutex<LogIndex>>,
}

/// What readers see: the live entries and the last purged log id.
#[derive(Default)]
struct LogIndex {
    entries: BTreeMap<u64, Entry>,
    purged: Option<LogId>,
}

struct Segment {
    path: PathBuf,
    /// Bytes in the file, including frames still buffered by an `append` in progress.
    len: u64,
    frames: u64,
    /// Index range of the live (unpurged) entries it holds.
    first: Option<u64>,
    last: Option<u64>,
}

/// The segment files and where each live entry sits in them; only `&mut LogStore` methods
/// touch it, from the blocking pool.
struct SegmentFiles {
    dir: PathBuf,
    options: LogStoreOptions,
    segments: BTreeMap<u64, Segment>,
    /// Entry index → (segment base, byte offset of its frame): what `truncate` cuts at.
    positions: BTreeMap<u64, (u64, u64)>,
    /// The last segment, open for appending.
    active: Option<File>,
}

fn segment_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn lock<T>(m: &Mutex<T>) -> io::Result<MutexGuard<'_, T>> {
    m.lock().map_err(|_| io::Error::other("metadata log lock poisoned by a panic"))
}

/// Runs file IO on the blocking pool: an fsync must not hold a runtime worker.
async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("metadata log IO task failed: {e}")))?
}

fn err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::IO { source: StorageIOError::new(subject, verb, AnyError::new(&e)) }
}

impl LogStore {
    /// Opens (or creates) the log in `dir`: reads vote, committed and purged log ids, scans
    /// the segments into memory and cuts a torn tail off the last one.
    pub async fn open(dir: &Path, options: LogStoreOptions) -> io::Result<LogStore> {
        let dir = dir.to_path_buf();
        let d = dir.clone();
        let (files, index, vote, committed) = blocking(move || open_blocking(&d, options)).await?;
        Ok(LogStore {
            files: Arc::new(Mutex::new(files)),
            index: Arc::new(Mutex::new(index)),
            dir,
            vote,
            committed,
        })
    }

    fn reader(&self) -> LogReader {
        LogReader { index: self.index.clone() }
    }
}

type Opened = (SegmentFiles, LogIndex, Option<Vote>, Option<LogId>);

fn open_blocking(dir: &Path, options: LogStoreOptions) -> io::Result<Opened> {
    fs::create_dir_all(dir)?;
    let mut bases = Vec::new();
    for dirent in fs::read_dir(dir)? {
        let dirent = dirent?;
        let name = dirent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_SUFFIX) {
            // A replacement that crashed before its rename: the old file is still the truth.
            fs::remove_file(dirent.path())?;
        } else if let Some(base) = parse_segment_name(name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();

    let vote =
        codec::read_message::<pb::Vote>(&dir.join(VOTE_FILE))?.map(|v| codec::vote_from_pb(&v));
    let committed = codec::read_message::<pb::LogPointer>(&dir.join(COMMITTED_FILE))?
        .and_then(|p| p.log_id)
        .map(|id| codec::log_id_from_pb(&id));
    let purged = codec::read_message::<pb::LogPointer>(&dir.join(PURGED_FILE))?
        .and_then(|p| p.log_id)
        .map(|id| codec::log_id_from_pb(&id));

    let mut files = SegmentFiles {
        dir: dir.to_path_buf(),
        options,
        segments: BTreeMap::new(),
        positions: BTreeMap::new(),
        active: None,
    };
    let mut index = LogIndex { entries: BTreeMap::new(), purged };
    let purged_index = purged.as_ref().map(|p| p.index);
    let mut expected = purged_index.map(|p| p + 1);
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let path = dir.join(segment_name(base));
        let bytes = fs::read(&path)?;
        let mut seg = Segment { path, len: 0, frames: 0, first: None, last: None };
        let mut pos = 0usize;
        while pos < bytes.len() {
            let (payload, n) = match codec::get_frame(&bytes[pos..]) {
                Ok(frame) => frame,
                Err(e)
                    if committed.is_some_and(|c| expected.is_none_or(|next| c.index >= next)) =>
                {
                    // The frame holds an entry this node knew was committed: that is damage,
                    // not a torn append, and cutting it would forget committed metadata.
                    return Err(corrupt(format!(
                        "metadata log segment {} is corrupt at byte {pos} ({e}), which holds \
                         committed entry {} (committed up to {}): refusing to cut committed \
                         metadata; restore the segment, or wipe this voter's \
                         __cluster_metadata-0 so that it catches up from the other voters",
                        seg.path.display(),
                        expected.map_or_else(|| "?".to_owned(), |n| n.to_string()),
                        committed.map_or(0, |c| c.index),
                    )));
                }
                Err(e) if is_last => {
                    // A crash mid-append leaves a partial frame; nothing after it was ever
                    // acknowledged (append fsyncs before it answers), so it is cut.
                    tracing::warn!(
                        segment = %seg.path.display(),
                        offset = pos,
                        cut_bytes = bytes.len() - pos,
                        reason = %e,
                        "cutting the torn tail of the metadata log"
                    );
                    let file = OpenOptions::new().write(true).open(&seg.path)?;
                    file.set_len(pos as u64)?;
                    strom_fsio::sync_all(&file)?;
                    break;
                }
                Err(e) => {
                    return Err(corrupt(format!(
                        "metadata log segment {} is corrupt at byte {pos}: {e}",
                        seg.path.display()
                    )))
                }
            };
            // A frame whose checksum holds but does not decode is not a torn write: refuse
            // to guess (a bug, or a log from a newer version).
            let entry = codec::decode_entry(payload).map_err(|e: CodecError| {
                corrupt(format!(
                    "metadata log segment {} has an undecodable entry at byte {pos}: {e}",
                    seg.path.display()
                ))
            })?;
            let at = entry.log_id.index;
            if purged_index.is_none_or(|p| at > p) {
                if expected.is_some_and(|want| want != at) {
                    return Err(corrupt(format!(
                        "metadata log segment {} holds index {at} at byte {pos}, expected {:?}",
                        seg.path.display(),
                        expected
                    )));
                }
                expected = Some(at + 1);
                seg.first.get_or_insert(at);
                seg.last = Some(at);
                files.positions.insert(at, (base, pos as u64));
                index.entries.insert(at, entry);
            }
            seg.frames += 1;
            pos += n;
        }
        seg.len = pos as u64;
        if !is_last && seg.last.is_none() {
            // Wholly purged (a purge that crashed before deleting it): finish the job.
            fs::remove_file(&seg.path)?;
            continue;
        }
        files.segments.insert(base, seg);
    }
    if let Some(seg) = files.segments.values().next_back() {
        files.active = Some(OpenOptions::new().append(true).open(&seg.path)?);
    }
    Ok((files, index, vote, committed))
}

impl SegmentFiles {
    fn active_is_full(&self) -> bool {
        match self.segments.values().next_back() {
            None => true,
            Some(seg) => {
                seg.frames >= self.options.segment_entries_max
                    || seg.len >= self.options.segment_bytes_max
            }
        }
    }

    /// Writes buffered frames to the active segment.
    fn write_pending(&mut self, pending: &mut Vec<u8>) -> io::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let file = self.active.as_mut().ok_or_else(|| io::Error::other("no active segment"))?;
        file.write_all(pending)?;
        pending.clear();
        Ok(())
    }

    /// Starts a new segment whose first entry is `base`.
    fn roll(&mut self, base: u64) -> io::Result<()> {
        if let Some(file) = self.active.take() {
            // The old segment is closed for good: make it durable before moving on.
            strom_fsio::sync_data(&file)?;
        }
        let path = self.dir.join(segment_name(base));
        let file = OpenOptions::new().append(true).create_new(true).open(&path)?;
        codec::sync_dir(&self.dir)?;
        self.segments.insert(base, Segment { path, len: 0, frames: 0, first: None, last: None });
        self.active = Some(file);
        Ok(())
    }

    /// Appends encoded frames (entry index, frame) and makes them durable.
    fn append(&mut self, frames: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let mut pending = Vec::new();
        for (at, frame) in frames {
            if self.active_is_full() {
                self.write_pending(&mut pending)?;
                self.roll(*at)?;
            }
            let Some((&base, seg)) = self.segments.iter_mut().next_back() else {
                return Err(io::Error::other("no active segment after roll"));
            };
            self.positions.insert(*at, (base, seg.len));
            seg.len += frame.len() as u64;
            seg.frames += 1;
            seg.first.get_or_insert(*at);
            seg.last = Some(*at);
            pending.extend_from_slice(frame);
        }
        self.write_pending(&mut pending)?;
        match &self.active {
            Some(file) => strom_fsio::sync_data(file),
            None => Ok(()),
        }
    }

    /// Cuts the log so that `since` and everything after it are gone.
    fn truncate(&mut self, since: u64) -> io::Result<()> {
        let Some(&(base, pos)) = self.positions.get(&since) else { return Ok(()) };
        self.active = None;
        let later: Vec<u64> = self.segments.range(base + 1..).map(|(&b, _)| b).collect();
        for b in &later {
            if let Some(seg) = self.segments.remove(b) {
                fs::remove_file(&seg.path)?;
            }
        }
        self.positions.split_off(&since);
        let kept = self.positions.range(..since).rev().take_while(|(_, (b, _))| *b == base).count();
        let seg = self
            .segments
            .get_mut(&base)
            .ok_or_else(|| io::Error::other(format!("segment {base} missing from the map")))?;
        let file = OpenOptions::new().write(true).open(&seg.path)?;
        file.set_len(pos)?;
        strom_fsio::sync_all(&file)?;
        seg.len = pos;
        seg.frames = kept as u64;
        if seg.first.is_some_and(|f| f >= since) {
            seg.first = None;
            seg.last = None;
        } else {
            seg.last = Some(since - 1);
        }
        self.active = Some(OpenOptions::new().append(true).open(&seg.path)?);
        if !later.is_empty() {
            codec::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Forgets everything up to `upto` (inclusive): the purged id is saved first, then whole
    /// segments behind it are deleted. The last segment stays even when purged through, as the
    /// file appends continue in; on open its purged entries are skipped.
    fn purge(&mut self, upto: &LogId) -> io::Result<()> {
        codec::write_message_atomic(
            &self.dir,
            PURGED_FILE,
            &pb::LogPointer { log_id: Some(codec::log_id_to_pb(upto)) },
        )?;
        self.positions = self.positions.split_off(&(upto.index + 1));
        let last_base = self.segments.keys().next_back().copied();
        let doomed: Vec<u64> = self
            .segments
            .iter()
            .filter(|(&b, seg)| Some(b) != last_base && seg.last.is_none_or(|l| l <= upto.index))
            .map(|(&b, _)| b)
            .collect();
        for b in &doomed {
            if let Some(seg) = self.segments.remove(b) {
                fs::remove_file(&seg.path)?;
            }
        }
        for seg in self.segments.values_mut() {
            match seg.last {
                Some(l) if l <= upto.index => {
                    seg.first = None;
                    seg.last = None;
                }
                _ => {
                    if seg.first.is_some_and(|f| f <= upto.index) {
                        seg.first = Some(upto.index + 1);
                    }
                }
            }
        }
        if !doomed.is_empty() {
            codec::sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl LogIndex {
    fn last_log_id(&self) -> Option<LogId> {
        self.entries.values().next_back().map(|e| e.log_id).or(self.purged)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let index = lock(&self.index).map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(index.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader().try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let index = lock(&self.index).map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(LogState { last_purged_log_id: index.purged, last_log_id: index.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let dir = self.dir.clone();
        let msg = codec::vote_to_pb(vote);
        blocking(move || codec::write_message_atomic(&dir, VOTE_FILE, &msg))
            .await
            .map_err(|e| err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.vote)
    }

    /// Saved durably so a restart re-applies the committed log past the last snapshot before
    /// it serves anything: a lone voter's image is whole as soon as it starts.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if committed == self.committed {
            return Ok(());
        }
        let dir = self.dir.clone();
        let msg = pb::LogPointer { log_id: committed.as_ref().map(codec::log_id_to_pb) };
        blocking(move || codec::write_message_atomic(&dir, COMMITTED_FILE, &msg))
            .await
            .map_err(|e| err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let frames: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| {
                let mut frame = Vec::new();
                codec::encode_entry(e, &mut frame)?;
                Ok((e.log_id.index, frame))
            })
            .collect::<Result<_, CodecError>>()
            .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Write, e.into()))?;
        let files = self.files.clone();
        blocking(move || lock(&files)?.append(&frames))
            .await
            .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        {
            let mut index =
                lock(&self.index).map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            // No contiguity assert here: openraft's conformance suite appends below the
            // purged id, which openraft itself never does. `open` is strict instead: it skips
            // entries at or below the purged id and refuses a gap after it.
            for entry in entries {
                index.entries.insert(entry.log_id.index, entry);
            }
        }
        // Only now, with the frames fsynced, may openraft count them as persisted.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let files = self.files.clone();
        let since = log_id.index;
        blocking(move || lock(&files)?.truncate(since))
            .await
            .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        let mut index =
            lock(&self.index).map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        index.entries.split_off(&since);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let files = self.files.clone();
        let upto = log_id;
        blocking(move || lock(&files)?.purge(&upto))
            .await
            .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        let mut index =
            lock(&self.index).map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        index.entries = index.entries.split_off(&(log_id.index + 1));
        index.purged = Some(log_id);
        Ok(())
    }
}
