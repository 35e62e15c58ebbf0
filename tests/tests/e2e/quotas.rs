//! Client quotas (Kafka APIs 48 and 49, KIP-13, KIP-219): a `producer_byte_rate` set with
//! kafka-python and read back with DescribeClientQuotas holds an rdkafka producer that tries
//! to send far more to its rate, and tells it so (librdkafka's throttle statistics), while a
//! producer with another client id, sending at the same time, is not held; a
//! `consumer_byte_rate` holds a consumer the same way. The quotas are metadata records: they
//! are still there after a restart.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message};
use serde_json::Value;
use strom_tests::clients::{run_to_exit, Library, SCRIPT_RUN_TIMEOUT};
use strom_tests::kafka;
use strom_tests::{with_node, NodeOptions};

const TOPIC: &str = "quoted";
/// The quota: 1 MiB/s (1,048,576 B/s).
const QUOTA_BYTES_PER_S: f64 = 1_048_576.0;
const THROTTLED: &str = "quota-throttled";
const FREE: &str = "quota-free";
/// The measured span: from the producer's start.
const RUN: Duration = Duration::from_secs(20);
const SECONDS_MAX: usize = 30;
const VALUE_BYTES: usize = 10_000;

/// kafka-python's AlterClientQuotas or DescribeClientQuotas (tests/clients/client_quotas.py):
/// its answer as JSON.
fn quotas_script(bootstrap: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut command = Library::KafkaPython.command("client_quotas")?;
    command.args(&args[..1]).args(["--bootstrap", bootstrap]).args(&args[1..]);
    let run = run_to_exit(command, SCRIPT_RUN_TIMEOUT)?;
    ensure!(run.status.success(), "client_quotas.py {args:?}: {}", run.stderr_tail(40));
    serde_json::from_str(run.stdout.trim())
        .with_context(|| format!("client_quotas.py printed {:?}", run.stdout))
}

fn set_quota(bootstrap: &str, client_id: &str, key: &str, value: f64) -> anyhow::Result<()> {
    let entity = format!("client-id={client_id}");
    let set = format!("{key}={value}");
    let answer = quotas_script(bootstrap, &["alter", "--entity", &entity, "--set", &set])?;
    ensure!(answer["entries"][0]["error_code"] == 0, "AlterClientQuotas: {answer}");
    Ok(())
}

/// The quotas DescribeClientQuotas reports for exactly this client id.
fn described(bootstrap: &str, client_id: &str) -> anyhow::Result<Value> {
    let entity = format!("client-id={client_id}");
    let answer = quotas_script(bootstrap, &["describe", "--entity", &entity, "--strict"])?;
    ensure!(answer["error_code"] == 0, "DescribeClientQuotas: {answer}");
    Ok(answer["entries"].clone())
}

/// Counts acknowledged payload bytes and the largest throttle librdkafka reports.
struct Meter {
    started: Instant,
    /// Acknowledged payload bytes by second since `started`.
    acked_bytes: [AtomicU64; SECONDS_MAX],
    failed: AtomicU64,
    throttle_max_ms: AtomicI64,
}

impl ClientContext for Meter {
    fn stats(&self, statistics: Statistics) {
        for broker in statistics.brokers.values() {
            if let Some(window) = &broker.throttle {
                self.throttle_max_ms.fetch_max(window.max, Ordering::Relaxed);
            }
        }
    }
}

impl ProducerContext for Meter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                let bytes = message.payload().map_or(0, <[u8]>::len) as u64;
                let second = (self.started.elapsed().as_secs() as usize).min(SECONDS_MAX - 1);
                self.acked_bytes[second].fetch_add(bytes, Ordering::Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What one producer achieved over [`RUN`].
struct Run {
    bytes_per_s: f64,
    throttle_max_ms: i64,
}

/// An rdkafka producer with `client_id` offering `offered_bytes_per_s` for [`RUN`]: the rate
/// of payload acknowledged within it.
fn produce_for_a_while(
    bootstrap: &str,
    client_id: &str,
    offered_bytes_per_s: f64,
) -> anyhow::Result<Run> {
    let producer: rdkafka::producer::BaseProducer<Meter> = kafka::client_config(bootstrap)
        .set("client.id", client_id)
        .set("acks", "1")
        .set("linger.ms", "5")
        .set("batch.size", "262144")
        .set("queue.buffering.max.kbytes", "16384")
        .set("message.timeout.ms", "120000")
        .set("statistics.interval.ms", "500")
        .create_with_context(Meter {
            started: Instant::now(),
            acked_bytes: std::array::from_fn(|_| AtomicU64::new(0)),
            failed: AtomicU64::new(0),
            throttle_max_ms: AtomicI64::new(0),
        })
        .context("create producer")?;
    let value = vec![b'q'; VALUE_BYTES];
    let started = producer.context().started;
    let mut offered = 0.0;
    while started.elapsed() < RUN {
        let due = offered_bytes_per_s * started.elapsed().as_secs_f64();
        if offered < due {
            let record: BaseRecord<'_, (), [u8]> = BaseRecord::to(TOPIC).payload(&value[..]);
            match producer.send(record) {
                Ok(()) => offered += VALUE_BYTES as f64,
                Err(_) => producer.poll(Duration::from_millis(5)),
            }
        } else {
            producer.poll(Duration::from_millis(1));
        }
        producer.poll(Duration::ZERO);
    }
    let by_second: Vec<u64> =
        producer.context().acked_bytes.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    let acked: u64 = by_second[..RUN.as_secs() as usize].iter().sum();
    eprintln!("{client_id}: acknowledged bytes by second: {by_second:?}");
    // One more statistics report, then drop what is still queued (not counted).
    producer.poll(Duration::from_millis(600));
    let failed = producer.context().failed.load(Ordering::Relaxed);
    ensure!(failed == 0, "{client_id}: {failed} records failed within the run");
    Ok(Run {
        bytes_per_s: acked as f64 / RUN.as_secs_f64(),
        throttle_max_ms: producer.context().throttle_max_ms.load(Ordering::Relaxed),
    })
}

#[test]
fn a_produce_quota_holds_a_client_to_its_rate_and_another_client_is_not_held() {
    Library::KafkaPython.require("client_quotas");
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, TOPIC, 1, &[])?;
        kafka::wait_for_topic(&bootstrap, TOPIC, 1)?;
        set_quota(&bootstrap, THROTTLED, "producer_byte_rate", QUOTA_BYTES_PER_S)?;
        let entries = described(&bootstrap, THROTTLED)?;
        eprintln!("DescribeClientQuotas: {entries}");
        ensure!(
            entries[0]["entity"][0]["entity_name"] == THROTTLED
                && entries[0]["values"][0]["key"] == "producer_byte_rate"
                && entries[0]["values"][0]["value"] == QUOTA_BYTES_PER_S,
            "{entries}"
        );
        ensure!(described(&bootstrap, FREE)?.as_array().is_some_and(Vec::is_empty));

        let (throttled, free) = std::thread::scope(|scope| {
            let free = scope.spawn(|| produce_for_a_while(&bootstrap, FREE, 8.0 * 1_048_576.0));
            let throttled = produce_for_a_while(&bootstrap, THROTTLED, 50.0 * 1_048_576.0);
            (throttled, free.join().expect("free producer thread"))
        });
        let (throttled, free) = (throttled?, free?);
        eprintln!(
            "quota {QUOTA_BYTES_PER_S} B/s: {THROTTLED} acknowledged {:.0} B/s ({:.3} of the \
             quota), largest throttle {} ms; {FREE} acknowledged {:.0} B/s, largest throttle {} ms",
            throttled.bytes_per_s,
            throttled.bytes_per_s / QUOTA_BYTES_PER_S,
            throttled.throttle_max_ms,
            free.bytes_per_s,
            free.throttle_max_ms
        );
        let ratio = throttled.bytes_per_s / QUOTA_BYTES_PER_S;
        ensure!((0.9..=1.1).contains(&ratio), "throttled client at {ratio:.3} of its quota");
        ensure!(throttled.throttle_max_ms > 0, "the throttled client never saw a throttle time");
        ensure!(
            free.bytes_per_s > 3.0 * QUOTA_BYTES_PER_S,
            "the client without a quota was held to {:.0} B/s",
            free.bytes_per_s
        );
        ensure!(free.throttle_max_ms == 0, "the client without a quota was throttled");

        // Metadata records: the quota survives a restart.
        node.restart()?;
        let entries = described(&bootstrap, THROTTLED)?;
        ensure!(entries[0]["values"][0]["value"] == QUOTA_BYTES_PER_S, "after restart: {entries}");
        Ok(())
    });
}

#[test]
fn a_consumer_quota_holds_a_consumer_to_its_rate() {
    Library::KafkaPython.require("client_quotas");
    const CONSUMER: &str = "quota-consumer";
    const TOTAL_BYTES: usize = 24 << 20;
    const FETCH_QUOTA: f64 = 1_048_576.0;
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, TOPIC, 1, &[])?;
        kafka::wait_for_topic(&bootstrap, TOPIC, 1)?;
        let producer = kafka::AckingProducer::new(&bootstrap, &[("acks", "1")])?;
        let value = vec![b'c'; VALUE_BYTES];
        for id in 0..TOTAL_BYTES / VALUE_BYTES {
            let record = kafka::Outgoing { value: Some(&value), ..kafka::Outgoing::default() };
            producer.send(TOPIC, id, record)?;
        }
        producer.flush(Duration::from_secs(60))?;
        set_quota(&bootstrap, CONSUMER, "consumer_byte_rate", FETCH_QUOTA)?;

        let consumer: BaseConsumer = kafka::client_config(&bootstrap)
            .set("client.id", CONSUMER)
            .set("group.id", "quota-group")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .context("create consumer")?;
        consumer.subscribe(&[TOPIC])?;
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut started = None;
        let mut bytes = 0;
        while bytes < TOTAL_BYTES - VALUE_BYTES && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                started.get_or_insert_with(Instant::now);
                bytes += message?.payload().map_or(0, <[u8]>::len);
            }
        }
        let elapsed = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let rate = bytes as f64 / elapsed.max(0.001);
        eprintln!(
            "consumer quota {FETCH_QUOTA} B/s: read {bytes} B at {rate:.0} B/s ({:.3} of it)",
            rate / FETCH_QUOTA
        );
        ensure!(bytes >= TOTAL_BYTES - VALUE_BYTES, "read only {bytes} B in 90 s");
        // Loopback alone gives tens of MiB/s; no tight bound on a shared machine.
        ensure!(rate < 1.5 * FETCH_QUOTA, "consumer read at {rate:.0} B/s");
        Ok(())
    });
}
