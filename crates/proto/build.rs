//! Compiles `proto/*.proto` with protox (pure Rust), so no system `protoc` is needed.
/// Must match the name `src/lib.rs` includes.
const DESCRIPTOR_FILE: &str = "strom_descriptor.bin";

/// Admin messages the CLI prints as JSON unchanged (with the `serde` feature).
const SERIALIZED: [&str; 12] = [
    "ListTopicsResponse",
    "TopicListing",
    "ListGroupsResponse",
    "GroupListing",
    "ListTransactionsResponse",
    "TransactionListing",
    "DeleteRecordsResponse",
    "DescribeLogDirsResponse",
    "LogDir",
    "LogDirPartition",
    "ListPartitionReassignmentsResponse",
    "OngoingReassignment",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    // The directory too, so that a new .proto file is picked up.
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&root)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    files.sort();
    let fds = protox::compile(&files, [&root])?;
    // The encoded set serves gRPC reflection (`strom_proto::FILE_DESCRIPTOR_SET`).
    let descriptor = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join(DESCRIPTOR_FILE);
    std::fs::write(descriptor, protox::prost::Message::encode_to_vec(&fds))?;
    // Services only with the `grpc` feature, so that message-only users stay free of tonic.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let mut config = tonic_prost_build::configure().build_client(grpc).build_server(grpc);
    for message in SERIALIZED {
        config = config.type_attribute(
            format!(".strom.admin.v1.{message}"),
            "#[cfg_attr(feature = \"serde\", derive(serde::Serialize))]",
        );
    }
    config.compile_fds(fds)?;
    Ok(())
}
