#!/usr/bin/env python3
"""Admin calls rust-rdkafka does not expose, with confluent-kafka's AdminClient (the librdkafka
its wheel bundles) against --bootstrap. Prints one JSON object on stdout and exits 0; an error
goes to stderr with exit status 1.

--action incremental-alter: IncrementalAlterConfigs on --topic (SET retention.ms, DELETE
  cleanup.policy), then DescribeConfigs of it; prints {"retention.ms": ..., "cleanup.policy": ...}
  as described after the change.
--action describe: DescribeTopics of --topic and DescribeCluster, both with
  include_authorized_operations; prints the operations' names.

Used by tests/tests/e2e/admin_clients.rs; scripts/install-test-deps.sh installs confluent-kafka
into target/test-deps/venv.
"""

import argparse
import json
import sys

TIMEOUT_S = 30


def incremental_alter(admin, topic):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry,
                                       ConfigResource, ResourceType)

    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("retention.ms", "12345",
                        incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("cleanup.policy", None,
                        incremental_operation=AlterConfigOpType.DELETE),
        ],
    )
    # As librdkafka's 0081-admin: besides the topic, a broker, a topic that does not exist and
    # a group; each answered on its own (an error for some), all in one response.
    others = [
        ConfigResource(ResourceType.BROKER, "1", incremental_configs=[
            ConfigEntry("sasl.kerberos.min.time.before.relogin", "58000",
                        incremental_operation=AlterConfigOpType.SET)]),
        ConfigResource(ResourceType.TOPIC, topic + "-missing", incremental_configs=[
            ConfigEntry("compression.type", "lz4",
                        incremental_operation=AlterConfigOpType.SET)]),
        ConfigResource(ResourceType.GROUP, "a-group", incremental_configs=[
            ConfigEntry("consumer.session.timeout.ms", "50000",
                        incremental_operation=AlterConfigOpType.SET)]),
    ]
    outcomes = {}
    futures = admin.incremental_alter_configs([resource] + others)
    for res, future in futures.items():
        try:
            future.result(timeout=TIMEOUT_S)
            outcomes[f"{res.restype.name}:{res.name}"] = "ok"
        except KafkaException as error:
            outcomes[f"{res.restype.name}:{res.name}"] = error.args[0].name()
    print(json.dumps(outcomes), file=sys.stderr)
    described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
    out = {}
    for future in described.values():
        entries = future.result(timeout=TIMEOUT_S)
        for name in ("retention.ms", "cleanup.policy"):
            out[name] = entries[name].value
    out["outcomes"] = outcomes
    return out


def describe(admin, topic):
    from confluent_kafka import TopicCollection

    topics = admin.describe_topics(TopicCollection([topic]),
                                   include_authorized_operations=True)
    out = {}
    for name, future in topics.items():
        description = future.result(timeout=TIMEOUT_S)
        ops = description.authorized_operations
        out["topic"] = {
            "name": name,
            "partitions": len(description.partitions),
            "authorized_operations": None if ops is None else sorted(op.name for op in ops),
        }
    cluster = admin.describe_cluster(include_authorized_operations=True).result(
        timeout=TIMEOUT_S)
    ops = cluster.authorized_operations
    out["cluster"] = {
        "cluster_id": cluster.cluster_id,
        "nodes": len(cluster.nodes),
        "authorized_operations": None if ops is None else sorted(op.name for op in ops),
    }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--action", required=True, choices=["incremental-alter", "describe"])
    args = parser.parse_args()

    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": args.bootstrap,
                         "client.id": "strom-tests-confluent-kafka"})
    try:
        if args.action == "incremental-alter":
            out = incremental_alter(admin, args.topic)
        else:
            out = describe(admin, args.topic)
    except Exception as error:  # the test shows whatever the library raised
        print(f"{args.action} failed: {error!r}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
