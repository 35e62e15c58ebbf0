#!/usr/bin/env python3
"""DescribeLogDirs (Kafka API 35) with kafka-python's admin client:
KafkaAdminClient.describe_log_dirs() of every partition on every broker of --bootstrap.
Prints the answer (per broker, its log dirs with their partitions' sizes and offset lags) as
one JSON list on stdout and exits 0; an error goes to stderr with exit status 1.

Used by tests/tests/e2e/log_dirs.rs; scripts/install-test-deps.sh installs kafka-python into
target/test-deps/venv. (confluent-kafka has no describe_log_dirs.)
"""

import argparse
import json
import logging
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper())

    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=args.bootstrap.split(","),
        client_id="strom-tests-kafka-python",
        request_timeout_ms=30000,
    )
    try:
        answer = admin.describe_log_dirs()
    except Exception as error:
        print(f"describe_log_dirs failed: {error!r}", file=sys.stderr)
        return 1
    finally:
        admin.close()
    print(json.dumps(answer, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
