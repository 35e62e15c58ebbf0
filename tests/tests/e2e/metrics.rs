//! The HTTP endpoint operators watch a node through: `/metrics` read by a Prometheus
//! text-format parser moves as clients produce and as a follower stops and comes back;
//! `/health` answers while the process lives; `/ready` (and the gRPC health service) says
//! no while the node starts and cannot reach its quorum, and while it is cut off from the
//! controller for longer than a broker session (the controller fences it). A long-polling
//! Fetch shows in the fetch purgatory while it waits; the active controller's event-queue
//! histogram counts each topic creation; every broker's metadata lag settles at 0; and with
//! `metrics.consumer_lag` on, a group's committed offset shows as its lag behind the high
//! watermark (and the family is absent with it off).

use std::time::Duration;

use anyhow::{ensure, Context};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::raw::{RawConnection, FETCH_VERSION_MAX};
use strom_tests::{wait_until, with_cluster, with_node, ClusterOptions, NodeOptions, StromNode};

const WAIT: Duration = Duration::from_secs(60);
const RECORDS: usize = 200;
const VALUE_BYTES: usize = 100;

/// Produces `RECORDS` acknowledged records of `VALUE_BYTES` to `topic`.
fn produce(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let producer = AckingProducer::new(bootstrap, &[])?;
    let value = vec![b'v'; VALUE_BYTES];
    for id in 0..RECORDS {
        let record = Outgoing { value: Some(&value), ..Outgoing::default() };
        producer.send(topic, id, record)?;
    }
    producer.flush(Duration::from_secs(30))?;
    ensure!(producer.acked() == RECORDS, "acked {} of {RECORDS}", producer.acked());
    Ok(())
}

fn value(node: &StromNode, metric: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    Ok(node.scrape()?.value(metric, labels).unwrap_or(0.0))
}

#[test]
fn metrics_count_requests_and_bytes_as_a_producer_writes() {
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        assert_eq!(node.http_get("/health")?.0, 200);
        wait_until(WAIT, "the node is ready", || {
            Ok(node.not_ready_because()?.is_none().then_some(()))
        })?;
        kafka::create_topic(&bootstrap, "metered", 1, &[])?;
        let before = node.scrape()?;
        let produce_requests = |s: &strom_tests::http::Scrape| {
            s.value("strom_requests_total", &[("api", "Produce")]).unwrap_or(0.0)
        };
        assert_eq!(before.value("strom_bytes_in_total", &[("topic", "metered")]), None);

        produce(&bootstrap, "metered")?;
        let after = node.scrape()?;
        let bytes_in =
            after.value("strom_bytes_in_total", &[("topic", "metered")]).context("no bytes in")?;
        assert!(bytes_in >= (RECORDS * VALUE_BYTES) as f64, "bytes in: {bytes_in}");
        assert!(produce_requests(&after) > produce_requests(&before), "no Produce counted");
        let produce_v = after
            .0
            .samples
            .iter()
            .filter(|s| s.metric == "strom_requests_total")
            .filter(|s| s.labels.get("api") == Some("Produce"))
            .filter_map(|s| s.labels.get("version"))
            .count();
        assert!(produce_v >= 1, "requests are counted per version");
        for histogram in [
            "strom_request_total_time_seconds",
            "strom_request_local_time_seconds",
            "strom_request_remote_time_seconds",
            "strom_request_send_time_seconds",
        ] {
            let observed = after.value(histogram, &[("api", "Produce")]).unwrap_or(0.0);
            assert!(observed >= 1.0, "{histogram} has no Produce observation");
        }
        let size = after
            .value("strom_log_size_bytes", &[("topic", "metered"), ("partition", "0")])
            .context("no log size")?;
        assert!(size >= bytes_in, "log size {size} < bytes in {bytes_in}");
        assert_eq!(
            after.value("strom_log_segments", &[("topic", "metered"), ("partition", "0")]),
            Some(1.0)
        );
        assert!(after.value("strom_leader_count", &[]).unwrap_or(0.0) >= 1.0);
        assert_eq!(after.value("strom_under_replicated_partitions", &[]), Some(0.0));
        assert_eq!(after.value("strom_controller_active", &[]), Some(1.0));
        assert_eq!(after.value("strom_ready", &[]), Some(1.0));
        assert_eq!(after.value("strom_fenced_brokers", &[]), Some(0.0));
        assert!(after.value("strom_raft_term", &[]).unwrap_or(0.0) >= 1.0);
        assert!(after.value("strom_metadata_offset", &[]).unwrap_or(0.0) >= 1.0);

        // A consumer reads them back: bytes out move too, and an unknown topic is an error
        // counted by its Kafka name.
        let consumed = kafka::consume_all(&bootstrap, "metered", &[0], &[])?;
        ensure!(consumed.len() >= RECORDS, "consumed {}", consumed.len());
        let out = value(node, "strom_bytes_out_total", &[("topic", "metered")])?;
        assert!(out >= (RECORDS * VALUE_BYTES) as f64, "bytes out: {out}");

        // Consumer lag is opt-in: a committed group shows nothing while it is off.
        commit(&bootstrap, "metered-group", "metered", 10)?;
        let scrape = node.scrape()?;
        assert!(
            !scrape.names().iter().any(|n| n.starts_with("strom_consumer_group_lag")),
            "consumer lag exported while metrics.consumer_lag is off"
        );
        Ok(())
    });
}

/// Sum of `metric` over the running nodes of `cluster`.
fn cluster_sum(cluster: &mut strom_tests::StromCluster, metric: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for id in cluster.running() {
        sum += value(cluster.node(id), metric, &[])?;
    }
    Ok(sum)
}

#[test]
fn under_replicated_partitions_follow_a_stopped_follower() {
    let options = ClusterOptions {
        // Out of the ISR 2 s after the follower stops, not Kafka's 30 s.
        extra_toml: "replica_lag_time_max_ms = 2000".into(),
        ..ClusterOptions::default()
    };
    with_cluster(3, options, |cluster| {
        let bootstrap = cluster.bootstrap();
        kafka::create_topic_replicated(&bootstrap, "replicated", 3, 3)?;
        kafka::wait_for_topic(&bootstrap, "replicated", 3)?;
        // The active controller knows every broker's metadata lag; it settles at 0.
        wait_until(WAIT, "the active controller shows every broker's metadata lag at 0", || {
            for id in cluster.running() {
                let scrape = cluster.node(id).scrape()?;
                if scrape.value("strom_controller_active", &[]) != Some(1.0) {
                    continue;
                }
                let settled = ["1", "2", "3"].iter().all(|broker| {
                    scrape.value("strom_broker_metadata_lag", &[("broker", broker)]) == Some(0.0)
                });
                return Ok(settled.then_some(()));
            }
            Ok(None)
        })?;
        produce(&bootstrap, "replicated")?;
        wait_until(WAIT, "no partition is under-replicated", || {
            Ok((cluster_sum(cluster, "strom_under_replicated_partitions")? == 0.0).then_some(()))
        })?;
        let shrinks_before = cluster_sum(cluster, "strom_isr_shrinks_total")?;

        // Node 3 follows the partitions the others lead.
        cluster.kill9(3)?;
        let bootstrap = cluster.bootstrap_of(&[1, 2]);
        produce(&bootstrap, "replicated").ok();
        wait_until(WAIT, "the partitions node 3 follows are under-replicated", || {
            Ok((cluster_sum(cluster, "strom_under_replicated_partitions")? > 0.0).then_some(()))
        })?;
        // Under-replicated counts a fenced follower at once; the shrink follows its commit.
        wait_until(WAIT, "the leaders count an ISR shrink", || {
            Ok((cluster_sum(cluster, "strom_isr_shrinks_total")? > shrinks_before).then_some(()))
        })?;
        let expands_before = cluster_sum(cluster, "strom_isr_expands_total")?;

        cluster.restart(3)?;
        wait_until(WAIT, "every partition is fully replicated again", || {
            Ok((cluster_sum(cluster, "strom_under_replicated_partitions")? == 0.0).then_some(()))
        })?;
        wait_until(WAIT, "the leaders count an ISR expand", || {
            Ok((cluster_sum(cluster, "strom_isr_expands_total")? > expands_before).then_some(()))
        })?;
        Ok(())
    });
}

/// The gRPC health service's status of the whole server ("") at `node`'s control port.
fn grpc_serving(node: &StromNode) -> anyhow::Result<bool> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let addr = node.control_addr();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await?
            .into_inner();
        Ok(answer.status == ServingStatus::Serving as i32)
    })
}

fn wait_grpc_not_serving(node: &StromNode, what: &str) -> anyhow::Result<()> {
    wait_until(WAIT, what, || Ok((!grpc_serving(node)?).then_some(())))
}

/// `/ready`'s reason once the node answers it not ready (bounded wait).
fn wait_not_ready(node: &StromNode, what: &str) -> anyhow::Result<String> {
    wait_until(WAIT, what, || match node.not_ready_because() {
        Ok(why) => Ok(why),
        // Not listening yet: starting.
        Err(_) => Ok(None),
    })
}

#[test]
fn ready_is_false_while_starting_without_a_quorum_and_while_cut_off_from_it() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let node = |c: &strom_tests::StromCluster| -> anyhow::Result<()> {
            let n = c.node(1);
            ensure!(n.not_ready_because()?.is_none(), "not ready");
            ensure!(grpc_serving(n)?, "gRPC health is not SERVING");
            Ok(())
        };
        wait_until(WAIT, "node 1 is ready", || Ok(node(cluster).is_ok().then_some(())))?;

        // Cut off: the other voters are gone, so no controller answers node 1's heartbeats.
        // Past a session it counts itself fenced (as the next controller will have it).
        cluster.kill9(2)?;
        cluster.kill9(3)?;
        let why = wait_not_ready(cluster.node(1), "node 1 is not ready without a quorum")?;
        assert!(why.contains("fenced"), "{why}");
        // The gRPC health service follows within a moment.
        wait_grpc_not_serving(cluster.node(1), "gRPC health says NOT_SERVING while fenced")?;
        assert_eq!(cluster.node(1).http_get("/health")?.0, 200, "the process is alive");

        // Starting with no quorum to register with: not ready from its first answer on.
        cluster.kill9(1)?;
        cluster.spawn(1)?;
        let first = wait_until(WAIT, "node 1 answers /ready", || {
            Ok(cluster.node(1).http_get("/ready").ok())
        })?;
        assert_eq!(first.0, 503, "ready while starting without a quorum: {}", first.1);
        let why = wait_not_ready(cluster.node(1), "node 1 says why it is not ready")?;
        assert!(why.contains("not registered"), "{why}");
        wait_grpc_not_serving(cluster.node(1), "gRPC health says NOT_SERVING while starting")?;
        let scrape = cluster.node(1).scrape()?;
        assert_eq!(scrape.value("strom_ready", &[]), Some(0.0));

        // The quorum comes back: ready again, on both endpoints.
        cluster.spawn(2)?;
        cluster.spawn(3)?;
        wait_until(WAIT, "node 1 is ready again", || Ok(node(cluster).is_ok().then_some(())))?;
        Ok(())
    });
}

/// Commits `offset` of partition 0 of `topic` for `group` (an assign()-only consumer).
fn commit(bootstrap: &str, group: &str, topic: &str, offset: i64) -> anyhow::Result<()> {
    let consumer = kafka::consumer(bootstrap, &[("group.id", group)])?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))?;
    consumer.commit(&tpl, CommitMode::Sync).context("OffsetCommit")?;
    Ok(())
}

/// Sends a sessionless consumer Fetch of partition 0 of `topic` from `offset` that waits up
/// to `max_wait_ms` for a byte; its answer is read with `read_response`.
fn send_long_poll(
    conn: &mut RawConnection,
    topic: &str,
    offset: i64,
    max_wait_ms: i32,
) -> anyhow::Result<(i32, i16)> {
    let version = conn.max_version(ApiKey::Fetch)?.min(FETCH_VERSION_MAX);
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1024 * 1024)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1024 * 1024)])]);
    let id = conn.send_request(ApiKey::Fetch as i16, version, &request, version)?;
    Ok((id, version))
}

#[test]
fn purgatory_controller_queue_metadata_lag_and_consumer_lag_are_exported() {
    let toml = "metrics.consumer_lag = true\n".to_owned();
    let options = NodeOptions { config_toml: Some(toml), ..NodeOptions::default() };
    with_node(options, |node| {
        let bootstrap = node.bootstrap();
        wait_until(WAIT, "the node is ready", || {
            Ok(node.not_ready_because()?.is_none().then_some(()))
        })?;
        let queued = |s: &strom_tests::http::Scrape| {
            s.value("strom_controller_event_queue_time_seconds", &[]).unwrap_or(0.0)
        };
        let before = node.scrape()?;
        assert_eq!(
            before.value("strom_purgatory_size", &[("delayed_operation", "Produce")]),
            Some(0.0)
        );

        // Each topic creation is one controller request taken off the queue.
        for topic in ["lagged", "polled", "third"] {
            kafka::create_topic(&bootstrap, topic, 1, &[])?;
        }
        let after = node.scrape()?;
        assert!(
            queued(&after) >= queued(&before) + 3.0,
            "event queue count {} -> {}",
            queued(&before),
            queued(&after)
        );
        let processed = after.value("strom_controller_event_queue_processing_time_seconds", &[]);
        assert!(processed.unwrap_or(0.0) >= 3.0, "processing time count {processed:?}");

        // This broker's heartbeats report the metadata it applied: no lag once idle.
        wait_until(WAIT, "broker 1's metadata lag is 0", || {
            let lag = node.scrape()?.value("strom_broker_metadata_lag", &[("broker", "1")]);
            Ok((lag == Some(0.0)).then_some(()))
        })?;

        // A Fetch on an empty partition waits in the purgatory until a record arrives.
        let mut conn = RawConnection::connect(node.kafka_addr())?;
        let (id, version) = send_long_poll(&mut conn, "polled", 0, 15_000)?;
        let fetches = |s: &strom_tests::http::Scrape| {
            s.value("strom_purgatory_size", &[("delayed_operation", "Fetch")]).unwrap_or(0.0)
        };
        wait_until(WAIT, "the long poll is in the fetch purgatory", || {
            Ok((fetches(&node.scrape()?) >= 1.0).then_some(()))
        })?;
        let producer = AckingProducer::new(&bootstrap, &[])?;
        producer.send("polled", 0, Outgoing { value: Some(b"wake"), ..Outgoing::default() })?;
        producer.flush(Duration::from_secs(30))?;
        let answer: FetchResponse = conn.read_response(id, version)?;
        let mut records = answer.responses.iter().flat_map(|t| &t.partitions).map(|p| &p.records);
        ensure!(
            records.any(|r| r.as_ref().is_some_and(|b| !b.is_empty())),
            "the long poll answered no records"
        );
        drop(conn);
        wait_until(WAIT, "the fetch purgatory is empty again", || {
            Ok((fetches(&node.scrape()?) == 0.0).then_some(()))
        })?;

        // A group that committed offset 150 of 200 records lags by 50.
        produce(&bootstrap, "lagged")?;
        commit(&bootstrap, "lag-group", "lagged", 150)?;
        let labels = [("group", "lag-group"), ("topic", "lagged"), ("partition", "0")];
        let want = Some((RECORDS - 150) as f64);
        wait_until(WAIT, "the group's lag is the records it has not committed", || {
            Ok((node.scrape()?.value("strom_consumer_group_lag", &labels) == want).then_some(()))
        })?;
        assert_eq!(node.scrape()?.value("strom_consumer_group_lag_omitted", &[]), Some(0.0));
        Ok(())
    });
}
