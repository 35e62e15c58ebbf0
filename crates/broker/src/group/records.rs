//! The keys and values of `__consumer_offsets`, in Kafka's own layout (OffsetCommitKey v1,
//! OffsetCommitValue v3, GroupMetadataKey v2, GroupMetadataValue v3), so that tools reading the
//! topic see what they would see on Kafka. Compaction keeps the latest value per key; a record
//! with no value (a tombstone) deletes the offset or the group.
//!
//! `kafka-protocol` does not generate these schemas, so they are encoded here from the layout in
//! Kafka's `OffsetCommitKey.json` & co.: big-endian integers, `int16`-length strings
//! (-1 for null), `int32`-length bytes, `int32`-count arrays.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::state::{GroupRecord, MemberRecord};
use crate::internal_records::{
    get_bytes, get_i16, get_i32, get_i64, get_opt_str, put_bytes, put_opt_str, put_str, RecordError,
};

/// Key version of an offset commit; 0 and 1 share a layout.
const OFFSET_KEY_VERSION: i16 = 1;
/// Key version of a group's metadata.
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

/// One committed offset, as stored and as OffsetFetch returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OffsetValue {
    pub offset: i64,
    /// -1 when the client did not say.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// A decoded `__consumer_offsets` key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Offset { group: String, topic: String, partition: i32 },
    Group { group: String },
}

/// A decoded record: its key and, unless it is a tombstone, its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Offset { group: String, topic: String, partition: i32, value: Option<OffsetValue> },
    Group { group: String, value: Option<GroupRecord> },
}

pub(crate) fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut b = BytesMut::with_capacity(10 + group.len() + topic.len());
    b.put_i16(OFFSET_KEY_VERSION);
    put_str(&mut b, group);
    put_str(&mut b, topic);
    b.put_i32(partition);
    b.freeze()
}

pub(crate) fn group_key(group: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + group.len());
    b.put_i16(GROUP_KEY_VERSION);
    put_str(&mut b, group);
    b.freeze()
}

pub(crate) fn offset_value(v: &OffsetValue) -> Bytes {
    let mut b = BytesMut::with_capacity(26 + v.metadata.len());
    b.put_i16(OFFSET_VALUE_VERSION);
    b.put_i64(v.offset);
    b.put_i32(v.leader_epoch);
    put_str(&mut b, &v.metadata);
    b.put_i64(v.commit_timestamp_ms);
    b.freeze()
}

pub(crate) fn group_value(g: &GroupRecord) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_i16(GROUP_VALUE_VERSION);
    put_str(&mut b, g.protocol_type.as_deref().unwrap_or(""));
    b.put_i32(g.generation_id);
    put_opt_str(&mut b, g.protocol_name.as_deref());
    put_opt_str(&mut b, g.leader.as_deref());
    b.put_i64(g.current_state_timestamp_ms);
    b.put_i32(g.members.len() as i32);
    for m in &g.members {
        put_str(&mut b, &m.member_id);
        put_opt_str(&mut b, m.group_instance_id.as_deref());
        put_str(&mut b, &m.client_id);
        put_str(&mut b, &m.client_host);
        b.put_i32(m.rebalance_timeout_ms);
        b.put_i32(m.session_timeout_ms);
        put_bytes(&mut b, &m.subscription);
        put_bytes(&mut b, &m.assignment);
    }
    b.freeze()
}

/// One uncompressed v2 batch of `__consumer_offsets` records (offsets assigned on append).
pub(crate) fn encode_batch(entries: &[(Bytes, Option<Bytes>)], now_ms: i64) -> Bytes {
    encode_batch_of(entries, None, now_ms)
}

/// [`encode_batch`] for the records of a transaction (TxnOffsetCommit): the batch carries the
/// producer's id and epoch and the transactional attribute, and no sequence (as Kafka's
/// coordinator writes them), so the partition's marker decides whether they count.
pub(crate) fn encode_batch_of(
    entries: &[(Bytes, Option<Bytes>)],
    producer: Option<(i64, i16)>,
    now_ms: i64,
) -> Bytes {
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    let records: Vec<Record> = entries
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now_ms,
            key: Some(key.clone()),
            value: value.clone(),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    // Encoding an uncompressed batch of in-memory records cannot fail.
    if let Err(e) = RecordBatchEncoder::encode(&mut buf, &records, &options) {
        debug_assert!(false, "cannot encode offsets batch: {e}");
        tracing::error!(error = %e, "cannot encode offsets batch");
    }
    buf.freeze()
}

pub(crate) fn decode_key(mut k: Bytes) -> Result<Key, RecordError> {
    let version = get_i16(&mut k)?;
    match version {
        0 | 1 => {
            let group = get_str_or_empty(&mut k)?;
            let topic = get_str_or_empty(&mut k)?;
            let partition = get_i32(&mut k)?;
            Ok(Key::Offset { group, topic, partition })
        }
        2 => Ok(Key::Group { group: get_str_or_empty(&mut k)? }),
        v => Err(RecordError::KeyVersion(v)),
    }
}

/// Decodes one record of the topic; `value: None` is a tombstone.
pub(crate) fn decode(key: Bytes, value: Option<Bytes>) -> Result<Entry, RecordError> {
    match decode_key(key)? {
        Key::Offset { group, topic, partition } => {
            let value = value.map(decode_offset_value).transpose()?;
            Ok(Entry::Offset { group, topic, partition, value })
        }
        Key::Group { group } => {
            let value = value.map(|v| decode_group_value(&group, v)).transpose()?;
            Ok(Entry::Group { group, value })
        }
    }
}

fn decode_offset_value(mut v: Bytes) -> Result<OffsetValue, RecordError> {
    let version = get_i16(&mut v)?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::ValueVersion(version));
    }
    let offset = get_i64(&mut v)?;
    let leader_epoch = if version >= 3 { get_i32(&mut v)? } else { -1 };
    let metadata = get_str_or_empty(&mut v)?;
    let commit_timestamp_ms = get_i64(&mut v)?;
    // v1's expire timestamp follows; retention is the broker's now, so it is not read.
    Ok(OffsetValue { offset, leader_epoch, metadata, commit_timestamp_ms })
}

fn decode_group_value(group: &str, mut v: Bytes) -> Result<GroupRecord, RecordError> {
    let version = get_i16(&mut v)?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::ValueVersion(version));
    }
    let protocol_type = get_str_or_empty(&mut v)?;
    let generation_id = get_i32(&mut v)?;
    let protocol_name = get_opt_str(&mut v)?;
    let leader = get_opt_str(&mut v)?;
    let current_state_timestamp_ms = if version >= 2 { get_i64(&mut v)? } else { -1 };
    let count = get_i32(&mut v)?;
    if count < 0 {
        return Err(RecordError::Length(count));
    }
    // Each member takes at least 20 bytes: the count cannot claim more than the value holds.
    let mut members = Vec::with_capacity((count as usize).min(v.remaining() / 20));
    for _ in 0..count {
        let member_id = get_str_or_empty(&mut v)?;
        let group_instance_id = if version >= 3 { get_opt_str(&mut v)? } else { None };
        let client_id = get_str_or_empty(&mut v)?;
        let client_host = get_str_or_empty(&mut v)?;
        let rebalance_timeout_ms = if version >= 1 { get_i32(&mut v)? } else { -1 };
        let session_timeout_ms = get_i32(&mut v)?;
        let rebalance_timeout_ms =
            if rebalance_timeout_ms < 0 { session_timeout_ms } else { rebalance_timeout_ms };
        let subscription = get_bytes(&mut v)?;
        let assignment = get_bytes(&mut v)?;
        members.push(MemberRecord {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(GroupRecord {
        group_id: group.to_owned(),
        generation_id,
        protocol_type: (!protocol_type.is_empty()).then_some(protocol_type),
        protocol_name,
        leader,
        current_state_timestamp_ms,
        members,
    })
}

/// A non-nullable `int16`-length string, read leniently: a null reads as empty.
fn get_str_or_empty(b: &mut Bytes) -> Result<String, RecordError> {
    Ok(get_opt_str(b)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip_in_kafkas_layout() {
        let key = offset_key("g", "t", 7);
        // version 1, "g", "t", partition 7
        assert_eq!(&key[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7]);
        let value = OffsetValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp_ms: 1000,
        };
        let encoded = offset_value(&value);
        assert_eq!(encoded.len(), 2 + 8 + 4 + 3 + 8);
        assert_eq!(
            decode(key.clone(), Some(encoded)).unwrap(),
            Entry::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 7,
                value: Some(value)
            }
        );
        assert_eq!(
            decode(key, None).unwrap(),
            Entry::Offset { group: "g".into(), topic: "t".into(), partition: 7, value: None }
        );
    }

    #[test]
    fn group_records_round_trip() {
        let record = GroupRecord {
            group_id: "g".into(),
            generation_id: 5,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            leader: Some("m-1".into()),
            current_state_timestamp_ms: 99,
            members: vec![MemberRecord {
                member_id: "m-1".into(),
                group_instance_id: Some("i".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 30_000,
                session_timeout_ms: 10_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        let decoded = decode(group_key("g"), Some(group_value(&record))).unwrap();
        assert_eq!(decoded, Entry::Group { group: "g".into(), value: Some(record) });
    }

    #[test]
    fn older_offset_value_versions_decode() {
        // v1: offset, metadata, commit timestamp, expire timestamp
        let mut v = BytesMut::new();
        v.put_i16(1);
        v.put_i64(10);
        put_str(&mut v, "");
        v.put_i64(5);
        v.put_i64(6);
        let entry = decode(offset_key("g", "t", 0), Some(v.freeze())).unwrap();
        let Entry::Offset { value: Some(value), .. } = entry else { panic!("{entry:?}") };
        assert_eq!((value.offset, value.leader_epoch, value.commit_timestamp_ms), (10, -1, 5));
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        assert_eq!(decode_key(Bytes::from_static(&[0])), Err(RecordError::Truncated));
        assert_eq!(decode_key(Bytes::from_static(&[0, 9, 0, 0])), Err(RecordError::KeyVersion(9)));
        let full = group_value(&GroupRecord {
            group_id: "g".into(),
            generation_id: 1,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            current_state_timestamp_ms: 0,
            members: vec![],
        });
        for cut in 0..full.len() {
            let r = decode(group_key("g"), Some(full.slice(..cut)));
            assert_eq!(r, Err(RecordError::Truncated), "cut at {cut}");
        }
        // A member count far beyond what the value holds fails without reserving for it.
        let mut v = BytesMut::from(&full[..full.len() - 4]);
        v.put_i32(i32::MAX);
        assert_eq!(decode(group_key("g"), Some(v.freeze())), Err(RecordError::Truncated));
    }

    #[test]
    fn offsets_batches_decode_back_to_their_records() {
        let entries = vec![
            (
                offset_key("g", "t", 0),
                Some(offset_value(&OffsetValue {
                    offset: 5,
                    leader_epoch: 1,
                    metadata: String::new(),
                    commit_timestamp_ms: 7,
                })),
            ),
            (group_key("g"), None),
        ];
        let mut batch = encode_batch(&entries, 7);
        let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut batch).unwrap();
        let got: Vec<(Option<Bytes>, Option<Bytes>)> =
            sets.into_iter().flat_map(|s| s.records).map(|r| (r.key, r.value)).collect();
        let want: Vec<(Option<Bytes>, Option<Bytes>)> =
            entries.into_iter().map(|(k, v)| (Some(k), v)).collect();
        assert_eq!(got, want);
    }
}
