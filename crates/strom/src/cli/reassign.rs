//! `strom topic reassign`: moving partitions to new replicas through the AdminService's
//! AlterPartitionReassignments, from the command line or from a kafka-reassign-partitions JSON
//! plan; listing and cancelling moves; waiting until the moves started have completed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strom_proto::admin as pb;
use strom_proto::admin::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

use super::args::ReassignArgs;
use super::render::{self, View};
use super::{CliError, Output};

/// How often `--wait` asks whether the moves are done.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// kafka-reassign-partitions' plan file: `{"version":1,"partitions":[...]}`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Plan {
    version: i32,
    partitions: Vec<PlannedMove>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PlannedMove {
    topic: String,
    partition: i32,
    #[serde(default)]
    replicas: Vec<i32>,
    /// Kafka's per-replica log directory; strom has one per broker, so only "any" is taken.
    #[serde(default)]
    log_dirs: Vec<String>,
}

pub async fn run(
    client: &mut AdminServiceClient<Channel>,
    args: ReassignArgs,
    output: Output,
) -> Result<String, CliError> {
    if args.list {
        let topics = args
            .name
            .map(|topic| vec![pb::TopicPartitions { topic, partitions: Vec::new() }])
            .unwrap_or_default();
        let request = pb::ListPartitionReassignmentsRequest { topics };
        let answer = client.list_partition_reassignments(request).await?.into_inner();
        return Ok(render::render(&answer, output));
    }
    let moves = match &args.plan {
        Some(path) => plan_moves(path, args.cancel)?,
        None => command_line_moves(&args)?,
    };
    let targets: BTreeMap<(String, i32), Vec<i32>> =
        moves.iter().map(|m| ((m.topic.clone(), m.partition), m.replicas.clone())).collect();
    let request = pb::AlterPartitionReassignmentsRequest { partitions: moves };
    let answer = client.alter_partition_reassignments(request).await?.into_inner();
    let mut view = Moves::from(&answer, args.cancel);
    if args.wait {
        // A move is done when it is no longer listed and the partition has its target
        // replicas (the answering node may not have seen the move start yet); a cancel when
        // it is no longer listed.
        let started: BTreeMap<(String, i32), Vec<i32>> = view
            .partitions
            .iter()
            .filter(|m| m.error.is_none())
            .map(|m| {
                let key = (m.topic.clone(), m.partition);
                let target = if args.cancel { Vec::new() } else { targets[&key].clone() };
                (key, target)
            })
            .collect();
        wait_done(client, &started, Duration::from_secs(args.timeout_secs)).await?;
        let done: BTreeSet<(String, i32)> = started.into_keys().collect();
        view.completed(client, &done).await?;
    }
    let text = render::render(&view, output);
    match view.partitions.iter().filter(|m| m.error.is_some()).count() {
        0 => Ok(text),
        n => Err(CliError::Partial { output: text, message: format!("{n} partition(s) refused") }),
    }
}

fn command_line_moves(args: &ReassignArgs) -> Result<Vec<pb::PartitionMove>, CliError> {
    let (Some(topic), Some(partition)) = (&args.name, args.partition) else {
        return Err(CliError::Usage(
            "name a topic and --partition (with --replicas or --cancel), or give --plan FILE, \
             or --list"
                .into(),
        ));
    };
    if !args.cancel && args.replicas.is_empty() {
        return Err(CliError::Usage(format!(
            "{topic}-{partition}: give the target replicas (--replicas 1,2,3) or --cancel"
        )));
    }
    check_replicas(topic, partition, &args.replicas)?;
    Ok(vec![pb::PartitionMove {
        topic: topic.clone(),
        partition,
        replicas: args.replicas.clone(),
        cancel: args.cancel,
    }])
}

fn check_replicas(topic: &str, partition: i32, replicas: &[i32]) -> Result<(), CliError> {
    let distinct: BTreeSet<i32> = replicas.iter().copied().collect();
    if distinct.len() != replicas.len() {
        return Err(CliError::Usage(format!(
            "{topic}-{partition}: a broker is named twice in the replicas {replicas:?}"
        )));
    }
    Ok(())
}

fn plan_moves(path: &Path, cancel: bool) -> Result<Vec<pb::PartitionMove>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read --plan {}: {e}", path.display())))?;
    parse_plan(&text, cancel)
        .map_err(|e| CliError::Usage(format!("--plan {}: {e}", path.display())))
}

fn parse_plan(text: &str, cancel: bool) -> Result<Vec<pb::PartitionMove>, String> {
    let plan: Plan =
        serde_json::from_str(text).map_err(|e| format!("not a reassignment plan: {e}"))?;
    if plan.version != 1 {
        return Err(format!(
            "version {} is not supported; the plan format is version 1",
            plan.version
        ));
    }
    if plan.partitions.is_empty() {
        return Err("the plan names no partitions".into());
    }
    let mut seen = BTreeSet::new();
    let mut moves = Vec::with_capacity(plan.partitions.len());
    for m in plan.partitions {
        if !seen.insert((m.topic.clone(), m.partition)) {
            return Err(format!("{}-{} is named twice", m.topic, m.partition));
        }
        if !cancel && m.replicas.is_empty() {
            return Err(format!("{}-{}: no replicas", m.topic, m.partition));
        }
        if let Some(dir) = m.log_dirs.iter().find(|d| *d != "any") {
            return Err(format!(
                "{}-{}: log_dirs \"{dir}\": strom has one log directory per broker; use \"any\"",
                m.topic, m.partition
            ));
        }
        if !m.log_dirs.is_empty() && m.log_dirs.len() != m.replicas.len() {
            return Err(format!(
                "{}-{}: {} log_dirs for {} replicas",
                m.topic,
                m.partition,
                m.log_dirs.len(),
                m.replicas.len()
            ));
        }
        check_replicas(&m.topic, m.partition, &m.replicas).map_err(|e| e.to_string())?;
        moves.push(pb::PartitionMove {
            topic: m.topic,
            partition: m.partition,
            replicas: if cancel { Vec::new() } else { m.replicas },
            cancel,
        });
    }
    Ok(moves)
}

/// Polls until none of `started` is listed in progress and each has its target replicas
/// (an empty target: any).
async fn wait_done(
    client: &mut AdminServiceClient<Channel>,
    started: &BTreeMap<(String, i32), Vec<i32>>,
    timeout: Duration,
) -> Result<(), CliError> {
    let topics: BTreeSet<&String> = started.keys().map(|(t, _)| t).collect();
    let describe =
        pb::DescribeTopicsRequest { names: topics.iter().map(|t| (*t).clone()).collect() };
    let request = pb::ListPartitionReassignmentsRequest {
        topics: topics
            .into_iter()
            .map(|t| pb::TopicPartitions { topic: t.clone(), partitions: Vec::new() })
            .collect(),
    };
    let deadline = Instant::now() + timeout;
    loop {
        let answer = client.list_partition_reassignments(request.clone()).await?.into_inner();
        let listed = answer
            .reassignments
            .iter()
            .filter(|r| started.contains_key(&(r.topic.clone(), r.partition)))
            .count();
        let mut left = listed;
        if listed == 0 {
            let described = client.describe_topics(describe.clone()).await?.into_inner();
            left = started
                .iter()
                .filter(|((topic, partition), target)| {
                    let now = described
                        .topics
                        .iter()
                        .filter(|t| &t.name == topic)
                        .flat_map(|t| &t.partitions)
                        .find(|p| p.partition == *partition);
                    !target.is_empty() && now.is_none_or(|p| &p.replicas != *target)
                })
                .count();
            if left == 0 {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(CliError::Unavailable(format!(
                "{left} move(s) still in progress after {}s; they go on (see strom topic \
                 reassign --list)",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// `strom topic reassign`'s answer: one row per partition named.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Moves {
    pub partitions: Vec<Move>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Move {
    pub topic: String,
    pub partition: i32,
    /// `started`, `cancelled`, `completed` or `refused`.
    pub result: &'static str,
    /// The replicas once completed (with --wait).
    pub replicas: Option<Vec<i32>>,
    pub error: Option<String>,
}

impl Moves {
    fn from(answer: &pb::AlterPartitionReassignmentsResponse, cancel: bool) -> Moves {
        let partitions = answer
            .partitions
            .iter()
            .map(|p| Move {
                topic: p.topic.clone(),
                partition: p.partition,
                result: match (&p.error, cancel) {
                    (Some(_), _) => "refused",
                    (None, true) => "cancelled",
                    (None, false) => "started",
                },
                replicas: None,
                error: p.error.as_ref().map(|e| e.message.clone()),
            })
            .collect();
        Moves { partitions }
    }

    /// Marks the moves of `done` completed, with the replicas the partitions have now.
    async fn completed(
        &mut self,
        client: &mut AdminServiceClient<Channel>,
        done: &BTreeSet<(String, i32)>,
    ) -> Result<(), CliError> {
        let names: BTreeSet<String> = done.iter().map(|(t, _)| t.clone()).collect();
        let request = pb::DescribeTopicsRequest { names: names.into_iter().collect() };
        let answer = client.describe_topics(request).await?.into_inner();
        for m in self.partitions.iter_mut().filter(|m| m.error.is_none()) {
            let now = answer
                .topics
                .iter()
                .filter(|t| t.name == m.topic)
                .flat_map(|t| &t.partitions)
                .find(|p| p.partition == m.partition);
            if m.result == "started" {
                m.result = "completed";
            }
            m.replicas = now.map(|p| p.replicas.clone());
        }
        Ok(())
    }
}

impl View for Moves {
    fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .partitions
            .iter()
            .map(|m| {
                let result = match &m.error {
                    Some(e) => format!("refused: {e}"),
                    None => m.result.to_string(),
                };
                let replicas = m.replicas.as_deref().map_or_else(|| "-".into(), render::ids);
                vec![m.topic.clone(), m.partition.to_string(), replicas, result]
            })
            .collect();
        render::table(&["TOPIC", "PARTITION", "REPLICAS", "RESULT"], &rows)
    }
}

/// `strom topic reassign --list`: the moves in progress.
impl View for pb::ListPartitionReassignmentsResponse {
    fn table(&self) -> String {
        if self.reassignments.is_empty() {
            return "No partition is being moved.".into();
        }
        let rows: Vec<Vec<String>> = self
            .reassignments
            .iter()
            .map(|r| {
                vec![
                    r.topic.clone(),
                    r.partition.to_string(),
                    render::ids(&r.replicas),
                    render::ids(&r.adding_replicas),
                    render::ids(&r.removing_replicas),
                    render::ids(&r.isr),
                ]
            })
            .collect();
        render::table(&["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING", "ISR"], &rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kafka_plan_becomes_moves() {
        let text = r#"{"version":1,"partitions":[
            {"topic":"a","partition":0,"replicas":[2,3,1],"log_dirs":["any","any","any"]},
            {"topic":"b","partition":4,"replicas":[1]}]}"#;
        let moves = parse_plan(text, false).unwrap();
        assert_eq!(moves.len(), 2);
        assert_eq!(moves[0].replicas, vec![2, 3, 1]);
        assert_eq!((moves[1].topic.as_str(), moves[1].partition), ("b", 4));
        assert!(moves.iter().all(|m| !m.cancel));
        let cancels = parse_plan(text, true).unwrap();
        assert!(cancels.iter().all(|m| m.cancel && m.replicas.is_empty()));
    }

    #[test]
    fn bad_plans_are_refused_naming_the_problem() {
        let cases = [
            ("{}", "not a reassignment plan"),
            (r#"{"version":2,"partitions":[]}"#, "version 2"),
            (r#"{"version":1,"partitions":[]}"#, "no partitions"),
            (r#"{"version":1,"partitions":[{"topic":"a","partition":0}]}"#, "no replicas"),
            (
                r#"{"version":1,"partitions":[{"topic":"a","partition":0,"replicas":[1,1]}]}"#,
                "named twice",
            ),
            (
                r#"{"version":1,"partitions":[{"topic":"a","partition":0,"replicas":[1]},
                    {"topic":"a","partition":0,"replicas":[2]}]}"#,
                "a-0 is named twice",
            ),
            (
                r#"{"version":1,"partitions":[{"topic":"a","partition":0,"replicas":[1],
                    "log_dirs":["/data"]}]}"#,
                "log_dirs",
            ),
            (
                r#"{"version":1,"partitions":[{"topic":"a","partition":0,"replicas":[1],
                    "extra":1}]}"#,
                "extra",
            ),
        ];
        for (text, wanted) in cases {
            let error = parse_plan(text, false).unwrap_err();
            assert!(error.contains(wanted), "{text}: {error} does not say {wanted}");
        }
    }
}
