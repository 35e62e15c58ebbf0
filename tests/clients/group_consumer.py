#!/usr/bin/env python3
"""One member of a Kafka consumer group, with kafka-python's KafkaConsumer (classic protocol).

Subscribes to TOPIC in GROUP, prints one line per consumed record to stdout,

    <partition> <offset> <value>

flushed line by line, and commits the consumed positions synchronously after each polled
batch (auto commit is off), so a clean stop leaves nothing consumed and uncommitted.
Partitions without a committed offset start from the earliest record.

Events go to stderr as `EVENT <name> ...` lines (`EVENT assigned 0 3` after each rebalance
lists the partitions now owned, `EVENT closed` after leaving the group); library warnings go to
stderr too.

Stops cleanly (finishes and commits the batch in hand, closes the consumer, which leaves the
group) on SIGTERM or SIGINT, on end of stdin with --exit-on-stdin-eof, or after
--idle-exit-seconds without a record. Exit status 0 after a clean stop.

Used by tests/tests/e2e/groups_clients.rs; scripts/install-test-deps.sh installs kafka-python
into target/test-deps/venv.
"""

import argparse
import logging
import os
import signal
import sys
import threading
import time

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError


def event(*words):
    print("EVENT", *words, file=sys.stderr, flush=True)


class Listener(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        event("revoked", *sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned):
        event("assigned", *sorted(tp.partition for tp in assigned))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--name", required=True, help="client id, shown in events and logs")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    parser.add_argument("--idle-exit-seconds", type=float, default=0.0, help="0: never")
    parser.add_argument("--session-timeout-ms", type=int, default=10000)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=1000)
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    args = parser.parse_args()

    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s",
    )

    stop = threading.Event()

    def on_signal(signum, _frame):
        event("signal", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if args.exit_on_stdin_eof:

        def watch_stdin():
            # os.read, not sys.stdin: a daemon thread blocked in a buffered read holds the
            # buffer's lock, and interpreter shutdown aborts on it.
            while os.read(0, 4096):
                pass
            event("stdin-eof")
            stop.set()

        threading.Thread(target=watch_stdin, daemon=True).start()

    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap.split(","),
        client_id=args.name,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=args.heartbeat_interval_ms,
        check_crcs=True,
    )
    # Subscribe, then fetch metadata until it lists the topic, all before the first poll()
    # joins the group. The coordinator snapshots the subscribed topics' partitions on each
    # metadata update after the subscription; a leader that assigns with an empty snapshot
    # rejoins as soon as the next update fills it. kafka-python 3.0.12 can lose that rejoin's
    # outcome: when poll()'s timeout runs out just as the join completes, the next poll no
    # longer needs a rejoin (the snapshots now agree) and never takes the finished join, so
    # the heartbeat stays disabled and the broker expires the member after its session.
    consumer.subscribe([args.topic], listener=Listener())
    deadline = time.monotonic() + 30
    while args.topic not in consumer.topics() and time.monotonic() < deadline:
        time.sleep(0.1)
    event("started", args.name)

    out = sys.stdout
    last_record = time.monotonic()
    status = 0
    try:
        while not stop.is_set():
            batches = consumer.poll(timeout_ms=200, max_records=500)
            if not batches:
                idle = time.monotonic() - last_record
                if args.idle_exit_seconds > 0 and idle >= args.idle_exit_seconds:
                    event("idle", f"{idle:.1f}s")
                    break
                continue
            last_record = time.monotonic()
            for tp in sorted(batches, key=lambda tp: tp.partition):
                for record in batches[tp]:
                    value = record.value.decode("utf-8", "replace") if record.value else ""
                    out.write(f"{record.partition} {record.offset} {value}\n")
                    out.flush()
            try:
                # Commits the position of every assigned partition: everything printed.
                consumer.commit()
            except CommitFailedError as error:
                # The group moved on without us: these records may be consumed again.
                event("commit-failed", repr(error))
    except KafkaError as error:
        event("error", repr(error))
        status = 1
    finally:
        consumer.close()
        event("closed", args.name)
    return status


if __name__ == "__main__":
    sys.exit(main())
