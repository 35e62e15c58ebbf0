//! The metadata quorum's Kafka APIs (KIP-853): DescribeQuorum (55), AddRaftVoter (80),
//! RemoveRaftVoter (81) and UpdateRaftVoter (82). A broker forwards each to the active
//! controller, as Kafka's brokers forward them, and answers with what the controller said:
//! the quorum's voters and observers with their log end offsets, or why a change was refused.

use std::sync::Arc;

use kafka_protocol::messages::describe_quorum_response::{
    Listener as NodeListener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::update_raft_voter_response::CurrentLeader;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strom_metadata::control::{ControlRequest, ControlResponse};
use strom_metadata::quorum::{
    AddVoterRequest, DirectoryId, QuorumDescription, RemoveVoterRequest, ReplicaDescription,
    UpdateVoterRequest,
};
use strom_metadata::ControlError;
use uuid::Uuid;

use super::s;
use crate::errors::KafkaError;
use crate::BrokerCtx;

/// The metadata log's topic and partition, as Kafka names them in DescribeQuorum.
pub(crate) const METADATA_TOPIC: &str = "__cluster_metadata";
const METADATA_PARTITION: i32 = 0;

/// The listener a controller's control address is reported under.
const CONTROLLER_LISTENER: &str = "CONTROLLER";

/// The quorum from the active controller, or the refusal as Kafka's (code, message).
async fn ask(ctx: &BrokerCtx, request: ControlRequest) -> Result<QuorumDescription, (i16, String)> {
    let refused = |e: ControlError| (i16::from(KafkaError::from(&e)), e.to_string());
    match ctx.controller.submit(request).await {
        Ok(ControlResponse::Quorum(d)) => Ok(d),
        Ok(other) => Err(refused(ControlError::ControllerUnavailable(format!(
            "unexpected controller answer {other:?}"
        )))),
        Err(e) => Err(refused(e)),
    }
}

/// A request naming another cluster is refused (Kafka's INCONSISTENT_CLUSTER_ID).
fn check_cluster(ctx: &BrokerCtx, cluster_id: &Option<StrBytes>) -> Result<(), (i16, String)> {
    match cluster_id {
        Some(id) if **id != *ctx.config.cluster_id => Err((
            i16::from(KafkaError::InconsistentClusterId),
            format!("this is cluster {}, not {}", ctx.config.cluster_id, &**id),
        )),
        _ => Ok(()),
    }
}

fn directory_of(uuid: &Uuid) -> Option<DirectoryId> {
    DirectoryId::from_slice(uuid.as_bytes())
}

fn uuid_of(directory_id: Option<DirectoryId>) -> Uuid {
    directory_id.map_or(Uuid::nil(), |d| Uuid::from_bytes(d.0))
}

/// A voter's control address from its listeners: the CONTROLLER one, else the first.
fn control_addr<'a>(
    listeners: impl Iterator<Item = (&'a StrBytes, &'a StrBytes, u16)> + Clone,
) -> Option<String> {
    let chosen = listeners
        .clone()
        .find(|(name, _, _)| name.eq_ignore_ascii_case(CONTROLLER_LISTENER))
        .or_else(|| listeners.clone().next())?;
    Some(format!("{}:{}", &**chosen.1, chosen.2))
}

fn host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

pub(crate) async fn describe_quorum(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: DescribeQuorumRequest,
) -> DescribeQuorumResponse {
    let wanted = req.topics.iter().any(|t| {
        &*t.topic_name.0 == METADATA_TOPIC
            && t.partitions.iter().any(|p| p.partition_index == METADATA_PARTITION)
    });
    let answer = if wanted { Some(ask(ctx, ControlRequest::DescribeQuorum).await) } else { None };
    let replica = |r: &ReplicaDescription| {
        let mut state = ReplicaState::default()
            .with_replica_id(BrokerId(i32::try_from(r.node_id).unwrap_or(i32::MAX)))
            .with_log_end_offset(r.log_end_offset);
        if version >= 1 {
            state.last_fetch_timestamp = r.last_fetch_ms;
            state.last_caught_up_timestamp = r.last_caught_up_ms;
        }
        if version >= 2 {
            state.replica_directory_id = uuid_of(r.directory_id);
        }
        state
    };
    let mut nodes = Vec::new();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let out = PartitionData::default().with_partition_index(p.partition_index);
                    let result = match &answer {
                        Some(result)
                            if &*t.topic_name.0 == METADATA_TOPIC
                                && p.partition_index == METADATA_PARTITION =>
                        {
                            result.as_ref()
                        }
                        _ => Err(&(
                            i16::from(KafkaError::UnknownTopicOrPartition),
                            format!("the metadata quorum is {METADATA_TOPIC}-{METADATA_PARTITION}"),
                        )),
                    };
                    match result {
                        Ok(d) => {
                            if version >= 2 && nodes.is_empty() {
                                nodes = d
                                    .voters
                                    .iter()
                                    .filter_map(|v| {
                                        let (host, port) = host_port(&v.control_addr)?;
                                        let listener = NodeListener::default()
                                            .with_name(s(CONTROLLER_LISTENER.to_string()))
                                            .with_host(s(host.to_string()))
                                            .with_port(port);
                                        Some(
                                            Node::default()
                                                .with_node_id(BrokerId(v.node_id as i32))
                                                .with_listeners(vec![listener]),
                                        )
                                    })
                                    .collect();
                            }
                            out.with_leader_id(BrokerId(d.leader_id as i32))
                                .with_leader_epoch(i32::try_from(d.term).unwrap_or(i32::MAX))
                                .with_high_watermark(
                                    i64::try_from(d.high_watermark).unwrap_or(i64::MAX),
                                )
                                .with_current_voters(d.voters.iter().map(replica).collect())
                                .with_observers(d.observers.iter().map(replica).collect())
                        }
                        Err((code, message)) => {
                            let mut out = out.with_error_code(*code).with_leader_id(BrokerId(-1));
                            out.leader_epoch = -1;
                            out.high_watermark = -1;
                            if version >= 2 {
                                out.error_message = Some(s(message.clone()));
                            }
                            out
                        }
                    }
                })
                .collect();
            TopicData::default().with_topic_name(t.topic_name.clone()).with_partitions(partitions)
        })
        .collect();
    let mut response = DescribeQuorumResponse::default().with_topics(topics);
    if version >= 2 {
        response.nodes = nodes;
    }
    response
}

pub(crate) async fn add_raft_voter(
    ctx: &Arc<BrokerCtx>,
    req: AddRaftVoterRequest,
) -> AddRaftVoterResponse {
    let listeners = req.listeners.iter().map(|l| (&l.name, &l.host, l.port));
    let result = match check_cluster(ctx, &req.cluster_id) {
        Err(e) => Err(e),
        Ok(()) => {
            let add = AddVoterRequest {
                node_id: u64::try_from(req.voter_id).unwrap_or(u64::MAX),
                directory_id: directory_of(&req.voter_directory_id),
                control_addr: control_addr(listeners),
                timeout_ms: u64::try_from(req.timeout_ms).ok().filter(|t| *t > 0),
            };
            ask(ctx, ControlRequest::AddVoter(add)).await.map(|_| ())
        }
    };
    let (code, message) = result.err().unzip();
    AddRaftVoterResponse::default()
        .with_error_code(code.unwrap_or(0))
        .with_error_message(message.map(s))
}

pub(crate) async fn remove_raft_voter(
    ctx: &Arc<BrokerCtx>,
    req: RemoveRaftVoterRequest,
) -> RemoveRaftVoterResponse {
    let result = match check_cluster(ctx, &req.cluster_id) {
        Err(e) => Err(e),
        Ok(()) => {
            let remove = RemoveVoterRequest {
                node_id: u64::try_from(req.voter_id).unwrap_or(u64::MAX),
                directory_id: directory_of(&req.voter_directory_id),
            };
            ask(ctx, ControlRequest::RemoveVoter(remove)).await.map(|_| ())
        }
    };
    let (code, message) = result.err().unzip();
    RemoveRaftVoterResponse::default()
        .with_error_code(code.unwrap_or(0))
        .with_error_message(message.map(s))
}

pub(crate) async fn update_raft_voter(
    ctx: &Arc<BrokerCtx>,
    req: UpdateRaftVoterRequest,
) -> UpdateRaftVoterResponse {
    let listeners = req.listeners.iter().map(|l| (&l.name, &l.host, l.port));
    let result = match (
        check_cluster(ctx, &req.cluster_id),
        directory_of(&req.voter_directory_id),
        control_addr(listeners),
    ) {
        (Err(e), _, _) => Err(e),
        (Ok(()), Some(directory_id), Some(control_addr)) => {
            let update = UpdateVoterRequest {
                node_id: u64::try_from(req.voter_id).unwrap_or(u64::MAX),
                directory_id,
                control_addr,
            };
            ask(ctx, ControlRequest::UpdateVoter(update)).await
        }
        _ => Err((
            i16::from(KafkaError::InvalidRequest),
            "UpdateRaftVoter needs the voter's directory id and a listener".into(),
        )),
    };
    let mut leader = CurrentLeader::default().with_leader_id(BrokerId(-1)).with_leader_epoch(-1);
    if let Ok(d) = &result {
        leader.leader_id = BrokerId(d.leader_id as i32);
        leader.leader_epoch = i32::try_from(d.term).unwrap_or(i32::MAX);
        let at = d.voters.iter().find(|v| v.node_id == d.leader_id);
        if let Some((host, port)) = at.and_then(|v| host_port(&v.control_addr)) {
            leader.host = s(host.to_string());
            leader.port = i32::from(port);
        }
    }
    UpdateRaftVoterResponse::default()
        .with_error_code(result.err().map_or(0, |(code, _)| code))
        .with_current_leader(leader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voters_control_address_is_its_controller_listener() {
        let (a, b, c) = (s("PLAINTEXT"), s("CONTROLLER"), s("h"));
        let listeners = [(&a, &c, 9092u16), (&b, &c, 9093u16)];
        assert_eq!(control_addr(listeners.iter().copied()), Some("h:9093".into()));
        assert_eq!(control_addr(listeners[..1].iter().copied()), Some("h:9092".into()));
        assert_eq!(control_addr(listeners[..0].iter().copied()), None);
        assert_eq!(host_port("127.0.0.1:9093"), Some(("127.0.0.1", 9093)));
        assert_eq!(host_port("nowhere"), None);
    }

    #[test]
    fn directory_ids_cross_as_uuids_and_zero_is_none() {
        let d = DirectoryId([7; 16]);
        assert_eq!(directory_of(&uuid_of(Some(d))), Some(d));
        assert_eq!(uuid_of(None), Uuid::nil());
        assert_eq!(directory_of(&Uuid::nil()), None);
    }
}
