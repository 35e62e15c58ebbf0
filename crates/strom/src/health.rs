//! The node's readiness (`/ready`, and the gRPC health service): a sans-IO state fed by the
//! node's start-up, heartbeats and shutdown, judged at a given time. A broker is ready once it
//! is registered, has caught up with the metadata log to its registration (its Kafka
//! listeners serve), the controller has answered a heartbeat within the session timeout saying
//! it is caught up and not fenced (the controller unfences a broker only once its reconciled
//! metadata, and so its logs, match its registration), no log waits to be opened and its log
//! directory works. A controller-only node is ready once its quorum has a leader. Nothing is
//! ready while it shuts down.

use std::fmt;

/// What one node's readiness is judged from. Times are milliseconds on the shell's monotonic
/// clock.
#[derive(Clone, Debug)]
pub struct Readiness {
    broker: bool,
    session_timeout_ms: i64,
    registered: bool,
    serving: bool,
    /// The last heartbeat the controller answered: when, and what it said.
    heartbeat: Option<Heartbeat>,
    logs_awaiting_open: usize,
    log_dir_failed: bool,
    quorum_leader: Option<u64>,
    stopping: bool,
}

#[derive(Clone, Copy, Debug)]
struct Heartbeat {
    at_ms: i64,
    fenced: bool,
    caught_up: bool,
}

/// Why a node is not ready: the body of a 503 from `/ready`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotReady {
    Stopping,
    LogDirFailed,
    NotRegistered,
    CatchingUp,
    NoHeartbeatAnswered,
    HeartbeatsUnanswered { since_ms: i64 },
    ControllerSaysBehind,
    Fenced,
    LogsAwaitingOpen(usize),
    NoQuorumLeader,
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::Stopping => write!(f, "shutting down"),
            NotReady::LogDirFailed => write!(f, "the log directory failed"),
            NotReady::NotRegistered => write!(f, "not registered with the controller yet"),
            NotReady::CatchingUp => {
                write!(f, "catching up with the metadata log (to this broker's registration)")
            }
            NotReady::NoHeartbeatAnswered => {
                write!(f, "no heartbeat answered by the controller yet")
            }
            NotReady::HeartbeatsUnanswered { since_ms } => write!(
                f,
                "fenced: no heartbeat answered by the controller for {since_ms} ms \
                 (more than broker.session.timeout.ms)"
            ),
            NotReady::ControllerSaysBehind => {
                write!(f, "the controller says this broker has not caught up yet")
            }
            NotReady::Fenced => write!(f, "fenced by the controller"),
            NotReady::LogsAwaitingOpen(n) => write!(f, "{n} local logs not opened yet"),
            NotReady::NoQuorumLeader => write!(f, "the metadata quorum has no leader"),
        }
    }
}

impl Readiness {
    /// A node starting: a broker (`broker`) whose sessions last `session_timeout_ms`, or a
    /// controller-only node.
    pub fn new(broker: bool, session_timeout_ms: u64) -> Readiness {
        Readiness {
            broker,
            session_timeout_ms: i64::try_from(session_timeout_ms).unwrap_or(i64::MAX),
            registered: false,
            serving: false,
            heartbeat: None,
            logs_awaiting_open: 0,
            log_dir_failed: false,
            quorum_leader: None,
            stopping: false,
        }
    }

    /// The controller committed this broker's registration.
    pub fn on_registered(&mut self) {
        self.registered = true;
    }

    /// The broker's image holds its own registration: its listeners serve.
    pub fn on_serving(&mut self) {
        self.serving = true;
    }

    /// The controller answered a heartbeat sent by then.
    pub fn on_heartbeat(&mut self, now_ms: i64, fenced: bool, caught_up: bool) {
        let at_ms = self.heartbeat.map_or(now_ms, |h| h.at_ms.max(now_ms));
        self.heartbeat = Some(Heartbeat { at_ms, fenced, caught_up });
    }

    pub fn set_logs_awaiting_open(&mut self, n: usize) {
        self.logs_awaiting_open = n;
    }

    pub fn on_log_dir_failed(&mut self) {
        self.log_dir_failed = true;
    }

    pub fn set_quorum_leader(&mut self, leader: Option<u64>) {
        self.quorum_leader = leader;
    }

    pub fn on_stopping(&mut self) {
        self.stopping = true;
    }

    /// Ready at `now_ms`, or the first reason it is not.
    pub fn verdict(&self, now_ms: i64) -> Result<(), NotReady> {
        if self.stopping {
            return Err(NotReady::Stopping);
        }
        if !self.broker {
            return match self.quorum_leader {
                Some(_) => Ok(()),
                None => Err(NotReady::NoQuorumLeader),
            };
        }
        if self.log_dir_failed {
            return Err(NotReady::LogDirFailed);
        }
        if !self.registered {
            return Err(NotReady::NotRegistered);
        }
        if !self.serving {
            return Err(NotReady::CatchingUp);
        }
        let Some(heartbeat) = self.heartbeat else { return Err(NotReady::NoHeartbeatAnswered) };
        let since_ms = now_ms.saturating_sub(heartbeat.at_ms);
        // The controller fences a broker it has not heard from for a session: one whose
        // heartbeats go unanswered that long must count itself fenced, since it cannot learn
        // that it is (its metadata comes from the same quorum).
        if since_ms > self.session_timeout_ms {
            return Err(NotReady::HeartbeatsUnanswered { since_ms });
        }
        if !heartbeat.caught_up {
            return Err(NotReady::ControllerSaysBehind);
        }
        if heartbeat.fenced {
            return Err(NotReady::Fenced);
        }
        if self.logs_awaiting_open > 0 {
            return Err(NotReady::LogsAwaitingOpen(self.logs_awaiting_open));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION_MS: u64 = 1_000;

    /// A broker walks through start-up to ready; then loses its controller, is fenced, comes
    /// back, and stops.
    #[test]
    fn a_broker_is_ready_only_registered_caught_up_unfenced_and_heard() {
        let mut r = Readiness::new(true, SESSION_MS);
        assert_eq!(r.verdict(0), Err(NotReady::NotRegistered));
        r.on_registered();
        assert_eq!(r.verdict(10), Err(NotReady::CatchingUp));
        r.on_serving();
        assert_eq!(r.verdict(20), Err(NotReady::NoHeartbeatAnswered));
        // The first heartbeat: not caught up (its logs are still opening), so fenced.
        r.on_heartbeat(30, true, false);
        assert_eq!(r.verdict(40), Err(NotReady::ControllerSaysBehind));
        r.on_heartbeat(50, true, true);
        assert_eq!(r.verdict(60), Err(NotReady::Fenced));
        r.on_heartbeat(70, false, true);
        assert_eq!(r.verdict(80), Ok(()));
        r.set_logs_awaiting_open(3);
        assert_eq!(r.verdict(90), Err(NotReady::LogsAwaitingOpen(3)));
        r.set_logs_awaiting_open(0);
        assert_eq!(r.verdict(90), Ok(()));

        // Cut off from the controller: ready for a session, then counted fenced.
        assert_eq!(r.verdict(70 + 1_000), Ok(()));
        assert_eq!(r.verdict(70 + 1_001), Err(NotReady::HeartbeatsUnanswered { since_ms: 1_001 }));
        // Fenced by the controller meanwhile; its next heartbeat unfences it.
        r.on_heartbeat(2_000, true, true);
        assert_eq!(r.verdict(2_000), Err(NotReady::Fenced));
        r.on_heartbeat(2_250, false, true);
        assert_eq!(r.verdict(2_300), Ok(()));
        // An answer that arrives late never moves the last contact back.
        r.on_heartbeat(2_100, false, true);
        assert_eq!(r.verdict(2_250 + 1_000), Ok(()));

        r.on_stopping();
        assert_eq!(r.verdict(2_400), Err(NotReady::Stopping));
    }

    #[test]
    fn a_failed_log_directory_is_never_ready() {
        let mut r = Readiness::new(true, SESSION_MS);
        r.on_registered();
        r.on_serving();
        r.on_heartbeat(0, false, true);
        assert_eq!(r.verdict(1), Ok(()));
        r.on_log_dir_failed();
        assert_eq!(r.verdict(2), Err(NotReady::LogDirFailed));
        r.on_heartbeat(3, false, true);
        assert_eq!(r.verdict(4), Err(NotReady::LogDirFailed));
    }

    #[test]
    fn a_controller_only_node_is_ready_while_its_quorum_has_a_leader() {
        let mut r = Readiness::new(false, SESSION_MS);
        assert_eq!(r.verdict(0), Err(NotReady::NoQuorumLeader));
        r.set_quorum_leader(Some(2));
        assert_eq!(r.verdict(1), Ok(()));
        r.set_quorum_leader(None);
        assert_eq!(r.verdict(2), Err(NotReady::NoQuorumLeader));
        r.set_quorum_leader(Some(1));
        r.on_stopping();
        assert_eq!(r.verdict(3), Err(NotReady::Stopping));
    }

    #[test]
    fn reasons_read_as_sentences() {
        assert_eq!(
            NotReady::HeartbeatsUnanswered { since_ms: 1500 }.to_string(),
            "fenced: no heartbeat answered by the controller for 1500 ms \
             (more than broker.session.timeout.ms)"
        );
        assert_eq!(NotReady::Fenced.to_string(), "fenced by the controller");
    }
}
