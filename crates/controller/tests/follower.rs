//! Broker-only nodes over real gRPC on loopback: a metadata follower streams the log from the
//! controller voters (`WatchMetadata`) and a `RelayClient` submits to them, through
//! a fresh start, a late start from a snapshot, and the loss of the voter being followed.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::{create_topic, live_broker, Quorum, SETTLE};
use strom_controller::follower::follow_metadata_as;
use strom_controller::ControllerError;
use strom_controller::RelayClient;
use strom_metadata::control::{
    ControlRequest, ControlResponse, CreateTopic, CreateTopicsRequest, DeleteTopicsRequest,
};
use strom_metadata::records::{metadata_record::Record, MetadataRecord};
use strom_metadata::{ControllerClient, MetadataImage, MetadataListener, MetadataOffset};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Voters for these tests: the broker heartbeats once, so its session must outlast the test.
async fn cluster(n: u64, snapshot_after_entries: u64) -> anyhow::Result<Quorum> {
    let mut quorum = Quorum::new(n, snapshot_after_entries).await?;
    quorum.session_timeout_ms = Some(600_000);
    quorum.start_all().await?;
    Ok(quorum)
}

impl Quorum {
    fn remote(&self, follower: &Follower) -> anyhow::Result<Arc<dyn ControllerClient>> {
        let client = RelayClient::new(self.voters.clone())?.with_leader(follower.leader.clone());
        Ok(Arc::new(client))
    }
}

/// What the follower's listener heard, as a broker would.
struct Heard {
    /// (offset, records) of every call, in order.
    commits: Mutex<Vec<(u64, Vec<MetadataRecord>)>>,
    image: watch::Sender<Arc<MetadataImage>>,
}

impl MetadataListener for Heard {
    fn on_commit(
        &self,
        offset: MetadataOffset,
        records: &[MetadataRecord],
        image: Arc<MetadataImage>,
    ) {
        if let Ok(mut commits) = self.commits.lock() {
            commits.push((offset.0, records.to_vec()));
        }
        self.image.send_replace(image);
    }
}

impl Heard {
    fn offsets(&self) -> Vec<u64> {
        self.commits.lock().map(|c| c.iter().map(|(o, _)| *o).collect()).unwrap_or_default()
    }

    fn topics_seen(&self) -> BTreeSet<String> {
        let commits = self.commits.lock().map(|c| c.clone()).unwrap_or_default();
        commits
            .iter()
            .flat_map(|(_, records)| records.iter())
            .filter_map(|r| match &r.record {
                Some(Record::Topic(t)) => Some(t.name.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A broker-only node's metadata follower, running as a task.
struct Follower {
    heard: Arc<Heard>,
    image: watch::Receiver<Arc<MetadataImage>>,
    leader: watch::Receiver<Option<u64>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ControllerError>>,
}

impl Follower {
    fn spawn(voters: Vec<String>) -> Follower {
        let (image_tx, image) = watch::channel(Arc::new(MetadataImage::default()));
        let heard = Arc::new(Heard { commits: Mutex::new(Vec::new()), image: image_tx });
        let (leader_tx, leader) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(follow_metadata_as(7, voters, heard.clone(), leader_tx, stop_rx));
        Follower { heard, image, leader, stop, task }
    }

    async fn image(
        &self,
        ok: impl Fn(&MetadataImage) -> bool,
    ) -> anyhow::Result<Arc<MetadataImage>> {
        let mut image = self.image.clone();
        let waited = tokio::time::timeout(SETTLE, image.wait_for(|i| ok(i))).await;
        match waited {
            Ok(Ok(image)) => Ok(image.clone()),
            _ => anyhow::bail!(
                "the follower never saw the expected image: {:?}",
                self.image.borrow()
            ),
        }
    }

    async fn leader_is(&self, id: u64) -> anyhow::Result<()> {
        let mut leader = self.leader.clone();
        let waited = tokio::time::timeout(SETTLE, leader.wait_for(|l| *l == Some(id))).await;
        anyhow::ensure!(
            matches!(waited, Ok(Ok(_))),
            "follower's leader is {:?}, not {id}",
            *self.leader.borrow()
        );
        Ok(())
    }

    /// Offsets only ever rose: nothing was applied twice or out of order.
    fn assert_offsets_rise(&self) {
        let offsets = self.heard.offsets();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets went back: {offsets:?}");
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        tokio::time::timeout(SETTLE, self.task).await???;
        Ok(())
    }
}

/// The image without its offset: voters also count entries that carry no records (a new
/// leader's blank entry), which a follower never hears of.
fn content(image: &MetadataImage) -> MetadataImage {
    MetadataImage { offset: MetadataOffset(0), ..image.clone() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_a_topic_created_through_the_remote_client() -> anyhow::Result<()> {
    let mut cluster = cluster(1, 1_000).await?;
    let follower = Follower::spawn(cluster.voters.values().cloned().collect());
    let remote = cluster.remote(&follower)?;

    live_broker(&remote, 1).await?;
    create_topic(&remote, "orders", 3).await?;

    let image = follower.image(|i| i.topic("orders").is_some()).await?;
    assert_eq!(image.topic("orders").map(|t| t.partitions.len()), Some(3));
    assert!(image.partition("orders", 0).is_some_and(|p| p.leader.is_some()));
    follower.leader_is(1).await?;
    let voter = cluster.controller(1).image();
    follower.image(|i| content(i) == content(&voter)).await?;
    follower.assert_offsets_rise();

    // A refusal comes back through the remote client as the controller's own error.
    let again = remote
        .submit(ControlRequest::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: "orders".into(),
                num_partitions: 1,
                replication_factor: 1,
                ..Default::default()
            }],
            validate_only: false,
            internal: false,
        }))
        .await?;
    let ControlResponse::CreateTopics(results) = again else {
        anyhow::bail!("unexpected answer: {again:?}");
    };
    assert!(
        matches!(results[0].result, Err(strom_metadata::ControlError::TopicAlreadyExists(_))),
        "{results:?}"
    );

    follower.stop().await?;
    cluster.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_follower_starts_from_the_full_image_then_follows_deltas() -> anyhow::Result<()> {
    let mut cluster = cluster(1, 5).await?;
    let client = cluster.controller(1).client();
    // Twenty changes: registration, unfence, eighteen topics.
    live_broker(&client, 1).await?;
    for i in 0..18 {
        create_topic(&client, &format!("t{i}"), 1).await?;
    }
    cluster
        .controller(1)
        .raft()
        .wait(Some(SETTLE))
        .metrics(|m| m.purged.is_some(), "log purged behind a snapshot")
        .await?;
    // Restarted, the voter's own image starts from its snapshot, not from its log.
    cluster.stop(1).await?;
    cluster.start(1).await?;

    let follower = Follower::spawn(cluster.voters.values().cloned().collect());
    let voter = cluster.controller(1).image();
    let image = follower.image(|i| i.topics.len() == 18).await?;
    assert_eq!(content(&image), content(&voter));
    {
        let commits = follower.heard.commits.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        // All of it in one go: the first thing the follower heard was the whole image.
        assert_eq!(commits.len(), 1, "{:?}", commits.iter().map(|c| c.0).collect::<Vec<_>>());
        assert_eq!(commits[0].1, voter.to_records());
    }

    // What comes next arrives as one delta: the entry's records only.
    let remote = cluster.remote(&follower)?;
    create_topic(&remote, "late", 2).await?;
    let image = follower.image(|i| i.topic("late").is_some()).await?;
    assert_eq!(content(&image), content(&cluster.controller(1).image()));
    {
        let commits = follower.heard.commits.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        assert_eq!(commits.len(), 2);
        let topics = commits[1].1.iter().filter(|r| matches!(r.record, Some(Record::Topic(_))));
        assert_eq!(topics.count(), 1, "a delta, not a snapshot: {:?}", commits[1].1);
    }
    follower.assert_offsets_rise();
    follower.stop().await?;
    cluster.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_survives_the_loss_of_the_voter_it_follows() -> anyhow::Result<()> {
    let mut cluster = cluster(3, 1_000).await?;
    let leader = cluster.agreed_leader().await?;
    // It follows the leader first: losing it costs the stream and the active controller.
    let mut addrs = vec![cluster.voters[&leader].clone()];
    addrs.extend(cluster.voters.iter().filter(|(id, _)| **id != leader).map(|(_, a)| a.clone()));
    let follower = Follower::spawn(addrs);
    let remote = cluster.remote(&follower)?;

    live_broker(&remote, 1).await?;
    for i in 0..5 {
        create_topic(&remote, &format!("before-{i}"), 2).await?;
    }
    follower.image(|i| i.topics.len() == 5).await?;
    follower.leader_is(leader).await?;
    let offset_before = follower.image.borrow().offset;

    cluster.stop(leader).await?;
    for i in 0..5 {
        create_topic(&remote, &format!("after-{i}"), 2).await?;
    }
    let new_leader = cluster.agreed_leader().await?;
    assert_ne!(new_leader, leader);
    let final_image = cluster.controller(new_leader).image();
    assert_eq!(final_image.topics.len(), 10);
    let image = follower.image(|i| content(i) == content(&final_image)).await?;
    assert!(image.offset > offset_before);
    follower.leader_is(new_leader).await?;
    follower.assert_offsets_rise();
    // Nothing missed: every topic reached the listener, each exactly once.
    let seen = follower.heard.topics_seen();
    assert_eq!(seen, final_image.topics.keys().cloned().collect::<BTreeSet<_>>());

    follower.stop().await?;
    cluster.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_a_voter_that_catches_up_by_snapshot_gets_everything() -> anyhow::Result<()> {
    let mut cluster = cluster(3, 5).await?;
    let leader = cluster.agreed_leader().await?;
    let lagging = *cluster.voters.keys().find(|&&id| id != leader).expect("three voters");
    // Only the lagging voter is followed: the follower must wait for it to come back.
    let follower = Follower::spawn(vec![cluster.voters[&lagging].clone()]);
    let remote = cluster.remote(&follower)?;
    live_broker(&remote, 1).await?;
    create_topic(&remote, "early", 1).await?;
    follower.image(|i| i.topic("early").is_some()).await?;
    let stopped_at = cluster.controller(lagging).image().offset.0;

    cluster.stop(lagging).await?;
    for i in 0..30 {
        create_topic(&remote, &format!("t{i}"), 1).await?;
    }
    // A deletion the lagging voter only learns through the snapshot: the follower must get
    // that snapshot whole, since replaying its records on the old image would keep the topic.
    let deleted = remote
        .submit(ControlRequest::DeleteTopics(DeleteTopicsRequest {
            names: vec!["early".into()],
            ids: Vec::new(),
        }))
        .await?;
    anyhow::ensure!(matches!(&deleted, ControlResponse::DeleteTopics(r) if r[0].result.is_ok()));
    cluster
        .controller(leader)
        .raft()
        .wait(Some(SETTLE))
        .metrics(|m| m.purged.is_some_and(|p| p.index > stopped_at + 5), "leader purged")
        .await?;
    cluster.start(lagging).await?;

    let leader_image = cluster.controller(leader).image();
    assert!(leader_image.topic("early").is_none());
    follower.image(|i| content(i) == content(&leader_image)).await?;
    follower.assert_offsets_rise();
    follower.stop().await?;
    cluster.stop_all().await
}
