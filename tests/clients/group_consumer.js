#!/usr/bin/env node
// One member of a Kafka consumer group, with kafkajs's consumer (classic protocol).
//
// Subscribes to --topic in --group, prints one line per consumed record to stdout,
//
//     <partition> <offset> <value>
//
// and commits the resolved offsets of each batch (auto commit is off) before taking the next,
// so a clean stop leaves nothing consumed and uncommitted. Partitions without a committed
// offset start from the earliest record.
//
// Events go to stderr as `EVENT <name> ...` lines (`EVENT assigned 0 3` after each join lists
// the partitions now owned, `EVENT closed` after leaving the group); kafkajs's own log lines go
// to stderr too.
//
// Stops cleanly (finishes and commits the batch in hand, disconnects, which leaves the group)
// on SIGTERM or SIGINT, on end of stdin with --exit-on-stdin-eof, or after
// --idle-exit-seconds without a record. Exit status 0 after a clean stop.
//
// Used by tests/tests/e2e/groups_clients.rs, which runs it with
// NODE_PATH=target/test-deps/node/node_modules (scripts/install-test-deps.sh installs kafkajs).
'use strict'

const { Kafka, logLevel } = require('kafkajs')

const USAGE =
  'usage: group_consumer.js --bootstrap HOST:PORT --topic T --group G --name N ' +
  '[--exit-on-stdin-eof] [--idle-exit-seconds S] [--session-timeout-ms MS] ' +
  '[--heartbeat-interval-ms MS] [--log-level ERROR|WARN|INFO|DEBUG]'

function parseArgs(argv) {
  const args = {
    bootstrap: null,
    topic: null,
    group: null,
    name: null,
    exitOnStdinEof: false,
    idleExitSeconds: 0,
    sessionTimeoutMs: 10000,
    heartbeatIntervalMs: 1000,
    logLevel: 'WARN',
  }
  const valued = {
    '--bootstrap': 'bootstrap',
    '--topic': 'topic',
    '--group': 'group',
    '--name': 'name',
    '--idle-exit-seconds': 'idleExitSeconds',
    '--session-timeout-ms': 'sessionTimeoutMs',
    '--heartbeat-interval-ms': 'heartbeatIntervalMs',
    '--log-level': 'logLevel',
  }
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]
    if (flag === '--exit-on-stdin-eof') {
      args.exitOnStdinEof = true
    } else if (flag in valued && i + 1 < argv.length) {
      args[valued[flag]] = argv[++i]
    } else {
      console.error(`unknown or incomplete argument ${flag}\n${USAGE}`)
      process.exit(2)
    }
  }
  for (const key of ['bootstrap', 'topic', 'group', 'name']) {
    if (!args[key]) {
      console.error(`--${key} is required\n${USAGE}`)
      process.exit(2)
    }
  }
  for (const key of ['idleExitSeconds', 'sessionTimeoutMs', 'heartbeatIntervalMs']) {
    args[key] = Number(args[key])
  }
  return args
}

function event(...words) {
  process.stderr.write(['EVENT', ...words].join(' ') + '\n')
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const level = logLevel[args.logLevel.toUpperCase()]
  const kafka = new Kafka({
    clientId: args.name,
    brokers: args.bootstrap.split(','),
    logLevel: level === undefined ? logLevel.WARN : level,
    // kafkajs logs to stdout by default: keep stdout for records only.
    logCreator: () => ({ namespace, level, label, log }) => {
      const { message, ...extra } = log
      process.stderr.write(
        `${new Date().toISOString()} ${args.name} ${label} ${namespace}: ${message} ` +
          `${JSON.stringify(extra)}\n`
      )
    },
  })
  const consumer = kafka.consumer({
    groupId: args.group,
    sessionTimeout: args.sessionTimeoutMs,
    heartbeatInterval: args.heartbeatIntervalMs,
    maxWaitTimeInMs: 500,
    allowAutoTopicCreation: false,
  })
  consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
    const partitions = (payload.memberAssignment[args.topic] || []).slice().sort((a, b) => a - b)
    event('assigned', ...partitions)
  })
  consumer.on(consumer.events.CRASH, ({ payload }) => {
    event('crash', `restart=${payload.restart}`, String(payload.error))
    if (!payload.restart) {
      stop(1)
    }
  })

  let stopping = null
  let lastRecord = Date.now()
  let idleTimer = null
  const stop = status => {
    if (stopping === null) {
      stopping = (async () => {
        clearInterval(idleTimer)
        try {
          await consumer.disconnect()
        } catch (error) {
          event('error', String(error))
          status = 1
        }
        event('closed', args.name)
        process.exit(status)
      })()
    }
    return stopping
  }
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      event('signal', signal)
      stop(0)
    })
  }
  if (args.exitOnStdinEof) {
    process.stdin.on('data', () => {})
    process.stdin.on('end', () => {
      event('stdin-eof')
      stop(0)
    })
    process.stdin.resume()
  }
  idleTimer = setInterval(() => {
    const idle = (Date.now() - lastRecord) / 1000
    if (args.idleExitSeconds > 0 && idle >= args.idleExitSeconds) {
      event('idle', `${idle.toFixed(1)}s`)
      stop(0)
    }
  }, 200)

  await consumer.connect()
  await consumer.subscribe({ topics: [args.topic], fromBeginning: true })
  event('started', args.name)
  await consumer.run({
    autoCommit: false,
    eachBatchAutoResolve: false,
    eachBatch: async ({
      batch,
      resolveOffset,
      heartbeat,
      commitOffsetsIfNecessary,
      uncommittedOffsets,
      isRunning,
      isStale,
    }) => {
      for (const message of batch.messages) {
        if (!isRunning() || isStale()) {
          break
        }
        const value = message.value === null ? '' : message.value.toString('utf8')
        process.stdout.write(`${batch.partition} ${message.offset} ${value}\n`)
        resolveOffset(message.offset)
        lastRecord = Date.now()
      }
      // Commits what this member resolved (printed), waiting for the broker's answer.
      await commitOffsetsIfNecessary(uncommittedOffsets())
      await heartbeat()
    },
  })
}

main().catch(error => {
  event('error', String(error && error.stack ? error.stack : error))
  process.exit(1)
})
