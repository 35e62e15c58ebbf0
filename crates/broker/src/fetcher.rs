//! The follower side of replication: one task per leader broker copies the logs of every
//! partition this broker follows from that leader, with Kafka's own Fetch API (`replica_id`
//! set) on one connection (Kafka's `num.replica.fetchers` = 1), in an incremental fetch
//! session (KIP-227): one FULL request names every partition, then each INCREMENTAL request
//! names only the partitions whose fetch offset changed (or that joined or left), and the
//! leader answers only the partitions that changed. An idle round costs the same whatever the
//! number of partitions: the request and the response are empty, and only what a response
//! carries is touched. A session error (evicted, wrong epoch) falls back to a FULL request.
//!
//! A partition first cuts any divergent suffix with OffsetsForLeaderEpoch, and every partition
//! appended in a round is fsynced before the next fetch, so that its fetch offset tells the
//! leader how much it holds durably.
//!
//! The replica manager hands partitions to the fetchers ([`FetcherManager::add`]) when they
//! start following, and takes them back when their log is deleted
//! ([`FetcherManager::remove`]); a fetcher hears only of these changes. A partition whose role
//! changed otherwise (the stop receiver of [`Partition::follow`] closed) leaves its fetcher
//! when the leader answers it with an error, as the leader does once the roles move.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
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

use crate::fetch_session::{next_epoch, INITIAL_EPOCH, INVALID_SESSION_ID};
use crate::handlers::{metadata::LISTENER, s};
use crate::partition::{Partition, Role};
use crate::peer::PeerConn;
use crate::replication_quota::Side;
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
/// After this many incremental fetches in a row that carried no partition either way, the
/// fetcher says once that its session is idle (what an idle cluster's followers should do).
const IDLE_FETCHES_LOGGED: u32 = 20;

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

/// What a fetcher task and the replica manager share: the changes since the fetcher last
/// looked, the latest per partition (`Some`: fetch it, anew if it differs; `None`: stop).
struct Shared {
    changes: Mutex<HashMap<Key, Option<Followed>>>,
    /// Bumped after a change: wakes an idle fetcher.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn push(&self, key: Key, change: Option<Followed>) {
        lock(&self.changes).insert(key, change);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn take(&self) -> HashMap<Key, Option<Followed>> {
        std::mem::take(&mut *lock(&self.changes))
    }
}

struct FetcherHandle {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Fetchers {
    by_leader: HashMap<NodeId, FetcherHandle>,
    /// Which fetcher each partition was handed to.
    followed: HashMap<Key, (NodeId, Weak<Partition>)>,
}

/// The replica fetchers of this broker: one task per leader it follows partitions of. A
/// fetcher without partitions idles (no connection) until one is added.
#[derive(Default)]
pub(crate) struct FetcherManager {
    fetchers: Mutex<Fetchers>,
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
        let fetchers = &mut *fetchers;
        if let Some((before, _)) = fetchers.followed.get(&key) {
            if *before != leader {
                if let Some(handle) = fetchers.by_leader.get(before) {
                    handle.shared.push(key.clone(), None);
                }
            }
        }
        let handle = fetchers.by_leader.entry(leader).or_insert_with(|| {
            let (changed, _) = watch::channel(0u64);
            let shared = Arc::new(Shared { changes: Mutex::new(HashMap::new()), changed });
            let task = tokio::spawn(run(ctx.clone(), leader, shared.clone()));
            FetcherHandle { shared, task }
        });
        let followed = Followed { part: part.clone(), leader_epoch, stop };
        handle.shared.push(key.clone(), Some(followed));
        fetchers.followed.insert(key, (leader, Arc::downgrade(part)));
    }

    /// `part`'s log is going away: no fetcher may write into it any more.
    pub fn remove(&self, part: &Arc<Partition>) {
        let key = (part.topic.clone(), part.index);
        let mut fetchers = lock(&self.fetchers);
        let Some((leader, handed)) = fetchers.followed.get(&key) else { return };
        if !std::ptr::eq(handed.as_ptr(), Arc::as_ptr(part)) {
            return;
        }
        if let Some(handle) = fetchers.by_leader.get(leader) {
            handle.shared.push(key.clone(), None);
        }
        fetchers.followed.remove(&key);
    }

    /// Stops every fetcher (broker shutdown); none starts afterwards.
    pub async fn shutdown(&self) {
        let handles: Vec<FetcherHandle> = {
            let mut fetchers = lock(&self.fetchers);
            self.closed.store(true, Ordering::Relaxed);
            fetchers.followed.clear();
            fetchers.by_leader.drain().map(|(_, h)| h).collect()
        };
        for h in handles {
            h.task.abort();
            let _ = h.task.await;
        }
    }
}

/// Where one followed partition stands in its fetcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Cut the divergent suffix (OffsetsForLeaderEpoch) before fetching.
    Truncate,
    /// Fetched, in the session.
    Fetch,
    /// Backing off after an error until then; truncates again afterwards.
    Retry(Instant),
    /// Out of the session while this broker's follower replication throttle is exceeded
    /// (Kafka's follower leaves such partitions out of its fetches).
    Held,
}

struct Entry<T> {
    item: T,
    stage: Stage,
    backoff: Duration,
}

/// The leader's fetch session as this fetcher sees it.
#[derive(Debug, Default)]
struct SessionView {
    id: i32,
    /// The epoch of the next request; [`INITIAL_EPOCH`]: the next request is FULL.
    epoch: i32,
    /// Partitions the leader's session holds.
    held: HashSet<Key>,
    /// Partitions the next INCREMENTAL request names: new to the session or at a new offset.
    to_send: BTreeSet<Key>,
    /// Partitions the next INCREMENTAL request forgets.
    to_forget: BTreeSet<Key>,
}

impl SessionView {
    /// The next request is FULL; it closes the session `id` names, if any.
    fn restart(&mut self, id: i32) {
        *self = SessionView { id, ..SessionView::default() };
    }

    /// The partition is fetched again: named in the next request, and no longer forgotten
    /// (the leader applies a request's forgotten partitions after its named ones, so a
    /// partition in both would leave the leader's session).
    fn join(&mut self, key: &Key) {
        self.to_forget.remove(key);
        self.to_send.insert(key.clone());
    }

    /// The partition leaves the session (it is not fetched for now).
    fn leave(&mut self, key: &Key) {
        self.to_send.remove(key);
        if self.held.remove(key) {
            self.to_forget.insert(key.clone());
        }
    }
}

/// One Fetch of the session: what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SessionFetch {
    session_id: i32,
    epoch: i32,
    full: bool,
    partitions: Vec<Key>,
    forgotten: Vec<Key>,
}

/// The follower fetch state of one fetcher, sans IO: which partitions to truncate, which to
/// fetch, which are backing off, and what the leader's fetch session holds. Every operation
/// costs what it changes, except a FULL request and a lost connection, which cover every
/// partition. The task does the IO and reports the outcomes.
struct FetchPlan<T> {
    entries: HashMap<Key, Entry<T>>,
    /// The entries at [`Stage::Truncate`].
    truncate: BTreeSet<Key>,
    /// The entries at [`Stage::Retry`], by when.
    retries: BTreeSet<(Instant, Key)>,
    /// The entries at [`Stage::Held`].
    held: BTreeSet<Key>,
    session: SessionView,
}

impl<T> Default for FetchPlan<T> {
    fn default() -> Self {
        FetchPlan {
            entries: HashMap::new(),
            truncate: BTreeSet::new(),
            retries: BTreeSet::new(),
            held: BTreeSet::new(),
            session: SessionView::default(),
        }
    }
}

impl<T> FetchPlan<T> {
    /// Fetch `item` as `key`; a partition that is new (or followed anew, by `same`) starts
    /// with truncation.
    fn set(&mut self, key: Key, item: T, same: impl Fn(&T, &T) -> bool) {
        if self.entries.get(&key).is_some_and(|e| same(&e.item, &item)) {
            return;
        }
        self.leave(&key);
        self.truncate.insert(key.clone());
        self.entries.insert(key, Entry { item, stage: Stage::Truncate, backoff: BACKOFF_MIN });
    }

    /// The partition is no longer fetched here.
    fn forget(&mut self, key: &Key) {
        self.leave(key);
        self.entries.remove(key);
    }

    /// Takes the partition out of the stage indexes and the session.
    fn leave(&mut self, key: &Key) {
        let Some(e) = self.entries.get(key) else { return };
        match e.stage {
            Stage::Truncate => {
                self.truncate.remove(key);
            }
            Stage::Retry(at) => {
                self.retries.remove(&(at, key.clone()));
            }
            Stage::Held => {
                self.held.remove(key);
            }
            Stage::Fetch => {}
        }
        self.session.leave(key);
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn get(&self, key: &Key) -> Option<&T> {
        self.entries.get(key).map(|e| &e.item)
    }

    /// The partition, if it is being fetched (not truncating or backing off).
    fn fetching(&self, key: &Key) -> Option<&T> {
        self.entries.get(key).filter(|e| e.stage == Stage::Fetch).map(|e| &e.item)
    }

    /// Anything to do now: a partition to truncate or to fetch.
    fn has_work(&self) -> bool {
        !self.truncate.is_empty()
            || self.entries.len() > self.truncate.len() + self.retries.len() + self.held.len()
    }

    /// The partitions being fetched that `throttled` picks leave the session until
    /// [`FetchPlan::release`]. Costs what the plan holds: called only while a throttle is
    /// exceeded.
    fn hold(&mut self, mut throttled: impl FnMut(&Key) -> bool) {
        let keys: Vec<Key> = self
            .entries
            .iter()
            .filter(|(k, e)| e.stage == Stage::Fetch && throttled(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.session.leave(&key);
            if let Some(e) = self.entries.get_mut(&key) {
                e.stage = Stage::Held;
            }
            self.held.insert(key);
        }
    }

    /// The held partitions are fetched again: named in the next request.
    fn release(&mut self) {
        for key in std::mem::take(&mut self.held) {
            if let Some(e) = self.entries.get_mut(&key) {
                e.stage = Stage::Fetch;
                self.session.join(&key);
            }
        }
    }

    /// Partitions to cut before they are fetched.
    fn to_truncate(&self) -> Vec<Key> {
        self.truncate.iter().cloned().collect()
    }

    /// Partitions whose backoff ended truncate again.
    fn due(&mut self, now: Instant) {
        while let Some((at, _)) = self.retries.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.retries.pop_first() else { break };
            if let Some(e) = self.entries.get_mut(&key) {
                e.stage = Stage::Truncate;
                self.truncate.insert(key);
            }
        }
    }

    /// When the first backing-off partition may be tried again.
    fn next_retry(&self) -> Option<Instant> {
        self.retries.first().map(|(at, _)| *at)
    }

    /// Cut: the partition is fetched from now on, and named in the next request.
    fn truncated(&mut self, key: &Key) {
        let Some(e) = self.entries.get_mut(key) else { return };
        if e.stage == Stage::Truncate {
            self.truncate.remove(key);
            e.stage = Stage::Fetch;
            self.session.join(key);
        }
    }

    /// A good answer: the backoff starts over.
    fn fetched(&mut self, key: &Key) {
        if let Some(e) = self.entries.get_mut(key) {
            e.backoff = BACKOFF_MIN;
        }
    }

    /// The partition's fetch offset moved (it appended what it fetched): the next request
    /// names it.
    fn moved(&mut self, key: &Key) {
        if self.entries.get(key).is_some_and(|e| e.stage == Stage::Fetch) {
            self.session.to_send.insert(key.clone());
        }
    }

    /// The partition failed: out of the session for a while, then truncate again and fetch.
    fn failed(&mut self, key: &Key, now: Instant) {
        self.leave(key);
        let Some(e) = self.entries.get_mut(key) else { return };
        let at = now + e.backoff;
        e.stage = Stage::Retry(at);
        e.backoff = (e.backoff * 2).min(BACKOFF_MAX);
        self.retries.insert((at, key.clone()));
    }

    /// The connection to the leader was lost: every partition truncates again, and the next
    /// fetch starts a new session.
    fn reconnected(&mut self) {
        for (key, e) in self.entries.iter_mut() {
            if e.stage == Stage::Fetch {
                e.stage = Stage::Truncate;
                self.truncate.insert(key.clone());
            }
        }
        self.session.restart(self.session.id);
    }

    /// The partitions of the leader's session.
    fn session_partitions(&self) -> usize {
        self.session.held.len()
    }

    /// The next Fetch: FULL (every partition being fetched, the list turned by `round` so that
    /// a full response budget does not always go to the same ones) or INCREMENTAL (the
    /// partitions to name and to forget). `None` when no partition is being fetched.
    fn next_fetch(&mut self, round: usize) -> Option<SessionFetch> {
        let session = &mut self.session;
        if session.epoch == INITIAL_EPOCH {
            let mut partitions: Vec<Key> = self
                .entries
                .iter()
                .filter(|(_, e)| e.stage == Stage::Fetch)
                .map(|(k, _)| k.clone())
                .collect();
            if partitions.is_empty() {
                return None;
            }
            partitions.sort();
            let first = round % partitions.len();
            partitions.rotate_left(first);
            return Some(SessionFetch {
                session_id: session.id,
                epoch: INITIAL_EPOCH,
                full: true,
                partitions,
                forgotten: Vec::new(),
            });
        }
        if session.held.is_empty() && session.to_send.is_empty() {
            // Everything left the session: start a new one when there is something to fetch.
            session.restart(session.id);
            return None;
        }
        Some(SessionFetch {
            session_id: session.id,
            epoch: session.epoch,
            full: false,
            partitions: session.to_send.iter().cloned().collect(),
            forgotten: session.to_forget.iter().cloned().collect(),
        })
    }

    /// Partitions of `fetch` the task could not name (their log could not be read): they
    /// back off, and the request goes without them.
    fn drop_from(&mut self, fetch: &mut SessionFetch, failed: &[Key], now: Instant) {
        for key in failed {
            self.failed(key, now);
        }
        fetch.partitions.retain(|k| !failed.contains(k));
    }

    /// The leader answered `fetch` with this top-level error code and session id.
    fn answered(&mut self, fetch: &SessionFetch, error_code: i16, session_id: i32) {
        let session = &mut self.session;
        match K::try_from_code(error_code) {
            None if fetch.full => {
                session.restart(INVALID_SESSION_ID);
                if session_id != INVALID_SESSION_ID {
                    // A new session at epoch 1 holding every partition named.
                    session.id = session_id;
                    session.epoch = next_epoch(INITIAL_EPOCH);
                    session.held = fetch.partitions.iter().cloned().collect();
                }
                // Otherwise no session (the leader's cache is full): FULL again next time.
            }
            None if session_id != session.id => {
                // The leader closed the session (emptied or grown past its bound).
                session.restart(INVALID_SESSION_ID);
            }
            None => {
                session.epoch = next_epoch(session.epoch);
                for key in &fetch.partitions {
                    session.to_send.remove(key);
                    session.held.insert(key.clone());
                }
                for key in &fetch.forgotten {
                    session.to_forget.remove(key);
                    session.held.remove(key);
                }
            }
            // The epoch went out of step (a request lost with its connection, a retry): start
            // again, closing it.
            Some(K::InvalidFetchSessionEpoch) => session.restart(session.id),
            // Evicted, or never ours; or anything else: start again from nothing.
            Some(_) => session.restart(INVALID_SESSION_ID),
        }
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
    let mut changed = shared.changed.subscribe();
    let mut plan: FetchPlan<Followed> = FetchPlan::default();
    let mut conn: Option<PeerConn> = None;
    let mut backoff = BACKOFF_MIN;
    let mut round: usize = 0;
    // Incremental fetches in a row that carried no partition either way.
    let mut idle_fetches: u32 = 0;
    loop {
        changed.borrow_and_update();
        for (key, change) in shared.take() {
            match change {
                Some(followed) => plan.set(key, followed, Followed::same),
                None => plan.forget(&key),
            }
        }
        if plan.is_empty() {
            // Nothing to follow here: no connection, no traffic until a partition is added.
            conn = None;
            plan.session.restart(INVALID_SESSION_ID);
            if changed.changed().await.is_err() {
                return;
            }
            continue;
        }
        let now = Instant::now();
        plan.due(now);
        let throttled_for = follower_throttle(&ctx, &mut plan);
        if !plan.has_work() {
            let until = plan.next_retry().unwrap_or(now + BACKOFF_MAX);
            let until = throttled_for.map_or(until, |wait| until.min(now + wait));
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = changed.changed() => {}
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
        let to_truncate = plan.to_truncate();
        if !to_truncate.is_empty() {
            if let Err(why) = truncate(c, &client_id, me, leader, &mut plan, &to_truncate).await {
                conn = None;
                plan.reconnected();
                tokio::time::sleep(lost(why, &mut backoff)).await;
                continue;
            }
        }
        round = round.wrapping_add(1);
        let Some(mut fetch) = plan.next_fetch(round) else { continue };
        let Some(req) = fetch_request(me, &mut plan, &mut fetch) else { continue };
        // Partitions added meanwhile wait for this long-poll (at most REPLICA_FETCH_WAIT_MS):
        // leaving it would lose the session's step.
        let resp: FetchResponse = match c.call(ApiKey::Fetch, FETCH_VERSION, &req, &client_id).await
        {
            Ok(r) => r,
            Err(why) => {
                conn = None;
                plan.reconnected();
                tokio::time::sleep(lost(why, &mut backoff)).await;
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        plan.answered(&fetch, resp.error_code, resp.session_id);
        if resp.error_code != 0 {
            tracing::debug!(
                leader = leader.0,
                error = resp.error_code,
                session_id = fetch.session_id,
                epoch = fetch.epoch,
                "replica fetch session refused; starting a new one"
            );
            idle_fetches = 0;
            continue;
        }
        if fetch.full && resp.session_id != INVALID_SESSION_ID {
            tracing::info!(
                leader = leader.0,
                session_id = resp.session_id,
                partitions = fetch.partitions.len(),
                "replica fetch session established"
            );
        }
        let idle = !fetch.full
            && fetch.partitions.is_empty()
            && fetch.forgotten.is_empty()
            && resp.responses.is_empty();
        idle_fetches = if idle { idle_fetches.saturating_add(1) } else { 0 };
        if idle_fetches == IDLE_FETCHES_LOGGED {
            tracing::info!(
                leader = leader.0,
                session_id = resp.session_id,
                partitions = plan.session_partitions(),
                fetches = idle_fetches,
                "replica fetch session idle: incremental fetches carry no partition either way"
            );
        }
        if ctx.replication_quotas.is_active(Side::Follower) {
            record_throttled(&ctx, &resp);
        }
        on_fetched(leader, &mut plan, resp).await;
    }
}

/// While this broker's follower replication throttle is exceeded, holds the throttled
/// partitions that are out of the ISR back (they leave the session), and says for how long;
/// otherwise fetches them again.
fn follower_throttle(ctx: &BrokerCtx, plan: &mut FetchPlan<Followed>) -> Option<Duration> {
    let me = ctx.image.node;
    let quotas = &ctx.replication_quotas;
    quotas.follow(&ctx.image.current(), ctx.config.node_id, ctx.clock.now_ms());
    let wait_ms = if quotas.is_active(Side::Follower) {
        quotas.state().wait_ms(Side::Follower, ctx.clock.now_ms())
    } else {
        0
    };
    if wait_ms <= 0 {
        plan.release();
        return None;
    }
    let image = ctx.image.current();
    let state = quotas.state();
    plan.hold(|(topic, index)| {
        state.is_throttled(Side::Follower, topic, *index, me)
            && !image.partition(topic, *index).is_some_and(|p| p.isr.contains(&me))
    });
    drop(state);
    (!plan.held.is_empty()).then(|| Duration::from_millis(wait_ms as u64))
}

/// Counts the records a response carries for throttled partitions against the follower
/// throttle (whole partition chunks, as received).
fn record_throttled(ctx: &BrokerCtx, resp: &FetchResponse) {
    let me = ctx.image.node;
    let mut quotas = ctx.replication_quotas.state();
    let bytes: usize = resp
        .responses
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.as_str(), p)))
        .filter(|(topic, p)| quotas.is_throttled(Side::Follower, topic, p.partition_index, me))
        .map(|(_, p)| p.records.as_ref().map_or(0, |r| r.len()))
        .sum();
    if bytes > 0 {
        quotas.record(Side::Follower, bytes, ctx.clock.now_ms());
    }
}

/// The Fetch of `fetch` (partitions whose log cannot be read back off and are left out).
fn fetch_request(
    me: NodeId,
    plan: &mut FetchPlan<Followed>,
    fetch: &mut SessionFetch,
) -> Option<FetchRequest> {
    let mut offsets = HashMap::with_capacity(fetch.partitions.len());
    let mut failed = Vec::new();
    for key in &fetch.partitions {
        let Some(f) = plan.get(key) else {
            failed.push(key.clone());
            continue;
        };
        let at = if f.part.progress().offline {
            None
        } else {
            f.part.log().ok().map(|l| (l.log_end_offset(), l.log_start_offset(), f.leader_epoch))
        };
        match at {
            Some(at) => {
                offsets.insert(key.clone(), at);
            }
            None => failed.push(key.clone()),
        }
    }
    if !failed.is_empty() {
        plan.drop_from(fetch, &failed, Instant::now());
    }
    if fetch.full && fetch.partitions.is_empty() {
        return None;
    }
    let topics = by_topic(&fetch.partitions, |key| {
        let (fetch_offset, log_start, leader_epoch) = offsets[key];
        FetchPartition::default()
            .with_partition(key.1)
            .with_current_leader_epoch(leader_epoch)
            .with_fetch_offset(fetch_offset)
            .with_log_start_offset(log_start)
            .with_partition_max_bytes(REPLICA_FETCH_MAX_BYTES)
    });
    let forgotten = by_topic(&fetch.forgotten, |key| key.1);
    Some(
        FetchRequest::default()
            .with_replica_id(BrokerId(me.0))
            .with_max_wait_ms(REPLICA_FETCH_WAIT_MS)
            .with_min_bytes(1)
            .with_max_bytes(REPLICA_FETCH_RESPONSE_MAX_BYTES)
            .with_session_id(fetch.session_id)
            .with_session_epoch(fetch.epoch)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        FetchTopic::default()
                            .with_topic(TopicName(s(topic)))
                            .with_partitions(partitions)
                    })
                    .collect(),
            )
            .with_forgotten_topics_data(
                forgotten
                    .into_iter()
                    .map(|(topic, partitions)| {
                        ForgottenTopic::default()
                            .with_topic(TopicName(s(topic)))
                            .with_partitions(partitions)
                    })
                    .collect(),
            ),
    )
}

/// Appends what the leader sent, fsyncs every appended partition, then takes the leader's
/// high watermarks. Touches only the partitions the response carries; an error affects only
/// its partition.
async fn on_fetched(leader: NodeId, plan: &mut FetchPlan<Followed>, resp: FetchResponse) {
    let now = Instant::now();
    let mut appended: Vec<(Key, Arc<Partition>)> = Vec::new();
    let mut hws: Vec<(Key, Arc<Partition>, i64, i64)> = Vec::new();
    for t in resp.responses {
        let topic = t.topic.0.to_string();
        for p in t.partitions {
            let key = (topic.clone(), p.partition_index);
            let Some(f) = plan.fetching(&key).cloned() else { continue };
            if !f.current() {
                // A new role owns the partition: its leader answers errors now.
                plan.forget(&key);
                continue;
            }
            match K::try_from_code(p.error_code) {
                None => {}
                Some(K::OffsetOutOfRange) => {
                    // The leader's log starts after ours ends (DeleteRecords or retention):
                    // start over, empty, at its start, as Kafka's followers do. Else it ends
                    // before ours: truncate again.
                    let ends_before =
                        f.part.log().is_ok_and(|l| p.log_start_offset > l.log_end_offset());
                    if ends_before {
                        let cut = f.part.with_role(|role| {
                            let current = matches!(role,
                                Role::Follower { leader: l, leader_epoch: e, .. } if *l == leader && *e == f.leader_epoch);
                            current.then(|| f.part.truncate_fully_and_start_at(p.log_start_offset))
                        });
                        match cut {
                            Some(Some(Ok(()))) => {
                                plan.fetched(&key);
                                plan.moved(&key);
                                continue;
                            }
                            Some(None) => {
                                plan.forget(&key);
                                continue;
                            }
                            Some(Some(Err(e))) => {
                                tracing::warn!(topic = %key.0, partition = key.1, error = %e, "truncation failed");
                            }
                            None => {}
                        }
                    }
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
            let records = p.records.unwrap_or_default();
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
            hws.push((key, f.part, p.high_watermark, p.log_start_offset));
        }
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
                    match result {
                        Ok(()) => plan.moved(&key),
                        Err(e) => {
                            tracing::warn!(topic = %key.0, partition = key.1, error = %e, "replica flush failed");
                            plan.failed(&key, now);
                            hws.retain(|(k, _, _, _)| *k != key);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "replica flush task failed");
                for (key, _, _, _) in hws.drain(..) {
                    plan.failed(&key, now);
                }
            }
        }
    }
    for (_, part, hw, log_start) in hws {
        part.set_follower_hw(hw);
        // After the high watermark, which bounds it.
        part.set_follower_log_start(log_start);
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
        for (t, i, e) in wanted {
            plan.set(key(t, *i), *e, |a, b| a == b);
        }
        plan
    }

    /// A plan whose partitions all truncated and whose session holds them (epoch 1).
    fn in_session(wanted: &[(&str, i32, i32)]) -> FetchPlan<i32> {
        let mut plan = plan_of(wanted);
        for k in plan.to_truncate() {
            plan.truncated(&k);
        }
        let full = plan.next_fetch(0).expect("a full fetch");
        plan.answered(&full, 0, 77);
        plan
    }

    fn incremental(partitions: &[Key], forgotten: &[Key], epoch: i32) -> SessionFetch {
        SessionFetch {
            session_id: 77,
            epoch,
            full: false,
            partitions: partitions.to_vec(),
            forgotten: forgotten.to_vec(),
        }
    }

    #[test]
    fn a_new_partition_truncates_before_it_is_fetched() {
        let mut plan = plan_of(&[("a", 0, 1), ("a", 1, 1)]);
        assert_eq!(plan.to_truncate(), vec![key("a", 0), key("a", 1)]);
        assert_eq!(plan.next_fetch(0), None, "nothing to fetch yet");
        plan.truncated(&key("a", 1));
        assert_eq!(plan.to_truncate(), vec![key("a", 0)]);
        let full = plan.next_fetch(0).expect("a fetch");
        assert!(full.full);
        assert_eq!(full.partitions, vec![key("a", 1)]);
    }

    #[test]
    fn a_session_starts_full_then_names_only_what_changed() {
        let mut plan = in_session(&[("a", 0, 1), ("a", 1, 1), ("b", 0, 1)]);
        assert_eq!(plan.session_partitions(), 3);
        let idle = plan.next_fetch(1).expect("a fetch");
        assert_eq!(idle, incremental(&[], &[], 1), "idle: names nothing");
        plan.answered(&idle, 0, 77);
        // a-1 appended what it fetched; b-0 failed and leaves the session.
        plan.moved(&key("a", 1));
        plan.failed(&key("b", 0), Instant::now());
        let next = plan.next_fetch(2).expect("a fetch");
        assert_eq!(next, incremental(&[key("a", 1)], &[key("b", 0)], 2));
        plan.answered(&next, 0, 77);
        assert_eq!(plan.session_partitions(), 2);
        assert_eq!(plan.next_fetch(3), Some(incremental(&[], &[], 3)));
    }

    #[test]
    fn throttled_partitions_leave_the_session_while_held_and_come_back_when_released() {
        let mut plan = in_session(&[("a", 0, 1), ("a", 1, 1)]);
        plan.hold(|k| *k == key("a", 1));
        let fetch = plan.next_fetch(1).expect("a fetch");
        assert_eq!(fetch, incremental(&[], &[key("a", 1)], 1), "forgets the held partition");
        plan.answered(&fetch, 0, 77);
        assert_eq!(plan.session_partitions(), 1);
        // Everything held: nothing to fetch until released.
        plan.hold(|_| true);
        assert!(!plan.has_work());
        plan.release();
        assert!(plan.has_work());
        let fetch = plan.next_fetch(2).expect("a fetch");
        assert_eq!(fetch, incremental(&[key("a", 0), key("a", 1)], &[], 2), "both named again");
    }

    #[test]
    fn session_errors_fall_back_to_a_full_fetch() {
        let mut plan = in_session(&[("a", 0, 1), ("a", 1, 1)]);
        let fetch = plan.next_fetch(0).expect("a fetch");
        plan.answered(&fetch, K::InvalidFetchSessionEpoch.code(), 0);
        let full = plan.next_fetch(0).expect("a fetch");
        assert!(full.full);
        assert_eq!((full.session_id, full.epoch), (77, 0), "closes the old session");
        assert_eq!(full.partitions.len(), 2, "names every partition again");
        plan.answered(&full, K::FetchSessionIdNotFound.code(), 0);
        let again = plan.next_fetch(0).expect("a fetch");
        assert_eq!((again.session_id, again.epoch, again.full), (0, 0, true));
        // The leader's cache is full: no session, FULL every time.
        plan.answered(&again, 0, INVALID_SESSION_ID);
        assert!(plan.next_fetch(0).expect("a fetch").full);
        // A session the leader closed on an incremental fetch (answered without its id).
        let mut plan = in_session(&[("a", 0, 1)]);
        let fetch = plan.next_fetch(0).expect("a fetch");
        plan.answered(&fetch, 0, INVALID_SESSION_ID);
        assert!(plan.next_fetch(0).expect("a fetch").full);
    }

    #[test]
    fn a_new_leader_epoch_truncates_again_and_leaves_the_session_meanwhile() {
        let mut plan = in_session(&[("a", 0, 1), ("b", 0, 1)]);
        plan.set(key("a", 0), 2, |a, b| a == b);
        assert_eq!(plan.get(&key("a", 0)), Some(&2));
        assert_eq!(plan.to_truncate(), vec![key("a", 0)]);
        assert_eq!(plan.next_fetch(0), Some(incremental(&[], &[key("a", 0)], 1)));
        // The same follow again changes nothing.
        plan.set(key("b", 0), 1, |a, b| a == b);
        assert!(plan.fetching(&key("b", 0)).is_some());
        plan.forget(&key("b", 0));
        assert_eq!(plan.get(&key("b", 0)), None);
        // Nothing is left in the session: no request until a partition can be fetched, and
        // then a new session, closing the old one.
        assert_eq!(plan.next_fetch(0), None);
        plan.truncated(&key("a", 0));
        let full = plan.next_fetch(0).expect("a fetch");
        assert_eq!((full.session_id, full.epoch, full.full), (77, INITIAL_EPOCH, true));
        assert_eq!(full.partitions, vec![key("a", 0)]);
    }

    #[test]
    fn a_failed_partition_backs_off_alone_then_truncates_again() {
        let now = Instant::now();
        let mut plan = in_session(&[("a", 0, 1), ("a", 1, 1)]);
        plan.failed(&key("a", 0), now);
        assert!(plan.fetching(&key("a", 0)).is_none());
        assert!(plan.to_truncate().is_empty());
        assert_eq!(plan.next_retry(), Some(now + BACKOFF_MIN));
        plan.due(now);
        assert!(plan.to_truncate().is_empty(), "not yet");
        plan.due(now + BACKOFF_MIN);
        assert_eq!(plan.to_truncate(), vec![key("a", 0)]);
        assert_eq!(plan.next_retry(), None);
        plan.truncated(&key("a", 0));
        let next = plan.next_fetch(0).expect("a fetch");
        assert_eq!(next.partitions, vec![key("a", 0)], "back in the session");
    }

    #[test]
    fn a_partition_back_before_its_forget_was_sent_is_named_and_not_forgotten() {
        let now = Instant::now();
        let mut plan = in_session(&[("a", 0, 1), ("a", 1, 1)]);
        plan.failed(&key("a", 0), now);
        plan.due(now + BACKOFF_MIN);
        plan.truncated(&key("a", 0));
        assert_eq!(plan.next_fetch(0), Some(incremental(&[key("a", 0)], &[], 1)));
    }

    #[test]
    fn with_every_partition_backing_off_there_is_nothing_to_do() {
        let now = Instant::now();
        let mut plan = in_session(&[("a", 0, 1)]);
        assert!(plan.has_work());
        plan.failed(&key("a", 0), now);
        assert!(!plan.has_work());
        plan.due(now + BACKOFF_MIN);
        assert!(plan.has_work(), "truncating again");
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
        plan.due(now + BACKOFF_MAX);
        plan.truncated(&k);
        plan.fetched(&k);
        assert_eq!(plan.next_retry(), None);
        plan.failed(&k, now);
        assert_eq!(plan.next_retry(), Some(now + BACKOFF_MIN));
    }

    #[test]
    fn a_lost_connection_truncates_every_partition_again_and_starts_a_new_session() {
        let mut plan = in_session(&[("a", 0, 1), ("b", 3, 1)]);
        plan.reconnected();
        assert_eq!(plan.to_truncate(), vec![key("a", 0), key("b", 3)]);
        plan.truncated(&key("b", 3));
        let full = plan.next_fetch(0).expect("a fetch");
        assert!(full.full);
        assert_eq!(full.partitions, vec![key("b", 3)]);
        plan.forget(&key("a", 0));
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
