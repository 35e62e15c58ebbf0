//! KIP-853's voter changes planned against raft's membership, without IO: which membership
//! changes (openraft's `ChangeMembers`) an AddRaftVoter, RemoveRaftVoter, UpdateRaftVoter or an
//! observer's join amounts to, or why it is refused; whether a new voter has caught up; and
//! the quorum as DescribeQuorum reports it. The active controller carries the changes out
//! (`controller::voters`), one at a time.
//!
//! Membership: voters and learners of raft, each node with its control address and directory
//! id. A learner is what KIP-853 calls an observer of the controller role: the leader
//! replicates to it and it does not vote. A removed voter stays a learner (it then learns that
//! it was removed and stops calling elections); an observer whose directory id changed (a
//! wiped disk) is forgotten and added again, never updated in place, so that the leader starts
//! replicating to it from nothing instead of taking it for the replica it was.

use std::collections::{BTreeMap, BTreeSet};

use openraft::ChangeMembers;
use strom_metadata::control::ControlRequest;
use strom_metadata::quorum::{
    AddVoterRequest, DirectoryId, JoinQuorumRequest, QuorumDescription, RemoveVoterRequest,
    ReplicaDescription, ReplicaKind, UpdateVoterRequest,
};
use strom_metadata::ControlError;

use crate::types::{ControllerNode, LogId, Membership};

/// How long a new voter may take to catch up before AddRaftVoter gives up (REQUEST_TIMED_OUT);
/// a request's own timeout may shorten it.
pub const VOTER_CATCH_UP_WAIT_MS_MAX: u64 = 10_000;

/// Observers (raft learners) the quorum keeps at most: each costs the leader a replication
/// stream. Past it a join is refused.
pub const OBSERVERS_MAX: usize = 16;

/// One membership change, proposed through raft as one (or, for a voter set change, two:
/// joint consensus) membership entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// A new observer: the leader starts replicating to it.
    AddLearner(u64, ControllerNode),
    /// The same replica at a new address, or a voter's directory id said for the first time.
    SetNode(u64, ControllerNode),
    /// Forget an observer.
    RemoveLearner(u64),
    /// A caught-up observer becomes a voter.
    Promote(u64),
    /// A voter becomes an observer.
    Demote(u64),
    /// Leave a joint configuration left by a change that a lost leadership interrupted: the
    /// newest voter set alone.
    FinishJoint(BTreeSet<u64>),
}

impl Change {
    /// The openraft change; removed voters are kept as learners (`retain`).
    pub(crate) fn to_openraft(&self) -> ChangeMembers<u64, ControllerNode> {
        let one = |id: &u64| BTreeSet::from([*id]);
        match self {
            Change::AddLearner(id, node) => {
                ChangeMembers::AddNodes(BTreeMap::from([(*id, node.clone())]))
            }
            Change::SetNode(id, node) => {
                ChangeMembers::SetNodes(BTreeMap::from([(*id, node.clone())]))
            }
            Change::RemoveLearner(id) => ChangeMembers::RemoveNodes(one(id)),
            Change::Promote(id) => ChangeMembers::AddVoterIds(one(id)),
            Change::Demote(id) => ChangeMembers::RemoveVoters(one(id)),
            Change::FinishJoint(voters) => ChangeMembers::ReplaceAllVoters(voters.clone()),
        }
    }
}

/// What the active controller does for an AddRaftVoter: these changes first (the observer is
/// added, or its entry completed), then, once it has caught up, [`Change::Promote`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AddPlan {
    pub node_id: u64,
    pub node: ControllerNode,
    pub first: Vec<Change>,
    /// The observer was added for this request: if it never catches up it is forgotten again.
    pub added_observer: bool,
}

fn voters(m: &Membership) -> BTreeSet<u64> {
    m.voter_ids().collect()
}

fn is_voter(m: &Membership, id: u64) -> bool {
    m.get_joint_config().iter().any(|c| c.contains(&id))
}

fn show(d: Option<DirectoryId>) -> String {
    d.map_or_else(|| "unknown".to_string(), |d| d.to_string())
}

/// A joint configuration to finish before any other change; `None` when uniform.
pub(crate) fn settle(m: &Membership) -> Option<Change> {
    let configs = m.get_joint_config();
    (configs.len() > 1).then(|| Change::FinishJoint(configs[configs.len() - 1].clone()))
}

/// A controller node that is not a voter asks to observe (KIP-853's observer fetching from the
/// leader; here the leader replicates to it as a raft learner).
pub(crate) fn plan_join(
    m: &Membership,
    r: &JoinQuorumRequest,
) -> Result<Vec<Change>, ControlError> {
    let wanted =
        ControllerNode { control_addr: r.control_addr.clone(), directory_id: Some(r.directory_id) };
    let Some(known) = m.get_node(&r.node_id) else {
        let observers = m.learner_ids().count();
        if observers >= OBSERVERS_MAX {
            return Err(ControlError::InvalidRequest(format!(
                "the metadata quorum has {observers} observers, the most it keeps \
                 ({OBSERVERS_MAX}): remove one before node {} can join",
                r.node_id
            )));
        }
        return Ok(vec![Change::AddLearner(r.node_id, wanted)]);
    };
    if is_voter(m, r.node_id) {
        return match known.directory_id {
            Some(d) if d == r.directory_id => Ok(Vec::new()),
            Some(d) => Err(ControlError::InvalidVoterKey(format!(
                "node {id} is a voter of the metadata quorum with directory id {d}, and this \
                 node's directory id is {mine} (its data directory was replaced): it cannot take \
                 the voter's place; remove the voter (strom cluster remove-voter --node-id {id} \
                 --directory-id {d}) and this node joins as an observer, to be added again \
                 (strom cluster add-voter --node-id {id})",
                id = r.node_id,
                mine = r.directory_id,
            ))),
            // A voter of a static quorum says its directory id itself (UpdateRaftVoter);
            // nobody else may claim the place.
            None => Err(ControlError::VoterChangeTimedOut(format!(
                "node {} is a voter whose directory id the quorum does not know yet; it says \
                 its own when it runs",
                r.node_id
            ))),
        };
    }
    if known.directory_id == Some(r.directory_id) {
        if known.control_addr == r.control_addr {
            return Ok(Vec::new());
        }
        return Ok(vec![Change::SetNode(r.node_id, wanted)]);
    }
    // Another replica under the same node id (a wiped disk): a new observer, replicated to
    // from the start.
    Ok(vec![Change::RemoveLearner(r.node_id), Change::AddLearner(r.node_id, wanted)])
}

/// KIP-853's UpdateRaftVoter: a voter says its directory id (a static quorum's voters at their
/// first start) or a new control address. Another replica under its id is VOTER_NOT_FOUND.
pub(crate) fn plan_update(
    m: &Membership,
    r: &UpdateVoterRequest,
) -> Result<Vec<Change>, ControlError> {
    let known = match m.get_node(&r.node_id) {
        Some(node) if is_voter(m, r.node_id) => node,
        Some(_) => {
            return Err(ControlError::VoterNotFound(format!(
                "node {} is an observer of the metadata quorum, not a voter (add it: strom \
                 cluster add-voter --node-id {})",
                r.node_id, r.node_id
            )))
        }
        None => {
            return Err(ControlError::VoterNotFound(format!(
                "node {} is not a voter of the metadata quorum",
                r.node_id
            )))
        }
    };
    if let Some(d) = known.directory_id.filter(|d| *d != r.directory_id) {
        return Err(ControlError::VoterNotFound(format!(
            "the metadata quorum knows voter {} by directory id {d}, not {}",
            r.node_id, r.directory_id
        )));
    }
    if known.directory_id == Some(r.directory_id) && known.control_addr == r.control_addr {
        return Ok(Vec::new());
    }
    let node =
        ControllerNode { control_addr: r.control_addr.clone(), directory_id: Some(r.directory_id) };
    Ok(vec![Change::SetNode(r.node_id, node)])
}

/// KIP-853's AddRaftVoter. The node must run: it is an observer already (it joined with
/// `controller.quorum_bootstrap_servers`), or the request says where it is and which directory
/// it is, and it is added as an observer now.
pub(crate) fn plan_add(m: &Membership, r: &AddVoterRequest) -> Result<AddPlan, ControlError> {
    let id = r.node_id;
    if is_voter(m, id) {
        let known = m.get_node(&id).and_then(|n| n.directory_id);
        return Err(ControlError::DuplicateVoter(format!(
            "node {id} (directory id {}) is a voter already; voters: {:?}",
            show(known),
            voters(m)
        )));
    }
    if let Some(known) = m.get_node(&id) {
        let directory_id = match (known.directory_id, r.directory_id) {
            (Some(d), Some(asked)) if d != asked => {
                return Err(ControlError::InvalidRequest(format!(
                    "node {id} observes the metadata quorum with directory id {d}, not {asked}: \
                     leave --directory-id out, or give the node's own"
                )))
            }
            (Some(d), _) | (None, Some(d)) => d,
            (None, None) => {
                return Err(ControlError::InvalidRequest(format!(
                    "the directory id of node {id} is not known: give it (--directory-id)"
                )))
            }
        };
        if let Some(addr) = r.control_addr.as_ref().filter(|a| **a != known.control_addr) {
            return Err(ControlError::InvalidRequest(format!(
                "node {id} observes the metadata quorum from control address {}, not {addr}: \
                 leave --control-addr out, or give the node's own",
                known.control_addr
            )));
        }
        let node = ControllerNode {
            control_addr: known.control_addr.clone(),
            directory_id: Some(directory_id),
        };
        let first = if known.directory_id.is_none() {
            vec![Change::SetNode(id, node.clone())]
        } else {
            Vec::new()
        };
        return Ok(AddPlan { node_id: id, node, first, added_observer: false });
    }
    match (&r.control_addr, r.directory_id) {
        (Some(addr), Some(directory_id)) => {
            let node =
                ControllerNode { control_addr: addr.clone(), directory_id: Some(directory_id) };
            Ok(AddPlan {
                node_id: id,
                node: node.clone(),
                first: vec![Change::AddLearner(id, node)],
                added_observer: true,
            })
        }
        _ => Err(ControlError::InvalidRequest(format!(
            "node {id} does not observe the metadata quorum: start it with \
             controller.quorum_bootstrap_servers naming the voters, so that it joins as an \
             observer, or give its --directory-id and --control-addr"
        ))),
    }
}

/// KIP-853's RemoveRaftVoter: the voter becomes an observer (raft keeps replicating to it, so a
/// running one learns it was removed and stops calling elections). A leader that removes
/// itself (`leader`) is then forgotten too, as raft's leader steps down only once the
/// membership no longer names it; it joins again as an observer under the next leader.
pub(crate) fn plan_remove(
    m: &Membership,
    r: &RemoveVoterRequest,
    leader: u64,
) -> Result<Vec<Change>, ControlError> {
    let id = r.node_id;
    if !is_voter(m, id) {
        let what = if m.get_node(&id).is_some() { "an observer" } else { "not a member" };
        return Err(ControlError::VoterNotFound(format!(
            "node {id} is {what} of the metadata quorum, not a voter; voters: {:?}",
            voters(m)
        )));
    }
    let known = m.get_node(&id).and_then(|n| n.directory_id);
    if let (Some(d), Some(asked)) = (known, r.directory_id) {
        if d != asked {
            return Err(ControlError::VoterNotFound(format!(
                "voter {id} has directory id {d}, not {asked}"
            )));
        }
    }
    let rest = voters(m);
    if rest.len() == 1 {
        return Err(ControlError::InvalidRequest(format!(
            "node {id} is the only voter of the metadata quorum: add another one first"
        )));
    }
    if id == leader {
        return Ok(vec![Change::Demote(id), Change::RemoveLearner(id)]);
    }
    Ok(vec![Change::Demote(id)])
}

/// This node as it tells the quorum: its id, directory id and control address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Myself {
    pub node_id: u64,
    pub directory_id: DirectoryId,
    pub control_addr: String,
}

/// What a controller node asks of the quorum so that its membership names it as it is: as a
/// voter, its directory id (a static quorum's voter at its first start) and address
/// (UpdateRaftVoter, as a Kafka voter does when its endpoints change); otherwise, to observe
/// (a node started with bootstrap servers, a wiped one, one removed and forgotten).
pub(crate) fn keeper_request(m: &Membership, me: &Myself) -> Option<ControlRequest> {
    let known = m.get_node(&me.node_id);
    let as_it_is = known.is_some_and(|n| {
        n.directory_id == Some(me.directory_id) && n.control_addr == me.control_addr
    });
    if as_it_is {
        return None;
    }
    if is_voter(m, me.node_id) {
        // Its own log naming it with another directory id stops it at start; none: say it.
        if known.and_then(|n| n.directory_id).is_some_and(|d| d != me.directory_id) {
            return None;
        }
        return Some(ControlRequest::UpdateVoter(UpdateVoterRequest {
            node_id: me.node_id,
            directory_id: me.directory_id,
            control_addr: me.control_addr.clone(),
        }));
    }
    Some(ControlRequest::JoinQuorum(JoinQuorumRequest {
        node_id: me.node_id,
        directory_id: me.directory_id,
        control_addr: me.control_addr.clone(),
    }))
}

/// A new voter is caught up once it has every entry the leader had when it was asked to add it
/// (what openraft's blocking `add_learner` waits for): from then on it keeps up as the other
/// followers do, and the voter change itself commits without waiting for it.
pub(crate) fn caught_up(matched: Option<&Option<LogId>>, target_index: u64) -> bool {
    matches!(matched, Some(Some(m)) if m.index >= target_index)
}

/// A broker-only node as the leader last heard of it (its heartbeats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BrokerSeen {
    /// The metadata offset it has applied.
    pub offset: u64,
    pub seen_ms: i64,
    /// When it last had everything the leader had applied; -1: not this term.
    pub caught_up_ms: i64,
}

/// Everything DescribeQuorum reports, as the leader has it.
pub(crate) struct QuorumView<'a> {
    pub leader_id: u64,
    pub term: u64,
    pub membership: &'a Membership,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// openraft's replication progress: the last entry each follower has.
    pub matched: &'a BTreeMap<u64, Option<LogId>>,
    /// When each follower last answered (wall ms).
    pub last_answer_ms: &'a dyn Fn(u64) -> Option<i64>,
    /// When each follower last had every entry (wall ms), when it does not now.
    pub caught_up_ms: &'a BTreeMap<u64, i64>,
    /// Registered brokers, and what their heartbeats said.
    pub brokers: &'a BTreeMap<i32, Option<BrokerSeen>>,
    pub now_ms: i64,
}

/// DescribeQuorum's answer: the voters (the leader with them), then every observer: the
/// controller nodes raft replicates to without their vote, and the broker-only nodes.
pub(crate) fn describe(v: &QuorumView<'_>) -> QuorumDescription {
    let end = |index: u64| i64::try_from(index).unwrap_or(i64::MAX).saturating_add(1);
    let replica = |id: u64, node: &ControllerNode| {
        if id == v.leader_id {
            return ReplicaDescription {
                node_id: id,
                directory_id: node.directory_id,
                control_addr: node.control_addr.clone(),
                kind: ReplicaKind::Controller,
                log_end_offset: end(v.last_log_index),
                last_fetch_ms: v.now_ms,
                last_caught_up_ms: v.now_ms,
            };
        }
        let matched = v.matched.get(&id);
        let log_end_offset = match matched {
            Some(Some(m)) => end(m.index),
            // Replicated to, nothing acknowledged yet.
            Some(None) => 0,
            None => -1,
        };
        let last_fetch_ms = (v.last_answer_ms)(id).unwrap_or(-1);
        let last_caught_up_ms = if matches!(matched, Some(Some(m)) if m.index >= v.last_log_index) {
            last_fetch_ms.max(v.caught_up_ms.get(&id).copied().unwrap_or(-1))
        } else {
            v.caught_up_ms.get(&id).copied().unwrap_or(-1)
        };
        ReplicaDescription {
            node_id: id,
            directory_id: node.directory_id,
            control_addr: node.control_addr.clone(),
            kind: ReplicaKind::Controller,
            log_end_offset,
            last_fetch_ms,
            last_caught_up_ms,
        }
    };
    let mut voters = Vec::new();
    let mut observers = Vec::new();
    for (&id, node) in v.membership.nodes() {
        if is_voter(v.membership, id) {
            voters.push(replica(id, node));
        } else {
            observers.push(replica(id, node));
        }
    }
    for (&broker, seen) in v.brokers {
        let Ok(id) = u64::try_from(broker) else { continue };
        // A combined node is reported once, as the controller replica it also is.
        if v.membership.get_node(&id).is_some() {
            continue;
        }
        let (log_end_offset, last_fetch_ms, last_caught_up_ms) = match seen {
            Some(s) => (end(s.offset), s.seen_ms, s.caught_up_ms),
            None => (-1, -1, -1),
        };
        observers.push(ReplicaDescription {
            node_id: id,
            directory_id: None,
            control_addr: String::new(),
            kind: ReplicaKind::Broker,
            log_end_offset,
            last_fetch_ms,
            last_caught_up_ms,
        });
    }
    observers.sort_by_key(|r| r.node_id);
    QuorumDescription {
        leader_id: v.leader_id,
        term: v.term,
        high_watermark: v.applied_index + 1,
        log_end_offset: v.last_log_index + 1,
        voters,
        observers,
        joint: v.membership.get_joint_config().len() > 1,
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    const D1: DirectoryId = DirectoryId([1; 16]);
    const D3: DirectoryId = DirectoryId([3; 16]);
    const WIPED: DirectoryId = DirectoryId([33; 16]);
    const D4: DirectoryId = DirectoryId([4; 16]);

    fn node(id: u64, d: Option<DirectoryId>) -> ControllerNode {
        ControllerNode { control_addr: format!("h:{id}"), directory_id: d }
    }

    /// Voters 1, 2, 3 (2's directory id not known yet), observer 4.
    fn membership() -> Membership {
        let nodes = BTreeMap::from([
            (1, node(1, Some(D1))),
            (2, node(2, None)),
            (3, node(3, Some(D3))),
            (4, node(4, Some(D4))),
        ]);
        Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
    }

    fn join(id: u64, d: DirectoryId) -> JoinQuorumRequest {
        JoinQuorumRequest { node_id: id, directory_id: d, control_addr: format!("h:{id}") }
    }

    #[test]
    fn an_observer_joins_once_and_a_wiped_one_starts_over() {
        let m = membership();
        assert_eq!(
            plan_join(&m, &join(5, DirectoryId([5; 16]))),
            Ok(vec![Change::AddLearner(5, node(5, Some(DirectoryId([5; 16]))))])
        );
        // Already there: nothing to do, however often it asks.
        assert_eq!(plan_join(&m, &join(4, D4)), Ok(vec![]));
        assert_eq!(plan_join(&m, &join(3, D3)), Ok(vec![]), "a voter");
        // Moved: same replica, new address.
        let moved = JoinQuorumRequest { control_addr: "elsewhere:4".into(), ..join(4, D4) };
        let at = ControllerNode { control_addr: "elsewhere:4".into(), directory_id: Some(D4) };
        assert_eq!(plan_join(&m, &moved), Ok(vec![Change::SetNode(4, at)]));
        // A wiped observer is forgotten and added again, never updated in place.
        let wiped = DirectoryId([44; 16]);
        assert_eq!(
            plan_join(&m, &join(4, wiped)),
            Ok(vec![Change::RemoveLearner(4), Change::AddLearner(4, node(4, Some(wiped)))])
        );
    }

    #[test]
    fn a_wiped_voter_cannot_join_as_its_former_self() {
        let m = membership();
        let refused = plan_join(&m, &join(3, WIPED)).expect_err("refused");
        let ControlError::InvalidVoterKey(message) = &refused else { panic!("{refused:?}") };
        assert!(message.contains(&D3.to_string()), "{message}");
        assert!(message.contains("strom cluster remove-voter --node-id 3"), "{message}");
        // A static voter whose directory id is unknown: nobody else may claim it.
        assert!(matches!(
            plan_join(&m, &join(2, WIPED)),
            Err(ControlError::VoterChangeTimedOut(_))
        ));
    }

    #[test]
    fn a_voter_says_its_directory_id_and_address_and_only_its_own() {
        let m = membership();
        let update = |id, d: DirectoryId, addr: &str| UpdateVoterRequest {
            node_id: id,
            directory_id: d,
            control_addr: addr.into(),
        };
        let d2 = DirectoryId([2; 16]);
        assert_eq!(
            plan_update(&m, &update(2, d2, "h:2")),
            Ok(vec![Change::SetNode(2, node(2, Some(d2)))])
        );
        assert_eq!(plan_update(&m, &update(3, D3, "h:3")), Ok(vec![]));
        let moved = ControllerNode { control_addr: "new:3".into(), directory_id: Some(D3) };
        assert_eq!(plan_update(&m, &update(3, D3, "new:3")), Ok(vec![Change::SetNode(3, moved)]));
        assert!(matches!(
            plan_update(&m, &update(3, WIPED, "h:3")),
            Err(ControlError::VoterNotFound(_))
        ));
        assert!(matches!(
            plan_update(&m, &update(4, D4, "h:4")),
            Err(ControlError::VoterNotFound(_))
        ));
        assert!(matches!(
            plan_update(&m, &update(9, D4, "h:9")),
            Err(ControlError::VoterNotFound(_))
        ));
    }

    #[test]
    fn a_voter_is_added_from_an_observer_or_from_where_the_request_says() {
        let m = membership();
        let add = |id, d, addr: Option<&str>| AddVoterRequest {
            node_id: id,
            directory_id: d,
            control_addr: addr.map(String::from),
            timeout_ms: None,
        };
        let plan = plan_add(&m, &add(4, None, None)).expect("an observer");
        assert_eq!(
            plan,
            AddPlan { node_id: 4, node: node(4, Some(D4)), first: vec![], added_observer: false }
        );
        assert!(plan_add(&m, &add(4, Some(D4), Some("h:4"))).is_ok(), "its own, spelled out");
        assert!(matches!(
            plan_add(&m, &add(4, Some(WIPED), None)),
            Err(ControlError::InvalidRequest(_))
        ));
        assert!(matches!(
            plan_add(&m, &add(4, None, Some("x:4"))),
            Err(ControlError::InvalidRequest(_))
        ));
        assert!(matches!(plan_add(&m, &add(3, None, None)), Err(ControlError::DuplicateVoter(_))));
        // Not an observer: the request must say which replica and where.
        let refused = plan_add(&m, &add(5, None, None)).expect_err("unknown node");
        assert!(refused.to_string().contains("controller.quorum_bootstrap_servers"), "{refused}");
        let d5 = DirectoryId([5; 16]);
        let plan = plan_add(&m, &add(5, Some(d5), Some("h:5"))).expect("named");
        assert_eq!(plan.first, vec![Change::AddLearner(5, node(5, Some(d5)))]);
        assert!(plan.added_observer);
    }

    #[test]
    fn a_voter_is_removed_by_id_and_directory_and_never_the_last() {
        let m = membership();
        let remove = |id, d| RemoveVoterRequest { node_id: id, directory_id: d };
        assert_eq!(plan_remove(&m, &remove(3, None), 1), Ok(vec![Change::Demote(3)]));
        assert_eq!(plan_remove(&m, &remove(3, Some(D3)), 1), Ok(vec![Change::Demote(3)]));
        // The leader itself: demoted, then forgotten, so that it steps down.
        assert_eq!(
            plan_remove(&m, &remove(1, None), 1),
            Ok(vec![Change::Demote(1), Change::RemoveLearner(1)])
        );
        assert!(matches!(
            plan_remove(&m, &remove(3, Some(WIPED)), 1),
            Err(ControlError::VoterNotFound(_))
        ));
        assert!(matches!(
            plan_remove(&m, &remove(4, None), 1),
            Err(ControlError::VoterNotFound(_))
        ));
        let alone =
            Membership::new(vec![BTreeSet::from([1])], BTreeMap::from([(1, node(1, Some(D1)))]));
        assert!(matches!(
            plan_remove(&alone, &remove(1, None), 1),
            Err(ControlError::InvalidRequest(_))
        ));
    }

    #[test]
    fn a_joint_configuration_is_finished_first() {
        let joint = Membership::new(
            vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2, 4])],
            BTreeMap::from([
                (1, node(1, None)),
                (2, node(2, None)),
                (3, node(3, None)),
                (4, node(4, None)),
            ]),
        );
        assert_eq!(settle(&joint), Some(Change::FinishJoint(BTreeSet::from([1, 2, 4]))));
        assert_eq!(settle(&membership()), None);
        // In the joint configuration both sets' members are voters.
        assert!(matches!(
            plan_add(
                &joint,
                &AddVoterRequest {
                    node_id: 3,
                    directory_id: None,
                    control_addr: None,
                    timeout_ms: None
                }
            ),
            Err(ControlError::DuplicateVoter(_))
        ));
    }

    #[test]
    fn a_node_asks_for_the_place_it_lacks_and_nothing_once_it_has_it() {
        let m = membership();
        let me = |id: u64, d: DirectoryId| Myself {
            node_id: id,
            directory_id: d,
            control_addr: format!("h:{id}"),
        };
        assert!(keeper_request(&m, &me(1, D1)).is_none(), "a voter as it is");
        assert!(keeper_request(&m, &me(4, D4)).is_none(), "an observer as it is");
        let d2 = DirectoryId([2; 16]);
        assert!(
            matches!(keeper_request(&m, &me(2, d2)), Some(ControlRequest::UpdateVoter(u)) if u.directory_id == d2)
        );
        let moved = Myself { control_addr: "new:1".into(), ..me(1, D1) };
        assert!(matches!(keeper_request(&m, &moved), Some(ControlRequest::UpdateVoter(_))));
        // Not a member (a new or a forgotten node), or an observer under another directory.
        assert!(matches!(keeper_request(&m, &me(5, D4)), Some(ControlRequest::JoinQuorum(_))));
        assert!(matches!(keeper_request(&m, &me(4, WIPED)), Some(ControlRequest::JoinQuorum(_))));
        let empty = Membership::new(vec![], BTreeMap::<u64, ControllerNode>::new());
        assert!(matches!(keeper_request(&empty, &me(5, D4)), Some(ControlRequest::JoinQuorum(_))));
    }

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    #[test]
    fn a_new_voter_is_caught_up_once_it_has_what_the_leader_had() {
        assert!(!caught_up(None, 10), "not replicated to");
        assert!(!caught_up(Some(&None), 10), "nothing acknowledged");
        assert!(!caught_up(Some(&Some(log_id(9))), 10));
        assert!(caught_up(Some(&Some(log_id(10))), 10));
    }

    #[test]
    fn describe_reports_voters_observers_and_their_lag() {
        let m = membership();
        let matched = BTreeMap::from([(2, Some(log_id(40))), (3, Some(log_id(35))), (4, None)]);
        let answers = |id: u64| (id == 2 || id == 3).then_some(1_000 + id as i64);
        let caught_up_ms = BTreeMap::from([(3, 900)]);
        let brokers = BTreeMap::from([
            (1, Some(BrokerSeen { offset: 40, seen_ms: 990, caught_up_ms: 990 })),
            (7, Some(BrokerSeen { offset: 38, seen_ms: 995, caught_up_ms: 950 })),
            (8, None),
        ]);
        let d = describe(&QuorumView {
            leader_id: 1,
            term: 5,
            membership: &m,
            last_log_index: 40,
            applied_index: 40,
            matched: &matched,
            last_answer_ms: &answers,
            caught_up_ms: &caught_up_ms,
            brokers: &brokers,
            now_ms: 2_000,
        });
        assert_eq!(
            (d.leader_id, d.term, d.high_watermark, d.log_end_offset, d.joint),
            (1, 5, 41, 41, false)
        );
        let row = |r: &ReplicaDescription| {
            (r.node_id, r.kind, r.log_end_offset, r.lag(41), r.last_fetch_ms, r.last_caught_up_ms)
        };
        let voters: Vec<_> = d.voters.iter().map(row).collect();
        assert_eq!(
            voters,
            vec![
                (1, ReplicaKind::Controller, 41, Some(0), 2_000, 2_000),
                (2, ReplicaKind::Controller, 41, Some(0), 1_002, 1_002),
                (3, ReplicaKind::Controller, 36, Some(5), 1_003, 900),
            ]
        );
        let observers: Vec<_> = d.observers.iter().map(row).collect();
        assert_eq!(
            observers,
            vec![
                (4, ReplicaKind::Controller, 0, Some(41), -1, -1),
                (7, ReplicaKind::Broker, 39, Some(2), 995, 950),
                (8, ReplicaKind::Broker, -1, None, -1, -1),
            ]
        );
        assert_eq!(d.voters[2].directory_id, Some(D3));
        assert_eq!(d.voters[1].directory_id, None, "not said yet");
    }
}
