//! The broker's clock: time-dependent code (group session expiry, ISR lag, retention) reads
//! the time through a [`Clock`] held in the broker context, so a test can drive it with a
//! manual clock instead of sleeping. Only [`SystemClock`] reads the wall clock.

pub(crate) use strom_metadata::Clock;

/// Wall-clock milliseconds since the Unix epoch: what Kafka puts in timestamps and what
/// group sessions and retention are measured in.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The wall clock, for code with no broker context at hand (request handlers stamp batches).
pub(crate) fn now_ms() -> i64 {
    SystemClock.now_ms()
}
