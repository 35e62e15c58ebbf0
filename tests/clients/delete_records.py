#!/usr/bin/env python3
"""DeleteRecords (Kafka API 21) with confluent-kafka's admin client:
AdminClient.delete_records() of --topic's --partition up to --offset (-1: the high watermark)
against --bootstrap. Prints {"low_watermark": N} on stdout and exits 0; an error (the
partition's Kafka error included) goes to stderr with exit status 1.

Used by tests/tests/e2e/delete_records.rs; scripts/install-test-deps.sh installs confluent-kafka
into target/test-deps/venv.
"""

import argparse
import json
import sys

# Bound on the whole call: the test's own timeout is longer, so a hang is reported from here.
TIMEOUT_S = 30


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partition", type=int, required=True)
    parser.add_argument("--offset", type=int, required=True)
    args = parser.parse_args()

    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {"bootstrap.servers": args.bootstrap, "client.id": "strom-tests-confluent-kafka"}
    )
    wanted = TopicPartition(args.topic, args.partition, args.offset)
    futures = admin.delete_records(
        [wanted], request_timeout=TIMEOUT_S, operation_timeout=TIMEOUT_S
    )
    try:
        deleted = futures[wanted].result(timeout=TIMEOUT_S)
    except Exception as error:  # the partition's KafkaException, or a timeout
        print(f"delete_records failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"low_watermark": deleted.low_watermark}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
