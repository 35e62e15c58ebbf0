#!/usr/bin/env python3
"""An idempotent producer (enable_idempotence=True) with kafka-python's KafkaProducer or
aiokafka's AIOKafkaProducer.

Sends --count records to --topic without waiting for each answer (the library batches and
pipelines them): record i goes to partition i % --partitions with key `k<i>` and value
`<prefix>-<i>` (six digits). Once every record is acknowledged it prints one line per record,
in send order, to stdout,

    <partition> <offset> <value>

and exits 0. A record that fails prints `FAILED <value> <error>` to stderr and the exit status
is 1. The library's log goes to stderr (--log-level).

Used by tests/tests/e2e/idempotence.rs; scripts/install-test-deps.sh installs both libraries
into target/test-deps/venv.
"""

import asyncio
import sys

from common import DEADLINE_S, parse, producer_parser


def records(args):
    for i in range(args.count):
        value = f"{args.prefix}-{i:06}".encode()
        yield i % args.partitions, f"k{i}".encode(), value


def report(acks, failures):
    for partition, offset, value in acks:
        print(partition, offset, value.decode())
    for value, error in failures:
        print("FAILED", value.decode(), repr(error), file=sys.stderr)
    sys.stdout.flush()
    return 1 if failures else 0


def run_kafka_python(args):
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap.split(","),
        client_id="strom-tests-kafka-python",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        request_timeout_ms=10000,
        delivery_timeout_ms=DEADLINE_S * 1000,
    )
    sent = []
    for partition, key, value in records(args):
        sent.append((value, producer.send(args.topic, key=key, value=value, partition=partition)))
    producer.flush(timeout=DEADLINE_S)
    acks, failures = [], []
    for value, future in sent:
        try:
            metadata = future.get(timeout=DEADLINE_S)
            acks.append((metadata.partition, metadata.offset, value))
        except Exception as error:  # noqa: BLE001 - every failure is reported
            failures.append((value, error))
    producer.close(timeout=10)
    return report(acks, failures)


async def run_aiokafka(args):
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        client_id="strom-tests-aiokafka",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        request_timeout_ms=10000,
    )
    await producer.start()
    try:
        sent = []
        for partition, key, value in records(args):
            future = await producer.send(args.topic, value=value, key=key, partition=partition)
            sent.append((value, future))
        acks, failures = [], []
        for value, future in sent:
            try:
                metadata = await asyncio.wait_for(future, DEADLINE_S)
                acks.append((metadata.partition, metadata.offset, value))
            except Exception as error:  # noqa: BLE001 - every failure is reported
                failures.append((value, error))
    finally:
        await producer.stop()
    return report(acks, failures)


def main():
    args = parse(producer_parser(__doc__.split("\n")[0]))
    if args.library == "kafka-python":
        return run_kafka_python(args)
    return asyncio.run(asyncio.wait_for(run_aiokafka(args), DEADLINE_S))


if __name__ == "__main__":
    sys.exit(main())
