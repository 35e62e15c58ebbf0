//! The cost of one metadata commit against the size of the cluster (issue 14): one
//! `PartitionChange` applied to images of 1,000 to 50,000 partitions the way the state
//! machine does it (copy-on-write over an image a reader still holds), handed on as an `Arc`
//! with its `MetadataDelta`, the reader's old image then dropped. No nodes, no IO: a figure
//! per commit, next to the deep copy of the image that each commit made before.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use strom_metadata::records::{
    metadata_record::Record, MetadataRecord, PartitionChangeRecord, PartitionRecord, TopicRecord,
};
use strom_metadata::{MetadataDelta, MetadataImage, MetadataOffset};

const SIZES: [i32; 3] = [1_000, 10_000, 50_000];
const COMMITS: u32 = 2_000;

fn wrap(r: Record) -> MetadataRecord {
    MetadataRecord { record: Some(r) }
}

fn topic_id(t: i32) -> Vec<u8> {
    let mut id = vec![0u8; 16];
    id[..4].copy_from_slice(&(t + 1).to_be_bytes());
    id
}

/// An image of `partitions` partitions in topics of `per_topic`, over 3 brokers' ids.
fn image(partitions: i32, per_topic: i32) -> MetadataImage {
    let mut records = Vec::new();
    for t in 0..partitions / per_topic {
        records.push(wrap(Record::Topic(TopicRecord {
            name: format!("topic-{t:06}"),
            topic_id: topic_id(t),
        })));
        for p in 0..per_topic {
            records.push(wrap(Record::Partition(PartitionRecord {
                topic_id: topic_id(t),
                partition_id: p,
                replicas: vec![1, 2, 3],
                isr: vec![1, 2, 3],
                leader: 1 + p % 3,
                leader_epoch: 0,
                partition_epoch: 0,
                ..Default::default()
            })));
        }
    }
    MetadataImage::from_records(MetadataOffset(1), &records).expect("bench image applies")
}

fn change(i: u32, topics: i32, per_topic: i32, epoch: i32) -> MetadataRecord {
    let i = i as i32;
    wrap(Record::PartitionChange(PartitionChangeRecord {
        topic_id: topic_id(i % topics),
        partition_id: (i / topics) % per_topic,
        leader: 1 + epoch % 3,
        isr: vec![1, 2, 3],
        replicas: vec![1, 2, 3],
        leader_epoch: epoch,
        partition_epoch: epoch,
        ..Default::default()
    }))
}

/// µs per commit: apply (copy-on-write) + hand-off (`Arc` clone) + the broker's delta.
fn commit_us(partitions: i32, per_topic: i32) -> (f64, f64) {
    let topics = partitions / per_topic;
    let mut state = Arc::new(image(partitions, per_topic));
    // The broker's (and the published) copy: held while the next entry applies, as in a node.
    let mut reader = state.clone();
    let mut changed = 0usize;
    let started = Instant::now();
    for i in 0..COMMITS {
        let record = change(i, topics, per_topic, 1 + i as i32);
        let offset = MetadataOffset(2 + u64::from(i));
        Arc::make_mut(&mut state)
            .apply_batch(offset, std::slice::from_ref(&record))
            .expect("bench change applies");
        let handed = state.clone();
        let delta = MetadataDelta::of_records(&reader, &handed, std::slice::from_ref(&record));
        changed += delta.topics.len();
        reader = handed;
    }
    let cow = started.elapsed().as_secs_f64() * 1e6 / f64::from(COMMITS);
    assert_eq!(changed, COMMITS as usize, "each commit names its one topic");
    // Before: every commit deep-copied the image for the listener.
    let deep_commits = (COMMITS / 10).max(20);
    let started = Instant::now();
    for _ in 0..deep_commits {
        let copy: Vec<_> = reader.topics.values().map(|t| (**t).clone()).collect();
        std::hint::black_box(copy);
    }
    let deep = started.elapsed().as_secs_f64() * 1e6 / f64::from(deep_commits);
    (cow, deep)
}

pub fn run() -> Vec<Value> {
    let mut rows = Vec::new();
    println!("metadata commit (one PartitionChange), µs per commit: apply + hand-off + delta | deep copy (before)");
    for per_topic in [100, 1_000] {
        for partitions in SIZES {
            let (cow, deep) = commit_us(partitions, per_topic);
            println!(
                "  {partitions:>6} partitions in topics of {per_topic:>5}: {cow:>8.2} µs | {deep:>10.1} µs"
            );
            rows.push(json!({
                "partitions": partitions,
                "partitions_per_topic": per_topic,
                "commit_us": cow,
                "deep_copy_us": deep,
            }));
        }
    }
    rows
}
