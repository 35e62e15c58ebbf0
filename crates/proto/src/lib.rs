//! Code generated from `proto/`: metadata records (the metadata log's schema) and gRPC services.
#![allow(clippy::all, missing_docs)]

pub mod metadata {
    tonic::include_proto!("strom.metadata.v1");
}

pub mod raft {
    tonic::include_proto!("strom.raft.v1");
}

pub mod controller {
    tonic::include_proto!("strom.controller.v1");
}

pub mod admin {
    tonic::include_proto!("strom.admin.v1");
}

/// Every `proto/*.proto` file, encoded as a `FileDescriptorSet`: what gRPC reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/strom_descriptor.bin"));
