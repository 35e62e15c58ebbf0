//! Producer ids for idempotent and transactional producers: a broker asks for a block of ids
//! (Kafka's AllocateProducerIds), and the controller commits a `ProducerIdsRecord` that moves
//! `next_producer_id` past the block before the broker hears of it. An id is handed out only
//! from a committed block, so no controller after a failover can hand it out again.

use super::{rec, ControlResponse, Decision};
use crate::records::metadata_record::Record;
use crate::records::ProducerIdsRecord;
use crate::{BrokerEpoch, ControlError, MetadataImage, NodeId};

/// Ids in one block (Kafka's `ProducerIdsBlock.PRODUCER_ID_BLOCK_SIZE`).
pub const PRODUCER_ID_BLOCK_SIZE: i32 = 1000;

const _: () = assert!(PRODUCER_ID_BLOCK_SIZE > 0);

/// A broker's request for the next block of producer ids.
#[derive(Clone, Debug)]
pub struct AllocateProducerIdsRequest {
    pub broker_id: NodeId,
    pub broker_epoch: BrokerEpoch,
}

/// Ids `first_producer_id .. first_producer_id + len`, this broker's alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerIdBlock {
    pub first_producer_id: i64,
    pub len: i32,
}

impl ProducerIdBlock {
    /// The first id after the block; `None` when it would pass `i64::MAX` (a malformed block).
    pub fn end(&self) -> Option<i64> {
        self.first_producer_id.checked_add(i64::from(self.len))
    }
}

/// Only the broker's current registration may take ids (as Kafka's `checkBrokerEpoch`: an
/// unknown broker and a stale epoch are both STALE_BROKER_EPOCH). A fenced broker may: ids are
/// unique whoever holds them, and a broker that was fenced for a missed heartbeat still serves
/// InitProducerId while it catches up.
pub(super) fn allocate(
    image: &MetadataImage,
    req: &AllocateProducerIdsRequest,
) -> Result<Decision, ControlError> {
    image.registered_broker(req.broker_id, req.broker_epoch)?;
    let first = image.next_producer_id;
    // Refused, never wrapped: a wrapped id would be one some producer already had.
    let next = first
        .checked_add(i64::from(PRODUCER_ID_BLOCK_SIZE))
        .ok_or(ControlError::ProducerIdsExhausted)?;
    debug_assert!(first >= 0, "next_producer_id never goes below zero");
    let record = ProducerIdsRecord {
        broker_id: req.broker_id.0,
        broker_epoch: req.broker_epoch.0,
        next_producer_id: next,
    };
    Ok(Decision {
        records: vec![rec(Record::ProducerIds(record))],
        response: ControlResponse::AllocateProducerIds(ProducerIdBlock {
            first_producer_id: first,
            len: PRODUCER_ID_BLOCK_SIZE,
        }),
    })
}
