//! The node's TOML configuration: Kafka's property names in snake_case, every field defaulted,
//! and errors that name the key and the fix.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use strom_metadata::config::{
    BrokerDefaults, ConfigSource, MessageTimestampType, TransactionDefaults, BROKER_DEFAULTS,
    TRANSACTION_DEFAULTS,
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// `node.id`: this node's id, unique in the cluster (a broker's and a voter's id).
    pub node_id: i32,
    /// The cluster id written to `meta.properties` on first start (Kafka's `--cluster-id` of
    /// `kafka-storage format`). Unset: derived from `controller.quorum_voters` when there are
    /// several voters, so every node agrees, else random.
    pub cluster_id: Option<String>,
    /// `process.roles`: "broker", "controller", or both (a combined node).
    pub process_roles: Vec<String>,
    /// `listeners`: `PLAINTEXT://host:port` for Kafka, `CONTROLLER://host:port` for gRPC.
    pub listeners: String,
    /// `advertised.listeners`: what clients are told; defaults to the PLAINTEXT listener.
    pub advertised_listeners: Option<String>,
    /// The HTTP endpoint's `host:port`: `/metrics` (Prometheus), `/health` and `/ready`; empty
    /// for none. strom's own (Kafka has no such listener; 9644 is Redpanda's admin port).
    pub metrics_listener: String,
    /// `broker.rack`: the rack or zone of this node; a topic's replicas are spread across racks.
    pub rack: Option<String>,
    /// `num.partitions`: partitions of a topic created without a count (and of auto-created
    /// topics).
    pub num_partitions: i32,
    /// `default.replication.factor`: replicas per partition of a topic created without one.
    pub default_replication_factor: i16,
    /// `min.insync.replicas`: in-sync replicas an acks=all write needs (topics may override).
    pub min_insync_replicas: i32,
    /// `auto.create.topics.enable`: Metadata and Produce for an unknown topic create it.
    pub auto_create_topics_enable: bool,
    /// `message.max.bytes`: the largest record batch a topic accepts (topics may override).
    pub message_max_bytes: u32,
    /// `fetch.max.bytes`: the most record bytes in one Fetch response (KIP-74).
    pub fetch_max_bytes: usize,
    /// `max.incremental.fetch.session.cache.slots`: the incremental fetch sessions (KIP-227)
    /// a broker keeps for its followers and consumers.
    pub max_incremental_fetch_session_cache_slots: usize,
    /// `socket.request.max.bytes`: a larger request closes its connection.
    pub socket_request_max_bytes: usize,
    /// `replica.lag.time.max.ms`: a follower that has not caught up for this long leaves the
    /// ISR.
    pub replica_lag_time_max_ms: u64,
    /// `producer.id.expiration.ms`: an idempotent producer's state is forgotten after this
    /// long without a write.
    pub producer_id_expiration_ms: u64,
    /// `transactional.id.expiration.ms`: the transaction coordinator forgets an id that has
    /// had no transaction and no change for this long.
    pub transactional_id_expiration_ms: i64,
    /// `connections.max.idle.ms`: a Kafka connection with nothing in flight that sends
    /// nothing for this long is closed.
    pub connections_max_idle_ms: u64,
    /// `max.connections`: open connections on the client listener (the inter-broker listener
    /// has its own limit), bounded by the open-file limit.
    pub max_connections: usize,
    /// `max.connections.per.ip`: open connections from one address on the client listener.
    pub max_connections_per_ip: usize,
    /// `max.connections.per.ip.overrides`: per-address limits, `ip:limit,...`.
    pub max_connections_per_ip_overrides: String,
    /// `inter.broker.listener.name`: the listener in `listeners` that followers fetch from,
    /// with its own accept loop and limits. Unset: the PLAINTEXT (client) listener.
    pub inter_broker_listener_name: Option<String>,
    /// Kafka's `listener.name.<listener>.*` keys.
    pub listener: ListenerSection,
    pub controller: ControllerSection,
    pub broker: BrokerSection,
    pub log: LogSection,
    pub offsets: OffsetsSection,
    pub group: GroupSection,
    pub transaction: TransactionSection,
    pub metrics: MetricsSection,
}

/// What `/metrics` shows beyond its defaults (strom's own keys; Kafka has none).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Export `strom_consumer_group_lag{group,topic,partition}`: high watermark minus
    /// committed offset, for the groups this broker coordinates and the partitions it has a
    /// replica of, at most 10,000 series a scrape (the rest counted in
    /// `strom_consumer_group_lag_omitted`). Off by default: one series per committed partition.
    pub consumer_lag: bool,
}

/// Kafka's `listener.name.<listener>.*` keys: `listener.name.replication.max_connections`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerSection {
    /// Per listener, by its name in `listeners` (any case).
    pub name: BTreeMap<String, PerListenerSection>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerListenerSection {
    /// `listener.name.<listener>.max.connections`: open connections on that listener.
    pub max_connections: Option<usize>,
}

/// `metrics_listener` when unset: beside the default Kafka (9092) and control (9093) ports.
pub const METRICS_LISTENER_DEFAULT: &str = "127.0.0.1:9644";

/// The longest `connections.max.idle.ms`: a year (the deadline arithmetic must not overflow).
pub const CONNECTIONS_MAX_IDLE_MS_MAX: u64 = 365 * 24 * 3600 * 1000;

/// `listener.name.<inter-broker listener>.max.connections` when unset: enough for the
/// fetchers and admin calls of a large cluster, small enough to leave the fds to clients.
pub const INTER_BROKER_MAX_CONNECTIONS_DEFAULT: usize = 1_000;

/// Kafka's `offsets.*` keys: the `__consumer_offsets` topic and committed-offset retention.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffsetsSection {
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` (at its creation).
    pub topic_num_partitions: i32,
    /// `offsets.topic.replication.factor`: replicas of `__consumer_offsets` (capped by the
    /// live brokers at creation).
    pub topic_replication_factor: i16,
    /// `offsets.topic.segment.bytes`: segment size of `__consumer_offsets`.
    pub topic_segment_bytes: u64,
    /// `offsets.retention.minutes`: committed offsets of an empty group are kept this long.
    pub retention_minutes: i64,
    /// `offsets.retention.check.interval.ms`: how often expired offsets are removed.
    pub retention_check_interval_ms: u64,
    /// `offsets.commit.timeout.ms`: an offset commit waits this long for its replicas.
    pub commit_timeout_ms: u64,
}

/// Kafka's `group.*` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSection {
    /// `group.initial.rebalance.delay.ms`: an empty group's first rebalance waits this long
    /// for more members.
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms`: the shortest session timeout a member may ask.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`: the longest session timeout a member may ask.
    pub max_session_timeout_ms: i32,
    /// `group.consumer.session.timeout.ms`: a consumer-protocol (KIP-848) member that sends no
    /// heartbeat for this long leaves the group.
    pub consumer_session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms`: how often consumer-protocol members heartbeat.
    pub consumer_heartbeat_interval_ms: i32,
    /// `group.consumer.max.size`: the most members one consumer-protocol group may hold.
    pub consumer_max_size: usize,
}

/// Kafka's `transaction.*` keys: the `__transaction_state` topic (its `state_log_*` settings
/// apply when the topic is created, as in Kafka) and the transaction coordinator's timeouts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionSection {
    /// `transaction.state.log.num.partitions`: partitions of `__transaction_state`.
    pub state_log_num_partitions: i32,
    /// `transaction.state.log.replication.factor`: replicas of `__transaction_state` (capped
    /// by the live brokers at creation).
    pub state_log_replication_factor: i16,
    /// `transaction.state.log.segment.bytes`: segment size of `__transaction_state`.
    pub state_log_segment_bytes: u64,
    /// `transaction.state.log.min.isr`: `min.insync.replicas` of `__transaction_state`
    /// (capped by the replication factor at creation).
    pub state_log_min_isr: i32,
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask.
    pub max_timeout_ms: i32,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: how often transactions
    /// past their timeout are aborted.
    pub abort_timed_out_transaction_cleanup_interval_ms: u64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`: how often expired
    /// transactional ids are removed.
    pub remove_expired_transaction_cleanup_interval_ms: u64,
}

impl Default for TransactionSection {
    fn default() -> Self {
        let d = TRANSACTION_DEFAULTS;
        TransactionSection {
            state_log_num_partitions: d.transaction_state_log_num_partitions,
            state_log_replication_factor: d.transaction_state_log_replication_factor,
            state_log_segment_bytes: d.transaction_state_log_segment_bytes,
            state_log_min_isr: d.transaction_state_log_min_isr,
            max_timeout_ms: d.transaction_max_timeout_ms,
            abort_timed_out_transaction_cleanup_interval_ms: d
                .transaction_abort_timed_out_transaction_cleanup_interval_ms,
            remove_expired_transaction_cleanup_interval_ms: d
                .transaction_remove_expired_transaction_cleanup_interval_ms,
        }
    }
}

impl Default for OffsetsSection {
    fn default() -> Self {
        let d = strom_broker::GroupSettings::default();
        OffsetsSection {
            topic_num_partitions: d.offsets_topic_num_partitions,
            topic_replication_factor: d.offsets_topic_replication_factor,
            topic_segment_bytes: d.offsets_topic_segment_bytes,
            retention_minutes: d.offsets_retention_ms / 60_000,
            retention_check_interval_ms: d.offsets_retention_check_interval_ms,
            commit_timeout_ms: d.offsets_commit_timeout_ms,
        }
    }
}

impl Default for GroupSection {
    fn default() -> Self {
        let d = strom_broker::GroupSettings::default();
        GroupSection {
            initial_rebalance_delay_ms: d.initial_rebalance_delay_ms,
            min_session_timeout_ms: d.min_session_timeout_ms,
            max_session_timeout_ms: d.max_session_timeout_ms,
            consumer_session_timeout_ms: d.consumer_session_timeout_ms,
            consumer_heartbeat_interval_ms: d.consumer_heartbeat_interval_ms,
            consumer_max_size: d.consumer_max_size,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerSection {
    /// `controller.quorum.voters`: `id@host:port,...`; empty means this node alone (or, with
    /// bootstrap servers, joining). The quorum a fresh metadata log starts with: once the log
    /// holds a membership, that is the quorum (voters are added and removed at run time).
    pub quorum_voters: String,
    /// `controller.quorum.bootstrap.servers`: `host:port,...` of controllers to reach the
    /// quorum through (KIP-853). A controller with no `quorum_voters` joins the quorum as an
    /// observer, to be added as a voter (`strom cluster add-voter`); a broker-only node follows
    /// the metadata log from them.
    pub quorum_bootstrap_servers: String,
    /// `controller.quorum.election.timeout.ms`: a voter that hears no leader for this long
    /// (randomised up to 1.5 times) starts an election.
    pub election_timeout_ms: u64,
    /// The active controller's raft heartbeat interval, also the bound on one replication
    /// request to a voter (strom's own key).
    pub raft_heartbeat_interval_ms: u64,
    /// Metadata log entries between snapshots.
    pub snapshot_after_entries: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// `broker.heartbeat.interval.ms`: how often a broker heartbeats to the active controller.
    pub heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms`: a broker silent for this long is fenced and its
    /// leaderships move to other in-sync replicas.
    pub session_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `log.dirs`: the data directory (one): partition logs, the metadata log and
    /// `meta.properties`.
    pub dirs: PathBuf,
    /// `log.segment.bytes`: size at which a segment rolls (topic key `segment.bytes`).
    pub segment_bytes: u64,
    /// `log.retention.ms`: longest time a segment is kept; -1 unlimited (topic key
    /// `retention.ms`).
    pub retention_ms: i64,
    /// `log.retention.bytes`: largest size of a partition's log; -1 unlimited (topic key
    /// `retention.bytes`).
    pub retention_bytes: i64,
    /// `log.retention.check.interval.ms`: how often retention is applied.
    pub retention_check_interval_ms: u64,
    /// `log.flush.interval.messages`: 1 = acknowledge only fsynced data (group commit).
    pub flush_interval_messages: i64,
    /// `log.message.timestamp.type`: `CreateTime` or `LogAppendTime` (topic key
    /// `message.timestamp.type`).
    pub message_timestamp_type: String,
    /// `log.index.interval.bytes`: bytes between offset index entries (topic key
    /// `index.interval.bytes`).
    pub index_interval_bytes: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            cluster_id: None,
            process_roles: vec!["broker".into(), "controller".into()],
            listeners: "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093".into(),
            advertised_listeners: None,
            metrics_listener: METRICS_LISTENER_DEFAULT.into(),
            rack: None,
            num_partitions: BROKER_DEFAULTS.num_partitions,
            default_replication_factor: BROKER_DEFAULTS.default_replication_factor,
            min_insync_replicas: BROKER_DEFAULTS.min_insync_replicas,
            auto_create_topics_enable: true,
            message_max_bytes: BROKER_DEFAULTS.message_max_bytes,
            fetch_max_bytes: strom_broker::FETCH_MAX_BYTES_DEFAULT,
            max_incremental_fetch_session_cache_slots:
                strom_broker::FETCH_SESSION_CACHE_SLOTS_DEFAULT,
            socket_request_max_bytes: 104_857_600,
            replica_lag_time_max_ms: 30_000,
            producer_id_expiration_ms: BROKER_DEFAULTS.producer_id_expiration_ms,
            transactional_id_expiration_ms: TRANSACTION_DEFAULTS.transactional_id_expiration_ms,
            connections_max_idle_ms: strom_broker::ConnectionLimits::IDLE_MS_DEFAULT,
            max_connections: strom_broker::ConnectionLimits::MAX_CONNECTIONS_DEFAULT,
            max_connections_per_ip: i32::MAX as usize,
            max_connections_per_ip_overrides: String::new(),
            inter_broker_listener_name: None,
            listener: ListenerSection::default(),
            controller: ControllerSection::default(),
            broker: BrokerSection::default(),
            log: LogSection::default(),
            offsets: OffsetsSection::default(),
            group: GroupSection::default(),
            transaction: TransactionSection::default(),
            metrics: MetricsSection::default(),
        }
    }
}

impl Default for ControllerSection {
    fn default() -> Self {
        ControllerSection {
            quorum_voters: String::new(),
            quorum_bootstrap_servers: String::new(),
            election_timeout_ms: BROKER_DEFAULTS.controller_election_timeout_ms,
            raft_heartbeat_interval_ms: BROKER_DEFAULTS.controller_raft_heartbeat_interval_ms,
            snapshot_after_entries: BROKER_DEFAULTS.controller_snapshot_after_entries,
        }
    }
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            heartbeat_interval_ms: BROKER_DEFAULTS.broker_heartbeat_interval_ms,
            session_timeout_ms: BROKER_DEFAULTS.broker_session_timeout_ms,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            dirs: PathBuf::from("./strom-data"),
            segment_bytes: BROKER_DEFAULTS.log_segment_bytes,
            retention_ms: BROKER_DEFAULTS.log_retention_ms,
            retention_bytes: BROKER_DEFAULTS.log_retention_bytes,
            retention_check_interval_ms: BROKER_DEFAULTS.log_retention_check_interval_ms,
            flush_interval_messages: BROKER_DEFAULTS.log_flush_interval_messages,
            message_timestamp_type: BROKER_DEFAULTS.log_message_timestamp_type.name().into(),
            index_interval_bytes: BROKER_DEFAULTS.log_index_interval_bytes,
        }
    }
}

/// `cfg` as dotted Kafka-style keys and their values (lists comma-separated).
fn flat_entries(cfg: &NodeConfig) -> BTreeMap<String, String> {
    // Every field is a number, string, bool, path, list or table: it serialises.
    toml::Value::try_from(cfg).map(|value| flatten(&value)).unwrap_or_default()
}

/// A TOML document as dotted keys (`_` as `.`) and their values, lists comma-separated.
fn flatten(value: &toml::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
        let text = match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    let key = key.replace('_', ".");
                    let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                    walk(&name, value, out);
                }
                return;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        out.insert(prefix.to_string(), text);
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// A parsed `NAME://host:port` listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl Listener {
    pub fn addr(&self) -> Result<SocketAddr> {
        use std::net::ToSocketAddrs;
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve listener host '{}'", self.host))?
            .next()
            .with_context(|| format!("listener host '{}' resolves to nothing", self.host))
    }
}

pub fn parse_listeners(key: &str, text: &str) -> Result<Vec<Listener>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, rest)) = item.split_once("://") else {
            bail!("{key}: '{item}' is not NAME://host:port (e.g. PLAINTEXT://127.0.0.1:9092)");
        };
        let Some((host, port)) = rest.rsplit_once(':') else {
            bail!("{key}: '{item}' has no port (e.g. PLAINTEXT://127.0.0.1:9092)");
        };
        let port: u16 = port
            .parse()
            .map_err(|_| anyhow::anyhow!("{key}: '{item}' has an invalid port '{port}'"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        out.push(Listener { name: name.to_ascii_uppercase(), host, port });
    }
    Ok(out)
}

/// `max.connections.per.ip.overrides`: `ip:limit,...` (IPv6 in brackets or bare).
pub fn parse_ip_overrides(key: &str, text: &str) -> Result<HashMap<IpAddr, usize>> {
    let mut out = HashMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((ip, limit)) = item.rsplit_once(':') else {
            bail!("{key}: '{item}' is not ip:limit (e.g. 127.0.0.1:100)");
        };
        let ip: IpAddr = ip.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| {
            anyhow::anyhow!("{key}: '{item}' does not start with an IP address (host names are not resolved)")
        })?;
        let limit: usize = limit
            .parse()
            .map_err(|_| anyhow::anyhow!("{key}: '{item}' has an invalid limit '{limit}'"))?;
        out.insert(ip, limit);
    }
    Ok(out)
}

/// `id@host:port,...` → (id, "host:port").
pub fn parse_voters(text: &str) -> Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((id, addr)) = item.split_once('@') else {
            bail!("controller.quorum_voters: '{item}' is not id@host:port (e.g. 1@127.0.0.1:9093)");
        };
        let id: u64 = id.parse().map_err(|_| {
            anyhow::anyhow!("controller.quorum_voters: '{item}' has a non-numeric node id")
        })?;
        if !addr.contains(':') {
            bail!("controller.quorum_voters: '{item}' has no port");
        }
        out.push((id, addr.to_string()));
    }
    Ok(out)
}

/// `host:port,...` → the addresses (`controller.quorum_bootstrap_servers`).
pub fn parse_bootstrap_servers(text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = item.rsplit_once(':').map(|(_, p)| p);
        if port.is_none_or(|p| p.parse::<u16>().is_err()) {
            bail!(
                "controller.quorum_bootstrap_servers: '{item}' is not host:port of a \
                 controller's CONTROLLER listener (e.g. 127.0.0.1:9093)"
            );
        }
        out.push(item.to_string());
    }
    Ok(out)
}

impl NodeConfig {
    pub fn load(path: &std::path::Path) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("config file {}: {}", path.display(), e.to_string().trim_end())
        })
    }

    /// The address of the HTTP endpoint (`metrics_listener`), if there is one.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>> {
        use std::net::ToSocketAddrs;
        let text = self.metrics_listener.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let addr = text
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .with_context(|| {
                format!("metrics_listener = {text:?}: not host:port (e.g. {METRICS_LISTENER_DEFAULT}); empty for none")
            })?;
        Ok(Some(addr))
    }

    pub fn listener(&self, name: &str) -> Result<Option<Listener>> {
        Ok(parse_listeners("listeners", &self.listeners)?.into_iter().find(|l| l.name == name))
    }

    pub fn set_listener(&mut self, name: &str, addr: &str) -> Result<()> {
        let mut all = parse_listeners("listeners", &self.listeners)?;
        let fresh = parse_listeners("listeners", &format!("{name}://{addr}"))?.remove(0);
        match all.iter_mut().find(|l| l.name == name) {
            Some(l) => *l = fresh,
            None => all.push(fresh),
        }
        self.listeners = all
            .iter()
            .map(|l| format!("{}://{}:{}", l.name, l.host, l.port))
            .collect::<Vec<_>>()
            .join(",");
        Ok(())
    }

    /// The inter-broker listener, when it is not the client listener.
    pub fn inter_broker_listener(&self) -> Result<Option<Listener>> {
        match self.inter_broker_listener_name.as_deref().map(str::to_ascii_uppercase) {
            None => Ok(None),
            Some(name) if name == "PLAINTEXT" => Ok(None),
            Some(name) => Ok(Some(self.listener(&name)?.with_context(|| {
                format!(
                    "inter_broker_listener_name = {name:?}: listeners has no {name}://host:port"
                )
            })?)),
        }
    }

    /// `listener.name.<name>.max_connections`, if set.
    pub fn listener_max_connections(&self, name: &str) -> Option<usize> {
        self.listener
            .name
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, l)| l.max_connections)
    }

    /// The settings the controller and the broker share, as configured.
    pub fn broker_defaults(&self) -> BrokerDefaults {
        BrokerDefaults {
            num_partitions: self.num_partitions,
            default_replication_factor: self.default_replication_factor,
            min_insync_replicas: self.min_insync_replicas,
            message_max_bytes: self.message_max_bytes,
            broker_heartbeat_interval_ms: self.broker.heartbeat_interval_ms,
            broker_session_timeout_ms: self.broker.session_timeout_ms,
            controller_election_timeout_ms: self.controller.election_timeout_ms,
            controller_raft_heartbeat_interval_ms: self.controller.raft_heartbeat_interval_ms,
            controller_snapshot_after_entries: self.controller.snapshot_after_entries,
            log_segment_bytes: self.log.segment_bytes,
            log_retention_ms: self.log.retention_ms,
            log_retention_bytes: self.log.retention_bytes,
            log_retention_check_interval_ms: self.log.retention_check_interval_ms,
            log_flush_interval_messages: self.log.flush_interval_messages,
            // `validate` refuses any other spelling.
            log_message_timestamp_type: MessageTimestampType::parse(
                &self.log.message_timestamp_type,
            )
            .unwrap_or(BROKER_DEFAULTS.log_message_timestamp_type),
            log_index_interval_bytes: self.log.index_interval_bytes,
            producer_id_expiration_ms: self.producer_id_expiration_ms,
        }
    }

    /// The transaction coordinator's settings, as configured.
    pub fn transaction_settings(&self) -> TransactionDefaults {
        let t = &self.transaction;
        TransactionDefaults {
            transaction_state_log_num_partitions: t.state_log_num_partitions,
            transaction_state_log_replication_factor: t.state_log_replication_factor,
            transaction_state_log_segment_bytes: t.state_log_segment_bytes,
            transaction_state_log_min_isr: t.state_log_min_isr,
            transaction_max_timeout_ms: t.max_timeout_ms,
            transactional_id_expiration_ms: self.transactional_id_expiration_ms,
            transaction_abort_timed_out_transaction_cleanup_interval_ms: t
                .abort_timed_out_transaction_cleanup_interval_ms,
            transaction_remove_expired_transaction_cleanup_interval_ms: t
                .remove_expired_transaction_cleanup_interval_ms,
        }
    }

    /// Every setting with its value, named as Kafka names it (the TOML key with its section,
    /// `_` as `.`: `log.segment.bytes`), sorted: what DescribeConfigs of the broker shows.
    /// A value other than the default is `StaticBroker`; unset keys (`advertised_listeners`
    /// when unset) are left out.
    pub fn kafka_entries(&self) -> Vec<(String, String, ConfigSource)> {
        let defaults: BTreeMap<String, String> = flat_entries(&NodeConfig::default());
        flat_entries(self)
            .into_iter()
            .map(|(key, value)| {
                let source = if defaults.get(&key) == Some(&value) {
                    ConfigSource::Default
                } else {
                    ConfigSource::StaticBroker
                };
                (key, value, source)
            })
            .collect()
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.process_roles.iter().any(|r| r == role)
    }

    /// Checks every value that deserialisation cannot; each error names the key and the fix.
    pub fn validate(&self) -> Result<()> {
        if self.node_id < 0 {
            bail!("node_id = {}: must be 0 or greater", self.node_id);
        }
        if self.process_roles.is_empty() {
            bail!("process_roles is empty: use [\"broker\", \"controller\"] (or one of them)");
        }
        for r in &self.process_roles {
            if r != "broker" && r != "controller" {
                bail!("process_roles: unknown role '{r}'; use \"broker\" and/or \"controller\"");
            }
        }
        let listeners = parse_listeners("listeners", &self.listeners)?;
        if self.has_role("broker") && !listeners.iter().any(|l| l.name == "PLAINTEXT") {
            bail!("listeners: no PLAINTEXT://host:port listener for Kafka clients (a broker needs one)");
        }
        if self.has_role("controller") && !listeners.iter().any(|l| l.name == "CONTROLLER") {
            bail!("listeners: no CONTROLLER://host:port listener for the control port (a controller needs one)");
        }
        if let Some(name) = &self.inter_broker_listener_name {
            if name.eq_ignore_ascii_case("CONTROLLER") {
                bail!("inter_broker_listener_name = {name:?}: the CONTROLLER listener serves gRPC, not Kafka; name another listener (e.g. REPLICATION)");
            }
            self.inter_broker_listener()?;
        }
        for (name, l) in &self.listener.name {
            if !listeners.iter().any(|x| x.name.eq_ignore_ascii_case(name)) {
                bail!(
                    "listener.name.{name}: listeners has no {} listener",
                    name.to_ascii_uppercase()
                );
            }
            if l.max_connections == Some(0) {
                bail!("listener.name.{name}.max_connections = 0: must be at least 1");
            }
        }
        if !(1..=CONNECTIONS_MAX_IDLE_MS_MAX).contains(&self.connections_max_idle_ms) {
            bail!(
                "connections_max_idle_ms = {}: must be between 1 and {CONNECTIONS_MAX_IDLE_MS_MAX} (a year; Kafka's default is 600000)",
                self.connections_max_idle_ms
            );
        }
        if self.max_connections < 1 {
            bail!("max_connections = 0: must be at least 1");
        }
        if self.max_connections_per_ip < 1 {
            bail!("max_connections_per_ip = 0: must be at least 1 (use max_connections_per_ip_overrides to block one address)");
        }
        parse_ip_overrides(
            "max_connections_per_ip_overrides",
            &self.max_connections_per_ip_overrides,
        )?;
        if let Some(id) = &self.cluster_id {
            if id.is_empty()
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                bail!("cluster_id = {id:?}: use letters, digits, '-' and '_' (e.g. a Kafka-style base64 id)");
            }
        }
        self.metrics_addr()?;
        if let Some(adv) = &self.advertised_listeners {
            parse_listeners("advertised_listeners", adv)?;
        }
        let voters = parse_voters(&self.controller.quorum_voters)?;
        let bootstrap = parse_bootstrap_servers(&self.controller.quorum_bootstrap_servers)?;
        if !voters.is_empty() && !bootstrap.is_empty() {
            bail!("controller.quorum_voters and controller.quorum_bootstrap_servers are both set: set quorum_voters to start a new quorum, or quorum_bootstrap_servers to join one (KIP-853), not both");
        }
        let listed = voters.iter().any(|(id, _)| *id == self.node_id as u64);
        if self.has_role("controller") && !voters.is_empty() && !listed {
            bail!("controller.quorum_voters does not list this node_id ({}), which has the controller role: list it, or leave quorum_voters empty and set controller.quorum_bootstrap_servers to join the quorum as an observer", self.node_id);
        }
        if !self.has_role("controller") {
            if voters.is_empty() && bootstrap.is_empty() {
                bail!("controller.quorum_voters and controller.quorum_bootstrap_servers are empty: a broker-only node needs the voters' id@host:port (or controllers' host:port) to follow the metadata log");
            }
            if listed {
                bail!("controller.quorum_voters lists node_id {} but its process_roles has no \"controller\"", self.node_id);
            }
        }
        if !matches!(voters.len(), 0 | 1 | 3 | 5) {
            bail!("controller.quorum_voters lists {} voters: use 1, 3 or 5", voters.len());
        }
        if !(1..=i32::MAX as u64).contains(&self.producer_id_expiration_ms) {
            bail!(
                "producer_id_expiration_ms = {}: must be between 1 and {} (Kafka's default is 86400000, a day)",
                self.producer_id_expiration_ms,
                i32::MAX
            );
        }
        if self.num_partitions < 1 {
            bail!("num_partitions = {}: must be at least 1", self.num_partitions);
        }
        if self.default_replication_factor < 1 {
            bail!(
                "default_replication_factor = {}: must be at least 1",
                self.default_replication_factor
            );
        }
        if self.min_insync_replicas < 1 {
            bail!("min_insync_replicas = {}: must be at least 1", self.min_insync_replicas);
        }
        if self.message_max_bytes < 64 {
            bail!("message_max_bytes = {}: must be at least 64", self.message_max_bytes);
        }
        if self.fetch_max_bytes > strom_broker::FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX {
            bail!(
                "fetch_max_bytes = {}: must be at most {} (the fetched bytes one connection may hold; Kafka's default is 57671680)",
                self.fetch_max_bytes,
                strom_broker::FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX
            );
        }
        if self.max_incremental_fetch_session_cache_slots
            > strom_broker::FETCH_SESSION_CACHE_SLOTS_MAX
        {
            bail!(
                "max_incremental_fetch_session_cache_slots = {}: must be at most {} (Kafka's default is 1000; 0 serves every fetch without a session)",
                self.max_incremental_fetch_session_cache_slots,
                strom_broker::FETCH_SESSION_CACHE_SLOTS_MAX
            );
        }
        if self.socket_request_max_bytes < 1024 {
            bail!(
                "socket_request_max_bytes = {}: must be at least 1024",
                self.socket_request_max_bytes
            );
        }
        if !(1..=10_000).contains(&self.offsets.topic_num_partitions) {
            bail!(
                "offsets.topic_num_partitions = {}: must be between 1 and 10000 (Kafka's default is 50)",
                self.offsets.topic_num_partitions
            );
        }
        if self.offsets.topic_replication_factor < 1 {
            bail!(
                "offsets.topic_replication_factor = {}: must be at least 1",
                self.offsets.topic_replication_factor
            );
        }
        if self.offsets.retention_minutes < 1 {
            bail!(
                "offsets.retention_minutes = {}: must be at least 1",
                self.offsets.retention_minutes
            );
        }
        if self.offsets.retention_check_interval_ms < 1 || self.offsets.commit_timeout_ms < 1 {
            bail!("offsets.retention_check_interval_ms and offsets.commit_timeout_ms must be at least 1");
        }
        if self.group.initial_rebalance_delay_ms < 0 {
            bail!(
                "group.initial_rebalance_delay_ms = {}: must be 0 or more",
                self.group.initial_rebalance_delay_ms
            );
        }
        if self.group.min_session_timeout_ms < 1
            || self.group.min_session_timeout_ms > self.group.max_session_timeout_ms
        {
            bail!(
                "group.min_session_timeout_ms = {} and group.max_session_timeout_ms = {}: the minimum must be at least 1 and at most the maximum",
                self.group.min_session_timeout_ms,
                self.group.max_session_timeout_ms
            );
        }
        let g = &self.group;
        if g.consumer_heartbeat_interval_ms < 1
            || g.consumer_heartbeat_interval_ms >= g.consumer_session_timeout_ms
        {
            bail!(
                "group.consumer_heartbeat_interval_ms = {} and group.consumer_session_timeout_ms = {}: the interval must be at least 1 and below the session timeout",
                g.consumer_heartbeat_interval_ms,
                g.consumer_session_timeout_ms
            );
        }
        if g.consumer_max_size < 1 {
            bail!("group.consumer_max_size = 0: must be at least 1");
        }
        self.validate_transaction()?;
        if self.log.segment_bytes < 1024 * 1024 {
            bail!(
                "log.segment_bytes = {}: must be at least 1048576 (1 MiB)",
                self.log.segment_bytes
            );
        }
        if self.log.retention_ms < -1 {
            bail!(
                "log.retention_ms = {}: use -1 for unlimited or a positive number",
                self.log.retention_ms
            );
        }
        if self.log.retention_bytes < -1 {
            bail!(
                "log.retention_bytes = {}: use -1 for unlimited or a positive number",
                self.log.retention_bytes
            );
        }
        if self.log.flush_interval_messages < 1 {
            bail!("log.flush_interval_messages = {}: must be at least 1 (1 = fsync before acknowledging)", self.log.flush_interval_messages);
        }
        if !matches!(self.log.message_timestamp_type.as_str(), "CreateTime" | "LogAppendTime") {
            bail!(
                "log.message_timestamp_type = '{}': use CreateTime or LogAppendTime",
                self.log.message_timestamp_type
            );
        }
        if self.broker.heartbeat_interval_ms == 0
            || self.broker.session_timeout_ms <= self.broker.heartbeat_interval_ms
        {
            bail!("broker.session_timeout_ms ({}) must be greater than broker.heartbeat_interval_ms ({}), which must be > 0", self.broker.session_timeout_ms, self.broker.heartbeat_interval_ms);
        }
        if self.controller.raft_heartbeat_interval_ms == 0
            || self.controller.election_timeout_ms <= self.controller.raft_heartbeat_interval_ms
        {
            bail!("controller.election_timeout_ms ({}) must be greater than controller.raft_heartbeat_interval_ms ({})", self.controller.election_timeout_ms, self.controller.raft_heartbeat_interval_ms);
        }
        if self.controller.snapshot_after_entries == 0 {
            bail!("controller.snapshot_after_entries must be at least 1");
        }
        Ok(())
    }

    /// Kafka's bounds on the transaction settings: each at least 1 and an int. The segment
    /// size is at least 1 MiB, the smallest `segment.bytes` Kafka 4 allows the topic it makes.
    fn validate_transaction(&self) -> Result<()> {
        let t = &self.transaction;
        let int_max = i128::from(i32::MAX);
        let checks: [(&str, i128, i128, i128); 8] = [
            // Above 10000 the topic's creation would not fit in one metadata operation.
            ("transaction.state_log_num_partitions", t.state_log_num_partitions.into(), 1, 10_000),
            (
                "transaction.state_log_replication_factor",
                t.state_log_replication_factor.into(),
                1,
                i16::MAX.into(),
            ),
            (
                "transaction.state_log_segment_bytes",
                t.state_log_segment_bytes.into(),
                1 << 20,
                int_max,
            ),
            ("transaction.state_log_min_isr", t.state_log_min_isr.into(), 1, int_max),
            ("transaction.max_timeout_ms", t.max_timeout_ms.into(), 1, int_max),
            (
                "transactional_id_expiration_ms",
                self.transactional_id_expiration_ms.into(),
                1,
                int_max,
            ),
            (
                "transaction.abort_timed_out_transaction_cleanup_interval_ms",
                t.abort_timed_out_transaction_cleanup_interval_ms.into(),
                1,
                int_max,
            ),
            (
                "transaction.remove_expired_transaction_cleanup_interval_ms",
                t.remove_expired_transaction_cleanup_interval_ms.into(),
                1,
                int_max,
            ),
        ];
        for (key, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                bail!("{key} = {value}: must be between {min} and {max}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        NodeConfig::default().validate().unwrap();
        let e = toml::from_str::<NodeConfig>("node_idd = 3").unwrap_err().to_string();
        assert!(e.contains("node_idd"), "{e}");
        let e = toml::from_str::<NodeConfig>("[log]\nsegment_bytez = 3").unwrap_err().to_string();
        assert!(e.contains("segment_bytez"), "{e}");
        let c: NodeConfig = toml::from_str("[log]\nsegment_bytes = 10").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("log.segment_bytes"), "{e}");
        let c: NodeConfig = toml::from_str("fetch_max_bytes = 2147483647").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("fetch_max_bytes"), "{e}");
        let c: NodeConfig =
            toml::from_str("max_incremental_fetch_session_cache_slots = 100001").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("max_incremental_fetch_session_cache_slots"), "{e}");
        let c: NodeConfig = toml::from_str("listeners = \"PLAINTEXT://h\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("no port"));
    }

    /// Every TOML file under `config/` (single node, the local cluster, the multi-host example).
    #[test]
    fn the_shipped_example_configs_are_valid() {
        fn walk(dir: &std::path::Path, found: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    found.push(path);
                }
            }
        }
        let mut found = Vec::new();
        walk(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config"), &mut found);
        assert!(found.len() >= 5, "{found:?}");
        for path in found {
            let config = NodeConfig::load(&path).unwrap();
            config.validate().unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }

    /// `config/single.toml` is what `strom start` runs with no config file: it writes out
    /// every setting (bar the optional ones), each with its default.
    #[test]
    fn single_toml_spells_out_every_default() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/single.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let written = flatten(&toml::from_str::<toml::Value>(&text).unwrap());
        let defaults = flat_entries(&NodeConfig::default());
        assert!(defaults.len() > 30, "{defaults:?}");
        for (key, value) in &defaults {
            assert_eq!(written.get(key), Some(value), "{key} in config/single.toml");
        }
        for key in written.keys() {
            assert!(defaults.contains_key(key), "config/single.toml sets {key}, not a default");
        }
        let loaded = NodeConfig::load(&path).unwrap();
        assert_eq!(loaded.broker_defaults(), BROKER_DEFAULTS);
        assert_eq!(NodeConfig::default().broker_defaults(), BROKER_DEFAULTS);
        assert_eq!(loaded.transaction_settings(), TRANSACTION_DEFAULTS);
        assert!(loaded
            .kafka_entries()
            .iter()
            .all(|(_, _, source)| *source == ConfigSource::Default));
        let changed: NodeConfig = toml::from_str("[log]\nsegment_bytes = 2097152").unwrap();
        let entries = changed.kafka_entries();
        let segment = entries.iter().find(|(k, _, _)| k == "log.segment.bytes").unwrap();
        assert_eq!((segment.1.as_str(), segment.2), ("2097152", ConfigSource::StaticBroker));
    }

    #[test]
    fn connection_settings_are_validated_by_name() {
        let bad = |toml: &str, key: &str| {
            let c: NodeConfig = toml::from_str(toml).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        };
        bad("max_connections = 0", "max_connections");
        bad("connections_max_idle_ms = 0", "connections_max_idle_ms");
        bad("connections_max_idle_ms = 18446744073709551615", "connections_max_idle_ms");
        bad(
            "max_connections_per_ip_overrides = \"localhost:3\"",
            "max_connections_per_ip_overrides",
        );
        bad("max_connections_per_ip_overrides = \"127.0.0.1\"", "max_connections_per_ip_overrides");
        bad("inter_broker_listener_name = \"REPLICATION\"", "inter_broker_listener_name");
        bad("inter_broker_listener_name = \"CONTROLLER\"", "inter_broker_listener_name");
        bad("listener.name.replication.max_connections = 5", "listener.name.replication");
        let c: NodeConfig = toml::from_str(
            "listeners = \"PLAINTEXT://127.0.0.1:9092,REPLICATION://127.0.0.1:9094,CONTROLLER://127.0.0.1:9093\"\n\
             inter_broker_listener_name = \"replication\"\n\
             max_connections_per_ip_overrides = \"127.0.0.1:5,[::1]:0\"\n\
             listener.name.replication.max_connections = 50",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.inter_broker_listener().unwrap().unwrap().port, 9094);
        assert_eq!(c.listener_max_connections("REPLICATION"), Some(50));
        let overrides = parse_ip_overrides("k", &c.max_connections_per_ip_overrides).unwrap();
        assert_eq!(overrides.get(&"::1".parse().unwrap()), Some(&0));
        let shipped = |file: &str| {
            let path =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config").join(file);
            NodeConfig::load(&path).unwrap()
        };
        for node in ["cluster/node-1.toml", "cluster/node-2.toml", "cluster/node-3.toml"] {
            let c = shipped(node);
            c.validate().unwrap();
            assert!(
                c.inter_broker_listener().unwrap().is_some(),
                "{node} replicates on its own listener"
            );
        }
    }

    #[test]
    fn transaction_settings_are_read_and_validated_by_name() {
        let c: NodeConfig = toml::from_str(
            "transactional_id_expiration_ms = 60000\n\
             [transaction]\n\
             state_log_num_partitions = 3\n\
             state_log_replication_factor = 1\n\
             state_log_segment_bytes = 1048576\n\
             state_log_min_isr = 1\n\
             max_timeout_ms = 5000\n\
             abort_timed_out_transaction_cleanup_interval_ms = 100\n\
             remove_expired_transaction_cleanup_interval_ms = 200",
        )
        .unwrap();
        c.validate().unwrap();
        let expected = TransactionDefaults {
            transaction_state_log_num_partitions: 3,
            transaction_state_log_replication_factor: 1,
            transaction_state_log_segment_bytes: 1 << 20,
            transaction_state_log_min_isr: 1,
            transaction_max_timeout_ms: 5_000,
            transactional_id_expiration_ms: 60_000,
            transaction_abort_timed_out_transaction_cleanup_interval_ms: 100,
            transaction_remove_expired_transaction_cleanup_interval_ms: 200,
        };
        assert_eq!(c.transaction_settings(), expected);
        let entries = c.kafka_entries();
        let max_timeout = entries.iter().find(|(k, _, _)| k == "transaction.max.timeout.ms");
        assert_eq!(
            max_timeout.map(|(_, v, s)| (v.as_str(), *s)),
            Some(("5000", ConfigSource::StaticBroker))
        );
        assert!(entries
            .iter()
            .any(|(k, v, _)| k == "transactional.id.expiration.ms" && v == "60000"));

        let bad = |toml: &str, key: &str| {
            let c: NodeConfig = toml::from_str(toml).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{toml}: {e}");
        };
        let section = "[transaction]\n";
        for (setting, key) in [
            ("state_log_num_partitions = 0", "transaction.state_log_num_partitions"),
            ("state_log_num_partitions = 10001", "transaction.state_log_num_partitions"),
            ("state_log_replication_factor = 0", "transaction.state_log_replication_factor"),
            ("state_log_segment_bytes = 1048575", "transaction.state_log_segment_bytes"),
            ("state_log_segment_bytes = 2147483648", "transaction.state_log_segment_bytes"),
            ("state_log_min_isr = 0", "transaction.state_log_min_isr"),
            ("max_timeout_ms = 0", "transaction.max_timeout_ms"),
            (
                "abort_timed_out_transaction_cleanup_interval_ms = 0",
                "transaction.abort_timed_out_transaction_cleanup_interval_ms",
            ),
            (
                "remove_expired_transaction_cleanup_interval_ms = 2147483648",
                "transaction.remove_expired_transaction_cleanup_interval_ms",
            ),
        ] {
            bad(&format!("{section}{setting}"), key);
        }
        bad("transactional_id_expiration_ms = 0", "transactional_id_expiration_ms");
        let e = toml::from_str::<NodeConfig>("[transaction]\nmax_timeout = 3").unwrap_err();
        assert!(e.to_string().contains("max_timeout"), "{e}");
    }

    #[test]
    fn listeners_can_be_overridden() {
        let mut c = NodeConfig::default();
        c.set_listener("PLAINTEXT", "127.0.0.1:19092").unwrap();
        assert_eq!(c.listener("PLAINTEXT").unwrap().unwrap().port, 19092);
        assert_eq!(c.listener("CONTROLLER").unwrap().unwrap().port, 9093);
    }
}
