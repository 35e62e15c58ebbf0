//! The one `ControllerClient` of every node: a request goes to the active controller, which
//! alone decides. On a voter that leads, to its own active-controller task; otherwise over
//! gRPC (`Controller.Submit`) to the voter that leads, or, while none is known, to each voter
//! in turn. A broker-only node has no task of its own and always relays. A controller node
//! relays to the voters of its committed membership (they change, KIP-853); before it has one
//! (an observer that has not caught up), and on a broker-only node, to the configured voters
//! or bootstrap servers, whose ids may be unknown.
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

/// How long a voter change may take in all (a new voter catching up, then its membership
/// entries committing), wherever it is submitted; one relayed attempt may take as long.
pub const VOTER_CHANGE_WAIT_MS: u64 = 20_000;

const _: () =
    assert!(crate::membership::VOTER_CATCH_UP_WAIT_MS_MAX * 3 / 2 <= VOTER_CHANGE_WAIT_MS);

const _: () = assert!(RELAY_BACKOFF_MS_MIN <= RELAY_BACKOFF_MS_MAX);
const _: () = assert!(RELAY_CONNECT_TIMEOUT_MS < RELAY_ATTEMPT_TIMEOUT_MS);
const _: () = assert!(RELAY_ATTEMPT_TIMEOUT_MS <= RELAY_SUBMIT_WAIT_MS);

/// Submits requests to whichever voter is the active controller.
#[derive(Clone)]
pub struct RelayClient {
    inner: Arc<Inner>,
}

/// A controller to relay to: its node id when known (a configured voter, or one of the
/// membership), and its control address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub node_id: Option<u64>,
    pub addr: String,
}

struct Inner {
    /// Where requests may go, in id order; a controller node's follows its membership.
    targets: watch::Receiver<Arc<Vec<Target>>>,
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
    /// Certainly not decided: ask again (the reason is kept for the final refusal), at the
    /// active controller the refusing node named, if it named one.
    NotDecided(String, Option<Target>),
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
        let targets =
            voters.into_iter().map(|(id, addr)| Target { node_id: Some(id), addr }).collect();
        RelayClient::to_targets(targets, "controller.quorum_voters")
    }

    /// The client of a broker-only node that knows the quorum by its bootstrap servers
    /// (`controller.quorum_bootstrap_servers`: control addresses, ids unknown).
    pub fn for_bootstrap_servers(servers: Vec<String>) -> Result<RelayClient, ControllerError> {
        let targets = servers.into_iter().map(|addr| Target { node_id: None, addr }).collect();
        RelayClient::to_targets(targets, "controller.quorum_bootstrap_servers")
    }

    fn to_targets(targets: Vec<Target>, key: &'static str) -> Result<RelayClient, ControllerError> {
        if targets.is_empty() {
            return Err(ControllerError::ConfigInvalid {
                key,
                reason: "a broker-only node needs at least one controller to send requests to",
            });
        }
        let channels = channels();
        for target in &targets {
            channels.get(&target.addr).map_err(|_| ControllerError::ConfigInvalid {
                key,
                reason: "a controller's control address is not host:port",
            })?;
        }
        let (_, targets) = watch::channel(Arc::new(targets));
        Ok(RelayClient {
            inner: Arc::new(Inner {
                targets,
                local: None,
                leader: None,
                channels,
                preferred: AtomicUsize::new(0),
                submit_wait: Duration::from_millis(RELAY_SUBMIT_WAIT_MS),
            }),
        })
    }

    /// The client of controller node `node_id`: its own task while it leads, the leader
    /// `leader` names otherwise, among `targets` (its membership's voters).
    pub(crate) fn for_voter(
        node_id: u64,
        local: Arc<EventClient>,
        targets: watch::Receiver<Arc<Vec<Target>>>,
        leader: watch::Receiver<Option<u64>>,
        submit_wait: Duration,
    ) -> RelayClient {
        RelayClient {
            inner: Arc::new(Inner {
                targets,
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
            targets: self.inner.targets.clone(),
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
        // A voter change may wait for a new voter to catch up: it is given longer.
        let wait = if request.is_voter_change() {
            self.submit_wait.max(Duration::from_millis(VOTER_CHANGE_WAIT_MS))
        } else {
            self.submit_wait
        };
        let deadline = Instant::now() + wait;
        let mut message = None;
        let mut backoff = Duration::from_millis(RELAY_BACKOFF_MS_MIN);
        let mut last = String::from("no active controller is known");
        let first = self.preferred.load(Ordering::Relaxed);
        let mut turn = 0;
        // The active controller a refusing controller named: asked next, once.
        let mut hinted: Option<Target> = None;
        for _ in 0..RELAY_ATTEMPTS_MAX {
            if self.local.as_ref().is_some_and(|(_, local)| local.is_closed()) {
                return Err(ControlError::ControllerUnavailable(
                    "the controller is shut down".into(),
                ));
            }
            let leader = self.known_leader();
            let targets = self.targets.borrow().clone();
            if targets.is_empty() {
                return Err(ControlError::ControllerUnavailable(
                    "no controller is known to send the request to".into(),
                ));
            }
            let leading = |t: &Target| leader.is_some() && t.node_id == leader;
            let (target, index) = match hinted.take() {
                Some(hint) => (hint, None),
                None => {
                    let index = match targets.iter().position(leading) {
                        Some(index) => index,
                        None => {
                            turn += 1;
                            (first + turn - 1) % targets.len()
                        }
                    };
                    (targets[index].clone(), Some(index))
                }
            };
            let target = &target;
            let attempt = match &self.local {
                Some((node_id, local)) if Some(*node_id) == target.node_id => {
                    match local.submit_local(request.clone()).await {
                        Err(ControlError::NotController) => {
                            Attempt::NotDecided("this node does not lead".into(), None)
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
                    self.relay(target, message, deadline, request.is_voter_change()).await
                }
            };
            match attempt {
                Attempt::Done(answer) => {
                    if let Some(index) = index {
                        self.preferred.store(index, Ordering::Relaxed);
                    }
                    return answer;
                }
                Attempt::OutcomeUnknown(why) => return Err(ControlError::OutcomeUnknown(why)),
                Attempt::NotDecided(why, hint) => {
                    last = why;
                    // A named leader this node does not know of (a voter added since its
                    // configuration was written): asked at once.
                    hinted = hint.filter(|h| !targets.contains(h) && h != target);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if hinted.is_some() {
                continue;
            }
            // With no leader known (or none among the targets), each is asked once before the
            // pause.
            if !targets.iter().any(leading) && turn % targets.len() != 0 {
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
            wait.as_millis()
        )))
    }

    /// One relay to `target` over gRPC.
    async fn relay(
        &self,
        target: &Target,
        message: &pb::ControlRequest,
        deadline: Instant,
        voter_change: bool,
    ) -> Attempt {
        let addr = &target.addr;
        let id = target.node_id.map_or_else(|| "?".to_string(), |id| id.to_string());
        let channel = match self.channels.get(addr) {
            Ok(channel) => channel,
            Err(e) => return Attempt::NotDecided(e, None),
        };
        let mut client = GrpcControllerClient::new(channel)
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX);
        let mut call = tonic::Request::new(message.clone());
        let attempt_ms = if voter_change { VOTER_CHANGE_WAIT_MS } else { RELAY_ATTEMPT_TIMEOUT_MS };
        call.set_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(attempt_ms)),
        );
        let failed = |status: &tonic::Status| {
            format!("controller {id} at {addr}: {:?}: {}", status.code(), status.message())
        };
        match client.submit(call).await {
            Ok(answer) => {
                let hint = answer
                    .metadata()
                    .get(LEADER_HINT)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_hint);
                match wire::response_from_pb(answer.into_inner()) {
                    Ok(Err(ControlError::NotController)) => Attempt::NotDecided(
                        format!("controller {id} at {addr} does not lead"),
                        hint,
                    ),
                    Ok(answer) => Attempt::Done(answer),
                    Err(e) => Attempt::Done(Err(ControlError::ControllerUnavailable(format!(
                        "bad answer from controller {id} at {addr}: {e}"
                    )))),
                }
            }
            // No connection: the request never left this node.
            Err(status) if never_sent(&status) => Attempt::NotDecided(failed(&status), None),
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

/// The gRPC response header in which a controller that does not lead names the one that does,
/// as `<node id>@<host:port>` (as Kafka's NOT_LEADER answers carry the leader's endpoint): a
/// node that knows only some of the voters (bootstrap servers, an old configuration) still
/// reaches it.
pub const LEADER_HINT: &str = "strom-active-controller";

/// The header value for `target`.
pub(crate) fn hint_value(node_id: u64, addr: &str) -> String {
    format!("{node_id}@{addr}")
}

fn parse_hint(value: &str) -> Option<Target> {
    let (id, addr) = value.split_once('@')?;
    Some(Target { node_id: Some(id.parse().ok()?), addr: addr.to_string() })
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
