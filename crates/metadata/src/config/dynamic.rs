//! Dynamic broker configs (set with AlterConfigs on a BROKER resource and kept in the metadata
//! log) and the replication throttles they and two topic configs make up (Kafka's
//! `*.replication.throttled.rate` and `*.replication.throttled.replicas`, KIP-73).
//!
//! A broker's value of a dynamic key is its own override (resource name = its id), else the
//! cluster-wide default (resource name = ""), else the default here.

use std::collections::{BTreeMap, BTreeSet};

use super::{check_value, def, ConfigDef, ConfigSource, BROKER_DEFAULTS, LONG_MAX};
use crate::config::Check::AtLeast;
use crate::config::ConfigType::Long;
use crate::records::ConfigResourceType;
use crate::{ControlError, MetadataImage, NodeId};

pub const LEADER_REPLICATION_THROTTLED_RATE: &str = "leader.replication.throttled.rate";
pub const FOLLOWER_REPLICATION_THROTTLED_RATE: &str = "follower.replication.throttled.rate";
pub const LEADER_REPLICATION_THROTTLED_REPLICAS: &str = "leader.replication.throttled.replicas";
pub const FOLLOWER_REPLICATION_THROTTLED_REPLICAS: &str = "follower.replication.throttled.replicas";

/// Every broker config that may be set at run time, each of which takes effect at once.
pub const DYNAMIC_BROKER_CONFIGS: &[ConfigDef] = &[
    def(FOLLOWER_REPLICATION_THROTTLED_RATE, Long, LONG_MAX, AtLeast(0), None, "Bytes per second this broker's replicas may fetch, summed over the partitions its topics list in follower.replication.throttled.replicas, while those replicas are out of the ISR."),
    def(LEADER_REPLICATION_THROTTLED_RATE, Long, LONG_MAX, AtLeast(0), None, "Bytes per second this broker may send to followers out of the ISR, summed over the partitions its topics list in leader.replication.throttled.replicas."),
];

pub fn dynamic_broker_config(name: &str) -> Option<&'static ConfigDef> {
    DYNAMIC_BROKER_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks a key and value set on a BROKER resource: only [`DYNAMIC_BROKER_CONFIGS`] may be
/// set; the node's other settings are read-only (its config file), and the error says so.
pub fn validate_broker_config(name: &str, value: &str) -> Result<(), ControlError> {
    match dynamic_broker_config(name) {
        Some(d) => check_value(d, value),
        None if is_static_broker_key(name) => Err(ControlError::InvalidConfig(format!(
            "broker config '{name}' is read-only: set it in the node's config file and restart"
        ))),
        None => Err(ControlError::InvalidConfig(format!(
            "unknown dynamic broker config '{name}'; dynamic keys: {}",
            DYNAMIC_BROKER_CONFIGS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn is_static_broker_key(name: &str) -> bool {
    name == "broker.id"
        || name == "node.id"
        || BROKER_DEFAULTS.static_value(name).is_some()
        || super::TOPIC_CONFIGS.iter().any(|d| d.broker_synonym == Some(name))
}

/// One dynamic broker key's effective value on a broker.
#[derive(Clone, Debug)]
pub struct DynamicValue {
    pub def: &'static ConfigDef,
    pub value: String,
    pub source: ConfigSource,
    /// Kafka's synonyms (value, source), highest precedence first; the first is `value`.
    pub synonyms: Vec<(String, ConfigSource)>,
}

/// The effective value of every dynamic key on broker `node`.
pub fn effective_broker_config(image: &MetadataImage, node: NodeId) -> Vec<DynamicValue> {
    let own = broker_configs(image, &node.0.to_string());
    let cluster = broker_configs(image, "");
    DYNAMIC_BROKER_CONFIGS
        .iter()
        .map(|d| {
            let mut synonyms = Vec::with_capacity(3);
            if let Some(v) = own.and_then(|c| c.get(d.name)) {
                synonyms.push((v.clone(), ConfigSource::DynamicBroker));
            }
            if let Some(v) = cluster.and_then(|c| c.get(d.name)) {
                synonyms.push((v.clone(), ConfigSource::DynamicDefaultBroker));
            }
            synonyms.push((d.default.to_string(), ConfigSource::Default));
            let (value, source) = synonyms[0].clone();
            DynamicValue { def: d, value, source, synonyms }
        })
        .collect()
}

fn broker_configs<'a>(
    image: &'a MetadataImage,
    name: &str,
) -> Option<&'a BTreeMap<String, String>> {
    image.configs.get(&(ConfigResourceType::ConfigResourceBroker as i32, name.to_string()))
}

/// The two replication throttle rates of one broker, bytes per second; `None`: unlimited
/// (Kafka's default, `Long.MAX_VALUE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicationThrottles {
    pub leader_bytes_per_s: Option<u64>,
    pub follower_bytes_per_s: Option<u64>,
}

impl ReplicationThrottles {
    pub fn of(image: &MetadataImage, node: NodeId) -> ReplicationThrottles {
        let mut out = ReplicationThrottles::default();
        for DynamicValue { def: d, value, .. } in effective_broker_config(image, node) {
            // Validated when set; a value that does not parse counts as the default.
            let rate = value.trim().parse::<i64>().ok().filter(|r| *r >= 0 && *r < i64::MAX);
            let rate = rate.map(|r| r as u64);
            match d.name {
                LEADER_REPLICATION_THROTTLED_RATE => out.leader_bytes_per_s = rate,
                FOLLOWER_REPLICATION_THROTTLED_RATE => out.follower_bytes_per_s = rate,
                _ => {}
            }
        }
        out
    }
}

/// A topic's `*.replication.throttled.replicas`: which replicas the throttle applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ThrottledReplicas {
    #[default]
    None,
    /// `*`: every replica of the topic.
    All,
    /// (partition, broker) pairs.
    Listed(BTreeSet<(i32, i32)>),
}

impl ThrottledReplicas {
    /// `*`, or `partition:brokerId` items separated by commas (blanks around them allowed;
    /// empty: none).
    pub fn parse(value: &str) -> Result<ThrottledReplicas, String> {
        let value = value.trim();
        if value == "*" {
            return Ok(ThrottledReplicas::All);
        }
        let mut listed = BTreeSet::new();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let pair = item.split_once(':').and_then(|(p, b)| {
                let p: i32 = p.trim().parse().ok().filter(|p| *p >= 0)?;
                let b: i32 = b.trim().parse().ok().filter(|b| *b >= 0)?;
                Some((p, b))
            });
            match pair {
                Some(pair) => {
                    listed.insert(pair);
                }
                None => {
                    return Err(format!(
                        "'{item}' is not partition:brokerId; give '*' or a list such as 0:1,0:2"
                    ))
                }
            }
        }
        Ok(if listed.is_empty() {
            ThrottledReplicas::None
        } else {
            ThrottledReplicas::Listed(listed)
        })
    }

    /// The value of `key` in a topic's overrides (a value that does not parse throttles
    /// nothing; values are validated when set).
    pub fn of_topic(overrides: Option<&BTreeMap<String, String>>, key: &str) -> ThrottledReplicas {
        overrides
            .and_then(|o| o.get(key))
            .and_then(|v| ThrottledReplicas::parse(v).ok())
            .unwrap_or_default()
    }

    /// Whether the replica of `partition` on `node` is throttled.
    pub fn throttles(&self, partition: i32, node: NodeId) -> bool {
        match self {
            ThrottledReplicas::None => false,
            ThrottledReplicas::All => true,
            ThrottledReplicas::Listed(pairs) => pairs.contains(&(partition, node.0)),
        }
    }

    pub fn is_none(&self) -> bool {
        *self == ThrottledReplicas::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::metadata_record::Record;
    use crate::records::{ConfigRecord, MetadataRecord};
    use crate::MetadataOffset;

    #[test]
    fn throttled_replicas_are_a_star_or_partition_broker_pairs() {
        assert_eq!(ThrottledReplicas::parse("*"), Ok(ThrottledReplicas::All));
        assert_eq!(ThrottledReplicas::parse(""), Ok(ThrottledReplicas::None));
        let listed = ThrottledReplicas::parse("0:1, 1:2").unwrap();
        assert!(listed.throttles(0, NodeId(1)) && listed.throttles(1, NodeId(2)));
        assert!(!listed.throttles(0, NodeId(2)) && !listed.throttles(2, NodeId(1)));
        for bad in ["0", "a:1", "0:1,*", "0:-1", "0:1:2"] {
            let e = ThrottledReplicas::parse(bad).unwrap_err();
            assert!(e.contains("partition:brokerId"), "{bad}: {e}");
        }
        let e = super::super::validate_topic_config(LEADER_REPLICATION_THROTTLED_REPLICAS, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains(LEADER_REPLICATION_THROTTLED_REPLICAS), "{e}");
    }

    #[test]
    fn only_dynamic_broker_keys_may_be_set_and_errors_name_the_key() {
        validate_broker_config(LEADER_REPLICATION_THROTTLED_RATE, "51200").unwrap();
        let e = validate_broker_config(FOLLOWER_REPLICATION_THROTTLED_RATE, "-5").unwrap_err();
        assert!(e.to_string().contains(FOLLOWER_REPLICATION_THROTTLED_RATE), "{e}");
        let e = validate_broker_config("log.retention.ms", "1").unwrap_err().to_string();
        assert!(e.contains("'log.retention.ms' is read-only"), "{e}");
        let e = validate_broker_config("no.such.key", "1").unwrap_err().to_string();
        assert!(e.contains("unknown dynamic broker config 'no.such.key'"), "{e}");
        for d in DYNAMIC_BROKER_CONFIGS {
            validate_broker_config(d.name, d.default).unwrap();
        }
    }

    #[test]
    fn a_broker_value_is_its_own_then_the_cluster_default_then_unlimited() {
        let record = |name: &str, key: &str, value: &str| MetadataRecord {
            record: Some(Record::Config(ConfigRecord {
                resource_type: ConfigResourceType::ConfigResourceBroker as i32,
                resource_name: name.into(),
                name: key.into(),
                value: Some(value.into()),
            })),
        };
        let image = MetadataImage::from_records(
            MetadataOffset(1),
            &[
                record("", LEADER_REPLICATION_THROTTLED_RATE, "1000"),
                record("2", LEADER_REPLICATION_THROTTLED_RATE, "2000"),
                record("2", FOLLOWER_REPLICATION_THROTTLED_RATE, "3000"),
            ],
        )
        .unwrap();
        let of = |n| ReplicationThrottles::of(&image, NodeId(n));
        assert_eq!(
            of(1),
            ReplicationThrottles { leader_bytes_per_s: Some(1000), follower_bytes_per_s: None }
        );
        assert_eq!(
            of(2),
            ReplicationThrottles {
                leader_bytes_per_s: Some(2000),
                follower_bytes_per_s: Some(3000)
            }
        );
        let all = effective_broker_config(&image, NodeId(2));
        let leader = all.iter().find(|e| e.def.name == LEADER_REPLICATION_THROTTLED_RATE).unwrap();
        assert_eq!((leader.value.as_str(), leader.source), ("2000", ConfigSource::DynamicBroker));
        assert_eq!(
            leader.synonyms.iter().map(|s| s.1).collect::<Vec<_>>(),
            [
                ConfigSource::DynamicBroker,
                ConfigSource::DynamicDefaultBroker,
                ConfigSource::Default
            ]
        );
    }
}
