//! InitProducerId. For producers without a transactional id (idempotent producers): a fresh
//! producer id at epoch 0 from this broker's blocks (`crate::producer_ids`), whatever id and
//! epoch a v3+ request carries, as Kafka's transaction coordinator answers a null
//! transactional id. A transactional id goes to its transaction coordinator's shard
//! (`super::txn_coordinator`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use strom_metadata::BrokerEpoch;

use super::txn_coordinator;
use crate::errors::KafkaError;
use crate::txn::ProducerIdAndEpoch;
use crate::BrokerCtx;

/// Kafka's "no producer id" and "no epoch" (`RecordBatch.NO_PRODUCER_ID` / `NO_PRODUCER_EPOCH`).
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;

pub(crate) async fn handle(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    match init(ctx, version, &req).await {
        Ok(p) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(p.producer_id))
            .with_producer_epoch(p.producer_epoch),
        Err(e) => InitProducerIdResponse::default()
            .with_error_code(e.into())
            .with_producer_id(ProducerId(NO_PRODUCER_ID))
            .with_producer_epoch(NO_PRODUCER_EPOCH),
    }
}

async fn init(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: &InitProducerIdRequest,
) -> Result<ProducerIdAndEpoch, KafkaError> {
    // v3+ (KIP-360): an existing producer id comes with its epoch, or neither is given.
    if (req.producer_id.0 == NO_PRODUCER_ID) != (req.producer_epoch == NO_PRODUCER_EPOCH) {
        return Err(KafkaError::InvalidRequest);
    }
    match &req.transactional_id {
        // A producer without a transactional id starts over with a new id (it cannot be
        // fenced, so there is no epoch to bump).
        None => {
            let epoch = BrokerEpoch(ctx.broker_epoch.load(Ordering::Relaxed));
            let producer_id = ctx.producer_ids.next_id(epoch).await?;
            Ok(ProducerIdAndEpoch { producer_id, producer_epoch: 0 })
        }
        // As the Java producer refuses it.
        Some(id) if id.is_empty() => Err(KafkaError::InvalidRequest),
        Some(id) => {
            let expected = (req.producer_id.0 != NO_PRODUCER_ID).then_some(ProducerIdAndEpoch {
                producer_id: req.producer_id.0,
                producer_epoch: req.producer_epoch,
            });
            let timeout_ms = req.transaction_timeout_ms;
            txn_coordinator::init_producer_id(ctx, version, id, timeout_ms, expected).await
        }
    }
}
