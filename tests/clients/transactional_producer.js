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

const { parseProducerArgs, runMain, stderrKafka } = require('./common')

const USAGE =
  'usage: transactional_producer.js --bootstrap HOST:PORT --topic T --transactional-id ID ' +
  '--count N [--partitions P] [--prefix S] [--log-level ERROR|WARN|INFO|DEBUG]'
// [transaction index, commit?] in the order they run.
const TRANSACTIONS = [
  [0, true],
  [1, false],
  [2, true],
]

async function main() {
  const args = parseProducerArgs(process.argv.slice(2), USAGE, {
    '--transactional-id': ['transactionalId', null],
  })
  const kafka = stderrKafka('strom-tests-kafkajs-txn', args)
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

runMain(main)
