//! FindCoordinator: the coordinator of a group is the leader of its `__consumer_offsets`
//! partition, that of a transactional id the leader of its `__transaction_state` partition;
//! each topic is created on its first lookup, as Kafka does. (librdkafka also takes the API's
//! presence as the sign of a broker new enough for KIP-57 LZ4 framing.)

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use strom_metadata::PartitionImage;

use super::{groups, s};
use crate::errors::KafkaError;
use crate::group::{ensure_offsets_topic, OFFSETS_TOPIC};
use crate::txn::{ensure_txn_topic, TxnCoordinator, TXN_TOPIC};
use crate::BrokerCtx;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// (node id, host, port) of a key's coordinator, or (error, message).
type Found = Result<(i32, String, i32), (KafkaError, Option<String>)>;

fn find(ctx: &BrokerCtx, key_type: i8, key: &str) -> Found {
    let not_available = || (KafkaError::CoordinatorNotAvailable, None);
    let (topic, partition) = match key_type {
        KEY_TYPE_GROUP => (OFFSETS_TOPIC, groups::coordinator_partition(ctx, key)),
        KEY_TYPE_TRANSACTION => (TXN_TOPIC, TxnCoordinator::partition_of(ctx, key)),
        other => {
            return Err((KafkaError::InvalidRequest, Some(format!("unknown key type {other}"))))
        }
    };
    let partition = partition.ok_or_else(not_available)?;
    let image = ctx.image.current();
    let leader = image
        .partition(topic, partition)
        .and_then(|p: &PartitionImage| p.leader)
        .ok_or_else(not_available)?;
    let endpoint = image
        .brokers
        .get(&leader)
        .filter(|_| image.is_live(leader))
        .and_then(|b| b.endpoint(super::metadata::LISTENER).cloned())
        .ok_or_else(not_available)?;
    Ok((leader.0, endpoint.host, endpoint.port as i32))
}

pub(crate) async fn handle(
    ctx: &BrokerCtx,
    version: i16,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    match req.key_type {
        KEY_TYPE_GROUP => ensure_offsets_topic(ctx).await,
        KEY_TYPE_TRANSACTION => ensure_txn_topic(ctx).await,
        _ => {}
    }
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        resp.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key.clone());
                match find(ctx, req.key_type, &key) {
                    Ok((node, host, port)) => {
                        c.with_node_id(BrokerId(node)).with_host(s(host)).with_port(port)
                    }
                    Err((error, message)) => c
                        .with_node_id(BrokerId(-1))
                        .with_host(StrBytes::default())
                        .with_port(-1)
                        .with_error_code(error.into())
                        .with_error_message(message.map(s)),
                }
            })
            .collect();
    } else {
        match find(ctx, req.key_type, &req.key) {
            Ok((node, host, port)) => {
                resp.node_id = BrokerId(node);
                resp.host = s(host);
                resp.port = port;
            }
            Err((error, message)) => {
                resp.error_code = error.into();
                resp.node_id = BrokerId(-1);
                resp.port = -1;
                if version >= 1 {
                    resp.error_message = message.map(s);
                }
            }
        }
    }
    resp
}
