//! The controller quorum (issue 4): three and five combined nodes on loopback forming one
//! openraft quorum; topic creation through gRPC, the CLI and Kafka; controller and broker
//! failover after kill -9; controlled shutdown on SIGTERM; no progress without a majority; and
//! the whole metadata image back after every node is killed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rdkafka::admin::{NewTopic, TopicReplication};
use strom_proto::admin as pb;
use strom_tests::cluster::{ClusterMetadata, StromCluster};
use strom_tests::{kafka, wait_until, with_cluster, ClusterOptions};

/// Generous bound for a failover; the measured time is printed, not asserted.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);

fn new_topic(name: &str, partitions: i32, replication_factor: i32) -> pb::NewTopic {
    pb::NewTopic {
        name: name.to_owned(),
        partitions: Some(partitions),
        replication_factor: Some(replication_factor),
        configs: Default::default(),
    }
}

/// Creates a topic with rdkafka's AdminClient (Kafka CreateTopics) through the given nodes.
fn kafka_create_topic(bootstrap: &str, name: &str, partitions: i32, rf: i32) -> anyhow::Result<()> {
    kafka::create_topic_replicated(bootstrap, name, partitions, rf)
}

#[test]
fn three_nodes_show_topics_created_by_grpc_cli_and_kafka_on_every_node() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let controller = cluster.active_controller()?;
        // Send every creation to a node that is not the active controller, so it is forwarded.
        let follower = cluster.ids().into_iter().find(|&id| id != controller).expect("3 nodes");
        eprintln!("active controller: node {controller}; creating through node {follower}");

        cluster
            .grpc_create_topic(follower, &new_topic("via-grpc", 3, 3), Duration::from_secs(20))?
            .map_err(|status| anyhow::anyhow!("gRPC CreateTopics: {status}"))?;
        cluster
            .cli(
                follower,
                &["topic", "create", "via-cli", "--partitions", "2", "--replication-factor", "2"],
            )?
            .success()?;
        kafka_create_topic(&cluster.bootstrap_of(&[follower]), "via-kafka", 4, 3)?;

        let expected = [("via-grpc", 3, 3), ("via-cli", 2, 2), ("via-kafka", 4, 3)];
        for (topic, partitions, rf) in expected {
            cluster.wait_topic_everywhere(topic, partitions)?;
            for id in cluster.ids() {
                let metadata = cluster.librdkafka_metadata(id)?;
                let info = metadata.topic(topic).context("listed")?;
                for (partition, p) in &info.partitions {
                    ensure!(
                        p.replicas.len() == rf && p.replicas.contains(&p.leader),
                        "node {id}: {topic}-{partition} has replicas {:?}, leader {}",
                        p.replicas,
                        p.leader
                    );
                }
                ensure!(
                    metadata.controller_id == controller as i32,
                    "node {id} names controller {}, expected {controller}",
                    metadata.controller_id
                );
            }
        }
        // Every node answers with the same placement: one metadata log, applied everywhere.
        let placements: Vec<_> = cluster
            .ids()
            .into_iter()
            .map(|id| cluster.metadata(id).map(|m| replicas_by_partition(&m)))
            .collect::<anyhow::Result<_>>()?;
        ensure!(
            placements.windows(2).all(|w| w[0] == w[1]),
            "nodes disagree on placement: {placements:?}"
        );
        Ok(())
    });
}

fn replicas_by_partition(metadata: &ClusterMetadata) -> BTreeMap<(String, i32), Vec<i32>> {
    metadata
        .topics
        .iter()
        .flat_map(|(name, t)| {
            t.partitions.iter().map(move |(&p, info)| ((name.clone(), p), info.replicas.clone()))
        })
        .collect()
}

/// A node other than `not`, leading at least one partition in `metadata`.
fn leader_other_than(metadata: &ClusterMetadata, not: u32) -> anyhow::Result<u32> {
    metadata
        .brokers
        .keys()
        .map(|&id| id as u32)
        .find(|&id| id != not && !metadata.led_by(id as i32).is_empty())
        .with_context(|| format!("no broker other than {not} leads a partition: {metadata:?}"))
}

/// Creates `topic` through gRPC on node `via` and waits until every running node shows it.
fn create_and_wait(
    cluster: &StromCluster,
    via: u32,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
) -> anyhow::Result<()> {
    cluster
        .grpc_create_topic(
            via,
            &new_topic(topic, partitions, replication_factor),
            FAILOVER_TIMEOUT,
        )?
        .map_err(|status| anyhow::anyhow!("gRPC CreateTopics {topic} via node {via}: {status}"))?;
    cluster.wait_topic_everywhere(topic, partitions as usize)
}

#[test]
fn killing_the_active_controller_elects_a_new_one_that_accepts_topic_creation() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let old = cluster.active_controller()?;
        let survivor = cluster.ids().into_iter().find(|&id| id != old).expect("3 nodes");
        let term_before = cluster.describe_cluster(survivor)?.raft_term;
        create_and_wait(cluster, survivor, "before-failover", 1, 3)?;

        let killed_at = Instant::now();
        cluster.kill9(old)?;
        // Each attempt is short, so a request stuck on the dead controller does not hide the
        // moment a new one answers; a timed-out attempt that committed later reports
        // ALREADY_EXISTS, which also means the write was accepted.
        let topic = new_topic("after-failover", 2, 2);
        let cluster: &StromCluster = cluster;
        let (elected, written) = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| {
                wait_until(FAILOVER_TIMEOUT, "a survivor names a new controller", || {
                    let named = cluster.metadata(survivor)?.controller_id;
                    Ok((named >= 0 && named != old as i32).then(|| killed_at.elapsed()))
                })
            });
            let written = wait_until(
                FAILOVER_TIMEOUT,
                "a survivor accepts a topic creation",
                || match cluster.grpc_create_topic(survivor, &topic, Duration::from_secs(1))? {
                    Ok(_) => Ok(Some(killed_at.elapsed())),
                    Err(status) if status.code() == tonic::Code::AlreadyExists => {
                        Ok(Some(killed_at.elapsed()))
                    }
                    Err(status) => bail!("CreateTopics: {status}"),
                },
            );
            (watcher.join().expect("watcher thread"), written)
        });
        eprintln!(
            "quorum: kill -9 of active controller {old} -> node {survivor} names a new \
             controller after {} ms; first committed topic creation through it after {} ms",
            elected?.as_millis(),
            written?.as_millis()
        );

        let new = cluster.active_controller()?;
        ensure!(new != old, "the killed node {old} is still named active controller");
        let state = cluster.describe_cluster(survivor)?;
        ensure!(
            state.active_controller_id == Some(u64::from(new)) && state.raft_term > term_before,
            "after failover DescribeCluster says {state:?} (term before {term_before})"
        );
        cluster.wait_topic_everywhere("after-failover", 2)?;
        cluster.wait_topic_everywhere("before-failover", 1)?;
        Ok(())
    });
}

#[test]
fn killed_broker_is_fenced_its_partitions_get_new_leaders_and_it_rejoins_with_a_new_epoch() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let observer = cluster.active_controller()?;
        create_and_wait(cluster, observer, "led", 6, 3)?;
        let before = cluster.metadata(observer)?;
        // A broker that is not the active controller: this measures broker fencing alone.
        let victim = leader_other_than(&before, observer)?;
        let led = before.led_by(victim as i32);
        let epoch_before = cluster.describe_cluster(observer)?.brokers[&(victim as i32)].epoch;

        let killed_at = Instant::now();
        cluster.kill9(victim)?;
        let after = wait_until(FAILOVER_TIMEOUT, "the killed broker's partitions move", || {
            let metadata = cluster.metadata(observer)?;
            let moved = led.iter().all(|(topic, partition)| {
                let leader = metadata.topics[topic].partitions[partition].leader;
                leader != victim as i32 && metadata.brokers.contains_key(&leader)
            });
            let fenced = !metadata.brokers.contains_key(&(victim as i32));
            Ok((moved && fenced).then_some(metadata))
        })?;
        eprintln!(
            "quorum: kill -9 of broker {victim} (leader of {} partitions) -> fenced and every \
             partition led elsewhere in Metadata: {} ms",
            led.len(),
            killed_at.elapsed().as_millis()
        );
        for (topic, partition) in &led {
            let old = &before.topics[topic].partitions[partition];
            let new = &after.topics[topic].partitions[partition];
            // The first replica of the ISR, in replica order, that is still alive.
            let expected =
                old.replicas.iter().copied().find(|&r| r != victim as i32 && old.isr.contains(&r));
            ensure!(
                Some(new.leader) == expected && new.leader_epoch > old.leader_epoch,
                "{topic}-{partition}: before {old:?}, after {new:?}; expected leader {expected:?} \
                 with a higher leader epoch"
            );
        }
        let described = cluster.cli(observer, &["cluster", "describe", "--output", "json"])?;
        let described = described.success()?.json()?;
        let entry = broker_entry(&described, victim)?;
        ensure!(entry["fenced"] == true, "cluster describe after kill -9: {entry}");

        cluster.restart(victim)?;
        let state = wait_until(FAILOVER_TIMEOUT, "the restarted broker is unfenced", || {
            let state = cluster.describe_cluster(observer)?;
            let broker = &state.brokers[&(victim as i32)];
            let listed = cluster.metadata(observer)?.brokers.contains_key(&(victim as i32));
            Ok((!broker.fenced && listed).then_some(state))
        })?;
        let epoch_after = state.brokers[&(victim as i32)].epoch;
        ensure!(
            epoch_after > epoch_before,
            "broker {victim} re-registered with epoch {epoch_after}, before the kill {epoch_before}"
        );
        Ok(())
    });
}

/// The entry of broker `id` in `strom cluster describe --output json`.
fn broker_entry(described: &serde_json::Value, id: u32) -> anyhow::Result<serde_json::Value> {
    described["brokers"]
        .as_array()
        .and_then(|brokers| brokers.iter().find(|b| b["id"] == id))
        .cloned()
        .with_context(|| format!("broker {id} absent from cluster describe: {described}"))
}

#[test]
fn sigterm_moves_every_leadership_away_before_the_broker_exits() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let observer = cluster.active_controller()?;
        create_and_wait(cluster, observer, "drained", 6, 3)?;
        let before = cluster.metadata(observer)?;
        let victim = leader_other_than(&before, observer)?;
        let led = before.led_by(victim as i32);

        cluster.node(victim).send_sigterm()?;
        let signalled_at = Instant::now();
        // The last Metadata the observer answered while the process still ran.
        let mut last_while_running: Option<ClusterMetadata> = None;
        let mut samples = 0usize;
        let status = loop {
            let metadata = cluster.metadata(observer);
            if let Some(status) = cluster.node_mut(victim).try_exit_status()? {
                break status;
            }
            if let Ok(metadata) = metadata {
                samples += 1;
                last_while_running = Some(metadata);
            }
            ensure!(
                signalled_at.elapsed() < FAILOVER_TIMEOUT,
                "node {victim} still runs {FAILOVER_TIMEOUT:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        eprintln!(
            "quorum: SIGTERM of broker {victim} (leader of {} partitions) -> exit {status} after \
             {} ms, {samples} Metadata answers observed while it ran",
            led.len(),
            signalled_at.elapsed().as_millis()
        );
        ensure!(status.code() == Some(0), "exit status after SIGTERM: {status}");
        let last = last_while_running.context("no Metadata answer between SIGTERM and exit")?;
        let still_led = last.led_by(victim as i32);
        ensure!(
            still_led.is_empty(),
            "just before broker {victim} exited it still led {still_led:?}"
        );
        for (topic, partition) in &led {
            let leader = last.topics[topic].partitions[partition].leader;
            ensure!(leader >= 0, "{topic}-{partition} had no leader just before the exit");
        }
        Ok(())
    });
}

#[test]
fn a_minority_of_three_voters_cannot_create_topics_until_a_majority_returns() {
    const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let survivor = cluster.active_controller()?;
        for id in cluster.ids().into_iter().filter(|&id| id != survivor) {
            cluster.kill9(id)?;
        }

        // The survivor was the raft leader: it still accepts requests but can commit nothing.
        let started = Instant::now();
        let grpc = cluster.grpc_create_topic(
            survivor,
            &new_topic("minority-grpc", 1, 1),
            ATTEMPT_TIMEOUT,
        )?;
        ensure!(grpc.is_err(), "a lone voter created a topic through gRPC: {grpc:?}");
        let commit_index = cluster.describe_cluster(survivor)?.commit_index;

        let admin = kafka::admin(&cluster.bootstrap_of(&[survivor]))?;
        let options = rdkafka::admin::AdminOptions::new()
            .request_timeout(Some(ATTEMPT_TIMEOUT))
            .operation_timeout(Some(ATTEMPT_TIMEOUT));
        let topic = NewTopic::new("minority-kafka", 1, TopicReplication::Fixed(1));
        let outcome = kafka::block_on(admin.create_topics([&topic], &options))?;
        let created = matches!(&outcome, Ok(results) if results.iter().all(Result::is_ok));
        ensure!(!created, "a lone voter created a topic through Kafka: {outcome:?}");
        eprintln!(
            "quorum: lone voter refused gRPC and Kafka topic creation within {} ms ({:?})",
            started.elapsed().as_millis(),
            grpc.err().map(|status| status.code())
        );

        let state = cluster.describe_cluster(survivor)?;
        ensure!(
            state.commit_index == commit_index,
            "the lone voter's commit index moved from {commit_index} to {}",
            state.commit_index
        );
        let metadata = cluster.metadata(survivor)?;
        for topic in ["minority-grpc", "minority-kafka"] {
            ensure!(metadata.topic(topic).is_none(), "{topic} appeared without a majority");
        }

        // One voter back makes a majority: metadata commits again.
        let returning = cluster.ids().into_iter().find(|&id| id != survivor).expect("3 nodes");
        cluster.restart(returning)?;
        cluster.wait_formed(FAILOVER_TIMEOUT)?;
        create_and_wait(cluster, survivor, "majority-again", 1, 2)?;
        Ok(())
    });
}

#[test]
fn five_voters_keep_creating_topics_with_two_voters_dead() {
    with_cluster(5, ClusterOptions::default(), |cluster| {
        let controller = cluster.active_controller()?;
        let other = cluster.ids().into_iter().find(|&id| id != controller).expect("5 nodes");
        cluster.kill9(controller)?;
        cluster.kill9(other)?;
        let survivors = cluster.running();
        let expected: Vec<i32> = survivors.iter().map(|&id| id as i32).collect();
        wait_until(FAILOVER_TIMEOUT, "the two dead brokers are fenced everywhere", || {
            for &id in &survivors {
                let listed = cluster.metadata(id)?.broker_ids();
                if listed != expected {
                    bail!("node {id} lists brokers {listed:?}");
                }
            }
            Ok(Some(()))
        })?;

        let via = survivors[0];
        cluster
            .cli(
                via,
                &[
                    "topic",
                    "create",
                    "three-of-five",
                    "--partitions",
                    "3",
                    "--replication-factor",
                    "3",
                ],
            )?
            .success()?;
        kafka_create_topic(&cluster.bootstrap_of(&survivors), "three-of-five-kafka", 2, 3)?;
        for (topic, partitions) in [("three-of-five", 3), ("three-of-five-kafka", 2)] {
            cluster.wait_topic_everywhere(topic, partitions)?;
            let metadata = cluster.metadata(survivors[1])?;
            for (partition, info) in &metadata.topics[topic].partitions {
                ensure!(
                    info.replicas.iter().all(|r| expected.contains(r)),
                    "{topic}-{partition} placed on {:?}, but only {expected:?} are alive",
                    info.replicas
                );
            }
        }
        let new = cluster.active_controller()?;
        ensure!(survivors.contains(&new), "active controller {new} is not a survivor");
        Ok(())
    });
}

#[test]
fn topics_configs_and_assignments_survive_kill_9_of_every_node() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        cluster
            .cli(
                2,
                &[
                    "topic",
                    "create",
                    "configured",
                    "--partitions",
                    "3",
                    "--replication-factor",
                    "3",
                    "--config",
                    "retention.ms=3600000",
                    "--config",
                    "cleanup.policy=compact",
                ],
            )?
            .success()?;
        create_and_wait(cluster, 3, "pairs", 5, 2)?;
        kafka_create_topic(&cluster.bootstrap_of(&[1]), "singles", 4, 1)?;
        let topics = [("configured", 3), ("pairs", 5), ("singles", 4)];
        for (topic, partitions) in topics {
            cluster.wait_topic_everywhere(topic, partitions)?;
        }
        let placement = replicas_by_partition(&cluster.metadata(1)?);
        let described = describe_topics(cluster, 1, &topics)?;
        for (key, value) in [("retention.ms", "3600000"), ("cleanup.policy", "compact")] {
            let found = described["configured"]["configs"]
                .as_array()
                .and_then(|c| c.iter().find(|e| e["name"] == key).cloned())
                .with_context(|| format!("{key} missing from {}", described["configured"]))?;
            ensure!(found["value"] == value, "configured has {found} before the kill");
        }

        for id in cluster.ids() {
            cluster.kill9(id)?;
        }
        cluster.restart_all_stopped()?;

        for (topic, partitions) in topics {
            cluster.wait_topic_everywhere(topic, partitions)?;
        }
        for id in cluster.ids() {
            let now = replicas_by_partition(&cluster.metadata(id)?);
            ensure!(now == placement, "node {id} after restart: {now:?}, before {placement:?}");
            let again = describe_topics(cluster, id, &topics)?;
            for (topic, _) in topics {
                for field in ["topic_id", "configs"] {
                    ensure!(
                        again[topic][field] == described[topic][field],
                        "node {id}: {topic} {field} was {}, is {} after restart",
                        described[topic][field],
                        again[topic][field]
                    );
                }
            }
        }
        Ok(())
    });
}

/// `strom topic describe NAME --output json` of each topic, through node `id`.
fn describe_topics(
    cluster: &StromCluster,
    id: u32,
    topics: &[(&str, usize)],
) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    topics
        .iter()
        .map(|(topic, _)| {
            let output = cluster.cli(id, &["topic", "describe", topic, "--output", "json"])?;
            Ok((topic.to_string(), output.success()?.json()?))
        })
        .collect()
}
