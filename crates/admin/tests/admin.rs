//! AdminService over real gRPC: a lone controller on a tempdir, the service on 127.0.0.1:0,
//! and every RPC driven through the generated client, refusals included. Transactions are
//! answered by a scripted `TxnSource` (the broker's is tested end to end in `tests/`).

#[path = "../../controller/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{live_broker, single_voter};
use strom_admin::{
    mount_admin, AdminServiceClient, AdminServiceImpl, BrokerReadError, ClusterInfo,
    DescribedTransactions, ImagePublisher, QuorumState, TxnSource,
};
use strom_controller::{Controller, RaftClusterInfo};
use strom_metadata::config::{BrokerDefaults, BROKER_DEFAULTS};
use strom_proto::admin as pb;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::Code;

/// The admin service's view of the lone voter's quorum, as the binary plugs it in.
struct Voter(RaftClusterInfo);

impl ClusterInfo for Voter {
    fn cluster_id(&self) -> String {
        self.0.cluster_id()
    }

    fn quorum(&self) -> QuorumState {
        self.0.quorum()
    }
}

struct Fixture {
    controller: Option<Controller>,
    channel: Channel,
    admin: AdminServiceClient<Channel>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A lone voter with broker 1 registered and unfenced, and the admin plane served on a
    /// loopback port. `segment.bytes` has a static broker default, as a node's config gives it.
    async fn start() -> anyhow::Result<Fixture> {
        Fixture::start_with(None).await
    }

    /// [`Fixture::start`], with transactions answered by `txns` when given.
    async fn start_with(txns: Option<Arc<dyn TxnSource>>) -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let (publisher, rx) = ImagePublisher::new(None);
        let mut cfg = single_voter(dir.path());
        // The test's broker heartbeats once; it must not be fenced while the test runs.
        cfg.defaults.session_timeout_ms = 3_600_000;
        let controller = Controller::start(cfg, publisher).await?;
        live_broker(&controller.client(), 1).await?;
        let cluster = Arc::new(Voter(RaftClusterInfo::new("test-cluster-id", controller.raft())));
        let mut admin =
            AdminServiceImpl::new(controller.client(), rx, cluster).with_broker_defaults(
                BrokerDefaults { log_segment_bytes: 8_388_608, ..BROKER_DEFAULTS },
            );
        if let Some(txns) = txns {
            admin = admin.with_transactions(txns);
        }
        let mut routes = RoutesBuilder::default();
        mount_admin(&mut routes, admin).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(
            Server::builder()
                .add_routes(routes.routes())
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
        Ok(Fixture {
            controller: Some(controller),
            admin: AdminServiceClient::new(channel.clone()),
            channel,
            server,
            _dir: dir,
        })
    }

    async fn create(
        &mut self,
        name: &str,
        partitions: Option<i32>,
        replication_factor: Option<i32>,
        configs: &[(&str, &str)],
    ) -> Result<pb::CreateTopicsResponse, tonic::Status> {
        let request = pb::CreateTopicsRequest {
            topics: vec![new_topic(name, partitions, replication_factor, configs)],
            validate_only: false,
        };
        self.admin.create_topics(request).await.map(|r| r.into_inner())
    }

    async fn describe(&mut self, name: &str) -> Result<pb::TopicDescription, tonic::Status> {
        let answer = self
            .admin
            .describe_topics(pb::DescribeTopicsRequest { names: vec![name.into()] })
            .await?
            .into_inner();
        answer.topics.into_iter().next().ok_or_else(|| tonic::Status::internal("empty answer"))
    }

    async fn configs(
        &mut self,
        name: &str,
    ) -> Result<HashMap<String, pb::ConfigEntry>, tonic::Status> {
        let answer = self
            .admin
            .describe_configs(pb::DescribeConfigsRequest { topic: name.into(), keys: vec![] })
            .await?
            .into_inner();
        Ok(answer.entries.into_iter().map(|e| (e.name.clone(), e)).collect())
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(controller) = self.controller.take() {
            controller.shutdown().await?;
        }
        self.server.abort();
        Ok(())
    }
}

fn new_topic(
    name: &str,
    partitions: Option<i32>,
    replication_factor: Option<i32>,
    configs: &[(&str, &str)],
) -> pb::NewTopic {
    pb::NewTopic {
        name: name.into(),
        partitions,
        replication_factor,
        configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// Asserts a refusal's code and that its message mentions `needle`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    match result {
        Ok(answer) => panic!("expected {code:?} mentioning '{needle}', got {answer:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(needle), "'{needle}' not in {status:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_listed_described_and_deleted() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let created = f.create("orders", Some(3), Some(1), &[("retention.ms", "3600000")]).await?;
    let topic = &created.topics[0];
    assert_eq!((topic.name.as_str(), topic.partitions, topic.replication_factor), ("orders", 3, 1));
    assert_eq!(topic.topic_id.len(), 32, "{topic:?}");
    assert!(topic.error.is_none());

    // Unset counts take the cluster defaults (one partition, one replica).
    f.create("defaults", None, None, &[]).await?;

    // validate_only decides but creates nothing.
    let checked = f
        .admin
        .create_topics(pb::CreateTopicsRequest {
            topics: vec![new_topic("dry-run", Some(2), None, &[])],
            validate_only: true,
        })
        .await?
        .into_inner();
    assert_eq!(checked.topics[0].partitions, 2);

    let listed = f.admin.list_topics(pb::ListTopicsRequest {}).await?.into_inner();
    let names: Vec<(&str, i32, i32)> = listed
        .topics
        .iter()
        .map(|t| (t.name.as_str(), t.partitions, t.replication_factor))
        .collect();
    assert_eq!(names, vec![("defaults", 1, 1), ("orders", 3, 1)]);
    assert_eq!(listed.topics[1].topic_id, topic.topic_id);

    let described = f.describe("orders").await?;
    assert_eq!(described.topic_id, topic.topic_id);
    assert_eq!(described.partitions.len(), 3);
    for (i, p) in described.partitions.iter().enumerate() {
        assert_eq!(p.partition, i as i32);
        assert_eq!(p.leader, Some(1));
        assert_eq!(p.leader_epoch, 0);
        assert_eq!(p.replicas, vec![1]);
        assert_eq!(p.isr, vec![1]);
        assert!(p.offline_replicas.is_empty());
    }
    let all = f.admin.describe_topics(pb::DescribeTopicsRequest { names: vec![] }).await?;
    assert_eq!(all.into_inner().topics.len(), 2);

    assert_refused(f.create("orders", Some(1), None, &[]).await, Code::AlreadyExists, "'orders'");
    assert_refused(f.describe("nope").await, Code::NotFound, "topic 'nope' does not exist");
    assert_refused(f.create("bad/name", None, None, &[]).await, Code::InvalidArgument, "bad/name");
    assert_refused(f.create("t", Some(0), None, &[]).await, Code::InvalidArgument, "partitions");
    assert_refused(
        f.create("t", Some(1), Some(2), &[]).await,
        Code::InvalidArgument,
        "replication factor 2",
    );
    assert_refused(
        f.create("t", None, None, &[("retension.ms", "1")]).await,
        Code::InvalidArgument,
        "retension.ms",
    );
    assert_refused(
        f.create("t", None, None, &[("retention.ms", "soon")]).await,
        Code::InvalidArgument,
        "retention.ms",
    );
    assert_refused(
        f.admin.create_topics(pb::CreateTopicsRequest::default()).await,
        Code::InvalidArgument,
        "no topics",
    );

    // A batch in which one topic succeeds answers OK and reports the other's failure.
    let batch = f
        .admin
        .create_topics(pb::CreateTopicsRequest {
            topics: vec![new_topic("fresh", None, None, &[]), new_topic("orders", None, None, &[])],
            validate_only: false,
        })
        .await?
        .into_inner();
    assert!(batch.topics[0].error.is_none());
    let error = batch.topics[1].error.as_ref().expect("orders exists");
    assert_eq!(error.code, Code::AlreadyExists as i32);

    let deleted = f
        .admin
        .delete_topics(pb::DeleteTopicsRequest { names: vec!["orders".into()] })
        .await?
        .into_inner();
    assert_eq!(deleted.topics[0].topic_id, topic.topic_id);
    assert_refused(f.describe("orders").await, Code::NotFound, "'orders'");
    assert_refused(
        f.admin.delete_topics(pb::DeleteTopicsRequest { names: vec!["orders".into()] }).await,
        Code::NotFound,
        "topic 'orders' does not exist",
    );
    f.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_are_described_with_their_source_and_altered() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    f.create("orders", Some(1), None, &[("retention.ms", "3600000")]).await?;

    let configs = f.configs("orders").await?;
    assert_eq!(configs.len(), strom_metadata::config::TOPIC_CONFIGS.len());
    let retention = &configs["retention.ms"];
    assert_eq!(retention.value, "3600000");
    assert_eq!(retention.source, pb::ConfigSource::TopicOverride as i32);
    assert_eq!(retention.default_value, "604800000");
    assert_eq!(retention.r#type, "long");
    let segment = &configs["segment.bytes"];
    assert_eq!(
        (segment.value.as_str(), segment.source),
        ("8388608", pb::ConfigSource::StaticBrokerDefault as i32)
    );
    let cleanup = &configs["cleanup.policy"];
    assert_eq!(
        (cleanup.value.as_str(), cleanup.source),
        ("delete", pb::ConfigSource::Default as i32)
    );

    let some = f
        .admin
        .describe_configs(pb::DescribeConfigsRequest {
            topic: "orders".into(),
            keys: vec!["segment.ms".into(), "cleanup.policy".into()],
        })
        .await?
        .into_inner();
    let names: Vec<&str> = some.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["cleanup.policy", "segment.ms"]);
    assert_refused(
        f.admin
            .describe_configs(pb::DescribeConfigsRequest {
                topic: "orders".into(),
                keys: vec!["segment.msec".into()],
            })
            .await,
        Code::InvalidArgument,
        "segment.msec",
    );
    assert_refused(f.configs("nope").await, Code::NotFound, "topic 'nope' does not exist");

    let set = |key: &str, value: &str| pb::ConfigOp {
        key: key.into(),
        op: pb::ConfigOpType::Set as i32,
        value: Some(value.into()),
    };
    let delete = |key: &str| pb::ConfigOp {
        key: key.into(),
        op: pb::ConfigOpType::Delete as i32,
        value: None,
    };
    let alter =
        |topic: &str, ops: Vec<pb::ConfigOp>, validate_only: bool| pb::AlterConfigsRequest {
            topics: vec![pb::TopicConfigAlteration { topic: topic.into(), ops }],
            validate_only,
        };

    // validate_only changes nothing.
    f.admin.alter_configs(alter("orders", vec![set("cleanup.policy", "compact")], true)).await?;
    assert_eq!(f.configs("orders").await?["cleanup.policy"].value, "delete");

    let answer = f
        .admin
        .alter_configs(alter(
            "orders",
            vec![set("cleanup.policy", "compact"), delete("retention.ms")],
            false,
        ))
        .await?
        .into_inner();
    assert!(answer.topics[0].error.is_none());
    let configs = f.configs("orders").await?;
    assert_eq!(configs["cleanup.policy"].value, "compact");
    assert_eq!(configs["cleanup.policy"].source, pb::ConfigSource::TopicOverride as i32);
    assert_eq!(configs["retention.ms"].value, "604800000");
    assert_eq!(configs["retention.ms"].source, pb::ConfigSource::Default as i32);

    assert_refused(
        f.admin.alter_configs(alter("orders", vec![set("min.insync.replicas", "0")], false)).await,
        Code::InvalidArgument,
        "min.insync.replicas",
    );
    assert_refused(
        f.admin.alter_configs(alter("orders", vec![set("no.such.key", "1")], false)).await,
        Code::InvalidArgument,
        "no.such.key",
    );
    assert_refused(
        f.admin
            .alter_configs(alter(
                "orders",
                vec![pb::ConfigOp { key: "retention.ms".into(), op: 1, value: None }],
                false,
            ))
            .await,
        Code::InvalidArgument,
        "retention.ms",
    );
    assert_refused(
        f.admin.alter_configs(alter("nope", vec![set("retention.ms", "1")], false)).await,
        Code::NotFound,
        "topic 'nope' does not exist",
    );
    f.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_added_by_count_or_to_a_total() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    f.create("orders", Some(1), None, &[]).await?;
    let grow = |topic: &str, total_count: i32, add_count: i32| pb::CreatePartitionsRequest {
        topics: vec![pb::NewPartitions { topic: topic.into(), total_count, add_count }],
        validate_only: false,
    };

    let added = f.admin.create_partitions(grow("orders", 0, 2)).await?.into_inner();
    assert_eq!(added.topics[0].total_count, 3);
    let to_total = f.admin.create_partitions(grow("orders", 5, 0)).await?.into_inner();
    assert_eq!(to_total.topics[0].total_count, 5);
    let described = f.describe("orders").await?;
    assert_eq!(described.partitions.len(), 5);
    assert!(described.partitions.iter().all(|p| p.leader == Some(1) && p.replicas == vec![1]));

    assert_refused(
        f.admin.create_partitions(grow("orders", 4, 0)).await,
        Code::InvalidArgument,
        "5 partitions",
    );
    assert_refused(
        f.admin.create_partitions(grow("orders", 6, 1)).await,
        Code::InvalidArgument,
        "exactly one",
    );
    assert_refused(
        f.admin.create_partitions(grow("nope", 0, 1)).await,
        Code::NotFound,
        "topic 'nope' does not exist",
    );
    assert_refused(
        f.admin.create_partitions(grow("nope", 3, 0)).await,
        Code::NotFound,
        "topic 'nope' does not exist",
    );
    f.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_is_described_with_quorum_and_brokers() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    f.create("orders", Some(1), None, &[]).await?;
    let cluster = f.admin.describe_cluster(pb::DescribeClusterRequest {}).await?.into_inner();
    assert_eq!(cluster.cluster_id, "test-cluster-id");
    assert_eq!(cluster.answering_node_id, 1);
    assert_eq!(cluster.active_controller_id, Some(1));
    assert_eq!(cluster.voters.len(), 1);
    assert_eq!((cluster.voters[0].id, cluster.voters[0].address.as_str()), (1, "127.0.0.1:9093"));
    assert!(cluster.raft_term >= 1, "{cluster:?}");
    assert!(cluster.commit_index >= cluster.metadata_offset, "{cluster:?}");
    assert!(cluster.metadata_offset > 0, "{cluster:?}");
    assert_eq!(cluster.brokers.len(), 1);
    let broker = &cluster.brokers[0];
    assert_eq!(broker.id, 1);
    assert!(broker.epoch > 0);
    assert!(!broker.fenced && !broker.in_controlled_shutdown, "{broker:?}");
    assert_eq!(broker.rack, None);
    assert_eq!(
        broker.endpoints,
        vec![pb::Endpoint { name: "PLAINTEXT".into(), host: "127.0.0.1".into(), port: 9092 }]
    );
    f.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_election_is_not_needed_when_the_preferred_replica_leads() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    f.create("orders", Some(2), None, &[]).await?;
    let elect = |topics: Vec<pb::TopicPartitions>| pb::ElectLeadersRequest {
        election_type: pb::ElectionType::Preferred as i32,
        topics,
    };

    // Every partition: those that need nothing are left out of the answer.
    let all = f.admin.elect_leaders(elect(vec![])).await?.into_inner();
    assert!(all.partitions.is_empty(), "{all:?}");

    let named = f
        .admin
        .elect_leaders(elect(vec![pb::TopicPartitions {
            topic: "orders".into(),
            partitions: vec![],
        }]))
        .await?
        .into_inner();
    let partitions: Vec<(i32, Option<i32>, Option<i32>)> = named
        .partitions
        .iter()
        .map(|p| (p.partition, p.leader, p.error.as_ref().map(|e| e.code)))
        .collect();
    let not_needed = Some(Code::AlreadyExists as i32);
    assert_eq!(partitions, vec![(0, Some(1), not_needed), (1, Some(1), not_needed)]);

    let unknown_partition = f
        .admin
        .elect_leaders(elect(vec![pb::TopicPartitions {
            topic: "orders".into(),
            partitions: vec![7],
        }]))
        .await?
        .into_inner();
    assert_eq!(
        unknown_partition.partitions[0].error.as_ref().map(|e| e.code),
        Some(Code::NotFound as i32)
    );
    assert_refused(
        f.admin
            .elect_leaders(elect(vec![pb::TopicPartitions {
                topic: "nope".into(),
                partitions: vec![],
            }]))
            .await,
        Code::NotFound,
        "topic 'nope' does not exist",
    );
    f.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_unavailable_without_a_controller_while_reads_go_on() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    f.create("orders", Some(1), None, &[]).await?;
    if let Some(controller) = f.controller.take() {
        controller.shutdown().await?;
    }
    assert_refused(f.create("later", None, None, &[]).await, Code::Unavailable, "controller");
    // The image this node has applied still answers reads.
    assert_eq!(f.describe("orders").await?.partitions.len(), 1);
    f.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served_beside_the_admin_service() -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let f = Fixture::start().await?;
    let mut health = HealthClient::new(f.channel.clone());
    for service in ["", "strom.admin.v1.AdminService"] {
        let answer =
            health.check(HealthCheckRequest { service: service.into() }).await?.into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "service '{service}'");
    }

    let mut reflection = ServerReflectionClient::new(f.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers =
        reflection.server_reflection_info(futures::stream::iter([request])).await?.into_inner();
    let answer = answers.message().await?.ok_or_else(|| anyhow::anyhow!("no reflection answer"))?;
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        anyhow::bail!("unexpected reflection answer: {answer:?}");
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["strom.admin.v1.AdminService", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == wanted), "{wanted} not in {services:?}");
    }
    f.stop().await
}

/// Transactions as a broker would answer: `tx-known` exists, `tx-gone` does not, `tx-far`'s
/// coordinator cannot be asked; the list filters it was given are kept.
#[derive(Default)]
struct ScriptedTxns {
    filters: std::sync::Mutex<Vec<pb::ListTransactionsRequest>>,
}

impl TxnSource for ScriptedTxns {
    fn list_transactions(
        &self,
        filters: pb::ListTransactionsRequest,
    ) -> strom_metadata::BoxFuture<Result<pb::ListTransactionsResponse, BrokerReadError>> {
        self.filters.lock().expect("not poisoned").push(filters);
        let listing = pb::TransactionListing {
            transactional_id: "tx-known".into(),
            producer_id: 7,
            state: "Ongoing".into(),
            coordinator_id: 1,
        };
        Box::pin(async move {
            Ok(pb::ListTransactionsResponse { transactions: vec![listing], unreachable: vec![] })
        })
    }

    fn describe_transactions(
        &self,
        transactional_ids: Vec<String>,
    ) -> strom_metadata::BoxFuture<DescribedTransactions> {
        let answers = transactional_ids
            .into_iter()
            .map(|id| match id.as_str() {
                "tx-known" => Ok(pb::TransactionDescription {
                    transactional_id: id,
                    state: "Ongoing".into(),
                    producer_id: 7,
                    coordinator_id: 1,
                    ..Default::default()
                }),
                "tx-gone" => Err(BrokerReadError::NotFound(format!(
                    "transactional id '{id}' does not exist"
                ))),
                _ => Err(BrokerReadError::Broker("connect to 127.0.0.1:1: refused".into())),
            })
            .collect();
        Box::pin(async move { Ok(answers) })
    }

    fn describe_producers(
        &self,
        topic: String,
        partition: i32,
    ) -> strom_metadata::BoxFuture<Result<pb::DescribeProducersResponse, BrokerReadError>> {
        Box::pin(async move {
            Ok(pb::DescribeProducersResponse { topic, partition, leader_id: 1, producers: vec![] })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_checked_here_and_answered_by_the_brokers() -> anyhow::Result<()> {
    let txns = Arc::new(ScriptedTxns::default());
    let mut f = Fixture::start_with(Some(txns.clone())).await?;
    f.create("orders", Some(2), Some(1), &[]).await?;

    let request =
        pb::ListTransactionsRequest { states: vec!["ongoing".into()], producer_ids: vec![7] };
    let listed = f.admin.list_transactions(request).await?.into_inner();
    assert_eq!(listed.transactions.len(), 1);
    let asked = txns.filters.lock().expect("not poisoned").clone();
    assert_eq!(
        asked,
        [pb::ListTransactionsRequest { states: vec!["Ongoing".into()], producer_ids: vec![7] }],
        "the brokers get Kafka's spelling"
    );
    let bad = pb::ListTransactionsRequest { states: vec!["Running".into()], producer_ids: vec![] };
    assert_refused(f.admin.list_transactions(bad).await, Code::InvalidArgument, "'Running'");

    let ids = ["tx-known", "tx-gone", "tx-far"].map(String::from).to_vec();
    let described = f
        .admin
        .describe_transactions(pb::DescribeTransactionsRequest { transactional_ids: ids })
        .await?
        .into_inner();
    let outcome: Vec<(&str, Option<i32>)> = described
        .transactions
        .iter()
        .map(|t| (t.transactional_id.as_str(), t.error.as_ref().map(|e| e.code)))
        .collect();
    assert_eq!(
        outcome,
        [
            ("tx-known", None),
            ("tx-gone", Some(Code::NotFound as i32)),
            ("tx-far", Some(Code::Unavailable as i32)),
        ],
        "in request order"
    );
    let none = pb::DescribeTransactionsRequest { transactional_ids: vec![] };
    assert_refused(f.admin.describe_transactions(none).await, Code::InvalidArgument, "no ");

    let producers =
        |topic: &str, partition| pb::DescribeProducersRequest { topic: topic.into(), partition };
    let answer = f.admin.describe_producers(producers("orders", 1)).await?.into_inner();
    assert_eq!((answer.topic.as_str(), answer.partition), ("orders", 1));
    assert_refused(
        f.admin.describe_producers(producers("orders", 2)).await,
        Code::NotFound,
        "topic 'orders' has no partition 2",
    );
    assert_refused(
        f.admin.describe_producers(producers("nope", 0)).await,
        Code::NotFound,
        "topic 'nope' does not exist",
    );
    f.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_unavailable_on_a_node_without_a_broker() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let listed = f.admin.list_transactions(pb::ListTransactionsRequest::default()).await;
    assert_refused(listed, Code::Unavailable, "--bootstrap-control");
    f.create("orders", Some(1), Some(1), &[]).await?;
    let request = pb::DescribeProducersRequest { topic: "orders".into(), partition: 0 };
    assert_refused(f.admin.describe_producers(request).await, Code::Unavailable, "no broker");
    f.stop().await
}
