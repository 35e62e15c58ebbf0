//! What the admin service reads from the rest of the node, as traits the binary implements:
//! the quorum ([`ClusterInfo`]) and the consumer groups ([`GroupSource`]); and
//! [`ImagePublisher`], the listener that hands it each committed image.

use std::sync::Arc;

use strom_metadata::quorum::QuorumState;
use strom_metadata::records::MetadataRecord;
use strom_metadata::{BoxFuture, MetadataImage, MetadataListener, MetadataOffset};
use strom_proto::admin as pb;
use tokio::sync::watch;

/// What DescribeCluster needs besides the image: the cluster id and the raft quorum's state,
/// from the local raft node on a voter, from the metadata stream on a broker-only node.
pub trait ClusterInfo: Send + Sync + 'static {
    fn cluster_id(&self) -> String;
    fn quorum(&self) -> QuorumState;
}

/// Consumer groups, which live in the brokers' group coordinators. A node that runs a broker
/// provides it; the answers are the admin API's own messages.
pub trait GroupSource: Send + Sync + 'static {
    /// Every group of the cluster: each live broker lists the groups it coordinates; brokers
    /// that could not be asked are named in `unreachable`.
    fn list_groups(&self) -> BoxFuture<Result<pb::ListGroupsResponse, GroupError>>;
    /// Members, assignments, committed offsets and lag of one group, from its coordinator.
    fn describe_group(
        &self,
        group_id: String,
    ) -> BoxFuture<Result<pb::GroupDescription, GroupError>>;
}

/// Why consumer groups could not be read. Every variant is UNAVAILABLE to the caller: asking
/// again later, or another node, may work.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(
        "this node runs no broker, and consumer groups live in the brokers: ask a broker's \
         control port (--bootstrap-control)"
    )]
    NoBroker,
    #[error("this node's broker is still starting")]
    BrokerStarting,
    #[error("{what} did not answer in time")]
    Timeout { what: &'static str },
    /// The broker could not find or ask the coordinator (its own error, kept as the source).
    #[error("{0}")]
    Broker(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A [`MetadataListener`] that publishes every committed image on a watch channel, the
/// receiver [`crate::AdminServiceImpl`] reads, then hands the commit on to the next listener
/// (in a combined node, the broker's). Give it to the controller or the metadata follower in
/// place of that listener.
pub struct ImagePublisher {
    tx: watch::Sender<Arc<MetadataImage>>,
    next: Option<Arc<dyn MetadataListener>>,
}

impl ImagePublisher {
    pub fn new(
        next: Option<Arc<dyn MetadataListener>>,
    ) -> (Arc<ImagePublisher>, watch::Receiver<Arc<MetadataImage>>) {
        let (tx, rx) = watch::channel(Arc::new(MetadataImage::default()));
        (Arc::new(ImagePublisher { tx, next }), rx)
    }
}

impl MetadataListener for ImagePublisher {
    fn on_commit(
        &self,
        offset: MetadataOffset,
        records: &[MetadataRecord],
        image: Arc<MetadataImage>,
    ) {
        self.tx.send_replace(image.clone());
        if let Some(next) = &self.next {
            next.on_commit(offset, records, image);
        }
    }
}
