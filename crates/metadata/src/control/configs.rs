//! Config decisions: Kafka's AlterConfigs (replace) and IncrementalAlterConfigs, on TOPIC
//! resources and on BROKER resources (the dynamic broker configs).

use std::collections::BTreeMap;

use super::topics::internal_topic_refused;
use super::{rec, ControlResponse, Decision};
use crate::config::{
    dynamic_broker_config, is_internal_topic, topic_config, validate_broker_config,
    validate_topic_config, ConfigDef, ConfigType,
};
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

/// What may be set on one resource: its current overrides, and its keys' definitions and
/// value checks.
struct Resource<'a> {
    current: Option<&'a BTreeMap<String, String>>,
    lookup: fn(&str) -> Result<&'static ConfigDef, ControlError>,
    validate: fn(&str, &str) -> Result<(), ControlError>,
}

fn topic_key(key: &str) -> Result<&'static ConfigDef, ControlError> {
    topic_config(key).ok_or_else(|| {
        // The full reason (refused or unknown) names the key.
        validate_topic_config(key, "")
            .err()
            .unwrap_or_else(|| ControlError::InvalidConfig(format!("unknown topic config '{key}'")))
    })
}

fn broker_key(key: &str) -> Result<&'static ConfigDef, ControlError> {
    dynamic_broker_config(key).ok_or_else(|| {
        validate_broker_config(key, "").err().unwrap_or_else(|| {
            ControlError::InvalidConfig(format!("unknown dynamic broker config '{key}'"))
        })
    })
}

/// The resource `res` names, if it may be altered. A BROKER resource is a broker id (its own
/// overrides) or "" (every broker's default); as in Kafka, the id need not be registered yet.
fn resource<'a>(
    image: &'a MetadataImage,
    res: &ConfigAlteration,
) -> Result<Resource<'a>, ControlError> {
    let name = &res.resource_name;
    match res.resource_type {
        ConfigResourceType::ConfigResourceTopic => {
            if image.topic(name).is_none() {
                return Err(ControlError::UnknownTopicOrPartition(name.clone()));
            }
            if is_internal_topic(name) {
                return Err(internal_topic_refused(name, "reconfigured by clients"));
            }
            Ok(Resource {
                current: image.topic_configs(name),
                lookup: topic_key,
                validate: validate_topic_config,
            })
        }
        ConfigResourceType::ConfigResourceBroker => {
            if !name.is_empty() {
                let id: i32 = name.parse().map_err(|_| {
                    ControlError::InvalidRequest(format!(
                        "broker resource '{name}' is not a broker id (a base 10 number) nor \"\" \
                         (the default of every broker)"
                    ))
                })?;
                if id < 0 {
                    return Err(ControlError::InvalidRequest(format!(
                        "broker resource '{name}': a broker id is not negative"
                    )));
                }
            }
            Ok(Resource {
                current: image.configs.get(&(res.resource_type as i32, name.clone())),
                lookup: broker_key,
                validate: validate_broker_config,
            })
        }
        ConfigResourceType::ConfigResourceUnknown => {
            Err(ControlError::InvalidRequest("unknown config resource type".into()))
        }
    }
}

fn alter_one(
    image: &MetadataImage,
    res: &ConfigAlteration,
    incremental: bool,
) -> Result<BTreeMap<String, Option<String>>, ControlError> {
    let resource = resource(image, res)?;
    let current = resource.current.cloned().unwrap_or_default();
    // key → new value (None: delete the override)
    let mut changes: BTreeMap<String, Option<String>> = BTreeMap::new();
    if !incremental {
        for k in current.keys() {
            changes.insert(k.clone(), None);
        }
    }
    for (key, op, value) in &res.ops {
        let def = (resource.lookup)(key)?;
        let new = match op {
            AlterConfigOp::Set => {
                let v = value.clone().ok_or_else(|| {
                    ControlError::InvalidConfig(format!("{key}: SET needs a value"))
                })?;
                (resource.validate)(key, &v)?;
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
                (resource.validate)(key, &v)?;
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
            let current = image.configs.get(&(res.resource_type as i32, res.resource_name.clone()));
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
