//! `MetadataImage`: the cluster's metadata after applying a prefix of the metadata log.

use std::collections::{BTreeMap, HashMap};

use crate::records::{
    metadata_record::Record, ConfigResourceType, Endpoint, MetadataRecord, PartitionRecord,
    RegisterBrokerRecord, TopicRecord,
};
use crate::{
    ApplyError, BrokerEpoch, LeaderEpoch, MetadataOffset, NodeId, PartitionEpoch, TopicId,
};

/// A registered broker as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerImage {
    pub id: NodeId,
    pub epoch: BrokerEpoch,
    pub incarnation_id: Vec<u8>,
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
}

impl BrokerImage {
    /// The endpoint of the named listener, if the broker advertises one.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }
}

/// One partition's replica set and leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionImage {
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
    /// `None` when no replica can lead (all fenced, unclean election off).
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicImage {
    pub name: String,
    pub id: TopicId,
    pub partitions: BTreeMap<i32, PartitionImage>,
}

/// The state machine of the metadata log. `apply` is the only way it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataImage {
    /// Offset of the last applied entry; zero before any.
    pub offset: MetadataOffset,
    pub topics: BTreeMap<String, TopicImage>,
    pub topic_names: HashMap<TopicId, String>,
    pub brokers: BTreeMap<NodeId, BrokerImage>,
    /// Dynamic config overrides by (resource type, resource name): key → value.
    pub configs: BTreeMap<(i32, String), BTreeMap<String, String>>,
    pub next_producer_id: i64,
    pub features: BTreeMap<String, i32>,
}

fn node_ids(ids: &[i32]) -> Vec<NodeId> {
    ids.iter().map(|&i| NodeId(i)).collect()
}

fn leader_of(raw: i32) -> Option<NodeId> {
    (raw >= 0).then_some(NodeId(raw))
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&TopicImage> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: TopicId) -> Option<&TopicImage> {
        self.topic_names.get(&id).and_then(|n| self.topics.get(n))
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionImage> {
        self.topics.get(topic).and_then(|t| t.partitions.get(&partition))
    }

    /// The dynamic overrides of one topic (empty when it has none).
    pub fn topic_configs(&self, topic: &str) -> Option<&BTreeMap<String, String>> {
        self.configs.get(&(ConfigResourceType::ConfigResourceTopic as i32, topic.to_string()))
    }

    /// Unfenced brokers in id order: the candidates for placement and leadership.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerImage> {
        self.brokers.values().filter(|b| !b.fenced && !b.in_controlled_shutdown)
    }

    /// The broker registered as `id` at `epoch`; a request carrying any other epoch comes from
    /// a stale incarnation (Kafka's STALE_BROKER_EPOCH).
    pub fn registered_broker(
        &self,
        id: NodeId,
        epoch: BrokerEpoch,
    ) -> Result<&BrokerImage, crate::ControlError> {
        self.brokers
            .get(&id)
            .filter(|b| b.epoch == epoch)
            .ok_or(crate::ControlError::StaleBrokerEpoch(id.0))
    }

    pub fn is_live(&self, id: NodeId) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced && !b.in_controlled_shutdown)
    }

    /// Applies every record of one committed log entry, then records its offset.
    pub fn apply_batch(
        &mut self,
        offset: MetadataOffset,
        records: &[MetadataRecord],
    ) -> Result<(), ApplyError> {
        for record in records {
            self.apply(record)?;
        }
        self.offset = offset;
        Ok(())
    }

    /// Applies one committed record. Pure: the same records give the same image on every node.
    pub fn apply(&mut self, record: &MetadataRecord) -> Result<(), ApplyError> {
        let Some(record) = &record.record else { return Err(ApplyError::EmptyRecord) };
        match record {
            Record::RegisterBroker(r) => self.apply_register(r),
            Record::BrokerRegistrationChange(r) => {
                if let Some(b) = self.brokers.get_mut(&NodeId(r.broker_id)) {
                    if b.epoch.0 == r.broker_epoch {
                        if let Some(f) = r.fenced {
                            b.fenced = f;
                        }
                        if let Some(s) = r.in_controlled_shutdown {
                            b.in_controlled_shutdown = s;
                        }
                    }
                }
            }
            Record::Topic(TopicRecord { name, topic_id }) => {
                let id =
                    TopicId::from_slice(topic_id).ok_or(ApplyError::MalformedRecord("topic_id"))?;
                self.topic_names.insert(id, name.clone());
                self.topics.insert(
                    name.clone(),
                    TopicImage { name: name.clone(), id, partitions: BTreeMap::new() },
                );
            }
            Record::Partition(p) => self.apply_partition(p)?,
            Record::PartitionChange(c) => {
                let topic = self.topic_mut(&c.topic_id)?;
                let partition = topic
                    .partitions
                    .get_mut(&c.partition_id)
                    .ok_or(ApplyError::MalformedRecord("partition_id"))?;
                partition.leader = leader_of(c.leader);
                partition.isr = node_ids(&c.isr);
                partition.replicas = node_ids(&c.replicas);
                partition.leader_epoch = LeaderEpoch(c.leader_epoch);
                partition.partition_epoch = PartitionEpoch(c.partition_epoch);
            }
            Record::Config(c) => {
                let key = (c.resource_type, c.resource_name.clone());
                match &c.value {
                    Some(v) => {
                        self.configs.entry(key).or_default().insert(c.name.clone(), v.clone());
                    }
                    None => {
                        if let Some(map) = self.configs.get_mut(&key) {
                            map.remove(&c.name);
                            if map.is_empty() {
                                self.configs.remove(&key);
                            }
                        }
                    }
                }
            }
            Record::RemoveTopic(r) => {
                let id = TopicId::from_slice(&r.topic_id)
                    .ok_or(ApplyError::MalformedRecord("topic_id"))?;
                let name = self.topic_names.remove(&id).ok_or(ApplyError::UnknownTopicId(id))?;
                self.topics.remove(&name);
                self.configs.remove(&(ConfigResourceType::ConfigResourceTopic as i32, name));
            }
            Record::ProducerIds(r) => {
                self.next_producer_id = self.next_producer_id.max(r.next_producer_id);
            }
            Record::Feature(f) => {
                self.features.insert(f.name.clone(), f.feature_level);
            }
        }
        Ok(())
    }

    fn topic_mut(&mut self, raw_id: &[u8]) -> Result<&mut TopicImage, ApplyError> {
        let id = TopicId::from_slice(raw_id).ok_or(ApplyError::MalformedRecord("topic_id"))?;
        let name = self.topic_names.get(&id).ok_or(ApplyError::UnknownTopicId(id))?;
        self.topics.get_mut(name).ok_or(ApplyError::UnknownTopicId(id))
    }

    fn apply_register(&mut self, r: &RegisterBrokerRecord) {
        self.brokers.insert(
            NodeId(r.broker_id),
            BrokerImage {
                id: NodeId(r.broker_id),
                epoch: BrokerEpoch(r.broker_epoch),
                incarnation_id: r.incarnation_id.clone(),
                endpoints: r.endpoints.clone(),
                rack: r.rack.clone(),
                fenced: r.fenced,
                in_controlled_shutdown: false,
            },
        );
    }

    fn apply_partition(&mut self, p: &PartitionRecord) -> Result<(), ApplyError> {
        let topic = self.topic_mut(&p.topic_id)?;
        topic.partitions.insert(
            p.partition_id,
            PartitionImage {
                replicas: node_ids(&p.replicas),
                isr: node_ids(&p.isr),
                leader: leader_of(p.leader),
                leader_epoch: LeaderEpoch(p.leader_epoch),
                partition_epoch: PartitionEpoch(p.partition_epoch),
            },
        );
        Ok(())
    }

    /// Writes the image back out as records; replaying them onto an empty image rebuilds it.
    /// This is what a snapshot stores.
    pub fn to_records(&self) -> Vec<MetadataRecord> {
        let wrap = |r: Record| MetadataRecord { record: Some(r) };
        let mut out = Vec::new();
        for (name, level) in &self.features {
            out.push(wrap(Record::Feature(crate::records::FeatureRecord {
                name: name.clone(),
                feature_level: *level,
            })));
        }
        for b in self.brokers.values() {
            out.push(wrap(Record::RegisterBroker(RegisterBrokerRecord {
                broker_id: b.id.0,
                incarnation_id: b.incarnation_id.clone(),
                broker_epoch: b.epoch.0,
                endpoints: b.endpoints.clone(),
                rack: b.rack.clone(),
                fenced: b.fenced,
            })));
            if b.in_controlled_shutdown {
                out.push(wrap(Record::BrokerRegistrationChange(
                    crate::records::BrokerRegistrationChangeRecord {
                        broker_id: b.id.0,
                        broker_epoch: b.epoch.0,
                        fenced: None,
                        in_controlled_shutdown: Some(true),
                    },
                )));
            }
        }
        for t in self.topics.values() {
            out.push(wrap(Record::Topic(TopicRecord {
                name: t.name.clone(),
                topic_id: t.id.0.to_vec(),
            })));
            for (&id, p) in &t.partitions {
                out.push(wrap(Record::Partition(PartitionRecord {
                    topic_id: t.id.0.to_vec(),
                    partition_id: id,
                    replicas: p.replicas.iter().map(|n| n.0).collect(),
                    isr: p.isr.iter().map(|n| n.0).collect(),
                    leader: p.leader.map_or(-1, |n| n.0),
                    leader_epoch: p.leader_epoch.0,
                    partition_epoch: p.partition_epoch.0,
                })));
            }
        }
        for ((resource_type, resource_name), entries) in &self.configs {
            for (name, value) in entries {
                out.push(wrap(Record::Config(crate::records::ConfigRecord {
                    resource_type: *resource_type,
                    resource_name: resource_name.clone(),
                    name: name.clone(),
                    value: Some(value.clone()),
                })));
            }
        }
        if self.next_producer_id > 0 {
            out.push(wrap(Record::ProducerIds(crate::records::ProducerIdsRecord {
                broker_id: -1,
                broker_epoch: -1,
                next_producer_id: self.next_producer_id,
            })));
        }
        out
    }

    /// Rebuilds an image from a snapshot's records.
    pub fn from_records(
        offset: MetadataOffset,
        records: &[MetadataRecord],
    ) -> Result<MetadataImage, ApplyError> {
        let mut image = MetadataImage::default();
        image.apply_batch(offset, records)?;
        Ok(image)
    }
}
