//! The marker sender: one task per broker that writes the COMMIT/ABORT markers of the
//! transactions its coordinator shards prepare. Shards hand it jobs over a bounded queue
//! ([`MarkerSender::write`]); it sends WriteTxnMarkers v1 to each partition leader (this broker
//! included, over its own listener) as [`super::markers::MarkerQueue`] decides, keeps one
//! connection per broker, and answers each job once all its markers are written or it gives up.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::{ApiKey, WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use strom_metadata::NodeId;
use tokio::sync::{mpsc, oneshot, watch};

use super::markers::{self, Finished, JobId, MarkerJob, MarkerQueue, MarkerRequest};
use crate::peer::{broker_addr, PeerConn};
use crate::BrokerCtx;

/// Jobs queued for the sender before shards wait.
const JOB_QUEUE_MAX: usize = 1_024;
/// Jobs the sender holds at once; while it holds that many it takes no new one.
const JOBS_MAX: usize = 4_096;
const _: () = assert!(JOB_QUEUE_MAX <= JOBS_MAX);
/// How long a leader may take to answer: it waits for its ISR (up to 30 s) before it does.
const CALL_TIMEOUT: Duration = Duration::from_secs(35);
/// Longest sleep between checks of the queue's deadlines.
const IDLE_MS_MAX: i64 = 1_000;
const CLIENT_ID: &str = "strom-txn-markers";
/// WriteTxnMarkers v1 (flexible): what strom's leaders serve.
const WRITE_TXN_MARKERS_VERSION: i16 = 1;

struct Submitted {
    job: MarkerJob,
    done: oneshot::Sender<bool>,
}

/// The shards' handle on the marker sender.
#[derive(Clone)]
pub(crate) struct MarkerSender {
    tx: mpsc::Sender<Submitted>,
}

/// The sender's end of the queue, for [`run`].
pub(crate) struct MarkerJobs(mpsc::Receiver<Submitted>);

impl MarkerSender {
    pub fn new() -> (MarkerSender, MarkerJobs) {
        let (tx, rx) = mpsc::channel(JOB_QUEUE_MAX);
        (MarkerSender { tx }, MarkerJobs(rx))
    }

    /// Writes the markers of `job`: true once every partition has its marker, false if the
    /// sender gave up (stale epoch, no success in time, or the sender stopped).
    pub async fn write(&self, job: MarkerJob) -> bool {
        let (done, written) = oneshot::channel();
        if self.tx.send(Submitted { job, done }).await.is_err() {
            return false;
        }
        written.await.unwrap_or(false)
    }
}

/// One request's outcome: the request, the connection if it is still usable, the answer.
type Sent = (MarkerRequest, Option<PeerConn>, Result<WriteTxnMarkersResponse, String>);
type InFlight = Pin<Box<dyn std::future::Future<Output = Sent> + Send>>;

/// Sends WriteTxnMarkers `body` to `node` at `addr`, on `conn` or a new connection.
fn send(
    addr: String,
    conn: Option<PeerConn>,
    request: MarkerRequest,
    body: WriteTxnMarkersRequest,
) -> InFlight {
    Box::pin(async move {
        let mut conn = match conn {
            Some(c) => c,
            None => match PeerConn::connect(&addr).await {
                Ok(c) => c,
                Err(e) => return (request, None, Err(e)),
            },
        };
        let key = ApiKey::WriteTxnMarkers;
        let answer =
            conn.call_within(key, WRITE_TXN_MARKERS_VERSION, &body, CLIENT_ID, CALL_TIMEOUT).await;
        // After an error the connection may hold a late answer: it is not reused.
        let conn = answer.is_ok().then_some(conn);
        (request, conn, answer)
    })
}

pub(crate) async fn run(
    ctx: Arc<BrokerCtx>,
    MarkerJobs(mut jobs): MarkerJobs,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut queue = MarkerQueue::default();
    let mut waiting: HashMap<JobId, oneshot::Sender<bool>> = HashMap::new();
    let mut idle: HashMap<NodeId, PeerConn> = HashMap::new();
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    let mut image_rx = ctx.image.subscribe();
    loop {
        let now = ctx.clock.now_ms();
        // A shard that stopped (leadership moved) no longer waits: its markers are dropped,
        // as Kafka drops a deposed coordinator's.
        waiting.retain(|id, done| {
            let keep = !done.is_closed();
            if !keep {
                queue.cancel(*id);
            }
            keep
        });
        for (id, finished) in queue.take_finished(now) {
            if let Some(done) = waiting.remove(&id) {
                let _ = done.send(finished == Finished::Written);
            }
        }
        let image = ctx.image.current();
        for request in queue.dispatch(now, |tp| markers::destination(&image, tp)) {
            match broker_addr(&ctx.config, &image, request.node) {
                Some(addr) => {
                    let body = queue.request_body(&request);
                    let conn = idle.remove(&request.node);
                    in_flight.push(send(addr, conn, request, body));
                }
                None => queue.failed(now, request),
            }
        }
        let next = queue.next_due_ms(now).unwrap_or(i64::MAX).min(now + IDLE_MS_MAX);
        let sleep = Duration::from_millis((next - now).clamp(1, IDLE_MS_MAX) as u64);
        tokio::select! {
            submitted = jobs.recv(), if queue.len() < JOBS_MAX => match submitted {
                Some(Submitted { job, done }) => {
                    let id = queue.add(job, ctx.clock.now_ms());
                    waiting.insert(id, done);
                }
                None => return,
            },
            Some((request, conn, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                let now = ctx.clock.now_ms();
                match answer {
                    Ok(response) => {
                        if let Some(conn) = conn {
                            idle.insert(request.node, conn);
                        }
                        queue.answered(now, request, &response);
                    }
                    Err(e) => {
                        tracing::debug!(node = request.node.0, error = %e,
                            "WriteTxnMarkers got no answer; retrying");
                        queue.failed(now, request);
                    }
                }
            }
            changed = image_rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => return,
        }
    }
}
