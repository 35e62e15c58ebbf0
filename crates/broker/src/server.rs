//! The Kafka listener: one task per connection reads frames, a writer task sends responses in
//! request order, as Kafka requires.
//!
//! Requests are handled in two parts. The ordered part (decoding, appending to logs, admin
//! calls) runs in the reader, in arrival order, so pipelined produce requests append in order.
//! The waiting part (fsync acknowledgement, fetch long-poll) runs in its own task, so a slow
//! request does not stop the connection from reading the next one.
//!
//! Each listener bounds its connections (`max.connections`, `max.connections.per.ip`): one over
//! a limit is closed as soon as it is accepted, so a flood costs an accept and a close, and the
//! accept queue keeps moving. A connection that has nothing in flight and has sent nothing for
//! `connections.max.idle.ms` is closed. An idle connection holds no buffers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use strom_protocol::frame::{frame_len, FrameError};
use strom_protocol::request::{decode_request, encode_response, RequestError};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Sleep;

use crate::config::ConnectionLimits;
use crate::handlers::{self, Reply};
use crate::metrics::ApiHandles;
use crate::BrokerCtx;

/// Requests one connection may have in flight before the reader waits for the writer.
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 128;
/// Write buffer of a connection, allocated with its first response.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Refused connections are logged at most once per interval, with a count: a flood must not
/// turn into a flood of log lines.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after a failed accept (EMFILE and friends) rather than spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max.connections` connections are open on this listener.
    Listener { max: usize },
    /// `max.connections.per.ip` (or its override) connections are open from this address.
    Address { ip: IpAddr, max: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Listener { max } => write!(f, "{max} connections open (max.connections)"),
            Refusal::Address { ip, max } => {
                write!(f, "{max} connections open from {ip} (max.connections.per.ip)")
            }
        }
    }
}

/// The open connections of one listener, in all and per client address: the accept loop asks
/// before serving a connection, and a connection gives its place back when it ends.
#[derive(Debug)]
pub(crate) struct ConnectionCounts {
    limits: ConnectionLimits,
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnectionCounts {
    pub fn new(limits: ConnectionLimits) -> ConnectionCounts {
        ConnectionCounts { limits, open: 0, per_ip: HashMap::new() }
    }

    /// Takes a place for a connection from `ip`, or says which limit refuses it.
    pub fn open(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.open >= self.limits.max_connections {
            return Err(Refusal::Listener { max: self.limits.max_connections });
        }
        let max = self.limits.per_ip_max(ip);
        let from_ip = self.per_ip.entry(ip).or_insert(0);
        if *from_ip >= max {
            if *from_ip == 0 {
                self.per_ip.remove(&ip);
            }
            return Err(Refusal::Address { ip, max });
        }
        *from_ip += 1;
        self.open += 1;
        Ok(())
    }

    /// Gives back the place of a connection from `ip` that [`Self::open`] granted.
    pub fn close(&mut self, ip: IpAddr) {
        let from_ip = self.per_ip.get_mut(&ip);
        assert!(
            matches!(from_ip.as_deref(), Some(n) if *n > 0) && self.open > 0,
            "close of a connection from {ip} that was never opened"
        );
        if let Some(n) = from_ip {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        self.open -= 1;
    }
}

/// A connection's place in its listener's counts, given back on drop.
struct Slot {
    counts: Arc<Mutex<ConnectionCounts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).close(self.ip);
    }
}

/// Serves one listener: `name` is what its log lines call it.
pub(crate) async fn accept_loop(
    tcp: TcpListener,
    name: String,
    limits: ConnectionLimits,
    ctx: Arc<BrokerCtx>,
    mut open: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Kafka's rule: requests are processed only once the broker has caught up with the
    // metadata log up to its own registration. Until then the socket is bound and
    // connections wait in the backlog; a replayed, half-applied image (a topic's broker
    // already listed, the topic not yet) is never served.
    while !*open.borrow_and_update() {
        tokio::select! {
            changed = open.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
    let idle = Duration::from_millis(limits.connections_max_idle_ms);
    let counts = Arc::new(Mutex::new(ConnectionCounts::new(limits)));
    let mut refused: u64 = 0;
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let admitted = counts.lock().unwrap_or_else(PoisonError::into_inner).open(peer.ip());
        if let Err(why) = admitted {
            // Closed here and now: the client sees the connection end at once.
            drop(stream);
            refused += 1;
            let now = Instant::now();
            if last_refusal_log.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL) {
                tracing::warn!(
                    listener = %name, %peer, refused,
                    "connection refused: {why}; {refused} refused since the last such line"
                );
                last_refusal_log = Some(now);
                refused = 0;
            }
            continue;
        }
        let slot = Slot { counts: counts.clone(), ip: peer.ip() };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match serve(stream, peer, ctx, idle, shutdown).await {
                Ok(()) => {}
                Err(Close::Idle) => {
                    tracing::debug!(%peer, "closing connection: idle (connections.max.idle.ms)")
                }
                Err(Close::Error(why)) => tracing::info!(%peer, "closing connection: {why}"),
            }
            drop(slot);
        });
    }
}

/// Why the broker ends a connection.
enum Close {
    /// Nothing in flight and nothing received for `connections.max.idle.ms`.
    Idle,
    /// A protocol error, told to the log.
    Error(String),
}

/// When a connection last did something, and how many of its requests await a response: what
/// the idle timeout looks at.
struct Activity {
    since: Instant,
    /// Milliseconds after `since` of the last byte read or response written.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.since.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn request_queued(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn response_written(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// When the connection becomes idle if nothing happens until then; `None` while a request
    /// is in flight.
    fn idle_at(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle)
    }
}

/// How a read of a whole buffer ended.
enum ReadEnd {
    Filled,
    /// The client closed the connection; `usize` bytes of the buffer had arrived.
    Eof(usize),
    Idle,
    Shutdown,
    Failed(std::io::Error),
}

/// Fills `buf`, closing in on the idle deadline. The timer is moved only when it fires (to
/// the deadline the activity gives then), so the hot path costs no timer updates.
async fn read_full(
    rd: &mut OwnedReadHalf,
    buf: &mut [u8],
    activity: &Activity,
    idle: Duration,
    timer: &mut Pin<&mut Sleep>,
    shutdown: &mut watch::Receiver<bool>,
) -> ReadEnd {
    let mut filled = 0;
    while filled < buf.len() {
        tokio::select! {
            r = rd.read(&mut buf[filled..]) => match r {
                Ok(0) => return ReadEnd::Eof(filled),
                Ok(n) => {
                    filled += n;
                    activity.touch();
                }
                Err(e) => return ReadEnd::Failed(e),
            },
            () = timer.as_mut() => {
                let now = Instant::now();
                match activity.idle_at(idle) {
                    Some(at) if at <= now => return ReadEnd::Idle,
                    Some(at) => timer.as_mut().reset(at.into()),
                    None => timer.as_mut().reset((now + idle).into()),
                }
            }
            _ = shutdown.changed() => return ReadEnd::Shutdown,
        }
    }
    ReadEnd::Filled
}

/// A response still being produced, in the order its request arrived, with what its
/// request's latency metrics need (none for a request answered before it was decoded).
struct Pending {
    response: oneshot::Receiver<Option<Frame>>,
    timing: Option<Timing>,
}

/// When a request's frame was read, and its API's latency histograms.
struct Timing {
    received: Instant,
    api: Arc<ApiHandles>,
}

/// A response frame: one buffer, or a chain of buffers written back to back (see
/// `Reply::LaterChain`).
enum Frame {
    One(Bytes),
    Chain(Vec<Bytes>),
}

/// The remaining bytes of a chain, for vectored writes (`write_all_buf`).
struct ChainBuf {
    parts: std::collections::VecDeque<Bytes>,
    remaining: usize,
}

impl ChainBuf {
    fn new(parts: Vec<Bytes>) -> ChainBuf {
        let remaining = parts.iter().map(Bytes::len).sum();
        ChainBuf { parts: parts.into_iter().filter(|p| !p.is_empty()).collect(), remaining }
    }
}

impl Buf for ChainBuf {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| p.as_ref())
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let n = dst.len().min(self.parts.len());
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = std::io::IoSlice::new(part);
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the chain");
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else { break };
            if cnt < front.len() {
                front.advance(cnt);
                break;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<BrokerCtx>,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Close> {
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(IN_FLIGHT_PER_CONNECTION_MAX);
    let activity = Arc::new(Activity::new());
    let writer = tokio::spawn(write_responses(wr, rx, activity.clone()));
    let max = ctx.config.socket_request_max_bytes;
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    // Set by a response throttled for a client quota: no request is read before then.
    let mute = Arc::new(crate::quota::Mute::default());
    let result = loop {
        let muted = mute.remaining(ctx.clock.as_ref());
        if !muted.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(muted) => {}
                _ = shutdown.changed() => break Ok(()),
            }
            continue;
        }
        let mut prefix = [0u8; 4];
        match read_full(&mut rd, &mut prefix, &activity, idle, &mut timer, &mut shutdown).await {
            ReadEnd::Filled => {}
            // The client went away between requests, or the node stops: normal.
            ReadEnd::Eof(0) | ReadEnd::Shutdown => break Ok(()),
            ReadEnd::Idle => break Err(Close::Idle),
            ReadEnd::Eof(n) => {
                break Err(Close::Error(format!("closed after {n} bytes of a frame length")))
            }
            ReadEnd::Failed(_) => break Ok(()),
        }
        let len = match frame_len(prefix, max) {
            Ok(len) => len,
            Err(e @ FrameError::TooLarge { .. }) => {
                break Err(Close::Error(format!(
                    "{e} (raise socket.request.max.bytes to allow it)"
                )))
            }
            Err(e) => break Err(Close::Error(e.to_string())),
        };
        let mut buf = BytesMut::zeroed(len);
        match read_full(&mut rd, &mut buf, &activity, idle, &mut timer, &mut shutdown).await {
            ReadEnd::Filled => {}
            ReadEnd::Shutdown => break Ok(()),
            ReadEnd::Idle => break Err(Close::Idle),
            ReadEnd::Eof(n) => {
                break Err(Close::Error(format!("truncated frame: {n} of {len} bytes")))
            }
            ReadEnd::Failed(e) => {
                break Err(Close::Error(format!("truncated frame: expected {len} bytes: {e}")))
            }
        }
        let received = Instant::now();
        let mut frame = match decode_request(buf.freeze()) {
            Ok(f) => f,
            Err(RequestError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                version,
                correlation_id,
            }) => {
                // KIP-511: answer an unknown ApiVersions version with v0 and our ranges, so
                // the client can retry with a version we speak.
                let resp = ApiVersionsResponse::default()
                    .with_error_code(crate::errors::KafkaError::UnsupportedVersion.into())
                    .with_api_keys(handlers::api_versions::api_keys());
                let bytes = match encode_response(ApiKey::ApiVersions, 0, correlation_id, &resp) {
                    Ok(b) => b,
                    Err(e) => {
                        break Err(Close::Error(format!("cannot encode ApiVersions v0: {e}")))
                    }
                };
                tracing::debug!(version, "ApiVersions version unsupported; answered with v0");
                let (otx, orx) = oneshot::channel();
                let _ = otx.send(Some(Frame::One(bytes)));
                activity.request_queued();
                if tx.send(Pending { response: orx, timing: None }).await.is_err() {
                    break Ok(());
                }
                continue;
            }
            Err(e) => break Err(Close::Error(e.to_string())),
        };
        let api = ctx.metrics.api(frame.api_key);
        ctx.metrics.request(&api, frame.api_version);
        let (otx, orx) = oneshot::channel();
        activity.request_queued();
        let timing = Some(Timing { received, api: api.clone() });
        if tx.send(Pending { response: orx, timing }).await.is_err() {
            break Ok(());
        }
        let charge = (ctx.quotas.is_active() && crate::quota::is_charged(frame.api_key))
            .then(|| crate::quota::charge(&ctx, &mut frame, len))
            .flatten();
        let local = Instant::now();
        let reply = handlers::handle(&ctx, frame, peer).await;
        api.local.observe(local.elapsed().as_secs_f64());
        let reply = match charge {
            Some(charge) => crate::quota::throttle(&ctx, charge, reply, &mute),
            None => reply,
        };
        match reply {
            Reply::Now(bytes) => {
                let _ = otx.send(bytes.map(Frame::One));
            }
            Reply::Later(fut) => {
                tokio::spawn(async move {
                    let remote = Instant::now();
                    let frame = fut.await.map(Frame::One);
                    api.remote.observe(remote.elapsed().as_secs_f64());
                    let _ = otx.send(frame);
                });
            }
            Reply::LaterChain(fut) => {
                tokio::spawn(async move {
                    let remote = Instant::now();
                    let frame = fut.await.map(Frame::Chain);
                    api.remote.observe(remote.elapsed().as_secs_f64());
                    let _ = otx.send(frame);
                });
            }
            Reply::Close(why) => break Err(Close::Error(why)),
        }
    };
    drop(tx);
    // Responses already owed are still delivered (unless the client is gone).
    let _ = writer.await;
    result
}

async fn write_responses(
    wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Pending>,
    activity: Arc<Activity>,
) {
    use tokio::sync::mpsc::error::TryRecvError;
    use tokio::sync::oneshot::error::TryRecvError as OneshotTryRecv;
    // An idle connection holds no write buffer: it comes with the first response.
    let Some(first) = rx.recv().await else { return };
    let mut next = Some(first);
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, wr);
    loop {
        // Flush only before waiting: responses that are ready together share one syscall,
        // and none sits in the buffer while a later one (a long poll) is awaited.
        let mut pending = match next.take().map_or_else(|| rx.try_recv(), Ok) {
            Ok(p) => p,
            Err(TryRecvError::Empty) => {
                if out.flush().await.is_err() {
                    return;
                }
                match rx.recv().await {
                    Some(p) => p,
                    None => return,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let frame = match pending.response.try_recv() {
            Ok(b) => b,
            Err(OneshotTryRecv::Empty) => {
                if out.flush().await.is_err() {
                    return;
                }
                match (&mut pending.response).await {
                    Ok(b) => b,
                    Err(_) => return,
                }
            }
            Err(OneshotTryRecv::Closed) => return,
        };
        let send = Instant::now();
        let written = match frame {
            None => Ok(()),
            Some(Frame::One(bytes)) => out.write_all(&bytes).await,
            // Vectored writes: parts larger than the buffer go to the socket from where they
            // are (BufWriter flushes what it holds first, so the order stays).
            Some(Frame::Chain(parts)) => out.write_all_buf(&mut ChainBuf::new(parts)).await,
        };
        if written.is_err() {
            return;
        }
        if let Some(timing) = pending.timing {
            timing.api.send.observe(send.elapsed().as_secs_f64());
            timing.api.total.observe(timing.received.elapsed().as_secs_f64());
        }
        activity.response_written();
    }
    let _ = out.flush().await;
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use bytes::{Buf, Bytes};

    use super::{Activity, ChainBuf, ConnectionCounts, Refusal};
    use crate::config::ConnectionLimits;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn connections_over_a_limit_are_refused_and_places_come_back_on_close() {
        let limits = ConnectionLimits {
            max_connections: 4,
            max_connections_per_ip: 2,
            max_connections_per_ip_overrides: [(ip(3), 0), (ip(4), 3)].into_iter().collect(),
            ..ConnectionLimits::default()
        };
        let mut counts = ConnectionCounts::new(limits);
        assert_eq!(counts.open(ip(1)), Ok(()));
        assert_eq!(counts.open(ip(1)), Ok(()));
        assert_eq!(counts.open(ip(1)), Err(Refusal::Address { ip: ip(1), max: 2 }));
        assert_eq!(counts.open(ip(3)), Err(Refusal::Address { ip: ip(3), max: 0 }));
        assert_eq!(counts.open(ip(4)), Ok(()));
        assert_eq!(counts.open(ip(4)), Ok(()));
        assert_eq!(counts.open, 4);
        // The override allows a third from 127.0.0.4, but the listener is full.
        assert_eq!(counts.open(ip(4)), Err(Refusal::Listener { max: 4 }));
        counts.close(ip(1));
        assert_eq!(counts.open(ip(4)), Ok(()));
        assert_eq!(counts.open(ip(1)), Err(Refusal::Listener { max: 4 }));
        for a in [ip(1), ip(4), ip(4), ip(4)] {
            counts.close(a);
        }
        assert_eq!(counts.open, 0);
        assert!(counts.per_ip.is_empty(), "no address is remembered once its connections end");
    }

    #[test]
    fn a_connection_with_a_request_in_flight_is_never_idle() {
        let idle = std::time::Duration::from_millis(600_000);
        let activity = Activity::new();
        assert_eq!(activity.idle_at(idle), Some(activity.since + idle), "idle from the accept");
        activity.request_queued();
        activity.request_queued();
        assert_eq!(activity.idle_at(idle), None);
        activity.response_written();
        assert_eq!(activity.idle_at(idle), None, "one response is still owed");
        activity.response_written();
        let after = activity.idle_at(idle).expect("nothing in flight");
        assert!(after >= activity.since + idle, "idle counts from the last response");
    }

    #[test]
    fn a_chain_buffer_yields_its_parts_in_order_across_partial_writes() {
        let parts = vec![
            Bytes::from_static(b"head"),
            Bytes::new(),
            Bytes::from_static(b"records"),
            Bytes::from_static(b"tail"),
        ];
        let mut chain = ChainBuf::new(parts);
        assert_eq!(chain.remaining(), 15);
        let mut slices = [std::io::IoSlice::new(&[]); 8];
        assert_eq!(chain.chunks_vectored(&mut slices), 3, "empty parts are dropped");
        let mut out = Vec::new();
        // Writes that stop mid-part, at a part boundary, and across two parts.
        for step in [2, 2, 5, 4, 2] {
            out.extend_from_slice(&chain.copy_to_bytes(step));
        }
        assert_eq!(out, b"headrecordstail");
        assert_eq!(chain.remaining(), 0);
        assert!(chain.chunk().is_empty());
    }
}
