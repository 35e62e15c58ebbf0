//! Out of file descriptors (EMFILE) is not a failed disk: the operation that cannot open its
//! file fails with a retriable error, the log stays online and works again once descriptors
//! are free. Alone in its test binary: it lowers the process's open-file limit.

use bytes::Bytes;
use rustix::process::{getrlimit, setrlimit, Resource};
use strom_log::{FileHandles, Log, LogConfig, LogError};
use strom_protocol::batch::test_support::build_batch;

const CACHED_MAX: usize = 8;

fn batch(ts: i64) -> Bytes {
    Bytes::from(build_batch(0, &[ts], 0))
}

fn synced(log: &mut Log) {
    let handle = log.sync_handle().expect("written");
    handle.sync().unwrap();
    assert!(log.mark_synced(&handle));
}

#[test]
fn out_of_descriptors_fails_the_request_and_keeps_the_log_online() {
    let dir = tempfile::tempdir().unwrap();
    let handles = FileHandles::new(CACHED_MAX);
    let config = LogConfig { retention_ms: None, ..LogConfig::default() };
    let open =
        |i: usize| Log::open(&dir.path().join(format!("t-{i}")), config.clone(), 0, &handles);
    let mut log = open(0).unwrap();
    log.append(&batch(1), 0, 0).unwrap();
    synced(&mut log);
    // Other logs fill the cache with `.log` handles that reads hold open: evicting them frees
    // no descriptor.
    let mut others = Vec::new();
    for i in 1..=CACHED_MAX {
        let mut other = open(i).unwrap();
        other.append(&batch(1), 0, 0).unwrap();
        synced(&mut other);
        others.push(other);
    }
    let reads: Vec<_> =
        others.iter().map(|o| o.read_start(0, i64::MAX).unwrap().expect("data")).collect();

    // Every descriptor below the lowered limit is taken.
    let limit = getrlimit(Resource::Nofile);
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(highest + 4), ..limit })
        .unwrap();
    let mut filler = Vec::new();
    while let Ok(file) = std::fs::File::open(dir.path()) {
        filler.push(file);
    }

    let error = log.append(&batch(2), 0, 0).unwrap_err();
    assert!(matches!(error, LogError::FileHandlesExhausted { .. }), "{error}");
    assert!(!error.is_storage_failure(), "out of descriptors is not a failed disk");
    assert!(handles.stats().exhausted >= 1);

    drop(filler);
    let info = log.append(&batch(2), 0, 0).expect("appends once descriptors are free");
    assert_eq!(info.base_offset, 1, "the refused append wrote nothing");
    synced(&mut log);
    let bytes = log.read(0, 1 << 20, i64::MAX).unwrap();
    assert_eq!(strom_protocol::batch::Batches::new(bytes).count(), 2);
    drop(reads);
    setrlimit(Resource::Nofile, limit).unwrap();
}
