//! Broker settings, with Kafka's names and defaults.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use strom_metadata::config::{BrokerDefaults, ConfigSource, TransactionDefaults};
use strom_metadata::NodeId;

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub data_dir: PathBuf,
    pub kafka_addr: SocketAddr,
    /// Connection limits and idle timeout of the client listener (`kafka_addr`).
    pub connections: ConnectionLimits,
    /// A listener of its own for replication (`inter.broker.listener.name`), so that clients
    /// that exhaust the client listener's connections do not stop followers from fetching.
    /// `None`: brokers reach each other on the client listener.
    pub inter_broker: Option<InterBrokerListener>,
    /// Host and port clients are told to connect to (`advertised.listeners`).
    pub advertised_host: String,
    pub advertised_port: u16,
    pub rack: Option<String>,
    /// `socket.request.max.bytes`.
    pub socket_request_max_bytes: usize,
    /// `fetch.max.bytes`: the most record bytes one Fetch response holds (KIP-74; the first
    /// batch excepted). At most `FETCH_BYTES_IN_FLIGHT_PER_CONNECTION_MAX`.
    pub fetch_max_bytes: usize,
    /// `max.incremental.fetch.session.cache.slots`: the fetch sessions (KIP-227) this broker
    /// keeps, at most `FETCH_SESSION_CACHE_SLOTS_MAX`.
    pub max_incremental_fetch_session_cache_slots: usize,
    /// `auto.create.topics.enable`.
    pub auto_create_topics_enable: bool,
    /// `replica.lag.time.max.ms`: a follower that has not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// The node's settings that topics fall back to (and those the controller applies).
    pub defaults: BrokerDefaults,
    /// Every node setting as (Kafka-style key, value, source), for DescribeConfigs of the
    /// broker resource.
    pub static_configs: Vec<(String, String, ConfigSource)>,
    pub groups: GroupSettings,
    /// The transaction coordinator's settings (`transaction.*`, `transactional.id.*`).
    pub transactions: TransactionDefaults,
    /// How many partition files (segments and their indexes) the log directory keeps open at
    /// most: the capacity of its handle cache, which the binary derives from the process's
    /// open-file limit.
    pub log_open_files_max: usize,
    /// `metrics.consumer_lag`: `/metrics` shows the lag of the groups this broker
    /// coordinates (strom's own; off by default for its cardinality).
    pub consumer_lag_metrics: bool,
}

/// Connection limits of one Kafka listener, with Kafka's names.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// `max.connections` (the client listener) or `listener.name.<name>.max.connections`.
    pub max_connections: usize,
    /// `max.connections.per.ip`.
    pub max_connections_per_ip: usize,
    /// `max.connections.per.ip.overrides`: a limit per client address instead of the above.
    pub max_connections_per_ip_overrides: HashMap<IpAddr, usize>,
    /// `connections.max.idle.ms`: a connection with no request in flight that has sent
    /// nothing for this long is closed.
    pub connections_max_idle_ms: u64,
}

impl ConnectionLimits {
    /// strom's defaults: Kafka's, except a bounded `max.connections` (Kafka's is unlimited).
    pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;
    /// Kafka's `connections.max.idle.ms` default (10 minutes).
    pub const IDLE_MS_DEFAULT: u64 = 600_000;

    /// The limit for connections from `ip`.
    pub fn per_ip_max(&self, ip: IpAddr) -> usize {
        self.max_connections_per_ip_overrides
            .get(&ip)
            .copied()
            .unwrap_or(self.max_connections_per_ip)
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: Self::MAX_CONNECTIONS_DEFAULT,
            max_connections_per_ip: i32::MAX as usize,
            max_connections_per_ip_overrides: HashMap::new(),
            connections_max_idle_ms: Self::IDLE_MS_DEFAULT,
        }
    }
}

/// The inter-broker listener: where followers fetch from their leaders.
#[derive(Clone, Debug)]
pub struct InterBrokerListener {
    /// Its name in `listeners`, which is also the endpoint name brokers register it under.
    pub name: String,
    pub addr: SocketAddr,
    /// Its own limits: client connections never count against them.
    pub limits: ConnectionLimits,
}

/// The group coordinator's settings, with Kafka's names and defaults.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_num_partitions: i32,
    /// `offsets.topic.replication.factor`, capped by the live brokers when the topic is created.
    pub offsets_topic_replication_factor: i16,
    /// `offsets.topic.segment.bytes`.
    pub offsets_topic_segment_bytes: u64,
    /// `offsets.retention.minutes`, in milliseconds.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: u64,
    /// `offsets.commit.timeout.ms`: how long a commit waits for replication.
    pub offsets_commit_timeout_ms: u64,
    /// `offset.metadata.max.bytes`.
    pub offset_metadata_max_bytes: usize,
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// `group.consumer.session.timeout.ms` (KIP-848 members).
    pub consumer_session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms`.
    pub consumer_heartbeat_interval_ms: i32,
    /// `group.consumer.max.size`.
    pub consumer_max_size: usize,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            offsets_topic_num_partitions: 50,
            offsets_topic_replication_factor: 3,
            offsets_topic_segment_bytes: 100 * 1024 * 1024,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            offsets_commit_timeout_ms: 5_000,
            offset_metadata_max_bytes: 4_096,
            initial_rebalance_delay_ms: 3_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            consumer_session_timeout_ms: crate::group::CONSUMER_SESSION_TIMEOUT_MS_DEFAULT,
            consumer_heartbeat_interval_ms: crate::group::CONSUMER_HEARTBEAT_INTERVAL_MS_DEFAULT,
            consumer_max_size: crate::group::CONSUMER_MEMBERS_MAX,
        }
    }
}
