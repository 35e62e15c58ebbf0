//! Key-based compaction on real files: what survives, offsets, tombstones, reads into removed
//! ranges, indexes after reopening, crash leftovers, followers of a compacted log, and a pass
//! that races with appends and truncation.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use strom_log::{CleanupPolicy, FileHandles, Log, LogConfig, LogError, FILE_HANDLES_MIN};
use strom_protocol::batch::{
    self, BatchHeader, Batches, BATCH_HEADER_LEN, CRC_COVERED_FROM, CRC_OFFSET, LOG_OVERHEAD,
};

const GZIP: i16 = 1;
const RETENTION_MS: i64 = 10_000;

/// One record as the tests write and read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    /// Base offset of the batch holding the record: compaction must not change it.
    batch_base: i64,
    offset: i64,
    key: Option<String>,
    value: Option<String>,
    timestamp: i64,
}

/// A cache of a few handles shared by nothing else: every test also runs with its files
/// evicted and opened again.
fn handles() -> FileHandles {
    FileHandles::new(FILE_HANDLES_MIN)
}

fn compacted(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 64,
        retention_ms: None,
        cleanup_policy: CleanupPolicy { delete: false, compact: true },
        delete_retention_ms: RETENTION_MS,
        min_cleanable_dirty_ratio: 0.0,
        ..LogConfig::default()
    }
}

use strom_protocol::batch::test_support::put_varint;

/// A producer batch (base offset 0) of `(key, value, timestamp)` records.
fn keyed_batch(records: &[(Option<&str>, Option<&str>, i64)], attributes: i16) -> Bytes {
    let base_timestamp = records[0].2;
    let mut body_all = Vec::new();
    for (i, (key, value, timestamp)) in records.iter().enumerate() {
        let mut body = vec![0u8];
        put_varint(&mut body, timestamp - base_timestamp);
        put_varint(&mut body, i as i64);
        for field in [key, value] {
            match field {
                Some(text) => {
                    put_varint(&mut body, text.len() as i64);
                    body.extend_from_slice(text.as_bytes());
                }
                None => put_varint(&mut body, -1),
            }
        }
        put_varint(&mut body, 0);
        put_varint(&mut body_all, body.len() as i64);
        body_all.extend_from_slice(&body);
    }
    let count = records.len() as i32;
    let max_timestamp = records.iter().map(|r| r.2).max().unwrap();
    let mut out = Vec::new();
    out.extend_from_slice(&0i64.to_be_bytes());
    out.extend_from_slice(
        &((BATCH_HEADER_LEN - LOG_OVERHEAD + body_all.len()) as i32).to_be_bytes(),
    );
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.push(2);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&attributes.to_be_bytes());
    out.extend_from_slice(&(count - 1).to_be_bytes());
    out.extend_from_slice(&base_timestamp.to_be_bytes());
    out.extend_from_slice(&max_timestamp.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes());
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&body_all);
    let crc = crc32c(&out[CRC_COVERED_FROM..]);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(out)
}

fn crc32c(bytes: &[u8]) -> u32 {
    batch::crc_append(0, bytes)
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> i64 {
        let mut raw = 0u64;
        for i in 0.. {
            let byte = self.buf[self.at];
            self.at += 1;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                break;
            }
        }
        ((raw >> 1) as i64) ^ -((raw & 1) as i64)
    }

    fn text(&mut self) -> Option<String> {
        let len = self.varint();
        if len < 0 {
            return None;
        }
        let text = String::from_utf8(self.buf[self.at..self.at + len as usize].to_vec()).unwrap();
        self.at += len as usize;
        Some(text)
    }
}

/// Every batch of `bytes`, CRC-checked, with its records (none for compressed ones).
fn decode(bytes: &Bytes) -> Vec<(BatchHeader, Vec<Rec>)> {
    Batches::new(bytes.clone())
        .map(|item| {
            let (header, slice) = item.unwrap();
            assert_eq!(batch::validate(&slice).unwrap(), header, "stored batch must stay valid");
            let mut reader = Reader { buf: &slice, at: BATCH_HEADER_LEN };
            let mut records = Vec::new();
            for _ in 0..header.records_count {
                let length = reader.varint() as usize;
                let end = reader.at + length;
                reader.at += 1;
                let timestamp = header.base_timestamp + reader.varint();
                let offset = header.base_offset + reader.varint();
                let key = reader.text();
                let value = reader.text();
                reader.at = end;
                records.push(Rec { batch_base: header.base_offset, offset, key, value, timestamp });
            }
            assert_eq!(reader.at, slice.len(), "records fill the batch");
            if let Some(last) = records.last() {
                assert_eq!(
                    last.offset,
                    header.last_offset(),
                    "last offset delta is the last record's"
                );
                let max = records.iter().map(|r| r.timestamp).max().unwrap();
                assert_eq!(header.max_timestamp, max, "max timestamp is the records' max");
            }
            (header, records)
        })
        .collect()
}

/// Reads the whole log, returning every batch header and every record.
fn read_all(log: &Log) -> (Vec<BatchHeader>, Vec<Rec>) {
    let (mut headers, mut records) = (Vec::new(), Vec::new());
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log.read(offset, 1 << 20, i64::MAX).unwrap();
        let batches = decode(&bytes);
        assert!(!batches.is_empty(), "read at {offset} returned nothing");
        offset = batches.last().unwrap().0.last_offset() + 1;
        for (header, batch_records) in batches {
            headers.push(header);
            records.extend(batch_records);
        }
    }
    (headers, records)
}

/// A deterministic sequence (xorshift), so failures replay.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Makes everything appended so far durable: compaction works on the durable part only.
fn sync(log: &mut Log) {
    if let Some(handle) = log.sync_handle() {
        handle.sync().unwrap();
        assert!(log.mark_synced(&handle));
    }
}

/// Appends `batches` batches of 1 to 3 records over `keys` keys (every 7th record a tombstone,
/// every 11th without a key), timestamps `1000 + offset`, and syncs. Returns what was written.
fn fill(log: &mut Log, rng: &mut Rng, batches: usize, keys: u64) -> Vec<Rec> {
    let written = fill_unsynced(log, rng, batches, keys);
    sync(log);
    written
}

fn fill_unsynced(log: &mut Log, rng: &mut Rng, batches: usize, keys: u64) -> Vec<Rec> {
    let mut written = Vec::new();
    for _ in 0..batches {
        let base = log.log_end_offset();
        let n = 1 + rng.below(3) as usize;
        let mut records = Vec::new();
        for i in 0..n {
            let offset = base + i as i64;
            let key = (offset % 11 != 5).then(|| format!("k{}", rng.below(keys)));
            let value = (offset % 7 != 3).then(|| format!("v{offset}"));
            records.push(Rec { batch_base: base, offset, key, value, timestamp: 1000 + offset });
        }
        let spec: Vec<(Option<&str>, Option<&str>, i64)> =
            records.iter().map(|r| (r.key.as_deref(), r.value.as_deref(), r.timestamp)).collect();
        // Trusted: a producer's keyless records are refused on a compacted log, but a log
        // may hold some (written before its policy became compact), and compaction keeps them.
        let info = log.append_trusted(&keyed_batch(&spec, 0), 0, 0).unwrap();
        assert_eq!(info.base_offset, base);
        written.extend(records);
    }
    written
}

fn log_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn segment_bases(dir: &Path) -> Vec<i64> {
    log_files(dir)
        .iter()
        .filter_map(|name| name.strip_suffix(".log"))
        .map(|stem| stem.parse().unwrap())
        .collect()
}

fn active_base(dir: &Path) -> i64 {
    *segment_bases(dir).last().unwrap()
}

/// What compaction must leave of `written`: everything at or after `active_base`; before it,
/// records without a key, and each key's latest record unless that is a tombstone older than
/// the retention at `now_ms`.
fn expected(written: &[Rec], active_base: i64, now_ms: i64) -> Vec<Rec> {
    let mut latest: HashMap<&str, i64> = HashMap::new();
    for record in written {
        if let Some(key) = &record.key {
            latest.insert(key, record.offset);
        }
    }
    written
        .iter()
        .filter(|r| {
            let Some(key) = &r.key else { return true };
            if r.offset >= active_base {
                return true;
            }
            let expired = r.value.is_none() && now_ms - r.timestamp > RETENTION_MS;
            latest[key.as_str()] == r.offset && !expired
        })
        .cloned()
        .collect()
}

#[test]
fn compaction_keeps_the_latest_record_of_every_key_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compacted(600), 0, &handles()).unwrap();
    let written = fill(&mut log, &mut Rng(7), 300, 20);
    let (end, segments) = (log.log_end_offset(), log.segment_count());
    assert!(segments > 20, "segments: {segments}");
    let active = active_base(dir.path());

    let now_ms = 1000;
    let stats = log.compact(now_ms).unwrap();
    assert!(stats.records_superseded > 0, "{stats:?}");
    assert!(stats.bytes_after < stats.bytes_before, "{stats:?}");
    assert_eq!(log.log_end_offset(), end, "the log end offset never moves");
    assert_eq!(log.log_start_offset(), 0);
    assert_eq!(active_base(dir.path()), active, "the active segment is untouched");
    let (headers, records) = read_all(&log);
    assert_eq!(records, expected(&written, active, now_ms));
    // Records kept their batch's base offset (`Rec::batch_base`), and some batches lost records
    // at their start or middle.
    assert!(headers
        .iter()
        .any(|h| i64::from(h.records_count) < i64::from(h.last_offset_delta) + 1));
    assert!(log_files(dir.path())
        .iter()
        .all(|name| !name.contains("cleaned") && !name.contains("swap")));

    // Another pass with nothing new does nothing.
    assert!(log.prepare_compaction(now_ms, i64::MAX).is_none());
    assert_eq!(log.compact(now_ms).unwrap(), Default::default());

    // New data makes the closed part dirty again; the next pass compacts it too, and records
    // in closed segments superseded by the active segment go.
    let more = fill(&mut log, &mut Rng(99), 100, 20);
    let written: Vec<Rec> = written.into_iter().chain(more).collect();
    let active = active_base(dir.path());
    let segments = log.segment_count();
    let stats = log.compact(now_ms).unwrap();
    assert!(stats.segments_written < stats.segments_replaced, "{stats:?}");
    assert!(log.segment_count() < segments, "small cleaned segments are merged");
    assert_eq!(read_all(&log).1, expected(&written, active, now_ms));
}

#[test]
fn tombstones_stay_until_delete_retention_ms_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compacted(400), 0, &handles()).unwrap();
    let mut written = Vec::new();
    for (i, key) in ["a", "b", "c", "a", "b"].iter().enumerate() {
        let value = format!("v{i}");
        log.append(&keyed_batch(&[(Some(key), Some(&value), 1000 + i as i64)], 0), 0, 0).unwrap();
        written.push((key.to_string(), Some(value)));
    }
    // Tombstones for a and c, then filler to close their segment.
    log.append(&keyed_batch(&[(Some("a"), None, 1005), (Some("c"), None, 1006)], 0), 0, 0).unwrap();
    let tombstone_offsets = [5, 6];
    let mut rng = Rng(3);
    let mut filler = Vec::new();
    while active_base(dir.path()) <= 6 {
        filler.extend(fill(&mut log, &mut rng, 1, 1000).into_iter().map(|r| r.offset));
    }

    // Young tombstones stay, the values they delete go.
    log.compact(1005 + RETENTION_MS).unwrap();
    let (_, records) = read_all(&log);
    let by_offset: HashMap<i64, &Rec> = records.iter().map(|r| (r.offset, r)).collect();
    for offset in tombstone_offsets {
        assert_eq!(by_offset[&offset].value, None, "tombstone at {offset} kept");
    }
    for gone in [0, 2, 3] {
        assert!(!by_offset.contains_key(&gone), "record {gone} of a deleted key removed");
    }
    assert_eq!(by_offset[&4].value.as_deref(), Some("v4"));
    assert!(!by_offset.contains_key(&1), "older b superseded");

    // Once older than delete.retention.ms, the next pass (after new data) removes them.
    while active_base(dir.path()) <= *filler.last().unwrap() {
        fill(&mut log, &mut rng, 1, 1000);
    }
    log.compact(1007 + RETENTION_MS).unwrap();
    let (_, records) = read_all(&log);
    assert!(records.iter().all(|r| !tombstone_offsets.contains(&r.offset)), "{records:?}");
    assert!(records.iter().any(|r| r.offset == 4));
}

#[test]
fn a_compacted_log_refuses_a_producers_keyless_records_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compacted(300), 0, &handles()).unwrap();
    let mixed = keyed_batch(&[(Some("a"), Some("1"), 1000), (None, Some("2"), 1001)], 0);
    match log.append(&mixed, 0, 0) {
        Err(LogError::RecordsWithoutKey { records }) => assert_eq!(records, vec![1]),
        other => panic!("expected RecordsWithoutKey, got {other:?}"),
    }
    assert_eq!(log.log_end_offset(), 0);
    log.append(&keyed_batch(&[(Some("b"), None, 1002)], 0), 0, 0).unwrap();
    assert_eq!(log.log_end_offset(), 1, "a keyed tombstone is taken");
}

#[test]
fn records_without_keys_and_compressed_batches_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compacted(300), 0, &handles()).unwrap();
    // Offset 0: a compressed-flagged batch (its records are readable here, but the log treats
    // them as opaque) holding key "a"; then a newer "a", a keyless record and a tombstone.
    // Trusted: these batches could not come from a producer (the "gzip" one is flagged, not
    // compressed; the keyless one a compacted log refuses), but a log may hold such batches.
    log.append_trusted(&keyed_batch(&[(Some("a"), Some("old"), 1000)], GZIP), 0, 0).unwrap();
    log.append(&keyed_batch(&[(Some("a"), Some("new"), 1001)], 0), 0, 0).unwrap();
    log.append_trusted(&keyed_batch(&[(None, Some("keyless"), 1002)], 0), 0, 0).unwrap();
    log.append(&keyed_batch(&[(Some("b"), Some("x"), 1003)], 0), 0, 0).unwrap();
    log.append(&keyed_batch(&[(Some("b"), None, 1004)], 0), 0, 0).unwrap();
    while active_base(dir.path()) <= 4 {
        fill(&mut log, &mut Rng(5), 1, 1000);
    }
    // Far past the tombstone's retention: still kept, an older "b" could hide in a batch
    // whose keys compaction cannot read.
    log.compact(1_000_000).unwrap();
    let (headers, records) = read_all(&log);
    assert_eq!(headers[0].base_offset, 0);
    assert_eq!(headers[0].compression(), Ok(batch::Compression::Gzip));
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).take_while(|o| *o <= 4).collect();
    assert_eq!(offsets, vec![0, 1, 2, 4]);
}

#[test]
fn a_read_inside_a_removed_range_returns_the_next_surviving_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compacted(600), 0, &handles()).unwrap();
    let written = fill(&mut log, &mut Rng(11), 200, 8);
    let active = active_base(dir.path());
    log.compact(1000).unwrap();
    let (headers, records) = read_all(&log);
    let survivors: Vec<i64> = records.iter().map(|r| r.offset).collect();
    let removed: Vec<i64> =
        written.iter().map(|r| r.offset).filter(|o| !survivors.contains(o)).collect();
    assert!(removed.len() > 50, "removed {}", removed.len());
    assert!(removed.iter().all(|o| *o < active));
    for offset in 0..log.log_end_offset() {
        let bytes = log.read(offset, 1, i64::MAX).unwrap();
        let first = &decode(&bytes)[0].0;
        let want = headers.iter().find(|h| h.last_offset() >= offset).unwrap();
        assert_eq!(first, want, "read at {offset}");
    }
}

#[test]
fn a_compacted_log_reopens_with_valid_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = compacted(2000);
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    fill(&mut log, &mut Rng(13), 400, 30);
    log.compact(1000).unwrap();
    let end = log.log_end_offset();
    let (headers, records) = read_all(&log);
    drop(log);
    // Trusted (index files loaded) and untrusted (rebuilt from the .log) opens agree.
    for recovery_point in [end, 0] {
        let log = Log::open(dir.path(), cfg.clone(), recovery_point, &handles()).unwrap();
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log), (headers.clone(), records.clone()));
        for offset in 0..end {
            let first = decode(&log.read(offset, 1, i64::MAX).unwrap())[0].0;
            assert_eq!(Some(&first), headers.iter().find(|h| h.last_offset() >= offset));
        }
        for timestamp in (900..1000 + end + 5).step_by(7) {
            let want =
                records.iter().find(|r| r.timestamp >= timestamp).map(|r| (r.offset, r.timestamp));
            assert_eq!(log.offset_for_timestamp(timestamp).unwrap(), want, "timestamp {timestamp}");
        }
    }
}

#[test]
fn uncommitted_cleaned_files_are_deleted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = compacted(600);
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    fill(&mut log, &mut Rng(17), 100, 10);
    let before = read_all(&log);
    // A pass that cleaned a group and died before committing it.
    let mut compaction = log.prepare_compaction(1000, i64::MAX).unwrap();
    let group = compaction.clean_next_group().unwrap().unwrap();
    let cleaned: Vec<String> =
        log_files(dir.path()).into_iter().filter(|name| name.ends_with(".cleaned")).collect();
    assert_eq!(cleaned.len(), 3, "{cleaned:?}");
    std::mem::forget(group); // as if the process died: no cleanup
    drop(log);
    let log = Log::open(dir.path(), cfg, 0, &handles()).unwrap();
    assert!(log_files(dir.path()).iter().all(|name| !name.ends_with(".cleaned")));
    assert_eq!(read_all(&log), before);
}

fn copy_dir(from: &Path, to: &Path) {
    for name in log_files(from) {
        fs::copy(from.join(&name), to.join(&name)).unwrap();
    }
}

fn segment_file(dir: &Path, base: i64, extension: &str) -> PathBuf {
    dir.join(format!("{base:020}.{extension}"))
}

#[test]
fn a_committed_swap_is_completed_on_open() {
    let original = tempfile::tempdir().unwrap();
    let cfg = compacted(600);
    let mut log = Log::open(original.path(), cfg.clone(), 0, &handles()).unwrap();
    let mut rng = Rng(19);
    let mut written = fill(&mut log, &mut rng, 150, 10);
    // A first pass leaves small segments, which the next pass merges into groups.
    log.compact(1000).unwrap();
    written.extend(fill(&mut log, &mut rng, 100, 10));
    let end = log.log_end_offset();
    let active = active_base(original.path());
    let (_, original_records) = read_all(&log);
    drop(log);
    let bases_before = segment_bases(original.path());

    // The outcome a finished compaction gives.
    let done = tempfile::tempdir().unwrap();
    copy_dir(original.path(), done.path());
    let mut log = Log::open(done.path(), cfg.clone(), end, &handles()).unwrap();
    log.compact(1000).unwrap();
    let (_, compacted_records) = read_all(&log);
    drop(log);
    let first_group_end = segment_bases(done.path())[1];
    assert!(
        bases_before.iter().filter(|b| **b < first_group_end).count() > 1,
        "the first group merged segments"
    );

    // Crash states after the first group's swap was committed: old segments all there, or
    // some deleted and the first one's indexes gone.
    for partial in [false, true] {
        let crashed = tempfile::tempdir().unwrap();
        copy_dir(original.path(), crashed.path());
        fs::copy(
            segment_file(done.path(), 0, "log"),
            crashed.path().join(format!("{:020}.log.swap", 0)),
        )
        .unwrap();
        if partial {
            let mut replaced = bases_before.iter().filter(|b| **b > 0 && **b < first_group_end);
            fs::remove_file(segment_file(crashed.path(), *replaced.next_back().unwrap(), "log"))
                .unwrap();
            fs::remove_file(segment_file(crashed.path(), 0, "index")).unwrap();
        }
        let log = Log::open(crashed.path(), cfg.clone(), end, &handles()).unwrap();
        assert!(log_files(crashed.path()).iter().all(|name| !name.ends_with(".swap")));
        let bases = segment_bases(crashed.path());
        assert!(bases.iter().all(|b| *b == 0 || *b >= first_group_end), "{bases:?}");
        assert!(segment_file(crashed.path(), 0, "index").exists());
        assert_eq!(log.log_end_offset(), end);
        // The first group is compacted, the rest still holds the original records.
        let (_, records) = read_all(&log);
        let head: Vec<&Rec> = records.iter().filter(|r| r.offset < first_group_end).collect();
        let want: Vec<&Rec> =
            compacted_records.iter().filter(|r| r.offset < first_group_end).collect();
        assert_eq!(head, want);
        let tail: Vec<&Rec> = records.iter().filter(|r| r.offset >= first_group_end).collect();
        let original_tail: Vec<&Rec> =
            original_records.iter().filter(|r| r.offset >= first_group_end).collect();
        assert_eq!(tail, original_tail);
        // Indexes of the recovered segment answer lookups.
        for offset in 0..first_group_end {
            let first = decode(&log.read(offset, 1, i64::MAX).unwrap())[0].1[0].offset;
            assert_eq!(Some(first), records.iter().map(|r| r.offset).find(|o| *o >= offset));
        }
        // Compacting again finishes the job.
        drop(log);
        let mut log = Log::open(crashed.path(), cfg.clone(), end, &handles()).unwrap();
        log.compact(1000).unwrap();
        assert_eq!(read_all(&log).1, expected(&written, active, 1000));
    }
}

#[test]
fn a_follower_copies_a_compacted_log() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = Log::open(leader_dir.path(), compacted(600), 0, &handles()).unwrap();
    fill(&mut leader, &mut Rng(23), 200, 10);
    leader.compact(1000).unwrap();
    let mut follower = Log::open(follower_dir.path(), compacted(600), 0, &handles()).unwrap();
    while follower.log_end_offset() < leader.log_end_offset() {
        let bytes = leader.read(follower.log_end_offset(), 700, i64::MAX).unwrap();
        follower.append_as_follower(&bytes).unwrap().unwrap();
    }
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(read_all(&follower), read_all(&leader));
    drop(follower);
    let follower = Log::open(follower_dir.path(), compacted(600), 0, &handles()).unwrap();
    assert_eq!(read_all(&follower), read_all(&leader));
}

#[test]
fn appends_during_a_pass_are_kept_and_a_truncation_cancels_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compacted(600), 0, &handles()).unwrap();
    let mut rng = Rng(29);
    let mut written = fill(&mut log, &mut rng, 150, 10);

    // Appends between the snapshot and the install (they roll new segments too).
    let mut compaction = log.prepare_compaction(1000, i64::MAX).unwrap();
    let first = compaction.clean_next_group().unwrap().unwrap();
    let snapshot_end = log.log_end_offset();
    written.extend(fill(&mut log, &mut rng, 60, 10));
    assert!(log.install_cleaned(first).unwrap().is_some());
    while let Some(group) = compaction.clean_next_group().unwrap() {
        assert!(log.install_cleaned(group).unwrap().is_some());
    }
    let end = log.log_end_offset();
    assert_eq!(end, written.last().unwrap().offset + 1);
    let (_, records) = read_all(&log);
    // Nothing appended during the pass is lost, and every key's latest value is there.
    assert!(written.iter().filter(|r| r.offset >= snapshot_end).all(|r| records.contains(r)));
    let mut latest: HashMap<&str, &Rec> = HashMap::new();
    for record in &written {
        if let Some(key) = &record.key {
            latest.insert(key, record);
        }
    }
    assert!(latest.values().all(|r| records.contains(r)));

    // A truncation between snapshot and install: the cleaned group is discarded.
    let more = fill(&mut log, &mut rng, 80, 10);
    let mut compaction = log.prepare_compaction(1000, i64::MAX).unwrap();
    let group = compaction.clean_next_group().unwrap().unwrap();
    let cut = more[10].offset;
    log.truncate_to(cut).unwrap();
    let before = read_all(&log);
    assert!(log.install_cleaned(group).unwrap().is_none());
    assert_eq!(read_all(&log), before);
    assert!(log_files(dir.path()).iter().all(|name| !name.contains(".cleaned")));
}

#[test]
fn a_small_key_map_compacts_over_several_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compacted(600), 0, &handles()).unwrap();
    let written = fill(&mut log, &mut Rng(31), 300, 40);
    let active = active_base(dir.path());
    let mut passes = 0;
    while let Some(compaction) = log.prepare_compaction(1000, i64::MAX) {
        let mut compaction = compaction.with_key_map_entries_max(35);
        while let Some(group) = compaction.clean_next_group().unwrap() {
            assert!(log.install_cleaned(group).unwrap().is_some());
        }
        passes += 1;
        assert!(passes < 100, "passes do not converge");
        // Whatever a partial pass did, no key lost its latest record.
        let (_, records) = read_all(&log);
        assert!(expected(&written, active, 1000).iter().all(|r| records.contains(r)));
    }
    assert!(passes > 1, "passes: {passes}");
    // After a restart (everything dirty) one full pass gives the exact result.
    drop(log);
    let mut log = Log::open(dir.path(), compacted(600), 0, &handles()).unwrap();
    sync(&mut log);
    log.compact(1000).unwrap();
    assert_eq!(read_all(&log).1, expected(&written, active, 1000));
}

#[test]
fn min_compaction_lag_protects_recent_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { min_compaction_lag_ms: 100, ..compacted(600) };
    let mut log = Log::open(dir.path(), cfg, 0, &handles()).unwrap();
    let written = fill(&mut log, &mut Rng(37), 200, 5);
    let before = read_all(&log);
    // Timestamps are 1000 + offset: at 1100 nothing is 100 ms old yet.
    assert!(log.prepare_compaction(1000 + 99, i64::MAX).is_none());
    log.compact(1000 + 100 + 120).unwrap();
    let (_, records) = read_all(&log);
    assert_ne!(records, before.1, "old segments were compacted");
    // Records younger than 100 ms at that time were all kept.
    assert!(written.iter().filter(|r| r.offset > 120).all(|r| records.contains(r)));
}

#[test]
fn a_policy_without_delete_ignores_retention() {
    for (policy, deletes) in [
        (CleanupPolicy { delete: false, compact: true }, false),
        (CleanupPolicy { delete: true, compact: true }, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig { retention_ms: Some(10), cleanup_policy: policy, ..compacted(300) };
        let mut log = Log::open(dir.path(), cfg, 0, &handles()).unwrap();
        fill(&mut log, &mut Rng(41), 50, 5);
        let deleted = log.apply_retention(1_000_000).unwrap();
        assert_eq!(deleted > 0, deletes, "{policy:?}");
    }
}

#[test]
fn records_not_yet_durable_or_committed_supersede_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compacted(600), 0, &handles()).unwrap();
    let mut rng = Rng(43);
    let old = fill(&mut log, &mut rng, 150, 10);
    let mid = log.log_end_offset();
    // Newer values of every key, not fsynced: a crash could lose them.
    let new = fill_unsynced(&mut log, &mut rng, 150, 10);
    let unchanged_above_mid = |log: &Log| {
        let (_, records) = read_all(log);
        let mut want = expected(&old, mid, 1000);
        want.extend(new.iter().cloned());
        assert_eq!(records, want);
    };
    log.compact(1000).unwrap();
    unchanged_above_mid(&log);
    // Durable now, but above the high watermark: the same.
    sync(&mut log);
    assert!(log.prepare_compaction(1000, mid).is_none(), "nothing new below the bound");
    drop(log);
    let mut log = Log::open(dir.path(), compacted(600), 0, &handles()).unwrap();
    sync(&mut log);
    let mut compaction = log.prepare_compaction(1000, mid).unwrap();
    while let Some(group) = compaction.clean_next_group().unwrap() {
        assert!(log.install_cleaned(group).unwrap().is_some());
    }
    unchanged_above_mid(&log);
    // Committed: now they supersede the old values.
    let active = active_base(dir.path());
    log.compact(1000).unwrap();
    let all: Vec<Rec> = old.iter().chain(&new).cloned().collect();
    assert_eq!(read_all(&log).1, expected(&all, active, 1000));
}

#[test]
fn max_compaction_lag_compacts_below_the_dirty_ratio_and_rolls_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = compacted(600);
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    fill(&mut log, &mut Rng(47), 200, 5);
    log.compact(1_000_000).unwrap();
    // New dirty segments behind a clean part: the dirty ratio stays below 1.0.
    fill(&mut log, &mut Rng(53), 100, 5);
    let ratio_only = LogConfig { min_cleanable_dirty_ratio: 1.0, ..cfg.clone() };
    log.set_config(ratio_only.clone()).unwrap();
    assert!(log.prepare_compaction(1_000_000, i64::MAX).is_none());
    log.set_config(LogConfig { max_compaction_lag_ms: 50, ..ratio_only }).unwrap();
    // Timestamps are 1000 + offset: at 1000 nothing has waited 50 ms.
    assert!(log.prepare_compaction(1000, i64::MAX).is_none());
    assert!(log.prepare_compaction(1_000_000, i64::MAX).is_some());
    let before = read_all(&log).1.len();
    log.compact(1_000_000).unwrap();
    assert!(read_all(&log).1.len() < before, "compacted although below the dirty ratio");

    // The active segment of a compacted log rolls at the lag, before segment.ms.
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { max_compaction_lag_ms: 100, ..compacted(1 << 20) };
    let mut log = Log::open(dir.path(), cfg.clone(), 0, &handles()).unwrap();
    for ts in [0, 100, 101] {
        log.append(&keyed_batch(&[(Some("k"), Some("v"), ts)], 0), 0, 0).unwrap();
    }
    assert_eq!(log.segment_count(), 2);
    // Not on a log that is not compacted.
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { cleanup_policy: CleanupPolicy::DELETE, ..cfg };
    let mut log = Log::open(dir.path(), cfg, 0, &handles()).unwrap();
    for ts in [0, 100, 101] {
        log.append(&keyed_batch(&[(Some("k"), Some("v"), ts)], 0), 0, 0).unwrap();
    }
    assert_eq!(log.segment_count(), 1);
}
