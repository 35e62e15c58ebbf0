//! The admin APIs operators move partitions with, driven by real clients: confluent-kafka's
//! `elect_leaders` (ElectLeaders, Kafka API 43) and kafka-python's
//! `alter_partition_reassignments` / `list_partition_reassignments` (APIs 45 and 46), checked
//! from Metadata and from the replicas' data directories; and the replication throttles that
//! slow a reassignment down (dynamic broker configs and topic configs set with kafka-python's
//! `alter_configs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use strom_tests::clients::{run_to_exit, Library, SCRIPT_RUN_TIMEOUT};
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::{wait_until, with_cluster, ClusterOptions, StromCluster};

const WAIT: Duration = Duration::from_secs(60);

/// confluent-kafka's `elect_leaders` of `kind` for `partitions`: each partition's error name
/// (null: elected).
fn elect(cluster: &StromCluster, kind: &str, partitions: &[(&str, i32)]) -> anyhow::Result<Value> {
    let mut command = Library::ConfluentKafka.command("elect_leaders")?;
    command.args(["--bootstrap", &cluster.bootstrap(), "--type", kind]);
    for (topic, partition) in partitions {
        command.args(["--partition", &format!("{topic}:{partition}")]);
    }
    let run = run_to_exit(command, SCRIPT_RUN_TIMEOUT)?;
    ensure!(run.status.success(), "confluent-kafka elect_leaders: {}", run.stderr_tail(40));
    serde_json::from_str(run.stdout.trim()).with_context(|| format!("printed {:?}", run.stdout))
}

/// The partition as node `id`'s Metadata shows it: (leader, replicas, isr).
fn partition_state(
    cluster: &StromCluster,
    id: u32,
    topic: &str,
    partition: i32,
) -> anyhow::Result<(i32, Vec<i32>, Vec<i32>)> {
    let metadata = cluster.metadata(id)?;
    let info = metadata
        .topic(topic)
        .and_then(|t| t.partitions.get(&partition))
        .with_context(|| format!("node {id}: {topic}-{partition} not listed"))?;
    Ok((info.leader, info.replicas.clone(), info.isr.clone()))
}

#[test]
fn elect_leaders_moves_leadership_back_to_the_preferred_replica() {
    Library::ConfluentKafka.require("elect_leaders");
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let topic = "elected";
        kafka::create_topic_replicated(&cluster.bootstrap(), topic, 1, 3)?;
        cluster.wait_topic_everywhere(topic, 1)?;
        cluster.wait_isr_full(topic, WAIT)?;
        let (leader, replicas, _) = partition_state(cluster, 1, topic, 0)?;
        let preferred = replicas[0];
        ensure!(leader == preferred, "a new partition is led by its first replica: {replicas:?}");
        // Already preferred: nothing to do, and an unclean election is not needed either.
        ensure!(
            elect(cluster, "preferred", &[(topic, 0)])?
                == json!({"elected:0": "ELECTION_NOT_NEEDED"})
        );
        ensure!(
            elect(cluster, "unclean", &[(topic, 0)])?
                == json!({"elected:0": "ELECTION_NOT_NEEDED"})
        );
        ensure!(
            elect(cluster, "preferred", &[("no-such-topic", 0)])?
                == json!({"no-such-topic:0": "UNKNOWN_TOPIC_OR_PART"}),
        );

        // The preferred leader dies; another replica leads; it comes back into the ISR.
        cluster.kill9(preferred as u32)?;
        let interim = cluster.wait_new_leader(topic, 0, preferred, WAIT)?;
        cluster.restart(preferred as u32)?;
        cluster.wait_isr_full(topic, WAIT)?;
        let (leader, _, _) = partition_state(cluster, interim as u32, topic, 0)?;
        ensure!(leader != preferred, "leadership moved back by itself; nothing left to test");

        ensure!(elect(cluster, "preferred", &[(topic, 0)])? == json!({"elected:0": null}));
        wait_until(WAIT, "every node shows the preferred leader", || {
            for id in cluster.running() {
                let (leader, _, _) = partition_state(cluster, id, topic, 0)?;
                if leader != preferred {
                    bail!("node {id} shows leader {leader}, not {preferred}");
                }
            }
            Ok(Some(()))
        })?;
        ensure!(
            elect(cluster, "preferred", &[(topic, 0)])?
                == json!({"elected:0": "ELECTION_NOT_NEEDED"})
        );
        kafka::assert_node_serves(&cluster.bootstrap(), topic, 0)?;
        Ok(())
    });
}

/// kafka-python's `reassign_partitions.py` with `args` after the bootstrap.
fn reassign(cluster: &StromCluster, args: &[&str]) -> anyhow::Result<Value> {
    reassign_via(&cluster.bootstrap(), args)
}

fn reassign_via(bootstrap: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut command = Library::KafkaPython.command("reassign_partitions")?;
    command.args(["--bootstrap", bootstrap]).args(args);
    let run = run_to_exit(command, SCRIPT_RUN_TIMEOUT)?;
    ensure!(run.status.success(), "kafka-python {args:?}: {}", run.stderr_tail(40));
    serde_json::from_str(run.stdout.trim()).with_context(|| format!("printed {:?}", run.stdout))
}

/// The `.log` segment files of a partition directory, by name.
fn segments(dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") {
            out.insert(name, std::fs::read(entry.path())?);
        }
    }
    Ok(out)
}

fn produce(
    producer: &AckingProducer,
    topic: &str,
    ids: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    for id in ids {
        let value = format!("record-{id}-{}", "r".repeat(64));
        let record =
            Outgoing { partition: Some(0), value: Some(value.as_bytes()), ..Outgoing::default() };
        producer.send(topic, id, record)?;
    }
    Ok(())
}

/// Waits until every running node's Metadata shows `replicas` (in any order) all in the ISR,
/// with a leader among them, and no reassignment is listed.
fn wait_moved(cluster: &StromCluster, topic: &str, replicas: &[i32]) -> anyhow::Result<()> {
    let mut wanted = replicas.to_vec();
    wanted.sort_unstable();
    wait_until(WAIT, &format!("{topic}-0 on {wanted:?}, all in sync"), || {
        for id in cluster.running() {
            let (leader, mut shown, mut isr) = partition_state(cluster, id, topic, 0)?;
            shown.sort_unstable();
            isr.sort_unstable();
            if shown != wanted || isr != wanted || !wanted.contains(&leader) {
                bail!("node {id}: leader {leader} replicas {shown:?} ISR {isr:?}");
            }
        }
        Ok(Some(()))
    })?;
    let listed = reassign(cluster, &["list"])?;
    ensure!(listed == json!([]), "a finished move is still listed: {listed}");
    Ok(())
}

#[test]
fn reassignment_moves_a_partition_to_three_replicas_and_back_to_another_broker() {
    Library::KafkaPython.require("reassign_partitions");
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let topic = "moving";
        kafka::create_topic_replicated(&cluster.bootstrap(), topic, 1, 1)?;
        cluster.wait_topic_everywhere(topic, 1)?;
        let (_, replicas, _) = partition_state(cluster, 1, topic, 0)?;
        let original = replicas[0];
        let others: Vec<i32> = [1, 2, 3].into_iter().filter(|&id| id != original).collect();
        let bootstrap = cluster.bootstrap();

        // What Kafka refuses.
        let p = ["--topic", topic, "--partition", "0"];
        let alter = |extra: &[&str]| {
            let mut args = vec!["alter"];
            args.extend(p);
            args.extend(extra);
            reassign(cluster, &args)
        };
        for (args, error) in [
            (&["--cancel"][..], "NoReassignmentInProgressError"),
            (&["--replicas", "1,1"][..], "InvalidReplicationAssignmentError"),
            (&["--replicas", "1,9"][..], "InvalidReplicationAssignmentError"),
        ] {
            let answer = alter(args)?;
            ensure!(answer == json!({ "error": error }), "{args:?}: {answer}");
        }
        let unknown = reassign(
            cluster,
            &["alter", "--topic", "nope", "--partition", "0", "--replicas", "1"],
        )?;
        ensure!(unknown == json!({"error": "UnknownTopicOrPartitionError"}), "{unknown}");

        // A move to a replica that cannot catch up (its process is stopped) stays in progress
        // and is listed; cancelling it reverts to the original replica.
        let controller = cluster.active_controller()? as i32;
        let stuck = others.iter().copied().find(|&id| id != controller).context("a stuck node")?;
        let live: Vec<u32> = [1, 2, 3].into_iter().filter(|&id| id != stuck as u32).collect();
        let via = cluster.bootstrap_of(&live);
        cluster.sigstop(stuck as u32)?;
        // kafka-python sends the request to the controller Metadata names: wait until the live
        // nodes name a live one (an election under load may have moved it meanwhile).
        let named = wait_until(WAIT, "the live nodes name a live controller", || {
            let ids: Vec<i32> = live
                .iter()
                .map(|&id| Ok(cluster.metadata(id)?.controller_id))
                .collect::<anyhow::Result<_>>()?;
            Ok(ids.iter().all(|&c| c == ids[0] && live.contains(&(c as u32))).then_some(()))
        });
        if let Err(e) = named {
            cluster.sigcont(stuck as u32)?;
            return Err(e);
        }
        let moving = format!("{original},{stuck}");
        let args = ["alter", "--topic", topic, "--partition", "0", "--replicas", &moving];
        // kafka-python may still pick the stopped node for a metadata refresh and time out
        // there: each step is asked again (up to 3 times) in a fresh client. A cancel asked
        // again may find its first attempt done.
        let again = |args: &[&str]| {
            let mut last = None;
            for attempt in 0..3 {
                match reassign_via(&via, args) {
                    Ok(answer) => return Ok((attempt, answer)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
        };
        let answer = again(&args);
        let listed = answer.and_then(|(_, answer)| {
            ensure!(answer == json!({"error": null}), "{answer}");
            again(&["list"]).map(|(_, listed)| listed)
        });
        let cancelled = again(&["alter", "--topic", topic, "--partition", "0", "--cancel"]).map(
            |(attempt, answer)| {
                let done_before = json!({"error": "NoReassignmentInProgressError"});
                if attempt > 0 && answer == done_before {
                    json!({"error": null})
                } else {
                    answer
                }
            },
        );
        cluster.sigcont(stuck as u32)?;
        let expected = json!([{
            "topic": topic, "partition": 0, "replicas": [original, stuck],
            "adding_replicas": [stuck], "removing_replicas": [],
        }]);
        let listed = listed?;
        ensure!(listed == expected, "listed {listed}, expected {expected}");
        ensure!(cancelled? == json!({"error": null}));
        ensure!(reassign(cluster, &["list"])? == json!([]));
        let (leader, replicas, _) = partition_state(cluster, original as u32, topic, 0)?;
        ensure!(leader == original && replicas == [original], "{leader} {replicas:?}");

        // Records before the move, then RF 1 → 3 with records produced while it runs.
        let producer = AckingProducer::new(&bootstrap, &[])?;
        produce(&producer, topic, 0..500)?;
        producer.flush(WAIT)?;
        let target = format!("{original},{},{}", others[0], others[1]);
        ensure!(alter(&["--replicas", &target])? == json!({"error": null}));
        produce(&producer, topic, 500..1000)?;
        let listed = reassign(cluster, &["list"])?;
        eprintln!("reassignments while moving: {listed}");
        if let Some(ongoing) = listed.as_array().and_then(|l| l.first()) {
            let mut adding: Vec<i64> = ongoing["adding_replicas"]
                .as_array()
                .context("adding_replicas")?
                .iter()
                .filter_map(Value::as_i64)
                .collect();
            adding.sort_unstable();
            ensure!(
                ongoing["topic"] == topic
                    && adding == [others[0] as i64, others[1] as i64]
                    && ongoing["removing_replicas"] == json!([]),
                "{ongoing}"
            );
        }
        producer.flush(WAIT)?;
        ensure!(producer.acked() == 1000, "acked {}", producer.acked());
        wait_moved(cluster, topic, &[1, 2, 3])?;
        produce(&producer, topic, 1000..1200)?;
        producer.flush(WAIT)?;
        ensure!(producer.acked() == 1200, "acked {}", producer.acked());

        // acks=all: each replica holds every record; once the followers have fetched the
        // last high watermark their segment files are the leader's, byte for byte.
        wait_until(WAIT, "the three replicas' segment files are byte-equal", || {
            let mut copies = Vec::new();
            for id in cluster.ids() {
                copies.push((id, segments(&cluster.node(id).partition_dir(topic, 0))?));
            }
            let (first_id, first) = &copies[0];
            ensure!(
                first.values().map(Vec::len).sum::<usize>() > 1200 * 64,
                "{first_id}: too small"
            );
            for (id, copy) in &copies[1..] {
                if copy != first {
                    let sizes = |c: &BTreeMap<String, Vec<u8>>| {
                        c.iter().map(|(n, b)| (n.clone(), b.len())).collect::<Vec<_>>()
                    };
                    bail!(
                        "node {id} {:?} differs from node {first_id} {:?}",
                        sizes(copy),
                        sizes(first)
                    );
                }
            }
            Ok(Some(()))
        })?;

        // Back to one replica, on a broker that was not the original one.
        let last = others[1];
        ensure!(alter(&["--replicas", &last.to_string()])? == json!({"error": null}));
        wait_moved(cluster, topic, &[last])?;
        wait_until(WAIT, "the removed replicas' partition directories are gone", || {
            for id in [original, others[0]] {
                let dir = cluster.node(id as u32).partition_dir(topic, 0);
                if dir.exists() {
                    bail!("{} still exists", dir.display());
                }
            }
            Ok(Some(()))
        })?;
        ensure!(cluster.node(last as u32).partition_dir(topic, 0).exists());

        // Every acknowledged record is there, once.
        let consumed = kafka::consume_all(&bootstrap, topic, &[0], &[])?;
        let mut ids: Vec<usize> = consumed
            .iter()
            .map(|c| {
                let value = String::from_utf8_lossy(c.value.as_deref().unwrap_or_default());
                value.split('-').nth(1).and_then(|id| id.parse().ok()).context("a record id")
            })
            .collect::<anyhow::Result<_>>()?;
        ids.sort_unstable();
        ensure!(ids == (0..1200).collect::<Vec<_>>(), "consumed {} records", ids.len());
        Ok(())
    });
}

/// `strom topic reassign … --output json` on node `via`: the parsed answer, or the exit code
/// and stderr of a refusal.
fn strom_reassign(
    cluster: &StromCluster,
    via: u32,
    args: &[&str],
) -> anyhow::Result<Result<Value, (Option<i32>, String)>> {
    let mut all = vec!["topic", "reassign", "--output", "json"];
    all.extend(args);
    let out = cluster.cli(via, &all)?;
    if !out.status.success() {
        return Ok(Err((out.status.code(), out.stderr)));
    }
    Ok(Ok(serde_json::from_str(out.stdout.trim()).with_context(|| out.stdout.clone())?))
}

#[test]
fn strom_topic_reassign_moves_from_the_command_line_and_from_a_kafka_plan() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let topic = "cli-moving";
        kafka::create_topic_replicated(&cluster.bootstrap(), topic, 1, 1)?;
        cluster.wait_topic_everywhere(topic, 1)?;
        let (_, replicas, _) = partition_state(cluster, 1, topic, 0)?;
        let original = replicas[0];
        let others: Vec<i32> = [1, 2, 3].into_iter().filter(|&id| id != original).collect();
        let producer = AckingProducer::new(&cluster.bootstrap(), &[])?;
        produce(&producer, topic, 0..300)?;
        producer.flush(WAIT)?;
        ensure!(producer.acked() == 300, "acked {}", producer.acked());

        // What is refused, with exit code 2 and the reason.
        let dir = tempfile::tempdir()?;
        let bad_plan = dir.path().join("bad.json");
        std::fs::write(&bad_plan, r#"{"version":1,"partitions":[{"topic":"x","partition":0}]}"#)?;
        let bad_plan = bad_plan.display().to_string();
        for (args, why) in [
            (&["nope", "--partition", "0", "--replicas", "1"][..], "nope"),
            (&[topic, "--partition", "0", "--cancel"][..], "no reassignment"),
            (&[topic, "--partition", "0", "--replicas", "1,1"][..], "twice"),
            (&[topic, "--partition", "0", "--replicas", "1,9"][..], "9"),
            (&[topic, "--partition", "7", "--replicas", "1"][..], "7"),
            (&[topic, "--partition", "0"][..], "--replicas"),
            (&["--plan", bad_plan.as_str()][..], "no replicas"),
        ] {
            match strom_reassign(cluster, 1, args)? {
                Ok(answer) => bail!("{args:?} was accepted: {answer}"),
                Err((code, stderr)) => ensure!(
                    code == Some(2) && stderr.to_lowercase().contains(&why.to_lowercase()),
                    "{args:?}: exit {code:?}, stderr {stderr:?} (wanted one naming {why:?})"
                ),
            }
        }

        // RF 1 → 3 from the command line, waiting until done.
        let target = format!("{original},{},{}", others[0], others[1]);
        let answer = strom_reassign(
            cluster,
            others[0] as u32,
            &[topic, "--partition", "0", "--replicas", &target, "--wait"],
        )?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let row = &answer["partitions"][0];
        let expected: Vec<i32> = target.split(',').map(|id| id.parse().unwrap()).collect();
        ensure!(
            row["result"] == "completed" && row["replicas"] == json!(expected),
            "answer {answer}"
        );
        wait_moved(cluster, topic, &[1, 2, 3])?;

        // A move that cannot finish (its new replica is stopped) is listed, then cancelled.
        let controller = cluster.active_controller()? as i32;
        let stuck = [1, 2, 3].into_iter().find(|&id| id != controller).context("a stuck node")?;
        let via = [1, 2, 3].into_iter().find(|&id| id != stuck).context("a live node")? as u32;
        // Back to RF 1 on a live broker first, so that adding `stuck` is a real move.
        let keep = via as i32;
        strom_reassign(
            cluster,
            via,
            &[topic, "--partition", "0", "--replicas", &keep.to_string(), "--wait"],
        )?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        wait_moved(cluster, topic, &[keep])?;
        cluster.sigstop(stuck as u32)?;
        let moving = format!("{keep},{stuck}");
        let started =
            strom_reassign(cluster, via, &[topic, "--partition", "0", "--replicas", &moving]);
        let listed = strom_reassign(cluster, via, &["--list"]);
        let cancelled = strom_reassign(cluster, via, &[topic, "--partition", "0", "--cancel"]);
        cluster.sigcont(stuck as u32)?;
        let started = started?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        ensure!(started["partitions"][0]["result"] == "started", "{started}");
        let listed = listed?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let ongoing = &listed["reassignments"][0];
        ensure!(
            ongoing["topic"] == topic
                && ongoing["adding_replicas"] == json!([stuck])
                && ongoing["replicas"] == json!([keep, stuck]),
            "listed {listed}"
        );
        let cancelled = cancelled?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        ensure!(cancelled["partitions"][0]["result"] == "cancelled", "{cancelled}");
        let none =
            strom_reassign(cluster, via, &["--list"])?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        ensure!(none["reassignments"].as_array().is_none_or(Vec::is_empty), "{none}");

        // kafka-reassign-partitions' JSON plan: to the two brokers other than `keep`.
        let plan_path = dir.path().join("plan.json");
        let pair: Vec<i32> = [1, 2, 3].into_iter().filter(|&id| id != keep).collect();
        let plan = json!({"version": 1, "partitions": [
            {"topic": topic, "partition": 0, "replicas": pair, "log_dirs": ["any", "any"]}
        ]});
        std::fs::write(&plan_path, plan.to_string())?;
        let plan_path = plan_path.display().to_string();
        let answer = strom_reassign(cluster, via, &["--plan", &plan_path, "--wait"])?
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        ensure!(
            answer["partitions"][0]["result"] == "completed"
                && answer["partitions"][0]["replicas"] == json!(pair),
            "{answer}"
        );
        wait_moved(cluster, topic, &pair)?;

        // Every acknowledged record is still there, once and in order.
        let consumed = kafka::consume_all(&cluster.bootstrap(), topic, &[0], &[])?;
        let values: Vec<String> = consumed
            .iter()
            .map(|c| String::from_utf8_lossy(c.value.as_deref().unwrap_or_default()).into_owned())
            .collect();
        let wanted: Vec<String> =
            (0..300).map(|id| format!("record-{id}-{}", "r".repeat(64))).collect();
        ensure!(values == wanted, "read {} records, not the 300 produced in order", values.len());
        Ok(())
    });
}

/// kafka-python's `alter_configs.py` with `args` after the bootstrap.
fn configs(cluster: &StromCluster, args: &[&str]) -> anyhow::Result<Value> {
    let mut command = Library::KafkaPython.command("alter_configs")?;
    command.args(["--bootstrap", &cluster.bootstrap()]).args(args);
    let run = run_to_exit(command, SCRIPT_RUN_TIMEOUT)?;
    ensure!(run.status.success(), "kafka-python {args:?}: {}", run.stderr_tail(40));
    serde_json::from_str(run.stdout.trim()).with_context(|| format!("printed {:?}", run.stdout))
}

/// The bytes of a partition's `.log` segment files on a node (0 before it has a directory).
fn log_bytes(cluster: &StromCluster, id: i32, topic: &str) -> anyhow::Result<usize> {
    let dir = cluster.node(id as u32).partition_dir(topic, 0);
    if !dir.exists() {
        return Ok(0);
    }
    Ok(segments(&dir)?.values().map(Vec::len).sum())
}

const RATES: [&str; 2] =
    ["leader.replication.throttled.rate", "follower.replication.throttled.rate"];
const THROTTLED: [&str; 2] =
    ["leader.replication.throttled.replicas", "follower.replication.throttled.replicas"];

#[test]
fn dynamic_broker_configs_are_described_and_bad_ones_refused_by_name() {
    Library::KafkaPython.require("alter_configs");
    with_cluster(1, ClusterOptions::default(), |cluster| {
        let broker = ["--type", "broker", "--name", "1"];
        let run = |command: &str, rest: &[&str]| {
            let mut args = vec![command];
            args.extend(broker);
            args.extend(rest);
            configs(cluster, &args)
        };
        let described = run("describe", &[])?;
        let rate = &described[RATES[0]];
        ensure!(
            rate == &json!({"value": "9223372036854775807", "source": "DEFAULT_CONFIG", "read_only": false}),
            "{described}"
        );
        ensure!(described["broker.id"]["read_only"] == json!(true), "{described}");

        ensure!(
            run("set", &["leader.replication.throttled.rate=51200"])? == json!({"result": "OK"})
        );
        let described = run("describe", &[RATES[0], RATES[1]])?;
        ensure!(
            described
                == json!({
                    RATES[0]: {"value": "51200", "source": "DYNAMIC_BROKER_CONFIG", "read_only": false},
                    RATES[1]: {"value": "9223372036854775807", "source": "DEFAULT_CONFIG", "read_only": false},
                }),
            "{described}"
        );

        // Refused, naming the key: a read-only key, an unknown one, a bad value (both
        // IncrementalAlterConfigs and AlterConfigs).
        for (args, code, key) in [
            (&["log.retention.ms=1000"][..], "InvalidConfigurationError", "log.retention.ms"),
            (&["no.such.config=1"][..], "InvalidConfigurationError", "no.such.config"),
            (
                &["follower.replication.throttled.rate=fast"][..],
                "InvalidConfigurationError",
                RATES[1],
            ),
            (
                &["--legacy", "leader.replication.throttled.rate=-1"][..],
                "InvalidConfigurationError",
                RATES[0],
            ),
        ] {
            let answer = run("set", args)?;
            let text = answer["result"].as_str().unwrap_or_default();
            ensure!(text.contains(code) && text.contains(key), "{args:?}: {answer}");
        }
        // Nothing of the refused requests was applied.
        ensure!(run("describe", &[RATES[0]])?[RATES[0]]["value"] == "51200");

        // A topic's throttled replicas: '*' or partition:broker pairs.
        kafka::create_topic_replicated(&cluster.bootstrap(), "t", 1, 1)?;
        cluster.wait_topic_everywhere("t", 1)?;
        let topic = |command: &str, rest: &[&str]| {
            let mut args = vec![command, "--type", "topic", "--name", "t"];
            args.extend(rest);
            configs(cluster, &args)
        };
        let set = format!("{}=0:1,0:2", THROTTLED[0]);
        ensure!(topic("set", &[&set])? == json!({"result": "OK"}));
        let bad = format!("{}=0-1", THROTTLED[1]);
        let answer = topic("set", &[&bad])?;
        let text = answer["result"].as_str().unwrap_or_default();
        ensure!(
            text.contains("InvalidConfigurationError") && text.contains(THROTTLED[1]),
            "{answer}"
        );
        let described = topic("describe", &[THROTTLED[0], THROTTLED[1]])?;
        ensure!(described[THROTTLED[0]]["value"] == "0:1,0:2", "{described}");
        ensure!(described[THROTTLED[1]]["source"] == "DEFAULT_CONFIG", "{described}");

        ensure!(run("delete", &[RATES[0]])? == json!({"result": "OK"}));
        ensure!(run("describe", &[RATES[0]])?[RATES[0]]["source"] == "DEFAULT_CONFIG");
        Ok(())
    });
}

#[test]
fn replication_throttle_slows_a_reassignment_until_it_is_removed() {
    Library::KafkaPython.require("alter_configs");
    Library::KafkaPython.require("reassign_partitions");
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let topic = "throttled";
        kafka::create_topic_replicated(&cluster.bootstrap(), topic, 1, 1)?;
        cluster.wait_topic_everywhere(topic, 1)?;
        let (_, replicas, _) = partition_state(cluster, 1, topic, 0)?;
        let original = replicas[0];
        let others: Vec<i32> = [1, 2, 3].into_iter().filter(|&id| id != original).collect();

        // 8 MiB in small batches.
        const RECORDS: usize = 8 * 1024;
        let producer = AckingProducer::new(&cluster.bootstrap(), &[("batch.size", "16384")])?;
        let value = vec![b'v'; 1000];
        for id in 0..RECORDS {
            let record =
                Outgoing { partition: Some(0), value: Some(&value), ..Outgoing::default() };
            producer.send(topic, id, record)?;
        }
        producer.flush(WAIT)?;
        ensure!(producer.acked() == RECORDS, "acked {}", producer.acked());
        let full = log_bytes(cluster, original, topic)?;
        ensure!(full > RECORDS * 1000, "the leader holds {full} bytes");

        // 200 KB/s on both sides of every broker, for every replica of the topic.
        const RATE: usize = 200 * 1024;
        for id in ["1", "2", "3"] {
            let rates: Vec<String> = RATES.iter().map(|k| format!("{k}={RATE}")).collect();
            let mut args = vec!["set", "--type", "broker", "--name", id];
            args.extend(rates.iter().map(String::as_str));
            ensure!(configs(cluster, &args)? == json!({"result": "OK"}), "broker {id}");
        }
        let stars: Vec<String> = THROTTLED.iter().map(|k| format!("{k}=*")).collect();
        let mut args = vec!["set", "--type", "topic", "--name", topic];
        args.extend(stars.iter().map(String::as_str));
        ensure!(configs(cluster, &args)? == json!({"result": "OK"}));

        let target = format!("{original},{},{}", others[0], others[1]);
        let args = ["alter", "--topic", topic, "--partition", "0", "--replicas", &target];
        ensure!(reassign(cluster, &args)? == json!({"error": null}));
        let copied = |id: i32| log_bytes(cluster, id, topic);
        let first = wait_until(WAIT, "the new replicas start copying", || {
            let sizes = [copied(others[0])?, copied(others[1])?];
            Ok(sizes.iter().all(|&s| s > 0).then_some(sizes))
        })?;
        // At 200 KB/s the 8 MiB cannot be paid for in seconds: the move is still in progress.
        // (Known gap, see the issue's note: the first chunks of a new replica can arrive in a
        // burst and the rate is then paid back before the replica joins the ISR, so the bytes
        // on disk are not yet paced; only the move's completion is.)
        std::thread::sleep(Duration::from_secs(3));
        let listed = reassign(cluster, &["list"])?;
        ensure!(listed.as_array().is_some_and(|l| l.len() == 1), "not in progress: {listed}");
        for (i, id) in others.iter().enumerate() {
            let now = copied(*id)?;
            ensure!(now >= first[i], "node {id} shrank");
            eprintln!("node {id}: {now} of {full} bytes 3 s after copying started");
        }

        // Without the throttle the move completes and the replicas are byte-equal.
        for id in ["1", "2", "3"] {
            let mut args = vec!["delete", "--type", "broker", "--name", id];
            args.extend(RATES);
            ensure!(configs(cluster, &args)? == json!({"result": "OK"}), "broker {id}");
        }
        let mut args = vec!["delete", "--type", "topic", "--name", topic];
        args.extend(THROTTLED);
        ensure!(configs(cluster, &args)? == json!({"result": "OK"}));
        wait_moved(cluster, topic, &[1, 2, 3])?;
        wait_until(WAIT, "the three replicas' segment files are byte-equal", || {
            let leader = segments(&cluster.node(original as u32).partition_dir(topic, 0))?;
            for id in &others {
                let copy = segments(&cluster.node(*id as u32).partition_dir(topic, 0))?;
                if copy != leader {
                    bail!("node {id} differs from node {original}");
                }
            }
            Ok(Some(()))
        })?;
        Ok(())
    });
}
