//! Multi-voter quorums over real gRPC on loopback: leader election, forwarding from followers,
//! failover, minority refusal, and a restarted voter catching up through a snapshot. Each
//! voter serves the controller's `Raft` and `Controller` services with tonic, as the binary
//! does on its control port.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{create_topic, live_broker, Quorum, Recorder, SETTLE};
use strom_controller::Controller;
use strom_metadata::control::{ControlRequest, ControlResponse};
use strom_metadata::{ControlError, MetadataImage, NodeId};

impl Quorum {
    fn follower(&self, leader: u64) -> u64 {
        *self.running.keys().find(|&&id| id != leader).expect("a follower runs")
    }

    /// Waits until voter `id`'s image satisfies `ok`.
    async fn image_of(
        &self,
        id: u64,
        ok: impl Fn(&MetadataImage) -> bool,
    ) -> anyhow::Result<Arc<MetadataImage>> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let image = self.voter(id).controller.image();
            if ok(&image) {
                return Ok(image);
            }
            anyhow::ensure!(Instant::now() < deadline, "voter {id} never saw the expected image");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_a_leader_and_a_follower_forwards_writes() -> anyhow::Result<()> {
    let mut q = Quorum::new(3, 1_000).await?;
    q.start_all().await?;
    let leader = q.agreed_leader().await?;
    let follower = q.follower(leader);
    assert_eq!(q.voter(follower).controller.wait_for_leader(SETTLE).await?, leader);

    // Submitted on a follower: relayed to the leader, decided there, committed by all.
    let client = q.voter(follower).controller.client();
    live_broker(&client, 1).await?;
    create_topic(&client, "orders", 3).await?;
    for id in 1..=3 {
        let image = q.image_of(id, |i| i.topic("orders").is_some()).await?;
        assert_eq!(image.topic("orders").map(|t| t.partitions.len()), Some(3));
        assert!(q.voter(id).recorder.topics_seen().contains(&"orders".to_string()));
    }
    // Decided once: the relayed request shows up as exactly one TopicRecord everywhere.
    for id in 1..=3 {
        let seen = q.voter(id).recorder.topics_seen();
        assert_eq!(seen.iter().filter(|t| *t == "orders").count(), 1, "voter {id}: {seen:?}");
    }
    // A refusal travels back as the same error.
    let again = client
        .submit(ControlRequest::CreateTopics(strom_metadata::control::CreateTopicsRequest {
            topics: vec![strom_metadata::control::CreateTopic {
                name: "orders".into(),
                num_partitions: 1,
                replication_factor: 1,
                ..Default::default()
            }],
            validate_only: false,
            internal: false,
        }))
        .await?;
    let ControlResponse::CreateTopics(items) = again else { anyhow::bail!("{again:?}") };
    assert_eq!(items[0].result, Err(ControlError::TopicAlreadyExists("orders".into())));
    q.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_elected_and_commits_after_the_leader_stops() -> anyhow::Result<()> {
    let mut q = Quorum::new(3, 1_000).await?;
    // The broker heartbeats once: its session must outlast the failover.
    q.session_timeout_ms = Some(600_000);
    q.start_all().await?;
    let leader = q.agreed_leader().await?;
    let follower = q.follower(leader);
    live_broker(&q.voter(follower).controller.client(), 1).await?;
    create_topic(&q.voter(follower).controller.client(), "before", 1).await?;

    let stopped_at = Instant::now();
    q.stop(leader).await?;
    // The next write, submitted on a survivor, waits out the election and commits.
    create_topic(&q.voter(follower).controller.client(), "after", 1).await?;
    let took = stopped_at.elapsed();
    let new_leader = q.agreed_leader().await?;
    assert_ne!(new_leader, leader);
    eprintln!("leader {leader} stopped; {new_leader} leads; first write committed after {took:?}");
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    for &id in q.running.keys() {
        q.image_of(id, |i| i.topic("before").is_some() && i.topic("after").is_some()).await?;
    }
    q.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_voter_of_three_cannot_commit() -> anyhow::Result<()> {
    let mut q = Quorum::new(3, 1_000).await?;
    q.start(1).await?;
    let lone = &q.voter(1).controller;
    assert!(lone.wait_for_leader(Duration::from_millis(1_500)).await.is_err());
    let answer =
        lone.client().submit(ControlRequest::ElectLeaders { topics: None, preferred: true });
    let answer = answer.await;
    assert!(matches!(answer, Err(ControlError::ControllerUnavailable(_))), "{answer:?}");
    assert_eq!(lone.image().offset.0, 0, "nothing committed");
    q.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_voters_survive_two_stopped_voters() -> anyhow::Result<()> {
    let mut q = Quorum::new(5, 1_000).await?;
    // The broker heartbeats once: its session must outlast the failover.
    q.session_timeout_ms = Some(600_000);
    q.start_all().await?;
    let leader = q.agreed_leader().await?;
    let follower = q.follower(leader);
    live_broker(&q.voter(follower).controller.client(), 1).await?;
    // Two voters gone, the leader among them: three of five are still a quorum.
    q.stop(leader).await?;
    let other = q.follower(follower);
    q.stop(other).await?;
    create_topic(&q.voter(follower).controller.client(), "survivor", 2).await?;
    let new_leader = q.agreed_leader().await?;
    assert!(new_leader != leader && new_leader != other);
    for &id in q.running.keys() {
        q.image_of(id, |i| i.topic("survivor").is_some()).await?;
    }
    q.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_voter_catches_up_through_a_snapshot() -> anyhow::Result<()> {
    let mut q = Quorum::new(3, 5).await?;
    // The broker registers once and never heartbeats again: its session must outlast the test
    // (a fenced broker leaves no target for the last topic's replica).
    q.session_timeout_ms = Some(600_000);
    q.start_all().await?;
    let leader = q.agreed_leader().await?;
    let lagging = q.follower(leader);
    let client = q.voter(leader).controller.client();
    live_broker(&client, 1).await?;
    create_topic(&client, "early", 1).await?;
    q.image_of(lagging, |i| i.topic("early").is_some()).await?;
    let stopped_at = q.voter(lagging).controller.image().offset.0;
    q.stop(lagging).await?;

    for i in 0..30 {
        create_topic(&client, &format!("t{i}"), 1).await?;
    }
    // The voters that stayed snapshot and purge their logs past where the lagging one stopped.
    q.voter(leader)
        .controller
        .raft()
        .wait(Some(SETTLE))
        .metrics(|m| m.purged.is_some_and(|p| p.index > stopped_at + 5), "leader purged")
        .await?;

    q.start(lagging).await?;
    let image = q.image_of(lagging, |i| i.topics.len() == 31).await?;
    let leader_image = q.voter(leader).controller.image();
    assert_eq!(image.topics, leader_image.topics);
    assert_eq!(image.brokers, leader_image.brokers);
    // It got there by installing a snapshot: its own log never held the purged entries.
    let snapshots = common::files_with_suffix(&q.dirs[&lagging], ".checkpoint")?;
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let index: u64 = snapshots[0].split('-').next().unwrap_or("0").parse()?;
    assert!(index > stopped_at + 5, "snapshot at {index}, stopped at {stopped_at}");
    // And it votes and commits like any voter again.
    create_topic(&q.voter(lagging).controller.client(), "after-restart", 1).await?;
    q.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_fenced_and_its_leaderships_move() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = common::single_voter(dir.path());
    cfg.defaults.broker_heartbeat_interval_ms = 50;
    cfg.defaults.session_timeout_ms = 300;
    let controller = Controller::start(cfg, Arc::new(Recorder::default())).await?;
    let client = controller.client();
    live_broker(&client, 1).await?;
    live_broker(&client, 2).await?;
    let epoch_2 = controller.image().brokers[&NodeId(2)].epoch;
    let created = client
        .submit(ControlRequest::CreateTopics(strom_metadata::control::CreateTopicsRequest {
            topics: vec![strom_metadata::control::CreateTopic {
                name: "t".into(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: vec![(0, vec![NodeId(1), NodeId(2)])],
                configs: vec![],
            }],
            validate_only: false,
            internal: false,
        }))
        .await?;
    anyhow::ensure!(format!("{created:?}").contains("Ok(CreatedTopic"), "{created:?}");
    assert_eq!(controller.image().partition("t", 0).and_then(|p| p.leader), Some(NodeId(1)));

    // Broker 2 keeps heartbeating; broker 1 falls silent.
    let started = Instant::now();
    loop {
        common::heartbeat(&client, 2, epoch_2).await?;
        let image = controller.image();
        if image.brokers[&NodeId(1)].fenced {
            let p = image.partition("t", 0).expect("partition");
            assert_eq!(p.leader, Some(NodeId(2)));
            assert_eq!(p.isr, vec![NodeId(2)]);
            assert_eq!(p.leader_epoch.0, 1);
            assert!(!image.brokers[&NodeId(2)].fenced, "the live broker was fenced too");
            break;
        }
        anyhow::ensure!(started.elapsed() < SETTLE, "broker 1 never fenced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    controller.shutdown().await?;
    Ok(())
}
