//! Produce acknowledgement waits (issue 14): a request's partitions wait for their acks
//! together, so `timeout_ms` bounds the whole request, not each partition in turn.
//!
//! Both followers of two partitions led by node 1 are SIGSTOPped: with two of three nodes
//! stopped there is no controller quorum, so no ISR can shrink and acks=all cannot be met
//! (as in Kafka) until the request's timeout.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{NewTopic, TopicReplication};
use strom_tests::cluster::StromCluster;
use strom_tests::kafka;
use strom_tests::raw::{self, RawConnection};
use strom_tests::{wait_until, with_cluster, ClusterOptions};

/// Kafka's code for an acks=all wait that outlasted the request's `timeout_ms`.
const REQUEST_TIMED_OUT: i16 = 7;
/// The request's acknowledgement timeout.
const ACK_TIMEOUT: Duration = Duration::from_millis(3_000);
/// Bound for the topic's replicas to be in sync before the followers stop.
const IN_SYNC_TIMEOUT: Duration = Duration::from_secs(60);
const PRODUCE_VERSION: i16 = 8;

/// A topic whose partitions 0 and 1 are both led by node 1 and replicated on 2 and 3.
fn create_topic_led_by_1(cluster: &StromCluster, topic: &str) -> anyhow::Result<()> {
    let assignment: [&[i32]; 2] = [&[1, 2, 3], &[1, 3, 2]];
    let new_topic = NewTopic::new(topic, 2, TopicReplication::Variable(&assignment));
    kafka::create_new_topic(&cluster.bootstrap(), &new_topic, &kafka::admin_options())?;
    wait_until(IN_SYNC_TIMEOUT, "both partitions led by node 1 with a full ISR", || {
        for id in cluster.running() {
            let metadata = cluster.metadata(id)?;
            let t = metadata.topic(topic).with_context(|| format!("node {id}: not listed"))?;
            for p in [0, 1] {
                let info = t.partitions.get(&p).with_context(|| format!("no partition {p}"))?;
                let mut isr = info.isr.clone();
                isr.sort_unstable();
                if info.leader != 1 || isr != [1, 2, 3] {
                    bail!("node {id}: {topic}-{p} leader {} ISR {:?}", info.leader, info.isr);
                }
            }
        }
        Ok(Some(()))
    })
}

/// One acks=all Produce to partitions 0 and 1 of `topic` on node 1: each partition's error
/// code, and how long the answer took.
fn produce_to_both(
    cluster: &StromCluster,
    topic: &str,
    value: &[u8],
) -> anyhow::Result<(Vec<(i32, i16)>, Duration)> {
    let mut conn = RawConnection::connect(cluster.kafka_addr(1))?;
    let partitions = [0, 1]
        .into_iter()
        .map(|index| {
            let batch = raw::record_batch(&[value], kafka_now_ms())?;
            Ok(PartitionProduceData::default().with_index(index).with_records(Some(batch)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(ACK_TIMEOUT.as_millis() as i32)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partition_data(partitions)]);
    let started = Instant::now();
    let correlation_id =
        conn.send_request(ApiKey::Produce as i16, PRODUCE_VERSION, &request, PRODUCE_VERSION)?;
    let response: ProduceResponse = conn.read_response(correlation_id, PRODUCE_VERSION)?;
    let elapsed = started.elapsed();
    let mut codes: Vec<(i32, i16)> = response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .map(|p| (p.index, p.error_code))
        .collect();
    codes.sort_unstable();
    Ok((codes, elapsed))
}

fn kafka_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[test]
fn acks_all_timeout_bounds_the_whole_request_not_each_partition() {
    with_cluster(3, ClusterOptions::default(), |cluster| {
        let topic = "acks-two";
        create_topic_led_by_1(cluster, topic)?;
        let (codes, elapsed) = produce_to_both(cluster, topic, b"in-sync")?;
        ensure!(codes == [(0, 0), (1, 0)], "acks=all with a full ISR: {codes:?}");
        eprintln!("acks=all to 2 partitions with a full ISR: answered in {elapsed:?}");

        cluster.sigstop(2)?;
        if let Err(e) = cluster.sigstop(3) {
            cluster.sigcont(2)?;
            return Err(e);
        }
        let stalled = produce_to_both(cluster, topic, b"stalled");
        // Both followers resume whatever the outcome, before it is checked.
        cluster.sigcont(2)?;
        cluster.sigcont(3)?;
        let (codes, elapsed) = stalled?;
        eprintln!(
            "acks=all to 2 partitions, followers stopped, timeout_ms {}: {codes:?} in {elapsed:?}",
            ACK_TIMEOUT.as_millis()
        );
        ensure!(
            codes == [(0, REQUEST_TIMED_OUT), (1, REQUEST_TIMED_OUT)],
            "acks=all with both followers stopped: {codes:?} (7 = REQUEST_TIMED_OUT)"
        );
        ensure!(elapsed >= ACK_TIMEOUT, "answered after {elapsed:?}, before the timeout");
        ensure!(
            elapsed < ACK_TIMEOUT.mul_f64(1.8),
            "answered after {elapsed:?}: the partitions waited one after the other, not \
             together (timeout {ACK_TIMEOUT:?} each)"
        );
        Ok(())
    });
}
