//! Crash safety: acknowledged records survive kill -9, and a segment damaged on disk is cut
//! back to its last valid batch on start while everything before the damage is still served.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use anyhow::{bail, ensure, Context};
use strom_testkit::{seed_from_env, TestRng};
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::raw::batch_layout::HEADER_BYTES;
use strom_tests::{segment, with_node, NodeOptions, StromNode, CLIENT_TIMEOUT};

/// Acknowledged records per round before the kill: enough that segments hold real data.
const KILL_AFTER_ACKS: usize = 3_000;
/// Records still sent after the kill, so that the crash lands mid-stream.
const SENDS_AFTER_KILL: usize = 2_000;
/// Bound on the produce loop of one round.
const SENDS_PER_ROUND_MAX: usize = 500_000;
/// Crash/restart rounds: later rounds recover logs that earlier recoveries already touched.
const CRASH_ROUNDS: usize = 3;

fn value_of(id: usize, rng: &mut TestRng) -> Vec<u8> {
    let mut value = format!("record-{id}:").into_bytes();
    let len = rng.in_range(0..100);
    value.extend(rng.bytes(len));
    value
}

/// Produces keyed records until `KILL_AFTER_ACKS` more are acknowledged, kills the node -9
/// mid-stream, keeps sending a little into the void, and returns the acknowledgements.
fn produce_then_kill(
    node: &mut StromNode,
    topic: &str,
    first_id: usize,
    values: &mut Vec<Vec<u8>>,
    rng: &mut TestRng,
) -> anyhow::Result<Vec<(usize, kafka::Ack)>> {
    let producer = AckingProducer::new(
        &node.bootstrap(),
        &[("message.timeout.ms", "10000"), ("queue.buffering.max.messages", "20000")],
    )?;
    let mut killed_at: Option<usize> = None;
    for id in first_id..first_id + SENDS_PER_ROUND_MAX {
        assert_eq!(values.len(), id, "ids index `values`");
        values.push(value_of(id, rng));
        let key = format!("k{}", id % 97);
        let record =
            Outgoing { key: Some(key.as_bytes()), value: Some(&values[id]), ..Outgoing::default() };
        match (producer.send(topic, id, record), killed_at) {
            (Ok(()), _) => {}
            // After the kill the local queue may stay full until messages time out.
            (Err(_), Some(_)) => break,
            (Err(error), None) => return Err(error),
        }
        if id % 100 == 0 {
            producer.poll(std::time::Duration::ZERO);
            if killed_at.is_none() && producer.acked() >= KILL_AFTER_ACKS {
                node.kill9()?;
                killed_at = Some(id);
            }
        }
        if killed_at.is_some_and(|at| id >= at + SENDS_AFTER_KILL) {
            break;
        }
    }
    let Some(killed_at) = killed_at else {
        bail!("only {} acknowledgements after {SENDS_PER_ROUND_MAX} sends", producer.acked());
    };
    producer.purge();
    let reports = producer.reports();
    let acked: Vec<(usize, kafka::Ack)> = reports
        .iter()
        .filter_map(|(id, report)| report.as_ref().ok().map(|ack| (*id, *ack)))
        .collect();
    ensure!(acked.len() >= KILL_AFTER_ACKS, "{} acked", acked.len());
    eprintln!(
        "killed after sending ids {first_id}..={killed_at} with {} acknowledged ({} reports)",
        acked.len(),
        reports.len()
    );
    Ok(acked)
}

/// Reads everything back and checks: offsets contiguous from 0 with none served twice, every
/// acknowledged record at its offset byte for byte, every other record one this test sent,
/// whole. Returns each partition's log end offset.
fn check_after_crash(
    bootstrap: &str,
    topic: &str,
    partitions: &[i32],
    acked: &[(usize, kafka::Ack)],
    values: &[Vec<u8>],
) -> anyhow::Result<HashMap<i32, i64>> {
    let consumed = kafka::consume_all(bootstrap, topic, partitions, &[])?;
    let mut at: HashMap<(i32, i64), &kafka::Consumed> = HashMap::new();
    for record in &consumed {
        ensure!(
            at.insert((record.partition, record.offset), record).is_none(),
            "offset {} of partition {} served twice",
            record.offset,
            record.partition
        );
    }
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for &partition in partitions {
        let offsets: Vec<i64> =
            consumed.iter().filter(|r| r.partition == partition).map(|r| r.offset).collect();
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        ensure!(offsets == expected, "partition {partition}: offsets have gaps or disorder");
        ends.insert(partition, offsets.len() as i64);
    }
    for (id, ack) in acked {
        let got = at.get(&(ack.partition, ack.offset)).with_context(|| {
            format!("acknowledged record {id} at {ack:?} is missing after kill -9")
        })?;
        ensure!(
            got.value.as_deref() == Some(&values[*id][..]),
            "acknowledged record {id} at {ack:?} was replaced by {:?}",
            got.value.as_deref().map(String::from_utf8_lossy)
        );
    }
    for record in &consumed {
        let value = record.value.as_deref().context("null value served")?;
        if value.starts_with(kafka::LIVENESS_PREFIX.as_bytes()) {
            continue; // written by assert_node_serves after an earlier crash
        }
        let text = String::from_utf8_lossy(value);
        let id: usize = text
            .strip_prefix("record-")
            .and_then(|rest| rest.split(':').next())
            .and_then(|id| id.parse().ok())
            .with_context(|| format!("unknown record served: {text:?}"))?;
        ensure!(values.get(id).map(Vec::as_slice) == Some(value), "record {id} damaged");
    }
    Ok(ends)
}

#[test]
fn acked_records_survive_kill_9_and_the_node_accepts_new_writes() {
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        let topic = "crash";
        let partitions = [0, 1, 2];
        kafka::create_topic(&bootstrap, topic, 3, &[])?;
        let mut rng = TestRng::new(seed_from_env("acked_records_survive_kill_9"));
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut acked: Vec<(usize, kafka::Ack)> = Vec::new();
        for round in 0..CRASH_ROUNDS {
            let first_id = values.len();
            acked.extend(produce_then_kill(node, topic, first_id, &mut values, &mut rng)?);
            node.restart()?;
            let ends = check_after_crash(&bootstrap, topic, &partitions, &acked, &values)
                .with_context(|| format!("after crash {}", round + 1))?;
            for partition in partitions {
                let ack = kafka::assert_node_serves(&bootstrap, topic, partition)?;
                ensure!(
                    ack.offset == ends[&partition],
                    "new write to partition {partition} got offset {}, expected {}",
                    ack.offset,
                    ends[&partition]
                );
            }
        }
        Ok(())
    });
}

/// How a test damages the last segment of a stopped node.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Random bytes after the last batch.
    AppendGarbage,
    /// The file ends halfway through the last batch.
    TruncateMidBatch,
    /// The file ends inside the last batch's header.
    TruncateInsideHeader,
    /// One byte of the last batch's records flipped (its CRC no longer matches).
    FlipByteInLastBatch,
}

const DAMAGE_BATCHES: usize = 10;
const RECORDS_PER_BATCH: usize = 5;

fn recovers_from(damage: Damage) {
    with_node(NodeOptions::default(), |node| check_recovery(node, damage));
}

/// Sets `topic`'s partitions' recovery points to 0 in the node's checkpoint file.
fn rewind_recovery_point(data_dir: &std::path::Path, topic: &str) -> anyhow::Result<()> {
    let path = data_dir.join("recovery-point-offset-checkpoint");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let mut rewound = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| match line.split(' ').collect::<Vec<_>>().as_slice() {
            [t, p, _] if *t == topic => {
                rewound += 1;
                format!("{t} {p} 0")
            }
            _ => line.to_owned(),
        })
        .collect();
    ensure!(rewound > 0, "{} has no entry for {topic}:\n{text}", path.display());
    std::fs::write(&path, lines.join("\n") + "\n")?;
    Ok(())
}

fn check_recovery(node: &mut StromNode, damage: Damage) -> anyhow::Result<()> {
    let bootstrap = node.bootstrap();
    let topic = "damaged";
    kafka::create_topic(&bootstrap, topic, 1, &[])?;
    let mut rng = TestRng::new(seed_from_env("segment_damage"));
    let producer = AckingProducer::new(&bootstrap, &[])?;
    let mut values = Vec::new();
    for batch in 0..DAMAGE_BATCHES {
        for i in 0..RECORDS_PER_BATCH {
            let id = batch * RECORDS_PER_BATCH + i;
            let value = value_of(id, &mut rng);
            let record =
                Outgoing { partition: Some(0), value: Some(&value), ..Outgoing::default() };
            producer.send(topic, id, record)?;
            values.push(value);
        }
        // One flush per group: each group becomes at least one batch of its own.
        producer.flush(CLIENT_TIMEOUT)?;
    }
    let acks = producer.acks_of(0..values.len())?;
    for (id, ack) in acks.iter().enumerate() {
        ensure!(ack.offset == id as i64, "record {id} acked at {ack:?}");
    }
    drop(producer);

    let status = node.sigterm()?;
    ensure!(status.success(), "SIGTERM exit status {status}");
    let path = segment::first_segment(&node.partition_dir(topic, 0))?;
    let (bytes, batches) = segment::read_batches(&path)?;
    let last = *batches.last().context("segment holds no batch")?;
    ensure!(
        last.next_offset() == values.len() as i64 && batches.len() >= 2,
        "segment holds batches {batches:?}, expected offsets 0..{}",
        values.len()
    );
    let file = OpenOptions::new().write(true).open(&path)?;
    let survivors = match damage {
        Damage::AppendGarbage => {
            let mut garbage = rng.bytes(1000);
            // Make the garbage look like the start of a batch with an absurd length.
            garbage[..8].copy_from_slice(&(values.len() as i64).to_be_bytes());
            file.write_all_at(&garbage, bytes.len() as u64)?;
            values.len()
        }
        Damage::TruncateMidBatch => {
            file.set_len((last.position + last.size / 2) as u64)?;
            last.base_offset as usize
        }
        Damage::TruncateInsideHeader => {
            file.set_len((last.position + HEADER_BYTES / 2) as u64)?;
            last.base_offset as usize
        }
        Damage::FlipByteInLastBatch => {
            let at = last.position + HEADER_BYTES + (last.size - HEADER_BYTES) / 2;
            file.write_all_at(&[bytes[at] ^ 0xFF], at as u64)?;
            last.base_offset as usize
        }
    };
    file.sync_all()?;
    drop(file);
    // A torn tail is what a crash leaves after the last recovery checkpoint: put the
    // partition's recovery point back to 0, as a crash before any checkpoint would. (Damage
    // below the recovery point is not a torn write: the start refuses it, see storage_faults.)
    rewind_recovery_point(node.data_dir(), topic)?;

    node.restart()?;
    let consumed = kafka::consume_all(&bootstrap, topic, &[0], &[])?;
    let offsets: Vec<i64> = consumed.iter().map(|r| r.offset).collect();
    ensure!(
        offsets == (0..survivors as i64).collect::<Vec<_>>(),
        "after {damage:?} the node served offsets {offsets:?}, expected 0..{survivors}"
    );
    for record in &consumed {
        ensure!(
            record.value.as_deref() == Some(&values[record.offset as usize][..]),
            "record at offset {} differs after recovery",
            record.offset
        );
    }
    let ack = kafka::assert_node_serves(&bootstrap, topic, 0)?;
    ensure!(
        ack.offset == survivors as i64,
        "after {damage:?} a new write got offset {}, expected {survivors}",
        ack.offset
    );
    Ok(())
}

#[test]
fn garbage_after_the_last_batch_is_truncated_on_start() {
    recovers_from(Damage::AppendGarbage);
}

#[test]
fn a_batch_torn_in_its_records_is_truncated_on_start() {
    recovers_from(Damage::TruncateMidBatch);
}

#[test]
fn a_batch_torn_in_its_header_is_truncated_on_start() {
    recovers_from(Damage::TruncateInsideHeader);
}

#[test]
fn a_batch_with_a_flipped_byte_is_truncated_on_start() {
    recovers_from(Damage::FlipByteInLastBatch);
}
