//! Transaction markers: the control batches a partition leader writes when a transaction ends
//! (Kafka's `EndTransactionMarker`). One record whose key is (version 0, type: 0 ABORT,
//! 1 COMMIT) and whose value is (version 0, the coordinator's epoch), in a batch with the
//! transactional and control attributes set, the producer's id and epoch, and no sequence.

use crate::batch::{
    self, put_varint, BatchHeader, VarintReader, BATCH_HEADER_LEN, CONTROL_BIT, CRC_COVERED_FROM,
    CRC_OFFSET, LOG_OVERHEAD, MAGIC_V2, TRANSACTIONAL_BIT,
};

const ABORT: i16 = 0;
const COMMIT: i16 = 1;
const MARKER_VERSION: i16 = 0;
/// The marker record's key (version, type) and value (version, coordinator epoch).
const KEY_LEN: usize = 4;
const VALUE_LEN: usize = 6;
/// Enough of a control batch to hold its one record's key: a reader of stored batches fetches
/// this many bytes from the batch start to learn a marker's type.
pub const MARKER_PREFIX_LEN: usize = BATCH_HEADER_LEN + 32;

/// What a control batch says about its producer's transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// A marker batch for `producer_id` at `producer_epoch`, offsets from 0 (the log assigns them).
pub fn build_marker(
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut record = Vec::with_capacity(24);
    record.push(0); // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, KEY_LEN as i64);
    record.extend_from_slice(&MARKER_VERSION.to_be_bytes());
    record.extend_from_slice(&(if marker.commit { COMMIT } else { ABORT }).to_be_bytes());
    put_varint(&mut record, VALUE_LEN as i64);
    record.extend_from_slice(&MARKER_VERSION.to_be_bytes());
    record.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    put_varint(&mut record, 0); // headers
    let mut out = Vec::with_capacity(BATCH_HEADER_LEN + record.len() + 1);
    out.extend_from_slice(&0i64.to_be_bytes()); // base offset
    let records_len = {
        let mut len = Vec::new();
        put_varint(&mut len, record.len() as i64);
        len
    };
    let batch_length = BATCH_HEADER_LEN - LOG_OVERHEAD + records_len.len() + record.len();
    out.extend_from_slice(&(batch_length as i32).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes()); // leader epoch: the log sets it
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, below
    out.extend_from_slice(&(TRANSACTIONAL_BIT | CONTROL_BIT).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&producer_id.to_be_bytes());
    out.extend_from_slice(&producer_epoch.to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    out.extend_from_slice(&1i32.to_be_bytes()); // records count
    out.extend_from_slice(&records_len);
    out.extend_from_slice(&record);
    let crc = batch::crc_append(0, &out[CRC_COVERED_FROM..]);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// The marker of a control batch, from at least its first [`MARKER_PREFIX_LEN`] bytes (or
/// the whole batch if shorter); `None` when `batch` is not a well-formed marker (a control
/// batch of an unknown type is not a transaction marker, and readers skip it).
pub fn parse_marker(batch: &[u8]) -> Option<Marker> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control() || header.records_count < 1 {
        return None;
    }
    let mut r = VarintReader::new(batch, BATCH_HEADER_LEN);
    r.varint()?; // record length
    r.skip(1)?; // attributes
    r.varlong()?; // timestamp delta
    r.varint()?; // offset delta
    let key = r.bytes()??;
    let key = batch.get(key).filter(|k| k.len() >= KEY_LEN)?;
    let kind = i16::from_be_bytes([key[2], key[3]]);
    // The value (coordinator epoch) may lie past a short prefix: the type alone decides.
    let coordinator_epoch = r
        .bytes()
        .flatten()
        .and_then(|v| batch.get(v))
        .filter(|v| v.len() >= VALUE_LEN)
        .map_or(0, |v| i32::from_be_bytes([v[2], v[3], v[4], v[5]]));
    match kind {
        ABORT => Some(Marker { commit: false, coordinator_epoch }),
        COMMIT => Some(Marker { commit: true, coordinator_epoch }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_valid_control_batches_that_parse_back() {
        for commit in [true, false] {
            let marker = Marker { commit, coordinator_epoch: 7 };
            let bytes = build_marker(42, 3, marker, 1_000);
            let header = batch::validate(&bytes).expect("a valid batch");
            assert!(header.is_control() && header.is_transactional());
            assert_eq!((header.producer_id, header.producer_epoch), (42, 3));
            assert_eq!((header.base_sequence, header.records_count), (-1, 1));
            assert!(bytes.len() <= MARKER_PREFIX_LEN);
            assert_eq!(parse_marker(&bytes), Some(marker));
        }
    }

    #[test]
    fn damaged_or_foreign_batches_are_not_markers() {
        let bytes = build_marker(1, 0, Marker { commit: true, coordinator_epoch: 0 }, 0);
        // Without the whole key the type is unknown; the value may be missing.
        for len in 0..bytes.len() - VALUE_LEN - 2 {
            assert_eq!(parse_marker(&bytes[..len]), None, "cut at {len}");
        }
        let plain = batch::test_support::batch_with_records(1, 0, 0);
        assert_eq!(parse_marker(&plain), None);
        // An unknown control type (Kafka has others, e.g. leader change) is no marker.
        let mut other = bytes.clone();
        let key_type = other.len() - 1 - VALUE_LEN - 1 - 2;
        other[key_type..key_type + 2].copy_from_slice(&5i16.to_be_bytes());
        assert_eq!(parse_marker(&other), None);
    }
}
