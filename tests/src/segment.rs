//! Reads and damages segment files (`<data-dir>/<topic>-<partition>/<base offset>.log`: Kafka v2
//! record batches back to back) so tests can check what the broker stored and how it recovers.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::raw::batch_layout::{BATCH_LENGTH_OFFSET, HEADER_BYTES, LOG_OVERHEAD, MAGIC_OFFSET};

/// The first segment of a partition, as Kafka names it.
pub const FIRST_SEGMENT: &str = "00000000000000000000.log";

/// Offset of the attributes field (i16) in a v2 batch; the low three bits are the codec.
const ATTRIBUTES_OFFSET: usize = 21;
/// Offset of last_offset_delta (i32).
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
/// Offset of the record count (i32), the last header field.
const RECORD_COUNT_OFFSET: usize = 57;

/// Where one batch sits in a segment file and what its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Byte position of the batch's first byte in the file.
    pub position: usize,
    /// Bytes the batch occupies, header included.
    pub size: usize,
    pub base_offset: i64,
    pub last_offset_delta: i32,
    pub record_count: i32,
    pub magic: i8,
    pub attributes: i16,
}

impl BatchInfo {
    /// Compression codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn codec(&self) -> i16 {
        self.attributes & 0x7
    }

    pub fn next_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta) + 1
    }

    pub fn end(&self) -> usize {
        self.position + self.size
    }
}

/// Walks the batches of a segment's bytes by their length fields (CRCs are not checked) and
/// stops at the first one that is incomplete or whose header is implausible.
pub fn batches(bytes: &[u8]) -> Vec<BatchInfo> {
    let mut out = Vec::new();
    let mut position = 0usize;
    while position + HEADER_BYTES <= bytes.len() {
        let at = |offset: usize, len: usize| &bytes[position + offset..position + offset + len];
        let base_offset = i64::from_be_bytes(at(0, 8).try_into().expect("8 bytes"));
        let length = i32::from_be_bytes(at(BATCH_LENGTH_OFFSET, 4).try_into().expect("4 bytes"));
        let magic = at(MAGIC_OFFSET, 1)[0] as i8;
        if length < (HEADER_BYTES - LOG_OVERHEAD) as i32 || magic != 2 || base_offset < 0 {
            break;
        }
        let size = LOG_OVERHEAD + length as usize;
        if position + size > bytes.len() {
            break;
        }
        out.push(BatchInfo {
            position,
            size,
            base_offset,
            last_offset_delta: i32::from_be_bytes(
                at(LAST_OFFSET_DELTA_OFFSET, 4).try_into().expect("4 bytes"),
            ),
            record_count: i32::from_be_bytes(
                at(RECORD_COUNT_OFFSET, 4).try_into().expect("4 bytes"),
            ),
            magic,
            attributes: i16::from_be_bytes(at(ATTRIBUTES_OFFSET, 2).try_into().expect("2 bytes")),
        });
        position += size;
    }
    out
}

/// The path of a partition's first segment, with an error listing the directory when absent.
pub fn first_segment(partition_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = partition_dir.join(FIRST_SEGMENT);
    if path.is_file() {
        return Ok(path);
    }
    let listing: Vec<String> = std::fs::read_dir(partition_dir)
        .map(|entries| {
            entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into()).collect()
        })
        .unwrap_or_default();
    anyhow::bail!("no segment {} (directory holds {listing:?})", path.display())
}

/// Reads a segment and parses it, failing if it has bytes after the last complete batch.
pub fn read_batches(path: &Path) -> anyhow::Result<(Vec<u8>, Vec<BatchInfo>)> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let parsed = batches(&bytes);
    let end = parsed.last().map_or(0, BatchInfo::end);
    anyhow::ensure!(
        end == bytes.len(),
        "{}: {} bytes after the last whole batch (at {end} of {})",
        path.display(),
        bytes.len() - end,
        bytes.len()
    );
    Ok((bytes, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_walks_valid_batches_and_stops_at_a_torn_one() {
        let one = crate::raw::record_batch(&[b"a", b"bb"], 1_000).expect("encode");
        let two = crate::raw::record_batch(&[b"ccc"], 2_000).expect("encode");
        let mut file = one.to_vec();
        file.extend_from_slice(&two);
        let parsed = batches(&file);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].record_count, 2);
        assert_eq!(parsed[0].size, one.len());
        assert_eq!(parsed[1].position, one.len());
        assert_eq!(parsed[1].end(), file.len());
        file.truncate(file.len() - 1);
        assert_eq!(batches(&file).len(), 1);
    }
}
