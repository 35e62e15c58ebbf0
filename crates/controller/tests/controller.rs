//! A lone controller on a real data dir: decisions commit, survive restart, snapshots purge the
//! log, and a torn log tail does not stop the node.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::{create_topic, live_broker, segment_files, single_voter, Recorder};
use openraft::storage::{RaftLogStorage, StorageHelper};
use strom_controller::log_store::{LogStore, LogStoreOptions};
use strom_controller::state_machine::StateMachine;
use strom_controller::{Controller, METADATA_LOG_DIR};
use strom_metadata::control::{ControlRequest, CreateTopicsRequest};
use strom_metadata::ControlError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_topic_survives_restart_and_is_replayed_to_the_listener() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = Arc::new(Recorder::default());
    let controller = Controller::start(single_voter(dir.path()), first.clone()).await?;
    let client = controller.client();
    live_broker(&client, 1).await?;
    create_topic(&client, "orders", 3).await?;
    let before = controller.image();
    assert_eq!(before.topic("orders").map(|t| t.partitions.len()), Some(3));
    assert_eq!(first.topics_seen(), vec!["orders".to_string()]);
    controller.shutdown().await?;

    let second = Arc::new(Recorder::default());
    let controller = Controller::start(single_voter(dir.path()), second.clone()).await?;
    let after = controller.image();
    assert_eq!(after.topics, before.topics);
    assert_eq!(after.brokers, before.brokers);
    assert_eq!(second.topics_seen(), vec!["orders".to_string()], "committed log replayed");
    // The replayed commits arrive in log order, each at its own offset.
    let offsets: Vec<u64> = second.commits.lock().expect("lock").iter().map(|(o, _)| o.0).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets out of order: {offsets:?}");

    // The restarted node leads again and keeps deciding against the replayed image.
    let again = controller
        .client()
        .submit(ControlRequest::CreateTopics(CreateTopicsRequest {
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
    let text = format!("{again:?}");
    assert!(text.contains("TopicAlreadyExists"), "{text}");
    controller.shutdown().await?;
    Ok(())
}

/// The persisted committed index alone brings the image back: openraft's start-up re-applies
/// the committed log before any election could commit something new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_log_is_reapplied_at_startup_without_an_election() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller =
        Controller::start(single_voter(dir.path()), Arc::new(Recorder::default())).await?;
    live_broker(&controller.client(), 1).await?;
    create_topic(&controller.client(), "orders", 1).await?;
    let applied = controller.image().offset;
    controller.shutdown().await?;

    let log_dir = dir.path().join(METADATA_LOG_DIR);
    let mut log = LogStore::open(&log_dir, LogStoreOptions::default()).await?;
    let committed = log.read_committed().await?;
    assert_eq!(committed.map(|c| c.index), Some(applied.0), "committed index not persisted");
    let recorder = Arc::new(Recorder::default());
    let (mut sm, image) = StateMachine::open(&log_dir, recorder.clone()).await?;
    StorageHelper::new(&mut log, &mut sm).get_initial_state().await?;
    assert_eq!(recorder.topics_seen(), vec!["orders".to_string()]);
    assert_eq!(image.borrow().offset, applied);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_old_segments_and_restart_from_the_snapshot() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = single_voter(dir.path());
    cfg.snapshot_after_entries = 5;
    let controller = Controller::start(cfg.clone(), Arc::new(Recorder::default())).await?;
    let client = controller.client();
    live_broker(&client, 1).await?;
    for i in 0..18 {
        create_topic(&client, &format!("t{i}"), 1).await?;
    }
    let last = controller.image().offset.0;
    // Snapshot and purge run in the background after the commits; wait for the purge to pass
    // the first segments.
    controller
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.as_ref().is_some_and(|p| p.index + 10 >= last), "log purged")
        .await?;
    let before = controller.image();
    controller.shutdown().await?;

    let segments = segment_files(dir.path())?;
    assert!(
        !segments.contains(&"00000000000000000000.log".to_string()),
        "first segment still there: {segments:?}"
    );
    assert!(segments.len() <= 3, "too many segments left: {segments:?}");
    let snapshots = common::files_with_suffix(dir.path(), ".checkpoint")?;
    assert_eq!(snapshots.len(), 1, "old snapshots not removed: {snapshots:?}");

    let recorder = Arc::new(Recorder::default());
    let controller = Controller::start(cfg, recorder.clone()).await?;
    let after = controller.image();
    assert_eq!(after.topics, before.topics);
    assert_eq!(after.brokers, before.brokers);
    assert_eq!(after.topics.len(), 18);
    // The listener is told the snapshot's state first, then the log after it.
    let seen = recorder.topics_seen();
    assert_eq!(seen.len(), 18, "listener saw {seen:?}");
    create_topic(&controller.client(), "after-restart", 1).await?;
    controller.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_of_the_last_segment_is_cut_and_the_node_starts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller =
        Controller::start(single_voter(dir.path()), Arc::new(Recorder::default())).await?;
    let client = controller.client();
    live_broker(&client, 1).await?;
    create_topic(&client, "orders", 2).await?;
    let before = controller.image();
    controller.shutdown().await?;

    let segments = segment_files(dir.path())?;
    let last = dir.path().join(METADATA_LOG_DIR).join(segments.last().expect("a segment"));
    let good_len = std::fs::metadata(&last)?.len();
    // A frame header promising more bytes than follow, as a crash mid-append leaves it.
    let mut file = OpenOptions::new().append(true).open(&last)?;
    file.write_all(&[40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3])?;
    file.sync_all()?;
    drop(file);

    let controller =
        Controller::start(single_voter(dir.path()), Arc::new(Recorder::default())).await?;
    assert_eq!(controller.image().topics, before.topics);
    create_topic(&controller.client(), "after-tear", 1).await?;
    controller.shutdown().await?;
    // The cut restored the good prefix; the restart then appended whole frames after it.
    let len = std::fs::metadata(&last)?.len();
    assert!(len > good_len, "segment did not grow past the cut: {len} <= {good_len}");
    let controller =
        Controller::start(single_voter(dir.path()), Arc::new(Recorder::default())).await?;
    assert!(controller.image().topic("after-tear").is_some());
    controller.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_after_shutdown_is_refused_as_unavailable() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let controller =
        Controller::start(single_voter(dir.path()), Arc::new(Recorder::default())).await?;
    let client = controller.client();
    controller.shutdown().await?;
    let answer = client.submit(ControlRequest::CreateTopics(CreateTopicsRequest::default())).await;
    assert!(matches!(answer, Err(ControlError::ControllerUnavailable(_))), "{answer:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_voters_does_not_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = single_voter(dir.path());
    cfg.node_id = 7;
    let started = Controller::start(cfg, Arc::new(Recorder::default())).await;
    assert!(matches!(started, Err(strom_controller::ControllerError::ConfigNotAVoter { .. })));
    Ok(())
}
