//! The partition-leader side of transactions (issue 12) on a real node, read by librdkafka's
//! own read_committed logic: transactional batches hold the last stable offset until their
//! marker; WriteTxnMarkers writes COMMIT and ABORT markers; a read_committed consumer sees
//! committed and plain records and never an aborted or open one, a read_uncommitted consumer
//! sees them all; ListOffsets answers the LSO to read_committed; DescribeProducers shows the
//! producers; and all of it holds after a kill -9 and restart (the aborted index and the open
//! transaction come back from the log).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ApiKey, DescribeProducersRequest, DescribeProducersResponse, ListOffsetsRequest,
    ListOffsetsResponse, ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use strom_tests::kafka;
use strom_tests::raw::{self, RawConnection};
use strom_tests::{with_node, NodeOptions, StromNode};

const TOPIC: &str = "txn-visibility";
const READ_TIMEOUT: Duration = Duration::from_secs(60);

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

fn producer_id(conn: &mut RawConnection) -> anyhow::Result<(i64, i16)> {
    let answer = conn.init_producer_id()?;
    ensure!(answer.error_code == 0, "InitProducerId error {}", answer.error_code);
    Ok((answer.producer_id.0, answer.producer_epoch))
}

fn produce_txn(
    conn: &mut RawConnection,
    (pid, epoch): (i64, i16),
    sequence: i32,
    values: &[&[u8]],
) -> anyhow::Result<i64> {
    let batch = raw::transactional_batch(values, pid, epoch, sequence, 1_700_000_000_000)?;
    let answer = conn.produce_answer(TOPIC, 0, batch)?;
    ensure!(answer.error_code == 0, "transactional produce error {}", answer.error_code);
    Ok(answer.base_offset)
}

fn produce_plain(conn: &mut RawConnection, values: &[&[u8]]) -> anyhow::Result<()> {
    let code = conn.produce(TOPIC, 0, raw::record_batch(values, 1_700_000_000_000)?)?;
    ensure!(code == 0, "plain produce error {code}");
    Ok(())
}

/// Sends one marker and returns the partition's error code.
fn end_txn(
    conn: &mut RawConnection,
    (pid, epoch): (i64, i16),
    commit: bool,
    coordinator_epoch: i32,
) -> anyhow::Result<i16> {
    let marker = WritableTxnMarker::default()
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_transaction_result(commit)
        .with_coordinator_epoch(coordinator_epoch)
        .with_topics(vec![WritableTxnMarkerTopic::default()
            .with_name(name(TOPIC))
            .with_partition_indexes(vec![0])]);
    let request = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
    let version = conn.max_version(ApiKey::WriteTxnMarkers)?;
    let id = conn.send_request(ApiKey::WriteTxnMarkers as i16, version, &request, version)?;
    let response: WriteTxnMarkersResponse = conn.read_response(id, version)?;
    let code = (response.markers.iter())
        .flat_map(|m| m.topics.iter().flat_map(|t| t.partitions.iter()))
        .map(|p| p.error_code)
        .next()
        .context("WriteTxnMarkers answer has no partition")?;
    Ok(code)
}

/// ListOffsets latest at `isolation_level`.
fn latest(conn: &mut RawConnection, isolation_level: i8) -> anyhow::Result<i64> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_isolation_level(isolation_level)
        .with_topics(vec![ListOffsetsTopic::default().with_name(name(TOPIC)).with_partitions(
            vec![ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-1)],
        )]);
    let version = conn.max_version(ApiKey::ListOffsets)?.min(8);
    let id = conn.send_request(ApiKey::ListOffsets as i16, version, &request, version)?;
    let response: ListOffsetsResponse = conn.read_response(id, version)?;
    let p = &response.topics[0].partitions[0];
    ensure!(p.error_code == 0, "ListOffsets error {}", p.error_code);
    Ok(p.offset)
}

/// Every value a consumer at `isolation` reads from the start to the end it can see (the
/// last stable offset for read_committed), by librdkafka's own filtering.
fn read_values(bootstrap: &str, isolation: &str) -> anyhow::Result<Vec<String>> {
    let consumer: BaseConsumer = kafka::consumer(
        bootstrap,
        &[("isolation.level", isolation), ("enable.partition.eof", "true")],
    )?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(TOPIC, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut values = Vec::new();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                let value = message.payload().map(|v| String::from_utf8_lossy(v).into_owned());
                values.push(value.unwrap_or_default());
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(values),
            Some(Err(e)) => bail!("{isolation} consumer: {e}"),
        }
    }
    bail!("{isolation} consumer did not reach the end within {READ_TIMEOUT:?}: read {values:?}")
}

fn check_visibility(node: &StromNode, c_written: bool) -> anyhow::Result<()> {
    let committed = read_values(&node.bootstrap(), "read_committed")?;
    let expected = ["a0", "a1", "n1", "a2", "n2"];
    ensure!(committed == expected, "read_committed read {committed:?}, expected {expected:?}");
    let uncommitted = read_values(&node.bootstrap(), "read_uncommitted")?;
    let mut all = vec!["a0", "a1", "n1", "a2", "b0", "b1", "n2"];
    if c_written {
        all.push("c0");
    }
    ensure!(uncommitted == all, "read_uncommitted read {uncommitted:?}, expected {all:?}");
    Ok(())
}

#[test]
fn read_committed_sees_commits_never_aborts_or_open_transactions_across_a_restart() {
    with_node(NodeOptions::default(), |node| {
        kafka::create_topic(&node.bootstrap(), TOPIC, 1, &[])?;
        let mut conn = RawConnection::connect(node.kafka_addr())?;
        let (a, b, c) = (producer_id(&mut conn)?, producer_id(&mut conn)?, producer_id(&mut conn)?);

        // a: committed around a plain record; the LSO waits for a's marker.
        let a_first = produce_txn(&mut conn, a, 0, &[b"a0", b"a1"])?;
        produce_plain(&mut conn, &[b"n1"])?;
        produce_txn(&mut conn, a, 2, &[b"a2"])?;
        let lso = latest(&mut conn, 1)?;
        ensure!(lso == a_first, "LSO {lso} is not at a's first offset {a_first}");
        ensure!(latest(&mut conn, 0)? == 4, "high watermark");
        ensure!(end_txn(&mut conn, a, true, 0)? == 0, "commit marker refused");
        ensure!(latest(&mut conn, 1)? == 5, "LSO after the commit marker");
        // b: aborted; then a plain record; c stays open.
        produce_txn(&mut conn, b, 0, &[b"b0", b"b1"])?;
        ensure!(end_txn(&mut conn, b, false, 0)? == 0, "abort marker refused");
        produce_plain(&mut conn, &[b"n2"])?;
        let c_first = produce_txn(&mut conn, c, 0, &[b"c0"])?;
        ensure!(latest(&mut conn, 1)? == c_first, "LSO is not at the open transaction");
        // A marker from an older coordinator epoch than b's last one is fenced.
        let fenced = end_txn(&mut conn, b, true, -1)?;
        ensure!(fenced == 52, "stale coordinator epoch: error {fenced}, expected 52");
        check_visibility(node, true)?;

        // DescribeProducers: the three producers, c with its open transaction.
        let request = DescribeProducersRequest::default()
            .with_topics(vec![TopicRequest::default()
                .with_name(name(TOPIC))
                .with_partition_indexes(vec![0])]);
        let id = conn.send_request(ApiKey::DescribeProducers as i16, 0, &request, 0)?;
        let described: DescribeProducersResponse = conn.read_response(id, 0)?;
        let producers = &described.topics[0].partitions[0].active_producers;
        let open: Vec<_> = producers
            .iter()
            .filter(|p| p.current_txn_start_offset >= 0)
            .map(|p| (p.producer_id.0, p.current_txn_start_offset))
            .collect();
        ensure!(producers.len() == 3, "DescribeProducers: {producers:?}");
        ensure!(open == vec![(c.0, c_first)], "open transactions {open:?}");

        // kill -9 and restart: the aborted index and c's open transaction come back.
        node.kill9()?;
        node.restart()?;
        let mut conn = RawConnection::connect(node.kafka_addr())?;
        ensure!(latest(&mut conn, 1)? == c_first, "LSO after restart");
        check_visibility(node, true)?;
        ensure!(end_txn(&mut conn, c, false, 0)? == 0, "abort of c after restart");
        ensure!(latest(&mut conn, 1)? == latest(&mut conn, 0)?, "LSO caught up with the HW");
        check_visibility(node, true)?;
        Ok(())
    });
}
