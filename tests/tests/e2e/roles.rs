//! Process roles and leadership hints: a controller-only voter with broker-only nodes that
//! follow its metadata stream, and KIP-951 answers that name the current leader.

use std::time::Duration;

use anyhow::{ensure, Context};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, ProduceResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use strom_tests::raw::{self, RawConnection};
use strom_tests::{
    free_ports, kafka, wait_until, with_cluster, ClusterOptions, NodeOptions, StromNode,
};

const FORM_TIMEOUT: Duration = Duration::from_secs(30);
const NOT_LEADER_OR_FOLLOWER: i16 = 6;

/// The broker ids librdkafka sees through `bootstrap`.
fn broker_ids(bootstrap: &str) -> anyhow::Result<Vec<i32>> {
    let client: BaseConsumer = kafka::client_config(bootstrap).create()?;
    let md = client.fetch_metadata(None, Duration::from_secs(5))?;
    let mut ids: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
    ids.sort_unstable();
    Ok(ids)
}

#[test]
fn broker_only_nodes_follow_a_controller_only_voter() {
    let ports = free_ports(1).expect("a free port");
    let control = ports[0];
    let voters = format!("[controller]\nquorum_voters = \"1@{control}\"\n");
    let mut controller = StromNode::spawn(NodeOptions {
        node_id: Some(1),
        config_toml: Some(format!("process_roles = [\"controller\"]\n{voters}")),
        control_addr: Some(control),
        ..NodeOptions::default()
    })
    .expect("start the controller-only node");
    let run = || -> anyhow::Result<()> {
        let brokers = [2, 3]
            .map(|id| {
                StromNode::start(NodeOptions {
                    node_id: Some(id),
                    config_toml: Some(format!("process_roles = [\"broker\"]\n{voters}")),
                    ..NodeOptions::default()
                })
            })
            .into_iter()
            .collect::<anyhow::Result<Vec<StromNode>>>()?;
        let bootstrap = brokers.iter().map(|b| b.bootstrap()).collect::<Vec<_>>().join(",");
        // Both brokers registered through the voter and learned each other from its stream.
        wait_until(FORM_TIMEOUT, "both broker-only nodes in Metadata", || {
            Ok((broker_ids(&bootstrap)? == vec![2, 3]).then_some(()))
        })?;
        kafka::create_topic_replicated(&bootstrap, "roles", 2, 2)?;
        kafka::wait_for_topic(&bootstrap, "roles", 2)?;
        for partition in 0..2 {
            kafka::assert_node_serves(&bootstrap, "roles", partition)?;
        }
        // The voter stores metadata only: no partition log, no Kafka listener.
        let dirs: Vec<String> = std::fs::read_dir(controller.data_dir())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ensure!(
            !dirs.iter().any(|d| d.starts_with("roles-")),
            "the controller-only node holds partition logs: {dirs:?}"
        );
        ensure!(
            std::net::TcpStream::connect(controller.kafka_addr()).is_err(),
            "the controller-only node accepts Kafka connections"
        );
        // Every node of the cluster reports the same cluster id.
        let ids: Vec<String> = std::iter::once(controller.data_dir().to_path_buf())
            .chain(brokers.iter().map(|b| b.data_dir().to_path_buf()))
            .map(|d| std::fs::read_to_string(d.join("meta.properties")))
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .map(|t| t.lines().find(|l| l.starts_with("cluster.id=")).unwrap_or("").to_owned())
            .collect();
        ensure!(ids.windows(2).all(|w| w[0] == w[1]), "cluster ids differ: {ids:?}");
        Ok(())
    };
    let outcome = run();
    if outcome.is_err() {
        eprintln!("controller-only node log:\n{}", controller.stderr_tail(40));
    }
    let _ = controller.sigterm();
    outcome.expect("broker-only nodes follow the controller-only voter");
}

#[test]
fn produce_and_fetch_to_a_follower_name_the_current_leader() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        kafka::create_topic_replicated(&cluster.bootstrap(), "hints", 1, 3)?;
        cluster.wait_topic_everywhere("hints", 1)?;
        let md = cluster.metadata(cluster.ids()[0])?;
        let partition = &md.topic("hints").context("topic in Metadata")?.partitions[&0];
        let leader = partition.leader;
        let follower = cluster.ids().into_iter().find(|&id| id as i32 != leader).expect("3 nodes");
        let leader_port = cluster.kafka_addr(leader as u32).port() as i32;

        // Produce v10 (KIP-951): NOT_LEADER_OR_FOLLOWER with the leader and its endpoint.
        let mut conn = RawConnection::connect(cluster.kafka_addr(follower))?;
        let batch = raw::record_batch(&[b"hint"], 0)?;
        let id = conn.send_produce("hints", 0, batch, 10)?;
        let resp: ProduceResponse = conn.read_response(id, 10)?;
        let p = &resp.responses[0].partition_responses[0];
        ensure!(p.error_code == NOT_LEADER_OR_FOLLOWER, "produce error {}", p.error_code);
        ensure!(p.current_leader.leader_id.0 == leader, "produce hint {:?}", p.current_leader);
        ensure!(p.current_leader.leader_epoch == partition.leader_epoch, "{:?}", p.current_leader);
        ensure!(
            resp.node_endpoints.iter().any(|e| e.node_id.0 == leader && e.port == leader_port),
            "produce node_endpoints {:?}",
            resp.node_endpoints
        );

        // Fetch v16 names topics by id: take it from Metadata.
        let id = conn.send_request(
            ApiKey::Metadata as i16,
            12,
            &MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("hints"))))])),
            12,
        )?;
        let topic_id = conn.read_response::<MetadataResponse>(id, 12)?.topics[0].topic_id;
        // Fetch v16: the same hint per partition, the endpoint in the response.
        let request = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default().with_topic_id(topic_id).with_partitions(
                vec![FetchPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(-1)
                    .with_partition_max_bytes(1 << 20)],
            )]);
        let id = conn.send_request(ApiKey::Fetch as i16, 16, &request, 16)?;
        let resp: FetchResponse = conn.read_response(id, 16)?;
        let d = &resp.responses[0].partitions[0];
        ensure!(d.error_code == NOT_LEADER_OR_FOLLOWER, "fetch error {}", d.error_code);
        ensure!(d.current_leader.leader_id.0 == leader, "fetch hint {:?}", d.current_leader);
        ensure!(
            resp.node_endpoints.iter().any(|e| e.node_id.0 == leader && e.port == leader_port),
            "fetch node_endpoints {:?}",
            resp.node_endpoints
        );
        Ok(())
    });
}
