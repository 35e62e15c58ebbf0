//! Which records of a batch have no key: the one question about records that the produce path
//! must answer, and only for compacted topics, which refuse such records (Kafka's rule, reported
//! per record as KIP-467 asks). Records stream through one at a time, decompressed on the way if
//! the batch is compressed; nothing is kept but the indexes of the keyless ones, and a batch may
//! inflate to at most [`DECOMPRESSED_BYTES_MAX`].

use std::io::{self, Read};

use crate::batch::{BatchError, BatchHeader, BATCH_HEADER_LEN, RECORDS_OFFSET};
use crate::compression;

/// Decompressed bytes one batch may inflate to while its keys are read (gzip alone reaches
/// about 1000:1, so a 1 MiB batch could otherwise claim a GiB of work).
pub const DECOMPRESSED_BYTES_MAX: u64 = 256 << 20;

/// Indexes (in batch order, from 0) of the records of `batch` whose key is null. The batch must
/// already be validated (framing and CRC).
pub fn keyless_records(batch: &[u8]) -> Result<Vec<i32>, BatchError> {
    keyless_records_within(batch, DECOMPRESSED_BYTES_MAX)
}

fn keyless_records_within(batch: &[u8], max: u64) -> Result<Vec<i32>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    let total = header
        .total_len()
        .filter(|total| *total >= BATCH_HEADER_LEN && *total <= batch.len())
        .ok_or(BatchError::InvalidBatchLength { batch_length: header.batch_length })?;
    let records = &batch[RECORDS_OFFSET..total];
    let codec = header.compression()?;
    let failed = |e: io::Error| BatchError::Decompress { codec, reason: e.to_string() };
    let reader = compression::reader(codec, records, max)?;
    let mut reader = Counted { inner: reader.take(max + 1), read: 0 };
    let mut keyless = Vec::new();
    for index in 0..header.records_count {
        let outcome = record_has_key(&mut reader);
        if reader.read > max {
            return Err(BatchError::DecompressedTooLarge { max });
        }
        match outcome {
            Ok(true) => {}
            Ok(false) => keyless.push(index),
            Err(Malformed::Record(reason)) => {
                return Err(BatchError::MalformedRecord { index, reason })
            }
            Err(Malformed::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(BatchError::MalformedRecord { index, reason: "past end of batch" })
            }
            Err(Malformed::Io(e)) => return Err(failed(e)),
        }
    }
    Ok(keyless)
}

enum Malformed {
    Record(&'static str),
    Io(io::Error),
}

impl From<io::Error> for Malformed {
    fn from(e: io::Error) -> Malformed {
        Malformed::Io(e)
    }
}

/// Reads one record (length, attributes, timestamp delta, offset delta, key length), skips the
/// rest of it, and says whether its key is present.
fn record_has_key(reader: &mut Counted<impl Read>) -> Result<bool, Malformed> {
    let length = read_varint(reader, 5)?;
    let length = u64::try_from(zigzag(length)).map_err(|_| Malformed::Record("negative length"))?;
    let start = reader.read;
    let mut attributes = [0u8; 1];
    reader.read_exact(&mut attributes)?;
    read_varint(reader, 10)?; // timestamp delta
    read_varint(reader, 5)?; // offset delta
    let key_length = zigzag(read_varint(reader, 5)?);
    let consumed = reader.read - start;
    let rest = length.checked_sub(consumed).ok_or(Malformed::Record("length too short"))?;
    let skipped = io::copy(&mut reader.by_ref().take(rest), &mut io::sink())?;
    if skipped < rest {
        return Err(Malformed::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(key_length >= 0)
}

fn zigzag(raw: u64) -> i64 {
    ((raw >> 1) as i64) ^ -((raw & 1) as i64)
}

fn read_varint(reader: &mut impl Read, max_bytes: usize) -> Result<u64, Malformed> {
    let mut value: u64 = 0;
    for i in 0..max_bytes {
        let mut byte = [0u8; 1];
        reader.read_exact(&mut byte)?;
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed::Record("varint too long"))
}

/// Counts the bytes read through it: decompressed bytes, for the bound and for record lengths.
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::batch::test_support::put_varint;
    use crate::batch::{recompute_crc, validate};

    /// Records with the given keys (`None`: null key), value `v`, no headers.
    fn records(keys: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let mut body = vec![0u8];
            put_varint(&mut body, 0);
            put_varint(&mut body, i as i64);
            match key {
                Some(key) => {
                    put_varint(&mut body, key.len() as i64);
                    body.extend_from_slice(key);
                }
                None => put_varint(&mut body, -1),
            }
            put_varint(&mut body, 1);
            body.push(b'v');
            put_varint(&mut body, 0);
            put_varint(&mut out, body.len() as i64);
            out.extend_from_slice(&body);
        }
        out
    }

    fn batch(count: usize, codec: i16, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; BATCH_HEADER_LEN];
        b.extend_from_slice(payload);
        let batch_length = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&batch_length.to_be_bytes());
        b[16] = 2;
        b[21..23].copy_from_slice(&codec.to_be_bytes());
        b[23..27].copy_from_slice(&(count as i32 - 1).to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        b[57..61].copy_from_slice(&(count as i32).to_be_bytes());
        recompute_crc(&mut b).unwrap();
        validate(&b).unwrap();
        b
    }

    const KEYS: [Option<&[u8]>; 4] = [Some(b"a"), None, Some(b""), None];

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn xerial(data: &[u8]) -> Vec<u8> {
        let mut out = crate::compression::XERIAL_HEADER.to_vec();
        for chunk in data.chunks(7) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(&block);
        }
        out
    }

    #[test]
    fn null_keys_are_found_in_every_codec_and_an_empty_key_is_a_key() {
        let plain = records(&KEYS);
        let lz4 = {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(&plain).unwrap();
            e.finish().unwrap()
        };
        let zstd = ruzstd::encoding::compress_to_vec(
            &plain[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let raw_snappy = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        for (codec, payload) in [
            (0, plain.clone()),
            (1, gzip(&plain)),
            (2, xerial(&plain)),
            (2, raw_snappy),
            (3, lz4),
            (4, zstd),
        ] {
            let keyless = keyless_records(&batch(KEYS.len(), codec, &payload));
            assert_eq!(keyless, Ok(vec![1, 3]), "codec {codec}");
        }
    }

    #[test]
    fn truncated_or_garbled_records_are_errors_not_panics() {
        let plain = records(&KEYS);
        let cut = batch(KEYS.len(), 0, &plain[..plain.len() - 2]);
        assert!(matches!(keyless_records(&cut), Err(BatchError::MalformedRecord { index: 3, .. })));
        let garbage = batch(2, 1, b"not gzip at all");
        assert!(matches!(keyless_records(&garbage), Err(BatchError::Decompress { .. })));
        let garbage = batch(2, 2, b"\xff\xff\xff\xff\xff\xff");
        assert!(keyless_records(&garbage).is_err());
    }

    #[test]
    fn a_batch_that_inflates_past_the_bound_is_refused() {
        // One record claiming a value longer than the bound, of zeros that gzip shrinks 1000:1.
        const MAX: u64 = 1 << 20;
        let mut plain = Vec::new();
        let body_len = MAX as i64 + 16;
        put_varint(&mut plain, body_len);
        plain.push(0);
        put_varint(&mut plain, 0);
        put_varint(&mut plain, 0);
        put_varint(&mut plain, 1);
        plain.push(b'k');
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&plain).unwrap();
        e.write_all(&vec![0u8; 2 * MAX as usize]).unwrap();
        let batch = batch(1, 1, &e.finish().unwrap());
        assert_eq!(
            keyless_records_within(&batch, MAX),
            Err(BatchError::DecompressedTooLarge { max: MAX })
        );
        assert_eq!(keyless_records(&batch), Ok(vec![]), "within the real bound it is read");
    }
}
