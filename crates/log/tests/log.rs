//! Partition log behaviour on real files in a tempdir: append/read, recovery, indexes, retention.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use strom_log::{
    checkpoint, FileHandles, Log, LogConfig, LogError, TimestampType, FILE_HANDLES_MIN,
};
use strom_protocol::batch::{self, test_support::build_batch, BatchHeader, Batches, MAGIC_OFFSET};

const GZIP: i16 = 1;

/// A cache of a few handles shared by nothing else: every test also runs with its files
/// evicted and opened again.
fn handles() -> FileHandles {
    FileHandles::new(FILE_HANDLES_MIN)
}

fn config() -> LogConfig {
    LogConfig { retention_ms: None, ..LogConfig::default() }
}

fn small_segments(segment_bytes: u64) -> LogConfig {
    LogConfig { segment_bytes, index_interval_bytes: 64, ..config() }
}

/// A producer batch of `n` records with timestamps `first_ts, first_ts + 1, ...`.
fn batch(n: usize, first_ts: i64) -> Bytes {
    let timestamps: Vec<i64> = (0..n as i64).map(|i| first_ts + i).collect();
    Bytes::from(build_batch(0, &timestamps, 0))
}

fn headers(bytes: &Bytes) -> Vec<BatchHeader> {
    Batches::new(bytes.clone())
        .map(|item| {
            let (header, slice) = item.unwrap();
            assert_eq!(batch::validate(&slice).unwrap(), header, "stored batch must stay valid");
            header
        })
        .collect()
}

/// Reads the whole log batch by batch, returning every header.
fn read_all(log: &Log) -> Vec<BatchHeader> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log.read(offset, 1 << 20, i64::MAX).unwrap();
        let batches = headers(&bytes);
        assert!(!batches.is_empty(), "read at {offset} returned nothing");
        offset = batches.last().unwrap().last_offset() + 1;
        out.extend(batches);
    }
    out
}

fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// Appends `count` batches of `records` records each; batch i has timestamps from 1000 + 10 i.
fn fill(log: &mut Log, count: usize, records: usize) {
    for i in 0..count {
        log.append(&batch(records, 1000 + 10 * i as i64), 0, 0).unwrap();
    }
}

#[test]
fn append_and_read_round_trip_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(500), 0, &handles()).unwrap();
    for i in 0..30 {
        let info = log.append(&batch(3, 1000 + i), 2, 0).unwrap();
        assert_eq!((info.base_offset, info.last_offset), (3 * i, 3 * i + 2));
        assert_eq!(info.log_append_time, None);
        assert_eq!(info.max_timestamp, 1000 + i + 2);
    }
    assert_eq!(log.log_end_offset(), 90);
    assert!(log.segment_count() > 3, "segments: {}", log.segment_count());
    let all = read_all(&log);
    assert_eq!(all.len(), 30);
    for (i, header) in all.iter().enumerate() {
        assert_eq!(header.base_offset, 3 * i as i64);
        assert_eq!(header.partition_leader_epoch, 2);
        assert_eq!(header.records_count, 3);
    }
    // The same after reopening with everything trusted and with nothing trusted.
    drop(log);
    for recovery_point in [90, 0] {
        let log = Log::open(dir.path(), small_segments(500), recovery_point, &handles()).unwrap();
        assert_eq!(log.log_end_offset(), 90);
        assert_eq!(read_all(&log), all);
    }
}

#[test]
fn read_from_a_middle_offset_returns_the_containing_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(10_000), 0, &handles()).unwrap();
    fill(&mut log, 20, 5);
    for offset in [7, 5, 9, 53, 99] {
        let bytes = log.read(offset, 1, i64::MAX).unwrap();
        let batches = headers(&bytes);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].base_offset, offset / 5 * 5);
    }
    assert!(log.read(100, 1000, i64::MAX).unwrap().is_empty());
    assert!(matches!(
        log.read(101, 1000, i64::MAX),
        Err(LogError::OffsetOutOfRange { offset: 101, start: 0, end: 100 })
    ));
}

#[test]
fn reads_stop_before_batches_reaching_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    fill(&mut log, 4, 5);
    let last_offsets = |hw| -> Vec<i64> {
        headers(&log.read(0, 1 << 20, hw).unwrap()).iter().map(|h| h.last_offset()).collect()
    };
    assert_eq!(last_offsets(10), vec![4, 9]);
    assert_eq!(last_offsets(9), vec![4]);
    assert_eq!(last_offsets(4), Vec::<i64>::new());
    assert_eq!(last_offsets(i64::MAX), vec![4, 9, 14, 19]);
    assert!(log.read(12, 1 << 20, 12).unwrap().is_empty());
}

#[test]
fn a_read_returns_at_least_one_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    fill(&mut log, 3, 50);
    let one = batch(50, 0).len();
    for max_bytes in [0, 1, one - 1, one, 2 * one - 1] {
        let bytes = log.read(0, max_bytes, i64::MAX).unwrap();
        assert_eq!(bytes.len(), one, "max_bytes {max_bytes}");
    }
    assert_eq!(log.read(0, 2 * one, i64::MAX).unwrap().len(), 2 * one);
}

#[test]
fn invalid_appends_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log =
        Log::open(dir.path(), LogConfig { max_message_bytes: 200, ..config() }, 0, &handles())
            .unwrap();
    let good = batch(2, 0);
    let mut corrupt = batch(2, 0).to_vec();
    *corrupt.last_mut().unwrap() ^= 0xff;
    let mut two = good.to_vec();
    two.extend_from_slice(&corrupt);
    assert!(matches!(
        log.append(&Bytes::from(two), 0, 0),
        Err(LogError::CorruptBatch {
            batch_index: 1,
            source: batch::BatchError::CorruptCrc { .. }
        })
    ));
    let mut old_magic = good.to_vec();
    old_magic[MAGIC_OFFSET] = 1;
    assert!(matches!(
        log.append(&Bytes::from(old_magic), 0, 0),
        Err(LogError::UnsupportedMagic { batch_index: 0, magic: 1 })
    ));
    assert!(matches!(
        log.append(&batch(40, 0), 0, 0),
        Err(LogError::BatchTooLarge { batch_index: 0, max: 200, .. })
    ));
    assert!(matches!(log.append(&Bytes::new(), 0, 0), Err(LogError::AppendEmpty)));
    let truncated = good.slice(..good.len() - 1);
    assert!(matches!(log.append(&truncated, 0, 0), Err(LogError::CorruptBatch { .. })));
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
    assert_eq!(log.append(&good, 0, 0).unwrap().base_offset, 0);
}

#[test]
fn multi_batch_appends_get_consecutive_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    log.append(&batch(1, 0), 0, 0).unwrap();
    let mut both = batch(3, 10).to_vec();
    both.extend_from_slice(&batch(2, 20));
    let info = log.append(&Bytes::from(both), 0, 0).unwrap();
    assert_eq!((info.base_offset, info.last_offset, info.max_timestamp), (1, 5, 21));
    let bases: Vec<i64> = read_all(&log).iter().map(|h| h.base_offset).collect();
    assert_eq!(bases, vec![0, 1, 4]);
}

#[test]
fn recovery_cuts_a_torn_tail_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    fill(&mut log, 5, 4);
    drop(log);
    let segment = &files_with_extension(dir.path(), "log")[0];
    let len = fs::metadata(segment).unwrap().len();
    OpenOptions::new().write(true).open(segment).unwrap().set_len(len - 7).unwrap();

    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    assert_eq!(log.log_end_offset(), 16);
    assert_eq!(read_all(&log).len(), 4);
    assert_eq!(log.append(&batch(2, 0), 0, 0).unwrap().base_offset, 16);
    drop(log);
    let log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    assert_eq!(log.log_end_offset(), 18);
}

#[test]
fn recovery_cuts_a_last_batch_whose_crc_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    fill(&mut log, 5, 4);
    drop(log);
    let segment = &files_with_extension(dir.path(), "log")[0];
    let mut bytes = fs::read(segment).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    fs::write(segment, &bytes).unwrap();

    let log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    assert_eq!(log.log_end_offset(), 16);
    assert_eq!(fs::metadata(segment).unwrap().len(), 4 * batch(4, 0).len() as u64);
}

#[test]
fn a_corrupt_batch_in_a_later_segment_cuts_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let batch_len = batch(2, 0).len() as u64;
    // Four batches per segment.
    let cfg = small_segments(4 * batch_len);
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    fill(&mut log, 16, 2);
    let flushed = log.sync_handle().unwrap();
    flushed.sync().unwrap();
    assert!(log.mark_synced(&flushed));
    drop(log);
    let segments = files_with_extension(dir.path(), "log");
    assert_eq!(segments.len(), 4);
    // Corrupt the second batch of the third segment (offsets 18..19).
    let target = &segments[2];
    let mut bytes = fs::read(target).unwrap();
    bytes[batch_len as usize + 70] ^= 0x01;
    fs::write(target, &bytes).unwrap();

    // Recovery point inside the third segment: the first two are trusted, the rest verified.
    let mut log = Log::open(dir.path(), cfg.clone(), 17, &handles()).unwrap();
    assert_eq!(log.log_end_offset(), 18);
    assert_eq!(log.recovery_point(), 17);
    assert_eq!(files_with_extension(dir.path(), "log").len(), 3);
    assert_eq!(files_with_extension(dir.path(), "index").len(), 3);
    assert_eq!(fs::metadata(target).unwrap().len(), batch_len);
    assert_eq!(read_all(&log).len(), 9);
    assert_eq!(log.append(&batch(2, 0), 0, 0).unwrap().base_offset, 18);
}

#[test]
fn corruption_below_the_recovery_point_refuses_to_open_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let batch_len = batch(2, 0).len() as u64;
    let cfg = small_segments(4 * batch_len);
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    fill(&mut log, 16, 2);
    drop(log);
    let segments = files_with_extension(dir.path(), "log");
    assert_eq!(segments.len(), 4);
    // Offsets 18..19 are damaged, but the checkpoint says offset 22 was durable.
    let target = &segments[2];
    let mut bytes = fs::read(target).unwrap();
    bytes[batch_len as usize + 70] ^= 0x01;
    fs::write(target, &bytes).unwrap();
    let before: Vec<u64> = segments.iter().map(|p| fs::metadata(p).unwrap().len()).collect();

    let error = Log::open(dir.path(), cfg.clone(), 22, &handles()).unwrap_err();
    assert!(
        matches!(&error, LogError::CorruptBelowRecoveryPoint { path, offset: 18, recovery_point: 22, .. }
            if path == target),
        "{error}"
    );
    assert!(error.to_string().contains("00000000000000000016.log"), "names the file: {error}");
    let after: Vec<u64> = segments.iter().map(|p| fs::metadata(p).unwrap().len()).collect();
    assert_eq!(before, after, "no segment was cut or deleted");
}

#[test]
fn a_segment_missing_from_the_middle_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let batch_len = batch(2, 0).len() as u64;
    let cfg = small_segments(4 * batch_len);
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    fill(&mut log, 16, 2);
    drop(log);
    let segments = files_with_extension(dir.path(), "log");
    fs::remove_file(&segments[1]).unwrap();

    let error = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap_err();
    assert!(matches!(error, LogError::SegmentGap { from: 8, to: 16, .. }), "{error}");
    // Whatever the recovery point, the later segments are still there.
    assert_eq!(files_with_extension(dir.path(), "log").len(), 3);
}

#[test]
fn indexes_are_rebuilt_when_their_files_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { index_interval_bytes: 100, ..small_segments(3000) };
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    fill(&mut log, 60, 3);
    let expected = read_all(&log);
    let end = log.log_end_offset();
    assert!(files_with_extension(dir.path(), "index")
        .iter()
        .any(|f| { fs::metadata(f).unwrap().len() > 0 }));
    drop(log);
    for extension in ["index", "timeindex"] {
        for file in files_with_extension(dir.path(), extension) {
            fs::remove_file(file).unwrap();
        }
    }
    let log = Log::open(dir.path(), cfg.clone(), end, &handles()).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(read_all(&log), expected);
    for offset in [0, 1, 50, 91, 179] {
        let first = &headers(&log.read(offset, 1, i64::MAX).unwrap())[0];
        assert_eq!(first.base_offset, offset / 3 * 3);
    }
    assert_eq!(log.offset_for_timestamp(1000 + 10 * 33 + 1).unwrap(), Some((100, 1331)));
    assert!(!files_with_extension(dir.path(), "index").is_empty());
    // Garbage index files are refused and rebuilt too.
    drop(log);
    for file in files_with_extension(dir.path(), "index") {
        fs::write(file, [0xffu8; 13]).unwrap();
    }
    let log = Log::open(dir.path(), cfg, end, &handles()).unwrap();
    assert_eq!(read_all(&log), expected);
}

#[test]
fn offset_for_timestamp_is_exact_per_record_for_uncompressed_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(200), 0, &handles()).unwrap();
    log.append(&Bytes::from(build_batch(0, &[100, 120, 110], 0)), 0, 0).unwrap();
    log.append(&Bytes::from(build_batch(0, &[130, 140, 150], 0)), 0, 0).unwrap();
    log.append(&Bytes::from(build_batch(0, &[90, 200], 0)), 0, 0).unwrap();
    assert!(log.segment_count() > 1);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 100)));
    assert_eq!(log.offset_for_timestamp(101).unwrap(), Some((1, 120)));
    assert_eq!(log.offset_for_timestamp(111).unwrap(), Some((1, 120)));
    assert_eq!(log.offset_for_timestamp(130).unwrap(), Some((3, 130)));
    assert_eq!(log.offset_for_timestamp(145).unwrap(), Some((5, 150)));
    assert_eq!(log.offset_for_timestamp(151).unwrap(), Some((7, 200)));
    assert_eq!(log.offset_for_timestamp(201).unwrap(), None);
    assert_eq!(log.max_timestamp(), Some((7, 200)));
}

#[test]
fn offset_for_timestamp_is_batch_level_for_compressed_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    log.append(&Bytes::from(build_batch(0, &[100, 110], GZIP)), 0, 0).unwrap();
    log.append(&Bytes::from(build_batch(0, &[120, 130, 140], GZIP)), 0, 0).unwrap();
    assert_eq!(log.offset_for_timestamp(105).unwrap(), Some((0, 110)));
    assert_eq!(log.offset_for_timestamp(131).unwrap(), Some((2, 140)));
    assert_eq!(log.offset_for_timestamp(141).unwrap(), None);
}

#[test]
fn log_append_time_rewrites_timestamps_with_a_valid_crc() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { message_timestamp_type: TimestampType::LogAppendTime, ..config() };
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    log.append(&batch(3, 10), 1, 5000).unwrap();
    let info = log.append(&batch(2, 20), 1, 6000).unwrap();
    assert_eq!(info.log_append_time, Some(6000));
    assert_eq!(info.max_timestamp, 6000);
    let stored = log.read(0, 1 << 20, i64::MAX).unwrap();
    let all = headers(&stored);
    assert_eq!(all[0].timestamp_type(), TimestampType::LogAppendTime);
    assert_eq!((all[0].max_timestamp, all[1].max_timestamp), (5000, 6000));
    assert_eq!((all[1].base_offset, all[1].partition_leader_epoch), (3, 1));
    assert_eq!(log.offset_for_timestamp(5500).unwrap(), Some((3, 6000)));
    assert_eq!(log.max_timestamp(), Some((4, 6000)));
    drop(log);
    // CRCs verified again by recovery: nothing is cut.
    let log = Log::open(dir.path(), cfg, 0, &handles()).unwrap();
    assert_eq!(log.log_end_offset(), 5);
}

#[test]
fn retention_by_time_deletes_old_segments_and_moves_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let batch_len = batch(2, 0).len() as u64;
    let cfg = LogConfig { retention_ms: Some(1000), ..small_segments(2 * batch_len) };
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    // Segments of two batches: timestamps 0.., 10_000.., 20_000..
    for i in 0..6 {
        log.append(&batch(2, (i / 2) * 10_000), 0, 0).unwrap();
    }
    assert_eq!(log.segment_count(), 3);
    assert_eq!(log.apply_retention(10_500).unwrap(), 1);
    assert_eq!(log.log_start_offset(), 4);
    assert!(matches!(log.read(0, 100, i64::MAX), Err(LogError::OffsetOutOfRange { .. })));
    // The active segment survives however old it is.
    assert_eq!(log.apply_retention(1_000_000).unwrap(), 1);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_start_offset(), 8);
    assert_eq!(read_all(&log).len(), 2);
    drop(log);
    let mut log = Log::open(dir.path(), cfg, 0, &handles()).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (8, 12));
    assert_eq!(files_with_extension(dir.path(), "log").len(), 1);
    // Truncating below the log start restarts the log empty at that offset.
    log.truncate_to(5).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (5, 5));
    assert_eq!(files_with_extension(dir.path(), "log").len(), 1);
    assert_eq!(log.append(&batch(2, 0), 0, 0).unwrap().base_offset, 5);
}

/// DeleteRecords: the log start moves inside a segment at once (reads below it are out of
/// range, a read at it gets the batch holding it), retention then deletes only the segments
/// wholly below it, even without a retention limit, and a reopen keeps it from its checkpoint.
#[test]
fn an_incremented_log_start_refuses_reads_below_it_and_retention_deletes_what_it_passed() {
    let dir = tempfile::tempdir().unwrap();
    let batch_len = batch(2, 0).len() as u64;
    let cfg = small_segments(2 * batch_len);
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    for epoch in [1, 1, 2, 2, 3, 3] {
        log.append(&batch(2, 0), epoch, 0).unwrap();
    }
    // Segments at 0, 4 and 8, of two batches each.
    assert_eq!((log.segment_count(), log.log_end_offset()), (3, 12));
    assert_eq!(log.log_start_offset_to_checkpoint(), None);
    assert!(matches!(
        log.increment_log_start_offset(13),
        Err(LogError::OffsetOutOfRange { offset: 13, start: 0, end: 12 })
    ));
    assert!(log.increment_log_start_offset(5).unwrap());
    assert!(!log.increment_log_start_offset(3).unwrap(), "never moves back");
    assert_eq!(log.log_start_offset(), 5);
    assert_eq!(log.log_start_offset_to_checkpoint(), Some(5));
    assert!(matches!(log.read(4, 1 << 20, i64::MAX), Err(LogError::OffsetOutOfRange { .. })));
    let at_start = headers(&log.read(5, 1, i64::MAX).unwrap());
    assert_eq!(at_start[0].base_offset, 4, "the batch holding the log start");
    assert_eq!(files_with_extension(dir.path(), "log").len(), 3, "nothing deleted yet");

    assert_eq!(log.apply_retention(0).unwrap(), 1);
    assert_eq!((log.segment_count(), log.log_start_offset()), (2, 5));
    assert_eq!(log.leader_epoch_entries(), &[(2, 5), (3, 8)]);
    assert_eq!(log.apply_retention(0).unwrap(), 0);
    // Up to the end: the active segment stays, unreadable below its end.
    assert!(log.increment_log_start_offset(12).unwrap());
    assert_eq!(log.apply_retention(0).unwrap(), 1);
    assert_eq!((log.segment_count(), log.log_start_offset(), log.log_end_offset()), (1, 12, 12));
    assert_eq!(log.log_start_offset_to_checkpoint(), Some(12));
    assert_eq!(log.read(12, 1 << 20, i64::MAX).unwrap(), Bytes::new());
    drop(log);

    let reopen = |start| Log::open_at(dir.path(), cfg.clone(), 0, start, &handles()).unwrap();
    assert_eq!(reopen(12).log_start_offset(), 12);
    assert_eq!(reopen(0).log_start_offset(), 8, "without a checkpoint: the first segment");
    assert_eq!(reopen(100).log_start_offset(), 12, "never beyond the log end");
    let mut log = reopen(12);
    assert_eq!(log.append(&batch(2, 0), 4, 0).unwrap().base_offset, 12);
    assert_eq!(read_all(&log).len(), 1);
}

/// A follower whose leader's log now starts beyond this log's end starts over, empty, there.
#[test]
fn truncating_fully_restarts_the_log_empty_at_a_later_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    fill(&mut log, 3, 2);
    log.truncate_fully_and_start_at(20).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.recovery_point()), (20, 20, 20));
    assert!(log.leader_epoch_entries().is_empty());
    assert_eq!(files_with_extension(dir.path(), "log").len(), 1);
    let follower_batch = {
        let mut bytes = bytes::BytesMut::from(&batch(2, 0)[..]);
        bytes[..8].copy_from_slice(&20i64.to_be_bytes());
        bytes.freeze()
    };
    log.append_as_follower(&follower_batch).unwrap();
    assert_eq!(log.log_end_offset(), 22);
    drop(log);
    let log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (20, 22));
}

#[test]
fn retention_by_size_keeps_the_newest_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let batch_len = batch(2, 0).len() as u64;
    let cfg = LogConfig { retention_bytes: Some(3 * batch_len), ..small_segments(batch_len) };
    let mut log = Log::open(dir.path(), cfg, 0, &handles()).unwrap();
    fill(&mut log, 6, 2);
    assert_eq!(log.segment_count(), 6);
    assert_eq!(log.apply_retention(0).unwrap(), 3);
    assert_eq!(log.log_start_offset(), 6);
    assert_eq!(log.size_bytes(), 3 * batch_len);
    assert_eq!(log.apply_retention(0).unwrap(), 0);
}

#[test]
fn truncate_to_drops_the_containing_batch_and_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let batch_len = batch(5, 0).len() as u64;
    let mut log = Log::open(dir.path(), small_segments(2 * batch_len), 0, &handles()).unwrap();
    for epoch in [1, 1, 2, 2, 3, 3] {
        log.append(&batch(5, 0), epoch, 0).unwrap();
    }
    assert_eq!(log.leader_epoch_entries(), &[(1, 0), (2, 10), (3, 20)]);
    log.truncate_to(12).unwrap();
    assert_eq!(log.log_end_offset(), 10);
    assert_eq!(log.leader_epoch_entries(), &[(1, 0)]);
    assert_eq!(files_with_extension(dir.path(), "log").len(), 2);
    assert_eq!(read_all(&log).len(), 2);
    assert_eq!(log.append(&batch(1, 0), 4, 0).unwrap().base_offset, 10);
    assert_eq!(log.leader_epoch_entries(), &[(1, 0), (4, 10)]);
    drop(log);
    let mut log = Log::open(dir.path(), small_segments(2 * batch_len), 0, &handles()).unwrap();
    assert_eq!(log.log_end_offset(), 11);
    assert_eq!(log.leader_epoch_entries(), &[(1, 0), (4, 10)]);
    // Below the log start: the log restarts empty at that offset.
    log.apply_retention(0).unwrap();
    log.truncate_to(-0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    assert!(log.leader_epoch_entries().is_empty());
}

#[test]
fn leader_epoch_cache_is_persisted_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    log.append(&batch(3, 0), 1, 0).unwrap();
    log.append(&batch(3, 0), 1, 0).unwrap();
    log.append(&batch(3, 0), 3, 0).unwrap();
    assert!(matches!(
        log.append(&batch(1, 0), 2, 0),
        Err(LogError::LeaderEpochStale { epoch: 2, latest: 3 })
    ));
    drop(log);
    let text = fs::read_to_string(dir.path().join("leader-epoch-checkpoint")).unwrap();
    assert_eq!(text, "0\n2\n1 0\n3 6\n");
    let log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    assert_eq!(log.leader_epoch_entries(), &[(1, 0), (3, 6)]);
    assert_eq!(log.end_offset_for_epoch(3), Some((3, 9)));
    assert_eq!(log.end_offset_for_epoch(2), Some((1, 6)));
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 6)));
    assert_eq!(log.end_offset_for_epoch(0), Some((0, 0)));
    assert_eq!(log.end_offset_for_epoch(4), None);
}

#[test]
fn sync_handle_advances_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(300), 0, &handles()).unwrap();
    assert!(log.sync_handle().is_none());
    fill(&mut log, 5, 2);
    let handle = log.sync_handle().unwrap();
    assert_eq!(handle.upto(), 10);
    // Appends after the handle was taken are not covered by it.
    fill(&mut log, 1, 2);
    handle.sync().unwrap();
    assert!(log.mark_synced(&handle));
    assert_eq!(log.recovery_point(), 10);
    let handle = log.sync_handle().unwrap();
    handle.sync().unwrap();
    // A handle from before a truncation must not mark data written after it.
    log.truncate_to(4).unwrap();
    fill(&mut log, 4, 2);
    assert!(!log.mark_synced(&handle), "a stale handle proves nothing durable");
    assert_eq!(log.recovery_point(), 4);
    let handle = log.sync_handle().unwrap();
    handle.sync().unwrap();
    assert!(log.mark_synced(&handle));
    assert_eq!(log.recovery_point(), 12);
    assert!(log.sync_handle().is_none());
}

#[test]
fn checkpoint_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recovery-point-offset-checkpoint");
    assert_eq!(checkpoint::read(&path).unwrap(), vec![]);
    let entries = vec![("orders".to_owned(), 0, 42), ("my-topic".to_owned(), 11, 0)];
    checkpoint::write(&path, &entries).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "0\n2\norders 0 42\nmy-topic 11 0\n");
    assert_eq!(checkpoint::read(&path).unwrap(), entries);
    checkpoint::write(&path, &[]).unwrap();
    assert_eq!(checkpoint::read(&path).unwrap(), vec![]);
    fs::write(&path, "0\n2\norders 0 42\n").unwrap();
    assert!(matches!(checkpoint::read(&path), Err(LogError::CheckpointParse { line: 2, .. })));
    fs::write(&path, "1\n0\n").unwrap();
    assert!(matches!(checkpoint::read(&path), Err(LogError::CheckpointParse { line: 1, .. })));
}

#[test]
fn delete_removes_the_partition_dir() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join(strom_log::partition_dir_name("orders", 0));
    let mut log = Log::open(&dir, config(), 0, &handles()).unwrap();
    fill(&mut log, 2, 2);
    log.delete().unwrap();
    assert!(!dir.exists());
}

#[test]
fn a_follower_copies_the_leaders_batches_byte_for_byte() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = Log::open(leader_dir.path(), config(), 0, &handles()).unwrap();
    for epoch in [1, 1, 3] {
        leader.append(&batch(4, 100), epoch, 0).unwrap();
    }
    let mut follower = Log::open(follower_dir.path(), config(), 0, &handles()).unwrap();
    let all = leader.read(0, usize::MAX, i64::MAX).unwrap();
    let info = follower.append_as_follower(&all).unwrap().unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 11));
    // Batches overlapping what the follower has are refused (gaps are allowed: they are
    // offsets the leader's compaction removed).
    let middle = leader.read(4, usize::MAX, i64::MAX).unwrap();
    assert!(matches!(
        follower.append_as_follower(&middle),
        Err(LogError::FollowerOffsetMismatch { expected: 12, found: 4, .. })
    ));
    assert_eq!(follower.read(0, usize::MAX, i64::MAX).unwrap(), all);
    assert_eq!(follower.leader_epoch_entries(), leader.leader_epoch_entries());
    assert_eq!(follower.append_as_follower(&Bytes::new()).unwrap(), None);
    // After a restart the follower still has them, epochs included.
    drop(follower);
    let follower = Log::open(follower_dir.path(), config(), 0, &handles()).unwrap();
    assert_eq!(follower.log_end_offset(), 12);
    assert_eq!(follower.end_offset_for_epoch(1), Some((1, 8)));
}

#[test]
fn segment_ms_rolls_when_batches_are_that_much_newer_than_the_segments_first() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_ms: 1000, ..config() };
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    log.append(&batch(2, 10_000), 0, 0).unwrap();
    // Up to segment.ms newer than the first batch: the same segment.
    log.append(&batch(2, 10_999), 0, 0).unwrap();
    assert_eq!(log.segment_count(), 1);
    // First batch's max timestamp 10_001; this one's 11_002: a new segment starts with it.
    assert_eq!(log.append(&batch(2, 11_001), 0, 0).unwrap().base_offset, 4);
    assert_eq!(log.segment_count(), 2);
    // Counted from the new segment's first batch; after a reopen, from its newest then.
    log.append(&batch(1, 11_500), 0, 0).unwrap();
    assert_eq!(log.segment_count(), 2);
    drop(log);
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    log.append(&batch(1, 12_500), 0, 0).unwrap();
    assert_eq!(log.segment_count(), 2);
    log.append(&batch(1, 12_501), 0, 0).unwrap();
    assert_eq!(log.segment_count(), 3);
    // With LogAppendTime the broker's clock decides.
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { message_timestamp_type: TimestampType::LogAppendTime, ..cfg };
    let mut log = Log::open(dir.path(), cfg, 0, &handles()).unwrap();
    log.append(&batch(1, 0), 0, 5_000).unwrap();
    log.append(&batch(1, 0), 0, 6_000).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append(&batch(1, 0), 0, 6_001).unwrap();
    assert_eq!(log.segment_count(), 2);
    // The default (7 days) does not roll batches a day apart.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    log.append(&batch(1, 0), 0, 0).unwrap();
    log.append(&batch(1, 24 * 3600 * 1000), 0, 0).unwrap();
    assert_eq!(log.segment_count(), 1);
}

#[test]
fn a_follower_rolls_by_segment_ms_as_its_leader_does() {
    let leader_dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_ms: 1000, ..config() };
    let mut leader = Log::open(leader_dir.path(), cfg.clone(), 0, &handles()).unwrap();
    for ts in [0, 500, 1500, 1600] {
        leader.append(&batch(1, ts), 0, 0).unwrap();
    }
    assert_eq!(leader.segment_count(), 2);
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = Log::open(follower_dir.path(), cfg, 0, &handles()).unwrap();
    for offset in 0..4 {
        follower.append_as_follower(&leader.read(offset, 1, i64::MAX).unwrap()).unwrap();
    }
    assert_eq!(follower.segment_count(), 2);
}

#[test]
fn segment_index_bytes_rolls_when_an_index_is_full() {
    let dir = tempfile::tempdir().unwrap();
    // An index entry for every batch; 24 bytes hold 3 offset entries and 2 time entries.
    let cfg = LogConfig { index_interval_bytes: 0, segment_index_bytes: 24, ..config() };
    let mut log = Log::open(dir.path(), cfg, 0, &handles()).unwrap();
    for i in 0..6 {
        log.append(&batch(1, i * 10), 0, 0).unwrap();
    }
    assert_eq!(log.segment_count(), 3);
    assert_eq!(read_all(&log).len(), 6);
    let dir = tempfile::tempdir().unwrap();
    let mut log =
        Log::open(dir.path(), LogConfig { index_interval_bytes: 0, ..config() }, 0, &handles())
            .unwrap();
    for i in 0..6 {
        log.append(&batch(1, i * 10), 0, 0).unwrap();
    }
    assert_eq!(log.segment_count(), 1, "the default 10 MiB holds them all");
}

/// A batch of `n` records from idempotent producer `pid` at `epoch`, sequences from `seq`.
fn idempotent(pid: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
    let mut bytes = batch::test_support::batch_with_records(n, 1_000, 0);
    batch::test_support::set_producer(&mut bytes, pid, epoch, seq);
    Bytes::from(bytes)
}

fn is_producer_error(result: Result<strom_log::AppendInfo, LogError>, expected: &str) -> bool {
    matches!(&result, Err(LogError::Producer(e)) if format!("{e:?}").starts_with(expected))
}

#[test]
fn a_retried_idempotent_batch_is_answered_with_its_offsets_and_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    let first = log.append(&idempotent(7, 0, 0, 3), 0, 0).unwrap();
    log.append(&batch(2, 1_000), 0, 0).unwrap();
    let second = log.append(&idempotent(7, 0, 3, 2), 0, 0).unwrap();
    assert_eq!((first.base_offset, second.base_offset), (0, 5));
    let retry = log.append(&idempotent(7, 0, 0, 3), 0, 0).unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.base_offset, retry.last_offset), (0, 2));
    assert_eq!(log.log_end_offset(), 7, "the retry wrote nothing");
    assert!(is_producer_error(log.append(&idempotent(7, 0, 9, 1), 0, 0), "OutOfOrderSequence"));
    log.append(&idempotent(7, 1, 0, 1), 0, 0).unwrap();
    assert!(is_producer_error(log.append(&idempotent(7, 0, 5, 1), 0, 0), "InvalidProducerEpoch"));
    assert_eq!(log.log_end_offset(), 8);
    // Clients may not write control batches nor idempotent batches without a sequence.
    let mut control = batch::test_support::batch_with_records(1, 1_000, 0x20);
    batch::test_support::set_producer(&mut control, 7, 1, 1);
    let control = log.append(&Bytes::from(control), 0, 0);
    assert!(matches!(control, Err(LogError::ClientControlBatch { .. })), "{control:?}");
    let no_sequence = log.append(&idempotent(8, 0, -1, 1), 0, 0);
    assert!(matches!(no_sequence, Err(LogError::SequenceMissing { .. })), "{no_sequence:?}");
}

#[test]
fn producer_state_survives_reopen_from_snapshots_and_follows_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(400), 0, &handles()).unwrap();
    // Several rolls, so snapshots exist, then a tail in the active segment.
    for seq in 0..20 {
        log.append(&idempotent(3, 0, seq * 2, 2), 0, 0).unwrap();
    }
    assert!(log.segment_count() > 3, "segments: {}", log.segment_count());
    assert!(!files_with_extension(dir.path(), "snapshot").is_empty());
    assert!(files_with_extension(dir.path(), "snapshot").len() <= 3, "old snapshots pruned");
    let before = log.producer_states().clone();
    assert_eq!(before.producer(3), Some((0, Some(39))));
    let end = log.log_end_offset();
    drop(log);

    let mut log = Log::open(dir.path(), small_segments(400), end, &handles()).unwrap();
    assert_eq!(log.producer_states(), &before, "rebuilt from a snapshot and the tail");
    let retry = log.append(&idempotent(3, 0, 38, 2), 0, 0).unwrap();
    assert!(retry.duplicate, "a retry of the last batch before the restart");

    // Truncating below the newest snapshot: the state is that of the remaining batches, so
    // the producer's next sequence is the one after the cut.
    log.truncate_to(10).unwrap();
    assert_eq!(log.producer_states().producer(3), Some((0, Some(9))));
    assert!(log.append(&idempotent(3, 0, 10, 2), 0, 0).is_ok_and(|i| !i.duplicate));
    for snapshot in files_with_extension(dir.path(), "snapshot") {
        let name = snapshot.file_stem().unwrap().to_str().unwrap().parse::<i64>().unwrap();
        assert!(name <= 10, "snapshot {name} describes cut batches");
    }

    // Without any snapshot (damaged, or a log from before snapshots) the state comes from the
    // last two segments.
    let end = log.log_end_offset();
    drop(log);
    for snapshot in files_with_extension(dir.path(), "snapshot") {
        fs::write(snapshot, b"garbage").unwrap();
    }
    let log = Log::open(dir.path(), small_segments(400), end, &handles()).unwrap();
    assert_eq!(log.producer_states().producer(3), Some((0, Some(11))));
}

#[test]
fn a_follower_copy_carries_the_producer_state_to_a_new_leader() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = Log::open(leader_dir.path(), config(), 0, &handles()).unwrap();
    let mut follower = Log::open(follower_dir.path(), config(), 0, &handles()).unwrap();
    for seq in [0, 2, 4] {
        leader.append(&idempotent(11, 4, seq, 2), 1, 0).unwrap();
    }
    let copied = leader.read(0, 1 << 20, i64::MAX).unwrap();
    follower.append_as_follower(&copied).unwrap();
    assert_eq!(follower.producer_states(), leader.producer_states());
    // The follower, now leading, answers the client's retry without writing it again.
    let retry = follower.append(&idempotent(11, 4, 4, 2), 2, 0).unwrap();
    assert!(retry.duplicate && retry.base_offset == 4);
    assert_eq!(follower.log_end_offset(), 6);
}

#[test]
fn silent_producers_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(), 0, &handles()).unwrap();
    log.append(&idempotent(1, 0, 0, 1), 0, 0).unwrap();
    assert_eq!(log.expire_producers(1_000 + 10, 10), 0);
    assert_eq!(log.expire_producers(1_000 + 11, 10), 1);
    assert!(log.producer_states().is_empty());
}

/// A transactional batch of `n` records from `pid` (epoch 0), sequences from `seq`.
fn transactional(pid: i64, seq: i32, n: usize) -> Bytes {
    let mut bytes = batch::test_support::batch_with_records(n, 1_000, 0x10);
    batch::test_support::set_producer(&mut bytes, pid, 0, seq);
    Bytes::from(bytes)
}

fn marker(commit: bool) -> strom_protocol::control::Marker {
    strom_protocol::control::Marker { commit, coordinator_epoch: 1 }
}

#[test]
fn transactions_hold_the_stable_offset_and_aborts_are_indexed_across_reopen_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_segments(600), 0, &handles()).unwrap();
    // Producer 1 commits [0, 3), producer 2 aborts [3, 5) around it, producer 1 stays open.
    log.append(&transactional(1, 0, 3), 0, 0).unwrap();
    log.append(&transactional(2, 0, 2), 0, 0).unwrap();
    assert_eq!(log.first_unstable_offset(), Some(0));
    let commit = log.append_marker(1, 0, marker(true), 0, 0).unwrap();
    assert_eq!(commit.base_offset, 5);
    assert_eq!(log.first_unstable_offset(), Some(3));
    let abort = log.append_marker(2, 0, marker(false), 0, 0).unwrap();
    assert_eq!(abort.base_offset, 6);
    assert_eq!(log.first_unstable_offset(), None);
    let aborted = log.aborted_transactions(0, 100);
    assert_eq!(aborted.len(), 1);
    assert_eq!(
        (aborted[0].producer_id, aborted[0].first_offset, aborted[0].last_offset),
        (2, 3, 6)
    );
    assert!(log.aborted_transactions(7, 100).is_empty(), "the marker is before the read");
    assert!(log.aborted_transactions(0, 3).is_empty(), "the read ends before the txn");
    // An old coordinator or producer epoch cannot end a transaction.
    let stale = strom_protocol::control::Marker { commit: true, coordinator_epoch: 0 };
    assert!(matches!(log.append_marker(2, 0, stale, 0, 0), Err(LogError::Producer(_))));
    // Many more aborted transactions, across segment rolls, then an open one.
    for i in 0..12 {
        log.append(&transactional(3, i * 2, 2), 0, 0).unwrap();
        log.append_marker(3, 0, marker(i % 2 == 0), 0, 0).unwrap();
    }
    let open_at = log.append(&transactional(4, 0, 1), 0, 0).unwrap().base_offset;
    assert!(log.segment_count() > 2, "segments: {}", log.segment_count());
    assert!(!files_with_extension(dir.path(), "txnindex").is_empty());
    let all_aborted = log.aborted_transactions(0, i64::MAX);
    assert_eq!(all_aborted.len(), 7);
    let end = log.log_end_offset();
    drop(log);

    let mut log = Log::open(dir.path(), small_segments(600), end, &handles()).unwrap();
    assert_eq!(log.aborted_transactions(0, i64::MAX), all_aborted, "same index after reopen");
    assert_eq!(log.first_unstable_offset(), Some(open_at));
    // A truncation that removes the last abort marker: its transaction is open again.
    let last = *all_aborted.last().unwrap();
    log.truncate_to(last.last_offset).unwrap();
    assert_eq!(log.aborted_transactions(0, i64::MAX), all_aborted[..6].to_vec());
    assert_eq!(log.first_unstable_offset(), Some(last.first_offset));
    let end = log.log_end_offset();
    drop(log);
    let log = Log::open(dir.path(), small_segments(600), end, &handles()).unwrap();
    assert_eq!(log.aborted_transactions(0, i64::MAX), all_aborted[..6].to_vec());
    assert_eq!(log.first_unstable_offset(), Some(last.first_offset));
}

#[test]
fn a_follower_copy_carries_markers_and_the_aborted_index() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = Log::open(leader_dir.path(), config(), 0, &handles()).unwrap();
    let mut follower = Log::open(follower_dir.path(), config(), 0, &handles()).unwrap();
    leader.append(&transactional(5, 0, 2), 0, 0).unwrap();
    leader.append_marker(5, 0, marker(false), 0, 0).unwrap();
    leader.append(&transactional(5, 2, 1), 0, 0).unwrap();
    follower.append_as_follower(&leader.read(0, 1 << 20, i64::MAX).unwrap()).unwrap();
    assert_eq!(follower.aborted_transactions(0, 10), leader.aborted_transactions(0, 10));
    assert_eq!(follower.first_unstable_offset(), Some(3));
    assert_eq!(follower.producer_states(), leader.producer_states());
}
