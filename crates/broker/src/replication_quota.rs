//! Replication throttles for reassignments (Kafka's ReplicationQuotaManager, KIP-73).
//!
//! A broker's `leader.replication.throttled.rate` bounds the bytes it sends to followers out
//! of the ISR for the partitions its topics list (with this broker) in
//! `leader.replication.throttled.replicas`; its `follower.replication.throttled.rate` bounds
//! the bytes its fetchers take for the partitions listed in
//! `follower.replication.throttled.replicas`. As in Kafka, a partition is left out of a fetch
//! (the leader answers it without records, the follower does not ask for it) while its
//! side's quota is exceeded, and the whole partition chunk sent or received counts
//! afterwards: throttling works on byte counts and never looks inside batches.
//!
//! The quota is a [`TokenBucket`] holding one quota window of bytes: a chunk may go while
//! the bucket is not empty and may take it below zero, which holds the next chunk back until
//! the rate has paid for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use strom_metadata::config::{
    ReplicationThrottles, ThrottledReplicas, FOLLOWER_REPLICATION_THROTTLED_REPLICAS,
    LEADER_REPLICATION_THROTTLED_REPLICAS,
};
use strom_metadata::records::ConfigResourceType;
use strom_metadata::{MetadataImage, NodeId};

use crate::quota::QUOTA_WINDOW_SIZE_MS;
use crate::BrokerCtx;

/// A byte rate: `rate` tokens a second into a bucket of one quota window's worth; taking may
/// overdraw it, and it is exceeded until it refills above zero.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TokenBucket {
    bytes_per_s: f64,
    capacity: f64,
    tokens: f64,
    last_ms: i64,
}

impl TokenBucket {
    /// A full bucket for `bytes_per_s` (at least one byte a second).
    pub fn new(bytes_per_s: u64, now_ms: i64) -> TokenBucket {
        let bytes_per_s = bytes_per_s.max(1) as f64;
        let capacity = bytes_per_s * QUOTA_WINDOW_SIZE_MS as f64 / 1000.0;
        TokenBucket { bytes_per_s, capacity, tokens: capacity, last_ms: now_ms }
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed_ms = (now_ms - self.last_ms).max(0);
        self.tokens =
            (self.tokens + self.bytes_per_s * elapsed_ms as f64 / 1000.0).min(self.capacity);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Counts bytes sent or received.
    pub fn record(&mut self, bytes: usize, now_ms: i64) {
        self.refill(now_ms);
        self.tokens -= bytes as f64;
    }

    /// Whether the rate is used up now: throttled partitions wait.
    #[cfg(test)]
    pub fn is_exceeded(&mut self, now_ms: i64) -> bool {
        self.wait_ms(now_ms) > 0
    }

    /// How long until the rate is no longer exceeded (0: it is not).
    pub fn wait_ms(&mut self, now_ms: i64) -> i64 {
        self.refill(now_ms);
        if self.tokens > 0.0 {
            return 0;
        }
        // The time to bring the bucket just above zero.
        ((-self.tokens + 1.0) * 1000.0 / self.bytes_per_s).ceil() as i64
    }
}

/// The two sides of replication, each with its own rate and throttled partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// What this broker sends as a leader (`leader.replication.*`).
    Leader,
    /// What this broker's fetchers take as a follower (`follower.replication.*`).
    Follower,
}

impl Side {
    fn at(self) -> usize {
        match self {
            Side::Leader => 0,
            Side::Follower => 1,
        }
    }
}

/// One side's rate and the partitions of this broker it throttles, by topic.
#[derive(Debug, Default)]
struct SideState {
    bucket: Option<TokenBucket>,
    topics: HashMap<String, ThrottledReplicas>,
}

/// The throttles of this broker, from the image: the sans-IO core, driven with the time.
#[derive(Debug, Default)]
pub(crate) struct ThrottleState {
    sides: [SideState; 2],
}

impl ThrottleState {
    /// Takes the rates and the throttled replicas of a new image for broker `node`. A rate
    /// that did not change keeps its bucket (and what it owes).
    pub fn set_image(&mut self, image: &MetadataImage, node: NodeId, now_ms: i64) {
        let rates = ReplicationThrottles::of(image, node);
        for (side, rate, key) in [
            (Side::Leader, rates.leader_bytes_per_s, LEADER_REPLICATION_THROTTLED_REPLICAS),
            (Side::Follower, rates.follower_bytes_per_s, FOLLOWER_REPLICATION_THROTTLED_REPLICAS),
        ] {
            let state = &mut self.sides[side.at()];
            state.bucket = match (state.bucket.take(), rate) {
                (Some(b), Some(r)) if b.bytes_per_s == r.max(1) as f64 => Some(b),
                (_, Some(r)) => Some(TokenBucket::new(r, now_ms)),
                (_, None) => None,
            };
            state.topics.clear();
            if state.bucket.is_none() {
                // Without a rate nothing is throttled: no need to know what is listed.
                continue;
            }
            for ((resource_type, name), overrides) in image.configs.iter() {
                if *resource_type != ConfigResourceType::ConfigResourceTopic as i32 {
                    continue;
                }
                let replicas = ThrottledReplicas::of_topic(Some(overrides), key);
                if !replicas.is_none() {
                    state.topics.insert(name.clone(), replicas);
                }
            }
        }
    }

    /// Whether `side` has a rate and some throttled partition.
    pub fn is_active(&self, side: Side) -> bool {
        let state = &self.sides[side.at()];
        state.bucket.is_some() && !state.topics.is_empty()
    }

    /// Whether the replica of (`topic`, `partition`) on `node` counts against `side`'s rate.
    pub fn is_throttled(&self, side: Side, topic: &str, partition: i32, node: NodeId) -> bool {
        let state = &self.sides[side.at()];
        state.bucket.is_some()
            && state.topics.get(topic).is_some_and(|r| r.throttles(partition, node))
    }

    /// How long throttled partitions of `side` must wait (0: they may go now).
    pub fn wait_ms(&mut self, side: Side, now_ms: i64) -> i64 {
        self.sides[side.at()].bucket.as_mut().map_or(0, |b| b.wait_ms(now_ms))
    }

    pub fn record(&mut self, side: Side, bytes: usize, now_ms: i64) {
        if let Some(b) = self.sides[side.at()].bucket.as_mut() {
            b.record(bytes, now_ms);
        }
    }
}

/// The throttles every fetch of this broker consults: a flag per side says whether any
/// throttle exists, so that without one a fetch costs one load.
#[derive(Debug, Default)]
pub(crate) struct ReplicationQuotaManager {
    active: [AtomicBool; 2],
    state: Mutex<ThrottleState>,
    /// The address of the image configs last applied: every user checks it against the
    /// image it works from, so a fetch never runs on throttles older than its image.
    applied: AtomicUsize,
}

impl ReplicationQuotaManager {
    pub fn is_active(&self, side: Side) -> bool {
        self.active[side.at()].load(Ordering::Relaxed)
    }

    pub fn state(&self) -> MutexGuard<'_, ThrottleState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `image`'s configs unless they are applied already (one load when they are);
    /// true when they changed the throttles' inputs.
    pub fn follow(&self, image: &MetadataImage, node: NodeId, now_ms: i64) -> bool {
        let configs = Arc::as_ptr(&image.configs) as usize;
        if self.applied.load(Ordering::Acquire) == configs {
            return false;
        }
        let mut state = self.state();
        if self.applied.load(Ordering::Acquire) == configs {
            return false;
        }
        state.set_image(image, node, now_ms);
        for side in [Side::Leader, Side::Follower] {
            self.active[side.at()].store(state.is_active(side), Ordering::Relaxed);
        }
        self.applied.store(configs, Ordering::Release);
        true
    }
}

/// Follows the broker's metadata image and hands each new set of configs to the throttles.
pub(crate) async fn follow_image(
    ctx: Arc<BrokerCtx>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut images = ctx.image.subscribe();
    loop {
        let image = images.borrow_and_update().clone();
        if ctx.replication_quotas.follow(&image, ctx.config.node_id, ctx.clock.now_ms()) {
            let active =
                [Side::Leader, Side::Follower].map(|s| ctx.replication_quotas.is_active(s));
            tracing::info!(
                leader = active[0],
                follower = active[1],
                "replication throttles changed"
            );
        }
        tokio::select! {
            changed = images.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use strom_metadata::records::metadata_record::Record;
    use strom_metadata::records::{ConfigRecord, MetadataRecord};
    use strom_metadata::MetadataOffset;

    use super::*;

    #[test]
    fn a_bucket_lets_one_window_through_then_holds_back_until_the_rate_paid_for_it() {
        let mut b = TokenBucket::new(1000, 0);
        assert!(!b.is_exceeded(0));
        b.record(600, 0);
        assert!(!b.is_exceeded(0), "400 bytes are left");
        // A whole chunk goes even beyond what is left, and is paid for afterwards.
        b.record(2400, 0);
        assert!(b.is_exceeded(0));
        assert_eq!(b.wait_ms(0), 2001);
        assert!(b.is_exceeded(1999));
        assert!(!b.is_exceeded(2001));
    }

    #[test]
    fn a_bucket_never_holds_more_than_one_window() {
        let mut b = TokenBucket::new(1000, 0);
        // Idle for a minute: still only one second's worth may go before it is exceeded.
        b.record(1000, 60_000);
        assert!(b.is_exceeded(60_000));
        assert_eq!(b.wait_ms(60_000), 1);
    }

    #[test]
    fn the_average_rate_stays_at_the_bound_whatever_the_chunk_size() {
        for chunk in [100usize, 1_000, 10_000, 100_000] {
            let mut b = TokenBucket::new(5_000, 0);
            let (mut now, mut sent) = (0i64, 0usize);
            while now < 100_000 {
                if b.is_exceeded(now) {
                    now += b.wait_ms(now);
                    continue;
                }
                b.record(chunk, now);
                sent += chunk;
            }
            // 100 s at 5000 B/s plus one window and one chunk of slack.
            assert!(sent <= 500_000 + 5_000 + chunk, "chunk {chunk}: sent {sent}");
            assert!(sent >= 500_000 - chunk, "chunk {chunk}: sent {sent}");
        }
    }

    fn config(
        resource_type: ConfigResourceType,
        name: &str,
        key: &str,
        value: &str,
    ) -> MetadataRecord {
        MetadataRecord {
            record: Some(Record::Config(ConfigRecord {
                resource_type: resource_type as i32,
                resource_name: name.into(),
                name: key.into(),
                value: Some(value.into()),
            })),
        }
    }

    #[test]
    fn only_listed_replicas_of_a_broker_with_a_rate_are_throttled() {
        use ConfigResourceType::{ConfigResourceBroker as Broker, ConfigResourceTopic as Topic};
        let image = MetadataImage::from_records(
            MetadataOffset(1),
            &[
                config(Broker, "1", "leader.replication.throttled.rate", "1000"),
                config(Topic, "all", LEADER_REPLICATION_THROTTLED_REPLICAS, "*"),
                config(Topic, "some", LEADER_REPLICATION_THROTTLED_REPLICAS, "0:1,1:2"),
                config(Topic, "some", FOLLOWER_REPLICATION_THROTTLED_REPLICAS, "0:1"),
            ],
        )
        .unwrap();
        let mut one = ThrottleState::default();
        one.set_image(&image, NodeId(1), 0);
        assert!(one.is_active(Side::Leader) && !one.is_active(Side::Follower));
        assert!(one.is_throttled(Side::Leader, "all", 7, NodeId(1)));
        assert!(one.is_throttled(Side::Leader, "some", 0, NodeId(1)));
        assert!(!one.is_throttled(Side::Leader, "some", 1, NodeId(1)));
        assert!(!one.is_throttled(Side::Leader, "other", 0, NodeId(1)));
        // No follower rate on broker 1: its listed follower replica is not throttled.
        assert!(!one.is_throttled(Side::Follower, "some", 0, NodeId(1)));
        let mut two = ThrottleState::default();
        two.set_image(&image, NodeId(2), 0);
        assert!(!two.is_active(Side::Leader), "broker 2 has no rate");
        one.record(Side::Leader, 5_000, 0);
        assert_eq!(one.wait_ms(Side::Leader, 0), 4_001);
        // The same rate in a new image keeps what it owes; none lets everything go.
        one.set_image(&image, NodeId(1), 0);
        assert_eq!(one.wait_ms(Side::Leader, 0), 4_001);
        one.set_image(&MetadataImage::default(), NodeId(1), 0);
        assert_eq!(one.wait_ms(Side::Leader, 0), 0);
        assert!(!one.is_throttled(Side::Leader, "all", 7, NodeId(1)));
    }
}
