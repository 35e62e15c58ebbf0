//! The `ControllerClient` of a broker-only node: requests go over gRPC (`Controller.Submit`)
//! to the controller voters, since such a node has no raft and no controller of its own.
//!
//! A voter decides a request only while it is the active controller; any other answers
//! NOT_CONTROLLER before deciding anything. So the client tries the voter that answered last
//! (or the leader the metadata follower names), moves on to the next voter on NOT_CONTROLLER,
//! CONTROLLER_UNAVAILABLE or a transport failure, and pauses (bounded backoff) after each
//! round of voters, within bounded attempts and time. As with forwarding between voters
//! (`forward`), a retry after an unknown outcome is decided against an image that already
//! holds the first attempt's records, so it is refused rather than applied twice.

use std::collections::BTreeMap;
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
use crate::network::{Channels, RPC_MESSAGE_BYTES_MAX};
use crate::wire;

/// Attempts per request over all voters; the submit deadline may end it first.
pub const REMOTE_SUBMIT_ATTEMPTS_MAX: u32 = 32;

/// The pause after a round in which no voter took the request; doubled up to the max.
pub const REMOTE_BACKOFF_MS_MIN: u64 = 20;
pub const REMOTE_BACKOFF_MS_MAX: u64 = 1_000;

/// How long opening a connection to a voter may take.
pub const REMOTE_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// How long one attempt may take: the active controller may wait up to its submit wait
/// (five election timeouts, 10 s at the defaults) for the records to commit.
pub const REMOTE_ATTEMPT_TIMEOUT_MS: u64 = 15_000;

/// How long one request may take in all, retries included.
pub const REMOTE_SUBMIT_WAIT_MS: u64 = 30_000;

const _: () = assert!(REMOTE_BACKOFF_MS_MIN <= REMOTE_BACKOFF_MS_MAX);
const _: () = assert!(REMOTE_CONNECT_TIMEOUT_MS < REMOTE_ATTEMPT_TIMEOUT_MS);
const _: () = assert!(REMOTE_ATTEMPT_TIMEOUT_MS <= REMOTE_SUBMIT_WAIT_MS);

/// Submits requests to whichever controller voter is the active controller.
#[derive(Clone)]
pub struct RemoteControllerClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// (node id, control address), in id order.
    voters: Vec<(u64, String)>,
    channels: Channels,
    /// The voter that took the last request: where the next one goes first.
    preferred: AtomicUsize,
    /// The active controller as the metadata follower last heard, if it is wired in.
    leader: Option<watch::Receiver<Option<u64>>>,
}

/// What one attempt came to.
enum Attempt {
    Done(Result<ControlResponse, ControlError>),
    Retry(String),
}

impl RemoteControllerClient {
    /// A client of the voters `controller.quorum_voters` names (node id → control address).
    pub fn new(voters: BTreeMap<u64, String>) -> Result<RemoteControllerClient, ControllerError> {
        if voters.is_empty() {
            return Err(ControllerError::ConfigInvalid {
                key: "controller.quorum_voters",
                reason: "a broker-only node needs at least one controller voter",
            });
        }
        let channels = Channels::new(
            Duration::from_millis(REMOTE_CONNECT_TIMEOUT_MS),
            Duration::from_millis(REMOTE_ATTEMPT_TIMEOUT_MS),
        );
        for addr in voters.values() {
            channels.get(addr).map_err(|_| ControllerError::ConfigInvalid {
                key: "controller.quorum_voters",
                reason: "a voter's control address is not host:port",
            })?;
        }
        Ok(RemoteControllerClient {
            inner: Arc::new(Inner {
                voters: voters.into_iter().collect(),
                channels,
                preferred: AtomicUsize::new(0),
                leader: None,
            }),
        })
    }

    /// Sends each request first to the active controller that `leader` names (the metadata
    /// follower's leader watch), when it is one of the voters.
    pub fn with_leader(self, leader: watch::Receiver<Option<u64>>) -> RemoteControllerClient {
        let inner = Inner {
            voters: self.inner.voters.clone(),
            channels: self.inner.channels.clone(),
            preferred: AtomicUsize::new(self.inner.preferred.load(Ordering::Relaxed)),
            leader: Some(leader),
        };
        RemoteControllerClient { inner: Arc::new(inner) }
    }
}

impl ControllerClient for RemoteControllerClient {
    fn submit(&self, request: ControlRequest) -> BoxFuture<Result<ControlResponse, ControlError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.submit(&request).await })
    }
}

impl Inner {
    /// Where this request goes first: the known leader, else the voter that took the last.
    fn first(&self) -> usize {
        let leader = self.leader.as_ref().and_then(|l| *l.borrow());
        leader
            .and_then(|id| self.voters.iter().position(|(v, _)| *v == id))
            .unwrap_or_else(|| self.preferred.load(Ordering::Relaxed) % self.voters.len())
    }

    async fn submit(&self, request: &ControlRequest) -> Result<ControlResponse, ControlError> {
        let deadline = Instant::now() + Duration::from_millis(REMOTE_SUBMIT_WAIT_MS);
        let message = wire::request_to_pb(request);
        wire::check_relayable(&message)?;
        let first = self.first();
        let rounds = self.voters.len();
        let mut backoff = Duration::from_millis(REMOTE_BACKOFF_MS_MIN);
        let mut last = String::from("no voter was tried");
        let mut attempts = 0;
        while attempts < REMOTE_SUBMIT_ATTEMPTS_MAX {
            let index = (first + attempts as usize) % rounds;
            attempts += 1;
            match self.attempt(index, &message, deadline).await {
                Attempt::Done(answer) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return answer;
                }
                Attempt::Retry(why) => last = why,
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Every voter said no: an election is on, or they are down. Give them time.
            if attempts as usize % rounds == 0 {
                tokio::time::sleep(backoff.min(deadline - now)).await;
                backoff = (backoff * 2).min(Duration::from_millis(REMOTE_BACKOFF_MS_MAX));
            }
        }
        Err(ControlError::ControllerUnavailable(format!(
            "no active controller took the request after {attempts} attempts: {last}"
        )))
    }

    async fn attempt(
        &self,
        index: usize,
        message: &pb::ControlRequest,
        deadline: Instant,
    ) -> Attempt {
        let (id, addr) = &self.voters[index];
        let channel = match self.channels.get(addr) {
            Ok(channel) => channel,
            Err(e) => return Attempt::Retry(e),
        };
        let mut client = GrpcControllerClient::new(channel)
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX);
        let mut call = tonic::Request::new(message.clone());
        call.set_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(REMOTE_ATTEMPT_TIMEOUT_MS)),
        );
        match client.submit(call).await {
            Ok(answer) => match wire::response_from_pb(answer.into_inner()) {
                Ok(Err(ControlError::NotController)) => {
                    Attempt::Retry(format!("controller {id} at {addr} is not the active one"))
                }
                Ok(Err(ControlError::ControllerUnavailable(why))) => {
                    Attempt::Retry(format!("controller {id} at {addr}: {why}"))
                }
                Ok(answer) => Attempt::Done(answer),
                Err(e) => Attempt::Done(Err(ControlError::ControllerUnavailable(format!(
                    "bad answer from controller {id} at {addr}: {e}"
                )))),
            },
            // Our own malformed request, or a peer without the service: asking again (or
            // elsewhere) cannot help.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::Unimplemented
                ) =>
            {
                Attempt::Done(Err(ControlError::ControllerUnavailable(format!(
                    "controller {id} at {addr}: {:?}: {}",
                    status.code(),
                    status.message()
                ))))
            }
            // The voter is down, restarting, or dropped the connection: try another.
            Err(status) => Attempt::Retry(format!(
                "controller {id} at {addr}: {:?}: {}",
                status.code(),
                status.message()
            )),
        }
    }
}
