//! `AdminService` itself: topics, configs, partitions, the cluster's shape, leader election,
//! consumer groups, transactions and producer state. Reads are answered from this node's metadata image; writes are decided
//! by the active controller through [`ControllerClient::submit`], which answers after the
//! records commit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strom_metadata::config::{effective_topic_config, BrokerDefaults, ConfigSource, TOPIC_CONFIGS};
use strom_metadata::control::{
    AlterConfigsRequest, ConfigAlteration, ControlRequest, ControlResponse,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, NewPartitions,
    PartitionReassignment, ReassignPartitionsRequest,
};
use strom_metadata::quorum::{AddVoterRequest, RemoveVoterRequest};
use strom_metadata::records::ConfigResourceType;
use strom_metadata::{ControlError, ControllerClient, MetadataImage, NodeId, PartitionImage};
use strom_proto::admin as pb;
use strom_proto::admin::admin_service_server::{AdminService, AdminServiceServer};
use tokio::sync::watch;
use tonic::service::RoutesBuilder;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::convert::{
    check_count, check_partition, config_op, describe_topic, directory_id_from_pb, election_error,
    fail_if_all_failed, item_answers, item_error, new_topic, quorum_to_pb, read_item_error,
    read_status, replication_factor, status_of, txn_filters, unexpected,
};
use crate::source::{BrokerReadError, ClusterInfo, GroupSource, LogSource, TxnSource};

/// Items (topics, names, config ops) one admin request may carry: bounds the records a single
/// call makes the controller decide and the size of its answer.
pub const ITEMS_PER_REQUEST_MAX: usize = 1_000;

/// How long a write waits for the controller's answer before the call is failed with an
/// unknown outcome (DEADLINE_EXCEEDED): the write may still commit, which a retry then reports
/// (e.g. ALREADY_EXISTS).
pub const SUBMIT_TIMEOUT_MS_MAX: u64 = 30_000;

/// The AdminService implementation; mount it with [`admin_service`] or [`mount_admin`].
pub struct AdminServiceImpl {
    client: Arc<dyn ControllerClient>,
    image: watch::Receiver<Arc<MetadataImage>>,
    cluster: Arc<dyn ClusterInfo>,
    /// Static broker defaults by topic config key (`retention.ms` = the node's `retention_ms`).
    broker_defaults: BrokerDefaults,
    /// Consumer groups, on a node that runs a broker.
    groups: Option<Arc<dyn GroupSource>>,
    /// Transactions and producer state, on a node that runs a broker.
    txns: Option<Arc<dyn TxnSource>>,
    /// Partition logs (records, log directories), on a node that runs a broker.
    logs: Option<Arc<dyn LogSource>>,
}

impl AdminServiceImpl {
    pub fn new(
        client: Arc<dyn ControllerClient>,
        image: watch::Receiver<Arc<MetadataImage>>,
        cluster: Arc<dyn ClusterInfo>,
    ) -> Self {
        AdminServiceImpl {
            client,
            image,
            cluster,
            broker_defaults: BrokerDefaults::default(),
            groups: None,
            txns: None,
            logs: None,
        }
    }

    /// Serves ListGroups and DescribeGroups through this node's broker.
    pub fn with_groups(mut self, groups: Arc<dyn GroupSource>) -> Self {
        self.groups = Some(groups);
        self
    }

    fn groups(&self) -> Result<&Arc<dyn GroupSource>, Status> {
        self.groups.as_ref().ok_or_else(|| read_status(&BrokerReadError::NoBroker))
    }

    /// Serves ListTransactions, DescribeTransactions and DescribeProducers through this node's
    /// broker.
    pub fn with_transactions(mut self, txns: Arc<dyn TxnSource>) -> Self {
        self.txns = Some(txns);
        self
    }

    fn txns(&self) -> Result<&Arc<dyn TxnSource>, Status> {
        self.txns.as_ref().ok_or_else(|| read_status(&BrokerReadError::NoBroker))
    }

    /// Serves DeleteRecords and DescribeLogDirs through this node's broker.
    pub fn with_logs(mut self, logs: Arc<dyn LogSource>) -> Self {
        self.logs = Some(logs);
        self
    }

    fn logs(&self) -> Result<&Arc<dyn LogSource>, Status> {
        self.logs.as_ref().ok_or_else(|| read_status(&BrokerReadError::NoBroker))
    }

    /// The node's static settings, which topic config keys a topic does not override fall
    /// back to (Kafka's STATIC_BROKER_CONFIG source, where they differ from the default).
    pub fn with_broker_defaults(mut self, defaults: BrokerDefaults) -> Self {
        self.broker_defaults = defaults;
        self
    }

    fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    async fn submit(&self, request: ControlRequest) -> Result<ControlResponse, Status> {
        let wait = Duration::from_millis(SUBMIT_TIMEOUT_MS_MAX);
        let answer =
            tokio::time::timeout(wait, self.client.submit(request)).await.unwrap_or_else(|_| {
                Err(ControlError::OutcomeUnknown(format!(
                    "the active controller did not answer within {SUBMIT_TIMEOUT_MS_MAX} ms"
                )))
            });
        answer.map_err(|e| status_of(&e))
    }
}

/// The service ready to add to a tonic server.
pub fn admin_service(
    client: Arc<dyn ControllerClient>,
    image: watch::Receiver<Arc<MetadataImage>>,
    cluster: Arc<dyn ClusterInfo>,
) -> AdminServiceServer<AdminServiceImpl> {
    AdminServiceServer::new(AdminServiceImpl::new(client, image, cluster))
}

/// gRPC health (`grpc.health.v1.Health`, with AdminService and the server as a whole marked
/// SERVING) and reflection (v1 and v1alpha, over every strom proto file and the health
/// service). Keep the reporter to mark services NOT_SERVING on shutdown.
pub async fn health_and_reflection(
    routes: &mut RoutesBuilder,
) -> Result<HealthReporter, tonic_reflection::server::Error> {
    let reporter = HealthReporter::new();
    reporter.set_serving::<AdminServiceServer<AdminServiceImpl>>().await;
    routes.add_service(HealthServer::new(HealthService::from_health_reporter(reporter.clone())));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(strom_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    routes.add_service(reflection().build_v1()?);
    routes.add_service(reflection().build_v1alpha()?);
    Ok(reporter)
}

/// AdminService, health and reflection on one set of routes: what every node's control port
/// serves besides raft. `Server::builder().add_routes(routes.routes())` then serves them.
pub async fn mount_admin(
    routes: &mut RoutesBuilder,
    admin: AdminServiceImpl,
) -> Result<HealthReporter, tonic_reflection::server::Error> {
    routes.add_service(AdminServiceServer::new(admin));
    health_and_reflection(routes).await
}

#[tonic::async_trait]
impl AdminService for AdminServiceImpl {
    async fn create_topics(
        &self,
        request: Request<pb::CreateTopicsRequest>,
    ) -> Result<Response<pb::CreateTopicsResponse>, Status> {
        let request = request.into_inner();
        check_count("topics", request.topics.len())?;
        let topics = request.topics.into_iter().map(new_topic).collect::<Result<Vec<_>, _>>()?;
        let answer = self
            .submit(ControlRequest::CreateTopics(CreateTopicsRequest {
                topics,
                validate_only: request.validate_only,
                internal: false,
            }))
            .await?;
        let ControlResponse::CreateTopics(results) = answer else {
            return Err(unexpected(&answer));
        };
        let topics = item_answers(results, |name, result| match result {
            Ok(created) => pb::CreatedTopic {
                name,
                topic_id: created.topic_id.to_string(),
                partitions: created.num_partitions,
                replication_factor: i32::from(created.replication_factor),
                error: None,
            },
            Err(error) => pb::CreatedTopic { name, error: Some(error), ..Default::default() },
        })?;
        Ok(Response::new(pb::CreateTopicsResponse { topics }))
    }

    async fn delete_topics(
        &self,
        request: Request<pb::DeleteTopicsRequest>,
    ) -> Result<Response<pb::DeleteTopicsResponse>, Status> {
        let request = request.into_inner();
        check_count("topic names", request.names.len())?;
        let answer = self
            .submit(ControlRequest::DeleteTopics(DeleteTopicsRequest {
                names: request.names,
                ids: Vec::new(),
            }))
            .await?;
        let ControlResponse::DeleteTopics(results) = answer else {
            return Err(unexpected(&answer));
        };
        let topics = item_answers(results, |name, result| pb::DeletedTopic {
            name,
            topic_id: result.as_ref().map(ToString::to_string).unwrap_or_default(),
            error: result.err(),
        })?;
        Ok(Response::new(pb::DeleteTopicsResponse { topics }))
    }

    async fn list_topics(
        &self,
        _request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let image = self.image();
        let topics = image
            .topics
            .values()
            .map(|t| pb::TopicListing {
                name: t.name.clone(),
                topic_id: t.id.to_string(),
                partitions: t.partitions.len() as i32,
                replication_factor: replication_factor(t),
                internal: strom_metadata::config::is_internal_topic(&t.name),
            })
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topics(
        &self,
        request: Request<pb::DescribeTopicsRequest>,
    ) -> Result<Response<pb::DescribeTopicsResponse>, Status> {
        let request = request.into_inner();
        let image = self.image();
        let topics = if request.names.is_empty() {
            image.topics.values().map(|t| describe_topic(&image, t)).collect()
        } else {
            check_count("topic names", request.names.len())?;
            request
                .names
                .iter()
                .map(|name| {
                    image.topic(name).map(|t| describe_topic(&image, t)).ok_or_else(|| {
                        status_of(&ControlError::UnknownTopicOrPartition(name.clone()))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(Response::new(pb::DescribeTopicsResponse { topics }))
    }

    async fn describe_configs(
        &self,
        request: Request<pb::DescribeConfigsRequest>,
    ) -> Result<Response<pb::DescribeConfigsResponse>, Status> {
        let request = request.into_inner();
        if request.keys.len() > ITEMS_PER_REQUEST_MAX {
            return Err(Status::invalid_argument(format!(
                "at most {ITEMS_PER_REQUEST_MAX} keys per request"
            )));
        }
        let image = self.image();
        if image.topic(&request.topic).is_none() {
            return Err(status_of(&ControlError::UnknownTopicOrPartition(request.topic)));
        }
        if let Some(unknown) =
            request.keys.iter().find(|k| !TOPIC_CONFIGS.iter().any(|d| d.name == k.as_str()))
        {
            return Err(Status::invalid_argument(format!("unknown topic config '{unknown}'")));
        }
        let overrides = image.topic_configs(&request.topic);
        let entries = effective_topic_config(overrides, &self.broker_defaults)
            .into_iter()
            .filter(|e| request.keys.is_empty() || request.keys.iter().any(|k| k == e.def.name))
            .map(|e| {
                let source = |s: ConfigSource| match s {
                    ConfigSource::TopicOverride => pb::ConfigSource::TopicOverride,
                    ConfigSource::StaticBroker => pb::ConfigSource::StaticBrokerDefault,
                    ConfigSource::Default => pb::ConfigSource::Default,
                    // No topic config has a dynamic broker synonym.
                    ConfigSource::DynamicBroker | ConfigSource::DynamicDefaultBroker => {
                        pb::ConfigSource::Unspecified
                    }
                };
                (
                    e.def.name,
                    pb::ConfigEntry {
                        name: e.def.name.to_string(),
                        source: source(e.source) as i32,
                        value: e.value,
                        default_value: e.default_value,
                        r#type: e.def.kind.name().to_string(),
                        doc: e.def.doc.to_string(),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();
        Ok(Response::new(pb::DescribeConfigsResponse { topic: request.topic, entries }))
    }

    async fn alter_configs(
        &self,
        request: Request<pb::AlterConfigsRequest>,
    ) -> Result<Response<pb::AlterConfigsResponse>, Status> {
        let request = request.into_inner();
        check_count("topics", request.topics.len())?;
        let mut resources = Vec::with_capacity(request.topics.len());
        for t in request.topics {
            if t.ops.len() > ITEMS_PER_REQUEST_MAX {
                return Err(Status::invalid_argument(format!(
                    "topic '{}': at most {ITEMS_PER_REQUEST_MAX} config ops",
                    t.topic
                )));
            }
            let ops = t
                .ops
                .into_iter()
                .map(|op| config_op(&t.topic, op))
                .collect::<Result<Vec<_>, _>>()?;
            resources.push(ConfigAlteration {
                resource_type: ConfigResourceType::ConfigResourceTopic,
                resource_name: t.topic,
                ops,
            });
        }
        let answer = self
            .submit(ControlRequest::AlterConfigs(AlterConfigsRequest {
                resources,
                incremental: true,
                validate_only: request.validate_only,
            }))
            .await?;
        let ControlResponse::AlterConfigs(results) = answer else {
            return Err(unexpected(&answer));
        };
        fail_if_all_failed(results.iter().map(|r| r.result.as_ref().err()))?;
        let topics = results
            .into_iter()
            .map(|r| pb::AlteredConfigs {
                topic: r.resource_name,
                error: r.result.err().map(|e| item_error(&e)),
            })
            .collect();
        Ok(Response::new(pb::AlterConfigsResponse { topics }))
    }

    async fn create_partitions(
        &self,
        request: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::CreatePartitionsResponse>, Status> {
        let request = request.into_inner();
        check_count("topics", request.topics.len())?;
        let image = self.image();
        let mut topics = Vec::with_capacity(request.topics.len());
        for t in request.topics {
            let count = match (t.total_count, t.add_count) {
                (total, 0) if total > 0 => total,
                (0, add) if add > 0 => {
                    let current = image
                        .topic(&t.topic)
                        .ok_or_else(|| {
                            status_of(&ControlError::UnknownTopicOrPartition(t.topic.clone()))
                        })?
                        .partitions
                        .len();
                    i32::try_from(current).ok().and_then(|c| c.checked_add(add)).ok_or_else(
                        || {
                            Status::invalid_argument(format!(
                                "topic '{}': add_count {add} is too large",
                                t.topic
                            ))
                        },
                    )?
                }
                (total, add) => {
                    return Err(Status::invalid_argument(format!(
                        "topic '{}': give exactly one positive total_count or add_count, got \
                         total_count={total} add_count={add}",
                        t.topic
                    )))
                }
            };
            topics.push(NewPartitions { topic: t.topic, count, assignments: Vec::new() });
        }
        let counts: BTreeMap<String, i32> =
            topics.iter().map(|t| (t.topic.clone(), t.count)).collect();
        let answer = self
            .submit(ControlRequest::CreatePartitions(CreatePartitionsRequest {
                topics,
                validate_only: request.validate_only,
            }))
            .await?;
        let ControlResponse::CreatePartitions(results) = answer else {
            return Err(unexpected(&answer));
        };
        let topics = item_answers(results, |topic, result| pb::CreatedPartitions {
            total_count: match result {
                Ok(()) => counts.get(&topic).copied().unwrap_or_default(),
                Err(_) => image.topic(&topic).map_or(0, |t| t.partitions.len() as i32),
            },
            error: result.err(),
            topic,
        })?;
        Ok(Response::new(pb::CreatePartitionsResponse { topics }))
    }

    async fn describe_cluster(
        &self,
        _request: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::DescribeClusterResponse>, Status> {
        let image = self.image();
        let quorum = self.cluster.quorum();
        let brokers = image
            .brokers
            .values()
            .map(|b| pb::Broker {
                id: b.id.0,
                epoch: b.epoch.0,
                endpoints: b
                    .endpoints
                    .iter()
                    .map(|e| pb::Endpoint {
                        name: e.name.clone(),
                        host: e.host.clone(),
                        port: e.port,
                    })
                    .collect(),
                rack: b.rack.clone(),
                fenced: b.fenced,
                in_controlled_shutdown: b.in_controlled_shutdown,
            })
            .collect();
        Ok(Response::new(pb::DescribeClusterResponse {
            cluster_id: self.cluster.cluster_id(),
            voters: quorum
                .voters
                .into_iter()
                .map(|(id, address)| pb::Voter { id, address })
                .collect(),
            active_controller_id: quorum.active_controller,
            raft_term: quorum.term,
            commit_index: quorum.commit_index,
            metadata_offset: image.offset.0,
            brokers,
            answering_node_id: quorum.node_id,
        }))
    }

    async fn elect_leaders(
        &self,
        request: Request<pb::ElectLeadersRequest>,
    ) -> Result<Response<pb::ElectLeadersResponse>, Status> {
        let request = request.into_inner();
        let preferred = match pb::ElectionType::try_from(request.election_type) {
            Ok(pb::ElectionType::Unspecified | pb::ElectionType::Preferred) => true,
            Ok(pb::ElectionType::Unclean) => false,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown election_type {}",
                    request.election_type
                )))
            }
        };
        let topics = if request.topics.is_empty() {
            None
        } else {
            check_count("topics", request.topics.len())?;
            let image = self.image();
            let mut wanted = Vec::with_capacity(request.topics.len());
            for t in request.topics {
                let topic = image.topic(&t.topic).ok_or_else(|| {
                    status_of(&ControlError::UnknownTopicOrPartition(t.topic.clone()))
                })?;
                let partitions = if t.partitions.is_empty() {
                    topic.partitions.keys().copied().collect()
                } else {
                    t.partitions
                };
                wanted.push((t.topic, partitions));
            }
            Some(wanted)
        };
        let answer = self.submit(ControlRequest::ElectLeaders { topics, preferred }).await?;
        let ControlResponse::ElectLeaders(results) = answer else {
            return Err(unexpected(&answer));
        };
        let image = self.image();
        let partitions = results
            .into_iter()
            .map(|e| {
                let (leader, error) = match e.result {
                    Ok(leader) => (Some(leader.0), None),
                    Err(why) => {
                        let current = image
                            .partition(&e.topic, e.partition)
                            .and_then(|p| p.leader)
                            .map(|l| l.0);
                        (current, Some(election_error(why)))
                    }
                };
                pb::PartitionElection { topic: e.topic, partition: e.partition, leader, error }
            })
            .collect();
        Ok(Response::new(pb::ElectLeadersResponse { partitions }))
    }

    async fn alter_partition_reassignments(
        &self,
        request: Request<pb::AlterPartitionReassignmentsRequest>,
    ) -> Result<Response<pb::AlterPartitionReassignmentsResponse>, Status> {
        let request = request.into_inner();
        check_count("partitions", request.partitions.len())?;
        let mut partitions = Vec::with_capacity(request.partitions.len());
        for p in request.partitions {
            let target = if p.cancel {
                None
            } else if p.replicas.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "{}-{}: give the target replicas, or cancel",
                    p.topic, p.partition
                )));
            } else {
                Some(p.replicas.iter().map(|&id| NodeId(id)).collect())
            };
            partitions.push(PartitionReassignment {
                topic: p.topic,
                partition: p.partition,
                target,
            });
        }
        let request = ReassignPartitionsRequest { partitions };
        let answer = self.submit(ControlRequest::AlterPartitionReassignments(request)).await?;
        let ControlResponse::AlterPartitionReassignments(results) = answer else {
            return Err(unexpected(&answer));
        };
        fail_if_all_failed(results.iter().map(|r| r.result.as_ref().err()))?;
        let partitions = results
            .into_iter()
            .map(|r| pb::PartitionMoveResult {
                topic: r.topic,
                partition: r.partition,
                error: r.result.err().map(|e| item_error(&e)),
            })
            .collect();
        Ok(Response::new(pb::AlterPartitionReassignmentsResponse { partitions }))
    }

    async fn list_partition_reassignments(
        &self,
        request: Request<pb::ListPartitionReassignmentsRequest>,
    ) -> Result<Response<pb::ListPartitionReassignmentsResponse>, Status> {
        let request = request.into_inner();
        if !request.topics.is_empty() {
            check_count("topics", request.topics.len())?;
        }
        let image = self.image();
        let ids = |v: &[NodeId]| v.iter().map(|n| n.0).collect::<Vec<_>>();
        let ongoing = |topic: &str, index: i32, p: &PartitionImage| pb::OngoingReassignment {
            topic: topic.to_string(),
            partition: index,
            replicas: ids(&p.replicas),
            adding_replicas: ids(&p.adding_replicas),
            removing_replicas: ids(&p.removing_replicas),
            isr: ids(&p.isr),
        };
        let mut reassignments = Vec::new();
        if request.topics.is_empty() {
            for t in image.topics.values() {
                for (&index, p) in t.partitions.iter().filter(|(_, p)| p.is_reassigning()) {
                    reassignments.push(ongoing(&t.name, index, p));
                }
            }
        } else {
            for t in &request.topics {
                let topic = image.topic(&t.topic).ok_or_else(|| {
                    status_of(&ControlError::UnknownTopicOrPartition(t.topic.clone()))
                })?;
                let moving = topic.partitions.iter().filter(|(index, p)| {
                    p.is_reassigning() && (t.partitions.is_empty() || t.partitions.contains(index))
                });
                for (&index, p) in moving {
                    reassignments.push(ongoing(&t.topic, index, p));
                }
            }
        }
        Ok(Response::new(pb::ListPartitionReassignmentsResponse { reassignments }))
    }

    async fn list_groups(
        &self,
        _request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let listed = tokio::time::timeout(BROKERS_TIMEOUT, self.groups()?.list_groups())
            .await
            .unwrap_or(Err(BrokerReadError::Timeout { what: "the brokers" }))
            .map_err(|e| read_status(&e))?;
        Ok(Response::new(listed))
    }

    async fn describe_groups(
        &self,
        request: Request<pb::DescribeGroupsRequest>,
    ) -> Result<Response<pb::DescribeGroupsResponse>, Status> {
        let ids = request.into_inner().group_ids;
        check_count("group_ids", ids.len())?;
        let source = self.groups()?;
        let mut groups = Vec::with_capacity(ids.len());
        for group_id in ids {
            let described =
                tokio::time::timeout(BROKERS_TIMEOUT, source.describe_group(group_id.clone()))
                    .await
                    .unwrap_or(Err(BrokerReadError::Timeout { what: "the coordinator" }));
            groups.push(match described {
                Ok(d) => d,
                Err(e) => pb::GroupDescription {
                    group_id,
                    error: Some(pb::ItemError {
                        code: Code::Unavailable as i32,
                        message: e.to_string(),
                    }),
                    ..Default::default()
                },
            });
        }
        Ok(Response::new(pb::DescribeGroupsResponse { groups }))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let filters = txn_filters(request.into_inner())?;
        let listed = tokio::time::timeout(BROKERS_TIMEOUT, self.txns()?.list_transactions(filters))
            .await
            .unwrap_or(Err(BrokerReadError::Timeout { what: "the brokers" }))
            .map_err(|e| read_status(&e))?;
        Ok(Response::new(listed))
    }

    async fn describe_transactions(
        &self,
        request: Request<pb::DescribeTransactionsRequest>,
    ) -> Result<Response<pb::DescribeTransactionsResponse>, Status> {
        let ids = request.into_inner().transactional_ids;
        check_count("transactional_ids", ids.len())?;
        if ids.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("a transactional id is empty"));
        }
        let described =
            tokio::time::timeout(BROKERS_TIMEOUT, self.txns()?.describe_transactions(ids.clone()))
                .await
                .unwrap_or(Err(BrokerReadError::Timeout { what: "the coordinators" }));
        let answers: Vec<Result<pb::TransactionDescription, pb::ItemError>> = match described {
            Ok(answers) if answers.len() == ids.len() => {
                answers.into_iter().map(|a| a.map_err(|e| read_item_error(&e))).collect()
            }
            Ok(answers) => {
                return Err(Status::internal(format!(
                    "the broker answered for {} of {} transactional ids",
                    answers.len(),
                    ids.len()
                )))
            }
            // Nothing was asked: every id fails with the one reason.
            Err(e) => vec![Err(read_item_error(&e)); ids.len()],
        };
        let transactions = ids
            .into_iter()
            .zip(answers)
            .map(|(transactional_id, answer)| match answer {
                Ok(d) => d,
                Err(error) => pb::TransactionDescription {
                    transactional_id,
                    start_time_ms: -1,
                    error: Some(error),
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::DescribeTransactionsResponse { transactions }))
    }

    async fn describe_producers(
        &self,
        request: Request<pb::DescribeProducersRequest>,
    ) -> Result<Response<pb::DescribeProducersResponse>, Status> {
        let pb::DescribeProducersRequest { topic, partition } = request.into_inner();
        check_partition(&self.image(), &topic, partition)?;
        let described = tokio::time::timeout(
            BROKERS_TIMEOUT,
            self.txns()?.describe_producers(topic, partition),
        )
        .await
        .unwrap_or(Err(BrokerReadError::Timeout { what: "the partition's leader" }))
        .map_err(|e| read_status(&e))?;
        Ok(Response::new(described))
    }

    async fn delete_records(
        &self,
        request: Request<pb::DeleteRecordsRequest>,
    ) -> Result<Response<pb::DeleteRecordsResponse>, Status> {
        let pb::DeleteRecordsRequest { topic, partition, offset } = request.into_inner();
        check_partition(&self.image(), &topic, partition)?;
        if offset < -1 {
            return Err(Status::invalid_argument(format!(
                "offset {offset}: records below an offset >= 0 (or -1, the high watermark) go"
            )));
        }
        let deleted = tokio::time::timeout(
            BROKERS_TIMEOUT,
            self.logs()?.delete_records(topic, partition, offset),
        )
        .await
        .unwrap_or(Err(BrokerReadError::Timeout { what: "the partition's leader" }))
        .map_err(|e| read_status(&e))?;
        Ok(Response::new(deleted))
    }

    async fn describe_log_dirs(
        &self,
        _request: Request<pb::DescribeLogDirsRequest>,
    ) -> Result<Response<pb::DescribeLogDirsResponse>, Status> {
        let described = tokio::time::timeout(BROKERS_TIMEOUT, self.logs()?.describe_log_dirs())
            .await
            .map_err(|_| read_status(&BrokerReadError::Timeout { what: "the brokers" }))?;
        Ok(Response::new(described))
    }

    async fn describe_quorum(
        &self,
        _request: Request<pb::DescribeQuorumRequest>,
    ) -> Result<Response<pb::DescribeQuorumResponse>, Status> {
        let quorum = self.quorum(ControlRequest::DescribeQuorum).await?;
        Ok(Response::new(quorum))
    }

    async fn add_voter(
        &self,
        request: Request<pb::AddVoterRequest>,
    ) -> Result<Response<pb::AddVoterResponse>, Status> {
        let r = request.into_inner();
        let add = AddVoterRequest {
            node_id: r.node_id,
            directory_id: directory_id_from_pb(r.directory_id.as_deref())?,
            control_addr: r.address.filter(|a| !a.is_empty()),
            timeout_ms: r.timeout_ms.map(u64::from),
        };
        let quorum = self.quorum(ControlRequest::AddVoter(add)).await?;
        Ok(Response::new(pb::AddVoterResponse { quorum: Some(quorum) }))
    }

    async fn remove_voter(
        &self,
        request: Request<pb::RemoveVoterRequest>,
    ) -> Result<Response<pb::RemoveVoterResponse>, Status> {
        let r = request.into_inner();
        let remove = RemoveVoterRequest {
            node_id: r.node_id,
            directory_id: directory_id_from_pb(r.directory_id.as_deref())?,
        };
        let quorum = self.quorum(ControlRequest::RemoveVoter(remove)).await?;
        Ok(Response::new(pb::RemoveVoterResponse { quorum: Some(quorum) }))
    }
}

impl AdminServiceImpl {
    /// A quorum request, answered by the active controller with the quorum.
    async fn quorum(&self, request: ControlRequest) -> Result<pb::DescribeQuorumResponse, Status> {
        match self.submit(request).await? {
            ControlResponse::Quorum(d) => Ok(quorum_to_pb(&d)),
            other => Err(unexpected(&other)),
        }
    }
}

/// How long the admin API waits for brokers to answer about groups, transactions and
/// producers.
const BROKERS_TIMEOUT: Duration = Duration::from_secs(15);
