//! Why a controller could not start or stop. Refused requests are `strom_metadata::ControlError`.

use std::io;
use std::path::PathBuf;

use openraft::error::{Fatal, InitializeError, RaftError};
use strom_metadata::quorum::DirectoryId;

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
    /// The metadata log in this data directory records this node with another directory id
    /// than the one in its `meta.properties` (KIP-853): the two were not made together.
    #[error(
        "the metadata log records node {node_id} with directory id {logged}, but this data \
         directory's id is {mine}: meta.properties and __cluster_metadata-0 come from different \
         data directories; restore the matching pair, or empty the data directory and add the \
         node as a new voter (strom cluster remove-voter --node-id {node_id}, then add-voter)"
    )]
    DirectoryIdMismatch { node_id: u64, logged: DirectoryId, mine: DirectoryId },
    #[error("raft did not shut down cleanly: {0}")]
    RaftShutdown(#[source] tokio::task::JoinError),
    #[error("the active controller task failed: {0}")]
    EventLoopJoin(#[source] tokio::task::JoinError),
}
