//! Power loss for a node that has been killed: every file under its data directory is cut
//! back to what its last successful fsync made durable, as the strom process journalled it
//! (`strom-fsio`'s sync journal, on in debug builds through `STROM_SYNC_JOURNAL`). A file the
//! process never synced loses all its bytes. `kill -9` alone keeps the page cache, so only this
//! shows whether an acknowledgement really waited for the disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The journal's environment variable, set by the harness for every node it starts.
pub const JOURNAL_ENV: &str = "STROM_SYNC_JOURNAL";
/// Disables syncs of paths containing its value (debug builds): the broken build a power-cut
/// test must catch.
pub const FSYNC_DISABLED_ENV: &str = "STROM_FSYNC_DISABLED";

/// What a power cut took away.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PowerCut {
    /// Files cut back to a shorter durable length.
    pub files_cut: usize,
    /// Files that were never synced and lost every byte.
    pub files_emptied: usize,
    pub bytes_dropped: u64,
}

/// The durable length of each file, from the journal's lines in order: `sync\tLEN\tPATH` (the
/// file is durable up to LEN bytes) and `rename\tFROM\tTO` (what was durable under FROM is
/// durable under TO now).
pub fn durable_lengths(journal: &str) -> anyhow::Result<HashMap<PathBuf, u64>> {
    let mut durable = HashMap::new();
    for (number, line) in journal.lines().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["sync", len, path] => {
                let len: u64 = len.parse().with_context(|| format!("journal line {number}"))?;
                durable.insert(PathBuf::from(path), len);
            }
            ["rename", from, to] => match durable.remove(Path::new(from)) {
                Some(len) => {
                    durable.insert(PathBuf::from(to), len);
                }
                None => {
                    durable.remove(Path::new(to));
                }
            },
            _ => bail!("journal line {number} is malformed: {line:?}"),
        }
    }
    Ok(durable)
}

/// Cuts every file under `data_dir` back to its durable length from `journal`. The process
/// writing them must be dead.
pub fn cut_power(data_dir: &Path, journal: &Path) -> anyhow::Result<PowerCut> {
    let text = match std::fs::read_to_string(journal) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", journal.display())),
    };
    let durable = durable_lengths(&text)?;
    let root = data_dir.canonicalize().with_context(|| format!("{}", data_dir.display()))?;
    let mut cut = PowerCut::default();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let len = entry.metadata()?.len();
            let keep = durable.get(&path).copied().unwrap_or(0);
            if len > keep {
                let file = std::fs::OpenOptions::new().write(true).open(&path)?;
                file.set_len(keep).with_context(|| format!("truncate {}", path.display()))?;
                cut.bytes_dropped += len - keep;
                if keep == 0 {
                    cut.files_emptied += 1;
                } else {
                    cut.files_cut += 1;
                }
            }
        }
    }
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_carry_durability_and_unsynced_files_lose_everything() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (log, tmp, ckpt, fresh) =
            (root.join("a.log"), root.join("c.tmp"), root.join("c"), root.join("fresh"));
        std::fs::write(&log, b"0123456789").unwrap();
        std::fs::write(&ckpt, b"new checkpoint").unwrap();
        std::fs::write(&fresh, b"never synced").unwrap();
        let journal = root.join("journal");
        let lines = [
            format!("sync\t4\t{}", log.display()),
            format!("sync\t14\t{}", tmp.display()),
            format!("rename\t{}\t{}", tmp.display(), ckpt.display()),
        ];
        std::fs::write(&journal, lines.join("\n") + "\n").unwrap();
        // The journal lives under the same directory here: it was never synced, so it goes too.
        let cut = cut_power(&root, &journal).unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"0123");
        assert_eq!(std::fs::read(&ckpt).unwrap(), b"new checkpoint");
        assert_eq!(std::fs::read(&fresh).unwrap(), b"");
        assert_eq!(cut.files_cut, 1);
        assert_eq!(cut.files_emptied, 2);
    }
}
