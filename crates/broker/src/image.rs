//! The broker's view of committed metadata: the latest image, published through a watch
//! channel so handlers read it without locks and waiters wake when it moves.

use std::sync::Arc;

use strom_metadata::records::MetadataRecord;
use strom_metadata::{MetadataImage, MetadataListener, MetadataOffset, NodeId};
use tokio::sync::watch;

/// Receives committed metadata (from the local controller or a follower stream).
pub struct ImageListener {
    tx: watch::Sender<Arc<MetadataImage>>,
    node: NodeId,
}

impl ImageListener {
    pub fn new(node: NodeId) -> ImageListener {
        let (tx, _rx) = watch::channel(Arc::new(MetadataImage::default()));
        ImageListener { tx, node }
    }

    pub(crate) fn cell(&self) -> ImageCell {
        ImageCell { rx: self.tx.subscribe(), node: self.node }
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
        _records: &[MetadataRecord],
        image: Arc<MetadataImage>,
    ) {
        debug_assert!(image.offset >= offset || image.offset == MetadataOffset(0));
        self.tx.send_replace(image);
    }
}

#[derive(Clone)]
pub(crate) struct ImageCell {
    rx: watch::Receiver<Arc<MetadataImage>>,
    pub node: NodeId,
}

impl ImageCell {
    pub fn current(&self) -> Arc<MetadataImage> {
        self.rx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.rx.clone()
    }

    /// Resolves once the image has reached `offset`.
    pub async fn wait_for(&self, offset: MetadataOffset) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|img| img.offset >= offset).await;
    }
}
