//! DescribeLogDirs (Kafka API 35) with kafka-python's `describe_log_dirs` and the raw codec at
//! v1 and v4, checked from the data: every broker names its data directory, and each replica's
//! size is what its segment files hold on disk.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::{
    ApiKey, DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde_json::Value;
use strom_tests::clients::{run_to_exit, Library, SCRIPT_RUN_TIMEOUT};
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::raw::RawConnection;
use strom_tests::{with_cluster, ClusterOptions};

const TOPIC: &str = "sized";
const WAIT: Duration = Duration::from_secs(30);

/// Bytes of the `.log` files of a partition directory.
fn segment_bytes(dir: &Path) -> anyhow::Result<i64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".log") {
            total += entry.metadata()?.len() as i64;
        }
    }
    Ok(total)
}

#[test]
fn describe_log_dirs_reports_each_replicas_size_on_disk() {
    Library::KafkaPython.require("describe_log_dirs");
    with_cluster(3, ClusterOptions::default(), |cluster| {
        kafka::create_topic_replicated(&cluster.bootstrap(), TOPIC, 2, 3)?;
        cluster.wait_topic_everywhere(TOPIC, 2)?;
        cluster.wait_isr_full(TOPIC, WAIT)?;
        let producer = AckingProducer::new(&cluster.bootstrap(), &[])?;
        for id in 0..300 {
            let value = format!("value-{id}-{}", "y".repeat(100));
            let partition = Some((id % 2) as i32);
            producer.send(
                TOPIC,
                id,
                Outgoing { partition, value: Some(value.as_bytes()), ..Outgoing::default() },
            )?;
        }
        producer.flush(WAIT)?;
        ensure!(producer.acked() == 300);
        // acks=all: every replica holds every record; its size on disk is settled.
        let mut expected = std::collections::BTreeMap::new();
        for id in cluster.ids() {
            for partition in 0..2 {
                let size = segment_bytes(&cluster.node(id).partition_dir(TOPIC, partition))?;
                ensure!(size > 300 / 2 * 100, "node {id} {TOPIC}-{partition}: {size} bytes");
                expected.insert((id as i64, partition), size);
            }
        }

        // kafka-python asks every broker.
        let mut command = Library::KafkaPython.command("describe_log_dirs")?;
        command.args(["--bootstrap", &cluster.bootstrap()]);
        let run = run_to_exit(command, SCRIPT_RUN_TIMEOUT)?;
        ensure!(run.status.success(), "kafka-python failed: {}", run.stderr_tail(40));
        let answer: Value = serde_json::from_str(run.stdout.trim())
            .with_context(|| format!("kafka-python printed {:?}", run.stdout))?;
        eprintln!("kafka-python describe_log_dirs: {answer}");
        let mut seen = std::collections::BTreeMap::new();
        for broker in answer.as_array().context("a list")? {
            let id = broker["broker"].as_i64().context("broker id")?;
            let dirs = broker["log_dirs"].as_array().context("log_dirs")?;
            ensure!(dirs.len() == 1, "broker {id}: {dirs:?}");
            let dir = &dirs[0];
            ensure!(dir["error_code"] == 0, "broker {id}: {dir}");
            let data_dir = cluster.node(id as u32).data_dir().display().to_string();
            ensure!(
                dir["log_dir"].as_str() == Some(data_dir.as_str()),
                "broker {id}: {dir} vs {data_dir}"
            );
            for topic in dir["topics"].as_array().context("topics")? {
                if topic["name"] != TOPIC {
                    continue;
                }
                for p in topic["partitions"].as_array().context("partitions")? {
                    let index = p["partition_index"].as_i64().context("index")? as i32;
                    ensure!(p["offset_lag"] == 0 && p["is_future_key"] == false, "{p}");
                    seen.insert((id, index), p["partition_size"].as_i64().context("size")?);
                }
            }
        }
        ensure!(seen == expected, "sizes reported {seen:?}, on disk {expected:?}");

        // `strom cluster log-dirs`: every broker's directory and replicas, as JSON.
        let listed = cluster.cli(2, &["cluster", "log-dirs", "--output", "json"])?.success()?;
        let listed = listed.json()?;
        let mut from_cli = std::collections::BTreeMap::new();
        for dir in listed["log_dirs"].as_array().context("log_dirs")? {
            let id = dir["broker_id"].as_i64().context("broker_id")?;
            ensure!(dir["total_bytes"].as_i64() > Some(0), "{dir}");
            for p in dir["partitions"].as_array().context("partitions")? {
                if p["topic"] == TOPIC {
                    let index = p["partition"].as_i64().context("partition")? as i32;
                    from_cli.insert((id, index), p["size_bytes"].as_i64().context("size")?);
                }
            }
        }
        ensure!(from_cli == expected, "the CLI listed {from_cli:?}, on disk {expected:?}");
        let table = cluster.cli(1, &["cluster", "log-dirs"])?.success()?;
        ensure!(table.stdout.contains("OFFSET-LAG") && table.stdout.contains(TOPIC), "{table:?}");

        // v4 adds the file system's total and usable bytes; a named partition only.
        let mut connection = RawConnection::connect(cluster.kafka_addr(1))?;
        ensure!(connection.max_version(ApiKey::DescribeLogDirs)? == 4);
        let named = DescribeLogDirsRequest::default().with_topics(Some(vec![
            DescribableLogDirTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(vec![1]),
        ]));
        for version in [1, 4] {
            let id = connection.send_request(
                ApiKey::DescribeLogDirs as i16,
                version,
                &named,
                version,
            )?;
            let response: DescribeLogDirsResponse = connection.read_response(id, version)?;
            let result = &response.results[0];
            let partitions: Vec<(String, i32, i64)> = result
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (t.name.0.to_string(), p.partition_index, p.partition_size))
                })
                .collect();
            ensure!(
                partitions == [(TOPIC.to_owned(), 1, expected[&(1, 1)])],
                "v{version}: {response:?}"
            );
            if version == 4 {
                ensure!(
                    result.total_bytes > 0
                        && (0..=result.total_bytes).contains(&result.usable_bytes),
                    "{response:?}"
                );
            }
        }
        Ok(())
    });
}
