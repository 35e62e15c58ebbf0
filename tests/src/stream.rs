//! [`Streamer`]: a background librdkafka producer that writes `acks=all` records round-robin
//! over the partitions of one topic at a steady rate, and a [`Ledger`] of what became of each
//! record (when it was sent, where it was acknowledged, why it failed), for tests that kill,
//! pause or cut off nodes while it runs and then check every acknowledged record.
//!
//! Record `id` goes to partition `id % partitions` with key `k<id>` and the value
//! [`value_of`]`(id)`, from which [`id_of`] reads the id back: ids rise in send order, so a
//! partition's ids in offset order show duplicates and reordering.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::ClientContext;

use crate::{kafka, wait_until};

/// Every record's value: an id the checks parse back, padded to this many bytes.
pub const VALUE_BYTES: usize = 100;
/// Client errors the ledger keeps (the first ones; later ones are only counted).
const CLIENT_ERRORS_KEPT_MAX: usize = 50;

/// The value of record `id`: `rec-<id, ten digits>-` padded to [`VALUE_BYTES`].
pub fn value_of(id: usize) -> Vec<u8> {
    let mut value = format!("rec-{id:010}-").into_bytes();
    while value.len() < VALUE_BYTES {
        value.push(b'a' + ((id + value.len()) % 26) as u8);
    }
    value
}

/// The id of a value written by [`value_of`]; `None` for any other value.
pub fn id_of(value: &[u8]) -> Option<usize> {
    let digits = value.strip_prefix(b"rec-")?.get(..10)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Where and when one record was acknowledged.
#[derive(Clone, Copy, Debug)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
    pub at: Instant,
}

/// Everything the streaming producer sent and what became of it, by record id.
#[derive(Default)]
pub struct Ledger {
    /// Send instant of every record, indexed by id (ids are sent in order).
    sent: Mutex<Vec<Instant>>,
    acked: Mutex<BTreeMap<usize, Delivered>>,
    failed: Mutex<BTreeMap<usize, String>>,
    /// Errors librdkafka reported outside delivery reports (the first ones), and how many.
    client_errors: Mutex<(Vec<String>, usize)>,
    /// librdkafka's fatal error, if the producer raised one (idempotence: it stops producing).
    fatal: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Ledger {
    /// When the first record sent at or after `since` was acknowledged on `partition`.
    pub fn first_ack_after(&self, partition: i32, since: Instant) -> Option<Instant> {
        let first_id = lock(&self.sent).partition_point(|&at| at < since);
        lock(&self.acked)
            .range(first_id..)
            .filter(|(_, d)| d.partition == partition)
            .map(|(_, d)| d.at)
            .min()
    }

    /// Record id → (partition, offset) of every acknowledged record.
    pub fn acks(&self) -> BTreeMap<usize, (i32, i64)> {
        lock(&self.acked).iter().map(|(&id, d)| (id, (d.partition, d.offset))).collect()
    }

    /// The longest time without any acknowledgement between `from` and `to` (gaps before the
    /// first and after the last acknowledgement in the window count), overall and on the
    /// partition where it was longest: how long the producer stalled.
    pub fn longest_stall(&self, from: Instant, to: Instant) -> (Duration, Option<(i32, Duration)>) {
        let acked = lock(&self.acked);
        let longest = |times: &mut Vec<Instant>| {
            times.sort_unstable();
            let mut previous = from;
            let mut worst = Duration::ZERO;
            for &at in times.iter().filter(|&&at| at >= from && at <= to) {
                worst = worst.max(at - previous);
                previous = at;
            }
            worst.max(to.saturating_duration_since(previous))
        };
        let mut all: Vec<Instant> = acked.values().map(|d| d.at).collect();
        let overall = longest(&mut all);
        let mut by_partition: BTreeMap<i32, Vec<Instant>> = BTreeMap::new();
        for d in acked.values() {
            by_partition.entry(d.partition).or_default().push(d.at);
        }
        let worst_partition = by_partition
            .into_iter()
            .map(|(p, mut times)| (p, longest(&mut times)))
            .max_by_key(|&(_, stall)| stall);
        (overall, worst_partition)
    }

    /// How many records were sent (ids `0..sent`).
    pub fn sent(&self) -> usize {
        lock(&self.sent).len()
    }

    /// Record id → error of every record whose delivery failed.
    pub fn failed(&self) -> BTreeMap<usize, String> {
        lock(&self.failed).clone()
    }

    /// The first errors librdkafka reported outside delivery reports, and how many in all.
    pub fn client_errors(&self) -> (Vec<String>, usize) {
        lock(&self.client_errors).clone()
    }

    /// The producer's fatal error, if it raised one.
    pub fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} sent, {} acknowledged, {} failed",
            lock(&self.sent).len(),
            lock(&self.acked).len(),
            lock(&self.failed).len()
        );
        if let Some(fatal) = self.fatal() {
            line.push_str(&format!("; fatal error: {fatal}"));
        }
        line
    }
}

struct LedgerContext(Arc<Ledger>);

impl ClientContext for LedgerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let mut errors = lock(&self.0.client_errors);
        if errors.0.len() < CLIENT_ERRORS_KEPT_MAX {
            errors.0.push(format!("{error}: {reason}"));
        }
        errors.1 += 1;
    }
}

impl ProducerContext for LedgerContext {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<usize>) {
        let at = Instant::now();
        match result {
            Ok(message) => {
                let delivered =
                    Delivered { partition: message.partition(), offset: message.offset(), at };
                let previous = lock(&self.0.acked).insert(*id, delivered);
                assert!(previous.is_none(), "two delivery reports for record {id}");
            }
            Err((error, _)) => {
                lock(&self.0.failed).insert(*id, error.to_string());
            }
        }
    }
}

/// A background thread producing `acks=all` records round-robin over the partitions of one
/// topic at a steady rate. Idempotence is off and librdkafka's default retries apply unless
/// the caller's settings say otherwise.
pub struct Streamer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    ledger: Arc<Ledger>,
}

impl Streamer {
    /// Starts producing `per_second` records to `topic`; `extra` overrides the producer's
    /// settings (e.g. `enable.idempotence`).
    pub fn start(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        per_second: u64,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let ledger = Arc::new(Ledger::default());
        let mut config = kafka::client_config(bootstrap);
        config
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("enable.idempotence", "false")
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "100000")
            // A paused leader keeps its connections open and answers nothing: without frequent
            // refreshes librdkafka would only notice the new leader after request.timeout.ms.
            .set("topic.metadata.refresh.interval.ms", "1000");
        for (key, value) in extra {
            config.set(*key, *value);
        }
        let producer: BaseProducer<LedgerContext> = config
            .create_with_context(LedgerContext(ledger.clone()))
            .context("create the streaming producer")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (topic, flag, book) = (topic.to_owned(), stop.clone(), ledger.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut id = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_millis() as u64 * per_second / 1000) as usize;
                while id < due && !flag.load(Ordering::Relaxed) {
                    let (key, value) = (format!("k{id}"), value_of(id));
                    let mut record = BaseRecord::with_opaque_to(&topic, Box::new(id))
                        .partition((id % partitions as usize) as i32)
                        .key(key.as_bytes())
                        .payload(&value[..]);
                    lock(&book.sent).push(Instant::now());
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                r,
                            )) => {
                                record = r;
                                producer.poll(Duration::from_millis(10));
                            }
                            Err((error, _)) => bail!("send record {id}: {error}"),
                        }
                    }
                    id += 1;
                }
                producer.poll(Duration::from_millis(5));
            }
            // Whatever is still unacknowledged after the flush is purged: it counts as failed.
            let _ = producer.flush(Duration::from_secs(40));
            producer.purge(PurgeConfig::default().queue().inflight());
            let _ = producer.flush(Duration::from_secs(5));
            if let Some((code, reason)) = producer.client().fatal_error() {
                *lock(&book.fatal) = Some(format!("{code:?}: {reason}"));
            }
            Ok(())
        });
        Ok(Streamer { stop, thread: Some(thread), ledger })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Waits (bounded) until `count` more records are acknowledged.
    pub fn wait_acks(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let target = lock(&self.ledger.acked).len() + count;
        wait_until(timeout, &format!("{count} more acknowledgements"), || {
            Ok((lock(&self.ledger.acked).len() >= target).then_some(()))
        })
    }

    /// Stops producing, waits for every outstanding delivery report and returns the ledger.
    pub fn stop(mut self) -> anyhow::Result<Arc<Ledger>> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().context("streamer already stopped")?;
        thread.join().map_err(|_| anyhow::anyhow!("streaming producer panicked"))??;
        Ok(self.ledger.clone())
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
