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
        let d = self
            .run(ControlRequest::RegisterBroker(RegisterBrokerRequest {
                broker_id: NodeId(id),
                incarnation_id: vec![id as u8; 16],
                endpoints: vec![Endpoint { name: "PLAINTEXT".into(), host: "h".into(), port: 1 }],
                rack: None,
            }))
            .unwrap();
        let ControlResponse::RegisterBroker(epoch) = d.response else { panic!() };
        self.heartbeat(id, epoch);
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
    match d {
        Err(e) => format!("error: {e}\n"),
        Ok(d) => {
            let mut s = String::new();
            for r in &d.records {
                let mut line = format!("{:?}", r.record.as_ref().unwrap());
                // topic ids are random bytes: elide them so cases read clearly
                while let Some(i) = line.find("topic_id: [") {
                    let end = line[i..].find(']').unwrap() + i;
                    line.replace_range(i..=end, "topic_id: _");
                }
                s.push_str(&line);
                s.push('\n');
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
