//! Topics and their configs come back after a restart, from the metadata log and snapshot.

use anyhow::{ensure, Context};
use rdkafka::consumer::Consumer;
use strom_tests::{kafka, with_node, NodeOptions};

fn check_topics(bootstrap: &str, stage: &str) -> anyhow::Result<()> {
    let configured = kafka::topic_partitions(bootstrap, "configured")
        .with_context(|| format!("{stage}: metadata of `configured`"))?;
    ensure!(configured.len() == 2, "{stage}: `configured` has partitions {configured:?}");
    let plain = kafka::topic_partitions(bootstrap, "plain")
        .with_context(|| format!("{stage}: metadata of `plain`"))?;
    ensure!(plain.len() == 1, "{stage}: `plain` has partitions {plain:?}");
    let configs = kafka::describe_topic_configs(bootstrap, "configured")?;
    for (key, expected) in [("retention.ms", "7200000"), ("cleanup.policy", "compact")] {
        let got = configs.get(key).cloned().flatten();
        ensure!(
            got.as_deref() == Some(expected),
            "{stage}: `configured` has {key}={got:?}, expected {expected}"
        );
    }
    Ok(())
}

#[test]
fn topics_and_configs_survive_restart_and_kill_9() {
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(
            &bootstrap,
            "configured",
            2,
            &[("retention.ms", "3600000"), ("cleanup.policy", "compact")],
        )?;
        kafka::create_topic(&bootstrap, "plain", 1, &[])?;
        let created = kafka::describe_topic_configs(&bootstrap, "configured")?;
        ensure!(
            created.get("retention.ms").cloned().flatten().as_deref() == Some("3600000"),
            "retention.ms after create: {:?}",
            created.get("retention.ms")
        );
        kafka::alter_topic_configs(
            &bootstrap,
            "configured",
            &[("retention.ms", "7200000"), ("cleanup.policy", "compact")],
        )?;
        check_topics(&bootstrap, "before restart")?;

        node.restart()?;
        check_topics(&bootstrap, "after SIGTERM and restart")?;

        node.kill9()?;
        node.restart()?;
        check_topics(&bootstrap, "after kill -9 and restart")?;
        kafka::assert_node_serves(&bootstrap, "configured", 1)?;
        Ok(())
    });
}

const REPLAYED_TOPICS: usize = 240;
const TOPICS_PER_REQUEST: usize = 8;

/// A restarting node replays its metadata log; the first Metadata it answers already lists
/// every topic (the broker serves only once its image holds its own registration, which the
/// log orders after every earlier topic). Without that rule the node's old, unfenced broker
/// record comes out of the replay before the topics do, and clients see topics vanish.
#[test]
fn the_first_metadata_after_a_restart_lists_every_topic() {
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        let names = create_replayed_topics(&bootstrap)?;
        for stage in ["after kill -9 and restart", "after SIGTERM and restart"] {
            if stage.starts_with("after kill") {
                node.kill9()?;
            }
            node.restart()?;
            let metadata = kafka::consumer(&bootstrap, &[])?
                .fetch_metadata(None, strom_tests::CLIENT_TIMEOUT)
                .with_context(|| format!("{stage}: metadata"))?;
            let listed: Vec<String> =
                metadata.topics().iter().map(|t| t.name().to_owned()).collect();
            let missing: Vec<&String> = names.iter().filter(|n| !listed.contains(*n)).collect();
            ensure!(
                missing.is_empty(),
                "{stage}: the first metadata lists {} of {REPLAYED_TOPICS} topics; missing {:?}",
                REPLAYED_TOPICS - missing.len(),
                &missing[..missing.len().min(5)]
            );
        }
        Ok(())
    });
}

/// Creates [`REPLAYED_TOPICS`] one-partition topics, a few per request: many entries in the
/// metadata log for a restart to replay.
fn create_replayed_topics(bootstrap: &str) -> anyhow::Result<Vec<String>> {
    let admin = kafka::admin(bootstrap)?;
    let options = rdkafka::admin::AdminOptions::new();
    let names: Vec<String> = (0..REPLAYED_TOPICS).map(|i| format!("replayed-{i:03}")).collect();
    for chunk in names.chunks(TOPICS_PER_REQUEST) {
        let new: Vec<rdkafka::admin::NewTopic> = chunk
            .iter()
            .map(|n| {
                rdkafka::admin::NewTopic::new(n, 1, rdkafka::admin::TopicReplication::Fixed(1))
            })
            .collect();
        for result in kafka::block_on(admin.create_topics(&new, &options))?? {
            result.map_err(|(name, code)| anyhow::anyhow!("create {name}: {code:?}"))?;
        }
    }
    Ok(names)
}

/// SIGTERM while the node starts (its control port bound, its broker still opening logs and
/// registering) stops it cleanly, status 0, instead of killing it; it then starts whole.
#[test]
fn sigterm_during_start_up_stops_the_node_cleanly() {
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        let names = create_replayed_topics(&bootstrap)?;
        let status = node.sigterm()?;
        ensure!(status.success(), "SIGTERM of the running node: {status}");
        node.respawn()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(node.control_addr()).is_err() {
            ensure!(std::time::Instant::now() < deadline, "the control port never opened");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let status = node.sigterm()?;
        ensure!(status.success(), "SIGTERM during start-up: {status}");
        node.restart()?;
        let partitions = kafka::topic_partitions(&bootstrap, &names[names.len() - 1])?;
        ensure!(partitions.len() == 1, "last topic after the restarts: {partitions:?}");
        Ok(())
    });
}
