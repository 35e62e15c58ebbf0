//! One consumer group's membership state machine (Empty → PreparingRebalance →
//! CompletingRebalance → Stable, and Dead), as Kafka's classic GroupCoordinator runs it.
//! No IO, no clock, no randomness: `now_ms` and the member-id generator are passed in, and every
//! reply the shell must send comes back as an [`Effect`] addressed to the request it answers.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Members one group may hold; a JoinGroup over it gets GROUP_MAX_SIZE_REACHED. Kafka's
/// `group.max.size` defaults to unbounded; a broker must not be.
pub(crate) const MEMBERS_PER_GROUP_MAX: usize = 1_000;
/// Members that were handed an id (MEMBER_ID_REQUIRED) but have not joined with it yet. Each costs
/// memory until its session timeout, and any client can mint them.
pub(crate) const PENDING_MEMBERS_PER_GROUP_MAX: usize = MEMBERS_PER_GROUP_MAX;
/// Protocols (assignors) one member may offer; real clients offer a handful.
pub(crate) const PROTOCOLS_PER_MEMBER_MAX: usize = 32;
const _: () = assert!(PENDING_MEMBERS_PER_GROUP_MAX <= MEMBERS_PER_GROUP_MAX);

/// The reason a group request is refused, named after Kafka's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupError {
    CoordinatorNotAvailable,
    IllegalGeneration,
    InconsistentGroupProtocol,
    UnknownMemberId,
    InvalidSessionTimeout,
    RebalanceInProgress,
    InvalidRequest,
    NonEmptyGroup,
    MemberIdRequired,
    GroupMaxSizeReached,
    FencedInstanceId,
    /// This broker no longer leads the group's `__consumer_offsets` partition.
    NotCoordinator,
    /// DeleteGroups / OffsetDelete of a group that does not exist.
    GroupIdNotFound,
    /// OffsetDelete of a topic the group's members consume.
    GroupSubscribedToTopic,
    /// KIP-848: a heartbeat at an epoch the member does not have; it must rejoin.
    FencedMemberEpoch,
    /// KIP-848: a static member's instance id is held by a member that has not left.
    UnreleasedInstanceId,
    /// KIP-848: a server assignor the coordinator does not run.
    UnsupportedAssignor,
    /// KIP-848: an offset commit or fetch at another epoch than the member's.
    StaleMemberEpoch,
    /// KIP-848: a regex subscription that does not compile (or is too large).
    InvalidRegularExpression,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupState {
    /// No members; committed offsets may still exist.
    Empty,
    /// Waiting for members to (re)join before a new generation.
    PreparingRebalance,
    /// The generation is chosen; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// Deleted; the shell drops it.
    Dead,
}

/// Broker settings that shape a group, with Kafka's config names.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupConfig {
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group waits
    /// for more members, so that a group starting up does not rebalance once per member.
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms`
    pub session_timeout_min_ms: i32,
    /// `group.max.session.timeout.ms`
    pub session_timeout_max_ms: i32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: 3_000,
            session_timeout_min_ms: 6_000,
            session_timeout_max_ms: 1_800_000,
        }
    }
}

/// The shell's handle on one request in flight; every request gets exactly one reply effect
/// addressed to it, possibly later (JoinGroup and SyncGroup wait for the rest of the group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ReplyTo(pub u64);

/// One protocol (assignor) a member supports, with its subscription metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Protocol {
    pub name: String,
    pub metadata: Bytes,
}

#[derive(Clone, Debug)]
pub(crate) struct JoinRequest {
    /// Empty for a member joining for the first time.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// In the member's order of preference.
    pub protocols: Vec<Protocol>,
    /// JoinGroup v4+: a new dynamic member must first be given an id and come back with it, so
    /// that a member whose first response was lost does not leave a ghost behind.
    pub require_known_member_id: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct SyncRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub generation_id: i32,
    /// SyncGroup v5+ repeats these; when present they must match the group's.
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// Only the leader's count: member id → assignment.
    pub assignments: Vec<(String, Bytes)>,
}

/// A member as the leader sees it in its JoinGroup response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct JoinResponse {
    pub member_id: String,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    /// Filled only for the leader, which computes the assignment.
    pub members: Vec<JoinedMember>,
    /// JoinGroup v9+ (KIP-814): the leader gets the members but must not assign, because a
    /// static leader replaced itself without a rebalance and the assignment stands.
    pub skip_assignment: bool,
    pub error: Option<GroupError>,
}

impl JoinResponse {
    /// A JoinGroup refused with `error`: no generation, no leader, no members.
    pub fn refused(member_id: String, error: GroupError) -> JoinResponse {
        JoinResponse {
            member_id,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            members: Vec::new(),
            skip_assignment: false,
            error: Some(error),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyncResponse {
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
    pub error: Option<GroupError>,
}

/// The outcome for one member named in a LeaveGroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeftMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub error: Option<GroupError>,
}

/// One member as `__consumer_offsets` stores it (GroupMetadataValue).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemberRecord {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the chosen protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// The group metadata to write to `__consumer_offsets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupRecord {
    pub group_id: String,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp_ms: i64,
    pub members: Vec<MemberRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    Join {
        to: ReplyTo,
        response: JoinResponse,
    },
    Sync {
        to: ReplyTo,
        response: SyncResponse,
    },
    Heartbeat {
        to: ReplyTo,
        error: Option<GroupError>,
    },
    Leave {
        to: ReplyTo,
        error: Option<GroupError>,
        members: Vec<LeftMember>,
    },
    /// Append this to `__consumer_offsets`, then report the outcome with
    /// [`Group::persisted`]. Assignments are handed out only once the generation is durable, so a
    /// new coordinator never loads an older generation than the one members run.
    PersistGroup(GroupRecord),
    /// Append the group's tombstone: the group was deleted.
    DeleteGroup {
        group_id: String,
    },
}

#[derive(Clone, Debug)]
struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<Protocol>,
    assignment: Bytes,
    last_heartbeat_ms: i64,
    /// A JoinGroup waiting for the join phase to end.
    awaiting_join: Option<ReplyTo>,
    /// A SyncGroup waiting for the leader's assignment.
    awaiting_sync: Option<ReplyTo>,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, protocols: &[Protocol]) -> bool {
        self.protocols == protocols
    }

    fn expired(&self, now_ms: i64) -> bool {
        self.last_heartbeat_ms + i64::from(self.session_timeout_ms) <= now_ms
    }
}

/// One consumer group.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    group_id: String,
    config: GroupConfig,
    state: GroupState,
    generation_id: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// `group.instance.id` → member id of the static member holding it.
    static_members: BTreeMap<String, String>,
    /// Ids handed out with MEMBER_ID_REQUIRED → when they lapse if unused.
    pending_members: BTreeMap<String, i64>,
    /// When the join phase ends with whoever has joined.
    join_deadline_ms: Option<i64>,
    /// During the first rebalance of an empty group: each newcomer pushes the deadline out by
    /// the initial delay, but never past this cap (the rebalance timeout).
    initial_delay_cap_ms: Option<i64>,
    /// The leader's assignment, waiting for its [`Effect::PersistGroup`] to be written.
    pending_assignment: Option<BTreeMap<String, Bytes>>,
}

impl Group {
    pub fn new(group_id: String, config: GroupConfig) -> Group {
        Group {
            group_id,
            config,
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            join_deadline_ms: None,
            initial_delay_cap_ms: None,
            pending_assignment: None,
        }
    }

    /// A group as its last [`Effect::PersistGroup`] left it, for a coordinator taking over its
    /// partition. Members get a whole session from `now_ms` to heartbeat the new coordinator.
    pub fn load(record: GroupRecord, config: GroupConfig, now_ms: i64) -> Group {
        let mut group = Group::new(record.group_id, config);
        group.generation_id = record.generation_id;
        group.protocol_type = record.protocol_type;
        group.protocol_name = record.protocol_name.clone();
        let protocol = record.protocol_name.unwrap_or_default();
        for m in record.members {
            if let Some(instance) = &m.group_instance_id {
                group.static_members.insert(instance.clone(), m.member_id.clone());
            }
            let member = Member {
                group_instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                protocols: vec![Protocol { name: protocol.clone(), metadata: m.subscription }],
                assignment: m.assignment,
                last_heartbeat_ms: now_ms,
                awaiting_join: None,
                awaiting_sync: None,
            };
            group.members.insert(m.member_id, member);
        }
        if group.members.is_empty() {
            group.protocol_name = None;
        } else {
            group.leader = record.leader.filter(|l| group.members.contains_key(l));
            if group.leader.is_none() {
                group.leader = group.members.keys().next().cloned();
            }
            group.state = GroupState::Stable;
        }
        group
    }

    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    /// Every member with its metadata for the chosen protocol and its assignment, for
    /// DescribeGroups and the admin API.
    pub fn describe_members(&self) -> Vec<MemberRecord> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members
            .iter()
            .map(|(id, m)| MemberRecord {
                member_id: id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                subscription: m.metadata(&protocol),
                assignment: m.assignment.clone(),
            })
            .collect()
    }

    /// May this OffsetCommit write? Kafka's rules for the classic protocol: a commit without a
    /// generation (`generation_id < 0`, an assign()-only consumer or an admin tool) only to a
    /// group with no members; otherwise from a current member of the current generation, and not
    /// while the leader's assignment is outstanding. A good commit counts as a heartbeat.
    pub fn validate_offset_commit(
        &mut self,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        match self.state {
            GroupState::Dead => return Err(GroupError::CoordinatorNotAvailable),
            GroupState::Empty if generation_id < 0 && member_id.is_empty() => return Ok(()),
            _ => {}
        }
        if generation_id < 0 && member_id.is_empty() {
            // A standalone commit to a group whose members own the partitions.
            return Err(GroupError::UnknownMemberId);
        }
        self.check_member(member_id, instance)?;
        if generation_id != self.generation_id {
            return Err(GroupError::IllegalGeneration);
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        self.touch(member_id, now_ms);
        Ok(())
    }

    /// TxnOffsetCommit's check (Kafka's rule): a dead group is not available; a commit that
    /// names a member must come from one, at the group's generation when it names one; a
    /// commit without member or generation (a standalone transactional producer) is accepted
    /// whatever the group's state.
    pub fn validate_txn_offset_commit(
        &self,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if !member_id.is_empty() {
            self.check_member(member_id, instance)?;
        }
        if generation_id >= 0 && generation_id != self.generation_id {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(())
    }

    pub fn state(&self) -> GroupState {
        self.state
    }

    #[cfg(test)]
    pub fn generation_id(&self) -> i32 {
        self.generation_id
    }

    #[cfg(test)]
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    pub fn protocol_name(&self) -> Option<&str> {
        self.protocol_name.as_deref()
    }

    #[cfg(test)]
    pub fn member_ids(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// The earliest time `tick` has something to do, for the shell's timer.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        let sessions = self
            .members
            .values()
            .filter(|m| !self.keeps_alive(m))
            .map(|m| m.last_heartbeat_ms + i64::from(m.session_timeout_ms));
        sessions.chain(self.pending_members.values().copied()).chain(self.join_deadline_ms).min()
    }

    /// A member waiting in the join phase is kept by the rebalance timeout, not its session:
    /// it cannot heartbeat while its JoinGroup is parked.
    fn keeps_alive(&self, m: &Member) -> bool {
        self.state == GroupState::PreparingRebalance && m.awaiting_join.is_some()
    }

    // ---- JoinGroup ----------------------------------------------------------------------

    /// A JoinGroup. `new_member_id` makes a fresh member id from a prefix (the client id, or the
    /// instance id of a static member), e.g. by appending a UUID.
    pub fn join(
        &mut self,
        to: ReplyTo,
        req: JoinRequest,
        now_ms: i64,
        new_member_id: &mut dyn FnMut(&str) -> String,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Err(error) = self.check_join(&req) {
            effects.push(self.join_error(to, req.member_id, error));
            return effects;
        }
        if req.member_id.is_empty() {
            self.join_unknown_member(to, req, now_ms, new_member_id, &mut effects);
        } else {
            self.join_known_member(to, req, now_ms, &mut effects);
        }
        effects
    }

    fn check_join(&self, req: &JoinRequest) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if req.session_timeout_ms < self.config.session_timeout_min_ms
            || req.session_timeout_ms > self.config.session_timeout_max_ms
        {
            return Err(GroupError::InvalidSessionTimeout);
        }
        if req.protocols.len() > PROTOCOLS_PER_MEMBER_MAX {
            return Err(GroupError::InvalidRequest);
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(GroupError::InconsistentGroupProtocol);
        }
        if self.state != GroupState::Empty {
            // The newcomer must share a protocol with every other member; a member rejoining
            // is compared with the others only, so it may switch assignor.
            let others = self.members.iter().filter(|(id, _)| **id != req.member_id);
            let type_ok = self.protocol_type.as_deref() == Some(req.protocol_type.as_str());
            let common = req
                .protocols
                .iter()
                .any(|p| others.clone().all(|(_, m)| m.protocols.iter().any(|q| q.name == p.name)));
            if !type_ok || !common {
                return Err(GroupError::InconsistentGroupProtocol);
            }
        }
        Ok(())
    }

    fn join_unknown_member(
        &mut self,
        to: ReplyTo,
        req: JoinRequest,
        now_ms: i64,
        new_member_id: &mut dyn FnMut(&str) -> String,
        effects: &mut Vec<Effect>,
    ) {
        if let Some(instance) = &req.group_instance_id {
            let prefix = instance.clone();
            if let Some(old) = self.static_members.get(instance).cloned() {
                let member_id = new_member_id(&prefix);
                self.replace_static_member(to, old, member_id, req, now_ms, effects);
                return;
            }
            // Static members skip MEMBER_ID_REQUIRED: their instance id already names them.
            if self.members.len() >= MEMBERS_PER_GROUP_MAX {
                effects.push(self.join_error(to, String::new(), GroupError::GroupMaxSizeReached));
                return;
            }
            let member_id = new_member_id(&prefix);
            self.add_member_and_rebalance(to, member_id, req, now_ms, effects);
            return;
        }
        if self.members.len() + self.pending_members.len() >= MEMBERS_PER_GROUP_MAX
            || (req.require_known_member_id
                && self.pending_members.len() >= PENDING_MEMBERS_PER_GROUP_MAX)
        {
            effects.push(self.join_error(to, String::new(), GroupError::GroupMaxSizeReached));
            return;
        }
        let member_id = new_member_id(&req.client_id);
        if req.require_known_member_id {
            self.pending_members
                .insert(member_id.clone(), now_ms + i64::from(req.session_timeout_ms));
            effects.push(self.join_error(to, member_id, GroupError::MemberIdRequired));
            return;
        }
        self.add_member_and_rebalance(to, member_id, req, now_ms, effects);
    }

    fn join_known_member(
        &mut self,
        to: ReplyTo,
        req: JoinRequest,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) {
        if self.pending_members.remove(&req.member_id).is_some() {
            if self.members.len() >= MEMBERS_PER_GROUP_MAX {
                effects.push(self.join_error(to, req.member_id, GroupError::GroupMaxSizeReached));
                return;
            }
            let member_id = req.member_id.clone();
            self.add_member_and_rebalance(to, member_id, req, now_ms, effects);
            return;
        }
        if let Err(error) = self.check_member(&req.member_id, req.group_instance_id.as_deref()) {
            effects.push(self.join_error(to, req.member_id, error));
            return;
        }
        let member = &self.members[&req.member_id];
        let unchanged = member.same_protocols(&req.protocols);
        let is_leader = self.leader.as_deref() == Some(req.member_id.as_str());
        match self.state {
            GroupState::PreparingRebalance => {
                self.update_member_and_rebalance(to, req, now_ms, effects)
            }
            // A member that lost its JoinGroup response asks again: answer with the current
            // generation rather than start another rebalance.
            GroupState::CompletingRebalance if unchanged => {
                let member_id = req.member_id.clone();
                self.touch(&member_id, now_ms);
                let response = self.join_response(&member_id, is_leader);
                effects.push(Effect::Join { to, response });
            }
            // In Stable the leader rejoining means it wants a new assignment (e.g. the topics
            // it subscribes to changed).
            GroupState::Stable if unchanged && !is_leader => {
                let member_id = req.member_id.clone();
                self.touch(&member_id, now_ms);
                let response = self.join_response(&member_id, false);
                effects.push(Effect::Join { to, response });
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_and_rebalance(to, req, now_ms, effects)
            }
            GroupState::Empty | GroupState::Dead => {
                effects.push(self.join_error(to, req.member_id, GroupError::UnknownMemberId))
            }
        }
    }

    /// KIP-345: a static member restarted and came back with its instance id but no member id.
    /// It takes over the old member's place and assignment; the old id is fenced.
    fn replace_static_member(
        &mut self,
        to: ReplyTo,
        old_id: String,
        new_id: String,
        req: JoinRequest,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) {
        let Some(mut member) = self.members.remove(&old_id) else {
            debug_assert!(false, "static member {old_id} indexed but absent");
            return;
        };
        // Whatever the old incarnation still waits for is answered: it has been replaced.
        if let Some(old_to) = member.awaiting_join.take() {
            effects.push(self.join_error(old_to, old_id.clone(), GroupError::FencedInstanceId));
        }
        if let Some(old_to) = member.awaiting_sync.take() {
            effects.push(sync_error(old_to, GroupError::FencedInstanceId));
        }
        let unchanged = member.same_protocols(&req.protocols);
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.session_timeout_ms = req.session_timeout_ms;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.last_heartbeat_ms = now_ms;
        self.members.insert(new_id.clone(), member);
        if let Some(instance) = &req.group_instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        match self.state {
            GroupState::Stable if unchanged => {
                // Same generation, same assignment: no rebalance. Record the new member id so
                // that a new coordinator knows it too.
                effects.push(Effect::PersistGroup(self.record(now_ms)));
                let is_leader = self.leader.as_deref() == Some(new_id.as_str());
                let mut response = self.join_response(&new_id, is_leader);
                response.skip_assignment = is_leader;
                effects.push(Effect::Join { to, response });
            }
            GroupState::Stable | GroupState::CompletingRebalance => {
                let mut req = req;
                req.member_id = new_id;
                self.update_member_and_rebalance(to, req, now_ms, effects);
            }
            GroupState::PreparingRebalance => {
                let mut req = req;
                req.member_id = new_id;
                self.update_member_and_rebalance(to, req, now_ms, effects);
            }
            GroupState::Empty | GroupState::Dead => {
                debug_assert!(false, "a static member in a group without members");
            }
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        to: ReplyTo,
        member_id: String,
        req: JoinRequest,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) {
        debug_assert!(!self.members.contains_key(&member_id), "member id {member_id} reused");
        if self.state == GroupState::Empty {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(instance) = &req.group_instance_id {
            self.static_members.insert(instance.clone(), member_id.clone());
        }
        self.members.insert(
            member_id.clone(),
            Member {
                group_instance_id: req.group_instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout_ms: req.session_timeout_ms,
                rebalance_timeout_ms: req.rebalance_timeout_ms,
                protocols: req.protocols,
                assignment: Bytes::new(),
                last_heartbeat_ms: now_ms,
                awaiting_join: Some(to),
                awaiting_sync: None,
            },
        );
        if let Some(cap) = self.initial_delay_cap_ms {
            // Another member during the initial delay: wait a little longer for the rest.
            let pushed = now_ms + self.config.initial_rebalance_delay_ms;
            self.join_deadline_ms = Some(pushed.min(cap));
        }
        self.maybe_prepare_rebalance(now_ms, effects);
        self.maybe_complete_join(now_ms, effects);
    }

    fn update_member_and_rebalance(
        &mut self,
        to: ReplyTo,
        req: JoinRequest,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) {
        let Some(member) = self.members.get_mut(&req.member_id) else {
            debug_assert!(false, "updating unknown member {}", req.member_id);
            return;
        };
        let superseded = member.awaiting_join.replace(to);
        member.client_id = req.client_id;
        member.client_host = req.client_host;
        member.session_timeout_ms = req.session_timeout_ms;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.protocols = req.protocols;
        member.last_heartbeat_ms = now_ms;
        if let Some(old_to) = superseded {
            // The client gave up on its earlier JoinGroup and sent another: only the latest
            // one is answered with the generation, the earlier one is told to rejoin.
            effects.push(self.join_error(old_to, req.member_id, GroupError::RebalanceInProgress));
        }
        self.maybe_prepare_rebalance(now_ms, effects);
        self.maybe_complete_join(now_ms, effects);
    }

    // ---- SyncGroup ----------------------------------------------------------------------

    pub fn sync(&mut self, to: ReplyTo, req: SyncRequest, now_ms: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.state == GroupState::Dead {
            effects.push(sync_error(to, GroupError::CoordinatorNotAvailable));
            return effects;
        }
        if let Err(error) = self.check_member(&req.member_id, req.group_instance_id.as_deref()) {
            effects.push(sync_error(to, error));
            return effects;
        }
        if req.generation_id != self.generation_id {
            effects.push(sync_error(to, GroupError::IllegalGeneration));
            return effects;
        }
        let type_mismatch =
            req.protocol_type.as_ref().is_some_and(|t| Some(t) != self.protocol_type.as_ref());
        let name_mismatch =
            req.protocol_name.as_ref().is_some_and(|n| Some(n) != self.protocol_name.as_ref());
        if type_mismatch || name_mismatch {
            effects.push(sync_error(to, GroupError::InconsistentGroupProtocol));
            return effects;
        }
        match self.state {
            GroupState::Empty => effects.push(sync_error(to, GroupError::UnknownMemberId)),
            GroupState::PreparingRebalance => {
                effects.push(sync_error(to, GroupError::RebalanceInProgress))
            }
            GroupState::CompletingRebalance => {
                self.touch(&req.member_id, now_ms);
                let superseded =
                    self.members.get_mut(&req.member_id).and_then(|m| m.awaiting_sync.replace(to));
                if let Some(old_to) = superseded {
                    effects.push(sync_error(old_to, GroupError::RebalanceInProgress));
                }
                let is_leader = self.leader.as_deref() == Some(req.member_id.as_str());
                if is_leader && self.pending_assignment.is_none() {
                    // Only assignments for current members count; anyone the leader left out
                    // gets an empty assignment, as in Kafka.
                    let assignment: BTreeMap<String, Bytes> = req
                        .assignments
                        .into_iter()
                        .filter(|(id, _)| self.members.contains_key(id))
                        .collect();
                    self.pending_assignment = Some(assignment);
                    effects.push(Effect::PersistGroup(self.record(now_ms)));
                }
            }
            GroupState::Stable => {
                self.touch(&req.member_id, now_ms);
                let assignment = self.members[&req.member_id].assignment.clone();
                let response = self.sync_response(assignment);
                effects.push(Effect::Sync { to, response });
            }
            GroupState::Dead => unreachable!("checked above"),
        }
        effects
    }

    /// The shell's report on the last [`Effect::PersistGroup`] of `generation_id`. On success
    /// the generation is handed out and the group is Stable; on failure every member waiting on
    /// SyncGroup gets `error` (the caller's mapping of the write failure) and will rejoin.
    pub fn persisted(&mut self, generation_id: i32, result: Result<(), GroupError>) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.state != GroupState::CompletingRebalance || generation_id != self.generation_id {
            // A write for a generation that has since moved on (or a static member's id swap):
            // nothing waits on it.
            return effects;
        }
        let Some(assignment) = self.pending_assignment.take() else {
            return effects;
        };
        match result {
            Ok(()) => {
                for (id, m) in self.members.iter_mut() {
                    m.assignment = assignment.get(id).cloned().unwrap_or_default();
                }
                let waiting: Vec<(ReplyTo, Bytes)> = self
                    .members
                    .values_mut()
                    .filter_map(|m| m.awaiting_sync.take().map(|to| (to, m.assignment.clone())))
                    .collect();
                for (to, assignment) in waiting {
                    let response = self.sync_response(assignment);
                    effects.push(Effect::Sync { to, response });
                }
                self.transition(GroupState::Stable);
            }
            Err(error) => {
                for m in self.members.values_mut() {
                    m.assignment = Bytes::new();
                    if let Some(to) = m.awaiting_sync.take() {
                        effects.push(sync_error(to, error));
                    }
                }
            }
        }
        effects
    }

    // ---- Heartbeat, LeaveGroup, expiry ------------------------------------------------

    pub fn heartbeat(
        &mut self,
        to: ReplyTo,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now_ms: i64,
    ) -> Vec<Effect> {
        let error = self.heartbeat_error(member_id, group_instance_id, generation_id, now_ms);
        vec![Effect::Heartbeat { to, error }]
    }

    fn heartbeat_error(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now_ms: i64,
    ) -> Option<GroupError> {
        if self.state == GroupState::Dead {
            return Some(GroupError::CoordinatorNotAvailable);
        }
        if let Err(error) = self.check_member(member_id, group_instance_id) {
            return Some(error);
        }
        if generation_id != self.generation_id {
            return Some(GroupError::IllegalGeneration);
        }
        match self.state {
            GroupState::Empty => Some(GroupError::UnknownMemberId),
            // The heartbeat still counts, so that a slow rejoin is not also a session expiry.
            GroupState::PreparingRebalance => {
                self.touch(member_id, now_ms);
                Some(GroupError::RebalanceInProgress)
            }
            // Clients start heartbeating as soon as JoinGroup returns, before SyncGroup.
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.touch(member_id, now_ms);
                None
            }
            GroupState::Dead => unreachable!("checked above"),
        }
    }

    /// A LeaveGroup naming `(member id, group.instance.id)` pairs; a static member may leave by
    /// instance id alone (empty member id).
    pub fn leave(
        &mut self,
        to: ReplyTo,
        leaving: Vec<(String, Option<String>)>,
        now_ms: i64,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.state == GroupState::Dead {
            let error = Some(GroupError::CoordinatorNotAvailable);
            effects.push(Effect::Leave { to, error, members: Vec::new() });
            return effects;
        }
        let mut results = Vec::with_capacity(leaving.len());
        for (member_id, instance) in leaving {
            let resolved = match (&instance, member_id.is_empty()) {
                (Some(i), true) => self.static_members.get(i).cloned(),
                _ => Some(member_id.clone()),
            };
            let error = match resolved {
                None => Some(GroupError::UnknownMemberId),
                Some(id) => match self.check_member(&id, instance.as_deref()) {
                    Err(error) => Some(error),
                    Ok(()) => {
                        self.remove_member(&id, &mut effects);
                        None
                    }
                },
            };
            results.push(LeftMember { member_id, group_instance_id: instance, error });
        }
        effects.push(Effect::Leave { to, error: None, members: results });
        self.after_departure(now_ms, &mut effects);
        effects
    }

    /// Time passes: sessions expire and join phases end.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.pending_members.retain(|_, deadline| *deadline > now_ms);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !self.keeps_alive(m) && m.expired(now_ms))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.remove_member(id, &mut effects);
        }
        if !expired.is_empty() {
            self.after_departure(now_ms, &mut effects);
        }
        if self.state == GroupState::PreparingRebalance {
            if self.join_deadline_ms.is_some_and(|d| d <= now_ms) {
                self.complete_join(now_ms, &mut effects);
            } else {
                // A lapsed pending member id may have been all the join phase waited for.
                self.maybe_complete_join(now_ms, &mut effects);
            }
        }
        effects
    }

    /// DeleteGroups: only an empty group may go.
    pub fn delete(&mut self) -> Result<Vec<Effect>, GroupError> {
        match self.state {
            GroupState::Dead => Err(GroupError::CoordinatorNotAvailable),
            GroupState::Empty => {
                self.transition(GroupState::Dead);
                Ok(vec![Effect::DeleteGroup { group_id: self.group_id.clone() }])
            }
            _ => Err(GroupError::NonEmptyGroup),
        }
    }

    // ---- the state machine's moves ----------------------------------------------------

    fn remove_member(&mut self, member_id: &str, effects: &mut Vec<Effect>) {
        let Some(member) = self.members.remove(member_id) else { return };
        if let Some(instance) = &member.group_instance_id {
            self.static_members.remove(instance);
        }
        if let Some(to) = member.awaiting_join {
            effects.push(self.join_error(to, member_id.to_owned(), GroupError::UnknownMemberId));
        }
        if let Some(to) = member.awaiting_sync {
            effects.push(sync_error(to, GroupError::UnknownMemberId));
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
    }

    /// After members left or expired: the rest must rebalance, or the phase may now be done.
    fn after_departure(&mut self, now_ms: i64, effects: &mut Vec<Effect>) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance(now_ms, effects);
                // With nobody left the join phase is over at once: the group goes Empty.
                self.maybe_complete_join(now_ms, effects);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now_ms, effects),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    fn maybe_prepare_rebalance(&mut self, now_ms: i64, effects: &mut Vec<Effect>) {
        match self.state {
            GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance => {}
            GroupState::PreparingRebalance | GroupState::Dead => return,
        }
        if self.state == GroupState::CompletingRebalance {
            // The generation being synced is abandoned: whoever waits on it must rejoin.
            self.pending_assignment = None;
            for m in self.members.values_mut() {
                if let Some(to) = m.awaiting_sync.take() {
                    effects.push(sync_error(to, GroupError::RebalanceInProgress));
                }
            }
        }
        let rebalance_timeout_ms =
            self.members.values().map(|m| i64::from(m.rebalance_timeout_ms)).max().unwrap_or(0);
        if self.state == GroupState::Empty {
            let delay = self.config.initial_rebalance_delay_ms.min(rebalance_timeout_ms);
            self.join_deadline_ms = Some(now_ms + delay);
            self.initial_delay_cap_ms = (self.config.initial_rebalance_delay_ms > 0)
                .then_some(now_ms + rebalance_timeout_ms);
        } else {
            self.join_deadline_ms = Some(now_ms + rebalance_timeout_ms);
            self.initial_delay_cap_ms = None;
        }
        self.transition(GroupState::PreparingRebalance);
    }

    /// Ends the join phase early once every member has rejoined (never during the initial
    /// delay, whose point is to wait for members not yet known).
    fn maybe_complete_join(&mut self, now_ms: i64, effects: &mut Vec<Effect>) {
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some())
            && self.pending_members.is_empty();
        if self.state == GroupState::PreparingRebalance
            && self.initial_delay_cap_ms.is_none()
            && all_joined
        {
            self.complete_join(now_ms, effects);
        }
    }

    fn complete_join(&mut self, now_ms: i64, effects: &mut Vec<Effect>) {
        debug_assert_eq!(self.state, GroupState::PreparingRebalance);
        // Dynamic members that did not rejoin in time are gone. Static members stay: they may be
        // restarting, and their session timeout decides.
        let absent: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.awaiting_join.is_none() && m.group_instance_id.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &absent {
            self.remove_member(id, effects);
        }
        self.join_deadline_ms = None;
        self.initial_delay_cap_ms = None;
        self.generation_id += 1;
        if !self.members.values().any(|m| m.awaiting_join.is_some()) {
            // Nobody joined: an empty generation, stored so that a new coordinator agrees.
            for id in self.members.keys().cloned().collect::<Vec<_>>() {
                self.remove_member(&id, effects);
            }
            self.protocol_name = None;
            self.leader = None;
            self.transition(GroupState::Empty);
            effects.push(Effect::PersistGroup(self.record(now_ms)));
            return;
        }
        let Some(protocol) = self.select_protocol() else {
            // Cannot happen: every join checks for a common protocol. Rebalance from scratch
            // rather than run a generation with no protocol.
            debug_assert!(false, "no common protocol in group {}", self.group_id);
            return;
        };
        self.protocol_name = Some(protocol);
        let leader_joined = self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.get(l).is_some_and(|m| m.awaiting_join.is_some()));
        if !leader_joined {
            self.leader = self
                .members
                .iter()
                .find(|(_, m)| m.awaiting_join.is_some())
                .map(|(id, _)| id.clone());
        }
        self.transition(GroupState::CompletingRebalance);
        let waiting: Vec<(String, ReplyTo)> = self
            .members
            .iter_mut()
            .filter_map(|(id, m)| {
                m.last_heartbeat_ms = now_ms;
                m.awaiting_join.take().map(|to| (id.clone(), to))
            })
            .collect();
        for (member_id, to) in waiting {
            let is_leader = self.leader.as_deref() == Some(member_id.as_str());
            let response = self.join_response(&member_id, is_leader);
            effects.push(Effect::Join { to, response });
        }
    }

    /// The protocol every member supports that most members prefer; ties go to the name that
    /// sorts first, so that the choice does not depend on map order.
    fn select_protocol(&self) -> Option<String> {
        let mut candidates: Vec<&str> = self
            .members
            .values()
            .next()?
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| {
                self.members.values().all(|m| m.protocols.iter().any(|p| p.name == *name))
            })
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(p) = m.protocols.iter().find(|p| candidates.contains(&p.name.as_str())) {
                *votes.entry(p.name.as_str()).or_default() += 1;
            }
        }
        // max_by_key keeps the last of equal maxima; iterate in reverse to keep the first name.
        votes.iter().rev().max_by_key(|(_, n)| **n).map(|(name, _)| (*name).to_owned())
    }

    fn transition(&mut self, to: GroupState) {
        use GroupState::*;
        let allowed = matches!(
            (self.state, to),
            (Empty, PreparingRebalance)
                | (Empty, Dead)
                | (PreparingRebalance, CompletingRebalance)
                | (PreparingRebalance, Empty)
                | (CompletingRebalance, PreparingRebalance)
                | (CompletingRebalance, Stable)
                | (Stable, PreparingRebalance)
        );
        assert!(allowed, "group {}: no transition {:?} -> {to:?}", self.group_id, self.state);
        self.state = to;
    }

    // ---- helpers ----------------------------------------------------------------------

    /// The member exists and, if the request names an instance id, it is the one holding it.
    fn check_member(&self, member_id: &str, instance: Option<&str>) -> Result<(), GroupError> {
        if let Some(instance) = instance {
            match self.static_members.get(instance) {
                Some(holder) if holder != member_id => return Err(GroupError::FencedInstanceId),
                Some(_) => return Ok(()),
                None => return Err(GroupError::UnknownMemberId),
            }
        }
        if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err(GroupError::UnknownMemberId)
        }
    }

    fn touch(&mut self, member_id: &str, now_ms: i64) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat_ms = now_ms;
        }
    }

    fn join_response(&self, member_id: &str, is_leader: bool) -> JoinResponse {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let members = if is_leader {
            self.members
                .iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            member_id: member_id.to_owned(),
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            members,
            skip_assignment: false,
            error: None,
        }
    }

    fn join_error(&self, to: ReplyTo, member_id: String, error: GroupError) -> Effect {
        Effect::Join { to, response: JoinResponse::refused(member_id, error) }
    }

    fn sync_response(&self, assignment: Bytes) -> SyncResponse {
        SyncResponse {
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
            error: None,
        }
    }

    fn record(&self, now_ms: i64) -> GroupRecord {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let pending = self.pending_assignment.as_ref();
        GroupRecord {
            group_id: self.group_id.clone(),
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            current_state_timestamp_ms: now_ms,
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberRecord {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(&protocol),
                    assignment: pending
                        .map(|a| a.get(id).cloned().unwrap_or_default())
                        .unwrap_or_else(|| m.assignment.clone()),
                })
                .collect(),
        }
    }
}

fn sync_error(to: ReplyTo, error: GroupError) -> Effect {
    Effect::Sync {
        to,
        response: SyncResponse {
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
            error: Some(error),
        },
    }
}
