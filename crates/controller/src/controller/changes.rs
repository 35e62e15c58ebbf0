//! One INFO line per metadata change an operator follows (a broker registered, fenced,
//! unfenced or shutting down; a partition's leader or ISR changed; a topic created or deleted;
//! a config set or removed), logged by the active controller once the change has committed,
//! with the ids needed to follow it (target `strom_controller::changes`). A decision that
//! changes many things (a topic of 1,000 partitions, a broker's leaderships moving) logs its
//! first [`LINES_MAX`] changes and then one summary line; the rest are at DEBUG.

use strom_metadata::records::metadata_record::Record;
use strom_metadata::records::{ConfigResourceType, MetadataRecord};
use strom_metadata::{MetadataImage, TopicId};

/// Changes of one decision logged one per line at INFO.
pub(super) const LINES_MAX: usize = 32;

/// The changes of one decision, described against the image it was decided on.
pub(super) struct ChangeLog {
    lines: Vec<Change>,
}

enum Change {
    Broker {
        broker: i32,
        epoch: i64,
        what: &'static str,
    },
    Partition {
        topic: String,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        isr: String,
        replicas: String,
    },
    Topic {
        topic: String,
        what: &'static str,
    },
    Config {
        resource: String,
        key: String,
        value: Option<String>,
    },
}

impl ChangeLog {
    pub(super) fn of(image: &MetadataImage, records: &[MetadataRecord]) -> ChangeLog {
        // Topics created in this same decision are named by their TopicRecord.
        let mut new_topics: Vec<(TopicId, String)> = Vec::new();
        let name_of = |id: &[u8], new_topics: &[(TopicId, String)]| -> String {
            let Some(id) = TopicId::from_slice(id) else { return "?".into() };
            image
                .topic_by_id(id)
                .map(|t| t.name.clone())
                .or_else(|| new_topics.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone()))
                .unwrap_or_else(|| format!("{id:?}"))
        };
        let list = |ids: &[i32]| format!("{ids:?}");
        let mut lines = Vec::new();
        for record in records {
            let change = match &record.record {
                Some(Record::RegisterBroker(r)) => Change::Broker {
                    broker: r.broker_id,
                    epoch: r.broker_epoch,
                    what: "broker registered",
                },
                Some(Record::BrokerRegistrationChange(r)) => {
                    let what = match (r.fenced, r.in_controlled_shutdown) {
                        (Some(true), _) => "broker fenced",
                        (Some(false), _) => "broker unfenced",
                        (None, Some(true)) => "broker in controlled shutdown",
                        _ => continue,
                    };
                    Change::Broker { broker: r.broker_id, epoch: r.broker_epoch, what }
                }
                Some(Record::Topic(r)) => {
                    if let Some(id) = TopicId::from_slice(&r.topic_id) {
                        new_topics.push((id, r.name.clone()));
                    }
                    Change::Topic { topic: r.name.clone(), what: "topic created" }
                }
                Some(Record::RemoveTopic(r)) => Change::Topic {
                    topic: name_of(&r.topic_id, &new_topics),
                    what: "topic deleted",
                },
                Some(Record::PartitionChange(r)) => Change::Partition {
                    topic: name_of(&r.topic_id, &new_topics),
                    partition: r.partition_id,
                    leader: r.leader,
                    leader_epoch: r.leader_epoch,
                    isr: list(&r.isr),
                    replicas: list(&r.replicas),
                },
                Some(Record::Config(r)) => {
                    let kind = match ConfigResourceType::try_from(r.resource_type) {
                        Ok(ConfigResourceType::ConfigResourceTopic) => "topic",
                        Ok(ConfigResourceType::ConfigResourceBroker) => "broker",
                        _ => "resource",
                    };
                    Change::Config {
                        resource: format!("{kind} {}", r.resource_name),
                        key: r.name.clone(),
                        value: r.value.clone(),
                    }
                }
                // New partitions are counted with their topic; producer-id blocks and features
                // are not operator events.
                _ => continue,
            };
            lines.push(change);
        }
        ChangeLog { lines }
    }

    /// Logs the changes (call once they have committed).
    pub(super) fn log(&self, node_id: u64) {
        for (i, change) in self.lines.iter().enumerate() {
            let at_info = i < LINES_MAX;
            macro_rules! emit {
                ($($field:tt)*) => {
                    if at_info {
                        tracing::info!(target: "strom_controller::changes", node_id, $($field)*);
                    } else {
                        tracing::debug!(target: "strom_controller::changes", node_id, $($field)*);
                    }
                };
            }
            match change {
                Change::Broker { broker, epoch, what } => {
                    emit!(broker, broker_epoch = epoch, "{what}")
                }
                Change::Partition { topic, partition, leader, leader_epoch, isr, replicas } => {
                    emit!(
                        topic = %topic,
                        partition,
                        leader,
                        leader_epoch,
                        isr = %isr,
                        replicas = %replicas,
                        "partition leader or ISR changed"
                    )
                }
                Change::Topic { topic, what } => emit!(topic = %topic, "{what}"),
                Change::Config { resource, key, value } => match value {
                    Some(value) => {
                        emit!(resource = %resource, key = %key, value = %value, "config set")
                    }
                    None => emit!(resource = %resource, key = %key, "config removed"),
                },
            }
        }
        if self.lines.len() > LINES_MAX {
            tracing::info!(
                target: "strom_controller::changes",
                node_id,
                changes = self.lines.len(),
                "metadata changes committed (the first {LINES_MAX} listed above; all at DEBUG \
                 with RUST_LOG=strom_controller::changes=debug)"
            );
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lines.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_metadata::records::{
        BrokerRegistrationChangeRecord, ConfigRecord, PartitionChangeRecord, TopicRecord,
    };

    fn rec(r: Record) -> MetadataRecord {
        MetadataRecord { record: Some(r) }
    }

    #[test]
    fn operator_events_become_lines_and_others_do_not() {
        let id = TopicId::from_u64_pair(1, 2);
        let bytes = id.0.to_vec();
        let records = vec![
            rec(Record::Topic(TopicRecord { name: "t".into(), topic_id: bytes.clone() })),
            rec(Record::PartitionChange(PartitionChangeRecord {
                topic_id: bytes.clone(),
                partition_id: 0,
                leader: 2,
                isr: vec![2, 3],
                replicas: vec![1, 2, 3],
                leader_epoch: 4,
                partition_epoch: 5,
                ..Default::default()
            })),
            rec(Record::BrokerRegistrationChange(BrokerRegistrationChangeRecord {
                broker_id: 1,
                broker_epoch: 9,
                fenced: Some(true),
                in_controlled_shutdown: None,
            })),
            rec(Record::BrokerRegistrationChange(BrokerRegistrationChangeRecord {
                broker_id: 1,
                broker_epoch: 9,
                fenced: None,
                in_controlled_shutdown: None,
            })),
            rec(Record::Config(ConfigRecord {
                resource_type: ConfigResourceType::ConfigResourceTopic as i32,
                resource_name: "t".into(),
                name: "retention.ms".into(),
                value: None,
            })),
        ];
        let log = ChangeLog::of(&MetadataImage::default(), &records);
        assert_eq!(log.len(), 4);
        match &log.lines[1] {
            Change::Partition { topic, leader, isr, .. } => {
                assert_eq!((topic.as_str(), *leader, isr.as_str()), ("t", 2, "[2, 3]"));
            }
            _ => panic!("not a partition change"),
        }
        log.log(1);
    }
}
