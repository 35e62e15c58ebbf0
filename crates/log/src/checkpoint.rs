//! Kafka's text checkpoint files (`recovery-point-offset-checkpoint`,
//! `replication-offset-checkpoint`): `0\n<count>\n<topic> <partition> <offset>\n...`.

use std::fs;
use std::io;
use std::path::Path;

use crate::LogError;

const VERSION: &str = "0";

/// Reads a checkpoint; a missing file is an empty checkpoint (first start).
pub fn read(path: &Path) -> Result<Vec<(String, i32, i64)>, LogError> {
    let Some(lines) = read_versioned_lines(path)? else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::with_capacity(lines.len());
    for (line_number, line) in lines {
        let parse =
            |reason| LogError::CheckpointParse { path: path.to_owned(), line: line_number, reason };
        let mut fields = line.split_whitespace();
        let (Some(topic), Some(partition), Some(offset), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(parse("expected `<topic> <partition> <offset>`"));
        };
        let partition = partition.parse().map_err(|_| parse("partition is not an i32"))?;
        let offset = offset.parse().map_err(|_| parse("offset is not an i64"))?;
        entries.push((topic.to_owned(), partition, offset));
    }
    Ok(entries)
}

/// Writes a checkpoint so that a crash leaves either the old or the new file, never a mix.
pub fn write(path: &Path, entries: &[(String, i32, i64)]) -> Result<(), LogError> {
    let mut text = format!("{VERSION}\n{}\n", entries.len());
    for (topic, partition, offset) in entries {
        text.push_str(&format!("{topic} {partition} {offset}\n"));
    }
    write_atomically(path, text.as_bytes())
}

/// The body lines of a version-0 checkpoint with their 1-based line numbers, after checking the
/// version and count lines; `None` when the file does not exist.
pub(crate) fn read_versioned_lines(path: &Path) -> Result<Option<Vec<(usize, String)>>, LogError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(source) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LogError::CheckpointRead { path: path.to_owned(), source }),
    };
    let parse = |line, reason| LogError::CheckpointParse { path: path.to_owned(), line, reason };
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(VERSION) {
        return Err(parse(1, "unsupported version"));
    }
    let count: usize = lines
        .next()
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| parse(2, "count is not a number"))?;
    let body: Vec<(usize, String)> = lines
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| (i + 3, line.to_owned()))
        .collect();
    if body.len() != count {
        return Err(parse(2, "count does not match the number of entries"));
    }
    Ok(Some(body))
}

/// tmp file + fsync + rename + fsync of the directory: the rename is the commit point.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), LogError> {
    strom_fsio::write_atomically(path, contents)
        .map_err(|source| LogError::CheckpointWrite { path: path.to_owned(), source })
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    strom_fsio::sync_dir(dir).map_err(|source| LogError::DirSync { path: dir.to_owned(), source })
}
