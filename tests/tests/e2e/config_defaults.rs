//! The configuration a Kafka client sees (DescribeConfigs): a node started without a config
//! file runs with `config/single.toml`'s values, each reported as a default; a topic's configs
//! say where each value comes from; topic configs strom does not implement are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminOptions, ConfigSource, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use strom_tests::{kafka, NodeOptions, StromNode};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);

/// `config/single.toml` as the dotted names DescribeConfigs reports: the section, then the key
/// with `_` as `.` (`[log]` `segment_bytes` is `log.segment.bytes`); lists comma-separated.
fn single_toml() -> anyhow::Result<BTreeMap<String, String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/single.toml");
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{name}.");
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { bail!("{path}: {line:?}") };
        let value = value.trim();
        let value = match value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            Some(list) => {
                list.split(',').map(|i| i.trim().trim_matches('"')).collect::<Vec<_>>().join(",")
            }
            None => value.trim_matches('"').to_string(),
        };
        out.insert(format!("{section}{}", key.trim().replace('_', ".")), value);
    }
    Ok(out)
}

fn options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT)).operation_timeout(Some(ADMIN_TIMEOUT))
}

/// name → (value, source) of one resource.
fn describe(
    bootstrap: &str,
    resource: ResourceSpecifier<'_>,
) -> anyhow::Result<BTreeMap<String, (Option<String>, ConfigSource)>> {
    let admin = kafka::admin(bootstrap)?;
    let result = kafka::block_on(admin.describe_configs([&resource], &options()))?
        .context("DescribeConfigs request")?
        .into_iter()
        .next()
        .context("DescribeConfigs returned no resource")?
        .map_err(|code| anyhow::anyhow!("DescribeConfigs {resource:?}: {code:?}"))?;
    Ok(result.entries.into_iter().map(|e| (e.name, (e.value, e.source))).collect())
}

#[test]
fn a_node_without_a_config_file_runs_with_single_toml() -> anyhow::Result<()> {
    let node = StromNode::start(NodeOptions::default())?;
    let reported = describe(&node.bootstrap(), ResourceSpecifier::Broker(1))?;
    let shipped = single_toml()?;
    assert!(shipped.len() > 30, "{shipped:?}");
    // The harness gives the node its own ports and data directory.
    let set_by_the_harness = ["listeners", "log.dirs"];
    for (key, value) in &shipped {
        let (got, source) = reported.get(key).with_context(|| format!("{key} not reported"))?;
        if set_by_the_harness.contains(&key.as_str()) {
            assert_eq!(*source, ConfigSource::StaticBroker, "{key}");
            continue;
        }
        assert_eq!(got.as_deref(), Some(value.as_str()), "{key}: config/single.toml says {value}");
        assert_eq!(*source, ConfigSource::Default, "{key}");
    }
    for key in reported.keys() {
        assert!(
            shipped.contains_key(key) || key == "broker.id",
            "the node reports {key}, which config/single.toml does not spell out"
        );
    }
    Ok(())
}

#[test]
fn topic_configs_say_where_each_value_comes_from_and_unimplemented_ones_are_refused(
) -> anyhow::Result<()> {
    let node = StromNode::start(NodeOptions {
        config_toml: Some("[log]\nretention_ms = 3600000\n".into()),
        ..NodeOptions::default()
    })?;
    let bootstrap = node.bootstrap();
    kafka::create_topic(&bootstrap, "configured", 1, &[("segment.ms", "60000")])?;
    let configs = describe(&bootstrap, ResourceSpecifier::Topic("configured"))?;
    let entry = |key: &str| configs.get(key).map(|(v, s)| (v.as_deref(), s));
    assert_eq!(entry("segment.ms"), Some((Some("60000"), &ConfigSource::DynamicTopic)));
    assert_eq!(entry("retention.ms"), Some((Some("3600000"), &ConfigSource::StaticBroker)));
    assert_eq!(entry("segment.bytes"), Some((Some("1073741824"), &ConfigSource::Default)));
    assert_eq!(entry("flush.ms"), None, "not a config strom has");

    let admin = kafka::admin(&bootstrap)?;
    for (key, value) in
        [("flush.ms", "1000"), ("compression.type", "gzip"), ("preallocate", "true")]
    {
        let topic = NewTopic::new("refused", 1, TopicReplication::Fixed(1)).set(key, value);
        let results = kafka::block_on(admin.create_topics([&topic], &options()))?
            .context("CreateTopics request")?;
        match results.into_iter().next() {
            Some(Err((_, code))) => {
                assert_eq!(code, RDKafkaErrorCode::InvalidConfig, "{key}={value}")
            }
            other => bail!("{key}={value} was not refused: {other:?}"),
        }
    }
    Ok(())
}
