//! Fuzzing a running node: mutated valid frames of every request type and version the node
//! advertises, each on its own raw connection, so that whatever the decoder lets through
//! reaches the handlers. Decoder fuzzing (`crates/protocol/tests/fuzz.rs`) cannot see a handler
//! that panics, nor a panic that poisons a lock or kills a shared task; this test fails on any
//! `panicked` in the node's log, and afterwards the node must still serve: records produced
//! before the run read back intact, and new ones produce and consume.
//!
//! `STROM_FUZZ_NODE_CASES` sets the cases per request type (`make fuzz` raises it); a failure
//! names its seed, `STROM_SEED=<n>` replays the same frames.

#[path = "../../../crates/protocol/tests/fuzz_input/mod.rs"]
mod fuzz_input;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::StrBytes;
use strom_testkit::{seed_from_env, TestRng};
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::raw::{self, RawConnection};
use strom_tests::{with_node, NodeOptions, CLIENT_TIMEOUT};

/// Cases per request type unless `STROM_FUZZ_NODE_CASES` says otherwise.
const CASES_DEFAULT: u64 = 400;
const CASES_ENV: &str = "STROM_FUZZ_NODE_CASES";
/// Connections in flight at once: a case the broker holds (a long poll, a join waiting for a
/// rebalance) must not stall the others.
const WORKERS: usize = 8;
/// How long a case of a request the broker may legitimately hold (a long poll, a join waiting
/// for a rebalance, a produce waiting for acks, an admin call waiting for the controller) waits
/// for the broker to answer and close after our end is shut. Past it the case is left.
const CASE_WAIT: Duration = Duration::from_secs(2);
/// How long any other request may be held before the test calls it a hang (a deadlock, a task
/// that died with a request queued to it). Generous: this bounds a wait, it times nothing.
const HANG_WAIT: Duration = Duration::from_secs(30);
/// Bytes read back from one case at most (answers are discarded).
const CASE_READ_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Connections refused in a row before the run stops: the node is gone.
const CONNECT_FAILURES_MAX: u64 = 20;
/// Records written before the run that must read back intact after it.
const KEPT_TOPIC: &str = "fuzz-kept";
const KEPT_RECORDS: usize = 40;

fn cases() -> u64 {
    match std::env::var(CASES_ENV) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{CASES_ENV}={text:?}")),
        Err(_) => CASES_DEFAULT,
    }
}

/// `(api key, min, max)` of every API the node advertises.
fn advertised_versions(addr: SocketAddr) -> anyhow::Result<Vec<(ApiKey, i16, i16)>> {
    let mut connection = RawConnection::connect(addr)?;
    let request = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("strom-fuzz"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    let id = connection.send_request(ApiKey::ApiVersions as i16, 3, &request, 3)?;
    let response: ApiVersionsResponse = connection.read_response(id, 3)?;
    ensure!(response.error_code == 0, "ApiVersions error {}", response.error_code);
    response
        .api_keys
        .iter()
        .map(|v| {
            let key = ApiKey::try_from(v.api_key)
                .map_err(|_| anyhow::anyhow!("unknown api key {} advertised", v.api_key))?;
            Ok((key, v.min_version, v.max_version))
        })
        .collect()
}

/// One case: a length-prefixed frame, whose prefix may lie.
struct Case {
    key: ApiKey,
    version: i16,
    index: u64,
    bytes: Vec<u8>,
}

fn build_cases(
    seed: u64,
    apis: &[(ApiKey, i16, i16)],
    records: &bytes::Bytes,
) -> anyhow::Result<Vec<Case>> {
    let mut out = Vec::new();
    for &(key, min, max) in apis {
        let valid: Vec<(i16, Vec<u8>)> = (min..=max)
            .map(|version| {
                fuzz_input::valid_frame(key, version, 1, records)
                    .map(|frame| (version, frame))
                    .with_context(|| format!("no valid frame for {key:?} v{version}"))
            })
            .collect::<anyhow::Result<_>>()?;
        for index in 0..cases() {
            let mut rng = TestRng::new(fuzz_input::case_seed(seed, key as u64, index));
            let (version, frame) = &valid[rng.below(valid.len() as u64) as usize];
            let mut payload = frame.clone();
            let protect = if rng.chance(9, 10) { fuzz_input::KEY_AND_VERSION_BYTES } else { 0 };
            fuzz_input::mutate(&mut rng, &mut payload, protect);
            let len = payload.len() as i32;
            // Now and then a prefix that lies: the broker waits for bytes that never come (until
            // our end shuts), or reads the tail of the frame as the next length.
            let prefix = match rng.below(20) {
                0 => len + 1 + rng.below(64) as i32,
                1 => len - 1 - rng.below(len.max(1) as u64) as i32,
                _ => len,
            };
            let mut bytes = prefix.to_be_bytes().to_vec();
            bytes.extend_from_slice(&payload);
            out.push(Case { key, version: *version, index, bytes });
        }
    }
    Ok(out)
}

#[derive(Default)]
struct Tally {
    /// The broker closed the connection (after answering or not).
    closed: AtomicU64,
    /// The broker answered: the frame got past the decoder to a handler.
    answered: AtomicU64,
    /// The broker still held the connection after `CASE_WAIT`.
    held: AtomicU64,
    /// Which request types those were (api key, version), for the summary.
    held_by: Mutex<BTreeMap<(i16, i16), u64>>,
    connect_failures_in_a_row: AtomicU64,
}

/// Requests a broker may hold for as long as the client asked (mutated timeouts included).
fn may_wait(api_key: i16) -> bool {
    let Ok(key) = ApiKey::try_from(api_key) else { return false };
    matches!(
        key,
        ApiKey::Produce
            | ApiKey::Fetch
            | ApiKey::JoinGroup
            | ApiKey::SyncGroup
            | ApiKey::CreateTopics
            | ApiKey::DeleteTopics
            | ApiKey::CreatePartitions
    )
}

/// Sends one case on a new connection, shuts our sending side and reads until the broker
/// closes (or `CASE_WAIT` passes).
fn run_case(addr: SocketAddr, case: &Case, tally: &Tally) -> anyhow::Result<()> {
    let mut stream = match TcpStream::connect_timeout(&addr, raw::IO_TIMEOUT) {
        Ok(stream) => {
            tally.connect_failures_in_a_row.store(0, Ordering::Relaxed);
            stream
        }
        Err(error) => {
            let failures = tally.connect_failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
            if failures >= CONNECT_FAILURES_MAX {
                bail!("{failures} connections in a row refused, last: {error}");
            }
            return Ok(());
        }
    };
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(CASE_WAIT))?;
    // The broker may close before reading it all (a frame it refuses): not an error.
    if stream.write_all(&case.bytes).is_err() || stream.shutdown(Shutdown::Write).is_err() {
        tally.closed.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    // The api key as sent (a mutation may have changed it).
    let sent_key = case.bytes.get(4..6).map_or(-1, |b| i16::from_be_bytes([b[0], b[1]]));
    let wait = if may_wait(sent_key) { CASE_WAIT } else { HANG_WAIT };
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 16 * 1024];
    let mut read = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() && wait == HANG_WAIT {
            bail!(
                "the broker held a request with api key {sent_key} for {HANG_WAIT:?} without \
                 answering or closing; frame {}",
                case.bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
        if left.is_zero() || read > CASE_READ_BYTES_MAX {
            tally.held.fetch_add(1, Ordering::Relaxed);
            let mut held_by = tally.held_by.lock().unwrap_or_else(|poison| poison.into_inner());
            *held_by.entry((case.key as i16, case.version)).or_default() += 1;
            return Ok(());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if read == 0 {
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                }
                read += n;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break, // reset: closed all the same
        }
    }
    tally.closed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Runs every case on `WORKERS` threads (they mostly wait on the broker); stops at the first
/// error.
fn run_cases(addr: SocketAddr, cases: &[Case]) -> anyhow::Result<Tally> {
    let tally = Tally::default();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(case) = cases.get(i) else { return Ok(()) };
                        run_case(addr, case, &tally).with_context(|| {
                            format!("{:?} v{} case {}", case.key, case.version, case.index)
                        })?;
                    }
                })
            })
            .collect();
        for worker in workers {
            let result = worker.join().map_err(|_| anyhow::anyhow!("fuzz worker panicked"))?;
            if let Err(error) = result {
                // Stop the other workers too.
                next.store(cases.len(), Ordering::Relaxed);
                return Err(error);
            }
        }
        Ok(())
    })?;
    Ok(tally)
}

fn produce_values(bootstrap: &str, values: &[Vec<u8>]) -> anyhow::Result<()> {
    let producer = AckingProducer::new(bootstrap, &[])?;
    for (id, value) in values.iter().enumerate() {
        let record = Outgoing { partition: Some(0), value: Some(value), ..Outgoing::default() };
        producer.send(KEPT_TOPIC, id, record)?;
    }
    producer.flush(CLIENT_TIMEOUT)?;
    let acks = producer.acks_of(0..values.len())?;
    ensure!(acks.len() == values.len(), "{} of {} records acknowledged", acks.len(), values.len());
    Ok(())
}

fn kept_values(bootstrap: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let consumed = kafka::consume_all(bootstrap, KEPT_TOPIC, &[0], &[])?;
    Ok(consumed.into_iter().map(|c| c.value.unwrap_or_default()).collect())
}

#[test]
fn mutated_frames_of_every_request_type_leave_the_node_serving() {
    let seed = seed_from_env("mutated_frames_of_every_request_type_leave_the_node_serving");
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, fuzz_input::TOPIC, 2, &[])?;
        kafka::create_topic(&bootstrap, KEPT_TOPIC, 1, &[])?;
        let before: Vec<Vec<u8>> =
            (0..KEPT_RECORDS).map(|i| format!("kept-before-{i}").into_bytes()).collect();
        produce_values(&bootstrap, &before)?;

        let apis = advertised_versions(node.kafka_addr())?;
        let records = raw::record_batch(&[b"fuzz-a", b"fuzz-b", b"fuzz-c"], 1_700_000_000_000)?;
        let cases = build_cases(seed, &apis, &records)?;
        let started = Instant::now();
        let tally = run_cases(node.kafka_addr(), &cases)
            .with_context(|| format!("fuzzing the node (STROM_SEED={seed})"))?;
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!(
            "{} request types, {} cases in {elapsed:.1} s ({:.0}/s): {} answered, {} closed, \
             {} held past {:?}",
            apis.len(),
            cases.len(),
            cases.len() as f64 / elapsed.max(1e-9),
            tally.answered.load(Ordering::Relaxed),
            tally.closed.load(Ordering::Relaxed),
            tally.held.load(Ordering::Relaxed),
            CASE_WAIT,
        );
        let held_by = tally.held_by.into_inner().unwrap_or_else(|poison| poison.into_inner());
        if !held_by.is_empty() {
            eprintln!("held (api key, version): count: {held_by:?}");
        }

        ensure!(node.is_running(), "the node died during the fuzz (STROM_SEED={seed})");
        let log = node.stderr();
        if let Some(line) = log.lines().find(|line| line.contains("panicked")) {
            bail!("the node panicked during the fuzz (STROM_SEED={seed}): {line}");
        }
        // Still serving: the raw protocol, the records from before, new records.
        RawConnection::connect(node.kafka_addr())?.max_version(ApiKey::Produce)?;
        let read = kept_values(&bootstrap)?;
        ensure!(read == before, "records produced before the fuzz changed: {read:?}");
        let after: Vec<Vec<u8>> =
            (0..KEPT_RECORDS).map(|i| format!("kept-after-{i}").into_bytes()).collect();
        produce_values(&bootstrap, &after)?;
        let read = kept_values(&bootstrap)?;
        let expected: Vec<Vec<u8>> = before.iter().chain(&after).cloned().collect();
        ensure!(read == expected, "records read back after the fuzz: {read:?}");
        Ok(())
    });
}
