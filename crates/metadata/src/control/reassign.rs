//! Partition reassignment (KIP-455, Kafka's AlterPartitionReassignments): moving a partition
//! to a new replica set without losing what it holds.
//!
//! A reassignment is recorded on the partition, as KRaft records it: `replicas` becomes the
//! target replicas followed by the original ones being removed, `adding_replicas` the target
//! replicas that are new, `removing_replicas` the original ones not in the target. The leader
//! treats the new replicas as followers: they fetch, catch up and join the ISR through its
//! AlterPartition requests. Once every target replica is in the ISR, the change that made it so
//! also completes the move ([`finish`]): `replicas` becomes the target, the removed replicas
//! leave the ISR, and a removed leader hands over to the first target replica in the ISR.
//! Brokers no longer named in `replicas` delete their copy. Cancelling reverts to the original
//! replicas.

use std::collections::BTreeSet;

use super::{rec, ControlResponse, Decision};
use crate::records::metadata_record::Record;
use crate::records::{MetadataRecord, PartitionChangeRecord};
use crate::{ControlError, MetadataImage, NodeId, PartitionImage, TopicImage};

/// Partitions one AlterPartitionReassignments request may name: each may write one record,
/// and a user request commits as one bounded entry.
pub const REASSIGNMENTS_PER_REQUEST_MAX: usize = super::RECORDS_PER_USER_OP_MAX;

/// One partition to move: to `target`, or back to its original replicas (`None`: cancel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionReassignment {
    pub topic: String,
    pub partition: i32,
    pub target: Option<Vec<NodeId>>,
}

#[derive(Clone, Debug, Default)]
pub struct ReassignPartitionsRequest {
    pub partitions: Vec<PartitionReassignment>,
}

/// The outcome of one partition of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionResult {
    pub topic: String,
    pub partition: i32,
    pub result: Result<(), ControlError>,
}

/// A partition's leadership and replica sets as a decision leaves them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NextState {
    pub leader: Option<NodeId>,
    pub isr: Vec<NodeId>,
    pub replicas: Vec<NodeId>,
    pub adding: Vec<NodeId>,
    pub removing: Vec<NodeId>,
}

impl NextState {
    pub(super) fn of(p: &PartitionImage) -> NextState {
        NextState {
            leader: p.leader,
            isr: p.isr.clone(),
            replicas: p.replicas.clone(),
            adding: p.adding_replicas.clone(),
            removing: p.removing_replicas.clone(),
        }
    }
}

/// Completes a reassignment whose target replicas are all in the ISR: `replicas` becomes the
/// target, the removed replicas leave the ISR, and if the leader was removed the first target
/// replica in the ISR that is live leads (none: no leader until one comes back). Anything else
/// is returned as it is.
pub(super) fn finish(image: &MetadataImage, mut next: NextState) -> NextState {
    if next.adding.is_empty() && next.removing.is_empty() {
        return next;
    }
    let target: Vec<NodeId> =
        next.replicas.iter().copied().filter(|r| !next.removing.contains(r)).collect();
    if target.is_empty() || !target.iter().all(|r| next.isr.contains(r)) {
        return next;
    }
    next.isr = target.clone();
    if !next.leader.is_some_and(|l| target.contains(&l)) {
        next.leader = target.iter().copied().find(|r| image.is_live(*r));
    }
    next.replicas = target;
    next.adding.clear();
    next.removing.clear();
    next
}

/// The record that takes partition `id` from `p` to `next`; `None` when nothing changes.
/// A new leader bumps the leader epoch; any change bumps the partition epoch.
pub(super) fn change_record(
    topic: &TopicImage,
    id: i32,
    p: &PartitionImage,
    next: &NextState,
) -> Option<MetadataRecord> {
    if *next == NextState::of(p) {
        return None;
    }
    let ids = |v: &[NodeId]| v.iter().map(|n| n.0).collect::<Vec<i32>>();
    Some(rec(Record::PartitionChange(PartitionChangeRecord {
        topic_id: topic.id.0.to_vec(),
        partition_id: id,
        leader: next.leader.map_or(-1, |n| n.0),
        isr: ids(&next.isr),
        replicas: ids(&next.replicas),
        leader_epoch: p.leader_epoch.0 + i32::from(next.leader != p.leader),
        partition_epoch: p.partition_epoch.0 + 1,
        adding_replicas: ids(&next.adding),
        removing_replicas: ids(&next.removing),
    })))
}

fn check_target(image: &MetadataImage, target: &[NodeId]) -> Result<(), ControlError> {
    let shown = || target.iter().map(|r| r.0).collect::<Vec<_>>();
    if target.is_empty() {
        return Err(ControlError::InvalidReplicaAssignment(
            "the target replica list is empty".into(),
        ));
    }
    if target.iter().collect::<BTreeSet<_>>().len() != target.len() {
        return Err(ControlError::InvalidReplicaAssignment(format!(
            "duplicate broker in {:?}",
            shown()
        )));
    }
    if let Some(unknown) = target.iter().find(|r| !image.brokers.contains_key(r)) {
        return Err(ControlError::InvalidReplicaAssignment(format!(
            "broker {} in {:?} is not registered",
            unknown.0,
            shown()
        )));
    }
    Ok(())
}

/// Where one partition goes: a new target (replacing any reassignment in progress, whose
/// original replicas stay the ones to return to) or back to the original replicas.
fn reassign_one(
    image: &MetadataImage,
    topic: &TopicImage,
    id: i32,
    p: &PartitionImage,
    target: Option<&[NodeId]>,
) -> Result<Option<MetadataRecord>, ControlError> {
    let original: Vec<NodeId> =
        p.replicas.iter().copied().filter(|r| !p.adding_replicas.contains(r)).collect();
    let (replicas, adding, removing) = match target {
        None if !p.is_reassigning() => {
            return Err(ControlError::NoReassignmentInProgress(format!("{}-{id}", topic.name)))
        }
        None => (original.clone(), Vec::new(), Vec::new()),
        Some(target) => {
            check_target(image, target)?;
            let mut replicas = target.to_vec();
            replicas.extend(original.iter().filter(|r| !target.contains(r)));
            let adding = target.iter().copied().filter(|r| !original.contains(r)).collect();
            let removing = original.iter().copied().filter(|r| !target.contains(r)).collect();
            (replicas, adding, removing)
        }
    };
    // The ISR keeps replica order, as every ISR change does.
    let mut isr: Vec<NodeId> = replicas.iter().copied().filter(|r| p.isr.contains(r)).collect();
    let mut leader = p.leader.filter(|l| replicas.contains(l));
    if leader.is_none() {
        leader = isr.iter().copied().find(|r| image.is_live(*r));
    }
    if isr.is_empty() {
        // Only replicas being added were in sync, and they are dropped: keep the last
        // member rule (the partition waits for a replica of its own to come back).
        isr = replicas.first().copied().into_iter().collect();
    }
    let next = finish(image, NextState { leader, isr, replicas, adding, removing });
    Ok(change_record(topic, id, p, &next))
}

pub(super) fn alter_reassignments(
    image: &MetadataImage,
    req: &ReassignPartitionsRequest,
) -> Result<Decision, ControlError> {
    if req.partitions.len() > REASSIGNMENTS_PER_REQUEST_MAX {
        return Err(ControlError::PolicyViolation(format!(
            "{} partitions in one reassignment request; at most {REASSIGNMENTS_PER_REQUEST_MAX}",
            req.partitions.len()
        )));
    }
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(req.partitions.len());
    let mut seen = BTreeSet::new();
    for r in &req.partitions {
        let result = if !seen.insert((r.topic.as_str(), r.partition)) {
            Err(ControlError::InvalidRequest(format!(
                "{}-{} is listed twice",
                r.topic, r.partition
            )))
        } else {
            match image.topic(&r.topic).and_then(|t| Some((t, t.partitions.get(&r.partition)?))) {
                None => Err(ControlError::UnknownTopicOrPartition(format!(
                    "{}-{}",
                    r.topic, r.partition
                ))),
                Some((t, p)) => reassign_one(image, t, r.partition, p, r.target.as_deref())
                    .map(|record| records.extend(record)),
            }
        };
        results.push(PartitionResult { topic: r.topic.clone(), partition: r.partition, result });
    }
    Ok(Decision { records, response: ControlResponse::AlterPartitionReassignments(results) })
}
