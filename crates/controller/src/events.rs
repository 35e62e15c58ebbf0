//! The closed set of events the active-controller task takes, and [`EventClient`], the handle
//! that queues them. A module of its own, importing nothing of this crate, so that the relay
//! client and the gRPC service submit to the local task without importing the controller that
//! runs it.

use std::time::Instant;

use strom_metadata::control::{ControlRequest, ControlResponse};
use strom_metadata::ControlError;
use tokio::sync::{mpsc, oneshot};

/// The events the active controller handles; one task takes them in order.
pub(crate) enum Event {
    Submit {
        request: ControlRequest,
        reply: oneshot::Sender<Result<ControlResponse, ControlError>>,
        /// When it was queued: its wait is measured from here (Kafka's EventQueueTimeMs).
        queued: Instant,
    },
}

/// Submits to this node's active controller task only (NOT_CONTROLLER when it does not lead).
pub(crate) struct EventClient {
    tx: mpsc::Sender<Event>,
}

impl EventClient {
    /// The sending side of the task's bounded queue.
    pub(crate) fn new(tx: mpsc::Sender<Event>) -> EventClient {
        EventClient { tx }
    }

    /// A request the task never took (it is stopping, or stopped) is refused as
    /// NOT_CONTROLLER: it was certainly not decided, so a relaying voter tries the next leader.
    pub(crate) async fn submit_local(
        &self,
        request: ControlRequest,
    ) -> Result<ControlResponse, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send(Event::Submit { request, reply, queued: Instant::now() }).map_err(
            |e| match e {
                mpsc::error::TrySendError::Full(_) => ControlError::ControllerUnavailable(format!(
                    "the controller has {} requests queued",
                    self.tx.max_capacity()
                )),
                mpsc::error::TrySendError::Closed(_) => ControlError::NotController,
            },
        )?;
        // The task answers every request it takes before it stops; a dropped reply means the
        // request was still queued when it stopped.
        answer.await.map_err(|_| ControlError::NotController)?
    }

    /// The active controller task has stopped: this node is shutting down.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
