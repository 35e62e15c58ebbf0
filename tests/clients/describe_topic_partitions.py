#!/usr/bin/env python3
"""DescribeTopicPartitions (Kafka API 75, KIP-966) with kafka-python's admin client:
KafkaAdminClient.describe_topic_partitions() of the --topic names (none: every topic) against
--bootstrap, --limit partitions a page. With --all-pages it follows each answer's next_cursor
until there is none (at most PAGES_MAX pages). Prints the pages as one JSON list on stdout,
each {"topics": [...], "next_cursor": null | {"topic_name", "partition_index"}}, and exits 0;
an error goes to stderr with exit status 1.

Used by tests/tests/e2e/describe_topic_partitions.rs; scripts/install-test-deps.sh installs
kafka-python into target/test-deps/venv.
"""

import argparse
import json
import logging
import sys

# Bound on --all-pages: a broker whose cursor never ends fails the run instead of hanging it.
PAGES_MAX = 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    parser.add_argument("--topic", action="append", default=[], help="a topic to describe")
    parser.add_argument("--limit", type=int, default=2000, help="response_partition_limit")
    parser.add_argument("--all-pages", action="store_true", help="follow next_cursor")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper())

    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=args.bootstrap.split(","),
        client_id="strom-tests-kafka-python",
        request_timeout_ms=30000,
    )
    pages = []
    try:
        cursor = None
        while True:
            page = admin.describe_topic_partitions(
                args.topic, response_partition_limit=args.limit, cursor=cursor
            )
            pages.append(page)
            cursor = page["next_cursor"]
            if cursor is None or not args.all_pages:
                break
            if len(pages) >= PAGES_MAX:
                print(f"still a next_cursor after {PAGES_MAX} pages", file=sys.stderr)
                return 1
    except Exception as error:
        print(f"describe_topic_partitions failed: {error!r}", file=sys.stderr)
        return 1
    finally:
        admin.close()
    # topic ids are uuid.UUID objects
    print(json.dumps(pages, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
