//! A rolling restart under load (issue 16): a 3-node cluster (RF 3, min.insync.replicas 2) with an
//! idempotent acks=all producer and a consumer group running; each node in turn gets SIGTERM
//! (controlled shutdown), is started again, and the next one waits until the node's `/ready`
//! answers 200 and every ISR (the topic's and `__consumer_offsets`') is full again, as an operator
//! would. Afterwards: no acknowledged record lost (the group read every one of them), no delivery
//! failed (no non-retriable error reached the producer), the consumer saw no error, and the longest
//! produce stall is printed (the goal is 2 s; this shared machine is not asserted on).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use strom_tests::cluster::{with_cluster, ClusterOptions};
use strom_tests::kafka;
use strom_tests::stream::{id_of, Streamer};
use strom_tests::wait_until;

const TOPIC: &str = "rolling";
const PARTITIONS: i32 = 6;
const RATE: u64 = 400;
const CATCH_UP: Duration = Duration::from_secs(90);
const CONSUME_TIMEOUT: Duration = Duration::from_secs(90);

/// A consumer-group member reading in the background: every record id it saw, and every
/// error the consumer handed to the application.
struct GroupReader {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<usize>>>,
    errors: Arc<Mutex<Vec<String>>>,
    /// Lost connections librdkafka reported (it reconnects by itself).
    transient: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupReader {
    fn start(bootstrap: &str) -> anyhow::Result<GroupReader> {
        let consumer: BaseConsumer = kafka::consumer(
            bootstrap,
            &[
                ("group.id", "rolling-group"),
                ("enable.auto.commit", "true"),
                ("enable.auto.offset.store", "true"),
                ("auto.commit.interval.ms", "500"),
                ("session.timeout.ms", "10000"),
                ("topic.metadata.refresh.interval.ms", "1000"),
            ],
        )?;
        consumer.subscribe(&[TOPIC]).context("subscribe")?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let transient = Arc::new(AtomicUsize::new(0));
        let (flag, ids, errs) = (stop.clone(), seen.clone(), errors.clone());
        let lost = transient.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(100)) {
                    None => {}
                    Some(Ok(message)) => {
                        if let Some(id) = message.payload().and_then(id_of) {
                            ids.lock().unwrap().insert(id);
                        }
                    }
                    // librdkafka hands a lost connection to the application too; it
                    // reconnects by itself, so that is not an error the application must act on.
                    Some(Err(KafkaError::MessageConsumption(
                        RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
                    ))) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(error)) => errs.lock().unwrap().push(error.to_string()),
                }
            }
            consumer.unsubscribe();
        });
        Ok(GroupReader { stop, seen, errors, transient, thread: Some(thread) })
    }

    fn missing(&self, acked: &BTreeSet<usize>) -> Vec<usize> {
        let seen = self.seen.lock().unwrap();
        acked.difference(&seen).copied().collect()
    }
}

impl Drop for GroupReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn rolling_restart_under_load_loses_nothing() {
    let options = ClusterOptions {
        default_replication_factor: Some(3),
        min_insync_replicas: Some(2),
        ..ClusterOptions::default()
    };
    with_cluster(3, options, |cluster| {
        kafka::create_topic_replicated(&cluster.bootstrap(), TOPIC, PARTITIONS, 3)?;
        cluster.wait_topic_everywhere(TOPIC, PARTITIONS as usize)?;
        cluster.wait_isr_full(TOPIC, CATCH_UP)?;
        let streamer = Streamer::start(
            &cluster.bootstrap(),
            TOPIC,
            PARTITIONS,
            RATE,
            &[("enable.idempotence", "true"), ("message.timeout.ms", "60000")],
        )?;
        streamer.wait_acks(500, CATCH_UP).with_context(|| {
            format!(
                "producer {}; {:?}",
                streamer.ledger().summary(),
                streamer.ledger().client_errors()
            )
        })?;
        let reader = GroupReader::start(&cluster.bootstrap())?;
        wait_until(CATCH_UP, "the group reads", || {
            Ok((!reader.seen.lock().unwrap().is_empty()).then_some(()))
        })?;
        cluster.wait_isr_full("__consumer_offsets", CATCH_UP)?;

        let rolling_from = Instant::now();
        let mut report = Vec::new();
        for id in cluster.ids() {
            let started = Instant::now();
            let status = cluster.sigterm(id)?;
            ensure!(status.success(), "node {id} exited with {status} on SIGTERM");
            let stopped = started.elapsed();
            cluster.spawn(id)?;
            cluster.wait_serving(id, CATCH_UP)?;
            wait_until(CATCH_UP, &format!("node {id}'s /ready"), || {
                Ok(cluster.node(id).not_ready_because()?.is_none().then_some(()))
            })?;
            let serving = started.elapsed();
            cluster.wait_isr_full(TOPIC, CATCH_UP).with_context(|| format!("node {id} rejoins"))?;
            cluster.wait_isr_full("__consumer_offsets", CATCH_UP)?;
            let line = format!(
                "node {id}: stopped in {stopped:?}, ready after {serving:?}, every ISR full \
                 after {:?}",
                started.elapsed()
            );
            eprintln!("{line}");
            report.push(line);
            // The producer goes on between restarts, as it would in production.
            streamer.wait_acks(200, CATCH_UP).with_context(|| format!("after node {id}"))?;
        }
        let rolling_to = Instant::now();
        let (stall, worst) = streamer.ledger().longest_stall(rolling_from, rolling_to);
        let ledger = streamer.stop()?;
        eprintln!("rolling restart: {}", report.join("; "));
        eprintln!(
            "rolling restart: producer {}; longest produce stall {stall:?} (goal 2 s); on one \
             partition {worst:?}",
            ledger.summary()
        );
        ensure!(ledger.failed().is_empty(), "deliveries failed: {:?}", ledger.failed());
        ensure!(
            ledger.fatal().is_none(),
            "the producer raised a fatal error: {:?}",
            ledger.fatal()
        );
        let acked: BTreeSet<usize> = ledger.acks().keys().copied().collect();
        ensure!(
            acked.len() == ledger.sent(),
            "{} sent, {} acknowledged",
            ledger.sent(),
            acked.len()
        );
        wait_until(CONSUME_TIMEOUT, "the group has read every acknowledged record", || {
            let missing = reader.missing(&acked);
            if missing.is_empty() {
                Ok(Some(()))
            } else {
                anyhow::bail!(
                    "{} acknowledged records not read yet, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(10)]
                )
            }
        })?;
        let errors = reader.errors.lock().unwrap().clone();
        ensure!(errors.is_empty(), "the consumer saw errors: {errors:?}");
        eprintln!(
            "rolling restart: the group read all {} acknowledged records ({} lost connections \
             reported on the way)",
            acked.len(),
            reader.transient.load(Ordering::Relaxed)
        );
        Ok(())
    });
}
