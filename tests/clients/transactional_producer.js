#!/usr/bin/env node
// A transactional producer with kafkajs (`transactionalId`, `idempotent: true`,
// maxInFlightRequests 1, as kafkajs requires for transactions).
//
// Runs three transactions one after the other on --topic: the first is committed, the second
// aborted, the third committed. Each sends --count records in one send (kafkajs waits for the
// acknowledgements before send returns, so an aborted record is in the log behind its ABORT
// marker): record i of transaction t goes to partition i % --partitions with key `k<i>` and
// value `<prefix>-t<t>-<commit|abort>-<i>` (six digits). After each transaction ends it prints
//
//     <t> <committed|aborted>
//
// to stdout, and exits 0 after the third. A failure prints `FAILED <error>` to stderr and the
// exit status is 1. kafkajs's log goes to stderr (--log-level).
//
// Used by tests/tests/e2e/transactions.rs, which runs it with
// NODE_PATH=target/test-deps/node/node_modules (scripts/install-test-deps.sh installs kafkajs).
'use strict'

const { Kafka, logLevel } = require('kafkajs')

const USAGE =
  'usage: transactional_producer.js --bootstrap HOST:PORT --topic T --transactional-id ID ' +
  '--count N [--partitions P] [--prefix S] [--log-level ERROR|WARN|INFO|DEBUG]'
// Bound on the whole run: the test's own timeout is longer, so a hang is reported from here.
const DEADLINE_MS = 60000
// [transaction index, commit?] in the order they run.
const TRANSACTIONS = [
  [0, true],
  [1, false],
  [2, true],
]

function parseArgs(argv) {
  const args = {
    bootstrap: null,
    topic: null,
    transactionalId: null,
    count: null,
    partitions: 1,
    prefix: 'rec',
    logLevel: 'WARN',
  }
  const valued = {
    '--bootstrap': 'bootstrap',
    '--topic': 'topic',
    '--transactional-id': 'transactionalId',
    '--count': 'count',
    '--partitions': 'partitions',
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
  for (const key of ['bootstrap', 'topic', 'transactionalId', 'count']) {
    if (!args[key]) {
      console.error(`--${key} is required\n${USAGE}`)
      process.exit(2)
    }
  }
  for (const key of ['count', 'partitions']) {
    args[key] = Number(args[key])
  }
  return args
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const level = logLevel[args.logLevel.toUpperCase()]
  const kafka = new Kafka({
    clientId: 'strom-tests-kafkajs-txn',
    brokers: args.bootstrap.split(','),
    logLevel: level === undefined ? logLevel.WARN : level,
    // kafkajs logs to stdout by default: keep stdout for the outcomes.
    logCreator: () => ({ namespace, label, log }) => {
      const { message, ...extra } = log
      process.stderr.write(
        `${new Date().toISOString()} ${label} ${namespace}: ${message} ${JSON.stringify(extra)}\n`
      )
    },
  })
  const producer = kafka.producer({
    transactionalId: args.transactionalId,
    idempotent: true,
    maxInFlightRequests: 1,
    allowAutoTopicCreation: false,
  })
  await producer.connect()
  try {
    for (const [txn, commit] of TRANSACTIONS) {
      const outcome = commit ? 'commit' : 'abort'
      const messages = []
      for (let i = 0; i < args.count; i++) {
        messages.push({
          partition: i % args.partitions,
          key: `k${i}`,
          value: `${args.prefix}-t${txn}-${outcome}-${String(i).padStart(6, '0')}`,
        })
      }
      const transaction = await producer.transaction()
      await transaction.send({ topic: args.topic, acks: -1, messages })
      if (commit) {
        await transaction.commit()
      } else {
        await transaction.abort()
      }
      process.stdout.write(`${txn} ${commit ? 'committed' : 'aborted'}\n`)
    }
  } finally {
    await producer.disconnect()
  }
  return 0
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
