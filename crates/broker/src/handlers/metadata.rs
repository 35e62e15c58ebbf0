//! Metadata: brokers, controller and topic leadership from the broker's image, with
//! `auto.create.topics.enable` creating unknown topics on request.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use strom_metadata::config::is_internal_topic;
use strom_metadata::control::{ControlRequest, CreateTopic, CreateTopicsRequest};
use strom_metadata::{MetadataImage, TopicImage};
use uuid::Uuid;

use super::authorized::{self, Resource};
use super::s;
use crate::errors::{code_of, KafkaError};
use crate::BrokerCtx;

/// How long a Metadata request waits for an auto-created topic to commit.
const AUTO_CREATE_WAIT: Duration = Duration::from_secs(5);

pub(crate) use crate::wire::LISTENER;

pub(crate) fn brokers(image: &MetadataImage, version: i16) -> Vec<MetadataResponseBroker> {
    image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .filter_map(|b| {
            let e = b.endpoint(LISTENER)?;
            let mut out = MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id.0))
                .with_host(s(e.host.clone()))
                .with_port(e.port as i32);
            if version >= 1 {
                out.rack = b.rack.clone().map(s);
            }
            Some(out)
        })
        .collect()
}

fn topic_response(image: &MetadataImage, t: &TopicImage, version: i16) -> MetadataResponseTopic {
    let partitions = t
        .partitions
        .iter()
        .map(|(&index, p)| {
            let ids = |v: &[strom_metadata::NodeId]| v.iter().map(|n| BrokerId(n.0)).collect();
            let mut out = MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_error_code(code_of(
                    p.leader.is_none().then_some(KafkaError::LeaderNotAvailable),
                ))
                .with_leader_id(BrokerId(p.leader.map_or(-1, |n| n.0)))
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr));
            if version >= 7 {
                out.leader_epoch = p.leader_epoch.0;
            }
            if version >= 5 {
                out.offline_replicas = p
                    .replicas
                    .iter()
                    .filter(|r| !image.is_live(**r))
                    .map(|n| BrokerId(n.0))
                    .collect();
            }
            out
        })
        .collect();
    let mut out = MetadataResponseTopic::default()
        .with_name(Some(TopicName(s(t.name.clone()))))
        .with_partitions(partitions);
    if version >= 1 {
        out.is_internal = is_internal_topic(&t.name);
    }
    if version >= 10 {
        out.topic_id = Uuid::from_bytes(t.id.0);
    }
    out
}

fn unknown(name: Option<TopicName>, id: Uuid, error: KafkaError) -> MetadataResponseTopic {
    MetadataResponseTopic::default().with_name(name).with_topic_id(id).with_error_code(error.into())
}

pub(crate) async fn handle(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: MetadataRequest,
) -> MetadataResponse {
    let mut image = ctx.image.current();
    let include_topic_operations = req.include_topic_authorized_operations;
    let include_cluster_operations = req.include_cluster_authorized_operations;
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let requested: Option<Vec<_>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let auto_create =
        ctx.config.auto_create_topics_enable && (version < 4 || req.allow_auto_topic_creation);
    if let (Some(list), true) = (&requested, auto_create) {
        let missing: Vec<CreateTopic> = list
            .iter()
            .filter_map(|t| t.name.as_ref())
            .filter(|n| image.topic(n.as_str()).is_none())
            .filter(|n| strom_metadata::control::validate_topic_name(n.as_str()).is_ok())
            // The brokers create their own topics, with their own settings, when first used.
            .filter(|n| !is_internal_topic(n.as_str()))
            .map(|n| CreateTopic {
                name: n.to_string(),
                num_partitions: -1,
                replication_factor: -1,
                ..Default::default()
            })
            .collect();
        if !missing.is_empty() {
            let create = ctx.controller.submit(ControlRequest::CreateTopics(CreateTopicsRequest {
                topics: missing,
                validate_only: false,
                internal: false,
            }));
            match tokio::time::timeout(AUTO_CREATE_WAIT, create).await {
                Ok(Ok(_)) => image = ctx.image.current(),
                Ok(Err(e)) => tracing::warn!(error = %e, "auto topic creation failed"),
                Err(_) => tracing::warn!("auto topic creation timed out"),
            }
        }
    }
    let topics: Vec<MetadataResponseTopic> = match requested {
        None => image.topics.values().map(|t| topic_response(&image, t, version)).collect(),
        Some(list) => list
            .into_iter()
            .map(|t| {
                let by_name = t.name.as_ref().map(|n| n.as_str().to_string());
                let found = match &by_name {
                    Some(n) => image.topic(n),
                    None => image.topic_by_id(strom_metadata::TopicId(*t.topic_id.as_bytes())),
                };
                match found {
                    Some(found) => topic_response(&image, found, version),
                    None => {
                        let error = match &by_name {
                            Some(n) if strom_metadata::control::validate_topic_name(n).is_err() => {
                                KafkaError::InvalidTopicException
                            }
                            Some(n) if auto_create && !is_internal_topic(n) => {
                                KafkaError::LeaderNotAvailable
                            }
                            Some(_) => KafkaError::UnknownTopicOrPartition,
                            None => KafkaError::UnknownTopicId,
                        };
                        let mut out = unknown(t.name, Uuid::nil(), error);
                        if version >= 10 {
                            out.topic_id = t.topic_id;
                        }
                        out
                    }
                }
            })
            .collect(),
    };
    let mut resp = MetadataResponse::default().with_brokers(brokers(&image, version)).with_topics(
        topics
            .into_iter()
            .map(|mut t: MetadataResponseTopic| {
                if version >= 8 {
                    t.topic_authorized_operations =
                        authorized::operations(Resource::Topic, include_topic_operations);
                }
                t
            })
            .collect(),
    );
    if version >= 1 {
        resp.controller_id = BrokerId(ctx.controller_id());
    }
    if version >= 2 {
        resp.cluster_id = Some(s(ctx.config.cluster_id.clone()));
    }
    if (8..=10).contains(&version) {
        resp.cluster_authorized_operations =
            authorized::operations(Resource::Cluster, include_cluster_operations);
    }
    resp
}
