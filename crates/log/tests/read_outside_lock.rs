//! Reads taken under the log's lock (`Log::read_start`, memory only) and performed after it is
//! released (`ReadStart::locate`, `Located::read`), on real files in a tempdir.

use bytes::Bytes;
use strom_log::{FileHandles, Log, LogConfig, FILE_HANDLES_MIN};
use strom_protocol::batch::{test_support::build_batch, Batches};

/// A cache of a few handles shared by nothing else: every test also runs with its files
/// evicted and opened again.
fn handles() -> FileHandles {
    FileHandles::new(FILE_HANDLES_MIN)
}

/// A producer batch of `n` records with timestamps from `first_ts`.
fn batch(n: usize, first_ts: i64) -> Bytes {
    let timestamps: Vec<i64> = (0..n as i64).map(|i| first_ts + i).collect();
    Bytes::from(build_batch(0, &timestamps, 0))
}

fn last_offsets(bytes: Vec<u8>) -> Vec<i64> {
    Batches::new(Bytes::from(bytes)).map(|item| item.unwrap().0.last_offset()).collect()
}

fn open(dir: &std::path::Path, config: LogConfig) -> Log {
    Log::open(dir, config, 0, &handles()).unwrap()
}

#[test]
fn a_read_serves_what_the_log_held_when_it_started_not_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig { retention_ms: None, ..LogConfig::default() });
    for i in 0..3 {
        log.append(&batch(5, 1000 + i), 0, 0).unwrap();
    }
    let size = log.size_bytes();
    let start = log.read_start(0, i64::MAX).unwrap().expect("there is data to read");
    log.append(&batch(5, 2000), 0, 0).unwrap();
    let located = start.locate().unwrap().expect("the first batch");
    assert_eq!(located.available(), size, "the segment as it was when the read started");
    let data = located.read(usize::MAX).unwrap(); // at most what is available
    assert_eq!(last_offsets(data), [4, 9, 14]);
    assert!(log.read_start(15, i64::MAX).unwrap().is_some(), "a new read sees the append");
    assert!(log.read_start(20, i64::MAX).unwrap().is_none(), "nothing at the log end");
}

#[test]
fn a_read_keeps_whole_batches_below_its_bound_in_a_buffer_of_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig { retention_ms: None, ..LogConfig::default() });
    for i in 0..3 {
        log.append(&batch(5, 1000 + i), 0, 0).unwrap();
    }
    // A high watermark of 7: the second batch (offsets 5..=9) is not served.
    let located = log.read_start(0, 7).unwrap().unwrap().locate().unwrap().unwrap();
    let first = located.first_len();
    assert!(first > 0);
    let data = located.read(located.available() as usize).unwrap();
    assert_eq!(data.len(), first);
    assert_eq!(data.capacity(), data.len(), "what was read beyond the batch is given back");
    assert_eq!(last_offsets(data), [4]);
    let at_bound = log.read_start(5, 7).unwrap().unwrap().locate().unwrap().unwrap();
    assert_eq!(at_bound.first_len(), 0, "a batch reaching the bound is not served");
}

#[test]
fn a_read_outlives_the_deletion_of_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    // One batch per segment; every closed segment is past retention.
    let config = LogConfig { segment_bytes: 100, retention_ms: Some(1), ..LogConfig::default() };
    let mut log = open(dir.path(), config);
    for i in 0..3 {
        log.append(&batch(5, 1000 + i), 0, 0).unwrap();
    }
    assert_eq!(log.segment_count(), 3);
    let start = log.read_start(0, i64::MAX).unwrap().unwrap();
    assert_eq!(log.apply_retention(1_000_000).unwrap(), 2, "both closed segments deleted");
    assert_eq!(log.log_start_offset(), 10);
    let located = start.locate().unwrap().expect("the deleted segment's open file");
    let data = located.read(located.available() as usize).unwrap();
    assert_eq!(last_offsets(data), [4]);
}
