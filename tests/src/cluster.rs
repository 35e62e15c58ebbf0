//! [`StromCluster`]: 1, 3 or 5 combined controller+broker `strom` processes on loopback that
//! form one controller quorum. Each node is a [`StromNode`] with its own temporary directory
//! (kept with `STROM_KEEP_TEST_DIRS`) and a generated `strom.toml` naming every node's ports.
//!
//! Views of the cluster, each asked of one chosen node:
//! - [`StromCluster::metadata`]: Kafka Metadata v12 (controller id, brokers, per-partition
//!   leader, leader epoch, replicas, ISR) from a raw request to exactly that node;
//! - [`StromCluster::librdkafka_metadata`]: the same as librdkafka receives it (librdkafka may
//!   send a Metadata request over any of its connections, so the answering node is checked);
//! - [`StromCluster::describe_cluster`]: the gRPC AdminService's DescribeCluster (raft term,
//!   active controller, broker epochs and fenced state);
//! - [`cli`]: the `strom` CLI with stdout and stderr kept apart (for `--output json`).
//!
//! Everything is bounded: [`wait_until`] polls a condition until a deadline and fails with the
//! last state it saw. Dropping the cluster kills every process.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse};
use rdkafka::consumer::Consumer;
use strom_proto::admin as pb;
use strom_proto::admin::admin_service_client::AdminServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::raw::RawConnection;
use crate::{binary, kafka, NodeOptions, StromNode, POLL_INTERVAL, READY_TIMEOUT};

/// How long a cluster may take from spawning its processes to every node serving Metadata
/// that lists every broker and the same active controller.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for one Metadata or DescribeCluster request to one node.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for one CLI run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start a cluster. `ClusterOptions::default()` gives every node strom's defaults
/// (`strom_metadata::config::BROKER_DEFAULTS`, the one home of them: raft election timeout
/// 300-450 ms, broker heartbeat 250 ms and session timeout 1000 ms, min.insync.replicas 1) and
/// a default replication factor of min(3, nodes).
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `default_replication_factor` of every node; min(3, nodes) when unset.
    pub default_replication_factor: Option<i16>,
    /// `min_insync_replicas` of every node; strom's default (1) when unset.
    pub min_insync_replicas: Option<i32>,
    /// TOML appended to every node's config. The harness writes its keys at the top level,
    /// `controller.quorum_voters` as a dotted key, so a `[controller]` table would clash:
    /// write `controller.election_timeout_ms = 800` (dotted keys work for every section).
    pub extra_toml: String,
    /// TOML appended to one node's config only (after `extra_toml`), by node id.
    pub node_toml: BTreeMap<u32, String>,
    /// Extra environment of every process (`RUST_LOG` defaults to `info`).
    pub env: Vec<(String, String)>,
    /// Open-file limit (soft = hard) of every process; inherited when unset
    /// (see [`NodeOptions::fd_limit`]).
    pub fd_limit: Option<u64>,
}

/// One broker as Kafka Metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: i32,
}

/// One partition as Kafka Metadata describes it (librdkafka's view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// -1: no leader.
    pub leader: i32,
    /// -1 when unknown (librdkafka does not expose it).
    pub leader_epoch: i32,
    /// In preference order.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// The partition's error code, if any (e.g. `LeaderNotAvailable`).
    pub error: Option<String>,
}

/// One topic as Kafka Metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub error: Option<String>,
    pub partitions: BTreeMap<i32, PartitionInfo>,
}

/// Kafka Metadata as one node answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// The node that answered.
    pub answered_by: u32,
    /// The active controller the node reports; -1 when it knows none.
    pub controller_id: i32,
    /// Unfenced brokers, by id.
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
}

impl ClusterMetadata {
    /// Ids of the listed (unfenced) brokers, ascending.
    pub fn broker_ids(&self) -> Vec<i32> {
        self.brokers.keys().copied().collect()
    }

    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name)
    }

    /// Partition → leader (-1: none) of `topic`; empty if the topic is not listed.
    pub fn leaders_of(&self, topic: &str) -> BTreeMap<i32, i32> {
        self.topics
            .get(topic)
            .map(|t| t.partitions.iter().map(|(&p, info)| (p, info.leader)).collect())
            .unwrap_or_default()
    }

    /// Every (topic, partition) whose leader is `broker`.
    pub fn led_by(&self, broker: i32) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        for (name, topic) in &self.topics {
            for (&partition, info) in &topic.partitions {
                if info.leader == broker {
                    out.push((name.clone(), partition));
                }
            }
        }
        out
    }

    /// True when `topic` is listed without error with `partitions` partitions, each with a
    /// leader that is a listed broker.
    pub fn topic_is_ready(&self, topic: &str, partitions: usize) -> bool {
        match self.topics.get(topic) {
            Some(t) if t.error.is_none() && t.partitions.len() == partitions => {
                t.partitions.values().all(|p| p.leader >= 0 && self.brokers.contains_key(&p.leader))
            }
            _ => false,
        }
    }
}

/// One broker as the controller quorum records it (gRPC DescribeCluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerState {
    pub id: i32,
    pub epoch: i64,
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
}

/// gRPC DescribeCluster as one node answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    pub answering_node_id: u64,
    pub active_controller_id: Option<u64>,
    pub raft_term: u64,
    pub commit_index: u64,
    pub voters: Vec<u64>,
    /// Every registered broker, fenced or not, by id.
    pub brokers: BTreeMap<i32, BrokerState>,
}

/// What one CLI run printed.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Fails with the command's output unless it exited 0.
    pub fn success(self) -> anyhow::Result<CliOutput> {
        ensure!(
            self.status.success(),
            "strom CLI exited with {}: stdout {:?} stderr {:?}",
            self.status,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }

    /// stdout parsed as JSON (for `--output json`).
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("CLI stdout is not JSON: {:?}", self.stdout))
    }
}

/// A running cluster of combined nodes with ids 1..=n (and those added later).
pub struct StromCluster {
    nodes: BTreeMap<u32, StromNode>,
    /// Every node's inter-broker (REPLICATION) listener, where followers fetch.
    replication: BTreeMap<u32, SocketAddr>,
    /// `default_replication_factor` of every node.
    replication_factor: i16,
    options: ClusterOptions,
}

impl StromCluster {
    /// Starts `n_nodes` (1, 3 or 5) combined nodes, every one a voter, and waits until every
    /// node serves Metadata listing all brokers and the same active controller.
    pub fn start(n_nodes: usize, options: ClusterOptions) -> anyhow::Result<StromCluster> {
        ensure!(matches!(n_nodes, 1 | 3 | 5), "a cluster has 1, 3 or 5 nodes, not {n_nodes}");
        let ids: Vec<u32> = (1..=n_nodes as u32).collect();
        let ports = free_ports(3 * n_nodes)?;
        let port = |id: u32, k: usize| ports[3 * (id as usize - 1) + k];
        let kafka: BTreeMap<u32, SocketAddr> = ids.iter().map(|&id| (id, port(id, 0))).collect();
        let control: BTreeMap<u32, SocketAddr> = ids.iter().map(|&id| (id, port(id, 1))).collect();
        let replication: BTreeMap<u32, SocketAddr> =
            ids.iter().map(|&id| (id, port(id, 2))).collect();
        let voters =
            ids.iter().map(|id| format!("{id}@{}", control[id])).collect::<Vec<_>>().join(",");
        let replication_factor =
            options.default_replication_factor.unwrap_or(n_nodes.min(3) as i16);
        let mut cluster = StromCluster {
            nodes: BTreeMap::new(),
            replication: replication.clone(),
            replication_factor,
            options: options.clone(),
        };
        for &id in &ids {
            let quorum = format!("controller.quorum_voters = \"{voters}\"");
            let toml = cluster.node_toml(id, kafka[&id], replication[&id], control[&id], &quorum);
            let node = StromNode::spawn(NodeOptions {
                node_id: Some(id),
                config_toml: Some(toml),
                extra_args: Vec::new(),
                env: options.env.clone(),
                kafka_addr: Some(kafka[&id]),
                control_addr: Some(control[&id]),
                data_dir: None,
                fd_limit: options.fd_limit,
            })
            .with_context(|| format!("spawn node {id}"))?;
            cluster.nodes.insert(id, node);
        }
        if let Err(error) = cluster.wait_formed(FORM_TIMEOUT) {
            bail!("{error:#}\n{}", cluster.log_tails(40));
        }
        Ok(cluster)
    }

    /// One node's `strom.toml`: its listeners (followers fetch on a listener of their own, as
    /// config/cluster/ has it), the cluster's settings, `quorum` (how it knows the metadata
    /// quorum), then the options' extra TOML.
    fn node_toml(
        &self,
        id: u32,
        kafka: SocketAddr,
        replication: SocketAddr,
        control: SocketAddr,
        quorum: &str,
    ) -> String {
        let mut toml = format!(
            "# written by strom-tests: node {id}\n\
             node_id = {id}\n\
             listeners = \"PLAINTEXT://{kafka},REPLICATION://{replication},CONTROLLER://{control}\"\n\
             inter_broker_listener_name = \"REPLICATION\"\n\
             default_replication_factor = {}\n",
            self.replication_factor
        );
        if let Some(min_isr) = self.options.min_insync_replicas {
            toml.push_str(&format!("min_insync_replicas = {min_isr}\n"));
        }
        toml.push_str(quorum);
        toml.push('\n');
        for extra in
            [Some(&self.options.extra_toml), self.options.node_toml.get(&id)].into_iter().flatten()
        {
            toml.push_str(extra);
            toml.push('\n');
        }
        toml
    }

    /// How a node that joins the quorum knows it (KIP-853): the control addresses of
    /// `bootstrap`, and no voter list.
    fn joining_quorum(&self, bootstrap: &[u32]) -> String {
        let servers: Vec<String> =
            bootstrap.iter().map(|&b| self.control_addr(b).to_string()).collect();
        format!("controller.quorum_bootstrap_servers = \"{}\"", servers.join(","))
    }

    /// Spawns one more combined node, `id`, on fresh ports, that knows the metadata quorum
    /// only through the controllers `bootstrap` (`controller.quorum_bootstrap_servers`): it
    /// joins as an observer, to be made a voter (`strom cluster add-voter`). Does not wait.
    pub fn spawn_joining_node(&mut self, id: u32, bootstrap: &[u32]) -> anyhow::Result<()> {
        ensure!(!self.nodes.contains_key(&id), "the cluster has a node {id} already");
        let ports = free_ports(3)?;
        let (kafka, control, replication) = (ports[0], ports[1], ports[2]);
        let quorum = self.joining_quorum(bootstrap);
        let toml = self.node_toml(id, kafka, replication, control, &quorum);
        let node = StromNode::spawn(NodeOptions {
            node_id: Some(id),
            config_toml: Some(toml),
            env: self.options.env.clone(),
            kafka_addr: Some(kafka),
            control_addr: Some(control),
            fd_limit: self.options.fd_limit,
            ..NodeOptions::default()
        })
        .with_context(|| format!("spawn node {id}"))?;
        self.nodes.insert(id, node);
        self.replication.insert(id, replication);
        Ok(())
    }

    /// Makes a stopped node's next start join the quorum through `bootstrap` instead of its
    /// static voter list (a node whose disk was replaced, added back as a new voter).
    pub fn rejoin_through(&mut self, id: u32, bootstrap: &[u32]) -> anyhow::Result<()> {
        ensure!(!self.node_mut(id).is_running(), "node {id} still runs");
        let quorum = self.joining_quorum(bootstrap);
        let node = self.node(id);
        let toml = self.node_toml(
            id,
            node.kafka_addr(),
            self.replication_addr(id),
            node.control_addr(),
            &quorum,
        );
        self.node_mut(id).set_config_toml(toml);
        Ok(())
    }

    /// The last `lines` lines of every node's log, each under a header naming the node.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|(id, node)| {
                format!("----- node {id} log tail -----\n{}\n", node.stderr_tail(lines))
            })
            .collect()
    }

    /// Node ids, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes whose process the harness started and has not seen exit (a stopped,
    /// SIGSTOPped node counts as running).
    pub fn running(&self) -> Vec<u32> {
        self.nodes.iter().filter(|(_, n)| n.pid().is_some()).map(|(&id, _)| id).collect()
    }

    pub fn node(&self, id: u32) -> &StromNode {
        self.nodes.get(&id).unwrap_or_else(|| panic!("the cluster has no node {id}"))
    }

    pub fn node_mut(&mut self, id: u32) -> &mut StromNode {
        self.nodes.get_mut(&id).unwrap_or_else(|| panic!("the cluster has no node {id}"))
    }

    /// Every node's Kafka address, comma-separated, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.nodes.values().map(StromNode::bootstrap).collect::<Vec<_>>().join(",")
    }

    /// The Kafka addresses of the given nodes only, comma-separated.
    pub fn bootstrap_of(&self, ids: &[u32]) -> String {
        ids.iter().map(|&id| self.node(id).bootstrap()).collect::<Vec<_>>().join(",")
    }

    pub fn kafka_addr(&self, id: u32) -> SocketAddr {
        self.node(id).kafka_addr()
    }

    pub fn control_addr(&self, id: u32) -> SocketAddr {
        self.node(id).control_addr()
    }

    /// The node's inter-broker listener (`inter_broker_listener_name = "REPLICATION"`).
    pub fn replication_addr(&self, id: u32) -> SocketAddr {
        *self.replication.get(&id).unwrap_or_else(|| panic!("the cluster has no node {id}"))
    }

    /// SIGKILL of one node; waits until the process is reaped.
    pub fn kill9(&mut self, id: u32) -> anyhow::Result<()> {
        self.node_mut(id).kill9().with_context(|| format!("kill -9 node {id}"))
    }

    /// SIGTERM of one node; waits (bounded) for its exit status and returns it.
    pub fn sigterm(&mut self, id: u32) -> anyhow::Result<ExitStatus> {
        self.node_mut(id).sigterm().with_context(|| format!("SIGTERM node {id}"))
    }

    pub fn sigstop(&self, id: u32) -> anyhow::Result<()> {
        self.node(id).sigstop().with_context(|| format!("SIGSTOP node {id}"))
    }

    pub fn sigcont(&self, id: u32) -> anyhow::Result<()> {
        self.node(id).sigcont().with_context(|| format!("SIGCONT node {id}"))
    }

    /// Starts a stopped node's process again (same ports and data) without waiting.
    pub fn spawn(&mut self, id: u32) -> anyhow::Result<()> {
        self.node_mut(id).respawn().with_context(|| format!("respawn node {id}"))
    }

    /// Restarts one node (SIGTERM first if it runs; a non-zero exit fails) and waits until it
    /// serves Metadata that lists itself as an unfenced broker, i.e. it registered again and
    /// caught up with the metadata log.
    pub fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        if self.node_mut(id).is_running() {
            let status = self.sigterm(id)?;
            ensure!(status.success(), "node {id} exited with {status} on SIGTERM");
        }
        self.spawn(id)?;
        self.wait_serving(id, READY_TIMEOUT)?;
        wait_until(READY_TIMEOUT, &format!("node {id} lists itself as a broker"), || {
            let metadata = self.metadata(id)?;
            Ok(metadata.brokers.contains_key(&(id as i32)).then_some(()))
        })
    }

    /// Starts every stopped node again, then waits as [`Self::start`] does.
    pub fn restart_all_stopped(&mut self) -> anyhow::Result<()> {
        let stopped: Vec<u32> =
            self.ids().into_iter().filter(|&id| !self.node_mut(id).is_running()).collect();
        for id in stopped {
            self.spawn(id)?;
        }
        self.wait_formed(FORM_TIMEOUT)
    }

    /// Waits until one node answers a Kafka Metadata request (no condition on its content);
    /// fails early with its log if the process exits.
    pub fn wait_serving(&mut self, id: u32, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.node_mut(id).try_exit_status()? {
                bail!(
                    "node {id} exited with {status} before it served Metadata; its log:\n{}",
                    self.node(id).stderr_tail(60)
                );
            }
            let last = match self.metadata(id) {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                bail!("node {id} did not serve Metadata within {timeout:?}: {last:#}");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until every running node serves Metadata that lists every running node as a
    /// broker and names the same active controller, itself a running node.
    pub fn wait_formed(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for id in self.running() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_serving(id, left)?;
        }
        let running = self.running();
        let expected: Vec<i32> = running.iter().map(|&id| id as i32).collect();
        let left = deadline.saturating_duration_since(Instant::now());
        wait_until(left, &format!("nodes {running:?} agree on brokers and controller"), || {
            let mut controllers = Vec::new();
            for &id in &running {
                let metadata = self.metadata(id)?;
                if metadata.broker_ids() != expected {
                    bail!("node {id} lists brokers {:?}", metadata.broker_ids());
                }
                controllers.push(metadata.controller_id);
            }
            let first = controllers[0];
            let agreed = first >= 0
                && running.contains(&(first as u32))
                && controllers.iter().all(|&c| c == first);
            if !agreed {
                bail!("controller ids by node: {controllers:?}");
            }
            Ok(Some(()))
        })
    }

    /// Kafka Metadata (every topic) as node `id` answers it: one Metadata v12 request on a
    /// fresh connection to that node (deterministic: librdkafka would send the request over
    /// any of its connections, to whichever broker it likes).
    pub fn metadata(&self, id: u32) -> anyhow::Result<ClusterMetadata> {
        let addr = self.kafka_addr(id);
        raw_metadata(id, addr).with_context(|| format!("Metadata from node {id} ({addr})"))
    }

    /// Kafka Metadata (every topic) as librdkafka receives it from node `id`, for tests that
    /// claim what a real client sees. A fresh client bootstrapped with that node only asks;
    /// an answer from another broker (librdkafka picks any connection) is retried, bounded.
    /// librdkafka exposes neither the controller id nor leader epochs: `controller_id` comes
    /// from a raw Metadata request to the same node just after, `leader_epoch` is -1.
    pub fn librdkafka_metadata(&self, id: u32) -> anyhow::Result<ClusterMetadata> {
        const ATTEMPTS: usize = 10;
        let addr = self.kafka_addr(id);
        let mut answered = Vec::new();
        for _ in 0..ATTEMPTS {
            let client = kafka::consumer(&addr.to_string(), &[])?;
            let metadata = client
                .fetch_metadata(None, REQUEST_TIMEOUT)
                .with_context(|| format!("librdkafka Metadata from node {id} ({addr})"))?;
            // Broker names are `host:port/<node id or "bootstrap">`.
            let origin = metadata.orig_broker_name().to_owned();
            if !origin.starts_with(&format!("{addr}/")) {
                answered.push(origin);
                continue;
            }
            let mut topics = BTreeMap::new();
            for topic in metadata.topics() {
                let partitions = topic
                    .partitions()
                    .iter()
                    .map(|p| {
                        let info = PartitionInfo {
                            leader: p.leader(),
                            leader_epoch: -1,
                            replicas: p.replicas().to_vec(),
                            isr: p.isr().to_vec(),
                            error: p.error().map(|code| format!("{code:?}")),
                        };
                        (p.id(), info)
                    })
                    .collect();
                let error = topic.error().map(|code| format!("{code:?}"));
                topics.insert(topic.name().to_owned(), TopicInfo { error, partitions });
            }
            let brokers = metadata
                .brokers()
                .iter()
                .map(|b| {
                    (b.id(), BrokerInfo { id: b.id(), host: b.host().to_owned(), port: b.port() })
                })
                .collect();
            let controller_id = raw_metadata(id, addr)
                .with_context(|| format!("controller id from node {id} ({addr})"))?
                .controller_id;
            return Ok(ClusterMetadata { answered_by: id, controller_id, brokers, topics });
        }
        bail!("librdkafka Metadata meant for node {id} ({addr}) was answered by {answered:?}")
    }

    /// The active controller all running nodes agree on, waiting (bounded) for agreement.
    pub fn active_controller(&self) -> anyhow::Result<u32> {
        let running = self.running();
        wait_until(READY_TIMEOUT, "running nodes agree on the active controller", || {
            let mut seen = Vec::new();
            for &id in &running {
                seen.push(self.metadata(id)?.controller_id);
            }
            let first = seen[0];
            if first >= 0 && running.contains(&(first as u32)) && seen.iter().all(|&c| c == first) {
                Ok(Some(first as u32))
            } else {
                bail!("controller ids by node {running:?}: {seen:?}")
            }
        })
    }

    /// Partition → leader of `topic`, from the first running node that answers.
    pub fn leaders_of(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, i32>> {
        let mut last = None;
        for id in self.running() {
            match self.metadata(id) {
                Ok(metadata) => return Ok(metadata.leaders_of(topic)),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no node is running")))
    }

    /// Waits until every running node's Metadata shows `topic` with `partitions` partitions,
    /// each led by a listed broker.
    pub fn wait_topic_everywhere(&self, topic: &str, partitions: usize) -> anyhow::Result<()> {
        let running = self.running();
        wait_until(READY_TIMEOUT, &format!("{topic} ready on nodes {running:?}"), || {
            for &id in &running {
                let metadata = self.metadata(id)?;
                if !metadata.topic_is_ready(topic, partitions) {
                    bail!("node {id} shows {topic} as {:?}", metadata.topic(topic));
                }
            }
            Ok(Some(()))
        })
    }

    /// Waits until every running node shows every partition of `topic` with a live leader and
    /// the full replica set in its ISR; returns how long that took.
    pub fn wait_isr_full(&self, topic: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        wait_until(timeout, &format!("every ISR of {topic} is full on every node"), || {
            for id in self.running() {
                let metadata = self.metadata(id)?;
                let t = metadata
                    .topic(topic)
                    .with_context(|| format!("node {id}: {topic} not listed"))?;
                for (p, info) in &t.partitions {
                    let (mut isr, mut replicas) = (info.isr.clone(), info.replicas.clone());
                    isr.sort_unstable();
                    replicas.sort_unstable();
                    if info.leader < 0 || isr != replicas {
                        bail!(
                            "node {id}: {topic}-{p} leader {} ISR {:?} replicas {:?}",
                            info.leader,
                            info.isr,
                            info.replicas
                        );
                    }
                }
            }
            Ok(Some(()))
        })?;
        Ok(started.elapsed())
    }

    /// Waits until every running node but `old` (which may be stopped) names the same leader
    /// for `partition`, other than `old` (and -1), and returns it.
    pub fn wait_new_leader(
        &self,
        topic: &str,
        partition: i32,
        old: i32,
        timeout: Duration,
    ) -> anyhow::Result<i32> {
        let what = format!("{topic}-{partition} has a leader other than {old}");
        wait_until(timeout, &what, || {
            let mut seen = BTreeSet::new();
            for id in self.running().into_iter().filter(|&id| id as i32 != old) {
                let leaders = self.metadata(id)?.leaders_of(topic);
                seen.insert(leaders.get(&partition).copied().unwrap_or(-1));
            }
            match seen.into_iter().collect::<Vec<_>>()[..] {
                [leader] if leader >= 0 && leader != old => Ok(Some(leader)),
                ref other => bail!("leaders seen by the other nodes: {other:?}"),
            }
        })
    }

    /// gRPC DescribeCluster answered by node `id`.
    pub fn describe_cluster(&self, id: u32) -> anyhow::Result<ClusterState> {
        let addr = self.control_addr(id);
        let answer = grpc(addr, REQUEST_TIMEOUT, |mut client| async move {
            client.describe_cluster(pb::DescribeClusterRequest {}).await
        })?
        .map_err(|status| anyhow::anyhow!("DescribeCluster on node {id}: {status}"))?;
        Ok(ClusterState {
            answering_node_id: answer.answering_node_id,
            active_controller_id: answer.active_controller_id,
            raft_term: answer.raft_term,
            commit_index: answer.commit_index,
            voters: answer.voters.iter().map(|v| v.id).collect(),
            brokers: answer
                .brokers
                .iter()
                .map(|b| {
                    let state = BrokerState {
                        id: b.id,
                        epoch: b.epoch,
                        fenced: b.fenced,
                        in_controlled_shutdown: b.in_controlled_shutdown,
                    };
                    (b.id, state)
                })
                .collect(),
        })
    }

    /// gRPC CreateTopics of one topic through node `id`, bounded by `timeout`. The outer error
    /// is the harness's (cannot build a runtime); the inner one is the call's status, so tests
    /// can expect failures (UNAVAILABLE, DEADLINE_EXCEEDED) as outcomes.
    pub fn grpc_create_topic(
        &self,
        id: u32,
        topic: &pb::NewTopic,
        timeout: Duration,
    ) -> anyhow::Result<Result<pb::CreatedTopic, tonic::Status>> {
        let request = pb::CreateTopicsRequest { topics: vec![topic.clone()], validate_only: false };
        let answer = grpc(self.control_addr(id), timeout, |mut client| async move {
            client.create_topics(request).await
        })?;
        Ok(answer.and_then(|response| {
            let created =
                response.topics.into_iter().next().ok_or_else(|| {
                    tonic::Status::internal("CreateTopics answered without a result")
                })?;
            match &created.error {
                None => Ok(created),
                Some(error) => Err(tonic::Status::new(error.code.into(), error.message.clone())),
            }
        }))
    }

    /// Runs the `strom` CLI against node `id`'s control port: `args` then
    /// `--bootstrap-control <addr>`.
    pub fn cli(&self, id: u32, args: &[&str]) -> anyhow::Result<CliOutput> {
        let addr = self.control_addr(id).to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--bootstrap-control", &addr]);
        cli(&all, CLI_TIMEOUT)
    }
}

impl Drop for StromCluster {
    fn drop(&mut self) {
        // Every process at once, so that no node spends its last moments electing; each
        // node's own Drop then prints its log tail if the test failed and removes (or keeps)
        // its directory.
        for node in self.nodes.values_mut() {
            if node.is_running() {
                let _ = node.kill9();
            }
        }
    }
}

/// Starts a cluster, runs `body` on it and panics with the error (and, through each node's
/// `Drop`, the tail of its log) if the cluster does not form or `body` fails.
pub fn with_cluster(
    n_nodes: usize,
    options: ClusterOptions,
    body: impl FnOnce(&mut StromCluster) -> anyhow::Result<()>,
) {
    let mut cluster = match StromCluster::start(n_nodes, options) {
        Ok(cluster) => cluster,
        Err(error) => panic!("the {n_nodes}-node cluster did not form: {error:#}"),
    };
    if let Err(error) = body(&mut cluster) {
        panic!("{error:#}");
    }
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok(Some(value))`; `Ok(None)` and
/// `Err` both mean "not yet" (the last error is reported). Fails after `timeout`, naming
/// `what` and the last state seen.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => String::from("condition not met"),
            Err(error) => format!("{error:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting until {what} (last: {last})");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Runs the `strom` binary with `args` (no harness flags) and collects its exit status,
/// stdout and stderr separately; kills it and fails after `timeout`.
pub fn cli(args: &[&str], timeout: Duration) -> anyhow::Result<CliOutput> {
    let binary = binary::strom_binary()?;
    let dir = tempfile::Builder::new().prefix("strom-cli-").tempdir()?;
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(&binary)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("spawn {} {}", binary.display(), args.join(" ")))?;
    let Some(status) = crate::node::wait_or_kill(&mut child, timeout)? else {
        bail!("strom {} did not exit within {timeout:?}", args.join(" "));
    };
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    Ok(CliOutput { status, stdout: read(&out_path), stderr: read(&err_path) })
}

/// One AdminService call to `addr` on a fresh single-threaded runtime, bounded by `timeout`
/// (connection included). A connection failure becomes an UNAVAILABLE status.
fn grpc<T, F, Fut>(
    addr: SocketAddr,
    timeout: Duration,
    call: F,
) -> anyhow::Result<Result<T, tonic::Status>>
where
    F: FnOnce(AdminServiceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(timeout).timeout(timeout);
    Ok(runtime.block_on(async move {
        let attempt = async {
            let channel = endpoint
                .connect()
                .await
                .map_err(|error| tonic::Status::unavailable(format!("connect {addr}: {error}")))?;
            call(AdminServiceClient::new(channel)).await.map(tonic::Response::into_inner)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer from {addr} within {timeout:?}"
            ))),
        }
    }))
}

/// Metadata v12 (every topic) from node `answered_by` at `addr`, on a fresh connection.
fn raw_metadata(answered_by: u32, addr: SocketAddr) -> anyhow::Result<ClusterMetadata> {
    const VERSION: i16 = 12;
    let mut connection = RawConnection::connect(addr)?;
    let request =
        MetadataRequest::default().with_topics(None).with_allow_auto_topic_creation(false);
    let id = connection.send_request(ApiKey::Metadata as i16, VERSION, &request, VERSION)?;
    let response: MetadataResponse = connection.read_response(id, VERSION)?;
    let error_of = |code: i16| code.err().map(|e| format!("{e:?}"));
    let ids = |nodes: &[BrokerId]| nodes.iter().map(|b| b.0).collect::<Vec<i32>>();
    let brokers = response
        .brokers
        .iter()
        .map(|b| {
            let info = BrokerInfo { id: b.node_id.0, host: b.host.to_string(), port: b.port };
            (b.node_id.0, info)
        })
        .collect();
    let mut topics = BTreeMap::new();
    for topic in &response.topics {
        let name = topic.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let info = PartitionInfo {
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: ids(&p.replica_nodes),
                    isr: ids(&p.isr_nodes),
                    error: error_of(p.error_code),
                };
                (p.partition_index, info)
            })
            .collect();
        topics.insert(name, TopicInfo { error: error_of(topic.error_code), partitions });
    }
    Ok(ClusterMetadata { answered_by, controller_id: response.controller_id.0, brokers, topics })
}

/// `count` distinct free loopback ports: every listener is held until all are chosen. They
/// are drawn below the kernel's ephemeral range: a port from that range, free while its node
/// is stopped, can become the local end of any outgoing connection (another node's, a
/// client's), and the node's restart then fails with "address already in use".
///
/// A port is handed out once per test process: the listeners are closed on return, and a
/// port chosen for one node but not yet bound by it must not go to the next node's metrics
/// endpoint.
pub fn free_ports(count: usize) -> anyhow::Result<Vec<SocketAddr>> {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (low, high) = (PORTS_LOW, ephemeral_low().saturating_sub(1).max(PORTS_LOW + 1_000));
    let mut listeners = Vec::with_capacity(count);
    let mut tries = 0;
    while listeners.len() < count && tries < PORT_TRIES_MAX {
        tries += 1;
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let port = low + (random % u64::from(high - low)) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            handed_out.insert(port);
            listeners.push(l);
        }
    }
    // Crowded: let the kernel choose.
    let mut tries = 0;
    while listeners.len() < count {
        tries += 1;
        anyhow::ensure!(tries <= PORT_TRIES_MAX, "no {count} free loopback ports left");
        let l = TcpListener::bind("127.0.0.1:0")?;
        if handed_out.insert(l.local_addr()?.port()) {
            listeners.push(l);
        }
    }
    listeners.iter().map(|l| l.local_addr().map_err(Into::into)).collect()
}

/// The lowest port [`free_ports`] draws.
const PORTS_LOW: u16 = 10_000;
const PORT_TRIES_MAX: usize = 200;

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
