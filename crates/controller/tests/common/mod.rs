//! Shared fixtures: a listener that records what it hears, quick raft timings, and the
//! requests that give a fresh cluster a live broker and topics.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use strom_controller::ControllerConfig;
use strom_metadata::control::{
    BrokerHeartbeatRequest, ControlRequest, ControlResponse, CreateTopic, CreateTopicsRequest,
    RegisterBrokerRequest,
};
use strom_metadata::records::{metadata_record::Record, Endpoint, MetadataRecord};
use strom_metadata::{
    BrokerEpoch, ControllerClient, MetadataImage, MetadataListener, MetadataOffset, NodeId,
};

/// Records every commit the state machine reports.
#[derive(Default)]
pub struct Recorder {
    pub commits: Mutex<Vec<(MetadataOffset, Vec<MetadataRecord>)>>,
}

impl MetadataListener for Recorder {
    fn on_commit(
        &self,
        offset: MetadataOffset,
        records: &[MetadataRecord],
        _image: Arc<MetadataImage>,
    ) {
        if let Ok(mut commits) = self.commits.lock() {
            commits.push((offset, records.to_vec()));
        }
    }
}

impl Recorder {
    /// Names of the topics whose `TopicRecord` the listener has seen.
    pub fn topics_seen(&self) -> Vec<String> {
        let commits = self.commits.lock().expect("recorder lock");
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

/// A lone voter with timings short enough for tests.
pub fn single_voter(data_dir: &Path) -> ControllerConfig {
    let mut cfg = ControllerConfig::new(
        1,
        data_dir.to_path_buf(),
        BTreeMap::from([(1, "127.0.0.1:9093".to_string())]),
    );
    cfg.heartbeat_interval_ms = 20;
    cfg.election_timeout_min_ms = 100;
    cfg.election_timeout_max_ms = 200;
    cfg
}

/// Registers broker `id` and heartbeats it until it is unfenced, so placement has a target.
pub async fn live_broker(client: &Arc<dyn ControllerClient>, id: i32) -> anyhow::Result<()> {
    let registered = client
        .submit(ControlRequest::RegisterBroker(RegisterBrokerRequest {
            broker_id: NodeId(id),
            incarnation_id: vec![id as u8; 16],
            endpoints: vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092,
            }],
            rack: None,
        }))
        .await?;
    let ControlResponse::RegisterBroker(epoch) = registered else {
        anyhow::bail!("unexpected answer to RegisterBroker: {registered:?}");
    };
    let beat = heartbeat(client, id, epoch).await?;
    let ControlResponse::BrokerHeartbeat(reply) = beat else {
        anyhow::bail!("unexpected answer to BrokerHeartbeat: {beat:?}");
    };
    anyhow::ensure!(!reply.is_fenced, "broker {id} is still fenced: {reply:?}");
    Ok(())
}

pub async fn heartbeat(
    client: &Arc<dyn ControllerClient>,
    id: i32,
    epoch: BrokerEpoch,
) -> anyhow::Result<ControlResponse> {
    Ok(client
        .submit(ControlRequest::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: NodeId(id),
            broker_epoch: epoch,
            // Caught up: a combined node's broker follows this very log.
            current_metadata_offset: MetadataOffset(epoch.0 as u64),
            want_fence: false,
            want_shutdown: false,
        }))
        .await?)
}

/// Creates one topic and checks that the controller says it did.
pub async fn create_topic(
    client: &Arc<dyn ControllerClient>,
    name: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let answer = client
        .submit(ControlRequest::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: name.into(),
                num_partitions: partitions,
                replication_factor: 1,
                ..Default::default()
            }],
            validate_only: false,
        }))
        .await?;
    let ControlResponse::CreateTopics(results) = &answer else {
        anyhow::bail!("unexpected answer to CreateTopics: {answer:?}");
    };
    anyhow::ensure!(
        results.len() == 1 && results[0].result.is_ok(),
        "topic {name} not created: {answer:?}"
    );
    Ok(())
}

/// Segment files (`*.log`) in the metadata log directory, sorted.
pub fn segment_files(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    files_with_suffix(data_dir, ".log")
}

pub fn files_with_suffix(data_dir: &Path, suffix: &str) -> anyhow::Result<Vec<String>> {
    let dir = data_dir.join(strom_controller::METADATA_LOG_DIR);
    let mut names = Vec::new();
    for dirent in std::fs::read_dir(dir)? {
        let name = dirent?.file_name().to_string_lossy().into_owned();
        if name.ends_with(suffix) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
