//! A request/response connection to another broker's Kafka listener (its inter-broker
//! listener when there is one), with kafka-protocol's codecs: what followers fetch with and
//! what the admin API asks brokers through.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};
use strom_protocol::request::{decode_response, encode_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response frame accepted.
const RESPONSE_FRAME_MAX: usize = 64 * 1_048_576;
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `host:port` of `node`'s inter-broker endpoint (`inter.broker.listener.name`), where this
/// broker asks other brokers; their client listener when this broker has no inter-broker
/// listener of its own or `node` registered none.
pub(crate) fn broker_addr(
    config: &crate::BrokerConfig,
    image: &strom_metadata::MetadataImage,
    node: strom_metadata::NodeId,
) -> Option<String> {
    let broker = image.brokers.get(&node)?;
    let e = config
        .inter_broker
        .as_ref()
        .and_then(|l| broker.endpoint(&l.name))
        .or_else(|| broker.endpoint(crate::handlers::metadata::LISTENER))?;
    Some(format!("{}:{}", e.host, e.port))
}

/// Why the leader of a partition cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaderUnreachable {
    UnknownPartition,
    NoLeader,
    /// The leader registered no endpoint this broker can reach.
    EndpointMissing(strom_metadata::NodeId),
}

/// The leader of `topic`-`partition` in `image` and where this broker asks it.
pub(crate) fn leader_endpoint(
    config: &crate::BrokerConfig,
    image: &strom_metadata::MetadataImage,
    topic: &str,
    partition: i32,
) -> Result<(strom_metadata::NodeId, String), LeaderUnreachable> {
    let p = image.partition(topic, partition).ok_or(LeaderUnreachable::UnknownPartition)?;
    let leader = p.leader.ok_or(LeaderUnreachable::NoLeader)?;
    let addr =
        broker_addr(config, image, leader).ok_or(LeaderUnreachable::EndpointMissing(leader))?;
    Ok((leader, addr))
}

/// Sends `req` to every live broker of `image` at once, one connection each: each broker's
/// answer, or why it could not be asked (prefixed with its address once it has one).
pub(crate) async fn ask_every_live_broker<Req: Encodable + Sync, Resp: Decodable>(
    config: &crate::BrokerConfig,
    image: &strom_metadata::MetadataImage,
    key: ApiKey,
    version: i16,
    req: &Req,
    client_id: &str,
) -> Vec<(strom_metadata::NodeId, Result<Resp, String>)> {
    let asks = image.live_brokers().map(|b| {
        let (id, addr) = (b.id, broker_addr(config, image, b.id));
        async move {
            let Some(addr) = addr else {
                return (id, Err("no endpoint this broker can reach".to_owned()));
            };
            let answer = async {
                let mut conn = PeerConn::connect(&addr).await?;
                conn.call(key, version, req, client_id).await
            };
            (id, answer.await.map_err(|e| format!("{addr}: {e}")))
        }
    });
    futures::future::join_all(asks).await
}

/// One request/response connection to a broker.
pub struct PeerConn {
    stream: TcpStream,
    correlation: i32,
}

impl PeerConn {
    pub async fn connect(addr: &str) -> Result<PeerConn, String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(PeerConn { stream, correlation: 0 })
    }

    /// Sends a request that is not answered (Produce with acks=0).
    pub async fn send<Req: Encodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
        client_id: &str,
    ) -> Result<(), String> {
        self.correlation = self.correlation.wrapping_add(1);
        let frame = encode_request(key, version, self.correlation, client_id, req)?;
        tokio::time::timeout(CALL_TIMEOUT, self.stream.write_all(&frame))
            .await
            .map_err(|_| format!("{key:?} timed out"))?
            .map_err(|e| e.to_string())
    }

    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
        client_id: &str,
    ) -> Result<Resp, String> {
        self.call_within(key, version, req, client_id, CALL_TIMEOUT).await
    }

    /// [`PeerConn::call`] for a request the peer may take longer than usual to answer (it
    /// waits for replication). After an error the connection is out of step: drop it.
    pub async fn call_within<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
        client_id: &str,
        timeout: std::time::Duration,
    ) -> Result<Resp, String> {
        self.correlation = self.correlation.wrapping_add(1);
        let frame = encode_request(key, version, self.correlation, client_id, req)?;
        let exchange = async {
            self.stream.write_all(&frame).await.map_err(|e| e.to_string())?;
            let mut prefix = [0u8; 4];
            self.stream.read_exact(&mut prefix).await.map_err(|e| e.to_string())?;
            let len = i32::from_be_bytes(prefix);
            if len < 0 || len as usize > RESPONSE_FRAME_MAX {
                return Err(format!("response frame length {len} out of bounds"));
            }
            let mut buf = BytesMut::zeroed(len as usize);
            self.stream.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<Bytes, String>(buf.freeze())
        };
        let body = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("{key:?} timed out"))??;
        let (correlation, resp) = decode_response::<Resp>(key, version, body)?;
        if correlation != self.correlation {
            return Err(format!("correlation id {correlation}, expected {}", self.correlation));
        }
        Ok(resp)
    }
}
