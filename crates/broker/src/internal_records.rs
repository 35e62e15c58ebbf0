//! The encoding primitives of the coordinators' records in their internal topics
//! (`group::records` for `__consumer_offsets`, `txn::records` for `__transaction_state`).
//! `kafka-protocol` does not generate those schemas, so each module encodes its keys and values
//! by hand from these: Kafka's classic encoding (big-endian integers, `int16`-length strings
//! with -1 for null, `int32`-length bytes) and its flexible one (unsigned varints, compact
//! strings whose length is stored plus one, tagged fields).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Why a key or a value read from an internal topic does not decode.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("record is truncated")]
    Truncated,
    #[error("unknown key version {0}")]
    KeyVersion(i16),
    #[error("unknown value version {0}")]
    ValueVersion(i16),
    #[error("unknown transaction status {0}")]
    Status(i8),
    #[error("string is not UTF-8")]
    Utf8,
    #[error("negative length {0}")]
    Length(i32),
    #[error("varint is longer than 5 bytes")]
    Varint,
    #[error("tagged field {tag} has {size} bytes")]
    TagSize { tag: u32, size: usize },
    #[error("{0} bytes follow the value")]
    Trailing(usize),
}

pub(crate) fn put_str(b: &mut BytesMut, s: &str) {
    // Group ids, transactional ids and topic names arrive as int16-length strings: they fit.
    let len = s.len().min(i16::MAX as usize);
    b.put_i16(len as i16);
    b.put_slice(&s.as_bytes()[..len]);
}

pub(crate) fn put_opt_str(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(b, s),
        None => b.put_i16(-1),
    }
}

pub(crate) fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_i32(v.len() as i32);
    b.put_slice(v);
}

pub(crate) fn put_compact_str(b: &mut BytesMut, s: &str) {
    put_uvarint(b, s.len() as u32 + 1);
    b.put_slice(s.as_bytes());
}

pub(crate) fn put_uvarint(b: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        b.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

pub(crate) fn get_i8(b: &mut Bytes) -> Result<i8, RecordError> {
    (b.remaining() >= 1).then(|| b.get_i8()).ok_or(RecordError::Truncated)
}

pub(crate) fn get_i16(b: &mut Bytes) -> Result<i16, RecordError> {
    (b.remaining() >= 2).then(|| b.get_i16()).ok_or(RecordError::Truncated)
}

pub(crate) fn get_i32(b: &mut Bytes) -> Result<i32, RecordError> {
    (b.remaining() >= 4).then(|| b.get_i32()).ok_or(RecordError::Truncated)
}

pub(crate) fn get_i64(b: &mut Bytes) -> Result<i64, RecordError> {
    (b.remaining() >= 8).then(|| b.get_i64()).ok_or(RecordError::Truncated)
}

pub(crate) fn get_uvarint(b: &mut Bytes) -> Result<u32, RecordError> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let byte = get_i8(b)? as u8;
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(RecordError::Varint)
}

fn utf8(raw: Bytes) -> Result<String, RecordError> {
    String::from_utf8(raw.to_vec()).map_err(|_| RecordError::Utf8)
}

/// A non-nullable `int16`-length string: a negative length is an error.
pub(crate) fn get_str(b: &mut Bytes) -> Result<String, RecordError> {
    let len = get_i16(b)?;
    if len < 0 {
        return Err(RecordError::Length(len.into()));
    }
    let len = len as usize;
    if b.remaining() < len {
        return Err(RecordError::Truncated);
    }
    utf8(b.split_to(len))
}

/// A nullable `int16`-length string: a negative length is null.
pub(crate) fn get_opt_str(b: &mut Bytes) -> Result<Option<String>, RecordError> {
    let len = get_i16(b)?;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    if b.remaining() < len {
        return Err(RecordError::Truncated);
    }
    utf8(b.split_to(len)).map(Some)
}

/// `int32`-length bytes; null (a negative length) reads as empty.
pub(crate) fn get_bytes(b: &mut Bytes) -> Result<Bytes, RecordError> {
    let len = get_i32(b)?;
    if len < 0 {
        return Ok(Bytes::new());
    }
    let len = len as usize;
    if b.remaining() < len {
        return Err(RecordError::Truncated);
    }
    Ok(b.split_to(len))
}

/// A non-nullable compact string (its length plus one as an unsigned varint).
pub(crate) fn get_compact_str(b: &mut Bytes) -> Result<String, RecordError> {
    let len = get_uvarint(b)? as i64 - 1;
    if len < 0 {
        return Err(RecordError::Length(-1));
    }
    let len = len as usize;
    if b.remaining() < len {
        return Err(RecordError::Truncated);
    }
    utf8(b.split_to(len))
}

/// Skips a struct's tagged fields: each says its size, so a field of a newer Kafka is passed.
pub(crate) fn skip_tagged_fields(b: &mut Bytes) -> Result<(), RecordError> {
    for _ in 0..get_uvarint(b)? {
        get_uvarint(b)?;
        let size = get_uvarint(b)? as usize;
        if b.remaining() < size {
            return Err(RecordError::Truncated);
        }
        b.advance(size);
    }
    Ok(())
}
