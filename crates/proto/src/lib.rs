//! Code generated from `proto/`: metadata records (the metadata log's schema) and, with the
//! `grpc` feature, the gRPC services.
#![allow(clippy::all, missing_docs)]

pub mod metadata {
    include!(concat!(env!("OUT_DIR"), "/strom.metadata.v1.rs"));
}

pub mod raft {
    include!(concat!(env!("OUT_DIR"), "/strom.raft.v1.rs"));
}

pub mod controller {
    include!(concat!(env!("OUT_DIR"), "/strom.controller.v1.rs"));
}

pub mod admin {
    include!(concat!(env!("OUT_DIR"), "/strom.admin.v1.rs"));
}

/// Every `proto/*.proto` file, encoded as a `FileDescriptorSet`: what gRPC reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/strom_descriptor.bin"));
