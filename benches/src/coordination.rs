//! The coordination plane at scale (issue 15): three real `strom` processes on this machine
//! holding N topics × 10 partitions with 3 replicas (the 100,000 partitions at
//! N = 10,000), measured from the outside as a user sees them: creation through Kafka
//! CreateTopics, leader moves after kill -9 of a broker, the next metadata commit after kill -9
//! of the active controller, a full restart, single-topic creation to visibility, and what an
//! idle node costs. Every step is bounded and reports "timed out after X s" instead of hanging;
//! a failed step does not stop the next ones. `COORD_TOPICS` (or `--coord-topics`) sets N.
//!
//! Steps run in the order that disturbs least first: create (1), idle (6), single creations
//! (5), broker kill (2), controller kill (3), full restart (4); the table lists them by the
//! issue's numbering.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value};
use strom_metadata::records::{
    metadata_record::Record, MetadataRecord, MetadataSnapshot, PartitionRecord, TopicRecord,
};
use strom_metadata::{MetadataImage, MetadataOffset};
use strom_tests::raw::RawConnection;
use strom_tests::{ClusterOptions, StromCluster};

const NODES: usize = 3;
const PARTITIONS_PER_TOPIC: i32 = 10;
const REPLICATION_FACTOR: i16 = 3;
/// The open-file limit of every node (soft = hard).
const FD_LIMIT: u64 = 20_000;
const TOPICS_DEFAULT: usize = 10_000;
/// Topics per CreateTopics request, and requests in flight (one per connection).
const BATCH_TOPICS: usize = 500;
const BATCHES_IN_FLIGHT: usize = 3;
/// Tries of a topic whose creation failed (its batch is sent again with the failed topics).
const CREATE_ATTEMPTS_MAX: u32 = 3;
/// Partitions produced to and consumed from after creation (step 1).
const SAMPLE_PARTITIONS: usize = 1_000;
/// Partitions of the killed broker an acks=all producer writes to (step 2).
const FAILOVER_SAMPLE: usize = 100;
/// Partitions written after the full restart (step 4).
const RESTART_SAMPLE: usize = 100;
const SNAPSHOT_RECORDS: usize = 1_000_000;
const CREATIONS_DEFAULT: usize = 1_000;
/// Single creations that fail in a row before step 5 gives up (a cluster that commits nothing).
const CREATION_FAILURES_IN_A_ROW_MAX: usize = 3;
const IDLE_SECS_DEFAULT: u64 = 20;

const METADATA_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 7;
/// CreateTopics' `timeout_ms`: how long the broker may wait for the commit.
const CREATE_TIMEOUT_MS: i32 = 30_000;
const TOPIC_ALREADY_EXISTS: i16 = 36;

const CREATE_TIMEOUT: Duration = Duration::from_secs(300);
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(120);
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(120);
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(30);
const LEADERS_TIMEOUT: Duration = Duration::from_secs(60);
const RESUME_TIMEOUT: Duration = Duration::from_secs(60);
const REJOIN_TIMEOUT: Duration = Duration::from_secs(120);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const FULL_RESTART_TIMEOUT: Duration = Duration::from_secs(300);
const CREATION_TIMEOUT: Duration = Duration::from_secs(10);
const CREATIONS_TIMEOUT: Duration = Duration::from_secs(300);
/// Settling before the idle measurement (follower fetches, broker heartbeats find their pace).
const IDLE_SETTLE: Duration = Duration::from_secs(5);
/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(10);
/// An acknowledgement this long after the kill came from a live leader (replies already in
/// the client's socket when the leader died arrive within it).
const AFTER_KILL_MARGIN: Duration = Duration::from_millis(50);
/// The failover producer sends one record to every sample partition this often.
const FAILOVER_SEND_INTERVAL: Duration = Duration::from_millis(20);
const PROBE_THREADS_PER_NODE: usize = 2;

/// How large a run is: `COORD_TOPICS` (or `--coord-topics`), `COORD_CREATIONS`,
/// `COORD_IDLE_SECS`; `COORD_EXTRA_TOML` is added to every node's config; `COORD_STEPS`
/// (comma-separated, from [`STEPS`]) runs only those steps after the creation.
pub struct Scale {
    pub topics: usize,
    pub creations: usize,
    pub idle_secs: u64,
    /// The steps after the creation to run; all when `None`.
    pub steps: Option<Vec<String>>,
}

impl Scale {
    pub fn from_env(topics_flag: Option<usize>) -> Result<Scale> {
        let var = |name: &str, default: u64| -> Result<u64> {
            match std::env::var(name) {
                Ok(v) => v.trim().parse().with_context(|| format!("{name}={v} is not a number")),
                Err(_) => Ok(default),
            }
        };
        let topics = match topics_flag {
            Some(n) => n,
            None => var("COORD_TOPICS", TOPICS_DEFAULT as u64)? as usize,
        };
        anyhow::ensure!(topics > 0, "COORD_TOPICS must be at least 1");
        let steps = match std::env::var("COORD_STEPS") {
            Ok(list) => {
                let steps: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = steps.iter().find(|s| !STEPS.contains(&s.as_str())) {
                    anyhow::bail!("COORD_STEPS: unknown step {bad:?}; the steps are {STEPS:?}");
                }
                Some(steps)
            }
            Err(_) => None,
        };
        Ok(Scale {
            topics,
            creations: var("COORD_CREATIONS", CREATIONS_DEFAULT as u64)? as usize,
            idle_secs: var("COORD_IDLE_SECS", IDLE_SECS_DEFAULT)?.max(1),
            steps,
        })
    }

    /// Whether a step after the creation runs (`COORD_STEPS`: all when unset).
    fn wants(&self, step: &str) -> bool {
        self.steps.as_ref().is_none_or(|steps| steps.iter().any(|s| s == step))
    }
}

/// The steps after the creation, as `COORD_STEPS` names them.
const STEPS: [&str; 6] =
    ["idle", "creations", "broker-kill", "controller-kill", "restart", "snapshot"];

// ---------- the report ----------

/// How a figure compares with the target.
#[derive(Clone, Copy)]
enum Target {
    /// At most this many of the figure's unit.
    AtMost(f64),
    /// At least this many.
    AtLeast(f64),
    None,
}

struct Figure {
    step: u8,
    what: String,
    value: Option<f64>,
    unit: &'static str,
    target: Target,
    /// Why there is no value (a timeout, an error), or a remark beside it.
    note: String,
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
    details: BTreeMap<String, Value>,
    /// What happened to the nodes on the way (a process that exited by itself).
    events: Vec<String>,
}

impl Report {
    fn push(
        &mut self,
        step: u8,
        what: impl Into<String>,
        value: Result<f64>,
        unit: &'static str,
        target: Target,
    ) {
        let what = what.into();
        let (value, note) = match value {
            Ok(v) => (Some(v), String::new()),
            Err(e) => (None, format!("{e:#}")),
        };
        println!("  [{step}] {what}: {}", show(value, unit, &note));
        self.figures.push(Figure { step, what, value, unit, target, note });
    }

    fn print_table(&self, scale: &Scale) {
        println!(
            "coordination, {} topics x {PARTITIONS_PER_TOPIC} partitions, RF {REPLICATION_FACTOR}, \
             {NODES} nodes (targets are the issue's, for 10,000 topics):",
            scale.topics
        );
        println!("  {:<4} {:<66} {:>14} {:>10}  ok", "step", "figure", "measured", "target");
        let mut sorted: Vec<&Figure> = self.figures.iter().collect();
        sorted.sort_by_key(|f| f.step);
        for f in sorted {
            let target = match f.target {
                Target::AtMost(t) => format!("<= {}", number(t, f.unit)),
                Target::AtLeast(t) => format!(">= {}", number(t, f.unit)),
                Target::None => String::new(),
            };
            let ok = match (f.value, f.target) {
                (None, Target::None) => "",
                (None, _) => "FAIL",
                (Some(v), Target::AtMost(t)) if v <= t => "yes",
                (Some(v), Target::AtLeast(t)) if v >= t => "yes",
                (Some(_), Target::None) => "",
                (Some(_), _) => "no",
            };
            let measured = match f.value {
                Some(v) => number(v, f.unit),
                None => "-".to_string(),
            };
            println!("  {:<4} {:<66} {:>14} {:>10}  {ok}", f.step, f.what, measured, target);
            if !f.note.is_empty() {
                println!("       {}", f.note);
            }
        }
        for event in &self.events {
            println!("  note: {event}");
        }
    }

    fn json(self, scale: &Scale) -> Value {
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                let (kind, target) = match f.target {
                    Target::AtMost(t) => ("at_most", Some(t)),
                    Target::AtLeast(t) => ("at_least", Some(t)),
                    Target::None => ("none", None),
                };
                json!({
                    "step": f.step, "figure": f.what, "value": f.value, "unit": f.unit,
                    "target": target, "target_kind": kind, "note": f.note,
                })
            })
            .collect();
        json!({
            "topics": scale.topics, "partitions_per_topic": PARTITIONS_PER_TOPIC,
            "replication_factor": REPLICATION_FACTOR, "nodes": NODES, "fd_limit": FD_LIMIT,
            "figures": figures, "details": self.details, "events": self.events,
        })
    }
}

fn number(v: f64, unit: &str) -> String {
    match unit {
        "s" => format!("{v:.2} s"),
        "ms" => format!("{v:.1} ms"),
        "%" => format!("{v:.2}%"),
        "MiB" => format!("{v:.0} MiB"),
        _ => format!("{v:.0} {unit}"),
    }
}

fn show(value: Option<f64>, unit: &str, note: &str) -> String {
    match value {
        Some(v) => number(v, unit),
        None => format!("FAILED: {note}"),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn timed_out(timeout: Duration, what: &str) -> anyhow::Error {
    anyhow::anyhow!("timed out after {} s {what}", timeout.as_secs())
}

// ---------- raw Kafka requests ----------

/// One raw Kafka connection to a node, opened again after an error.
struct NodeConn {
    addr: SocketAddr,
    conn: Option<RawConnection>,
}

impl NodeConn {
    fn new(addr: SocketAddr) -> NodeConn {
        NodeConn { addr, conn: None }
    }

    fn call<Req, Resp>(&mut self, key: ApiKey, version: i16, request: &Req) -> Result<Resp>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(RawConnection::connect(self.addr)?),
        };
        let result = conn
            .send_request(key as i16, version, request, version)
            .and_then(|id| conn.read_response(id, version));
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Metadata of `topics`, or of every topic.
    fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        let topics = topics.map(|names| {
            names.iter().map(|n| MetadataRequestTopic::default().with_name(Some(name(n)))).collect()
        });
        let request =
            MetadataRequest::default().with_topics(topics).with_allow_auto_topic_creation(false);
        self.call(ApiKey::Metadata, METADATA_VERSION, &request)
    }

    /// CreateTopics of `topics`; each topic's error code.
    fn create(
        &mut self,
        topics: &[String],
        partitions: i32,
        replication_factor: i16,
    ) -> Result<Vec<(String, i16)>> {
        let request =
            CreateTopicsRequest::default().with_timeout_ms(CREATE_TIMEOUT_MS).with_topics(
                topics
                    .iter()
                    .map(|t| {
                        CreatableTopic::default()
                            .with_name(name(t))
                            .with_num_partitions(partitions)
                            .with_replication_factor(replication_factor)
                    })
                    .collect(),
            );
        let response: CreateTopicsResponse =
            self.call(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, &request)?;
        Ok(response.topics.iter().map(|t| (t.name.0.to_string(), t.error_code)).collect())
    }
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

fn error_name(code: i16) -> String {
    code.err().map_or_else(|| format!("error {code}"), |e| format!("{e:?}"))
}

/// (topic, partition) → leader (-1: none) of every partition a Metadata answer lists.
fn leaders(response: &MetadataResponse) -> HashMap<(String, i32), i32> {
    let mut out = HashMap::new();
    for topic in &response.topics {
        let Some(name) = &topic.name else { continue };
        for p in &topic.partitions {
            out.insert((name.0.to_string(), p.partition_index), p.leader_id.0);
        }
    }
    out
}

/// Topics listed without error with all their partitions, each led by a listed broker.
fn ready_topics(response: &MetadataResponse, partitions: usize) -> HashSet<String> {
    let brokers: HashSet<i32> = response.brokers.iter().map(|b| b.node_id.0).collect();
    response
        .topics
        .iter()
        .filter(|t| {
            t.error_code == 0
                && t.partitions.len() == partitions
                && t.partitions
                    .iter()
                    .all(|p| p.error_code == 0 && brokers.contains(&p.leader_id.0))
        })
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect()
}

// ---------- rdkafka producer that records its deliveries ----------

/// What the delivery reports said, per sample partition (the record's opaque): which were
/// ever acknowledged, and the first acknowledgement of each after a mark (the kill). Kept as
/// it arrives, so that a poll costs what the sample's size is, not the records sent.
struct Deliveries {
    acked: Mutex<HashSet<usize>>,
    failed: AtomicUsize,
    after_mark: Mutex<(Instant, HashMap<usize, Instant>)>,
}

impl Default for Deliveries {
    fn default() -> Self {
        Deliveries {
            acked: Mutex::default(),
            failed: AtomicUsize::new(0),
            after_mark: Mutex::new((Instant::now(), HashMap::new())),
        }
    }
}

struct Recorder(Arc<Deliveries>);
impl ClientContext for Recorder {}
impl ProducerContext for Recorder {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let at = Instant::now();
        if result.is_err() {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Ok(mut acked) = self.0.acked.lock() {
            acked.insert(index);
        }
        if let Ok(mut marked) = self.0.after_mark.lock() {
            if at > marked.0 {
                marked.1.entry(index).or_insert(at);
            }
        }
    }
}

impl Deliveries {
    /// Sample partitions with an acknowledgement.
    fn acked(&self) -> usize {
        self.acked.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// From now on, [`Self::acked_after_mark`] counts acknowledgements later than `since`.
    fn mark(&self, since: Instant) {
        if let Ok(mut marked) = self.after_mark.lock() {
            *marked = (since, HashMap::new());
        }
    }

    /// The first acknowledgement of each sample partition after the mark.
    fn acked_after_mark(&self) -> HashMap<usize, Instant> {
        self.after_mark.lock().map(|m| m.1.clone()).unwrap_or_default()
    }
}

fn recording_producer(bootstrap: &str) -> Result<(ThreadedProducer<Recorder>, Arc<Deliveries>)> {
    let deliveries = Arc::new(Deliveries::default());
    let producer = strom_tests::kafka::client_config(bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create_with_context(Recorder(deliveries.clone()))
        .context("create rdkafka producer")?;
    Ok((producer, deliveries))
}

/// Sends one record to sample partition `index`; false when the client's queue is full.
fn send_one(
    producer: &ThreadedProducer<Recorder>,
    (topic, partition): &(String, i32),
    index: usize,
) -> Result<bool> {
    let record = BaseRecord::with_opaque_to(topic, index)
        .partition(*partition)
        .payload(&b"coordination"[..])
        .key(&[] as &[u8]);
    match producer.send(record) {
        Ok(()) => Ok(true),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(false),
        Err((e, _)) => Err(e).context("produce"),
    }
}

/// Writes one record to each partition of `sample` and waits (bounded by `deadline`) until
/// every one is acknowledged; how many were.
fn produce_sample(bootstrap: &str, sample: &[(String, i32)], deadline: Instant) -> Result<usize> {
    let (producer, deliveries) = recording_producer(bootstrap)?;
    for (index, partition) in sample.iter().enumerate() {
        while !send_one(&producer, partition, index)? {
            std::thread::sleep(POLL);
        }
    }
    loop {
        let acked = deliveries.acked();
        if acked == sample.len() || Instant::now() >= deadline {
            producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            return Ok(acked);
        }
        std::thread::sleep(POLL);
    }
}

/// Reads every partition of `sample` from its beginning until `expected` records came back
/// or `deadline`; how many did.
fn consume_sample(
    bootstrap: &str,
    sample: &[(String, i32)],
    expected: usize,
    deadline: Instant,
) -> Result<usize> {
    let consumer: BaseConsumer = strom_tests::kafka::consumer(bootstrap, &[])?;
    let mut assignment = TopicPartitionList::new();
    for (topic, partition) in sample {
        assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut read = 0;
    while read < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) if message.payload() == Some(&b"coordination"[..]) => read += 1,
            _ => {}
        }
    }
    Ok(read)
}

// ---------- the cluster ----------

fn topic_name(i: usize) -> String {
    format!("coord-{i:05}")
}

fn start_cluster() -> Result<StromCluster> {
    // The snapshot lines of the controller, beside whatever level the bench runs nodes at.
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let options = ClusterOptions {
        fd_limit: Some(FD_LIMIT),
        // Settings to try against the figures (dotted keys, e.g.
        // `controller.raft_heartbeat_interval_ms = 100`).
        extra_toml: std::env::var("COORD_EXTRA_TOML").unwrap_or_default(),
        env: vec![("RUST_LOG".into(), format!("{level},strom_controller::state_machine=info"))],
        ..ClusterOptions::default()
    };
    StromCluster::start(NODES, options)
}

fn conns(cluster: &StromCluster) -> BTreeMap<u32, NodeConn> {
    cluster.ids().into_iter().map(|id| (id, NodeConn::new(cluster.kafka_addr(id)))).collect()
}

/// Notes every node whose process exited by itself since the last look.
fn note_exits(cluster: &mut StromCluster, report: &mut Report, during: &str) {
    for id in cluster.running() {
        if let Ok(Some(status)) = cluster.node_mut(id).try_exit_status() {
            let event = format!("node {id} exited with {status} during {during}");
            println!("  {event}");
            report.events.push(event);
        }
    }
}

/// Notes the nodes that exited, then fails unless all of them run: the later steps need the
/// whole cluster, and a node that exited by itself (EMFILE, a failed log directory) would
/// exit again if started.
fn whole_cluster(cluster: &mut StromCluster, report: &mut Report, before: &str) -> Result<()> {
    note_exits(cluster, report, &format!("the step before {before}"));
    let running = cluster.running();
    if running.len() < NODES {
        bail!("skipped: only nodes {running:?} of {NODES} run (the others exited; see the notes)");
    }
    Ok(())
}

/// `count` partitions spread evenly over `topics` (all of them when there are fewer).
fn spread(topics: &[String], count: usize) -> Vec<(String, i32)> {
    let total = topics.len() * PARTITIONS_PER_TOPIC as usize;
    let count = count.min(total);
    (0..count)
        .map(|k| {
            let g = k * total / count;
            let per = PARTITIONS_PER_TOPIC as usize;
            (topics[g / per].clone(), (g % per) as i32)
        })
        .collect()
}

/// Active controller as node `id`'s DescribeCluster (admin gRPC) names it.
fn active_controller(cluster: &StromCluster) -> Result<u32> {
    let mut last = anyhow::anyhow!("no node is running");
    for id in cluster.running() {
        match cluster.describe_cluster(id) {
            Ok(state) => match state.active_controller_id {
                Some(c) => return Ok(c as u32),
                None => last = anyhow::anyhow!("node {id} knows no active controller"),
            },
            Err(e) => last = e,
        }
    }
    Err(last)
}

// ---------- step 1: creation ----------

struct Batch {
    topics: Vec<String>,
    attempt: u32,
}

/// Creates `names` in batches through CreateTopics, several batches in flight on connections
/// to every node; the created topics (sorted) and error counts by name.
fn create_all(
    cluster: &StromCluster,
    names: &[String],
) -> (Vec<String>, BTreeMap<String, usize>, bool) {
    let queue: Mutex<VecDeque<Batch>> = Mutex::new(
        names.chunks(BATCH_TOPICS).map(|c| Batch { topics: c.to_vec(), attempt: 1 }).collect(),
    );
    let pending = AtomicUsize::new(names.len().div_ceil(BATCH_TOPICS));
    let created: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let errors: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
    let deadline = Instant::now() + CREATE_TIMEOUT;
    let addrs: Vec<SocketAddr> = cluster.ids().iter().map(|&id| cluster.kafka_addr(id)).collect();
    let count_error = |key: String, n: usize| {
        if let Ok(mut e) = errors.lock() {
            *e.entry(key).or_default() += n;
        }
    };
    let requeue = |topics: Vec<String>, attempt: u32| {
        if attempt < CREATE_ATTEMPTS_MAX {
            pending.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut q) = queue.lock() {
                q.push_back(Batch { topics, attempt: attempt + 1 });
            }
        }
    };
    std::thread::scope(|scope| {
        for k in 0..BATCHES_IN_FLIGHT {
            let addr = addrs[k % addrs.len()];
            let (queue, pending, created) = (&queue, &pending, &created);
            let (count_error, requeue) = (&count_error, &requeue);
            scope.spawn(move || {
                let mut conn = NodeConn::new(addr);
                while Instant::now() < deadline {
                    let batch = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some(batch) = batch else {
                        if pending.load(Ordering::SeqCst) == 0 {
                            return;
                        }
                        std::thread::sleep(POLL);
                        continue;
                    };
                    match conn.create(&batch.topics, PARTITIONS_PER_TOPIC, REPLICATION_FACTOR) {
                        Ok(results) => {
                            let mut failed = Vec::new();
                            for (topic, code) in results {
                                if code == 0 || code == TOPIC_ALREADY_EXISTS {
                                    if let Ok(mut c) = created.lock() {
                                        c.push(topic);
                                    }
                                } else {
                                    count_error(error_name(code), 1);
                                    failed.push(topic);
                                }
                            }
                            if !failed.is_empty() {
                                requeue(failed, batch.attempt);
                            }
                        }
                        Err(e) => {
                            let mut text = format!("request failed: {e:#}");
                            text.truncate(160);
                            count_error(text, batch.topics.len());
                            requeue(batch.topics, batch.attempt);
                        }
                    }
                    pending.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
    });
    let timed_out = pending.load(Ordering::SeqCst) > 0;
    let mut created = created.into_inner().unwrap_or_default();
    created.sort_unstable();
    created.dedup();
    (created, errors.into_inner().unwrap_or_default(), timed_out)
}

/// Polls every node's full Metadata until each lists every topic of `expected` ready; the
/// time that took, or how far each node got.
fn wait_visible(
    cluster: &StromCluster,
    expected: &[String],
    timeout: Duration,
) -> Result<Duration, BTreeMap<u32, String>> {
    let started = Instant::now();
    let expected: HashSet<&String> = expected.iter().collect();
    let mut conns = conns(cluster);
    let mut seen: BTreeMap<u32, String> =
        cluster.running().into_iter().map(|id| (id, "not asked".to_string())).collect();
    let mut done: HashSet<u32> = HashSet::new();
    while started.elapsed() < timeout {
        for id in cluster.running() {
            if done.contains(&id) {
                continue;
            }
            let Some(conn) = conns.get_mut(&id) else { continue };
            match conn.metadata(None) {
                Ok(response) => {
                    let ready = ready_topics(&response, PARTITIONS_PER_TOPIC as usize);
                    let count = expected.iter().filter(|t| ready.contains(t.as_str())).count();
                    seen.insert(id, format!("{count} of {} ready", expected.len()));
                    if count == expected.len() {
                        done.insert(id);
                    }
                }
                Err(e) => {
                    seen.insert(id, format!("{e:#}"));
                }
            }
        }
        if cluster.running().iter().all(|id| done.contains(id)) {
            return Ok(started.elapsed());
        }
        std::thread::sleep(POLL);
    }
    Err(seen)
}

/// Step 1; the created topics (later steps work on them).
fn step_create(cluster: &mut StromCluster, scale: &Scale, report: &mut Report) -> Vec<String> {
    let names: Vec<String> = (0..scale.topics).map(topic_name).collect();
    println!(
        "coordination [1]: creating {} topics x {PARTITIONS_PER_TOPIC} partitions RF \
         {REPLICATION_FACTOR} in CreateTopics of {BATCH_TOPICS}, {BATCHES_IN_FLIGHT} in flight",
        scale.topics
    );
    let started = Instant::now();
    let (created, errors, unfinished) = create_all(cluster, &names);
    let answered = started.elapsed();
    report.details.insert(
        "create".into(),
        json!({"created": created.len(), "asked": names.len(), "errors": errors,
               "answered_s": secs(answered), "timed_out": unfinished}),
    );
    let all = created.len() == names.len();
    let creation = if all {
        Ok(secs(answered))
    } else if unfinished {
        Err(timed_out(
            CREATE_TIMEOUT,
            &format!("with {} of {} created", created.len(), names.len()),
        )
        .context(format!("errors: {errors:?}")))
    } else {
        Err(anyhow::anyhow!(
            "{} of {} created after {CREATE_ATTEMPTS_MAX} tries; errors: {errors:?}",
            created.len(),
            names.len()
        ))
    };
    report.push(1, "CreateTopics answered for every topic", creation, "s", Target::None);
    note_exits(cluster, report, "creation");

    let visible = wait_visible(cluster, &created, VISIBLE_TIMEOUT);
    let total = match visible {
        Ok(_) if all => Ok(secs(started.elapsed())),
        Ok(_) => Err(anyhow::anyhow!(
            "only {} of {} topics were created (all of those are visible)",
            created.len(),
            names.len()
        )),
        Err(seen) => Err(timed_out(VISIBLE_TIMEOUT, "waiting for every broker's Metadata")
            .context(format!("nodes: {seen:?}"))),
    };
    report.push(
        1,
        format!("create {} partitions -> all in every broker's Metadata", names.len() * 10),
        total,
        "s",
        Target::AtMost(60.0),
    );
    record_fds(cluster, report, "fds_after_create");

    if let Err(e) = whole_cluster(cluster, report, "the sample") {
        report.push(1, "produce+consume sample", Err(e), "records", Target::None);
        return created;
    }
    let sample = spread(&created, SAMPLE_PARTITIONS);
    if sample.is_empty() {
        report.push(
            1,
            "produce+consume sample",
            Err(anyhow::anyhow!("no topic")),
            "records",
            Target::None,
        );
        return created;
    }
    let bootstrap = cluster.bootstrap();
    let started = Instant::now();
    let deadline = started + SAMPLE_TIMEOUT;
    let produced = produce_sample(&bootstrap, &sample, deadline);
    let produce_s = secs(started.elapsed());
    let consumed = produced
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .and_then(|_| consume_sample(&bootstrap, &sample, sample.len(), deadline));
    let consume_s = secs(started.elapsed()) - produce_s;
    let n = sample.len() as f64;
    let produced_f = produced.map(|p| p as f64);
    let consumed_f = consumed.map(|c| c as f64);
    report.details.insert(
        "sample".into(),
        json!({"partitions": sample.len(), "produce_s": produce_s, "consume_s": consume_s}),
    );
    report.push(
        1,
        format!("sample of {} partitions: records acknowledged (acks=all)", sample.len()),
        produced_f,
        "records",
        Target::AtLeast(n),
    );
    report.push(
        1,
        format!("sample of {} partitions: records consumed back", sample.len()),
        consumed_f,
        "records",
        Target::AtLeast(n),
    );
    note_exits(cluster, report, "the sample produce and consume");
    created
}

fn record_fds(cluster: &StromCluster, report: &mut Report, key: &str) {
    let fds: BTreeMap<String, Option<usize>> = cluster
        .running()
        .into_iter()
        .map(|id| (format!("node{id}"), cluster.node(id).pid().and_then(open_fds)))
        .collect();
    println!("  open fds: {fds:?}");
    report.details.insert(key.into(), json!(fds));
}

// ---------- step 6: idle ----------

fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn status_field(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn fd_limit_of(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn step_idle(cluster: &mut StromCluster, scale: &Scale, report: &mut Report) {
    if let Err(e) = whole_cluster(cluster, report, "idle") {
        report.push(6, "idle CPU, RSS, open fds", Err(e), "%", Target::AtMost(5.0));
        return;
    }
    println!(
        "coordination [6]: idle CPU over {} s (after {} s settling)",
        scale.idle_secs,
        IDLE_SETTLE.as_secs()
    );
    std::thread::sleep(IDLE_SETTLE);
    let ids = cluster.running();
    let pids: Vec<(u32, u32)> =
        ids.iter().filter_map(|&id| cluster.node(id).pid().map(|p| (id, p))).collect();
    let before: Vec<Option<u64>> = pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(scale.idle_secs));
    let wall = secs(started.elapsed());
    let tick = crate::clock_ticks();
    let mut nodes = BTreeMap::new();
    for ((id, pid), before) in pids.iter().zip(before) {
        let cpu = match (before, cpu_ticks(*pid)) {
            (Some(b), Some(a)) => Ok(100.0 * (a.saturating_sub(b)) as f64 / tick / wall),
            _ => Err(anyhow::anyhow!("node {id}'s /proc/{pid}/stat unreadable (exited?)")),
        };
        let rss = status_field(*pid, "VmRSS:").map(|kb| kb / 1024.0);
        let fds = open_fds(*pid);
        let threads = status_field(*pid, "Threads:");
        nodes.insert(
            format!("node{id}"),
            json!({"cpu_pct": cpu.as_ref().ok(), "rss_mb": rss, "open_fds": fds,
                   "fd_limit": fd_limit_of(*pid), "threads": threads}),
        );
        report.push(
            6,
            format!("idle CPU, node {id} (% of one core)"),
            cpu,
            "%",
            Target::AtMost(5.0),
        );
        report.push(6, format!("RSS, node {id}"), rss.context("no VmRSS"), "MiB", Target::None);
        report.push(
            6,
            format!("open fds, node {id} (limit {})", fd_limit_of(*pid).unwrap_or(0)),
            fds.map(|f| f as f64).context("no /proc fd"),
            "fds",
            Target::None,
        );
    }
    report.details.insert("idle".into(), json!({"secs": wall, "nodes": nodes}));
}

// ---------- step 5: single creations ----------

/// One single-topic CreateTopics through `create`, then every node's Metadata for that topic
/// polled until each lists it with a leader: (answer, visible everywhere) after the send.
fn one_creation(
    create: &mut NodeConn,
    pollers: &mut [NodeConn],
    topic: &str,
) -> Result<(Duration, Duration)> {
    let started = Instant::now();
    let name = [topic.to_string()];
    let results = create.create(&name, 1, REPLICATION_FACTOR)?;
    let answered = started.elapsed();
    match results.first() {
        Some((_, 0)) => {}
        Some((_, code)) => bail!("CreateTopics {topic}: {}", error_name(*code)),
        None => bail!("CreateTopics {topic}: no result"),
    }
    let mut waiting: Vec<usize> = (0..pollers.len()).collect();
    while !waiting.is_empty() {
        if started.elapsed() > CREATION_TIMEOUT {
            return Err(timed_out(CREATION_TIMEOUT, &format!("until {topic} was visible"))
                .context(format!("{} nodes still without it", waiting.len())));
        }
        let mut still = Vec::new();
        for i in waiting {
            let visible = pollers[i]
                .metadata(Some(&name))
                .map(|r| ready_topics(&r, 1).contains(topic))
                .unwrap_or(false);
            if !visible {
                still.push(i);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok((answered, started.elapsed()))
}

fn step_creations(cluster: &mut StromCluster, scale: &Scale, report: &mut Report) {
    if let Err(e) = whole_cluster(cluster, report, "the single creations") {
        report.push(
            5,
            "topic creation -> visible on every broker",
            Err(e),
            "ms",
            Target::AtMost(50.0),
        );
        return;
    }
    println!(
        "coordination [5]: {} single-topic creations (1 partition, RF {REPLICATION_FACTOR}), each \
         polled until every broker's Metadata lists it",
        scale.creations
    );
    let ids = cluster.running();
    let mut creators: Vec<NodeConn> =
        ids.iter().map(|&id| NodeConn::new(cluster.kafka_addr(id))).collect();
    let mut pollers: Vec<NodeConn> =
        ids.iter().map(|&id| NodeConn::new(cluster.kafka_addr(id))).collect();
    let started = Instant::now();
    let (mut answered, mut visible) = (Vec::new(), Vec::new());
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let (mut in_a_row, mut stopped) = (0, None);
    for i in 0..scale.creations {
        if started.elapsed() > CREATIONS_TIMEOUT {
            stopped = Some(format!("timed out after {} s", CREATIONS_TIMEOUT.as_secs()));
            break;
        }
        let topic = format!("coord-single-{i:05}");
        let creator = &mut creators[i % ids.len()];
        match one_creation(creator, &mut pollers, &topic) {
            Ok((a, v)) => {
                answered.push(a.as_micros() as u64);
                visible.push(v.as_micros() as u64);
                in_a_row = 0;
            }
            Err(e) => {
                let mut text = format!("{e:#}");
                text.truncate(160);
                *failures.entry(text).or_default() += 1;
                in_a_row += 1;
                if in_a_row >= CREATION_FAILURES_IN_A_ROW_MAX {
                    stopped = Some(format!("{in_a_row} failures in a row"));
                    break;
                }
            }
        }
    }
    answered.sort_unstable();
    visible.sort_unstable();
    let pct = |v: &[u64], q: f64| crate::percentile(v, q);
    let done = visible.len();
    report.details.insert(
        "single_creations".into(),
        json!({"asked": scale.creations, "visible": done, "failures": failures,
               "stopped": stopped, "answered_ms": {"p50": pct(&answered, 0.5), "p99": pct(&answered, 0.99)},
               "visible_ms": {"p50": pct(&visible, 0.5), "p99": pct(&visible, 0.99),
                              "max": pct(&visible, 1.0)}}),
    );
    let outcome = |v: f64| -> Result<f64> {
        if done == 0 {
            bail!("no creation succeeded: {failures:?}")
        }
        Ok(v)
    };
    let remark = match (&stopped, failures.is_empty()) {
        (None, true) => String::new(),
        _ => format!(
            " ({done} of {} ok{})",
            scale.creations,
            stopped.as_deref().map(|s| format!(", stopped: {s}")).unwrap_or_default()
        ),
    };
    report.push(
        5,
        format!("topic creation -> visible on every broker, p50{remark}"),
        outcome(pct(&visible, 0.5)),
        "ms",
        Target::None,
    );
    report.push(
        5,
        format!("topic creation -> visible on every broker, p99{remark}"),
        outcome(pct(&visible, 0.99)),
        "ms",
        Target::AtMost(50.0),
    );
    report.push(5, "CreateTopics answered, p99", outcome(pct(&answered, 0.99)), "ms", Target::None);
    if !failures.is_empty() {
        let event = format!("single creations failed: {failures:?}");
        println!("  {event}");
        report.events.push(event);
    }
    note_exits(cluster, report, "the single creations");
}

// ---------- step 2: kill -9 of a broker ----------

/// Polls the survivors' Metadata until none of `moved` is led by `victim` or by nobody.
fn wait_leaders_moved(
    cluster: &StromCluster,
    victim: u32,
    moved: &[(String, i32)],
    killed: Instant,
) -> Result<Duration> {
    let mut topics: Vec<String> = moved.iter().map(|(t, _)| t.clone()).collect();
    topics.sort_unstable();
    topics.dedup();
    // Ask only for the affected topics unless that is most of them.
    let ask: Option<&[String]> = (topics.len() <= 1_000).then_some(&topics[..]);
    let survivors: Vec<u32> = cluster.running().into_iter().filter(|&id| id != victim).collect();
    let mut conns: BTreeMap<u32, NodeConn> =
        survivors.iter().map(|&id| (id, NodeConn::new(cluster.kafka_addr(id)))).collect();
    let mut last = String::new();
    let mut done: HashSet<u32> = HashSet::new();
    while killed.elapsed() < LEADERS_TIMEOUT {
        for (&id, conn) in conns.iter_mut() {
            if done.contains(&id) {
                continue;
            }
            match conn.metadata(ask) {
                Ok(response) => {
                    let leaders = leaders(&response);
                    let stuck = moved
                        .iter()
                        .filter(|p| leaders.get(*p).is_none_or(|&l| l < 0 || l == victim as i32))
                        .count();
                    if stuck == 0 {
                        done.insert(id);
                    } else {
                        last = format!(
                            "node {id}: {stuck} of {} still without a new leader",
                            moved.len()
                        );
                    }
                }
                Err(e) => last = format!("node {id}: {e:#}"),
            }
        }
        if done.len() == survivors.len() {
            return Ok(killed.elapsed());
        }
        std::thread::sleep(POLL);
    }
    Err(timed_out(LEADERS_TIMEOUT, "waiting for new leaders").context(last))
}

fn step_broker_kill(cluster: &mut StromCluster, topics: &[String], report: &mut Report) {
    let outcome = whole_cluster(cluster, report, "kill -9 of a broker")
        .and_then(|()| broker_kill(cluster, topics, report));
    if let Err(e) = outcome {
        report.push(2, "kill -9 of a broker", Err(e), "s", Target::AtMost(3.0));
    }
    note_exits(cluster, report, "the broker kill");
}

fn broker_kill(cluster: &mut StromCluster, topics: &[String], report: &mut Report) -> Result<()> {
    let controller = active_controller(cluster).context("no active controller before the kill")?;
    let survivor_probe = cluster.running().into_iter().find(|&id| id != controller);
    let probe = survivor_probe.context("no node besides the controller")?;
    // The broker (not the controller: step 3 kills that) leading the most partitions.
    let all = NodeConn::new(cluster.kafka_addr(probe)).metadata(None)?;
    let leaders_now = leaders(&all);
    let ours: HashSet<&String> = topics.iter().collect();
    let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for ((topic, partition), leader) in leaders_now {
        if ours.contains(&topic) {
            by_leader.entry(leader).or_default().push((topic, partition));
        }
    }
    let (victim, mut moved) = by_leader
        .into_iter()
        .filter(|(l, _)| *l >= 0 && *l as u32 != controller)
        .max_by_key(|(_, v)| v.len())
        .map(|(l, v)| (l as u32, v))
        .context("no broker but the controller leads a partition")?;
    moved.sort_unstable();
    let sample: Vec<(String, i32)> = (0..FAILOVER_SAMPLE.min(moved.len()))
        .map(|k| moved[k * moved.len() / FAILOVER_SAMPLE.min(moved.len())].clone())
        .collect();
    println!(
        "coordination [2]: kill -9 of broker {victim} (leads {} partitions; controller is {controller}), \
         acks=all producer to {} of them",
        moved.len(),
        sample.len()
    );
    let survivors: Vec<u32> = cluster.running().into_iter().filter(|&id| id != victim).collect();
    let (producer, deliveries) = recording_producer(&cluster.bootstrap_of(&survivors))?;
    let producer = Arc::new(producer);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = std::thread::spawn({
        let (producer, stop, sample) = (producer.clone(), stop.clone(), sample.clone());
        move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                for (index, partition) in sample.iter().enumerate() {
                    send_one(&producer, partition, index)?;
                }
                std::thread::sleep(FAILOVER_SEND_INTERVAL);
            }
            Ok(())
        }
    });
    let warm = Instant::now();
    deliveries.mark(warm);
    while deliveries.acked_after_mark().len() < sample.len() && warm.elapsed() < WARM_UP_TIMEOUT {
        std::thread::sleep(POLL);
    }
    let warmed = deliveries.acked_after_mark().len();
    if warmed < sample.len() {
        report.events.push(format!(
            "step 2: only {warmed} of {} sample partitions were acknowledged before the kill",
            sample.len()
        ));
    }

    let killed = Instant::now();
    deliveries.mark(killed + AFTER_KILL_MARGIN);
    cluster.kill9(victim)?;
    let moved_in = wait_leaders_moved(cluster, victim, &moved, killed);
    report.push(
        2,
        format!("kill -9 of a broker -> its {} partitions have new leaders", moved.len()),
        moved_in.map(secs),
        "s",
        Target::AtMost(3.0),
    );
    while deliveries.acked_after_mark().len() < sample.len() && killed.elapsed() < RESUME_TIMEOUT {
        std::thread::sleep(POLL);
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().map_err(|_| anyhow::anyhow!("sender panicked"))?;
    let resumed = deliveries.acked_after_mark();
    // Microseconds from the kill to each sample partition's first acknowledgement.
    let mut after_kill_us: Vec<u64> =
        resumed.values().map(|t| (*t - killed).as_micros() as u64).collect();
    after_kill_us.sort_unstable();
    let first = resumed.values().min().map(|t| secs(*t - killed));
    let all = (resumed.len() == sample.len())
        .then(|| resumed.values().max().map(|t| secs(*t - killed)))
        .flatten();
    let median_s = crate::percentile(&after_kill_us, 0.5) / 1000.0;
    let within_target = after_kill_us.iter().filter(|us| **us <= 4_000_000).count();
    let failed = deliveries.failed.load(Ordering::Relaxed);
    producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    drop(producer);
    report.details.insert(
        "broker_kill".into(),
        json!({"victim": victim, "controller": controller, "partitions_led": moved.len(),
               "sample": sample.len(), "resumed": resumed.len(), "first_resumed_s": first,
               "all_resumed_s": all, "median_resumed_s": median_s,
               "resumed_within_4_s": within_target, "failed_deliveries": failed, "sender": sent.err().map(|e| format!("{e:#}"))}),
    );
    report.push(
        2,
        "acks=all producer resumes: first sample partition acknowledged",
        first.context("no acknowledgement after the kill"),
        "s",
        Target::None,
    );
    report.push(
        2,
        format!(
            "acks=all producer resumes: median sample partition ({within_target} of {} in 4 s)",
            sample.len()
        ),
        if resumed.is_empty() { Err(anyhow::anyhow!("none resumed")) } else { Ok(median_s) },
        "s",
        Target::None,
    );
    report.push(
        2,
        format!("acks=all producer resumes: all {} sample partitions acknowledged", sample.len()),
        all.ok_or_else(|| {
            timed_out(
                RESUME_TIMEOUT,
                &format!("with {} of {} resumed", resumed.len(), sample.len()),
            )
        }),
        "s",
        Target::AtMost(4.0),
    );

    let restarting = Instant::now();
    let restarted = cluster.restart(victim).map(|()| secs(restarting.elapsed()));
    report.push(
        2,
        format!("restart of broker {victim} -> its Metadata lists itself"),
        restarted,
        "s",
        Target::None,
    );
    let rejoined =
        wait_isr_full(cluster, topics, REJOIN_TIMEOUT).map(|_| secs(restarting.elapsed()));
    report.push(
        2,
        format!("restart of broker {victim} -> every ISR full again"),
        rejoined,
        "s",
        Target::None,
    );
    Ok(())
}

/// Waits until every node's Metadata shows every partition of `topics` with its whole replica
/// set in the ISR. Every node: a node just restarted answers from its own metadata log before
/// it has caught up, where the ISRs are still the full ones of before its kill.
fn wait_isr_full(cluster: &StromCluster, topics: &[String], timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    let ours: HashSet<&String> = topics.iter().collect();
    let mut conns = conns(cluster);
    let mut done: HashSet<u32> = HashSet::new();
    let mut last = String::new();
    while started.elapsed() < timeout {
        for (&id, conn) in conns.iter_mut() {
            if done.contains(&id) {
                continue;
            }
            match conn.metadata(None) {
                Ok(response) => {
                    let short = response
                        .topics
                        .iter()
                        .filter(|t| {
                            t.name.as_ref().is_some_and(|n| ours.contains(&n.0.to_string()))
                        })
                        .flat_map(|t| &t.partitions)
                        .filter(|p| p.isr_nodes.len() < p.replica_nodes.len())
                        .count();
                    if short == 0 {
                        done.insert(id);
                    } else {
                        last = format!("node {id}: {short} partitions with a short ISR");
                    }
                }
                Err(e) => last = format!("node {id}: {e:#}"),
            }
        }
        if done.len() == conns.len() {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(timed_out(timeout, "waiting for full ISRs").context(last))
}

// ---------- step 3: kill -9 of the active controller ----------

fn step_controller_kill(cluster: &mut StromCluster, report: &mut Report) {
    let outcome = whole_cluster(cluster, report, "kill -9 of the active controller")
        .and_then(|()| controller_kill(cluster, report));
    if let Err(e) = outcome {
        report.push(3, "kill -9 of the active controller", Err(e), "s", Target::AtMost(1.5));
    }
    note_exits(cluster, report, "the controller kill");
}

fn controller_kill(cluster: &mut StromCluster, report: &mut Report) -> Result<()> {
    let controller = active_controller(cluster)?;
    let survivors: Vec<u32> =
        cluster.running().into_iter().filter(|&id| id != controller).collect();
    println!(
        "coordination [3]: kill -9 of the active controller {controller}; CreateTopics of one \
         topic retried on nodes {survivors:?} ({PROBE_THREADS_PER_NODE} probes each) until one commits"
    );
    let addrs: Vec<SocketAddr> = survivors.iter().map(|&id| cluster.kafka_addr(id)).collect();
    let killed = Instant::now();
    cluster.kill9(controller)?;
    let first: Mutex<Option<Duration>> = Mutex::new(None);
    let attempts = AtomicUsize::new(0);
    let errors: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for k in 0..addrs.len() * PROBE_THREADS_PER_NODE {
            let addr = addrs[k % addrs.len()];
            let (first, attempts, errors, next) = (&first, &attempts, &errors, &next);
            scope.spawn(move || {
                let mut conn = NodeConn::new(addr);
                std::thread::sleep(Duration::from_millis(5 * k as u64));
                while killed.elapsed() < COMMIT_TIMEOUT
                    && first.lock().map(|f| f.is_none()).unwrap_or(false)
                {
                    let topic = format!("coord-probe-{}", next.fetch_add(1, Ordering::SeqCst));
                    attempts.fetch_add(1, Ordering::SeqCst);
                    // One partition, one replica: placement succeeds whatever is fenced.
                    let outcome = match conn.create(std::slice::from_ref(&topic), 1, 1) {
                        Ok(r) => match r.first() {
                            // Already there: an earlier try committed, unanswered.
                            Some((_, 0 | TOPIC_ALREADY_EXISTS)) => Ok(()),
                            Some((_, code)) => Err(error_name(*code)),
                            None => Err("no result".to_string()),
                        },
                        Err(e) => Err(format!("{e:#}").chars().take(120).collect()),
                    };
                    match outcome {
                        Ok(()) => {
                            if let Ok(mut f) = first.lock() {
                                f.get_or_insert(killed.elapsed());
                            }
                        }
                        Err(text) => {
                            if let Ok(mut e) = errors.lock() {
                                *e.entry(text).or_default() += 1;
                            }
                            std::thread::sleep(POLL);
                        }
                    }
                }
            });
        }
    });
    let first = first.into_inner().ok().flatten();
    let errors = errors.into_inner().unwrap_or_default();
    report.details.insert(
        "controller_kill".into(),
        json!({"controller": controller, "first_commit_s": first.map(secs),
               "attempts": attempts.load(Ordering::SeqCst), "errors": errors}),
    );
    report.push(
        3,
        "kill -9 of the active controller -> next metadata commit (CreateTopics ok)",
        first.map(secs).ok_or_else(|| {
            timed_out(COMMIT_TIMEOUT, "retrying CreateTopics")
                .context(format!("errors: {errors:?}"))
        }),
        "s",
        Target::AtMost(1.5),
    );
    match active_controller(cluster) {
        Ok(new) => report.details.insert("controller_after_kill".into(), json!(new)),
        Err(e) => report.details.insert("controller_after_kill".into(), json!(format!("{e:#}"))),
    };
    let restarting = Instant::now();
    let restarted = cluster.restart(controller).map(|()| secs(restarting.elapsed()));
    report.push(
        3,
        format!("restart of the old controller {controller} -> its Metadata lists itself"),
        restarted,
        "s",
        Target::None,
    );
    Ok(())
}

// ---------- step 4: full restart ----------

fn step_full_restart(cluster: &mut StromCluster, topics: &[String], report: &mut Report) {
    let outcome = whole_cluster(cluster, report, "full restart")
        .and_then(|()| full_restart(cluster, topics, report));
    if let Err(e) = outcome {
        report.push(4, "full restart", Err(e), "s", Target::AtMost(20.0));
    }
    note_exits(cluster, report, "the full restart");
}

/// Snapshot files (`*.checkpoint`) under a node's data directory: (count, bytes of the newest).
fn snapshot_files(dir: &Path) -> (usize, u64) {
    let (mut count, mut newest) = (0, (String::new(), 0));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                // Partition directories hold no snapshot: skip them (there may be 100,000).
                if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("coord-")) {
                    stack.push(path);
                }
            } else if let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) {
                if name.ends_with(".checkpoint") {
                    count += 1;
                    if name > newest.0 {
                        newest = (name, entry.metadata().map(|m| m.len()).unwrap_or(0));
                    }
                }
            }
        }
    }
    (count, newest.1)
}

fn full_restart(cluster: &mut StromCluster, topics: &[String], report: &mut Report) -> Result<()> {
    let ids = cluster.running();
    println!("coordination [4]: SIGTERM of nodes {ids:?}, then all started again");
    let stopping = Instant::now();
    for &id in &ids {
        cluster.node(id).send_sigterm()?;
    }
    let mut exits = BTreeMap::new();
    for &id in &ids {
        let left = EXIT_TIMEOUT.saturating_sub(stopping.elapsed()).max(Duration::from_secs(1));
        let status = cluster.node_mut(id).wait_exit(left);
        exits.insert(
            format!("node{id}"),
            status.map(|s| s.to_string()).unwrap_or_else(|e| format!("{e:#}")),
        );
    }
    let stopped_s = secs(stopping.elapsed());
    let snapshots: BTreeMap<String, Value> = ids
        .iter()
        .map(|&id| {
            let (count, bytes) = snapshot_files(cluster.node(id).data_dir());
            (format!("node{id}"), json!({"files": count, "newest_bytes": bytes}))
        })
        .collect();
    report.details.insert(
        "full_restart_stop".into(),
        json!({"stop_s": stopped_s, "exits": exits, "snapshots": snapshots}),
    );
    println!("  stopped in {stopped_s:.2} s: {exits:?}; snapshots: {snapshots:?}");

    let started = Instant::now();
    for &id in &ids {
        cluster.spawn(id)?;
    }
    let led = wait_visible(cluster, topics, FULL_RESTART_TIMEOUT);
    let led = match led {
        Ok(d) => Ok(secs(d)),
        Err(seen) => Err(timed_out(FULL_RESTART_TIMEOUT, "waiting for every partition to be led")
            .context(format!("nodes: {seen:?}"))),
    };
    let all_led = led.is_ok();
    report.push(
        4,
        format!("full restart -> all {} partitions led on every node", topics.len() * 10),
        led,
        "s",
        Target::None,
    );
    let writable = if all_led {
        let sample = spread(topics, RESTART_SAMPLE);
        let deadline = started + FULL_RESTART_TIMEOUT;
        match produce_sample(&cluster.bootstrap(), &sample, deadline)? {
            n if n == sample.len() => Ok(secs(started.elapsed())),
            n => Err(timed_out(
                FULL_RESTART_TIMEOUT,
                &format!("with {n} of {} acknowledged", sample.len()),
            )),
        }
    } else {
        Err(anyhow::anyhow!("not every partition was led"))
    };
    report.push(
        4,
        format!("full restart -> all led and a write to {RESTART_SAMPLE} partitions acknowledged"),
        writable,
        "s",
        Target::AtMost(20.0),
    );
    let logged: BTreeMap<String, usize> = ids
        .iter()
        .map(|&id| {
            let log = cluster.node(id).stderr();
            (format!("node{id}"), log.matches("metadata image loaded from snapshot").count())
        })
        .collect();
    report.details.insert("snapshot_loads_logged".into(), json!(logged));
    Ok(())
}

/// Records of a snapshot of `records` records: topics of 10 partitions on brokers 1-3.
fn snapshot_records(records: usize) -> Vec<MetadataRecord> {
    let per = PARTITIONS_PER_TOPIC as usize;
    let topics = records.div_ceil(per + 1);
    let mut out = Vec::with_capacity(topics * (per + 1));
    for t in 0..topics {
        let mut topic_id = vec![0u8; 16];
        topic_id[..8].copy_from_slice(&(t as u64 + 1).to_be_bytes());
        out.push(MetadataRecord {
            record: Some(Record::Topic(TopicRecord {
                name: format!("snapshot-{t:07}"),
                topic_id: topic_id.clone(),
            })),
        });
        for p in 0..PARTITIONS_PER_TOPIC {
            let leader = 1 + (t as i32 + p) % 3;
            out.push(MetadataRecord {
                record: Some(Record::Partition(PartitionRecord {
                    topic_id: topic_id.clone(),
                    partition_id: p,
                    replicas: vec![leader, 1 + leader % 3, 1 + (leader + 1) % 3],
                    isr: vec![leader, 1 + leader % 3, 1 + (leader + 1) % 3],
                    leader,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    ..Default::default()
                })),
            });
        }
    }
    out
}

/// A snapshot of [`SNAPSHOT_RECORDS`] records written to a file, then loaded the way the
/// controller's state machine opens one: read the file, decode the `MetadataSnapshot`, build
/// the `MetadataImage` from its records. In process, no node: the cost of the load itself.
fn step_snapshot_load(report: &mut Report) {
    println!("coordination [4]: a snapshot of {SNAPSHOT_RECORDS} metadata records, read + decode + image");
    match snapshot_load() {
        Ok((total, detail)) => {
            report.details.insert("snapshot_load".into(), detail);
            report.push(
                4,
                "1,000,000-record metadata snapshot loads (read+decode+image, in process)",
                Ok(total),
                "s",
                Target::AtMost(5.0),
            );
        }
        Err(e) => report.push(4, "metadata snapshot load", Err(e), "s", Target::AtMost(5.0)),
    }
}

fn snapshot_load() -> Result<(f64, Value)> {
    let records = snapshot_records(SNAPSHOT_RECORDS);
    let count = records.len();
    let bytes = MetadataSnapshot { records }.encode_to_vec();
    let path = std::env::temp_dir().join(format!("strom-bench-snapshot-{}", std::process::id()));
    std::fs::write(&path, &bytes)?;
    drop(bytes);
    let started = Instant::now();
    let data = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    let data = data?;
    let read = started.elapsed();
    let snapshot = MetadataSnapshot::decode(&data[..]).context("decode the snapshot")?;
    let decoded = started.elapsed();
    let image = MetadataImage::from_records(MetadataOffset(count as u64), &snapshot.records)
        .map_err(|e| anyhow::anyhow!("the snapshot does not apply: {e}"))?;
    let built = started.elapsed();
    let partitions: usize = image.topics.values().map(|t| t.partitions.len()).sum();
    anyhow::ensure!(partitions + image.topics.len() == count, "the image lost records");
    Ok((
        secs(built),
        json!({"records": count, "bytes": data.len(), "read_s": secs(read),
               "decode_s": secs(decoded - read), "image_s": secs(built - decoded)}),
    ))
}

// ---------- node logs ----------

/// The text without terminal colour sequences (`ESC [ ... m`), which the nodes' log has.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The most frequent kinds of `level` lines in a log, with their counts: the text after the
/// level, numbers replaced by `#` (one kind per message, not one per partition or port).
fn kinds(log: &str, level: &str, top: usize) -> (usize, Vec<(String, usize)>) {
    let marker = format!(" {level} ");
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut lines = 0;
    for line in log.lines() {
        let Some((_, text)) = line.split_once(&marker) else { continue };
        lines += 1;
        let kind: String =
            text.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).take(200).collect();
        *counts.entry(kind).or_default() += 1;
    }
    let mut sorted: Vec<(String, usize)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted.truncate(top);
    (lines, sorted)
}

fn summarize_logs(cluster: &StromCluster, report: &mut Report) {
    let mut nodes = BTreeMap::new();
    for id in cluster.ids() {
        let log = strip_ansi(&cluster.node(id).stderr());
        let emfile = log.matches("os error 24").count();
        let (errors, error_kinds) = kinds(&log, "ERROR", 5);
        let (warns, warn_kinds) = kinds(&log, "WARN", 3);
        let fatal: Option<String> = log
            .lines()
            .find(|l| l.starts_with("strom: fatal"))
            .map(|l| l.chars().take(300).collect());
        if emfile > 0 || errors > 0 || warns > 1_000 {
            let event = format!(
                "node {id} log: {errors} ERROR lines, {warns} WARN, {emfile} 'os error 24' \
                 (EMFILE); {}most: {:?} / {:?}",
                fatal.as_ref().map(|f| format!("{f}; ")).unwrap_or_default(),
                error_kinds.first(),
                warn_kinds.first()
            );
            report.events.push(event);
        }
        nodes.insert(
            format!("node{id}"),
            json!({"error_lines": errors, "warn_lines": warns, "emfile": emfile,
                   "fatal": fatal, "errors": error_kinds, "warnings": warn_kinds}),
        );
    }
    report.details.insert("node_logs".into(), json!(nodes));
}

/// Runs the section; the figures, details and events as JSON.
pub fn run(scale: &Scale) -> Value {
    let mut report = Report::default();
    println!(
        "coordination: {} topics x {PARTITIONS_PER_TOPIC} partitions RF {REPLICATION_FACTOR} on \
         {NODES} nodes with an fd limit of {FD_LIMIT}",
        scale.topics
    );
    let mut cluster = match start_cluster() {
        Ok(cluster) => cluster,
        Err(e) => {
            println!("coordination: FAILED: the cluster did not form: {e:#}");
            return json!({"error": format!("{e:#}")});
        }
    };
    let limits: BTreeMap<String, Option<u64>> = cluster
        .ids()
        .into_iter()
        .map(|id| (format!("node{id}"), cluster.node(id).pid().and_then(fd_limit_of)))
        .collect();
    report.details.insert("fd_limits".into(), json!(limits));
    let topics = step_create(&mut cluster, scale, &mut report);
    if scale.wants("idle") {
        step_idle(&mut cluster, scale, &mut report);
    }
    if scale.wants("creations") {
        step_creations(&mut cluster, scale, &mut report);
    }
    if scale.wants("broker-kill") {
        step_broker_kill(&mut cluster, &topics, &mut report);
    }
    if scale.wants("controller-kill") {
        step_controller_kill(&mut cluster, &mut report);
    }
    if scale.wants("restart") {
        step_full_restart(&mut cluster, &topics, &mut report);
    }
    summarize_logs(&cluster, &mut report);
    drop(cluster);
    if scale.wants("snapshot") {
        step_snapshot_load(&mut report);
    }
    report.details.insert("load_at_end".into(), json!(crate::load_average()));
    report.print_table(scale);
    report.json(scale)
}
