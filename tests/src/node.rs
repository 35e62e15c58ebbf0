//! [`StromNode`]: one real `strom start` process on free loopback ports, with a data directory
//! that outlives restarts of the process and is removed when the node is dropped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tempfile::TempDir;

use crate::{binary, kafka, powercut, EXIT_TIMEOUT, POLL_INTERVAL, READY_TIMEOUT};

/// Set to keep the temporary directory (data and logs) of every node for inspection.
pub const KEEP_DIR_ENV: &str = "STROM_KEEP_TEST_DIRS";
/// Lines of the node's stderr shown when a test fails or the node dies.
const STDERR_TAIL_LINES: usize = 80;
/// The sync journal in the node's directory, beside (not in) its data directory.
const SYNC_JOURNAL: &str = "sync-journal";

/// How to start a node. Everything has a default: `NodeOptions::default()` is one combined node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// `--node-id`; 1 when unset.
    pub node_id: Option<u32>,
    /// TOML written to `strom.toml` in the node's directory and passed as `--config`.
    pub config_toml: Option<String>,
    /// Extra arguments appended after the harness's own `start` flags.
    pub extra_args: Vec<String>,
    /// Extra environment for the process (`RUST_LOG` defaults to `info`).
    pub env: Vec<(String, String)>,
    /// `--kafka-addr`; a free loopback port when unset. Set by a cluster, whose configs must
    /// name every node's ports before any node starts.
    pub kafka_addr: Option<SocketAddr>,
    /// `--control-addr`; a free loopback port when unset.
    pub control_addr: Option<SocketAddr>,
    /// `--data-dir`; `data/` in the node's temporary directory when unset. A test that sets it
    /// (a filesystem it mounted) owns the directory and removes it.
    pub data_dir: Option<PathBuf>,
    /// Open-file limit (`RLIMIT_NOFILE`, soft = hard) of the process; inherited when unset.
    /// Applied by starting strom under `prlimit`, which sets it and then execs strom, so the
    /// pid is strom's.
    pub fd_limit: Option<u64>,
}

/// A running (or stopped, between restarts) `strom` process.
pub struct StromNode {
    options: NodeOptions,
    binary: PathBuf,
    /// Root of everything this node owns: `data/`, `strom.toml`, `stderr.log`.
    dir: Option<TempDir>,
    data_dir: PathBuf,
    stderr_path: PathBuf,
    kafka_addr: SocketAddr,
    control_addr: SocketAddr,
    /// `--metrics-addr`: /metrics, /health and /ready; always a free loopback port.
    metrics_addr: SocketAddr,
    child: Option<Child>,
    starts: u32,
}

impl StromNode {
    /// Spawns a node and waits until it answers a Kafka Metadata request.
    pub fn start(options: NodeOptions) -> anyhow::Result<StromNode> {
        let mut node = Self::spawn(options)?;
        node.wait_ready()?;
        Ok(node)
    }

    /// Spawns a node without waiting for it to become ready (for tests of start-up failures).
    pub fn spawn(options: NodeOptions) -> anyhow::Result<StromNode> {
        let binary = binary::strom_binary()?;
        let dir = tempfile::Builder::new().prefix("strom-test-").tempdir()?;
        let data_dir = options.data_dir.clone().unwrap_or_else(|| dir.path().join("data"));
        let stderr_path = dir.path().join("stderr.log");
        let (free_kafka, free_control, metrics_addr) = three_free_ports()?;
        let kafka_addr = options.kafka_addr.unwrap_or(free_kafka);
        let control_addr = options.control_addr.unwrap_or(free_control);
        let mut node = StromNode {
            options,
            binary,
            dir: Some(dir),
            data_dir,
            stderr_path,
            kafka_addr,
            control_addr,
            metrics_addr,
            child: None,
            starts: 0,
        };
        node.spawn_process()?;
        Ok(node)
    }

    /// `host:port` for Kafka clients' `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.kafka_addr.to_string()
    }

    pub fn kafka_addr(&self) -> SocketAddr {
        self.kafka_addr
    }

    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// Where the node serves /metrics, /health and /ready.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// `GET path` on the node's HTTP endpoint: (status code, body). An error when nothing
    /// answers (not started yet, stopped).
    pub fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        crate::http::get(self.metrics_addr, path)
    }

    /// `/ready`: `Ok(None)` when ready, `Ok(Some(why))` when the node says it is not, an error
    /// when it does not answer.
    pub fn not_ready_because(&self) -> anyhow::Result<Option<String>> {
        match self.http_get("/ready")? {
            (200, _) => Ok(None),
            (503, body) => Ok(Some(body.trim().to_owned())),
            (code, body) => bail!("/ready answered {code}: {body}"),
        }
    }

    /// `/metrics`, parsed by a Prometheus text-format parser.
    pub fn scrape(&self) -> anyhow::Result<crate::http::Scrape> {
        match self.http_get("/metrics")? {
            (200, body) => crate::http::Scrape::parse(&body),
            (code, body) => bail!("/metrics answered {code}: {body}"),
        }
    }

    /// The `--data-dir` of the node; it survives restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of one partition's log: `<data-dir>/<topic>-<partition>`.
    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.data_dir.join(format!("{topic}-{partition}"))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited (a stopped process is running).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until the node serves Kafka: its port accepts TCP and a librdkafka client gets
    /// metadata listing at least one broker. Fails early, with the stderr tail, if it exits.
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut probe: Option<BaseConsumer> = None;
        let mut last_error = String::from("no attempt made");
        loop {
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "strom exited with {status} before it was ready\n{}",
                        self.stderr_report()
                    );
                }
            } else {
                bail!("wait_ready on a node that is not running");
            }
            match TcpStream::connect_timeout(&self.kafka_addr, Duration::from_secs(1)) {
                Ok(_) => {
                    if probe.is_none() {
                        probe = Some(kafka::consumer(&self.bootstrap(), &[])?);
                    }
                    // The port may answer for another test's node that took it while this
                    // one was down (ports are picked free, then released): only this
                    // process's own listener counts.
                    let ours =
                        self.pid().is_some_and(|pid| listens_on(pid, self.kafka_addr.port()));
                    if !ours {
                        last_error = format!("port {} is not this process's", self.kafka_addr);
                    } else if let Some(consumer) = &probe {
                        match consumer.fetch_metadata(None, Duration::from_secs(2)) {
                            Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
                            Ok(_) => last_error = "metadata lists no broker".to_owned(),
                            Err(error) => last_error = format!("metadata request: {error}"),
                        }
                    }
                }
                Err(error) => last_error = format!("connect {}: {error}", self.kafka_addr),
            }
            if Instant::now() >= deadline {
                bail!(
                    "strom was not ready within {READY_TIMEOUT:?} (last: {last_error})\n{}",
                    self.stderr_report()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Power loss after a crash: the process must be dead (see [`StromNode::kill9`]); every
    /// file of its data directory is cut back to what its syncs made durable.
    pub fn cut_power(&mut self) -> anyhow::Result<powercut::PowerCut> {
        ensure!(!self.is_running(), "cut_power on a running node: kill it first");
        let dir = self.dir.as_ref().context("node directory already released")?.path();
        powercut::cut_power(&self.data_dir, &dir.join(SYNC_JOURNAL))
    }

    /// SIGKILL: no chance to flush or shut down. Waits for the process to be reaped.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("kill9 on a node that is not running")
        };
        // SIGKILL also ends a stopped (SIGSTOP) process.
        child.kill().context("SIGKILL strom")?;
        child.wait().context("reap strom after SIGKILL")?;
        Ok(())
    }

    /// SIGTERM, then waits (bounded) for the exit status; kills -9 and fails on timeout.
    pub fn sigterm(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal("TERM")?;
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// SIGINT, then waits (bounded) for the exit status; kills -9 and fails on timeout.
    pub fn sigint(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal("INT")?;
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// Sends SIGTERM and returns at once; [`Self::try_exit_status`] or [`Self::wait_exit`]
    /// observe the exit (for tests that watch the cluster while the node shuts down).
    pub fn send_sigterm(&self) -> anyhow::Result<()> {
        self.signal("TERM")
    }

    /// The exit status if the process has exited (it is then reaped and detached), `None`
    /// while it runs; an error if no process is attached.
    pub fn try_exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let Some(child) = &mut self.child else {
            bail!("try_exit_status on a node that is not running")
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    pub fn sigstop(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    pub fn sigcont(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    /// Waits for the process to exit by itself; on timeout kills it and fails.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(child) = &mut self.child else { bail!("wait_exit on a node that is not running") };
        let exited = wait_or_kill(child, timeout)?;
        self.child = None;
        match exited {
            Some(status) => Ok(status),
            None => bail!("strom did not exit within {timeout:?}\n{}", self.stderr_report()),
        }
    }

    /// Stops the node if it runs (SIGTERM; a non-zero exit fails) and starts it again on the
    /// same ports and data directory, waiting until it is ready.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            let status = self.sigterm()?;
            if !status.success() {
                bail!("strom exited with {status} on SIGTERM\n{}", self.stderr_report());
            }
        }
        self.child = None;
        self.spawn_process()?;
        self.wait_ready()
    }

    /// Starts the process again on the same ports and data directory without waiting for it
    /// (a cluster restarts all its stopped nodes before any of them can be ready). Fails if a
    /// process is still attached.
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("respawn of a node that is still running");
        }
        self.child = None;
        self.spawn_process()
    }

    /// Replaces the configuration the next start writes to `strom.toml` (a running process
    /// keeps the one it started with).
    pub fn set_config_toml(&mut self, toml: String) {
        self.options.config_toml = Some(toml);
    }

    /// Empties the data directory of a stopped node: a disk replaced with a blank one. The
    /// next start formats it afresh (a new directory id, KIP-853).
    pub fn wipe_data_dir(&mut self) -> anyhow::Result<()> {
        ensure!(!self.is_running(), "wipe_data_dir on a running node: stop it first");
        if self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir)
                .with_context(|| format!("remove {}", self.data_dir.display()))?;
        }
        Ok(())
    }

    /// The `--node-id` the node runs with.
    pub fn node_id(&self) -> u32 {
        self.options.node_id.unwrap_or(1)
    }

    /// Everything the node wrote to stderr/stdout so far, across restarts.
    pub fn stderr(&self) -> String {
        std::fs::read(&self.stderr_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of [`Self::stderr`].
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = tail_of_file(&self.stderr_path, 256 * 1024);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn stderr_report(&self) -> String {
        format!(
            "----- strom stderr tail (node {}, {}) -----\n{}\n----- end of strom stderr -----",
            self.node_id(),
            self.stderr_path.display(),
            self.stderr_tail(STDERR_TAIL_LINES)
        )
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let Some(pid) = self.pid() else { bail!("SIG{name} to a node that is not running") };
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .context("run `kill` (install procps: scripts/install-test-deps.sh)")?;
        anyhow::ensure!(status.success(), "kill -{name} {pid} failed with {status}");
        Ok(())
    }

    fn spawn_process(&mut self) -> anyhow::Result<()> {
        assert!(self.child.is_none(), "spawn_process while a strom process is still attached");
        let dir = self.dir.as_ref().context("node directory already released")?.path().to_owned();
        let mut args = vec![
            "start".to_owned(),
            "--data-dir".to_owned(),
            self.data_dir.display().to_string(),
            "--kafka-addr".to_owned(),
            self.kafka_addr.to_string(),
            "--control-addr".to_owned(),
            self.control_addr.to_string(),
            "--node-id".to_owned(),
            self.options.node_id.unwrap_or(1).to_string(),
            "--metrics-addr".to_owned(),
            self.metrics_addr.to_string(),
        ];
        if let Some(toml) = &self.options.config_toml {
            let path = dir.join("strom.toml");
            std::fs::write(&path, toml)?;
            args.push("--config".to_owned());
            args.push(path.display().to_string());
        }
        args.extend(self.options.extra_args.iter().cloned());

        self.starts += 1;
        let mut log = OpenOptions::new().create(true).append(true).open(&self.stderr_path)?;
        writeln!(
            log,
            "===== strom-tests: start #{} of {} {} =====",
            self.starts,
            self.binary.display(),
            args.join(" ")
        )?;
        let stdout = log.try_clone()?;
        let mut command = match self.options.fd_limit {
            None => Command::new(&self.binary),
            Some(limit) => {
                let mut prlimit = Command::new("prlimit");
                prlimit.arg(format!("--nofile={limit}:{limit}")).arg("--").arg(&self.binary);
                prlimit
            }
        };
        command.args(&args).stdin(Stdio::null()).stdout(stdout).stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        // Every node journals its syncs (debug builds), so any test can cut its power.
        command.env(powercut::JOURNAL_ENV, dir.join(SYNC_JOURNAL));
        command.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .with_context(|| format!("spawn {} {}", self.binary.display(), args.join(" ")))?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for StromNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let keep = std::env::var_os(KEEP_DIR_ENV).is_some();
        if std::thread::panicking() {
            eprintln!("{}", self.stderr_report());
        }
        if let Some(dir) = self.dir.take() {
            if keep {
                eprintln!("strom-tests: kept node directory {}", dir.keep().display());
            }
        }
    }
}

/// Three distinct free loopback ports (see [`crate::free_ports`]: below the ephemeral range, so
/// a restart finds its ports free); another process could still take one before strom binds
/// it, which is unlikely enough for tests.
fn three_free_ports() -> anyhow::Result<(SocketAddr, SocketAddr, SocketAddr)> {
    match crate::free_ports(3)?.as_slice() {
        [first, second, third] => Ok((*first, *second, *third)),
        other => anyhow::bail!("asked for three free ports, got {other:?}"),
    }
}

fn tail_of_file(path: &Path, bytes_max: u64) -> String {
    let Ok(mut file) = File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes_max)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs `strom` with `args` (no harness flags), expecting it to exit by itself within
/// `timeout`; returns its status and everything it wrote to stderr. Kills it on timeout.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> anyhow::Result<(ExitStatus, String)> {
    let binary = binary::strom_binary()?;
    let dir = tempfile::Builder::new().prefix("strom-run-").tempdir()?;
    let stderr_path = dir.path().join("stderr.log");
    let stderr = File::create(&stderr_path)?;
    let mut child = Command::new(&binary)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(stderr.try_clone()?)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("spawn {} {}", binary.display(), args.join(" ")))?;
    let Some(status) = wait_or_kill(&mut child, timeout)? else {
        bail!(
            "strom {} did not exit within {timeout:?}; output:\n{}",
            args.join(" "),
            tail_of_file(&stderr_path, 64 * 1024)
        );
    };
    Ok((status, tail_of_file(&stderr_path, 1024 * 1024)))
}

/// Waits up to `timeout` for a child that should exit by itself; kills and reaps it and
/// returns `None` if it does not.
pub(crate) fn wait_or_kill(
    child: &mut std::process::Child,
    timeout: Duration,
) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Whether process `pid` holds a TCP socket listening on `port` (Linux: a LISTEN row of
/// /proc/net/tcp{,6} whose inode is one of the process's open sockets). Unknown (no /proc)
/// counts as yes.
fn listens_on(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for row in text.lines().skip(1) {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == LISTEN && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return true };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target == std::path::Path::new(i)))
    })
}
