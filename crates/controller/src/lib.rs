//! The metadata plane: an embedded openraft quorum whose log is the cluster's metadata log,
//! and the active controller that decides requests while this node leads it.
//!
//! - [`Controller`]: start/stop a controller node, submit requests (relayed to the active
//!   controller when this node does not lead), follow the leader, read the image.
//! - [`log_store`]: the durable metadata log (segments, vote, committed, purged).
//! - [`state_machine`]: committed entries → `MetadataImage` → `MetadataListener`; snapshots.
//! - [`network`]: how voters reach each other (tonic clients of the `Raft` service).
//! - [`service`]: the gRPC services a controller serves on its control port.
//! - [`wire`]: controller requests and responses as protobuf, for relaying.
//! - [`relay`]: the `ControllerClient` of every node, voter or broker-only.
//! - `membership`: KIP-853's voter changes planned against raft's membership (no IO).
//! - [`ControllerMetricsHandle`]: the active controller's event queue times and brokers'
//!   metadata lag, for `/metrics`.

mod codec;
mod controller;
mod error;
mod events;
pub mod follower;
pub mod log_store;
mod membership;
mod metrics;
pub mod network;
pub mod quorum;
pub mod relay;
pub mod service;
pub mod state_machine;
pub mod types;
pub mod wire;

pub use controller::{
    Controller, ControllerConfig, CATCH_UP_WAIT_MS_MAX, ELECTION_TIMEOUT_MAX_MS_DEFAULT,
    ELECTION_TIMEOUT_MIN_MS_DEFAULT, EVENT_QUEUE_MAX, HEARTBEAT_INTERVAL_MS_DEFAULT,
    LEADER_WAIT_ELECTION_TIMEOUTS, LIVENESS_CHECKS_PER_HEARTBEAT, METADATA_LOG_DIR,
    SNAPSHOT_AFTER_ENTRIES_DEFAULT, SUBMIT_WAIT_ELECTION_TIMEOUTS,
};
pub use error::ControllerError;
pub use membership::{OBSERVERS_MAX, VOTER_CATCH_UP_WAIT_MS_MAX};
pub use metrics::ControllerMetricsHandle;
pub use quorum::RaftClusterInfo;
pub use relay::RelayClient;
pub use service::{ControllerService, RaftService};
