//! Broker lifecycle decisions and partition leader election: registration, heartbeats (fence,
//! unfence, controlled shutdown), fencing a silent broker, and elections on request.
//!
//! Every election follows one rule: the new leader is the first live replica of the ISR in
//! replica order; only where the topic sets `unclean.leader.election.enable` (or an unclean
//! election is requested) may a live replica outside the ISR lead, and then the ISR becomes
//! just that replica. Every leader change bumps the leader epoch; every change of a
//! partition's leader, ISR or replicas bumps its partition epoch.

use std::collections::BTreeSet;

use super::{rec, ControlResponse, DecideCtx, Decision};
use crate::records::metadata_record::Record;
use crate::records::{
    BrokerRegistrationChangeRecord, Endpoint, MetadataRecord, PartitionChangeRecord,
    RegisterBrokerRecord,
};
use crate::{
    BrokerEpoch, ControlError, MetadataImage, MetadataOffset, NodeId, PartitionImage, TopicImage,
};

/// The topic config that lets a replica outside the ISR lead when no ISR member is live.
pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";

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
    let broker = image.registered_broker(req.broker_id, req.broker_epoch)?;
    // Caught up once it has applied its own registration.
    let caught_up = req.current_metadata_offset.0 as i64 >= broker.epoch.0;
    let mut records = Vec::new();
    let mut fenced = broker.fenced;
    let mut should_shutdown = false;
    if req.want_shutdown {
        if broker.fenced {
            // It leads nothing and takes no part in any ISR decision: it may go at once.
            should_shutdown = true;
        } else if !broker.in_controlled_shutdown {
            records.push(registration_change(broker.id, broker.epoch, None, Some(true)));
            records.extend(remove_leadership(image, req.broker_id));
            // Not yet: the broker first hears, on its next heartbeat, that the moves of its
            // leaderships committed (it applied them in between).
        } else {
            // Nothing can have made it a leader since (it is not live), but make sure.
            records.extend(remove_leadership(image, req.broker_id));
            should_shutdown = records.is_empty() && !leads_any(image, req.broker_id);
        }
    } else if broker.fenced && caught_up && !req.want_fence {
        records.push(registration_change(broker.id, broker.epoch, Some(false), None));
        records.extend(elect_leaderless(image, req.broker_id));
        fenced = false;
    } else if !broker.fenced && req.want_fence {
        records.extend(fence_broker(image, req.broker_id, broker.epoch));
        fenced = true;
    }
    Ok(Decision {
        records,
        response: ControlResponse::BrokerHeartbeat(HeartbeatReply {
            is_caught_up: caught_up,
            is_fenced: fenced,
            should_shutdown,
        }),
    })
}

fn registration_change(
    broker: NodeId,
    epoch: BrokerEpoch,
    fenced: Option<bool>,
    in_controlled_shutdown: Option<bool>,
) -> MetadataRecord {
    rec(Record::BrokerRegistrationChange(BrokerRegistrationChangeRecord {
        broker_id: broker.0,
        broker_epoch: epoch.0,
        fenced,
        in_controlled_shutdown,
    }))
}

fn leads_any(image: &MetadataImage, broker: NodeId) -> bool {
    image.topics.values().flat_map(|t| t.partitions.values()).any(|p| p.leader == Some(broker))
}

/// Fences the registration `epoch` of `broker` (the session timed out, or it asked to be):
/// it leaves every leadership and every ISR it is not the last member of. Nothing when that
/// registration is gone or already fenced.
pub fn fence_broker(
    image: &MetadataImage,
    broker: NodeId,
    epoch: BrokerEpoch,
) -> Vec<MetadataRecord> {
    match image.brokers.get(&broker) {
        Some(b) if b.epoch == epoch && !b.fenced => {
            let mut records = vec![registration_change(broker, epoch, Some(true), None)];
            records.extend(remove_leadership(image, broker));
            records
        }
        _ => Vec::new(),
    }
}

/// Whether the topic lets a live replica outside the ISR lead.
pub fn unclean_election_enabled(image: &MetadataImage, topic: &str) -> bool {
    image
        .topic_configs(topic)
        .and_then(|c| c.get(UNCLEAN_LEADER_ELECTION_ENABLE))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The partition's full new state as a record.
fn change(
    topic: &TopicImage,
    partition_id: i32,
    p: &PartitionImage,
    leader: Option<NodeId>,
    isr: &[NodeId],
) -> MetadataRecord {
    let leader_changed = leader != p.leader;
    rec(Record::PartitionChange(PartitionChangeRecord {
        topic_id: topic.id.0.to_vec(),
        partition_id,
        leader: leader.map_or(-1, |n| n.0),
        isr: isr.iter().map(|n| n.0).collect(),
        replicas: p.replicas.iter().map(|n| n.0).collect(),
        leader_epoch: p.leader_epoch.0 + i32::from(leader_changed),
        partition_epoch: p.partition_epoch.0 + 1,
        // An election leaves a reassignment in progress as it is.
        adding_replicas: p.adding_replicas.iter().map(|n| n.0).collect(),
        removing_replicas: p.removing_replicas.iter().map(|n| n.0).collect(),
    }))
}

/// The election rule: the first replica (in replica order) in `isr` for which `live` holds;
/// else, when `unclean`, the first live replica outside it, with an ISR of just itself.
fn elect(
    p: &PartitionImage,
    isr: &[NodeId],
    unclean: bool,
    live: impl Fn(NodeId) -> bool,
) -> Option<(NodeId, Vec<NodeId>)> {
    if let Some(&clean) = p.replicas.iter().find(|r| isr.contains(r) && live(**r)) {
        return Some((clean, isr.to_vec()));
    }
    if unclean {
        return p.replicas.iter().find(|r| live(**r)).map(|&r| (r, vec![r]));
    }
    None
}

/// Partitions without a leader that the newly unfenced `broker` can lead get a leader again:
/// by the election rule, counting `broker` as live.
fn elect_leaderless(image: &MetadataImage, broker: NodeId) -> Vec<MetadataRecord> {
    let mut out = Vec::new();
    for t in image.topics.values() {
        let unclean = unclean_election_enabled(image, &t.name);
        for (&id, p) in &t.partitions {
            if p.leader.is_some() || !p.replicas.contains(&broker) {
                continue;
            }
            let live = |r: NodeId| r == broker || image.is_live(r);
            if let Some((leader, isr)) = elect(p, &p.isr, unclean, live) {
                out.push(change(t, id, p, Some(leader), &isr));
            }
        }
    }
    out
}

/// Takes `broker` out of every leadership and (where others remain) out of every ISR; the new
/// leader follows the election rule among the other replicas. Kafka keeps the last ISR member
/// even when it is gone, so that an unclean election stays visible as such.
pub fn remove_leadership(image: &MetadataImage, broker: NodeId) -> Vec<MetadataRecord> {
    let mut out = Vec::new();
    for t in image.topics.values() {
        let unclean = unclean_election_enabled(image, &t.name);
        for (&id, p) in &t.partitions {
            if p.leader != Some(broker) && !(p.isr.contains(&broker) && p.isr.len() > 1) {
                continue;
            }
            let others: Vec<NodeId> = p.isr.iter().copied().filter(|&r| r != broker).collect();
            let isr = if others.is_empty() { p.isr.clone() } else { others };
            let (leader, isr) = if p.leader == Some(broker) {
                let live = |r: NodeId| r != broker && image.is_live(r);
                match elect(p, &isr, unclean, live) {
                    Some((leader, isr)) => (Some(leader), isr),
                    None => (None, isr),
                }
            } else {
                (p.leader, isr)
            };
            out.push(change(t, id, p, leader, &isr));
        }
    }
    out
}

/// Why one partition got no new leader from an `ElectLeaders` request (Kafka's per-partition
/// errors of the ElectLeaders API).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("the partition already has the leader the election would choose")]
    ElectionNotNeeded,
    #[error("the preferred replica is not live or not in the ISR")]
    PreferredLeaderNotAvailable,
    #[error("no live replica can lead")]
    EligibleLeadersNotAvailable,
}

/// The outcome of an election for one partition: its new leader, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionElection {
    pub topic: String,
    pub partition: i32,
    pub result: Result<NodeId, ElectionError>,
}

fn elect_one(
    image: &MetadataImage,
    t: &TopicImage,
    id: i32,
    p: &PartitionImage,
    preferred: bool,
) -> Result<(NodeId, MetadataRecord), ElectionError> {
    if preferred {
        let first = *p.replicas.first().ok_or(ElectionError::PreferredLeaderNotAvailable)?;
        if p.leader == Some(first) {
            return Err(ElectionError::ElectionNotNeeded);
        }
        if !(image.is_live(first) && p.isr.contains(&first)) {
            return Err(ElectionError::PreferredLeaderNotAvailable);
        }
        return Ok((first, change(t, id, p, Some(first), &p.isr)));
    }
    // Kafka's UNCLEAN election type: for leaderless partitions, and the request itself is the
    // permission to pick a replica outside the ISR.
    if p.leader.is_some() {
        return Err(ElectionError::ElectionNotNeeded);
    }
    let (leader, isr) = elect(p, &p.isr, true, |r| image.is_live(r))
        .ok_or(ElectionError::EligibleLeadersNotAvailable)?;
    Ok((leader, change(t, id, p, Some(leader), &isr)))
}

/// Preferred (leadership back to the first replica, if it is live and in the ISR) or unclean
/// (a leader for leaderless partitions) elections. `topics: None` means every partition, and
/// then partitions that need no election are left out of the answer, as Kafka does.
pub(super) fn elect_leaders(
    image: &MetadataImage,
    topics: Option<&[(String, Vec<i32>)]>,
    preferred: bool,
) -> Decision {
    let mut records = Vec::new();
    let mut results = Vec::new();
    match topics {
        None => {
            for t in image.topics.values() {
                for (&id, p) in &t.partitions {
                    let result = elect_one(image, t, id, p, preferred);
                    if result == Err(ElectionError::ElectionNotNeeded) {
                        continue;
                    }
                    let result = result.map(|(leader, record)| {
                        records.push(record);
                        leader
                    });
                    results.push(PartitionElection {
                        topic: t.name.clone(),
                        partition: id,
                        result,
                    });
                }
            }
        }
        Some(wanted) => {
            let mut seen = BTreeSet::new();
            for (topic, partitions) in wanted {
                for &id in partitions {
                    if !seen.insert((topic.as_str(), id)) {
                        continue;
                    }
                    let result =
                        match image.topic(topic).and_then(|t| Some((t, t.partitions.get(&id)?))) {
                            None => Err(ElectionError::UnknownTopicOrPartition),
                            Some((t, p)) => {
                                elect_one(image, t, id, p, preferred).map(|(leader, record)| {
                                    records.push(record);
                                    leader
                                })
                            }
                        };
                    results.push(PartitionElection { topic: topic.clone(), partition: id, result });
                }
            }
        }
    }
    Decision { records, response: ControlResponse::ElectLeaders(results) }
}
