//! Fuzzing of everything strom parses from the wire before a handler sees it: request frames of
//! every API and version it serves (`decode_request`), frame length prefixes (`frame_len`), and
//! v2 record batches (the `batch` view: header, CRC validation, iteration, record timestamps,
//! in-place patching). Inputs are valid frames and batches broken by a seeded mutator
//! (`fuzz_input`); every case must come back as a value or an error, never a panic, an abort or
//! a runaway allocation.
//!
//! `STROM_FUZZ_CASES` sets the cases per request type (and for batches); `make test` runs the
//! default, `make fuzz` 100,000 in release mode. A failure names its seed: `STROM_SEED=<n>`
//! replays the run.

mod fuzz_input;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use strom_alloc::{GuardedAlloc, LAZY_ALLOCATIONS, LAZY_BYTES_LARGEST};
use strom_protocol::batch::{self, test_support, BatchHeader, Batches, TimestampType};
use strom_protocol::frame::{frame_len, SOCKET_REQUEST_MAX_BYTES_DEFAULT};
use strom_protocol::kafka_protocol::messages::ApiKey;
use strom_protocol::request::{peek_correlation_id, RequestError};
use strom_protocol::versions::SUPPORTED;
use strom_protocol::{decode_request, Request};
use strom_testkit::{seed_from_env, TestRng};

/// Cases per request type (and for record batches) unless `STROM_FUZZ_CASES` says otherwise.
const CASES_DEFAULT: u64 = 5_000;
const CASES_ENV: &str = "STROM_FUZZ_CASES";
/// Peak resident memory the whole run may reach. Hostile counts reserve address space (see the
/// allocator below); only the memory a decoder touches counts, and with frames of a few hundred
/// bytes that must stay small however many cases run.
const RESIDENT_BYTES_MAX: u64 = 512 * 1024 * 1024;

fn cases() -> u64 {
    match std::env::var(CASES_ENV) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{CASES_ENV}={text:?}")),
        Err(_) => CASES_DEFAULT,
    }
}

// ---------------------------------------------------------------------------------------------
// The allocator: the node's (strom-alloc), so that the decoders meet hostile array
// counts here as they do in the broker. The codecs size an array from the count the client sends
// before reading an element; a count of 2^31 asks for hundreds of gigabytes. Allocations of
// 1 GiB or more get a lazily backed mapping (MAP_NORESERVE): nothing is committed, the decoder
// fails on the missing elements, the range is unmapped. The counters show that the fuzz reaches
// that path; the resident-memory bound shows that nothing fills such a range.
// ---------------------------------------------------------------------------------------------

#[global_allocator]
static GLOBAL: GuardedAlloc = GuardedAlloc;

/// The process's peak resident set (`VmHWM`), in bytes.
fn resident_peak_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in status");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM kB");
    kib * 1024
}

fn assert_resident_bounded(context: &str) {
    let peak = resident_peak_bytes();
    assert!(
        peak <= RESIDENT_BYTES_MAX,
        "{context}: peak resident memory {} MiB exceeds {} MiB",
        peak >> 20,
        RESIDENT_BYTES_MAX >> 20
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `case` and turns a panic into a report that says how to replay it.
fn run_case(what: impl Fn() -> String, input: &[u8], case: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(case)) {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!("{} panicked: {message}\ninput ({} bytes): {}", what(), input.len(), hex(input));
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// What the broker does with a decoded Produce before any handler logic: walks each
/// partition's records with the batch view and validates every batch.
fn exercise_produce_records(request: &Request) {
    let Request::Produce(produce) = request else { return };
    for topic in &produce.topic_data {
        for partition in &topic.partition_data {
            if let Some(records) = &partition.records {
                exercise_batches(records.clone());
            }
        }
    }
}

fn decode_frame(frame: &[u8]) -> Result<(ApiKey, i16), RequestError> {
    // What the connection loop logs about a frame it cannot decode.
    let _ = peek_correlation_id(frame);
    let decoded = decode_request(Bytes::copy_from_slice(frame))?;
    exercise_produce_records(&decoded.request);
    Ok((decoded.api_key, decoded.api_version))
}

#[test]
fn every_request_type_and_version_decodes_mutated_frames_without_panicking() {
    let seed = seed_from_env("every_request_type_and_version_decodes_mutated_frames");
    let cases = cases();
    let records = Bytes::from(test_support::batch_with_records(3, 1_700_000_000_000, 0));
    let mut versions_total = 0;
    let started = Instant::now();
    for &(key, min, max) in SUPPORTED {
        let frames: Vec<(i16, Vec<u8>)> = (min..=max)
            .map(|version| {
                let frame = fuzz_input::valid_frame(key, version, 7, &records)
                    .unwrap_or_else(|| panic!("no valid frame for {key:?} v{version}"));
                // The starting points must be valid, or the fuzz only tests the first check.
                match decode_frame(&frame) {
                    Ok(decoded) => assert_eq!(decoded, (key, version)),
                    Err(e) => panic!("the valid {key:?} v{version} frame does not decode: {e}"),
                }
                (version, frame)
            })
            .collect();
        versions_total += frames.len();
        let type_started = Instant::now();
        let mut accepted = 0u64;
        for case in 0..cases {
            let mut rng = TestRng::new(fuzz_input::case_seed(seed, key as u64, case));
            let (version, valid) = &frames[rng.below(frames.len() as u64) as usize];
            let mut frame = valid.clone();
            // Mostly keep the api key and version, so the body decoder of this API is fuzzed
            // rather than the version gate.
            let protect = if rng.chance(9, 10) { fuzz_input::KEY_AND_VERSION_BYTES } else { 0 };
            fuzz_input::mutate(&mut rng, &mut frame, protect);
            let what = || format!("{key:?} v{version} case {case} (STROM_SEED={seed})");
            run_case(what, &frame, || {
                if decode_frame(&frame).is_ok() {
                    accepted += 1;
                }
            });
        }
        let elapsed = type_started.elapsed().as_secs_f64();
        eprintln!(
            "{key:?} v{min}-v{max}: {cases} cases, {accepted} still decoded, {:.0} cases/s",
            cases as f64 / elapsed.max(1e-9)
        );
        assert_resident_bounded(&format!("{key:?} (STROM_SEED={seed})"));
    }
    eprintln!(
        "{} request types, {versions_total} versions, {} cases in {:.1} s; {} hostile counts got \
         a lazy mapping (largest {} GiB)",
        SUPPORTED.len(),
        cases * SUPPORTED.len() as u64,
        started.elapsed().as_secs_f64(),
        LAZY_ALLOCATIONS.load(Ordering::Relaxed),
        LAZY_BYTES_LARGEST.load(Ordering::Relaxed) >> 30,
    );
}

// ---------------------------------------------------------------------------------------------
// Record batches
// ---------------------------------------------------------------------------------------------

/// Everything the broker does with a produced `records` field: iterate, validate, read record
/// timestamps, patch offsets, epoch and LogAppendTime in place. Checks the patching contract:
/// a batch that validates still validates after it, with the values written.
fn exercise_batches(records: Bytes) {
    let mut batches = Batches::new(records.clone());
    for item in batches.by_ref() {
        let Ok((header, slice)) = item else { break };
        let _ = (header.compression(), header.timestamp_type(), header.last_offset());
        let _ = (header.is_transactional(), header.is_control(), header.total_len());
        exercise_batch(&slice);
    }
    assert!(batches.position() <= records.len());
    exercise_batch(&records);
}

fn exercise_batch(bytes: &[u8]) {
    let _ = batch::compute_crc(bytes);
    if let Ok(header) = BatchHeader::parse(bytes) {
        let _ = batch::validate_header(&header);
    }
    let valid = batch::validate(bytes);
    let _ = batch::record_timestamps(bytes);
    let mut copy = bytes.to_vec();
    let _ = batch::recompute_crc(&mut copy);
    let mut copy = bytes.to_vec();
    let patched = batch::set_base_offset(&mut copy, 1_000)
        .and_then(|()| batch::set_partition_leader_epoch(&mut copy, 7))
        .and_then(|()| batch::set_log_append_time(&mut copy, 1_700_000_000_123));
    if let Ok(before) = valid {
        assert!(patched.is_ok(), "a valid batch could not be patched: {patched:?}");
        let after = batch::validate(&copy).expect("a patched valid batch no longer validates");
        assert_eq!(after.base_offset, 1_000);
        assert_eq!(after.partition_leader_epoch, 7);
        assert_eq!(after.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(after.max_timestamp, 1_700_000_000_123);
        assert_eq!(after.records_count, before.records_count);
        assert_eq!(after.last_offset_delta, before.last_offset_delta);
    }
}

/// A valid starting batch, or two back to back (for the iterator).
fn valid_batches(rng: &mut TestRng) -> Vec<u8> {
    let one = |rng: &mut TestRng| {
        let records = rng.below(6) as usize;
        let timestamps: Vec<i64> =
            (0..records).map(|i| 1_700_000_000_000 + i as i64 * rng.below(1_000) as i64).collect();
        // Compression codec bits and the timestamp-type bit vary; records stay plain.
        let attributes = [0i16, 0x08, 0x01, 0x04, 0x10][rng.below(5) as usize];
        test_support::build_batch(rng.below(1 << 20) as i64, &timestamps, attributes)
    };
    let mut batches = one(rng);
    if rng.chance(1, 4) {
        batches.extend(one(rng));
    }
    batches
}

#[test]
fn record_batches_survive_mutation_and_patching() {
    let seed = seed_from_env("record_batches_survive_mutation_and_patching");
    let cases = cases();
    let started = Instant::now();
    let mut validated = 0u64;
    for case in 0..cases {
        let mut rng = TestRng::new(fuzz_input::case_seed(seed, u64::MAX, case));
        let mut bytes = valid_batches(&mut rng);
        fuzz_input::mutate(&mut rng, &mut bytes, 0);
        // Half the cases get a correct CRC back, so that the checks behind it and the record
        // reader see broken headers and records too.
        if rng.chance(1, 2) {
            let _ = batch::recompute_crc(&mut bytes);
        }
        let what = || format!("record batch case {case} (STROM_SEED={seed})");
        run_case(what, &bytes, || {
            if batch::validate(&bytes).is_ok() {
                validated += 1;
            }
            exercise_batches(Bytes::copy_from_slice(&bytes));
        });
    }
    eprintln!(
        "record batches: {cases} cases, {validated} still valid, {:.0} cases/s",
        cases as f64 / started.elapsed().as_secs_f64().max(1e-9)
    );
    assert_resident_bounded(&format!("record batches (STROM_SEED={seed})"));
}

#[test]
fn frame_length_prefixes_are_checked_without_panicking() {
    let seed = seed_from_env("frame_length_prefixes_are_checked_without_panicking");
    let max = SOCKET_REQUEST_MAX_BYTES_DEFAULT;
    let edges = [i32::MIN, -1, 0, 7, 8, max as i32, max as i32 + 1, i32::MAX];
    let mut rng = TestRng::new(seed);
    for case in 0..cases() {
        let prefix = if rng.chance(1, 2) {
            edges[rng.below(edges.len() as u64) as usize].to_be_bytes()
        } else {
            (rng.next_u64() as u32).to_be_bytes()
        };
        let len = i32::from_be_bytes(prefix);
        match frame_len(prefix, max) {
            Ok(n) => assert!(n == len as usize && (8..=max).contains(&n), "case {case}"),
            Err(_) => assert!(len < 8 || len as usize > max, "{len} refused (STROM_SEED={seed})"),
        }
    }
}
