// What the kafkajs producer scripts of this directory share: their command line, a Kafka
// client whose log goes to stderr (stdout is for what the script reports), and the bound on
// the whole run. Loaded with require('./common'), relative to the script, so NODE_PATH needs
// only kafkajs.
'use strict'

const { Kafka, logLevel } = require('kafkajs')

// Bound on the whole run: the tests' own timeout is longer, so a hang is reported from here.
const DEADLINE_MS = 60000

// Parses a producer script's arguments. Every script takes --bootstrap, --topic, --count,
// --partitions (default 1), --prefix (default `rec`) and --log-level (default WARN); `extra`
// adds its own: `{ flag: [key, default] }`, a null default making the flag required.
// `numbers` names the keys, beyond count and partitions, that hold numbers. A wrong command
// line prints it with `usage` to stderr and exits 2.
function parseProducerArgs(argv, usage, extra = {}, numbers = []) {
  const specs = {
    '--bootstrap': ['bootstrap', null],
    '--topic': ['topic', null],
    ...extra,
    '--count': ['count', null],
    '--partitions': ['partitions', 1],
    '--prefix': ['prefix', 'rec'],
    '--log-level': ['logLevel', 'WARN'],
  }
  const args = {}
  for (const [key, value] of Object.values(specs)) {
    args[key] = value
  }
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]
    if (flag in specs && i + 1 < argv.length) {
      args[specs[flag][0]] = argv[++i]
    } else {
      console.error(`unknown or incomplete argument ${flag}\n${usage}`)
      process.exit(2)
    }
  }
  for (const [flag, [key, value]] of Object.entries(specs)) {
    if (value === null && !args[key]) {
      console.error(`${flag} is required\n${usage}`)
      process.exit(2)
    }
  }
  for (const key of ['count', 'partitions', ...numbers]) {
    args[key] = Number(args[key])
  }
  return args
}

// A kafkajs client of `args.bootstrap` that logs at `args.logLevel` to stderr.
function stderrKafka(clientId, args) {
  const level = logLevel[args.logLevel.toUpperCase()]
  return new Kafka({
    clientId,
    brokers: args.bootstrap.split(','),
    logLevel: level === undefined ? logLevel.WARN : level,
    // kafkajs logs to stdout by default: keep stdout for what the script reports.
    logCreator: () => ({ namespace, label, log }) => {
      const { message, ...extra } = log
      process.stderr.write(
        `${new Date().toISOString()} ${label} ${namespace}: ${message} ${JSON.stringify(extra)}\n`
      )
    },
  })
}

// Runs `main` to the exit status it returns; an error, or no end within DEADLINE_MS, prints
// `FAILED <error>` to stderr and exits 1.
function runMain(main) {
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
}

module.exports = { parseProducerArgs, stderrKafka, runMain }
