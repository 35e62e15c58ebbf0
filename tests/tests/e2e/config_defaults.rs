//! The configuration a Kafka client sees (DescribeConfigs): a node started without a config
//! file runs with `config/single.toml`'s values, each reported as a default; a topic's configs
//! say where each value comes from; topic configs strom does not implement are refused; the
//! transaction coordinator runs with the node's `[transaction]` settings.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, InitProducerIdRequest,
    InitProducerIdResponse, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminOptions, ConfigSource, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use strom_tests::raw::RawConnection;
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
    let set_by_the_harness = ["listeners", "log.dirs", "metrics.listener"];
    for (key, value) in &shipped {
        let (got, source) = reported.get(key).with_context(|| format!("{key} not reported"))?;
        if set_by_the_harness.contains(&key.as_str()) {
            assert_eq!(*source, ConfigSource::StaticBroker, "{key}");
            continue;
        }
        assert_eq!(got.as_deref(), Some(value.as_str()), "{key}: config/single.toml says {value}");
        assert_eq!(*source, ConfigSource::Default, "{key}");
    }
    // Dynamic-only broker configs (set with AlterConfigs, never in a file).
    let dynamic = ["leader.replication.throttled.rate", "follower.replication.throttled.rate"];
    for key in reported.keys() {
        assert!(
            shipped.contains_key(key) || key == "broker.id" || dynamic.contains(&key.as_str()),
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

/// Kafka's INVALID_TRANSACTION_TIMEOUT.
const INVALID_TRANSACTION_TIMEOUT: i16 = 50;

/// InitProducerId for `txn_id` asking `timeout_ms`, after FindCoordinator (which creates
/// `__transaction_state`); asked again while the coordinator is not ready (14, 15, 16).
fn init_producer_id(
    conn: &mut RawConnection,
    txn_id: &str,
    timeout_ms: i32,
) -> anyhow::Result<i16> {
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    loop {
        let find = FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_key(StrBytes::from_string(txn_id.to_owned()));
        let version = conn.max_version(ApiKey::FindCoordinator)?.min(3);
        let id = conn.send_request(ApiKey::FindCoordinator as i16, version, &find, version)?;
        let _: FindCoordinatorResponse = conn.read_response(id, version)?;
        let init = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_string(txn_id.to_owned()))))
            .with_transaction_timeout_ms(timeout_ms);
        let version = conn.max_version(ApiKey::InitProducerId)?.min(4);
        let id = conn.send_request(ApiKey::InitProducerId as i16, version, &init, version)?;
        let answer: InitProducerIdResponse = conn.read_response(id, version)?;
        if !matches!(answer.error_code, 14..=16) {
            return Ok(answer.error_code);
        }
        ensure!(Instant::now() < deadline, "InitProducerId {txn_id}: error {}", answer.error_code);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn transaction_settings_of_the_node_config_take_effect() -> anyhow::Result<()> {
    let node = StromNode::start(NodeOptions {
        config_toml: Some(
            "[transaction]\nmax_timeout_ms = 5000\nstate_log_num_partitions = 3\n\
             state_log_segment_bytes = 1048576\n"
                .into(),
        ),
        ..NodeOptions::default()
    })?;
    let bootstrap = node.bootstrap();
    let reported = describe(&bootstrap, ResourceSpecifier::Broker(1))?;
    let entry = |key: &str| reported.get(key).map(|(v, s)| (v.as_deref(), s));
    assert_eq!(
        entry("transaction.max.timeout.ms"),
        Some((Some("5000"), &ConfigSource::StaticBroker))
    );
    assert_eq!(entry("transaction.state.log.min.isr"), Some((Some("2"), &ConfigSource::Default)));

    let mut conn = RawConnection::connect(node.kafka_addr())?;
    assert_eq!(init_producer_id(&mut conn, "capped", 5_000)?, 0, "at the maximum");
    assert_eq!(
        init_producer_id(&mut conn, "capped", 10_000)?,
        INVALID_TRANSACTION_TIMEOUT,
        "above transaction.max.timeout.ms"
    );
    // The topic was created with the node's state_log_* settings.
    assert_eq!(kafka::topic_partitions(&bootstrap, "__transaction_state")?.len(), 3);
    let configs = kafka::describe_topic_configs(&bootstrap, "__transaction_state")?;
    assert_eq!(configs.get("segment.bytes"), Some(&Some("1048576".to_owned())));
    // min.isr 2 capped by the single node's replication factor.
    assert_eq!(configs.get("min.insync.replicas"), Some(&Some("1".to_owned())));
    Ok(())
}
