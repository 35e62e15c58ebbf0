//! Broker sessions run on the clock the controller is given: a test expires one by moving a
//! manual clock, not by waiting out the session timeout.

mod common;

use std::sync::Arc;
use std::time::Duration;

use strom_controller::Controller;
use strom_metadata::control::ControlResponse;
use strom_metadata::records::MetadataRecord;
use strom_metadata::{BrokerEpoch, MetadataImage, MetadataListener, MetadataOffset, NodeId};
use strom_testkit::ManualClock;
use tokio::sync::watch;

/// Publishes every committed image, so the test waits for a state instead of polling.
struct Images(watch::Sender<Arc<MetadataImage>>);

impl MetadataListener for Images {
    fn on_commit(&self, _: MetadataOffset, _: &[MetadataRecord], image: Arc<MetadataImage>) {
        self.0.send_replace(image);
    }
}

/// How long the test waits for the controller's periodic check to act (its interval is half
/// the broker heartbeat interval): a bound on a hang, not a timing assertion.
const ACT_WAIT: Duration = Duration::from_secs(30);

/// A session far longer than the test may run on the wall clock: only the manual clock can
/// end it.
const SESSION_TIMEOUT_MS: u64 = 24 * 3_600 * 1_000;

#[tokio::test]
async fn a_silent_broker_is_fenced_when_the_clock_passes_its_session() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = common::single_voter(dir.path());
    cfg.defaults.session_timeout_ms = SESSION_TIMEOUT_MS;
    let session_ms = i64::try_from(SESSION_TIMEOUT_MS)?;
    let clock = ManualClock::at(0);
    let (tx, mut images) = watch::channel(Arc::new(MetadataImage::default()));
    let controller =
        Controller::start_with_clock(cfg, Arc::new(Images(tx)), Arc::new(clock.clone())).await?;
    let client = controller.client();
    common::live_broker(&client, 1).await?;
    let epoch: BrokerEpoch = controller.image().brokers[&NodeId(1)].epoch;

    // Close to the end of the session a heartbeat renews it, at the clock's time.
    clock.advance(session_ms - 1);
    let beat = common::heartbeat(&client, 1, epoch).await?;
    let ControlResponse::BrokerHeartbeat(reply) = beat else {
        anyhow::bail!("unexpected answer to BrokerHeartbeat: {beat:?}");
    };
    anyhow::ensure!(!reply.is_fenced, "fenced inside its session: {reply:?}");
    assert!(!controller.image().brokers[&NodeId(1)].fenced);

    // Then silence past the session, on the clock only: the next check fences it.
    clock.advance(session_ms + 1);
    let fenced = tokio::time::timeout(
        ACT_WAIT,
        images.wait_for(|i| i.brokers.get(&NodeId(1)).is_some_and(|b| b.fenced)),
    )
    .await;
    anyhow::ensure!(matches!(fenced, Ok(Ok(_))), "broker 1 was not fenced");
    controller.shutdown().await?;
    Ok(())
}
