//! `strom`: one binary that runs a combined controller + broker node (`strom start`) and
//! administers a cluster over gRPC (`strom topic …`, `strom cluster …`, `strom group …`,
//! `strom txn …`).

mod cli;
mod config;
mod health;
mod http;
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
    /// Log lines as text, or as one JSON object per line (for a log shipper). `RUST_LOG`
    /// chooses what is logged (default `info,openraft=warn`).
    #[arg(long, global = true, value_enum, env = "STROM_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
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
    /// Write stdin's lines to a topic as records (Kafka Produce to each partition's leader).
    Produce(cli::ProduceArgs),
    /// Print a topic's records from an offset, a timestamp or a group's committed offsets.
    Consume(cli::ConsumeArgs),
    /// Print a shell completion script, e.g. `strom completions bash > /etc/bash_completion.d/strom`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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
    /// HTTP address of /metrics, /health and /ready, host:port (metrics_listener).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// This node's id (node_id).
    #[arg(long)]
    pub node_id: Option<i32>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
        Command::Produce(args) => return cli::run_produce(args),
        Command::Consume(args) => return cli::run_consume(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "strom", &mut script);
            // A closed pipe (`| head`) is the reader's choice, not an error.
            return match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("strom: error: cannot write the completion script: {e}");
                    std::process::ExitCode::from(1)
                }
                _ => std::process::ExitCode::SUCCESS,
            };
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strom: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Log lines go to stderr, filtered by `RUST_LOG` (default `info,openraft=warn`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // One object per line: timestamp, level, target, the event's fields and its spans.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}
