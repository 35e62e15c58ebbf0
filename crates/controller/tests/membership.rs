//! KIP-853's dynamic quorum on in-process voters over real gRPC: a node started with bootstrap
//! servers joins as an observer and is added as a voter once caught up; a removed voter (the
//! leader itself) stays an observer and leadership moves; a replica whose directory id changed
//! (a wiped disk) is refused as its former self until that voter is removed, then re-added;
//! voter changes go one at a time.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{create_topic, live_broker, Quorum, SETTLE};
use strom_metadata::control::{ControlRequest, ControlResponse};
use strom_metadata::quorum::{
    AddVoterRequest, DirectoryId, JoinQuorumRequest, QuorumDescription, RemoveVoterRequest,
};
use strom_metadata::ControlError;

/// Starts voters 1, 2 and 3 of a four-node quorum (node 4 is in no static voter set).
async fn three_of_four() -> anyhow::Result<Quorum> {
    let mut q = Quorum::new(4, 1_000).await?;
    // Brokers here register and heartbeat once.
    q.session_timeout_ms = Some(600_000);
    for id in 1..=3 {
        let mut cfg = q.config(id);
        cfg.voters.remove(&4);
        q.start_with(id, cfg).await?;
    }
    Ok(q)
}

async fn submit(q: &Quorum, via: u64, r: ControlRequest) -> Result<ControlResponse, ControlError> {
    q.controller(via).client().submit(r).await
}

async fn describe(q: &Quorum, via: u64) -> anyhow::Result<QuorumDescription> {
    match submit(q, via, ControlRequest::DescribeQuorum).await? {
        ControlResponse::Quorum(d) => Ok(d),
        other => anyhow::bail!("unexpected answer to DescribeQuorum: {other:?}"),
    }
}

fn voter_ids(d: &QuorumDescription) -> BTreeSet<u64> {
    d.voters.iter().map(|v| v.node_id).collect()
}

fn observer_ids(d: &QuorumDescription) -> BTreeSet<u64> {
    d.observers.iter().map(|v| v.node_id).collect()
}

/// Polls DescribeQuorum (asked through `via`) until `ok`.
async fn quorum_until(
    q: &Quorum,
    via: u64,
    what: &str,
    ok: impl Fn(&QuorumDescription) -> bool,
) -> anyhow::Result<QuorumDescription> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let last = describe(q, via).await;
        if let Ok(d) = &last {
            if ok(d) {
                return Ok(d.clone());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "never {what}: last {last:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn add(id: u64) -> ControlRequest {
    ControlRequest::AddVoter(AddVoterRequest {
        node_id: id,
        directory_id: None,
        control_addr: None,
        timeout_ms: None,
    })
}

fn remove(id: u64, directory_id: Option<DirectoryId>) -> ControlRequest {
    ControlRequest::RemoveVoter(RemoveVoterRequest { node_id: id, directory_id })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_joins_catches_up_and_becomes_a_voter() -> anyhow::Result<()> {
    let mut q = three_of_four().await?;
    let leader = q.agreed_leader().await?;
    let client = q.controller(leader).client();
    live_broker(&client, 1).await?;
    create_topic(&client, "before", 2).await?;
    // Each static voter says its directory id once it runs.
    let d = quorum_until(&q, 1, "static voters with directory ids", |d| {
        d.voters.iter().all(|v| v.directory_id.is_some())
    })
    .await?;
    assert_eq!(voter_ids(&d), BTreeSet::from([1, 2, 3]));
    for v in &d.voters {
        assert_eq!(v.directory_id, Some(q.directory_ids[&v.node_id]), "voter {}", v.node_id);
    }

    // Node 4 knows only a bootstrap server; it joins as an observer and replicates the log.
    q.start_with(4, q.joining_config(4, &[2])).await?;
    let d = quorum_until(&q, 2, "node 4 observing", |d| observer_ids(d).contains(&4)).await?;
    assert_eq!(voter_ids(&d), BTreeSet::from([1, 2, 3]));
    let added = submit(&q, 3, add(4)).await?;
    let ControlResponse::Quorum(d) = added else { anyhow::bail!("{added:?}") };
    assert_eq!(voter_ids(&d), BTreeSet::from([1, 2, 3, 4]));
    assert!(!observer_ids(&d).contains(&4));
    let four = d.voters.iter().find(|v| v.node_id == 4).expect("voter 4");
    assert_eq!(four.directory_id, Some(q.directory_ids[&4]));
    // Asked again: already a voter.
    assert!(matches!(submit(&q, 1, add(4)).await, Err(ControlError::DuplicateVoter(_))));

    // The new voter has everything committed before and after.
    create_topic(&client, "after", 1).await?;
    let deadline = Instant::now() + SETTLE;
    loop {
        let image = q.controller(4).image();
        if image.topic("before").is_some() && image.topic("after").is_some() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "voter 4 never applied both topics");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    q.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_leader_steps_down_and_stays_an_observer() -> anyhow::Result<()> {
    let mut q = three_of_four().await?;
    let leader = q.agreed_leader().await?;
    let other = (1..=3).find(|&id| id != leader).expect("a follower");
    quorum_until(&q, other, "static voters with directory ids", |d| {
        d.voters.iter().all(|v| v.directory_id.is_some())
    })
    .await?;
    // A wrong directory id removes nobody.
    let wrong = submit(&q, other, remove(leader, Some(DirectoryId([9; 16])))).await;
    assert!(matches!(wrong, Err(ControlError::VoterNotFound(_))), "{wrong:?}");
    let removed = submit(&q, other, remove(leader, Some(q.directory_ids[&leader]))).await?;
    let ControlResponse::Quorum(d) = removed else { anyhow::bail!("{removed:?}") };
    assert!(!voter_ids(&d).contains(&leader), "{d:?}");
    // Leadership moves to one of the two voters left, which still commit.
    let d = quorum_until(&q, other, "a new leader", |d| d.leader_id != leader).await?;
    assert_eq!(voter_ids(&d).len(), 2);
    let new_leader = d.leader_id;
    // The removed leader joins the new one's quorum as an observer.
    quorum_until(&q, other, "the removed voter observing", |d| observer_ids(d).contains(&leader))
        .await?;
    live_broker(&q.controller(new_leader).client(), 1).await?;
    create_topic(&q.controller(new_leader).client(), "after-removal", 1).await?;
    // The removed node learnt it was removed: it no longer counts itself a voter.
    let removed_node = q.controller(leader).raft().metrics();
    let deadline = Instant::now() + SETTLE;
    while removed_node.borrow().membership_config.membership().voter_ids().any(|v| v == leader) {
        anyhow::ensure!(Instant::now() < deadline, "node {leader} still counts itself a voter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Removing a non-voter, or the last voters down to none, is refused.
    assert!(matches!(
        submit(&q, other, remove(leader, None)).await,
        Err(ControlError::VoterNotFound(_))
    ));
    q.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_is_refused_until_removed_then_added_again() -> anyhow::Result<()> {
    let mut q = three_of_four().await?;
    let leader = q.agreed_leader().await?;
    let victim = (1..=3).find(|&id| id != leader).expect("a follower");
    let survivor = (1..=3).find(|&id| id != leader && id != victim).expect("another");
    let old = q.directory_ids[&victim];
    quorum_until(&q, leader, "static voters with directory ids", |d| {
        d.voters.iter().all(|v| v.directory_id.is_some())
    })
    .await?;

    // Its disk is replaced: it comes back with another directory id and an empty log.
    q.stop(victim).await?;
    q.wipe(victim)?;
    let new = q.directory_ids[&victim];
    q.start_with(victim, q.joining_config(victim, &[leader, survivor])).await?;
    let join = ControlRequest::JoinQuorum(JoinQuorumRequest {
        node_id: victim,
        directory_id: new,
        control_addr: q.voters[&victim].clone(),
    });
    let refused = submit(&q, survivor, join).await;
    let Err(ControlError::InvalidVoterKey(message)) = &refused else {
        anyhow::bail!("not refused as INVALID_VOTER_KEY: {refused:?}")
    };
    assert!(message.contains(&old.to_string()) && message.contains(&new.to_string()), "{message}");
    // The quorum still commits with the two others, and the leader's replication to the
    // victim is refused: it acknowledges nothing as its former self.
    live_broker(&q.controller(leader).client(), 1).await?;
    create_topic(&q.controller(leader).client(), "while-wiped", 1).await?;
    assert!(q.controller(victim).image().topic("while-wiped").is_none());
    let d = describe(&q, leader).await?;
    let listed = d.voters.iter().find(|v| v.node_id == victim).expect("still a voter");
    assert_eq!(listed.directory_id, Some(old));
    assert!(listed.lag(d.log_end_offset as i64).is_some_and(|lag| lag > 0), "{listed:?}");

    // Removed, the replica joins as an observer under its new id, and is added again.
    submit(&q, survivor, remove(victim, Some(old))).await?;
    let d = quorum_until(&q, leader, "the wiped node observing with its new id", |d| {
        d.observers.iter().any(|o| o.node_id == victim && o.directory_id == Some(new))
    })
    .await?;
    assert_eq!(voter_ids(&d).len(), 2);
    let added = submit(&q, leader, add(victim)).await?;
    let ControlResponse::Quorum(d) = added else { anyhow::bail!("{added:?}") };
    let back = d.voters.iter().find(|v| v.node_id == victim).expect("a voter again");
    assert_eq!(back.directory_id, Some(new));
    let deadline = Instant::now() + SETTLE;
    while q.controller(victim).image().topic("while-wiped").is_none() {
        anyhow::ensure!(Instant::now() < deadline, "the re-added voter never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    q.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_voter_change_at_a_time_and_a_new_voter_that_never_catches_up_is_given_up(
) -> anyhow::Result<()> {
    let mut q = three_of_four().await?;
    let leader = q.agreed_leader().await?;
    // Node 4 is named but never started: it cannot catch up.
    let absent = ControlRequest::AddVoter(AddVoterRequest {
        node_id: 4,
        directory_id: Some(q.directory_ids[&4]),
        control_addr: Some(q.voters[&4].clone()),
        timeout_ms: Some(2_000),
    });
    let client = q.controller(leader).client();
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.submit(absent).await }
    });
    // Once its observer entry is in, another change is refused (Kafka's REQUEST_TIMED_OUT)...
    quorum_until(&q, leader, "node 4 added as an observer", |d| observer_ids(d).contains(&4))
        .await?;
    let other = (1..=3).find(|&id| id != leader).expect("a follower");
    let refused = client.submit(remove(other, None)).await;
    let Err(ControlError::VoterChangeTimedOut(busy)) = &refused else {
        anyhow::bail!("the removal was not refused: {refused:?}")
    };
    assert!(busy.contains("node 4"), "{busy}");
    // ... while metadata requests are decided as usual.
    live_broker(&client, 1).await?;
    create_topic(&client, "meanwhile", 1).await?;
    let gave_up = pending.await?;
    let Err(ControlError::VoterChangeTimedOut(message)) = &gave_up else {
        anyhow::bail!("not given up: {gave_up:?}")
    };
    assert!(message.contains("did not catch up within 2000 ms"), "{message}");
    // The observer added for it is forgotten, and the voters are as they were.
    let d =
        quorum_until(&q, leader, "observer 4 forgotten", |d| !observer_ids(d).contains(&4)).await?;
    assert_eq!(voter_ids(&d), BTreeSet::from([1, 2, 3]));
    q.stop_all().await
}
