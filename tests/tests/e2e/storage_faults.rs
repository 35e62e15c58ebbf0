//! Storage faults on a running node, and damage found at start: a failing fsync, a full
//! filesystem, a segment file missing from the middle of a log. The node's log directory fails
//! as a whole (every partition answers KAFKA_STORAGE_ERROR) and the node exits with status 74,
//! as Kafka halts a broker whose log directories are all offline; other replicas take over, no
//! acknowledged record is lost, and a restart once the disk is fixed recovers.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use strom_tests::kafka::{self, Ack, AckingProducer, Outgoing};
use strom_tests::{
    with_cluster, with_node, ClusterOptions, NodeOptions, StromNode, CLIENT_TIMEOUT,
};

/// `strom start`'s exit status when its log directory failed (EX_IOERR).
const EXIT_LOG_DIR_FAILED: i32 = 74;
/// ... and when its metadata quorum's storage failed (EX_SOFTWARE).
const EXIT_METADATA_FATAL: i32 = 70;
const EXIT_WAIT: Duration = Duration::from_secs(60);

fn value_of(id: usize, size: usize) -> Vec<u8> {
    let mut value = format!("rec-{id:08}-").into_bytes();
    value.resize(size.max(value.len()), b'x');
    value
}

/// Every acknowledged record is at its offset with its value.
fn check_acked(
    bootstrap: &str,
    topic: &str,
    acked: &BTreeMap<usize, Ack>,
    size: usize,
) -> anyhow::Result<()> {
    let partitions: Vec<i32> = acked
        .values()
        .map(|a| a.partition)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let consumed = kafka::consume_all(bootstrap, topic, &partitions, &[])?;
    let log: BTreeMap<(i32, i64), Vec<u8>> = consumed
        .into_iter()
        .map(|c| ((c.partition, c.offset), c.value.unwrap_or_default()))
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(&id, ack)| log.get(&(ack.partition, ack.offset)) != Some(&value_of(id, size)))
        .take(5)
        .collect();
    ensure!(lost.is_empty(), "acknowledged records missing or different: {lost:?}");
    Ok(())
}

fn acked_of(producer: &AckingProducer) -> BTreeMap<usize, Ack> {
    producer.reports().into_iter().filter_map(|(id, r)| r.ok().map(|a| (id, a))).collect()
}

fn exit_code(status: ExitStatus) -> Option<i32> {
    status.code().or_else(|| status.signal().map(|s| -s))
}

#[test]
fn a_failing_fsync_stops_the_leader_and_its_partitions_move_without_loss() {
    let faults = tempfile::tempdir().expect("temp dir");
    let fault_file = faults.path().join("fault");
    let options = ClusterOptions {
        min_insync_replicas: Some(2),
        env: vec![("STROM_FAULT_FILE".into(), fault_file.display().to_string())],
        ..ClusterOptions::default()
    };
    with_cluster(3, options, |cluster| {
        let topic = "faulty";
        kafka::create_topic_replicated(&cluster.bootstrap(), topic, 1, 3)?;
        cluster.wait_topic_everywhere(topic, 1)?;
        let producer = AckingProducer::new(&cluster.bootstrap(), &[("acks", "all")])?;
        let send = |ids: std::ops::Range<usize>| -> anyhow::Result<()> {
            for id in ids {
                let value = value_of(id, 100);
                let record =
                    Outgoing { partition: Some(0), value: Some(&value), ..Outgoing::default() };
                producer.send(topic, id, record)?;
            }
            Ok(())
        };
        send(0..2_000)?;
        producer.flush(CLIENT_TIMEOUT)?;
        let leader = *cluster.leaders_of(topic)?.get(&0).context("no leader")? as u32;

        // From now on every fsync of the leader's log of this partition fails with EIO.
        let dir = cluster.node(leader).data_dir().canonicalize()?.join(format!("{topic}-0"));
        std::fs::write(&fault_file, format!("{}/", dir.display()))?;
        send(2_000..4_000)?;
        let status = cluster.node_mut(leader).wait_exit(EXIT_WAIT)?;
        let log = cluster.node(leader).stderr();
        ensure!(
            exit_code(status) == Some(EXIT_LOG_DIR_FAILED),
            "the leader exited with {status} after its fsync failed\n{}",
            cluster.node(leader).stderr_tail(30)
        );
        ensure!(
            log.contains("fdatasync failed") && log.contains("log directory failed"),
            "the leader's log does not say why it stopped\n{}",
            cluster.node(leader).stderr_tail(30)
        );
        // The producer's retries reach the new leader: every record is acknowledged.
        producer.flush(Duration::from_secs(90))?;
        let acks = producer.acks_of(0..4_000)?;
        ensure!(acks.len() == 4_000, "{} of 4000 acknowledged", acks.len());
        let survivors: Vec<u32> = cluster.running();
        let new_leader = *cluster.leaders_of(topic)?.get(&0).context("no new leader")? as u32;
        ensure!(new_leader != leader, "node {leader} still leads after it stopped");

        // The disk is fixed: the node comes back, recovers and catches up.
        std::fs::remove_file(&fault_file)?;
        cluster.restart(leader)?;
        check_acked(&cluster.bootstrap_of(&survivors), topic, &acked_of(&producer), 100)?;
        check_acked(&cluster.bootstrap(), topic, &acked_of(&producer), 100)?;
        Ok(())
    });
}

/// A tmpfs of `size` mounted by the test; unmounted (lazily) on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` where this machine does not let the test mount (not root): a local run skips,
    /// CI (root, as `make test` needs) must not.
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root: mount -t tmpfs must work");
            eprintln!("SKIPPED: cannot mount a tmpfs here (run as root)");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn grow(&self, size: &str) -> anyhow::Result<()> {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()?;
        ensure!(status.success(), "remount {} failed: {status}", self.path().display());
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_stops_the_node_with_a_clear_error_and_a_restart_with_space_loses_nothing() {
    let Some(disk) = SmallDisk::mount("24m") else { return };
    let data_dir: PathBuf = disk.path().join("data");
    let options = NodeOptions { data_dir: Some(data_dir), ..NodeOptions::default() };
    let mut node = StromNode::start(options).expect("start a node on the small disk");
    let run = |node: &mut StromNode| -> anyhow::Result<()> {
        let topic = "full";
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, topic, 1, &[("segment.bytes", "4194304")])?;
        let producer = AckingProducer::new(
            &bootstrap,
            &[("acks", "1"), ("message.timeout.ms", "15000"), ("compression.type", "none")],
        )?;
        // 48 MiB for a 24 MiB disk: it fills up part way.
        const SIZE: usize = 64 << 10;
        for id in 0..768 {
            let value = value_of(id, SIZE);
            let record =
                Outgoing { partition: Some(0), value: Some(&value), ..Outgoing::default() };
            if producer.send(topic, id, record).is_err() || !node.is_running() {
                break;
            }
            producer.poll(Duration::ZERO);
        }
        let status = node.wait_exit(EXIT_WAIT)?;
        let log = node.stderr();
        ensure!(
            matches!(exit_code(status), Some(EXIT_LOG_DIR_FAILED | EXIT_METADATA_FATAL)),
            "the node exited with {status} on a full disk\n{}",
            node.stderr_tail(30)
        );
        ensure!(
            log.contains("No space left on device"),
            "the node's log does not name the full disk\n{}",
            node.stderr_tail(30)
        );
        let _ = producer.flush(Duration::from_secs(20));
        producer.purge();
        let acked = acked_of(&producer);
        let failed = producer.reports().values().filter(|r| r.is_err()).count();
        eprintln!("full disk: {} records acknowledged, {failed} failed", acked.len());
        ensure!(!acked.is_empty() && failed > 0, "acked {} failed {failed}", acked.len());

        disk.grow("256m")?;
        node.respawn()?;
        node.wait_ready().context("restart once the disk has room")?;
        check_acked(&bootstrap, topic, &acked, SIZE)?;
        kafka::assert_node_serves(&bootstrap, topic, 0)?;
        Ok(())
    };
    let result = run(&mut node);
    drop(node);
    if let Err(error) = result {
        panic!("{error:#}");
    }
}

#[test]
fn a_segment_missing_from_the_middle_of_a_log_stops_the_start_loudly() {
    with_node(NodeOptions::default(), |node| {
        let topic = "holed";
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, topic, 1, &[("segment.bytes", "2048")])?;
        let producer = AckingProducer::new(&bootstrap, &[("acks", "1"), ("linger.ms", "0")])?;
        for id in 0..200 {
            let value = value_of(id, 100);
            producer.send(
                topic,
                id,
                Outgoing { partition: Some(0), value: Some(&value), ..Outgoing::default() },
            )?;
            producer.flush(CLIENT_TIMEOUT)?;
        }
        let status = node.sigterm()?;
        ensure!(status.success(), "SIGTERM: {status}");
        let dir = node.partition_dir(topic, 0);
        let mut segments: Vec<PathBuf> =
            std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        segments.retain(|p| p.extension().is_some_and(|e| e == "log"));
        segments.sort();
        ensure!(segments.len() >= 4, "only {} segments", segments.len());
        std::fs::remove_file(&segments[1])?;

        node.respawn()?;
        let status = node.wait_exit(EXIT_WAIT)?;
        ensure!(
            exit_code(status) == Some(EXIT_LOG_DIR_FAILED),
            "the start with a missing segment ended with {status}\n{}",
            node.stderr_tail(30)
        );
        let log = node.stderr();
        ensure!(
            log.contains("a segment file is missing") && log.contains(&format!("{topic}-0")),
            "the node's log does not name the hole\n{}",
            node.stderr_tail(30)
        );
        let left = std::fs::read_dir(&dir)?
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log")))
            .count();
        if left != segments.len() - 1 {
            bail!("the failed start deleted segments: {left} of {} left", segments.len() - 1);
        }
        Ok(())
    });
}

#[test]
fn a_flipped_byte_in_a_committed_metadata_entry_stops_the_start_loudly() {
    with_node(NodeOptions::default(), |node| {
        kafka::create_topic(&node.bootstrap(), "before-damage", 2, &[])?;
        let status = node.sigterm()?;
        ensure!(status.success(), "SIGTERM: {status}");
        let dir = node.data_dir().join("__cluster_metadata-0");
        let mut segments: Vec<PathBuf> =
            std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        segments.retain(|p| p.extension().is_some_and(|e| e == "log"));
        segments.sort();
        let last = segments.last().context("no metadata log segment")?;
        let mut bytes = std::fs::read(last)?;
        ensure!(bytes.len() > 8, "the last metadata segment is empty");
        // The last entry of a single voter that shut down cleanly is committed.
        let at = bytes.len() - 2;
        bytes[at] ^= 0x01;
        std::fs::write(last, &bytes)?;

        node.respawn()?;
        let status = node.wait_exit(EXIT_WAIT)?;
        ensure!(!status.success(), "the node started on a damaged committed entry");
        let log = node.stderr();
        ensure!(
            log.contains("refusing to cut committed metadata"),
            "the node's log does not say why it refused\n{}",
            node.stderr_tail(20)
        );
        ensure!(std::fs::read(last)? == bytes, "the damaged segment was changed");
        Ok(())
    });
}
