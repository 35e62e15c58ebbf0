//! `strom`: one binary that runs a combined controller + broker node (`strom start`) and
//! administers a cluster over gRPC (`strom topic …`, `strom cluster …`, `strom group …`,
//! `strom txn …`).

mod cli;
mod config;
mod node;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Keeps a hostile array count in a request from aborting the process (see `strom-alloc`).
#[global_allocator]
static GLOBAL: strom_alloc::GuardedAlloc = strom_alloc::GuardedAlloc;

#[derive(Parser)]
#[command(
    name = "strom",
    version,
    about = "A Kafka-compatible streaming broker with an embedded Raft quorum"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node. With no flags: one combined controller+broker on 127.0.0.1:9092 (Kafka)
    /// and 127.0.0.1:9093 (control), data in ./strom-data.
    Start(StartArgs),
    /// Create, list, describe, delete and reconfigure topics (through a node's control port).
    Topic(cli::TopicArgs),
    /// Describe the cluster (quorum, brokers) and elect preferred leaders.
    Cluster(cli::ClusterArgs),
    /// List consumer groups; describe members, committed offsets and lag.
    Group(cli::GroupArgs),
    /// List and describe transactions; show the producers of a partition.
    Txn(cli::TxnArgs),
}

#[derive(clap::Args, Debug, Default)]
pub struct StartArgs {
    /// TOML config file (see config/single.toml); flags override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Data directory (log.dirs).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Kafka listener address, host:port (the PLAINTEXT listener).
    #[arg(long)]
    pub kafka_addr: Option<String>,
    /// Control (gRPC) listener address, host:port (the CONTROLLER listener).
    #[arg(long)]
    pub control_addr: Option<String>,
    /// This node's id (node_id).
    #[arg(long)]
    pub node_id: Option<i32>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Start(args) => node::config_from(args).and_then(|cfg| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("strom")
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(node::run(cfg)))
        }),
        // Admin commands choose their own exit codes (see the `cli` module).
        Command::Topic(args) => return cli::run_topic(args),
        Command::Cluster(args) => return cli::run_cluster(args),
        Command::Group(args) => return cli::run_group(args),
        Command::Txn(args) => return cli::run_txn(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strom: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
