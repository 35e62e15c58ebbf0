//! Wires a combined node together: data dir and meta.properties, the controller (single-voter
//! openraft quorum), the broker, broker registration and heartbeats, and signal handling.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use strom_broker::{Broker, BrokerConfig, LogDefaults};
use strom_controller::admin::{mount_admin, AdminServiceImpl, ImagePublisher, RaftClusterInfo};
use strom_controller::{Controller, ControllerConfig};
use strom_metadata::control::{
    BrokerHeartbeatRequest, ControlDefaults, ControlRequest, ControlResponse, RegisterBrokerRequest,
};
use strom_metadata::records::Endpoint;
use strom_metadata::{ControllerClient, MetadataListener, NodeId};

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
fn format_or_load(dir: &Path, node_id: i32) -> Result<String> {
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
    let cluster = kafka_uuid_string(uuid::Uuid::new_v4());
    let text = format!(
        "# written by strom on first start\nversion=1\ncluster.id={cluster}\nnode.id={node_id}\n"
    );
    let tmp = dir.join("meta.properties.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).ok();
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
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

pub async fn run(cfg: NodeConfig) -> Result<()> {
    let node = NodeId(cfg.node_id);
    let data_dir = cfg.log.dirs.clone();
    let cluster_id = format_or_load(&data_dir, cfg.node_id)?;
    let kafka = cfg.listener("PLAINTEXT")?.context("listeners: no PLAINTEXT listener")?;
    let control = cfg.listener("CONTROLLER")?.context("listeners: no CONTROLLER listener")?;
    let advertised = match &cfg.advertised_listeners {
        Some(a) => parse_listeners("advertised_listeners", a)?
            .into_iter()
            .find(|l| l.name == "PLAINTEXT")
            .unwrap_or_else(|| kafka.clone()),
        None => kafka.clone(),
    };
    let mut voters: BTreeMap<u64, String> =
        parse_voters(&cfg.controller.quorum_voters)?.into_iter().collect();
    if voters.is_empty() {
        voters.insert(cfg.node_id as u64, format!("{}:{}", control.host, control.port));
    }

    let listener = Broker::listener(node);
    // Bind the control port before the quorum starts: peers may call as soon as we vote.
    let control_addr = control.addr().context("listeners: CONTROLLER")?;
    let control_listener =
        tokio::net::TcpListener::bind(control_addr).await.with_context(|| {
            format!("cannot bind the control port {control_addr} (listeners: CONTROLLER)")
        })?;
    let (publisher, image_rx) =
        ImagePublisher::new(Some(listener.clone() as Arc<dyn MetadataListener>));
    let controller = Controller::start(
        ControllerConfig {
            node_id: cfg.node_id as u64,
            data_dir: data_dir.clone(),
            voters,
            defaults: ControlDefaults {
                num_partitions: cfg.num_partitions,
                default_replication_factor: cfg.default_replication_factor,
                session_timeout_ms: cfg.broker.session_timeout_ms,
                broker_heartbeat_interval_ms: cfg.broker.heartbeat_interval_ms,
            },
            snapshot_after_entries: cfg.controller.snapshot_after_entries,
            heartbeat_interval_ms: cfg.controller.raft_heartbeat_interval_ms,
            election_timeout_min_ms: cfg.controller.election_timeout_ms,
            election_timeout_max_ms: cfg.controller.election_timeout_ms * 2,
        },
        publisher,
    )
    .await
    .context("cannot start the controller")?;
    let client = controller.client();
    let admin = AdminServiceImpl::new(
        client.clone(),
        image_rx,
        Arc::new(RaftClusterInfo::new(cluster_id.clone(), controller.raft())),
    )
    .with_broker_defaults(BTreeMap::from([
        ("retention.ms".to_string(), cfg.log.retention_ms.to_string()),
        ("retention.bytes".to_string(), cfg.log.retention_bytes.to_string()),
        ("segment.bytes".to_string(), cfg.log.segment_bytes.to_string()),
        ("flush.messages".to_string(), cfg.log.flush_interval_messages.to_string()),
        ("message.timestamp.type".to_string(), cfg.log.message_timestamp_type.clone()),
        ("max.message.bytes".to_string(), cfg.message_max_bytes.to_string()),
        ("min.insync.replicas".to_string(), cfg.min_insync_replicas.to_string()),
    ]));
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(controller.raft_service());
    routes.add_service(controller.controller_service());
    let _health =
        mount_admin(&mut routes, admin).await.context("cannot set up the admin service")?;
    let control_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes.routes())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(control_listener)),
    );

    let broker = Broker::start(
        BrokerConfig {
            node_id: node,
            cluster_id,
            data_dir: data_dir.clone(),
            kafka_addr: kafka.addr().context("listeners: PLAINTEXT")?,
            advertised_host: advertised.host.clone(),
            advertised_port: advertised.port,
            rack: cfg.rack.clone(),
            socket_request_max_bytes: cfg.socket_request_max_bytes,
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
        },
        listener.clone(),
        client.clone(),
    )
    .await?;

    let endpoints = vec![
        Endpoint {
            name: "PLAINTEXT".into(),
            host: advertised.host.clone(),
            port: advertised.port as u32,
        },
        Endpoint {
            name: "CONTROLLER".into(),
            host: control.host.clone(),
            port: control.port as u32,
        },
    ];
    let epoch = tokio::time::timeout(
        REGISTER_TIMEOUT,
        register(&client, node, endpoints, cfg.rack.clone()),
    )
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
        let mut leader = controller.leader_watch();
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

    wait_for_signal().await?;
    tracing::info!("shutting down: moving leaderships away first (controlled shutdown)");
    heartbeats.abort();
    controlled_shutdown(&client, &listener, node, epoch).await;
    leader_updates.abort();
    // Wait for the aborted task to drop its handle on the broker.
    let _ = leader_updates.await;
    let broker = Arc::into_inner(broker).context("broker still in use at shutdown")?;
    broker.shutdown().await.context("broker shutdown")?;
    controller.shutdown().await.context("controller shutdown")?;
    control_server.abort();
    tracing::info!("stopped cleanly");
    Ok(())
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
