//! ISR decisions: a partition leader asks to shrink or expand the in-sync replica sets of the
//! partitions it leads (Kafka's AlterPartition, one request for many partitions), carrying the
//! epochs it saw so that stale changes are refused, each on its own.

use super::reassign::{self, NextState};
use super::{ControlResponse, Decision};
use crate::{BrokerEpoch, ControlError, MetadataImage, NodeId};

/// The partitions one AlterPartition request may change. A leader with more pending changes
/// sends the rest in its next request; the records of one request still commit as several
/// bounded entries ([`super::split_into_entries`]).
pub const ISR_CHANGES_PER_REQUEST_MAX: usize = 10_000;

#[derive(Clone, Debug)]
pub struct AlterPartitionRequest {
    pub broker_id: NodeId,
    pub broker_epoch: BrokerEpoch,
    pub changes: Vec<IsrChange>,
}

/// One partition's requested ISR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrChange {
    pub topic: String,
    pub partition: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<NodeId>,
}

/// The ISR a partition has after the request, with its partition epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrChanged {
    pub partition_epoch: i32,
    pub isr: Vec<NodeId>,
}

/// The outcome of each change of the request, in request order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionReply {
    pub partitions: Vec<IsrChangeResult>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrChangeResult {
    pub topic: String,
    pub partition: i32,
    pub result: Result<IsrChanged, ControlError>,
}

/// A request from a broker that is not the registered one fails whole; every other refusal is
/// the partition's own, and the others still change.
pub(super) fn alter_partition(
    image: &MetadataImage,
    req: &AlterPartitionRequest,
) -> Result<Decision, ControlError> {
    let broker = image.registered_broker(req.broker_id, req.broker_epoch)?;
    if req.changes.len() > ISR_CHANGES_PER_REQUEST_MAX {
        return Err(ControlError::InvalidRequest(format!(
            "{} ISR changes in one request; at most {ISR_CHANGES_PER_REQUEST_MAX}",
            req.changes.len()
        )));
    }
    let mut records = Vec::new();
    let mut partitions = Vec::with_capacity(req.changes.len());
    let mut seen = std::collections::HashSet::with_capacity(req.changes.len());
    for change in &req.changes {
        // Two changes of one partition would both be decided against the same epochs.
        let result = if seen.insert((change.topic.as_str(), change.partition)) {
            decide_change(image, broker.id, change).map(|(record, changed)| {
                records.extend(record);
                changed
            })
        } else {
            Err(ControlError::InvalidRequest(format!(
                "{}-{} is listed twice",
                change.topic, change.partition
            )))
        };
        partitions.push(IsrChangeResult {
            topic: change.topic.clone(),
            partition: change.partition,
            result,
        });
    }
    Ok(Decision {
        records,
        response: ControlResponse::AlterPartition(AlterPartitionReply { partitions }),
    })
}

fn decide_change(
    image: &MetadataImage,
    leader: NodeId,
    req: &IsrChange,
) -> Result<(Option<crate::records::MetadataRecord>, IsrChanged), ControlError> {
    let topic = image
        .topic(&req.topic)
        .ok_or_else(|| ControlError::UnknownTopicOrPartition(req.topic.clone()))?;
    let p = topic.partitions.get(&req.partition).ok_or_else(|| {
        ControlError::UnknownTopicOrPartition(format!("{}-{}", req.topic, req.partition))
    })?;
    if p.leader != Some(leader) || p.leader_epoch.0 != req.leader_epoch {
        return Err(ControlError::FencedLeaderEpoch(format!(
            "{}-{}: leader is {:?} at epoch {}, request from {} at epoch {}",
            req.topic,
            req.partition,
            p.leader.map(|n| n.0),
            p.leader_epoch.0,
            leader.0,
            req.leader_epoch
        )));
    }
    if p.partition_epoch.0 != req.partition_epoch {
        return Err(ControlError::InvalidUpdateVersion(format!(
            "{}-{}: partition epoch is {}, request saw {}",
            req.topic, req.partition, p.partition_epoch.0, req.partition_epoch
        )));
    }
    if !req.new_isr.contains(&leader) {
        return Err(ControlError::InvalidRequest("the leader must stay in the ISR".into()));
    }
    if let Some(bad) = req.new_isr.iter().find(|r| !p.replicas.contains(r)) {
        return Err(ControlError::IneligibleReplica(format!("{} is not a replica", bad.0)));
    }
    // A joining replica must be alive: a fenced broker cannot be in sync.
    if let Some(bad) = req.new_isr.iter().find(|r| !p.isr.contains(r) && !image.is_live(**r)) {
        return Err(ControlError::IneligibleReplica(format!(
            "{} is fenced or shutting down",
            bad.0
        )));
    }
    // Keep replica order, so "first ISR member in replica order" stays well defined.
    let isr: Vec<NodeId> = p.replicas.iter().copied().filter(|r| req.new_isr.contains(r)).collect();
    // The change that brings the last target replica of a reassignment into the ISR also
    // completes the reassignment.
    let next = reassign::finish(image, NextState { isr, ..NextState::of(p) });
    match reassign::change_record(topic, req.partition, p, &next) {
        None => Ok((None, IsrChanged { partition_epoch: p.partition_epoch.0, isr: next.isr })),
        Some(record) => {
            let partition_epoch = p.partition_epoch.0 + 1;
            Ok((Some(record), IsrChanged { partition_epoch, isr: next.isr }))
        }
    }
}
