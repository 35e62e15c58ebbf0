//! The two seams between controller and broker, so that neither crate depends on the other.

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

/// How a broker asks the active controller for a decision (create topics, alter configs, ...).
/// The answer comes only after the resulting records have committed.
pub trait ControllerClient: Send + Sync + 'static {
    fn submit(&self, request: ControlRequest) -> BoxFuture<Result<ControlResponse, ControlError>>;
}
