//! The node's static defaults, defined once: the binary's TOML config starts from them, the
//! controller and the broker read them, and topic configs fall back to them.

/// Kafka's `message.timestamp.type` (topic) and `log.message.timestamp.type` (broker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageTimestampType {
    /// The producer's timestamps are kept.
    CreateTime,
    /// The broker stamps every batch with its append time.
    LogAppendTime,
}

impl MessageTimestampType {
    pub const fn name(self) -> &'static str {
        match self {
            MessageTimestampType::CreateTime => "CreateTime",
            MessageTimestampType::LogAppendTime => "LogAppendTime",
        }
    }

    /// Kafka's spelling only (`CreateTime`, `LogAppendTime`).
    pub fn parse(value: &str) -> Option<MessageTimestampType> {
        match value {
            "CreateTime" => Some(MessageTimestampType::CreateTime),
            "LogAppendTime" => Some(MessageTimestampType::LogAppendTime),
            _ => None,
        }
    }
}

/// Node settings that more than one crate reads, with their defaults. Kafka's key in each doc;
/// strom's TOML spells it in snake_case, in the section of its first word where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerDefaults {
    /// `num.partitions`: partitions of a topic created without a count.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// `min.insync.replicas` (topic synonym: the same name).
    pub min_insync_replicas: i32,
    /// `message.max.bytes` (topic synonym: `max.message.bytes`).
    pub message_max_bytes: u32,
    /// `broker.heartbeat.interval.ms`.
    pub broker_heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms`: a broker not heard from for longer is fenced.
    pub broker_session_timeout_ms: u64,
    /// `controller.election.timeout.ms`: the raft election timeout's lower bound (the upper
    /// bound is [`BrokerDefaults::election_timeout_max_ms`]).
    pub controller_election_timeout_ms: u64,
    /// `controller.raft.heartbeat.interval.ms`.
    pub controller_raft_heartbeat_interval_ms: u64,
    /// `controller.snapshot.after.entries`: metadata log entries between snapshots.
    pub controller_snapshot_after_entries: u64,
    /// `log.segment.bytes` (topic synonym: `segment.bytes`).
    pub log_segment_bytes: u64,
    /// `log.retention.ms` (topic synonym: `retention.ms`); -1 is unlimited.
    pub log_retention_ms: i64,
    /// `log.retention.bytes` (topic synonym: `retention.bytes`); -1 is unlimited.
    pub log_retention_bytes: i64,
    /// `log.retention.check.interval.ms`: how often retention and compaction run.
    pub log_retention_check_interval_ms: u64,
    /// `log.flush.interval.messages` (topic synonym: `flush.messages`). 1, strom's default
    /// (Kafka's is unlimited): a produce is acknowledged only after an fsync covering it.
    pub log_flush_interval_messages: i64,
    /// `log.message.timestamp.type` (topic synonym: `message.timestamp.type`).
    pub log_message_timestamp_type: MessageTimestampType,
    /// `log.index.interval.bytes` (topic synonym: `index.interval.bytes`).
    pub log_index_interval_bytes: u32,
    /// `producer.id.expiration.ms`: a partition leader forgets an idempotent producer's
    /// sequence state once it has written nothing for this long.
    pub producer_id_expiration_ms: u64,
}

/// The one definition of every default above; `config/single.toml` spells it out (a test in
/// the `strom` crate compares the two).
pub const BROKER_DEFAULTS: BrokerDefaults = BrokerDefaults {
    num_partitions: 1,
    default_replication_factor: 1,
    min_insync_replicas: 1,
    message_max_bytes: 1_048_588,
    // Four heartbeats per session: one lost heartbeat is not a failure, and a dead leader is
    // replaced within 2 s (timeout plus the controller's check interval plus a commit).
    broker_heartbeat_interval_ms: 250,
    broker_session_timeout_ms: 1_000,
    // openraft 0.9 bounds every AppendEntries by the heartbeat interval: it must cover a
    // follower's append and fsync of a large entry on a loaded machine (at 50 ms, 2,000 topics
    // created on 2 cores made every replication RPC time out and the quorum stall). The
    // election timeout keeps three heartbeats of margin; a dead controller is replaced in
    // about a second (timeout 500-750 ms, then a vote).
    controller_election_timeout_ms: 500,
    controller_raft_heartbeat_interval_ms: 150,
    controller_snapshot_after_entries: 10_000,
    log_segment_bytes: 1 << 30,
    log_retention_ms: 7 * 24 * 60 * 60 * 1000,
    log_retention_bytes: -1,
    log_retention_check_interval_ms: 300_000,
    log_flush_interval_messages: 1,
    log_message_timestamp_type: MessageTimestampType::CreateTime,
    log_index_interval_bytes: 4096,
    producer_id_expiration_ms: 86_400_000,
};

const D: BrokerDefaults = BROKER_DEFAULTS;
const _: () = assert!(D.broker_heartbeat_interval_ms > 0);
const _: () = assert!(D.broker_heartbeat_interval_ms < D.broker_session_timeout_ms);
const _: () = assert!(D.broker_session_timeout_ms + D.broker_heartbeat_interval_ms <= 2_000);
const _: () = assert!(D.controller_raft_heartbeat_interval_ms > 0);
const _: () = assert!(D.controller_raft_heartbeat_interval_ms < D.controller_election_timeout_ms);
const _: () = assert!(
    D.controller_election_timeout_ms < election_timeout_max_ms(D.controller_election_timeout_ms)
);
const _: () = assert!(D.controller_snapshot_after_entries > 0);
const _: () = assert!(D.num_partitions >= 1 && D.default_replication_factor >= 1);
const _: () = assert!(D.min_insync_replicas >= 1 && D.log_flush_interval_messages >= 1);
const _: () = assert!(D.log_segment_bytes <= i32::MAX as u64);
// Kafka's type for it is a positive int.
const _: () = assert!(D.producer_id_expiration_ms >= 1);
const _: () = assert!(D.producer_id_expiration_ms <= i32::MAX as u64);

/// The raft election timeout's upper bound for a lower bound of `election_timeout_ms`: a narrow
/// range, because openraft's leader lease is the maximum and it delays the vote that replaces
/// a dead leader.
pub const fn election_timeout_max_ms(election_timeout_ms: u64) -> u64 {
    election_timeout_ms * 3 / 2
}

impl Default for BrokerDefaults {
    fn default() -> Self {
        BROKER_DEFAULTS
    }
}

impl BrokerDefaults {
    /// The upper bound of the raft election timeout.
    pub const fn election_timeout_max_ms(&self) -> u64 {
        election_timeout_max_ms(self.controller_election_timeout_ms)
    }

    /// The static value of a broker-level key that is some topic config's synonym
    /// (`ConfigDef::broker_synonym`), as Kafka prints it; `None` for a key strom has no
    /// broker-level setting for (the topic config's own default applies).
    pub fn static_value(&self, broker_key: &str) -> Option<String> {
        Some(match broker_key {
            "min.insync.replicas" => self.min_insync_replicas.to_string(),
            "message.max.bytes" => self.message_max_bytes.to_string(),
            "log.segment.bytes" => self.log_segment_bytes.to_string(),
            "log.retention.ms" => self.log_retention_ms.to_string(),
            "log.retention.bytes" => self.log_retention_bytes.to_string(),
            "log.flush.interval.messages" => self.log_flush_interval_messages.to_string(),
            "log.message.timestamp.type" => self.log_message_timestamp_type.name().to_string(),
            "log.index.interval.bytes" => self.log_index_interval_bytes.to_string(),
            _ => return None,
        })
    }
}

/// The transaction coordinator's settings (`transaction.*`, `transactional.id.*`), with
/// Kafka's defaults. Kept apart from [`BrokerDefaults`]: like the group coordinator's, they are
/// read by the broker alone, not by topics or the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionDefaults {
    /// `transaction.state.log.num.partitions`.
    pub transaction_state_log_num_partitions: i32,
    /// `transaction.state.log.replication.factor`.
    pub transaction_state_log_replication_factor: i16,
    /// `transaction.state.log.segment.bytes`.
    pub transaction_state_log_segment_bytes: u64,
    /// `transaction.state.log.min.isr`.
    pub transaction_state_log_min_isr: i32,
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask.
    pub transaction_max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: an idle transactional id is forgotten after this.
    pub transactional_id_expiration_ms: i64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub transaction_abort_timed_out_transaction_cleanup_interval_ms: u64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`.
    pub transaction_remove_expired_transaction_cleanup_interval_ms: u64,
}

/// Kafka's defaults of the above: the binary's `[transaction]` section (and
/// `transactional_id_expiration_ms`) starts from them; `config/single.toml` spells them out.
pub const TRANSACTION_DEFAULTS: TransactionDefaults = TransactionDefaults {
    transaction_state_log_num_partitions: 50,
    transaction_state_log_replication_factor: 3,
    transaction_state_log_segment_bytes: 104_857_600,
    transaction_state_log_min_isr: 2,
    transaction_max_timeout_ms: 900_000,
    transactional_id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
    transaction_abort_timed_out_transaction_cleanup_interval_ms: 10_000,
    transaction_remove_expired_transaction_cleanup_interval_ms: 3_600_000,
};

const T: TransactionDefaults = TRANSACTION_DEFAULTS;
const _: () = assert!(T.transaction_state_log_num_partitions >= 1);
const _: () = assert!(T.transaction_state_log_min_isr >= 1);
const _: () =
    assert!(T.transaction_state_log_min_isr <= T.transaction_state_log_replication_factor as i32);
const _: () = assert!(T.transaction_state_log_segment_bytes <= i32::MAX as u64);
const _: () = assert!(T.transaction_max_timeout_ms > 0);
// Kafka's type for it is a positive int.
const _: () = assert!(T.transactional_id_expiration_ms >= 1);
const _: () = assert!(T.transactional_id_expiration_ms <= i32::MAX as i64);
const _: () = assert!(T.transaction_abort_timed_out_transaction_cleanup_interval_ms >= 1);
const _: () = assert!(T.transaction_remove_expired_transaction_cleanup_interval_ms >= 1);
