//! AlterClientQuotas (Kafka API 49): each entry's entity and operations are checked as
//! Kafka's quota control manager checks them (INVALID_REQUEST otherwise), and a valid entry
//! becomes one `ClientQuotaRecord` per changed key.

use super::{rec, ControlResponse, Decision};
use crate::quotas::{QuotaEntity, CLIENT_ID, CLIENT_QUOTA_KEYS, IP, USER};
use crate::records::metadata_record::Record;
use crate::records::{ClientQuotaRecord, QuotaEntityPart};
use crate::{ControlError, MetadataImage};

/// One entry of an AlterClientQuotas request.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaAlteration {
    /// (entity type, name); a name `None` is the type's default.
    pub entity: Vec<(String, Option<String>)>,
    /// (key, value to set, or `None` to remove the key).
    pub ops: Vec<(String, Option<f64>)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlterClientQuotasRequest {
    pub entries: Vec<QuotaAlteration>,
    pub validate_only: bool,
}

/// The entity's parts as records carry them, in the entity's (type) order.
pub fn quota_entity_parts(entity: &QuotaEntity) -> Vec<QuotaEntityPart> {
    entity
        .iter()
        .map(|(t, n)| QuotaEntityPart { entity_type: t.clone(), entity_name: n.clone() })
        .collect()
}

fn invalid(why: String) -> ControlError {
    ControlError::InvalidRequest(why)
}

/// The entity of an entry, refused if empty, with a repeated or unknown type, or an `ip`
/// entity (connection-rate quotas are not implemented).
pub fn quota_entity(parts: &[(String, Option<String>)]) -> Result<QuotaEntity, ControlError> {
    if parts.is_empty() {
        return Err(invalid("a client quota entity needs at least one entity type".into()));
    }
    let mut entity = QuotaEntity::new();
    for (entity_type, name) in parts {
        match entity_type.as_str() {
            USER | CLIENT_ID => {}
            IP => {
                return Err(invalid(
                    "ip quotas (connection_creation_rate) are not supported by strom".into(),
                ))
            }
            other => return Err(invalid(format!("unknown client quota entity type '{other}'"))),
        }
        if name.as_deref() == Some("") {
            return Err(invalid(format!(
                "empty {entity_type} name: a default entity has no name (null)"
            )));
        }
        if entity.insert(entity_type.clone(), name.clone()).is_some() {
            return Err(invalid(format!("entity type '{entity_type}' given twice")));
        }
    }
    Ok(entity)
}

fn check_op(key: &str, value: Option<f64>) -> Result<(), ControlError> {
    let Some(&(_, whole)) = CLIENT_QUOTA_KEYS.iter().find(|(k, _)| *k == key) else {
        return Err(invalid(format!("unknown client quota key '{key}'")));
    };
    let Some(value) = value else { return Ok(()) };
    if !value.is_finite() || value <= 0.0 {
        return Err(invalid(format!("{key} must be a positive number, not {value}")));
    }
    if whole && value.fract() != 0.0 {
        return Err(invalid(format!("{key} must be a whole number of bytes, not {value}")));
    }
    Ok(())
}

fn alter_one(
    image: &MetadataImage,
    entry: &QuotaAlteration,
) -> Result<Vec<ClientQuotaRecord>, ControlError> {
    let entity = quota_entity(&entry.entity)?;
    let current = image.client_quotas.get(&entity);
    let mut records = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (key, value) in &entry.ops {
        check_op(key, *value)?;
        if !seen.insert(key.as_str()) {
            return Err(invalid(format!("key '{key}' given twice")));
        }
        let existing = current.and_then(|c| c.get(key)).map(|v| v.0);
        if existing == *value {
            continue;
        }
        records.push(ClientQuotaRecord {
            entity: quota_entity_parts(&entity),
            key: key.clone(),
            value: value.unwrap_or(0.0),
            remove: value.is_none(),
        });
    }
    Ok(records)
}

pub(super) fn alter_client_quotas(
    image: &MetadataImage,
    req: &AlterClientQuotasRequest,
) -> Decision {
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(req.entries.len());
    for entry in &req.entries {
        let result = alter_one(image, entry).map(|changes| {
            if !req.validate_only {
                records.extend(changes.into_iter().map(|r| rec(Record::ClientQuota(r))));
            }
        });
        results.push(result);
    }
    Decision { records, response: ControlResponse::AlterClientQuotas(results) }
}
