//! Producer-state snapshot files of a partition directory: `<offset>.snapshot` (offset as in
//! segment names) holds the idempotent-producer state of every batch below that offset.
//!
//! A snapshot is a cache, never the only copy of anything: it is written at a segment roll
//! without an fsync, checked (CRC, version) when read, and ignored when damaged or when it
//! claims an offset past the log's end (a power cut took the data it describes). The log
//! deletes the snapshots above a truncation point before it truncates, so a snapshot never
//! describes batches that were replaced.

use std::fs;
use std::path::{Path, PathBuf};

use crate::producer::ProducerStates;
use crate::segment;

const EXTENSION: &str = "snapshot";
/// Snapshots kept per partition: the newest covers an open, the older ones a truncation
/// below the newest roll.
pub(crate) const SNAPSHOTS_KEPT: usize = 3;

fn path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(segment::file_name(offset, EXTENSION))
}

/// The offset a snapshot file is named after; `None` for any other file.
fn offset_of(file_name: &str) -> Option<i64> {
    let stem = file_name.strip_suffix(".snapshot")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The snapshot offsets in `dir`, oldest first. An unreadable directory lists none (the state
/// is then rebuilt from the log).
pub(crate) fn list(dir: &Path) -> Vec<i64> {
    let mut offsets: Vec<i64> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| offset_of(entry.ok()?.file_name().to_str()?))
        .collect();
    offsets.sort_unstable();
    offsets
}

fn remove(dir: &Path, offset: i64) {
    let path = path(dir, offset);
    if let Err(error) = fs::remove_file(&path) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), %error, "cannot delete producer snapshot");
        }
    }
}

/// Writes the state of every batch below `offset`, then keeps only the newest
/// [`SNAPSHOTS_KEPT`]. A failure is logged and costs only a longer replay later.
pub(crate) fn write(dir: &Path, offset: i64, states: &ProducerStates) {
    let path = path(dir, offset);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written =
        fs::write(&tmp, states.encode_snapshot()).and_then(|()| strom_fsio::rename(&tmp, &path));
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "cannot write producer snapshot");
        let _ = fs::remove_file(&tmp);
        return;
    }
    let offsets = list(dir);
    for &old in offsets.iter().take(offsets.len().saturating_sub(SNAPSHOTS_KEPT)) {
        remove(dir, old);
    }
}

/// Deletes every snapshot above `offset`: they describe batches a truncation removes.
pub(crate) fn delete_above(dir: &Path, offset: i64) {
    for stale in list(dir).into_iter().filter(|o| *o > offset) {
        remove(dir, stale);
    }
}

/// The newest readable snapshot at or below `upto`, as `(offset, state)`. Damaged snapshots
/// and those above `upto` (describing data a crash took) are deleted on the way.
pub(crate) fn load_latest(dir: &Path, upto: i64) -> Option<(i64, ProducerStates)> {
    for offset in list(dir).into_iter().rev() {
        if offset > upto {
            remove(dir, offset);
            continue;
        }
        let states =
            fs::read(path(dir, offset)).ok().and_then(|b| ProducerStates::decode_snapshot(&b));
        match states {
            Some(states) => return Some((offset, states)),
            None => {
                tracing::warn!(dir = %dir.display(), offset, "ignoring a damaged producer snapshot");
                remove(dir, offset);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_other_files_are_not_snapshots() {
        assert_eq!(offset_of(&segment::file_name(42, EXTENSION)), Some(42));
        assert_eq!(offset_of("00000000000000000042.log"), None);
        assert_eq!(offset_of("42.snapshot"), None);
        assert_eq!(offset_of("00000000000000000042.snapshot.tmp"), None);
    }

    #[test]
    fn the_newest_valid_snapshot_at_or_below_the_end_wins_and_the_rest_is_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let states = ProducerStates::default();
        for offset in [10, 20, 30, 40] {
            write(dir.path(), offset, &states);
        }
        assert_eq!(list(dir.path()), vec![20, 30, 40], "only the newest three are kept");
        fs::write(path(dir.path(), 30), b"torn").unwrap();
        // 40 is past the end (a crash took its data), 30 is damaged: 20 it is.
        assert_eq!(load_latest(dir.path(), 35).map(|(o, _)| o), Some(20));
        assert_eq!(list(dir.path()), vec![20]);
        delete_above(dir.path(), 19);
        assert_eq!(load_latest(dir.path(), 100), None);
    }
}
