//! KIP-890 part 1, both sides. A partition leader that gets a producer's first transactional
//! batch of a transaction asks the transaction coordinator whether the partition is in that
//! producer's ongoing transaction ([`verify`]) and refuses the batch otherwise, so that a
//! produce delayed past its transaction's end (or from a client that never added the
//! partition) cannot open a transaction no marker will ever close: the hanging transaction
//! that would hold the last stable offset back for good. The coordinator answers
//! AddPartitionsToTxn v4 with `verify_only` ([`answer_v4`]) from its shard, changing nothing.

use std::time::Duration;

use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, ProducerId, TopicName,
    TransactionalId,
};
use tokio::sync::oneshot;

use super::{TopicPartition, TxnCmd, TxnCoordinator, TxnProducer, TXN_TOPIC};
use crate::errors::{code_of, KafkaError};
use crate::peer::{broker_addr, PeerConn};
use crate::wire::s;
use crate::BrokerCtx;

/// The broker-to-broker version (v4 added `verify_only` and batching).
const VERIFY_VERSION: i16 = 4;
const CLIENT_ID: &str = "strom-txn-verify";
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// The coordinator shard's answer for one transaction.
async fn ask_shard(
    ctx: &BrokerCtx,
    producer: TxnProducer,
    partitions: Vec<TopicPartition>,
) -> Result<(), KafkaError> {
    let shard = ctx.txn.route(ctx, &producer.transactional_id)?;
    let (reply, answer) = oneshot::channel();
    shard
        .send(TxnCmd::Verify(producer, partitions, reply))
        .await
        .map_err(|_| KafkaError::NotCoordinator)?;
    match answer.await {
        Ok(result) => result.map_err(KafkaError::from),
        Err(_) => Err(KafkaError::NotCoordinator),
    }
}

/// Produce's errors for a failed verification, as Kafka's leaders map them: a coordinator that
/// is busy, loading or elsewhere is retriable (NOT_ENOUGH_REPLICAS, which every client
/// retries); anything else (INVALID_TXN_STATE, PRODUCER_FENCED, …) goes to the producer.
fn for_produce(e: KafkaError) -> KafkaError {
    match e {
        KafkaError::ConcurrentTransactions
        | KafkaError::CoordinatorLoadInProgress
        | KafkaError::CoordinatorNotAvailable
        | KafkaError::NotCoordinator
        | KafkaError::RequestTimedOut => KafkaError::NotEnoughReplicas,
        other => other,
    }
}

/// Whether `partitions` are in `producer`'s ongoing transaction, asked of its coordinator
/// (this broker's shard, or the coordinator broker with AddPartitionsToTxn v4). The error is
/// what the produce answers for those partitions.
pub(crate) async fn verify(
    ctx: &BrokerCtx,
    producer: TxnProducer,
    partitions: Vec<TopicPartition>,
) -> Result<(), KafkaError> {
    if producer.transactional_id.is_empty() {
        // A transactional batch must name its transactional id (Produce v3+).
        return Err(KafkaError::InvalidTxnState);
    }
    let image = ctx.image.current();
    let partition = TxnCoordinator::partition_of(ctx, &producer.transactional_id)
        .ok_or(KafkaError::NotEnoughReplicas)?;
    let leader = image
        .partition(TXN_TOPIC, partition)
        .and_then(|p| p.leader)
        .ok_or(KafkaError::NotEnoughReplicas)?;
    if leader == ctx.image.node {
        return ask_shard(ctx, producer, partitions).await.map_err(for_produce);
    }
    let addr = broker_addr(&ctx.config, &image, leader).ok_or(KafkaError::NotEnoughReplicas)?;
    let mut topics: Vec<AddPartitionsToTxnTopic> = Vec::new();
    for tp in &partitions {
        match topics.iter_mut().find(|t| t.name.as_str() == tp.topic) {
            Some(t) => t.partitions.push(tp.partition),
            None => topics.push(
                AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(s(tp.topic.clone())))
                    .with_partitions(vec![tp.partition]),
            ),
        }
    }
    let request = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(s(producer.transactional_id.clone())))
            .with_producer_id(ProducerId(producer.producer_id))
            .with_producer_epoch(producer.producer_epoch)
            .with_verify_only(true)
            .with_topics(topics),
    ]);
    let called = async {
        let mut conn = PeerConn::connect(&addr).await?;
        conn.call_within::<_, AddPartitionsToTxnResponse>(
            ApiKey::AddPartitionsToTxn,
            VERIFY_VERSION,
            &request,
            CLIENT_ID,
            VERIFY_TIMEOUT,
        )
        .await
    };
    let response = called.await.map_err(|e| {
        tracing::debug!(coordinator = leader.0, error = %e, "transaction verification failed");
        KafkaError::NotEnoughReplicas
    })?;
    if response.error_code != 0 {
        return Err(KafkaError::NotEnoughReplicas);
    }
    let codes = response
        .results_by_transaction
        .iter()
        .flat_map(|t| t.topic_results.iter())
        .flat_map(|t| t.results_by_partition.iter())
        .map(|p| p.partition_error_code);
    match codes.filter(|c| *c != 0).map(KafkaError::from_verification_code).next() {
        None if response.results_by_transaction.is_empty() => Err(KafkaError::NotEnoughReplicas),
        None => Ok(()),
        Some(e) => Err(for_produce(e)),
    }
}

/// AddPartitionsToTxn v4+ (from brokers): each transaction verified (`verify_only`) or added,
/// one result per partition.
pub(crate) async fn answer_v4(
    ctx: &BrokerCtx,
    req: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let mut results = Vec::with_capacity(req.transactions.len());
    for t in req.transactions {
        let producer = TxnProducer {
            transactional_id: t.transactional_id.to_string(),
            producer_id: t.producer_id.0,
            producer_epoch: t.producer_epoch,
        };
        let partitions: Vec<TopicPartition> = t
            .topics
            .iter()
            .flat_map(|tp| {
                let topic = tp.name.to_string();
                tp.partitions
                    .iter()
                    .map(move |&p| TopicPartition { topic: topic.clone(), partition: p })
            })
            .collect();
        let outcome = if t.verify_only {
            ask_shard(ctx, producer, partitions).await
        } else {
            // Adding for a client is the client versions' job; brokers only verify.
            Err(KafkaError::InvalidRequest)
        };
        let error = outcome.err();
        let topic_results = t
            .topics
            .into_iter()
            .map(|tp| {
                let results = tp
                    .partitions
                    .iter()
                    .map(|&p| {
                        AddPartitionsToTxnPartitionResult::default()
                            .with_partition_index(p)
                            .with_partition_error_code(code_of(error))
                    })
                    .collect();
                AddPartitionsToTxnTopicResult::default()
                    .with_name(tp.name)
                    .with_results_by_partition(results)
            })
            .collect();
        results.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id)
                .with_topic_results(topic_results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
}
