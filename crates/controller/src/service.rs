//! The gRPC services a controller serves on its control port: `strom.raft.v1.Raft` (the other
//! voters' replication RPCs, handed to openraft once their replica keys name this replica) and `strom.controller.v1.Controller` (requests
//! relayed to this node while it is the active controller, and the metadata stream that
//! broker-only nodes follow).
//!
//! The metadata stream is fed by a tap on the state machine's listener ([`metadata_feed`]): it
//! keeps the latest committed image and a bounded backlog of recent entries as deltas, so a
//! watcher that reconnects or reads slowly catches up with deltas, and one further behind
//! gets the whole image, in chunks of bounded size (`SnapshotChunk`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::BoxStream;
use openraft::error::{InstallSnapshotError, RaftError};
use strom_metadata::records::MetadataRecord;
use strom_metadata::{ControlError, MetadataImage, MetadataListener, MetadataOffset};
use strom_proto::controller as cpb;
use strom_proto::raft as rpb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::codec;
use crate::events::EventClient;
use crate::network::{check_keys, ReplicaKey};
use crate::relay::{hint_value, Target, LEADER_HINT};
use crate::types::Raft;
use crate::wire;

/// How often a replica logs that it refuses RPCs meant for another replica: once is enough
/// to see, every RPC would flood the log.
pub const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

/// Serves openraft's voter-to-voter RPCs for one raft node.
pub struct RaftService {
    raft: Raft,
    /// This replica: RPCs meant for another one are refused.
    me: ReplicaKey,
    /// When a refusal was last logged.
    refusal_logged: Mutex<Option<tokio::time::Instant>>,
}

impl RaftService {
    pub(crate) fn new(raft: Raft, me: ReplicaKey) -> RaftService {
        RaftService { raft, me, refusal_logged: Mutex::new(None) }
    }

    /// Refuses (FAILED_PRECONDITION) an RPC meant for another replica: KIP-853's
    /// INVALID_VOTER_KEY, so that a replica whose disk was wiped neither votes nor acknowledges
    /// entries as its former self.
    fn check(&self, keys: Option<&rpb::ReplicaKeys>) -> Result<(), Status> {
        let Err(reason) = check_keys(self.me, keys) else { return Ok(()) };
        let now = tokio::time::Instant::now();
        let mut logged = self.refusal_logged.lock().unwrap_or_else(|p| p.into_inner());
        let due = logged.is_none_or(|at| {
            now.duration_since(at) >= Duration::from_millis(REFUSAL_LOG_INTERVAL_MS)
        });
        if due {
            *logged = Some(now);
            let from = keys.map_or(0, |k| k.from_node_id);
            tracing::error!(node_id = self.me.node_id, from, "refusing raft RPCs: {reason}");
        }
        Err(Status::failed_precondition(reason))
    }
}

fn malformed(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("malformed raft message: {e}"))
}

/// A raft that stopped (shut down, or a storage failure) answers like an unreachable peer, so
/// the sender backs off instead of spinning.
fn stopped(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft is not running: {e}"))
}

#[tonic::async_trait]
impl rpb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<rpb::AppendEntriesRequest>,
    ) -> Result<Response<rpb::AppendEntriesResponse>, Status> {
        let request = request.into_inner();
        self.check(request.keys.as_ref())?;
        let rpc = codec::append_request_from_pb(request).map_err(malformed)?;
        let answer = self.raft.append_entries(rpc).await.map_err(stopped)?;
        Ok(Response::new(codec::append_response_to_pb(&answer)))
    }

    async fn vote(
        &self,
        request: Request<rpb::VoteRequest>,
    ) -> Result<Response<rpb::VoteResponse>, Status> {
        let request = request.into_inner();
        self.check(request.keys.as_ref())?;
        let rpc = codec::vote_request_from_pb(request).map_err(malformed)?;
        let answer = self.raft.vote(rpc).await.map_err(stopped)?;
        Ok(Response::new(codec::vote_response_to_pb(&answer)))
    }

    async fn install_snapshot(
        &self,
        request: Request<rpb::InstallSnapshotRequest>,
    ) -> Result<Response<rpb::InstallSnapshotReply>, Status> {
        let request = request.into_inner();
        self.check(request.keys.as_ref())?;
        let rpc = codec::install_request_from_pb(request).map_err(malformed)?;
        let answer = match self.raft.install_snapshot(rpc).await {
            Ok(resp) => Ok(resp),
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => Err(m),
            Err(RaftError::Fatal(e)) => return Err(stopped(e)),
        };
        Ok(Response::new(codec::install_reply_to_pb(&answer)))
    }
}

/// Serves requests relayed by other voters, to this node's active controller task only, and
/// this voter's committed metadata to watchers.
pub struct ControllerService {
    local: Arc<EventClient>,
    feed: MetadataFeed,
    leader: watch::Receiver<Option<u64>>,
    /// The voters and their control addresses, to name the active controller to a caller
    /// that asked this node while it does not lead.
    voters: watch::Receiver<Arc<Vec<Target>>>,
}

impl ControllerService {
    pub(crate) fn new(
        local: Arc<EventClient>,
        feed: MetadataFeed,
        leader: watch::Receiver<Option<u64>>,
        voters: watch::Receiver<Arc<Vec<Target>>>,
    ) -> ControllerService {
        ControllerService { local, feed, leader, voters }
    }

    /// `id@addr` of the active controller as this node knows it.
    fn leader_hint(&self) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
        let leader = (*self.leader.borrow())?;
        let voters = self.voters.borrow().clone();
        let target = voters.iter().find(|t| t.node_id == Some(leader))?;
        hint_value(leader, &target.addr).parse().ok()
    }
}

#[tonic::async_trait]
impl cpb::controller_server::Controller for ControllerService {
    async fn submit(
        &self,
        request: Request<cpb::ControlRequest>,
    ) -> Result<Response<cpb::ControlResponse>, Status> {
        let request = wire::request_from_pb(request.into_inner())
            .map_err(|e| Status::invalid_argument(format!("malformed control request: {e}")))?;
        let answer = self.local.submit_local(request).await;
        let not_controller = matches!(answer, Err(ControlError::NotController));
        let mut response = Response::new(wire::response_to_pb(&answer));
        if let Some(hint) = self.leader_hint().filter(|_| not_controller) {
            response.metadata_mut().insert(LEADER_HINT, hint);
        }
        Ok(response)
    }

    type WatchMetadataStream = BoxStream<'static, Result<cpb::MetadataUpdate, Status>>;

    async fn watch_metadata(
        &self,
        request: Request<cpb::WatchMetadataRequest>,
    ) -> Result<Response<Self::WatchMetadataStream>, Status> {
        let request = request.into_inner();
        let slot = WatcherSlot::claim(&self.feed.watchers).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "this controller already serves {WATCHERS_MAX} metadata watchers"
            ))
        })?;
        tracing::info!(
            broker_id = request.broker_id,
            from_offset = request.from_offset,
            want_snapshot = request.want_snapshot,
            "metadata watcher attached"
        );
        let watch = Watch {
            feed: self.feed.clone(),
            leader: self.leader.clone(),
            cursor: request.from_offset,
            want_snapshot: request.want_snapshot || request.from_offset == 0,
            sent_leader: None,
            pending: VecDeque::new(),
            last_sent: tokio::time::Instant::now(),
            broker_id: request.broker_id,
            _slot: slot,
        };
        let stream = futures::stream::unfold(watch, |mut watch| async move {
            let update = watch.next().await?;
            Some((Ok(update), watch))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

// ---- the metadata stream ----

/// Committed entries kept as deltas for watchers; a watcher further behind gets the image.
pub const WATCH_BACKLOG_ENTRIES_MAX: usize = 1024;

/// Records held in the backlog in all, so a few huge entries cannot pin unbounded memory.
pub const WATCH_BACKLOG_RECORDS_MAX: usize = 64 * 1024;

/// Metadata streams one voter serves at once; past this a watcher is refused
/// (RESOURCE_EXHAUSTED) and tries another voter.
pub const WATCHERS_MAX: usize = 256;

/// A stream that sent nothing for this long sends an update without metadata, so that its
/// watcher can tell a live but quiet voter from a silent one (see `follower`).
pub const WATCH_KEEPALIVE_MS: u64 = 1_000;

/// Deltas a stream takes from the backlog per turn: the lock is held for that long only.
pub const WATCH_BATCH_MAX: usize = 64;

const _: () = assert!(WATCH_BATCH_MAX <= WATCH_BACKLOG_ENTRIES_MAX);

/// One committed entry with records, encoded once for every watcher.
struct Delta {
    prev_offset: u64,
    offset: u64,
    batch: Vec<u8>,
    records: usize,
}

struct FeedState {
    /// The image after the last entry the listener heard of.
    latest: Arc<MetadataImage>,
    /// A chain: each delta's `prev_offset` is the `offset` of the one before it, and the last
    /// one's `offset` is `latest.offset`.
    backlog: VecDeque<Delta>,
    backlog_records: usize,
    /// `latest` encoded as snapshot chunks, made when a watcher first needs it.
    snapshot: Option<(u64, Arc<Vec<Vec<u8>>>)>,
}

struct FeedShared {
    state: Mutex<FeedState>,
}

impl FeedShared {
    /// The state is consistent after every critical section (nothing in them panics on
    /// purpose), so a poisoned lock is still good to read.
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The listener the state machine calls: the node's own listener first, then the feed.
struct FeedTap {
    inner: Arc<dyn MetadataListener>,
    shared: Arc<FeedShared>,
    /// The latest offset; dropped with the state machine, which ends every stream.
    changed: watch::Sender<u64>,
}

/// The service's half of the feed: what watchers read.
#[derive(Clone)]
pub(crate) struct MetadataFeed {
    shared: Arc<FeedShared>,
    changed: watch::Receiver<u64>,
    watchers: Arc<AtomicUsize>,
}

/// Wraps the node's metadata listener so that the controller service can stream what the
/// state machine commits: hand the returned listener to the state machine.
pub(crate) fn metadata_feed(
    inner: Arc<dyn MetadataListener>,
) -> (Arc<dyn MetadataListener>, MetadataFeed) {
    let shared = Arc::new(FeedShared {
        state: Mutex::new(FeedState {
            latest: Arc::new(MetadataImage::default()),
            backlog: VecDeque::new(),
            backlog_records: 0,
            snapshot: None,
        }),
    });
    let (changed, changed_rx) = watch::channel(0);
    let tap = FeedTap { inner, shared: shared.clone(), changed };
    let feed =
        MetadataFeed { shared, changed: changed_rx, watchers: Arc::new(AtomicUsize::new(0)) };
    (Arc::new(tap), feed)
}

impl MetadataListener for FeedTap {
    fn on_commit(
        &self,
        offset: MetadataOffset,
        records: &[MetadataRecord],
        image: Arc<MetadataImage>,
    ) {
        self.inner.on_commit(offset, records, image.clone());
        // The state machine reports an installed snapshot exactly like an entry, with the
        // image's records. Records that rebuild the whole image on their own are therefore
        // sent as a snapshot, never as a delta: a snapshot can drop what a delta cannot.
        // For an ordinary entry this costs about what applying it did (the records build a
        // small image that differs at the first map).
        let whole = MetadataImage::from_records(offset, records).is_ok_and(|i| i == *image);
        let mut state = self.shared.lock();
        let prev_offset = state.latest.offset.0;
        if whole || offset.0 <= prev_offset {
            state.backlog.clear();
            state.backlog_records = 0;
        } else {
            state.backlog.push_back(Delta {
                prev_offset,
                offset: offset.0,
                batch: wire::encode_batch(records),
                records: records.len(),
            });
            state.backlog_records += records.len();
            while state.backlog.len() > WATCH_BACKLOG_ENTRIES_MAX
                || (state.backlog_records > WATCH_BACKLOG_RECORDS_MAX && state.backlog.len() > 1)
            {
                if let Some(old) = state.backlog.pop_front() {
                    state.backlog_records -= old.records;
                }
            }
        }
        state.latest = image;
        state.snapshot = None;
        drop(state);
        self.changed.send_replace(offset.0);
    }
}

/// Counts a stream against [`WATCHERS_MAX`] while it lives.
struct WatcherSlot(Arc<AtomicUsize>);

impl WatcherSlot {
    fn claim(count: &Arc<AtomicUsize>) -> Option<WatcherSlot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < WATCHERS_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| WatcherSlot(count.clone()))
    }
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one stream must send next, decided under the feed's lock.
enum Next {
    /// Nothing new for this watcher (or this voter is behind it).
    Wait,
    Deltas,
    Snapshot {
        image: Arc<MetadataImage>,
        encoded: Option<Arc<Vec<Vec<u8>>>>,
    },
}

/// One watcher's stream: where the watcher stands, and what is queued for it.
struct Watch {
    feed: MetadataFeed,
    leader: watch::Receiver<Option<u64>>,
    /// The offset the watcher is at once it has everything sent so far.
    cursor: u64,
    want_snapshot: bool,
    /// The leader id last sent; `None` before the first update.
    sent_leader: Option<Option<u64>>,
    pending: VecDeque<cpb::MetadataUpdate>,
    last_sent: tokio::time::Instant,
    broker_id: i32,
    _slot: WatcherSlot,
}

impl Watch {
    /// The next update for the watcher; `None` once the controller shuts down.
    async fn next(&mut self) -> Option<cpb::MetadataUpdate> {
        loop {
            if let Some(update) = self.pending.pop_front() {
                return Some(self.sent(update));
            }
            // Marked seen before reading, so a commit after this point wakes the wait below.
            self.feed.changed.borrow_and_update();
            let leader = *self.leader.borrow_and_update();
            let latest = self.fill(leader);
            if !self.pending.is_empty() {
                continue;
            }
            if self.sent_leader != Some(leader) {
                return Some(self.sent(Self::bare(latest, leader)));
            }
            // Counted from the last update sent, so commits this watcher need not hear of
            // (this voter is behind it) do not put the keepalive off.
            let keepalive = tokio::time::sleep_until(
                self.last_sent + Duration::from_millis(WATCH_KEEPALIVE_MS),
            );
            tokio::select! {
                changed = self.feed.changed.changed() => if changed.is_err() { break },
                changed = self.leader.changed() => if changed.is_err() { break },
                () = keepalive => return Some(self.sent(Self::bare(latest, leader))),
            }
        }
        tracing::info!(broker_id = self.broker_id, "controller stopping: metadata stream ends");
        None
    }

    fn sent(&mut self, update: cpb::MetadataUpdate) -> cpb::MetadataUpdate {
        self.sent_leader = Some(wire::leader_from_pb(update.leader_id));
        self.last_sent = tokio::time::Instant::now();
        update
    }

    fn bare(offset: u64, leader: Option<u64>) -> cpb::MetadataUpdate {
        cpb::MetadataUpdate { offset, leader_id: wire::leader_to_pb(leader), update: None }
    }

    /// Queues what brings the watcher from `cursor` towards the latest image; returns the
    /// latest offset.
    fn fill(&mut self, leader: Option<u64>) -> u64 {
        let leader_id = wire::leader_to_pb(leader);
        let (latest, next) = {
            let state = self.feed.shared.lock();
            let latest = state.latest.offset.0;
            let next = if latest < self.cursor || (latest == self.cursor && !self.want_snapshot) {
                // Behind the watcher (it followed a voter further ahead): it waits for us.
                Next::Wait
            } else if self.want_snapshot {
                Next::Snapshot { image: state.latest.clone(), encoded: cached(&state) }
            } else {
                // The first delta must start exactly where the watcher is; the chain then
                // continues delta by delta.
                let start = state.backlog.partition_point(|d| d.prev_offset < self.cursor);
                match state.backlog.get(start) {
                    Some(d) if d.prev_offset == self.cursor => {
                        for d in state.backlog.range(start..).take(WATCH_BATCH_MAX) {
                            self.pending.push_back(cpb::MetadataUpdate {
                                offset: d.offset,
                                leader_id,
                                update: Some(cpb::metadata_update::Update::Delta(
                                    cpb::MetadataDelta {
                                        prev_offset: d.prev_offset,
                                        batch: d.batch.clone(),
                                    },
                                )),
                            });
                            self.cursor = d.offset;
                        }
                        Next::Deltas
                    }
                    _ => Next::Snapshot { image: state.latest.clone(), encoded: cached(&state) },
                }
            };
            (latest, next)
        };
        if let Next::Snapshot { image, encoded } = next {
            let offset = image.offset.0;
            let encoded = match encoded {
                Some(bytes) => bytes,
                None => {
                    // Encoded outside the lock: the state machine must not wait for it.
                    let bytes = Arc::new(wire::encode_snapshot_chunks(image.to_records()));
                    let mut state = self.feed.shared.lock();
                    if state.latest.offset.0 == offset {
                        state.snapshot = Some((offset, bytes.clone()));
                    }
                    bytes
                }
            };
            tracing::debug!(
                broker_id = self.broker_id,
                offset,
                chunks = encoded.len(),
                "metadata watcher gets a snapshot"
            );
            let last = encoded.len() - 1;
            for (index, batch) in encoded.iter().enumerate() {
                self.pending.push_back(cpb::MetadataUpdate {
                    offset,
                    leader_id,
                    update: Some(cpb::metadata_update::Update::SnapshotChunk(cpb::SnapshotChunk {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        last: index == last,
                        batch: batch.clone(),
                    })),
                });
            }
            self.cursor = offset;
            self.want_snapshot = false;
        }
        latest
    }
}

fn cached(state: &FeedState) -> Option<Arc<Vec<Vec<u8>>>> {
    state
        .snapshot
        .as_ref()
        .filter(|(offset, _)| *offset == state.latest.offset.0)
        .map(|(_, bytes)| bytes.clone())
}

#[cfg(test)]
mod tests {
    use strom_metadata::records::{metadata_record::Record, FeatureRecord, TopicRecord};

    use super::*;
    use crate::wire::{MetadataChange, MetadataUpdate};

    struct Nobody;

    impl MetadataListener for Nobody {
        fn on_commit(&self, _: MetadataOffset, _: &[MetadataRecord], _: Arc<MetadataImage>) {}
    }

    fn feature(name: &str, level: i32) -> MetadataRecord {
        MetadataRecord {
            record: Some(Record::Feature(FeatureRecord {
                name: name.into(),
                feature_level: level,
            })),
        }
    }

    fn topic(name: &str, id: u8) -> MetadataRecord {
        MetadataRecord {
            record: Some(Record::Topic(TopicRecord { name: name.into(), topic_id: vec![id; 16] })),
        }
    }

    /// A state machine's worth of commits: each entry applied to the image, then reported.
    struct Log {
        tap: Arc<dyn MetadataListener>,
        feed: MetadataFeed,
        image: MetadataImage,
        _leader: watch::Sender<Option<u64>>,
        leader: watch::Receiver<Option<u64>>,
    }

    impl Log {
        fn new() -> Log {
            let (tap, feed) = metadata_feed(Arc::new(Nobody));
            let (leader_tx, leader) = watch::channel(Some(2));
            Log { tap, feed, image: MetadataImage::default(), _leader: leader_tx, leader }
        }

        fn commit(&mut self, offset: u64, records: Vec<MetadataRecord>) {
            self.image.apply_batch(MetadataOffset(offset), &records).expect("applies");
            self.tap.on_commit(MetadataOffset(offset), &records, Arc::new(self.image.clone()));
        }

        /// What a snapshot install reports: the new image's own records.
        fn install(&mut self, image: MetadataImage) {
            let records = image.to_records();
            self.image = image.clone();
            self.tap.on_commit(image.offset, &records, Arc::new(image));
        }

        fn watch(&self, cursor: u64, want_snapshot: bool) -> Watch {
            Watch {
                feed: self.feed.clone(),
                leader: self.leader.clone(),
                cursor,
                want_snapshot,
                sent_leader: None,
                pending: VecDeque::new(),
                last_sent: tokio::time::Instant::now(),
                broker_id: 1,
                _slot: WatcherSlot::claim(&self.feed.watchers).expect("a free slot"),
            }
        }
    }

    /// (offset, change) of what `fill` queues for a watcher at `cursor`.
    fn sent(watch: &mut Watch) -> Vec<MetadataUpdate> {
        watch.fill(Some(2));
        watch.pending.drain(..).map(|u| wire::update_from_pb(u).expect("decodes")).collect()
    }

    fn offsets(updates: &[MetadataUpdate]) -> Vec<(u64, &'static str)> {
        updates
            .iter()
            .map(|u| {
                let kind = match &u.change {
                    MetadataChange::None => "none",
                    MetadataChange::Delta { .. } => "delta",
                    MetadataChange::Snapshot(_) => "whole snapshot",
                    MetadataChange::SnapshotChunk { .. } => "snapshot",
                };
                (u.offset.0, kind)
            })
            .collect()
    }

    #[test]
    fn a_watcher_gets_the_deltas_after_its_offset_and_a_snapshot_otherwise() {
        let mut log = Log::new();
        log.commit(3, vec![feature("a", 1)]);
        log.commit(5, vec![feature("b", 1)]);
        log.commit(8, vec![feature("c", 1)]);

        let updates = sent(&mut log.watch(3, false));
        assert_eq!(offsets(&updates), [(5, "delta"), (8, "delta")]);
        assert!(matches!(
            &updates[0].change,
            MetadataChange::Delta { prev_offset: MetadataOffset(3), records } if records == &[feature("b", 1)]
        ));
        assert_eq!(updates[1].leader_id, Some(2));
        // Fresh, asking for it, or at an offset the backlog does not start from: the image.
        assert_eq!(offsets(&sent(&mut log.watch(0, true))), [(8, "snapshot")]);
        assert_eq!(offsets(&sent(&mut log.watch(5, true))), [(8, "snapshot")]);
        assert_eq!(offsets(&sent(&mut log.watch(4, false))), [(8, "snapshot")]);
        // Up to date, or ahead of this voter: nothing until there is more.
        assert!(sent(&mut log.watch(8, false)).is_empty());
        let mut ahead = log.watch(9, true);
        assert!(sent(&mut ahead).is_empty());
        log.commit(12, vec![feature("d", 1)]);
        assert_eq!(offsets(&sent(&mut ahead)), [(12, "snapshot")]);
    }

    #[test]
    fn an_installed_snapshot_reaches_watchers_whole() {
        let mut log = Log::new();
        log.commit(3, vec![topic("gone", 1), feature("a", 1)]);
        let mut watcher = log.watch(3, false);
        assert!(sent(&mut watcher).is_empty());
        // The voter lagged and installed a snapshot in which the topic was deleted: replaying
        // its records on the watcher's image would keep the topic, so it must go whole.
        let mut later = MetadataImage::default();
        later.apply_batch(MetadataOffset(9), &[feature("a", 2), topic("kept", 2)]).expect("ok");
        log.install(later.clone());
        let updates = sent(&mut watcher);
        assert_eq!(offsets(&updates), [(9, "snapshot")]);
        let MetadataChange::SnapshotChunk { index: 0, last: true, records } = &updates[0].change
        else {
            unreachable!()
        };
        assert_eq!(MetadataImage::from_records(MetadataOffset(9), records).expect("ok"), later);
        // And deltas go on from there.
        log.commit(10, vec![feature("b", 1)]);
        assert_eq!(offsets(&sent(&mut watcher)), [(10, "delta")]);
    }

    #[test]
    fn the_backlog_is_bounded_and_a_watcher_past_it_gets_a_snapshot() {
        let mut log = Log::new();
        let entries = WATCH_BACKLOG_ENTRIES_MAX as u64 + 10;
        // Each entry changes only part of the image, so none of them is the whole image.
        log.commit(1, vec![feature("base", 1)]);
        for offset in 2..=entries {
            log.commit(offset, vec![feature("a", offset as i32)]);
        }
        assert_eq!(log.feed.shared.lock().backlog.len(), WATCH_BACKLOG_ENTRIES_MAX);
        assert_eq!(offsets(&sent(&mut log.watch(2, false))), [(entries, "snapshot")]);
        // One still inside gets deltas, a turn's worth at a time.
        let mut watcher = log.watch(entries - 100, false);
        let first = sent(&mut watcher);
        assert_eq!(first.len(), WATCH_BATCH_MAX);
        assert_eq!(first[0].offset.0, entries - 99);
        let mut total = first.len();
        loop {
            let more = sent(&mut watcher);
            if more.is_empty() {
                break;
            }
            total += more.len();
        }
        assert_eq!(total, 100);
    }

    #[test]
    fn a_large_image_reaches_a_watcher_in_chunks_under_the_message_limit() {
        let mut log = Log::new();
        let records: Vec<MetadataRecord> =
            (0..3_000).map(|i| feature(&format!("{i:0>1000}"), i)).collect();
        log.commit(4, records);
        let mut watcher = log.watch(0, true);
        watcher.fill(Some(2));
        let messages: Vec<cpb::MetadataUpdate> = watcher.pending.drain(..).collect();
        assert!(messages.len() >= 3, "{} chunks", messages.len());
        assert!(messages
            .iter()
            .all(|m| prost::Message::encoded_len(m) <= wire::SNAPSHOT_CHUNK_BYTES_MAX + 64));
        let mut follower = crate::follower::MetadataFollower::new();
        let mut moved = Vec::new();
        for m in messages {
            let u = wire::update_from_pb(m).expect("decodes");
            moved.push(follower.on_update(u.offset, u.change).expect("applies").is_some());
        }
        // The image is replaced once, by the last chunk.
        assert_eq!(moved.iter().filter(|m| **m).count(), 1);
        assert_eq!(moved.last(), Some(&true));
        assert_eq!(follower.image(), &log.image);
    }

    #[test]
    fn watchers_are_counted_and_bounded() {
        let log = Log::new();
        let slots: Vec<_> =
            (0..WATCHERS_MAX).map(|_| WatcherSlot::claim(&log.feed.watchers)).collect();
        assert!(slots.iter().all(Option::is_some));
        assert!(WatcherSlot::claim(&log.feed.watchers).is_none());
        drop(slots);
        assert!(WatcherSlot::claim(&log.feed.watchers).is_some());
    }
}
