//! The leader's view of its followers, as a plain state machine: follower fetch offsets, the
//! high watermark (the minimum log end offset over the ISR) and the ISR changes to ask the
//! controller for. No IO and no clock: the caller passes `now_ms` and acts on what it returns.

use std::collections::BTreeMap;

use strom_metadata::NodeId;

/// What the leader knows of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FollowerProgress {
    /// The follower's log end offset as its last fetch reported it. Followers fsync before they
    /// fetch again, so everything below it is durable on the follower.
    leo: i64,
    /// The last time the follower had fetched everything the leader had.
    caught_up_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaderState {
    me: NodeId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    replicas: Vec<NodeId>,
    isr: Vec<NodeId>,
    followers: BTreeMap<NodeId, FollowerProgress>,
    hw: i64,
    /// An ISR change sent to the controller and not yet seen committed.
    pending: Option<(Vec<NodeId>, i64)>,
}

/// Why a follower's fetch was not recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FollowerFetchRefused {
    /// The node is not one of the partition's followers (or this broker does not lead it at
    /// the fetch's leader epoch).
    NotReplica,
    /// The fetch offset is outside the leader's log.
    OffsetOutOfRange,
}

/// How long an unanswered ISR change blocks the next one.
pub(crate) const ISR_CHANGE_RETRY_MS: i64 = 5_000;

impl LeaderState {
    /// Becoming leader: followers get a full lag period of grace, and the high watermark
    /// starts where the previous leader left it (it never goes back).
    pub fn new(
        me: NodeId,
        replicas: Vec<NodeId>,
        isr: Vec<NodeId>,
        leader_epoch: i32,
        partition_epoch: i32,
        hw: i64,
        now_ms: i64,
    ) -> LeaderState {
        let followers = replicas
            .iter()
            .filter(|r| **r != me)
            .map(|r| (*r, FollowerProgress { leo: -1, caught_up_ms: now_ms }))
            .collect();
        LeaderState {
            me,
            leader_epoch,
            partition_epoch,
            replicas,
            isr,
            followers,
            hw,
            pending: None,
        }
    }

    pub fn isr(&self) -> &[NodeId] {
        &self.isr
    }

    pub fn replicas(&self) -> &[NodeId] {
        &self.replicas
    }

    #[cfg(test)]
    pub fn high_watermark(&self) -> i64 {
        self.hw
    }

    /// A committed metadata change of this partition at the same leader epoch.
    pub fn on_partition_change(
        &mut self,
        replicas: Vec<NodeId>,
        isr: Vec<NodeId>,
        partition_epoch: i32,
        now_ms: i64,
    ) {
        for r in &replicas {
            if *r != self.me {
                self.followers
                    .entry(*r)
                    .or_insert(FollowerProgress { leo: -1, caught_up_ms: now_ms });
            }
        }
        self.followers.retain(|id, _| replicas.contains(id));
        self.replicas = replicas;
        self.isr = isr;
        self.partition_epoch = partition_epoch;
        self.pending = None;
    }

    /// A fetch from a follower at `fetch_offset` while the leader's log ends at `leader_leo`.
    /// Refused, changing nothing, from a node that is not a follower of this partition or at an
    /// offset the leader does not have: a fetch offset counts as the follower's durable end
    /// and moves the high watermark, so it must be one the leader could have sent.
    pub fn on_follower_fetch(
        &mut self,
        follower: NodeId,
        fetch_offset: i64,
        leader_leo: i64,
        now_ms: i64,
    ) -> Result<(), FollowerFetchRefused> {
        let p = self.followers.get_mut(&follower).ok_or(FollowerFetchRefused::NotReplica)?;
        if !(0..=leader_leo).contains(&fetch_offset) {
            return Err(FollowerFetchRefused::OffsetOutOfRange);
        }
        p.leo = fetch_offset;
        if fetch_offset >= leader_leo {
            p.caught_up_ms = now_ms;
        }
        Ok(())
    }

    /// Recomputes the high watermark from the leader's durable end offset and the ISR
    /// followers' fetch offsets. Returns the new value if it moved (it only moves up).
    pub fn update_hw(&mut self, leader_durable_leo: i64) -> Option<i64> {
        let mut hw = leader_durable_leo;
        for r in &self.isr {
            if *r == self.me {
                continue;
            }
            match self.followers.get(r) {
                Some(p) => hw = hw.min(p.leo),
                None => return None, // an ISR member we do not track: do not guess
            }
        }
        if hw > self.hw {
            self.hw = hw;
            Some(hw)
        } else {
            None
        }
    }

    /// The ISR the controller should be asked for, if it should change: members that have not
    /// caught up within `lag_max_ms` leave; replicas that have reached the high watermark join
    /// if `eligible` (KIP-841: unfenced and not shutting down; the controller refuses any
    /// other, and asking again every tick for a dead follower that was caught up when it died
    /// only loads the controller).
    ///
    /// `leader_leo` is the leader's log end now and `session_fetch_ms` when a follower's fetch
    /// session holding this partition last fetched: an incremental fetch leaves out partitions
    /// that did not change, so a follower whose fetch offset is the log end was caught up at
    /// that fetch (the log end only grows, and was no larger then) without naming it.
    pub fn propose_isr(
        &mut self,
        now_ms: i64,
        lag_max_ms: i64,
        eligible: impl Fn(NodeId) -> bool,
        leader_leo: i64,
        session_fetch_ms: impl Fn(NodeId) -> Option<i64>,
    ) -> Option<Vec<NodeId>> {
        for (id, p) in self.followers.iter_mut() {
            if p.leo >= leader_leo {
                if let Some(at) = session_fetch_ms(*id) {
                    p.caught_up_ms = p.caught_up_ms.max(at.min(now_ms));
                }
            }
        }
        if let Some((_, sent)) = &self.pending {
            if now_ms - sent < ISR_CHANGE_RETRY_MS {
                return None;
            }
        }
        let mut next: Vec<NodeId> = Vec::new();
        for r in &self.replicas {
            let keep = if *r == self.me {
                true
            } else {
                let Some(p) = self.followers.get(r) else { continue };
                if self.isr.contains(r) {
                    now_ms - p.caught_up_ms <= lag_max_ms
                } else {
                    p.leo >= self.hw && now_ms - p.caught_up_ms <= lag_max_ms && eligible(*r)
                }
            };
            if keep {
                next.push(*r);
            }
        }
        let same = next.len() == self.isr.len() && next.iter().all(|r| self.isr.contains(r));
        if same {
            return None;
        }
        self.pending = Some((next.clone(), now_ms));
        Some(next)
    }

    /// The controller refused or failed the change: allow a new proposal at once.
    pub fn isr_change_failed(&mut self) {
        self.pending = None;
    }

    /// The controller committed an ISR change this leader asked for (Kafka applies the
    /// AlterPartition answer at once, before the metadata carrying it arrives): proposals go on
    /// from the new partition epoch instead of being refused as stale until the broker's
    /// metadata catches up. An answer older than what the leader already has changes nothing.
    pub fn isr_change_committed(&mut self, partition_epoch: i32, isr: Vec<NodeId>) {
        if partition_epoch < self.partition_epoch {
            return;
        }
        self.isr = isr;
        self.partition_epoch = partition_epoch;
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(ids: &[i32]) -> Vec<NodeId> {
        ids.iter().map(|&i| NodeId(i)).collect()
    }

    fn three() -> LeaderState {
        LeaderState::new(NodeId(1), n(&[1, 2, 3]), n(&[1, 2, 3]), 5, 7, 0, 0)
    }

    /// A proposal without fetch sessions.
    fn propose(
        s: &mut LeaderState,
        now_ms: i64,
        lag_max_ms: i64,
        eligible: impl Fn(NodeId) -> bool,
    ) -> Option<Vec<NodeId>> {
        s.propose_isr(now_ms, lag_max_ms, eligible, i64::MAX, |_| None)
    }

    #[test]
    fn a_committed_change_applies_at_once_and_a_stale_answer_changes_nothing() {
        let mut s = three();
        // Follower 3 stopped fetching long ago: the leader asks to drop it.
        s.on_follower_fetch(NodeId(2), 0, 0, 100_000).unwrap();
        let asked = propose(&mut s, 100_000, 30_000, |_| true);
        assert_eq!(asked, Some(n(&[1, 2])));
        s.isr_change_committed(8, n(&[1, 2]));
        assert_eq!((s.isr.clone(), s.partition_epoch), (n(&[1, 2]), 8));
        // Nothing left to ask: no proposal at the stale epoch 7.
        assert_eq!(propose(&mut s, 100_001, 30_000, |_| true), None);
        // An older answer (epoch 7) arriving late is ignored.
        s.isr_change_committed(7, n(&[1, 2, 3]));
        assert_eq!((s.isr.clone(), s.partition_epoch), (n(&[1, 2]), 8));
    }

    #[test]
    fn a_follower_at_the_log_end_stays_caught_up_through_its_session_fetches() {
        let mut s = three();
        s.on_follower_fetch(NodeId(2), 10, 10, 100).unwrap();
        s.on_follower_fetch(NodeId(3), 10, 10, 100).unwrap();
        // Nothing appended since: both sessions leave the partition out, and keep fetching.
        let sessions = |r: NodeId| (r == NodeId(2) || r == NodeId(3)).then_some(40_000);
        assert_eq!(s.propose_isr(40_001, 30_000, |_| true, 10, sessions), None);
        // Follower 3's session stops fetching; 2's goes on.
        let only_2 = |r: NodeId| match r.0 {
            2 => Some(75_000),
            3 => Some(40_000),
            _ => None,
        };
        assert_eq!(s.propose_isr(75_000, 30_000, |_| true, 10, only_2), Some(n(&[1, 2])));
        s.isr_change_failed();
        // An append the sessions have not fetched yet: caught up as of their last fetch
        // before it, not later.
        assert_eq!(s.propose_isr(80_000, 30_000, |_| true, 11, |_| Some(80_000)), Some(n(&[1, 2])));
        s.isr_change_failed();
        assert_eq!(
            s.propose_isr(106_000, 30_000, |_| true, 11, |_| Some(106_000)),
            Some(n(&[1])),
            "behind the log end: a session fetch says nothing"
        );
    }

    #[test]
    fn high_watermark_is_the_minimum_over_the_isr_and_never_goes_back() {
        let mut s = three();
        assert_eq!(s.update_hw(10), None, "followers have not fetched yet");
        s.on_follower_fetch(NodeId(2), 10, 10, 1).unwrap();
        assert_eq!(s.update_hw(10), None, "follower 3 still unknown");
        s.on_follower_fetch(NodeId(3), 4, 10, 1).unwrap();
        assert_eq!(s.update_hw(10), Some(4));
        s.on_follower_fetch(NodeId(3), 10, 12, 2).unwrap();
        assert_eq!(s.update_hw(8), Some(8), "the leader's own durable end bounds it");
        s.on_follower_fetch(NodeId(3), 2, 12, 3).unwrap(); // a stale fetch offset
        assert_eq!(s.update_hw(12), None);
        assert_eq!(s.high_watermark(), 8);
    }

    #[test]
    fn a_lagging_follower_leaves_the_isr_and_rejoins_once_caught_up() {
        let mut s = three();
        s.on_follower_fetch(NodeId(2), 10, 10, 100).unwrap();
        s.on_follower_fetch(NodeId(3), 3, 10, 100).unwrap();
        assert_eq!(propose(&mut s, 1_000, 30_000, |_| true), None);
        // follower 3 has not caught up for longer than the lag limit
        s.on_follower_fetch(NodeId(2), 50, 50, 31_000).unwrap();
        assert_eq!(propose(&mut s, 31_000, 30_000, |_| true), Some(n(&[1, 2])));
        assert_eq!(
            propose(&mut s, 31_001, 30_000, |_| true),
            None,
            "one change in flight at a time"
        );
        s.on_partition_change(n(&[1, 2, 3]), n(&[1, 2]), 8, 31_002);
        assert_eq!(s.update_hw(50), Some(50), "without 3 the high watermark moves on");
        // follower 3 catches up to the high watermark: it is proposed back
        s.on_follower_fetch(NodeId(3), 50, 50, 32_000).unwrap();
        assert_eq!(propose(&mut s, 32_000, 30_000, |_| true), Some(n(&[1, 2, 3])));
    }

    #[test]
    fn a_refused_change_can_be_proposed_again() {
        let mut s = three();
        s.on_follower_fetch(NodeId(2), 0, 0, 0).unwrap();
        assert_eq!(propose(&mut s, 40_000, 30_000, |_| true), Some(n(&[1])));
        s.isr_change_failed();
        assert_eq!(propose(&mut s, 40_001, 30_000, |_| true), Some(n(&[1])));
    }

    #[test]
    fn a_fetch_beyond_the_leader_end_or_from_a_non_replica_changes_nothing() {
        let mut s = three();
        s.on_follower_fetch(NodeId(2), 10, 10, 1).unwrap();
        s.on_follower_fetch(NodeId(3), 6, 10, 1).unwrap();
        assert_eq!(s.update_hw(10), Some(6));
        let before = s.clone();
        let refused = s.on_follower_fetch(NodeId(3), 1_010, 10, 2);
        assert_eq!(refused, Err(FollowerFetchRefused::OffsetOutOfRange));
        assert_eq!(s.on_follower_fetch(NodeId(3), -1, 10, 2), refused);
        let stranger = s.on_follower_fetch(NodeId(4), 10, 10, 2);
        assert_eq!(stranger, Err(FollowerFetchRefused::NotReplica));
        assert_eq!(s.on_follower_fetch(NodeId(1), 10, 10, 2), stranger, "the leader itself");
        assert_eq!(s, before, "a refused fetch leaves no trace");
        assert_eq!(s.update_hw(10), None, "the high watermark stays at follower 3's real end");
    }

    #[test]
    fn a_single_replica_partition_follows_its_own_log() {
        let mut s = LeaderState::new(NodeId(1), n(&[1]), n(&[1]), 0, 0, 0, 0);
        assert_eq!(s.update_hw(3), Some(3));
        assert_eq!(propose(&mut s, 1_000_000, 30_000, |_| true), None);
    }

    #[test]
    fn a_caught_up_follower_that_is_fenced_is_not_proposed_to_rejoin() {
        let mut s = LeaderState::new(NodeId(1), n(&[1, 2, 3]), n(&[1, 2]), 5, 7, 0, 0);
        s.on_follower_fetch(NodeId(3), 0, 5, 1_000).unwrap();
        let fenced = |r: NodeId| r != NodeId(3);
        assert_eq!(propose(&mut s, 2_000, 30_000, fenced), None, "3 is fenced: not eligible");
        assert_eq!(propose(&mut s, 2_001, 30_000, |_| true), Some(n(&[1, 2, 3])));
    }
}
