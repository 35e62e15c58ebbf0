//! The operator conveniences of issue 16, run as the real binary:
//!
//! - `--log-format json` (and `STROM_LOG_FORMAT=json`) make every stderr line of a running
//!   node one JSON object with a timestamp, a level, a target and a message.
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
                let created = lines.iter().any(|l| l.to_string().contains("json-logs"));
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
