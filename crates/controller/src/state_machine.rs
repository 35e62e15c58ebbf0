//! The metadata log's state machine: committed entries applied to a `MetadataImage`, handed to
//! the `MetadataListener`, and snapshots of the image kept as files beside the log.
//!
//! A snapshot file is `<last index, 20 digits>-<last term, 20 digits>.checkpoint` holding the
//! prost `SnapshotMeta` in one frame, then the encoded `MetadataSnapshot` (the image written
//! out as records) cut into frames of at most [`SNAPSHOT_FRAME_BYTES_MAX`], so an image of
//! any size is written without a frame near the codec's limit. A new one is written to a temp file, fsynced and renamed; older ones are
//! then deleted. On open the newest one is the starting image; openraft re-applies the
//! committed log after it.

use std::fs;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError,
};
use prost::Message;
use strom_metadata::records::MetadataSnapshot;
use strom_metadata::{MetadataImage, MetadataListener, MetadataOffset};
use strom_proto::raft as pb;
use tokio::sync::watch;

use crate::codec::{self, CodecError};
use crate::types::{
    Applied, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const SNAPSHOT_SUFFIX: &str = ".checkpoint";

/// Snapshot bytes per frame of a snapshot file.
pub const SNAPSHOT_FRAME_BYTES_MAX: usize = 1 << 20;

const _: () = assert!(SNAPSHOT_FRAME_BYTES_MAX * 4 <= codec::FRAME_PAYLOAD_BYTES_MAX);

/// The metadata state machine, as openraft drives it.
pub struct StateMachine {
    /// Applied copy-on-write (`Arc::make_mut`): readers keep the image they were handed, and
    /// an entry copies only the topics it changes (plus the top-level maps' pointers), so a
    /// commit costs what it changed, not the cluster's size. openraft calls `apply` from one
    /// task, so no lock is needed.
    image: Arc<MetadataImage>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    /// The latest image for readers (`Controller::image`, the active controller's decisions).
    published: watch::Sender<Arc<MetadataImage>>,
    listener: Arc<dyn MetadataListener>,
    snapshots: Arc<SnapshotFiles>,
}

/// Builds a snapshot of the image as it was when the builder was made, while applying goes on.
pub struct SnapshotBuilder {
    image: Arc<MetadataImage>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshots: Arc<SnapshotFiles>,
}

/// The snapshot files in the log directory. The mutex orders a snapshot being built against
/// one being installed, so the newest always wins.
struct SnapshotFiles {
    dir: PathBuf,
    lock: Mutex<()>,
}

fn snapshot_name(last: Option<&LogId>) -> String {
    let (index, term) = last.map_or((0, 0), |l| (l.index, l.leader_id.term));
    format!("{index:020}-{term:020}{SNAPSHOT_SUFFIX}")
}

fn parse_snapshot_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    let (index, term) = stem.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

fn snapshot_id(last: Option<&LogId>) -> String {
    // The entry at (index, term) is the same on every node, so this names the state too.
    last.map_or_else(|| "empty".to_string(), |l| format!("{}-{}", l.index, l.leader_id.term))
}

fn io_err(verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(&e)),
    }
}

async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("snapshot IO task failed: {e}")))?
}

impl SnapshotFiles {
    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, ()>> {
        self.lock.lock().map_err(|_| io::Error::other("snapshot lock poisoned by a panic"))
    }

    /// The newest snapshot file's (index, term, path), if any.
    fn newest(&self) -> io::Result<Option<(u64, u64, PathBuf)>> {
        let mut newest = None;
        for dirent in fs::read_dir(&self.dir)? {
            let dirent = dirent?;
            let name = dirent.file_name();
            let Some(key) = name.to_str().and_then(parse_snapshot_name) else { continue };
            if newest.as_ref().is_none_or(|(i, t, _)| (*i, *t) < key) {
                newest = Some((key.0, key.1, dirent.path()));
            }
        }
        Ok(newest)
    }

    fn read(path: &Path) -> io::Result<(SnapshotMeta, Vec<u8>)> {
        let bytes = fs::read(path)?;
        let (meta, n) = codec::get_frame(&bytes)?;
        let meta = pb::SnapshotMeta::decode(meta).map_err(CodecError::from)?;
        let meta = codec::snapshot_meta_from_pb(&meta)?;
        // The data frames run to the end of the file; a cut or corrupt one fails the read.
        let mut data = Vec::with_capacity(bytes.len() - n);
        let mut at = n;
        while at < bytes.len() {
            let (chunk, m) = codec::get_frame(&bytes[at..])?;
            data.extend_from_slice(chunk);
            at += m;
        }
        Ok((meta, data))
    }

    fn read_newest(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        let _guard = self.lock()?;
        match self.newest()? {
            None => Ok(None),
            Some((_, _, path)) => Self::read(&path).map(Some),
        }
    }

    /// Saves a snapshot atomically, then deletes every older one. A snapshot older than the
    /// newest on disk (a build that raced an install) is dropped instead.
    fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let _guard = self.lock()?;
        let last = meta.last_log_id.as_ref();
        let key = last.map_or((0, 0), |l| (l.index, l.leader_id.term));
        if self.newest()?.is_some_and(|(i, t, _)| (i, t) > key) {
            return Ok(());
        }
        let frames = data.len().div_ceil(SNAPSHOT_FRAME_BYTES_MAX);
        let mut out = Vec::with_capacity(data.len() + 256 + frames * codec::FRAME_HEADER_BYTES);
        codec::put_frame(&mut out, &codec::snapshot_meta_to_pb(meta).encode_to_vec())?;
        for chunk in data.chunks(SNAPSHOT_FRAME_BYTES_MAX) {
            codec::put_frame(&mut out, chunk)?;
        }
        let name = snapshot_name(last);
        codec::write_atomic(&self.dir, &name, &out)?;
        for dirent in fs::read_dir(&self.dir)? {
            let dirent = dirent?;
            let other = dirent.file_name();
            if other.to_str().and_then(parse_snapshot_name).is_some_and(|k| k < key) {
                fs::remove_file(dirent.path())?;
            }
        }
        Ok(())
    }
}

fn decode_snapshot(data: &[u8]) -> io::Result<MetadataSnapshot> {
    Ok(MetadataSnapshot::decode(data).map_err(CodecError::from)?)
}

fn image_from_snapshot(
    meta: &SnapshotMeta,
    records: &MetadataSnapshot,
) -> io::Result<MetadataImage> {
    let offset = MetadataOffset(meta.last_log_id.as_ref().map_or(0, |l| l.index));
    MetadataImage::from_records(offset, &records.records).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("snapshot does not apply: {e}"))
    })
}

impl StateMachine {
    /// Opens the state machine over the snapshots in `dir`: the image starts at the newest
    /// one (which the listener hears about once), or empty.
    pub async fn open(
        dir: &Path,
        listener: Arc<dyn MetadataListener>,
    ) -> io::Result<(StateMachine, watch::Receiver<Arc<MetadataImage>>)> {
        let snapshots = Arc::new(SnapshotFiles { dir: dir.to_path_buf(), lock: Mutex::new(()) });
        let files = snapshots.clone();
        let loaded = blocking(move || {
            fs::create_dir_all(&files.dir)?;
            match files.read_newest()? {
                None => Ok(None),
                Some((meta, data)) => {
                    let records = decode_snapshot(&data)?;
                    let image = image_from_snapshot(&meta, &records)?;
                    Ok(Some((meta, records, image)))
                }
            }
        })
        .await?;
        let mut sm = StateMachine {
            image: Arc::new(MetadataImage::default()),
            last_applied: None,
            last_membership: StoredMembership::default(),
            published: watch::Sender::new(Arc::new(MetadataImage::default())),
            listener,
            snapshots,
        };
        if let Some((meta, records, image)) = loaded {
            tracing::info!(snapshot = %meta.snapshot_id, "metadata image loaded from snapshot");
            sm.install(meta, records, image);
        }
        let rx = sm.published.subscribe();
        Ok((sm, rx))
    }

    fn install(&mut self, meta: SnapshotMeta, records: MetadataSnapshot, image: MetadataImage) {
        let image = Arc::new(image);
        self.image = image.clone();
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership;
        self.published.send_replace(image.clone());
        self.listener.on_commit(image.offset, &records.records, image);
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let data = MetadataSnapshot { records: self.image.to_records() }.encode_to_vec();
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id: snapshot_id(self.last_applied.as_ref()),
        };
        let files = self.snapshots.clone();
        let (m, d) = (meta.clone(), data.clone());
        blocking(move || files.write(&m, &d)).await.map_err(|e| io_err(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "metadata snapshot written");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        for entry in entries {
            let offset = MetadataOffset(entry.log_id.index);
            let records = match &entry.payload {
                EntryPayload::Normal(batch) => batch.records.as_slice(),
                EntryPayload::Blank => &[],
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    &[]
                }
            };
            // Blank and membership entries move the offset too, so the image's offset is
            // always the raft index it reflects.
            if let Err(e) = Arc::make_mut(&mut self.image).apply_batch(offset, records) {
                // The log and the image disagree: openraft stops this node on the error.
                tracing::error!(offset = offset.0, error = %e, "committed metadata does not apply");
                return Err(StorageError::IO {
                    source: StorageIOError::apply(entry.log_id, AnyError::new(&e)),
                });
            }
            self.last_applied = Some(entry.log_id);
            if let EntryPayload::Normal(batch) = &entry.payload {
                // A pointer, not a copy: the next entry copies what it changes.
                self.listener.on_commit(offset, &batch.records, self.image.clone());
            }
            replies.push(Applied { offset });
        }
        if !replies.is_empty() {
            self.published.send_replace(self.image.clone());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            image: self.published.borrow().clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let records = decode_snapshot(&data).map_err(|e| io_err(ErrorVerb::Read, e))?;
        let image = image_from_snapshot(meta, &records).map_err(|e| io_err(ErrorVerb::Read, e))?;
        let files = self.snapshots.clone();
        let m = meta.clone();
        blocking(move || files.write(&m, &data)).await.map_err(|e| io_err(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "metadata snapshot installed");
        self.install(meta.clone(), records, image);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let files = self.snapshots.clone();
        let newest =
            blocking(move || files.read_newest()).await.map_err(|e| io_err(ErrorVerb::Read, e))?;
        Ok(newest.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
