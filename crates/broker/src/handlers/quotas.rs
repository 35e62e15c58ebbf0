//! DescribeClientQuotas (Kafka API 48), answered from this broker's metadata image as KRaft
//! brokers do, and AlterClientQuotas (API 49), decided by the active controller.

use kafka_protocol::messages::{
    alter_client_quotas_response, describe_client_quotas_response, AlterClientQuotasRequest,
    AlterClientQuotasResponse, DescribeClientQuotasRequest, DescribeClientQuotasResponse,
};
use strom_metadata::control::{
    AlterClientQuotasRequest as AlterReq, ControlRequest, ControlResponse, QuotaAlteration,
};
use strom_metadata::quotas::{describe, QuotaMatch, CLIENT_ID, IP, USER};
use strom_metadata::ControlError;

use super::s;
use crate::errors::KafkaError;
use crate::BrokerCtx;

const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_ANY: i8 = 2;

/// The filter's components, refused as Kafka refuses them (INVALID_REQUEST): an unknown
/// entity type or match type, a type given twice, an exact match without a name.
fn components(req: &DescribeClientQuotasRequest) -> Result<Vec<(String, QuotaMatch)>, String> {
    let mut out: Vec<(String, QuotaMatch)> = Vec::with_capacity(req.components.len());
    for c in &req.components {
        let entity_type = c.entity_type.to_string();
        if ![USER, CLIENT_ID, IP].contains(&entity_type.as_str()) {
            return Err(format!("unknown client quota entity type '{entity_type}'"));
        }
        if out.iter().any(|(t, _)| *t == entity_type) {
            return Err(format!("entity type '{entity_type}' given twice"));
        }
        let how = match (c.match_type, &c._match) {
            (MATCH_EXACT, Some(name)) => QuotaMatch::Exact(name.to_string()),
            (MATCH_EXACT, None) => {
                return Err(format!("exact match of {entity_type} needs a name"))
            }
            (MATCH_DEFAULT, _) => QuotaMatch::Default,
            (MATCH_ANY, _) => QuotaMatch::Any,
            (other, _) => return Err(format!("unknown match type {other}")),
        };
        out.push((entity_type, how));
    }
    Ok(out)
}

pub(crate) fn describe_client_quotas(
    ctx: &BrokerCtx,
    req: &DescribeClientQuotasRequest,
) -> DescribeClientQuotasResponse {
    let components = match components(req) {
        Ok(c) => c,
        Err(why) => {
            return DescribeClientQuotasResponse::default()
                .with_error_code(KafkaError::InvalidRequest.into())
                .with_error_message(Some(s(why)))
        }
    };
    let image = ctx.image.current();
    let entries = describe(&image.client_quotas, &components, req.strict)
        .map(|(entity, values)| {
            describe_client_quotas_response::EntryData::default()
                .with_entity(
                    entity
                        .iter()
                        .map(|(t, n)| {
                            describe_client_quotas_response::EntityData::default()
                                .with_entity_type(s(t.clone()))
                                .with_entity_name(n.clone().map(s))
                        })
                        .collect(),
                )
                .with_values(
                    values
                        .iter()
                        .map(|(k, v)| {
                            describe_client_quotas_response::ValueData::default()
                                .with_key(s(k.clone()))
                                .with_value(v.0)
                        })
                        .collect(),
                )
        })
        .collect();
    DescribeClientQuotasResponse::default().with_entries(Some(entries))
}

pub(crate) async fn alter_client_quotas(
    ctx: &BrokerCtx,
    req: AlterClientQuotasRequest,
) -> AlterClientQuotasResponse {
    let entries: Vec<QuotaAlteration> = req
        .entries
        .iter()
        .map(|e| QuotaAlteration {
            entity: e
                .entity
                .iter()
                .map(|p| (p.entity_type.to_string(), p.entity_name.as_ref().map(|n| n.to_string())))
                .collect(),
            ops: e
                .ops
                .iter()
                .map(|op| (op.key.to_string(), (!op.remove).then_some(op.value)))
                .collect(),
        })
        .collect();
    let request = AlterReq { entries: entries.clone(), validate_only: req.validate_only };
    let results: Vec<Result<(), ControlError>> =
        match ctx.controller.submit(ControlRequest::AlterClientQuotas(request)).await {
            Ok(ControlResponse::AlterClientQuotas(r)) if r.len() == entries.len() => r,
            Ok(other) => {
                let e = ControlError::ControllerUnavailable(format!("unexpected answer {other:?}"));
                vec![Err(e); entries.len()]
            }
            Err(e) => vec![Err(e); entries.len()],
        };
    let answers = entries
        .iter()
        .zip(results)
        .map(|(entry, result)| {
            let entity = entry.entity.clone();
            let (code, message) = match &result {
                Ok(()) => (0, None),
                Err(e) => (KafkaError::from(e).into(), Some(s(e.to_string()))),
            };
            alter_client_quotas_response::EntryData::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_entity(
                    entity
                        .into_iter()
                        .map(|(t, n)| {
                            alter_client_quotas_response::EntityData::default()
                                .with_entity_type(s(t))
                                .with_entity_name(n.map(s))
                        })
                        .collect(),
                )
        })
        .collect();
    AlterClientQuotasResponse::default().with_entries(answers)
}
