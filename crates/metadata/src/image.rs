//! `MetadataImage`: the cluster's metadata after applying a prefix of the metadata log.
//!
//! The image is shared copy-on-write: each topic sits behind its own `Arc` in a chunked map
//! ([`TopicMap`]), and the topic-id index and the config overrides behind theirs, so a clone
//! copies a few pointers and a record that changes one partition copies only that topic and
//! its chunk (`Arc::make_mut`). Readers keep the image they
//! were handed while the state machine applies the next entry to its own copy.
//! [`MetadataDelta`] names what one entry changed, so that followers of the image look only
//! at that.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::records::{
    metadata_record::Record, ConfigResourceType, Endpoint, MetadataRecord, PartitionRecord,
    RegisterBrokerRecord, TopicRecord,
};
use crate::topic_map::TopicMap;
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
    /// A reassignment in progress (KIP-455): replicas joining (already in `replicas`, which
    /// lists the target replicas first) and replicas to drop once every target replica is in
    /// the ISR. Both empty when none is.
    pub adding_replicas: Vec<NodeId>,
    pub removing_replicas: Vec<NodeId>,
}

impl PartitionImage {
    /// Whether a reassignment is in progress.
    pub fn is_reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }
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
    pub topics: TopicMap,
    /// Changes only when a topic is created or removed.
    pub topic_names: Arc<HashMap<TopicId, String>>,
    pub brokers: BTreeMap<NodeId, BrokerImage>,
    /// Dynamic config overrides by (resource type, resource name): key → value.
    /// Changes only with a config record or a removed topic.
    pub configs: Arc<BTreeMap<(i32, String), BTreeMap<String, String>>>,
    pub next_producer_id: i64,
    pub features: BTreeMap<String, i32>,
    /// Client quotas by entity (`ClientQuotaRecord`s). Changes only with such a record, so a
    /// broker sees a change as a new pointer.
    pub client_quotas: Arc<crate::quotas::ClientQuotas>,
}

fn node_ids(ids: &[i32]) -> Vec<NodeId> {
    ids.iter().map(|&i| NodeId(i)).collect()
}

fn leader_of(raw: i32) -> Option<NodeId> {
    (raw >= 0).then_some(NodeId(raw))
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&TopicImage> {
        self.topics.get(name).map(|t| &**t)
    }

    pub fn topic_by_id(&self, id: TopicId) -> Option<&TopicImage> {
        self.topic_names.get(&id).and_then(|n| self.topic(n))
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
                Arc::make_mut(&mut self.topic_names).insert(id, name.clone());
                self.topics.insert(
                    name.clone(),
                    Arc::new(TopicImage { name: name.clone(), id, partitions: BTreeMap::new() }),
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
                partition.adding_replicas = node_ids(&c.adding_replicas);
                partition.removing_replicas = node_ids(&c.removing_replicas);
            }
            Record::Config(c) => {
                let key = (c.resource_type, c.resource_name.clone());
                match &c.value {
                    Some(v) => {
                        let configs = Arc::make_mut(&mut self.configs);
                        configs.entry(key).or_default().insert(c.name.clone(), v.clone());
                    }
                    None => {
                        if self.configs.get(&key).is_some_and(|map| map.contains_key(&c.name)) {
                            let configs = Arc::make_mut(&mut self.configs);
                            if let Some(map) = configs.get_mut(&key) {
                                map.remove(&c.name);
                                if map.is_empty() {
                                    configs.remove(&key);
                                }
                            }
                        }
                    }
                }
            }
            Record::RemoveTopic(r) => {
                let id = TopicId::from_slice(&r.topic_id)
                    .ok_or(ApplyError::MalformedRecord("topic_id"))?;
                if !self.topic_names.contains_key(&id) {
                    return Err(ApplyError::UnknownTopicId(id));
                }
                let name = Arc::make_mut(&mut self.topic_names)
                    .remove(&id)
                    .ok_or(ApplyError::UnknownTopicId(id))?;
                self.topics.remove(&name);
                let key = (ConfigResourceType::ConfigResourceTopic as i32, name);
                if self.configs.contains_key(&key) {
                    Arc::make_mut(&mut self.configs).remove(&key);
                }
            }
            Record::ProducerIds(r) => {
                self.next_producer_id = self.next_producer_id.max(r.next_producer_id);
            }
            Record::Feature(f) => {
                self.features.insert(f.name.clone(), f.feature_level);
            }
            Record::ClientQuota(q) => self.apply_client_quota(q)?,
        }
        Ok(())
    }

    fn apply_client_quota(
        &mut self,
        q: &crate::records::ClientQuotaRecord,
    ) -> Result<(), ApplyError> {
        let entity: crate::quotas::QuotaEntity =
            q.entity.iter().map(|p| (p.entity_type.clone(), p.entity_name.clone())).collect();
        if entity.is_empty() || entity.len() != q.entity.len() {
            return Err(ApplyError::MalformedRecord("ClientQuotaRecord.entity"));
        }
        let quotas = Arc::make_mut(&mut self.client_quotas);
        if q.remove {
            if let Some(values) = quotas.get_mut(&entity) {
                values.remove(&q.key);
                if values.is_empty() {
                    quotas.remove(&entity);
                }
            }
        } else {
            let value = crate::quotas::QuotaValue(q.value);
            quotas.entry(entity).or_default().insert(q.key.clone(), value);
        }
        Ok(())
    }

    /// The topic to change: copied first if a reader still holds it (copy-on-write).
    fn topic_mut(&mut self, raw_id: &[u8]) -> Result<&mut TopicImage, ApplyError> {
        let id = TopicId::from_slice(raw_id).ok_or(ApplyError::MalformedRecord("topic_id"))?;
        let name = self.topic_names.get(&id).ok_or(ApplyError::UnknownTopicId(id))?;
        self.topics.get_mut(name).map(Arc::make_mut).ok_or(ApplyError::UnknownTopicId(id))
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
                adding_replicas: node_ids(&p.adding_replicas),
                removing_replicas: node_ids(&p.removing_replicas),
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
                    adding_replicas: p.adding_replicas.iter().map(|n| n.0).collect(),
                    removing_replicas: p.removing_replicas.iter().map(|n| n.0).collect(),
                })));
            }
        }
        for ((resource_type, resource_name), entries) in self.configs.iter() {
            for (name, value) in entries {
                out.push(wrap(Record::Config(crate::records::ConfigRecord {
                    resource_type: *resource_type,
                    resource_name: resource_name.clone(),
                    name: name.clone(),
                    value: Some(value.clone()),
                })));
            }
        }
        for (entity, values) in self.client_quotas.iter() {
            for (key, value) in values {
                out.push(wrap(Record::ClientQuota(crate::records::ClientQuotaRecord {
                    entity: crate::control::quota_entity_parts(entity),
                    key: key.clone(),
                    value: value.0,
                    remove: false,
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

/// What one committed entry (or a run of them) changed, so that a follower of the image (the
/// broker's replica manager) looks at those topics only, not the whole cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataDelta {
    /// The image was replaced as a whole (a snapshot, the first image): look at everything,
    /// including what is no longer there.
    pub whole: bool,
    /// Topics created, removed, repartitioned, reassigned or reconfigured, by name (a removed
    /// topic by the name it had).
    pub topics: BTreeSet<String>,
    /// Some broker registered, was fenced or unfenced, or began a controlled shutdown.
    pub brokers: bool,
}

impl MetadataDelta {
    /// Everything changed: the first image a follower sees, or a snapshot.
    pub fn whole() -> MetadataDelta {
        MetadataDelta { whole: true, ..MetadataDelta::default() }
    }

    /// What `records` changed when applied to `before` (giving `after`). Costs what the records
    /// are, not what the image holds, except when they are a whole image's records (a
    /// snapshot reported like an entry), which is detected and reported as `whole`.
    pub fn of_records(
        before: &MetadataImage,
        after: &MetadataImage,
        records: &[MetadataRecord],
    ) -> MetadataDelta {
        // A snapshot arrives as the records that rebuild the image on their own. An ordinary
        // entry fails to rebuild it at once (its partitions name topics it does not create)
        // or builds a small image that differs at the first map, so this check costs about
        // what applying the entry did.
        let rebuilds = records.iter().any(|r| matches!(r.record, Some(Record::Topic(_))))
            || records.iter().all(|r| !matches!(r.record, Some(Record::PartitionChange(_))));
        if before.offset == MetadataOffset(0)
            || (rebuilds
                && !records.is_empty()
                && MetadataImage::from_records(after.offset, records).is_ok_and(|i| i == *after))
        {
            return MetadataDelta::whole();
        }
        let mut delta = MetadataDelta::default();
        let name_of = |raw: &[u8]| {
            let id = TopicId::from_slice(raw)?;
            after.topic_names.get(&id).or_else(|| before.topic_names.get(&id)).cloned()
        };
        for record in records {
            let Some(record) = &record.record else { continue };
            let name = match record {
                Record::RegisterBroker(_) | Record::BrokerRegistrationChange(_) => {
                    delta.brokers = true;
                    None
                }
                Record::Topic(t) => Some(t.name.clone()),
                Record::Partition(p) => name_of(&p.topic_id),
                Record::PartitionChange(c) => name_of(&c.topic_id),
                Record::RemoveTopic(r) => name_of(&r.topic_id),
                Record::Config(c)
                    if c.resource_type == ConfigResourceType::ConfigResourceTopic as i32 =>
                {
                    Some(c.resource_name.clone())
                }
                Record::Config(_)
                | Record::ProducerIds(_)
                | Record::Feature(_)
                | Record::ClientQuota(_) => None,
            };
            delta.topics.extend(name);
        }
        delta
    }

    /// Adds what a later entry changed (a follower that skipped images sees both at once).
    pub fn merge(&mut self, later: MetadataDelta) {
        self.whole |= later.whole;
        self.brokers |= later.brokers;
        if self.whole {
            self.topics.clear();
        } else {
            self.topics.extend(later.topics);
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.whole && !self.brokers && self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::PartitionChangeRecord;

    fn wrap(r: Record) -> MetadataRecord {
        MetadataRecord { record: Some(r) }
    }

    fn topic_records(name: &str, id: u8, partitions: i32) -> Vec<MetadataRecord> {
        let mut out =
            vec![wrap(Record::Topic(TopicRecord { name: name.into(), topic_id: vec![id; 16] }))];
        out.extend((0..partitions).map(|p| {
            wrap(Record::Partition(PartitionRecord {
                topic_id: vec![id; 16],
                partition_id: p,
                replicas: vec![1, 2],
                isr: vec![1, 2],
                leader: 1,
                leader_epoch: 0,
                partition_epoch: 0,
                ..Default::default()
            }))
        }));
        out
    }

    fn change(id: u8, partition: i32) -> MetadataRecord {
        wrap(Record::PartitionChange(PartitionChangeRecord {
            topic_id: vec![id; 16],
            partition_id: partition,
            leader: 2,
            isr: vec![2],
            replicas: vec![1, 2],
            leader_epoch: 1,
            partition_epoch: 1,
            ..Default::default()
        }))
    }

    #[test]
    fn a_change_copies_only_the_topic_it_touches() {
        let mut records = topic_records("a", 1, 3);
        records.extend(topic_records("b", 2, 3));
        let before = Arc::new(MetadataImage::from_records(MetadataOffset(5), &records).unwrap());
        let mut after = before.clone();
        Arc::make_mut(&mut after).apply_batch(MetadataOffset(6), &[change(2, 1)]).unwrap();
        assert!(Arc::ptr_eq(&before.topics["a"], &after.topics["a"]), "untouched topic shared");
        assert!(!Arc::ptr_eq(&before.topics["b"], &after.topics["b"]));
        assert!(Arc::ptr_eq(&before.topic_names, &after.topic_names));
        assert!(Arc::ptr_eq(&before.configs, &after.configs));
        assert_eq!(before.partition("b", 1).unwrap().leader, Some(NodeId(1)), "reader unchanged");
        assert_eq!(after.partition("b", 1).unwrap().leader, Some(NodeId(2)));
        let delta = MetadataDelta::of_records(&before, &after, &[change(2, 1)]);
        assert_eq!(delta.topics.iter().map(String::as_str).collect::<Vec<_>>(), ["b"]);
        assert!(!delta.whole && !delta.brokers);
    }

    #[test]
    fn a_snapshot_is_a_whole_delta_and_a_removed_topic_keeps_its_name() {
        let mut records = topic_records("a", 1, 2);
        records.extend(topic_records("b", 2, 1));
        let before = MetadataImage::from_records(MetadataOffset(5), &records).unwrap();
        let snapshot = MetadataImage::from_records(MetadataOffset(9), &records[..3]).unwrap();
        let delta = MetadataDelta::of_records(&before, &snapshot, &snapshot.to_records());
        assert!(delta.whole, "a snapshot can drop topics that no record names");
        let remove =
            wrap(Record::RemoveTopic(crate::records::RemoveTopicRecord { topic_id: vec![2; 16] }));
        let mut after = before.clone();
        after.apply_batch(MetadataOffset(6), std::slice::from_ref(&remove)).unwrap();
        let delta = MetadataDelta::of_records(&before, &after, &[remove]);
        assert_eq!(delta.topics.iter().map(String::as_str).collect::<Vec<_>>(), ["b"]);
        let mut merged = delta.clone();
        merged.merge(MetadataDelta::whole());
        assert!(merged.whole && merged.topics.is_empty());
    }

    #[test]
    fn next_producer_id_survives_a_snapshot_and_never_goes_back() {
        let ids = |next| {
            wrap(Record::ProducerIds(crate::records::ProducerIdsRecord {
                broker_id: 1,
                broker_epoch: 5,
                next_producer_id: next,
            }))
        };
        let mut image = MetadataImage::default();
        image.apply_batch(MetadataOffset(1), &[ids(1000), ids(2000)]).unwrap();
        assert_eq!(image.next_producer_id, 2000);
        image.apply_batch(MetadataOffset(2), &[ids(1000)]).unwrap();
        assert_eq!(image.next_producer_id, 2000, "an older record does not hand ids out again");
        let restored = MetadataImage::from_records(MetadataOffset(2), &image.to_records()).unwrap();
        assert_eq!(restored.next_producer_id, 2000);
        assert_eq!(restored, image);
    }
}
