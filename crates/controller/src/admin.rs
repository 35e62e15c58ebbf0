//! The admin plane's gRPC `AdminService` (`proto/admin.proto`): topics, configs, partitions,
//! the cluster's shape and leader election, plus gRPC health and reflection beside it.
//!
//! Reads are answered from this node's metadata image; writes are decided by the active
//! controller through [`ControllerClient::submit`], which answers after the records commit.
//! Refusals become gRPC statuses in one place, [`status_of`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::RaftMetrics;
use strom_metadata::config::{ConfigType, TOPIC_CONFIGS};
use strom_metadata::control::{
    AlterConfigOp, AlterConfigsRequest, ConfigAlteration, ControlRequest, ControlResponse,
    CreatePartitionsRequest, CreateTopic, CreateTopicsRequest, DeleteTopicsRequest, ElectionError,
    ItemResult, NewPartitions,
};
use strom_metadata::records::{ConfigResourceType, MetadataRecord};
use strom_metadata::{
    ControlError, ControllerClient, GroupAdmin, GroupDescription, MetadataImage, MetadataListener,
    MetadataOffset, TopicImage,
};
use strom_proto::admin as pb;
use tokio::sync::watch;
use tonic::service::RoutesBuilder;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::types::{ControllerNode, Raft};

pub use pb::admin_service_client::AdminServiceClient;
pub use pb::admin_service_server::{AdminService, AdminServiceServer};

/// Items (topics, names, config ops) one admin request may carry: bounds the records a single
/// call makes the controller decide and the size of its answer.
pub const ITEMS_PER_REQUEST_MAX: usize = 1_000;

/// How long a write waits for the controller's answer before the call is failed as
/// UNAVAILABLE; the write may still commit, which a retry then reports (e.g. ALREADY_EXISTS).
pub const SUBMIT_TIMEOUT_MS_MAX: u64 = 30_000;

/// The quorum as one node sees it, for DescribeCluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuorumState {
    /// The node answering.
    pub node_id: u64,
    /// Voter id → its control (gRPC) address, in id order.
    pub voters: Vec<(u64, String)>,
    /// The raft leader this node knows of (the active controller).
    pub active_controller: Option<u64>,
    pub term: u64,
    /// The highest metadata log index this node has applied (so known committed).
    pub commit_index: u64,
}

/// What DescribeCluster needs besides the image: the cluster id and the raft quorum's state.
/// [`RaftClusterInfo`] reads it from a local raft node; a broker-only node supplies its own.
pub trait ClusterInfo: Send + Sync + 'static {
    fn cluster_id(&self) -> String;
    fn quorum(&self) -> QuorumState;
}

/// [`ClusterInfo`] of a node that runs a controller: the quorum from its raft metrics.
pub struct RaftClusterInfo {
    cluster_id: String,
    metrics: watch::Receiver<RaftMetrics<u64, ControllerNode>>,
}

impl RaftClusterInfo {
    pub fn new(cluster_id: impl Into<String>, raft: &Raft) -> Self {
        RaftClusterInfo { cluster_id: cluster_id.into(), metrics: raft.metrics() }
    }
}

impl ClusterInfo for RaftClusterInfo {
    fn cluster_id(&self) -> String {
        self.cluster_id.clone()
    }

    fn quorum(&self) -> QuorumState {
        let m = self.metrics.borrow();
        let membership = m.membership_config.membership();
        let mut voters: Vec<(u64, String)> = membership
            .voter_ids()
            .map(|id| {
                let addr = membership.get_node(&id).map(|n| n.control_addr.clone());
                (id, addr.unwrap_or_default())
            })
            .collect();
        voters.sort();
        QuorumState {
            node_id: m.id,
            voters,
            active_controller: m.current_leader,
            term: m.current_term,
            commit_index: m.last_applied.map_or(0, |l| l.index),
        }
    }
}

/// A [`MetadataListener`] that publishes every committed image on a watch channel, the
/// receiver [`AdminServiceImpl`] reads, then hands the commit on to the next listener (in a
/// combined node, the broker's). Give it to `Controller::start` in place of that listener.
pub struct ImagePublisher {
    tx: watch::Sender<Arc<MetadataImage>>,
    next: Option<Arc<dyn MetadataListener>>,
}

impl ImagePublisher {
    pub fn new(
        next: Option<Arc<dyn MetadataListener>>,
    ) -> (Arc<ImagePublisher>, watch::Receiver<Arc<MetadataImage>>) {
        let (tx, rx) = watch::channel(Arc::new(MetadataImage::default()));
        (Arc::new(ImagePublisher { tx, next }), rx)
    }
}

impl MetadataListener for ImagePublisher {
    fn on_commit(
        &self,
        offset: MetadataOffset,
        records: &[MetadataRecord],
        image: Arc<MetadataImage>,
    ) {
        self.tx.send_replace(image.clone());
        if let Some(next) = &self.next {
            next.on_commit(offset, records, image);
        }
    }
}

/// The AdminService implementation; mount it with [`admin_service`] or [`mount_admin`].
pub struct AdminServiceImpl {
    client: Arc<dyn ControllerClient>,
    image: watch::Receiver<Arc<MetadataImage>>,
    cluster: Arc<dyn ClusterInfo>,
    /// Static broker defaults by topic config key (`retention.ms` = the node's `retention_ms`).
    broker_defaults: BTreeMap<String, String>,
    /// Consumer groups, on a node that runs a broker.
    groups: Option<Arc<dyn GroupAdmin>>,
}

impl AdminServiceImpl {
    pub fn new(
        client: Arc<dyn ControllerClient>,
        image: watch::Receiver<Arc<MetadataImage>>,
        cluster: Arc<dyn ClusterInfo>,
    ) -> Self {
        AdminServiceImpl { client, image, cluster, broker_defaults: BTreeMap::new(), groups: None }
    }

    /// Serves ListGroups and DescribeGroups through this node's broker.
    pub fn with_groups(mut self, groups: Arc<dyn GroupAdmin>) -> Self {
        self.groups = Some(groups);
        self
    }

    fn groups(&self) -> Result<&Arc<dyn GroupAdmin>, Status> {
        self.groups.as_ref().ok_or_else(|| {
            Status::unavailable(
                "this node runs no broker, and consumer groups live in the brokers: ask a \
                 broker's control port (--bootstrap-control)",
            )
        })
    }

    /// The node's static defaults for topic config keys (Kafka's STATIC_BROKER_CONFIG source),
    /// keyed by the topic-level name, e.g. `retention.ms`. DescribeConfigs reports them as the
    /// value of keys a topic does not override.
    pub fn with_broker_defaults(mut self, defaults: BTreeMap<String, String>) -> Self {
        self.broker_defaults = defaults;
        self
    }

    fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    async fn submit(&self, request: ControlRequest) -> Result<ControlResponse, Status> {
        let answer = tokio::time::timeout(
            Duration::from_millis(SUBMIT_TIMEOUT_MS_MAX),
            self.client.submit(request),
        )
        .await
        .map_err(|_| {
            Status::unavailable(format!(
                "the active controller did not answer within {SUBMIT_TIMEOUT_MS_MAX} ms"
            ))
        })?;
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

/// The gRPC status of a refused request. The message is what the CLI shows after
/// `strom: error:`, so it names the topic or the key.
pub fn status_of(e: &ControlError) -> Status {
    match e {
        ControlError::TopicAlreadyExists(_) => Status::already_exists(e.to_string()),
        ControlError::UnknownTopicOrPartition(name) => {
            Status::not_found(format!("topic '{name}' does not exist"))
        }
        ControlError::UnknownTopicId(id) => {
            Status::not_found(format!("topic with id {id} does not exist"))
        }
        ControlError::InvalidTopic(_)
        | ControlError::InvalidPartitions(_)
        | ControlError::InvalidReplicationFactor(_)
        | ControlError::InvalidReplicaAssignment(_)
        | ControlError::InvalidConfig(_)
        | ControlError::InvalidRequest(_)
        | ControlError::PolicyViolation(_) => Status::invalid_argument(e.to_string()),
        ControlError::NotController => Status::unavailable(
            "no active controller: this node is not the active controller and cannot reach it; \
             retry shortly",
        ),
        ControlError::ControllerUnavailable(_) => Status::unavailable(e.to_string()),
        // Broker-lifecycle refusals and any later variant: the request met a state it cannot
        // apply to.
        _ => Status::failed_precondition(e.to_string()),
    }
}

fn item_error(e: &ControlError) -> pb::ItemError {
    let status = status_of(e);
    pb::ItemError { code: status.code() as i32, message: status.message().to_string() }
}

/// Nothing was committed when every item failed, so the call fails with the first failure.
fn fail_if_all_failed<'a>(
    errors: impl IntoIterator<Item = Option<&'a ControlError>>,
) -> Result<(), Status> {
    let mut errors = errors.into_iter();
    match errors.next() {
        Some(Some(first)) if errors.all(|e| e.is_some()) => Err(status_of(first)),
        _ => Ok(()),
    }
}

fn item_errors<T>(results: &[ItemResult<T>]) -> impl Iterator<Item = Option<&ControlError>> {
    results.iter().map(|r| r.result.as_ref().err())
}

fn check_count(what: &str, count: usize) -> Result<(), Status> {
    if count == 0 {
        return Err(Status::invalid_argument(format!("no {what} given")));
    }
    if count > ITEMS_PER_REQUEST_MAX {
        return Err(Status::invalid_argument(format!(
            "{count} {what} given; at most {ITEMS_PER_REQUEST_MAX} per request"
        )));
    }
    Ok(())
}

fn unexpected(response: &ControlResponse) -> Status {
    Status::internal(format!("the controller answered with an unexpected response: {response:?}"))
}

fn replication_factor(topic: &TopicImage) -> i32 {
    topic.partitions.values().next().map_or(0, |p| p.replicas.len() as i32)
}

fn type_name(kind: ConfigType) -> &'static str {
    match kind {
        ConfigType::Boolean => "boolean",
        ConfigType::String => "string",
        ConfigType::Int => "int",
        ConfigType::Short => "short",
        ConfigType::Long => "long",
        ConfigType::Double => "double",
        ConfigType::List => "list",
    }
}

fn new_topic(t: pb::NewTopic) -> Result<CreateTopic, Status> {
    let num_partitions = match t.partitions {
        None => -1,
        Some(n) if n >= 1 => n,
        Some(n) => {
            return Err(Status::invalid_argument(format!(
                "topic '{}': partitions must be at least 1, got {n}",
                t.name
            )))
        }
    };
    let replication_factor = match t.replication_factor {
        None => -1,
        Some(n) => match i16::try_from(n) {
            Ok(rf) if rf >= 1 => rf,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "topic '{}': replication_factor must be between 1 and {}, got {n}",
                    t.name,
                    i16::MAX
                )))
            }
        },
    };
    if t.configs.len() > ITEMS_PER_REQUEST_MAX {
        return Err(Status::invalid_argument(format!(
            "topic '{}': more than {ITEMS_PER_REQUEST_MAX} configs",
            t.name
        )));
    }
    let mut configs: Vec<(String, Option<String>)> =
        t.configs.into_iter().map(|(k, v)| (k, Some(v))).collect();
    // A map arrives in no particular order; decide on a stable one.
    configs.sort();
    Ok(CreateTopic {
        name: t.name,
        num_partitions,
        replication_factor,
        assignments: Vec::new(),
        configs,
    })
}

fn config_op(
    topic: &str,
    op: pb::ConfigOp,
) -> Result<(String, AlterConfigOp, Option<String>), Status> {
    if op.key.is_empty() {
        return Err(Status::invalid_argument(format!("topic '{topic}': a config op has no key")));
    }
    match pb::ConfigOpType::try_from(op.op) {
        Ok(pb::ConfigOpType::Set) => match op.value {
            Some(value) => Ok((op.key, AlterConfigOp::Set, Some(value))),
            None => {
                Err(Status::invalid_argument(format!("config '{}': SET needs a value", op.key)))
            }
        },
        Ok(pb::ConfigOpType::Delete) => Ok((op.key, AlterConfigOp::Delete, None)),
        Ok(pb::ConfigOpType::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "config '{}': op must be SET or DELETE, got {}",
            op.key, op.op
        ))),
    }
}

fn election_error(why: ElectionError) -> pb::ItemError {
    let code = match why {
        ElectionError::UnknownTopicOrPartition => Code::NotFound,
        ElectionError::ElectionNotNeeded => Code::AlreadyExists,
        ElectionError::PreferredLeaderNotAvailable | ElectionError::EligibleLeadersNotAvailable => {
            Code::FailedPrecondition
        }
    };
    pb::ItemError { code: code as i32, message: why.to_string() }
}

fn describe_topic(image: &MetadataImage, topic: &TopicImage) -> pb::TopicDescription {
    let offline = |id: &strom_metadata::NodeId| image.brokers.get(id).is_none_or(|b| b.fenced);
    pb::TopicDescription {
        name: topic.name.clone(),
        topic_id: topic.id.to_string(),
        internal: strom_metadata::config::is_internal_topic(&topic.name),
        partitions: topic
            .partitions
            .iter()
            .map(|(&partition, p)| pb::PartitionDescription {
                partition,
                leader: p.leader.map(|l| l.0),
                leader_epoch: p.leader_epoch.0,
                partition_epoch: p.partition_epoch.0,
                replicas: p.replicas.iter().map(|r| r.0).collect(),
                isr: p.isr.iter().map(|r| r.0).collect(),
                offline_replicas: p.replicas.iter().filter(|r| offline(r)).map(|r| r.0).collect(),
            })
            .collect(),
    }
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
        fail_if_all_failed(item_errors(&results))?;
        let topics = results
            .into_iter()
            .map(|r| match r.result {
                Ok(created) => pb::CreatedTopic {
                    name: r.name,
                    topic_id: created.topic_id.to_string(),
                    partitions: created.num_partitions,
                    replication_factor: i32::from(created.replication_factor),
                    error: None,
                },
                Err(e) => pb::CreatedTopic {
                    name: r.name,
                    error: Some(item_error(&e)),
                    ..Default::default()
                },
            })
            .collect();
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
        fail_if_all_failed(item_errors(&results))?;
        let topics = results
            .into_iter()
            .map(|r| match r.result {
                Ok(id) => pb::DeletedTopic { name: r.name, topic_id: id.to_string(), error: None },
                Err(e) => pb::DeletedTopic {
                    name: r.name,
                    topic_id: String::new(),
                    error: Some(item_error(&e)),
                },
            })
            .collect();
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
        let entries = TOPIC_CONFIGS
            .iter()
            .filter(|d| request.keys.is_empty() || request.keys.iter().any(|k| k == d.name))
            .map(|d| {
                let (default_value, default_source) = match self.broker_defaults.get(d.name) {
                    Some(v) => (v.clone(), pb::ConfigSource::StaticBrokerDefault),
                    None => (d.default.to_string(), pb::ConfigSource::Default),
                };
                let (value, source) = match overrides.and_then(|o| o.get(d.name)) {
                    Some(v) => (v.clone(), pb::ConfigSource::TopicOverride),
                    None => (default_value.clone(), default_source),
                };
                (
                    d.name,
                    pb::ConfigEntry {
                        name: d.name.to_string(),
                        value,
                        source: source as i32,
                        default_value,
                        r#type: type_name(d.kind).to_string(),
                        doc: d.doc.to_string(),
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
        fail_if_all_failed(item_errors(&results))?;
        let topics = results
            .into_iter()
            .map(|r| match r.result {
                Ok(()) => pb::CreatedPartitions {
                    total_count: counts.get(&r.name).copied().unwrap_or_default(),
                    topic: r.name,
                    error: None,
                },
                Err(e) => pb::CreatedPartitions {
                    total_count: image.topic(&r.name).map_or(0, |t| t.partitions.len() as i32),
                    topic: r.name,
                    error: Some(item_error(&e)),
                },
            })
            .collect();
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

    async fn list_groups(
        &self,
        _request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let listed = tokio::time::timeout(GROUPS_TIMEOUT, self.groups()?.list_groups())
            .await
            .map_err(|_| Status::unavailable("brokers did not answer ListGroups in time"))?
            .map_err(Status::unavailable)?;
        let groups = listed
            .groups
            .into_iter()
            .map(|g| pb::GroupListing {
                group_id: g.group_id,
                protocol_type: g.protocol_type,
                state: g.state,
                coordinator_id: g.coordinator_id,
            })
            .collect();
        Ok(Response::new(pb::ListGroupsResponse { groups, unreachable: listed.unreachable }))
    }

    async fn describe_groups(
        &self,
        request: Request<pb::DescribeGroupsRequest>,
    ) -> Result<Response<pb::DescribeGroupsResponse>, Status> {
        let ids = request.into_inner().group_ids;
        check_count("group_ids", ids.len())?;
        let admin = self.groups()?;
        let mut groups = Vec::with_capacity(ids.len());
        for group_id in ids {
            let described =
                tokio::time::timeout(GROUPS_TIMEOUT, admin.describe_group(group_id.clone()))
                    .await
                    .unwrap_or_else(|_| Err("the coordinator did not answer in time".to_owned()));
            groups.push(match described {
                Ok(d) => group_description(d),
                Err(message) => pb::GroupDescription {
                    group_id,
                    error: Some(pb::ItemError { code: Code::Unavailable as i32, message }),
                    ..Default::default()
                },
            });
        }
        Ok(Response::new(pb::DescribeGroupsResponse { groups }))
    }
}

/// How long the admin API waits for brokers to answer about groups.
const GROUPS_TIMEOUT: Duration = Duration::from_secs(15);

fn group_description(d: GroupDescription) -> pb::GroupDescription {
    pb::GroupDescription {
        group_id: d.group_id,
        state: d.state,
        protocol_type: d.protocol_type,
        protocol: d.protocol,
        coordinator_id: d.coordinator_id,
        members: d
            .members
            .into_iter()
            .map(|m| pb::GroupMember {
                member_id: m.member_id,
                group_instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                assignment: m
                    .assignment
                    .into_iter()
                    .map(|(topic, partitions)| pb::TopicPartitions { topic, partitions })
                    .collect(),
            })
            .collect(),
        partitions: d
            .partitions
            .into_iter()
            .map(|p| pb::GroupPartition {
                topic: p.topic,
                partition: p.partition,
                committed_offset: p.committed_offset,
                log_end_offset: p.log_end_offset,
                lag: p.lag,
                member_id: p.member_id,
            })
            .collect(),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_statuses_that_name_the_subject() {
        let s = status_of(&ControlError::UnknownTopicOrPartition("orders".into()));
        assert_eq!((s.code(), s.message()), (Code::NotFound, "topic 'orders' does not exist"));
        let s = status_of(&ControlError::TopicAlreadyExists("orders".into()));
        assert_eq!((s.code(), s.message()), (Code::AlreadyExists, "topic 'orders' already exists"));
        let s =
            status_of(&ControlError::InvalidConfig("retention.ms=\"x\": not an integer".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("retention.ms"), "{s:?}");
        assert_eq!(status_of(&ControlError::NotController).code(), Code::Unavailable);
        let s = status_of(&ControlError::ControllerUnavailable("shut down".into()));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(status_of(&ControlError::StaleBrokerEpoch(3)).code(), Code::FailedPrecondition);
    }

    #[test]
    fn a_call_fails_as_a_whole_only_when_every_item_failed() {
        let missing = ControlError::UnknownTopicOrPartition("a".into());
        let exists = ControlError::TopicAlreadyExists("b".into());
        let all_failed = fail_if_all_failed([Some(&missing), Some(&exists)]);
        assert_eq!(all_failed.map_err(|s| s.code()), Err(Code::NotFound), "the first failure");
        assert!(fail_if_all_failed([None, Some(&exists)]).is_ok());
        assert!(fail_if_all_failed(std::iter::empty()).is_ok());
    }
}
