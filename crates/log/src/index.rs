//! Sparse offset and time indexes of one segment: kept in memory, mirrored to append-only files.
//!
//! The files only speed up opening: a segment below the recovery point loads them instead of
//! scanning its `.log`; any file that fails the structural checks here is rebuilt from the log.
//! Memory cost is one 8-byte entry per `index_interval_bytes` of log (about 2 MiB per GiB at the
//! 4 KiB default) plus a 12-byte time entry at most as often.

/// Bytes of one `.index` entry: relative offset u32 + file position u32, big-endian.
pub const OFFSET_ENTRY_LEN: usize = 8;
/// Bytes of one `.timeindex` entry: timestamp i64 + relative offset u32, big-endian.
pub const TIME_ENTRY_LEN: usize = 12;

/// Maps the base offset of a batch (relative to the segment) to its byte position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// `timestamp` is the largest timestamp in the segment up to and including the batch holding
/// `relative_offset`, which is the offset where that timestamp was first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

impl OffsetEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
        out.extend_from_slice(&self.position.to_be_bytes());
    }
}

impl TimeEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(bytes);
    u32::from_be_bytes(array)
}

fn be_i64(bytes: &[u8]) -> i64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    i64::from_be_bytes(array)
}

#[derive(Debug, Default, Clone)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    /// Decodes a `.index` file; `None` when it cannot be trusted (torn entry, entries out of
    /// order, a position past the end of the log) and must be rebuilt.
    pub fn decode(bytes: &[u8], log_size: u64) -> Option<OffsetIndex> {
        if bytes.len() % OFFSET_ENTRY_LEN != 0 {
            return None;
        }
        let mut entries = Vec::with_capacity(bytes.len() / OFFSET_ENTRY_LEN);
        for chunk in bytes.chunks_exact(OFFSET_ENTRY_LEN) {
            let entry =
                OffsetEntry { relative_offset: be_u32(&chunk[..4]), position: be_u32(&chunk[4..]) };
            if u64::from(entry.position) >= log_size {
                return None;
            }
            if let Some(last) = entries.last() {
                let last: &OffsetEntry = last;
                if entry.relative_offset <= last.relative_offset || entry.position <= last.position
                {
                    return None;
                }
            }
            entries.push(entry);
        }
        Some(OffsetIndex { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_LEN);
        for entry in &self.entries {
            entry.encode(&mut out);
        }
        out
    }

    pub fn push(&mut self, entry: OffsetEntry) {
        debug_assert!(self
            .entries
            .last()
            .is_none_or(|last| last.relative_offset < entry.relative_offset
                && last.position < entry.position));
        self.entries.push(entry);
    }

    /// The entry of the last indexed batch whose base offset is <= `relative_offset`; a scan
    /// from its position finds the batch holding the offset.
    pub fn lookup(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let after = self.entries.partition_point(|e| e.relative_offset <= relative_offset);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn truncate(&mut self, len: usize) {
        self.entries.truncate(len);
    }
}

#[derive(Debug, Default, Clone)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Decodes a `.timeindex` file; `None` when it cannot be trusted.
    pub fn decode(bytes: &[u8]) -> Option<TimeIndex> {
        if bytes.len() % TIME_ENTRY_LEN != 0 {
            return None;
        }
        let mut entries: Vec<TimeEntry> = Vec::with_capacity(bytes.len() / TIME_ENTRY_LEN);
        for chunk in bytes.chunks_exact(TIME_ENTRY_LEN) {
            let entry =
                TimeEntry { timestamp: be_i64(&chunk[..8]), relative_offset: be_u32(&chunk[8..]) };
            if let Some(last) = entries.last() {
                if entry.timestamp <= last.timestamp || entry.relative_offset < last.relative_offset
                {
                    return None;
                }
            }
            entries.push(entry);
        }
        Some(TimeIndex { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_LEN);
        for entry in &self.entries {
            entry.encode(&mut out);
        }
        out
    }

    pub fn push(&mut self, entry: TimeEntry) {
        debug_assert!(self.entries.last().is_none_or(|last| last.timestamp < entry.timestamp
            && last.relative_offset <= entry.relative_offset));
        self.entries.push(entry);
    }

    /// The last entry whose timestamp is strictly below `timestamp`: every record up to its
    /// batch is older than `timestamp`, so a search for the first record >= `timestamp` may
    /// start there.
    pub fn lookup_before(&self, timestamp: i64) -> Option<TimeEntry> {
        let after = self.entries.partition_point(|e| e.timestamp < timestamp);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn truncate(&mut self, len: usize) {
        self.entries.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset_index(entries: &[(u32, u32)]) -> OffsetIndex {
        let mut index = OffsetIndex::default();
        for &(relative_offset, position) in entries {
            index.push(OffsetEntry { relative_offset, position });
        }
        index
    }

    #[test]
    fn offset_lookup_finds_the_floor_entry() {
        let index = offset_index(&[(10, 4096), (25, 8200), (40, 12300)]);
        assert_eq!(index.lookup(0), None);
        assert_eq!(index.lookup(9), None);
        assert_eq!(index.lookup(10).map(|e| e.position), Some(4096));
        assert_eq!(index.lookup(24).map(|e| e.position), Some(4096));
        assert_eq!(index.lookup(25).map(|e| e.position), Some(8200));
        assert_eq!(index.lookup(u32::MAX).map(|e| e.position), Some(12300));
        assert_eq!(OffsetIndex::default().lookup(5), None);
    }

    #[test]
    fn offset_index_round_trips_through_its_file_format() {
        let index = offset_index(&[(1, 100), (7, 5000)]);
        let bytes = index.encode();
        assert_eq!(bytes.len(), 2 * OFFSET_ENTRY_LEN);
        let decoded = OffsetIndex::decode(&bytes, 6000).unwrap();
        assert_eq!(decoded.lookup(8), Some(OffsetEntry { relative_offset: 7, position: 5000 }));
        assert_eq!(decoded.len(), 2);
    }

    #[test]
    fn untrustworthy_offset_index_files_are_refused() {
        let bytes = offset_index(&[(1, 100), (7, 5000)]).encode();
        // A torn trailing entry.
        assert!(OffsetIndex::decode(&bytes[..bytes.len() - 3], 6000).is_none());
        // A position past the end of the log (index written ahead of a lost log write).
        assert!(OffsetIndex::decode(&bytes, 5000).is_none());
        // Zero-filled tail after a crash: entries stop increasing.
        let mut zeroed = bytes.clone();
        zeroed.extend_from_slice(&[0u8; OFFSET_ENTRY_LEN]);
        assert!(OffsetIndex::decode(&zeroed, 6000).is_none());
        assert_eq!(OffsetIndex::decode(&[], 0).map(|i| i.len()), Some(0));
    }

    #[test]
    fn time_lookup_finds_the_last_entry_strictly_before() {
        let mut index = TimeIndex::default();
        for (timestamp, relative_offset) in [(100, 0), (200, 5), (300, 9)] {
            index.push(TimeEntry { timestamp, relative_offset });
        }
        assert_eq!(index.lookup_before(100), None);
        assert_eq!(index.lookup_before(101).map(|e| e.relative_offset), Some(0));
        assert_eq!(index.lookup_before(200).map(|e| e.relative_offset), Some(0));
        assert_eq!(index.lookup_before(250).map(|e| e.relative_offset), Some(5));
        assert_eq!(index.lookup_before(i64::MAX).map(|e| e.relative_offset), Some(9));
        let decoded = TimeIndex::decode(&index.encode()).unwrap();
        assert_eq!(decoded.last(), Some(TimeEntry { timestamp: 300, relative_offset: 9 }));
        let mut bad = index.encode();
        bad.extend_from_slice(&index.encode()[..TIME_ENTRY_LEN]);
        assert!(TimeIndex::decode(&bad).is_none());
    }
}
