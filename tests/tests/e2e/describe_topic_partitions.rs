//! DescribeTopicPartitions (Kafka API 75, KIP-966) driven by kafka-python's
//! `KafkaAdminClient.describe_topic_partitions` against a 3-node cluster: each partition as
//! Metadata shows it, and paging by `next_cursor` that returns every partition exactly once.
//! (librdkafka 2.16's `describe_topics` does not send API 75: it uses Metadata.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::Value;
use strom_tests::clients::{run_to_exit, Library, SCRIPT_RUN_TIMEOUT};
use strom_tests::raw::RawConnection;
use strom_tests::{kafka, wait_until, with_cluster, ClusterOptions, StromCluster};

const SCRIPT: &str = "describe_topic_partitions";
const WAIT: Duration = Duration::from_secs(60);
/// (topic, partitions), each with 3 replicas.
const TOPICS: [(&str, i32); 3] = [("dtp-a", 3), ("dtp-b", 2), ("dtp-c", 4)];
const OFFSETS_TOPIC: &str = "__consumer_offsets";
const UNKNOWN_TOPIC_OR_PARTITION: i64 = 3;

/// The script's pages: `--topic` for each of `topics` (none: every topic), `limit` partitions
/// a page, every page when `all_pages`.
fn describe(
    cluster: &StromCluster,
    topics: &[&str],
    limit: i32,
    all_pages: bool,
) -> anyhow::Result<Vec<Value>> {
    let mut command = Library::KafkaPython.command(SCRIPT)?;
    command.args(["--bootstrap", &cluster.bootstrap(), "--limit", &limit.to_string()]);
    for topic in topics {
        command.args(["--topic", topic]);
    }
    if all_pages {
        command.arg("--all-pages");
    }
    let run = run_to_exit(command, SCRIPT_RUN_TIMEOUT)?;
    ensure!(run.status.success(), "kafka-python {SCRIPT}: {}", run.stderr_tail(40));
    let pages: Value = serde_json::from_str(run.stdout.trim())
        .with_context(|| format!("printed {:?}", run.stdout))?;
    pages.as_array().cloned().context("a list of pages")
}

fn ids(value: &Value) -> anyhow::Result<Vec<i32>> {
    value
        .as_array()
        .context("a list of node ids")?
        .iter()
        .map(|v| v.as_i64().map(|n| n as i32).context("a node id"))
        .collect()
}

/// (topic, partition) → (leader, replicas, isr) of every described partition, in the order
/// the pages list them.
type Described = Vec<((String, i32), State)>;
/// (leader, replicas, isr) of one partition.
type State = (i32, Vec<i32>, Vec<i32>);

fn partitions_of(pages: &[Value]) -> anyhow::Result<Described> {
    let mut out = Vec::new();
    for page in pages {
        for topic in page["topics"].as_array().context("topics")? {
            let name = topic["name"].as_str().context("topic name")?.to_owned();
            for p in topic["partitions"].as_array().context("partitions")? {
                let index = p["partition_index"].as_i64().context("partition_index")? as i32;
                let state = (
                    p["leader_id"].as_i64().context("leader_id")? as i32,
                    ids(&p["replica_nodes"])?,
                    ids(&p["isr_nodes"])?,
                );
                out.push(((name.clone(), index), state));
            }
        }
    }
    Ok(out)
}

/// Metadata of `topics` that every running node agrees on.
fn agreed_metadata(
    cluster: &StromCluster,
    topics: &[&str],
) -> anyhow::Result<BTreeMap<(String, i32), State>> {
    wait_until(WAIT, "every node shows the same partitions", || {
        let mut seen = Vec::new();
        for id in cluster.running() {
            let metadata = cluster.metadata(id)?;
            let mut state = BTreeMap::new();
            for topic in topics {
                let t = metadata.topic(topic).with_context(|| format!("node {id}: no {topic}"))?;
                for (&index, p) in &t.partitions {
                    state.insert(
                        (topic.to_string(), index),
                        (p.leader, p.replicas.clone(), p.isr.clone()),
                    );
                }
            }
            seen.push(state);
        }
        Ok(seen.windows(2).all(|w| w[0] == w[1]).then(|| seen.swap_remove(0)))
    })
}

fn describe_topic_partitions_requests(cluster: &StromCluster) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for id in cluster.running() {
        let scrape = cluster.node(id).scrape()?;
        total += scrape
            .value("strom_requests_total", &[("api", "DescribeTopicPartitions")])
            .unwrap_or(0.0);
    }
    Ok(total)
}

/// The group coordinator's topic, created by a FindCoordinator lookup as a consumer makes it.
fn create_offsets_topic(cluster: &StromCluster) -> anyhow::Result<()> {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    use kafka_protocol::protocol::StrBytes;
    wait_until(WAIT, "the group coordinator is found", || {
        let mut connection = RawConnection::connect(cluster.kafka_addr(1))?;
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_static_str("dtp-group"))
            .with_key_type(0);
        let id = connection.send_request(ApiKey::FindCoordinator as i16, 3, &request, 3)?;
        let response: FindCoordinatorResponse = connection.read_response(id, 3)?;
        Ok((response.error_code == 0).then_some(()))
    })?;
    cluster.wait_topic_everywhere(OFFSETS_TOPIC, 2)
}

#[test]
fn kafka_python_describe_topic_partitions_matches_metadata_and_pages_every_partition_once() {
    Library::KafkaPython.require(SCRIPT);
    let options = ClusterOptions {
        extra_toml: "offsets.topic_num_partitions = 2\n".into(),
        ..ClusterOptions::default()
    };
    with_cluster(3, options, |cluster| {
        for (topic, partitions) in TOPICS {
            kafka::create_topic_replicated(&cluster.bootstrap(), topic, partitions, 3)?;
        }
        for (topic, partitions) in TOPICS {
            cluster.wait_topic_everywhere(topic, partitions as usize)?;
            cluster.wait_isr_full(topic, WAIT)?;
        }
        create_offsets_topic(cluster)?;
        let names: Vec<&str> = TOPICS.iter().map(|(t, _)| *t).collect();
        let metadata = agreed_metadata(cluster, &names)?;
        let before = describe_topic_partitions_requests(cluster)?;

        // One page of the named topics (and one that does not exist), in name order.
        let mut asked = names.clone();
        asked.insert(1, "dtp-missing");
        let pages = describe(cluster, &asked, 2000, false)?;
        ensure!(pages.len() == 1 && pages[0]["next_cursor"].is_null(), "one page: {pages:?}");
        let listed: Vec<(&str, i64, bool)> = pages[0]["topics"]
            .as_array()
            .context("topics")?
            .iter()
            .map(|t| {
                let name = t["name"].as_str().unwrap_or_default();
                (name, t["error_code"].as_i64().unwrap_or(-1), t["is_internal"] == true)
            })
            .collect();
        let want = [
            ("dtp-a", 0, false),
            ("dtp-b", 0, false),
            ("dtp-c", 0, false),
            ("dtp-missing", UNKNOWN_TOPIC_OR_PARTITION, false),
        ];
        ensure!(listed == want, "listed {listed:?}, expected {want:?}");
        let described: BTreeMap<_, _> = partitions_of(&pages)?.into_iter().collect();
        ensure!(described == metadata, "described {described:?}\nMetadata {metadata:?}");

        // Pages of two partitions: they cross topic boundaries and list each partition once.
        let pages = describe(cluster, &names, 2, true)?;
        let crossing = pages.iter().filter(|p| p["topics"].as_array().is_some_and(|t| t.len() > 1));
        ensure!(crossing.count() > 0, "no page spans two topics: {pages:?}");
        let paged = partitions_of(&pages)?;
        let order: Vec<_> = paged.iter().map(|(key, _)| key.clone()).collect();
        let expected: Vec<_> = metadata.keys().cloned().collect();
        ensure!(order == expected, "paged {order:?}, expected each once in order {expected:?}");
        ensure!(paged.into_iter().collect::<BTreeMap<_, _>>() == metadata);

        // Every topic, three partitions a page: the topics Metadata lists, internal ones too.
        let pages = describe(cluster, &[], 3, true)?;
        let every: BTreeSet<String> =
            partitions_of(&pages)?.into_iter().map(|((topic, _), _)| topic).collect();
        let listed_by_metadata: BTreeSet<String> =
            cluster.metadata(1)?.topics.keys().cloned().collect();
        ensure!(every == listed_by_metadata, "listed {every:?}, Metadata {listed_by_metadata:?}");
        let internal = pages
            .iter()
            .flat_map(|p| p["topics"].as_array().cloned().unwrap_or_default())
            .find(|t| t["name"] == OFFSETS_TOPIC)
            .context("no offsets topic listed")?;
        ensure!(internal["is_internal"] == true, "{internal}");

        // The client sent API 75 (not Metadata in its place).
        let after = describe_topic_partitions_requests(cluster)?;
        if after <= before {
            bail!("no DescribeTopicPartitions request counted ({before} -> {after})");
        }
        Ok(())
    });
}
