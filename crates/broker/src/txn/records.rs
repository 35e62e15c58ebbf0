//! The keys and values of `__transaction_state`, in Kafka's own layout (TransactionLogKey v0,
//! TransactionLogValue v0 and v1), so that a coordinator reloading the topic, and tools reading
//! it, see what they would see on Kafka. Compaction keeps the latest value per transactional id;
//! a record with no value (a tombstone) says the id expired.
//!
//! `kafka-protocol` does not generate these schemas, so they are encoded here from the layout in
//! Kafka's `TransactionLogKey.json` / `TransactionLogValue.json`. The key is the record type 0
//! as an `int16`, then the id as an `int16`-length string. Value v0 is Kafka's classic encoding
//! (big-endian integers, `int16`-length strings, `int32`-count arrays, -1 for null); v1 is its
//! first flexible version (unsigned-varint lengths plus one, 0 for null, and tagged fields after
//! each struct): PreviousProducerId (tag 0), NextProducerId (tag 1), ClientTransactionVersion
//! (tag 2), each written only when it differs from its default, as Kafka's generated code does.
//!
//! strom writes v1: it is the version that keeps the previous producer id, which a producer
//! retrying InitProducerId after an epoch exhaustion is checked against (KIP-360), across a
//! coordinator failover. Both versions decode; unknown tags are skipped.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::state::{TopicPartition, TxnRecord, TxnState, NO_PRODUCER_ID};
use crate::internal_records::{
    get_compact_str, get_i16, get_i32, get_i64, get_i8, get_str, get_uvarint, put_compact_str,
    put_str, put_uvarint, skip_tagged_fields, RecordError,
};

/// The record type of a transaction log key (Kafka's `CoordinatorRecordType.TRANSACTION_LOG`),
/// written where other coordinator keys write their version.
const KEY_VERSION: i16 = 0;
/// The value version strom writes (see the module doc).
const VALUE_VERSION: i16 = 1;

const TAG_PREVIOUS_PRODUCER_ID: u32 = 0;
const TAG_NEXT_PRODUCER_ID: u32 = 1;
const TAG_CLIENT_TRANSACTION_VERSION: u32 = 2;

pub(crate) fn key(transactional_id: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + transactional_id.len());
    b.put_i16(KEY_VERSION);
    put_str(&mut b, transactional_id);
    b.freeze()
}

/// The value strom writes: v1.
pub(crate) fn value(r: &TxnRecord) -> Bytes {
    encode_value(r, VALUE_VERSION)
}

/// `version` 0 or 1; any other is a bug.
fn encode_value(r: &TxnRecord, version: i16) -> Bytes {
    assert!(version == 0 || version == 1, "TransactionLogValue v{version}");
    let flexible = version >= 1;
    let mut b = BytesMut::with_capacity(64 + 16 * r.partitions.len());
    b.put_i16(version);
    b.put_i64(r.producer_id);
    b.put_i16(r.producer_epoch);
    b.put_i32(r.timeout_ms);
    b.put_i8(r.state.id());
    // Kafka writes no partition list (null) for Empty, and a list, maybe empty, otherwise.
    let topics = (r.state != TxnState::Empty).then(|| by_topic(&r.partitions));
    match (&topics, flexible) {
        (None, false) => b.put_i32(-1),
        (None, true) => put_uvarint(&mut b, 0),
        (Some(t), false) => b.put_i32(t.len() as i32),
        (Some(t), true) => put_uvarint(&mut b, t.len() as u32 + 1),
    }
    for (topic, partitions) in topics.iter().flatten() {
        if flexible {
            put_compact_str(&mut b, topic);
            put_uvarint(&mut b, partitions.len() as u32 + 1);
        } else {
            put_str(&mut b, topic);
            b.put_i32(partitions.len() as i32);
        }
        for p in partitions {
            b.put_i32(*p);
        }
        if flexible {
            put_uvarint(&mut b, 0); // the topic entry's tagged fields: none
        }
    }
    b.put_i64(r.last_update_timestamp_ms);
    b.put_i64(r.start_timestamp_ms);
    if flexible {
        let mut tags: Vec<(u32, Vec<u8>)> = Vec::new();
        if r.previous_producer_id != NO_PRODUCER_ID {
            tags.push((TAG_PREVIOUS_PRODUCER_ID, r.previous_producer_id.to_be_bytes().to_vec()));
        }
        if r.next_producer_id != NO_PRODUCER_ID {
            tags.push((TAG_NEXT_PRODUCER_ID, r.next_producer_id.to_be_bytes().to_vec()));
        }
        if r.client_transaction_version != 0 {
            let v = r.client_transaction_version.to_be_bytes().to_vec();
            tags.push((TAG_CLIENT_TRANSACTION_VERSION, v));
        }
        put_uvarint(&mut b, tags.len() as u32);
        for (tag, data) in tags {
            put_uvarint(&mut b, tag);
            put_uvarint(&mut b, data.len() as u32);
            b.put_slice(&data);
        }
    }
    b.freeze()
}

/// The partitions grouped by topic, in order.
fn by_topic(partitions: &BTreeSet<TopicPartition>) -> Vec<(&str, Vec<i32>)> {
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for tp in partitions {
        match topics.last_mut() {
            Some((topic, ids)) if *topic == tp.topic => ids.push(tp.partition),
            _ => topics.push((&tp.topic, vec![tp.partition])),
        }
    }
    topics
}

pub(crate) fn decode_key(mut k: Bytes) -> Result<String, RecordError> {
    match get_i16(&mut k)? {
        KEY_VERSION => get_str(&mut k),
        v => Err(RecordError::KeyVersion(v)),
    }
}

/// Decodes one record of the topic: the transactional id and, unless the record is a
/// tombstone (the id expired), its state.
pub(crate) fn decode(
    key: Bytes,
    value: Option<Bytes>,
) -> Result<(String, Option<TxnRecord>), RecordError> {
    let id = decode_key(key)?;
    let value = value.map(decode_value).transpose()?;
    Ok((id, value))
}

fn decode_value(mut v: Bytes) -> Result<TxnRecord, RecordError> {
    let version = get_i16(&mut v)?;
    if !(0..=1).contains(&version) {
        return Err(RecordError::ValueVersion(version));
    }
    let flexible = version >= 1;
    let producer_id = get_i64(&mut v)?;
    let producer_epoch = get_i16(&mut v)?;
    let timeout_ms = get_i32(&mut v)?;
    let status = get_i8(&mut v)?;
    let state = TxnState::from_id(status).ok_or(RecordError::Status(status))?;
    let topics = if flexible { get_uvarint(&mut v)? as i64 - 1 } else { get_i32(&mut v)? as i64 };
    if topics < -1 {
        return Err(RecordError::Length(topics as i32));
    }
    let mut partitions = BTreeSet::new();
    for _ in 0..topics.max(0) {
        let topic = if flexible { get_compact_str(&mut v)? } else { get_str(&mut v)? };
        let count =
            if flexible { get_uvarint(&mut v)? as i64 - 1 } else { get_i32(&mut v)? as i64 };
        if count < 0 {
            return Err(RecordError::Length(count as i32));
        }
        // The count cannot claim more than the value holds; checked before looping on it.
        if v.remaining() / 4 < count as usize {
            return Err(RecordError::Truncated);
        }
        for _ in 0..count {
            partitions.insert(TopicPartition { topic: topic.clone(), partition: v.get_i32() });
        }
        if flexible {
            skip_tagged_fields(&mut v)?;
        }
    }
    let last_update_timestamp_ms = get_i64(&mut v)?;
    let start_timestamp_ms = get_i64(&mut v)?;
    let mut record = TxnRecord {
        producer_id,
        previous_producer_id: NO_PRODUCER_ID,
        next_producer_id: NO_PRODUCER_ID,
        producer_epoch,
        timeout_ms,
        state,
        partitions,
        last_update_timestamp_ms,
        start_timestamp_ms,
        client_transaction_version: 0,
    };
    if flexible {
        let count = get_uvarint(&mut v)?;
        for _ in 0..count {
            let tag = get_uvarint(&mut v)?;
            let size = get_uvarint(&mut v)? as usize;
            if v.remaining() < size {
                return Err(RecordError::Truncated);
            }
            let mut data = v.split_to(size);
            let wrong_size = || RecordError::TagSize { tag, size };
            match tag {
                TAG_PREVIOUS_PRODUCER_ID | TAG_NEXT_PRODUCER_ID => {
                    let id = (size == 8).then(|| data.get_i64()).ok_or_else(wrong_size)?;
                    if tag == TAG_PREVIOUS_PRODUCER_ID {
                        record.previous_producer_id = id;
                    } else {
                        record.next_producer_id = id;
                    }
                }
                TAG_CLIENT_TRANSACTION_VERSION => {
                    let version = (size == 2).then(|| data.get_i16()).ok_or_else(wrong_size)?;
                    record.client_transaction_version = version;
                }
                // A field a newer Kafka added: its size lets it be skipped.
                _ => {}
            }
        }
    }
    if v.has_remaining() {
        return Err(RecordError::Trailing(v.remaining()));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition { topic: topic.into(), partition }
    }

    fn ongoing() -> TxnRecord {
        TxnRecord {
            producer_id: 1000,
            previous_producer_id: 999,
            next_producer_id: NO_PRODUCER_ID,
            producer_epoch: 3,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: [tp("a", 0), tp("a", 2), tp("b", 1)].into_iter().collect(),
            last_update_timestamp_ms: 20,
            start_timestamp_ms: 10,
            client_transaction_version: 0,
        }
    }

    #[test]
    fn the_key_is_record_type_zero_and_the_id() {
        assert_eq!(&key("tx")[..], &[0, 0, 0, 2, b't', b'x']);
        assert_eq!(decode_key(key("tx")).unwrap(), "tx");
    }

    /// Byte for byte what Kafka's generated `TransactionLogValue` writes at v0 and v1.
    #[test]
    fn values_have_kafkas_layout() {
        let mut r = ongoing();
        r.partitions = [tp("t", 7)].into_iter().collect();
        let mut v0 = vec![0, 0]; // version
        v0.extend(1000i64.to_be_bytes());
        v0.extend(3i16.to_be_bytes());
        v0.extend(60_000i32.to_be_bytes());
        v0.push(1); // Ongoing
        v0.extend([0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 7]);
        v0.extend(20i64.to_be_bytes());
        v0.extend(10i64.to_be_bytes());
        assert_eq!(&encode_value(&r, 0)[..], &v0[..]);

        let mut v1 = vec![0, 1];
        v1.extend(1000i64.to_be_bytes());
        v1.extend(3i16.to_be_bytes());
        v1.extend(60_000i32.to_be_bytes());
        v1.push(1);
        // one topic (2), "t" (2, 't'), one partition (2), 7, no tags (0)
        v1.extend([2, 2, b't', 2, 0, 0, 0, 7, 0]);
        v1.extend(20i64.to_be_bytes());
        v1.extend(10i64.to_be_bytes());
        v1.extend([1, 0, 8]); // one tag: PreviousProducerId, 8 bytes
        v1.extend(999i64.to_be_bytes());
        assert_eq!(&value(&r)[..], &v1[..]);
    }

    #[test]
    fn values_round_trip_in_both_versions() {
        let mut r = ongoing();
        assert_eq!(decode(key("tx"), Some(value(&r))).unwrap(), ("tx".into(), Some(r.clone())));
        r.next_producer_id = 1001;
        r.client_transaction_version = 2;
        assert_eq!(decode_value(value(&r)).unwrap(), r);
        // v0 has no tagged fields: those fields come back as their defaults.
        let v0 = decode_value(encode_value(&r, 0)).unwrap();
        assert_eq!(
            (v0.previous_producer_id, v0.next_producer_id, v0.client_transaction_version),
            (NO_PRODUCER_ID, NO_PRODUCER_ID, 0)
        );
        assert_eq!(v0.partitions, r.partitions);
    }

    #[test]
    fn an_empty_transaction_has_no_partition_list_and_a_tombstone_no_value() {
        let mut r = ongoing();
        r.state = TxnState::Empty;
        r.partitions.clear();
        r.start_timestamp_ms = -1;
        let v1 = value(&r);
        assert_eq!(v1[2 + 8 + 2 + 4 + 1], 0, "null compact array");
        assert_eq!(decode_value(v1).unwrap(), r);
        let v0 = encode_value(&r, 0);
        assert_eq!(&v0[17..21], &(-1i32).to_be_bytes(), "null array");
        assert_eq!(decode_value(v0).unwrap().partitions, BTreeSet::new());
        r.state = TxnState::CompleteCommit;
        assert_eq!(value(&r)[17], 1, "an empty list, not null");
        assert_eq!(decode(key("tx"), None).unwrap(), ("tx".into(), None));
    }

    #[test]
    fn unknown_tags_from_a_newer_kafka_are_skipped() {
        let mut raw = BytesMut::from(&value(&ongoing())[..]);
        let tags_at = raw.len() - 11;
        assert_eq!(raw[tags_at], 1);
        raw[tags_at] = 2;
        raw.extend_from_slice(&[9, 3, 1, 2, 3]); // tag 9, 3 bytes
        assert_eq!(decode_value(raw.freeze()).unwrap(), ongoing());
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        assert_eq!(decode_key(Bytes::from_static(&[0])), Err(RecordError::Truncated));
        assert_eq!(decode_key(Bytes::from_static(&[0, 1, 0, 0])), Err(RecordError::KeyVersion(1)));
        assert_eq!(
            decode_key(Bytes::from_static(&[0, 0, 0xff, 0xff])),
            Err(RecordError::Length(-1))
        );
        for version in [0, 1] {
            let full = encode_value(&ongoing(), version);
            for cut in 0..full.len() {
                let r = decode_value(full.slice(..cut));
                assert_eq!(r, Err(RecordError::Truncated), "v{version} cut at {cut}");
            }
            let mut long = BytesMut::from(&full[..]);
            long.put_u8(0);
            assert_eq!(decode_value(long.freeze()), Err(RecordError::Trailing(1)));
            let mut status = BytesMut::from(&full[..]);
            status[16] = 8;
            assert_eq!(decode_value(status.freeze()), Err(RecordError::Status(8)));
        }
        let mut version = BytesMut::from(&value(&ongoing())[..]);
        version[1] = 2;
        assert_eq!(decode_value(version.freeze()), Err(RecordError::ValueVersion(2)));
        // A partition count far beyond what the value holds fails without looping on it.
        let mut v = BytesMut::new();
        v.put_i16(0);
        v.put_i64(1);
        v.put_i16(0);
        v.put_i32(1);
        v.put_i8(1);
        v.put_i32(1);
        put_str(&mut v, "t");
        v.put_i32(i32::MAX);
        assert_eq!(decode_value(v.freeze()), Err(RecordError::Truncated));
        // A varint that never ends, and a known tag of the wrong size.
        let mut v = BytesMut::from(&value(&ongoing())[..17]);
        v.extend_from_slice(&[0xff; 6]);
        assert_eq!(decode_value(v.freeze()), Err(RecordError::Varint));
        let mut v = BytesMut::from(&value(&ongoing())[..]);
        let at = v.len() - 9;
        v[at] = 7;
        v.truncate(at + 8);
        assert_eq!(decode_value(v.freeze()), Err(RecordError::TagSize { tag: 0, size: 7 }));
    }
}
