#!/usr/bin/env node
// An idempotent producer with kafkajs (`idempotent: true`, acks -1, maxInFlightRequests 5).
//
// Sends --count records to --topic in sends of --chunk records, one send after the other:
// kafkajs orders nothing between concurrent send() calls (each takes the broker's lock for its
// sequence numbers in whatever order they reach it), so "send order" is only defined for
// sends that wait for each other. Record i goes to partition i % --partitions with key `k<i>`
// and value `<prefix>-<i>` (six digits). Once every send is acknowledged it prints one line per
// record, in send order, to stdout,
//
//     <partition> <offset> <value>
//
// (a send's records on one partition sit at its base offset plus their rank there) and exits 0.
// A failed send prints `FAILED <error>` to stderr and the exit status is 1. kafkajs's log goes
// to stderr (--log-level).
//
// Used by tests/tests/e2e/idempotence.rs, which runs it with
// NODE_PATH=target/test-deps/node/node_modules (scripts/install-test-deps.sh installs kafkajs).
'use strict'

const { parseProducerArgs, runMain, stderrKafka } = require('./common')

const USAGE =
  'usage: idempotent_producer.js --bootstrap HOST:PORT --topic T --count N ' +
  '[--partitions P] [--chunk C] [--prefix S] [--log-level ERROR|WARN|INFO|DEBUG]'
// Requests in flight per broker: the most an idempotent producer may have (Kafka's limit).
const IN_FLIGHT_MAX = 5

async function main() {
  const argv = process.argv.slice(2)
  const args = parseProducerArgs(argv, USAGE, { '--chunk': ['chunk', 50] }, ['chunk'])
  const kafka = stderrKafka('strom-tests-kafkajs', args)
  const producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: IN_FLIGHT_MAX,
    allowAutoTopicCreation: false,
  })
  await producer.connect()

  const chunks = []
  for (let first = 0; first < args.count; first += args.chunk) {
    const messages = []
    for (let i = first; i < Math.min(first + args.chunk, args.count); i++) {
      messages.push({
        partition: i % args.partitions,
        key: `k${i}`,
        value: `${args.prefix}-${String(i).padStart(6, '0')}`,
      })
    }
    chunks.push(messages)
  }
  const lines = []
  let failed = false
  for (const messages of chunks) {
    let answer
    try {
      answer = await producer.send({ topic: args.topic, acks: -1, messages })
    } catch (error) {
      failed = true
      process.stderr.write(`FAILED ${String(error && error.stack ? error.stack : error)}\n`)
      break
    }
    const base = new Map(answer.map(m => [m.partition, BigInt(m.baseOffset)]))
    const rank = new Map()
    for (const message of messages) {
      const n = rank.get(message.partition) || 0n
      rank.set(message.partition, n + 1n)
      lines.push(`${message.partition} ${base.get(message.partition) + n} ${message.value}`)
    }
  }
  await producer.disconnect()
  process.stdout.write(lines.map(line => line + '\n').join(''))
  return failed ? 1 : 0
}

runMain(main)
