//! Produce → consume round trips through one node: volume with keys and headers, every
//! compression codec, a 1 MB record, and ListOffsets by timestamp.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, ensure, Context};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use strom_testkit::{seed_from_env, RecordFixture, RecordFixtures};
use strom_tests::kafka::{self, Ack, AckingProducer, Consumed, Outgoing};
use strom_tests::{segment, with_node, NodeOptions, CLIENT_TIMEOUT, CONSUME_TIMEOUT};

fn outgoing(record: &RecordFixture) -> Outgoing<'_> {
    Outgoing {
        partition: None,
        key: Some(&record.key),
        value: record.value.as_deref(),
        headers: &record.headers,
        timestamp_ms: None,
    }
}

/// Checks that `consumed` holds exactly `records` at their acknowledged offsets, byte for byte,
/// with contiguous offsets from 0 and per-partition produce order kept.
fn check_exact(
    records: &[RecordFixture],
    acks: &[Ack],
    consumed: &[Consumed],
) -> anyhow::Result<()> {
    ensure!(
        consumed.len() == records.len(),
        "consumed {} records, produced {}",
        consumed.len(),
        records.len()
    );
    let mut by_position: HashMap<(i32, i64), &Consumed> = HashMap::new();
    for record in consumed {
        if by_position.insert((record.partition, record.offset), record).is_some() {
            bail!("offset {} of partition {} consumed twice", record.offset, record.partition);
        }
    }
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    let mut partition_of_key: HashMap<&[u8], i32> = HashMap::new();
    for (record, ack) in records.iter().zip(acks) {
        let got = by_position.get(&(ack.partition, ack.offset)).with_context(|| {
            format!("record {} acked at {ack:?} was not consumed", record.index)
        })?;
        ensure!(
            got.key.as_deref() == Some(&record.key[..])
                && got.value == record.value
                && got.headers == record.headers,
            "record {} at {ack:?} differs:\n  produced key={:?} value={:?} headers={:?}\n  \
             consumed key={:?} value={:?} headers={:?}",
            record.index,
            record.key,
            record.value,
            record.headers,
            got.key,
            got.value,
            got.headers
        );
        if let Some(previous) = last_offset.insert(ack.partition, ack.offset) {
            ensure!(
                previous < ack.offset,
                "record {} got offset {} in partition {} after an earlier record got {previous}",
                record.index,
                ack.offset,
                ack.partition
            );
        }
        let partition = *partition_of_key.entry(&record.key).or_insert(ack.partition);
        ensure!(partition == ack.partition, "key {:?} landed in two partitions", record.key);
    }
    let mut per_partition: HashMap<i32, Vec<i64>> = HashMap::new();
    for record in consumed {
        per_partition.entry(record.partition).or_default().push(record.offset);
    }
    for (partition, offsets) in per_partition {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        ensure!(
            offsets == expected,
            "partition {partition} was not read back as contiguous offsets from 0 in order"
        );
    }
    Ok(())
}

/// Produces `records` to `topic`, waits for every acknowledgement, returns them in order.
fn produce_all(
    bootstrap: &str,
    topic: &str,
    records: &[RecordFixture],
    extra: &[(&str, &str)],
) -> anyhow::Result<Vec<Ack>> {
    let producer = AckingProducer::new(bootstrap, extra)?;
    for record in records {
        producer.send(topic, record.index, outgoing(record))?;
    }
    producer.flush(CONSUME_TIMEOUT)?;
    producer.acks_of(0..records.len())
}

#[test]
fn hundred_thousand_keyed_records_with_headers_round_trip_byte_for_byte_in_partition_order() {
    const RECORDS: usize = 100_000;
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        let topic = "round-trip";
        kafka::create_topic(&bootstrap, topic, 3, &[])?;
        let seed = seed_from_env("hundred_thousand_keyed_records");
        let records = RecordFixtures::new(seed).take(RECORDS);
        let acks = produce_all(&bootstrap, topic, &records, &[])?;
        let used: HashSet<i32> = acks.iter().map(|a| a.partition).collect();
        ensure!(used.len() == 3, "keys spread over partitions {used:?}, expected all 3");
        let consumed = kafka::consume_all(&bootstrap, topic, &[0, 1, 2], &[])?;
        check_exact(&records, &acks, &consumed)
    });
}

#[test]
fn every_compression_codec_round_trips_and_is_stored_compressed() {
    const RECORDS: usize = 3_000;
    // (librdkafka name, codec id in the batch attributes)
    const CODECS: [(&str, i16); 4] = [("gzip", 1), ("snappy", 2), ("lz4", 3), ("zstd", 4)];
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        let seed = seed_from_env("every_compression_codec");
        for (codec, codec_id) in CODECS {
            let topic = format!("codec-{codec}");
            kafka::create_topic(&bootstrap, &topic, 1, &[])?;
            let mut fixtures = RecordFixtures::new(seed);
            // Values that compress well: librdkafka sends a batch uncompressed when the codec
            // does not make it smaller.
            fixtures.compressible = true;
            let records = fixtures.take(RECORDS);
            let acks = produce_all(
                &bootstrap,
                &topic,
                &records,
                &[("compression.type", codec), ("linger.ms", "20")],
            )
            .with_context(|| format!("produce with {codec}"))?;
            let consumed = kafka::consume_all(&bootstrap, &topic, &[0], &[])?;
            check_exact(&records, &acks, &consumed).with_context(|| format!("codec {codec}"))?;

            let path = segment::first_segment(&node.partition_dir(&topic, 0))?;
            let (_, batches) = segment::read_batches(&path)?;
            ensure!(!batches.is_empty(), "{codec}: no batch in {}", path.display());
            // librdkafka only compresses with lz4 when the broker lists FindCoordinator in
            // ApiVersions (its proxy for "Kafka >= 0.8.2"), else it silently sends plain batches.
            let hint = if codec == "lz4" {
                " (does ApiVersions list FindCoordinator? librdkafka needs it to use lz4)"
            } else {
                ""
            };
            // A batch of a few records may not get smaller (librdkafka then sends it plain);
            // under load the first records often leave alone. Every larger batch is compressed,
            // and so is at least one.
            let compressed = batches.iter().filter(|b| b.codec() == codec_id).count();
            ensure!(compressed > 0, "{codec}: no batch stored compressed{hint}");
            for batch in batches.iter().filter(|b| b.next_offset() - b.base_offset >= 16) {
                ensure!(
                    batch.codec() == codec_id,
                    "{codec}: batch at offset {} is stored with codec {} (expected {codec_id}): \
                     the producer did not compress or the broker did not store its batch as \
                     sent{hint}",
                    batch.base_offset,
                    batch.codec()
                );
            }
        }
        Ok(())
    });
}

#[test]
fn one_megabyte_record_round_trips() {
    const VALUE_BYTES: usize = 1_000_000;
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        let topic = "large";
        kafka::create_topic(&bootstrap, topic, 1, &[])?;
        let seed = seed_from_env("one_megabyte_record");
        let mut rng = strom_testkit::TestRng::new(seed);
        let large = rng.bytes(VALUE_BYTES);
        let values: [&[u8]; 3] = [b"before", &large, b"after"];
        // librdkafka's own limit defaults to 1,000,000 bytes for a whole message set.
        let producer = AckingProducer::new(&bootstrap, &[("message.max.bytes", "2000000")])?;
        for (id, value) in values.iter().enumerate() {
            producer.send(
                topic,
                id,
                Outgoing { partition: Some(0), value: Some(value), ..Outgoing::default() },
            )?;
            producer.flush(CLIENT_TIMEOUT)?;
        }
        let acks = producer.acks_of(0..values.len())?;
        let consumed = kafka::consume_all(&bootstrap, topic, &[0], &[])?;
        ensure!(consumed.len() == 3, "consumed {} records, expected 3", consumed.len());
        for ((value, ack), got) in values.iter().zip(&acks).zip(&consumed) {
            ensure!(got.offset == ack.offset, "offset {} != acked {}", got.offset, ack.offset);
            ensure!(
                got.value.as_deref() == Some(*value),
                "record at offset {} differs ({} bytes read, {} produced)",
                got.offset,
                got.value.as_ref().map_or(0, Vec::len),
                value.len()
            );
        }
        Ok(())
    });
}

#[test]
fn list_offsets_by_time_returns_first_offset_at_or_after_the_timestamp() {
    // Ten records one second apart: the first five each in its own batch, the last five in one
    // batch, so the lookup must work across and inside batches.
    const RECORDS: i64 = 10;
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        let topic = "by-time";
        kafka::create_topic(&bootstrap, topic, 1, &[])?;
        // A recent base, so that no retention rule applies to these timestamps.
        let base_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64
                - 3_600_000;
        let producer = AckingProducer::new(&bootstrap, &[("linger.ms", "50")])?;
        for i in 0..RECORDS {
            let value = format!("at-{i}");
            producer.send(
                topic,
                i as usize,
                Outgoing {
                    partition: Some(0),
                    value: Some(value.as_bytes()),
                    timestamp_ms: Some(base_ms + i * 1000),
                    ..Outgoing::default()
                },
            )?;
            if i < 5 {
                producer.flush(CLIENT_TIMEOUT)?;
            }
        }
        producer.flush(CLIENT_TIMEOUT)?;
        let acks = producer.acks_of(0..RECORDS as usize)?;
        let offsets: Vec<i64> = acks.iter().map(|a| a.offset).collect();
        ensure!(offsets == (0..RECORDS).collect::<Vec<_>>(), "acked offsets {offsets:?}");

        let consumer = kafka::consumer(&bootstrap, &[])?;
        // (query timestamp, expected offset; None = no such record, Kafka answers -1)
        let mut cases: Vec<(i64, Option<i64>)> = vec![
            (base_ms - 10_000, Some(0)),
            (base_ms, Some(0)),
            (base_ms + 1, Some(1)),
            (base_ms + 2_500, Some(3)),
            (base_ms + 4_000, Some(4)),
            (base_ms + 6_000, Some(6)),
            (base_ms + 6_999, Some(7)),
            (base_ms + 9_000, Some(9)),
            (base_ms + 9_001, None),
        ];
        for (timestamp, expected) in cases.drain(..) {
            let mut query = TopicPartitionList::new();
            query.add_partition_offset(topic, 0, Offset::Offset(timestamp))?;
            let answer = consumer.offsets_for_times(query, CLIENT_TIMEOUT)?;
            let element = answer
                .elements_for_topic(topic)
                .into_iter()
                .find(|e| e.partition() == 0)
                .context("no answer for partition 0")?;
            element.error().with_context(|| format!("ListOffsets for {timestamp}"))?;
            let got = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                Offset::End => None,
                other => bail!("ListOffsets for {timestamp} answered {other:?}"),
            };
            ensure!(
                got == expected,
                "ListOffsets for timestamp base+{} answered {got:?}, expected {expected:?}",
                timestamp - base_ms
            );
        }
        Ok(())
    });
}
