//! The admin plane: the gRPC `AdminService` (`proto/admin.proto`) with gRPC health and
//! reflection beside it, served on every node's control port.
//!
//! It knows neither the controller nor the broker. What it reads and asks goes through the
//! sources the binary plugs in: the committed image (a watch channel, fed by
//! [`ImagePublisher`]), the active controller ([`strom_metadata::ControllerClient`]), the
//! quorum's state ([`ClusterInfo`]), the consumer groups ([`GroupSource`]) and the transactions
//! and producer state ([`TxnSource`]) and the partition logs ([`LogSource`]). Its requests and answers are the generated `pb` types
//! end to end; [`convert`] turns them into controller requests and refusals into gRPC
//! statuses, in one place.

pub mod convert;
mod service;
mod source;

pub use service::{
    admin_service, health_and_reflection, mount_admin, AdminServiceImpl, ITEMS_PER_REQUEST_MAX,
    SUBMIT_TIMEOUT_MS_MAX,
};
pub use source::{
    BrokerReadError, ClusterInfo, DescribedTransactions, GroupSource, ImagePublisher, LogSource,
    TxnSource,
};
pub use strom_metadata::quorum::QuorumState;
pub use strom_proto::admin as pb;
pub use strom_proto::admin::admin_service_client::AdminServiceClient;
pub use strom_proto::admin::admin_service_server::{AdminService, AdminServiceServer};
