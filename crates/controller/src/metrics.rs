//! The active controller's metrics (`prometheus-client`): how long a request waits in the
//! event queue before the task takes it up (Kafka's EventQueueTimeMs) and how long the task
//! then spends on it (EventQueueProcessingTimeMs, the commit included), and, while this node
//! leads, how far each registered broker's applied metadata trails the leader's (the offsets
//! their heartbeats report). The binary registers them beside the broker's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use strom_metadata::{MetadataImage, NodeId};
use tokio::sync::watch;

/// Buckets: 0.1 ms to about 26 s, doubling (as the broker's request latencies).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 19))
}

/// What the active-controller task records; one per controller node.
#[derive(Debug)]
pub(crate) struct ControllerMetrics {
    queue_time: Histogram,
    processing_time: Histogram,
    /// The metadata offset each registered broker last reported in a heartbeat, this term;
    /// empty while this node does not lead.
    broker_offsets: Mutex<BTreeMap<i32, u64>>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics {
            queue_time: latency_histogram(),
            processing_time: latency_histogram(),
            broker_offsets: Mutex::default(),
        }
    }
}

impl ControllerMetrics {
    /// The task took up a request that waited `queued` in its queue (and backlog), and spent
    /// `processing` on it.
    pub(crate) fn event_handled(&self, queued: Duration, processing: Duration) {
        self.queue_time.observe(queued.as_secs_f64());
        self.processing_time.observe(processing.as_secs_f64());
    }

    /// The brokers' reported offsets as the task knows them now.
    pub(crate) fn set_broker_offsets(&self, offsets: impl Iterator<Item = (i32, u64)>) {
        let mut known = self.broker_offsets.lock().unwrap_or_else(PoisonError::into_inner);
        known.clear();
        known.extend(offsets);
    }

    /// Each broker's lag behind `image`: its offset minus theirs, for the registered brokers
    /// heard from (none while this node does not lead).
    fn lags(&self, image: &MetadataImage) -> Vec<(i32, u64)> {
        let known = self.broker_offsets.lock().unwrap_or_else(PoisonError::into_inner);
        known
            .iter()
            .filter(|(id, _)| image.brokers.contains_key(&NodeId(**id)))
            .map(|(id, offset)| (*id, image.offset.0.saturating_sub(*offset)))
            .collect()
    }
}

/// A controller's metrics as the binary sees them.
#[derive(Clone)]
pub struct ControllerMetricsHandle {
    pub(crate) metrics: Arc<ControllerMetrics>,
    pub(crate) image: watch::Receiver<Arc<MetadataImage>>,
}

impl ControllerMetricsHandle {
    /// Adds the controller's metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "strom_controller_event_queue_time_seconds",
            "How long a controller request waited before the active controller took it up",
            self.metrics.queue_time.clone(),
        );
        registry.register(
            "strom_controller_event_queue_processing_time_seconds",
            "How long the active controller spent on a request, its commit included",
            self.metrics.processing_time.clone(),
        );
        registry.register_collector(Box::new(MetadataLag {
            metrics: self.metrics.clone(),
            image: self.image.clone(),
        }));
    }
}

/// `strom_broker_metadata_lag{broker}`, computed at scrape time against the image then.
#[derive(Debug)]
struct MetadataLag {
    metrics: Arc<ControllerMetrics>,
    image: watch::Receiver<Arc<MetadataImage>>,
}

impl Collector for MetadataLag {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let image = self.image.borrow().clone();
        let lags = self.metrics.lags(&image);
        let mut family = encoder.encode_descriptor(
            "strom_broker_metadata_lag",
            "On the active controller: metadata offsets a registered broker's applied image \
             trails the controller's, as of its last heartbeat",
            None,
            MetricType::Gauge,
        )?;
        for (broker, lag) in lags {
            let broker = broker.to_string();
            let labels = [("broker", broker.as_str())];
            let lag = i64::try_from(lag).unwrap_or(i64::MAX);
            ConstGauge::new(lag).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_image_offset_minus_each_registered_brokers_report() {
        let metrics = ControllerMetrics::default();
        metrics.set_broker_offsets([(1, 40), (2, 50), (9, 10)].into_iter());
        let mut image =
            MetadataImage { offset: strom_metadata::MetadataOffset(50), ..Default::default() };
        assert_eq!(metrics.lags(&image), Vec::<(i32, u64)>::new(), "none registered");
        for id in [1, 2] {
            let broker = strom_metadata::BrokerImage {
                id: NodeId(id),
                epoch: strom_metadata::BrokerEpoch(1),
                incarnation_id: Vec::new(),
                endpoints: Vec::new(),
                rack: None,
                fenced: false,
                in_controlled_shutdown: false,
            };
            image.brokers.insert(NodeId(id), broker);
        }
        assert_eq!(metrics.lags(&image), vec![(1, 10), (2, 0)]);
        metrics.set_broker_offsets(std::iter::empty());
        assert_eq!(metrics.lags(&image), Vec::<(i32, u64)>::new(), "not leading");
    }
}
