//! Every fsync, directory sync and durable rename of strom's files goes through here, so that
//! durability can be tested where it matters: a power cut.
//!
//! A `kill -9` keeps the page cache, so a broker whose fdatasync did nothing would pass every
//! crash test. In debug builds (never in release builds) two test seams exist, both set through
//! the environment of the process under test:
//!
//! - `STROM_SYNC_JOURNAL=<file>`: after each successful sync, one line is appended to the
//!   journal saying which file is durable up to which length (and which renames happened). A
//!   test that has killed the process "pulls the plug" by cutting every file under the data
//!   directory back to its last journalled length (`strom-tests`' `powercut` module): what was
//!   never synced is gone, as after a power loss.
//! - `STROM_FAULT_FILE=<file>`: while that file exists, every sync of a path containing the
//!   text it holds fails with EIO (an empty file: every sync), as a dying disk's fsync does.
//! - `STROM_FSYNC_DISABLED=<text>`: syncs of paths containing the text (`1`: every path) do
//!   nothing and journal nothing: the broken build that the power-cut tests must catch.

use std::fs::File;
use std::io;
use std::path::Path;

#[cfg(debug_assertions)]
mod seams;

/// fdatasync: the file's data (and the metadata needed to read it back) is on disk.
pub fn sync_data(file: &File) -> io::Result<()> {
    sync(file, false)
}

/// fsync: the file's data and all its metadata are on disk.
pub fn sync_all(file: &File) -> io::Result<()> {
    sync(file, true)
}

fn sync(file: &File, all: bool) -> io::Result<()> {
    #[cfg(debug_assertions)]
    let pending = seams::before_sync(file)?;
    #[cfg(debug_assertions)]
    let skip = pending.skip;
    #[cfg(not(debug_assertions))]
    let skip = false;
    if !skip {
        if all {
            file.sync_all()?;
        } else {
            file.sync_data()?;
        }
    }
    #[cfg(debug_assertions)]
    seams::after_sync(pending);
    Ok(())
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let handle = File::open(dir)?;
    #[cfg(debug_assertions)]
    {
        seams::check_fault(dir)?;
        if seams::fsync_disabled(Some(dir)) {
            return Ok(());
        }
    }
    handle.sync_all()
}

/// Renames `from` to `to`; durable once the directory is synced.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    #[cfg(debug_assertions)]
    seams::journal_rename(from, to);
    Ok(())
}

/// Replaces `path` with `contents` so that a crash leaves the old or the new file whole:
/// write a temporary file, fsync it, rename it over `path`, fsync the directory. The rename is
/// the commit point.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    file.write_all(contents)?;
    sync_all(&file)?;
    drop(file);
    rename(&tmp, path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomically_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state")]);
    }
}
