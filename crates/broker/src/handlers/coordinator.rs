//! FindCoordinator. Group and transaction coordination are not served yet (the consumer-group
//! issue builds them), so every key gets COORDINATOR_NOT_AVAILABLE, which clients retry.
//! The API is advertised anyway: librdkafka takes its presence as the sign of a broker new
//! enough for KIP-57 LZ4 framing, and sends uncompressed batches to a broker without it.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError as K;

use super::s;

const NOT_SERVED: &str = "group and transaction coordination are not served by this broker yet";

pub(crate) fn handle(version: i16, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
    let code = K::CoordinatorNotAvailable.code();
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        resp.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(code)
                    .with_error_message(Some(s(NOT_SERVED)))
            })
            .collect();
    } else {
        resp.error_code = code;
        resp.node_id = BrokerId(-1);
        resp.port = -1;
        if version >= 1 {
            resp.error_message = Some(s(NOT_SERVED));
        }
    }
    resp
}
