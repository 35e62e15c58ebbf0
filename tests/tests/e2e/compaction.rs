//! Log compaction (`cleanup.policy=compact`) through a real node: after the broker's maintenance
//! loop compacts, a consumer from offset 0 reads exactly the latest record of every key in the
//! closed segments, everything in the active segment, all at their original offsets.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::{wait_until, with_node, NodeOptions, CLIENT_TIMEOUT};

const RECORDS: usize = 600;
const KEYS: usize = 25;
/// How long the broker may take to notice and compact (it checks every 200 ms here).
const COMPACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// `(key, value)` of record `i`: keys cycle irregularly, every 7th record is a tombstone.
fn record(i: usize) -> (String, Option<String>) {
    let key = format!("key-{}", (i * 7 + i / 3) % KEYS);
    let value = (i % 7 != 3).then(|| format!("value-{i}-{}", "x".repeat(i % 13)));
    (key, value)
}

/// Base offset of the active (last) segment of a partition directory.
fn active_base(partition_dir: &Path) -> anyhow::Result<i64> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(partition_dir)? {
        let name = entry?.file_name().into_string().unwrap_or_default();
        if let Some(stem) = name.strip_suffix(".log") {
            bases.push(stem.parse::<i64>().with_context(|| format!("segment name {name}"))?);
        }
    }
    bases.into_iter().max().context("no segment")
}

/// What a fully compacted log holds: every record from the active segment on; before it, the
/// latest record of each key, unless tombstones expire at once and that record is one.
fn expected(
    produced: &[(i64, String, Option<String>)],
    active: i64,
    tombstones_expire: bool,
) -> Vec<(i64, String, Option<String>)> {
    let mut latest: HashMap<&str, i64> = HashMap::new();
    for (offset, key, _) in produced {
        latest.insert(key, *offset);
    }
    produced
        .iter()
        .filter(|(offset, key, value)| {
            *offset >= active
                || (latest[key.as_str()] == *offset && !(tombstones_expire && value.is_none()))
        })
        .cloned()
        .collect()
}

#[test]
fn compaction_keeps_the_latest_record_of_each_key_at_its_original_offset() {
    let options = NodeOptions {
        config_toml: Some("[log]\nretention_check_interval_ms = 200\n".to_owned()),
        ..NodeOptions::default()
    };
    with_node(options, |node| {
        let bootstrap = node.bootstrap();
        // Tombstones kept (Kafka's default delete.retention.ms) and removed at once.
        for (topic, delete_retention_ms) in [("compacted", "86400000"), ("compacted-now", "0")] {
            kafka::create_topic(
                &bootstrap,
                topic,
                1,
                &[
                    ("cleanup.policy", "compact"),
                    ("segment.bytes", "1024"),
                    ("delete.retention.ms", delete_retention_ms),
                ],
            )?;
            // Small batches, so that compaction both drops whole batches and rebuilds some.
            let producer = AckingProducer::new(
                &bootstrap,
                &[("linger.ms", "0"), ("batch.num.messages", "4")],
            )?;
            let records: Vec<(String, Option<String>)> = (0..RECORDS).map(record).collect();
            for (i, (key, value)) in records.iter().enumerate() {
                let outgoing = Outgoing {
                    partition: Some(0),
                    key: Some(key.as_bytes()),
                    value: value.as_deref().map(str::as_bytes),
                    ..Outgoing::default()
                };
                producer.send(topic, i, outgoing)?;
            }
            producer.flush(CLIENT_TIMEOUT)?;
            let acks = producer.acks_of(0..RECORDS)?;
            let mut produced: Vec<(i64, String, Option<String>)> = acks
                .iter()
                .zip(records)
                .map(|(ack, (key, value))| (ack.offset, key, value))
                .collect();
            produced.sort_by_key(|(offset, _, _)| *offset);
            let active = active_base(&node.partition_dir(topic, 0))?;
            ensure!(active > 300, "{topic}: active segment starts at {active}: too few segments");
            let want = expected(&produced, active, delete_retention_ms == "0");
            ensure!(want.len() < produced.len() / 2, "{topic}: the test must remove most records");

            let what = format!("{topic} is compacted");
            let mut last = Vec::new();
            let outcome = wait_until(COMPACTION_TIMEOUT, &what, || {
                let consumed = kafka::consume_all(&bootstrap, topic, &[0], &[])?;
                last = consumed
                    .into_iter()
                    .map(|c| {
                        let text = |bytes: Option<Vec<u8>>| {
                            bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
                        };
                        (c.offset, text(c.key).unwrap_or_default(), text(c.value))
                    })
                    .collect::<Vec<_>>();
                // Until the pass is done, a prefix may be compacted and the rest not yet: it
                // must always be a subset of what was produced, at the same offsets.
                for got in &last {
                    let at = produced.binary_search_by_key(&got.0, |p| p.0);
                    ensure!(at.is_ok_and(|i| produced[i] == *got), "{topic}: unexpected {got:?}");
                }
                Ok((last == want).then_some(()))
            });
            outcome.with_context(|| {
                format!("{topic}: consumed {} records, expected {}", last.len(), want.len())
            })?;
        }
        Ok(())
    });
}
