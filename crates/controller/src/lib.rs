//! The metadata plane: an embedded openraft quorum whose log is the cluster's metadata log,
//! and the active controller that decides requests while this node leads it.
//!
//! - [`Controller`]: start/stop a controller node, submit requests, read the image.
//! - [`log_store`]: the durable metadata log (segments, vote, committed, purged).
//! - [`state_machine`]: committed entries → `MetadataImage` → `MetadataListener`; snapshots.
//! - [`network`]: how voters reach each other (a placeholder until the gRPC transport).

mod codec;
mod controller;
mod error;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;

pub use controller::{
    Controller, ControllerConfig, CATCH_UP_WAIT_MS_MAX, ELECTION_TIMEOUT_MAX_MS_DEFAULT,
    ELECTION_TIMEOUT_MIN_MS_DEFAULT, EVENT_QUEUE_MAX, HEARTBEAT_INTERVAL_MS_DEFAULT,
    LEADER_WAIT_ELECTION_TIMEOUTS, METADATA_LOG_DIR, SNAPSHOT_AFTER_ENTRIES_DEFAULT,
};
pub use error::ControllerError;
