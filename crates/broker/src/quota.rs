//! Client byte-rate quotas (Kafka's ClientQuotaManager, KIP-13 and KIP-219): the bytes each
//! quota entity produces and fetches are sampled over `QUOTA_WINDOW_NUM` windows of
//! `QUOTA_WINDOW_SIZE_MS`; a request that takes its entity over the quota is answered with
//! `throttle_time_ms` set, and its connection reads no further request until that time has
//! passed (KIP-219: Produce v6+ and Fetch v8+ clients also hold back on their own; older ones
//! get their response that much later instead).
//!
//! [`QuotaState`] is the sans-IO core (rates, resolution, throttle arithmetic), driven with
//! the time as an argument. [`ClientQuotaManager`] is what the connections share: an atomic
//! flag says whether any quota exists, so that without quotas a request costs one load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use strom_metadata::quotas::{
    resolve, ClientQuotas, QuotaEntity, CLIENT_ID, CONSUMER_BYTE_RATE, PRODUCER_BYTE_RATE, USER,
};
use strom_protocol::request::{produce_response_throttled, set_fetch_throttle_time, RequestFrame};
use strom_protocol::Request;

use crate::handlers::Reply;
use crate::BrokerCtx;

/// Kafka's `quota.window.num`: the samples a rate is measured over.
pub(crate) const QUOTA_WINDOW_NUM: usize = 11;
/// Kafka's `quota.window.size.seconds`, in ms: the span of one sample.
pub(crate) const QUOTA_WINDOW_SIZE_MS: i64 = 1000;
/// A rate younger than this many whole windows is measured as if it were this old. Kafka's
/// `Rate` uses `quota.window.num - 1` (ten): a new client may then send ten seconds' worth at
/// once, and that burst comes back every 11 s as its sample expires and frees the room again,
/// so an eager client's rate over any 20 s swings by half the quota. One window keeps a new
/// client's first request from being judged on a few milliseconds, and holds it to its quota
/// from its first second (the one place strom departs from Kafka's arithmetic).
const RATE_MIN_FULL_WINDOWS: i64 = 1;
/// Rates kept before those idle for a whole measurement span are dropped (their rate is zero:
/// dropping them changes no answer). Bounds the memory of many short-lived client ids.
const SENSORS_PRUNE_AT: usize = 10_000;

/// The principal of every connection while strom has no SASL: Kafka's unauthenticated user.
pub(crate) const ANONYMOUS: &str = "ANONYMOUS";

/// Which quota a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum QuotaKind {
    /// `producer_byte_rate`: the bytes of Produce requests.
    Produce,
    /// `consumer_byte_rate`: the bytes of Fetch responses to consumers.
    Fetch,
}

impl QuotaKind {
    fn key(self) -> &'static str {
        match self {
            QuotaKind::Produce => PRODUCER_BYTE_RATE,
            QuotaKind::Fetch => CONSUMER_BYTE_RATE,
        }
    }
}

/// One sample: the value recorded since `start_ms`.
#[derive(Clone, Copy, Debug)]
struct Sample {
    start_ms: i64,
    value: f64,
}

/// A rate sampled over `QUOTA_WINDOW_NUM` windows, as Kafka's `Rate` over a `SampledStat`:
/// the sum of the retained samples divided by the time they span, counted as at least
/// [`RATE_MIN_FULL_WINDOWS`] whole windows.
#[derive(Clone, Debug)]
pub(crate) struct Rate {
    samples: Vec<Sample>,
    current: usize,
}

impl Rate {
    pub fn new(now_ms: i64) -> Rate {
        let mut samples = Vec::with_capacity(QUOTA_WINDOW_NUM);
        samples.push(Sample { start_ms: now_ms, value: 0.0 });
        Rate { samples, current: 0 }
    }

    pub fn record(&mut self, value: f64, now_ms: i64) {
        if now_ms - self.samples[self.current].start_ms >= QUOTA_WINDOW_SIZE_MS {
            self.current = (self.current + 1) % QUOTA_WINDOW_NUM;
            let fresh = Sample { start_ms: now_ms, value: 0.0 };
            if self.current == self.samples.len() {
                self.samples.push(fresh);
            } else {
                self.samples[self.current] = fresh;
            }
        }
        self.samples[self.current].value += value;
    }

    /// Samples older than the whole measured span count for nothing and start over now.
    fn purge(&mut self, now_ms: i64) {
        let span = QUOTA_WINDOW_NUM as i64 * QUOTA_WINDOW_SIZE_MS;
        for s in &mut self.samples {
            if now_ms - s.start_ms >= span {
                *s = Sample { start_ms: now_ms, value: 0.0 };
            }
        }
    }

    /// The time the rate is measured over, ms (Kafka's `Rate.windowSize`).
    pub fn window_ms(&mut self, now_ms: i64) -> i64 {
        self.purge(now_ms);
        let oldest = self.samples.iter().map(|s| s.start_ms).min().unwrap_or(now_ms);
        let mut elapsed = now_ms - oldest;
        let full = elapsed / QUOTA_WINDOW_SIZE_MS;
        if full < RATE_MIN_FULL_WINDOWS {
            elapsed += (RATE_MIN_FULL_WINDOWS - full) * QUOTA_WINDOW_SIZE_MS;
        }
        elapsed
    }

    /// Units per second.
    pub fn measure(&mut self, now_ms: i64) -> f64 {
        let window_ms = self.window_ms(now_ms);
        let total: f64 = self.samples.iter().map(|s| s.value).sum();
        total * 1000.0 / window_ms as f64
    }

    fn idle_since(&self, now_ms: i64) -> bool {
        let span = QUOTA_WINDOW_NUM as i64 * QUOTA_WINDOW_SIZE_MS;
        self.samples.iter().all(|s| now_ms - s.start_ms >= span)
    }
}

/// How long a client whose rate is `rate` against a quota of `bound` is held: the time that
/// brings the rate measured over `window_ms` back to the bound (Kafka's
/// `(rate - bound) / bound * window`). Zero within the quota.
pub(crate) fn throttle_ms(rate: f64, bound: f64, window_ms: i64) -> i64 {
    if rate <= bound || bound <= 0.0 {
        return 0;
    }
    ((rate - bound) / bound * window_ms as f64).round() as i64
}

/// The rate a quota is measured on: per matched entity, with the parts the entity names
/// filled in (Kafka's metric tags): a quota on `client-id=<default>` gives each client id its
/// own rate; one on `user=<default>` only, one rate per user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SensorKey {
    kind: QuotaKind,
    user: Option<String>,
    client_id: Option<String>,
}

fn sensor_key(kind: QuotaKind, entity: &QuotaEntity, user: &str, client_id: &str) -> SensorKey {
    SensorKey {
        kind,
        user: entity.contains_key(USER).then(|| user.to_string()),
        client_id: entity.contains_key(CLIENT_ID).then(|| client_id.to_string()),
    }
}

/// The quotas from the metadata image and the rates of the entities they apply to.
#[derive(Debug, Default)]
pub(crate) struct QuotaState {
    quotas: Arc<ClientQuotas>,
    sensors: HashMap<SensorKey, Rate>,
}

impl QuotaState {
    pub fn set_quotas(&mut self, quotas: Arc<ClientQuotas>) {
        self.quotas = quotas;
    }

    /// The quota (bytes/s) `kind` holds this client to, if any.
    pub fn bound(&self, kind: QuotaKind, user: &str, client_id: &str) -> Option<f64> {
        resolve(&self.quotas, user, client_id, kind.key()).map(|(_, bound)| bound)
    }

    /// Records `bytes` against the client's quota of `kind` and returns how long to throttle
    /// it (0: within its quota, or none applies).
    pub fn record(
        &mut self,
        kind: QuotaKind,
        user: &str,
        client_id: &str,
        bytes: usize,
        now_ms: i64,
    ) -> i64 {
        let Some((entity, bound)) = resolve(&self.quotas, user, client_id, kind.key()) else {
            return 0;
        };
        let key = sensor_key(kind, entity, user, client_id);
        if self.sensors.len() >= SENSORS_PRUNE_AT && !self.sensors.contains_key(&key) {
            self.sensors.retain(|_, rate| !rate.idle_since(now_ms));
        }
        let rate = self.sensors.entry(key).or_insert_with(|| Rate::new(now_ms));
        rate.record(bytes as f64, now_ms);
        let measured = rate.measure(now_ms);
        throttle_ms(measured, bound, rate.window_ms(now_ms))
    }
}

/// The quotas every connection of this broker consults.
#[derive(Debug, Default)]
pub(crate) struct ClientQuotaManager {
    /// Whether any client quota exists: the one thing a request reads when none does.
    active: AtomicBool,
    state: Mutex<QuotaState>,
}

impl ClientQuotaManager {
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QuotaState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the quotas of a new metadata image.
    pub fn set_quotas(&self, quotas: Arc<ClientQuotas>) {
        let any = !quotas.is_empty();
        self.state().set_quotas(quotas);
        self.active.store(any, Ordering::Relaxed);
    }

    fn record(&self, kind: QuotaKind, client_id: &str, bytes: usize, now_ms: i64) -> i64 {
        self.state().record(kind, ANONYMOUS, client_id, bytes, now_ms)
    }
}

/// Follows the broker's metadata image and hands each new set of quotas to the manager.
pub(crate) async fn follow_image(
    ctx: Arc<BrokerCtx>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut images = ctx.image.subscribe();
    let mut last: Option<Arc<ClientQuotas>> = None;
    loop {
        let quotas = images.borrow_and_update().client_quotas.clone();
        if last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &quotas)) {
            tracing::info!(entities = quotas.len(), "client quotas changed");
            ctx.quotas.set_quotas(quotas.clone());
            last = Some(quotas);
        }
        tokio::select! {
            changed = images.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// When the connection may read its next request (ms since the epoch, the broker clock's):
/// set by a throttled response, read before each request.
#[derive(Debug, Default)]
pub(crate) struct Mute(AtomicI64);

impl Mute {
    fn hold_until(&self, until_ms: i64) {
        self.0.fetch_max(until_ms, Ordering::Relaxed);
    }

    /// How long the connection must still wait before reading (zero: not muted). Reads the
    /// clock only on a connection that has been throttled.
    pub fn remaining(&self, clock: &dyn strom_metadata::Clock) -> Duration {
        let until_ms = self.0.load(Ordering::Relaxed);
        if until_ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis((until_ms - clock.now_ms()).max(0) as u64)
    }
}

/// A request that counts against a quota, noted before it is handled.
pub(crate) struct Charge {
    kind: QuotaKind,
    version: i16,
    client_id: String,
    /// Produce: the throttle its request bytes already earned.
    throttle_ms: i64,
}

/// Notes a Produce or consumer Fetch of a client with a quota, before it is handled: Produce
/// counts its request's bytes now; a Fetch is asked for no more than the quota allows in the
/// shortest span a rate is measured over (as Kafka's `getMaxValueInQuotaWindow` bounds it by
/// its own), and counts its response's bytes once it is ready.
/// Called only while some quota exists.
pub(crate) fn charge(ctx: &BrokerCtx, frame: &mut RequestFrame, bytes: usize) -> Option<Charge> {
    let client_id = frame.header.client_id.as_deref().unwrap_or("");
    let version = frame.api_version;
    match &mut frame.request {
        Request::Produce(_) => {
            let now = ctx.clock.now_ms();
            let throttle_ms = ctx.quotas.record(QuotaKind::Produce, client_id, bytes, now);
            let client_id = client_id.to_string();
            Some(Charge { kind: QuotaKind::Produce, version, client_id, throttle_ms })
        }
        Request::Fetch(req) if req.replica_id.0 < 0 && req.replica_state.replica_id.0 < 0 => {
            let bound = ctx.quotas.state().bound(QuotaKind::Fetch, ANONYMOUS, client_id)?;
            let window_s = (RATE_MIN_FULL_WINDOWS * QUOTA_WINDOW_SIZE_MS) as f64 / 1000.0;
            let max = (bound * window_s).clamp(1.0, i32::MAX as f64) as i32;
            req.max_bytes = req.max_bytes.min(max);
            let client_id = client_id.to_string();
            Some(Charge { kind: QuotaKind::Fetch, version, client_id, throttle_ms: 0 })
        }
        _ => None,
    }
}

/// KIP-219: the versions whose clients throttle themselves on `throttle_time_ms`; older ones
/// are answered only once the throttle time has passed.
fn client_throttles(kind: QuotaKind, version: i16) -> bool {
    match kind {
        QuotaKind::Produce => version >= 6,
        QuotaKind::Fetch => version >= 8,
    }
}

async fn hold(kind: QuotaKind, version: i16, throttle_ms: i64) {
    if throttle_ms > 0 && !client_throttles(kind, version) {
        tokio::time::sleep(Duration::from_millis(throttle_ms as u64)).await;
    }
}

fn throttled_produce(version: i16, frame: Option<Bytes>, throttle_ms: i32) -> Option<Bytes> {
    let frame = frame?;
    match produce_response_throttled(version, &frame, throttle_ms) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(error = %e, "cannot set throttle_time_ms of a Produce response");
            Some(frame)
        }
    }
}

/// The reply of a charged request, with its throttle: `throttle_time_ms` set, the connection
/// muted for that long, and the answer held back for clients that do not throttle themselves.
pub(crate) fn throttle(
    ctx: &Arc<BrokerCtx>,
    charge: Charge,
    reply: Reply,
    mute: &Arc<Mute>,
) -> Reply {
    let Charge { kind, version, client_id, throttle_ms } = charge;
    match kind {
        QuotaKind::Produce => {
            if throttle_ms <= 0 {
                return reply;
            }
            mute.hold_until(ctx.clock.now_ms() + throttle_ms);
            let ms = throttle_ms.min(i32::MAX as i64) as i32;
            match reply {
                Reply::Now(frame) if client_throttles(kind, version) => {
                    Reply::Now(throttled_produce(version, frame, ms))
                }
                Reply::Now(frame) => Reply::Later(Box::pin(async move {
                    hold(kind, version, throttle_ms).await;
                    throttled_produce(version, frame, ms)
                })),
                Reply::Later(fut) => Reply::Later(Box::pin(async move {
                    let frame = fut.await;
                    hold(kind, version, throttle_ms).await;
                    throttled_produce(version, frame, ms)
                })),
                other => other,
            }
        }
        QuotaKind::Fetch => match reply {
            Reply::LaterChain(fut) => {
                let ctx = ctx.clone();
                let mute = mute.clone();
                Reply::LaterChain(Box::pin(async move {
                    let mut chain = fut.await?;
                    let bytes = chain.iter().map(Bytes::len).sum();
                    let now = ctx.clock.now_ms();
                    let throttle_ms = ctx.quotas.record(kind, &client_id, bytes, now);
                    if throttle_ms > 0 {
                        mute.hold_until(now + throttle_ms);
                        let ms = throttle_ms.min(i32::MAX as i64) as i32;
                        if !set_fetch_throttle_time(version, &mut chain, ms) {
                            tracing::error!("cannot set throttle_time_ms of a Fetch response");
                        }
                        hold(kind, version, throttle_ms).await;
                    }
                    Some(chain)
                }))
            }
            other => other,
        },
    }
}

/// Whether an API's requests may be charged at all: the connection checks this before
/// looking at quotas.
pub(crate) fn is_charged(api_key: ApiKey) -> bool {
    matches!(api_key, ApiKey::Produce | ApiKey::Fetch)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use strom_metadata::quotas::{QuotaValue, PRODUCER_BYTE_RATE};

    use super::*;

    /// One quota of `key` on `entity`.
    fn quotas(entity: &[(&str, Option<&str>)], key: &str, value: f64) -> Arc<ClientQuotas> {
        let entity: QuotaEntity =
            entity.iter().map(|(t, n)| (t.to_string(), n.map(str::to_string))).collect();
        let values = BTreeMap::from([(key.to_string(), QuotaValue(value))]);
        Arc::new(ClientQuotas::from([(entity, values)]))
    }

    #[test]
    fn a_new_rate_is_measured_over_at_least_one_window() {
        let mut rate = Rate::new(0);
        rate.record(1_000.0, 0);
        assert_eq!(rate.window_ms(0), QUOTA_WINDOW_SIZE_MS);
        assert_eq!(rate.measure(0), 1_000.0);
        rate.record(1_000.0, 500);
        // One whole window, plus the part of the current one that has passed.
        assert_eq!(rate.window_ms(500), 1_500);
        assert_eq!(rate.measure(500), 2_000.0 / 1.5);
        // After 15 s the first sample is older than the 11-window span: purged.
        for t in 1..=15 {
            rate.record(1_000.0, t * 1000);
        }
        let window = rate.window_ms(15_000);
        assert_eq!(window, 10_000, "eleven samples spanning 10 s");
        assert_eq!(rate.measure(15_000), 11_000.0 * 1000.0 / 10_000.0);
    }

    #[test]
    fn throttle_brings_the_rate_back_to_the_bound() {
        assert_eq!(throttle_ms(1_000.0, 1_000.0, 10_000), 0);
        assert_eq!(throttle_ms(900.0, 1_000.0, 10_000), 0);
        assert_eq!(throttle_ms(1_500.0, 1_000.0, 10_000), 5_000);
        assert_eq!(throttle_ms(2_000.0, 1_000.0, 11_000), 11_000);
        // A client at its quota for a while bursts: held for the throttle time, its rate is
        // back at the bound.
        let bound = 1_000.0;
        let mut rate = Rate::new(0);
        for t in 0..20 {
            rate.record(bound, t * 1000);
        }
        rate.record(5_000.0, 19_500);
        let now = 19_500;
        let wait = throttle_ms(rate.measure(now), bound, rate.window_ms(now));
        assert!(wait > 0);
        let after = rate.measure(now + wait);
        assert!(after <= bound * 1.001, "{after} B/s after {wait} ms");
    }

    #[test]
    fn a_client_over_its_quota_is_throttled_and_one_without_is_not() {
        let mut state = QuotaState::default();
        state.set_quotas(quotas(&[(CLIENT_ID, Some("slow"))], PRODUCER_BYTE_RATE, 1_000.0));
        assert_eq!(state.record(QuotaKind::Produce, ANONYMOUS, "slow", 1_000, 0), 0);
        let t = state.record(QuotaKind::Produce, ANONYMOUS, "slow", 2_000, 100);
        assert_eq!(t, 1_900, "3,000 B in a window of 1.1 s against 1,000 B/s: 3 s - 1.1 s");
        assert_eq!(state.record(QuotaKind::Produce, ANONYMOUS, "fast", 1_000_000, 100), 0);
        assert_eq!(state.record(QuotaKind::Fetch, ANONYMOUS, "slow", 1_000_000, 100), 0);
        assert_eq!(state.sensors.len(), 1, "no rate kept for clients without a quota");
    }

    #[test]
    fn a_default_client_quota_holds_each_client_id_on_its_own_rate() {
        let mut state = QuotaState::default();
        state.set_quotas(quotas(&[(CLIENT_ID, None)], PRODUCER_BYTE_RATE, 1_000.0));
        assert_eq!(state.record(QuotaKind::Produce, ANONYMOUS, "a", 1_000, 0), 0);
        assert_eq!(state.record(QuotaKind::Produce, ANONYMOUS, "b", 1_000, 0), 0, "own rate");
        assert!(state.record(QuotaKind::Produce, ANONYMOUS, "a", 1, 0) > 0);
        // A default-user quota is one rate for the user, whatever the client id.
        state.set_quotas(quotas(&[(USER, None)], PRODUCER_BYTE_RATE, 1_000.0));
        assert_eq!(state.record(QuotaKind::Produce, ANONYMOUS, "c", 1_000, 0), 0);
        assert!(state.record(QuotaKind::Produce, ANONYMOUS, "d", 1_000, 0) > 0, "shared rate");
        assert_eq!(state.bound(QuotaKind::Produce, ANONYMOUS, "x"), Some(1_000.0));
        assert_eq!(state.bound(QuotaKind::Fetch, ANONYMOUS, "x"), None);
    }
}
