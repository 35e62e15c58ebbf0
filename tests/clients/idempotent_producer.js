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

const { Kafka, logLevel } = require('kafkajs')

const USAGE =
  'usage: idempotent_producer.js --bootstrap HOST:PORT --topic T --count N ' +
  '[--partitions P] [--chunk C] [--prefix S] [--log-level ERROR|WARN|INFO|DEBUG]'
// Requests in flight per broker: the most an idempotent producer may have (Kafka's limit).
const IN_FLIGHT_MAX = 5
// Bound on the whole run: the test's own timeout is longer, so a hang is reported from here.
const DEADLINE_MS = 60000

function parseArgs(argv) {
  const args = {
    bootstrap: null,
    topic: null,
    count: null,
    partitions: 1,
    chunk: 50,
    prefix: 'rec',
    logLevel: 'WARN',
  }
  const valued = {
    '--bootstrap': 'bootstrap',
    '--topic': 'topic',
    '--count': 'count',
    '--partitions': 'partitions',
    '--chunk': 'chunk',
    '--prefix': 'prefix',
    '--log-level': 'logLevel',
  }
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]
    if (flag in valued && i + 1 < argv.length) {
      args[valued[flag]] = argv[++i]
    } else {
      console.error(`unknown or incomplete argument ${flag}\n${USAGE}`)
      process.exit(2)
    }
  }
  for (const key of ['bootstrap', 'topic', 'count']) {
    if (!args[key]) {
      console.error(`--${key} is required\n${USAGE}`)
      process.exit(2)
    }
  }
  for (const key of ['count', 'partitions', 'chunk']) {
    args[key] = Number(args[key])
  }
  return args
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const level = logLevel[args.logLevel.toUpperCase()]
  const kafka = new Kafka({
    clientId: 'strom-tests-kafkajs',
    brokers: args.bootstrap.split(','),
    logLevel: level === undefined ? logLevel.WARN : level,
    // kafkajs logs to stdout by default: keep stdout for the acknowledgements.
    logCreator: () => ({ namespace, label, log }) => {
      const { message, ...extra } = log
      process.stderr.write(
        `${new Date().toISOString()} ${label} ${namespace}: ${message} ${JSON.stringify(extra)}\n`
      )
    },
  })
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

const deadline = setTimeout(() => {
  process.stderr.write(`FAILED no completion within ${DEADLINE_MS} ms\n`)
  process.exit(1)
}, DEADLINE_MS)

main().then(
  status => {
    clearTimeout(deadline)
    process.exit(status)
  },
  error => {
    process.stderr.write(`FAILED ${String(error && error.stack ? error.stack : error)}\n`)
    process.exit(1)
  }
)
