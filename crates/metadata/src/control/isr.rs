//! ISR decisions: a partition leader asks to shrink or expand its in-sync replica set
//! (Kafka's AlterPartition), carrying the epochs it saw so that stale requests are refused.

use super::{rec, ControlResponse, Decision};
use crate::records::metadata_record::Record;
use crate::records::PartitionChangeRecord;
use crate::{BrokerEpoch, ControlError, MetadataImage, NodeId};

#[derive(Clone, Debug)]
pub struct AlterPartitionRequest {
    pub broker_id: NodeId,
    pub broker_epoch: BrokerEpoch,
    pub topic: String,
    pub partition: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionReply {
    pub partition_epoch: i32,
    pub isr: Vec<NodeId>,
}

pub(super) fn alter_partition(
    image: &MetadataImage,
    req: &AlterPartitionRequest,
) -> Result<Decision, ControlError> {
    let broker = image.registered_broker(req.broker_id, req.broker_epoch)?;
    let topic = image
        .topic(&req.topic)
        .ok_or_else(|| ControlError::UnknownTopicOrPartition(req.topic.clone()))?;
    let p = topic.partitions.get(&req.partition).ok_or_else(|| {
        ControlError::UnknownTopicOrPartition(format!("{}-{}", req.topic, req.partition))
    })?;
    if p.leader != Some(broker.id) || p.leader_epoch.0 != req.leader_epoch {
        return Err(ControlError::FencedLeaderEpoch(format!(
            "{}-{}: leader is {:?} at epoch {}, request from {} at epoch {}",
            req.topic,
            req.partition,
            p.leader.map(|n| n.0),
            p.leader_epoch.0,
            req.broker_id.0,
            req.leader_epoch
        )));
    }
    if p.partition_epoch.0 != req.partition_epoch {
        return Err(ControlError::InvalidUpdateVersion(format!(
            "{}-{}: partition epoch is {}, request saw {}",
            req.topic, req.partition, p.partition_epoch.0, req.partition_epoch
        )));
    }
    if !req.new_isr.contains(&broker.id) {
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
    if isr == p.isr {
        let reply = AlterPartitionReply { partition_epoch: p.partition_epoch.0, isr };
        return Ok(Decision {
            records: Vec::new(),
            response: ControlResponse::AlterPartition(reply),
        });
    }
    let partition_epoch = p.partition_epoch.0 + 1;
    let records = vec![rec(Record::PartitionChange(PartitionChangeRecord {
        topic_id: topic.id.0.to_vec(),
        partition_id: req.partition,
        leader: broker.id.0,
        isr: isr.iter().map(|n| n.0).collect(),
        replicas: p.replicas.iter().map(|n| n.0).collect(),
        leader_epoch: p.leader_epoch.0,
        partition_epoch,
    }))];
    Ok(Decision {
        records,
        response: ControlResponse::AlterPartition(AlterPartitionReply { partition_epoch, isr }),
    })
}
