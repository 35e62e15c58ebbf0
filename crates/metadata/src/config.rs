//! Topic configuration keys: Kafka's names, types, defaults and validation.
//!
//! The metadata image stores only overrides; a key's effective value is the topic override, else
//! the broker's static default, else the default here.

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

/// Every topic config strom accepts. `flush.messages` differs from Kafka's default on purpose:
/// strom acknowledges a produce only after an fsync (group commit) unless this is raised above 1.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    def("cleanup.policy", List, "delete", ListOf(&["delete", "compact"]), Some("log.cleanup.policy"), "Retention policy: delete old segments, compact by key, or both."),
    def("compression.type", String, "producer", OneOf(&["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"]), Some("compression.type"), "Final compression of the topic; strom stores batches as the producer sent them."),
    def("delete.retention.ms", Long, "86400000", AtLeast(0), Some("log.cleaner.delete.retention.ms"), "How long tombstones are kept on compacted topics."),
    def("file.delete.delay.ms", Long, "60000", AtLeast(0), Some("log.segment.delete.delay.ms"), "Delay before a deleted segment's file is removed."),
    def("flush.messages", Long, "1", AtLeast(1), Some("log.flush.interval.messages"), "1 (strom's default): a produce is acknowledged only after its bytes are fsynced (group commit). Larger values leave flushing to the OS."),
    def("flush.ms", Long, LONG_MAX, AtLeast(0), Some("log.flush.interval.ms"), "Maximum time before data is fsynced when flush.messages > 1."),
    def("index.interval.bytes", Int, "4096", AtLeast(0), Some("log.index.interval.bytes"), "Bytes between offset index entries."),
    def("max.compaction.lag.ms", Long, LONG_MAX, AtLeast(1), Some("log.cleaner.max.compaction.lag.ms"), "Longest time a record stays uncompacted."),
    def("max.message.bytes", Int, "1048588", AtLeast(0), Some("message.max.bytes"), "Largest record batch the topic accepts."),
    def("message.timestamp.type", String, "CreateTime", OneOf(&["CreateTime", "LogAppendTime"]), Some("log.message.timestamp.type"), "Whether record timestamps are the producer's or the broker's append time."),
    def("min.cleanable.dirty.ratio", Double, "0.5", Ratio, Some("log.cleaner.min.cleanable.ratio"), "Dirty ratio at which compaction starts."),
    def("min.compaction.lag.ms", Long, "0", AtLeast(0), Some("log.cleaner.min.compaction.lag.ms"), "Shortest time a record stays uncompacted."),
    def("min.insync.replicas", Int, "1", AtLeast(1), Some("min.insync.replicas"), "Replicas that must acknowledge an acks=all write."),
    def("preallocate", Boolean, "false", OneOf(&["true", "false"]), Some("log.preallocate"), "Preallocate segment files."),
    def("retention.bytes", Long, "-1", AtLeast(-1), Some("log.retention.bytes"), "Largest size of a partition's log before old segments are deleted; -1 is unlimited."),
    def("retention.ms", Long, "604800000", AtLeast(-1), Some("log.retention.ms"), "Longest time a segment is kept; -1 is unlimited."),
    def("segment.bytes", Int, "1073741824", AtLeast(14), Some("log.segment.bytes"), "Size at which a segment rolls."),
    def("segment.index.bytes", Int, "10485760", AtLeast(4), Some("log.index.size.max.bytes"), "Largest size of an offset index."),
    def("segment.ms", Long, "604800000", AtLeast(1), Some("log.roll.ms"), "Age at which a segment rolls."),
    def("unclean.leader.election.enable", Boolean, "false", OneOf(&["true", "false"]), Some("unclean.leader.election.enable"), "Allow an out-of-sync replica to become leader (may lose data)."),
];

pub fn topic_config(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks a topic config key and value; the error names the key and what would be accepted.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), ControlError> {
    let Some(d) = topic_config(name) else {
        return Err(ControlError::InvalidConfig(format!(
            "unknown topic config '{name}'; known keys: {}",
            TOPIC_CONFIGS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
        )));
    };
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
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
