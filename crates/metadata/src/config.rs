//! Configuration facts, each defined once: the node's static defaults ([`BrokerDefaults`]),
//! topic configuration keys (Kafka's names, types, defaults and validation), a topic's
//! effective config ([`effective_topic_config`], [`TopicConfig`]) and the internal topics.
//!
//! The metadata image stores only overrides; a key's effective value is the topic override, else
//! the broker's static default, else the default here. Every key in [`TOPIC_CONFIGS`] takes
//! effect; Kafka keys strom does not implement are refused by name ([`REFUSED_TOPIC_CONFIGS`]),
//! and so are values it does not implement ([`Check::Only`]).

mod defaults;
mod dynamic;
mod effective;

pub use defaults::{
    election_timeout_max_ms, BrokerDefaults, MessageTimestampType, TransactionDefaults,
    BROKER_DEFAULTS, TRANSACTION_DEFAULTS,
};
pub use dynamic::{
    dynamic_broker_config, effective_broker_config, validate_broker_config, DynamicValue,
    ReplicationThrottles, ThrottledReplicas, DYNAMIC_BROKER_CONFIGS,
    FOLLOWER_REPLICATION_THROTTLED_RATE, FOLLOWER_REPLICATION_THROTTLED_REPLICAS,
    LEADER_REPLICATION_THROTTLED_RATE, LEADER_REPLICATION_THROTTLED_REPLICAS,
};
pub use effective::{effective_topic_config, ConfigSource, EffectiveValue, TopicConfig};

use crate::ControlError;

/// The metadata quorum's own log directory is `<data_dir>/__cluster_metadata-0`: no topic may
/// take this name (or one that collides with it), or its partition 0 would be the raft log.
pub const CLUSTER_METADATA_TOPIC: &str = "__cluster_metadata";
/// Topics the brokers create and write themselves. Clients may read them, never produce to,
/// create, delete, repartition or reconfigure them.
pub const INTERNAL_TOPICS: &[&str] = &["__consumer_offsets", "__transaction_state"];

/// Whether `name` is one of the brokers' own topics (`INTERNAL_TOPICS`).
pub fn is_internal_topic(name: &str) -> bool {
    INTERNAL_TOPICS.contains(&name)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Short,
    Long,
    Double,
    List,
}

impl ConfigType {
    /// Kafka's name of the type, as its documentation and tools print it.
    pub fn name(self) -> &'static str {
        match self {
            ConfigType::Boolean => "boolean",
            ConfigType::String => "string",
            ConfigType::Int => "int",
            ConfigType::Short => "short",
            ConfigType::Long => "long",
            ConfigType::Double => "double",
            ConfigType::List => "list",
        }
    }

    /// Kafka's DescribeConfigs `config_type` code.
    pub fn code(self) -> i8 {
        match self {
            ConfigType::Boolean => 1,
            ConfigType::String => 2,
            ConfigType::Int => 3,
            ConfigType::Short => 4,
            ConfigType::Long => 5,
            ConfigType::Double => 6,
            ConfigType::List => 7,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Check {
    Any,
    /// An integer at least this large.
    AtLeast(i64),
    /// A value from this list.
    OneOf(&'static [&'static str]),
    /// A comma-separated list of values from this list.
    ListOf(&'static [&'static str]),
    /// A double in [lo, hi].
    Ratio,
    /// Kafka accepts more values; strom implements only these, and says why for the rest.
    Only {
        values: &'static [&'static str],
        why: &'static str,
    },
    /// `*`, or a comma-separated list of `partition:brokerId` (Kafka's throttled replicas).
    Replicas,
}

/// One topic-level config key.
#[derive(Clone, Copy, Debug)]
pub struct ConfigDef {
    pub name: &'static str,
    pub kind: ConfigType,
    pub default: &'static str,
    pub check: Check,
    /// The broker-level key whose static value is this key's default (Kafka's synonym).
    pub broker_synonym: Option<&'static str>,
    pub doc: &'static str,
}

const fn def(
    name: &'static str,
    kind: ConfigType,
    default: &'static str,
    check: Check,
    broker_synonym: Option<&'static str>,
    doc: &'static str,
) -> ConfigDef {
    ConfigDef { name, kind, default, check, broker_synonym, doc }
}

pub const LONG_MAX: &str = "9223372036854775807";

use Check::*;
use ConfigType::*;

/// Every topic config strom accepts, each of which takes effect. `flush.messages` differs from
/// Kafka's default on purpose: strom acknowledges a produce only after an fsync (group commit)
/// unless this is raised above 1.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    def("cleanup.policy", List, "delete", ListOf(&["delete", "compact"]), Some("log.cleanup.policy"), "Retention policy: delete old segments, compact by key, or both."),
    def("compression.type", String, "producer", Only { values: &["producer"], why: "strom stores batches as the producer compressed them and never recompresses (set the producer's compression.type instead)" }, Some("compression.type"), "Final compression of the topic: 'producer', batches are stored as the producer compressed them."),
    def("delete.retention.ms", Long, "86400000", AtLeast(0), Some("log.cleaner.delete.retention.ms"), "How long tombstones are kept on compacted topics."),
    def("flush.messages", Long, "1", AtLeast(1), Some("log.flush.interval.messages"), "1 (strom's default): a produce is acknowledged only after its bytes are fsynced (group commit). Larger values acknowledge once written and fsync every 10 seconds."),
    def(FOLLOWER_REPLICATION_THROTTLED_REPLICAS, List, "", Replicas, None, "Replicas whose fetching from their leader counts against their broker's follower.replication.throttled.rate while they are out of the ISR: '*' for all replicas of the topic, or a list of partition:brokerId."),
    def("index.interval.bytes", Int, "4096", AtLeast(0), Some("log.index.interval.bytes"), "Bytes between offset index entries."),
    def(LEADER_REPLICATION_THROTTLED_REPLICAS, List, "", Replicas, None, "Leader replicas whose sending to followers out of the ISR counts against their broker's leader.replication.throttled.rate: '*' for all replicas of the topic, or a list of partition:brokerId."),
    def("max.compaction.lag.ms", Long, LONG_MAX, AtLeast(1), Some("log.cleaner.max.compaction.lag.ms"), "Longest time a record stays uncompacted: a compacted log is compacted regardless of its dirty ratio once its oldest uncompacted closed segment is this old, and its active segment rolls at this age."),
    def("max.message.bytes", Int, "1048588", AtLeast(0), Some("message.max.bytes"), "Largest record batch the topic accepts."),
    def("message.timestamp.type", String, "CreateTime", OneOf(&["CreateTime", "LogAppendTime"]), Some("log.message.timestamp.type"), "Whether record timestamps are the producer's or the broker's append time."),
    def("min.cleanable.dirty.ratio", Double, "0.5", Ratio, Some("log.cleaner.min.cleanable.ratio"), "Dirty ratio at which compaction starts."),
    def("min.compaction.lag.ms", Long, "0", AtLeast(0), Some("log.cleaner.min.compaction.lag.ms"), "Shortest time a record stays uncompacted."),
    def("min.insync.replicas", Int, "1", AtLeast(1), Some("min.insync.replicas"), "Replicas that must acknowledge an acks=all write."),
    def("preallocate", Boolean, "false", Only { values: &["false"], why: "strom grows segment files as it appends" }, Some("log.preallocate"), "Preallocate segment files: 'false', segment files grow as they are written."),
    def("retention.bytes", Long, "-1", AtLeast(-1), Some("log.retention.bytes"), "Largest size of a partition's log before old segments are deleted; -1 is unlimited."),
    def("retention.ms", Long, "604800000", AtLeast(-1), Some("log.retention.ms"), "Longest time a segment is kept; -1 is unlimited."),
    def("segment.bytes", Int, "1073741824", AtLeast(14), Some("log.segment.bytes"), "Size at which a segment rolls."),
    def("segment.index.bytes", Int, "10485760", AtLeast(4), Some("log.index.size.max.bytes"), "Largest size of a segment's offset index (8 bytes an entry) and time index (12 bytes an entry); the segment rolls when either is full."),
    def("segment.ms", Long, "604800000", AtLeast(1), Some("log.roll.ms"), "Age at which a segment rolls: an append rolls the active segment when the appended batches' timestamp is this much newer than its first batch's."),
    def("unclean.leader.election.enable", Boolean, "false", OneOf(&["true", "false"]), Some("unclean.leader.election.enable"), "Allow an out-of-sync replica to become leader (may lose data)."),
];

/// Kafka topic configs strom does not implement, refused by name with the reason.
pub const REFUSED_TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("file.delete.delay.ms", "strom deletes a segment's files at once (readers keep their open handles)"),
    ("flush.ms", "strom fsyncs before acknowledging (flush.messages=1, the default), else every 10 seconds; set flush.messages"),
    ("message.downconversion.enable", "strom serves record batches v2 only"),
    ("message.timestamp.difference.max.ms", "strom does not check record timestamps"),
    ("message.timestamp.before.max.ms", "strom does not check record timestamps"),
    ("message.timestamp.after.max.ms", "strom does not check record timestamps"),
    ("segment.jitter.ms", "strom rolls a segment at segment.ms exactly"),
    ("local.retention.ms", "strom has no tiered storage"),
    ("local.retention.bytes", "strom has no tiered storage"),
    ("remote.storage.enable", "strom has no tiered storage"),
];

pub fn topic_config(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks a topic config key and value; the error names the key and what would be accepted.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), ControlError> {
    if let Some((_, why)) = REFUSED_TOPIC_CONFIGS.iter().find(|(key, _)| *key == name) {
        return Err(ControlError::InvalidConfig(format!(
            "topic config '{name}' is not supported: {why}"
        )));
    }
    let Some(d) = topic_config(name) else {
        return Err(ControlError::InvalidConfig(format!(
            "unknown topic config '{name}'; known keys: {}",
            TOPIC_CONFIGS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
        )));
    };
    check_value(d, value)
}

/// Checks `value` against the type and the check of `d`; the error names the key.
fn check_value(d: &ConfigDef, value: &str) -> Result<(), ControlError> {
    let name = d.name;
    let bad =
        |why: std::string::String| ControlError::InvalidConfig(format!("{name}={value:?}: {why}"));
    match d.kind {
        Int | Short | Long => {
            let v: i64 = value.trim().parse().map_err(|_| bad("not an integer".into()))?;
            if d.kind == Int && i32::try_from(v).is_err() {
                return Err(bad("out of the 32-bit integer range".into()));
            }
            if let AtLeast(min) = d.check {
                if v < min {
                    return Err(bad(format!("must be at least {min}")));
                }
            }
        }
        Double => {
            let v: f64 = value.trim().parse().map_err(|_| bad("not a number".into()))?;
            if !(0.0..=1.0).contains(&v) {
                return Err(bad("must be between 0 and 1".into()));
            }
        }
        Boolean | String => {
            if let Only { values, why } = d.check {
                let ok = if d.kind == Boolean {
                    values.iter().any(|a| a.eq_ignore_ascii_case(value))
                } else {
                    values.contains(&value)
                };
                if !ok {
                    return Err(bad(format!("strom accepts only {}: {why}", values.join(", "))));
                }
            }
            if let OneOf(allowed) = d.check {
                let ok = if d.kind == Boolean {
                    allowed.iter().any(|a| a.eq_ignore_ascii_case(value))
                } else {
                    allowed.contains(&value)
                };
                if !ok {
                    return Err(bad(format!("must be one of {}", allowed.join(", "))));
                }
            }
        }
        List => {
            if let ListOf(allowed) = d.check {
                let items: Vec<&str> = value.split(',').map(str::trim).collect();
                if items.iter().any(|i| !allowed.contains(i)) || items.is_empty() {
                    return Err(bad(format!("must be a list of {}", allowed.join(", "))));
                }
            }
            if let Replicas = d.check {
                ThrottledReplicas::parse(value).map_err(bad)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    impl TopicConfig {
        /// Kafka's topic defaults, with strom's flush.messages, spelled out.
        fn default_for_tests() -> TopicConfig {
            TopicConfig {
                cleanup_delete: true,
                cleanup_compact: false,
                delete_retention_ms: 86_400_000,
                flush_messages: 1,
                index_interval_bytes: 4096,
                max_compaction_lag_ms: i64::MAX,
                max_message_bytes: 1_048_588,
                message_timestamp_type: MessageTimestampType::CreateTime,
                min_cleanable_dirty_ratio: 0.5,
                min_compaction_lag_ms: 0,
                min_insync_replicas: 1,
                retention_bytes: -1,
                retention_ms: 604_800_000,
                segment_bytes: 1 << 30,
                segment_index_bytes: 10_485_760,
                segment_ms: 604_800_000,
                unclean_leader_election_enable: false,
            }
        }
    }

    #[test]
    fn validation_names_the_key_and_the_fix() {
        assert!(validate_topic_config("retention.ms", "1000").is_ok());
        assert!(validate_topic_config("cleanup.policy", "compact,delete").is_ok());
        assert!(validate_topic_config("unclean.leader.election.enable", "TRUE").is_ok());
        let e = validate_topic_config("retention.ms", "soon").unwrap_err().to_string();
        assert!(e.contains("retention.ms") && e.contains("integer"), "{e}");
        let e = validate_topic_config("min.insync.replicas", "0").unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = validate_topic_config("retension.ms", "1").unwrap_err().to_string();
        assert!(e.contains("unknown topic config 'retension.ms'"), "{e}");
        assert!(validate_topic_config("segment.bytes", "99999999999").is_err());
        assert!(validate_topic_config("message.timestamp.type", "Now").is_err());
    }

    #[test]
    fn configs_strom_does_not_implement_are_refused_by_name() {
        for (key, value) in [("flush.ms", "1000"), ("file.delete.delay.ms", "0")] {
            let e = validate_topic_config(key, value).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("not supported"), "{e}");
        }
        assert!(validate_topic_config("compression.type", "producer").is_ok());
        let e = validate_topic_config("compression.type", "gzip").unwrap_err().to_string();
        assert!(e.contains("compression.type") && e.contains("only producer"), "{e}");
        assert!(validate_topic_config("preallocate", "FALSE").is_ok());
        let e = validate_topic_config("preallocate", "true").unwrap_err().to_string();
        assert!(e.contains("preallocate") && e.contains("only false"), "{e}");
        for (key, _) in REFUSED_TOPIC_CONFIGS {
            assert!(topic_config(key).is_none(), "{key} is both accepted and refused");
        }
    }

    #[test]
    fn every_default_is_valid_and_the_broker_defaults_agree_with_the_table() {
        for d in TOPIC_CONFIGS {
            validate_topic_config(d.name, d.default).unwrap();
            if let Some(v) = d.broker_synonym.and_then(|k| BROKER_DEFAULTS.static_value(k)) {
                assert_eq!(v, d.default, "{} and its broker synonym default differently", d.name);
            }
        }
        assert_eq!(
            TopicConfig::effective(None, &BROKER_DEFAULTS),
            TopicConfig::default_for_tests()
        );
    }

    #[test]
    fn effective_value_is_override_then_broker_then_default() {
        let mut broker = BROKER_DEFAULTS;
        broker.log_retention_ms = 1_000;
        let overrides = BTreeMap::from([("segment.bytes".to_string(), "2048".to_string())]);
        let all = effective_topic_config(Some(&overrides), &broker);
        let get = |key: &str| all.iter().find(|e| e.def.name == key).unwrap();
        let segment = get("segment.bytes");
        assert_eq!((segment.value.as_str(), segment.source), ("2048", ConfigSource::TopicOverride));
        assert_eq!(segment.default_source, ConfigSource::Default);
        assert_eq!(
            segment.synonyms(),
            vec![
                ("segment.bytes", "2048".to_string(), ConfigSource::TopicOverride),
                ("log.segment.bytes", "1073741824".to_string(), ConfigSource::Default),
            ]
        );
        let retention = get("retention.ms");
        assert_eq!(
            (retention.value.as_str(), retention.source),
            ("1000", ConfigSource::StaticBroker)
        );
        assert_eq!(retention.synonyms().len(), 2);
        let lag = get("min.compaction.lag.ms");
        assert_eq!((lag.value.as_str(), lag.source), ("0", ConfigSource::Default));
        assert_eq!(all.len(), TOPIC_CONFIGS.len());
        let typed = TopicConfig::effective(Some(&overrides), &broker);
        assert_eq!((typed.segment_bytes, typed.retention_ms), (2048, 1_000));
        let codes: Vec<i8> =
            [ConfigSource::TopicOverride, ConfigSource::StaticBroker, ConfigSource::Default]
                .iter()
                .map(|s| s.kafka_code())
                .collect();
        assert_eq!(codes, [1, 4, 5]);
    }
}
