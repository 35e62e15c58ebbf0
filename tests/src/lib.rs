//! Process harness for end-to-end tests: spawns the real `strom` binary on free loopback ports
//! with its data in a temporary directory, waits until it serves Kafka, signals it (kill -9,
//! SIGTERM, SIGSTOP/SIGCONT), restarts it on the same ports and data, and drives it with
//! librdkafka (`rdkafka`), raw sockets and the other languages' clients of `tests/clients/`.
//! [`StromCluster`] does the same for 1, 3 or 5 nodes that form one controller quorum.

pub mod binary;
pub mod clients;
pub mod cluster;
pub mod http;
pub mod kafka;
pub mod netns;
pub mod node;
pub mod powercut;
pub mod raw;
pub mod segment;
pub mod stream;

pub use cluster::{free_ports, wait_until, with_cluster, ClusterOptions, StromCluster};
pub use node::{run_to_exit, NodeOptions, StromNode};

use std::time::Duration;

/// How long a node may take from spawn to answering a Kafka Metadata request.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for a single client operation (admin request, flush, metadata, watermarks).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for consuming everything a test produced.
pub const CONSUME_TIMEOUT: Duration = Duration::from_secs(180);
/// Pause between two polls of a condition; polling interval only, never an assertion.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Starts a node, runs `body` on it and panics with the error (and, through the node's `Drop`,
/// the tail of its stderr) if the node does not start or `body` fails.
pub fn with_node(options: NodeOptions, body: impl FnOnce(&mut StromNode) -> anyhow::Result<()>) {
    let mut node = match StromNode::start(options) {
        Ok(node) => node,
        Err(error) => panic!("strom did not start: {error:#}"),
    };
    if let Err(error) = body(&mut node) {
        // `{:#}` prints the whole context chain on one line, without anyhow's backtrace.
        panic!("{error:#}");
    }
}
