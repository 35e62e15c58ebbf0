//! What the admin commands print: AdminService answers turned into views, each rendered as a
//! human table or as JSON. Pure, so the output format is unit-tested without a server.

use std::collections::BTreeMap;

use serde::Serialize;
use strom_proto::admin as pb;

use super::args::Output;

/// A rendered view: either a table (with a sentence or header above it) or a JSON value.
pub trait View: Serialize {
    fn table(&self) -> String;
}

/// Renders a view in the chosen format; the result ends with a newline.
pub fn render(view: &impl View, output: Output) -> String {
    let mut text = match output {
        Output::Table => view.table(),
        // Serialising plain structs of strings and numbers cannot fail.
        Output::Json => serde_json::to_string_pretty(view)
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot render JSON: {e}\"}}")),
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Left-aligned columns two spaces apart, headers first; no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad));
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

pub(super) fn ids(ids: &[i32]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct CreatedTopic {
    pub name: String,
    pub topic_id: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub validate_only: bool,
}

impl CreatedTopic {
    pub fn new(t: &pb::CreatedTopic, validate_only: bool) -> Self {
        CreatedTopic {
            name: t.name.clone(),
            topic_id: t.topic_id.clone(),
            partitions: t.partitions,
            replication_factor: t.replication_factor,
            validate_only,
        }
    }
}

impl View for CreatedTopic {
    fn table(&self) -> String {
        let verb = if self.validate_only { "Would create" } else { "Created" };
        format!(
            "{verb} topic '{}' with {} partition(s), replication factor {} (id {}).",
            self.name, self.partitions, self.replication_factor, self.topic_id
        )
    }
}

/// `strom topic list`: the answer as it comes (it is `Serialize` with strom-proto's `serde`).
impl View for pb::ListTopicsResponse {
    fn table(&self) -> String {
        if self.topics.is_empty() {
            return "No topics.".into();
        }
        let rows: Vec<Vec<String>> = self
            .topics
            .iter()
            .map(|t| {
                let name =
                    if t.internal { format!("{} (internal)", t.name) } else { t.name.clone() };
                vec![
                    name,
                    t.partitions.to_string(),
                    t.replication_factor.to_string(),
                    t.topic_id.clone(),
                ]
            })
            .collect();
        table(&["TOPIC", "PARTITIONS", "REPLICATION-FACTOR", "TOPIC-ID"], &rows)
    }
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub topic_id: String,
    pub internal: bool,
    pub partitions: Vec<PartitionDescription>,
    pub configs: Vec<ConfigEntry>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct PartitionDescription {
    pub partition: i32,
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: String,
    /// `override`, `static-broker-default` or `default`.
    pub source: &'static str,
}

fn source_name(source: i32) -> &'static str {
    match pb::ConfigSource::try_from(source) {
        Ok(pb::ConfigSource::TopicOverride) => "override",
        Ok(pb::ConfigSource::StaticBrokerDefault) => "static-broker-default",
        Ok(pb::ConfigSource::Default) => "default",
        Ok(pb::ConfigSource::Unspecified) | Err(_) => "unknown",
    }
}

impl TopicDescription {
    pub fn new(t: &pb::TopicDescription, configs: &pb::DescribeConfigsResponse) -> Self {
        TopicDescription {
            name: t.name.clone(),
            topic_id: t.topic_id.clone(),
            internal: t.internal,
            partitions: t
                .partitions
                .iter()
                .map(|p| PartitionDescription {
                    partition: p.partition,
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                    offline_replicas: p.offline_replicas.clone(),
                })
                .collect(),
            configs: configs
                .entries
                .iter()
                .map(|c| ConfigEntry {
                    name: c.name.clone(),
                    value: c.value.clone(),
                    source: source_name(c.source),
                })
                .collect(),
        }
    }
}

impl View for TopicDescription {
    fn table(&self) -> String {
        let rf = self.partitions.first().map_or(0, |p| p.replicas.len());
        let internal = if self.internal { " (internal)" } else { "" };
        let mut out = format!(
            "Topic: {}{internal}\nTopic id: {}\nPartitions: {}\nReplication factor: {rf}\n",
            self.name,
            self.topic_id,
            self.partitions.len()
        );
        let overrides: Vec<String> = self
            .configs
            .iter()
            .filter(|c| c.source != "default")
            .map(|c| {
                let note = if c.source == "override" { "" } else { " (broker default)" };
                format!("{}={}{note}", c.name, c.value)
            })
            .collect();
        if overrides.is_empty() {
            out.push_str("Configs: all defaults\n");
        } else {
            out.push_str(&format!("Configs: {}\n", overrides.join(", ")));
        }
        out.push('\n');
        let rows: Vec<Vec<String>> = self
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.partition.to_string(),
                    opt(p.leader),
                    p.leader_epoch.to_string(),
                    ids(&p.replicas),
                    ids(&p.isr),
                    ids(&p.offline_replicas),
                ]
            })
            .collect();
        out.push_str(&table(
            &["PARTITION", "LEADER", "LEADER-EPOCH", "REPLICAS", "ISR", "OFFLINE"],
            &rows,
        ));
        out
    }
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct DeletedTopic {
    pub name: String,
    pub topic_id: String,
}

impl View for DeletedTopic {
    fn table(&self) -> String {
        format!("Deleted topic '{}' (id {}).", self.name, self.topic_id)
    }
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct AlteredConfigs {
    pub topic: String,
    pub set: BTreeMap<String, String>,
    pub deleted: Vec<String>,
    pub validate_only: bool,
}

impl View for AlteredConfigs {
    fn table(&self) -> String {
        let verb = if self.validate_only { "Would update" } else { "Updated" };
        let mut parts: Vec<String> = Vec::new();
        if !self.set.is_empty() {
            let set: Vec<String> = self.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.push(format!("set {}", set.join(", ")));
        }
        if !self.deleted.is_empty() {
            parts.push(format!("removed {}", self.deleted.join(", ")));
        }
        format!("{verb} configs of topic '{}': {}.", self.topic, parts.join("; "))
    }
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct AddedPartitions {
    pub topic: String,
    pub partitions: i32,
    pub validate_only: bool,
}

impl View for AddedPartitions {
    fn table(&self) -> String {
        let verb = if self.validate_only { "would have" } else { "now has" };
        format!("Topic '{}' {verb} {} partitions.", self.topic, self.partitions)
    }
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ClusterDescription {
    pub cluster_id: String,
    pub active_controller_id: Option<u64>,
    pub raft_term: u64,
    pub commit_index: u64,
    pub metadata_offset: u64,
    pub answering_node_id: u64,
    pub voters: Vec<Voter>,
    pub brokers: Vec<Broker>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Voter {
    pub id: u64,
    pub address: String,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Broker {
    pub id: i32,
    pub epoch: i64,
    pub endpoints: Vec<String>,
    pub rack: Option<String>,
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
}

impl From<&pb::DescribeClusterResponse> for ClusterDescription {
    fn from(r: &pb::DescribeClusterResponse) -> Self {
        ClusterDescription {
            cluster_id: r.cluster_id.clone(),
            active_controller_id: r.active_controller_id,
            raft_term: r.raft_term,
            commit_index: r.commit_index,
            metadata_offset: r.metadata_offset,
            answering_node_id: r.answering_node_id,
            voters: r
                .voters
                .iter()
                .map(|v| Voter { id: v.id, address: v.address.clone() })
                .collect(),
            brokers: r
                .brokers
                .iter()
                .map(|b| Broker {
                    id: b.id,
                    epoch: b.epoch,
                    endpoints: b
                        .endpoints
                        .iter()
                        .map(|e| format!("{}://{}:{}", e.name, e.host, e.port))
                        .collect(),
                    rack: b.rack.clone(),
                    fenced: b.fenced,
                    in_controlled_shutdown: b.in_controlled_shutdown,
                })
                .collect(),
        }
    }
}

impl View for ClusterDescription {
    fn table(&self) -> String {
        let voters: Vec<String> =
            self.voters.iter().map(|v| format!("{}@{}", v.id, v.address)).collect();
        let active = match self.active_controller_id {
            Some(id) => id.to_string(),
            None => "none (no leader elected)".into(),
        };
        let mut out = format!(
            "Cluster id:         {}\nActive controller:  {active}\nVoters:             {}\n\
             Raft term:          {}\nCommit index:       {}\nMetadata offset:    {}\n\
             Answered by node:   {}\n\n",
            self.cluster_id,
            voters.join(", "),
            self.raft_term,
            self.commit_index,
            self.metadata_offset,
            self.answering_node_id,
        );
        if self.brokers.is_empty() {
            out.push_str("No brokers registered.\n");
            return out;
        }
        let rows: Vec<Vec<String>> = self
            .brokers
            .iter()
            .map(|b| {
                let state = if b.fenced {
                    "fenced"
                } else if b.in_controlled_shutdown {
                    "shutting-down"
                } else {
                    "active"
                };
                vec![
                    b.id.to_string(),
                    b.epoch.to_string(),
                    state.to_string(),
                    opt(b.rack.as_deref()),
                    b.endpoints.join(","),
                ]
            })
            .collect();
        out.push_str(&table(&["BROKER", "EPOCH", "STATE", "RACK", "ENDPOINTS"], &rows));
        out
    }
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Elections {
    pub partitions: Vec<Election>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Election {
    pub topic: String,
    pub partition: i32,
    pub leader: Option<i32>,
    /// `elected`, `not-needed` or `failed`.
    pub result: &'static str,
    pub error: Option<String>,
}

impl Elections {
    /// Partitions that wanted an election and got none.
    pub fn failed(&self) -> usize {
        self.partitions.iter().filter(|p| p.result == "failed").count()
    }
}

impl From<&pb::ElectLeadersResponse> for Elections {
    fn from(r: &pb::ElectLeadersResponse) -> Self {
        Elections {
            partitions: r
                .partitions
                .iter()
                .map(|p| {
                    let result = match &p.error {
                        None => "elected",
                        // The proto's code for "the partition already has that leader".
                        Some(e) if e.code == tonic::Code::AlreadyExists as i32 => "not-needed",
                        Some(_) => "failed",
                    };
                    Election {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        leader: p.leader,
                        result,
                        error: p.error.as_ref().map(|e| e.message.clone()),
                    }
                })
                .collect(),
        }
    }
}

impl View for Elections {
    fn table(&self) -> String {
        if self.partitions.is_empty() {
            return "No partition needed an election.".into();
        }
        let rows: Vec<Vec<String>> = self
            .partitions
            .iter()
            .map(|p| {
                let result = match &p.error {
                    Some(e) if p.result == "failed" => format!("failed: {e}"),
                    _ => p.result.to_string(),
                };
                vec![p.topic.clone(), p.partition.to_string(), opt(p.leader), result]
            })
            .collect();
        table(&["TOPIC", "PARTITION", "LEADER", "RESULT"], &rows)
    }
}

// ---- consumer groups ----

/// `strom group list`: the answer as it comes.
impl View for pb::ListGroupsResponse {
    fn table(&self) -> String {
        if self.groups.is_empty() {
            return "No consumer groups.".into();
        }
        let rows: Vec<Vec<String>> = self
            .groups
            .iter()
            .map(|g| {
                let kind = if g.protocol_type.is_empty() { "-" } else { g.protocol_type.as_str() };
                vec![
                    g.group_id.clone(),
                    g.state.clone(),
                    kind.to_owned(),
                    g.coordinator_id.to_string(),
                ]
            })
            .collect();
        table(&["GROUP", "STATE", "PROTOCOL-TYPE", "COORDINATOR"], &rows)
    }
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct GroupDescriptions {
    pub groups: Vec<GroupDescription>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub coordinator_id: i32,
    pub members: Vec<GroupMember>,
    pub partitions: Vec<GroupPartition>,
    /// Total lag over the partitions whose lag is known.
    pub total_lag: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    pub assignment: BTreeMap<String, Vec<i32>>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct GroupPartition {
    pub topic: String,
    pub partition: i32,
    /// `None`: nothing committed.
    pub committed_offset: Option<i64>,
    /// `None`: unknown.
    pub log_end_offset: Option<i64>,
    /// `None`: unknown.
    pub lag: Option<i64>,
    pub member_id: Option<String>,
}

impl GroupDescription {
    /// A Dead group with nothing committed: no such group.
    pub fn is_missing(&self) -> bool {
        self.error.is_none()
            && self.state == "Dead"
            && self.members.is_empty()
            && self.partitions.is_empty()
    }
}

impl From<&pb::DescribeGroupsResponse> for GroupDescriptions {
    fn from(r: &pb::DescribeGroupsResponse) -> Self {
        let known = |v: i64| (v >= 0).then_some(v);
        GroupDescriptions {
            groups: r
                .groups
                .iter()
                .map(|g| GroupDescription {
                    group_id: g.group_id.clone(),
                    state: g.state.clone(),
                    protocol_type: g.protocol_type.clone(),
                    protocol: g.protocol.clone(),
                    coordinator_id: g.coordinator_id,
                    members: g
                        .members
                        .iter()
                        .map(|m| GroupMember {
                            member_id: m.member_id.clone(),
                            group_instance_id: m.group_instance_id.clone(),
                            client_id: m.client_id.clone(),
                            host: m.client_host.clone(),
                            assignment: m
                                .assignment
                                .iter()
                                .map(|tp| (tp.topic.clone(), tp.partitions.clone()))
                                .collect(),
                        })
                        .collect(),
                    partitions: g
                        .partitions
                        .iter()
                        .map(|p| GroupPartition {
                            topic: p.topic.clone(),
                            partition: p.partition,
                            committed_offset: known(p.committed_offset),
                            log_end_offset: known(p.log_end_offset),
                            lag: known(p.lag),
                            member_id: p.member_id.clone(),
                        })
                        .collect(),
                    total_lag: g.partitions.iter().filter(|p| p.lag > 0).map(|p| p.lag).sum(),
                    error: g.error.as_ref().map(|e| e.message.clone()),
                })
                .collect(),
        }
    }
}

impl View for GroupDescriptions {
    fn table(&self) -> String {
        let dash = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
        let mut out = String::new();
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            if let Some(e) = &g.error {
                out.push_str(&format!("Group '{}': {e}\n", g.group_id));
                continue;
            }
            if g.is_missing() {
                out.push_str(&format!("Group '{}' does not exist.\n", g.group_id));
                continue;
            }
            let protocol = if g.protocol.is_empty() { "-" } else { g.protocol.as_str() };
            out.push_str(&format!(
                "Group '{}' is {} (protocol {protocol}, coordinator {}), {} member(s), total lag {}.\n",
                g.group_id,
                g.state,
                g.coordinator_id,
                g.members.len(),
                g.total_lag
            ));
            if g.partitions.is_empty() {
                out.push_str("No committed offsets or assigned partitions.\n");
            } else {
                let member = |id: &Option<String>| {
                    id.as_ref().and_then(|id| g.members.iter().find(|m| &m.member_id == id))
                };
                let rows: Vec<Vec<String>> = g
                    .partitions
                    .iter()
                    .map(|p| {
                        let m = member(&p.member_id);
                        vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            dash(p.committed_offset),
                            dash(p.log_end_offset),
                            dash(p.lag),
                            m.map_or("-".to_owned(), |m| m.member_id.clone()),
                            m.map_or("-".to_owned(), |m| m.host.clone()),
                            m.map_or("-".to_owned(), |m| m.client_id.clone()),
                        ]
                    })
                    .collect();
                out.push_str(&table(
                    &[
                        "TOPIC",
                        "PARTITION",
                        "CURRENT-OFFSET",
                        "LOG-END-OFFSET",
                        "LAG",
                        "CONSUMER-ID",
                        "HOST",
                        "CLIENT-ID",
                    ],
                    &rows,
                ));
            }
        }
        out
    }
}

// ---- transactions and producers ----

/// `strom txn list`: the answer as it comes.
impl View for pb::ListTransactionsResponse {
    fn table(&self) -> String {
        if self.transactions.is_empty() {
            return "No transactions.".into();
        }
        let rows: Vec<Vec<String>> = self
            .transactions
            .iter()
            .map(|t| {
                vec![
                    t.transactional_id.clone(),
                    t.state.clone(),
                    t.producer_id.to_string(),
                    t.coordinator_id.to_string(),
                ]
            })
            .collect();
        table(&["TRANSACTIONAL-ID", "STATE", "PRODUCER-ID", "COORDINATOR"], &rows)
    }
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct TransactionDescriptions {
    pub transactions: Vec<TransactionDescription>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct TransactionDescription {
    pub transactional_id: String,
    pub state: String,
    pub producer_id: i64,
    pub producer_epoch: i32,
    pub coordinator_id: i32,
    pub timeout_ms: i32,
    /// `None`: no transaction in progress.
    pub start_time_ms: Option<i64>,
    /// The partitions the transaction has written to, by topic.
    pub partitions: BTreeMap<String, Vec<i32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a transactional id was not described, as one sentence that names it.
pub fn txn_error(t: &pb::TransactionDescription) -> Option<String> {
    let e = t.error.as_ref()?;
    Some(if e.code == tonic::Code::NotFound as i32 {
        e.message.clone()
    } else {
        format!("transactional id '{}': {}", t.transactional_id, e.message)
    })
}

impl From<&pb::DescribeTransactionsResponse> for TransactionDescriptions {
    fn from(r: &pb::DescribeTransactionsResponse) -> Self {
        TransactionDescriptions {
            transactions: r
                .transactions
                .iter()
                .map(|t| TransactionDescription {
                    transactional_id: t.transactional_id.clone(),
                    state: t.state.clone(),
                    producer_id: t.producer_id,
                    producer_epoch: t.producer_epoch,
                    coordinator_id: t.coordinator_id,
                    timeout_ms: t.timeout_ms,
                    start_time_ms: (t.start_time_ms >= 0).then_some(t.start_time_ms),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|tp| (tp.topic.clone(), tp.partitions.clone()))
                        .collect(),
                    error: txn_error(t),
                })
                .collect(),
        }
    }
}

impl View for TransactionDescriptions {
    fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .transactions
            .iter()
            .filter(|t| t.error.is_none())
            .map(|t| {
                let partitions: Vec<String> = t
                    .partitions
                    .iter()
                    .flat_map(|(topic, ps)| ps.iter().map(move |p| format!("{topic}-{p}")))
                    .collect();
                vec![
                    t.transactional_id.clone(),
                    t.state.clone(),
                    t.producer_id.to_string(),
                    t.producer_epoch.to_string(),
                    t.coordinator_id.to_string(),
                    t.timeout_ms.to_string(),
                    opt(t.start_time_ms),
                    if partitions.is_empty() { "-".into() } else { partitions.join(",") },
                ]
            })
            .collect();
        let mut out = String::new();
        if !rows.is_empty() {
            out.push_str(&table(
                &[
                    "TRANSACTIONAL-ID",
                    "STATE",
                    "PRODUCER-ID",
                    "EPOCH",
                    "COORDINATOR",
                    "TIMEOUT-MS",
                    "START-TIME-MS",
                    "PARTITIONS",
                ],
                &rows,
            ));
        }
        for e in self.transactions.iter().filter_map(|t| t.error.as_ref()) {
            out.push_str(&format!("{e}.\n"));
        }
        out
    }
}

impl View for pb::DeleteRecordsResponse {
    fn table(&self) -> String {
        format!(
            "Deleted the records of partition {} of topic '{}' below offset {} (leader {}).",
            self.partition, self.topic, self.low_watermark, self.leader_id
        )
    }
}

/// `strom cluster log-dirs`: one row per partition replica, as Kafka's `kafka-log-dirs`.
impl View for pb::DescribeLogDirsResponse {
    fn table(&self) -> String {
        if self.log_dirs.is_empty() {
            return "No log directories.".into();
        }
        let dirs: Vec<Vec<String>> = self
            .log_dirs
            .iter()
            .map(|d| {
                let bytes = |b: i64| if b < 0 { "-".to_owned() } else { b.to_string() };
                vec![
                    d.broker_id.to_string(),
                    d.path.clone(),
                    d.error.clone().unwrap_or_else(|| "-".into()),
                    bytes(d.total_bytes),
                    bytes(d.usable_bytes),
                    d.partitions.len().to_string(),
                ]
            })
            .collect();
        let mut out = table(
            &["BROKER", "LOG-DIR", "ERROR", "TOTAL-BYTES", "USABLE-BYTES", "PARTITIONS"],
            &dirs,
        );
        let replicas: Vec<Vec<String>> = self
            .log_dirs
            .iter()
            .flat_map(|d| {
                d.partitions.iter().map(|p| {
                    vec![
                        d.broker_id.to_string(),
                        p.topic.clone(),
                        p.partition.to_string(),
                        p.size_bytes.to_string(),
                        p.offset_lag.to_string(),
                    ]
                })
            })
            .collect();
        if !replicas.is_empty() {
            out.push('\n');
            out.push_str(&table(
                &["BROKER", "TOPIC", "PARTITION", "SIZE-BYTES", "OFFSET-LAG"],
                &replicas,
            ));
        }
        out
    }
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Producers {
    pub topic: String,
    pub partition: i32,
    pub leader_id: i32,
    pub producers: Vec<Producer>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Producer {
    pub producer_id: i64,
    pub producer_epoch: i32,
    /// `None`: no sequence yet.
    pub last_sequence: Option<i32>,
    /// `None`: unknown.
    pub last_timestamp_ms: Option<i64>,
    /// `None`: never in a transaction.
    pub coordinator_epoch: Option<i32>,
    /// The first offset of its open transaction; `None`: none open.
    pub current_txn_start_offset: Option<i64>,
}

impl From<&pb::DescribeProducersResponse> for Producers {
    fn from(r: &pb::DescribeProducersResponse) -> Self {
        Producers {
            topic: r.topic.clone(),
            partition: r.partition,
            leader_id: r.leader_id,
            producers: r
                .producers
                .iter()
                .map(|p| Producer {
                    producer_id: p.producer_id,
                    producer_epoch: p.producer_epoch,
                    last_sequence: (p.last_sequence >= 0).then_some(p.last_sequence),
                    last_timestamp_ms: (p.last_timestamp_ms >= 0).then_some(p.last_timestamp_ms),
                    coordinator_epoch: (p.coordinator_epoch >= 0).then_some(p.coordinator_epoch),
                    current_txn_start_offset: (p.current_txn_start_offset >= 0)
                        .then_some(p.current_txn_start_offset),
                })
                .collect(),
        }
    }
}

impl View for Producers {
    fn table(&self) -> String {
        let what = format!(
            "Partition {} of topic '{}' (leader {})",
            self.partition, self.topic, self.leader_id
        );
        if self.producers.is_empty() {
            return format!("{what} has no active producers.");
        }
        let mut out = format!("{what}: {} active producer(s).\n", self.producers.len());
        let rows: Vec<Vec<String>> = self
            .producers
            .iter()
            .map(|p| {
                vec![
                    p.producer_id.to_string(),
                    p.producer_epoch.to_string(),
                    opt(p.last_sequence),
                    opt(p.last_timestamp_ms),
                    opt(p.coordinator_epoch),
                    opt(p.current_txn_start_offset),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "PRODUCER-ID",
                "EPOCH",
                "LAST-SEQUENCE",
                "LAST-TIMESTAMP-MS",
                "COORDINATOR-EPOCH",
                "TXN-START-OFFSET",
            ],
            &rows,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing() -> pb::ListTopicsResponse {
        pb::ListTopicsResponse {
            topics: vec![
                pb::TopicListing {
                    name: "__consumer_offsets".into(),
                    topic_id: "00ff".into(),
                    partitions: 50,
                    replication_factor: 3,
                    internal: true,
                },
                pb::TopicListing {
                    name: "orders".into(),
                    topic_id: "0a0b".into(),
                    partitions: 3,
                    replication_factor: 1,
                    internal: false,
                },
            ],
        }
    }

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let t =
            table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["".into(), "".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n\n");
    }

    #[test]
    fn topic_list_as_table() {
        let text = render(&listing(), Output::Table);
        assert_eq!(
            text,
            "TOPIC                          PARTITIONS  REPLICATION-FACTOR  TOPIC-ID\n\
             __consumer_offsets (internal)  50          3                   00ff\n\
             orders                         3           1                   0a0b\n"
        );
        assert_eq!(
            render(&pb::ListTopicsResponse { topics: vec![] }, Output::Table),
            "No topics.\n"
        );
    }

    #[test]
    fn topic_list_as_json() {
        let text = render(&listing(), Output::Json);
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["topics"][1]["name"], "orders");
        assert_eq!(value["topics"][1]["partitions"], 3);
        assert_eq!(value["topics"][0]["internal"], true);
    }

    fn description() -> TopicDescription {
        let topic = pb::TopicDescription {
            name: "orders".into(),
            topic_id: "0a0b".into(),
            internal: false,
            partitions: vec![
                pb::PartitionDescription {
                    partition: 0,
                    leader: Some(1),
                    leader_epoch: 4,
                    partition_epoch: 5,
                    replicas: vec![1, 2],
                    isr: vec![1, 2],
                    offline_replicas: vec![],
                },
                pb::PartitionDescription {
                    partition: 1,
                    leader: None,
                    leader_epoch: 7,
                    partition_epoch: 9,
                    replicas: vec![2, 3],
                    isr: vec![],
                    offline_replicas: vec![2, 3],
                },
            ],
        };
        let entry = |name: &str, value: &str, source: pb::ConfigSource| pb::ConfigEntry {
            name: name.into(),
            value: value.into(),
            source: source as i32,
            ..Default::default()
        };
        let configs = pb::DescribeConfigsResponse {
            topic: "orders".into(),
            entries: vec![
                entry("cleanup.policy", "delete", pb::ConfigSource::Default),
                entry("retention.ms", "1000", pb::ConfigSource::TopicOverride),
                entry("segment.bytes", "4096", pb::ConfigSource::StaticBrokerDefault),
            ],
        };
        TopicDescription::new(&topic, &configs)
    }

    #[test]
    fn topic_description_as_table() {
        let text = render(&description(), Output::Table);
        assert_eq!(
            text,
            "Topic: orders\nTopic id: 0a0b\nPartitions: 2\nReplication factor: 2\n\
             Configs: retention.ms=1000, segment.bytes=4096 (broker default)\n\n\
             PARTITION  LEADER  LEADER-EPOCH  REPLICAS  ISR  OFFLINE\n\
             0          1       4             1,2       1,2  -\n\
             1          -       7             2,3       -    2,3\n"
        );
    }

    #[test]
    fn topic_description_as_json_has_every_config_and_its_source() {
        let value: serde_json::Value =
            serde_json::from_str(&render(&description(), Output::Json)).expect("valid JSON");
        assert_eq!(value["partitions"][0]["leader"], 1);
        assert_eq!(value["partitions"][1]["leader"], serde_json::Value::Null);
        assert_eq!(value["partitions"][0]["replicas"], serde_json::json!([1, 2]));
        assert_eq!(value["configs"][0]["source"], "default");
        assert_eq!(value["configs"][1]["source"], "override");
        assert_eq!(value["configs"][2]["source"], "static-broker-default");
    }

    fn cluster() -> pb::DescribeClusterResponse {
        pb::DescribeClusterResponse {
            cluster_id: "abc".into(),
            voters: vec![
                pb::Voter { id: 1, address: "127.0.0.1:9093".into() },
                pb::Voter { id: 2, address: "127.0.0.1:19093".into() },
            ],
            active_controller_id: Some(2),
            raft_term: 3,
            commit_index: 42,
            metadata_offset: 41,
            brokers: vec![
                pb::Broker {
                    id: 1,
                    epoch: 10,
                    endpoints: vec![pb::Endpoint {
                        name: "PLAINTEXT".into(),
                        host: "127.0.0.1".into(),
                        port: 9092,
                    }],
                    rack: Some("r1".into()),
                    fenced: false,
                    in_controlled_shutdown: false,
                },
                pb::Broker {
                    id: 2,
                    epoch: 12,
                    endpoints: vec![],
                    rack: None,
                    fenced: true,
                    in_controlled_shutdown: false,
                },
            ],
            answering_node_id: 1,
        }
    }

    #[test]
    fn cluster_description_as_table() {
        let text = render(&ClusterDescription::from(&cluster()), Output::Table);
        assert_eq!(
            text,
            "Cluster id:         abc\nActive controller:  2\n\
             Voters:             1@127.0.0.1:9093, 2@127.0.0.1:19093\n\
             Raft term:          3\nCommit index:       42\nMetadata offset:    41\n\
             Answered by node:   1\n\n\
             BROKER  EPOCH  STATE   RACK  ENDPOINTS\n\
             1       10     active  r1    PLAINTEXT://127.0.0.1:9092\n\
             2       12     fenced  -\n"
        );
    }

    #[test]
    fn cluster_description_as_json() {
        let value: serde_json::Value =
            serde_json::from_str(&render(&ClusterDescription::from(&cluster()), Output::Json))
                .expect("valid JSON");
        assert_eq!(value["active_controller_id"], 2);
        assert_eq!(value["raft_term"], 3);
        assert_eq!(value["commit_index"], 42);
        assert_eq!(value["voters"][1]["address"], "127.0.0.1:19093");
        assert_eq!(value["brokers"][1]["fenced"], true);
        assert_eq!(value["brokers"][0]["endpoints"][0], "PLAINTEXT://127.0.0.1:9092");
    }

    #[test]
    fn write_results_as_sentences_and_json() {
        let created = CreatedTopic {
            name: "orders".into(),
            topic_id: "0a".into(),
            partitions: 3,
            replication_factor: 1,
            validate_only: false,
        };
        assert_eq!(
            render(&created, Output::Table),
            "Created topic 'orders' with 3 partition(s), replication factor 1 (id 0a).\n"
        );
        let altered = AlteredConfigs {
            topic: "orders".into(),
            set: BTreeMap::from([("retention.ms".into(), "5".into())]),
            deleted: vec!["cleanup.policy".into()],
            validate_only: true,
        };
        assert_eq!(
            render(&altered, Output::Table),
            "Would update configs of topic 'orders': set retention.ms=5; removed cleanup.policy.\n"
        );
        let value: serde_json::Value =
            serde_json::from_str(&render(&altered, Output::Json)).expect("valid JSON");
        assert_eq!(value["set"], serde_json::json!({"retention.ms": "5"}));
        let added = AddedPartitions { topic: "orders".into(), partitions: 5, validate_only: false };
        assert_eq!(render(&added, Output::Table), "Topic 'orders' now has 5 partitions.\n");
    }

    #[test]
    fn elections_tell_elected_not_needed_and_failed_apart() {
        let item = |partition, leader, error: Option<(tonic::Code, &str)>| pb::PartitionElection {
            topic: "orders".into(),
            partition,
            leader,
            error: error.map(|(code, message)| pb::ItemError {
                code: code as i32,
                message: message.into(),
            }),
        };
        let answer = pb::ElectLeadersResponse {
            partitions: vec![
                item(0, Some(1), None),
                item(1, Some(2), Some((tonic::Code::AlreadyExists, "already led"))),
                item(2, None, Some((tonic::Code::FailedPrecondition, "not live"))),
            ],
        };
        let view = Elections::from(&answer);
        assert_eq!(view.failed(), 1);
        assert_eq!(
            render(&view, Output::Table),
            "TOPIC   PARTITION  LEADER  RESULT\n\
             orders  0          1       elected\n\
             orders  1          2       not-needed\n\
             orders  2          -       failed: not live\n"
        );
        let value: serde_json::Value =
            serde_json::from_str(&render(&view, Output::Json)).expect("valid JSON");
        assert_eq!(value["partitions"][0]["leader"], 1);
        assert_eq!(value["partitions"][2]["result"], "failed");
        assert_eq!(
            render(&Elections { partitions: vec![] }, Output::Table),
            "No partition needed an election.\n"
        );
    }

    #[test]
    fn group_descriptions_show_lag_per_partition_and_dashes_for_unknowns() {
        let answer = pb::DescribeGroupsResponse {
            groups: vec![pb::GroupDescription {
                group_id: "g".into(),
                state: "Stable".into(),
                protocol_type: "consumer".into(),
                protocol: "range".into(),
                coordinator_id: 2,
                members: vec![pb::GroupMember {
                    member_id: "m-1".into(),
                    group_instance_id: None,
                    client_id: "app".into(),
                    client_host: "/127.0.0.1".into(),
                    assignment: vec![pb::TopicPartitions {
                        topic: "t".into(),
                        partitions: vec![0],
                    }],
                }],
                partitions: vec![
                    pb::GroupPartition {
                        topic: "t".into(),
                        partition: 0,
                        committed_offset: 5,
                        log_end_offset: 9,
                        lag: 4,
                        member_id: Some("m-1".into()),
                    },
                    pb::GroupPartition {
                        topic: "t".into(),
                        partition: 1,
                        committed_offset: -1,
                        log_end_offset: 3,
                        lag: -1,
                        member_id: None,
                    },
                ],
                error: None,
            }],
        };
        let text = render(&GroupDescriptions::from(&answer), Output::Table);
        expect_test::expect![[r#"
            Group 'g' is Stable (protocol range, coordinator 2), 1 member(s), total lag 4.
            TOPIC  PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  CONSUMER-ID  HOST        CLIENT-ID
            t      0          5               9               4    m-1          /127.0.0.1  app
            t      1          -               3               -    -            -           -
        "#]]
        .assert_eq(&text);
        let json = render(&GroupDescriptions::from(&answer), Output::Json);
        assert!(json.contains("\"total_lag\": 4"), "{json}");
    }

    #[test]
    fn transaction_list_as_table_and_json() {
        let answer = pb::ListTransactionsResponse {
            transactions: vec![
                pb::TransactionListing {
                    transactional_id: "orders-tx".into(),
                    producer_id: 4000,
                    state: "Ongoing".into(),
                    coordinator_id: 2,
                },
                pb::TransactionListing {
                    transactional_id: "payments-tx".into(),
                    producer_id: 4001,
                    state: "CompleteCommit".into(),
                    coordinator_id: 1,
                },
            ],
            unreachable: vec![],
        };
        expect_test::expect![[r#"
            TRANSACTIONAL-ID  STATE           PRODUCER-ID  COORDINATOR
            orders-tx         Ongoing         4000         2
            payments-tx       CompleteCommit  4001         1
        "#]]
        .assert_eq(&render(&answer, Output::Table));
        let value: serde_json::Value =
            serde_json::from_str(&render(&answer, Output::Json)).expect("valid JSON");
        assert_eq!(value["transactions"][0]["transactional_id"], "orders-tx");
        assert_eq!(value["transactions"][1]["producer_id"], 4001);
        assert_eq!(
            render(&pb::ListTransactionsResponse::default(), Output::Table),
            "No transactions.\n"
        );
    }

    #[test]
    fn transaction_descriptions_list_partitions_and_name_the_ids_that_failed() {
        let answer = pb::DescribeTransactionsResponse {
            transactions: vec![
                pb::TransactionDescription {
                    transactional_id: "orders-tx".into(),
                    state: "Ongoing".into(),
                    producer_id: 4000,
                    producer_epoch: 3,
                    timeout_ms: 60_000,
                    start_time_ms: 1_700_000_000_000,
                    coordinator_id: 2,
                    partitions: vec![
                        pb::TopicPartitions { topic: "orders".into(), partitions: vec![0, 1] },
                        pb::TopicPartitions { topic: "audit".into(), partitions: vec![4] },
                    ],
                    error: None,
                },
                pb::TransactionDescription {
                    transactional_id: "idle-tx".into(),
                    state: "CompleteCommit".into(),
                    producer_id: 4001,
                    timeout_ms: 60_000,
                    start_time_ms: -1,
                    coordinator_id: 1,
                    ..Default::default()
                },
                pb::TransactionDescription {
                    transactional_id: "gone".into(),
                    start_time_ms: -1,
                    error: Some(pb::ItemError {
                        code: tonic::Code::NotFound as i32,
                        message: "transactional id 'gone' does not exist".into(),
                    }),
                    ..Default::default()
                },
                pb::TransactionDescription {
                    transactional_id: "far".into(),
                    start_time_ms: -1,
                    error: Some(pb::ItemError {
                        code: tonic::Code::Unavailable as i32,
                        message: "DescribeTransactions to broker 3: NotCoordinator (16)".into(),
                    }),
                    ..Default::default()
                },
            ],
        };
        let view = TransactionDescriptions::from(&answer);
        expect_test::expect![[r#"
            TRANSACTIONAL-ID  STATE           PRODUCER-ID  EPOCH  COORDINATOR  TIMEOUT-MS  START-TIME-MS  PARTITIONS
            orders-tx         Ongoing         4000         3      2            60000       1700000000000  audit-4,orders-0,orders-1
            idle-tx           CompleteCommit  4001         0      1            60000       -              -
            transactional id 'gone' does not exist.
            transactional id 'far': DescribeTransactions to broker 3: NotCoordinator (16).
        "#]]
        .assert_eq(&render(&view, Output::Table));
        let value: serde_json::Value =
            serde_json::from_str(&render(&view, Output::Json)).expect("valid JSON");
        let orders = &value["transactions"][0];
        assert_eq!(orders["partitions"], serde_json::json!({"audit": [4], "orders": [0, 1]}));
        assert_eq!(orders["start_time_ms"], 1_700_000_000_000i64);
        assert!(orders.get("error").is_none(), "{orders}");
        assert_eq!(value["transactions"][1]["start_time_ms"], serde_json::Value::Null);
        assert_eq!(value["transactions"][2]["error"], "transactional id 'gone' does not exist");
    }

    #[test]
    fn producers_show_dashes_for_what_a_producer_has_not_done() {
        let answer = pb::DescribeProducersResponse {
            topic: "orders".into(),
            partition: 0,
            leader_id: 1,
            producers: vec![
                pb::ProducerState {
                    producer_id: 1000,
                    producer_epoch: 0,
                    last_sequence: 99,
                    last_timestamp_ms: 1_700_000_000_123,
                    coordinator_epoch: -1,
                    current_txn_start_offset: -1,
                },
                pb::ProducerState {
                    producer_id: 2000,
                    producer_epoch: 4,
                    last_sequence: 9,
                    last_timestamp_ms: 1_700_000_000_456,
                    coordinator_epoch: 0,
                    current_txn_start_offset: 120,
                },
            ],
        };
        let view = Producers::from(&answer);
        expect_test::expect![[r#"
            Partition 0 of topic 'orders' (leader 1): 2 active producer(s).
            PRODUCER-ID  EPOCH  LAST-SEQUENCE  LAST-TIMESTAMP-MS  COORDINATOR-EPOCH  TXN-START-OFFSET
            1000         0      99             1700000000123      -                  -
            2000         4      9              1700000000456      0                  120
        "#]]
        .assert_eq(&render(&view, Output::Table));
        let value: serde_json::Value =
            serde_json::from_str(&render(&view, Output::Json)).expect("valid JSON");
        assert_eq!(value["leader_id"], 1);
        assert_eq!(value["producers"][0]["last_sequence"], 99);
        assert_eq!(value["producers"][0]["current_txn_start_offset"], serde_json::Value::Null);
        assert_eq!(value["producers"][1]["current_txn_start_offset"], 120);
        let empty = Producers { producers: vec![], ..view };
        assert_eq!(
            render(&empty, Output::Table),
            "Partition 0 of topic 'orders' (leader 1) has no active producers.\n"
        );
    }
}
