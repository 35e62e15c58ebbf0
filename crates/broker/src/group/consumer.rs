//! One consumer group of KIP-848's protocol (ConsumerGroupHeartbeat): the coordinator, not a
//! member, computes the group's target assignment with a server-side assignor, and each member's
//! assignment moves towards it one heartbeat at a time. A member first gives up what it must
//! revoke and says so in a later heartbeat; a partition goes to its new owner only once its old
//! owner has released it, so no partition is ever owned by two members at once.
//!
//! Epochs: the group epoch counts changes of membership, subscriptions and the subscribed
//! topics' partitions; the target assignment carries the group epoch it was computed for; a
//! member's epoch is the target epoch its assignment last converged to. A heartbeat carrying an
//! epoch the member does not have is fenced (FENCED_MEMBER_EPOCH), and the member rejoins.
//!
//! No IO, no clock, no randomness, as [`super::state`]: `now_ms`, the subscribed topics'
//! metadata and the member-id generator are passed in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use strom_metadata::TopicId;

use super::state::GroupError;

/// `group.consumer.session.timeout.ms`'s default.
pub(crate) const SESSION_TIMEOUT_MS_DEFAULT: i32 = 45_000;
/// `group.consumer.heartbeat.interval.ms`'s default.
pub(crate) const HEARTBEAT_INTERVAL_MS_DEFAULT: i32 = 5_000;
/// Members one consumer group may hold (`group.consumer.max.size`; Kafka's default is
/// unbounded, a broker must not be).
pub(crate) const CONSUMER_MEMBERS_MAX: usize = 1_000;
/// Topics one member may subscribe to by name.
pub(crate) const SUBSCRIBED_TOPICS_MAX: usize = 10_000;
/// The assignors the coordinator runs (`group.consumer.assignors`), the first the default.
pub(crate) const ASSIGNORS: [&str; 2] = ["uniform", "range"];

/// A heartbeat's member epoch that joins the group.
pub(crate) const JOIN_EPOCH: i32 = 0;
/// A heartbeat's member epoch that leaves the group.
pub(crate) const LEAVE_EPOCH: i32 = -1;
/// A static member's epoch that leaves for now, keeping its assignment for its instance id.
pub(crate) const STATIC_LEAVE_EPOCH: i32 = -2;

/// Broker settings of consumer groups, with Kafka's config names.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConsumerGroupConfig {
    /// `group.consumer.session.timeout.ms`
    pub session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms`
    pub heartbeat_interval_ms: i32,
    /// `group.consumer.max.size`
    pub max_size: usize,
}

impl Default for ConsumerGroupConfig {
    fn default() -> Self {
        ConsumerGroupConfig {
            session_timeout_ms: SESSION_TIMEOUT_MS_DEFAULT,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS_DEFAULT,
            max_size: CONSUMER_MEMBERS_MAX,
        }
    }
}

/// Partitions by topic id.
pub(crate) type Assignment = BTreeMap<TopicId, BTreeSet<i32>>;

/// A topic as the coordinator's metadata image shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TopicMeta {
    pub id: TopicId,
    pub partitions: i32,
}

/// Looks topics up by name in the current metadata.
pub(crate) trait Topics {
    fn topic(&self, name: &str) -> Option<TopicMeta>;
    /// Every topic a regex subscription may match (internal topics left out).
    fn each_name(&self, f: &mut dyn FnMut(&str));
}

impl Topics for BTreeMap<String, TopicMeta> {
    fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.get(name).cloned()
    }

    fn each_name(&self, f: &mut dyn FnMut(&str)) {
        self.keys().for_each(|name| f(name));
    }
}

/// The topics of a metadata image, as a consumer group's assignor reads them.
pub(crate) struct ImageTopics(pub Arc<strom_metadata::MetadataImage>);

impl Topics for ImageTopics {
    fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.0.topic(name).map(|t| TopicMeta { id: t.id, partitions: t.partitions.len() as i32 })
    }

    fn each_name(&self, f: &mut dyn FnMut(&str)) {
        for name in self.0.topic_names.values() {
            if !strom_metadata::config::is_internal_topic(name) {
                f(name);
            }
        }
    }
}

/// Longest regex subscription accepted, in bytes.
pub(crate) const REGEX_LEN_MAX: usize = 4_096;
/// Memory one compiled regex may take.
const REGEX_SIZE_MAX: usize = 1 << 20;

/// A member's regex subscription, compiled (the whole topic name must match, as Kafka's).
fn compile(pattern: &str) -> Result<regex::Regex, GroupError> {
    if pattern.len() > REGEX_LEN_MAX {
        return Err(GroupError::InvalidRegularExpression);
    }
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_MAX)
        .build()
        .map_err(|_| GroupError::InvalidRegularExpression)
}

/// A ConsumerGroupHeartbeat, its optional fields `None` when the member left them unchanged.
#[derive(Clone, Debug, Default)]
pub(crate) struct Heartbeat {
    /// v0: empty on the first heartbeat (the coordinator gives one); v1: chosen by the member.
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    /// A regular expression topic names must match (RE2 syntax, the whole name); `Some("")`
    /// drops it.
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// The partitions the member owns now.
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeartbeatAnswer {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The member's whole assignment, when it is new to the member.
    pub assignment: Option<Assignment>,
}

/// Where a member's assignment stands against the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemberState {
    /// It has its target assignment (as far as it is free).
    Stable,
    /// It must give up `revoking` before it moves on.
    UnrevokedPartitions,
    /// Part of its target is still owned by others; it gets it once they let go.
    UnreleasedPartitions,
}

#[derive(Clone, Debug)]
pub(crate) struct ConsumerMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub subscribed: BTreeSet<String>,
    /// The regex subscription and the topics it matched at the member's last heartbeat.
    pub regex: Option<regex::Regex>,
    pub matched: BTreeSet<String>,
    pub server_assignor: Option<String>,
    pub member_epoch: i32,
    pub previous_member_epoch: i32,
    pub state: MemberState,
    /// What the member owns (as the coordinator has told it).
    pub assigned: Assignment,
    /// What it was told to give up and has not yet confirmed.
    pub revoking: Assignment,
    /// When its session ends without a heartbeat.
    pub session_deadline_ms: i64,
    /// When it is fenced unless it has confirmed its revocations.
    pub revocation_deadline_ms: Option<i64>,
    /// A static member that left for now (epoch -2): kept, without a session, for its
    /// instance id to come back.
    pub left_for_now: bool,
}

impl ConsumerMember {
    /// The topics it subscribes to, by name or by its regex.
    pub fn subscription(&self) -> impl Iterator<Item = &String> {
        self.subscribed.iter().chain(self.matched.iter())
    }
}

/// KIP-848's group states, as ConsumerGroupDescribe names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConsumerGroupState {
    Empty,
    Assigning,
    Reconciling,
    Stable,
}

impl ConsumerGroupState {
    pub fn name(self) -> &'static str {
        match self {
            ConsumerGroupState::Empty => "Empty",
            ConsumerGroupState::Assigning => "Assigning",
            ConsumerGroupState::Reconciling => "Reconciling",
            ConsumerGroupState::Stable => "Stable",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct ConsumerGroup {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    /// The target assignment, by member id.
    pub target: BTreeMap<String, Assignment>,
    /// The subscribed topics' partition counts the target was computed from.
    pub topics_seen: BTreeMap<String, TopicMeta>,
    /// The assignor the group uses (the members' preference, else the default).
    pub assignor: String,
}

impl ConsumerGroup {
    pub fn new() -> ConsumerGroup {
        ConsumerGroup { assignor: ASSIGNORS[0].to_owned(), ..ConsumerGroup::default() }
    }

    pub fn state(&self) -> ConsumerGroupState {
        if self.members.is_empty() {
            ConsumerGroupState::Empty
        } else if self.assignment_epoch < self.group_epoch {
            ConsumerGroupState::Assigning
        } else if self
            .members
            .values()
            .any(|m| m.member_epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            ConsumerGroupState::Reconciling
        } else {
            ConsumerGroupState::Stable
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The topics any member subscribes to (OffsetDelete refuses those).
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members.values().flat_map(|m| m.subscription().cloned()).collect()
    }

    /// Handles one heartbeat; `new_member_id` mints an id for a v0 member that has none.
    pub fn heartbeat(
        &mut self,
        req: Heartbeat,
        now_ms: i64,
        topics: &dyn Topics,
        config: &ConsumerGroupConfig,
        new_member_id: &mut dyn FnMut() -> String,
    ) -> Result<HeartbeatAnswer, GroupError> {
        let member_id = match req.member_epoch {
            LEAVE_EPOCH | STATIC_LEAVE_EPOCH => return self.leave(req),
            JOIN_EPOCH => self.join(&req, now_ms, config, new_member_id)?,
            epoch if epoch > 0 => self.known(&req, now_ms, config)?,
            _ => return Err(GroupError::InvalidRequest),
        };
        self.resolve_regex(&member_id, topics);
        self.refresh_target(topics);
        let before = self.members.get(&member_id).map(|m| m.assigned.clone());
        let joined = req.member_epoch == JOIN_EPOCH;
        let member = self.reconcile(&member_id, req.owned.as_ref(), now_ms)?;
        let changed = before.as_ref() != Some(&member.assigned);
        // The whole assignment goes out when it changed, on a join, and when what the member
        // says it owns differs from it (a lost answer).
        let differs = req.owned.as_ref().is_some_and(|o| *o != member.assigned);
        let assignment = (changed || joined || differs).then(|| member.assigned.clone());
        Ok(HeartbeatAnswer {
            member_id: member.member_id.clone(),
            member_epoch: member.member_epoch,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            assignment,
        })
    }

    /// Removes the members whose session or revocation time ran out; their partitions go to
    /// the others with the next target.
    pub fn tick(&mut self, now_ms: i64) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.session_deadline_ms <= now_ms
                    || m.revocation_deadline_ms.is_some_and(|d| d <= now_ms)
            })
            .map(|m| m.member_id.clone())
            .collect();
        for id in &expired {
            self.remove(id);
        }
        expired
    }

    /// When the next member times out, if any does.
    pub fn next_deadline(&self) -> Option<i64> {
        self.members
            .values()
            .flat_map(|m| std::iter::once(m.session_deadline_ms).chain(m.revocation_deadline_ms))
            .min()
    }

    /// OffsetCommit's check for a member of this group (KIP-848): the member must exist and
    /// commit at its current epoch.
    pub fn validate_offset_commit(
        &self,
        member_id: &str,
        member_epoch: i32,
    ) -> Result<(), GroupError> {
        if member_id.is_empty() && member_epoch < 0 {
            // A commit from outside the group (an admin tool): only while nobody consumes.
            return if self.members.is_empty() { Ok(()) } else { Err(GroupError::UnknownMemberId) };
        }
        let member = self.members.get(member_id).ok_or(GroupError::UnknownMemberId)?;
        if member_epoch != member.member_epoch {
            return Err(GroupError::StaleMemberEpoch);
        }
        Ok(())
    }

    /// OffsetFetch v9's check (KIP-848): a member that names itself must be at its epoch.
    pub fn validate_offset_fetch(
        &self,
        member_id: &str,
        member_epoch: i32,
    ) -> Result<(), GroupError> {
        if member_id.is_empty() || member_epoch < 0 {
            return Ok(());
        }
        let member = self.members.get(member_id).ok_or(GroupError::UnknownMemberId)?;
        if member_epoch != member.member_epoch {
            return Err(GroupError::StaleMemberEpoch);
        }
        Ok(())
    }

    fn leave(&mut self, req: Heartbeat) -> Result<HeartbeatAnswer, GroupError> {
        let member_id = match (&req.instance_id, req.member_id.is_empty()) {
            (Some(instance), _) => {
                self.member_of_instance(instance).ok_or(GroupError::UnknownMemberId)?
            }
            (None, false) => req.member_id.clone(),
            (None, true) => return Err(GroupError::UnknownMemberId),
        };
        let member = self.members.get_mut(&member_id).ok_or(GroupError::UnknownMemberId)?;
        if req.member_epoch == STATIC_LEAVE_EPOCH && member.instance_id.is_some() {
            // It comes back within its session with the same instance id and assignment.
            member.left_for_now = true;
        } else {
            self.remove(&member_id);
        }
        Ok(HeartbeatAnswer {
            member_id,
            member_epoch: req.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        })
    }

    /// A member joining (epoch 0); its id.
    fn join(
        &mut self,
        req: &Heartbeat,
        now_ms: i64,
        config: &ConsumerGroupConfig,
        new_member_id: &mut dyn FnMut() -> String,
    ) -> Result<String, GroupError> {
        // The first heartbeat carries the whole member: subscription, rebalance timeout and
        // (empty) owned partitions.
        let regex = match req.subscribed_topic_regex.as_deref() {
            None | Some("") => None,
            Some(pattern) => Some(compile(pattern)?),
        };
        let no_names = Vec::new();
        let names = match (&req.subscribed_topic_names, &regex) {
            (Some(names), _) => names,
            (None, Some(_)) => &no_names,
            (None, None) => return Err(GroupError::InvalidRequest),
        };
        if req.rebalance_timeout_ms <= 0 || req.owned.as_ref().is_some_and(|o| !o.is_empty()) {
            return Err(GroupError::InvalidRequest);
        }
        if names.len() > SUBSCRIBED_TOPICS_MAX {
            return Err(GroupError::InvalidRequest);
        }
        if let Some(assignor) = &req.server_assignor {
            if !ASSIGNORS.contains(&assignor.as_str()) {
                return Err(GroupError::UnsupportedAssignor);
            }
        }
        let subscribed: BTreeSet<String> = names.iter().cloned().collect();
        let session_deadline_ms = now_ms + i64::from(config.session_timeout_ms);
        // A static member coming back takes over its former self, assignment and epoch.
        if let Some(instance) = &req.instance_id {
            if let Some(old_id) = self.member_of_instance(instance) {
                let old = &self.members[&old_id];
                if !old.left_for_now && old.member_id != req.member_id {
                    return Err(GroupError::UnreleasedInstanceId);
                }
                let mut member = self.members.remove(&old_id).ok_or(GroupError::UnknownMemberId)?;
                let member_id =
                    if req.member_id.is_empty() { new_member_id() } else { req.member_id.clone() };
                if let Some(target) = self.target.remove(&old_id) {
                    self.target.insert(member_id.clone(), target);
                }
                if member.subscribed != subscribed || member.server_assignor != req.server_assignor
                {
                    self.group_epoch += 1;
                }
                member.member_id = member_id.clone();
                member.left_for_now = false;
                member.subscribed = subscribed;
                member.regex = regex;
                member.server_assignor = req.server_assignor.clone();
                member.rebalance_timeout_ms = req.rebalance_timeout_ms;
                member.rack_id = req.rack_id.clone();
                member.client_id = req.client_id.clone();
                member.client_host = req.client_host.clone();
                member.session_deadline_ms = session_deadline_ms;
                self.members.insert(member_id.clone(), member);
                return Ok(member_id);
            }
        }
        let member_id =
            if req.member_id.is_empty() { new_member_id() } else { req.member_id.clone() };
        if let Some(existing) = self.members.get_mut(&member_id) {
            // Its earlier join's answer was lost, or it restarted with its id: it starts over
            // from nothing owned.
            existing.session_deadline_ms = session_deadline_ms;
            if existing.subscribed != subscribed {
                existing.subscribed = subscribed;
                self.group_epoch += 1;
            }
            existing.regex = regex;
            existing.assigned.clear();
            existing.revoking.clear();
            existing.member_epoch = 0;
            existing.state = MemberState::Stable;
            return Ok(member_id);
        }
        if self.members.len() >= config.max_size {
            return Err(GroupError::GroupMaxSizeReached);
        }
        self.members.insert(
            member_id.clone(),
            ConsumerMember {
                member_id: member_id.clone(),
                instance_id: req.instance_id.clone(),
                rack_id: req.rack_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                rebalance_timeout_ms: req.rebalance_timeout_ms,
                subscribed,
                regex,
                matched: BTreeSet::new(),
                server_assignor: req.server_assignor.clone(),
                member_epoch: 0,
                previous_member_epoch: -1,
                state: MemberState::Stable,
                assigned: Assignment::new(),
                revoking: Assignment::new(),
                session_deadline_ms,
                revocation_deadline_ms: None,
                left_for_now: false,
            },
        );
        self.group_epoch += 1;
        Ok(member_id)
    }

    /// A heartbeat of a member that has joined: its epoch checked, its session renewed and
    /// its subscription updated; its id.
    fn known(
        &mut self,
        req: &Heartbeat,
        now_ms: i64,
        config: &ConsumerGroupConfig,
    ) -> Result<String, GroupError> {
        let member = self.members.get_mut(&req.member_id).ok_or(GroupError::UnknownMemberId)?;
        if member.left_for_now {
            return Err(GroupError::UnknownMemberId);
        }
        if req.instance_id.is_some() && req.instance_id != member.instance_id {
            return Err(GroupError::FencedInstanceId);
        }
        if req.member_epoch != member.member_epoch {
            // The answer that moved it to its current epoch was lost: the previous epoch is
            // accepted while what it owns is a part of what it was given.
            let lost_answer = req.member_epoch == member.previous_member_epoch
                && req.owned.as_ref().is_some_and(|owned| within(owned, &member.assigned));
            if !lost_answer {
                return Err(GroupError::FencedMemberEpoch);
            }
        }
        member.session_deadline_ms = now_ms + i64::from(config.session_timeout_ms);
        if req.rebalance_timeout_ms > 0 {
            member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        }
        if let Some(rack) = &req.rack_id {
            member.rack_id = Some(rack.clone());
        }
        let mut bump = false;
        if let Some(names) = &req.subscribed_topic_names {
            if names.len() > SUBSCRIBED_TOPICS_MAX {
                return Err(GroupError::InvalidRequest);
            }
            let subscribed: BTreeSet<String> = names.iter().cloned().collect();
            if subscribed != member.subscribed {
                member.subscribed = subscribed;
                bump = true;
            }
        }
        if let Some(pattern) = &req.subscribed_topic_regex {
            let same =
                member.regex.as_ref().map(|r| r.as_str()) == Some(&format!("^(?:{pattern})$"));
            if !same {
                // The matched topics follow at this heartbeat's resolve.
                member.regex = if pattern.is_empty() { None } else { Some(compile(pattern)?) };
            }
        }
        if let Some(assignor) = &req.server_assignor {
            if !ASSIGNORS.contains(&assignor.as_str()) {
                return Err(GroupError::UnsupportedAssignor);
            }
            if member.server_assignor.as_deref() != Some(assignor) {
                member.server_assignor = Some(assignor.clone());
                bump = true;
            }
        }
        if bump {
            self.group_epoch += 1;
        }
        Ok(req.member_id.clone())
    }

    fn member_of_instance(&self, instance: &str) -> Option<String> {
        self.members
            .values()
            .find(|m| m.instance_id.as_deref() == Some(instance))
            .map(|m| m.member_id.clone())
    }

    fn remove(&mut self, member_id: &str) {
        if self.members.remove(member_id).is_some() {
            self.target.remove(member_id);
            self.group_epoch += 1;
        }
    }

    /// Matches `member_id`'s regex against the topics now; a different match is a changed
    /// subscription. Costs one match per topic, at each heartbeat of a regex member.
    fn resolve_regex(&mut self, member_id: &str, topics: &dyn Topics) {
        let Some(member) = self.members.get_mut(member_id) else { return };
        let mut matched = BTreeSet::new();
        if let Some(regex) = &member.regex {
            topics.each_name(&mut |name| {
                if regex.is_match(name) {
                    matched.insert(name.to_owned());
                }
            });
        }
        if matched != member.matched {
            member.matched = matched;
            if self.assignment_epoch == self.group_epoch {
                self.group_epoch += 1;
            }
        }
    }

    /// Recomputes the target assignment when the group epoch moved past it or a subscribed
    /// topic changed its partitions (a topic created, deleted or grown bumps the group epoch).
    fn refresh_target(&mut self, topics: &dyn Topics) {
        let wanted: BTreeSet<&String> =
            self.members.values().flat_map(ConsumerMember::subscription).collect();
        let seen: BTreeMap<String, TopicMeta> = wanted
            .into_iter()
            .filter_map(|name| topics.topic(name).map(|t| (name.clone(), t)))
            .collect();
        if seen != self.topics_seen {
            self.topics_seen = seen;
            // One bump per change: a join that brought the topic in has bumped it already.
            if self.assignment_epoch == self.group_epoch {
                self.group_epoch += 1;
            }
        }
        if self.assignment_epoch == self.group_epoch {
            return;
        }
        self.assignor = self
            .members
            .values()
            .filter_map(|m| m.server_assignor.clone())
            .next()
            .unwrap_or_else(|| ASSIGNORS[0].to_owned());
        let subscriptions: BTreeMap<&str, Vec<&TopicMeta>> = self
            .members
            .values()
            .map(|m| {
                let topics = m.subscription().filter_map(|t| self.topics_seen.get(t)).collect();
                (m.member_id.as_str(), topics)
            })
            .collect();
        self.target = if self.assignor == "range" {
            assign_range(&subscriptions)
        } else {
            assign_uniform(&subscriptions, &self.target)
        };
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves `member_id` towards its target as far as it can now (Kafka's
    /// CurrentAssignmentBuilder): revocations first, then what other members have released.
    fn reconcile(
        &mut self,
        member_id: &str,
        owned: Option<&Assignment>,
        now_ms: i64,
    ) -> Result<&ConsumerMember, GroupError> {
        let target_epoch = self.assignment_epoch;
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        // Partitions others hold (owned or still being revoked), which this member must not
        // get yet.
        let mut held_by_others: BTreeSet<(TopicId, i32)> = BTreeSet::new();
        for other in self.members.values().filter(|m| m.member_id != member_id) {
            for (topic, parts) in other.assigned.iter().chain(other.revoking.iter()) {
                held_by_others.extend(parts.iter().map(|&p| (*topic, p)));
            }
        }
        let member = self.members.get_mut(member_id).ok_or(GroupError::UnknownMemberId)?;
        if member.state == MemberState::UnrevokedPartitions {
            let confirmed = owned.is_some_and(|o| disjoint(o, &member.revoking));
            if !confirmed {
                return Ok(member);
            }
            member.revoking.clear();
            member.revocation_deadline_ms = None;
            member.state = MemberState::Stable;
        }
        if member.member_epoch == target_epoch && member.state == MemberState::Stable {
            return Ok(member);
        }
        // What it keeps, and what it must give up first.
        let keep = intersect(&member.assigned, &target);
        let revoke = subtract(&member.assigned, &target);
        if !revoke.is_empty() {
            member.assigned = keep;
            member.revoking = revoke;
            member.state = MemberState::UnrevokedPartitions;
            member.revocation_deadline_ms = Some(now_ms + i64::from(member.rebalance_timeout_ms));
            return Ok(member);
        }
        let mut next = keep;
        let mut unreleased = false;
        for (topic, parts) in &target {
            for &p in parts {
                if held_by_others.contains(&(*topic, p)) {
                    unreleased = true;
                } else {
                    next.entry(*topic).or_default().insert(p);
                }
            }
        }
        member.assigned = next;
        member.state =
            if unreleased { MemberState::UnreleasedPartitions } else { MemberState::Stable };
        if member.member_epoch != target_epoch {
            member.previous_member_epoch = member.member_epoch;
            member.member_epoch = target_epoch;
        }
        Ok(member)
    }
}

fn within(small: &Assignment, big: &Assignment) -> bool {
    small.iter().all(|(t, parts)| big.get(t).is_some_and(|b| parts.is_subset(b)))
}

fn disjoint(a: &Assignment, b: &Assignment) -> bool {
    a.iter().all(|(t, parts)| b.get(t).is_none_or(|other| parts.is_disjoint(other)))
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, parts) in a {
        if let Some(other) = b.get(t) {
            let both: BTreeSet<i32> = parts.intersection(other).copied().collect();
            if !both.is_empty() {
                out.insert(*t, both);
            }
        }
    }
    out
}

fn subtract(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, parts) in a {
        let rest: BTreeSet<i32> = match b.get(t) {
            Some(other) => parts.difference(other).copied().collect(),
            None => parts.clone(),
        };
        if !rest.is_empty() {
            out.insert(*t, rest);
        }
    }
    out
}

/// The `uniform` assignor: every subscribed partition to one subscribed member, counts as even
/// as the subscriptions allow, and as many partitions as possible left where `previous` had
/// them (each member keeps up to its fair share).
fn assign_uniform(
    subscriptions: &BTreeMap<&str, Vec<&TopicMeta>>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut eligible: BTreeMap<(TopicId, i32), Vec<&str>> = BTreeMap::new();
    for (member, topics) in subscriptions {
        for t in topics {
            for p in 0..t.partitions.max(0) {
                eligible.entry((t.id, p)).or_default().push(member);
            }
        }
    }
    let members = subscriptions.len().max(1);
    let fair = eligible.len().div_ceil(members);
    let mut out: BTreeMap<String, Assignment> =
        subscriptions.keys().map(|m| (m.to_string(), Assignment::new())).collect();
    let mut count: BTreeMap<&str, usize> = subscriptions.keys().map(|m| (*m, 0)).collect();
    let mut unassigned = Vec::new();
    for (&(topic, p), candidates) in &eligible {
        let keeper = candidates.iter().find(|m| {
            previous.get(**m).is_some_and(|a| a.get(&topic).is_some_and(|s| s.contains(&p)))
                && count[**m] < fair
        });
        match keeper {
            Some(m) => {
                out.entry(m.to_string()).or_default().entry(topic).or_default().insert(p);
                *count.entry(m).or_default() += 1;
            }
            None => unassigned.push((topic, p)),
        }
    }
    for (topic, p) in unassigned {
        let candidates = &eligible[&(topic, p)];
        if let Some(m) = candidates.iter().min_by_key(|m| (count[**m], **m)) {
            out.entry(m.to_string()).or_default().entry(topic).or_default().insert(p);
            *count.entry(m).or_default() += 1;
        }
    }
    out
}

/// The `range` assignor: per topic, its subscribed members in id order get consecutive ranges
/// of partitions, the first ones one more when the count does not divide.
fn assign_range(subscriptions: &BTreeMap<&str, Vec<&TopicMeta>>) -> BTreeMap<String, Assignment> {
    let mut by_topic: BTreeMap<TopicId, (i32, Vec<&str>)> = BTreeMap::new();
    for (member, topics) in subscriptions {
        for t in topics {
            by_topic.entry(t.id).or_insert_with(|| (t.partitions, Vec::new())).1.push(member);
        }
    }
    let mut out: BTreeMap<String, Assignment> =
        subscriptions.keys().map(|m| (m.to_string(), Assignment::new())).collect();
    for (topic, (partitions, members)) in by_topic {
        let n = members.len() as i32;
        let (each, extra) = (partitions.max(0) / n, partitions.max(0) % n);
        let mut next = 0;
        for (i, m) in members.iter().enumerate() {
            let take = each + i32::from((i as i32) < extra);
            if take > 0 {
                out.entry(m.to_string()).or_default().insert(topic, (next..next + take).collect());
            }
            next += take;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "orders";

    fn topics(partitions: i32) -> BTreeMap<String, TopicMeta> {
        let meta = TopicMeta { id: TopicId([7; 16]), partitions };
        BTreeMap::from([(TOPIC.to_owned(), meta)])
    }

    /// A member as a client keeps it: its id, epoch and what it owns.
    #[derive(Clone, Debug, Default)]
    struct Client {
        id: String,
        epoch: i32,
        owned: Assignment,
    }

    struct Sim {
        group: ConsumerGroup,
        topics: BTreeMap<String, TopicMeta>,
        config: ConsumerGroupConfig,
        now: i64,
        minted: u32,
    }

    impl Sim {
        fn new(partitions: i32) -> Sim {
            Sim {
                group: ConsumerGroup::new(),
                topics: topics(partitions),
                config: ConsumerGroupConfig::default(),
                now: 1_000,
                minted: 0,
            }
        }

        fn send(&mut self, req: Heartbeat) -> Result<HeartbeatAnswer, GroupError> {
            let minted = &mut self.minted;
            let mut mint = || {
                *minted += 1;
                format!("minted-{minted}")
            };
            self.group.heartbeat(req, self.now, &self.topics, &self.config, &mut mint)
        }

        fn join(&mut self, id: &str) -> Client {
            let req = Heartbeat {
                member_id: id.to_owned(),
                member_epoch: JOIN_EPOCH,
                rebalance_timeout_ms: 30_000,
                subscribed_topic_names: Some(vec![TOPIC.to_owned()]),
                owned: Some(Assignment::new()),
                ..Heartbeat::default()
            };
            let answer = self.send(req).expect("join");
            let mut client = Client { id: answer.member_id.clone(), ..Client::default() };
            apply(&mut client, &answer);
            client
        }

        /// One heartbeat of `client`, which then takes its answer as a client does.
        fn beat(&mut self, client: &mut Client) -> Result<HeartbeatAnswer, GroupError> {
            let req = Heartbeat {
                member_id: client.id.clone(),
                member_epoch: client.epoch,
                rebalance_timeout_ms: -1,
                owned: Some(client.owned.clone()),
                ..Heartbeat::default()
            };
            let answer = self.send(req)?;
            apply(client, &answer);
            Ok(answer)
        }

        /// Rounds of heartbeats of every client until nothing changes; checks after each one
        /// that no partition is owned by two clients.
        fn settle(&mut self, clients: &mut [Client]) {
            for _ in 0..20 {
                let before: Vec<(i32, Assignment)> =
                    clients.iter().map(|c| (c.epoch, c.owned.clone())).collect();
                for i in 0..clients.len() {
                    let mut c = clients[i].clone();
                    self.beat(&mut c).expect("heartbeat");
                    clients[i] = c;
                    assert_owned_once(clients);
                }
                let after: Vec<(i32, Assignment)> =
                    clients.iter().map(|c| (c.epoch, c.owned.clone())).collect();
                if before == after && self.group.state() == ConsumerGroupState::Stable {
                    return;
                }
            }
            panic!("the group did not settle: {:?}", self.group.state());
        }
    }

    fn apply(client: &mut Client, answer: &HeartbeatAnswer) {
        client.epoch = answer.member_epoch;
        if let Some(assignment) = &answer.assignment {
            client.owned = assignment.clone();
        }
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    fn assert_owned_once(clients: &[Client]) {
        let mut seen = BTreeSet::new();
        for c in clients {
            for (t, parts) in &c.owned {
                for p in parts {
                    assert!(seen.insert((*t, *p)), "partition {p} owned twice: {clients:?}");
                }
            }
        }
    }

    fn assert_covers(clients: &[Client], partitions: usize) {
        let total: usize = clients.iter().map(|c| count(&c.owned)).sum();
        assert_eq!(total, partitions, "{clients:?}");
    }

    #[test]
    fn members_join_and_split_the_partitions_evenly() {
        let mut sim = Sim::new(6);
        let mut clients = vec![sim.join("a")];
        assert_eq!(count(&clients[0].owned), 6, "a lone member owns everything");
        assert_eq!(clients[0].epoch, 1);
        clients.push(sim.join("b"));
        clients.push(sim.join("c"));
        sim.settle(&mut clients);
        assert_covers(&clients, 6);
        for c in &clients {
            assert_eq!(count(&c.owned), 2, "{clients:?}");
            assert_eq!(c.epoch, sim.group.group_epoch);
        }
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_revoked_it() {
        let mut sim = Sim::new(4);
        let mut a = sim.join("a");
        let mut b = sim.join("b");
        // b's join bumped the epoch; a has not heartbeat yet, so b gets nothing a holds.
        assert!(b.owned.is_empty(), "{b:?}");
        let answer = sim.beat(&mut a).unwrap();
        // a is told to keep two partitions: it must revoke the other two first.
        assert_eq!(count(&a.owned), 2);
        assert_eq!(answer.member_epoch, 1, "a keeps its epoch until it has revoked");
        assert_eq!(sim.group.members["a"].state, MemberState::UnrevokedPartitions);
        // b still gets nothing: a has not confirmed.
        let mut stale_b = b.clone();
        stale_b.owned = Assignment::new();
        sim.beat(&mut b).unwrap();
        assert!(b.owned.is_empty());
        // a confirms (its owned partitions no longer include the revoked ones).
        sim.beat(&mut a).unwrap();
        assert_eq!(a.epoch, 2);
        sim.beat(&mut b).unwrap();
        assert_eq!(count(&b.owned), 2);
        assert_eq!(b.epoch, 2);
        let clients = [a, b];
        assert_owned_once(&clients);
        assert_covers(&clients, 4);
    }

    #[test]
    fn leaving_and_timing_out_hand_partitions_to_the_rest() {
        let mut sim = Sim::new(6);
        let mut clients = vec![sim.join("a"), sim.join("b"), sim.join("c")];
        sim.settle(&mut clients);
        let leave =
            Heartbeat { member_id: "c".into(), member_epoch: LEAVE_EPOCH, ..Heartbeat::default() };
        assert_eq!(sim.send(leave).unwrap().member_epoch, LEAVE_EPOCH);
        clients.pop();
        sim.settle(&mut clients);
        assert_covers(&clients, 6);
        // b goes silent past its session: a ends up with everything.
        sim.now += i64::from(SESSION_TIMEOUT_MS_DEFAULT) - 1;
        sim.beat(&mut clients[0]).unwrap();
        sim.now += 2;
        assert_eq!(sim.group.tick(sim.now), vec!["b".to_owned()]);
        let mut rest = vec![clients[0].clone()];
        sim.settle(&mut rest);
        assert_covers(&rest, 6);
        // b's next heartbeat is refused: it must rejoin.
        assert_eq!(sim.beat(&mut clients[1]).unwrap_err(), GroupError::UnknownMemberId);
    }

    #[test]
    fn a_member_that_never_revokes_is_removed_after_its_rebalance_timeout() {
        let mut sim = Sim::new(2);
        let mut a = sim.join("a");
        let _b = sim.join("b");
        sim.beat(&mut a).unwrap();
        assert_eq!(sim.group.members["a"].state, MemberState::UnrevokedPartitions);
        // Past its rebalance timeout (30 s), within b's session (45 s).
        sim.now += 30_001;
        assert_eq!(sim.group.tick(sim.now), vec!["a".to_owned()]);
    }

    #[test]
    fn wrong_epochs_are_fenced_and_a_lost_answer_is_forgiven() {
        let mut sim = Sim::new(2);
        let mut a = sim.join("a");
        let mut wrong = a.clone();
        wrong.epoch = 7;
        assert_eq!(sim.beat(&mut wrong).unwrap_err(), GroupError::FencedMemberEpoch);
        // b joins; a revokes one partition and moves to epoch 2, but that answer is lost.
        let mut b = sim.join("b");
        sim.beat(&mut a).unwrap();
        let before = a.clone();
        sim.beat(&mut a).unwrap();
        assert_eq!(a.epoch, 2);
        let mut lost = before.clone();
        let answer = sim.beat(&mut lost).expect("the previous epoch with owned ⊆ assigned");
        assert_eq!(answer.member_epoch, 2);
        // Owning more than it was given at that epoch is not forgiven.
        let mut greedy = before;
        greedy.epoch = 1;
        greedy.owned.entry(TopicId([7; 16])).or_default().extend([0, 1]);
        assert_eq!(sim.beat(&mut greedy).unwrap_err(), GroupError::FencedMemberEpoch);
        sim.beat(&mut b).unwrap();
        assert_owned_once(&[a, b]);
    }

    #[test]
    fn joins_must_carry_the_whole_member() {
        let mut sim = Sim::new(1);
        let no_subscription = Heartbeat {
            member_id: "x".into(),
            member_epoch: 0,
            rebalance_timeout_ms: 1_000,
            owned: Some(Assignment::new()),
            ..Heartbeat::default()
        };
        assert_eq!(sim.send(no_subscription.clone()).unwrap_err(), GroupError::InvalidRequest);
        let bad_assignor = Heartbeat {
            subscribed_topic_names: Some(vec![TOPIC.into()]),
            server_assignor: Some("sticky-ish".into()),
            ..no_subscription.clone()
        };
        assert_eq!(sim.send(bad_assignor).unwrap_err(), GroupError::UnsupportedAssignor);
        let minted = Heartbeat {
            member_id: String::new(),
            subscribed_topic_names: Some(vec![TOPIC.into()]),
            ..no_subscription
        };
        let answer = sim.send(minted).unwrap();
        assert_eq!(answer.member_id, "minted-1", "a v0 member without an id is given one");
        assert_eq!(
            sim.send(Heartbeat {
                member_epoch: 3,
                member_id: "nobody".into(),
                ..Heartbeat::default()
            })
            .unwrap_err(),
            GroupError::UnknownMemberId
        );
        assert_eq!(
            sim.send(Heartbeat { member_epoch: -5, ..Heartbeat::default() }).unwrap_err(),
            GroupError::InvalidRequest
        );
    }

    #[test]
    fn the_range_assignor_gives_consecutive_partitions() {
        let mut sim = Sim::new(5);
        let join = |id: &str| Heartbeat {
            member_id: id.to_owned(),
            member_epoch: 0,
            rebalance_timeout_ms: 30_000,
            subscribed_topic_names: Some(vec![TOPIC.to_owned()]),
            server_assignor: Some("range".into()),
            owned: Some(Assignment::new()),
            ..Heartbeat::default()
        };
        sim.send(join("a")).unwrap();
        sim.send(join("b")).unwrap();
        sim.group.refresh_target(&sim.topics);
        let id = TopicId([7; 16]);
        assert_eq!(sim.group.target["a"][&id], BTreeSet::from([0, 1, 2]));
        assert_eq!(sim.group.target["b"][&id], BTreeSet::from([3, 4]));
    }

    #[test]
    fn more_partitions_bump_the_epoch_and_are_assigned() {
        let mut sim = Sim::new(2);
        let mut clients = vec![sim.join("a"), sim.join("b")];
        sim.settle(&mut clients);
        let epoch = sim.group.group_epoch;
        sim.topics = topics(6);
        sim.settle(&mut clients);
        assert!(sim.group.group_epoch > epoch);
        assert_covers(&clients, 6);
    }

    #[test]
    fn a_static_member_comes_back_to_its_assignment() {
        let mut sim = Sim::new(4);
        let join = |id: &str| Heartbeat {
            member_id: id.to_owned(),
            member_epoch: 0,
            instance_id: Some(format!("instance-{}", &id[..1])),
            rebalance_timeout_ms: 30_000,
            subscribed_topic_names: Some(vec![TOPIC.to_owned()]),
            owned: Some(Assignment::new()),
            ..Heartbeat::default()
        };
        let a = sim.send(join("a")).unwrap();
        let mut clients = vec![
            Client { id: "a".into(), epoch: a.member_epoch, owned: a.assignment.unwrap() },
            Client::default(),
        ];
        let b = sim.send(join("b")).unwrap();
        clients[1] = Client { id: "b".into(), epoch: b.member_epoch, owned: b.assignment.unwrap() };
        sim.settle(&mut clients);
        let (epoch, owned) = (sim.group.group_epoch, clients[1].owned.clone());
        let leave = Heartbeat {
            member_id: "b".into(),
            member_epoch: STATIC_LEAVE_EPOCH,
            instance_id: Some("instance-b".into()),
            ..Heartbeat::default()
        };
        sim.send(leave).unwrap();
        // Another process can't take the instance id while b is a member: here b left for
        // now, so its new incarnation (new member id) takes b's place and assignment.
        let back = sim.send(join("b2")).unwrap();
        assert_eq!(back.member_id, "b2");
        assert_eq!(back.assignment.as_ref(), Some(&owned), "the same partitions, no rebalance");
        assert_eq!(sim.group.group_epoch, epoch, "no epoch bump");
        let taken = sim.send(join("b3"));
        assert_eq!(taken.unwrap_err(), GroupError::UnreleasedInstanceId);
    }

    #[test]
    fn offset_commits_need_the_members_current_epoch() {
        let mut sim = Sim::new(2);
        assert_eq!(sim.group.validate_offset_commit("", -1), Ok(()));
        let a = sim.join("a");
        assert_eq!(sim.group.validate_offset_commit("a", a.epoch), Ok(()));
        assert_eq!(
            sim.group.validate_offset_commit("a", a.epoch - 1),
            Err(GroupError::StaleMemberEpoch)
        );
        assert_eq!(sim.group.validate_offset_commit("z", 1), Err(GroupError::UnknownMemberId));
        assert_eq!(sim.group.validate_offset_commit("", -1), Err(GroupError::UnknownMemberId));
        assert_eq!(sim.group.validate_offset_fetch("", -1), Ok(()));
        assert_eq!(sim.group.validate_offset_fetch("a", a.epoch), Ok(()));
        assert_eq!(sim.group.validate_offset_fetch("a", 9), Err(GroupError::StaleMemberEpoch));
        assert_eq!(sim.group.validate_offset_fetch("z", 1), Err(GroupError::UnknownMemberId));
    }

    #[test]
    fn a_regex_subscription_follows_the_topics_that_match() {
        let mut sim = Sim::new(4);
        let meta = |b: u8, partitions| TopicMeta { id: TopicId([b; 16]), partitions };
        sim.topics.insert("orders-eu".into(), meta(8, 2));
        sim.topics.insert("payments".into(), meta(9, 3));
        let join = Heartbeat {
            member_id: "r".into(),
            member_epoch: 0,
            rebalance_timeout_ms: 30_000,
            subscribed_topic_regex: Some("orders.*".into()),
            owned: Some(Assignment::new()),
            ..Heartbeat::default()
        };
        let answer = sim.send(join.clone()).unwrap();
        let owned = answer.assignment.unwrap();
        assert_eq!(owned.len(), 2, "orders and orders-eu, not payments: {owned:?}");
        assert_eq!(count(&owned), 6);
        let mut client = Client { id: "r".into(), epoch: answer.member_epoch, owned };
        // A new matching topic is picked up at the next heartbeat.
        sim.topics.insert("orders-us".into(), meta(10, 1));
        let epoch = sim.group.group_epoch;
        sim.beat(&mut client).unwrap();
        assert!(sim.group.group_epoch > epoch);
        assert_eq!(count(&client.owned), 7);
        // Only whole names match, and a bad pattern is refused.
        let partial = Heartbeat {
            member_id: "p".into(),
            subscribed_topic_regex: Some("order".into()),
            ..join.clone()
        };
        assert_eq!(sim.send(partial).unwrap().assignment, Some(Assignment::new()));
        for bad in ["(", &"a".repeat(REGEX_LEN_MAX + 1)] {
            let req = Heartbeat {
                member_id: "b".into(),
                subscribed_topic_regex: Some(bad.to_owned()),
                ..join.clone()
            };
            assert_eq!(sim.send(req).unwrap_err(), GroupError::InvalidRegularExpression);
        }
    }
}
