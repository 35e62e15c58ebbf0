//! Shared fixtures: a listener that records what it hears, quick raft timings, an in-process
//! quorum of voters serving raft and relay over real gRPC, and the requests that give a fresh
//! cluster a live broker and topics.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strom_controller::{Controller, ControllerConfig};
use strom_metadata::control::{
    BrokerHeartbeatRequest, ControlRequest, ControlResponse, CreateTopic, CreateTopicsRequest,
    RegisterBrokerRequest,
};
use strom_metadata::quorum::DirectoryId;
use strom_metadata::records::{metadata_record::Record, Endpoint, MetadataRecord};
use strom_metadata::{
    BrokerEpoch, ControllerClient, MetadataImage, MetadataListener, MetadataOffset, NodeId,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

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

/// The directory id a test gives the data directory at `path`: the same on every start, as
/// the binary's `meta.properties` keeps it.
pub fn directory_id_of(path: &Path) -> DirectoryId {
    let text = path.to_string_lossy();
    let fnv = |seed: u64| text.bytes().fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x1b3));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    bytes[8..].copy_from_slice(&fnv(0x8422_2325_cbf2_9ce4).to_be_bytes());
    DirectoryId(bytes)
}

/// A lone voter with timings short enough for tests.
pub fn single_voter(data_dir: &Path) -> ControllerConfig {
    let mut cfg = ControllerConfig::new(
        1,
        data_dir.to_path_buf(),
        BTreeMap::from([(1, "127.0.0.1:9093".to_string())]),
    );
    cfg.directory_id = directory_id_of(data_dir);
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
            internal: false,
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

/// How long a test waits for the quorum to reach a state before it fails.
pub const SETTLE: Duration = Duration::from_secs(15);

/// One running voter: its controller, what its listener heard, and its control server.
pub struct Voter {
    pub controller: Controller,
    pub recorder: Arc<Recorder>,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

/// A quorum of voters on 127.0.0.1, each with its own data dir; voters may be stopped and
/// started again on the same address and dir.
pub struct Quorum {
    _root: tempfile::TempDir,
    pub dirs: BTreeMap<u64, PathBuf>,
    pub voters: BTreeMap<u64, String>,
    pub running: BTreeMap<u64, Voter>,
    /// Each node's directory id; [`Quorum::wipe`] gives a node a new one.
    pub directory_ids: BTreeMap<u64, DirectoryId>,
    snapshot_after_entries: u64,
    /// Overrides the broker session timeout (tests whose broker heartbeats only once).
    pub session_timeout_ms: Option<u64>,
}

impl Quorum {
    /// Reserves a port per voter; starts nobody.
    pub async fn new(n: u64, snapshot_after_entries: u64) -> anyhow::Result<Quorum> {
        let root = tempfile::tempdir()?;
        let mut voters = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for id in 1..=n {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            voters.insert(id, probe.local_addr()?.to_string());
            dirs.insert(id, root.path().join(format!("node-{id}")));
        }
        let directory_ids = dirs.iter().map(|(&id, dir)| (id, directory_id_of(dir))).collect();
        Ok(Quorum {
            _root: root,
            dirs,
            voters,
            running: BTreeMap::new(),
            directory_ids,
            snapshot_after_entries,
            session_timeout_ms: None,
        })
    }

    pub fn config(&self, id: u64) -> ControllerConfig {
        let mut cfg = ControllerConfig::new(id, self.dirs[&id].clone(), self.voters.clone());
        cfg.directory_id = self.directory_ids[&id];
        cfg.heartbeat_interval_ms = 50;
        cfg.election_timeout_min_ms = 300;
        cfg.election_timeout_max_ms = 600;
        cfg.snapshot_after_entries = self.snapshot_after_entries;
        if let Some(ms) = self.session_timeout_ms {
            cfg.defaults.session_timeout_ms = ms;
        }
        cfg
    }

    pub async fn start(&mut self, id: u64) -> anyhow::Result<()> {
        self.start_with(id, self.config(id)).await
    }

    /// The config of a node that is in no static voter set: it joins the quorum through the
    /// voters `bootstrap` names, as an observer.
    pub fn joining_config(&self, id: u64, bootstrap: &[u64]) -> ControllerConfig {
        let mut cfg = self.config(id);
        cfg.voters = BTreeMap::new();
        cfg.control_addr = self.voters[&id].clone();
        cfg.bootstrap_servers = bootstrap.iter().map(|b| self.voters[b].clone()).collect();
        cfg
    }

    /// Deletes a stopped node's data directory and gives it a new directory id: a replaced
    /// disk.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        anyhow::ensure!(!self.running.contains_key(&id), "wipe of running node {id}");
        std::fs::remove_dir_all(&self.dirs[&id])?;
        let old = self.directory_ids[&id];
        self.directory_ids.insert(id, DirectoryId(old.0.map(|b| b.wrapping_add(1))));
        Ok(())
    }

    pub async fn start_with(&mut self, id: u64, cfg: ControllerConfig) -> anyhow::Result<()> {
        let listener = bind_retrying(&self.voters[&id]).await?;
        let recorder = Arc::new(Recorder::default());
        let controller = Controller::start(cfg, recorder.clone()).await?;
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

    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        let ids: Vec<u64> = self.voters.keys().copied().collect();
        for id in ids {
            self.start(id).await?;
        }
        Ok(())
    }

    /// Stops the voter's server and controller, as a node that exits.
    pub async fn stop(&mut self, id: u64) -> anyhow::Result<()> {
        let voter = self.running.remove(&id).ok_or_else(|| anyhow::anyhow!("{id} not running"))?;
        let _ = voter.stop_server.send(());
        voter.controller.shutdown().await?;
        voter.server.abort();
        let _ = voter.server.await;
        Ok(())
    }

    pub async fn stop_all(&mut self) -> anyhow::Result<()> {
        let ids: Vec<u64> = self.running.keys().copied().collect();
        for id in ids {
            self.stop(id).await?;
        }
        Ok(())
    }

    pub fn voter(&self, id: u64) -> &Voter {
        &self.running[&id]
    }

    pub fn controller(&self, id: u64) -> &Controller {
        &self.running[&id].controller
    }

    /// The leader every running voter agrees on.
    pub async fn agreed_leader(&self) -> anyhow::Result<u64> {
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
}

/// The port was just released by a stopped server (or a probe); binding may race its close.
pub async fn bind_retrying(addr: &str) -> anyhow::Result<TcpListener> {
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
