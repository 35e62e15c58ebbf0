//! Consumer groups driven by kafka-python, kafkajs and sarama (the members are
//! `tests/clients/group_consumer.{py,js}` and `sarama-client group_consumer`, one process
//! each) against one node: three members split a 6-partition topic and consume every record
//! exactly once; a fourth member joining and one leaving cleanly (SIGTERM → commit,
//! LeaveGroup) while records arrive loses and duplicates nothing; after every member has
//! stopped, a new member resumes exactly at the committed offsets. sarama runs the same on three
//! nodes (coordinator and leaders on different nodes). The libraries come from
//! `make install-test-deps` (under `target/test-deps`, or `STROM_TEST_DEPS_DIR`): a missing
//! one fails the test, it is never skipped.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use strom_tests::clients::Library;
use strom_tests::kafka::{self, Ack, AckingProducer, Outgoing};
use strom_tests::{
    with_cluster, ClusterOptions, NodeOptions, StromNode, CLIENT_TIMEOUT, CONSUME_TIMEOUT,
    POLL_INTERVAL,
};
use tempfile::TempDir;

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 6;
const GROUP: &str = "orders-readers";
/// Records in each of the first two batches; the third, read after a restart, is smaller.
const BATCH: usize = 3_000;
const RESUME_BATCH: usize = 600;
/// How long a member may take to commit, leave the group and exit after SIGTERM.
const MEMBER_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the group may take to settle on an assignment after members join or leave.
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(90);
/// Lines of each member's stderr (events and the library's INFO log) shown on failure.
const STDERR_TAIL_LINES: usize = 80;

/// A light `__consumer_offsets`, no wait for more members before the first assignment, and
/// the clients' 10 s sessions well inside the allowed range.
const NODE_CONFIG: &str = "\
offsets.topic_num_partitions = 4
group.initial_rebalance_delay_ms = 0
group.min_session_timeout_ms = 1000
";

#[test]
fn kafka_python_group_consumes_each_record_once_across_rebalances_and_restart() {
    run(Library::KafkaPython);
}

#[test]
fn kafkajs_group_consumes_each_record_once_across_rebalances_and_restart() {
    run(Library::Kafkajs);
}

#[test]
fn sarama_group_consumes_each_record_once_across_rebalances_and_restart() {
    run(Library::Sarama);
}

/// The same on three nodes: the group coordinator and the partition leaders spread over
/// different nodes, so each member fetches from several and commits to another.
#[test]
fn sarama_group_on_three_nodes_consumes_each_record_once() {
    let library = Library::Sarama;
    library.require("group_consumer");
    let options =
        ClusterOptions { extra_toml: NODE_CONFIG.to_owned(), ..ClusterOptions::default() };
    with_cluster(3, options, |cluster| {
        let bootstrap = cluster.bootstrap();
        let mut group = Group::new(library, &bootstrap)?;
        if let Err(error) = scenario(&bootstrap, &mut group) {
            bail!("{} group test on 3 nodes failed: {error:#}\n{}", library.name(), group.report());
        }
        Ok(())
    });
}

/// One consumed record, as a member printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    partition: i32,
    offset: i64,
    value: String,
}

/// One member process. Its stdin stays open: the member exits when it closes
/// (`--exit-on-stdin-eof`), so even a test process that dies leaves no member behind.
struct Member {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    exit: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Member {
    /// Complete lines of stdout (a line still being written is left for the next read).
    fn lines(&self) -> anyhow::Result<Vec<Line>> {
        let text = std::fs::read_to_string(&self.stdout_path)
            .with_context(|| format!("read {}", self.stdout_path.display()))?;
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete
            .lines()
            .map(|line| {
                let mut words = line.splitn(3, ' ');
                let parsed = (|| {
                    let partition = words.next()?.parse().ok()?;
                    let offset = words.next()?.parse().ok()?;
                    let value = words.next()?.to_owned();
                    Some(Line { partition, offset, value })
                })();
                parsed.with_context(|| format!("{} printed a malformed line {line:?}", self.name))
            })
            .collect()
    }

    fn stderr(&self) -> String {
        std::fs::read(&self.stderr_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The partitions of the member's latest `EVENT assigned` line, if it printed one.
    fn assignment(&self) -> Option<BTreeSet<i32>> {
        let stderr = self.stderr();
        let line = stderr.lines().rev().find(|line| line.starts_with("EVENT assigned"))?;
        Some(line.split_whitespace().skip(2).filter_map(|word| word.parse().ok()).collect())
    }

    /// `Err` with the exit status if the process has exited (it should still run).
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                self.exit = Some(status);
            }
        }
        match (&self.child, self.exit) {
            (Some(_), _) => Ok(()),
            (None, Some(status)) => bail!("member {} exited unexpectedly with {status}", self.name),
            (None, None) => bail!("member {} is not running", self.name),
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit; kills the process and fails otherwise.
    fn stop(&mut self) -> anyhow::Result<()> {
        self.check_running()?;
        let child = self.child.as_mut().context("member not running")?;
        let pid = child.id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("run `kill` (install procps: make install-test-deps)")?;
        ensure!(status.success(), "kill -TERM {pid} failed with {status}");
        let deadline = Instant::now() + MEMBER_EXIT_TIMEOUT;
        let exit = loop {
            if let Some(exit) = child.try_wait()? {
                break exit;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                bail!(
                    "member {} did not exit within {MEMBER_EXIT_TIMEOUT:?} of SIGTERM",
                    self.name
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        };
        self.child = None;
        self.stdin = None;
        self.exit = Some(exit);
        ensure!(exit.success(), "member {} exited with {exit} after SIGTERM", self.name);
        Ok(())
    }

    fn report(&self) -> String {
        let state = match (&self.child, self.exit) {
            (Some(_), _) => "running".to_owned(),
            (None, Some(status)) => format!("exited with {status}"),
            (None, None) => "killed".to_owned(),
        };
        let stdout = std::fs::read_to_string(&self.stdout_path).unwrap_or_default();
        let stdout: Vec<&str> = stdout.lines().collect();
        let stderr = self.stderr();
        let stderr: Vec<&str> = stderr.lines().collect();
        format!(
            "----- member {} ({state}): {} records; last stdout lines -----\n{}\n\
             ----- member {} stderr tail -----\n{}\n",
            self.name,
            stdout.len(),
            stdout[stdout.len().saturating_sub(5)..].join("\n"),
            self.name,
            stderr[stderr.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n"),
        )
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The member processes of one group, in the order they were started.
struct Group {
    library: Library,
    bootstrap: String,
    dir: TempDir,
    members: Vec<Member>,
    reported: bool,
}

impl Group {
    fn new(library: Library, bootstrap: &str) -> anyhow::Result<Group> {
        let dir = tempfile::Builder::new().prefix("strom-group-clients-").tempdir()?;
        Ok(Group {
            library,
            bootstrap: bootstrap.to_owned(),
            dir,
            members: Vec::new(),
            reported: false,
        })
    }

    fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        let stdout_path = self.dir.path().join(format!("{name}.out"));
        let stderr_path = self.dir.path().join(format!("{name}.err"));
        let mut command = self.library.command("group_consumer")?;
        command
            .args(["--bootstrap", &self.bootstrap, "--topic", TOPIC, "--group", GROUP])
            .args([
                "--name",
                name,
                "--exit-on-stdin-eof",
                "--log-level",
                &std::env::var("STROM_CLIENT_LOG").unwrap_or_else(|_| "INFO".into()),
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?);
        let mut child = command.spawn().with_context(|| format!("spawn {command:?}"))?;
        let stdin = child.stdin.take();
        self.members.push(Member {
            name: name.to_owned(),
            child: Some(child),
            stdin,
            exit: None,
            stdout_path,
            stderr_path,
        });
        Ok(())
    }

    fn member(&mut self, name: &str) -> anyhow::Result<&mut Member> {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .with_context(|| format!("no member {name}"))
    }

    fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        self.member(name)?.stop()
    }

    /// Every record printed so far, with the member that printed it.
    fn lines(&self) -> anyhow::Result<Vec<(String, Line)>> {
        let mut out = Vec::new();
        for member in &self.members {
            out.extend(member.lines()?.into_iter().map(|line| (member.name.clone(), line)));
        }
        Ok(out)
    }

    /// Waits until the latest assignments of the members `live` (all running) are non-empty,
    /// disjoint and cover every partition: a generation of exactly those members.
    fn wait_assignment(&mut self, live: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + REBALANCE_TIMEOUT;
        loop {
            let mut assignments = Vec::new();
            for name in live {
                let member = self.member(name)?;
                member.check_running()?;
                assignments.push((*name, member.assignment()));
            }
            let mut union = BTreeSet::new();
            let settled = assignments.iter().all(|(_, assigned)| match assigned {
                Some(partitions) if !partitions.is_empty() => {
                    let before = union.len();
                    union.extend(partitions.iter().copied());
                    union.len() == before + partitions.len()
                }
                _ => false,
            });
            if settled && union == (0..PARTITIONS).collect() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "members {live:?} did not settle on disjoint assignments covering the \
                     {PARTITIONS} partitions within {REBALANCE_TIMEOUT:?}; latest: {assignments:?}"
                );
            }
            std::thread::sleep(POLL_INTERVAL * 4);
        }
    }

    /// Waits until every record of `expected` has been printed by some member, failing early if
    /// a member of `live` exits.
    fn wait_consumed(
        &mut self,
        expected: &HashMap<String, Ack>,
        live: &[&str],
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONSUME_TIMEOUT;
        loop {
            for name in live {
                self.member(name)?.check_running()?;
            }
            let lines = self.lines()?;
            let seen: HashSet<&str> = lines.iter().map(|(_, line)| line.value.as_str()).collect();
            let missing: Vec<&String> =
                expected.keys().filter(|v| !seen.contains(v.as_str())).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut per_partition: HashMap<i32, usize> = HashMap::new();
                for value in &missing {
                    *per_partition.entry(expected[*value].partition).or_default() += 1;
                }
                bail!(
                    "{} of {} records not consumed within {CONSUME_TIMEOUT:?} (missing per \
                     partition: {per_partition:?})",
                    missing.len(),
                    expected.len()
                );
            }
            std::thread::sleep(POLL_INTERVAL * 4);
        }
    }

    fn report(&mut self) -> String {
        self.reported = true;
        let mut out = format!(
            "===== {} group members (files in {}) =====\n",
            self.library.name(),
            self.dir.path().display()
        );
        for member in &self.members {
            out.push_str(&member.report());
        }
        out
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.reported {
            eprintln!("{}", self.report());
        }
        // Each member's Drop kills its process.
    }
}

/// Produces records `range` of batch `batch` (value `b<batch>-<index>`, key `key-<index>`),
/// acks=all, and returns where each value landed.
fn produce(
    producer: &AckingProducer,
    batch: usize,
    range: Range<usize>,
) -> anyhow::Result<HashMap<String, Ack>> {
    let ids: Vec<usize> = range.clone().map(|i| batch * 1_000_000 + i).collect();
    for (&id, i) in ids.iter().zip(range.clone()) {
        let key = format!("key-{i}");
        let value = format!("b{batch}-{i:05}");
        producer.send(
            TOPIC,
            id,
            Outgoing {
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
                ..Outgoing::default()
            },
        )?;
    }
    producer.flush(CLIENT_TIMEOUT)?;
    let acks = producer.acks_of(ids)?;
    Ok(range.map(|i| format!("b{batch}-{i:05}")).zip(acks).collect())
}

/// Every record of `expected` was printed exactly once, at the partition and offset the
/// producer was told, and nothing else was printed.
fn check_exactly_once(
    lines: &[(String, Line)],
    expected: &HashMap<String, Ack>,
) -> anyhow::Result<()> {
    let mut first_reader: HashMap<&str, &str> = HashMap::new();
    let mut duplicates = Vec::new();
    for (member, line) in lines {
        let ack = expected
            .get(&line.value)
            .with_context(|| format!("{member} consumed {line:?}, which is not expected here"))?;
        ensure!(
            (ack.partition, ack.offset) == (line.partition, line.offset),
            "{member} consumed {:?} at {}-{}, but it was produced at {}-{}",
            line.value,
            line.partition,
            line.offset,
            ack.partition,
            ack.offset
        );
        if let Some(first) = first_reader.insert(&line.value, member) {
            duplicates.push(format!(
                "{} ({}-{}) by {first} and {member}",
                line.value, line.partition, line.offset
            ));
        }
    }
    ensure!(
        duplicates.is_empty(),
        "{} records consumed more than once, e.g. {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(10)]
    );
    let missing: Vec<&String> =
        expected.keys().filter(|v| !first_reader.contains_key(v.as_str())).collect();
    ensure!(
        missing.is_empty(),
        "{} of {} records never consumed, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(10)]
    );
    Ok(())
}

/// The group's committed offset of every partition equals its high watermark: the members
/// committed everything they consumed.
fn check_committed_everything(bootstrap: &str) -> anyhow::Result<()> {
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let marks = kafka::watermarks(bootstrap, TOPIC, &partitions)?;
    let consumer = kafka::consumer(bootstrap, &[("group.id", GROUP)])?;
    let mut list = TopicPartitionList::new();
    for &partition in &partitions {
        list.add_partition(TOPIC, partition);
    }
    let committed = consumer.committed_offsets(list, CLIENT_TIMEOUT).context("OffsetFetch")?;
    let mut differ = Vec::new();
    for &partition in &partitions {
        let offset = committed.find_partition(TOPIC, partition).map(|e| e.offset());
        let high = marks[&partition].1;
        if offset != Some(Offset::Offset(high)) {
            differ.push(format!(
                "partition {partition}: committed {offset:?}, high watermark {high}"
            ));
        }
    }
    ensure!(differ.is_empty(), "committed offsets of {GROUP} lag the log: {differ:?}");
    Ok(())
}

fn run(library: Library) {
    library.require("group_consumer");
    let options =
        NodeOptions { config_toml: Some(NODE_CONFIG.to_owned()), ..NodeOptions::default() };
    let node = match StromNode::start(options) {
        Ok(node) => node,
        Err(error) => panic!("strom did not start: {error:#}"),
    };
    let bootstrap = node.bootstrap();
    let mut group = match Group::new(library, &bootstrap) {
        Ok(group) => group,
        Err(error) => panic!("{error:#}"),
    };
    let started = Instant::now();
    if let Err(error) = scenario(&bootstrap, &mut group) {
        // The node's Drop prints its log tail while this panic unwinds.
        panic!("{} group test failed: {error:#}\n{}", library.name(), group.report());
    }
    eprintln!("{}: passed in {:.1?}", library.name(), started.elapsed());
}

fn scenario(bootstrap: &str, group: &mut Group) -> anyhow::Result<()> {
    kafka::create_topic(bootstrap, TOPIC, PARTITIONS, &[])?;
    let producer = AckingProducer::new(bootstrap, &[])?;

    // Three members split the six partitions, then read a batch between them.
    for name in ["m1", "m2", "m3"] {
        group.spawn(name)?;
    }
    group.wait_assignment(&["m1", "m2", "m3"]).context("three members joining")?;
    let mut expected = produce(&producer, 1, 0..BATCH)?;
    group.wait_consumed(&expected, &["m1", "m2", "m3"]).context("first batch")?;
    check_exactly_once(&group.lines()?, &expected).context("first batch, three members")?;
    for name in ["m1", "m2", "m3"] {
        let member = group.member(name)?;
        ensure!(
            !member.lines()?.is_empty(),
            "{name} consumed nothing: the group did not share the work"
        );
    }

    // A fourth member joins and m1 leaves (clean stop: commit, LeaveGroup) while the second
    // batch arrives: nothing is lost, nothing read twice.
    group.spawn("m4")?;
    expected.extend(produce(&producer, 2, 0..BATCH / 3)?);
    group.stop("m1").context("stopping m1")?;
    expected.extend(produce(&producer, 2, BATCH / 3..2 * BATCH / 3)?);
    group.wait_assignment(&["m2", "m3", "m4"]).context("m4 joining after m1 left")?;
    expected.extend(produce(&producer, 2, 2 * BATCH / 3..BATCH)?);
    group.wait_consumed(&expected, &["m2", "m3", "m4"]).context("second batch")?;
    check_exactly_once(&group.lines()?, &expected)
        .context("both batches, through the rebalances")?;
    ensure!(!group.member("m4")?.lines()?.is_empty(), "m4 joined but consumed nothing");

    // Everyone stops; a new member resumes at the committed offsets and reads only what was
    // produced after.
    for name in ["m2", "m3", "m4"] {
        group.stop(name).with_context(|| format!("stopping {name}"))?;
    }
    check_committed_everything(bootstrap).context("after every member stopped")?;
    let resumed = produce(&producer, 3, 0..RESUME_BATCH)?;
    let before = group.lines()?.len();
    group.spawn("m5")?;
    group.wait_consumed(&resumed, &["m5"]).context("third batch, after the restart")?;
    let m5: Vec<(String, Line)> =
        group.member("m5")?.lines()?.into_iter().map(|line| ("m5".to_owned(), line)).collect();
    check_exactly_once(&m5, &resumed).context("the member started after the stop")?;
    ensure!(group.lines()?.len() == before + m5.len(), "a stopped member printed records");
    group.stop("m5").context("stopping m5")?;
    check_committed_everything(bootstrap).context("after m5 stopped")?;
    Ok(())
}
