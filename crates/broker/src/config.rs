//! Broker settings, with Kafka's names and defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use strom_metadata::NodeId;

/// Broker-level defaults for topic configs (Kafka's `log.*` keys); a topic override wins.
#[derive(Clone, Debug)]
pub struct LogDefaults {
    pub segment_bytes: u64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    /// `log.flush.interval.messages`: 1 (strom's default) acknowledges only fsynced data.
    pub flush_messages: i64,
    pub message_timestamp_type: String,
    pub index_interval_bytes: u32,
    pub message_max_bytes: u32,
    /// `min.insync.replicas`.
    pub min_insync_replicas: i32,
}

impl Default for LogDefaults {
    fn default() -> Self {
        LogDefaults {
            segment_bytes: 1 << 30,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            flush_messages: 1,
            message_timestamp_type: "CreateTime".into(),
            index_interval_bytes: 4096,
            message_max_bytes: 1_048_588,
            min_insync_replicas: 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub data_dir: PathBuf,
    pub kafka_addr: SocketAddr,
    /// Host and port clients are told to connect to (`advertised.listeners`).
    pub advertised_host: String,
    pub advertised_port: u16,
    pub rack: Option<String>,
    /// `socket.request.max.bytes`.
    pub socket_request_max_bytes: usize,
    /// `num.partitions` and `default.replication.factor` (applied by the controller; shown
    /// by DescribeConfigs).
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    /// `auto.create.topics.enable`.
    pub auto_create_topics_enable: bool,
    /// `replica.lag.time.max.ms`: a follower that has not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    pub log: LogDefaults,
}
