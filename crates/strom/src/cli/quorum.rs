//! What `strom cluster describe` shows of the metadata quorum (voters and observers with their
//! log end offset, lag and last fetch, as Kafka's `kafka-metadata-quorum describe
//! --replication`), and what `strom cluster add-voter` / `remove-voter` print. Pure: the time
//! "ago" is measured from a `now` the caller reads.

use serde::Serialize;
use strom_proto::admin as pb;

use super::render::{table, ClusterDescription, View};

/// One replica of the metadata log.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Replica {
    pub node_id: u64,
    /// As Kafka prints a Uuid; `None`: not known (a static voter that has not said it yet,
    /// or a broker).
    pub directory_id: Option<String>,
    /// Its control (gRPC) address; `None` for a broker.
    pub address: Option<String>,
    /// "controller" or "broker".
    pub kind: String,
    pub log_end_offset: Option<i64>,
    /// Entries behind the leader's log end offset.
    pub lag: Option<u64>,
    pub last_fetch_timestamp_ms: Option<i64>,
    pub last_caught_up_timestamp_ms: Option<i64>,
    #[serde(skip)]
    now_ms: i64,
}

/// The metadata quorum as the active controller sees it.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Quorum {
    pub leader_id: u64,
    pub term: u64,
    pub high_watermark: u64,
    pub log_end_offset: u64,
    /// A voter change is half done (raft's joint consensus).
    pub joint: bool,
    pub voters: Vec<Replica>,
    pub observers: Vec<Replica>,
}

impl Quorum {
    /// `now_ms`: the wall clock, for "… ago" in the table.
    pub fn from_pb(r: &pb::DescribeQuorumResponse, now_ms: i64) -> Quorum {
        let replica = |r: &pb::QuorumReplica| Replica {
            node_id: r.node_id,
            directory_id: Some(r.directory_id.clone()).filter(|d| !d.is_empty()),
            address: Some(r.address.clone()).filter(|a| !a.is_empty()),
            kind: r.kind.clone(),
            log_end_offset: r.log_end_offset,
            lag: r.lag,
            last_fetch_timestamp_ms: r.last_fetch_timestamp_ms,
            last_caught_up_timestamp_ms: r.last_caught_up_timestamp_ms,
            now_ms,
        };
        Quorum {
            leader_id: r.leader_id,
            term: r.term,
            high_watermark: r.high_watermark,
            log_end_offset: r.log_end_offset,
            joint: r.joint,
            voters: r.voters.iter().map(replica).collect(),
            observers: r.observers.iter().map(replica).collect(),
        }
    }

    fn voter_ids(&self) -> String {
        self.voters.iter().map(|v| v.node_id.to_string()).collect::<Vec<_>>().join(", ")
    }
}

fn ago(now_ms: i64, at: Option<i64>) -> String {
    match at {
        Some(at) => format!("{} ms ago", (now_ms - at).max(0)),
        None => "never".into(),
    }
}

fn rows(replicas: &[Replica], leader: Option<u64>) -> Vec<Vec<String>> {
    replicas
        .iter()
        .map(|r| {
            let id = if Some(r.node_id) == leader {
                format!("{} (leader)", r.node_id)
            } else {
                r.node_id.to_string()
            };
            vec![
                id,
                r.kind.clone(),
                r.directory_id.clone().unwrap_or_else(|| "-".into()),
                r.address.clone().unwrap_or_else(|| "-".into()),
                r.log_end_offset.map_or_else(|| "-".into(), |o| o.to_string()),
                r.lag.map_or_else(|| "-".into(), |l| l.to_string()),
                ago(r.now_ms, r.last_fetch_timestamp_ms),
                ago(r.now_ms, r.last_caught_up_timestamp_ms),
            ]
        })
        .collect()
}

const HEADERS: [&str; 8] =
    ["NODE", "KIND", "DIRECTORY ID", "ADDRESS", "LOG END", "LAG", "LAST FETCH", "LAST CAUGHT UP"];

impl View for Quorum {
    fn table(&self) -> String {
        let mut out = format!(
            "Metadata quorum:    leader {}, term {}, high watermark {}, log end offset {}{}\n\n",
            self.leader_id,
            self.term,
            self.high_watermark,
            self.log_end_offset,
            if self.joint { " (a voter change is in progress)" } else { "" }
        );
        let mut headers = HEADERS;
        headers[0] = "VOTER";
        out.push_str(&table(&headers, &rows(&self.voters, Some(self.leader_id))));
        if self.observers.is_empty() {
            out.push_str("No observers.\n");
        } else {
            out.push('\n');
            headers[0] = "OBSERVER";
            out.push_str(&table(&headers, &rows(&self.observers, None)));
        }
        out
    }
}

/// `strom cluster describe`: the cluster as the answering node sees it, then the quorum as the
/// active controller sees it (or why it could not be described: no quorum, an older server).
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ClusterAndQuorum {
    #[serde(flatten)]
    pub cluster: ClusterDescription,
    pub quorum: Option<Quorum>,
    pub quorum_error: Option<String>,
}

impl View for ClusterAndQuorum {
    fn table(&self) -> String {
        let cluster = self.cluster.table();
        // The quorum goes after the cluster's header lines, before the brokers.
        let (head, brokers) = cluster.split_once("\n\n").unwrap_or((&cluster, ""));
        let quorum = match (&self.quorum, &self.quorum_error) {
            (Some(quorum), _) => quorum.table(),
            (None, Some(error)) => format!("Metadata quorum:    {error}\n"),
            (None, None) => String::new(),
        };
        format!("{head}\n\n{quorum}\n{brokers}")
    }
}

/// What add-voter and remove-voter print: the change, then the quorum after it.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct VoterChange {
    /// "added" or "removed".
    pub change: &'static str,
    pub node_id: u64,
    pub quorum: Quorum,
}

impl View for VoterChange {
    fn table(&self) -> String {
        let directory = self
            .quorum
            .voters
            .iter()
            .find(|v| v.node_id == self.node_id)
            .and_then(|v| v.directory_id.as_deref())
            .map(|d| format!(" (directory id {d})"))
            .unwrap_or_default();
        let what = match self.change {
            "added" => format!("Node {} is now a voter{directory}.", self.node_id),
            _ => format!("Node {} is no longer a voter.", self.node_id),
        };
        format!("{what} Voters: {}.\n", self.quorum.voter_ids())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::Output;
    use crate::cli::render::render;

    fn replica(node_id: u64, kind: &str, end: Option<i64>, lag: Option<u64>) -> pb::QuorumReplica {
        pb::QuorumReplica {
            node_id,
            directory_id: if kind == "controller" {
                format!("dir{node_id}")
            } else {
                String::new()
            },
            address: if kind == "controller" {
                format!("127.0.0.1:{node_id}")
            } else {
                String::new()
            },
            kind: kind.into(),
            log_end_offset: end,
            lag,
            last_fetch_timestamp_ms: end.map(|_| 9_990),
            last_caught_up_timestamp_ms: lag.filter(|l| *l == 0).map(|_| 9_990),
        }
    }

    fn quorum() -> pb::DescribeQuorumResponse {
        pb::DescribeQuorumResponse {
            leader_id: 1,
            term: 4,
            high_watermark: 42,
            log_end_offset: 42,
            voters: vec![
                replica(1, "controller", Some(42), Some(0)),
                replica(2, "controller", Some(40), Some(2)),
            ],
            observers: vec![
                replica(4, "controller", None, None),
                replica(7, "broker", Some(42), Some(0)),
            ],
            joint: false,
        }
    }

    #[test]
    fn the_quorum_as_a_table_shows_each_replicas_lag() {
        let text = render(&Quorum::from_pb(&quorum(), 10_000), Output::Table);
        assert_eq!(
            text,
            "Metadata quorum:    leader 1, term 4, high watermark 42, log end offset 42\n\n\
             VOTER       KIND        DIRECTORY ID  ADDRESS      LOG END  LAG  LAST FETCH  LAST CAUGHT UP\n\
             1 (leader)  controller  dir1          127.0.0.1:1  42       0    10 ms ago   10 ms ago\n\
             2           controller  dir2          127.0.0.1:2  40       2    10 ms ago   never\n\n\
             OBSERVER  KIND        DIRECTORY ID  ADDRESS      LOG END  LAG  LAST FETCH  LAST CAUGHT UP\n\
             4         controller  dir4          127.0.0.1:4  -        -    never       never\n\
             7         broker      -             -            42       0    10 ms ago   10 ms ago\n"
        );
    }

    #[test]
    fn the_quorum_as_json_keeps_offsets_lag_and_timestamps() {
        let value: serde_json::Value =
            serde_json::from_str(&render(&Quorum::from_pb(&quorum(), 10_000), Output::Json))
                .expect("valid JSON");
        assert_eq!(value["leader_id"], 1);
        assert_eq!(value["voters"][1]["lag"], 2);
        assert_eq!(value["voters"][1]["log_end_offset"], 40);
        assert_eq!(value["voters"][0]["directory_id"], "dir1");
        assert_eq!(value["observers"][0]["log_end_offset"], serde_json::Value::Null);
        assert_eq!(value["observers"][1]["kind"], "broker");
        assert_eq!(value["observers"][1]["last_fetch_timestamp_ms"], 9_990);
    }

    #[test]
    fn describe_puts_the_quorum_between_the_cluster_and_its_brokers() {
        let cluster = pb::DescribeClusterResponse {
            cluster_id: "abc".into(),
            voters: vec![pb::Voter { id: 1, address: "127.0.0.1:1".into() }],
            active_controller_id: Some(1),
            raft_term: 4,
            commit_index: 41,
            metadata_offset: 41,
            brokers: vec![],
            answering_node_id: 2,
        };
        let view = ClusterAndQuorum {
            cluster: ClusterDescription::from(&cluster),
            quorum: Some(Quorum::from_pb(&quorum(), 10_000)),
            quorum_error: None,
        };
        let text = render(&view, Output::Table);
        let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle} in {text}"));
        assert!(at("Cluster id:") < at("Metadata quorum:"));
        assert!(at("Metadata quorum:") < at("No brokers registered."));
        let value: serde_json::Value =
            serde_json::from_str(&render(&view, Output::Json)).expect("valid JSON");
        assert_eq!(value["cluster_id"], "abc", "the cluster's fields stay at the top");
        assert_eq!(value["quorum"]["voters"][1]["lag"], 2);
        assert_eq!(value["quorum_error"], serde_json::Value::Null);
        let failed = ClusterAndQuorum {
            cluster: ClusterDescription::from(&cluster),
            quorum: None,
            quorum_error: Some("no active controller".into()),
        };
        assert!(
            render(&failed, Output::Table).contains("Metadata quorum:    no active controller\n")
        );
    }

    #[test]
    fn voter_changes_say_what_changed_and_the_voters_after() {
        let added =
            VoterChange { change: "added", node_id: 2, quorum: Quorum::from_pb(&quorum(), 0) };
        assert_eq!(
            render(&added, Output::Table),
            "Node 2 is now a voter (directory id dir2). Voters: 1, 2.\n"
        );
        let mut after = quorum();
        after.voters.truncate(1);
        let removed =
            VoterChange { change: "removed", node_id: 2, quorum: Quorum::from_pb(&after, 0) };
        assert_eq!(render(&removed, Output::Table), "Node 2 is no longer a voter. Voters: 1.\n");
        let value: serde_json::Value =
            serde_json::from_str(&render(&removed, Output::Json)).expect("valid JSON");
        assert_eq!(
            (value["change"].as_str(), value["node_id"].as_u64()),
            (Some("removed"), Some(2))
        );
    }
}
