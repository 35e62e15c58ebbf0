//! Bad input on a raw socket: each case gets Kafka's documented treatment (an error code where
//! the protocol has one, otherwise that one connection closed), and a second client on the same
//! node keeps producing and consuming throughout.

use std::time::Duration;

use anyhow::{ensure, Context};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::StrBytes;
use strom_testkit::{seed_from_env, TestRng};
use strom_tests::raw::{self, RawConnection};
use strom_tests::{kafka, with_node, NodeOptions, StromNode};

/// How long the broker may take to close a connection it must close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(20);
const LIVENESS_TOPIC: &str = "liveness";

// Kafka error codes the cases expect.
const CORRUPT_MESSAGE: i16 = 2;
const MESSAGE_TOO_LARGE: i16 = 10;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const UNSUPPORTED_VERSION: i16 = 35;

/// Starts a node with a topic for the second client, runs `case`, then checks the node still
/// serves that client.
fn with_second_client(case: impl FnOnce(&mut StromNode) -> anyhow::Result<()>) {
    with_node(NodeOptions::default(), |node| {
        kafka::create_topic(&node.bootstrap(), LIVENESS_TOPIC, 1, &[])?;
        // Metadata names the leader as soon as the creation commits; the broker leads the
        // partition once its reconcile has opened the log. A raw client does not retry
        // NOT_LEADER_OR_FOLLOWER as librdkafka does: wait until the leader answers ListOffsets
        // (writing nothing: some cases expect an empty log).
        kafka::watermarks(&node.bootstrap(), LIVENESS_TOPIC, &[0])?;
        case(node)?;
        kafka::assert_node_serves(&node.bootstrap(), LIVENESS_TOPIC, 0)?;
        Ok(())
    });
}

#[test]
fn garbage_bytes_close_only_that_connection() {
    with_second_client(|node| {
        let mut rng = TestRng::new(seed_from_env("garbage_bytes"));
        // A plausible length, then noise: the broker must reject the frame, not wait forever.
        let mut garbage = 60i32.to_be_bytes().to_vec();
        garbage.extend(rng.bytes(60));
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        connection.send_raw(&garbage)?;
        // Pure noise on a second connection, whose first four bytes are its length.
        let mut noise = RawConnection::connect(node.kafka_addr())?;
        noise.send_raw(&rng.bytes(4096))?;
        kafka::assert_node_serves(&node.bootstrap(), LIVENESS_TOPIC, 0)?;
        connection.shutdown_write()?;
        connection.expect_closed(CLOSE_TIMEOUT)?;
        noise.shutdown_write()?;
        noise.expect_closed(CLOSE_TIMEOUT)
    });
}

#[test]
fn truncated_frame_then_close_leaves_other_clients_served() {
    with_second_client(|node| {
        let full = raw::header_only_frame(ApiKey::Metadata as i16, 1, 1);
        let mut frame = 100i32.to_be_bytes().to_vec();
        frame.extend_from_slice(&full[4..]);
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        connection.send_raw(&frame)?;
        // The broker waits for the rest of this frame; everyone else must still be served.
        kafka::assert_node_serves(&node.bootstrap(), LIVENESS_TOPIC, 0)?;
        connection.shutdown_write()?;
        connection.expect_closed(CLOSE_TIMEOUT)
    });
}

#[test]
fn length_prefix_over_socket_request_max_bytes_closes_the_connection() {
    // socket.request.max.bytes defaults to 100 MiB.
    const OVERSIZE: i32 = 200 * 1024 * 1024;
    with_second_client(|node| {
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        let mut frame = OVERSIZE.to_be_bytes().to_vec();
        frame.extend_from_slice(&raw::header_only_frame(ApiKey::Metadata as i16, 1, 1)[4..]);
        connection.send_raw(&frame)?;
        connection.expect_closed(CLOSE_TIMEOUT)?;

        let mut negative = RawConnection::connect(node.kafka_addr())?;
        negative.send_raw(&(-5i32).to_be_bytes())?;
        negative.expect_closed(CLOSE_TIMEOUT)
    });
}

#[test]
fn unknown_api_key_closes_the_connection() {
    with_second_client(|node| {
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        connection.send_raw(&raw::header_only_frame(12_345, 0, 7))?;
        connection.expect_closed(CLOSE_TIMEOUT)
    });
}

#[test]
fn api_versions_v99_is_answered_with_v0_unsupported_version() {
    with_second_client(|node| {
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        let body = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("from-the-future"))
            .with_client_software_version(StrBytes::from_static_str("99"));
        // A future client sends its newest header and body; the body is v3-shaped here.
        let id = connection.send_request(ApiKey::ApiVersions as i16, 99, &body, 3)?;
        let response: ApiVersionsResponse = connection.read_response(id, 0)?;
        ensure!(
            response.error_code == UNSUPPORTED_VERSION,
            "ApiVersions v99 answered error {} (expected {UNSUPPORTED_VERSION})",
            response.error_code
        );
        let api_versions =
            response.api_keys.iter().find(|k| k.api_key == ApiKey::ApiVersions as i16);
        ensure!(
            api_versions.is_some_and(|k| k.min_version == 0 && k.max_version >= 3),
            "the v0 answer must list the supported ApiVersions range, got {:?}",
            response.api_keys
        );
        // The connection stays usable: the client retries with a version it now knows.
        let max = connection.max_version(ApiKey::Produce)?;
        ensure!(max >= 3, "Produce max version {max}");
        Ok(())
    });
}

#[test]
fn produce_with_a_wrong_crc_gets_corrupt_message_and_stores_nothing() {
    with_second_client(|node| {
        let batch = raw::record_batch(&[b"one", b"two"], 1_700_000_000_000)?;
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        let code = connection.produce(LIVENESS_TOPIC, 0, raw::with_wrong_crc(&batch))?;
        ensure!(code == CORRUPT_MESSAGE, "bad CRC answered error {code}");
        // The same connection still works, and the good batch lands at offset 0.
        let code = connection.produce(LIVENESS_TOPIC, 0, batch)?;
        ensure!(code == 0, "valid batch after a corrupt one answered error {code}");
        let marks = kafka::watermarks(&node.bootstrap(), LIVENESS_TOPIC, &[0])?;
        ensure!(marks[&0] == (0, 2), "watermarks {:?}: the corrupt batch was stored", marks[&0]);
        Ok(())
    });
}

#[test]
fn record_over_max_message_bytes_gets_message_too_large() {
    with_second_client(|node| {
        kafka::create_topic(
            &node.bootstrap(),
            "small-records",
            1,
            &[("max.message.bytes", "1024")],
        )?;
        let batch = raw::record_batch(&[&[7u8; 4096]], 1_700_000_000_000)?;
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        let code = connection.produce("small-records", 0, batch)?;
        ensure!(code == MESSAGE_TOO_LARGE, "oversize batch answered error {code}");
        let small = raw::record_batch(&[b"fits"], 1_700_000_000_000)?;
        let code = connection.produce("small-records", 0, small)?;
        ensure!(code == 0, "small batch answered error {code}");
        Ok(())
    });
}

#[test]
fn produce_to_an_invalid_topic_name_gets_invalid_topic_exception() {
    with_second_client(|node| {
        let batch = raw::record_batch(&[b"nowhere"], 1_700_000_000_000)?;
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        let code = connection.produce("not a valid/topic!", 0, batch)?;
        ensure!(code == INVALID_TOPIC_EXCEPTION, "invalid topic name answered error {code}");
        Ok(())
    });
}

#[test]
fn produce_to_a_missing_partition_gets_unknown_topic_or_partition() {
    const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    with_second_client(|node| {
        let batch = raw::record_batch(&[b"nowhere"], 1_700_000_000_000)?;
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        // LIVENESS_TOPIC has one partition.
        let code = connection.produce(LIVENESS_TOPIC, 7, batch)?;
        ensure!(code == UNKNOWN_TOPIC_OR_PARTITION, "missing partition answered error {code}");
        Ok(())
    });
}

#[test]
fn fetch_past_the_log_end_gets_offset_out_of_range() {
    const OFFSET_OUT_OF_RANGE: i16 = 1;
    with_second_client(|node| {
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        let code = connection.produce(LIVENESS_TOPIC, 0, raw::record_batch(&[b"a", b"b"], 1)?)?;
        ensure!(code == 0, "produce answered error {code}");
        let (code, high_watermark) = connection.fetch(LIVENESS_TOPIC, 0, 0)?;
        ensure!(
            code == 0 && high_watermark == 2,
            "fetch from 0: error {code}, hw {high_watermark}"
        );
        // Fetching at the log end is valid (nothing yet); past it is out of range.
        let (code, _) = connection.fetch(LIVENESS_TOPIC, 0, 2)?;
        ensure!(code == 0, "fetch at the log end answered error {code}");
        let (code, _) = connection.fetch(LIVENESS_TOPIC, 0, 1_000)?;
        ensure!(code == OFFSET_OUT_OF_RANGE, "fetch past the log end answered error {code}");
        Ok(())
    });
}

#[test]
fn pipelined_requests_are_answered_in_request_order() {
    // A Produce with acks=-1 waits for fsync; the cheap requests after it must not overtake it.
    const ROUNDS: usize = 20;
    with_second_client(|node| {
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        let produce_version =
            connection.max_version(ApiKey::Produce)?.min(raw::PRODUCE_VERSION_MAX);
        let mut sent = Vec::new();
        for round in 0..ROUNDS {
            let value = format!("pipelined-{round}");
            let batch = raw::record_batch(&[value.as_bytes()], 1_700_000_000_000)?;
            let id = connection.send_produce(LIVENESS_TOPIC, 0, batch, produce_version)?;
            sent.push((id, true));
            let body = ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("strom-tests"))
                .with_client_software_version(StrBytes::from_static_str("0"));
            let id = connection.send_request(ApiKey::ApiVersions as i16, 3, &body, 3)?;
            sent.push((id, false));
        }
        // read_response fails unless the next frame carries the expected correlation id.
        for (id, is_produce) in sent {
            if is_produce {
                let response = connection.read_response(id, produce_version)?;
                let code = raw::produce_error_code(&response, 0)?;
                ensure!(code == 0, "pipelined produce {id} answered error {code}");
            } else {
                let response: ApiVersionsResponse = connection.read_response(id, 3)?;
                ensure!(response.error_code == 0, "ApiVersions {id}: {}", response.error_code);
            }
        }
        Ok(())
    });
}

#[test]
fn hostile_array_counts_close_only_that_connection() {
    with_second_client(|node| {
        // Metadata v12 (flexible): a compact topics array claiming 2^32 - 2 elements, then
        // nothing; and Metadata v1 claiming 2^31 - 1. A decoder that sizes the array first
        // asks for hundreds of gigabytes: the broker must refuse the frame, not abort.
        let mut flexible = 0i32.to_be_bytes().to_vec();
        flexible.extend_from_slice(&3i16.to_be_bytes());
        flexible.extend_from_slice(&12i16.to_be_bytes());
        flexible.extend_from_slice(&7i32.to_be_bytes());
        flexible.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
        flexible.push(0); // no tagged fields
        flexible.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let mut classic = 0i32.to_be_bytes().to_vec();
        classic.extend_from_slice(&3i16.to_be_bytes());
        classic.extend_from_slice(&1i16.to_be_bytes());
        classic.extend_from_slice(&8i32.to_be_bytes());
        classic.extend_from_slice(&(-1i16).to_be_bytes());
        classic.extend_from_slice(&i32::MAX.to_be_bytes());
        for mut frame in [flexible, classic] {
            let len = (frame.len() - 4) as i32;
            frame[..4].copy_from_slice(&len.to_be_bytes());
            let mut connection = RawConnection::connect(node.kafka_addr())?;
            connection.send_raw(&frame)?;
            connection.expect_closed(CLOSE_TIMEOUT)?;
            kafka::assert_node_serves(&node.bootstrap(), LIVENESS_TOPIC, 0)?;
        }
        Ok(())
    });
}

/// KIP-110: zstd is known to Produce v7+ and Fetch v10+ clients only. An older Produce carrying
/// a zstd batch is refused with UNSUPPORTED_COMPRESSION_TYPE and stores nothing; an older
/// Fetch of zstd batches gets the same code instead of records it cannot read.
#[test]
fn zstd_below_produce_v7_and_fetch_v10_gets_unsupported_compression_type() {
    const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    const TOPIC: &str = "zstd-only";
    with_second_client(|node| {
        kafka::create_topic(&node.bootstrap(), TOPIC, 1, &[])?;
        let producer =
            kafka::AckingProducer::new(&node.bootstrap(), &[("compression.codec", "zstd")])?;
        for id in 0..2 {
            // Compressible: librdkafka sends a batch uncompressed when zstd would not shrink it.
            let value = format!("zstd-{id}-{}", "z".repeat(2_000));
            let record = kafka::Outgoing {
                partition: Some(0),
                value: Some(value.as_bytes()),
                ..kafka::Outgoing::default()
            };
            producer.send(TOPIC, id, record)?;
        }
        producer.flush(Duration::from_secs(30))?;
        ensure!(producer.acked() == 2, "acked {}", producer.acked());

        let mut connection = RawConnection::connect(node.kafka_addr())?;
        let served = connection.fetch_partition(10, TOPIC, 0, 0)?;
        ensure!(served.error_code == 0, "Fetch v10 answered error {}", served.error_code);
        // The producer's own zstd batch, as stored: attributes' low bits say 4 (zstd).
        let batch = served.records.context("Fetch v10 returned no records")?;
        let attributes = i16::from_be_bytes([batch[21], batch[22]]);
        ensure!(attributes & 7 == 4, "the stored batch is not zstd: attributes {attributes}");
        let old = connection.fetch_partition(9, TOPIC, 0, 0)?;
        ensure!(
            old.error_code == UNSUPPORTED_COMPRESSION_TYPE,
            "Fetch v9 of zstd batches answered error {}",
            old.error_code
        );

        let id = connection.send_produce(TOPIC, 0, batch.clone(), 6)?;
        let refused = connection.read_produce_answer(id, 6, 0)?;
        ensure!(
            refused.error_code == UNSUPPORTED_COMPRESSION_TYPE,
            "Produce v6 of a zstd batch answered error {}",
            refused.error_code
        );
        let marks = kafka::watermarks(&node.bootstrap(), TOPIC, &[0])?;
        ensure!(marks[&0] == (0, 2), "watermarks {:?}: the refused batch was stored", marks[&0]);
        let id = connection.send_produce(TOPIC, 0, batch, 7)?;
        let stored = connection.read_produce_answer(id, 7, 0)?;
        ensure!(stored.error_code == 0, "Produce v7 of zstd answered error {}", stored.error_code);
        // Uncompressed batches are fine at any version.
        let plain = raw::record_batch(&[b"plain"], 1_700_000_000_000)?;
        let id = connection.send_produce(TOPIC, 0, plain, 3)?;
        let plain = connection.read_produce_answer(id, 3, 0)?;
        ensure!(plain.error_code == 0, "Produce v3 uncompressed answered {}", plain.error_code);
        Ok(())
    });
}

/// DescribeTopicPartitions (API 75) with limits and cursors a client should never send: each
/// is answered as Kafka's broker answers it, and none costs more than its page.
#[test]
fn describe_topic_partitions_with_hostile_limits_and_cursors_is_answered() {
    use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
    use kafka_protocol::messages::{
        DescribeTopicPartitionsRequest as Request, DescribeTopicPartitionsResponse as Response,
        TopicName,
    };
    const INVALID_REQUEST: i16 = 42;
    let name = |n: &str| TopicName(StrBytes::from_string(n.to_owned()));
    let request =
        |topics: &[&str], limit: i32, cursor: Option<(&str, i32)>| {
            Request::default()
                .with_topics(
                    topics.iter().map(|t| TopicRequest::default().with_name(name(t))).collect(),
                )
                .with_response_partition_limit(limit)
                .with_cursor(cursor.map(|(t, i)| {
                    Cursor::default().with_topic_name(name(t)).with_partition_index(i)
                }))
        };
    // (topic name, error, partition count) of each listed topic, and the next cursor.
    type Listed = (Vec<(String, i16, usize)>, Option<(String, i32)>);
    let ask = |connection: &mut RawConnection, req: &Request| -> anyhow::Result<Listed> {
        let id = connection.send_request(ApiKey::DescribeTopicPartitions as i16, 0, req, 0)?;
        let resp: Response = connection.read_response(id, 0)?;
        let topics = resp
            .topics
            .iter()
            .map(|t| {
                let n = t.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
                (n, t.error_code, t.partitions.len())
            })
            .collect();
        let cursor = resp.next_cursor.map(|c| (c.topic_name.to_string(), c.partition_index));
        Ok((topics, cursor))
    };
    with_second_client(|node| {
        let mut connection = RawConnection::connect(node.kafka_addr())?;
        let liveness = || (LIVENESS_TOPIC.to_string(), 0, 1);
        let all = |topics: Vec<(String, i16, usize)>| (topics, None);
        // i32::MAX partitions asked: capped, nothing sized by it. (The node may have
        // created `__consumer_offsets` for the liveness client too.)
        let (every, cursor) = ask(&mut connection, &request(&[], i32::MAX, None))?;
        ensure!(
            cursor.is_none() && every.contains(&liveness()) && every.iter().all(|t| t.1 == 0),
            "limit i32::MAX: {every:?} {cursor:?}"
        );
        // 0: no partition, the next page starts at the first topic; negative: nothing.
        let first = every[0].0.clone();
        let listed = ask(&mut connection, &request(&[], 0, None))?;
        ensure!(listed == (vec![], Some((first, 0))), "limit 0: {listed:?}");
        let listed = ask(&mut connection, &request(&[], i32::MIN, None))?;
        ensure!(listed == (vec![], None), "limit i32::MIN: {listed:?}");
        // Cursors past the last partition and past the last topic.
        let past = request(&[LIVENESS_TOPIC], i32::MAX, Some((LIVENESS_TOPIC, i32::MAX)));
        let listed = ask(&mut connection, &past)?;
        ensure!(listed == all(vec![(LIVENESS_TOPIC.into(), 0, 0)]), "past the end: {listed:?}");
        let listed = ask(&mut connection, &request(&[], 10, Some(("~~~", 0))))?;
        ensure!(listed == (vec![], None), "past the last topic: {listed:?}");
        let listed = ask(&mut connection, &request(&[], 10, Some((LIVENESS_TOPIC, -7))))?;
        ensure!(listed == all(vec![liveness()]), "negative cursor: {listed:?}");
        // 10,000 copies of one name are one topic; with a cursor on a topic not named, Kafka
        // answers INVALID_REQUEST for each name sent.
        let copies = vec![LIVENESS_TOPIC; 10_000];
        let listed = ask(&mut connection, &request(&copies, 2000, None))?;
        ensure!(listed == all(vec![liveness()]), "10,000 copies: {listed:?}");
        let listed = ask(&mut connection, &request(&copies, 2000, Some(("other", 0))))?;
        ensure!(
            listed.0.len() == copies.len()
                && listed
                    .0
                    .iter()
                    .all(|(n, e, p)| n == LIVENESS_TOPIC && *e == INVALID_REQUEST && *p == 0),
            "cursor not among the topics: {} topics, first {:?}",
            listed.0.len(),
            listed.0.first()
        );
        Ok(())
    });
}
