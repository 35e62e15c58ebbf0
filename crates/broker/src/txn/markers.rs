//! The marker sender's rules, without IO (Kafka's `TransactionMarkerChannelManager` and its
//! completion handler): the markers of prepared transactions, grouped by the broker that leads
//! each partition into one WriteTxnMarkers request per broker, at most one request in flight to
//! a broker at a time (markers that arrive meanwhile ride in the next one). A partition whose
//! leader is unknown, or whose leader answers a retriable error (it lost leadership, its ISR is
//! short, it timed out), is asked again after [`RETRY_BACKOFF_MS`], at whichever broker leads
//! it then; a partition whose topic is gone needs no marker. A job is written once every one of
//! its partitions is; it is given up (and the coordinator asks again later) when the partition
//! leader says the producer or coordinator epoch is stale, or after [`GIVE_UP_AFTER_MS`].
//!
//! [`super::sender`] carries out the requests and feeds the answers back.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use strom_metadata::{MetadataImage, NodeId};

use super::TopicPartition;
use crate::errors::KafkaError;
use crate::wire::s;

/// Between two attempts at one partition's marker (Kafka's `retry.backoff.ms`).
pub(crate) const RETRY_BACKOFF_MS: i64 = 100;
/// A job not written by then is reported failed; the coordinator asks for it again on its next
/// tick. Longer than a leader failover takes, so a moving leader does not fail a job.
pub(crate) const GIVE_UP_AFTER_MS: i64 = 30_000;
/// Markers (jobs) in one request; the rest go in the next one to the same broker.
pub(crate) const MARKERS_PER_REQUEST_MAX: usize = 1_000;
const _: () = assert!(RETRY_BACKOFF_MS > 0 && RETRY_BACKOFF_MS < GIVE_UP_AFTER_MS);

/// The markers of one prepared transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MarkerJob {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
    pub partitions: Vec<TopicPartition>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct JobId(u64);

/// Where a partition's marker goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Destination {
    Leader(NodeId),
    /// The partition exists but has no live leader now: ask again later.
    NoLeader,
    /// The partition (or its topic) no longer exists: no marker is needed.
    Gone,
}

/// Where each partition's marker goes, as `image` says.
pub(crate) fn destination(image: &MetadataImage, tp: &TopicPartition) -> Destination {
    match image.partition(&tp.topic, tp.partition) {
        None => Destination::Gone,
        Some(p) => match p.leader {
            Some(leader) if image.is_live(leader) => Destination::Leader(leader),
            _ => Destination::NoLeader,
        },
    }
}

/// One WriteTxnMarkers request for one broker: a marker per job, each for some of its
/// partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MarkerRequest {
    pub node: NodeId,
    pub markers: Vec<(JobId, Vec<TopicPartition>)>,
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finished {
    /// Every partition has its marker (or no longer exists).
    Written,
    /// Stale epoch, or not written in time: the coordinator asks again later.
    GaveUp,
}

/// What one partition's answer means (Kafka's completion handler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Written,
    Retry,
    /// The leader holds a newer producer or coordinator epoch: this job is stale.
    Stale,
}

fn outcome(code: i16) -> Outcome {
    let is = |e: KafkaError| code == e.code();
    if code == 0 {
        Outcome::Written
    } else if is(KafkaError::InvalidProducerEpoch) || is(KafkaError::TransactionCoordinatorFenced) {
        Outcome::Stale
    } else if is(KafkaError::UnsupportedForMessageFormat) || is(KafkaError::UnsupportedVersion) {
        // The producer could not have written to it either (Kafka drops the partition).
        Outcome::Written
    } else {
        // NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, NOT_ENOUGH_REPLICAS(_AFTER_APPEND),
        // REQUEST_TIMED_OUT, KAFKA_STORAGE_ERROR are retriable in Kafka; anything else it takes
        // for a bug, which here is retried until the job gives up, and logged.
        if !(is(KafkaError::NotLeaderOrFollower)
            || is(KafkaError::UnknownTopicOrPartition)
            || is(KafkaError::NotEnoughReplicas)
            || is(KafkaError::NotEnoughReplicasAfterAppend)
            || is(KafkaError::RequestTimedOut)
            || is(KafkaError::KafkaStorageError))
        {
            tracing::warn!(code, "unexpected error writing a transaction marker; retrying");
        }
        Outcome::Retry
    }
}

#[derive(Debug)]
struct Job {
    job: MarkerJob,
    /// Partitions to send once `retry_at_ms` has come.
    waiting: BTreeSet<TopicPartition>,
    /// Partitions in a request in flight.
    sending: BTreeSet<TopicPartition>,
    retry_at_ms: i64,
    give_up_at_ms: i64,
    stale: bool,
}

/// The jobs of the marker sender and the brokers it has a request in flight to.
#[derive(Debug, Default)]
pub(crate) struct MarkerQueue {
    jobs: BTreeMap<JobId, Job>,
    busy: BTreeSet<NodeId>,
    next_id: u64,
}

impl MarkerQueue {
    pub fn add(&mut self, job: MarkerJob, now_ms: i64) -> JobId {
        let id = JobId(self.next_id);
        self.next_id += 1;
        let waiting = job.partitions.iter().cloned().collect();
        self.jobs.insert(
            id,
            Job {
                job,
                waiting,
                sending: BTreeSet::new(),
                retry_at_ms: now_ms,
                give_up_at_ms: now_ms.saturating_add(GIVE_UP_AFTER_MS),
                stale: false,
            },
        );
        id
    }

    /// Jobs held, finished or not.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Nobody waits for the job any more (its coordinator stopped): forget it.
    pub fn cancel(&mut self, id: JobId) {
        self.jobs.remove(&id);
    }

    /// The requests to send now: every waiting partition whose time has come, by the broker
    /// that leads it, to each broker with no request in flight. Partitions without a leader
    /// wait another [`RETRY_BACKOFF_MS`]; those of topics that are gone need no marker.
    pub fn dispatch(
        &mut self,
        now_ms: i64,
        destination: impl Fn(&TopicPartition) -> Destination,
    ) -> Vec<MarkerRequest> {
        let mut requests: BTreeMap<NodeId, Vec<(JobId, Vec<TopicPartition>)>> = BTreeMap::new();
        for (id, job) in &mut self.jobs {
            if job.stale || job.waiting.is_empty() || job.retry_at_ms > now_ms {
                continue;
            }
            let mut by_node: BTreeMap<NodeId, Vec<TopicPartition>> = BTreeMap::new();
            let mut no_leader = false;
            for tp in std::mem::take(&mut job.waiting) {
                match destination(&tp) {
                    Destination::Gone => {
                        tracing::info!(
                            transactional_id = job.job.transactional_id,
                            topic = tp.topic,
                            partition = tp.partition,
                            "partition is gone; its transaction marker is not needed"
                        );
                    }
                    Destination::NoLeader => {
                        no_leader = true;
                        job.waiting.insert(tp);
                    }
                    Destination::Leader(node) => {
                        let full =
                            requests.get(&node).is_some_and(|r| r.len() >= MARKERS_PER_REQUEST_MAX);
                        if self.busy.contains(&node) || full {
                            job.waiting.insert(tp);
                        } else {
                            by_node.entry(node).or_default().push(tp);
                        }
                    }
                }
            }
            if no_leader {
                job.retry_at_ms = now_ms + RETRY_BACKOFF_MS;
            }
            for (node, partitions) in by_node {
                job.sending.extend(partitions.iter().cloned());
                requests.entry(node).or_default().push((*id, partitions));
            }
        }
        self.busy.extend(requests.keys().copied());
        requests.into_iter().map(|(node, markers)| MarkerRequest { node, markers }).collect()
    }

    /// The WriteTxnMarkers v1 body of `request`.
    pub fn request_body(&self, request: &MarkerRequest) -> WriteTxnMarkersRequest {
        let markers = request
            .markers
            .iter()
            .filter_map(|(id, partitions)| {
                let job = &self.jobs.get(id)?.job;
                let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
                for tp in partitions {
                    match topics.last_mut() {
                        Some(t) if t.name.as_str() == tp.topic => {
                            t.partition_indexes.push(tp.partition)
                        }
                        _ => topics.push(
                            WritableTxnMarkerTopic::default()
                                .with_name(TopicName(s(tp.topic.clone())))
                                .with_partition_indexes(vec![tp.partition]),
                        ),
                    }
                }
                Some(
                    WritableTxnMarker::default()
                        .with_producer_id(ProducerId(job.producer_id))
                        .with_producer_epoch(job.producer_epoch)
                        .with_transaction_result(job.commit)
                        .with_coordinator_epoch(job.coordinator_epoch)
                        .with_topics(topics),
                )
            })
            .collect();
        WriteTxnMarkersRequest::default().with_markers(markers)
    }

    /// The broker's answer to `request`. Markers are matched to the answer by producer id; a
    /// partition the answer leaves out is asked again.
    pub fn answered(
        &mut self,
        now_ms: i64,
        request: MarkerRequest,
        response: &WriteTxnMarkersResponse,
    ) {
        self.busy.remove(&request.node);
        let mut codes: BTreeMap<(i64, &str, i32), i16> = BTreeMap::new();
        for m in &response.markers {
            for t in &m.topics {
                for p in &t.partitions {
                    codes.insert(
                        (m.producer_id.0, t.name.as_str(), p.partition_index),
                        p.error_code,
                    );
                }
            }
        }
        for (id, partitions) in request.markers {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            let producer_id = job.job.producer_id;
            for tp in partitions {
                job.sending.remove(&tp);
                let code = codes.get(&(producer_id, tp.topic.as_str(), tp.partition)).copied();
                match code.map_or(Outcome::Retry, outcome) {
                    Outcome::Written => {}
                    Outcome::Retry => {
                        job.waiting.insert(tp);
                        job.retry_at_ms = now_ms + RETRY_BACKOFF_MS;
                    }
                    Outcome::Stale => {
                        tracing::info!(
                            transactional_id = job.job.transactional_id,
                            code,
                            topic = tp.topic,
                            partition = tp.partition,
                            "transaction marker refused for a stale epoch; giving up on it"
                        );
                        job.stale = true;
                    }
                }
            }
        }
    }

    /// `request` got no answer (no connection, a timeout): its partitions are asked again.
    pub fn failed(&mut self, now_ms: i64, request: MarkerRequest) {
        self.busy.remove(&request.node);
        for (id, partitions) in request.markers {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            for tp in partitions {
                job.sending.remove(&tp);
                job.waiting.insert(tp);
            }
            job.retry_at_ms = now_ms + RETRY_BACKOFF_MS;
        }
    }

    /// The jobs that ended, taken out of the queue. A job with a request in flight waits for
    /// its answer first, so that a late answer never reaches a job asked again meanwhile.
    pub fn take_finished(&mut self, now_ms: i64) -> Vec<(JobId, Finished)> {
        let ended: Vec<(JobId, Finished)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.sending.is_empty())
            .filter_map(|(id, j)| {
                if j.stale || (!j.waiting.is_empty() && now_ms >= j.give_up_at_ms) {
                    Some((*id, Finished::GaveUp))
                } else if j.waiting.is_empty() {
                    Some((*id, Finished::Written))
                } else {
                    None
                }
            })
            .collect();
        for (id, _) in &ended {
            self.jobs.remove(id);
        }
        ended
    }

    /// When, after `now_ms`, [`MarkerQueue::dispatch`] or [`MarkerQueue::take_finished`] next
    /// has something to do without an answer arriving, if ever. (A partition due now that was
    /// not sent waits for its broker's answer, which is an event of its own.)
    pub fn next_due_ms(&self, now_ms: i64) -> Option<i64> {
        self.jobs
            .values()
            .filter(|j| !j.waiting.is_empty())
            .flat_map(|j| [j.retry_at_ms, j.give_up_at_ms])
            .filter(|&t| t > now_ms)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::write_txn_markers_response::{
        WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    };

    use super::*;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition { topic: topic.into(), partition }
    }

    fn job(producer_id: i64, partitions: &[TopicPartition]) -> MarkerJob {
        MarkerJob {
            transactional_id: format!("tx-{producer_id}"),
            producer_id,
            producer_epoch: 2,
            commit: true,
            coordinator_epoch: 7,
            partitions: partitions.to_vec(),
        }
    }

    /// Partitions of topic "a" are led by broker 1, of "b" by broker 2; "gone" does not exist,
    /// "orphan" has no leader.
    fn leaders(tp: &TopicPartition) -> Destination {
        match tp.topic.as_str() {
            "a" => Destination::Leader(NodeId(1)),
            "b" => Destination::Leader(NodeId(2)),
            "gone" => Destination::Gone,
            _ => Destination::NoLeader,
        }
    }

    /// The answer of a leader to `request`: `code_of` each partition.
    fn answer(
        q: &MarkerQueue,
        request: &MarkerRequest,
        code_of: impl Fn(&TopicPartition) -> i16,
    ) -> WriteTxnMarkersResponse {
        let body = q.request_body(request);
        let markers = body
            .markers
            .iter()
            .map(|m| {
                let topics = m
                    .topics
                    .iter()
                    .map(|t| {
                        let partitions = t
                            .partition_indexes
                            .iter()
                            .map(|&p| {
                                let code = code_of(&tp(t.name.as_str(), p));
                                WritableTxnMarkerPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_error_code(code)
                            })
                            .collect();
                        WritableTxnMarkerTopicResult::default()
                            .with_name(t.name.clone())
                            .with_partitions(partitions)
                    })
                    .collect();
                WritableTxnMarkerResult::default()
                    .with_producer_id(m.producer_id)
                    .with_topics(topics)
            })
            .collect();
        WriteTxnMarkersResponse::default().with_markers(markers)
    }

    #[test]
    fn markers_are_grouped_into_one_request_per_leader_and_written_when_all_answer() {
        let mut q = MarkerQueue::default();
        let one = q.add(job(10, &[tp("a", 0), tp("b", 0), tp("a", 1)]), 0);
        let two = q.add(job(11, &[tp("a", 2)]), 0);
        let requests = q.dispatch(0, leaders);
        assert_eq!(
            requests,
            vec![
                MarkerRequest {
                    node: NodeId(1),
                    markers: vec![(one, vec![tp("a", 0), tp("a", 1)]), (two, vec![tp("a", 2)])],
                },
                MarkerRequest { node: NodeId(2), markers: vec![(one, vec![tp("b", 0)])] },
            ]
        );
        let body = q.request_body(&requests[0]);
        assert_eq!(body.markers.len(), 2);
        let m = &body.markers[0];
        assert_eq!((m.producer_id.0, m.producer_epoch, m.coordinator_epoch), (10, 2, 7));
        assert!(m.transaction_result);
        assert_eq!(m.topics.len(), 1, "partitions of one topic share its entry");
        assert_eq!(m.topics[0].partition_indexes, vec![0, 1]);
        assert!(q.dispatch(0, leaders).is_empty(), "nothing more to send");

        let ok = |_: &TopicPartition| 0;
        let (to_1, to_2) = (requests[0].clone(), requests[1].clone());
        let r = answer(&q, &to_1, ok);
        q.answered(5, to_1, &r);
        assert_eq!(q.take_finished(5), vec![(two, Finished::Written)]);
        let r = answer(&q, &to_2, ok);
        q.answered(6, to_2, &r);
        assert_eq!(q.take_finished(6), vec![(one, Finished::Written)]);
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_due_ms(6), None);
    }

    #[test]
    fn a_moved_leader_is_retried_at_the_new_leader_after_a_backoff() {
        let mut q = MarkerQueue::default();
        let id = q.add(job(10, &[tp("a", 0), tp("a", 1)]), 0);
        let request = q.dispatch(0, leaders).remove(0);
        let not_leader = i16::from(KafkaError::NotLeaderOrFollower);
        let r = answer(&q, &request, |tp| if tp.partition == 1 { not_leader } else { 0 });
        q.answered(10, request, &r);
        assert!(q.take_finished(10).is_empty(), "one partition still has no marker");
        assert_eq!(q.next_due_ms(10), Some(10 + RETRY_BACKOFF_MS));
        assert!(q.dispatch(10, leaders).is_empty(), "not before the backoff");
        // Partition a-1 now has broker 3 as leader.
        let moved = |tp: &TopicPartition| {
            if tp.partition == 1 {
                Destination::Leader(NodeId(3))
            } else {
                leaders(tp)
            }
        };
        let retry = q.dispatch(10 + RETRY_BACKOFF_MS, moved);
        assert_eq!(
            retry,
            vec![MarkerRequest { node: NodeId(3), markers: vec![(id, vec![tp("a", 1)])] }]
        );
        let r = answer(&q, &retry[0], |_| 0);
        q.answered(200, retry[0].clone(), &r);
        assert_eq!(q.take_finished(200), vec![(id, Finished::Written)]);
    }

    #[test]
    fn one_request_per_broker_in_flight_and_later_markers_ride_in_the_next() {
        let mut q = MarkerQueue::default();
        let first = q.add(job(10, &[tp("a", 0)]), 0);
        let request = q.dispatch(0, leaders).remove(0);
        let second = q.add(job(11, &[tp("a", 1)]), 1);
        let third = q.add(job(12, &[tp("a", 2), tp("b", 0)]), 1);
        let sent = q.dispatch(1, leaders);
        assert_eq!(
            sent,
            vec![MarkerRequest { node: NodeId(2), markers: vec![(third, vec![tp("b", 0)])] }],
            "broker 1 is busy"
        );
        assert_eq!(q.next_due_ms(1), Some(1 + GIVE_UP_AFTER_MS), "no spin while broker 1 is busy");
        let r = answer(&q, &request, |_| 0);
        q.answered(2, request, &r);
        assert_eq!(q.take_finished(2), vec![(first, Finished::Written)]);
        let next = q.dispatch(2, leaders);
        assert_eq!(
            next,
            vec![MarkerRequest {
                node: NodeId(1),
                markers: vec![(second, vec![tp("a", 1)]), (third, vec![tp("a", 2)])],
            }]
        );
    }

    #[test]
    fn partitions_without_a_leader_wait_and_gone_ones_need_no_marker() {
        let mut q = MarkerQueue::default();
        let id = q.add(job(10, &[tp("gone", 0), tp("orphan", 0)]), 0);
        assert!(q.dispatch(0, leaders).is_empty());
        assert!(q.take_finished(0).is_empty());
        assert_eq!(q.next_due_ms(0), Some(RETRY_BACKOFF_MS));
        // The orphan gets a leader.
        let led = |tp: &TopicPartition| match tp.topic.as_str() {
            "orphan" => Destination::Leader(NodeId(2)),
            _ => leaders(tp),
        };
        let request = q.dispatch(RETRY_BACKOFF_MS, led).remove(0);
        assert_eq!(request.markers, vec![(id, vec![tp("orphan", 0)])]);
        let r = answer(&q, &request, |_| 0);
        q.answered(RETRY_BACKOFF_MS, request, &r);
        assert_eq!(q.take_finished(RETRY_BACKOFF_MS), vec![(id, Finished::Written)]);
    }

    #[test]
    fn a_lost_answer_is_retried_and_a_job_gives_up_after_its_deadline() {
        let mut q = MarkerQueue::default();
        let id = q.add(job(10, &[tp("a", 0)]), 0);
        let request = q.dispatch(0, leaders).remove(0);
        q.failed(3, request);
        let again = q.dispatch(3 + RETRY_BACKOFF_MS, leaders);
        assert_eq!(again.len(), 1, "asked again after the backoff");
        // An answer that leaves the partition out counts as no answer for it.
        q.answered(4 + RETRY_BACKOFF_MS, again[0].clone(), &WriteTxnMarkersResponse::default());
        assert!(q.take_finished(GIVE_UP_AFTER_MS - 1).is_empty());
        // Still failing when the deadline passes: given up, once nothing is in flight.
        let last = q.dispatch(GIVE_UP_AFTER_MS - 1, leaders).remove(0);
        assert!(q.take_finished(GIVE_UP_AFTER_MS).is_empty(), "a request is in flight");
        q.failed(GIVE_UP_AFTER_MS, last);
        assert_eq!(q.take_finished(GIVE_UP_AFTER_MS), vec![(id, Finished::GaveUp)]);
    }

    #[test]
    fn a_stale_epoch_gives_the_job_up_and_unsupported_partitions_count_as_written() {
        let mut q = MarkerQueue::default();
        let stale = q.add(job(10, &[tp("a", 0), tp("b", 0)]), 0);
        let old_format = q.add(job(11, &[tp("a", 1)]), 0);
        let requests = q.dispatch(0, leaders);
        let fenced = i16::from(KafkaError::TransactionCoordinatorFenced);
        let unsupported = i16::from(KafkaError::UnsupportedForMessageFormat);
        let r = answer(&q, &requests[0], |tp| if tp.partition == 0 { fenced } else { unsupported });
        q.answered(1, requests[0].clone(), &r);
        assert_eq!(q.take_finished(1), vec![(old_format, Finished::Written)]);
        assert!(q.take_finished(1).is_empty(), "the stale job waits for broker 2's answer");
        let r = answer(&q, &requests[1], |_| 0);
        q.answered(2, requests[1].clone(), &r);
        assert_eq!(q.take_finished(2), vec![(stale, Finished::GaveUp)]);
    }

    #[test]
    fn a_request_holds_at_most_its_bound_of_markers() {
        let mut q = MarkerQueue::default();
        for pid in 0..MARKERS_PER_REQUEST_MAX as i64 + 5 {
            q.add(job(pid, &[tp("a", 0)]), 0);
        }
        let first = q.dispatch(0, leaders);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].markers.len(), MARKERS_PER_REQUEST_MAX);
        let r = answer(&q, &first[0], |_| 0);
        q.answered(1, first[0].clone(), &r);
        assert_eq!(q.take_finished(1).len(), MARKERS_PER_REQUEST_MAX);
        assert_eq!(q.dispatch(1, leaders)[0].markers.len(), 5);
    }

    #[test]
    fn a_cancelled_job_ignores_its_late_answer() {
        let mut q = MarkerQueue::default();
        let id = q.add(job(10, &[tp("a", 0)]), 0);
        let request = q.dispatch(0, leaders).remove(0);
        let r = answer(&q, &request, |_| 0);
        q.cancel(id);
        q.answered(1, request, &r);
        assert!(q.take_finished(1).is_empty());
        assert_eq!(q.len(), 0);
        // Broker 1 is free again.
        q.add(job(11, &[tp("a", 0)]), 1);
        assert_eq!(q.dispatch(1, leaders).len(), 1);
    }
}
