//! Topic decisions: create, delete, add partitions; replica placement (rack-aware when the
//! brokers have racks).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{rec, ControlResponse, DecideCtx, Decision, ItemResult};
use crate::config::{is_internal_topic, validate_topic_config, CLUSTER_METADATA_TOPIC};
use crate::records::metadata_record::Record;
use crate::records::{
    ConfigRecord, ConfigResourceType, MetadataRecord, PartitionRecord, RemoveTopicRecord,
    TopicRecord,
};
use crate::{ControlError, MetadataImage, NodeId, TopicId};

/// Kafka's longest legal topic name.
pub const TOPIC_NAME_LEN_MAX: usize = 249;
/// Partitions one topic may have. One request writes at most `RECORDS_PER_USER_OP_MAX` records
/// (about 10,000 partitions), so a larger topic is created, then grown with CreatePartitions.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 100_000;

#[derive(Clone, Debug, Default)]
pub struct CreateTopic {
    pub name: String,
    /// -1: the cluster default.
    pub num_partitions: i32,
    /// -1: the cluster default.
    pub replication_factor: i16,
    /// Explicit replicas per partition id (then both counts above must be -1).
    pub assignments: Vec<(i32, Vec<NodeId>)>,
    pub configs: Vec<(String, Option<String>)>,
}

#[derive(Clone, Debug, Default)]
pub struct CreateTopicsRequest {
    pub topics: Vec<CreateTopic>,
    pub validate_only: bool,
    /// Sent by a broker for one of its own topics (`config::INTERNAL_TOPICS`); clients' requests
    /// may not name those.
    pub internal: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedTopic {
    pub topic_id: TopicId,
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteTopicsRequest {
    pub names: Vec<String>,
    pub ids: Vec<TopicId>,
}

#[derive(Clone, Debug, Default)]
pub struct NewPartitions {
    pub topic: String,
    pub count: i32,
    /// Replicas for each new partition, in order; empty: placed by the controller.
    pub assignments: Vec<Vec<NodeId>>,
}

#[derive(Clone, Debug, Default)]
pub struct CreatePartitionsRequest {
    pub topics: Vec<NewPartitions>,
    pub validate_only: bool,
}

/// Kafka's topic name rule: 1 to 249 of `[a-zA-Z0-9._-]`, and not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), ControlError> {
    let bad = |why: &str| ControlError::InvalidTopic(format!("'{name}' {why}"));
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name == "." || name == ".." {
        return Err(bad("is not allowed"));
    }
    if name.len() > TOPIC_NAME_LEN_MAX {
        return Err(bad("is longer than 249 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return Err(bad("may contain only ASCII letters, digits, '.', '_' and '-'"));
    }
    if collision_key(name) == CLUSTER_METADATA_TOPIC {
        return Err(bad("is reserved: the metadata quorum keeps its log under that name"));
    }
    Ok(())
}

/// The refusal of a client's change to one of the brokers' own topics.
pub(crate) fn internal_topic_refused(name: &str, what: &str) -> ControlError {
    ControlError::InvalidRequest(format!(
        "'{name}' is an internal topic: the brokers manage it, it cannot be {what}"
    ))
}

/// Metric names fold '.' into '_', so Kafka refuses two topics that differ only there.
fn collision_key(name: &str) -> String {
    name.replace('.', "_")
}

/// Round-robin replica placement over live brokers in id order, starting at `start`: partition
/// p's replicas are the `rf` brokers from position `start + p`. Spreads leaders evenly.
pub fn placement(
    live: &[NodeId],
    first_partition: i32,
    count: i32,
    rf: usize,
    start: usize,
) -> Vec<Vec<NodeId>> {
    let n = live.len();
    (first_partition..first_partition + count)
        .map(|p| (0..rf).map(|j| live[(start + p as usize + j) % n]).collect())
        .collect()
}

/// Placement over brokers with racks: partition p's first replica is the broker at position
/// `start + p` of a list that takes one broker from each rack in turn (racks by name, brokers by
/// id), and each further replica is the next broker in that list on a rack the partition does
/// not use yet; only when every rack holds one of its replicas may a rack hold a second. So
/// replicas spread over racks first, and leaders spread over racks and brokers.
/// `live` is (broker, rack) in id order; brokers without a rack count as one rack.
pub fn rack_aware_placement(
    live: &[(NodeId, Option<String>)],
    first_partition: i32,
    count: i32,
    rf: usize,
    start: usize,
) -> Vec<Vec<NodeId>> {
    let mut by_rack: BTreeMap<Option<&str>, Vec<NodeId>> = BTreeMap::new();
    for (id, rack) in live {
        by_rack.entry(rack.as_deref()).or_default().push(*id);
    }
    let rack_count = by_rack.len();
    let mut ordered: Vec<(NodeId, Option<&str>)> = Vec::with_capacity(live.len());
    for i in 0..by_rack.values().map(Vec::len).max().unwrap_or(0) {
        for (rack, ids) in &by_rack {
            if let Some(&id) = ids.get(i) {
                ordered.push((id, *rack));
            }
        }
    }
    let n = ordered.len();
    assert!(rf <= n, "placement of {rf} replicas over {n} brokers");
    (first_partition..first_partition + count)
        .map(|p| {
            let mut replicas: Vec<NodeId> = Vec::with_capacity(rf);
            let mut racks_used: BTreeSet<Option<&str>> = BTreeSet::new();
            let mut cursor = start + p as usize;
            while replicas.len() < rf {
                if racks_used.len() == rack_count {
                    racks_used.clear();
                }
                let candidates = (0..n).map(|k| (cursor + k) % n);
                let mut pick = candidates.clone().find(|&i| {
                    !replicas.contains(&ordered[i].0) && !racks_used.contains(&ordered[i].1)
                });
                if pick.is_none() {
                    // The racks left unused have no broker left: any other broker will do.
                    racks_used.clear();
                    pick = candidates.clone().find(|&i| !replicas.contains(&ordered[i].0));
                }
                let Some(i) = pick else { break };
                replicas.push(ordered[i].0);
                racks_used.insert(ordered[i].1);
                cursor = i + 1;
            }
            replicas
        })
        .collect()
}

fn partition_record(
    image: &MetadataImage,
    topic_id: TopicId,
    partition_id: i32,
    replicas: &[NodeId],
) -> MetadataRecord {
    let isr: Vec<i32> = replicas.iter().filter(|r| image.is_live(**r)).map(|r| r.0).collect();
    let leader = isr.first().copied().unwrap_or(-1);
    rec(Record::Partition(PartitionRecord {
        topic_id: topic_id.0.to_vec(),
        partition_id,
        replicas: replicas.iter().map(|r| r.0).collect(),
        isr,
        leader,
        leader_epoch: 0,
        partition_epoch: 0,
        adding_replicas: Vec::new(),
        removing_replicas: Vec::new(),
    }))
}

fn check_assignment(
    image: &MetadataImage,
    replicas: &[NodeId],
    rf: Option<usize>,
) -> Result<(), ControlError> {
    if replicas.is_empty() {
        return Err(ControlError::InvalidReplicaAssignment("a partition has no replicas".into()));
    }
    let distinct: BTreeSet<_> = replicas.iter().collect();
    if distinct.len() != replicas.len() {
        return Err(ControlError::InvalidReplicaAssignment(format!(
            "duplicate broker in {:?}",
            replicas.iter().map(|r| r.0).collect::<Vec<_>>()
        )));
    }
    if let Some(unknown) = replicas.iter().find(|r| !image.brokers.contains_key(r)) {
        return Err(ControlError::InvalidReplicaAssignment(format!(
            "broker {} is not registered",
            unknown.0
        )));
    }
    if rf.is_some_and(|rf| rf != replicas.len()) {
        return Err(ControlError::InvalidReplicaAssignment(
            "all partitions must have the same number of replicas".into(),
        ));
    }
    Ok(())
}

fn live_ids(image: &MetadataImage) -> Vec<NodeId> {
    image.live_brokers().map(|b| b.id).collect()
}

fn place(
    image: &MetadataImage,
    first_partition: i32,
    count: i32,
    rf: usize,
    ctx: &mut DecideCtx<'_>,
) -> Result<Vec<Vec<NodeId>>, ControlError> {
    let live = live_ids(image);
    if rf > live.len() || rf == 0 {
        return Err(ControlError::InvalidReplicationFactor(format!(
            "replication factor {rf} is larger than the {} available brokers",
            live.len()
        )));
    }
    let start = ((ctx.random)() % live.len() as u64) as usize;
    if image.live_brokers().any(|b| b.rack.is_some()) {
        let racks: Vec<(NodeId, Option<String>)> =
            image.live_brokers().map(|b| (b.id, b.rack.clone())).collect();
        return Ok(rack_aware_placement(&racks, first_partition, count, rf, start));
    }
    Ok(placement(&live, first_partition, count, rf, start))
}

fn create_one(
    image: &MetadataImage,
    t: &CreateTopic,
    internal: bool,
    taken: &HashSet<String>,
    ctx: &mut DecideCtx<'_>,
) -> Result<(Vec<MetadataRecord>, CreatedTopic), ControlError> {
    validate_topic_name(&t.name)?;
    if is_internal_topic(&t.name) && !internal {
        return Err(internal_topic_refused(&t.name, "created by clients"));
    }
    if image.topics.contains_key(&t.name) || taken.contains(&t.name) {
        return Err(ControlError::TopicAlreadyExists(t.name.clone()));
    }
    let key = collision_key(&t.name);
    if let Some(other) = image.topics.keys().find(|n| collision_key(n) == key) {
        return Err(ControlError::InvalidTopic(format!(
            "'{}' collides with existing topic '{other}' ('.' and '_' are treated alike)",
            t.name
        )));
    }
    let mut configs = Vec::new();
    for (k, v) in &t.configs {
        if let Some(v) = v {
            validate_topic_config(k, v)?;
            configs.push((k.clone(), v.clone()));
        }
    }
    let assignment: Vec<Vec<NodeId>> = if !t.assignments.is_empty() {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err(ControlError::InvalidRequest(
                "give either replica assignments or partition count and replication factor, \
                 not both"
                    .into(),
            ));
        }
        let by_id: BTreeMap<i32, &Vec<NodeId>> =
            t.assignments.iter().map(|(p, r)| (*p, r)).collect();
        if by_id.len() != t.assignments.len()
            || by_id.keys().copied().ne(0..t.assignments.len() as i32)
        {
            return Err(ControlError::InvalidReplicaAssignment(
                "partition ids must be 0..n, each once".into(),
            ));
        }
        let rf = by_id.values().next().map(|r| r.len());
        for replicas in by_id.values() {
            check_assignment(image, replicas, rf)?;
        }
        by_id.into_values().cloned().collect()
    } else {
        let partitions =
            if t.num_partitions == -1 { ctx.defaults.num_partitions } else { t.num_partitions };
        if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
            return Err(ControlError::InvalidPartitions(format!(
                "number of partitions must be between 1 and {PARTITIONS_PER_TOPIC_MAX}, got {partitions}"
            )));
        }
        let rf = if t.replication_factor == -1 {
            ctx.defaults.default_replication_factor
        } else {
            t.replication_factor
        };
        if rf < 1 {
            return Err(ControlError::InvalidReplicationFactor(format!(
                "replication factor must be at least 1, got {rf}"
            )));
        }
        place(image, 0, partitions, rf as usize, ctx)?
    };
    let topic_id = loop {
        let id = TopicId::from_u64_pair((ctx.random)(), (ctx.random)());
        if id != TopicId::ZERO && !image.topic_names.contains_key(&id) {
            break id;
        }
    };
    let mut records = vec![rec(Record::Topic(TopicRecord {
        name: t.name.clone(),
        topic_id: topic_id.0.to_vec(),
    }))];
    for (p, replicas) in assignment.iter().enumerate() {
        records.push(partition_record(image, topic_id, p as i32, replicas));
    }
    for (k, v) in &configs {
        records.push(rec(Record::Config(ConfigRecord {
            resource_type: ConfigResourceType::ConfigResourceTopic as i32,
            resource_name: t.name.clone(),
            name: k.clone(),
            value: Some(v.clone()),
        })));
    }
    let created = CreatedTopic {
        topic_id,
        num_partitions: assignment.len() as i32,
        replication_factor: assignment.first().map_or(0, |r| r.len() as i16),
        configs,
    };
    Ok((records, created))
}

pub(super) fn create_topics(
    image: &MetadataImage,
    req: &CreateTopicsRequest,
    ctx: &mut DecideCtx<'_>,
) -> Decision {
    let mut records = Vec::new();
    let mut results = Vec::new();
    let mut taken = HashSet::new();
    for t in &req.topics {
        let result = create_one(image, t, req.internal, &taken, ctx).map(|(mut recs, created)| {
            taken.insert(t.name.clone());
            if !req.validate_only {
                records.append(&mut recs);
            }
            created
        });
        results.push(ItemResult { name: t.name.clone(), result });
    }
    Decision { records, response: ControlResponse::CreateTopics(results) }
}

pub(super) fn delete_topics(image: &MetadataImage, req: &DeleteTopicsRequest) -> Decision {
    let mut records = Vec::new();
    let mut results = Vec::new();
    let mut seen = HashSet::new();
    let by_name = req.names.iter().map(|n| (n.clone(), image.topic(n).map(|t| t.id)));
    let by_id = req
        .ids
        .iter()
        .map(|id| (image.topic_by_id(*id).map_or_else(String::new, |t| t.name.clone()), Some(*id)));
    for (name, id) in by_name.chain(by_id) {
        let result = match id.filter(|id| image.topic_names.contains_key(id)) {
            None if name.is_empty() => Err(ControlError::UnknownTopicId(id.unwrap_or_default())),
            None => Err(ControlError::UnknownTopicOrPartition(name.clone())),
            Some(_) if is_internal_topic(&name) => Err(internal_topic_refused(&name, "deleted")),
            Some(id) => {
                if seen.insert(id) {
                    records.push(rec(Record::RemoveTopic(RemoveTopicRecord {
                        topic_id: id.0.to_vec(),
                    })));
                }
                Ok(id)
            }
        };
        results.push(ItemResult { name, result });
    }
    Decision { records, response: ControlResponse::DeleteTopics(results) }
}

pub(super) fn create_partitions(
    image: &MetadataImage,
    req: &CreatePartitionsRequest,
    ctx: &mut DecideCtx<'_>,
) -> Decision {
    let mut records = Vec::new();
    let mut results = Vec::new();
    for np in &req.topics {
        let result = (|| {
            let topic = image
                .topic(&np.topic)
                .ok_or_else(|| ControlError::UnknownTopicOrPartition(np.topic.clone()))?;
            if is_internal_topic(&np.topic) {
                // Group and transaction coordinators are placed by hashing over the partition
                // count: more partitions would move every coordinator.
                return Err(internal_topic_refused(&np.topic, "repartitioned"));
            }
            let current = topic.partitions.len() as i32;
            if np.count <= current {
                return Err(ControlError::InvalidPartitions(format!(
                    "topic currently has {current} partitions, which is not fewer than the \
                     requested {}",
                    np.count
                )));
            }
            if np.count > PARTITIONS_PER_TOPIC_MAX {
                return Err(ControlError::InvalidPartitions(format!(
                    "at most {PARTITIONS_PER_TOPIC_MAX} partitions per topic"
                )));
            }
            let rf = topic.partitions.values().next().map_or(1, |p| p.replicas.len());
            let added = np.count - current;
            let assignment = if np.assignments.is_empty() {
                place(image, current, added, rf, ctx)?
            } else {
                if np.assignments.len() != added as usize {
                    return Err(ControlError::InvalidReplicaAssignment(format!(
                        "{} assignments given for {added} new partitions",
                        np.assignments.len()
                    )));
                }
                for replicas in &np.assignments {
                    check_assignment(image, replicas, Some(rf))?;
                }
                np.assignments.clone()
            };
            if !req.validate_only {
                for (i, replicas) in assignment.iter().enumerate() {
                    records.push(partition_record(image, topic.id, current + i as i32, replicas));
                }
            }
            Ok(())
        })();
        results.push(ItemResult { name: np.topic.clone(), result });
    }
    Decision { records, response: ControlResponse::CreatePartitions(results) }
}
