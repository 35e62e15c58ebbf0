#!/usr/bin/env python3
"""ElectLeaders (Kafka API 43) with confluent-kafka's admin client:
AdminClient.elect_leaders() of --type (preferred or unclean) for each --partition TOPIC:INDEX
against --bootstrap. Prints {"TOPIC:INDEX": null | "KAFKA_ERROR_NAME", ...} on stdout and exits
0; a failure of the request as a whole goes to stderr with exit status 1.

Used by tests/tests/e2e/admin_ops.rs; scripts/install-test-deps.sh installs confluent-kafka into
target/test-deps/venv.
"""

import argparse
import json
import sys

# Bound on the whole call: the test's own timeout is longer, so a hang is reported from here.
TIMEOUT_S = 30


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    parser.add_argument("--type", choices=["preferred", "unclean"], required=True)
    parser.add_argument("--partition", action="append", required=True, help="TOPIC:INDEX")
    args = parser.parse_args()

    from confluent_kafka import ElectionType, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {"bootstrap.servers": args.bootstrap, "client.id": "strom-tests-confluent-kafka"}
    )
    wanted = []
    for spec in args.partition:
        topic, index = spec.rsplit(":", 1)
        wanted.append(TopicPartition(topic, int(index)))
    election = ElectionType.PREFERRED if args.type == "preferred" else ElectionType.UNCLEAN
    # No timeout keywords: confluent-kafka 2.16's binding fails to parse them (SystemError
    # "more argument specifiers than keyword list entries"); the future's own wait bounds it.
    future = admin.elect_leaders(election, wanted)
    try:
        results = future.result(timeout=TIMEOUT_S)
    except Exception as error:  # the request's KafkaException, or a timeout
        print(f"elect_leaders failed: {error}", file=sys.stderr)
        return 1
    answer = {}
    for tp, error in results.items():
        # A KafkaError (the docs say KafkaException; 2.16 hands the error itself).
        if isinstance(error, Exception):
            error = error.args[0]
        name = None if error is None or error.code() == 0 else error.name()
        answer[f"{tp.topic}:{tp.partition}"] = name
    print(json.dumps(answer, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
