//! Locates the `strom` binary built by `cargo build -p strom`. `env!("CARGO_BIN_EXE_strom")`
//! only exists inside the `strom` package, so the harness looks beside its own executable,
//! then in `CARGO_TARGET_DIR`, then in the workspace's `target/`.

use std::path::{Path, PathBuf};

/// Environment variable naming the binary explicitly (takes precedence over every search).
pub const BIN_ENV: &str = "STROM_BIN";

const BIN_NAME: &str = "strom";

/// The path of the `strom` binary, or an error that tells how to build it.
pub fn strom_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(BIN_ENV) {
        let path = PathBuf::from(path);
        anyhow::ensure!(path.is_file(), "{BIN_ENV}={} is not a file", path.display());
        return Ok(path);
    }
    let candidates = candidates();
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    let searched: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    anyhow::bail!(
        "the strom binary was not found (searched {}); build it first with `cargo build -p strom` \
         (`make test` does), or point {BIN_ENV} at it",
        searched.join(", ")
    )
}

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    // The test executable lives in <target>/<profile>/deps/: the matching binary is two up.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            out.push(profile_dir.join(BIN_NAME));
        }
    }
    let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    let mut target_dirs = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        match (&workspace_root, dir.is_relative()) {
            (Some(root), true) => target_dirs.push(root.join(dir)),
            _ => target_dirs.push(dir),
        }
    }
    if let Some(root) = &workspace_root {
        target_dirs.push(root.join("target"));
    }
    for dir in target_dirs {
        for profile in ["debug", "release"] {
            out.push(dir.join(profile).join(BIN_NAME));
        }
    }
    out.dedup();
    out
}
