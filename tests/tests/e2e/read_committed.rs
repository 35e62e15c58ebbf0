//! The partition-leader side of transactions (issue 12) on a real node, read by librdkafka's
//! own read_committed logic: transactional batches hold the last stable offset until their
//! marker; WriteTxnMarkers writes COMMIT and ABORT markers; a read_committed consumer sees
//! committed and plain records and never an aborted or open one, a read_uncommitted consumer
//! sees them all; ListOffsets answers the LSO to read_committed; DescribeProducers shows the
//! producers; and all of it holds after a kill -9 and restart (the aborted index and the open
//! transaction come back from the log).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, DescribeProducersRequest,
    DescribeProducersResponse, EndTxnRequest, EndTxnResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest,
    ListOffsetsResponse, ProduceRequest, ProduceResponse, ProducerId, TopicName, TransactionalId,
    WriteTxnMarkersRequest, WriteTxnMarkersResponse,
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

/// Sends `request` at the highest version both sides know (at most `max`) and reads its answer.
fn call<Req, Resp>(
    conn: &mut RawConnection,
    key: ApiKey,
    max: i16,
    request: &Req,
) -> anyhow::Result<Resp>
where
    Req: kafka_protocol::protocol::Encodable + kafka_protocol::protocol::HeaderVersion,
    Resp: kafka_protocol::protocol::Decodable + kafka_protocol::protocol::HeaderVersion,
{
    let version = conn.max_version(key)?.min(max);
    let id = conn.send_request(key as i16, version, request, version)?;
    conn.read_response(id, version)
}

fn txn_key(txn_id: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(txn_id.to_owned()))
}

/// A transactional producer's id and epoch from the coordinator (a single node coordinates
/// every id; its topic is made on the first lookup, then the id's shard loads).
fn init_txn(conn: &mut RawConnection, txn_id: &str) -> anyhow::Result<(i64, i16)> {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let find = FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_key(StrBytes::from_string(txn_id.to_owned()));
        let _: FindCoordinatorResponse = call(conn, ApiKey::FindCoordinator, 3, &find)?;
        let init = InitProducerIdRequest::default()
            .with_transactional_id(Some(txn_key(txn_id)))
            .with_transaction_timeout_ms(60_000);
        let answer: InitProducerIdResponse = call(conn, ApiKey::InitProducerId, 4, &init)?;
        if answer.error_code == 0 {
            return Ok((answer.producer_id.0, answer.producer_epoch));
        }
        ensure!(Instant::now() < deadline, "InitProducerId {txn_id}: error {}", answer.error_code);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// AddPartitionsToTxn of the test topic's partition 0.
fn add_partition(
    conn: &mut RawConnection,
    txn_id: &str,
    (pid, epoch): (i64, i16),
) -> anyhow::Result<()> {
    let add = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(txn_key(txn_id))
        .with_v3_and_below_producer_id(ProducerId(pid))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
            .with_name(name(TOPIC))
            .with_partitions(vec![0])]);
    let added: AddPartitionsToTxnResponse = call(conn, ApiKey::AddPartitionsToTxn, 3, &add)?;
    let codes: Vec<i16> = (added.results_by_topic_v3_and_below.iter())
        .flat_map(|t| t.results_by_partition.iter().map(|p| p.partition_error_code))
        .collect();
    ensure!(codes == vec![0], "AddPartitionsToTxn {txn_id}: {codes:?}");
    Ok(())
}

/// EndTxn through the coordinator, retried while it is busy; then waits until the marker
/// has moved the LSO up to the high watermark (nothing else is open then).
fn end_txn(
    conn: &mut RawConnection,
    txn_id: &str,
    (pid, epoch): (i64, i16),
    commit: bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let end = EndTxnRequest::default()
            .with_transactional_id(txn_key(txn_id))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_committed(commit);
        let ended: EndTxnResponse = call(conn, ApiKey::EndTxn, 3, &end)?;
        if ended.error_code == 0 {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "EndTxn {txn_id}: error {}", ended.error_code);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until nothing is open: the last stable offset equals the high watermark (both read
/// again each time: a marker written meanwhile moves both).
fn wait_stable(conn: &mut RawConnection) -> anyhow::Result<()> {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let (lso, hw) = (latest(conn, 1)?, latest(conn, 0)?);
        if lso == hw {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "LSO stayed at {lso}, high watermark {hw}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the last stable offset has caught up with `offset`.
fn wait_lso(conn: &mut RawConnection, offset: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let lso = latest(conn, 1)?;
        if lso == offset {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "LSO stayed at {lso}, expected {offset}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kafka's NOT_LEADER_OR_FOLLOWER: a partition not served yet (its log opens once the node
/// has reconciled the new topic); clients retry it.
const NOT_LEADER_OR_FOLLOWER: i16 = 6;

/// A produce of one transactional batch of `txn_id`'s producer (retried while the partition is
/// not served yet); the partition's error code and base offset.
fn produce_in_txn(
    conn: &mut RawConnection,
    txn_id: &str,
    producer: (i64, i16),
    sequence: i32,
    values: &[&[u8]],
) -> anyhow::Result<(i16, i64)> {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let answer = produce_in_txn_once(conn, txn_id, producer, sequence, values)?;
        if answer.0 != NOT_LEADER_OR_FOLLOWER || Instant::now() >= deadline {
            return Ok(answer);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn produce_in_txn_once(
    conn: &mut RawConnection,
    txn_id: &str,
    (pid, epoch): (i64, i16),
    sequence: i32,
    values: &[&[u8]],
) -> anyhow::Result<(i16, i64)> {
    let batch = raw::transactional_batch(values, pid, epoch, sequence, 1_700_000_000_000)?;
    let request = ProduceRequest::default()
        .with_transactional_id(Some(txn_key(txn_id)))
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(TOPIC))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    let response: ProduceResponse =
        call(conn, ApiKey::Produce, raw::PRODUCE_VERSION_MAX, &request)?;
    let p = (response.responses.iter())
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == 0)
        .context("Produce response has no entry for the partition")?;
    Ok((p.error_code, p.base_offset))
}

/// [`produce_in_txn`] that must succeed; the batch's base offset.
fn produce_txn(
    conn: &mut RawConnection,
    txn_id: &str,
    producer: (i64, i16),
    sequence: i32,
    values: &[&[u8]],
) -> anyhow::Result<i64> {
    let (code, offset) = produce_in_txn(conn, txn_id, producer, sequence, values)?;
    ensure!(code == 0, "transactional produce of {txn_id}: error {code}");
    Ok(offset)
}

fn produce_plain(conn: &mut RawConnection, values: &[&[u8]]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let code = conn.produce(TOPIC, 0, raw::record_batch(values, 1_700_000_000_000)?)?;
        if code == 0 {
            return Ok(());
        }
        ensure!(
            code == NOT_LEADER_OR_FOLLOWER && Instant::now() < deadline,
            "plain produce error {code}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes one marker directly (as a coordinator would) and returns the partition's error code.
fn write_marker(
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
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let id = conn.send_request(ApiKey::ListOffsets as i16, version, &request, version)?;
        let response: ListOffsetsResponse = conn.read_response(id, version)?;
        let p = &response.topics[0].partitions[0];
        if p.error_code == 0 {
            return Ok(p.offset);
        }
        // A restarted node serves the partition once it has reopened the log.
        ensure!(
            p.error_code == NOT_LEADER_OR_FOLLOWER && Instant::now() < deadline,
            "ListOffsets error {}",
            p.error_code
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
        let (a, b, c) =
            (init_txn(&mut conn, "a")?, init_txn(&mut conn, "b")?, init_txn(&mut conn, "c")?);

        // a: committed around a plain record; the LSO waits for a's marker.
        add_partition(&mut conn, "a", a)?;
        let a_first = produce_txn(&mut conn, "a", a, 0, &[b"a0", b"a1"])?;
        produce_plain(&mut conn, &[b"n1"])?;
        produce_txn(&mut conn, "a", a, 2, &[b"a2"])?;
        let lso = latest(&mut conn, 1)?;
        ensure!(lso == a_first, "LSO {lso} is not at a's first offset {a_first}");
        ensure!(latest(&mut conn, 0)? == 4, "high watermark");
        end_txn(&mut conn, "a", a, true)?;
        wait_lso(&mut conn, 5)?; // past the commit marker at 4
                                 // b: aborted; then a plain record; c stays open.
        add_partition(&mut conn, "b", b)?;
        produce_txn(&mut conn, "b", b, 0, &[b"b0", b"b1"])?;
        end_txn(&mut conn, "b", b, false)?;
        wait_lso(&mut conn, 8)?; // past the abort marker at 7
        produce_plain(&mut conn, &[b"n2"])?;
        add_partition(&mut conn, "c", c)?;
        let c_first = produce_txn(&mut conn, "c", c, 0, &[b"c0"])?;
        ensure!(latest(&mut conn, 1)? == c_first, "LSO is not at the open transaction");
        // A marker from an older coordinator epoch than b's last one is fenced.
        let fenced = write_marker(&mut conn, b, true, -1)?;
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

        // kill -9 and restart: the aborted index and c's open transaction come back from the
        // log; the coordinator (reloaded from its own log) then aborts c.
        node.kill9()?;
        node.restart()?;
        let mut conn = RawConnection::connect(node.kafka_addr())?;
        ensure!(latest(&mut conn, 1)? == c_first, "LSO after restart");
        check_visibility(node, true)?;
        end_txn(&mut conn, "c", c, false)?;
        wait_stable(&mut conn)?;
        check_visibility(node, true)?;
        Ok(())
    });
}

#[test]
fn a_transactional_produce_outside_its_transaction_is_refused_and_the_lso_never_hangs() {
    const INVALID_TXN_STATE: i16 = 48;
    const NOT_ENOUGH_REPLICAS: i16 = 19;
    with_node(NodeOptions::default(), |node| {
        kafka::create_topic(&node.bootstrap(), TOPIC, 1, &[])?;
        let mut conn = RawConnection::connect(node.kafka_addr())?;
        let txn = "kip-890";
        let producer = init_txn(&mut conn, txn)?;
        // Never added: refused, nothing written.
        let (code, _) = produce_in_txn(&mut conn, txn, producer, 0, &[b"stray"])?;
        ensure!(code == INVALID_TXN_STATE, "produce before AddPartitionsToTxn: error {code}");
        ensure!(latest(&mut conn, 0)? == 0, "the refused batch was written");

        // Added: accepted; aborted; then a late batch of that transaction is refused.
        add_partition(&mut conn, txn, producer)?;
        produce_txn(&mut conn, txn, producer, 0, &[b"in"])?;
        end_txn(&mut conn, txn, producer, false)?;
        wait_stable(&mut conn)?;
        // While the coordinator completes the abort it answers CONCURRENT_TRANSACTIONS, which
        // a leader passes on as retriable NOT_ENOUGH_REPLICAS; then the refusal.
        let deadline = Instant::now() + READ_TIMEOUT;
        let late = loop {
            let (code, _) = produce_in_txn(&mut conn, txn, producer, 1, &[b"late"])?;
            if code != NOT_ENOUGH_REPLICAS || Instant::now() >= deadline {
                break code;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        ensure!(late == INVALID_TXN_STATE, "a late batch after the abort: error {late}");
        let (lso, hw) = (latest(&mut conn, 1)?, latest(&mut conn, 0)?);
        ensure!(lso == hw, "a transaction hangs: LSO {lso}, high watermark {hw}");
        Ok(())
    });
}
