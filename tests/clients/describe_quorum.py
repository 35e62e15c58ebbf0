#!/usr/bin/env python3
"""DescribeQuorum (Kafka API 55, KIP-853) with kafka-python's admin client:
KafkaAdminClient.describe_metadata_quorum() against --bootstrap. Prints the answer (leader,
epoch, high watermark, voters and observers with their log end offsets and timestamps, and the
voters' nodes with their listeners) as one JSON object on stdout and exits 0; an error goes to
stderr with exit status 1.

Used by tests/tests/e2e/quorum_membership.rs; scripts/install-test-deps.sh installs
kafka-python into target/test-deps/venv.
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
        quorum = admin.describe_metadata_quorum()
    except Exception as error:  # the test shows whatever the library raised
        print(f"describe_metadata_quorum failed: {error!r}", file=sys.stderr)
        return 1
    finally:
        admin.close()
    # Directory ids come back as UUID objects: printed as text.
    json.dump(quorum, sys.stdout, default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
