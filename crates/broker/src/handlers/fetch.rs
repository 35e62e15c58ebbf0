//! Fetch: serves stored batches up to the high watermark without decoding them, and
//! long-polls until `min_bytes` have arrived or `max_wait_ms` has passed.
//!
//! Requests run in fetch sessions (KIP-227, `fetch_session`): a FULL request answers every
//! partition it names and may create a session; an INCREMENTAL one checks only the session's
//! partitions that changed since its last fetch (they marked themselves), the ones it names
//! and the ones in error, and answers those whose answer changed, so that an idle session
//! costs the same whatever its size. A waiting fetch wakes on its session's one signal.
//!
//! A response holds at most `fetch.max.bytes` of records, filled as KIP-74 says ([`Budget`]).
//! The checks run under the partitions' locks without IO; the reads run on blocking threads,
//! each after reserving its bytes from the connection's and the broker's bounds
//! (`fetch_memory`). A follower's fetch is checked in full before it counts as the follower's
//! progress.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, ProducerId, TopicName};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use strom_metadata::{MetadataImage, NodeId, PartitionImage, TopicId};
use strom_protocol::batch::Batches;
use strom_protocol::request::{encode_response_sharing, SHARED_BYTES_MIN};
use uuid::Uuid;

use strom_log::ReadStart;

use super::Meta;
use super::{check_leader, leader_hint, local_partition};
use crate::errors::KafkaError;
use crate::fetch_memory::{reserved_bytes, ConnectionMemory, FetchMemory, Reservation};
use crate::fetch_session::{
    Answered, Checked, CloseOnDrop, FetchParams, Open, PartitionKey, SessionError, SessionRequest,
    SessionSignal, TopicKey, FINAL_EPOCH, INVALID_SESSION_ID,
};
use crate::isr::FollowerFetchRefused;
use crate::replication_quota::Side;
use crate::wire::s;
use crate::BrokerCtx;

/// The longest long-poll a request may ask for.
const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);

fn error_partition(index: i32, error: KafkaError) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(error.into())
        .with_high_watermark(-1)
        .with_records(Some(Bytes::new()))
}

/// KIP-74's response limit: partitions are filled in request order, each up to its
/// `partition_max_bytes` and to what is left of the response's limit, whole batches only; only
/// the first batch of the first partition that returns data may go beyond either limit, so
/// that a consumer always progresses. A pure function of the sizes it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    remaining: usize,
    /// No partition has returned data yet.
    min_one: bool,
}

impl Budget {
    /// The limit is the request's `max_bytes` (none or negative: nothing beyond the first
    /// batch) capped by the broker's `fetch.max.bytes`.
    pub fn new(request_max_bytes: i32, fetch_max_bytes: usize) -> Budget {
        Budget {
            remaining: (request_max_bytes.max(0) as usize).min(fetch_max_bytes),
            min_one: true,
        }
    }

    /// The bytes to read from a partition whose first batch is `first_len` bytes long (0: no
    /// batch to serve) and which has `available` bytes from it to the end of its segment. The
    /// log keeps the whole batches of what is read, so the partition takes at most this.
    pub fn read_len(&self, partition_max_bytes: i32, first_len: usize, available: usize) -> usize {
        if first_len == 0 {
            return 0;
        }
        let limit = (partition_max_bytes.max(0) as usize).min(self.remaining);
        if limit >= first_len {
            limit.min(available)
        } else if self.min_one {
            first_len
        } else {
            0
        }
    }

    /// A partition returned `bytes` of batches.
    pub fn spend(&mut self, bytes: usize) {
        self.remaining = self.remaining.saturating_sub(bytes);
        if bytes > 0 {
            self.min_one = false;
        }
    }
}

/// One partition a pass checks, as the request or its session names it.
#[derive(Clone, Debug)]
struct Ask {
    key: PartitionKey,
    params: FetchParams,
}

/// The request's partitions in request order, keyed as its session keys them (by topic id
/// from v13 on).
fn request_asks(version: i16, req: &FetchRequest) -> Vec<Ask> {
    let mut asks = Vec::new();
    for t in &req.topics {
        let topic = topic_key(version, &t.topic, t.topic_id);
        for fp in &t.partitions {
            asks.push(Ask {
                key: PartitionKey { topic: topic.clone(), partition: fp.partition },
                params: FetchParams {
                    fetch_offset: fp.fetch_offset,
                    partition_max_bytes: fp.partition_max_bytes,
                    // v9 added current_leader_epoch: older requests carry no claim to check.
                    current_leader_epoch: if version >= 9 { fp.current_leader_epoch } else { -1 },
                    log_start_offset: fp.log_start_offset,
                },
            });
        }
    }
    asks
}

fn topic_key(version: i16, name: &TopicName, id: Uuid) -> TopicKey {
    if version >= 13 {
        TopicKey::Id(TopicId(*id.as_bytes()))
    } else {
        TopicKey::Name(Arc::from(name.as_str()))
    }
}

/// The request as its session sees it (sessions exist from v7 on).
fn session_request(
    version: i16,
    req: &FetchRequest,
    replica: Option<(NodeId, i64)>,
    asks: &[Ask],
) -> SessionRequest {
    let (session_id, epoch) =
        if version >= 7 { (req.session_id, req.session_epoch) } else { (0, FINAL_EPOCH) };
    let forgotten = req
        .forgotten_topics_data
        .iter()
        .flat_map(|t| {
            let topic = topic_key(version, &t.topic, t.topic_id);
            t.partitions
                .iter()
                .map(move |&partition| PartitionKey { topic: topic.clone(), partition })
        })
        .collect();
    SessionRequest {
        session_id,
        epoch,
        replica: replica.map(|(r, _)| r),
        uses_topic_ids: version >= 13,
        partitions: asks.iter().map(|a| (a.key.clone(), a.params)).collect(),
        forgotten,
    }
}

/// A partition whose checks passed and that has batches to serve: its read runs off the async
/// workers, after the lock.
struct PendingRead {
    /// Which ask of the pass it answers.
    ask: usize,
    start: ReadStart,
    partition_max_bytes: i32,
}

/// What a read produced: records, nothing at the fetch offset, or nothing because the
/// response had no room (or memory) left for this partition.
enum ReadOutcome {
    Records(Bytes),
    Nothing,
    NoRoom,
}

/// The reads of one pass, run in request order on a blocking thread; resumable when the
/// memory for the next read must be waited for.
struct ReadJob {
    reads: Vec<PendingRead>,
    next: usize,
    budget: Budget,
    /// Memory reserved (after a wait) for the read at `next`.
    granted: Option<Reservation>,
    /// (ask, what was read or the Kafka error), in request order.
    done: Vec<(usize, Result<ReadOutcome, KafkaError>)>,
}

impl ReadJob {
    /// Reads until done (`None`) or until the next read needs more memory than is free now
    /// (`Some(bytes)`: reserve that much and run again). File IO: call on a blocking thread.
    fn run(&mut self, memory: &FetchMemory, connection: &ConnectionMemory) -> Option<usize> {
        while let Some(read) = self.reads.get(self.next) {
            let outcome = (|| -> Result<_, KafkaError> {
                let Some(located) = read.start.locate()? else {
                    return Ok(Err(ReadOutcome::Nothing));
                };
                let available = usize::try_from(located.available()).unwrap_or(usize::MAX);
                let len =
                    self.budget.read_len(read.partition_max_bytes, located.first_len(), available);
                if len == 0 {
                    let none = if located.first_len() == 0 {
                        ReadOutcome::Nothing
                    } else {
                        ReadOutcome::NoRoom
                    };
                    return Ok(Err(none));
                }
                Ok(Ok((located, len)))
            })();
            let (located, len) = match outcome {
                Ok(Ok(found)) => found,
                Ok(Err(none)) => {
                    self.done.push((read.ask, Ok(none)));
                    self.next += 1;
                    continue;
                }
                Err(e) => {
                    self.done.push((read.ask, Err(e)));
                    self.next += 1;
                    continue;
                }
            };
            let reservation = match self.granted.take() {
                Some(r) if r.bytes() >= len => r,
                _ => match memory.try_reserve(connection, len) {
                    Some(r) => r,
                    None => return Some(len),
                },
            };
            let records = match located.read(len) {
                Ok(data) => {
                    let records = reserved_bytes(data, reservation);
                    self.budget.spend(records.len());
                    Ok(ReadOutcome::Records(records))
                }
                Err(e) => Err(e.into()),
            };
            self.done.push((read.ask, records));
            self.next += 1;
        }
        None
    }
}

/// How a partition's read went, for its session.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Served {
    Records,
    Nothing,
    NoRoom,
}

/// What the partition checks of one pass produced.
struct Pass {
    resp: FetchResponse,
    /// Where each ask's `PartitionData` is in the response (topic, partition).
    at: Vec<(usize, usize)>,
    reads: Vec<PendingRead>,
    any_error: bool,
    /// Asks whose records count against this leader's replication throttle.
    throttled: Vec<usize>,
    /// Throttled asks left unread because the throttle is exceeded (checked again next time).
    held: Vec<usize>,
}

/// What a Fetch asks besides its partitions.
#[derive(Clone, Copy)]
struct FetchSpec {
    version: i16,
    /// The follower that fetches and its broker epoch (-1: not sent).
    replica: Option<(NodeId, i64)>,
    isolation_level: i8,
    max_bytes: i32,
}

/// The checks and bookkeeping of one pass over `asks`, under the partitions' locks and
/// without file IO; the reads are left in `Pass::reads`. Every partition that answers without
/// an error is subscribed to `signal`, so that its next change marks it there; one that errs
/// is not (errors are checked on every fetch anyway).
fn check_partitions(
    ctx: &BrokerCtx,
    image: &MetadataImage,
    spec: FetchSpec,
    asks: &[Ask],
    signal: &Arc<SessionSignal>,
) -> Pass {
    let FetchSpec { version, replica, .. } = spec;
    let node = ctx.image.node;
    let now = ctx.clock.now_ms();
    let mut any_error = false;
    let mut reads = Vec::new();
    let mut at = Vec::with_capacity(asks.len());
    let mut endpoints = std::collections::BTreeMap::new();
    let mut responses: Vec<FetchableTopicResponse> = Vec::new();
    let (mut throttled, mut held) = (Vec::new(), Vec::new());
    if replica.is_some() {
        ctx.replication_quotas.follow(image, ctx.config.node_id, now);
    }
    let throttles = replica.is_some() && ctx.replication_quotas.is_active(Side::Leader);
    for (ask_at, ask) in asks.iter().enumerate() {
        let same_topic = asks
            .get(ask_at.wrapping_sub(1))
            .is_some_and(|previous| ask_at > 0 && previous.key.topic == ask.key.topic);
        if !same_topic {
            let mut out = FetchableTopicResponse::default();
            match &ask.key.topic {
                TopicKey::Id(id) => out.topic_id = Uuid::from_bytes(id.0),
                TopicKey::Name(name) => out.topic = TopicName(s(name.to_string())),
            }
            responses.push(out);
        }
        let t_at = responses.len() - 1;
        let topic = match &ask.key.topic {
            TopicKey::Id(id) => image.topic_by_id(*id),
            TopicKey::Name(name) => image.topic(name),
        };
        let index = ask.key.partition;
        let fp = &ask.params;
        let mut part = None;
        let mut hold = false;
        let data = (|| {
            let topic = topic.ok_or(match ask.key.topic {
                TopicKey::Id(_) => KafkaError::UnknownTopicId,
                TopicKey::Name(_) => KafkaError::UnknownTopicOrPartition,
            })?;
            let claimed = fp.current_leader_epoch;
            let p = check_leader(topic.partitions.get(&index), node, claimed)?;
            let local = local_partition(ctx, image, &topic.name, index)?;
            part = Some(local.clone());
            if let Some((r, broker_epoch)) = replica {
                check_follower_fetch(image, p, r, broker_epoch, claimed)?;
                // Only now may the fetch offset count as the follower's durable end (and
                // move the high watermark); the partition checks the offset and the
                // follower again under its locks.
                local.on_follower_fetch(r, fp.fetch_offset, p.leader_epoch.0, now).map_err(
                    |refused| match refused {
                        FollowerFetchRefused::OffsetOutOfRange => KafkaError::OffsetOutOfRange,
                        FollowerFetchRefused::NotReplica => not_a_replica(claimed),
                    },
                )?;
                // Kafka's leader throttles a listed replica only while its follower is out of
                // the ISR (catching up, e.g. a reassignment's new replica).
                if throttles && !p.isr.contains(&r) {
                    let mut quotas = ctx.replication_quotas.state();
                    if quotas.is_throttled(Side::Leader, &topic.name, index, node) {
                        throttled.push(ask_at);
                        hold = quotas.wait_ms(Side::Leader, now) > 0;
                    }
                }
            }
            let progress = local.progress();
            if progress.offline {
                return Err(KafkaError::KafkaStorageError);
            }
            // Before the log is read: a change after this marks the partition again.
            local.subscribe(signal, &ask.key);
            let hw = progress.high_watermark;
            // Consumers read up to the high watermark (read_committed: up to the last
            // stable offset, before the oldest open transaction), followers up to the
            // log end.
            let log = local.log()?;
            let start = log.log_start_offset();
            let lso = log.first_unstable_offset().map_or(hw, |first| first.min(hw));
            let read_committed = replica.is_none() && spec.isolation_level == 1;
            let bound = match replica {
                Some(_) => log.log_end_offset(),
                None if read_committed => lso,
                None => hw,
            };
            let read = log.read_start(fp.fetch_offset, bound)?;
            // Trimmed to the data actually read once the read is done.
            let aborted = read_committed.then(|| {
                let aborted = log.aborted_transactions(fp.fetch_offset, lso);
                aborted.iter().map(aborted_transaction).collect()
            });
            drop(log);
            if let Some(read) = read {
                if hold {
                    held.push(ask_at);
                    return Ok(answer_without_records(index, hw, lso, start));
                }
                reads.push(PendingRead {
                    ask: ask_at,
                    start: read,
                    partition_max_bytes: fp.partition_max_bytes,
                });
            }
            Ok(answer_without_records(index, hw, lso, start).with_aborted_transactions(aborted))
        })();
        let d = data.unwrap_or_else(|error| {
            any_error = true;
            if let Some(part) = &part {
                part.unsubscribe(signal);
            }
            let mut d = error_partition(index, error);
            if error == KafkaError::OffsetOutOfRange && replica.is_some() {
                // A follower whose log ends before this log starts starts over at its start
                // (Kafka's follower asks with ListOffsets; strom's leader says it here).
                if let Some(start) =
                    part.as_ref().and_then(|p| p.log().ok()).map(|l| l.log_start_offset())
                {
                    d.log_start_offset = start;
                }
            }
            if version >= 12 {
                // KIP-951: name the current leader so the client can go straight there.
                let hint = topic.and_then(|t| leader_hint(image, &t.name, index, error));
                if let Some(hint) = hint {
                    d.current_leader = LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(hint.leader_id))
                        .with_leader_epoch(hint.leader_epoch);
                    if let Some((id, host, port, rack)) = hint.endpoint {
                        endpoints.insert(id, (host, port, rack));
                    }
                }
            }
            d
        });
        let partitions = &mut responses[t_at].partitions;
        at.push((t_at, partitions.len()));
        partitions.push(d);
    }
    let mut resp = FetchResponse::default().with_responses(responses);
    if version >= 16 {
        resp.node_endpoints = super::node_endpoints!(endpoints, NodeEndpoint);
    }
    Pass { resp, at, reads, any_error, throttled, held }
}

/// A partition's answer before its records are read (or when they are held back).
fn answer_without_records(index: i32, hw: i64, lso: i64, log_start: i64) -> PartitionData {
    let mut d = PartitionData::default()
        .with_partition_index(index)
        .with_high_watermark(hw)
        .with_last_stable_offset(lso)
        .with_records(Some(Bytes::new()));
    // Compared with what the session last told, whatever the version sends.
    d.log_start_offset = log_start;
    d
}

/// Kafka's answer to a fetch from a node that is not a replica of the partition: the node may
/// have just been added (KRaft reassignment), so a request that names the leader epoch is told
/// UNKNOWN_LEADER_EPOCH and retries; older requests get NOT_LEADER_OR_FOLLOWER.
fn not_a_replica(claimed_leader_epoch: i32) -> KafkaError {
    if claimed_leader_epoch >= 0 {
        KafkaError::UnknownLeaderEpoch
    } else {
        KafkaError::NotLeaderOrFollower
    }
}

/// A follower's fetch is from one of the partition's replicas (not this broker) and, when it
/// carries its broker epoch (v15+, KIP-903), from that broker's current registration: Kafka
/// refuses an epoch older than the registered one with NOT_LEADER_OR_FOLLOWER (a newer one
/// means this broker's metadata lags, and passes).
fn check_follower_fetch(
    image: &MetadataImage,
    partition: &PartitionImage,
    follower: NodeId,
    broker_epoch: i64,
    claimed_leader_epoch: i32,
) -> Result<(), KafkaError> {
    if partition.leader == Some(follower) || !partition.replicas.contains(&follower) {
        return Err(not_a_replica(claimed_leader_epoch));
    }
    let registered = image.brokers.get(&follower).map(|b| b.epoch.0);
    if broker_epoch != -1 && registered.is_some_and(|r| r > broker_epoch) {
        return Err(KafkaError::NotLeaderOrFollower);
    }
    Ok(())
}

/// One pass's response, the record bytes in it, whether a partition erred, and per ask how
/// it turned out for its session.
struct PassResult {
    resp: FetchResponse,
    at: Vec<(usize, usize)>,
    bytes: usize,
    any_error: bool,
    checked: Vec<Checked>,
}

/// One pass: the checks, then the reads off the async workers within the memory bounds.
/// When the memory for a read is not free (by `deadline` if the response has no records yet,
/// at once otherwise), that partition and the ones after it answer without records, as KIP-74
/// allows.
async fn read_once(
    ctx: &Arc<BrokerCtx>,
    connection: &ConnectionMemory,
    spec: FetchSpec,
    asks: &[Ask],
    signal: &Arc<SessionSignal>,
    deadline: tokio::time::Instant,
) -> PassResult {
    let image = ctx.image.current();
    let Pass { mut resp, at, reads, mut any_error, throttled, held } =
        check_partitions(ctx, &image, spec, asks, signal);
    let mut outcomes: Vec<Option<Served>> = vec![None; asks.len()];
    // Held back by the throttle: like a partition with no room, looked at again next fetch.
    for &ask in &held {
        outcomes[ask] = Some(Served::NoRoom);
    }
    let mut total = 0usize;
    let mut throttled_bytes = 0usize;
    if !reads.is_empty() {
        let in_reads: Vec<usize> = reads.iter().map(|r| r.ask).collect();
        let budget = Budget::new(spec.max_bytes, ctx.config.fetch_max_bytes);
        let mut job = ReadJob { reads, next: 0, budget, granted: None, done: Vec::new() };
        loop {
            let (c, conn) = (ctx.clone(), connection.clone());
            let ran = tokio::task::spawn_blocking(move || {
                let need = job.run(&c.fetch_memory, &conn);
                (job, need)
            })
            .await;
            let need;
            (job, need) = match ran {
                Ok(ran) => ran,
                Err(e) => {
                    // A bug: the job is gone with the thread; its partitions answer without
                    // data.
                    tracing::error!(error = %e, "fetch read task failed");
                    debug_assert!(false, "fetch read task failed: {e}");
                    return PassResult {
                        checked: checked_of(asks, &resp, &at, &outcomes),
                        resp,
                        at,
                        bytes: 0,
                        any_error,
                    };
                }
            };
            let Some(bytes) = need else { break };
            let holds_records =
                job.done.iter().any(|(_, r)| matches!(r, Ok(ReadOutcome::Records(_))));
            if holds_records {
                // Waiting while holding records could wait on this connection's own bytes (a
                // response is released only once written): answer with what is read.
                break;
            }
            let reserve = ctx.fetch_memory.reserve(connection, bytes);
            match tokio::time::timeout_at(deadline, reserve).await {
                Ok(reservation) => job.granted = Some(reservation),
                Err(_) => break, // the rest answers without records; the client asks again
            }
        }
        // Reads the job did not reach had no room.
        for ask in in_reads {
            outcomes[ask] = Some(Served::NoRoom);
        }
        for (ask, records) in job.done {
            let (t, p) = at[ask];
            let d = &mut resp.responses[t].partitions[p];
            match records {
                Ok(ReadOutcome::Records(records))
                    if spec.version < super::ZSTD_FETCH_VERSION_MIN
                        && super::holds_zstd(&records) =>
                {
                    any_error = true;
                    *d = error_partition(d.partition_index, KafkaError::UnsupportedCompressionType);
                    outcomes[ask] = None;
                }
                Ok(ReadOutcome::Records(records)) => {
                    total += records.len();
                    if throttled.contains(&ask) {
                        throttled_bytes += records.len();
                    }
                    let topic = match &asks[ask].key.topic {
                        TopicKey::Name(name) => Some(&**name),
                        TopicKey::Id(id) => image.topic_by_id(*id).map(|t| t.name.as_str()),
                    };
                    if let Some(topic) = topic {
                        ctx.metrics.bytes_out(topic, records.len());
                    }
                    if let Some(aborted) = &mut d.aborted_transactions {
                        // Only the transactions the returned batches overlap.
                        let last = Batches::new(records.clone()).map_while(Result::ok).last();
                        let end = last.map_or(-1, |(header, _)| header.last_offset());
                        aborted.retain(|t| t.first_offset <= end);
                    }
                    d.records = Some(records);
                    outcomes[ask] = Some(Served::Records);
                }
                Ok(ReadOutcome::Nothing) => outcomes[ask] = Some(Served::Nothing),
                Ok(ReadOutcome::NoRoom) => outcomes[ask] = Some(Served::NoRoom),
                Err(error) => {
                    any_error = true;
                    *d = error_partition(d.partition_index, error);
                    outcomes[ask] = None;
                }
            }
        }
    }
    if throttled_bytes > 0 {
        ctx.replication_quotas.state().record(Side::Leader, throttled_bytes, ctx.clock.now_ms());
    }
    PassResult {
        checked: checked_of(asks, &resp, &at, &outcomes),
        resp,
        at,
        bytes: total,
        any_error,
    }
}

/// How each ask turned out, for its session.
fn checked_of(
    asks: &[Ask],
    resp: &FetchResponse,
    at: &[(usize, usize)],
    outcomes: &[Option<Served>],
) -> Vec<Checked> {
    asks.iter()
        .zip(at)
        .zip(outcomes)
        .map(|((ask, &(t, p)), outcome)| {
            let d = &resp.responses[t].partitions[p];
            let records = *outcome == Some(Served::Records);
            Checked {
                key: ask.key.clone(),
                error: d.error_code != 0,
                records,
                again: records || *outcome == Some(Served::NoRoom),
                answered: Answered {
                    high_watermark: d.high_watermark,
                    last_stable_offset: d.last_stable_offset,
                    log_start_offset: d.log_start_offset,
                },
            }
        })
        .collect()
}

/// Only the partitions `included` names, in their order; topics left without partitions go.
fn keep_included(resp: &mut FetchResponse, at: &[(usize, usize)], included: &[bool]) {
    let mut keep: Vec<Vec<bool>> =
        resp.responses.iter().map(|t| vec![false; t.partitions.len()]).collect();
    for (&(t, p), &yes) in at.iter().zip(included) {
        keep[t][p] = yes;
    }
    for (topic, keep) in resp.responses.iter_mut().zip(keep) {
        let mut flags = keep.into_iter();
        topic.partitions.retain(|_| flags.next().unwrap_or(false));
    }
    resp.responses.retain(|t| !t.partitions.is_empty());
}

/// The answer to a request whose session cannot be used: the error alone (Kafka's
/// SessionErrorContext).
fn session_error_response(error: SessionError) -> FetchResponse {
    let error = match error {
        SessionError::IdNotFound => KafkaError::FetchSessionIdNotFound,
        SessionError::InvalidEpoch => KafkaError::InvalidFetchSessionEpoch,
        SessionError::TopicIdError => KafkaError::FetchSessionTopicIdError,
    };
    FetchResponse::default().with_error_code(error.into()).with_session_id(INVALID_SESSION_ID)
}

/// The response frame as a chain of buffers in which the stored batches are shared, not copied.
fn encode(meta: Meta, resp: &FetchResponse) -> Option<Vec<Bytes>> {
    let shared: Vec<Bytes> = resp
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .filter_map(|p| p.records.clone())
        .filter(|r| r.len() >= SHARED_BYTES_MIN)
        .collect();
    match encode_response_sharing(meta.api_key, meta.version, meta.correlation_id, resp, &shared) {
        Ok(chain) => Some(chain),
        Err(e) => {
            // A bug (a field set that this version lacks): say so loudly, answer nothing.
            tracing::error!(version = meta.version, error = %e, "cannot encode Fetch response");
            debug_assert!(false, "cannot encode Fetch v{}: {e}", meta.version);
            None
        }
    }
}

/// Unsubscribes the partitions a session forgot (those the broker still has).
fn unsubscribe_forgotten(ctx: &BrokerCtx, forgotten: &[PartitionKey], signal: &Arc<SessionSignal>) {
    if forgotten.is_empty() {
        return;
    }
    let image = ctx.image.current();
    for key in forgotten {
        let name = match &key.topic {
            TopicKey::Id(id) => image.topic_by_id(*id).map(|t| t.name.as_str()),
            TopicKey::Name(name) => Some(&**name),
        };
        if let Some(part) = name.and_then(|name| ctx.replicas.get(name, key.partition)) {
            part.unsubscribe(signal);
        }
    }
}

pub(crate) async fn handle(
    ctx: &Arc<BrokerCtx>,
    meta: Meta,
    req: FetchRequest,
    peer: std::net::SocketAddr,
) -> Option<Vec<Bytes>> {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MAX);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let replica = if meta.version >= 15 {
        let state = &req.replica_state;
        (state.replica_id.0 >= 0).then_some((NodeId(state.replica_id.0), state.replica_epoch))
    } else {
        (req.replica_id.0 >= 0).then_some((NodeId(req.replica_id.0), -1))
    };
    let spec = FetchSpec {
        version: meta.version,
        replica,
        isolation_level: req.isolation_level,
        max_bytes: req.max_bytes,
    };
    let connection = ctx.fetch_memory.connection(peer);
    let request_asks = request_asks(meta.version, &req);
    let session_req = session_request(meta.version, &req, replica, &request_asks);
    drop(req);
    let (opened, forgotten) = ctx.fetch_sessions.open(&session_req, ctx.clock.now_ms());
    let open = match opened {
        Ok(open) => open,
        Err(error) => return encode(meta, &session_error_response(error)),
    };
    // A sessionless fetch waits on a signal of its own, closed when it answers.
    let (signal, _own) = match &open {
        Open::Full { signal, .. } | Open::Incremental { signal, .. } => (signal.clone(), None),
        Open::Sessionless => {
            let signal = Arc::new(SessionSignal::new(None));
            (signal.clone(), Some(CloseOnDrop(signal)))
        }
    };
    unsubscribe_forgotten(ctx, &forgotten, &signal);
    let mut wakes = signal.wakes();
    // An incremental fetch's candidates so far (they stay candidates while it waits), by their
    // place in the session.
    let mut candidates: HashMap<PartitionKey, (FetchParams, u64)> = HashMap::new();
    // Counted in the fetch purgatory from its first wait until it answers (or is dropped).
    let mut parked = None;
    loop {
        let asks = match &open {
            Open::Incremental { session_id, epoch, .. } => {
                match ctx.fetch_sessions.candidates(*session_id, *epoch, &signal) {
                    Ok(found) => {
                        candidates.extend(found.into_iter().map(|(k, p, order)| (k, (p, order))));
                    }
                    Err(error) => return encode(meta, &session_error_response(error)),
                }
                let mut asks: Vec<(u64, Ask)> = candidates
                    .iter()
                    .map(|(key, (params, order))| {
                        (*order, Ask { key: key.clone(), params: *params })
                    })
                    .collect();
                asks.sort_by_key(|(order, _)| *order);
                asks.into_iter().map(|(_, ask)| ask).collect()
            }
            _ => {
                // Every partition is checked anyway.
                signal.drain();
                request_asks.clone()
            }
        };
        let pass = read_once(ctx, &connection, spec, &asks, &signal, deadline).await;
        let done =
            pass.bytes >= min_bytes || pass.any_error || tokio::time::Instant::now() >= deadline;
        if done {
            let PassResult { mut resp, at, checked, .. } = pass;
            let now = ctx.clock.now_ms();
            match &open {
                Open::Sessionless => {}
                Open::Full { session_id, .. } => {
                    // Kafka's epoch after a FULL request that created the session.
                    let epoch = crate::fetch_session::next_epoch(0);
                    if ctx.fetch_sessions.commit(*session_id, epoch, &checked, now).is_ok()
                        && meta.version >= 7
                    {
                        resp.session_id = *session_id;
                    }
                }
                Open::Incremental { session_id, epoch, .. } => {
                    match ctx.fetch_sessions.commit(*session_id, *epoch, &checked, now) {
                        Ok(included) => keep_included(&mut resp, &at, &included),
                        Err(error) => return encode(meta, &session_error_response(error)),
                    }
                    resp.session_id = *session_id;
                }
            }
            if meta.version < 5 {
                // Compared for the session above; this version has no such field.
                for d in resp.responses.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                    d.log_start_offset = -1;
                }
            }
            return encode(meta, &resp);
        }
        // Waiting holds no records (nor their memory): the next pass reads afresh.
        drop(pass);
        parked.get_or_insert_with(|| ctx.metrics.fetch_parked());
        tokio::select! {
            changed = wakes.changed() => if changed.is_err() {
                // Not while this fetch holds the signal; answer at the deadline if it does.
                tokio::time::sleep_until(deadline).await;
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

fn aborted_transaction(t: &strom_log::AbortedTxn) -> AbortedTransaction {
    AbortedTransaction::default()
        .with_producer_id(ProducerId(t.producer_id))
        .with_first_offset(t.first_offset)
}

#[cfg(test)]
mod tests {
    use strom_metadata::{
        BrokerEpoch, BrokerImage, LeaderEpoch, MetadataImage, NodeId, PartitionEpoch,
        PartitionImage,
    };

    use super::{check_follower_fetch, Budget};
    use crate::errors::KafkaError;

    #[test]
    fn a_follower_fetch_must_come_from_a_current_follower() {
        let mut image = MetadataImage::default();
        for id in [1, 2, 3] {
            image.brokers.insert(
                NodeId(id),
                BrokerImage {
                    id: NodeId(id),
                    epoch: BrokerEpoch(100 + i64::from(id)),
                    incarnation_id: Vec::new(),
                    endpoints: Vec::new(),
                    rack: None,
                    fenced: false,
                    in_controlled_shutdown: false,
                },
            );
        }
        let partition = PartitionImage {
            replicas: vec![NodeId(1), NodeId(2)],
            isr: vec![NodeId(1), NodeId(2)],
            leader: Some(NodeId(1)),
            leader_epoch: LeaderEpoch(4),
            partition_epoch: PartitionEpoch(9),
            adding_replicas: vec![],
            removing_replicas: vec![],
        };
        let check = |follower, broker_epoch, claimed| {
            check_follower_fetch(&image, &partition, NodeId(follower), broker_epoch, claimed)
        };
        assert_eq!(check(2, -1, 4), Ok(()), "no broker epoch (before v15)");
        assert_eq!(check(2, 102, 4), Ok(()), "the registered epoch");
        assert_eq!(check(2, 103, 4), Ok(()), "newer than this broker's image: passes, as in Kafka");
        assert_eq!(check(2, 101, 4), Err(KafkaError::NotLeaderOrFollower), "a stale incarnation");
        assert_eq!(check(3, -1, 4), Err(KafkaError::UnknownLeaderEpoch), "not a replica");
        assert_eq!(
            check(3, -1, -1),
            Err(KafkaError::NotLeaderOrFollower),
            "not a replica, no epoch"
        );
        assert_eq!(check(1, -1, 4), Err(KafkaError::UnknownLeaderEpoch), "the leader itself");
    }

    /// What the log keeps of a read of `len` bytes: the whole batches that fit.
    fn whole_batches(batches: &[usize], len: usize) -> usize {
        let mut kept = 0;
        for b in batches {
            if kept + b > len {
                break;
            }
            kept += b;
        }
        kept
    }

    /// Record bytes each partition returns, given its batch sizes and partition_max_bytes.
    fn fetch(max_bytes: i32, fetch_max_bytes: usize, partitions: &[(i32, &[usize])]) -> Vec<usize> {
        let mut budget = Budget::new(max_bytes, fetch_max_bytes);
        partitions
            .iter()
            .map(|(partition_max, batches)| {
                let first = batches.first().copied().unwrap_or(0);
                let len = budget.read_len(*partition_max, first, batches.iter().sum());
                let kept = whole_batches(batches, len);
                budget.spend(kept);
                kept
            })
            .collect()
    }

    const KIB: usize = 1024;
    const MIB: i32 = 1 << 20;

    #[test]
    fn partitions_fill_in_order_up_to_the_response_limit_in_whole_batches() {
        let batches = [300 * KIB; 10];
        let got = fetch(MIB, usize::MAX, &[(MIB, &batches), (MIB, &batches), (MIB, &batches)]);
        assert_eq!(got, [900 * KIB, 0, 0], "the 4th batch would pass 1 MiB; later ones get none");
        let got = fetch(MIB, usize::MAX, &[(400 * KIB as i32, &batches), (MIB, &batches)]);
        assert_eq!(got, [300 * KIB, 600 * KIB], "each partition also stops at its own limit");
    }

    #[test]
    fn only_the_first_batch_of_the_first_partition_with_data_may_exceed_the_limits() {
        let big = [2 * MIB as usize, 10 * KIB];
        let got = fetch(MIB, usize::MAX, &[(MIB, &[]), (MIB, &big), (MIB, &big)]);
        assert_eq!(got, [0, 2 * MIB as usize, 0], "an empty partition does not use the allowance");
        let got = fetch(MIB, usize::MAX, &[(MIB, &[10 * KIB]), (MIB, &big)]);
        assert_eq!(got, [10 * KIB, 0], "once a partition returned data, no oversize batch");
        let got = fetch(0, usize::MAX, &[(0, &big), (MIB, &big)]);
        assert_eq!(got, [2 * MIB as usize, 0], "max_bytes 0 still progresses by one batch");
    }

    #[test]
    fn the_broker_fetch_max_bytes_caps_what_the_request_asks_for() {
        let batches = [MIB as usize; 100];
        let got = fetch(i32::MAX, 55 * MIB as usize, &[(i32::MAX, &batches), (i32::MAX, &batches)]);
        assert_eq!(got, [55 * MIB as usize, 0]);
        let got = fetch(-1, 55 * MIB as usize, &[(i32::MAX, &batches), (i32::MAX, &batches)]);
        assert_eq!(got, [MIB as usize, 0], "a negative max_bytes allows only the first batch");
    }
}
