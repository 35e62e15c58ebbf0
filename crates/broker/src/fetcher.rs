//! The follower side of replication: a task per followed partition that copies the leader's
//! log with Kafka's own Fetch API (`replica_id` set), after cutting any divergent suffix with
//! OffsetsForLeaderEpoch, and fsyncs before fetching again so that its fetch offset tells the
//! leader how much it holds durably.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::ResponseError as K;
use strom_metadata::NodeId;
use tokio::sync::watch;

use crate::handlers::{metadata::LISTENER, s};
use crate::partition::Partition;
use crate::peer::PeerConn;
use crate::BrokerCtx;

const FETCH_VERSION: i16 = 11;
const EPOCH_VERSION: i16 = 3;
/// Long-poll of a replica fetch: short enough to notice a leader change quickly.
const REPLICA_FETCH_WAIT_MS: i32 = 500;
/// `replica.fetch.max.bytes` (Kafka's default).
const REPLICA_FETCH_MAX_BYTES: i32 = 1_048_576;
/// `replica.fetch.response.max.bytes` (Kafka's default).
const REPLICA_FETCH_RESPONSE_MAX_BYTES: i32 = 10 * 1_048_576;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);

/// Why a fetch session with the leader ended.
enum Stop {
    /// The role changed: this task is done.
    Stopped,
    /// Reconnect (after a pause) and truncate again.
    Retry(String),
}

/// Follows `leader` for `part` until `stop` fires (a new role or epoch).
pub(crate) async fn follow(
    ctx: Arc<BrokerCtx>,
    part: Arc<Partition>,
    leader: NodeId,
    leader_epoch: i32,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let outcome = tokio::select! {
            o = session(&ctx, &part, leader, leader_epoch) => o,
            _ = stop.changed() => Stop::Stopped,
        };
        match outcome {
            Stop::Stopped => return,
            Stop::Retry(why) => {
                tracing::debug!(topic = %part.topic, partition = part.index, leader = leader.0, "replica fetch: {why}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn leader_addr(ctx: &BrokerCtx, leader: NodeId) -> Option<String> {
    let image = ctx.image.current();
    let e = image.brokers.get(&leader)?.endpoint(LISTENER)?;
    Some(format!("{}:{}", e.host, e.port))
}

async fn session(
    ctx: &BrokerCtx,
    part: &Arc<Partition>,
    leader: NodeId,
    leader_epoch: i32,
) -> Stop {
    let Some(addr) = leader_addr(ctx, leader) else {
        return Stop::Retry(format!("leader {} has no {LISTENER} endpoint", leader.0));
    };
    let mut conn = match PeerConn::connect(&addr).await {
        Ok(c) => c,
        Err(e) => return Stop::Retry(e),
    };
    let me = ctx.image.node;
    let client_id = format!("strom-replica-{}", me.0);
    if let Err(why) = truncate(&mut conn, &client_id, part, me, leader_epoch).await {
        return Stop::Retry(why);
    }
    loop {
        let (fetch_offset, log_start) = match part.log() {
            Ok(l) => (l.log_end_offset(), l.log_start_offset()),
            Err(e) => return Stop::Retry(e.to_string()),
        };
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(me.0))
            .with_max_wait_ms(REPLICA_FETCH_WAIT_MS)
            .with_min_bytes(1)
            .with_max_bytes(REPLICA_FETCH_RESPONSE_MAX_BYTES)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(s(part.topic.clone())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(part.index)
                    .with_current_leader_epoch(leader_epoch)
                    .with_fetch_offset(fetch_offset)
                    .with_log_start_offset(log_start)
                    .with_partition_max_bytes(REPLICA_FETCH_MAX_BYTES)])]);
        let resp: FetchResponse =
            match conn.call(ApiKey::Fetch, FETCH_VERSION, &req, &client_id).await {
                Ok(r) => r,
                Err(e) => return Stop::Retry(e),
            };
        let Some(data) = resp
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == part.index)
        else {
            return Stop::Retry("fetch response without our partition".into());
        };
        match K::try_from_code(data.error_code) {
            None => {}
            Some(K::OffsetOutOfRange) => {
                // The leader's log starts after ours ends (retention): start over from there.
                tracing::warn!(topic = %part.topic, partition = part.index, fetch_offset, "replica fetch offset out of range; resetting");
                return Stop::Retry("offset out of range".into());
            }
            Some(e) => return Stop::Retry(format!("leader answered {e:?}")),
        }
        let records = data.records.unwrap_or_default();
        if !records.is_empty() {
            match part.append_as_follower(&records, leader, leader_epoch) {
                Ok(Some(_)) => {}
                Ok(None) => return Stop::Retry("no longer following this leader".into()),
                Err(e) => return Stop::Retry(format!("append: {e}")),
            }
            // Durable before the next fetch reports the new end offset to the leader.
            let p = part.clone();
            match tokio::task::spawn_blocking(move || p.flush_now()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Stop::Retry(format!("flush: {e}")),
                Err(e) => return Stop::Retry(format!("flush task: {e}")),
            }
        }
        part.set_follower_hw(data.high_watermark);
    }
}

/// Cuts whatever this replica has beyond the leader's log for our latest epoch.
async fn truncate(
    conn: &mut PeerConn,
    client_id: &str,
    part: &Arc<Partition>,
    me: NodeId,
    leader_epoch: i32,
) -> Result<(), String> {
    let latest = part.log().map_err(|e| e.to_string())?.leader_epoch_entries().last().copied();
    let Some((epoch, _)) = latest else { return Ok(()) };
    let req =
        OffsetForLeaderEpochRequest::default().with_replica_id(BrokerId(me.0)).with_topics(vec![
            OffsetForLeaderTopic::default()
                .with_topic(TopicName(s(part.topic.clone())))
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(part.index)
                    .with_current_leader_epoch(leader_epoch)
                    .with_leader_epoch(epoch)]),
        ]);
    let resp: OffsetForLeaderEpochResponse =
        conn.call(ApiKey::OffsetForLeaderEpoch, EPOCH_VERSION, &req, client_id).await?;
    let r = resp
        .topics
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition == part.index)
        .ok_or("OffsetsForLeaderEpoch response without our partition")?;
    if r.error_code != 0 {
        return Err(format!("OffsetsForLeaderEpoch error {}", r.error_code));
    }
    // An undefined answer means the leader knows none of our epochs: keep only what is
    // committed (Kafka truncates to the high watermark in that case too).
    let to = if r.end_offset >= 0 { r.end_offset } else { part.progress().high_watermark };
    part.truncate_to(to).map_err(|e| e.to_string())?;
    Ok(())
}
