//! Producer ids for InitProducerId (Kafka's RPCProducerIdManager): this broker holds a block of
//! ids that the active controller committed for it (`AllocateProducerIds`), hands them out in
//! order, and asks for the next block once 90% of the current one is gone, so that a producer
//! rarely waits for the controller. An id is only ever taken from a committed block, so ids
//! stay unique across brokers, restarts and controller failover; a block a broker never heard
//! of (its answer was lost) is skipped, never reused.
//!
//! [`IdBlocks`] is the sans-IO core (which id is next, when to ask); [`ProducerIdManager`]
//! is its shell: it asks through a [`BlockSource`] (the controller client, or a stub in
//! tests), at most one request at a time, and lets a caller wait a bounded time for a block.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use strom_metadata::control::{
    AllocateProducerIdsRequest, ControlRequest, ControlResponse, ProducerIdBlock,
};
use strom_metadata::{BoxFuture, BrokerEpoch, Clock, ControlError, ControllerClient, NodeId};
use tokio::sync::watch;

/// Share of a block handed out before the next one is asked for (Kafka's
/// `PID_PREFETCH_THRESHOLD`, 0.90).
pub(crate) const PREFETCH_PERCENT: i64 = 90;

/// After a refused or unanswered request for a block, none is sent for this long (Kafka's
/// `RETRY_BACKOFF_MS`).
pub(crate) const FETCH_RETRY_BACKOFF_MS: i64 = 50;

/// How long an InitProducerId waits for a block that is on its way before it is answered
/// COORDINATOR_LOAD_IN_PROGRESS (retriable for every client, unlike REQUEST_TIMED_OUT, which
/// older clients take as fatal; Kafka answers it at once). Below every client's request
/// timeout, above what a commit takes while the quorum is healthy.
pub(crate) const BLOCK_WAIT_MS_MAX: u64 = 5_000;

const _: () = assert!(0 < PREFETCH_PERCENT && PREFETCH_PERCENT < 100);
const _: () =
    assert!(FETCH_RETRY_BACKOFF_MS > 0 && (FETCH_RETRY_BACKOFF_MS as u64) < BLOCK_WAIT_MS_MAX);

/// Why no producer id could be handed out; both are COORDINATOR_LOAD_IN_PROGRESS to the client,
/// which retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProducerIdError {
    /// The current block is used up and the next one did not arrive within the wait.
    BlockPending,
    /// The current block is used up and the controller refused or did not answer the last
    /// request for the next one; it is asked again after a short backoff.
    BlockUnavailable,
}

/// A block being handed out: ids `next .. end` are still free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    first: i64,
    next: i64,
    end: i64,
}

/// What a claim asks of the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    /// The id handed out, if one was free.
    pub id: Option<i64>,
    /// Ask the controller for the next block now. Never while a request is in flight.
    pub fetch: bool,
}

/// The blocks of one broker, without IO or a clock: `claim` hands out ids and says when to
/// ask for a block, `on_block` / `on_fetch_failed` take the answer.
#[derive(Debug, Default)]
pub(crate) struct IdBlocks {
    current: Option<Block>,
    /// Asked for ahead of time; taken when `current` is used up.
    next: Option<Block>,
    /// A request for a block is in flight.
    fetching: bool,
    /// No request before this time (after a failure).
    retry_at_ms: i64,
    /// Failures since the last block arrived.
    failures: u32,
}

impl IdBlocks {
    /// Hands out the next free id, if any, and says whether to ask for a block now: when the
    /// id used up [`PREFETCH_PERCENT`] of its block and no next block is held, or when no id
    /// is left.
    pub fn claim(&mut self, now_ms: i64) -> Claim {
        if self.current.is_none_or(|c| c.next == c.end) {
            if let Some(next) = self.next.take() {
                self.current = Some(next);
            }
        }
        let (id, wanted) = match &mut self.current {
            Some(c) if c.next < c.end => {
                let id = c.next;
                c.next += 1;
                let used_percent_reached =
                    (id - c.first) * 100 >= (c.end - c.first) * PREFETCH_PERCENT;
                (Some(id), used_percent_reached && self.next.is_none())
            }
            _ => (None, true),
        };
        let fetch = wanted && !self.fetching && now_ms >= self.retry_at_ms;
        self.fetching |= fetch;
        Claim { id, fetch }
    }

    /// A request for a block is in flight: a caller with no id may wait for its answer.
    pub fn is_fetching(&self) -> bool {
        self.fetching
    }

    /// The controller's answer. A block that is malformed or not above every id this broker
    /// has held is refused (a bug elsewhere: handing it out could repeat an id) and counts
    /// as a failure. Returns whether the block was taken.
    pub fn on_block(&mut self, block: ProducerIdBlock, now_ms: i64) -> bool {
        debug_assert!(self.fetching, "a block arrived that nobody asked for");
        let floor = self.next.or(self.current).map_or(0, |b| b.end);
        let end = block.end().filter(|_| block.len > 0 && block.first_producer_id >= floor);
        let Some(end) = end else {
            self.on_fetch_failed(now_ms);
            return false;
        };
        self.fetching = false;
        self.failures = 0;
        let first = block.first_producer_id;
        self.next = Some(Block { first, next: first, end });
        true
    }

    /// The request for a block was refused or not answered: ask again after a backoff.
    /// Returns whether this is the first failure since a block last arrived.
    pub fn on_fetch_failed(&mut self, now_ms: i64) -> bool {
        self.fetching = false;
        self.retry_at_ms = now_ms.saturating_add(FETCH_RETRY_BACKOFF_MS);
        self.failures = self.failures.saturating_add(1);
        self.failures == 1
    }
}

/// Where blocks come from: the active controller, which answers once the block is committed.
pub(crate) trait BlockSource: Send + Sync + 'static {
    fn allocate(
        &self,
        broker: NodeId,
        epoch: BrokerEpoch,
    ) -> BoxFuture<Result<ProducerIdBlock, ControlError>>;
}

/// The broker's block source: `AllocateProducerIds` through the node's controller client.
pub(crate) struct ControllerBlocks(pub Arc<dyn ControllerClient>);

impl BlockSource for ControllerBlocks {
    fn allocate(
        &self,
        broker: NodeId,
        epoch: BrokerEpoch,
    ) -> BoxFuture<Result<ProducerIdBlock, ControlError>> {
        let request = ControlRequest::AllocateProducerIds(AllocateProducerIdsRequest {
            broker_id: broker,
            broker_epoch: epoch,
        });
        let answer = self.0.submit(request);
        Box::pin(async move {
            match answer.await? {
                ControlResponse::AllocateProducerIds(block) => Ok(block),
                other => Err(ControlError::InvalidRequest(format!(
                    "AllocateProducerIds answered with {other:?}"
                ))),
            }
        })
    }
}

/// This broker's producer ids: [`IdBlocks`] behind a short lock, with at most one request
/// for a block in flight and callers woken when its answer comes.
pub(crate) struct ProducerIdManager {
    node: NodeId,
    source: Arc<dyn BlockSource>,
    clock: Arc<dyn Clock>,
    blocks: Mutex<IdBlocks>,
    /// Bumped whenever a request for a block ends, well or not.
    answered: watch::Sender<u64>,
    /// How long a caller waits for a block in flight ([`BLOCK_WAIT_MS_MAX`]).
    wait: Duration,
}

impl ProducerIdManager {
    pub fn new(
        node: NodeId,
        source: Arc<dyn BlockSource>,
        clock: Arc<dyn Clock>,
    ) -> ProducerIdManager {
        ProducerIdManager {
            node,
            source,
            clock,
            blocks: Mutex::new(IdBlocks::default()),
            answered: watch::Sender::new(0),
            wait: Duration::from_millis(BLOCK_WAIT_MS_MAX),
        }
    }

    /// A new producer id. `epoch` is this broker's registration (negative before it has
    /// one: then no block can be asked for). Waits at most [`BLOCK_WAIT_MS_MAX`], and only
    /// while a request for a block is in flight.
    pub async fn next_id(self: &Arc<Self>, epoch: BrokerEpoch) -> Result<i64, ProducerIdError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            // Subscribed before looking, so an answer that lands in between still wakes us.
            let mut answered = self.answered.subscribe();
            let (claim, fetching) = {
                let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
                let claim = blocks.claim(self.clock.now_ms());
                (claim, blocks.is_fetching())
            };
            if claim.fetch {
                tokio::spawn(self.clone().fetch(epoch));
            }
            if let Some(id) = claim.id {
                return Ok(id);
            }
            if !fetching {
                return Err(ProducerIdError::BlockUnavailable);
            }
            if tokio::time::timeout_at(deadline, answered.changed()).await.is_err() {
                return Err(ProducerIdError::BlockPending);
            }
        }
    }

    /// Asks for the next block and hands the answer to the core. The controller client bounds
    /// the wait; an answer that never came is a failure, and its block (if it was committed)
    /// is simply never used.
    async fn fetch(self: Arc<Self>, epoch: BrokerEpoch) {
        let answer = if epoch.0 < 0 {
            Err(ControlError::StaleBrokerEpoch(self.node.0))
        } else {
            self.source.allocate(self.node, epoch).await
        };
        let now = self.clock.now_ms();
        {
            let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
            match answer {
                Ok(block) => {
                    if blocks.on_block(block, now) {
                        tracing::debug!(
                            first = block.first_producer_id,
                            len = block.len,
                            "producer id block received"
                        );
                    } else {
                        tracing::error!(
                            first = block.first_producer_id,
                            len = block.len,
                            "the controller sent a producer id block below ids already held or \
                             malformed; refused"
                        );
                    }
                }
                Err(e) => {
                    if blocks.on_fetch_failed(now) {
                        tracing::warn!(error = %e, epoch = epoch.0,
                            "cannot get a block of producer ids from the controller; \
                             InitProducerId answers COORDINATOR_LOAD_IN_PROGRESS until it can");
                    } else {
                        tracing::debug!(error = %e, "producer id block request failed again");
                    }
                }
            }
        }
        self.answered.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use strom_testkit::ManualClock;

    use super::*;

    fn block(first: i64, len: i32) -> ProducerIdBlock {
        ProducerIdBlock { first_producer_id: first, len }
    }

    #[test]
    fn ids_come_in_order_and_the_next_block_is_asked_for_at_ninety_percent() {
        let mut b = IdBlocks::default();
        assert_eq!(b.claim(0), Claim { id: None, fetch: true }, "no block: ask");
        assert_eq!(b.claim(0), Claim { id: None, fetch: false }, "one request at a time");
        assert!(b.on_block(block(0, 10), 0));
        for want in 0..9 {
            assert_eq!(b.claim(0), Claim { id: Some(want), fetch: false });
        }
        assert_eq!(b.claim(0), Claim { id: Some(9), fetch: true }, "90% handed out: ask");
        assert_eq!(b.claim(0), Claim { id: None, fetch: false }, "used up, request in flight");
        assert!(b.on_block(block(2000, 10), 0));
        assert_eq!(b.claim(0), Claim { id: Some(2000), fetch: false }, "the next block's first");
    }

    #[test]
    fn the_prefetched_block_follows_without_a_gap_in_service() {
        let mut b = IdBlocks::default();
        b.claim(0);
        b.on_block(block(100, 10), 0);
        let mut fetches = 0;
        let mut ids = Vec::new();
        for _ in 0..10 {
            let c = b.claim(0);
            ids.extend(c.id);
            if c.fetch {
                fetches += 1;
                assert!(b.on_block(block(5000, 10), 0));
            }
        }
        assert_eq!(fetches, 1, "asked once, at 90%");
        assert_eq!(ids, (100..110).collect::<Vec<_>>());
        assert_eq!(b.claim(0), Claim { id: Some(5000), fetch: false });
    }

    #[test]
    fn a_failed_request_backs_off_then_asks_again() {
        let mut b = IdBlocks::default();
        assert!(b.claim(1_000).fetch);
        assert!(b.on_fetch_failed(1_000), "the first failure in a row");
        assert!(!b.is_fetching());
        assert_eq!(b.claim(1_000 + FETCH_RETRY_BACKOFF_MS - 1), Claim { id: None, fetch: false });
        assert!(b.claim(1_000 + FETCH_RETRY_BACKOFF_MS).fetch, "the backoff is over");
        assert!(!b.on_fetch_failed(2_000), "the second failure in a row");
        assert!(b.claim(3_000).fetch);
        assert!(b.on_block(block(0, 1000), 3_000));
        assert!(b.claim(3_000).id == Some(0));
        // A prefetch that fails leaves the current block in service, then asks again.
        for _ in 1..900 {
            b.claim(3_000);
        }
        assert_eq!(b.claim(3_000), Claim { id: Some(900), fetch: true });
        assert!(b.on_fetch_failed(3_000));
        assert_eq!(b.claim(3_001), Claim { id: Some(901), fetch: false });
        assert_eq!(b.claim(3_000 + FETCH_RETRY_BACKOFF_MS), Claim { id: Some(902), fetch: true });
    }

    #[test]
    fn a_block_below_the_ids_held_or_malformed_is_refused() {
        let mut b = IdBlocks::default();
        b.claim(0);
        assert!(b.on_block(block(1000, 10), 0));
        for _ in 0..10 {
            b.claim(0);
        }
        assert!(b.is_fetching(), "prefetch sent at 90%");
        assert!(!b.on_block(block(1005, 10), 0), "overlaps the current block");
        assert!(b.claim(FETCH_RETRY_BACKOFF_MS).fetch);
        assert!(!b.on_block(block(0, 10), 0), "below the current block");
        b.claim(2 * FETCH_RETRY_BACKOFF_MS);
        assert!(!b.on_block(block(i64::MAX - 5, 10), 0), "would pass i64::MAX");
        b.claim(3 * FETCH_RETRY_BACKOFF_MS);
        assert!(!b.on_block(block(3000, 0), 0), "empty");
        b.claim(4 * FETCH_RETRY_BACKOFF_MS);
        assert!(!b.on_block(block(-10, 10), 0), "negative");
        b.claim(5 * FETCH_RETRY_BACKOFF_MS);
        assert!(b.on_block(block(1010, 10), 0), "right after the current block");
    }

    /// Answers each request with the next scripted answer at once, and counts requests.
    struct Scripted {
        answers: Mutex<VecDeque<Result<ProducerIdBlock, ControlError>>>,
        asked: Mutex<Vec<(NodeId, BrokerEpoch)>>,
    }

    impl Scripted {
        fn new(answers: Vec<Result<ProducerIdBlock, ControlError>>) -> Arc<Scripted> {
            Arc::new(Scripted {
                answers: Mutex::new(answers.into()),
                asked: Mutex::new(Vec::new()),
            })
        }
    }

    impl BlockSource for Scripted {
        fn allocate(
            &self,
            broker: NodeId,
            epoch: BrokerEpoch,
        ) -> BoxFuture<Result<ProducerIdBlock, ControlError>> {
            self.asked.lock().unwrap().push((broker, epoch));
            let answer = self.answers.lock().unwrap().pop_front();
            Box::pin(async move { answer.unwrap_or(Err(ControlError::NotController)) })
        }
    }

    /// Never answers: a controller that is unreachable.
    struct Silent;

    impl BlockSource for Silent {
        fn allocate(
            &self,
            _: NodeId,
            _: BrokerEpoch,
        ) -> BoxFuture<Result<ProducerIdBlock, ControlError>> {
            Box::pin(std::future::pending())
        }
    }

    fn manager(source: Arc<dyn BlockSource>, clock: Arc<ManualClock>) -> Arc<ProducerIdManager> {
        Arc::new(ProducerIdManager::new(NodeId(4), source, clock))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
    }

    #[test]
    fn the_manager_hands_out_every_id_of_its_blocks_once() {
        let source = Scripted::new(vec![Ok(block(0, 10)), Ok(block(10, 10)), Ok(block(40, 10))]);
        let ids = manager(source.clone(), Arc::new(ManualClock::at(0)));
        let got = runtime().block_on(async {
            let mut got = Vec::new();
            for _ in 0..30 {
                got.push(ids.next_id(BrokerEpoch(7)).await.unwrap());
            }
            // Lets the prefetch sent at the last block's 90% reach the source.
            tokio::task::yield_now().await;
            got
        });
        let mut want: Vec<i64> = (0..20).collect();
        want.extend(40..50);
        assert_eq!(got, want);
        let asked = source.asked.lock().unwrap().clone();
        assert_eq!(asked, vec![(NodeId(4), BrokerEpoch(7)); 4], "three blocks, one more asked");
    }

    #[test]
    fn a_refused_block_is_answered_at_once_and_asked_again_after_the_backoff() {
        let source =
            Scripted::new(vec![Err(ControlError::StaleBrokerEpoch(4)), Ok(block(0, 1000))]);
        let clock = Arc::new(ManualClock::at(0));
        let ids = manager(source.clone(), clock.clone());
        let rt = runtime();
        assert_eq!(
            rt.block_on(ids.next_id(BrokerEpoch(7))),
            Err(ProducerIdError::BlockUnavailable)
        );
        assert_eq!(
            rt.block_on(ids.next_id(BrokerEpoch(7))),
            Err(ProducerIdError::BlockUnavailable),
            "within the backoff nothing is asked"
        );
        assert_eq!(source.asked.lock().unwrap().len(), 1);
        clock.advance(FETCH_RETRY_BACKOFF_MS);
        assert_eq!(rt.block_on(ids.next_id(BrokerEpoch(7))), Ok(0));
    }

    #[test]
    fn no_block_is_asked_for_before_the_broker_is_registered() {
        let source = Scripted::new(vec![Ok(block(0, 1000))]);
        let ids = manager(source.clone(), Arc::new(ManualClock::at(0)));
        let rt = runtime();
        assert_eq!(
            rt.block_on(ids.next_id(BrokerEpoch(-1))),
            Err(ProducerIdError::BlockUnavailable)
        );
        assert!(source.asked.lock().unwrap().is_empty());
    }

    #[test]
    fn a_caller_waits_only_as_long_as_it_may_for_a_block_in_flight() {
        let mut ids =
            ProducerIdManager::new(NodeId(4), Arc::new(Silent), Arc::new(ManualClock::at(0)));
        // The bound is what is tested, not its length: a zero wait ends at the first look.
        ids.wait = Duration::ZERO;
        let ids = Arc::new(ids);
        let rt = runtime();
        assert_eq!(rt.block_on(ids.next_id(BrokerEpoch(7))), Err(ProducerIdError::BlockPending));
        assert!(ids.blocks.lock().unwrap().is_fetching(), "the request is still in flight");
        assert_eq!(rt.block_on(ids.next_id(BrokerEpoch(7))), Err(ProducerIdError::BlockPending));
    }
}
