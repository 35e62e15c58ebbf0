//! A topic's effective config: its override, else the broker's static value, else the
//! default in [`TOPIC_CONFIGS`]. The one place that precedence is computed; the broker's logs,
//! both DescribeConfigs (Kafka and gRPC) and CreateTopics' answer all read it from here.

use std::collections::BTreeMap;

use super::{topic_config, BrokerDefaults, ConfigDef, MessageTimestampType, TOPIC_CONFIGS};

/// Where an effective value comes from (Kafka's DescribeConfigs `config_source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic (`DYNAMIC_TOPIC_CONFIG`).
    TopicOverride,
    /// Set on this broker at run time (`DYNAMIC_BROKER_CONFIG`).
    DynamicBroker,
    /// Set at run time as every broker's default (`DYNAMIC_DEFAULT_BROKER_CONFIG`).
    DynamicDefaultBroker,
    /// The node's config file or command line (`STATIC_BROKER_CONFIG`).
    StaticBroker,
    /// strom's default (`DEFAULT_CONFIG`).
    Default,
}

impl ConfigSource {
    /// Kafka's `config_source` code.
    pub fn kafka_code(self) -> i8 {
        match self {
            ConfigSource::TopicOverride => 1,
            ConfigSource::DynamicBroker => 2,
            ConfigSource::DynamicDefaultBroker => 3,
            ConfigSource::StaticBroker => 4,
            ConfigSource::Default => 5,
        }
    }
}

/// One topic config key's effective value.
#[derive(Clone, Debug)]
pub struct EffectiveValue {
    pub def: &'static ConfigDef,
    pub value: String,
    pub source: ConfigSource,
    /// What the value would be without the topic's override, and where that comes from.
    pub default_value: String,
    pub default_source: ConfigSource,
}

impl EffectiveValue {
    /// Kafka's synonyms, highest precedence first: the topic override, the broker's static
    /// value, the default (under the broker-level name where there is one).
    pub fn synonyms(&self) -> Vec<(&'static str, String, ConfigSource)> {
        let mut out = Vec::with_capacity(3);
        if self.source == ConfigSource::TopicOverride {
            out.push((self.def.name, self.value.clone(), ConfigSource::TopicOverride));
        }
        let broker_name = self.def.broker_synonym.unwrap_or(self.def.name);
        if self.default_source == ConfigSource::StaticBroker {
            out.push((broker_name, self.default_value.clone(), ConfigSource::StaticBroker));
        }
        out.push((broker_name, self.def.default.to_string(), ConfigSource::Default));
        out
    }
}

/// Every topic config key (in [`TOPIC_CONFIGS`] order) with its effective value, given the
/// topic's overrides and the node's static defaults. The broker's value counts only where it
/// differs from the default: strom cannot tell a default written out in the file from one
/// left unset, and both mean the same.
pub fn effective_topic_config(
    overrides: Option<&BTreeMap<String, String>>,
    broker: &BrokerDefaults,
) -> Vec<EffectiveValue> {
    TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let (default_value, default_source) = match def
                .broker_synonym
                .and_then(|key| broker.static_value(key))
                .filter(|v| v != def.default)
            {
                Some(v) => (v, ConfigSource::StaticBroker),
                None => (def.default.to_string(), ConfigSource::Default),
            };
            let (value, source) = match overrides.and_then(|o| o.get(def.name)) {
                Some(v) => (v.clone(), ConfigSource::TopicOverride),
                None => (default_value.clone(), default_source),
            };
            EffectiveValue { def, value, source, default_value, default_source }
        })
        .collect()
}

/// A topic's effective config, typed: what the broker's logs and replicas act on. Values are
/// validated before they are committed; one that still does not parse (written by an older
/// version) falls back to the key's default.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicConfig {
    /// `cleanup.policy` has `delete`: retention deletes old segments.
    pub cleanup_delete: bool,
    /// `cleanup.policy` has `compact`.
    pub cleanup_compact: bool,
    pub delete_retention_ms: i64,
    /// 1: acknowledge only fsynced data; more: acknowledge once written, flush periodically.
    pub flush_messages: i64,
    pub index_interval_bytes: u32,
    pub max_compaction_lag_ms: i64,
    pub max_message_bytes: u32,
    pub message_timestamp_type: MessageTimestampType,
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: i64,
    pub min_insync_replicas: i32,
    /// -1: unlimited.
    pub retention_bytes: i64,
    /// -1: unlimited.
    pub retention_ms: i64,
    pub segment_bytes: u64,
    pub segment_index_bytes: u32,
    pub segment_ms: i64,
    pub unclean_leader_election_enable: bool,
}

impl TopicConfig {
    /// The effective typed config of a topic with these overrides.
    pub fn effective(
        overrides: Option<&BTreeMap<String, String>>,
        broker: &BrokerDefaults,
    ) -> TopicConfig {
        let values: BTreeMap<&'static str, String> = effective_topic_config(overrides, broker)
            .into_iter()
            .map(|e| (e.def.name, e.value))
            .collect();
        let text = |key: &str| -> &str {
            values.get(key).map(String::as_str).expect("every TOPIC_CONFIGS key has a value")
        };
        fn parsed<T: std::str::FromStr>(key: &str, value: &str) -> T {
            if let Ok(v) = value.trim().parse() {
                return v;
            }
            let default = topic_config(key).map_or("", |d| d.default);
            match default.parse() {
                Ok(v) => v,
                Err(_) => panic!("the default of {key} ({default:?}) does not parse as its type"),
            }
        }
        let num = |key: &str| -> i64 { parsed(key, text(key)) };
        let int = |key: &str| -> u32 { num(key).clamp(0, i64::from(u32::MAX)) as u32 };
        let policy = text("cleanup.policy");
        let has = |item: &str| policy.split(',').any(|i| i.trim().eq_ignore_ascii_case(item));
        let (cleanup_delete, cleanup_compact) = match (has("delete"), has("compact")) {
            (false, false) => (true, false),
            both => both,
        };
        let ratio: f64 = parsed("min.cleanable.dirty.ratio", text("min.cleanable.dirty.ratio"));
        TopicConfig {
            cleanup_delete,
            cleanup_compact,
            delete_retention_ms: num("delete.retention.ms").max(0),
            flush_messages: num("flush.messages").max(1),
            index_interval_bytes: int("index.interval.bytes"),
            max_compaction_lag_ms: num("max.compaction.lag.ms").max(1),
            max_message_bytes: int("max.message.bytes"),
            message_timestamp_type: MessageTimestampType::parse(text("message.timestamp.type"))
                .unwrap_or(MessageTimestampType::CreateTime),
            min_cleanable_dirty_ratio: if (0.0..=1.0).contains(&ratio) { ratio } else { 0.5 },
            min_compaction_lag_ms: num("min.compaction.lag.ms").max(0),
            min_insync_replicas: num("min.insync.replicas").clamp(1, i64::from(i32::MAX)) as i32,
            retention_bytes: num("retention.bytes").max(-1),
            retention_ms: num("retention.ms").max(-1),
            segment_bytes: num("segment.bytes").max(14) as u64,
            segment_index_bytes: int("segment.index.bytes").max(4),
            segment_ms: num("segment.ms").max(1),
            unclean_leader_election_enable: text("unclean.leader.election.enable")
                .eq_ignore_ascii_case("true"),
        }
    }
}
