//! `scripts/check-deps.sh` fails on a forbidden dependency and passes a clean tree; fed canned
//! `cargo tree` outputs from `tests/fixtures/check-deps/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn check_deps(trees: &[(&str, &str)]) -> Output {
    let root = workspace_root();
    let fixtures = root.join("tests/fixtures/check-deps");
    let args: Vec<String> = trees
        .iter()
        .map(|(package, file)| format!("{package}={}", fixtures.join(file).display()))
        .collect();
    Command::new("bash")
        .arg(root.join("scripts/check-deps.sh"))
        .args(&args)
        .output()
        .expect("run scripts/check-deps.sh")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_deps_fails_when_protocol_pulls_in_tokio_and_prints_the_path() {
    let output = check_deps(&[("strom-protocol", "protocol-with-tokio.txt")]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{text}");
    assert!(
        text.contains("strom-protocol -> kafka-protocol -> some-async-helper -> tokio"),
        "{text}"
    );
    assert!(text.contains("must not depend on mio"), "{text}");
    assert!(text.contains("must not depend on socket2"), "{text}");
}

#[test]
fn check_deps_fails_when_metadata_pulls_in_tonic_in_indented_output() {
    let output = check_deps(&[("strom-metadata", "metadata-with-tonic-indented.txt")]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{text}");
    assert!(text.contains("strom-metadata -> strom-proto -> tonic"), "{text}");
}

#[test]
fn check_deps_fails_when_broker_depends_on_controller() {
    let output = check_deps(&[("strom-broker", "broker-with-controller.txt")]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{text}");
    assert!(text.contains("strom-broker -> strom-controller"), "{text}");
}

#[test]
fn check_deps_fails_when_admin_depends_on_controller() {
    let output = check_deps(&[("strom-admin", "admin-with-controller.txt")]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{text}");
    assert!(text.contains("strom-admin -> strom-controller"), "{text}");
}

#[test]
fn check_deps_passes_clean_trees() {
    let output = check_deps(&[
        ("strom-protocol", "protocol-clean.txt"),
        ("strom-metadata", "metadata-clean-indented.txt"),
        ("strom-broker", "broker-clean.txt"),
        ("strom-admin", "admin-clean.txt"),
    ]);
    assert!(output.status.success(), "stderr:\n{}", stderr(&output));
}

#[test]
fn check_deps_rejects_an_unknown_package() {
    let output = check_deps(&[("strom-unknown", "protocol-clean.txt")]);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{}", stderr(&output));
}
