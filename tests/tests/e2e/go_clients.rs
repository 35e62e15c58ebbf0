//! The Go clients (issue 17), built by `make install-test-deps` from Debian bookworm's packaged
//! sources (`tests/clients/go/`): sarama 1.22.1 and segmentio/kafka-go 0.2.1, against one node.
//!
//! - sarama: DescribeCluster and DescribeTopics (metadata); ClusterAdmin.CreateTopic (a second
//!   create is TOPIC_ALREADY_EXISTS) and DeleteTopic, each seen by librdkafka's metadata.
//! - sarama and librdkafka write to each other, per codec (none, gzip, snappy, lz4, zstd):
//!   sarama sends keyed (and null-keyed) records with binary values, repeated, empty and null
//!   header values and explicit timestamps; librdkafka reads every one byte for byte at its
//!   acknowledged offset. librdkafka then writes the same records, compressed the same way,
//!   and sarama reads them identically. sarama 1.22 sends zstd batches with Produce v3 and
//!   reads them with Fetch v4; Kafka refuses zstd below Produce v7 and Fetch v10
//!   (UNSUPPORTED_COMPRESSION_TYPE, KIP-110), and so does strom. The idempotent producer and
//!   the consumer group of sarama are in `idempotence.rs` and `groups_clients.rs`.
//! - kafka-go 0.2.1 predates record batches and ApiVersions: it reads metadata (Metadata v1)
//!   and deletes topics (DeleteTopics v1), which strom serves; its Produce v2, Fetch v2 and
//!   CreateTopics v0 are versions Kafka 4 removed (KIP-896), so strom refuses them as Kafka 4
//!   does (the connection closes) and the client fails at once instead of hanging. The node
//!   serves other clients throughout.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::{bail, ensure, Context};
use strom_tests::clients::{run_to_exit, ClientRun, Library, SCRIPT_OUTPUT_LINES};
use strom_tests::kafka::{self, AckingProducer, Consumed, HeaderList, Outgoing};
use strom_tests::{wait_until, with_node, NodeOptions, StromNode, CLIENT_TIMEOUT};

/// Records per codec and the partitions they spread over.
const RECORDS: usize = 300;
const PARTITIONS: i32 = 3;
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// Runs `<library>-client <command> --bootstrap <node> <args>` to its exit.
fn go(
    library: Library,
    command: &str,
    node: &StromNode,
    args: &[&str],
) -> anyhow::Result<ClientRun> {
    let mut cmd = library.command(command)?;
    cmd.args(["--bootstrap", &node.bootstrap()]).args(args);
    run_to_exit(cmd, strom_tests::clients::SCRIPT_RUN_TIMEOUT)
}

/// Like [`go`], failing with the client's output unless it exits 0.
fn go_ok(
    library: Library,
    command: &str,
    node: &StromNode,
    args: &[&str],
) -> anyhow::Result<String> {
    let run = go(library, command, node, args)?;
    ensure!(
        run.status.success(),
        "{} {command} {args:?} exited with {}; stdout:\n{}\nstderr tail:\n{}",
        library.name(),
        run.status,
        run.stdout,
        run.stderr_tail(SCRIPT_OUTPUT_LINES)
    );
    Ok(run.stdout)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex(text: &str) -> anyhow::Result<Vec<u8>> {
    ensure!(text.len() % 2 == 0, "odd hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).with_context(|| format!("hex {text:?}")))
        .collect()
}

fn bytes_field(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(|| "null".to_owned(), |b| format!("x{}", hex(b)))
}

fn parse_bytes_field(field: &str) -> anyhow::Result<Option<Vec<u8>>> {
    match field.strip_prefix('x') {
        Some(h) => Ok(Some(unhex(h)?)),
        None if field == "null" => Ok(None),
        None => bail!("bad bytes field {field:?}"),
    }
}

/// A record read by librdkafka as the Go clients print one (`tests/clients/go/common`):
/// `REC <partition> <offset> <timestamp-ms> <key> <value> <headers>`.
fn rec_line(record: &Consumed) -> String {
    let headers = if record.headers.is_empty() {
        "none".to_owned()
    } else {
        record
            .headers
            .iter()
            .map(|(key, value)| {
                format!("{}:{}", hex(key.as_bytes()), bytes_field(value.as_deref()))
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "REC {} {} {} {} {} {headers}",
        record.partition,
        record.offset,
        record.timestamp_ms.unwrap_or(-1),
        bytes_field(record.key.as_deref()),
        bytes_field(record.value.as_deref()),
    )
}

/// The inverse of [`rec_line`].
fn parse_rec(line: &str) -> anyhow::Result<Consumed> {
    let words: Vec<&str> = line.split(' ').collect();
    ensure!(words.len() == 7 && words[0] == "REC", "not a record line: {line:?}");
    let mut headers: HeaderList = Vec::new();
    if words[6] != "none" {
        for header in words[6].split(',') {
            let (key, value) = header.split_once(':').context("header without ':'")?;
            headers.push((String::from_utf8(unhex(key)?)?, parse_bytes_field(value)?));
        }
    }
    Ok(Consumed {
        partition: words[1].parse()?,
        offset: words[2].parse()?,
        timestamp_ms: Some(words[3].parse()?),
        key: parse_bytes_field(words[4])?,
        value: parse_bytes_field(words[5])?,
        headers,
    })
}

fn rec_lines(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|line| line.starts_with("REC ")).collect()
}

/// The two lists of record lines are equal; else the first difference.
fn same_records(what: &str, expected: &[String], actual: &[String]) -> anyhow::Result<()> {
    if let Some(i) =
        (0..expected.len().max(actual.len())).find(|&i| expected.get(i) != actual.get(i))
    {
        bail!(
            "{what}: {} records expected, {} read; first difference at {i}:\n expected {:?}\n \
             read     {:?}",
            expected.len(),
            actual.len(),
            expected.get(i),
            actual.get(i)
        );
    }
    Ok(())
}

/// Records in partition, then offset order, as lines.
fn sorted_lines(mut records: Vec<Consumed>) -> Vec<String> {
    records.sort_by_key(|r| (r.partition, r.offset));
    records.iter().map(rec_line).collect()
}

fn metadata_topics(bootstrap: &str) -> anyhow::Result<BTreeSet<String>> {
    use rdkafka::consumer::Consumer;
    let consumer = kafka::consumer(bootstrap, &[])?;
    let metadata = consumer.fetch_metadata(None, CLIENT_TIMEOUT)?;
    Ok(metadata.topics().iter().map(|t| t.name().to_owned()).collect())
}

#[test]
fn sarama_reads_metadata_and_creates_and_deletes_topics() {
    Library::Sarama.require("metadata");
    with_node(NodeOptions::default(), |node| {
        let id = node.node_id();
        let stdout = go_ok(Library::Sarama, "metadata", node, &[])?;
        let expected = format!("BROKER {id} {}\nCONTROLLER ", node.bootstrap());
        ensure!(
            stdout.starts_with(&expected),
            "sarama metadata printed {stdout:?}, want {expected:?}…"
        );

        let topic = "sarama-admin";
        let stdout = go_ok(
            Library::Sarama,
            "create-topic",
            node,
            &["--topic", topic, "--partitions", "4", "--replication", "1"],
        )?;
        ensure!(stdout.contains(&format!("CREATED {topic}")), "create-topic printed {stdout:?}");
        kafka::wait_for_topic(&node.bootstrap(), topic, 4)
            .context("librdkafka sees sarama's topic")?;
        let stdout = go_ok(Library::Sarama, "metadata", node, &["--topic", topic])?;
        let partitions: Vec<&str> =
            stdout.lines().filter(|l| l.starts_with("PARTITION ")).collect();
        let want: Vec<String> = (0..4).map(|p| format!("PARTITION {p} {id} {id}")).collect();
        ensure!(partitions == want, "sarama DescribeTopics: {partitions:?}, want {want:?}");

        let stdout = go_ok(Library::Sarama, "delete-topic", node, &["--topic", topic])?;
        ensure!(stdout.contains(&format!("DELETED {topic}")), "delete-topic printed {stdout:?}");
        let bootstrap = node.bootstrap();
        wait_until(CLIENT_TIMEOUT, "librdkafka's metadata drops the topic sarama deleted", || {
            Ok((!metadata_topics(&bootstrap)?.contains(topic)).then_some(()))
        })?;
        Ok(())
    });
}

#[test]
fn sarama_and_librdkafka_read_each_others_records_for_every_codec() {
    Library::Sarama.require("produce");
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        let partitions: Vec<i32> = (0..PARTITIONS).collect();
        let (count, parts) = (RECORDS.to_string(), PARTITIONS.to_string());
        for codec in CODECS {
            // sarama writes, librdkafka reads.
            let topic = format!("sarama-wrote-{codec}");
            kafka::create_topic(&bootstrap, &topic, PARTITIONS, &[])?;
            let args =
                ["--topic", &topic, "--codec", codec, "--count", &count, "--partitions", &parts];
            if codec == "zstd" {
                sarama_zstd_is_refused_as_kafka_refuses_it(node, &topic, &args)?;
                continue;
            }
            let stdout = go_ok(Library::Sarama, "produce", node, &args)
                .with_context(|| format!("sarama producing with {codec}"))?;
            let sent: Vec<Consumed> =
                rec_lines(&stdout).into_iter().map(parse_rec).collect::<anyhow::Result<_>>()?;
            ensure!(
                sent.len() == RECORDS,
                "sarama acknowledged {} of {RECORDS} records",
                sent.len()
            );
            let read = kafka::consume_all(&bootstrap, &topic, &partitions, &[])?;
            let sent_lines = sorted_lines(sent.clone());
            same_records(
                &format!("{codec}: what sarama wrote, read by librdkafka"),
                &sent_lines,
                &sorted_lines(read),
            )?;

            // librdkafka writes the same records with the same codec, sarama reads them.
            let topic = format!("librdkafka-wrote-{codec}");
            kafka::create_topic(&bootstrap, &topic, PARTITIONS, &[])?;
            let producer = AckingProducer::new(
                &bootstrap,
                &[("compression.type", codec), ("enable.idempotence", "true"), ("linger.ms", "20")],
            )?;
            for (id, record) in sent.iter().enumerate() {
                producer.send(
                    &topic,
                    id,
                    Outgoing {
                        partition: Some(record.partition),
                        key: record.key.as_deref(),
                        value: record.value.as_deref(),
                        headers: &record.headers,
                        timestamp_ms: record.timestamp_ms,
                    },
                )?;
            }
            producer.flush(CLIENT_TIMEOUT)?;
            let acks = producer.acks_of(0..sent.len())?;
            for (ack, record) in acks.iter().zip(&sent) {
                ensure!(
                    (ack.partition, ack.offset) == (record.partition, record.offset),
                    "{codec}: librdkafka's copy of {}-{} landed at {ack:?}",
                    record.partition,
                    record.offset
                );
            }
            let args = ["--topic", &topic, "--count", &count, "--partitions", &parts];
            let stdout = go_ok(Library::Sarama, "consume", node, &args)
                .with_context(|| format!("sarama consuming {codec} records librdkafka wrote"))?;
            let read: Vec<String> = rec_lines(&stdout).into_iter().map(str::to_owned).collect();
            same_records(
                &format!("{codec}: what librdkafka wrote, read by sarama"),
                &sent_lines,
                &read,
            )?;
        }
        Ok(())
    });
}

/// sarama 1.22 sends zstd batches with Produce v3 and fetches with Fetch v4: as Kafka (KIP-110)
/// strom answers UNSUPPORTED_COMPRESSION_TYPE to both. Nothing is stored, and sarama's consumer
/// of librdkafka's zstd records reports the error instead of records it could not read.
fn sarama_zstd_is_refused_as_kafka_refuses_it(
    node: &StromNode,
    topic: &str,
    args: &[&str],
) -> anyhow::Result<()> {
    let bootstrap = node.bootstrap();
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let run = go(Library::Sarama, "produce", node, args)?;
    ensure!(!run.status.success(), "sarama 1.22's zstd produce (Produce v3) was accepted");
    let marks = kafka::watermarks(&bootstrap, topic, &partitions)?;
    ensure!(marks.values().all(|&(_, high)| high == 0), "refused zstd stored: {marks:?}");
    let written = format!("librdkafka-wrote-{topic}");
    kafka::create_topic(&bootstrap, &written, 1, &[])?;
    let producer = AckingProducer::new(&bootstrap, &[("compression.type", "zstd")])?;
    let value = "z".repeat(2_000);
    let record = Outgoing { value: Some(value.as_bytes()), ..Outgoing::default() };
    producer.send(&written, 0, record)?;
    producer.flush(CLIENT_TIMEOUT)?;
    let args = ["--topic", written.as_str(), "--count", "1", "--partitions", "1"];
    let run = go(Library::Sarama, "consume", node, &args)?;
    let stderr = run.stderr_tail(SCRIPT_OUTPUT_LINES);
    ensure!(
        !run.status.success() && stderr.contains("compression"),
        "sarama's Fetch v4 of zstd records: exit {}, stderr {stderr}",
        run.status
    );
    Ok(())
}

#[test]
fn kafka_go_reads_metadata_and_deletes_topics_and_is_refused_what_kafka_4_removed() {
    Library::KafkaGo.require("metadata");
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        let id = node.node_id();
        let topic = "kafka-go";
        kafka::create_topic(&bootstrap, topic, 2, &[])?;
        let stdout = go_ok(Library::KafkaGo, "metadata", node, &["--topic", topic])?;
        let partitions: Vec<&str> =
            stdout.lines().filter(|l| l.starts_with("PARTITION ")).collect();
        let want: Vec<String> = (0..2).map(|p| format!("PARTITION {p} {id} {id}")).collect();
        ensure!(partitions == want, "kafka-go ReadPartitions: {partitions:?}, want {want:?}");

        // Produce v2, Fetch v2 and CreateTopics v0: refused, promptly, and nothing written.
        for (command, extra) in
            [("produce", "--count"), ("consume", "--count"), ("create-topic", "--partitions")]
        {
            let run = go(Library::KafkaGo, command, node, &["--topic", topic, extra, "1"])?;
            ensure!(
                !run.status.success() && run.stderr.contains("FAILED"),
                "kafka-go {command} with a version Kafka 4 removed: exit {}, stdout {:?}, \
                 stderr {:?}",
                run.status,
                run.stdout,
                run.stderr_tail(10)
            );
            eprintln!("kafka-go {command}: {}", run.stderr.trim());
        }
        let marks = kafka::watermarks(&bootstrap, topic, &[0, 1])?;
        ensure!(marks.values().all(|&(_, high)| high == 0), "records written: {marks:?}");
        kafka::assert_node_serves(&bootstrap, topic, 1)?;

        go_ok(Library::KafkaGo, "delete-topic", node, &["--topic", topic])?;
        wait_until(
            CLIENT_TIMEOUT,
            "librdkafka's metadata drops the topic kafka-go deleted",
            || Ok((!metadata_topics(&bootstrap)?.contains(topic)).then_some(())),
        )?;
        Ok(())
    });
}
