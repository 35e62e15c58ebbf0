//! The client every node hands its broker and admin service: a request goes to this node's
//! active controller task while it leads, else over gRPC to the voter that does.
//!
//! The leader decides; a follower only relays. A relay is retried (bounded in attempts and in
//! time) only when the request was certainly not decided (NOT_CONTROLLER: refused before any
//! proposal) or the leader could not be reached or dropped the connection (a transport
//! status), while a new leader is elected. Should such a failure hide a request that did reach the leader and commit, the retry is
//! decided against an image that already holds its records, so it is refused (the topic
//! exists, the epoch is stale, the election is not needed), never applied twice.

use std::sync::Arc;
use std::time::Duration;

use strom_metadata::control::{ControlRequest, ControlResponse};
use strom_metadata::{BoxFuture, ControlError, ControllerClient};
use strom_proto::controller::controller_client::ControllerClient as GrpcControllerClient;
use tokio::time::Instant;

use crate::controller::EventClient;
use crate::network::{Channels, RPC_MESSAGE_BYTES_MAX};
use crate::types::Raft;
use crate::wire;

/// Attempts per request, whoever answers; the submit deadline usually ends it first.
pub const SUBMIT_ATTEMPTS_MAX: u32 = 64;

/// The first pause between attempts; doubled up to the max, and cut short when the known
/// leader changes.
pub const SUBMIT_BACKOFF_MS_MIN: u64 = 10;
pub const SUBMIT_BACKOFF_MS_MAX: u64 = 200;

const _: () = assert!(SUBMIT_BACKOFF_MS_MIN <= SUBMIT_BACKOFF_MS_MAX);

pub(crate) struct ForwardingClient {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: u64,
    raft: Raft,
    local: Arc<EventClient>,
    channels: Channels,
    /// How long one submit may take in all, relays and retries included.
    submit_wait: Duration,
}

/// Where the current attempt went, and why it may be retried.
enum Attempt {
    Done(Result<ControlResponse, ControlError>),
    Retry(String),
}

impl ForwardingClient {
    pub(crate) fn new(
        node_id: u64,
        raft: Raft,
        local: Arc<EventClient>,
        channels: Channels,
        submit_wait: Duration,
    ) -> ForwardingClient {
        ForwardingClient { inner: Arc::new(Inner { node_id, raft, local, channels, submit_wait }) }
    }
}

impl ControllerClient for ForwardingClient {
    fn submit(&self, request: ControlRequest) -> BoxFuture<Result<ControlResponse, ControlError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.submit(request).await })
    }
}

impl Inner {
    async fn submit(&self, request: ControlRequest) -> Result<ControlResponse, ControlError> {
        let deadline = Instant::now() + self.submit_wait;
        let mut backoff = Duration::from_millis(SUBMIT_BACKOFF_MS_MIN);
        let mut last = String::from("no active controller is known");
        for _ in 0..SUBMIT_ATTEMPTS_MAX {
            if self.local.is_closed() {
                return Err(ControlError::ControllerUnavailable(
                    "the controller is shut down".into(),
                ));
            }
            let leader = self.raft.metrics().borrow().current_leader;
            let attempt = match leader {
                None => Attempt::Retry("no active controller is known".into()),
                Some(id) if id == self.node_id => {
                    match self.local.submit_local(request.clone()).await {
                        Err(ControlError::NotController) => {
                            Attempt::Retry("this node stopped leading".into())
                        }
                        answer => Attempt::Done(answer),
                    }
                }
                Some(id) => self.relay(id, &request, deadline).await,
            };
            match attempt {
                Attempt::Done(answer) => return answer,
                Attempt::Retry(why) => last = why,
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let pause = backoff.min(deadline - now);
            // A new leader ends the pause early: that is what the retry waits for.
            let mut metrics = self.raft.metrics();
            let _ = tokio::time::timeout(
                pause,
                metrics.wait_for(|m| m.current_leader.is_some() && m.current_leader != leader),
            )
            .await;
            backoff = (backoff * 2).min(Duration::from_millis(SUBMIT_BACKOFF_MS_MAX));
        }
        Err(ControlError::ControllerUnavailable(format!(
            "no active controller answered within {} ms: {last}",
            self.submit_wait.as_millis()
        )))
    }

    /// One relay to voter `leader` over gRPC.
    async fn relay(&self, leader: u64, request: &ControlRequest, deadline: Instant) -> Attempt {
        let addr = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics.membership_config.membership().get_node(&leader).map(|n| n.control_addr.clone())
        };
        let Some(addr) = addr else {
            return Attempt::Retry(format!("controller {leader} has no known address"));
        };
        let channel = match self.channels.get(&addr) {
            Ok(c) => c,
            Err(e) => return Attempt::Done(Err(ControlError::ControllerUnavailable(e))),
        };
        let mut client = GrpcControllerClient::new(channel)
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX);
        let message = wire::request_to_pb(request);
        if let Err(refused) = wire::check_relayable(&message) {
            return Attempt::Done(Err(refused));
        }
        let mut call = tonic::Request::new(message);
        call.set_timeout(deadline.saturating_duration_since(Instant::now()));
        match client.submit(call).await {
            Ok(answer) => match wire::response_from_pb(answer.into_inner()) {
                Ok(Err(ControlError::NotController)) => {
                    Attempt::Retry(format!("controller {leader} no longer leads"))
                }
                Ok(answer) => Attempt::Done(answer),
                Err(e) => Attempt::Done(Err(ControlError::ControllerUnavailable(format!(
                    "bad answer from controller {leader}: {e}"
                )))),
            },
            // Our own malformed request, a peer without the service, or the time is up:
            // asking again cannot help.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::Unimplemented
                        | tonic::Code::DeadlineExceeded
                ) =>
            {
                Attempt::Done(Err(ControlError::ControllerUnavailable(format!(
                    "controller {leader} at {addr}: {:?}: {}",
                    status.code(),
                    status.message()
                ))))
            }
            // The service itself answers only OK or INVALID_ARGUMENT: anything else is the
            // connection failing or going away with the leader (UNAVAILABLE when it cannot
            // connect, CANCELLED or INTERNAL when an open connection is closed under the call).
            Err(status) => {
                Attempt::Retry(format!("controller {leader} at {addr}: {}", status.message()))
            }
        }
    }
}
