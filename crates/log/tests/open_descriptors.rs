//! The process's open descriptors stay bounded by the handle cache however many logs are
//! written. Alone in its test binary: it counts `/proc/self/fd`, which other tests running
//! beside it in the same process would disturb.

use bytes::Bytes;
use strom_log::{FileHandles, Log, LogConfig};
use strom_protocol::batch::test_support::build_batch;

const LOGS: usize = 1_000;
const CACHED_MAX: usize = 32;
/// Descriptors beyond the cache: the one `.log` pinned between an append and its sync, the
/// directory a roll's sync opens, the listing of `/proc/self/fd` itself, and a few spare.
const SLACK: usize = 8;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("procfs").count()
}

#[test]
fn open_descriptors_stay_bounded_while_a_thousand_logs_are_appended_to() {
    // Descriptors are counted here, not durability: without the 3,000 real fdatasyncs (the
    // debug builds' seam of `strom-fsio`) the test takes seconds, not a minute.
    std::env::set_var("STROM_FSYNC_DISABLED", "1");
    let dir = tempfile::tempdir().unwrap();
    let handles = FileHandles::new(CACHED_MAX);
    let config = LogConfig { segment_bytes: 200, retention_ms: None, ..LogConfig::default() };
    let before = open_descriptors();
    let mut logs: Vec<Log> = (0..LOGS)
        .map(|i| Log::open(&dir.path().join(format!("t-{i}")), config.clone(), 0, &handles))
        .collect::<Result<_, _>>()
        .expect("opens");
    let mut most = open_descriptors();
    for round in 0..3i64 {
        for log in &mut logs {
            log.append(&Bytes::from(build_batch(0, &[round, round + 1], 0)), 0, 0).unwrap();
            most = most.max(open_descriptors());
            // Acknowledged on fsync (flush.messages=1): the pin goes with the sync.
            let handle = log.sync_handle().expect("something to sync");
            handle.sync().unwrap();
            assert!(log.mark_synced(&handle));
        }
    }
    assert!(logs.iter().all(|log| log.log_end_offset() == 6 && log.segment_count() > 1));
    assert!(
        most <= before + CACHED_MAX + SLACK,
        "{most} descriptors open at most, {before} before, cache {CACHED_MAX}"
    );
    drop(logs);
    assert!(open_descriptors() <= before + 1, "closed logs keep no descriptor");
}
