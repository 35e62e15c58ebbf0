//! The relay client's one rule on loopback sockets: a request is asked again only while it was
//! certainly not decided; once it was sent and no answer came, the caller hears "outcome
//! unknown" and nothing is asked twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strom_controller::RelayClient;
use strom_metadata::control::{ControlRequest, CreateTopic, CreateTopicsRequest};
use strom_metadata::{ControlError, ControllerClient};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A "voter" that takes each connection, reads what the client sends for a moment (the
/// request among it), then closes it without answering: a leader that died mid-call.
async fn dies_mid_call() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 64 * 1024];
            let _ = tokio::time::timeout(Duration::from_millis(300), async {
                while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            })
            .await;
        }
    });
    Ok((addr, accepted))
}

/// A loopback address nothing listens on.
async fn closed_port() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?.to_string())
}

fn create(name: &str) -> ControlRequest {
    ControlRequest::CreateTopics(CreateTopicsRequest {
        topics: vec![CreateTopic {
            name: name.into(),
            num_partitions: 1,
            replication_factor: 1,
            assignments: Vec::new(),
            configs: Vec::new(),
        }],
        validate_only: false,
        internal: false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_mid_call_is_outcome_unknown_and_not_sent_again() -> anyhow::Result<()> {
    let (dying, accepted) = dies_mid_call().await?;
    // Voter 1 cannot be reached (never sent: the next voter is asked), voter 2 dies mid-call.
    let voters = BTreeMap::from([(1, closed_port().await?), (2, dying)]);
    let client = RelayClient::new(voters)?;
    let started = tokio::time::Instant::now();
    let answer = client.submit(create("orders")).await;
    match &answer {
        Err(ControlError::OutcomeUnknown(why)) => assert!(why.contains("controller 2"), "{why}"),
        other => panic!("expected outcome unknown, got {other:?}"),
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "asked once, never again");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    Ok(())
}
