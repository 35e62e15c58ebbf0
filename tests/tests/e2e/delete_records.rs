//! DeleteRecords (Kafka API 21) with real clients: confluent-kafka's `delete_records` and
//! librdkafka's (rdkafka's AdminClient), checked from the data: the low watermark, where a
//! consumer reading from the earliest offset starts, the segment files retention then deletes,
//! the log start offset after SIGTERM and kill -9 restarts, and on three replicas the follower
//! that becomes leader keeping it.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use strom_tests::clients::{run_to_exit, Library, SCRIPT_RUN_TIMEOUT};
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::{wait_until, with_cluster, with_node, ClusterOptions, NodeOptions};

/// Retention runs often, so the segments below a new log start go within the test's waits.
const FAST_RETENTION: &str = "[log]\nretention_check_interval_ms = 200\n";
const WAIT: Duration = Duration::from_secs(30);

/// Produces `count` records (acks=all) to partition 0 of `topic`.
fn produce(bootstrap: &str, topic: &str, count: usize) -> anyhow::Result<()> {
    let producer =
        AckingProducer::new(bootstrap, &[("linger.ms", "0"), ("batch.num.messages", "4")])?;
    for id in 0..count {
        let value = format!("record-{id:05}-{}", "x".repeat(40));
        let record =
            Outgoing { partition: Some(0), value: Some(value.as_bytes()), ..Outgoing::default() };
        producer.send(topic, id, record)?;
    }
    producer.flush(Duration::from_secs(30))?;
    ensure!(producer.acked() == count, "acked {} of {count}", producer.acked());
    Ok(())
}

/// confluent-kafka's `AdminClient.delete_records`: the low watermark it was answered.
fn confluent_delete(bootstrap: &str, topic: &str, offset: i64) -> anyhow::Result<i64> {
    let mut command = Library::ConfluentKafka.command("delete_records")?;
    command.args(["--bootstrap", bootstrap, "--topic", topic, "--partition", "0"]);
    command.args(["--offset", &offset.to_string()]);
    let run = run_to_exit(command, SCRIPT_RUN_TIMEOUT)?;
    ensure!(run.status.success(), "confluent-kafka delete_records: {}", run.stderr_tail(40));
    let answer: Value = serde_json::from_str(run.stdout.trim())
        .with_context(|| format!("confluent-kafka printed {:?}", run.stdout))?;
    answer["low_watermark"].as_i64().with_context(|| format!("no low watermark in {answer}"))
}

/// librdkafka's DeleteRecords: the low watermark, or the partition's error.
fn rdkafka_delete(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    offset: Offset,
) -> anyhow::Result<Result<i64, String>> {
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(topic, 0, offset)?;
    // A partition librdkafka finds no leader for fails the whole request.
    let answer = match kafka::block_on(admin.delete_records(&offsets, &kafka::admin_options()))? {
        Ok(answer) => answer,
        Err(error) => return Ok(Err(error.to_string())),
    };
    let element = answer.find_partition(topic, 0).context("no answer for the partition")?;
    Ok(match element.error() {
        Err(error) => Err(error.to_string()),
        Ok(()) => Ok(element.offset().to_raw().context("low watermark")?),
    })
}

/// (low, high) watermarks of partition 0.
fn marks(bootstrap: &str, topic: &str) -> anyhow::Result<(i64, i64)> {
    Ok(kafka::watermarks(bootstrap, topic, &[0])?[&0])
}

/// The offsets a consumer reading from the earliest offset gets, in order.
fn consumed_offsets(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<i64>> {
    Ok(kafka::consume_all(bootstrap, topic, &[0], &[])?.iter().map(|r| r.offset).collect())
}

/// The base offsets of a partition directory's segment files.
fn segment_bases(dir: &Path) -> anyhow::Result<Vec<i64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".log") {
            bases.push(stem.parse::<i64>().with_context(|| name.clone())?);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn check_from(
    bootstrap: &str,
    topic: &str,
    start: i64,
    end: i64,
    stage: &str,
) -> anyhow::Result<()> {
    ensure!(
        marks(bootstrap, topic)? == (start, end),
        "{stage}: watermarks {:?}",
        marks(bootstrap, topic)?
    );
    let offsets = consumed_offsets(bootstrap, topic)?;
    let expected: Vec<i64> = (start..end).collect();
    ensure!(
        offsets == expected,
        "{stage}: consumed offsets {:?}..{:?} ({} records), expected {start}..{end}",
        offsets.first(),
        offsets.last(),
        offsets.len()
    );
    Ok(())
}

#[test]
fn delete_records_moves_the_log_start_for_readers_retention_and_restarts() {
    Library::ConfluentKafka.require("delete_records");
    let options =
        NodeOptions { config_toml: Some(FAST_RETENTION.to_owned()), ..NodeOptions::default() };
    with_node(options, |node| {
        let bootstrap = node.bootstrap();
        let topic = "trimmed";
        // Small segments: each holds a dozen or so batches.
        kafka::create_topic(&bootstrap, topic, 1, &[("segment.bytes", "1024")])?;
        produce(&bootstrap, topic, 200)?;
        check_from(&bootstrap, topic, 0, 200, "before")?;
        let dir = node.partition_dir(topic, 0);
        ensure!(segment_bases(&dir)?.len() > 3, "segments: {:?}", segment_bases(&dir)?);

        // confluent-kafka, inside a segment.
        ensure!(confluent_delete(&bootstrap, topic, 50)? == 50);
        check_from(&bootstrap, topic, 50, 200, "after deleting below 50")?;

        // librdkafka: further, then refusals that change nothing.
        let admin = kafka::admin(&bootstrap)?;
        ensure!(rdkafka_delete(&admin, topic, Offset::Offset(120))? == Ok(120));
        let beyond = rdkafka_delete(&admin, topic, Offset::Offset(500))?;
        ensure!(
            matches!(&beyond, Err(e) if e.contains("OffsetOutOfRange")),
            "beyond the high watermark: {beyond:?}"
        );
        let backwards = rdkafka_delete(&admin, topic, Offset::Offset(10))?;
        ensure!(backwards == Ok(120), "an older offset moves nothing: {backwards:?}");
        let unknown = rdkafka_delete(&admin, "no-such-topic", Offset::Offset(1))?;
        ensure!(unknown.is_err(), "an unknown topic: {unknown:?}");
        check_from(&bootstrap, topic, 120, 200, "after deleting below 120")?;

        // Retention deletes the segments wholly below the log start, and no other.
        let bases = wait_until(WAIT, "segments below the log start deleted", || {
            let bases = segment_bases(&dir)?;
            Ok((bases.len() >= 2 && bases[0] <= 120 && bases[1] > 120).then_some(bases))
        })?;
        eprintln!("segments after retention: {bases:?}");

        node.restart()?;
        check_from(&bootstrap, topic, 120, 200, "after SIGTERM and restart")?;
        node.kill9()?;
        node.restart()?;
        check_from(&bootstrap, topic, 120, 200, "after kill -9 and restart")?;

        // -1: up to the high watermark; the log goes on from there.
        ensure!(confluent_delete(&bootstrap, topic, -1)? == 200);
        ensure!(marks(&bootstrap, topic)? == (200, 200));
        produce(&bootstrap, topic, 3)?;
        check_from(&bootstrap, topic, 200, 203, "after deleting everything and producing 3")?;
        node.kill9()?;
        node.restart()?;
        check_from(&bootstrap, topic, 200, 203, "after the last kill -9")?;
        Ok(())
    });
}

#[test]
fn a_follower_that_becomes_leader_keeps_the_deleted_log_start() {
    Library::ConfluentKafka.require("delete_records");
    let options = ClusterOptions {
        extra_toml: "log.retention_check_interval_ms = 200\n".to_owned(),
        ..ClusterOptions::default()
    };
    with_cluster(3, options, |cluster| {
        let topic = "trimmed-replicated";
        kafka::create_topic_replicated(&cluster.bootstrap(), topic, 1, 3)?;
        cluster.wait_topic_everywhere(topic, 1)?;
        cluster.wait_isr_full(topic, WAIT)?;
        produce(&cluster.bootstrap(), topic, 100)?;
        let leader = cluster.leaders_of(topic)?[&0];
        ensure!(confluent_delete(&cluster.bootstrap(), topic, 60)? == 60);

        // Each follower takes the log start from its Fetch responses and checkpoints it.
        let followers: Vec<u32> =
            cluster.ids().into_iter().filter(|&id| id as i32 != leader).collect();
        for &id in &followers {
            let checkpoint = cluster.node(id).data_dir().join("log-start-offset-checkpoint");
            wait_until(WAIT, &format!("node {id} checkpoints the log start 60"), || {
                let text = std::fs::read_to_string(&checkpoint).unwrap_or_default();
                Ok(text.lines().any(|line| line == format!("{topic} 0 60")).then_some(()))
            })?;
        }
        cluster.kill9(leader as u32)?;
        let new_leader = cluster.wait_new_leader(topic, 0, leader, WAIT)?;
        eprintln!("leader {leader} killed; {new_leader} leads");
        let bootstrap = cluster.bootstrap_of(&followers);
        check_from(&bootstrap, topic, 60, 100, "on the new leader")?;

        // The old leader comes back as a follower of the new one and keeps it too.
        cluster.restart(leader as u32)?;
        cluster.wait_isr_full(topic, WAIT)?;
        produce(&bootstrap, topic, 5)?;
        ensure!(confluent_delete(&bootstrap, topic, 80)? == 80);
        check_from(&cluster.bootstrap(), topic, 80, 105, "after a second delete")?;

        // `strom topic delete-records` through a node that does not lead the partition.
        let leader = cluster.leaders_of(topic)?[&0];
        let other = cluster.ids().into_iter().find(|&id| id as i32 != leader).context("a node")?;
        let args = ["topic", "delete-records", topic, "--partition", "0", "--offset", "90"];
        let table = cluster.cli(other, &args)?.success()?;
        ensure!(table.stdout.contains("below offset 90"), "{table:?}");
        let json = cluster.cli(other, &[&args[..], &["--output", "json"]].concat())?.success()?;
        ensure!(json.json()?["low_watermark"] == 90, "{json:?}");
        let beyond = ["topic", "delete-records", topic, "--partition", "0", "--offset", "999"];
        let refused = cluster.cli(other, &beyond)?;
        ensure!(
            !refused.status.success() && refused.stderr.contains("OffsetOutOfRange"),
            "{refused:?}"
        );
        check_from(&cluster.bootstrap(), topic, 90, 105, "after the CLI's delete")?;
        Ok(())
    });
}
