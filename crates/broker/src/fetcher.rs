//! The follower side of replication: one task per leader broker copies the logs of every
//! partition this broker follows from that leader, with Kafka's own Fetch API (`replica_id`
//! set) on one connection, all partitions in one request (Kafka's `num.replica.fetchers` = 1).
//! A partition first cuts any divergent suffix with OffsetsForLeaderEpoch, and every partition
//! appended in a round is fsynced before the next fetch, so that its fetch offset tells the
//! leader how much it holds durably.
//!
//! The replica manager hands partitions to the fetchers ([`FetcherManager::add`]) when they
//! start following; a partition leaves its fetcher when its role changes (the stop receiver of
//! [`Partition::follow`] closes) or its log is deleted ([`FetcherManager::remove`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::ResponseError as K;
use strom_metadata::NodeId;
use tokio::sync::watch;

use crate::handlers::{metadata::LISTENER, s};
use crate::partition::{Partition, Role};
use crate::peer::PeerConn;
use crate::BrokerCtx;

const FETCH_VERSION: i16 = 11;
const EPOCH_VERSION: i16 = 3;
/// Long-poll of a replica fetch: short enough to notice a leader change quickly.
const REPLICA_FETCH_WAIT_MS: i32 = 500;
/// `replica.fetch.max.bytes` (Kafka's default), per partition.
const REPLICA_FETCH_MAX_BYTES: i32 = 1_048_576;
/// `replica.fetch.response.max.bytes` (Kafka's default).
const REPLICA_FETCH_RESPONSE_MAX_BYTES: i32 = 10 * 1_048_576;
/// Pause before reconnecting to the leader, and before retrying a partition that failed.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
const _: () = assert!(BACKOFF_MIN.as_millis() < BACKOFF_MAX.as_millis());

/// A local partition and the name its leader knows it by.
type Key = (String, i32);

/// The maps here hold no invariant a panic could tear: a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A partition this broker follows, as the replica manager hands it to a fetcher.
#[derive(Clone)]
struct Followed {
    part: Arc<Partition>,
    leader_epoch: i32,
    /// Closes when the partition's role changes (see [`Partition::follow`]).
    stop: watch::Receiver<bool>,
}

impl Followed {
    fn same(&self, other: &Followed) -> bool {
        Arc::ptr_eq(&self.part, &other.part)
            && self.leader_epoch == other.leader_epoch
            && self.stop.same_channel(&other.stop)
    }

    /// Still the partition's role: a fetcher keeps it.
    fn current(&self) -> bool {
        self.stop.has_changed().is_ok()
    }
}

/// What a fetcher task and the replica manager share.
struct Shared {
    partitions: Mutex<HashMap<Key, Followed>>,
    /// Bumped after partitions are added: wakes an idle fetcher and cuts a long-poll short.
    added: watch::Sender<u64>,
}

impl Shared {
    /// The partitions to fetch, dropping those whose role has changed.
    fn wanted(&self) -> Vec<(Key, Followed)> {
        let mut partitions = lock(&self.partitions);
        partitions.retain(|_, f| f.current());
        partitions.iter().map(|(k, f)| (k.clone(), f.clone())).collect()
    }
}

struct FetcherHandle {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// The replica fetchers of this broker: one task per leader it follows partitions of. A
/// fetcher without partitions idles (no connection) until one is added.
#[derive(Default)]
pub(crate) struct FetcherManager {
    fetchers: Mutex<HashMap<NodeId, FetcherHandle>>,
    closed: AtomicBool,
}

impl FetcherManager {
    /// `part` now follows `leader` at `leader_epoch` (its role since [`Partition::follow`]
    /// returned `stop`): fetch it from that leader's fetcher, and from no other.
    pub fn add(
        &self,
        ctx: &Arc<BrokerCtx>,
        part: &Arc<Partition>,
        leader: NodeId,
        leader_epoch: i32,
        stop: watch::Receiver<bool>,
    ) {
        let key = (part.topic.clone(), part.index);
        let mut fetchers = lock(&self.fetchers);
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        for (id, handle) in fetchers.iter() {
            if *id != leader {
                lock(&handle.shared.partitions).remove(&key);
            }
        }
        let handle = fetchers.entry(leader).or_insert_with(|| {
            let (added, _) = watch::channel(0u64);
            let shared = Arc::new(Shared { partitions: Mutex::new(HashMap::new()), added });
            let task = tokio::spawn(run(ctx.clone(), leader, shared.clone()));
            FetcherHandle { shared, task }
        });
        lock(&handle.shared.partitions)
            .insert(key, Followed { part: part.clone(), leader_epoch, stop });
        handle.shared.added.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// `part`'s log is going away: no fetcher may write into it any more.
    pub fn remove(&self, part: &Arc<Partition>) {
        let key = (part.topic.clone(), part.index);
        for handle in lock(&self.fetchers).values() {
            let mut partitions = lock(&handle.shared.partitions);
            if partitions.get(&key).is_some_and(|f| Arc::ptr_eq(&f.part, part)) {
                partitions.remove(&key);
            }
        }
    }

    /// Stops every fetcher (broker shutdown); none starts afterwards.
    pub async fn shutdown(&self) {
        let handles: Vec<FetcherHandle> = {
            let mut fetchers = lock(&self.fetchers);
            self.closed.store(true, Ordering::Relaxed);
            fetchers.drain().map(|(_, h)| h).collect()
        };
        for h in handles {
            h.task.abort();
            let _ = h.task.await;
        }
    }
}

/// Where one followed partition stands in its fetcher.
struct Entry<T> {
    item: T,
    /// Cut the divergent suffix (OffsetsForLeaderEpoch) before fetching.
    truncate: bool,
    /// Backing off after an error: left out of requests until then.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// The follower fetch state of one fetcher, sans IO: which partitions to truncate, which to
/// fetch, which are backing off. The task does the IO and reports the outcomes.
struct FetchPlan<T> {
    entries: BTreeMap<Key, Entry<T>>,
}

impl<T> Default for FetchPlan<T> {
    fn default() -> Self {
        FetchPlan { entries: BTreeMap::new() }
    }
}

impl<T> FetchPlan<T> {
    /// Makes the plan hold exactly `wanted`; a partition that is new (or followed anew, by
    /// `same`) starts with truncation.
    fn sync(&mut self, wanted: Vec<(Key, T)>, same: impl Fn(&T, &T) -> bool) {
        let wanted: BTreeMap<Key, T> = wanted.into_iter().collect();
        self.entries.retain(|k, e| wanted.get(k).is_some_and(|w| same(w, &e.item)));
        for (k, item) in wanted {
            self.entries.entry(k).or_insert(Entry {
                item,
                truncate: true,
                retry_at: None,
                backoff: BACKOFF_MIN,
            });
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn get(&self, key: &Key) -> Option<&T> {
        self.entries.get(key).map(|e| &e.item)
    }

    fn ready(&self, now: Instant, truncate: bool) -> Vec<Key> {
        self.entries
            .iter()
            .filter(|(_, e)| e.truncate == truncate && e.retry_at.is_none_or(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Partitions to cut before they are fetched.
    fn to_truncate(&self, now: Instant) -> Vec<Key> {
        self.ready(now, true)
    }

    /// Partitions to put in the next Fetch.
    fn to_fetch(&self, now: Instant) -> Vec<Key> {
        self.ready(now, false)
    }

    /// When the first backing-off partition may be tried again.
    fn next_retry(&self) -> Option<Instant> {
        self.entries.values().filter_map(|e| e.retry_at).min()
    }

    fn truncated(&mut self, key: &Key) {
        if let Some(e) = self.entries.get_mut(key) {
            e.truncate = false;
            e.retry_at = None;
        }
    }

    fn fetched(&mut self, key: &Key) {
        if let Some(e) = self.entries.get_mut(key) {
            e.retry_at = None;
            e.backoff = BACKOFF_MIN;
        }
    }

    /// The partition failed: leave it out for a while, then truncate again and fetch.
    fn failed(&mut self, key: &Key, now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.truncate = true;
            e.retry_at = Some(now + e.backoff);
            e.backoff = (e.backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The connection to the leader was lost: every partition truncates again.
    fn reconnected(&mut self) {
        for e in self.entries.values_mut() {
            e.truncate = true;
        }
    }

    /// The partition no longer follows this leader at this epoch.
    fn forget(&mut self, key: &Key) {
        self.entries.remove(key);
    }
}

async fn connect(ctx: &BrokerCtx, leader: NodeId) -> Result<PeerConn, String> {
    let addr = crate::peer::broker_addr(&ctx.config, &ctx.image.current(), leader)
        .ok_or_else(|| format!("leader {} has no {LISTENER} endpoint", leader.0))?;
    PeerConn::connect(&addr).await
}

/// Consecutive keys of the same topic as Kafka's topic → partitions nesting.
fn by_topic<P>(keys: &[Key], mut partition: impl FnMut(&Key) -> P) -> Vec<(String, Vec<P>)> {
    let mut out: Vec<(String, Vec<P>)> = Vec::new();
    for key in keys {
        let p = partition(key);
        match out.last_mut() {
            Some((topic, ps)) if *topic == key.0 => ps.push(p),
            _ => out.push((key.0.clone(), vec![p])),
        }
    }
    out
}

/// The fetcher of the partitions this broker follows from `leader`.
async fn run(ctx: Arc<BrokerCtx>, leader: NodeId, shared: Arc<Shared>) {
    let me = ctx.image.node;
    let client_id = format!("strom-replica-{}", me.0);
    let mut added = shared.added.subscribe();
    let mut plan: FetchPlan<Followed> = FetchPlan::default();
    let mut conn: Option<PeerConn> = None;
    let mut backoff = BACKOFF_MIN;
    let mut round: usize = 0;
    loop {
        added.borrow_and_update();
        plan.sync(shared.wanted(), Followed::same);
        if plan.is_empty() {
            // Nothing to follow here: no connection, no traffic until a partition is added.
            conn = None;
            if added.changed().await.is_err() {
                return;
            }
            continue;
        }
        let now = Instant::now();
        if plan.to_truncate(now).is_empty() && plan.to_fetch(now).is_empty() {
            let until = plan.next_retry().unwrap_or(now + BACKOFF_MAX);
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = added.changed() => {}
            }
            continue;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&ctx, leader).await {
                Ok(c) => conn.insert(c),
                Err(why) => {
                    tracing::debug!(leader = leader.0, "replica fetch: {why}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        let lost = |why: String, backoff: &mut Duration| {
            tracing::debug!(leader = leader.0, "replica fetch: {why}");
            let pause = *backoff;
            *backoff = (*backoff * 2).min(BACKOFF_MAX);
            pause
        };
        let to_truncate = plan.to_truncate(now);
        if !to_truncate.is_empty() {
            if let Err(why) = truncate(c, &client_id, me, leader, &mut plan, &to_truncate).await {
                conn = None;
                plan.reconnected();
                tokio::time::sleep(lost(why, &mut backoff)).await;
                continue;
            }
        }
        let mut to_fetch = plan.to_fetch(Instant::now());
        if to_fetch.is_empty() {
            continue;
        }
        // A different partition first each round, so that a full response budget does not
        // always go to the same partitions.
        round = round.wrapping_add(1);
        let first = round % to_fetch.len();
        to_fetch.rotate_left(first);
        let Some(req) = fetch_request(me, &mut plan, &mut to_fetch) else { continue };
        let resp: FetchResponse = tokio::select! {
            r = c.call(ApiKey::Fetch, FETCH_VERSION, &req, &client_id) => match r {
                Ok(r) => r,
                Err(why) => {
                    conn = None;
                    plan.reconnected();
                    tokio::time::sleep(lost(why, &mut backoff)).await;
                    continue;
                }
            },
            // A partition was added: start it now rather than after this long-poll. The
            // connection has a response in flight, so it goes.
            _ = added.changed() => {
                conn = None;
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        on_fetched(leader, &mut plan, to_fetch, resp).await;
    }
}

/// The Fetch of `keys` (those that cannot be fetched now are backed off and left out).
fn fetch_request(
    me: NodeId,
    plan: &mut FetchPlan<Followed>,
    keys: &mut Vec<Key>,
) -> Option<FetchRequest> {
    let now = Instant::now();
    let mut offsets = HashMap::with_capacity(keys.len());
    keys.retain(|key| {
        let Some(f) = plan.get(key) else { return false };
        let at = if f.part.progress().offline {
            None
        } else {
            f.part.log().ok().map(|l| (l.log_end_offset(), l.log_start_offset(), f.leader_epoch))
        };
        match at {
            Some(at) => {
                offsets.insert(key.clone(), at);
                true
            }
            None => {
                plan.failed(key, now);
                false
            }
        }
    });
    if keys.is_empty() {
        return None;
    }
    let topics = by_topic(keys, |key| {
        let (fetch_offset, log_start, leader_epoch) = offsets[key];
        FetchPartition::default()
            .with_partition(key.1)
            .with_current_leader_epoch(leader_epoch)
            .with_fetch_offset(fetch_offset)
            .with_log_start_offset(log_start)
            .with_partition_max_bytes(REPLICA_FETCH_MAX_BYTES)
    });
    Some(
        FetchRequest::default()
            .with_replica_id(BrokerId(me.0))
            .with_max_wait_ms(REPLICA_FETCH_WAIT_MS)
            .with_min_bytes(1)
            .with_max_bytes(REPLICA_FETCH_RESPONSE_MAX_BYTES)
            .with_session_epoch(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        FetchTopic::default()
                            .with_topic(TopicName(s(topic)))
                            .with_partitions(partitions)
                    })
                    .collect(),
            ),
    )
}

/// Appends what the leader sent, fsyncs every appended partition, then takes the leader's
/// high watermarks. An error affects only its partition.
async fn on_fetched(
    leader: NodeId,
    plan: &mut FetchPlan<Followed>,
    asked: Vec<Key>,
    resp: FetchResponse,
) {
    let now = Instant::now();
    let mut answers: HashMap<Key, (i16, i64, Option<Bytes>)> = HashMap::new();
    for t in resp.responses {
        let topic = t.topic.0.to_string();
        for p in t.partitions {
            answers.insert(
                (topic.clone(), p.partition_index),
                (p.error_code, p.high_watermark, p.records),
            );
        }
    }
    let mut appended: Vec<(Key, Arc<Partition>)> = Vec::new();
    let mut hws: Vec<(Key, Arc<Partition>, i64)> = Vec::new();
    for key in asked {
        let Some(f) = plan.get(&key).cloned() else { continue };
        let Some((code, hw, records)) = answers.remove(&key) else {
            tracing::debug!(topic = %key.0, partition = key.1, leader = leader.0, "fetch response without this partition");
            plan.failed(&key, now);
            continue;
        };
        match K::try_from_code(code) {
            None => {}
            Some(K::OffsetOutOfRange) => {
                // The leader's log starts after ours ends (retention), or ends before ours:
                // truncate again and start over.
                tracing::warn!(topic = %key.0, partition = key.1, leader = leader.0, "replica fetch offset out of range; resetting");
                plan.failed(&key, now);
                continue;
            }
            Some(e) => {
                // Stale metadata on one side or the other: retry once the image moves.
                tracing::debug!(topic = %key.0, partition = key.1, leader = leader.0, "replica fetch: leader answered {e:?}");
                plan.failed(&key, now);
                continue;
            }
        }
        let records = records.unwrap_or_default();
        if !records.is_empty() {
            match f.part.append_as_follower(&records, leader, f.leader_epoch) {
                Ok(Some(_)) => appended.push((key.clone(), f.part.clone())),
                Ok(None) => {
                    // A new role owns the log now.
                    plan.forget(&key);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(topic = %key.0, partition = key.1, error = %e, "replica append failed");
                    plan.failed(&key, now);
                    continue;
                }
            }
        }
        plan.fetched(&key);
        hws.push((key, f.part, hw));
    }
    // Durable before the next fetch reports the new end offsets to the leader: one blocking
    // task fsyncs every partition appended in this round.
    if !appended.is_empty() {
        let flushed = tokio::task::spawn_blocking(move || {
            appended.into_iter().map(|(key, p)| (key, p.flush_now())).collect::<Vec<_>>()
        })
        .await;
        match flushed {
            Ok(results) => {
                for (key, result) in results {
                    if let Err(e) = result {
                        tracing::warn!(topic = %key.0, partition = key.1, error = %e, "replica flush failed");
                        plan.failed(&key, now);
                        hws.retain(|(k, _, _)| *k != key);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "replica flush task failed");
                for (key, _, _) in hws.drain(..) {
                    plan.failed(&key, now);
                }
            }
        }
    }
    for (_, part, hw) in hws {
        part.set_follower_hw(hw);
    }
}

/// Cuts whatever each partition of `keys` has beyond the leader's log for its latest epoch,
/// all in one OffsetsForLeaderEpoch request. `Err` only when the connection failed.
async fn truncate(
    conn: &mut PeerConn,
    client_id: &str,
    me: NodeId,
    leader: NodeId,
    plan: &mut FetchPlan<Followed>,
    keys: &[Key],
) -> Result<(), String> {
    let now = Instant::now();
    let mut asks: Vec<(Key, Followed, i32)> = Vec::new();
    for key in keys {
        let Some(f) = plan.get(key).cloned() else { continue };
        let latest = match f.part.log() {
            Ok(log) => log.leader_epoch_entries().last().copied(),
            Err(e) => {
                tracing::warn!(topic = %key.0, partition = key.1, error = %e, "cannot read leader epochs");
                plan.failed(key, now);
                continue;
            }
        };
        match latest {
            None => plan.truncated(key),
            Some((epoch, _)) => asks.push((key.clone(), f, epoch)),
        }
    }
    if asks.is_empty() {
        return Ok(());
    }
    let ask_keys: Vec<Key> = asks.iter().map(|(k, _, _)| k.clone()).collect();
    let epochs: HashMap<&Key, (i32, i32)> =
        asks.iter().map(|(k, f, epoch)| (k, (f.leader_epoch, *epoch))).collect();
    let topics = by_topic(&ask_keys, |key| {
        let (current, epoch) = epochs[key];
        OffsetForLeaderPartition::default()
            .with_partition(key.1)
            .with_current_leader_epoch(current)
            .with_leader_epoch(epoch)
    });
    let req = OffsetForLeaderEpochRequest::default().with_replica_id(BrokerId(me.0)).with_topics(
        topics
            .into_iter()
            .map(|(topic, partitions)| {
                OffsetForLeaderTopic::default()
                    .with_topic(TopicName(s(topic)))
                    .with_partitions(partitions)
            })
            .collect(),
    );
    let resp: OffsetForLeaderEpochResponse =
        conn.call(ApiKey::OffsetForLeaderEpoch, EPOCH_VERSION, &req, client_id).await?;
    let mut answers = HashMap::new();
    for t in resp.topics {
        let topic = t.topic.0.to_string();
        for p in t.partitions {
            answers.insert((topic.clone(), p.partition), p);
        }
    }
    for (key, f, _) in asks {
        let Some(r) = answers.remove(&key) else {
            tracing::debug!(topic = %key.0, partition = key.1, "OffsetsForLeaderEpoch response without this partition");
            plan.failed(&key, now);
            continue;
        };
        if r.error_code != 0 {
            tracing::debug!(topic = %key.0, partition = key.1, leader = leader.0, "OffsetsForLeaderEpoch error {}", r.error_code);
            plan.failed(&key, now);
            continue;
        }
        // An undefined answer means the leader knows none of our epochs: keep only what is
        // committed (Kafka truncates to the high watermark in that case too).
        let to = if r.end_offset >= 0 { r.end_offset } else { f.part.progress().high_watermark };
        // Under the role lock, so that a role change meanwhile cannot have its log cut.
        let cut = f.part.with_role(|role| {
            let current = matches!(role,
                Role::Follower { leader: l, leader_epoch: e, .. } if *l == leader && *e == f.leader_epoch);
            current.then(|| f.part.truncate_to(to))
        });
        match cut {
            Some(Some(Ok(()))) => plan.truncated(&key),
            Some(None) => plan.forget(&key),
            Some(Some(Err(e))) => {
                tracing::warn!(topic = %key.0, partition = key.1, error = %e, "truncation failed");
                plan.failed(&key, now);
            }
            None => plan.failed(&key, now),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str, index: i32) -> Key {
        (topic.to_string(), index)
    }

    /// Items are leader epochs here.
    fn plan_of(wanted: &[(&str, i32, i32)]) -> FetchPlan<i32> {
        let mut plan = FetchPlan::default();
        plan.sync(wanted.iter().map(|(t, i, e)| (key(t, *i), *e)).collect(), |a, b| a == b);
        plan
    }

    #[test]
    fn a_new_partition_truncates_before_it_is_fetched() {
        let now = Instant::now();
        let mut plan = plan_of(&[("a", 0, 1), ("a", 1, 1)]);
        assert_eq!(plan.to_truncate(now), vec![key("a", 0), key("a", 1)]);
        assert!(plan.to_fetch(now).is_empty());
        plan.truncated(&key("a", 1));
        assert_eq!(plan.to_truncate(now), vec![key("a", 0)]);
        assert_eq!(plan.to_fetch(now), vec![key("a", 1)]);
    }

    #[test]
    fn a_new_leader_epoch_truncates_again_and_dropped_partitions_go() {
        let now = Instant::now();
        let mut plan = plan_of(&[("a", 0, 1), ("b", 0, 1)]);
        plan.truncated(&key("a", 0));
        plan.truncated(&key("b", 0));
        plan.sync(vec![(key("a", 0), 2)], |a, b| a == b);
        assert_eq!(plan.get(&key("a", 0)), Some(&2));
        assert_eq!(plan.get(&key("b", 0)), None);
        assert_eq!(plan.to_truncate(now), vec![key("a", 0)]);
        assert!(plan.to_fetch(now).is_empty());
        // The same follow again changes nothing.
        plan.truncated(&key("a", 0));
        plan.sync(vec![(key("a", 0), 2)], |a, b| a == b);
        assert_eq!(plan.to_fetch(now), vec![key("a", 0)]);
    }

    #[test]
    fn a_failed_partition_backs_off_alone_then_truncates_again() {
        let now = Instant::now();
        let mut plan = plan_of(&[("a", 0, 1), ("a", 1, 1)]);
        plan.truncated(&key("a", 0));
        plan.truncated(&key("a", 1));
        plan.failed(&key("a", 0), now);
        assert_eq!(plan.to_fetch(now), vec![key("a", 1)]);
        assert!(plan.to_truncate(now).is_empty());
        assert_eq!(plan.next_retry(), Some(now + BACKOFF_MIN));
        let later = now + BACKOFF_MIN;
        assert_eq!(plan.to_truncate(later), vec![key("a", 0)]);
        assert_eq!(plan.to_fetch(later), vec![key("a", 1)]);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_good_fetch() {
        let now = Instant::now();
        let mut plan = plan_of(&[("a", 0, 1)]);
        let k = key("a", 0);
        let mut pauses = Vec::new();
        for _ in 0..7 {
            plan.failed(&k, now);
            pauses.push(plan.next_retry().map(|t| t - now));
        }
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(pauses, vec![ms(50), ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        plan.truncated(&k);
        plan.fetched(&k);
        assert_eq!(plan.next_retry(), None);
        plan.failed(&k, now);
        assert_eq!(plan.next_retry(), Some(now + BACKOFF_MIN));
    }

    #[test]
    fn a_lost_connection_truncates_every_partition_again() {
        let now = Instant::now();
        let mut plan = plan_of(&[("a", 0, 1), ("b", 3, 1)]);
        plan.truncated(&key("a", 0));
        plan.truncated(&key("b", 3));
        plan.reconnected();
        assert_eq!(plan.to_truncate(now), vec![key("a", 0), key("b", 3)]);
        plan.forget(&key("a", 0));
        assert_eq!(plan.to_truncate(now), vec![key("b", 3)]);
        plan.forget(&key("b", 3));
        assert!(plan.is_empty());
    }

    #[test]
    fn partitions_nest_under_their_topics_in_order() {
        let keys = vec![key("b", 2), key("a", 0), key("a", 1), key("b", 0)];
        let nested = by_topic(&keys, |k| k.1);
        assert_eq!(
            nested,
            vec![
                ("b".to_string(), vec![2]),
                ("a".to_string(), vec![0, 1]),
                ("b".to_string(), vec![0]),
            ]
        );
    }
}
