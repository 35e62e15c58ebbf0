//! The operator conveniences of issue 16, run as the real binary:
//!
//! - `--log-format json` (and `STROM_LOG_FORMAT=json`) make every stderr line of a running
//!   node one JSON object with a timestamp, a level, a target and a message; a topic's
//!   creation is one `strom_controller::changes` line naming the topic.
//! - `STROM_BOOTSTRAP_CONTROL` is the CLI's default control address; the flag still wins.
//! - `strom completions SHELL` prints a completion script for bash, zsh and fish, and refuses
//!   an unknown shell with a usage error.

use std::process::{Command, Stdio};

use anyhow::{ensure, Context};
use serde_json::Value;
use strom_tests::binary::strom_binary;
use strom_tests::cluster::{cli, CLI_TIMEOUT};
use strom_tests::{kafka, wait_until, with_node, NodeOptions};

/// Every line strom wrote to `log` as a JSON object with the fields a log shipper needs (the
/// harness's own `===== strom-tests:` banners left out).
fn json_lines(log: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let written =
        log.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("===== strom-tests:"));
    for line in written {
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("not a JSON line: {line}"))?;
        for field in ["timestamp", "level", "target", "message"] {
            ensure!(value.get(field).is_some(), "no {field} in {line}");
        }
        out.push(value);
    }
    Ok(out)
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    for (args, env) in [
        (vec!["--log-format".to_string(), "json".to_string()], vec![]),
        (vec![], vec![("STROM_LOG_FORMAT".to_string(), "json".to_string())]),
    ] {
        let options = NodeOptions { extra_args: args, env, ..NodeOptions::default() };
        with_node(options, |node| {
            kafka::create_topic(&node.bootstrap(), "json-logs", 1, &[])?;
            let lines = wait_until(CLI_TIMEOUT, "the topic creation is logged", || {
                let lines = json_lines(&node.stderr())?;
                // The active controller's one line per committed change, with its ids.
                let created = lines.iter().any(|l| {
                    l["target"] == "strom_controller::changes"
                        && l["message"] == "topic created"
                        && l["topic"] == "json-logs"
                });
                Ok(created.then_some(lines))
            })?;
            ensure!(lines.len() > 3, "only {} log lines", lines.len());
            ensure!(lines.iter().any(|l| l["level"] == "INFO"), "no INFO line among {lines:?}");
            Ok(())
        });
    }
}

#[test]
fn the_cli_takes_its_control_address_from_the_environment() {
    with_node(NodeOptions::default(), |node| {
        kafka::create_topic(&node.bootstrap(), "from-env", 1, &[])?;
        let run = |env: Option<&str>, args: &[&str]| -> anyhow::Result<(i32, String)> {
            let mut command = Command::new(strom_binary()?);
            command.args(args).stdin(Stdio::null()).env_remove("STROM_BOOTSTRAP_CONTROL");
            if let Some(addr) = env {
                command.env("STROM_BOOTSTRAP_CONTROL", addr);
            }
            let out = command.output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            Ok((out.status.code().unwrap_or(-1), text))
        };
        let control = node.control_addr().to_string();
        let (code, text) = run(Some(&control), &["topic", "list"])?;
        ensure!(code == 0 && text.contains("from-env"), "exit {code}: {text}");
        // The flag wins over the environment: a closed port in the environment is ignored.
        let (code, text) =
            run(Some("127.0.0.1:1"), &["topic", "list", "--bootstrap-control", &control])?;
        ensure!(code == 0 && text.contains("from-env"), "exit {code}: {text}");
        // And the environment is really used: a closed port there fails to connect (exit 1).
        let (code, text) = run(Some("127.0.0.1:1"), &["topic", "list"])?;
        ensure!(code == 1, "exit {code} with STROM_BOOTSTRAP_CONTROL on a closed port: {text}");
        // A malformed address is a usage error that names the variable's value.
        let (code, text) = run(Some("no-port"), &["topic", "list"])?;
        ensure!(code == 2 && text.contains("no-port"), "exit {code}: {text}");
        Ok(())
    });
}

#[test]
fn completions_are_printed_for_each_shell() -> anyhow::Result<()> {
    for (shell, marker) in
        [("bash", "complete -F"), ("zsh", "#compdef strom"), ("fish", "complete -c strom")]
    {
        let out = cli(&["completions", shell], CLI_TIMEOUT)?;
        ensure!(out.status.success(), "{shell}: {out:?}");
        ensure!(out.stdout.contains(marker), "{shell} script lacks {marker:?}");
        // Subcommands and their flags are in the script.
        ensure!(out.stdout.contains("delete-records"), "{shell} script lacks topic delete-records");
    }
    let out = cli(&["completions", "cmd.exe"], CLI_TIMEOUT)?;
    ensure!(out.status.code() == Some(2), "an unknown shell: {out:?}");
    ensure!(out.stderr.contains("cmd.exe"), "{out:?}");
    Ok(())
}

/// Runs `strom ARGS` with `input` on stdin; exit code, stdout, stderr.
fn strom_with_input(args: &[&str], input: &str) -> anyhow::Result<(i32, String, String)> {
    use std::io::Write;
    let mut child = Command::new(strom_binary()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `strom produce` with each codec, keys split at a separator and a header: librdkafka reads
/// every record back with its key, value and header, keyed records sit in the partition
/// librdkafka's murmur2 partitioner (Kafka's default) picks for the same key, and an unknown
/// topic, a bad codec and a partition out of range are refused.
#[test]
fn strom_produce_writes_records_librdkafka_reads() {
    with_node(NodeOptions::default(), |node| {
        let topic = "cli-produce";
        kafka::create_topic(&node.bootstrap(), topic, 3, &[])?;
        let brokers = node.bootstrap();
        let mut expected = Vec::new();
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let lines: Vec<String> = (0..20).map(|i| format!("{codec}-k{i}:value {i}")).collect();
            let args = [
                "produce",
                topic,
                "--brokers",
                &brokers,
                "--key-separator",
                ":",
                "--header",
                &format!("codec={codec}"),
                "--compression",
                codec,
            ];
            let (code, _, err) = strom_with_input(&args, &(lines.join("\n") + "\n"))?;
            ensure!(code == 0, "produce with {codec}: exit {code}: {err}");
            for i in 0..20 {
                expected.push((format!("{codec}-k{i}"), format!("value {i}"), codec.to_string()));
            }
        }
        let read = kafka::consume_all(&brokers, topic, &[0, 1, 2], &[])?;
        ensure!(
            read.len() == expected.len(),
            "{} records read, {} written",
            read.len(),
            expected.len()
        );
        // Where librdkafka's murmur2 partitioner puts each key.
        kafka::create_topic(&brokers, "cli-probe", 3, &[])?;
        let probe = kafka::AckingProducer::new(&brokers, &[("partitioner", "murmur2_random")])?;
        for (id, record) in read.iter().enumerate() {
            let key = String::from_utf8(record.key.clone().context("no key")?)?;
            let value = String::from_utf8(record.value.clone().context("no value")?)?;
            let header = record.headers.first().cloned().context("no header")?;
            let codec = String::from_utf8(header.1.clone().context("null header")?)?;
            ensure!(header.0 == "codec", "header {header:?}");
            ensure!(
                expected.contains(&(key.clone(), value, codec)),
                "unexpected record {record:?}"
            );
            probe.send(
                "cli-probe",
                id,
                kafka::Outgoing {
                    key: Some(key.as_bytes()),
                    value: Some(b"x"),
                    ..Default::default()
                },
            )?;
        }
        probe.flush(CLI_TIMEOUT)?;
        let placed = probe.acks_of(0..read.len())?;
        for (record, ack) in read.iter().zip(&placed) {
            ensure!(
                record.partition == ack.partition,
                "key {:?}: strom produce chose partition {}, librdkafka's murmur2 {}",
                record.key,
                record.partition,
                ack.partition
            );
        }
        let refused = |args: &[&str], code: i32, needle: &str| -> anyhow::Result<()> {
            let (got, _, err) = strom_with_input(args, "x\n")?;
            ensure!(got == code && err.contains(needle), "{args:?}: exit {got}: {err}");
            Ok(())
        };
        refused(&["produce", "no-such-topic", "--brokers", &brokers], 2, "no-such-topic")?;
        refused(
            &["produce", topic, "--brokers", &brokers, "--compression", "brotli"],
            2,
            "brotli",
        )?;
        refused(
            &["produce", topic, "--brokers", &brokers, "--partition", "7"],
            2,
            "no partition 7",
        )?;
        refused(&["produce", topic, "--brokers", "127.0.0.1:1"], 1, "127.0.0.1:1")?;
        Ok(())
    });
}

/// `strom consume` reads what librdkafka wrote (zstd and lz4 batches, keys, headers) as JSON;
/// starts at a timestamp; with `--group --commit` a second run starts where the first
/// stopped.
#[test]
fn strom_consume_reads_records_librdkafka_wrote() {
    with_node(NodeOptions::default(), |node| {
        let topic = "cli-consume";
        let brokers = node.bootstrap();
        kafka::create_topic(&brokers, topic, 2, &[])?;
        let write = |codec: &str, from: usize, to: usize, ts: i64| -> anyhow::Result<()> {
            let producer = kafka::AckingProducer::new(&brokers, &[("compression.type", codec)])?;
            let headers = vec![("h".to_string(), Some(b"v".to_vec()))];
            for id in from..to {
                let (key, value) = (format!("k{id}"), format!("v{id}"));
                producer.send(
                    topic,
                    id,
                    kafka::Outgoing {
                        partition: Some((id % 2) as i32),
                        key: Some(key.as_bytes()),
                        value: Some(value.as_bytes()),
                        headers: &headers,
                        timestamp_ms: Some(ts + id as i64),
                    },
                )?;
            }
            producer.flush(CLI_TIMEOUT)
        };
        write("zstd", 0, 50, 1_000_000)?;
        write("lz4", 50, 100, 2_000_000)?;
        let consume = |extra: &[&str]| -> anyhow::Result<Vec<Value>> {
            let mut args = vec!["consume", topic, "--brokers", &brokers, "-e", "--format", "json"];
            args.extend_from_slice(extra);
            let (code, out, err) = strom_with_input(&args, "")?;
            ensure!(code == 0, "consume {extra:?}: exit {code}: {err}");
            out.lines().map(|l| serde_json::from_str(l).context("a JSON line")).collect()
        };
        let all = consume(&[])?;
        ensure!(all.len() == 100, "{} records", all.len());
        for record in &all {
            let key = record["key"].as_str().context("key")?;
            let id: usize = key[1..].parse()?;
            ensure!(record["value"] == format!("v{id}"), "{record}");
            ensure!(record["partition"] == (id % 2) as i64, "{record}");
            ensure!(record["headers"]["h"] == "v", "{record}");
            ensure!(record["timestamp"].as_i64() >= Some(1_000_000), "{record}");
        }
        // From a timestamp: only the lz4 half (timestamps from 2,000,050).
        let late = consume(&["--offset", "@2000000"])?;
        ensure!(late.len() == 50, "{} records at or after the timestamp", late.len());
        // A group: the first run commits, the second starts there.
        let first = consume(&[
            "--group",
            "cli-group",
            "--commit",
            "--max-records",
            "30",
            "--partition",
            "0",
        ])?;
        ensure!(first.len() == 30, "{} records in the first group run", first.len());
        let second = consume(&["--group", "cli-group", "--commit", "--partition", "0"])?;
        ensure!(
            second.len() == 20,
            "{} records in the second group run (50 in partition 0): first run {:?}, second {:?}",
            second.len(),
            first.iter().map(|r| r["offset"].clone()).collect::<Vec<_>>(),
            second.iter().map(|r| r["offset"].clone()).collect::<Vec<_>>()
        );
        ensure!(second[0]["offset"] == 30, "the second run starts at {}", second[0]["offset"]);
        Ok(())
    });
}

/// `strom consume --read-committed` leaves out an aborted transaction's records and the
/// transaction markers; without it, the aborted records are shown (read_uncommitted).
#[test]
fn strom_consume_read_committed_skips_an_aborted_transaction() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    const TXN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
    with_node(NodeOptions::default(), |node| {
        let (topic, brokers) = ("cli-txn", node.bootstrap());
        kafka::create_topic(&brokers, topic, 1, &[])?;
        let mut config = kafka::client_config(&brokers);
        config.set("transactional.id", "cli-txn-producer").set("acks", "all");
        let producer: BaseProducer = config.create().context("create the producer")?;
        producer.init_transactions(TXN_TIMEOUT).context("init_transactions")?;
        for (round, commit) in [("a", true), ("b", false), ("c", true)] {
            producer.begin_transaction()?;
            for i in 0..5 {
                let value = format!("{round}{i}");
                let record = BaseRecord::<(), String>::to(topic).payload(&value);
                producer.send(record).map_err(|(e, _)| e).context("send")?;
            }
            if commit {
                producer.commit_transaction(TXN_TIMEOUT)?;
            } else {
                producer.flush(TXN_TIMEOUT)?;
                producer.abort_transaction(TXN_TIMEOUT)?;
            }
        }
        let read = |extra: &[&str]| -> anyhow::Result<Vec<String>> {
            let mut args = vec!["consume", topic, "--brokers", &brokers, "-e"];
            args.extend_from_slice(extra);
            let (code, out, err) = strom_with_input(&args, "")?;
            ensure!(code == 0, "consume {extra:?}: exit {code}: {err}");
            Ok(out.lines().map(String::from).collect())
        };
        let committed = read(&["--read-committed"])?;
        let want: Vec<String> =
            ["a", "c"].iter().flat_map(|r| (0..5).map(move |i| format!("{r}{i}"))).collect();
        ensure!(committed == want, "read_committed: {committed:?}");
        let all = read(&[])?;
        ensure!(all.len() == 15 && all.contains(&"b3".to_string()), "read_uncommitted: {all:?}");
        Ok(())
    });
}
