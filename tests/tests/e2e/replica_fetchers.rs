//! One replica fetcher per leader broker (performance issue 7): on three nodes, 60 RF 3
//! partitions written with `acks=all` replicate byte for byte and stay in the ISR while each
//! node holds at most one replica connection to each other node; after a kill -9 and restart of
//! a node, all 60 partitions catch up on it again.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use strom_tests::cluster::StromCluster;
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::{segment, wait_until, with_cluster, ClusterOptions};

const PARTITIONS: i32 = 60;
const RECORDS_PER_ROUND: usize = 12_000;
/// Bound for every partition to be fully replicated, in the ISR, with identical replicas.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);

fn value_of(id: usize) -> Vec<u8> {
    format!("fetcher-{id:010}-{}", "x".repeat(id % 50)).into_bytes()
}

/// Produces `ids` with acks=all, spread over every partition; fails unless every one is
/// acknowledged.
fn produce(bootstrap: &str, topic: &str, ids: std::ops::Range<usize>) -> anyhow::Result<()> {
    let producer = AckingProducer::new(bootstrap, &[("linger.ms", "5")])?;
    for id in ids.clone() {
        let value = value_of(id);
        let record = Outgoing {
            partition: Some((id % PARTITIONS as usize) as i32),
            value: Some(&value),
            ..Outgoing::default()
        };
        producer.send(topic, id, record)?;
        if id % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    producer.acks_of(ids)?;
    Ok(())
}

/// Every running node shows each partition with a leader and all three replicas in the ISR.
fn wait_isr_full(cluster: &StromCluster, topic: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    wait_until(CATCH_UP_TIMEOUT, &format!("every ISR of {topic} is full"), || {
        for id in cluster.running() {
            let metadata = cluster.metadata(id)?;
            let t = metadata.topic(topic).with_context(|| format!("node {id}: no {topic}"))?;
            ensure!(t.partitions.len() == PARTITIONS as usize, "node {id}: {t:?}");
            for (p, info) in &t.partitions {
                let isr: BTreeSet<i32> = info.isr.iter().copied().collect();
                let replicas: BTreeSet<i32> = info.replicas.iter().copied().collect();
                if info.leader < 0 || replicas.len() != 3 || isr != replicas {
                    bail!("node {id}: {topic}-{p} leader {} ISR {:?}", info.leader, info.isr);
                }
            }
        }
        Ok(Some(()))
    })?;
    Ok(started.elapsed())
}

/// One complete batch of a replica's log: base offset, next offset, bytes.
type Batch = (i64, i64, Vec<u8>);

/// The complete batches of a partition directory, in offset order.
fn batches(dir: &Path) -> anyhow::Result<Vec<Batch>> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let mut out = Vec::new();
    for path in segments {
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        for b in segment::batches(&bytes) {
            out.push((b.base_offset, b.next_offset(), bytes[b.position..b.end()].to_vec()));
        }
    }
    Ok(out)
}

/// Waits until every replica of every partition holds exactly the leader's `[0, HW)`, byte for
/// byte, and the high watermarks add up to at least `records`.
fn wait_replicas_identical(
    cluster: &StromCluster,
    topic: &str,
    records: usize,
) -> anyhow::Result<()> {
    let id = *cluster.running().first().context("no node running")?;
    let metadata = cluster.metadata(id)?;
    let t = metadata.topic(topic).context("topic not listed")?;
    let replicas: BTreeMap<i32, Vec<i32>> =
        t.partitions.iter().map(|(&p, info)| (p, info.replicas.clone())).collect();
    let partitions: Vec<i32> = replicas.keys().copied().collect();
    wait_until(CATCH_UP_TIMEOUT, "replicas identical up to the HW", || {
        let marks = kafka::watermarks(&cluster.bootstrap(), topic, &partitions)?;
        let mut total = 0i64;
        for (p, nodes) in &replicas {
            let hw = marks[p].1;
            total += hw;
            let mut reference: Option<(i32, Vec<Batch>)> = None;
            for &node in nodes {
                let log = batches(&cluster.node(node as u32).partition_dir(topic, *p))?;
                let mut next = 0;
                for (base, end, _) in &log {
                    ensure!(*base == next, "node {node}: {topic}-{p} batch {base} after {next}");
                    next = *end;
                }
                ensure!(next == hw, "node {node}: {topic}-{p} ends at {next}, HW {hw}");
                match &reference {
                    None => reference = Some((node, log)),
                    Some((first, batches)) => ensure!(
                        batches.iter().map(|b| &b.2).eq(log.iter().map(|b| &b.2)),
                        "{topic}-{p}: nodes {first} and {node} differ below the HW {hw}"
                    ),
                }
            }
        }
        ensure!(total >= records as i64, "high watermarks add up to {total} < {records}");
        Ok(Some(()))
    })
}

/// Socket inodes of a process's open file descriptors.
fn socket_inodes(pid: u32) -> anyhow::Result<HashSet<u64>> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy();
            if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                out.insert(inode.parse()?);
            }
        }
    }
    Ok(out)
}

/// Established IPv4 TCP connections from the process to `remote`.
fn connections_to(pid: u32, remote: SocketAddr) -> anyhow::Result<usize> {
    let inodes = socket_inodes(pid)?;
    let SocketAddr::V4(remote) = remote else { bail!("{remote} is not IPv4") };
    // /proc/net/tcp writes the address as the in-memory u32 in hex, then the port.
    let wanted = format!("{:08X}:{:04X}", u32::from_le_bytes(remote.ip().octets()), remote.port());
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    let mut count = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(rem), Some(state), Some(inode)) = (fields.get(2), fields.get(3), fields.get(9))
        else {
            continue;
        };
        let established = *state == "01";
        if established && *rem == wanted && inode.parse().is_ok_and(|i: u64| inodes.contains(&i)) {
            count += 1;
        }
    }
    Ok(count)
}

/// Waits until no node holds more than one connection to another node's inter-broker
/// listener (its fetcher of the partitions that node leads).
fn wait_one_connection_per_leader(cluster: &StromCluster) -> anyhow::Result<()> {
    wait_until(CATCH_UP_TIMEOUT, "one replica connection per leader", || {
        let mut seen = BTreeMap::new();
        for from in cluster.running() {
            let pid = cluster.node(from).pid().context("no pid")?;
            for to in cluster.running().into_iter().filter(|&to| to != from) {
                let n = connections_to(pid, cluster.replication_addr(to))?;
                seen.insert((from, to), n);
            }
        }
        eprintln!("replica connections (from, to) → count: {seen:?}");
        Ok(seen.values().all(|&n| n <= 1).then_some(()))
    })
}

#[test]
fn sixty_partitions_replicate_over_one_connection_per_leader() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let topic = "many";
        kafka::create_topic_replicated(&cluster.bootstrap(), topic, PARTITIONS, 3)?;
        cluster.wait_topic_everywhere(topic, PARTITIONS as usize)?;
        let isr = wait_isr_full(cluster, topic)?;
        eprintln!("{PARTITIONS} partitions with full ISRs after {isr:?}");

        let started = Instant::now();
        produce(&cluster.bootstrap(), topic, 0..RECORDS_PER_ROUND)?;
        eprintln!("{RECORDS_PER_ROUND} acks=all records in {:?}", started.elapsed());
        wait_isr_full(cluster, topic)?;
        wait_replicas_identical(cluster, topic, RECORDS_PER_ROUND)?;
        wait_one_connection_per_leader(cluster)?;

        // A follower that dies takes every partition out of its fetchers; back, it truncates
        // and catches up on all of them, with new leaders for the partitions it led.
        cluster.kill9(3)?;
        produce(&cluster.bootstrap_of(&[1, 2]), topic, RECORDS_PER_ROUND..2 * RECORDS_PER_ROUND)?;
        let back = Instant::now();
        cluster.restart(3)?;
        let isr = wait_isr_full(cluster, topic)?;
        eprintln!(
            "node 3 back in every ISR {:?} after its restart ({isr:?} waiting)",
            back.elapsed()
        );
        wait_replicas_identical(cluster, topic, 2 * RECORDS_PER_ROUND)?;
        wait_one_connection_per_leader(cluster)?;
        Ok(())
    });
}
