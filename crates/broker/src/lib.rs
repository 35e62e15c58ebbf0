//! The data plane: a Kafka listener and the handlers behind it, the replica manager that
//! reconciles local partition logs with the metadata image, and group commit to disk.
//!
//! The broker never talks to the controller crate: committed metadata reaches it through
//! [`strom_metadata::MetadataListener`], and its requests go out through
//! [`strom_metadata::ControllerClient`].

mod clock;
mod config;
mod errors;
mod fetch_memory;
mod fetch_session;
mod fetcher;
mod group;
mod handlers;
mod image;
mod internal_records;
mod internal_topic;
mod isr;
mod log_admin;
mod log_dir;
mod metrics;
mod partition;
mod peer;
mod producer_ids;
mod quota;
mod replica;
mod replication_quota;
mod server;
mod shards;
mod txn;
mod txn_admin;
mod wire;

use std::sync::Arc;

pub use config::{BrokerConfig, ConnectionLimits, GroupSettings, InterBrokerListener};
pub use errors::BrokerError;
pub use fetch_memory::{FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX, FETCH_MAX_BYTES_DEFAULT};
pub use fetch_session::{
    CACHE_SLOTS_DEFAULT as FETCH_SESSION_CACHE_SLOTS_DEFAULT,
    CACHE_SLOTS_MAX as FETCH_SESSION_CACHE_SLOTS_MAX,
};
pub use group::{BrokerGroupAdmin, GroupAdminError};
pub use image::ImageListener;
pub use log_admin::{BrokerLogAdmin, LogAdminError};
pub use metrics::BrokerMetricsHandle;
/// A Kafka request/response connection, also the CLI's (`strom produce`, `strom consume`).
pub use peer::PeerConn;
pub use txn_admin::{BrokerTxnAdmin, TxnAdminError, TxnDescriptions};

use strom_metadata::{Clock, ControllerClient};

async fn bind(
    addr: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), BrokerError> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BrokerError::Bind { addr, source })?;
    let local = tcp.local_addr().map_err(|source| BrokerError::Bind { addr, source })?;
    Ok((tcp, local))
}

/// Everything a request handler may reach.
pub(crate) struct BrokerCtx {
    pub config: BrokerConfig,
    pub image: image::ImageCell,
    pub replicas: replica::ReplicaManager,
    pub controller: Arc<dyn ControllerClient>,
    /// The active controller's node id, as Metadata and DescribeCluster report it.
    pub controller_id: std::sync::atomic::AtomicI32,
    /// This broker's registration epoch (-1 until registered): carried by ISR changes.
    pub broker_epoch: std::sync::atomic::AtomicI64,
    /// The group coordinator's shards on this broker.
    pub groups: group::Coordinator,
    /// The replica fetchers, one per leader this broker follows partitions of.
    pub fetchers: fetcher::FetcherManager,
    /// The bounds on record bytes held by Fetch responses.
    pub fetch_memory: fetch_memory::FetchMemory,
    /// Incremental fetch sessions (KIP-227) of followers and consumers.
    pub fetch_sessions: fetch_session::FetchSessions,
    /// Where group sessions, ISR lag and retention read the time (`clock::SystemClock`).
    pub clock: Arc<dyn Clock>,
    /// The blocks of producer ids this broker hands out (InitProducerId).
    pub producer_ids: Arc<producer_ids::ProducerIdManager>,
    /// The transaction coordinator's shards on this broker, and its marker sender.
    pub txn: txn::TxnCoordinator,
    /// Client byte-rate quotas, from the image (Produce and Fetch are throttled by them).
    pub quotas: quota::ClientQuotaManager,
    /// Replication throttles for reassignments, from the image (follower fetches, both sides).
    pub replication_quotas: replication_quota::ReplicationQuotaManager,
    /// What `/metrics` shows of this broker.
    pub metrics: Arc<metrics::BrokerMetrics>,
}

impl BrokerCtx {
    /// The controller id Kafka clients are told: clients send admin requests to it, and every
    /// broker relays them to the active controller, so a controller that is not also a live
    /// broker (a controller-only voter) is reported as this broker instead, as KRaft does.
    pub fn controller_id(&self) -> i32 {
        let id = self.controller_id.load(std::sync::atomic::Ordering::Relaxed);
        if self.image.current().is_live(strom_metadata::NodeId(id)) {
            id
        } else {
            self.config.node_id.0
        }
    }
}

/// A random seed for fetch session ids, so that ids of an earlier incarnation of this broker do
/// not name this one's sessions (the standard library's per-process hash keys).
fn session_id_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// A running broker: its Kafka listener and background tasks.
pub struct Broker {
    ctx: Arc<BrokerCtx>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    local_addr: std::net::SocketAddr,
    inter_broker_addr: Option<std::net::SocketAddr>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Opens the listeners once the broker has caught up with its registration.
    serving: tokio::sync::watch::Sender<bool>,
}

/// After this long without catching up with its own registration, the broker says so (and
/// goes on waiting).
const CATCH_UP_WARN_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl Broker {
    /// The listener for committed metadata; hand it to the controller (combined node) or to the
    /// metadata follower (broker-only node) before calling [`Broker::start`].
    pub fn listener(node: strom_metadata::NodeId) -> Arc<ImageListener> {
        Arc::new(ImageListener::new(node))
    }

    /// Opens local logs, binds the Kafka listener and starts serving.
    pub async fn start(
        config: BrokerConfig,
        listener: Arc<ImageListener>,
        controller: Arc<dyn ControllerClient>,
    ) -> Result<Broker, BrokerError> {
        let clock: Arc<dyn Clock> = Arc::new(clock::SystemClock);
        let replicas = replica::ReplicaManager::open(&config, clock.clone())?;
        let producer_ids = Arc::new(producer_ids::ProducerIdManager::new(
            config.node_id,
            Arc::new(producer_ids::ControllerBlocks(controller.clone())),
            clock.clone(),
        ));
        let (markers, marker_jobs) = txn::MarkerSender::new();
        let ctx = Arc::new(BrokerCtx {
            image: listener.cell(),
            replicas,
            controller,
            controller_id: std::sync::atomic::AtomicI32::new(config.node_id.0),
            broker_epoch: std::sync::atomic::AtomicI64::new(-1),
            groups: group::Coordinator::default(),
            fetchers: fetcher::FetcherManager::default(),
            fetch_memory: fetch_memory::FetchMemory::new(),
            fetch_sessions: fetch_session::FetchSessions::new(
                config.max_incremental_fetch_session_cache_slots,
                session_id_seed(),
            ),
            clock,
            producer_ids,
            txn: txn::TxnCoordinator::new(markers),
            quotas: quota::ClientQuotaManager::default(),
            replication_quotas: replication_quota::ReplicationQuotaManager::default(),
            metrics: Arc::new(metrics::BrokerMetrics::new(config.consumer_lag_metrics)),
            config,
        });
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let (serving, serving_rx) = tokio::sync::watch::channel(false);
        let (tcp, local_addr) = bind(ctx.config.kafka_addr).await?;
        let inter_broker = match &ctx.config.inter_broker {
            Some(l) => Some((bind(l.addr).await?, l.name.clone(), l.limits.clone())),
            None => None,
        };
        let mut tasks = vec![
            tokio::spawn(replica::reconcile_loop(ctx.clone(), shutdown_rx.clone())),
            tokio::spawn(replica::maintenance_loop(ctx.clone(), shutdown_rx.clone())),
            tokio::spawn(replica::isr_loop(ctx.clone(), shutdown_rx.clone())),
            tokio::spawn(group::run(ctx.clone(), shutdown_rx.clone())),
            tokio::spawn(txn::run(ctx.clone(), shutdown_rx.clone())),
            tokio::spawn(txn::send_markers(ctx.clone(), marker_jobs, shutdown_rx.clone())),
            tokio::spawn(quota::follow_image(ctx.clone(), shutdown_rx.clone())),
            tokio::spawn(replication_quota::follow_image(ctx.clone(), shutdown_rx.clone())),
            tokio::spawn(server::accept_loop(
                tcp,
                handlers::metadata::LISTENER.to_owned(),
                ctx.config.connections.clone(),
                ctx.clone(),
                serving_rx.clone(),
                shutdown_rx.clone(),
            )),
        ];
        tracing::info!(
            addr = %local_addr,
            max_connections = ctx.config.connections.max_connections,
            "kafka listener bound; it serves once this broker has caught up with its registration"
        );
        let mut inter_broker_addr = None;
        if let Some(((tcp, addr), name, limits)) = inter_broker {
            tracing::info!(
                listener = %name, %addr, max_connections = limits.max_connections,
                "inter-broker listener up"
            );
            inter_broker_addr = Some(addr);
            tasks.push(tokio::spawn(server::accept_loop(
                tcp,
                name,
                limits,
                ctx.clone(),
                serving_rx,
                shutdown_rx,
            )));
        }
        Ok(Broker { ctx, tasks, local_addr, inter_broker_addr, shutdown, serving })
    }

    /// Records which node is the active controller (the raft leader).
    pub fn set_controller_id(&self, id: i32) {
        self.ctx.controller_id.store(id, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records this broker's registration epoch once the controller has granted it.
    pub fn set_broker_epoch(&self, epoch: strom_metadata::BrokerEpoch) {
        self.ctx.broker_epoch.store(epoch.0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Opens the Kafka listeners once the image this broker has received holds its own
    /// registration at `epoch` (and so every record committed before it): Kafka's initial
    /// catch-up. A node restarting replays its metadata log; serving before the replay reaches
    /// the registration would answer from a partial image (topics missing, brokers stale).
    /// Returns at once; the wait runs in the background and ends with the broker.
    pub fn serve_when_caught_up(&mut self, epoch: strom_metadata::BrokerEpoch) {
        let node = self.ctx.config.node_id;
        let image = self.ctx.image.clone();
        let serving = self.serving.clone();
        self.tasks.push(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let caught_up = image
                .wait_until(|img| img.brokers.get(&node).is_some_and(|b| b.epoch.0 >= epoch.0));
            tokio::pin!(caught_up);
            if tokio::time::timeout(CATCH_UP_WARN_AFTER, &mut caught_up).await.is_err() {
                tracing::warn!(
                    broker_epoch = epoch.0,
                    waited_ms = CATCH_UP_WARN_AFTER.as_millis() as u64,
                    "the metadata image does not hold this broker's registration yet; \
                     the Kafka listeners stay closed until it does"
                );
                caught_up.await;
            }
            tracing::info!(
                broker_epoch = epoch.0,
                waited_ms = started.elapsed().as_millis() as u64,
                "caught up with the metadata log; serving Kafka requests"
            );
            let _ = serving.send(true);
        }));
    }

    /// The metadata offset this broker has applied: that of the last image the replica manager
    /// has reconciled (its logs open, deleted and in their roles). Behind the image the broker
    /// has received while a reconcile runs. Heartbeats report it, so the controller unfences
    /// the broker, and so lets it lead, only once its logs match its registration's image.
    pub fn reconciled_offset(
        &self,
    ) -> tokio::sync::watch::Receiver<strom_metadata::MetadataOffset> {
        self.ctx.replicas.reconciled_offset()
    }

    /// The log directory's first storage failure, once there is one (then every partition of
    /// this broker is offline and the node should stop; see `log_dir`).
    pub fn log_dir_failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.ctx.replicas.health.watch()
    }

    /// This broker's metrics, to register with the node's Prometheus registry.
    pub fn metrics(&self) -> BrokerMetricsHandle {
        BrokerMetricsHandle { ctx: self.ctx.clone() }
    }

    /// Whether the Kafka listeners serve: the broker has caught up with its registration.
    pub fn serving(&self) -> tokio::sync::watch::Receiver<bool> {
        self.serving.subscribe()
    }

    /// Consumer groups as the admin API shows them, asked of the brokers over Kafka.
    pub fn group_admin(&self) -> Arc<BrokerGroupAdmin> {
        Arc::new(BrokerGroupAdmin { ctx: self.ctx.clone() })
    }

    /// Transactions and producer state as the admin API shows them, asked of the brokers over
    /// Kafka.
    pub fn txn_admin(&self) -> Arc<BrokerTxnAdmin> {
        Arc::new(BrokerTxnAdmin { ctx: self.ctx.clone() })
    }

    /// Record deletion and log directories as the admin API shows them, asked of the brokers
    /// over Kafka.
    pub fn log_admin(&self) -> Arc<BrokerLogAdmin> {
        Arc::new(BrokerLogAdmin { ctx: self.ctx.clone() })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// The inter-broker listener's address, when it has one of its own.
    pub fn inter_broker_addr(&self) -> Option<std::net::SocketAddr> {
        self.inter_broker_addr
    }

    /// Waits until the broker has applied at least this metadata offset (bounded by the caller).
    pub async fn wait_for_metadata(&self, offset: strom_metadata::MetadataOffset) {
        self.ctx.image.wait_for(offset).await
    }

    /// Stops accepting, flushes every log and writes the checkpoints.
    pub async fn shutdown(self) -> Result<(), BrokerError> {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        self.ctx.fetchers.shutdown().await;
        self.ctx.replicas.close_all().await
    }
}
