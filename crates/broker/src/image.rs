//! The broker's view of committed metadata: the latest image, published through a watch
//! channel so handlers read it without locks and waiters wake when it moves, and what changed
//! since the replica manager last looked ([`MetadataDelta`]), so that a commit costs the
//! broker what it changed, not the cluster's size.

use std::sync::{Arc, Mutex, PoisonError};

use strom_metadata::records::MetadataRecord;
use strom_metadata::{MetadataDelta, MetadataImage, MetadataListener, MetadataOffset, NodeId};
use tokio::sync::watch;

/// Receives committed metadata (from the local controller or a follower stream).
pub struct ImageListener {
    tx: watch::Sender<Arc<MetadataImage>>,
    /// Changes not yet taken by the replica manager, merged over the images it skipped. Held
    /// while the image is replaced, so an image and its delta are always taken together.
    pending: Arc<Mutex<MetadataDelta>>,
    node: NodeId,
}

impl ImageListener {
    pub fn new(node: NodeId) -> ImageListener {
        let (tx, _rx) = watch::channel(Arc::new(MetadataImage::default()));
        ImageListener { tx, pending: Arc::new(Mutex::new(MetadataDelta::whole())), node }
    }

    pub(crate) fn cell(&self) -> ImageCell {
        ImageCell { rx: self.tx.subscribe(), pending: self.pending.clone(), node: self.node }
    }

    /// The latest image this listener has seen.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.tx.borrow().clone()
    }
}

impl MetadataListener for ImageListener {
    fn on_commit(
        &self,
        offset: MetadataOffset,
        records: &[MetadataRecord],
        image: Arc<MetadataImage>,
    ) {
        debug_assert!(image.offset >= offset || image.offset == MetadataOffset(0));
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let before = self.tx.borrow().clone();
        pending.merge(MetadataDelta::of_records(&before, &image, records));
        self.tx.send_replace(image);
    }
}

#[derive(Clone)]
pub(crate) struct ImageCell {
    rx: watch::Receiver<Arc<MetadataImage>>,
    pending: Arc<Mutex<MetadataDelta>>,
    pub node: NodeId,
}

impl ImageCell {
    pub fn current(&self) -> Arc<MetadataImage> {
        self.rx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.rx.clone()
    }

    /// The latest image (marked seen on `rx`) and everything that changed since the last call.
    /// Only one follower of the image may take changes: the replica manager.
    pub fn take_changes(
        &self,
        rx: &mut watch::Receiver<Arc<MetadataImage>>,
    ) -> (Arc<MetadataImage>, MetadataDelta) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let image = rx.borrow_and_update().clone();
        (image, std::mem::take(&mut *pending))
    }

    /// Resolves once an image satisfies `ready`.
    pub async fn wait_until(&self, ready: impl Fn(&MetadataImage) -> bool) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|img| ready(img)).await;
    }

    /// Resolves once the image has reached `offset`.
    pub async fn wait_for(&self, offset: MetadataOffset) {
        self.wait_until(|img| img.offset >= offset).await
    }
}

#[cfg(test)]
mod tests {
    use strom_metadata::records::{
        metadata_record::Record, MetadataRecord, PartitionChangeRecord, PartitionRecord,
        TopicRecord,
    };

    use super::*;

    fn wrap(r: Record) -> MetadataRecord {
        MetadataRecord { record: Some(r) }
    }

    fn create(name: &str, id: u8) -> Vec<MetadataRecord> {
        vec![
            wrap(Record::Topic(TopicRecord { name: name.into(), topic_id: vec![id; 16] })),
            wrap(Record::Partition(PartitionRecord {
                topic_id: vec![id; 16],
                partition_id: 0,
                replicas: vec![1],
                isr: vec![1],
                leader: 1,
                leader_epoch: 0,
                partition_epoch: 0,
                ..Default::default()
            })),
        ]
    }

    #[test]
    fn the_reconciler_takes_the_changes_of_every_image_it_skipped() {
        let listener = ImageListener::new(NodeId(1));
        let cell = listener.cell();
        let mut rx = cell.subscribe();
        let mut image = MetadataImage::default();
        let mut commit = |offset: u64, records: Vec<MetadataRecord>| {
            image.apply_batch(MetadataOffset(offset), &records).expect("applies");
            listener.on_commit(MetadataOffset(offset), &records, Arc::new(image.clone()));
        };
        commit(1, create("a", 1));
        let (first, delta) = cell.take_changes(&mut rx);
        assert_eq!(first.offset, MetadataOffset(1));
        assert!(delta.whole, "the first image is looked at as a whole");
        commit(2, create("b", 2));
        commit(3, create("c", 3));
        let change = wrap(Record::PartitionChange(PartitionChangeRecord {
            topic_id: vec![2; 16],
            partition_id: 0,
            leader: -1,
            isr: vec![1],
            replicas: vec![1],
            leader_epoch: 1,
            partition_epoch: 1,
            ..Default::default()
        }));
        commit(4, vec![change]);
        let (latest, delta) = cell.take_changes(&mut rx);
        assert_eq!(latest.offset, MetadataOffset(4));
        assert!(!delta.whole);
        assert_eq!(delta.topics.iter().map(String::as_str).collect::<Vec<_>>(), ["b", "c"]);
        assert!(!rx.has_changed().expect("open"), "the image was marked seen");
        let (_, nothing) = cell.take_changes(&mut rx);
        assert!(nothing.is_empty());
    }
}
