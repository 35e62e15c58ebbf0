//! Bounded metadata over real gRPC on loopback: a request over the per-operation record cap is
//! refused while the quorum goes on committing; an image of 200,000 partitions reaches a voter
//! that starts late (by snapshot, in chunks) and a broker-only follower (in stream chunks); a
//! storage error inside raft is reported as fatal instead of leaving a zombie controller.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{live_broker, single_voter, Quorum, Recorder, SETTLE};
use futures::FutureExt;
use strom_controller::follower::follow_metadata_as;
use strom_controller::{Controller, METADATA_LOG_DIR};
use strom_metadata::control::{
    ControlRequest, ControlResponse, CreateTopic, CreateTopicsRequest, RECORDS_PER_USER_OP_MAX,
};
use strom_metadata::{ControlError, ControllerClient, MetadataImage, MetadataOffset};
use tokio::sync::watch;

/// Partitions of the large image: 20 topics of 10,000, each topic one request under the cap.
const TOPICS: usize = 20;
const PARTITIONS_PER_TOPIC: i32 = 10_000;

/// How long the large image may take to reach a late voter or a follower (debug build).
const CATCH_UP: Duration = Duration::from_secs(120);

fn create_request(topics: impl IntoIterator<Item = (String, i32)>) -> ControlRequest {
    ControlRequest::CreateTopics(CreateTopicsRequest {
        topics: topics
            .into_iter()
            .map(|(name, partitions)| CreateTopic {
                name,
                num_partitions: partitions,
                replication_factor: 3,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

/// Creates topics. On a loaded test machine a commit may outlast the controller's wait, or
/// leadership may move under it; then the request is asked again, and "already exists" means
/// an earlier attempt committed.
async fn create_ok(
    client: &Arc<dyn ControllerClient>,
    request: ControlRequest,
) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..3 {
        let answer = match client.submit(request.clone()).await {
            Err(ControlError::ControllerUnavailable(why) | ControlError::OutcomeUnknown(why)) => {
                tracing::warn!(%why, "create outcome unknown; asking again");
                last = Some(why);
                continue;
            }
            answer => answer?,
        };
        let ControlResponse::CreateTopics(items) = &answer else { anyhow::bail!("{answer:?}") };
        let done = |i: &strom_metadata::control::ItemResult<_>| {
            matches!(i.result, Ok(_) | Err(ControlError::TopicAlreadyExists(_)))
        };
        anyhow::ensure!(items.iter().all(done), "{answer:?}");
        return Ok(());
    }
    anyhow::bail!("no answer after 3 attempts: {last:?}")
}

fn one_partition(name: &str) -> ControlRequest {
    create_request([(name.to_string(), 1)])
}

/// The image without its offset (voters count entries a follower never hears of).
fn content(image: &MetadataImage) -> MetadataImage {
    MetadataImage { offset: MetadataOffset(0), ..image.clone() }
}

fn partitions(image: &MetadataImage) -> usize {
    image.topics.values().map(|t| t.partitions.len()).sum()
}

fn snapshot_bytes(dir: &std::path::Path) -> anyhow::Result<Vec<u64>> {
    let mut sizes = Vec::new();
    for dirent in std::fs::read_dir(dir.join(METADATA_LOG_DIR))? {
        let dirent = dirent?;
        if dirent.file_name().to_string_lossy().ends_with(".checkpoint") {
            sizes.push(dirent.metadata()?.len());
        }
    }
    Ok(sizes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_partition_image_reaches_a_late_voter_and_a_follower() -> anyhow::Result<()> {
    let mut quorum = Quorum::new(3, 5).await?;
    // Brokers here are registered once and never heartbeat again.
    quorum.session_timeout_ms = Some(600_000);
    quorum.start(1).await?;
    quorum.start(2).await?;
    let leader = quorum.agreed_leader().await?;
    let client = quorum.controller(leader).client();
    for id in 1..=3 {
        live_broker(&client, id).await?;
    }

    // Issue 11's request: 20 topics of 100,000 partitions, each legal alone. Refused whole.
    let huge = create_request((0..20).map(|i| (format!("huge{i}"), 100_000)));
    let refused = client.submit(huge).await;
    let Err(ControlError::PolicyViolation(message)) = &refused else {
        anyhow::bail!("not a policy violation: {refused:?}")
    };
    assert!(message.contains("2000020") && message.contains(&RECORDS_PER_USER_OP_MAX.to_string()));
    assert!(quorum.controller(leader).image().topics.is_empty(), "nothing was written");

    let started = Instant::now();
    for t in 0..TOPICS {
        create_ok(&client, create_request([(format!("big{t}"), PARTITIONS_PER_TOPIC)])).await?;
    }
    let created_ms = started.elapsed().as_millis();
    // The quorum still commits small requests.
    create_ok(&client, one_partition("small")).await?;
    let leader_image = quorum.controller(leader).image();
    assert_eq!(partitions(&leader_image), TOPICS * PARTITIONS_PER_TOPIC as usize + 1);

    // Voter 3 starts after the leader purged its log behind a snapshot: only a snapshot of
    // the whole image brings it up (sent in InstallSnapshot chunks).
    let log_end = leader_image.offset.0;
    quorum
        .controller(leader)
        .raft()
        .wait(Some(SETTLE))
        .metrics(|m| m.purged.is_some_and(|p| p.index > 5), "leader purged")
        .await?;
    let started = Instant::now();
    quorum.start(3).await?;
    let mut late = quorum.running[&3].controller.raft().metrics();
    let caught_up = tokio::time::timeout(
        CATCH_UP,
        late.wait_for(|m| m.last_applied.is_some_and(|a| a.index >= log_end)),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    anyhow::ensure!(caught_up, "voter 3 never caught up: {:?}", *late.borrow());
    let voter_ms = started.elapsed().as_millis();
    assert_eq!(content(&quorum.controller(3).image()), content(&leader_image));
    let snapshots = snapshot_bytes(&quorum.dirs[&3])?;
    assert!(!snapshots.is_empty(), "voter 3 keeps the snapshot it installed");

    // A broker-only node following voter 3 gets the image in stream chunks.
    let started = Instant::now();
    let (image_tx, mut image) = watch::channel(Arc::new(MetadataImage::default()));
    let listener = Arc::new(ImageOnly(image_tx));
    let (leader_tx, _leader) = watch::channel(None);
    let (stop, stop_rx) = watch::channel(false);
    let voter3 = quorum.voters[&3].clone();
    let task = tokio::spawn(follow_metadata_as(9, vec![voter3], listener, leader_tx, stop_rx));
    let want = content(&leader_image);
    let seen = tokio::time::timeout(CATCH_UP, image.wait_for(|i| content(i) == want))
        .await
        .is_ok_and(|r| r.is_ok());
    let follower_ms = started.elapsed().as_millis();
    let _ = stop.send(true);
    tokio::time::timeout(SETTLE, task).await???;
    anyhow::ensure!(seen, "the follower never got the whole image");
    eprintln!(
        "200k partitions: created in {created_ms} ms; late voter caught up in {voter_ms} ms \
         (snapshot files {snapshots:?} bytes); follower in {follower_ms} ms"
    );

    // And the three voters still commit together.
    create_ok(&client, one_partition("after")).await?;
    let names: BTreeSet<String> = quorum.controller(3).image().topics.keys().cloned().collect();
    assert!(names.contains("small"));
    quorum.stop_all().await
}

/// A follower's listener that keeps only the latest image.
struct ImageOnly(watch::Sender<Arc<MetadataImage>>);

impl strom_metadata::MetadataListener for ImageOnly {
    fn on_commit(
        &self,
        _: MetadataOffset,
        _: &[strom_metadata::records::MetadataRecord],
        image: Arc<MetadataImage>,
    ) {
        self.0.send_replace(image);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_error_inside_raft_is_reported_as_fatal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = single_voter(dir.path());
    // A snapshot and a new segment every few entries.
    config.snapshot_after_entries = 3;
    let controller = Controller::start(config, Arc::new(Recorder::default())).await?;
    let client = controller.client();
    live_broker(&client, 1).await?;
    let fatal = controller.fatal();
    // The metadata log directory vanishes under the running node: the open segment still
    // takes appends, but the next segment, snapshot or progress file cannot be created.
    std::fs::remove_dir_all(dir.path().join(METADATA_LOG_DIR))?;
    for i in 0..10 {
        let answer = client.submit(create_request([(format!("lost{i}"), 1)])).await;
        if answer.is_err() {
            break;
        }
    }
    let cause = tokio::time::timeout(SETTLE, fatal).await?;
    assert!(cause.contains("metadata quorum stopped"), "{cause}");
    assert!(cause.to_lowercase().contains("write") || cause.contains("IO"), "{cause}");
    // Shutting down a stopped raft still returns.
    let _ = controller.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_is_not_fatal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller =
        Controller::start(single_voter(dir.path()), Arc::new(Recorder::default())).await?;
    let fatal = controller.fatal();
    controller.shutdown().await?;
    // The raft reported a normal stop: the future stays pending.
    assert!(fatal.now_or_never().is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controlled_shutdown_of_a_large_leader_commits_as_several_entries() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let controller =
        Controller::start(single_voter(dir.path()), Arc::new(Recorder::default())).await?;
    let client = controller.client();
    live_broker(&client, 1).await?;
    live_broker(&client, 2).await?;
    for t in 0..3 {
        let request = ControlRequest::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: format!("t{t}"),
                num_partitions: 10_000,
                replication_factor: 2,
                ..Default::default()
            }],
            ..Default::default()
        });
        create_ok(&client, request).await?;
    }
    let led_by_1 = |image: &MetadataImage| {
        image
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.leader == Some(strom_metadata::NodeId(1)))
            .count()
    };
    let before = controller.image();
    let leading = led_by_1(&before);
    assert!(leading > RECORDS_PER_USER_OP_MAX, "broker 1 leads {leading}");
    // Broker 1 asks to shut down: every leadership it holds moves, one record each. That is
    // no user request to refuse: it commits, as more than one entry.
    let epoch = before.brokers[&strom_metadata::NodeId(1)].epoch;
    let answer = client
        .submit(ControlRequest::BrokerHeartbeat(strom_metadata::control::BrokerHeartbeatRequest {
            broker_id: strom_metadata::NodeId(1),
            broker_epoch: epoch,
            current_metadata_offset: before.offset,
            want_fence: false,
            want_shutdown: true,
        }))
        .await?;
    anyhow::ensure!(matches!(answer, ControlResponse::BrokerHeartbeat(_)), "{answer:?}");
    let after = controller.image();
    assert_eq!(led_by_1(&after), 0);
    assert!(after.offset.0 >= before.offset.0 + 2, "{:?} -> {:?}", before.offset, after.offset);
    controller.shutdown().await?;
    Ok(())
}
