//! Open file handles as a bounded resource. A node hosts far more partition files than the
//! process may hold descriptors, so a log holds none of its own: each file (a segment's
//! `.log`, `.index`, `.timeindex`) is a [`FileSlot`], opened on use through one
//! [`FileHandles`] cache per log directory, which keeps at most its capacity of handles open
//! and closes the least recently used. An idle partition holds no descriptor.
//!
//! Eviction drops only the cache's `Arc<File>`: a read or a sync that took the handle keeps
//! it open until done. Durability: an fdatasync must go through a descriptor that was open
//! when the data was written, or a writeback error that the kernel recorded meanwhile may be
//! lost with the inode (and the sync report success). So a segment's `.log` written since its
//! last sync keeps the handle it was written through (pinned, outside the cache's count) until
//! a sync covers it; [`FileHandles::under_pressure`] tells when so many are pinned that their
//! logs should sync now rather than at their next periodic flush. Index files are derived
//! data, checked when loaded and rebuilt from the `.log` when they fail: a write to them only
//! marks the slot unsynced, and the sync reopens the file if the cache let it go.
//!
//! Running out of descriptors (EMFILE, ENFILE) is not a failed disk: the cache closes a share
//! of its handles and retries once; if that fails too the operation fails with
//! [`LogError::FileHandlesExhausted`], which the broker answers as a retriable error, and the
//! log stays online.
//!
//! The cache is sharded by slot id so that a hit takes one short lock among
//! [`SHARDS_MAX`]: a hash lookup and a list splice, no IO. Opens and closes run outside it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::LogError;

/// The smallest cache: one log's active segment (three files) and the segment a roll creates,
/// with room to spare. Smaller caches still work, opening on nearly every use.
pub const FILE_HANDLES_MIN: usize = 8;
/// Most shards; a cache smaller than `SHARDS_MAX * SHARD_CAPACITY_MIN` has fewer, so that
/// the least recently used handle of a shard is close to that of the whole cache.
pub const SHARDS_MAX: usize = 16;
const SHARD_CAPACITY_MIN: usize = 64;
/// On EMFILE the cache closes this share of its handles (at least one) before it retries.
const EXHAUSTED_EVICT_SHARE: usize = 8;
/// Pinned (unsynced) data files beyond this share of the capacity put the cache under pressure.
const PINNED_PRESSURE_SHARE: usize = 2;
/// At most one warning about exhausted descriptors in this interval; the rest are counted.
const EXHAUSTED_WARN_INTERVAL: Duration = Duration::from_secs(10);
const _: () = assert!(FILE_HANDLES_MIN >= 2 * 3, "a roll holds two segments' files");
const _: () = assert!(EXHAUSTED_EVICT_SHARE >= 2 && PINNED_PRESSURE_SHARE >= 2);

/// The shared cache of open file handles of one log directory. Cheap to clone.
#[derive(Clone)]
pub struct FileHandles {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FileHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileHandles")
            .field("capacity", &self.shared.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Counters of a [`FileHandles`] cache since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileHandleStats {
    /// Handles in the cache now.
    pub cached: usize,
    /// Data files written and not yet synced, held open by their logs.
    pub pinned: usize,
    pub opens: u64,
    pub evictions: u64,
    /// Opens refused for want of descriptors after the evict-and-retry.
    pub exhausted: u64,
}

struct Shared {
    shards: Box<[Mutex<Shard>]>,
    capacity: usize,
    next_id: AtomicU64,
    pinned: AtomicUsize,
    opens: AtomicU64,
    evictions: AtomicU64,
    exhausted: AtomicU64,
    /// Milliseconds after `created` of the last exhaustion warning, plus one (0: never).
    warned_at_ms: AtomicU64,
    created: Instant,
}

const NIL: usize = usize::MAX;

struct Node {
    id: u64,
    file: Option<Arc<File>>,
    /// Towards the most recently used.
    prev: usize,
    /// Towards the least recently used.
    next: usize,
}

/// One shard: an LRU list threaded through a slab of nodes, and an index by slot id.
struct Shard {
    capacity: usize,
    index: HashMap<u64, usize>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used.
    tail: usize,
}

impl Shard {
    fn new(capacity: usize) -> Shard {
        Shard {
            capacity,
            index: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    fn unlink(&mut self, at: usize) {
        let (prev, next) = (self.nodes[at].prev, self.nodes[at].next);
        match prev {
            NIL => self.head = next,
            prev => self.nodes[prev].next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.nodes[next].prev = prev,
        }
    }

    fn push_front(&mut self, at: usize) {
        self.nodes[at].prev = NIL;
        self.nodes[at].next = self.head;
        match self.head {
            NIL => self.tail = at,
            head => self.nodes[head].prev = at,
        }
        self.head = at;
    }

    fn get(&mut self, id: u64) -> Option<Arc<File>> {
        let at = *self.index.get(&id)?;
        if self.head != at {
            self.unlink(at);
            self.push_front(at);
        }
        self.nodes[at].file.clone()
    }

    fn remove(&mut self, id: u64) -> Option<Arc<File>> {
        let at = self.index.remove(&id)?;
        self.unlink(at);
        self.free.push(at);
        self.nodes[at].file.take()
    }

    fn pop_lru(&mut self) -> Option<Arc<File>> {
        let id = self.nodes.get(self.tail)?.id;
        self.remove(id)
    }

    /// Caches `file` for `id` and returns the cached handle: an existing one wins (another
    /// thread opened the same file meanwhile). Handles evicted to make room go to `evicted`,
    /// to be closed after the lock is released.
    fn insert(&mut self, id: u64, file: Arc<File>, evicted: &mut Vec<Arc<File>>) -> Arc<File> {
        if let Some(existing) = self.get(id) {
            return existing;
        }
        while self.index.len() >= self.capacity {
            match self.pop_lru() {
                Some(old) => evicted.push(old),
                None => break,
            }
        }
        let node = Node { id, file: Some(file.clone()), prev: NIL, next: NIL };
        let at = match self.free.pop() {
            Some(at) => {
                self.nodes[at] = node;
                at
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.index.insert(id, at);
        self.push_front(at);
        file
    }
}

/// What a slot holds: how to open it and which error names its failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A segment's `.log`: writes pin the handle until synced.
    Segment,
    /// An offset or time index file.
    Index,
}

impl FileKind {
    /// The error for a failed open: out of descriptors, or this kind's own.
    fn open_error(self, path: &Path, source: io::Error) -> LogError {
        if is_descriptor_exhaustion(&source) {
            return LogError::FileHandlesExhausted { path: path.to_owned(), source };
        }
        match self {
            FileKind::Segment => LogError::SegmentOpen { path: path.to_owned(), source },
            FileKind::Index => LogError::IndexOpen { path: path.to_owned(), source },
        }
    }
}

/// Whether an IO error says the process or the system is out of file descriptors.
pub(crate) fn is_descriptor_exhaustion(error: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(error),
        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
    )
}

fn open_file(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new().read(true).append(true).create(create).open(path)
}

impl FileHandles {
    /// A cache of at most `capacity` handles (at least [`FILE_HANDLES_MIN`]).
    pub fn new(capacity: usize) -> FileHandles {
        let capacity = capacity.max(FILE_HANDLES_MIN);
        let shards = (capacity / SHARD_CAPACITY_MIN).clamp(1, SHARDS_MAX);
        let per_shard = capacity / shards;
        FileHandles {
            shared: Arc::new(Shared {
                shards: (0..shards).map(|_| Mutex::new(Shard::new(per_shard))).collect(),
                capacity: per_shard * shards,
                next_id: AtomicU64::new(0),
                pinned: AtomicUsize::new(0),
                opens: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                exhausted: AtomicU64::new(0),
                warned_at_ms: AtomicU64::new(0),
                created: Instant::now(),
            }),
        }
    }

    /// How many handles the cache keeps open at most (pinned ones come on top).
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    pub fn stats(&self) -> FileHandleStats {
        let s = &self.shared;
        FileHandleStats {
            cached: s.shards.iter().map(|shard| lock(shard).index.len()).sum(),
            pinned: s.pinned.load(Ordering::Relaxed),
            opens: s.opens.load(Ordering::Relaxed),
            evictions: s.evictions.load(Ordering::Relaxed),
            exhausted: s.exhausted.load(Ordering::Relaxed),
        }
    }

    /// Whether so many data files wait for a sync (each holding its descriptor) that logs
    /// should sync what they wrote now instead of at their next periodic flush.
    pub fn under_pressure(&self) -> bool {
        self.shared.pinned.load(Ordering::Relaxed) > self.shared.capacity / PINNED_PRESSURE_SHARE
    }

    fn shard(&self, id: u64) -> MutexGuard<'_, Shard> {
        let shards = &self.shared.shards;
        lock(&shards[(id % shards.len() as u64) as usize])
    }

    fn lookup(&self, id: u64) -> Option<Arc<File>> {
        self.shard(id).get(id)
    }

    /// The cached handle of slot `id`, else `path` opened (created when `create`) and cached.
    fn get_or_open(
        &self,
        id: u64,
        path: &Path,
        create: bool,
        kind: FileKind,
    ) -> Result<Arc<File>, LogError> {
        if let Some(file) = self.lookup(id) {
            return Ok(file);
        }
        let file = Arc::new(self.open(path, create, kind)?);
        let mut evicted = Vec::new();
        let file = self.shard(id).insert(id, file, &mut evicted);
        self.shared.evictions.fetch_add(evicted.len() as u64, Ordering::Relaxed);
        drop(evicted); // closed outside the shard's lock
        Ok(file)
    }

    /// Opens `path` without caching it; on EMFILE/ENFILE closes a share of the cache and
    /// retries once.
    fn open(&self, path: &Path, create: bool, kind: FileKind) -> Result<File, LogError> {
        self.shared.opens.fetch_add(1, Ordering::Relaxed);
        self.retry_exhausted(path, || open_file(path, create))
            .map_err(|source| kind.open_error(path, source))
    }

    /// Runs `open`; when it fails for want of descriptors, closes a share of the cache and
    /// runs it once more. A second failure becomes [`LogError::FileHandlesExhausted`]; other
    /// errors come back as they are.
    pub(crate) fn retry_exhausted<T>(
        &self,
        path: &Path,
        open: impl Fn() -> io::Result<T>,
    ) -> Result<T, io::Error> {
        match open() {
            Err(error) if is_descriptor_exhaustion(&error) => {
                self.evict((self.shared.capacity / EXHAUSTED_EVICT_SHARE).max(1));
                open().inspect_err(|error| {
                    if is_descriptor_exhaustion(error) {
                        self.exhausted(path, error);
                    }
                })
            }
            result => result,
        }
    }

    /// Counts a refused open and warns at most once per [`EXHAUSTED_WARN_INTERVAL`].
    fn exhausted(&self, path: &Path, error: &io::Error) {
        let s = &self.shared;
        let refused = s.exhausted.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = s.created.elapsed().as_millis() as u64 + 1;
        let last = s.warned_at_ms.load(Ordering::Relaxed);
        let due =
            last == 0 || now_ms.saturating_sub(last) >= EXHAUSTED_WARN_INTERVAL.as_millis() as u64;
        if due
            && s.warned_at_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                path = %path.display(), %error, refused, capacity = s.capacity,
                "out of file descriptors: the request fails and is retried by its client \
                 (raise the hard `ulimit -n`)"
            );
        }
    }

    /// Closes up to `count` of the least recently used handles, round robin over the shards.
    fn evict(&self, count: usize) {
        let mut evicted = Vec::with_capacity(count);
        let shards = &self.shared.shards;
        let mut idle_rounds = 0;
        let mut at = 0usize;
        while evicted.len() < count && idle_rounds < shards.len() {
            match lock(&shards[at % shards.len()]).pop_lru() {
                Some(file) => {
                    evicted.push(file);
                    idle_rounds = 0;
                }
                None => idle_rounds += 1,
            }
            at += 1;
        }
        self.shared.evictions.fetch_add(evicted.len() as u64, Ordering::Relaxed);
    }

    fn forget(&self, id: u64) {
        let removed = self.shard(id).remove(id);
        drop(removed); // closed outside the shard's lock
    }

    fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic cannot leave a shard half-updated in a way that matters more than a lost
    // handle: every update completes before any call that could panic.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One file of a log, opened on use through the cache. Dropping the slot closes its cached
/// handle (a deleted segment's space is freed at once, not at its eviction).
pub(crate) struct FileSlot {
    handles: FileHandles,
    id: u64,
    path: PathBuf,
    kind: FileKind,
    /// Writes through this slot (or, at open, unverified contents), counted; the slot is
    /// unsynced while this is above `synced`.
    writes: u64,
    synced: u64,
    /// A data file's handle while it has unsynced writes (see the module docs).
    pinned: Option<Arc<File>>,
}

impl std::fmt::Debug for FileSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSlot")
            .field("path", &self.path)
            .field("unsynced", &(self.writes > self.synced))
            .field("pinned", &self.pinned.is_some())
            .finish()
    }
}

impl FileSlot {
    /// A slot for the file at `path`, created if missing; returns it with its open handle.
    pub(crate) fn create(
        handles: &FileHandles,
        path: PathBuf,
        kind: FileKind,
    ) -> Result<(FileSlot, Arc<File>), LogError> {
        let id = handles.next_id();
        let file = handles.get_or_open(id, &path, true, kind)?;
        let slot = FileSlot {
            handles: handles.clone(),
            id,
            path,
            kind,
            writes: 0,
            synced: 0,
            pinned: None,
        };
        Ok((slot, file))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// After a rename: the open handle stays valid, a reopen uses the new name.
    pub(crate) fn set_path(&mut self, path: PathBuf) {
        self.path = path;
    }

    /// The open handle: the pinned one, the cached one, or the file opened again.
    pub(crate) fn get(&self) -> Result<Arc<File>, LogError> {
        match &self.pinned {
            Some(file) => Ok(file.clone()),
            None => self.handles.get_or_open(self.id, &self.path, false, self.kind),
        }
    }

    /// Records a write through `file` (this slot's handle), before it is made: a data file
    /// keeps the handle open until a sync covers the write.
    pub(crate) fn written(&mut self, file: &Arc<File>) {
        self.writes += 1;
        if self.kind == FileKind::Segment && self.pinned.is_none() {
            self.pinned = Some(file.clone());
            self.handles.shared.pinned.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks the file's contents as not known to be durable (a segment verified at open,
    /// above the recovery point) without holding its handle: the next sync reopens it.
    pub(crate) fn mark_unsynced(&mut self) {
        self.writes += 1;
    }

    pub(crate) fn is_unsynced(&self) -> bool {
        self.writes > self.synced
    }

    /// What a sync of this slot's writes so far needs, to be run outside the log's lock.
    pub(crate) fn sync_target(&self) -> Option<SyncTarget> {
        self.is_unsynced().then(|| SyncTarget {
            handles: self.handles.clone(),
            id: self.id,
            path: self.path.clone(),
            kind: self.kind,
            pinned: self.pinned.clone(),
            writes: self.writes,
        })
    }

    /// A sync covered the first `writes` writes.
    pub(crate) fn mark_synced(&mut self, writes: u64) {
        self.synced = self.synced.max(writes.min(self.writes));
        if !self.is_unsynced() {
            self.unpin();
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Lets the handle go while the file stays unsynced (writes made while a log opens):
    /// the next sync reopens it.
    pub(crate) fn release_pin(&mut self) {
        self.unpin();
    }

    /// fsync (data and metadata) through the slot's handle; everything written is durable.
    pub(crate) fn sync_all(&mut self) -> Result<(), LogError> {
        let file = self.get()?;
        strom_fsio::sync_all(&file)
            .map_err(|source| LogError::SegmentSync { path: self.path.clone(), source })?;
        self.mark_synced(self.writes);
        Ok(())
    }

    fn unpin(&mut self) {
        if self.pinned.take().is_some() {
            self.handles.shared.pinned.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        self.unpin();
        self.handles.forget(self.id);
    }
}

/// One file a [`crate::SyncHandle`] fdatasyncs, outside the log's lock.
#[derive(Debug)]
pub(crate) struct SyncTarget {
    handles: FileHandles,
    id: u64,
    path: PathBuf,
    kind: FileKind,
    pinned: Option<Arc<File>>,
    writes: u64,
}

impl SyncTarget {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn writes(&self) -> u64 {
        self.writes
    }

    /// fdatasync through the pinned handle, else the cached one, else the file opened again
    /// (not cached: the slot may be gone by now). A file that no longer exists went with its
    /// segment and needs no sync.
    pub(crate) fn sync(&self) -> Result<(), LogError> {
        let cached = || self.handles.lookup(self.id);
        let file = match self.pinned.clone().or_else(cached) {
            Some(file) => file,
            None => {
                match self.handles.retry_exhausted(&self.path, || open_file(&self.path, false)) {
                    Ok(file) => Arc::new(file),
                    Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(source) => return Err(self.kind.open_error(&self.path, source)),
                }
            }
        };
        strom_fsio::sync_data(&file)
            .map_err(|source| LogError::SegmentSync { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(handles: &FileHandles, dir: &Path, n: usize) -> Vec<FileSlot> {
        (0..n)
            .map(|i| {
                FileSlot::create(handles, dir.join(format!("{i}")), FileKind::Index).unwrap().0
            })
            .collect()
    }

    #[test]
    fn the_cache_keeps_at_most_its_capacity_and_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let handles = FileHandles::new(FILE_HANDLES_MIN);
        let slots = slots(&handles, dir.path(), FILE_HANDLES_MIN + 4);
        assert_eq!(handles.stats().cached, FILE_HANDLES_MIN);
        assert_eq!(handles.stats().evictions, 4);
        // Slot 4 is now the least recently used; using it again keeps it over slot 5.
        slots[4].get().unwrap();
        let opens = handles.stats().opens;
        slots[0].get().unwrap();
        assert_eq!(handles.stats().opens, opens + 1, "slot 0 was evicted and reopened");
        slots[4].get().unwrap();
        assert_eq!(handles.stats().opens, opens + 1, "slot 4 stayed cached");
        drop(slots);
        assert_eq!(handles.stats().cached, 0, "dropped slots close their handles");
    }

    #[test]
    fn a_written_data_file_stays_open_until_synced() {
        let dir = tempfile::tempdir().unwrap();
        let handles = FileHandles::new(FILE_HANDLES_MIN);
        let (mut slot, file) =
            FileSlot::create(&handles, dir.path().join("0.log"), FileKind::Segment).unwrap();
        slot.written(&file);
        drop(file);
        let _others = slots(&handles, dir.path(), FILE_HANDLES_MIN);
        assert_eq!(handles.stats().pinned, 1);
        let target = slot.sync_target().unwrap();
        assert!(Arc::ptr_eq(target.pinned.as_ref().unwrap(), &slot.get().unwrap()));
        target.sync().unwrap();
        slot.written(&slot.get().unwrap());
        slot.mark_synced(target.writes());
        assert!(slot.is_unsynced(), "a write after the sync's handle was taken is not covered");
        assert_eq!(handles.stats().pinned, 1);
        slot.mark_synced(slot.sync_target().unwrap().writes());
        assert_eq!(handles.stats().pinned, 0);
        assert!(slot.sync_target().is_none());
    }

    #[test]
    fn a_sync_of_a_deleted_file_has_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let handles = FileHandles::new(FILE_HANDLES_MIN);
        let (mut slot, _) =
            FileSlot::create(&handles, dir.path().join("0.index"), FileKind::Index).unwrap();
        slot.mark_unsynced();
        let target = slot.sync_target().unwrap();
        std::fs::remove_file(slot.path()).unwrap();
        drop(slot);
        target.sync().unwrap();
    }

    #[test]
    fn descriptor_exhaustion_is_recognised() {
        assert!(is_descriptor_exhaustion(&rustix::io::Errno::MFILE.into()));
        assert!(is_descriptor_exhaustion(&rustix::io::Errno::NFILE.into()));
        assert!(!is_descriptor_exhaustion(&rustix::io::Errno::IO.into()));
    }
}
