//! The cluster's metadata as a pure state machine: records in, `MetadataImage` out, plus the
//! controller's pure decisions (`control`) and the traits that join a controller to a broker.
//!
//! Nothing here does IO, reads a clock or draws randomness: time and ids come in through
//! [`control::DecideCtx`], so every decision replays identically.

pub mod config;
pub mod control;
mod error;
mod ids;
mod image;
mod listener;
pub mod quorum;
pub mod quotas;
mod topic_map;

pub use error::{ApplyError, ControlError};
pub use ids::{BrokerEpoch, LeaderEpoch, MetadataOffset, NodeId, PartitionEpoch, TopicId};
pub use image::{BrokerImage, MetadataDelta, MetadataImage, PartitionImage, TopicImage};
pub use listener::{BoxFuture, Clock, ControllerClient, MetadataListener};
pub use topic_map::{TopicMap, TOPIC_CHUNK_MAX};

/// The generated record types of the metadata log (`proto/metadata.proto`).
pub use strom_proto::metadata as records;
