//! Admin APIs through confluent-kafka's AdminClient (the current librdkafka), for what
//! rust-rdkafka does not expose: IncrementalAlterConfigs, and DescribeTopics/DescribeCluster
//! with `include_authorized_operations` (librdkafka's 0081-admin).

use anyhow::{ensure, Context};
use serde_json::Value;
use strom_tests::clients::{run_to_exit, Library, SCRIPT_RUN_TIMEOUT};
use strom_tests::kafka;
use strom_tests::{with_node, NodeOptions};

const SCRIPT: &str = "confluent_admin";

/// Runs `tests/clients/confluent_admin.py --action <action>` and parses what it printed.
fn run(bootstrap: &str, topic: &str, action: &str) -> anyhow::Result<Value> {
    let mut command = Library::ConfluentKafka.command(SCRIPT)?;
    command.args(["--bootstrap", bootstrap, "--topic", topic, "--action", action]);
    let run = run_to_exit(command, SCRIPT_RUN_TIMEOUT)?;
    ensure!(run.status.success(), "{action} exited with {}: {}", run.status, run.stderr_tail(20));
    serde_json::from_str(run.stdout.trim()).with_context(|| format!("{action}: {}", run.stdout))
}

#[test]
fn incremental_alter_configs_answers_librdkafka() {
    Library::ConfluentKafka.require(SCRIPT);
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, "altered", 1, &[("cleanup.policy", "compact")])?;
        let described = run(&bootstrap, "altered", "incremental-alter")?;
        // Each resource has its own answer: librdkafka parses the response (it failed all of
        // them with _BAD_MSG when the GROUP resource came back as type UNKNOWN), strom serves
        // topic configs and the dynamic broker configs it has (the replication throttles; any
        // other broker key is INVALID_CONFIG, naming it), not group configs yet.
        let outcomes = serde_json::json!({
            "TOPIC:altered": "ok",
            "TOPIC:altered-missing": "UNKNOWN_TOPIC_OR_PART",
            "BROKER:1": "INVALID_CONFIG",
            "GROUP:a-group": "INVALID_REQUEST",
        });
        let want = serde_json::json!({
            "retention.ms": "12345",
            "cleanup.policy": "delete",
            "outcomes": outcomes,
        });
        ensure!(described == want, "after the change: {described}, expected {want}");
        Ok(())
    });
}

#[test]
fn describe_topics_and_cluster_report_every_operation_without_an_authorizer() {
    Library::ConfluentKafka.require(SCRIPT);
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, "described", 3, &[])?;
        let described = run(&bootstrap, "described", "describe")?;
        // Kafka's answer without an authorizer: every operation the resource type has.
        let topic_ops = [
            "ALTER",
            "ALTER_CONFIGS",
            "CREATE",
            "DELETE",
            "DESCRIBE",
            "DESCRIBE_CONFIGS",
            "READ",
            "WRITE",
        ];
        let cluster_ops = [
            "ALTER",
            "ALTER_CONFIGS",
            "CLUSTER_ACTION",
            "CREATE",
            "DESCRIBE",
            "DESCRIBE_CONFIGS",
            "IDEMPOTENT_WRITE",
        ];
        let topic = &described["topic"];
        ensure!(topic["partitions"] == 3, "{described}");
        ensure!(topic["authorized_operations"] == serde_json::json!(topic_ops), "{described}");
        let cluster = &described["cluster"];
        ensure!(cluster["nodes"] == 1, "{described}");
        ensure!(cluster["authorized_operations"] == serde_json::json!(cluster_ops), "{described}");
        Ok(())
    });
}
