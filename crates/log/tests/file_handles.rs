//! Many logs sharing a cache of a few file handles (`strom_log::FileHandles`): every operation
//! stays correct while the files it uses are evicted and opened again behind it.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use strom_log::{FileHandles, Log, LogConfig};
use strom_protocol::batch::{test_support::build_batch, BatchHeader, Batches};

const LOGS: usize = 200;
const CACHED_MAX: usize = 8;
const ROUNDS: usize = 6;

/// Segments of about two batches: every log rolls again and again.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 200,
        index_interval_bytes: 64,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// A batch of two records whose timestamps name the log and the round.
fn batch(log: usize, round: usize) -> Bytes {
    let ts = (log * 1000 + round * 10) as i64;
    Bytes::from(build_batch(0, &[ts, ts + 1], 0))
}

fn headers_of(bytes: &Bytes) -> Vec<BatchHeader> {
    Batches::new(bytes.clone()).map(|item| item.expect("stored batches stay valid").0).collect()
}

/// `(base offset, first timestamp)` of every batch, read one batch at a time.
fn read_all(log: &Log) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log.read(offset, 1, i64::MAX).expect("reads");
        let headers = headers_of(&bytes);
        assert!(!headers.is_empty(), "a read at {offset} returned nothing");
        out.extend(headers.iter().map(|h| (h.base_offset, h.base_timestamp)));
        offset = headers.last().expect("one batch").last_offset() + 1;
    }
    out
}

/// Syncs what the log wrote, as the broker's group commit does.
fn sync(log: &mut Log) {
    if let Some(handle) = log.sync_handle() {
        handle.sync().expect("syncs");
        assert!(log.mark_synced(&handle), "no truncation in between");
    }
    assert!(log.sync_handle().is_none(), "everything written is synced");
}

fn open(dir: &Path, i: usize, recovery_point: i64, handles: &FileHandles) -> Log {
    Log::open(&dir.join(format!("t-{i}")), config(), recovery_point, handles).expect("opens")
}

#[test]
fn two_hundred_logs_stay_correct_through_eight_cached_handles() {
    let dir = tempfile::tempdir().unwrap();
    let handles = FileHandles::new(CACHED_MAX);
    let mut logs: Vec<Log> = (0..LOGS).map(|i| open(dir.path(), i, 0, &handles)).collect();
    // What each log must hold: (base offset, first timestamp) of its batches.
    let mut expected: Vec<Vec<(i64, i64)>> = vec![Vec::new(); LOGS];
    for round in 0..ROUNDS {
        for (i, log) in logs.iter_mut().enumerate() {
            let info = log.append(&batch(i, round), 0, 0).expect("appends");
            expected[i].push((info.base_offset, (i * 1000 + round * 10) as i64));
            assert!(handles.stats().cached <= handles.capacity());
        }
        // Reads of every log, interleaved with other logs' appends above.
        for (i, log) in logs.iter().enumerate().step_by(7) {
            assert_eq!(read_all(log), expected[i], "log {i} after round {round}");
        }
        // Half the rounds sync everything (the pins go), half leave it for the reopen below.
        if round % 2 == 0 {
            for log in &mut logs {
                sync(log);
            }
            assert_eq!(handles.stats().pinned, 0);
            assert!(!handles.under_pressure());
        } else {
            assert_eq!(handles.stats().pinned, LOGS, "each log keeps its written .log open");
            assert!(handles.under_pressure(), "so many unsynced files should be synced now");
        }
    }
    for (i, log) in logs.iter().enumerate() {
        assert!(log.segment_count() >= ROUNDS / 2, "log {i} rolled");
    }
    // Truncation (a follower cutting its divergent suffix) of every third log.
    for (i, log) in logs.iter_mut().enumerate().step_by(3) {
        let cut_at = expected[i][2].0;
        log.truncate_to(cut_at).expect("truncates");
        expected[i].truncate(2);
        log.append(&batch(i, 99), 0, 0).expect("appends after the cut");
        expected[i].push((cut_at, (i * 1000 + 990) as i64));
    }
    for log in &mut logs {
        sync(log);
    }
    let recovery_points: Vec<i64> = logs.iter().map(|log| log.recovery_point()).collect();
    let stats = handles.stats();
    assert!(stats.cached <= handles.capacity() && stats.pinned == 0, "{stats:?}");
    assert!(stats.evictions > 1000, "the logs took turns in the cache: {stats:?}");
    drop(logs);
    assert_eq!(handles.stats().cached, 0, "closed logs keep no handle");

    // Recovery with the same small cache: everything synced comes back, every log appends.
    let mut logs: Vec<Log> =
        (0..LOGS).map(|i| open(dir.path(), i, recovery_points[i], &handles)).collect();
    assert_eq!(handles.stats().pinned, 0, "an opened log pins nothing");
    for (i, log) in logs.iter_mut().enumerate() {
        assert_eq!(read_all(log), expected[i], "log {i} after reopening");
        let info = log.append(&batch(i, 100), 0, 0).expect("appends");
        assert_eq!(info.base_offset, expected[i].last().unwrap().0 + 2);
        sync(log);
    }
    assert!(handles.stats().cached <= handles.capacity());
}

#[test]
fn a_read_started_before_its_handle_is_evicted_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let handles = FileHandles::new(CACHED_MAX);
    let mut log = open(dir.path(), 0, 0, &handles);
    log.append(&batch(0, 0), 0, 0).unwrap();
    sync(&mut log);
    let start = log.read_start(0, i64::MAX).unwrap().expect("data");
    // Other logs push every handle of the first out of the cache.
    let mut others: HashMap<usize, Log> = HashMap::new();
    for i in 1..=CACHED_MAX {
        let mut other = open(dir.path(), i, 0, &handles);
        other.append(&batch(i, 0), 0, 0).unwrap();
        others.insert(i, other);
    }
    let located = start.locate().unwrap().expect("the batch");
    let bytes = Bytes::from(located.read(located.first_len()).unwrap());
    assert_eq!(headers_of(&bytes)[0].base_timestamp, 0);
}
