//! The Kafka clients in other languages that tests run as child processes (the scripts of
//! `tests/clients/`): kafka-python, aiokafka and confluent-kafka from a venv, kafkajs from a node
//! prefix, and the Go programs of `tests/clients/go/` built with Debian's sarama and kafka-go,
//! all where `make install-test-deps` puts them (`target/test-deps`, or `STROM_TEST_DEPS_DIR`). A
//! missing (or, for Go, stale) library is an error that says how to install it: such tests
//! fail, never skip.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};

/// Where `scripts/install-test-deps.sh` puts the client libraries, unless overridden.
pub const DEPS_DIR_ENV: &str = "STROM_TEST_DEPS_DIR";

/// A client library and the interpreter that runs scripts written with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    KafkaPython,
    Aiokafka,
    /// confluent-kafka-python, whose wheel carries its own librdkafka.
    ConfluentKafka,
    Kafkajs,
    /// `tests/clients/go/sarama` (Debian's golang-github-shopify-sarama-dev); the script stem
    /// is its subcommand.
    Sarama,
    /// `tests/clients/go/kafkago` (Debian's golang-github-segmentio-kafka-go-dev).
    KafkaGo,
}

/// The workspace's root directory (the parent of this crate's).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where the client libraries are installed.
pub fn deps_dir() -> PathBuf {
    match std::env::var_os(DEPS_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target/test-deps"),
    }
}

impl Library {
    pub fn name(self) -> &'static str {
        match self {
            Library::KafkaPython => "kafka-python",
            Library::Aiokafka => "aiokafka",
            Library::ConfluentKafka => "confluent-kafka",
            Library::Kafkajs => "kafkajs",
            Library::Sarama => "sarama",
            Library::KafkaGo => "kafka-go",
        }
    }

    /// Whether the library's scripts take `--library <name>` (one Python script serves both
    /// Python libraries).
    fn is_python(self) -> bool {
        matches!(self, Library::KafkaPython | Library::Aiokafka)
    }

    /// The command that runs `tests/clients/<stem>.py` (Python libraries), `<stem>.js`
    /// (kafkajs) or the Go library's program with subcommand `stem`, arguments still to add;
    /// or an error telling how to install the library.
    pub fn command(self, stem: &str) -> anyhow::Result<Command> {
        let deps = deps_dir();
        let clients = workspace_root().join("tests/clients");
        let install = format!(
            "run `make install-test-deps` (scripts/install-test-deps.sh installs it under {})",
            deps.display()
        );
        match self {
            Library::KafkaPython | Library::Aiokafka | Library::ConfluentKafka => {
                let module = match self {
                    Library::KafkaPython => "kafka",
                    Library::Aiokafka => "aiokafka",
                    _ => "confluent_kafka",
                };
                let python = deps.join("venv/bin/python");
                let probe =
                    Command::new(&python).args(["-c", &format!("import {module}")]).output();
                match probe {
                    Ok(output) if output.status.success() => {}
                    Ok(output) => bail!(
                        "{} is not importable by {}: {}; {install}",
                        self.name(),
                        python.display(),
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                    Err(error) => {
                        bail!(
                            "{}: cannot run {}: {error}; {install}",
                            self.name(),
                            python.display()
                        )
                    }
                }
                let mut command = Command::new(python);
                command.arg("-u").arg(clients.join(format!("{stem}.py")));
                Ok(command)
            }
            Library::Kafkajs => {
                let modules = deps.join("node/node_modules");
                let package = modules.join("kafkajs/package.json");
                ensure!(
                    package.is_file(),
                    "kafkajs is not installed ({} is missing); {install}",
                    package.display()
                );
                let probe = Command::new("node").arg("--version").output();
                ensure!(
                    matches!(&probe, Ok(output) if output.status.success()),
                    "node does not run ({probe:?}); {install}"
                );
                let mut command = Command::new("node");
                command.arg(clients.join(format!("{stem}.js"))).env("NODE_PATH", modules);
                Ok(command)
            }
            Library::Sarama | Library::KafkaGo => {
                let dir = if self == Library::Sarama { "sarama" } else { "kafkago" };
                let binary = deps.join(format!("go/bin/{dir}-client"));
                let built = std::fs::metadata(&binary)
                    .and_then(|m| m.modified())
                    .map_err(|e| anyhow::anyhow!("{}: {e}; {install}", binary.display()))?;
                // The program and the code it shares with the other Go client.
                for source in [dir, "common"] {
                    let source = clients.join("go").join(source);
                    for entry in std::fs::read_dir(&source)
                        .with_context(|| format!("read {}", source.display()))?
                    {
                        let path = entry?.path();
                        let changed = std::fs::metadata(&path)?.modified()?;
                        ensure!(
                            changed <= built,
                            "{} is older than {}; {install}",
                            binary.display(),
                            path.display()
                        );
                    }
                }
                let mut command = Command::new(binary);
                command.arg(stem);
                Ok(command)
            }
        }
    }
}

/// A producer a test drives: librdkafka in the test's own process, or a script of
/// `tests/clients/` written with `Library`.
#[derive(Debug, Clone, Copy)]
pub enum Client {
    Librdkafka,
    Script(Library),
}

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Client::Librdkafka => "librdkafka",
            Client::Script(library) => library.name(),
        }
    }
}

/// Bound on one producer script's run (the scripts give up after 60 s themselves).
pub const SCRIPT_RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// Lines of a script's stderr, and of its stdout, shown when it fails.
pub const SCRIPT_OUTPUT_LINES: usize = 60;

impl Library {
    /// Fails the calling test before it starts anything when the library or its interpreter
    /// is missing: never a vacuous pass.
    pub fn require(self, stem: &str) {
        if let Err(error) = self.command(stem) {
            panic!("{error:#}");
        }
    }

    /// Runs the producer script `tests/clients/<stem>` against `bootstrap` and `topic`, its
    /// values prefixed with the library's name, with `args` after those, until it exits
    /// (within [`SCRIPT_RUN_TIMEOUT`]); what it printed, or an error with the tails of its
    /// output when it failed.
    pub fn run_producer(
        self,
        stem: &str,
        bootstrap: &str,
        topic: &str,
        args: &[(&str, String)],
    ) -> anyhow::Result<ClientRun> {
        let mut command = self.command(stem)?;
        // The Python scripts serve both Python libraries; the others one library each.
        if self.is_python() {
            command.args(["--library", self.name()]);
        }
        command.args(["--bootstrap", bootstrap, "--topic", topic, "--prefix", self.name()]);
        for (flag, value) in args {
            command.args([flag, value.as_str()]);
        }
        let run = run_to_exit(command, SCRIPT_RUN_TIMEOUT)?;
        ensure!(
            run.status.success(),
            "{} {stem} exited with {}; stdout tail:\n{}\nstderr tail:\n{}",
            self.name(),
            run.status,
            tail(&run.stdout, SCRIPT_OUTPUT_LINES),
            run.stderr_tail(SCRIPT_OUTPUT_LINES)
        );
        Ok(run)
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a client process printed before it exited.
#[derive(Debug)]
pub struct ClientRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ClientRun {
    /// The last `lines` lines of stderr, for failure messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr, lines)
    }
}

/// Runs `command` (stdin closed, stdout and stderr to files) until it exits; kills it and
/// fails after `timeout`.
pub fn run_to_exit(mut command: Command, timeout: Duration) -> anyhow::Result<ClientRun> {
    let dir = tempfile::Builder::new().prefix("strom-client-").tempdir()?;
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = command
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("spawn {command:?}"))?;
    let exited = crate::node::wait_or_kill(&mut child, timeout)?;
    let read = |path: &Path| {
        std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    };
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    match exited {
        Some(status) => Ok(ClientRun { status, stdout, stderr }),
        None => {
            bail!(
                "{command:?} did not exit within {timeout:?}; stderr tail:\n{}",
                tail(&stderr, 40)
            )
        }
    }
}
