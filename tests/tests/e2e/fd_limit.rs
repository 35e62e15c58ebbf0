//! The harness's open-file limit for a node (`NodeOptions::fd_limit`, used by the coordination
//! bench to run nodes as the issue does, at 20,000): the strom process itself runs under it.

use anyhow::Context;
use strom_tests::{with_node, NodeOptions};

#[test]
fn a_node_started_with_an_fd_limit_runs_under_it() {
    const LIMIT: u64 = 4_096;
    let options = NodeOptions { fd_limit: Some(LIMIT), ..NodeOptions::default() };
    with_node(options, |node| {
        // The pid is strom's (prlimit execs it): the harness saw this pid listen on its port.
        let pid = node.pid().context("the node has no process")?;
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .context("no open-file row in /proc/PID/limits")?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let expected = LIMIT.to_string();
        let (soft, hard) = (fields.get(3).copied(), fields.get(4).copied());
        assert_eq!((soft, hard), (Some(&expected[..]), Some(&expected[..])), "{line}");
        Ok(())
    });
}
