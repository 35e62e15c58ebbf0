//! The group coordinator's core for Kafka's classic group protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup): one [`Group`] per group id, a plain state machine driven by events
//! and `tick(now_ms)` that returns [`Effect`]s. The tokio shell that owns the sockets, the
//! `__consumer_offsets` writes and the timers arrives with issue 6.

mod state;

#[cfg(test)]
mod tests;

// Nothing outside this module uses the core until the handlers land with issue 6.
#[allow(unused_imports)]
pub(crate) use state::*;
