//! The Kafka admin APIs that move partition leadership and replicas: ElectLeaders (preferred
//! and unclean elections), AlterPartitionReassignments and ListPartitionReassignments
//! (KIP-455). Elections and reassignments are the controller's decisions, forwarded to it as
//! the gRPC admin forwards them; the reassignments in progress are read from this broker's
//! metadata image, where the controller records them on each partition.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::*;
use strom_metadata::control::{
    ControlRequest, ControlResponse, PartitionReassignment, ReassignPartitionsRequest,
};
use strom_metadata::{ControlError, NodeId, PartitionImage};

use super::s;
use crate::errors::KafkaError;
use crate::BrokerCtx;

/// Kafka's election types (`ElectionType`): v0 requests are preferred elections.
const ELECTION_PREFERRED: i8 = 0;
const ELECTION_UNCLEAN: i8 = 1;

/// Per-partition outcomes grouped by topic, topics in first-seen order.
fn by_topic<T>(items: impl IntoIterator<Item = (String, T)>) -> Vec<(String, Vec<T>)> {
    let mut out: Vec<(String, Vec<T>)> = Vec::new();
    for (topic, item) in items {
        match out.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, v)) => v.push(item),
            None => out.push((topic, vec![item])),
        }
    }
    out
}

fn error_parts(error: Option<KafkaError>, message: Option<String>) -> (i16, Option<String>) {
    match error {
        None => (0, None),
        Some(e) => (e.into(), message),
    }
}

pub(crate) async fn elect_leaders(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let election_type = if version == 0 { ELECTION_PREFERRED } else { req.election_type };
    let topics: Option<Vec<(String, Vec<i32>)>> = req
        .topic_partitions
        .map(|topics| topics.into_iter().map(|t| (t.topic.0.to_string(), t.partitions)).collect());
    let asked: Vec<(String, i32)> = topics
        .iter()
        .flatten()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
        .collect();
    let refuse_all = |error: KafkaError, message: String| {
        let results = by_topic(asked.iter().map(|(t, p)| {
            let result = PartitionResult::default()
                .with_partition_id(*p)
                .with_error_code(error.into())
                .with_error_message(Some(s(message.clone())));
            (t.clone(), result)
        }));
        (Some(error), results)
    };
    let (top_error, results) =
        if election_type != ELECTION_PREFERRED && election_type != ELECTION_UNCLEAN {
            refuse_all(KafkaError::InvalidRequest, format!("unknown election type {election_type}"))
        } else {
            let preferred = election_type == ELECTION_PREFERRED;
            match ctx.controller.submit(ControlRequest::ElectLeaders { topics, preferred }).await {
                Ok(ControlResponse::ElectLeaders(elections)) => {
                    let results = by_topic(elections.into_iter().map(|e| {
                        let error = e.result.err();
                        let (code, message) =
                            error_parts(error.map(KafkaError::from), error.map(|e| e.to_string()));
                        let result = PartitionResult::default()
                            .with_partition_id(e.partition)
                            .with_error_code(code)
                            .with_error_message(message.map(s));
                        (e.topic, result)
                    }));
                    (None, results)
                }
                Ok(_) => refuse_all(KafkaError::UnknownServerError, "unexpected answer".into()),
                Err(e) => refuse_all(KafkaError::from(&e), e.to_string()),
            }
        };
    let replica_election_results = results
        .into_iter()
        .map(|(topic, partition_result)| {
            ReplicaElectionResult::default()
                .with_topic(TopicName(s(topic)))
                .with_partition_result(partition_result)
        })
        .collect();
    let mut response =
        ElectLeadersResponse::default().with_replica_election_results(replica_election_results);
    // v1+ carries a top-level code, set when the request as a whole failed.
    if let Some(error) = top_error.filter(|_| version >= 1) {
        response.error_code = error.into();
    }
    response
}

pub(crate) async fn alter_partition_reassignments(
    ctx: &Arc<BrokerCtx>,
    req: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let partitions: Vec<PartitionReassignment> = req
        .topics
        .into_iter()
        .flat_map(|t| {
            let topic = t.name.0.to_string();
            t.partitions.into_iter().map(move |p| PartitionReassignment {
                topic: topic.clone(),
                partition: p.partition_index,
                target: p.replicas.map(|ids| ids.into_iter().map(|b| NodeId(b.0)).collect()),
            })
        })
        .collect();
    let asked: Vec<(String, i32)> =
        partitions.iter().map(|p| (p.topic.clone(), p.partition)).collect();
    let request =
        ControlRequest::AlterPartitionReassignments(ReassignPartitionsRequest { partitions });
    let outcomes: Vec<(String, i32, Result<(), ControlError>)> =
        match ctx.controller.submit(request).await {
            Ok(ControlResponse::AlterPartitionReassignments(results)) => {
                results.into_iter().map(|r| (r.topic, r.partition, r.result)).collect()
            }
            Ok(_) => {
                let e = ControlError::ControllerUnavailable("unexpected controller answer".into());
                asked.into_iter().map(|(t, p)| (t, p, Err(e.clone()))).collect()
            }
            Err(e) => asked.into_iter().map(|(t, p)| (t, p, Err(e.clone()))).collect(),
        };
    let responses = by_topic(outcomes.into_iter().map(|(topic, partition, result)| {
        let error = result.err();
        let (code, message) =
            error_parts(error.as_ref().map(KafkaError::from), error.map(|e| e.to_string()));
        let response = ReassignablePartitionResponse::default()
            .with_partition_index(partition)
            .with_error_code(code)
            .with_error_message(message.map(s));
        (topic, response)
    }))
    .into_iter()
    .map(|(topic, partitions)| {
        ReassignableTopicResponse::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(partitions)
    })
    .collect();
    AlterPartitionReassignmentsResponse::default().with_responses(responses)
}

fn ongoing(index: i32, p: &PartitionImage) -> OngoingPartitionReassignment {
    let ids = |v: &[NodeId]| v.iter().map(|n| BrokerId(n.0)).collect::<Vec<_>>();
    OngoingPartitionReassignment::default()
        .with_partition_index(index)
        .with_replicas(ids(&p.replicas))
        .with_adding_replicas(ids(&p.adding_replicas))
        .with_removing_replicas(ids(&p.removing_replicas))
}

/// The reassignments in progress, from this broker's image (null topics: every partition).
/// Partitions that do not exist or are not being moved are left out, as Kafka leaves them.
pub(crate) fn list_partition_reassignments(
    ctx: &Arc<BrokerCtx>,
    req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let image = ctx.image.current();
    let mut found: BTreeMap<String, Vec<OngoingPartitionReassignment>> = BTreeMap::new();
    match req.topics {
        None => {
            for t in image.topics.values() {
                for (&index, p) in t.partitions.iter().filter(|(_, p)| p.is_reassigning()) {
                    found.entry(t.name.clone()).or_default().push(ongoing(index, p));
                }
            }
        }
        Some(topics) => {
            for t in topics {
                let name = t.name.0.to_string();
                for index in t.partition_indexes {
                    if let Some(p) = image.partition(&name, index).filter(|p| p.is_reassigning()) {
                        found.entry(name.clone()).or_default().push(ongoing(index, p));
                    }
                }
            }
        }
    }
    let topics = found
        .into_iter()
        .map(|(name, partitions)| {
            OngoingTopicReassignment::default()
                .with_name(TopicName(s(name)))
                .with_partitions(partitions)
        })
        .collect();
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
