//! What the admin service reads from the rest of the node, as traits the binary implements:
//! the quorum ([`ClusterInfo`]), the consumer groups ([`GroupSource`]) and the transactions and
//! producer state ([`TxnSource`]); and [`ImagePublisher`], the listener that hands it each
//! committed image.

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
    fn list_groups(&self) -> BoxFuture<Result<pb::ListGroupsResponse, BrokerReadError>>;
    /// Members, assignments, committed offsets and lag of one group, from its coordinator.
    fn describe_group(
        &self,
        group_id: String,
    ) -> BoxFuture<Result<pb::GroupDescription, BrokerReadError>>;
}

/// Transactions, which live in the brokers' transaction coordinators, and the producer state
/// of a partition, which lives in its leader's log. A node that runs a broker provides it; the
/// answers are the admin API's own messages.
pub trait TxnSource: Send + Sync + 'static {
    /// Every transactional id of the cluster that passes the request's filters (state names
    /// already checked): each live broker lists those it coordinates; brokers that could not
    /// be asked are named in `unreachable`.
    fn list_transactions(
        &self,
        filters: pb::ListTransactionsRequest,
    ) -> BoxFuture<Result<pb::ListTransactionsResponse, BrokerReadError>>;
    /// Each id's transaction, from its coordinator, in the order asked: one answer per id
    /// (an unknown id is [`BrokerReadError::NotFound`]); the outer error fails every id.
    fn describe_transactions(
        &self,
        transactional_ids: Vec<String>,
    ) -> BoxFuture<DescribedTransactions>;
    /// The producers the leader of `topic`-`partition` holds state for.
    fn describe_producers(
        &self,
        topic: String,
        partition: i32,
    ) -> BoxFuture<Result<pb::DescribeProducersResponse, BrokerReadError>>;
}

/// Partition logs, which live in the brokers: deleting records (at the partition's leader)
/// and describing every live broker's log directory. A node that runs a broker provides it.
pub trait LogSource: Send + Sync + 'static {
    /// Moves the log start offset of `topic`-`partition` to `offset` (-1: the high watermark)
    /// at its leader.
    fn delete_records(
        &self,
        topic: String,
        partition: i32,
        offset: i64,
    ) -> BoxFuture<Result<pb::DeleteRecordsResponse, BrokerReadError>>;
    /// Every live broker's log directory; brokers that could not be asked are named in
    /// `unreachable`.
    fn describe_log_dirs(&self) -> BoxFuture<pb::DescribeLogDirsResponse>;
}

/// [`TxnSource::describe_transactions`]'s answer: one result per id asked, in that order.
pub type DescribedTransactions =
    Result<Vec<Result<pb::TransactionDescription, BrokerReadError>>, BrokerReadError>;

/// Why the brokers could not answer about consumer groups, transactions or producers.
/// [`BrokerReadError::NotFound`] is NOT_FOUND to the caller; every other variant is
/// UNAVAILABLE: asking again later, or another node, may work.
#[derive(Debug, thiserror::Error)]
pub enum BrokerReadError {
    #[error(
        "this node runs no broker, and consumer groups, transactions and producer state live \
         in the brokers: ask a broker's control port (--bootstrap-control)"
    )]
    NoBroker,
    #[error("this node's broker is still starting")]
    BrokerStarting,
    #[error("{what} did not answer in time")]
    Timeout { what: &'static str },
    /// The brokers were asked and answered that it does not exist (the message names it).
    #[error("{0}")]
    NotFound(String),
    /// The broker could not find or ask the broker that knows (its own error, kept as the
    /// source).
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
