//! Kafka's record compression codecs, on the pure-Rust implementations: a streaming reader of
//! a batch's compressed records (the broker's compacted-key check, the CLI's consumer) and the
//! compressor the CLI's producer writes with.

use std::io::{self, Read};

use crate::batch::{BatchError, Compression};

/// xerial snappy-java's stream header (magic, version 1, compatible version 1), which Kafka's
/// Java clients write before length-prefixed snappy blocks; librdkafka writes it too, and
/// accepts raw snappy, as Kafka does.
pub(crate) const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
const XERIAL_MAGIC_LEN: usize = 8;

/// A reader of `records` (a batch's bytes after its header) decompressed with `codec`. Snappy
/// blocks larger than `block_bytes_max` are refused; bound the total with `Read::take`.
pub fn reader<'a>(
    codec: Compression,
    records: &'a [u8],
    block_bytes_max: u64,
) -> Result<Box<dyn Read + 'a>, BatchError> {
    let failed = |e: String| BatchError::Decompress { codec, reason: e };
    Ok(match codec {
        Compression::None => Box::new(records),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(records)),
        Compression::Snappy => Box::new(
            SnappyReader::new(records, block_bytes_max).map_err(|e| failed(e.to_string()))?,
        ),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(records)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(records).map_err(|e| failed(e.to_string()))?,
        ),
    })
}

/// `records` compressed with `codec` as Kafka producers write it: a gzip stream, xerial-framed
/// snappy (one block), an LZ4 frame, a zstd frame.
pub fn compress(codec: Compression, records: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Write;
    Ok(match codec {
        Compression::None => records.to_vec(),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(records)?;
            encoder.finish()?
        }
        Compression::Snappy => {
            let block =
                snap::raw::Encoder::new().compress_vec(records).map_err(io::Error::other)?;
            let mut out = Vec::with_capacity(XERIAL_HEADER.len() + 4 + block.len());
            out.extend_from_slice(XERIAL_HEADER);
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(&block);
            out
        }
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(records)?;
            encoder.finish().map_err(io::Error::other)?
        }
        Compression::Zstd => {
            ruzstd::encoding::compress_to_vec(records, ruzstd::encoding::CompressionLevel::Fastest)
        }
    })
}

/// Snappy as Kafka writes it: xerial's framing (a header, then blocks each prefixed with its
/// big-endian compressed length) or, without that header, one raw block. Decompresses a block
/// at a time.
struct SnappyReader<'a> {
    input: &'a [u8],
    framed: bool,
    block: Vec<u8>,
    position: usize,
    block_bytes_max: u64,
}

impl<'a> SnappyReader<'a> {
    fn new(input: &'a [u8], block_bytes_max: u64) -> io::Result<SnappyReader<'a>> {
        let framed = input.get(..XERIAL_MAGIC_LEN) == Some(&XERIAL_HEADER[..XERIAL_MAGIC_LEN]);
        if framed && input.len() < XERIAL_HEADER.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated snappy header"));
        }
        let input = if framed { &input[XERIAL_HEADER.len()..] } else { input };
        Ok(SnappyReader { input, framed, block: Vec::new(), position: 0, block_bytes_max })
    }

    /// Decompresses the next block into `self.block`; false at the end of the input.
    fn next_block(&mut self) -> io::Result<bool> {
        if self.input.is_empty() {
            return Ok(false);
        }
        let compressed = if self.framed {
            let invalid = || io::Error::new(io::ErrorKind::InvalidData, "truncated snappy block");
            let len: [u8; 4] =
                self.input.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(invalid)?;
            let len = u32::from_be_bytes(len) as usize;
            let block = self.input.get(4..4 + len).ok_or_else(invalid)?;
            self.input = &self.input[4 + len..];
            block
        } else {
            std::mem::take(&mut self.input)
        };
        let size = snap::raw::decompress_len(compressed).map_err(io::Error::other)?;
        if size as u64 > self.block_bytes_max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "snappy block too large"));
        }
        self.block.resize(size, 0);
        let n = snap::raw::Decoder::new()
            .decompress(compressed, &mut self.block)
            .map_err(io::Error::other)?;
        self.block.truncate(n);
        self.position = 0;
        Ok(true)
    }
}

impl Read for SnappyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.position);
        buf[..n].copy_from_slice(&self.block[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let packed = compress(codec, &data).unwrap();
            let mut back = Vec::new();
            reader(codec, &packed, 1 << 30).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{codec:?}");
        }
    }
}
