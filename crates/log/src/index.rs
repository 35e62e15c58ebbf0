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

/// What the two index files share: fixed-size big-endian entries, each strictly after the one
/// before it.
pub(crate) trait IndexEntry: Copy {
    const LEN: usize;
    fn decode(chunk: &[u8]) -> Self;
    fn encode(&self, out: &mut Vec<u8>);
    /// Whether `self` may follow `prev` in a file that can be trusted.
    fn follows(&self, prev: &Self) -> bool;
}

impl IndexEntry for OffsetEntry {
    const LEN: usize = OFFSET_ENTRY_LEN;
    fn decode(chunk: &[u8]) -> Self {
        OffsetEntry { relative_offset: be_u32(&chunk[..4]), position: be_u32(&chunk[4..]) }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        OffsetEntry::encode(self, out)
    }
    fn follows(&self, prev: &Self) -> bool {
        self.relative_offset > prev.relative_offset && self.position > prev.position
    }
}

impl IndexEntry for TimeEntry {
    const LEN: usize = TIME_ENTRY_LEN;
    fn decode(chunk: &[u8]) -> Self {
        TimeEntry { timestamp: be_i64(&chunk[..8]), relative_offset: be_u32(&chunk[8..]) }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        TimeEntry::encode(self, out)
    }
    fn follows(&self, prev: &Self) -> bool {
        self.timestamp > prev.timestamp && self.relative_offset >= prev.relative_offset
    }
}

/// The entries of an index file; `None` when it cannot be trusted (a torn entry, an entry
/// out of order, or one that `valid` refuses).
fn decode_entries<E: IndexEntry>(bytes: &[u8], valid: impl Fn(&E) -> bool) -> Option<Vec<E>> {
    if bytes.len() % E::LEN != 0 {
        return None;
    }
    let mut entries: Vec<E> = Vec::with_capacity(bytes.len() / E::LEN);
    for chunk in bytes.chunks_exact(E::LEN) {
        let entry = E::decode(chunk);
        if !valid(&entry) || entries.last().is_some_and(|last| !entry.follows(last)) {
            return None;
        }
        entries.push(entry);
    }
    Some(entries)
}

fn encode_entries<E: IndexEntry>(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * E::LEN);
    for entry in entries {
        entry.encode(&mut out);
    }
    out
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

/// The in-memory mirror of one index file: entries in file order, each after the one before.
#[derive(Debug, Clone)]
pub struct Index<E> {
    entries: Vec<E>,
}

/// Maps batch base offsets to file positions.
pub type OffsetIndex = Index<OffsetEntry>;
/// Maps timestamps to the offsets where they were first reached.
pub type TimeIndex = Index<TimeEntry>;

impl<E> Default for Index<E> {
    fn default() -> Self {
        Index { entries: Vec::new() }
    }
}

impl<E: IndexEntry> Index<E> {
    pub fn encode(&self) -> Vec<u8> {
        encode_entries(&self.entries)
    }

    pub fn push(&mut self, entry: E) {
        debug_assert!(self.entries.last().is_none_or(|last| entry.follows(last)));
        self.entries.push(entry);
    }

    pub fn last(&self) -> Option<E> {
        self.entries.last().copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn truncate(&mut self, len: usize) {
        self.entries.truncate(len);
    }
}

impl OffsetIndex {
    /// Decodes a `.index` file; `None` when it cannot be trusted (torn entry, entries out of
    /// order, a position past the end of the log) and must be rebuilt.
    pub fn decode(bytes: &[u8], log_size: u64) -> Option<OffsetIndex> {
        let entries = decode_entries(bytes, |e: &OffsetEntry| u64::from(e.position) < log_size)?;
        Some(Index { entries })
    }

    /// The entry of the last indexed batch whose base offset is <= `relative_offset`; a scan
    /// from its position finds the batch holding the offset.
    pub fn lookup(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let after = self.entries.partition_point(|e| e.relative_offset <= relative_offset);
        after.checked_sub(1).map(|i| self.entries[i])
    }
}

impl TimeIndex {
    /// Decodes a `.timeindex` file; `None` when it cannot be trusted.
    pub fn decode(bytes: &[u8]) -> Option<TimeIndex> {
        Some(Index { entries: decode_entries(bytes, |_: &TimeEntry| true)? })
    }

    /// The last entry whose timestamp is strictly below `timestamp`: every record up to its
    /// batch is older than `timestamp`, so a search for the first record >= `timestamp` may
    /// start there.
    pub fn lookup_before(&self, timestamp: i64) -> Option<TimeEntry> {
        let after = self.entries.partition_point(|e| e.timestamp < timestamp);
        after.checked_sub(1).map(|i| self.entries[i])
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
