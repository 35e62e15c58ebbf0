//! The Kafka admin APIs, mapped onto the same controller operations as the gRPC admin API.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::*;
use strom_metadata::config::{
    effective_broker_config, effective_topic_config, ConfigSource, ConfigType, DynamicValue,
    TOPIC_CONFIGS,
};
use strom_metadata::control::{
    AlterConfigOp, AlterConfigsRequest as AlterReq, ConfigAlteration, ControlRequest,
    ControlResponse, CreatePartitionsRequest as PartsReq, CreateTopic,
    CreateTopicsRequest as CreateReq, DeleteTopicsRequest as DeleteReq, ItemResult, NewPartitions,
    ResourceResult,
};
use strom_metadata::records::ConfigResourceType;
use strom_metadata::{ControlError, NodeId, TopicId};
use uuid::Uuid;

use super::metadata::LISTENER;
use super::s;
use crate::errors::KafkaError;
use crate::BrokerCtx;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn error_of<T>(r: &Result<T, ControlError>) -> (i16, Option<String>) {
    match r {
        Ok(_) => (0, None),
        Err(e) => (KafkaError::from(e).into(), Some(e.to_string())),
    }
}

/// Submits to the active controller; a whole-request failure becomes the per-item error.
async fn submit(ctx: &BrokerCtx, req: ControlRequest) -> Result<ControlResponse, ControlError> {
    ctx.controller.submit(req).await
}

pub(crate) async fn create_topics(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let names: Vec<String> = req.topics.iter().map(|t| t.name.0.to_string()).collect();
    let request = CreateReq {
        validate_only: req.validate_only,
        internal: false,
        topics: req
            .topics
            .into_iter()
            .map(|t| CreateTopic {
                name: t.name.0.to_string(),
                num_partitions: t.num_partitions,
                replication_factor: t.replication_factor,
                assignments: t
                    .assignments
                    .into_iter()
                    .map(|a| {
                        (a.partition_index, a.broker_ids.into_iter().map(|b| NodeId(b.0)).collect())
                    })
                    .collect(),
                configs: t
                    .configs
                    .into_iter()
                    .map(|c| (c.name.to_string(), c.value.map(|v| v.to_string())))
                    .collect(),
            })
            .collect(),
    };
    let results: Vec<ItemResult<_>> = match submit(ctx, ControlRequest::CreateTopics(request)).await
    {
        Ok(ControlResponse::CreateTopics(r)) => r,
        Ok(_) => unreachable_response(&names),
        Err(e) => {
            names.iter().map(|n| ItemResult { name: n.clone(), result: Err(e.clone()) }).collect()
        }
    };
    let topics = results
        .into_iter()
        .map(|item| {
            let (code, message) = error_of(&item.result);
            let mut out = CreatableTopicResult::default()
                .with_name(TopicName(s(item.name.clone())))
                .with_error_code(code);
            if version >= 1 {
                out.error_message = message.map(s);
            }
            if let Ok(created) = &item.result {
                if version >= 5 {
                    out.num_partitions = created.num_partitions;
                    out.replication_factor = created.replication_factor;
                    out.configs = Some(
                        topic_configs(ctx, &item.name, &created.configs)
                            .into_iter()
                            .map(|c| {
                                CreatableTopicConfigs::default()
                                    .with_name(c.name)
                                    .with_value(c.value)
                                    .with_read_only(false)
                                    .with_config_source(c.config_source)
                                    .with_is_sensitive(false)
                            })
                            .collect(),
                    );
                }
                if version >= 7 {
                    out.topic_id = Uuid::from_bytes(created.topic_id.0);
                }
            } else if version >= 5 {
                out.num_partitions = -1;
                out.replication_factor = -1;
            }
            out
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

fn unreachable_response<T>(names: &[String]) -> Vec<ItemResult<T>> {
    names
        .iter()
        .map(|n| ItemResult {
            name: n.clone(),
            result: Err(ControlError::ControllerUnavailable("unexpected controller answer".into())),
        })
        .collect()
}

pub(crate) async fn delete_topics(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut request = DeleteReq::default();
    if version >= 6 {
        for t in req.topics {
            match t.name {
                Some(n) => request.names.push(n.0.to_string()),
                None => request.ids.push(TopicId(*t.topic_id.as_bytes())),
            }
        }
    } else {
        request.names = req.topic_names.into_iter().map(|n| n.0.to_string()).collect();
    }
    let keys: Vec<String> =
        request.names.iter().cloned().chain(request.ids.iter().map(|i| i.to_string())).collect();
    let image_before = ctx.image.current();
    let results = match submit(ctx, ControlRequest::DeleteTopics(request)).await {
        Ok(ControlResponse::DeleteTopics(r)) => r,
        Ok(_) => unreachable_response(&keys),
        Err(e) => {
            keys.iter().map(|n| ItemResult { name: n.clone(), result: Err(e.clone()) }).collect()
        }
    };
    let responses = results
        .into_iter()
        .map(|item| {
            let (code, message) = error_of(&item.result);
            let mut out = DeletableTopicResult::default().with_error_code(code);
            let name =
                if item.name.is_empty() { None } else { Some(TopicName(s(item.name.clone()))) };
            out.name = name;
            if version >= 5 {
                out.error_message = message.map(s);
            }
            if version >= 6 {
                if let Ok(id) = &item.result {
                    out.topic_id = Uuid::from_bytes(id.0);
                } else if let Some(t) = image_before.topic(&item.name) {
                    out.topic_id = Uuid::from_bytes(t.id.0);
                }
            }
            out
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub(crate) async fn create_partitions(
    ctx: &Arc<BrokerCtx>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let names: Vec<String> = req.topics.iter().map(|t| t.name.0.to_string()).collect();
    let request = PartsReq {
        validate_only: req.validate_only,
        topics: req
            .topics
            .into_iter()
            .map(|t| NewPartitions {
                topic: t.name.0.to_string(),
                count: t.count,
                assignments: t
                    .assignments
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| a.broker_ids.into_iter().map(|b| NodeId(b.0)).collect())
                    .collect(),
            })
            .collect(),
    };
    let results = match submit(ctx, ControlRequest::CreatePartitions(request)).await {
        Ok(ControlResponse::CreatePartitions(r)) => r,
        Ok(_) => unreachable_response(&names),
        Err(e) => {
            names.iter().map(|n| ItemResult { name: n.clone(), result: Err(e.clone()) }).collect()
        }
    };
    CreatePartitionsResponse::default().with_results(
        results
            .into_iter()
            .map(|item| {
                let (code, message) = error_of(&item.result);
                create_partitions_response::CreatePartitionsTopicResult::default()
                    .with_name(TopicName(s(item.name)))
                    .with_error_code(code)
                    .with_error_message(message.map(s))
            })
            .collect(),
    )
}

fn resource_type(code: i8) -> ConfigResourceType {
    match code {
        RESOURCE_TOPIC => ConfigResourceType::ConfigResourceTopic,
        RESOURCE_BROKER => ConfigResourceType::ConfigResourceBroker,
        _ => ConfigResourceType::ConfigResourceUnknown,
    }
}

async fn alter(ctx: &BrokerCtx, request: AlterReq) -> Vec<ResourceResult> {
    let fallback: Vec<ResourceResult> = request
        .resources
        .iter()
        .map(|r| ResourceResult {
            resource_type: r.resource_type,
            resource_name: r.resource_name.clone(),
            result: Err(ControlError::ControllerUnavailable("no answer".into())),
        })
        .collect();
    match submit(ctx, ControlRequest::AlterConfigs(request)).await {
        Ok(ControlResponse::AlterConfigs(r)) => r,
        Ok(_) => fallback,
        Err(e) => {
            fallback.into_iter().map(|r| ResourceResult { result: Err(e.clone()), ..r }).collect()
        }
    }
}

/// One resource of an AlterConfigs or IncrementalAlterConfigs request, whose generated types
/// differ only in the operation field.
fn alteration(
    resource_type_code: i8,
    name: &str,
    ops: impl Iterator<Item = (String, AlterConfigOp, Option<String>)>,
) -> ConfigAlteration {
    ConfigAlteration {
        resource_type: resource_type(resource_type_code),
        resource_name: name.to_owned(),
        ops: ops.collect(),
    }
}

/// The per-resource answers of AlterConfigs and IncrementalAlterConfigs, whose generated
/// response types are alike but distinct. Each names its resource with the type code the
/// request gave (`$codes`, in request order, as the results are), not strom's reading of it:
/// a client matches answers to its resources by (type, name), and librdkafka fails the whole
/// response ("Bad message format") when one does not match, e.g. a GROUP resource (32) that
/// strom does not serve answered as UNKNOWN (0).
macro_rules! alter_responses {
    ($response:ty, $results:expr, $codes:expr) => {
        $results
            .iter()
            .enumerate()
            .map(|(i, r): (usize, &ResourceResult)| {
                let (code, message) = error_of(&r.result);
                let type_code = $codes.get(i).copied().unwrap_or(r.resource_type as i8);
                <$response>::default()
                    .with_error_code(code)
                    .with_error_message(message.map(s))
                    .with_resource_type(type_code)
                    .with_resource_name(s(r.resource_name.clone()))
            })
            .collect()
    };
}

pub(crate) async fn alter_configs(
    ctx: &Arc<BrokerCtx>,
    req: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let codes: Vec<i8> = req.resources.iter().map(|r| r.resource_type).collect();
    let request = AlterReq {
        incremental: false,
        validate_only: req.validate_only,
        resources: req
            .resources
            .into_iter()
            .map(|r| {
                let ops = r.configs.into_iter().map(|c| {
                    (c.name.to_string(), AlterConfigOp::Set, c.value.map(|v| v.to_string()))
                });
                alteration(r.resource_type, r.resource_name.as_str(), ops)
            })
            .collect(),
    };
    let results = alter(ctx, request).await;
    let responses =
        alter_responses!(alter_configs_response::AlterConfigsResourceResponse, results, codes);
    AlterConfigsResponse::default().with_responses(responses)
}

pub(crate) async fn incremental_alter_configs(
    ctx: &Arc<BrokerCtx>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut bad_op = Vec::new();
    let codes: Vec<i8> = req.resources.iter().map(|r| r.resource_type).collect();
    let request = AlterReq {
        incremental: true,
        validate_only: req.validate_only,
        resources: req
            .resources
            .into_iter()
            .map(|r| {
                let ops = r.configs.into_iter().map(|c| {
                    let op = match c.config_operation {
                        0 => AlterConfigOp::Set,
                        1 => AlterConfigOp::Delete,
                        2 => AlterConfigOp::Append,
                        3 => AlterConfigOp::Subtract,
                        other => {
                            bad_op.push(other);
                            AlterConfigOp::Set
                        }
                    };
                    (c.name.to_string(), op, c.value.map(|v| v.to_string()))
                });
                alteration(r.resource_type, r.resource_name.as_str(), ops)
            })
            .collect(),
    };
    let results = if bad_op.is_empty() {
        alter(ctx, request).await
    } else {
        request
            .resources
            .iter()
            .map(|r| ResourceResult {
                resource_type: r.resource_type,
                resource_name: r.resource_name.clone(),
                result: Err(ControlError::InvalidRequest(format!(
                    "unknown config operation {:?}",
                    bad_op
                ))),
            })
            .collect()
    };
    let responses = alter_responses!(
        incremental_alter_configs_response::AlterConfigsResourceResponse,
        results,
        codes
    );
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// One effective config entry.
struct Entry {
    name: kafka_protocol::protocol::StrBytes,
    value: Option<kafka_protocol::protocol::StrBytes>,
    config_source: i8,
    synonyms: Vec<(String, String, i8)>,
    config_type: i8,
    doc: &'static str,
    read_only: bool,
}

/// Every topic config with its effective value and where the value comes from
/// (`metadata::config::effective_topic_config`); `overrides_now` are a just-created topic's,
/// which the image may not hold yet.
fn topic_configs(ctx: &BrokerCtx, topic: &str, overrides_now: &[(String, String)]) -> Vec<Entry> {
    let image = ctx.image.current();
    let overrides: Option<BTreeMap<String, String>> = if overrides_now.is_empty() {
        image.topic_configs(topic).cloned()
    } else {
        Some(overrides_now.iter().cloned().collect())
    };
    effective_topic_config(overrides.as_ref(), &ctx.config.defaults)
        .into_iter()
        .map(|e| Entry {
            name: s(e.def.name),
            value: Some(s(e.value.clone())),
            config_source: e.source.kafka_code(),
            synonyms: e
                .synonyms()
                .into_iter()
                .map(|(name, value, source)| (name.to_string(), value, source.kafka_code()))
                .collect(),
            config_type: e.def.kind.code(),
            doc: e.def.doc,
            read_only: false,
        })
        .collect()
}

/// The node's settings as it runs with them: its static ones (the binary's
/// `NodeConfig::kafka_entries`, read-only) and the dynamic ones (`metadata::config`'s
/// `DYNAMIC_BROKER_CONFIGS`, from the image).
fn broker_configs(ctx: &BrokerCtx) -> Vec<Entry> {
    let image = ctx.image.current();
    let dynamic = effective_broker_config(&image, ctx.config.node_id).into_iter().map(
        |DynamicValue { def, value, source, synonyms }| Entry {
            name: s(def.name),
            value: Some(s(value)),
            config_source: source.kafka_code(),
            synonyms: synonyms
                .into_iter()
                .map(|(v, source)| (def.name.to_string(), v, source.kafka_code()))
                .collect(),
            config_type: def.kind.code(),
            doc: def.doc,
            read_only: false,
        },
    );
    let c = &ctx.config;
    let broker_id = ("broker.id".to_string(), c.node_id.0.to_string(), ConfigSource::StaticBroker);
    std::iter::once(broker_id)
        .chain(c.static_configs.iter().cloned())
        .map(|(k, v, source)| {
            let kind = TOPIC_CONFIGS
                .iter()
                .find(|d| d.broker_synonym == Some(k.as_str()))
                .map_or(ConfigType::String.code(), |d| d.kind.code());
            Entry {
                synonyms: vec![(k.clone(), v.clone(), source.kafka_code())],
                name: s(k),
                value: Some(s(v)),
                config_source: source.kafka_code(),
                config_type: kind,
                doc: "",
                read_only: true,
            }
        })
        .chain(dynamic)
        .collect()
}

pub(crate) fn describe_configs(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let image = ctx.image.current();
    let results = req
        .resources
        .into_iter()
        .map(|r| {
            let name = r.resource_name.to_string();
            let mut out = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let entries = match r.resource_type {
                RESOURCE_TOPIC if image.topic(&name).is_some() => {
                    Ok(topic_configs(ctx, &name, &[]))
                }
                RESOURCE_TOPIC => Err((
                    KafkaError::UnknownTopicOrPartition,
                    format!("topic '{name}' does not exist"),
                )),
                RESOURCE_BROKER if name.is_empty() || name == ctx.config.node_id.0.to_string() => {
                    Ok(broker_configs(ctx))
                }
                RESOURCE_BROKER => Err((
                    KafkaError::InvalidRequest,
                    format!("broker '{name}' is not this node; ask that node"),
                )),
                other => {
                    Err((KafkaError::InvalidRequest, format!("unsupported resource type {other}")))
                }
            };
            match entries {
                Err((error, message)) => {
                    out.error_code = error.into();
                    out.error_message = Some(s(message));
                }
                Ok(entries) => {
                    let wanted: Option<Vec<String>> = r
                        .configuration_keys
                        .map(|keys| keys.iter().map(|k| k.to_string()).collect());
                    out.configs = entries
                        .into_iter()
                        .filter(|e| {
                            wanted.as_ref().is_none_or(|w| w.iter().any(|k| k == e.name.as_str()))
                        })
                        .map(|e| {
                            let mut c = DescribeConfigsResourceResult::default()
                                .with_name(e.name)
                                .with_value(e.value)
                                .with_read_only(e.read_only)
                                .with_config_source(e.config_source)
                                .with_is_sensitive(false);
                            if req.include_synonyms {
                                c.synonyms = e
                                    .synonyms
                                    .into_iter()
                                    .map(|(n, v, src)| {
                                        DescribeConfigsSynonym::default()
                                            .with_name(s(n))
                                            .with_value(Some(s(v)))
                                            .with_source(src)
                                    })
                                    .collect();
                            }
                            if version >= 3 {
                                c.config_type = e.config_type;
                                if req.include_documentation && !e.doc.is_empty() {
                                    c.documentation = Some(s(e.doc));
                                }
                            }
                            c
                        })
                        .collect();
                }
            }
            out
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

pub(crate) fn describe_cluster(
    ctx: &Arc<BrokerCtx>,
    version: i16,
    req: &DescribeClusterRequest,
) -> DescribeClusterResponse {
    let image = ctx.image.current();
    let brokers = image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .filter_map(|b| {
            let e = b.endpoint(LISTENER)?;
            Some(
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.id.0))
                    .with_host(s(e.host.clone()))
                    .with_port(e.port as i32)
                    .with_rack(b.rack.clone().map(s)),
            )
        })
        .collect();
    let mut resp = DescribeClusterResponse::default()
        .with_cluster_id(s(ctx.config.cluster_id.clone()))
        .with_controller_id(BrokerId(ctx.controller_id()))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(super::authorized::operations(
            super::authorized::Resource::Cluster,
            req.include_cluster_authorized_operations,
        ));
    if version >= 1 {
        resp.endpoint_type = 1;
    }
    resp
}
