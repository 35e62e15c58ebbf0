#!/usr/bin/env python3
"""Partition reassignment (Kafka APIs 45 and 46, KIP-455) with kafka-python's admin client
against --bootstrap:

  alter --topic T --partition P --replicas 1,2,3   KafkaAdminClient.alter_partition_reassignments
  alter --topic T --partition P --cancel           (replicas None: cancel the move)
  list                                             KafkaAdminClient.list_partition_reassignments

`alter` prints {"error": null | "ErrorClassName"} for the partition; `list` prints
[{"topic", "partition", "replicas", "adding_replicas", "removing_replicas"}, ...]. Exit status 0;
a failure of the request as a whole goes to stderr with exit status 1.

Used by tests/tests/e2e/admin_ops.rs; scripts/install-test-deps.sh installs kafka-python into
target/test-deps/venv.
"""

import argparse
import json
import logging
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    commands = parser.add_subparsers(dest="command", required=True)
    alter = commands.add_parser("alter")
    alter.add_argument("--topic", required=True)
    alter.add_argument("--partition", type=int, required=True)
    target = alter.add_mutually_exclusive_group(required=True)
    target.add_argument("--replicas", help="comma-separated broker ids")
    target.add_argument("--cancel", action="store_true")
    commands.add_parser("list")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper())

    from kafka import KafkaAdminClient, TopicPartition

    admin = KafkaAdminClient(
        bootstrap_servers=args.bootstrap.split(","),
        client_id="strom-tests-kafka-python",
        request_timeout_ms=30000,
    )
    try:
        if args.command == "alter":
            tp = TopicPartition(args.topic, args.partition)
            replicas = None if args.cancel else [int(r) for r in args.replicas.split(",")]
            results = admin.alter_partition_reassignments({tp: replicas}, timeout_ms=30000)
            if tp not in results:
                print(f"no answer for {tp}: {results!r}", file=sys.stderr)
                return 1
            error = results[tp]
            print(json.dumps({"error": None if error is None else error.__name__}))
        else:
            ongoing = admin.list_partition_reassignments(timeout_ms=30000)
            listed = [
                {"topic": tp.topic, "partition": tp.partition, **state}
                for tp, state in sorted(ongoing.items())
            ]
            print(json.dumps(listed))
    except Exception as error:
        print(f"{args.command} failed: {error!r}", file=sys.stderr)
        return 1
    finally:
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
