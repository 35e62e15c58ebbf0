//! Between the admin API's `pb` messages and the controller's requests and refusals: request
//! items checked and turned into `strom_metadata::control` requests, image entries and
//! results turned into `pb` answers, and every refusal into a gRPC status, in [`status_of`].

use strom_metadata::control::{
    AlterConfigOp, ControlResponse, CreateTopic, ElectionError, ItemResult,
};
use strom_metadata::quorum::{DirectoryId, QuorumDescription, ReplicaDescription, ReplicaKind};
use strom_metadata::{ControlError, MetadataImage, TopicImage};
use strom_proto::admin as pb;
use tonic::{Code, Status};

use crate::source::BrokerReadError;
use crate::ITEMS_PER_REQUEST_MAX;

/// Kafka's transaction states, by the names ListTransactions filters on and DescribeTransactions
/// answers with (Kafka's `TransactionState`).
pub const TXN_STATES: [&str; 8] = [
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

/// The gRPC status of a refused request. The message is what the CLI shows after
/// `strom: error:`, so it names the topic or the key.
pub fn status_of(e: &ControlError) -> Status {
    match e {
        ControlError::TopicAlreadyExists(_) => Status::already_exists(e.to_string()),
        ControlError::UnknownTopicOrPartition(name) => {
            Status::not_found(format!("topic '{name}' does not exist"))
        }
        ControlError::UnknownTopicId(id) => {
            Status::not_found(format!("topic with id {id} does not exist"))
        }
        ControlError::InvalidTopic(_)
        | ControlError::InvalidPartitions(_)
        | ControlError::InvalidReplicationFactor(_)
        | ControlError::InvalidReplicaAssignment(_)
        | ControlError::InvalidConfig(_)
        | ControlError::InvalidRequest(_)
        | ControlError::PolicyViolation(_) => Status::invalid_argument(e.to_string()),
        ControlError::NotController => Status::unavailable(
            "no active controller: this node is not the active controller and cannot reach it; \
             retry shortly",
        ),
        ControlError::ControllerUnavailable(_) => Status::unavailable(e.to_string()),
        // gRPC's word for "may have completed": asking again is not known to be safe.
        ControlError::OutcomeUnknown(_) => Status::deadline_exceeded(e.to_string()),
        ControlError::DuplicateVoter(_) => Status::already_exists(e.to_string()),
        ControlError::VoterNotFound(_) => Status::not_found(e.to_string()),
        // Another change runs, or the new voter is still catching up: later may succeed.
        ControlError::VoterChangeTimedOut(_) => Status::unavailable(e.to_string()),
        // Broker-lifecycle refusals and any later variant: the request met a state it cannot
        // apply to.
        _ => Status::failed_precondition(e.to_string()),
    }
}

/// The quorum as the admin API reports it.
pub fn quorum_to_pb(d: &QuorumDescription) -> pb::DescribeQuorumResponse {
    let leader_end = i64::try_from(d.log_end_offset).unwrap_or(i64::MAX);
    let replica = |r: &ReplicaDescription| pb::QuorumReplica {
        node_id: r.node_id,
        directory_id: r.directory_id.map(|d| d.to_string()).unwrap_or_default(),
        address: r.control_addr.clone(),
        kind: match r.kind {
            ReplicaKind::Controller => "controller".into(),
            ReplicaKind::Broker => "broker".into(),
        },
        log_end_offset: (r.log_end_offset >= 0).then_some(r.log_end_offset),
        lag: r.lag(leader_end),
        last_fetch_timestamp_ms: (r.last_fetch_ms >= 0).then_some(r.last_fetch_ms),
        last_caught_up_timestamp_ms: (r.last_caught_up_ms >= 0).then_some(r.last_caught_up_ms),
    };
    pb::DescribeQuorumResponse {
        leader_id: d.leader_id,
        term: d.term,
        high_watermark: d.high_watermark,
        log_end_offset: d.log_end_offset,
        voters: d.voters.iter().map(replica).collect(),
        observers: d.observers.iter().map(replica).collect(),
        joint: d.joint,
    }
}

/// A directory id the caller gave (Kafka's Uuid text); INVALID_ARGUMENT otherwise.
pub fn directory_id_from_pb(text: Option<&str>) -> Result<Option<DirectoryId>, Status> {
    text.filter(|t| !t.is_empty())
        .map(|t| t.parse::<DirectoryId>().map_err(|e| Status::invalid_argument(e.to_string())))
        .transpose()
}

/// The gRPC status of a read the brokers could not answer: NOT_FOUND for what they said does
/// not exist, else UNAVAILABLE, with the reason.
pub fn read_status(e: &BrokerReadError) -> Status {
    match e {
        BrokerReadError::NotFound(_) => Status::not_found(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

/// [`read_status`] as one item's error.
pub(crate) fn read_item_error(e: &BrokerReadError) -> pb::ItemError {
    let status = read_status(e);
    pb::ItemError { code: status.code() as i32, message: status.message().to_string() }
}

/// ListTransactions' filters, checked: state names are Kafka's ([`TXN_STATES`], in any case,
/// answered in Kafka's), producer ids are not negative, and neither list is over the bound.
pub(crate) fn txn_filters(
    filters: pb::ListTransactionsRequest,
) -> Result<pb::ListTransactionsRequest, Status> {
    for (what, count) in
        [("states", filters.states.len()), ("producer ids", filters.producer_ids.len())]
    {
        if count > ITEMS_PER_REQUEST_MAX {
            return Err(Status::invalid_argument(format!(
                "{count} {what} given; at most {ITEMS_PER_REQUEST_MAX} per request"
            )));
        }
    }
    let states = filters
        .states
        .iter()
        .map(|given| {
            TXN_STATES
                .iter()
                .find(|s| s.eq_ignore_ascii_case(given))
                .map(|s| s.to_string())
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "unknown transaction state '{given}': expected one of {}",
                        TXN_STATES.join(", ")
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(negative) = filters.producer_ids.iter().find(|&&id| id < 0) {
        return Err(Status::invalid_argument(format!(
            "producer id {negative} is negative: producer ids are 0 or more"
        )));
    }
    Ok(pb::ListTransactionsRequest { states, producer_ids: filters.producer_ids })
}

/// The partition DescribeProducers asks about, checked against the image: the topic exists
/// and has that partition.
pub(crate) fn check_partition(
    image: &MetadataImage,
    topic: &str,
    partition: i32,
) -> Result<(), Status> {
    let Some(t) = image.topic(topic) else {
        return Err(status_of(&ControlError::UnknownTopicOrPartition(topic.to_owned())));
    };
    if !t.partitions.contains_key(&partition) {
        return Err(Status::not_found(format!(
            "topic '{topic}' has no partition {partition}: its partitions are 0 to {}",
            t.partitions.len() as i64 - 1
        )));
    }
    Ok(())
}

pub(crate) fn item_error(e: &ControlError) -> pb::ItemError {
    let status = status_of(e);
    pb::ItemError { code: status.code() as i32, message: status.message().to_string() }
}

/// Nothing was committed when every item failed, so the call fails with the first failure.
pub(crate) fn fail_if_all_failed<'a>(
    errors: impl IntoIterator<Item = Option<&'a ControlError>>,
) -> Result<(), Status> {
    let mut errors = errors.into_iter();
    match errors.next() {
        Some(Some(first)) if errors.all(|e| e.is_some()) => Err(status_of(first)),
        _ => Ok(()),
    }
}

/// Each item's answer, made by `answer` from the item's name and its value or its error; the
/// call fails as a whole when every item failed ([`fail_if_all_failed`]).
pub(crate) fn item_answers<T, A>(
    results: Vec<ItemResult<T>>,
    mut answer: impl FnMut(String, Result<T, pb::ItemError>) -> A,
) -> Result<Vec<A>, Status> {
    fail_if_all_failed(results.iter().map(|r| r.result.as_ref().err()))?;
    Ok(results.into_iter().map(|r| answer(r.name, r.result.map_err(|e| item_error(&e)))).collect())
}

pub(crate) fn check_count(what: &str, count: usize) -> Result<(), Status> {
    if count == 0 {
        return Err(Status::invalid_argument(format!("no {what} given")));
    }
    if count > ITEMS_PER_REQUEST_MAX {
        return Err(Status::invalid_argument(format!(
            "{count} {what} given; at most {ITEMS_PER_REQUEST_MAX} per request"
        )));
    }
    Ok(())
}

pub(crate) fn unexpected(response: &ControlResponse) -> Status {
    Status::internal(format!("the controller answered with an unexpected response: {response:?}"))
}

pub(crate) fn replication_factor(topic: &TopicImage) -> i32 {
    topic.partitions.values().next().map_or(0, |p| p.replicas.len() as i32)
}

pub(crate) fn new_topic(t: pb::NewTopic) -> Result<CreateTopic, Status> {
    let num_partitions = match t.partitions {
        None => -1,
        Some(n) if n >= 1 => n,
        Some(n) => {
            return Err(Status::invalid_argument(format!(
                "topic '{}': partitions must be at least 1, got {n}",
                t.name
            )))
        }
    };
    let replication_factor = match t.replication_factor {
        None => -1,
        Some(n) => match i16::try_from(n) {
            Ok(rf) if rf >= 1 => rf,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "topic '{}': replication_factor must be between 1 and {}, got {n}",
                    t.name,
                    i16::MAX
                )))
            }
        },
    };
    if t.configs.len() > ITEMS_PER_REQUEST_MAX {
        return Err(Status::invalid_argument(format!(
            "topic '{}': more than {ITEMS_PER_REQUEST_MAX} configs",
            t.name
        )));
    }
    let mut configs: Vec<(String, Option<String>)> =
        t.configs.into_iter().map(|(k, v)| (k, Some(v))).collect();
    // A map arrives in no particular order; decide on a stable one.
    configs.sort();
    Ok(CreateTopic {
        name: t.name,
        num_partitions,
        replication_factor,
        assignments: Vec::new(),
        configs,
    })
}

pub(crate) fn config_op(
    topic: &str,
    op: pb::ConfigOp,
) -> Result<(String, AlterConfigOp, Option<String>), Status> {
    if op.key.is_empty() {
        return Err(Status::invalid_argument(format!("topic '{topic}': a config op has no key")));
    }
    match pb::ConfigOpType::try_from(op.op) {
        Ok(pb::ConfigOpType::Set) => match op.value {
            Some(value) => Ok((op.key, AlterConfigOp::Set, Some(value))),
            None => {
                Err(Status::invalid_argument(format!("config '{}': SET needs a value", op.key)))
            }
        },
        Ok(pb::ConfigOpType::Delete) => Ok((op.key, AlterConfigOp::Delete, None)),
        Ok(pb::ConfigOpType::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "config '{}': op must be SET or DELETE, got {}",
            op.key, op.op
        ))),
    }
}

pub(crate) fn election_error(why: ElectionError) -> pb::ItemError {
    let code = match why {
        ElectionError::UnknownTopicOrPartition => Code::NotFound,
        ElectionError::ElectionNotNeeded => Code::AlreadyExists,
        ElectionError::PreferredLeaderNotAvailable | ElectionError::EligibleLeadersNotAvailable => {
            Code::FailedPrecondition
        }
    };
    pb::ItemError { code: code as i32, message: why.to_string() }
}

pub(crate) fn describe_topic(image: &MetadataImage, topic: &TopicImage) -> pb::TopicDescription {
    let offline = |id: &strom_metadata::NodeId| image.brokers.get(id).is_none_or(|b| b.fenced);
    pb::TopicDescription {
        name: topic.name.clone(),
        topic_id: topic.id.to_string(),
        internal: strom_metadata::config::is_internal_topic(&topic.name),
        partitions: topic
            .partitions
            .iter()
            .map(|(&partition, p)| pb::PartitionDescription {
                partition,
                leader: p.leader.map(|l| l.0),
                leader_epoch: p.leader_epoch.0,
                partition_epoch: p.partition_epoch.0,
                replicas: p.replicas.iter().map(|r| r.0).collect(),
                isr: p.isr.iter().map(|r| r.0).collect(),
                offline_replicas: p.replicas.iter().filter(|r| offline(r)).map(|r| r.0).collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_statuses_that_name_the_subject() {
        let s = status_of(&ControlError::UnknownTopicOrPartition("orders".into()));
        assert_eq!((s.code(), s.message()), (Code::NotFound, "topic 'orders' does not exist"));
        let s = status_of(&ControlError::TopicAlreadyExists("orders".into()));
        assert_eq!((s.code(), s.message()), (Code::AlreadyExists, "topic 'orders' already exists"));
        let s =
            status_of(&ControlError::InvalidConfig("retention.ms=\"x\": not an integer".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("retention.ms"), "{s:?}");
        assert_eq!(status_of(&ControlError::NotController).code(), Code::Unavailable);
        let s = status_of(&ControlError::ControllerUnavailable("shut down".into()));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(status_of(&ControlError::StaleBrokerEpoch(3)).code(), Code::FailedPrecondition);
        let s = status_of(&ControlError::OutcomeUnknown("connection reset".into()));
        assert_eq!(s.code(), Code::DeadlineExceeded);
        // KIP-853: what the CLI's exit codes need (1: retry later, 2: refused).
        let voter = |e: ControlError| status_of(&e).code();
        assert_eq!(voter(ControlError::DuplicateVoter("4".into())), Code::AlreadyExists);
        assert_eq!(voter(ControlError::VoterNotFound("4".into())), Code::NotFound);
        assert_eq!(voter(ControlError::VoterChangeTimedOut("4".into())), Code::Unavailable);
        assert_eq!(voter(ControlError::InvalidVoterKey("3".into())), Code::FailedPrecondition);
    }

    #[test]
    fn transaction_filters_take_kafkas_state_names_in_any_case() {
        let filters = |states: &[&str], producer_ids: Vec<i64>| pb::ListTransactionsRequest {
            states: states.iter().map(|s| s.to_string()).collect(),
            producer_ids,
        };
        let checked = txn_filters(filters(&["ongoing", "PrepareCommit"], vec![0, 7]));
        assert_eq!(
            checked.expect("known states"),
            filters(&["Ongoing", "PrepareCommit"], vec![0, 7]),
            "answered in Kafka's spelling"
        );
        let s = txn_filters(filters(&["Running"], vec![])).unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("'Running'") && s.message().contains("Ongoing"), "{s:?}");
        let s = txn_filters(filters(&[], vec![3, -1])).unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("producer id -1"), "{s:?}");
        let many = vec![1; ITEMS_PER_REQUEST_MAX + 1];
        assert_eq!(txn_filters(filters(&[], many)).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(txn_filters(filters(&[], vec![])).expect("no filter"), filters(&[], vec![]));
    }

    #[test]
    fn broker_reads_are_not_found_only_when_the_brokers_said_so() {
        let e = BrokerReadError::NotFound("transactional id 'tx' does not exist".into());
        let s = read_status(&e);
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "transactional id 'tx' does not exist")
        );
        let item = read_item_error(&e);
        assert_eq!(item.code, Code::NotFound as i32);
        for e in [
            BrokerReadError::NoBroker,
            BrokerReadError::BrokerStarting,
            BrokerReadError::Timeout { what: "the brokers" },
            BrokerReadError::Broker("connect to 127.0.0.1:1: refused".into()),
        ] {
            assert_eq!(read_status(&e).code(), Code::Unavailable, "{e}");
        }
        let s = read_status(&BrokerReadError::NoBroker);
        assert!(s.message().contains("--bootstrap-control"), "{s:?}");
    }

    #[test]
    fn producers_are_asked_only_of_a_partition_the_image_has() {
        use strom_metadata::records::{metadata_record::Record, MetadataRecord};
        use strom_metadata::records::{PartitionRecord, TopicRecord};
        let wrap = |r| MetadataRecord { record: Some(r) };
        let mut image = MetadataImage::default();
        let topic_id = vec![7; 16];
        let topic = TopicRecord { name: "orders".into(), topic_id: topic_id.clone() };
        image.apply(&wrap(Record::Topic(topic))).expect("a new topic applies");
        for partition_id in 0..2 {
            let partition = PartitionRecord {
                topic_id: topic_id.clone(),
                partition_id,
                replicas: vec![1],
                isr: vec![1],
                leader: 1,
                ..Default::default()
            };
            image.apply(&wrap(Record::Partition(partition))).expect("its partitions apply");
        }
        assert!(check_partition(&image, "orders", 1).is_ok());
        let s = check_partition(&image, "orders", 2).unwrap_err();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "topic 'orders' has no partition 2: its partitions are 0 to 1");
        let s = check_partition(&image, "payments", 0).unwrap_err();
        assert_eq!((s.code(), s.message()), (Code::NotFound, "topic 'payments' does not exist"));
    }

    #[test]
    fn a_call_fails_as_a_whole_only_when_every_item_failed() {
        let missing = ControlError::UnknownTopicOrPartition("a".into());
        let exists = ControlError::TopicAlreadyExists("b".into());
        let all_failed = fail_if_all_failed([Some(&missing), Some(&exists)]);
        assert_eq!(all_failed.map_err(|s| s.code()), Err(Code::NotFound), "the first failure");
        assert!(fail_if_all_failed([None, Some(&exists)]).is_ok());
        assert!(fail_if_all_failed(std::iter::empty()).is_ok());
    }

    #[test]
    fn each_item_is_answered_with_its_value_or_its_error() {
        let exists = ControlError::TopicAlreadyExists("b".into());
        let results = vec![
            ItemResult { name: "a".into(), result: Ok(1) },
            ItemResult { name: "b".into(), result: Err(exists) },
        ];
        let answers = item_answers(results, |name, r| (name, r.map_err(|e| e.code)));
        let expected =
            [("a".to_string(), Ok(1)), ("b".to_string(), Err(Code::AlreadyExists as i32))];
        assert_eq!(answers.expect("one item succeeded"), expected);
        let missing = ControlError::UnknownTopicOrPartition("c".into());
        let all_failed = vec![ItemResult::<()> { name: "c".into(), result: Err(missing) }];
        let answers = item_answers(all_failed, |name, _| name);
        assert_eq!(answers.map_err(|s| s.code()), Err(Code::NotFound));
    }
}
