//! A manual clock for tests: time moves only when the test says so, so session expiry and
//! timeouts are driven step by step, without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use strom_metadata::Clock;

/// Milliseconds that move only by [`ManualClock::advance`] (or [`ManualClock::set`]). Clones
/// share one time, so the test keeps one and hands another to the code under test.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn at(now_ms: i64) -> ManualClock {
        ManualClock { now_ms: Arc::new(AtomicI64::new(now_ms)) }
    }

    pub fn advance(&self, ms: i64) {
        assert!(ms >= 0, "a clock does not go back");
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set(&self, now_ms: i64) {
        let before = self.now_ms.swap(now_ms, Ordering::SeqCst);
        assert!(now_ms >= before, "a clock does not go back ({before} → {now_ms})");
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_time_that_moves_only_when_told() {
        let clock = ManualClock::at(1_000);
        let seen: Arc<dyn Clock> = Arc::new(clock.clone());
        assert_eq!(seen.now_ms(), 1_000);
        clock.advance(250);
        assert_eq!(seen.now_ms(), 1_250);
        clock.set(2_000);
        assert_eq!(seen.now_ms(), 2_000);
    }
}
