//! Command-line shapes of `strom topic …`, `strom cluster …`, `strom group …` and `strom txn …`,
//! and the parsers of their values.

use clap::{Args, Subcommand, ValueEnum};

/// Where the CLI looks for a node's control (gRPC) port unless told otherwise.
pub const CONTROL_ADDR_DEFAULT: &str = "127.0.0.1:9093";

/// Options every admin command takes, before or after the subcommand.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct ConnectArgs {
    /// Control (gRPC) address of any strom node.
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        env = "STROM_BOOTSTRAP_CONTROL",
        default_value = CONTROL_ADDR_DEFAULT,
        value_parser = parse_host_port,
    )]
    pub bootstrap_control: String,
    /// How to print results: human-readable tables, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct TopicArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions (default: the cluster's num_partitions).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        partitions: Option<i32>,
        /// Replicas per partition (default: the cluster's default_replication_factor).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..=i64::from(i16::MAX)))]
        replication_factor: Option<i32>,
        /// A topic config override, e.g. --config retention.ms=3600000; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Check the request with the controller without creating anything.
        #[arg(long)]
        validate_only: bool,
    },
    /// List topics.
    List,
    /// Show a topic's partitions (leader, leader epoch, replicas, ISR) and configs.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
    /// Set or remove topic config overrides.
    #[command(arg_required_else_help = true)]
    AlterConfig {
        name: String,
        /// Override a config, e.g. --set retention.ms=3600000; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value,
              required_unless_present = "delete")]
        set: Vec<(String, String)>,
        /// Remove an override so the default applies again; repeatable.
        #[arg(long = "delete", value_name = "KEY", value_parser = parse_key)]
        delete: Vec<String>,
        /// Check the change with the controller without applying it.
        #[arg(long)]
        validate_only: bool,
    },
    /// Delete a partition's records below an offset (Kafka's DeleteRecords, at its leader):
    /// its log start offset moves there, and the segments below it are removed.
    DeleteRecords {
        name: String,
        #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
        partition: i32,
        /// Records below it go; -1: every record up to the high watermark.
        #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
        offset: i64,
    },
    /// Move partitions to new replicas (Kafka's partition reassignment): the new replicas
    /// copy the log from the leader and join the ISR, then the replicas left out are dropped.
    /// Also lists and cancels moves in progress.
    ///
    /// strom topic reassign orders --partition 0 --replicas 2,3,1 --wait
    ///
    /// strom topic reassign --plan moves.json   (kafka-reassign-partitions' JSON plan)
    ///
    /// strom topic reassign orders --partition 0 --cancel
    ///
    /// strom topic reassign --list
    #[command(arg_required_else_help = true)]
    Reassign(ReassignArgs),
    /// Add partitions to a topic (existing partitions keep their data and placement).
    AddPartitions {
        name: String,
        /// How many partitions to add.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        count: i32,
        /// Check the request with the controller without adding anything.
        #[arg(long)]
        validate_only: bool,
    },
}

/// `strom topic reassign`'s arguments.
#[derive(Args, Debug, PartialEq, Eq)]
pub struct ReassignArgs {
    /// The topic to move (with --partition and --replicas or --cancel), or to list.
    pub name: Option<String>,
    /// The partition to move or cancel.
    #[arg(long, requires = "name", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Target replicas, the first the preferred leader, e.g. --replicas 2,3,1.
    #[arg(long, value_delimiter = ',', requires = "partition",
          value_parser = clap::value_parser!(i32).range(0..))]
    pub replicas: Vec<i32>,
    /// A reassignment plan in kafka-reassign-partitions' JSON:
    /// {"version":1,"partitions":[{"topic":"t","partition":0,"replicas":[1,2,3]}]}.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["name", "list"])]
    pub plan: Option<std::path::PathBuf>,
    /// Stop the moves named (by --partition or --plan) and go back to their replicas.
    #[arg(long, conflicts_with_all = ["replicas", "list"])]
    pub cancel: bool,
    /// List the moves in progress (of the topic, if named).
    #[arg(long, conflicts_with_all = ["partition", "replicas", "wait"])]
    pub list: bool,
    /// Wait until every move started has completed, then show the partitions.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 600, requires = "wait",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum ClusterCommand {
    /// Show the cluster id, controller quorum (voters, active controller, raft term, commit
    /// index, and as the active controller sees them each voter's and observer's directory id,
    /// log end offset, lag and last fetch) and brokers (epoch, endpoints, rack, fenced /
    /// controlled shutdown).
    Describe,
    /// Make a controller node a voter of the metadata quorum (KIP-853). Start it first with
    /// controller.quorum_bootstrap_servers naming the voters: it joins as an observer, and is
    /// made a voter once it has caught up.
    AddVoter {
        /// The node's id.
        #[arg(long, value_parser = clap::value_parser!(u64))]
        node_id: u64,
        /// Its directory id (default: the one it joined with, as `strom cluster describe`
        /// shows it).
        #[arg(long, value_name = "UUID")]
        directory_id: Option<String>,
        /// Its control (gRPC) address (default: the one it joined with).
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
        control_addr: Option<String>,
        /// How long it may take to catch up (the controller caps it at 10 s).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        timeout_ms: Option<u32>,
    },
    /// Remove a voter from the metadata quorum (KIP-853); if it still runs it stays an
    /// observer. Removing the active controller moves leadership to another voter.
    RemoveVoter {
        /// The voter's id.
        #[arg(long, value_parser = clap::value_parser!(u64))]
        node_id: u64,
        /// Only if it is this replica (its directory id, as `strom cluster describe` shows it).
        #[arg(long, value_name = "UUID")]
        directory_id: Option<String>,
    },
    /// Show every live broker's log directory (total and usable bytes) and each partition
    /// replica in it (size on disk, offset lag), as Kafka's kafka-log-dirs.
    LogDirs,
    /// Move leadership of partitions back to their preferred (first) replica.
    ElectLeaders {
        /// Only this topic's partitions (default: every topic).
        #[arg(long)]
        topic: Option<String>,
        /// Only these partitions of --topic; repeatable.
        #[arg(long, requires = "topic")]
        partition: Vec<i32>,
        /// Instead give leaderless partitions a leader even from outside the ISR (unclean:
        /// acknowledged records may be lost).
        #[arg(long)]
        unclean: bool,
    },
}

#[derive(Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum GroupCommand {
    /// List every consumer group of the cluster with its state and coordinator.
    List,
    /// Show a group's members and, per partition, the committed offset, the log end offset
    /// and the lag (like `kafka-consumer-groups --describe`).
    Describe {
        /// Group ids; at least one.
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct TxnArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: TxnCommand,
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum TxnCommand {
    /// List the transactional ids of the cluster with their state, producer id and coordinator.
    List {
        /// Only transactions in this state (Kafka's names: Empty, Ongoing, PrepareCommit,
        /// PrepareAbort, CompleteCommit, CompleteAbort, Dead, PrepareEpochFence); repeatable.
        #[arg(long = "state", value_name = "STATE", value_parser = parse_txn_state)]
        states: Vec<String>,
        /// Only the transactions of this producer id; repeatable.
        #[arg(long = "producer-id", value_name = "ID", value_parser = clap::value_parser!(i64).range(0..))]
        producer_ids: Vec<i64>,
    },
    /// Show transactions: state, producer id and epoch, coordinator, timeout, start time and
    /// the partitions written to (like `kafka-transactions describe`).
    Describe {
        /// Transactional ids; at least one.
        #[arg(required = true)]
        transactional_ids: Vec<String>,
    },
    /// Show the producers a partition's leader holds state for: epoch, last sequence, and the
    /// first offset of an open transaction (like `kafka-transactions describe-producers`).
    Producers {
        topic: String,
        #[arg(value_parser = clap::value_parser!(i32).range(0..))]
        partition: i32,
    },
}

/// A transaction state by Kafka's name, in any case → Kafka's spelling.
pub fn parse_txn_state(s: &str) -> Result<String, String> {
    let states = strom_admin::convert::TXN_STATES;
    states
        .iter()
        .find(|state| state.eq_ignore_ascii_case(s.trim()))
        .map(|s| s.to_string())
        .ok_or_else(|| {
            format!("'{s}' is not a transaction state: expected one of {}", states.join(", "))
        })
}

/// `KEY=VALUE` → (key, value). The value may contain '=' and may be empty (some configs take
/// an empty list); the key may not.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("'{s}' has no '=': expected KEY=VALUE, e.g. retention.ms=3600000"));
    };
    let key = parse_key(key)?;
    Ok((key, value.to_string()))
}

/// A config key: non-empty, without spaces or '='.
pub fn parse_key(s: &str) -> Result<String, String> {
    let key = s.trim();
    if key.is_empty() {
        return Err("the config key is empty: expected KEY=VALUE, e.g. retention.ms=3600000".into());
    }
    if key.contains('=') || key.contains(char::is_whitespace) {
        return Err(format!("'{key}' is not a config key: it contains '=' or whitespace"));
    }
    Ok(key.to_string())
}

/// `HOST:PORT` with a numeric port; a leading `http://` is accepted and kept.
pub fn parse_host_port(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("http://").unwrap_or(s);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!("'{s}' has no port: expected HOST:PORT, e.g. 127.0.0.1:9093"));
    };
    if host.is_empty() {
        return Err(format!("'{s}' has no host: expected HOST:PORT, e.g. 127.0.0.1:9093"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("'{port}' in '{s}' is not a port number (0-65535)"));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    #[command(name = "strom")]
    enum TestCli {
        Topic(TopicArgs),
        Cluster(ClusterArgs),
        Group(GroupArgs),
        Txn(TxnArgs),
    }

    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("strom").chain(args.iter().copied()))
    }

    fn topic(args: &[&str]) -> TopicArgs {
        match parse(args) {
            Ok(TestCli::Topic(t)) => t,
            other => panic!("not a topic command: {other:?}"),
        }
    }

    #[test]
    fn key_value_splits_at_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("retention.ms=1000"),
            Ok(("retention.ms".into(), "1000".into()))
        );
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_key_value("cleanup.policy="), Ok(("cleanup.policy".into(), "".into())));
    }

    #[test]
    fn key_value_errors_name_the_problem() {
        let e = parse_key_value("retention.ms").unwrap_err();
        assert!(e.contains("'retention.ms' has no '='"), "{e}");
        let e = parse_key_value("=5").unwrap_err();
        assert!(e.contains("config key is empty"), "{e}");
        let e = parse_key_value("retention ms=5").unwrap_err();
        assert!(e.contains("'retention ms' is not a config key"), "{e}");
    }

    #[test]
    fn host_port_needs_a_numeric_port() {
        assert_eq!(parse_host_port("10.0.0.1:19093"), Ok("10.0.0.1:19093".into()));
        assert_eq!(parse_host_port("http://node-1:9093"), Ok("http://node-1:9093".into()));
        assert!(parse_host_port("localhost").unwrap_err().contains("has no port"));
        assert!(parse_host_port("localhost:http").unwrap_err().contains("not a port number"));
        assert!(parse_host_port(":9093").unwrap_err().contains("has no host"));
    }

    #[test]
    fn create_takes_counts_and_repeated_configs() {
        let t = topic(&[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--replication-factor",
            "2",
            "--config",
            "retention.ms=1000",
            "--config",
            "cleanup.policy=compact",
        ]);
        assert_eq!(
            t.command,
            TopicCommand::Create {
                name: "orders".into(),
                partitions: Some(3),
                replication_factor: Some(2),
                configs: vec![
                    ("retention.ms".into(), "1000".into()),
                    ("cleanup.policy".into(), "compact".into())
                ],
                validate_only: false,
            }
        );
        assert_eq!(t.connect.bootstrap_control, CONTROL_ADDR_DEFAULT);
        assert_eq!(t.connect.output, Output::Table);
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let before = topic(&["topic", "--output", "json", "--bootstrap-control", "h:1", "list"]);
        let after = topic(&["topic", "list", "--output", "json", "--bootstrap-control", "h:1"]);
        for t in [before, after] {
            assert_eq!(t.command, TopicCommand::List);
            assert_eq!(t.connect.output, Output::Json);
            assert_eq!(t.connect.bootstrap_control, "h:1");
        }
    }

    #[test]
    fn bad_arguments_are_usage_errors_that_name_the_problem() {
        let e = parse(&["topic", "create", "t", "--config", "retention.ms"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("has no '='"), "{e}");
        let e = parse(&["topic", "create", "t", "--partitions", "0"]).unwrap_err();
        assert!(e.to_string().contains("--partitions"), "{e}");
        let e = parse(&["topic", "add-partitions", "t"]).unwrap_err();
        assert!(e.to_string().contains("--count"), "{e}");
        let e = parse(&["topic", "alter-config", "t"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        let e = parse(&["topic", "list", "--output", "yaml"]).unwrap_err();
        assert!(e.to_string().contains("yaml"), "{e}");
        let e = parse(&["cluster", "elect-leaders", "--partition", "1"]).unwrap_err();
        assert!(e.to_string().contains("--topic"), "{e}");
    }

    #[test]
    fn alter_config_takes_sets_and_deletes() {
        let t = topic(&[
            "topic",
            "alter-config",
            "orders",
            "--set",
            "retention.ms=5",
            "--delete",
            "cleanup.policy",
        ]);
        assert_eq!(
            t.command,
            TopicCommand::AlterConfig {
                name: "orders".into(),
                set: vec![("retention.ms".into(), "5".into())],
                delete: vec!["cleanup.policy".into()],
                validate_only: false,
            }
        );
        let only_delete = topic(&["topic", "alter-config", "orders", "--delete", "retention.ms"]);
        assert!(matches!(only_delete.command, TopicCommand::AlterConfig { .. }));
    }

    #[test]
    fn cluster_commands_parse() {
        let Ok(TestCli::Cluster(c)) =
            parse(&["cluster", "elect-leaders", "--topic", "t", "--partition", "0"])
        else {
            panic!("not a cluster command");
        };
        assert_eq!(
            c.command,
            ClusterCommand::ElectLeaders {
                topic: Some("t".into()),
                partition: vec![0],
                unclean: false
            }
        );
        assert!(matches!(parse(&["cluster", "describe"]), Ok(TestCli::Cluster(_))));
        let Ok(TestCli::Cluster(c)) = parse(&["cluster", "add-voter", "--node-id", "4"]) else {
            panic!("not a cluster command");
        };
        assert_eq!(
            c.command,
            ClusterCommand::AddVoter {
                node_id: 4,
                directory_id: None,
                control_addr: None,
                timeout_ms: None
            }
        );
        let Ok(TestCli::Cluster(c)) = parse(&[
            "cluster",
            "remove-voter",
            "--node-id",
            "3",
            "--directory-id",
            "AAAAAAAAAAAAAAAAAAAAAQ",
        ]) else {
            panic!("not a cluster command");
        };
        assert_eq!(
            c.command,
            ClusterCommand::RemoveVoter {
                node_id: 3,
                directory_id: Some("AAAAAAAAAAAAAAAAAAAAAQ".into())
            }
        );
        assert!(parse(&["cluster", "add-voter"]).is_err(), "--node-id is required");
        assert!(parse(&["cluster", "add-voter", "--node-id", "4", "--control-addr", "x"]).is_err());
        let Ok(TestCli::Group(g)) = parse(&["group", "describe", "a", "b", "--output", "json"])
        else {
            panic!("group describe did not parse")
        };
        assert_eq!(g.command, GroupCommand::Describe { groups: vec!["a".into(), "b".into()] });
        assert_eq!(g.connect.output, Output::Json);
        assert!(parse(&["group", "describe"]).is_err(), "a group id is required");
        assert!(matches!(parse(&["group", "list"]), Ok(TestCli::Group(_))));
    }

    #[test]
    fn txn_commands_parse_and_states_take_kafkas_spelling() {
        let Ok(TestCli::Txn(t)) = parse(&[
            "txn",
            "list",
            "--state",
            "ongoing",
            "--state",
            "PrepareCommit",
            "--producer-id",
            "4000",
        ]) else {
            panic!("txn list did not parse")
        };
        assert_eq!(
            t.command,
            TxnCommand::List {
                states: vec!["Ongoing".into(), "PrepareCommit".into()],
                producer_ids: vec![4000]
            }
        );
        let e = parse(&["txn", "list", "--state", "running"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("'running' is not a transaction state"), "{e}");
        assert!(e.to_string().contains("PrepareEpochFence"), "{e}");
        assert!(parse(&["txn", "list", "--producer-id", "-1"]).is_err(), "no negative ids");
        let Ok(TestCli::Txn(t)) = parse(&["txn", "describe", "a", "b", "--output", "json"]) else {
            panic!("txn describe did not parse")
        };
        assert_eq!(
            t.command,
            TxnCommand::Describe { transactional_ids: vec!["a".into(), "b".into()] }
        );
        assert_eq!(t.connect.output, Output::Json);
        assert!(parse(&["txn", "describe"]).is_err(), "a transactional id is required");
        let Ok(TestCli::Txn(t)) = parse(&["txn", "producers", "orders", "3"]) else {
            panic!("txn producers did not parse")
        };
        assert_eq!(t.command, TxnCommand::Producers { topic: "orders".into(), partition: 3 });
        let e = parse(&["txn", "producers", "orders"]).unwrap_err();
        assert!(e.to_string().contains("PARTITION"), "{e}");
        assert!(parse(&["txn", "producers", "orders", "x"]).is_err());
    }

    #[test]
    fn delete_records_takes_a_partition_and_an_offset_or_minus_one() {
        let t = topic(&["topic", "delete-records", "orders", "--partition", "2", "--offset", "-1"]);
        let expected =
            TopicCommand::DeleteRecords { name: "orders".into(), partition: 2, offset: -1 };
        assert_eq!(t.command, expected);
        let t = topic(&["topic", "delete-records", "orders", "--partition", "0", "--offset", "40"]);
        assert!(matches!(t.command, TopicCommand::DeleteRecords { offset: 40, .. }));
        assert!(parse(&[
            "topic",
            "delete-records",
            "orders",
            "--partition",
            "0",
            "--offset",
            "-2"
        ])
        .is_err());
        assert!(parse(&["topic", "delete-records", "orders", "--offset", "1"]).is_err());
    }
}

/// Where the data verbs reach the brokers unless told otherwise.
pub const BROKERS_DEFAULT: &str = "127.0.0.1:9092";

/// The Kafka listeners the data verbs talk to.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct BrokersArg {
    /// Kafka address(es) of any broker, host:port[,host:port...].
    #[arg(long, env = "STROM_BROKERS", default_value = BROKERS_DEFAULT)]
    pub brokers: String,
}

/// `strom produce TOPIC`: one record per line of stdin.
#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    #[command(flatten)]
    pub brokers: BrokersArg,
    /// Split each line at the first SEP into key and value (Kafka's `parse.key` and
    /// `key.separator`); a line without SEP has no key.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// A header on every record, e.g. --header source=cli; repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// Every record to this partition (default: keyed records by murmur2 of the key, as
    /// Kafka's partitioner places them; others one batch per partition in turn).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// all (-1), 1 or 0.
    #[arg(long, default_value = "all", allow_hyphen_values = true)]
    pub acks: String,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConsumeFormat {
    /// The value (with --print-key, key SEP value), one record per line.
    #[default]
    Text,
    /// One JSON object per record: topic, partition, offset, timestamp, key, value, headers.
    Json,
}

/// Where `strom consume` starts in each partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Offset(i64),
    Timestamp(i64),
}

/// `strom consume TOPIC`.
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    #[command(flatten)]
    pub brokers: BrokersArg,
    /// Only this partition (default: every partition).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Where to start: earliest, latest, an offset, or @MS for the first record at or after a
    /// timestamp (milliseconds since the epoch). With --group, the group's committed offsets
    /// win where it has them.
    #[arg(long = "offset", default_value = "earliest", value_parser = parse_start, allow_hyphen_values = true)]
    pub start: StartAt,
    /// Start from this consumer group's committed offsets (read with OffsetFetch; the CLI does
    /// not join the group).
    #[arg(long)]
    pub group: Option<String>,
    /// With --group: commit the offsets read, as a consumer outside the group's generations
    /// (Kafka accepts this while the group has no active members).
    #[arg(long, requires = "group")]
    pub commit: bool,
    /// Stop once every partition is read up to where its end was at the start (kcat's -e).
    #[arg(long, short = 'e')]
    pub exit_at_end: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub max_records: Option<u64>,
    /// Stop after this long.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Only committed transactional records (isolation level read_committed).
    #[arg(long)]
    pub read_committed: bool,
    #[arg(long, value_enum, default_value_t = ConsumeFormat::Text)]
    pub format: ConsumeFormat,
    /// Text format: print the key, then SEP, then the value.
    #[arg(long, value_name = "SEP")]
    pub print_key: Option<String>,
}

fn parse_start(text: &str) -> Result<StartAt, String> {
    match text {
        "earliest" | "beginning" => Ok(StartAt::Earliest),
        "latest" | "end" => Ok(StartAt::Latest),
        _ => {
            if let Some(ms) = text.strip_prefix('@') {
                return ms
                    .parse()
                    .map(StartAt::Timestamp)
                    .map_err(|_| format!("'{text}': @ must be followed by milliseconds"));
            }
            match text.parse::<i64>() {
                Ok(o) if o >= 0 => Ok(StartAt::Offset(o)),
                _ => Err(format!("'{text}': use earliest, latest, an offset (0 or more) or @MS")),
            }
        }
    }
}
