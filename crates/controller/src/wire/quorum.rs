//! The quorum's membership requests (KIP-853) and their answer, the quorum description, as
//! the prost messages of `proto/controller.proto`, both ways.

use strom_metadata::quorum::{
    AddVoterRequest, DirectoryId, JoinQuorumRequest, QuorumDescription, RemoveVoterRequest,
    ReplicaDescription, ReplicaKind, UpdateVoterRequest,
};
use strom_proto::controller as pb;

use super::WireError;

fn directory_to_pb(id: Option<DirectoryId>) -> Vec<u8> {
    id.map(|d| d.0.to_vec()).unwrap_or_default()
}

/// Empty: none; otherwise exactly 16 bytes, not all zero.
fn directory_from_pb(bytes: &[u8], field: &'static str) -> Result<Option<DirectoryId>, WireError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    DirectoryId::from_slice(bytes).map(Some).ok_or(WireError::BadDirectoryId(field))
}

fn required_directory(bytes: &[u8], field: &'static str) -> Result<DirectoryId, WireError> {
    directory_from_pb(bytes, field)?.ok_or(WireError::MissingField(field))
}

pub(super) fn add_voter_to_pb(r: &AddVoterRequest) -> pb::AddVoterRequest {
    pb::AddVoterRequest {
        node_id: r.node_id,
        directory_id: directory_to_pb(r.directory_id),
        control_addr: r.control_addr.clone(),
        timeout_ms: r.timeout_ms,
    }
}

pub(super) fn add_voter_from_pb(r: pb::AddVoterRequest) -> Result<AddVoterRequest, WireError> {
    Ok(AddVoterRequest {
        node_id: r.node_id,
        directory_id: directory_from_pb(&r.directory_id, "AddVoterRequest.directory_id")?,
        control_addr: r.control_addr,
        timeout_ms: r.timeout_ms,
    })
}

pub(super) fn remove_voter_to_pb(r: &RemoveVoterRequest) -> pb::RemoveVoterRequest {
    pb::RemoveVoterRequest { node_id: r.node_id, directory_id: directory_to_pb(r.directory_id) }
}

pub(super) fn remove_voter_from_pb(
    r: pb::RemoveVoterRequest,
) -> Result<RemoveVoterRequest, WireError> {
    Ok(RemoveVoterRequest {
        node_id: r.node_id,
        directory_id: directory_from_pb(&r.directory_id, "RemoveVoterRequest.directory_id")?,
    })
}

pub(super) fn update_voter_to_pb(r: &UpdateVoterRequest) -> pb::UpdateVoterRequest {
    pb::UpdateVoterRequest {
        node_id: r.node_id,
        directory_id: r.directory_id.0.to_vec(),
        control_addr: r.control_addr.clone(),
    }
}

pub(super) fn update_voter_from_pb(
    r: pb::UpdateVoterRequest,
) -> Result<UpdateVoterRequest, WireError> {
    Ok(UpdateVoterRequest {
        node_id: r.node_id,
        directory_id: required_directory(&r.directory_id, "UpdateVoterRequest.directory_id")?,
        control_addr: r.control_addr,
    })
}

pub(super) fn join_to_pb(r: &JoinQuorumRequest) -> pb::JoinQuorumRequest {
    pb::JoinQuorumRequest {
        node_id: r.node_id,
        directory_id: r.directory_id.0.to_vec(),
        control_addr: r.control_addr.clone(),
    }
}

pub(super) fn join_from_pb(r: pb::JoinQuorumRequest) -> Result<JoinQuorumRequest, WireError> {
    Ok(JoinQuorumRequest {
        node_id: r.node_id,
        directory_id: required_directory(&r.directory_id, "JoinQuorumRequest.directory_id")?,
        control_addr: r.control_addr,
    })
}

fn replica_to_pb(r: &ReplicaDescription) -> pb::ReplicaDescription {
    let kind = match r.kind {
        ReplicaKind::Controller => pb::ReplicaKind::Controller,
        ReplicaKind::Broker => pb::ReplicaKind::Broker,
    };
    pb::ReplicaDescription {
        node_id: r.node_id,
        directory_id: directory_to_pb(r.directory_id),
        control_addr: r.control_addr.clone(),
        kind: kind as i32,
        log_end_offset: r.log_end_offset,
        last_fetch_ms: r.last_fetch_ms,
        last_caught_up_ms: r.last_caught_up_ms,
    }
}

fn replica_from_pb(r: pb::ReplicaDescription) -> Result<ReplicaDescription, WireError> {
    let unknown = WireError::UnknownEnum { field: "ReplicaDescription.kind", value: r.kind };
    let kind = match pb::ReplicaKind::try_from(r.kind).map_err(|_| unknown)? {
        pb::ReplicaKind::Controller => ReplicaKind::Controller,
        pb::ReplicaKind::Broker => ReplicaKind::Broker,
        pb::ReplicaKind::Unknown => {
            return Err(WireError::UnknownEnum { field: "ReplicaDescription.kind", value: r.kind })
        }
    };
    Ok(ReplicaDescription {
        node_id: r.node_id,
        directory_id: directory_from_pb(&r.directory_id, "ReplicaDescription.directory_id")?,
        control_addr: r.control_addr,
        kind,
        log_end_offset: r.log_end_offset,
        last_fetch_ms: r.last_fetch_ms,
        last_caught_up_ms: r.last_caught_up_ms,
    })
}

pub(super) fn description_to_pb(d: &QuorumDescription) -> pb::QuorumDescription {
    pb::QuorumDescription {
        leader_id: d.leader_id,
        term: d.term,
        high_watermark: d.high_watermark,
        log_end_offset: d.log_end_offset,
        voters: d.voters.iter().map(replica_to_pb).collect(),
        observers: d.observers.iter().map(replica_to_pb).collect(),
        joint: d.joint,
    }
}

pub(super) fn description_from_pb(
    d: pb::QuorumDescription,
) -> Result<QuorumDescription, WireError> {
    Ok(QuorumDescription {
        leader_id: d.leader_id,
        term: d.term,
        high_watermark: d.high_watermark,
        log_end_offset: d.log_end_offset,
        voters: d.voters.into_iter().map(replica_from_pb).collect::<Result<_, _>>()?,
        observers: d.observers.into_iter().map(replica_from_pb).collect::<Result<_, _>>()?,
        joint: d.joint,
    })
}

#[cfg(test)]
mod tests {
    use strom_metadata::control::{ControlRequest, ControlResponse};
    use strom_metadata::ControlError;

    use super::*;
    use crate::wire::{request_from_pb, request_to_pb, response_from_pb, response_to_pb};

    const DIR: DirectoryId = DirectoryId([7; 16]);

    #[test]
    fn quorum_requests_and_their_answer_survive_the_wire() {
        for r in [
            ControlRequest::AddVoter(AddVoterRequest {
                node_id: 4,
                directory_id: Some(DIR),
                control_addr: Some("h:4".into()),
                timeout_ms: Some(5_000),
            }),
            ControlRequest::AddVoter(AddVoterRequest {
                node_id: 4,
                directory_id: None,
                control_addr: None,
                timeout_ms: None,
            }),
            ControlRequest::RemoveVoter(RemoveVoterRequest { node_id: 3, directory_id: None }),
            ControlRequest::UpdateVoter(UpdateVoterRequest {
                node_id: 1,
                directory_id: DIR,
                control_addr: "h:1".into(),
            }),
            ControlRequest::JoinQuorum(JoinQuorumRequest {
                node_id: 5,
                directory_id: DIR,
                control_addr: "h:5".into(),
            }),
            ControlRequest::DescribeQuorum,
        ] {
            let back = request_from_pb(request_to_pb(&r)).expect("decodes");
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
        let replica = |node_id, kind| ReplicaDescription {
            node_id,
            directory_id: (kind == ReplicaKind::Controller).then_some(DIR),
            control_addr: "h:1".into(),
            kind,
            log_end_offset: 41,
            last_fetch_ms: 1_700_000_000_000,
            last_caught_up_ms: -1,
        };
        let answer = Ok(ControlResponse::Quorum(QuorumDescription {
            leader_id: 1,
            term: 7,
            high_watermark: 40,
            log_end_offset: 41,
            voters: vec![replica(1, ReplicaKind::Controller)],
            observers: vec![replica(4, ReplicaKind::Controller), replica(9, ReplicaKind::Broker)],
            joint: true,
        }));
        assert_eq!(response_from_pb(response_to_pb(&answer)).expect("decodes"), answer);
        for e in [
            ControlError::DuplicateVoter("4".into()),
            ControlError::VoterNotFound("4".into()),
            ControlError::InvalidVoterKey("3".into()),
            ControlError::VoterChangeTimedOut("4".into()),
        ] {
            let answer = Err(e);
            assert_eq!(response_from_pb(response_to_pb(&answer)).expect("decodes"), answer);
        }
    }

    #[test]
    fn a_directory_id_is_sixteen_bytes_or_none() {
        let bad = pb::ControlRequest {
            request: Some(pb::control_request::Request::RemoveVoter(pb::RemoveVoterRequest {
                node_id: 3,
                directory_id: vec![1, 2, 3],
            })),
        };
        assert!(request_from_pb(bad).is_err());
        // An update must say which replica it is.
        let anonymous = pb::ControlRequest {
            request: Some(pb::control_request::Request::UpdateVoter(pb::UpdateVoterRequest {
                node_id: 3,
                directory_id: Vec::new(),
                control_addr: "h:3".into(),
            })),
        };
        assert!(request_from_pb(anonymous).is_err());
    }
}
