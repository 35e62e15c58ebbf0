//! Why a controller could not start or stop. Refused requests are `strom_metadata::ControlError`.

use std::io;
use std::path::PathBuf;

use openraft::error::{Fatal, InitializeError, RaftError};

use crate::types::ControllerNode;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("node {node_id} is not one of the controller voters {voters:?}")]
    ConfigNotAVoter { node_id: u64, voters: Vec<u64> },
    #[error("invalid controller setting '{key}': {reason}")]
    ConfigInvalid { key: &'static str, reason: &'static str },
    #[error("invalid raft timing: {0}")]
    RaftConfig(#[source] Box<openraft::ConfigError>),
    #[error("cannot open the metadata log in {path}: {source}")]
    StorageOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("raft did not start: {0}")]
    RaftStart(#[source] Box<Fatal<u64>>),
    #[error("cannot initialize the metadata quorum: {0}")]
    RaftInitialize(#[source] Box<RaftError<u64, InitializeError<u64, ControllerNode>>>),
    #[error("node {node_id} did not become the active controller within {waited_ms} ms")]
    LeaderWait { node_id: u64, waited_ms: u64 },
    #[error("node {node_id} heard of no active controller within {waited_ms} ms")]
    LeaderUnknown { node_id: u64, waited_ms: u64 },
    #[error("raft did not shut down cleanly: {0}")]
    RaftShutdown(#[source] tokio::task::JoinError),
    #[error("the active controller task failed: {0}")]
    EventLoopJoin(#[source] tokio::task::JoinError),
}
