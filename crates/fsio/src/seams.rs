//! The debug-build test seams: the sync journal, injected sync faults and disabled fsync (see
//! the crate docs). Read from the environment once; a process without those variables pays
//! one relaxed check per sync.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

struct Seams {
    journal: Option<Mutex<File>>,
    fault_file: Option<PathBuf>,
    /// Syncs of paths containing this text do nothing ("" or "1": every path).
    fsync_disabled: Option<String>,
}

fn seams() -> &'static Seams {
    static SEAMS: OnceLock<Seams> = OnceLock::new();
    SEAMS.get_or_init(|| {
        let journal = std::env::var_os("STROM_SYNC_JOURNAL").map(|path| {
            let file = OpenOptions::new().create(true).append(true).open(&path);
            // A test asked for a journal: running without one would make its check vacuous.
            let file = file.unwrap_or_else(|e| {
                panic!("STROM_SYNC_JOURNAL={}: cannot open: {e}", Path::new(&path).display())
            });
            Mutex::new(file)
        });
        Seams {
            journal,
            fault_file: std::env::var_os("STROM_FAULT_FILE").map(PathBuf::from),
            fsync_disabled: std::env::var("STROM_FSYNC_DISABLED").ok().map(|v| {
                if v == "1" {
                    String::new()
                } else {
                    v
                }
            }),
        }
    })
}

/// Whether syncs of `path` (None: a file whose path is unknown) are disabled.
pub(crate) fn fsync_disabled(path: Option<&Path>) -> bool {
    match (&seams().fsync_disabled, path) {
        (None, _) => false,
        (Some(pattern), _) if pattern.is_empty() => true,
        (Some(pattern), Some(path)) => path.to_string_lossy().contains(pattern.as_str()),
        (Some(_), None) => false,
    }
}

/// The path an open file descriptor names, from /proc (None once the file was unlinked).
fn path_of(file: &File) -> Option<PathBuf> {
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    (!path.to_string_lossy().ends_with(" (deleted)")).then_some(path)
}

/// An injected EIO for `path` while the fault file exists.
pub(crate) fn check_fault(path: &Path) -> io::Result<()> {
    let Some(fault_file) = &seams().fault_file else { return Ok(()) };
    let Ok(pattern) = std::fs::read_to_string(fault_file) else { return Ok(()) };
    let pattern = pattern.trim();
    if pattern.is_empty() || path.to_string_lossy().contains(pattern) {
        return Err(io::Error::from_raw_os_error(5)); // EIO
    }
    Ok(())
}

/// A sync about to run: whether it really syncs, and what it journals once it succeeded (the
/// file and its length before the sync).
pub(crate) struct Pending {
    pub(crate) skip: bool,
    journal: Option<(PathBuf, u64)>,
}

pub(crate) fn before_sync(file: &File) -> io::Result<Pending> {
    let s = seams();
    if s.journal.is_none() && s.fault_file.is_none() && s.fsync_disabled.is_none() {
        return Ok(Pending { skip: false, journal: None });
    }
    let path = path_of(file);
    if let Some(path) = &path {
        check_fault(path)?;
    }
    let skip = fsync_disabled(path.as_deref());
    let journal = match path {
        Some(path) if s.journal.is_some() && !skip => {
            // Bytes appended while the sync runs may or may not be covered: count only those
            // before it.
            Some((path, file.metadata()?.len()))
        }
        _ => None,
    };
    Ok(Pending { skip, journal })
}

pub(crate) fn after_sync(pending: Pending) {
    if let Some((path, len)) = pending.journal {
        append(&format!("sync\t{len}\t{}\n", path.display()));
    }
}

pub(crate) fn journal_rename(from: &Path, to: &Path) {
    if seams().journal.is_some() {
        // As /proc names synced files: the directory's canonical path and the file name.
        let abs = |p: &Path| match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) => {
                let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
                dir.canonicalize().map_or_else(|_| p.to_owned(), |d| d.join(name))
            }
            _ => p.to_owned(),
        };
        append(&format!("rename\t{}\t{}\n", abs(from).display(), abs(to).display()));
    }
}

fn append(line: &str) {
    if let Some(journal) = &seams().journal {
        let mut file = journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // One write per line (O_APPEND): a kill -9 leaves whole lines. A journal that cannot
        // be written makes the power-cut test fail loudly rather than pass on a stale journal.
        if let Err(e) = file.write_all(line.as_bytes()) {
            panic!("cannot append to STROM_SYNC_JOURNAL: {e}");
        }
    }
}
