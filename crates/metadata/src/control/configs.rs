//! Config decisions: Kafka's AlterConfigs (replace) and IncrementalAlterConfigs.

use std::collections::BTreeMap;

use super::topics::internal_topic_refused;
use super::{rec, ControlResponse, Decision};
use crate::config::{is_internal_topic, topic_config, validate_topic_config, ConfigType};
use crate::records::metadata_record::Record;
use crate::records::{ConfigRecord, ConfigResourceType};
use crate::{ControlError, MetadataImage};

/// Kafka's IncrementalAlterConfigs operation codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlterConfigOp {
    Set,
    Delete,
    Append,
    Subtract,
}

#[derive(Clone, Debug)]
pub struct ConfigAlteration {
    pub resource_type: ConfigResourceType,
    pub resource_name: String,
    pub ops: Vec<(String, AlterConfigOp, Option<String>)>,
}

#[derive(Clone, Debug, Default)]
pub struct AlterConfigsRequest {
    pub resources: Vec<ConfigAlteration>,
    /// false: Kafka's legacy AlterConfigs, where the given set replaces every override.
    pub incremental: bool,
    pub validate_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceResult {
    pub resource_type: ConfigResourceType,
    pub resource_name: String,
    pub result: Result<(), ControlError>,
}

fn alter_one(
    image: &MetadataImage,
    res: &ConfigAlteration,
    incremental: bool,
) -> Result<BTreeMap<String, Option<String>>, ControlError> {
    match res.resource_type {
        ConfigResourceType::ConfigResourceTopic => {}
        ConfigResourceType::ConfigResourceBroker => {
            return Err(ControlError::InvalidRequest(
                "dynamic broker configs are not supported; set them in the node's config file"
                    .into(),
            ))
        }
        ConfigResourceType::ConfigResourceUnknown => {
            return Err(ControlError::InvalidRequest("unknown config resource type".into()))
        }
    }
    if image.topic(&res.resource_name).is_none() {
        return Err(ControlError::UnknownTopicOrPartition(res.resource_name.clone()));
    }
    if is_internal_topic(&res.resource_name) {
        return Err(internal_topic_refused(&res.resource_name, "reconfigured by clients"));
    }
    let current = image.topic_configs(&res.resource_name).cloned().unwrap_or_default();
    // key → new value (None: delete the override)
    let mut changes: BTreeMap<String, Option<String>> = BTreeMap::new();
    if !incremental {
        for k in current.keys() {
            changes.insert(k.clone(), None);
        }
    }
    for (key, op, value) in &res.ops {
        let def = topic_config(key)
            .ok_or_else(|| ControlError::InvalidConfig(format!("unknown topic config '{key}'")))?;
        let new = match op {
            AlterConfigOp::Set => {
                let v = value.clone().ok_or_else(|| {
                    ControlError::InvalidConfig(format!("{key}: SET needs a value"))
                })?;
                validate_topic_config(key, &v)?;
                Some(v)
            }
            AlterConfigOp::Delete => None,
            AlterConfigOp::Append | AlterConfigOp::Subtract => {
                if def.kind != ConfigType::List {
                    return Err(ControlError::InvalidConfig(format!(
                        "{key} is not a list; APPEND and SUBTRACT apply to list configs only"
                    )));
                }
                let base = changes
                    .get(key)
                    .cloned()
                    .flatten()
                    .or_else(|| current.get(key).cloned())
                    .unwrap_or_else(|| def.default.to_string());
                let mut items: Vec<String> = base
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                let given: Vec<String> = value
                    .as_deref()
                    .unwrap_or("")
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if *op == AlterConfigOp::Append {
                    for g in given {
                        if !items.contains(&g) {
                            items.push(g);
                        }
                    }
                } else {
                    items.retain(|i| !given.contains(i));
                }
                let v = items.join(",");
                validate_topic_config(key, &v)?;
                Some(v)
            }
        };
        changes.insert(key.clone(), new);
    }
    Ok(changes)
}

pub(super) fn alter_configs(image: &MetadataImage, req: &AlterConfigsRequest) -> Decision {
    let mut records = Vec::new();
    let mut results = Vec::new();
    for res in &req.resources {
        let result = alter_one(image, res, req.incremental).map(|changes| {
            if req.validate_only {
                return;
            }
            let current = image.topic_configs(&res.resource_name);
            for (name, value) in changes {
                let existing = current.and_then(|c| c.get(&name));
                if existing == value.as_ref() {
                    continue;
                }
                records.push(rec(Record::Config(ConfigRecord {
                    resource_type: res.resource_type as i32,
                    resource_name: res.resource_name.clone(),
                    name,
                    value,
                })));
            }
        });
        results.push(ResourceResult {
            resource_type: res.resource_type,
            resource_name: res.resource_name.clone(),
            result,
        });
    }
    Decision { records, response: ControlResponse::AlterConfigs(results) }
}
