//! `strom txn` (issue 12) run as the real CLI binary against a node's control port:
//!
//! - `strom txn producers` after a librdkafka idempotent producer wrote to a partition shows
//!   that producer with the sequence of its last record; a partition or topic that does not
//!   exist is refused with exit code 2 and names what is wrong.
//! - `strom txn list` and `strom txn describe` while a librdkafka transactional producer has a
//!   transaction open (flushed, not yet committed) show it Ongoing with the partitions it wrote
//!   to, and `strom txn producers` shows the open transaction's first offset on the partition;
//!   after the commit the transaction is CompleteCommit, with no partitions and no open
//!   transaction at the partition. The state and producer-id filters select it or leave it
//!   out; an unknown transactional id is refused with exit code 2 and named.

use std::time::Duration;

use anyhow::{ensure, Context};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use strom_tests::cluster::{cli, CliOutput, CLI_TIMEOUT};
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::{wait_until, with_node, NodeOptions, StromNode};

/// Bound of each transactional call (InitProducerId waits for `__transaction_state` to be
/// created and loaded).
const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the coordinator may take to complete a commit once EndTxn is answered (the
/// markers are written after the answer).
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(30);
const IDEMPOTENT_RECORDS: usize = 50;

/// Runs `strom ARGS --bootstrap-control <node>`.
fn strom(node: &StromNode, args: &[&str]) -> anyhow::Result<CliOutput> {
    let control = node.control_addr().to_string();
    let mut all = args.to_vec();
    all.extend(["--bootstrap-control", &control]);
    cli(&all, CLI_TIMEOUT)
}

/// Runs `strom ARGS --output json` and parses what it printed; fails unless it exited 0.
fn strom_json(node: &StromNode, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    strom(node, &all)?.success()?.json()
}

/// Asserts the command failed with `code` and that stderr names `needle`.
fn assert_fails(out: CliOutput, code: i32, needle: &str) -> anyhow::Result<()> {
    ensure!(out.status.code() == Some(code), "exit status {} (want {code}): {out:?}", out.status);
    ensure!(out.stderr.contains(needle), "stderr does not name '{needle}': {out:?}");
    Ok(())
}

#[test]
fn txn_producers_shows_an_idempotent_producers_last_sequence() {
    with_node(NodeOptions::default(), |node| {
        let topic = "idempotent-cli";
        kafka::create_topic(&node.bootstrap(), topic, 1, &[])?;
        let producer = AckingProducer::new(&node.bootstrap(), &[("enable.idempotence", "true")])?;
        for id in 0..IDEMPOTENT_RECORDS {
            let value = format!("v{id}");
            let record = Outgoing {
                partition: Some(0),
                value: Some(value.as_bytes()),
                ..Outgoing::default()
            };
            producer.send(topic, id, record)?;
        }
        producer.flush(TXN_TIMEOUT)?;
        producer.acks_of(0..IDEMPOTENT_RECORDS)?;

        let described = strom_json(node, &["txn", "producers", topic, "0"])?;
        ensure!(described["topic"] == topic && described["partition"] == 0, "{described}");
        ensure!(described["leader_id"] == 1, "{described}");
        let producers = described["producers"].as_array().context("producers")?;
        ensure!(producers.len() == 1, "one idempotent producer: {described}");
        let p = &producers[0];
        ensure!(p["producer_id"].as_i64().is_some_and(|id| id >= 0), "{p}");
        ensure!(p["producer_epoch"] == 0, "{p}");
        ensure!(p["last_sequence"] == IDEMPOTENT_RECORDS as i64 - 1, "sequence of the last: {p}");
        ensure!(p["current_txn_start_offset"].is_null(), "not transactional: {p}");

        let table = strom(node, &["txn", "producers", topic, "0"])?.success()?;
        let id = p["producer_id"].to_string();
        ensure!(table.stdout.contains("1 active producer(s)"), "{table:?}");
        ensure!(table.stdout.lines().any(|l| l.starts_with(&id)), "row of {id}: {table:?}");

        assert_fails(
            strom(node, &["txn", "producers", topic, "5"])?,
            2,
            "topic 'idempotent-cli' has no partition 5",
        )?;
        assert_fails(strom(node, &["txn", "producers", "nope", "0"])?, 2, "topic 'nope'")
    });
}

/// The one transaction `strom txn describe ID` shows.
fn describe(node: &StromNode, id: &str) -> anyhow::Result<Value> {
    let described = strom_json(node, &["txn", "describe", id])?;
    let t = described["transactions"].get(0).cloned().context("no transaction described")?;
    ensure!(t["transactional_id"] == id && t.get("error").is_none(), "{described}");
    Ok(t)
}

/// The transactional ids `strom txn list ARGS` shows.
fn listed(node: &StromNode, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut all = vec!["txn", "list"];
    all.extend(args);
    let listed = strom_json(node, &all)?;
    Ok(listed["transactions"].as_array().context("transactions")?.clone())
}

#[test]
fn txn_list_and_describe_follow_a_transactional_producer_from_open_to_committed() {
    with_node(NodeOptions::default(), |node| {
        let (topic, id) = ("txn-cli", "txn-cli-producer");
        kafka::create_topic(&node.bootstrap(), topic, 2, &[])?;
        let mut config = kafka::client_config(&node.bootstrap());
        config.set("transactional.id", id).set("acks", "all");
        let producer: BaseProducer = config.create().context("create the producer")?;
        producer.init_transactions(TXN_TIMEOUT).context("init_transactions")?;
        producer.begin_transaction().context("begin_transaction")?;
        for i in 0..10 {
            let value = format!("r{i}");
            let record = BaseRecord::<(), String>::to(topic).partition(i % 2).payload(&value);
            producer.send(record).map_err(|(e, _)| e).context("send")?;
        }
        // Delivered records mean their partitions were added to the transaction.
        producer.flush(TXN_TIMEOUT).context("flush")?;

        let open = describe(node, id)?;
        ensure!(open["state"] == "Ongoing", "{open}");
        ensure!(open["partitions"] == serde_json::json!({ topic: [0, 1] }), "{open}");
        ensure!(open["start_time_ms"].as_i64().is_some_and(|t| t > 0), "{open}");
        ensure!(open["coordinator_id"] == 1, "{open}");
        let producer_id = open["producer_id"].as_i64().context("producer_id")?;
        let pid = producer_id.to_string();

        let all = listed(node, &[])?;
        let entry = all.iter().find(|t| t["transactional_id"] == id).context("not listed")?;
        ensure!(entry["state"] == "Ongoing" && entry["producer_id"] == producer_id, "{entry}");
        ensure!(entry["coordinator_id"] == 1, "{entry}");
        ensure!(listed(node, &["--state", "ongoing", "--producer-id", &pid])?.len() == 1);
        ensure!(listed(node, &["--state", "CompleteCommit"])?.is_empty(), "nothing completed");
        let other = (producer_id + 1).to_string();
        ensure!(listed(node, &["--producer-id", &other])?.is_empty(), "another producer's");

        let at_partition = strom_json(node, &["txn", "producers", topic, "0"])?;
        let p = &at_partition["producers"][0];
        ensure!(p["producer_id"] == producer_id, "{at_partition}");
        ensure!(p["current_txn_start_offset"] == 0, "open from offset 0: {at_partition}");

        let table = strom(node, &["txn", "describe", id])?.success()?;
        ensure!(
            table.stdout.lines().any(|l| l.starts_with(id) && l.contains("Ongoing")),
            "{table:?}"
        );

        producer.commit_transaction(TXN_TIMEOUT).context("commit_transaction")?;
        let done = wait_until(COMPLETE_TIMEOUT, "the commit completes", || {
            let t = describe(node, id)?;
            Ok((t["state"] == "CompleteCommit").then_some(t))
        })?;
        ensure!(done["producer_id"] == producer_id, "{done}");
        ensure!(done["partitions"] == serde_json::json!({}), "{done}");
        let completed = listed(node, &["--state", "CompleteCommit"])?;
        ensure!(completed.iter().any(|t| t["transactional_id"] == id), "{completed:?}");
        ensure!(listed(node, &["--state", "Ongoing"])?.is_empty(), "nothing open");
        let at_partition = strom_json(node, &["txn", "producers", topic, "0"])?;
        let p = &at_partition["producers"][0];
        ensure!(p["current_txn_start_offset"].is_null(), "closed by the marker: {at_partition}");

        assert_fails(
            strom(node, &["txn", "describe", "no-such-id"])?,
            2,
            "transactional id 'no-such-id' does not exist",
        )
    });
}
