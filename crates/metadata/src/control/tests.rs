//! Data-driven decision tests: an image built from requests, one more request, and the records
//! and response it yields rendered as text and compared with `expect-test`
//! (`UPDATE_EXPECT=1 cargo test -p strom-metadata` refreshes them).

use expect_test::{expect, Expect};

use super::*;
use crate::records::Endpoint;
use crate::{BrokerEpoch, MetadataImage, MetadataOffset, NodeId};

struct Sim {
    image: MetadataImage,
    defaults: ControlDefaults,
    seed: u64,
}

impl Sim {
    fn new() -> Sim {
        Sim { image: MetadataImage::default(), defaults: ControlDefaults::default(), seed: 7 }
    }

    /// Decides and commits `req` at the next offset, as the active controller would.
    fn run(&mut self, req: ControlRequest) -> Result<Decision, crate::ControlError> {
        let next = MetadataOffset(self.image.offset.0 + 1);
        let seed = &mut self.seed;
        let mut random = || {
            // xorshift: deterministic ids and placement
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let mut ctx = DecideCtx {
            now_ms: 0,
            next_offset: next,
            defaults: &self.defaults,
            random: &mut random,
        };
        let d = decide(&self.image, &req, &mut ctx)?;
        self.image.apply_batch(next, &d.records).expect("decided records apply");
        Ok(d)
    }

    fn live_broker(&mut self, id: i32) {
        self.live_broker_in_rack(id, None);
    }

    fn live_broker_in_rack(&mut self, id: i32, rack: Option<&str>) {
        let d = self
            .run(ControlRequest::RegisterBroker(RegisterBrokerRequest {
                broker_id: NodeId(id),
                incarnation_id: vec![id as u8; 16],
                endpoints: vec![Endpoint { name: "PLAINTEXT".into(), host: "h".into(), port: 1 }],
                rack: rack.map(str::to_string),
            }))
            .unwrap();
        let ControlResponse::RegisterBroker(epoch) = d.response else { panic!() };
        self.heartbeat(id, epoch);
    }

    fn epoch(&self, id: i32) -> BrokerEpoch {
        self.image.brokers[&NodeId(id)].epoch
    }

    /// Commits records the way the active controller commits a decision of its own (fencing).
    fn commit(&mut self, records: Vec<crate::records::MetadataRecord>) -> Decision {
        let next = MetadataOffset(self.image.offset.0 + 1);
        self.image.apply_batch(next, &records).expect("decided records apply");
        // The controller's own decisions answer nobody; any response renders the records.
        Decision { records, response: ControlResponse::RegisterBroker(BrokerEpoch(-1)) }
    }

    /// The session of broker `id` expired: what the active controller's tick decides.
    fn fence(&mut self, id: i32) -> Decision {
        let epoch = self.epoch(id);
        let records = fence_broker(&self.image, NodeId(id), epoch);
        self.commit(records)
    }

    fn beat(&mut self, id: i32, want_shutdown: bool) -> Result<Decision, crate::ControlError> {
        let req = BrokerHeartbeatRequest {
            broker_id: NodeId(id),
            broker_epoch: self.epoch(id),
            current_metadata_offset: self.image.offset,
            want_fence: false,
            want_shutdown,
        };
        self.run(ControlRequest::BrokerHeartbeat(req))
    }

    fn leaders(&self, topic: &str) -> Vec<Option<i32>> {
        self.image.topics[topic].partitions.values().map(|p| p.leader.map(|n| n.0)).collect()
    }

    fn heartbeat(&mut self, id: i32, epoch: BrokerEpoch) -> Decision {
        let offset = self.image.offset;
        self.run(ControlRequest::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: NodeId(id),
            broker_epoch: epoch,
            current_metadata_offset: offset,
            want_fence: false,
            want_shutdown: false,
        }))
        .unwrap()
    }
}

fn render(d: &Result<Decision, crate::ControlError>) -> String {
    render_with(d, true)
}

/// Only the records: for decisions the controller makes on its own (fencing).
fn render_records(d: Decision) -> String {
    render_with(&Ok(d), false)
}

fn render_with(d: &Result<Decision, crate::ControlError>, response: bool) -> String {
    match d {
        Err(e) => format!("error: {e}\n"),
        Ok(d) => {
            let mut s = String::new();
            for r in &d.records {
                let mut line = format!("{:?}", r.record.as_ref().unwrap());
                // no reassignment in progress: the usual case, left out
                line = line.replace(", adding_replicas: [], removing_replicas: []", "");
                // topic ids are random bytes: elide them so cases read clearly
                while let Some(i) = line.find("topic_id: [") {
                    let end = line[i..].find(']').unwrap() + i;
                    line.replace_range(i..=end, "topic_id: _");
                }
                s.push_str(&line);
                s.push('\n');
            }
            if !response {
                return s;
            }
            let mut resp = format!("{:?}", d.response);
            while let Some(i) = resp.find("topic_id: TopicId(") {
                let end = resp[i..].find(')').unwrap() + i;
                resp.replace_range(i..=end, "topic_id: _");
            }
            s.push_str(&format!("=> {resp}\n"));
            s
        }
    }
}

fn check(sim: &mut Sim, req: ControlRequest, expect: Expect) {
    let d = sim.run(req);
    expect.assert_eq(&render(&d));
}

fn create(name: &str, partitions: i32, rf: i16) -> ControlRequest {
    ControlRequest::CreateTopics(CreateTopicsRequest {
        topics: vec![CreateTopic {
            name: name.into(),
            num_partitions: partitions,
            replication_factor: rf,
            ..Default::default()
        }],
        validate_only: false,
        internal: false,
    })
}

#[test]
fn create_topic_places_replicas_round_robin_over_live_brokers() {
    let mut sim = Sim::new();
    for id in 1..=3 {
        sim.live_broker(id);
    }
    check(
        &mut sim,
        create("orders", 3, 2),
        expect![[r#"
            Topic(TopicRecord { name: "orders", topic_id: _ })
            Partition(PartitionRecord { topic_id: _, partition_id: 0, replicas: [1, 2], isr: [1, 2], leader: 1, leader_epoch: 0, partition_epoch: 0 })
            Partition(PartitionRecord { topic_id: _, partition_id: 1, replicas: [2, 3], isr: [2, 3], leader: 2, leader_epoch: 0, partition_epoch: 0 })
            Partition(PartitionRecord { topic_id: _, partition_id: 2, replicas: [3, 1], isr: [3, 1], leader: 3, leader_epoch: 0, partition_epoch: 0 })
            => CreateTopics([ItemResult { name: "orders", result: Ok(CreatedTopic { topic_id: _, num_partitions: 3, replication_factor: 2, configs: [] }) }])
        "#]],
    );
}

#[test]
fn create_topic_refuses_what_kafka_refuses() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    check(
        &mut sim,
        create("a", 1, 3),
        expect![[r#"
        => CreateTopics([ItemResult { name: "a", result: Err(InvalidReplicationFactor("replication factor 3 is larger than the 1 available brokers")) }])
    "#]],
    );
    check(
        &mut sim,
        create("bad name", 1, 1),
        expect![[r#"
        => CreateTopics([ItemResult { name: "bad name", result: Err(InvalidTopic("'bad name' may contain only ASCII letters, digits, '.', '_' and '-'")) }])
    "#]],
    );
    check(
        &mut sim,
        create("zero", 0, 1),
        expect![[r#"
        => CreateTopics([ItemResult { name: "zero", result: Err(InvalidPartitions("number of partitions must be between 1 and 100000, got 0")) }])
    "#]],
    );
    sim.run(create("a.b", -1, -1)).unwrap();
    check(
        &mut sim,
        create("a.b", 1, 1),
        expect![[r#"
        => CreateTopics([ItemResult { name: "a.b", result: Err(TopicAlreadyExists("a.b")) }])
    "#]],
    );
    check(
        &mut sim,
        create("a_b", 1, 1),
        expect![[r#"
        => CreateTopics([ItemResult { name: "a_b", result: Err(InvalidTopic("'a_b' collides with existing topic 'a.b' ('.' and '_' are treated alike)")) }])
    "#]],
    );
}

#[test]
fn reserved_and_internal_topics_are_refused_to_clients() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    let mut out = String::new();
    for name in ["__cluster_metadata", "__cluster.metadata", "__consumer_offsets"] {
        out.push_str(&render(&sim.run(create(name, 1, 1))));
    }
    // The group coordinator creates its topic with `internal` set: that is allowed.
    let ControlRequest::CreateTopics(mut by_broker) = create("__consumer_offsets", 2, 1) else {
        unreachable!()
    };
    by_broker.internal = true;
    sim.run(ControlRequest::CreateTopics(by_broker)).unwrap();
    out.push_str(&render(&sim.run(ControlRequest::DeleteTopics(DeleteTopicsRequest {
        names: vec!["__consumer_offsets".into()],
        ids: vec![],
    }))));
    out.push_str(&render(&sim.run(ControlRequest::CreatePartitions(CreatePartitionsRequest {
        topics: vec![NewPartitions {
            topic: "__consumer_offsets".into(),
            count: 3,
            assignments: vec![],
        }],
        validate_only: false,
    }))));
    out.push_str(&render(&sim.run(ControlRequest::AlterConfigs(AlterConfigsRequest {
        resources: vec![ConfigAlteration {
            resource_type: crate::records::ConfigResourceType::ConfigResourceTopic,
            resource_name: "__consumer_offsets".into(),
            ops: vec![("cleanup.policy".into(), AlterConfigOp::Set, Some("delete".into()))],
        }],
        incremental: true,
        validate_only: false,
    }))));
    expect![[r#"
        => CreateTopics([ItemResult { name: "__cluster_metadata", result: Err(InvalidTopic("'__cluster_metadata' is reserved: the metadata quorum keeps its log under that name")) }])
        => CreateTopics([ItemResult { name: "__cluster.metadata", result: Err(InvalidTopic("'__cluster.metadata' is reserved: the metadata quorum keeps its log under that name")) }])
        => CreateTopics([ItemResult { name: "__consumer_offsets", result: Err(InvalidRequest("'__consumer_offsets' is an internal topic: the brokers manage it, it cannot be created by clients")) }])
        => DeleteTopics([ItemResult { name: "__consumer_offsets", result: Err(InvalidRequest("'__consumer_offsets' is an internal topic: the brokers manage it, it cannot be deleted")) }])
        => CreatePartitions([ItemResult { name: "__consumer_offsets", result: Err(InvalidRequest("'__consumer_offsets' is an internal topic: the brokers manage it, it cannot be repartitioned")) }])
        => AlterConfigs([ResourceResult { resource_type: ConfigResourceTopic, resource_name: "__consumer_offsets", result: Err(InvalidRequest("'__consumer_offsets' is an internal topic: the brokers manage it, it cannot be reconfigured by clients")) }])
    "#]].assert_eq(&out);
    assert!(sim.image.topic("__consumer_offsets").is_some_and(|t| t.partitions.len() == 2));
}

#[test]
fn configs_are_validated_set_and_deleted() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    sim.run(create("t", 1, 1)).unwrap();
    let alter = |ops: Vec<(&str, AlterConfigOp, Option<&str>)>| {
        ControlRequest::AlterConfigs(AlterConfigsRequest {
            resources: vec![ConfigAlteration {
                resource_type: crate::records::ConfigResourceType::ConfigResourceTopic,
                resource_name: "t".into(),
                ops: ops
                    .into_iter()
                    .map(|(k, op, v)| (k.to_string(), op, v.map(str::to_string)))
                    .collect(),
            }],
            incremental: true,
            validate_only: false,
        })
    };
    check(
        &mut sim,
        alter(vec![("retention.ms", AlterConfigOp::Set, Some("1000"))]),
        expect![[r#"
        Config(ConfigRecord { resource_type: ConfigResourceTopic, resource_name: "t", name: "retention.ms", value: Some("1000") })
        => AlterConfigs([ResourceResult { resource_type: ConfigResourceTopic, resource_name: "t", result: Ok(()) }])
    "#]],
    );
    check(
        &mut sim,
        alter(vec![("retention.ms", AlterConfigOp::Set, Some("x"))]),
        expect![[r#"
        => AlterConfigs([ResourceResult { resource_type: ConfigResourceTopic, resource_name: "t", result: Err(InvalidConfig("retention.ms=\"x\": not an integer")) }])
    "#]],
    );
    check(
        &mut sim,
        alter(vec![("cleanup.policy", AlterConfigOp::Append, Some("compact"))]),
        expect![[r#"
        Config(ConfigRecord { resource_type: ConfigResourceTopic, resource_name: "t", name: "cleanup.policy", value: Some("delete,compact") })
        => AlterConfigs([ResourceResult { resource_type: ConfigResourceTopic, resource_name: "t", result: Ok(()) }])
    "#]],
    );
    check(
        &mut sim,
        alter(vec![("retention.ms", AlterConfigOp::Delete, None)]),
        expect![[r#"
        Config(ConfigRecord { resource_type: ConfigResourceTopic, resource_name: "t", name: "retention.ms", value: None })
        => AlterConfigs([ResourceResult { resource_type: ConfigResourceTopic, resource_name: "t", result: Ok(()) }])
    "#]],
    );
    assert_eq!(
        sim.image.topic_configs("t").unwrap().get("cleanup.policy").map(String::as_str),
        Some("delete,compact")
    );
}

#[test]
fn reregistration_moves_leadership_then_unfence_restores_it() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    sim.run(create("t", 1, 1)).unwrap();
    // the same node id starts again with a new incarnation
    check(
        &mut sim,
        ControlRequest::RegisterBroker(RegisterBrokerRequest {
            broker_id: NodeId(1),
            incarnation_id: vec![9; 16],
            endpoints: vec![],
            rack: None,
        }),
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: -1, isr: [1], replicas: [1], leader_epoch: 1, partition_epoch: 1 })
            RegisterBroker(RegisterBrokerRecord { broker_id: 1, incarnation_id: [9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9], broker_epoch: 4, endpoints: [], rack: None, fenced: true })
            => RegisterBroker(BrokerEpoch(4))
        "#]],
    );
    let d = sim.heartbeat(1, BrokerEpoch(4));
    expect![[r#"
        BrokerRegistrationChange(BrokerRegistrationChangeRecord { broker_id: 1, broker_epoch: 4, fenced: Some(false), in_controlled_shutdown: None })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [1], replicas: [1], leader_epoch: 2, partition_epoch: 2 })
        => BrokerHeartbeat(HeartbeatReply { is_caught_up: true, is_fenced: false, should_shutdown: false })
    "#]]
    .assert_eq(&render(&Ok(d)));
}

#[test]
fn snapshot_records_rebuild_the_same_image() {
    let mut sim = Sim::new();
    for id in 1..=3 {
        sim.live_broker(id);
    }
    sim.run(create("a", 4, 3)).unwrap();
    sim.run(create("b", 2, 1)).unwrap();
    let rebuilt = MetadataImage::from_records(sim.image.offset, &sim.image.to_records()).unwrap();
    assert_eq!(rebuilt, sim.image);
    let d = sim
        .run(ControlRequest::DeleteTopics(DeleteTopicsRequest {
            names: vec!["a".into(), "nope".into()],
            ids: vec![],
        }))
        .unwrap();
    assert_eq!(d.records.len(), 1);
    assert!(sim.image.topic("a").is_none() && sim.image.topic("b").is_some());
}

fn set_topic_config(sim: &mut Sim, topic: &str, key: &str, value: &str) {
    let d = sim
        .run(ControlRequest::AlterConfigs(AlterConfigsRequest {
            resources: vec![ConfigAlteration {
                resource_type: crate::records::ConfigResourceType::ConfigResourceTopic,
                resource_name: topic.into(),
                ops: vec![(key.into(), AlterConfigOp::Set, Some(value.into()))],
            }],
            incremental: true,
            validate_only: false,
        }))
        .unwrap();
    assert_eq!(d.records.len(), 1, "config not set: {d:?}");
}

/// A topic with explicit replicas (checked to be created when run).
fn create_with_replicas(name: &str, assignments: &[&[i32]]) -> ControlRequest {
    assert!(assignments.windows(2).all(|w| w[0].len() == w[1].len()), "uneven replicas");
    ControlRequest::CreateTopics(CreateTopicsRequest {
        topics: vec![CreateTopic {
            name: name.into(),
            num_partitions: -1,
            replication_factor: -1,
            assignments: assignments
                .iter()
                .enumerate()
                .map(|(p, r)| (p as i32, r.iter().map(|&n| NodeId(n)).collect()))
                .collect(),
            ..Default::default()
        }],
        validate_only: false,
        internal: false,
    })
}

#[test]
fn placement_spreads_each_partition_over_racks_first() {
    let mut sim = Sim::new();
    // Racks a: 1, 2; b: 3, 4; c: 5, 6 (registered out of rack order on purpose).
    for (id, rack) in [(1, "a"), (3, "b"), (5, "c"), (2, "a"), (4, "b"), (6, "c")] {
        sim.live_broker_in_rack(id, Some(rack));
    }
    let d = sim.run(create("spread", 6, 3)).unwrap();
    let rack = |n: &NodeId| sim.image.brokers[n].rack.clone();
    for p in sim.image.topics["spread"].partitions.values() {
        let racks: std::collections::BTreeSet<_> = p.replicas.iter().map(rack).collect();
        assert_eq!(racks.len(), 3, "replicas {:?} share a rack", p.replicas);
    }
    // Leaders land on every broker once.
    let mut leaders: Vec<i32> = sim.leaders("spread").into_iter().flatten().collect();
    leaders.sort();
    assert_eq!(leaders, vec![1, 2, 3, 4, 5, 6]);
    expect![[r#"
        Topic(TopicRecord { name: "spread", topic_id: _ })
        Partition(PartitionRecord { topic_id: _, partition_id: 0, replicas: [2, 4, 6], isr: [2, 4, 6], leader: 2, leader_epoch: 0, partition_epoch: 0 })
        Partition(PartitionRecord { topic_id: _, partition_id: 1, replicas: [4, 6, 1], isr: [4, 6, 1], leader: 4, leader_epoch: 0, partition_epoch: 0 })
        Partition(PartitionRecord { topic_id: _, partition_id: 2, replicas: [6, 1, 3], isr: [6, 1, 3], leader: 6, leader_epoch: 0, partition_epoch: 0 })
        Partition(PartitionRecord { topic_id: _, partition_id: 3, replicas: [1, 3, 5], isr: [1, 3, 5], leader: 1, leader_epoch: 0, partition_epoch: 0 })
        Partition(PartitionRecord { topic_id: _, partition_id: 4, replicas: [3, 5, 2], isr: [3, 5, 2], leader: 3, leader_epoch: 0, partition_epoch: 0 })
        Partition(PartitionRecord { topic_id: _, partition_id: 5, replicas: [5, 2, 4], isr: [5, 2, 4], leader: 5, leader_epoch: 0, partition_epoch: 0 })
        => CreateTopics([ItemResult { name: "spread", result: Ok(CreatedTopic { topic_id: _, num_partitions: 6, replication_factor: 3, configs: [] }) }])
    "#]]
    .assert_eq(&render(&Ok(d)));
}

#[test]
fn rack_aware_placement_reuses_a_rack_only_when_every_rack_is_used() {
    let live: Vec<(NodeId, Option<String>)> = [(1, "a"), (2, "a"), (3, "a"), (4, "b")]
        .iter()
        .map(|&(id, r)| (NodeId(id), Some(r.to_string())))
        .collect();
    let placed = rack_aware_placement(&live, 0, 4, 3, 0);
    let text = format!(
        "{:?}",
        placed.iter().map(|r| r.iter().map(|n| n.0).collect::<Vec<_>>()).collect::<Vec<_>>()
    );
    expect!["[[1, 4, 2], [4, 2, 3], [2, 4, 3], [3, 4, 2]]"].assert_eq(&text);
    for replicas in &placed {
        assert!(replicas.contains(&NodeId(4)), "rack b unused in {replicas:?}");
    }
}

#[test]
fn replication_factor_above_the_live_brokers_is_refused() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    sim.live_broker(2);
    sim.fence(2);
    check(
        &mut sim,
        create("big", 1, 2),
        expect![[r#"
            => CreateTopics([ItemResult { name: "big", result: Err(InvalidReplicationFactor("replication factor 2 is larger than the 1 available brokers")) }])
        "#]],
    );
}

#[test]
fn fencing_moves_leaders_to_the_next_live_isr_replica_and_bumps_epochs() {
    let mut sim = Sim::new();
    for id in 1..=3 {
        sim.live_broker(id);
    }
    sim.run(create_with_replicas("t", &[&[1, 2, 3], &[2, 1, 3], &[3, 2, 1]])).unwrap();
    let d = sim.fence(1);
    expect![[r#"
        BrokerRegistrationChange(BrokerRegistrationChangeRecord { broker_id: 1, broker_epoch: 1, fenced: Some(true), in_controlled_shutdown: None })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 2, isr: [2, 3], replicas: [1, 2, 3], leader_epoch: 1, partition_epoch: 1 })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 1, leader: 2, isr: [2, 3], replicas: [2, 1, 3], leader_epoch: 0, partition_epoch: 1 })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 2, leader: 3, isr: [3, 2], replicas: [3, 2, 1], leader_epoch: 0, partition_epoch: 1 })
    "#]]
    .assert_eq(&render_records(d));
    assert_eq!(sim.leaders("t"), vec![Some(2), Some(2), Some(3)]);
    // Fencing again is a no-op: the registration is already fenced.
    assert!(fence_broker(&sim.image, NodeId(1), sim.epoch(1)).is_empty());
    // The last ISR member is kept even when it goes: the partition then has no leader.
    sim.fence(3);
    let d = sim.fence(2);
    expect![[r#"
        BrokerRegistrationChange(BrokerRegistrationChangeRecord { broker_id: 2, broker_epoch: 3, fenced: Some(true), in_controlled_shutdown: None })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: -1, isr: [2], replicas: [1, 2, 3], leader_epoch: 2, partition_epoch: 3 })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 1, leader: -1, isr: [2], replicas: [2, 1, 3], leader_epoch: 1, partition_epoch: 3 })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 2, leader: -1, isr: [2], replicas: [3, 2, 1], leader_epoch: 2, partition_epoch: 3 })
    "#]]
    .assert_eq(&render_records(d));
}

#[test]
fn unfence_elects_the_broker_where_it_is_the_first_live_isr_replica() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    sim.live_broker(2);
    sim.run(create_with_replicas("t", &[&[1, 2], &[2, 1]])).unwrap();
    sim.fence(2);
    sim.fence(1);
    assert_eq!(sim.leaders("t"), vec![None, None]);
    // Broker 1 comes back: the last ISR member of both, it leads both.
    let d = sim.beat(1, false);
    expect![[r#"
        BrokerRegistrationChange(BrokerRegistrationChangeRecord { broker_id: 1, broker_epoch: 1, fenced: Some(false), in_controlled_shutdown: None })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [1], replicas: [1, 2], leader_epoch: 2, partition_epoch: 3 })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 1, leader: 1, isr: [1], replicas: [2, 1], leader_epoch: 3, partition_epoch: 3 })
        => BrokerHeartbeat(HeartbeatReply { is_caught_up: true, is_fenced: false, should_shutdown: false })
    "#]]
    .assert_eq(&render(&d));
    // Broker 2 is out of the ISR: unfencing it moves nothing.
    let d = sim.beat(2, false);
    expect![[r#"
        BrokerRegistrationChange(BrokerRegistrationChangeRecord { broker_id: 2, broker_epoch: 3, fenced: Some(false), in_controlled_shutdown: None })
        => BrokerHeartbeat(HeartbeatReply { is_caught_up: true, is_fenced: false, should_shutdown: false })
    "#]]
    .assert_eq(&render(&d));
}

#[test]
fn heartbeat_with_a_stale_broker_epoch_is_rejected() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    let old = sim.epoch(1);
    sim.run(ControlRequest::RegisterBroker(RegisterBrokerRequest {
        broker_id: NodeId(1),
        incarnation_id: vec![42; 16],
        endpoints: vec![],
        rack: None,
    }))
    .unwrap();
    assert_ne!(sim.epoch(1), old);
    check(
        &mut sim,
        ControlRequest::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: NodeId(1),
            broker_epoch: old,
            current_metadata_offset: MetadataOffset(100),
            want_fence: false,
            want_shutdown: false,
        }),
        expect![[r#"
            error: broker 1 is not registered or its epoch is stale
        "#]],
    );
    check(
        &mut sim,
        ControlRequest::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: NodeId(9),
            broker_epoch: old,
            current_metadata_offset: MetadataOffset(100),
            want_fence: false,
            want_shutdown: false,
        }),
        expect![[r#"
            error: broker 9 is not registered or its epoch is stale
        "#]],
    );
    // A broker that has not applied its own registration stays fenced.
    let epoch = sim.epoch(1);
    check(
        &mut sim,
        ControlRequest::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: NodeId(1),
            broker_epoch: epoch,
            current_metadata_offset: MetadataOffset(epoch.0 as u64 - 1),
            want_fence: false,
            want_shutdown: false,
        }),
        expect![[r#"
            => BrokerHeartbeat(HeartbeatReply { is_caught_up: false, is_fenced: true, should_shutdown: false })
        "#]],
    );
}

#[test]
fn controlled_shutdown_moves_leaderships_before_the_broker_may_exit() {
    let mut sim = Sim::new();
    for id in 1..=3 {
        sim.live_broker(id);
    }
    sim.run(create_with_replicas("t", &[&[1, 2], &[2, 1]])).unwrap();
    sim.run(create_with_replicas("solo", &[&[1]])).unwrap();
    let d = sim.beat(1, true);
    expect![[r#"
        BrokerRegistrationChange(BrokerRegistrationChangeRecord { broker_id: 1, broker_epoch: 1, fenced: None, in_controlled_shutdown: Some(true) })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: -1, isr: [1], replicas: [1], leader_epoch: 1, partition_epoch: 1 })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 2, isr: [2], replicas: [1, 2], leader_epoch: 1, partition_epoch: 1 })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 1, leader: 2, isr: [2], replicas: [2, 1], leader_epoch: 0, partition_epoch: 1 })
        => BrokerHeartbeat(HeartbeatReply { is_caught_up: true, is_fenced: false, should_shutdown: false })
    "#]]
    .assert_eq(&render(&d));
    assert!(!sim.image.is_live(NodeId(1)), "a broker in controlled shutdown takes no leadership");
    // It has applied the moves and leads nothing: it may go.
    let d = sim.beat(1, true);
    expect![[r#"
        => BrokerHeartbeat(HeartbeatReply { is_caught_up: true, is_fenced: false, should_shutdown: true })
    "#]]
    .assert_eq(&render(&d));
    // Placement no longer picks it.
    sim.run(create("after", 4, 1)).unwrap();
    let replicas: Vec<NodeId> =
        sim.image.topics["after"].partitions.values().flat_map(|p| p.replicas.clone()).collect();
    assert!(!replicas.contains(&NodeId(1)), "{replicas:?}");
}

#[test]
fn unclean_election_happens_only_where_the_topic_enables_it() {
    let setup = |unclean: bool| {
        let mut sim = Sim::new();
        for id in 1..=2 {
            sim.live_broker(id);
        }
        sim.run(create_with_replicas("t", &[&[1, 2]])).unwrap();
        if unclean {
            set_topic_config(&mut sim, "t", UNCLEAN_LEADER_ELECTION_ENABLE, "true");
        }
        // 2 drops out of the ISR (it was fenced and came back); then the leader dies.
        sim.fence(2);
        sim.beat(2, false).unwrap();
        sim
    };
    let mut clean = setup(false);
    expect![[r#"
        BrokerRegistrationChange(BrokerRegistrationChangeRecord { broker_id: 1, broker_epoch: 1, fenced: Some(true), in_controlled_shutdown: None })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: -1, isr: [1], replicas: [1, 2], leader_epoch: 1, partition_epoch: 2 })
    "#]]
    .assert_eq(&render_records(clean.fence(1)));
    let mut unclean = setup(true);
    expect![[r#"
        BrokerRegistrationChange(BrokerRegistrationChangeRecord { broker_id: 1, broker_epoch: 1, fenced: Some(true), in_controlled_shutdown: None })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 2, isr: [2], replicas: [1, 2], leader_epoch: 1, partition_epoch: 2 })
    "#]]
    .assert_eq(&render_records(unclean.fence(1)));
    // With no leader and the only ISR member gone, an unclean election on request elects 2.
    check(
        &mut clean,
        ControlRequest::ElectLeaders {
            topics: Some(vec![("t".into(), vec![0])]),
            preferred: false,
        },
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 2, isr: [2], replicas: [1, 2], leader_epoch: 2, partition_epoch: 3 })
            => ElectLeaders([PartitionElection { topic: "t", partition: 0, result: Ok(NodeId(2)) }])
        "#]],
    );
}

#[test]
fn preferred_election_moves_leadership_back_to_the_first_replica() {
    let mut sim = Sim::new();
    for id in 1..=2 {
        sim.live_broker(id);
    }
    sim.run(create_with_replicas("t", &[&[1, 2], &[2, 1]])).unwrap();
    sim.fence(1);
    sim.beat(1, false).unwrap();
    // Out of the ISR: the preferred replica cannot lead yet.
    check(
        &mut sim,
        ControlRequest::ElectLeaders { topics: None, preferred: true },
        expect![[r#"
            => ElectLeaders([PartitionElection { topic: "t", partition: 0, result: Err(PreferredLeaderNotAvailable) }])
        "#]],
    );
    // The replication layer brings it back into the ISR (AlterPartition, not decided here).
    let p = sim.image.partition("t", 0).unwrap().clone();
    let topic_id = sim.image.topics["t"].id;
    sim.commit(vec![rec(crate::records::metadata_record::Record::PartitionChange(
        crate::records::PartitionChangeRecord {
            topic_id: topic_id.0.to_vec(),
            partition_id: 0,
            leader: 2,
            isr: vec![2, 1],
            replicas: vec![1, 2],
            leader_epoch: p.leader_epoch.0,
            partition_epoch: p.partition_epoch.0 + 1,
            ..Default::default()
        },
    ))]);
    check(
        &mut sim,
        ControlRequest::ElectLeaders {
            topics: Some(vec![("t".into(), vec![0, 1, 7]), ("nope".into(), vec![0])]),
            preferred: true,
        },
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [2, 1], replicas: [1, 2], leader_epoch: 2, partition_epoch: 3 })
            => ElectLeaders([PartitionElection { topic: "t", partition: 0, result: Ok(NodeId(1)) }, PartitionElection { topic: "t", partition: 1, result: Err(ElectionNotNeeded) }, PartitionElection { topic: "t", partition: 7, result: Err(UnknownTopicOrPartition) }, PartitionElection { topic: "nope", partition: 0, result: Err(UnknownTopicOrPartition) }])
        "#]],
    );
    // Every partition, all already led by their preferred replica: nothing to report.
    check(
        &mut sim,
        ControlRequest::ElectLeaders { topics: None, preferred: true },
        expect![[r#"
            => ElectLeaders([])
        "#]],
    );
}

fn alter_isr(
    sim: &Sim,
    leader: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    isr: &[i32],
) -> ControlRequest {
    ControlRequest::AlterPartition(AlterPartitionRequest {
        broker_id: NodeId(leader),
        broker_epoch: sim.epoch(leader),
        changes: vec![IsrChange {
            topic: "t".into(),
            partition: 0,
            leader_epoch,
            partition_epoch,
            new_isr: isr.iter().map(|&i| NodeId(i)).collect(),
        }],
    })
}

#[test]
fn alter_partition_changes_the_isr_only_for_the_current_leader_and_epochs() {
    let mut sim = Sim::new();
    for id in 1..=3 {
        sim.live_broker(id);
    }
    sim.run(create_with_replicas("t", &[&[1, 2, 3]])).unwrap();
    // shrink: 3 is lagging
    let req = alter_isr(&sim, 1, 0, 0, &[1, 2]);
    check(
        &mut sim,
        req,
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [1, 2], replicas: [1, 2, 3], leader_epoch: 0, partition_epoch: 1 })
            => AlterPartition(AlterPartitionReply { partitions: [IsrChangeResult { topic: "t", partition: 0, result: Ok(IsrChanged { partition_epoch: 1, isr: [NodeId(1), NodeId(2)] }) }] })
        "#]],
    );
    // a request that saw the old partition epoch is stale
    let req = alter_isr(&sim, 1, 0, 0, &[1, 2, 3]);
    check(
        &mut sim,
        req,
        expect![[r#"
            => AlterPartition(AlterPartitionReply { partitions: [IsrChangeResult { topic: "t", partition: 0, result: Err(InvalidUpdateVersion("t-0: partition epoch is 1, request saw 0")) }] })
        "#]],
    );
    // only the leader may ask
    let req = alter_isr(&sim, 2, 0, 1, &[1, 2, 3]);
    check(
        &mut sim,
        req,
        expect![[r#"
            => AlterPartition(AlterPartitionReply { partitions: [IsrChangeResult { topic: "t", partition: 0, result: Err(FencedLeaderEpoch("t-0: leader is Some(1) at epoch 0, request from 2 at epoch 0")) }] })
        "#]],
    );
    // expand, listed out of order: the ISR keeps replica order
    let req = alter_isr(&sim, 1, 0, 1, &[3, 1, 2]);
    check(
        &mut sim,
        req,
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [1, 2, 3], replicas: [1, 2, 3], leader_epoch: 0, partition_epoch: 2 })
            => AlterPartition(AlterPartitionReply { partitions: [IsrChangeResult { topic: "t", partition: 0, result: Ok(IsrChanged { partition_epoch: 2, isr: [NodeId(1), NodeId(2), NodeId(3)] }) }] })
        "#]],
    );
    // a fenced broker cannot join the ISR
    let req = alter_isr(&sim, 1, 0, 2, &[1, 2]);
    check(
        &mut sim,
        req,
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [1, 2], replicas: [1, 2, 3], leader_epoch: 0, partition_epoch: 3 })
            => AlterPartition(AlterPartitionReply { partitions: [IsrChangeResult { topic: "t", partition: 0, result: Ok(IsrChanged { partition_epoch: 3, isr: [NodeId(1), NodeId(2)] }) }] })
        "#]],
    );
    sim.fence(3);
    let req = alter_isr(&sim, 1, 0, 3, &[1, 2, 3]);
    check(
        &mut sim,
        req,
        expect![[r#"
            => AlterPartition(AlterPartitionReply { partitions: [IsrChangeResult { topic: "t", partition: 0, result: Err(IneligibleReplica("3 is fenced or shutting down")) }] })
        "#]],
    );
}

#[test]
fn alter_partition_decides_each_partition_of_a_batch_on_its_own() {
    let mut sim = Sim::new();
    for id in 1..=3 {
        sim.live_broker(id);
    }
    sim.run(create_with_replicas("t", &[&[1, 2, 3], &[1, 2, 3], &[2, 1, 3]])).unwrap();
    let change = |partition, partition_epoch, isr: &[i32]| IsrChange {
        topic: "t".into(),
        partition,
        leader_epoch: 0,
        partition_epoch,
        new_isr: isr.iter().map(|&i| NodeId(i)).collect(),
    };
    // One record for the good change; the stale, the foreign, the duplicate and the unknown
    // partition each get their own error, and the request as a whole succeeds.
    let req = ControlRequest::AlterPartition(AlterPartitionRequest {
        broker_id: NodeId(1),
        broker_epoch: sim.epoch(1),
        changes: vec![
            change(0, 0, &[1, 2]),
            change(1, 5, &[1, 2]),
            change(2, 0, &[1, 2]),
            change(0, 0, &[1, 3]),
            change(9, 0, &[1, 2]),
        ],
    });
    check(
        &mut sim,
        req,
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [1, 2], replicas: [1, 2, 3], leader_epoch: 0, partition_epoch: 1 })
            => AlterPartition(AlterPartitionReply { partitions: [IsrChangeResult { topic: "t", partition: 0, result: Ok(IsrChanged { partition_epoch: 1, isr: [NodeId(1), NodeId(2)] }) }, IsrChangeResult { topic: "t", partition: 1, result: Err(InvalidUpdateVersion("t-1: partition epoch is 0, request saw 5")) }, IsrChangeResult { topic: "t", partition: 2, result: Err(FencedLeaderEpoch("t-2: leader is Some(2) at epoch 0, request from 1 at epoch 0")) }, IsrChangeResult { topic: "t", partition: 0, result: Err(InvalidRequest("t-0 is listed twice")) }, IsrChangeResult { topic: "t", partition: 9, result: Err(UnknownTopicOrPartition("t-9")) }] })
        "#]],
    );
    // A broker that is not the registered one fails the whole request.
    let req = ControlRequest::AlterPartition(AlterPartitionRequest {
        broker_id: NodeId(1),
        broker_epoch: BrokerEpoch(sim.epoch(1).0 + 100),
        changes: vec![change(1, 0, &[1, 2])],
    });
    check(
        &mut sim,
        req,
        expect![[r#"
        error: broker 1 is not registered or its epoch is stale
    "#]],
    );
}

fn create_many(topics: usize, partitions: i32, rf: i16) -> ControlRequest {
    ControlRequest::CreateTopics(CreateTopicsRequest {
        topics: (0..topics)
            .map(|i| CreateTopic {
                name: format!("t{i}"),
                num_partitions: partitions,
                replication_factor: rf,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

#[test]
fn a_request_over_the_record_cap_is_a_policy_violation_and_writes_nothing() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    let before = sim.image.clone();
    let mut out = String::new();
    // Issue 11: 20 topics of 100,000 partitions each; every topic is legal on its own.
    out.push_str(&render(&sim.run(create_many(20, 100_000, 1))));
    out.push_str(&render(&sim.run(create_many(2, 6_000, 1))));
    // validate_only is refused alike (Kafka checks the total first).
    let ControlRequest::CreateTopics(mut dry) = create_many(2, 6_000, 1) else { unreachable!() };
    dry.validate_only = true;
    out.push_str(&render(&sim.run(ControlRequest::CreateTopics(dry))));
    sim.run(create("grows", 1, 1)).unwrap();
    out.push_str(&render(&sim.run(ControlRequest::CreatePartitions(CreatePartitionsRequest {
        topics: vec![NewPartitions { topic: "grows".into(), count: 50_000, assignments: vec![] }],
        validate_only: false,
    }))));
    expect![[r#"
        error: policy violation: CreateTopics would write 2000020 metadata records; one request may write at most 12000 (about 10,000 partitions): split it into smaller requests
        error: policy violation: CreateTopics would write 12002 metadata records; one request may write at most 12000 (about 10,000 partitions): split it into smaller requests
        error: policy violation: CreateTopics would write 12002 metadata records; one request may write at most 12000 (about 10,000 partitions): split it into smaller requests
        error: policy violation: CreatePartitions would write 49999 metadata records; one request may write at most 12000 (about 10,000 partitions): split it into smaller requests
    "#]]
    .assert_eq(&out);
    assert_eq!(sim.image.topics.keys().collect::<Vec<_>>(), ["grows"]);
    assert_eq!(before.topics.len() + 1, sim.image.topics.len());
}

#[test]
fn a_request_at_the_cap_commits_as_one_entry_within_its_byte_bound() {
    let mut sim = Sim::new();
    for id in 1..=3 {
        sim.live_broker(id);
    }
    // Ten topics of 1,000 partitions, and one topic of 10,000 partitions: both under the cap.
    let d = sim.run(create_many(10, 1_000, 3)).expect("decides");
    assert_eq!(d.records.len(), 10 * 1_001);
    let ControlRequest::CreateTopics(mut big) = create_many(1, 10_000, 3) else { unreachable!() };
    big.topics[0].name = "big".into();
    let d = sim.run(ControlRequest::CreateTopics(big)).expect("decides");
    assert_eq!(d.records.len(), 10_001);
    let entries = split_into_entries(d.records.clone());
    assert_eq!(entries.len(), 1, "a user request commits as one entry");
    assert_eq!(batch_bytes(&d.records), entries[0].encoded_len());
    assert!(entries[0].encoded_len() <= ENTRY_BYTES_MAX / 2);
}

#[test]
fn a_partition_record_at_rf3_fits_its_named_size() {
    use crate::records::{metadata_record::Record, MetadataRecord, PartitionRecord};
    // The widest fields a partition record of a large cluster has: no leader (-1 is ten
    // bytes), broker ids and epochs of several varint bytes each.
    let record = MetadataRecord {
        record: Some(Record::Partition(PartitionRecord {
            topic_id: vec![0xff; 16],
            partition_id: 99_999,
            replicas: vec![1_000, 1_001, 1_002],
            isr: vec![],
            leader: -1,
            leader_epoch: 70_000,
            partition_epoch: 70_000,
            ..Default::default()
        })),
    };
    let bytes = batch_bytes(std::slice::from_ref(&record));
    assert!(bytes <= PARTITION_RECORD_BYTES_RF3, "{bytes} bytes");
}

#[test]
fn a_large_decision_of_the_controller_is_split_into_bounded_entries_in_order() {
    use crate::records::{metadata_record::Record, ConfigRecord, MetadataRecord};
    let config = |i: usize, value_bytes: usize| MetadataRecord {
        record: Some(Record::Config(ConfigRecord {
            resource_type: 2,
            resource_name: format!("r{i}"),
            name: "k".into(),
            value: Some("v".repeat(value_bytes)),
        })),
    };
    let small: Vec<MetadataRecord> = (0..30_000).map(|i| config(i, 1)).collect();
    let entries = split_into_entries(small.clone());
    let sizes: Vec<usize> = entries.iter().map(|e| e.records.len()).collect();
    assert_eq!(sizes, [RECORDS_PER_ENTRY_MAX, RECORDS_PER_ENTRY_MAX, 6_000]);
    let back: Vec<MetadataRecord> = entries.into_iter().flat_map(|e| e.records).collect();
    assert_eq!(back, small);
    // By bytes: 1 MiB records, two to an entry; a record larger than an entry goes alone.
    let large: Vec<MetadataRecord> =
        vec![config(0, 1 << 20), config(1, 1 << 20), config(2, 1 << 20), config(3, 3 << 20)];
    let entries = split_into_entries(large);
    let sizes: Vec<usize> = entries.iter().map(|e| e.records.len()).collect();
    assert_eq!(sizes, [1, 1, 1, 1]);
    assert!(entries[..3].iter().all(|e| e.encoded_len() <= ENTRY_BYTES_MAX));
    assert!(split_into_entries(Vec::new()).is_empty());
}

#[test]
fn fencing_a_broker_that_leads_more_than_the_cap_is_not_refused() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    sim.live_broker(2);
    for i in 0..2 {
        let ControlRequest::CreateTopics(mut r) = create_many(1, 10_000, 2) else { unreachable!() };
        r.topics[0].name = format!("big{i}");
        sim.run(ControlRequest::CreateTopics(r)).expect("decides");
    }
    let d = sim.fence(1);
    assert!(d.records.len() > RECORDS_PER_USER_OP_MAX, "{} records", d.records.len());
    assert!(split_into_entries(d.records).len() >= 2);
}

fn allocate_ids(broker: i32, epoch: BrokerEpoch) -> ControlRequest {
    ControlRequest::AllocateProducerIds(AllocateProducerIdsRequest {
        broker_id: NodeId(broker),
        broker_epoch: epoch,
    })
}

#[test]
fn producer_id_blocks_follow_one_another_and_only_registered_brokers_get_them() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    sim.live_broker(2);
    let (one, two) = (sim.epoch(1), sim.epoch(2));
    check(
        &mut sim,
        allocate_ids(1, one),
        expect![[r#"
            ProducerIds(ProducerIdsRecord { broker_id: 1, broker_epoch: 1, next_producer_id: 1000 })
            => AllocateProducerIds(ProducerIdBlock { first_producer_id: 0, len: 1000 })
        "#]],
    );
    check(
        &mut sim,
        allocate_ids(2, two),
        expect![[r#"
            ProducerIds(ProducerIdsRecord { broker_id: 2, broker_epoch: 3, next_producer_id: 2000 })
            => AllocateProducerIds(ProducerIdBlock { first_producer_id: 1000, len: 1000 })
        "#]],
    );
    // A stale epoch (an earlier incarnation) and an unknown broker: Kafka's STALE_BROKER_EPOCH.
    check(
        &mut sim,
        allocate_ids(1, BrokerEpoch(one.0 - 1)),
        expect![[r#"
            error: broker 1 is not registered or its epoch is stale
        "#]],
    );
    check(
        &mut sim,
        allocate_ids(9, one),
        expect![[r#"
            error: broker 9 is not registered or its epoch is stale
        "#]],
    );
    // A fenced broker keeps its registration and may take ids, as in Kafka.
    sim.fence(2);
    check(
        &mut sim,
        allocate_ids(2, two),
        expect![[r#"
            ProducerIds(ProducerIdsRecord { broker_id: 2, broker_epoch: 3, next_producer_id: 3000 })
            => AllocateProducerIds(ProducerIdBlock { first_producer_id: 2000, len: 1000 })
        "#]],
    );
}

#[test]
fn producer_ids_near_the_end_of_the_range_are_refused_not_wrapped() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    let epoch = sim.epoch(1);
    sim.image.next_producer_id = i64::MAX - i64::from(PRODUCER_ID_BLOCK_SIZE);
    check(
        &mut sim,
        allocate_ids(1, epoch),
        expect![[r#"
            ProducerIds(ProducerIdsRecord { broker_id: 1, broker_epoch: 1, next_producer_id: 9223372036854775807 })
            => AllocateProducerIds(ProducerIdBlock { first_producer_id: 9223372036854774807, len: 1000 })
        "#]],
    );
    check(
        &mut sim,
        allocate_ids(1, epoch),
        expect![[r#"
            error: producer ids are exhausted: the next block would end past 2^63-1
        "#]],
    );
    sim.image.next_producer_id = i64::MAX - i64::from(PRODUCER_ID_BLOCK_SIZE) + 1;
    assert_eq!(
        sim.run(allocate_ids(1, epoch)).unwrap_err(),
        crate::ControlError::ProducerIdsExhausted,
        "a block that would end one past the largest id"
    );
}

fn reassign(partitions: &[(&str, i32, Option<&[i32]>)]) -> ControlRequest {
    ControlRequest::AlterPartitionReassignments(ReassignPartitionsRequest {
        partitions: partitions
            .iter()
            .map(|&(topic, partition, target)| PartitionReassignment {
                topic: topic.into(),
                partition,
                target: target.map(|t| t.iter().map(|&n| NodeId(n)).collect()),
            })
            .collect(),
    })
}

/// An entity as (type, name) pairs.
type Entity<'a> = &'a [(&'a str, Option<&'a str>)];
/// Quota operations as (key, value to set or `None` to remove).
type Ops<'a> = &'a [(&'a str, Option<f64>)];

fn alter_quotas(entries: &[(Entity<'_>, Ops<'_>)], validate_only: bool) -> ControlRequest {
    ControlRequest::AlterClientQuotas(AlterClientQuotasRequest {
        entries: entries
            .iter()
            .map(|(entity, ops)| QuotaAlteration {
                entity: entity
                    .iter()
                    .map(|(t, n)| (t.to_string(), n.map(str::to_string)))
                    .collect(),
                ops: ops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            })
            .collect(),
        validate_only,
    })
}

#[test]
fn reassignment_adds_followers_and_completes_when_every_target_replica_is_in_sync() {
    let mut sim = Sim::new();
    for id in 1..=3 {
        sim.live_broker(id);
    }
    sim.run(create_with_replicas("t", &[&[1]])).unwrap();
    // The target replicas come first; the new ones are followers that must catch up.
    check(
        &mut sim,
        reassign(&[("t", 0, Some(&[2, 1, 3]))]),
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [1], replicas: [2, 1, 3], leader_epoch: 0, partition_epoch: 1, adding_replicas: [2, 3], removing_replicas: [] })
            => AlterPartitionReassignments([PartitionResult { topic: "t", partition: 0, result: Ok(()) }])
        "#]],
    );
    // One of two new replicas in sync: still in progress.
    let req = alter_isr(&sim, 1, 0, 1, &[1, 2]);
    check(
        &mut sim,
        req,
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [2, 1], replicas: [2, 1, 3], leader_epoch: 0, partition_epoch: 2, adding_replicas: [2, 3], removing_replicas: [] })
            => AlterPartition(AlterPartitionReply { partitions: [IsrChangeResult { topic: "t", partition: 0, result: Ok(IsrChanged { partition_epoch: 2, isr: [NodeId(2), NodeId(1)] }) }] })
        "#]],
    );
    // The last one joins: the same change completes the move; leadership stays where it is.
    let req = alter_isr(&sim, 1, 0, 2, &[1, 2, 3]);
    check(
        &mut sim,
        req,
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [2, 1, 3], replicas: [2, 1, 3], leader_epoch: 0, partition_epoch: 3 })
            => AlterPartition(AlterPartitionReply { partitions: [IsrChangeResult { topic: "t", partition: 0, result: Ok(IsrChanged { partition_epoch: 3, isr: [NodeId(2), NodeId(1), NodeId(3)] }) }] })
        "#]],
    );
    assert!(!sim.image.partition("t", 0).unwrap().is_reassigning());
}

#[test]
fn reassignment_away_from_the_leader_moves_leadership_when_it_completes() {
    let mut sim = Sim::new();
    for id in 1..=3 {
        sim.live_broker(id);
    }
    sim.run(create_with_replicas("t", &[&[1, 2, 3]])).unwrap();
    // Every target replica is in sync already: done at once, and the removed leader hands over.
    check(
        &mut sim,
        reassign(&[("t", 0, Some(&[3]))]),
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 3, isr: [3], replicas: [3], leader_epoch: 1, partition_epoch: 1 })
            => AlterPartitionReassignments([PartitionResult { topic: "t", partition: 0, result: Ok(()) }])
        "#]],
    );
    // The same replicas again: nothing to do.
    check(
        &mut sim,
        reassign(&[("t", 0, Some(&[3]))]),
        expect![[r#"
            => AlterPartitionReassignments([PartitionResult { topic: "t", partition: 0, result: Ok(()) }])
        "#]],
    );
    // To a new broker: the leader is a removing replica and keeps leading until the new one
    // is in sync; the completing ISR change hands leadership over.
    sim.run(reassign(&[("t", 0, Some(&[1]))])).unwrap();
    let req = alter_isr(&sim, 3, 1, 2, &[3, 1]);
    check(
        &mut sim,
        req,
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [1], replicas: [1], leader_epoch: 2, partition_epoch: 3 })
            => AlterPartition(AlterPartitionReply { partitions: [IsrChangeResult { topic: "t", partition: 0, result: Ok(IsrChanged { partition_epoch: 3, isr: [NodeId(1)] }) }] })
        "#]],
    );
}

#[test]
fn a_cancelled_reassignment_reverts_to_the_original_replicas() {
    let mut sim = Sim::new();
    for id in 1..=3 {
        sim.live_broker(id);
    }
    sim.run(create_with_replicas("t", &[&[1]])).unwrap();
    sim.run(reassign(&[("t", 0, Some(&[2, 3]))])).unwrap();
    let req = alter_isr(&sim, 1, 0, 1, &[1, 2]);
    sim.run(req).unwrap();
    // A fenced follower leaves the ISR; the reassignment stays recorded.
    let d = sim.fence(2);
    expect![[r#"
        BrokerRegistrationChange(BrokerRegistrationChangeRecord { broker_id: 2, broker_epoch: 3, fenced: Some(true), in_controlled_shutdown: None })
        PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [1], replicas: [2, 3, 1], leader_epoch: 0, partition_epoch: 3, adding_replicas: [2, 3], removing_replicas: [1] })
    "#]]
    .assert_eq(&render_records(d));
    check(
        &mut sim,
        reassign(&[("t", 0, None)]),
        expect![[r#"
            PartitionChange(PartitionChangeRecord { topic_id: _, partition_id: 0, leader: 1, isr: [1], replicas: [1], leader_epoch: 0, partition_epoch: 4 })
            => AlterPartitionReassignments([PartitionResult { topic: "t", partition: 0, result: Ok(()) }])
        "#]],
    );
}

#[test]
fn reassignment_refuses_what_kafka_refuses() {
    let mut sim = Sim::new();
    for id in 1..=3 {
        sim.live_broker(id);
    }
    sim.run(create_with_replicas("t", &[&[1], &[2]])).unwrap();
    check(
        &mut sim,
        reassign(&[
            ("t", 0, Some(&[2, 2])),
            ("t", 1, Some(&[2, 9])),
            ("t", 7, Some(&[1])),
            ("nope", 0, Some(&[1])),
            ("t", 0, None),
            ("t", 1, Some(&[])),
        ]),
        expect![[r#"
            => AlterPartitionReassignments([PartitionResult { topic: "t", partition: 0, result: Err(InvalidReplicaAssignment("duplicate broker in [2, 2]")) }, PartitionResult { topic: "t", partition: 1, result: Err(InvalidReplicaAssignment("broker 9 in [2, 9] is not registered")) }, PartitionResult { topic: "t", partition: 7, result: Err(UnknownTopicOrPartition("t-7")) }, PartitionResult { topic: "nope", partition: 0, result: Err(UnknownTopicOrPartition("nope-0")) }, PartitionResult { topic: "t", partition: 0, result: Err(InvalidRequest("t-0 is listed twice")) }, PartitionResult { topic: "t", partition: 1, result: Err(InvalidRequest("t-1 is listed twice")) }])
        "#]],
    );
    check(
        &mut sim,
        reassign(&[("t", 0, None), ("t", 1, Some(&[]))]),
        expect![[r#"
            => AlterPartitionReassignments([PartitionResult { topic: "t", partition: 0, result: Err(NoReassignmentInProgress("t-0")) }, PartitionResult { topic: "t", partition: 1, result: Err(InvalidReplicaAssignment("the target replica list is empty")) }])
        "#]],
    );
}

#[test]
fn client_quotas_are_validated_per_entry_set_removed_and_kept_in_snapshots() {
    let mut sim = Sim::new();
    let client: &[(&str, Option<&str>)] = &[("client-id", Some("c"))];
    let default_user: &[(&str, Option<&str>)] = &[("user", None), ("client-id", None)];
    check(
        &mut sim,
        alter_quotas(
            &[
                (client, &[("producer_byte_rate", Some(1048576.0))]),
                (
                    default_user,
                    &[("consumer_byte_rate", Some(2e6)), ("request_percentage", Some(50.5))],
                ),
                (&[("ip", Some("1.2.3.4"))], &[("connection_creation_rate", Some(1.0))]),
                (&[("group", Some("g"))], &[("producer_byte_rate", Some(1.0))]),
                (&[("user", Some("a")), ("user", Some("b"))], &[("producer_byte_rate", Some(1.0))]),
                (client, &[("producer_byte_rate", Some(1.5))]),
                (client, &[("producer_byte_rate", Some(0.0))]),
                (client, &[("fetch_rate", Some(1.0))]),
                (&[], &[("producer_byte_rate", Some(1.0))]),
            ],
            false,
        ),
        expect![[r#"
            ClientQuota(ClientQuotaRecord { entity: [QuotaEntityPart { entity_type: "client-id", entity_name: Some("c") }], key: "producer_byte_rate", value: 1048576.0, remove: false })
            ClientQuota(ClientQuotaRecord { entity: [QuotaEntityPart { entity_type: "client-id", entity_name: None }, QuotaEntityPart { entity_type: "user", entity_name: None }], key: "consumer_byte_rate", value: 2000000.0, remove: false })
            ClientQuota(ClientQuotaRecord { entity: [QuotaEntityPart { entity_type: "client-id", entity_name: None }, QuotaEntityPart { entity_type: "user", entity_name: None }], key: "request_percentage", value: 50.5, remove: false })
            => AlterClientQuotas([Ok(()), Ok(()), Err(InvalidRequest("ip quotas (connection_creation_rate) are not supported by strom")), Err(InvalidRequest("unknown client quota entity type 'group'")), Err(InvalidRequest("entity type 'user' given twice")), Err(InvalidRequest("producer_byte_rate must be a whole number of bytes, not 1.5")), Err(InvalidRequest("producer_byte_rate must be a positive number, not 0")), Err(InvalidRequest("unknown client quota key 'fetch_rate'")), Err(InvalidRequest("a client quota entity needs at least one entity type"))])
        "#]],
    );
    check(
        &mut sim,
        alter_quotas(
            &[(client, &[("producer_byte_rate", None), ("consumer_byte_rate", Some(7.0))])],
            true,
        ),
        expect![[r#"
            => AlterClientQuotas([Ok(())])
        "#]],
    );
    check(
        &mut sim,
        alter_quotas(
            &[(client, &[("producer_byte_rate", None), ("consumer_byte_rate", None)])],
            false,
        ),
        expect![[r#"
            ClientQuota(ClientQuotaRecord { entity: [QuotaEntityPart { entity_type: "client-id", entity_name: Some("c") }], key: "producer_byte_rate", value: 0.0, remove: true })
            => AlterClientQuotas([Ok(())])
        "#]],
    );
    assert_eq!(sim.image.client_quotas.len(), 1, "{:?}", sim.image.client_quotas);
    let restored =
        MetadataImage::from_records(sim.image.offset, &sim.image.to_records()).expect("replays");
    assert_eq!(restored, sim.image);
}

#[test]
fn dynamic_broker_configs_are_set_by_broker_id_or_for_every_broker() {
    let mut sim = Sim::new();
    sim.live_broker(1);
    let alter = |name: &str, key: &str, op: AlterConfigOp, value: Option<&str>| {
        ControlRequest::AlterConfigs(AlterConfigsRequest {
            resources: vec![ConfigAlteration {
                resource_type: crate::records::ConfigResourceType::ConfigResourceBroker,
                resource_name: name.into(),
                ops: vec![(key.into(), op, value.map(str::to_string))],
            }],
            incremental: true,
            validate_only: false,
        })
    };
    let rate = "leader.replication.throttled.rate";
    check(
        &mut sim,
        alter("1", rate, AlterConfigOp::Set, Some("51200")),
        expect![[r#"
        Config(ConfigRecord { resource_type: ConfigResourceBroker, resource_name: "1", name: "leader.replication.throttled.rate", value: Some("51200") })
        => AlterConfigs([ResourceResult { resource_type: ConfigResourceBroker, resource_name: "1", result: Ok(()) }])
    "#]],
    );
    check(
        &mut sim,
        alter("", "follower.replication.throttled.rate", AlterConfigOp::Set, Some("1000")),
        expect![[r#"
        Config(ConfigRecord { resource_type: ConfigResourceBroker, resource_name: "", name: "follower.replication.throttled.rate", value: Some("1000") })
        => AlterConfigs([ResourceResult { resource_type: ConfigResourceBroker, resource_name: "", result: Ok(()) }])
    "#]],
    );
    check(
        &mut sim,
        alter("1", "log.retention.ms", AlterConfigOp::Set, Some("1")),
        expect![[r#"
        => AlterConfigs([ResourceResult { resource_type: ConfigResourceBroker, resource_name: "1", result: Err(InvalidConfig("broker config 'log.retention.ms' is read-only: set it in the node's config file and restart")) }])
    "#]],
    );
    check(
        &mut sim,
        alter("1", rate, AlterConfigOp::Set, Some("fast")),
        expect![[r#"
        => AlterConfigs([ResourceResult { resource_type: ConfigResourceBroker, resource_name: "1", result: Err(InvalidConfig("leader.replication.throttled.rate=\"fast\": not an integer")) }])
    "#]],
    );
    check(
        &mut sim,
        alter("one", rate, AlterConfigOp::Set, Some("1")),
        expect![[r#"
            => AlterConfigs([ResourceResult { resource_type: ConfigResourceBroker, resource_name: "one", result: Err(InvalidRequest("broker resource 'one' is not a broker id (a base 10 number) nor \"\" (the default of every broker)")) }])
        "#]],
    );
    check(
        &mut sim,
        alter("1", rate, AlterConfigOp::Delete, None),
        expect![[r#"
            Config(ConfigRecord { resource_type: ConfigResourceBroker, resource_name: "1", name: "leader.replication.throttled.rate", value: None })
            => AlterConfigs([ResourceResult { resource_type: ConfigResourceBroker, resource_name: "1", result: Ok(()) }])
        "#]],
    );
    assert!(sim
        .image
        .configs
        .get(&(crate::records::ConfigResourceType::ConfigResourceBroker as i32, "1".into()))
        .is_none());
}
