//! Consumer groups (issue 6) with librdkafka's group consumer: three members share a 6-partition
//! topic and consume each record exactly once through members joining and leaving (eager and
//! cooperative-sticky assignors); consumption resumes from committed offsets after every
//! member stopped and after the node restarted; kill -9 of the coordinator's node in a 3-node
//! cluster; a static member (`group.instance.id`) restarting within its session timeout causes
//! no rebalance. KIP-848 (`group.protocol=consumer`) groups: the same rebalances, beside classic
//! groups, and through the coordinator's kill -9.
//!
//! Members are threads in this process, each with its own `BaseConsumer`: they record every
//! record they are given, commit what they consumed every 200 ms and, synchronously, whenever
//! partitions are revoked and when they stop, as a careful application does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use strom_tests::cluster::cli;
use strom_tests::cluster::CLI_TIMEOUT;
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::{wait_until, with_cluster, with_node, ClusterOptions, NodeOptions};

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 6;
/// How long a group may take to consume what the test expects (rebalances included).
const CONSUME_WAIT: Duration = Duration::from_secs(90);

/// Broker settings that keep group tests quick: few offsets partitions, a short initial
/// rebalance delay and a session minimum low enough for one-second sessions.
const GROUP_TOML: &str = "offsets.topic_num_partitions = 4\n\
                          group.initial_rebalance_delay_ms = 300\n\
                          group.min_session_timeout_ms = 1000\n\
                          group.consumer_heartbeat_interval_ms = 500\n";

fn node_options() -> NodeOptions {
    NodeOptions { config_toml: Some(GROUP_TOML.to_owned()), ..NodeOptions::default() }
}

/// One consumed record: (member, partition, offset, value).
type Seen = Arc<Mutex<Vec<(String, i32, i64, String)>>>;

struct GroupContext {
    name: String,
    rebalances: Arc<AtomicUsize>,
    assigned: Arc<Mutex<BTreeSet<i32>>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what was consumed before the partitions go to another member.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                eprintln!("[{}] commit on revoke: {e}", self.name);
            }
            let mut assigned = self.assigned.lock().unwrap();
            for e in tpl.elements() {
                assigned.remove(&e.partition());
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut assigned = self.assigned.lock().unwrap();
            assigned.extend(tpl.elements().iter().map(|e| e.partition()));
            eprintln!("[{}] assigned now {:?}", self.name, *assigned);
        }
    }
}

/// A group member running in its own thread until stopped.
struct Member {
    name: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    rebalances: Arc<AtomicUsize>,
    assigned: Arc<Mutex<BTreeSet<i32>>>,
}

impl Member {
    fn start(
        bootstrap: &str,
        group: &str,
        name: &str,
        extra: &[(&str, &str)],
        seen: &Seen,
    ) -> anyhow::Result<Member> {
        let mut config = kafka::client_config(bootstrap);
        config
            .set("client.id", name)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "300")
            .set("check.crcs", "true");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        if config.get("group.protocol") == Some("consumer") {
            // KIP-848: the coordinator sets sessions and heartbeats; librdkafka refuses these.
            config.remove("session.timeout.ms").remove("heartbeat.interval.ms");
        }
        let rebalances = Arc::new(AtomicUsize::new(0));
        let assigned = Arc::new(Mutex::new(BTreeSet::new()));
        let context = GroupContext {
            name: name.to_owned(),
            rebalances: rebalances.clone(),
            assigned: assigned.clone(),
        };
        let consumer: BaseConsumer<GroupContext> =
            config.create_with_context(context).context("create group consumer")?;
        consumer.subscribe(&[TOPIC]).context("subscribe")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, seen, member) = (stop.clone(), seen.clone(), name.to_owned());
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let mut last_commit = Instant::now();
            let mut dirty = false;
            while !stop2.load(Ordering::SeqCst) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let value = String::from_utf8_lossy(m.payload().unwrap_or_default());
                        seen.lock().unwrap().push((
                            member.clone(),
                            m.partition(),
                            m.offset(),
                            value.into_owned(),
                        ));
                        dirty = true;
                    }
                    Some(Err(e)) => eprintln!("[{member}] consumer error: {e}"),
                    None => {}
                }
                if dirty && last_commit.elapsed() >= Duration::from_millis(200) {
                    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                        eprintln!("[{member}] commit: {e}");
                    }
                    dirty = false;
                    last_commit = Instant::now();
                }
            }
            if dirty {
                consumer.commit_consumer_state(CommitMode::Sync).context("final commit")?;
            }
            // Dropping the consumer closes it: revocation (committing again) and LeaveGroup.
            drop(consumer);
            Ok(())
        });
        Ok(Member { name: name.to_owned(), stop, thread: Some(thread), rebalances, assigned })
    }

    /// Stops cleanly: a last commit, then the consumer closes and leaves the group.
    fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().context("member already stopped")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !thread.is_finished() {
            ensure!(Instant::now() < deadline, "member {} did not stop within 60 s", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        thread.join().map_err(|_| anyhow::anyhow!("member {} panicked", self.name))?
    }

    fn assigned(&self) -> BTreeSet<i32> {
        self.assigned.lock().unwrap().clone()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Produces `count` records `{prefix}-{i}` spread by key over the partitions; all acknowledged.
fn produce(bootstrap: &str, prefix: &str, count: usize) -> anyhow::Result<BTreeSet<String>> {
    let producer = AckingProducer::new(bootstrap, &[])?;
    let mut values = BTreeSet::new();
    for i in 0..count {
        let value = format!("{prefix}-{i}");
        let key = format!("k{i}");
        producer.send(
            TOPIC,
            i,
            Outgoing {
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
                ..Default::default()
            },
        )?;
        values.insert(value);
    }
    producer.flush(Duration::from_secs(60))?;
    ensure!(producer.acked() == count, "{} of {count} records acknowledged", producer.acked());
    Ok(values)
}

/// Waits until every value of `want` has been consumed by some member.
fn wait_consumed(seen: &Seen, want: &BTreeSet<String>, what: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    wait_until(CONSUME_WAIT, what, || {
        let seen = seen.lock().unwrap();
        let got: BTreeSet<&String> = seen.iter().map(|(_, _, _, v)| v).collect();
        let missing = want.iter().filter(|v| !got.contains(v)).count();
        Ok((missing == 0).then_some(()))
    })
    .with_context(|| format!("{} records consumed so far", seen.lock().unwrap().len()))?;
    eprintln!("{what}: {} records in {:?}", want.len(), started.elapsed());
    Ok(())
}

/// Every value consumed exactly once, and nothing else consumed.
fn check_exactly_once(seen: &Seen, want: &BTreeSet<String>) -> anyhow::Result<()> {
    let seen = seen.lock().unwrap();
    let mut counts: BTreeMap<&str, Vec<(&str, i32, i64)>> = BTreeMap::new();
    for (member, p, o, v) in seen.iter() {
        counts.entry(v.as_str()).or_default().push((member.as_str(), *p, *o));
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, c)| c.len() > 1).take(10).collect();
    ensure!(duplicates.is_empty(), "records consumed more than once: {duplicates:?}");
    let unexpected: Vec<_> = counts.keys().filter(|v| !want.contains(**v)).take(10).collect();
    ensure!(unexpected.is_empty(), "records consumed that were not expected: {unexpected:?}");
    ensure!(counts.len() == want.len(), "{} of {} records consumed", counts.len(), want.len());
    Ok(())
}

fn per_member(seen: &Seen) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (m, ..) in seen.lock().unwrap().iter() {
        *out.entry(m.clone()).or_default() += 1;
    }
    out
}

/// The group's committed offsets for every partition of the topic (OffsetFetch).
fn committed(bootstrap: &str, group: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer = kafka::consumer(bootstrap, &[("group.id", group)])?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(20))
        .context("OffsetFetch of the group's offsets")?;
    Ok(got
        .elements()
        .iter()
        .map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { -1 }))
        .collect())
}

fn group_of_three_through_rebalances(strategy: &str) {
    group_through_rebalances(
        &format!("g-{strategy}"),
        &[("partition.assignment.strategy", strategy)],
    );
}

/// KIP-848 (`group.protocol=consumer`): the coordinator assigns the partitions (its default
/// `uniform` assignor) and moves them between members one heartbeat at a time.
#[test]
fn librdkafka_consumer_protocol_group_consumes_each_record_once_through_joins_and_leaves() {
    group_through_rebalances("g-kip848", &[("group.protocol", "consumer")]);
}

fn group_through_rebalances(group: &str, extra: &[(&str, &str)]) {
    with_node(node_options(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, TOPIC, PARTITIONS, &[])?;
        let (group, extra) = (group.to_owned(), extra.to_vec());
        let seen: Seen = Arc::default();

        // Three members share the first 3,000 records.
        let first = produce(&bootstrap, "a", 3_000)?;
        let mut members: Vec<Member> = (1..=3)
            .map(|i| Member::start(&bootstrap, &group, &format!("m{i}"), &extra, &seen))
            .collect::<anyhow::Result<_>>()?;
        wait_consumed(&seen, &first, "three members consume batch a")?;
        check_exactly_once(&seen, &first)?;
        let counts = per_member(&seen);
        eprintln!("batch a per member: {counts:?}");

        // A fourth member joins and the first leaves while more records arrive.
        members.push(Member::start(&bootstrap, &group, "m4", &extra, &seen)?);
        let second = produce(&bootstrap, "b", 3_000)?;
        members.remove(0).stop()?;
        let third = produce(&bootstrap, "c", 1_000)?;
        let mut all = first.clone();
        all.extend(second.iter().cloned());
        all.extend(third.iter().cloned());
        wait_consumed(&seen, &all, "members m2..m4 consume batches b and c")?;
        // Let the group settle (the last rebalance's commits), then check.
        std::thread::sleep(Duration::from_millis(500));
        check_exactly_once(&seen, &all)?;
        let assignment: Vec<(String, BTreeSet<i32>)> =
            members.iter().map(|m| (m.name.clone(), m.assigned())).collect();
        eprintln!("after m1 left: {assignment:?}; per member {:?}", per_member(&seen));
        let covered: BTreeSet<i32> = assignment.iter().flat_map(|(_, a)| a.clone()).collect();
        ensure!(
            covered.len() == PARTITIONS as usize,
            "partitions not all assigned: {assignment:?}"
        );

        // Everyone stops; what arrives next is read by a new member from the committed offsets.
        for m in members.drain(..) {
            m.stop()?;
        }
        let marks = kafka::watermarks(&bootstrap, TOPIC, &(0..PARTITIONS).collect::<Vec<_>>())?;
        let offsets = committed(&bootstrap, &group)?;
        for (p, (_, high)) in &marks {
            ensure!(
                offsets.get(p) == Some(high),
                "partition {p}: committed {offsets:?}, high watermarks {marks:?}"
            );
        }
        let fourth = produce(&bootstrap, "d", 500)?;
        let resumed: Seen = Arc::default();
        let m5 = Member::start(&bootstrap, &group, "m5", &extra, &resumed)?;
        wait_consumed(&resumed, &fourth, "a restarted member reads only batch d")?;
        std::thread::sleep(Duration::from_millis(500));
        m5.stop()?;
        check_exactly_once(&resumed, &fourth)?;
        Ok(())
    });
}

#[test]
fn librdkafka_group_consumes_each_record_once_through_joins_and_leaves_eager() {
    group_of_three_through_rebalances("range");
}

#[test]
fn librdkafka_group_consumes_each_record_once_through_joins_and_leaves_cooperative() {
    group_of_three_through_rebalances("cooperative-sticky");
}

#[test]
fn committed_offsets_survive_a_node_restart() {
    with_node(node_options(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, TOPIC, PARTITIONS, &[])?;
        let seen: Seen = Arc::default();
        let first = produce(&bootstrap, "a", 1_000)?;
        let m = Member::start(&bootstrap, "g-restart", "m1", &[], &seen)?;
        wait_consumed(&seen, &first, "batch a")?;
        m.stop()?;
        let before = committed(&bootstrap, "g-restart")?;
        node.kill9()?;
        node.restart()?;
        let bootstrap = node.bootstrap();
        let after = wait_until(Duration::from_secs(30), "offsets readable after restart", || {
            Ok(committed(&bootstrap, "g-restart").ok().filter(|o| o.values().all(|&v| v >= 0)))
        })?;
        ensure!(before == after, "committed offsets before kill -9 {before:?}, after {after:?}");
        let second = produce(&bootstrap, "b", 500)?;

        // The CLI shows the group, its committed offsets and the lag the new batch makes.
        let control = node.control_addr().to_string();
        let cli = |args: &[&str]| -> anyhow::Result<serde_json::Value> {
            let mut all = args.to_vec();
            all.extend(["--bootstrap-control", &control, "--output", "json"]);
            cli(&all, CLI_TIMEOUT)?.success()?.json()
        };
        let listed = cli(&["group", "list"])?;
        let entry = listed["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["group_id"] == "g-restart"))
            .with_context(|| format!("g-restart not listed: {listed}"))?;
        ensure!(entry["state"] == "Empty" && entry["coordinator_id"] == 1, "{entry}");
        let described = cli(&["group", "describe", "g-restart"])?;
        let group = &described["groups"][0];
        ensure!(group["state"] == "Empty", "{described}");
        ensure!(group["total_lag"] == 500, "lag after 500 new records: {described}");
        let parts = group["partitions"].as_array().context("partitions")?;
        ensure!(parts.len() == PARTITIONS as usize, "{described}");
        for p in parts {
            let (c, e, l) = (&p["committed_offset"], &p["log_end_offset"], &p["lag"]);
            ensure!(
                e.as_i64().zip(c.as_i64()).map(|(e, c)| e - c) == l.as_i64(),
                "partition row {p}"
            );
        }
        let resumed: Seen = Arc::default();
        let m = Member::start(&bootstrap, "g-restart", "m2", &[], &resumed)?;
        wait_consumed(&resumed, &second, "batch b after restart")?;
        std::thread::sleep(Duration::from_millis(300));
        m.stop()?;
        check_exactly_once(&resumed, &second)?;

        // DeleteGroups through librdkafka's admin client: the group and its offsets go.
        let admin = kafka::admin(&bootstrap)?;
        let options =
            rdkafka::admin::AdminOptions::new().request_timeout(Some(Duration::from_secs(20)));
        let deleted = kafka::block_on(admin.delete_groups(&["g-restart"], &options))??;
        ensure!(deleted.iter().all(|r| r.is_ok()), "DeleteGroups: {deleted:?}");
        let after = committed(&bootstrap, "g-restart")?;
        ensure!(after.values().all(|&o| o < 0), "offsets after DeleteGroups: {after:?}");
        let listed = cli(&["group", "list"])?;
        ensure!(
            !listed["groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g["group_id"] == "g-restart")),
            "deleted group still listed: {listed}"
        );
        Ok(())
    });
}

/// Java's `String.hashCode`, as Kafka maps a group to its `__consumer_offsets` partition.
fn offsets_partition(group: &str, partitions: i32) -> i32 {
    let h = group.encode_utf16().fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(u as i32));
    (if h == i32::MIN { 0 } else { h.abs() }) % partitions
}

#[test]
fn consumers_continue_and_offsets_survive_kill9_of_the_coordinator() {
    coordinator_kill9("g-failover", &[]);
}

/// KIP-848 members through the coordinator's kill -9. The new coordinator does not know the
/// members (strom keeps a consumer group's membership in memory only; offsets are in the log):
/// they are told UNKNOWN_MEMBER_ID, rejoin and resume from the committed offsets, so records
/// read after the last commit may be read again. Every committed offset is kept.
#[test]
fn consumer_protocol_offsets_survive_kill9_of_the_coordinator() {
    coordinator_kill9("g-kip848-failover", &[("group.protocol", "consumer")]);
}

fn coordinator_kill9(group: &str, extra: &[(&str, &str)]) {
    let options = ClusterOptions { extra_toml: GROUP_TOML.to_owned(), ..ClusterOptions::default() };
    let classic = extra.is_empty();
    with_cluster(3, options, |cluster| {
        let bootstrap = cluster.bootstrap();
        kafka::create_topic_replicated(&bootstrap, TOPIC, PARTITIONS, 3)?;
        cluster.wait_topic_everywhere(TOPIC, PARTITIONS as usize)?;
        let seen: Seen = Arc::default();
        let first = produce(&bootstrap, "a", 2_000)?;
        let members: Vec<Member> = (1..=3)
            .map(|i| Member::start(&bootstrap, group, &format!("m{i}"), extra, &seen))
            .collect::<anyhow::Result<_>>()?;
        wait_consumed(&seen, &first, "batch a")?;
        std::thread::sleep(Duration::from_millis(600)); // the periodic commits land
        let before = committed(&bootstrap, group)?;
        ensure!(before.values().sum::<i64>() == 2_000, "committed before the kill: {before:?}");

        let partition = offsets_partition(group, 4);
        let leaders = cluster.leaders_of("__consumer_offsets")?;
        let coordinator = *leaders.get(&partition).context("offsets partition has no leader")?;
        eprintln!("group {group} → __consumer_offsets-{partition}, coordinator node {coordinator}");
        let killed_at = Instant::now();
        cluster.kill9(coordinator as u32)?;
        let alive: Vec<u32> = cluster.running();
        let bootstrap = cluster.bootstrap_of(&alive);

        let second = produce(&bootstrap, "b", 2_000)?;
        let mut all = first.clone();
        all.extend(second.iter().cloned());
        wait_consumed(&seen, &all, "batch b after the coordinator's kill -9")?;
        eprintln!("consumers caught up {:?} after the kill", killed_at.elapsed());
        std::thread::sleep(Duration::from_millis(600));
        let after = committed(&bootstrap, group)?;
        for (p, offset) in &before {
            ensure!(
                after.get(p).is_some_and(|a| a >= offset),
                "partition {p} went back: before {before:?}, after {after:?}"
            );
        }
        ensure!(after.values().sum::<i64>() == 4_000, "committed after: {after:?}");
        // Nothing consumed twice unless a rebalance handed a partition over mid-batch; with
        // members alive and commits every 200 ms, the group should not have rebalanced at all.
        let rebalances: Vec<usize> =
            members.iter().map(|m| m.rebalances.load(Ordering::SeqCst)).collect();
        eprintln!("rebalance callbacks per member: {rebalances:?}");
        for m in members {
            m.stop()?;
        }
        if classic {
            // Each record once: a set comparison would let duplicates through.
            check_exactly_once(&seen, &all)?;
        } else {
            let read = seen.lock().unwrap().len();
            eprintln!("{read} records read for {} produced (re-reads after the rejoin)", all.len());
        }
        cluster.restart(coordinator as u32)?;
        Ok(())
    });
}

#[test]
fn static_member_restarting_within_its_session_causes_no_rebalance() {
    with_node(node_options(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, TOPIC, PARTITIONS, &[])?;
        let seen: Seen = Arc::default();
        let group = "g-static";
        let first = produce(&bootstrap, "a", 600)?;
        let statics = |i: usize| {
            [
                ("group.instance.id", if i == 1 { "instance-1" } else { "instance-2" }),
                ("session.timeout.ms", "10000"),
            ]
        };
        let m1 = Member::start(&bootstrap, group, "s1", &statics(1), &seen)?;
        let m2 = Member::start(&bootstrap, group, "s2", &statics(2), &seen)?;
        wait_consumed(&seen, &first, "batch a")?;
        // Both hold partitions and the group is quiet.
        wait_until(Duration::from_secs(30), "both members assigned", || {
            Ok((m1.assigned().len() + m2.assigned().len() == PARTITIONS as usize
                && !m1.assigned().is_empty()
                && !m2.assigned().is_empty())
            .then_some(()))
        })?;
        std::thread::sleep(Duration::from_secs(1));
        let m1_partitions = m1.assigned();
        let m2_rebalances = m2.rebalances.load(Ordering::SeqCst);

        // s1 restarts with the same instance id, well within its 10 s session.
        m1.stop()?;
        let m1 = Member::start(&bootstrap, group, "s1-again", &statics(1), &seen)?;
        let second = produce(&bootstrap, "b", 600)?;
        let mut all = first.clone();
        all.extend(second.iter().cloned());
        wait_consumed(&seen, &all, "batch b after the static member's restart")?;
        ensure!(
            m1.assigned() == m1_partitions,
            "restarted static member got {:?}, had {m1_partitions:?}",
            m1.assigned()
        );
        let now = m2.rebalances.load(Ordering::SeqCst);
        ensure!(
            now == m2_rebalances,
            "the other member saw {} rebalance callback(s) during the restart",
            now - m2_rebalances
        );
        m1.stop()?;
        m2.stop()?;
        Ok(())
    });
}

#[test]
fn find_coordinator_names_a_live_broker_for_groups_and_transactions_and_refuses_other_key_types() {
    with_node(node_options(), |node| {
        use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
        use kafka_protocol::protocol::StrBytes;
        let mut conn = strom_tests::raw::RawConnection::connect(node.kafka_addr())?;
        let ask = |conn: &mut strom_tests::raw::RawConnection,
                   key_type: i8|
         -> anyhow::Result<FindCoordinatorResponse> {
            let req = FindCoordinatorRequest::default()
                .with_key_type(key_type)
                .with_coordinator_keys(vec![StrBytes::from_static_str("some-group")]);
            let id = conn.send_request(ApiKey::FindCoordinator as i16, 4, &req, 4)?;
            conn.read_response(id, 4)
        };
        // The first lookup of a key type creates its topic (__consumer_offsets, then
        // __transaction_state); the coordinator follows once it leads.
        for key_type in [0, 1] {
            let what = format!("a coordinator for key type {key_type}");
            let found = wait_until(Duration::from_secs(30), &what, || {
                let r = ask(&mut conn, key_type)?;
                let c = r.coordinators.first().context("no coordinator entry")?.clone();
                Ok((c.error_code == 0).then_some(c))
            })?;
            let port = node.kafka_addr().port() as i32;
            ensure!(found.node_id.0 == 1 && found.port == port, "{found:?}");
        }
        let bad = ask(&mut conn, 7)?;
        if bad.coordinators[0].error_code != 42 {
            bail!("unknown key type: {bad:?}");
        }
        // Only the coordinator writes group state: a client's produce to it is refused.
        let batch = strom_tests::raw::record_batch(&[b"forged"], 0)?;
        let code = conn.produce("__consumer_offsets", 0, batch)?;
        ensure!(code == 17, "produce to __consumer_offsets: error code {code}, want 17");
        Ok(())
    });
}

#[test]
fn offsets_topic_is_compacted_and_reloads_the_latest_commits() {
    let toml = "offsets.topic_num_partitions = 1\noffsets.topic_segment_bytes = 4096\n\
                log.retention_check_interval_ms = 200\n"
        .to_owned();
    let options = NodeOptions { config_toml: Some(toml), ..NodeOptions::default() };
    with_node(options, |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, TOPIC, PARTITIONS, &[])?;
        // An assign()-only consumer commits the same six partitions over and over.
        const ROUNDS: i64 = 400;
        let consumer = kafka::consumer(&bootstrap, &[("group.id", "g-compact")])?;
        for round in 1..=ROUNDS {
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                tpl.add_partition_offset(TOPIC, p, Offset::Offset(round * 10 + i64::from(p)))?;
            }
            consumer.commit(&tpl, CommitMode::Sync).context("OffsetCommit")?;
        }
        drop(consumer);
        let want: BTreeMap<i32, i64> =
            (0..PARTITIONS).map(|p| (p, ROUNDS * 10 + i64::from(p))).collect();
        let dir = node.partition_dir("__consumer_offsets", 0);
        let size = |dir: &std::path::Path| -> anyhow::Result<u64> {
            let mut total = 0;
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().ends_with(".log") {
                    total += entry.metadata()?.len();
                }
            }
            Ok(total)
        };
        // Each round wrote six offset records (~60 bytes each); compaction leaves about one
        // segment of them.
        let written = ROUNDS as u64 * 6 * 60;
        let compacted =
            wait_until(Duration::from_secs(60), "__consumer_offsets compacted", || {
                let bytes = size(&dir)?;
                Ok((bytes < written / 4).then_some(bytes))
            })?;
        eprintln!("__consumer_offsets-0: about {written} bytes written, {compacted} bytes after compaction");
        ensure!(committed(&bootstrap, "g-compact")? == want, "offsets before restart");
        node.kill9()?;
        node.restart()?;
        let bootstrap = node.bootstrap();
        let after = wait_until(Duration::from_secs(30), "offsets readable after restart", || {
            Ok(committed(&bootstrap, "g-compact").ok().filter(|o| o.values().all(|&v| v >= 0)))
        })?;
        ensure!(after == want, "committed offsets after a restart on the compacted log: {after:?}");
        Ok(())
    });
}

/// Classic and KIP-848 groups side by side on one coordinator: a classic group and a
/// consumer-protocol group each read every record of the same topic exactly once. A group id
/// belongs to one protocol while it has members: a classic JoinGroup into the consumer group is
/// refused with INCONSISTENT_GROUP_PROTOCOL, a ConsumerGroupHeartbeat into the classic group
/// with GROUP_ID_NOT_FOUND; ConsumerGroupDescribe shows the consumer group's members, epochs
/// and assignments.
#[test]
fn classic_and_consumer_protocol_groups_side_by_side() {
    use kafka_protocol::messages::{
        ApiKey, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse,
        ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, GroupId, JoinGroupRequest,
        JoinGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetFetchRequest,
        OffsetFetchResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    use strom_tests::raw::RawConnection;
    const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    const GROUP_ID_NOT_FOUND: i16 = 69;
    const STALE_MEMBER_EPOCH: i16 = 113;
    let str = |s: &str| StrBytes::from_string(s.to_owned());
    with_node(node_options(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, TOPIC, PARTITIONS, &[])?;
        let (classic_seen, new_seen): (Seen, Seen) = (Arc::default(), Arc::default());
        let records = produce(&bootstrap, "a", 2_000)?;
        let classic: Vec<Member> = (1..=2)
            .map(|i| Member::start(&bootstrap, "g-classic", &format!("c{i}"), &[], &classic_seen))
            .collect::<anyhow::Result<_>>()?;
        let consumer = [("group.protocol", "consumer")];
        let new: Vec<Member> = (1..=2)
            .map(|i| Member::start(&bootstrap, "g-new", &format!("n{i}"), &consumer, &new_seen))
            .collect::<anyhow::Result<_>>()?;
        wait_consumed(&classic_seen, &records, "the classic group reads everything")?;
        wait_consumed(&new_seen, &records, "the consumer-protocol group reads everything")?;
        wait_until(
            Duration::from_secs(30),
            "both consumer-protocol members hold partitions",
            || Ok(new.iter().all(|m| !m.assigned().is_empty()).then_some(())),
        )?;

        let mut raw = RawConnection::connect(node.kafka_addr())?;
        let join = JoinGroupRequest::default()
            .with_group_id(GroupId(str("g-new")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(str(""))
            .with_protocol_type(str("consumer"));
        let id = raw.send_request(ApiKey::JoinGroup as i16, 5, &join, 5)?;
        let joined: JoinGroupResponse = raw.read_response(id, 5)?;
        ensure!(
            joined.error_code == INCONSISTENT_GROUP_PROTOCOL,
            "a classic JoinGroup into the consumer group answered {}",
            joined.error_code
        );
        let heartbeat = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(str("g-classic")))
            .with_member_id(str("0f3c52c1-7a4f-4a55-9e0b-1d2f3a4b5c6d"))
            .with_member_epoch(0)
            .with_rebalance_timeout_ms(10_000)
            .with_subscribed_topic_names(Some(vec![TopicName(str(TOPIC))]))
            .with_topic_partitions(Some(Vec::new()));
        let id = raw.send_request(ApiKey::ConsumerGroupHeartbeat as i16, 1, &heartbeat, 1)?;
        let answer: ConsumerGroupHeartbeatResponse = raw.read_response(id, 1)?;
        ensure!(
            answer.error_code == GROUP_ID_NOT_FOUND,
            "a ConsumerGroupHeartbeat into the classic group answered {}",
            answer.error_code
        );

        let describe = ConsumerGroupDescribeRequest::default()
            .with_group_ids(vec![GroupId(str("g-new")), GroupId(str("g-classic"))]);
        let id = raw.send_request(ApiKey::ConsumerGroupDescribe as i16, 1, &describe, 1)?;
        let described: ConsumerGroupDescribeResponse = raw.read_response(id, 1)?;
        let (g, other) = (&described.groups[0], &described.groups[1]);
        ensure!(other.error_code == GROUP_ID_NOT_FOUND, "g-classic: {}", other.error_code);
        ensure!(
            g.error_code == 0 && g.members.len() == 2 && g.assignor_name.as_str() == "uniform",
            "g-new: {g:?}"
        );
        let owned: usize = g
            .members
            .iter()
            .flat_map(|m| &m.assignment.topic_partitions)
            .filter(|t| t.topic_name.0.as_str() == TOPIC)
            .map(|t| t.partitions.len())
            .sum();
        ensure!(owned == PARTITIONS as usize, "the members own {owned} partitions: {g:?}");
        ensure!(g.members.iter().all(|m| m.member_epoch >= 1), "member epochs: {g:?}");
        // OffsetFetch v9: a member fetches at its own epoch; another epoch is stale.
        let member = &g.members[0];
        let fetch_at = |raw: &mut RawConnection, epoch: i32| -> anyhow::Result<i16> {
            use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
            let group = OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(str("g-new")))
                .with_member_id(Some(member.member_id.clone()))
                .with_member_epoch(epoch);
            let request = OffsetFetchRequest::default().with_groups(vec![group]);
            let id = raw.send_request(ApiKey::OffsetFetch as i16, 9, &request, 9)?;
            let answer: OffsetFetchResponse = raw.read_response(id, 9)?;
            Ok(answer.groups[0].error_code)
        };
        ensure!(fetch_at(&mut raw, member.member_epoch)? == 0, "OffsetFetch v9 at the epoch");
        let stale = fetch_at(&mut raw, member.member_epoch + 100)?;
        ensure!(stale == STALE_MEMBER_EPOCH, "OffsetFetch v9 at another epoch answered {stale}");

        // ListGroups v5 tells the two protocols apart, and filters by type.
        let list = ListGroupsRequest::default().with_types_filter(vec![str("consumer")]);
        let id = raw.send_request(ApiKey::ListGroups as i16, 5, &list, 5)?;
        let listed: ListGroupsResponse = raw.read_response(id, 5)?;
        let names: Vec<(&str, &str, &str)> = listed
            .groups
            .iter()
            .map(|g| (g.group_id.0.as_str(), g.group_type.as_str(), g.protocol_type.as_str()))
            .collect();
        ensure!(names == [("g-new", "consumer", "consumer")], "ListGroups(consumer): {names:?}");
        let id =
            raw.send_request(ApiKey::ListGroups as i16, 5, &ListGroupsRequest::default(), 5)?;
        let listed: ListGroupsResponse = raw.read_response(id, 5)?;
        let mut types: Vec<(String, String)> = listed
            .groups
            .iter()
            .map(|g| (g.group_id.0.to_string(), g.group_type.to_string()))
            .collect();
        types.sort();
        ensure!(
            types == [("g-classic".into(), "classic".into()), ("g-new".into(), "consumer".into())],
            "ListGroups: {types:?}"
        );

        for m in classic.into_iter().chain(new) {
            m.stop()?;
        }
        check_exactly_once(&classic_seen, &records)?;
        check_exactly_once(&new_seen, &records)?;
        Ok(())
    });
}

/// KIP-848 regex subscriptions, resolved by the coordinator: librdkafka subscribes to
/// `^ord.*`; it reads the matching topics, never the other one, and a matching topic created
/// later is assigned to it without a new subscribe.
#[test]
fn consumer_protocol_regex_subscription_follows_new_matching_topics() {
    with_node(node_options(), |node| {
        let bootstrap = node.bootstrap();
        for (topic, partitions) in [("orders", 3), ("ordinals", 2), ("other", 1)] {
            kafka::create_topic(&bootstrap, topic, partitions, &[])?;
        }
        let producer = AckingProducer::new(&bootstrap, &[])?;
        // Delivery ids are unique across topics: each batch starts at its own base.
        let send = |topic: &str, base: usize, n: usize| -> anyhow::Result<()> {
            for i in 0..n {
                let value = format!("{topic}-{i}");
                let record = Outgoing { value: Some(value.as_bytes()), ..Outgoing::default() };
                producer.send(topic, base + i, record)?;
            }
            producer.flush(Duration::from_secs(30))
        };
        send("orders", 0, 30)?;
        send("ordinals", 100, 20)?;
        send("other", 200, 10)?;
        let consumer: BaseConsumer = kafka::client_config(&bootstrap)
            .set("group.id", "g-regex")
            .set("group.protocol", "consumer")
            .set("auto.offset.reset", "earliest")
            .set("topic.metadata.refresh.interval.ms", "500")
            .create()
            .context("create consumer")?;
        consumer.subscribe(&["^ord.*"]).context("subscribe")?;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut poll_until = |want: &BTreeMap<String, usize>, what: &str| {
            wait_until(CONSUME_WAIT, what, || {
                if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                    let m = m.context("consume")?;
                    *seen.entry(m.topic().to_owned()).or_default() += 1;
                }
                Ok(want.iter().all(|(t, n)| seen.get(t) >= Some(n)).then(|| seen.clone()))
            })
        };
        let want = BTreeMap::from([("orders".to_owned(), 30), ("ordinals".to_owned(), 20)]);
        poll_until(&want, "the matching topics are read")?;
        kafka::create_topic(&bootstrap, "ordnew", 2, &[])?;
        send("ordnew", 300, 15)?;
        let mut want = want;
        want.insert("ordnew".to_owned(), 15);
        let seen = poll_until(&want, "a matching topic created later is read")?;
        ensure!(seen == want, "read {seen:?}, wanted exactly {want:?} (nothing of \"other\")");
        // The coordinator resolved it: the member sent its regex (librdkafka joins a
        // subscription's patterns as `(p1)|(p2)…`).
        use kafka_protocol::messages::{
            ApiKey, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, GroupId,
        };
        use kafka_protocol::protocol::StrBytes;
        let mut raw = strom_tests::raw::RawConnection::connect(node.kafka_addr())?;
        let describe = ConsumerGroupDescribeRequest::default()
            .with_group_ids(vec![GroupId(StrBytes::from_static_str("g-regex"))]);
        let id = raw.send_request(ApiKey::ConsumerGroupDescribe as i16, 1, &describe, 1)?;
        let described: ConsumerGroupDescribeResponse = raw.read_response(id, 1)?;
        let regexes: Vec<Option<String>> = described.groups[0]
            .members
            .iter()
            .map(|m| m.subscribed_topic_regex.as_ref().map(|r| r.to_string()))
            .collect();
        ensure!(regexes == [Some("(^ord.*)".to_owned())], "members' regexes {regexes:?}");
        Ok(())
    });
}
