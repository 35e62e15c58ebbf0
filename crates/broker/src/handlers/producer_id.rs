//! InitProducerId for producers without a transactional id (idempotent producers): a fresh
//! producer id at epoch 0 from this broker's blocks (`crate::producer_ids`), whatever id and
//! epoch a v3+ request carries, as Kafka's transaction coordinator answers a null
//! transactional id. Transactions are not served yet: a transactional id is answered
//! COORDINATOR_NOT_AVAILABLE, as FindCoordinator answers its key.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use strom_metadata::BrokerEpoch;

use crate::errors::KafkaError;
use crate::BrokerCtx;

/// Kafka's "no producer id" and "no epoch" (`RecordBatch.NO_PRODUCER_ID` / `NO_PRODUCER_EPOCH`).
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;

pub(crate) async fn handle(
    ctx: &Arc<BrokerCtx>,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    match init(ctx, &req).await {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => InitProducerIdResponse::default()
            .with_error_code(e.into())
            .with_producer_id(ProducerId(NO_PRODUCER_ID))
            .with_producer_epoch(NO_PRODUCER_EPOCH),
    }
}

async fn init(ctx: &Arc<BrokerCtx>, req: &InitProducerIdRequest) -> Result<i64, KafkaError> {
    // v3+ (KIP-360): an existing producer id comes with its epoch, or neither is given.
    if (req.producer_id.0 == NO_PRODUCER_ID) != (req.producer_epoch == NO_PRODUCER_EPOCH) {
        return Err(KafkaError::InvalidRequest);
    }
    match &req.transactional_id {
        // A producer without a transactional id starts over with a new id (it cannot be
        // fenced, so there is no epoch to bump).
        None => {
            let epoch = BrokerEpoch(ctx.broker_epoch.load(Ordering::Relaxed));
            Ok(ctx.producer_ids.next_id(epoch).await?)
        }
        // As the Java producer refuses it.
        Some(id) if id.is_empty() => Err(KafkaError::InvalidRequest),
        Some(id) => {
            tracing::info!(
                transactional_id = %id.as_str(),
                "InitProducerId for a transactional producer: transactions are not served by \
                 this broker yet, answered COORDINATOR_NOT_AVAILABLE"
            );
            Err(KafkaError::CoordinatorNotAvailable)
        }
    }
}
