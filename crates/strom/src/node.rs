//! Wires a combined node together: data dir and meta.properties, the controller (single-voter
//! openraft quorum), the broker, broker registration and heartbeats, and signal handling.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use strom_admin::{
    mount_admin, AdminServiceImpl, BrokerReadError, ClusterInfo, DescribedTransactions,
    GroupSource, ImagePublisher, LogSource, QuorumState, TxnSource,
};
use strom_broker::{Broker, BrokerConfig, ConnectionLimits, InterBrokerListener};
use strom_controller::follower::follow_metadata_as;
use strom_controller::{Controller, ControllerConfig, RaftClusterInfo, RelayClient};
use strom_metadata::control::{
    BrokerHeartbeatRequest, ControlDefaults, ControlRequest, ControlResponse, RegisterBrokerRequest,
};
use strom_metadata::quorum::DirectoryId;
use strom_metadata::records::Endpoint;
use strom_metadata::{ControllerClient, MetadataListener, NodeId};
use tokio::sync::watch;

use crate::config::{
    parse_bootstrap_servers, parse_ip_overrides, parse_listeners, parse_voters, NodeConfig,
    INTER_BROKER_MAX_CONNECTIONS_DEFAULT,
};
use crate::http::{HttpState, NodeHealth};
use crate::StartArgs;

/// How long start-up waits for the node's own broker registration to commit.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// The control port's gRPC server. A request whose response has not started by then fails
/// with DEADLINE_EXCEEDED; above every handler's own bound (a relayed submit waits 30 s).
const GRPC_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const _: () = assert!(strom_admin::SUBMIT_TIMEOUT_MS_MAX < GRPC_REQUEST_TIMEOUT.as_millis() as u64);
/// Requests served at once per connection (the rest wait); raft and the relay share one
/// connection per peer.
const GRPC_CONCURRENCY_PER_CONNECTION_MAX: usize = 256;
/// HTTP/2 streams a client may open on one connection.
const GRPC_STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// A peer that answers no HTTP/2 ping within the timeout is dropped, with its streams.
const GRPC_HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const GRPC_HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
const GRPC_TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Streams reset by the client before they are served (the "rapid reset" attack).
const GRPC_PENDING_RESETS_MAX: usize = 100;

/// `listener.name.controller.max_connections` when unset: voters, brokers and admin clients.
const CONTROL_MAX_CONNECTIONS_DEFAULT: usize = 1_000;

/// A control-port connection and its place among the port's connections.
struct BoundedConn {
    stream: tokio::net::TcpStream,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for BoundedConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for BoundedConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for BoundedConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The control port's connections, at most `max` at once: one over is closed as soon as it is
/// accepted, as on the Kafka listeners, so that a flood cannot take the descriptors the node
/// needs (tonic has no such limit).
fn bounded(
    incoming: tonic::transport::server::TcpIncoming,
    max: usize,
) -> impl futures::Stream<Item = std::io::Result<BoundedConn>> {
    use futures::StreamExt;
    let places = Arc::new(tokio::sync::Semaphore::new(max));
    incoming.filter_map(move |accepted| {
        let places = places.clone();
        async move {
            match accepted {
                Err(e) => Some(Err(e)),
                Ok(stream) => match places.try_acquire_owned() {
                    Ok(place) => Some(Ok(BoundedConn { stream, _place: place })),
                    Err(_) => {
                        tracing::debug!(
                            "control connection refused: {max} open \
                             (listener.name.controller.max_connections)"
                        );
                        None
                    }
                },
            }
        }
    })
}

/// File descriptors kept for everything but Kafka connections (log segments and indexes, the
/// control port, peers), as a share of the limit and at least this many.
const FD_RESERVE_MIN: u64 = 256;
const FD_RESERVE_SHARE: u64 = 4;
/// Of that reserve, the partition logs' handle cache (`strom_log::FileHandles`) gets all but
/// this share, and all but at least `FD_OTHERS_MIN`: those are for the control port's
/// connections, the metadata log and its snapshots, the files written whole (checkpoints,
/// producer snapshots), peers and the runtime, which must never run out.
const FD_OTHERS_SHARE_OF_RESERVE: u64 = 2;
const FD_OTHERS_MIN: u64 = 128;
/// The cache's size when the limit is unknown or enormous.
const LOG_OPEN_FILES_MAX: u64 = 1 << 20;
const _: () = assert!(FD_OTHERS_MIN < FD_RESERVE_MIN && FD_OTHERS_SHARE_OF_RESERVE >= 2);

fn fd_reserve(fd_limit: u64) -> u64 {
    (fd_limit / FD_RESERVE_SHARE).max(FD_RESERVE_MIN).min(fd_limit / 2)
}

/// How many partition files the log directory keeps open at most: the reserve less what the
/// rest of the node needs (the cache never goes below `strom_log::FILE_HANDLES_MIN`).
fn log_open_files_max(fd_limit: u64) -> usize {
    let reserve = fd_reserve(fd_limit);
    let others = (reserve / FD_OTHERS_SHARE_OF_RESERVE).max(FD_OTHERS_MIN);
    let files = reserve.saturating_sub(others).min(LOG_OPEN_FILES_MAX);
    usize::try_from(files).unwrap_or(usize::MAX).max(strom_log::FILE_HANDLES_MIN)
}

/// Raises the soft open-file limit to the hard limit (a broker holds a descriptor per
/// connection and per segment file) and returns the limit in force.
#[allow(unsafe_code, clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
        return u64::MAX;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            let error = std::io::Error::last_os_error();
            tracing::warn!(%error, "cannot raise the open-file limit");
        }
    }
    let log_open_files = log_open_files_max(lim.rlim_cur as u64);
    tracing::info!(limit = lim.rlim_cur, before, log_open_files, "open-file limit");
    lim.rlim_cur as u64
}

/// Kafka connections the open-file limit allows: (client listener, inter-broker listener),
/// each at most what is configured, with a reserve left for files and the control port.
fn connection_budget(fd_limit: u64, client_max: usize, inter_broker_max: usize) -> (usize, usize) {
    let budget = usize::try_from(fd_limit - fd_reserve(fd_limit)).unwrap_or(usize::MAX);
    // The inter-broker listener gets at most a tenth, clients the rest: at least one each.
    let inter_broker = inter_broker_max.min(budget / 10).max(1);
    let client = client_max.min(budget.saturating_sub(inter_broker)).max(1);
    (client, inter_broker)
}

pub fn config_from(args: StartArgs) -> Result<NodeConfig> {
    let mut cfg = match &args.config {
        Some(path) => NodeConfig::load(path)?,
        None => NodeConfig::default(),
    };
    if let Some(d) = args.data_dir {
        cfg.log.dirs = d;
    }
    if let Some(id) = args.node_id {
        cfg.node_id = id;
    }
    if let Some(a) = &args.kafka_addr {
        cfg.set_listener("PLAINTEXT", a).context("--kafka-addr")?;
    }
    if let Some(a) = &args.control_addr {
        cfg.set_listener("CONTROLLER", a).context("--control-addr")?;
    }
    if let Some(a) = args.metrics_addr {
        cfg.metrics_listener = a;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The data dir's identity, from `meta.properties`.
struct DataDirIdentity {
    cluster_id: String,
    /// KIP-853's directory id: drawn once, when the directory is formatted (or, for a directory
    /// formatted before strom had them, at the first start that needs it), so a wiped disk
    /// comes back as another replica of the metadata log.
    directory_id: DirectoryId,
}

/// Reads `meta.properties`, or writes it with a fresh cluster id and directory id on first
/// start. `wanted` is asked for the cluster id only when the directory is new.
async fn format_or_load(
    dir: &Path,
    node_id: i32,
    wanted: impl std::future::Future<Output = Result<Option<String>>>,
) -> Result<DataDirIdentity> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {} (log.dirs)", dir.display()))?;
    let path = dir.join("meta.properties");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                .map(str::trim)
        };
        let stored: i32 = get("node.id")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{} has no valid node.id", path.display()))?;
        if stored != node_id {
            bail!(
                "{} belongs to node.id={stored} but node_id is {node_id}: set node_id = {stored} or use another data dir",
                path.display()
            );
        }
        let cluster =
            get("cluster.id").with_context(|| format!("{} has no cluster.id", path.display()))?;
        let directory_id = match get("directory.id") {
            Some(text) => text
                .parse::<DirectoryId>()
                .with_context(|| format!("{} has an invalid directory.id", path.display()))?,
            None => {
                // Formatted before directory ids: one is drawn now and kept.
                let id = new_directory_id();
                let text = format!("{}directory.id={id}\n", text.trim_end().to_string() + "\n");
                strom_fsio::write_atomically(&path, text.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                tracing::info!(directory_id = %id, "directory id added to meta.properties");
                id
            }
        };
        return Ok(DataDirIdentity { cluster_id: cluster.to_string(), directory_id });
    }
    let cluster = match wanted.await? {
        Some(id) => id,
        None => kafka_uuid_string(uuid::Uuid::new_v4()),
    };
    let directory_id = new_directory_id();
    let text = format!(
        "# written by strom on first start\nversion=1\ncluster.id={cluster}\nnode.id={node_id}\n\
         directory.id={directory_id}\n"
    );
    // Synced and renamed into place with its directory synced: a node must never come back
    // from a crash with a half-written identity.
    strom_fsio::write_atomically(&path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(cluster_id = %cluster, %directory_id, dir = %dir.display(), "formatted data dir");
    Ok(DataDirIdentity { cluster_id: cluster, directory_id })
}

/// A fresh directory id: random, never Kafka's zero id.
fn new_directory_id() -> DirectoryId {
    loop {
        let id = DirectoryId(*uuid::Uuid::new_v4().as_bytes());
        if id != DirectoryId::ZERO {
            return id;
        }
    }
}

/// How long a node formatting its data directory to join a quorum
/// (`controller.quorum_bootstrap_servers`) asks the quorum for its cluster id.
const CLUSTER_ID_WAIT: Duration = Duration::from_secs(30);

/// The cluster id of the quorum at `servers` (their admin service's DescribeCluster), for a
/// node that joins it with a fresh data directory.
async fn cluster_id_of_quorum(servers: &[String]) -> Result<String> {
    use strom_proto::admin::admin_service_client::AdminServiceClient;
    let deadline = tokio::time::Instant::now() + CLUSTER_ID_WAIT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        for addr in servers {
            let attempt = async {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(5))
                    .connect()
                    .await?;
                let answer = AdminServiceClient::new(channel)
                    .describe_cluster(strom_proto::admin::DescribeClusterRequest {})
                    .await?;
                anyhow::Ok(answer.into_inner().cluster_id)
            };
            match attempt.await {
                Ok(id) if !id.is_empty() => return Ok(id),
                Ok(_) => last = format!("{addr} reported no cluster id"),
                Err(e) => last = format!("{addr}: {e:#}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!(
        "cannot learn the cluster id from controller.quorum_bootstrap_servers within {} s \
         (last: {last}): check that they run and are reachable, or set cluster_id",
        CLUSTER_ID_WAIT.as_secs()
    )
}

/// Kafka prints UUIDs as unpadded URL-safe base64 (22 characters).
fn kafka_uuid_string(id: uuid::Uuid) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = id.as_bytes();
    let mut out = String::with_capacity(22);
    let mut acc = 0u32;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(A[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

/// The metadata side of a node: a local controller (a voter), or a follower of the voters'
/// metadata stream (a broker-only node).
enum MetadataSide {
    Voter(Controller),
    Follower { stop: watch::Sender<bool>, task: tokio::task::JoinHandle<()> },
}

/// [`ClusterInfo`] of a broker-only node: what its metadata stream tells it of the quorum.
struct FollowerClusterInfo {
    cluster_id: String,
    node_id: u64,
    voters: Vec<(u64, String)>,
    leader: watch::Receiver<Option<u64>>,
    image: watch::Receiver<Arc<strom_metadata::MetadataImage>>,
}

impl ClusterInfo for FollowerClusterInfo {
    fn cluster_id(&self) -> String {
        self.cluster_id.clone()
    }

    fn quorum(&self) -> QuorumState {
        QuorumState {
            node_id: self.node_id,
            voters: self.voters.clone(),
            active_controller: *self.leader.borrow(),
            term: 0,
            commit_index: self.image.borrow().offset.0,
        }
    }
}

/// [`ClusterInfo`] of a voter: the quorum from its raft node.
struct VoterClusterInfo(RaftClusterInfo);

impl ClusterInfo for VoterClusterInfo {
    fn cluster_id(&self) -> String {
        self.0.cluster_id()
    }

    fn quorum(&self) -> QuorumState {
        self.0.quorum()
    }
}

pub async fn run(cfg: NodeConfig) -> Result<()> {
    // Installed first: a SIGTERM during start-up (a large node opening its logs, a quorum not
    // formed yet) stops the node cleanly instead of killing it with the default action.
    let mut signals = StopSignals::install()?;
    let fd_limit = raise_fd_limit();
    let node = NodeId(cfg.node_id);
    let is_controller = cfg.has_role("controller");
    let is_broker = cfg.has_role("broker");
    let data_dir = cfg.log.dirs.clone();
    let mut voters: BTreeMap<u64, String> =
        parse_voters(&cfg.controller.quorum_voters)?.into_iter().collect();
    let bootstrap = parse_bootstrap_servers(&cfg.controller.quorum_bootstrap_servers)?;
    let control = cfg.listener("CONTROLLER")?;
    if voters.is_empty() && bootstrap.is_empty() {
        let control = control.as_ref().context("listeners: no CONTROLLER listener")?;
        voters.insert(cfg.node_id as u64, format!("{}:{}", control.host, control.port));
    }
    // A node joining through bootstrap servers takes the quorum's cluster id.
    let wanted_cluster_id = async {
        match cluster_id_for(&cfg, &voters) {
            Some(id) => Ok(Some(id)),
            None if voters.is_empty() => cluster_id_of_quorum(&bootstrap).await.map(Some),
            None => Ok(None),
        }
    };
    let identity = format_or_load(&data_dir, cfg.node_id, wanted_cluster_id).await?;
    let cluster_id = identity.cluster_id.clone();
    let defaults = cfg.broker_defaults();

    let listener = Broker::listener(node);
    let control_rt = ControlRuntime::new()?;
    // The HTTP endpoint answers from the start: /ready says why the node is not ready yet
    // while the quorum forms and the metadata log replays. Served by the control runtime, so
    // a busy data plane does not delay a probe.
    let health = Arc::new(NodeHealth::new(is_broker, cfg.broker.session_timeout_ms));
    let http_state = HttpState::new(health.clone());
    let (http_stop, http_stop_rx) = watch::channel(false);
    let http_server = match cfg.metrics_addr()? {
        Some(addr) => {
            let bound = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(|l| control_rt.listener(l))
                .with_context(|| {
                    format!("cannot bind the metrics endpoint {addr} (metrics_listener)")
                })?;
            tracing::info!(%addr, "metrics endpoint up: /metrics, /health, /ready");
            Some(control_rt.spawn(crate::http::serve(bound, http_state.clone(), http_stop_rx)))
        }
        None => None,
    };
    // Bind the control port before the quorum starts: peers may call as soon as we vote. Bound
    // in the control runtime, whose thread then serves it.
    let control_listener = match &control {
        Some(control) => {
            let addr = control.addr().context("listeners: CONTROLLER")?;
            let bound = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(|l| control_rt.listener(l))
                .with_context(|| {
                    format!("cannot bind the control port {addr} (listeners: CONTROLLER)")
                })?;
            Some(bound)
        }
        None => None,
    };
    let (publisher, image_rx) =
        ImagePublisher::new(is_broker.then(|| listener.clone() as Arc<dyn MetadataListener>));
    let (metadata, client, leader_rx, cluster_info): (
        _,
        Arc<dyn ControllerClient>,
        _,
        Arc<dyn ClusterInfo>,
    ) = if is_controller {
        let controller_cfg = ControllerConfig {
            node_id: cfg.node_id as u64,
            data_dir: data_dir.clone(),
            voters: voters.clone(),
            bootstrap_servers: bootstrap.clone(),
            control_addr: own_control_addr(&cfg, &voters, control.as_ref())?,
            directory_id: identity.directory_id,
            defaults: ControlDefaults::from(&defaults),
            snapshot_after_entries: defaults.controller_snapshot_after_entries,
            heartbeat_interval_ms: defaults.controller_raft_heartbeat_interval_ms,
            election_timeout_min_ms: defaults.controller_election_timeout_ms,
            election_timeout_max_ms: defaults.election_timeout_max_ms(),
        };
        // The raft core, its replication and storage tasks run on the control runtime: the
        // broker's work (a reconcile of 100,000 partitions, fetch sessions) never queues ahead
        // of a heartbeat or an AppendEntries, whose answers openraft bounds by the heartbeat
        // interval.
        let controller = control_rt
            .spawn(Controller::start(controller_cfg, publisher))
            .await
            .context("the control runtime stopped")?
            .context("cannot start the controller")?;
        let client = controller.client();
        let leader = controller.leader_watch();
        let info =
            Arc::new(VoterClusterInfo(RaftClusterInfo::new(cluster_id.clone(), controller.raft())));
        (MetadataSide::Voter(controller), client, leader, info)
    } else {
        // A broker-only node follows the voters' metadata stream and sends its requests
        // to them over gRPC.
        let (leader_tx, leader_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let addrs: Vec<String> =
            if voters.is_empty() { bootstrap.clone() } else { voters.values().cloned().collect() };
        let publisher = publisher as Arc<dyn MetadataListener>;
        let task = tokio::spawn(async move {
            if let Err(e) = follow_metadata_as(node.0, addrs, publisher, leader_tx, stop_rx).await {
                tracing::error!(error = %e, "metadata follower stopped");
            }
        });
        let relay = if voters.is_empty() {
            RelayClient::for_bootstrap_servers(bootstrap.clone())
                .context("controller.quorum_bootstrap_servers")?
        } else {
            RelayClient::new(voters.clone()).context("controller.quorum_voters")?
        };
        let client: Arc<dyn ControllerClient> = Arc::new(relay.with_leader(leader_rx.clone()));
        let info = Arc::new(FollowerClusterInfo {
            cluster_id: cluster_id.clone(),
            node_id: cfg.node_id as u64,
            voters: voters.iter().map(|(k, v)| (*k, v.clone())).collect(),
            leader: leader_rx.clone(),
            image: image_rx.clone(),
        });
        (MetadataSide::Follower { stop, task }, client, leader_rx, info)
    };

    // Aborted if start-up fails from here on: dropping the quorum then ends the raft core, and
    // the watcher would report that as its panic, exiting before the real error is printed.
    let _fatal_watch = match &metadata {
        MetadataSide::Voter(controller) => {
            Some(AbortOnDrop(tokio::spawn(exit_on_fatal(controller.fatal()))))
        }
        MetadataSide::Follower { .. } => None,
    };
    http_state.set_metadata(cluster_info.clone(), image_rx.clone());
    if let MetadataSide::Voter(controller) = &metadata {
        http_state.set_controller(controller.metrics());
    }
    let quorum_leader = tokio::spawn({
        let (health, mut leader) = (health.clone(), leader_rx.clone());
        async move {
            loop {
                let id = *leader.borrow_and_update();
                health.update(|r| r.set_quorum_leader(id));
                if leader.changed().await.is_err() {
                    return;
                }
            }
        }
    });

    // Groups and transactions are answered by this node's broker, which starts after the
    // control port.
    let groups = Arc::new(LateBroker::<strom_broker::BrokerGroupAdmin>::default());
    let txns = Arc::new(LateBroker::<strom_broker::BrokerTxnAdmin>::default());
    let logs = Arc::new(LateBroker::<strom_broker::BrokerLogAdmin>::default());
    let control_server = match control_listener {
        Some(control_listener) => {
            let mut admin = AdminServiceImpl::new(client.clone(), image_rx, cluster_info)
                .with_broker_defaults(defaults);
            if is_broker {
                admin = admin
                    .with_groups(groups.clone())
                    .with_transactions(txns.clone())
                    .with_logs(logs.clone());
            }
            let mut routes = tonic::service::RoutesBuilder::default();
            if let MetadataSide::Voter(controller) = &metadata {
                routes.add_service(controller.raft_service());
                routes.add_service(controller.controller_service());
            }
            let reporter =
                mount_admin(&mut routes, admin).await.context("cannot set up the admin service")?;
            // NOT_SERVING until the node is ready (the server, "", and the admin service).
            let services = vec!["", <strom_proto::admin::admin_service_server::AdminServiceServer<
                AdminServiceImpl,
            > as tonic::server::NamedService>::NAME];
            for service in &services {
                reporter
                    .set_service_status(*service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            control_rt.spawn(crate::http::follow_readiness(reporter, services, health.clone()));
            let incoming = bounded(
                tonic::transport::server::TcpIncoming::from(control_listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(GRPC_TCP_KEEPALIVE)),
                cfg.listener_max_connections("CONTROLLER")
                    .unwrap_or(CONTROL_MAX_CONNECTIONS_DEFAULT),
            );
            Some(
                control_rt.spawn(
                    tonic::transport::Server::builder()
                        // Bounds the wait for a response's head; a stream's body (WatchMetadata)
                        // is not cut. Above every handler's own bound (a relayed submit: 30 s).
                        .timeout(GRPC_REQUEST_TIMEOUT)
                        .concurrency_limit_per_connection(GRPC_CONCURRENCY_PER_CONNECTION_MAX)
                        .max_concurrent_streams(Some(GRPC_STREAMS_PER_CONNECTION_MAX))
                        .http2_keepalive_interval(Some(GRPC_HTTP2_KEEPALIVE_INTERVAL))
                        .http2_keepalive_timeout(Some(GRPC_HTTP2_KEEPALIVE_TIMEOUT))
                        .http2_max_pending_accept_reset_streams(Some(GRPC_PENDING_RESETS_MAX))
                        .add_routes(routes.routes())
                        .serve_with_incoming(incoming),
                ),
            )
        }
        None => None,
    };

    let running = if is_broker {
        let started = start_broker(
            &cfg,
            node,
            cluster_id,
            &listener,
            &client,
            control.as_ref(),
            leader_rx,
            fd_limit,
            &health,
        );
        let running = tokio::select! {
            running = started => running?,
            _ = signals.recv() => {
                tracing::info!("stop requested during start-up; shutting down");
                health.update(|r| r.on_stopping());
                quorum_leader.abort();
                stop_metadata(metadata).await?;
                let _ = http_stop.send(true);
                if let Some(server) = control_server {
                    server.abort();
                }
                tracing::info!("stopped cleanly");
                return Ok(());
            }
        };
        let _ = groups.0.set(running.broker.group_admin());
        let _ = txns.0.set(running.broker.txn_admin());
        let _ = logs.0.set(running.broker.log_admin());
        http_state.set_broker(running.broker.metrics());
        tokio::spawn(exit_on_log_dir_failure(running.broker.log_dir_failure()));
        tokio::spawn({
            let (health, mut failure) = (health.clone(), running.broker.log_dir_failure());
            async move {
                if failure.wait_for(Option::is_some).await.is_ok() {
                    health.update(|r| r.on_log_dir_failed());
                }
            }
        });
        Some(running)
    } else {
        tracing::info!(node_id = cfg.node_id, "strom controller ready");
        None
    };

    signals.recv().await;
    // Not ready from now on: load balancers and orchestrators stop sending work first.
    health.update(|r| r.on_stopping());
    if let Some(running) = running {
        tracing::info!("shutting down: moving leaderships away first (controlled shutdown)");
        running.stop(&client, node).await?;
    } else {
        tracing::info!("shutting down");
    }
    quorum_leader.abort();
    stop_metadata(metadata).await?;
    let _ = http_stop.send(true);
    if let Some(server) = http_server {
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    }
    if let Some(server) = control_server {
        server.abort();
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The control address this node tells the quorum it is at (KIP-853's voter listener): the one
/// `controller.quorum_voters` gives it, else its advertised CONTROLLER listener, else its
/// CONTROLLER listener.
fn own_control_addr(
    cfg: &NodeConfig,
    voters: &BTreeMap<u64, String>,
    control: Option<&crate::config::Listener>,
) -> Result<String> {
    if let Some(addr) = voters.get(&(cfg.node_id as u64)) {
        return Ok(addr.clone());
    }
    let advertised = match &cfg.advertised_listeners {
        Some(a) => parse_listeners("advertised_listeners", a)?,
        None => Vec::new(),
    };
    let listener = advertised.into_iter().find(|l| l.name == "CONTROLLER").or(control.cloned());
    Ok(listener.map(|l| format!("{}:{}", l.host, l.port)).unwrap_or_default())
}

/// The cluster id a node formats its data dir with: the configured one; else, for a node that
/// is one of several (more voters, or a broker-only or controller-only node), one derived from
/// the voter list, so every node of the cluster agrees without coordination; else (`None`)
/// random, or the quorum's for a node that joins through bootstrap servers.
fn cluster_id_for(cfg: &NodeConfig, voters: &BTreeMap<u64, String>) -> Option<String> {
    if let Some(id) = &cfg.cluster_id {
        return Some(id.clone());
    }
    if voters.is_empty() {
        // Joining through bootstrap servers: the quorum's.
        return None;
    }
    let alone = voters.len() == 1
        && voters.contains_key(&(cfg.node_id as u64))
        && cfg.has_role("broker")
        && cfg.has_role("controller");
    if !alone {
        let text = voters.iter().map(|(id, a)| format!("{id}@{a}")).collect::<Vec<_>>().join(",");
        // Two independent 64-bit FNV-1a hashes make the 16 bytes of a Kafka-style id.
        let fnv =
            |seed: u64| text.bytes().fold(seed, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&fnv(0xcbf29ce484222325).to_be_bytes());
        bytes[8..].copy_from_slice(&fnv(0x84222325cbf29ce4).to_be_bytes());
        return Some(kafka_uuid_string(uuid::Uuid::from_bytes(bytes)));
    }
    None
}

/// The admin API's view of consumer groups (`T` = `BrokerGroupAdmin`) or of transactions
/// (`BrokerTxnAdmin`): this node's broker, bound once it has started.
struct LateBroker<T>(std::sync::OnceLock<Arc<T>>);

impl<T> Default for LateBroker<T> {
    fn default() -> Self {
        LateBroker(std::sync::OnceLock::new())
    }
}

impl<T> LateBroker<T> {
    fn broker(&self) -> Result<Arc<T>, BrokerReadError> {
        self.0.get().cloned().ok_or(BrokerReadError::BrokerStarting)
    }
}

impl GroupSource for LateBroker<strom_broker::BrokerGroupAdmin> {
    fn list_groups(
        &self,
    ) -> strom_metadata::BoxFuture<Result<strom_proto::admin::ListGroupsResponse, BrokerReadError>>
    {
        let broker = self.broker();
        Box::pin(async move { Ok(broker?.list_groups().await) })
    }

    fn describe_group(
        &self,
        group_id: String,
    ) -> strom_metadata::BoxFuture<Result<strom_proto::admin::GroupDescription, BrokerReadError>>
    {
        let broker = self.broker();
        Box::pin(async move {
            broker?.describe_group(group_id).await.map_err(|e| BrokerReadError::Broker(Box::new(e)))
        })
    }
}

/// A broker's refusal as the admin API reports it: NOT_FOUND when the brokers said the
/// transactional id or partition does not exist.
fn txn_read_error(e: strom_broker::TxnAdminError) -> BrokerReadError {
    if e.is_not_found() {
        BrokerReadError::NotFound(e.to_string())
    } else {
        BrokerReadError::Broker(Box::new(e))
    }
}

impl TxnSource for LateBroker<strom_broker::BrokerTxnAdmin> {
    fn list_transactions(
        &self,
        filters: strom_proto::admin::ListTransactionsRequest,
    ) -> strom_metadata::BoxFuture<
        Result<strom_proto::admin::ListTransactionsResponse, BrokerReadError>,
    > {
        let broker = self.broker();
        Box::pin(async move { Ok(broker?.list_transactions(filters).await) })
    }

    fn describe_transactions(
        &self,
        transactional_ids: Vec<String>,
    ) -> strom_metadata::BoxFuture<DescribedTransactions> {
        let broker = self.broker();
        Box::pin(async move {
            let described =
                broker?.describe_transactions(transactional_ids).await.map_err(txn_read_error)?;
            Ok(described.into_iter().map(|d| d.map_err(txn_read_error)).collect())
        })
    }

    fn describe_producers(
        &self,
        topic: String,
        partition: i32,
    ) -> strom_metadata::BoxFuture<
        Result<strom_proto::admin::DescribeProducersResponse, BrokerReadError>,
    > {
        let broker = self.broker();
        Box::pin(async move {
            broker?.describe_producers(topic, partition).await.map_err(txn_read_error)
        })
    }
}

impl LogSource for LateBroker<strom_broker::BrokerLogAdmin> {
    fn delete_records(
        &self,
        topic: String,
        partition: i32,
        offset: i64,
    ) -> strom_metadata::BoxFuture<Result<strom_proto::admin::DeleteRecordsResponse, BrokerReadError>>
    {
        let broker = self.broker();
        Box::pin(async move {
            broker?.delete_records(topic, partition, offset).await.map_err(|e| {
                if e.is_not_found() {
                    BrokerReadError::NotFound(e.to_string())
                } else {
                    BrokerReadError::Broker(Box::new(e))
                }
            })
        })
    }

    fn describe_log_dirs(
        &self,
    ) -> strom_metadata::BoxFuture<strom_proto::admin::DescribeLogDirsResponse> {
        let broker = self.broker();
        Box::pin(async move {
            match broker {
                Ok(broker) => broker.describe_log_dirs().await,
                // Still starting: no broker could be asked through it.
                Err(_) => strom_proto::admin::DescribeLogDirsResponse::default(),
            }
        })
    }
}

/// A running broker and the tasks that keep it registered.
struct RunningBroker {
    broker: Arc<Broker>,
    epoch: strom_metadata::BrokerEpoch,
    heartbeats: tokio::task::JoinHandle<()>,
    leader_updates: tokio::task::JoinHandle<()>,
}

impl RunningBroker {
    async fn stop(self, client: &Arc<dyn ControllerClient>, node: NodeId) -> Result<()> {
        self.heartbeats.abort();
        controlled_shutdown(client, &self.broker.reconciled_offset(), node, self.epoch).await;
        self.leader_updates.abort();
        // Wait for the aborted task to drop its handle on the broker.
        let _ = self.leader_updates.await;
        let broker = Arc::into_inner(self.broker).context("broker still in use at shutdown")?;
        broker.shutdown().await.context("broker shutdown")
    }
}

#[allow(clippy::too_many_arguments)]
async fn start_broker(
    cfg: &NodeConfig,
    node: NodeId,
    cluster_id: String,
    listener: &Arc<strom_broker::ImageListener>,
    client: &Arc<dyn ControllerClient>,
    control: Option<&crate::config::Listener>,
    mut leader: watch::Receiver<Option<u64>>,
    fd_limit: u64,
    health: &Arc<NodeHealth>,
) -> Result<RunningBroker> {
    let kafka = cfg.listener("PLAINTEXT")?.context("listeners: no PLAINTEXT listener")?;
    let advertised_all = match &cfg.advertised_listeners {
        Some(a) => parse_listeners("advertised_listeners", a)?,
        None => Vec::new(),
    };
    let advertised_as = |l: &crate::config::Listener| {
        advertised_all.iter().find(|a| a.name == l.name).cloned().unwrap_or_else(|| l.clone())
    };
    let advertised = advertised_as(&kafka);
    let inter_broker = cfg.inter_broker_listener()?;
    let configured_client_max = cfg
        .listener_max_connections("PLAINTEXT")
        .map_or(cfg.max_connections, |m| m.min(cfg.max_connections));
    let configured_inter_broker_max = inter_broker.as_ref().map_or(0, |l| {
        cfg.listener_max_connections(&l.name).unwrap_or(INTER_BROKER_MAX_CONNECTIONS_DEFAULT)
    });
    let (client_max, inter_broker_max) =
        connection_budget(fd_limit, configured_client_max, configured_inter_broker_max);
    if client_max < configured_client_max {
        tracing::warn!(
            configured = configured_client_max,
            allowed = client_max,
            fd_limit,
            "max_connections lowered to what the open-file limit allows (raise `ulimit -n`)"
        );
    }
    let limits = |max_connections: usize, per_ip: usize, overrides| ConnectionLimits {
        max_connections,
        max_connections_per_ip: per_ip,
        max_connections_per_ip_overrides: overrides,
        connections_max_idle_ms: cfg.connections_max_idle_ms,
    };
    let connections = limits(
        client_max,
        cfg.max_connections_per_ip,
        parse_ip_overrides(
            "max_connections_per_ip_overrides",
            &cfg.max_connections_per_ip_overrides,
        )?,
    );
    let inter_broker_config = match &inter_broker {
        Some(l) => Some(InterBrokerListener {
            name: l.name.clone(),
            addr: l.addr().with_context(|| format!("listeners: {}", l.name))?,
            // Brokers often share an address (one host, or NAT): no per-address limit here.
            limits: limits(inter_broker_max, usize::MAX, HashMap::new()),
        }),
        None => None,
    };
    let mut broker = Broker::start(
        BrokerConfig {
            node_id: node,
            cluster_id,
            data_dir: cfg.log.dirs.clone(),
            kafka_addr: kafka.addr().context("listeners: PLAINTEXT")?,
            connections,
            inter_broker: inter_broker_config,
            advertised_host: advertised.host.clone(),
            advertised_port: advertised.port,
            rack: cfg.rack.clone(),
            socket_request_max_bytes: cfg.socket_request_max_bytes,
            fetch_max_bytes: cfg.fetch_max_bytes,
            max_incremental_fetch_session_cache_slots: cfg
                .max_incremental_fetch_session_cache_slots,
            auto_create_topics_enable: cfg.auto_create_topics_enable,
            retention_check_interval_ms: cfg.log.retention_check_interval_ms,
            replica_lag_time_max_ms: cfg.replica_lag_time_max_ms,
            defaults: cfg.broker_defaults(),
            static_configs: cfg.kafka_entries(),
            groups: strom_broker::GroupSettings {
                offsets_topic_num_partitions: cfg.offsets.topic_num_partitions,
                offsets_topic_replication_factor: cfg.offsets.topic_replication_factor,
                offsets_topic_segment_bytes: cfg.offsets.topic_segment_bytes,
                offsets_retention_ms: cfg.offsets.retention_minutes.saturating_mul(60_000),
                offsets_retention_check_interval_ms: cfg.offsets.retention_check_interval_ms,
                offsets_commit_timeout_ms: cfg.offsets.commit_timeout_ms,
                initial_rebalance_delay_ms: cfg.group.initial_rebalance_delay_ms,
                min_session_timeout_ms: cfg.group.min_session_timeout_ms,
                max_session_timeout_ms: cfg.group.max_session_timeout_ms,
                consumer_session_timeout_ms: cfg.group.consumer_session_timeout_ms,
                consumer_heartbeat_interval_ms: cfg.group.consumer_heartbeat_interval_ms,
                consumer_max_size: cfg.group.consumer_max_size,
                ..strom_broker::GroupSettings::default()
            },
            transactions: cfg.transaction_settings(),
            log_open_files_max: log_open_files_max(fd_limit),
            consumer_lag_metrics: cfg.metrics.consumer_lag,
        },
        listener.clone(),
        client.clone(),
    )
    .await?;

    let mut endpoints = vec![Endpoint {
        name: "PLAINTEXT".into(),
        host: advertised.host.clone(),
        port: advertised.port as u32,
    }];
    if let Some(l) = &inter_broker {
        let a = advertised_as(l);
        endpoints.push(Endpoint { name: l.name.clone(), host: a.host, port: a.port as u32 });
    }
    if let Some(control) = control {
        endpoints.push(Endpoint {
            name: "CONTROLLER".into(),
            host: control.host.clone(),
            port: control.port as u32,
        });
    }
    let epoch =
        tokio::time::timeout(REGISTER_TIMEOUT, register(client, node, endpoints, cfg.rack.clone()))
            .await
            .context("broker registration timed out")??;
    broker.set_broker_epoch(epoch);
    health.update(|r| r.on_registered());
    broker.serve_when_caught_up(epoch);
    let mut serving = broker.serving();
    let serving_seen = tokio::spawn({
        let health = health.clone();
        async move {
            if serving.wait_for(|s| *s).await.is_ok() {
                health.update(|r| r.on_serving());
            }
        }
    });
    let heartbeats = tokio::spawn(heartbeat_loop(
        client.clone(),
        broker.reconciled_offset(),
        node,
        epoch,
        Duration::from_millis(cfg.broker.heartbeat_interval_ms),
        health.clone(),
    ));
    let broker = Arc::new(broker);
    let leader_updates = tokio::spawn({
        let broker = broker.clone();
        async move {
            loop {
                let id = *leader.borrow_and_update();
                broker.set_controller_id(id.map_or(-1, |id| id as i32));
                if leader.changed().await.is_err() {
                    return;
                }
            }
        }
    });
    tracing::info!(
        node_id = cfg.node_id,
        kafka = %broker.local_addr(),
        inter_broker = ?broker.inter_broker_addr(),
        "strom node ready"
    );
    // Ends by itself once the listeners serve; nothing to keep.
    drop(serving_seen);
    Ok(RunningBroker { broker, epoch, heartbeats, leader_updates })
}

async fn register(
    client: &Arc<dyn ControllerClient>,
    node: NodeId,
    endpoints: Vec<Endpoint>,
    rack: Option<String>,
) -> Result<strom_metadata::BrokerEpoch> {
    let incarnation = uuid::Uuid::new_v4().as_bytes().to_vec();
    let mut delay = Duration::from_millis(50);
    loop {
        let req = ControlRequest::RegisterBroker(RegisterBrokerRequest {
            broker_id: node,
            incarnation_id: incarnation.clone(),
            endpoints: endpoints.clone(),
            rack: rack.clone(),
        });
        match client.submit(req).await {
            Ok(ControlResponse::RegisterBroker(epoch)) => return Ok(epoch),
            Ok(other) => bail!("unexpected answer to broker registration: {other:?}"),
            Err(e) => {
                tracing::debug!(error = %e, "broker registration not accepted yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Reports liveness and the applied metadata offset (the replica manager's reconciled one, not
/// the image received: Kafka's rule); the controller unfences the broker once it has caught up
/// with its registration. Heartbeats go on while a reconcile runs, so a slow one keeps the
/// broker fenced but alive, and the first heartbeat after it unfences it.
async fn heartbeat_loop(
    client: Arc<dyn ControllerClient>,
    reconciled: tokio::sync::watch::Receiver<strom_metadata::MetadataOffset>,
    node: NodeId,
    epoch: strom_metadata::BrokerEpoch,
    every: Duration,
    health: Arc<NodeHealth>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let sent_ms = health.now_ms();
        let req = ControlRequest::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: node,
            broker_epoch: epoch,
            current_metadata_offset: *reconciled.borrow(),
            want_fence: false,
            want_shutdown: false,
        });
        // A heartbeat answered after a session has passed is worth nothing, and one stuck on
        // a controller that was cut off (a relay waits up to its own, much longer, bound)
        // would keep this broker silent until it is fenced: give up and send a fresh one,
        // which goes to whoever leads by then. Heartbeats are idempotent.
        match tokio::time::timeout(every * HEARTBEAT_WAIT_INTERVALS, client.submit(req)).await {
            Ok(Ok(ControlResponse::BrokerHeartbeat(reply))) => {
                health.update(|r| r.on_heartbeat(sent_ms, reply.is_fenced, reply.is_caught_up));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "broker heartbeat failed"),
            Err(_) => tracing::warn!(
                waited_ms = (every * HEARTBEAT_WAIT_INTERVALS).as_millis() as u64,
                "broker heartbeat got no answer in time; sending the next one"
            ),
        }
    }
}

/// How many heartbeat intervals one heartbeat may wait for its answer: the default session
/// (`BROKER_DEFAULTS`) is four intervals.
const HEARTBEAT_WAIT_INTERVALS: u32 = 4;

/// How long a controlled shutdown waits for the controller to move this broker's leaderships.
const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Kafka's controlled shutdown: heartbeat with `want_shutdown` until the controller says every
/// leadership has moved (or the wait runs out; then the session timeout does the rest).
async fn controlled_shutdown(
    client: &Arc<dyn ControllerClient>,
    reconciled: &tokio::sync::watch::Receiver<strom_metadata::MetadataOffset>,
    node: NodeId,
    epoch: strom_metadata::BrokerEpoch,
) {
    let deadline = tokio::time::Instant::now() + CONTROLLED_SHUTDOWN_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        let req = ControlRequest::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: node,
            broker_epoch: epoch,
            current_metadata_offset: *reconciled.borrow(),
            want_fence: false,
            want_shutdown: true,
        });
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, client.submit(req)).await {
            Ok(Ok(ControlResponse::BrokerHeartbeat(reply))) if reply.should_shutdown => {
                tracing::info!("controlled shutdown complete: this broker leads no partition");
                return;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "controlled shutdown heartbeat failed"),
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!("controlled shutdown did not complete in time; exiting anyway");
}

/// The exit status of a node whose metadata quorum stopped on a storage error or a panic
/// (EX_SOFTWARE): distinct from a configuration error (2), so a supervisor can tell them apart.
pub const EXIT_METADATA_FATAL: i32 = 70;

/// Ends the process when the controller's raft stops on its own. A voter whose raft has
/// stopped answers every metadata request "unavailable" and never votes again: exiting lets a
/// supervisor restart it, and the restart reopens the log (or reports why it cannot). The
/// data plane needs no goodbye: every acknowledged write is already fsynced.
/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exit_on_fatal(fatal: impl std::future::Future<Output = String>) {
    let cause = fatal.await;
    tracing::error!(%cause, exit_status = EXIT_METADATA_FATAL, "fatal: exiting");
    eprintln!("strom: fatal: {cause}; exiting with status {EXIT_METADATA_FATAL}");
    std::process::exit(EXIT_METADATA_FATAL);
}

/// The exit status of a node whose log directory failed (EX_IOERR).
pub const EXIT_LOG_DIR_FAILED: i32 = 74;

/// Ends the process when the log directory fails, as Kafka halts a broker whose every log
/// directory is offline: its partitions can no longer be written safely, and staying up would
/// keep its leaderships until the disk answers again. The controller fences the silent broker
/// and elects other replicas; the restart recovers from what was synced.
async fn exit_on_log_dir_failure(mut failure: tokio::sync::watch::Receiver<Option<String>>) {
    let Ok(cause) = failure.wait_for(Option::is_some).await.map(|c| c.clone()) else { return };
    let cause = cause.unwrap_or_default();
    tracing::error!(%cause, exit_status = EXIT_LOG_DIR_FAILED, "log directory failed: exiting");
    eprintln!(
        "strom: fatal: the log directory failed ({cause}); exiting with status \
         {EXIT_LOG_DIR_FAILED} (fix the disk, then start the node again: recovery keeps what was \
         synced)"
    );
    // Let the KAFKA_STORAGE_ERROR answers already on their way reach their clients.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::process::exit(EXIT_LOG_DIR_FAILED);
}

async fn stop_metadata(metadata: MetadataSide) -> Result<()> {
    match metadata {
        MetadataSide::Voter(controller) => {
            controller.shutdown().await.context("controller shutdown")?
        }
        MetadataSide::Follower { stop, task } => {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }
    Ok(())
}

/// The runtime of the metadata quorum and the control port: worker threads of its own, so
/// the quorum's deadlines do not wait behind the data plane's tasks (two: decoding a large
/// snapshot must not stall the raft core either). Shut down in the
/// background when dropped (a runtime may not be dropped from async code).
struct ControlRuntime {
    handle: tokio::runtime::Handle,
    rt: Option<tokio::runtime::Runtime>,
}

impl ControlRuntime {
    fn new() -> Result<ControlRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("strom-control")
            .build()
            .context("cannot start the control runtime")?;
        Ok(ControlRuntime { handle: rt.handle().clone(), rt: Some(rt) })
    }

    fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// A listener whose readiness this runtime's thread drives.
    fn listener(&self, l: std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
        let _entered = self.handle.enter();
        tokio::net::TcpListener::from_std(l)
    }
}

impl Drop for ControlRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// SIGTERM and SIGINT, the signals that stop a node cleanly.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_in_the_open_file_limit() {
        // Plenty of descriptors: what is configured.
        assert_eq!(connection_budget(1_048_576, 10_000, 1_000), (10_000, 1_000));
        // 20,000: a quarter is kept for files.
        assert_eq!(connection_budget(20_000, 100_000, 1_000), (14_000, 1_000));
        // The usual 1024: both listeners shrink, neither to zero.
        let (client, inter_broker) = connection_budget(1024, 10_000, 1_000);
        assert_eq!((client, inter_broker), (692, 76));
        assert!(client + inter_broker + 256 <= 1024);
        assert_eq!(connection_budget(4, 10, 10), (1, 1));
        assert_eq!(connection_budget(u64::MAX, 7, 0), (7, 1));
    }

    #[test]
    fn log_files_connections_and_the_rest_share_the_open_file_limit() {
        assert_eq!(log_open_files_max(1024), 128);
        assert_eq!(log_open_files_max(20_000), 2_500);
        assert_eq!(log_open_files_max(1_048_576), 131_072);
        assert_eq!(log_open_files_max(u64::MAX), 1 << 20);
        for limit in [1024, 4096, 20_000, 1_048_576] {
            let (client, inter_broker) = connection_budget(limit, usize::MAX, usize::MAX);
            let used = (client + inter_broker + log_open_files_max(limit)) as u64;
            assert!(used + FD_OTHERS_MIN <= limit, "{limit}: {used} leaves too little");
        }
    }

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let s = kafka_uuid_string(uuid::Uuid::from_bytes([0xff; 16]));
        assert_eq!(s.len(), 22);
        assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(kafka_uuid_string(uuid::Uuid::nil()), "AAAAAAAAAAAAAAAAAAAAAA");
    }
}
