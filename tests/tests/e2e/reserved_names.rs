//! Names that would collide with the node's own state, and the brokers' internal topics, are
//! refused to clients everywhere: auto-creation, CreateTopics, produce, DeleteTopics,
//! CreatePartitions and config changes. The node keeps its metadata log and restarts with all
//! its topics.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rdkafka::admin::{AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::{with_node, NodeOptions, CLIENT_TIMEOUT, POLL_INTERVAL};

const RECORDS: usize = 200;

/// The metadata log's segment bytes: what a partition log opened over it would have cut.
fn raft_log_bytes(node: &strom_tests::StromNode) -> anyhow::Result<u64> {
    let dir = node.data_dir().join("__cluster_metadata-0");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// `kcat -L -t NAME`, the one-line reproduction from the issue: with auto-creation on, a
/// metadata request for the name asks the broker to create it. Bounded by coreutils' timeout.
fn kcat_metadata(bootstrap: &str, topic: &str) -> anyhow::Result<String> {
    let out = Command::new("timeout")
        .args(["30", "kcat", "-b", bootstrap, "-L", "-t", topic])
        .output()
        .context("run kcat (scripts/install-test-deps.sh installs it)")?;
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The error code a metadata request for `topic` answers (auto-creation allowed).
fn metadata_error(bootstrap: &str, topic: &str) -> anyhow::Result<Option<RDKafkaErrorCode>> {
    let consumer = kafka::consumer(bootstrap, &[("allow.auto.create.topics", "true")])?;
    let md = consumer
        .fetch_metadata(Some(topic), CLIENT_TIMEOUT)
        .with_context(|| format!("metadata of {topic}"))?;
    let t = md.topics().iter().find(|t| t.name() == topic).context("topic in the answer")?;
    Ok(t.error().map(RDKafkaErrorCode::from))
}

fn check_records(bootstrap: &str, stage: &str) -> anyhow::Result<()> {
    let got = kafka::consume_all(bootstrap, "keep", &[0], &[])
        .with_context(|| format!("{stage}: read back `keep`"))?;
    ensure!(got.len() == RECORDS, "{stage}: read {} records of {RECORDS}", got.len());
    for (i, record) in got.iter().enumerate() {
        let want = format!("record-{i}");
        ensure!(
            record.value.as_deref() == Some(want.as_bytes()),
            "{stage}: record at offset {i} is {:?}, expected {want}",
            record.value.as_deref().map(String::from_utf8_lossy)
        );
    }
    Ok(())
}

/// Waits until the group coordinator has created `__consumer_offsets`.
fn create_offsets_topic(bootstrap: &str) -> anyhow::Result<()> {
    let consumer = kafka::consumer(bootstrap, &[("group.id", "reserved-names")])?;
    consumer.subscribe(&["keep"]).context("subscribe")?;
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        // A committed offset needs the coordinator, which creates the offsets topic.
        let _ = consumer.committed(Duration::from_secs(2));
        let md = consumer.fetch_metadata(Some("__consumer_offsets"), CLIENT_TIMEOUT)?;
        if md.topics().iter().any(|t| t.error().is_none() && !t.partitions().is_empty()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("__consumer_offsets was not created within {CLIENT_TIMEOUT:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[test]
fn reserved_and_internal_topic_names_are_refused_and_the_node_restarts_whole() {
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, "keep", 1, &[])?;
        let producer = AckingProducer::new(&bootstrap, &[("acks", "all")])?;
        for i in 0..RECORDS {
            let value = format!("record-{i}");
            let record = Outgoing {
                partition: Some(0),
                value: Some(value.as_bytes()),
                ..Outgoing::default()
            };
            producer.send("keep", i, record)?;
        }
        producer.flush(CLIENT_TIMEOUT)?;
        ensure!(producer.acked() == RECORDS, "acknowledged {} of {RECORDS}", producer.acked());
        let raft_before = raft_log_bytes(node)?;
        ensure!(raft_before > 0, "the metadata log is empty before the test");

        // The reproduction, then the same through librdkafka: refused, nothing opened.
        let listing = kcat_metadata(&bootstrap, "__cluster_metadata")?;
        for name in ["__cluster_metadata", "__cluster.metadata"] {
            let code = metadata_error(&bootstrap, name)?;
            ensure!(
                code == Some(RDKafkaErrorCode::InvalidTopic),
                "metadata of {name} answered {code:?} (kcat printed: {listing})"
            );
        }
        let raft_after = raft_log_bytes(node)?;
        ensure!(
            raft_after >= raft_before,
            "the metadata log shrank from {raft_before} to {raft_after} bytes"
        );

        let admin = kafka::admin(&bootstrap)?;
        let options = rdkafka::admin::AdminOptions::new();
        let new_topics: Vec<NewTopic> =
            ["__cluster_metadata", "__cluster.metadata", "__consumer_offsets"]
                .into_iter()
                .map(|name| NewTopic::new(name, 1, TopicReplication::Fixed(1)))
                .collect();
        let created = kafka::block_on(admin.create_topics(&new_topics, &options))??;
        for (result, want) in created.iter().zip([
            RDKafkaErrorCode::InvalidTopic,
            RDKafkaErrorCode::InvalidTopic,
            RDKafkaErrorCode::InvalidRequest,
        ]) {
            match result {
                Err((name, code)) => ensure!(*code == want, "CreateTopics {name}: {code:?}"),
                Ok(name) => bail!("CreateTopics {name} succeeded"),
            }
        }

        // Produce to a reserved name: refused per partition, not auto-created.
        let plain: FutureProducer = kafka::client_config(&bootstrap)
            .set("message.timeout.ms", "5000")
            .create()
            .context("producer")?;
        let sent = kafka::block_on(plain.send(
            FutureRecord::<(), [u8]>::to("__cluster_metadata").partition(0).payload(b"x"),
            Duration::from_secs(5),
        ))?;
        ensure!(sent.is_err(), "produce to __cluster_metadata was acknowledged: {sent:?}");

        // The brokers' own topic exists once a group uses it; clients cannot change it.
        create_offsets_topic(&bootstrap)?;
        let deleted = kafka::block_on(admin.delete_topics(&["__consumer_offsets"], &options))??;
        ensure!(
            matches!(deleted.as_slice(), [Err((_, RDKafkaErrorCode::InvalidRequest))]),
            "DeleteTopics __consumer_offsets answered {deleted:?}"
        );
        let grown = kafka::block_on(
            admin.create_partitions(&[NewPartitions::new("__consumer_offsets", 60)], &options),
        )??;
        ensure!(
            matches!(grown.as_slice(), [Err((_, RDKafkaErrorCode::InvalidRequest))]),
            "CreatePartitions __consumer_offsets answered {grown:?}"
        );
        // rdkafka's AlterConfigs result does not carry per-resource errors: read the config
        // back instead (the refusal's code, INVALID_REQUEST, is checked in strom-metadata).
        let _ = kafka::block_on(
            admin.alter_configs(
                &[AlterConfig::new(ResourceSpecifier::Topic("__consumer_offsets"))
                    .set("cleanup.policy", "delete")],
                &options,
            ),
        )?;
        let policy = kafka::describe_topic_configs(&bootstrap, "__consumer_offsets")?
            .get("cleanup.policy")
            .cloned()
            .flatten();
        ensure!(
            policy.as_deref() == Some("compact"),
            "AlterConfigs changed __consumer_offsets: cleanup.policy is {policy:?}"
        );
        let offsets = kafka::topic_partitions(&bootstrap, "__consumer_offsets")?;
        ensure!(offsets.len() == 50, "__consumer_offsets has {} partitions", offsets.len());
        let sent = kafka::block_on(plain.send(
            FutureRecord::<(), [u8]>::to("__consumer_offsets").partition(0).payload(b"x"),
            Duration::from_secs(5),
        ))?;
        ensure!(sent.is_err(), "produce to __consumer_offsets was acknowledged: {sent:?}");

        check_records(&bootstrap, "before restart")?;
        node.restart()?;
        check_records(&bootstrap, "after SIGTERM and restart")?;
        node.kill9()?;
        node.restart()?;
        check_records(&bootstrap, "after kill -9 and restart")?;
        ensure!(
            kafka::topic_partitions(&bootstrap, "__consumer_offsets")?.len() == 50,
            "__consumer_offsets lost partitions across restarts"
        );
        Ok(())
    });
}
