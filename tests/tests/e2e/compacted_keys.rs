//! A compacted topic refuses records without a key (Kafka's rule, reported per record as
//! KIP-467 asks), whatever the batch's codec: librdkafka fails the keyless records with
//! INVALID_RECORD and the keyed ones of the same batch with its "invalid different record",
//! which it can only tell from the response's `record_errors`. Nothing of the refused batch is
//! appended; another partition in the same request, and keyed batches, are.

use std::collections::HashMap;

use anyhow::ensure;
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::{with_node, NodeOptions, CLIENT_TIMEOUT};

const TOPIC: &str = "compacted-keys";
/// Keys of the mixed batch sent to partition 0: two of its four records have none.
const MIXED: [Option<&[u8]>; 4] = [Some(b"k0"), None, Some(b"k2"), None];
/// Keyed records sent to partition 1 in the same request.
const KEYED: usize = 4;

#[test]
fn compacted_topic_refuses_keyless_records_per_record_in_every_codec() {
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, TOPIC, 2, &[("cleanup.policy", "compact")])?;
        let mut accepted = 0i64;
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            // One batch per partition, both in one request: a long linger, flushed at once.
            let producer = AckingProducer::new(
                &bootstrap,
                &[("compression.type", codec), ("linger.ms", "1000"), ("retries", "0")],
            )?;
            let mut id = 0;
            for key in MIXED {
                let record = Outgoing {
                    partition: Some(0),
                    key,
                    value: Some(b"value"),
                    ..Outgoing::default()
                };
                producer.send(TOPIC, id, record)?;
                id += 1;
            }
            for i in 0..KEYED {
                let key = format!("key-{i}");
                // A tombstone has a key: a compacted topic takes it.
                let value = (i != 1).then_some(&b"value"[..]);
                let record = Outgoing {
                    partition: Some(1),
                    key: Some(key.as_bytes()),
                    value,
                    ..Outgoing::default()
                };
                producer.send(TOPIC, id, record)?;
                id += 1;
            }
            producer.flush(CLIENT_TIMEOUT)?;
            let reports = producer.reports();
            for (i, key) in MIXED.iter().enumerate() {
                let report = reports.get(&i);
                let want = if key.is_none() {
                    "error: InvalidRecord ("
                } else {
                    "error: InvalidDifferentRecord ("
                };
                ensure!(
                    matches!(report, Some(Err(e)) if e.contains(want)),
                    "{codec}: record {i} (key {key:?}) should fail with {want}: {reports:?}"
                );
            }
            let keyed = producer.acks_of(MIXED.len()..MIXED.len() + KEYED)?;
            ensure!(keyed.iter().all(|ack| ack.partition == 1), "{codec}: {keyed:?}");
            accepted += KEYED as i64;
        }
        let marks = kafka::watermarks(&bootstrap, TOPIC, &[0, 1])?;
        let want = HashMap::from([(0, (0, 0)), (1, (0, accepted))]);
        ensure!(marks == want, "watermarks {marks:?}, expected {want:?}");
        Ok(())
    });
}
