//! How a broker-only node follows the metadata log without a raft of its own: it watches one
//! controller voter's `WatchMetadata` stream, applies each update to its own `MetadataImage`
//! and hands it to the node's `MetadataListener` in log order, as the state machine does in a
//! combined node (Kafka's brokers follow the metadata log the same way).
//!
//! [`MetadataFollower`] is the pure core (update in, image and records out); [`follow_metadata`]
//! is the shell that connects, reconnects and rotates through the voters.

use std::sync::Arc;
use std::time::Duration;

use strom_metadata::records::MetadataRecord;
use strom_metadata::{ApplyError, MetadataImage, MetadataListener, MetadataOffset};
use strom_proto::controller as pb;
use strom_proto::controller::controller_client::ControllerClient as GrpcControllerClient;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Endpoint;

use crate::error::ControllerError;
use crate::network::RPC_MESSAGE_BYTES_MAX;
use crate::service::WATCH_KEEPALIVE_MS;
use crate::wire::{self, MetadataChange, WireError};

/// The longest a connection to a voter may take to open, stream included.
pub const FOLLOW_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// The pause after a failed stream: doubled while voters keep failing, back to the minimum
/// once a stream delivered something.
pub const FOLLOW_BACKOFF_MS_MIN: u64 = 50;
pub const FOLLOW_BACKOFF_MS_MAX: u64 = 2_000;

/// A stream silent for this long is taken for dead: voters send a keepalive more often.
pub const FOLLOW_IDLE_TIMEOUT_MS: u64 = 3 * WATCH_KEEPALIVE_MS;

/// A voter that has known no active controller for this long is probably cut off from its
/// quorum, so its image may be stale: the follower tries another voter.
pub const FOLLOW_LEADERLESS_MS_MAX: u64 = 5_000;

const _: () = assert!(FOLLOW_BACKOFF_MS_MIN <= FOLLOW_BACKOFF_MS_MAX);
const _: () = assert!(WATCH_KEEPALIVE_MS < FOLLOW_IDLE_TIMEOUT_MS);
const _: () = assert!(FOLLOW_IDLE_TIMEOUT_MS < FOLLOW_LEADERLESS_MS_MAX);

/// Why one stream from a voter ended; the follower then tries the next voter.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot reach controller at '{addr}': {reason}")]
    Connect { addr: String, reason: String },
    #[error("metadata stream from '{addr}' failed: {code:?}: {message}")]
    Stream { addr: String, code: tonic::Code, message: String },
    #[error("metadata stream from '{addr}' ended (the controller stopped)")]
    StreamEnded { addr: String },
    #[error("controller at '{addr}' sent nothing for {FOLLOW_IDLE_TIMEOUT_MS} ms")]
    Idle { addr: String },
    #[error("controller at '{addr}' knew no active controller for {FOLLOW_LEADERLESS_MS_MAX} ms")]
    Leaderless { addr: String },
    #[error("malformed metadata update: {0}")]
    Wire(#[from] WireError),
    #[error("delta after offset {prev_offset} does not follow the image at offset {have}")]
    Gap { have: u64, prev_offset: u64 },
    #[error("snapshot chunk {got} at offset {offset} does not follow chunk {expected}")]
    SnapshotChunk { offset: u64, expected: u32, got: u32 },
    #[error("metadata at offset {offset} does not apply: {source}")]
    Apply {
        offset: u64,
        #[source]
        source: ApplyError,
    },
}

impl FollowError {
    /// After these the follower's next stream starts from a snapshot: what it was sent did
    /// not fit its image, so neither can be trusted to continue from.
    fn wants_snapshot(&self) -> bool {
        matches!(
            self,
            FollowError::Wire(_)
                | FollowError::Gap { .. }
                | FollowError::SnapshotChunk { .. }
                | FollowError::Apply { .. }
        )
    }
}

/// The follower's image, moved only forward by updates. Pure: no IO, no clock.
#[derive(Debug, Default)]
pub struct MetadataFollower {
    image: MetadataImage,
    /// The chunks of a snapshot received so far: (its offset, the next chunk's index, records).
    partial: Option<(MetadataOffset, u32, Vec<MetadataRecord>)>,
}

impl MetadataFollower {
    pub fn new() -> MetadataFollower {
        MetadataFollower::default()
    }

    pub fn offset(&self) -> MetadataOffset {
        self.image.offset
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Applies one update. `Ok(Some(records))` when the image moved (the records to hand the
    /// listener: the entry's, or the whole image's after a snapshot); `Ok(None)` when the
    /// update was old news or carried no metadata. On `Err` the image is as it was.
    pub fn on_update(
        &mut self,
        offset: MetadataOffset,
        change: MetadataChange,
    ) -> Result<Option<Vec<MetadataRecord>>, FollowError> {
        if !matches!(change, MetadataChange::None | MetadataChange::SnapshotChunk { .. }) {
            // A voter sends a snapshot's chunks back to back; anything else means it was cut.
            self.partial = None;
        }
        match change {
            MetadataChange::None => Ok(None),
            MetadataChange::SnapshotChunk { index, last, records } => {
                let mut partial = match self.partial.take() {
                    _ if index == 0 => (offset, 0, Vec::new()),
                    Some(p) if p.0 == offset && p.1 == index => p,
                    other => {
                        return Err(FollowError::SnapshotChunk {
                            offset: offset.0,
                            expected: other.map_or(0, |p| p.1),
                            got: index,
                        })
                    }
                };
                partial.1 += 1;
                partial.2.extend(records);
                if !last {
                    self.partial = Some(partial);
                    return Ok(None);
                }
                self.on_update(offset, MetadataChange::Snapshot(partial.2))
            }
            MetadataChange::Delta { prev_offset, records } => {
                if offset <= self.image.offset {
                    return Ok(None);
                }
                if prev_offset != self.image.offset {
                    return Err(FollowError::Gap {
                        have: self.image.offset.0,
                        prev_offset: prev_offset.0,
                    });
                }
                // Applied to a copy: a record that fails halfway must not leave half an entry.
                let mut next = self.image.clone();
                next.apply_batch(offset, &records)
                    .map_err(|source| FollowError::Apply { offset: offset.0, source })?;
                self.image = next;
                Ok(Some(records))
            }
            MetadataChange::Snapshot(records) => {
                if offset < self.image.offset {
                    return Ok(None);
                }
                let image = MetadataImage::from_records(offset, &records)
                    .map_err(|source| FollowError::Apply { offset: offset.0, source })?;
                if image == self.image {
                    return Ok(None);
                }
                self.image = image;
                Ok(Some(records))
            }
        }
    }
}

/// [`follow_metadata_as`] for a watcher that is no broker (`broker_id` -1 in voters' logs).
pub async fn follow_metadata(
    voters: Vec<String>,
    listener: Arc<dyn MetadataListener>,
    leader: watch::Sender<Option<u64>>,
    stop: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    follow_metadata_as(-1, voters, listener, leader, stop).await
}

/// Follows the metadata log from the controller voters at `voters` (control addresses,
/// `host:port`) until `stop` turns true or its sender is dropped: every committed change
/// reaches `listener` once, in order, and `leader` tracks the active controller's id.
///
/// It streams from one voter at a time, starting with the first; when that stream fails it
/// tries the next, from the offset it has. Fails only on a configuration it cannot use.
pub async fn follow_metadata_as(
    broker_id: i32,
    voters: Vec<String>,
    listener: Arc<dyn MetadataListener>,
    leader: watch::Sender<Option<u64>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    if voters.is_empty() {
        return Err(ControllerError::ConfigInvalid {
            key: "controller.quorum_voters",
            reason: "a broker-only node needs at least one controller voter to follow",
        });
    }
    let mut endpoints = Vec::with_capacity(voters.len());
    for addr in voters {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| ControllerError::ConfigInvalid {
                key: "controller.quorum_voters",
                reason: "a voter's control address is not host:port",
            })?
            .connect_timeout(Duration::from_millis(FOLLOW_CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true);
        endpoints.push((addr, endpoint));
    }

    let mut stream = Stream {
        broker_id,
        follower: MetadataFollower::new(),
        want_snapshot: true,
        listener,
        leader,
    };
    let mut backoff = Duration::from_millis(FOLLOW_BACKOFF_MS_MIN);
    for (addr, endpoint) in endpoints.iter().cycle() {
        if stopped(&stop) {
            break;
        }
        let mut progressed = false;
        let ended = tokio::select! {
            ended = stream.follow(addr, endpoint, &mut progressed) => ended,
            () = until_stopped(&mut stop) => break,
        };
        if ended.wants_snapshot() {
            stream.want_snapshot = true;
        }
        tracing::warn!(
            broker_id,
            offset = stream.follower.offset().0,
            error = %ended,
            "metadata stream lost; trying the next controller"
        );
        if progressed {
            backoff = Duration::from_millis(FOLLOW_BACKOFF_MS_MIN);
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = until_stopped(&mut stop) => break,
        }
        if !progressed {
            backoff = (backoff * 2).min(Duration::from_millis(FOLLOW_BACKOFF_MS_MAX));
        }
    }
    tracing::info!(broker_id, offset = stream.follower.offset().0, "metadata follower stopped");
    Ok(())
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Returns once `stop` is true or can no longer change.
async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The follower's state across streams.
struct Stream {
    broker_id: i32,
    follower: MetadataFollower,
    want_snapshot: bool,
    listener: Arc<dyn MetadataListener>,
    leader: watch::Sender<Option<u64>>,
}

impl Stream {
    /// Follows one voter until its stream fails; says why. `progressed` turns true once the
    /// voter sent anything. Cancel-safe: the image and the listener move together, between
    /// awaits.
    async fn follow(
        &mut self,
        addr: &str,
        endpoint: &Endpoint,
        progressed: &mut bool,
    ) -> FollowError {
        let connect_timeout = Duration::from_millis(FOLLOW_CONNECT_TIMEOUT_MS);
        let request = pb::WatchMetadataRequest {
            from_offset: self.follower.offset().0,
            broker_id: self.broker_id,
            want_snapshot: self.want_snapshot,
        };
        let open = async {
            let channel = endpoint.connect().await.map_err(|e| FollowError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
            let mut client = GrpcControllerClient::new(channel)
                .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX);
            client.watch_metadata(request).await.map_err(|s| stream_error(addr, s))
        };
        let mut updates = match tokio::time::timeout(connect_timeout, open).await {
            Err(_) => {
                return FollowError::Connect {
                    addr: addr.to_string(),
                    reason: format!("no answer within {FOLLOW_CONNECT_TIMEOUT_MS} ms"),
                }
            }
            Ok(Err(e)) => return e,
            Ok(Ok(response)) => response.into_inner(),
        };
        tracing::info!(
            broker_id = self.broker_id,
            addr,
            from_offset = self.follower.offset().0,
            "following the metadata log"
        );
        let idle = Duration::from_millis(FOLLOW_IDLE_TIMEOUT_MS);
        let mut leaderless_since: Option<Instant> = None;
        loop {
            let message = match tokio::time::timeout(idle, updates.message()).await {
                Err(_) => return FollowError::Idle { addr: addr.to_string() },
                Ok(Err(status)) => return stream_error(addr, status),
                Ok(Ok(None)) => return FollowError::StreamEnded { addr: addr.to_string() },
                Ok(Ok(Some(message))) => message,
            };
            *progressed = true;
            let update = match wire::update_from_pb(message) {
                Ok(update) => update,
                Err(e) => return e.into(),
            };
            self.leader.send_if_modified(|known| {
                let changed = *known != update.leader_id;
                *known = update.leader_id;
                changed
            });
            match update.leader_id {
                Some(_) => leaderless_since = None,
                None => {
                    let since = *leaderless_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_millis(FOLLOW_LEADERLESS_MS_MAX) {
                        return FollowError::Leaderless { addr: addr.to_string() };
                    }
                }
            }
            let snapshot = matches!(
                update.change,
                MetadataChange::Snapshot(_) | MetadataChange::SnapshotChunk { last: true, .. }
            );
            match self.follower.on_update(update.offset, update.change) {
                Ok(Some(records)) => {
                    let image = Arc::new(self.follower.image().clone());
                    self.listener.on_commit(update.offset, &records, image);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(
                        broker_id = self.broker_id,
                        addr,
                        error = %e,
                        "metadata update does not apply; asking for a snapshot"
                    );
                    return e;
                }
            }
            if snapshot {
                self.want_snapshot = false;
            }
        }
    }
}

fn stream_error(addr: &str, status: tonic::Status) -> FollowError {
    FollowError::Stream {
        addr: addr.to_string(),
        code: status.code(),
        message: status.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use strom_metadata::records::{metadata_record::Record, FeatureRecord, TopicRecord};

    use super::*;

    fn feature(name: &str, level: i32) -> MetadataRecord {
        MetadataRecord {
            record: Some(Record::Feature(FeatureRecord {
                name: name.into(),
                feature_level: level,
            })),
        }
    }

    fn delta(prev: u64, records: Vec<MetadataRecord>) -> MetadataChange {
        MetadataChange::Delta { prev_offset: MetadataOffset(prev), records }
    }

    #[test]
    fn deltas_apply_in_order_and_old_ones_are_ignored() {
        let mut f = MetadataFollower::new();
        let moved = f.on_update(MetadataOffset(3), delta(0, vec![feature("a", 1)]));
        assert_eq!(moved.expect("applies").map(|r| r.len()), Some(1));
        assert_eq!(f.offset(), MetadataOffset(3));
        // A voter behind us resends what we have: ignored, nothing notified.
        assert!(f
            .on_update(MetadataOffset(3), delta(0, vec![feature("a", 1)]))
            .expect("ok")
            .is_none());
        assert!(f
            .on_update(MetadataOffset(2), delta(1, vec![feature("b", 1)]))
            .expect("ok")
            .is_none());
        assert!(f
            .on_update(MetadataOffset(7), delta(3, vec![feature("a", 2)]))
            .expect("ok")
            .is_some());
        assert_eq!(f.image().features.get("a"), Some(&2));
        assert!(f.on_update(MetadataOffset(9), MetadataChange::None).expect("ok").is_none());
        assert_eq!(f.offset(), MetadataOffset(7));
    }

    #[test]
    fn a_delta_that_skips_an_entry_is_refused() {
        let mut f = MetadataFollower::new();
        f.on_update(MetadataOffset(3), delta(0, vec![feature("a", 1)])).expect("applies");
        let gap = f.on_update(MetadataOffset(9), delta(5, vec![feature("a", 2)]));
        assert!(matches!(gap, Err(FollowError::Gap { have: 3, prev_offset: 5 })), "{gap:?}");
        assert_eq!(f.image().features.get("a"), Some(&1));
    }

    #[test]
    fn a_delta_that_does_not_apply_leaves_the_image_untouched() {
        let mut f = MetadataFollower::new();
        f.on_update(MetadataOffset(3), delta(0, vec![feature("a", 1)])).expect("applies");
        let before = f.image().clone();
        let bad = MetadataRecord { record: None };
        let failed = f.on_update(MetadataOffset(4), delta(3, vec![feature("a", 5), bad]));
        assert!(matches!(failed, Err(FollowError::Apply { offset: 4, .. })), "{failed:?}");
        assert!(failed.as_ref().err().is_some_and(FollowError::wants_snapshot));
        assert_eq!(f.image(), &before);
    }

    #[test]
    fn a_snapshot_replaces_the_image_but_never_moves_it_back() {
        let mut f = MetadataFollower::new();
        f.on_update(MetadataOffset(3), delta(0, vec![feature("a", 1), feature("gone", 1)]))
            .expect("applies");
        let topic = MetadataRecord {
            record: Some(Record::Topic(TopicRecord { name: "t".into(), topic_id: vec![7; 16] })),
        };
        let snapshot = MetadataChange::Snapshot(vec![feature("a", 4), topic]);
        assert!(f.on_update(MetadataOffset(10), snapshot.clone()).expect("applies").is_some());
        assert_eq!(f.offset(), MetadataOffset(10));
        assert!(!f.image().features.contains_key("gone"), "a snapshot drops what it lacks");
        assert!(f.image().topic("t").is_some());
        // The same image again, or an older one: nothing moves, nobody is told.
        assert!(f.on_update(MetadataOffset(10), snapshot.clone()).expect("ok").is_none());
        let older = MetadataChange::Snapshot(vec![feature("a", 1)]);
        assert!(f.on_update(MetadataOffset(5), older).expect("ok").is_none());
        assert_eq!(f.image().features.get("a"), Some(&4));
    }

    #[test]
    fn snapshot_chunks_replace_the_image_only_when_the_last_one_arrives() {
        let chunk = |index, last, records| MetadataChange::SnapshotChunk { index, last, records };
        let mut f = MetadataFollower::new();
        f.on_update(MetadataOffset(3), delta(0, vec![feature("old", 1)])).expect("applies");
        assert!(f
            .on_update(MetadataOffset(9), chunk(0, false, vec![feature("a", 1)]))
            .expect("ok")
            .is_none());
        assert_eq!(f.offset(), MetadataOffset(3), "nothing moves before the last chunk");
        let done = f.on_update(MetadataOffset(9), chunk(1, true, vec![feature("b", 2)]));
        assert_eq!(done.expect("applies").map(|r| r.len()), Some(2));
        assert_eq!(f.offset(), MetadataOffset(9));
        assert!(!f.image().features.contains_key("old"));
        assert_eq!(f.image().features.get("b"), Some(&2));
        // A chunk out of turn: the stream is broken, the next one starts from a snapshot.
        f.on_update(MetadataOffset(12), chunk(0, false, vec![feature("c", 1)])).expect("ok");
        let skipped = f.on_update(MetadataOffset(12), chunk(2, true, vec![]));
        assert!(
            matches!(skipped, Err(FollowError::SnapshotChunk { expected: 1, got: 2, .. })),
            "{skipped:?}"
        );
        assert!(skipped.as_ref().err().is_some_and(FollowError::wants_snapshot));
        assert_eq!(f.offset(), MetadataOffset(9));
    }
}
