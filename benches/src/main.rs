//! `strom-bench`: starts its own strom nodes on loopback and measures them with librdkafka
//! (the `rdkafka` crate), next to this machine's limits (disk with and without fdatasync,
//! loopback TCP), so that every figure is also a ratio to what the hardware allows.
//!
//! `make bench` runs the quick set (a few minutes); `BENCH_FULL=1` runs longer. Results go to
//! stdout as a table and to `target/bench/results.json` (or `--json PATH`).

// A command-line tool: its report goes to stdout.
#![allow(clippy::print_stdout)]

mod batch;
mod coordination;
mod metadata;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value};
use strom_tests::raw::{self, RawConnection};
use strom_tests::{ClusterOptions, NodeOptions, StromCluster, StromNode};

/// One produce scenario of the matrix.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    nodes: usize,
    record_bytes: usize,
    partitions: i32,
    acks: &'static str,
}

struct Sizes {
    records_100b: u64,
    records_1k: u64,
    disk_mb: usize,
    tcp_mb: usize,
    latency_secs: u64,
    failover_rounds: usize,
}

fn sizes() -> Sizes {
    if std::env::var_os("BENCH_FULL").is_some() {
        Sizes {
            records_100b: 5_000_000,
            records_1k: 1_000_000,
            disk_mb: 2048,
            tcp_mb: 8192,
            latency_secs: 20,
            failover_rounds: 10,
        }
    } else {
        Sizes {
            records_100b: 1_000_000,
            records_1k: 300_000,
            disk_mb: 512,
            tcp_mb: 2048,
            latency_secs: 5,
            failover_rounds: 3,
        }
    }
}

// ---------- machine limits ----------

fn disk_limits(dir: &std::path::Path, mb: usize) -> Result<(f64, f64)> {
    let chunk = vec![0x5au8; 1 << 20];
    let run = |sync_each: bool| -> Result<f64> {
        let path = dir.join(if sync_each { "dd-sync" } else { "dd-nosync" });
        let mut f = std::fs::File::create(&path)?;
        let t = Instant::now();
        for _ in 0..mb {
            f.write_all(&chunk)?;
            if sync_each {
                f.sync_data()?;
            }
        }
        if !sync_each {
            f.sync_data()?; // what reached the disk, not only the page cache
        }
        let secs = t.elapsed().as_secs_f64();
        std::fs::remove_file(&path)?;
        Ok(mb as f64 / secs)
    };
    Ok((run(false)?, run(true)?))
}

/// The floor under acks latency: fdatasync of a small append (5 KB, as a lightly loaded
/// producer's batch), every millisecond for `secs`; (p50, p99, p99.9) in ms.
fn fsync_latency(dir: &std::path::Path, secs: f64) -> Result<(f64, f64, f64)> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0x5au8; 5000];
    let mut took = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        f.write_all(&chunk)?;
        let t = Instant::now();
        f.sync_data()?;
        took.push(t.elapsed().as_micros() as u64);
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::remove_file(&path)?;
    took.sort_unstable();
    Ok((percentile(&took, 0.5), percentile(&took, 0.99), percentile(&took, 0.999)))
}

fn loopback_limit(mb: usize) -> Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    let chunk = vec![1u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..mb {
        s.write_all(&chunk)?;
    }
    drop(s);
    let total = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let secs = t.elapsed().as_secs_f64();
    Ok(total as f64 / (1 << 20) as f64 / secs)
}

// ---------- process accounting ----------

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (user + system CPU seconds, peak RSS in MiB) of a process.
fn proc_usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some((ticks / clock_ticks(), hwm_kb / 1024.0))
}

/// Resident set now (`VmRSS`), in MiB.
fn rss_now(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kb / 1024.0)
}

/// A fresh node before any topic: its resident set once startup has settled.
fn idle_rss() -> Result<Value> {
    let r = start(1)?;
    let pid = *r.pids.first().context("no pid for the node")?;
    // Startup (raft log, controller registration) settles within a second; sample a few
    // times and keep the last, which is what the node holds while idle.
    let mut samples = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        samples.push(rss_now(pid).context("no VmRSS")?);
    }
    Ok(
        json!({ "idle_rss_mb": samples.last(), "samples_mb": samples, "peak_rss_mb": rss_peak_of(&r.pids) }),
    )
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| proc_usage(*p)).map(|(c, _)| c).sum()
}

fn rss_peak_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| proc_usage(*p)).map(|(_, r)| r).fold(0.0, f64::max)
}

// ---------- clients ----------

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64 + 1
}

#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Delivery latencies in microseconds (only when the opaque carries a send time).
    latencies_us: Mutex<Vec<u64>>,
    /// (when, ok) of every delivery, for failover windows.
    events: Mutex<Vec<(Instant, bool)>>,
    record_events: bool,
}

struct Ctx(Arc<Deliveries>);
impl ClientContext for Ctx {}
impl ProducerContext for Ctx {
    /// Send time in microseconds since `epoch()`, or 0 when latency is not measured.
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: Self::DeliveryOpaque) {
        let ok = result.is_ok();
        if ok {
            self.0.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
        }
        if ok && sent_us > 0 {
            if let Ok(mut l) = self.0.latencies_us.lock() {
                l.push((now_us() as usize).saturating_sub(sent_us) as u64);
            }
        }
        if self.0.record_events {
            if let Ok(mut e) = self.0.events.lock() {
                e.push((Instant::now(), ok));
            }
        }
    }
}

fn producer(bootstrap: &str, acks: &str, d: Arc<Deliveries>) -> Result<ThreadedProducer<Ctx>> {
    producer_lingering(bootstrap, acks, 5, &[], d)
}

/// The bench's producer; `extra` settings (e.g. `enable.idempotence`) apply before the
/// `BENCH_PRODUCER_CONF` overrides.
fn producer_lingering(
    bootstrap: &str,
    acks: &str,
    linger_ms: u32,
    extra: &[(&str, &str)],
    d: Arc<Deliveries>,
) -> Result<ThreadedProducer<Ctx>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", linger_ms.to_string())
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "60000");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    for (key, value) in overrides("BENCH_PRODUCER_CONF") {
        config.set(key, value);
    }
    Ok(config.create_with_context(Ctx(d))?)
}

/// `key=value,...` pairs from an environment variable, for comparing client settings.
fn overrides(var: &str) -> Vec<(String, String)> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32, rf: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let rt = std::thread::spawn({
        let topic = topic.to_string();
        move || {
            let new = NewTopic::new(&topic, partitions, TopicReplication::Fixed(rf));
            block_on(admin.create_topics([&new], &AdminOptions::new()))
        }
    });
    let results = rt.join().map_err(|_| anyhow::anyhow!("admin thread panicked"))??;
    for r in results {
        if let Err((t, e)) = r {
            bail!("create topic {t}: {e}");
        }
    }
    Ok(())
}

/// Drives a future to completion on this thread: rdkafka's admin futures complete from
/// librdkafka's own threads and need no runtime, so polling with a no-op waker suffices.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn produce(bootstrap: &str, topic: &str, n: u64, bytes: usize, acks: &str) -> Result<f64> {
    produce_with(bootstrap, topic, n, bytes, acks, &[])
}

/// [`produce`] with `extra` producer settings.
fn produce_with(
    bootstrap: &str,
    topic: &str,
    n: u64,
    bytes: usize,
    acks: &str,
    extra: &[(&str, &str)],
) -> Result<f64> {
    let d = Arc::new(Deliveries::default());
    let p = producer_lingering(bootstrap, acks, 5, extra, d.clone())?;
    let payload = vec![b'x'; bytes];
    // Connect and learn the topic's leaders before the clock starts: start-up, not throughput.
    p.client().fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let t = Instant::now();
    for _ in 0..n {
        let mut rec = BaseRecord::with_opaque_to(topic, 0).payload(&payload[..]).key(&[] as &[u8]);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => bail!("produce: {e}"),
            }
        }
    }
    p.flush(Duration::from_secs(120))?;
    let secs = t.elapsed().as_secs_f64();
    let failed = d.failed.load(Ordering::Relaxed);
    if failed > 0 || d.ok.load(Ordering::Relaxed) != n {
        bail!("{failed} deliveries failed, {} acknowledged of {n}", d.ok.load(Ordering::Relaxed));
    }
    Ok(n as f64 / secs)
}

/// Consumer settings for a cold read: large fetches and a deep prefetch queue, so that
/// librdkafka's fetcher always has a request in flight.
/// The consumer's settings; `BENCH_CONSUMER_CONF=key=value,...` overrides them (and applies to
/// the kcat cross-check).
fn consumer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in consumer_settings() {
        config.set(key, value);
    }
    config
}

fn consumer_settings() -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> =
        CONSUMER_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for (k, v) in overrides("BENCH_CONSUMER_CONF") {
        settings.retain(|(key, _)| *key != k);
        settings.push((k, v));
    }
    settings
}

/// Empty: librdkafka's defaults (`fetch.max.bytes` 50 MiB, `max.partition.fetch.bytes` 1 MiB,
/// `queued.max.messages.kbytes` 64 MiB) read fastest here. With 10 MiB per partition the 1 KiB
/// cold read ran at ~0.3 GB/s instead of 0.45-1.1 GB/s: each fetch then allocates 10 MiB
/// buffers on both sides, fresh memory whose page faults dominated the profiles.
const CONSUMER_SETTINGS: [(&str, &str); 0] = [];

/// A cold read: records/s over the whole read, and how long the first record took (client
/// start-up: connection, metadata, offset lookup, first fetch).
struct ConsumeRun {
    records_per_s: f64,
    first_record_ms: f64,
    /// From the first record to the last: the steady rate, without start-up.
    steady_records_per_s: f64,
}

/// Cold read of `n` records from offset 0 of every partition, by librdkafka's simple consumer
/// and batch call (`batch::Reader`). `BENCH_CONSUMER=poll` reads one message per
/// `BaseConsumer::poll` of a group consumer with `assign` instead: the first instrument's loop,
/// bound near 0.3 M records/s by the client.
fn consume(bootstrap: &str, topic: &str, partitions: i32, n: u64) -> Result<ConsumeRun> {
    let t = Instant::now();
    let deadline = t + Duration::from_secs(300);
    let first = if std::env::var("BENCH_CONSUMER").is_ok_and(|v| v == "poll") {
        let c: BaseConsumer = consumer_config(bootstrap)
            .set("group.id", "strom-bench")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        c.assign(&tpl)?;
        let (mut got, mut first) = (0u64, None);
        while got < n {
            if Instant::now() > deadline {
                bail!("consumed {got} of {n} before the deadline");
            }
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                m?;
                first.get_or_insert_with(Instant::now);
                got += 1;
            }
        }
        first.unwrap_or(t)
    } else {
        batch::Reader::start(&consumer_config(bootstrap), topic, partitions)?.drain(n, deadline)?
    };
    let (total, steady) = (t.elapsed().as_secs_f64(), first.elapsed().as_secs_f64());
    Ok(ConsumeRun {
        records_per_s: n as f64 / total,
        first_record_ms: (first - t).as_secs_f64() * 1000.0,
        steady_records_per_s: (n - 1) as f64 / steady,
    })
}

/// The same cold read with kcat (librdkafka in C, one process), as a cross-check of the
/// client side; `None` when kcat is not installed.
fn consume_kcat(bootstrap: &str, topic: &str, n: u64) -> Option<f64> {
    let t = Instant::now();
    let out = std::process::Command::new("kcat")
        .args(["-C", "-b", bootstrap, "-t", topic, "-e", "-o", "beginning", "-q", "-f", "%o\n"])
        .args(consumer_settings().iter().flat_map(|(k, v)| ["-X".to_string(), format!("{k}={v}")]))
        .output()
        .ok()?;
    let secs = t.elapsed().as_secs_f64();
    let lines = out.stdout.iter().filter(|b| **b == b'\n').count() as u64;
    (out.status.success() && lines == n).then_some(n as f64 / secs)
}

/// `BENCH_PERF=produce` or `=consume`: `perf record` of the broker process(es) during that
/// phase, written to `target/bench/perf-<phase>.data` (for `perf report`).
struct Perf(Option<std::process::Child>);

impl Perf {
    fn start_if(phase: &str, pids: &[u32]) -> Perf {
        if std::env::var("BENCH_PERF").ok().as_deref() != Some(phase) {
            return Perf(None);
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let out = format!("target/bench/perf-{phase}.data");
        // BENCH_PERF_SYSTEM=1: every process (client and broker), to see how they split.
        let target = match std::env::var_os("BENCH_PERF_SYSTEM") {
            Some(_) => vec!["-a".to_string()],
            None => vec!["-p".to_string(), pids.join(",")],
        };
        let child = std::process::Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "1999", "--call-graph", "dwarf,32768"])
            .args(["-o", &out])
            .args(&target)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok();
        std::thread::sleep(Duration::from_millis(300)); // let perf attach
        Perf(child)
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // perf writes its file on SIGINT.
            let _ =
                std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

// ---------- scenarios ----------

struct Running {
    _single: Option<StromNode>,
    _cluster: Option<StromCluster>,
    _peer: Option<Peer>,
    bootstrap: String,
    pids: Vec<u32>,
}

/// Which broker a scenario runs against.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Broker {
    Strom,
    /// tansu (`make bench-peer`) with its SQLite store.
    Tansu,
}

/// A peer broker process, killed on drop, with its data directory.
struct Peer {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// tansu (`TANSU_BIN`, or `tansu` on PATH) on a free loopback port, SQLite storage in a fresh
/// directory (`TANSU_STORAGE` overrides the engine URL, e.g. `memory://tansu/`).
fn start_tansu() -> Result<Running> {
    let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".into());
    let addr = strom_tests::free_ports(1)?[0];
    let dir = std::env::temp_dir().join(format!(
        "strom-bench-tansu-{}-{}",
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir)?;
    // tansu reads the SQLite path relative to its working directory.
    let storage = std::env::var("TANSU_STORAGE").unwrap_or_else(|_| "sqlite://tansu.db".into());
    let url = format!("tcp://{addr}");
    let child = std::process::Command::new(&bin)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", &storage])
        .current_dir(&dir)
        .stdout(std::fs::File::create(dir.join("stdout.log"))?)
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .spawn()
        .with_context(|| format!("cannot start {bin}"))?;
    let pid = child.id();
    let peer = Peer { child, dir };
    let bootstrap = addr.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(peer.dir.join("stderr.log")).unwrap_or_default();
            bail!("tansu did not listen on {addr} within 30 s: {log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Running { bootstrap, pids: vec![pid], _single: None, _cluster: None, _peer: Some(peer) })
}

fn start(nodes: usize) -> Result<Running> {
    if nodes == 1 {
        let node = StromNode::start(NodeOptions::default())?;
        let pids = node.pid().into_iter().collect();
        Ok(Running {
            bootstrap: node.bootstrap(),
            pids,
            _single: Some(node),
            _cluster: None,
            _peer: None,
        })
    } else {
        let cluster = StromCluster::start(nodes, ClusterOptions::default())?;
        let pids = cluster.ids().iter().filter_map(|id| cluster.node(*id).pid()).collect();
        Ok(Running {
            bootstrap: cluster.bootstrap(),
            pids,
            _single: None,
            _cluster: Some(cluster),
            _peer: None,
        })
    }
}

fn run_scenario(s: Scenario, n: u64, broker: Broker) -> Result<Value> {
    let r = match broker {
        Broker::Strom => start(s.nodes)?,
        Broker::Tansu => start_tansu()?,
    };
    let rf = if s.nodes >= 3 { 3 } else { 1 };
    create_topic(&r.bootstrap, "bench", s.partitions, rf)?;
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = cpu_of(&r.pids);
    let perf = Perf::start_if("produce", &r.pids);
    let produce_rps = produce(&r.bootstrap, "bench", n, s.record_bytes, s.acks)?;
    drop(perf);
    let cpu1 = cpu_of(&r.pids);
    let perf = Perf::start_if("consume", &r.pids);
    let consumed = consume(&r.bootstrap, "bench", s.partitions, n)?;
    let consume_rps = consumed.records_per_s;
    drop(perf);
    let cpu2 = cpu_of(&r.pids);
    let kcat_rps = consume_kcat(&r.bootstrap, "bench", n);
    let mb = |rps: f64| rps * s.record_bytes as f64 / 1e6;
    let gb_moved = n as f64 * s.record_bytes as f64 / 1e9;
    Ok(json!({
        "nodes": s.nodes, "record_bytes": s.record_bytes, "partitions": s.partitions, "acks": s.acks,
        "records": n,
        "produce_records_per_s": produce_rps, "produce_mb_per_s": mb(produce_rps),
        "consume_records_per_s": consume_rps, "consume_mb_per_s": mb(consume_rps),
        "kcat_consume_records_per_s": kcat_rps,
        "consume_first_record_ms": consumed.first_record_ms,
        "consume_steady_records_per_s": consumed.steady_records_per_s,
        "broker_cpu_s_produce": cpu1 - cpu0, "broker_cpu_s_consume": cpu2 - cpu1,
        "cpu_us_per_record_produce": (cpu1 - cpu0) * 1e6 / n as f64,
        "cpu_us_per_record_consume": (cpu2 - cpu1) * 1e6 / n as f64,
        "cpu_s_per_gb_produce": (cpu1 - cpu0) / gb_moved,
        "peak_rss_mb": rss_peak_of(&r.pids), "load": load_average(),
    }))
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Produce and end-to-end latency at a fixed rate (records/s), 100-byte records, acks=all,
/// with the producer's `linger.ms` (which every record may wait before its batch is sent).
fn latency(rate: f64, secs: u64, linger_ms: u32) -> Result<Value> {
    let r = start(1)?;
    create_topic(&r.bootstrap, "lat", 1, 1)?;
    let d = Arc::new(Deliveries::default());
    let p = producer_lingering(&r.bootstrap, "all", linger_ms, &[], d.clone())?;
    let bootstrap = r.bootstrap.clone();
    let stop = Arc::new(AtomicU64::new(0));
    let e2e = std::thread::spawn({
        let stop = stop.clone();
        move || -> Result<Vec<u64>> {
            let mut config = ClientConfig::new();
            config.set("bootstrap.servers", &bootstrap).set("fetch.wait.max.ms", "5");
            let reader = batch::Reader::start(&config, "lat", 1)?;
            let mut out = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(secs + 120);
            reader.each(
                deadline,
                |_| stop.load(Ordering::Relaxed) != 0,
                |payload| {
                    if let Some(p) = payload.get(..16) {
                        let sent = u128::from_be_bytes(p.try_into().unwrap_or([0; 16]));
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_micros())
                            .unwrap_or(0);
                        if sent > 0 {
                            out.push(now.saturating_sub(sent) as u64);
                        }
                    }
                },
            )?;
            Ok(out)
        }
    });
    // Warm-up, not measured (zero send time): the first records wait for the producer's
    // connection and metadata, which is start-up, not latency under load.
    for _ in 0..1000 {
        let rec = BaseRecord::with_opaque_to("lat", 0).payload(&[0u8; 100][..]).key(&[] as &[u8]);
        if let Err((e, _)) = p.send(rec) {
            bail!("latency warm-up: {e}");
        }
    }
    p.flush(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(500));
    let total = (rate * secs as f64) as u64;
    let start_t = Instant::now();
    let mut payload = [b'x'; 100];
    for i in 0..total {
        let due = start_t + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let micros =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        payload[..16].copy_from_slice(&micros.to_be_bytes());
        let rec = BaseRecord::with_opaque_to("lat", now_us() as usize)
            .payload(&payload[..])
            .key(&[] as &[u8]);
        if let Err((e, _)) = p.send(rec) {
            bail!("latency produce: {e}");
        }
    }
    let achieved = total as f64 / start_t.elapsed().as_secs_f64();
    p.flush(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(500));
    stop.store(1, Ordering::Relaxed);
    let mut e2e = e2e.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    let mut produce_lat = d.latencies_us.lock().map(|l| l.clone()).unwrap_or_default();
    produce_lat.sort_unstable();
    e2e.sort_unstable();
    Ok(json!({
        "rate_records_per_s": rate, "sent_records_per_s": achieved, "records": total,
        "linger_ms": linger_ms, "load": load_average(),
        "produce_ms": {"p50": percentile(&produce_lat, 0.5), "p99": percentile(&produce_lat, 0.99), "p999": percentile(&produce_lat, 0.999)},
        "end_to_end_ms": {"p50": percentile(&e2e, 0.5), "p99": percentile(&e2e, 0.99), "p999": percentile(&e2e, 0.999)},
    }))
}

/// One producer and setting of the idempotence rows: each run's records/s, and the CPU µs per
/// record the broker and this process (the producer: librdkafka's threads, or the raw sends)
/// spent in it.
#[derive(Default)]
struct Runs {
    records_per_s: Vec<f64>,
    broker_cpu_us_per_record: Vec<f64>,
    client_cpu_us_per_record: Vec<f64>,
}

/// Records per batch of the raw producer, and its requests in flight (Kafka's limit for an
/// idempotent producer).
const RAW_BATCH_RECORDS: usize = 1_000;
const RAW_IN_FLIGHT: usize = 5;

/// Produce throughput with idempotence off and on against the same node: 100 B records,
/// acks=all, 6 partitions, each run on a fresh topic; the settings alternate, `RUNS` times
/// each, and each keeps its best run (the one least disturbed by whatever else shares the
/// machine). Two producers: librdkafka with only `enable.idempotence` changed (which also caps
/// its requests in flight at 5), as users see it; and a raw producer of batches encoded before
/// the clock starts, the same bytes but for the producer id, epoch and sequence, so that the
/// difference is the broker's alone (librdkafka spends more CPU per record when idempotent,
/// and on two cores shared with the broker that shows in its figure).
fn idempotence(sz: &Sizes) -> Result<Value> {
    const RUNS: usize = 5;
    const PARTITIONS: i32 = 6;
    let r = start(1)?;
    let addr: std::net::SocketAddr = r.bootstrap.parse()?;
    let n = sz.records_100b;
    let mut figures: BTreeMap<(&str, bool), Runs> = BTreeMap::new();
    for run in 0..RUNS {
        for client in ["librdkafka", "raw"] {
            for idempotent in [false, true] {
                let topic = format!("idempotence-{client}-{idempotent}-{run}");
                create_topic(&r.bootstrap, &topic, PARTITIONS, 1)?;
                std::thread::sleep(Duration::from_millis(500));
                let (cpu0, client0) = (cpu_of(&r.pids), cpu_of(&[std::process::id()]));
                let rate = if client == "raw" {
                    produce_raw(addr, &topic, PARTITIONS, n, idempotent)?
                } else {
                    let extra = [("enable.idempotence", if idempotent { "true" } else { "false" })];
                    produce_with(&r.bootstrap, &topic, n, 100, "all", &extra)?
                };
                let runs = figures.entry((client, idempotent)).or_default();
                runs.records_per_s.push(rate);
                runs.broker_cpu_us_per_record.push((cpu_of(&r.pids) - cpu0) * 1e6 / n as f64);
                let client_cpu = cpu_of(&[std::process::id()]) - client0;
                runs.client_cpu_us_per_record.push(client_cpu * 1e6 / n as f64);
            }
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let least = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::min);
    let mut out = json!({
        "nodes": 1, "record_bytes": 100, "partitions": PARTITIONS, "acks": "all",
        "records": n, "runs": RUNS, "raw_batch_records": RAW_BATCH_RECORDS,
        "raw_in_flight": RAW_IN_FLIGHT, "load": load_average(),
    });
    for client in ["librdkafka", "raw"] {
        let (off, on) = (&figures[&(client, false)], &figures[&(client, true)]);
        let (off_rate, on_rate) = (best(&off.records_per_s), best(&on.records_per_s));
        out[client] = json!({
            "off_records_per_s": off_rate, "on_records_per_s": on_rate,
            "ratio": on_rate / off_rate,
            "off_cpu_us_per_record": least(&off.broker_cpu_us_per_record),
            "on_cpu_us_per_record": least(&on.broker_cpu_us_per_record),
            "off_runs": off.records_per_s, "on_runs": on.records_per_s,
            "off_cpu_us_per_record_runs": off.broker_cpu_us_per_record,
            "on_cpu_us_per_record_runs": on.broker_cpu_us_per_record,
            "off_client_cpu_us_per_record": least(&off.client_cpu_us_per_record),
            "on_client_cpu_us_per_record": least(&on.client_cpu_us_per_record),
        });
    }
    Ok(out)
}

/// `n` records of 100 B in pre-encoded batches of [`RAW_BATCH_RECORDS`], round-robin over
/// `partitions`, acks=all, [`RAW_IN_FLIGHT`] requests in flight on one connection; records/s.
/// Idempotent: every batch carries a producer id from InitProducerId and its partition's next
/// sequence.
fn produce_raw(
    addr: std::net::SocketAddr,
    topic: &str,
    partitions: i32,
    n: u64,
    idempotent: bool,
) -> Result<f64> {
    let mut conn = RawConnection::connect(addr)?;
    let producer = if idempotent {
        let answer = conn.init_producer_id()?;
        if answer.error_code != 0 {
            bail!("InitProducerId: error {}", answer.error_code);
        }
        Some((answer.producer_id.0, answer.producer_epoch))
    } else {
        None
    };
    let value = [b'x'; 100];
    let values = vec![&value[..]; RAW_BATCH_RECORDS];
    let timestamp_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let mut sequences = vec![0i32; partitions as usize];
    let mut batches = Vec::new();
    for i in 0..(n as usize).div_ceil(RAW_BATCH_RECORDS) {
        let partition = i % partitions as usize;
        let batch = match producer {
            Some((id, epoch)) => {
                raw::idempotent_batch(&values, id, epoch, sequences[partition], timestamp_ms)?
            }
            None => raw::record_batch(&values, timestamp_ms)?,
        };
        sequences[partition] += RAW_BATCH_RECORDS as i32;
        batches.push((partition as i32, batch));
    }
    let records = batches.len() * RAW_BATCH_RECORDS;
    let version = conn.produce_version()?;
    let mut pending = std::collections::VecDeque::new();
    let answer = |conn: &mut RawConnection, (id, partition): (i32, i32)| -> Result<()> {
        let answer = conn.read_produce_answer(id, version, partition)?;
        if answer.error_code != 0 {
            bail!("raw produce to {topic}-{partition}: error {}", answer.error_code);
        }
        Ok(())
    };
    let t = Instant::now();
    for (partition, batch) in batches {
        if pending.len() == RAW_IN_FLIGHT {
            let sent = pending.pop_front().context("a request in flight")?;
            answer(&mut conn, sent)?;
        }
        pending.push_back((conn.send_produce(topic, partition, batch, version)?, partition));
    }
    while let Some(sent) = pending.pop_front() {
        answer(&mut conn, sent)?;
    }
    Ok(records as f64 / t.elapsed().as_secs_f64())
}

/// The 1-minute load average, noted beside figures taken on a shared machine.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Time from kill -9 of a partition leader to the next acknowledged acks=all write.
fn failover(rounds: usize) -> Result<Value> {
    let mut cluster = StromCluster::start(3, ClusterOptions::default())?;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "fo", 1, 3)?;
    let d = Arc::new(Deliveries { record_events: true, ..Default::default() });
    let p = producer(&bootstrap, "all", d.clone())?;
    let stop = Arc::new(AtomicU64::new(0));
    let sender = std::thread::spawn({
        let stop = stop.clone();
        move || {
            while stop.load(Ordering::Relaxed) == 0 {
                let rec =
                    BaseRecord::with_opaque_to("fo", 0).payload(&b"failover"[..]).key(&[] as &[u8]);
                let _ = p.send(rec);
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = p.flush(Duration::from_secs(30));
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut windows = Vec::new();
    for _ in 0..rounds {
        let leaders = cluster.leaders_of("fo")?;
        let Some(&leader) = leaders.get(&0) else { bail!("fo-0 has no leader") };
        let killed_at = Instant::now();
        cluster.kill9(leader as u32)?;
        let deadline = killed_at + Duration::from_secs(30);
        let mut window = None;
        while Instant::now() < deadline && window.is_none() {
            std::thread::sleep(Duration::from_millis(20));
            let events = d.events.lock().map(|e| e.clone()).unwrap_or_default();
            // The first success after the kill that follows a gap (the old leader's last acks
            // can land just after the kill): the first success more than 50 ms after it.
            window = events
                .iter()
                .find(|(t, ok)| *ok && *t > killed_at + Duration::from_millis(50))
                .map(|(t, _)| *t - killed_at);
        }
        let w = window.context("no acknowledged write within 30 s of the kill")?;
        windows.push(w.as_secs_f64() * 1000.0);
        cluster.restart(leader as u32)?;
        std::thread::sleep(Duration::from_secs(3));
    }
    stop.store(1, Ordering::Relaxed);
    let _ = sender.join();
    Ok(json!({ "rounds": rounds, "kill_to_next_ack_ms": windows }))
}

/// The sections a run may be limited to with `--only a,b`; `peer` runs only when named.
const SECTIONS: [&str; 9] = [
    "limits",
    "idle",
    "metadata",
    "throughput",
    "idempotence",
    "latency",
    "failover",
    "coordination",
    "peer",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let json_path = arg("--json").cloned().unwrap_or_else(|| "target/bench/results.json".into());
    let only: Vec<&str> = match arg("--only") {
        Some(list) => list.split(',').collect(),
        None => SECTIONS.iter().copied().filter(|s| *s != "peer").collect(),
    };
    if let Some(bad) = only.iter().find(|s| !SECTIONS.contains(s)) {
        bail!("unknown section {bad}; sections: {}", SECTIONS.join(","));
    }
    let run = |section: &str| only.contains(&section);
    let sz = sizes();
    let mut results: BTreeMap<&str, Value> = BTreeMap::new();
    results.insert("load_at_start", json!(load_average()));

    let (mut disk, mut disk_sync, mut tcp) = (f64::NAN, f64::NAN, f64::NAN);
    if run("limits") {
        let tmp = std::env::temp_dir().join(format!("strom-bench-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        (disk, disk_sync) = disk_limits(&tmp, sz.disk_mb)?;
        let _ = std::fs::remove_dir_all(&tmp);
        tcp = loopback_limit(sz.tcp_mb)?;
        println!("limits: disk {disk:.0} MB/s, disk+fdatasync per MiB {disk_sync:.0} MB/s, loopback {tcp:.0} MB/s");
        results.insert("limits", json!({"disk_mb_per_s": disk, "disk_fdatasync_mb_per_s": disk_sync, "loopback_tcp_mb_per_s": tcp}));
    }

    if run("idle") {
        match idle_rss() {
            Ok(v) => {
                println!(
                    "idle RSS of a fresh node (no topics): {:.1} MiB",
                    v["idle_rss_mb"].as_f64().unwrap_or(f64::NAN)
                );
                results.insert("idle", v);
            }
            Err(e) => println!("idle: FAILED: {e:#}"),
        }
    }

    if run("metadata") {
        results.insert("metadata_commit", Value::Array(metadata::run()));
    }

    let mut peak = 1_000_000.0;
    if run("throughput") {
        let matrix = throughput(&sz, disk, disk_sync, tcp);
        if let Some(p) = matrix
            .iter()
            .find(|v| v["nodes"] == 1 && v["record_bytes"] == 100 && v["acks"] == "all")
            .and_then(|v| v["produce_records_per_s"].as_f64())
        {
            peak = p;
        }
        results.insert("throughput", Value::Array(matrix));
    }

    if run("idempotence") {
        match idempotence(&sz) {
            Ok(v) => {
                for (client, what) in [
                    ("librdkafka", "librdkafka, enable.idempotence"),
                    ("raw", "pre-encoded batches, producer id and sequences"),
                ] {
                    let f = |k: &str| v[client][k].as_f64().unwrap_or(f64::NAN);
                    println!(
                        "idempotence, 1 node, 100 B, 6 partitions, acks=all, {what}: produce \
                         {:.0} rec/s off, {:.0} rec/s on: {:.0}%; us per record off / on: \
                         broker {:.2} / {:.2}, client {:.2} / {:.2} (best of {} runs each, \
                         alternating; load {})",
                        f("off_records_per_s"),
                        f("on_records_per_s"),
                        100.0 * f("ratio"),
                        f("off_cpu_us_per_record"),
                        f("on_cpu_us_per_record"),
                        f("off_client_cpu_us_per_record"),
                        f("on_client_cpu_us_per_record"),
                        v["runs"],
                        v["load"]
                    );
                }
                results.insert("idempotence", v);
            }
            Err(e) => println!("idempotence: FAILED: {e:#}"),
        }
    }

    if run("latency") {
        // Half the measured peak (the load point), then fixed lower rates; the rows
        // without linger show what the client's own batching wait (linger.ms) adds.
        let points =
            [(peak * 0.5, 5), (100_000.0, 5), (10_000.0, 5), (peak * 0.5, 0), (10_000.0, 0)];
        let tmp = std::env::temp_dir().join(format!("strom-bench-fsync-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        let fsync = fsync_latency(&tmp, 2.0);
        let _ = std::fs::remove_dir_all(&tmp);
        match fsync {
            Ok((p50, p99, p999)) => {
                println!("fdatasync of a 5 KB append (the floor under acks): p50/p99/p99.9 {p50:.2}/{p99:.2}/{p999:.2} ms");
                results.insert("fsync_latency_ms", json!({"p50": p50, "p99": p99, "p999": p999}));
            }
            Err(e) => println!("fsync latency probe: FAILED: {e:#}"),
        }
        let mut rows = Vec::new();
        for (rate, linger_ms) in points {
            match latency(rate, sz.latency_secs, linger_ms) {
                Ok(v) => {
                    println!("latency at {rate:.0} records/s (sent {:.0}), linger.ms={linger_ms}: produce p50/p99/p99.9 {:.2}/{:.2}/{:.2} ms, end-to-end {:.2}/{:.2}/{:.2} ms (load {})",
                        v["sent_records_per_s"].as_f64().unwrap_or(f64::NAN),
                        v["produce_ms"]["p50"].as_f64().unwrap_or(f64::NAN), v["produce_ms"]["p99"].as_f64().unwrap_or(f64::NAN), v["produce_ms"]["p999"].as_f64().unwrap_or(f64::NAN),
                        v["end_to_end_ms"]["p50"].as_f64().unwrap_or(f64::NAN), v["end_to_end_ms"]["p99"].as_f64().unwrap_or(f64::NAN), v["end_to_end_ms"]["p999"].as_f64().unwrap_or(f64::NAN),
                        v["load"]);
                    rows.push(v);
                }
                Err(e) => println!("latency at {rate:.0} records/s: FAILED: {e:#}"),
            }
        }
        results.insert("latency", Value::Array(rows));
    }

    if run("failover") {
        match failover(sz.failover_rounds) {
            Ok(v) => {
                println!(
                    "failover (kill -9 of the leader to next acks=all ack), ms per round: {}",
                    v["kill_to_next_ack_ms"]
                );
                results.insert("failover", v);
            }
            Err(e) => println!("failover: FAILED: {e:#}"),
        }
    }
    if run("coordination") {
        // `--coord-topics N` or COORD_TOPICS: N topics of 10 partitions (10,000 by default).
        let topics = arg("--coord-topics").map(|n| n.parse::<usize>()).transpose()?;
        let scale = coordination::Scale::from_env(topics)?;
        results.insert("coordination", coordination::run(&scale));
    }
    if run("peer") {
        results.insert("peer", Value::Array(peer()));
    }
    results.insert("load_at_end", json!(load_average()));
    if let Some(dir) = std::path::Path::new(&json_path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    println!("results written to {json_path}");
    Ok(())
}

/// strom and tansu side by side on the 1-node rows, with fewer records (tansu's SQLite store
/// consumes near 10 K records/s); prints strom/tansu ratios.
fn peer() -> Vec<Value> {
    let full = std::env::var_os("BENCH_FULL").is_some();
    let rows = [
        Scenario { nodes: 1, record_bytes: 100, partitions: 1, acks: "1" },
        Scenario { nodes: 1, record_bytes: 100, partitions: 6, acks: "all" },
        Scenario { nodes: 1, record_bytes: 1024, partitions: 6, acks: "1" },
    ];
    println!(
        "{:>6} {:>4} {:>4} | {:>12} {:>12} {:>7} | {:>12} {:>12} {:>7}",
        "bytes",
        "part",
        "acks",
        "strom prod",
        "tansu prod",
        "ratio",
        "strom cons",
        "tansu cons",
        "ratio"
    );
    let mut out = Vec::new();
    for s in rows {
        let n = match (s.record_bytes <= 100, full) {
            (true, false) => 300_000,
            (true, true) => 1_000_000,
            (false, false) => 100_000,
            (false, true) => 300_000,
        };
        let strom = run_scenario(s, n, Broker::Strom);
        let tansu = run_scenario(s, n, Broker::Tansu);
        let f = |r: &Result<Value>, k: &str| {
            r.as_ref().ok().and_then(|v| v[k].as_f64()).unwrap_or(f64::NAN)
        };
        let (sp, tp) = (f(&strom, "produce_records_per_s"), f(&tansu, "produce_records_per_s"));
        let (sc, tc) = (f(&strom, "consume_records_per_s"), f(&tansu, "consume_records_per_s"));
        println!(
            "{:>6} {:>4} {:>4} | {:>12.0} {:>12.0} {:>6.1}x | {:>12.0} {:>12.0} {:>6.1}x",
            s.record_bytes,
            s.partitions,
            s.acks,
            sp,
            tp,
            sp / tp,
            sc,
            tc,
            sc / tc
        );
        for (name, r) in [("strom", &strom), ("tansu", &tansu)] {
            if let Err(e) = r {
                println!("  {name}: FAILED: {e:#}");
            }
        }
        let as_json = |r: Result<Value>| r.unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
        out.push(json!({
            "scenario": format!("{s:?}"), "records": n,
            "produce_ratio": sp / tp, "consume_ratio": sc / tc,
            "strom": as_json(strom), "tansu": as_json(tansu),
        }));
    }
    out
}

/// The produce/consume matrix; one JSON row per scenario (or its error).
fn throughput(sz: &Sizes, disk: f64, disk_sync: f64, tcp: f64) -> Vec<Value> {
    let mut matrix = Vec::new();
    let scenarios = [
        Scenario { nodes: 1, record_bytes: 100, partitions: 1, acks: "1" },
        Scenario { nodes: 1, record_bytes: 100, partitions: 6, acks: "1" },
        Scenario { nodes: 1, record_bytes: 100, partitions: 6, acks: "all" },
        Scenario { nodes: 1, record_bytes: 1024, partitions: 6, acks: "1" },
        Scenario { nodes: 1, record_bytes: 1024, partitions: 6, acks: "all" },
        Scenario { nodes: 3, record_bytes: 100, partitions: 6, acks: "all" },
        Scenario { nodes: 3, record_bytes: 1024, partitions: 6, acks: "all" },
    ];
    println!(
        "{:<5} {:>6} {:>4} {:>4} | {:>12} {:>9} {:>7} | {:>12} {:>9} {:>7} {:>7} {:>11} | {:>7} {:>7} {:>6} | load",
        "nodes",
        "bytes",
        "part",
        "acks",
        "produce r/s",
        "MB/s",
        "%disk",
        "consume r/s",
        "MB/s",
        "%tcp",
        "1st ms",
        "kcat r/s",
        "us/rec",
        "us/rec",
        "RSS"
    );
    // `BENCH_ROWS=0,3` runs only those rows of the matrix (for profiling one of them).
    let rows: Option<Vec<usize>> = std::env::var("BENCH_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect());
    for (row, s) in scenarios.into_iter().enumerate() {
        if rows.as_ref().is_some_and(|rows| !rows.contains(&row)) {
            continue;
        }
        let n = if s.record_bytes <= 100 { sz.records_100b } else { sz.records_1k };
        match run_scenario(s, n, Broker::Strom) {
            Ok(v) => {
                let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                println!("{:<5} {:>6} {:>4} {:>4} | {:>12.0} {:>9.1} {:>6.0}% | {:>12.0} {:>9.1} {:>6.1}% {:>7.0} {:>11.0} | {:>7.2} {:>7.2} {:>6.0} | {:.2}",
                    s.nodes, s.record_bytes, s.partitions, s.acks,
                    f("produce_records_per_s"), f("produce_mb_per_s"), 100.0 * f("produce_mb_per_s") / if s.acks == "all" { disk_sync } else { disk },
                    f("consume_records_per_s"), f("consume_mb_per_s"), 100.0 * f("consume_mb_per_s") / tcp,
                    f("consume_first_record_ms"), f("kcat_consume_records_per_s"),
                    f("cpu_us_per_record_produce"), f("cpu_us_per_record_consume"), f("peak_rss_mb"), f("load"));
                matrix.push(v);
            }
            Err(e) => {
                println!("{s:?}: FAILED: {e:#}");
                matrix.push(json!({"scenario": format!("{s:?}"), "error": format!("{e:#}")}));
            }
        }
    }
    matrix
}
