//! Wires a combined node together: data dir and meta.properties, the controller (single-voter
//! openraft quorum), the broker, broker registration and heartbeats, and signal handling.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use strom_broker::{Broker, BrokerConfig, LogDefaults};
use strom_controller::admin::{
    mount_admin, AdminServiceImpl, ClusterInfo, ImagePublisher, QuorumState, RaftClusterInfo,
};
use strom_controller::follower::follow_metadata_as;
use strom_controller::remote::RemoteControllerClient;
use strom_controller::{Controller, ControllerConfig};
use strom_metadata::control::{
    BrokerHeartbeatRequest, ControlDefaults, ControlRequest, ControlResponse, RegisterBrokerRequest,
};
use strom_metadata::records::Endpoint;
use strom_metadata::{ControllerClient, MetadataListener, NodeId};
use tokio::sync::watch;

use crate::config::{parse_listeners, parse_voters, NodeConfig};
use crate::StartArgs;

/// How long start-up waits for the node's own broker registration to commit.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

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
    cfg.validate()?;
    Ok(cfg)
}

/// Reads `meta.properties`, or writes it with a fresh cluster id on first start.
fn format_or_load(dir: &Path, node_id: i32, wanted: &Option<String>) -> Result<String> {
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
        return Ok(cluster.to_string());
    }
    let cluster = wanted.clone().unwrap_or_else(|| kafka_uuid_string(uuid::Uuid::new_v4()));
    let text = format!(
        "# written by strom on first start\nversion=1\ncluster.id={cluster}\nnode.id={node_id}\n"
    );
    // Synced and renamed into place with its directory synced: a node must never come back
    // from a crash with a half-written identity.
    strom_fsio::write_atomically(&path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(cluster_id = %cluster, dir = %dir.display(), "formatted data dir");
    Ok(cluster)
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

pub async fn run(cfg: NodeConfig) -> Result<()> {
    let node = NodeId(cfg.node_id);
    let is_controller = cfg.has_role("controller");
    let is_broker = cfg.has_role("broker");
    let data_dir = cfg.log.dirs.clone();
    let mut voters: BTreeMap<u64, String> =
        parse_voters(&cfg.controller.quorum_voters)?.into_iter().collect();
    let control = cfg.listener("CONTROLLER")?;
    if voters.is_empty() {
        let control = control.as_ref().context("listeners: no CONTROLLER listener")?;
        voters.insert(cfg.node_id as u64, format!("{}:{}", control.host, control.port));
    }
    let cluster_id = format_or_load(&data_dir, cfg.node_id, &cluster_id_for(&cfg, &voters))?;

    let listener = Broker::listener(node);
    // Bind the control port before the quorum starts: peers may call as soon as we vote.
    let control_listener = match &control {
        Some(control) => {
            let addr = control.addr().context("listeners: CONTROLLER")?;
            Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot bind the control port {addr} (listeners: CONTROLLER)")
            })?)
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
        let controller = Controller::start(
            ControllerConfig {
                node_id: cfg.node_id as u64,
                data_dir: data_dir.clone(),
                voters: voters.clone(),
                defaults: ControlDefaults {
                    num_partitions: cfg.num_partitions,
                    default_replication_factor: cfg.default_replication_factor,
                    session_timeout_ms: cfg.broker.session_timeout_ms,
                    broker_heartbeat_interval_ms: cfg.broker.heartbeat_interval_ms,
                },
                snapshot_after_entries: cfg.controller.snapshot_after_entries,
                heartbeat_interval_ms: cfg.controller.raft_heartbeat_interval_ms,
                election_timeout_min_ms: cfg.controller.election_timeout_ms,
                // A narrow range: openraft's leader lease is the maximum, and it delays
                // the vote that replaces a dead leader.
                election_timeout_max_ms: cfg.controller.election_timeout_ms * 3 / 2,
            },
            publisher,
        )
        .await
        .context("cannot start the controller")?;
        let client = controller.client();
        let leader = controller.leader_watch();
        let info = Arc::new(RaftClusterInfo::new(cluster_id.clone(), controller.raft()));
        (MetadataSide::Voter(controller), client, leader, info)
    } else {
        // A broker-only node follows the voters' metadata stream and sends its requests
        // to them over gRPC.
        let (leader_tx, leader_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let addrs: Vec<String> = voters.values().cloned().collect();
        let publisher = publisher as Arc<dyn MetadataListener>;
        let task = tokio::spawn(async move {
            if let Err(e) = follow_metadata_as(node.0, addrs, publisher, leader_tx, stop_rx).await {
                tracing::error!(error = %e, "metadata follower stopped");
            }
        });
        let client: Arc<dyn ControllerClient> = Arc::new(
            RemoteControllerClient::new(voters.clone())
                .context("controller.quorum_voters")?
                .with_leader(leader_rx.clone()),
        );
        let info = Arc::new(FollowerClusterInfo {
            cluster_id: cluster_id.clone(),
            node_id: cfg.node_id as u64,
            voters: voters.iter().map(|(k, v)| (*k, v.clone())).collect(),
            leader: leader_rx.clone(),
            image: image_rx.clone(),
        });
        (MetadataSide::Follower { stop, task }, client, leader_rx, info)
    };

    if let MetadataSide::Voter(controller) = &metadata {
        tokio::spawn(exit_on_fatal(controller.fatal()));
    }

    // Groups are answered by this node's broker, which starts after the control port.
    let groups = Arc::new(LateGroupAdmin::default());
    let control_server = match control_listener {
        Some(control_listener) => {
            let mut admin = AdminServiceImpl::new(client.clone(), image_rx, cluster_info)
                .with_broker_defaults(BTreeMap::from([
                    ("retention.ms".to_string(), cfg.log.retention_ms.to_string()),
                    ("retention.bytes".to_string(), cfg.log.retention_bytes.to_string()),
                    ("segment.bytes".to_string(), cfg.log.segment_bytes.to_string()),
                    ("flush.messages".to_string(), cfg.log.flush_interval_messages.to_string()),
                    ("message.timestamp.type".to_string(), cfg.log.message_timestamp_type.clone()),
                    ("max.message.bytes".to_string(), cfg.message_max_bytes.to_string()),
                    ("min.insync.replicas".to_string(), cfg.min_insync_replicas.to_string()),
                ]));
            if is_broker {
                admin = admin.with_groups(groups.clone());
            }
            let mut routes = tonic::service::RoutesBuilder::default();
            if let MetadataSide::Voter(controller) = &metadata {
                routes.add_service(controller.raft_service());
                routes.add_service(controller.controller_service());
            }
            let _health =
                mount_admin(&mut routes, admin).await.context("cannot set up the admin service")?;
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_routes(routes.routes())
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(
                        control_listener,
                    )),
            ))
        }
        None => None,
    };

    let running = if is_broker {
        let running =
            start_broker(&cfg, node, cluster_id, &listener, &client, control.as_ref(), leader_rx)
                .await?;
        let _ = groups.0.set(running.broker.group_admin());
        Some(running)
    } else {
        tracing::info!(node_id = cfg.node_id, "strom controller ready");
        None
    };

    wait_for_signal().await?;
    if let Some(running) = running {
        tracing::info!("shutting down: moving leaderships away first (controlled shutdown)");
        running.stop(&client, &listener, node).await?;
    } else {
        tracing::info!("shutting down");
    }
    match metadata {
        MetadataSide::Voter(controller) => {
            controller.shutdown().await.context("controller shutdown")?
        }
        MetadataSide::Follower { stop, task } => {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }
    if let Some(server) = control_server {
        server.abort();
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The cluster id a node formats its data dir with: the configured one; else, for a node that
/// is one of several (more voters, or a broker-only or controller-only node), one derived from
/// the voter list, so every node of the cluster agrees without coordination; else random.
fn cluster_id_for(cfg: &NodeConfig, voters: &BTreeMap<u64, String>) -> Option<String> {
    if let Some(id) = &cfg.cluster_id {
        return Some(id.clone());
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

/// The admin API's view of consumer groups, bound once this node's broker has started.
#[derive(Default)]
struct LateGroupAdmin(std::sync::OnceLock<Arc<strom_broker::BrokerGroupAdmin>>);

impl strom_metadata::GroupAdmin for LateGroupAdmin {
    fn list_groups(
        &self,
    ) -> strom_metadata::BoxFuture<Result<strom_metadata::GroupListings, String>> {
        match self.0.get() {
            Some(admin) => admin.list_groups(),
            None => Box::pin(async { Err("this node's broker is still starting".to_owned()) }),
        }
    }

    fn describe_group(
        &self,
        group_id: String,
    ) -> strom_metadata::BoxFuture<Result<strom_metadata::GroupDescription, String>> {
        match self.0.get() {
            Some(admin) => admin.describe_group(group_id),
            None => Box::pin(async { Err("this node's broker is still starting".to_owned()) }),
        }
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
    async fn stop(
        self,
        client: &Arc<dyn ControllerClient>,
        listener: &Arc<strom_broker::ImageListener>,
        node: NodeId,
    ) -> Result<()> {
        self.heartbeats.abort();
        controlled_shutdown(client, listener, node, self.epoch).await;
        self.leader_updates.abort();
        // Wait for the aborted task to drop its handle on the broker.
        let _ = self.leader_updates.await;
        let broker = Arc::into_inner(self.broker).context("broker still in use at shutdown")?;
        broker.shutdown().await.context("broker shutdown")
    }
}

async fn start_broker(
    cfg: &NodeConfig,
    node: NodeId,
    cluster_id: String,
    listener: &Arc<strom_broker::ImageListener>,
    client: &Arc<dyn ControllerClient>,
    control: Option<&crate::config::Listener>,
    mut leader: watch::Receiver<Option<u64>>,
) -> Result<RunningBroker> {
    let kafka = cfg.listener("PLAINTEXT")?.context("listeners: no PLAINTEXT listener")?;
    let advertised = match &cfg.advertised_listeners {
        Some(a) => parse_listeners("advertised_listeners", a)?
            .into_iter()
            .find(|l| l.name == "PLAINTEXT")
            .unwrap_or_else(|| kafka.clone()),
        None => kafka.clone(),
    };
    let broker = Broker::start(
        BrokerConfig {
            node_id: node,
            cluster_id,
            data_dir: cfg.log.dirs.clone(),
            kafka_addr: kafka.addr().context("listeners: PLAINTEXT")?,
            advertised_host: advertised.host.clone(),
            advertised_port: advertised.port,
            rack: cfg.rack.clone(),
            socket_request_max_bytes: cfg.socket_request_max_bytes,
            fetch_max_bytes: cfg.fetch_max_bytes,
            num_partitions: cfg.num_partitions,
            default_replication_factor: cfg.default_replication_factor,
            auto_create_topics_enable: cfg.auto_create_topics_enable,
            retention_check_interval_ms: cfg.log.retention_check_interval_ms,
            replica_lag_time_max_ms: cfg.replica_lag_time_max_ms,
            log: LogDefaults {
                segment_bytes: cfg.log.segment_bytes,
                retention_ms: cfg.log.retention_ms,
                retention_bytes: cfg.log.retention_bytes,
                flush_messages: cfg.log.flush_interval_messages,
                message_timestamp_type: cfg.log.message_timestamp_type.clone(),
                index_interval_bytes: cfg.log.index_interval_bytes,
                message_max_bytes: cfg.message_max_bytes,
                min_insync_replicas: cfg.min_insync_replicas,
            },
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
                ..strom_broker::GroupSettings::default()
            },
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
    let heartbeats = tokio::spawn(heartbeat_loop(
        client.clone(),
        listener.clone(),
        node,
        epoch,
        Duration::from_millis(cfg.broker.heartbeat_interval_ms),
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
    tracing::info!(node_id = cfg.node_id, kafka = %broker.local_addr(), "strom node ready");
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

/// Reports liveness and the applied metadata offset; the controller unfences the broker once
/// it has caught up.
async fn heartbeat_loop(
    client: Arc<dyn ControllerClient>,
    listener: Arc<strom_broker::ImageListener>,
    node: NodeId,
    epoch: strom_metadata::BrokerEpoch,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let req = ControlRequest::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: node,
            broker_epoch: epoch,
            current_metadata_offset: listener.image().offset,
            want_fence: false,
            want_shutdown: false,
        });
        if let Err(e) = client.submit(req).await {
            tracing::warn!(error = %e, "broker heartbeat failed");
        }
    }
}

/// How long a controlled shutdown waits for the controller to move this broker's leaderships.
const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Kafka's controlled shutdown: heartbeat with `want_shutdown` until the controller says every
/// leadership has moved (or the wait runs out; then the session timeout does the rest).
async fn controlled_shutdown(
    client: &Arc<dyn ControllerClient>,
    listener: &Arc<strom_broker::ImageListener>,
    node: NodeId,
    epoch: strom_metadata::BrokerEpoch,
) {
    let deadline = tokio::time::Instant::now() + CONTROLLED_SHUTDOWN_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        let req = ControlRequest::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: node,
            broker_epoch: epoch,
            current_metadata_offset: listener.image().offset,
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
async fn exit_on_fatal(fatal: impl std::future::Future<Output = String>) {
    let cause = fatal.await;
    tracing::error!(%cause, exit_status = EXIT_METADATA_FATAL, "fatal: exiting");
    eprintln!("strom: fatal: {cause}; exiting with status {EXIT_METADATA_FATAL}");
    std::process::exit(EXIT_METADATA_FATAL);
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let s = kafka_uuid_string(uuid::Uuid::from_bytes([0xff; 16]));
        assert_eq!(s.len(), 22);
        assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(kafka_uuid_string(uuid::Uuid::nil()), "AAAAAAAAAAAAAAAAAAAAAA");
    }
}
