//! The aborted-transaction index (Kafka's `.txnindex`): for every transaction that ended with
//! an ABORT marker, its producer, its first offset, the marker's offset and the last stable
//! offset after it. A read_committed fetch returns the aborted transactions its data overlaps,
//! so the client drops their records.
//!
//! The log keeps every entry of the log in memory. Entries of closed segments are persisted
//! when their segment rolls (one file per segment that has any, named after its base offset,
//! written whole and fsynced, so it is durable before anything is appended after it); the
//! active segment's entries are rebuilt on open by the producer-state replay, which always
//! covers the active segment. Files are loaded all together and filtered by offset, so a
//! compaction that merges segments or a retention that deletes them never loses an entry that
//! is still in the log.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::LogError;
use crate::segment;

const EXTENSION: &str = "txnindex";
const ENTRY_VERSION: i16 = 0;
/// version (2) + producer id (8) + first offset (8) + last offset (8) + last stable offset (8).
const ENTRY_LEN: usize = 34;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The ABORT marker's offset.
    pub last_offset: i64,
    pub last_stable_offset: i64,
}

fn path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(segment::file_name(base_offset, EXTENSION))
}

fn base_of(file_name: &str) -> Option<i64> {
    let stem = file_name.strip_suffix(".txnindex")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn list(dir: &Path) -> Result<Vec<i64>, LogError> {
    let read_dir = |source| LogError::DirRead { path: dir.to_owned(), source };
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir)? {
        if let Some(base) = entry.map_err(read_dir)?.file_name().to_str().and_then(base_of) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Persists the entries of the segment based at `base_offset` (nothing when there are none).
pub(crate) fn write(dir: &Path, base_offset: i64, entries: &[AbortedTxn]) -> Result<(), LogError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut bytes = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        bytes.extend_from_slice(&ENTRY_VERSION.to_be_bytes());
        for field in [e.producer_id, e.first_offset, e.last_offset, e.last_stable_offset] {
            bytes.extend_from_slice(&field.to_be_bytes());
        }
    }
    let path = path(dir, base_offset);
    strom_fsio::write_atomically(&path, &bytes)
        .map_err(|source| LogError::IndexWrite { path, source })
}

/// Every entry of every file in `dir`, sorted by marker offset, duplicates removed. A file
/// that does not parse is an error: silently dropping it would show aborted records to
/// read_committed readers.
pub(crate) fn load_all(dir: &Path) -> Result<Vec<AbortedTxn>, LogError> {
    let mut entries = Vec::new();
    for base in list(dir)? {
        let path = path(dir, base);
        let bytes =
            fs::read(&path).map_err(|source| LogError::IndexRead { path: path.clone(), source })?;
        if bytes.len() % ENTRY_LEN != 0 {
            return Err(LogError::TxnIndexCorrupt { path, len: bytes.len() });
        }
        for chunk in bytes.chunks_exact(ENTRY_LEN) {
            if i16::from_be_bytes([chunk[0], chunk[1]]) != ENTRY_VERSION {
                return Err(LogError::TxnIndexCorrupt { path, len: bytes.len() });
            }
            let field = |i: usize| {
                i64::from_be_bytes(chunk[2 + 8 * i..10 + 8 * i].try_into().expect("8 bytes"))
            };
            entries.push(AbortedTxn {
                producer_id: field(0),
                first_offset: field(1),
                last_offset: field(2),
                last_stable_offset: field(3),
            });
        }
    }
    entries.sort_unstable_by_key(|e| (e.last_offset, e.producer_id));
    entries.dedup();
    Ok(entries)
}

/// Deletes the files of segments based at or above `from` (a truncation removed them).
pub(crate) fn delete_from(dir: &Path, from: i64) -> Result<(), LogError> {
    for base in list(dir)?.into_iter().filter(|b| *b >= from) {
        let path = path(dir, base);
        fs::remove_file(&path).map_err(|source| LogError::SegmentDelete { path, source })?;
    }
    Ok(())
}

/// Deletes the files whose every entry ended before `log_start` (retention removed them).
pub(crate) fn delete_below(dir: &Path, log_start: i64, entries: &[AbortedTxn]) {
    let Ok(bases) = list(dir) else { return };
    for (i, &base) in bases.iter().enumerate() {
        // A file holds the entries of offsets from its base to the next file's base.
        let next = bases.get(i + 1).copied().unwrap_or(i64::MAX);
        let live = entries.iter().any(|e| e.last_offset >= base && e.last_offset < next);
        if next <= log_start && !live {
            let _ = fs::remove_file(path(dir, base));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(pid: i64, first: i64, last: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
            last_stable_offset: last + 1,
        }
    }

    #[test]
    fn files_round_trip_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 0, &[txn(1, 0, 5), txn(2, 3, 8)]).unwrap();
        write(dir.path(), 100, &[txn(1, 100, 120)]).unwrap();
        write(dir.path(), 200, &[]).unwrap();
        let all = load_all(dir.path()).unwrap();
        assert_eq!(all, vec![txn(1, 0, 5), txn(2, 3, 8), txn(1, 100, 120)]);
        delete_from(dir.path(), 100).unwrap();
        assert_eq!(load_all(dir.path()).unwrap().len(), 2);
        fs::write(path(dir.path(), 300), [0u8; 33]).unwrap();
        assert!(matches!(load_all(dir.path()), Err(LogError::TxnIndexCorrupt { .. })));
    }
}
