//! The Kafka clients in other languages that tests run as child processes (the scripts of
//! `tests/clients/`): kafka-python and aiokafka from a venv, kafkajs from a node prefix, both
//! where `make install-test-deps` puts them (`target/test-deps`, or `STROM_TEST_DEPS_DIR`). A
//! missing library is an error that says how to install it: such tests fail, never skip.

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
    Kafkajs,
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
            Library::Kafkajs => "kafkajs",
        }
    }

    /// The command that runs `tests/clients/<stem>.py` (Python libraries) or `<stem>.js`
    /// (kafkajs), arguments still to add; or an error telling how to install the library.
    pub fn command(self, stem: &str) -> anyhow::Result<Command> {
        let deps = deps_dir();
        let clients = workspace_root().join("tests/clients");
        let install = format!(
            "run `make install-test-deps` (scripts/install-test-deps.sh installs it under {})",
            deps.display()
        );
        match self {
            Library::KafkaPython | Library::Aiokafka => {
                let module = if self == Library::KafkaPython { "kafka" } else { "aiokafka" };
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
        }
    }
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
        let all: Vec<&str> = self.stderr.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
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
            let tail: Vec<&str> = stderr.lines().collect();
            bail!(
                "{command:?} did not exit within {timeout:?}; stderr tail:\n{}",
                tail[tail.len().saturating_sub(40)..].join("\n")
            )
        }
    }
}
