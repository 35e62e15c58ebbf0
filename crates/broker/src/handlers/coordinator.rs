//! FindCoordinator: the coordinator of a group is the leader of its `__consumer_offsets`
//! partition, created on the first lookup as Kafka does. Transactions are not served, so a
//! transactional key gets COORDINATOR_NOT_AVAILABLE with a message saying so.
//! (librdkafka also takes the API's presence as the sign of a broker new enough for KIP-57 LZ4
//! framing.)

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use strom_metadata::PartitionImage;

use super::{groups, s};
use crate::errors::KafkaError;
use crate::group::{ensure_offsets_topic, OFFSETS_TOPIC};
use crate::BrokerCtx;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
const NO_TRANSACTIONS: &str = "transactions are not served by this broker";

/// (node id, host, port) of a key's coordinator, or (error, message).
type Found = Result<(i32, String, i32), (KafkaError, Option<String>)>;

fn find(ctx: &BrokerCtx, key_type: i8, key: &str) -> Found {
    match key_type {
        KEY_TYPE_GROUP => {}
        KEY_TYPE_TRANSACTION => {
            return Err((KafkaError::CoordinatorNotAvailable, Some(NO_TRANSACTIONS.to_owned())))
        }
        other => {
            return Err((KafkaError::InvalidRequest, Some(format!("unknown key type {other}"))))
        }
    }
    let not_available = || (KafkaError::CoordinatorNotAvailable, None);
    let partition = groups::coordinator_partition(ctx, key).ok_or_else(not_available)?;
    let image = ctx.image.current();
    let leader = image
        .partition(OFFSETS_TOPIC, partition)
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
    if req.key_type == KEY_TYPE_GROUP {
        ensure_offsets_topic(ctx).await;
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
