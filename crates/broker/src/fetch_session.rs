//! Incremental fetch sessions (KIP-227): a fetcher, follower or consumer, names its partitions
//! once in a FULL request; later INCREMENTAL requests carry only the partitions whose fetch
//! position changed (and `forgotten_topics_data`), and the leader answers only the partitions
//! that changed: records, a moved high watermark, last stable offset or log start offset, or
//! an error.
//!
//! [`SessionCache`] is the sans-IO core: Kafka's session ids and epochs, the cache of
//! `max.incremental.fetch.session.cache.slots` sessions with Kafka's eviction order, and per
//! session what each partition was last asked and answered. It also keeps each session's dirty
//! set, so that a fetch checks only the partitions that changed since the last one instead of
//! every partition of the session.
//!
//! [`FetchSessions`] is its shell. A partition learns which sessions want it
//! (`Partition::subscribe`) and, when it changes, marks itself in each one's [`SessionSignal`]:
//! one set insert and at most one wake per session, which a parked fetch of that session waits
//! on. The signal also carries the time of the session's latest fetch, which the ISR check
//! reads for followers whose partitions the session leaves out because nothing changed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use strom_metadata::{NodeId, TopicId};
use tokio::sync::watch;

/// `max.incremental.fetch.session.cache.slots`: Kafka's default number of sessions a broker
/// keeps.
pub const CACHE_SLOTS_DEFAULT: usize = 1000;
/// The most sessions the setting may ask for: a full cache is scanned when a new session
/// would evict one.
pub const CACHE_SLOTS_MAX: usize = 100_000;
const _: () = assert!(CACHE_SLOTS_DEFAULT <= CACHE_SLOTS_MAX);
/// A session unused for longer than this may be evicted for any new one; a session created
/// less than this ago is evicted only for a follower's when it is a consumer's (Kafka's
/// `MIN_INCREMENTAL_FETCH_SESSION_EVICTION_MS`).
pub(crate) const EVICTION_MS: i64 = 120_000;
/// The most partitions one session holds: a FULL request with more gets no session, an
/// INCREMENTAL one that would grow past it closes its session (the client starts again FULL).
pub(crate) const SESSION_PARTITIONS_MAX: usize = 300_000;
/// The most partitions all sessions hold together, bounding the cache's memory.
pub(crate) const CACHED_PARTITIONS_MAX: usize = 1_000_000;
const _: () = assert!(SESSION_PARTITIONS_MAX <= CACHED_PARTITIONS_MAX);

/// The session id of "no session" (a sessionless request or response).
pub(crate) const INVALID_SESSION_ID: i32 = 0;
/// The epoch of a FULL request that asks for a new session.
pub(crate) const INITIAL_EPOCH: i32 = 0;
/// The epoch of a FULL request that wants no session (and closes the one it names).
pub(crate) const FINAL_EPOCH: i32 = -1;

/// The epoch a session expects after one at `epoch` (Kafka's `FetchMetadata.nextEpoch`).
pub(crate) fn next_epoch(epoch: i32) -> i32 {
    if epoch < 0 {
        FINAL_EPOCH
    } else if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

/// The maps here hold no invariant a panic could tear: a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A topic as a session names it: by id from Fetch v13 on, by name before.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum TopicKey {
    Id(TopicId),
    Name(Arc<str>),
}

/// A partition as a session names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PartitionKey {
    pub topic: TopicKey,
    pub partition: i32,
}

/// What a fetcher asks of one partition; a session keeps the latest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FetchParams {
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
    /// -1: the fetcher does not say.
    pub current_leader_epoch: i32,
    /// The fetcher's own log start offset (followers).
    pub log_start_offset: i64,
}

/// The offsets an answer told the fetcher: a partition is answered again when one moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Answered {
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
}

/// How one partition of a session's fetch turned out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Checked {
    pub key: PartitionKey,
    /// Answered with an error: answered again on every fetch until the error goes.
    pub error: bool,
    /// The answer carries records.
    pub records: bool,
    /// Check it again on the next fetch: it had records to serve (the fetcher may not move
    /// its position) or some the response had no room for.
    pub again: bool,
    pub answered: Answered,
}

/// Why a request's session cannot be used; the whole request is answered with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionError {
    /// FETCH_SESSION_ID_NOT_FOUND: no such session (evicted, closed, or not the fetcher's).
    IdNotFound,
    /// INVALID_FETCH_SESSION_EPOCH: the epoch is not the one the session expects.
    InvalidEpoch,
    /// FETCH_SESSION_TOPIC_ID_ERROR: the session names topics by id and the request by name,
    /// or the other way round.
    TopicIdError,
}

/// A Fetch request's session fields and partitions, as the cache reads them.
#[derive(Clone, Debug)]
pub(crate) struct SessionRequest {
    pub session_id: i32,
    pub epoch: i32,
    /// The follower that fetches (`replica_id`); `None` for a consumer.
    pub replica: Option<NodeId>,
    /// Fetch v13+: topics by id.
    pub uses_topic_ids: bool,
    /// The request's partitions, in request order.
    pub partitions: Vec<(PartitionKey, FetchParams)>,
    /// `forgotten_topics_data`.
    pub forgotten: Vec<PartitionKey>,
}

/// How a request is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// No session: the request's partitions are answered in full, with session id 0 (a
    /// sessionless or FINAL request, a full cache, or an incremental request that emptied or
    /// overfilled its session).
    Sessionless,
    /// A new session holds the request's partitions: they are all answered, with its id.
    Full { session_id: i32 },
    /// A request on an existing session, now at `epoch`: the partitions its
    /// [`SessionCache::candidates`] name are checked, and those that changed are answered.
    Incremental { session_id: i32, epoch: i32 },
}

/// What opening a request did besides choosing how it is served.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct OpenEffects {
    /// Sessions that ended (closed by the request, evicted, emptied).
    pub closed: Vec<i32>,
    /// Partitions the request's session forgot.
    pub forgotten: Vec<PartitionKey>,
}

/// One partition of a session.
#[derive(Clone, Debug)]
struct CachedPartition {
    params: FetchParams,
    /// What the fetcher was last told; `None` before the first answer and after an error.
    answered: Option<Answered>,
    /// Its place in the session: candidates are checked, and fill the response, in this
    /// order. A partition that returns records goes to the end, so that a full response
    /// budget does not always go to the same partitions.
    order: u64,
}

#[derive(Clone, Debug)]
struct Session {
    id: i32,
    /// The epoch the next request must carry.
    epoch: i32,
    replica: Option<NodeId>,
    uses_topic_ids: bool,
    created_ms: i64,
    last_used_ms: i64,
    partitions: HashMap<PartitionKey, CachedPartition>,
    /// Partitions that changed since a fetch last checked them.
    dirty: HashSet<PartitionKey>,
    /// Partitions last answered with an error: checked on every fetch.
    errored: HashSet<PartitionKey>,
    next_order: u64,
}

impl Session {
    /// Followers' sessions are privileged: a consumer's never evicts a young one.
    fn privileged(&self) -> bool {
        self.replica.is_some()
    }

    fn insert(&mut self, key: PartitionKey, params: FetchParams) -> bool {
        match self.partitions.get_mut(&key) {
            Some(cached) => {
                cached.params = params;
                false
            }
            None => {
                let order = self.next_order;
                self.next_order += 1;
                self.partitions.insert(key, CachedPartition { params, answered: None, order });
                true
            }
        }
    }

    fn remove(&mut self, key: &PartitionKey) -> bool {
        self.dirty.remove(key);
        self.errored.remove(key);
        self.partitions.remove(key).is_some()
    }
}

/// The fetch session cache, sans IO: time comes in as `now_ms`, session ids from a seeded
/// generator.
#[derive(Debug)]
pub(crate) struct SessionCache {
    slots: usize,
    sessions: HashMap<i32, Session>,
    /// Partitions held by all sessions.
    partitions: usize,
    rng: u64,
}

impl SessionCache {
    pub fn new(slots: usize, seed: u64) -> SessionCache {
        SessionCache { slots, sessions: HashMap::new(), partitions: 0, rng: seed }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sessions.len()
    }

    /// A fresh session id: random (so that a client of an earlier incarnation of this broker
    /// does not land on another client's session), positive, unused.
    fn new_id(&mut self) -> i32 {
        loop {
            // splitmix64
            self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let id = (z & 0x7fff_ffff) as i32;
            if id != INVALID_SESSION_ID && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    fn remove_session(&mut self, id: i32, effects: &mut OpenEffects) {
        if let Some(s) = self.sessions.remove(&id) {
            self.partitions -= s.partitions.len();
            effects.closed.push(id);
        }
    }

    /// Makes room for a new session of `size` partitions, as Kafka does: the least recently
    /// used session goes if it has been idle for [`EVICTION_MS`]; otherwise the least valuable
    /// evictable one (consumers' before followers', small before large) goes if it is worth
    /// less than the new one. Only sessions older than [`EVICTION_MS`] are evictable, except
    /// that a follower may evict any consumer's.
    fn try_evict(
        &mut self,
        privileged: bool,
        size: usize,
        now_ms: i64,
        effects: &mut OpenEffects,
    ) -> bool {
        let stalest = self.sessions.values().min_by_key(|s| (s.last_used_ms, s.id));
        let Some(stalest) = stalest else { return false };
        if now_ms - stalest.last_used_ms > EVICTION_MS {
            let id = stalest.id;
            self.remove_session(id, effects);
            return true;
        }
        let cheapest = self
            .sessions
            .values()
            .filter(|s| (privileged && !s.privileged()) || now_ms - s.created_ms > EVICTION_MS)
            .min_by_key(|s| (s.privileged(), s.partitions.len(), s.id));
        match cheapest {
            Some(s) if (privileged, size) > (s.privileged(), s.partitions.len()) => {
                let id = s.id;
                self.remove_session(id, effects);
                true
            }
            _ => false,
        }
    }

    /// Decides how a request is served and applies it to its session: a FULL request
    /// (epoch 0 or -1) closes the session it names and, at epoch 0, gets a new one if there is
    /// room; an INCREMENTAL request updates, adds and forgets partitions of its session and
    /// moves the session to the next epoch. Partitions it names become candidates.
    pub fn open(
        &mut self,
        req: &SessionRequest,
        now_ms: i64,
    ) -> (Result<Opened, SessionError>, OpenEffects) {
        let mut effects = OpenEffects::default();
        if req.epoch == INITIAL_EPOCH || req.epoch == FINAL_EPOCH {
            if req.session_id != INVALID_SESSION_ID {
                self.remove_session(req.session_id, &mut effects);
            }
            if req.epoch == FINAL_EPOCH {
                return (Ok(Opened::Sessionless), effects);
            }
            let opened = self.create(req, now_ms, &mut effects);
            return (Ok(opened), effects);
        }
        let opened = self.update(req, now_ms, &mut effects);
        (opened, effects)
    }

    fn create(&mut self, req: &SessionRequest, now_ms: i64, effects: &mut OpenEffects) -> Opened {
        let privileged = req.replica.is_some();
        let size = req.partitions.len();
        if size > SESSION_PARTITIONS_MAX
            || self.partitions + size > CACHED_PARTITIONS_MAX
            || self.slots == 0
        {
            return Opened::Sessionless;
        }
        if self.sessions.len() >= self.slots && !self.try_evict(privileged, size, now_ms, effects) {
            return Opened::Sessionless;
        }
        let id = self.new_id();
        let mut session = Session {
            id,
            epoch: next_epoch(INITIAL_EPOCH),
            replica: req.replica,
            uses_topic_ids: req.uses_topic_ids,
            created_ms: now_ms,
            last_used_ms: now_ms,
            partitions: HashMap::with_capacity(size),
            dirty: HashSet::new(),
            errored: HashSet::new(),
            next_order: 0,
        };
        for (key, params) in &req.partitions {
            session.insert(key.clone(), *params);
        }
        self.partitions += session.partitions.len();
        self.sessions.insert(id, session);
        Opened::Full { session_id: id }
    }

    fn update(
        &mut self,
        req: &SessionRequest,
        now_ms: i64,
        effects: &mut OpenEffects,
    ) -> Result<Opened, SessionError> {
        let Some(session) = self.sessions.get(&req.session_id) else {
            return Err(SessionError::IdNotFound);
        };
        if session.replica != req.replica {
            // Another fetcher's session: as if it did not exist.
            return Err(SessionError::IdNotFound);
        }
        if session.uses_topic_ids != req.uses_topic_ids {
            return Err(SessionError::TopicIdError);
        }
        if session.epoch != req.epoch {
            return Err(SessionError::InvalidEpoch);
        }
        let added: HashSet<&PartitionKey> = req
            .partitions
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !session.partitions.contains_key(*k))
            .collect();
        let grown = session.partitions.len() + added.len();
        if grown > SESSION_PARTITIONS_MAX || self.partitions + added.len() > CACHED_PARTITIONS_MAX {
            self.remove_session(req.session_id, effects);
            return Ok(Opened::Sessionless);
        }
        let Some(session) = self.sessions.get_mut(&req.session_id) else {
            return Err(SessionError::IdNotFound);
        };
        let before = session.partitions.len();
        for (key, params) in &req.partitions {
            session.insert(key.clone(), *params);
            session.dirty.insert(key.clone());
        }
        for key in &req.forgotten {
            if session.remove(key) {
                effects.forgotten.push(key.clone());
            }
        }
        let after = session.partitions.len();
        if after == 0 {
            // Kafka closes a session its fetcher emptied and answers without one.
            self.partitions -= before;
            self.sessions.remove(&req.session_id);
            effects.closed.push(req.session_id);
            return Ok(Opened::Sessionless);
        }
        session.epoch = next_epoch(session.epoch);
        session.last_used_ms = now_ms;
        let opened = Opened::Incremental { session_id: session.id, epoch: session.epoch };
        self.partitions = self.partitions + after - before;
        Ok(opened)
    }

    /// `keys` changed (the partitions' own report): the session's next fetch checks them.
    /// Keys the session no longer holds are ignored.
    pub fn mark_dirty(&mut self, session_id: i32, keys: impl IntoIterator<Item = PartitionKey>) {
        let Some(session) = self.sessions.get_mut(&session_id) else { return };
        for key in keys {
            if session.partitions.contains_key(&key) {
                session.dirty.insert(key);
            }
        }
    }

    /// The partitions the fetch of `epoch` checks now: those that changed (or that the request
    /// named) since the last check, and those last answered with an error, in session order
    /// with their place. Takes them out of the dirty set.
    pub fn candidates(
        &mut self,
        session_id: i32,
        epoch: i32,
    ) -> Result<Vec<(PartitionKey, FetchParams, u64)>, SessionError> {
        let session = self.sessions.get_mut(&session_id).ok_or(SessionError::IdNotFound)?;
        if session.epoch != epoch {
            return Err(SessionError::InvalidEpoch);
        }
        let dirty = std::mem::take(&mut session.dirty);
        let mut out: Vec<(PartitionKey, FetchParams, u64)> = dirty
            .into_iter()
            .chain(session.errored.iter().cloned())
            .filter_map(|key| {
                let cached = session.partitions.get(&key)?;
                Some((key, cached.params, cached.order))
            })
            .collect();
        out.sort_by_key(|(_, _, order)| *order);
        out.dedup_by_key(|(_, _, order)| *order);
        Ok(out)
    }

    /// The fetch of `epoch` answers: records what each checked partition was told and returns,
    /// per partition, whether the answer includes it (Kafka's rule: records, an error, or a
    /// high watermark, last stable offset or log start offset other than last told). A FULL
    /// answer includes every partition whatever this says. When another request moved the
    /// session on meanwhile, nothing is recorded, the partitions stay candidates, and the
    /// answer is INVALID_FETCH_SESSION_EPOCH.
    pub fn commit(
        &mut self,
        session_id: i32,
        epoch: i32,
        checked: &[Checked],
        now_ms: i64,
    ) -> Result<Vec<bool>, SessionError> {
        let session = self.sessions.get_mut(&session_id).ok_or(SessionError::IdNotFound)?;
        if session.epoch != epoch {
            for c in checked {
                if session.partitions.contains_key(&c.key) {
                    session.dirty.insert(c.key.clone());
                }
            }
            return Err(SessionError::InvalidEpoch);
        }
        session.last_used_ms = session.last_used_ms.max(now_ms);
        let mut included = Vec::with_capacity(checked.len());
        for c in checked {
            let Some(cached) = session.partitions.get_mut(&c.key) else {
                included.push(false);
                continue;
            };
            included.push(c.error || c.records || cached.answered != Some(c.answered));
            if c.error {
                cached.answered = None;
                session.errored.insert(c.key.clone());
            } else {
                cached.answered = Some(c.answered);
                session.errored.remove(&c.key);
            }
            if c.records {
                cached.order = session.next_order;
                session.next_order += 1;
            }
            if c.again {
                session.dirty.insert(c.key.clone());
            }
        }
        Ok(included)
    }
}

/// How a session's partitions reach it: a partition that changes marks itself here (see
/// `Partition::subscribe`); the session's fetches drain the marks and wait on the wake. One
/// per session, and one for each sessionless fetch that waits.
#[derive(Debug)]
pub(crate) struct SessionSignal {
    /// The follower whose session this is; `None` for a consumer's or a sessionless fetch.
    pub replica: Option<NodeId>,
    /// When the session last fetched (ms): its follower then held what the session remembers.
    last_fetch_ms: AtomicI64,
    closed: AtomicBool,
    /// Partitions marked since the last drain: at most the session's partitions.
    pending: Mutex<HashSet<PartitionKey>>,
    /// Bumped when `pending` becomes non-empty.
    wake: watch::Sender<u64>,
}

impl SessionSignal {
    pub fn new(replica: Option<NodeId>) -> SessionSignal {
        SessionSignal {
            replica,
            last_fetch_ms: AtomicI64::new(i64::MIN),
            closed: AtomicBool::new(false),
            pending: Mutex::new(HashSet::new()),
            wake: watch::channel(0).0,
        }
    }

    /// `key` changed: the session's next fetch checks it, and a waiting one wakes.
    pub fn mark(&self, key: &PartitionKey) {
        let mut pending = lock(&self.pending);
        if pending.contains(key) {
            return;
        }
        let first = pending.is_empty();
        pending.insert(key.clone());
        drop(pending);
        if first {
            self.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The marks since the last drain.
    pub fn drain(&self) -> HashSet<PartitionKey> {
        std::mem::take(&mut *lock(&self.pending))
    }

    /// Changes when a partition is marked (take it before draining, so no mark is missed).
    pub fn wakes(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// The session ended: partitions drop it the next time they look.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// When the session last fetched, while it is open.
    pub fn last_fetch_ms(&self) -> Option<i64> {
        let at = self.last_fetch_ms.load(Ordering::Relaxed);
        (!self.is_closed() && at != i64::MIN).then_some(at)
    }

    fn fetched(&self, now_ms: i64) {
        self.last_fetch_ms.fetch_max(now_ms, Ordering::Relaxed);
    }
}

/// Closes a sessionless fetch's own signal when the fetch ends.
pub(crate) struct CloseOnDrop(pub Arc<SessionSignal>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// How the handler serves a request, with the signal its partitions mark.
pub(crate) enum Open {
    Sessionless,
    Full { session_id: i32, signal: Arc<SessionSignal> },
    Incremental { session_id: i32, epoch: i32, signal: Arc<SessionSignal> },
}

/// The broker's fetch sessions: the cache behind one short lock (never held across partition
/// locks or IO) and each session's signal.
pub(crate) struct FetchSessions {
    inner: Mutex<Shell>,
}

struct Shell {
    cache: SessionCache,
    signals: HashMap<i32, Arc<SessionSignal>>,
}

impl FetchSessions {
    pub fn new(slots: usize, seed: u64) -> FetchSessions {
        FetchSessions {
            inner: Mutex::new(Shell {
                cache: SessionCache::new(slots, seed),
                signals: HashMap::new(),
            }),
        }
    }

    /// Opens `req` (see [`SessionCache::open`]). Returns how to serve it and the partitions its
    /// session forgot (the caller unsubscribes them).
    pub fn open(
        &self,
        req: &SessionRequest,
        now_ms: i64,
    ) -> (Result<Open, SessionError>, Vec<PartitionKey>) {
        let mut shell = lock(&self.inner);
        let (opened, effects) = shell.cache.open(req, now_ms);
        for id in &effects.closed {
            if let Some(signal) = shell.signals.remove(id) {
                signal.close();
            }
        }
        let open = opened.map(|opened| match opened {
            Opened::Sessionless => Open::Sessionless,
            Opened::Full { session_id } => {
                let signal = Arc::new(SessionSignal::new(req.replica));
                signal.fetched(now_ms);
                shell.signals.insert(session_id, signal.clone());
                tracing::debug!(session_id, replica = ?req.replica, partitions = req.partitions.len(), "fetch session created");
                Open::Full { session_id, signal }
            }
            Opened::Incremental { session_id, epoch } => {
                let signal = shell
                    .signals
                    .entry(session_id)
                    .or_insert_with(|| Arc::new(SessionSignal::new(req.replica)))
                    .clone();
                signal.fetched(now_ms);
                Open::Incremental { session_id, epoch, signal }
            }
        });
        (open, effects.forgotten)
    }

    /// The partitions the incremental fetch of `epoch` checks now (see
    /// [`SessionCache::candidates`]), after taking in what its partitions marked.
    pub fn candidates(
        &self,
        session_id: i32,
        epoch: i32,
        signal: &SessionSignal,
    ) -> Result<Vec<(PartitionKey, FetchParams, u64)>, SessionError> {
        let mut shell = lock(&self.inner);
        shell.cache.mark_dirty(session_id, signal.drain());
        shell.cache.candidates(session_id, epoch)
    }

    /// See [`SessionCache::commit`].
    pub fn commit(
        &self,
        session_id: i32,
        epoch: i32,
        checked: &[Checked],
        now_ms: i64,
    ) -> Result<Vec<bool>, SessionError> {
        lock(&self.inner).cache.commit(session_id, epoch, checked, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str, partition: i32) -> PartitionKey {
        PartitionKey { topic: TopicKey::Name(topic.into()), partition }
    }

    fn at(offset: i64) -> FetchParams {
        FetchParams {
            fetch_offset: offset,
            partition_max_bytes: 1 << 20,
            current_leader_epoch: 0,
            log_start_offset: 0,
        }
    }

    fn request(session_id: i32, epoch: i32, partitions: &[(PartitionKey, i64)]) -> SessionRequest {
        SessionRequest {
            session_id,
            epoch,
            replica: None,
            uses_topic_ids: false,
            partitions: partitions.iter().map(|(k, o)| (k.clone(), at(*o))).collect(),
            forgotten: Vec::new(),
        }
    }

    fn answered(hw: i64) -> Answered {
        Answered { high_watermark: hw, last_stable_offset: hw, log_start_offset: 0 }
    }

    fn checked(key: &PartitionKey, hw: i64) -> Checked {
        Checked {
            key: key.clone(),
            error: false,
            records: false,
            again: false,
            answered: answered(hw),
        }
    }

    /// A consumer's session over `keys`, answered once at high watermark 0 everywhere.
    fn session_of(cache: &mut SessionCache, keys: &[PartitionKey], now_ms: i64) -> i32 {
        let parts: Vec<(PartitionKey, i64)> = keys.iter().map(|k| (k.clone(), 0)).collect();
        let (opened, _) = cache.open(&request(0, INITIAL_EPOCH, &parts), now_ms);
        let Ok(Opened::Full { session_id }) = opened else { panic!("no session: {opened:?}") };
        let all: Vec<Checked> = keys.iter().map(|k| checked(k, 0)).collect();
        cache.commit(session_id, 1, &all, now_ms).expect("commits");
        session_id
    }

    fn keys_of(candidates: &[(PartitionKey, FetchParams, u64)]) -> Vec<PartitionKey> {
        candidates.iter().map(|(k, _, _)| k.clone()).collect()
    }

    #[test]
    fn a_full_request_creates_a_session_at_epoch_one_and_an_idle_fetch_checks_nothing() {
        let mut cache = SessionCache::new(10, 7);
        let (a, b) = (key("t", 0), key("t", 1));
        let id = session_of(&mut cache, &[a.clone(), b.clone()], 0);
        assert_ne!(id, INVALID_SESSION_ID);
        let (opened, effects) = cache.open(&request(id, 1, &[]), 10);
        assert_eq!(opened, Ok(Opened::Incremental { session_id: id, epoch: 2 }));
        assert_eq!(effects, OpenEffects::default());
        assert_eq!(cache.candidates(id, 2), Ok(Vec::new()), "nothing changed: nothing to check");
        assert_eq!(cache.commit(id, 2, &[], 10), Ok(Vec::new()));
    }

    #[test]
    fn sessionless_and_final_requests_get_no_session_and_final_closes_the_named_one() {
        let mut cache = SessionCache::new(10, 7);
        let (opened, _) = cache.open(&request(0, FINAL_EPOCH, &[(key("t", 0), 0)]), 0);
        assert_eq!(opened, Ok(Opened::Sessionless));
        assert_eq!(cache.len(), 0);
        let id = session_of(&mut cache, &[key("t", 0)], 0);
        let (opened, effects) = cache.open(&request(id, FINAL_EPOCH, &[(key("t", 0), 0)]), 1);
        assert_eq!(opened, Ok(Opened::Sessionless));
        assert_eq!(effects.closed, vec![id]);
        assert_eq!(cache.open(&request(id, 1, &[]), 2).0, Err(SessionError::IdNotFound));
    }

    #[test]
    fn a_full_request_naming_its_session_replaces_it() {
        let mut cache = SessionCache::new(10, 7);
        let old = session_of(&mut cache, &[key("t", 0)], 0);
        let (opened, effects) = cache.open(&request(old, INITIAL_EPOCH, &[(key("t", 1), 0)]), 1);
        let Ok(Opened::Full { session_id: new }) = opened else { panic!("{opened:?}") };
        assert_ne!(new, old);
        assert_eq!(effects.closed, vec![old]);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn incremental_requests_add_update_and_forget_partitions() {
        let mut cache = SessionCache::new(10, 7);
        let (a, b, c) = (key("t", 0), key("t", 1), key("u", 0));
        let id = session_of(&mut cache, &[a.clone(), b.clone()], 0);
        // Update a's position and add c: both are checked, b is not.
        let (opened, _) = cache.open(&request(id, 1, &[(a.clone(), 5), (c.clone(), 0)]), 1);
        assert_eq!(opened, Ok(Opened::Incremental { session_id: id, epoch: 2 }));
        let candidates = cache.candidates(id, 2).expect("candidates");
        assert_eq!(keys_of(&candidates), vec![a.clone(), c.clone()], "session order");
        assert_eq!(candidates[0].1.fetch_offset, 5, "the session keeps the new position");
        // c is new: answered; a's offsets are what it was told: left out.
        let included = cache.commit(id, 2, &[checked(&a, 0), checked(&c, 0)], 1);
        assert_eq!(included, Ok(vec![false, true]));
        // Forget b.
        let mut forget = request(id, 2, &[]);
        forget.forgotten = vec![b.clone(), key("never", 0)];
        let (opened, effects) = cache.open(&forget, 2);
        assert_eq!(opened, Ok(Opened::Incremental { session_id: id, epoch: 3 }));
        assert_eq!(effects.forgotten, vec![b.clone()], "only what the session held");
        cache.mark_dirty(id, [b.clone(), a.clone()]);
        assert_eq!(keys_of(&cache.candidates(id, 3).expect("candidates")), vec![a.clone()]);
    }

    #[test]
    fn a_session_its_fetcher_empties_closes_and_the_request_is_sessionless() {
        let mut cache = SessionCache::new(10, 7);
        let id = session_of(&mut cache, &[key("t", 0)], 0);
        let mut forget = request(id, 1, &[]);
        forget.forgotten = vec![key("t", 0)];
        let (opened, effects) = cache.open(&forget, 1);
        assert_eq!(opened, Ok(Opened::Sessionless));
        assert_eq!(effects.closed, vec![id]);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_wrong_epoch_an_unknown_id_or_another_fetcher_is_refused_and_changes_nothing() {
        let mut cache = SessionCache::new(10, 7);
        let id = session_of(&mut cache, &[key("t", 0)], 0);
        assert_eq!(cache.open(&request(id, 2, &[]), 1).0, Err(SessionError::InvalidEpoch));
        assert_eq!(cache.open(&request(id, 0x7fff, &[]), 1).0, Err(SessionError::InvalidEpoch));
        let unknown = if id == 1 { 2 } else { 1 };
        assert_eq!(cache.open(&request(unknown, 1, &[]), 1).0, Err(SessionError::IdNotFound));
        assert_eq!(cache.open(&request(0, 1, &[]), 1).0, Err(SessionError::IdNotFound));
        let mut follower = request(id, 1, &[]);
        follower.replica = Some(NodeId(2));
        assert_eq!(cache.open(&follower, 1).0, Err(SessionError::IdNotFound), "not its session");
        let mut by_id = request(id, 1, &[]);
        by_id.uses_topic_ids = true;
        assert_eq!(cache.open(&by_id, 1).0, Err(SessionError::TopicIdError));
        // Still at epoch 1.
        let (opened, _) = cache.open(&request(id, 1, &[]), 1);
        assert_eq!(opened, Ok(Opened::Incremental { session_id: id, epoch: 2 }));
    }

    #[test]
    fn the_epoch_wraps_to_one() {
        assert_eq!(next_epoch(0), 1);
        assert_eq!(next_epoch(41), 42);
        assert_eq!(next_epoch(i32::MAX), 1);
        assert_eq!(next_epoch(FINAL_EPOCH), FINAL_EPOCH);
    }

    #[test]
    fn only_dirty_and_errored_partitions_are_checked_and_only_changes_answered() {
        let mut cache = SessionCache::new(10, 7);
        let keys: Vec<PartitionKey> = (0..100).map(|p| key("t", p)).collect();
        let id = session_of(&mut cache, &keys, 0);
        cache.open(&request(id, 1, &[]), 1).0.expect("opens");
        // Two partitions changed: an append and a high watermark move.
        cache.mark_dirty(id, [keys[70].clone(), keys[3].clone(), keys[70].clone()]);
        let candidates = cache.candidates(id, 2).expect("candidates");
        assert_eq!(keys_of(&candidates), vec![keys[3].clone(), keys[70].clone()]);
        let records = Checked { records: true, again: true, ..checked(&keys[70], 0) };
        let error = Checked { error: true, ..checked(&keys[3], 0) };
        assert_eq!(cache.commit(id, 2, &[error, records], 1), Ok(vec![true, true]));
        // Next fetch: the errored one again, the one that returned records again (its fetcher
        // may not move), nothing else.
        cache.open(&request(id, 2, &[]), 2).0.expect("opens");
        let candidates = cache.candidates(id, 3).expect("candidates");
        assert_eq!(keys_of(&candidates), vec![keys[3].clone(), keys[70].clone()]);
        // The error went and the hw is as told: 3 is answered (its cached hw was cleared),
        // 70 is not.
        let included = cache.commit(id, 3, &[checked(&keys[3], 0), checked(&keys[70], 0)], 2);
        assert_eq!(included, Ok(vec![true, false]));
        cache.open(&request(id, 3, &[]), 3).0.expect("opens");
        assert_eq!(cache.candidates(id, 4), Ok(Vec::new()));
        // A moved high watermark, last stable offset or log start offset is answered.
        for changed in [
            Answered { high_watermark: 1, last_stable_offset: 0, log_start_offset: 0 },
            Answered { high_watermark: 0, last_stable_offset: 1, log_start_offset: 0 },
            Answered { high_watermark: 0, last_stable_offset: 0, log_start_offset: 1 },
        ] {
            let mut fresh = SessionCache::new(10, 7);
            let id = session_of(&mut fresh, &[keys[0].clone()], 0);
            fresh.open(&request(id, 1, &[]), 1).0.expect("opens");
            fresh.mark_dirty(id, [keys[0].clone()]);
            fresh.candidates(id, 2).expect("candidates");
            let c = Checked { answered: changed, ..checked(&keys[0], 0) };
            assert_eq!(fresh.commit(id, 2, &[c], 1), Ok(vec![true]), "{changed:?}");
        }
    }

    #[test]
    fn a_partition_that_returned_records_goes_to_the_end_of_the_line() {
        let mut cache = SessionCache::new(10, 7);
        let keys: Vec<PartitionKey> = (0..3).map(|p| key("t", p)).collect();
        let id = session_of(&mut cache, &keys, 0);
        cache.open(&request(id, 1, &[]), 1).0.expect("opens");
        cache.mark_dirty(id, keys.iter().cloned());
        assert_eq!(keys_of(&cache.candidates(id, 2).expect("candidates")), keys);
        let served = Checked { records: true, ..checked(&keys[0], 0) };
        let all = [served, checked(&keys[1], 0), checked(&keys[2], 0)];
        cache.commit(id, 2, &all, 1).expect("commits");
        cache.open(&request(id, 2, &[]), 2).0.expect("opens");
        cache.mark_dirty(id, keys.iter().cloned());
        let order = keys_of(&cache.candidates(id, 3).expect("candidates"));
        assert_eq!(order, vec![keys[1].clone(), keys[2].clone(), keys[0].clone()]);
    }

    #[test]
    fn a_commit_after_another_request_moved_the_session_records_nothing() {
        let mut cache = SessionCache::new(10, 7);
        let a = key("t", 0);
        let id = session_of(&mut cache, std::slice::from_ref(&a), 0);
        cache.open(&request(id, 1, &[(a.clone(), 3)]), 1).0.expect("opens");
        let first = cache.candidates(id, 2).expect("candidates");
        // A second request (a retry) arrives before the first answers.
        cache.open(&request(id, 2, &[]), 2).0.expect("opens");
        let c = Checked { records: true, ..checked(&a, 5) };
        assert_eq!(cache.commit(id, 2, &[c], 2), Err(SessionError::InvalidEpoch));
        assert_eq!(cache.candidates(id, 2), Err(SessionError::InvalidEpoch));
        assert_eq!(keys_of(&cache.candidates(id, 3).expect("candidates")), keys_of(&first));
    }

    /// Fills the cache: `consumers` consumer sessions then `followers` follower sessions, one
    /// partition each, created at `now_ms`; returns their ids.
    fn fill(cache: &mut SessionCache, consumers: usize, followers: usize, now_ms: i64) -> Vec<i32> {
        let mut ids = Vec::new();
        for n in 0..consumers + followers {
            let mut req = request(0, INITIAL_EPOCH, &[(key("t", n as i32), 0)]);
            if n >= consumers {
                req.replica = Some(NodeId(n as i32));
            }
            match cache.open(&req, now_ms).0 {
                Ok(Opened::Full { session_id }) => ids.push(session_id),
                other => panic!("{other:?}"),
            }
        }
        ids
    }

    fn big_request(partitions: i32, replica: Option<NodeId>) -> SessionRequest {
        let parts: Vec<(PartitionKey, i64)> = (0..partitions).map(|p| (key("big", p), 0)).collect();
        SessionRequest { replica, ..request(0, INITIAL_EPOCH, &parts) }
    }

    #[test]
    fn a_full_cache_evicts_a_stale_session_first() {
        let mut cache = SessionCache::new(2, 7);
        let ids = fill(&mut cache, 0, 2, 0);
        // ids[1] fetches later: ids[0] is the least recently used.
        cache
            .open(&SessionRequest { replica: Some(NodeId(1)), ..request(ids[1], 1, &[]) }, 100)
            .0
            .expect("opens");
        let (opened, effects) = cache.open(&request(0, INITIAL_EPOCH, &[(key("c", 0), 0)]), 50);
        assert_eq!(opened, Ok(Opened::Sessionless), "young followers' sessions stay");
        assert!(effects.closed.is_empty());
        let later = EVICTION_MS + 1;
        let (opened, effects) = cache.open(&request(0, INITIAL_EPOCH, &[(key("c", 0), 0)]), later);
        assert!(matches!(opened, Ok(Opened::Full { .. })), "{opened:?}");
        assert_eq!(effects.closed, vec![ids[0]], "unused for longer than the eviction time");
    }

    #[test]
    fn a_follower_evicts_a_young_consumer_session_and_a_consumer_does_not() {
        let mut cache = SessionCache::new(2, 7);
        let ids = fill(&mut cache, 1, 1, 0);
        let (opened, _) = cache.open(&big_request(5, None), 1);
        assert_eq!(opened, Ok(Opened::Sessionless), "young sessions are safe from consumers");
        let (opened, effects) = cache.open(&big_request(1, Some(NodeId(9))), 1);
        assert!(matches!(opened, Ok(Opened::Full { .. })), "{opened:?}");
        assert_eq!(effects.closed, vec![ids[0]], "the consumer's session");
        // Only followers' sessions left, all young: a follower cannot evict them either.
        let (opened, _) = cache.open(&big_request(1, Some(NodeId(8))), 2);
        assert_eq!(opened, Ok(Opened::Sessionless));
    }

    #[test]
    fn an_old_session_is_evicted_only_for_a_more_valuable_one() {
        let mut cache = SessionCache::new(2, 7);
        let small = session_of(&mut cache, &[key("s", 0)], 0);
        let parts: Vec<PartitionKey> = (0..3).map(|p| key("m", p)).collect();
        let medium = session_of(&mut cache, &parts, 0);
        // Both are old now but were used recently (not stale).
        let now = EVICTION_MS + 10;
        cache.open(&request(small, 1, &[]), now).0.expect("opens");
        cache.open(&request(medium, 1, &[]), now).0.expect("opens");
        let (opened, _) = cache.open(&big_request(1, None), now);
        assert_eq!(opened, Ok(Opened::Sessionless), "not larger than the smallest");
        let (opened, effects) = cache.open(&big_request(2, None), now);
        assert!(matches!(opened, Ok(Opened::Full { .. })), "{opened:?}");
        assert_eq!(effects.closed, vec![small], "the smallest goes first");
    }

    #[test]
    fn sessions_are_bounded_in_partitions() {
        let mut cache = SessionCache::new(10, 7);
        let (opened, _) = cache.open(&big_request(SESSION_PARTITIONS_MAX as i32 + 1, None), 0);
        assert_eq!(opened, Ok(Opened::Sessionless), "too large for a session");
        let id = session_of(&mut cache, &[key("t", 0)], 0);
        let parts: Vec<(PartitionKey, i64)> =
            (0..SESSION_PARTITIONS_MAX as i32).map(|p| (key("big", p), 0)).collect();
        let (opened, effects) = cache.open(&request(id, 1, &parts), 1);
        assert_eq!(opened, Ok(Opened::Sessionless), "grown past the bound: closed");
        assert_eq!(effects.closed, vec![id]);
        assert_eq!(cache.partitions, 0);
    }

    #[test]
    fn a_zero_slot_cache_creates_no_session() {
        let mut cache = SessionCache::new(0, 7);
        let (opened, _) = cache.open(&request(0, INITIAL_EPOCH, &[(key("t", 0), 0)]), 0);
        assert_eq!(opened, Ok(Opened::Sessionless));
    }

    #[test]
    fn a_signal_wakes_once_until_drained_and_reports_fetches_while_open() {
        let signal = SessionSignal::new(Some(NodeId(2)));
        let mut wakes = signal.wakes();
        assert_eq!(signal.last_fetch_ms(), None);
        signal.mark(&key("t", 0));
        assert!(wakes.has_changed().expect("open"));
        wakes.borrow_and_update();
        signal.mark(&key("t", 1));
        signal.mark(&key("t", 0));
        assert!(!wakes.has_changed().expect("open"), "marks pending: no second wake");
        assert_eq!(signal.drain().len(), 2);
        signal.mark(&key("t", 1));
        assert!(wakes.has_changed().expect("open"), "drained: the next mark wakes");
        signal.fetched(40);
        signal.fetched(30);
        assert_eq!(signal.last_fetch_ms(), Some(40), "never goes back");
        signal.close();
        assert_eq!(signal.last_fetch_ms(), None);
    }
}
