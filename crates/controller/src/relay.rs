//! The one `ControllerClient` of every node: a request goes to the active controller, which
//! alone decides. On a voter that leads, to its own active-controller task; otherwise over
//! gRPC (`Controller.Submit`) to the voter that leads, or, while none is known, to each voter
//! in turn. A broker-only node has no task of its own and always relays.
//!
//! A request is asked again (bounded in attempts and in time, with a bounded backoff cut
//! short when a new leader is known) only while it was certainly not decided: the target
//! answered NOT_CONTROLLER (refused before any proposal), or the request never left this node
//! (no connection could be made). Once it was sent and no answer came back (the connection
//! dropped under the call, the attempt timed out) the leader may have proposed it, and asking
//! again could apply it twice or report a misleading refusal: the caller gets
//! `ControlError::OutcomeUnknown` (Kafka's REQUEST_TIMED_OUT, gRPC's DEADLINE_EXCEEDED).

use std::collections::BTreeMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strom_metadata::control::{ControlRequest, ControlResponse};
use strom_metadata::{BoxFuture, ControlError, ControllerClient};
use strom_proto::controller as pb;
use strom_proto::controller::controller_client::ControllerClient as GrpcControllerClient;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::ControllerError;
use crate::events::EventClient;
use crate::network::{Channels, RPC_MESSAGE_BYTES_MAX};
use crate::wire;

/// Attempts per request, whoever answers; the submit wait usually ends it first.
pub const RELAY_ATTEMPTS_MAX: u32 = 64;

/// The pause after an attempt that no controller took; doubled up to the max.
pub const RELAY_BACKOFF_MS_MIN: u64 = 10;
pub const RELAY_BACKOFF_MS_MAX: u64 = 500;

/// How long opening a connection to a voter may take.
pub const RELAY_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// How long one relayed attempt may take: the active controller may wait up to its submit
/// wait (five election timeouts, 10 s at the defaults) for the records to commit.
pub const RELAY_ATTEMPT_TIMEOUT_MS: u64 = 15_000;

/// How long one request of a broker-only node may take in all, retries included (a voter
/// uses its own submit wait).
pub const RELAY_SUBMIT_WAIT_MS: u64 = 30_000;

const _: () = assert!(RELAY_BACKOFF_MS_MIN <= RELAY_BACKOFF_MS_MAX);
const _: () = assert!(RELAY_CONNECT_TIMEOUT_MS < RELAY_ATTEMPT_TIMEOUT_MS);
const _: () = assert!(RELAY_ATTEMPT_TIMEOUT_MS <= RELAY_SUBMIT_WAIT_MS);

/// Submits requests to whichever voter is the active controller.
#[derive(Clone)]
pub struct RelayClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// (node id, control address), in id order.
    voters: Vec<(u64, String)>,
    /// This node's id and active-controller task, on a voter.
    local: Option<(u64, Arc<EventClient>)>,
    /// The active controller as this node last heard (raft, or the metadata follower).
    leader: Option<watch::Receiver<Option<u64>>>,
    channels: Channels,
    /// The voter that took the last request: where the next one goes while no leader is known.
    preferred: AtomicUsize,
    /// How long one submit may take in all, relays and retries included.
    submit_wait: Duration,
}

/// What one attempt came to.
enum Attempt {
    Done(Result<ControlResponse, ControlError>),
    /// Certainly not decided: ask again (the reason is kept for the final refusal).
    NotDecided(String),
    /// Sent, and no answer: it may have been proposed.
    OutcomeUnknown(String),
}

fn channels() -> Channels {
    Channels::new(
        Duration::from_millis(RELAY_CONNECT_TIMEOUT_MS),
        Duration::from_millis(RELAY_ATTEMPT_TIMEOUT_MS),
    )
}

impl RelayClient {
    /// The client of a broker-only node: the voters `controller.quorum_voters` names (node id →
    /// control address).
    pub fn new(voters: BTreeMap<u64, String>) -> Result<RelayClient, ControllerError> {
        if voters.is_empty() {
            return Err(ControllerError::ConfigInvalid {
                key: "controller.quorum_voters",
                reason: "a broker-only node needs at least one controller voter",
            });
        }
        let channels = channels();
        for addr in voters.values() {
            channels.get(addr).map_err(|_| ControllerError::ConfigInvalid {
                key: "controller.quorum_voters",
                reason: "a voter's control address is not host:port",
            })?;
        }
        Ok(RelayClient {
            inner: Arc::new(Inner {
                voters: voters.into_iter().collect(),
                local: None,
                leader: None,
                channels,
                preferred: AtomicUsize::new(0),
                submit_wait: Duration::from_millis(RELAY_SUBMIT_WAIT_MS),
            }),
        })
    }

    /// The client of voter `node_id`: its own task while it leads, the leader `leader` names
    /// otherwise.
    pub(crate) fn for_voter(
        node_id: u64,
        local: Arc<EventClient>,
        voters: BTreeMap<u64, String>,
        leader: watch::Receiver<Option<u64>>,
        submit_wait: Duration,
    ) -> RelayClient {
        RelayClient {
            inner: Arc::new(Inner {
                voters: voters.into_iter().collect(),
                local: Some((node_id, local)),
                leader: Some(leader),
                channels: channels(),
                preferred: AtomicUsize::new(0),
                submit_wait,
            }),
        }
    }

    /// Sends each request first to the active controller that `leader` names (the metadata
    /// follower's leader watch), when it is one of the voters.
    pub fn with_leader(self, leader: watch::Receiver<Option<u64>>) -> RelayClient {
        let inner = Inner {
            voters: self.inner.voters.clone(),
            local: self.inner.local.clone(),
            leader: Some(leader),
            channels: self.inner.channels.clone(),
            preferred: AtomicUsize::new(self.inner.preferred.load(Ordering::Relaxed)),
            submit_wait: self.inner.submit_wait,
        };
        RelayClient { inner: Arc::new(inner) }
    }
}

impl ControllerClient for RelayClient {
    fn submit(&self, request: ControlRequest) -> BoxFuture<Result<ControlResponse, ControlError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.submit(request).await })
    }
}

impl Inner {
    fn known_leader(&self) -> Option<u64> {
        self.leader.as_ref().and_then(|l| *l.borrow())
    }

    async fn submit(&self, request: ControlRequest) -> Result<ControlResponse, ControlError> {
        let deadline = Instant::now() + self.submit_wait;
        let mut message = None;
        let mut backoff = Duration::from_millis(RELAY_BACKOFF_MS_MIN);
        let mut last = String::from("no active controller is known");
        let first = self.preferred.load(Ordering::Relaxed);
        let mut turn = 0;
        for _ in 0..RELAY_ATTEMPTS_MAX {
            if self.local.as_ref().is_some_and(|(_, local)| local.is_closed()) {
                return Err(ControlError::ControllerUnavailable(
                    "the controller is shut down".into(),
                ));
            }
            let leader = self.known_leader();
            let index = match leader.and_then(|id| self.voters.iter().position(|v| v.0 == id)) {
                Some(index) => index,
                None => {
                    turn += 1;
                    (first + turn - 1) % self.voters.len()
                }
            };
            let attempt = match &self.local {
                Some((node_id, local)) if *node_id == self.voters[index].0 => {
                    match local.submit_local(request.clone()).await {
                        Err(ControlError::NotController) => {
                            Attempt::NotDecided("this node does not lead".into())
                        }
                        answer => Attempt::Done(answer),
                    }
                }
                _ => {
                    let message = match &message {
                        Some(m) => m,
                        None => {
                            let m = wire::request_to_pb(&request);
                            wire::check_relayable(&m)?;
                            message.insert(m)
                        }
                    };
                    self.relay(index, message, deadline).await
                }
            };
            match attempt {
                Attempt::Done(answer) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return answer;
                }
                Attempt::OutcomeUnknown(why) => return Err(ControlError::OutcomeUnknown(why)),
                Attempt::NotDecided(why) => last = why,
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // With no leader known, each voter is asked once before the pause.
            if leader.is_none() && turn % self.voters.len() != 0 {
                continue;
            }
            let pause = backoff.min(deadline - now);
            match &self.leader {
                // A new leader ends the pause early: that is what the retry waits for.
                Some(watch) => {
                    let mut watch = watch.clone();
                    let changed = watch.wait_for(|l| l.is_some() && *l != leader);
                    let _ = tokio::time::timeout(pause, changed).await;
                }
                None => tokio::time::sleep(pause).await,
            }
            backoff = (backoff * 2).min(Duration::from_millis(RELAY_BACKOFF_MS_MAX));
        }
        Err(ControlError::ControllerUnavailable(format!(
            "no active controller answered within {} ms: {last}",
            self.submit_wait.as_millis()
        )))
    }

    /// One relay to the voter at `index` over gRPC.
    async fn relay(
        &self,
        index: usize,
        message: &pb::ControlRequest,
        deadline: Instant,
    ) -> Attempt {
        let (id, addr) = &self.voters[index];
        let channel = match self.channels.get(addr) {
            Ok(channel) => channel,
            Err(e) => return Attempt::NotDecided(e),
        };
        let mut client = GrpcControllerClient::new(channel)
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX);
        let mut call = tonic::Request::new(message.clone());
        call.set_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(RELAY_ATTEMPT_TIMEOUT_MS)),
        );
        let failed = |status: &tonic::Status| {
            format!("controller {id} at {addr}: {:?}: {}", status.code(), status.message())
        };
        match client.submit(call).await {
            Ok(answer) => match wire::response_from_pb(answer.into_inner()) {
                Ok(Err(ControlError::NotController)) => {
                    Attempt::NotDecided(format!("controller {id} at {addr} does not lead"))
                }
                Ok(answer) => Attempt::Done(answer),
                Err(e) => Attempt::Done(Err(ControlError::ControllerUnavailable(format!(
                    "bad answer from controller {id} at {addr}: {e}"
                )))),
            },
            // No connection: the request never left this node.
            Err(status) if never_sent(&status) => Attempt::NotDecided(failed(&status)),
            // Our own malformed request, or a peer without the service: refused undecided, and
            // asking again (or elsewhere) cannot help.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::Unimplemented
                ) =>
            {
                Attempt::Done(Err(ControlError::ControllerUnavailable(failed(&status))))
            }
            // The service answers only OK or INVALID_ARGUMENT: anything else is the call
            // failing after it was sent (the connection dropped, the time ran out).
            Err(status) => Attempt::OutcomeUnknown(failed(&status)),
        }
    }
}

/// The call certainly never reached the service: no connection could be made (tonic's
/// `ConnectError`), the connection closed before the request was handed to it (hyper's
/// "canceled"), or the peer refused the stream unprocessed (HTTP/2 REFUSED_STREAM, or a GOAWAY
/// whose last processed stream is below it, which h2 reports as a remote GOAWAY error on
/// exactly those streams).
fn never_sent(status: &tonic::Status) -> bool {
    let mut source = status.source();
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let refused = h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            if h2.is_remote() && (h2.is_go_away() || refused) {
                return true;
            }
        }
        source = e.source();
    }
    false
}
