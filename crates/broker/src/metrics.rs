//! The broker's Prometheus metrics (`prometheus-client`): what the request path counts as it
//! goes (requests, errors, latencies, bytes per topic, ISR changes), through handles resolved
//! once per API, version or topic so that a request costs a few atomic adds and no
//! allocation; and the gauges a scrape computes from the partitions and groups
//! ([`BrokerMetrics::refresh`]). The binary registers them and serves `/metrics`.
//!
//! Consumer lag (`strom_consumer_group_lag`, opt-in: `metrics.consumer_lag`) is computed at
//! each scrape for the groups this broker coordinates, from the high watermarks of the local
//! replicas (exact where this broker leads, a fetch round behind where it follows); at most
//! [`CONSUMER_LAG_SERIES_MAX`] series, the partitions left out counted in
//! `strom_consumer_group_lag_omitted`, so 100,000 committed partitions cost a scrape no more
//! than 10,000 do.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::BrokerCtx;

/// Kafka API keys are below this (the highest served is 82).
const API_KEYS_MAX: usize = 128;
/// Versions per API with a handle of their own (the highest any API has is 17).
const VERSIONS_MAX: usize = 32;
/// Kafka error codes counted (the highest defined is 133); the last slot is -1,
/// UNKNOWN_SERVER_ERROR (and any code out of range).
const ERROR_CODES_MAX: usize = 256;

/// Consumer lag series one scrape exports at most: a Prometheus series costs the server
/// about a kilobyte, and a scrape of a busy coordinator must stay small.
pub const CONSUMER_LAG_SERIES_MAX: usize = 10_000;
/// Committed offsets one scrape reads from the group shards at most (those of partitions
/// with no local replica are read and skipped).
const CONSUMER_LAG_OFFSETS_READ_MAX: usize = 100_000;
const _: () = assert!(CONSUMER_LAG_SERIES_MAX <= CONSUMER_LAG_OFFSETS_READ_MAX);

/// Latency buckets: 0.1 ms to about 26 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 19))
}

type LatencyFamily = Family<ApiLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiVersionLabels {
    api: String,
    version: i16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DelayedOperationLabels {
    delayed_operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupPartitionLabels {
    group: String,
    topic: String,
    partition: i32,
}

/// A request counted in a purgatory gauge while it lives: dropped on every way out of the
/// wait (answered, timed out, its connection gone), it takes itself out again.
pub(crate) struct InPurgatory(Gauge);

impl Drop for InPurgatory {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The opt-in consumer lag gauges.
struct ConsumerLag {
    lag: Family<GroupPartitionLabels, Gauge>,
    omitted: Gauge,
}

/// The handles of one API: its latency histograms and a request counter per version.
pub(crate) struct ApiHandles {
    versions: [OnceLock<Counter>; VERSIONS_MAX],
    name: String,
    /// From the frame read to the response written (Kafka's TotalTimeMs).
    pub total: Histogram,
    /// The request's turn in its connection's reader: decoding done to the ordered part
    /// handled (Kafka's LocalTimeMs).
    pub local: Histogram,
    /// The waiting part: acks, long polls, coordinator answers (Kafka's RemoteTimeMs).
    pub remote: Histogram,
    /// Writing the response out (Kafka's ResponseSendTimeMs).
    pub send: Histogram,
}

/// The bytes counters of one topic.
#[derive(Clone)]
struct TopicCounters {
    bytes_in: Counter,
    bytes_out: Counter,
}

/// A broker's metrics as the binary sees them: registered once, refreshed before each scrape.
/// Holds the broker's context, not the broker, so a scrape never delays its shutdown.
#[derive(Clone)]
pub struct BrokerMetricsHandle {
    pub(crate) ctx: Arc<BrokerCtx>,
}

impl BrokerMetricsHandle {
    /// Adds every metric of the broker to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        self.ctx.metrics.register(registry)
    }

    /// Sets the metrics a scrape computes (partition and group gauges); call before encoding.
    pub async fn refresh(&self) {
        self.ctx.metrics.refresh(&self.ctx).await
    }

    /// Local logs the reconcile could not open yet (for want of file descriptors) and will
    /// try again: a broker with any is not ready.
    pub fn logs_awaiting_open(&self) -> usize {
        self.ctx.replicas.logs_awaiting_open()
    }
}

/// Every metric of the broker. One per broker, in its context.
pub(crate) struct BrokerMetrics {
    requests: Family<ApiVersionLabels, Counter>,
    total_time: LatencyFamily,
    local_time: LatencyFamily,
    remote_time: LatencyFamily,
    send_time: LatencyFamily,
    apis: Box<[OnceLock<Arc<ApiHandles>>]>,
    bytes_in: Family<TopicLabels, Counter>,
    bytes_out: Family<TopicLabels, Counter>,
    /// Resolved per topic once: a lookup by `&str` allocates nothing.
    topics: RwLock<HashMap<Box<str>, TopicCounters>>,
    isr_shrinks: Counter,
    isr_expands: Counter,
    // Computed at each scrape (`refresh`).
    leaders: Gauge,
    partitions: Gauge,
    under_replicated: Gauge,
    under_min_isr: Gauge,
    offline_replicas: Gauge,
    log_size: Family<PartitionLabels, Gauge>,
    log_segments: Family<PartitionLabels, Gauge>,
    groups: Family<StateLabels, Gauge>,
    /// Requests parked until they can be answered (Kafka's PurgatorySize), per operation.
    purgatory: Family<DelayedOperationLabels, Gauge>,
    produce_purgatory: Gauge,
    fetch_purgatory: Gauge,
    /// `Some` when `metrics.consumer_lag` is on.
    consumer_lag: Option<ConsumerLag>,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        BrokerMetrics::new(false)
    }
}

impl BrokerMetrics {
    /// The metrics of a broker; with `consumer_lag`, the lag of the groups it coordinates too.
    pub(crate) fn new(consumer_lag: bool) -> Self {
        let purgatory = Family::<DelayedOperationLabels, Gauge>::default();
        let operation = |delayed_operation| {
            purgatory.get_or_create(&DelayedOperationLabels { delayed_operation }).clone()
        };
        let (produce_purgatory, fetch_purgatory) = (operation("Produce"), operation("Fetch"));
        let consumer_lag =
            consumer_lag.then(|| ConsumerLag { lag: Family::default(), omitted: Gauge::default() });
        let latency = || LatencyFamily::new_with_constructor(latency_histogram as fn() -> _);
        BrokerMetrics {
            requests: Family::default(),
            total_time: latency(),
            local_time: latency(),
            remote_time: latency(),
            send_time: latency(),
            apis: (0..API_KEYS_MAX).map(|_| OnceLock::new()).collect(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            topics: RwLock::default(),
            isr_shrinks: Counter::default(),
            isr_expands: Counter::default(),
            leaders: Gauge::default(),
            partitions: Gauge::default(),
            under_replicated: Gauge::default(),
            under_min_isr: Gauge::default(),
            offline_replicas: Gauge::default(),
            log_size: Family::default(),
            log_segments: Family::default(),
            groups: Family::default(),
            purgatory,
            produce_purgatory,
            fetch_purgatory,
            consumer_lag,
        }
    }
}

impl std::fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerMetrics").finish_non_exhaustive()
    }
}

impl BrokerMetrics {
    /// Adds every metric to `registry`, under Kafka-like names.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register(
            "strom_requests",
            "Requests received, per API and version",
            self.requests.clone(),
        );
        r.register(
            "strom_request_total_time_seconds",
            "From a request read to its response written",
            self.total_time.clone(),
        );
        r.register(
            "strom_request_local_time_seconds",
            "A request's ordered part, in its connection's reader",
            self.local_time.clone(),
        );
        r.register(
            "strom_request_remote_time_seconds",
            "A request's waiting part (acks, long polls, coordinators)",
            self.remote_time.clone(),
        );
        r.register(
            "strom_request_send_time_seconds",
            "Writing a response to the connection",
            self.send_time.clone(),
        );
        r.register_collector(Box::new(ErrorCounts));
        r.register("strom_bytes_in", "Record bytes produced, per topic", self.bytes_in.clone());
        r.register("strom_bytes_out", "Record bytes fetched, per topic", self.bytes_out.clone());
        r.register("strom_isr_shrinks", "ISR shrinks this broker led", self.isr_shrinks.clone());
        r.register("strom_isr_expands", "ISR expands this broker led", self.isr_expands.clone());
        r.register("strom_leader_count", "Partitions this broker leads", self.leaders.clone());
        r.register(
            "strom_partition_count",
            "Partition logs on this broker",
            self.partitions.clone(),
        );
        r.register(
            "strom_under_replicated_partitions",
            "Partitions this broker leads whose ISR is smaller than their replica set",
            self.under_replicated.clone(),
        );
        r.register(
            "strom_under_min_isr_partitions",
            "Partitions this broker leads whose ISR is below min.insync.replicas",
            self.under_min_isr.clone(),
        );
        r.register(
            "strom_offline_replicas",
            "Local partition logs taken offline by a storage failure",
            self.offline_replicas.clone(),
        );
        r.register("strom_log_size_bytes", "Size of a partition's log", self.log_size.clone());
        r.register(
            "strom_log_segments",
            "Segments of a partition's log",
            self.log_segments.clone(),
        );
        r.register(
            "strom_groups",
            "Consumer groups this broker coordinates, per state",
            self.groups.clone(),
        );
        r.register(
            "strom_purgatory_size",
            "Requests waiting to be answered: Produce for acks=all, Fetch for min_bytes or \
             max_wait_ms",
            self.purgatory.clone(),
        );
        if let Some(c) = &self.consumer_lag {
            r.register(
                "strom_consumer_group_lag",
                "High watermark minus committed offset, per group this broker coordinates and \
                 partition with a local replica",
                c.lag.clone(),
            );
            r.register(
                "strom_consumer_group_lag_omitted",
                "Committed partitions left out of strom_consumer_group_lag by its series cap",
                c.omitted.clone(),
            );
        }
    }

    /// A Produce waiting for its acks=all; counted until the guard drops.
    pub(crate) fn produce_parked(&self) -> InPurgatory {
        self.produce_purgatory.inc();
        InPurgatory(self.produce_purgatory.clone())
    }

    /// A Fetch waiting for `min_bytes` or its `max_wait_ms`; counted until the guard drops.
    pub(crate) fn fetch_parked(&self) -> InPurgatory {
        self.fetch_purgatory.inc();
        InPurgatory(self.fetch_purgatory.clone())
    }

    /// The handles of `api` (resolved on its first request).
    pub(crate) fn api(&self, api: ApiKey) -> Arc<ApiHandles> {
        let slot = usize::try_from(api as i16).unwrap_or(0).min(API_KEYS_MAX - 1);
        self.apis[slot]
            .get_or_init(|| {
                let name = format!("{api:?}");
                let labels = ApiLabels { api: name.clone() };
                Arc::new(ApiHandles {
                    versions: std::array::from_fn(|_| OnceLock::new()),
                    total: self.total_time.get_or_create(&labels).clone(),
                    local: self.local_time.get_or_create(&labels).clone(),
                    remote: self.remote_time.get_or_create(&labels).clone(),
                    send: self.send_time.get_or_create(&labels).clone(),
                    name,
                })
            })
            .clone()
    }

    /// Counts one request of `api` at `version`.
    pub(crate) fn request(&self, api: &ApiHandles, version: i16) {
        match usize::try_from(version).ok().and_then(|v| api.versions.get(v)) {
            Some(slot) => slot.get_or_init(|| self.version_counter(&api.name, version)).inc(),
            None => self.version_counter(&api.name, version).inc(),
        };
    }

    fn version_counter(&self, api: &str, version: i16) -> Counter {
        self.requests.get_or_create(&ApiVersionLabels { api: api.to_owned(), version }).clone()
    }

    fn topic(&self, topic: &str) -> TopicCounters {
        let known = self.topics.read().unwrap_or_else(PoisonError::into_inner).get(topic).cloned();
        known.unwrap_or_else(|| {
            let labels = TopicLabels { topic: topic.to_owned() };
            let counters = TopicCounters {
                bytes_in: self.bytes_in.get_or_create(&labels).clone(),
                bytes_out: self.bytes_out.get_or_create(&labels).clone(),
            };
            let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
            topics.entry(topic.into()).or_insert(counters).clone()
        })
    }

    /// Record bytes a producer appended to `topic`.
    pub(crate) fn bytes_in(&self, topic: &str, bytes: usize) {
        self.topic(topic).bytes_in.inc_by(bytes as u64);
    }

    /// Record bytes a Fetch response carries from `topic`.
    pub(crate) fn bytes_out(&self, topic: &str, bytes: usize) {
        self.topic(topic).bytes_out.inc_by(bytes as u64);
    }

    /// An ISR change this broker asked for committed: `before` members (as the leader saw
    /// them), `after` now.
    pub(crate) fn isr_changed(&self, before: Option<usize>, after: usize) {
        match before {
            Some(before) if after < before => self.isr_shrinks.inc(),
            Some(before) if after > before => self.isr_expands.inc(),
            _ => 0,
        };
    }

    /// Sets the gauges a scrape reads from the partitions and the group coordinator.
    pub(crate) async fn refresh(&self, ctx: &BrokerCtx) {
        let image = ctx.image.current();
        let all = ctx.replicas.all();
        let (mut leaders, mut under_replicated, mut under_min_isr, mut offline) = (0, 0, 0, 0);
        self.log_size.clear();
        self.log_segments.clear();
        for p in &all {
            let progress = p.progress();
            if progress.offline {
                offline += 1;
            }
            if let Some((isr, _)) = p.leader_view() {
                leaders += 1;
                let replicas = image.partition(&p.topic, p.index).map_or(0, |i| i.replicas.len());
                if isr < replicas {
                    under_replicated += 1;
                }
                if isr < p.min_insync() {
                    under_min_isr += 1;
                }
            }
            if let Ok(log) = p.log() {
                let labels = PartitionLabels { topic: p.topic.clone(), partition: p.index };
                let size = i64::try_from(log.size_bytes()).unwrap_or(i64::MAX);
                let segments = i64::try_from(log.segment_count()).unwrap_or(i64::MAX);
                drop(log);
                self.log_size.get_or_create(&labels).set(size);
                self.log_segments.get_or_create(&labels).set(segments);
            }
        }
        self.partitions.set(all.len() as i64);
        self.leaders.set(leaders);
        self.under_replicated.set(under_replicated);
        self.under_min_isr.set(under_min_isr);
        self.offline_replicas.set(offline);

        let mut by_state: HashMap<&'static str, i64> = HashMap::new();
        for state in ["Empty", "PreparingRebalance", "CompletingRebalance", "Stable", "Dead"] {
            by_state.insert(state, 0);
        }
        for shard in ctx.groups.shards() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if shard.send(crate::group::Cmd::List(tx)).await.is_err() {
                continue;
            }
            // A shard busy loading answers after it; a scrape does not wait for that long.
            if let Ok(Ok(groups)) = tokio::time::timeout(GROUP_LIST_WAIT, rx).await {
                for g in groups {
                    *by_state.entry(crate::group::state_name(g.state)).or_default() += 1;
                }
            }
        }
        for (state, n) in by_state {
            self.groups.get_or_create(&StateLabels { state }).set(n);
        }
        if let Some(c) = &self.consumer_lag {
            self.refresh_consumer_lag(ctx, c).await;
        }
    }

    async fn refresh_consumer_lag(&self, ctx: &BrokerCtx, c: &ConsumerLag) {
        c.lag.clear();
        let (mut series, mut omitted, mut budget) = (0usize, 0usize, CONSUMER_LAG_OFFSETS_READ_MAX);
        for shard in ctx.groups.shards() {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let cmd = crate::group::Cmd::CommittedOffsets { limit: budget, reply };
            if shard.send(cmd).await.is_err() {
                continue;
            }
            let Ok(Ok((offsets, total))) = tokio::time::timeout(GROUP_LIST_WAIT, rx).await else {
                continue;
            };
            budget -= offsets.len();
            omitted += total - offsets.len();
            for (group, topic, partition, committed) in offsets {
                let Some(p) = ctx.replicas.get(&topic, partition) else { continue };
                if series == CONSUMER_LAG_SERIES_MAX {
                    omitted += 1;
                    continue;
                }
                series += 1;
                let lag = (p.progress().high_watermark - committed).max(0);
                c.lag.get_or_create(&GroupPartitionLabels { group, topic, partition }).set(lag);
            }
        }
        c.omitted.set(i64::try_from(omitted).unwrap_or(i64::MAX));
    }
}

/// How long a scrape waits for one group shard's listing.
const GROUP_LIST_WAIT: Duration = Duration::from_millis(500);

/// Kafka error codes the broker answered, counted where errors become the codes of answers
/// (`i16::from(KafkaError)`): one relaxed add per error, no lock.
static ERROR_COUNTS: [AtomicU64; ERROR_CODES_MAX] = [const { AtomicU64::new(0) }; ERROR_CODES_MAX];

/// Counts one answer with error `code`.
pub(crate) fn count_error(code: i16) {
    let slot = usize::try_from(code).unwrap_or(ERROR_CODES_MAX - 1).min(ERROR_CODES_MAX - 1);
    ERROR_COUNTS[slot].fetch_add(1, Ordering::Relaxed);
}

/// Kafka's name of an error code: `NOT_LEADER_OR_FOLLOWER`.
fn error_name(code: i16) -> String {
    let camel = match ResponseError::try_from_code(code) {
        None => return format!("CODE_{code}"),
        Some(ResponseError::Unknown(_)) => return format!("CODE_{code}"),
        Some(other) => format!("{other:?}"),
    };
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `strom_errors_total{error}`: the counts of [`ERROR_COUNTS`], named at scrape time.
#[derive(Debug)]
struct ErrorCounts;

impl Collector for ErrorCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "strom_errors",
            "Errors answered, per Kafka error code",
            None,
            MetricType::Counter,
        )?;
        for (code, count) in ERROR_COUNTS.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let code = if code == ERROR_CODES_MAX - 1 { -1 } else { code as i16 };
            let name = error_name(code);
            let labels = [("error", name.as_str())];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encodes");
        out
    }

    #[test]
    fn requests_bytes_and_errors_appear_under_kafka_like_names() {
        let metrics = BrokerMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let produce = metrics.api(ApiKey::Produce);
        metrics.request(&produce, 9);
        metrics.request(&produce, 9);
        metrics.request(&metrics.api(ApiKey::Fetch), 40);
        produce.local.observe(0.001);
        metrics.bytes_in("orders", 100);
        metrics.bytes_in("orders", 20);
        metrics.bytes_out("orders", 7);
        metrics.isr_changed(Some(3), 2);
        metrics.isr_changed(Some(2), 3);
        metrics.isr_changed(None, 3);
        count_error(6);
        let out = text(&registry);
        for line in [
            "strom_requests_total{api=\"Produce\",version=\"9\"} 2",
            "strom_requests_total{api=\"Fetch\",version=\"40\"} 1",
            "strom_request_local_time_seconds_count{api=\"Produce\"} 1",
            "strom_bytes_in_total{topic=\"orders\"} 120",
            "strom_bytes_out_total{topic=\"orders\"} 7",
            "strom_isr_shrinks_total 1",
            "strom_isr_expands_total 1",
        ] {
            assert!(out.lines().any(|l| l == line), "no line {line:?} in\n{out}");
        }
        assert!(
            out.lines()
                .any(|l| l.starts_with("strom_errors_total{error=\"NOT_LEADER_OR_FOLLOWER\"}")),
            "{out}"
        );
    }

    #[test]
    fn error_codes_are_named_as_kafka_names_them() {
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(250), "CODE_250");
    }
}
