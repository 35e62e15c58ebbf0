//! Zero-copy view of Kafka v2 record batches (magic 2): header parsing, validation, in-place patching.
//!
//! The produce → log → fetch path only ever touches the 61-byte batch header; records are decoded
//! solely by [`record_timestamps`], which serves ListOffsets-by-time and is never on the hot path.
//! Every function here takes bytes a client sent, so none of them may panic on any input.

use bytes::Bytes;

/// Length of the fixed v2 batch header; records start right after it.
pub const BATCH_HEADER_LEN: usize = 61;

pub const BASE_OFFSET_OFFSET: usize = 0;
pub const BATCH_LENGTH_OFFSET: usize = 8;
pub const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;
pub const MAGIC_OFFSET: usize = 16;
pub const CRC_OFFSET: usize = 17;
pub const ATTRIBUTES_OFFSET: usize = 21;
pub const LAST_OFFSET_DELTA_OFFSET: usize = 23;
pub const BASE_TIMESTAMP_OFFSET: usize = 27;
pub const MAX_TIMESTAMP_OFFSET: usize = 35;
pub const PRODUCER_ID_OFFSET: usize = 43;
pub const PRODUCER_EPOCH_OFFSET: usize = 51;
pub const BASE_SEQUENCE_OFFSET: usize = 53;
pub const RECORDS_COUNT_OFFSET: usize = 57;
pub const RECORDS_OFFSET: usize = BATCH_HEADER_LEN;

/// Bytes before `batch_length`'s coverage starts: base offset (8) + batch length (4).
pub const LOG_OVERHEAD: usize = 12;
/// Smallest legal `batch_length`: the header after the length field, with no records.
pub const BATCH_LENGTH_MIN: i32 = (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32;
/// The only record-batch format strom stores.
pub const MAGIC_V2: i8 = 2;
/// The CRC covers everything from the attributes to the end of the batch, so the broker can
/// rewrite base offset and leader epoch without recomputing it.
pub const CRC_COVERED_FROM: usize = ATTRIBUTES_OFFSET;

const _: () = assert!(RECORDS_COUNT_OFFSET + 4 == BATCH_HEADER_LEN);
const _: () = assert!(CRC_OFFSET + 4 == ATTRIBUTES_OFFSET);
const _: () = assert!(BATCH_LENGTH_MIN == 49);

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
pub(crate) const TRANSACTIONAL_BIT: i16 = 0x10;
pub(crate) const CONTROL_BIT: i16 = 0x20;

/// Why a byte range is not a usable v2 record batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported record batch magic {magic} (only v2 is supported)")]
    UnsupportedMagic { magic: i8 },
    #[error("invalid batch length {batch_length}")]
    InvalidBatchLength { batch_length: i32 },
    #[error("batch length {batch_length} does not match a buffer of {buffer_len} bytes")]
    LengthMismatch { batch_length: i32, buffer_len: usize },
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CorruptCrc { stored: u32, computed: u32 },
    #[error("invalid records count {records_count}")]
    InvalidRecordsCount { records_count: i32 },
    #[error("invalid last offset delta {last_offset_delta}")]
    InvalidLastOffsetDelta { last_offset_delta: i32 },
    #[error("last offset delta {last_offset_delta} does not fit {records_count} records")]
    RecordsCountMismatch { records_count: i32, last_offset_delta: i32 },
    #[error("unknown compression codec {codec}")]
    UnknownCompression { codec: u8 },
    #[error("records of a compressed batch cannot be read without decompressing")]
    Compressed,
    #[error("cannot decompress {codec:?} records: {reason}")]
    Decompress { codec: Compression, reason: String },
    #[error("records decompress to more than {max} bytes")]
    DecompressedTooLarge { max: u64 },
    #[error("malformed record {index}: {reason}")]
    MalformedRecord { index: i32, reason: &'static str },
}

/// Compression codec from attribute bits 0-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Attribute bit 3: who chose the record timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    #[default]
    CreateTime,
    LogAppendTime,
}

/// The decoded fixed header of a v2 batch. Field names follow the Kafka protocol documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after this field, i.e. the whole batch is `12 + batch_length` bytes.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn need(buf: &[u8], needed: usize) -> Result<(), BatchError> {
    if buf.len() < needed {
        return Err(BatchError::Truncated { needed, available: buf.len() });
    }
    Ok(())
}

// Callers check the length first; the fallbacks only keep these total without a panic path.
fn read_array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = buf.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

fn read_i64(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(read_array(buf, at))
}

fn read_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(read_array(buf, at))
}

fn read_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(read_array(buf, at))
}

fn write_at(buf: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), BatchError> {
    need(buf, at + bytes.len())?;
    buf[at..at + bytes.len()].copy_from_slice(bytes);
    Ok(())
}

impl BatchHeader {
    /// Reads the 61 header bytes at the start of `buf`. Checks nothing but the length: use
    /// [`validate`] for bytes that came from outside.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        need(buf, BATCH_HEADER_LEN)?;
        Ok(BatchHeader {
            base_offset: read_i64(buf, BASE_OFFSET_OFFSET),
            batch_length: read_i32(buf, BATCH_LENGTH_OFFSET),
            partition_leader_epoch: read_i32(buf, PARTITION_LEADER_EPOCH_OFFSET),
            magic: i8::from_be_bytes(read_array(buf, MAGIC_OFFSET)),
            crc: u32::from_be_bytes(read_array(buf, CRC_OFFSET)),
            attributes: read_i16(buf, ATTRIBUTES_OFFSET),
            last_offset_delta: read_i32(buf, LAST_OFFSET_DELTA_OFFSET),
            base_timestamp: read_i64(buf, BASE_TIMESTAMP_OFFSET),
            max_timestamp: read_i64(buf, MAX_TIMESTAMP_OFFSET),
            producer_id: read_i64(buf, PRODUCER_ID_OFFSET),
            producer_epoch: read_i16(buf, PRODUCER_EPOCH_OFFSET),
            base_sequence: read_i32(buf, BASE_SEQUENCE_OFFSET),
            records_count: read_i32(buf, RECORDS_COUNT_OFFSET),
        })
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        match self.attributes & COMPRESSION_MASK {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            codec => Err(BatchError::UnknownCompression { codec: codec as u8 }),
        }
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// Offset of the last record. Saturates rather than wrapping on a hostile header.
    pub fn last_offset(&self) -> i64 {
        self.base_offset.saturating_add(i64::from(self.last_offset_delta))
    }

    /// Size of the whole batch in bytes, or `None` when `batch_length` is negative.
    pub fn total_len(&self) -> Option<usize> {
        usize::try_from(self.batch_length).ok().map(|len| len + LOG_OVERHEAD)
    }
}

/// CRC-32C of the bytes the v2 CRC covers (attributes to end of `batch`).
pub fn compute_crc(batch: &[u8]) -> Result<u32, BatchError> {
    need(batch, BATCH_HEADER_LEN)?;
    Ok(crc32c::crc32c(&batch[CRC_COVERED_FROM..]))
}

/// Extends a CRC-32C over more bytes, for callers that checksum a batch in pieces
/// (`crc_append(0, whole) == crc32c(whole)`).
pub fn crc_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// Checks that `batch` is exactly one well-formed v2 batch with a matching CRC.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    // Magic first: a v0/v1 message set is shorter than a v2 header and must say so, not "truncated".
    need(batch, MAGIC_OFFSET + 1)?;
    let magic = i8::from_be_bytes(read_array(batch, MAGIC_OFFSET));
    if magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic { magic });
    }
    let header = BatchHeader::parse(batch)?;
    if header.batch_length < BATCH_LENGTH_MIN {
        return Err(BatchError::InvalidBatchLength { batch_length: header.batch_length });
    }
    match header.total_len() {
        Some(total) if total > batch.len() => {
            return Err(BatchError::Truncated { needed: total, available: batch.len() })
        }
        Some(total) if total == batch.len() => {}
        _ => {
            return Err(BatchError::LengthMismatch {
                batch_length: header.batch_length,
                buffer_len: batch.len(),
            })
        }
    }
    let computed = compute_crc(batch)?;
    if computed != header.crc {
        return Err(BatchError::CorruptCrc { stored: header.crc, computed });
    }
    validate_header(&header)?;
    Ok(header)
}

/// The checks of [`validate`] that need only the header (everything but buffer length and CRC),
/// for callers that stream the CRC over a batch too large to hold in memory.
pub fn validate_header(header: &BatchHeader) -> Result<(), BatchError> {
    if header.magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic { magic: header.magic });
    }
    if header.batch_length < BATCH_LENGTH_MIN {
        return Err(BatchError::InvalidBatchLength { batch_length: header.batch_length });
    }
    if header.records_count < 0 {
        return Err(BatchError::InvalidRecordsCount { records_count: header.records_count });
    }
    if header.last_offset_delta < 0 {
        return Err(BatchError::InvalidLastOffsetDelta {
            last_offset_delta: header.last_offset_delta,
        });
    }
    header.compression()?;
    Ok(())
}

/// Iterates over concatenated batches in a `Bytes`, yielding each header with a zero-copy slice.
///
/// Only framing is checked (header present, `batch_length` sane, batch fully inside the buffer);
/// call [`validate`] on each slice for magic and CRC. After the first error the iterator is done,
/// because without a trustworthy length there is no next boundary.
#[derive(Debug, Clone)]
pub struct Batches {
    buf: Bytes,
    position: usize,
    failed: bool,
}

impl Batches {
    pub fn new(buf: Bytes) -> Batches {
        Batches { buf, position: 0, failed: false }
    }

    /// Byte position of the next batch within the input.
    pub fn position(&self) -> usize {
        self.position
    }

    fn next_batch(&mut self) -> Result<(BatchHeader, Bytes), BatchError> {
        let rest = &self.buf[self.position..];
        let header = BatchHeader::parse(rest)?;
        if header.batch_length < BATCH_LENGTH_MIN {
            return Err(BatchError::InvalidBatchLength { batch_length: header.batch_length });
        }
        let total = header
            .total_len()
            .ok_or(BatchError::InvalidBatchLength { batch_length: header.batch_length })?;
        need(rest, total)?;
        let slice = self.buf.slice(self.position..self.position + total);
        self.position += total;
        Ok((header, slice))
    }
}

impl Iterator for Batches {
    type Item = Result<(BatchHeader, Bytes), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.buf.len() {
            return None;
        }
        let item = self.next_batch();
        self.failed = item.is_err();
        Some(item)
    }
}

/// Writes the base offset. Not covered by the CRC, so nothing else changes.
pub fn set_base_offset(buf: &mut [u8], base_offset: i64) -> Result<(), BatchError> {
    write_at(buf, BASE_OFFSET_OFFSET, &base_offset.to_be_bytes())
}

/// Writes the partition leader epoch. Not covered by the CRC.
pub fn set_partition_leader_epoch(buf: &mut [u8], epoch: i32) -> Result<(), BatchError> {
    write_at(buf, PARTITION_LEADER_EPOCH_OFFSET, &epoch.to_be_bytes())
}

/// Recomputes and stores the CRC of the batch at the start of `buf` (length from its header).
pub fn recompute_crc(buf: &mut [u8]) -> Result<(), BatchError> {
    let header = BatchHeader::parse(buf)?;
    let total = header
        .total_len()
        .filter(|total| *total >= BATCH_HEADER_LEN)
        .ok_or(BatchError::InvalidBatchLength { batch_length: header.batch_length })?;
    need(buf, total)?;
    let crc = compute_crc(&buf[..total])?;
    write_at(buf, CRC_OFFSET, &crc.to_be_bytes())
}

/// Marks the batch as LogAppendTime stamped with `timestamp_ms` and fixes the CRC.
///
/// Readers take every record's timestamp from `max_timestamp` for such batches; the base
/// timestamp is rewritten too so that readers unaware of the bit still see the append time.
pub fn set_log_append_time(buf: &mut [u8], timestamp_ms: i64) -> Result<(), BatchError> {
    let header = BatchHeader::parse(buf)?;
    let attributes = header.attributes | TIMESTAMP_TYPE_BIT;
    // Check the full length before the first write so a short buffer is left untouched.
    let total = header
        .total_len()
        .filter(|total| *total >= BATCH_HEADER_LEN)
        .ok_or(BatchError::InvalidBatchLength { batch_length: header.batch_length })?;
    need(buf, total)?;
    write_at(buf, ATTRIBUTES_OFFSET, &attributes.to_be_bytes())?;
    write_at(buf, BASE_TIMESTAMP_OFFSET, &timestamp_ms.to_be_bytes())?;
    write_at(buf, MAX_TIMESTAMP_OFFSET, &timestamp_ms.to_be_bytes())?;
    recompute_crc(buf)
}

/// Appends `value` as a zigzag varint, as records encode their fields.
pub fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (raw & 0x7f) as u8;
        raw >>= 7;
        if raw == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Zigzag varint reader over a record; Kafka encodes record fields as signed varints. Every
/// read is bounds-checked and returns `None` past the end of `buf`.
pub struct VarintReader<'a> {
    buf: &'a [u8],
    position: usize,
}

impl<'a> VarintReader<'a> {
    /// A reader of `buf` starting at `position`.
    pub fn new(buf: &'a [u8], position: usize) -> VarintReader<'a> {
        VarintReader { buf, position }
    }

    pub fn position(&self) -> usize {
        self.position
    }

    pub fn set_position(&mut self, position: usize) {
        self.position = position;
    }

    fn read_u64(&mut self, max_bytes: usize) -> Option<u64> {
        let mut value: u64 = 0;
        for i in 0..max_bytes {
            let byte = *self.buf.get(self.position)?;
            self.position += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    pub fn varlong(&mut self) -> Option<i64> {
        let raw = self.read_u64(10)?;
        Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    pub fn varint(&mut self) -> Option<i32> {
        let raw = u32::try_from(self.read_u64(5)?).ok()?;
        Some(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    pub fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.position.checked_add(n)?;
        if end > self.buf.len() {
            return None;
        }
        self.position = end;
        Some(())
    }

    /// Skips a varint-length-prefixed field (a record's key or value) and returns where its
    /// bytes are; `Some(None)` for a null one (negative length).
    pub fn bytes(&mut self) -> Option<Option<std::ops::Range<usize>>> {
        let len = self.varint()?;
        let Ok(len) = usize::try_from(len) else {
            return Some(None);
        };
        let start = self.position;
        let end = start.checked_add(len).filter(|end| *end <= self.buf.len())?;
        self.position = end;
        Some(Some(start..end))
    }
}

/// `(offset, timestamp)` of every record of an uncompressed batch, in batch order.
///
/// Used by ListOffsets-by-time for per-record precision; never on the produce/fetch path. The
/// batch must already be validated. For LogAppendTime batches every record carries the batch's
/// `max_timestamp`, as Kafka readers do.
pub fn record_timestamps(batch: &[u8]) -> Result<Vec<(i64, i64)>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.compression()? != Compression::None {
        return Err(BatchError::Compressed);
    }
    let total = header
        .total_len()
        .filter(|total| *total >= BATCH_HEADER_LEN)
        .ok_or(BatchError::InvalidBatchLength { batch_length: header.batch_length })?;
    need(batch, total)?;
    let records_count = usize::try_from(header.records_count)
        .map_err(|_| BatchError::InvalidRecordsCount { records_count: header.records_count })?;
    let mut reader = VarintReader { buf: &batch[RECORDS_OFFSET..total], position: 0 };
    // Each record takes at least one byte, which bounds the allocation by the batch size.
    let mut out = Vec::with_capacity(records_count.min(reader.buf.len()));
    let log_append_time = header.timestamp_type() == TimestampType::LogAppendTime;
    for index in 0..header.records_count {
        let malformed = |reason| BatchError::MalformedRecord { index, reason };
        let length = reader.varint().ok_or(malformed("bad length varint"))?;
        let length = usize::try_from(length).map_err(|_| malformed("negative length"))?;
        let record_start = reader.position;
        let record_end = record_start
            .checked_add(length)
            .filter(|end| *end <= reader.buf.len())
            .ok_or(malformed("length past end of batch"))?;
        let mut record = VarintReader { buf: &reader.buf[record_start..record_end], position: 0 };
        record.skip(1).ok_or(malformed("missing attributes"))?;
        let timestamp_delta = record.varlong().ok_or(malformed("bad timestamp delta"))?;
        let offset_delta = record.varint().ok_or(malformed("bad offset delta"))?;
        let timestamp = if log_append_time {
            header.max_timestamp
        } else {
            header
                .base_timestamp
                .checked_add(timestamp_delta)
                .ok_or(malformed("timestamp overflow"))?
        };
        let offset = header
            .base_offset
            .checked_add(i64::from(offset_delta))
            .ok_or(malformed("offset overflow"))?;
        out.push((offset, timestamp));
        reader.position = record_end;
    }
    Ok(out)
}

/// Builders for well-formed batches, shared by this crate's tests and by other crates' tests.
#[doc(hidden)]
pub mod test_support {
    use super::*;

    pub use super::put_varint;

    /// Builds a v2 batch of `timestamps.len()` records (value `b"v<i>"`, no key, no headers)
    /// with the given per-record timestamps, `attributes` as given and a correct CRC.
    ///
    /// The records are written uncompressed even when `attributes` names a codec: the log never
    /// decompresses, so tests only need the flag.
    pub fn build_batch(base_offset: i64, timestamps: &[i64], attributes: i16) -> Vec<u8> {
        let base_timestamp = timestamps.first().copied().unwrap_or(0);
        let max_timestamp = timestamps.iter().copied().max().unwrap_or(-1);
        let mut records = Vec::new();
        for (i, ts) in timestamps.iter().enumerate() {
            let mut body = Vec::new();
            body.push(0u8); // attributes
            put_varint(&mut body, ts - base_timestamp);
            put_varint(&mut body, i as i64);
            put_varint(&mut body, -1); // null key
            let value = format!("v{i}");
            put_varint(&mut body, value.len() as i64);
            body.extend_from_slice(value.as_bytes());
            put_varint(&mut body, 0); // headers
            put_varint(&mut records, body.len() as i64);
            records.extend_from_slice(&body);
        }
        let count = timestamps.len() as i32;
        let mut batch = Vec::with_capacity(BATCH_HEADER_LEN + records.len());
        batch.extend_from_slice(&base_offset.to_be_bytes());
        batch.extend_from_slice(
            &((BATCH_HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes(),
        );
        batch.extend_from_slice(&(-1i32).to_be_bytes()); // leader epoch: set by the broker
        batch.push(MAGIC_V2 as u8);
        batch.extend_from_slice(&0u32.to_be_bytes()); // crc, fixed below
        batch.extend_from_slice(&attributes.to_be_bytes());
        batch.extend_from_slice(&(count - 1).max(0).to_be_bytes());
        batch.extend_from_slice(&base_timestamp.to_be_bytes());
        batch.extend_from_slice(&max_timestamp.to_be_bytes());
        batch.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
        batch.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
        batch.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
        batch.extend_from_slice(&count.to_be_bytes());
        batch.extend_from_slice(&records);
        let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
        batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        batch
    }

    /// Stamps an idempotent producer's id, epoch and first sequence on `batch` and fixes
    /// its CRC.
    pub fn set_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
        batch[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8]
            .copy_from_slice(&producer_id.to_be_bytes());
        batch[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2]
            .copy_from_slice(&epoch.to_be_bytes());
        batch[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4]
            .copy_from_slice(&base_sequence.to_be_bytes());
        recompute_crc(batch).expect("a well-formed batch");
    }

    /// A batch of `n` records with timestamps `first_timestamp + i`.
    pub fn batch_with_records(n: usize, first_timestamp: i64, attributes: i16) -> Vec<u8> {
        let timestamps: Vec<i64> = (0..n as i64).map(|i| first_timestamp + i).collect();
        build_batch(0, &timestamps, attributes)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{batch_with_records, build_batch};
    use super::*;

    #[test]
    fn parse_reads_every_field_at_its_offset() {
        let batch = build_batch(42, &[1000, 1005, 1003], 0);
        let header = validate(&batch).unwrap();
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.total_len(), Some(batch.len()));
        assert_eq!(header.partition_leader_epoch, -1);
        assert_eq!(header.magic, 2);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.last_offset(), 44);
        assert_eq!(header.base_timestamp, 1000);
        assert_eq!(header.max_timestamp, 1005);
        assert_eq!(header.producer_id, -1);
        assert_eq!(header.producer_epoch, -1);
        assert_eq!(header.base_sequence, -1);
        assert_eq!(header.records_count, 3);
        assert_eq!(header.compression(), Ok(Compression::None));
        assert_eq!(header.timestamp_type(), TimestampType::CreateTime);
        assert!(!header.is_transactional());
        assert!(!header.is_control());
    }

    #[test]
    fn attribute_bits_decode() {
        let batch = build_batch(0, &[1], 4 | 0x08 | 0x10 | 0x20);
        let header = validate(&batch).unwrap();
        assert_eq!(header.compression(), Ok(Compression::Zstd));
        assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
        assert!(header.is_transactional());
        assert!(header.is_control());
        for (bits, codec) in [
            (1, Compression::Gzip),
            (2, Compression::Snappy),
            (3, Compression::Lz4),
            (0, Compression::None),
        ] {
            let header = BatchHeader::parse(&build_batch(0, &[1], bits)).unwrap();
            assert_eq!(header.compression(), Ok(codec));
        }
    }

    #[test]
    fn unknown_compression_is_rejected() {
        let batch = build_batch(0, &[1], 5);
        assert_eq!(validate(&batch), Err(BatchError::UnknownCompression { codec: 5 }));
    }

    #[test]
    fn flipped_byte_fails_crc() {
        let mut batch = batch_with_records(4, 10, 0);
        let last = batch.len() - 1;
        batch[last] ^= 0x01;
        assert!(matches!(validate(&batch), Err(BatchError::CorruptCrc { .. })));
    }

    #[test]
    fn base_offset_and_epoch_are_outside_the_crc() {
        let mut batch = batch_with_records(2, 10, 0);
        set_base_offset(&mut batch, 1234).unwrap();
        set_partition_leader_epoch(&mut batch, 7).unwrap();
        let header = validate(&batch).unwrap();
        assert_eq!((header.base_offset, header.partition_leader_epoch), (1234, 7));
    }

    #[test]
    fn wrong_magic_is_unsupported() {
        let mut batch = batch_with_records(1, 10, 0);
        batch[MAGIC_OFFSET] = 1;
        assert_eq!(validate(&batch), Err(BatchError::UnsupportedMagic { magic: 1 }));
        // A short v1 message still reports its magic rather than "truncated".
        assert_eq!(validate(&batch[..20]), Err(BatchError::UnsupportedMagic { magic: 1 }));
    }

    #[test]
    fn length_must_match_the_buffer() {
        let batch = batch_with_records(2, 10, 0);
        assert!(matches!(validate(&batch[..batch.len() - 1]), Err(BatchError::Truncated { .. })));
        let mut longer = batch.clone();
        longer.push(0);
        assert!(matches!(validate(&longer), Err(BatchError::LengthMismatch { .. })));
        let mut short_length = batch.clone();
        short_length[BATCH_LENGTH_OFFSET..BATCH_LENGTH_OFFSET + 4]
            .copy_from_slice(&48i32.to_be_bytes());
        assert_eq!(
            validate(&short_length),
            Err(BatchError::InvalidBatchLength { batch_length: 48 })
        );
    }

    #[test]
    fn negative_counts_are_rejected_even_with_a_good_crc() {
        let mut batch = batch_with_records(1, 10, 0);
        batch[RECORDS_COUNT_OFFSET..RECORDS_COUNT_OFFSET + 4]
            .copy_from_slice(&(-1i32).to_be_bytes());
        recompute_crc(&mut batch).unwrap();
        assert_eq!(validate(&batch), Err(BatchError::InvalidRecordsCount { records_count: -1 }));
        let mut batch = batch_with_records(1, 10, 0);
        batch[LAST_OFFSET_DELTA_OFFSET..LAST_OFFSET_DELTA_OFFSET + 4]
            .copy_from_slice(&(-3i32).to_be_bytes());
        recompute_crc(&mut batch).unwrap();
        assert_eq!(
            validate(&batch),
            Err(BatchError::InvalidLastOffsetDelta { last_offset_delta: -3 })
        );
    }

    #[test]
    fn batches_iterates_zero_copy_slices() {
        let mut all = Vec::new();
        let sizes = [1usize, 3, 2];
        for n in sizes {
            all.extend_from_slice(&batch_with_records(n, 100, 0));
        }
        let input = Bytes::from(all);
        let mut seen = Vec::new();
        for item in Batches::new(input.clone()) {
            let (header, slice) = item.unwrap();
            assert_eq!(validate(&slice).unwrap(), header);
            // Zero-copy: the slice points into the input allocation.
            let offset = slice.as_ptr() as usize - input.as_ptr() as usize;
            assert!(offset < input.len());
            seen.push(header.records_count as usize);
        }
        assert_eq!(seen, sizes);
    }

    #[test]
    fn batches_reports_a_truncated_tail_once() {
        let mut all = batch_with_records(2, 100, 0);
        let second = batch_with_records(2, 100, 0);
        all.extend_from_slice(&second[..second.len() - 5]);
        let mut batches = Batches::new(Bytes::from(all));
        assert!(batches.next().unwrap().is_ok());
        assert!(matches!(batches.next(), Some(Err(BatchError::Truncated { .. }))));
        assert!(batches.next().is_none());
    }

    #[test]
    fn set_log_append_time_rewrites_timestamps_with_a_valid_crc() {
        let mut batch = build_batch(0, &[10, 20], 0);
        set_log_append_time(&mut batch, 5000).unwrap();
        let header = validate(&batch).unwrap();
        assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!((header.base_timestamp, header.max_timestamp), (5000, 5000));
        assert_eq!(record_timestamps(&batch).unwrap(), vec![(0, 5000), (1, 5000)]);
    }

    #[test]
    fn record_timestamps_reads_each_record() {
        let batch = build_batch(100, &[50, 40, 70, -5], 0);
        assert_eq!(
            record_timestamps(&batch).unwrap(),
            vec![(100, 50), (101, 40), (102, 70), (103, -5)]
        );
    }

    #[test]
    fn record_timestamps_refuses_compressed_batches() {
        let batch = build_batch(0, &[1, 2], 1);
        assert_eq!(record_timestamps(&batch), Err(BatchError::Compressed));
    }

    #[test]
    fn record_timestamps_rejects_a_lying_records_count() {
        let mut batch = build_batch(0, &[1, 2], 0);
        batch[RECORDS_COUNT_OFFSET..RECORDS_COUNT_OFFSET + 4].copy_from_slice(&3i32.to_be_bytes());
        assert!(matches!(
            record_timestamps(&batch),
            Err(BatchError::MalformedRecord { index: 2, .. })
        ));
    }

    #[test]
    fn mutators_refuse_short_buffers_without_writing() {
        let mut short = vec![0u8; 30];
        assert!(set_base_offset(&mut short[..4], 1).is_err());
        assert!(set_partition_leader_epoch(&mut short[..14], 1).is_err());
        assert!(set_log_append_time(&mut short, 1).is_err());
        assert!(recompute_crc(&mut short).is_err());
        assert!(short.iter().all(|b| *b == 0));
        // A header claiming more bytes than present must not be written either.
        let mut batch = batch_with_records(2, 1, 0);
        let cut = batch.len() - 3;
        let before = batch[..cut].to_vec();
        assert!(set_log_append_time(&mut batch[..cut], 9).is_err());
        assert_eq!(&batch[..cut], &before[..]);
    }

    /// Deterministic xorshift so the garbage is reproducible without a rand dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn garbage_and_truncations_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let good = build_batch(7, &[1, 2, 3, 4, 5], 0);
        for cut in 0..=good.len() {
            let _ = validate(&good[..cut]);
            let _ = BatchHeader::parse(&good[..cut]);
            let _ = record_timestamps(&good[..cut]);
            let _ = Batches::new(Bytes::copy_from_slice(&good[..cut])).count();
            let mut copy = good[..cut].to_vec();
            let _ = set_log_append_time(&mut copy, 1);
            let _ = recompute_crc(&mut copy);
        }
        for _ in 0..2000 {
            let len = (xorshift(&mut state) % 200) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
            if len > MAGIC_OFFSET && xorshift(&mut state) % 2 == 0 {
                buf[MAGIC_OFFSET] = 2;
            }
            let _ = validate(&buf);
            let _ = record_timestamps(&buf);
            let _ = Batches::new(Bytes::from(buf.clone())).count();
            let _ = set_log_append_time(&mut buf, 1);
            let _ = recompute_crc(&mut buf);
        }
        // Corrupt single bytes of a good batch: record parsing must stay total.
        for i in 0..good.len() {
            let mut copy = good.clone();
            copy[i] = xorshift(&mut state) as u8;
            let _ = validate(&copy);
            let _ = record_timestamps(&copy);
        }
    }
}
