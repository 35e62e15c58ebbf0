//! Code generated from `proto/`: metadata records (the metadata log's schema) and gRPC services.
#![allow(clippy::all, missing_docs)]

pub mod metadata {
    tonic::include_proto!("strom.metadata.v1");
}

pub mod raft {
    tonic::include_proto!("strom.raft.v1");
}
