//! File handles are a bounded resource (issue 15): a node whose open-file limit is far below
//! the number of its partition files serves all of them, through its cache of open handles,
//! and stays healthy.

use std::time::Duration;

use anyhow::{ensure, Context};
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::{with_node, NodeOptions};

const FD_LIMIT: u64 = 1024;
/// `log_open_files_max(1024)` of the binary: half of what Kafka connections leave.
const LOG_OPEN_FILES: usize = 128;
const TOPICS: usize = 15;
const PARTITIONS: i32 = 100;
/// Each round's record rolls a new segment (`segment.bytes` fits one batch): three segments of
/// three files each per partition, 13,500 files in all.
const ROUNDS: usize = 3;
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

fn value(topic: usize, partition: i32, round: usize) -> Vec<u8> {
    format!("t{topic}-p{partition}-r{round}-{}", "x".repeat(100)).into_bytes()
}

/// `text` without its ANSI colour sequences (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn open_descriptors(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

#[test]
fn a_node_serves_more_partition_files_than_its_fd_limit_allows() {
    let options = NodeOptions { fd_limit: Some(FD_LIMIT), ..NodeOptions::default() };
    with_node(options, |node| {
        let bootstrap = node.bootstrap();
        let pid = node.pid().context("the node has no process")?;
        let started = plain(&node.stderr());
        ensure!(
            started.contains(&format!("log_open_files={LOG_OPEN_FILES}"))
                && started.contains(&format!("limit={FD_LIMIT}")),
            "the startup line reports the limit and the cache: {}",
            node.stderr_tail(20)
        );
        let topics: Vec<String> = (0..TOPICS).map(|t| format!("many-files-{t}")).collect();
        for topic in &topics {
            kafka::create_topic(&bootstrap, topic, PARTITIONS, &[("segment.bytes", "200")])?;
        }

        let producer = AckingProducer::new(&bootstrap, &[("linger.ms", "20")])?;
        let mut most = 0;
        let mut id = 0;
        for round in 0..ROUNDS {
            for (t, topic) in topics.iter().enumerate() {
                for partition in 0..PARTITIONS {
                    let value = value(t, partition, round);
                    let record = Outgoing {
                        partition: Some(partition),
                        key: None,
                        value: Some(&value),
                        headers: &[],
                        timestamp_ms: None,
                    };
                    producer.send(topic, id, record)?;
                    id += 1;
                }
            }
            producer.flush(FLUSH_TIMEOUT)?;
            most = most.max(open_descriptors(pid)?);
        }
        let acks = producer.acks_of(0..id)?;
        ensure!(acks.len() == TOPICS * PARTITIONS as usize * ROUNDS);

        for (t, topic) in topics.iter().enumerate() {
            let partitions: Vec<i32> = (0..PARTITIONS).collect();
            let records = kafka::consume_all(&bootstrap, topic, &partitions, &[])?;
            most = most.max(open_descriptors(pid)?);
            ensure!(
                records.len() == PARTITIONS as usize * ROUNDS,
                "{topic}: read {} records",
                records.len()
            );
            for record in records {
                let round = usize::try_from(record.offset)?;
                let expected = value(t, record.partition, round);
                ensure!(record.value.as_deref() == Some(&expected[..]), "{topic}: {record:?}");
            }
        }
        let segments = std::fs::read_dir(node.partition_dir(&topics[0], 0))?
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log")))
            .count();
        ensure!(segments == ROUNDS, "{segments} segments in one partition, not {ROUNDS}");

        // Healthy: still running, no storage failure, the controller still commits, Metadata
        // answers.
        ensure!(node.is_running(), "the node died: {}", node.stderr_tail(40));
        let log = node.stderr();
        for bad in ["Too many open files", "log directory failed", "partition log is offline"] {
            ensure!(!log.contains(bad), "the node logged {bad:?}: {}", node.stderr_tail(40));
        }
        kafka::create_topic(&bootstrap, "after-many-files", 1, &[])?;
        kafka::assert_node_serves(&bootstrap, "after-many-files", 0)?;
        ensure!(kafka::topic_partitions(&bootstrap, &topics[TOPICS - 1])?.len() == 100);
        eprintln!("file handles: {most} descriptors open at most under a limit of {FD_LIMIT}");
        Ok(())
    });
}
