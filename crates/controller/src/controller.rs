//! The public face of the metadata plane: `Controller` opens the metadata log, runs the raft
//! node over it, and runs the active controller, the one task that decides requests and
//! proposes their records while this node leads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{Config, RaftMetrics, ServerState, SnapshotPolicy};
use strom_metadata::control::{
    decide, ControlDefaults, ControlRequest, ControlResponse, DecideCtx,
};
use strom_metadata::records::MetadataBatch;
use strom_metadata::{
    BoxFuture, ControlError, ControllerClient, MetadataImage, MetadataListener, MetadataOffset,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::ControllerError;
use crate::log_store::{LogStore, LogStoreOptions, SEGMENT_BYTES_MAX_DEFAULT};
use crate::network::UnreachableNetwork;
use crate::state_machine::StateMachine;
use crate::types::{ControllerNode, Raft};

/// The metadata log's directory under `data_dir` (Kafka's name for it).
pub const METADATA_LOG_DIR: &str = "__cluster_metadata-0";

/// Requests waiting for the active controller; past this a submit is refused at once rather
/// than queued without bound.
pub const EVENT_QUEUE_MAX: usize = 1024;

/// How long `start` waits for a lone voter to lead, in election timeouts: one timeout to call
/// the election, the rest is slack for a slow disk.
pub const LEADER_WAIT_ELECTION_TIMEOUTS: u64 = 20;

/// How long a request waits for a new leader to apply its own log before it is refused.
pub const CATCH_UP_WAIT_MS_MAX: u64 = 5_000;

pub const SNAPSHOT_AFTER_ENTRIES_DEFAULT: u64 = 10_000;
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 100;
pub const ELECTION_TIMEOUT_MIN_MS_DEFAULT: u64 = 1_000;
pub const ELECTION_TIMEOUT_MAX_MS_DEFAULT: u64 = 2_000;

const _: () = assert!(HEARTBEAT_INTERVAL_MS_DEFAULT < ELECTION_TIMEOUT_MIN_MS_DEFAULT);
const _: () = assert!(ELECTION_TIMEOUT_MIN_MS_DEFAULT < ELECTION_TIMEOUT_MAX_MS_DEFAULT);

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Voter node id → its control address (`controller.quorum_voters`).
    pub voters: BTreeMap<u64, String>,
    pub defaults: ControlDefaults,
    /// Entries between snapshots; also the entries per log segment and the entries kept
    /// behind a snapshot for followers that lag a little.
    pub snapshot_after_entries: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl ControllerConfig {
    /// A config with the default timings and snapshot interval.
    pub fn new(node_id: u64, data_dir: PathBuf, voters: BTreeMap<u64, String>) -> Self {
        ControllerConfig {
            node_id,
            data_dir,
            voters,
            defaults: ControlDefaults::default(),
            snapshot_after_entries: SNAPSHOT_AFTER_ENTRIES_DEFAULT,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS_DEFAULT,
            election_timeout_min_ms: ELECTION_TIMEOUT_MIN_MS_DEFAULT,
            election_timeout_max_ms: ELECTION_TIMEOUT_MAX_MS_DEFAULT,
        }
    }

    fn raft_config(&self) -> Result<Config, ControllerError> {
        if self.snapshot_after_entries == 0 {
            return Err(ControllerError::ConfigInvalid {
                key: "snapshot_after_entries",
                reason: "must be at least 1",
            });
        }
        let config = Config {
            cluster_name: "strom-metadata".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.snapshot_after_entries,
            ..Config::default()
        };
        config.validate().map_err(|e| ControllerError::RaftConfig(Box::new(e)))
    }
}

/// A running controller: raft node, metadata log, and active controller task.
pub struct Controller {
    raft: Raft,
    image: watch::Receiver<Arc<MetadataImage>>,
    client: Arc<EventClient>,
    stop: oneshot::Sender<()>,
    event_loop: JoinHandle<()>,
}

impl Controller {
    /// Opens the metadata log in `<data_dir>/__cluster_metadata-0/` and starts the raft node.
    /// A fresh directory is initialised with the configured voters. With a single voter it
    /// returns once this node leads and has applied its log, so requests are served at once.
    pub async fn start(
        cfg: ControllerConfig,
        listener: Arc<dyn MetadataListener>,
    ) -> Result<Controller, ControllerError> {
        if !cfg.voters.contains_key(&cfg.node_id) {
            return Err(ControllerError::ConfigNotAVoter {
                node_id: cfg.node_id,
                voters: cfg.voters.keys().copied().collect(),
            });
        }
        let raft_config = Arc::new(cfg.raft_config()?);
        let dir = cfg.data_dir.join(METADATA_LOG_DIR);
        let open_err = |source| ControllerError::StorageOpen { path: dir.clone(), source };
        let options = LogStoreOptions {
            segment_entries_max: cfg.snapshot_after_entries,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
        };
        let log = LogStore::open(&dir, options).await.map_err(open_err)?;
        let (sm, image) = StateMachine::open(&dir, listener).await.map_err(open_err)?;
        let raft = Raft::new(cfg.node_id, raft_config, UnreachableNetwork, log, sm)
            .await
            .map_err(|e| ControllerError::RaftStart(Box::new(e)))?;

        let initialized =
            raft.is_initialized().await.map_err(|e| ControllerError::RaftStart(Box::new(e)))?;
        if !initialized {
            // Every voter of a fresh quorum proposes the same initial membership (index 0), so
            // whichever is elected first, the logs agree.
            let members: BTreeMap<u64, ControllerNode> = cfg
                .voters
                .iter()
                .map(|(&id, addr)| (id, ControllerNode { control_addr: addr.clone() }))
                .collect();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(ControllerError::RaftInitialize(Box::new(e))),
            }
            tracing::info!(node_id = cfg.node_id, voters = ?cfg.voters, "metadata quorum initialized");
        }

        if cfg.voters.len() == 1 {
            let waited_ms = LEADER_WAIT_ELECTION_TIMEOUTS * cfg.election_timeout_max_ms;
            let node_id = cfg.node_id;
            raft.wait(Some(Duration::from_millis(waited_ms)))
                .metrics(
                    |m| m.state == ServerState::Leader && leader_caught_up(m),
                    "lone voter leads",
                )
                .await
                .map_err(|_| ControllerError::LeaderWait { node_id, waited_ms })?;
            tracing::info!(node_id, "this node is the active controller");
        }

        let (tx, rx) = mpsc::channel(EVENT_QUEUE_MAX);
        let (stop, stop_rx) = oneshot::channel();
        let active = ActiveController {
            raft: raft.clone(),
            node_id: cfg.node_id,
            image: image.clone(),
            defaults: cfg.defaults.clone(),
            random: SplitMix64(uuid::Uuid::new_v4().as_u64_pair().0),
        };
        let event_loop = tokio::spawn(active.run(rx, stop_rx));
        Ok(Controller { raft, image, client: Arc::new(EventClient { tx }), stop, event_loop })
    }

    /// How brokers and the admin service submit requests to the active controller.
    pub fn client(&self) -> Arc<dyn ControllerClient> {
        self.client.clone()
    }

    /// The image after the last applied entry.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// The raft node, for the transport and admin services that will serve it.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Stops the active controller and the raft node; queued requests are answered with
    /// `ControllerUnavailable`. The metadata log is closed when this returns.
    pub async fn shutdown(self) -> Result<(), ControllerError> {
        // The loop may already have ended; then there is nobody to tell.
        let _ = self.stop.send(());
        self.raft.shutdown().await.map_err(ControllerError::RaftShutdown)?;
        self.event_loop.await.map_err(ControllerError::EventLoopJoin)?;
        Ok(())
    }
}

/// True once the leader has applied every entry it has, its own term's blank entry included:
/// only then does the image hold everything a decision must see, and only then is
/// `last_log_index + 1` the index the next proposal gets.
fn leader_caught_up(m: &RaftMetrics<u64, ControllerNode>) -> bool {
    match &m.last_applied {
        Some(applied) => {
            applied.leader_id.term == m.current_term && m.last_log_index == Some(applied.index)
        }
        None => false,
    }
}

/// The events the active controller handles; one task takes them in order.
enum Event {
    Submit {
        request: ControlRequest,
        reply: oneshot::Sender<Result<ControlResponse, ControlError>>,
    },
}

struct EventClient {
    tx: mpsc::Sender<Event>,
}

impl ControllerClient for EventClient {
    fn submit(&self, request: ControlRequest) -> BoxFuture<Result<ControlResponse, ControlError>> {
        let tx = self.tx.clone();
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            tx.try_send(Event::Submit { request, reply }).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ControlError::ControllerUnavailable(format!(
                    "the controller has {EVENT_QUEUE_MAX} requests queued"
                )),
                mpsc::error::TrySendError::Closed(_) => {
                    ControlError::ControllerUnavailable("the controller is shut down".into())
                }
            })?;
            answer.await.map_err(|_| {
                ControlError::ControllerUnavailable(
                    "the controller stopped before answering".into(),
                )
            })?
        })
    }
}

/// Fresh topic ids and placement offsets; seeded once per start from a v4 uuid.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

struct ActiveController {
    raft: Raft,
    node_id: u64,
    image: watch::Receiver<Arc<MetadataImage>>,
    defaults: ControlDefaults,
    random: SplitMix64,
}

impl ActiveController {
    async fn run(mut self, mut events: mpsc::Receiver<Event>, mut stop: oneshot::Receiver<()>) {
        loop {
            let event = tokio::select! {
                _ = &mut stop => break,
                event = events.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            match event {
                Event::Submit { request, reply } => {
                    let answer = self.submit(&request).await;
                    // The caller may have given up waiting; nothing to do then.
                    let _ = reply.send(answer);
                }
            }
        }
    }

    async fn submit(&mut self, request: &ControlRequest) -> Result<ControlResponse, ControlError> {
        let mut metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Err(ControlError::NotController);
        }
        if !leader_caught_up(&metrics) {
            metrics = self
                .raft
                .wait(Some(Duration::from_millis(CATCH_UP_WAIT_MS_MAX)))
                .metrics(
                    |m| m.state != ServerState::Leader || leader_caught_up(m),
                    "new leader applied its log",
                )
                .await
                .map_err(|e| ControlError::ControllerUnavailable(e.to_string()))?;
            if metrics.state != ServerState::Leader {
                return Err(ControlError::NotController);
            }
        }
        let image = self.image.borrow().clone();
        let last_index = metrics.last_log_index.unwrap_or(0);
        if image.offset.0 != last_index {
            // Metrics and the published image are updated by different tasks; an image behind
            // the log would let a decision miss a committed record.
            return Err(ControlError::ControllerUnavailable(format!(
                "metadata image at offset {} lags the log at {last_index}",
                image.offset.0
            )));
        }
        let next_offset = MetadataOffset(last_index + 1);
        // The clock is read here, at the edge; decisions themselves stay pure.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let decision = {
            // Scoped: the context holds a `dyn FnMut`, which must not live across an await.
            let rng = &mut self.random;
            let mut random = || rng.next_u64();
            let mut ctx =
                DecideCtx { now_ms, next_offset, defaults: &self.defaults, random: &mut random };
            decide(&image, request, &mut ctx)?
        };
        if decision.records.is_empty() {
            return Ok(decision.response);
        }
        let written =
            self.raft.client_write(MetadataBatch { records: decision.records }).await.map_err(
                |e| match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                        ControlError::NotController
                    }
                    RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                        ControlError::ControllerUnavailable(e.to_string())
                    }
                    RaftError::Fatal(e) => ControlError::ControllerUnavailable(e.to_string()),
                },
            )?;
        // Only this task proposes while the node leads, and it waited for the leader's own
        // entries to apply, so the proposal lands where the decision assumed.
        debug_assert_eq!(written.log_id.index, next_offset.0, "proposal landed elsewhere");
        if written.log_id.index != next_offset.0 {
            tracing::error!(
                decided_for = next_offset.0,
                landed_at = written.log_id.index,
                node_id = self.node_id,
                "metadata proposal landed at another offset than decided for"
            );
        }
        Ok(decision.response)
    }
}
