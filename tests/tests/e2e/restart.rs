//! Topics and their configs come back after a restart, from the metadata log and snapshot.

use anyhow::{ensure, Context};
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
