//! The dynamic metadata quorum (KIP-853, issue 15) on real processes: a fourth node started
//! with `controller.quorum_bootstrap_servers` joins as an observer and is made a voter with the
//! real CLI; an original voter's disk is replaced, and the node that comes back under the same
//! id with a new directory id is refused as its former self until that voter is removed, then
//! added again; all of it under an acks=all librdkafka producer whose acknowledgements never
//! stop for more than 2 s, while topics are created, none of which is lost. And DescribeQuorum
//! answered over the Kafka protocol (kafka-python's admin client, and the raw codec at v2) and
//! by `strom cluster describe --output json`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::{ApiKey, DescribeQuorumRequest, DescribeQuorumResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde_json::Value;
use strom_proto::admin as pb;
use strom_tests::clients::{run_to_exit, Library, SCRIPT_RUN_TIMEOUT};
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::raw::RawConnection;
use strom_tests::{wait_until, with_cluster, ClusterOptions, StromCluster, READY_TIMEOUT};

/// The longest an acks=all producer may go without an acknowledgement (done-when 7).
const STALL_MAX: Duration = Duration::from_secs(2);
/// Bound for a membership state to show up in DescribeQuorum.
const QUORUM_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two topic creations of the metadata writer.
const CREATE_EVERY: Duration = Duration::from_millis(250);

/// Acknowledged records and created topics a phase of the test waits for, so that every
/// change happens under a load that has run for a while (about three seconds each).
const ACKS_PER_PHASE: usize = 600;
const TOPICS_PER_PHASE: usize = 10;

/// An acks=all librdkafka producer sending to one topic from its own thread until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    thread: JoinHandle<anyhow::Result<LoadReport>>,
}

#[derive(Debug)]
struct LoadReport {
    sent: usize,
    acked: usize,
    failed: Vec<String>,
    /// The longest time without a new acknowledgement, once the first arrived.
    longest_gap: Duration,
    /// Every gap over a second, with when it ended (since the start), for the failure message.
    long_gaps: Vec<(Duration, Duration)>,
}

impl Load {
    fn start(bootstrap: String, topic: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let acked_count = Arc::new(AtomicUsize::new(0));
        let counted = acked_count.clone();
        let thread = std::thread::spawn(move || {
            let producer =
                AckingProducer::new(&bootstrap, &[("linger.ms", "5"), ("retry.backoff.ms", "50")])?;
            let started = Instant::now();
            let (mut sent, mut acked) = (0, 0);
            let mut last_ack: Option<Instant> = None;
            let mut longest_gap = Duration::ZERO;
            let mut long_gaps = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let value = format!("record-{sent}");
                producer.send(
                    topic,
                    sent,
                    Outgoing { value: Some(value.as_bytes()), ..Default::default() },
                )?;
                sent += 1;
                // About 200 records a second, and the delivery callbacks served meanwhile.
                producer.poll(Duration::from_millis(5));
                let now_acked = producer.acked();
                if now_acked > acked {
                    let now = Instant::now();
                    if let Some(last) = last_ack {
                        let gap = now - last;
                        longest_gap = longest_gap.max(gap);
                        if gap > Duration::from_secs(1) {
                            long_gaps.push((gap, now - started));
                        }
                    }
                    last_ack = Some(now);
                    acked = now_acked;
                    counted.store(acked, Ordering::Relaxed);
                }
            }
            producer.flush(Duration::from_secs(60))?;
            let failed = producer
                .reports()
                .into_iter()
                .filter_map(|(id, report)| report.err().map(|e| format!("record {id}: {e}")))
                .collect();
            Ok(LoadReport { sent, acked: producer.acked(), failed, longest_gap, long_gaps })
        });
        Load { stop, acked: acked_count, thread }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    fn finish(self) -> anyhow::Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the producer thread panicked"))?
    }
}

/// Creates a topic every [`CREATE_EVERY`] through the admin API of the given control ports
/// (the next one when a node does not answer) until stopped; returns the topics whose creation
/// was acknowledged, and how many attempts were not.
struct MetadataWriter {
    stop: Arc<AtomicBool>,
    created: Arc<AtomicUsize>,
    thread: JoinHandle<anyhow::Result<(Vec<String>, usize)>>,
}

impl MetadataWriter {
    fn start(controls: Vec<SocketAddr>) -> MetadataWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let created_count = Arc::new(AtomicUsize::new(0));
        let counted = created_count.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (mut created, mut refused) = (Vec::new(), 0);
            let mut n = 0usize;
            while !stopping.load(Ordering::Relaxed) {
                let name = format!("meta-{n:04}");
                let addr = controls[n % controls.len()];
                n += 1;
                let request = pb::CreateTopicsRequest {
                    topics: vec![pb::NewTopic {
                        name: name.clone(),
                        partitions: Some(1),
                        replication_factor: Some(2),
                        configs: Default::default(),
                    }],
                    validate_only: false,
                };
                let answer = runtime.block_on(async {
                    let endpoint =
                        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                            .connect_timeout(Duration::from_secs(2))
                            .timeout(Duration::from_secs(20));
                    let channel = endpoint.connect().await?;
                    let mut client = pb::admin_service_client::AdminServiceClient::new(channel);
                    anyhow::Ok(client.create_topics(request).await?.into_inner())
                });
                match answer {
                    Ok(r) if r.topics.iter().all(|t| t.error.is_none()) => {
                        created.push(name);
                        counted.store(created.len(), Ordering::Relaxed);
                    }
                    _ => refused += 1,
                }
                std::thread::sleep(CREATE_EVERY);
            }
            Ok((created, refused))
        });
        MetadataWriter { stop, created: created_count, thread }
    }

    fn created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }

    fn finish(self) -> anyhow::Result<(Vec<String>, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the metadata writer panicked"))?
    }
}

/// `strom cluster describe --output json` through node `via`: its `quorum` object.
fn quorum_json(cluster: &StromCluster, via: u32) -> anyhow::Result<Value> {
    let described = cluster.cli(via, &["cluster", "describe", "--output", "json"])?.success()?;
    let json = described.json()?;
    let quorum = json.get("quorum").cloned().unwrap_or(Value::Null);
    ensure!(!quorum.is_null(), "no quorum in {json}");
    Ok(quorum)
}

/// node id → directory id of the quorum's voters (or observers) in `quorum_json`.
fn replicas(quorum: &Value, which: &str) -> BTreeMap<u64, String> {
    quorum[which]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let id = r["node_id"].as_u64()?;
            Some((id, r["directory_id"].as_str().unwrap_or_default().to_string()))
        })
        .collect()
}

/// Waits until DescribeQuorum through node `via` satisfies `ok`.
fn quorum_until(
    cluster: &StromCluster,
    via: u32,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    wait_until(QUORUM_TIMEOUT, what, || {
        let quorum = quorum_json(cluster, via)?;
        if ok(&quorum) {
            Ok(Some(quorum))
        } else {
            bail!("quorum: {quorum}")
        }
    })
}

fn ids(set: &BTreeMap<u64, String>) -> BTreeSet<u64> {
    set.keys().copied().collect()
}

#[test]
fn voters_are_replaced_under_produce_load_without_losing_metadata() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        kafka::create_topic_replicated(&cluster.bootstrap(), "load", 3, 3)?;
        cluster.wait_topic_everywhere("load", 3)?;
        let load = Load::start(cluster.bootstrap(), "load");
        let controls: Vec<SocketAddr> = (1..=3).map(|id| cluster.control_addr(id)).collect();
        let writer = MetadataWriter::start(controls);
        let started = Instant::now();
        // Each step under load that has run a while: before the changes, and after them.
        let steady = |load: &Load, writer: &MetadataWriter, what: &str| {
            let (acked, created) = (load.acked(), writer.created());
            wait_until(QUORUM_TIMEOUT, what, || {
                let (a, c) = (load.acked(), writer.created());
                ensure!(
                    a >= acked + ACKS_PER_PHASE && c >= created + TOPICS_PER_PHASE,
                    "{} records acknowledged, {} topics created",
                    a - acked,
                    c - created
                );
                Ok(Some(()))
            })
        };
        let result = steady(&load, &writer, "the load runs")
            .and_then(|()| replace_voters(cluster))
            .and_then(|()| steady(&load, &writer, "the load runs on after the changes"));
        let (created, refused) = writer.finish()?;
        let report = load.finish()?;
        eprintln!(
            "voter replacement: {:?} in all; producer sent {}, acknowledged {}, longest gap \
             between acknowledgements {} ms; {} topics created ({refused} creations not \
             acknowledged)",
            started.elapsed(),
            report.sent,
            report.acked,
            report.longest_gap.as_millis(),
            created.len()
        );
        result?;
        ensure!(
            report.failed.is_empty(),
            "records failed: {:?}",
            &report.failed[..report.failed.len().min(5)]
        );
        ensure!(report.acked > 1_000, "the load was too light to tell: {report:?}");
        ensure!(
            report.longest_gap <= STALL_MAX,
            "acks=all production stopped for {:?} (> {STALL_MAX:?}); gaps over 1 s (gap, at): {:?}",
            report.longest_gap,
            report.long_gaps
        );
        // No committed metadata lost: every acknowledged topic, on every node, the replaced
        // voter and the new one included.
        ensure!(created.len() > 20, "too few topics created to tell: {created:?}");
        for id in cluster.running() {
            wait_until(READY_TIMEOUT, &format!("node {id} lists every created topic"), || {
                let listed = cluster.metadata(id)?;
                let missing: Vec<&String> =
                    created.iter().filter(|t| listed.topic(t).is_none()).collect();
                ensure!(missing.is_empty(), "node {id} lacks {missing:?}");
                Ok(Some(()))
            })?;
        }
        Ok(())
    });
}

/// Add node 4; replace the disk of the active controller (one of the original voters), whose
/// new self is refused until the old one is removed; add it back.
fn replace_voters(cluster: &mut StromCluster) -> anyhow::Result<()> {
    // A fourth node knows only the quorum's bootstrap servers: it joins as an observer.
    cluster.spawn_joining_node(4, &[1, 2, 3])?;
    cluster.wait_serving(4, READY_TIMEOUT)?;
    let quorum =
        quorum_until(cluster, 1, "node 4 observes", |q| replicas(q, "observers").contains_key(&4))?;
    ensure!(ids(&replicas(&quorum, "voters")) == BTreeSet::from([1, 2, 3]), "{quorum}");
    let added = cluster.cli(1, &["cluster", "add-voter", "--node-id", "4"])?.success()?;
    ensure!(added.stdout.contains("Node 4 is now a voter"), "{added:?}");
    let quorum = quorum_json(cluster, 2)?;
    ensure!(ids(&replicas(&quorum, "voters")) == BTreeSet::from([1, 2, 3, 4]), "{quorum}");

    // The active controller's disk is replaced: stopped (its leaderships moved first), wiped,
    // and started again under the same id, joining through the other voters.
    let victim = cluster.active_controller()?;
    ensure!((1..=3).contains(&victim), "node {victim} leads, not an original voter");
    let others: Vec<u32> = [1, 2, 3, 4].into_iter().filter(|&id| id != victim).collect();
    let old = replicas(&quorum, "voters")[&u64::from(victim)].clone();
    ensure!(!old.is_empty(), "voter {victim} has no directory id: {quorum}");
    let status = cluster.sigterm(victim)?;
    ensure!(status.success(), "node {victim} exited with {status}");
    cluster.node_mut(victim).wipe_data_dir()?;
    cluster.rejoin_through(victim, &others)?;
    cluster.spawn(victim)?;

    // Its new directory is refused as the voter it replaces: the error says so, with both
    // directory ids and the fix, and the quorum still counts the old replica.
    let refusal = wait_until(QUORUM_TIMEOUT, &format!("node {victim} is refused"), || {
        let log = cluster.node(victim).stderr();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("its data directory was replaced") && l.contains(&old));
        Ok(line.map(str::to_string))
    })?;
    eprintln!("node {victim} refused: {refusal}");
    ensure!(refusal.contains("strom cluster remove-voter"), "{refusal}");
    let via = others[0];
    let quorum = quorum_json(cluster, via)?;
    ensure!(replicas(&quorum, "voters").get(&u64::from(victim)) == Some(&old), "{quorum}");

    // The old replica is removed; the new one then observes, and is added as a new voter.
    let victim_arg = victim.to_string();
    cluster
        .cli(via, &["cluster", "remove-voter", "--node-id", &victim_arg, "--directory-id", &old])?
        .success()?;
    let quorum = quorum_until(cluster, via, &format!("node {victim} observes anew"), |q| {
        replicas(q, "observers").get(&u64::from(victim)).is_some_and(|d| !d.is_empty() && *d != old)
    })?;
    let new = replicas(&quorum, "observers")[&u64::from(victim)].clone();
    let voters: BTreeSet<u64> = others.iter().map(|&id| u64::from(id)).collect();
    ensure!(ids(&replicas(&quorum, "voters")) == voters, "{quorum}");
    cluster.cli(via, &["cluster", "add-voter", "--node-id", &victim_arg])?.success()?;
    let quorum = quorum_json(cluster, via)?;
    let now = replicas(&quorum, "voters");
    ensure!(ids(&now) == BTreeSet::from([1, 2, 3, 4]), "{quorum}");
    ensure!(now[&u64::from(victim)] == new, "voter {victim} is not its new self: {quorum}");
    // It catches up as a broker too.
    cluster.wait_formed(READY_TIMEOUT)?;
    Ok(())
}

/// DescribeQuorum's one partition, for the raw codec.
fn describe_quorum_request(topic: &str) -> DescribeQuorumRequest {
    DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])])
}

#[test]
fn describe_quorum_answers_kafka_clients_and_the_cli() {
    Library::KafkaPython.require("describe_quorum");
    with_cluster(3, ClusterOptions::default(), |cluster| {
        // An observer too: a node that joined and was not made a voter.
        cluster.spawn_joining_node(4, &[1, 2, 3])?;
        cluster.wait_serving(4, READY_TIMEOUT)?;
        // Static voters bind their directory ids in the background after their first start.
        let quorum = quorum_until(cluster, 1, "node 4 observes, every voter bound", |q| {
            replicas(q, "observers").contains_key(&4)
                && q["voters"].as_array().is_some_and(|v| v.iter().all(|r| r["lag"].is_u64()))
                && replicas(q, "voters").values().all(|d| d.len() == 22)
        })?;

        // `strom cluster describe --output json` (the real CLI): voters with their directory
        // ids, log end offsets and lag, the observer, the leader and term.
        eprintln!("strom cluster describe --output json, quorum: {quorum:#}");
        let voters = replicas(&quorum, "voters");
        ensure!(ids(&voters) == BTreeSet::from([1, 2, 3]), "{quorum}");
        ensure!(voters.values().all(|d| d.len() == 22), "directory ids: {voters:?}");
        let leader = quorum["leader_id"].as_u64().context("leader_id")?;
        ensure!((1..=3).contains(&leader) && quorum["term"].as_u64() > Some(0), "{quorum}");
        for v in quorum["voters"].as_array().into_iter().flatten() {
            ensure!(v["log_end_offset"].as_i64() > Some(0), "voter without a log end offset: {v}");
            ensure!(v["lag"].as_u64() < Some(100), "a settled voter lags: {v}");
        }
        let observer = &quorum["observers"].as_array().context("observers")?[0];
        ensure!(observer["node_id"] == 4 && observer["kind"] == "controller", "{observer}");

        // Over the Kafka protocol with kafka-python's admin client (describe_metadata_quorum).
        let mut command = Library::KafkaPython.command("describe_quorum")?;
        command.args(["--bootstrap", &cluster.bootstrap_of(&[2])]);
        let run = run_to_exit(command, SCRIPT_RUN_TIMEOUT)?;
        ensure!(run.status.success(), "kafka-python failed: {}", run.stderr_tail(40));
        let answer: Value = serde_json::from_str(run.stdout.trim())
            .with_context(|| format!("kafka-python printed {:?}", run.stdout))?;
        eprintln!("kafka-python describe_metadata_quorum: {answer}");
        let partition = &answer["topics"][0]["partitions"][0];
        ensure!(partition["leader_id"].as_u64() == Some(leader), "{answer}");
        let voter_ids: BTreeSet<u64> = partition["current_voters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["replica_id"].as_u64())
            .collect();
        ensure!(voter_ids == BTreeSet::from([1, 2, 3]), "{answer}");
        ensure!(
            partition["current_voters"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|v| v["log_end_offset"].as_i64() > Some(0)),
            "{answer}"
        );
        ensure!(partition["high_watermark"].as_i64() > Some(0), "{answer}");

        // And through the raw codec at v2: directory ids, timestamps and the voters' listeners;
        // another partition is UNKNOWN_TOPIC_OR_PARTITION.
        let mut connection = RawConnection::connect(cluster.kafka_addr(3))?;
        let version = connection.max_version(ApiKey::DescribeQuorum)?;
        ensure!(version == 2, "DescribeQuorum v{version} advertised");
        let id = connection.send_request(
            ApiKey::DescribeQuorum as i16,
            2,
            &describe_quorum_request("__cluster_metadata"),
            2,
        )?;
        let response: DescribeQuorumResponse = connection.read_response(id, 2)?;
        let p = &response.topics[0].partitions[0];
        ensure!(p.error_code == 0 && p.leader_id.0 as u64 == leader, "{response:?}");
        ensure!(p.current_voters.len() == 3, "{response:?}");
        for v in &p.current_voters {
            ensure!(!v.replica_directory_id.is_nil(), "no directory id: {v:?}");
            ensure!(v.last_fetch_timestamp > 0 && v.log_end_offset > 0, "{v:?}");
        }
        ensure!(p.observers.iter().any(|o| o.replica_id.0 == 4), "{response:?}");
        let listed: BTreeSet<i32> = response.nodes.iter().map(|n| n.node_id.0).collect();
        ensure!(listed == BTreeSet::from([1, 2, 3]), "{response:?}");
        ensure!(
            response.nodes.iter().all(|n| &*n.listeners[0].name == "CONTROLLER"),
            "{response:?}"
        );
        let id = connection.send_request(
            ApiKey::DescribeQuorum as i16,
            2,
            &describe_quorum_request("orders"),
            2,
        )?;
        let other: DescribeQuorumResponse = connection.read_response(id, 2)?;
        ensure!(other.topics[0].partitions[0].error_code == 3, "{other:?}");
        Ok(())
    });
}
