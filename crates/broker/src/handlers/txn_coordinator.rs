//! The transaction coordinator's APIs: InitProducerId for a transactional id, AddPartitionsToTxn
//! v0-3 (the client versions), AddOffsetsToTxn v0-3, EndTxn v0-3, DescribeTransactions and
//! ListTransactions. A request is queued to its id's shard (`crate::txn`) in its connection's
//! order, and answered once the shard has decided (after its record is replicated). Clients
//! older than KIP-588 get INVALID_PRODUCER_EPOCH where newer ones get PRODUCER_FENCED.

use std::collections::BTreeSet;
use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    describe_transactions_response, list_transactions_response, AddOffsetsToTxnRequest,
    AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse,
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TopicName, TransactionalId,
};
use tokio::sync::oneshot;

use super::{s, Meta, Reply};
use crate::errors::{code_of, KafkaError};
use crate::group::{self, OFFSETS_TOPIC};
use crate::txn::{
    Answer, InitProducerId, ProducerIdAndEpoch, TopicPartition, TxnCmd, TxnProducer, TxnState,
    TxnSummary,
};
use crate::BrokerCtx;

/// The first version of each API that knows PRODUCER_FENCED (KIP-588).
const INIT_PRODUCER_ID_FENCED_SINCE: i16 = 4;
const TXN_APIS_FENCED_SINCE: i16 = 2;

/// Queues the command `cmd` makes to the shard of `transactional_id`; the receiver gets the
/// shard's answer.
async fn ask(
    ctx: &BrokerCtx,
    transactional_id: &str,
    cmd: impl FnOnce(oneshot::Sender<Answer>) -> TxnCmd,
) -> Result<oneshot::Receiver<Answer>, KafkaError> {
    let shard = ctx.txn.route(ctx, transactional_id)?;
    let (reply, answer) = oneshot::channel();
    shard.send(cmd(reply)).await.map_err(|_| KafkaError::NotCoordinator)?;
    Ok(answer)
}

/// The shard's answer as the client's version names it. A shard that stopped before
/// answering has lost its partition: NOT_COORDINATOR.
async fn answer(
    asked: Result<oneshot::Receiver<Answer>, KafkaError>,
    knows_fenced: bool,
) -> Result<ProducerIdAndEpoch, KafkaError> {
    match asked?.await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) if knows_fenced => Err(e.into()),
        Ok(Err(e)) => Err(e.for_legacy_client().into()),
        Err(_) => Err(KafkaError::NotCoordinator),
    }
}

fn producer(id: &TransactionalId, producer_id: ProducerId, producer_epoch: i16) -> TxnProducer {
    TxnProducer { transactional_id: id.to_string(), producer_id: producer_id.0, producer_epoch }
}

/// InitProducerId of a transactional producer (a non-empty id): its producer id and epoch,
/// or the refusal. `expected` is the v3+ pair a recovering producer sends (KIP-360).
pub(crate) async fn init_producer_id(
    ctx: &BrokerCtx,
    version: i16,
    transactional_id: &str,
    transaction_timeout_ms: i32,
    expected: Option<ProducerIdAndEpoch>,
) -> Result<ProducerIdAndEpoch, KafkaError> {
    let req = InitProducerId {
        transactional_id: transactional_id.to_owned(),
        transaction_timeout_ms,
        expected,
    };
    let asked = ask(ctx, transactional_id, |r| TxnCmd::InitProducerId(req, r)).await;
    answer(asked, version >= INIT_PRODUCER_ID_FENCED_SINCE).await
}

pub(crate) async fn add_partitions(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: AddPartitionsToTxnRequest,
) -> Reply {
    if meta.version >= 4 {
        // From a partition leader: KIP-890 verification.
        let ctx = ctx.clone();
        return Reply::Later(Box::pin(async move {
            meta.encode(&crate::txn::answer_add_partitions_v4(&ctx, req).await)
        }));
    }
    let image = ctx.image.current();
    let topics: Vec<(TopicName, BTreeSet<i32>)> = req
        .v3_and_below_topics
        .iter()
        .map(|t| (t.name.clone(), t.partitions.iter().copied().collect()))
        .collect();
    // Kafka's answer: an error per partition; any unknown partition fails the request, the
    // others are then OPERATION_NOT_ATTEMPTED.
    let build = move |error_of: &dyn Fn(&str, i32) -> Option<KafkaError>| {
        let results = topics
            .iter()
            .map(|(name, partitions)| {
                let results = partitions
                    .iter()
                    .map(|&p| {
                        AddPartitionsToTxnPartitionResult::default()
                            .with_partition_index(p)
                            .with_partition_error_code(code_of(error_of(name.as_str(), p)))
                    })
                    .collect();
                AddPartitionsToTxnTopicResult::default()
                    .with_name(name.clone())
                    .with_results_by_partition(results)
            })
            .collect();
        AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
    };
    let unknown = |topic: &str, p: i32| image.partition(topic, p).is_none();
    let wanted = req.v3_and_below_topics.iter().flat_map(|t| {
        t.partitions.iter().map(|&p| TopicPartition { topic: t.name.to_string(), partition: p })
    });
    let partitions: Vec<TopicPartition> = wanted.collect();
    if partitions.iter().any(|tp| unknown(&tp.topic, tp.partition)) {
        let error_of = |topic: &str, p: i32| {
            Some(if unknown(topic, p) {
                KafkaError::UnknownTopicOrPartition
            } else {
                KafkaError::OperationNotAttempted
            })
        };
        return Reply::Now(meta.encode(&build(&error_of)));
    }
    let id = &req.v3_and_below_transactional_id;
    let p = producer(id, req.v3_and_below_producer_id, req.v3_and_below_producer_epoch);
    let asked = ask(ctx, id, |r| TxnCmd::AddPartitions(p, partitions, r)).await;
    Reply::Later(Box::pin(async move {
        let error = answer(asked, meta.version >= TXN_APIS_FENCED_SINCE).await.err();
        meta.encode(&build(&|_, _| error))
    }))
}

/// AddOffsetsToTxn: the group's `__consumer_offsets` partition joins the transaction, so that
/// the offsets it commits with TxnOffsetCommit commit or abort with it.
pub(crate) async fn add_offsets(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: AddOffsetsToTxnRequest,
) -> Reply {
    // Kafka maps the group with the configured partition count; the topic's once it exists.
    let partitions = match ctx.image.current().topic(OFFSETS_TOPIC) {
        Some(t) => t.partitions.len() as i32,
        None => ctx.config.groups.offsets_topic_num_partitions,
    };
    let offsets_partition = TopicPartition {
        topic: OFFSETS_TOPIC.to_owned(),
        partition: group::partition_for(req.group_id.as_str(), partitions),
    };
    let id = &req.transactional_id;
    let p = producer(id, req.producer_id, req.producer_epoch);
    let asked = ask(ctx, id, |r| TxnCmd::AddOffsets(p, offsets_partition, r)).await;
    Reply::Later(Box::pin(async move {
        let error = answer(asked, meta.version >= TXN_APIS_FENCED_SINCE).await.err();
        meta.encode(&AddOffsetsToTxnResponse::default().with_error_code(code_of(error)))
    }))
}

pub(crate) async fn end_txn(ctx: &Arc<BrokerCtx>, meta: Meta, req: EndTxnRequest) -> Reply {
    let id = &req.transactional_id;
    let producer = producer(id, req.producer_id, req.producer_epoch);
    let commit = req.committed;
    let asked = ask(ctx, id, |reply| TxnCmd::EndTxn { producer, commit, reply }).await;
    Reply::Later(Box::pin(async move {
        let error = answer(asked, meta.version >= TXN_APIS_FENCED_SINCE).await.err();
        meta.encode(&EndTxnResponse::default().with_error_code(code_of(error)))
    }))
}

/// One id's description, or the reason there is none.
async fn describe_one(ctx: &BrokerCtx, id: &str) -> Result<TxnSummary, KafkaError> {
    if id.is_empty() {
        return Err(KafkaError::InvalidRequest);
    }
    let shard = ctx.txn.route(ctx, id)?;
    let (reply, summary) = oneshot::channel();
    shard
        .send(TxnCmd::Describe(id.to_owned(), reply))
        .await
        .map_err(|_| KafkaError::NotCoordinator)?;
    summary
        .await
        .map_err(|_| KafkaError::NotCoordinator)?
        .ok_or(KafkaError::TransactionalIdNotFound)
}

fn described(
    id: TransactionalId,
    summary: Result<TxnSummary, KafkaError>,
) -> describe_transactions_response::TransactionState {
    use describe_transactions_response::{TopicData, TransactionState};
    let state = TransactionState::default().with_transactional_id(id);
    let t = match summary {
        Ok(t) => t,
        Err(e) => return state.with_error_code(e.into()),
    };
    let mut topics: Vec<TopicData> = Vec::new();
    for tp in t.partitions {
        match topics.last_mut() {
            Some(d) if d.topic.as_str() == tp.topic => d.partitions.push(tp.partition),
            _ => topics.push(
                TopicData::default()
                    .with_topic(TopicName(s(tp.topic)))
                    .with_partitions(vec![tp.partition]),
            ),
        }
    }
    state
        .with_transaction_state(s(t.state.name()))
        .with_transaction_timeout_ms(t.timeout_ms)
        .with_transaction_start_time_ms(t.start_timestamp_ms)
        .with_producer_id(ProducerId(t.producer_id))
        .with_producer_epoch(t.producer_epoch)
        .with_topics(topics)
}

pub(crate) fn describe_transactions(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: DescribeTransactionsRequest,
) -> Reply {
    let ctx = ctx.clone();
    Reply::Later(Box::pin(async move {
        let mut states = Vec::with_capacity(req.transactional_ids.len());
        for id in req.transactional_ids {
            let summary = describe_one(&ctx, id.as_str()).await;
            states.push(described(id, summary));
        }
        meta.encode(&DescribeTransactionsResponse::default().with_transaction_states(states))
    }))
}

/// Whether ListTransactions includes `t` (Kafka's filters: producer ids, states, and for v1
/// transactions running longer than `duration_ms`; an empty filter takes all).
fn listed(
    t: &TxnSummary,
    producer_ids: &BTreeSet<i64>,
    states: &BTreeSet<TxnState>,
    duration_ms: i64,
    now_ms: i64,
) -> bool {
    t.state != TxnState::Dead
        && (producer_ids.is_empty() || producer_ids.contains(&t.producer_id))
        && (states.is_empty() || states.contains(&t.state))
        && (duration_ms < 0 || now_ms - t.start_timestamp_ms > duration_ms)
}

pub(crate) fn list_transactions(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: ListTransactionsRequest,
) -> Reply {
    let ctx = ctx.clone();
    Reply::Later(Box::pin(async move {
        let mut resp = ListTransactionsResponse::default();
        if ctx.txn.any_loading() {
            resp.error_code = KafkaError::CoordinatorLoadInProgress.into();
            return meta.encode(&resp);
        }
        let mut states = BTreeSet::new();
        for name in req.state_filters {
            match TxnState::ALL.into_iter().find(|s| s.name() == name.as_str()) {
                Some(state) => {
                    states.insert(state);
                }
                None => resp.unknown_state_filters.push(name),
            }
        }
        let producer_ids: BTreeSet<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
        let duration_ms = if meta.version >= 1 { req.duration_filter } else { -1 };
        let now = ctx.clock.now_ms();
        for shard in ctx.txn.shards() {
            let (reply, summaries) = oneshot::channel();
            if shard.send(TxnCmd::List(reply)).await.is_err() {
                continue; // stopped meanwhile: its ids are no longer coordinated here
            }
            for t in summaries.await.unwrap_or_default() {
                if listed(&t, &producer_ids, &states, duration_ms, now) {
                    resp.transaction_states.push(
                        list_transactions_response::TransactionState::default()
                            .with_transactional_id(TransactionalId(s(t.transactional_id)))
                            .with_producer_id(ProducerId(t.producer_id))
                            .with_transaction_state(s(t.state.name())),
                    );
                }
            }
        }
        meta.encode(&resp)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(state: TxnState, producer_id: i64, start_timestamp_ms: i64) -> TxnSummary {
        TxnSummary {
            transactional_id: "tx".into(),
            state,
            producer_id,
            producer_epoch: 0,
            timeout_ms: 60_000,
            start_timestamp_ms,
            partitions: Vec::new(),
        }
    }

    #[test]
    fn list_filters_follow_kafka() {
        let none = BTreeSet::new();
        let ongoing = summary(TxnState::Ongoing, 7, 1_000);
        assert!(listed(&ongoing, &none, &BTreeSet::new(), -1, 2_000), "no filter");
        assert!(!listed(&summary(TxnState::Dead, 7, 0), &none, &BTreeSet::new(), -1, 2_000));
        assert!(listed(&ongoing, &[7].into(), &BTreeSet::new(), -1, 2_000));
        assert!(!listed(&ongoing, &[8].into(), &BTreeSet::new(), -1, 2_000));
        assert!(listed(&ongoing, &none, &[TxnState::Ongoing].into(), -1, 2_000));
        assert!(!listed(&ongoing, &none, &[TxnState::Empty].into(), -1, 2_000));
        // v1: only transactions running longer than the duration.
        assert!(listed(&ongoing, &none, &BTreeSet::new(), 999, 2_000));
        assert!(!listed(&ongoing, &none, &BTreeSet::new(), 1_000, 2_000));
    }

    #[test]
    fn descriptions_group_partitions_by_topic_and_errors_carry_only_the_code() {
        let mut t = summary(TxnState::Ongoing, 7, 1_000);
        t.partitions = vec![
            TopicPartition { topic: "a".into(), partition: 0 },
            TopicPartition { topic: "a".into(), partition: 2 },
            TopicPartition { topic: "b".into(), partition: 1 },
        ];
        let d = described(TransactionalId(s("tx")), Ok(t));
        assert_eq!(d.error_code, 0);
        assert_eq!(d.transaction_state.as_str(), "Ongoing");
        assert_eq!((d.producer_id.0, d.transaction_start_time_ms), (7, 1_000));
        let topics: Vec<(String, Vec<i32>)> =
            d.topics.iter().map(|t| (t.topic.to_string(), t.partitions.clone())).collect();
        assert_eq!(topics, vec![("a".into(), vec![0, 2]), ("b".into(), vec![1])]);
        let missing = described(TransactionalId(s("tx")), Err(KafkaError::TransactionalIdNotFound));
        assert_eq!(missing.error_code, i16::from(KafkaError::TransactionalIdNotFound));
        assert!(missing.topics.is_empty());
    }
}
