//! The seams between controller and broker, so that neither crate depends on the other, and
//! the clock seam through which both read the time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::control::{ControlRequest, ControlResponse};
use crate::records::MetadataRecord;
use crate::{ControlError, MetadataImage, MetadataOffset};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Receives committed metadata in log order (Kafka's MetadataPublisher). In a combined node the
/// controller's state machine calls it directly; a broker-only node calls it from its follower
/// stream. Implementations must return quickly: hand the image to a task, do not block.
pub trait MetadataListener: Send + Sync + 'static {
    fn on_commit(
        &self,
        offset: MetadataOffset,
        records: &[MetadataRecord],
        image: Arc<MetadataImage>,
    );
}

/// Where time-dependent shells (the active controller's broker sessions, the group
/// coordinator's member sessions) read the time, in milliseconds. Only the trait lives here:
/// this crate never reads a clock. The broker and controller hold a system clock; tests hold
/// a manual one and move it forward without sleeping. Readings from one clock never go back.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// How a broker asks the active controller for a decision (create topics, alter configs, ...).
/// The answer comes only after the resulting records have committed.
pub trait ControllerClient: Send + Sync + 'static {
    fn submit(&self, request: ControlRequest) -> BoxFuture<Result<ControlResponse, ControlError>>;
}
