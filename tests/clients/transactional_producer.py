#!/usr/bin/env python3
"""A transactional producer (transactional_id=...) with kafka-python's KafkaProducer or
aiokafka's AIOKafkaProducer.

Runs three transactions one after the other on --topic: the first is committed, the second
aborted, the third committed. Each sends --count records: record i of transaction t goes to
partition i % --partitions with key `k<i>` and value `<prefix>-t<t>-<commit|abort>-<i>` (six
digits). Every record is acknowledged before its transaction ends, so an aborted one is in the
log (behind its ABORT marker) and a read_uncommitted consumer sees it. After each transaction
ends it prints

    <t> <committed|aborted>

to stdout, and exits 0 after the third. A failure prints `FAILED <error>` to stderr and the exit
status is 1. The library's log goes to stderr (--log-level).

Used by tests/tests/e2e/transactions.rs; scripts/install-test-deps.sh installs both libraries
into target/test-deps/venv.
"""

import asyncio
import sys

from common import DEADLINE_S, parse, producer_parser

# (transaction index, commit?) in the order they run.
TRANSACTIONS = [(0, True), (1, False), (2, True)]


def records(args, txn, commit):
    outcome = "commit" if commit else "abort"
    for i in range(args.count):
        value = f"{args.prefix}-t{txn}-{outcome}-{i:06}".encode()
        yield i % args.partitions, f"k{i}".encode(), value


def ended(txn, commit):
    print(txn, "committed" if commit else "aborted")
    sys.stdout.flush()


def run_kafka_python(args):
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap.split(","),
        client_id="strom-tests-kafka-python-txn",
        transactional_id=args.transactional_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        request_timeout_ms=10000,
        delivery_timeout_ms=DEADLINE_S * 1000,
    )
    try:
        producer.init_transactions()
        for txn, commit in TRANSACTIONS:
            producer.begin_transaction()
            futures = [
                producer.send(args.topic, key=key, value=value, partition=partition)
                for partition, key, value in records(args, txn, commit)
            ]
            producer.flush(timeout=DEADLINE_S)
            for future in futures:
                future.get(timeout=DEADLINE_S)
            if commit:
                producer.commit_transaction()
            else:
                producer.abort_transaction()
            ended(txn, commit)
    finally:
        producer.close(timeout=10)
    return 0


async def run_aiokafka(args):
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        client_id="strom-tests-aiokafka-txn",
        transactional_id=args.transactional_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        request_timeout_ms=10000,
    )
    # start() sends InitProducerId with the transactional id.
    await producer.start()
    try:
        for txn, commit in TRANSACTIONS:
            await producer.begin_transaction()
            futures = []
            for partition, key, value in records(args, txn, commit):
                futures.append(
                    await producer.send(args.topic, value=value, key=key, partition=partition)
                )
            await asyncio.gather(*futures)
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
            ended(txn, commit)
    finally:
        await producer.stop()
    return 0


def main():
    parser = producer_parser(__doc__.split("\n")[0], count_help="records per transaction")
    parser.add_argument("--transactional-id", required=True)
    args = parse(parser)
    try:
        if args.library == "kafka-python":
            return run_kafka_python(args)
        return asyncio.run(asyncio.wait_for(run_aiokafka(args), DEADLINE_S))
    except Exception as error:  # noqa: BLE001 - every failure is reported
        print("FAILED", repr(error), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
