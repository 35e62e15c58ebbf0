//! The public face of the metadata plane: `Controller` opens the metadata log, runs the raft
//! node over it (gRPC between voters), and runs the active controller, the one task that
//! decides requests, tracks broker liveness and proposes records while this node leads. It
//! also makes the quorum's membership changes (KIP-853, `voters`), so that every write to the
//! log stays in one task.

mod changes;
mod voters;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{Config, RaftMetrics, ServerState, SnapshotPolicy};
use strom_metadata::config::BROKER_DEFAULTS;
use strom_metadata::control::{
    decide, fence_broker, split_into_entries, BrokerLiveness, ControlDefaults, ControlRequest,
    ControlResponse, DecideCtx, ENTRY_BYTES_MAX,
};
use strom_metadata::quorum::DirectoryId;
use strom_metadata::records::{MetadataBatch, MetadataRecord};
use strom_metadata::{
    Clock, ControlError, ControllerClient, MetadataImage, MetadataListener, MetadataOffset,
};
use strom_proto::controller::controller_server::ControllerServer;
use strom_proto::raft::raft_server::RaftServer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::ControllerError;
use crate::events::{Event, EventClient};
use crate::log_store::{LogStore, LogStoreOptions, SEGMENT_BYTES_MAX_DEFAULT};
use crate::metrics::{ControllerMetrics, ControllerMetricsHandle};
use crate::network::{
    Channels, GrpcNetwork, ReplicaKey, RPC_MESSAGE_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MAX,
};
use crate::relay::{RelayClient, Target};
use crate::service::{metadata_feed, ControllerService, MetadataFeed, RaftService};
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

/// How long a submitted request may wait, in election timeouts, for an active controller to
/// exist and answer: a failover takes one or two election timeouts.
pub const SUBMIT_WAIT_ELECTION_TIMEOUTS: u64 = 5;

/// How long a request waits for a new leader to apply its own log before it is refused.
pub const CATCH_UP_WAIT_MS_MAX: u64 = 5_000;

/// How often per broker heartbeat interval the active controller looks for expired sessions:
/// twice, so a silent broker is fenced at most half an interval after its session ends.
pub const LIVENESS_CHECKS_PER_HEARTBEAT: u64 = 2;

// The node's defaults (`metadata::config::BROKER_DEFAULTS`, which asserts how they relate).
pub const SNAPSHOT_AFTER_ENTRIES_DEFAULT: u64 = BROKER_DEFAULTS.controller_snapshot_after_entries;
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 =
    BROKER_DEFAULTS.controller_raft_heartbeat_interval_ms;
pub const ELECTION_TIMEOUT_MIN_MS_DEFAULT: u64 = BROKER_DEFAULTS.controller_election_timeout_ms;
pub const ELECTION_TIMEOUT_MAX_MS_DEFAULT: u64 = BROKER_DEFAULTS.election_timeout_max_ms();

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Voter node id → its control address (`controller.quorum_voters`): the quorum a fresh
    /// metadata log starts with. Empty: this node starts as an observer and joins through
    /// `bootstrap_servers`. Once the log holds a membership, that is the quorum.
    pub voters: BTreeMap<u64, String>,
    /// `controller.quorum_bootstrap_servers`: control addresses of voters to join through.
    pub bootstrap_servers: Vec<String>,
    /// This node's own control address, as it tells the quorum.
    pub control_addr: String,
    /// This node's metadata directory id (KIP-853), from its `meta.properties`; it must be
    /// the same on every start from the same data directory. [`ControllerConfig::new`] draws
    /// one at random (a fresh directory).
    pub directory_id: DirectoryId,
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
        let control_addr = voters.get(&node_id).cloned().unwrap_or_default();
        ControllerConfig {
            node_id,
            data_dir,
            voters,
            bootstrap_servers: Vec::new(),
            control_addr,
            directory_id: DirectoryId(*uuid::Uuid::new_v4().as_bytes()),
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
        if self.defaults.broker_heartbeat_interval_ms == 0
            || self.defaults.session_timeout_ms <= self.defaults.broker_heartbeat_interval_ms
        {
            return Err(ControllerError::ConfigInvalid {
                key: "session_timeout_ms",
                reason: "must be greater than the broker heartbeat interval, which must be > 0",
            });
        }
        let config = Config {
            cluster_name: "strom-metadata".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // A chunk may take as long as an election before the leader gives up on it.
            install_snapshot_timeout: self.election_timeout_max_ms,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES_MAX as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.snapshot_after_entries,
            ..Config::default()
        };
        config.validate().map_err(|e| ControllerError::RaftConfig(Box::new(e)))
    }

    /// How long a submit may wait for an active controller to answer.
    fn submit_wait(&self) -> Duration {
        Duration::from_millis(SUBMIT_WAIT_ELECTION_TIMEOUTS * self.election_timeout_max_ms)
    }
}

/// A running controller: raft node, metadata log, and active controller task.
pub struct Controller {
    node_id: u64,
    /// This replica: node id and directory id.
    me: ReplicaKey,
    raft: Raft,
    image: watch::Receiver<Arc<MetadataImage>>,
    leader: watch::Receiver<Option<u64>>,
    /// The voters requests are relayed to (the membership's).
    targets: watch::Receiver<Arc<Vec<Target>>>,
    local: Arc<EventClient>,
    client: Arc<RelayClient>,
    feed: MetadataFeed,
    stop: oneshot::Sender<()>,
    event_loop: JoinHandle<()>,
    leader_watch: JoinHandle<()>,
    /// Keeps this node's place in the membership (joins as an observer, says its directory
    /// id and address as a voter).
    keeper: JoinHandle<()>,
    metrics: Arc<ControllerMetrics>,
}

impl Controller {
    /// Opens the metadata log in `<data_dir>/__cluster_metadata-0/` and starts the raft node.
    /// A fresh directory is initialised with the configured voters (every voter proposes the
    /// same membership). With a single voter it returns once this node leads and has applied
    /// its log, so requests are served at once; with several it returns as soon as raft runs,
    /// before any quorum exists (the peers cannot reach this node until the binary serves
    /// [`Controller::raft_service`]); use [`Controller::wait_for_leader`] to wait for one.
    pub async fn start(
        cfg: ControllerConfig,
        listener: Arc<dyn MetadataListener>,
    ) -> Result<Controller, ControllerError> {
        Controller::start_with_clock(cfg, listener, Arc::new(MonotonicClock::new())).await
    }

    /// [`Controller::start`] with the clock broker sessions are measured on: a test passes a
    /// manual clock and expires sessions by moving it, without waiting.
    pub async fn start_with_clock(
        cfg: ControllerConfig,
        listener: Arc<dyn MetadataListener>,
        clock: Arc<dyn Clock>,
    ) -> Result<Controller, ControllerError> {
        if !cfg.voters.is_empty() && !cfg.voters.contains_key(&cfg.node_id) {
            return Err(ControllerError::ConfigNotAVoter {
                node_id: cfg.node_id,
                voters: cfg.voters.keys().copied().collect(),
            });
        }
        if cfg.voters.is_empty() && cfg.bootstrap_servers.is_empty() {
            return Err(ControllerError::ConfigInvalid {
                key: "controller.quorum_bootstrap_servers",
                reason: "a controller needs controller.quorum_voters (a new quorum) or \
                         controller.quorum_bootstrap_servers (to join one)",
            });
        }
        let me = ReplicaKey { node_id: cfg.node_id, directory_id: Some(cfg.directory_id) };
        let raft_config = Arc::new(cfg.raft_config()?);
        let dir = cfg.data_dir.join(METADATA_LOG_DIR);
        let open_err = |source| ControllerError::StorageOpen { path: dir.clone(), source };
        let options = LogStoreOptions {
            segment_entries_max: cfg.snapshot_after_entries,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
        };
        let log = LogStore::open(&dir, options).await.map_err(open_err)?;
        // What the state machine commits also feeds the metadata stream (`WatchMetadata`).
        let (listener, feed) = metadata_feed(listener);
        let (sm, image) = StateMachine::open(&dir, listener).await.map_err(open_err)?;
        let channels = Channels::for_election_timeout(
            cfg.election_timeout_min_ms,
            cfg.election_timeout_max_ms,
        );
        let network = GrpcNetwork::new(channels, me);
        let contacts = network.contacts();
        let raft = Raft::new(cfg.node_id, raft_config, network, log, sm)
            .await
            .map_err(|e| ControllerError::RaftStart(Box::new(e)))?;
        // The log's membership names this node with the directory id it had when it joined:
        // a log from another data directory must not vote as this one.
        let logged = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&cfg.node_id)
            .and_then(|n| n.directory_id);
        if let Some(logged) = logged.filter(|d| *d != cfg.directory_id) {
            return Err(ControllerError::DirectoryIdMismatch {
                node_id: cfg.node_id,
                logged,
                mine: cfg.directory_id,
            });
        }

        let initialized =
            raft.is_initialized().await.map_err(|e| ControllerError::RaftStart(Box::new(e)))?;
        let lone = cfg.voters.len() == 1;
        if !initialized && !cfg.voters.is_empty() {
            // Every voter of a fresh quorum proposes the same initial membership (index 0), so
            // whichever is elected first, the logs agree: without directory ids, which each
            // voter then says itself (UpdateRaftVoter), except a lone voter's own.
            let members: BTreeMap<u64, ControllerNode> = cfg
                .voters
                .iter()
                .map(|(&id, addr)| {
                    let directory_id = lone.then_some(cfg.directory_id);
                    (id, ControllerNode { control_addr: addr.clone(), directory_id })
                })
                .collect();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(ControllerError::RaftInitialize(Box::new(e))),
            }
            tracing::info!(node_id = cfg.node_id, voters = ?cfg.voters, "metadata quorum initialized");
        }

        if lone {
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

        let (leader_tx, leader) = watch::channel(raft.metrics().borrow().current_leader);
        // Until its log holds a membership, a node relays to the configured voters, or to its
        // bootstrap servers.
        let configured: Vec<Target> = if cfg.voters.is_empty() {
            cfg.bootstrap_servers
                .iter()
                .map(|a| Target { node_id: None, addr: a.clone() })
                .collect()
        } else {
            cfg.voters
                .iter()
                .map(|(&id, a)| Target { node_id: Some(id), addr: a.clone() })
                .collect()
        };
        let (targets_tx, targets) = watch::channel(Arc::new(configured.clone()));
        let leader_watch = tokio::spawn(watch_leader(
            raft.metrics(),
            leader_tx,
            targets_tx,
            configured,
            cfg.node_id,
        ));

        let (tx, rx) = mpsc::channel(EVENT_QUEUE_MAX);
        let (stop, stop_rx) = oneshot::channel();
        let metrics = Arc::new(ControllerMetrics::default());
        let active = ActiveController {
            raft: raft.clone(),
            node_id: cfg.node_id,
            image: image.clone(),
            defaults: cfg.defaults.clone(),
            random: SplitMix64(uuid::Uuid::new_v4().as_u64_pair().0),
            commit_wait: cfg.submit_wait(),
            clock,
            liveness: None,
            events: rx,
            events_closed: false,
            backlog: VecDeque::new(),
            quorum: voters::QuorumOps::new(contacts),
            metrics: metrics.clone(),
        };
        let event_loop = tokio::spawn(active.run(stop_rx));
        let local = Arc::new(EventClient::new(tx));
        let client = Arc::new(RelayClient::for_voter(
            cfg.node_id,
            local.clone(),
            targets.clone(),
            leader.clone(),
            cfg.submit_wait(),
        ));
        let keeper = tokio::spawn(voters::keep_membership(
            raft.metrics(),
            client.clone(),
            crate::membership::Myself {
                node_id: cfg.node_id,
                directory_id: cfg.directory_id,
                control_addr: cfg.control_addr.clone(),
            },
        ));
        Ok(Controller {
            node_id: cfg.node_id,
            me,
            targets,
            raft,
            image,
            leader,
            local,
            client,
            feed,
            stop,
            event_loop,
            leader_watch,
            keeper,
            metrics,
        })
    }

    /// How brokers and the admin service submit requests: decided by the active controller,
    /// wherever it runs. On this node while it leads; otherwise relayed over gRPC, retried
    /// (bounded) while a new leader is elected.
    pub fn client(&self) -> Arc<dyn ControllerClient> {
        self.client.clone()
    }

    /// The active controller's metrics, for the node's `/metrics`.
    pub fn metrics(&self) -> ControllerMetricsHandle {
        ControllerMetricsHandle { metrics: self.metrics.clone(), image: self.image.clone() }
    }

    /// The image after the last applied entry.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// The raft node, for the admin service (term, commit index, membership).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The active controller as this node last heard (the raft leader), if any.
    pub fn leader_id(&self) -> Option<u64> {
        *self.leader.borrow()
    }

    /// Follows the active controller's id (a broker's `controller_id`).
    pub fn leader_watch(&self) -> watch::Receiver<Option<u64>> {
        self.leader.clone()
    }

    /// Waits until some voter is known to lead, and returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ControllerError> {
        let mut leader = self.leader.clone();
        let waited = tokio::time::timeout(timeout, leader.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(id)) => id.ok_or(ControllerError::LeaderUnknown {
                node_id: self.node_id,
                waited_ms: timeout.as_millis() as u64,
            }),
            _ => Err(ControllerError::LeaderUnknown {
                node_id: self.node_id,
                waited_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// The `strom.raft.v1.Raft` service to mount on the control port: how the other voters
    /// reach this one.
    pub fn raft_service(&self) -> RaftServer<RaftService> {
        RaftServer::new(RaftService::new(self.raft.clone(), self.me))
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX)
    }

    /// The `strom.controller.v1.Controller` service to mount on the control port: how other
    /// voters relay requests to this node while it is the active controller. It never relays
    /// further: a node that does not lead answers NOT_CONTROLLER. It also streams this node's
    /// committed metadata to broker-only nodes (`WatchMetadata`, see `follower`).
    pub fn controller_service(&self) -> ControllerServer<ControllerService> {
        let service = ControllerService::new(
            self.local.clone(),
            self.feed.clone(),
            self.leader.clone(),
            self.targets.clone(),
        );
        ControllerServer::new(service)
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX)
    }

    /// Resolves once the raft node has stopped on its own: a storage error (the metadata log
    /// or a snapshot could not be written or read, a committed record did not apply) or a
    /// panic inside the raft core. It then answers every request "unavailable" for ever, so
    /// the node must exit and be restarted; the answer says why. Never resolves while raft
    /// runs, nor after [`Controller::shutdown`] stopped it.
    pub fn fatal(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut metrics = self.raft.metrics();
        async move {
            loop {
                let state = metrics.borrow_and_update().running_state.clone();
                match state {
                    Ok(()) => {}
                    Err(Fatal::Stopped) => std::future::pending::<()>().await,
                    Err(e) => return format!("the metadata quorum stopped on this node: {e}"),
                }
                if metrics.changed().await.is_err() {
                    // Its metrics went without a last word: the raft core task panicked.
                    return "the metadata quorum's raft core panicked".to_string();
                }
            }
        }
    }

    /// Stops the active controller and the raft node; queued requests are answered with
    /// `ControllerUnavailable`. The metadata log is closed when this returns.
    pub async fn shutdown(self) -> Result<(), ControllerError> {
        // The loop may already have ended; then there is nobody to tell.
        self.keeper.abort();
        let _ = self.stop.send(());
        self.raft.shutdown().await.map_err(ControllerError::RaftShutdown)?;
        self.event_loop.await.map_err(ControllerError::EventLoopJoin)?;
        // It ends when raft drops its metrics; it only ever observes.
        self.leader_watch.abort();
        Ok(())
    }
}

/// Publishes the raft leader's id whenever it changes, until raft stops (then: none), and the
/// voters to relay requests to: the membership's, or `configured` while the log has none.
async fn watch_leader(
    mut metrics: watch::Receiver<RaftMetrics<u64, ControllerNode>>,
    leader: watch::Sender<Option<u64>>,
    targets: watch::Sender<Arc<Vec<Target>>>,
    configured: Vec<Target>,
    node_id: u64,
) {
    loop {
        let (current, voters) = {
            let m = metrics.borrow_and_update();
            let membership = m.membership_config.membership();
            let voters: Vec<Target> = membership
                .voter_ids()
                .map(|id| Target {
                    node_id: Some(id),
                    addr: membership
                        .get_node(&id)
                        .map(|n| n.control_addr.clone())
                        .unwrap_or_default(),
                })
                .collect();
            (m.current_leader, voters)
        };
        let voters = if voters.is_empty() { configured.clone() } else { voters };
        targets.send_if_modified(|old| {
            if **old == voters {
                return false;
            }
            tracing::info!(node_id, voters = ?voters, "controllers to relay requests to");
            *old = Arc::new(voters);
            true
        });
        leader.send_if_modified(|old| {
            if *old == current {
                return false;
            }
            tracing::info!(node_id, leader = ?current, "active controller changed");
            *old = current;
            true
        });
        if metrics.changed().await.is_err() {
            leader.send_replace(None);
            return;
        }
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

/// Milliseconds since the controller started, on the monotonic clock: broker sessions do not
/// jump when the wall clock is set.
struct MonotonicClock(std::time::Instant);

impl MonotonicClock {
    fn new() -> MonotonicClock {
        MonotonicClock(std::time::Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> i64 {
        i64::try_from(self.0.elapsed().as_millis()).unwrap_or(i64::MAX)
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

/// Broker liveness for one leadership term: rebuilt whenever this node starts to lead.
struct TermLiveness {
    term: u64,
    brokers: BrokerLiveness,
}

struct ActiveController {
    raft: Raft,
    node_id: u64,
    image: watch::Receiver<Arc<MetadataImage>>,
    defaults: ControlDefaults,
    random: SplitMix64,
    /// How long a proposal may wait to commit before the caller hears "outcome unknown".
    commit_wait: Duration,
    /// Broker sessions are measured on this clock (monotonic in a node).
    clock: Arc<dyn Clock>,
    liveness: Option<TermLiveness>,
    events: mpsc::Receiver<Event>,
    /// The queue's senders are gone (the node is stopping): nothing more to take early.
    events_closed: bool,
    /// Events taken off the queue while a commit was in flight, in arrival order; decided
    /// after it, before anything newer. Heartbeats among them were counted when taken, so a
    /// slow commit neither delays a broker's contact nor lets fencing act on an old one. At
    /// most [`EVENT_QUEUE_MAX`]; past that the queue fills and submits are refused at once.
    backlog: VecDeque<Event>,
    /// The quorum's membership changes (KIP-853): the one in progress, and what DescribeQuorum
    /// reports of each replica.
    quorum: voters::QuorumOps,
    metrics: Arc<ControllerMetrics>,
}

impl ActiveController {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let check_ms =
            (self.defaults.broker_heartbeat_interval_ms / LIVENESS_CHECKS_PER_HEARTBEAT).max(1);
        let mut check = tokio::time::interval(Duration::from_millis(check_ms));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut voter_check = tokio::time::interval(Duration::from_millis(voters::VOTER_CHECK_MS));
        voter_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(event) = self.backlog.pop_front() {
                // A stop still wins between two events; what is left is answered NOT_CONTROLLER
                // (its reply is dropped), as it was never decided.
                if !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                    break;
                }
                self.handle(event).await;
                continue;
            }
            tokio::select! {
                _ = &mut stop => break,
                event = self.events.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => break,
                },
                _ = check.tick() => {
                    self.note_caught_up();
                    self.fence_expired().await;
                }
                _ = voter_check.tick(), if self.quorum.adding() => self.check_new_voter().await,
            }
        }
    }

    async fn handle(&mut self, event: Event) {
        let Event::Submit { request, reply, queued } = event;
        let started = std::time::Instant::now();
        if request.is_quorum() {
            // Answers now, or (a voter being added) once the new voter has caught up.
            self.quorum_request(request, reply).await;
        } else {
            let answer = self.submit(&request).await;
            // The caller may have given up waiting; nothing to do then.
            let _ = reply.send(answer);
        }
        self.metrics.event_handled(started.duration_since(queued), started.elapsed());
    }

    /// An event that arrived while a commit was in flight: a heartbeat counts at once (the
    /// broker is alive now, whatever is being committed); every event waits in the backlog to
    /// be decided in its turn, against the image after that commit.
    fn take_early(&mut self, event: Event) {
        let Event::Submit { request, .. } = &event;
        if let ControlRequest::BrokerHeartbeat(r) = request {
            let now = self.now_ms();
            if let Some(liveness) = self.liveness() {
                liveness.on_heartbeat(r.broker_id, r.broker_epoch, now);
            }
            self.note_heartbeat(r);
        }
        self.backlog.push_back(event);
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The liveness of the current term, if this node leads: a new term (this node just
    /// became the active controller) starts over, every registered broker heard from now.
    fn liveness(&mut self) -> Option<&mut BrokerLiveness> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            self.liveness = None;
            return None;
        }
        let term = metrics.current_term;
        if self.liveness.as_ref().is_none_or(|l| l.term != term) {
            let image = self.image.borrow().clone();
            let brokers = BrokerLiveness::starting_at(&image, self.now_ms());
            tracing::info!(
                node_id = self.node_id,
                term,
                "active controller: broker sessions start"
            );
            self.liveness = Some(TermLiveness { term, brokers });
        }
        self.liveness.as_mut().map(|l| &mut l.brokers)
    }

    /// Fences every unfenced broker whose session expired.
    async fn fence_expired(&mut self) {
        let now = self.now_ms();
        let session_ms = i64::try_from(self.defaults.session_timeout_ms).unwrap_or(i64::MAX);
        let image = self.image.borrow().clone();
        let Some(liveness) = self.liveness() else { return };
        liveness.track_registered(&image, now);
        let expired = liveness.expired(now, session_ms);
        for (broker, epoch) in expired {
            let image = self.image.borrow().clone();
            match image.brokers.get(&broker) {
                Some(b) if b.epoch == epoch && !b.fenced => {}
                Some(b) if b.epoch == epoch => continue,
                // Gone, or registered again since: that registration has its own contact.
                _ => {
                    if let Some(l) = self.liveness() {
                        l.forget(broker);
                    }
                    continue;
                }
            }
            let fenced =
                self.propose(|image, _| Ok((fence_broker(image, broker, epoch), ()))).await;
            match fenced {
                Ok(()) => tracing::warn!(
                    broker = broker.0,
                    epoch = epoch.0,
                    session_timeout_ms = session_ms,
                    "broker session expired: fenced, its leaderships moved"
                ),
                Err(e) => {
                    tracing::warn!(broker = broker.0, error = %e, "cannot fence expired broker");
                    return;
                }
            }
        }
    }

    async fn submit(&mut self, request: &ControlRequest) -> Result<ControlResponse, ControlError> {
        // Make sure the sessions of this term exist before a heartbeat is counted.
        let _ = self.liveness();
        // A heartbeat proves the broker alive even when its proposal cannot commit (no
        // quorum): count it first, or a quorum outage would end with every session expired.
        if let ControlRequest::BrokerHeartbeat(r) = request {
            let now = self.now_ms();
            if let Some(liveness) = self.liveness() {
                liveness.on_heartbeat(r.broker_id, r.broker_epoch, now);
            }
            self.note_heartbeat(r);
        }
        let response = self
            .propose(|image, ctx| {
                let decision = decide(image, request, ctx)?;
                Ok((decision.records, decision.response))
            })
            .await?;
        let contact = match (request, &response) {
            (ControlRequest::BrokerHeartbeat(r), _) => Some((r.broker_id, r.broker_epoch)),
            (ControlRequest::RegisterBroker(r), ControlResponse::RegisterBroker(epoch)) => {
                Some((r.broker_id, *epoch))
            }
            _ => None,
        };
        if let Some((broker, epoch)) = contact {
            let now = self.now_ms();
            if let Some(liveness) = self.liveness() {
                liveness.on_heartbeat(broker, epoch, now);
            }
        }
        Ok(response)
    }

    /// Decides against the image of everything committed and proposes the records; answers
    /// once they committed. NOT_CONTROLLER only when nothing was proposed, so a caller may
    /// retry it elsewhere; after a proposal the outcome may be unknown (leadership lost,
    /// commit too slow), which is `ControllerUnavailable`.
    async fn propose<T>(
        &mut self,
        decide: impl FnOnce(
            &MetadataImage,
            &mut DecideCtx<'_>,
        ) -> Result<(Vec<MetadataRecord>, T), ControlError>,
    ) -> Result<T, ControlError> {
        let metrics = self.leading().await?;
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
        let (records, answer) = {
            // Scoped: the context holds a `dyn FnMut`, which must not live across an await.
            let rng = &mut self.random;
            let mut random = || rng.next_u64();
            let mut ctx =
                DecideCtx { now_ms, next_offset, defaults: &self.defaults, random: &mut random };
            decide(&image, &mut ctx)?
        };
        if records.is_empty() {
            return Ok(answer);
        }
        // A user request fits one entry (`decide` refuses it otherwise); a large decision of
        // the controller's own becomes several, each consistent on its own (as Kafka's
        // non-atomic controller results). No entry may exceed what the log and the voters'
        // RPCs carry: refused here, before anything is proposed, never a panic in the log.
        let changes = changes::ChangeLog::of(&image, &records);
        let entries = split_into_entries(records);
        if let Some(bytes) =
            entries.iter().map(prost::Message::encoded_len).find(|&b| b > ENTRY_BYTES_MAX)
        {
            return Err(ControlError::PolicyViolation(format!(
                "a metadata record of {bytes} bytes is larger than one log entry may be \
                 ({ENTRY_BYTES_MAX} bytes)"
            )));
        }
        if entries.len() > 1 {
            tracing::info!(
                node_id = self.node_id,
                entries = entries.len(),
                "a large controller decision commits as several metadata log entries"
            );
        }
        for (i, batch) in entries.into_iter().enumerate() {
            self.commit_entry(batch, MetadataOffset(next_offset.0 + i as u64)).await?;
        }
        changes.log(self.node_id);
        Ok(answer)
    }

    /// The raft metrics once this node leads and has applied its whole log (waiting, bounded,
    /// for a new leader to apply its own entries); NOT_CONTROLLER when it does not lead.
    async fn leading(&mut self) -> Result<RaftMetrics<u64, ControllerNode>, ControlError> {
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
        Ok(metrics)
    }

    /// Proposes one entry and waits for it to commit where the decision expected it.
    async fn commit_entry(
        &mut self,
        batch: MetadataBatch,
        expected: MetadataOffset,
    ) -> Result<(), ControlError> {
        let raft = self.raft.clone();
        let write = raft.client_write(batch);
        tokio::pin!(write);
        let deadline = tokio::time::sleep(self.commit_wait);
        tokio::pin!(deadline);
        // While the entry commits, later events are taken off the queue (heartbeats counted)
        // but not decided: decisions stay one at a time, each against the committed image.
        let committed = loop {
            tokio::select! {
                biased;
                written = &mut write => break Ok(written),
                _ = &mut deadline => break Err(()),
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
        let written = match committed {
            Err(()) => {
                return Err(ControlError::ControllerUnavailable(format!(
                    "the metadata quorum did not commit within {} ms; the outcome is unknown",
                    self.commit_wait.as_millis()
                )))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                // The entry may still commit under the next leader.
                return Err(ControlError::ControllerUnavailable(
                    "leadership was lost while committing; the outcome is unknown".into(),
                ));
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                return Err(ControlError::ControllerUnavailable(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => {
                return Err(ControlError::ControllerUnavailable(e.to_string()))
            }
            Ok(Ok(written)) => written,
        };
        // Only this task proposes while the node leads, and it waited for the leader's own
        // entries to apply, so the proposal lands where the decision assumed.
        debug_assert_eq!(written.log_id.index, expected.0, "proposal landed elsewhere");
        if written.log_id.index != expected.0 {
            tracing::error!(
                decided_for = expected.0,
                landed_at = written.log_id.index,
                node_id = self.node_id,
                "metadata proposal landed at another offset than decided for"
            );
        }
        Ok(())
    }
}
