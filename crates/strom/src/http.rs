//! The node's HTTP endpoint (`metrics_listener`, off the Kafka and control ports), served with
//! axum: `/metrics` (Prometheus text, `prometheus-client`), `/health` (the process answers:
//! 200) and `/ready` (200 once the node is ready, else 503 with the reason; see `health`).
//! The gRPC health service of the control port follows the same readiness.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use strom_admin::ClusterInfo;
use strom_broker::BrokerMetricsHandle;
use strom_controller::ControllerMetricsHandle;
use strom_metadata::MetadataImage;
use tokio::sync::watch;

use crate::health::{NotReady, Readiness};

/// How often the gRPC health service's status is brought in line with the readiness (which
/// also changes with time alone: a heartbeat answer grows old).
const GRPC_HEALTH_EVERY: Duration = Duration::from_millis(200);

/// OpenMetrics text, what `prometheus-client` writes (Prometheus reads it).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The node's readiness, fed by start-up, heartbeats and shutdown, and the sources it reads
/// at each judgement.
pub struct NodeHealth {
    readiness: Mutex<Readiness>,
    started: Instant,
    broker: OnceLock<BrokerMetricsHandle>,
}

impl NodeHealth {
    pub fn new(broker: bool, session_timeout_ms: u64) -> NodeHealth {
        NodeHealth {
            readiness: Mutex::new(Readiness::new(broker, session_timeout_ms)),
            started: Instant::now(),
            broker: OnceLock::new(),
        }
    }

    /// Milliseconds since the node started: the readiness's clock.
    pub fn now_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    pub fn update(&self, change: impl FnOnce(&mut Readiness)) {
        change(&mut self.readiness.lock().unwrap_or_else(PoisonError::into_inner));
    }

    pub fn verdict(&self) -> Result<(), NotReady> {
        let logs = self.broker.get().map_or(0, BrokerMetricsHandle::logs_awaiting_open);
        let now_ms = self.now_ms();
        let mut readiness = self.readiness.lock().unwrap_or_else(PoisonError::into_inner);
        readiness.set_logs_awaiting_open(logs);
        readiness.verdict(now_ms)
    }
}

/// What the node's metrics are read from besides the broker's own.
struct NodeGauges {
    ready: Gauge,
    controller_active: Gauge,
    raft_term: Gauge,
    raft_commit_index: Gauge,
    metadata_offset: Gauge,
    brokers: Gauge,
    fenced_brokers: Gauge,
    offline_partitions: Gauge,
    partitions: Gauge,
}

impl NodeGauges {
    fn register(registry: &mut Registry) -> NodeGauges {
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        NodeGauges {
            ready: gauge("strom_ready", "1 when /ready answers 200"),
            controller_active: gauge(
                "strom_controller_active",
                "1 on the active controller (the metadata quorum's raft leader)",
            ),
            raft_term: gauge("strom_raft_term", "The metadata quorum's raft term"),
            raft_commit_index: gauge(
                "strom_raft_commit_index",
                "The highest metadata log index this node knows committed",
            ),
            metadata_offset: gauge(
                "strom_metadata_offset",
                "The metadata offset of the image this node has applied",
            ),
            brokers: gauge("strom_registered_brokers", "Brokers registered in the metadata"),
            fenced_brokers: gauge("strom_fenced_brokers", "Registered brokers that are fenced"),
            offline_partitions: gauge(
                "strom_offline_partitions",
                "Partitions with no leader in the metadata",
            ),
            partitions: gauge("strom_global_partition_count", "Partitions in the metadata"),
        }
    }
}

/// Everything the endpoint serves; the parts that exist only once the node has started are
/// set then.
pub struct HttpState {
    registry: RwLock<Registry>,
    node: NodeGauges,
    health: Arc<NodeHealth>,
    cluster: OnceLock<Arc<dyn ClusterInfo>>,
    image: OnceLock<watch::Receiver<Arc<MetadataImage>>>,
    /// One scrape at a time: a refresh clears and refills the per-partition gauges.
    scrape: tokio::sync::Mutex<()>,
}

impl HttpState {
    pub fn new(health: Arc<NodeHealth>) -> Arc<HttpState> {
        let mut registry = Registry::default();
        let node = NodeGauges::register(&mut registry);
        Arc::new(HttpState {
            registry: RwLock::new(registry),
            node,
            health,
            cluster: OnceLock::new(),
            image: OnceLock::new(),
            scrape: tokio::sync::Mutex::new(()),
        })
    }

    pub fn set_metadata(
        &self,
        cluster: Arc<dyn ClusterInfo>,
        image: watch::Receiver<Arc<MetadataImage>>,
    ) {
        let _ = self.cluster.set(cluster);
        let _ = self.image.set(image);
    }

    /// This node is a controller: its metrics join the registry.
    pub fn set_controller(&self, controller: ControllerMetricsHandle) {
        controller.register(&mut self.registry.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// The broker has started: its metrics join the registry, its logs the readiness.
    pub fn set_broker(&self, broker: BrokerMetricsHandle) {
        broker.register(&mut self.registry.write().unwrap_or_else(PoisonError::into_inner));
        let _ = self.health.broker.set(broker);
    }

    async fn render(&self) -> String {
        let _one = self.scrape.lock().await;
        if let Some(broker) = self.health.broker.get() {
            broker.refresh().await;
        }
        let g = &self.node;
        g.ready.set(i64::from(self.health.verdict().is_ok()));
        if let Some(cluster) = self.cluster.get() {
            let q = cluster.quorum();
            g.controller_active.set(i64::from(q.active_controller == Some(q.node_id)));
            g.raft_term.set(i64::try_from(q.term).unwrap_or(i64::MAX));
            g.raft_commit_index.set(i64::try_from(q.commit_index).unwrap_or(i64::MAX));
        }
        if let Some(image) = self.image.get() {
            let image = image.borrow().clone();
            g.metadata_offset.set(i64::try_from(image.offset.0).unwrap_or(i64::MAX));
            g.brokers.set(image.brokers.len() as i64);
            g.fenced_brokers.set(image.brokers.values().filter(|b| b.fenced).count() as i64);
            let partitions = image.topics.values().flat_map(|t| t.partitions.values());
            let (mut all, mut offline) = (0, 0);
            for p in partitions {
                all += 1;
                if p.leader.is_none() {
                    offline += 1;
                }
            }
            g.partitions.set(all);
            g.offline_partitions.set(offline);
        }
        let mut out = String::new();
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], state.render().await)
}

async fn health() -> &'static str {
    "alive\n"
}

async fn ready(State(state): State<Arc<HttpState>>) -> (StatusCode, String) {
    match state.health.verdict() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// Serves the endpoint on `listener` (bound by the caller, so a taken port fails start-up)
/// until `stop` is set.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    mut stop: watch::Receiver<bool>,
) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}

/// Keeps the gRPC health service's status (the server's, "", and the admin service's) on
/// the node's readiness: NOT_SERVING until ready, and whenever it is not.
pub async fn follow_readiness(
    reporter: tonic_health::server::HealthReporter,
    services: Vec<&'static str>,
    health: Arc<NodeHealth>,
) {
    use tonic_health::ServingStatus;
    let mut last = None;
    let mut tick = tokio::time::interval(GRPC_HEALTH_EVERY);
    loop {
        tick.tick().await;
        let ready = health.verdict().is_ok();
        if last == Some(ready) {
            continue;
        }
        last = Some(ready);
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        for service in &services {
            reporter.set_service_status(*service, status).await;
        }
    }
}
