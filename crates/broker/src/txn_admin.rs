//! Transactions and producer state for the admin API and `strom txn`: asks the brokers over the
//! Kafka protocol, as Kafka's `kafka-transactions` tool does. ListTransactions goes to every
//! live broker (each lists the transactional ids it coordinates); a description comes from each
//! id's coordinator (found with one FindCoordinator of key type 1 for all the ids asked, then
//! one DescribeTransactions per coordinator); a partition's producers come from its leader
//! (DescribeProducers). The Kafka answers become the admin API's `pb` messages here, in pure
//! functions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::{
    describe_transactions_response, find_coordinator_response, ApiKey, DescribeProducersRequest,
    DescribeProducersResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, ListTransactionsRequest,
    ListTransactionsResponse, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::ResponseError;
use strom_metadata::{MetadataImage, NodeId};
use strom_proto::admin as pb;

use crate::peer::{
    ask_every_live_broker, broker_addr, leader_endpoint, LeaderUnreachable, PeerConn,
};
use crate::wire::{error_name, s};
use crate::BrokerCtx;

const CLIENT_ID: &str = "strom-admin";
/// The versions asked. ListTransactions v1 adds only a duration filter; FindCoordinator v4 looks
/// up many keys in one request.
const LIST_TRANSACTIONS_VERSION: i16 = 0;
const DESCRIBE_TRANSACTIONS_VERSION: i16 = 0;
const DESCRIBE_PRODUCERS_VERSION: i16 = 0;
const FIND_COORDINATOR_VERSION: i16 = 4;
/// FindCoordinator's key type for a transactional id.
const KEY_TYPE_TRANSACTION: i8 = 1;

/// Transactions and producer state as the admin API shows them (its `pb` messages), asked of
/// the brokers. The binary plugs it into the admin service.
pub struct BrokerTxnAdmin {
    pub(crate) ctx: Arc<BrokerCtx>,
}

/// Why a transaction or a partition's producers could not be described.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnAdminError {
    #[error("transactional id '{0}' does not exist")]
    TransactionalIdNotFound(String),
    #[error("topic '{topic}' has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("partition {partition} of topic '{topic}' has no leader to ask")]
    NoLeader { topic: String, partition: i32 },
    #[error("broker {0} has no endpoint this broker can reach")]
    EndpointMissing(i32),
    /// The connection or the exchange failed (the peer module's reason).
    #[error("{0}")]
    Peer(String),
    #[error("broker {broker} answered {api} without {what}")]
    Incomplete { api: &'static str, broker: i32, what: String },
    #[error("{api} to broker {broker}: {}", error_name(*.code))]
    Refused { api: &'static str, broker: i32, code: i16 },
}

impl TxnAdminError {
    /// Whether the brokers answered that the subject does not exist, rather than that it could
    /// not be found out.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            TxnAdminError::TransactionalIdNotFound(_) | TxnAdminError::UnknownPartition { .. }
        )
    }
}

impl From<String> for TxnAdminError {
    fn from(reason: String) -> Self {
        TxnAdminError::Peer(reason)
    }
}

/// One answer per transactional id, in the order asked.
pub type TxnDescriptions = Vec<Result<pb::TransactionDescription, TxnAdminError>>;

/// Answers by transactional id, as they come in from the coordinators.
type Answers = BTreeMap<String, Result<pb::TransactionDescription, TxnAdminError>>;

impl BrokerTxnAdmin {
    /// Every transactional id of the cluster that passes `filters`: each live broker lists
    /// those it coordinates; the brokers that could not be asked are named in `unreachable`.
    pub async fn list_transactions(
        &self,
        filters: pb::ListTransactionsRequest,
    ) -> pb::ListTransactionsResponse {
        let ctx = &self.ctx;
        let image = ctx.image.current();
        let req = ListTransactionsRequest::default()
            .with_state_filters(filters.states.into_iter().map(s).collect())
            .with_producer_id_filters(filters.producer_ids.into_iter().map(ProducerId).collect());
        let key = ApiKey::ListTransactions;
        merge_listings(
            ask_every_live_broker(
                &ctx.config,
                &image,
                key,
                LIST_TRANSACTIONS_VERSION,
                &req,
                CLIENT_ID,
            )
            .await,
        )
    }

    /// Each id's transaction, from its coordinator, in the order asked. Fails as a whole only
    /// when the coordinators could not be looked up.
    pub async fn describe_transactions(
        &self,
        transactional_ids: Vec<String>,
    ) -> Result<TxnDescriptions, TxnAdminError> {
        let ctx = &self.ctx;
        let image = ctx.image.current();
        let me = ctx.config.node_id;
        let addr =
            broker_addr(&ctx.config, &image, me).ok_or(TxnAdminError::EndpointMissing(me.0))?;
        let req = FindCoordinatorRequest::default()
            .with_key_type(KEY_TYPE_TRANSACTION)
            .with_coordinator_keys(transactional_ids.iter().cloned().map(s).collect());
        let mut conn = PeerConn::connect(&addr).await?;
        let found: FindCoordinatorResponse =
            conn.call(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSION, &req, CLIENT_ID).await?;
        let (by_coordinator, mut answers) =
            coordinators_of(&transactional_ids, found.coordinators, me);
        let asks = by_coordinator.into_iter().map(|(coordinator, ids)| {
            let image = &image;
            async move { describe_at(ctx, image, coordinator, ids).await }
        });
        for described in futures::future::join_all(asks).await {
            answers.extend(described);
        }
        Ok(transactional_ids
            .iter()
            .map(|id| {
                answers.get(id).cloned().unwrap_or_else(|| {
                    Err(TxnAdminError::Incomplete {
                        api: "DescribeTransactions",
                        broker: me.0,
                        what: format!("transactional id '{id}'"),
                    })
                })
            })
            .collect())
    }

    /// The producers the leader of `topic`-`partition` holds state for, by producer id.
    pub async fn describe_producers(
        &self,
        topic: String,
        partition: i32,
    ) -> Result<pb::DescribeProducersResponse, TxnAdminError> {
        let ctx = &self.ctx;
        let image = ctx.image.current();
        let (leader, addr) = match leader_endpoint(&ctx.config, &image, &topic, partition) {
            Ok(found) => found,
            Err(LeaderUnreachable::UnknownPartition) => {
                return Err(TxnAdminError::UnknownPartition { topic, partition })
            }
            Err(LeaderUnreachable::NoLeader) => {
                return Err(TxnAdminError::NoLeader { topic, partition })
            }
            Err(LeaderUnreachable::EndpointMissing(leader)) => {
                return Err(TxnAdminError::EndpointMissing(leader.0))
            }
        };
        let req = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
            .with_name(TopicName(s(topic.clone())))
            .with_partition_indexes(vec![partition])]);
        let mut conn = PeerConn::connect(&addr).await?;
        let answer: DescribeProducersResponse = conn
            .call(ApiKey::DescribeProducers, DESCRIBE_PRODUCERS_VERSION, &req, CLIENT_ID)
            .await?;
        producers(answer, topic, partition, leader)
    }
}

/// The ids one coordinator describes, in one DescribeTransactions, and the answer per id.
async fn describe_at(
    ctx: &BrokerCtx,
    image: &MetadataImage,
    coordinator: NodeId,
    ids: Vec<String>,
) -> Answers {
    let answer = async {
        let addr = broker_addr(&ctx.config, image, coordinator)
            .ok_or(TxnAdminError::EndpointMissing(coordinator.0))?;
        let req = DescribeTransactionsRequest::default()
            .with_transactional_ids(ids.iter().cloned().map(|id| TransactionalId(s(id))).collect());
        let mut conn = PeerConn::connect(&addr).await?;
        let described: DescribeTransactionsResponse = conn
            .call(ApiKey::DescribeTransactions, DESCRIBE_TRANSACTIONS_VERSION, &req, CLIENT_ID)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok::<_, TxnAdminError>(described)
    };
    match answer.await {
        Ok(described) => descriptions(described, coordinator),
        Err(e) => ids.into_iter().map(|id| (id, Err(e.clone()))).collect(),
    }
}

/// ListTransactions answers of every broker asked, merged: listings by transactional id; a
/// broker that could not be asked, refused, or did not know a state filter (and so did not
/// apply it) is named in `unreachable` and its listings are left out.
fn merge_listings(
    answers: Vec<(NodeId, Result<ListTransactionsResponse, String>)>,
) -> pb::ListTransactionsResponse {
    let mut out = pb::ListTransactionsResponse::default();
    for (broker, answer) in answers {
        let listed = match answer {
            Err(e) => Err(e),
            Ok(r) if r.error_code != 0 => Err(error_name(r.error_code)),
            Ok(r) if !r.unknown_state_filters.is_empty() => {
                let unknown: Vec<String> =
                    r.unknown_state_filters.iter().map(ToString::to_string).collect();
                Err(format!("does not know the transaction state(s) {}", unknown.join(", ")))
            }
            Ok(r) => Ok(r.transaction_states),
        };
        match listed {
            Ok(states) => {
                out.transactions.extend(states.into_iter().map(|t| pb::TransactionListing {
                    transactional_id: t.transactional_id.0.to_string(),
                    producer_id: t.producer_id.0,
                    state: t.transaction_state.to_string(),
                    coordinator_id: broker.0,
                }))
            }
            Err(e) => out.unreachable.push(format!("broker {}: {e}", broker.0)),
        }
    }
    out.transactions.sort_by(|a, b| {
        (&a.transactional_id, a.coordinator_id).cmp(&(&b.transactional_id, b.coordinator_id))
    });
    out
}

/// The ids to ask each coordinator about, from a FindCoordinator answer (asked of broker
/// `asked`), and the answers of the ids that have no coordinator to ask.
fn coordinators_of(
    ids: &[String],
    coordinators: Vec<find_coordinator_response::Coordinator>,
    asked: NodeId,
) -> (BTreeMap<NodeId, Vec<String>>, Answers) {
    let found: BTreeMap<String, find_coordinator_response::Coordinator> =
        coordinators.into_iter().map(|c| (c.key.to_string(), c)).collect();
    let mut by_coordinator: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    let mut answers = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for id in ids {
        if !seen.insert(id) {
            continue; // asked twice: answered once, and both places get that answer
        }
        match found.get(id) {
            Some(c) if c.error_code == 0 => {
                by_coordinator.entry(NodeId(c.node_id.0)).or_default().push(id.clone());
            }
            Some(c) => {
                let refused = TxnAdminError::Refused {
                    api: "FindCoordinator",
                    broker: asked.0,
                    code: c.error_code,
                };
                answers.insert(id.clone(), Err(refused));
            }
            None => {
                let missing = TxnAdminError::Incomplete {
                    api: "FindCoordinator",
                    broker: asked.0,
                    what: format!("transactional id '{id}'"),
                };
                answers.insert(id.clone(), Err(missing));
            }
        }
    }
    (by_coordinator, answers)
}

/// A coordinator's DescribeTransactions answer, per transactional id.
fn descriptions(answer: DescribeTransactionsResponse, coordinator: NodeId) -> Answers {
    answer
        .transaction_states
        .into_iter()
        .map(|t| (t.transactional_id.0.to_string(), description(t, coordinator)))
        .collect()
}

fn description(
    t: describe_transactions_response::TransactionState,
    coordinator: NodeId,
) -> Result<pb::TransactionDescription, TxnAdminError> {
    let transactional_id = t.transactional_id.0.to_string();
    if t.error_code == ResponseError::TransactionalIdNotFound.code() {
        return Err(TxnAdminError::TransactionalIdNotFound(transactional_id));
    }
    if t.error_code != 0 {
        return Err(TxnAdminError::Refused {
            api: "DescribeTransactions",
            broker: coordinator.0,
            code: t.error_code,
        });
    }
    let mut partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for topic in t.topics {
        partitions.entry(topic.topic.0.to_string()).or_default().extend(topic.partitions);
    }
    Ok(pb::TransactionDescription {
        transactional_id,
        state: t.transaction_state.to_string(),
        producer_id: t.producer_id.0,
        producer_epoch: i32::from(t.producer_epoch),
        timeout_ms: t.transaction_timeout_ms,
        start_time_ms: t.transaction_start_time_ms,
        coordinator_id: coordinator.0,
        partitions: partitions
            .into_iter()
            .map(|(topic, mut partitions)| {
                partitions.sort_unstable();
                partitions.dedup();
                pb::TopicPartitions { topic, partitions }
            })
            .collect(),
        error: None,
    })
}

/// The leader's DescribeProducers answer for `topic`-`partition`, producers by id.
fn producers(
    answer: DescribeProducersResponse,
    topic: String,
    partition: i32,
    leader: NodeId,
) -> Result<pb::DescribeProducersResponse, TxnAdminError> {
    let answered = answer
        .topics
        .into_iter()
        .filter(|t| t.name.0.as_str() == topic)
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == partition);
    let Some(answered) = answered else {
        return Err(TxnAdminError::Incomplete {
            api: "DescribeProducers",
            broker: leader.0,
            what: format!("partition {partition} of topic '{topic}'"),
        });
    };
    if answered.error_code == ResponseError::UnknownTopicOrPartition.code() {
        return Err(TxnAdminError::UnknownPartition { topic, partition });
    }
    if answered.error_code != 0 {
        return Err(TxnAdminError::Refused {
            api: "DescribeProducers",
            broker: leader.0,
            code: answered.error_code,
        });
    }
    let mut producers: Vec<pb::ProducerState> = answered
        .active_producers
        .into_iter()
        .map(|p| pb::ProducerState {
            producer_id: p.producer_id.0,
            producer_epoch: p.producer_epoch,
            last_sequence: p.last_sequence,
            last_timestamp_ms: p.last_timestamp,
            coordinator_epoch: p.coordinator_epoch,
            current_txn_start_offset: p.current_txn_start_offset,
        })
        .collect();
    producers.sort_by_key(|p| p.producer_id);
    Ok(pb::DescribeProducersResponse { topic, partition, leader_id: leader.0, producers })
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::describe_producers_response::{
        PartitionResponse, ProducerState, TopicResponse,
    };
    use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
    use kafka_protocol::messages::{list_transactions_response, BrokerId};

    use super::*;

    const NOT_COORDINATOR: i16 = 16;
    const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;

    fn listing(
        id: &str,
        producer_id: i64,
        state: &str,
    ) -> list_transactions_response::TransactionState {
        list_transactions_response::TransactionState::default()
            .with_transactional_id(TransactionalId(s(id)))
            .with_producer_id(ProducerId(producer_id))
            .with_transaction_state(s(state))
    }

    #[test]
    fn listings_of_every_broker_merge_by_id_and_failures_are_named() {
        let one = ListTransactionsResponse::default().with_transaction_states(vec![
            listing("tx-b", 7, "Ongoing"),
            listing("tx-a", 3, "Empty"),
        ]);
        let two = ListTransactionsResponse::default().with_transaction_states(vec![listing(
            "tx-c",
            9,
            "CompleteCommit",
        )]);
        let loading =
            ListTransactionsResponse::default().with_error_code(COORDINATOR_LOAD_IN_PROGRESS);
        let unknown = ListTransactionsResponse::default()
            .with_unknown_state_filters(vec![s("Running")])
            .with_transaction_states(vec![listing("tx-d", 1, "Ongoing")]);
        let merged = merge_listings(vec![
            (NodeId(1), Ok(one)),
            (NodeId(2), Ok(two)),
            (NodeId(3), Ok(loading)),
            (NodeId(4), Err("127.0.0.1:9: connection refused".into())),
            (NodeId(5), Ok(unknown)),
        ]);
        let rows: Vec<(&str, i64, &str, i32)> = merged
            .transactions
            .iter()
            .map(|t| {
                (t.transactional_id.as_str(), t.producer_id, t.state.as_str(), t.coordinator_id)
            })
            .collect();
        assert_eq!(
            rows,
            [("tx-a", 3, "Empty", 1), ("tx-b", 7, "Ongoing", 1), ("tx-c", 9, "CompleteCommit", 2)]
        );
        assert_eq!(
            merged.unreachable,
            [
                "broker 3: CoordinatorLoadInProgress (14)",
                "broker 4: 127.0.0.1:9: connection refused",
                "broker 5: does not know the transaction state(s) Running",
            ]
        );
    }

    fn coordinator(
        key: &str,
        node: i32,
        error_code: i16,
    ) -> find_coordinator_response::Coordinator {
        find_coordinator_response::Coordinator::default()
            .with_key(s(key))
            .with_node_id(BrokerId(node))
            .with_error_code(error_code)
    }

    #[test]
    fn ids_are_grouped_by_coordinator_and_unlocated_ids_answered_with_the_reason() {
        let ids: Vec<String> =
            ["a", "b", "c", "a", "lost", "loading"].iter().map(|s| s.to_string()).collect();
        let found = vec![
            coordinator("a", 2, 0),
            coordinator("b", 1, 0),
            coordinator("c", 2, 0),
            coordinator("loading", -1, COORDINATOR_NOT_AVAILABLE),
        ];
        let (by_coordinator, answers) = coordinators_of(&ids, found, NodeId(1));
        assert_eq!(
            by_coordinator,
            BTreeMap::from([
                (NodeId(1), vec!["b".to_string()]),
                (NodeId(2), vec!["a".to_string(), "c".to_string()]),
            ]),
            "a repeated id is asked once"
        );
        let reasons: BTreeMap<&str, String> = answers
            .iter()
            .map(|(id, a)| (id.as_str(), a.as_ref().map(|_| ()).unwrap_err().to_string()))
            .collect();
        assert_eq!(
            reasons,
            BTreeMap::from([
                (
                    "loading",
                    "FindCoordinator to broker 1: CoordinatorNotAvailable (15)".to_string()
                ),
                (
                    "lost",
                    "broker 1 answered FindCoordinator without transactional id 'lost'".to_string()
                ),
            ])
        );
    }

    #[test]
    fn a_description_carries_its_partitions_by_topic_and_not_found_is_told_apart() {
        let ongoing = TransactionState::default()
            .with_transactional_id(TransactionalId(s("tx")))
            .with_transaction_state(s("Ongoing"))
            .with_transaction_timeout_ms(60_000)
            .with_transaction_start_time_ms(1_700_000_000_000)
            .with_producer_id(ProducerId(4000))
            .with_producer_epoch(2)
            .with_topics(vec![
                TopicData::default().with_topic(TopicName(s("t"))).with_partitions(vec![1, 0]),
                TopicData::default().with_topic(TopicName(s("a"))).with_partitions(vec![3]),
                TopicData::default().with_topic(TopicName(s("t"))).with_partitions(vec![1]),
            ]);
        let missing = TransactionState::default()
            .with_transactional_id(TransactionalId(s("gone")))
            .with_error_code(ResponseError::TransactionalIdNotFound.code());
        let moved = TransactionState::default()
            .with_transactional_id(TransactionalId(s("moved")))
            .with_error_code(NOT_COORDINATOR);
        let answer = DescribeTransactionsResponse::default()
            .with_transaction_states(vec![ongoing, missing, moved]);
        let mut described = descriptions(answer, NodeId(3));
        let tx = described.remove("tx").expect("tx answered").expect("tx described");
        assert_eq!(
            tx,
            pb::TransactionDescription {
                transactional_id: "tx".into(),
                state: "Ongoing".into(),
                producer_id: 4000,
                producer_epoch: 2,
                timeout_ms: 60_000,
                start_time_ms: 1_700_000_000_000,
                coordinator_id: 3,
                partitions: vec![
                    pb::TopicPartitions { topic: "a".into(), partitions: vec![3] },
                    pb::TopicPartitions { topic: "t".into(), partitions: vec![0, 1] },
                ],
                error: None,
            }
        );
        let gone = described.remove("gone").expect("gone answered").unwrap_err();
        assert!(gone.is_not_found(), "{gone}");
        assert_eq!(gone.to_string(), "transactional id 'gone' does not exist");
        let moved = described.remove("moved").expect("moved answered").unwrap_err();
        assert!(!moved.is_not_found());
        assert_eq!(moved.to_string(), "DescribeTransactions to broker 3: NotCoordinator (16)");
    }

    fn producers_answer(partition: PartitionResponse) -> DescribeProducersResponse {
        DescribeProducersResponse::default().with_topics(vec![TopicResponse::default()
            .with_name(TopicName(s("orders")))
            .with_partitions(vec![partition])])
    }

    #[test]
    fn a_partitions_producers_come_by_id_and_refusals_name_the_leader() {
        let producer = |id: i64, txn_start: i64| {
            ProducerState::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(1)
                .with_last_sequence(41)
                .with_last_timestamp(1_700_000_000_123)
                .with_coordinator_epoch(-1)
                .with_current_txn_start_offset(txn_start)
        };
        let answer = producers_answer(
            PartitionResponse::default()
                .with_partition_index(2)
                .with_active_producers(vec![producer(9, 120), producer(4, -1)]),
        );
        let described = producers(answer, "orders".into(), 2, NodeId(1)).expect("described");
        assert_eq!(
            (described.topic.as_str(), described.partition, described.leader_id),
            ("orders", 2, 1)
        );
        let ids: Vec<(i64, i64)> = described
            .producers
            .iter()
            .map(|p| (p.producer_id, p.current_txn_start_offset))
            .collect();
        assert_eq!(ids, [(4, -1), (9, 120)]);
        assert_eq!(described.producers[0].last_sequence, 41);
        assert_eq!(described.producers[0].last_timestamp_ms, 1_700_000_000_123);

        let moved = producers_answer(
            PartitionResponse::default()
                .with_partition_index(2)
                .with_error_code(NOT_LEADER_OR_FOLLOWER),
        );
        let e = producers(moved, "orders".into(), 2, NodeId(1)).unwrap_err();
        assert_eq!(e.to_string(), "DescribeProducers to broker 1: NotLeaderOrFollower (6)");
        let unknown = producers_answer(
            PartitionResponse::default()
                .with_partition_index(2)
                .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
        );
        let e = producers(unknown, "orders".into(), 2, NodeId(1)).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let other = producers_answer(PartitionResponse::default().with_partition_index(0));
        let e = producers(other, "orders".into(), 2, NodeId(1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "broker 1 answered DescribeProducers without partition 2 of topic 'orders'"
        );
    }
}
