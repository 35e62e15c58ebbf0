//! `kcat` (Debian's, linking librdkafka 2.0.2: an older client than the `rdkafka` crate's)
//! produces to and consumes from strom. Skipped only when kcat is absent outside CI.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use strom_tests::{kafka, with_node, NodeOptions, POLL_INTERVAL};

const KCAT_TIMEOUT: Duration = Duration::from_secs(60);
const LINES: usize = 2_000;

/// The kcat binary, or `None` when a local run may skip. In CI (env `CI` set) a missing kcat
/// fails the test: `scripts/install-test-deps.sh` installs it.
fn kcat() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|dir| dir.join("kcat")).find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "kcat is not installed (CI must have it: run scripts/install-test-deps.sh)"
        );
        eprintln!("SKIPPED: kcat is not installed (scripts/install-test-deps.sh installs it)");
    }
    found
}

/// Runs kcat with `args`, feeding `stdin`; returns stdout. Bounded by [`KCAT_TIMEOUT`].
fn run_kcat(kcat: &PathBuf, args: &[&str], stdin: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new(kcat)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn kcat")?;
    let mut input = child.stdin.take().context("kcat stdin")?;
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let mut stdout = child.stdout.take().context("kcat stdout")?;
    let mut stderr = child.stderr.take().context("kcat stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + KCAT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let _ = writer.join();
    let out = out_reader.join().map_err(|_| anyhow::anyhow!("stdout reader panicked"))??;
    let err = err_reader.join().map_err(|_| anyhow::anyhow!("stderr reader panicked"))??;
    let err = String::from_utf8_lossy(&err);
    match status {
        None => {
            bail!("kcat {} did not finish within {KCAT_TIMEOUT:?}; stderr:\n{err}", args.join(" "))
        }
        Some(status) if !status.success() => {
            bail!("kcat {} exited with {status}; stderr:\n{err}", args.join(" "))
        }
        Some(_) => Ok(out),
    }
}

fn lines() -> String {
    (0..LINES).map(|i| format!("key-{}:value-{i}-{}\n", i % 13, "x".repeat(i % 50))).collect()
}

fn produce_and_consume(kcat: &PathBuf, bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let input = lines();
    run_kcat(kcat, &["-b", bootstrap, "-P", "-t", topic, "-p", "0", "-K", ":"], input.as_bytes())?;
    let output = run_kcat(
        kcat,
        &["-b", bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q", "-K", ":"],
        b"",
    )?;
    let output = String::from_utf8(output)?;
    ensure!(
        output == input,
        "kcat read back {} lines, {} produced; first difference at line {:?}",
        output.lines().count(),
        LINES,
        output.lines().zip(input.lines()).position(|(a, b)| a != b)
    );
    Ok(())
}

#[test]
fn kcat_produces_and_consumes_the_same_lines() {
    let Some(kcat) = kcat() else { return };
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, "kcat", 1, &[])?;
        produce_and_consume(&kcat, &bootstrap, "kcat")
    });
}

#[test]
fn kcat_produce_auto_creates_a_topic_with_one_partition() {
    let Some(kcat) = kcat() else { return };
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        produce_and_consume(&kcat, &bootstrap, "kcat-auto")?;
        let partitions = kafka::topic_partitions(&bootstrap, "kcat-auto")?;
        ensure!(partitions.len() == 1, "auto-created topic has partitions {partitions:?}");
        Ok(())
    });
}
