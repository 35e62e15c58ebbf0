//! Idempotent producers' state of one partition, as Kafka's ProducerStateManager keeps it: per
//! producer id, its epoch and the sequence and offset ranges of its last few batches. A leader
//! checks every client batch that carries a producer id against it: a retried batch that was
//! already written is answered with its original offsets and not written again, a gap in the
//! sequence is OUT_OF_ORDER_SEQUENCE_NUMBER, an older epoch INVALID_PRODUCER_EPOCH. Batches a
//! follower copies, or that recovery reads back from the log, update the state unchecked, so
//! any replica can take over with the same state.
//!
//! Sans-IO: it sees only batch headers (never records) and the offsets the log assigned. The
//! log persists it as snapshots (`<offset>.snapshot`, the state of every batch below that
//! offset) written at each segment roll, so that an open or a truncation replays only the
//! batch headers after the newest snapshot, not the whole log.

use std::collections::{BTreeMap, HashMap, VecDeque};

use strom_protocol::batch::BatchHeader;
use strom_protocol::control::Marker;

/// Batches remembered per producer: the most a well-behaved client has in flight
/// (`max.in.flight.requests.per.connection` ≤ 5 with idempotence), so any retry is found.
pub const BATCHES_PER_PRODUCER_MAX: usize = 5;
/// Kafka's `producer.id.expiration.ms` default (one day): a producer silent for longer is
/// forgotten.
pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: i64 = 86_400_000;

/// A header field's "none": batches of producers that are not idempotent.
const NO_PRODUCER_ID: i64 = -1;
const NO_SEQUENCE: i32 = -1;

/// One batch as the state remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    /// Oldest first, at most `BATCHES_PER_PRODUCER_MAX`.
    batches: VecDeque<ProducerBatch>,
    /// The newest batch's max timestamp: expiry counts from it.
    last_timestamp_ms: i64,
    /// The first offset of the producer's open transaction (its first transactional batch
    /// since its last marker).
    txn_first_offset: Option<i64>,
    /// The epoch of the transaction coordinator that wrote the producer's last marker; a
    /// marker from an older coordinator is refused.
    coordinator_epoch: i32,
}

/// A transaction a marker ended, as the log's aborted-transaction index keeps aborts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The marker's offset.
    pub last_offset: i64,
    pub commit: bool,
}

/// One producer as DescribeProducers shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerView {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: Option<i32>,
    pub last_timestamp_ms: i64,
    pub coordinator_epoch: i32,
    pub txn_first_offset: Option<i64>,
}

impl Default for ProducerEntry {
    fn default() -> Self {
        ProducerEntry {
            epoch: 0,
            batches: VecDeque::new(),
            last_timestamp_ms: 0,
            txn_first_offset: None,
            // Kafka's "no coordinator yet", as DescribeProducers shows it.
            coordinator_epoch: -1,
        }
    }
}

impl ProducerEntry {
    fn last_sequence(&self) -> Option<i32> {
        self.batches.back().map(|b| b.last_sequence)
    }

    fn duplicate_of(&self, epoch: i16, first: i32, last: i32) -> Option<ProducerBatch> {
        if epoch != self.epoch {
            return None;
        }
        self.batches.iter().copied().find(|b| b.first_sequence == first && b.last_sequence == last)
    }
}

/// Why a client batch is refused; each maps to one Kafka error code in the broker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    #[error("producer {producer_id} epoch {epoch} is older than its current epoch {current}")]
    InvalidProducerEpoch { producer_id: i64, epoch: i16, current: i16 },
    #[error(
        "marker for producer {producer_id} from coordinator epoch {coordinator_epoch}, older \
         than {current}"
    )]
    CoordinatorFenced { producer_id: i64, coordinator_epoch: i32, current: i32 },
    #[error(
        "producer {producer_id} epoch {epoch}: sequence {first_sequence} does not follow \
         {last_sequence:?}"
    )]
    OutOfOrderSequence {
        producer_id: i64,
        epoch: i16,
        first_sequence: i32,
        last_sequence: Option<i32>,
    },
}

/// What a leader does with a client append whose batches passed the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendCheck {
    /// Write it.
    Append,
    /// A retry of a batch already in the log: answer with these offsets, write nothing.
    Duplicate(ProducerBatch),
}

/// The sequence number `increment` after `sequence`, wrapping past `i32::MAX` to 0 as Kafka's.
pub fn sequence_after(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

fn in_sequence(last: i32, next: i32) -> bool {
    next == sequence_after(last, 1)
}

/// Whether a batch carries idempotence: a producer id and a sequence.
fn is_idempotent(header: &BatchHeader) -> bool {
    header.producer_id != NO_PRODUCER_ID && header.base_sequence != NO_SEQUENCE
}

fn last_sequence_of(header: &BatchHeader) -> i32 {
    sequence_after(header.base_sequence, header.last_offset_delta.max(0))
}

/// Layout version of a snapshot file; another version is ignored (the state is then rebuilt
/// from the log).
const SNAPSHOT_VERSION: u16 = 1;
/// id (8) + epoch (2) + last timestamp (8) + open transaction's first offset (8) +
/// coordinator epoch (4) + batch count (1).
const SNAPSHOT_ENTRY_LEN: usize = 31;
/// Two sequences (4 + 4) and two offsets (8 + 8).
const SNAPSHOT_BATCH_LEN: usize = 24;
const _: () = assert!(BATCHES_PER_PRODUCER_MAX <= u8::MAX as usize);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// Open transactions by first offset: the smallest is the first unstable offset.
    ongoing: BTreeMap<i64, i64>,
}

impl ProducerStates {
    /// Producers currently remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The epoch and last sequence of `producer_id`, as DescribeProducers shows them.
    pub fn producer(&self, producer_id: i64) -> Option<(i16, Option<i32>)> {
        self.producers.get(&producer_id).map(|e| (e.epoch, e.last_sequence()))
    }

    /// Checks a client's append (the batches of one partition of one Produce request, in
    /// order) against the state, without changing it. A batch that repeats one already written
    /// makes the whole append a duplicate (a retry resends what it sent); otherwise each
    /// idempotent batch must carry the producer's current or a newer epoch and continue its
    /// sequence (a new epoch starts at 0; an unknown producer may start anywhere, as after its
    /// state expired).
    pub fn check_client_append(
        &self,
        headers: &[BatchHeader],
    ) -> Result<AppendCheck, ProducerError> {
        // Entries as the earlier batches of this same append leave them.
        let mut pending: HashMap<i64, (i16, Option<i32>)> = HashMap::new();
        for header in headers.iter().filter(|h| is_idempotent(h)) {
            let id = header.producer_id;
            let (epoch, first) = (header.producer_epoch, header.base_sequence);
            let last = last_sequence_of(header);
            let known = self.producers.get(&id);
            if let Some(duplicate) = known.and_then(|e| e.duplicate_of(epoch, first, last)) {
                return Ok(AppendCheck::Duplicate(duplicate));
            }
            let current =
                pending.get(&id).copied().or_else(|| known.map(|e| (e.epoch, e.last_sequence())));
            let (current_epoch, last_sequence) = match current {
                None => (None, None),
                Some((e, l)) => (Some(e), l),
            };
            if let Some(current) = current_epoch.filter(|c| epoch < *c) {
                return Err(ProducerError::InvalidProducerEpoch {
                    producer_id: id,
                    epoch,
                    current,
                });
            }
            // A new epoch starts at 0; the current one continues its sequence; an unknown
            // producer (or one whose state expired) may start anywhere.
            let follows = match current_epoch {
                None => true,
                Some(c) if epoch > c => first == 0,
                Some(_) => last_sequence.is_none_or(|l| in_sequence(l, first)),
            };
            if !follows {
                let last_sequence = last_sequence.filter(|_| current_epoch == Some(epoch));
                return Err(ProducerError::OutOfOrderSequence {
                    producer_id: id,
                    epoch,
                    first_sequence: first,
                    last_sequence,
                });
            }
            pending.insert(id, (epoch, Some(last)));
        }
        Ok(AppendCheck::Append)
    }

    /// Records a batch the log holds at `header.base_offset` (a leader's append after its
    /// check, a follower's copy, or recovery reading the log back), unchecked.
    pub fn record(&mut self, header: &BatchHeader) {
        if !is_idempotent(header) {
            return;
        }
        let entry = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_PER_PRODUCER_MAX {
            entry.batches.pop_front();
        }
        entry.batches.push_back(ProducerBatch {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence_of(header),
            first_offset: header.base_offset,
            last_offset: header.base_offset + i64::from(header.last_offset_delta.max(0)),
        });
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(header.max_timestamp);
        if header.is_transactional() && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(header.base_offset);
            self.ongoing.insert(header.base_offset, header.producer_id);
        }
    }

    /// Checks a transaction marker before a leader writes it: the producer's epoch and the
    /// coordinator's must not be older than the ones the state knows.
    pub fn check_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), ProducerError> {
        let Some(entry) = self.producers.get(&producer_id) else { return Ok(()) };
        if epoch < entry.epoch {
            return Err(ProducerError::InvalidProducerEpoch {
                producer_id,
                epoch,
                current: entry.epoch,
            });
        }
        if coordinator_epoch < entry.coordinator_epoch {
            return Err(ProducerError::CoordinatorFenced {
                producer_id,
                coordinator_epoch,
                current: entry.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Records a marker the log holds at `header.base_offset` (unchecked, as [`Self::record`]):
    /// the producer's open transaction, if any, ends there.
    pub fn record_marker(&mut self, header: &BatchHeader, marker: Marker) -> Option<CompletedTxn> {
        let entry = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch > entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.coordinator_epoch = entry.coordinator_epoch.max(marker.coordinator_epoch);
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(header.max_timestamp);
        let first_offset = entry.txn_first_offset.take()?;
        self.ongoing.remove(&first_offset);
        Some(CompletedTxn {
            producer_id: header.producer_id,
            first_offset,
            last_offset: header.base_offset,
            commit: marker.commit,
        })
    }

    /// Whether `producer_id` has a transaction open in this partition at `epoch`: its later
    /// batches need no new verification with the coordinator (KIP-890).
    pub fn in_transaction(&self, producer_id: i64, epoch: i16) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|e| e.epoch == epoch && e.txn_first_offset.is_some())
    }

    /// The first offset of the oldest open transaction: read_committed readers stop there.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.keys().next().copied()
    }

    /// Every producer, ordered by id.
    pub fn describe(&self) -> Vec<ProducerView> {
        let mut out: Vec<ProducerView> = self
            .producers
            .iter()
            .map(|(&producer_id, e)| ProducerView {
                producer_id,
                epoch: e.epoch,
                last_sequence: e.last_sequence(),
                last_timestamp_ms: e.last_timestamp_ms,
                coordinator_epoch: e.coordinator_epoch,
                txn_first_offset: e.txn_first_offset,
            })
            .collect();
        out.sort_unstable_by_key(|p| p.producer_id);
        out
    }

    /// The state as a snapshot file's bytes: a version, a CRC-32C of the rest, then every
    /// producer (ordered by id, so equal states give equal files) with its remembered batches.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        let mut body =
            Vec::with_capacity(4 + ids.len() * (SNAPSHOT_ENTRY_LEN + SNAPSHOT_BATCH_LEN));
        body.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            let entry = &self.producers[id];
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&entry.epoch.to_be_bytes());
            body.extend_from_slice(&entry.last_timestamp_ms.to_be_bytes());
            body.extend_from_slice(&entry.txn_first_offset.unwrap_or(-1).to_be_bytes());
            body.extend_from_slice(&entry.coordinator_epoch.to_be_bytes());
            body.push(entry.batches.len() as u8);
            for b in &entry.batches {
                body.extend_from_slice(&b.first_sequence.to_be_bytes());
                body.extend_from_slice(&b.last_sequence.to_be_bytes());
                body.extend_from_slice(&b.first_offset.to_be_bytes());
                body.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        let mut out = Vec::with_capacity(6 + body.len());
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&strom_protocol::batch::crc_append(0, &body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads [`ProducerStates::encode_snapshot`]'s bytes back; `None` for anything damaged,
    /// truncated or of another version (the caller then rebuilds from the log). Counts are
    /// checked against the bytes present before anything is allocated.
    pub fn decode_snapshot(bytes: &[u8]) -> Option<ProducerStates> {
        let mut r = Reader(bytes);
        if r.u16()? != SNAPSHOT_VERSION {
            return None;
        }
        let crc = r.u32()?;
        if strom_protocol::batch::crc_append(0, r.0) != crc {
            return None;
        }
        let count = r.u32()? as usize;
        if count > r.0.len() / SNAPSHOT_ENTRY_LEN {
            return None;
        }
        let mut producers = HashMap::with_capacity(count);
        let mut ongoing = BTreeMap::new();
        for _ in 0..count {
            let id = r.i64()?;
            let epoch = r.u16()? as i16;
            let last_timestamp_ms = r.i64()?;
            let txn_first_offset = Some(r.i64()?).filter(|o| *o >= 0);
            let coordinator_epoch = r.u32()? as i32;
            let n = usize::from(r.take(1)?[0]);
            if n > BATCHES_PER_PRODUCER_MAX {
                return None;
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(ProducerBatch {
                    first_sequence: r.u32()? as i32,
                    last_sequence: r.u32()? as i32,
                    first_offset: r.i64()?,
                    last_offset: r.i64()?,
                });
            }
            if let Some(first) = txn_first_offset {
                ongoing.insert(first, id);
            }
            let entry = ProducerEntry {
                epoch,
                batches,
                last_timestamp_ms,
                txn_first_offset,
                coordinator_epoch,
            };
            producers.insert(id, entry);
        }
        (r.0.is_empty() && producers.len() == count)
            .then_some(ProducerStates { producers, ongoing })
    }

    /// Forgets producers whose newest batch is older than `expiration_ms` at `now_ms`, except
    /// those in a transaction.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        // A producer with an open transaction stays until its coordinator ends it.
        self.producers.retain(|_, e| {
            e.txn_first_offset.is_some()
                || now_ms.saturating_sub(e.last_timestamp_ms) <= expiration_ms
        });
        before - self.producers.len()
    }
}

/// Big-endian reads over a snapshot's bytes; `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    fn i64(&mut self) -> Option<i64> {
        self.take(8).map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, records: i32, offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset: offset,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 1_000,
            max_timestamp: 1_000,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: records,
        }
    }

    fn append(states: &mut ProducerStates, h: BatchHeader) -> Result<AppendCheck, ProducerError> {
        let check = states.check_client_append(&[h])?;
        if check == AppendCheck::Append {
            states.record(&h);
        }
        Ok(check)
    }

    #[test]
    fn batches_in_sequence_append_and_a_retry_is_answered_with_its_first_offsets() {
        let mut s = ProducerStates::default();
        assert_eq!(append(&mut s, header(7, 0, 0, 3, 0)), Ok(AppendCheck::Append));
        assert_eq!(append(&mut s, header(7, 0, 3, 2, 3)), Ok(AppendCheck::Append));
        // The retry of the first batch comes with whatever offset the client put there.
        let retry = append(&mut s, header(7, 0, 0, 3, 99));
        assert_eq!(
            retry,
            Ok(AppendCheck::Duplicate(ProducerBatch {
                first_sequence: 0,
                last_sequence: 2,
                first_offset: 0,
                last_offset: 2
            }))
        );
        assert_eq!(s.producer(7), Some((0, Some(4))));
    }

    #[test]
    fn a_gap_an_old_epoch_and_a_new_epoch_not_at_zero_are_refused() {
        let mut s = ProducerStates::default();
        append(&mut s, header(7, 2, 0, 1, 0)).unwrap();
        assert!(matches!(
            append(&mut s, header(7, 2, 5, 1, 1)),
            Err(ProducerError::OutOfOrderSequence {
                first_sequence: 5,
                last_sequence: Some(0),
                ..
            })
        ));
        assert!(matches!(
            append(&mut s, header(7, 1, 1, 1, 1)),
            Err(ProducerError::InvalidProducerEpoch { epoch: 1, current: 2, .. })
        ));
        assert!(matches!(
            append(&mut s, header(7, 3, 4, 1, 1)),
            Err(ProducerError::OutOfOrderSequence { epoch: 3, .. })
        ));
        // A bumped epoch starts again at 0 and forgets the old batches.
        assert_eq!(append(&mut s, header(7, 3, 0, 1, 1)), Ok(AppendCheck::Append));
        assert_eq!(s.check_client_append(&[header(7, 2, 0, 1, 9)]).ok(), None);
    }

    #[test]
    fn an_unknown_producer_may_start_anywhere_and_plain_batches_are_not_tracked() {
        let mut s = ProducerStates::default();
        assert_eq!(append(&mut s, header(9, 0, 41, 2, 0)), Ok(AppendCheck::Append));
        assert_eq!(s.producer(9), Some((0, Some(42))));
        assert_eq!(
            append(&mut s, header(NO_PRODUCER_ID, -1, NO_SEQUENCE, 5, 2)),
            Ok(AppendCheck::Append)
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            append(&mut s, header(1, 0, i, 1, i64::from(i))).unwrap();
        }
        // Batches 0 and 1 are no longer known: their retry is a gap, not a duplicate.
        assert!(s.check_client_append(&[header(1, 0, 1, 1, 0)]).is_err());
        assert!(matches!(
            s.check_client_append(&[header(1, 0, 2, 1, 0)]),
            Ok(AppendCheck::Duplicate(_))
        ));
        assert_eq!(sequence_after(i32::MAX, 1), 0);
        assert_eq!(sequence_after(i32::MAX - 1, 3), 1);
        let mut w = ProducerStates::default();
        append(&mut w, header(2, 0, i32::MAX - 1, 2, 0)).unwrap();
        assert_eq!(append(&mut w, header(2, 0, 0, 1, 2)), Ok(AppendCheck::Append));
    }

    #[test]
    fn batches_of_one_append_are_checked_in_order_and_recovery_replays_unchecked() {
        let s = ProducerStates::default();
        let both = [header(4, 0, 0, 2, 0), header(4, 0, 2, 2, 2)];
        assert_eq!(s.check_client_append(&both), Ok(AppendCheck::Append));
        let gap = [header(4, 0, 0, 2, 0), header(4, 0, 3, 2, 2)];
        assert!(s.check_client_append(&gap).is_err());
        // A follower or recovery records what the log holds, in order, and ends where the
        // leader did.
        let mut replica = ProducerStates::default();
        for h in &both {
            replica.record(h);
        }
        assert_eq!(replica.producer(4), Some((0, Some(3))));
        assert_eq!(
            replica.expire(
                1_000 + PRODUCER_ID_EXPIRATION_MS_DEFAULT,
                PRODUCER_ID_EXPIRATION_MS_DEFAULT
            ),
            0
        );
        assert_eq!(
            replica.expire(
                1_001 + PRODUCER_ID_EXPIRATION_MS_DEFAULT,
                PRODUCER_ID_EXPIRATION_MS_DEFAULT
            ),
            1
        );
    }

    #[test]
    fn a_snapshot_round_trips_and_damage_is_detected_not_misread() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            s.record(&header(1, 2, i * 2, 2, i64::from(i) * 2));
        }
        s.record(&header(i64::MAX - 1, i16::MAX, i32::MAX - 1, 2, 100));
        let bytes = s.encode_snapshot();
        assert_eq!(ProducerStates::decode_snapshot(&bytes), Some(s.clone()));
        assert_eq!(
            ProducerStates::decode_snapshot(&ProducerStates::default().encode_snapshot()),
            Some(ProducerStates::default())
        );
        // Every truncation and every single flipped byte is refused.
        for len in 0..bytes.len() {
            assert_eq!(ProducerStates::decode_snapshot(&bytes[..len]), None, "cut at {len}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert_eq!(ProducerStates::decode_snapshot(&bad), None, "flip at {i}");
        }
        // A count that claims more producers than the bytes hold is refused before allocating.
        let mut huge = vec![0, 1, 0, 0, 0, 0];
        let body = u32::MAX.to_be_bytes();
        huge[2..6].copy_from_slice(&strom_protocol::batch::crc_append(0, &body).to_be_bytes());
        huge.extend_from_slice(&body);
        assert_eq!(ProducerStates::decode_snapshot(&huge), None);
    }

    fn transactional(pid: i64, epoch: i16, seq: i32, records: i32, offset: i64) -> BatchHeader {
        BatchHeader { attributes: 0x10, ..header(pid, epoch, seq, records, offset) }
    }

    fn marker_at(pid: i64, epoch: i16, offset: i64) -> BatchHeader {
        BatchHeader { attributes: 0x30, base_sequence: -1, ..header(pid, epoch, 0, 1, offset) }
    }

    #[test]
    fn open_transactions_hold_the_first_unstable_offset_until_their_marker() {
        let mut s = ProducerStates::default();
        s.record(&transactional(1, 0, 0, 2, 10));
        s.record(&transactional(2, 0, 0, 1, 12));
        s.record(&transactional(1, 0, 2, 1, 13));
        assert_eq!(s.first_unstable_offset(), Some(10));
        let commit = Marker { commit: true, coordinator_epoch: 3 };
        let ended = s.record_marker(&marker_at(1, 0, 14), commit);
        assert_eq!(
            ended,
            Some(CompletedTxn { producer_id: 1, first_offset: 10, last_offset: 14, commit: true })
        );
        assert_eq!(s.first_unstable_offset(), Some(12));
        // A second marker for the same producer ends nothing; an older coordinator is fenced.
        assert_eq!(s.record_marker(&marker_at(1, 0, 15), commit), None);
        assert!(matches!(
            s.check_marker(1, 0, 2),
            Err(ProducerError::CoordinatorFenced { current: 3, .. })
        ));
        assert!(matches!(
            s.check_marker(1, -1, 3),
            Err(ProducerError::InvalidProducerEpoch { .. })
        ));
        assert_eq!(s.check_marker(1, 1, 3), Ok(()));
        // The open transaction survives a snapshot and expiry.
        let copy = ProducerStates::decode_snapshot(&s.encode_snapshot()).unwrap();
        assert_eq!(copy, s);
        assert_eq!(s.expire(i64::MAX, 0), 1, "producer 1 expires, producer 2 is in a transaction");
        assert_eq!(s.first_unstable_offset(), Some(12));
        let abort = Marker { commit: false, coordinator_epoch: 3 };
        assert!(s.record_marker(&marker_at(2, 1, 20), abort).is_some_and(|t| !t.commit));
        assert_eq!(s.first_unstable_offset(), None);
        assert_eq!(s.producer(2), Some((1, None)), "a bumped marker epoch starts afresh");
    }
}
