//! The transaction coordinator (issue 12) as librdkafka drives it, on one node and on three
//! nodes with RF 3 (where the coordinator, `__transaction_state`'s replicas and the partition
//! leaders the markers go to are spread over the nodes): a transactional producer
//! (`transactional.id`) initializes, commits a transaction of records on two partitions, then
//! aborts a second one. A read_committed consumer reads exactly the committed records; a
//! read_uncommitted one reads both transactions'.
//!
//! The client-library matrix, zombies, timeouts and failover are in `transactions.rs` and
//! `transactions_failover.rs`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use strom_tests::{kafka, wait_until, with_cluster, with_node, ClusterOptions, NodeOptions};

const TOPIC: &str = "txn-basic";
const PARTITIONS: i32 = 2;
/// Records of each transaction, spread over the partitions.
const RECORDS: usize = 20;
/// Bound of each transactional call (InitProducerId waits for `__transaction_state` to be
/// created and loaded).
const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of one read to the end of the topic, and of the wait for its markers.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Every record value a consumer at `isolation` reads from the beginning of the topic up to
/// the end it can see (librdkafka's partition EOF: the last stable offset for read_committed).
fn read_values(bootstrap: &str, isolation: &str) -> anyhow::Result<BTreeSet<String>> {
    let consumer: BaseConsumer = kafka::consumer(
        bootstrap,
        &[("isolation.level", isolation), ("enable.partition.eof", "true")],
    )?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment.add_partition_offset(TOPIC, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut at_end = BTreeSet::new();
    let mut values = BTreeSet::new();
    while at_end.len() < PARTITIONS as usize {
        ensure!(Instant::now() < deadline, "{isolation} read did not reach the end in time");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                let value = m.payload().map(String::from_utf8_lossy).unwrap_or_default();
                ensure!(values.insert(value.to_string()), "{isolation} read {value} twice");
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => bail!("{isolation} read: {e}"),
        }
    }
    Ok(values)
}

/// Produces one transaction's records (`prefix-0` ...), then commits or aborts it.
fn transaction(producer: &BaseProducer, prefix: &str, commit: bool) -> anyhow::Result<Vec<String>> {
    producer.begin_transaction().context("begin_transaction")?;
    let values: Vec<String> = (0..RECORDS).map(|i| format!("{prefix}-{i}")).collect();
    for (i, value) in values.iter().enumerate() {
        let key = i.to_string();
        let record =
            BaseRecord::to(TOPIC).partition(i as i32 % PARTITIONS).key(&key).payload(value);
        producer.send(record).map_err(|(e, _)| e).with_context(|| format!("send {value}"))?;
    }
    if commit {
        producer.commit_transaction(TXN_TIMEOUT).context("commit_transaction")?;
    } else {
        producer.flush(TXN_TIMEOUT).context("flush before abort")?;
        producer.abort_transaction(TXN_TIMEOUT).context("abort_transaction")?;
    }
    Ok(values)
}

fn commit_then_abort(bootstrap: &str, replication_factor: i32) -> anyhow::Result<()> {
    kafka::create_topic_replicated(bootstrap, TOPIC, PARTITIONS, replication_factor)?;
    kafka::wait_for_topic(bootstrap, TOPIC, PARTITIONS)?;
    let mut config = kafka::client_config(bootstrap);
    config.set("transactional.id", "txn-basic-producer").set("acks", "all");
    let producer: BaseProducer = config.create().context("create the transactional producer")?;
    producer.init_transactions(TXN_TIMEOUT).context("init_transactions")?;
    let committed: BTreeSet<String> =
        transaction(&producer, "committed", true)?.into_iter().collect();
    let aborted: BTreeSet<String> = transaction(&producer, "aborted", false)?.into_iter().collect();

    // The markers follow the answer to EndTxn: wait until a read_committed consumer, which
    // stops at the last stable offset, sees the commit, then check that it sees nothing else.
    let seen = wait_until(READ_TIMEOUT, "read_committed sees the committed transaction", || {
        let seen = read_values(bootstrap, "read_committed")?;
        Ok((seen.len() >= committed.len()).then_some(seen))
    })?;
    ensure!(seen == committed, "read_committed read {seen:?}, want exactly {committed:?}");
    // Once the abort marker is written too, the last stable offset is the high watermark.
    wait_until(READ_TIMEOUT, "the last stable offsets reach the high watermarks", || {
        let ends = |isolation| -> anyhow::Result<Vec<i64>> {
            let consumer: BaseConsumer =
                kafka::consumer(bootstrap, &[("isolation.level", isolation)])?;
            let end = |p| consumer.fetch_watermarks(TOPIC, p, TXN_TIMEOUT).map(|(_, high)| high);
            Ok((0..PARTITIONS).map(end).collect::<Result<_, _>>()?)
        };
        let (stable, high) = (ends("read_committed")?, ends("read_uncommitted")?);
        ensure!(stable == high, "last stable offsets {stable:?}, high watermarks {high:?}");
        Ok(Some(()))
    })?;
    let everything: BTreeSet<String> = committed.union(&aborted).cloned().collect();
    let all = read_values(bootstrap, "read_uncommitted")?;
    ensure!(all == everything, "read_uncommitted read {all:?}, want {everything:?}");
    let again = read_values(bootstrap, "read_committed")?;
    ensure!(again == committed, "read_committed after the abort read {again:?}");
    Ok(())
}

#[test]
fn librdkafka_transactions_commit_and_abort_on_one_node() {
    with_node(NodeOptions::default(), |node| commit_then_abort(&node.bootstrap(), 1));
}

#[test]
fn librdkafka_transactions_commit_and_abort_on_three_nodes_rf3() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        commit_then_abort(&cluster.bootstrap(), 3)
    });
}
