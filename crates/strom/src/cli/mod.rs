//! `strom topic …`, `strom cluster …`, `strom group …` and `strom txn …`: a gRPC client of the
//! AdminService on any node's control port (`--bootstrap-control`, default 127.0.0.1:9093);
//! `strom produce` and `strom consume`: a Kafka client of the brokers (`--brokers`, see `data`).
//!
//! Exit codes:
//! - 0: done.
//! - 1: the control port could not be reached, or no active controller answered in time
//!   (connection refused, timeout, UNAVAILABLE); retrying later may help.
//! - 2: the command line was wrong, or the cluster refused the request (unknown topic, invalid
//!   config, topic exists, …); the message says why and retrying will not help.

mod args;
mod data;
mod quorum;
mod reassign;
mod render;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use strom_proto::admin as pb;
use strom_proto::admin::admin_service_client::AdminServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use args::{
    ClusterArgs, ClusterCommand, ConnectArgs, ConsumeArgs, GroupArgs, GroupCommand, Output,
    ProduceArgs, TopicArgs, TopicCommand, TxnArgs, TxnCommand,
};

/// How long the CLI waits for a TCP connection to the control port.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long one call may take; longer than the server's own wait for the controller, so the
/// server's UNAVAILABLE answer arrives before the client gives up.
pub const REQUEST_TIMEOUT_MS: u64 = 40_000;
/// Largest answer the CLI accepts: describing every topic of a large cluster exceeds tonic's
/// 4 MiB default.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the control port at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Usage(String),
    /// Some items of the request failed; `output` shows which.
    #[error("{message}")]
    Partial { output: String, message: String },
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Connect { .. } | CliError::Unavailable(_) => 1,
            CliError::Refused(_) | CliError::Usage(_) | CliError::Partial { .. } => 2,
        }
    }
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        let message = if status.message().is_empty() {
            status.code().description().to_string()
        } else {
            status.message().to_string()
        };
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                CliError::Unavailable(message)
            }
            Code::Unimplemented => {
                CliError::Refused(format!("{message} (not supported by this server)"))
            }
            _ => CliError::Refused(message),
        }
    }
}

/// Every message in an error's source chain: tonic's transport error alone says only
/// "transport error".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

pub fn run_topic(args: TopicArgs) -> ExitCode {
    run(&args.connect, Job::Topic(args.command))
}

pub fn run_cluster(args: ClusterArgs) -> ExitCode {
    run(&args.connect, Job::Cluster(args.command))
}

pub fn run_group(args: GroupArgs) -> ExitCode {
    run(&args.connect, Job::Group(args.command))
}

pub fn run_txn(args: TxnArgs) -> ExitCode {
    run(&args.connect, Job::Txn(args.command))
}

enum Job {
    Topic(TopicCommand),
    Cluster(ClusterCommand),
    Group(GroupCommand),
    Txn(TxnCommand),
}

fn run(connect: &ConnectArgs, job: Job) -> ExitCode {
    finish(block(execute(connect, job)))
}

/// `strom produce TOPIC`: stdin's lines to the topic.
pub fn run_produce(args: ProduceArgs) -> ExitCode {
    finish(block(data::produce(args, std::io::stdin().lock())))
}

/// `strom consume TOPIC`: the topic's records to stdout.
pub fn run_consume(args: ConsumeArgs) -> ExitCode {
    finish(block(data::consume(args, std::io::stdout())))
}

/// Runs one command on a runtime of its own.
fn block(
    command: impl std::future::Future<Output = Result<String, CliError>>,
) -> Result<String, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Unavailable(format!("cannot start the async runtime: {e}")))
        .and_then(|rt| rt.block_on(command))
}

/// Prints a command's output and error; its exit code.
fn finish(result: Result<String, CliError>) -> ExitCode {
    let (text, error) = match result {
        Ok(text) => (text, None),
        Err(CliError::Partial { output, message }) => {
            (output.clone(), Some(CliError::Partial { output, message }))
        }
        Err(e) => (String::new(), Some(e)),
    };
    if !text.is_empty() {
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            // `strom topic list | head` closes the pipe early; that is not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                eprintln!("strom: error: cannot write the output: {e}");
                return ExitCode::from(1);
            }
        }
    }
    match error {
        None => ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("strom: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn connect(addr: &str) -> Result<AdminServiceClient<Channel>, CliError> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| CliError::Usage(format!("invalid --bootstrap-control '{addr}': {e}")))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CliError::Connect { addr: addr.to_string(), reason: chain(&e) })?;
    Ok(AdminServiceClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX))
}

/// The one item a single-item call answers with.
fn only<T>(items: Vec<T>, what: &str) -> Result<T, CliError> {
    items.into_iter().next().ok_or_else(|| {
        CliError::Refused(format!("the server answered without a result for {what}"))
    })
}

fn item_failed(error: Option<pb::ItemError>) -> Result<(), CliError> {
    match error {
        None => Ok(()),
        Some(e) => Err(CliError::from(Status::new(Code::from_i32(e.code), e.message))),
    }
}

async fn execute(connect_args: &ConnectArgs, job: Job) -> Result<String, CliError> {
    let mut client = connect(&connect_args.bootstrap_control).await?;
    let output = connect_args.output;
    match job {
        Job::Topic(command) => topic(&mut client, command, output).await,
        Job::Cluster(command) => cluster(&mut client, command, output).await,
        Job::Group(command) => group(&mut client, command, output).await,
        Job::Txn(command) => txn(&mut client, command, output).await,
    }
}

async fn topic(
    client: &mut AdminServiceClient<Channel>,
    command: TopicCommand,
    output: Output,
) -> Result<String, CliError> {
    match command {
        TopicCommand::Create { name, partitions, replication_factor, configs, validate_only } => {
            let request = pb::CreateTopicsRequest {
                topics: vec![pb::NewTopic {
                    name: name.clone(),
                    partitions,
                    replication_factor,
                    configs: configs.into_iter().collect(),
                }],
                validate_only,
            };
            let answer = client.create_topics(request).await?.into_inner();
            let created = only(answer.topics, &format!("topic '{name}'"))?;
            item_failed(created.error.clone())?;
            Ok(render::render(&render::CreatedTopic::new(&created, validate_only), output))
        }
        TopicCommand::List => {
            let answer = client.list_topics(pb::ListTopicsRequest {}).await?.into_inner();
            Ok(render::render(&answer, output))
        }
        TopicCommand::Describe { name } => {
            let topics = client
                .describe_topics(pb::DescribeTopicsRequest { names: vec![name.clone()] })
                .await?
                .into_inner();
            let topic = only(topics.topics, &format!("topic '{name}'"))?;
            let configs = client
                .describe_configs(pb::DescribeConfigsRequest { topic: name, keys: vec![] })
                .await?
                .into_inner();
            Ok(render::render(&render::TopicDescription::new(&topic, &configs), output))
        }
        TopicCommand::Delete { name } => {
            let answer = client
                .delete_topics(pb::DeleteTopicsRequest { names: vec![name.clone()] })
                .await?
                .into_inner();
            let deleted = only(answer.topics, &format!("topic '{name}'"))?;
            item_failed(deleted.error)?;
            let view = render::DeletedTopic { name: deleted.name, topic_id: deleted.topic_id };
            Ok(render::render(&view, output))
        }
        TopicCommand::AlterConfig { name, set, delete, validate_only } => {
            if set.is_empty() && delete.is_empty() {
                return Err(CliError::Usage(
                    "give at least one --set KEY=VALUE or --delete KEY".into(),
                ));
            }
            let set: BTreeMap<String, String> = set.into_iter().collect();
            let mut ops: Vec<pb::ConfigOp> = set
                .iter()
                .map(|(k, v)| pb::ConfigOp {
                    key: k.clone(),
                    op: pb::ConfigOpType::Set as i32,
                    value: Some(v.clone()),
                })
                .collect();
            ops.extend(delete.iter().map(|k| pb::ConfigOp {
                key: k.clone(),
                op: pb::ConfigOpType::Delete as i32,
                value: None,
            }));
            let request = pb::AlterConfigsRequest {
                topics: vec![pb::TopicConfigAlteration { topic: name.clone(), ops }],
                validate_only,
            };
            let answer = client.alter_configs(request).await?.into_inner();
            item_failed(only(answer.topics, &format!("topic '{name}'"))?.error)?;
            let view = render::AlteredConfigs { topic: name, set, deleted: delete, validate_only };
            Ok(render::render(&view, output))
        }
        TopicCommand::DeleteRecords { name, partition, offset } => {
            let request = pb::DeleteRecordsRequest { topic: name, partition, offset };
            let answer = client.delete_records(request).await?.into_inner();
            Ok(render::render(&answer, output))
        }
        TopicCommand::Reassign(args) => reassign::run(client, args, output).await,
        TopicCommand::AddPartitions { name, count, validate_only } => {
            let request = pb::CreatePartitionsRequest {
                topics: vec![pb::NewPartitions {
                    topic: name.clone(),
                    total_count: 0,
                    add_count: count,
                }],
                validate_only,
            };
            let answer = client.create_partitions(request).await?.into_inner();
            let result = only(answer.topics, &format!("topic '{name}'"))?;
            item_failed(result.error)?;
            let view = render::AddedPartitions {
                topic: result.topic,
                partitions: result.total_count,
                validate_only,
            };
            Ok(render::render(&view, output))
        }
    }
}

async fn cluster(
    client: &mut AdminServiceClient<Channel>,
    command: ClusterCommand,
    output: Output,
) -> Result<String, CliError> {
    match command {
        ClusterCommand::Describe => {
            let answer = client.describe_cluster(pb::DescribeClusterRequest {}).await?.into_inner();
            let mut view = quorum::ClusterAndQuorum {
                cluster: render::ClusterDescription::from(&answer),
                quorum: None,
                quorum_error: None,
            };
            // The quorum as the active controller sees it; without one (no quorum, or an older
            // server) the rest is still worth showing, with the reason.
            match client.describe_quorum(pb::DescribeQuorumRequest {}).await {
                Ok(quorum) => {
                    view.quorum = Some(quorum::Quorum::from_pb(&quorum.into_inner(), now_ms()))
                }
                Err(status) => view.quorum_error = Some(CliError::from(status).to_string()),
            }
            Ok(render::render(&view, output))
        }
        ClusterCommand::AddVoter { node_id, directory_id, control_addr, timeout_ms } => {
            let request =
                pb::AddVoterRequest { node_id, directory_id, address: control_addr, timeout_ms };
            let answer = client.add_voter(request).await?.into_inner();
            let quorum = answer.quorum.ok_or_else(|| no_quorum("add-voter"))?;
            let view = quorum::VoterChange {
                change: "added",
                node_id,
                quorum: quorum::Quorum::from_pb(&quorum, now_ms()),
            };
            Ok(render::render(&view, output))
        }
        ClusterCommand::LogDirs => {
            let answer =
                client.describe_log_dirs(pb::DescribeLogDirsRequest {}).await?.into_inner();
            let unreachable: Vec<String> =
                answer.unreachable.iter().map(|id| format!("broker {id} did not answer")).collect();
            listed_or_partial(render::render(&answer, output), &unreachable)
        }
        ClusterCommand::RemoveVoter { node_id, directory_id } => {
            let request = pb::RemoveVoterRequest { node_id, directory_id };
            let answer = client.remove_voter(request).await?.into_inner();
            let quorum = answer.quorum.ok_or_else(|| no_quorum("remove-voter"))?;
            let view = quorum::VoterChange {
                change: "removed",
                node_id,
                quorum: quorum::Quorum::from_pb(&quorum, now_ms()),
            };
            Ok(render::render(&view, output))
        }
        ClusterCommand::ElectLeaders { topic, partition, unclean } => {
            let election_type =
                if unclean { pb::ElectionType::Unclean } else { pb::ElectionType::Preferred };
            let request = pb::ElectLeadersRequest {
                election_type: election_type as i32,
                topics: topic
                    .map(|topic| vec![pb::TopicPartitions { topic, partitions: partition }])
                    .unwrap_or_default(),
            };
            let answer = client.elect_leaders(request).await?.into_inner();
            let view = render::Elections::from(&answer);
            let text = render::render(&view, output);
            match view.failed() {
                0 => Ok(text),
                n => Err(CliError::Partial {
                    output: text,
                    message: format!("{n} partition(s) got no new leader"),
                }),
            }
        }
    }
}

fn no_quorum(command: &str) -> CliError {
    CliError::Refused(format!("the server answered {command} without the quorum"))
}

/// The wall clock, for how long ago a replica last fetched.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn group(
    client: &mut AdminServiceClient<Channel>,
    command: GroupCommand,
    output: Output,
) -> Result<String, CliError> {
    match command {
        GroupCommand::List => {
            let answer = client.list_groups(pb::ListGroupsRequest {}).await?.into_inner();
            listed_or_partial(render::render(&answer, output), &answer.unreachable)
        }
        GroupCommand::Describe { groups } => {
            let answer = client
                .describe_groups(pb::DescribeGroupsRequest { group_ids: groups })
                .await?
                .into_inner();
            let view = render::GroupDescriptions::from(&answer);
            let text = render::render(&view, output);
            let unavailable: Vec<String> = answer
                .groups
                .iter()
                .filter_map(|g| g.error.as_ref().map(|e| format!("{}: {}", g.group_id, e.message)))
                .collect();
            let missing: Vec<String> = view
                .groups
                .iter()
                .filter(|g| g.is_missing())
                .map(|g| format!("group '{}' does not exist", g.group_id))
                .collect();
            if !unavailable.is_empty() && unavailable.len() == answer.groups.len() {
                Err(CliError::Unavailable(unavailable.join("; ")))
            } else if unavailable.is_empty() && missing.is_empty() {
                Ok(text)
            } else {
                let message = unavailable.into_iter().chain(missing).collect::<Vec<_>>().join("; ");
                Err(CliError::Partial { output: text, message })
            }
        }
    }
}

async fn txn(
    client: &mut AdminServiceClient<Channel>,
    command: TxnCommand,
    output: Output,
) -> Result<String, CliError> {
    match command {
        TxnCommand::List { states, producer_ids } => {
            let answer = client
                .list_transactions(pb::ListTransactionsRequest { states, producer_ids })
                .await?
                .into_inner();
            listed_or_partial(render::render(&answer, output), &answer.unreachable)
        }
        TxnCommand::Describe { transactional_ids } => {
            let answer = client
                .describe_transactions(pb::DescribeTransactionsRequest { transactional_ids })
                .await?
                .into_inner();
            let view = render::TransactionDescriptions::from(&answer);
            let text = render::render(&view, output);
            described_or_failed(text, &answer.transactions)
        }
        TxnCommand::Producers { topic, partition } => {
            let answer = client
                .describe_producers(pb::DescribeProducersRequest { topic, partition })
                .await?
                .into_inner();
            Ok(render::render(&render::Producers::from(&answer), output))
        }
    }
}

/// A cluster-wide listing's outcome (`strom group list`, `strom txn list`): the output alone
/// when every node answered, else the output and the nodes that could not be asked.
fn listed_or_partial(text: String, unreachable: &[String]) -> Result<String, CliError> {
    if unreachable.is_empty() {
        Ok(text)
    } else {
        Err(CliError::Partial {
            output: text,
            message: format!("the list may be incomplete: {}", unreachable.join("; ")),
        })
    }
}

/// `strom txn describe`'s outcome: the output alone when every id was described; exit 1 when
/// no id's coordinator could be asked (retrying may help); else the output and the failures.
fn described_or_failed(
    text: String,
    transactions: &[pb::TransactionDescription],
) -> Result<String, CliError> {
    let failed: Vec<(String, bool)> = transactions
        .iter()
        .filter_map(|t| {
            let unavailable = t.error.as_ref()?.code == Code::Unavailable as i32;
            Some((render::txn_error(t)?, unavailable))
        })
        .collect();
    let message = failed.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>().join("; ");
    if failed.is_empty() {
        Ok(text)
    } else if failed.len() == transactions.len()
        && failed.iter().all(|(_, unavailable)| *unavailable)
    {
        Err(CliError::Unavailable(message))
    } else {
        Err(CliError::Partial { output: text, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        let refused = CliError::from(Status::not_found("topic 'x' does not exist"));
        assert_eq!(refused.to_string(), "topic 'x' does not exist");
        assert_eq!(refused.exit_code(), 2);
        assert_eq!(CliError::from(Status::invalid_argument("bad")).exit_code(), 2);
        assert_eq!(CliError::from(Status::already_exists("dup")).exit_code(), 2);
        assert_eq!(CliError::from(Status::unavailable("no controller")).exit_code(), 1);
        assert_eq!(CliError::from(Status::deadline_exceeded("slow")).exit_code(), 1);
        let e = CliError::Connect { addr: "h:1".into(), reason: "connection refused".into() };
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "cannot reach the control port at h:1: connection refused");
        let e = CliError::from(Status::unimplemented("no election"));
        assert!(e.to_string().contains("not supported"), "{e}");
    }

    #[test]
    fn txn_describe_fails_softly_unless_no_coordinator_could_be_asked() {
        let item = |id: &str, error: Option<(Code, &str)>| pb::TransactionDescription {
            transactional_id: id.into(),
            error: error.map(|(code, m)| pb::ItemError { code: code as i32, message: m.into() }),
            ..Default::default()
        };
        let found = item("a", None);
        let gone = item("b", Some((Code::NotFound, "transactional id 'b' does not exist")));
        let down = item("c", Some((Code::Unavailable, "connect to h:1: refused")));
        assert_eq!(
            described_or_failed("t".into(), std::slice::from_ref(&found)).expect("all found"),
            "t"
        );
        let e = described_or_failed("t".into(), &[found, gone.clone()]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.to_string(), "transactional id 'b' does not exist");
        let e = described_or_failed("t".into(), std::slice::from_ref(&down)).unwrap_err();
        assert_eq!(e.exit_code(), 1, "retrying may help");
        assert_eq!(e.to_string(), "transactional id 'c': connect to h:1: refused");
        let e = described_or_failed("t".into(), &[gone, down]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn an_item_error_becomes_the_commands_error() {
        let e = item_failed(Some(pb::ItemError {
            code: Code::NotFound as i32,
            message: "topic 'x' does not exist".into(),
        }))
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.to_string(), "topic 'x' does not exist");
        assert!(item_failed(None).is_ok());
    }
}
