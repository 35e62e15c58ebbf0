//! Process lifecycle: clean exit on SIGTERM/SIGINT, start-up refused on a bad config key or
//! flag value, and service resumed after SIGSTOP/SIGCONT.

use std::time::Duration;

use anyhow::ensure;
use strom_tests::kafka::{self, AckingProducer, Outgoing};
use strom_tests::{run_to_exit, with_node, NodeOptions, StromNode, CLIENT_TIMEOUT};

const START_FAILURE_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn sigterm_shuts_down_cleanly_with_exit_status_0() {
    with_node(NodeOptions::default(), |node| {
        kafka::create_topic(&node.bootstrap(), "before-shutdown", 1, &[])?;
        kafka::assert_node_serves(&node.bootstrap(), "before-shutdown", 0)?;
        let status = node.sigterm()?;
        ensure!(status.code() == Some(0), "exit status after SIGTERM: {status}");
        Ok(())
    });
}

#[test]
fn sigint_shuts_down_cleanly_with_exit_status_0() {
    with_node(NodeOptions::default(), |node| {
        let status = node.sigint()?;
        ensure!(status.code() == Some(0), "exit status after SIGINT: {status}");
        Ok(())
    });
}

#[test]
fn unknown_config_key_stops_start_up_and_names_the_key() {
    const KEY: &str = "no_such_setting_for_strom";
    let options =
        NodeOptions { config_toml: Some(format!("{KEY} = 1\n")), ..NodeOptions::default() };
    let mut node = StromNode::spawn(options).expect("spawn strom");
    let status = node.wait_exit(START_FAILURE_TIMEOUT).expect("strom must exit by itself");
    let stderr = node.stderr();
    assert!(!status.success(), "strom started with unknown key {KEY}; output:\n{stderr}");
    assert!(stderr.contains(KEY), "the error does not name the key {KEY}:\n{stderr}");
}

#[test]
fn impossible_kafka_addr_stops_start_up_and_names_the_flag() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let data_dir = data_dir.path().display().to_string();
    let (status, output) = run_to_exit(
        &[
            "start",
            "--data-dir",
            &data_dir,
            "--kafka-addr",
            "not-an-address",
            "--control-addr",
            "127.0.0.1:0",
        ],
        START_FAILURE_TIMEOUT,
    )
    .expect("strom must exit by itself");
    assert!(!status.success(), "strom started with --kafka-addr not-an-address:\n{output}");
    assert!(
        output.contains("kafka-addr") || output.contains("kafka_addr"),
        "the error does not name kafka-addr:\n{output}"
    );
}

#[test]
fn node_serves_again_after_sigstop_and_sigcont() {
    with_node(NodeOptions::default(), |node| {
        let bootstrap = node.bootstrap();
        kafka::create_topic(&bootstrap, "paused", 1, &[])?;
        let producer = AckingProducer::new(&bootstrap, &[])?;
        node.sigstop()?;
        producer.send(
            "paused",
            0,
            Outgoing { partition: Some(0), value: Some(b"while stopped"), ..Outgoing::default() },
        )?;
        producer.poll(Duration::from_millis(300));
        // A stopped process cannot acknowledge anything.
        ensure!(producer.acked() == 0, "a record was acknowledged by a stopped node");
        node.sigcont()?;
        producer.flush(CLIENT_TIMEOUT)?;
        let ack = producer.acks_of([0])?[0];
        ensure!(ack.offset == 0, "first record acked at {ack:?}");
        kafka::assert_node_serves(&bootstrap, "paused", 0)?;
        Ok(())
    });
}

/// A start-up error after the quorum has started (here: the Kafka port is taken) is the one
/// reported, not the quorum's ending that follows from it.
#[test]
fn kafka_port_in_use_stops_start_up_and_says_so() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = taken.local_addr().expect("local addr");
    let options = NodeOptions { kafka_addr: Some(addr), ..NodeOptions::default() };
    let mut node = StromNode::spawn(options).expect("spawn strom");
    let status = node.wait_exit(START_FAILURE_TIMEOUT).expect("strom must exit by itself");
    let stderr = node.stderr();
    assert!(!status.success(), "strom started on a taken Kafka port {addr}:\n{stderr}");
    assert!(
        stderr.contains("cannot bind the Kafka listener") && stderr.contains(&addr.to_string()),
        "the error does not name the Kafka listener and {addr}:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "the real error is masked:\n{stderr}");
}
