//! Multi-voter quorums over real gRPC on loopback: leader election, forwarding from followers,
//! failover, minority refusal, and a restarted voter catching up through a snapshot. Each
//! voter serves the controller's `Raft` and `Controller` services with tonic, as the binary
//! does on its control port.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{create_topic, live_broker, Recorder};
use strom_controller::{Controller, ControllerConfig};
use strom_metadata::control::{ControlRequest, ControlResponse};
use strom_metadata::{ControlError, MetadataImage, NodeId};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

/// How long a test waits for the quorum to reach a state before it fails.
const SETTLE: Duration = Duration::from_secs(15);

struct Voter {
    controller: Controller,
    recorder: Arc<Recorder>,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

/// A quorum of voters on 127.0.0.1, each with its own data dir; voters may be stopped and
/// started again on the same address and dir.
struct Quorum {
    _root: tempfile::TempDir,
    dirs: BTreeMap<u64, PathBuf>,
    voters: BTreeMap<u64, String>,
    running: BTreeMap<u64, Voter>,
    snapshot_after_entries: u64,
}

impl Quorum {
    /// Reserves a port per voter; starts nobody.
    async fn new(n: u64, snapshot_after_entries: u64) -> anyhow::Result<Quorum> {
        let root = tempfile::tempdir()?;
        let mut voters = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for id in 1..=n {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            voters.insert(id, probe.local_addr()?.to_string());
            dirs.insert(id, root.path().join(format!("node-{id}")));
        }
        Ok(Quorum { _root: root, dirs, voters, running: BTreeMap::new(), snapshot_after_entries })
    }

    fn config(&self, id: u64) -> ControllerConfig {
        let mut cfg = ControllerConfig::new(id, self.dirs[&id].clone(), self.voters.clone());
        cfg.heartbeat_interval_ms = 50;
        cfg.election_timeout_min_ms = 300;
        cfg.election_timeout_max_ms = 600;
        cfg.snapshot_after_entries = self.snapshot_after_entries;
        cfg
    }

    async fn start(&mut self, id: u64) -> anyhow::Result<()> {
        let listener = bind_retrying(&self.voters[&id]).await?;
        let recorder = Arc::new(Recorder::default());
        let controller = Controller::start(self.config(id), recorder.clone()).await?;
        let (stop_server, stopped) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(controller.raft_service())
            .add_service(controller.controller_service());
        let server = tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
            {
                tracing::warn!(error = %e, "test control server failed");
            }
        });
        self.running.insert(id, Voter { controller, recorder, stop_server, server });
        Ok(())
    }

    async fn start_all(&mut self) -> anyhow::Result<()> {
        let ids: Vec<u64> = self.voters.keys().copied().collect();
        for id in ids {
            self.start(id).await?;
        }
        Ok(())
    }

    /// Stops the voter's server and controller, as a node that exits.
    async fn stop(&mut self, id: u64) -> anyhow::Result<()> {
        let voter = self.running.remove(&id).ok_or_else(|| anyhow::anyhow!("{id} not running"))?;
        let _ = voter.stop_server.send(());
        voter.controller.shutdown().await?;
        voter.server.abort();
        let _ = voter.server.await;
        Ok(())
    }

    async fn stop_all(&mut self) -> anyhow::Result<()> {
        let ids: Vec<u64> = self.running.keys().copied().collect();
        for id in ids {
            self.stop(id).await?;
        }
        Ok(())
    }

    fn voter(&self, id: u64) -> &Voter {
        &self.running[&id]
    }

    /// The leader every running voter agrees on.
    async fn agreed_leader(&self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let seen: Vec<Option<u64>> =
                self.running.values().map(|v| v.controller.leader_id()).collect();
            if let Some(Some(leader)) = seen.first() {
                if self.running.contains_key(leader) && seen.iter().all(|s| s == &Some(*leader)) {
                    return Ok(*leader);
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "no agreed leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

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

/// The port was just released by a stopped server (or a probe); binding may race its close.
async fn bind_retrying(addr: &str) -> anyhow::Result<TcpListener> {
    let mut attempts = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if attempts < 50 => {
                attempts += 1;
                tracing::debug!(error = %e, addr, "port busy; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
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
        }))
        .await?;
    let ControlResponse::CreateTopics(items) = again else { anyhow::bail!("{again:?}") };
    assert_eq!(items[0].result, Err(ControlError::TopicAlreadyExists("orders".into())));
    q.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_elected_and_commits_after_the_leader_stops() -> anyhow::Result<()> {
    let mut q = Quorum::new(3, 1_000).await?;
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
