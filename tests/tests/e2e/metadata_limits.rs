//! Bounded metadata (issue 11): a CreateTopics of two million partitions is refused with
//! POLICY_VIOLATION (Kafka) or INVALID_ARGUMENT (gRPC) while the node goes on serving; an image
//! of 200,000 partitions reaches a voter that starts late and a broker-only node that starts
//! late; a storage failure inside the metadata quorum ends the process with status 70 and a
//! clear message instead of leaving a controller that answers "unavailable" for ever.
//!
//! The 200,000 partitions are assigned, explicitly, to a broker that registered and then shut
//! down: the image is as large as it would be on a real cluster, but no node opens 200,000
//! partition logs (that would measure the log layer, not metadata).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use strom_proto::admin as pb;
use strom_proto::admin::admin_service_client::AdminServiceClient;
use strom_tests::{free_ports, kafka, wait_until, NodeOptions, StromNode};
use tonic::transport::Endpoint;

/// The request of issue 11: 20 topics of 100,000 partitions (each topic is legal alone).
const HUGE_TOPICS: usize = 20;
const HUGE_PARTITIONS: i32 = 100_000;

/// The large image: 20 topics of 10,000 partitions, one CreateTopics each (under the cap).
const TOPICS: usize = 20;
const PARTITIONS_PER_TOPIC: usize = 10_000;

/// Bound for the large image to reach a late voter or a late broker-only node (debug build).
const CATCH_UP: Duration = Duration::from_secs(180);
const GRPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Exit status of a node whose metadata quorum stopped (EX_SOFTWARE, see `node.rs`).
const EXIT_METADATA_FATAL: i32 = 70;

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(60)))
        .operation_timeout(Some(Duration::from_secs(60)))
}

/// One AdminService call to the node at `addr`.
fn grpc<T, F, Fut>(addr: SocketAddr, call: F) -> anyhow::Result<Result<T, tonic::Status>>
where
    F: FnOnce(AdminServiceClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(GRPC_TIMEOUT)
        .timeout(GRPC_TIMEOUT);
    Ok(runtime.block_on(async move {
        let attempt = async {
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("connect {addr}: {e}")))?;
            call(AdminServiceClient::new(channel).max_decoding_message_size(64 << 20))
                .await
                .map(tonic::Response::into_inner)
        };
        tokio::time::timeout(GRPC_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer")))
    }))
}

/// Partitions per topic in the node's own image (gRPC ListTopics answers from it).
fn listed_partitions(addr: SocketAddr) -> anyhow::Result<Vec<(String, i32)>> {
    let listed = grpc(addr, |mut c| async move { c.list_topics(pb::ListTopicsRequest {}).await })?
        .map_err(|s| anyhow::anyhow!("ListTopics: {s}"))?;
    Ok(listed.topics.into_iter().map(|t| (t.name, t.partitions)).collect())
}

#[test]
fn two_million_partitions_in_one_request_are_refused_and_the_node_serves_on() {
    let node = StromNode::start(NodeOptions::default()).expect("start a node");
    let bootstrap = node.bootstrap();
    let run = || -> anyhow::Result<()> {
        let admin = kafka::admin(&bootstrap)?;
        let names: Vec<String> = (0..HUGE_TOPICS).map(|i| format!("huge-{i}")).collect();
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, HUGE_PARTITIONS, TopicReplication::Fixed(1)))
            .collect();
        let started = Instant::now();
        let results = kafka::block_on(admin.create_topics(&topics, &admin_options()))?
            .context("CreateTopics request")?;
        ensure!(results.len() == HUGE_TOPICS, "{results:?}");
        for result in &results {
            ensure!(
                matches!(result, Err((_, RDKafkaErrorCode::PolicyViolation))),
                "expected POLICY_VIOLATION for every topic: {results:?}"
            );
        }
        eprintln!("2,000,000 partitions refused in {} ms", started.elapsed().as_millis());

        // The admin API says why, as INVALID_ARGUMENT.
        let request = pb::CreateTopicsRequest {
            topics: names
                .iter()
                .map(|n| pb::NewTopic {
                    name: n.clone(),
                    partitions: Some(HUGE_PARTITIONS),
                    replication_factor: Some(1),
                    configs: Default::default(),
                })
                .collect(),
            validate_only: false,
        };
        let refused =
            grpc(node.control_addr(), |mut c| async move { c.create_topics(request).await })?;
        let status = refused.err().context("the admin API created two million partitions")?;
        ensure!(status.code() == tonic::Code::InvalidArgument, "{status:?}");
        ensure!(
            status.message().contains("2000020 metadata records")
                && status.message().contains("at most 12000"),
            "{status:?}"
        );

        // The node still serves and its quorum still commits.
        let listed = listed_partitions(node.control_addr())?;
        ensure!(!listed.iter().any(|(n, _)| n.starts_with("huge-")), "created: {listed:?}");
        kafka::create_topic(&bootstrap, "after", 2, &[])?;
        for partition in 0..2 {
            kafka::assert_node_serves(&bootstrap, "after", partition)?;
        }
        Ok(())
    };
    run().expect("a huge CreateTopics is refused and the node serves on");
}

#[test]
fn a_storage_failure_in_the_metadata_quorum_ends_the_process_with_status_70() {
    let mut node = StromNode::start(NodeOptions {
        // A snapshot and a new log segment every few entries.
        config_toml: Some("[controller]\nsnapshot_after_entries = 3\n".into()),
        ..NodeOptions::default()
    })
    .expect("start a node");
    let bootstrap = node.bootstrap();
    let run = |node: &mut StromNode| -> anyhow::Result<()> {
        kafka::create_topic(&bootstrap, "before", 1, &[])?;
        // The metadata log directory disappears under the running node: the next segment,
        // snapshot or progress file cannot be written.
        std::fs::remove_dir_all(node.data_dir().join("__cluster_metadata-0"))?;
        let admin = kafka::admin(&bootstrap)?;
        let mut status = None;
        for i in 0..20 {
            let name = format!("lost-{i}");
            let topic = NewTopic::new(&name, 1, TopicReplication::Fixed(1));
            // Answers do not matter: the commits that fail are the point.
            let options = AdminOptions::new()
                .request_timeout(Some(Duration::from_secs(5)))
                .operation_timeout(Some(Duration::from_secs(5)));
            let _ = kafka::block_on(admin.create_topics([&topic], &options));
            status = node.try_exit_status()?;
            if status.is_some() {
                break;
            }
        }
        let status = match status {
            Some(status) => status,
            None => node.wait_exit(Duration::from_secs(30))?,
        };
        ensure!(status.code() == Some(EXIT_METADATA_FATAL), "exit status {status}");
        let log = node.stderr();
        ensure!(
            log.contains("strom: fatal: the metadata quorum stopped on this node"),
            "no fatal line in the log:\n{}",
            node.stderr_tail(30)
        );
        Ok(())
    };
    run(&mut node).expect("the node exits on a storage failure of its metadata quorum");
}

#[test]
fn a_200k_partition_image_reaches_a_late_voter_and_a_late_broker_only_node() {
    let ports = free_ports(3).expect("free ports");
    let voters = (1..=3).map(|i| format!("{i}@{}", ports[i - 1])).collect::<Vec<_>>().join(",");
    // A snapshot every few entries, and the log purged behind it: a voter that starts late
    // can only be brought up by a snapshot.
    let quorum =
        format!("[controller]\nquorum_voters = \"{voters}\"\nsnapshot_after_entries = 5\n");
    let voter = |id: u32| {
        StromNode::spawn(NodeOptions {
            node_id: Some(id),
            config_toml: Some(format!("process_roles = [\"controller\"]\n{quorum}")),
            control_addr: Some(ports[id as usize - 1]),
            ..NodeOptions::default()
        })
    };
    let broker = |id: u32| {
        StromNode::start(NodeOptions {
            node_id: Some(id),
            config_toml: Some(format!("process_roles = [\"broker\"]\n{quorum}")),
            ..NodeOptions::default()
        })
    };
    let mut nodes: Vec<StromNode> = Vec::new();
    let mut run = || -> anyhow::Result<()> {
        // Voters 1 and 2 are a quorum of three; voter 3 starts once the image is large.
        nodes.push(voter(1)?);
        nodes.push(voter(2)?);
        // Broker 10 registers, then shuts down: it holds every replica of the large image.
        let mut holder = broker(10)?;
        holder.sigterm()?;
        nodes.push(broker(11)?);
        let bootstrap = nodes[2].bootstrap();
        let admin = kafka::admin(&bootstrap)?;
        let assignment: Vec<&[i32]> = vec![&[10]; PARTITIONS_PER_TOPIC];
        let started = Instant::now();
        for t in 0..TOPICS {
            let name = format!("big-{t}");
            let topic = NewTopic::new(
                &name,
                PARTITIONS_PER_TOPIC as i32,
                TopicReplication::Variable(&assignment),
            );
            let results = kafka::block_on(admin.create_topics([&topic], &admin_options()))?
                .context("CreateTopics request")?;
            if let Some(Err(e)) = results.first() {
                bail!("CreateTopics {name}: {e:?}");
            }
        }
        let created_ms = started.elapsed().as_millis();
        let want: Vec<(String, i32)> = {
            let mut v: Vec<(String, i32)> =
                (0..TOPICS).map(|t| (format!("big-{t}"), PARTITIONS_PER_TOPIC as i32)).collect();
            v.sort();
            v
        };
        // Errors keep `wait_until` polling and show in its message: what the node had last.
        let complete = |addr: SocketAddr| -> anyhow::Result<Option<()>> {
            // Brokers may create __consumer_offsets meanwhile (a client's FindCoordinator).
            let listed: Vec<(String, i32)> = listed_partitions(addr)?
                .into_iter()
                .filter(|(name, _)| name.starts_with("big-"))
                .collect();
            if listed == want {
                return Ok(Some(()));
            }
            let partitions: i64 = listed.iter().map(|(_, p)| i64::from(*p)).sum();
            bail!("{} topics, {partitions} partitions: {:?}", listed.len(), listed.first())
        };
        wait_until(CATCH_UP, "voter 1 has the whole image", || complete(ports[0]))?;

        // Voter 3 starts late: voters keep only a few thousand entries behind a snapshot, so
        // it is brought up by an InstallSnapshot of the whole image, in chunks.
        let started = Instant::now();
        nodes.push(voter(3)?);
        wait_until(CATCH_UP, "voter 3 has the whole image", || complete(ports[2]))?;
        let voter_ms = started.elapsed().as_millis();

        // A broker-only node that starts late gets the image in WatchMetadata chunks.
        let started = Instant::now();
        let late = broker(12)?;
        wait_until(CATCH_UP, "broker 12 has the whole image", || complete(late.control_addr()))?;
        let broker_ms = started.elapsed().as_millis();
        // Kafka Metadata from it lists every partition.
        for t in [0, TOPICS - 1] {
            let partitions = kafka::topic_partitions(&late.bootstrap(), &format!("big-{t}"))?;
            ensure!(partitions.len() == PARTITIONS_PER_TOPIC, "{} partitions", partitions.len());
        }
        let snapshots: Vec<u64> =
            std::fs::read_dir(nodes[3].data_dir().join("__cluster_metadata-0"))?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".checkpoint"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .collect();
        ensure!(!snapshots.is_empty(), "voter 3 caught up without a snapshot");
        eprintln!(
            "200,000 partitions: created in {created_ms} ms; voter 3 caught up in {voter_ms} ms \
             (snapshot files {snapshots:?} bytes); broker 12 in {broker_ms} ms"
        );
        // The quorum of three still commits. On a loaded machine a commit may outlast the
        // request (REQUEST_TIMED_OUT, outcome unknown): ask again, as clients do; "already
        // exists" then means it committed.
        wait_until(CATCH_UP, "the quorum commits a new topic", || {
            match kafka::create_topic(&bootstrap, "after", 1, &[]) {
                Ok(()) => Ok(Some(())),
                Err(e) if format!("{e:#}").contains("TopicAlreadyExists") => Ok(Some(())),
                Err(e) => Err(e),
            }
        })?;
        nodes.push(late);
        Ok(())
    };
    let outcome = run();
    if outcome.is_err() {
        for node in &nodes {
            eprintln!("node {} log:\n{}", node.node_id(), node.stderr_tail(30));
        }
    }
    for node in &mut nodes {
        let _ = node.sigterm();
    }
    outcome.expect("the large image replicates to a late voter and a late broker-only node");
}
