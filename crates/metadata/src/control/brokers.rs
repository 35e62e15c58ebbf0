//! Broker lifecycle decisions: registration and heartbeats (fence, unfence).

use super::{rec, ControlResponse, DecideCtx, Decision};
use crate::records::metadata_record::Record;
use crate::records::{
    BrokerRegistrationChangeRecord, Endpoint, MetadataRecord, PartitionChangeRecord,
    RegisterBrokerRecord,
};
use crate::{BrokerEpoch, ControlError, MetadataImage, MetadataOffset, NodeId};

#[derive(Clone, Debug)]
pub struct RegisterBrokerRequest {
    pub broker_id: NodeId,
    /// New on every process start: tells a retry from a second process with the same id.
    pub incarnation_id: Vec<u8>,
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
}

#[derive(Clone, Debug)]
pub struct BrokerHeartbeatRequest {
    pub broker_id: NodeId,
    pub broker_epoch: BrokerEpoch,
    /// The metadata offset the broker has applied.
    pub current_metadata_offset: MetadataOffset,
    pub want_fence: bool,
    pub want_shutdown: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub is_caught_up: bool,
    pub is_fenced: bool,
    pub should_shutdown: bool,
}

pub(super) fn register(
    image: &MetadataImage,
    req: &RegisterBrokerRequest,
    ctx: &mut DecideCtx<'_>,
) -> Result<Decision, ControlError> {
    if req.incarnation_id.len() != 16 {
        return Err(ControlError::InvalidRequest("incarnation id must be 16 bytes".into()));
    }
    if let Some(b) = image.brokers.get(&req.broker_id) {
        // The same process retrying: answer with the epoch it already has.
        if b.incarnation_id == req.incarnation_id {
            return Ok(Decision {
                records: Vec::new(),
                response: ControlResponse::RegisterBroker(b.epoch),
            });
        }
    }
    let epoch = BrokerEpoch(ctx.next_offset.0 as i64);
    // A new incarnation means the old process is gone: move leadership off it first.
    let mut records = remove_leadership(image, req.broker_id);
    records.push(rec(Record::RegisterBroker(RegisterBrokerRecord {
        broker_id: req.broker_id.0,
        incarnation_id: req.incarnation_id.clone(),
        broker_epoch: epoch.0,
        endpoints: req.endpoints.clone(),
        rack: req.rack.clone(),
        fenced: true,
    })));
    Ok(Decision { records, response: ControlResponse::RegisterBroker(epoch) })
}

pub(super) fn heartbeat(
    image: &MetadataImage,
    req: &BrokerHeartbeatRequest,
) -> Result<Decision, ControlError> {
    let broker = image
        .brokers
        .get(&req.broker_id)
        .filter(|b| b.epoch == req.broker_epoch)
        .ok_or(ControlError::StaleBrokerEpoch(req.broker_id.0))?;
    // Caught up once it has applied its own registration.
    let caught_up = req.current_metadata_offset.0 as i64 >= broker.epoch.0;
    let mut records = Vec::new();
    let mut fenced = broker.fenced;
    if broker.fenced && caught_up && !req.want_fence && !req.want_shutdown {
        records.push(rec(Record::BrokerRegistrationChange(BrokerRegistrationChangeRecord {
            broker_id: req.broker_id.0,
            broker_epoch: broker.epoch.0,
            fenced: Some(false),
            in_controlled_shutdown: None,
        })));
        records.extend(elect_leaderless(image, req.broker_id));
        fenced = false;
    }
    Ok(Decision {
        records,
        response: ControlResponse::BrokerHeartbeat(HeartbeatReply {
            is_caught_up: caught_up,
            is_fenced: fenced,
            should_shutdown: false,
        }),
    })
}

/// Partitions without a leader whose ISR holds the newly live broker get it as leader.
fn elect_leaderless(image: &MetadataImage, broker: NodeId) -> Vec<MetadataRecord> {
    let mut out = Vec::new();
    for t in image.topics.values() {
        for (&id, p) in &t.partitions {
            let eligible = p.isr.iter().find(|&&r| r == broker || image.is_live(r));
            if p.leader.is_none() && eligible.is_some() {
                out.push(rec(Record::PartitionChange(PartitionChangeRecord {
                    topic_id: t.id.0.to_vec(),
                    partition_id: id,
                    leader: eligible.map_or(-1, |n| n.0),
                    isr: p.isr.iter().map(|n| n.0).collect(),
                    replicas: p.replicas.iter().map(|n| n.0).collect(),
                    leader_epoch: p.leader_epoch.0 + 1,
                    partition_epoch: p.partition_epoch.0 + 1,
                })));
            }
        }
    }
    out
}

/// Takes `broker` out of every leadership and (where others remain) out of every ISR; the new
/// leader is the first live replica of the remaining ISR in replica order. Kafka keeps the last
/// ISR member even when it is gone, so that an unclean election stays visible as such.
pub fn remove_leadership(image: &MetadataImage, broker: NodeId) -> Vec<MetadataRecord> {
    let mut out = Vec::new();
    for t in image.topics.values() {
        for (&id, p) in &t.partitions {
            if p.leader != Some(broker) && !(p.isr.contains(&broker) && p.isr.len() > 1) {
                continue;
            }
            let others: Vec<NodeId> = p.isr.iter().copied().filter(|&r| r != broker).collect();
            let isr = if others.is_empty() { p.isr.clone() } else { others };
            let leader = if p.leader == Some(broker) {
                p.replicas
                    .iter()
                    .copied()
                    .find(|r| *r != broker && isr.contains(r) && image.is_live(*r))
            } else {
                p.leader
            };
            let leader_changed = leader != p.leader;
            out.push(rec(Record::PartitionChange(PartitionChangeRecord {
                topic_id: t.id.0.to_vec(),
                partition_id: id,
                leader: leader.map_or(-1, |n| n.0),
                isr: isr.iter().map(|n| n.0).collect(),
                replicas: p.replicas.iter().map(|n| n.0).collect(),
                leader_epoch: p.leader_epoch.0 + i32::from(leader_changed),
                partition_epoch: p.partition_epoch.0 + 1,
            })));
        }
    }
    out
}
