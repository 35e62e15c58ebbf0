//! The quorum's membership changes (KIP-853) in the active-controller task: AddRaftVoter,
//! RemoveRaftVoter, UpdateRaftVoter, an observer's join and DescribeQuorum, planned by
//! `membership` and proposed through raft here, one at a time, between metadata decisions;
//! and [`keep_membership`], the task of every controller node that asks the quorum for the
//! place its membership lacks.
//!
//! A voter is added in two steps: as an observer (raft learner), which the leader replicates
//! to, then, once it has everything the leader had when it was asked, as a voter. The task
//! goes on deciding requests meanwhile; only other voter changes are refused
//! (REQUEST_TIMED_OUT, as Kafka) until it is done or the wait runs out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{RaftMetrics, ServerState};
use strom_metadata::control::{BrokerHeartbeatRequest, ControlRequest, ControlResponse};
use strom_metadata::quorum::{AddVoterRequest, QuorumDescription};
use strom_metadata::{ControlError, ControllerClient};
use tokio::sync::{oneshot, watch};

use super::{ActiveController, EVENT_QUEUE_MAX};
use crate::membership::{
    caught_up, describe, keeper_request, plan_add, plan_join, plan_remove, plan_update, settle,
    AddPlan, BrokerSeen, Change, Myself, QuorumView, VOTER_CATCH_UP_WAIT_MS_MAX,
};
use crate::network::{wall_ms, Contacts};
use crate::relay::RelayClient;
use crate::types::{ControllerNode, Membership};

/// How often the task looks whether a voter being added has caught up.
pub(super) const VOTER_CHECK_MS: u64 = 50;

/// How often a controller node looks at its own place in the membership; after a refusal
/// it asks again less often, up to the max.
pub const KEEPER_INTERVAL_MS: u64 = 1_000;
pub const KEEPER_BACKOFF_MS_MAX: u64 = 10_000;

const _: () = assert!(KEEPER_INTERVAL_MS <= KEEPER_BACKOFF_MS_MAX);

type Reply = oneshot::Sender<Result<ControlResponse, ControlError>>;

/// A voter being added: waiting for it to catch up.
struct Adding {
    plan: AddPlan,
    /// The leader's last log index when it was asked.
    target_index: u64,
    deadline: tokio::time::Instant,
    waited_ms: u64,
    reply: Reply,
}

/// The active controller's state for the quorum's membership.
pub(super) struct QuorumOps {
    contacts: Contacts,
    /// When each follower last had every entry of the leader (wall ms), this term.
    caught_up_ms: BTreeMap<u64, i64>,
    /// What each registered broker's heartbeats said, this term.
    brokers: BTreeMap<i32, BrokerSeen>,
    adding: Option<Adding>,
}

impl QuorumOps {
    pub(super) fn new(contacts: Contacts) -> QuorumOps {
        QuorumOps {
            contacts,
            caught_up_ms: BTreeMap::new(),
            brokers: BTreeMap::new(),
            adding: None,
        }
    }

    /// A voter is being added.
    pub(super) fn adding(&self) -> bool {
        self.adding.is_some()
    }

    fn busy(&self) -> Result<(), ControlError> {
        match &self.adding {
            None => Ok(()),
            Some(a) => Err(ControlError::VoterChangeTimedOut(format!(
                "node {} is being added as a voter, and the quorum makes one voter change at a \
                 time: ask again once it is done",
                a.plan.node_id
            ))),
        }
    }
}

/// openraft's refusal of a membership change, as the controller's.
fn change_error(e: RaftError<u64, ClientWriteError<u64, ControllerNode>>) -> ControlError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ControlError::OutcomeUnknown(
            "leadership was lost during the membership change; look at the quorum (strom \
             cluster describe) before asking again"
                .into(),
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(e),
        )) => ControlError::VoterChangeTimedOut(format!(
            "the previous membership change has not committed yet ({e}); ask again shortly"
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ControlError::InvalidRequest(e.to_string())
        }
        RaftError::Fatal(e) => ControlError::ControllerUnavailable(e.to_string()),
    }
}

impl ActiveController {
    /// A quorum request: answered now, or, for a voter being added, once it has caught up.
    pub(super) async fn quorum_request(&mut self, request: ControlRequest, reply: Reply) {
        let answer = match &request {
            ControlRequest::AddVoter(r) => match self.start_adding(r).await {
                Ok((plan, target_index, waited_ms)) => {
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(waited_ms);
                    self.quorum.adding =
                        Some(Adding { plan, target_index, deadline, waited_ms, reply });
                    // Often caught up already (an observer that joined earlier).
                    self.check_new_voter().await;
                    return;
                }
                Err(e) => Err(e),
            },
            ControlRequest::RemoveVoter(r) => {
                let leader = self.node_id;
                self.change_quorum(|m| plan_remove(m, r, leader)).await
            }
            ControlRequest::UpdateVoter(r) => self.change_quorum(|m| plan_update(m, r)).await,
            ControlRequest::JoinQuorum(r) => self.change_quorum(|m| plan_join(m, r)).await,
            ControlRequest::DescribeQuorum => self.describe_quorum().await,
            other => Err(ControlError::InvalidRequest(format!(
                "{other:?} is not a request about the metadata quorum"
            ))),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = reply.send(answer.map(ControlResponse::Quorum));
    }

    /// The membership this leader has appended last (committed, once `leading` returned).
    fn membership(&self) -> Membership {
        self.raft.metrics().borrow().membership_config.membership().clone()
    }

    /// Plans against the membership and proposes what it takes; a joint configuration left by
    /// a lost leader is finished first.
    async fn change_quorum(
        &mut self,
        plan: impl Fn(&Membership) -> Result<Vec<Change>, ControlError>,
    ) -> Result<QuorumDescription, ControlError> {
        self.leading().await?;
        let mut membership = self.membership();
        let mut changes = plan(&membership)?;
        if !changes.is_empty() {
            self.quorum.busy()?;
            if let Some(finish) = settle(&membership) {
                self.apply_change(&finish).await?;
                membership = self.membership();
                changes = plan(&membership)?;
            }
            for change in &changes {
                self.apply_change(change).await?;
            }
        }
        // Not `describe_quorum`: a leader that removed itself is stepping down now.
        Ok(self.describe_now())
    }

    /// Proposes one membership change and waits (bounded) for it to commit, taking later
    /// events off the queue meanwhile as a metadata commit does.
    async fn apply_change(&mut self, change: &Change) -> Result<(), ControlError> {
        tracing::info!(node_id = self.node_id, ?change, "metadata quorum membership change");
        let raft = self.raft.clone();
        let members = change.to_openraft();
        let write = async move { raft.change_membership(members, true).await };
        tokio::pin!(write);
        let deadline = tokio::time::sleep(self.commit_wait);
        tokio::pin!(deadline);
        let written = loop {
            tokio::select! {
                biased;
                written = &mut write => break written,
                _ = &mut deadline => {
                    return Err(ControlError::OutcomeUnknown(format!(
                        "the membership change ({change:?}) did not commit within {} ms",
                        self.commit_wait.as_millis()
                    )))
                }
                event = self.events.recv(),
                    if !self.events_closed && self.backlog.len() < EVENT_QUEUE_MAX =>
                {
                    match event {
                        Some(event) => self.take_early(event),
                        None => self.events_closed = true,
                    }
                }
            }
        };
        written.map(|_| ()).map_err(change_error)
    }

    /// AddRaftVoter's first step: checks, then the observer added (or its entry completed).
    /// Returns the plan, the log index the new voter must reach and how long it may take.
    async fn start_adding(
        &mut self,
        r: &AddVoterRequest,
    ) -> Result<(AddPlan, u64, u64), ControlError> {
        self.leading().await?;
        self.quorum.busy()?;
        let membership = self.membership();
        let mut plan = plan_add(&membership, r)?;
        if let Some(finish) = settle(&membership) {
            self.apply_change(&finish).await?;
            plan = plan_add(&self.membership(), r)?;
        }
        for change in &plan.first {
            self.apply_change(change).await?;
        }
        let target_index = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let waited_ms =
            r.timeout_ms.map_or(VOTER_CATCH_UP_WAIT_MS_MAX, |t| t.min(VOTER_CATCH_UP_WAIT_MS_MAX));
        tracing::info!(
            node_id = self.node_id,
            new_voter = plan.node_id,
            target_index,
            waited_ms,
            "adding a voter: waiting for it to catch up"
        );
        Ok((plan, target_index, waited_ms))
    }

    /// Promotes the voter being added once it has caught up, or gives up at its deadline (an
    /// observer added for it is forgotten again).
    pub(super) async fn check_new_voter(&mut self) {
        let Some(adding) = &self.quorum.adding else { return };
        let metrics = self.raft.metrics().borrow().clone();
        let id = adding.plan.node_id;
        let matched = metrics.replication.as_ref().and_then(|r| r.get(&id));
        let ready = caught_up(matched, adding.target_index);
        let lost = metrics.state != ServerState::Leader;
        if !ready && !lost && tokio::time::Instant::now() < adding.deadline {
            return;
        }
        let Some(adding) = self.quorum.adding.take() else { return };
        let answer = if lost {
            // Nothing was promoted: the next leader may be asked again.
            Err(ControlError::NotController)
        } else if ready {
            match self.apply_change(&Change::Promote(id)).await {
                Ok(()) => {
                    tracing::info!(node_id = self.node_id, new_voter = id, "voter added");
                    self.describe_quorum().await
                }
                Err(e) => Err(e),
            }
        } else {
            if adding.plan.added_observer {
                if let Err(e) = self.apply_change(&Change::RemoveLearner(id)).await {
                    tracing::warn!(node_id = self.node_id, observer = id, error = %e,
                        "cannot forget the observer that did not catch up");
                }
            }
            let has = match matched {
                Some(Some(m)) => format!("has the metadata log up to offset {}", m.index),
                Some(None) => "has acknowledged nothing yet".to_string(),
                None => "is not replicated to".to_string(),
            };
            Err(ControlError::VoterChangeTimedOut(format!(
                "node {id} did not catch up within {} ms: it {has}, the leader had {} when \
                 asked; is it running, reachable at {}, with this quorum in \
                 controller.quorum_bootstrap_servers?",
                adding.waited_ms, adding.target_index, adding.plan.node.control_addr
            )))
        };
        let _ = adding.reply.send(answer.map(ControlResponse::Quorum));
    }

    /// DescribeQuorum, as this leader sees the quorum.
    async fn describe_quorum(&mut self) -> Result<QuorumDescription, ControlError> {
        self.leading().await?;
        Ok(self.describe_now())
    }

    /// The quorum as this node's metrics show it now (it led a moment ago).
    fn describe_now(&self) -> QuorumDescription {
        let metrics = self.raft.metrics().borrow().clone();
        let image = self.image.borrow().clone();
        let brokers: BTreeMap<i32, Option<BrokerSeen>> = image
            .brokers
            .keys()
            .map(|id| (id.0, self.quorum.brokers.get(&id.0).copied()))
            .collect();
        let none = BTreeMap::new();
        let contacts = self.quorum.contacts.clone();
        let answers = move |id: u64| contacts.last_answer_ms(id);
        describe(&QuorumView {
            leader_id: self.node_id,
            term: metrics.current_term,
            membership: metrics.membership_config.membership(),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            matched: metrics.replication.as_ref().unwrap_or(&none),
            last_answer_ms: &answers,
            caught_up_ms: &self.quorum.caught_up_ms,
            brokers: &brokers,
            now_ms: wall_ms(),
        })
    }

    /// Notes which followers have every entry now (DescribeQuorum's LastCaughtUpTimestamp),
    /// and forgets what it holds of replicas and brokers that are gone.
    pub(super) fn note_caught_up(&mut self) {
        let (leading, last, matched) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.last_log_index.unwrap_or(0), m.replication.clone())
        };
        if !leading {
            self.quorum.caught_up_ms.clear();
            self.quorum.brokers.clear();
            self.publish_broker_offsets();
            return;
        }
        let matched = matched.unwrap_or_default();
        let now = wall_ms();
        self.quorum.caught_up_ms.retain(|id, _| matched.contains_key(id));
        for (id, m) in &matched {
            if m.is_some_and(|m| m.index >= last) {
                self.quorum.caught_up_ms.insert(*id, now);
            }
        }
        let image = self.image.borrow().clone();
        self.quorum
            .brokers
            .retain(|id, _| image.brokers.contains_key(&strom_metadata::NodeId(*id)));
        self.publish_broker_offsets();
    }

    /// What `strom_broker_metadata_lag` is computed from.
    fn publish_broker_offsets(&self) {
        self.metrics.set_broker_offsets(self.quorum.brokers.iter().map(|(id, b)| (*id, b.offset)));
    }

    /// A registered broker's heartbeat: the metadata offset it has applied, for
    /// DescribeQuorum's observers.
    pub(super) fn note_heartbeat(&mut self, r: &BrokerHeartbeatRequest) {
        let image = self.image.borrow().clone();
        if !image.brokers.contains_key(&r.broker_id) {
            return;
        }
        let now = wall_ms();
        let offset = r.current_metadata_offset.0;
        let before = self.quorum.brokers.get(&r.broker_id.0).map_or(-1, |b| b.caught_up_ms);
        let caught_up_ms = if offset >= image.offset.0 { now } else { before };
        self.quorum
            .brokers
            .insert(r.broker_id.0, BrokerSeen { offset, seen_ms: now, caught_up_ms });
        self.publish_broker_offsets();
    }
}

/// Keeps this controller node's place in the membership for as long as it runs: joins as an
/// observer when the membership lacks it (started with bootstrap servers, wiped, or forgotten),
/// and, as a voter, says its directory id and control address when the membership has others
/// (UpdateRaftVoter). A refusal is logged, and asked again later: a wiped voter is refused
/// until the voter it replaces is removed.
pub(super) async fn keep_membership(
    metrics: watch::Receiver<RaftMetrics<u64, ControllerNode>>,
    client: Arc<RelayClient>,
    me: Myself,
) {
    let mut backoff = Duration::from_millis(KEEPER_INTERVAL_MS);
    loop {
        if metrics.has_changed().is_err() {
            return;
        }
        let request = keeper_request(metrics.borrow().membership_config.membership(), &me);
        let pause = match request {
            None => {
                backoff = Duration::from_millis(KEEPER_INTERVAL_MS);
                backoff
            }
            Some(request) => {
                let what = match &request {
                    ControlRequest::UpdateVoter(_) => {
                        "tell the quorum this voter's directory id and address"
                    }
                    _ => "join the metadata quorum as an observer",
                };
                match client.submit(request).await {
                    Ok(_) => {
                        tracing::info!(node_id = me.node_id, directory_id = %me.directory_id, "done: {what}");
                        backoff = Duration::from_millis(KEEPER_INTERVAL_MS);
                        backoff
                    }
                    Err(e) => {
                        if matches!(e, ControlError::InvalidVoterKey(_)) {
                            tracing::error!(node_id = me.node_id, "cannot {what}: {e}");
                        } else {
                            tracing::warn!(node_id = me.node_id, error = %e, "cannot {what} yet; asking again");
                        }
                        let pause = backoff;
                        backoff = (backoff * 2).min(Duration::from_millis(KEEPER_BACKOFF_MS_MAX));
                        pause
                    }
                }
            }
        };
        tokio::time::sleep(pause).await;
    }
}
